//! Explicit precision (`f32(x)`, `bf16(x)`, `f64(x)`) and `lerp`: values
//! against hand-computed references, the same bits on the interpreter and
//! both JIT modes (a rounding is never optimised away), and PTX that keeps
//! the rounding.

use lensopt::{Backend, DynOptimizer, Float, Mode, Optimizer, Stepper, TensorMut, TensorRef};
use ndarray::Array1;

/// One step of `text` on `p`, `g` under `backend`: the parameters and state `d`.
fn step<F: Float>(text: &str, p: &[f64], g: &[f64], backend: Backend) -> (Vec<f64>, Vec<f64>) {
    let opt = DynOptimizer::parse(text).unwrap();
    let mut p: Array1<F> = p.iter().map(|x| F::from_f64(*x)).collect();
    let g: Array1<F> = g.iter().map(|x| F::from_f64(*x)).collect();
    let mut st: Stepper<F> = opt.init(&[&p as &dyn TensorRef<F>]).unwrap();
    st.set_backend(backend);
    // Non-finite gradients are part of what is tested.
    st.set_non_finite(lensopt::NonFinite::Unchecked);
    st.step(
        &mut [&mut p as &mut dyn TensorMut<F>],
        &[&g as &dyn TensorRef<F>],
    )
    .unwrap();
    let d = st
        .state(0, "d")
        .unwrap()
        .iter()
        .map(|x| x.to_f64())
        .collect();
    (p.iter().map(|x| x.to_f64()).collect(), d)
}

/// The interpreter's result, checked bit for bit against the exact JIT and
/// within a few ulps of the inputs against the fast one (which may turn a
/// division by a constant into a multiplication, or `a * b - c` into an
/// `fma`, but never drops a rounding).
fn agreed<F: Float>(text: &str, p: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let want = step::<F>(text, p, g, Backend::Interpreter);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let exact = step::<F>(text, p, g, Backend::Jit(Mode::Exact));
    assert_eq!(
        bits(&exact.0),
        bits(&want.0),
        "{text}: p, exact, {}",
        F::NAME
    );
    assert_eq!(
        bits(&exact.1),
        bits(&want.1),
        "{text}: d, exact, {}",
        F::NAME
    );
    let fast = step::<F>(text, p, g, Backend::Jit(Mode::Fast));
    let ulp = if F::NAME == "f32" { 1e-6 } else { 1e-15 };
    for (got, want) in [(&fast.0, &want.0), (&fast.1, &want.1)] {
        for (((a, b), x), y) in got.iter().zip(want).zip(p).zip(g) {
            let scale = 1.0 + x.abs() + y.abs();
            assert!(
                (a - b).abs() <= 4.0 * ulp * scale || (a.is_nan() && b.is_nan()) || a == b,
                "{text}: fast {a} vs {b} in {}",
                F::NAME
            );
        }
    }
    want
}

#[test]
fn f32_rounds_f64_values_and_is_kept_by_the_optimizer() {
    // d = f32(g / 3) - g / 3: the rounding error of g / 3 in f32, which an
    // optimizer that dropped the rounding would turn into 0.
    let text = "R { hyper lr = 0.5; state d = 0; update { d = f32(g / 3) - g / 3; p = p - lr * f32(g / 3); } }";
    let g = [1.0, 2.0, 1e-3, 7.0];
    let (p, d) = agreed::<f64>(text, &[0.0; 4], &g);
    for ((x, gi), di) in p.iter().zip(&g).zip(&d) {
        let third = gi / 3.0;
        assert_eq!(*di, f64::from(third as f32) - third);
        assert!(*di != 0.0, "the rounding of {gi} / 3 is visible");
        assert_eq!(*x, -0.5 * f64::from(third as f32));
    }
    // On f32 elements it is the identity.
    let (_, d) = step::<f32>(text, &[0.0; 4], &g, Backend::Interpreter);
    assert!(d.iter().all(|x| *x == 0.0));
    // Per-step values (computed in f64) are rounded too: 0.1 in f32.
    let text = "S { hyper lr = 0.1; state d = 0; update { d = f32(lr) + 0 * g; p = p - 0 * d; } }";
    let (_, d) = agreed::<f64>(text, &[0.0], &[1.0]);
    assert_eq!(d, vec![f64::from(0.1f32)]);
}

