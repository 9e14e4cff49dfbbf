//! The GPU backend on a device: every golden case, f32 and f64, extra
//! inputs included, through PTX launched with cudarc, against the references;
//! sizes from 1 to 3,000,003 elements (f32 and f64), many tensors of mixed
//! sizes and global reductions across them against the CPU JIT, parameters
//! and every state; `pow`'s special values; optional inputs that come and go. Build with
//! `cargo test -p lensopt-tests --features cuda --test gpu`.
//!
//! This test binary has its own harness, so that a skipped test is counted
//! where everyone sees it: it prints `gpu: N passed, M skipped (reason)`.
//! Without the feature, a driver or a device the tests are skipped; with
//! `LENSOPT_REQUIRE_GPU=1` (set by `scripts/gpu-check.sh`) a skip is a
//! failure instead, so a broken driver cannot pass unnoticed.

use std::process::ExitCode;

/// Why the tests cannot run here, if they cannot.
#[cfg(not(feature = "cuda"))]
fn unavailable() -> Option<String> {
    Some(
        "built without the `cuda` feature (cargo test -p lensopt-tests --features cuda --test gpu)"
            .into(),
    )
}

#[cfg(feature = "cuda")]
fn unavailable() -> Option<String> {
    lensopt::cuda::Device::new(0).err().map(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
const TESTS: &[(&str, fn())] = &[
    ("golden_cases_on_the_gpu", || {}),
    ("many_tensors_agree_with_the_cpu_jit", || {}),
    ("circuits_on_the_gpu_agree_with_the_cpu", || {}),
    ("parameter_groups_agree_with_the_cpu_jit", || {}),
    ("sizes_agree_with_the_cpu_jit", || {}),
    (
        "mixed_tensors_and_global_reductions_agree_with_the_cpu_jit",
        || {},
    ),
    ("optional_inputs_keep_their_specialisations", || {}),
    ("pow_matches_the_cpu", || {}),
    ("empty_launches_are_no_launches", || {}),
    ("schedules_agree_with_the_cpu_jit", || {}),
    ("non_finite_gradients_follow_the_policy", || {}),
];

#[cfg(feature = "cuda")]
const TESTS: &[(&str, fn())] = &[
    (
        "golden_cases_on_the_gpu",
        on_device::golden_cases_on_the_gpu,
    ),
    (
        "many_tensors_agree_with_the_cpu_jit",
        on_device::many_tensors_agree_with_the_cpu_jit,
    ),
    (
        "circuits_on_the_gpu_agree_with_the_cpu",
        on_device::circuits_on_the_gpu_agree_with_the_cpu,
    ),
    (
        "parameter_groups_agree_with_the_cpu_jit",
        on_device::parameter_groups_agree_with_the_cpu_jit,
    ),
    (
        "sizes_agree_with_the_cpu_jit",
        on_device::sizes_agree_with_the_cpu_jit,
    ),
    (
        "mixed_tensors_and_global_reductions_agree_with_the_cpu_jit",
        on_device::mixed_tensors_and_global_reductions_agree_with_the_cpu_jit,
    ),
    (
        "optional_inputs_keep_their_specialisations",
        on_device::optional_inputs_keep_their_specialisations,
    ),
    ("pow_matches_the_cpu", on_device::pow_matches_the_cpu),
    (
        "empty_launches_are_no_launches",
        on_device::empty_launches_are_no_launches,
    ),
    (
        "schedules_agree_with_the_cpu_jit",
        on_device::schedules_agree_with_the_cpu_jit,
    ),
    (
        "non_finite_gradients_follow_the_policy",
        on_device::non_finite_gradients_follow_the_policy,
    ),
];

fn main() -> ExitCode {
    let required = std::env::var("LENSOPT_REQUIRE_GPU").is_ok_and(|v| v == "1");
    // `cargo test -- --list` and filters: honour a name filter, list nothing else.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let selected: Vec<&(&str, fn())> = TESTS
        .iter()
        .filter(|(name, _)| filter.as_ref().is_none_or(|f| name.contains(f.as_str())))
        .collect();
    if let Some(reason) = unavailable() {
        println!("gpu: 0 passed, {} skipped ({reason})", selected.len());
        if required {
            println!("gpu: LENSOPT_REQUIRE_GPU=1, so a skipped GPU test is a failure");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    let mut failed = Vec::new();
    for (name, test) in &selected {
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!(
        "gpu: {} passed, {} failed, 0 skipped",
        selected.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(feature = "cuda")]
mod on_device {
    use lensopt::case::{Case, Dtype};
    use lensopt::cuda::{Device, GpuStepper};
    use lensopt::{catalog, Optimizer};
    use std::sync::Arc;

    /// The device (`main` checked that there is one).
    fn device() -> Option<Arc<Device>> {
        Some(Arc::new(Device::new(0).expect("a device")))
    }

    /// Parameters and gradients in [-1, 1) for tensors of `sizes`, f32.
    fn sample_tensors(sizes: &[usize]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let fill = |n: usize, a: usize, m: usize, h: f32| -> Vec<f32> {
            (0..n).map(|i| ((i * a % m) as f32 / h) - 1.0).collect()
        };
        let host = sizes.iter().map(|&n| fill(n, 7919, 1000, 500.0)).collect();
        let grads = sizes.iter().map(|&n| fill(n, 104729, 997, 498.5)).collect();
        (host, grads)
    }

    /// Replays `case` on the device in `F`; returns the parameters after each step.
    fn replay<F: lensopt::Float>(
        dev: &Arc<Device>,
        case: &Case,
        opt: &lensopt::DynOptimizer,
    ) -> Vec<Vec<f64>> {
        let conv = |v: &[f64]| v.iter().map(|x| F::from_f64(*x)).collect::<Vec<F>>();
        let mut p = dev.upload(&conv(&case.p0)).unwrap();
        let mut st = GpuStepper::<F>::new(dev.clone(), opt, &[&p]).unwrap();
        let rule = opt.rule();
        let mut out = Vec::new();
        for (t, g) in case.grads.iter().enumerate() {
            let g = dev.upload(&conv(g)).unwrap();
            // Extra inputs by name: `h` from `hessians`, `ghat` from `hessian_grads`.
            let uploaded: Vec<Option<_>> = rule
                .inputs
                .iter()
                .map(|i| {
                    let src = if i.name == "h" {
                        &case.hessians[t]
                    } else {
                        &case.hessian_grads[t]
                    };
                    src.as_ref().map(|v| dev.upload(&conv(v)).unwrap())
                })
                .collect();
            let inputs: Vec<Option<Vec<_>>> = uploaded
                .iter()
                .map(|u| u.as_ref().map(|b| vec![b]))
                .collect();
            st.step_with(&mut [&mut p], &[&g], &inputs).unwrap();
            out.push(
                dev.download(&p)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_f64())
                    .collect(),
            );
        }
        out
    }

    pub fn golden_cases_on_the_gpu() {
        let Some(dev) = device() else { return };
        let mut checked = 0;
        for file in lensopt_tests::golden_files() {
            let case = Case::from_json(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let opt = lensopt_tests::configured(&case).unwrap();
            let (abs, rel) = lensopt_tests::tolerance(&case);
            let ours = match case.dtype {
                Dtype::F32 => replay::<f32>(&dev, &case, &opt),
                Dtype::F64 => replay::<f64>(&dev, &case, &opt),
            };
            for (t, (mine, theirs)) in ours
                .iter()
                .zip(case.params_after.as_ref().unwrap())
                .enumerate()
            {
                for (a, b) in mine.iter().zip(theirs) {
                    assert!(
                        (a - b).abs() <= abs + rel * b.abs(),
                        "{}: step {}: {a} vs {b}",
                        file.display(),
                        t + 1
                    );
                }
            }
            checked += 1;
        }
        assert_eq!(checked, 50, "every golden case runs on the GPU");
    }

    pub fn many_tensors_agree_with_the_cpu_jit() {
        let Some(dev) = device() else { return };
        for opt in [
            catalog::get("adam").unwrap(),
            catalog::get("lamb").unwrap(),
            catalog::get("lion")
                .unwrap()
                .with("cautious", true)
                .unwrap(),
        ] {
            agree_with_the_cpu::<f32>(&dev, &opt, &[1, 3, 1000, 70_001, 1 << 20], 3, 1e-5, None);
        }
    }

    /// Two parameter groups with their own learning rate and weight decay
    /// (one switched mid-run, which changes the specialisation), on the
    /// GPU and on the CPU JIT.
    pub fn parameter_groups_agree_with_the_cpu_jit() {
        use lensopt::Group;
        let Some(dev) = device() else { return };
        let opt = catalog::get("adamw").unwrap();
        let sizes = [5usize, 262_147, 1000];
        let (host, grads) = sample_tensors(&sizes);
        let groups = [
            Group::new([0, 2]).set("lr", 1e-2),
            Group::new([1]).set("lr", 3e-3).set("weight_decay", 0.0),
        ];
        let mut cpu: Vec<ndarray::Array1<f32>> = host
            .iter()
            .map(|v| ndarray::Array1::from(v.clone()))
            .collect();
        let refs: Vec<&dyn lensopt::TensorRef<f32>> = cpu
            .iter()
            .map(|p| p as &dyn lensopt::TensorRef<f32>)
            .collect();
        let mut cpu_step = opt.init_groups(&refs, &groups).unwrap();
        let mut gpu: Vec<_> = host.iter().map(|v| dev.upload(v).unwrap()).collect();
        let g_gpu: Vec<_> = grads.iter().map(|v| dev.upload(v).unwrap()).collect();
        let g_cpu: Vec<ndarray::Array1<f32>> = grads
            .iter()
            .map(|v| ndarray::Array1::from(v.clone()))
            .collect();
        let mut st =
            GpuStepper::with_groups(dev.clone(), &opt, &gpu.iter().collect::<Vec<_>>(), &groups)
                .unwrap();
        for step in 0..4 {
            if step == 2 {
                cpu_step.set_group_hyper(1, "weight_decay", 0.1).unwrap();
                st.set_group_hyper(1, "weight_decay", 0.1).unwrap();
            }
            let mut ps: Vec<&mut dyn lensopt::TensorMut<f32>> = cpu
                .iter_mut()
                .map(|p| p as &mut dyn lensopt::TensorMut<f32>)
                .collect();
            let gs: Vec<&dyn lensopt::TensorRef<f32>> = g_cpu
                .iter()
                .map(|g| g as &dyn lensopt::TensorRef<f32>)
                .collect();
            cpu_step.step(&mut ps, &gs).unwrap();
            let mut ps: Vec<_> = gpu.iter_mut().collect();
            st.step(&mut ps, &g_gpu.iter().collect::<Vec<_>>()).unwrap();
        }
        for (c, g) in cpu.iter().zip(&gpu) {
            let g = dev.download(g).unwrap();
            for (a, b) in c.iter().zip(&g) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                    "groups: {a} vs {b}"
                );
            }
        }
        // The states agree too (every state is maintained on the device).
        for k in 0..sizes.len() {
            for name in ["m", "v", "vmax"] {
                let want = cpu_step.state(k, name).unwrap();
                let got = st.state(k, name).unwrap();
                for (a, b) in want.iter().zip(&got) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                        "{name}: {a} vs {b}"
                    );
                }
            }
        }
        // And the view (AdamW's is `p` itself).
        let views = st.view(&gpu.iter().collect::<Vec<_>>()).unwrap();
        for (v, g) in views.iter().zip(&gpu) {
            assert_eq!(v, &dev.download(g).unwrap());
        }
        // A GPU checkpoint loads on the CPU and back onto the device.
        let dir = std::env::temp_dir().join(format!("lensopt-gpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("groups.safetensors");
        let names = ["a", "b", "c"];
        st.save(
            &path,
            &names,
            &gpu.iter().collect::<Vec<_>>(),
            &Default::default(),
        )
        .unwrap();
        let mut host: Vec<ndarray::Array1<f32>> =
            sizes.iter().map(|&n| ndarray::Array1::zeros(n)).collect();
        let refs: Vec<&dyn lensopt::TensorRef<f32>> = host
            .iter()
            .map(|p| p as &dyn lensopt::TensorRef<f32>)
            .collect();
        let mut fresh = opt.init_groups(&refs, &groups).unwrap();
        {
            let mut named: Vec<(&str, &mut dyn lensopt::TensorMut<f32>)> = names
                .iter()
                .zip(host.iter_mut())
                .map(|(n, h)| (*n, h as &mut dyn lensopt::TensorMut<f32>))
                .collect();
            lensopt::checkpoint::load(&path, &mut named, &mut fresh).unwrap();
        }
        assert_eq!(fresh.t(), 4);
        for k in 0..sizes.len() {
            let want = cpu_step.state(k, "v").unwrap();
            let got = fresh.state(k, "v").unwrap();
            for (a, b) in want.iter().zip(got.iter()) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "v: {a} vs {b}");
            }
        }
        let mut gpu2: Vec<_> = sizes
            .iter()
            .map(|&n| dev.upload(&vec![0f32; n]).unwrap())
            .collect();
        let mut st2 =
            GpuStepper::with_groups(dev.clone(), &opt, &gpu2.iter().collect::<Vec<_>>(), &groups)
                .unwrap();
        st2.load(&path, &names, &mut gpu2.iter_mut().collect::<Vec<_>>())
            .unwrap();
        assert_eq!(st2.t(), 4);
        for k in 0..sizes.len() {
            assert_eq!(st2.state(k, "m").unwrap(), st.state(k, "m").unwrap());
            assert_eq!(
                dev.download(&gpu2[k]).unwrap(),
                dev.download(&gpu[k]).unwrap()
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Runs `opt` for `steps` steps on tensors of `sizes` in `F` on the CPU
    /// JIT and on the GPU from the same values, then compares parameters
    /// and every element state within `tol` (relative to 1 + |value|).
    fn agree_with_the_cpu<F: lensopt::Float>(
        dev: &Arc<Device>,
        opt: &lensopt::DynOptimizer,
        sizes: &[usize],
        steps: usize,
        tol: f64,
        schedule: Option<lensopt::schedules::Schedule>,
    ) {
        let (host, grads) = sample_tensors(sizes);
        let conv = |v: &Vec<f32>| v.iter().map(|x| F::from_f64(*x as f64)).collect::<Vec<F>>();
        let host: Vec<Vec<F>> = host.iter().map(conv).collect();
        let grads: Vec<Vec<F>> = grads.iter().map(conv).collect();
        let mut cpu: Vec<ndarray::Array1<F>> = host
            .iter()
            .map(|v| ndarray::Array1::from(v.clone()))
            .collect();
        let g_cpu: Vec<ndarray::Array1<F>> = grads
            .iter()
            .map(|v| ndarray::Array1::from(v.clone()))
            .collect();
        let refs: Vec<&dyn lensopt::TensorRef<F>> = cpu
            .iter()
            .map(|p| p as &dyn lensopt::TensorRef<F>)
            .collect();
        let mut cpu_step = opt.init(&refs).unwrap();
        let mut gpu: Vec<_> = host.iter().map(|v| dev.upload(v).unwrap()).collect();
        let g_gpu: Vec<_> = grads.iter().map(|v| dev.upload(v).unwrap()).collect();
        let mut st = GpuStepper::new(dev.clone(), opt, &gpu.iter().collect::<Vec<_>>()).unwrap();
        if let Some(s) = schedule {
            cpu_step.set_schedule("lr", s.clone()).unwrap();
            st.set_schedule("lr", s).unwrap();
        }
        for _ in 0..steps {
            let mut ps: Vec<&mut dyn lensopt::TensorMut<F>> = cpu
                .iter_mut()
                .map(|p| p as &mut dyn lensopt::TensorMut<F>)
                .collect();
            let gs: Vec<&dyn lensopt::TensorRef<F>> = g_cpu
                .iter()
                .map(|g| g as &dyn lensopt::TensorRef<F>)
                .collect();
            cpu_step.step(&mut ps, &gs).unwrap();
            let mut ps: Vec<_> = gpu.iter_mut().collect();
            st.step(&mut ps, &g_gpu.iter().collect::<Vec<_>>()).unwrap();
        }
        let rule = opt.rule();
        let close = |what: &str, k: usize, a: &[F], b: &[F]| {
            assert_eq!(a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let (x, y) = (x.to_f64(), y.to_f64());
                assert!(
                    (x - y).abs() <= tol * (1.0 + x.abs()) || (x.is_nan() && y.is_nan()),
                    "{} {what} tensor {k} (of {}) element {i}: cpu {x} gpu {y}",
                    rule.name,
                    sizes[k]
                );
            }
        };
        for (k, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            close("p", k, c.as_slice().unwrap(), &dev.download(g).unwrap());
            for state in &rule.states {
                if let (Some(want), Ok(got)) =
                    (cpu_step.state(k, &state.name), st.state(k, &state.name))
                {
                    let want: Vec<F> = want.iter().copied().collect();
                    close(&state.name, k, &want, &got);
                }
            }
        }
    }

    /// One tensor of each size from the list, f32 and f64: one
    /// element, a vector tail, many chunks, chunks plus a tail.
    pub fn sizes_agree_with_the_cpu_jit() {
        let Some(dev) = device() else { return };
        let adam = catalog::get("adam").unwrap();
        for n in [1usize, 5, 262_147, 1_048_577, 3_000_003] {
            agree_with_the_cpu::<f32>(&dev, &adam, &[n], 3, 1e-5, None);
            agree_with_the_cpu::<f64>(&dev, &adam, &[n], 3, 1e-10, None);
        }
    }

    /// 40 tensors of mixed sizes in one launch, and
    /// rules whose reductions span tensors (Adan's global gradient norm
    /// clipping, LAMB's trust ratios, cautious Lion's mask mean).
    pub fn mixed_tensors_and_global_reductions_agree_with_the_cpu_jit() {
        let Some(dev) = device() else { return };
        let sizes: Vec<usize> = (0..40)
            .map(|k| match k % 5 {
                0 => 2,
                1 => 1 + k,
                2 => 16_384 * (k % 3) + 7,
                3 => 100_003,
                _ => 1000 + 13 * k,
            })
            .collect();
        for opt in [
            catalog::get("adan")
                .unwrap()
                .with("max_grad_norm", 1.0)
                .unwrap(),
            catalog::get("lamb").unwrap(),
            catalog::get("lion")
                .unwrap()
                .with("cautious", true)
                .unwrap(),
            catalog::get("adamw").unwrap(),
        ] {
            agree_with_the_cpu::<f32>(&dev, &opt, &sizes, 3, 1e-5, None);
            agree_with_the_cpu::<f64>(&dev, &opt, &sizes, 3, 1e-10, None);
        }
    }

    /// A NaN in a gradient: refused (naming the tensor and the element,
    /// nothing changed), skipped and counted, or not looked for.
    pub fn non_finite_gradients_follow_the_policy() {
        use lensopt::NonFinite;
        let Some(dev) = device() else { return };
        let adam = catalog::get("adam").unwrap();
        let sizes = [1000usize, 70_001];
        let (host, mut grads) = sample_tensors(&sizes);
        grads[1][40_000] = f32::NAN;
        let mut gpu: Vec<_> = host.iter().map(|v| dev.upload(v).unwrap()).collect();
        let g: Vec<_> = grads.iter().map(|v| dev.upload(v).unwrap()).collect();
        let mut st = GpuStepper::new(dev.clone(), &adam, &gpu.iter().collect::<Vec<_>>()).unwrap();
        let err = st
            .step(
                &mut gpu.iter_mut().collect::<Vec<_>>(),
                &g.iter().collect::<Vec<_>>(),
            )
            .unwrap_err();
        match err {
            lensopt::Error::NonFinite {
                what, index, step, ..
            } => {
                assert_eq!((what.as_str(), index, step), ("gradient 1", 40_000, 1));
            }
            other => panic!("{other}"),
        }
        assert_eq!(st.t(), 0);
        for (p, h) in gpu.iter().zip(&host) {
            assert_eq!(&dev.download(p).unwrap(), h, "nothing changed");
        }
        st.set_non_finite(NonFinite::Skip);
        st.step(
            &mut gpu.iter_mut().collect::<Vec<_>>(),
            &g.iter().collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!((st.t(), st.skipped(), st.last_skipped()), (0, 1, true));
        st.set_non_finite(NonFinite::Unchecked);
        st.step(
            &mut gpu.iter_mut().collect::<Vec<_>>(),
            &g.iter().collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(st.t(), 1);
        assert!(dev.download(&gpu[1]).unwrap()[40_000].is_nan());
    }

    /// A learning-rate schedule on the GPU stepper, as on the CPU's.
    pub fn schedules_agree_with_the_cpu_jit() {
        let Some(dev) = device() else { return };
        let schedule = lensopt::schedules::Schedule::warmup_cosine(3, 8, 0.1).unwrap();
        let adamw = catalog::get("adamw").unwrap();
        agree_with_the_cpu::<f32>(&dev, &adamw, &[1000, 70_001], 8, 1e-5, Some(schedule));
    }

    /// Sophia-H with its Hessian every other step: two specialisations,
    /// each compiled once and kept, and the same result as the CPU.
    pub fn optional_inputs_keep_their_specialisations() {
        let Some(dev) = device() else { return };
        let opt = catalog::get("sophiah").unwrap();
        let sizes = [1000usize, 70_001];
        let (host, grads) = sample_tensors(&sizes);
        let hess: Vec<Vec<f32>> = grads
            .iter()
            .map(|g| g.iter().map(|x| x.abs()).collect())
            .collect();
        let mut cpu: Vec<ndarray::Array1<f32>> = host
            .iter()
            .map(|v| ndarray::Array1::from(v.clone()))
            .collect();
        let g_cpu: Vec<ndarray::Array1<f32>> = grads
            .iter()
            .map(|v| ndarray::Array1::from(v.clone()))
            .collect();
        let h_cpu: Vec<ndarray::Array1<f32>> = hess
            .iter()
            .map(|v| ndarray::Array1::from(v.clone()))
            .collect();
        let refs: Vec<&dyn lensopt::TensorRef<f32>> = cpu
            .iter()
            .map(|p| p as &dyn lensopt::TensorRef<f32>)
            .collect();
        let mut cpu_step = opt.init(&refs).unwrap();
        let mut gpu: Vec<_> = host.iter().map(|v| dev.upload(v).unwrap()).collect();
        let g_gpu: Vec<_> = grads.iter().map(|v| dev.upload(v).unwrap()).collect();
        let h_gpu: Vec<_> = hess.iter().map(|v| dev.upload(v).unwrap()).collect();
        let mut st = GpuStepper::new(dev.clone(), &opt, &gpu.iter().collect::<Vec<_>>()).unwrap();
        for step in 0..6 {
            let with_h = step % 2 == 0;
            let mut ps: Vec<&mut dyn lensopt::TensorMut<f32>> = cpu
                .iter_mut()
                .map(|p| p as &mut dyn lensopt::TensorMut<f32>)
                .collect();
            let gs: Vec<&dyn lensopt::TensorRef<f32>> = g_cpu
                .iter()
                .map(|g| g as &dyn lensopt::TensorRef<f32>)
                .collect();
            let inputs = if with_h {
                lensopt::Inputs::new().with(
                    "h",
                    h_cpu
                        .iter()
                        .map(|h| h as &dyn lensopt::TensorRef<f32>)
                        .collect(),
                )
            } else {
                lensopt::Inputs::new()
            };
            cpu_step.step_with(&mut ps, &gs, &inputs).unwrap();
            let mut ps: Vec<_> = gpu.iter_mut().collect();
            let given = with_h.then(|| h_gpu.iter().collect::<Vec<_>>());
            st.step_with(&mut ps, &g_gpu.iter().collect::<Vec<_>>(), &[given])
                .unwrap();
        }
        assert_eq!(st.specialisations(), 2, "one per presence of `h`, kept");
        for (c, g) in cpu.iter().zip(&gpu) {
            for (a, b) in c.iter().zip(&dev.download(g).unwrap()) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                    "sophiah: {a} vs {b}"
                );
            }
        }
    }

    /// `pow` at its special values (zero, negative and NaN bases and
    /// exponents, integer and fractional) gives the CPU's results, NaN
    /// exactly where the CPU has NaN.
    pub fn pow_matches_the_cpu() {
        let Some(dev) = device() else { return };
        let opt = lensopt::DynOptimizer::parse(
            "P { hyper lr = 1.0; state y = 0; update { y = pow(p, g); p = p - lr * 0; } }",
        )
        .unwrap();
        let specials = [
            0.0f64,
            -0.0,
            1.0,
            -1.0,
            2.0,
            -2.0,
            0.5,
            -0.5,
            3.0,
            -3.0,
            2.5,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        for f64_elements in [false, true] {
            let (mut bases, mut exponents) = (Vec::new(), Vec::new());
            for &x in &specials {
                for &y in &specials {
                    bases.push(x);
                    exponents.push(y);
                }
            }
            let check = |got: Vec<f64>| {
                for ((x, y), v) in bases.iter().zip(&exponents).zip(&got) {
                    let want = x.powf(*y);
                    let tol = if f64_elements { 1e-12 } else { 1e-5 };
                    assert!(
                        (want.is_nan() && v.is_nan())
                            || want == *v
                            || (want - v).abs() <= tol * want.abs(),
                        "pow({x}, {y}): gpu {v}, cpu {want}"
                    );
                }
            };
            if f64_elements {
                let mut p = dev.upload(&bases).unwrap();
                let g = dev.upload(&exponents).unwrap();
                let mut st = GpuStepper::<f64>::new(dev.clone(), &opt, &[&p]).unwrap();
                st.step(&mut [&mut p], &[&g]).unwrap();
                check(st.state(0, "y").unwrap());
            } else {
                let to32 = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
                let mut p = dev.upload(&to32(&bases)).unwrap();
                let g = dev.upload(&to32(&exponents)).unwrap();
                let mut st = GpuStepper::<f32>::new(dev.clone(), &opt, &[&p]).unwrap();
                st.step(&mut [&mut p], &[&g]).unwrap();
                check(
                    st.state(0, "y")
                        .unwrap()
                        .iter()
                        .map(|x| *x as f64)
                        .collect(),
                );
            }
        }
    }

    /// No tensors: a step launches nothing and succeeds (the driver
    /// refuses an empty grid, and cannot allocate an empty tensor).
    pub fn empty_launches_are_no_launches() {
        let Some(dev) = device() else { return };
        for name in ["adam", "lamb"] {
            let opt = catalog::get(name).unwrap();
            let mut st = GpuStepper::<f32>::new(dev.clone(), &opt, &[]).unwrap();
            st.step(&mut [], &[]).unwrap();
            st.step(&mut [], &[]).unwrap();
            assert_eq!((st.t(), st.blocks()), (2, 0));
        }
    }

    pub fn circuits_on_the_gpu_agree_with_the_cpu() {
        use lensopt::circuit::eval::Machine;
        use lensopt::circuit::CircuitBuilder;
        use lensopt::cuda::GpuCircuit;
        let Some(dev) = device() else { return };
        let mut b = CircuitBuilder::new();
        let mut wires: Vec<usize> = (0..8).map(|_| b.input()).collect();
        wires.extend((0..3).map(|_| b.param()));
        for k in 0..200 {
            let (x, y) = (
                wires[(k * 7) % wires.len()],
                wires[(k * 13 + 5) % wires.len()],
            );
            let z = match k % 3 {
                0 => b.and(x, y),
                1 => b.xor(x, y),
                _ => b.not(x),
            };
            wires.push(z);
        }
        let c = b.finish(wires[wires.len() - 4..].to_vec()).unwrap();
        let words = 300;
        let inputs: Vec<Vec<u64>> = (0..8)
            .map(|i| {
                (0..words)
                    .map(|k| (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ i))
                    .collect()
            })
            .collect();
        let dy: Vec<Vec<u64>> = (0..4)
            .map(|i| {
                (0..words)
                    .map(|k| (k as u64 * 31 + i).wrapping_mul(0xBF58_476D_1CE4_E5B9))
                    .collect()
            })
            .collect();
        let params = [true, false, true];
        let gpu = GpuCircuit::new(dev, &c).unwrap();
        let mut cpu = Machine::new(&c, words).unwrap();
        assert_eq!(
            gpu.forward(&params, &inputs).unwrap(),
            cpu.forward(&c, &params, &inputs).unwrap()
        );
        assert_eq!(
            gpu.reverse(&params, &inputs, &dy).unwrap(),
            cpu.reverse(&c, &dy).unwrap()
        );
    }
}
