//! Checkpoints and the non-finite-gradient policy.
//!
//! Resume is bit-exact: N steps straight give the same parameters, state and
//! step counter, bit for bit, as N/2 steps, a save, a load into a freshly
//! built (differently initialised) trainer, and N/2 more. Checkpoints of
//! another rule, element type, model or set of groups are refused with a
//! clear error and change nothing. A NaN or infinite gradient is refused by
//! default, skipped and counted under `NonFinite::Skip`, and never applied.

use lensopt::checkpoint;
use lensopt::diagram::plan::Model;
use lensopt::loss::{one_hot, SoftmaxCrossEntropy};
use lensopt::train::Trainer;
use lensopt::{optimizer, DynOptimizer, Error, Group, NonFinite, Optimizer, Stepper};
use ndarray::{Array2, ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lensopt-checkpoints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Iris, scaled to [0, 1], as f32 features and one-hot targets.
fn iris() -> (Array2<f32>, Array2<f32>) {
    let data = lensopt::data::iris().unwrap();
    let (min, max) = data.ranges();
    let data = data.scaled(&min, &max);
    (
        data.features.mapv(|v| v as f32),
        one_hot(&data.labels, data.classes),
    )
}

/// Batch `k` of 16 rows: a fixed function of the step, so a resumed run sees
/// the same batches as a straight one.
fn batch(x: &Array2<f32>, y: &Array2<f32>, k: usize) -> (Array2<f32>, Array2<f32>) {
    let rows: Vec<usize> = (0..16).map(|i| (k * 16 + i * 7) % x.nrows()).collect();
    (
        Array2::from_shape_fn((16, x.ncols()), |(i, j)| x[(rows[i], j)]),
        Array2::from_shape_fn((16, y.ncols()), |(i, j)| y[(rows[i], j)]),
    )
}

fn trainer(opt: &DynOptimizer, hidden: usize, seed: u64) -> Trainer<f32, SoftmaxCrossEntropy> {
    let diagram = lensopt::diagram::dense("hidden", 4, hidden)
        .then(lensopt::diagram::tanh(vec![hidden]))
        .then(lensopt::diagram::dense("out", hidden, 3));
    let model = Model::<f32>::new(&diagram, seed).unwrap();
    Trainer::new(model, SoftmaxCrossEntropy, opt).unwrap()
}

fn bits(t: &Trainer<f32, SoftmaxCrossEntropy>) -> Vec<u32> {
    let mut out: Vec<u32> = t.model.flat_params().iter().map(|v| v.to_bits()).collect();
    for i in 0..t.optimizer.len() {
        for s in &t.optimizer.rule().states {
            if let Some(v) = t.optimizer.state(i, &s.name) {
                out.extend(v.iter().map(|x| x.to_bits()));
            }
            if let Some(x) = t.optimizer.scalar_state(i, &s.name) {
                out.push(x.to_bits() as u32);
                out.push((x.to_bits() >> 32) as u32);
            }
        }
    }
    out
}

const SCALAR_STATE_RULE: &str = "Tracked {
    hyper lr = 0.05, beta = 0.9;
    state m = 0;
    state scalar scale = 1.0;
    update {
        scale = 0.5 * scale + 0.5 * norm(g);
        m = beta * m + g / (scale + 1e-6);
        p = p - lr * m;
    }
}";

fn optimizers() -> Vec<DynOptimizer> {
    let mut list: Vec<DynOptimizer> = ["adam", "adamw", "adan", "lion", "lamb", "sgd"]
        .iter()
        .map(|n| lensopt::catalog::get(n).unwrap())
        .collect();
    // Nesterov momentum has a view: the model sees the look-ahead point.
    let nesterov = lensopt::catalog::get("sgd")
        .unwrap()
        .with("momentum", 0.9)
        .and_then(|o| o.with("nesterov", true))
        .and_then(|o| o.with("lr", 0.1))
        .unwrap();
    list.push(nesterov);
    list.push(DynOptimizer::parse(SCALAR_STATE_RULE).unwrap());
    list
}

