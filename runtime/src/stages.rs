//! Every stage of what lensopt makes of a rule, as text: for snapshot tests
//! of your own optimizers, as the project tests its catalog.
//!
//! The text is stable across runs and machines: the IR is printed in node
//! order, the CLIF is taken as lensopt generates it, before cranelift
//! lowers it for the host's CPU (so AVX2 or AVX-512 on the machine that
//! takes the snapshot changes nothing), and the PTX is for a named target.
//!
//! ```
//! use lensopt::{optimizer, Stages};
//!
//! optimizer! {
//!     pub Momentum {
//!         hyper lr = 0.1, mu = 0.9;
//!         state b = 0;
//!         update { b = mu * b + g; p = p - lr * b; }
//!     }
//! }
//!
//! let stages = Stages::of::<f32>(&Momentum::default()).unwrap();
//! assert!(stages.checked.starts_with("rule Momentum"));
//! assert!(stages.ptx.contains(".target sm_80"));
//! // insta::assert_snapshot!("momentum", stages.text());
//! ```

use crate::error::Error;
use crate::jit::{self, Key};
use crate::{Float, Mode, Optimizer};

/// The stages of one rule under one specialisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Stages {
    /// The checked IR (what the front end makes of the text).
    pub checked: String,
    /// The IR after the e-graph, specialised on the optimizer's
    /// hyperparameters (booleans and zeros compiled in).
    pub optimized: String,
    /// `(kernel, CLIF)` of every CPU kernel, in the element type.
    pub clif: Vec<(String, String)>,
    /// The PTX module for the target.
    pub ptx: String,
}

impl Stages {
    /// The stages of `optimizer` with its hyperparameters, every optional
    /// input present, fast mode, elements of `F`, PTX for sm_80.
    pub fn of<F: Float>(optimizer: &impl Optimizer) -> Result<Self, Error> {
        Self::with::<F>(optimizer, Mode::Fast, "sm_80")
    }

    /// The stages under rewrite class `mode`, with PTX for `target`
    /// (`sm_80` ... `sm_121`).
    pub fn with<F: Float>(
        optimizer: &impl Optimizer,
        mode: Mode,
        target: &str,
    ) -> Result<Self, Error> {
        let rule = optimizer.rule();
        let key = Key::for_step(&[optimizer.hypers()], &vec![true; rule.inputs.len()], mode);
        let schedule = jit::schedule(&rule, &key);
        let optimized = schedule.rule.to_string();
        let ptx = lensopt_codegen::ptx::emit(&schedule, F::PRECISION, target)
            .map_err(|e| Error::Compile(e.to_string()))?
            .text;
        let program = lensopt_codegen::cpu::Program::<F>::compile_with_clif(schedule)
            .map_err(|e| Error::Compile(e.to_string()))?;
        Ok(Stages {
            checked: rule.to_string(),
            optimized,
            clif: program.clif().to_vec(),
            ptx,
        })
    }

    /// Every stage in one text, each under a `;; stage` header.
    pub fn text(&self) -> String {
        let mut out = format!(
            ";; checked IR\n{}\n;; optimized IR\n{}\n",
            self.checked, self.optimized
        );
        for (name, clif) in &self.clif {
            out.push_str(&format!(";; CLIF {name}\n{clif}\n"));
        }
        out.push_str(";; PTX\n");
        out.push_str(&self.ptx);
        out
    }
}
