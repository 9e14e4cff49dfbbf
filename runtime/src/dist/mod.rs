//! Training on several processes: collectives, and an optimizer whose state
//! is sharded across ranks (ZeRO stage 1).
//!
//! [`Collective`] is the transport: all-gather, all-to-all and broadcast of
//! bytes, with backends for one process ([`SingleProcess`]), ranks as
//! threads of one process ([`Threads`], for tests and for one machine), MPI
//! (`mpi::Mpi`, with the `mpi` feature) and NCCL (`nccl::Nccl`, with the
//! `nccl` feature). On top of it,
//! [`reduce_scatter_sum`], [`all_gather_tensor`] and [`all_reduce_f64`]
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
#[cfg(feature = "nccl")]
pub mod nccl;
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

    /// [`Collective::all_gather`] of known lengths into one buffer: rank
    /// `r`'s bytes (`counts[r]` of them; every rank passes the same
    /// `counts`) land in `out` after those of the ranks before it. Backends
    /// override it to move the bytes once.
    fn all_gather_into(&self, local: &[u8], counts: &[usize], out: &mut [u8]) -> Result<(), Error> {
        check_counts(self, counts, local.len(), out.len())?;
        let parts = self.all_gather(local)?;
        place(&parts, counts, out)
    }

    /// [`Collective::all_to_all`] of known lengths: `send` holds the parts
    /// for ranks 0, 1, ... back to back (`send_counts` long), and `recv`
    /// receives rank `r`'s part for this rank (`recv_counts[r]` bytes) after
    /// those of the ranks before it.
    fn all_to_all_into(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<(), Error> {
        check_exchange(self, send, send_counts, recv, recv_counts)?;
        let mut at = 0;
        let parts: Vec<Vec<u8>> = send_counts
            .iter()
            .map(|&c| {
                let part = send[at..at + c].to_vec();
                at += c;
                part
            })
            .collect();
        let got = self.all_to_all(&parts)?;
        place(&got, recv_counts, recv)
    }
}

/// Checks an all-to-all's counts: one per rank on both sides, the parts to
/// send filling `send`, the parts to receive filling `recv`.
fn check_exchange<C: Collective + ?Sized>(
    comm: &C,
    send: &[u8],
    send_counts: &[usize],
    recv: &[u8],
    recv_counts: &[usize],
) -> Result<(), Error> {
    if send_counts.len() != comm.size() || send_counts.iter().sum::<usize>() != send.len() {
        return Err(mismatch("the parts to send do not match their counts"));
    }
    let mine = recv_counts.get(comm.rank()).copied().unwrap_or(0);
    check_counts(comm, recv_counts, mine, recv.len())
}

/// Checks a collective's counts: one per rank, this rank's `mine`, summing to `total`.
fn check_counts<C: Collective + ?Sized>(
    comm: &C,
    counts: &[usize],
    mine: usize,
    total: usize,
) -> Result<(), Error> {
    if counts.len() != comm.size()
        || counts.get(comm.rank()) != Some(&mine)
        || counts.iter().sum::<usize>() != total
    {
        return Err(mismatch(format!(
            "counts {counts:?} do not fit rank {}'s {mine} bytes and a buffer of {total}",
            comm.rank()
        )));
    }
    Ok(())
}

