//! The element type of every backend: one trait, implemented by f32 and f64.
//!
//! [`Float`] gathers what each layer needs of an element type: the
//! interpreter's arithmetic (`lensopt_ir::Float`), the JIT's vector layout
//! (`lensopt_codegen::cpu::JitFloat`), ndarray's linear algebra for models,
//! and, with the `cuda` feature, what cudarc needs to move it to a device
//! plus its PTX precision. The lower crates keep their narrower traits
//! because they cannot depend on ndarray or cudarc; everything above them,
//! and every user, names this one.

use lensopt_codegen::cpu::JitFloat;
use lensopt_codegen::ptx::Precision;
use ndarray::{LinalgScalar, ScalarOperand};

/// What the GPU path needs of an element type (nothing without `cuda`).
#[cfg(feature = "cuda")]
pub trait DeviceElement: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits {}
#[cfg(feature = "cuda")]
impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> DeviceElement for T {}

/// What the GPU path needs of an element type (nothing without `cuda`).
#[cfg(not(feature = "cuda"))]
pub trait DeviceElement {}
#[cfg(not(feature = "cuda"))]
impl<T> DeviceElement for T {}

/// An element type of lensopt: `f32` or `f64` (plain bytes, `Pod`, so that
/// tensors go between ranks as they are).
pub trait Float:
    JitFloat
    + LinalgScalar
    + ScalarOperand
    + std::ops::AddAssign
    + std::ops::Neg<Output = Self>
    + DeviceElement
    + bytemuck::Pod
{
    /// The precision of PTX kernels for this type.
    const PRECISION: Precision;

    /// True when every element of `xs` is finite (the non-finite scan).
    fn all_finite(xs: &[Self]) -> bool;

    /// `xs *= factor`; true when every result is finite (one pass).
    fn scale_finite(xs: &mut [Self], factor: Self) -> bool;

    /// `xs /= divisor`; true when every result is finite (one pass).
    fn div_finite(xs: &mut [Self], divisor: Self) -> bool;

    /// `acc += part` over their common length; true when every sum is
    /// finite (one pass).
    fn add_finite(acc: &mut [Self], part: &[Self]) -> bool;
}

impl Float for f32 {
    const PRECISION: Precision = Precision::F32;

    fn all_finite(xs: &[Self]) -> bool {
        crate::non_finite::all_finite_f32(xs)
    }

    fn scale_finite(xs: &mut [Self], factor: Self) -> bool {
        crate::non_finite::scale_finite_f32(xs, factor)
    }

    fn div_finite(xs: &mut [Self], divisor: Self) -> bool {
        crate::non_finite::div_finite_f32(xs, divisor)
    }

    fn add_finite(acc: &mut [Self], part: &[Self]) -> bool {
        crate::non_finite::add_finite_f32(acc, part)
    }
}

impl Float for f64 {
    const PRECISION: Precision = Precision::F64;

    fn all_finite(xs: &[Self]) -> bool {
        crate::non_finite::all_finite_f64(xs)
    }

    fn scale_finite(xs: &mut [Self], factor: Self) -> bool {
        crate::non_finite::scale_finite_f64(xs, factor)
    }

    fn div_finite(xs: &mut [Self], divisor: Self) -> bool {
        crate::non_finite::div_finite_f64(xs, divisor)
    }

    fn add_finite(acc: &mut [Self], part: &[Self]) -> bool {
        crate::non_finite::add_finite_f64(acc, part)
    }
}
