//! Boolean circuits over Z2 (see [`lensopt_ir::circuit`] for the netlist,
//! its builder and composition, shared with the macro and the code
//! generator): bit-sliced evaluation and reverse derivatives ([`eval`]),
//! compiled bitwise code ([`compiled`]), and Reverse Derivative Ascent ([`rda`]).

pub use lensopt_ir::circuit::*;

pub mod compiled;
pub mod eval;
pub mod rda;
