//! Building IR graphs: hash-consing and the type and rate of each new node.
//!
//! Used by the checker (from surface syntax) and by the optimizer (from
//! extracted e-graph terms), so both produce graphs with the same invariants.

use crate::rule::*;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// The hasher of [`GraphBuilder`]'s hash-consing table: a multiply-rotate
/// hash over the key's integers (SipHash cost a tenth of parsing a rule),
/// seeded per process so that no input can be built to collide.
#[derive(Clone, Copy)]
struct KeyHash(u64);

impl Default for KeyHash {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        KeyHash(*SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64)))
    }
}

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

type KeyTable = HashMap<(u8, u64, u32, u32, u32), ValueId, std::hash::BuildHasherDefault<KeyHash>>;

/// An IR graph under construction: nodes in topological order, each distinct op once.
#[derive(Default)]
pub struct GraphBuilder {
    /// The nodes so far.
    pub nodes: Vec<Node>,
    dedup: KeyTable,
    leaves: Option<LeafTypes>,
}

/// The type and rate of each kind of leaf of one rule.
struct LeafTypes {
    hypers: Vec<Ty>,
    states: Vec<Rate>,
}

impl LeafTypes {
    fn of(rule: &Rule) -> Self {
        LeafTypes {
            hypers: rule
                .hypers
                .iter()
                .map(|h| match h.default {
                    crate::HyperValue::Num(_) => Ty::Float,
                    crate::HyperValue::Bool(_) => Ty::Bool,
                })
                .collect(),
            states: rule.states.iter().map(|s| s.kind.rate()).collect(),
        }
    }

    fn of_leaf(&self, op: Op) -> (Ty, Rate) {
        match op {
            Op::Const(_) => (Ty::Float, Rate::Const),
            Op::ConstBool(_) => (Ty::Bool, Rate::Const),
            Op::Hyper(i) => (self.hypers[i as usize], Rate::Step),
            Op::Step => (Ty::Float, Rate::Step),
            Op::Present(_) => (Ty::Bool, Rate::Step),
            Op::Numel | Op::Extent(_) | Op::Rank => (Ty::Float, Rate::Tensor),
            Op::Eye(d) => (Ty::Float, Rate::Array(d, d)),
            Op::MachineEps => (Ty::Float, Rate::Step),
            Op::Param | Op::Grad | Op::Input(_) => (Ty::Float, Rate::Element),
            Op::State(i) => (Ty::Float, self.states[i as usize]),
            interior => unreachable!("{interior:?} is not a leaf"),
        }
    }
}

/// Hash-consing key of an op (floats by their bits).
pub(crate) fn op_key(op: &Op) -> (u8, u64, u32, u32, u32) {
    match *op {
        Op::Const(x) => (0, x.to_bits(), 0, 0, 0),
        Op::ConstBool(b) => (1, b as u64, 0, 0, 0),
        Op::Hyper(i) => (2, i as u64, 0, 0, 0),
        Op::Step => (3, 0, 0, 0, 0),
        Op::Present(i) => (4, i as u64, 0, 0, 0),
        Op::Numel => (5, 0, 0, 0, 0),
        Op::Param => (6, 0, 0, 0, 0),
        Op::Grad => (7, 0, 0, 0, 0),
        Op::Input(i) => (8, i as u64, 0, 0, 0),
        Op::State(i) => (9, i as u64, 0, 0, 0),
        Op::Unary(u, a) => (10, u as u64, a.0, 0, 0),
        Op::Binary(b, x, y) => (11, b as u64, x.0, y.0, 0),
        Op::Select(c, a, b) => (12, 0, c.0, a.0, b.0),
        Op::Fma(a, b, c) => (13, 0, a.0, b.0, c.0),
        Op::Reduce(r, s, a) => (14, (r as u64) * 2 + s as u64, a.0, 0, 0),
        Op::Extent(d) => (15, d as u64, 0, 0, 0),
        Op::Eye(d) => (16, d as u64, 0, 0, 0),
        Op::MachineEps => (21, 0, 0, 0, 0),
        Op::Rank => (22, 0, 0, 0, 0),
        Op::ReduceAxis(r, x, a) => (17, (r as u64) * 2 + x as u64, a.0, 0, 0),
        Op::Matmul(a, b) => (18, 0, a.0, b.0, 0),
        Op::Transpose(a) => (19, 0, a.0, 0, 0),
        Op::MatFn(m, a, b) => (20, m as u64, a.0, b.0, 0),
        Op::Linalg(l, a) => (23, l as u64, a.0, 0, 0),
        Op::Shape(o, a) => (24, o as u64, a.0, 0, 0),
    }
}

