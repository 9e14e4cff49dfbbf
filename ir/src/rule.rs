//! The typed IR of a rule: an SSA graph of values, each with a type and a rate.
//!
//! A [`Rule`] is what every later stage consumes (interpreter, e-graph,
//! backends). Its invariants, established by the front end's checker
//! (`lensopt_frontend::check`) and by [`crate::builder`]:
//! - `nodes` are in topological order: a node's arguments have smaller ids;
//! - every node's `ty` and `rate` are consistent with its op and arguments
//!   (the rate of a compound value is the highest rate of its arguments);
//! - the arguments of `Reduce` are element-rate values, its result is
//!   tensor-rate; per-step values never depend on tensor or element values;
//! - outputs of element state and `p` may have any rate, outputs of scalar
//!   state have at most tensor rate;
//! - identical nodes are shared (the graph is hash-consed).
//!
//! The textual form printed by `Display` is stable: snapshot tests and
//! `lensopt check` show it.

use crate::builder::GraphBuilder;
use crate::hyper::HyperValue;
use std::fmt;

/// Index of a node in [`Rule::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    /// The index as usize.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One axis of a value's shape, in terms of the tensor being updated
/// (seen as a matrix of `rows × cols`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    /// Length 1 (broadcast along this axis).
    One,
    /// The tensor's number of rows.
    Rows,
    /// The tensor's number of columns.
    Cols,
    /// The shorter side, `min(rows, cols)`: the rows of `wide(x)`.
    Short,
    /// The longer side, `max(rows, cols)`: the columns of `wide(x)`.
    Long,
    /// The low rank `min(k, rows, cols)` for the hyperparameter `k` of the
    /// rule's `axis low = k;` declaration ([`Rule::low_axis`]).
    Low,
}

impl Dim {
    /// `1`, `rows`, `cols`, `short`, `long` or `low`.
    pub fn name(self) -> &'static str {
        match self {
            Dim::One => "1",
            Dim::Rows => "rows",
            Dim::Cols => "cols",
            Dim::Short => "short",
            Dim::Long => "long",
            Dim::Low => "low",
        }
    }

    /// The axis called `name` in a shape (`[low, long]`), if any.
    pub fn from_name(name: &str) -> Option<Dim> {
        [Dim::Rows, Dim::Cols, Dim::Short, Dim::Long, Dim::Low]
            .into_iter()
            .find(|d| d.name() == name)
    }

    /// The length of this axis on a tensor of extents `e`.
    pub fn len(self, e: Extents) -> usize {
        match self {
            Dim::One => 1,
            Dim::Rows => e.rows,
            Dim::Cols => e.cols,
            Dim::Short => e.rows.min(e.cols),
            Dim::Long => e.rows.max(e.cols),
            Dim::Low => e.low,
        }
    }
}

/// The lengths a matrix rule's axes take on one tensor: its `rows × cols`
/// and the low rank (0 for a rule without a low axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extents {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// The low axis, `min(k, rows, cols)`.
    pub low: usize,
}

/// How often a value changes, from slowest to fastest. Code generation
/// computes a value once per unit of its rate: constants at compile time,
/// step values once per step (and parameter group), tensor values once per
/// tensor and step, element values once per element.
///
/// `Array` values are matrices whose shape is not the tensor's own: one
/// value per row (`rows × 1`), per column (`1 × cols`), or a square or
/// transposed matrix (`rows × rows`, `cols × rows`...). The shape
/// `rows × cols` is always written `Element` and `1 × 1` is a scalar
/// rate, so each shape has one spelling. Rules with `Array` values (or
/// matrix operations) are *matrix rules*, run by [`crate::matrix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rate {
    /// Known when the rule is compiled.
    Const,
    /// Once per step: hyperparameters, `t`, and scalars made from them.
    Step,
    /// Once per tensor per step: reductions, scalar state, `numel()`.
    Tensor,
    /// Once per entry of a `rows × cols` array of another shape than the tensor's.
    Array(Dim, Dim),
    /// Once per element.
    Element,
}

