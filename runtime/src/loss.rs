//! Losses as lenses on the output wire: `get` is the loss of a prediction
//! against a target, `put` the loss's reverse derivative, the gradient that
//! flows back into the model. Both average over the examples of a batch.

use crate::diagram::plan::softmax_rows;
use crate::Float;
use ndarray::Array2;

/// A loss as a lens from predictions (given targets) to a number.
pub trait Loss<F: Float> {
    /// The loss of `pred` against `target`, averaged over the batch (the lens's `get`).
    fn value(&self, pred: &Array2<F>, target: &Array2<F>) -> F;
    /// Its gradient with respect to `pred` (the lens's `put` for a loss change of 1).
    fn grad(&self, pred: &Array2<F>, target: &Array2<F>) -> Array2<F>;
    /// Both at once (a loss may share work between them).
    fn value_and_grad(&self, pred: &Array2<F>, target: &Array2<F>) -> (F, Array2<F>) {
        (self.value(pred, target), self.grad(pred, target))
    }
}

/// Mean squared error, `E = 1/(2B) Σ (pred - target)^2`, whose reverse derivative is
/// `(pred - target) / B` (so that `a - ∇E` is Backprop as Functor's request for B = 1).
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanSquaredError;

impl<F: Float> Loss<F> for MeanSquaredError {
    fn value(&self, pred: &Array2<F>, target: &Array2<F>) -> F {
        let b = F::from_f64(pred.nrows().max(1) as f64);
        let half = F::from_f64(0.5);
        let d = pred - target;
        d.iter().fold(F::default(), |acc, v| acc + half * *v * *v) / b
    }

    fn grad(&self, pred: &Array2<F>, target: &Array2<F>) -> Array2<F> {
        let b = F::from_f64(pred.nrows().max(1) as f64);
        (pred - target).mapv(|v| v / b)
    }
}

/// Softmax cross-entropy on logits against one-hot targets:
/// `E = -1/B Σ log softmax(z)[y]`, gradient `(softmax(z) - onehot(y)) / B`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxCrossEntropy;

/// The cross-entropy of probabilities `p` against `target`, averaged over the batch.
fn cross_entropy<F: Float>(p: &Array2<F>, target: &Array2<F>) -> F {
    let b = F::from_f64(p.nrows().max(1) as f64);
    let tiny = F::from_f64(1e-30);
    let mut total = F::default();
    for (pr, tr) in p.rows().into_iter().zip(target.rows()) {
        for (x, t) in pr.iter().zip(tr.iter()) {
            if *t != F::default() {
                let x = if *x > tiny { *x } else { tiny };
                total = total - *t * x.ln();
            }
        }
    }
    total / b
}

/// `(p - target) / B`: the gradient of the cross-entropy of `softmax(z) = p` at `z`.
fn cross_entropy_grad<F: Float>(p: Array2<F>, target: &Array2<F>) -> Array2<F> {
    let b = F::from_f64(p.nrows().max(1) as f64);
    (p - target).mapv(|v| v / b)
}

impl<F: Float> Loss<F> for SoftmaxCrossEntropy {
    fn value(&self, pred: &Array2<F>, target: &Array2<F>) -> F {
        cross_entropy(&softmax_rows(pred), target)
    }

    fn grad(&self, pred: &Array2<F>, target: &Array2<F>) -> Array2<F> {
        cross_entropy_grad(softmax_rows(pred), target)
    }

    fn value_and_grad(&self, pred: &Array2<F>, target: &Array2<F>) -> (F, Array2<F>) {
        let p = softmax_rows(pred);
        (cross_entropy(&p, target), cross_entropy_grad(p, target))
    }
}

/// One-hot rows for class labels `0..classes`.
pub fn one_hot<F: Float>(labels: &[usize], classes: usize) -> Array2<F> {
    let mut out = Array2::from_elem((labels.len(), classes), F::default());
    for (i, &l) in labels.iter().enumerate() {
        if l < classes {
            out[(i, l)] = F::from_f64(1.0);
        }
    }
    out
}

/// Fraction of rows whose largest logit is the label.
pub fn accuracy<F: Float>(logits: &Array2<F>, labels: &[usize]) -> f64 {
    let hits = logits
        .rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, &l)| {
            let best = row
                .iter()
                .enumerate()
                .fold((0, F::from_f64(f64::NEG_INFINITY)), |(bi, bv), (i, v)| {
                    if *v > bv {
                        (i, *v)
                    } else {
                        (bi, bv)
                    }
                })
                .0;
            best == l
        })
        .count();
    hits as f64 / labels.len().max(1) as f64
}

/// The learning-rate lens on the loss wire: over the reals it scales the
/// change of the loss by `-eps` (gradient descent); with a DSL optimizer,
/// whose rule applies its own `lr`, it is the identity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LearningRate {
    /// `alpha = -eps`.
    Descent(f64),
    /// `alpha = id`.
    Identity,
}

impl LearningRate {
    /// The factor applied to the loss's reverse derivative.
    pub fn factor(self) -> f64 {
        match self {
            LearningRate::Descent(eps) => -eps,
            LearningRate::Identity => 1.0,
        }
    }
}