#[test]
fn resume_is_bit_exact_for_every_kind_of_state() {
    let (x, y) = iris();
    let n = 24;
    for opt in optimizers() {
        let name = opt.rule().name.clone();
        let mut straight = trainer(&opt, 12, 1);
        for k in 0..n {
            let (xb, yb) = batch(&x, &y, k);
            straight.step(&xb, &yb).unwrap();
        }

        let mut first = trainer(&opt, 12, 1);
        for k in 0..n / 2 {
            let (xb, yb) = batch(&x, &y, k);
            first.step(&xb, &yb).unwrap();
        }
        let path = temp(&format!("{name}.safetensors"));
        let user = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
        first.save(&path, &user).unwrap();

        // Built from another seed: the load must overwrite every parameter.
        let mut resumed = trainer(&opt, 12, 99);
        assert_ne!(bits(&resumed), bits(&first));
        let back = resumed.load(&path).unwrap();
        assert_eq!(back, user, "{name}: the caller's entries come back");
        assert_eq!(resumed.optimizer.t(), (n / 2) as u64);
        assert_eq!(bits(&resumed), bits(&first), "{name}: loaded state");
        for k in n / 2..n {
            let (xb, yb) = batch(&x, &y, k);
            resumed.step(&xb, &yb).unwrap();
        }
        assert_eq!(resumed.optimizer.t(), n as u64);
        assert_eq!(bits(&resumed), bits(&straight), "{name}: resumed run");
    }
}

fn refs(p: &[ArrayD<f64>]) -> Vec<&dyn lensopt::TensorRef<f64>> {
    p.iter()
        .map(|t| t as &dyn lensopt::TensorRef<f64>)
        .collect()
}

fn muts(p: &mut [ArrayD<f64>]) -> Vec<&mut dyn lensopt::TensorMut<f64>> {
    p.iter_mut()
        .map(|t| t as &mut dyn lensopt::TensorMut<f64>)
        .collect()
}

/// f64 tensors of two shapes in two groups; the schedule changes `lr`
/// mid-run, and the checkpoint carries the groups' current values.
#[test]
fn stepper_checkpoint_keeps_groups_schedules_and_scalar_state() {
    let rule = DynOptimizer::parse(SCALAR_STATE_RULE).unwrap();
    let start = || {
        vec![
            ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (i[0] * 4 + i[1]) as f64 * 0.1 - 0.5),
            ArrayD::from_shape_fn(IxDyn(&[5]), |i| 1.0 - i[0] as f64 * 0.3),
        ]
    };
    let grad = |p: &[ArrayD<f64>], k: usize| -> Vec<ArrayD<f64>> {
        p.iter()
            .map(|t| t.mapv(|v| v * v * v - 0.1 * k as f64))
            .collect()
    };
    let groups = [Group::new(vec![0]), Group::new(vec![1]).set("lr", 0.01)];
    let run = |p: &mut Vec<ArrayD<f64>>, st: &mut Stepper<f64>, from: usize, to: usize| {
        for k in from..to {
            if k == 5 {
                st.set_hyper("lr", 0.02).unwrap();
            }
            let g = grad(p, k);
            st.step(&mut muts(p), &refs(&g)).unwrap();
        }
    };
    let mut p1 = start();
    let mut s1 = rule.init_groups(&refs(&p1), &groups).unwrap();
    run(&mut p1, &mut s1, 0, 10);

    let mut p2 = start();
    let mut s2 = rule.init_groups(&refs(&p2), &groups).unwrap();
    run(&mut p2, &mut s2, 0, 7);
    let named = |p: &[ArrayD<f64>]| -> Vec<(String, ArrayD<f64>)> {
        vec![("w".into(), p[0].clone()), ("b".into(), p[1].clone())]
    };
    let saved = named(&p2);
    let bytes = checkpoint::to_bytes(
        &[("w", &saved[0].1), ("b", &saved[1].1)],
        &s2,
        &BTreeMap::new(),
    )
    .unwrap();

    let mut p3 = vec![ArrayD::zeros(IxDyn(&[3, 4])), ArrayD::zeros(IxDyn(&[5]))];
    let mut s3 = rule.init_groups(&refs(&p3), &groups).unwrap();
    {
        let (a, b) = p3.split_at_mut(1);
        checkpoint::from_bytes(&bytes, &mut [("w", &mut a[0]), ("b", &mut b[0])], &mut s3).unwrap();
    }
    assert_eq!(s3.hyper(0, "lr"), s2.hyper(0, "lr"));
    assert_eq!(s3.hyper(1, "lr"), s2.hyper(1, "lr"));
    run(&mut p3, &mut s3, 7, 10);
    for (a, b) in p1.iter().zip(&p3) {
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
    for i in 0..2 {
        assert_eq!(
            s1.scalar_state(i, "scale").unwrap().to_bits(),
            s3.scalar_state(i, "scale").unwrap().to_bits()
        );
    }
    // The file is plain safetensors: its tensors and metadata are readable as such.
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(
        names,
        [
            "param.b",
            "param.w",
            "state.0.m",
            "state.0.scale",
            "state.1.m",
            "state.1.scale"
        ]
    );
    assert_eq!(file.tensor("param.w").unwrap().shape(), &[3, 4]);
    assert_eq!(
        file.tensor("state.1.scale").unwrap().dtype(),
        safetensors::Dtype::F64
    );
}