impl Rate {
    /// Lower-case name used in the textual IR and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Rate::Const => "const",
            Rate::Step => "step",
            Rate::Tensor => "tensor",
            Rate::Array(Dim::Rows, Dim::One) => "row",
            Rate::Array(Dim::One, Dim::Cols) => "col",
            Rate::Array(Dim::Rows, Dim::Rows) => "rows×rows",
            Rate::Array(Dim::Cols, Dim::Cols) => "cols×cols",
            Rate::Array(Dim::Cols, Dim::Rows) => "cols×rows",
            Rate::Array(Dim::One, Dim::Rows) => "1×rows",
            Rate::Array(Dim::Cols, Dim::One) => "cols×1",
            Rate::Array(..) => "array",
            Rate::Element => "element",
        }
    }

    /// The shape of a value of this rate (`1 × 1` for scalars).
    pub fn shape(self) -> (Dim, Dim) {
        match self {
            Rate::Const | Rate::Step | Rate::Tensor => (Dim::One, Dim::One),
            Rate::Array(r, c) => (r, c),
            Rate::Element => (Dim::Rows, Dim::Cols),
        }
    }

    /// True for values with more than one entry per tensor.
    pub fn is_array(self) -> bool {
        matches!(self, Rate::Array(..) | Rate::Element)
    }

    /// The rate of an array of shape `(r, c)`: `Element` for the tensor's
    /// own shape, `Tensor` for `1 × 1`.
    pub fn of_shape(r: Dim, c: Dim) -> Rate {
        match (r, c) {
            (Dim::One, Dim::One) => Rate::Tensor,
            (Dim::Rows, Dim::Cols) => Rate::Element,
            _ => Rate::Array(r, c),
        }
    }

    /// The rate of a value computed from operands of rates `self` and
    /// `other`, broadcasting axes of length 1 as NumPy does; `None` when
    /// the shapes do not broadcast (`rows × rows` with `rows × cols`).
    pub fn broadcast(self, other: Rate) -> Option<Rate> {
        if !self.is_array() || !other.is_array() {
            return Some(if self.is_array() {
                self
            } else if other.is_array() {
                other
            } else {
                self.max(other)
            });
        }
        let axis = |a: Dim, b: Dim| match (a, b) {
            (Dim::One, x) | (x, Dim::One) => Some(x),
            (x, y) if x == y => Some(x),
            _ => None,
        };
        let (ar, ac) = self.shape();
        let (br, bc) = other.shape();
        Some(Rate::of_shape(axis(ar, br)?, axis(ac, bc)?))
    }
}

/// The type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    /// A real number (the element type for element values, f64 for scalars).
    Float,
    /// A truth value (comparisons, masks, boolean hyperparameters).
    Bool,
}

impl Ty {
    /// `"f"` or `"bool"`.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Float => "f",
            Ty::Bool => "bool",
        }
    }
}

/// Unary operations. Signatures: `f -> f` except `Not : bool -> bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    /// `-x`
    Neg,
    /// `sqrt(x)`
    Sqrt,
    /// `1 / sqrt(x)`
    Rsqrt,
    /// `|x|`
    Abs,
    /// `sign(x)`: -1, 0 or 1 (NaN stays NaN), as `torch.sign`.
    Sign,
    /// `e^x`
    Exp,
    /// natural logarithm
    Ln,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// `cos(x)` (radians).
    Cos,
    /// `floor(x)`: the largest integer not above `x`.
    Floor,
    /// `f32(x)`: `x` rounded to the nearest f32 (ties to even; the identity
    /// on f32 elements). The optimizer moves no arithmetic across it.
    RoundF32,
    /// `bf16(x)`: `x` rounded to f32, then to the nearest bfloat16 (ties to
    /// even), as PyTorch converts.
    RoundBf16,
    /// `!b`
    Not,
    /// `e^x` with fused multiply-adds (`lensopt_ir::elementary::exp_fma_f64`):
    /// what [`crate::optimize::Mode::Fast`] computes for an element's `exp`.
    /// Last, so that the encoding of the other operations is unchanged.
    ExpFma,
}

