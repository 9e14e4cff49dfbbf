//! Sharded checkpoints: each rank writes its shard of the parameters and
//! of the optimizer state as a lensopt checkpoint of its own
//! (`rank-R-of-N.safetensors`, [`crate::checkpoint`]'s format, checksums
//! included), and rank 0 marks the directory complete once every rank has
//! written (`COMPLETE`, written whole and renamed into place). A run may
//! resume on another number of ranks: every rank reads the shards that
//! overlap its new ones and takes its part.
//!
//! A directory without `COMPLETE` (a rank died while saving) is refused,
//! so writing each checkpoint to a new directory keeps the last complete
//! one loadable whatever happens to the next.

use super::sharded::{layout_for, local_tensors};
use super::ShardedStepper;
use crate::checkpoint::{load_with, save};
use crate::error::{mismatch, Error};
use crate::optimizer::Group;
use crate::stepper::Stepper;
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use lensopt_ir::interp::StateBuf;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::collections::BTreeMap;
use std::path::Path;

const COMPLETE: &str = "COMPLETE";

fn shard_file(dir: &Path, rank: usize, ranks: usize) -> std::path::PathBuf {
    dir.join(format!("rank-{rank}-of-{ranks}.safetensors"))
}

fn fail(message: impl Into<String>) -> Error {
    Error::Checkpoint(message.into())
}

