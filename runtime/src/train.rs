//! Supervised learning: a model, a loss lens and an optimizer lens, composed
//! into one training step (Cruttwell et al., "Categorical Foundations of
//! Gradient-Based Learning"):
//!
//! ```text
//! p_view = get(s, p)                       the optimizer's view of the parameters
//! b      = f(p_view, a)                    forward through the diagram
//! b'     = R[loss](b, b_true)              the loss lens (learning-rate lens: identity,
//!                                          the rule's lr plays -eps)
//! (p', _) = R[f](p_view, a, b')            the diagram's reverse derivative
//! (s, p) <- put(s, p, p')                  the optimizer's update (a DSL rule, JIT-compiled)
//! ```
//!
//! A gradient with NaN or infinity is handled by the optimizer's
//! [`crate::NonFinite`] policy (refuse by default: [`Trainer::step`] returns
//! the error and nothing changes). [`Trainer::save`] and [`Trainer::load`]
//! write and read checkpoints ([`crate::checkpoint`]).

use crate::diagram::plan::Model;
use crate::error::Error;
use crate::loss::Loss;
use crate::optimizer::Optimizer;
use crate::stepper::Stepper;
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use ndarray::{Array2, ArrayD};
use std::collections::BTreeMap;
use std::path::Path;

/// A model trained by an optimizer against a loss.
pub struct Trainer<F: Float, L> {
    /// The model (diagram and parameters).
    pub model: Model<F>,
    /// The loss lens.
    pub loss: L,
    /// The optimizer's state over the model's parameter blocks.
    pub optimizer: Stepper<F>,
}

impl<F: Float, L: Loss<F>> Trainer<F, L> {
    /// Binds `optimizer` to the parameters of `model`.
    pub fn new(model: Model<F>, loss: L, optimizer: &impl Optimizer) -> Result<Self, Error> {
        let refs: Vec<&dyn TensorRef<F>> = model
            .params
            .iter()
            .map(|p| &p.value as &dyn TensorRef<F>)
            .collect();
        let stepper = optimizer.init(&refs)?;
        Ok(Trainer {
            model,
            loss,
            optimizer: stepper,
        })
    }

    /// One supervised step on a batch; returns the batch's loss.
    pub fn step(&mut self, x: &Array2<F>, target: &Array2<F>) -> Result<F, Error> {
        // With a view (Nesterov's look-ahead), the gradient is taken at the
        // view: swap it in, and the parameters back whatever happens.
        let saved: Option<Vec<ArrayD<F>>> = if self.optimizer.rule().view.is_some() {
            let refs: Vec<&dyn TensorRef<F>> = self
                .model
                .params
                .iter()
                .map(|p| &p.value as &dyn TensorRef<F>)
                .collect();
            let views = self.optimizer.view(&refs)?;
            Some(
                self.model
                    .params
                    .iter_mut()
                    .zip(views)
                    .map(|(p, v)| std::mem::replace(&mut p.value, v))
                    .collect(),
            )
        } else {
            None
        };
        let gradient = self.gradient(x, target);
        if let Some(saved) = saved {
            for (p, s) in self.model.params.iter_mut().zip(saved) {
                p.value = s;
            }
        }
        let value = gradient?;
        let Model { params, grads, .. } = &mut self.model;
        let mut ps: Vec<&mut dyn TensorMut<F>> = params
            .iter_mut()
            .map(|p| &mut p.value as &mut dyn TensorMut<F>)
            .collect();
        let gs: Vec<&dyn TensorRef<F>> = grads.iter().map(|g| g as &dyn TensorRef<F>).collect();
        self.optimizer.step(&mut ps, &gs)?;
        Ok(value)
    }

    /// The batch's loss, with the parameters' gradients left in the model.
    fn gradient(&mut self, x: &Array2<F>, target: &Array2<F>) -> Result<F, Error> {
        batch_gradient(&mut self.model, &self.loss, x, target)
    }

    /// Saves the model's parameters (by name) and the optimizer's state to
    /// `path` as safetensors; `user` entries come back from [`Trainer::load`].
    pub fn save(&self, path: &Path, user: &BTreeMap<String, String>) -> Result<(), Error> {
        let params: Vec<(&str, &dyn TensorRef<F>)> = self
            .model
            .params
            .iter()
            .map(|p| (p.name.as_str(), &p.value as &dyn TensorRef<F>))
            .collect();
        crate::checkpoint::save(path, &params, &self.optimizer, user)
    }

    /// Loads a checkpoint written by [`Trainer::save`] for the same diagram
    /// and rule; refuses any other (and then changes nothing).
    pub fn load(&mut self, path: &Path) -> Result<BTreeMap<String, String>, Error> {
        let Model { params, .. } = &mut self.model;
        let mut named: Vec<(&str, &mut dyn TensorMut<F>)> = params
            .iter_mut()
            .map(|p| (p.name.as_str(), &mut p.value as &mut dyn TensorMut<F>))
            .collect();
        crate::checkpoint::load(path, &mut named, &mut self.optimizer)
    }
}

/// `model`'s loss on a batch, with the parameters' gradients left in the model.
pub(crate) fn batch_gradient<F: Float, L: Loss<F>>(
    model: &mut Model<F>,
    loss: &L,
    x: &Array2<F>,
    target: &Array2<F>,
) -> Result<F, Error> {
    let pred = model.predict(x).map_err(Error::Diagram)?;
    if pred.dim() != target.dim() {
        return Err(Error::Mismatch(format!(
            "the model predicts {:?} but the targets are {:?}",
            pred.dim(),
            target.dim()
        )));
    }
    let (value, grad) = loss.value_and_grad(&pred, target);
    model.backward(&[grad]).map_err(Error::Diagram)?;
    Ok(value)
}