/// Binary operations. Arithmetic: `f x f -> f`; comparisons:
/// `f x f -> bool`; `And`, `Or`: `bool x bool -> bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b` (powf)
    Pow,
    /// `min(a, b)`, NaN-propagating, -0 < +0 (IEEE 754-2019 minimum).
    Min,
    /// `max(a, b)`, NaN-propagating, -0 < +0 (IEEE 754-2019 maximum).
    Max,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
    /// `a && b`
    And,
    /// `a || b`
    Or,
}

/// What a reduction computes over the elements of its argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Sum divided by the element count.
    Mean,
    /// Largest absolute value (NaN if any element is NaN).
    MaxAbs,
    /// Euclidean norm: square root of the sum of squares.
    Norm,
    /// Number of true elements of a mask.
    Count,
}

/// Which axis a reduction along an axis keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// One result per row (reducing along each row): `sum_rows(x)`.
    Row,
    /// One result per column (reducing down each column): `sum_cols(x)`.
    Col,
}

/// Functions of a symmetric matrix, computed from its eigendecomposition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatFn {
    /// `sym_pow(A, e)`: `Q diag(λ^e) Qᵀ`.
    Pow,
}

/// Factorisations of a matrix, computed in f64 (and rounded to the element
/// type once). Each result is made unique where the mathematics leaves a
/// choice: eigenvectors and `Q` columns have their signs fixed, ties keep
/// their index order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Linalg {
    /// `eigenbasis(A)`: the orthonormal eigenvectors of the symmetric
    /// square matrix `A`, as columns by descending eigenvalue, each with
    /// its entry of largest magnitude positive.
    Eigenbasis,
    /// `qr(A)`: the factor `Q` of `A = Q R` for an `r × c` matrix with
    /// `r ≥ c` (`Q` is `r × c` with orthonormal columns), with `R`'s
    /// diagonal non-negative.
    Qr,
    /// `sort_perm(v)`: for `n` values (a row `1 × n` or a column `n × 1`),
    /// the `n × n` permutation matrix `P` with `x @ P` taking the columns
    /// of `x` in the order of `v` descending (a stable sort).
    SortPerm,
}

impl Linalg {
    /// The DSL spelling.
    pub fn name(self) -> &'static str {
        match self {
            Linalg::Eigenbasis => "eigenbasis",
            Linalg::Qr => "qr",
            Linalg::SortPerm => "sort_perm",
        }
    }
}

/// Operations that change a value's shape without arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShapeOp {
    /// `wide(x)`: the tensor-shaped `x` as `short × long` (transposed when
    /// `rows ≥ cols`, so a square matrix is transposed).
    Wide,
    /// `unwide(x)`: a `short × long` value back to `rows × cols`.
    Unwide,
    /// `lead_cols(x)`: the first `low` columns of `x`.
    LeadCols,
    /// `lead_rows(x)`: the first `low` rows of `x`.
    LeadRows,
}

impl ShapeOp {
    /// The DSL spelling.
    pub fn name(self) -> &'static str {
        match self {
            ShapeOp::Wide => "wide",
            ShapeOp::Unwide => "unwide",
            ShapeOp::LeadCols => "lead_cols",
            ShapeOp::LeadRows => "lead_rows",
        }
    }
}

/// Over which elements a reduction runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The elements of the tensor being updated.
    Tensor,
    /// All elements of all tensors of the step (every parameter group), as
    /// global-norm gradient clipping needs.
    Global,
}