/// The rate (and so the shape) of the value an interior op computes from
/// arguments of rates `rates`, or why the shapes do not fit. Element-wise
/// operations broadcast axes of length 1; `Reduce` takes any array to a
/// per-tensor scalar (a global one only per-element values); `ReduceAxis`
/// keeps one axis; `Matmul` needs the inner axes to agree; `MatFn` a
/// square matrix and a scalar.
pub fn result_rate(op: &Op, rates: &[Rate]) -> Result<Rate, String> {
    let shape = |r: Rate| {
        let (a, b) = r.shape();
        format!("{} × {}", a.name(), b.name())
    };
    match *op {
        Op::Unary(..) | Op::Binary(..) | Op::Select(..) | Op::Fma(..) => {
            let mut rate = Rate::Const;
            for &r in rates {
                rate = rate.broadcast(r).ok_or_else(|| {
                    format!(
                        "shapes {} and {} do not match (only axes of length 1 broadcast)",
                        shape(rate),
                        shape(r)
                    )
                })?;
            }
            Ok(rate)
        }
        Op::Reduce(_, Scope::Global, _) if rates[0] != Rate::Element => {
            Err("a global reduction needs a per-element argument".into())
        }
        Op::Reduce(..) if !rates[0].is_array() => {
            Err("a reduction needs a per-element (or matrix) argument".into())
        }
        Op::Reduce(..) => Ok(Rate::Tensor),
        Op::ReduceAxis(_, axis, _) => {
            let (r, c) = rates[0].shape();
            match axis {
                Axis::Row if c != Dim::One => Ok(Rate::of_shape(r, Dim::One)),
                Axis::Col if r != Dim::One => Ok(Rate::of_shape(Dim::One, c)),
                _ => Err(format!(
                    "a reduction along the {} needs a value with more than one entry along them, but this one has shape {}",
                    if axis == Axis::Row { "rows" } else { "columns" },
                    shape(rates[0])
                )),
            }
        }
        Op::Matmul(..) => {
            if !rates[0].is_array() || !rates[1].is_array() {
                return Err("`@` multiplies matrices; scale by a scalar with `*`".into());
            }
            let ((r, k), (k2, c)) = (rates[0].shape(), rates[1].shape());
            if k != k2 {
                return Err(format!(
                    "`@` needs the columns of its left operand to match the rows of its right one, but the shapes are {} and {}",
                    shape(rates[0]),
                    shape(rates[1])
                ));
            }
            Ok(Rate::of_shape(r, c))
        }
        Op::Transpose(_) => {
            let (r, c) = rates[0].shape();
            Ok(if rates[0].is_array() {
                Rate::of_shape(c, r)
            } else {
                rates[0]
            })
        }
        Op::MatFn(..) => {
            let (r, c) = rates[0].shape();
            if r != c || r == Dim::One {
                return Err(format!(
                    "a matrix function needs a square matrix (rows × rows or cols × cols), not {}",
                    shape(rates[0])
                ));
            }
            if rates[1].is_array() {
                return Err("the exponent of a matrix function is one number".into());
            }
            Ok(rates[0])
        }
        Op::Linalg(l, _) => {
            let (r, c) = rates[0].shape();
            match l {
                Linalg::SortPerm if (r == Dim::One) != (c == Dim::One) => {
                    let n = if r == Dim::One { c } else { r };
                    Ok(Rate::of_shape(n, n))
                }
                Linalg::SortPerm => Err(format!(
                    "`sort_perm` orders the values of one row or one column, not {}",
                    shape(rates[0])
                )),
                Linalg::Eigenbasis if r != c || r == Dim::One => Err(format!(
                    "`eigenbasis` needs a square matrix (rows × rows or cols × cols), not {}",
                    shape(rates[0])
                )),
                Linalg::Qr if !rates[0].is_array() => {
                    Err("`qr` factors a matrix, not a scalar".into())
                }
                _ => Ok(rates[0]),
            }
        }
        Op::Shape(o, _) => {
            let (r, c) = rates[0].shape();
            match o {
                ShapeOp::Wide if rates[0] == Rate::Element => Ok(Rate::of_shape(Dim::Short, Dim::Long)),
                ShapeOp::Wide => Err(format!(
                    "`wide` takes a value of the tensor's shape (rows × cols), not {}",
                    shape(rates[0])
                )),
                ShapeOp::Unwide if (r, c) == (Dim::Short, Dim::Long) => Ok(Rate::Element),
                ShapeOp::Unwide => Err(format!(
                    "`unwide` takes a short × long value (made by `wide`), not {}",
                    shape(rates[0])
                )),
                ShapeOp::LeadCols if c != Dim::One => Ok(Rate::of_shape(r, Dim::Low)),
                ShapeOp::LeadRows if r != Dim::One => Ok(Rate::of_shape(Dim::Low, c)),
                _ => Err(format!(
                    "`{}` takes the leading part of an axis longer than 1, but this value has shape {}",
                    o.name(),
                    shape(rates[0])
                )),
            }
        }
        _ => Err(format!("{op:?} is a leaf")),
    }
}

