//! String diagrams over the reals: generators, sequential (`>>`) and parallel
//! (`|`) composition, typed wires, named parameters.
//!
//! A [`Diagram`] is a term of the free symmetric monoidal category on the
//! [`Generator`]s: a morphism from a list of wires to a list of wires, each
//! wire carrying a per-example shape (a batch of examples travels along
//! every wire). Composition checks wire types and records a
//! [`DiagramError`] instead of panicking; [`Diagram::check`] reports it.
//! A diagram is *parametrised* (an arrow of Para): generators such as
//! [`dense`] own named parameter blocks, and the reverse derivative of the
//! whole diagram, with respect to its inputs and its parameters, follows from
//! the generators' and the chain rule (the runtime's `diagram::plan`);
//! nothing is written per model.
//!
//! This module lives in the front end so that the `diagram!` macro checks
//! wiring at compile time with exactly the rules the run-time builder uses.

use std::fmt;
use std::ops::{BitOr, Shr};

/// The per-example shape of one wire (the batch dimension is implicit).
pub type Shape = Vec<usize>;

/// Number of values per example on a wire of shape `s`.
pub fn size(s: &[usize]) -> usize {
    s.iter().product()
}

/// How a parameter block is initialised (from the model's seed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with standard deviation sqrt(2 / fan_in) (He et al. 2015), for ReLU layers.
    He,
    /// Uniform in ±sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010).
    Glorot,
    /// All zeros.
    Zeros,
    /// Normal with the given standard deviation.
    Normal(f64),
}

/// The generators. Signatures use per-example shapes; `●` is the monoidal product.
#[derive(Clone, Debug, PartialEq)]
pub enum Generator {
    /// `linear : [i] → [o]`, `x ↦ x Wᵀ`; parameter `W : [o, i]`.
    Linear {
        name: String,
        inputs: usize,
        outputs: usize,
        init: Init,
    },
    /// `dense : [i] → [o]`, `x ↦ x Wᵀ + b`; parameters `W : [o, i]`, `b : [o]` (zeros).
    Dense {
        name: String,
        inputs: usize,
        outputs: usize,
        init: Init,
    },
    /// `bias : [n] → [n]`, `x ↦ x + b`; parameter `b : [n]` (zeros).
    Bias { name: String, size: usize },
    /// `matmul : [m, k] ● [k, n] → [m, n]`, per example.
    MatMul { m: usize, k: usize, n: usize },
    /// `add : s ● s → s`.
    Add(Shape),
    /// `mul : s ● s → s`, element-wise product.
    Mul(Shape),
    /// `copy : s → s ● s`.
    Copy(Shape),
    /// `discard : s → I`.
    Discard(Shape),
    /// `swap : s ● t → t ● s`.
    Swap(Shape, Shape),
    /// `id : s → s`.
    Identity(Shape),
    /// `relu : s → s`.
    Relu(Shape),
    /// `sigmoid : s → s`.
    Sigmoid(Shape),
    /// `tanh : s → s`.
    Tanh(Shape),
    /// `exp : s → s`.
    Exp(Shape),
    /// `log : s → s` (natural logarithm).
    Log(Shape),
    /// `softmax : [n] → [n]`, over the features of each example.
    Softmax(usize),
    /// `sum : s → [1]`, of the features of each example.
    Sum(Shape),
    /// `broadcast : [1] → [n]`.
    Broadcast(usize),
    /// `reshape : s → t` with the same number of values.
    Reshape(Shape, Shape),
}

impl Generator {
    /// The input wires.
    pub fn dom(&self) -> Vec<Shape> {
        use Generator::*;
        match self {
            Linear { inputs, .. } | Dense { inputs, .. } => vec![vec![*inputs]],
            Bias { size, .. } => vec![vec![*size]],
            MatMul { m, k, n } => vec![vec![*m, *k], vec![*k, *n]],
            Add(s) | Mul(s) => vec![s.clone(), s.clone()],
            Copy(s) | Discard(s) | Identity(s) | Relu(s) | Sigmoid(s) | Tanh(s) | Exp(s)
            | Log(s) | Sum(s) => {
                vec![s.clone()]
            }
            Swap(s, t) => vec![s.clone(), t.clone()],
            Softmax(n) => vec![vec![*n]],
            Broadcast(_) => vec![vec![1]],
            Reshape(s, _) => vec![s.clone()],
        }
    }

