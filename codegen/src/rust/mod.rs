//! Rust source for a schedule's kernels, and for the IR itself: what
//! `optimizer!` compiles into a crate so that a declared optimizer runs
//! with no JIT at all.
//!
//! The kernels keep the cranelift JIT's calling convention and semantics
//! exactly (see [`crate::cpu::kernel`]): the element kernel is
//! `fn(bufs: *const *mut u8, slots: *const u8, n)`, the reduction kernel
//! `fn(bufs, slots, n, valid, out: *mut f64)`; `n` is a multiple of the
//! JIT's lane count `L` (of `L * REDUCTION_SETS` for a reduction kernel);
//! slots are broadcast to `L` values each; reductions accumulate element `i`
//! into f64 accumulator `i % (L * REDUCTION_SETS)`, skip lanes at or past
//! `valid` by adding 0, and sum (or take the maximum of) the accumulators in
//! order at the end (see `lensopt_ir::schedule::REDUCTION_SETS`). Element arithmetic is the IEEE operation of the element
//! type, with no contraction into fma, so a kernel compiled by rustc is
//! bit-identical to the JIT's in exact mode. A reduction kernel computes
//! its values a block at a time (a loop rustc vectorizes), then adds them
//! to the accumulators in the JIT's order. Each kernel is emitted for
//! three instruction sets (baseline, AVX2 + FMA, AVX-512 on x86-64; the
//! baseline elsewhere, where it already has NEON on aarch64), and the
//! caller picks one at run time.
//!
//! Support functions the generated code calls (IEEE minimum and maximum,
//! `sign`, `exp`, `pow`, bfloat16 rounding) are named under a path the caller gives,
//! `::lensopt::aot` for `optimizer!`.

pub mod compiled;

pub use compiled::module_source;

use lensopt_ir::schedule::{
    buffer_of, element_nodes, kernel_uses, output_buffer, reductions_of, scalar_exponents,
    Schedule, REDUCTION_SETS,
};
use lensopt_ir::{BinOp, Op, ReduceOp, Rule, Ty, UnOp, ValueId};
use std::fmt::Write;

/// The element types kernels are emitted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Element {
    /// `f32`, four lanes per JIT vector.
    F32,
    /// `f64`, two lanes per JIT vector.
    F64,
}

impl Element {
    /// The Rust type name.
    pub fn name(self) -> &'static str {
        match self {
            Element::F32 => "f32",
            Element::F64 => "f64",
        }
    }

    /// Lanes of the JIT's vectors (128 bits), which fix the slot layout and
    /// the order in which reductions accumulate.
    pub fn lanes(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::F64 => 2,
        }
    }
}

/// Elements a reduction kernel computes at a time (a multiple of every
/// `L * REDUCTION_SETS`) before it accumulates them.
const REDUCE_BLOCK: usize = 256;

/// The instruction sets each kernel is emitted for, in the order of the
/// function tables [`kernels`] emits.
pub const ISAS: [&str; 3] = ["base", "avx2", "avx512"];

/// The Rust items of `schedule`'s kernels for element type `ty`:
///
/// - `{prefix}_element: [ElementFn; 3]`, one entry per [`ISAS`];
/// - `{prefix}_reduce: [[ReduceFn; 3]; passes]`;
///
/// where `ElementFn` and `ReduceFn` are the JIT's function types. Support
/// functions are called under `support`.
pub fn kernels(schedule: &Schedule, prefix: &str, ty: Element, support: &str) -> String {
    let mut out = String::new();
    let roots: Vec<ValueId> = schedule.outputs.iter().map(|o| o.1).collect();
    let body = element_body(schedule, &roots, ty, support);
    multiversion(&mut out, &format!("{prefix}_element"), &body, Kind::Element);
    let mut passes = Vec::new();
    for (k, pass) in schedule.passes.iter().enumerate() {
        let name = format!("{prefix}_reduce{k}");
        let body = reduction_body(schedule, pass, ty, support);
        multiversion(&mut out, &name, &body, Kind::Reduce);
        passes.push(name);
    }
    let table = |name: &str| {
        let entries: Vec<String> = ISAS.iter().map(|isa| format!("{name}_{isa}")).collect();
        format!("[{}]", entries.join(", "))
    };
    let _ = writeln!(
        out,
        "static {prefix}_element: [unsafe extern \"C\" fn(*const *mut u8, *const u8, usize); 3] = {};",
        table(&format!("{prefix}_element"))
    );
    let reduce: Vec<String> = passes.iter().map(|p| table(p)).collect();
    let _ = writeln!(
        out,
        "static {prefix}_reduce: [[unsafe extern \"C\" fn(*const *mut u8, *const u8, usize, usize, *mut f64); 3]; {}] = [{}];",
        reduce.len(),
        reduce.join(", ")
    );
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Element,
    Reduce,
}

