//! Lookup tables as circuits, and classifiers made of them.
//!
//! A table over `k` input bits is `XOR_m (p_m AND minterm_m(x))`: one
//! parameter bit per row, and the row is the number whose bit `i` is input
//! `i`. Its reverse derivative with respect to `p_m` is `minterm_m(x)`, so
//! RDA flips exactly the rows its examples reach. [`Discriminators`] holds
//! one bank of tables per class over the same random tuples of input bits,
//! trained with [`Combine::OneSided`]: a class's tables learn which
//! patterns its examples show, and an example goes to the class whose tables
//! recognise it most often (a weightless, or RAM, network).

use super::rda::{Bits, Combine, Rda};
use super::{Circuit, CircuitBuilder};
use crate::diagram::plan::SplitMix;
use crate::error::{mismatch, Error};

/// The largest tuple a table may read: a table has `2^tuple` rows.
pub const MAX_TUPLE: usize = 16;

/// The most table rows (parameter bits) one bank may hold; a bank costs
/// about four gates per row.
pub const MAX_ROWS: usize = 1 << 20;

/// A truth table over `inputs` (wires of `b`, at most [`MAX_TUPLE`]):
/// parameter `first + m` is row `m`, where `first` is the number of
/// parameters `b` had before. The minterms are shared as a tree, walked depth
/// first so that each row's gates follow the minterm they read: about
/// `2^(k+1)` AND gates for the minterms and two gates per row. Returns the
/// output wire.
pub fn truth_table(b: &mut CircuitBuilder, inputs: &[usize]) -> Result<usize, Error> {
    if inputs.len() > MAX_TUPLE {
        return Err(mismatch(format!(
            "a table reads at most {MAX_TUPLE} bits, not {}",
            inputs.len()
        )));
    }
    let literals: Vec<(usize, usize)> = inputs.iter().map(|&x| (b.not(x), x)).collect();
    let mut out = None;
    table_rows(b, &literals, None, &mut out);
    Ok(out.unwrap_or_else(|| b.constant(false)))
}

/// The rows under `term`, which fixes the inputs after `literals`, in
/// increasing row order: the last input is split first, the first last.
fn table_rows(
    b: &mut CircuitBuilder,
    literals: &[(usize, usize)],
    term: Option<usize>,
    out: &mut Option<usize>,
) {
    match literals.split_last() {
        None => {
            let p = b.param();
            let gated = match term {
                None => p,
                Some(t) => b.and(p, t),
            };
            *out = Some(match *out {
                None => gated,
                Some(o) => b.xor(o, gated),
            });
        }
        Some((&(neg, pos), rest)) => {
            for literal in [neg, pos] {
                let t = match term {
                    None => literal,
                    Some(t) => b.and(t, literal),
                };
                table_rows(b, rest, Some(t), out);
            }
        }
    }
}

/// A bank of `tables` tables over `inputs` bits, each reading `tuple`
/// distinct input bits drawn at random (`seed`): one output per table.
/// Returns the circuit and each table's input bits.
pub fn tuple_tables(
    inputs: usize,
    tables: usize,
    tuple: usize,
    seed: u64,
) -> Result<(Circuit, Vec<Vec<usize>>), Error> {
    if tuple == 0 || tuple > inputs.min(MAX_TUPLE) {
        return Err(mismatch(format!(
            "a tuple reads 1 to {} distinct input bits of the {inputs}, not {tuple}",
            inputs.min(MAX_TUPLE)
        )));
    }
    if tables == 0 || tables.saturating_mul(1 << tuple) > MAX_ROWS {
        return Err(mismatch(format!(
            "a bank holds 1 to {MAX_ROWS} rows; {tables} tables of {tuple} bits have {}",
            tables.saturating_mul(1 << tuple)
        )));
    }
    let mut rng = SplitMix(seed);
    let mut b = CircuitBuilder::new();
    let x: Vec<usize> = (0..inputs).map(|_| b.input()).collect();
    let mut tuples = Vec::with_capacity(tables);
    let mut outs = Vec::with_capacity(tables);
    for _ in 0..tables {
        let mut pick = rng.permutation(inputs);
        pick.truncate(tuple);
        let wires: Vec<usize> = pick.iter().map(|&i| x[i]).collect();
        outs.push(truth_table(&mut b, &wires)?);
        tuples.push(pick);
    }
    let circuit = b.finish(outs).map_err(|e| mismatch(e.to_string()))?;
    Ok((circuit, tuples))
}

/// One bank of tables per class, over shared tuples, trained by one-sided
/// RDA; the predicted class is the one with the most tables set at the
/// example's rows (the lowest class on a tie).
pub struct Discriminators {
    /// The bank's circuit (with its passes compiled once [`Self::compile`]
    /// ran), carrying whichever class's parameters are being used.
    bank: Rda,
    /// Each class's parameter bits.
    classes: Vec<Vec<bool>>,
    tuples: Vec<Vec<usize>>,
}

