//! Functions, transforms and `chain`: the prelude checks, a composed AdamW
//! is proved the same update as the hand-written one and reproduces its
//! golden cases, composition compiles to one fused kernel, and misuse is an
//! error at the call.

use lensopt::case::Case;
use lensopt::{catalog, equivalent, DynOptimizer, Equivalence, Optimizer, ParseRule, Rule};

/// AdamW as optax writes it: Adam's direction, plus decoupled weight decay,
/// times minus the learning rate, added to `p`.
const CHAINED_ADAMW: &str = "AdamW {
    hyper lr = 1e-3, weight_decay = 1e-2;
    update { p = p + chain(g, scale_by_adam, add_decayed_weights, scale_by_learning_rate); }
}";

#[test]
fn composed_adamw_is_proved_equal_to_the_hand_written_one() {
    let composed = Rule::parse(CHAINED_ADAMW).unwrap();
    let hand = catalog::get("adamw").unwrap().rule();
    // The transforms' hyperparameters and states became the rule's.
    let names: Vec<&str> = composed.hypers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        ["lr", "weight_decay", "beta1", "beta2", "eps", "amsgrad"]
    );
    let states: Vec<&str> = composed.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(states, ["m", "v", "vmax"]);
    assert_eq!(equivalent(&composed, &hand), Equivalence::Proved);
    // A wrong composition is told apart.
    let wrong = Rule::parse(&CHAINED_ADAMW.replace(
        "scale_by_adam, add_decayed_weights",
        "add_decayed_weights, scale_by_adam",
    ))
    .unwrap();
    assert!(matches!(
        equivalent(&wrong, &hand),
        Equivalence::Different(_)
    ));
}

#[test]
fn composed_adamw_reproduces_adamws_golden_cases() {
    let opt = DynOptimizer::parse(CHAINED_ADAMW).unwrap();
    for name in ["adamw.json", "adamw.f32.json"] {
        let path = lensopt_tests::golden_dir().join(name);
        let case = Case::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut opt = opt.clone();
        for (k, v) in &case.hyper {
            lensopt::case::set_hyper(&mut opt, k, *v).unwrap();
        }
        let replay = lensopt::case::run(&case, &opt).unwrap();
        let (abs, rel) = lensopt_tests::tolerance(&case);
        for (mine, theirs) in replay
            .params_after
            .iter()
            .flatten()
            .zip(case.params_after.as_ref().unwrap().iter().flatten())
        {
            assert!(
                (mine - theirs).abs() <= abs + rel * theirs.abs(),
                "{name}: {mine} vs {theirs}"
            );
        }
    }
}

#[test]
fn composition_compiles_to_one_fused_kernel() {
    let composed = Rule::parse(CHAINED_ADAMW).unwrap();
    let hand = catalog::get("adamw").unwrap().rule();
    let key = |r: &Rule| {
        let hypers: Vec<lensopt::HyperValue> = r.hypers.iter().map(|h| h.default).collect();
        lensopt::jit::Key::for_step(&[hypers], &[], lensopt::Mode::Fast)
    };
    let a = lensopt::jit::schedule(&composed, &key(&composed));
    let b = lensopt::jit::schedule(&hand, &key(&hand));
    assert_eq!(a.passes.len(), 0, "no reduction pass");
    assert_eq!(a.buffers_read(), b.buffers_read());
    assert_eq!(a.buffers_written(), b.buffers_written());
}

#[test]
fn user_functions_and_transforms() {
    let text = "
        /// Heavy-ball momentum as a transform.
        transform momentum(u) {
            hyper mu = 0.9;
            state buf = 0;
            buf = mu * buf + u;
            buf
        }
        fn half(x) = x * 0.5;
        fn twice_half(x) { let h = half(x); h + h }
        M {
            hyper lr = 0.1;
            update { p = p - lr * twice_half(momentum(g)); }
        }";
    let composed = Rule::parse(text).unwrap();
    let hand = Rule::parse(
        "M { hyper lr = 0.1, mu = 0.9; state buf = 0; update { buf = mu * buf + g; let h = buf * 0.5; p = p - lr * (h + h); } }",
    )
    .unwrap();
    assert_eq!(equivalent(&composed, &hand), Equivalence::Proved);
    // The prelude's pure functions, too.
    let ema = Rule::parse(
        "E { hyper b = 0.9; state m = 0; update { m = ema(m, g, b); p = p - debias(m, b); } }",
    )
    .unwrap();
    let spelled = Rule::parse(
        "E { hyper b = 0.9; state m = 0; update { m = m + (1 - b) * (g - m); p = p - m / (1 - b ^ t); } }",
    )
    .unwrap();
    assert_eq!(equivalent(&ema, &spelled), Equivalence::Proved);
}

