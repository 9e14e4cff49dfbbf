//! The host's part of a compiled step, shared by every compiled backend
//! (the CPU JIT and the GPU stepper): the per-step and per-tensor scalars
//! in f64, and the combining and finishing of reduction partials.
//!
//! This is production code, written independently of the reference
//! interpreter (`lensopt_ir::interp`), so that the differential tests
//! compare two implementations of the scalar semantics rather than one
//! with itself: f64 throughout, `min`/`max` IEEE 754-2019 (NaN-propagating,
//! -0 below +0), `sign(0) = 0` with NaN kept, booleans as 0 and 1.

use lensopt_ir::{BinOp, HyperValue, Op, Rate, ReduceOp, Rule, UnOp};

/// IEEE 754-2019 `maximum` on f64.
fn maximum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a > b || (a == b && b.is_sign_negative()) {
        a
    } else {
        b
    }
}

/// IEEE 754-2019 `minimum` on f64.
fn minimum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a < b || (a == b && a.is_sign_negative()) {
        a
    } else {
        b
    }
}

fn truth(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn unary(op: UnOp, a: f64) -> f64 {
    match op {
        UnOp::Neg => -a,
        UnOp::Sqrt => a.sqrt(),
        UnOp::Rsqrt => 1.0 / a.sqrt(),
        UnOp::Abs => a.abs(),
        UnOp::Sign if a > 0.0 => 1.0,
        UnOp::Sign if a < 0.0 => -1.0,
        UnOp::Sign => a,
        UnOp::Exp => lensopt_ir::elementary::exp_f64(a),
        UnOp::ExpFma => lensopt_ir::elementary::exp_fma_f64(a),
        UnOp::Ln => a.ln(),
        UnOp::Sigmoid => 1.0 / (1.0 + lensopt_ir::elementary::exp_f64(-a)),
        UnOp::Cos => a.cos(),
        UnOp::Floor => a.floor(),
        UnOp::RoundF32 => f64::from(a as f32),
        UnOp::RoundBf16 => f64::from(lensopt_ir::float::bf16_of_f32(a as f32)),
        UnOp::Not => truth(a == 0.0),
    }
}

fn binary(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Pow => lensopt_ir::elementary::pow_f64(a, b),
        BinOp::Min => minimum(a, b),
        BinOp::Max => maximum(a, b),
        BinOp::Lt => truth(a < b),
        BinOp::Le => truth(a <= b),
        BinOp::Gt => truth(a > b),
        BinOp::Ge => truth(a >= b),
        BinOp::Eq => truth(a == b),
        BinOp::Ne => truth(a != b),
        BinOp::And => truth(a != 0.0 && b != 0.0),
        BinOp::Or => truth(a != 0.0 || b != 0.0),
    }
}

/// Evaluates the const- and step-rate values of `rule` (and, with
/// `per_tensor`, the tensor-rate ones of one tensor of `numel` elements)
/// in f64, into `values` (indexed by node). Entries of `Reduce` nodes must
/// already hold the reductions' results (NaN while unknown: what depends on
/// them comes out NaN and is computed again after the next pass).
/// `scalar_state` holds each state's value for scalar states.
#[allow(clippy::too_many_arguments)]
pub fn scalar_values(
    rule: &Rule,
    hypers: &[HyperValue],
    t: u64,
    present: &[bool],
    numel: usize,
    scalar_state: &[f64],
    per_tensor: bool,
    values: &mut [f64],
) {
    for (i, node) in rule.nodes.iter().enumerate() {
        if node.rate == Rate::Element || (node.rate == Rate::Tensor && !per_tensor) {
            continue;
        }
        let v = |x: lensopt_ir::ValueId| values[x.index()];
        values[i] = match node.op {
            Op::Const(x) => x,
            Op::ConstBool(b) => truth(b),
            Op::Hyper(h) => match hypers.get(h as usize) {
                Some(HyperValue::Num(x)) => *x,
                Some(HyperValue::Bool(b)) => truth(*b),
                None => f64::NAN,
            },
            Op::Step => t as f64,
            Op::Present(k) => truth(present.get(k as usize).copied().unwrap_or(false)),
            Op::Numel => numel as f64,
            Op::State(s) => scalar_state.get(s as usize).copied().unwrap_or(f64::NAN),
            Op::Reduce(..) => values[i],
            Op::Unary(u, a) => unary(u, v(a)),
            Op::Binary(b, x, y) => binary(b, v(x), v(y)),
            Op::Select(c, a, b) => {
                if v(c) != 0.0 {
                    v(a)
                } else {
                    v(b)
                }
            }
            Op::Fma(a, b, c) => v(a).mul_add(v(b), v(c)),
            // Element values, and matrix operations (matrix rules never
            // reach a compiled backend: `Schedule::check_budget` refuses them).
            Op::Param
            | Op::Grad
            | Op::Input(_)
            | Op::Extent(_)
            | Op::Rank
            | Op::Eye(_)
            | Op::MachineEps
            | Op::ReduceAxis(..)
            | Op::Matmul(..)
            | Op::Transpose(_)
            | Op::MatFn(..)
            | Op::Linalg(..)
            | Op::Shape(..) => f64::NAN,
        };
    }
}

