//! The reference interpreter: the meaning of a [`Rule`], and the oracle of every backend.
//!
//! Semantics, which every backend must reproduce within the conformance
//! tolerances:
//! - element-rate values are computed in the element type `F` (f32 or f64);
//! - const-, step- and tensor-rate values (hyperparameters, `t`, bias
//!   corrections, reductions, scalar state) are computed in f64, once per
//!   step or tensor, and rounded to `F` where element code uses them;
//! - reductions accumulate in f64 in element order; a global reduction
//!   combines the tensors in order; reductions run in node order, each
//!   a pass over the elements, after the values they depend on;
//! - booleans are 0 and 1; an absent optional input reads as 0;
//! - every element's new `p` and state are computed from the values at the
//!   start of the step, then stored.
//!
//! This module favours obviousness over speed; it allocates freely.

use crate::float::Float;
use crate::hyper::HyperValue;
use crate::rule::*;
use std::fmt;

/// The stored value of one state variable of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum StateBuf<F> {
    /// One value per element.
    Element(Vec<F>),
    /// One value for the whole tensor (kept in f64, as all scalars).
    Scalar(f64),
}

impl<F: Float> StateBuf<F> {
    /// The per-element values (empty for scalar state).
    pub fn elements(&self) -> &[F] {
        match self {
            StateBuf::Element(v) => v,
            StateBuf::Scalar(_) => &[],
        }
    }
}

/// One tensor's part of a step: its buffers and its group's hyperparameters.
pub struct StepTensor<'a, F> {
    /// The parameter, updated in place.
    pub param: &'a mut [F],
    /// The gradient.
    pub grad: &'a [F],
    /// Extra inputs in the rule's order; `None` where an optional input is absent.
    pub inputs: Vec<Option<&'a [F]>>,
    /// The tensor's state, in the rule's order, updated in place.
    pub state: &'a mut [StateBuf<F>],
    /// Hyperparameter values of the tensor's group, in the rule's order.
    pub hypers: &'a [HyperValue],
}

/// Why the interpreter refused to run (the runtime checks these earlier, with more context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterpError(pub String);

impl fmt::Display for InterpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InterpError {}

fn nan<F: Float>() -> F {
    F::from_f64(f64::NAN)
}

pub(crate) fn truth<F: Float>(b: bool) -> F {
    F::from_f64(if b { 1.0 } else { 0.0 })
}

fn is_true<F: Float>(x: F) -> bool {
    x.to_f64() != 0.0
}

/// IEEE 754-2019 `maximum`: NaN-propagating, +0 above -0.
pub fn maximum<F: Float>(a: F, b: F) -> F {
    if a.is_nan() || b.is_nan() {
        nan()
    } else if a > b || (a == b && !a.is_sign_negative()) {
        a
    } else {
        b
    }
}

/// IEEE 754-2019 `minimum`: NaN-propagating, -0 below +0.
pub fn minimum<F: Float>(a: F, b: F) -> F {
    if a.is_nan() || b.is_nan() {
        nan()
    } else if a < b || (a == b && a.is_sign_negative()) {
        a
    } else {
        b
    }
}

/// The value of a unary operation.
pub fn eval_unary<F: Float>(op: UnOp, a: F) -> F {
    let one = F::from_f64(1.0);
    match op {
        UnOp::Neg => a.neg(),
        UnOp::Sqrt => a.sqrt(),
        UnOp::Rsqrt => one.div(a.sqrt()),
        UnOp::Abs => a.abs(),
        UnOp::Sign => {
            let zero = F::default();
            if a > zero {
                one
            } else if a < zero {
                one.neg()
            } else {
                a
            }
        }
        UnOp::Exp => a.exp(),
        UnOp::ExpFma => a.exp_fma(),
        UnOp::Ln => a.ln(),
        UnOp::Sigmoid => one.div(one.add(a.neg().exp())),
        UnOp::Cos => a.cos(),
        UnOp::Floor => F::from_f64(a.to_f64().floor()),
        UnOp::RoundF32 => a.round_f32(),
        UnOp::RoundBf16 => a.round_bf16(),
        UnOp::Not => truth(!is_true(a)),
    }
}

