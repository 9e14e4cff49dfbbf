//! The harness of `lensopt compare`: every optimizer over the seeds with
//! its progress bar ([`run_all`]), and the step loop every problem shares
//! ([`drive`]): resume from a checkpoint, step with the non-finite policy's
//! outcome recorded, checkpoint when due and at the end, time the steps.

use super::checkpoints::Saving;
use super::optimizers::{file_label, jit_ms};
use super::problems::{self, Supervised};
use super::Args;
use crate::Failure;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lensopt::checkpoint::Contents;
use lensopt::{DynOptimizer, HyperValue, NonFinite, Optimizer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// One run: the loss after every step, the final test accuracy (if any), timings.
#[derive(Default)]
pub(super) struct Run {
    pub(super) losses: Vec<f64>,
    pub(super) accuracy: Option<f64>,
    /// The loss on the held-out set after the last step (supervised problems).
    pub(super) held_out_loss: Option<f64>,
    /// Regression: R² on the test set after the last step.
    pub(super) r2: Option<f64>,
    pub(super) seconds: f64,
    pub(super) jit_ms: f64,
    /// Steps whose gradients were not finite and were skipped.
    pub(super) skipped: u64,
    /// The step at which a non-finite gradient stopped the run.
    pub(super) stopped_at: Option<usize>,
    /// Whether the run continued from a checkpoint.
    pub(super) resumed: bool,
}

/// One run to make: an optimizer's seed, with its steps, policy,
/// checkpoint and progress bar.
pub(super) struct Job<'a> {
    pub(super) steps: usize,
    pub(super) seed: u64,
    pub(super) policy: NonFinite,
    /// The learning-rate schedule, if any (`--schedule`).
    pub(super) schedule: Option<lensopt::schedules::Schedule>,
    pub(super) saving: Saving,
    pub(super) bar: &'a ProgressBar,
}

/// What a run trains: a problem's parameters with their optimizer.
pub(super) trait Subject {
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

pub(super) fn fail(e: lensopt::Error) -> Failure {
    Failure::usage(e.to_string())
}

/// The step loop of every problem: resume, steps with the non-finite
/// policy's outcome recorded, checkpoints when due and at the end.
pub(super) fn drive<S: Subject>(subject: &mut S, job: &Job) -> Result<Run, Failure> {
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

/// Runs every optimizer over `args.seeds` seeds, `steps` steps each, one
/// progress bar per optimizer; returns each optimizer's label and runs.
pub(super) fn run_all(
    args: &Args,
    steps: usize,
    policy: NonFinite,
    schedule: Option<&lensopt::schedules::Schedule>,
    optimizers: &[(String, DynOptimizer)],
    checkpoints: Option<&Path>,
    data: Option<&Supervised>,
) -> Result<Vec<(String, Vec<Run>)>, Failure> {
    let problem = args.problem.as_str();
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>22} {bar:30} {pos}/{len} steps {msg}")
        .map_err(|e| Failure::usage(e.to_string()))?;
    let mut results: Vec<(String, Vec<Run>)> = Vec::new();
    for (label, opt) in optimizers {
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
                schedule: schedule.cloned(),
                saving: Saving {
                    path: checkpoints
                        .map(|d| d.join(format!("{}-seed{seed}.safetensors", file_label(label)))),
                    every: args.checkpoint_every,
                    resume: args.resume,
                    config: format!(
                        "problem={problem} seed={seed} {}{}",
                        hypers.join(" "),
                        schedule.map_or_else(String::new, |s| format!(" schedule={}", s.name()))
                    ),
                    hypers: configured.clone(),
                },
                bar: &bar,
            };
            let mut run = match data {
                None => problems::closed_form(opt, problem, &job)?,
                Some(d) => problems::supervised(opt, d, &job)?,
            };
            run.jit_ms = jit;
            runs.push(run);
        }
        bar.finish_with_message("done");
        results.push((label.clone(), runs));
    }
    Ok(results)
}
