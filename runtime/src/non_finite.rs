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
//! The scan is one more read of every gradient. Where a pass writes the
//! gradients anyway (unscaling after a loss-scaled backward pass, averaging,
//! adding the last micro-batch in, the sharded step's reduce-scatter), the
//! same test rides on that pass at no cost in bytes: [`CheckedGradients`]
//! holds its verdict, and [`Stepper::step_checked`] follows the policy on
//! it without reading the gradients again.
//!
//! [`Stepper`]: crate::Stepper
//! [`Stepper::skipped`]: crate::Stepper::skipped
//! [`Stepper::last_skipped`]: crate::Stepper::last_skipped
//! [`Stepper::step_checked`]: crate::Stepper::step_checked
//! [`Error::NonFinite`]: crate::Error::NonFinite

use crate::error::{mismatch, Error};
use crate::tensor::{TensorMut, TensorRef};
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
/// `fn $name(args) -> $ret { body }`, compiled for AVX-512F, for AVX2 and
/// for the baseline, the widest the CPU has chosen at each call.
macro_rules! widest {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            fn avx512($($arg: $ty),*) -> $ret {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) -> $ret {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            {
                match crate::aot::isa() {
                    // SAFETY: `isa()` is 2 only on a CPU with AVX-512F.
                    2 => return unsafe { avx512($($arg),*) },
                    // SAFETY: `isa()` is 1 only on a CPU with AVX2.
                    1 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// `$all(xs)`: true when every element of `xs` is finite, with the widest
/// vectors the CPU has. It takes the largest bit pattern of `|x|` over
/// `xs`: a non-finite value has every exponent bit set, so it is
/// non-finite exactly when it is at least `INF`'s pattern. An integer
/// maximum, so the loop vectorizes.
macro_rules! finite_scan {
    ($all:ident, $t:ty, $bits:ty) => {
        widest!(
            /// Four streams in lockstep: a core keeps more cache-line fills
            /// in flight over four sequential streams than over one.
            pub(crate) fn $all(xs: &[$t]) -> bool {
                let mask = <$bits>::MAX >> 1;
                let quarter = xs.len() / 4;
                let (a, rest) = xs.split_at(quarter);
                let (b, rest) = rest.split_at(quarter);
                let (c, rest) = rest.split_at(quarter);
                let (d, tail) = rest.split_at(quarter);
                let mut m: [$bits; 4] = [0; 4];
                for (((a, b), c), d) in a.iter().zip(b).zip(c).zip(d) {
                    m[0] = m[0].max(a.to_bits() & mask);
                    m[1] = m[1].max(b.to_bits() & mask);
                    m[2] = m[2].max(c.to_bits() & mask);
                    m[3] = m[3].max(d.to_bits() & mask);
                }
                let tail = tail.iter().fold(0, |m, x| m.max(x.to_bits() & mask));
                m.into_iter().fold(tail, <$bits>::max) < <$t>::INFINITY.to_bits()
            }
        );
    };
}

finite_scan!(all_finite_f32, f32, u32);
finite_scan!(all_finite_f64, f64, u64);

/// Passes that write gradients and check them in the same pass, for one
/// float type: each keeps the largest bit pattern of `|x|` it wrote (as
/// `finite_scan!` does), so the check is a maximum on values already in
/// registers and the pass moves the same bytes as without it.
macro_rules! checked_writes {
    ($t:ty, $bits:ty, $scale:ident, $div:ident, $add:ident) => {
        widest!(
            /// `xs *= factor`; true when every result is finite.
            pub(crate) fn $scale(xs: &mut [$t], factor: $t) -> bool {
                let mut m: $bits = 0;
                for x in xs.iter_mut() {
                    *x *= factor;
                    m = m.max(x.to_bits() & (<$bits>::MAX >> 1));
                }
                m < <$t>::INFINITY.to_bits()
            }
        );

        widest!(
            /// `xs /= divisor`; true when every result is finite.
            pub(crate) fn $div(xs: &mut [$t], divisor: $t) -> bool {
                let mut m: $bits = 0;
                for x in xs.iter_mut() {
                    *x /= divisor;
                    m = m.max(x.to_bits() & (<$bits>::MAX >> 1));
                }
                m < <$t>::INFINITY.to_bits()
            }
        );

        widest!(
            /// `acc += part` over their common length; true when every sum
            /// is finite.
            pub(crate) fn $add(acc: &mut [$t], part: &[$t]) -> bool {
                let mut m: $bits = 0;
                for (a, x) in acc.iter_mut().zip(part) {
                    *a += *x;
                    m = m.max(a.to_bits() & (<$bits>::MAX >> 1));
                }
                m < <$t>::INFINITY.to_bits()
            }
        );
    };
}

checked_writes!(f32, u32, scale_finite_f32, div_finite_f32, add_finite_f32);
checked_writes!(f64, u64, scale_finite_f64, div_finite_f64, add_finite_f64);

/// The first non-finite element of `xs`, if any.
pub(crate) fn first_non_finite<F: Float>(xs: &[F]) -> Option<(usize, f64)> {
    let clean = if xs.len() <= CHUNK {
        F::all_finite(xs)
    } else {
        xs.par_chunks(CHUNK).all(F::all_finite)
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

/// Gradients written by a pass that checked them as it wrote them, for
/// [`Stepper::step_checked`]: the step then follows its [`NonFinite`]
/// policy on this verdict and does not read the gradients an extra time.
///
/// A step must know every gradient element finite before it writes
/// anything, so on its own it reads each gradient twice (4 more bytes per
/// element: Adam's 28 become 32). Training loops already pass over their
/// gradients before the step: unscaling a loss-scaled gradient, averaging
/// over micro-batches or ranks, adding the last micro-batch in. The
/// constructors here are such passes with the check folded in, at the
/// cost of a maximum on values already in registers.
///
/// The verdict covers exactly the elements the pass wrote: it keeps them
/// borrowed (shared) for as long as it lives, so nothing can change them
/// in between, and the step reads those same slices.
///
/// The passes run on the current rayon pool (`pool.install(...)` to choose
/// one) in chunks of 64K elements.
///
/// ```
/// use lensopt::{catalog, CheckedGradients, Optimizer, TensorMut};
/// use ndarray::Array1;
///
/// let mut w = Array1::<f32>::zeros(4);
/// let mut adam = catalog::get("adam").unwrap().init::<f32>(&[&w]).unwrap();
/// // A gradient of the loss scaled by 1024, as mixed precision computes it.
/// let mut g = Array1::from(vec![512.0f32, -1024.0, 0.0, 2048.0]);
/// let grads: Vec<&mut dyn TensorMut<f32>> = vec![&mut g];
/// let checked = CheckedGradients::scale(grads, 1.0 / 1024.0).unwrap();
/// assert!(checked.found().is_none());
/// adam.step_checked(&mut [&mut w], &checked).unwrap();
/// assert!(w[0] < 0.0 && w[3] < 0.0 && w[1] > 0.0);
/// ```
///
/// [`Stepper::step_checked`]: crate::Stepper::step_checked
pub struct CheckedGradients<'a, F> {
    tensors: Vec<(&'a [F], Vec<usize>)>,
    found: Option<Found>,
}

/// Shapes and verdict, not the elements (there may be millions).
impl<F> std::fmt::Debug for CheckedGradients<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shapes: Vec<&[usize]> = self.tensors.iter().map(|(_, s)| &s[..]).collect();
        f.debug_struct("CheckedGradients")
            .field("shapes", &shapes)
            .field("found", &self.found)
            .finish()
    }
}

impl<'a, F: Float> CheckedGradients<'a, F> {
    /// Multiplies every element of every gradient by `factor` (unscaling a
    /// loss-scaled gradient, averaging a sum) and checks the results.
    pub fn scale(grads: Vec<&'a mut dyn TensorMut<F>>, factor: F) -> Result<Self, Error> {
        // Every tensor is checked before any element is written.
        for (k, g) in grads.iter().enumerate() {
            if g.elements().is_none() {
                return Err(not_contiguous(k));
            }
        }
        let mut tensors = Vec::with_capacity(grads.len());
        let mut finite = true;
        for (k, g) in grads.into_iter().enumerate() {
            let shape = g.shape().to_vec();
            let xs = g.elements_mut().ok_or_else(|| not_contiguous(k))?;
            finite &= xs
                .par_chunks_mut(CHUNK)
                .map(|c| F::scale_finite(c, factor))
                .reduce(|| true, |a, b| a && b);
            tensors.push((&*xs, shape));
        }
        Ok(Self::judged(tensors, finite))
    }

    /// Adds `parts[k]` into `acc[k]` (the last micro-batch of an
    /// accumulation, another worker's share) and checks the sums.
    /// Shapes must match pairwise.
    pub fn add(
        acc: Vec<&'a mut dyn TensorMut<F>>,
        parts: &[&dyn TensorRef<F>],
    ) -> Result<Self, Error> {
        if acc.len() != parts.len() {
            return Err(mismatch(format!(
                "{} gradients to add into, but {} to add",
                acc.len(),
                parts.len()
            )));
        }
        // Every pair is checked before any element is written.
        for (k, (a, x)) in acc.iter().zip(parts).enumerate() {
            if a.shape() != x.shape() {
                return Err(mismatch(format!(
                    "gradient {k} has shape {:?}, but the one added to it has shape {:?}",
                    a.shape(),
                    x.shape()
                )));
            }
            match (a.elements(), x.elements()) {
                (Some(a), Some(x)) if a.len() == x.len() => {}
                (Some(a), Some(x)) => {
                    return Err(mismatch(format!(
                        "gradient {k} has {} elements, but the one added to it has {}",
                        a.len(),
                        x.len()
                    )))
                }
                _ => return Err(not_contiguous(k)),
            }
        }
        let mut tensors = Vec::with_capacity(acc.len());
        let mut finite = true;
        for (k, (a, x)) in acc.into_iter().zip(parts).enumerate() {
            let shape = a.shape().to_vec();
            let part = x.elements().ok_or_else(|| not_contiguous(k))?;
            let sums = a.elements_mut().ok_or_else(|| not_contiguous(k))?;
            finite &= sums
                .par_chunks_mut(CHUNK)
                .zip(part.par_chunks(CHUNK))
                .map(|(s, p)| F::add_finite(s, p))
                .reduce(|| true, |a, b| a && b);
            tensors.push((&*sums, shape));
        }
        Ok(Self::judged(tensors, finite))
    }

    /// The verdict, with the first offending element located (a second
    /// read, only when there is one).
    fn judged(tensors: Vec<(&'a [F], Vec<usize>)>, finite: bool) -> Self {
        let found = if finite {
            None
        } else {
            let grads: Vec<&[F]> = tensors.iter().map(|(xs, _)| *xs).collect();
            scan(&grads, &[], &[])
        };
        CheckedGradients { tensors, found }
    }

    /// The first NaN or infinity the pass wrote, if any.
    pub fn found(&self) -> Option<&Found> {
        self.found.as_ref()
    }

    /// How many gradients the pass wrote.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the pass wrote no gradient.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Gradient `k`'s elements (row-major) and shape.
    pub(crate) fn tensor(&self, k: usize) -> (&'a [F], &[usize]) {
        let (xs, shape) = &self.tensors[k];
        (xs, shape)
    }
}

/// The error for gradient `k` not laid out row-major in one piece.
fn not_contiguous(k: usize) -> Error {
    mismatch(format!(
        "gradient {k} is not contiguous in standard (row-major) order"
    ))
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
    fn checked_writes_compute_as_plain_loops_and_see_every_bad_value() {
        for n in [0usize, 1, 15, 16, 17, 1000, 4099] {
            let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.61).sin() * 3e3).collect();
            let part: Vec<f32> = (0..n).map(|i| (i as f32 * 0.13).cos()).collect();
            let plain = |f: &dyn Fn(f32, f32) -> f32| -> Vec<u32> {
                xs.iter()
                    .zip(&part)
                    .map(|(x, p)| f(*x, *p).to_bits())
                    .collect()
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut scaled = xs.clone();
            assert!(f32::scale_finite(&mut scaled, 0.3));
            assert_eq!(bits(&scaled), plain(&|x, _| x * 0.3), "n = {n}");
            let mut divided = xs.clone();
            assert!(f32::div_finite(&mut divided, 3.0));
            assert_eq!(bits(&divided), plain(&|x, _| x / 3.0), "n = {n}");
            let mut sums = xs.clone();
            assert!(f32::add_finite(&mut sums, &part));
            assert_eq!(bits(&sums), plain(&|x, p| x + p), "n = {n}");
            for at in [0, n / 2, n.saturating_sub(1)] {
                if n == 0 {
                    continue;
                }
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut v = xs.clone();
                    v[at] = bad;
                    assert!(!f32::scale_finite(&mut v.clone(), 0.5), "n = {n}, at {at}");
                    assert!(!f32::div_finite(&mut v.clone(), 2.0), "n = {n}, at {at}");
                    assert!(!f32::add_finite(&mut v, &part), "n = {n}, at {at}");
                }
                // Finite in, infinite out: the check is on what is written.
                let mut v = xs.clone();
                v[at] = f32::MAX;
                assert!(f32::scale_finite(&mut v.clone(), 1.0));
                assert!(!f32::scale_finite(&mut v.clone(), 2.0));
                assert!(!f32::div_finite(&mut v.clone(), 0.25));
                let mut overflowing = part.clone();
                overflowing[at] = f32::MAX;
                assert!(!f32::add_finite(&mut v, &overflowing));
                let mut wide: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
                wide[at] = f64::MAX;
                assert!(f64::scale_finite(&mut wide.clone(), -1.0));
                assert!(!f64::scale_finite(&mut wide, -2.0));
            }
        }
    }

    #[test]
    fn policies_parse() {
        assert_eq!(NonFinite::parse("stop"), Some(NonFinite::Refuse));
        assert_eq!(NonFinite::parse("skip"), Some(NonFinite::Skip));
        assert_eq!(NonFinite::parse("unchecked"), Some(NonFinite::Unchecked));
        assert_eq!(NonFinite::parse("ignore"), None);
    }
}
