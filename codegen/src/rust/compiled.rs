//! The module `optimizer!` compiles into a crate: the JIT's pipeline
//! (e-graph, schedule) run at compile time for each variant that
//! `lensopt::aot` describes, the variants' kernels as Rust, their optimized
//! rules and the checked rule in `lensopt_ir::encoding`'s byte form, and
//! the table that registers them.

use super::{kernels, Element};
use lensopt_ir::encoding::encode;
use lensopt_ir::optimize::{optimize_report, Mode, Options};
use lensopt_ir::schedule::{buffer_count, Schedule};
use lensopt_ir::{HyperValue, Rule};
use std::fmt::Write;

/// Most buffers (`p`, `g`, inputs, states) a kernel takes, as the JIT's.
const MAX_BUFFERS: usize = 64;

/// Most optional inputs whose every combination of presence is compiled.
const ALL_PRESENCE_UP_TO: usize = 3;

/// The presence vectors (one flag per input) that get kernels.
fn presence_sets(rule: &Rule) -> Vec<Vec<bool>> {
    let optional: Vec<usize> = (0..rule.inputs.len())
        .filter(|&i| rule.inputs[i].optional)
        .collect();
    let masks: Vec<u32> = if optional.len() <= ALL_PRESENCE_UP_TO {
        (0..1u32 << optional.len()).collect()
    } else {
        vec![0, u32::MAX]
    };
    masks
        .into_iter()
        .map(|mask| {
            let mut present = vec![true; rule.inputs.len()];
            for (bit, &i) in optional.iter().enumerate() {
                present[i] = mask >> bit.min(31) & 1 == 1;
            }
            present
        })
        .collect()
}

fn hyper_literal(h: &Option<HyperValue>) -> String {
    match h {
        None => "::core::option::Option::None".to_string(),
        Some(HyperValue::Num(x)) => format!(
            "::core::option::Option::Some(::lensopt::HyperValue::Num(f64::from_bits({:#018x})))",
            x.to_bits()
        ),
        Some(HyperValue::Bool(b)) => {
            format!("::core::option::Option::Some(::lensopt::HyperValue::Bool({b}))")
        }
    }
}

/// The source of module `module`: every variant's kernels, the optimized
/// and checked rules as encoded bytes, and `COMPILED`, the
/// `lensopt::aot::CompiledRule` of `rule`. A matrix rule (or one beyond
/// the code generators' budget) gets no variants and runs as before.
pub fn module_source(rule: &Rule, module: &str) -> String {
    let mut items = String::new();
    let mut variants = String::new();
    let mut kernel_sets: Vec<Rule> = Vec::new();
    // (mode, presence, specialisation) of each variant listed so far: a
    // generic variant that is the default one is listed once.
    let mut listed: Vec<(Mode, Vec<bool>, Vec<Option<HyperValue>>)> = Vec::new();
    let compiles = !rule.is_matrix() && buffer_count(rule) <= MAX_BUFFERS;
    let defaults = rule.default_hypers();
    for present in presence_sets(rule).iter().filter(|_| compiles) {
        for (mode, generic) in [
            (Mode::Fast, false),
            (Mode::Exact, false),
            (Mode::Fast, true),
            (Mode::Exact, true),
        ] {
            let mut options = Options::specialized_for(mode, &defaults);
            if generic {
                options.specialize = vec![None; rule.hypers.len()];
            }
            options.present = present.iter().map(|p| Some(*p)).collect();
            // Node and iteration limits bound the rewrites; a generous
            // clock keeps the result independent of the build machine's load.
            options.time_limit = std::time::Duration::from_secs(30);
            let optimized = optimize_report(rule, &options).rule;
            let schedule = Schedule::new(optimized.clone());
            if schedule.check_budget().is_err() {
                continue;
            }
            let index = match kernel_sets
                .iter()
                .position(|r| r.same_structure(&optimized))
            {
                Some(k) => k,
                None => {
                    let k = kernel_sets.len();
                    for ty in [Element::F32, Element::F64] {
                        let prefix = format!("k{k}_{}", ty.name());
                        items.push_str(&kernels(&schedule, &prefix, ty, "::lensopt::aot"));
                    }
                    let _ = writeln!(
                        items,
                        "static optimized{k}: &[u8] = {};",
                        byte_string(&encode(&optimized))
                    );
                    kernel_sets.push(optimized);
                    k
                }
            };
            let entry = (mode, present.clone(), options.specialize.clone());
            if listed.contains(&entry) {
                continue;
            }
            listed.push(entry);
            let specialize: Vec<String> = options.specialize.iter().map(hyper_literal).collect();
            let present: Vec<String> = present.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(
                variants,
                "    ::lensopt::aot::Variant {{ mode: ::lensopt::Mode::{mode:?}, specialize: &[{}], present: &[{}], optimized: optimized{index}, f32: ::lensopt::aot::Kernels {{ element: &k{index}_f32_element, reduce: &k{index}_f32_reduce }}, f64: ::lensopt::aot::Kernels {{ element: &k{index}_f64_element, reduce: &k{index}_f64_reduce }} }},",
                specialize.join(", "),
                present.join(", ")
            );
        }
    }
    format!(
        "#[doc(hidden)]
#[allow(non_upper_case_globals, non_snake_case, unused_unsafe, unused_variables, unused_mut, unused_parens, dead_code, clippy::all, clippy::pedantic, clippy::nursery)]
mod {module} {{
{items}
pub(super) static COMPILED: ::lensopt::aot::CompiledRule = ::lensopt::aot::CompiledRule {{
    checked: {},
    optimized: !cfg!(debug_assertions),
    variants: &[
{variants}    ],
}};
}}",
        byte_string(&encode(rule))
    )
}

/// `bytes` as a Rust byte-string literal.
fn byte_string(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(4 * bytes.len() + 3);
    out.push_str("b\"");
    for b in bytes {
        let _ = write!(out, "\\x{b:02x}");
    }
    out.push('"');
    out
}
