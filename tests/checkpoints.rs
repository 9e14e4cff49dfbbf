//! Checkpoints and the non-finite-gradient policy.
//!
//! Resume is bit-exact: N steps straight give the same parameters, state and
//! step counter, bit for bit, as N/2 steps, a save, a load into a freshly
//! built (differently initialised) trainer, and N/2 more. Checkpoints of
//! another rule, element type, model or set of groups are refused with a
//! clear error and change nothing. The file: caller tensors live in the data,
//! so the header does not grow with them; the header is read and checked
//! before the data; both checksums follow the documented algorithm, and
//! every one of 300 flipped bits is refused; unknown tensors and entries are
//! refused; the caller's check runs before anything is written; v1 files
//! still load; saving leaves no temporary file behind. A NaN or infinite
//! gradient is refused by default, skipped and counted under
//! `NonFinite::Skip`, and never applied; gradients checked by the pass
//! that wrote them (`CheckedGradients`) step bit for bit as scanned ones,
//! and that pass's verdict refuses a step as the scan's does.

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

/// Parameters and every state of `st`'s tensors, bit for bit.
fn step_bits(p: &[ArrayD<f64>], st: &Stepper<f64>) -> Vec<u64> {
    let mut out: Vec<u64> = p
        .iter()
        .flat_map(|t| t.iter().map(|x| x.to_bits()))
        .collect();
    for i in 0..st.len() {
        for s in &st.rule().states {
            if let Some(v) = st.state(i, &s.name) {
                out.extend(v.iter().map(|x| x.to_bits()));
            }
        }
    }
    out.push(st.t());
    out
}

/// Gradients of two shapes, varied so that every lane of a vector differs.
fn varied_gradients(seed: f64) -> Vec<ArrayD<f64>> {
    [vec![70_001], vec![3, 5]]
        .into_iter()
        .map(|shape| {
            let n: usize = shape.iter().product();
            let xs = (0..n)
                .map(|i| ((i as f64 * 0.37 + seed).sin()) * 1e3)
                .collect();
            ArrayD::from_shape_vec(IxDyn(&shape), xs).unwrap()
        })
        .collect()
}

#[test]
fn gradients_checked_as_they_are_written_step_exactly_as_scanned_ones() {
    use lensopt::CheckedGradients;
    for backend in [lensopt::Backend::JitDefault, lensopt::Backend::Interpreter] {
        let adam = lensopt::catalog::get("adam").unwrap();
        let mut p_scan = vec![
            ArrayD::from_elem(IxDyn(&[70_001]), 1.0f64),
            ArrayD::from_elem(IxDyn(&[3, 5]), -2.0f64),
        ];
        let mut p_checked = p_scan.clone();
        let mut scanned = adam.init(&refs(&p_scan)).unwrap();
        let mut checked = adam.init(&refs(&p_checked)).unwrap();
        scanned.set_backend(backend);
        checked.set_backend(backend);
        for step in 0..3 {
            // Unscaling by 1/1024, as after a loss-scaled backward pass.
            let g = varied_gradients(step as f64);
            let mut g_scan = g.clone();
            for t in &mut g_scan {
                t.mapv_inplace(|x| x * (1.0 / 1024.0));
            }
            scanned
                .step(&mut muts(&mut p_scan), &refs(&g_scan))
                .unwrap();
            let mut g_pass = g.clone();
            let verdict = CheckedGradients::scale(muts(&mut g_pass), 1.0 / 1024.0).unwrap();
            assert!(verdict.found().is_none());
            assert_eq!(verdict.len(), 2);
            checked
                .step_checked(&mut muts(&mut p_checked), &verdict)
                .unwrap();
            drop(verdict);
            assert_eq!(g_pass, g_scan, "the pass wrote the unscaled gradients");
            assert_eq!(
                step_bits(&p_checked, &checked),
                step_bits(&p_scan, &scanned)
            );
            // Adding the last micro-batch in.
            let (mut acc, part) = (varied_gradients(0.5), varied_gradients(1.5));
            let mut sums = acc.clone();
            for (s, x) in sums.iter_mut().zip(&part) {
                *s += x;
            }
            scanned.step(&mut muts(&mut p_scan), &refs(&sums)).unwrap();
            let verdict = CheckedGradients::add(muts(&mut acc), &refs(&part)).unwrap();
            checked
                .step_checked(&mut muts(&mut p_checked), &verdict)
                .unwrap();
            drop(verdict);
            assert_eq!(acc, sums);
            assert_eq!(
                step_bits(&p_checked, &checked),
                step_bits(&p_scan, &scanned)
            );
        }
    }
}

