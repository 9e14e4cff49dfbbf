//! The PTX backend: the phases of a schedule as PTX text for NVIDIA GPUs.
//!
//! One kernel per phase, all tensors of a step in one launch: the kernel
//! reads a table of tensor descriptors (u64 words: element count, pointer
//! to the tensor's scalar slots, then one pointer per buffer in kernel
//! order) and a block-to-tensor map ([`LaunchMap`]): each block takes one
//! chunk of [`CHUNK`] elements of one tensor and walks it with a
//! block-stride loop, so a launch is as large as the tensors need.
//!
//! - element kernel `element(table, map)`: loads, arithmetic, stores,
//!   16 bytes at a time (`ld.global.v4.f32` / `v2.f64`) when the tensor's
//!   buffers are aligned, element by element for the rest;
//! - reduction kernel `reduceK(table, map, partials)` per pass: each
//!   thread accumulates in f64, warps combine with `shfl.sync.down`, warps
//!   through shared memory, and every block writes one partial per reduction
//!   to `partials[block * count + k]`; the host combines a tensor's
//!   partials in block order, so results are reproducible for a fixed
//!   list of tensor lengths.
//!
//! - circuit kernels (`emit_circuit`): one thread per 64-bit word of examples.
//!
//! Arithmetic uses the IEEE-rounded forms (`add.rn`, `mul.rn`, `div.rn`,
//! `sqrt.rn`, `fma.rn`, so nothing is contracted behind the IR's back) and
//! NaN-propagating `min`/`max` (`.NaN` in f32, a NaN test in f64), as the IR.
//! In f32, `exp`, `ln`, `pow` and `sigmoid` use the hardware's `ex2`/`lg2`
//! approximations; in f64 they are range reduction and `fma` series
//! ([`exp_f64_model`], [`ln_f64_model`] are the same steps on the CPU,
//! checked against libm); `pow` is `e^(y ln |x|)` with C's special cases
//! (negative bases with integer exponents, `pow(x, 0) = pow(1, y) = 1`;
//! [`pow_special_model`]). A module declares the oldest PTX ISA that knows
//! its target ([`isa_version`]); the runtime emits for `sm_80` under ISA
//! 7.0, which the driver compiles forward for any later GPU.
//!
//! The code is split by what it writes:
//!
//! - `text`: the low-level PTX text: the module header, the kernel under
//!   construction (its lines and registers), descriptor loads, addresses;
//! - `math`: the arithmetic of one element: unary and binary IR operations,
//!   including `exp`, `ln`, `pow` and `sigmoid` in f32 and f64 (and the CPU
//!   models of the f64 ones);
//! - `element`: the element-wise nodes of one element, and the element kernel
//!   (vector and scalar loops, stores);
//! - `reduce`: the reduction kernels, down to one partial per block, and the
//!   combine of two partials;
//! - `circuit`: the bit-sliced circuit kernels ([`emit_circuit`]);
//! - `launch`: the block-to-tensor map of a launch ([`LaunchMap`]);
//! - `copy`: the device copy the benchmark measures against ([`copy_kernel`]).

mod circuit;
mod copy;
mod element;
mod launch;
mod math;
mod reduce;
mod text;

pub use circuit::emit_circuit;
pub use copy::copy_kernel;
pub use launch::{LaunchMap, CHUNK, MAX_BLOCKS};
pub use math::{exp_f64_model, ln_f64_model, pow_special_model};
pub use text::isa_version;

/// The target of the modules the runtime loads: sm_80 PTX, which every
/// driver that knows a later GPU compiles forward for it.
pub const DEVICE_TARGET: &str = "sm_80";

use lensopt_ir::schedule::{buffer_count, Schedule};
use lensopt_ir::Rule;
use std::fmt::Write;
use text::{header, Kernel};

/// The element type of the generated kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 elements.
    F32,
    /// f64 elements.
    F64,
}

impl Precision {
    fn ty(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
    }
    fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F64 => 8,
        }
    }
    fn reg(self) -> &'static str {
        match self {
            Precision::F32 => "%f",
            Precision::F64 => "%fd",
        }
    }
    fn literal(self, x: f64) -> String {
        match self {
            Precision::F32 => format!("0f{:08X}", (x as f32).to_bits()),
            Precision::F64 => format!("0d{:016X}", x.to_bits()),
        }
    }
}

/// Why a rule has no PTX form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxError(pub String);

impl std::fmt::Display for PtxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PtxError {}

/// Threads per block of every kernel (a multiple of the warp size).
pub const BLOCK: usize = 256;

/// Number of u64 words of one tensor descriptor.
pub fn descriptor_words(rule: &Rule) -> usize {
    2 + buffer_count(rule)
}

/// A PTX module: its text and the names of its kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct PtxModule {
    /// The PTX text.
    pub text: String,
    /// `element`, then `reduce0`, `reduce1`, ...
    pub kernels: Vec<String>,
}

/// Emits the PTX of every phase of `schedule` for `target` (e.g. `sm_80`).
pub fn emit(
    schedule: &Schedule,
    precision: Precision,
    target: &str,
) -> Result<PtxModule, PtxError> {
    schedule.check_budget().map_err(PtxError)?;
    let mut text = String::new();
    let _ = writeln!(text, "// lensopt: rule {}", schedule.rule.name);
    text.push_str(&header(target)?);
    let mut kernels = Vec::new();
    for (k, pass) in schedule.passes.iter().enumerate() {
        let name = format!("reduce{k}");
        text.push_str(&Kernel::new(schedule, precision).reduction(&name, pass)?);
        kernels.push(name);
    }
    text.push_str(&Kernel::new(schedule, precision).element()?);
    kernels.push("element".to_string());
    Ok(PtxModule { text, kernels })
}
