//! The problems of `lensopt compare`: Rosenbrock and the ill-conditioned
//! quadratic (closed form, f64), Iris and digits (classification) and
//! diabetes (regression: ten clinical variables to disease progression),
//! supervised in f32: the data split and scaled, the diagram, seeded
//! mini-batches, test accuracy or test loss.
//! Each is a [`Subject`] that [`drive`] steps.

use super::harness::{drive, fail, Job, Run, Subject};
use crate::Failure;
use lensopt::checkpoint::{self, Contents};
use lensopt::diagram::plan::{Model, SplitMix};
use lensopt::loss::{accuracy, one_hot, Loss, MeanSquaredError, SoftmaxCrossEntropy};
use lensopt::train::Trainer;
use lensopt::{DynOptimizer, NonFinite, Optimizer, Stepper, TensorMut, TensorRef};
use ndarray::{Array1, Array2};
use std::collections::BTreeMap;
use std::path::Path;

/// Steps per run when `--steps` is not given; refuses an unknown problem.
pub(super) fn default_steps(problem: &str) -> Result<usize, Failure> {
    match problem {
        "rosenbrock" => Ok(2000),
        "quadratic" => Ok(500),
        "iris" => Ok(300),
        "digits" => Ok(400),
        "diabetes" => Ok(500),
        other => Err(Failure::usage(format!(
            "unknown problem `{other}`: rosenbrock, quadratic, iris, digits or diabetes"
        ))),
    }
}

/// Rosenbrock or the ill-conditioned quadratic, in f64.
struct ClosedForm {
    x: Array1<f64>,
    /// The quadratic's curvatures; empty for Rosenbrock.
    curvatures: Vec<f64>,
    optimizer: Stepper<f64>,
}

impl ClosedForm {
    fn new(
        opt: &DynOptimizer,
        problem: &str,
        seed: u64,
        policy: NonFinite,
        schedule: Option<&lensopt::schedules::Schedule>,
    ) -> Result<Self, Failure> {
        let mut rng = SplitMix(seed);
        let (x, curvatures): (Array1<f64>, Vec<f64>) = if problem == "rosenbrock" {
            (
                Array1::from(vec![-1.2 + 0.1 * rng.normal(), 1.0 + 0.1 * rng.normal()]),
                Vec::new(),
            )
        } else {
            let n = 50;
            let curv = (0..n)
                .map(|i| 10f64.powf(3.0 * i as f64 / (n - 1) as f64))
                .collect();
            (
                Array1::from((0..n).map(|_| rng.normal()).collect::<Vec<_>>()),
                curv,
            )
        };
        let mut optimizer = opt.init::<f64>(&[&x]).map_err(fail)?;
        optimizer.set_non_finite(policy);
        if let Some(s) = schedule {
            optimizer.set_schedule("lr", s.clone()).map_err(fail)?;
        }
        Ok(ClosedForm {
            x,
            curvatures,
            optimizer,
        })
    }

    fn value_grad(&self) -> (f64, Array1<f64>) {
        let x = &self.x;
        if self.curvatures.is_empty() {
            let (a, b) = (x[0], x[1]);
            (
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2),
                Array1::from(vec![
                    -2.0 * (1.0 - a) - 400.0 * a * (b - a * a),
                    200.0 * (b - a * a),
                ]),
            )
        } else {
            let c = &self.curvatures;
            let v = x.iter().zip(c).map(|(x, c)| 0.5 * c * x * x).sum();
            (v, Array1::from_iter(x.iter().zip(c).map(|(x, c)| c * x)))
        }
    }
}

impl Subject for ClosedForm {
    fn step(&mut self, _k: usize) -> (f64, Result<bool, lensopt::Error>) {
        let (v, g) = self.value_grad();
        let result = self.optimizer.step(&mut [&mut self.x], &[&g]);
        (v, result.map(|()| self.optimizer.last_skipped()))
    }

    fn save(
        &self,
        path: &Path,
        entries: &BTreeMap<String, String>,
        tensors: &[(&str, &[f64])],
    ) -> Result<(), lensopt::Error> {
        checkpoint::save_with(path, &[("x", &self.x)], &self.optimizer, entries, tensors)
    }

    fn load(
        &mut self,
        path: &Path,
        check: impl FnOnce(&Contents) -> Result<(), String>,
    ) -> Result<Contents, lensopt::Error> {
        checkpoint::load_with(path, &mut [("x", &mut self.x)], &mut self.optimizer, check)
    }
}

