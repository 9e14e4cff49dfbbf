//! `lensopt compare`: several optimizers on one problem, over several seeds,
//! with progress bars, a table, loss curves (PNG and SVG) and checkpoints.
//!
//! Problems: `rosenbrock` (2-D, start perturbed per seed), `quadratic` (50-D,
//! curvatures log-spaced from 1 to 1,000), `iris` (logistic regression, test
//! accuracy on a seeded 80/20 split) and `digits` (the 64-128-64-10 MLP).
//! An optimizer is a catalog name or a rule file.
//!
//! With `--out DIR`, every run (optimizer and seed) is checkpointed to
//! `DIR/checkpoints/` every `--checkpoint-every` steps and at its end;
//! `--resume` continues each run from its checkpoint, bit for bit as if it
//! had never stopped (mini-batches are a function of the seed and the step),
//! and can extend finished runs to a larger `--steps`. A checkpoint's loss
//! history is a tensor of the file (`user.losses`), not a header entry, so a
//! save costs the same header however long the run. A checkpoint is refused
//! when it was made by another run: another problem, seed or rule,
//! hyperparameters other than this command line's (named), or a recorded
//! step that its optimizer's step counter contradicts. Non-finite gradients
//! follow `--non-finite`: `stop` ends the run there and reports it, `skip`
//! skips the step and counts it.

use crate::plot;
use crate::Failure;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lensopt::checkpoint::{self, Contents};
use lensopt::diagram::plan::{Model, SplitMix};
use lensopt::loss::{accuracy, one_hot, SoftmaxCrossEntropy};
use lensopt::train::Trainer;
use lensopt::{DynOptimizer, HyperValue, NonFinite, Optimizer, Stepper, TensorMut, TensorRef};
use ndarray::{Array1, Array2};
use serde_json::json;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags of `lensopt compare`.
#[derive(clap::Args)]
pub struct Args {
    /// Optimizers: catalog names or rule files.
    #[arg(required = true)]
    optimizers: Vec<String>,
    /// rosenbrock, quadratic, iris or digits.
    #[arg(long)]
    problem: String,
    /// Steps per run (default depends on the problem).
    #[arg(long)]
    steps: Option<usize>,
    /// Seeds per optimizer.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Folder for `curves.png`, `curves.svg`, `results.json` and `checkpoints/`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a hyperparameter of every optimizer, `name=value` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Print the results as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// With --out: checkpoint each run every N steps (0: only at its end).
    #[arg(long, default_value_t = 100, value_name = "N")]
    checkpoint_every: usize,
    /// With --out: continue each run from its checkpoint in DIR/checkpoints.
    #[arg(long)]
    resume: bool,
    /// Non-finite gradients: `stop` the run there, or `skip` the step; both are reported.
    #[arg(long, default_value = "stop", value_name = "stop|skip")]
    non_finite: String,
}

/// One run: the loss after every step, the final test accuracy (if any), timings.
#[derive(Default)]
struct Run {
    losses: Vec<f64>,
    accuracy: Option<f64>,
    seconds: f64,
    jit_ms: f64,
    /// Steps whose gradients were not finite and were skipped.
    skipped: u64,
    /// The step at which a non-finite gradient stopped the run.
    stopped_at: Option<usize>,
    /// Whether the run continued from a checkpoint.
    resumed: bool,
}

/// Where and how often one run is checkpointed, and what it must match.
struct Saving {
    path: Option<PathBuf>,
    every: usize,
    resume: bool,
    /// The run's configuration; a checkpoint made with another is refused.
    config: String,
    /// The hyperparameters the command line configures; a checkpoint whose
    /// optimizer holds others is refused.
    hypers: Vec<(String, HyperValue)>,
}

/// Whether two hyperparameter values are the same, bit for bit.
fn same(a: HyperValue, b: HyperValue) -> bool {
    match (a, b) {
        (HyperValue::Num(x), HyperValue::Num(y)) => x.to_bits() == y.to_bits(),
        (HyperValue::Bool(x), HyperValue::Bool(y)) => x == y,
        _ => false,
    }
}

/// A checkpoint's loss history: its `losses` tensor, or (checkpoints of
/// format v1) its comma-separated `losses` entry.
fn losses(c: &Contents) -> Result<Cow<'_, [f64]>, String> {
    if let Some(l) = c.tensors.get("losses") {
        return Ok(Cow::Borrowed(l));
    }
    match c.entries.get("losses").map(String::as_str) {
        Some("") => Ok(Cow::Owned(Vec::new())),
        Some(text) => text
            .split(',')
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| "malformed `losses` entry".to_string())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Cow::Owned),
        None => Err("the checkpoint has no loss history (`losses`)".to_string()),
    }
}

