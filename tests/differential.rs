//! Differential testing of the JIT against the reference interpreter, on
//! random rules over the whole language and random inputs of random lengths
//! (vector tails included), several tensors per step, two steps each.
//!
//! Tolerances, by what may legitimately differ:
//! - exact mode, rules without reductions: **bit for bit** (the JIT computes
//!   each IR operation in the same precision with the same rounding, and
//!   calls the same libm functions);
//! - fast mode: the JIT against the interpreter run on the *optimized* IR
//!   the JIT compiled, again **bit for bit** (what fast mode changes is the
//!   IR, which the golden tests check against the references);
//! - rules with reductions: the JIT sums per SIMD lane and per chunk in f64,
//!   the interpreter element by element in f64, so the reduced values differ
//!   by f64 rounding; after that the results agree within
//!   `1e-4 * (1 + |x|)` in f32 and `1e-10 * (1 + |x|)` in f64.
//!
//! - a specialised hyperparameter changed between steps (a boolean flipped,
//!   a number set to 0), in both modes: within the tolerances above (fast
//!   mode `2e-3 * (1 + |x|)` in f32, `1e-8 * (1 + |x|)` in f64, as it may
//!   reassociate).
//!
//! Every rule carries two states that never reach `p` (`seen`, `w`): they
//! are compared like the others, as every state is observable.
//!
//! NaN matches NaN. 5,100 cases per run, from a fixed seed (set
//! `LENSOPT_PROPTEST_RANDOM=1` for fresh ones).

use lensopt::ir::interp;
use lensopt::{Backend, DynOptimizer, Float, Mode, Optimizer, Stepper, TensorMut, TensorRef};
use ndarray::Array1;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::sync::Arc;

/// A random expression as text, of a number (`Float`) or a truth value.
fn float_expr(reductions: bool) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("p".to_string()),
        Just("g".to_string()),
        Just("m".to_string()),
        Just("v".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        Just("t".to_string()),
        (-20i32..20).prop_map(|k| format!("{:?}", f64::from(k) / 8.0)),
        Just("1e-3".to_string()),
    ];
    leaf.prop_recursive(4, 24, 3, move |inner| {
        let bool_leaf = (inner.clone(), inner.clone(), 0..6usize).prop_map(|(x, y, k)| {
            let op = ["<", "<=", ">", ">=", "==", "!="][k];
            format!("({x} {op} {y})")
        });
        let cond = prop_oneof![
            bool_leaf.clone(),
            Just("flag".to_string()),
            bool_leaf.clone().prop_map(|c| format!("!{c}")),
            (bool_leaf.clone(), bool_leaf.clone()).prop_map(|(x, y)| format!("({x} && {y})")),
            (bool_leaf.clone(), bool_leaf).prop_map(|(x, y)| format!("({x} || {y})")),
        ];
        let mut options: Vec<BoxedStrategy<String>> = vec![
            (inner.clone(), inner.clone(), 0..3usize)
                .prop_map(|(x, y, k)| format!("({x} {} {y})", ["+", "-", "*"][k]))
                .boxed(),
            (inner.clone(), inner.clone())
                .prop_map(|(x, y)| format!("({x} / (abs({y}) + 0.5))"))
                .boxed(),
            inner.clone().prop_map(|x| format!("(-{x})")).boxed(),
            inner.clone().prop_map(|x| format!("({x}) ^ 2")).boxed(),
            (inner.clone(), 0..13usize)
                .prop_map(|(x, k)| match k {
                    0 => format!("sqrt(abs({x}))"),
                    1 => format!("abs({x})"),
                    2 => format!("sign({x})"),
                    3 => format!("exp(clamp({x}, -4, 4))"),
                    4 => format!("ln(abs({x}) + 0.25)"),
                    5 => format!("sigmoid({x})"),
                    6 => format!("rsqrt(abs({x}) + 0.5)"),
                    7 => format!("f32({x})"),
                    8 => format!("bf16({x})"),
                    9 => format!("lerp({x}, g, 0.7)"),
                    10 => format!("cos({x})"),
                    11 => format!("floor({x})"),
                    _ => format!("pow(abs({x}) + 0.5, 1.5)"),
                })
                .boxed(),
            (inner.clone(), inner.clone(), 0..2usize)
                .prop_map(|(x, y, k)| format!("{}({x}, {y})", ["min", "max"][k]))
                .boxed(),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(x, y, z)| format!("fma({x}, {y}, {z})"))
                .boxed(),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(x, y, z)| format!("clamp({x}, {y}, {z})"))
                .boxed(),
            (cond, inner.clone(), inner.clone())
                .prop_map(|(c, x, y)| format!("select({c}, {x}, {y})"))
                .boxed(),
        ];
        if reductions {
            options.push(
                (inner.clone(), 0..12usize)
                    .prop_map(|(x, k)| {
                        let e = format!("(g * {x})");
                        match k {
                            0 => format!("sum({e})"),
                            1 => format!("mean({e})"),
                            2 => format!("max_abs({e})"),
                            3 => format!("norm({e})"),
                            4 => format!("count({e} > 0)"),
                            5 => format!("dot({e}, p)"),
                            6 => format!("global_sum({e})"),
                            7 => format!("global_mean({e})"),
                            8 => format!("global_norm({e})"),
                            9 => format!("global_count({e} > 0)"),
                            10 => format!("global_max_abs({e})"),
                            _ => "numel()".to_string(),
                        }
                    })
                    .boxed(),
            );
        }
        proptest::strategy::Union::new(options)
    })
    .boxed()
}

