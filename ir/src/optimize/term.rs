//! The e-graph's language (one term per IR operation, constants by their
//! bits), its analysis (constant folding in f64 as the interpreter
//! computes, and the rate and type of every class) and the rate-aware
//! extraction cost.

use crate::interp::{eval_binary, eval_unary};
use crate::rule::*;
use egg::{define_language, Analysis, DidMerge, EGraph, Id, Language, Symbol};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A floating-point constant in the e-graph, compared by its bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Constant(u64);

impl Constant {
    pub(super) fn new(x: f64) -> Self {
        Constant(x.to_bits())
    }
    pub(super) fn value(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl FromStr for Constant {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        // Only plain decimal numbers: names such as `inf` stay symbols.
        if s.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            s.parse::<f64>().map(Constant::new).map_err(|_| ())
        } else {
            Err(())
        }
    }
}

impl fmt::Display for Constant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.value())
    }
}

define_language! {
    /// The IR's operations as an egg language. Leaves are symbols: `p`, `g`,
    /// `t`, `numel`, `true`, `false`, `hyper.I`, `present.I`, `input.I`, `state.I`.
    pub enum Term {
        "+" = Add([Id; 2]),
        "-" = Sub([Id; 2]),
        "*" = Mul([Id; 2]),
        "/" = Div([Id; 2]),
        "pow" = Pow([Id; 2]),
        "min" = Min([Id; 2]),
        "max" = Max([Id; 2]),
        "<" = Lt([Id; 2]),
        "<=" = Le([Id; 2]),
        ">" = Gt([Id; 2]),
        ">=" = Ge([Id; 2]),
        "==" = Eq([Id; 2]),
        "!=" = Ne([Id; 2]),
        "and" = And([Id; 2]),
        "or" = Or([Id; 2]),
        "neg" = Neg([Id; 1]),
        "sqrt" = Sqrt([Id; 1]),
        "rsqrt" = Rsqrt([Id; 1]),
        "abs" = Abs([Id; 1]),
        "sign" = Sign([Id; 1]),
        "exp" = Exp([Id; 1]),
        "exp_fma" = ExpFma([Id; 1]),
        "ln" = Ln([Id; 1]),
        "sigmoid" = Sigmoid([Id; 1]),
        "cos" = Cos([Id; 1]),
        "floor" = Floor([Id; 1]),
        "f32" = RoundF32([Id; 1]),
        "bf16" = RoundBf16([Id; 1]),
        "not" = Not([Id; 1]),
        "select" = Select([Id; 3]),
        "fma" = Fma([Id; 3]),
        "sum" = Sum([Id; 1]),
        "mean" = Mean([Id; 1]),
        "max_abs" = MaxAbs([Id; 1]),
        "norm" = Norm([Id; 1]),
        "count" = Count([Id; 1]),
        "global_sum" = GSum([Id; 1]),
        "global_mean" = GMean([Id; 1]),
        "global_max_abs" = GMaxAbs([Id; 1]),
        "global_norm" = GNorm([Id; 1]),
        "global_count" = GCount([Id; 1]),
        Num(Constant),
        Leaf(Symbol),
    }
}

/// Per-class facts: the constant value if known, the rate, the type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Facts {
    pub(super) konst: Option<f64>,
    pub(super) rate: Rate,
    pub(super) ty: Ty,
}

/// The analysis: constant folding plus rate and type of every class.
pub struct RuleAnalysis {
    pub(super) leaves: HashMap<Symbol, (Rate, Ty)>,
}

pub(super) fn fold(term: &Term, c: impl Fn(Id) -> Option<f64>) -> Option<f64> {
    let ch = term.children();
    match term {
        Term::Num(k) => Some(k.value()),
        // Folded only when every operand is constant: picking a constant
        // branch over an element-rate one would lower the rate (see the rules).
        Term::Select([k, a, b]) => {
            let (a, b) = (c(*a)?, c(*b)?);
            Some(if c(*k)? != 0.0 { a } else { b })
        }
        Term::Fma([a, b, d]) => Some(c(*a)?.mul_add(c(*b)?, c(*d)?)),
        _ => match super::translate::op_of(term)? {
            Ok(u) => Some(eval_unary(u, c(ch[0])?)),
            Err(b) => Some(eval_binary(b, c(ch[0])?, c(ch[1])?)),
        },
    }
}

