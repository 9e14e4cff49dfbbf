//! The CPU backend: each phase of a schedule becomes a cranelift function.
//!
//! - [`lanes`]: the element types as SIMD lanes (f32x4, f64x2);
//! - [`math`]: the math functions generated code imports, registered by hand;
//! - [`emit`]: element-wise IR nodes to CLIF vector instructions;
//! - [`kernel`]: the element and reduction functions (loops, loads, stores);
//! - [`program`]: a compiled schedule: the native functions and their code;
//! - [`image`]: a program's code as bytes and back (the on-disk cache);
//! - [`execute`]: the safe, parallel execution of a step with a program;
//! - [`circuit`]: boolean circuits (forward and reverse) as bitwise code.

pub mod circuit;
pub mod emit;
pub mod execute;
pub mod image;
pub mod kernel;
pub mod lanes;
pub mod math;
#[cfg(target_arch = "x86_64")]
pub mod pages;
pub mod program;

pub use execute::{Exchange, Shard, StepBuffers, StepPlan};
pub use lanes::JitFloat;
pub use program::{CompileError, Program};