pub(super) fn closed_form(opt: &DynOptimizer, problem: &str, job: &Job) -> Result<Run, Failure> {
    let mut subject = ClosedForm::new(opt, problem, job.seed, job.policy, job.schedule.as_ref())?;
    let mut run = drive(&mut subject, job)?;
    run.losses.push(subject.value_grad().0);
    Ok(run)
}

/// Train and held-out sets of a supervised problem, with its diagram: the
/// held-out set is the test set, or, for tuning, a validation set carved
/// from the training set (the test set is then not used at all).
pub(super) struct Supervised {
    x_train: Array2<f32>,
    y_train: Array2<f32>,
    x_test: Array2<f32>,
    y_test: Array2<f32>,
    /// The test set's classes; `None` for regression.
    test_labels: Option<Vec<usize>>,
    diagram: lensopt::diagram::Diagram,
}

/// The problem's data: train and test, or with `validation`, 80% of the
/// training set to train on and the other 20% held out.
pub(super) fn supervised_data(problem: &str, validation: bool) -> Result<Supervised, Failure> {
    let fail = |e: String| Failure::usage(e);
    if problem == "diabetes" {
        let data = lensopt::data::diabetes().map_err(|e| fail(e.to_string()))?;
        let (train, test) = data.split(0.2, 2024);
        let (train, test) = if validation {
            train.split(0.2, 2025)
        } else {
            (train, test)
        };
        // Standardised with the training set's moments only.
        let (columns, target) = train.moments();
        let (train, test) = (
            train.standardised(&columns, target),
            test.standardised(&columns, target),
        );
        let column = |v: &[f64]| Array2::from_shape_fn((v.len(), 1), |(i, _)| v[i] as f32);
        return Ok(Supervised {
            x_train: train.features.mapv(|v| v as f32),
            y_train: column(&train.targets),
            x_test: test.features.mapv(|v| v as f32),
            y_test: column(&test.targets),
            test_labels: None,
            diagram: lensopt::diagram!(dense(hidden, 10, 32) >> relu(32) >> dense(out, 32, 1)),
        });
    }
    let (data, diagram, scale) = if problem == "iris" {
        (
            lensopt::data::iris().map_err(|e| fail(e.to_string()))?,
            lensopt::diagram!(dense(logits, 4, 3)),
            None,
        )
    } else {
        (
            lensopt::data::digits().map_err(|e| fail(e.to_string()))?,
            lensopt::diagram!(
                dense(hidden1, 64, 128)
                    >> relu(128)
                    >> dense(hidden2, 128, 64)
                    >> relu(64)
                    >> dense(out, 64, 10)
            ),
            Some(16.0),
        )
    };
    let (train, test) = data.split(0.2, 2024);
    let (train, test) = if validation {
        train.split(0.2, 2025)
    } else {
        (train, test)
    };
    let (train, test) = match scale {
        Some(s) => {
            let (mut a, mut b) = (train, test);
            a.features.mapv_inplace(|v| v / s);
            b.features.mapv_inplace(|v| v / s);
            (a, b)
        }
        None => {
            let (min, max) = train.ranges();
            (train.scaled(&min, &max), test.scaled(&min, &max))
        }
    };
    Ok(Supervised {
        x_train: train.features.mapv(|v| v as f32),
        y_train: one_hot(&train.labels, data.classes),
        x_test: test.features.mapv(|v| v as f32),
        y_test: one_hot(&test.labels, data.classes),
        test_labels: Some(test.labels),
        diagram,
    })
}

/// Mini-batches: epoch `e` is a permutation seeded by the run's seed and
/// `e`, so any step's batch is known without replaying the run.
struct Batches {
    seed: u64,
    rows: usize,
    batch: usize,
    /// The current epoch and its order.
    epoch: Option<(usize, Vec<usize>)>,
}

impl Batches {
    /// The rows of mini-batch `step`.
    fn rows(&mut self, step: usize) -> &[usize] {
        let per_epoch = (self.rows / self.batch).max(1);
        let epoch = step / per_epoch;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mix = self.seed ^ 0x5EED ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            self.epoch = Some((epoch, SplitMix(mix).permutation(self.rows)));
        }
        let at = (step % per_epoch) * self.batch;
        let order = self.epoch.as_ref().map_or(&[][..], |(_, o)| o.as_slice());
        &order[at..at + self.batch]
    }
}