#[test]
fn bf16_rounds_to_nearest_even() {
    // (bf16's largest finite value stays; f32's largest rounds up to
    // infinity.) 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to even (1);
    // 1 + 3 * 2^-8 halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
    let cases = [
        (1.0 + 2f64.powi(-8), 1.0),
        (1.0 + 3.0 * 2f64.powi(-8), 1.0 + 2f64.powi(-6)),
        (1.0 + 2f64.powi(-8) + 2f64.powi(-20), 1.0 + 2f64.powi(-7)),
        (-3.140625, -3.140625),
        (3.3895313892515355e38, 3.3895313892515355e38),
        (f64::from(f32::MAX), f64::INFINITY),
    ];
    let text = "B { hyper lr = 0; state d = 0; update { d = bf16(g); p = p - lr; } }";
    let g: Vec<f64> = cases.iter().map(|c| c.0).collect();
    for (_, d) in [
        agreed::<f64>(text, &[0.0; 6], &g),
        agreed::<f32>(text, &[0.0; 6], &g),
    ] {
        for ((x, want), got) in cases.iter().zip(&d) {
            assert_eq!(got, want, "bf16({x})");
        }
    }
    let (_, d) = agreed::<f32>(text, &[0.0], &[f64::NAN]);
    assert!(d[0].is_nan());
    // f64(x) is x itself.
    let text = "K { hyper lr = 0; state d = 0; update { d = f64(g / 3); p = p - lr * d; } }";
    let (_, d) = agreed::<f64>(text, &[0.0], &[1.0]);
    assert_eq!(d, vec![1.0 / 3.0]);
}

#[test]
fn lerp_is_pytorchs_two_sided_form() {
    let text =
        "L { hyper w = 0.3, lr = 0; state d = 0; update { d = lerp(p, g, w); p = p - lr * d; } }";
    let (a, b) = ([1.0, -2.0, 1e8, 0.1], [3.0, 5.0, -1e-8, 0.7]);
    for w in [0.3f64, 0.7, -0.2, 1.0, 0.5] {
        let text = text.replace("w = 0.3", &format!("w = {w}"));
        let (_, d) = agreed::<f64>(&text, &a, &b);
        for ((x, y), got) in a.iter().zip(&b).zip(&d) {
            let want = if w.abs() < 0.5 {
                w.mul_add(y - x, *x)
            } else {
                (w - 1.0).mul_add(y - x, *y)
            };
            assert_eq!(*got, want, "lerp({x}, {y}, {w})");
        }
        // The end points are exact: w = 1 gives b.
        if w == 1.0 {
            assert_eq!(d, b.to_vec());
        }
    }
}

#[test]
fn precision_operations_reach_the_ptx() {
    let opt = DynOptimizer::parse(
        "P { hyper lr = 0.1; state d = 0; update { d = bf16(g) + f32(g * 3); p = p - lr * lerp(p, d, 0.9); } }",
    )
    .unwrap();
    let rule = opt.rule();
    let key = lensopt::jit::Key::for_step(&[opt.hypers()], &[], Mode::Fast);
    for (precision, needle) in [
        (lensopt_codegen::ptx::Precision::F64, "cvt.rn.f32.f64"),
        (lensopt_codegen::ptx::Precision::F32, "cvt.rn.bf16.f32"),
    ] {
        let text = lensopt::jit::ptx(&rule, &key, precision, "sm_80")
            .unwrap()
            .text;
        assert!(text.contains(needle), "{precision:?}: {needle}");
        assert!(text.contains("cvt.rn.bf16.f32"), "{precision:?}: bf16");
    }
}
