//! Hyperparameter schedules: on the stepper (`Stepper::set_schedule`, no
//! recompilation per step), in the language (the prelude's functions of
//! `t`), the two agreeing, and the shapes' values at their landmarks.

use lensopt::schedules::Schedule;
use lensopt::{catalog, Backend, DynOptimizer, Mode, Optimizer, TensorMut, TensorRef};
use ndarray::Array1;

fn run(opt: &DynOptimizer, steps: usize, schedule: Option<Schedule>, backend: Backend) -> Vec<f64> {
    let mut p = Array1::from(vec![1.0, -0.5, 2.0]);
    let g = Array1::from(vec![0.3, -0.1, 0.2]);
    let mut st = opt.init::<f64>(&[&p as &dyn TensorRef<f64>]).unwrap();
    st.set_backend(backend);
    if let Some(s) = schedule {
        st.set_schedule("lr", s).unwrap();
    }
    for _ in 0..steps {
        st.step(
            &mut [&mut p as &mut dyn TensorMut<f64>],
            &[&g as &dyn TensorRef<f64>],
        )
        .unwrap();
    }
    p.to_vec()
}

#[test]
fn the_language_and_the_stepper_schedule_alike() {
    let cases: [(&str, Schedule); 5] = [
        (
            "warmup_cosine(10, 60, 0.1)",
            Schedule::warmup_cosine(10, 60, 0.1).unwrap(),
        ),
        ("cosine_decay(60, 0)", Schedule::cosine(60, 0.0).unwrap()),
        (
            "wsd(5, 20, 30, 0.05)",
            Schedule::warmup_stable_decay(5, 20, 30, 0.05).unwrap(),
        ),
        (
            "step_decay(15, 0.5)",
            Schedule::step_decay(15, 0.5).unwrap(),
        ),
        ("inverse_sqrt(8)", Schedule::inverse_sqrt(8).unwrap()),
    ];
    let plain = catalog::get("sgd").unwrap().with("lr", 0.1).unwrap();
    for (call, schedule) in cases {
        let text = format!("S {{ hyper lr = 0.1; update {{ p = p - lr * {call} * g; }} }}");
        let scheduled_rule = DynOptimizer::parse(&text).unwrap();
        for backend in [Backend::Interpreter, Backend::Jit(Mode::Exact)] {
            let a = run(&scheduled_rule, 70, None, backend);
            let b = run(&plain, 70, Some(schedule.clone()), backend);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-12, "{call}: {x} vs {y} ({backend:?})");
            }
        }
    }
}

#[test]
fn shapes_at_their_landmarks() {
    let s = Schedule::cosine(100, 0.0).unwrap();
    assert_eq!(s.factor(1), 1.0);
    assert!((s.factor(51) - 0.5).abs() < 1e-15);
    assert!(s.factor(101).abs() < 1e-15 && s.factor(500).abs() < 1e-15);
    let s = Schedule::step_decay(10, 0.1).unwrap();
    assert_eq!((s.factor(10), s.factor(11)), (1.0, 0.1));
    let s = Schedule::warmup_stable_decay(10, 80, 10, 0.0).unwrap();
    assert_eq!(
        (s.factor(5), s.factor(50), s.factor(95), s.factor(100)),
        (0.5, 1.0, 0.5, 0.0)
    );
    let s = Schedule::parse("wsd:10,10", 100).unwrap();
    assert_eq!(s.factor(90), 1.0);
    assert!(Schedule::parse("warmup_cosine:100", 100).is_err());
    assert!(Schedule::parse("cosine:2", 100).is_err(), "a floor above 1");
    assert!(Schedule::parse("nope", 100).is_err());
    assert!(Schedule::linear_warmup(0).is_err());
}

/// A schedule changes hyperparameters, not the compiled program: the
/// kernels are compiled once however many steps run, and groups keep their
/// own base values.
#[test]
fn scheduling_does_not_recompile_and_scales_each_group() {
    let opt = catalog::get("adamw").unwrap();
    let mut a = Array1::from(vec![1.0f32; 8]);
    let mut b = Array1::from(vec![1.0f32; 8]);
    let g = Array1::from(vec![0.5f32; 8]);
    let groups = [
        lensopt::Group::new([0]).set("lr", 1e-2),
        lensopt::Group::new([1]).set("lr", 1e-3),
    ];
    let mut st = opt
        .init_groups::<f32>(&[&a as &dyn TensorRef<f32>, &b], &groups)
        .unwrap();
    st.set_schedule("lr", Schedule::linear_warmup(4).unwrap())
        .unwrap();
    let mut programs = std::collections::HashSet::new();
    for t in 1..=6u64 {
        st.step(
            &mut [&mut a as &mut dyn TensorMut<f32>, &mut b],
            &[&g as &dyn TensorRef<f32>, &g],
        )
        .unwrap();
        let lr = |k| st.hyper(k, "lr").unwrap().as_f64();
        let factor = (t as f64 / 4.0).min(1.0);
        assert_eq!((lr(0), lr(1)), (1e-2 * factor, 1e-3 * factor));
        programs.insert(std::sync::Arc::as_ptr(&st.program(&[]).unwrap()) as usize);
    }
    assert_eq!(programs.len(), 1, "one program for every step");
    assert!(st.set_schedule("amsgrad", Schedule::constant()).is_err());
    assert!(st.set_schedule("nope", Schedule::constant()).is_err());
}