/// A random rule: hyperparameters a, b, flag; states m, v (and a scalar k
/// when reductions are on); three updates that all reach `p`.
fn rule_text(reductions: bool) -> BoxedStrategy<String> {
    let e = float_expr(reductions);
    (
        e.clone(),
        e.clone(),
        e.clone(),
        e,
        -10i32..10,
        -10i32..10,
        any::<bool>(),
    )
        .prop_map(move |(x, m, v, p, a, b, flag)| {
            let scalar = if reductions {
                "state scalar k = 0.5;".to_string()
            } else {
                String::new()
            };
            let k_update = if reductions {
                format!("k = 0.5 * k + 0.25 * mean(g * {x});")
            } else {
                String::new()
            };
            let k_use = if reductions { " + 0.01 * k" } else { "" };
            // `seen` and `w` never reach `p`: they are observable only as
            // state, which every backend must maintain all the same.
            format!(
                "R {{ hyper a = {:?}, b = {:?}, flag = {flag}; state m = 0.1, v = p * 0.5, seen = 0, w = 0; {scalar}
                   update {{ let x = {x}; m = {m}; v = {v} + 0.25 * x; {k_update}
                             seen = seen + 1; w = select(flag, max(w, x), w);
                             p = {p} + 0.001 * m + 0.001 * v{k_use}; }} }}",
                f64::from(a) / 4.0,
                f64::from(b) / 4.0
            )
        })
        .boxed()
}

/// Random tensors: 1 to 3 of random lengths (0 to 41), values in [-2, 2].
fn tensors() -> impl Strategy<Value = Vec<(Vec<f64>, Vec<f64>, Vec<f64>)>> {
    prop::collection::vec(
        (0usize..42).prop_flat_map(|n| {
            (
                prop::collection::vec(-2.0f64..2.0, n),
                prop::collection::vec(-2.0f64..2.0, n),
                prop::collection::vec(-2.0f64..2.0, n),
            )
        }),
        1..4,
    )
}

/// Runs two steps of `opt` with `backend`; returns p and every state after each step.
fn run<F: Float>(
    opt: &DynOptimizer,
    data: &[(Vec<f64>, Vec<f64>, Vec<f64>)],
    backend: Backend,
) -> Vec<Vec<f64>> {
    run_changing::<F>(opt, data, backend, &[])
}