impl Saving {
    fn due(&self, step: usize) -> bool {
        self.path.is_some() && self.every > 0 && step.is_multiple_of(self.every)
    }

    /// The caller's entries of a checkpoint: the run so far (its losses go
    /// as a tensor, beside them).
    fn entries(&self, run: &Run, step: usize) -> BTreeMap<String, String> {
        let mut user = BTreeMap::from([
            ("config".to_string(), self.config.clone()),
            ("step".to_string(), step.to_string()),
            ("seconds".to_string(), run.seconds.to_string()),
            ("skipped".to_string(), run.skipped.to_string()),
        ]);
        if let Some(s) = run.stopped_at {
            user.insert("stopped_at".to_string(), s.to_string());
        }
        user
    }

    /// Checks a checkpoint's contents against this run, before the load
    /// writes anything; returns the step it reached.
    fn check(&self, c: &Contents, steps: usize) -> Result<usize, String> {
        // Stored hyperparameters must be this command line's: a checkpoint's
        // would otherwise silently win.
        for group in &c.hypers {
            for (name, stored) in group {
                let here = self.hypers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
                if !here.is_some_and(|h| same(h, *stored)) {
                    let here = here.map_or("unset".to_string(), |h| h.to_string());
                    return Err(format!(
                        "the checkpoint was made by another run: its hyperparameter `{name}` is {stored}, this run's {here}"
                    ));
                }
            }
        }
        let bad = |what: &str| format!("malformed `{what}` entry");
        let config = c.entries.get("config").ok_or_else(|| bad("config"))?;
        if *config != self.config {
            return Err(format!(
                "the checkpoint was made by another run ({config}); this run is {}",
                self.config
            ));
        }
        let count = |key: &str| -> Result<u64, String> {
            c.entries
                .get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad(key))
        };
        let (step, skipped) = (count("step")?, count("skipped")?);
        let stopped = match c.entries.get("stopped_at") {
            None => false,
            Some(_) if count("stopped_at")? == step => true,
            Some(at) => {
                return Err(format!(
                    "the checkpoint records a run stopped at step {at} but saved at step {step}"
                ))
            }
        };
        if skipped != c.skipped {
            return Err(format!(
                "the checkpoint records {skipped} skipped steps, its optimizer {}",
                c.skipped
            ));
        }
        // Each step the run counts was taken, skipped, or (the last) refused.
        let reached = c.t + c.skipped + u64::from(stopped);
        if reached != step {
            return Err(format!(
                "the checkpoint records step {step}, but its optimizer took {} steps and skipped {}{}",
                c.t,
                c.skipped,
                if stopped { ", then stopped" } else { "" }
            ));
        }
        let n = losses(c)?.len() as u64;
        if n != step {
            return Err(format!("the checkpoint holds {n} losses for {step} steps"));
        }
        c.entries
            .get("seconds")
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| bad("seconds"))?;
        let step = usize::try_from(step).map_err(|_| bad("step"))?;
        if step > steps {
            return Err(format!(
                "the checkpoint is at step {step}, beyond --steps {steps}"
            ));
        }
        Ok(step)
    }

    /// Restores the run from a checkpoint that [`Saving::check`] accepted.
    fn restore(&self, c: &Contents, run: &mut Run) -> Result<(), Failure> {
        let bad = |what: String| Failure::usage(what);
        run.losses = losses(c).map_err(bad)?.into_owned();
        let number = |key: &str| c.entries.get(key).and_then(|v| v.parse::<f64>().ok());
        run.seconds = number("seconds").unwrap_or(0.0);
        run.skipped = c.skipped;
        run.stopped_at = c.entries.get("stopped_at").and_then(|v| v.parse().ok());
        run.resumed = true;
        Ok(())
    }
}

fn optimizer(spec: &str, set: &[String]) -> Result<(String, DynOptimizer), Failure> {
    let mut opt = match lensopt::catalog::get(&spec.to_lowercase()) {
        Some(o) => o,
        None => {
            let text = std::fs::read_to_string(spec).map_err(|_| {
                Failure::usage(format!(
                    "`{spec}` is neither a catalog optimizer ({}) nor a readable rule file",
                    lensopt::catalog::names().join(", ")
                ))
            })?;
            DynOptimizer::parse(&text).map_err(|e| Failure::usage(format!("{spec}:{e}")))?
        }
    };
    for item in set {
        let (name, value) = crate::parse_set(item)?;
        // A hyperparameter an optimizer does not have is skipped for that optimizer.
        if opt.rule().hyper_index(name).is_some() {
            opt.set(name, value)
                .map_err(|e| Failure::usage(e.to_string()))?;
        }
    }
    Ok((opt.rule().name.clone(), opt))
}

