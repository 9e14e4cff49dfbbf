//! What a step does with gradients that hold NaN or ±infinity.
//!
//! A single non-finite gradient element, applied, turns the parameter and
//! every moment estimate it touches into NaN for good. So a [`Stepper`]
//! scans its gradients (and extra inputs) before it changes anything and
//! follows a [`NonFinite`] policy:
//!
//! - [`NonFinite::Refuse`] (the default): the step returns
//!   [`Error::NonFinite`], naming the tensor and the element; parameters,
//!   state and the step counter are as they were, so the caller can stop,
//!   lower the learning rate, or load a checkpoint.
//! - [`NonFinite::Skip`]: the step is skipped (nothing changes, the step
//!   counter does not advance, as a loss scaler does in mixed precision)
//!   and counted: [`Stepper::skipped`] and [`Stepper::last_skipped`] report it.
//! - [`NonFinite::Unchecked`]: no scan, for callers that guarantee finite
//!   gradients and want to save one read of every gradient.
//!
//! The scan is a branch-free pass (the largest `|x|` as an integer bit
//! pattern: non-finite exactly when all exponent bits are set) with the
//! widest vectors the CPU has, in 64K-element chunks on the stepper's
//! thread pool.
//!
//! [`Stepper`]: crate::Stepper
//! [`Stepper::skipped`]: crate::Stepper::skipped
//! [`Stepper::last_skipped`]: crate::Stepper::last_skipped
//! [`Error::NonFinite`]: crate::Error::NonFinite

use crate::Float;
use lensopt_ir::InputDecl;
use rayon::prelude::*;

/// The policy for a step whose gradients or inputs are not all finite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinite {
    /// Refuse the step with [`crate::Error::NonFinite`]; nothing changes.
    #[default]
    Refuse,
    /// Skip the step (nothing changes, the step counter stays) and count it.
    Skip,
    /// Do not look (the caller guarantees finite gradients).
    Unchecked,
}

impl NonFinite {
    /// Parses `refuse` (also `stop`), `skip` or `unchecked`.
    pub fn parse(text: &str) -> Option<NonFinite> {
        match text {
            "refuse" | "stop" => Some(NonFinite::Refuse),
            "skip" => Some(NonFinite::Skip),
            "unchecked" => Some(NonFinite::Unchecked),
            _ => None,
        }
    }
}

/// Where a non-finite value was found.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// `gradient 2`, `input `h` 0`.
    pub what: String,
    /// The element's index in row-major order.
    pub index: usize,
    /// The value (NaN, inf or -inf).
    pub value: f64,
}

/// Elements per chunk of the parallel scan.
const CHUNK: usize = 1 << 16;
/// True when every element of `xs` is finite.
fn chunk_is_finite<F: Float>(xs: &[F]) -> bool {
    F::all_finite(xs)
}

