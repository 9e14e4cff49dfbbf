//! The e-graph optimizer (egg): rule IR in, cheaper rule IR out; and rule equivalence.
//!
//! What it does, in order:
//! 1. **specialisation**: hyperparameters fixed by [`Options::specialize`]
//!    (the runtime fixes every boolean switch and every numeric
//!    hyperparameter that is exactly 0) become constants, so a disabled
//!    branch (`amsgrad = false`, `weight_decay = 0`, `max_grad_norm = 0`)
//!    costs nothing, reductions included;
//! 2. **constant folding** as an e-class analysis, in f64, exactly as the
//!    interpreter computes constant and per-step values;
//! 3. **rewrites**, in two classes:
//!    - [`Mode::Exact`]: identities that are bit-exact under IEEE 754
//!      (`x * 1`, `x / 1`, `x - 0`, `select(true, a, b)`, boolean algebra),
//!      never lowering a value's rate (which would move it from element
//!      precision to the f64 of per-step values);
//!    - [`Mode::Fast`] (the default) adds value-changing ones: division of an
//!      element by a per-step or per-tensor value becomes multiplication by
//!      its reciprocal (computed once), two divisions by one element value
//!      become one, `a * b + c` becomes `fma`, scalar
//!      factors are gathered (`(x * s1) * s2 = x * (s1 * s2)`), `x ^ 2 = x * x`,
//!      and `x + 0 = x`, `x * 0 = 0` (as a disabled term, even for non-finite x);
//! 4. **extraction** with a rate-aware cost: an operation per element costs
//!    about a thousand times one per step, so work moves out of the loop.
//!
//! CSE is inherent (e-graphs and the IR are hash-consed). Node and iteration
//! limits bound the search; egg is deterministic, so the output is too.
//! The conformance tests hold in both modes.

use crate::builder::GraphBuilder;
use crate::hyper::HyperValue;
use crate::interp::{eval_binary, eval_unary};
use crate::rule::*;
use egg::{
    define_language, rewrite as rw, Analysis, DidMerge, EGraph, Extractor, Id, Language, RecExpr,
    Rewrite, Runner, Symbol,
};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A floating-point constant in the e-graph, compared by its bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Constant(u64);

impl Constant {
    fn new(x: f64) -> Self {
        Constant(x.to_bits())
    }
    fn value(self) -> f64 {
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
        "ln" = Ln([Id; 1]),
        "sigmoid" = Sigmoid([Id; 1]),
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

/// Which rewrites may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Only rewrites that give bit-identical results to the unoptimized rule.
    Exact,
    /// Also value-changing rewrites (reciprocals, fma, scalar reassociation),
    /// within the conformance tolerances. The default.
    #[default]
    Fast,
}

/// What to optimize for and how hard to try.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rewrite class.
    pub mode: Mode,
    /// Per hyperparameter, a value to compile in as a constant.
    pub specialize: Vec<Option<HyperValue>>,
    /// Per optional input, whether it is present (compiled in), if known.
    /// An absent input reads as 0.
    pub present: Vec<Option<bool>>,
    /// E-graph node limit.
    pub node_limit: usize,
    /// Rewrite iteration limit.
    pub iter_limit: usize,
    /// Wall-clock budget of the rewrites; when it runs out the best form
    /// found so far is extracted.
    pub time_limit: std::time::Duration,
    /// Rules with more nodes than this skip the e-graph: they are only
    /// specialised and constant-folded, in linear time (see [`Optimized`]).
    pub max_rule_nodes: usize,
}

impl Options {
    /// Default limits, no specialisation.
    pub fn new(mode: Mode) -> Self {
        Options {
            mode,
            specialize: Vec::new(),
            present: Vec::new(),
            node_limit: 10_000,
            iter_limit: 12,
            time_limit: std::time::Duration::from_secs(2),
            max_rule_nodes: 2_000,
        }
    }