/// Refuses a `--set` name that is a hyperparameter of none of `optimizers`
/// (a typo would otherwise change nothing), naming those they have.
fn check_set(set: &[String], optimizers: &[(String, DynOptimizer)]) -> Result<(), Failure> {
    for item in set {
        let (name, _) = crate::parse_set(item)?;
        if optimizers
            .iter()
            .any(|(_, o)| o.rule().hyper_index(name).is_some())
        {
            continue;
        }
        let mut known: Vec<String> = optimizers
            .iter()
            .flat_map(|(_, o)| {
                o.rule()
                    .hypers
                    .iter()
                    .map(|h| h.name.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        known.sort();
        known.dedup();
        let known = if known.is_empty() {
            "they have none".to_string()
        } else {
            format!("they have: {}", known.join(", "))
        };
        return Err(Failure::usage(format!(
            "--set {name}: no optimizer compared has a hyperparameter `{name}` ({known})"
        )));
    }
    Ok(())
}

/// Compile time of the optimizer's kernels (uncached), for the table.
fn jit_ms(opt: &DynOptimizer) -> f64 {
    let rule = opt.rule();
    let key = lensopt::jit::Key::for_step(
        &[opt.hypers()],
        &vec![false; rule.inputs.len()],
        lensopt::Mode::Fast,
    );
    let started = Instant::now();
    let _ = lensopt::jit::compile::<f64>(&rule, &key);
    started.elapsed().as_secs_f64() * 1e3
}

/// One run to make: an optimizer's seed, with its steps, policy,
/// checkpoint and progress bar.
struct Job<'a> {
    steps: usize,
    seed: u64,
    policy: NonFinite,
    saving: Saving,
    bar: &'a ProgressBar,
}

/// What a run trains: a problem's parameters with their optimizer.
trait Subject {
    /// Step `k`: the loss before it, and whether the optimizer skipped it
    /// (or its refusal).
    fn step(&mut self, k: usize) -> (f64, Result<bool, lensopt::Error>);
    /// Writes parameters and optimizer state with the run's entries and tensors.
    fn save(
        &self,
        path: &Path,
        entries: &BTreeMap<String, String>,
        tensors: &[(&str, &[f64])],
    ) -> Result<(), lensopt::Error>;
    /// Reads them back if `check` accepts the checkpoint's contents; returns them.
    fn load(
        &mut self,
        path: &Path,
        check: impl FnOnce(&Contents) -> Result<(), String>,
    ) -> Result<Contents, lensopt::Error>;
}

fn fail(e: lensopt::Error) -> Failure {
    Failure::usage(e.to_string())
}

/// The step loop of every problem: resume, steps with the non-finite
/// policy's outcome recorded, checkpoints when due and at the end.
fn drive<S: Subject>(subject: &mut S, job: &Job) -> Result<Run, Failure> {
    let (steps, saving) = (job.steps, &job.saving);
    let mut run = Run::default();
    let mut step = 0;
    if let Some(path) = saving.path.as_ref().filter(|p| saving.resume && p.exists()) {
        // Checked before the load writes anything.
        let contents = subject
            .load(path, |c| {
                step = saving.check(c, steps)?;
                Ok(())
            })
            .map_err(fail)?;
        saving.restore(&contents, &mut run)?;
        job.bar.inc(step as u64);
    }
    let save = |subject: &S, run: &Run, step: usize| match &saving.path {
        Some(path) => subject
            .save(
                path,
                &saving.entries(run, step),
                &[("losses", run.losses.as_slice())],
            )
            .map_err(fail),
        None => Ok(()),
    };
    while step < steps && run.stopped_at.is_none() {
        let started = Instant::now();
        let (loss, result) = subject.step(step);
        run.seconds += started.elapsed().as_secs_f64();
        run.losses.push(loss);
        step += 1;
        match result {
            Ok(skipped) => run.skipped += u64::from(skipped),
            Err(lensopt::Error::NonFinite { .. }) => run.stopped_at = Some(step),
            Err(e) => return Err(fail(e)),
        }
        if run.stopped_at.is_some() || saving.due(step) {
            save(subject, &run, step)?;
        }
        job.bar.inc(1);
    }
    save(subject, &run, step)?;
    Ok(run)
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

fn closed_form(opt: &DynOptimizer, problem: &str, job: &Job) -> Result<Run, Failure> {
    let mut subject = ClosedForm::new(opt, problem, job.seed, job.policy)?;
    let mut run = drive(&mut subject, job)?;
    run.losses.push(subject.value_grad().0);
    Ok(run)
}

/// Train and test sets of a supervised problem, with its diagram.
struct Supervised {
    x_train: Array2<f32>,
    y_train: Array2<f32>,
    x_test: Array2<f32>,
    test_labels: Vec<usize>,
    diagram: lensopt::diagram::Diagram,
}

fn supervised_data(problem: &str) -> Result<Supervised, Failure> {
    let fail = |e: String| Failure::usage(e);
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
        test_labels: test.labels,
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
struct Learning<'a> {
    trainer: Trainer<f32, SoftmaxCrossEntropy>,
    data: &'a Supervised,
    batches: Batches,
}

impl Subject for Learning<'_> {
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

fn supervised(opt: &DynOptimizer, data: &Supervised, job: &Job) -> Result<Run, Failure> {
    let model =
        Model::<f32>::new(&data.diagram, job.seed).map_err(|e| Failure::usage(e.to_string()))?;
    let mut trainer = Trainer::new(model, SoftmaxCrossEntropy, opt).map_err(fail)?;
    trainer.optimizer.set_non_finite(job.policy);
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
    run.accuracy = Some(accuracy(&predicted, &data.test_labels));
    Ok(run)
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// A file-name-safe form of an optimizer's label.
fn file_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs `lensopt compare`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let problem = args.problem.as_str();
    let default_steps = match problem {
        "rosenbrock" => 2000,
        "quadratic" => 500,
        "iris" => 300,
        "digits" => 400,
        other => {
            return Err(Failure::usage(format!(
                "unknown problem `{other}`: rosenbrock, quadratic, iris or digits"
            )))
        }
    };
    let policy = match NonFinite::parse(&args.non_finite) {
        Some(p) if p != NonFinite::Unchecked => p,
        _ => {
            return Err(Failure::usage(format!(
                "--non-finite: `{}` is not stop or skip",
                args.non_finite
            )))
        }
    };
    if args.resume && args.out.is_none() {
        return Err(Failure::usage(
            "--resume needs --out DIR (the checkpoints' folder)",
        ));
    }
    let steps = args.steps.unwrap_or(default_steps);
    let optimizers: Vec<(String, DynOptimizer)> = args
        .optimizers
        .iter()
        .map(|o| optimizer(o, &args.set))
        .collect::<Result<_, _>>()?;
    check_set(&args.set, &optimizers)?;
    let checkpoints = args.out.as_ref().map(|d| d.join("checkpoints"));
    if let Some(dir) = &checkpoints {
        let mut labels: Vec<String> = optimizers.iter().map(|(l, _)| file_label(l)).collect();
        labels.sort();
        if let Some(w) = labels.windows(2).find(|w| w[0] == w[1]) {
            return Err(Failure::usage(format!(
                "two optimizers are called `{}`: their checkpoints would collide",
                w[0]
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let data = match problem {
        "iris" | "digits" => Some(supervised_data(problem)?),
        _ => None,
    };
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>22} {bar:30} {pos}/{len} steps {msg}")
        .map_err(|e| Failure::usage(e.to_string()))?;
    let mut results: Vec<(String, Vec<Run>)> = Vec::new();
    for (label, opt) in &optimizers {
        let bar = bars.add(ProgressBar::new(steps as u64 * args.seeds));
        bar.set_style(style.clone());
        bar.set_prefix(label.clone());
        let jit = jit_ms(opt);
        let configured: Vec<(String, HyperValue)> = opt
            .rule()
            .hypers
            .iter()
            .zip(opt.hypers())
            .map(|(h, v)| (h.name.clone(), v))
            .collect();
        let hypers: Vec<String> = configured
            .iter()
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        let mut runs = Vec::new();
        for seed in 0..args.seeds {
            let job = Job {
                steps,
                seed,
                policy,
                saving: Saving {
                    path: checkpoints
                        .as_ref()
                        .map(|d| d.join(format!("{}-seed{seed}.safetensors", file_label(label)))),
                    every: args.checkpoint_every,
                    resume: args.resume,
                    config: format!("problem={problem} seed={seed} {}", hypers.join(" ")),
                    hypers: configured.clone(),
                },
                bar: &bar,
            };
            let mut run = match &data {
                None => closed_form(opt, problem, &job)?,
                Some(d) => supervised(opt, d, &job)?,
            };
            run.jit_ms = jit;
            runs.push(run);
        }
        bar.finish_with_message("done");
        results.push((label.clone(), runs));
    }
    let mut rows = Vec::new();
    for (label, runs) in &results {
        let finals: Vec<f64> = runs
            .iter()
            .map(|r| *r.losses.last().unwrap_or(&f64::NAN))
            .collect();
        let bests: Vec<f64> = runs
            .iter()
            .map(|r| {
                r.losses
                    .iter()
                    .copied()
                    .filter(|v| v.is_finite())
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let accs: Vec<f64> = runs.iter().filter_map(|r| r.accuracy).collect();
        let (fm, fs) = mean_std(&finals);
        let (bm, bs) = mean_std(&bests);
        let (am, asd) = mean_std(&accs);
        let steps_run: usize = runs.iter().map(|r| r.losses.len()).sum();
        let us = runs.iter().map(|r| r.seconds).sum::<f64>() * 1e6 / steps_run.max(1) as f64;
        let stopped: Vec<Option<usize>> = runs.iter().map(|r| r.stopped_at).collect();
        rows.push(json!({
            "optimizer": label, "problem": problem, "steps": steps, "seeds": args.seeds,
            "final_loss": fm, "final_loss_std": fs, "best_loss": bm, "best_loss_std": bs,
            "test_accuracy": if accs.is_empty() { serde_json::Value::Null } else { json!(am) },
            "test_accuracy_std": if accs.is_empty() { serde_json::Value::Null } else { json!(asd) },
            "us_per_step": us, "jit_ms": runs.first().map_or(0.0, |r| r.jit_ms),
            "non_finite": args.non_finite,
            "skipped_steps": runs.iter().map(|r| r.skipped).sum::<u64>(),
            "stopped_at": stopped,
            "resumed_runs": runs.iter().filter(|r| r.resumed).count(),
        }));
    }
    // The files first (atomically), then stdout: a reader that stops
    // reading early (`| head`) does not cost the results.
    if let Some(dir) = &args.out {
        let curves: Vec<(String, Vec<Vec<f64>>)> = results
            .iter()
            .map(|(l, runs)| (l.clone(), runs.iter().map(|r| r.losses.clone()).collect()))
            .collect();
        let title =
            format!("{problem}: loss per step (log scale), mean over seeds, band min to max");
        plot::loss_curves(&dir.join("curves.png"), &title, &curves)?;
        plot::loss_curves(&dir.join("curves.svg"), &title, &curves)?;
        let json_text = serde_json::to_string_pretty(&json!({"results": rows, "curves": curves.iter().map(|(l, c)| json!({"optimizer": l, "losses": c})).collect::<Vec<_>>()}))
            .map_err(|e| Failure::usage(e.to_string()))?;
        crate::atomic::write_bytes(&dir.join("results.json"), json_text.as_bytes())?;
    }
    if args.json {
        for row in &rows {
            outln!("{row}");
        }
    } else {
        print_table(problem, steps, args.seeds, &rows);
    }
    if let Some(dir) = &args.out {
        if !args.json {
            outln!(
                "\ncurves: {0}/curves.png, {0}/curves.svg; checkpoints: {0}/checkpoints",
                dir.display()
            );
        }
    }
    Ok(())
}

fn print_table(problem: &str, steps: usize, seeds: u64, rows: &[serde_json::Value]) {
    outln!(
        "\n{problem}, {steps} steps, {seeds} seeds (mean ± std)\n{:<20} {:>22} {:>22} {:>16} {:>9} {:>8}  non-finite",
        "optimizer", "final loss", "best loss", "test accuracy", "us/step", "JIT ms"
    );
    for row in rows {
        let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
        let acc = if row["test_accuracy"].is_null() {
            "-".to_string()
        } else {
            format!("{:.4} ± {:.4}", f("test_accuracy"), f("test_accuracy_std"))
        };
        let stopped: Vec<String> = row["stopped_at"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_u64())
                    .map(|s| s.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let skipped = row["skipped_steps"].as_u64().unwrap_or(0);
        let non_finite = match (stopped.is_empty(), skipped) {
            (true, 0) => "-".to_string(),
            (true, n) => format!("{n} steps skipped"),
            (false, _) => format!("stopped at step {}", stopped.join(", ")),
        };
        outln!(
            "{:<20} {:>22} {:>22} {:>16} {:>9.1} {:>8.2}  {non_finite}",
            row["optimizer"].as_str().unwrap_or(""),
            format!("{:.3e} ± {:.1e}", f("final_loss"), f("final_loss_std")),
            format!("{:.3e} ± {:.1e}", f("best_loss"), f("best_loss_std")),
            acc,
            f("us_per_step"),
            f("jit_ms")
        );
    }
}
