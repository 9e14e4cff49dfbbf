//! Regression tests for inputs that once gave a wrong answer, a panic, a
//! signal or unbounded work: each test is one reported reproducer. None of
//! them asserts on time; large inputs are here to show they finish.

use lensopt::circuit::eval::Machine;
use lensopt::circuit::{Circuit, CircuitBuilder, Gate};
use lensopt::ir::optimize::{optimize_report, Mode, Options};
use lensopt::jit::{Engine, Key};
use lensopt::ParseRule;
use lensopt::{
    catalog, Backend, DynOptimizer, Error, HyperValue, Inputs, NonFinite, Optimizer, Rule, Stepper,
    TensorMut, TensorRef,
};
use ndarray::{arr1, Array1};

/// `steps` steps of `opt` on `p0` with gradient `g` under `backend`:
/// the parameters and every state (element states flattened, scalar states
/// as one value) after the last step.
fn run(
    opt: &DynOptimizer,
    p0: &[f64],
    g: &[f64],
    steps: usize,
    backend: Backend,
    change: Option<(&str, HyperValue)>,
) -> Vec<Vec<f64>> {
    let mut p = arr1(p0);
    let grad = arr1(g);
    let mut st: Stepper<f64> = opt.init(&[&p as &dyn TensorRef<f64>]).unwrap();
    st.set_backend(backend);
    for k in 0..steps {
        if k == 1 {
            if let Some((name, value)) = change {
                st.set_hyper(name, value).unwrap();
            }
        }
        st.step(&mut [&mut p as &mut dyn TensorMut<f64>], &[&grad])
            .unwrap();
    }
    let mut out = vec![p.to_vec()];
    for s in &opt.rule().states {
        match st.state(0, &s.name) {
            Some(v) => out.push(v.iter().copied().collect()),
            None => out.push(vec![st.scalar_state(0, &s.name).unwrap()]),
        }
    }
    out
}

#[test]
fn a_state_that_never_reaches_p_is_maintained_by_the_jit() {
    let opt = DynOptimizer::parse(
        "D { hyper lr = 0.1; state m = 0, seen = 0; update { seen = seen + 1; m = 0.9 * m + g; p = p - lr * m; } }",
    )
    .unwrap();
    let (p0, g) = ([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]);
    let want = run(&opt, &p0, &g, 3, Backend::Interpreter, None);
    for mode in [Mode::Exact, Mode::Fast] {
        let got = run(&opt, &p0, &g, 3, Backend::Jit(mode), None);
        assert_eq!(got[2], vec![3.0, 3.0, 3.0], "seen after 3 steps ({mode:?})");
        for (x, y) in got.iter().flatten().zip(want.iter().flatten()) {
            // Exact mode is bit-exact; fast mode may fuse into an fma.
            let tol = if mode == Mode::Exact { 0.0 } else { 1e-15 };
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{x} vs {y} ({mode:?})"
            );
        }
    }
}

#[test]
fn adam_switched_to_amsgrad_mid_run_matches_the_interpreter() {
    let adam = catalog::get("adam").unwrap();
    let (p0, g) = ([1.0, -2.0, 3.0, 0.5], [0.3, -0.2, 0.1, 0.0]);
    let change = Some(("amsgrad", HyperValue::Bool(true)));
    let want = run(&adam, &p0, &g, 4, Backend::Interpreter, change);
    for mode in [Mode::Exact, Mode::Fast] {
        let got = run(&adam, &p0, &g, 4, Backend::Jit(mode), change);
        for (x, y) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!(
                (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                "{x} vs {y} ({mode:?})"
            );
        }
        // With amsgrad on, vmax holds the running maximum of v.
        let vmax = &got[3];
        assert!(vmax.iter().zip(&got[2]).all(|(m, v)| m >= v));
        assert!(vmax.iter().any(|m| *m > 0.0));
    }
}

