//! Building IR graphs: hash-consing and the type and rate of each new node.
//!
//! Used by the checker (from surface syntax) and by the optimizer (from
//! extracted e-graph terms), so both produce graphs with the same invariants.

use crate::rule::*;
use std::collections::HashMap;

/// An IR graph under construction: nodes in topological order, each distinct op once.
#[derive(Default)]
pub struct GraphBuilder {
    /// The nodes so far.
    pub nodes: Vec<Node>,
    dedup: HashMap<(u8, u64, u32, u32, u32), ValueId>,
    leaves: Option<LeafTypes>,
}

/// The type and rate of each kind of leaf of one rule.
struct LeafTypes {
    hypers: Vec<Ty>,
    states: Vec<Rate>,
}

impl LeafTypes {
    fn of(rule: &Rule) -> Self {
        LeafTypes {
            hypers: rule
                .hypers
                .iter()
                .map(|h| match h.default {
                    crate::HyperValue::Num(_) => Ty::Float,
                    crate::HyperValue::Bool(_) => Ty::Bool,
                })
                .collect(),
            states: rule
                .states
                .iter()
                .map(|s| match s.kind {
                    StateKind::Element => Rate::Element,
                    StateKind::Scalar => Rate::Tensor,
                })
                .collect(),
        }
    }

    fn of_leaf(&self, op: Op) -> (Ty, Rate) {
        match op {
            Op::Const(_) => (Ty::Float, Rate::Const),
            Op::ConstBool(_) => (Ty::Bool, Rate::Const),
            Op::Hyper(i) => (self.hypers[i as usize], Rate::Step),
            Op::Step => (Ty::Float, Rate::Step),
            Op::Present(_) => (Ty::Bool, Rate::Step),
            Op::Numel => (Ty::Float, Rate::Tensor),
            Op::Param | Op::Grad | Op::Input(_) => (Ty::Float, Rate::Element),
            Op::State(i) => (Ty::Float, self.states[i as usize]),
            interior => unreachable!("{interior:?} is not a leaf"),
        }
    }
}

/// Hash-consing key of an op (floats by their bits).
pub(crate) fn op_key(op: &Op) -> (u8, u64, u32, u32, u32) {
    match *op {
        Op::Const(x) => (0, x.to_bits(), 0, 0, 0),
        Op::ConstBool(b) => (1, b as u64, 0, 0, 0),
        Op::Hyper(i) => (2, i as u64, 0, 0, 0),
        Op::Step => (3, 0, 0, 0, 0),
        Op::Present(i) => (4, i as u64, 0, 0, 0),
        Op::Numel => (5, 0, 0, 0, 0),
        Op::Param => (6, 0, 0, 0, 0),
        Op::Grad => (7, 0, 0, 0, 0),
        Op::Input(i) => (8, i as u64, 0, 0, 0),
        Op::State(i) => (9, i as u64, 0, 0, 0),
        Op::Unary(u, a) => (10, u as u64, a.0, 0, 0),
        Op::Binary(b, x, y) => (11, b as u64, x.0, y.0, 0),
        Op::Select(c, a, b) => (12, 0, c.0, a.0, b.0),
        Op::Fma(a, b, c) => (13, 0, a.0, b.0, c.0),
        Op::Reduce(r, s, a) => (14, (r as u64) * 2 + s as u64, a.0, 0, 0),
    }
}

impl GraphBuilder {
    /// An empty builder that knows the leaf types and rates of `rule`
    /// (for [`GraphBuilder::add_like`]).
    pub fn for_rule(rule: &Rule) -> Self {
        GraphBuilder {
            nodes: Vec::new(),
            dedup: HashMap::new(),
            leaves: Some(LeafTypes::of(rule)),
        }
    }

    /// Adds any op: leaves take their type and rate from the rule given to
    /// [`GraphBuilder::for_rule`], interior nodes infer theirs.
    pub fn add_like(&mut self, op: Op) -> ValueId {
        if !op.args().is_empty() {
            return self.interior(op);
        }
        let (ty, rate) = self
            .leaves
            .as_ref()
            .expect("add_like needs a builder made by for_rule")
            .of_leaf(op);
        self.add(op, ty, rate)
    }

    /// Adds a node with an explicit type and rate (leaves), or returns the existing one.
    pub fn add(&mut self, op: Op, ty: Ty, rate: Rate) -> ValueId {
        let key = op_key(&op);
        if let Some(&id) = self.dedup.get(&key) {
            return id;
        }
        let id = ValueId(self.nodes.len() as u32);
        self.nodes.push(Node { op, ty, rate });
        self.dedup.insert(key, id);
        id
    }

    /// Adds an interior node, inferring its type and rate from its arguments.
    /// Leaves need [`GraphBuilder::add`], since their rate depends on the rule.
    pub fn interior(&mut self, op: Op) -> ValueId {
        let rate = op
            .args()
            .iter()
            .map(|a| self.nodes[a.index()].rate)
            .max()
            .unwrap_or(Rate::Const);
        let (ty, rate) = match op {
            Op::Unary(UnOp::Not, _) => (Ty::Bool, rate),
            Op::Unary(..) | Op::Fma(..) => (Ty::Float, rate),
            Op::Binary(b, ..) => (binary_result(b), rate),
            Op::Select(_, a, _) => (self.nodes[a.index()].ty, rate),
            Op::Reduce(..) => (Ty::Float, Rate::Tensor),
            leaf => unreachable!("leaf {leaf:?} passed to interior()"),
        };
        self.add(op, ty, rate)
    }
}

/// The type of the value an interior op computes, its arguments in `graph`.
pub fn result_type(graph: &GraphBuilder, op: &Op) -> Ty {
    match *op {
        Op::Unary(UnOp::Not, _) => Ty::Bool,
        Op::Binary(b, ..) => binary_result(b),
        Op::Select(_, a, _) => graph.nodes[a.index()].ty,
        _ => Ty::Float,
    }
}

/// The result type of a binary operation.
pub fn binary_result(op: BinOp) -> Ty {
    match op {
        BinOp::Add
        | BinOp::Sub
        | BinOp::Mul
        | BinOp::Div
        | BinOp::Pow
        | BinOp::Min
        | BinOp::Max => Ty::Float,
        BinOp::Lt
        | BinOp::Le
        | BinOp::Gt
        | BinOp::Ge
        | BinOp::Eq
        | BinOp::Ne
        | BinOp::And
        | BinOp::Or => Ty::Bool,
    }
}
