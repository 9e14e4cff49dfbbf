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
//!      an element's `exp` (and `sigmoid`'s) becomes `exp_fma`,
//!      and `x + 0 = x`, `x * 0 = 0` (as a disabled term, even for non-finite x);
//! 4. **extraction** with a rate-aware cost: an operation per element costs
//!    about a thousand times one per step, so work moves out of the loop.
//!
//! CSE is inherent (e-graphs and the IR are hash-consed). Node and iteration
//! limits bound the search; egg is deterministic, so the output is too.
//! The conformance tests hold in both modes.

mod equivalence;
mod rewrites;
mod term;
mod translate;

pub use equivalence::{equivalent, Equivalence};
pub use term::{Constant, Facts, RuleAnalysis, Term};

use crate::hyper::HyperValue;
use crate::interp::{eval_binary, eval_unary};
use crate::rule::*;
use egg::{Extractor, Runner};
use term::{new_graph, RateCost};
use translate::{Lowering, Naming, Raising};

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
    if rule.is_matrix() {
        return Optimized {
            rule: specialize_only(rule, options),
            fallback: Some(
                "a matrix rule is not given to the e-graph: it was only specialised and constant-folded"
                    .into(),
            ),
        };
    }
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
    let rules = rewrites::for_mode(options.mode);
    let runner = Runner::default()
        .with_scheduler(egg::SimpleScheduler)
        .with_egraph(egraph)
        .with_node_limit(options.node_limit)
        .with_iter_limit(options.iter_limit)
        .with_time_limit(options.time_limit)
        .run(rules);
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
