//! `lensopt bench --matrix`: steps of the matrix rules (Muon, Shampoo,
//! Adafactor, GaLore, SOAP) on 1024 × 1024 and 4096 × 1024 f32 matrices,
//! each against a bound measured in the same run: the time of the GEMMs the
//! step cannot avoid, run alone on the same GEMM kernels, symmetric ones
//! (Gram matrices and their squares) half computed as the step computes
//! them (Muon: per
//! Newton-Schulz iteration the Gram matrix, its square and the product with
//! `x`, formed on the smaller side; Shampoo: `G Gᵀ`, `Gᵀ G` and the two
//! products with the roots; GaLore: the projection down and back up; SOAP:
//! the two statistics and three two-sided rotations), or for Adafactor,
//! which has no GEMM, a plain Rust loop that reads `p` and `g` and writes
//! `p` once. Refreshes (Shampoo's roots, GaLore's projector, SOAP's bases)
//! are left out of the step and timed on their own as `refresh_ms`, where
//! they take seconds rather than minutes (sides up to 1,024).

use super::harness::{fail, filled, time, Bench};
use crate::Failure;
use lensopt::ir::{Float, HyperValue};
use lensopt::{catalog, Optimizer, Stepper};
use ndarray::IxDyn;
use serde_json::json;

/// The shapes measured.
pub(super) const SHAPES: [(usize, usize); 2] = [(1024, 1024), (4096, 1024)];

/// Seconds of one `m × k @ k × n` GEMM (f32), fastest of several.
fn gemm_seconds(seconds: f64, m: usize, k: usize, n: usize) -> Result<f64, Failure> {
    let a = filled(m * k, 11)?;
    let b = filled(k * n, 12)?;
    let mut c = vec![0f32; m * n];
    let (a, b) = (a.as_slice().unwrap_or(&[]), b.as_slice().unwrap_or(&[]));
    Ok(time(seconds, || {
        f32::gemm(m, k, n, (a, (k, 1)), (b, (n, 1)), &mut c)
    }))
}

/// Seconds of one symmetric product `a aᵀ` (f32, `a` n × k, half of it
/// computed), fastest of several.
fn gemm_symmetric_seconds(seconds: f64, n: usize, k: usize) -> Result<f64, Failure> {
    let a = filled(n * k, 11)?;
    let mut c = vec![0f32; n * n];
    let a = a.as_slice().unwrap_or(&[]);
    Ok(time(seconds, || {
        f32::gemm_symmetric(n, k, (a, (k, 1)), (a, (1, k)), &mut c)
    }))
}

/// Seconds of one `m × k @ k × n` product of bfloat16 operands on the
/// bfloat16 kernel, fastest of several; `gram` times `a aᵀ` (a symmetric
/// result, half of it computed).
fn gemm_bf16_seconds(
    seconds: f64,
    m: usize,
    k: usize,
    n: usize,
    gram: bool,
) -> Result<f64, Failure> {
    let round = |x: ndarray::Array1<f32>| x.mapv(|v| v.round_bf16());
    let a = round(filled(m * k, 11)?);
    let b = round(filled(k * n, 12)?);
    let mut c = vec![0f32; m * n];
    let (a, b) = (a.as_slice().unwrap_or(&[]), b.as_slice().unwrap_or(&[]));
    let b = if gram { (a, (1, k)) } else { (b, (n, 1)) };
    Ok(time(seconds, || {
        f32::gemm_bf16(m, k, n, (a, (k, 1)), b, &mut c, gram)
    }))
}

/// One measured rule and shape: the hyperparameters set for its step, the
/// bound it is measured against, and what to set for a refreshing step.
struct Row<'a> {
    name: &'a str,
    /// The row's name in the output (the rule's, or a variant of it).
    label: &'a str,
    rows: usize,
    cols: usize,
    set: &'a [(&'a str, HyperValue)],
    bound_seconds: f64,
    flops: f64,
    refresh: Option<(&'a str, f64)>,
}

