//! Laws of the categorical layer, as tests: the reverse derivative axioms
//! RD.1-RD.7 for every generator and for random composites (against finite
//! differences where the axiom is about derivatives), functoriality of
//! Backprop as Functor, lens composition, and shape errors as values.

use lensopt::category::learner::Learner;
use lensopt::category::lens::Lens;
use lensopt::category::rdc::{ParaMap, ReverseDerivative};
use lensopt::diagram::plan::{Model, SplitMix};
use lensopt::diagram::*;
use ndarray::{Array1, Array2};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

fn random(rng: &mut SplitMix, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())))
}

/// The forward derivative `D[f](a, x)` by central differences.
fn forward_derivative(f: &mut dyn ReverseDerivative, a: &[f64], x: &[f64]) -> Vec<f64> {
    let h = 1e-6;
    let plus: Vec<f64> = a.iter().zip(x).map(|(a, x)| a + h * x).collect();
    let minus: Vec<f64> = a.iter().zip(x).map(|(a, x)| a - h * x).collect();
    let (fp, fm) = (f.apply(&plus), f.apply(&minus));
    fp.iter()
        .zip(&fm)
        .map(|(p, m)| (p - m) / (2.0 * h))
        .collect()
}

/// Inputs where every generator is smooth: positive (for `log`), away from
/// ReLU's kink.
fn safe_point(rng: &mut SplitMix, n: usize) -> Vec<f64> {
    random(rng, n, 0.2, 1.5)
}

/// RD.2, RD.6 and RD.7 for one map at random points.
fn check_derivative_axioms(name: &str, f: &mut dyn ReverseDerivative, rng: &mut SplitMix) {
    let (n, m) = f.dims();
    for _ in 0..3 {
        let a = safe_point(rng, n);
        let (b1, b2) = (random(rng, m, -1.0, 1.0), random(rng, m, -1.0, 1.0));
        // RD.2: linear in the second argument.
        let r1 = f.reverse(&a, &b1);
        let r2 = f.reverse(&a, &b2);
        let r12 = f.reverse(&a, &add(&b1, &b2));
        assert!(
            close(&r12, &add(&r1, &r2), 1e-10),
            "{name}: RD.2 additivity"
        );
        assert!(
            f.reverse(&a, &vec![0.0; m]).iter().all(|v| *v == 0.0),
            "{name}: RD.2 R[f](a, 0) = 0"
        );
        // RD.6: <D[f](a, x), b> = <x, R[f](a, b)>, D by finite differences.
        let x = random(rng, n, -1.0, 1.0);
        let lhs = dot(&forward_derivative(f, &a, &x), &b1);
        let rhs = dot(&x, &r1);
        assert!(
            (lhs - rhs).abs() <= 1e-5 * (1.0 + lhs.abs()),
            "{name}: RD.6 {lhs} vs {rhs}"
        );
        // RD.7: the second derivative is symmetric: <d/dt R[f](a + t x, b), y> = <d/dt R[f](a + t y, b), x>.
        let y = random(rng, n, -1.0, 1.0);
        let h = 1e-5;
        let shifted =
            |d: &[f64], t: f64| -> Vec<f64> { a.iter().zip(d).map(|(a, d)| a + t * d).collect() };
        let dx: Vec<f64> = f
            .reverse(&shifted(&x, h), &b1)
            .iter()
            .zip(f.reverse(&shifted(&x, -h), &b1))
            .map(|(p, m)| (p - m) / (2.0 * h))
            .collect();
        let dy: Vec<f64> = f
            .reverse(&shifted(&y, h), &b1)
            .iter()
            .zip(f.reverse(&shifted(&y, -h), &b1))
            .map(|(p, m)| (p - m) / (2.0 * h))
            .collect();
        let (s1, s2) = (dot(&dx, &y), dot(&dy, &x));
        assert!(
            (s1 - s2).abs() <= 1e-4 * (1.0 + s1.abs()),
            "{name}: RD.7 {s1} vs {s2}"
        );
    }
}

