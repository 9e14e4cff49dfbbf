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
}

macro_rules! impl_float {
    ($t:ty, $name:literal) => {
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
        }
    };
}

impl_float!(f32, "f32");
impl_float!(f64, "f64");
