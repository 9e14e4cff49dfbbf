//! The e-graph optimizer: optimized rules still reproduce every golden case
//! (fast mode within the golden tolerances, exact mode bit for bit), work
//! moves out of the element loop, disabled branches vanish, and rule
//! equivalence is decided.

use lensopt::case::{self, Case};
use lensopt::ir::optimize::{equivalent, optimize, Mode, Options};
use lensopt::ir::{Op, Rate};
use lensopt::ParseRule;
use lensopt::{catalog, Backend, DynOptimizer, Equivalence, Optimizer, Rule};
use std::sync::Arc;

fn golden_cases() -> Vec<(String, Case)> {
    lensopt_tests::golden_files()
        .into_iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let case = Case::from_json(&std::fs::read_to_string(&f).unwrap()).unwrap();
            (name, case)
        })
        .collect()
}

fn configured(case: &Case) -> DynOptimizer {
    lensopt_tests::configured(case).unwrap()
}

fn with_rule(opt: &DynOptimizer, rule: Rule) -> DynOptimizer {
    let mut out = DynOptimizer::from_rule(Arc::new(rule));
    for (h, v) in opt.rule().hypers.iter().zip(opt.hypers()) {
        out.set(&h.name, v).unwrap();
    }
    out
}

#[test]
fn optimized_rules_reproduce_every_golden_case() {
    for (name, case) in golden_cases() {
        let opt = configured(&case);
        let plain = case::run_with(&case, &opt, Backend::Interpreter)
            .unwrap()
            .params_after;
        for mode in [Mode::Exact, Mode::Fast] {
            let options = Options::specialized_for(mode, &opt.hypers());
            let rule = optimize(&opt.rule(), &options);
            let ours = case::run_with(&case, &with_rule(&opt, rule.clone()), Backend::Interpreter)
                .unwrap()
                .params_after;
            let reference = case.params_after.as_ref().unwrap();
            let (abs, rel) = match case.dtype {
                case::Dtype::F64 => (1e-6, 1e-6),
                case::Dtype::F32 => (2e-6, 1e-5),
            };
            for t in 0..ours.len() {
                for i in 0..ours[t].len() {
                    let (a, b) = (ours[t][i], reference[t][i]);
                    assert!(
                        (a - b).abs() <= abs + rel * b.abs(),
                        "{name} {mode:?} step {t} [{i}]: {a} vs {b}\n{rule}"
                    );
                    if mode == Mode::Exact {
                        assert_eq!(
                            a.to_bits(),
                            plain[t][i].to_bits(),
                            "{name}: exact mode changed step {t} [{i}]: {a} vs {}\n{rule}",
                            plain[t][i]
                        );
                    }
                }
            }
        }
    }
}

fn element_ops(rule: &Rule) -> usize {
    rule.nodes
        .iter()
        .filter(|n| n.rate == Rate::Element && !n.op.args().is_empty())
        .count()
}

#[test]
fn specialisation_removes_disabled_branches() {
    let adam = catalog::get("adam").unwrap();
    let rule = adam.rule();
    let fast = optimize(&rule, &Options::specialized_for(Mode::Fast, &adam.hypers()));
    let text = fast.to_string();
    assert!(
        !text.contains("= hyper amsgrad"),
        "amsgrad = false is compiled in\n{text}"
    );
    assert!(
        !text.contains("= hyper weight_decay"),
        "weight_decay = 0 is compiled in\n{text}"
    );
    assert!(
        element_ops(&fast) < element_ops(&rule),
        "{} vs {}",
        element_ops(&fast),
        element_ops(&rule)
    );
    // No division of an element value by a per-step value survives.
    for n in &fast.nodes {
        if let Op::Binary(lensopt::ir::BinOp::Div, _, d) = n.op {
            if n.rate == Rate::Element {
                assert_eq!(fast.node(d).rate, Rate::Element, "{text}");
            }
        }
    }
    let adan = catalog::get("adan").unwrap();
    let fast = optimize(
        &adan.rule(),
        &Options::specialized_for(Mode::Fast, &adan.hypers()),
    );
    assert!(
        fast.reductions().is_empty(),
        "max_grad_norm = 0: no global norm pass\n{fast}"
    );
    let clipped = adan.with("max_grad_norm", 1.0).unwrap();
    let fast = optimize(
        &clipped.rule(),
        &Options::specialized_for(Mode::Fast, &clipped.hypers()),
    );
    assert_eq!(fast.reductions().len(), 1);
}

