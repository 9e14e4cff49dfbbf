//! What `lensopt bench` measures the optimizer steps against, in the same
//! run and on the same threads: the traffic a rule's compiled kernels must
//! move ([`Traffic`]), the fused kernel that moves exactly that with trivial
//! arithmetic (`ceiling_gbps`), the STREAM triad (`triad_gbps`), and Adam as
//! a person would write it in Rust (`adam_handwritten`).

use super::harness::{fail, filled_vec, time, zeros, Bench};
use crate::Failure;
use lensopt::ir::schedule::Schedule;
use lensopt::{DynOptimizer, Optimizer};
use ndarray::Array1;
use rayon::prelude::*;

/// Elements per parallel chunk of the Rust reference kernels (as the JIT's).
const CHUNK: usize = 1 << 16;

/// Which arrays a rule's compiled kernels read and write, by kernel buffer index.
pub(super) struct Traffic {
    pub(super) reads: Vec<usize>,
    pub(super) writes: Vec<usize>,
}

impl Traffic {
    fn of(schedule: &Schedule) -> Traffic {
        Traffic {
            reads: schedule.buffers_read(),
            writes: schedule.buffers_written(),
        }
    }

    pub(super) fn bytes_per_element(&self) -> usize {
        4 * (self.reads.len() + self.writes.len())
    }
}

/// The ceiling's inner loop for `R` read-only arrays and `W` arrays read and
/// written in place: one fused pass, as a fused kernel makes, with trivial
/// arithmetic. Monomorphised per (R, W) so that rustc unrolls over the
/// arrays and vectorises over the elements.
fn fused_ceiling<const R: usize, const W: usize>(reads: &[&[f32]], writes: &mut [&mut [f32]]) {
    let n = writes[0].len();
    let reads: [&[f32]; R] = std::array::from_fn(|r| &reads[r][..n]);
    let mut iter = writes.iter_mut();
    let mut writes: [&mut [f32]; W] = std::array::from_fn(|_| {
        let w = iter.next().expect("W arrays");
        &mut w[..n]
    });
    for i in 0..n {
        let mut acc = 0.0f32;
        for r in &reads {
            acc += r[i];
        }
        for w in writes.iter_mut() {
            w[i] = w[i] * 0.999 + acc;
        }
    }
}

macro_rules! dispatch_ceiling {
    ($r:expr, $w:expr, $reads:expr, $writes:expr; $(($R:literal, $W:literal)),*) => {
        match ($r, $w) {
            $(($R, $W) => fused_ceiling::<$R, $W>($reads, $writes),)*
            (r, w) => unreachable!("no ceiling kernel for {r} read and {w} written arrays"),
        }
    };
}

/// The ceiling: the same arrays the rule's kernels read and write, in place,
/// in one fused pass with trivial arithmetic (for Adam: read p, g, m, v;
/// write p, m, v).
pub(super) fn ceiling(arrays: &mut [Vec<f32>], traffic: &Traffic, pool: &rayon::ThreadPool) {
    let pure_reads: Vec<usize> = traffic
        .reads
        .iter()
        .copied()
        .filter(|b| !traffic.writes.contains(b))
        .collect();
    let n = arrays[0].len();
    let mut read_chunks: Vec<Vec<&[f32]>> = (0..n.div_ceil(CHUNK)).map(|_| Vec::new()).collect();
    let mut write_chunks: Vec<Vec<&mut [f32]>> =
        (0..n.div_ceil(CHUNK)).map(|_| Vec::new()).collect();
    for (b, a) in arrays.iter_mut().enumerate() {
        if traffic.writes.contains(&b) {
            for (k, c) in a.chunks_mut(CHUNK).enumerate() {
                write_chunks[k].push(c);
            }
        } else if pure_reads.contains(&b) {
            for (k, c) in a.chunks(CHUNK).enumerate() {
                read_chunks[k].push(c);
            }
        }
    }
    let (r, w) = (pure_reads.len(), traffic.writes.len());
    pool.install(|| {
        read_chunks
            .par_iter()
            .zip(write_chunks.par_iter_mut())
            .for_each(|(reads, writes)| {
                dispatch_ceiling!(r, w, reads, writes;
                    (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6),
                    (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8),
                    (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6),
                    (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (3, 6))
            });
    });
}

/// STREAM triad `a = b + s * c`.
pub(super) fn triad(a: &mut [f32], b: &[f32], c: &[f32], pool: &rayon::ThreadPool) {
    pool.install(|| {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .zip(c.par_chunks(CHUNK))
            .for_each(|((a, b), c)| {
                for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                    *a = *b + 0.5 * *c;
                }
            });
    });
}

/// Adam as a person would write it in Rust (torch.optim.Adam's arithmetic).
pub(super) fn adam_handwritten(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: i32,
    pool: &rayon::ThreadPool,
) {
    let (lr, b1, b2, eps) = (1e-3f32, 0.9f32, 0.999f32, 1e-8f32);
    let step = lr / (1.0 - b1.powi(t));
    let bc2 = (1.0 - b2.powi(t)).sqrt();
    pool.install(|| {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = b1 * *m + (1.0 - b1) * *g;
                    *v = b2 * *v + (1.0 - b2) * *g * *g;
                    *p -= step * *m / (v.sqrt() / bc2 + eps);
                }
            });
    });
}

/// Bytes per element of every array `opt` touches, and the compiled schedule.
pub(super) fn compiled_traffic(opt: &DynOptimizer, present: &[bool]) -> Result<Traffic, Failure> {
    let p = Array1::<f32>::zeros(4);
    let mut st = opt.init::<f32>(&[&p]).map_err(fail)?;
    let program = st.program(present).map_err(fail)?;
    Ok(Traffic::of(program.schedule()))
}

impl Bench {
    /// The STREAM triad on `n` elements, in GB/s.
    pub(super) fn triad_gbps(&self, n: usize) -> Result<f64, Failure> {
        let mut a = zeros(n)?;
        let b = filled_vec(n, 1)?;
        let c = filled_vec(n, 2)?;
        let s = time(self.seconds, || triad(&mut a, &b, &c, &self.pool));
        Ok(16.0 * n as f64 / s / 1e9)
    }
}
