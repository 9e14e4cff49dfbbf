//! Reverse derivative categories (Cockett et al. 2020) over real vectors.
//!
//! A map `f : A → B` comes with `R[f] : A × B → A`. The axioms, which the
//! tests check for every generator and for random composites:
//! - RD.1 `R[f + g] = R[f] + R[g]`, `R[0] = 0`;
//! - RD.2 `R[f](a, b + b') = R[f](a, b) + R[f](a, b')`, `R[f](a, 0) = 0`;
//! - RD.3 `R[id](a, b) = b`, `R[π0]((a, a'), b) = (b, 0)`;
//! - RD.4 `R[<f, g>](a, (b, c)) = R[f](a, b) + R[g](a, c)`;
//! - RD.5 `R[f ; g](a, c) = R[f](a, R[g](f(a), c))`;
//! - RD.6 `<D[f](a, x), b> = <x, R[f](a, b)>` (in Smooth, D the forward derivative);
//! - RD.7 the second derivative is symmetric.

use crate::diagram::plan::Model;
use crate::diagram::{Diagram, DiagramError};
use ndarray::Array2;

/// A map of real vectors with its reverse derivative.
pub trait ReverseDerivative {
    /// `(dim A, dim B)`.
    fn dims(&self) -> (usize, usize);
    /// `f(a)`.
    fn apply(&mut self, a: &[f64]) -> Vec<f64>;
    /// `R[f](a, b)`.
    fn reverse(&mut self, a: &[f64], b: &[f64]) -> Vec<f64>;
}

/// A compiled diagram as a map in the reverse derivative category: its
/// domain is its parameters followed by its input wires (one example), as
/// for an arrow `P × A → B` of Para; its codomain is its output wires.
pub struct ParaMap {
    model: Model<f64>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
}

impl ParaMap {
    /// Compiles `diagram` (parameters initialised from `seed`).
    pub fn new(diagram: &Diagram, seed: u64) -> Result<Self, DiagramError> {
        let model = Model::new(diagram, seed)?;
        let inputs = model.dom().iter().map(|s| s.iter().product()).collect();
        let outputs = model.cod().iter().map(|s| s.iter().product()).collect();
        Ok(ParaMap {
            model,
            inputs,
            outputs,
        })
    }

    fn load(&mut self, a: &[f64]) -> Vec<Array2<f64>> {
        let np = self.model.num_parameters();
        self.model.set_flat_params(&a[..np]);
        let mut at = np;
        self.inputs
            .iter()
            .map(|&n| {
                let x =
                    Array2::from_shape_vec((1, n), a[at..at + n].to_vec()).expect("one example");
                at += n;
                x
            })
            .collect()
    }
}

impl ReverseDerivative for ParaMap {
    fn dims(&self) -> (usize, usize) {
        (
            self.model.num_parameters() + self.inputs.iter().sum::<usize>(),
            self.outputs.iter().sum(),
        )
    }

    fn apply(&mut self, a: &[f64]) -> Vec<f64> {
        let xs = self.load(a);
        let ys = self
            .model
            .forward(&xs)
            .expect("dimensions checked by the caller");
        ys.iter().flat_map(|y| y.iter().copied()).collect()
    }

    fn reverse(&mut self, a: &[f64], b: &[f64]) -> Vec<f64> {
        self.apply(a);
        let mut at = 0;
        let grads: Vec<Array2<f64>> = self
            .outputs
            .iter()
            .map(|&n| {
                let g =
                    Array2::from_shape_vec((1, n), b[at..at + n].to_vec()).expect("one example");
                at += n;
                g
            })
            .collect();
        let dx = self
            .model
            .backward(&grads)
            .expect("dimensions checked by the caller");
        let mut out = self.model.flat_grads();
        out.extend(dx.iter().flat_map(|d| d.iter().copied()));
        out
    }
}