/// The value of a binary operation.
pub fn eval_binary<F: Float>(op: BinOp, a: F, b: F) -> F {
    match op {
        BinOp::Add => a.add(b),
        BinOp::Sub => a.sub(b),
        BinOp::Mul => a.mul(b),
        BinOp::Div => a.div(b),
        BinOp::Pow => a.powf(b),
        BinOp::Min => minimum(a, b),
        BinOp::Max => maximum(a, b),
        BinOp::Lt => truth(a < b),
        BinOp::Le => truth(a <= b),
        BinOp::Gt => truth(a > b),
        BinOp::Ge => truth(a >= b),
        BinOp::Eq => truth(a == b),
        BinOp::Ne => truth(a != b),
        BinOp::And => truth(is_true(a) && is_true(b)),
        BinOp::Or => truth(is_true(a) || is_true(b)),
    }
}

/// Computes an interior (non-leaf, non-reduction) node from its arguments' values.
fn eval_interior<F: Float>(op: &Op, v: &[F]) -> F {
    match *op {
        Op::Unary(u, a) => eval_unary(u, v[a.index()]),
        Op::Binary(b, x, y) => eval_binary(b, v[x.index()], v[y.index()]),
        Op::Select(c, a, b) => {
            if is_true(v[c.index()]) {
                v[a.index()]
            } else {
                v[b.index()]
            }
        }
        Op::Fma(a, b, c) => v[a.index()].mul_add(v[b.index()], v[c.index()]),
        _ => unreachable!("leaves and reductions are evaluated by the caller"),
    }
}

/// The per-tensor (f64) values of one tensor during a step.
struct Scalars<'r> {
    rule: &'r Rule,
    values: Vec<f64>,
}

impl<'r> Scalars<'r> {
    /// Evaluates every const- and step-rate node, and the tensor-rate leaves.
    fn new<F: Float>(
        rule: &'r Rule,
        hypers: &[HyperValue],
        t: f64,
        present: &[bool],
        numel: usize,
        state: &[StateBuf<F>],
    ) -> Self {
        let mut values = vec![f64::NAN; rule.nodes.len()];
        for (i, node) in rule.nodes.iter().enumerate() {
            values[i] = match node.op {
                Op::Const(x) => x,
                Op::ConstBool(b) => f64::from(u8::from(b)),
                Op::Hyper(h) => hypers[h as usize].as_f64(),
                Op::Step => t,
                Op::Present(k) => f64::from(u8::from(present[k as usize])),
                Op::Numel => numel as f64,
                Op::State(s) => match state.get(s as usize) {
                    Some(StateBuf::Scalar(x)) => *x,
                    _ => f64::NAN,
                },
                Op::Param | Op::Grad | Op::Input(_) | Op::Reduce(..) => f64::NAN,
                ref op if node.rate <= Rate::Step => eval_interior(op, &values),
                _ => f64::NAN,
            };
        }
        Scalars { rule, values }
    }

    /// Evaluates the interior tensor-rate node `id` (its arguments are known).
    fn eval_tensor_node(&mut self, id: usize) {
        let op = self.rule.nodes[id].op;
        self.values[id] = eval_interior(&op, &self.values);
    }

    /// The values rounded to the element type, as element code sees them.
    fn cast<F: Float>(&self) -> Vec<F> {
        self.values.iter().map(|&x| F::from_f64(x)).collect()
    }
}

/// Read-only view of one tensor's element data.
struct Elements<'a, F> {
    param: &'a [F],
    grad: &'a [F],
    inputs: &'a [Option<&'a [F]>],
    state: &'a [StateBuf<F>],
}

