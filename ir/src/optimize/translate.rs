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
                op @ (Op::Unary(..)
                | Op::Binary(..)
                | Op::Select(..)
                | Op::Fma(..)
                | Op::Reduce(..)) => term_of(op, c),
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
pub(super) struct Raising {
    pub(super) graph: GraphBuilder,
    leaves: HashMap<String, Op>,
}

impl Raising {
    pub(super) fn new(rule: &Rule) -> Self {
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
            graph: GraphBuilder::for_rule(rule),
            leaves,
        }
    }

    pub(super) fn leaf(&mut self, op: Op) -> ValueId {
        self.graph.add_like(op)
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
                interior => op_of_term(interior, |i| v(&i)),
            };
            vals.push(self.graph.interior(op));
        }
        *vals.last().expect("a non-empty term")
    }
}

/// The term of an interior IR operation, its arguments' classes given by `c`.
/// With [`op_of_term`], the one place that pairs IR operations with terms.
pub(super) fn term_of(op: Op, c: impl Fn(ValueId) -> Id) -> Term {
    match op {
        Op::Unary(u, a) => {
            let a = [c(a)];
            match u {
                UnOp::Neg => Term::Neg(a),
                UnOp::Sqrt => Term::Sqrt(a),
                UnOp::Rsqrt => Term::Rsqrt(a),
                UnOp::Abs => Term::Abs(a),
                UnOp::Sign => Term::Sign(a),
                UnOp::Exp => Term::Exp(a),
                UnOp::ExpFma => Term::ExpFma(a),
                UnOp::Ln => Term::Ln(a),
                UnOp::Sigmoid => Term::Sigmoid(a),
                UnOp::Cos => Term::Cos(a),
                UnOp::Floor => Term::Floor(a),
                UnOp::RoundF32 => Term::RoundF32(a),
                UnOp::RoundBf16 => Term::RoundBf16(a),
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
        leaf => unreachable!("{leaf:?} is a leaf"),
    }
}

/// The interior IR operation of a term (not a number or leaf), its
/// children's values given by `v`.
pub(super) fn op_of_term(term: &Term, v: impl Fn(Id) -> ValueId) -> Op {
    let un = |u: UnOp, [a]: &[Id; 1]| Op::Unary(u, v(*a));
    let bin = |b: BinOp, [x, y]: &[Id; 2]| Op::Binary(b, v(*x), v(*y));
    let red = |r: ReduceOp, s: Scope, [a]: &[Id; 1]| Op::Reduce(r, s, v(*a));
    match term {
        Term::Add(a) => bin(BinOp::Add, a),
        Term::Sub(a) => bin(BinOp::Sub, a),
        Term::Mul(a) => bin(BinOp::Mul, a),
        Term::Div(a) => bin(BinOp::Div, a),
        Term::Pow(a) => bin(BinOp::Pow, a),
        Term::Min(a) => bin(BinOp::Min, a),
        Term::Max(a) => bin(BinOp::Max, a),
        Term::Lt(a) => bin(BinOp::Lt, a),
        Term::Le(a) => bin(BinOp::Le, a),
        Term::Gt(a) => bin(BinOp::Gt, a),
        Term::Ge(a) => bin(BinOp::Ge, a),
        Term::Eq(a) => bin(BinOp::Eq, a),
        Term::Ne(a) => bin(BinOp::Ne, a),
        Term::And(a) => bin(BinOp::And, a),
        Term::Or(a) => bin(BinOp::Or, a),
        Term::Neg(a) => un(UnOp::Neg, a),
        Term::Sqrt(a) => un(UnOp::Sqrt, a),
        Term::Rsqrt(a) => un(UnOp::Rsqrt, a),
        Term::Abs(a) => un(UnOp::Abs, a),
        Term::Sign(a) => un(UnOp::Sign, a),
        Term::Exp(a) => un(UnOp::Exp, a),
        Term::ExpFma(a) => un(UnOp::ExpFma, a),
        Term::Ln(a) => un(UnOp::Ln, a),
        Term::Sigmoid(a) => un(UnOp::Sigmoid, a),
        Term::Cos(a) => un(UnOp::Cos, a),
        Term::Floor(a) => un(UnOp::Floor, a),
        Term::RoundF32(a) => un(UnOp::RoundF32, a),
        Term::RoundBf16(a) => un(UnOp::RoundBf16, a),
        Term::Not(a) => un(UnOp::Not, a),
        Term::Select([k, a, b]) => Op::Select(v(*k), v(*a), v(*b)),
        Term::Fma([a, b, c]) => Op::Fma(v(*a), v(*b), v(*c)),
        Term::Sum(a) => red(ReduceOp::Sum, Scope::Tensor, a),
        Term::Mean(a) => red(ReduceOp::Mean, Scope::Tensor, a),
        Term::MaxAbs(a) => red(ReduceOp::MaxAbs, Scope::Tensor, a),
        Term::Norm(a) => red(ReduceOp::Norm, Scope::Tensor, a),
        Term::Count(a) => red(ReduceOp::Count, Scope::Tensor, a),
        Term::GSum(a) => red(ReduceOp::Sum, Scope::Global, a),
        Term::GMean(a) => red(ReduceOp::Mean, Scope::Global, a),
        Term::GMaxAbs(a) => red(ReduceOp::MaxAbs, Scope::Global, a),
        Term::GNorm(a) => red(ReduceOp::Norm, Scope::Global, a),
        Term::GCount(a) => red(ReduceOp::Count, Scope::Global, a),
        Term::Num(_) | Term::Leaf(_) => unreachable!("{term:?} is not an operation"),
    }
}

/// The unary (`Ok`) or binary (`Err`) operation of a term, if it is one.
pub(super) fn op_of(term: &Term) -> Option<Result<UnOp, BinOp>> {
    match term {
        Term::Num(_) | Term::Leaf(_) => None,
        _ => match op_of_term(term, |_| ValueId(0)) {
            Op::Unary(u, _) => Some(Ok(u)),
            Op::Binary(b, ..) => Some(Err(b)),
            _ => None,
        },
    }
}