#[test]
fn a_pass_that_writes_a_non_finite_gradient_refuses_the_step() {
    use lensopt::CheckedGradients;
    let adam = lensopt::catalog::get("adam").unwrap();
    let mut p = vec![
        ArrayD::from_elem(IxDyn(&[70_001]), 1.0f64),
        ArrayD::from_elem(IxDyn(&[3, 5]), -2.0f64),
    ];
    let mut st = adam.init(&refs(&p)).unwrap();
    let mut g = varied_gradients(0.0);
    st.step(&mut muts(&mut p), &refs(&g)).unwrap();
    let before = step_bits(&p, &st);
    // A NaN late in the second tensor, and a value the scaling overflows
    // (finite before the pass, infinite after it).
    g[1][[2, 4]] = f64::NAN;
    g[1][[1, 1]] = f64::MAX / 2.0;
    let verdict = CheckedGradients::scale(muts(&mut g), 4.0).unwrap();
    let found = verdict.found().expect("found").clone();
    let shown = format!("{verdict:?}");
    assert!(shown.contains("[3, 5]") && shown.len() < 400, "{shown}");
    assert_eq!((found.what.as_str(), found.index), ("gradient 1", 6));
    assert_eq!(found.value, f64::INFINITY);
    let err = st.step_checked(&mut muts(&mut p), &verdict).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { what, index: 6, step: 2, .. } if what == "gradient 1"),
        "{err}"
    );
    assert_eq!(step_bits(&p, &st), before);
    st.set_non_finite(NonFinite::Skip);
    st.step_checked(&mut muts(&mut p), &verdict).unwrap();
    assert!(st.last_skipped());
    assert_eq!(step_bits(&p, &st), before);
    // Unchecked: the verdict is not consulted, and the values go through.
    st.set_non_finite(NonFinite::Unchecked);
    st.step_checked(&mut muts(&mut p), &verdict).unwrap();
    assert!(p[1][[1, 1]].is_nan() && p[1][[2, 4]].is_nan());
    assert!(p[0].iter().all(|x| x.is_finite()));
}

#[test]
fn checked_passes_refuse_mismatches_before_writing_anything() {
    use lensopt::CheckedGradients;
    let adam = lensopt::catalog::get("adam").unwrap();
    let mut p = vec![
        ArrayD::from_elem(IxDyn(&[70_001]), 1.0f64),
        ArrayD::from_elem(IxDyn(&[3, 5]), -2.0f64),
    ];
    let mut st = adam.init(&refs(&p)).unwrap();
    let before = step_bits(&p, &st);
    // A verdict over one tensor, for a stepper of two.
    let mut one = varied_gradients(0.0);
    one.truncate(1);
    let verdict = CheckedGradients::scale(muts(&mut one), 1.0).unwrap();
    let err = st.step_checked(&mut muts(&mut p), &verdict).unwrap_err();
    assert!(err.to_string().contains("1 gradients"), "{err}");
    // Shapes in the wrong order.
    let mut swapped = varied_gradients(0.0);
    swapped.reverse();
    let verdict = CheckedGradients::scale(muts(&mut swapped), 1.0).unwrap();
    let err = st.step_checked(&mut muts(&mut p), &verdict).unwrap_err();
    assert!(
        err.to_string().contains("gradient 0 has shape [3, 5]"),
        "{err}"
    );
    assert_eq!(step_bits(&p, &st), before);
    // Adding tensors of different shapes, or a different count: nothing is written.
    let mut acc = varied_gradients(0.0);
    let kept = acc.clone();
    let mut other = varied_gradients(1.0);
    other[1] = ArrayD::from_elem(IxDyn(&[5, 3]), 1.0);
    let err = CheckedGradients::add(muts(&mut acc), &refs(&other)).unwrap_err();
    assert!(
        err.to_string().contains("gradient 1 has shape [3, 5]"),
        "{err}"
    );
    let err = CheckedGradients::add(muts(&mut acc), &refs(&other[..1])).unwrap_err();
    assert!(
        err.to_string().contains("2 gradients to add into, but 1"),
        "{err}"
    );
    assert_eq!(acc, kept);
    // A transposed (not row-major) second tensor: the first is not scaled either.
    let mut t = ArrayD::from_elem(IxDyn(&[5, 3]), 1.0f64);
    let mut transposed = t.view_mut().reversed_axes();
    let mut first = ArrayD::from_elem(IxDyn(&[4]), 3.0f64);
    let grads: Vec<&mut dyn lensopt::TensorMut<f64>> = vec![&mut first, &mut transposed];
    let err = CheckedGradients::scale(grads, 2.0).unwrap_err();
    assert!(
        err.to_string().contains("gradient 1 is not contiguous"),
        "{err}"
    );
    assert!(first.iter().all(|&x| x == 3.0));
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

// ---------------------------------------------------------------------------
// The file itself: caller tensors, header first, checksums, unknown tensors,
// version 1, temporary files.

/// Two f64 tensors in two groups under the scalar-state rule, after a few
/// steps (a stepper-level checkpoint, quick to write and read).
fn small(steps: usize) -> (Vec<ArrayD<f64>>, Stepper<f64>) {
    let rule = DynOptimizer::parse(SCALAR_STATE_RULE).unwrap();
    let mut p = vec![
        ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (i[0] * 4 + i[1]) as f64 * 0.1 - 0.5),
        ArrayD::from_shape_fn(IxDyn(&[5]), |i| 1.0 - i[0] as f64 * 0.3),
    ];
    let groups = [Group::new(vec![0]), Group::new(vec![1]).set("lr", 0.01)];
    let mut st = rule.init_groups(&refs(&p), &groups).unwrap();
    for k in 0..steps {
        let g: Vec<ArrayD<f64>> = p
            .iter()
            .map(|t| t.mapv(|v| v * v - 0.1 * k as f64))
            .collect();
        st.step(&mut muts(&mut p), &refs(&g)).unwrap();
    }
    (p, st)
}