impl Discriminators {
    /// `classes` banks of `tables` tables over random `tuple`-bit tuples of
    /// `inputs` input bits, every row 0.
    pub fn new(
        inputs: usize,
        classes: usize,
        tables: usize,
        tuple: usize,
        seed: u64,
    ) -> Result<Self, Error> {
        if classes == 0 {
            return Err(mismatch("a classifier needs at least one class"));
        }
        let (circuit, tuples) = tuple_tables(inputs, tables, tuple, seed)?;
        let rows = circuit.params();
        Ok(Discriminators {
            bank: Rda::new(circuit),
            classes: vec![vec![false; rows]; classes],
            tuples,
        })
    }

    /// Compiles the bank's passes (one compilation serves every class).
    pub fn compile(&mut self) -> Result<(), Error> {
        self.bank.compile()
    }

    /// The bank's circuit.
    pub fn circuit(&self) -> &Circuit {
        &self.bank.circuit
    }

    /// The input bits each table reads.
    pub fn tuples(&self) -> &[Vec<usize>] {
        &self.tuples
    }

    /// Class `c`'s parameter bits (one per table row).
    pub fn params(&self, c: usize) -> Option<&[bool]> {
        self.classes.get(c).map(Vec::as_slice)
    }

    /// Runs `f` on the bank carrying class `c`'s parameters.
    fn with_class<T>(&mut self, c: usize, f: impl FnOnce(&mut Rda) -> T) -> T {
        std::mem::swap(&mut self.bank.params, &mut self.classes[c]);
        let out = f(&mut self.bank);
        std::mem::swap(&mut self.bank.params, &mut self.classes[c]);
        out
    }

    /// One epoch of [`Combine::OneSided`] per class: class `c`'s tables see
    /// every example with target 1 on each output when its label is `c`
    /// and 0 otherwise. The error `y AND NOT f` is 0 on the other classes'
    /// examples, so only class `c`'s are passed. Returns the bits flipped.
    pub fn train(
        &mut self,
        x: &[Vec<bool>],
        labels: &[usize],
        at_least: u32,
    ) -> Result<usize, Error> {
        self.check(x)?;
        if labels.len() != x.len() {
            return Err(mismatch(format!(
                "{} examples but {} labels",
                x.len(),
                labels.len()
            )));
        }
        if let Some(bad) = labels.iter().find(|&&l| l >= self.classes.len()) {
            return Err(mismatch(format!(
                "label {bad} is not one of the {} classes",
                self.classes.len()
            )));
        }
        let outputs = self.tuples.len();
        let mut flips = 0;
        for c in 0..self.classes.len() {
            let mine: Vec<Vec<bool>> = x
                .iter()
                .zip(labels)
                .filter(|(_, &l)| l == c)
                .map(|(row, _)| row.clone())
                .collect();
            if mine.is_empty() {
                continue;
            }
            let data = Bits {
                y: vec![vec![true; outputs]; mine.len()],
                x: mine,
            };
            flips +=
                self.with_class(c, |bank| bank.epoch(&data, Combine::OneSided { at_least }))?;
        }
        Ok(flips)
    }

    fn check(&self, x: &[Vec<bool>]) -> Result<(), Error> {
        let inputs = self.bank.circuit.inputs();
        match x.iter().position(|row| row.len() != inputs) {
            Some(e) => Err(mismatch(format!(
                "example {e} has {} bits; the tables read {inputs}",
                x[e].len()
            ))),
            None => Ok(()),
        }
    }

    /// For each example, how many of each class's tables are set at its rows.
    pub fn scores(&mut self, x: &[Vec<bool>]) -> Result<Vec<Vec<usize>>, Error> {
        self.check(x)?;
        let mut scores = vec![vec![0; self.classes.len()]; x.len()];
        for c in 0..self.classes.len() {
            let out = self.with_class(c, |bank| bank.predict(x))?;
            for (s, row) in scores.iter_mut().zip(out) {
                s[c] = row.iter().filter(|b| **b).count();
            }
        }
        Ok(scores)
    }

    /// The predicted class of each example.
    pub fn predict(&mut self, x: &[Vec<bool>]) -> Result<Vec<usize>, Error> {
        Ok(self
            .scores(x)?
            .iter()
            .map(|s| {
                (0..s.len())
                    .max_by_key(|&c| (s[c], std::cmp::Reverse(c)))
                    .unwrap_or(0)
            })
            .collect())
    }

    /// Fraction of examples predicted as their label.
    pub fn accuracy(&mut self, x: &[Vec<bool>], labels: &[usize]) -> Result<f64, Error> {
        if labels.len() != x.len() {
            return Err(mismatch(format!(
                "{} examples but {} labels",
                x.len(),
                labels.len()
            )));
        }
        let pred = self.predict(x)?;
        let right = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
        Ok(right as f64 / x.len().max(1) as f64)
    }
}
