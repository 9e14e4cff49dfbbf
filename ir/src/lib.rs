//! The typed IR of lensopt and everything that works on it without knowing
//! how it was written: the [`Rule`] (the typed SSA IR of [`rule`]), the
//! operation table ([`ops`]), a programmatic [`builder`], the reference
//! interpreter ([`interp`], the oracle of every backend), the e-graph
//! optimizer ([`optimize`]) and the scheduling into phases ([`schedule`]);
//! string diagrams and boolean circuits as terms.
//!
//! Rules come from the front end (`lensopt_frontend`: text or
//! `optimizer!` tokens, parsed and checked) or from [`builder::RuleBuilder`];
//! this crate depends on neither syn nor proc-macro2.

pub mod builder;
pub mod circuit;
pub mod counterexample;
pub mod diagram;
pub mod elementary;
pub mod encoding;
pub mod float;
pub mod fusion;
pub mod gemm;
pub mod hyper;
pub mod interp;
pub mod kept_arrays;
pub mod linalg;
pub mod matrix;
pub mod ops;
pub mod optimize;
pub mod rule;
pub mod schedule;

pub use float::Float;
pub use hyper::HyperValue;
pub use rule::{
    Axis, BinOp, Dim, Extents, HyperDecl, InputDecl, Linalg, MatFn, Node, Op, Rate, ReduceOp, Rule,
    Scope, ShapeOp, StateDecl, StateKind, Ty, UnOp, ValueId,
};
