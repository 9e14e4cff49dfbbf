//! The front end, typed IR and reference interpreter of lensopt.
//!
//! Data flows one way through this crate:
//! DSL tokens or text -> [`parse`] (surface syntax, [`ast`]) -> [`check`]
//! (names, types and rates) -> [`Rule`] (the typed SSA IR of [`rule`]) ->
//! [`interp`] (the reference interpreter, the oracle of every backend).
//!
//! The same front end serves the `optimizer!` macro (at compile time, over
//! `proc_macro2` tokens) and [`Rule::parse`] (at run time, over text), so a
//! rule behaves the same whichever way it was written.

pub mod ast;
pub mod builder;
pub mod builtins;
pub mod check;
pub mod circuit;
pub mod counterexample;
pub mod diag;
pub mod diagram;
pub mod float;
pub mod hyper;
pub mod interp;
pub mod ops;
pub mod optimize;
pub mod parse;
pub mod rule;
pub mod schedule;

pub use diag::{Diagnostic, Diagnostics};
pub use float::Float;
pub use hyper::HyperValue;
pub use rule::{
    BinOp, HyperDecl, InputDecl, Node, Op, Rate, ReduceOp, Rule, Scope, StateDecl, StateKind, Ty,
    UnOp, ValueId,
};