/// Every bit of `p` and of `st`'s state, counters and hyperparameters.
fn snapshot(p: &[ArrayD<f64>], st: &Stepper<f64>) -> Vec<u64> {
    let mut out: Vec<u64> = p
        .iter()
        .flat_map(|t| t.iter().map(|v| v.to_bits()))
        .collect();
    for i in 0..st.len() {
        for s in &st.rule().states {
            if let Some(v) = st.state(i, &s.name) {
                out.extend(v.iter().map(|x| x.to_bits()));
            }
            if let Some(x) = st.scalar_state(i, &s.name) {
                out.push(x.to_bits());
            }
        }
    }
    for g in 0..st.num_groups() {
        for h in &st.rule().hypers {
            if let Some(lensopt::HyperValue::Num(x)) = st.hyper(g, &h.name) {
                out.push(x.to_bits());
            }
        }
    }
    out.extend([st.t(), st.skipped()]);
    out
}

fn small_bytes(st: &Stepper<f64>, p: &[ArrayD<f64>], losses: &[f64]) -> Vec<u8> {
    let entries = BTreeMap::from([
        ("step".to_string(), st.t().to_string()),
        ("note".to_string(), "small".to_string()),
    ]);
    checkpoint::to_bytes_with(
        &[("w", &p[0]), ("b", &p[1])],
        st,
        &entries,
        &[("losses", losses)],
    )
    .unwrap()
}

/// Loads `bytes` into a fresh `small(0)`; returns the result, and whether
/// a refusal left the target exactly as it was.
fn load_small(
    bytes: &[u8],
    check: impl FnOnce(&checkpoint::Contents) -> Result<(), String>,
) -> (Result<checkpoint::Contents, Error>, Vec<u64>, bool) {
    let (mut p, mut st) = small(0);
    let before = snapshot(&p, &st);
    let result = {
        let (a, b) = p.split_at_mut(1);
        checkpoint::from_bytes_with(
            bytes,
            &mut [("w", &mut a[0]), ("b", &mut b[0])],
            &mut st,
            check,
        )
    };
    let after = snapshot(&p, &st);
    let unchanged = after == before;
    (result, after, unchanged)
}

fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::Checkpoint(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn caller_tensors_live_in_the_data_and_the_header_stays_small() {
    let (p, st) = small(4);
    let history = |n: usize| -> Vec<f64> { (0..n).map(|i| 1.0 / (1.0 + i as f64)).collect() };
    let short = small_bytes(&st, &p, &history(10));
    let long_losses = history(1_000_000);
    let long = small_bytes(&st, &p, &long_losses);
    // The header grows by the digits of one shape and two offsets at most
    // (and its padding), not with the history.
    let (hs, hl) = (header_len(&short), header_len(&long));
    assert!(hl < 2048, "header of {hl} bytes");
    assert!(hl - hs <= 24, "header grew from {hs} to {hl} bytes");
    assert_eq!(long.len(), 8 + hl + 8 * 1_000_000 + 2 * 8 * 17 + 2 * 8);
    // Plain safetensors: the history is an F64 tensor, not a header entry.
    let file = safetensors::SafeTensors::deserialize(&long).unwrap();
    let losses = file.tensor("user.losses").unwrap();
    assert_eq!(losses.dtype(), safetensors::Dtype::F64);
    assert_eq!(losses.shape(), &[1_000_000]);
    let (_, header) = safetensors::SafeTensors::read_metadata(&long).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["format"], "lensopt.checkpoint.v2");
    assert_eq!(meta["user.note"], "small");
    assert!(!meta.contains_key("user.losses"));
    // Back, bit for bit, with the entries and the counters.
    let (result, after, _) = load_small(&long, |_| Ok(()));
    let contents = result.unwrap();
    assert_eq!(after, snapshot(&p, &st));
    assert_eq!(contents.tensors.len(), 1);
    assert!(contents.tensors["losses"]
        .iter()
        .zip(&long_losses)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(contents.tensors["losses"].len(), long_losses.len());
    assert_eq!(contents.entries["note"], "small");
    assert_eq!((contents.t, contents.skipped), (4, 0));
    // `load` without tensors still returns the entries.
    let (mut q, mut s2) = small(0);
    let (a, b) = q.split_at_mut(1);
    let entries =
        checkpoint::from_bytes(&long, &mut [("w", &mut a[0]), ("b", &mut b[0])], &mut s2).unwrap();
    assert_eq!(entries["step"], "4");
    // Two caller tensors under one key, and a header over the limit, are refused.
    let twice: &[(&str, &[f64])] = &[("a", &[1.0]), ("a", &[2.0])];
    let result = checkpoint::to_bytes_with(&[], &st, &BTreeMap::new(), twice);
    assert!(refusal(result).contains("two caller tensors are called `a`"));
    let huge = BTreeMap::from([("x".to_string(), "a".repeat(100_000_001))]);
    let result = checkpoint::to_bytes(&[], &st, &huge);
    assert!(refusal(result).contains("limit"));
}

#[test]
fn the_header_is_checked_before_the_data_is_read() {
    let path = temp("header-first.safetensors");
    let mut p = vec![ArrayD::from_elem(IxDyn(&[1_000_000]), 0.25f64)];
    let st = Momentum::default().init(&refs(&p)).unwrap();
    checkpoint::save(&path, &[("w", &p[0])], &st, &BTreeMap::new()).unwrap();
    // Keep only the length and the header: a loader that read the data
    // first would complain of the missing data, not of the shape.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..8 + header_len(&bytes)]).unwrap();
    let mut wrong = vec![ArrayD::<f64>::zeros(IxDyn(&[999_999]))];
    let mut st_wrong = Momentum::default().init(&refs(&wrong)).unwrap();
    let m = refusal(checkpoint::load(
        &path,
        &mut [("w", &mut wrong[0])],
        &mut st_wrong,
    ));
    assert!(m.contains("shape [1000000] in the checkpoint"), "{m}");
    assert!(m.starts_with(&path.display().to_string()), "{m}");
    // The right shape: the missing data is found before anything is read.
    p[0].fill(1.0);
    let mut st_right = Momentum::default().init(&refs(&p)).unwrap();
    let m = refusal(checkpoint::load(
        &path,
        &mut [("w", &mut p[0])],
        &mut st_right,
    ));
    assert!(m.contains("truncated"), "{m}");
    assert!(p[0].iter().all(|&v| v == 1.0));
    // Header lengths are bounded before anything is allocated.
    let mut huge = (1u64 << 40).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(&path, &huge).unwrap();
    let m = refusal(checkpoint::load(
        &path,
        &mut [("w", &mut p[0])],
        &mut st_right,
    ));
    assert!(m.contains("over the 100000000-byte limit"), "{m}");
    let mut past = 1000u64.to_le_bytes().to_vec();
    past.extend_from_slice(b"{}");
    std::fs::write(&path, &past).unwrap();
    let m = refusal(checkpoint::load(
        &path,
        &mut [("w", &mut p[0])],
        &mut st_right,
    ));
    assert!(m.contains("runs past the end of the file"), "{m}");
    assert_eq!(st_right.t(), 0);
}

#[test]
fn the_callers_check_sees_counters_and_hyperparameters_and_can_refuse() {
    let (p, st) = small(7);
    let bytes = small_bytes(&st, &p, &[0.5; 7]);
    // A caller that recorded another step than the optimizer's `t`.
    let (result, _, unchanged) = load_small(&bytes, |c| {
        let step: u64 = c.entries["step"].parse().unwrap();
        if step + 1 != c.t {
            return Err(format!(
                "the checkpoint records step {}, its optimizer t = {}",
                step + 1,
                c.t
            ));
        }
        Ok(())
    });
    let m = refusal(result);
    assert!(m.contains("records step 8, its optimizer t = 7"), "{m}");
    assert!(unchanged, "a refused check changed the target");
    // The check sees every group's hyperparameters, by name.
    let mut seen = Vec::new();
    let (result, after, _) = load_small(&bytes, |c| {
        seen = c.hypers.clone();
        Ok(())
    });
    result.unwrap();
    assert_eq!(after, snapshot(&p, &st));
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0][0],
        ("lr".to_string(), lensopt::HyperValue::Num(0.05))
    );
    assert_eq!(
        seen[1][0],
        ("lr".to_string(), lensopt::HyperValue::Num(0.01))
    );
    assert_eq!(
        seen[1][1],
        ("beta".to_string(), lensopt::HyperValue::Num(0.9))
    );
}