    /// The output wires.
    pub fn cod(&self) -> Vec<Shape> {
        use Generator::*;
        match self {
            Linear { outputs, .. } | Dense { outputs, .. } => vec![vec![*outputs]],
            Bias { size, .. } => vec![vec![*size]],
            MatMul { m, n, .. } => vec![vec![*m, *n]],
            Add(s) | Mul(s) | Identity(s) | Relu(s) | Sigmoid(s) | Tanh(s) | Exp(s) | Log(s) => {
                vec![s.clone()]
            }
            Copy(s) => vec![s.clone(), s.clone()],
            Discard(_) => vec![],
            Swap(s, t) => vec![t.clone(), s.clone()],
            Softmax(n) => vec![vec![*n]],
            Sum(_) => vec![vec![1]],
            Broadcast(n) => vec![vec![*n]],
            Reshape(_, t) => vec![t.clone()],
        }
    }

    /// The parameter blocks this generator owns: `(name, shape, init)`.
    pub fn params(&self) -> Vec<(String, Shape, Init)> {
        match self {
            Generator::Linear {
                name,
                inputs,
                outputs,
                init,
            } => {
                vec![(format!("{name}.weight"), vec![*outputs, *inputs], *init)]
            }
            Generator::Dense {
                name,
                inputs,
                outputs,
                init,
            } => vec![
                (format!("{name}.weight"), vec![*outputs, *inputs], *init),
                (format!("{name}.bias"), vec![*outputs], Init::Zeros),
            ],
            Generator::Bias { name, size } => {
                vec![(format!("{name}.bias"), vec![*size], Init::Zeros)]
            }
            _ => Vec::new(),
        }
    }
}

/// Why a diagram does not compose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiagramError {
    /// `f >> g` where f's outputs are not g's inputs.
    Mismatch {
        /// What the left diagram produces.
        left: Vec<Shape>,
        /// What the right diagram expects.
        right: Vec<Shape>,
    },
    /// A generator with impossible sizes (`reshape` changing the number of values, a zero size).
    Invalid(String),
    /// Two parameter blocks with one name.
    DuplicateParameter(String),
}

impl fmt::Display for DiagramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wires = |w: &[Shape]| {
            let parts: Vec<String> = w.iter().map(|s| format!("{s:?}")).collect();
            if parts.is_empty() {
                "nothing".to_string()
            } else {
                parts.join(" ● ")
            }
        };
        match self {
            DiagramError::Mismatch { left, right } => write!(
                f,
                "cannot compose: the left diagram produces {} but the right one expects {}",
                wires(left),
                wires(right)
            ),
            DiagramError::Invalid(m) => f.write_str(m),
            DiagramError::DuplicateParameter(n) => {
                write!(f, "two parameter blocks are called `{n}`")
            }
        }
    }
}

impl std::error::Error for DiagramError {}

/// A term: a generator, or a composite.
#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    /// One generator.
    Gen(Generator),
    /// `f >> g`: f, then g.
    Seq(Box<Term>, Box<Term>),
    /// `f | g`: f and g side by side.
    Par(Box<Term>, Box<Term>),
}

impl Term {
    /// Input wires.
    pub fn dom(&self) -> Vec<Shape> {
        match self {
            Term::Gen(g) => g.dom(),
            Term::Seq(f, _) => f.dom(),
            Term::Par(f, g) => {
                let mut d = f.dom();
                d.extend(g.dom());
                d
            }
        }
    }

    /// Output wires.
    pub fn cod(&self) -> Vec<Shape> {
        match self {
            Term::Gen(g) => g.cod(),
            Term::Seq(_, g) => g.cod(),
            Term::Par(f, g) => {
                let mut c = f.cod();
                c.extend(g.cod());
                c
            }
        }
    }

    /// Generators in evaluation order.
    pub fn generators(&self) -> Vec<&Generator> {
        match self {
            Term::Gen(g) => vec![g],
            Term::Seq(f, g) | Term::Par(f, g) => {
                let mut out = f.generators();
                out.extend(g.generators());
                out
            }
        }
    }
}

/// A string diagram, or the first composition error made building it.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagram {
    term: Result<Term, DiagramError>,
}

impl Diagram {
    /// A diagram of one generator (checked for valid sizes).
    pub fn generator(g: Generator) -> Diagram {
        let bad_size = g.dom().iter().chain(g.cod().iter()).any(|s| s.contains(&0));
        let term = if bad_size {
            Err(DiagramError::Invalid(format!("{g:?} has a wire of size 0")))
        } else if let Generator::Reshape(s, t) = &g {
            if size(s) == size(t) {
                Ok(Term::Gen(g))
            } else {
                Err(DiagramError::Invalid(format!(
                    "reshape from {s:?} ({} values) to {t:?} ({} values) changes the number of values",
                    size(s),
                    size(t)
                )))
            }
        } else {
            Ok(Term::Gen(g))
        };
        Diagram { term }
    }

