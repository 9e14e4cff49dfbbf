//! An optimizer whose state is sharded across ranks (ZeRO stage 1).

use super::{all_gather_tensor, reduce_scatter_checked, Collective, ShardLayout};
use crate::error::{mismatch, Error};
use crate::non_finite::NonFinite;
use crate::optimizer::{Group, Optimizer};
use crate::stepper::{elements as whole, Inputs, Stepper};
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use lensopt_ir::{Rule, StateKind};
use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn};
use std::borrow::Cow;
use std::sync::Arc;

/// How the ranks' gradients combine before a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradientReduction {
    /// Their sum, in rank order.
    Sum,
    /// Their sum in rank order, divided by the number of ranks (data
    /// parallelism, each rank with its share of the batch). The default.
    #[default]
    Mean,
}

/// One rank's part of an optimizer over tensors that every rank holds
/// whole: it keeps the optimizer state of its shard only.
///
/// A step takes every rank's whole gradients, reduce-scatters them (each
/// rank gets the rank-ordered sum over its shard, see
/// [`GradientReduction`]), checks them for NaN and infinity on every rank
/// before anything changes ([`NonFinite`], agreed by all ranks), steps the
/// shard, and all-gathers the parameters. Element rules are sharded by
/// chunks of elements and exchange reduction partials; matrix rules (which
/// need whole matrices) by whole tensors. Either way the parameters and
/// state are bit for bit those of one process stepping with the
/// rank-ordered sum.
pub struct ShardedStepper<F: Float> {
    pub(super) comm: Arc<dyn Collective>,
    pub(super) layout: ShardLayout,
    pub(super) shapes: Vec<Vec<usize>>,
    pub(super) rule: Arc<Rule>,
    /// This rank's steps: over its shard of every tensor (element rules) or
    /// over the whole tensors it owns (matrix rules).
    pub(super) local: Stepper<F>,
    /// The tensors `local` holds, as indices into the whole list, each
    /// with its shape there ([`local_tensors`]).
    pub(super) held: Vec<(usize, Vec<usize>)>,
    non_finite: NonFinite,
    reduction: GradientReduction,
    skipped: u64,
    last_skipped: bool,
}

/// The layout `rule` is sharded by over `ranks`: whole tensors for matrix
/// rules (they need whole matrices), chunks of elements otherwise.
pub(super) fn layout_for(
    rule: &Rule,
    numels: &[usize],
    ranks: usize,
) -> Result<ShardLayout, Error> {
    if rule.is_matrix() {
        ShardLayout::whole(numels, ranks)
    } else {
        ShardLayout::chunked(numels, ranks)
    }
}

/// The tensors rank `rank` of `ranks` holds under `layout` (a stepper's
/// over its shards), each with its shape there: every tensor's shard as a
/// vector, or for matrix rules the whole tensors it owns.
pub(super) fn local_tensors(
    rule: &Rule,
    shapes: &[Vec<usize>],
    layout: &ShardLayout,
    rank: usize,
    ranks: usize,
) -> Result<Vec<(usize, Vec<usize>)>, Error> {
    let by_tensor = rule.is_matrix();
    (0..shapes.len())
        .filter(|&k| !by_tensor || k % ranks == rank)
        .map(|k| {
            Ok((
                k,
                if by_tensor {
                    shapes[k].clone()
                } else {
                    vec![layout.ranges(k)?[rank].len()]
                },
            ))
        })
        .collect()
}

