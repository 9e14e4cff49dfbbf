//! `--tune NAME=V1,V2,...`: before the compared runs, each optimizer runs
//! once per value of the grid (over the same seeds and steps) and keeps the
//! value with the lowest mean final validation loss. Supervised problems
//! train on 80% of their training set and validate on the other 20%; the
//! test set is never looked at. Closed-form problems have no data to hold
//! out: their own final loss decides. A value whose runs diverge (a
//! non-finite loss) is never chosen.

use super::checkpoints::Saving;
use super::harness::{Job, Run};
use super::problems::{self, Supervised};
use super::Args;
use crate::Failure;
use indicatif::ProgressBar;
use lensopt::{DynOptimizer, NonFinite, Optimizer};

/// A hyperparameter and the values to try.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Grid {
    pub(super) name: String,
    pub(super) values: Vec<f64>,
}

/// Parses `name=v1,v2,...` (finite numbers, at least one, no repeats).
pub(super) fn parse(text: &str) -> Result<Grid, Failure> {
    let usage = |why: &str| {
        Failure::usage(format!(
            "--tune `{text}`: {why} (write NAME=V1,V2,..., e.g. lr=1e-4,1e-3,1e-2)"
        ))
    };
    let (name, list) = text.split_once('=').ok_or_else(|| usage("no `=`"))?;
    if name.is_empty() {
        return Err(usage("no hyperparameter name"));
    }
    let mut values = Vec::new();
    for item in list.split(',') {
        let v: f64 = item
            .trim()
            .parse()
            .map_err(|_| usage(&format!("`{item}` is not a number")))?;
        if !v.is_finite() {
            return Err(usage(&format!("`{item}` is not finite")));
        }
        if values.contains(&v) {
            return Err(usage(&format!("`{item}` is given twice")));
        }
        values.push(v);
    }
    Ok(Grid {
        name: name.to_string(),
        values,
    })
}

/// What tuning chose for one optimizer.
#[derive(Clone, Debug)]
pub(super) struct Tuned {
    /// The chosen value.
    pub(super) value: f64,
    /// Per grid value, the mean final validation loss over seeds (infinite
    /// when a run diverged).
    pub(super) losses: Vec<f64>,
}

/// Runs `opt` at every value of `grid` and picks the one with the lowest
/// mean final validation loss.
pub(super) fn tune(
    args: &Args,
    steps: usize,
    grid: &Grid,
    opt: &DynOptimizer,
    schedule: Option<&lensopt::schedules::Schedule>,
    validation: Option<&Supervised>,
) -> Result<Tuned, Failure> {
    let problem = args.problem.as_str();
    let bar = ProgressBar::hidden();
    let mut losses = Vec::with_capacity(grid.values.len());
    for &value in &grid.values {
        let candidate = opt
            .clone()
            .with(&grid.name, value)
            .map_err(|e| Failure::usage(format!("--tune: {e}")))?;
        let mut total = 0.0;
        for seed in 0..args.seeds {
            let job = Job {
                steps,
                seed,
                // A non-finite gradient ends the candidate's run: it lost.
                policy: NonFinite::Refuse,
                schedule: schedule.cloned(),
                saving: Saving {
                    path: None,
                    every: 0,
                    resume: false,
                    config: String::new(),
                    hypers: Vec::new(),
                },
                bar: &bar,
            };
            let run: Run = match validation {
                None => problems::closed_form(&candidate, problem, &job)?,
                Some(d) => problems::supervised(&candidate, d, &job)?,
            };
            let loss = match (run.stopped_at, run.held_out_loss) {
                (Some(_), _) => f64::INFINITY,
                (None, Some(l)) => l,
                (None, None) => *run.losses.last().unwrap_or(&f64::INFINITY),
            };
            total += if loss.is_finite() {
                loss
            } else {
                f64::INFINITY
            };
        }
        losses.push(total / args.seeds.max(1) as f64);
    }
    let best = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .ok_or_else(|| {
            Failure::usage(format!(
                "--tune: every value of {} diverged for `{}`",
                grid.name,
                opt.rule().name
            ))
        })?;
    Ok(Tuned {
        value: grid.values[best],
        losses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_parse_strictly() {
        assert_eq!(
            parse("lr=1e-3, 1e-2").ok().unwrap(),
            Grid {
                name: "lr".into(),
                values: vec![1e-3, 1e-2]
            }
        );
        for bad in ["lr", "=1", "lr=", "lr=1,x", "lr=1,1", "lr=inf", "lr=1e999"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
