//! The categorical structures of gradient-based learning, as types.
//!
//! - [`lens`]: lenses `(get, put)` and their composition;
//! - [`learner`]: learners `(P, I, U, r)` (Backprop as Functor), their
//!   sequential and parallel composition, and the functor `L_{eps,e}` from
//!   parametrised differentiable maps (compiled diagrams) to learners;
//! - [`rdc`]: reverse derivative categories, the trait that compiled
//!   diagrams implement, and the axioms RD.1-RD.7 as checks.
//!
//! Optimizers are lenses on the parameter wire: [`crate::Stepper::view`] is
//! `get`, [`crate::Stepper::step`] is `put`.

pub mod learner;
pub mod lens;
pub mod rdc;
