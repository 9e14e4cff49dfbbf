//! lensopt's own `exp` and `pow`: the ones every backend computes (the interpreter,
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
//!
//! `exp_fma` (fast mode's `exp`, see `UnOp::ExpFma`) takes the same steps
//! with a fused multiply-add wherever a product feeds a sum: the rounding
//! to an integer, both parts of the reduction and every Horner step. That
//! is 22 vector operations instead of 32 where the CPU fuses (the kernels'
//! AVX2 and AVX-512 versions, cranelift on such CPUs) and is correctly
//! rounded IEEE `fma` everywhere else (a library call), so the bits are
//! still the same on every CPU. It is at least as accurate: f64 within 1
//! ulp of libm, f32 within 1.5 ulp of the exact value (0.89 the worst
//! measured), with the same special values.

/// The numbers of one width's `exp`: the steps in [`exp_f64`] and
/// [`exp_f32`] with these constants, in this order, give the same bits, so
/// a code generator that emits `exp` inline (the JIT) reads them from here.
/// Every value is exact in the width it is used in, or rounded to it once
/// (`as f32`).
#[derive(Clone, Copy, Debug)]
pub struct ExpSteps {
    /// Arguments are clamped to `[low, high]` first: beyond, the result is
    /// infinite or zero either way, and within, both halves of `2^k` stay
    /// normal.
    pub low: f64,
    /// See `low`.
    pub high: f64,
    /// `log2 e`.
    pub log2e: f64,
    /// `1.5 * 2^m` for `m` mantissa bits: adding it rounds a value to the
    /// nearest integer (ties to even) and leaves that integer in the low
    /// bits.
    pub shifter: f64,
    /// `ln 2`'s high part, with few enough significant bits that `k *
    /// ln2_hi` is exact for every `k` that occurs.
    pub ln2_hi: f64,
    /// `ln 2 - ln2_hi`.
    pub ln2_lo: f64,
    /// The Taylor terms `1/n!`, `n = 0, 1, ...`, summed by Horner's rule
    /// from the last.
    pub taylor: &'static [f64],
    /// The exponent bias (127 or 1023).
    pub bias: u32,
    /// The mantissa bits (23 or 52).
    pub mantissa_bits: u32,
}

