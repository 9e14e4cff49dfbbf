//! A rule as bytes and back: the form compiled programs are cached in on
//! disk. Every field is written (the doc comment too), so `decode(encode(r))`
//! is `r`. Decoding checks everything it reads (lengths against the bytes
//! left, indices against what they index, arguments defined before their
//! use), so any input gives a rule or an error, never a panic or an
//! allocation larger than the input. It is the form on disk of the
//! program cache and the form `optimizer!` compiles rules into a crate in.

use crate::hyper::HyperValue;
use crate::rule::*;

/// Why bytes are not an encoded rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not an encoded rule: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const MAGIC: &[u8; 4] = b"LOR1";

const REDUCTIONS: [ReduceOp; 5] = [
    ReduceOp::Sum,
    ReduceOp::Mean,
    ReduceOp::MaxAbs,
    ReduceOp::Norm,
    ReduceOp::Count,
];

const DIMS: [Dim; 6] = [
    Dim::One,
    Dim::Rows,
    Dim::Cols,
    Dim::Short,
    Dim::Long,
    Dim::Low,
];

fn dim_code(d: Dim) -> u8 {
    d as u8
}

/// The bytes of `rule`.
pub fn encode(rule: &Rule) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(MAGIC);
    text(&mut w, &rule.name);
    put_count(&mut w, rule.doc.len());
    for line in &rule.doc {
        text(&mut w, line);
    }
    put_count(&mut w, rule.hypers.len());
    for h in &rule.hypers {
        text(&mut w, &h.name);
        match h.default {
            HyperValue::Num(x) => {
                w.push(0);
                w.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            HyperValue::Bool(b) => w.push(1 + u8::from(b)),
        }
    }
    put_count(&mut w, rule.inputs.len());
    for i in &rule.inputs {
        text(&mut w, &i.name);
        w.push(u8::from(i.optional));
    }
    put_count(&mut w, rule.states.len());
    for s in &rule.states {
        text(&mut w, &s.name);
        match s.kind {
            StateKind::Element => w.push(0),
            StateKind::Scalar => w.push(1),
            StateKind::Array(r, c) => w.extend_from_slice(&[2, dim_code(r), dim_code(c)]),
        }
        id(&mut w, s.init);
    }
    put_count(&mut w, rule.nodes.len());
    for n in &rule.nodes {
        let (tag, a, b, c, d) = crate::builder::op_key(&n.op);
        w.push(tag);
        w.extend_from_slice(&a.to_le_bytes());
        for x in [b, c, d] {
            w.extend_from_slice(&x.to_le_bytes());
        }
        w.push(match n.ty {
            Ty::Float => 0,
            Ty::Bool => 1,
        });
        match n.rate {
            Rate::Const => w.push(0),
            Rate::Step => w.push(1),
            Rate::Tensor => w.push(2),
            Rate::Element => w.push(3),
            Rate::Array(r, c) => w.extend_from_slice(&[4, dim_code(r), dim_code(c)]),
        }
    }
    match rule.view {
        Some(v) => {
            w.push(1);
            id(&mut w, v);
        }
        None => w.push(0),
    }
    id(&mut w, rule.param_out);
    for v in &rule.state_out {
        id(&mut w, *v);
    }
    put_count(&mut w, rule.repeat_counts.len());
    for (h, bound) in &rule.repeat_counts {
        w.extend_from_slice(&h.to_le_bytes());
        w.extend_from_slice(&bound.to_le_bytes());
    }
    match rule.low_axis {
        Some(h) => {
            w.push(1);
            w.extend_from_slice(&h.to_le_bytes());
        }
        None => w.push(0),
    }
    w
}

/// Writes a count as a little-endian `u32`.
pub fn put_count(w: &mut Vec<u8>, n: usize) {
    w.extend_from_slice(&(n as u32).to_le_bytes());
}

/// Writes a length-prefixed run of bytes ([`Reader::bytes`] reads it).
pub fn put_bytes(w: &mut Vec<u8>, bytes: &[u8]) {
    put_count(w, bytes.len());
    w.extend_from_slice(bytes);
}