/// [`run`], setting hyperparameters `changes` (name, value) before the
/// second step: values the JIT specialises on (booleans, zeros) change the
/// compiled program mid-run.
fn run_changing<F: Float>(
    opt: &DynOptimizer,
    data: &[(Vec<f64>, Vec<f64>, Vec<f64>)],
    backend: Backend,
    changes: &[(&str, lensopt::HyperValue)],
) -> Vec<Vec<f64>> {
    let mut params: Vec<Array1<F>> = data
        .iter()
        .map(|d| d.0.iter().map(|x| F::from_f64(*x)).collect())
        .collect();
    let grads: Vec<Vec<Array1<F>>> = (0..2)
        .map(|s| {
            data.iter()
                .map(|d| {
                    let src = if s == 0 { &d.1 } else { &d.2 };
                    src.iter().map(|x| F::from_f64(*x)).collect()
                })
                .collect()
        })
        .collect();
    let refs: Vec<&dyn TensorRef<F>> = params.iter().map(|p| p as &dyn TensorRef<F>).collect();
    let mut st: Stepper<F> = opt.init(&refs).expect("init");
    st.set_backend(backend);
    // The cases feed NaN and infinity on purpose, to compare how the
    // backends propagate them: no policy may stand in between.
    st.set_non_finite(lensopt::NonFinite::Unchecked);
    let mut out = Vec::new();
    for (step, g) in grads.iter().enumerate() {
        if step == 1 {
            for (name, value) in changes {
                st.set_hyper(name, *value)
                    .expect("a declared hyperparameter");
            }
        }
        let mut ps: Vec<&mut dyn TensorMut<F>> = params
            .iter_mut()
            .map(|p| p as &mut dyn TensorMut<F>)
            .collect();
        let gs: Vec<&dyn TensorRef<F>> = g.iter().map(|x| x as &dyn TensorRef<F>).collect();
        st.step(&mut ps, &gs).expect("step");
        for (k, p) in params.iter().enumerate() {
            out.push(p.iter().map(|x| x.to_f64()).collect());
            for s in &opt.rule().states {
                match st.state(k, &s.name) {
                    Some(v) => out.push(v.iter().map(|x| x.to_f64()).collect()),
                    None => out.push(vec![st.scalar_state(k, &s.name).unwrap_or(f64::NAN)]),
                }
            }
        }
    }
    out
}

fn same(a: f64, b: f64, tol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

fn compare(a: &[Vec<f64>], b: &[Vec<f64>], tol: f64) -> Result<(), TestCaseError> {
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.iter().zip(y) {
            prop_assert!(same(*u, *v, tol), "{u:e} vs {v:e} (tolerance {tol:e})");
        }
    }
    Ok(())
}

fn parse(text: &str) -> DynOptimizer {
    DynOptimizer::parse(text)
        .unwrap_or_else(|e| panic!("generated rule does not check: {e}\n{text}"))
}

/// A runner with a fixed seed, so that every run checks the same cases;
/// `LENSOPT_PROPTEST_RANDOM=1` draws fresh ones (for exploring locally) and
/// `LENSOPT_PROPTEST_CASES=N` changes how many (the valgrind script uses fewer).
fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("LENSOPT_PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("LENSOPT_PROPTEST_RANDOM").is_some() {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    }
}

#[test]
fn exact_jit_is_bit_identical_to_the_interpreter() {
    runner(1500)
        .run(&(rule_text(false), tensors()), |(text, data)| {
            let opt = parse(&text);
            let want = run::<f32>(&opt, &data, Backend::Interpreter);
            let got = run::<f32>(&opt, &data, Backend::Jit(Mode::Exact));
            compare(&got, &want, 0.0)?;
            let want = run::<f64>(&opt, &data, Backend::Interpreter);
            let got = run::<f64>(&opt, &data, Backend::Jit(Mode::Exact));
            compare(&got, &want, 0.0)
        })
        .unwrap();
}

/// The optimized IR the JIT compiled for this data, as an optimizer of its own.
fn compiled_rule<F: Float>(
    opt: &DynOptimizer,
    data: &[(Vec<f64>, Vec<f64>, Vec<f64>)],
) -> DynOptimizer {
    let params: Vec<Array1<F>> = data
        .iter()
        .map(|d| d.0.iter().map(|x| F::from_f64(*x)).collect())
        .collect();
    let refs: Vec<&dyn TensorRef<F>> = params.iter().map(|p| p as &dyn TensorRef<F>).collect();
    let mut st: Stepper<F> = opt.init(&refs).unwrap();
    st.set_backend(Backend::Jit(Mode::Fast));
    let program = st.program(&[]).unwrap();
    let mut out = DynOptimizer::from_rule(Arc::new(program.schedule().rule.clone()));
    for (h, v) in opt.rule().hypers.iter().zip(opt.hypers()) {
        out.set(&h.name, v).unwrap();
    }
    out
}

