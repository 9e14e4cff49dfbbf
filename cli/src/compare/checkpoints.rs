//! The checkpoints of `lensopt compare`: what one records beside the
//! parameters and optimizer state (the run's configuration, step, time,
//! skipped steps and loss history), when one is due, and the checks that
//! refuse a checkpoint made by another run before it is loaded.

use super::harness::Run;
use crate::Failure;
use lensopt::checkpoint::Contents;
use lensopt::HyperValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where and how often one run is checkpointed, and what it must match.
pub(super) struct Saving {
    pub(super) path: Option<PathBuf>,
    pub(super) every: usize,
    pub(super) resume: bool,
    /// The run's configuration; a checkpoint made with another is refused.
    pub(super) config: String,
    /// The hyperparameters the command line configures; a checkpoint whose
    /// optimizer holds others is refused.
    pub(super) hypers: Vec<(String, HyperValue)>,
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
    pub(super) fn due(&self, step: usize) -> bool {
        self.path.is_some() && self.every > 0 && step.is_multiple_of(self.every)
    }

    /// The caller's entries of a checkpoint: the run so far (its losses go
    /// as a tensor, beside them).
    pub(super) fn entries(&self, run: &Run, step: usize) -> BTreeMap<String, String> {
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
    pub(super) fn check(&self, c: &Contents, steps: usize) -> Result<usize, String> {
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
    pub(super) fn restore(&self, c: &Contents, run: &mut Run) -> Result<(), Failure> {
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