/// The body as an `#[inline(always)]` function, and one `extern "C"` entry
/// per instruction set that inlines it (so rustc compiles it for that set).
fn multiversion(out: &mut String, name: &str, body: &str, kind: Kind) {
    let (params, args) = match kind {
        Kind::Element => (
            "bufs: *const *mut u8, slots: *const u8, n: usize",
            "bufs, slots, n",
        ),
        Kind::Reduce => (
            "bufs: *const *mut u8, slots: *const u8, n: usize, valid: usize, out: *mut f64",
            "bufs, slots, n, valid, out",
        ),
    };
    let _ = writeln!(out, "#[inline(always)]");
    let _ = writeln!(
        out,
        "#[allow(unused_variables, unused_mut, clippy::all, clippy::pedantic)]"
    );
    let _ = writeln!(out, "unsafe fn {name}_body({params}) {{\n{body}}}");
    let safety = "// SAFETY: the caller upholds the kernel contract of `lensopt::aot` (the JIT's).";
    let _ = writeln!(
        out,
        "unsafe extern \"C\" fn {name}_base({params}) {{\n    {safety}\n    unsafe {{ {name}_body({args}) }}\n}}"
    );
    for (isa, features) in [("avx2", "avx2,fma"), ("avx512", "avx512f,avx2,fma")] {
        let _ = writeln!(
            out,
            "#[cfg(target_arch = \"x86_64\")]\n#[target_feature(enable = \"{features}\")]\nunsafe extern \"C\" fn {name}_{isa}({params}) {{\n    {safety} The table holds this entry only for a CPU with these features.\n    unsafe {{ {name}_body({args}) }}\n}}"
        );
        let _ = writeln!(
            out,
            "#[cfg(not(target_arch = \"x86_64\"))]\nunsafe extern \"C\" fn {name}_{isa}({params}) {{\n    {safety}\n    unsafe {{ {name}_body({args}) }}\n}}"
        );
    }
}

/// A float literal of type `ty` with exactly the value the JIT splats:
/// `x` rounded once to the element type.
fn literal(x: f64, ty: Element) -> String {
    match ty {
        Element::F32 => format!("f32::from_bits({:#010x})", (x as f32).to_bits()),
        Element::F64 => format!("f64::from_bits({:#018x})", x.to_bits()),
    }
}

/// Declarations of the buffers and slots a kernel reads, at its entry.
fn entry(
    schedule: &Schedule,
    needed: &[usize],
    roots: &[ValueId],
    written: &[usize],
    ty: Element,
    out: &mut String,
) {
    let rule = &schedule.rule;
    let t = ty.name();
    let _ = writeln!(
        out,
        "    // SAFETY (each block below): under the kernel contract every buffer read\n    \
         // or written holds `n` elements, the written ones are distinct from every\n    \
         // other, the slot table holds {} values per slot, and a reduction\n    \
         // kernel's `out` holds one f64 per reduction of its pass.",
        ty.lanes()
    );
    let (used, reads) = kernel_uses(rule, needed, roots, written);
    for (k, u) in used.iter().enumerate() {
        if !*u {
            continue;
        }
        if written.contains(&k) {
            let _ = writeln!(
                out,
                "    let b{k}: &mut [{t}] = unsafe {{ ::core::slice::from_raw_parts_mut(*bufs.add({k}) as *mut {t}, n) }};"
            );
        } else {
            let _ = writeln!(
                out,
                "    let b{k}: &[{t}] = unsafe {{ ::core::slice::from_raw_parts(*bufs.add({k}) as *const {t}, n) }};"
            );
        }
    }
    for (slot, v) in schedule.slots.iter().enumerate() {
        if !reads[v.index()] {
            continue;
        }
        let index = slot * ty.lanes();
        let load = format!("unsafe {{ *(slots as *const {t}).add({index}) }}");
        match rule.node(*v).ty {
            Ty::Float => {
                let _ = writeln!(out, "    let v{}: {t} = {load};", v.0);
            }
            Ty::Bool => {
                let _ = writeln!(out, "    let v{}: bool = {load} != 0.0;", v.0);
            }
        }
    }
}