impl<F: Float> ShardedStepper<F> {
    /// Saves this rank's shard of `params` (named, whole, the same on every
    /// rank) and of the optimizer state into `dir` (every rank calls this;
    /// `dir` is created). `user` entries are stored with rank 0's shard.
    pub fn save(
        &self,
        dir: &Path,
        params: &[(&str, &dyn TensorRef<F>)],
        user: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let (rank, ranks) = (self.comm.rank(), self.comm.size());
        let written = (|| -> Result<(), Error> {
            if params.len() != self.shapes.len() {
                return Err(mismatch(format!(
                    "{} parameters for an optimizer of {} tensors",
                    params.len(),
                    self.shapes.len()
                )));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
            let mut views = Vec::new();
            for (k, shape) in &self.held {
                let (k, shape) = (*k, shape);
                let (name, p) = params[k];
                let data = p
                    .elements()
                    .filter(|d| {
                        p.shape() == self.shapes[k].as_slice()
                            && d.len() == self.layout.numel(k).unwrap_or(0)
                    })
                    .ok_or_else(|| {
                        mismatch(format!("parameter {k} does not have the optimizer's shape"))
                    })?;
                let range = self.layout.ranges(k)?[rank].clone();
                let view = if self.rule.is_matrix() {
                    data
                } else {
                    &data[range]
                };
                views.push((
                    name,
                    ArrayViewD::from_shape(IxDyn(shape), view)
                        .map_err(|e| mismatch(e.to_string()))?,
                ));
            }
            let named: Vec<(&str, &dyn TensorRef<F>)> = views
                .iter()
                .map(|(n, v)| (*n, v as &dyn TensorRef<F>))
                .collect();
            let mut entries = if rank == 0 {
                user.clone()
            } else {
                BTreeMap::new()
            };
            entries.insert("dist.rank".into(), rank.to_string());
            entries.insert("dist.ranks".into(), ranks.to_string());
            save(&shard_file(dir, rank, ranks), &named, &self.local, &entries)
        })();
        // Every rank learns whether every rank wrote before rank 0 marks the directory complete.
        let status = match &written {
            Ok(()) => Vec::new(),
            Err(e) => e.to_string().into_bytes(),
        };
        let all = self.comm.all_gather(&status)?;
        written?;
        if let Some((r, m)) = all.iter().enumerate().find(|(_, m)| !m.is_empty()) {
            return Err(fail(format!(
                "rank {r} could not save: {}",
                String::from_utf8_lossy(m)
            )));
        }
        let marked = if rank == 0 {
            let tmp = dir.join(format!(".{COMPLETE}.tmp"));
            std::fs::write(&tmp, format!("ranks={ranks}\nt={}\n", self.local.t()))
                .and_then(|()| std::fs::rename(&tmp, dir.join(COMPLETE)))
                .map_err(|e| fail(format!("cannot mark {} complete: {e}", dir.display())))
        } else {
            Ok(())
        };
        let status = if marked.is_ok() { vec![] } else { vec![1] };
        let all = self.comm.all_gather(&status)?;
        marked?;
        if all.iter().any(|m| !m.is_empty()) {
            return Err(fail(format!(
                "rank 0 could not mark {} complete",
                dir.display()
            )));
        }
        Ok(())
    }

    /// Loads a complete sharded checkpoint from `dir`, written on any number
    /// of ranks, into `params` (whole, on every rank) and this rank's shard
    /// of the state (every rank calls this). Refuses an incomplete
    /// directory, another rule or other shapes; nothing changes then.
    pub fn load(
        &mut self,
        dir: &Path,
        params: &mut [(&str, &mut dyn TensorMut<F>)],
    ) -> Result<BTreeMap<String, String>, Error> {
        let loaded = self.read_all(dir, params);
        // Every rank loads, or none changes anything.
        let status = match &loaded {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().into_bytes(),
        };
        let all = self.comm.all_gather(&status)?;
        let (entries, full, t, skipped, groups, state) = loaded?;
        if let Some((r, m)) = all.iter().enumerate().find(|(_, m)| !m.is_empty()) {
            return Err(fail(format!(
                "rank {r} could not load: {}",
                String::from_utf8_lossy(m)
            )));
        }
        for ((_, p), values) in params.iter_mut().zip(full) {
            if let Some(d) = p.elements_mut() {
                d.copy_from_slice(&values);
            }
        }
        self.local.restore(t, skipped, groups, state);
        Ok(entries)
    }

    #[allow(clippy::type_complexity)]
    fn read_all(
        &self,
        dir: &Path,
        params: &[(&str, &mut dyn TensorMut<F>)],
    ) -> Result<
        (
            BTreeMap<String, String>,
            Vec<Vec<F>>,
            u64,
            u64,
            Vec<Vec<lensopt_ir::HyperValue>>,
            Vec<Vec<StateBuf<F>>>,
        ),
        Error,
    > {
        let marker = std::fs::read_to_string(dir.join(COMPLETE)).map_err(|e| {
            fail(format!(
                "{} is not a complete sharded checkpoint ({COMPLETE}: {e})",
                dir.display()
            ))
        })?;
        let old_ranks: usize = marker
            .lines()
            .find_map(|l| l.strip_prefix("ranks="))
            .and_then(|v| v.parse().ok())
            .filter(|&r| r > 0)
            .ok_or_else(|| {
                fail(format!(
                    "{}: {COMPLETE} does not say how many ranks wrote",
                    dir.display()
                ))
            })?;
        if params.len() != self.shapes.len() {
            return Err(mismatch(format!(
                "{} parameters for an optimizer of {} tensors",
                params.len(),
                self.shapes.len()
            )));
        }
        for (k, (_, p)) in params.iter().enumerate() {
            if p.shape() != self.shapes[k].as_slice() || p.elements().is_none() {
                return Err(mismatch(format!(
                    "parameter {k} does not have the optimizer's shape"
                )));
            }
        }
        let old = layout_for(&self.rule, self.layout.numels(), old_ranks)?;
        let rank = self.comm.rank();
        let base = self.local.group_values()[0].clone();
        let mut full: Vec<Vec<F>> = self
            .layout
            .numels()
            .iter()
            .map(|&n| vec![F::default(); n])
            .collect();
        let mut element_states: Vec<Vec<Option<Vec<F>>>> = vec![Vec::new(); self.shapes.len()];
        let mut scalars: Vec<Vec<Option<f64>>> = vec![Vec::new(); self.shapes.len()];
        let mut whole_states: Vec<Option<Vec<StateBuf<F>>>> = vec![None; self.shapes.len()];
        let mut counters = None;
        let mut entries = BTreeMap::new();
        for q in 0..old_ranks {
            let tensors = local_tensors(&self.rule, &self.shapes, &old, q, old_ranks)?;
            let mut arrays: Vec<ArrayD<F>> = tensors
                .iter()
                .map(|(_, s)| ArrayD::zeros(IxDyn(s)))
                .collect();
            let refs: Vec<&dyn TensorRef<F>> =
                arrays.iter().map(|a| a as &dyn TensorRef<F>).collect();
            let mut shard = Stepper::new(
                self.rule.clone(),
                base.clone(),
                &refs,
                &[Group::new(0..refs.len())],
            )?;
            let mut named: Vec<(&str, &mut dyn TensorMut<F>)> = tensors
                .iter()
                .zip(arrays.iter_mut())
                .map(|((k, _), a)| (params[*k].0, a as &mut dyn TensorMut<F>))
                .collect();
            let path = shard_file(dir, q, old_ranks);
            let contents = load_with(&path, &mut named, &mut shard, |c| {
                let says = |key: &str| c.entries.get(key).map(String::as_str);
                if says("dist.rank") != Some(&q.to_string())
                    || says("dist.ranks") != Some(&old_ranks.to_string())
                {
                    return Err("it is not this rank's shard of this checkpoint".into());
                }
                Ok(())
            })?;
            drop(named);
            if counters.is_none() {
                counters = Some((contents.t, contents.skipped, shard.group_values().to_vec()));
            }
            if q == 0 {
                entries = contents.entries;
                entries.retain(|k, _| !k.starts_with("dist."));
            }
            for (i, (k, _)) in tensors.iter().enumerate() {
                let k = *k;
                let range = old.ranges(k)?[q].clone();
                let data = arrays[i].as_slice().unwrap_or(&[]);
                if self.rule.is_matrix() {
                    full[k].copy_from_slice(data);
                    whole_states[k] = Some(shard.state_buffers()[i].clone());
                    continue;
                }
                full[k][range.clone()].copy_from_slice(data);
                // The part of this old shard that falls in this rank's new one.
                let mine = self.layout.ranges(k)?[rank].clone();
                let (from, to) = (range.start.max(mine.start), range.end.min(mine.end));
                let bufs = &shard.state_buffers()[i];
                if element_states[k].is_empty() {
                    element_states[k] = vec![None; bufs.len()];
                    scalars[k] = vec![None; bufs.len()];
                }
                for (j, b) in bufs.iter().enumerate() {
                    match b {
                        StateBuf::Scalar(v) => scalars[k][j] = Some(*v),
                        StateBuf::Element(v) => {
                            let dst = element_states[k][j]
                                .get_or_insert_with(|| vec![F::default(); mine.len()]);
                            if from < to {
                                dst[from - mine.start..to - mine.start]
                                    .copy_from_slice(&v[from - range.start..to - range.start]);
                            }
                        }
                    }
                }
            }
        }
        let (t, skipped, groups) = counters.ok_or_else(|| fail("a checkpoint of no ranks"))?;
        let state: Vec<Vec<StateBuf<F>>> = self
            .held
            .iter()
            .map(|&(k, _)| {
                if self.rule.is_matrix() {
                    return whole_states[k]
                        .clone()
                        .ok_or_else(|| fail(format!("no shard holds tensor {k}'s state")));
                }
                let n = self.layout.ranges(k)?[rank].len();
                Ok(element_states[k]
                    .iter()
                    .zip(&scalars[k])
                    .map(|(e, s)| match (e, s) {
                        (_, Some(v)) => StateBuf::Scalar(*v),
                        (Some(e), None) => StateBuf::Element(e.clone()),
                        (None, None) => StateBuf::Element(vec![F::default(); n]),
                    })
                    .collect())
            })
            .collect::<Result<_, Error>>()?;
        Ok((entries, full, t, skipped, groups, state))
    }
}