#[test]
fn a_reduction_over_a_folded_constant_compiles_and_agrees() {
    let texts = [
        "R { hyper lr = 0.1, z = 0; update { p = p - lr * g * sum(z * g); } }",
        "S { hyper lr = 0.1, z = 0; update { p = p - lr * g * (count(z * g > 1) + global_norm(z * g) + mean(z * g + 1)); } }",
    ];
    for text in texts {
        let opt = DynOptimizer::parse(text).unwrap();
        let (p0, g) = ([1.0, 2.0, 3.0], [0.5, -0.25, 4.0]);
        let want = run(&opt, &p0, &g, 2, Backend::Interpreter, None);
        for mode in [Mode::Exact, Mode::Fast] {
            let got = run(&opt, &p0, &g, 2, Backend::Jit(mode), None);
            for (x, y) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!(
                    (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                    "{text}: {x} vs {y}"
                );
            }
        }
        let key = Key::for_step(&[opt.hypers()], &[], Mode::Fast);
        for target in ["sm_80", "sm_90"] {
            lensopt::jit::ptx(
                &opt.rule(),
                &key,
                lensopt_codegen::ptx::Precision::F32,
                target,
            )
            .unwrap();
        }
    }
}

#[test]
fn a_reduction_over_an_absent_optional_input_compiles_and_agrees() {
    let opt = DynOptimizer::parse(
        "H { hyper lr = 0.1; input h?; update { p = p - lr * g * (1 + sum(h)); } }",
    )
    .unwrap();
    let mut results = Vec::new();
    for backend in [Backend::Interpreter, Backend::Jit(Mode::Fast)] {
        let mut p = arr1(&[1.0f32, 2.0, 3.0]);
        let g = arr1(&[0.5f32, 0.25, -1.0]);
        let mut st: Stepper<f32> = opt.init(&[&p as &dyn TensorRef<f32>]).unwrap();
        st.set_backend(backend);
        st.step(&mut [&mut p as &mut dyn TensorMut<f32>], &[&g])
            .unwrap();
        let h = arr1(&[1.0f32, 1.0, 1.0]);
        let inputs = Inputs::new().with("h", vec![&h as &dyn TensorRef<f32>]);
        st.step_with(&mut [&mut p as &mut dyn TensorMut<f32>], &[&g], &inputs)
            .unwrap();
        results.push(p);
    }
    assert_eq!(results[0], results[1]);
    let key = Key::for_step(&[opt.hypers()], &[false], Mode::Fast);
    lensopt::jit::ptx(
        &opt.rule(),
        &key,
        lensopt_codegen::ptx::Precision::F64,
        "sm_90",
    )
    .unwrap();
}

#[test]
fn circuits_with_out_of_range_wires_or_bits_are_refused() {
    assert!(Circuit::from_parts(vec![Gate::Input(2)], 1, 0, vec![0]).is_err());
    assert!(Circuit::from_parts(vec![Gate::Input(usize::MAX)], 1, 0, vec![0]).is_err());
    assert!(Circuit::from_parts(vec![Gate::Param(0)], 0, 0, vec![0]).is_err());
    assert!(Circuit::from_parts(vec![Gate::Input(0), Gate::Not(1)], 1, 0, vec![1]).is_err());
    assert!(Circuit::from_parts(vec![Gate::Input(0), Gate::And(0, 7)], 1, 0, vec![1]).is_err());
    assert!(Circuit::from_parts(vec![Gate::Input(0)], 1, 0, vec![1 << 40]).is_err());
    let ok = Circuit::from_parts(vec![Gate::Input(0), Gate::Not(0)], 1, 0, vec![1]).unwrap();
    assert_eq!(ok.gates().len(), 2);
}

#[test]
fn a_machine_refuses_a_reverse_pass_of_another_circuit() {
    let mut b = CircuitBuilder::new();
    let x = b.input();
    let y = b.not(x);
    let small = b.finish(vec![y]).unwrap();
    let mut b = CircuitBuilder::new();
    let ins: Vec<usize> = (0..3).map(|_| b.input()).collect();
    let a = b.and(ins[0], ins[1]);
    let c = b.xor(a, ins[2]);
    let big = b.finish(vec![c, a]).unwrap();
    let mut m = Machine::new(&small, 1).unwrap();
    // Reverse before any forward pass.
    assert!(m.reverse(&small, &[vec![1]]).is_err());
    m.forward(&small, &[], &[vec![5]]).unwrap();
    assert!(m.reverse(&big, &[vec![1], vec![1]]).is_err());
    assert!(m.forward(&big, &[], &[vec![1], vec![2], vec![3]]).is_err());
    assert!(m.reverse(&small, &[vec![1]]).is_ok());
}