/// The statements computing `needed` for the element at `index` of the
/// buffers named `{buffers}{k}`; `pow` with an exponent in `square_roots`
/// (known to be 0.5 there) as the square root.
fn element_statements(
    rule: &Rule,
    needed: &[usize],
    (ty, support): (Element, &str),
    (buffers, index): (&str, &str),
    square_roots: &[ValueId],
    indent: &str,
    out: &mut String,
) {
    let t = ty.name();
    let one = literal(1.0, ty);
    for &id in needed {
        let node = &rule.nodes[id];
        let v = |x: ValueId| format!("v{}", x.0);
        let expr = match node.op {
            Op::Param | Op::Grad | Op::Input(_) | Op::State(_) => {
                let k = buffer_of(rule, &node.op).expect("a buffer leaf");
                format!("{buffers}{k}[{index}]")
            }
            Op::Unary(u, a) => {
                let a = v(a);
                match u {
                    UnOp::Neg => format!("-{a}"),
                    UnOp::Sqrt => format!("{a}.sqrt()"),
                    UnOp::Rsqrt => format!("{one} / {a}.sqrt()"),
                    UnOp::Abs => format!("{a}.abs()"),
                    UnOp::Sign => format!("{support}::sign_{t}({a})"),
                    UnOp::Exp => format!("{support}::exp_{t}({a})"),
                    UnOp::ExpFma => format!("{support}::exp_fma_{t}({a})"),
                    UnOp::Ln => format!("{a}.ln()"),
                    UnOp::Sigmoid => format!("{one} / ({one} + {support}::exp_{t}(-{a}))"),
                    UnOp::Cos => format!("{a}.cos()"),
                    UnOp::Floor => format!("{a}.floor()"),
                    UnOp::RoundF32 if ty == Element::F32 => a,
                    UnOp::RoundF32 => format!("{support}::round_f32_{t}({a})"),
                    UnOp::RoundBf16 => format!("{support}::round_bf16_{t}({a})"),
                    UnOp::Not => format!("!{a}"),
                }
            }
            Op::Binary(b, x, y_id) => {
                let (x, y) = (v(x), v(y_id));
                match b {
                    BinOp::Add => format!("{x} + {y}"),
                    BinOp::Sub => format!("{x} - {y}"),
                    BinOp::Mul => format!("{x} * {y}"),
                    BinOp::Div => format!("{x} / {y}"),
                    BinOp::Pow if square_roots.contains(&y_id) => {
                        format!("{support}::half_power_{t}({x})")
                    }
                    BinOp::Pow => format!("{support}::pow_{t}({x}, {y})"),
                    BinOp::Min => format!("{support}::minimum_{t}({x}, {y})"),
                    BinOp::Max => format!("{support}::maximum_{t}({x}, {y})"),
                    BinOp::Lt => format!("{x} < {y}"),
                    BinOp::Le => format!("{x} <= {y}"),
                    BinOp::Gt => format!("{x} > {y}"),
                    BinOp::Ge => format!("{x} >= {y}"),
                    BinOp::Eq => format!("{x} == {y}"),
                    BinOp::Ne => format!("{x} != {y}"),
                    BinOp::And => format!("{x} & {y}"),
                    BinOp::Or => format!("{x} | {y}"),
                }
            }
            Op::Select(c, a, b) => format!("if {} {{ {} }} else {{ {} }}", v(c), v(a), v(b)),
            Op::Fma(a, b, c) => format!("{}.mul_add({}, {})", v(a), v(b), v(c)),
            other => unreachable!("{other:?} is not element-wise"),
        };
        let _ = writeln!(out, "{indent}let v{id} = {expr};");
    }
}

fn element_body(schedule: &Schedule, roots: &[ValueId], ty: Element, support: &str) -> String {
    let rule = &schedule.rule;
    let needed = element_nodes(rule, roots);
    let written: Vec<usize> = schedule
        .outputs
        .iter()
        .map(|o| output_buffer(rule, o.0))
        .collect();
    let mut out = String::new();
    entry(schedule, &needed, roots, &written, ty, &mut out);
    let element_loop = |out: &mut String, square_roots: &[ValueId]| {
        let _ = writeln!(out, "    for i in 0..n {{");
        element_statements(
            rule,
            &needed,
            (ty, support),
            ("b", "i"),
            square_roots,
            "        ",
            out,
        );
        for (o, v) in &schedule.outputs {
            let _ = writeln!(out, "        b{}[i] = v{};", output_buffer(rule, *o), v.0);
        }
        let _ = writeln!(out, "    }}");
    };
    // A loop calling `pow` per element does not vectorize; when its
    // exponents are scalars and all 0.5, a second loop takes square roots.
    let exponents = scalar_exponents(schedule, &needed);
    if exponents.is_empty() {
        element_loop(&mut out, &[]);
    } else {
        let half = literal(0.5, ty);
        let all_half: Vec<String> = exponents
            .iter()
            .map(|y| format!("v{} == {half}", y.0))
            .collect();
        let _ = writeln!(out, "    if {} {{", all_half.join(" && "));
        element_loop(&mut out, &exponents);
        let _ = writeln!(out, "    }} else {{");
        element_loop(&mut out, &[]);
        let _ = writeln!(out, "    }}");
    }
    out
}

