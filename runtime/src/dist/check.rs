//! The check that a sharded step is one process's step: every rank runs
//! the sharded stepper and, beside it, one process's stepper on the
//! rank-ordered mean of all ranks' gradients (which it can draw itself:
//! they are seeded by rank), and compares parameters and every state bit
//! for bit.

use super::{Collective, ShardedStepper};
use crate::catalog;
use crate::diagram::plan::SplitMix;
use crate::error::{mismatch, Error};
use crate::optimizer::Optimizer;
use crate::stepper::Inputs;
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use lensopt_ir::StateKind;
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

/// Shapes that exercise sharding for a rule: several chunks per tensor,
/// tensors of one chunk and of a few elements (element rules), or matrices
/// of both orientations (matrix rules).
pub fn shapes_for(name: &str) -> Vec<Vec<usize>> {
    if catalog::matrix_names().contains(&name) {
        vec![vec![24, 16], vec![10, 30], vec![12, 12], vec![9, 20]]
    } else {
        vec![vec![3], vec![(1 << 17) + 7], vec![300, 7], vec![1 << 16]]
    }
}

/// Uniform values in [lo, hi), drawn from `seed`, scaled by 1e-3, 1 or 1e3
/// by chunk of 65,536 elements: sums over chunks of such different sizes
/// round differently in another order, so an exchange that combined the
/// chunks out of order would show.
fn draw<F: Float>(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<F> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|i| {
            let scale = [1e-3, 1.0, 1e3][(i >> 16) % 3];
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            F::from_f64(scale * (lo + (hi - lo) * u))
        })
        .collect()
}

/// Runs `steps` steps of catalog rule `name` sharded over `comm`'s ranks
/// and on one process; `Ok(None)` when every parameter and state agrees
/// bit for bit on this rank, `Ok(Some(what))` naming the first difference.
pub fn sharded_matches_one_process<F: Float>(
    name: &str,
    comm: Arc<dyn Collective>,
    steps: u64,
) -> Result<Option<String>, Error> {
    let optimizer =
        catalog::get(name).ok_or_else(|| mismatch(format!("no catalog rule `{name}`")))?;
    let rule = optimizer.rule();
    let shapes = shapes_for(name);
    let ranks = comm.size();
    let rank = comm.rank();
    let array = |shape: &[usize], data: Vec<F>| {
        ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| mismatch(e.to_string()))
    };
    let numel = |s: &Vec<usize>| s.iter().product::<usize>();
    let mut params: Vec<ArrayD<F>> = shapes
        .iter()
        .enumerate()
        .map(|(k, s)| array(s, draw(numel(s), 7 + k as u64, -1.0, 1.0)))
        .collect::<Result<_, _>>()?;
    let mut reference = params.clone();
    let refs: Vec<&dyn TensorRef<F>> = params.iter().map(|p| p as &dyn TensorRef<F>).collect();
    let mut sharded = ShardedStepper::new(&optimizer, &refs, comm)?;
    let mut single = optimizer.init(&refs)?;
    for step in 1..=steps {
        // Rank r's gradients (and inputs, positive as curvature estimates are).
        let drawn = |r: usize, what: u64, lo: f64, hi: f64| -> Vec<Vec<F>> {
            shapes
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    draw(
                        numel(s),
                        (step * 1000 + what) * 100 + (r * 10 + k) as u64,
                        lo,
                        hi,
                    )
                })
                .collect()
        };
        let mean = |what: u64, lo: f64, hi: f64| -> Vec<Vec<F>> {
            let mut sum = drawn(0, what, lo, hi);
            for r in 1..ranks {
                for (a, b) in sum.iter_mut().zip(drawn(r, what, lo, hi)) {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                }
            }
            let n = F::from_f64(ranks as f64);
            for a in &mut sum {
                for x in a.iter_mut() {
                    *x = *x / n;
                }
            }
            sum
        };
        let as_arrays = |data: Vec<Vec<F>>| -> Result<Vec<ArrayD<F>>, Error> {
            shapes.iter().zip(data).map(|(s, d)| array(s, d)).collect()
        };
        let mine_g = as_arrays(drawn(rank, 0, -1.0, 1.0))?;
        let mean_g = as_arrays(mean(0, -1.0, 1.0))?;
        let mut mine_inputs = Vec::new();
        let mut mean_inputs = Vec::new();
        for (j, decl) in rule.inputs.iter().enumerate() {
            let what = j as u64 + 1;
            mine_inputs.push((decl.name.clone(), as_arrays(drawn(rank, what, 0.01, 1.0))?));
            mean_inputs.push((decl.name.clone(), as_arrays(mean(what, 0.01, 1.0))?));
        }
        let g_refs: Vec<&dyn TensorRef<F>> =
            mine_g.iter().map(|g| g as &dyn TensorRef<F>).collect();
        let input_refs: Vec<(&str, Vec<&dyn TensorRef<F>>)> = mine_inputs
            .iter()
            .map(|(n, a)| {
                (
                    n.as_str(),
                    a.iter().map(|x| x as &dyn TensorRef<F>).collect(),
                )
            })
            .collect();
        let mut p_refs: Vec<&mut dyn TensorMut<F>> = params
            .iter_mut()
            .map(|p| p as &mut dyn TensorMut<F>)
            .collect();
        sharded.step_with(&mut p_refs, &g_refs, &input_refs)?;

        let mut inputs = Inputs::new();
        for (n, a) in &mean_inputs {
            inputs = inputs.with(n, a.iter().map(|x| x as &dyn TensorRef<F>).collect());
        }
        let g_refs: Vec<&dyn TensorRef<F>> =
            mean_g.iter().map(|g| g as &dyn TensorRef<F>).collect();
        let mut p_refs: Vec<&mut dyn TensorMut<F>> = reference
            .iter_mut()
            .map(|p| p as &mut dyn TensorMut<F>)
            .collect();
        single.step_with(&mut p_refs, &g_refs, &inputs)?;
    }
    let bits =
        |xs: &mut dyn Iterator<Item = F>| xs.map(|x| x.to_f64().to_bits()).collect::<Vec<u64>>();
    for k in 0..shapes.len() {
        if bits(&mut params[k].iter().copied()) != bits(&mut reference[k].iter().copied()) {
            return Ok(Some(format!("parameter {k}")));
        }
        for decl in &rule.states {
            let got = sharded.gather_state(k, &decl.name)?.unwrap_or_default();
            let want: Vec<F> = if decl.kind == StateKind::Scalar {
                single
                    .scalar_state(k, &decl.name)
                    .map(|v| vec![F::from_f64(v)])
                    .unwrap_or_default()
            } else {
                single
                    .state(k, &decl.name)
                    .map(|a| a.iter().copied().collect())
                    .unwrap_or_default()
            };
            if bits(&mut got.into_iter()) != bits(&mut want.into_iter()) {
                return Ok(Some(format!("state `{}` of tensor {k}", decl.name)));
            }
        }
    }
    Ok(None)
}
