//! Reverse Derivative Ascent (Wilson and Zanasi): learning the parameter
//! bits of a circuit `f : P × A → B` with
//! `p' = p XOR π_P R[f]((p, x), y XOR f(p, x))`.
//!
//! For one example that is the rule as the paper states it: the parameter
//! bits whose reverse derivative is 1 at the example's error are flipped.
//! A batch needs a rule to combine the examples' requests ([`Combine`]):
//! applying the rule example after example ([`Combine::Online`]), or flipping
//! a bit when most of the examples it influences request it
//! ([`Combine::Majority`]), or counting only the positive examples the
//! circuit misses, with the error `y AND NOT f(p, x)` ([`Combine::OneSided`],
//! the rule of weightless lookup-table networks).

use super::compiled::CompiledCircuit;
use super::eval::{bit, Machine, Rows};
use super::Circuit;
use crate::error::Error;

/// How the parameter changes requested by the examples of a batch combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// One example at a time, in order: the paper's update rule applied per example.
    Online,
    /// Flip a bit when more than half of the examples it influences (those
    /// where `R[f]` at an all-ones error is 1 for it) request the flip: for a
    /// truth table, each row takes the majority label of its examples.
    Majority,
    /// Only missed positives count: the error is `y AND NOT f(p, x)` instead
    /// of `y XOR f(p, x)`, and a bit flips when at least `at_least` examples
    /// of the batch request it (0 counts as 1). For a truth table started at
    /// 0, a row is set once `at_least` positive examples reach it, and a set
    /// row is never cleared: one epoch trains it, the next flips nothing.
    OneSided {
        /// How many requests a flip needs.
        at_least: u32,
    },
}

/// A circuit with its parameter bits, trained by RDA.
pub struct Rda {
    /// The circuit `P × A → B`.
    pub circuit: Circuit,
    /// The parameter bits.
    pub params: Vec<bool>,
    /// The circuit's passes as native code, once [`Rda::compile`] ran.
    compiled: Option<CompiledCircuit>,
}

/// The forward and reverse passes, interpreted or compiled.
enum Passes<'a> {
    Interpreted(&'a Circuit, Machine),
    Compiled(&'a CompiledCircuit),
}

impl Passes<'_> {
    fn forward(&mut self, params: &[bool], x: &[Vec<u64>]) -> Result<Rows, Error> {
        match self {
            Passes::Interpreted(c, m) => m.forward(c, params, x),
            Passes::Compiled(code) => code.forward(params, x),
        }
    }

    fn reverse_params(
        &mut self,
        params: &[bool],
        x: &[Vec<u64>],
        dy: &[Vec<u64>],
    ) -> Result<Rows, Error> {
        match self {
            Passes::Interpreted(c, m) => Ok(m.reverse(c, dy)?.0),
            Passes::Compiled(code) => Ok(code.reverse(params, x, dy)?.0),
        }
    }
}

/// A data set of bit vectors, one `Vec<bool>` per example.
#[derive(Clone, Debug)]
pub struct Bits {
    /// Inputs, one row per example.
    pub x: Vec<Vec<bool>>,
    /// Targets, one row per example.
    pub y: Vec<Vec<bool>>,
}

impl Rda {
    /// A learner for `circuit` with every parameter bit 0.
    pub fn new(circuit: Circuit) -> Self {
        let params = vec![false; circuit.params()];
        Rda {
            circuit,
            params,
            compiled: None,
        }
    }

    /// Compiles the circuit's passes to bitwise code (cranelift) and uses
    /// them from now on; worth it when the circuit will see many examples.
    pub fn compile(&mut self) -> Result<(), Error> {
        self.compiled = Some(CompiledCircuit::new(&self.circuit)?);
        Ok(())
    }

    /// Predictions for each example.
    pub fn predict(&self, x: &[Vec<bool>]) -> Result<Vec<Vec<bool>>, Error> {
        let packed = super::eval::pack(x, self.circuit.inputs());
        let words = packed.first().map_or(1, Vec::len);
        let mut m = passes(&self.circuit, self.compiled.as_ref(), words)?;
        let out = m.forward(&self.params, &packed)?;
        Ok((0..x.len())
            .map(|e| out.iter().map(|row| bit(row, e)).collect())
            .collect())
    }