    /// The runtime's specialisation for hyperparameter values `hypers`:
    /// booleans, and numbers that are exactly 0, become constants.
    pub fn specialized_for(mode: Mode, hypers: &[HyperValue]) -> Self {
        let mut options = Options::new(mode);
        options.specialize = hypers
            .iter()
            .map(|h| match h {
                HyperValue::Bool(_) => Some(*h),
                HyperValue::Num(x) if *x == 0.0 => Some(*h),
                HyperValue::Num(_) => None,
            })
            .collect();
        options
    }
}

/// Per-class facts: the constant value if known, the rate, the type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Facts {
    konst: Option<f64>,
    rate: Rate,
    ty: Ty,
}

/// The analysis: constant folding plus rate and type of every class.
pub struct RuleAnalysis {
    leaves: HashMap<Symbol, (Rate, Ty)>,
}

fn fold(term: &Term, c: impl Fn(Id) -> Option<f64>) -> Option<f64> {
    let un = |op: UnOp, a: &Id| Some(eval_unary(op, c(*a)?));
    let bin = |op: BinOp, [a, b]: &[Id; 2]| Some(eval_binary(op, c(*a)?, c(*b)?));
    match term {
        Term::Num(k) => Some(k.value()),
        Term::Add(x) => bin(BinOp::Add, x),
        Term::Sub(x) => bin(BinOp::Sub, x),
        Term::Mul(x) => bin(BinOp::Mul, x),
        Term::Div(x) => bin(BinOp::Div, x),
        Term::Pow(x) => bin(BinOp::Pow, x),
        Term::Min(x) => bin(BinOp::Min, x),
        Term::Max(x) => bin(BinOp::Max, x),
        Term::Lt(x) => bin(BinOp::Lt, x),
        Term::Le(x) => bin(BinOp::Le, x),
        Term::Gt(x) => bin(BinOp::Gt, x),
        Term::Ge(x) => bin(BinOp::Ge, x),
        Term::Eq(x) => bin(BinOp::Eq, x),
        Term::Ne(x) => bin(BinOp::Ne, x),
        Term::And(x) => bin(BinOp::And, x),
        Term::Or(x) => bin(BinOp::Or, x),
        Term::Neg([a]) => un(UnOp::Neg, a),
        Term::Sqrt([a]) => un(UnOp::Sqrt, a),
        Term::Rsqrt([a]) => un(UnOp::Rsqrt, a),
        Term::Abs([a]) => un(UnOp::Abs, a),
        Term::Sign([a]) => un(UnOp::Sign, a),
        Term::Exp([a]) => un(UnOp::Exp, a),
        Term::Ln([a]) => un(UnOp::Ln, a),
        Term::Sigmoid([a]) => un(UnOp::Sigmoid, a),
        Term::Not([a]) => un(UnOp::Not, a),
        // Folded only when every operand is constant: picking a constant
        // branch over an element-rate one would lower the rate (see the rules).
        Term::Select([k, a, b]) => {
            let (a, b) = (c(*a)?, c(*b)?);
            Some(if c(*k)? != 0.0 { a } else { b })
        }
        Term::Fma([a, b, d]) => Some(c(*a)?.mul_add(c(*b)?, c(*d)?)),
        _ => None,
    }
}