/// Two partial results of reduction `op` over disjoint elements, in f64:
/// how chunks, blocks and tensors are combined.
pub fn combine_partials(op: ReduceOp, a: f64, b: f64) -> f64 {
    match op {
        ReduceOp::MaxAbs => maximum(a, b),
        ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Norm | ReduceOp::Count => a + b,
    }
}

/// The value of reduction `op` from its combined partial over `numel` elements.
pub fn finish_reduction(op: ReduceOp, acc: f64, numel: usize) -> f64 {
    match op {
        ReduceOp::Sum | ReduceOp::Count | ReduceOp::MaxAbs => acc,
        ReduceOp::Mean => acc / numel as f64,
        ReduceOp::Norm => acc.sqrt(),
    }
}

/// The step-level facts the phase driver needs.
pub struct StepFacts<'a> {
    /// The step counter (1 on the first step).
    pub t: u64,
    /// Whether each optional input is present.
    pub present: &'a [bool],
    /// Hyperparameters of each group.
    pub group_hypers: &'a [Vec<HyperValue>],
    /// Group of each tensor.
    pub group_of: &'a [usize],
    /// Elements of each tensor.
    pub numels: &'a [usize],
}

/// A compiled backend as the phase driver sees it: it runs one pass of the
/// schedule over every tensor, the host doing everything else.
pub trait PassRunner {
    /// Runs reduction pass `pass` of the schedule over every tensor, tensor
    /// `k` reading the scalar values `values[k]` (indexed by node). Returns,
    /// per tensor, the partial of each of the pass's reductions, combined
    /// over the tensor with [`combine_partials`] in a fixed order.
    fn reduce(&mut self, pass: usize, values: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String>;

    /// Runs the element pass, tensor `k` reading the scalar values
    /// `values[value_of[k]]` (one set per group, or per tensor when the rule
    /// has per-tensor scalars).
    fn element(&mut self, values: &[&[f64]], value_of: &[usize]) -> Result<(), String>;
}

/// One step of `schedule`, in phases: the per-step scalars of every group,
/// the per-tensor scalars, each reduction pass (its partials combined per
/// tensor, then over tensors in order for global reductions, finished, and
/// the scalars that depend on them computed again), the element pass, and
/// the new scalar states written back into `scalar_state`.
pub fn drive(
    schedule: &lensopt_ir::schedule::Schedule,
    facts: &StepFacts<'_>,
    scalar_state: &mut [Vec<f64>],
    runner: &mut impl PassRunner,
) -> Result<(), String> {
    let rule = &schedule.rule;
    let tensors = facts.numels.len();
    if facts.group_of.len() != tensors || scalar_state.len() != tensors {
        return Err("one group and one scalar-state vector per tensor are needed".into());
    }
    let group_values: Vec<Vec<f64>> = facts
        .group_hypers
        .iter()
        .map(|h| {
            let mut v = vec![f64::NAN; rule.nodes.len()];
            scalar_values(rule, h, facts.t, facts.present, 0, &[], false, &mut v);
            v
        })
        .collect();
    let tensor_scalars = |k: usize, values: &mut Vec<f64>, state: &[f64]| {
        let g = facts.group_of[k];
        scalar_values(
            rule,
            &facts.group_hypers[g],
            facts.t,
            facts.present,
            facts.numels[k],
            state,
            true,
            values,
        );
    };
    let per_tensor = schedule.per_tensor_scalars;
    let mut tensor_values: Vec<Vec<f64>> = Vec::new();
    if per_tensor {
        for k in 0..tensors {
            let mut v = group_values[facts.group_of[k]].clone();
            tensor_scalars(k, &mut v, &scalar_state[k]);
            tensor_values.push(v);
        }
    }
    for (p, pass) in schedule.passes.iter().enumerate() {
        let partials = runner.reduce(p, &tensor_values)?;
        for (r, id) in pass.iter().enumerate() {
            let Op::Reduce(op, scope, _) = rule.node(*id).op else {
                unreachable!("passes hold reductions")
            };
            match scope {
                lensopt_ir::Scope::Tensor => {
                    for k in 0..tensors {
                        tensor_values[k][id.index()] =
                            finish_reduction(op, partials[k][r], facts.numels[k]);
                    }
                }
                lensopt_ir::Scope::Global => {
                    let all = partials
                        .iter()
                        .fold(0.0, |acc, x| combine_partials(op, acc, x[r]));
                    let numel = facts.numels.iter().sum();
                    for v in tensor_values.iter_mut() {
                        v[id.index()] = finish_reduction(op, all, numel);
                    }
                }
            }
        }
        for (k, v) in tensor_values.iter_mut().enumerate() {
            tensor_scalars(k, v, &scalar_state[k]);
        }
    }
    let (values, value_of): (Vec<&[f64]>, Vec<usize>) = if per_tensor {
        (
            tensor_values.iter().map(Vec::as_slice).collect(),
            (0..tensors).collect(),
        )
    } else {
        (
            group_values.iter().map(Vec::as_slice).collect(),
            facts.group_of.to_vec(),
        )
    };
    runner.element(&values, &value_of)?;
    for (k, state) in scalar_state.iter_mut().enumerate() {
        for (i, s) in rule.states.iter().enumerate() {
            if s.kind == lensopt_ir::StateKind::Scalar {
                state[i] = values[value_of[k]][rule.state_out[i].index()];
            }
        }
    }
    Ok(())
}