/// The checksum as the module's docs define it, written independently.
fn documented_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, w: u64| {
        let h = (h ^ w).wrapping_mul(K);
        h ^ (h >> 32)
    };
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for c in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    let h = mix(h, bytes.len() as u64).wrapping_mul(K);
    h ^ (h >> 29)
}

const START: &str = r#"{"__metadata__":{"header_checksum":""#;

type Tensors = Vec<(String, String, Vec<usize>, Vec<u8>)>;

/// A checkpoint's metadata (checksums left out) and tensors.
fn unseal(bytes: &[u8]) -> (Vec<(String, String)>, Tensors) {
    let n = header_len(bytes);
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut meta = Vec::new();
    let mut tensors = Vec::new();
    for (k, v) in header.as_object().unwrap() {
        if k == "__metadata__" {
            for (k, v) in v.as_object().unwrap() {
                if k != "checksum" && k != "header_checksum" {
                    meta.push((k.clone(), v.as_str().unwrap().to_string()));
                }
            }
        } else {
            let off = &v["data_offsets"];
            let (s, e) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize);
            tensors.push((
                k.clone(),
                v["dtype"].as_str().unwrap().to_string(),
                shape.collect(),
                data[s..e].to_vec(),
            ));
        }
    }
    (meta, tensors)
}

/// A v2 file of `meta` and `tensors`, sealed as the module's docs say.
fn seal(meta: &[(String, String)], tensors: &Tensors) -> Vec<u8> {
    let data: Vec<u8> = tensors.iter().flat_map(|t| t.3.clone()).collect();
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut header = format!(
        "{START}0000000000000000\",\"checksum\":\"{:016x}\"",
        documented_hash(&data)
    );
    for (k, v) in meta {
        header += &format!(",{}:{}", q(k), q(v));
    }
    header.push('}');
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        header += &format!(
            ",{}:{{\"dtype\":\"{dtype}\",\"shape\":{},\"data_offsets\":[{offset},{}]}}",
            q(name),
            serde_json::json!(shape),
            offset + bytes.len()
        );
        offset += bytes.len();
    }
    header.push('}');
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    let sum = format!("{:016x}", documented_hash(&file));
    file[8 + START.len()..8 + START.len() + 16].copy_from_slice(sum.as_bytes());
    file.extend_from_slice(&data);
    file
}