/// Views of the held tensors' parts of `shards` (one per tensor), each in its local shape.
fn local_views<'a, F: Clone>(
    held: &[(usize, Vec<usize>)],
    shards: &'a [Cow<'_, [F]>],
) -> Result<Vec<ArrayViewD<'a, F>>, Error> {
    held.iter()
        .map(|(k, shape)| ArrayViewD::from_shape(IxDyn(shape), &shards[*k][..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| mismatch(e.to_string()))
}

impl<F: Float> ShardedStepper<F> {
    /// This rank's part of `optimizer` over `params` (every rank passes the
    /// same shapes, in the same order; every rank must call this).
    pub fn new(
        optimizer: &impl Optimizer,
        params: &[&dyn TensorRef<F>],
        comm: Arc<dyn Collective>,
    ) -> Result<Self, Error> {
        let rule = optimizer.rule();
        let shapes: Vec<Vec<usize>> = params.iter().map(|p| p.shape().to_vec()).collect();
        let numels: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        let layout = layout_for(&rule, &numels, comm.size())?;
        let rank = comm.rank();
        // Every rank must describe the same tensors to the same rule.
        let signature = format!("{}:{shapes:?}", rule.name).into_bytes();
        let all = comm.all_gather(&signature)?;
        if let Some(r) = all.iter().position(|s| *s != signature) {
            return Err(mismatch(format!(
                "rank {r} has other tensors or another rule than rank {rank}"
            )));
        }
        let held = local_tensors(&rule, &shapes, &layout, rank, comm.size())?;
        let mut views: Vec<ArrayViewD<'_, F>> = Vec::with_capacity(held.len());
        for (k, shape) in &held {
            let data = whole("parameter", *k, params[*k], &shapes[*k])?;
            let range = layout.ranges(*k)?[rank].clone();
            let data = if rule.is_matrix() { data } else { &data[range] };
            views.push(
                ArrayViewD::from_shape(IxDyn(shape), data).map_err(|e| mismatch(e.to_string()))?,
            );
        }
        let refs: Vec<&dyn TensorRef<F>> = views.iter().map(|v| v as &dyn TensorRef<F>).collect();
        let mut local = Stepper::new(
            rule.clone(),
            optimizer.hypers(),
            &refs,
            &[Group::new(0..refs.len())],
        )?;
        local.set_non_finite(NonFinite::Unchecked);
        if !rule.is_matrix() {
            local.set_shard(numels, comm.clone())?;
        }
        Ok(ShardedStepper {
            comm,
            layout,
            shapes,
            rule,
            local,
            held,
            non_finite: NonFinite::default(),
            reduction: GradientReduction::default(),
            skipped: 0,
            last_skipped: false,
        })
    }

    /// How the ranks' gradients combine (their mean by default).
    pub fn set_gradient_reduction(&mut self, reduction: GradientReduction) {
        self.reduction = reduction;
    }

    /// What a step does with NaN or infinite gradients or inputs, on every
    /// rank alike (refusing the step is the default).
    pub fn set_non_finite(&mut self, policy: NonFinite) {
        self.non_finite = policy;
    }

    /// Steps skipped under [`NonFinite::Skip`].
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// True when the last step was skipped.
    pub fn last_skipped(&self) -> bool {
        self.last_skipped
    }

    /// Steps taken so far.
    pub fn t(&self) -> u64 {
        self.local.t()
    }

    /// Which elements of each tensor each rank owns.
    pub fn layout(&self) -> &ShardLayout {
        &self.layout
    }

    /// Bytes of optimizer state this rank holds.
    pub fn state_bytes(&self) -> usize {
        let per = std::mem::size_of::<F>();
        (0..self.held.len())
            .map(|i| {
                self.rule
                    .states
                    .iter()
                    .filter(|s| s.kind != StateKind::Scalar)
                    .filter_map(|s| self.local.state(i, &s.name))
                    .map(|a| a.len() * per)
                    .sum::<usize>()
            })
            .sum()
    }

    /// One step (every rank calls it): `grads` are this rank's whole
    /// gradients; `params` (whole, the same on every rank) are updated on
    /// every rank.
    pub fn step(
        &mut self,
        params: &mut [&mut dyn TensorMut<F>],
        grads: &[&dyn TensorRef<F>],
    ) -> Result<(), Error> {
        self.step_with(params, grads, &[])
    }

    /// One step with extra per-element inputs (combined across ranks as
    /// the gradients are), by the names the rule declares.
    pub fn step_with<'g>(
        &mut self,
        params: &mut [&mut dyn TensorMut<F>],
        grads: &[&'g dyn TensorRef<F>],
        inputs: &[(&str, Vec<&'g dyn TensorRef<F>>)],
    ) -> Result<(), Error> {
        // Every rank checks its arguments, and all learn whether any failed,
        // before anything is exchanged or changed.
        let checked = self.check(params, grads, inputs);
        let mut message = Vec::new();
        if let Err(e) = &checked {
            message = e.to_string().into_bytes();
            message.insert(0, 1);
        }
        let all = self.comm.all_gather(&message)?;
        checked?;
        if let Some((r, m)) = all.iter().enumerate().find(|(_, m)| !m.is_empty()) {
            return Err(mismatch(format!(
                "rank {r} refused the step: {}",
                String::from_utf8_lossy(&m[1..])
            )));
        }
        let rank = self.comm.rank();
        let ranks = F::from_f64(self.comm.size() as f64);
        let mean = self.reduction == GradientReduction::Mean && self.comm.size() > 1;
        // One rank's shard is the whole tensor: it is read where it lies,
        // and scanned below. With more, the pass that sums (and averages)
        // the shard checks it as it writes it: `Some(finite)`.
        let reduce = |k: usize, t: &'g dyn TensorRef<F>| {
            let data = t.elements().unwrap_or(&[]);
            if self.comm.size() == 1 {
                return Ok((Cow::Borrowed(data), None));
            }
            let divisor = mean.then_some(ranks);
            let (shard, finite) =
                reduce_scatter_checked(self.comm.as_ref(), &self.layout, k, data, divisor)?;
            Ok::<_, Error>((Cow::Owned(shard), finite))
        };
        let mut g_shards = Vec::with_capacity(self.shapes.len());
        let mut g_finite = Vec::with_capacity(self.shapes.len());
        let mut input_shards: Vec<(String, Vec<Cow<'_, [F]>>)> = Vec::new();
        let mut input_finite: Vec<Vec<Option<bool>>> = Vec::new();
        for (k, g) in grads.iter().enumerate() {
            let (shard, finite) = reduce(k, *g)?;
            g_shards.push(shard);
            g_finite.push(finite);
        }
        for (name, tensors) in inputs {
            let mut shards = Vec::with_capacity(tensors.len());
            let mut finite = Vec::with_capacity(tensors.len());
            for (k, t) in tensors.iter().enumerate() {
                let (shard, ok) = reduce(k, *t)?;
                shards.push(shard);
                finite.push(ok);
            }
            input_shards.push((name.to_string(), shards));
            input_finite.push(finite);
        }
        // The non-finite policy, decided by all ranks from all shards.
        self.last_skipped = false;
        if self.non_finite != NonFinite::Unchecked {
            let mut found: Option<(usize, usize, String, usize, f64)> = None;
            for k in 0..self.shapes.len() {
                let start = self.layout.ranges(k)?[rank].start;
                let inputs = input_shards
                    .iter()
                    .zip(&input_finite)
                    .map(|((name, shards), finite)| (Some(name), &shards[k], finite[k]));
                let candidates = std::iter::once((None, &g_shards[k], g_finite[k])).chain(inputs);
                for (order, (name, xs, finite)) in candidates.enumerate() {
                    if finite == Some(true) {
                        continue;
                    }
                    if let Some((i, v)) = crate::non_finite::first_non_finite(xs) {
                        if found
                            .as_ref()
                            .is_none_or(|g| (k, order, start + i) < (g.0, g.1, g.3))
                        {
                            let what =
                                name.map_or("gradient".to_string(), |n| format!("input `{n}`"));
                            found = Some((k, order, what, start + i, v));
                        }
                    }
                }
            }
            let mut message = Vec::new();
            if let Some((k, order, what, index, value)) = &found {
                message.extend_from_slice(&(*k as u64).to_le_bytes());
                message.extend_from_slice(&(*order as u64).to_le_bytes());
                message.extend_from_slice(&(*index as u64).to_le_bytes());
                message.extend_from_slice(&value.to_le_bytes());
                message.extend_from_slice(what.as_bytes());
            }
            let word = |m: &[u8], at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&m[at..at + 8]);
                b
            };
            let first = self
                .comm
                .all_gather(&message)?
                .into_iter()
                .filter(|m| m.len() >= 32)
                .map(|m| {
                    let key = (
                        u64::from_le_bytes(word(&m, 0)),
                        u64::from_le_bytes(word(&m, 8)),
                        u64::from_le_bytes(word(&m, 16)),
                    );
                    let value = f64::from_le_bytes(word(&m, 24));
                    let what = String::from_utf8_lossy(&m[32..]).into_owned();
                    (key, value, what)
                })
                .min_by_key(|(key, _, _)| *key);
            if let Some(((k, _, index), value, what)) = first {
                if self.non_finite == NonFinite::Skip {
                    self.skipped += 1;
                    self.last_skipped = true;
                    return Ok(());
                }
                return Err(Error::NonFinite {
                    what: format!("{what} {k}"),
                    index: index as usize,
                    value,
                    step: self.local.t() + 1,
                });
            }
        }
        // The local step, on views of this rank's part of each parameter.
        {
            let mut views: Vec<ArrayViewMutD<'_, F>> = Vec::with_capacity(self.held.len());
            let mut held = self.held.iter().peekable();
            for (k, p) in params.iter_mut().enumerate() {
                let Some((_, shape)) = held.next_if(|(h, _)| *h == k) else {
                    continue;
                };
                let range = self.layout.ranges(k)?[rank].clone();
                let data = p
                    .elements_mut()
                    .ok_or_else(|| mismatch("a parameter is not contiguous"))?;
                views.push(
                    ArrayViewMutD::from_shape(IxDyn(shape), &mut data[range])
                        .map_err(|e| mismatch(e.to_string()))?,
                );
            }
            let g_views = local_views(&self.held, &g_shards)?;
            let input_views = input_shards
                .iter()
                .map(|(name, shards)| Ok((name.clone(), local_views(&self.held, shards)?)))
                .collect::<Result<Vec<_>, Error>>()?;
            let mut local_inputs = Inputs::new();
            for (name, v) in &input_views {
                local_inputs =
                    local_inputs.with(name, v.iter().map(|a| a as &dyn TensorRef<F>).collect());
            }
            let mut param_refs: Vec<&mut dyn TensorMut<F>> = views
                .iter_mut()
                .map(|v| v as &mut dyn TensorMut<F>)
                .collect();
            let grad_refs: Vec<&dyn TensorRef<F>> =
                g_views.iter().map(|v| v as &dyn TensorRef<F>).collect();
            self.local
                .step_with(&mut param_refs, &grad_refs, &local_inputs)?;
        }
        // The summed shards go back to this thread's kept arrays.
        let owned = g_shards
            .into_iter()
            .chain(input_shards.into_iter().flat_map(|(_, shards)| shards));
        for shard in owned {
            if let Cow::Owned(v) = shard {
                lensopt_ir::kept_arrays::keep(v);
            }
        }
        // Every rank gets every rank's part of the parameters (one rank has them all).
        if self.comm.size() > 1 {
            for (k, p) in params.iter_mut().enumerate() {
                let range = self.layout.ranges(k)?[rank].clone();
                let full = p
                    .elements_mut()
                    .ok_or_else(|| mismatch("a parameter is not contiguous"))?;
                let mut mine = lensopt_ir::kept_arrays::with_capacity(range.len());
                mine.extend_from_slice(&full[range]);
                all_gather_tensor(self.comm.as_ref(), &self.layout, k, &mine, full)?;
                lensopt_ir::kept_arrays::keep(mine);
            }
        }
        Ok(())
    }

    fn check(
        &self,
        params: &mut [&mut dyn TensorMut<F>],
        grads: &[&dyn TensorRef<F>],
        inputs: &[(&str, Vec<&dyn TensorRef<F>>)],
    ) -> Result<(), Error> {
        let n = self.shapes.len();
        if params.len() != n || grads.len() != n {
            return Err(mismatch(format!(
                "the optimizer holds {n} tensors, but the step got {} parameters and {} gradients",
                params.len(),
                grads.len()
            )));
        }
        for k in 0..n {
            whole("parameter", k, &*params[k], &self.shapes[k])?;
            whole("gradient", k, grads[k], &self.shapes[k])?;
        }
        for (name, tensors) in inputs {
            if self.rule.input_index(name).is_none() {
                return Err(mismatch(format!(
                    "optimizer `{}` takes no input `{name}`",
                    self.rule.name
                )));
            }
            if tensors.len() != n {
                return Err(mismatch(format!(
                    "input `{name}` has {} tensors, but there are {n} parameters",
                    tensors.len()
                )));
            }
            for (k, t) in tensors.iter().enumerate() {
                whole(&format!("input `{name}`"), k, *t, &self.shapes[k])?;
            }
        }
        Ok(())
    }

    /// The whole of state `name` of tensor `k`, flattened (every rank calls
    /// this; every rank gets it). `None` when the rule has no such state.
    pub fn gather_state(&self, k: usize, name: &str) -> Result<Option<Vec<F>>, Error> {
        let Some(decl) = self.rule.states.iter().find(|s| s.name == name) else {
            return Ok(None);
        };
        if k >= self.shapes.len() {
            return Err(mismatch(format!("no tensor {k}")));
        }
        let local_index = self.held.iter().position(|(h, _)| *h == k);
        let mut bytes = Vec::new();
        if decl.kind == StateKind::Scalar {
            // Element rules keep scalar states on every rank; send one copy.
            let owner = self.rule.is_matrix() || self.comm.rank() == 0;
            if let (true, Some(i)) = (owner, local_index) {
                let v = self.local.scalar_state(i, name).unwrap_or(f64::NAN);
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        } else if let Some(i) = local_index {
            if let Some(a) = self.local.state(i, name) {
                let flat: Vec<F> = a.iter().copied().collect();
                bytes.extend_from_slice(bytemuck::cast_slice(&flat));
            }
        }
        let gathered = self.comm.all_gather(&bytes)?;
        let mut out = Vec::new();
        for (rank, b) in gathered.iter().enumerate() {
            if decl.kind == StateKind::Scalar {
                if b.len() == 8 {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    out.push(F::from_f64(f64::from_le_bytes(a)));
                }
                continue;
            }
            let part = super::values::<F>(b)
                .ok_or_else(|| mismatch(format!("rank {rank} sent a broken state shard")))?;
            out.extend(part);
        }
        Ok(Some(out))
    }
}
