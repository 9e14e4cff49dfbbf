//! Kernels compiled into the crate: what `optimizer!` generates, and how a
//! step finds it instead of the JIT.
//!
//! At compile time `optimizer!` runs the JIT's pipeline (check, e-graph,
//! schedule) for a few *variants* of the rule, emits their kernels as Rust
//! (`lensopt_codegen::rust`) and a [`CompiledRule`] describing them. The
//! first call of the optimizer's `rule()` registers it here; from then on
//! [`crate::jit::Engine`] serves any step of that rule whose key a variant
//! covers from the compiled kernels, with no optimization and no JIT:
//!
//! - the default variant: the hyperparameters' declared defaults compiled
//!   in as the JIT would specialise them (booleans, zeros);
//! - the generic variant: nothing compiled in, so it serves every other
//!   choice of hyperparameters;
//!
//! each in [`Mode::Fast`] and [`Mode::Exact`] and for every combination of optional inputs present (all combinations
//! up to three optional inputs; all present and all absent beyond).
//!
//! The kernel contract is the JIT's (`lensopt_codegen::cpu::kernel`): the
//! same pointer table, slot layout, order of reductions' additions and element
//! arithmetic, so the exact variants are bit-identical to the JIT and every
//! caller of a [`Program`] is unchanged. Each kernel exists for three
//! instruction sets; [`isa`] picks the best the CPU has, once.

use crate::jit::Key;
use crate::Float;
use lensopt_codegen::cpu::program::{ElementFn, ReduceFn};
use lensopt_codegen::cpu::Program;
use lensopt_ir::optimize::Mode;
use lensopt_ir::schedule::Schedule;
use lensopt_ir::{HyperValue, Rule};
use std::sync::{Arc, Mutex, OnceLock};

/// The kernels of one variant for one element type, per instruction set
/// (`lensopt_codegen::rust::ISAS` order).
pub struct Kernels {
    /// The element kernel.
    pub element: &'static [ElementFn; 3],
    /// One reduction kernel per pass.
    pub reduce: &'static [[ReduceFn; 3]],
}

/// One compiled specialisation of a rule.
pub struct Variant {
    /// Rewrite class.
    pub mode: Mode,
    /// Per hyperparameter, the value compiled in (as [`Key::specialize`]);
    /// a variant with nothing compiled in serves any hyperparameters.
    pub specialize: &'static [Option<HyperValue>],
    /// Per input, its presence (as [`Key::present`]).
    pub present: &'static [bool],
    /// The optimized rule the kernels implement (before scheduling), in
    /// `lensopt_ir::encoding`'s form.
    pub optimized: &'static [u8],
    /// Kernels for `f32`.
    pub f32: Kernels,
    /// Kernels for `f64`.
    pub f64: Kernels,
}

/// Everything `optimizer!` compiled for one rule.
pub struct CompiledRule {
    /// The checked rule, as the front end produced it at compile time, in
    /// `lensopt_ir::encoding`'s form.
    pub checked: &'static [u8],
    /// Whether the crate that declared the rule was built with optimizations
    /// (`debug_assertions` off): unoptimized kernels run several times
    /// slower than the JIT's, so they serve steps only when asked
    /// ([`serve_unoptimized`]).
    pub optimized: bool,
    /// The compiled variants.
    pub variants: &'static [Variant],
}

struct Registered {
    hash: u64,
    rule: Arc<Rule>,
    compiled: &'static CompiledRule,
}

fn registry() -> std::sync::MutexGuard<'static, Vec<Registered>> {
    static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
    // The registry only grows by whole entries: a panic elsewhere cannot
    // leave it half-written.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `compiled` (once per rule) and returns its checked rule; what
/// an `optimizer!` struct's `rule()` calls the first time.
pub fn register(compiled: &'static CompiledRule) -> Arc<Rule> {
    let mut entries = registry();
    if let Some(e) = entries.iter().find(|e| std::ptr::eq(e.compiled, compiled)) {
        return e.rule.clone();
    }
    let rule = Arc::new(decoded(compiled.checked));
    entries.push(Registered {
        hash: rule.structural_hash(),
        rule: rule.clone(),
        compiled,
    });
    rule
}

/// The instruction set the compiled kernels run with: 0 baseline, 1 AVX2
/// and FMA, 2 AVX-512 (with AVX2 and FMA); detected once.
pub fn isa() -> usize {
    static LEVEL: OnceLock<usize> = OnceLock::new();
    *LEVEL.get_or_init(detect_isa)
}

fn detect_isa() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return 2;
        }
        if avx2 {
            return 1;
        }
    }
    0
}

