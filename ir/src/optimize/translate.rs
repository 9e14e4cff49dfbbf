//! Translation between the IR and the e-graph: lowering a rule's nodes to
//! terms (with specialised hyperparameters and presence compiled in) and
//! raising extracted terms back to hash-consed IR nodes.

use super::term::{Constant, Graph, Term};
use crate::builder::GraphBuilder;
use crate::hyper::HyperValue;
use crate::rule::*;
use egg::{Id, RecExpr, Symbol};
use std::collections::HashMap;

/// How leaves are named in the e-graph.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Naming {
    /// By index (`hyper.3`): for optimizing one rule.
    Index,
    /// By declared name (`hyper.lr`): for comparing two rules.
    Name,
}

/// Translates a rule's IR into e-graph terms.
pub(super) struct Lowering<'r> {
    pub(super) rule: &'r Rule,
    pub(super) naming: Naming,
    pub(super) specialize: &'r [Option<HyperValue>],
    pub(super) present: &'r [Option<bool>],
}

impl Lowering<'_> {
    pub(super) fn leaf_name(&self, op: &Op) -> String {
        let r = self.rule;
        let by = |kind: &str, index: u16, name: &str| match self.naming {
            Naming::Index => format!("{kind}.{index}"),
            Naming::Name => format!("{kind}.{name}"),
        };
        match *op {
            Op::Param => "p".into(),
            Op::Grad => "g".into(),
            Op::Step => "t".into(),
            Op::Numel => "numel".into(),
            Op::ConstBool(b) => b.to_string(),
            Op::Hyper(i) => by("hyper", i, &r.hypers[i as usize].name),
            Op::Present(i) => by("present", i, &r.inputs[i as usize].name),
            Op::Input(i) => by("input", i, &r.inputs[i as usize].name),
            Op::State(i) => by("state", i, &r.states[i as usize].name),
            _ => unreachable!("not a leaf"),
        }
    }

    /// Adds every node to `egraph`; returns the class of each node.
    pub(super) fn lower(&self, egraph: &mut Graph) -> Vec<Id> {
        let mut ids: Vec<Id> = Vec::with_capacity(self.rule.nodes.len());
        for node in &self.rule.nodes {
            let c = |v: ValueId| ids[v.index()];
            let term = match node.op {
                Op::Const(x) => Term::Num(Constant::new(x)),
                Op::Hyper(i) if self.specialize.get(i as usize).copied().flatten().is_some() => {
                    match self.specialize[i as usize] {
                        Some(HyperValue::Num(x)) => Term::Num(Constant::new(x)),
                        Some(HyperValue::Bool(b)) => Term::Leaf(Symbol::from(b.to_string())),
                        None => unreachable!(),
                    }
                }
                Op::Present(i) if self.present.get(i as usize).copied().flatten().is_some() => {
                    Term::Leaf(Symbol::from(
                        self.present[i as usize].unwrap_or(true).to_string(),
                    ))
                }
                Op::Input(i) if self.present.get(i as usize).copied().flatten() == Some(false) => {
                    Term::Num(Constant::new(0.0))
                }
                Op::Unary(u, a) => {
                    let a = [c(a)];
                    match u {
                        UnOp::Neg => Term::Neg(a),
                        UnOp::Sqrt => Term::Sqrt(a),
                        UnOp::Rsqrt => Term::Rsqrt(a),
                        UnOp::Abs => Term::Abs(a),
                        UnOp::Sign => Term::Sign(a),
                        UnOp::Exp => Term::Exp(a),
                        UnOp::Ln => Term::Ln(a),
                        UnOp::Sigmoid => Term::Sigmoid(a),
                        UnOp::Not => Term::Not(a),
                    }
                }
                Op::Binary(b, x, y) => {
                    let a = [c(x), c(y)];
                    match b {
                        BinOp::Add => Term::Add(a),
                        BinOp::Sub => Term::Sub(a),
                        BinOp::Mul => Term::Mul(a),
                        BinOp::Div => Term::Div(a),
                        BinOp::Pow => Term::Pow(a),
                        BinOp::Min => Term::Min(a),
                        BinOp::Max => Term::Max(a),
                        BinOp::Lt => Term::Lt(a),
                        BinOp::Le => Term::Le(a),
                        BinOp::Gt => Term::Gt(a),
                        BinOp::Ge => Term::Ge(a),
                        BinOp::Eq => Term::Eq(a),
                        BinOp::Ne => Term::Ne(a),
                        BinOp::And => Term::And(a),
                        BinOp::Or => Term::Or(a),
                    }
                }
                Op::Select(k, a, b) => Term::Select([c(k), c(a), c(b)]),
                Op::Fma(a, b, d) => Term::Fma([c(a), c(b), c(d)]),
                Op::Reduce(r, s, a) => {
                    let a = [c(a)];
                    match (r, s) {
                        (ReduceOp::Sum, Scope::Tensor) => Term::Sum(a),
                        (ReduceOp::Mean, Scope::Tensor) => Term::Mean(a),
                        (ReduceOp::MaxAbs, Scope::Tensor) => Term::MaxAbs(a),
                        (ReduceOp::Norm, Scope::Tensor) => Term::Norm(a),
                        (ReduceOp::Count, Scope::Tensor) => Term::Count(a),
                        (ReduceOp::Sum, Scope::Global) => Term::GSum(a),
                        (ReduceOp::Mean, Scope::Global) => Term::GMean(a),
                        (ReduceOp::MaxAbs, Scope::Global) => Term::GMaxAbs(a),
                        (ReduceOp::Norm, Scope::Global) => Term::GNorm(a),
                        (ReduceOp::Count, Scope::Global) => Term::GCount(a),
                    }
                }
                ref leaf => {
                    let name = Symbol::from(self.leaf_name(leaf));
                    egraph.analysis.leaves.insert(name, (node.rate, node.ty));
                    Term::Leaf(name)
                }
            };
            ids.push(egraph.add(term));
        }
        ids
    }
}

