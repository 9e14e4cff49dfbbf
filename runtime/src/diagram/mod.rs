//! String diagrams over the reals (see [`lensopt_ir::diagram`] for the
//! generators, terms and shape checks, shared with the `diagram!` macro),
//! and their compiled form, [`plan::Model`].

pub use lensopt_ir::diagram::*;

pub mod plan;
