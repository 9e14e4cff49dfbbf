//! Boolean circuits over Z2 as string diagrams, and their reverse derivatives.
//!
//! A [`Circuit`] is built in netlist form: wires are numbered, every wire is
//! produced by one gate (an input, a parameter bit, a constant, AND, XOR or
//! NOT) and may feed any number of gates, an implicit `copy`; a wire feeding
//! nothing is `discard`ed. This is the open-hypergraph view of a diagram
//! (boxes are hyperedges, wires are nodes), built imperatively like a lax
//! open hypergraph, and composes sequentially ([`Circuit::then`], `>>`) and
//! in parallel ([`Circuit::beside`], `|`), wiring errors being values.
//!
//! The reverse derivative over Z2 (Wilson and Zanasi, "Reverse Derivative
//! Ascent") follows from the generators:
//! `R[AND]((x1, x2), dy) = (x2 & dy, x1 & dy)`, `R[XOR]((x1, x2), dy) = (dy, dy)`,
//! `R[NOT](x, dy) = dy`, `R[copy](x, (d1, d2)) = d1 ^ d2`, `R[discard] = 0`,
//! and the chain rule: the runtime's `circuit::eval` runs it backwards over
//! the netlist, 64 examples to a machine word, and the CPU backend compiles
//! both passes to bitwise code.
//!
//! This module lives in the front end so that the `circuit!` macro and the
//! code generator share it with the runtime.

use std::fmt;
use std::ops::{BitOr, Shr};

/// A gate of the netlist: its kind and the wires it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Input bit `i` of the circuit.
    Input(usize),
    /// Parameter bit `i` (learned).
    Param(usize),
    /// The constant 0.
    Zero,
    /// The constant 1.
    One,
    /// `a AND b`.
    And(usize, usize),
    /// `a XOR b`.
    Xor(usize, usize),
    /// `NOT a` (that is, `a XOR 1`).
    Not(usize),
}

/// Why a circuit cannot be built or composed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CircuitError {
    /// A gate reads a wire that does not exist (yet).
    UnknownWire(usize),
    /// An input or parameter bit beyond the circuit's count.
    NoSuchBit {
        /// `"input"` or `"parameter"`.
        what: &'static str,
        /// The index used.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// `f >> g` with f's outputs not matching g's inputs in number.
    Mismatch {
        /// Bits f produces.
        left: usize,
        /// Bits g takes.
        right: usize,
    },
}

impl fmt::Display for CircuitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CircuitError::UnknownWire(w) => write!(f, "wire {w} does not exist at that point of the circuit"),
            CircuitError::NoSuchBit { what, index, count } => write!(
                f,
                "{what} bit {index} does not exist: the circuit has {count}"
            ),
            CircuitError::Mismatch { left, right } => write!(
                f,
                "cannot compose: the left circuit produces {left} bits but the right one takes {right}"
            ),
        }
    }
}

impl std::error::Error for CircuitError {}

/// A boolean circuit with inputs, parameter bits and outputs.
///
/// Its fields are private so that every circuit is well formed (checked by
/// [`CircuitBuilder`] and [`Circuit::from_parts`]): every gate reads only
/// wires before it, inputs and parameter bits are in range, and outputs are
/// wires. Evaluators and compiled code index buffers by these numbers, so
/// this invariant is what makes them memory-safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Circuit {
    gates: Vec<Gate>,
    inputs: usize,
    params: usize,
    outputs: Vec<usize>,
}

/// Builds a circuit gate by gate, checking every wire reference.
#[derive(Clone, Debug, Default)]
pub struct CircuitBuilder {
    gates: Vec<Gate>,
    inputs: usize,
    params: usize,
    error: Option<CircuitError>,
}