#[test]
fn fast_jit_is_bit_identical_to_its_optimized_ir() {
    runner(1000)
        .run(&(rule_text(false), tensors()), |(text, data)| {
            let opt = parse(&text);
            let optimized = compiled_rule::<f32>(&opt, &data);
            let want = run::<f32>(&optimized, &data, Backend::Interpreter);
            let got = run::<f32>(&opt, &data, Backend::Jit(Mode::Fast));
            compare(&got, &want, 0.0)?;
            let optimized = compiled_rule::<f64>(&opt, &data);
            let want = run::<f64>(&optimized, &data, Backend::Interpreter);
            let got = run::<f64>(&opt, &data, Backend::Jit(Mode::Fast));
            compare(&got, &want, 0.0)
        })
        .unwrap();
}

#[test]
fn jit_reductions_agree_with_the_interpreter() {
    runner(1200)
        .run(&(rule_text(true), tensors()), |(text, data)| {
            let opt = parse(&text);
            let want = run::<f32>(&opt, &data, Backend::Interpreter);
            let got = run::<f32>(&opt, &data, Backend::Jit(Mode::Exact));
            compare(&got, &want, 1e-4)?;
            let want = run::<f64>(&opt, &data, Backend::Interpreter);
            let got = run::<f64>(&opt, &data, Backend::Jit(Mode::Exact));
            compare(&got, &want, 1e-10)
        })
        .unwrap();
}