#[test]
fn optimization_is_deterministic() {
    for name in catalog::names() {
        let opt = catalog::get(name).unwrap();
        let options = Options::specialized_for(Mode::Fast, &opt.hypers());
        assert_eq!(
            optimize(&opt.rule(), &options),
            optimize(&opt.rule(), &options),
            "{name}"
        );
    }
}

const TEXTBOOK_ADAM: &str = "Adam {
    hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    state m = 0, v = 0;
    update {
        m = beta1 * m + (1 - beta1) * g;
        v = beta2 * v + (1 - beta2) * g * g;
        let mhat = m / (1 - beta1 ^ t);
        let vhat = v / (1 - beta2 ^ t);
        p = p - lr * mhat / (sqrt(vhat) + eps);
    }
}";

const TORCH_ADAM: &str = "Adam {
    hyper lr = 1e-3, beta2 = 0.999, beta1 = 0.9, eps = 1e-8;
    state m = 0, v = 0;
    update {
        m = (1 - beta1) * g + m * beta1;
        v = v * beta2 + g * g * (1 - beta2);
        let step_size = lr / (1 - beta1 ^ t);
        let denom = sqrt(v) / sqrt(1 - beta2 ^ t) + eps;
        p = p - step_size * m / denom;
    }
}";

const ADAMW: &str = "Adam {
    hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    state m = 0, v = 0;
    update {
        p = p * (1 - lr * 0.01);
        m = beta1 * m + (1 - beta1) * g;
        v = beta2 * v + (1 - beta2) * g * g;
        p = p - lr / (1 - beta1 ^ t) * m / (sqrt(v) / sqrt(1 - beta2 ^ t) + eps);
    }
}";

#[test]
fn two_differently_written_adams_are_proved_equal() {
    let a = Rule::parse(TEXTBOOK_ADAM).unwrap();
    let b = Rule::parse(TORCH_ADAM).unwrap();
    assert_eq!(equivalent(&a, &b), Equivalence::Proved);
    assert_eq!(equivalent(&b, &a), Equivalence::Proved);
}

#[test]
fn fast_modes_exp_is_proved_equal_to_exp() {
    let plain = Rule::parse(
        "Friction { hyper lr = 0.1; update { p = p - lr * sigmoid(abs(g)) * exp(-g); } }",
    )
    .unwrap();
    let fused = Rule::parse(
        "Friction { hyper lr = 0.1; update { p = p - lr * exp_fma(-g) / (1 + exp_fma(-abs(g))); } }",
    )
    .unwrap();
    assert_eq!(equivalent(&plain, &fused), Equivalence::Proved);
    assert_eq!(equivalent(&fused, &plain), Equivalence::Proved);
}

#[test]
fn adam_and_adamw_are_not_equal() {
    let a = Rule::parse(TEXTBOOK_ADAM).unwrap();
    let w = Rule::parse(ADAMW).unwrap();
    // Same interface, different update: the interpreter finds where.
    match equivalent(&a, &w) {
        Equivalence::Different(why) => assert!(why.contains("element"), "{why}"),
        other => panic!("{other:?}"),
    }
    let adam = catalog::get("adam").unwrap().rule();
    let adamw = catalog::get("adamw").unwrap().rule();
    // Different default weight decay, same names: told apart by a counterexample.
    assert!(matches!(
        equivalent(&adam, &adamw),
        Equivalence::Different(_)
    ));
    assert_eq!(equivalent(&adam, &adam), Equivalence::Proved);
    // Different interfaces.
    let sgd = catalog::get("sgd").unwrap().rule();
    assert!(matches!(equivalent(&adam, &sgd), Equivalence::Different(_)));
}

#[test]
fn an_identity_beyond_the_rewrites_is_unknown_not_different() {
    // exp(ln(x)) = x for x > 0 holds, but the e-graph has no rule for it.
    let a = Rule::parse("A { update { p = p - exp(ln(abs(g) + 1)); } }").unwrap();
    let b = Rule::parse("A { update { p = p - (abs(g) + 1); } }").unwrap();
    assert_eq!(equivalent(&a, &b), Equivalence::Unknown);
}
