//! `lensopt compare`: several optimizers on one problem, over several seeds,
//! with progress bars, a table, loss curves (PNG and SVG) and checkpoints.
//!
//! Problems: `rosenbrock` (2-D, start perturbed per seed), `quadratic` (50-D,
//! curvatures log-spaced from 1 to 1,000), `iris` (logistic regression, test
//! accuracy on a seeded 80/20 split), `digits` (the 64-128-64-10 MLP) and
//! `diabetes` (regression of disease progression on ten clinical
//! variables, a 10-32-1 MLP, test mean squared error).
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
//!
//! The command's parts: [`harness`] runs every optimizer over the seeds
//! (progress bars, the step loop, checkpoints saved and resumed), with
//! [`checkpoints`] deciding what a checkpoint records and whether one
//! belongs to this run; [`optimizers`] turns the command line's names and
//! `--set` into optimizers; [`problems`] holds the four problems; and
//! [`report`] summarises the runs (table, JSON lines, `results.json`, plots).

mod checkpoints;
mod harness;
mod optimizers;
mod problems;
mod report;
mod tune;

use crate::Failure;
use lensopt::{DynOptimizer, NonFinite, Optimizer};
use optimizers::{check_set, file_label, optimizer};
use std::path::PathBuf;

/// Flags of `lensopt compare`.
#[derive(clap::Args)]
pub struct Args {
    /// Optimizers: catalog names or rule files.
    #[arg(required = true)]
    optimizers: Vec<String>,
    /// rosenbrock, quadratic, iris, digits or diabetes.
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
    /// Tune a hyperparameter per optimizer before comparing, `NAME=V1,V2,...`
    /// (e.g. `lr=1e-4,1e-3,1e-2`): the value with the lowest final
    /// validation loss is used and reported (never chosen on test data).
    #[arg(long, value_name = "NAME=GRID")]
    tune: Option<String>,
    /// A learning-rate schedule over the run's steps: `cosine[:FLOOR]`,
    /// `warmup_cosine:W[,FLOOR]`, `wsd:W,DECAY[,FLOOR]`, `linear_warmup:W`,
    /// `step_decay:EVERY,GAMMA`, `inverse_sqrt:W` (the optimizer's `lr`
    /// times the schedule's factor at each step).
    #[arg(long, value_name = "NAME[:ARGS]")]
    schedule: Option<String>,
    /// Non-finite gradients: `stop` the run there, or `skip` the step; both are reported.
    #[arg(long, default_value = "stop", value_name = "stop|skip")]
    non_finite: String,
}

/// The `--schedule` of a run of `steps` steps, parsed.
fn schedule(args: &Args, steps: usize) -> Result<Option<lensopt::schedules::Schedule>, Failure> {
    args.schedule
        .as_deref()
        .map(|s| {
            lensopt::schedules::Schedule::parse(s, steps as u64)
                .map_err(|e| Failure::usage(format!("--schedule: {e}")))
        })
        .transpose()
}

/// Runs `lensopt compare`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let problem = args.problem.as_str();
    let default_steps = problems::default_steps(problem)?;
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
    let grid = args.tune.as_deref().map(tune::parse).transpose()?;
    let schedule = schedule(args, steps)?;
    let mut optimizers: Vec<(String, DynOptimizer)> = args
        .optimizers
        .iter()
        .map(|o| optimizer(o, &args.set))
        .collect::<Result<_, _>>()?;
    check_set(&args.set, &optimizers)?;
    let mut tuned: Vec<Option<tune::Tuned>> = vec![None; optimizers.len()];
    if let Some(grid) = &grid {
        if let Some((label, _)) = optimizers
            .iter()
            .find(|(_, o)| o.rule().hyper_index(&grid.name).is_none())
        {
            return Err(Failure::usage(format!(
                "--tune: `{label}` has no hyperparameter `{}`",
                grid.name
            )));
        }
        let validation = match problem {
            "iris" | "digits" | "diabetes" => Some(problems::supervised_data(problem, true)?),
            _ => None,
        };
        for ((_, opt), slot) in optimizers.iter_mut().zip(&mut tuned) {
            let t = tune::tune(
                args,
                steps,
                grid,
                opt,
                schedule.as_ref(),
                validation.as_ref(),
            )?;
            *opt = opt
                .clone()
                .with(&grid.name, t.value)
                .map_err(|e| Failure::usage(e.to_string()))?;
            *slot = Some(t);
        }
    }
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
        "iris" | "digits" | "diabetes" => Some(problems::supervised_data(problem, false)?),
        _ => None,
    };
    let results = harness::run_all(
        args,
        steps,
        policy,
        schedule.as_ref(),
        &optimizers,
        checkpoints.as_deref(),
        data.as_ref(),
    )?;
    let rows = report::rows(args, steps, &results, grid.as_ref(), &tuned);
    // The files first (atomically), then stdout: a reader that stops
    // reading early (`| head`) does not cost the results.
    if let Some(dir) = &args.out {
        report::write_files(dir, problem, &results, &rows, grid.as_ref(), &tuned)?;
    }
    report::print(args, steps, &rows);
    Ok(())
}