/// Parsing and checking `text` gives an error (not a signal), on a thread
/// with a 1 MiB stack: the depth limits keep recursion that shallow.
fn refused_on_a_small_stack(text: String) -> String {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || Rule::parse(&text).unwrap_err().to_string())
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let wrap = |open: &str, inner: &str, close: &str, n: usize| {
        format!(
            "P {{ hyper lr = 0.1; update {{ p = p - lr * {}{inner}{}; }} }}",
            open.repeat(n),
            close.repeat(n)
        )
    };
    let cases = [
        wrap("(", "g", ")", 15_000),
        wrap("-", "g", "", 15_000),
        wrap("!", "true", "", 15_000),
        wrap("abs(", "g", ")", 15_000),
        wrap("g ^ ", "g", "", 15_000),
        format!(
            "P {{ hyper lr = 0.1; update {{ p = p - lr * ({}); }} }}",
            (1..=23_000)
                .map(|i| format!("g*{i}"))
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        format!(
            "P {{ hyper lr = 0.1; update {{ p = p - lr * g; {}{} }} }}",
            "{".repeat(38_000),
            "}".repeat(38_000)
        ),
        format!(
            "P {{ hyper lr = 0.1; update {{ p = p - lr * g; {} }} }}",
            "{".repeat(38_000)
        ),
    ];
    for text in cases {
        let message = refused_on_a_small_stack(text);
        assert!(
            message.contains("nest") || message.contains("never closed"),
            "{message}"
        );
    }
    // Nesting within the limit is fine.
    Rule::parse(&wrap("(", "g", ")", 200)).unwrap();
}

#[test]
fn long_rules_check_and_compile() {
    // 40,000 `let`s (checking was quadratic in the number of statements).
    let lets: String = (1..=40_000)
        .map(|i| format!("let x{i} = x{} * 0.5 + g;", i - 1))
        .collect();
    let text =
        format!("L {{ hyper lr = 0.1; update {{ let x0 = g; {lets} p = p - lr * x40000; }} }}");
    let rule = Rule::parse(&text).unwrap();
    assert!(rule.nodes.len() > 40_000);
    // A 5,000-term sum through the whole compiler: the e-graph steps aside
    // (and says so), and the kernel is emitted in an order that keeps
    // register allocation linear.
    let terms: String = (1..=5_000)
        .map(|i| format!("let x{i} = g * {i};"))
        .collect();
    let sums: String = (2..=5_000)
        .map(|i| format!("let s{i} = s{} + x{i};", i - 1))
        .collect();
    let text = format!(
        "S {{ hyper lr = 0.1; update {{ {terms} let s1 = x1; {sums} p = p - lr * s5000; }} }}"
    );
    let opt = DynOptimizer::parse(&text).unwrap();
    let report = optimize_report(&opt.rule(), &Options::new(Mode::Fast));
    assert!(report.fallback.unwrap().contains("budget"));
    let mut p = Array1::<f32>::ones(5);
    let g = Array1::<f32>::ones(5);
    let mut st: Stepper<f32> = opt.init(&[&p as &dyn TensorRef<f32>]).unwrap();
    st.step(&mut [&mut p as &mut dyn TensorMut<f32>], &[&g])
        .unwrap();
    let expected = 1.0 - 0.1 * (5_000.0 * 5_001.0 / 2.0);
    assert!((p[0] - expected).abs() <= 1e-3 * expected.abs(), "{}", p[0]);
    // 300 nested reductions: 300 passes.
    let nested: String = (1..300)
        .map(|i| format!("let r{i} = sum(g * r{}) / numel();", i - 1))
        .collect();
    let text = format!(
        "N {{ hyper lr = 0.1; update {{ let r0 = mean(g); {nested} p = p - lr * g * r299; }} }}"
    );
    let opt = DynOptimizer::parse(&text).unwrap();
    let mut st: Stepper<f32> = opt.init(&[&p as &dyn TensorRef<f32>]).unwrap();
    st.step(&mut [&mut p as &mut dyn TensorMut<f32>], &[&g])
        .unwrap();
}