impl GraphBuilder {
    /// An empty builder that knows the leaf types and rates of `rule`
    /// (for [`GraphBuilder::add_like`]).
    pub fn for_rule(rule: &Rule) -> Self {
        GraphBuilder {
            nodes: Vec::new(),
            dedup: KeyTable::default(),
            leaves: Some(LeafTypes::of(rule)),
        }
    }

    /// Adds any op: leaves take their type and rate from the rule given to
    /// [`GraphBuilder::for_rule`], interior nodes infer theirs.
    pub fn add_like(&mut self, op: Op) -> ValueId {
        if !op.args().is_empty() {
            return self.interior(op);
        }
        let (ty, rate) = self
            .leaves
            .as_ref()
            .expect("add_like needs a builder made by for_rule")
            .of_leaf(op);
        self.add(op, ty, rate)
    }

    /// Adds a node with an explicit type and rate (leaves), or returns the existing one.
    pub fn add(&mut self, op: Op, ty: Ty, rate: Rate) -> ValueId {
        let key = op_key(&op);
        if let Some(&id) = self.dedup.get(&key) {
            return id;
        }
        let id = ValueId(self.nodes.len() as u32);
        self.nodes.push(Node { op, ty, rate });
        self.dedup.insert(key, id);
        id
    }

    /// Adds an interior node, inferring its type and rate from its arguments.
    /// Leaves need [`GraphBuilder::add`], since their rate depends on the rule.
    pub fn interior(&mut self, op: Op) -> ValueId {
        let rates: Vec<Rate> = op
            .args()
            .iter()
            .map(|a| self.nodes[a.index()].rate)
            .collect();
        // Callers check shapes first (`result_rate`); a mismatch cannot get here.
        let rate = result_rate(&op, &rates).unwrap_or(Rate::Element);
        let ty = result_type(self, &op);
        self.add(op, ty, rate)
    }
}

/// Whether a value of rate `rate` can be stored in a state of `kind`:
/// scalars anywhere, arrays where they broadcast to the state's shape.
pub fn fits_state(rate: Rate, kind: StateKind) -> bool {
    !rate.is_array() || kind.rate().is_array() && rate.broadcast(kind.rate()) == Some(kind.rate())
}

/// The type of the value an interior op computes, its arguments in `graph`.
pub fn result_type(graph: &GraphBuilder, op: &Op) -> Ty {
    match *op {
        Op::Unary(u, _) => u.info().result,
        Op::Binary(b, ..) => binary_result(b),
        Op::Select(_, a, _) => graph.nodes[a.index()].ty,
        _ => Ty::Float,
    }
}

/// The result type of a binary operation (from the operation table).
pub fn binary_result(op: BinOp) -> Ty {
    op.info().result
}

/// Builds a checked [`Rule`] from code, without text: what diagram fusion
/// and other generators use instead of printing DSL and parsing it back.
/// Every operation is type-checked as the checker would (numbers versus
/// booleans, reductions over per-element numbers), so a built rule has the
/// invariants of a parsed one.
///
/// ```
/// use lensopt_ir::builder::RuleBuilder;
/// use lensopt_ir::{BinOp, Op};
/// let mut b = RuleBuilder::new("Sgd");
/// let lr = b.hyper("lr", 0.1.into());
/// let (p, g) = (b.param(), b.grad());
/// let step = b.op(Op::Binary(BinOp::Mul, lr, g)).unwrap();
/// let p_new = b.op(Op::Binary(BinOp::Sub, p, step)).unwrap();
/// let rule = b.finish(p_new, &[]).unwrap();
/// assert_eq!(rule.hypers[0].name, "lr");
/// ```
pub struct RuleBuilder {
    rule: Rule,
    graph: GraphBuilder,
}

impl RuleBuilder {
    /// An empty rule called `name`.
    pub fn new(name: &str) -> Self {
        let rule = Rule {
            name: name.to_string(),
            doc: Vec::new(),
            hypers: Vec::new(),
            inputs: Vec::new(),
            states: Vec::new(),
            nodes: Vec::new(),
            view: None,
            param_out: ValueId(0),
            state_out: Vec::new(),
            repeat_counts: Vec::new(),
            low_axis: None,
        };
        RuleBuilder {
            rule,
            graph: GraphBuilder::default(),
        }
    }

    /// Declares a hyperparameter; returns its value.
    pub fn hyper(&mut self, name: &str, default: crate::HyperValue) -> ValueId {
        let i = self.rule.hypers.len() as u16;
        self.rule.hypers.push(HyperDecl {
            name: name.to_string(),
            default,
        });
        let ty = match default {
            crate::HyperValue::Num(_) => Ty::Float,
            crate::HyperValue::Bool(_) => Ty::Bool,
        };
        self.graph.add(Op::Hyper(i), ty, Rate::Step)
    }