fn generators() -> Vec<(&'static str, Diagram)> {
    vec![
        ("linear", linear("l", 3, 2)),
        ("dense", dense("d", 3, 2)),
        ("bias", bias("b", 3)),
        ("matmul", matmul(2, 3, 2)),
        ("add", add_d()),
        ("mul", mul([3])),
        ("copy", copy([3])),
        ("discard", discard([3]) | identity([2])),
        ("swap", swap([2], [3])),
        ("identity", identity([3])),
        ("relu", relu([3])),
        ("sigmoid", sigmoid([3])),
        ("tanh", tanh([3])),
        ("exp", exp([3])),
        ("log", log([3])),
        ("softmax", softmax(4)),
        ("sum", sum([3])),
        ("broadcast", broadcast(3)),
        ("reshape", reshape([2, 3], [6])),
    ]
}

fn add_d() -> Diagram {
    lensopt::diagram::add([3])
}

#[test]
fn every_generator_satisfies_rd2_rd6_rd7() {
    let mut rng = SplitMix(1);
    for (name, d) in generators() {
        let mut f = ParaMap::new(&d, 3).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_derivative_axioms(name, &mut f, &mut rng);
    }
}

#[test]
fn rd1_rd3_rd4_rd5_on_composites() {
    let mut rng = SplitMix(2);
    let f = || dense("f", 3, 3) >> tanh([3]);
    let g = || dense("g", 3, 3) >> sigmoid([3]);
    // RD.1: R[f + g] = R[f] + R[g], with f + g = copy ; (f | g) ; add.
    let sum_d = copy([3]) >> (f() | g()) >> lensopt::diagram::add([3]);
    let mut s = ParaMap::new(&sum_d, 5).unwrap();
    let mut fm = ParaMap::new(&f(), 5).unwrap();
    let mut gm = ParaMap::new(&g(), 6).unwrap();
    // Same parameters in the sum as in the parts: seeds 5 and 6 initialise differently, so copy them.
    let fp = Model::<f64>::new(&f(), 5).unwrap().flat_params();
    let gp = Model::<f64>::new(&g(), 6).unwrap().flat_params();
    let a = safe_point(&mut rng, 3);
    let b = random(&mut rng, 3, -1.0, 1.0);
    let mut sa = fp.clone();
    sa.extend(&gp);
    sa.extend(&a);
    let mut fa = fp.clone();
    fa.extend(&a);
    let mut ga = gp.clone();
    ga.extend(&a);
    let rs = s.reverse(&sa, &b);
    let (rf, rg) = (fm.reverse(&fa, &b), gm.reverse(&ga, &b));
    let (np, nq) = (fp.len(), gp.len());
    assert!(close(&rs[..np], &rf[..np], 1e-12), "RD.1: parameters of f");
    assert!(
        close(&rs[np..np + nq], &rg[..nq], 1e-12),
        "RD.1: parameters of g"
    );
    assert!(
        close(&rs[np + nq..], &add(&rf[np..], &rg[nq..]), 1e-12),
        "RD.1: inputs"
    );
    // RD.3: identity and projection.
    let mut id = ParaMap::new(&identity([3]), 0).unwrap();
    assert_eq!(id.reverse(&a, &b), b, "RD.3 identity");
    let mut proj = ParaMap::new(&(identity([3]) | discard([2])), 0).unwrap();
    let a2: Vec<f64> = a.iter().copied().chain([0.5, 0.7]).collect();
    let mut want = b.clone();
    want.extend([0.0, 0.0]);
    assert_eq!(proj.reverse(&a2, &b), want, "RD.3 projection");
    // RD.4: pairing <f, g> = copy ; (f | g).
    let pair = copy([3]) >> (f() | g());
    let mut pm = ParaMap::new(&pair, 0).unwrap();
    let c = random(&mut rng, 3, -1.0, 1.0);
    let mut bc = b.clone();
    bc.extend(&c);
    let rp = pm.reverse(&sa, &bc);
    let (rf, rg) = (fm.reverse(&fa, &b), gm.reverse(&ga, &c));
    assert!(
        close(&rp[np + nq..], &add(&rf[np..], &rg[nq..]), 1e-12),
        "RD.4"
    );
    // RD.5: chain rule, against R[f] and R[g] computed separately.
    let mut fg = ParaMap::new(&(f() >> g()), 0).unwrap();
    let mut fga = fp.clone();
    fga.extend(&gp);
    fga.extend(&a);
    let r = fg.reverse(&fga, &c);
    let fa_out = fm.apply(&fa);
    let mut gin = gp.clone();
    gin.extend(&fa_out);
    let rg = gm.reverse(&gin, &c);
    let rf = fm.reverse(&fa, &rg[nq..]);
    assert!(close(&r[..np], &rf[..np], 1e-12), "RD.5 parameters of f");
    assert!(
        close(&r[np..np + nq], &rg[..nq], 1e-12),
        "RD.5 parameters of g"
    );
    assert!(close(&r[np + nq..], &rf[np..], 1e-12), "RD.5 inputs");
}