impl Bench {
    /// One row per rule and shape.
    pub(super) fn matrix_rules(&mut self) -> Result<(), Failure> {
        for (rows, cols) in SHAPES {
            let (s, l) = (rows.min(cols), rows.max(cols));
            // The Gram matrix and its square are symmetric: half computed.
            let gram = gemm_symmetric_seconds(self.seconds, s, l)?;
            let square = gemm_symmetric_seconds(self.seconds, s, s)?;
            let apply = gemm_seconds(self.seconds, s, s, l)?;
            let ns_iteration = gram + square + apply;
            let ns_flops = 2.0 * (2.0 * (s * s * l) as f64 + (s * s * s) as f64);
            let muon_bound = 5.0 * ns_iteration;
            self.matrix_row(Row {
                name: "muon",
                label: "muon",
                rows,
                cols,
                set: &[],
                bound_seconds: muon_bound,
                flops: 5.0 * ns_flops,
                refresh: None,
            })?;
            // As PyTorch's Muon by default: Newton-Schulz in bfloat16, on
            // the bfloat16 kernel, the Gram matrix and its square symmetric.
            let bf16_iteration = gemm_bf16_seconds(self.seconds, s, l, s, true)?
                + gemm_bf16_seconds(self.seconds, s, s, s, true)?
                + gemm_bf16_seconds(self.seconds, s, s, l, false)?;
            self.matrix_row(Row {
                name: "muon",
                label: "muon_bf16",
                rows,
                cols,
                set: &[("ns_bf16", HyperValue::Bool(true))],
                bound_seconds: 5.0 * bf16_iteration,
                flops: 5.0 * ns_flops,
                refresh: None,
            })?;
            let shampoo_bound = gemm_symmetric_seconds(self.seconds, rows, cols)?
                + gemm_symmetric_seconds(self.seconds, cols, rows)?
                + gemm_seconds(self.seconds, rows, rows, cols)?
                + gemm_seconds(self.seconds, rows, cols, cols)?;
            let shampoo_flops = 2.0 * (2 * rows * cols * (rows + cols)) as f64;
            let small = rows.max(cols) <= 1024;
            self.matrix_row(Row {
                name: "shampoo",
                label: "shampoo",
                rows,
                cols,
                set: &[("preconditioning_compute_steps", HyperValue::Num(1e9))],
                bound_seconds: shampoo_bound,
                flops: shampoo_flops,
                refresh: small.then_some(("preconditioning_compute_steps", 1.0)),
            })?;
            let rank = 128;
            let galore_bound =
                gemm_seconds(self.seconds, rank, s, l)? + gemm_seconds(self.seconds, s, rank, l)?;
            let galore_flops = 2.0 * (2 * rank * s * l) as f64;
            self.matrix_row(Row {
                name: "galore",
                label: "galore",
                rows,
                cols,
                set: &[
                    ("rank", HyperValue::Num(rank as f64)),
                    ("update_proj_gap", HyperValue::Num(1e9)),
                ],
                bound_seconds: galore_bound,
                flops: galore_flops,
                refresh: Some(("update_proj_gap", 1.0)),
            })?;
            if small {
                // Statistics G Gᵀ and Gᵀ G, and Q_Lᵀ X Q_R for g and m and back.
                let soap_bound = gemm_symmetric_seconds(self.seconds, rows, cols)?
                    + gemm_symmetric_seconds(self.seconds, cols, rows)?
                    + 3.0
                        * (gemm_seconds(self.seconds, rows, rows, cols)?
                            + gemm_seconds(self.seconds, rows, cols, cols)?);
                let soap_flops = 2.0 * (4 * rows * cols * (rows + cols)) as f64;
                self.matrix_row(Row {
                    name: "soap",
                    label: "soap",
                    rows,
                    cols,
                    set: &[("precondition_frequency", HyperValue::Num(1e9))],
                    bound_seconds: soap_bound,
                    flops: soap_flops,
                    refresh: Some(("precondition_frequency", 1.0)),
                })?;
            }
            let n = rows * cols;
            let p = filled(n, 13)?;
            let g = filled(n, 14)?;
            let mut p = p.to_vec();
            let g = g.to_vec();
            let loop_seconds = time(self.seconds, || {
                for (x, d) in p.iter_mut().zip(&g) {
                    *x -= 0.01 * d;
                }
            });
            self.matrix_row(Row {
                name: "adafactor",
                label: "adafactor",
                rows,
                cols,
                set: &[],
                bound_seconds: loop_seconds,
                flops: 0.0,
                refresh: None,
            })?;
        }
        Ok(())
    }

    fn matrix_row(&mut self, row: Row<'_>) -> Result<(), Failure> {
        let Row {
            name,
            label,
            rows,
            cols,
            set,
            bound_seconds,
            flops,
            refresh,
        } = row;
        let mut opt = catalog::get(name).ok_or_else(|| fail(format!("unknown rule `{name}`")))?;
        for (k, v) in set {
            opt.set(k, *v).map_err(fail)?;
        }
        let n = rows * cols;
        let mut p = filled(n, 21)?
            .into_shape_with_order(IxDyn(&[rows, cols]))
            .map_err(fail)?;
        let g = filled(n, 22)?
            .into_shape_with_order(IxDyn(&[rows, cols]))
            .map_err(fail)?;
        let mut stepper: Stepper<f32> = opt.init(&[&p]).map_err(fail)?;
        stepper.set_non_finite(self.non_finite);
        let mut error = None;
        let step_seconds = time(self.seconds, || {
            if let Err(e) = stepper.step(&mut [&mut p], &[&g]) {
                error = Some(e);
            }
        });
        if let Some(e) = error {
            return Err(fail(e));
        }
        // A step that refreshes: the fastest of two, after a first step
        // (SOAP's first step only takes its eigenbases).
        let refresh_seconds = match refresh {
            Some((hyper, every)) => {
                let mut opt = opt.clone();
                opt.set(hyper, every.into()).map_err(fail)?;
                let mut stepper: Stepper<f32> = opt.init(&[&p]).map_err(fail)?;
                stepper.step(&mut [&mut p], &[&g]).map_err(fail)?;
                let mut best = f64::INFINITY;
                for _ in 0..2 {
                    let start = std::time::Instant::now();
                    stepper.step(&mut [&mut p], &[&g]).map_err(fail)?;
                    best = best.min(start.elapsed().as_secs_f64());
                }
                best
            }
            None => f64::NAN,
        };
        let bound = if flops > 0.0 { "gemm" } else { "rust_loop" };
        self.rows.push(json!({
            "kernel": "matrix_step", "backend": "matrix", "rule": label, "rows": rows, "cols": cols,
            "step_ms": step_seconds * 1e3,
            "bound": bound,
            "bound_ms": bound_seconds * 1e3,
            "ratio_to_bound": step_seconds / bound_seconds,
            "gemm_gflops": if flops > 0.0 { flops / bound_seconds / 1e9 } else { f64::NAN },
            "state_bytes_per_element": stepper.state_bytes_per_element(),
            "refresh_ms": refresh_seconds * 1e3,
            "non_finite": format!("{:?}", self.non_finite).to_lowercase(),
        }));
        Ok(())
    }
}
