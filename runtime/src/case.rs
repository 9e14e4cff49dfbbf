//! Conformance cases: one parameter vector, a few steps, recorded inputs.
//!
//! This is the JSON format of the golden vectors (see `tests/golden/README.md`):
//! `p0`, per-step `grads`, optional per-step `hessians` (fed to input `h`)
//! and `hessian_grads` (fed to input `ghat`), a `dtype`, and under `lensopt`
//! the optimizer's catalog name and hyperparameters. [`run`] replays a case
//! through any optimizer; `lensopt apply` and the conformance tests use it.

use crate::error::{mismatch, Error};
use crate::optimizer::{DynOptimizer, Optimizer};
use crate::stepper::{Backend, Inputs};
use crate::tensor::TensorRef;
use crate::Float;
use lensopt_ir::HyperValue;
use ndarray::Array1;
use serde_json::Value;

/// A parsed case.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// `float64` or `float32`.
    pub dtype: Dtype,
    /// Initial parameters.
    pub p0: Vec<f64>,
    /// One gradient per step.
    pub grads: Vec<Vec<f64>>,
    /// Per step, the Hessian-diagonal estimate fed to input `h`, if any.
    pub hessians: Vec<Option<Vec<f64>>>,
    /// Per step, the gradient on sampled labels fed to input `ghat`, if any.
    pub hessian_grads: Vec<Option<Vec<f64>>>,
    /// The optimizer named by the case (`lensopt.optimizer`), if any.
    pub optimizer: Option<String>,
    /// Hyperparameters named by the case (`lensopt.hyper`), in file order.
    pub hyper: Vec<(String, HyperValue)>,
    /// The reference's parameters after each step, when the case records them.
    pub params_after: Option<Vec<Vec<f64>>>,
}

/// The element type a case runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// f32
    F32,
    /// f64
    F64,
}

fn bad(message: impl Into<String>) -> Error {
    mismatch(message)
}

fn vector(value: &Value, what: &str) -> Result<Vec<f64>, Error> {
    let items = value
        .as_array()
        .ok_or_else(|| bad(format!("`{what}` must be an array of numbers")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .ok_or_else(|| bad(format!("`{what}[{i}]` is not a number")))
        })
        .collect()
}

fn per_step(
    value: Option<&Value>,
    what: &str,
    steps: usize,
    n: usize,
) -> Result<Vec<Option<Vec<f64>>>, Error> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(vec![None; steps]);
    };
    let rows = value
        .as_array()
        .ok_or_else(|| bad(format!("`{what}` must be an array with one entry per step")))?;
    if rows.len() != steps {
        return Err(bad(format!(
            "`{what}` has {} entries, but the case has {steps} steps",
            rows.len()
        )));
    }
    rows.iter()
        .enumerate()
        .map(|(t, row)| {
            if row.is_null() {
                return Ok(None);
            }
            let v = vector(row, &format!("{what}[{t}]"))?;
            if v.len() != n {
                return Err(bad(format!(
                    "`{what}[{t}]` has {} elements, but `p0` has {n}",
                    v.len()
                )));
            }
            Ok(Some(v))
        })
        .collect()
}