/// Random composites of the smooth unary generators on a 3-wire, with
/// sequential and parallel composition.
fn composite() -> impl Strategy<Value = (String, u64)> {
    let leaf = prop_oneof![
        Just("tanh".to_string()),
        Just("sigmoid".to_string()),
        Just("dense".to_string()),
        Just("linear".to_string()),
        Just("bias".to_string()),
        Just("square".to_string()),
        Just("logsum".to_string()),
    ];
    let tree = leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} ; {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a} * {b})")),
        ]
    });
    (tree, any::<u64>())
}

fn build(text: &str, counter: &mut usize) -> Diagram {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        // Split at the top-level operator.
        let mut depth = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ';' | '+' | '*' if depth == 0 => {
                    let (a, b) = (build(&inner[..i], counter), build(&inner[i + 1..], counter));
                    return match ch {
                        ';' => a >> b,
                        '+' => copy([3]) >> (a | b) >> lensopt::diagram::add([3]),
                        _ => copy([3]) >> (a | b) >> mul([3]),
                    };
                }
                _ => {}
            }
        }
    }
    *counter += 1;
    let name = format!("n{counter}");
    match text {
        "tanh" => tanh([3]),
        "sigmoid" => sigmoid([3]),
        "dense" => dense_with(&name, 3, 3, Init::Normal(0.5)),
        "linear" => linear(&name, 3, 3),
        "bias" => bias(&name, 3),
        "square" => copy([3]) >> mul([3]),
        // log(e^x + e^x), through exp, copy, add and log.
        _ => exp([3]) >> copy([3]) >> lensopt::diagram::add([3]) >> log([3]),
    }
}

#[test]
fn random_composites_satisfy_the_axioms() {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 60,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    runner
        .run(&composite(), |(text, seed)| {
            let mut counter = 0;
            let d = build(&text, &mut counter);
            let mut f =
                ParaMap::new(&d, seed).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            let mut rng = SplitMix(seed);
            check_derivative_axioms(&text, &mut f, &mut rng);
            Ok(())
        })
        .unwrap();
}

#[test]
fn backprop_is_a_functor() {
    // L(f ; g) = L(f) ; L(g), with eps = 0.1 and e = (x - y)^2 / 2.
    let f = dense_with("f", 2, 3, Init::Normal(0.7)) >> tanh([3]);
    let g = dense_with("g", 3, 2, Init::Normal(0.7)) >> sigmoid([2]);
    let eps = 0.1;
    let whole = Learner::from_model(Model::new(&(f.clone() >> g.clone()), 11).unwrap(), eps);
    let lf = Learner::from_model(Model::new(&f, 0).unwrap(), eps);
    let lg = Learner::from_model(Model::new(&g, 0).unwrap(), eps);
    let parts = lf.then(lg);
    let mut rng = SplitMix(4);
    for _ in 0..5 {
        let p = Array1::from(random(&mut rng, whole.p.len(), -1.0, 1.0));
        let a = Array1::from(random(&mut rng, 2, -1.0, 1.0));
        let b = Array1::from(random(&mut rng, 2, 0.0, 1.0));
        let (i1, i2) = (whole.implement(&p, &a), parts.implement(&p, &a));
        assert!(
            close(i1.as_slice().unwrap(), i2.as_slice().unwrap(), 1e-12),
            "implement"
        );
        let (u1, u2) = (whole.update(&p, &a, &b), parts.update(&p, &a, &b));
        assert!(
            close(u1.as_slice().unwrap(), u2.as_slice().unwrap(), 1e-12),
            "update"
        );
        let (r1, r2) = (whole.request(&p, &a, &b), parts.request(&p, &a, &b));
        assert!(
            close(r1.as_slice().unwrap(), r2.as_slice().unwrap(), 1e-12),
            "request"
        );
    }
    // Parallel composition runs the two learners on their halves.
    let lf = Learner::from_model(Model::new(&dense("f", 2, 3), 1).unwrap(), eps);
    let lg = Learner::from_model(Model::new(&dense("g", 1, 2), 2).unwrap(), eps);
    let both = lf.clone().beside(lg.clone());
    let a = Array1::from(vec![0.3, -0.2, 0.9]);
    let out = both.implement(&both.p, &a);
    let left = lf.implement(&lf.p, &Array1::from(vec![0.3, -0.2]));
    let right = lg.implement(&lg.p, &Array1::from(vec![0.9]));
    assert_eq!(
        out.as_slice().unwrap(),
        [left.as_slice().unwrap(), right.as_slice().unwrap()].concat()
    );
}

