//! Bit-sliced evaluation of circuits and of their reverse derivatives: 64
//! examples to a `u64`, every wire a row of words, every gate one bitwise
//! instruction per word (the inner loops vectorise, so one instruction
//! evaluates 256 or more gates).

use super::{Circuit, Gate};
use crate::error::{mismatch, Error};

/// Rows of words, one row per bit.
pub type Rows = Vec<Vec<u64>>;

/// Buffers for evaluating one circuit on batches of `64 * words` examples.
#[derive(Clone, Debug)]
pub struct Machine {
    words: usize,
    values: Vec<u64>,
    adjoints: Vec<u64>,
    /// The netlist (address and gate count) of the last forward pass, which
    /// `reverse` must be given: an O(1) identity, so that the check costs
    /// nothing next to a pass. Memory safety rests on the sizes, which are
    /// checked as well.
    forward_of: Option<(usize, usize)>,
}

/// The identity of a circuit's netlist for [`Machine::reverse`]: the
/// address of its gates (only compared) and their count.
fn netlist(circuit: &Circuit) -> (usize, usize) {
    (circuit.gates().as_ptr() as usize, circuit.gates().len())
}

/// All ones or all zeros: a parameter bit shared by every example.
fn broadcast(bit: bool) -> u64 {
    if bit {
        u64::MAX
    } else {
        0
    }
}

/// Every parameter bit as a word.
pub(crate) fn param_words(params: &[bool]) -> Vec<u64> {
    params.iter().map(|b| broadcast(*b)).collect()
}

/// Checks a call's parameters and input rows against `circuit`; returns the
/// words per row.
pub(crate) fn input_words(
    circuit: &Circuit,
    params: &[bool],
    inputs: &[Vec<u64>],
) -> Result<usize, Error> {
    let words = inputs.first().map_or(0, Vec::len);
    if inputs.len() != circuit.inputs() || inputs.iter().any(|r| r.len() != words) {
        return Err(mismatch(format!(
            "the circuit takes {} input rows of one length",
            circuit.inputs()
        )));
    }
    if params.len() != circuit.params() {
        return Err(mismatch(format!(
            "the circuit has {} parameter bits, got {}",
            circuit.params(),
            params.len()
        )));
    }
    Ok(words)
}

