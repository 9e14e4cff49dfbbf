//! Ranks as threads of one process, exchanging through shared memory: for
//! tests, and for sharding across the cores of one machine.
//!
//! A message is copied twice: into a buffer when it is sent, out of it where
//! the receiver wants it. The receiver takes the buffer (it is addressed to
//! it alone) and keeps it in its thread's kept arrays (`ir::kept_arrays`),
//! from which its next message's buffer comes: a fresh buffer of tens of
//! megabytes would fault in and zero every page again at every step.

use super::{check_counts, check_exchange, Collective};
use crate::error::{mismatch, Error};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One rank of a group made by [`Threads::group`]. A rank that is dropped
/// leaves the group: the others' pending and later collectives fail at
/// once, naming it, instead of waiting.
#[derive(Debug)]
pub struct Threads {
    rank: usize,
    hub: Arc<Hub>,
    /// Collectives this rank has entered (each is one round of the group).
    round: Mutex<u64>,
}

#[derive(Debug)]
struct Hub {
    size: usize,
    timeout: Duration,
    state: Mutex<HubState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct HubState {
    /// Per round: each rank's parts (one per destination rank), and how
    /// many ranks have taken their results.
    rounds: HashMap<u64, Round>,
    /// Ranks that left the group.
    left: Vec<usize>,
}

#[derive(Debug)]
struct Round {
    parts: Vec<Option<Vec<Vec<u8>>>>,
    taken: usize,
}

impl Threads {
    /// A group of `size` ranks; a collective fails when the others have not
    /// all joined it within `timeout`.
    pub fn group(size: usize, timeout: Duration) -> Vec<Threads> {
        let hub = Arc::new(Hub {
            size,
            timeout,
            state: Mutex::new(HubState::default()),
            changed: Condvar::new(),
        });
        (0..size)
            .map(|rank| Threads {
                rank,
                hub: hub.clone(),
                round: Mutex::new(0),
            })
            .collect()
    }

    /// Copies every rank's part into `out` in rank order (`counts[r]` bytes
    /// from rank `r`), this rank's own straight from `own`, as it never went
    /// through a buffer; then hands the buffers back.
    fn place_with_own(
        &self,
        got: Vec<Vec<u8>>,
        own: &[u8],
        counts: &[usize],
        out: &mut [u8],
    ) -> Result<(), Error> {
        let mut placed = Ok(());
        let mut at = 0;
        for (r, &c) in counts.iter().enumerate() {
            let part = if r == self.rank { own } else { &got[r][..] };
            if part.len() != c || at + c > out.len() {
                placed = Err(mismatch(format!(
                    "rank {r} sent {} bytes where {c} were due",
                    part.len()
                )));
                break;
            }
            out[at..at + c].copy_from_slice(part);
            at += c;
        }
        recycle(got);
        placed
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A rank that panicked while holding the lock left the state as it
        // was between rounds' updates; the state stays usable.
        self.hub.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One round: every rank gives one part per rank; this rank gets, in
    /// rank order, the part each rank addressed to it.
    fn exchange(&self, parts: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, Error> {
        let size = self.hub.size;
        if parts.len() != size {
            return Err(mismatch(format!("{} parts for {size} ranks", parts.len())));
        }
        let round = {
            let mut r = self.round.lock().unwrap_or_else(|e| e.into_inner());
            *r += 1;
            *r
        };
        let deadline = Instant::now() + self.hub.timeout;
        let mut state = self.lock();
        let entry = state.rounds.entry(round).or_insert_with(|| Round {
            parts: vec![None; size],
            taken: 0,
        });
        entry.parts[self.rank] = Some(parts);
        self.hub.changed.notify_all();
        loop {
            let round_state = state.rounds.get(&round).expect("this rank's round");
            if round_state.parts.iter().all(Option::is_some) {
                break;
            }
            // A rank that left after its last round is only a problem to
            // rounds it never joined.
            if let Some(&gone) = state.left.iter().find(|&&r| round_state.parts[r].is_none()) {
                return Err(mismatch(format!(
                    "rank {gone} left the group; rank {} stops at collective {round}",
                    self.rank
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = (0..size)
                    .filter(|&r| round_state.parts[r].is_none())
                    .collect();
                return Err(mismatch(format!(
                    "ranks {missing:?} did not reach collective {round} within {:?}",
                    self.hub.timeout
                )));
            }
            state = self
                .hub
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // Each part is addressed to one rank only: it is taken, not copied.
        let entry = state.rounds.get_mut(&round).expect("this rank's round");
        let mine = entry
            .parts
            .iter_mut()
            .map(|p| {
                p.as_mut()
                    .map_or_else(Vec::new, |p| std::mem::take(&mut p[self.rank]))
            })
            .collect();
        entry.taken += 1;
        if entry.taken == size {
            state.rounds.remove(&round);
        }
        Ok(mine)
    }
}

/// `bytes` in a buffer to send, a kept one when there is one.
fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut buffer = lensopt_ir::kept_arrays::with_capacity(bytes.len());
    buffer.extend_from_slice(bytes);
    buffer
}

/// Keeps delivered messages' buffers for this thread's next messages.
fn recycle(buffers: Vec<Vec<u8>>) {
    buffers.into_iter().for_each(lensopt_ir::kept_arrays::keep);
}

impl Drop for Threads {
    fn drop(&mut self) {
        let mut state = self.lock();
        state.left.push(self.rank);
        self.hub.changed.notify_all();
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.hub.size
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        self.exchange((0..self.hub.size).map(|_| buffer(local)).collect())
    }

    fn all_to_all(&self, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Error> {
        self.exchange(parts.iter().map(|p| buffer(p)).collect())
    }

    fn all_gather_into(&self, local: &[u8], counts: &[usize], out: &mut [u8]) -> Result<(), Error> {
        check_counts(self, counts, local.len(), out.len())?;
        let parts = (0..self.hub.size)
            .map(|r| {
                if r == self.rank {
                    Vec::new()
                } else {
                    buffer(local)
                }
            })
            .collect();
        let got = self.exchange(parts)?;
        self.place_with_own(got, local, counts, out)
    }

    fn all_to_all_into(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<(), Error> {
        check_exchange(self, send, send_counts, recv, recv_counts)?;
        let mut at = 0;
        let mut own = &send[..0];
        let mut parts = Vec::with_capacity(self.hub.size);
        for (r, &c) in send_counts.iter().enumerate() {
            let part = &send[at..at + c];
            at += c;
            if r == self.rank {
                own = part;
                parts.push(Vec::new());
            } else {
                parts.push(buffer(part));
            }
        }
        let got = self.exchange(parts)?;
        self.place_with_own(got, own, recv_counts, recv)
    }

    fn broadcast(&self, root: usize, data: &mut Vec<u8>) -> Result<(), Error> {
        if root >= self.hub.size {
            return Err(mismatch(format!(
                "broadcast from rank {root} of {}",
                self.hub.size
            )));
        }
        let parts = if self.rank == root {
            (0..self.hub.size).map(|_| buffer(data)).collect()
        } else {
            vec![Vec::new(); self.hub.size]
        };
        let mut got = self.exchange(parts)?;
        *data = std::mem::take(&mut got[root]);
        Ok(())
    }
}