#[test]
fn an_optimizer_over_no_tensors_is_fine() {
    let adam = catalog::get("adam").unwrap();
    let mut st: Stepper<f32> = adam.init_groups(&[], &[]).unwrap();
    st.program(&[]).unwrap();
    st.step(&mut [], &[]).unwrap();
    // Presence flags must match the rule's inputs.
    assert!(matches!(st.program(&[true]), Err(Error::Mismatch(_))));
}

#[test]
fn overflowing_literals_are_errors() {
    for text in [
        "P { hyper lr = 1e400; update { p = p - lr * g; } }",
        "P { hyper lr = -1e400; update { p = p - lr * g; } }",
        "P { hyper lr = 0.1; update { p = p - lr * g * 1e309; } }",
        "P { hyper lr = 0.1; update { p = p - lr * g * 1000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000; } }",
    ] {
        let e = Rule::parse(text).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }
}

#[test]
fn nan_hyperparameters_are_refused() {
    let adam = catalog::get("adam").unwrap();
    let p = arr1(&[1.0f32]);
    let mut st: Stepper<f32> = adam.init(&[&p as &dyn TensorRef<f32>]).unwrap();
    assert!(matches!(
        st.set_hyper("lr", f64::NAN),
        Err(Error::HyperValue { .. })
    ));
    assert!(st.set_group_hyper(0, "lr", f64::NAN).is_err());
    assert!(adam.clone().with("lr", f64::NAN).is_err());
    assert_eq!(st.hyper(0, "lr"), Some(HyperValue::Num(1e-3)));
}

#[test]
fn an_input_given_twice_is_refused() {
    let sophia = catalog::get("sophiah").unwrap();
    let name = sophia.rule().inputs[0].name.clone();
    let mut p = arr1(&[1.0f32, 2.0]);
    let g = arr1(&[0.1f32, 0.2]);
    let h = arr1(&[1.0f32, 1.0]);
    let mut st: Stepper<f32> = sophia.init(&[&p as &dyn TensorRef<f32>]).unwrap();
    st.set_non_finite(NonFinite::Refuse);
    let inputs = Inputs::new()
        .with(&name, vec![&h as &dyn TensorRef<f32>])
        .with(&name, vec![&h as &dyn TensorRef<f32>]);
    let before = p.clone();
    let e = st
        .step_with(&mut [&mut p as &mut dyn TensorMut<f32>], &[&g], &inputs)
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    assert_eq!(p, before);
    assert_eq!(st.t(), 0);
}

#[test]
fn the_engine_keeps_a_bounded_number_of_programs() {
    let engine = Engine::new(4);
    for k in 0..20 {
        let rule = Rule::parse(&format!(
            "E{k} {{ hyper lr = 0.1; update {{ p = p - lr * g * {k}; }} }}"
        ))
        .unwrap();
        let key = Key::for_step(&[rule.default_hypers()], &[], Mode::Fast);
        engine.program::<f32>(&rule, &key).unwrap();
        assert!(engine.len() <= 4);
    }
    // Two rules that optimize to the same code share one program.
    let engine = Engine::new(8);
    let a = Rule::parse("A { hyper lr = 0.1; update { p = p - lr * g; } }").unwrap();
    let b = Rule::parse("/// Documented.\nA { hyper lr = 0.1; update { p = (p - lr * g) * 1; } }")
        .unwrap();
    let key = Key::for_step(&[a.default_hypers()], &[], Mode::Fast);
    let pa = engine.program::<f32>(&a, &key).unwrap();
    let pb = engine.program::<f32>(&b, &key).unwrap();
    assert!(std::sync::Arc::ptr_eq(&pa, &pb));
    assert_eq!(engine.len(), 1);
}