fn is_reduction(term: &Term) -> bool {
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

fn term_type(term: &Term, child: impl Fn(Id) -> Ty) -> Ty {
    match term {
        Term::Lt(_) | Term::Le(_) | Term::Gt(_) | Term::Ge(_) | Term::Eq(_) | Term::Ne(_) => {
            Ty::Bool
        }
        Term::And(_) | Term::Or(_) | Term::Not(_) => Ty::Bool,
        Term::Select([_, a, _]) => child(*a),
        _ => Ty::Float,
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

type Graph = EGraph<Term, RuleAnalysis>;

fn rate_is(
    var: &'static str,
    pred: fn(Rate) -> bool,
) -> impl Fn(&mut Graph, Id, &egg::Subst) -> bool {
    let var: egg::Var = var.parse().expect("pattern variable");
    move |egraph, _, subst| pred(egraph[subst[var]].data.rate)
}

/// The rate of `x` is at least that of `y`.
fn rate_at_least(x: &'static str, y: &'static str) -> impl Fn(&mut Graph, Id, &egg::Subst) -> bool {
    let x: egg::Var = x.parse().expect("pattern variable");
    let y: egg::Var = y.parse().expect("pattern variable");
    move |egraph, _, subst| egraph[subst[x]].data.rate >= egraph[subst[y]].data.rate
}

fn element(r: Rate) -> bool {
    r == Rate::Element
}

fn scalar(r: Rate) -> bool {
    r <= Rate::Tensor
}

fn exact_rules() -> Vec<Rewrite<Term, RuleAnalysis>> {
    vec![
        rw!("mul-one"; "(* ?x 1.0)" => "?x"),
        rw!("one-mul"; "(* 1.0 ?x)" => "?x"),
        rw!("div-one"; "(/ ?x 1.0)" => "?x"),
        rw!("sub-zero"; "(- ?x 0.0)" => "?x"),
        rw!("pow-one"; "(pow ?x 1.0)" => "?x"),
        rw!("neg-neg"; "(neg (neg ?x))" => "?x"),
        // A select may not hand back a value of a lower rate than it had:
        // per-step values are computed in f64, per-element ones in the element
        // type, so lowering the rate would change the rounding.
        rw!("select-true"; "(select true ?a ?b)" => "?a" if rate_at_least("?a", "?b")),
        rw!("select-false"; "(select false ?a ?b)" => "?b" if rate_at_least("?b", "?a")),
        rw!("select-same"; "(select ?c ?a ?a)" => "?a" if rate_at_least("?a", "?c")),
        rw!("select-not"; "(select (not ?c) ?a ?b)" => "(select ?c ?b ?a)"),
        rw!("and-true"; "(and ?x true)" => "?x"),
        rw!("true-and"; "(and true ?x)" => "?x"),
        // Dropping an element-rate operand would lower the rate (and, through
        // a select, change what precision a number is computed in).
        rw!("and-false"; "(and ?x false)" => "false" if rate_is("?x", scalar)),
        rw!("false-and"; "(and false ?x)" => "false" if rate_is("?x", scalar)),
        rw!("or-false"; "(or ?x false)" => "?x"),
        rw!("false-or"; "(or false ?x)" => "?x"),
        rw!("or-true"; "(or ?x true)" => "true" if rate_is("?x", scalar)),
        rw!("true-or"; "(or true ?x)" => "true" if rate_is("?x", scalar)),
        rw!("not-not"; "(not (not ?x))" => "?x"),
    ]
}

fn fast_rules() -> Vec<Rewrite<Term, RuleAnalysis>> {
    vec![
        rw!("and-false-any"; "(and ?x false)" => "false"),
        rw!("false-and-any"; "(and false ?x)" => "false"),
        rw!("or-true-any"; "(or ?x true)" => "true"),
        rw!("true-or-any"; "(or true ?x)" => "true"),
        rw!("select-true-any"; "(select true ?a ?b)" => "?a"),
        rw!("select-false-any"; "(select false ?a ?b)" => "?b"),
        rw!("select-same-any"; "(select ?c ?a ?a)" => "?a"),
        rw!("add-zero"; "(+ ?x 0.0)" => "?x"),
        rw!("zero-add"; "(+ 0.0 ?x)" => "?x"),
        rw!("mul-zero"; "(* ?x 0.0)" => "0.0"),
        rw!("zero-mul"; "(* 0.0 ?x)" => "0.0"),
        rw!("zero-div"; "(/ 0.0 ?x)" => "0.0"),
        rw!("pow-two"; "(pow ?x 2.0)" => "(* ?x ?x)"),
        rw!("div-by-scalar"; "(/ ?x ?s)" => "(* ?x (/ 1.0 ?s))"
            if rate_is("?x", element) if rate_is("?s", scalar)),
        rw!("gather-scalars-1"; "(* (* ?x ?a) ?b)" => "(* ?x (* ?a ?b))"
            if rate_is("?x", element) if rate_is("?a", scalar) if rate_is("?b", scalar)),
        rw!("gather-scalars-2"; "(* (* ?a ?x) ?b)" => "(* ?x (* ?a ?b))"
            if rate_is("?x", element) if rate_is("?a", scalar) if rate_is("?b", scalar)),
        rw!("gather-scalars-3"; "(* ?b (* ?a ?x))" => "(* ?x (* ?a ?b))"
            if rate_is("?x", element) if rate_is("?a", scalar) if rate_is("?b", scalar)),
        rw!("gather-scalars-4"; "(* ?b (* ?x ?a))" => "(* ?x (* ?a ?b))"
            if rate_is("?x", element) if rate_is("?a", scalar) if rate_is("?b", scalar)),
        // One division instead of two for a shared element denominator (Adan).
        rw!("common-denominator-add"; "(+ (/ ?a ?d) (/ ?b ?d))" => "(/ (+ ?a ?b) ?d)" if rate_is("?d", element)),
        rw!("common-denominator-sub"; "(- (/ ?a ?d) (/ ?b ?d))" => "(/ (- ?a ?b) ?d)" if rate_is("?d", element)),
        rw!("common-denominator-chain"; "(- (- ?p (/ ?a ?d)) (/ ?b ?d))" => "(- ?p (/ (+ ?a ?b) ?d))"
            if rate_is("?d", element)),
        rw!("fma-add"; "(+ (* ?a ?b) ?c)" => "(fma ?a ?b ?c)"),
        rw!("fma-add-rev"; "(+ ?c (* ?a ?b))" => "(fma ?a ?b ?c)"),
        rw!("fma-sub-left"; "(- ?c (* ?a ?b))" => "(fma (neg ?a) ?b ?c)" if rate_is("?a", scalar)),
        rw!("fma-sub-right"; "(- ?c (* ?a ?b))" => "(fma ?a (neg ?b) ?c)" if rate_is("?b", scalar)),
    ]
}

/// Rules that hold over the reals (not bit-exact), for proving equivalence.
fn algebra_rules() -> Vec<Rewrite<Term, RuleAnalysis>> {
    let mut rules = vec![
        rw!("comm-add"; "(+ ?a ?b)" => "(+ ?b ?a)"),
        rw!("comm-mul"; "(* ?a ?b)" => "(* ?b ?a)"),
        rw!("assoc-add"; "(+ (+ ?a ?b) ?c)" => "(+ ?a (+ ?b ?c))"),
        rw!("assoc-mul"; "(* (* ?a ?b) ?c)" => "(* ?a (* ?b ?c))"),
        rw!("sub-is-add-neg"; "(- ?a ?b)" => "(+ ?a (neg ?b))"),
        rw!("neg-mul"; "(neg (* ?a ?b))" => "(* (neg ?a) ?b)"),
        rw!("fma-is-mul-add"; "(fma ?a ?b ?c)" => "(+ (* ?a ?b) ?c)"),
        rw!("comm-min"; "(min ?a ?b)" => "(min ?b ?a)"),
        rw!("comm-max"; "(max ?a ?b)" => "(max ?b ?a)"),
        rw!("rsqrt-def"; "(rsqrt ?a)" => "(/ 1.0 (sqrt ?a))"),
    ];
    rules.extend(rw!("mul-div"; "(* ?a (/ ?b ?c))" <=> "(/ (* ?a ?b) ?c)"));
    rules.extend(rw!("div-mul"; "(* (/ ?a ?b) ?c)" <=> "(/ (* ?a ?c) ?b)"));
    rules.extend(rw!("div-div"; "(/ (/ ?a ?b) ?c)" <=> "(/ ?a (* ?b ?c))"));
    rules.extend(rw!("sqrt-div"; "(sqrt (/ ?a ?b))" <=> "(/ (sqrt ?a) (sqrt ?b))"));
    rules.extend(rw!("distribute"; "(* ?a (+ ?b ?c))" <=> "(+ (* ?a ?b) (* ?a ?c))"));
    rules.extend(rw!("sub-distribute"; "(* ?a (- ?b ?c))" <=> "(- (* ?a ?b) (* ?a ?c))"));
    rules
}

/// How leaves are named in the e-graph.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// By index (`hyper.3`): for optimizing one rule.
    Index,
    /// By declared name (`hyper.lr`): for comparing two rules.
    Name,
}

/// Translates a rule's IR into e-graph terms.
struct Lowering<'r> {
    rule: &'r Rule,
    naming: Naming,
    specialize: &'r [Option<HyperValue>],
    present: &'r [Option<bool>],
}

impl Lowering<'_> {
    fn leaf_name(&self, op: &Op) -> String {
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
    fn lower(&self, egraph: &mut Graph) -> Vec<Id> {
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

impl Default for RuleAnalysis {
    fn default() -> Self {
        let mut leaves = HashMap::new();
        leaves.insert(Symbol::from("true"), (Rate::Const, Ty::Bool));
        leaves.insert(Symbol::from("false"), (Rate::Const, Ty::Bool));
        RuleAnalysis { leaves }
    }
}

fn new_graph() -> Graph {
    EGraph::new(RuleAnalysis::default())
}

/// Extraction cost: operations weighted by how often they run.
struct RateCost<'g> {
    egraph: &'g Graph,
}

fn op_cost(term: &Term) -> f64 {
    match term {
        Term::Num(_) | Term::Leaf(_) => 0.0,
        Term::Div(_) | Term::Sqrt(_) => 4.0,
        Term::Rsqrt(_) => 5.0,
        Term::Fma(_) => 1.2,
        Term::Sign(_) => 2.0,
        Term::Pow(_) | Term::Exp(_) | Term::Ln(_) | Term::Sigmoid(_) => 20.0,
        _ => 1.0,
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
            (_, Rate::Element) => 1000.0,
        };
        term.children()
            .iter()
            .fold(weight * op_cost(term), |acc, c| acc + costs(*c))
    }
}

/// Rebuilds IR nodes from extracted terms.
struct Raising<'r> {
    rule: &'r Rule,
    graph: GraphBuilder,
    leaves: HashMap<String, Op>,
}