/// The largest bit pattern of `|x|` over `xs`: a non-finite value has
/// every exponent bit set, so it is non-finite exactly when it is at least
/// `INF`'s pattern. An integer maximum, so the loop vectorizes.
macro_rules! magnitude_scan {
    ($name:ident, $avx2:ident, $avx512:ident, $float:ty, $bits:ty, $mask:expr) => {
        /// Four streams in lockstep: a core keeps more cache-line fills in
        /// flight over four sequential streams than over one.
        #[inline(always)]
        fn $name(xs: &[$float]) -> $bits {
            let quarter = xs.len() / 4;
            let (a, rest) = xs.split_at(quarter);
            let (b, rest) = rest.split_at(quarter);
            let (c, rest) = rest.split_at(quarter);
            let (d, tail) = rest.split_at(quarter);
            let mut m = [0; 4];
            for (((a, b), c), d) in a.iter().zip(b).zip(c).zip(d) {
                m[0] = m[0].max(a.to_bits() & $mask);
                m[1] = m[1].max(b.to_bits() & $mask);
                m[2] = m[2].max(c.to_bits() & $mask);
                m[3] = m[3].max(d.to_bits() & $mask);
            }
            let tail = tail.iter().fold(0, |m, x| m.max(x.to_bits() & $mask));
            m.into_iter().fold(tail, <$bits>::max)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx2(xs: &[$float]) -> $bits {
            $name(xs)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn $avx512(xs: &[$float]) -> $bits {
            $name(xs)
        }
    };
}

magnitude_scan!(
    magnitude_f32,
    magnitude_f32_avx2,
    magnitude_f32_avx512,
    f32,
    u32,
    0x7fff_ffff
);
magnitude_scan!(
    magnitude_f64,
    magnitude_f64_avx2,
    magnitude_f64_avx512,
    f64,
    u64,
    0x7fff_ffff_ffff_ffff
);

/// `$all(xs)`: true when every element of `xs` is finite, with the widest
/// vectors the CPU has.
macro_rules! finite_check {
    ($all:ident, $t:ty, $base:ident, $avx2:ident, $avx512:ident) => {
        pub(crate) fn $all(xs: &[$t]) -> bool {
            let infinity = <$t>::INFINITY.to_bits();
            #[cfg(target_arch = "x86_64")]
            {
                match crate::aot::isa() {
                    // SAFETY: `isa()` is 2 only on a CPU with AVX-512F.
                    2 => return unsafe { $avx512(xs) } < infinity,
                    // SAFETY: `isa()` is 1 only on a CPU with AVX2.
                    1 => return unsafe { $avx2(xs) } < infinity,
                    _ => {}
                }
            }
            $base(xs) < infinity
        }
    };
}

finite_check!(
    all_finite_f32,
    f32,
    magnitude_f32,
    magnitude_f32_avx2,
    magnitude_f32_avx512
);
finite_check!(
    all_finite_f64,
    f64,
    magnitude_f64,
    magnitude_f64_avx2,
    magnitude_f64_avx512
);

/// The first non-finite element of `xs`, if any.
pub(crate) fn first_non_finite<F: Float>(xs: &[F]) -> Option<(usize, f64)> {
    let clean = if xs.len() <= CHUNK {
        chunk_is_finite(xs)
    } else {
        xs.par_chunks(CHUNK).all(chunk_is_finite)
    };
    if clean {
        return None;
    }
    xs.iter()
        .position(|x| !x.to_f64().is_finite())
        .map(|i| (i, xs[i].to_f64()))
}

/// Scans the gradients and the supplied inputs of one step.
pub(crate) fn scan<F: Float>(
    grads: &[&[F]],
    inputs: &[Vec<Option<&[F]>>],
    decls: &[InputDecl],
) -> Option<Found> {
    for (i, g) in grads.iter().enumerate() {
        if let Some((index, value)) = first_non_finite(g) {
            return Some(Found {
                what: format!("gradient {i}"),
                index,
                value,
            });
        }
    }
    for (i, row) in inputs.iter().enumerate() {
        for (decl, data) in decls.iter().zip(row) {
            if let Some((index, value)) = data.and_then(first_non_finite) {
                return Some(Found {
                    what: format!("input `{}` {i}", decl.name),
                    index,
                    value,
                });
            }
        }
    }
    None
}

/// The rule a GPU step runs to scan its gradients and extra inputs before
/// anything changes: one reduction pass counting, per tensor, the elements
/// of `g` and of each input that are not finite (`x - x == 0` fails for NaN
/// and ±infinity). It has `rule`'s inputs and states (same kinds), so its
/// kernels read the same descriptor table as `rule`'s; its parameter output
/// `p + min(count, 0)` keeps the pass alive under exact rewrites, and only
/// the reduction kernel is ever launched.
pub fn device_scan_rule(rule: &lensopt_ir::Rule) -> Result<lensopt_ir::Rule, String> {
    use lensopt_ir::builder::RuleBuilder;
    use lensopt_ir::{BinOp, Op, ReduceOp, Scope, UnOp};
    let mut b = RuleBuilder::new(&format!("{}NonFiniteScan", rule.name));
    let mut leaves = vec![b.grad()];
    for input in &rule.inputs {
        leaves.push(b.input(&input.name, input.optional));
    }
    let zero = b.constant(0.0);
    let mut states = Vec::new();
    for s in &rule.states {
        states.push(b.state(&s.name, s.kind, zero)?);
    }
    let mut count = zero;
    for x in leaves {
        let diff = b.op(Op::Binary(BinOp::Sub, x, x))?;
        let finite = b.op(Op::Binary(BinOp::Eq, diff, zero))?;
        let not_finite = b.op(Op::Unary(UnOp::Not, finite))?;
        let here = b.op(Op::Reduce(ReduceOp::Count, Scope::Tensor, not_finite))?;
        count = b.op(Op::Binary(BinOp::Add, count, here))?;
    }
    let p = b.param();
    let none = b.op(Op::Binary(BinOp::Min, count, zero))?;
    let p_out = b.op(Op::Binary(BinOp::Add, p, none))?;
    b.finish(p_out, &states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_bad_element_at_any_position_and_size() {
        for n in [0usize, 1, 15, 16, 17, 1000, CHUNK + 3, 3 * CHUNK + 5] {
            let clean = vec![1.5f32; n];
            assert_eq!(first_non_finite(&clean), None, "n = {n}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for at in [0, n / 2, n.saturating_sub(1)] {
                    if n == 0 {
                        continue;
                    }
                    let mut xs = clean.clone();
                    xs[at] = bad;
                    let (i, v) = first_non_finite(&xs).expect("found");
                    assert_eq!(i, at);
                    assert!(v.is_nan() == bad.is_nan() && (v.is_nan() || v == f64::from(bad)));
                }
            }
        }
        // Large finite values are finite (x - x = 0 even at f64::MAX).
        assert_eq!(
            first_non_finite(&[f64::MAX, -f64::MAX, f64::MIN_POSITIVE]),
            None
        );
    }

    #[test]
    fn policies_parse() {
        assert_eq!(NonFinite::parse("stop"), Some(NonFinite::Refuse));
        assert_eq!(NonFinite::parse("skip"), Some(NonFinite::Skip));
        assert_eq!(NonFinite::parse("unchecked"), Some(NonFinite::Unchecked));
        assert_eq!(NonFinite::parse("ignore"), None);
    }
}
