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
    /// `e^a`: lensopt's own ([`crate::elementary`]), the same in every backend.
    fn exp(self) -> Self;
    /// `e^a` with fused multiply-adds ([`crate::elementary::exp_fma_f64`]),
    /// the same in every backend.
    fn exp_fma(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// `a^b`: lensopt's own ([`crate::elementary::pow_f64`]), C's `pow`
    /// but for the square root at `b = 0.5`, the same in every backend.
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
    /// `c = a @ b` for `a` (m × k) and `b` (k × n) given with their
    /// (row, column) strides, `c` (m × n) row-major (every element written,
    /// none read), accumulated in this type in the GEMM kernel's order. Panics when an operand's slice does
    /// not hold its shape (callers size them).
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: (&[Self], (usize, usize)),
        b: (&[Self], (usize, usize)),
        c: &mut [Self],
    );
    /// [`Float::gemm`] of operands whose values are all bfloat16: the
    /// products are exact, and f32 runs them on the bfloat16 kernel
    /// ([`crate::gemm`]); with `symmetric`, the caller states that the
    /// result is symmetric, and f32 computes half of it.
    fn gemm_bf16(
        m: usize,
        k: usize,
        n: usize,
        a: (&[Self], (usize, usize)),
        b: (&[Self], (usize, usize)),
        c: &mut [Self],
        symmetric: bool,
    ) {
        let _ = symmetric;
        Self::gemm(m, k, n, a, b, c);
    }
    /// [`Float::gemm`] of a product the caller states to be symmetric
    /// (`x xᵀ`, `S S` of a symmetric `S`): f32 computes half of it
    /// ([`crate::gemm::gemm_symmetric_f32`]).
    fn gemm_symmetric(
        n: usize,
        k: usize,
        a: (&[Self], (usize, usize)),
        b: (&[Self], (usize, usize)),
        c: &mut [Self],
    ) {
        Self::gemm(n, k, n, a, b, c);
    }
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
    f32::from_bits(bf16_bits(x) << 16)
}

/// The bits of [`bf16_of_f32`]`(x)` as a bfloat16 (the low 16 bits of the
/// result). Written without an early return, so that loops over it
/// vectorize.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    let quieted = (bits | 0x0040_0000) >> 16;
    if x.is_nan() {
        quieted
    } else {
        rounded
    }
}

macro_rules! impl_float {
    ($t:ty, $name:literal, $gemm:path, $exp:path, $exp_fma:path, $pow:path $(, $extra:item)*) => {
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
                $exp(self)
            }
            #[inline]
            fn exp_fma(self) -> Self {
                $exp_fma(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn powf(self, b: Self) -> Self {
                $pow(self, b)
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
            fn gemm(
                m: usize,
                k: usize,
                n: usize,
                (a, (rsa, csa)): (&[Self], (usize, usize)),
                (b, (rsb, csb)): (&[Self], (usize, usize)),
                c: &mut [Self],
            ) {
                let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
                    (rows - 1)
                        .checked_mul(rs)
                        .zip((cols - 1).checked_mul(cs))
                        .and_then(|(x, y)| x.checked_add(y))
                };
                assert!(c.len() == m * n, "gemm: the output does not hold {m} × {n}");
                if m == 0 || n == 0 {
                    return;
                }
                if k == 0 {
                    c.fill(Self::default());
                    return;
                }
                assert!(
                    last(m, k, rsa, csa).is_some_and(|i| i < a.len())
                        && last(k, n, rsb, csb).is_some_and(|i| i < b.len())
                        && [rsa, csa, rsb, csb]
                            .iter()
                            .all(|&s| s <= isize::MAX as usize),
                    "gemm: an operand does not hold its {m} × {k} × {n} shape"
                );
                // SAFETY: the assertions make every index the kernel forms,
                // `i * rs + j * cs` for `i < rows`, `j < cols`, at most the
                // last one checked, which lies inside its slice (and the
                // strides fit isize); `c` holds m × n row-major values and is
                // a unique borrow, disjoint from `a` and `b`.
                unsafe {
                    $gemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        rsa as isize,
                        csa as isize,
                        b.as_ptr(),
                        rsb as isize,
                        csb as isize,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
            }
            $($extra)*
        }
    };
}

impl_float!(
    f32,
    "f32",
    matrixmultiply::sgemm,
    crate::elementary::exp_f32,
    crate::elementary::exp_fma_f32,
    crate::elementary::pow_f32,
    fn gemm_bf16(
        m: usize,
        k: usize,
        n: usize,
        a: (&[f32], (usize, usize)),
        b: (&[f32], (usize, usize)),
        c: &mut [f32],
        symmetric: bool,
    ) {
        crate::gemm::gemm_bf16(m, k, n, a, b, c, symmetric);
    },
    fn gemm_symmetric(
        n: usize,
        k: usize,
        a: (&[f32], (usize, usize)),
        b: (&[f32], (usize, usize)),
        c: &mut [f32],
    ) {
        crate::gemm::gemm_symmetric_f32(n, k, a, b, c);
    }
);
impl_float!(
    f64,
    "f64",
    matrixmultiply::dgemm,
    crate::elementary::exp_f64,
    crate::elementary::exp_fma_f64,
    crate::elementary::pow_f64
);
