//! Factorisations of symmetric and general matrices, in f64: the
//! eigendecomposition behind `sym_pow` and `eigenbasis`, the QR behind
//! `qr`, and the sorting permutation of `sort_perm`. Each result is made
//! unique where the mathematics leaves a choice (signs, order of ties).
//! Matrices are row-major `Vec<f64>`.

use crate::float::Float;
use rayon::prelude::*;

/// Below this side the eigensolver runs on one thread.
const PARALLEL_SIDE: usize = 192;

/// Eigenvalues and eigenvectors (the columns of the row-major `n × n`
/// result) of the symmetric matrix `a`: Householder reduction to a
/// tridiagonal matrix, then implicit QL iterations with Wilkinson-style
/// shifts (both backward stable; cubic, with the eigenvector updates of each
/// QL sweep vectorised and spread over threads by blocks of components). An eigenvalue whose iteration does
/// not settle in 60 sweeps (only non-finite input does that) is left as it
/// stands, so the call always returns.
pub fn symmetric_eigen(n: usize, mut a: Vec<f64>) -> (Vec<f64>, Vec<f64>) {
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let reflectors = tridiagonalise(n, &mut a);
    let mut d: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    // e[i] couples i and i + 1; e[n - 1] is 0.
    let mut e: Vec<f64> = (0..n)
        .map(|i| if i + 1 < n { a[i * n + i + 1] } else { 0.0 })
        .collect();
    let mut z = accumulate(n, &reflectors);
    tridiagonal_ql(n, &mut d, &mut e, &mut z);
    (d, z)
}

/// Reduces the symmetric `a` in place to `Qᵀ a Q`, tridiagonal (the entries
/// outside the three diagonals are left as they were and not read), and
/// returns the unit Householder vectors `v_k` (acting on indices `k + 1..`)
/// whose reflections `I - 2 v vᵀ` multiply to `Q`.
fn tridiagonalise(n: usize, a: &mut [f64]) -> Vec<Vec<f64>> {
    let mut reflectors = Vec::with_capacity(n.saturating_sub(2));
    for k in 0..n.saturating_sub(2) {
        let m = n - k - 1;
        // Column k below the diagonal is row k right of it (symmetry).
        let x = &a[k * n + k + 1..k * n + n];
        let sigma = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if sigma == 0.0 || !sigma.is_finite() {
            reflectors.push(Vec::new());
            continue;
        }
        let alpha = if x[0] > 0.0 { -sigma } else { sigma };
        let mut v = x.to_vec();
        v[0] -= alpha;
        let norm = v.iter().map(|t| t * t).sum::<f64>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            reflectors.push(Vec::new());
            continue;
        }
        v.iter_mut().for_each(|t| *t /= norm);
        // B <- H B H = B - 2 v wᵀ - 2 w vᵀ, w = B v - (vᵀ B v) v, B the trailing block.
        let block = |i: usize| (k + 1 + i) * n + k + 1;
        let b_row = |a: &[f64], i: usize| -> f64 {
            a[block(i)..block(i) + m]
                .iter()
                .zip(&v)
                .map(|(b, t)| b * t)
                .sum()
        };
        let p: Vec<f64> = if m >= PARALLEL_SIDE {
            (0..m).into_par_iter().map(|i| b_row(a, i)).collect()
        } else {
            (0..m).map(|i| b_row(a, i)).collect()
        };
        let kk: f64 = v.iter().zip(&p).map(|(t, q)| t * q).sum();
        let w: Vec<f64> = p.iter().zip(&v).map(|(q, t)| q - kk * t).collect();
        let update = |i: usize, row: &mut [f64]| {
            let (vi, wi) = (v[i], w[i]);
            for ((b, vj), wj) in row.iter_mut().zip(&v).zip(&w) {
                *b -= 2.0 * (vi * wj + wi * vj);
            }
        };
        let trailing = &mut a[(k + 1) * n..];
        if m >= PARALLEL_SIDE {
            trailing
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(i, row)| update(i, &mut row[k + 1..]));
        } else {
            for (i, row) in trailing.chunks_mut(n).enumerate() {
                update(i, &mut row[k + 1..]);
            }
        }
        // Row and column k now hold alpha next to the diagonal and zeros beyond.
        a[k * n + k + 1] = alpha;
        a[(k + 1) * n + k] = alpha;
        for j in k + 2..n {
            a[k * n + j] = 0.0;
            a[j * n + k] = 0.0;
        }
        reflectors.push(v);
    }
    reflectors
}

