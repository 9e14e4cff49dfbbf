//! Ranks as threads of one process, exchanging through shared memory: for
//! tests, and for sharding across the cores of one machine.

use super::Collective;
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
        let entry = state.rounds.get_mut(&round).expect("this rank's round");
        let mine = entry
            .parts
            .iter()
            .map(|p| p.as_ref().map_or_else(Vec::new, |p| p[self.rank].clone()))
            .collect();
        entry.taken += 1;
        if entry.taken == size {
            state.rounds.remove(&round);
        }
        Ok(mine)
    }
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
        self.exchange(vec![local.to_vec(); self.hub.size])
    }

    fn all_to_all(&self, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Error> {
        self.exchange(parts.to_vec())
    }

    fn broadcast(&self, root: usize, data: &mut Vec<u8>) -> Result<(), Error> {
        if root >= self.hub.size {
            return Err(mismatch(format!(
                "broadcast from rank {root} of {}",
                self.hub.size
            )));
        }
        let parts = if self.rank == root {
            vec![data.clone(); self.hub.size]
        } else {
            vec![Vec::new(); self.hub.size]
        };
        let mut got = self.exchange(parts)?;
        *data = std::mem::take(&mut got[root]);
        Ok(())
    }
}