/// Rebuilds IR nodes from extracted terms.
pub(super) struct Raising<'r> {
    rule: &'r Rule,
    pub(super) graph: GraphBuilder,
    leaves: HashMap<String, Op>,
}

impl<'r> Raising<'r> {
    pub(super) fn new(rule: &'r Rule) -> Self {
        let lowering = Lowering {
            rule,
            naming: Naming::Index,
            specialize: &[],
            present: &[],
        };
        let leaves = rule
            .nodes
            .iter()
            .filter(|n| n.op.args().is_empty() && !matches!(n.op, Op::Const(_)))
            .map(|n| (lowering.leaf_name(&n.op), n.op))
            .chain([
                ("true".to_string(), Op::ConstBool(true)),
                ("false".to_string(), Op::ConstBool(false)),
            ])
            .collect();
        Raising {
            rule,
            graph: GraphBuilder::default(),
            leaves,
        }
    }

    pub(super) fn leaf(&mut self, op: Op) -> ValueId {
        let (ty, rate) = match op {
            Op::Const(_) => (Ty::Float, Rate::Const),
            Op::ConstBool(_) => (Ty::Bool, Rate::Const),
            Op::Hyper(i) => match self.rule.hypers[i as usize].default {
                HyperValue::Num(_) => (Ty::Float, Rate::Step),
                HyperValue::Bool(_) => (Ty::Bool, Rate::Step),
            },
            Op::Step => (Ty::Float, Rate::Step),
            Op::Present(_) => (Ty::Bool, Rate::Step),
            Op::Numel => (Ty::Float, Rate::Tensor),
            Op::Param | Op::Grad | Op::Input(_) => (Ty::Float, Rate::Element),
            Op::State(i) => match self.rule.states[i as usize].kind {
                StateKind::Element => (Ty::Float, Rate::Element),
                StateKind::Scalar => (Ty::Float, Rate::Tensor),
            },
            _ => unreachable!("not a leaf"),
        };
        self.graph.add(op, ty, rate)
    }