impl Case {
    /// Parses a case from JSON text, checking every length.
    pub fn from_json(text: &str) -> Result<Case, Error> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        if !root.is_object() {
            return Err(bad("malformed case: the top level must be a JSON object"));
        }
        let dtype = match root.get("dtype").and_then(Value::as_str) {
            None | Some("float64") => Dtype::F64,
            Some("float32") => Dtype::F32,
            Some(other) => {
                return Err(bad(format!(
                    "unknown dtype `{other}`: expected `float64` or `float32`"
                )))
            }
        };
        let p0 = vector(
            root.get("p0").ok_or_else(|| bad("the case has no `p0`"))?,
            "p0",
        )?;
        let n = p0.len();
        if let Some(declared) = root.get("n") {
            let declared = declared
                .as_u64()
                .ok_or_else(|| bad("`n` must be a non-negative integer"))?;
            if declared as usize != n {
                return Err(bad(format!("`n` is {declared}, but `p0` has {n} elements")));
            }
        }
        let grads = per_step(
            Some(
                root.get("grads")
                    .ok_or_else(|| bad("the case has no `grads`"))?,
            ),
            "grads",
            root.get("grads")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            n,
        )?
        .into_iter()
        .enumerate()
        .map(|(t, g)| g.ok_or_else(|| bad(format!("`grads[{t}]` is null"))))
        .collect::<Result<Vec<_>, _>>()?;
        let steps = grads.len();
        if let Some(declared) = root.get("steps") {
            let declared = declared
                .as_u64()
                .ok_or_else(|| bad("`steps` must be a non-negative integer"))?;
            if declared as usize != steps {
                return Err(bad(format!(
                    "`steps` is {declared}, but `grads` has {steps} entries"
                )));
            }
        }
        let hessians = per_step(root.get("hessians"), "hessians", steps, n)?;
        let hessian_grads = per_step(root.get("hessian_grads"), "hessian_grads", steps, n)?;
        let params_after = match root.get("params_after") {
            Some(v) if !v.is_null() => Some(
                per_step(Some(v), "params_after", steps, n)?
                    .into_iter()
                    .map(|r| r.ok_or_else(|| bad("`params_after` has a null entry")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => None,
        };
        let (optimizer, hyper) = match root.get("lensopt") {
            Some(meta) => {
                let optimizer = meta
                    .get("optimizer")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let mut hyper = Vec::new();
                if let Some(map) = meta.get("hyper").and_then(Value::as_object) {
                    for (name, value) in map {
                        let value = crate::hyper_from_json(value).ok_or_else(|| {
                            bad(format!(
                                "hyperparameter `{name}` must be a number or a boolean"
                            ))
                        })?;
                        hyper.push((name.clone(), value));
                    }
                }
                (optimizer, hyper)
            }
            None => (None, Vec::new()),
        };
        Ok(Case {
            dtype,
            p0,
            grads,
            hessians,
            hessian_grads,
            optimizer,
            hyper,
            params_after,
        })
    }
}

/// Sets a hyperparameter, accepting 0 and 1 for boolean switches.
pub fn set_hyper(opt: &mut DynOptimizer, name: &str, value: HyperValue) -> Result<(), Error> {
    let rule = opt.rule();
    let value = match (
        rule.hyper_index(name).map(|i| rule.hypers[i].default),
        value,
    ) {
        (Some(HyperValue::Bool(_)), HyperValue::Num(x)) if x == 0.0 || x == 1.0 => {
            HyperValue::Bool(x == 1.0)
        }
        _ => value,
    };
    opt.set(name, value)
}

/// The result of replaying a case.
#[derive(Clone, Debug, PartialEq)]
pub struct Replay {
    /// Parameters after each step, widened to f64.
    pub params_after: Vec<Vec<f64>>,
    /// Per-element state after the last step, by name, widened to f64.
    pub state: Vec<(String, Vec<f64>)>,
}

/// Replays `case` through `opt` in the case's dtype, with the default backend.
pub fn run(case: &Case, opt: &DynOptimizer) -> Result<Replay, Error> {
    run_with(case, opt, Backend::default())
}

/// Replays `case` through `opt` in the case's dtype, with `backend`.
pub fn run_with(case: &Case, opt: &DynOptimizer, backend: Backend) -> Result<Replay, Error> {
    match case.dtype {
        Dtype::F32 => run_typed::<f32>(case, opt, backend),
        Dtype::F64 => run_typed::<f64>(case, opt, backend),
    }
}

fn array<F: Float>(v: &[f64]) -> Array1<F> {
    v.iter().map(|&x| F::from_f64(x)).collect()
}

fn run_typed<F: Float>(case: &Case, opt: &DynOptimizer, backend: Backend) -> Result<Replay, Error> {
    let rule = opt.rule();
    let mut p: Array1<F> = array(&case.p0);
    let mut stepper = opt.init::<F>(&[&p])?;
    stepper.set_backend(backend);
    let mut params_after = Vec::with_capacity(case.grads.len());
    for t in 0..case.grads.len() {
        let g: Array1<F> = array(&case.grads[t]);
        let h: Option<Array1<F>> = case.hessians[t].as_deref().map(array);
        let ghat: Option<Array1<F>> = case.hessian_grads[t].as_deref().map(array);
        let mut inputs = Inputs::new();
        if let (Some(h), Some(_)) = (&h, rule.input_index("h")) {
            inputs = inputs.with("h", vec![h as &dyn TensorRef<F>]);
        }
        if let (Some(ghat), Some(_)) = (&ghat, rule.input_index("ghat")) {
            inputs = inputs.with("ghat", vec![ghat as &dyn TensorRef<F>]);
        }
        stepper.step_with(&mut [&mut p], &[&g], &inputs)?;
        params_after.push(p.iter().map(|x| x.to_f64()).collect());
    }
    let state = rule
        .states
        .iter()
        .filter_map(|s| {
            stepper
                .state(0, &s.name)
                .map(|v| (s.name.clone(), v.iter().map(|x| x.to_f64()).collect()))
        })
        .collect();
    Ok(Replay {
        params_after,
        state,
    })
}
