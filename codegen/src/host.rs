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
        UnOp::Exp => a.exp(),
        UnOp::Ln => a.ln(),
        UnOp::Sigmoid => 1.0 / (1.0 + (-a).exp()),
        UnOp::Not => truth(a == 0.0),
    }
}

fn binary(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Pow => a.powf(b),
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
            Op::Param | Op::Grad | Op::Input(_) => f64::NAN,
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