    /// `self >> next`: sequential composition.
    pub fn then(self, next: Diagram) -> Diagram {
        let term = match (self.term, next.term) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(f), Ok(g)) => {
                if f.cod() == g.dom() {
                    Ok(Term::Seq(Box::new(f), Box::new(g)))
                } else {
                    Err(DiagramError::Mismatch {
                        left: f.cod(),
                        right: g.dom(),
                    })
                }
            }
        };
        Diagram { term }
    }

    /// `self | other`: parallel composition.
    pub fn beside(self, other: Diagram) -> Diagram {
        let term = match (self.term, other.term) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(f), Ok(g)) => Ok(Term::Par(Box::new(f), Box::new(g))),
        };
        Diagram { term }
    }

    /// The term, or the error made building it (with parameter names checked).
    pub fn check(&self) -> Result<&Term, DiagramError> {
        let term = self.term.as_ref().map_err(Clone::clone)?;
        let mut names = std::collections::HashSet::new();
        for g in term.generators() {
            for (name, _, _) in g.params() {
                if !names.insert(name.clone()) {
                    return Err(DiagramError::DuplicateParameter(name));
                }
            }
        }
        Ok(term)
    }

    /// Input wires (empty for an invalid diagram).
    pub fn dom(&self) -> Vec<Shape> {
        self.term.as_ref().map(Term::dom).unwrap_or_default()
    }

    /// Output wires (empty for an invalid diagram).
    pub fn cod(&self) -> Vec<Shape> {
        self.term.as_ref().map(Term::cod).unwrap_or_default()
    }
}

impl Shr for Diagram {
    type Output = Diagram;
    /// Sequential composition.
    fn shr(self, rhs: Diagram) -> Diagram {
        self.then(rhs)
    }
}

impl BitOr for Diagram {
    type Output = Diagram;
    /// Parallel composition.
    fn bitor(self, rhs: Diagram) -> Diagram {
        self.beside(rhs)
    }
}

/// `linear : [inputs] → [outputs]` with parameter `name.weight` (Glorot).
pub fn linear(name: &str, inputs: usize, outputs: usize) -> Diagram {
    Diagram::generator(Generator::Linear {
        name: name.to_string(),
        inputs,
        outputs,
        init: Init::Glorot,
    })
}

/// `dense : [inputs] → [outputs]` with `name.weight` (He) and `name.bias` (zeros).
pub fn dense(name: &str, inputs: usize, outputs: usize) -> Diagram {
    dense_with(name, inputs, outputs, Init::He)
}

/// `dense` with a chosen weight initialiser.
pub fn dense_with(name: &str, inputs: usize, outputs: usize, init: Init) -> Diagram {
    Diagram::generator(Generator::Dense {
        name: name.to_string(),
        inputs,
        outputs,
        init,
    })
}

/// `bias : [n] → [n]` with parameter `name.bias`.
pub fn bias(name: &str, n: usize) -> Diagram {
    Diagram::generator(Generator::Bias {
        name: name.to_string(),
        size: n,
    })
}

/// `matmul : [m, k] ● [k, n] → [m, n]`.
pub fn matmul(m: usize, k: usize, n: usize) -> Diagram {
    Diagram::generator(Generator::MatMul { m, k, n })
}

macro_rules! shaped {
    ($($(#[$doc:meta])* $name:ident => $variant:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(shape: impl Into<Shape>) -> Diagram {
                Diagram::generator(Generator::$variant(shape.into()))
            }
        )*
    };
}

shaped! {
    /// `add : s ● s → s`.
    add => Add;
    /// `mul : s ● s → s`.
    mul => Mul;
    /// `copy : s → s ● s`.
    copy => Copy;
    /// `discard : s → I`.
    discard => Discard;
    /// `id : s → s`.
    identity => Identity;
    /// `relu : s → s`.
    relu => Relu;
    /// `sigmoid : s → s`.
    sigmoid => Sigmoid;
    /// `tanh : s → s`.
    tanh => Tanh;
    /// `exp : s → s`.
    exp => Exp;
    /// `log : s → s`.
    log => Log;
    /// `sum : s → [1]`.
    sum => Sum;
}

/// `swap : s ● t → t ● s`.
pub fn swap(s: impl Into<Shape>, t: impl Into<Shape>) -> Diagram {
    Diagram::generator(Generator::Swap(s.into(), t.into()))
}

/// `softmax : [n] → [n]`.
pub fn softmax(n: usize) -> Diagram {
    Diagram::generator(Generator::Softmax(n))
}

/// `broadcast : [1] → [n]`.
pub fn broadcast(n: usize) -> Diagram {
    Diagram::generator(Generator::Broadcast(n))
}

/// `reshape : s → t`.
pub fn reshape(s: impl Into<Shape>, t: impl Into<Shape>) -> Diagram {
    Diagram::generator(Generator::Reshape(s.into(), t.into()))
}