/// Copies every rank's part into `out`, checking each against its count.
fn place(parts: &[Vec<u8>], counts: &[usize], out: &mut [u8]) -> Result<(), Error> {
    if parts.len() != counts.len() {
        return Err(mismatch(
            "a collective returned another number of parts than ranks",
        ));
    }
    let mut at = 0;
    for (rank, (part, &c)) in parts.iter().zip(counts).enumerate() {
        if part.len() != c {
            return Err(mismatch(format!(
                "rank {rank} sent {} bytes where {c} were due",
                part.len()
            )));
        }
        out[at..at + c].copy_from_slice(part);
        at += c;
    }
    Ok(())
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

/// `bytes` read as values of `T`, in the byte order every rank shares (as
/// sent with `bytemuck::cast_slice`); `None` unless the length is a whole
/// number of values.
fn values<T: bytemuck::Pod>(bytes: &[u8]) -> Option<Vec<T>> {
    if !bytes.len().is_multiple_of(std::mem::size_of::<T>()) {
        return None;
    }
    let mut out = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
    bytemuck::cast_slice_mut(&mut out).copy_from_slice(bytes);
    Some(out)
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
    reduce_scatter_checked(comm, layout, k, full, None).map(|(shard, _)| shard)
}

/// [`reduce_scatter_sum`], then the shard divided by `divisor` if one is
/// given, and whether every value of the result is finite when a pass
/// wrote it (the check rides on that pass; one rank with nothing to divide
/// writes nothing, and says `None`).
pub(crate) fn reduce_scatter_checked<F: Float>(
    comm: &dyn Collective,
    layout: &ShardLayout,
    k: usize,
    full: &[F],
    divisor: Option<F>,
) -> Result<(Vec<F>, Option<bool>), Error> {
    let ranges = layout.ranges(k)?;
    if full.len() != layout.numel(k)? || ranges.len() != comm.size() {
        return Err(mismatch(format!(
            "tensor {k}: {} elements for a layout of {} over {} ranks",
            full.len(),
            layout.numel(k)?,
            ranges.len()
        )));
    }
    if comm.size() == 1 {
        let mut shard = full.to_vec();
        let finite = divisor.map(|d| F::div_finite(&mut shard, d));
        return Ok((shard, finite));
    }
    let width = std::mem::size_of::<F>();
    let mine = ranges[comm.rank()].len();
    let send_counts: Vec<usize> = ranges.iter().map(|r| r.len() * width).collect();
    let recv_counts = vec![mine * width; comm.size()];
    // (From this thread's kept arrays, as it was: a fresh one faults in
    // every page, and the exchange writes every value.)
    let mut received = lensopt_ir::kept_arrays::overwritten(mine * comm.size());
    comm.all_to_all_into(
        bytemuck::cast_slice(full),
        &send_counts,
        bytemuck::cast_slice_mut(&mut received),
        &recv_counts,
    )?;
    // Rank 0's part, then each later rank's added in turn, in place; the
    // last addition (or the scaling after it) says whether all is finite.
    let (sum, rest) = received.split_at_mut(mine);
    let mut finite = true;
    for part in rest.chunks_exact(mine.max(1)) {
        finite = F::add_finite(sum, part);
    }
    if let Some(d) = divisor {
        finite = F::div_finite(sum, d);
    }
    received.truncate(mine);
    Ok((received, Some(finite)))
}

/// All-gather of tensor `k`'s shards: every rank gives its shard (`local`),
/// and `full` (the whole tensor) receives every rank's.
pub fn all_gather_tensor<F: Float>(
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
    let width = std::mem::size_of::<F>();
    let counts: Vec<usize> = ranges.iter().map(|r| r.len() * width).collect();
    // The shards tile the tensor in rank order, so every rank's lands in place.
    comm.all_gather_into(
        bytemuck::cast_slice(local),
        &counts,
        bytemuck::cast_slice_mut(full),
    )
}

/// All-reduce of f64 values by `combine`, folded in rank order from rank
/// 0's values: every rank gets the same result.
pub fn all_reduce_f64(
    comm: &dyn Collective,
    local: &[f64],
    combine: impl Fn(f64, f64) -> f64,
) -> Result<Vec<f64>, Error> {
    let gathered = comm.all_gather(bytemuck::cast_slice(local))?;
    let mut acc: Option<Vec<f64>> = None;
    for (rank, b) in gathered.iter().enumerate() {
        let values = values::<f64>(b)
            .filter(|v| v.len() == local.len())
            .ok_or_else(|| {
                mismatch(format!(
                    "rank {rank} sent {} bytes for {} values",
                    b.len(),
                    local.len()
                ))
            })?;
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
        let gathered = self
            .0
            .all_gather(bytemuck::cast_slice(local))
            .map_err(|e| e.to_string())?;
        gathered
            .iter()
            .enumerate()
            .map(|(rank, b)| {
                values::<f64>(b).ok_or_else(|| {
                    format!("rank {rank} sent a partial message of {} bytes", b.len())
                })
            })
            .collect()
    }
}

/// A [`Collective`] that counts the bytes this rank sends to other ranks
/// (its own part of a collective stays here and is not counted).
#[derive(Debug)]
pub struct Metered<C> {
    inner: C,
    sent: std::sync::atomic::AtomicU64,
}

impl<C: Collective> Metered<C> {
    /// Counts what `inner` sends.
    pub fn new(inner: C) -> Self {
        Metered {
            inner,
            sent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Bytes sent to other ranks so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.sent
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A shared rank is a rank.
impl<C: Collective + ?Sized> Collective for std::sync::Arc<C> {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn size(&self) -> usize {
        (**self).size()
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        (**self).all_gather(local)
    }

    fn all_to_all(&self, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Error> {
        (**self).all_to_all(parts)
    }

    fn broadcast(&self, root: usize, data: &mut Vec<u8>) -> Result<(), Error> {
        (**self).broadcast(root, data)
    }

    fn all_gather_into(&self, local: &[u8], counts: &[usize], out: &mut [u8]) -> Result<(), Error> {
        (**self).all_gather_into(local, counts, out)
    }

    fn all_to_all_into(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<(), Error> {
        (**self).all_to_all_into(send, send_counts, recv, recv_counts)
    }
}

impl<C: Collective> Collective for Metered<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        self.add(local.len() * (self.size() - 1));
        self.inner.all_gather(local)
    }

    fn all_to_all(&self, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Error> {
        let others: usize = parts
            .iter()
            .enumerate()
            .filter(|(r, _)| *r != self.rank())
            .map(|(_, p)| p.len())
            .sum();
        self.add(others);
        self.inner.all_to_all(parts)
    }

    fn broadcast(&self, root: usize, data: &mut Vec<u8>) -> Result<(), Error> {
        if root == self.rank() {
            self.add(data.len() * (self.size() - 1));
        }
        self.inner.broadcast(root, data)
    }

    fn all_gather_into(&self, local: &[u8], counts: &[usize], out: &mut [u8]) -> Result<(), Error> {
        self.add(local.len() * (self.size() - 1));
        self.inner.all_gather_into(local, counts, out)
    }

    fn all_to_all_into(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<(), Error> {
        let mine = send_counts.get(self.rank()).copied().unwrap_or(0);
        self.add(send.len().saturating_sub(mine));
        self.inner
            .all_to_all_into(send, send_counts, recv, recv_counts)
    }
}
