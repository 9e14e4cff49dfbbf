//! `lensopt bench --matrix`: steps of the matrix rules (Muon, Shampoo,
//! Adafactor) on 1024 × 1024 and 4096 × 1024 f32 matrices, each against a
//! bound measured in the same run: the time of the GEMMs the step cannot
//! avoid, run alone on the same GEMM kernel (Muon: per Newton-Schulz
//! iteration the Gram matrix, its square and the product with `x`, formed
//! on the smaller side; Shampoo: `G Gᵀ`, `Gᵀ G` and the two products with
//! the roots, the roots' refresh excluded), or for Adafactor, which has no
//! GEMM, a plain Rust loop that reads `p` and `g` and writes `p` once.

use super::harness::{fail, filled, time, Bench};
use crate::Failure;
use lensopt::ir::Float;
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

impl Bench {
    /// One row per rule and shape.
    pub(super) fn matrix_rules(&mut self) -> Result<(), Failure> {
        for (rows, cols) in SHAPES {
            let (s, l) = (rows.min(cols), rows.max(cols));
            let gram = gemm_seconds(self.seconds, s, l, s)?;
            let square = gemm_seconds(self.seconds, s, s, s)?;
            let apply = gemm_seconds(self.seconds, s, s, l)?;
            let ns_iteration = gram + square + apply;
            let ns_flops = 2.0 * (2.0 * (s * s * l) as f64 + (s * s * s) as f64);
            let muon_bound = 5.0 * ns_iteration;
            self.matrix_row("muon", rows, cols, &[], muon_bound, 5.0 * ns_flops)?;
            let shampoo_bound = gemm_seconds(self.seconds, rows, cols, rows)?
                + gemm_seconds(self.seconds, cols, rows, cols)?
                + gemm_seconds(self.seconds, rows, rows, cols)?
                + gemm_seconds(self.seconds, rows, cols, cols)?;
            let shampoo_flops = 2.0 * (2 * rows * cols * (rows + cols)) as f64;
            self.matrix_row(
                "shampoo",
                rows,
                cols,
                &[("preconditioning_compute_steps", 1e9)],
                shampoo_bound,
                shampoo_flops,
            )?;
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
            self.matrix_row("adafactor", rows, cols, &[], loop_seconds, 0.0)?;
        }
        Ok(())
    }

    fn matrix_row(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        set: &[(&str, f64)],
        bound_seconds: f64,
        flops: f64,
    ) -> Result<(), Failure> {
        let mut opt = catalog::get(name).ok_or_else(|| fail(format!("unknown rule `{name}`")))?;
        for (k, v) in set {
            opt.set(k, (*v).into()).map_err(fail)?;
        }
        let n = rows * cols;
        let mut p = filled(n, 21)?
            .into_shape_with_order(IxDyn(&[rows, cols]))
            .map_err(fail)?;
        let g = filled(n, 22)?
            .into_shape_with_order(IxDyn(&[rows, cols]))
            .map_err(fail)?;
        let mut stepper: Stepper<f32> = opt.init(&[&p]).map_err(fail)?;
        let mut error = None;
        let step_seconds = time(self.seconds, || {
            if let Err(e) = stepper.step(&mut [&mut p], &[&g]) {
                error = Some(e);
            }
        });
        if let Some(e) = error {
            return Err(fail(e));
        }
        let bound = if flops > 0.0 { "gemm" } else { "rust_loop" };
        self.rows.push(json!({
            "kernel": "matrix_step", "backend": "matrix", "rule": name, "rows": rows, "cols": cols,
            "step_ms": step_seconds * 1e3,
            "bound": bound,
            "bound_ms": bound_seconds * 1e3,
            "ratio_to_bound": step_seconds / bound_seconds,
            "gemm_gflops": if flops > 0.0 { flops / bound_seconds / 1e9 } else { f64::NAN },
            "state_bytes_per_element": stepper.state_bytes_per_element(),
        }));
        Ok(())
    }
}