fn refused(result: Result<BTreeMap<String, String>, Error>, expect: &str) {
    match result {
        Err(Error::Checkpoint(m)) => assert!(m.contains(expect), "`{m}` lacks `{expect}`"),
        other => panic!("expected a refusal mentioning `{expect}`, got {other:?}"),
    }
}

#[test]
fn foreign_checkpoints_are_refused_and_change_nothing() {
    let (x, y) = iris();
    let adam = lensopt::catalog::get("adam").unwrap();
    let mut source = trainer(&adam, 12, 1);
    let (xb, yb) = batch(&x, &y, 0);
    source.step(&xb, &yb).unwrap();
    let path = temp("adam-12.safetensors");
    source.save(&path, &BTreeMap::new()).unwrap();

    let check = |target: &mut Trainer<f32, SoftmaxCrossEntropy>, expect: &str| {
        let before = bits(target);
        let t = target.optimizer.t();
        refused(target.load(&path), expect);
        assert_eq!(bits(target), before, "a refused load changed the trainer");
        assert_eq!(target.optimizer.t(), t);
    };
    // Another optimizer.
    check(
        &mut trainer(&lensopt::catalog::get("lion").unwrap(), 12, 1),
        "of optimizer `Adam`, not `Lion`",
    );
    // Another rule under the same name.
    let impostor = DynOptimizer::parse(
        "Adam { hyper lr = 0.001; state m = 0; state v = 0; update { p = p - lr * g; } }",
    )
    .unwrap();
    check(&mut trainer(&impostor, 12, 1), "another rule called `Adam`");
    // Other shapes.
    check(&mut trainer(&adam, 8, 1), "shape");
    // Another model: fewer tensors.
    let other = Model::<f32>::new(&lensopt::diagram::dense("logits", 4, 3), 1).unwrap();
    let mut other = Trainer::new(other, SoftmaxCrossEntropy, &adam).unwrap();
    check(&mut other, "holds 4 tensors, this one 2");
    // Another model: the same shapes under other names.
    let renamed = lensopt::diagram::dense("first", 4, 12)
        .then(lensopt::diagram::tanh(vec![12]))
        .then(lensopt::diagram::dense("out", 12, 3));
    let renamed = Model::<f32>::new(&renamed, 1).unwrap();
    let mut renamed = Trainer::new(renamed, SoftmaxCrossEntropy, &adam).unwrap();
    check(
        &mut renamed,
        "has parameter `hidden.bias`, which this model does not",
    );
    // Another element type.
    let mut w = vec![ArrayD::<f64>::zeros(IxDyn(&[12, 4]))];
    let mut st = adam.init::<f64>(&refs(&w)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    refused(
        checkpoint::from_bytes(&bytes, &mut [("hidden.weight", &mut w[0])], &mut st),
        "f32 tensors, this optimizer f64",
    );
    // Not a safetensors file; a safetensors file that is not a checkpoint.
    let junk = temp("junk.safetensors");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    let mut target = trainer(&adam, 12, 1);
    refused(target.load(&junk), "not a safetensors file");
    let foreign = safetensors::serialize(
        [(
            "weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0, 0, 0, 0])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    std::fs::write(&junk, foreign).unwrap();
    refused(target.load(&junk), "not a lensopt checkpoint");
    refused(target.load(&temp("missing.safetensors")), "cannot read");
}

#[test]
fn groups_must_match() {
    let adam = lensopt::catalog::get("adam").unwrap();
    let p = vec![
        ArrayD::<f64>::zeros(IxDyn(&[2])),
        ArrayD::<f64>::zeros(IxDyn(&[3])),
    ];
    let one = adam.init::<f64>(&refs(&p)).unwrap();
    let bytes = checkpoint::to_bytes(&[], &one, &BTreeMap::new()).unwrap();
    let mut two = adam
        .init_groups::<f64>(
            &refs(&p),
            &[Group::new(vec![0]), Group::new(vec![1]).set("lr", 0.1)],
        )
        .unwrap();
    refused(
        checkpoint::from_bytes(&bytes, &mut [], &mut two),
        "parameter groups",
    );
}

optimizer! {
    /// Plain gradient descent with momentum, for the policy tests.
    pub Momentum {
        hyper lr = 0.1, mu = 0.5;
        state b = 0;
        update {
            b = mu * b + g;
            p = p - lr * b;
        }
    }
}

#[test]
fn non_finite_gradients_are_refused_by_default_and_change_nothing() {
    for backend in [lensopt::Backend::JitDefault, lensopt::Backend::Interpreter] {
        let mut p = vec![ArrayD::from_elem(IxDyn(&[70_000]), 1.0f64)];
        let mut st = Momentum::default().init(&refs(&p)).unwrap();
        st.set_backend(backend);
        let good = vec![ArrayD::from_elem(IxDyn(&[70_000]), 0.5f64)];
        st.step(&mut muts(&mut p), &refs(&good)).unwrap();
        let before = (p.clone(), st.state(0, "b").unwrap().to_owned(), st.t());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut g = good.clone();
            g[0][[69_999]] = bad;
            let err = st.step(&mut muts(&mut p), &refs(&g)).unwrap_err();
            match &err {
                Error::NonFinite {
                    what, index, step, ..
                } => {
                    assert_eq!((what.as_str(), *index, *step), ("gradient 0", 69_999, 2));
                }
                other => panic!("expected NonFinite, got {other:?}"),
            }
            assert!(err.to_string().contains("nothing changed"), "{err}");
            assert_eq!(p, before.0);
            assert_eq!(st.state(0, "b").unwrap(), before.1);
            assert_eq!(st.t(), before.2);
        }
    }
}

#[test]
fn skip_policy_skips_and_counts_and_unchecked_applies() {
    let mut p = vec![ArrayD::from_elem(IxDyn(&[8]), 1.0f64)];
    let mut st = Momentum::default().init(&refs(&p)).unwrap();
    st.set_non_finite(NonFinite::Skip);
    let good = vec![ArrayD::from_elem(IxDyn(&[8]), 0.5f64)];
    let mut bad = good.clone();
    bad[0][[3]] = f64::NAN;
    st.step(&mut muts(&mut p), &refs(&good)).unwrap();
    let after_one = p.clone();
    st.step(&mut muts(&mut p), &refs(&bad)).unwrap();
    assert!(st.last_skipped());
    assert_eq!((st.skipped(), st.t()), (1, 1));
    assert_eq!(p, after_one);
    st.step(&mut muts(&mut p), &refs(&good)).unwrap();
    assert!(!st.last_skipped());
    assert_eq!((st.skipped(), st.t()), (1, 2));
    assert!(p[0].iter().all(|v| v.is_finite()));

    // Unchecked: the caller asked for no scan, and the NaN goes through.
    st.set_non_finite(NonFinite::Unchecked);
    st.step(&mut muts(&mut p), &refs(&bad)).unwrap();
    assert!(p[0][[3]].is_nan());
}

#[test]
fn non_finite_extra_inputs_are_refused() {
    let sophia = lensopt::catalog::get("sophiah").unwrap();
    let mut p = vec![ArrayD::from_elem(IxDyn(&[4]), 1.0f64)];
    let mut st = sophia.init(&refs(&p)).unwrap();
    let g = vec![ArrayD::from_elem(IxDyn(&[4]), 0.5f64)];
    let input = sophia.rule().inputs[0].name.clone();
    let mut h = vec![ArrayD::from_elem(IxDyn(&[4]), 0.1f64)];
    h[0][[2]] = f64::INFINITY;
    let inputs = lensopt::Inputs::new().with(&input, refs(&h));
    let err = st
        .step_with(&mut muts(&mut p), &refs(&g), &inputs)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("input `{input}` 0 holds inf at element 2")),
        "{err}"
    );
    assert_eq!(st.t(), 0);
}

#[test]
fn a_trainer_refuses_a_batch_whose_gradients_are_not_finite() {
    let (x, y) = iris();
    let mut t = trainer(&lensopt::catalog::get("adam").unwrap(), 12, 1);
    let (mut xb, yb) = batch(&x, &y, 0);
    let before = bits(&t);
    xb[[3, 1]] = f32::NAN;
    let err = t.step(&xb, &yb).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert_eq!(bits(&t), before);
    t.optimizer.set_non_finite(NonFinite::Skip);
    t.step(&xb, &yb).unwrap();
    assert_eq!((t.optimizer.skipped(), t.optimizer.t()), (1, 0));
    assert_eq!(bits(&t), before);
}

#[test]
#[ignore]
fn zz_time_old_save() {
    let adam = lensopt::catalog::get("adam").unwrap();
    let mut x = vec![ArrayD::<f64>::zeros(IxDyn(&[2]))];
    let st = adam.init::<f64>(&refs(&x)).unwrap();
    let losses: Vec<f64> = (0..200_000)
        .map(|i| 1.0 / (1.0 + i as f64).sqrt())
        .collect();
    let path = temp("timing.safetensors");
    let n = 20;
    let started = std::time::Instant::now();
    for _ in 0..n {
        let text: Vec<String> = losses.iter().map(f64::to_string).collect();
        let user = BTreeMap::from([("losses".to_string(), text.join(","))]);
        checkpoint::save(&path, &[("x", &x[0])], &st, &user).unwrap();
    }
    let save = started.elapsed().as_secs_f64() / n as f64;
    let mut st2 = adam.init::<f64>(&refs(&x)).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..n {
        let user = checkpoint::load(&path, &mut [("x", &mut x[0])], &mut st2).unwrap();
        let _: Vec<f64> = user["losses"]
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
    }
    let load = started.elapsed().as_secs_f64() / n as f64;
    eprintln!(
        "old: save {:.2} ms, load {:.2} ms, file {} bytes",
        save * 1e3,
        load * 1e3,
        std::fs::metadata(&path).unwrap().len()
    );
}