static SERVE_UNOPTIMIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets kernels compiled without optimizations (a debug build of the crate
/// that declared the rule) serve steps too; by default the JIT, whose code
/// is optimized whatever the build, serves those rules.
pub fn serve_unoptimized(on: bool) {
    SERVE_UNOPTIMIZED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The variant of a registered rule that serves `key`: the exact
/// specialisation if one was compiled, else the generic one.
fn variant(rule: &Rule, key: &Key) -> Option<&'static Variant> {
    let hash = rule.structural_hash();
    let compiled = {
        let entries = registry();
        entries
            .iter()
            .find(|e| e.hash == hash && e.rule.same_structure(rule))
            .map(|e| e.compiled)?
    };
    if !compiled.optimized && !SERVE_UNOPTIMIZED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let serves = |v: &&Variant| v.mode == key.mode && v.present == key.present.as_slice();
    compiled
        .variants
        .iter()
        .filter(serves)
        .find(|v| v.specialize == key.specialize.as_slice())
        .or_else(|| {
            let generic = |v: &&Variant| v.specialize.iter().all(Option::is_none);
            compiled.variants.iter().filter(serves).find(generic)
        })
}

/// A rule `optimizer!` encoded when it compiled this crate.
fn decoded(bytes: &[u8]) -> Rule {
    match lensopt_ir::encoding::decode(bytes) {
        Ok(rule) => rule,
        // The macro encoded it with this very version of the encoding.
        Err(e) => unreachable!("optimizer! emitted a rule that does not decode: {e}"),
    }
}

/// The compiled program for `rule` and `key` with the kernels of
/// instruction set `isa` (at most [`isa()`]), when `optimizer!` compiled a
/// variant that serves them.
pub fn program_for_isa<F: Float>(rule: &Rule, key: &Key, isa: usize) -> Option<Program<F>> {
    if isa > self::isa() {
        return None;
    }
    let v = variant(rule, key)?;
    let kernels = match F::NAME {
        "f32" => &v.f32,
        _ => &v.f64,
    };
    let schedule = Schedule::new(decoded(v.optimized));
    if schedule.passes.len() != kernels.reduce.len() {
        return None;
    }
    let passes = kernels.reduce.iter().map(|k| k[isa]).collect();
    // SAFETY: `optimizer!` emitted these kernels from this very schedule
    // (the optimized rule above, scheduled by the same `Schedule::new`) for
    // element type `F`, under the JIT's kernel contract, and `isa` is an
    // instruction set this CPU has.
    Some(unsafe { Program::from_native(schedule, kernels.element[isa], passes) })
}

/// [`program_for_isa`] with the best instruction set of this CPU.
pub fn program<F: Float>(rule: &Rule, key: &Key) -> Option<Program<F>> {
    program_for_isa(rule, key, isa())
}

/// The IR's `min`, `max` and `sign` for one element type, for the
/// generated kernels: `min`/`max` are IEEE 754-2019 minimum and maximum
/// (NaN if either argument is NaN, -0 below +0), `sign(x)` is 1 above 0,
/// -1 below, and `x` itself otherwise (0, -0, NaN).
macro_rules! element_functions {
    ($t:ty, $minimum:ident, $maximum:ident, $sign:ident) => {
        #[doc = concat!("`min(a, b)` as the IR defines it, in ", stringify!($t), ".")]
        #[inline(always)]
        pub fn $minimum(a: $t, b: $t) -> $t {
            // Equal values have equal bits but for ±0, where the minimum
            // is the one with the sign bit: the bits' OR. (Written so that
            // it vectorizes to a min, two compares, an or and two blends.)
            let smaller = if a < b { a } else { b };
            let tied = <$t>::from_bits(a.to_bits() | b.to_bits());
            let ordered = if a == b { tied } else { smaller };
            if a.is_nan() || b.is_nan() {
                a + b
            } else {
                ordered
            }
        }

        #[doc = concat!("`max(a, b)` as the IR defines it, in ", stringify!($t), ".")]
        #[inline(always)]
        pub fn $maximum(a: $t, b: $t) -> $t {
            // As `min`, with the bits' AND: +0 wins over -0.
            let larger = if a > b { a } else { b };
            let tied = <$t>::from_bits(a.to_bits() & b.to_bits());
            let ordered = if a == b { tied } else { larger };
            if a.is_nan() || b.is_nan() {
                a + b
            } else {
                ordered
            }
        }

        #[doc = concat!("`sign(x)` as the IR defines it, in ", stringify!($t), ".")]
        #[inline(always)]
        pub fn $sign(x: $t) -> $t {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }
    };
}

element_functions!(f32, minimum_f32, maximum_f32, sign_f32);
element_functions!(f64, minimum_f64, maximum_f64, sign_f64);

/// `exp(x)` and `exp_fma(x)` on elements: lensopt's own, which rustc
/// vectorizes in a kernel's loop (and fuses, for `exp_fma`, in the AVX2 and
/// AVX-512 versions).
pub use lensopt_ir::elementary::{exp_f32, exp_f64, exp_fma_f32, exp_fma_f64};

/// `x^y` on elements (lensopt's own `pow`), and `x^0.5`, which a compiled
/// kernel calls instead when its exponent is 0.5 everywhere (vectorized).
pub use lensopt_ir::elementary::{half_power_f32, half_power_f64, pow_f32, pow_f64};

/// `f32(x)` on f64 elements.
#[inline(always)]
pub fn round_f32_f64(x: f64) -> f64 {
    lensopt_ir::Float::round_f32(x)
}

/// `bf16(x)` on f32 elements.
#[inline(always)]
pub fn round_bf16_f32(x: f32) -> f32 {
    lensopt_ir::Float::round_bf16(x)
}

/// `bf16(x)` on f64 elements.
#[inline(always)]
pub fn round_bf16_f64(x: f64) -> f64 {
    lensopt_ir::Float::round_bf16(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lensopt_ir::interp::{maximum, minimum};

    /// The compiled kernels' `min`/`max` are the interpreter's on every
    /// pair of special and ordinary values, bit for bit (NaN as NaN).
    #[test]
    fn min_and_max_match_the_interpreter() {
        let xs = [
            0.0f64,
            -0.0,
            1.5,
            -1.5,
            2.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            5e-324,
        ];
        let same64 = |x: f64, y: f64| (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits();
        let same32 = |x: f32, y: f32| (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits();
        for &a in &xs {
            for &b in &xs {
                assert!(same64(minimum_f64(a, b), minimum(a, b)), "min({a}, {b})");
                assert!(same64(maximum_f64(a, b), maximum(a, b)), "max({a}, {b})");
                let (a, b) = (a as f32, b as f32);
                assert!(same32(minimum_f32(a, b), minimum(a, b)), "min({a}, {b})");
                assert!(same32(maximum_f32(a, b), maximum(a, b)), "max({a}, {b})");
            }
        }
    }
}