fn text(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

/// 64-bit FNV-1a of `bytes`, the hash [`Rule::structural_hash`] uses.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    crate::rule::fnv1a(bytes)
}

fn id(w: &mut Vec<u8>, v: ValueId) {
    w.extend_from_slice(&v.0.to_le_bytes());
}

/// Reads little-endian fields front to back, every length checked
/// against the bytes left (shared with the program cache's files).
pub struct Reader<'a> {
    /// The bytes not read yet.
    pub bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError("it ends early".into()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// A `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items each at least `min_bytes` long: never more than
    /// the bytes left could hold.
    pub fn count(&mut self, min_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes) > self.bytes.len() {
            return Err(DecodeError(format!(
                "a count of {n} exceeds the bytes left"
            )));
        }
        Ok(n)
    }

    /// A length-prefixed run of bytes (written by [`put_bytes`]).
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.count(1)?;
        self.take(n)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| DecodeError("a name is not UTF-8".into()))
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError(format!("{b} is not a truth value"))),
        }
    }
}

fn pick<T: Copy>(
    all: &[T],
    index: u64,
    what: &str,
    as_index: impl Fn(T) -> u64,
) -> Result<T, DecodeError> {
    all.iter()
        .copied()
        .find(|x| as_index(*x) == index)
        .ok_or_else(|| DecodeError(format!("{index} is not a {what}")))
}

fn dim(r: &mut Reader<'_>) -> Result<Dim, DecodeError> {
    let code = r.u8()?;
    pick(&DIMS, u64::from(code), "axis", |d| u64::from(dim_code(d)))
}