/// `Q = H_0 H_1 … H_(n-3)` from the reflectors of [`tridiagonalise`],
/// row-major, applied from the last to the first.
fn accumulate(n: usize, reflectors: &[Vec<f64>]) -> Vec<f64> {
    let mut q = vec![0.0; n * n];
    for i in 0..n {
        q[i * n + i] = 1.0;
    }
    for (k, v) in reflectors.iter().enumerate().rev() {
        if v.is_empty() {
            continue;
        }
        let m = n - k - 1;
        // u = vᵀ Q_sub, then Q_sub -= 2 v u.
        let mut u = vec![0.0; m];
        for (i, vi) in v.iter().enumerate() {
            let row = &q[(k + 1 + i) * n + k + 1..(k + 1 + i) * n + n];
            for (uj, qj) in u.iter_mut().zip(row) {
                *uj += vi * qj;
            }
        }
        let rows = &mut q[(k + 1) * n..];
        let apply = |i: usize, row: &mut [f64]| {
            let vi = 2.0 * v[i];
            for (qj, uj) in row[k + 1..].iter_mut().zip(&u) {
                *qj -= vi * uj;
            }
        };
        if m >= PARALLEL_SIDE {
            rows.par_chunks_mut(n)
                .enumerate()
                .for_each(|(i, r)| apply(i, r));
        } else {
            for (i, r) in rows.chunks_mut(n).enumerate() {
                apply(i, r);
            }
        }
    }
    q
}

/// Diagonalises the symmetric tridiagonal matrix (diagonal `d`, `e[i]`
/// coupling `i` and `i + 1`) by implicit QL sweeps, leaving the eigenvalues
/// in `d` and applying every rotation to the columns of the row-major
/// `n × n` matrix `z`.
fn tridiagonal_ql(n: usize, d: &mut [f64], e: &mut [f64], z: &mut [f64]) {
    let mut vectors = Vectors::from_rows(n, z);
    let mut rotations: Vec<(usize, f64, f64)> = Vec::with_capacity(n);
    for l in 0..n {
        for _sweep in 0..60 {
            // The first negligible coupling at or after l ends the block.
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            // Shift from the leading 2 × 2 block.
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
            rotations.clear();
            let mut split = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    // Underflow: the block splits here.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    split = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                rotations.push((i, c, s));
            }
            vectors.rotate(&rotations);
            if split {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    vectors.into_rows(z);
}

/// Columns of `z` per block of [`Vectors`].
const BLOCK_WIDTH: usize = 128;

/// The eigenvector matrix while QL rotates it: blocks of up to
/// [`BLOCK_WIDTH`] components, each stored vector by vector, so that a
/// rotation of two vectors updates two contiguous runs (vectorised) and
/// the blocks rotate independently (in parallel).
struct Vectors {
    n: usize,
    blocks: Vec<Vec<f64>>,
}

impl Vectors {
    /// From the row-major `z` (row = component, column = vector).
    fn from_rows(n: usize, z: &[f64]) -> Self {
        let blocks = (0..n)
            .step_by(BLOCK_WIDTH)
            .map(|k0| {
                let width = BLOCK_WIDTH.min(n - k0);
                let mut block = vec![0.0; n * width];
                for (kk, k) in (k0..k0 + width).enumerate() {
                    for i in 0..n {
                        block[i * width + kk] = z[k * n + i];
                    }
                }
                block
            })
            .collect();
        Vectors { n, blocks }
    }

    /// Back to the row-major `z`.
    fn into_rows(self, z: &mut [f64]) {
        let n = self.n;
        for (b, block) in self.blocks.iter().enumerate() {
            let k0 = b * BLOCK_WIDTH;
            let width = block.len() / n.max(1);
            for (kk, k) in (k0..k0 + width).enumerate() {
                for i in 0..n {
                    z[k * n + i] = block[i * width + kk];
                }
            }
        }
    }

    /// Applies the plane rotations `(i, c, s)` in order to vectors `i` and
    /// `i + 1`.
    fn rotate(&mut self, rotations: &[(usize, f64, f64)]) {
        let n = self.n;
        let rotate = |block: &mut Vec<f64>| {
            let width = block.len() / n.max(1);
            for &(i, c, s) in rotations {
                let (low, high) = block.split_at_mut((i + 1) * width);
                let (vi, vj) = (&mut low[i * width..], &mut high[..width]);
                for (x, y) in vi.iter_mut().zip(vj.iter_mut()) {
                    let f = *y;
                    *y = s * *x + c * f;
                    *x = c * *x - s * f;
                }
            }
        };
        if n >= PARALLEL_SIDE {
            self.blocks.par_iter_mut().for_each(rotate);
        } else {
            self.blocks.iter_mut().for_each(rotate);
        }
    }
}

/// `(A + Aᵀ) / 2` of the row-major `n × n` matrix `a`: what the
/// functions of a symmetric matrix below diagonalise.
fn symmetric_part(n: usize, a: &[f64]) -> Vec<f64> {
    (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            0.5 * (a[i * n + j] + a[j * n + i])
        })
        .collect()
}

/// `sym_pow(A, e)` of the row-major `n × n` matrix `a` (its symmetric
/// part): `Q diag(λ^e) Qᵀ`, the product taken as a GEMM.
pub fn sym_pow(n: usize, a: &[f64], e: f64) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(n, symmetric_part(n, a));
    let mut scaled = vectors.clone();
    for row in scaled.chunks_mut(n.max(1)) {
        for (x, l) in row.iter_mut().zip(&values) {
            *x *= l.powf(e);
        }
    }
    let mut out = vec![0.0; n * n];
    f64::gemm(n, n, n, (&scaled, (n, 1)), (&vectors, (1, n)), &mut out);
    out
}