fn reduction_body(schedule: &Schedule, pass: &[ValueId], ty: Element, support: &str) -> String {
    let rule = &schedule.rule;
    let t = ty.name();
    // Element `i` goes to accumulator `i % width` (`REDUCTION_SETS`).
    let width = ty.lanes() * REDUCTION_SETS;
    let args = reductions_of(rule, pass);
    let arg_ids: Vec<ValueId> = args.iter().map(|a| a.1).collect();
    let needed = element_nodes(rule, &arg_ids);
    let mut out = String::new();
    entry(schedule, &needed, &arg_ids, &[], ty, &mut out);
    let (used, _) = kernel_uses(rule, &needed, &arg_ids, &[]);
    let rule_buffers: Vec<usize> = (0..used.len()).filter(|&k| used[k]).collect();
    let _ = writeln!(out, "    const BLOCK: usize = {REDUCE_BLOCK};");
    for (k, (_, arg)) in args.iter().enumerate() {
        let _ = writeln!(out, "    let mut acc{k} = [0.0f64; {width}];");
        let (init, elem) = match rule.node(*arg).ty {
            Ty::Bool => ("false".to_string(), "bool"),
            Ty::Float => (literal(0.0, ty), t),
        };
        let _ = writeln!(out, "    let mut x{k}: [{elem}; BLOCK] = [{init}; BLOCK];");
    }
    let _ = writeln!(out, "    let mut base = 0;");
    let _ = writeln!(out, "    while base + {width} <= n {{");
    let _ = writeln!(
        out,
        "        let len = BLOCK.min((n - base) / {width} * {width});"
    );
    for k in &rule_buffers {
        let _ = writeln!(out, "        let c{k} = &b{k}[base..base + len];");
    }
    // The block's values, element by element (vectorizable), ...
    let _ = writeln!(out, "        for j in 0..len {{");
    element_statements(
        rule,
        &needed,
        (ty, support),
        ("c", "j"),
        &[],
        "            ",
        &mut out,
    );
    for (k, (_, arg)) in args.iter().enumerate() {
        let _ = writeln!(out, "            x{k}[j] = v{};", arg.0);
    }
    let _ = writeln!(out, "        }}");
    // ... then accumulated in index order, as the JIT does.
    let accumulate = |out: &mut String, masked: bool| {
        for (k, (op, _)) in args.iter().enumerate() {
            let x = "x";
            let wide = match t {
                "f32" => format!("f64::from({x})"),
                _ => x.to_string(),
            };
            let contribution = match op {
                ReduceOp::Count => format!("if {x} {{ 1.0f64 }} else {{ 0.0f64 }}"),
                ReduceOp::Sum | ReduceOp::Mean => wide,
                ReduceOp::Norm => format!("{wide} * {wide}"),
                ReduceOp::MaxAbs => format!("{wide}.abs()"),
            };
            let value = if masked {
                format!("if base + j < valid {{ {contribution} }} else {{ 0.0f64 }}")
            } else {
                contribution
            };
            let update = match op {
                ReduceOp::MaxAbs => {
                    format!("acc{k}[lane] = {support}::maximum_f64(acc{k}[lane], {value});")
                }
                _ => format!("acc{k}[lane] += {value};"),
            };
            if masked {
                let _ = writeln!(
                    out,
                    "            for (j, &x) in x{k}[..len].iter().enumerate() {{ let lane = j % {width}; {update} }}"
                );
            } else if *op == ReduceOp::Count {
                // Counts are whole numbers below 2^53, so every f64 sum of
                // them is exact and the lanes' order cannot change the
                // total: the block is counted in integers (vectorized).
                let _ = writeln!(
                    out,
                    "            {{ let mut ones = 0u32; for &x in &x{k}[..len] {{ ones += u32::from(x); }} acc{k}[0] += f64::from(ones); }}"
                );
            } else {
                let _ = writeln!(
                    out,
                    "            for c in x{k}[..len].chunks_exact({width}) {{ for lane in 0..{width} {{ let x = c[lane]; {update} }} }}"
                );
            }
        }
    };
    let _ = writeln!(out, "        if base + len <= valid {{");
    accumulate(&mut out, false);
    let _ = writeln!(out, "        }} else {{");
    accumulate(&mut out, true);
    let _ = writeln!(out, "        }}");
    let _ = writeln!(out, "        base += len;");
    let _ = writeln!(out, "    }}");
    for (k, (op, _)) in args.iter().enumerate() {
        let mut total = format!("acc{k}[0]");
        for lane in 1..width {
            total = match op {
                ReduceOp::MaxAbs => format!("{support}::maximum_f64({total}, acc{k}[{lane}])"),
                _ => format!("({total} + acc{k}[{lane}])"),
            };
        }
        let _ = writeln!(out, "    unsafe {{ *out.add({k}) = {total} }};");
    }
    out
}