/// The rule `bytes` encode.
pub fn decode(bytes: &[u8]) -> Result<Rule, DecodeError> {
    let mut r = Reader { bytes };
    if r.take(4)? != MAGIC {
        return Err(DecodeError("wrong magic number".into()));
    }
    let name = r.text()?;
    let doc = (0..r.count(4)?)
        .map(|_| r.text())
        .collect::<Result<_, _>>()?;
    let mut hypers = Vec::new();
    for _ in 0..r.count(5)? {
        let name = r.text()?;
        let default = match r.u8()? {
            0 => HyperValue::Num(f64::from_bits(r.u64()?)),
            1 => HyperValue::Bool(false),
            2 => HyperValue::Bool(true),
            t => return Err(DecodeError(format!("{t} is not a hyperparameter kind"))),
        };
        hypers.push(HyperDecl { name, default });
    }
    let mut inputs = Vec::new();
    for _ in 0..r.count(5)? {
        let name = r.text()?;
        inputs.push(InputDecl {
            name,
            optional: r.bool()?,
        });
    }
    let mut states = Vec::new();
    for _ in 0..r.count(9)? {
        let name = r.text()?;
        let kind = match r.u8()? {
            0 => StateKind::Element,
            1 => StateKind::Scalar,
            2 => StateKind::Array(dim(&mut r)?, dim(&mut r)?),
            t => return Err(DecodeError(format!("{t} is not a state kind"))),
        };
        states.push(StateDecl {
            name,
            kind,
            init: ValueId(r.u32()?),
        });
    }
    let node_count = r.count(23)?;
    let mut nodes: Vec<Node> = Vec::with_capacity(node_count);
    for index in 0..node_count {
        let tag = r.u8()?;
        let a = r.u64()?;
        let (b, c, d) = (r.u32()?, r.u32()?, r.u32()?);
        let arg = |x: u32| {
            if (x as usize) < index {
                Ok(ValueId(x))
            } else {
                Err(DecodeError(format!(
                    "node {index} uses %{x} before it is defined"
                )))
            }
        };
        let small = |x: u64, len: usize, what: &str| {
            if (x as usize) < len && x <= u64::from(u16::MAX) {
                Ok(x as u16)
            } else {
                Err(DecodeError(format!(
                    "node {index} names {what} {x} of {len}"
                )))
            }
        };
        let op = match tag {
            0 => Op::Const(f64::from_bits(a)),
            1 => Op::ConstBool(a != 0),
            2 => Op::Hyper(small(a, hypers.len(), "hyperparameter")?),
            3 => Op::Step,
            4 => Op::Present(small(a, inputs.len(), "input")?),
            5 => Op::Numel,
            6 => Op::Param,
            7 => Op::Grad,
            8 => Op::Input(small(a, inputs.len(), "input")?),
            9 => Op::State(small(a, states.len(), "state")?),
            10 => Op::Unary(
                pick(&UnOp::ALL, a, "unary operation", |u| u as u64)?,
                arg(b)?,
            ),
            11 => Op::Binary(
                pick(&BinOp::ALL, a, "binary operation", |o| o as u64)?,
                arg(b)?,
                arg(c)?,
            ),
            12 => Op::Select(arg(b)?, arg(c)?, arg(d)?),
            13 => Op::Fma(arg(b)?, arg(c)?, arg(d)?),
            14 => {
                let op = pick(&REDUCTIONS, a / 2, "reduction", |o| o as u64)?;
                let scope = if a % 2 == 0 {
                    Scope::Tensor
                } else {
                    Scope::Global
                };
                Op::Reduce(op, scope, arg(b)?)
            }
            15 => Op::Extent(pick(&DIMS, a, "axis", |d| u64::from(dim_code(d)))?),
            16 => Op::Eye(pick(&DIMS, a, "axis", |d| u64::from(dim_code(d)))?),
            17 => {
                let op = pick(&REDUCTIONS, a / 2, "reduction", |o| o as u64)?;
                let axis = if a % 2 == 0 { Axis::Row } else { Axis::Col };
                Op::ReduceAxis(op, axis, arg(b)?)
            }
            18 => Op::Matmul(arg(b)?, arg(c)?),
            19 => Op::Transpose(arg(b)?),
            20 => Op::MatFn(
                pick(&[MatFn::Pow], a, "matrix function", |m| m as u64)?,
                arg(b)?,
                arg(c)?,
            ),
            21 => Op::MachineEps,
            22 => Op::Rank,
            23 => {
                let all = [Linalg::Eigenbasis, Linalg::Qr, Linalg::SortPerm];
                Op::Linalg(pick(&all, a, "factorisation", |l| l as u64)?, arg(b)?)
            }
            24 => {
                let all = [
                    ShapeOp::Wide,
                    ShapeOp::Unwide,
                    ShapeOp::LeadCols,
                    ShapeOp::LeadRows,
                ];
                Op::Shape(pick(&all, a, "change of shape", |o| o as u64)?, arg(b)?)
            }
            t => {
                return Err(DecodeError(format!(
                    "node {index}: {t} is not an operation"
                )))
            }
        };
        let ty = match r.u8()? {
            0 => Ty::Float,
            1 => Ty::Bool,
            t => return Err(DecodeError(format!("{t} is not a type"))),
        };
        let rate = match r.u8()? {
            0 => Rate::Const,
            1 => Rate::Step,
            2 => Rate::Tensor,
            3 => Rate::Element,
            4 => Rate::Array(dim(&mut r)?, dim(&mut r)?),
            t => return Err(DecodeError(format!("{t} is not a rate"))),
        };
        nodes.push(Node { op, ty, rate });
    }
    let defined = |v: u32| {
        if (v as usize) < nodes.len() {
            Ok(ValueId(v))
        } else {
            Err(DecodeError(format!("%{v} is not a node")))
        }
    };
    let view = if r.bool()? {
        Some(defined(r.u32()?)?)
    } else {
        None
    };
    let param_out = defined(r.u32()?)?;
    let mut state_out = Vec::with_capacity(states.len());
    for _ in 0..states.len() {
        state_out.push(defined(r.u32()?)?);
    }
    for s in &states {
        defined(s.init.0)?;
    }
    let mut repeat_counts = Vec::new();
    for _ in 0..r.count(6)? {
        repeat_counts.push((r.u16()?, r.u32()?));
    }
    let low_axis = if r.bool()? { Some(r.u16()?) } else { None };
    if !r.bytes.is_empty() {
        return Err(DecodeError(format!(
            "{} bytes follow the rule",
            r.bytes.len()
        )));
    }
    Ok(Rule {
        name,
        doc,
        hypers,
        inputs,
        states,
        nodes,
        view,
        param_out,
        state_out,
        repeat_counts,
        low_axis,
    })
}
