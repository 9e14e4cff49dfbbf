//! The `Optimizer` trait: a rule plus its hyperparameter values; and parameter groups.
//!
//! An [`Optimizer`] is a configuration, not state: `optimizer!` structs and
//! [`DynOptimizer`] (a rule parsed at run time) both implement it.
//! [`Optimizer::init`] creates the state for a set of tensors and returns the
//! [`Stepper`] that owns it.

use crate::error::{mismatch, Error};
use crate::stepper::Stepper;
use crate::tensor::TensorRef;
use crate::Float;
use lensopt_frontend::ParseRule;
use lensopt_ir::{HyperValue, Rule};
use std::sync::Arc;

/// An update rule with hyperparameter values.
pub trait Optimizer {
    /// The checked rule (shared; compiled once per process).
    fn rule(&self) -> Arc<Rule>;

    /// Current hyperparameter values, in the rule's declaration order.
    fn hypers(&self) -> Vec<HyperValue>;

    /// Sets one hyperparameter by name.
    fn set(&mut self, name: &str, value: HyperValue) -> Result<(), Error>;

    /// Creates the state for `params` (one group, these hyperparameters).
    fn init<F: Float>(&self, params: &[&dyn TensorRef<F>]) -> Result<Stepper<F>, Error>
    where
        Self: Sized,
    {
        self.init_groups(params, &[Group::new(0..params.len())])
    }

    /// Creates the state for `params` split into groups, each with its own
    /// hyperparameter overrides (as torch.optim's parameter groups).
    /// Every tensor must belong to exactly one group.
    fn init_groups<F: Float>(
        &self,
        params: &[&dyn TensorRef<F>],
        groups: &[Group],
    ) -> Result<Stepper<F>, Error>
    where
        Self: Sized,
    {
        Stepper::new(self.rule(), self.hypers(), params, groups)
    }
}

/// A parameter group: which tensors (indices into the parameter list) and
/// which hyperparameters differ from the optimizer's values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// Indices of the group's tensors.
    pub tensors: Vec<usize>,
    /// Hyperparameter overrides for this group.
    pub overrides: Vec<(String, HyperValue)>,
}

impl Group {
    /// A group of the given tensors, with no overrides.
    pub fn new(tensors: impl IntoIterator<Item = usize>) -> Self {
        Group {
            tensors: tensors.into_iter().collect(),
            overrides: Vec::new(),
        }
    }

    /// Overrides one hyperparameter for this group.
    #[must_use]
    pub fn set(mut self, name: &str, value: impl Into<HyperValue>) -> Self {
        self.overrides.push((name.to_string(), value.into()));
        self
    }
}

/// An optimizer whose rule was given at run time (parsed text, or a catalog entry by name).
#[derive(Clone, Debug)]
pub struct DynOptimizer {
    rule: Arc<Rule>,
    values: Vec<HyperValue>,
}

impl DynOptimizer {
    /// Parses and checks a rule; hyperparameters start at their defaults.
    pub fn parse(text: &str) -> Result<Self, Error> {
        Ok(Self::from_rule(Arc::new(Rule::parse(text)?)))
    }

    /// Wraps a checked rule; hyperparameters start at their defaults.
    pub fn from_rule(rule: Arc<Rule>) -> Self {
        let values = rule.default_hypers();
        DynOptimizer { rule, values }
    }

    /// Builder form of [`Optimizer::set`].
    pub fn with(mut self, name: &str, value: impl Into<HyperValue>) -> Result<Self, Error> {
        self.set(name, value.into())?;
        Ok(self)
    }
}

impl Optimizer for DynOptimizer {
    fn rule(&self) -> Arc<Rule> {
        self.rule.clone()
    }

    fn hypers(&self) -> Vec<HyperValue> {
        self.values.clone()
    }

    fn set(&mut self, name: &str, value: HyperValue) -> Result<(), Error> {
        let index = hyper_slot(&self.rule, name, value)?;
        self.values[index] = value;
        Ok(())
    }
}