/// `1/n!` for n = 0..=13.
const TAYLOR: [f64; 14] = [
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

/// f64: fourteen Taylor terms on `|r| <= ln 2 / 2` (the first left out is
/// below 2^-57 relative); `ln2_hi` has 32 significant bits.
pub const EXP_F64: ExpSteps = ExpSteps {
    low: -760.0,
    high: 720.0,
    log2e: std::f64::consts::LOG2_E,
    shifter: 6_755_399_441_055_744.0,
    ln2_hi: f64::from_bits(0x3fe6_2e42_fee0_0000),
    ln2_lo: f64::from_bits(0x3dea_39ef_3579_3c76),
    taylor: &TAYLOR,
    bias: 1023,
    mantissa_bits: 52,
};

/// f32: eight Taylor terms (the first left out is below 2^-27 relative);
/// `ln2_hi` has 16 significant bits.
pub const EXP_F32: ExpSteps = ExpSteps {
    low: -120.0,
    high: 100.0,
    log2e: std::f64::consts::LOG2_E,
    shifter: 12_582_912.0,
    ln2_hi: 0.693_359_375,
    ln2_lo: std::f64::consts::LN_2 - 0.693_359_375,
    taylor: TAYLOR.split_at(8).0,
    bias: 127,
    mantissa_bits: 23,
};

/// The steps of [`ExpSteps`] in one float type.
macro_rules! exp_in {
    ($name:ident, $fused:ident, $scale:ident, $t:ty, $steps:expr) => {
        #[doc = concat!("`e^x` for ", stringify!($t), ", as every backend computes it (see the module docs).")]
        #[inline(always)]
        pub fn $name(x: $t) -> $t {
            const S: ExpSteps = $steps;
            let shifter = S.shifter as $t;
            let c = x.clamp(S.low as $t, S.high as $t);
            let k = (c * S.log2e as $t + shifter) - shifter;
            let r = (c - k * S.ln2_hi as $t) - k * S.ln2_lo as $t;
            let last = S.taylor.len() - 1;
            let mut p = S.taylor[last] as $t;
            let mut n = last;
            while n > 0 {
                n -= 1;
                p = p * r + S.taylor[n] as $t;
            }
            $scale(p, k)
        }

        #[doc = concat!("`e^x` for ", stringify!($t), " with fused multiply-adds: fast mode's `exp` (see the module docs).")]
        #[inline(always)]
        pub fn $fused(x: $t) -> $t {
            const S: ExpSteps = $steps;
            let shifter = S.shifter as $t;
            let c = x.clamp(S.low as $t, S.high as $t);
            let k = c.mul_add(S.log2e as $t, shifter) - shifter;
            let r = k.mul_add(-S.ln2_hi as $t, c);
            let r = k.mul_add(-S.ln2_lo as $t, r);
            let last = S.taylor.len() - 1;
            let mut p = S.taylor[last] as $t;
            let mut n = last;
            while n > 0 {
                n -= 1;
                p = p.mul_add(r, S.taylor[n] as $t);
            }
            $scale(p, k)
        }

        /// `p * 2^k` rounded once, for an integer `k` of the clamped range:
        /// `2^k = 2^rest * 2^half`, each within the normal exponents, so
        /// only the second product can round (or overflow, or underflow).
        #[inline(always)]
        fn $scale(p: $t, k: $t) -> $t {
            const S: ExpSteps = $steps;
            let (shifter, bias) = (S.shifter as $t, S.bias);
            let two_to = |t: $t| <$t>::from_bits(t.to_bits().wrapping_add(bias.into()) << S.mantissa_bits);
            // `k * 0.5` is exact, so a fused multiply-add gives the same bits.
            let half = k * 0.5 + shifter;
            let rest = (k - (half - shifter)) + shifter;
            p * two_to(rest) * two_to(half)
        }
    };
}

exp_in!(exp_f64, exp_fma_f64, scale_f64, f64, EXP_F64);
exp_in!(exp_f32, exp_fma_f32, scale_f32, f32, EXP_F32);

/// lensopt's `pow` in one float type.
macro_rules! pow_in {
    ($pow:ident, $half:ident, $t:ty) => {
        #[doc = concat!("`x^y` for ", stringify!($t), ", as every backend computes it: C's `pow`, except that")]
        /// an exponent of exactly 0.5 gives [`half_power_f64`]'s correctly
        /// rounded square root, which kernels compute with vector square
        /// roots instead of one library call per element (as PyTorch's `pow`
        /// does). Wherever libm's `pow` is correctly rounded the two agree.
        #[inline(always)]
        pub fn $pow(x: $t, y: $t) -> $t {
            if y == 0.5 {
                $half(x)
            } else {
                x.powf(y)
            }
        }

        #[doc = concat!("`x^0.5` for ", stringify!($t), " with C's special cases: the correctly rounded")]
        /// square root, except `(-0)^0.5 = +0` and `(-inf)^0.5 = +inf`.
        /// Branch-free, so that loops over it vectorize.
        #[inline(always)]
        pub fn $half(x: $t) -> $t {
            // -0 + 0 is +0; every other value is unchanged by the sum.
            let root = (x + 0.0).sqrt();
            if x == <$t>::NEG_INFINITY {
                <$t>::INFINITY
            } else {
                root
            }
        }
    };
}

pow_in!(pow_f64, half_power_f64, f64);
pow_in!(pow_f32, half_power_f32, f32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow_is_libm_except_for_the_square_root() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.25,
            2.0,
            -2.0,
            3.5,
            1e-300,
            f64::MIN_POSITIVE / 3.0,
            1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        for &x in &values {
            let half = pow_f64(x, 0.5);
            let libm = x.powf(0.5);
            assert_eq!(half.is_nan(), libm.is_nan(), "{x}^0.5");
            if !libm.is_nan() {
                assert_eq!(half.to_bits(), libm.to_bits(), "{x}^0.5");
                let single = pow_f32(x as f32, 0.5);
                assert_eq!(single.to_bits(), (x as f32).powf(0.5).to_bits(), "{x}^0.5");
            }
            for &y in &[0.0, 1.0, 2.0, -0.5, 1.5, 3.0, f64::INFINITY, f64::NAN] {
                let (ours, libm) = (pow_f64(x, y), x.powf(y));
                assert!(
                    ours.to_bits() == libm.to_bits() || ours.is_nan() && libm.is_nan(),
                    "{x}^{y}"
                );
            }
        }
        // Exactly the correctly rounded square root, for every f32 of a span.
        for bits in (0x3f00_0000u32..0x4100_0000).step_by(97) {
            let x = f32::from_bits(bits);
            assert_eq!(pow_f32(x, 0.5), x.sqrt());
        }
    }

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
        f64_within_one_ulp_of_libm("exp_f64", exp_f64);
    }

    #[test]
    fn fused_f64_is_within_one_ulp_of_libm() {
        f64_within_one_ulp_of_libm("exp_fma_f64", exp_fma_f64);
    }

    fn f64_within_one_ulp_of_libm(name: &str, exp: fn(f64) -> f64) {
        let mut worst: f64 = 0.0;
        for x in arguments() {
            let (ours, libm) = (exp(x), x.exp());
            if libm.is_infinite() || libm == 0.0 {
                assert_eq!(ours, libm, "{name}({x:e})");
                continue;
            }
            // libm is itself within 1 ulp; ours within 1 ulp of the truth.
            worst = worst.max(ulps(ours, libm));
        }
        eprintln!("{name}: worst {worst:.3} ulp from libm");
        assert!(worst <= 1.5, "{name}: worst {worst} ulp");
    }

    #[test]
    fn f32_is_within_one_and_a_half_ulp() {
        f32_within_one_and_a_half_ulp("exp_f32", exp_f32);
    }

    #[test]
    fn fused_f32_is_within_one_and_a_half_ulp() {
        f32_within_one_and_a_half_ulp("exp_fma_f32", exp_fma_f32);
    }

    fn f32_within_one_and_a_half_ulp(name: &str, exp: fn(f32) -> f32) {
        let mut worst: f64 = 0.0;
        for x in arguments().map(|x| (x / 7.0) as f32) {
            let ours = exp(x);
            let exact = f64::from(x).exp();
            let nearest = exact as f32;
            if nearest.is_infinite() || nearest == 0.0 {
                assert_eq!(ours, nearest, "exp({x:e})");
                continue;
            }
            let spacing = f64::from(f32::from_bits(nearest.to_bits() + 1) - nearest);
            worst = worst.max((f64::from(ours) - exact).abs() / spacing);
        }
        eprintln!("{name}: worst {worst:.3} ulp");
        assert!(worst < 1.5, "{name}: worst {worst} ulp");
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
            for (name, exp) in [("exp", exp_f64 as fn(f64) -> f64), ("exp_fma", exp_fma_f64)] {
                assert!(
                    ulps(exp(x), e) <= 1.0,
                    "{name}({x}) = {:e}, not {e:e}",
                    exp(x)
                );
            }
        }
        assert!(exp_f64(f64::NAN).is_nan());
        assert!(exp_fma_f64(f64::NAN).is_nan());
        for exp in [exp_f32 as fn(f32) -> f32, exp_fma_f32] {
            assert!(exp(f32::NAN).is_nan());
            assert_eq!(exp(f32::INFINITY), f32::INFINITY);
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp(89.0), f32::INFINITY);
            assert_eq!(exp(-104.0), 0.0);
            assert_eq!(exp(0.0), 1.0);
            assert_eq!(exp(1.0), std::f32::consts::E);
            assert_eq!(exp(88.7), f64::from(88.7f32).exp() as f32);
            // The subnormal range is rounded once.
            assert_eq!(exp(-100.0), (-100.0f64).exp() as f32);
        }
    }
}
