//! The rewrite sets: exact (bit-exact, never lowering a rate), fast
//! (value-changing, the default mode) and algebra over the reals (only for
//! proving two rules equivalent), with the rate conditions they use.

use super::term::{Graph, RuleAnalysis, Term};
use crate::rule::*;
use egg::{rewrite as rw, Id, Rewrite};
use std::sync::OnceLock;

pub(super) fn rate_is(
    var: &'static str,
    pred: fn(Rate) -> bool,
) -> impl Fn(&mut Graph, Id, &egg::Subst) -> bool {
    let var: egg::Var = var.parse().expect("pattern variable");
    move |egraph, _, subst| pred(egraph[subst[var]].data.rate)
}

/// The rate of `x` is at least that of `y`.
pub(super) fn rate_at_least(
    x: &'static str,
    y: &'static str,
) -> impl Fn(&mut Graph, Id, &egg::Subst) -> bool {
    let x: egg::Var = x.parse().expect("pattern variable");
    let y: egg::Var = y.parse().expect("pattern variable");
    move |egraph, _, subst| egraph[subst[x]].data.rate >= egraph[subst[y]].data.rate
}

pub(super) fn element(r: Rate) -> bool {
    r == Rate::Element
}

pub(super) fn scalar(r: Rate) -> bool {
    r <= Rate::Tensor
}

/// The rewrites of `mode`, built once per process (parsing their patterns
/// costs more than optimizing a small rule).
pub(super) fn for_mode(mode: super::Mode) -> &'static [Rewrite<Term, RuleAnalysis>] {
    static EXACT: OnceLock<Vec<Rewrite<Term, RuleAnalysis>>> = OnceLock::new();
    static FAST: OnceLock<Vec<Rewrite<Term, RuleAnalysis>>> = OnceLock::new();
    match mode {
        super::Mode::Exact => EXACT.get_or_init(exact_rules),
        super::Mode::Fast => FAST.get_or_init(|| {
            let mut rules = exact_rules();
            rules.extend(fast_rules());
            rules
        }),
    }
}

pub(super) fn exact_rules() -> Vec<Rewrite<Term, RuleAnalysis>> {
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

pub(super) fn fast_rules() -> Vec<Rewrite<Term, RuleAnalysis>> {
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
        // sigmoid(x) is 1 / (1 + e^-x) in every backend: a quotient scaled
        // by it shares the quotient's division (diffGrad's friction).
        rw!("sigmoid-outward"; "(* (* ?a (sigmoid ?x)) ?b)" => "(* (* ?a ?b) (sigmoid ?x))"),
        rw!("sigmoid-quotient"; "(/ (* ?a (sigmoid ?x)) ?d)" => "(/ ?a (* (+ 1.0 (exp (neg ?x))) ?d))"
            if rate_is("?d", element)),
        rw!("sigmoid-quotient-rev"; "(/ (* (sigmoid ?x) ?a) ?d)" => "(/ ?a (* (+ 1.0 (exp (neg ?x))) ?d))"
            if rate_is("?d", element)),
        // An element's `exp` and `sigmoid` take fast mode's fused steps.
        rw!("exp-fma"; "(exp ?x)" => "(exp_fma ?x)" if rate_is("?x", element)),
        rw!("sigmoid-fma"; "(sigmoid ?x)" => "(/ 1.0 (+ 1.0 (exp_fma (neg ?x))))" if rate_is("?x", element)),
        rw!("fma-add"; "(+ (* ?a ?b) ?c)" => "(fma ?a ?b ?c)"),
        rw!("fma-add-rev"; "(+ ?c (* ?a ?b))" => "(fma ?a ?b ?c)"),
        rw!("fma-sub-left"; "(- ?c (* ?a ?b))" => "(fma (neg ?a) ?b ?c)" if rate_is("?a", scalar)),
        rw!("fma-sub-right"; "(- ?c (* ?a ?b))" => "(fma ?a (neg ?b) ?c)" if rate_is("?b", scalar)),
    ]
}

/// Rules that hold over the reals (not bit-exact), for proving equivalence.
pub(super) fn algebra_rules() -> Vec<Rewrite<Term, RuleAnalysis>> {
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
        rw!("exp-fma-is-exp"; "(exp_fma ?a)" => "(exp ?a)"),
        rw!("sigmoid-def"; "(sigmoid ?a)" => "(/ 1.0 (+ 1.0 (exp (neg ?a))))"),
    ];
    rules.extend(rw!("mul-div"; "(* ?a (/ ?b ?c))" <=> "(/ (* ?a ?b) ?c)"));
    rules.extend(rw!("div-mul"; "(* (/ ?a ?b) ?c)" <=> "(/ (* ?a ?c) ?b)"));
    rules.extend(rw!("div-div"; "(/ (/ ?a ?b) ?c)" <=> "(/ ?a (* ?b ?c))"));
    rules.extend(rw!("sqrt-div"; "(sqrt (/ ?a ?b))" <=> "(/ (sqrt ?a) (sqrt ?b))"));
    rules.extend(rw!("distribute"; "(* ?a (+ ?b ?c))" <=> "(+ (* ?a ?b) (* ?a ?c))"));
    rules.extend(rw!("sub-distribute"; "(* ?a (- ?b ?c))" <=> "(- (* ?a ?b) (* ?a ?c))"));
    rules
}