    pub(super) fn raise(&mut self, expr: &RecExpr<Term>) -> ValueId {
        let mut vals: Vec<ValueId> = Vec::with_capacity(expr.len());
        for term in expr.iter() {
            let v = |i: &Id| vals[usize::from(*i)];
            let op = match term {
                Term::Num(k) => {
                    let id = self.leaf(Op::Const(k.value()));
                    vals.push(id);
                    continue;
                }
                Term::Leaf(s) => {
                    let op = self.leaves[s.as_str()];
                    let id = self.leaf(op);
                    vals.push(id);
                    continue;
                }
                Term::Add([a, b]) => Op::Binary(BinOp::Add, v(a), v(b)),
                Term::Sub([a, b]) => Op::Binary(BinOp::Sub, v(a), v(b)),
                Term::Mul([a, b]) => Op::Binary(BinOp::Mul, v(a), v(b)),
                Term::Div([a, b]) => Op::Binary(BinOp::Div, v(a), v(b)),
                Term::Pow([a, b]) => Op::Binary(BinOp::Pow, v(a), v(b)),
                Term::Min([a, b]) => Op::Binary(BinOp::Min, v(a), v(b)),
                Term::Max([a, b]) => Op::Binary(BinOp::Max, v(a), v(b)),
                Term::Lt([a, b]) => Op::Binary(BinOp::Lt, v(a), v(b)),
                Term::Le([a, b]) => Op::Binary(BinOp::Le, v(a), v(b)),
                Term::Gt([a, b]) => Op::Binary(BinOp::Gt, v(a), v(b)),
                Term::Ge([a, b]) => Op::Binary(BinOp::Ge, v(a), v(b)),
                Term::Eq([a, b]) => Op::Binary(BinOp::Eq, v(a), v(b)),
                Term::Ne([a, b]) => Op::Binary(BinOp::Ne, v(a), v(b)),
                Term::And([a, b]) => Op::Binary(BinOp::And, v(a), v(b)),
                Term::Or([a, b]) => Op::Binary(BinOp::Or, v(a), v(b)),
                Term::Neg([a]) => Op::Unary(UnOp::Neg, v(a)),
                Term::Sqrt([a]) => Op::Unary(UnOp::Sqrt, v(a)),
                Term::Rsqrt([a]) => Op::Unary(UnOp::Rsqrt, v(a)),
                Term::Abs([a]) => Op::Unary(UnOp::Abs, v(a)),
                Term::Sign([a]) => Op::Unary(UnOp::Sign, v(a)),
                Term::Exp([a]) => Op::Unary(UnOp::Exp, v(a)),
                Term::Ln([a]) => Op::Unary(UnOp::Ln, v(a)),
                Term::Sigmoid([a]) => Op::Unary(UnOp::Sigmoid, v(a)),
                Term::Not([a]) => Op::Unary(UnOp::Not, v(a)),
                Term::Select([k, a, b]) => Op::Select(v(k), v(a), v(b)),
                Term::Fma([a, b, c]) => Op::Fma(v(a), v(b), v(c)),
                Term::Sum([a]) => Op::Reduce(ReduceOp::Sum, Scope::Tensor, v(a)),
                Term::Mean([a]) => Op::Reduce(ReduceOp::Mean, Scope::Tensor, v(a)),
                Term::MaxAbs([a]) => Op::Reduce(ReduceOp::MaxAbs, Scope::Tensor, v(a)),
                Term::Norm([a]) => Op::Reduce(ReduceOp::Norm, Scope::Tensor, v(a)),
                Term::Count([a]) => Op::Reduce(ReduceOp::Count, Scope::Tensor, v(a)),
                Term::GSum([a]) => Op::Reduce(ReduceOp::Sum, Scope::Global, v(a)),
                Term::GMean([a]) => Op::Reduce(ReduceOp::Mean, Scope::Global, v(a)),
                Term::GMaxAbs([a]) => Op::Reduce(ReduceOp::MaxAbs, Scope::Global, v(a)),
                Term::GNorm([a]) => Op::Reduce(ReduceOp::Norm, Scope::Global, v(a)),
                Term::GCount([a]) => Op::Reduce(ReduceOp::Count, Scope::Global, v(a)),
            };
            vals.push(self.graph.interior(op));
        }
        *vals.last().expect("a non-empty term")
    }
}