pub(super) fn is_reduction(term: &Term) -> bool {
    matches!(
        term,
        Term::Sum(_)
            | Term::Mean(_)
            | Term::MaxAbs(_)
            | Term::Norm(_)
            | Term::Count(_)
            | Term::GSum(_)
            | Term::GMean(_)
            | Term::GMaxAbs(_)
            | Term::GNorm(_)
            | Term::GCount(_)
    )
}

pub(super) fn term_type(term: &Term, child: impl Fn(Id) -> Ty) -> Ty {
    match term {
        Term::Select([_, a, _]) => child(*a),
        _ => match super::translate::op_of(term) {
            Some(Ok(u)) => u.info().result,
            Some(Err(b)) => b.info().result,
            None => Ty::Float,
        },
    }
}

impl Analysis<Term> for RuleAnalysis {
    type Data = Facts;

    fn make(egraph: &mut EGraph<Term, Self>, term: &Term, _id: Id) -> Facts {
        if let Term::Leaf(s) = term {
            let (rate, ty) = egraph.analysis.leaves[s];
            let konst = match s.as_str() {
                "true" => Some(1.0),
                "false" => Some(0.0),
                _ => None,
            };
            return Facts { konst, rate, ty };
        }
        let facts = |id: Id| egraph[id].data;
        let rate = if is_reduction(term) {
            Rate::Tensor
        } else {
            term.children()
                .iter()
                .map(|c| facts(*c).rate)
                .max()
                .unwrap_or(Rate::Const)
        };
        let konst = if is_reduction(term) {
            None
        } else {
            fold(term, |c| facts(c).konst)
        };
        let rate = if konst.is_some() { Rate::Const } else { rate };
        Facts {
            konst,
            rate,
            ty: term_type(term, |c| facts(c).ty),
        }
    }

    fn merge(&mut self, to: &mut Facts, from: Facts) -> DidMerge {
        let mut changed_to = false;
        if to.konst.is_none() && from.konst.is_some() {
            to.konst = from.konst;
            changed_to = true;
        }
        if from.rate < to.rate {
            to.rate = from.rate;
            changed_to = true;
        }
        DidMerge(changed_to, true)
    }

    fn modify(egraph: &mut EGraph<Term, Self>, id: Id) {
        let facts = egraph[id].data;
        if let Some(value) = facts.konst {
            let node = match facts.ty {
                Ty::Bool => Term::Leaf(Symbol::from(if value != 0.0 { "true" } else { "false" })),
                Ty::Float => Term::Num(Constant::new(value)),
            };
            let added = egraph.add(node);
            egraph.union(id, added);
        }
    }
}

pub(super) type Graph = EGraph<Term, RuleAnalysis>;

impl Default for RuleAnalysis {
    fn default() -> Self {
        let mut leaves = HashMap::new();
        leaves.insert(Symbol::from("true"), (Rate::Const, Ty::Bool));
        leaves.insert(Symbol::from("false"), (Rate::Const, Ty::Bool));
        RuleAnalysis { leaves }
    }
}

pub(super) fn new_graph() -> Graph {
    EGraph::new(RuleAnalysis::default())
}

/// Extraction cost: operations weighted by how often they run.
pub(super) struct RateCost<'g> {
    pub(super) egraph: &'g Graph,
}

pub(super) fn op_cost(term: &Term) -> f64 {
    match term {
        Term::Num(_) | Term::Leaf(_) => 0.0,
        Term::Fma(_) => 1.2,
        _ => match super::translate::op_of(term) {
            Some(Ok(u)) => u.info().cost,
            Some(Err(b)) => b.info().cost,
            None => 1.0,
        },
    }
}

impl egg::CostFunction<Term> for RateCost<'_> {
    type Cost = f64;
    fn cost<C: FnMut(Id) -> f64>(&mut self, term: &Term, mut costs: C) -> f64 {
        let rate = if is_reduction(term) {
            Rate::Tensor
        } else {
            term.children()
                .iter()
                .map(|c| self.egraph[*c].data.rate)
                .max()
                .unwrap_or(Rate::Const)
        };
        let weight = match (term, rate) {
            (Term::Num(_) | Term::Leaf(_), _) => 0.0,
            (_, Rate::Const) => 0.01,
            (_, Rate::Step) => 1.0,
            (_, Rate::Tensor) => 2.0,
            (_, Rate::Element | Rate::Array(..)) => 1000.0,
        };
        term.children()
            .iter()
            .fold(weight * op_cost(term), |acc, c| acc + costs(*c))
    }
}