/// Evaluates the element-rate nodes `needed` (in order) for element `e`,
/// into `ev` (which holds the scalars, cast, in the other slots).
fn eval_element<F: Float>(
    rule: &Rule,
    needed: &[usize],
    ev: &mut [F],
    data: &Elements<'_, F>,
    e: usize,
) {
    for &id in needed {
        ev[id] = match rule.nodes[id].op {
            Op::Param => data.param[e],
            Op::Grad => data.grad[e],
            Op::Input(k) => match data.inputs[k as usize] {
                Some(buf) => buf[e],
                None => F::default(),
            },
            Op::State(s) => data.state[s as usize].elements()[e],
            ref op => eval_interior(op, ev),
        };
    }
}

/// Accumulator of one reduction over one tensor, in f64.
#[derive(Clone, Copy, Default)]
pub(crate) struct Acc {
    sum: f64,
    max: f64,
    count: usize,
}

impl Acc {
    pub(crate) fn new() -> Self {
        Acc::default()
    }

    pub(crate) fn add(&mut self, op: ReduceOp, x: f64) {
        match op {
            ReduceOp::Sum | ReduceOp::Mean => self.sum += x,
            ReduceOp::Norm => self.sum += x * x,
            ReduceOp::Count => self.sum += if x != 0.0 { 1.0 } else { 0.0 },
            ReduceOp::MaxAbs => self.max = maximum(self.max, x.abs()),
        }
        self.count += 1;
    }

    fn merge(&mut self, other: Acc) {
        self.sum += other.sum;
        self.max = maximum(self.max, other.max);
        self.count += other.count;
    }

    pub(crate) fn finish(&self, op: ReduceOp) -> f64 {
        match op {
            ReduceOp::Sum | ReduceOp::Count => self.sum,
            ReduceOp::Mean => self.sum / self.count as f64,
            ReduceOp::Norm => self.sum.sqrt(),
            ReduceOp::MaxAbs => self.max,
        }
    }
}

