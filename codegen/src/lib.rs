//! Code generation backends. Each consumes a [`lensopt_ir::schedule::Schedule`]:
//!
//! - [`cpu`]: native code through a cranelift JIT, SIMD loops, multi-threaded
//!   (feature `jit`, on by default);
//! - [`rust`]: the same kernels as Rust source, for `optimizer!` to compile
//!   into a crate;
//! - [`ptx`]: PTX text for NVIDIA GPUs (validated with `ptxas`);
//! - [`host`]: the host's part of a compiled step (scalars, reduction
//!   partials), shared by the CPU program and the GPU stepper.
//!
//! A backend owns turning phases into machine code and running that code
//! safely; it never changes what a rule means (the interpreter in
//! `lensopt-ir` defines that, and the tests hold every backend to it).

#[cfg(feature = "jit")]
pub mod cpu;
pub mod host;
pub mod ptx;
pub mod rust;