/// One operation of the IR.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// A number. `: const f`
    Const(f64),
    /// A truth value. `: const bool`
    ConstBool(bool),
    /// Hyperparameter `i` of [`Rule::hypers`]. `: step`
    Hyper(u16),
    /// The step counter `t` (1 on the first step). `: step f`
    Step,
    /// Whether optional input `i` is supplied at this step. `: step bool`
    Present(u16),
    /// The number of elements of the tensor. `: tensor f`
    Numel,
    /// The parameter `p` at the start of the step. `: element f`
    Param,
    /// The gradient `g`. `: element f`
    Grad,
    /// Extra input `i` of [`Rule::inputs`] (0 where an optional input is absent). `: element f`
    Input(u16),
    /// State `i` of [`Rule::states`] at the start of the step. `: element f` or `: tensor f`
    State(u16),
    /// A unary operation.
    Unary(UnOp, ValueId),
    /// A binary operation.
    Binary(BinOp, ValueId, ValueId),
    /// `select(c, a, b)`: `a` where `c` holds, else `b`.
    Select(ValueId, ValueId, ValueId),
    /// `fma(a, b, c) = a * b + c` with one rounding.
    Fma(ValueId, ValueId, ValueId),
    /// A reduction of an element (or array) value to a tensor-rate scalar.
    Reduce(ReduceOp, Scope, ValueId),
    /// The tensor's number of rows or columns. `: tensor f`
    Extent(Dim),
    /// The tensor's rank (number of axes). `: tensor f`
    Rank,
    /// The identity matrix of `rows × rows` or `cols × cols`.
    Eye(Dim),
    /// The machine epsilon of the element type (2^-23 for f32, 2^-52 for
    /// f64), as PyTorch's `finfo(dtype).eps`. `: step f`
    MachineEps,
    /// A reduction along one axis of an array: one value per row or per column.
    ReduceAxis(ReduceOp, Axis, ValueId),
    /// The matrix product `a @ b`, accumulated in the element type.
    Matmul(ValueId, ValueId),
    /// The transpose of an array.
    Transpose(ValueId),
    /// A function of a symmetric matrix and a scalar (`sym_pow(A, e)`).
    MatFn(MatFn, ValueId, ValueId),
    /// A factorisation of a matrix (`eigenbasis`, `qr`, `sort_perm`).
    Linalg(Linalg, ValueId),
    /// A change of shape (`wide`, `unwide`, `lead_cols`, `lead_rows`).
    Shape(ShapeOp, ValueId),
}

impl Op {
    /// The same operation with every argument replaced by `f(argument)`.
    pub fn map_args(self, f: impl Fn(ValueId) -> ValueId) -> Op {
        match self {
            Op::Unary(u, a) => Op::Unary(u, f(a)),
            Op::Binary(b, x, y) => Op::Binary(b, f(x), f(y)),
            Op::Select(c, a, b) => Op::Select(f(c), f(a), f(b)),
            Op::Fma(a, b, c) => Op::Fma(f(a), f(b), f(c)),
            Op::Reduce(r, s, a) => Op::Reduce(r, s, f(a)),
            Op::ReduceAxis(r, x, a) => Op::ReduceAxis(r, x, f(a)),
            Op::Matmul(a, b) => Op::Matmul(f(a), f(b)),
            Op::Transpose(a) => Op::Transpose(f(a)),
            Op::Linalg(l, a) => Op::Linalg(l, f(a)),
            Op::Shape(o, a) => Op::Shape(o, f(a)),
            Op::MatFn(m, a, b) => Op::MatFn(m, f(a), f(b)),
            leaf => leaf,
        }
    }

    /// The argument values of the operation.
    pub fn args(&self) -> Vec<ValueId> {
        match *self {
            Op::Unary(_, a)
            | Op::Reduce(_, _, a)
            | Op::ReduceAxis(_, _, a)
            | Op::Transpose(a)
            | Op::Linalg(_, a)
            | Op::Shape(_, a) => vec![a],
            Op::Binary(_, a, b) | Op::Matmul(a, b) | Op::MatFn(_, a, b) => vec![a, b],
            Op::Select(a, b, c) | Op::Fma(a, b, c) => vec![a, b, c],
            _ => Vec::new(),
        }
    }
}

/// A node: an operation with its inferred type and rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Its type.
    pub ty: Ty,
    /// Its rate.
    pub rate: Rate,
}