fn validate<F: Float>(
    rule: &Rule,
    present: &[bool],
    tensors: &[StepTensor<'_, F>],
) -> Result<(), InterpError> {
    if present.len() != rule.inputs.len() {
        return Err(InterpError(format!(
            "{} presence flags for {} inputs",
            present.len(),
            rule.inputs.len()
        )));
    }
    for (i, tt) in tensors.iter().enumerate() {
        let n = tt.param.len();
        check_tensor(
            rule,
            present,
            i,
            tt,
            n,
            |_| n,
            |what, got, want| {
                InterpError(format!(
                    "tensor {i}: {what} has {got} elements, the parameter has {want}"
                ))
            },
        )?;
    }
    Ok(())
}

/// The checks every evaluator makes of tensor `i` of a step, whose
/// parameter has `n` values: its hyperparameters, inputs and states are
/// the rule's; the gradient and each input (unless optional and absent)
/// have `n` values; each state has its declared kind and `state_len(kind)`
/// values. `bad(what, got, want)` words a length mismatch.
pub(crate) fn check_tensor<F>(
    rule: &Rule,
    present: &[bool],
    i: usize,
    tt: &StepTensor<'_, F>,
    n: usize,
    state_len: impl Fn(StateKind) -> usize,
    bad: impl Fn(&str, usize, usize) -> InterpError,
) -> Result<(), InterpError> {
    if tt.grad.len() != n {
        return Err(bad("the gradient", tt.grad.len(), n));
    }
    if tt.hypers.len() != rule.hypers.len()
        || tt.state.len() != rule.states.len()
        || tt.inputs.len() != rule.inputs.len()
    {
        return Err(InterpError(format!(
            "tensor {i}: hyperparameters, state or inputs do not match the rule"
        )));
    }
    for (k, (buf, decl)) in tt.inputs.iter().zip(&rule.inputs).enumerate() {
        match buf {
            Some(buf) if buf.len() != n => {
                return Err(bad(&format!("input `{}`", decl.name), buf.len(), n))
            }
            None if !decl.optional || present[k] => {
                return Err(InterpError(format!(
                    "tensor {i}: input `{}` is missing",
                    decl.name
                )))
            }
            _ => {}
        }
    }
    for (s, decl) in tt.state.iter().zip(&rule.states) {
        match (s, decl.kind) {
            (StateBuf::Scalar(_), StateKind::Scalar) => {}
            (StateBuf::Element(v), StateKind::Element | StateKind::Array(..)) => {
                let want = state_len(decl.kind);
                if v.len() != want {
                    return Err(bad(&format!("state `{}`", decl.name), v.len(), want));
                }
            }
            _ => {
                return Err(InterpError(format!(
                    "tensor {i}: state `{}` has the wrong kind",
                    decl.name
                )))
            }
        }
    }
    Ok(())
}

/// Runs step `t` (1 for the first step) of `rule` over all `tensors`.
/// `present[k]` tells whether optional input `k` is supplied at this step
/// (the same for all tensors).
pub fn step<F: Float>(
    rule: &Rule,
    t: u64,
    present: &[bool],
    tensors: &mut [StepTensor<'_, F>],
) -> Result<(), InterpError> {
    if rule.is_matrix() {
        // Flat buffers carry no shape: each is the matrix 1 × n.
        let dims: Vec<crate::matrix::Dims> = tensors
            .iter()
            .map(|t| crate::matrix::Dims::flat(t.param.len()))
            .collect();
        return crate::matrix::step(rule, t, present, tensors, &dims, None);
    }
    validate(rule, present, tensors)?;
    let t = t as f64;
    let mut scalars: Vec<Scalars<'_>> = tensors
        .iter()
        .map(|tt| Scalars::new(rule, tt.hypers, t, present, tt.param.len(), tt.state))
        .collect();
    // Tensor-rate nodes in order: reductions are passes over the elements.
    let live = rule.reachable(&rule.step_roots());
    for (id, (&node, &alive)) in rule.nodes.iter().zip(&live).enumerate() {
        if !alive || node.rate != Rate::Tensor {
            continue;
        }
        let Op::Reduce(op, scope, arg) = node.op else {
            if !matches!(node.op, Op::Numel | Op::State(_)) {
                for sc in &mut scalars {
                    sc.eval_tensor_node(id);
                }
            }
            continue;
        };
        let needed = crate::schedule::element_nodes(rule, &[arg]);
        let accs: Vec<Acc> = tensors
            .iter()
            .zip(&scalars)
            .map(|(tt, sc)| {
                let mut ev: Vec<F> = sc.cast();
                let data = Elements {
                    param: tt.param,
                    grad: tt.grad,
                    inputs: &tt.inputs,
                    state: tt.state,
                };
                let mut acc = Acc::new();
                for e in 0..tt.param.len() {
                    eval_element(rule, &needed, &mut ev, &data, e);
                    acc.add(op, ev[arg.index()].to_f64());
                }
                acc
            })
            .collect();
        match scope {
            Scope::Tensor => {
                for (sc, acc) in scalars.iter_mut().zip(&accs) {
                    sc.values[id] = acc.finish(op);
                }
            }
            Scope::Global => {
                let mut total = Acc::new();
                for acc in &accs {
                    total.merge(*acc);
                }
                for sc in &mut scalars {
                    sc.values[id] = total.finish(op);
                }
            }
        }
    }
    // The element pass: new values from the old, then stored.
    let roots = rule.step_roots();
    let needed = crate::schedule::element_nodes(rule, &roots);
    for (tt, sc) in tensors.iter_mut().zip(&scalars) {
        let n = tt.param.len();
        let mut ev: Vec<F> = sc.cast();
        let mut new_param = vec![F::default(); n];
        let mut new_state: Vec<Vec<F>> = rule
            .states
            .iter()
            .map(|s| match s.kind {
                StateKind::Element => vec![F::default(); n],
                StateKind::Scalar | StateKind::Array(..) => Vec::new(),
            })
            .collect();
        {
            let data = Elements {
                param: tt.param,
                grad: tt.grad,
                inputs: &tt.inputs,
                state: tt.state,
            };
            for (e, new_p) in new_param.iter_mut().enumerate() {
                eval_element(rule, &needed, &mut ev, &data, e);
                *new_p = ev[rule.param_out.index()];
                for (s, out) in rule.state_out.iter().enumerate() {
                    if let Some(slot) = new_state[s].get_mut(e) {
                        *slot = ev[out.index()];
                    }
                }
            }
        }
        tt.param.copy_from_slice(&new_param);
        for (s, buf) in tt.state.iter_mut().enumerate() {
            match buf {
                StateBuf::Element(v) => v.copy_from_slice(&new_state[s]),
                StateBuf::Scalar(x) => *x = sc.values[rule.state_out[s].index()],
            }
        }
    }
    Ok(())
}

/// Creates the state of one tensor from its initial values.
/// For a matrix rule the parameter is the matrix `1 × n` (callers with a
/// shape use [`crate::matrix::init_state`]); a failure leaves no state,
/// which the step then refuses.
pub fn init_state<F: Float>(rule: &Rule, hypers: &[HyperValue], param: &[F]) -> Vec<StateBuf<F>> {
    if rule.is_matrix() {
        return crate::matrix::init_state(
            rule,
            hypers,
            param,
            crate::matrix::Dims::flat(param.len()),
        )
        .unwrap_or_default();
    }
    let roots: Vec<ValueId> = rule.states.iter().map(|s| s.init).collect();
    let sc = Scalars::new::<F>(
        rule,
        hypers,
        0.0,
        &vec![false; rule.inputs.len()],
        param.len(),
        &[],
    );
    let needed = crate::schedule::element_nodes(rule, &roots);
    let mut ev: Vec<F> = sc.cast();
    let mut bufs: Vec<StateBuf<F>> = rule
        .states
        .iter()
        .map(|s| match s.kind {
            StateKind::Element | StateKind::Array(..) => {
                StateBuf::Element(vec![F::default(); param.len()])
            }
            StateKind::Scalar => StateBuf::Scalar(sc.values[s.init.index()]),
        })
        .collect();
    let data = Elements {
        param,
        grad: &[],
        inputs: &[],
        state: &[],
    };
    for e in 0..param.len() {
        eval_element(rule, &needed, &mut ev, &data, e);
        for (buf, s) in bufs.iter_mut().zip(&rule.states) {
            if let StateBuf::Element(v) = buf {
                v[e] = ev[s.init.index()];
            }
        }
    }
    bufs
}

/// What the model sees of one parameter tensor before step `t` (the lens's
/// `get`): the rule's view, or `p` itself when it declares none.
pub fn view<F: Float>(
    rule: &Rule,
    t: u64,
    hypers: &[HyperValue],
    param: &[F],
    state: &[StateBuf<F>],
) -> Vec<F> {
    let Some(root) = rule.view else {
        return param.to_vec();
    };
    if rule.is_matrix() {
        return crate::matrix::view(
            rule,
            t,
            hypers,
            param,
            state,
            crate::matrix::Dims::flat(param.len()),
        )
        .unwrap_or_else(|_| param.to_vec());
    }
    let mut sc = Scalars::new(
        rule,
        hypers,
        t as f64,
        &vec![false; rule.inputs.len()],
        param.len(),
        state,
    );
    let live = rule.reachable(&[root]);
    for (id, (node, &alive)) in rule.nodes.iter().zip(&live).enumerate() {
        if alive && node.rate == Rate::Tensor && !matches!(node.op, Op::Numel | Op::State(_)) {
            sc.eval_tensor_node(id);
        }
    }
    let needed = crate::schedule::element_nodes(rule, &[root]);
    let mut ev: Vec<F> = sc.cast();
    let data = Elements {
        param,
        grad: &[],
        inputs: &[],
        state,
    };
    (0..param.len())
        .map(|e| {
            eval_element(rule, &needed, &mut ev, &data, e);
            ev[root.index()]
        })
        .collect()
}
