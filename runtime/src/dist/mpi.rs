//! MPI as a [`Collective`] (feature `mpi`), through the `mpi` crate over the
//! system's MPI library (Open MPI or MPICH). Start the program with
//! `mpirun -n N`; [`Mpi::init`] joins the job's world communicator.
//!
//! Messages are bytes: lengths are exchanged first, then the payloads with
//! the variable-count collectives (`MPI_Allgatherv`, `MPI_Alltoallv`,
//! `MPI_Bcast`). A rank that dies makes `mpirun` end the job; MPI itself has
//! no timeout.

use super::Collective;
use crate::error::{mismatch, Error};
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use std::sync::Mutex;

/// This process's rank in the MPI job.
pub struct Mpi {
    /// Every call holds the lock: MPI is initialised for serialized use
    /// (one thread in MPI at a time, any thread).
    world: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
    /// Finalises MPI when dropped; kept last so it goes after the communicator.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

// SAFETY: MPI is initialised with `Threading::Serialized` (checked in
// `init`), which allows calls from any thread as long as no two are in MPI
// at once; every use of the communicator goes through the mutex.
unsafe impl Send for Mpi {}
// SAFETY: as for `Send`: shared use is serialised by the mutex.
unsafe impl Sync for Mpi {}

/// `bytes` in a buffer of at least one byte: an empty Rust slice points at
/// address 1, which is `MPI_IN_PLACE` in Open MPI, so no empty slice may
/// reach MPI with its own pointer.
fn backed(bytes: &[u8], extra: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + extra.max(1));
    v.extend_from_slice(bytes);
    v.resize(bytes.len() + extra.max(1), 0);
    v
}

fn count(n: usize) -> Result<Count, Error> {
    Count::try_from(n).map_err(|_| mismatch(format!("a message of {n} bytes is too long for MPI")))
}

fn displacements(counts: &[Count]) -> Result<Vec<Count>, Error> {
    let mut at: Count = 0;
    let mut out = Vec::with_capacity(counts.len());
    for c in counts {
        out.push(at);
        at = at
            .checked_add(*c)
            .ok_or_else(|| mismatch("the messages of one collective are too long for MPI"))?;
    }
    Ok(out)
}

/// Splits `buf` into the parts `counts` describes.
fn split(buf: &[u8], counts: &[Count]) -> Vec<Vec<u8>> {
    let mut at = 0;
    counts
        .iter()
        .map(|&c| {
            let part = buf[at..at + c as usize].to_vec();
            at += c as usize;
            part
        })
        .collect()
}

impl Mpi {
    /// Initialises MPI (once per process) and joins the world communicator.
    pub fn init() -> Result<Self, Error> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| mismatch("MPI is already initialised, or could not start"))?;
        if threading < mpi::Threading::Serialized {
            return Err(mismatch(
                "this MPI library does not allow calls from more than one thread",
            ));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi {
            world: Mutex::new(world),
            rank,
            size,
            _universe: universe,
        })
    }

    fn world(&self) -> std::sync::MutexGuard<'_, SimpleCommunicator> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        let world = self.world();
        let mine = count(local.len())?;
        let mut counts = vec![0 as Count; self.size];
        world.all_gather_into(&mine, &mut counts[..]);
        let displs = displacements(&counts)?;
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total == 0 {
            // Nothing to move (MPI libraries differ on empty buffers).
            return Ok(vec![Vec::new(); self.size]);
        }
        let send = backed(local, 1);
        let mut buf = backed(&[], total + 1);
        {
            let mut partition = PartitionMut::new(&mut buf[..total], counts.clone(), &displs[..]);
            world.all_gather_varcount_into(&send[..local.len()], &mut partition);
        }
        Ok(split(&buf, &counts))
    }

    fn all_to_all(&self, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Error> {
        if parts.len() != self.size {
            return Err(mismatch(format!(
                "{} parts for {} ranks",
                parts.len(),
                self.size
            )));
        }
        let world = self.world();
        let send_counts = parts
            .iter()
            .map(|p| count(p.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut recv_counts = vec![0 as Count; self.size];
        world.all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let sent_bytes: usize = parts.iter().map(Vec::len).sum();
        let send = backed(&parts.concat(), 1);
        let send_displs = displacements(&send_counts)?;
        let recv_displs = displacements(&recv_counts)?;
        let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
        if total == 0 && sent_bytes == 0 {
            return Ok(vec![Vec::new(); self.size]);
        }
        let mut buf = backed(&[], total + 1);
        {
            let outgoing = Partition::new(&send[..sent_bytes], send_counts, &send_displs[..]);
            let mut incoming =
                PartitionMut::new(&mut buf[..total], recv_counts.clone(), &recv_displs[..]);
            world.all_to_all_varcount_into(&outgoing, &mut incoming);
        }
        Ok(split(&buf, &recv_counts))
    }

    fn all_gather_into(&self, local: &[u8], counts: &[usize], out: &mut [u8]) -> Result<(), Error> {
        super::check_counts(self, counts, local.len(), out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let counts = counts
            .iter()
            .map(|&c| count(c))
            .collect::<Result<Vec<_>, _>>()?;
        let displs = displacements(&counts)?;
        // An empty slice would reach MPI as address 1 (`MPI_IN_PLACE`; see `backed`).
        let pad;
        let send: &[u8] = if local.is_empty() {
            pad = backed(&[], 1);
            &pad[..0]
        } else {
            local
        };
        let world = self.world();
        let mut partition = PartitionMut::new(out, counts, &displs[..]);
        world.all_gather_varcount_into(send, &mut partition);
        Ok(())
    }

    fn all_to_all_into(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<(), Error> {
        super::check_exchange(self, send, send_counts, recv, recv_counts)?;
        if send.is_empty() && recv.is_empty() {
            return Ok(());
        }
        // Neither buffer may reach MPI empty (see `backed`).
        let send_buf;
        let send = if send.is_empty() {
            send_buf = backed(&[], 1);
            &send_buf[..0]
        } else {
            send
        };
        let mut recv_buf;
        let recv_target: &mut [u8] = if recv.is_empty() {
            recv_buf = backed(&[], 1);
            &mut recv_buf[..0]
        } else {
            recv
        };
        let send_counts = send_counts
            .iter()
            .map(|&c| count(c))
            .collect::<Result<Vec<_>, _>>()?;
        let recv_counts = recv_counts
            .iter()
            .map(|&c| count(c))
            .collect::<Result<Vec<_>, _>>()?;
        let send_displs = displacements(&send_counts)?;
        let recv_displs = displacements(&recv_counts)?;
        let world = self.world();
        let outgoing = Partition::new(send, send_counts, &send_displs[..]);
        let mut incoming = PartitionMut::new(recv_target, recv_counts, &recv_displs[..]);
        world.all_to_all_varcount_into(&outgoing, &mut incoming);
        Ok(())
    }

    fn broadcast(&self, root: usize, data: &mut Vec<u8>) -> Result<(), Error> {
        if root >= self.size {
            return Err(mismatch(format!(
                "broadcast from rank {root} of {}",
                self.size
            )));
        }
        let world = self.world();
        let process = world.process_at_rank(root as mpi::Rank);
        let mut len = count(data.len())?;
        process.broadcast_into(&mut len);
        let len = len.max(0) as usize;
        if len > 0 {
            data.resize(len, 0);
            process.broadcast_into(&mut data[..]);
        } else {
            data.clear();
        }
        Ok(())
    }
}