    /// Declares an extra per-element input; returns its value.
    pub fn input(&mut self, name: &str, optional: bool) -> ValueId {
        let i = self.rule.inputs.len() as u16;
        self.rule.inputs.push(InputDecl {
            name: name.to_string(),
            optional,
        });
        self.graph.add(Op::Input(i), Ty::Float, Rate::Element)
    }

    /// Declares a state with its initial value (built before, from
    /// constants, hyperparameters and `p`); returns its value at the start
    /// of the step.
    pub fn state(&mut self, name: &str, kind: StateKind, init: ValueId) -> Result<ValueId, String> {
        let node = self.node(init)?;
        if node.ty != Ty::Float || !fits_state(node.rate, kind) {
            return Err(format!(
                "state `{name}`: its initial value does not fit the state"
            ));
        }
        let i = self.rule.states.len() as u16;
        self.rule.states.push(StateDecl {
            name: name.to_string(),
            kind,
            init,
        });
        Ok(self.graph.add(Op::State(i), Ty::Float, kind.rate()))
    }

    /// The parameter `p` at the start of the step.
    pub fn param(&mut self) -> ValueId {
        self.graph.add(Op::Param, Ty::Float, Rate::Element)
    }

    /// The gradient `g`.
    pub fn grad(&mut self) -> ValueId {
        self.graph.add(Op::Grad, Ty::Float, Rate::Element)
    }

    /// The step counter `t`.
    pub fn step(&mut self) -> ValueId {
        self.graph.add(Op::Step, Ty::Float, Rate::Step)
    }

    /// A number.
    pub fn constant(&mut self, x: f64) -> ValueId {
        self.graph.add(Op::Const(x), Ty::Float, Rate::Const)
    }

    fn node(&self, v: ValueId) -> Result<Node, String> {
        self.graph
            .nodes
            .get(v.index())
            .copied()
            .ok_or_else(|| format!("{v} is not a value of this rule"))
    }

    /// Adds an interior operation, checking its arguments' types.
    pub fn op(&mut self, op: Op) -> Result<ValueId, String> {
        let args = op.args();
        if args.is_empty() {
            return Err(format!("{op:?} is a leaf: use the builder's leaf methods"));
        }
        let tys: Vec<Ty> = args
            .iter()
            .map(|a| self.node(*a).map(|n| n.ty))
            .collect::<Result<_, _>>()?;
        let want: Vec<Ty> = match op {
            Op::Unary(u, _) => vec![u.info().operand],
            Op::Binary(b, ..) => vec![b.info().operand; 2],
            Op::Fma(..) => vec![Ty::Float; 3],
            Op::Select(..) => vec![Ty::Bool, tys[1], tys[1]],
            Op::Reduce(ReduceOp::Count, ..) => vec![Ty::Bool],
            Op::Reduce(..)
            | Op::ReduceAxis(..)
            | Op::Transpose(_)
            | Op::Linalg(..)
            | Op::Shape(..) => {
                vec![Ty::Float]
            }
            Op::Matmul(..) | Op::MatFn(..) => vec![Ty::Float; 2],
            _ => return Err(format!("{op:?} is a leaf: use the builder's leaf methods")),
        };
        if tys != want {
            return Err(format!(
                "{op:?}: arguments of types {tys:?}, expected {want:?}"
            ));
        }
        let rates: Vec<Rate> = args
            .iter()
            .map(|a| self.node(*a).map(|n| n.rate))
            .collect::<Result<_, _>>()?;
        result_rate(&op, &rates).map_err(|e| format!("{op:?}: {e}"))?;
        Ok(self.graph.interior(op))
    }

    /// The rule whose update gives `p` the value `param_out` and each
    /// declared state, in order, the value of `state_out`.
    pub fn finish(mut self, param_out: ValueId, state_out: &[ValueId]) -> Result<Rule, String> {
        if self.node(param_out)?.ty != Ty::Float {
            return Err("`p` holds numbers, but its new value is a boolean".into());
        }
        if state_out.len() != self.rule.states.len() {
            return Err(format!(
                "{} new state values for {} states",
                state_out.len(),
                self.rule.states.len()
            ));
        }
        for (v, s) in state_out.iter().zip(&self.rule.states) {
            let node = self.node(*v)?;
            if node.ty != Ty::Float || !fits_state(node.rate, s.kind) {
                return Err(format!(
                    "state `{}`: its new value does not fit the state",
                    s.name
                ));
            }
        }
        self.rule.nodes = self.graph.nodes;
        self.rule.param_out = param_out;
        self.rule.state_out = state_out.to_vec();
        Ok(self.rule.compact())
    }
}
