//! The f64 `exp` and `ln` the PTX backend emits (their CPU models, step for
//! step) against the platform's libm: within 2 ulp over wide ranges, and the
//! special values (0, subnormals, infinities, NaN, overflow) right.

use lensopt_codegen::ptx::{exp_f64_model, ln_f64_model, pow_special_model};

fn ulps(a: f64, b: f64) -> u64 {
    if a == b || (a.is_nan() && b.is_nan()) {
        return 0;
    }
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
}

#[test]
fn exp_agrees_with_libm() {
    let mut worst = 0;
    let mut s = 1u64;
    for i in 0..200_000 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (s >> 11) as f64 / (1u64 << 53) as f64;
        let x = if i % 2 == 0 {
            (u - 0.5) * 60.0
        } else {
            (u - 0.5) * 1400.0
        };
        let (a, b) = (exp_f64_model(x), x.exp());
        if b.is_finite() && b > f64::MIN_POSITIVE {
            worst = worst.max(ulps(a, b));
        }
    }
    assert!(worst <= 2, "worst error {worst} ulp");
    assert_eq!(exp_f64_model(0.0), 1.0);
    assert_eq!(exp_f64_model(f64::INFINITY), f64::INFINITY);
    assert_eq!(exp_f64_model(f64::NEG_INFINITY), 0.0);
    assert_eq!(exp_f64_model(800.0), f64::INFINITY);
    assert_eq!(exp_f64_model(-800.0), 0.0);
    assert!(exp_f64_model(f64::NAN).is_nan());
}

#[test]
fn ln_agrees_with_libm() {
    let mut worst = 0;
    let mut s = 7u64;
    for _ in 0..200_000 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bits = (s >> 1) & 0x7FEF_FFFF_FFFF_FFFF; // positive, finite
        let x = f64::from_bits(bits);
        worst = worst.max(ulps(ln_f64_model(x), x.ln()));
    }
    for x in [
        1.0,
        2.0,
        0.5,
        1e-300,
        5e-324,
        1e300,
        std::f64::consts::E,
        1.0 + 1e-12,
    ] {
        worst = worst.max(ulps(ln_f64_model(x), x.ln()));
    }
    assert!(worst <= 2, "worst error {worst} ulp");
    assert_eq!(ln_f64_model(0.0), f64::NEG_INFINITY);
    assert_eq!(ln_f64_model(f64::INFINITY), f64::INFINITY);
    assert!(ln_f64_model(-1.0).is_nan());
    assert!(ln_f64_model(f64::NAN).is_nan());
}

/// `pow`'s special cases around the PTX core `e^(y ln |x|)`: with libm's
/// core exactly C's `pow` (so the GPU matches the CPU's `powf`) on every
/// pair of special and ordinary values, and with the f64 models' core
/// within a few ulps.
#[test]
fn pow_follows_c_semantics() {
    let values = [
        0.0,
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
        -2.5,
        1e300,
        -1e300,
        1e-300,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        9007199254740993.0,
        -9007199254740993.0,
    ];
    let exact = |a: f64, y: f64| a.powf(y);
    let model = |a: f64, y: f64| exp_f64_model(y * ln_f64_model(a));
    for &x in &values {
        for &y in &values {
            let want = x.powf(y);
            let got = pow_special_model(x, y, exact);
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "pow({x}, {y}): {got} vs C's {want}"
            );
            let approx = pow_special_model(x, y, model);
            if want.is_nan() || approx.is_nan() {
                assert!(
                    want.is_nan() && approx.is_nan(),
                    "pow({x}, {y}): {approx} vs {want}"
                );
            } else if want.is_finite() && want != 0.0 {
                assert!(
                    ((approx - want) / want).abs() < 1e-13,
                    "pow({x}, {y}): {approx} vs {want}"
                );
            } else {
                assert_eq!(approx.to_bits(), want.to_bits(), "pow({x}, {y})");
            }
        }
    }
    // The cases.
    assert_eq!(pow_special_model(0.0, 0.0, model), 1.0);
    assert!((pow_special_model(-2.0, 3.0, model) + 8.0).abs() < 1e-13);
    assert_eq!(pow_special_model(1.0, f64::NAN, model), 1.0);
}
