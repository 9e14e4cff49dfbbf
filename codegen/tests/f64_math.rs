//! The f64 `exp` and `ln` the PTX backend emits (their CPU models, step for
//! step) against the platform's libm: within 2 ulp over wide ranges, and the
//! special values (0, subnormals, infinities, NaN, overflow) right.

use lensopt_codegen::ptx::{exp_f64_model, ln_f64_model};

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
