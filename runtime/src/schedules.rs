//! Hyperparameter schedules on the [`crate::Stepper`]: a factor per step
//! `t` (1 on the first step) that multiplies each parameter group's value
//! of a hyperparameter, set before every step without recompiling (a
//! hyperparameter is a per-step value of the compiled kernels).
//!
//! The shapes the field uses: linear warm-up, cosine decay (as PyTorch's
//! `CosineAnnealingLR`, the first step at the full value), warm-up then
//! cosine, warm-up-stable-decay, step decay (as `StepLR`), inverse square
//! root, and any function of `t` ([`Schedule::custom`]). The same shapes
//! exist in the language as functions of `t` (`warmup_cosine(...)` in the
//! prelude), for rules that schedule themselves.
//!
//! ```
//! use lensopt::schedules::Schedule;
//! let s = Schedule::warmup_cosine(10, 100, 0.1).unwrap();
//! assert_eq!(s.factor(5), 0.5);
//! assert_eq!(s.factor(10), 1.0);
//! assert!((s.factor(100) - 0.1).abs() < 1e-12);
//! ```

use crate::error::Error;
use lensopt_ir::{HyperValue, Rule};
use std::fmt;
use std::sync::Arc;

/// A factor per step, by name.
#[derive(Clone)]
pub struct Schedule {
    name: String,
    factor: Arc<dyn Fn(u64) -> f64 + Send + Sync>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({})", self.name)
    }
}

fn bad(what: String) -> Error {
    Error::Mismatch(format!("schedule: {what}"))
}

fn positive(name: &str, v: u64) -> Result<f64, Error> {
    if v == 0 {
        return Err(bad(format!("`{name}` must be at least 1 step")));
    }
    Ok(v as f64)
}

fn fraction(name: &str, v: f64) -> Result<f64, Error> {
    if !(0.0..=1.0).contains(&v) {
        return Err(bad(format!("`{name}` must be between 0 and 1, not {v}")));
    }
    Ok(v)
}

/// `floor + (1 - floor) (1 + cos(pi e / total)) / 2`, `e` capped at `total`.
fn cosine_at(e: f64, total: f64, floor: f64) -> f64 {
    let e = e.min(total);
    floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * e / total).cos())
}

impl Schedule {
    fn new(name: String, f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        Schedule {
            name,
            factor: Arc::new(f),
        }
    }

    /// The factor at step `t` (1 on the first step).
    pub fn factor(&self, t: u64) -> f64 {
        (self.factor)(t)
    }

    /// The schedule's name and parameters, e.g. `cosine(total=100, floor=0)`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Always 1.
    pub fn constant() -> Self {
        Self::new("constant".into(), |_| 1.0)
    }

    /// `min(1, t / warmup)`.
    pub fn linear_warmup(warmup: u64) -> Result<Self, Error> {
        let w = positive("warmup", warmup)?;
        Ok(Self::new(
            format!("linear_warmup(warmup={warmup})"),
            move |t| (t as f64 / w).min(1.0),
        ))
    }

    /// Cosine from 1 at step 1 down to `floor` at step `total + 1` and after,
    /// as PyTorch's `CosineAnnealingLR(T_max=total, eta_min=floor * lr)`.
    pub fn cosine(total: u64, floor: f64) -> Result<Self, Error> {
        let n = positive("total", total)?;
        let floor = fraction("floor", floor)?;
        Ok(Self::new(
            format!("cosine(total={total}, floor={floor})"),
            move |t| cosine_at(t.saturating_sub(1) as f64, n, floor),
        ))
    }

    /// Linear warm-up to 1 at step `warmup`, then cosine down to `floor` at
    /// step `total`.
    pub fn warmup_cosine(warmup: u64, total: u64, floor: f64) -> Result<Self, Error> {
        let w = positive("warmup", warmup)?;
        if total <= warmup {
            return Err(bad(format!(
                "`total` ({total}) must exceed `warmup` ({warmup})"
            )));
        }
        let floor = fraction("floor", floor)?;
        let span = (total - warmup) as f64;
        Ok(Self::new(
            format!("warmup_cosine(warmup={warmup}, total={total}, floor={floor})"),
            move |t| {
                if t <= warmup {
                    t as f64 / w
                } else {
                    cosine_at((t - warmup) as f64, span, floor)
                }
            },
        ))
    }

    /// Warm-up-stable-decay: linear warm-up over `warmup` steps, 1 for
    /// `stable` steps, then linear decay to `floor` over `decay` steps.
    pub fn warmup_stable_decay(
        warmup: u64,
        stable: u64,
        decay: u64,
        floor: f64,
    ) -> Result<Self, Error> {
        let w = positive("warmup", warmup)?;
        let d = positive("decay", decay)?;
        let floor = fraction("floor", floor)?;
        Ok(Self::new(
            format!("wsd(warmup={warmup}, stable={stable}, decay={decay}, floor={floor})"),
            move |t| {
                if t <= warmup {
                    t as f64 / w
                } else if t <= warmup + stable {
                    1.0
                } else {
                    let into = (t - warmup - stable) as f64;
                    (1.0 - (1.0 - floor) * into / d).max(floor)
                }
            },
        ))
    }