/// A supervised problem's trainer and its data.
struct Learning<'a, L: Loss<f32>> {
    trainer: Trainer<f32, L>,
    data: &'a Supervised,
    batches: Batches,
}

impl<L: Loss<f32>> Subject for Learning<'_, L> {
    fn step(&mut self, k: usize) -> (f64, Result<bool, lensopt::Error>) {
        let (x, y) = (&self.data.x_train, &self.data.y_train);
        let idx = self.batches.rows(k);
        let batch = idx.len();
        let xb = Array2::from_shape_fn((batch, x.ncols()), |(i, j)| x[(idx[i], j)]);
        let yb = Array2::from_shape_fn((batch, y.ncols()), |(i, j)| y[(idx[i], j)]);
        match self.trainer.step(&xb, &yb) {
            Ok(loss) => (f64::from(loss), Ok(self.trainer.optimizer.last_skipped())),
            Err(e) => (f64::NAN, Err(e)),
        }
    }

    fn save(
        &self,
        path: &Path,
        entries: &BTreeMap<String, String>,
        tensors: &[(&str, &[f64])],
    ) -> Result<(), lensopt::Error> {
        let params: Vec<(&str, &dyn TensorRef<f32>)> = self
            .trainer
            .model
            .params
            .iter()
            .map(|p| (p.name.as_str(), &p.value as &dyn TensorRef<f32>))
            .collect();
        checkpoint::save_with(path, &params, &self.trainer.optimizer, entries, tensors)
    }

    fn load(
        &mut self,
        path: &Path,
        check: impl FnOnce(&Contents) -> Result<(), String>,
    ) -> Result<Contents, lensopt::Error> {
        let trainer = &mut self.trainer;
        let mut named: Vec<(&str, &mut dyn TensorMut<f32>)> = trainer
            .model
            .params
            .iter_mut()
            .map(|p| (p.name.as_str(), &mut p.value as &mut dyn TensorMut<f32>))
            .collect();
        checkpoint::load_with(path, &mut named, &mut trainer.optimizer, check)
    }
}

pub(super) fn supervised(opt: &DynOptimizer, data: &Supervised, job: &Job) -> Result<Run, Failure> {
    match data.test_labels {
        Some(_) => train(opt, data, job, SoftmaxCrossEntropy),
        None => train(opt, data, job, MeanSquaredError),
    }
}

/// Trains the problem's model under `loss`; the run's test accuracy (for
/// classes) and loss on the held-out set.
fn train<L: Loss<f32>>(
    opt: &DynOptimizer,
    data: &Supervised,
    job: &Job,
    loss: L,
) -> Result<Run, Failure> {
    let model =
        Model::<f32>::new(&data.diagram, job.seed).map_err(|e| Failure::usage(e.to_string()))?;
    let mut trainer = Trainer::new(model, loss, opt).map_err(fail)?;
    trainer.optimizer.set_non_finite(job.policy);
    if let Some(s) = &job.schedule {
        trainer
            .optimizer
            .set_schedule("lr", s.clone())
            .map_err(fail)?;
    }
    let rows = data.x_train.nrows();
    let mut subject = Learning {
        trainer,
        data,
        batches: Batches {
            seed: job.seed,
            rows,
            batch: 128.min(rows),
            epoch: None,
        },
    };
    let mut run = drive(&mut subject, job)?;
    let predicted = subject
        .trainer
        .model
        .predict(&data.x_test)
        .map_err(|e| Failure::usage(e.to_string()))?;
    run.accuracy = data
        .test_labels
        .as_ref()
        .map(|labels| accuracy(&predicted, labels));
    run.held_out_loss = Some(f64::from(
        subject.trainer.loss.value(&predicted, &data.y_test),
    ));
    if data.test_labels.is_none() {
        // Regression: the coefficient of determination on the test set.
        let y: Vec<f64> = data.y_test.iter().map(|v| f64::from(*v)).collect();
        let mean = y.iter().sum::<f64>() / y.len().max(1) as f64;
        let total: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
        let residual: f64 = predicted
            .iter()
            .zip(&y)
            .map(|(p, v)| (f64::from(*p) - v).powi(2))
            .sum();
        run.r2 = Some(1.0 - residual / total.max(f64::MIN_POSITIVE));
    }
    Ok(run)
}