/// Finds the slot of hyperparameter `name` and checks the value's kind.
/// A hyperparameter's value as JSON: a number or a boolean.
pub fn hyper_to_json(value: HyperValue) -> serde_json::Value {
    match value {
        HyperValue::Num(x) => serde_json::json!(x),
        HyperValue::Bool(b) => serde_json::json!(b),
    }
}

/// A JSON number or boolean as a hyperparameter's value.
pub fn hyper_from_json(value: &serde_json::Value) -> Option<HyperValue> {
    match value {
        serde_json::Value::Bool(b) => Some(HyperValue::Bool(*b)),
        serde_json::Value::Number(x) => Some(HyperValue::Num(x.as_f64().unwrap_or(f64::NAN))),
        _ => None,
    }
}

pub(crate) fn hyper_slot(rule: &Rule, name: &str, value: HyperValue) -> Result<usize, Error> {
    let Some(index) = rule.hyper_index(name) else {
        return Err(hyper_error(&rule.name, rule, name, value));
    };
    let expected = rule.hypers[index].default;
    if std::mem::discriminant(&expected) != std::mem::discriminant(&value) {
        return Err(hyper_error(&rule.name, rule, name, value));
    }
    if let HyperValue::Num(x) = value {
        if x.is_nan() {
            return Err(Error::HyperValue {
                name: name.to_string(),
                value: x,
            });
        }
    }
    let mut values = rule.default_hypers();
    values[index] = value;
    rule.check_hypers(&values).map_err(mismatch)?;
    Ok(index)
}

/// Sets hyperparameter `name` to `value` in group `group`, or in every group
/// with `None`, after checking name, kind and value; the setter of both the
/// CPU and the GPU stepper.
pub(crate) fn set_in_groups(
    rule: &Rule,
    groups: &mut [Vec<HyperValue>],
    group: Option<usize>,
    name: &str,
    value: HyperValue,
) -> Result<(), Error> {
    let index = hyper_slot(rule, name, value)?;
    match group {
        None => groups.iter_mut().for_each(|g| g[index] = value),
        Some(k) => {
            let count = groups.len();
            groups
                .get_mut(k)
                .ok_or_else(|| mismatch(format!("no group {k}: there are {count}")))?[index] =
                value;
        }
    }
    Ok(())
}

/// The error for `name = value` on `rule`: unknown name or wrong kind.
pub(crate) fn hyper_error(optimizer: &str, rule: &Rule, name: &str, value: HyperValue) -> Error {
    match rule.hyper_index(name) {
        Some(index) => {
            let expected = rule.hypers[index].default.kind();
            debug_assert_ne!(expected, value.kind());
            Error::HyperType {
                name: name.to_string(),
                expected,
            }
        }
        None => Error::UnknownHyper {
            optimizer: optimizer.to_string(),
            name: name.to_string(),
            known: rule.hypers.iter().map(|h| h.name.clone()).collect(),
        },
    }
}

/// Resolves groups into per-group hyperparameter vectors and a group index per tensor.
pub(crate) fn resolve_groups(
    rule: &Rule,
    base: &[HyperValue],
    tensors: usize,
    groups: &[Group],
) -> Result<(Vec<Vec<HyperValue>>, Vec<usize>), Error> {
    let mut group_of = vec![usize::MAX; tensors];
    let mut values = Vec::with_capacity(groups.len());
    for (gi, group) in groups.iter().enumerate() {
        let mut hypers = base.to_vec();
        for (name, value) in &group.overrides {
            hypers[hyper_slot(rule, name, *value)?] = *value;
        }
        values.push(hypers);
        for &t in &group.tensors {
            if t >= tensors {
                return Err(mismatch(format!(
                    "group {gi} names tensor {t}, but there are only {tensors} tensors"
                )));
            }
            if group_of[t] != usize::MAX {
                return Err(mismatch(format!(
                    "tensor {t} is in group {} and in group {gi}: each tensor belongs to one group",
                    group_of[t]
                )));
            }
            group_of[t] = gi;
        }
    }
    if let Some(t) = group_of.iter().position(|&g| g == usize::MAX) {
        return Err(mismatch(format!("tensor {t} is in no group")));
    }
    Ok((values, group_of))
}
