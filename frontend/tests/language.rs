//! The meaning of the language: precedence, rates, SSA order, reductions,
//! and the interpreter's arithmetic, checked on small rules.

use lensopt_frontend::ParseRule;
use lensopt_ir::interp::{self, StateBuf, StepTensor};
use lensopt_ir::{HyperValue, Op, Rate, Rule};

/// Runs one step of `rule` on `p`, `g` (f64) and returns the new `p`.
fn step_once(rule: &Rule, p: &[f64], g: &[f64]) -> Vec<f64> {
    let hypers: Vec<HyperValue> = rule.default_hypers();
    let mut p = p.to_vec();
    let mut state: Vec<StateBuf<f64>> = interp::init_state(rule, &hypers, &p);
    let mut tensors = vec![StepTensor {
        param: &mut p,
        grad: g,
        inputs: vec![None; rule.inputs.len()],
        state: &mut state,
        hypers: &hypers,
    }];
    interp::step(rule, 1, &vec![false; rule.inputs.len()], &mut tensors).unwrap();
    p
}

fn eval(expr: &str) -> f64 {
    let rule = Rule::parse(&format!("E {{ update {{ p = {expr}; }} }}")).unwrap();
    step_once(&rule, &[0.0], &[0.0])[0]
}

#[test]
fn precedence_is_the_mathematical_one() {
    assert_eq!(eval("2 ^ 3 ^ 2"), 512.0, "^ is right-associative");
    assert_eq!(eval("-2 ^ 2"), -4.0, "^ binds tighter than unary minus");
    assert_eq!(eval("1 - 0.5 ^ 2"), 0.75, "^ binds tighter than -");
    assert_eq!(eval("2 * 3 + 4 / 2"), 8.0);
    assert_eq!(eval("8 - 3 - 2"), 3.0, "- is left-associative");
    assert_eq!(eval("select(1 < 2 && 3 > 4 || !(2 == 2), 1, 0)"), 0.0);
    assert_eq!(eval("select(1 <= 1 && 2 >= 2 && 1 != 2, 1, 0)"), 1.0);
}

#[test]
fn functions_follow_torch_conventions() {
    assert_eq!(eval("sign(-3) + sign(0) + sign(2)"), 0.0);
    assert!(
        eval("max(0 / 0, 1)").is_nan(),
        "max propagates NaN like torch.maximum"
    );
    assert!(eval("min(1, 0 / 0)").is_nan());
    assert_eq!(eval("clamp(5, -1, 1) + clamp(-5, -1, 1)"), 0.0);
    assert_eq!(eval("fma(2, 3, 4)"), 10.0);
    assert_eq!(eval("rsqrt(4) + sqrt(9)"), 3.5);
    assert!((eval("sigmoid(0) + exp(ln(2))") - 2.5).abs() < 1e-15);
    assert_eq!(eval("pow(2, 10)"), 1024.0);
    assert_eq!(eval("abs(-2.5)"), 2.5);
}

#[test]
fn reductions_and_numel() {
    let rule = Rule::parse(
        "R { update {
            let s = sum(g) + 10 * mean(g) + 100 * max_abs(g) + 1000 * count(g > 0) + 10000 * numel();
            p = p * 0 + s + dot(g, g) / 1000000 + norm(g) / 100000000;
        } }",
    )
    .unwrap();
    let g = [3.0, -4.0, 1.0];
    let out = step_once(&rule, &[0.0; 3], &g);
    let want =
        0.0 + 10.0 * 0.0 + 100.0 * 4.0 + 1000.0 * 2.0 + 30000.0 + 26.0 / 1e6 + 26f64.sqrt() / 1e8;
    assert!((out[0] - want).abs() < 1e-9, "{} vs {want}", out[0]);
}

#[test]
fn statements_run_in_order_as_ssa() {
    // `h` is read by the update of p before it is itself updated (SophiaG's order).
    let rule =
        Rule::parse("S { state h = 1; update { p = p - g / h; h = h + 1; p = p * h; } }").unwrap();
    assert_eq!(step_once(&rule, &[10.0], &[2.0]), vec![(10.0 - 2.0) * 2.0]);
    let compound = Rule::parse("C { hyper lr = 0.5; update { p -= lr * g; p *= 2; } }").unwrap();
    assert_eq!(step_once(&compound, &[1.0], &[1.0]), vec![1.0]);
}

#[test]
fn rates_are_inferred_and_scalars_do_not_depend_on_elements() {
    let rule = Rule::parse(
        "A { hyper beta = 0.9; update { let bc = 1 - beta ^ t; let n = norm(g); p = p - g / bc * n; } }",
    )
    .unwrap();
    for node in &rule.nodes {
        match node.op {
            Op::Hyper(_) | Op::Step => assert_eq!(node.rate, Rate::Step),
            Op::Const(_) => assert_eq!(node.rate, Rate::Const),
            Op::Reduce(..) => assert_eq!(node.rate, Rate::Tensor),
            Op::Param | Op::Grad => assert_eq!(node.rate, Rate::Element),
            _ => {
                let max = node
                    .op
                    .args()
                    .iter()
                    .map(|a| rule.node(*a).rate)
                    .max()
                    .unwrap();
                assert_eq!(node.rate, max, "{:?}", node.op);
            }
        }
        for a in node.op.args() {
            assert!(a.index() < rule.nodes.len());
        }
    }
    let bc = rule
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Binary(lensopt_ir::BinOp::Pow, ..)))
        .count();
    assert_eq!(bc, 1);
}

#[test]
fn identical_values_are_shared_and_unused_ones_dropped() {
    let rule = Rule::parse(
        "H { hyper b = 0.9; update { let unused = exp(g) * 7; let a = 1 - b; let c = 1 - b; p = p - a * g - c * g; } }",
    )
    .unwrap();
    let text = rule.to_string();
    assert_eq!(
        text.matches("= sub %").count(),
        3,
        "1 - b once, then the two p subtractions:\n{text}"
    );
    assert!(!text.contains("exp"), "dead values are dropped:\n{text}");
}

#[test]
fn comments_and_doc_comments_are_allowed() {
    let rule = Rule::parse(
        "/// Plain gradient descent.\n/// Second line.\npub(crate) Gd {\n  // the step size\n  hyper lr = 0.1; /* block */\n  update { p = p - lr * g; }\n}",
    )
    .unwrap();
    assert_eq!(rule.doc, vec!["Plain gradient descent.", "Second line."]);
}

#[test]
fn all_errors_are_reported_together_in_source_order() {
    let err = Rule::parse("X {\n update {\n  let a = q;\n  lr = 1;\n  p = a + zz(1);\n }\n}")
        .unwrap_err();
    // (The unknown function's message goes on to list the functions.)
    let lines: Vec<String> = err
        .items
        .iter()
        .map(|d| {
            d.to_string()
                .split(" (the functions")
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            "3:11: unknown name `q`",
            "4:3: unknown name `lr`",
            "5:11: unknown function `zz`",
        ]
    );
}

#[test]
fn syntax_errors_have_positions_too() {
    for (text, line, column) in [
        ("X { update { p = p - ; } }", 1, 22),
        ("X { hyper lr = 0.1 update { p = p; } }", 1, 20),
        ("X { update { p = (p; } }", 1, 18),
        ("X {\n  update {\n    p = p $ g;\n  }\n}", 3, 11),
    ] {
        let err = Rule::parse(text).unwrap_err();
        let first = err.first().unwrap();
        assert_eq!(
            (first.line(), first.column()),
            (line, column),
            "{text}: {first}"
        );
    }
}