#[test]
fn a_learner_learns() {
    // A learner from L_{eps,e} reduces its error on a fixed example.
    let mut l = Learner::from_model(
        Model::new(&(dense("f", 2, 2) >> tanh([2])), 3).unwrap(),
        0.5,
    );
    let (a, b) = (Array1::from(vec![0.5, -0.5]), Array1::from(vec![0.2, 0.4]));
    let err = |l: &Learner| (&l.implement(&l.p, &a) - &b).mapv(|x| x * x).sum();
    let before = err(&l);
    for _ in 0..200 {
        l.train(&a, &b);
    }
    assert!(err(&l) < before * 1e-3, "{} -> {}", before, err(&l));
}

#[test]
fn lens_composition() {
    // A lens on numbers: get squares, put scales the change by the derivative.
    let square = Lens::new(|a: &f64| a * a, |a: &f64, db: &f64| 2.0 * a * db);
    let double = Lens::new(|a: &f64| 2.0 * a, |_: &f64, db: &f64| 2.0 * db);
    let both = square.clone().then(double.clone());
    // put_{f;g}(a, c') = put_f(a, put_g(get_f(a), c'))
    assert_eq!(both.get(&3.0), 18.0);
    assert_eq!(
        both.put(&3.0, &1.0),
        square.put(&3.0, &double.put(&9.0, &1.0))
    );
    let id = Lens::<f64, f64, f64, f64>::identity();
    let left = id.clone().then(square.clone());
    assert_eq!(
        (left.get(&1.5), left.put(&1.5, &2.0)),
        (square.get(&1.5), square.put(&1.5, &2.0))
    );
}

#[test]
fn shape_errors_are_values() {
    let bad = dense("a", 4, 3) >> relu([4]);
    let err = bad.check().unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot compose: the left diagram produces [3] but the right one expects [4]"
    );
    assert!(Model::<f64>::new(&bad, 0).is_err());
    let err = reshape([2, 3], [5]).check().unwrap_err();
    assert!(
        err.to_string().contains("changes the number of values"),
        "{err}"
    );
    let err = (dense("x", 2, 2) >> dense("x", 2, 2)).check().unwrap_err();
    assert_eq!(
        err.to_string(),
        "two parameter blocks are called `x.weight`"
    );
    let err = (copy([2]) >> discard([2])).check().unwrap_err();
    assert!(
        err.to_string()
            .contains("produces [2] ● [2] but the right one expects [2]"),
        "{err}"
    );
    let mut m = Model::<f64>::new(&dense("d", 3, 2), 0).unwrap();
    let err = m.forward(&[Array2::zeros((4, 5))]).unwrap_err();
    assert!(
        err.to_string().contains("expected 4 examples of 3 values"),
        "{err}"
    );
    assert!(
        m.backward(&[Array2::zeros((4, 2))]).is_err(),
        "backward before forward"
    );
    m.forward(&[Array2::zeros((4, 3))]).unwrap();
    assert!(
        m.backward(&[Array2::zeros((4, 3))]).is_err(),
        "wrong gradient shape"
    );
}