/// A declared hyperparameter.
#[derive(Clone, Debug, PartialEq)]
pub struct HyperDecl {
    /// Name as written.
    pub name: String,
    /// Declared default (its variant fixes the type).
    pub default: HyperValue,
}

/// A declared extra per-element input (besides `p` and `g`).
#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    /// Name as written.
    pub name: String,
    /// True when the input may be absent at a step.
    pub optional: bool,
}

/// Whether a state variable holds a value per element, per tensor, or an
/// array of another shape (per row, per column, a square matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// One value per element (moments, accumulators).
    Element,
    /// One value per tensor.
    Scalar,
    /// An array of the given shape, neither `rows × cols` nor `1 × 1`.
    Array(Dim, Dim),
}

impl StateKind {
    /// The rate of the state's values.
    pub fn rate(self) -> Rate {
        match self {
            StateKind::Element => Rate::Element,
            StateKind::Scalar => Rate::Tensor,
            StateKind::Array(r, c) => Rate::Array(r, c),
        }
    }

    /// The number of values the state holds on a tensor of `numel`
    /// elements and extents `e` (`None` when that overflows).
    pub fn len(self, numel: usize, e: Extents) -> Option<usize> {
        match self {
            StateKind::Element => Some(numel),
            StateKind::Scalar => Some(1),
            StateKind::Array(r, c) => r.len(e).checked_mul(c.len(e)),
        }
    }
}

/// A declared state variable.
#[derive(Clone, Debug, PartialEq)]
pub struct StateDecl {
    /// Name as written.
    pub name: String,
    /// Per element or per tensor.
    pub kind: StateKind,
    /// Initial value, computed from constants, hyperparameters, `p` and
    /// earlier states' initial values when the state is created.
    pub init: ValueId,
}

/// A checked optimizer rule in IR form.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The optimizer's name as declared (`Adam`).
    pub name: String,
    /// The doc comment, one entry per line.
    pub doc: Vec<String>,
    /// Hyperparameters in declaration order.
    pub hypers: Vec<HyperDecl>,
    /// Extra inputs in declaration order.
    pub inputs: Vec<InputDecl>,
    /// State variables in declaration order.
    pub states: Vec<StateDecl>,
    /// All values, topologically ordered (see the module invariants).
    pub nodes: Vec<Node>,
    /// What the model sees of the parameter (the lens's forward part);
    /// `None` means `p` itself.
    pub view: Option<ValueId>,
    /// The parameter after the step.
    pub param_out: ValueId,
    /// Each state variable after the step, in declaration order.
    pub state_out: Vec<ValueId>,
    /// Hyperparameters that count the iterations of a `repeat` block, with
    /// the most iterations the block was unrolled to: their values must be
    /// whole numbers from 0 to that bound ([`Rule::check_hypers`]).
    pub repeat_counts: Vec<(u16, u32)>,
    /// The hyperparameter of `axis low = k;`: the low axis ([`Dim::Low`])
    /// is `min(k, rows, cols)` long on each tensor.
    pub low_axis: Option<u16>,
}

impl Rule {
    /// The node of a value.
    pub fn node(&self, id: ValueId) -> &Node {
        &self.nodes[id.index()]
    }

    /// Index of the hyperparameter called `name`.
    pub fn hyper_index(&self, name: &str) -> Option<usize> {
        self.hypers.iter().position(|h| h.name == name)
    }