#[test]
fn specialisations_changed_mid_run_agree_with_the_interpreter() {
    // `flag` (a boolean) and `a` (set to 0) are compiled in as constants, so
    // the second step runs another program than the first, over the state
    // the first one left: every state must have been maintained.
    let changes = (any::<bool>(), any::<bool>());
    runner(1400)
        .run(
            &(rule_text(true), tensors(), changes),
            |(text, data, (flip, zero))| {
                let opt = parse(&text);
                let flag = opt.rule().hypers[2].default;
                let lensopt::HyperValue::Bool(flag) = flag else {
                    unreachable!("flag is a boolean")
                };
                let mut changes = Vec::new();
                if flip {
                    changes.push(("flag", lensopt::HyperValue::Bool(!flag)));
                }
                if zero {
                    changes.push(("a", lensopt::HyperValue::Num(0.0)));
                }
                for mode in [Mode::Exact, Mode::Fast] {
                    let tol = if mode == Mode::Exact {
                        (1e-4, 1e-10)
                    } else {
                        (2e-3, 1e-8)
                    };
                    let want = run_changing::<f32>(&opt, &data, Backend::Interpreter, &changes);
                    let got = run_changing::<f32>(&opt, &data, Backend::Jit(mode), &changes);
                    compare(&got, &want, tol.0)?;
                    let want = run_changing::<f64>(&opt, &data, Backend::Interpreter, &changes);
                    let got = run_changing::<f64>(&opt, &data, Backend::Jit(mode), &changes);
                    compare(&got, &want, tol.1)?;
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn the_interpreter_semantics_of_min_max_hold_in_the_jit() {
    // Signed zeros and NaN through min / max / sign / select, in both types.
    let text = "Z { update { p = min(p, g) + max(g, p) * 0 + sign(p) + select(p == g, 1, 0); } }";
    let opt = parse(text);
    let special = vec![0.0, -0.0, f64::NAN, 1.0, -1.0, f64::INFINITY];
    let mut data = Vec::new();
    for a in &special {
        for b in &special {
            data.push((*a, *b));
        }
    }
    let tensors = vec![(
        data.iter().map(|d| d.0).collect::<Vec<_>>(),
        data.iter().map(|d| d.1).collect::<Vec<_>>(),
        data.iter().map(|d| d.1).collect::<Vec<_>>(),
    )];
    for backend in [Backend::Jit(Mode::Exact)] {
        let want = run::<f32>(&opt, &tensors, Backend::Interpreter);
        let got = run::<f32>(&opt, &tensors, backend);
        for (x, y) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{x} vs {y}"
            );
        }
    }
    let _ = interp::maximum::<f64>;
}

/// lensopt's own `exp` (and `sigmoid` on it) over the whole range, edges
/// and special values included: the JIT's inline vector code and the
/// interpreter agree bit for bit, in both widths and both modes (in fast
/// mode, where elements take `exp_fma`, against the optimized IR).
#[test]
fn exp_and_sigmoid_agree_bit_for_bit_over_the_whole_range() {
    let opt = parse(
        "ExpRange { hyper lr = 0.5; state e = 0, s = 0; update { e = exp(g); s = sigmoid(g); p = p - lr * s; } }",
    );
    let mut xs: Vec<f64> = vec![
        0.0,
        -0.0,
        1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        88.72,
        88.73,
        -87.33,
        -103.9,
        -104.0,
        709.78,
        709.79,
        -708.4,
        -745.1,
        -745.2,
        1e-30,
        -1e-30,
        f64::MAX,
        f64::MIN,
    ];
    for (i, u) in uniforms(0x2545_f491_4f6c_dd1d, 4000).enumerate() {
        let scale = [1.0, 30.0, 200.0, 1600.0][i % 4];
        xs.push((u - 0.5) * scale);
    }
    let data = vec![(vec![1.0; xs.len()], xs.clone(), xs)];
    let want = run::<f32>(&opt, &data, Backend::Interpreter);
    let got = run::<f32>(&opt, &data, Backend::Jit(Mode::Exact));
    same_bits(&got, &want);
    let want = run::<f64>(&opt, &data, Backend::Interpreter);
    let got = run::<f64>(&opt, &data, Backend::Jit(Mode::Exact));
    same_bits(&got, &want);
    let uses_exp_fma = |rule: &DynOptimizer| {
        let ops: Vec<_> = rule.rule().nodes.iter().map(|n| n.op).collect();
        ops.iter()
            .any(|op| matches!(op, lensopt::ir::Op::Unary(lensopt::ir::UnOp::ExpFma, _)))
            && !ops.iter().any(|op| {
                matches!(
                    op,
                    lensopt::ir::Op::Unary(lensopt::ir::UnOp::Exp | lensopt::ir::UnOp::Sigmoid, _)
                )
            })
    };
    let optimized = compiled_rule::<f32>(&opt, &data);
    assert!(uses_exp_fma(&optimized), "fast mode keeps a plain exp");
    let want = run::<f32>(&optimized, &data, Backend::Interpreter);
    let got = run::<f32>(&opt, &data, Backend::Jit(Mode::Fast));
    same_bits(&got, &want);
    let optimized = compiled_rule::<f64>(&opt, &data);
    assert!(uses_exp_fma(&optimized), "fast mode keeps a plain exp");
    let want = run::<f64>(&optimized, &data, Backend::Interpreter);
    let got = run::<f64>(&opt, &data, Backend::Jit(Mode::Fast));
    same_bits(&got, &want);
}

/// lensopt's `pow` with an exponent that is a hyperparameter: at 0.5 the
/// kernels take square roots (a loop chosen at entry), at other values they
/// call `pow`; both agree bit for bit with the interpreter, special values
/// included, in both widths and both modes.
#[test]
fn pow_agrees_bit_for_bit_at_the_square_root_and_elsewhere() {
    let opt = parse(
        "PowRange { hyper lr = 0.5, k = 0.5; state a = 0; update { a = g ^ k; p = p - lr * a; } }",
    );
    let mut xs: Vec<f64> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        4.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-40,
        1e-310,
        f64::MAX,
        -2.5,
    ];
    for (i, u) in uniforms(0x9e37_79b9_7f4a_7c15, 1000).enumerate() {
        xs.push(u * [1.0, 1e6, 1e-6, 3.0][i % 4]);
    }
    let data = vec![(vec![1.0; xs.len()], xs.clone(), xs)];
    // Step 1 at k = 0.5, step 2 at k = 0.75 (the same program, the other loop).
    let changes = [("k", lensopt::HyperValue::Num(0.75))];
    for mode in [Mode::Exact, Mode::Fast] {
        let want = run_changing::<f32>(&opt, &data, Backend::Interpreter, &changes);
        let got = run_changing::<f32>(&opt, &data, Backend::Jit(mode), &changes);
        same_bits(&got, &want);
        let want = run_changing::<f64>(&opt, &data, Backend::Interpreter, &changes);
        let got = run_changing::<f64>(&opt, &data, Backend::Jit(mode), &changes);
        same_bits(&got, &want);
    }
}

/// Every value the same bits (zeros' signs included), or both NaN.
fn same_bits(a: &[Vec<f64>], b: &[Vec<f64>]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.iter().zip(y) {
            assert!(
                u.to_bits() == v.to_bits() || u.is_nan() && v.is_nan(),
                "{u:e} vs {v:e}"
            );
        }
    }
}

/// `count` numbers in [0, 1) from an xorshift generator seeded with `seed`.
fn uniforms(mut seed: u64, count: usize) -> impl Iterator<Item = f64> {
    std::iter::repeat_with(move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    })
    .take(count)
}
