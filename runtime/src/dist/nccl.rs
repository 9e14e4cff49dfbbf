//! NCCL as a [`Collective`] (feature `nccl`), through cudarc's bindings
//! (NCCL and the CUDA driver are loaded at run time). Each rank drives one
//! GPU; [`Nccl::on_devices`] makes one rank per GPU in this process, and
//! [`Nccl::from_rank`] joins a multi-process group from the id that rank 0
//! made with [`Nccl::unique_id`] (sent to the other processes by any means,
//! MPI's broadcast for one).
//!
//! The collectives here move host bytes through device buffers: an
//! all-gather pads every rank's bytes to the longest (lengths go first),
//! and an all-to-all is an all-gather of every rank's parts (size-fold the
//! bytes of a true all-to-all; NCCL has none but grouped send and receive).
//! Steps on the GPU would hand NCCL their device buffers directly.

use super::Collective;
use crate::error::{mismatch, Error};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::safe::{Comm, Id};
use std::sync::{Arc, Mutex};

/// One rank of an NCCL group.
pub struct Nccl {
    /// Every call holds the lock: a communicator serves one call at a time.
    comm: Mutex<Comm>,
    stream: Arc<CudaStream>,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nccl {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

// SAFETY: NCCL allows a communicator to be used from any thread provided
// its calls are not concurrent; every use goes through the mutex, and the
// stream is cudarc's (itself Send and Sync).
unsafe impl Send for Nccl {}
// SAFETY: as for `Send`.
unsafe impl Sync for Nccl {}

fn failed(what: &str, e: impl std::fmt::Debug) -> Error {
    mismatch(format!("NCCL {what} failed: {e:?}"))
}

impl Nccl {
    /// One rank per GPU `ordinals` names, all in this process (rank `i` on
    /// `ordinals[i]`); hand each to its own thread.
    pub fn on_devices(ordinals: &[usize]) -> Result<Vec<Nccl>, Error> {
        let streams = ordinals
            .iter()
            .map(|&o| {
                CudaContext::new(o)
                    .map(|c| c.default_stream())
                    .map_err(|e| failed("device", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let comms = Comm::from_devices(streams.clone()).map_err(|e| failed("init", e))?;
        let size = comms.len();
        Ok(comms
            .into_iter()
            .zip(streams)
            .enumerate()
            .map(|(rank, (comm, stream))| Nccl {
                comm: Mutex::new(comm),
                stream,
                rank,
                size,
            })
            .collect())
    }

    /// A new group's id (made by rank 0, then given to every rank).
    pub fn unique_id() -> Result<[std::ffi::c_char; 128], Error> {
        Id::new()
            .map(|id| *id.internal())
            .map_err(|e| failed("id", e))
    }

    /// Rank `rank` of `size` on GPU `ordinal`, joining the group of `id`.
    pub fn from_rank(
        ordinal: usize,
        rank: usize,
        size: usize,
        id: [std::ffi::c_char; 128],
    ) -> Result<Nccl, Error> {
        let stream = CudaContext::new(ordinal)
            .map(|c| c.default_stream())
            .map_err(|e| failed("device", e))?;
        let comm = Comm::from_rank(stream.clone(), rank, size, Id::uninit(id))
            .map_err(|e| failed("init", e))?;
        Ok(Nccl {
            comm: Mutex::new(comm),
            stream,
            rank,
            size,
        })
    }

    /// Every rank's `bytes`, each padded to `len`, in rank order.
    fn gather_padded(&self, comm: &Comm, bytes: &[u8], len: usize) -> Result<Vec<u8>, Error> {
        let mut padded = bytes.to_vec();
        padded.resize(len.max(1), 0);
        let send = self
            .stream
            .clone_htod(&padded)
            .map_err(|e| failed("copy", e))?;
        let mut recv = self
            .stream
            .alloc_zeros::<u8>(len.max(1) * self.size)
            .map_err(|e| failed("alloc", e))?;
        comm.all_gather(&send, &mut recv)
            .map_err(|e| failed("all-gather", e))?;
        self.stream.clone_dtoh(&recv).map_err(|e| failed("copy", e))
    }

    fn lengths(&self, comm: &Comm, len: usize) -> Result<Vec<usize>, Error> {
        let all = self.gather_padded(comm, &(len as u64).to_le_bytes(), 8)?;
        Ok(all
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b) as usize
            })
            .collect())
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        let lengths = self.lengths(&comm, local.len())?;
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let all = self.gather_padded(&comm, local, longest)?;
        let stride = longest.max(1);
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(r, &n)| all[r * stride..r * stride + n].to_vec())
            .collect())
    }

    fn all_to_all(&self, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Error> {
        if parts.len() != self.size {
            return Err(mismatch(format!(
                "{} parts for {} ranks",
                parts.len(),
                self.size
            )));
        }
        // Every rank's parts, each prefixed by its length; keep the ones for this rank.
        let mut message = Vec::new();
        for p in parts {
            message.extend_from_slice(&(p.len() as u64).to_le_bytes());
            message.extend_from_slice(p);
        }
        let gathered = self.all_gather(&message)?;
        gathered
            .iter()
            .enumerate()
            .map(|(sender, m)| {
                let mut at = 0;
                for r in 0..self.size {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(
                        m.get(at..at + 8).ok_or_else(|| {
                            mismatch(format!("rank {sender} sent a short message"))
                        })?,
                    );
                    let n = u64::from_le_bytes(b) as usize;
                    let part = m
                        .get(at + 8..at + 8 + n)
                        .ok_or_else(|| mismatch(format!("rank {sender} sent a short message")))?;
                    if r == self.rank {
                        return Ok(part.to_vec());
                    }
                    at += 8 + n;
                }
                Err(mismatch(format!(
                    "rank {sender} sent no part for rank {}",
                    self.rank
                )))
            })
            .collect()
    }

    fn broadcast(&self, root: usize, data: &mut Vec<u8>) -> Result<(), Error> {
        if root >= self.size {
            return Err(mismatch(format!(
                "broadcast from rank {root} of {}",
                self.size
            )));
        }
        let all = self.all_gather(if self.rank == root { data } else { &[] })?;
        *data = all[root].clone();
        Ok(())
    }
}