impl CircuitBuilder {
    /// An empty circuit.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, g: Gate) -> usize {
        let n = self.gates.len();
        let reads: &[usize] = match &g {
            Gate::And(a, b) | Gate::Xor(a, b) => &[*a, *b],
            Gate::Not(a) => std::slice::from_ref(a),
            _ => &[],
        };
        if let Some(bad) = reads.iter().find(|w| **w >= n) {
            self.error.get_or_insert(CircuitError::UnknownWire(*bad));
        }
        self.gates.push(g);
        n
    }

    /// A new input bit.
    pub fn input(&mut self) -> usize {
        let i = self.inputs;
        self.inputs += 1;
        self.push(Gate::Input(i))
    }

    /// A new parameter bit.
    pub fn param(&mut self) -> usize {
        let i = self.params;
        self.params += 1;
        self.push(Gate::Param(i))
    }

    /// The constant 0 or 1.
    pub fn constant(&mut self, one: bool) -> usize {
        self.push(if one { Gate::One } else { Gate::Zero })
    }

    /// `a AND b`.
    pub fn and(&mut self, a: usize, b: usize) -> usize {
        self.push(Gate::And(a, b))
    }

    /// `a XOR b`.
    pub fn xor(&mut self, a: usize, b: usize) -> usize {
        self.push(Gate::Xor(a, b))
    }

    /// `NOT a`.
    pub fn not(&mut self, a: usize) -> usize {
        self.push(Gate::Not(a))
    }

    /// `a OR b = a ^ b ^ (a & b)`.
    pub fn or(&mut self, a: usize, b: usize) -> usize {
        let x = self.xor(a, b);
        let y = self.and(a, b);
        self.xor(x, y)
    }

    /// Finishes the circuit with `outputs` as its output wires.
    pub fn finish(mut self, outputs: Vec<usize>) -> Result<Circuit, CircuitError> {
        if let Some(bad) = outputs.iter().find(|w| **w >= self.gates.len()) {
            self.error.get_or_insert(CircuitError::UnknownWire(*bad));
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(Circuit {
                gates: self.gates,
                inputs: self.inputs,
                params: self.params,
                outputs,
            }),
        }
    }
}

impl Circuit {
    /// A circuit from its netlist, checked: gate `w` may read only wires
    /// `< w`, `Input(i)` needs `i < inputs`, `Param(i)` needs `i < params`,
    /// and every output must be a wire.
    pub fn from_parts(
        gates: Vec<Gate>,
        inputs: usize,
        params: usize,
        outputs: Vec<usize>,
    ) -> Result<Circuit, CircuitError> {
        for (w, g) in gates.iter().enumerate() {
            let bad = match *g {
                Gate::Input(i) if i >= inputs => Some(CircuitError::NoSuchBit {
                    what: "input",
                    index: i,
                    count: inputs,
                }),
                Gate::Param(i) if i >= params => Some(CircuitError::NoSuchBit {
                    what: "parameter",
                    index: i,
                    count: params,
                }),
                Gate::And(a, b) | Gate::Xor(a, b) if a >= w || b >= w => {
                    Some(CircuitError::UnknownWire(a.max(b)))
                }
                Gate::Not(a) if a >= w => Some(CircuitError::UnknownWire(a)),
                _ => None,
            };
            if let Some(e) = bad {
                return Err(e);
            }
        }
        if let Some(bad) = outputs.iter().find(|o| **o >= gates.len()) {
            return Err(CircuitError::UnknownWire(*bad));
        }
        Ok(Circuit {
            gates,
            inputs,
            params,
            outputs,
        })
    }

    /// The gates in topological order; gate `w` produces wire `w`.
    pub fn gates(&self) -> &[Gate] {
        &self.gates
    }

    /// Number of input bits.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Number of parameter bits.
    pub fn params(&self) -> usize {
        self.params
    }

    /// The wires that are outputs, in order.
    pub fn outputs(&self) -> &[usize] {
        &self.outputs
    }

    /// Number of AND, XOR and NOT gates.
    pub fn logic_gates(&self) -> usize {
        self.gates
            .iter()
            .filter(|g| matches!(g, Gate::And(..) | Gate::Xor(..) | Gate::Not(_)))
            .count()
    }

    /// Appends `other`'s gates, renumbered; its inputs read `inputs`, its
    /// parameter bits come after ours. Returns the wires of its outputs.
    fn append(
        gates: &mut Vec<Gate>,
        params: &mut usize,
        other: &Circuit,
        inputs: &[usize],
    ) -> Vec<usize> {
        let base = *params;
        let mut map = Vec::with_capacity(other.gates.len());
        for g in &other.gates {
            let w = gates.len();
            let new = match g {
                Gate::Input(i) => {
                    map.push(inputs[*i]);
                    continue;
                }
                Gate::Param(i) => Gate::Param(base + i),
                Gate::Zero => Gate::Zero,
                Gate::One => Gate::One,
                Gate::And(a, b) => Gate::And(map[*a], map[*b]),
                Gate::Xor(a, b) => Gate::Xor(map[*a], map[*b]),
                Gate::Not(a) => Gate::Not(map[*a]),
            };
            gates.push(new);
            map.push(w);
        }
        *params += other.params;
        other.outputs.iter().map(|o| map[*o]).collect()
    }