/// `eigenbasis(A)` of the row-major `n × n` matrix `a`: the eigenvectors of
/// its symmetric part as columns, by descending eigenvalue (ties in index
/// order), each with its entry of largest magnitude positive.
pub fn eigenbasis(n: usize, a: &[f64]) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(n, symmetric_part(n, a));
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| values[y].total_cmp(&values[x]));
    let mut out = vec![0.0; n * n];
    for (j, &k) in order.iter().enumerate() {
        let column = (0..n).map(|i| vectors[i * n + k]);
        let lead = column.fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        let sign = if lead < 0.0 { -1.0 } else { 1.0 };
        for i in 0..n {
            out[i * n + j] = sign * vectors[i * n + k];
        }
    }
    out
}

/// The factor `Q` (`r × c`, row-major) of the thin QR factorisation of the
/// row-major `r × c` matrix `a` (`r ≥ c`), by Householder reflections, with
/// the signs chosen so that `R`'s diagonal is non-negative (so `Q` is what
/// Gram-Schmidt would give, where the columns are independent).
pub fn qr_factor(r: usize, c: usize, a: &[f64]) -> Vec<f64> {
    debug_assert!(r >= c && a.len() == r * c);
    // Columns of A, contiguous, reduced in place to R; reflectors kept aside.
    let mut cols: Vec<Vec<f64>> = (0..c)
        .map(|j| (0..r).map(|i| a[i * c + j]).collect())
        .collect();
    let mut reflectors: Vec<(Vec<f64>, f64)> = Vec::with_capacity(c);
    let mut r_sign = vec![1.0; c];
    for j in 0..c {
        let x = &cols[j][j..];
        let alpha = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if alpha == 0.0 || !alpha.is_finite() {
            reflectors.push((Vec::new(), 0.0));
            continue;
        }
        // v = x + sign(x0) ‖x‖ e0 reflects x onto -sign(x0) ‖x‖ e0 (no cancellation).
        let s = if x[0] < 0.0 { -1.0 } else { 1.0 };
        let mut v = x.to_vec();
        v[0] += s * alpha;
        let beta = 2.0 / v.iter().map(|e| e * e).sum::<f64>();
        r_sign[j] = -s;
        reflect(&mut cols[j..], j, &v, beta);
        reflectors.push((v, beta));
    }
    // Q = H0 H1 … H(c-1) applied to the first c columns of the identity;
    // applied from the last, H_j meets only columns j.. (the ones before
    // are still e_i, zero where H_j acts).
    let mut q_cols: Vec<Vec<f64>> = (0..c)
        .map(|j| (0..r).map(|i| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for (j, (v, beta)) in reflectors.iter().enumerate().rev() {
        if !v.is_empty() {
            reflect(&mut q_cols[j..], j, v, *beta);
        }
    }
    let mut out = vec![0.0; r * c];
    for (j, col) in q_cols.iter().enumerate() {
        for i in 0..r {
            out[i * c + j] = r_sign[j] * col[i];
        }
    }
    out
}

/// Applies the reflection `I - beta v vᵀ` (acting on rows `j..`) to each
/// of `cols`, in parallel for large matrices (each column on its own, so
/// the result does not depend on the threads).
fn reflect(cols: &mut [Vec<f64>], j: usize, v: &[f64], beta: f64) {
    let apply = |col: &mut Vec<f64>| {
        let tail = &mut col[j..];
        let d = beta * v.iter().zip(tail.iter()).map(|(a, b)| a * b).sum::<f64>();
        for (t, vi) in tail.iter_mut().zip(v) {
            *t -= d * vi;
        }
    };
    if v.len() * cols.len() >= PARALLEL_SIDE * PARALLEL_SIDE {
        cols.par_iter_mut().for_each(apply);
    } else {
        cols.iter_mut().for_each(apply);
    }
}

/// `sort_perm(v)`: the row-major `n × n` permutation matrix `P` with
/// `P[order[j], j] = 1`, where `order` lists the indices of `v` by
/// descending value (a stable sort), so `x @ P` = `x[:, order]`.
pub fn sort_perm(v: &[f64]) -> Vec<f64> {
    let n = v.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| v[y].total_cmp(&v[x]));
    let mut out = vec![0.0; n * n];
    for (j, &k) in order.iter().enumerate() {
        out[k * n + j] = 1.0;
    }
    out
}
