//! Training on several processes: collectives, and an optimizer whose state
//! is sharded across ranks (ZeRO stage 1).
//!
//! [`Collective`] is the transport: all-gather, all-to-all and broadcast of
//! bytes, with backends for one process ([`SingleProcess`]), ranks as
//! threads of one process ([`Threads`], for tests and for one machine) and
//! MPI ([`mpi::Mpi`], with the `mpi` feature). On top of it,
//! [`reduce_scatter_sum`], [`all_gather_into`] and [`all_reduce_f64`]
//! combine in rank order, whatever the backend's own algorithms, so their
//! results do not depend on how the messages travelled.
//!
//! [`ShardedStepper`] owns a contiguous shard of every tensor's optimizer
//! state ([`ShardLayout`]): a step reduce-scatters the gradients, runs the
//! rule on the shard (reductions become all-gathers of per-chunk partials,
//! combined in chunk order) and all-gathers the parameters. It is bit for
//! bit the step of one process given the rank-ordered sum of the ranks'
//! gradients.

pub mod check;
mod checkpoint;
mod data_parallel;
mod layout;
#[cfg(feature = "mpi")]
pub mod mpi;
mod sharded;
mod threads;

pub use data_parallel::DataParallel;
pub use layout::ShardLayout;
pub use sharded::{GradientReduction, ShardedStepper};
pub use threads::Threads;

use crate::error::{mismatch, Error};
use crate::Float;

/// A group of ranks that exchange bytes. Every rank calls the same
/// operations in the same order; a call returns an error, never hangs,
/// when another rank fails or leaves (within the backend's timeout).
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This rank, in `0..size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Every rank's `local` (lengths may differ), in rank order.
    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, Error>;

    /// Sends `parts[r]` to rank `r` (one part per rank, this one's
    /// included); returns the part each rank sent this one, in rank order.
    fn all_to_all(&self, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Error>;

    /// Rank `root`'s `data` on every rank (other ranks' `data` is replaced).
    fn broadcast(&self, root: usize, data: &mut Vec<u8>) -> Result<(), Error>;
}

/// One process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        Ok(vec![local.to_vec()])
    }

    fn all_to_all(&self, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Error> {
        match parts {
            [one] => Ok(vec![one.clone()]),
            _ => Err(mismatch(format!("{} parts for 1 rank", parts.len()))),
        }
    }

    fn broadcast(&self, root: usize, _data: &mut Vec<u8>) -> Result<(), Error> {
        if root != 0 {
            return Err(mismatch(format!("broadcast from rank {root} of 1")));
        }
        Ok(())
    }
}

/// Decodes `count` elements sent by `rank`.
fn elements<F: Float>(bytes: &[u8], count: usize, rank: usize) -> Result<Vec<F>, Error> {
    let mut out = vec![F::default(); count];
    if !F::get_bytes(bytes, &mut out) {
        return Err(mismatch(format!(
            "rank {rank} sent {} bytes where {count} elements were due",
            bytes.len()
        )));
    }
    Ok(out)
}

/// Reduce-scatter by sum, in rank order: every rank gives a whole tensor
/// (`full`, as long as `layout`'s tensor `k`), and gets back its own shard of
/// `((full_0 + full_1) + full_2) + ...` over the ranks (an all-to-all, then
/// the sums here), so the result does not depend on the transport.
pub fn reduce_scatter_sum<F: Float>(
    comm: &dyn Collective,
    layout: &ShardLayout,
    k: usize,
    full: &[F],
) -> Result<Vec<F>, Error> {
    let ranges = layout.ranges(k)?;
    if full.len() != layout.numel(k)? || ranges.len() != comm.size() {
        return Err(mismatch(format!(
            "tensor {k}: {} elements for a layout of {} over {} ranks",
            full.len(),
            layout.numel(k)?,
            ranges.len()
        )));
    }
    let parts: Vec<Vec<u8>> = ranges
        .iter()
        .map(|r| {
            let mut bytes = Vec::new();
            F::put_bytes(&full[r.clone()], &mut bytes);
            bytes
        })
        .collect();
    let received = comm.all_to_all(&parts)?;
    let mine = ranges[comm.rank()].len();
    let mut sum: Option<Vec<F>> = None;
    for (rank, bytes) in received.iter().enumerate() {
        let part = elements::<F>(bytes, mine, rank)?;
        sum = Some(match sum {
            None => part,
            Some(mut acc) => {
                for (a, x) in acc.iter_mut().zip(part) {
                    *a += x;
                }
                acc
            }
        });
    }
    Ok(sum.unwrap_or_default())
}

/// All-gather of tensor `k`'s shards: every rank gives its shard (`local`),
/// and `full` (the whole tensor) receives every rank's.
pub fn all_gather_into<F: Float>(
    comm: &dyn Collective,
    layout: &ShardLayout,
    k: usize,
    local: &[F],
    full: &mut [F],
) -> Result<(), Error> {
    let ranges = layout.ranges(k)?;
    if full.len() != layout.numel(k)? || local.len() != ranges[comm.rank()].len() {
        return Err(mismatch(format!(
            "tensor {k}: a shard of {} and a tensor of {} elements do not fit the layout",
            local.len(),
            full.len()
        )));
    }
    let mut bytes = Vec::new();
    F::put_bytes(local, &mut bytes);
    let gathered = comm.all_gather(&bytes)?;
    // Decode everything before writing anything.
    let parts = gathered
        .iter()
        .zip(ranges)
        .enumerate()
        .map(|(rank, (b, r))| elements::<F>(b, r.len(), rank))
        .collect::<Result<Vec<_>, _>>()?;
    for (part, r) in parts.into_iter().zip(ranges) {
        full[r.clone()].copy_from_slice(&part);
    }
    Ok(())
}

/// All-reduce of f64 values by `combine`, folded in rank order from rank
/// 0's values: every rank gets the same result.
pub fn all_reduce_f64(
    comm: &dyn Collective,
    local: &[f64],
    combine: impl Fn(f64, f64) -> f64,
) -> Result<Vec<f64>, Error> {
    let mut bytes = Vec::new();
    f64::put_bytes(local, &mut bytes);
    let gathered = comm.all_gather(&bytes)?;
    let mut acc: Option<Vec<f64>> = None;
    for (rank, b) in gathered.iter().enumerate() {
        let values = elements::<f64>(b, local.len(), rank)?;
        acc = Some(match acc {
            None => values,
            Some(a) => a.iter().zip(values).map(|(x, y)| combine(*x, y)).collect(),
        });
    }
    Ok(acc.unwrap_or_default())
}

/// The reduction partials of a sharded step as [`lensopt_codegen::cpu::Exchange`]
/// sees them: all-gathered f64 values.
pub(crate) struct PartialExchange<'c>(pub(crate) &'c dyn Collective);

impl lensopt_codegen::cpu::Exchange for PartialExchange<'_> {
    fn all_gather(&mut self, local: &[f64]) -> Result<Vec<Vec<f64>>, String> {
        let mut bytes = Vec::new();
        f64::put_bytes(local, &mut bytes);
        let gathered = self.0.all_gather(&bytes).map_err(|e| e.to_string())?;
        gathered
            .iter()
            .enumerate()
            .map(|(rank, b)| {
                if b.len() % 8 != 0 {
                    return Err(format!(
                        "rank {rank} sent a partial message of {} bytes",
                        b.len()
                    ));
                }
                let mut v = vec![0.0; b.len() / 8];
                f64::get_bytes(b, &mut v);
                Ok(v)
            })
            .collect()
    }
}