    /// `gamma ^ floor((t - 1) / every)`, as PyTorch's `StepLR`.
    pub fn step_decay(every: u64, gamma: f64) -> Result<Self, Error> {
        positive("every", every)?;
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(bad(format!("`gamma` must be positive, not {gamma}")));
        }
        Ok(Self::new(
            format!("step_decay(every={every}, gamma={gamma})"),
            move |t| gamma.powi((t.saturating_sub(1) / every).min(i32::MAX as u64) as i32),
        ))
    }

    /// Linear warm-up over `warmup` steps, then `sqrt(warmup / t)`.
    pub fn inverse_sqrt(warmup: u64) -> Result<Self, Error> {
        let w = positive("warmup", warmup)?;
        Ok(Self::new(
            format!("inverse_sqrt(warmup={warmup})"),
            move |t| {
                if t <= warmup {
                    t as f64 / w
                } else {
                    (w / t as f64).sqrt()
                }
            },
        ))
    }

    /// Any factor of the step, named for messages and reports.
    pub fn custom(name: &str, f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        Self::new(name.to_string(), f)
    }

    /// Parses `name` or `name:arg,arg,...` for a run of `steps` steps:
    /// `constant`, `linear_warmup:W`, `cosine[:FLOOR]`,
    /// `warmup_cosine:W[,FLOOR]`, `wsd:W,DECAY[,FLOOR]` (stable until
    /// `DECAY` steps before the end), `step_decay:EVERY,GAMMA`,
    /// `inverse_sqrt:W`.
    pub fn parse(text: &str, steps: u64) -> Result<Self, Error> {
        let (name, args) = text.split_once(':').unwrap_or((text, ""));
        let nums: Vec<f64> = if args.is_empty() {
            Vec::new()
        } else {
            args.split(',')
                .map(|a| {
                    a.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| bad(format!("`{a}` in `{text}` is not a number")))
                })
                .collect::<Result<_, _>>()?
        };
        let count = |k: usize| -> Result<u64, Error> {
            let v = nums.get(k).copied().unwrap_or(0.0);
            if v < 0.0 || v.fract() != 0.0 || v > 1e15 {
                return Err(bad(format!("`{v}` in `{text}` is not a step count")));
            }
            Ok(v as u64)
        };
        let arity = |lo: usize, hi: usize| {
            if (lo..=hi).contains(&nums.len()) {
                Ok(())
            } else {
                Err(bad(format!(
                    "`{name}` takes {lo} to {hi} arguments: `{text}`"
                )))
            }
        };
        let floor = |k: usize| nums.get(k).copied().unwrap_or(0.0);
        match name {
            "constant" => arity(0, 0).map(|()| Self::constant()),
            "linear_warmup" => arity(1, 1).and_then(|()| Self::linear_warmup(count(0)?)),
            "cosine" => arity(0, 1).and_then(|()| Self::cosine(steps, floor(0))),
            "warmup_cosine" => arity(1, 2).and_then(|()| Self::warmup_cosine(count(0)?, steps, floor(1))),
            "wsd" => arity(2, 3).and_then(|()| {
                let (w, d) = (count(0)?, count(1)?);
                let stable = steps.checked_sub(w + d).ok_or_else(|| {
                    bad(format!("warm-up and decay ({}) exceed the {steps} steps", w + d))
                })?;
                Self::warmup_stable_decay(w, stable, d, floor(2))
            }),
            "step_decay" => arity(2, 2).and_then(|()| Self::step_decay(count(0)?, nums[1])),
            "inverse_sqrt" => arity(1, 1).and_then(|()| Self::inverse_sqrt(count(0)?)),
            other => Err(bad(format!(
                "unknown schedule `{other}`: constant, linear_warmup, cosine, warmup_cosine, wsd, step_decay or inverse_sqrt"
            ))),
        }
    }
}

/// The schedules attached to a stepper's hyperparameters (CPU or GPU):
/// each with the hyperparameter's index and every group's base value.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scheduled(Vec<(usize, Schedule, Vec<f64>)>);

impl Scheduled {
    /// Schedules `name`, its base values the groups' values now.
    pub(crate) fn set(
        &mut self,
        rule: &Rule,
        groups: &[Vec<HyperValue>],
        name: &str,
        schedule: Schedule,
    ) -> Result<(), Error> {
        let index = rule.hyper_index(name).ok_or_else(|| {
            Error::Mismatch(format!(
                "optimizer `{}` has no hyperparameter `{name}`",
                rule.name
            ))
        })?;
        let base = groups
            .iter()
            .map(|g| match g[index] {
                HyperValue::Num(x) => Ok(x),
                HyperValue::Bool(_) => Err(Error::Mismatch(format!(
                    "hyperparameter `{name}` is a switch; only numbers are scheduled"
                ))),
            })
            .collect::<Result<Vec<f64>, Error>>()?;
        self.0.retain(|(i, _, _)| *i != index);
        self.0.push((index, schedule, base));
        Ok(())
    }

    /// Stops scheduling `name`.
    pub(crate) fn clear(&mut self, rule: &Rule, name: &str) {
        if let Some(index) = rule.hyper_index(name) {
            self.0.retain(|(i, _, _)| *i != index);
        }
    }

    /// Sets every scheduled hyperparameter of every group for step `t`.
    pub(crate) fn apply(&self, groups: &mut [Vec<HyperValue>], t: u64) {
        for (index, schedule, base) in &self.0 {
            let factor = schedule.factor(t);
            for (group, b) in groups.iter_mut().zip(base) {
                group[*index] = HyperValue::Num(b * factor);
            }
        }
    }
}
