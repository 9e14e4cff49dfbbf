//! Whether two rules are the same update: proved by the e-graph with
//! algebra over the reals, refuted by an interpreter counterexample, or
//! unknown.

use super::rewrites::{algebra_rules, exact_rules};
use super::term::new_graph;
use super::translate::{Lowering, Naming};
use crate::rule::*;
use egg::Runner;

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
    // Matrix rules are not given to the e-graph: only the search applies.
    if !a.is_matrix() && !b.is_matrix() && proved_equal(a, b) {
        return Equivalence::Proved;
    }
    match crate::counterexample::search(a, b) {
        Some(found) => Equivalence::Different(found),
        None => Equivalence::Unknown,
    }
}

/// The e-graph half of [`equivalent`], for rules with the same interface.
pub(super) fn proved_equal(a: &Rule, b: &Rule) -> bool {
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
