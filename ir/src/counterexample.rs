//! Counterexamples for [`crate::optimize::equivalent`]: two rules with the
//! same interface run side by side on the reference interpreter, on random
//! tensors, until their parameters or states differ beyond rounding.

use crate::hyper::HyperValue;
use crate::interp::{init_state, step, StateBuf, StepTensor};
use crate::rule::{Rule, StateKind};

/// Relative difference above which two f64 results are different updates,
/// not the same update computed in another order.
const TOLERANCE: f64 = 1e-9;

/// A small deterministic generator (SplitMix64) of values in [-2, 2].
struct Values(u64);

impl Values {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
    }

    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn differs(x: f64, y: f64) -> bool {
    if x.is_nan() || y.is_nan() {
        return x.is_nan() != y.is_nan();
    }
    (x - y).abs() > TOLERANCE * (1.0 + x.abs().max(y.abs()))
}

/// Runs `a` and `b` (same names, checked by the caller) for three steps on
/// a few random tensors with their declared defaults and every optional
/// input present; describes the first difference found.
pub fn search(a: &Rule, b: &Rule) -> Option<String> {
    const ELEMENTS: usize = 7;
    const STEPS: u64 = 3;
    for trial in 0..8u64 {
        let mut values = Values(0x5eed ^ trial.wrapping_mul(0x2545_f491_4f6c_dd1d));
        // The first trials use the first rule's defaults; later ones move
        // every hyperparameter a little (a zero becomes small and positive,
        // a switch flips), so that rules equal only at the defaults differ.
        let hypers_a: Vec<HyperValue> = a
            .hypers
            .iter()
            .map(|h| match h.default {
                _ if trial < 2 => h.default,
                HyperValue::Num(0.0) => HyperValue::Num(0.05 * values.next().abs()),
                HyperValue::Num(x) => HyperValue::Num(x * (1.0 + 0.125 * values.next())),
                HyperValue::Bool(v) => HyperValue::Bool(v ^ (values.next() > 0.0)),
            })
            .collect();
        let hypers_b: Vec<HyperValue> = b
            .hypers
            .iter()
            .map(|h| Some(hypers_a[a.hyper_index(&h.name)?]))
            .collect::<Option<Vec<_>>>()?;
        let p0 = values.vec(ELEMENTS);
        let grads: Vec<Vec<f64>> = (0..STEPS).map(|_| values.vec(ELEMENTS)).collect();
        let inputs: Vec<Vec<f64>> = a.inputs.iter().map(|_| values.vec(ELEMENTS)).collect();
        let (mut pa, mut pb) = (p0.clone(), p0.clone());
        let mut sa = init_state(a, &hypers_a, &pa);
        let mut sb = init_state(b, &hypers_b, &pb);
        for t in 1..=STEPS {
            let g = &grads[(t - 1) as usize];
            let ins_a: Vec<Option<&[f64]>> = (0..a.inputs.len())
                .map(|k| Some(inputs[k].as_slice()))
                .collect();
            let ins_b: Vec<Option<&[f64]>> = b
                .inputs
                .iter()
                .map(|i| a.input_index(&i.name).map(|k| inputs[k].as_slice()))
                .collect();
            let present_a = vec![true; a.inputs.len()];
            let present_b = vec![true; b.inputs.len()];
            let ra = step(
                a,
                t,
                &present_a,
                &mut [StepTensor {
                    param: &mut pa,
                    grad: g,
                    inputs: ins_a,
                    state: &mut sa,
                    hypers: &hypers_a,
                }],
            );
            let rb = step(
                b,
                t,
                &present_b,
                &mut [StepTensor {
                    param: &mut pb,
                    grad: g,
                    inputs: ins_b,
                    state: &mut sb,
                    hypers: &hypers_b,
                }],
            );
            if ra.is_err() || rb.is_err() {
                return None;
            }
            if let Some(e) = (0..ELEMENTS).find(|&e| differs(pa[e], pb[e])) {
                return Some(format!(
                    "at step {t}, element {e} of p is {} by the first rule and {} by the second (p0 = {:?}, g = {:?})",
                    pa[e], pb[e], p0[e], g[e]
                ));
            }
            for (i, s) in a.states.iter().enumerate() {
                let j = b.state_index(&s.name)?;
                let (x, y): (Vec<f64>, Vec<f64>) = match (&sa[i], &sb[j], s.kind) {
                    (StateBuf::Element(x), StateBuf::Element(y), StateKind::Element) => {
                        (x.clone(), y.clone())
                    }
                    (StateBuf::Scalar(x), StateBuf::Scalar(y), StateKind::Scalar) => {
                        (vec![*x], vec![*y])
                    }
                    _ => return None,
                };
                if let Some(e) = (0..x.len()).find(|&e| differs(x[e], y[e])) {
                    return Some(format!(
                        "at step {t}, element {e} of state `{}` is {} by the first rule and {} by the second",
                        s.name, x[e], y[e]
                    ));
                }
            }
        }
    }
    None
}