    /// Fraction of examples whose every output bit is right.
    pub fn accuracy(&self, data: &Bits) -> Result<f64, Error> {
        let pred = self.predict(&data.x)?;
        let right = pred.iter().zip(&data.y).filter(|(p, y)| p == y).count();
        Ok(right as f64 / data.x.len().max(1) as f64)
    }

    /// One pass over `data`, combining updates by `combine`. Returns the number of bits flipped.
    pub fn epoch(&mut self, data: &Bits, combine: Combine) -> Result<usize, Error> {
        let Rda {
            circuit,
            params,
            compiled,
        } = self;
        match combine {
            Combine::Online => {
                // One example per call: one word per wire, buffers made once.
                let mut m = passes(circuit, compiled.as_ref(), 1)?;
                let mut flips = 0;
                for (x, y) in data.x.iter().zip(&data.y) {
                    let (x, y) = (std::slice::from_ref(x), std::slice::from_ref(y));
                    flips += update(circuit, params, &mut m, x, y, combine)?;
                }
                Ok(flips)
            }
            Combine::Majority | Combine::OneSided { .. } => {
                let words = data.x.len().div_ceil(64).max(1);
                let mut m = passes(circuit, compiled.as_ref(), words)?;
                update(circuit, params, &mut m, &data.x, &data.y, combine)
            }
        }
    }
}

/// The passes of `circuit`: compiled when there is code, else interpreted
/// with buffers for `words` words per wire.
fn passes<'a>(
    circuit: &'a Circuit,
    compiled: Option<&'a CompiledCircuit>,
    words: usize,
) -> Result<Passes<'a>, Error> {
    Ok(match compiled {
        Some(code) => Passes::Compiled(code),
        None => Passes::Interpreted(circuit, Machine::new(circuit, words)?),
    })
}

/// The update for a batch: with [`Combine::Majority`], flips bit `i` when
/// more than half of the examples it influences request it; with
/// [`Combine::OneSided`], when enough missed positives request it; with
/// [`Combine::Online`] (single examples), when the example requests it.
fn update(
    c: &Circuit,
    params: &mut [bool],
    m: &mut Passes,
    x: &[Vec<bool>],
    y: &[Vec<bool>],
    combine: Combine,
) -> Result<usize, Error> {
    let xs = super::eval::pack(x, c.inputs());
    let ys = super::eval::pack(y, c.outputs().len());
    let words = xs.first().map_or(1, Vec::len);
    let out = m.forward(params, &xs)?;
    // The error y XOR f(p, x) (one-sided: y AND NOT f(p, x)), on real examples only.
    let one_sided = matches!(combine, Combine::OneSided { .. });
    let valid: Vec<u64> = (0..words)
        .map(|w| {
            let left = x.len().saturating_sub(w * 64);
            if left >= 64 {
                u64::MAX
            } else {
                (1u64 << left) - 1
            }
        })
        .collect();
    let err: Vec<Vec<u64>> = out
        .iter()
        .zip(&ys)
        .map(|(o, t)| {
            o.iter()
                .zip(t)
                .zip(&valid)
                .map(|((o, t), v)| if one_sided { t & !o & v } else { (o ^ t) & v })
                .collect()
        })
        .collect();
    if err.iter().flatten().all(|w| *w == 0) {
        return Ok(0);
    }
    let dparams = m.reverse_params(params, &xs, &err)?;
    // Which examples each bit influences: R[f] at an all-ones error.
    let relevance = if combine == Combine::Majority {
        let ones: Vec<Vec<u64>> = c.outputs().iter().map(|_| valid.clone()).collect();
        Some(m.reverse_params(params, &xs, &ones)?)
    } else {
        None
    };
    let mut flips = 0;
    for (i, (p, d)) in params.iter_mut().zip(&dparams).enumerate() {
        let requests: u64 = d.iter().map(|w| u64::from(w.count_ones())).sum();
        let flip = match (combine, &relevance) {
            (Combine::OneSided { at_least }, _) => requests >= u64::from(at_least.max(1)),
            (_, Some(r)) => {
                let influenced: u64 = r[i].iter().map(|w| u64::from(w.count_ones())).sum();
                2 * requests > influenced
            }
            (_, None) => requests % 2 == 1,
        };
        if flip {
            *p = !*p;
            flips += 1;
        }
    }
    Ok(flips)
}