#[test]
fn checksums_follow_the_documented_algorithm_and_unknown_tensors_are_refused() {
    let (p, st) = small(3);
    let bytes = small_bytes(&st, &p, &[0.25, 0.5, 0.75]);
    assert!(bytes[8..].starts_with(START.as_bytes()));
    // The stored checksums are those the documented algorithm computes.
    let n = header_len(&bytes);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let data_sum = format!("{:016x}", documented_hash(&bytes[8 + n..]));
    assert_eq!(meta["checksum"], data_sum);
    let mut zeroed = bytes[..8 + n].to_vec();
    zeroed[8 + START.len()..8 + START.len() + 16].copy_from_slice(b"0000000000000000");
    let header_sum = format!("{:016x}", documented_hash(&zeroed));
    assert_eq!(meta["header_checksum"], header_sum);
    // A file written from the documented layout alone loads.
    let (meta, tensors) = unseal(&bytes);
    let (result, after, _) = load_small(&seal(&meta, &tensors), |_| Ok(()));
    result.unwrap();
    assert_eq!(after, snapshot(&p, &st));
    let (meta_ordered, ordered) = (meta, tensors);
    // An extra tensor, correctly sealed, is refused, changing nothing.
    let mut extra = ordered.clone();
    extra.push((
        "extra".into(),
        "F64".into(),
        vec![1],
        1f64.to_le_bytes().to_vec(),
    ));
    let (result, _, unchanged) = load_small(&seal(&meta_ordered, &extra), |_| Ok(()));
    assert!(refusal(result).contains("unknown tensor `extra`"));
    assert!(unchanged);
    // So is a state tensor of a tensor the optimizer does not have.
    let mut extra = ordered.clone();
    extra.push((
        "state.2.m".into(),
        "F64".into(),
        vec![1],
        1f64.to_le_bytes().to_vec(),
    ));
    let (result, _, _) = load_small(&seal(&meta_ordered, &extra), |_| Ok(()));
    assert!(refusal(result).contains("unknown tensor `state.2.m`"));
    // An unknown entry.
    let mut more = meta_ordered.clone();
    more.push(("learning_rate".into(), "0.1".into()));
    let (result, _, unchanged) = load_small(&seal(&more, &ordered), |_| Ok(()));
    assert!(refusal(result).contains("unknown entry `learning_rate`"));
    assert!(unchanged);
    // A caller tensor that is not an f64 vector.
    let mut odd = ordered.clone();
    odd.push((
        "user.grid".into(),
        "F64".into(),
        vec![1, 1],
        1f64.to_le_bytes().to_vec(),
    ));
    let (result, _, _) = load_small(&seal(&meta_ordered, &odd), |_| Ok(()));
    assert!(refusal(result).contains("caller tensor `grid` has shape [1, 1]"));
    // A missing tensor.
    let fewer: Tensors = ordered
        .iter()
        .filter(|t| t.0 != "state.1.m")
        .cloned()
        .collect();
    let (result, _, _) = load_small(&seal(&meta_ordered, &fewer), |_| Ok(()));
    assert!(refusal(result).contains("no state `m` of tensor 1"));
}

/// SplitMix64, for reproducible flips.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 300 single-bit flips (fixed seed), half in the length and header, half
/// in the data: every one is refused, and the target is left as it was.
/// No flip can go undetected: one in the header changes the bytes that
/// `header_checksum` covers (or its own digits), one in the data the bytes
/// `checksum` covers, and a change confined to one 8-byte word always
/// changes the hash (each step of it is a bijection).
#[test]
fn every_flipped_bit_is_refused() {
    let (p, st) = small(5);
    let losses: Vec<f64> = (0..40).map(|i| 0.9f64.powi(i)).collect();
    let bytes = small_bytes(&st, &p, &losses);
    let (result, after, _) = load_small(&bytes, |_| Ok(()));
    result.unwrap();
    assert_eq!(after, snapshot(&p, &st));
    let head = 8 + header_len(&bytes);
    let mut rng = 0x5EED_u64;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..300 {
        let at = if k % 2 == 0 {
            splitmix(&mut rng) as usize % head
        } else {
            head + splitmix(&mut rng) as usize % (bytes.len() - head)
        };
        let bit = splitmix(&mut rng) % 8;
        let mut flipped = bytes.clone();
        flipped[at] ^= 1 << bit;
        let (result, _, unchanged) = load_small(&flipped, |_| Ok(()));
        let m = match result {
            Err(Error::Checkpoint(m)) => m,
            other => {
                panic!("flip of bit {bit} of byte {at} (header: {head} bytes) loaded: {other:?}")
            }
        };
        assert!(
            unchanged,
            "flip of bit {bit} of byte {at}: a refused load changed the target"
        );
        let reason = if m.contains("corrupt") {
            "checksum"
        } else if m.contains("not a safetensors file") {
            "structure"
        } else {
            "other"
        };
        *reasons.entry(reason.to_string()).or_default() += 1;
    }
    eprintln!("300 flips refused: {reasons:?}");
    assert!(reasons["checksum"] >= 250, "{reasons:?}");
}

