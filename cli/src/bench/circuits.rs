//! The circuit workload of `lensopt bench`: a random circuit of 10,000
//! gates evaluated forward and in reverse, bit-sliced (interpreted, and
//! compiled by cranelift), against a baseline of one `bool` per byte, one
//! example at a time.

use super::harness::{fail, time, Bench};
use crate::Failure;
use serde_json::json;
use std::time::Instant;

/// A random circuit of `gates` AND/XOR/NOT gates with fan-out, over 64 inputs.
fn random_circuit(gates: usize, seed: u64) -> lensopt::circuit::Circuit {
    let mut rng = lensopt::diagram::plan::SplitMix(seed);
    let mut b = lensopt::circuit::CircuitBuilder::new();
    let mut wires: Vec<usize> = (0..64).map(|_| b.input()).collect();
    for _ in 0..gates {
        // Mostly recent wires, as in a layered circuit.
        let pick = |rng: &mut lensopt::diagram::plan::SplitMix, w: &[usize]| {
            let back = (rng.next_u64() % 256).min(w.len() as u64 - 1) as usize;
            w[w.len() - 1 - back]
        };
        let (x, y) = (pick(&mut rng, &wires), pick(&mut rng, &wires));
        let z = match rng.next_u64() % 3 {
            0 => b.and(x, y),
            1 => b.xor(x, y),
            _ => b.not(x),
        };
        wires.push(z);
    }
    let outs = wires[wires.len() - 16..].to_vec();
    b.finish(outs).expect("well formed")
}

/// The baseline: one `bool` per byte, one example at a time.
fn bool_forward(c: &lensopt::circuit::Circuit, x: &[bool], values: &mut [bool]) {
    use lensopt::circuit::Gate;
    for (w, g) in c.gates().iter().enumerate() {
        values[w] = match *g {
            Gate::Input(i) => x[i],
            Gate::Param(_) | Gate::Zero => false,
            Gate::One => true,
            Gate::And(a, b) => values[a] & values[b],
            Gate::Xor(a, b) => values[a] ^ values[b],
            Gate::Not(a) => !values[a],
        };
    }
}

fn bool_reverse(c: &lensopt::circuit::Circuit, values: &[bool], adj: &mut [bool]) {
    use lensopt::circuit::Gate;
    adj.fill(false);
    for o in c.outputs() {
        adj[*o] ^= true;
    }
    for (w, g) in c.gates().iter().enumerate().rev() {
        let d = adj[w];
        match *g {
            Gate::And(a, b) => {
                adj[a] ^= values[b] & d;
                adj[b] ^= values[a] & d;
            }
            Gate::Xor(a, b) => {
                adj[a] ^= d;
                adj[b] ^= d;
            }
            Gate::Not(a) => adj[a] ^= d,
            _ => {}
        }
    }
}

impl Bench {
    /// Bit-sliced circuit evaluation (one thread) against one bool per byte.
    pub(super) fn circuits(&mut self) -> Result<(), Failure> {
        use lensopt::circuit::eval::Machine;
        let c = random_circuit(10_000, 17);
        let gates = c.logic_gates();
        let words = 1024;
        let examples = 64 * words;
        let mut rng = lensopt::diagram::plan::SplitMix(3);
        let inputs: Vec<Vec<u64>> = (0..c.inputs())
            .map(|_| (0..words).map(|_| rng.next_u64()).collect())
            .collect();
        let mut m = Machine::new(&c, words).map_err(|e| Failure::usage(e.to_string()))?;
        let fwd = time(self.seconds, || {
            let _ = m.forward(&c, &[], &inputs);
        });
        let dy: Vec<Vec<u64>> = c.outputs().iter().map(|_| vec![u64::MAX; words]).collect();
        let rev = time(self.seconds, || {
            let _ = m.reverse(&c, &dy);
        });
        // The baseline on fewer examples (it is slow), scaled per example.
        let few = 2048;
        let xs: Vec<Vec<bool>> = (0..few)
            .map(|_| (0..64).map(|_| rng.next_u64() & 1 == 1).collect())
            .collect();
        let mut values = vec![false; c.gates().len()];
        let mut adj = vec![false; c.gates().len()];
        let base_fwd = time(self.seconds, || {
            for x in &xs {
                bool_forward(&c, x, &mut values);
            }
        });
        let base_rev = time(self.seconds, || {
            for x in &xs {
                bool_forward(&c, x, &mut values);
                bool_reverse(&c, &values, &mut adj);
            }
        }) - base_fwd;
        // The same circuit compiled to bitwise code by cranelift.
        let started = Instant::now();
        let compiled = lensopt::circuit::compiled::CompiledCircuit::new(&c).map_err(fail)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let cfwd = time(self.seconds, || {
            let _ = compiled.forward(&[], &inputs);
        });
        let crev = time(self.seconds, || {
            let _ = compiled.reverse(&[], &inputs, &dy);
        });
        for (kernel, t, b) in [
            ("circuit_forward", cfwd, base_fwd),
            ("circuit_reverse", crev, base_rev.max(1e-9)),
            ("circuit_forward_interpreted", fwd, base_fwd),
            ("circuit_reverse_interpreted", rev, base_rev.max(1e-9)),
        ] {
            let compile = if kernel.ends_with("interpreted") {
                0.0
            } else {
                compile_ms
            };
            self.rows.push(json!({
                "kernel": kernel, "gates": gates, "examples": examples, "threads": 1,
                "gate_evals_per_s": gates as f64 * examples as f64 / t,
                "baseline_gate_evals_per_s": gates as f64 * few as f64 / b,
                "compile_ms": compile,
            }));
        }
        self.circuit_compile_scaling()
    }

    /// Compile time against netlist size, across the switch from values in
    /// registers to values in scratch memory, with the compiled forward
    /// pass's speed (64 words, 4,096 examples) beside the interpreter's.
    fn circuit_compile_scaling(&mut self) -> Result<(), Failure> {
        use lensopt::circuit::eval::Machine;
        use lensopt_codegen::cpu::circuit::REGISTER_GATES;
        let words = 64;
        for gates in [1_000, 10_000, 30_000, 100_000] {
            let c = random_circuit(gates, 23);
            let mut rng = lensopt::diagram::plan::SplitMix(4);
            let inputs: Vec<Vec<u64>> = (0..c.inputs())
                .map(|_| (0..words).map(|_| rng.next_u64()).collect())
                .collect();
            let started = Instant::now();
            let compiled = lensopt::circuit::compiled::CompiledCircuit::new(&c).map_err(fail)?;
            let compile_ms = started.elapsed().as_secs_f64() * 1e3;
            let fwd = time(self.seconds, || {
                let _ = compiled.forward(&[], &inputs);
            });
            let mut m = Machine::new(&c, words).map_err(|e| Failure::usage(e.to_string()))?;
            let interpreted = time(self.seconds, || {
                let _ = m.forward(&c, &[], &inputs);
            });
            let evals = c.logic_gates() as f64 * 64.0 * words as f64;
            self.rows.push(json!({
                "kernel": "circuit_compile", "gates": c.logic_gates(), "threads": 1,
                "storage": if c.gates().len() > REGISTER_GATES { "scratch" } else { "registers" },
                "compile_ms": compile_ms,
                "compile_us_per_gate": compile_ms * 1e3 / c.logic_gates() as f64,
                "gate_evals_per_s": evals / fwd,
                "interpreted_gate_evals_per_s": evals / interpreted,
            }));
        }
        Ok(())
    }
}