#[test]
fn parse_errors_keep_their_positions() {
    // Positions are resolved before the thread's source map is cleared.
    for _ in 0..3 {
        let e = Rule::parse("Sgd { hyper lr = 0.1; update { p = p - lr * q; } }").unwrap_err();
        assert_eq!(e.to_string(), "1:45: unknown name `q`");
        let rendered =
            e.items[0].render("Sgd { hyper lr = 0.1; update { p = p - lr * q; } }", "r.lo");
        assert!(rendered.contains("^"), "{rendered}");
    }
}

#[test]
fn code_generation_refuses_rules_beyond_its_budget() {
    // 5,000 levels of nested reductions: more passes than code generation
    // takes. The step is refused with an error, nothing changes.
    let nested: String = (1..5_000)
        .map(|i| format!("let r{i} = sum(g * r{});", i - 1))
        .collect();
    let text = format!(
        "N {{ hyper lr = 0.1; update {{ let r0 = sum(g); {nested} p = p - lr * g * r4999; }} }}"
    );
    let opt = DynOptimizer::parse(&text).unwrap();
    let mut p = Array1::<f32>::ones(3);
    let g = Array1::<f32>::ones(3);
    let mut st: Stepper<f32> = opt.init(&[&p as &dyn TensorRef<f32>]).unwrap();
    let e = st
        .step(&mut [&mut p as &mut dyn TensorMut<f32>], &[&g])
        .unwrap_err();
    assert!(matches!(e, Error::Compile(_)), "{e}");
    assert!(e.to_string().contains("passes"), "{e}");
    assert_eq!(p, Array1::<f32>::ones(3));
    assert_eq!(st.t(), 0);
    let key = Key::for_step(&[opt.hypers()], &[], Mode::Fast);
    assert!(lensopt::jit::ptx(
        &opt.rule(),
        &key,
        lensopt_codegen::ptx::Precision::F32,
        "sm_80"
    )
    .is_err());
}

#[test]
fn circuit_buffers_too_large_to_exist_are_an_error() {
    let mut b = CircuitBuilder::new();
    let x = b.input();
    let y = b.not(x);
    let c = b.finish(vec![y]).unwrap();
    assert!(Machine::new(&c, usize::MAX).is_err());
    assert!(Machine::new(&c, 1 << 61).is_err());
}

/// The case parser (flat and matrix cases) gets 20,000 byte-level mutants
/// of valid cases: every one is a case or an error, never a panic.
#[test]
fn case_parser_never_panics_on_mutated_cases() {
    let seeds = [
        r#"{"dtype": "float32", "shape": [2, 3], "p0": [[1, 2, 3], [4, 5, 6]], "grads": [[[0.5, -1, 2e-3], [1, 1, 1]]], "params_after": [[[1, 2, 3], [4, 5, 6]]], "lensopt": {"optimizer": "adam", "hyper": {"lr": 0.1, "amsgrad": true}}}"#,
        r#"{"n": 3, "steps": 2, "p0": [1, -2.5, 3e10], "grads": [[1, 2, 3], [0, 0, 0]], "hessians": [null, [1, 2, 3]], "lensopt": null}"#,
    ];
    let alphabet: &[u8] = b"[]{},:\"-0123456789.eE naflsetru";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut refused) = (0, 0);
    for k in 0..20_000 {
        let mut text: Vec<u8> = seeds[k % seeds.len()].as_bytes().to_vec();
        for _ in 0..1 + next() % 4 {
            let at = (next() % (text.len() as u64 + 1)) as usize;
            let byte = alphabet[(next() % alphabet.len() as u64) as usize];
            match next() % 3 {
                0 if at < text.len() => {
                    text.remove(at);
                }
                1 if at < text.len() => text[at] = byte,
                _ => text.insert(at, byte),
            }
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let result = std::panic::catch_unwind(|| lensopt::case::Case::from_json(&text));
        match result {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!("the case parser panicked on:\n{text}"),
        }
    }
    assert!(
        ok > 100 && refused > 10_000,
        "{ok} parsed, {refused} refused"
    );
}
