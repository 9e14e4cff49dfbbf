//! Data-parallel training of a diagram model: each rank runs forward and
//! backward on its slice of the batch; the gradients are averaged into the
//! sharded optimizer's step.

use super::{all_reduce_f64, Collective, ShardedStepper};
use crate::diagram::plan::Model;
use crate::error::{mismatch, Error};
use crate::loss::Loss;
use crate::optimizer::Optimizer;
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use ndarray::Array2;
use std::sync::Arc;

/// One rank's part of data-parallel training: the whole model (the same on
/// every rank), the loss, and its shard of the optimizer state.
pub struct DataParallel<F: Float, L> {
    /// The model; its parameters are the same on every rank after each step.
    pub model: Model<F>,
    /// The loss lens.
    pub loss: L,
    /// This rank's shard of the optimizer.
    pub optimizer: ShardedStepper<F>,
    comm: Arc<dyn Collective>,
}

impl<F: Float, L: Loss<F>> DataParallel<F, L> {
    /// Binds `optimizer` to `model`'s parameters, sharded over `comm`
    /// (every rank calls this with the same model). Rules with a view
    /// (a look-ahead such as Nesterov's) are refused: the view needs the
    /// whole state.
    pub fn new(
        model: Model<F>,
        loss: L,
        optimizer: &impl Optimizer,
        comm: Arc<dyn Collective>,
    ) -> Result<Self, Error> {
        if optimizer.rule().view.is_some() {
            return Err(mismatch(format!(
                "`{}` has a view of the parameters, which data-parallel training does not shard",
                optimizer.rule().name
            )));
        }
        let refs: Vec<&dyn TensorRef<F>> = model
            .params
            .iter()
            .map(|p| &p.value as &dyn TensorRef<F>)
            .collect();
        let stepper = ShardedStepper::new(optimizer, &refs, comm.clone())?;
        Ok(DataParallel {
            model,
            loss,
            optimizer: stepper,
            comm,
        })
    }

    /// One step: `x` and `target` are this rank's slice of the batch (every
    /// rank's slice the same size, so that the mean of the ranks' mean
    /// gradients is the batch's). Returns the batch's loss, the mean over
    /// ranks of their slices' losses.
    pub fn step(&mut self, x: &Array2<F>, target: &Array2<F>) -> Result<F, Error> {
        let local = self.gradient(x, target);
        // Every rank learns whether every rank has a gradient before the step exchanges them.
        let ok = f64::from(u8::from(local.is_ok()));
        let value = local.as_ref().map_or(0.0, |v| v.to_f64());
        let all = all_reduce_f64(self.comm.as_ref(), &[ok, value], |a, b| a + b)?;
        local?;
        let ranks = self.comm.size() as f64;
        if all[0] < ranks {
            return Err(mismatch(
                "another rank could not compute its gradients; no rank steps",
            ));
        }
        let Model { params, grads, .. } = &mut self.model;
        let mut ps: Vec<&mut dyn TensorMut<F>> = params
            .iter_mut()
            .map(|p| &mut p.value as &mut dyn TensorMut<F>)
            .collect();
        let gs: Vec<&dyn TensorRef<F>> = grads.iter().map(|g| g as &dyn TensorRef<F>).collect();
        self.optimizer.step(&mut ps, &gs)?;
        Ok(F::from_f64(all[1] / ranks))
    }

    fn gradient(&mut self, x: &Array2<F>, target: &Array2<F>) -> Result<F, Error> {
        crate::train::batch_gradient(&mut self.model, &self.loss, x, target)
    }
}