impl Machine {
    /// Buffers for `circuit` with `words` words (64 examples each) per
    /// wire: two words per wire and example word. A size that overflows or
    /// cannot be allocated is an error, not an abort.
    pub fn new(circuit: &Circuit, words: usize) -> Result<Self, Error> {
        let len = circuit.gates().len().checked_mul(words).ok_or_else(|| {
            mismatch(format!(
                "{} gates times {words} words per wire overflows",
                circuit.gates().len()
            ))
        })?;
        let zeros = |len: usize| -> Result<Vec<u64>, Error> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).map_err(|_| {
                mismatch(format!(
                    "cannot allocate {len} words for the circuit's wires"
                ))
            })?;
            v.resize(len, 0);
            Ok(v)
        };
        Ok(Machine {
            words,
            values: zeros(len)?,
            adjoints: zeros(len)?,
            forward_of: None,
        })
    }

    /// Words per wire.
    pub fn words(&self) -> usize {
        self.words
    }

    /// The words of wire `w` after [`Machine::forward`].
    pub fn wire(&self, w: usize) -> &[u64] {
        &self.values[w * self.words..(w + 1) * self.words]
    }

    /// Evaluates `circuit`: `inputs[i]` holds the words of input bit `i`.
    /// Returns the words of every output.
    pub fn forward(
        &mut self,
        circuit: &Circuit,
        params: &[bool],
        inputs: &[Vec<u64>],
    ) -> Result<Vec<Vec<u64>>, Error> {
        let n = self.words;
        let words = input_words(circuit, params, inputs)?;
        if words != n && !inputs.is_empty() {
            return Err(mismatch(format!(
                "the input rows have {words} words, these buffers {n}"
            )));
        }
        if Some(self.values.len()) != circuit.gates().len().checked_mul(n) {
            return Err(mismatch("these buffers were made for another circuit"));
        }
        self.forward_of = None;
        for (w, gate) in circuit.gates().iter().enumerate() {
            let (before, rest) = self.values.split_at_mut(w * n);
            let out = &mut rest[..n];
            let row = |k: usize| &before[k * n..(k + 1) * n];
            match *gate {
                Gate::Input(i) => out.copy_from_slice(&inputs[i]),
                Gate::Param(i) => out.fill(broadcast(params[i])),
                Gate::Zero => out.fill(0),
                Gate::One => out.fill(u64::MAX),
                Gate::And(a, b) => {
                    for ((o, x), y) in out.iter_mut().zip(row(a)).zip(row(b)) {
                        *o = x & y;
                    }
                }
                Gate::Xor(a, b) => {
                    for ((o, x), y) in out.iter_mut().zip(row(a)).zip(row(b)) {
                        *o = x ^ y;
                    }
                }
                Gate::Not(a) => {
                    for (o, x) in out.iter_mut().zip(row(a)) {
                        *o = !x;
                    }
                }
            }
        }
        self.forward_of = Some(netlist(circuit));
        Ok(circuit
            .outputs()
            .iter()
            .map(|o| self.wire(*o).to_vec())
            .collect())
    }

    /// The reverse derivative at the last forward pass: given the words of
    /// `dy` for every output, returns `(d params, d inputs)`, per bit and example.
    pub fn reverse(&mut self, circuit: &Circuit, dy: &[Vec<u64>]) -> Result<(Rows, Rows), Error> {
        let n = self.words;
        if self.forward_of != Some(netlist(circuit))
            || Some(self.values.len()) != circuit.gates().len().checked_mul(n)
        {
            return Err(mismatch(
                "reverse needs a forward pass of the same circuit first",
            ));
        }
        if dy.len() != circuit.outputs().len() || dy.iter().any(|d| d.len() != n) {
            return Err(mismatch(format!(
                "one row of {n} words per output is needed"
            )));
        }
        self.adjoints.fill(0);
        // Outputs that share a wire add up: R[copy](x, (d1, d2)) = d1 ^ d2.
        for (o, d) in circuit.outputs().iter().zip(dy) {
            for (a, x) in self.adjoints[o * n..(o + 1) * n].iter_mut().zip(d) {
                *a ^= x;
            }
        }
        let mut dparams = vec![vec![0u64; n]; circuit.params()];
        let mut dinputs = vec![vec![0u64; n]; circuit.inputs()];
        for (w, gate) in circuit.gates().iter().enumerate().rev() {
            let (low, high) = self.adjoints.split_at_mut(w * n);
            let dw = &high[..n];
            let value = |k: usize| &self.values[k * n..(k + 1) * n];
            match *gate {
                Gate::Input(i) => dinputs[i].copy_from_slice(dw),
                Gate::Param(i) => dparams[i].copy_from_slice(dw),
                Gate::Zero | Gate::One => {}
                // R[AND]((x1, x2), dy) = (x2 & dy, x1 & dy)
                Gate::And(a, b) => {
                    for k in 0..n {
                        let (va, vb) = (value(a)[k], value(b)[k]);
                        low[a * n + k] ^= vb & dw[k];
                        low[b * n + k] ^= va & dw[k];
                    }
                }
                // R[XOR]((x1, x2), dy) = (dy, dy)
                Gate::Xor(a, b) => {
                    for k in 0..n {
                        low[a * n + k] ^= dw[k];
                        low[b * n + k] ^= dw[k];
                    }
                }
                // NOT x = x XOR 1: R[NOT](x, dy) = dy
                Gate::Not(a) => {
                    for k in 0..n {
                        low[a * n + k] ^= dw[k];
                    }
                }
            }
        }
        Ok((dparams, dinputs))
    }
}

/// Packs boolean rows (one `Vec<bool>` per example) into bit-sliced words:
/// one row of `ceil(examples / 64)` words per bit.
pub fn pack(examples: &[Vec<bool>], bits: usize) -> Vec<Vec<u64>> {
    let words = examples.len().div_ceil(64).max(1);
    let mut out = vec![vec![0u64; words]; bits];
    for (e, row) in examples.iter().enumerate() {
        for (b, &v) in row.iter().enumerate().take(bits) {
            if v {
                out[b][e / 64] |= 1 << (e % 64);
            }
        }
    }
    out
}

/// Bit `e` (example `e`) of a row of words.
pub fn bit(row: &[u64], e: usize) -> bool {
    row[e / 64] >> (e % 64) & 1 == 1
}
