//! The JIT on large tensors: chunk boundaries, vector tails and threads.
//! Element-wise results do not depend on the thread count; reductions are
//! reproducible and agree with the interpreter.

use lensopt::{catalog, Backend, DynOptimizer, Optimizer, Stepper};
use ndarray::Array1;

fn data(n: usize, seed: u64) -> Array1<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn run(
    opt: &DynOptimizer,
    n: usize,
    threads: Option<usize>,
    backend: Backend,
) -> (Array1<f32>, Stepper<f32>) {
    let mut p = data(n, 1);
    let mut st = opt.init::<f32>(&[&p]).unwrap();
    st.set_backend(backend);
    if let Some(t) = threads {
        st.set_threads(t).unwrap();
    }
    for step in 0..3 {
        let g = data(n, 10 + step);
        st.step(&mut [&mut p], &[&g]).unwrap();
    }
    (p, st)
}

#[test]
fn element_results_do_not_depend_on_the_thread_count() {
    let n = 4 * 65_536 + 12_345 + 3;
    for name in ["adam", "lion", "adan"] {
        let opt = catalog::get(name).unwrap().with("lr", 0.01).unwrap();
        let (one, _) = run(&opt, n, Some(1), Backend::default());
        for threads in [2, 3] {
            let (many, _) = run(&opt, n, Some(threads), Backend::default());
            assert!(
                one.iter()
                    .zip(many.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: {threads} threads differ from 1"
            );
        }
    }
}

#[test]
fn reductions_are_reproducible_and_agree_with_the_interpreter() {
    let n = 3 * 65_536 + 7;
    let cases = [
        catalog::get("lion")
            .unwrap()
            .with("cautious", true)
            .unwrap(),
        catalog::get("cadamw").unwrap(),
        catalog::get("lamb").unwrap(),
        catalog::get("adan")
            .unwrap()
            .with("max_grad_norm", 0.5)
            .unwrap(),
    ];
    for opt in cases {
        let name = opt.rule().name.clone();
        let (a, _) = run(&opt, n, Some(2), Backend::default());
        let (b, _) = run(&opt, n, Some(2), Backend::default());
        assert!(
            a.iter()
                .zip(b.iter())
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: not reproducible"
        );
        let (want, _) = run(&opt, n, None, Backend::Interpreter);
        for (x, y) in a.iter().zip(want.iter()) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{name}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn many_small_tensors_in_groups() {
    let opt = catalog::get("adamw").unwrap();
    let mut params: Vec<Array1<f32>> = (0..200).map(|k| data(1 + k % 37, k as u64)).collect();
    let mut expect = params.clone();
    let refs: Vec<&dyn lensopt::TensorRef<f32>> = params
        .iter()
        .map(|p| p as &dyn lensopt::TensorRef<f32>)
        .collect();
    let groups = [
        lensopt::Group::new(0..100),
        lensopt::Group::new(100..200)
            .set("weight_decay", 0.0)
            .set("lr", 1e-2),
    ];
    let mut jit = opt.init_groups(&refs, &groups).unwrap();
    let mut interp = opt.init_groups(&refs, &groups).unwrap();
    interp.set_backend(Backend::Interpreter);
    let grads: Vec<Array1<f32>> = params
        .iter()
        .enumerate()
        .map(|(k, p)| data(p.len(), 99 + k as u64))
        .collect();
    let gs: Vec<&dyn lensopt::TensorRef<f32>> = grads
        .iter()
        .map(|g| g as &dyn lensopt::TensorRef<f32>)
        .collect();
    for _ in 0..2 {
        let mut ps: Vec<&mut dyn lensopt::TensorMut<f32>> = params
            .iter_mut()
            .map(|p| p as &mut dyn lensopt::TensorMut<f32>)
            .collect();
        jit.step(&mut ps, &gs).unwrap();
        let mut es: Vec<&mut dyn lensopt::TensorMut<f32>> = expect
            .iter_mut()
            .map(|p| p as &mut dyn lensopt::TensorMut<f32>)
            .collect();
        interp.step(&mut es, &gs).unwrap();
    }
    for (a, b) in params.iter().zip(&expect) {
        for (x, y) in a.iter().zip(b.iter()) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}
