//! The element types rules run on (f32 and f64), as one trait.
//!
//! Element-wise code is evaluated in the element type; per-step scalars and
//! reductions are evaluated in f64 and rounded once where they meet elements.

use std::fmt::{Debug, Display};

/// An element type of parameter tensors.
pub trait Float: Copy + Debug + Display + Default + PartialOrd + Send + Sync + 'static {
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Rounds an f64 to this type.
    fn from_f64(x: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
    /// `a + b`
    fn add(self, b: Self) -> Self;
    /// `a - b`
    fn sub(self, b: Self) -> Self;
    /// `a * b`
    fn mul(self, b: Self) -> Self;
    /// `a / b`
    fn div(self, b: Self) -> Self;
    /// `-a`
    fn neg(self) -> Self;
    /// Correctly rounded square root.
    fn sqrt(self) -> Self;
    /// `|a|`
    fn abs(self) -> Self;
    /// `e^a`
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// `a^b`
    fn powf(self, b: Self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// `a * b + c` with one rounding.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// True for NaN.
    fn is_nan(self) -> bool;
    /// True when the sign bit is set.
    fn is_sign_negative(self) -> bool;
    /// Cosine (radians), the platform's libm in this type.
    fn cos(self) -> Self;
    /// `c = a @ b` for row-major `a` (m × k), `b` (k × n), `c` (m × n),
    /// accumulated in this type in the GEMM kernel's order. Panics when a
    /// slice's length does not match its shape (callers size them).
    fn gemm(m: usize, k: usize, n: usize, a: &[Self], b: &[Self], c: &mut [Self]);
    /// Rounded to the nearest f32 (ties to even), in this type.
    fn round_f32(self) -> Self {
        Self::from_f64(f64::from(self.to_f64() as f32))
    }
    /// Rounded to f32, then to the nearest bfloat16 (ties to even), in this type.
    fn round_bf16(self) -> Self {
        Self::from_f64(f64::from(bf16_of_f32(self.to_f64() as f32)))
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32: the top
/// 16 bits of the f32, rounded on the lower 16. NaN stays NaN (quieted).
pub fn bf16_of_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | 0x0040_0000) & 0xFFFF_0000);
    }
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    f32::from_bits(rounded)
}

macro_rules! impl_float {
    ($t:ty, $name:literal, $gemm:path) => {
        impl Float for $t {
            const NAME: &'static str = $name;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            #[inline]
            fn add(self, b: Self) -> Self {
                self + b
            }
            #[inline]
            fn sub(self, b: Self) -> Self {
                self - b
            }
            #[inline]
            fn mul(self, b: Self) -> Self {
                self * b
            }
            #[inline]
            fn div(self, b: Self) -> Self {
                self / b
            }
            #[inline]
            fn neg(self) -> Self {
                -self
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn powf(self, b: Self) -> Self {
                <$t>::powf(self, b)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline]
            fn mul_add(self, b: Self, c: Self) -> Self {
                <$t>::mul_add(self, b, c)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline]
            fn is_sign_negative(self) -> bool {
                <$t>::is_sign_negative(self)
            }
            fn gemm(m: usize, k: usize, n: usize, a: &[Self], b: &[Self], c: &mut [Self]) {
                assert!(
                    a.len() == m * k && b.len() == k * n && c.len() == m * n,
                    "gemm: buffer lengths do not match {m} × {k} × {n}"
                );
                if m == 0 || n == 0 {
                    return;
                }
                // SAFETY: the assertion above makes `a` hold m × k, `b` k × n
                // and `c` m × n values, row-major with the strides passed
                // (row stride = columns, column stride = 1), so every access
                // the kernel makes lies inside the three slices; `c` is a
                // unique borrow, disjoint from `a` and `b`. With k = 0 the
                // kernel writes beta · c = 0 without reading `a` or `b`.
                unsafe {
                    $gemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        k as isize,
                        1,
                        b.as_ptr(),
                        n as isize,
                        1,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
            }
        }
    };
}

impl_float!(f32, "f32", matrixmultiply::sgemm);
impl_float!(f64, "f64", matrixmultiply::dgemm);