impl<'r> Raising<'r> {
    fn new(rule: &'r Rule) -> Self {
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

    fn leaf(&mut self, op: Op) -> ValueId {
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

    fn raise(&mut self, expr: &RecExpr<Term>) -> ValueId {
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

/// An optimized rule, and why the e-graph was skipped if it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimized {
    /// The rule to schedule.
    pub rule: Rule,
    /// `Some(reason)` when the rule was too large for the e-graph's budget
    /// and was only specialised and constant-folded.
    pub fallback: Option<String>,
}

/// Optimizes a rule. The result has the same interface (hyperparameters,
/// inputs, states) and computes the same update, exactly in [`Mode::Exact`]
/// and within the documented tolerances in [`Mode::Fast`].
pub fn optimize(rule: &Rule, options: &Options) -> Rule {
    optimize_report(rule, options).rule
}

/// [`optimize`], saying whether the budget made it fall back. A rule with
/// more than [`Options::max_rule_nodes`] nodes is not given to the e-graph
/// (whose extraction is superlinear in the depth of the graph): it is
/// specialised and its constants folded in one linear pass, exactly.
pub fn optimize_report(rule: &Rule, options: &Options) -> Optimized {
    if rule.nodes.len() > options.max_rule_nodes {
        return Optimized {
            rule: specialize_only(rule, options),
            fallback: Some(format!(
                "the rule has {} nodes, more than the e-graph's budget of {}: it was only specialised and constant-folded",
                rule.nodes.len(),
                options.max_rule_nodes
            )),
        };
    }
    Optimized {
        rule: saturate(rule, options),
        fallback: None,
    }
}

/// The linear fallback: specialisation (hyperparameters, presence, absent
/// inputs) and folding of nodes whose arguments are all constants, computed
/// in f64 as the interpreter does. Exact in every mode.
pub fn specialize_only(rule: &Rule, options: &Options) -> Rule {
    let specialized = |i: u16| options.specialize.get(i as usize).copied().flatten();
    let present = |i: u16| options.present.get(i as usize).copied().flatten();
    rule.clone().rebuild(|graph, op| {
        let op = match op {
            Op::Hyper(i) => match specialized(i) {
                Some(HyperValue::Num(x)) => Op::Const(x),
                Some(HyperValue::Bool(b)) => Op::ConstBool(b),
                None => op,
            },
            Op::Present(i) => present(i).map_or(op, Op::ConstBool),
            Op::Input(i) if present(i) == Some(false) => Op::Const(0.0),
            op => op,
        };
        let konst = |v: ValueId| match graph.nodes[v.index()].op {
            Op::Const(x) => Some(x),
            Op::ConstBool(b) => Some(f64::from(u8::from(b))),
            _ => None,
        };
        let folded = match op {
            Op::Unary(u, a) => konst(a).map(|a| eval_unary(u, a)),
            Op::Binary(b, x, y) => konst(x).zip(konst(y)).map(|(x, y)| eval_binary(b, x, y)),
            Op::Select(c, a, b) => match (konst(c), konst(a), konst(b)) {
                (Some(c), Some(a), Some(b)) => Some(if c != 0.0 { a } else { b }),
                _ => None,
            },
            Op::Fma(a, b, c) => match (konst(a), konst(b), konst(c)) {
                (Some(a), Some(b), Some(c)) => Some(a.mul_add(b, c)),
                _ => None,
            },
            _ => None,
        };
        match folded {
            Some(x) if op.args().is_empty() => unreachable!("leaves do not fold: {x}"),
            Some(x) => match crate::builder::result_type(graph, &op) {
                Ty::Float => graph.add(Op::Const(x), Ty::Float, Rate::Const),
                Ty::Bool => graph.add(Op::ConstBool(x != 0.0), Ty::Bool, Rate::Const),
            },
            None => graph.add_like(op),
        }
    })
}

/// The e-graph proper: saturation within the limits, then extraction.
fn saturate(rule: &Rule, options: &Options) -> Rule {
    let mut egraph = new_graph();
    let lowering = Lowering {
        rule,
        naming: Naming::Index,
        specialize: &options.specialize,
        present: &options.present,
    };
    let ids = lowering.lower(&mut egraph);
    let mut rules = exact_rules();
    if options.mode == Mode::Fast {
        rules.extend(fast_rules());
    }
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_node_limit(options.node_limit)
        .with_iter_limit(options.iter_limit)
        .with_time_limit(options.time_limit)
        .run(&rules);
    let egraph = runner.egraph;
    let extractor = Extractor::new(&egraph, RateCost { egraph: &egraph });
    let mut raising = Raising::new(rule);
    let mut raise = |v: ValueId| {
        let (_, best) = extractor.find_best(egraph.find(ids[v.index()]));
        raising.raise(&best)
    };
    // Roots in a fixed order, so the numbering is deterministic.
    let inits: Vec<ValueId> = rule.states.iter().map(|s| raise(s.init)).collect();
    let view = rule.view.map(&mut raise);
    let param_out = raise(rule.param_out);
    let state_out: Vec<ValueId> = rule.state_out.iter().map(|v| raise(*v)).collect();
    let mut out = Rule {
        nodes: std::mem::take(&mut raising.graph.nodes),
        view,
        param_out,
        state_out,
        ..rule.clone()
    };
    for (s, init) in out.states.iter_mut().zip(inits) {
        s.init = init;
    }
    out.compact()
}

/// What [`equivalent`] found out about two rules.
#[derive(Clone, Debug, PartialEq)]
pub enum Equivalence {
    /// The e-graph proved `p`, every state's new value and every initial
    /// value equal over the reals.
    Proved,
    /// The rules differ: a counterexample from the interpreter (or the
    /// interface that differs), in words.
    Different(String),
    /// Neither proved equal within the e-graph's limits nor told apart by
    /// the interpreter on random inputs.
    Unknown,
}

impl Equivalence {
    /// True for [`Equivalence::Proved`].
    pub fn is_proved(&self) -> bool {
        *self == Equivalence::Proved
    }
}

/// Whether two rules are the same update. The interfaces must match (the
/// same hyperparameter, input and state names and kinds); then the e-graph
/// tries to prove, using algebra over the reals (commutativity,
/// associativity, distributivity, `sqrt(a / b) = sqrt(a) / sqrt(b)` for
/// non-negative radicands), that the new `p`, every new state and every
/// initial value agree. Failing a proof, both rules run on the interpreter
/// (f64, declared defaults, random tensors, three steps) and a difference
/// beyond rounding is reported as a counterexample.
pub fn equivalent(a: &Rule, b: &Rule) -> Equivalence {
    let names = |r: &Rule| {
        let mut h: Vec<(String, String)> = r
            .hypers
            .iter()
            .map(|h| (h.name.clone(), h.default.kind().to_string()))
            .collect();
        h.sort();
        let mut s: Vec<String> = r
            .states
            .iter()
            .map(|s| format!("{}:{:?}", s.name, s.kind))
            .collect();
        s.sort();
        let mut i: Vec<String> = r
            .inputs
            .iter()
            .map(|i| format!("{}:{}", i.name, i.optional))
            .collect();
        i.sort();
        (h, s, i)
    };
    if names(a) != names(b) {
        return Equivalence::Different(
            "the rules declare different hyperparameters, inputs or states".into(),
        );
    }
    if proved_equal(a, b) {
        return Equivalence::Proved;
    }
    match crate::counterexample::search(a, b) {
        Some(found) => Equivalence::Different(found),
        None => Equivalence::Unknown,
    }
}

/// The e-graph half of [`equivalent`], for rules with the same interface.
fn proved_equal(a: &Rule, b: &Rule) -> bool {
    let mut egraph = new_graph();
    let ids_a = Lowering {
        rule: a,
        naming: Naming::Name,
        specialize: &[],
        present: &[],
    }
    .lower(&mut egraph);
    let ids_b = Lowering {
        rule: b,
        naming: Naming::Name,
        specialize: &[],
        present: &[],
    }
    .lower(&mut egraph);
    let mut pairs = vec![(ids_a[a.param_out.index()], ids_b[b.param_out.index()])];
    for (i, s) in a.states.iter().enumerate() {
        let j = b.state_index(&s.name).expect("same state names");
        pairs.push((ids_a[a.state_out[i].index()], ids_b[b.state_out[j].index()]));
        pairs.push((ids_a[s.init.index()], ids_b[b.states[j].init.index()]));
    }
    let mut rules = exact_rules();
    rules.extend(algebra_rules());
    let goals = pairs.clone();
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_node_limit(50_000)
        .with_iter_limit(30)
        // The node and iteration limits bound the search; the clock is only
        // a safety net, so that the answer does not depend on machine speed.
        .with_time_limit(std::time::Duration::from_secs(120))
        .with_hook(move |runner| {
            if goals
                .iter()
                .all(|(x, y)| runner.egraph.find(*x) == runner.egraph.find(*y))
            {
                Err("proved".to_string())
            } else {
                Ok(())
            }
        })
        .run(&rules);
    pairs
        .iter()
        .all(|(x, y)| runner.egraph.find(*x) == runner.egraph.find(*y))
}
