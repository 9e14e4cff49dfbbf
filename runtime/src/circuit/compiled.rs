//! Circuits compiled to native bitwise code (cranelift), behind a safe
//! interface with the same layout as [`super::eval::Machine`]: one row of
//! words per bit, 64 examples per word.

use super::eval::{input_words, param_words, Rows};
use super::Circuit;
use crate::error::{mismatch, Error};
use lensopt_codegen::cpu::circuit::CircuitCode;

/// A circuit's forward and reverse passes as native code.
pub struct CompiledCircuit {
    circuit: Circuit,
    code: CircuitCode,
}

/// Rows of `words` words, flattened into one buffer of an even number of words per row.
fn flatten(rows: &[Vec<u64>], padded: usize) -> Vec<u64> {
    let mut out = vec![0u64; rows.len() * padded];
    for (r, row) in rows.iter().enumerate() {
        out[r * padded..r * padded + row.len()].copy_from_slice(row);
    }
    out
}

fn unflatten(buf: &[u64], rows: usize, padded: usize, words: usize) -> Rows {
    (0..rows)
        .map(|r| buf[r * padded..r * padded + words].to_vec())
        .collect()
}

impl CompiledCircuit {
    /// Compiles `circuit`.
    pub fn new(circuit: &Circuit) -> Result<Self, Error> {
        Self::from_code(circuit, CircuitCode::compile(circuit))
    }

    /// Compiles `circuit` and keeps the CLIF text of its passes ([`Self::clif`]).
    pub fn with_clif(circuit: &Circuit) -> Result<Self, Error> {
        Self::from_code(circuit, CircuitCode::compile_with_clif(circuit))
    }

    fn from_code(
        circuit: &Circuit,
        code: Result<CircuitCode, lensopt_codegen::cpu::CompileError>,
    ) -> Result<Self, Error> {
        let code = code.map_err(|e| Error::Compile(e.to_string()))?;
        Ok(CompiledCircuit {
            circuit: circuit.clone(),
            code,
        })
    }

    /// `(function name, CLIF)` of the forward and reverse passes; empty
    /// unless compiled by [`Self::with_clif`].
    pub fn clif(&self) -> &[(String, String)] {
        self.code.clif()
    }

    fn check(&self, params: &[bool], inputs: &[Vec<u64>]) -> Result<usize, Error> {
        input_words(&self.circuit, params, inputs)
    }

    /// The outputs, one row per output bit.
    pub fn forward(&self, params: &[bool], inputs: &[Vec<u64>]) -> Result<Rows, Error> {
        let words = self.check(params, inputs)?;
        let padded = words.div_ceil(2) * 2;
        let x = flatten(inputs, padded);
        let p = param_words(params);
        let mut out = vec![0u64; self.circuit.outputs().len() * padded];
        let mut scratch = vec![0u64; self.code.scratch_words()];
        // SAFETY: `x` holds inputs * padded words, `p` one word per parameter,
        // `out` outputs * padded words, `padded` is even, and `scratch` is
        // this call's own, of the size the code asks for: the sizes the
        // generated code indexes within.
        unsafe {
            self.code.forward_raw(
                x.as_ptr(),
                p.as_ptr(),
                out.as_mut_ptr(),
                padded,
                scratch.as_mut_ptr(),
            )
        };
        Ok(unflatten(&out, self.circuit.outputs().len(), padded, words))
    }

    /// `R[f]` at `(params, inputs)` for output changes `dy`: `(d params, d inputs)`, per example.
    pub fn reverse(
        &self,
        params: &[bool],
        inputs: &[Vec<u64>],
        dy: &[Vec<u64>],
    ) -> Result<(Rows, Rows), Error> {
        let words = self.check(params, inputs)?;
        if dy.len() != self.circuit.outputs().len() || dy.iter().any(|r| r.len() != words) {
            return Err(mismatch(format!(
                "one row of {words} words per output is needed"
            )));
        }
        let padded = words.div_ceil(2) * 2;
        let x = flatten(inputs, padded);
        let d = flatten(dy, padded);
        let p = param_words(params);
        let mut dp = vec![0u64; self.circuit.params() * padded];
        let mut dx = vec![0u64; self.circuit.inputs() * padded];
        let mut scratch = vec![0u64; self.code.scratch_words()];
        // SAFETY: as for `forward`, with `d` holding outputs * padded words,
        // `dp` params * padded and `dx` inputs * padded.
        unsafe {
            self.code.reverse_raw(
                x.as_ptr(),
                p.as_ptr(),
                d.as_ptr(),
                dp.as_mut_ptr(),
                dx.as_mut_ptr(),
                padded,
                scratch.as_mut_ptr(),
            )
        };
        Ok((
            unflatten(&dp, self.circuit.params(), padded, words),
            unflatten(&dx, self.circuit.inputs(), padded, words),
        ))
    }
}
