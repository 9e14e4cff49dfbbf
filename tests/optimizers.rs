//! The runtime's optimizer API: many tensors of any shape, parameter groups,
//! schedules, views, inputs, state access, and errors that change nothing.

use lensopt::catalog::{Adam, AdamW, Adan, Lamb, SGD};
use lensopt::{optimizer, DynOptimizer, Error, Group, Inputs, Optimizer, TensorMut, TensorRef};
use ndarray::{Array, ArrayD, IxDyn};

/// A deterministic pseudo-random sequence (SplitMix64), as f64 in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn tensor(&mut self, shape: &[usize]) -> ArrayD<f64> {
        Array::from_shape_fn(IxDyn(shape), |_| self.next())
    }
}

fn refs(v: &[ArrayD<f64>]) -> Vec<&dyn TensorRef<f64>> {
    v.iter().map(|a| a as &dyn TensorRef<f64>).collect()
}

fn muts(v: &mut [ArrayD<f64>]) -> Vec<&mut dyn TensorMut<f64>> {
    v.iter_mut().map(|a| a as &mut dyn TensorMut<f64>).collect()
}

#[test]
fn lamb_matches_the_formula_of_the_paper() {
    let mut rng = Rng(7);
    let shapes: [&[usize]; 3] = [&[4, 5], &[7], &[2, 3, 2]];
    let mut params: Vec<ArrayD<f64>> = shapes.iter().map(|s| rng.tensor(s)).collect();
    let mut expect = params.clone();
    let (lr, b1, b2, eps, wd) = (0.01, 0.8, 0.95, 1e-6, 0.1);
    let lamb = Lamb::default()
        .lr(lr)
        .beta1(b1)
        .beta2(b2)
        .eps(eps)
        .weight_decay(wd);
    let mut opt = lamb.init(&refs(&params)).unwrap();
    let mut m: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut v = m.clone();
    for t in 1..=4 {
        let grads: Vec<ArrayD<f64>> = shapes.iter().map(|s| rng.tensor(s)).collect();
        opt.step(&mut muts(&mut params), &refs(&grads)).unwrap();
        // LAMB (You et al., Algorithm 2) with phi the identity, per tensor.
        for k in 0..shapes.len() {
            let p = expect[k].as_slice_mut().unwrap();
            let g = grads[k].as_slice().unwrap();
            let mut r = vec![0.0; p.len()];
            for i in 0..p.len() {
                m[k][i] = b1 * m[k][i] + (1.0 - b1) * g[i];
                v[k][i] = b2 * v[k][i] + (1.0 - b2) * g[i] * g[i];
                let mhat = m[k][i] / (1.0 - b1.powi(t));
                let vhat = v[k][i] / (1.0 - b2.powi(t));
                r[i] = mhat / (vhat.sqrt() + eps) + wd * p[i];
            }
            let pn = p.iter().map(|x| x * x).sum::<f64>().sqrt();
            let rn = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            let trust = if pn > 0.0 && rn > 0.0 { pn / rn } else { 1.0 };
            for i in 0..p.len() {
                p[i] -= lr * trust * r[i];
            }
        }
        for (a, b) in params.iter().zip(&expect) {
            for (x, y) in a.iter().zip(b.iter()) {
                assert!(
                    (x - y).abs() <= 1e-13 * (1.0 + y.abs()),
                    "step {t}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn one_step_over_many_tensors_equals_one_step_per_tensor() {
    let mut rng = Rng(11);
    let shapes: Vec<Vec<usize>> = (0..300)
        .map(|i| match i % 4 {
            0 => vec![],
            1 => vec![1 + i % 13],
            2 => vec![2, 1 + i % 5, 3],
            _ => vec![0, 4],
        })
        .collect();
    let mut params: Vec<ArrayD<f64>> = shapes.iter().map(|s| rng.tensor(s)).collect();
    let mut alone = params.clone();
    let adam = Adam::default().lr(0.05).weight_decay(0.01);
    let mut together = adam.init(&refs(&params)).unwrap();
    let mut separate: Vec<_> = alone
        .iter()
        .map(|p| adam.init(&[p as &dyn TensorRef<f64>]).unwrap())
        .collect();
    for _ in 0..3 {
        let grads: Vec<ArrayD<f64>> = shapes.iter().map(|s| rng.tensor(s)).collect();
        together
            .step(&mut muts(&mut params), &refs(&grads))
            .unwrap();
        for ((opt, p), g) in separate.iter_mut().zip(&mut alone).zip(&grads) {
            opt.step(&mut [p], &[g]).unwrap();
        }
    }
    assert_eq!(params, alone);
    assert_eq!(together.t(), 3);
    assert_eq!(
        together.state(2, "m").unwrap().shape(),
        shapes[2].as_slice()
    );
}

#[test]
fn parameter_groups_have_their_own_hyperparameters() {
    let mut rng = Rng(3);
    let mut params = vec![rng.tensor(&[3, 3]), rng.tensor(&[3]), rng.tensor(&[5])];
    let grads = vec![rng.tensor(&[3, 3]), rng.tensor(&[3]), rng.tensor(&[5])];
    let adamw = AdamW::default().lr(0.1).weight_decay(0.5);
    // Weights decay; biases (tensors 1 and 2) do not, and tensor 2 has a smaller lr.
    let groups = [
        Group::new([0]),
        Group::new([1]).set("weight_decay", 0.0),
        Group::new([2]).set("weight_decay", 0.0).set("lr", 0.01),
    ];
    let mut opt = adamw.init_groups(&refs(&params), &groups).unwrap();
    assert_eq!(opt.hyper(2, "lr"), Some(0.01.into()));
    let mut expect = params.clone();
    let configs = [
        adamw.clone(),
        adamw.clone().weight_decay(0.0),
        adamw.clone().weight_decay(0.0).lr(0.01),
    ];
    for _ in 0..2 {
        opt.step(&mut muts(&mut params), &refs(&grads)).unwrap();
    }
    for (k, cfg) in configs.iter().enumerate() {
        let mut single = cfg.init(&[&expect[k] as &dyn TensorRef<f64>]).unwrap();
        for _ in 0..2 {
            single.step(&mut [&mut expect[k]], &[&grads[k]]).unwrap();
        }
    }
    assert_eq!(params, expect);
}

#[test]
fn hyperparameters_change_between_steps_without_a_new_optimizer() {
    let mut p = ndarray::array![1.0f32, 2.0, -3.0];
    let g = ndarray::array![0.5f32, -1.0, 2.0];
    let mut opt = SGD::default().lr(0.1).init(&[&p]).unwrap();
    opt.step(&mut [&mut p], &[&g]).unwrap();
    opt.set_hyper("lr", 0.01).unwrap();
    opt.step(&mut [&mut p], &[&g]).unwrap();
    let expect: Vec<f32> = [1.0f32, 2.0, -3.0]
        .iter()
        .zip(g.iter())
        .map(|(p, g)| p - 0.1 * g - 0.01 * g)
        .collect();
    for (a, b) in p.iter().zip(&expect) {
        assert!((a - b).abs() < 1e-6);
    }
    assert!(matches!(
        opt.set_hyper("nesterov", 1.0),
        Err(Error::HyperType { .. })
    ));
    assert!(matches!(
        opt.set_hyper("beta1", 1.0),
        Err(Error::UnknownHyper { .. })
    ));
    assert!(opt.set_group_hyper(1, "lr", 0.1).is_err());
}

#[test]
fn global_norm_clipping_spans_all_tensors_of_the_step() {
    let mut rng = Rng(5);
    let a = rng.tensor(&[6]);
    let b = rng.tensor(&[2, 2]);
    let mut split = vec![a.clone(), b.clone()];
    let mut joined: ArrayD<f64> = Array::from_iter(a.iter().chain(b.iter()).copied()).into_dyn();
    let adan = Adan::default()
        .lr(0.1)
        .max_grad_norm(0.3)
        .weight_decay(0.02);
    let mut opt_split = adan.init(&refs(&split)).unwrap();
    let mut opt_joined = adan.init(&[&joined as &dyn TensorRef<f64>]).unwrap();
    for _ in 0..3 {
        let ga = rng.tensor(&[6]).mapv(|x| 4.0 * x);
        let gb = rng.tensor(&[2, 2]).mapv(|x| 4.0 * x);
        let gj: ArrayD<f64> = Array::from_iter(ga.iter().chain(gb.iter()).copied()).into_dyn();
        opt_split.step(&mut muts(&mut split), &[&ga, &gb]).unwrap();
        opt_joined.step(&mut [&mut joined], &[&gj]).unwrap();
    }
    let flat: Vec<f64> = split[0].iter().chain(split[1].iter()).copied().collect();
    for (x, y) in flat.iter().zip(joined.iter()) {
        assert!((x - y).abs() <= 1e-15, "{x} vs {y}");
    }
}

optimizer! {
    /// Nesterov momentum as a lens: the model sees the look-ahead point.
    pub LookAhead {
        hyper lr = 0.1, mu = 0.9;
        state b = 0;
        view p - lr * mu * b;
        update {
            b = mu * b + g;
            p = p - lr * b;
        }
    }
}

#[test]
fn the_view_is_the_look_ahead_point() {
    let mut p = ndarray::array![1.0f64, -1.0];
    let mut opt = LookAhead::default().init(&[&p]).unwrap();
    assert_eq!(
        opt.view(&[&p]).unwrap()[0].as_slice().unwrap(),
        &[1.0, -1.0]
    );
    opt.step(&mut [&mut p], &[&ndarray::array![1.0, 2.0]])
        .unwrap();
    // b = g; p = p - 0.1 b; view = p - 0.1 * 0.9 * b.
    let view = opt.view(&[&p]).unwrap();
    let expect = [
        (1.0 - 0.1) - 0.1 * 0.9 * 1.0,
        (-1.0 - 0.1 * 2.0) - 0.1 * 0.9 * 2.0,
    ];
    for (a, b) in view[0].iter().zip(expect) {
        assert!((a - b).abs() < 1e-15, "{a} vs {b}");
    }
}

optimizer! {
    /// State initialised from the parameter, and per-tensor scalar state.
    pub Tracker {
        hyper lr = 0.5, start = 2.0;
        state anchor = p * start;
        state scalar ema = 1.0;
        update {
            ema = 0.5 * ema + 0.5 * norm(g);
            p = anchor - lr * g / ema;
        }
    }
}

#[test]
fn state_starts_from_the_parameter_and_scalar_state_is_per_tensor() {
    let mut p = vec![
        ndarray::array![1.0f64, 2.0].into_dyn(),
        ndarray::array![3.0f64].into_dyn(),
    ];
    let g = vec![
        ndarray::array![3.0f64, 4.0].into_dyn(),
        ndarray::array![2.0f64].into_dyn(),
    ];
    let mut opt = Tracker::default().init(&refs(&p)).unwrap();
    assert_eq!(
        opt.state(0, "anchor").unwrap().as_slice().unwrap(),
        &[2.0, 4.0]
    );
    opt.step(&mut muts(&mut p), &refs(&g)).unwrap();
    assert_eq!(opt.scalar_state(0, "ema"), Some(3.0));
    assert_eq!(opt.scalar_state(1, "ema"), Some(1.5));
    assert_eq!(
        p[0].as_slice().unwrap(),
        &[2.0 - 0.5 * 3.0 / 3.0, 4.0 - 0.5 * 4.0 / 3.0]
    );
    assert_eq!(p[1].as_slice().unwrap(), &[6.0 - 0.5 * 2.0 / 1.5]);
}

const OPTIONAL_INPUT: &str = "
Curvature {
    hyper lr = 1.0;
    input h?;
    state c = 1;
    update {
        c = select(present(h), h, c);
        p = p - lr * g / c;
    }
}";

#[test]
fn optional_inputs_may_be_absent_and_required_ones_may_not() {
    let opt = DynOptimizer::parse(OPTIONAL_INPUT).unwrap();
    let mut p = ndarray::array![1.0f64, 1.0];
    let g = ndarray::array![1.0f64, 2.0];
    let mut st = opt.init(&[&p]).unwrap();
    st.step(&mut [&mut p], &[&g]).unwrap();
    assert_eq!(p.as_slice().unwrap(), &[0.0, -1.0]);
    let h = ndarray::array![2.0f64, 4.0];
    st.step_with(&mut [&mut p], &[&g], &Inputs::new().with("h", vec![&h]))
        .unwrap();
    assert_eq!(p.as_slice().unwrap(), &[-0.5, -1.5]);
    st.step(&mut [&mut p], &[&g]).unwrap();
    assert_eq!(
        p.as_slice().unwrap(),
        &[-1.0, -2.0],
        "the last curvature is kept"
    );
    let err = st
        .step_with(&mut [&mut p], &[&g], &Inputs::new().with("hess", vec![&h]))
        .unwrap_err();
    assert!(err.to_string().contains("no input `hess`"), "{err}");

    let required = DynOptimizer::parse("R { input h; update { p = p - g * h; } }").unwrap();
    let mut st = required.init(&[&p]).unwrap();
    let err = st.step(&mut [&mut p], &[&g]).unwrap_err();
    assert!(err.to_string().contains("needs input `h`"), "{err}");
}

#[test]
fn mismatches_are_errors_and_change_nothing() {
    let mut rng = Rng(9);
    let mut params = vec![rng.tensor(&[2, 3]), rng.tensor(&[4])];
    let before = params.clone();
    let adam = Adam::default();
    let mut opt = adam.init(&refs(&params)).unwrap();
    let good = vec![rng.tensor(&[2, 3]), rng.tensor(&[4])];
    let m_before = opt.state(0, "m").unwrap().to_owned();

    let wrong_count = opt.step(&mut muts(&mut params), &refs(&good[..1]));
    assert!(wrong_count
        .unwrap_err()
        .to_string()
        .contains("2 parameters and 1 gradients"));
    let wrong_shape = vec![rng.tensor(&[3, 2]), rng.tensor(&[4])];
    let err = opt
        .step(&mut muts(&mut params), &refs(&wrong_shape))
        .unwrap_err();
    assert!(
        err.to_string().contains("gradient 0 has shape [3, 2]"),
        "{err}"
    );
    let wide = rng.tensor(&[2, 6]);
    let not_contiguous = wide.slice(ndarray::s![.., ..;2]).into_dyn();
    let err = opt
        .step(
            &mut muts(&mut params),
            &[&not_contiguous as &dyn TensorRef<f64>, &good[1]],
        )
        .unwrap_err();
    assert!(err.to_string().contains("not contiguous"), "{err}");
    let mut swapped = vec![params[1].clone(), params[0].clone()];
    assert!(opt.step(&mut muts(&mut swapped), &refs(&good)).is_err());

    assert_eq!(params, before, "a refused step leaves the parameters alone");
    assert_eq!(opt.t(), 0);
    assert_eq!(opt.state(0, "m").unwrap(), m_before);
    opt.step(&mut muts(&mut params), &refs(&good)).unwrap();
    assert_ne!(params, before);

    let err = adam
        .init_groups(&refs(&params), &[Group::new([0]), Group::new([0, 1])])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("tensor 0 is in group 0 and in group 1"),
        "{err}"
    );
    let err = adam
        .init_groups(&refs(&params), &[Group::new([0])])
        .unwrap_err();
    assert!(err.to_string().contains("tensor 1 is in no group"), "{err}");
    let err = adam
        .init_groups(&refs(&params), &[Group::new([0, 1, 2])])
        .unwrap_err();
    assert!(err.to_string().contains("only 2 tensors"), "{err}");
    let err = adam
        .init_groups(&refs(&params), &[Group::new([0, 1]).set("betas", 0.9)])
        .unwrap_err();
    assert!(
        err.to_string().contains("no hyperparameter `betas`"),
        "{err}"
    );
}

#[test]
fn macro_structs_and_parsed_rules_are_the_same_optimizer() {
    let adam = Adam::default();
    assert_eq!(
        (adam.lr, adam.beta1, adam.beta2, adam.eps, adam.amsgrad),
        (1e-3, 0.9, 0.999, 1e-8, false)
    );
    let tuned = Adam::default().lr(0.02).amsgrad(true);
    let mut parsed = DynOptimizer::parse(Adam::SOURCE).unwrap();
    parsed.set("lr", 0.02.into()).unwrap();
    parsed.set("amsgrad", true.into()).unwrap();
    assert_eq!(*parsed.rule(), *tuned.rule());
    assert_eq!(parsed.hypers(), tuned.hypers());
    let mut rng = Rng(1);
    let mut a = vec![rng.tensor(&[8])];
    let mut b = a.clone();
    let mut sa = tuned.init(&refs(&a)).unwrap();
    let mut sb = parsed.init(&refs(&b)).unwrap();
    for _ in 0..3 {
        let g = vec![rng.tensor(&[8])];
        sa.step(&mut muts(&mut a), &refs(&g)).unwrap();
        sb.step(&mut muts(&mut b), &refs(&g)).unwrap();
    }
    assert_eq!(a, b);
    let mut c = Adam::default();
    assert!(c.set("amsgrad", 1.0.into()).is_err());
    assert!(c.set("lr", true.into()).is_err());
    c.set("lr", 0.5.into()).unwrap();
    assert_eq!(c.lr, 0.5);
    assert!(Adam::IR.contains("out vmax"));
}

#[test]
fn every_catalog_optimizer_runs_in_f32_and_f64() {
    for name in lensopt::catalog::names() {
        let opt = lensopt::catalog::get(name).unwrap();
        let mut p32 = ndarray::array![0.5f32, -0.25, 1.0];
        let mut p64 = ndarray::array![0.5f64, -0.25, 1.0];
        let mut s32 = opt.init(&[&p32]).unwrap();
        let mut s64 = opt.init(&[&p64]).unwrap();
        let h32 = ndarray::array![1.0f32, 2.0, 0.5];
        let h64 = ndarray::array![1.0f64, 2.0, 0.5];
        let rule = opt.rule();
        for _ in 0..3 {
            let g32 = ndarray::array![0.1f32, -0.2, 0.3];
            let g64 = ndarray::array![0.1f64, -0.2, 0.3];
            let mut i32s = Inputs::new();
            let mut i64s = Inputs::new();
            for input in &rule.inputs {
                i32s = i32s.with(&input.name, vec![&h32]);
                i64s = i64s.with(&input.name, vec![&h64]);
            }
            s32.step_with(&mut [&mut p32], &[&g32], &i32s).unwrap();
            s64.step_with(&mut [&mut p64], &[&g64], &i64s).unwrap();
        }
        for (a, b) in p32.iter().zip(p64.iter()) {
            assert!(a.is_finite() && b.is_finite(), "{name}");
            assert!(
                (f64::from(*a) - b).abs() < 1e-4,
                "{name}: f32 {a} vs f64 {b}"
            );
        }
        assert_ne!(
            p64,
            ndarray::array![0.5f64, -0.25, 1.0],
            "{name} moved nothing"
        );
    }
}

optimizer! {
    /// Heavy-ball momentum written as a transform, used by a rule, all in
    /// one `optimizer!`: checked at compile time, with the prelude.
    transform heavy_ball(u) {
        hyper mu = 0.9;
        state buf = 0;
        buf = mu * buf + u;
        buf
    }
    fn scaled(x, s) = s * x;
    /// SGD with heavy-ball momentum, composed.
    pub ComposedMomentum {
        hyper lr = 0.1;
        update { p = p - scaled(heavy_ball(g), lr); }
    }
}

/// A rule declared with functions and transforms in `optimizer!` gets the
/// transform's hyperparameter as a builder method and its state, and steps
/// as the same rule written out.
#[test]
fn optimizer_macro_takes_functions_and_transforms() {
    let p0 = ndarray::arr1(&[1.0f64, -2.0]);
    let g = ndarray::arr1(&[0.5f64, 0.25]);
    let mut p = p0.clone();
    let opt = ComposedMomentum::default().lr(0.5).mu(0.5);
    let mut st = opt.init(&[&p as &dyn TensorRef<f64>]).unwrap();
    for _ in 0..2 {
        st.step(
            &mut [&mut p as &mut dyn TensorMut<f64>],
            &[&g as &dyn TensorRef<f64>],
        )
        .unwrap();
    }
    // buf: g, then 0.5 g + g = 1.5 g; p = p0 - 0.5 g - 0.5 * 1.5 g.
    for k in 0..2 {
        assert_eq!(p[k], p0[k] - 0.5 * g[k] - 0.75 * g[k]);
    }
    assert_eq!(
        st.state(0, "buf")
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![0.75, 0.375]
    );
}