/// Every function and transform of the prelude checks when called.
#[test]
fn the_prelude_checks() {
    let rule = Rule::parse(
        "All {
            hyper lr = 0.1;
            update {
                let a = chain(g, clip_by_global_norm, scale_by_adam, cautious, add_decayed_weights);
                p = p + scale_by_learning_rate(a) + ema(p, g, 0.5) - debias(p, 0.5);
            }
        }",
    )
    .unwrap();
    for name in [
        "max_norm",
        "beta1",
        "beta2",
        "eps",
        "amsgrad",
        "weight_decay",
    ] {
        assert!(rule.hyper_index(name).is_some(), "{name}");
    }
    // Lion's state `m` is Adam's name too: one rule holds one of them.
    let lion =
        Rule::parse("L { hyper lr = 1e-4; update { p = p - lr * scale_by_lion(g); } }").unwrap();
    let spelled = Rule::parse(
        "L { hyper lr = 1e-4, beta1 = 0.9, beta2 = 0.99; state m = 0; update {
            let u = sign(beta1 * m + (1 - beta1) * g);
            m = beta2 * m + (1 - beta2) * g;
            p = p - lr * u;
        } }",
    )
    .unwrap();
    assert_eq!(equivalent(&lion, &spelled), Equivalence::Proved);
    let prelude = lensopt_frontend::prelude::functions();
    assert_eq!(prelude.len(), 16, "every item of the prelude parsed");
}

fn error_of(text: &str) -> String {
    Rule::parse(text).unwrap_err().to_string()
}

#[test]
fn misuse_is_an_error_at_the_call() {
    // A transform with state, called twice.
    let e = error_of(
        "T { hyper lr = 0.1; update { p = p - lr * scale_by_adam(g) - lr * scale_by_adam(g); } }",
    );
    assert!(
        e.contains("transform `scale_by_adam` is called twice"),
        "{e}"
    );
    // Transforms update state: not in the view, nor in a pure function.
    let e = error_of("T { hyper lr = 0.1; view p + scale_by_lion(p); update { p = p - lr * g; } }");
    assert!(e.contains("cannot be called"), "{e}");
    let e =
        error_of("fn f(x) = scale_by_lion(x); T { hyper lr = 0.1; update { p = p - lr * f(g); } }");
    assert!(e.contains("cannot be called in a `fn`"), "{e}");
    // A function cannot assign, and a body's errors point at the call.
    let e = error_of("fn f(x) { y = x; x } T { hyper lr = 0.1; update { p = p - lr * f(g); } }");
    assert!(e.contains("a function cannot assign `y`"), "{e}");
    let e = error_of("fn f(x) = x * nothing; T { hyper lr = 0.1; update { p = p - lr * f(g); } }");
    assert!(e.contains("in function `f`: unknown name `nothing`"), "{e}");
    assert!(e.starts_with("1:"), "at the call's line: {e}");
    // No recursion: a function sees only those declared before it.
    let e = error_of("fn f(x) = f(x); T { hyper lr = 0.1; update { p = p - lr * f(g); } }");
    assert!(e.contains("unknown function `f`"), "{e}");
    // A state clash between the rule and a transform.
    let e =
        error_of("T { hyper lr = 0.1; state m = 0; update { p = p - lr * scale_by_adam(g); } }");
    assert!(e.contains("declares state `m`"), "{e}");
    // A function may not take a built-in's name.
    let e = error_of("fn f32(x) = x; T { hyper lr = 0.1; update { p = p - lr * f32(g); } }");
    assert!(e.contains("`f32` is a built-in function"), "{e}");
    // Arity.
    let e = error_of("T { hyper lr = 0.1; update { p = p - lr * ema(g, g); } }");
    assert!(e.contains("takes 3 argument(s), but 2 were given"), "{e}");
    let e = error_of("T { hyper lr = 0.1; update { p = p + chain(g, ema); } }");
    assert!(e.contains("a step of `chain` takes one"), "{e}");
}

#[test]
fn inlining_is_bounded() {
    // Each function calls the previous one twice: 2^40 calls unbounded.
    let mut text = String::from("fn h0(x) = x + 1;\n");
    for k in 1..40 {
        text.push_str(&format!("fn h{k}(x) = h{}(x) * h{}(x);\n", k - 1, k - 1));
    }
    text.push_str("T { hyper lr = 0.1; update { p = p - lr * h39(g); } }");
    let e = error_of(&text);
    assert!(e.contains("inlines more than"), "{e}");
}
