//! Boolean circuits over Z2 (see [`lensopt_ir::circuit`] for the netlist,
//! its builder and composition, shared with the macro and the code
//! generator): bit-sliced evaluation and reverse derivatives ([`eval`]),
//! compiled bitwise code ([`compiled`]), Reverse Derivative Ascent ([`rda`]),
//! and lookup tables with the classifiers made of them ([`tables`]).

pub use lensopt_ir::circuit::*;

pub mod compiled;
pub mod eval;
pub mod rda;
pub mod tables;