    /// Index of the input called `name`.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|i| i.name == name)
    }

    /// Index of the state called `name`.
    pub fn state_index(&self, name: &str) -> Option<usize> {
        self.states.iter().position(|s| s.name == name)
    }

    /// The declared defaults, in declaration order.
    pub fn default_hypers(&self) -> Vec<HyperValue> {
        self.hypers.iter().map(|h| h.default).collect()
    }

    /// Ids of all reductions, in evaluation order.
    pub fn reductions(&self) -> Vec<ValueId> {
        (0..self.nodes.len() as u32)
            .map(ValueId)
            .filter(|&id| matches!(self.node(id).op, Op::Reduce(..)))
            .collect()
    }

    /// Marks every node that `roots` depend on (the roots included).
    pub fn reachable(&self, roots: &[ValueId]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for r in roots {
            live[r.index()] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for a in self.nodes[i].op.args() {
                    live[a.index()] = true;
                }
            }
        }
        live
    }

    /// The values the step computes: `p` and the states after the step.
    pub fn step_roots(&self) -> Vec<ValueId> {
        let mut roots = vec![self.param_out];
        roots.extend(self.state_out.iter().copied());
        roots
    }

    /// Drops nodes that no output uses and renumbers the rest, keeping order.
    pub fn compact(self) -> Rule {
        let mut rule = self;
        let mut roots = rule.step_roots();
        roots.extend(rule.states.iter().map(|s| s.init));
        roots.extend(rule.view);
        let live = rule.reachable(&roots);
        let mut remap = vec![ValueId(u32::MAX); rule.nodes.len()];
        let mut nodes = Vec::new();
        for (i, node) in rule.nodes.iter().enumerate() {
            if !live[i] {
                continue;
            }
            remap[i] = ValueId(nodes.len() as u32);
            let op = node.op.map_args(|v| remap[v.index()]);
            nodes.push(Node { op, ..*node });
        }
        let m = |v: ValueId| remap[v.index()];
        rule.nodes = nodes;
        rule.param_out = m(rule.param_out);
        rule.state_out = rule.state_out.iter().map(|&v| m(v)).collect();
        rule.view = rule.view.map(m);
        for s in &mut rule.states {
            s.init = m(s.init);
        }
        rule
    }

    /// Rebuilds the graph node by node: `rewrite` receives each op with its
    /// arguments already renumbered and adds its replacement to the
    /// builder (leaves with [`GraphBuilder::add_like`]). Roots, initial
    /// values and the view follow their nodes; dead nodes are dropped.
    pub fn rebuild(self, mut rewrite: impl FnMut(&mut GraphBuilder, Op) -> ValueId) -> Rule {
        let mut graph = GraphBuilder::for_rule(&self);
        let mut remap: Vec<ValueId> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let op = node.op.map_args(|v| remap[v.index()]);
            let id = rewrite(&mut graph, op);
            remap.push(id);
        }
        let m = |v: ValueId| remap[v.index()];
        let mut rule = self;
        rule.param_out = m(rule.param_out);
        rule.state_out = rule.state_out.iter().map(|&v| m(v)).collect();
        rule.view = rule.view.map(m);
        for s in &mut rule.states {
            s.init = m(s.init);
        }
        rule.nodes = graph.nodes;
        rule.compact()
    }

    /// A hash of everything that makes up the rule (name, declarations,
    /// nodes, outputs; not the doc comment), stable across processes and
    /// builds: FNV-1a over a canonical encoding. Equal rules hash equally.
    pub fn structural_hash(&self) -> u64 {
        let mut h = Fnv::default();
        h.text(&self.name);
        for d in &self.hypers {
            h.text(&d.name);
            match d.default {
                HyperValue::Num(x) => h.word(x.to_bits()),
                HyperValue::Bool(b) => h.word(2 + u64::from(b)),
            }
        }
        for i in &self.inputs {
            h.text(&i.name);
            h.word(u64::from(i.optional));
        }
        for s in &self.states {
            h.text(&s.name);
            h.word(match s.kind {
                StateKind::Element => 0,
                StateKind::Scalar => 1,
                StateKind::Array(r, c) => 2 + 3 * r as u64 + 9 * c as u64,
            });
            h.word(u64::from(s.init.0));
        }
        h.word(self.nodes.len() as u64);
        for n in &self.nodes {
            let (tag, a, b, c, d) = crate::builder::op_key(&n.op);
            let rate = match n.rate {
                Rate::Const => 0,
                Rate::Step => 1,
                Rate::Tensor => 2,
                Rate::Element => 3,
                Rate::Array(r, c) => 4 + 3 * r as u64 + 9 * c as u64,
            };
            h.word(u64::from(tag) | rate << 8 | (n.ty as u64) << 16);
            h.word(a);
            h.word(u64::from(b) | u64::from(c) << 32);
            h.word(u64::from(d));
        }
        h.word(self.view.map_or(u64::MAX, |v| u64::from(v.0)));
        h.word(u64::from(self.param_out.0));
        for v in &self.state_out {
            h.word(u64::from(v.0));
        }
        for (hyper, bound) in &self.repeat_counts {
            h.word(u64::from(*hyper) << 32 | u64::from(*bound));
        }
        h.word(self.low_axis.map_or(u64::MAX, u64::from));
        h.0
    }

    /// Equality of everything [`Rule::structural_hash`] covers (all but the doc comment).
    pub fn same_structure(&self, other: &Rule) -> bool {
        self.name == other.name
            && self.hypers == other.hypers
            && self.inputs == other.inputs
            && self.states == other.states
            && self.nodes == other.nodes
            && self.view == other.view
            && self.param_out == other.param_out
            && self.state_out == other.state_out
            && self.repeat_counts == other.repeat_counts
            && self.low_axis == other.low_axis
    }

    /// True for a *matrix rule*: one that sees the tensor as a matrix
    /// (values per row or column, matrix products, `rows()`...). Matrix
    /// rules need tensors of rank 2 or more and run on [`crate::matrix`].
    pub fn is_matrix(&self) -> bool {
        self.nodes.iter().any(|n| {
            matches!(n.rate, Rate::Array(..))
                || matches!(
                    n.op,
                    Op::Extent(_)
                        | Op::Rank
                        | Op::Eye(_)
                        | Op::MachineEps
                        | Op::ReduceAxis(..)
                        | Op::Matmul(..)
                        | Op::Transpose(_)
                        | Op::MatFn(..)
                        | Op::Linalg(..)
                        | Op::Shape(..)
                )
        }) || self
            .states
            .iter()
            .any(|s| matches!(s.kind, StateKind::Array(..)))
    }

    /// True when the rule reads `ndim()`: it then says itself what it does
    /// with each rank, and a matrix rule takes vectors as `1 × n` matrices.
    pub fn reads_rank(&self) -> bool {
        self.nodes.iter().any(|n| n.op == Op::Rank)
    }

    /// Refuses hyperparameter values the rule cannot honour: a `repeat`
    /// count that is not a whole number from 0 to its block's bound (which
    /// would otherwise run a different number of iterations than asked).
    pub fn check_hypers(&self, values: &[HyperValue]) -> Result<(), String> {
        if let Some(h) = self.low_axis {
            if let Some(HyperValue::Num(x)) = values.get(h as usize) {
                if !(x.fract() == 0.0 && *x >= 1.0) {
                    return Err(format!(
                        "hyperparameter `{}` is the length of the low axis: it takes a whole number of at least 1, not {x}",
                        self.hypers[h as usize].name
                    ));
                }
            }
        }
        for &(h, bound) in &self.repeat_counts {
            if let Some(HyperValue::Num(x)) = values.get(h as usize) {
                if !(x.fract() == 0.0 && *x >= 0.0 && *x <= f64::from(bound)) {
                    return Err(format!(
                        "hyperparameter `{}` counts the iterations of a `repeat` block: it takes a whole number from 0 to {bound}, not {x}",
                        self.hypers[h as usize].name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The extents of a `rows × cols` tensor under hyperparameter values
    /// `values`: the low axis is `min(k, rows, cols)` (0 without one).
    pub fn extents(&self, values: &[HyperValue], rows: usize, cols: usize) -> Extents {
        let low = self.low_axis.map_or(0, |h| match values.get(h as usize) {
            Some(HyperValue::Num(x)) if *x >= 1.0 => {
                (x.min(usize::MAX as f64) as usize).min(rows).min(cols)
            }
            _ => 0,
        });
        Extents { rows, cols, low }
    }

    /// The lower-case name under which the catalog lists the rule.
    pub fn catalog_name(&self) -> String {
        self.name.to_lowercase()
    }
}

fn reduce_name(r: ReduceOp) -> &'static str {
    match r {
        ReduceOp::Sum => "sum",
        ReduceOp::Mean => "mean",
        ReduceOp::MaxAbs => "max_abs",
        ReduceOp::Norm => "norm",
        ReduceOp::Count => "count",
    }
}

fn op_text(rule: &Rule, op: &Op) -> String {
    let unary = |u: &UnOp| u.info().name;
    let binary = |b: &BinOp| b.info().name;
    match op {
        Op::Const(x) => format!("const {x:?}"),
        Op::ConstBool(b) => format!("const {b}"),
        Op::Hyper(i) => format!("hyper {}", rule.hypers[*i as usize].name),
        Op::Step => "t".to_string(),
        Op::Present(i) => format!("present {}", rule.inputs[*i as usize].name),
        Op::Numel => "numel".to_string(),
        Op::Param => "p".to_string(),
        Op::Grad => "g".to_string(),
        Op::Input(i) => format!("input {}", rule.inputs[*i as usize].name),
        Op::State(i) => format!("state {}", rule.states[*i as usize].name),
        Op::Unary(u, a) => format!("{} {a}", unary(u)),
        Op::Binary(b, x, y) => format!("{} {x}, {y}", binary(b)),
        Op::Select(c, a, b) => format!("select {c}, {a}, {b}"),
        Op::Fma(a, b, c) => format!("fma {a}, {b}, {c}"),
        Op::Extent(d) => d.name().to_string(),
        Op::Rank => "rank".to_string(),
        Op::Eye(d) => format!("eye {}", d.name()),
        Op::MachineEps => "machine_eps".to_string(),
        Op::ReduceAxis(r, x, a) => {
            let x = match x {
                Axis::Row => "rows",
                Axis::Col => "cols",
            };
            format!("reduce.{}.{x} {a}", reduce_name(*r))
        }
        Op::Matmul(a, b) => format!("matmul {a}, {b}"),
        Op::Transpose(a) => format!("transpose {a}"),
        Op::MatFn(MatFn::Pow, a, e) => format!("sym_pow {a}, {e}"),
        Op::Linalg(l, a) => format!("{} {a}", l.name()),
        Op::Shape(o, a) => format!("{} {a}", o.name()),
        Op::Reduce(r, s, a) => {
            let r = reduce_name(*r);
            let s = match s {
                Scope::Tensor => "tensor",
                Scope::Global => "global",
            };
            format!("reduce.{r}.{s} {a}")
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rule {}", self.name)?;
        for h in &self.hypers {
            writeln!(f, "  hyper {} = {}", h.name, h.default)?;
        }
        if let Some(h) = self.low_axis {
            writeln!(f, "  axis low = {}", self.hypers[h as usize].name)?;
        }
        for i in &self.inputs {
            let opt = if i.optional { " optional" } else { "" };
            writeln!(f, "  input {}{opt}", i.name)?;
        }
        for s in &self.states {
            let kind = match s.kind {
                StateKind::Element => "element",
                StateKind::Scalar => "scalar",
                StateKind::Array(..) => s.kind.rate().name(),
            };
            writeln!(f, "  state {} {kind} init {}", s.name, s.init)?;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            writeln!(
                f,
                "  %{i}: {} {} = {}",
                n.rate.name(),
                n.ty.name(),
                op_text(self, &n.op)
            )?;
        }
        if let Some(v) = self.view {
            writeln!(f, "  view {v}")?;
        }
        writeln!(f, "  out p = {}", self.param_out)?;
        for (s, v) in self.states.iter().zip(&self.state_out) {
            writeln!(f, "  out {} = {v}", s.name)?;
        }
        Ok(())
    }
}

/// 64-bit FNV-1a of `bytes`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.bytes(bytes);
    h.0
}

/// 64-bit FNV-1a, for hashes that must not change between builds.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn word(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }

    /// A string, length first, so that concatenations cannot collide.
    fn text(&mut self, s: &str) {
        self.word(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}
