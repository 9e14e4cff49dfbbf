//! lensopt: optimizers declared in a small DSL, applied to ndarray tensors.
//!
//! Declare an update rule with [`optimizer!`] (checked at compile time) or
//! parse one at run time with `Rule::parse` (the [`ParseRule`] trait);
//! either way you get an
//! [`Optimizer`], whose [`Optimizer::init`] creates the state for a set of
//! parameter tensors and returns a [`Stepper`] that applies steps.
//!
//! ```
//! use lensopt::{optimizer, Optimizer};
//! use ndarray::array;
//!
//! optimizer! {
//!     /// Heavy-ball momentum.
//!     pub Momentum {
//!         hyper lr = 0.1, mu = 0.9;
//!         state b = 0;
//!         update {
//!             b = mu * b + g;
//!             p = p - lr * b;
//!         }
//!     }
//! }
//!
//! let mut w = array![1.0f64, -2.0];
//! let mut opt = Momentum::default().lr(0.5).init(&[&w]).unwrap();
//! let grad = w.clone(); // gradient of |w|^2 / 2
//! opt.step(&mut [&mut w], &[&grad]).unwrap();
//! assert_eq!(w, array![0.5, -1.0]);
//! ```
//!
//! The catalog ([`catalog`]) holds the field's optimizers written in the DSL.
//! [`checkpoint`] saves parameters and optimizer state as safetensors and
//! resumes them bit for bit; [`NonFinite`] says what a step does with NaN or
//! infinite gradients (refuse, by default). Compiled programs are owned by
//! a bounded [`jit::Engine`]; every error is an [`Error`].

extern crate self as lensopt;

pub mod aot;
pub mod case;
pub mod catalog;
pub mod category;
pub mod checkpoint;
pub mod circuit;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod diagram;
pub mod disk_cache;
pub mod dist;
mod error;
mod float;
pub mod jit;
pub mod loss;
mod non_finite;
mod optimizer;
pub mod schedules;
mod stages;
mod stepper;
mod tensor;
pub mod train;

pub use error::Error;
pub use float::Float;
pub use lensopt_codegen::cpu::program::Origin;
pub use lensopt_codegen::cpu::Program;
pub use lensopt_frontend::{Diagnostic, Diagnostics, ParseRule, Placed, PlacedDiagnostics};
pub use lensopt_ir as ir;
pub use lensopt_ir::optimize::{equivalent, Equivalence, Mode};
pub use lensopt_ir::{interp, HyperValue, Rule};
pub use lensopt_macros::{circuit, diagram, optimizer};
pub use non_finite::{device_scan_rule, CheckedGradients, Found, NonFinite};
pub use optimizer::{hyper_from_json, hyper_to_json, DynOptimizer, Group, Optimizer};
pub use stages::Stages;
pub use stepper::{Backend, Inputs, Stepper};
pub use tensor::{TensorMut, TensorRef};

/// Support for the code `optimizer!` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    /// `a >> b` for circuits whose numbers of bits `circuit!` checked at compile time.
    pub fn then_checked(
        a: crate::circuit::Circuit,
        b: crate::circuit::Circuit,
    ) -> crate::circuit::Circuit {
        match a.then(&b) {
            Ok(c) => c,
            // `circuit!` compared `a`'s outputs with `b`'s inputs before expanding.
            Err(e) => unreachable!("circuit! checked this composition: {e}"),
        }
    }

    /// The error for a hyperparameter name or type the struct does not have.
    pub fn bad_hyper(optimizer: &str, rule: &Rule, name: &str, value: HyperValue) -> Error {
        optimizer::hyper_error(optimizer, rule, name, value)
    }
}

/// The README's examples, compiled and run as documentation tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