#[test]
fn version_1_files_still_load() {
    let (p, st) = small(6);
    let bytes = small_bytes(&st, &p, &[]);
    // A v1 file: what the first layout wrote, through the safetensors crate.
    let v1 = |extra: Option<(&str, &str)>, tensor: bool| {
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.remove("checksum");
        meta.remove("header_checksum");
        meta.insert("format".into(), "lensopt.checkpoint.v1".into());
        if let Some((k, v)) = extra {
            meta.insert(k.into(), v.into());
        }
        let one = 1f64.to_le_bytes();
        let mut views: Vec<(String, safetensors::tensor::TensorView)> = file
            .tensors()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("user."))
            .collect();
        if tensor {
            views.push((
                "extra".into(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![1], &one)
                    .unwrap(),
            ));
        }
        safetensors::serialize(views, Some(meta)).unwrap()
    };
    let (result, after, _) = load_small(&v1(None, false), |_| Ok(()));
    let contents = result.unwrap();
    assert_eq!(after, snapshot(&p, &st));
    assert_eq!(contents.entries["step"], "6");
    let (result, _, unchanged) = load_small(&v1(None, true), |_| Ok(()));
    assert!(refusal(result).contains("unknown tensor `extra`"));
    assert!(unchanged);
    let (result, _, _) = load_small(&v1(Some(("checksum", "0")), false), |_| Ok(()));
    assert!(refusal(result).contains("unknown entry `checksum`"));
    // A format this version does not know.
    let mut v3 = bytes.clone();
    let at = v3
        .windows(21)
        .position(|w| w == b"lensopt.checkpoint.v2")
        .unwrap();
    v3[at + 20] = b'3';
    let (meta, tensors) = unseal(&v3);
    let (result, _, _) = load_small(&seal(&meta, &tensors), |_| Ok(()));
    let m = refusal(result);
    assert!(
        m.contains("format `lensopt.checkpoint.v3` is not one this version reads"),
        "{m}"
    );
}

fn temporaries(dir: &std::path::Path, name: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!(".{name}.tmp.")))
        .collect();
    found.sort();
    found
}

#[test]
fn saving_cleans_up_temporary_files() {
    let dir = temp("temporaries");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (p, st) = small(2);
    let params: [(&str, &dyn lensopt::TensorRef<f64>); 2] = [("w", &p[0]), ("b", &p[1])];
    // Stale temporaries of this target (a dead process's, this one's),
    // and files that only look alike, which stay.
    let pid = std::process::id();
    for name in [
        ".run.safetensors.tmp.4000000000".to_string(),
        format!(".run.safetensors.tmp.{pid}"),
        ".run.safetensors.tmp.notes".to_string(),
        ".other.safetensors.tmp.4000000000".to_string(),
    ] {
        std::fs::write(dir.join(name), b"stale").unwrap();
    }
    let target = dir.join("run.safetensors");
    checkpoint::save(&target, &params, &st, &BTreeMap::new()).unwrap();
    assert_eq!(
        temporaries(&dir, "run.safetensors"),
        [".run.safetensors.tmp.notes"]
    );
    assert_eq!(temporaries(&dir, "other.safetensors").len(), 1);
    let (result, after, _) = load_small(&std::fs::read(&target).unwrap(), |_| Ok(()));
    result.unwrap();
    assert_eq!(after, snapshot(&p, &st));
    // A save that fails at the rename (the target is a folder) leaves no temporary.
    let folder = dir.join("folder.safetensors");
    std::fs::create_dir_all(folder.join("inside")).unwrap();
    let m = refusal(checkpoint::save(&folder, &params, &st, &BTreeMap::new()));
    assert!(m.contains("cannot write"), "{m}");
    assert!(temporaries(&dir, "folder.safetensors").is_empty());
    // Nor does one whose folder does not exist.
    let nowhere = dir.join("missing").join("run.safetensors");
    assert!(checkpoint::save(&nowhere, &params, &st, &BTreeMap::new()).is_err());
}