    /// `self >> next`: next reads self's outputs; parameters are self's, then next's.
    pub fn then(&self, next: &Circuit) -> Result<Circuit, CircuitError> {
        if self.outputs.len() != next.inputs {
            return Err(CircuitError::Mismatch {
                left: self.outputs.len(),
                right: next.inputs,
            });
        }
        let mut gates = Vec::new();
        let mut params = 0;
        let ins: Vec<usize> = (0..self.inputs)
            .map(|i| {
                gates.push(Gate::Input(i));
                gates.len() - 1
            })
            .collect();
        let mid = Self::append(&mut gates, &mut params, self, &ins);
        let outputs = Self::append(&mut gates, &mut params, next, &mid);
        Ok(Circuit {
            gates,
            inputs: self.inputs,
            params,
            outputs,
        })
    }

    /// `self | other`: side by side; inputs, parameters and outputs are self's, then other's.
    pub fn beside(&self, other: &Circuit) -> Circuit {
        let mut gates = Vec::new();
        let mut params = 0;
        let ins: Vec<usize> = (0..self.inputs + other.inputs)
            .map(|i| {
                gates.push(Gate::Input(i));
                gates.len() - 1
            })
            .collect();
        let mut outputs = Self::append(&mut gates, &mut params, self, &ins[..self.inputs]);
        outputs.extend(Self::append(
            &mut gates,
            &mut params,
            other,
            &ins[self.inputs..],
        ));
        Circuit {
            gates,
            inputs: self.inputs + other.inputs,
            params,
            outputs,
        }
    }
}

/// A circuit or the first error made composing it (for the operators).
pub type Composed = Result<Circuit, CircuitError>;

impl Shr for Circuit {
    type Output = Composed;
    fn shr(self, rhs: Circuit) -> Composed {
        self.then(&rhs)
    }
}

impl BitOr for Circuit {
    type Output = Circuit;
    fn bitor(self, rhs: Circuit) -> Circuit {
        self.beside(&rhs)
    }
}

/// The generators as one-gate circuits.
pub mod gates {
    use super::{Circuit, CircuitBuilder};

    fn build(
        inputs: usize,
        f: impl FnOnce(&mut CircuitBuilder, &[usize]) -> Vec<usize>,
    ) -> Circuit {
        let mut b = CircuitBuilder::new();
        let ins: Vec<usize> = (0..inputs).map(|_| b.input()).collect();
        let outs = f(&mut b, &ins);
        b.finish(outs).expect("generators are well formed")
    }

    /// `AND : 2 → 1`.
    pub fn and() -> Circuit {
        build(2, |b, x| vec![b.and(x[0], x[1])])
    }
    /// `XOR : 2 → 1`.
    pub fn xor() -> Circuit {
        build(2, |b, x| vec![b.xor(x[0], x[1])])
    }
    /// `NOT : 1 → 1`.
    pub fn not() -> Circuit {
        build(1, |b, x| vec![b.not(x[0])])
    }
    /// `0 : 0 → 1`.
    pub fn zero() -> Circuit {
        build(0, |b, _| vec![b.constant(false)])
    }
    /// `1 : 0 → 1`.
    pub fn one() -> Circuit {
        build(0, |b, _| vec![b.constant(true)])
    }
    /// `copy : 1 → 2`.
    pub fn copy() -> Circuit {
        build(1, |_, x| vec![x[0], x[0]])
    }
    /// `discard : 1 → 0`.
    pub fn discard() -> Circuit {
        build(1, |_, _| vec![])
    }
    /// `id : n → n`.
    pub fn identity(n: usize) -> Circuit {
        build(n, |_, x| x.to_vec())
    }
    /// `swap : 2 → 2`.
    pub fn swap() -> Circuit {
        build(2, |_, x| vec![x[1], x[0]])
    }
    /// A parameter bit: `0 → 1`.
    pub fn param() -> Circuit {
        build(0, |b, _| vec![b.param()])
    }
}
