//! Element types as seen by the code generator: scalar, vector and mask types.

use cranelift_codegen::ir::{types, Type};
use lensopt_ir::Float;

/// An element type the JIT can compile for. On x86-64 cranelift has 128-bit
/// vectors only, so f32 runs four lanes and f64 two.
pub trait JitFloat: Float {
    /// The scalar type.
    const SCALAR: Type;
    /// The vector type.
    const VECTOR: Type;
    /// The comparison-mask type of the vector (same lane count, integer lanes).
    const MASK: Type;
    /// Lanes per vector.
    const LANES: usize;
    /// Bytes per element.
    const BYTES: usize;
}

impl JitFloat for f32 {
    const SCALAR: Type = types::F32;
    const VECTOR: Type = types::F32X4;
    const MASK: Type = types::I32X4;
    const LANES: usize = 4;
    const BYTES: usize = 4;
}

impl JitFloat for f64 {
    const SCALAR: Type = types::F64;
    const VECTOR: Type = types::F64X2;
    const MASK: Type = types::I64X2;
    const LANES: usize = 2;
    const BYTES: usize = 8;
}
