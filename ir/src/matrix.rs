//! The matrix evaluator: the meaning of a *matrix rule* (one that sees the
//! tensor as a matrix, see [`Rule::is_matrix`]), and its CPU execution.
//!
//! A tensor of shape `[d0, d1, ...]` is the matrix `d0 × (d1 · ...)`, as
//! the references reshape; a matrix rule refuses tensors of rank 0 and 1.
//! Values are whole arrays, evaluated node by node:
//! - scalars (const, step and tensor rate) are computed in f64, as in the
//!   reference interpreter, and rounded to the element type `F` where array
//!   code uses them; arrays (`rows × cols` elements, rows, columns, square
//!   matrices) hold `F`;
//! - element-wise operations broadcast axes of length 1;
//! - reductions (whole or along an axis) accumulate in f64, sums in eight
//!   interleaved lanes combined in order (see `reduce_slice`); down a
//!   column in row order; along an axis the result is rounded to `F`;
//! - `@` is a GEMM accumulated in `F` (the kernel's order): products of
//!   two bfloat16 operands (values the rule rounds with `bf16`) on the
//!   bfloat16 kernel of [`crate::gemm`], symmetric products (`x xᵀ`, `S S`
//!   of a symmetric `S`) computed on and above the diagonal and mirrored;
//! - `sym_pow(A, e)` symmetrises `A`, diagonalises it in f64
//!   ([`crate::linalg`]) and returns `Q diag(λ^e) Qᵀ` rounded to `F`;
//!   `eigenbasis`, `qr` and `sort_perm` factor in f64 there too;
//! - `select(c, a, b)` with a scalar condition evaluates only the branch it
//!   takes, so work under `every k { ... }` (a refresh every k steps) and
//!   the unused branch of `select(rows() > cols(), ...)` cost nothing;
//! - every new value is computed from the values at the start of the step.
//!
//! Values are freed after their last use, so the memory of a step is the
//! largest set of arrays alive at once, not the sum over the graph.

use crate::float::Float;
use crate::fusion::{Kernel, Plan};
use crate::hyper::HyperValue;
use crate::interp::{
    eval_binary, eval_unary, maximum, truth, Acc, InterpError, StateBuf, StepTensor,
};
use crate::kept_arrays;
use crate::linalg::{eigenbasis, qr_factor, sort_perm, sym_pow};
use crate::rule::*;
use std::ops::Deref;
use std::sync::Arc;

/// Runs the fused kernels of a [`Plan`] (an element backend, such as the
/// CPU JIT, implements it): `out` gets the kernel's root over the arrays
/// `arrays` (one per array leaf, each of `out`'s length) with the scalar
/// leaves' values `scalars`.
pub trait Kernels<F>: Sync {
    /// Computes `kernel` into `out`.
    fn run(
        &self,
        kernel: &Kernel,
        scalars: &[HyperValue],
        arrays: &[&[F]],
        out: &mut [F],
    ) -> Result<(), String>;
}

/// A plan of fused kernels and what runs them.
pub type Fused<'k, F> = (&'k Plan, &'k dyn Kernels<F>);

/// An intermediate array may hold this many times the tensor's elements...
pub const MAX_ARRAY_FACTOR: usize = 4;
/// ...or this many values, whichever is more.
pub const MIN_ARRAY_LIMIT: usize = 1 << 26;
/// The largest side `sym_pow`, `eigenbasis` and `qr` take (cubic time).
pub const MAX_SYM_SIDE: usize = 4096;

/// The matrix a tensor is seen as: `rows × cols`, and the tensor's rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Rows: the tensor's first axis (1 for a vector or a scalar).
    pub rows: usize,
    /// Columns: the product of the other axes.
    pub cols: usize,
    /// The tensor's rank, as `ndim()` reads it.
    pub rank: usize,
    /// The low axis, `min(k, rows, cols)` (0 for a rule without one).
    pub low: usize,
}

impl Dims {
    /// The lengths the rule's axes take.
    pub fn extents(&self) -> Extents {
        Extents {
            rows: self.rows,
            cols: self.cols,
            low: self.low,
        }
    }

    /// A flat buffer of `n` values as the matrix `1 × n` of rank 1.
    pub fn flat(n: usize) -> Self {
        Dims {
            rows: 1,
            cols: n,
            rank: 1,
            low: 0,
        }
    }
}

/// The matrix a tensor of `shape` is seen as under `rule`, or why it cannot
/// be: ranks 2 and more are `d0 × (d1 · ...)`; a vector (or scalar) is the
/// matrix `1 × n` only for a rule that reads `ndim()` (which has said what
/// it does with each rank), and otherwise an error.
/// `hypers` sets the low axis.
pub fn matrix_dims(rule: &Rule, shape: &[usize], hypers: &[HyperValue]) -> Result<Dims, String> {
    if shape.len() < 2 && !rule.reads_rank() {
        return Err(format!(
            "a matrix rule needs tensors of rank 2 or more (higher ranks are seen as rows × the rest), not shape {shape:?}"
        ));
    }
    let (rows, cols) = rows_and_cols(shape)
        .ok_or_else(|| format!("shape {shape:?} has more elements than memory can address"))?;
    Ok(Dims {
        rows,
        cols,
        rank: shape.len(),
        low: rule.extents(hypers, rows, cols).low,
    })
}

/// `d0 × (d1 · ...)` of a shape, a vector or scalar as `1 × n`; `None` when
/// the element count overflows.
pub fn rows_and_cols(shape: &[usize]) -> Option<(usize, usize)> {
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    Some(match shape {
        [] | [_] => (1, numel),
        [rows, ..] => (*rows, numel.checked_div(*rows).unwrap_or(0)),
    })
}

/// A value during evaluation.
#[derive(Clone, Debug)]
enum Val<'a, F> {
    /// A scalar, in f64.
    Scalar(f64),
    /// A row-major `rows × cols` array.
    Array {
        rows: usize,
        cols: usize,
        data: Buf<'a, F>,
    },
}

/// An array's values: the caller's buffer, or computed ones, shared (a
/// select passes its branch on without copying it).
#[derive(Debug)]
enum Buf<'a, F> {
    Borrowed(&'a [F]),
    Shared(Arc<Vec<F>>),
}

impl<F> Clone for Buf<'_, F> {
    fn clone(&self) -> Self {
        match self {
            Buf::Borrowed(b) => Buf::Borrowed(b),
            Buf::Shared(v) => Buf::Shared(Arc::clone(v)),
        }
    }
}

impl<F> Deref for Buf<'_, F> {
    type Target = [F];
    fn deref(&self) -> &[F] {
        match self {
            Buf::Borrowed(b) => b,
            Buf::Shared(v) => v,
        }
    }
}

impl<'a, F: Float> Val<'a, F> {
    fn array(rows: usize, cols: usize, data: Vec<F>) -> Self {
        Val::Array {
            rows,
            cols,
            data: Buf::Shared(Arc::new(data)),
        }
    }

    fn scalar(&self) -> f64 {
        match self {
            Val::Scalar(x) => *x,
            // Only a 1 × 1 array reaches here (a matrix product of a row and a column).
            Val::Array { data, .. } => data.first().map_or(f64::NAN, |x| x.to_f64()),
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            Val::Scalar(_) => (1, 1),
            Val::Array { rows, cols, .. } => (*rows, *cols),
        }
    }

    /// Reads entry `(i, j)` of the broadcast value.
    fn reader(&self) -> Reader<'_, F> {
        match self {
            Val::Scalar(x) => Reader {
                data: &[],
                scalar: F::from_f64(*x),
                row_stride: 0,
                col_stride: 0,
            },
            Val::Array { rows, cols, data } => Reader {
                data,
                scalar: F::default(),
                row_stride: if *rows == 1 { 0 } else { *cols },
                col_stride: usize::from(*cols != 1),
            },
        }
    }

    /// Gives a computed array no other value shares to [`kept_arrays`].
    fn keep_array(self) {
        if let Val::Array {
            data: Buf::Shared(v),
            ..
        } = self
        {
            if let Ok(v) = Arc::try_unwrap(v) {
                kept_arrays::keep(v);
            }
        }
    }

    fn into_data(self) -> Vec<F> {
        match self {
            Val::Scalar(x) => vec![F::from_f64(x)],
            Val::Array { data, .. } => match data {
                Buf::Borrowed(b) => b.to_vec(),
                Buf::Shared(v) => Arc::try_unwrap(v).unwrap_or_else(|v| v.to_vec()),
            },
        }
    }
}

/// Broadcast access to one operand of an element-wise operation.
struct Reader<'v, F> {
    data: &'v [F],
    scalar: F,
    row_stride: usize,
    col_stride: usize,
}

impl<F: Float> Reader<'_, F> {
    #[inline]
    fn at(&self, i: usize, j: usize) -> F {
        if self.data.is_empty() {
            self.scalar
        } else {
            self.data[i * self.row_stride + j * self.col_stride]
        }
    }
}

/// One tensor's buffers, read-only, and its sizes.
struct Leaves<'a, F> {
    param: &'a [F],
    grad: &'a [F],
    inputs: &'a [Option<&'a [F]>],
    state: &'a [StateBuf<F>],
    hypers: &'a [HyperValue],
    present: &'a [bool],
    t: f64,
    /// The matrix the tensor is seen as.
    dims: Dims,
}

impl<'a, F> Leaves<'a, F> {
    fn extents(&self) -> Extents {
        self.dims.extents()
    }

    /// One tensor of a step, seen as the matrix `d`.
    fn of(tt: &'a StepTensor<'_, F>, d: Dims, present: &'a [bool], t: f64) -> Self {
        Leaves {
            param: tt.param,
            grad: tt.grad,
            inputs: &tt.inputs,
            state: tt.state,
            hypers: tt.hypers,
            present,
            t,
            dims: d,
        }
    }
}

/// Evaluates the values `roots` of `rule` for one tensor. `globals` holds
/// the values of global reductions already computed (by node id).
struct Evaluation<'r, 'a, F: Float> {
    rule: &'r Rule,
    leaves: &'r Leaves<'a, F>,
    values: Vec<Option<Val<'a, F>>>,
    /// Per node, once computed: every value is a bfloat16 (the node rounds
    /// to it, or passes on such a value unchanged).
    bf16: Vec<bool>,
    /// Per node, once computed: a symmetric matrix, bit for bit (a Gram
    /// product, the square of a symmetric matrix, or an element-wise
    /// function of symmetric matrices and scalars).
    symmetric: Vec<bool>,
    fused: Option<Fused<'r, F>>,
}

impl<'r, 'a, F: Float> Evaluation<'r, 'a, F> {
    fn run(
        rule: &'r Rule,
        leaves: &'r Leaves<'a, F>,
        globals: &[(ValueId, f64)],
        roots: &[ValueId],
        fused: Option<Fused<'r, F>>,
    ) -> Result<Vec<Val<'a, F>>, InterpError> {
        let mut ev = Evaluation {
            rule,
            leaves,
            values: vec![None; rule.nodes.len()],
            bf16: vec![false; rule.nodes.len()],
            symmetric: vec![false; rule.nodes.len()],
            fused,
        };
        for &(id, x) in globals {
            ev.values[id.index()] = Some(Val::Scalar(x));
        }
        // Scalars that depend on no array: evaluated first, so that a
        // select on one of them can skip the branch it does not take.
        // Only those the roots reach: at creation, say, the state is not
        // there to be read.
        let reached = rule.reachable(roots);
        let mut pure = vec![false; rule.nodes.len()];
        for (i, node) in rule.nodes.iter().enumerate() {
            pure[i] = !node.rate.is_array()
                && !matches!(
                    node.op,
                    Op::Reduce(..) | Op::ReduceAxis(..) | Op::Matmul(..)
                )
                && node.op.args().iter().all(|a| pure[a.index()]);
            if pure[i] && reached[i] && ev.values[i].is_none() {
                let v = ev.compute(ValueId(i as u32))?;
                ev.values[i] = Some(v);
            }
        }
        // The values the roots need, taking only the chosen branch of a
        // select whose condition is known; and how often each is read.
        let mut live = vec![false; rule.nodes.len()];
        let mut uses = vec![0usize; rule.nodes.len()];
        for r in roots {
            live[r.index()] = true;
        }
        for i in (0..rule.nodes.len()).rev() {
            if !live[i] || ev.values[i].is_some() {
                continue;
            }
            for a in ev.needed(ValueId(i as u32)) {
                live[a.index()] = true;
                uses[a.index()] += 1;
            }
        }
        for r in roots {
            uses[r.index()] += 1;
        }
        ev.check_sizes(&live)?;
        for (i, &alive) in live.iter().enumerate() {
            if !alive || ev.values[i].is_some() {
                continue;
            }
            let id = ValueId(i as u32);
            let v = ev.compute(id)?;
            ev.values[i] = Some(v);
            (ev.bf16[i], ev.symmetric[i]) = ev.exactness(id);
            for a in ev.needed(id) {
                let u = &mut uses[a.index()];
                *u -= 1;
                if *u == 0 {
                    if let Some(v) = ev.values[a.index()].take() {
                        v.keep_array();
                    }
                }
            }
        }
        roots
            .iter()
            .map(|r| {
                ev.values[r.index()]
                    .clone()
                    .ok_or_else(|| InterpError(format!("{r} was not computed")))
            })
            .collect()
    }

    /// The arguments node `id` reads: a select with a computed scalar
    /// condition reads only the branch it takes.
    fn needed(&self, id: ValueId) -> Vec<ValueId> {
        if let Some(kernel) = self.kernel(id) {
            return kernel
                .arrays
                .iter()
                .chain(&kernel.scalars)
                .copied()
                .collect();
        }
        let op = self.rule.node(id).op;
        if let Some((a, b)) = self.transposed_product(id) {
            return vec![self.gemm_operand(a).0, self.gemm_operand(b).0];
        }
        if let Op::Matmul(a, b) = op {
            return vec![self.gemm_operand(a).0, self.gemm_operand(b).0];
        }
        if let Op::Select(c, a, b) = op {
            if let Some(Val::Scalar(x)) = &self.values[c.index()] {
                if !self.rule.node(c).rate.is_array() {
                    return vec![if *x != 0.0 { a } else { b }];
                }
            }
        }
        op.args()
    }

    /// What is known of node `id`'s computed values: whether they are all
    /// bfloat16, and whether they form a symmetric matrix. Both follow the
    /// node's operation (not its data), after its arguments'.
    fn exactness(&self, id: ValueId) -> (bool, bool) {
        let array = |v: ValueId| self.rule.node(v).rate.is_array();
        let sym = |v: ValueId| !array(v) || self.symmetric[v.index()];
        let op = self.rule.node(id).op;
        let rounds = matches!(op, Op::Unary(UnOp::RoundBf16, _));
        if let Some(kernel) = self.kernel(id) {
            return (rounds, kernel.arrays.iter().all(|&a| sym(a)));
        }
        if self.transposed_product(id).is_some() {
            return (false, false);
        }
        match op {
            Op::Unary(_, a) => (rounds, sym(a)),
            Op::Binary(_, x, y) => (false, sym(x) && sym(y)),
            Op::Fma(x, y, z) => (false, sym(x) && sym(y) && sym(z)),
            Op::Select(c, a, b) if !array(c) => {
                let taken = match &self.values[c.index()] {
                    Some(Val::Scalar(x)) if *x != 0.0 => a,
                    Some(Val::Scalar(_)) => b,
                    _ => return (false, false),
                };
                (self.bf16[taken.index()], sym(taken))
            }
            Op::Select(c, a, b) => (false, sym(c) && sym(a) && sym(b)),
            Op::Transpose(a) | Op::Shape(ShapeOp::Wide | ShapeOp::Unwide, a) => {
                (self.bf16[a.index()], self.symmetric[a.index()])
            }
            Op::Matmul(a, b) => (false, self.symmetric_product(a, b)),
            _ => (false, false),
        }
    }

    /// Whether `a @ b` is symmetric: `x xᵀ`, `xᵀ x`, or `S S` of a
    /// symmetric `S`.
    fn symmetric_product(&self, a: ValueId, b: ValueId) -> bool {
        let (x, x_transposed) = self.gemm_operand(a);
        let (y, y_transposed) = self.gemm_operand(b);
        x == y && (x_transposed != y_transposed || self.symmetric[x.index()])
    }

    /// What a GEMM reads for operand `v`: the transpose of an array (and
    /// the wide view of a tall one) is the array itself read with its
    /// strides swapped (no copy is made).
    fn gemm_operand(&self, v: ValueId) -> (ValueId, bool) {
        match self.rule.node(v).op {
            Op::Transpose(x) if self.rule.node(x).rate.is_array() => (x, true),
            Op::Shape(ShapeOp::Wide | ShapeOp::Unwide, x) => {
                (x, self.leaves.dims.rows >= self.leaves.dims.cols)
            }
            _ => (v, false),
        }
    }

    /// For `wide` / `unwide` of a product on a tall tensor (a transpose):
    /// the product's operands, so that `(A B)ᵀ` is computed as the GEMM
    /// `Bᵀ Aᵀ` with no copy of either.
    fn transposed_product(&self, id: ValueId) -> Option<(ValueId, ValueId)> {
        match self.rule.node(id).op {
            Op::Shape(ShapeOp::Wide | ShapeOp::Unwide, x)
                if self.leaves.dims.rows >= self.leaves.dims.cols =>
            {
                match self.rule.node(x).op {
                    Op::Matmul(a, b) => Some((a, b)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// `(a @ b)ᵀ`, computed as the GEMM `bᵀ aᵀ` on strided views.
    fn product_transposed(&self, a: ValueId, b: ValueId) -> Result<Val<'a, F>, InterpError> {
        let (xa, m, k, (ra, ca)) = self.gemm_view(a)?;
        let (yb, k2, n, (rb, cb)) = self.gemm_view(b)?;
        if k != k2 {
            return Err(InterpError(format!(
                "matrix product of {m} × {k} and {k2} × {n}"
            )));
        }
        // (The GEMM writes every element of `out` and reads none.)
        let mut out = kept_arrays::overwritten(m * n);
        F::gemm(n, k, m, (yb, (cb, rb)), (xa, (ca, ra)), &mut out);
        Ok(Val::array(n, m, out))
    }

    /// Operand `v` of a GEMM: its data, `rows × cols` as the product sees
    /// it, and its (row, column) strides.
    #[allow(clippy::type_complexity)]
    fn gemm_view(&self, v: ValueId) -> Result<(&[F], usize, usize, (usize, usize)), InterpError> {
        let (id, transposed) = self.gemm_operand(v);
        match self.get(id)? {
            Val::Array { rows, cols, data } if transposed => Ok((data, *cols, *rows, (1, *cols))),
            Val::Array { rows, cols, data } => Ok((data, *rows, *cols, (*cols, 1))),
            Val::Scalar(_) => Err(InterpError("`@` of a scalar".into())),
        }
    }

    fn get(&self, v: ValueId) -> Result<&Val<'a, F>, InterpError> {
        self.values[v.index()]
            .as_ref()
            .ok_or_else(|| InterpError(format!("{v} is read before it is computed")))
    }

    fn leaf_array(&self, data: &'a [F], what: &str) -> Result<Val<'a, F>, InterpError> {
        let (rows, cols) = (self.leaves.dims.rows, self.leaves.dims.cols);
        if data.len() != rows * cols {
            return Err(InterpError(format!(
                "{what} has {} values, not {rows} × {cols}",
                data.len()
            )));
        }
        Ok(Val::Array {
            rows,
            cols,
            data: Buf::Borrowed(data),
        })
    }

    /// Refuses, before anything is computed, a step whose arrays would not
    /// fit the evaluator's limits on this tensor: an intermediate array of
    /// more than [`MAX_ARRAY_FACTOR`] times the tensor's elements (and over
    /// [`MIN_ARRAY_LIMIT`]), or a factorisation of a side over [`MAX_SYM_SIDE`]
    /// (its eigensolver is cubic).
    fn check_sizes(&self, live: &[bool]) -> Result<(), InterpError> {
        let (rows, cols) = (self.leaves.dims.rows, self.leaves.dims.cols);
        let limit = rows
            .saturating_mul(cols)
            .saturating_mul(MAX_ARRAY_FACTOR)
            .max(MIN_ARRAY_LIMIT);
        for (i, node) in self.rule.nodes.iter().enumerate() {
            if !live[i] || !node.rate.is_array() {
                continue;
            }
            let (r, c) = node.rate.shape();
            let (r, c) = (r.len(self.leaves.extents()), c.len(self.leaves.extents()));
            if r.checked_mul(c).is_none_or(|n| n > limit) {
                return Err(InterpError(format!(
                    "`{}` needs a {r} × {c} array on this {rows} × {cols} tensor: more than the matrix evaluator's limit of {limit} values",
                    self.rule.name
                )));
            }
            let cubic = match node.op {
                Op::MatFn(..) => Some("sym_pow"),
                Op::Linalg(Linalg::Eigenbasis, _) => Some("eigenbasis"),
                Op::Linalg(Linalg::Qr, _) => Some("qr"),
                _ => None,
            };
            if let Some(name) = cubic {
                if r.min(c) > MAX_SYM_SIDE {
                    return Err(InterpError(format!(
                        "`{}` takes `{name}` of a {r} × {c} matrix: the matrix evaluator factors matrices of sides up to {MAX_SYM_SIDE}",
                        self.rule.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The fused kernel computing `id`, when there is one.
    fn kernel(&self, id: ValueId) -> Option<&'r Kernel> {
        self.fused.and_then(|(plan, _)| plan.kernel(id))
    }

    /// Node `id` through its fused kernel: one pass over its array leaves.
    fn run_kernel(
        &self,
        kernel: &Kernel,
        runner: &dyn Kernels<F>,
    ) -> Result<Val<'a, F>, InterpError> {
        let (rows, cols) = self.dims(self.rule.node(kernel.root));
        let mut arrays: Vec<&[F]> = Vec::with_capacity(kernel.arrays.len());
        for a in &kernel.arrays {
            match self.get(*a)? {
                Val::Array {
                    rows: r,
                    cols: c,
                    data,
                } if (*r, *c) == (rows, cols) => arrays.push(data),
                _ => {
                    return Err(InterpError(format!(
                        "kernel leaf {a} is not a {rows} × {cols} array"
                    )))
                }
            }
        }
        let scalars: Vec<HyperValue> = kernel
            .scalars
            .iter()
            .map(|s| {
                let x = self.get(*s)?.scalar();
                Ok(match self.rule.node(*s).ty {
                    Ty::Float => HyperValue::Num(x),
                    Ty::Bool => HyperValue::Bool(x != 0.0),
                })
            })
            .collect::<Result<_, InterpError>>()?;
        // The kernel writes every element: a kept array as it is, or a new
        // one zeroed a piece per thread, as the kernel then runs.
        let mut out = kept_arrays::reused(rows * cols)
            .unwrap_or_else(|| written_in_parallel(rows * cols, CHUNK, |_, _| {}));
        runner
            .run(kernel, &scalars, &arrays, &mut out)
            .map_err(InterpError)?;
        Ok(Val::array(rows, cols, out))
    }

    fn compute(&self, id: ValueId) -> Result<Val<'a, F>, InterpError> {
        if let (Some(kernel), Some((_, runner))) = (self.kernel(id), self.fused) {
            return self.run_kernel(kernel, runner);
        }
        if let Some((a, b)) = self.transposed_product(id) {
            return self.product_transposed(a, b);
        }
        let node = self.rule.node(id);
        let l = self.leaves;
        let (rows, cols) = (l.dims.rows, l.dims.cols);
        Ok(match node.op {
            Op::Const(x) => Val::Scalar(x),
            Op::ConstBool(b) => Val::Scalar(truth::<f64>(b)),
            Op::Hyper(h) => Val::Scalar(l.hypers[h as usize].as_f64()),
            Op::Step => Val::Scalar(l.t),
            Op::Present(k) => Val::Scalar(truth::<f64>(l.present.get(k as usize) == Some(&true))),
            Op::Numel => Val::Scalar((rows * cols) as f64),
            Op::Extent(d) => Val::Scalar(d.len(l.extents()) as f64),
            Op::Rank => Val::Scalar(l.dims.rank as f64),
            Op::MachineEps => Val::Scalar(if F::NAME == "f32" {
                f64::from(f32::EPSILON)
            } else {
                f64::EPSILON
            }),
            Op::Eye(d) => {
                let n = d.len(l.extents());
                let mut data = kept_arrays::filled(n * n);
                for i in 0..n {
                    data[i * n + i] = F::from_f64(1.0);
                }
                Val::array(n, n, data)
            }
            Op::Param => self.leaf_array(l.param, "the parameter")?,
            Op::Grad => self.leaf_array(l.grad, "the gradient")?,
            Op::Input(k) => match l.inputs.get(k as usize).copied().flatten() {
                Some(data) => self.leaf_array(data, "an input")?,
                None => Val::Scalar(0.0),
            },
            Op::State(s) => match l.state.get(s as usize) {
                None => return Err(InterpError("a state is read before it exists".into())),
                Some(StateBuf::Scalar(x)) => Val::Scalar(*x),
                Some(StateBuf::Element(data)) => {
                    let (r, c) = node.rate.shape();
                    Val::Array {
                        rows: r.len(l.extents()),
                        cols: c.len(l.extents()),
                        data: Buf::Borrowed(data.as_slice()),
                    }
                }
            },
            Op::Unary(u, a) => match self.operands(node, &[a])? {
                Some(layout) => {
                    let out = match u {
                        UnOp::Neg => layout.map1(|a| a.neg()),
                        UnOp::Sqrt => layout.map1(|a| a.sqrt()),
                        UnOp::Abs => layout.map1(|a| a.abs()),
                        UnOp::Rsqrt => layout.map1(|a| F::from_f64(1.0).div(a.sqrt())),
                        _ => layout.map1(|a| eval_unary(u, a)),
                    };
                    Val::array(layout.rows, layout.cols, out)
                }
                None => {
                    let x = self.get(a)?.scalar();
                    Val::Scalar(eval_unary(u, x))
                }
            },
            Op::Binary(b, x, y) => match self.operands(node, &[x, y])? {
                Some(layout) => {
                    let out = match b {
                        BinOp::Add => layout.map2(|a, b| a.add(b)),
                        BinOp::Sub => layout.map2(|a, b| a.sub(b)),
                        BinOp::Mul => layout.map2(|a, b| a.mul(b)),
                        BinOp::Div => layout.map2(|a, b| a.div(b)),
                        _ => layout.map2(|a, c| eval_binary(b, a, c)),
                    };
                    Val::array(layout.rows, layout.cols, out)
                }
                None => {
                    let (x, y) = (self.get(x)?.scalar(), self.get(y)?.scalar());
                    Val::Scalar(eval_binary(b, x, y))
                }
            },
            Op::Fma(a, b, c) => match self.operands(node, &[a, b, c])? {
                Some(layout) => {
                    let out = layout.map3(|x, y, z| x.mul_add(y, z));
                    Val::array(layout.rows, layout.cols, out)
                }
                None => {
                    let (x, y, z) = (
                        self.get(a)?.scalar(),
                        self.get(b)?.scalar(),
                        self.get(c)?.scalar(),
                    );
                    Val::Scalar(x.mul_add(y, z))
                }
            },
            Op::Select(c, a, b) => {
                let cond = self.get(c)?;
                if !self.rule.node(c).rate.is_array() {
                    // Only the branch taken was computed.
                    let taken = if cond.scalar() != 0.0 { a } else { b };
                    return self.broadcast_to(node, self.get(taken)?.clone());
                }
                match self.operands(node, &[c, a, b])? {
                    Some(layout) => {
                        let out = layout.map3(|c, a, b| if c.to_f64() != 0.0 { a } else { b });
                        Val::array(layout.rows, layout.cols, out)
                    }
                    None => Val::Scalar(if cond.scalar() != 0.0 {
                        self.get(a)?.scalar()
                    } else {
                        self.get(b)?.scalar()
                    }),
                }
            }
            Op::Reduce(op, _, a) => Val::Scalar(reduce(op, self.get(a)?)),
            Op::ReduceAxis(op, axis, a) => {
                let v = self.get(a)?;
                let (r, c) = v.shape();
                let data: &[F] = match v {
                    Val::Array { data, .. } => data,
                    Val::Scalar(_) => {
                        return Err(InterpError("an axis reduction of a scalar".into()))
                    }
                };
                match axis {
                    Axis::Row => {
                        let out = (0..r)
                            .map(|i| F::from_f64(reduce_slice(op, &data[i * c..(i + 1) * c])))
                            .collect();
                        Val::array(r, 1, out)
                    }
                    Axis::Col => {
                        // Down each column in row order, all columns at once
                        // (a running f64 sum per column, as `Acc` keeps).
                        let rows = data.chunks_exact(c.max(1)).take(r);
                        let mut accs = vec![0.0f64; c];
                        match op {
                            ReduceOp::Sum | ReduceOp::Mean => {
                                for row in rows {
                                    for (a, x) in accs.iter_mut().zip(row) {
                                        *a += x.to_f64();
                                    }
                                }
                            }
                            ReduceOp::Norm => {
                                for row in rows {
                                    for (a, x) in accs.iter_mut().zip(row) {
                                        let x = x.to_f64();
                                        *a += x * x;
                                    }
                                }
                            }
                            ReduceOp::Count | ReduceOp::MaxAbs => {
                                let mut full: Vec<Acc> = (0..c).map(|_| Acc::default()).collect();
                                for row in rows {
                                    for (acc, x) in full.iter_mut().zip(row) {
                                        acc.add(op, x.to_f64());
                                    }
                                }
                                for (a, f) in accs.iter_mut().zip(&full) {
                                    *a = f.finish(op);
                                }
                            }
                        }
                        let finish = |a: f64| match op {
                            ReduceOp::Mean => a / r as f64,
                            ReduceOp::Norm => a.sqrt(),
                            _ => a,
                        };
                        let out = accs.iter().map(|&a| F::from_f64(finish(a))).collect();
                        Val::array(1, c, out)
                    }
                }
            }
            Op::Matmul(a, b) => {
                let (xa, m, k, x_strides) = self.gemm_view(a)?;
                let (yb, k2, n, y_strides) = self.gemm_view(b)?;
                if k != k2 {
                    return Err(InterpError(format!(
                        "matrix product of {m} × {k} and {k2} × {n}"
                    )));
                }
                // (The GEMMs write every element of `out` and read none.)
                let mut out = kept_arrays::overwritten(m * n);
                let (x, _) = self.gemm_operand(a);
                let (y, _) = self.gemm_operand(b);
                let (xa, ya) = ((xa, x_strides), (yb, y_strides));
                let symmetric = m == n && self.symmetric_product(a, b);
                if self.bf16[x.index()] && self.bf16[y.index()] {
                    F::gemm_bf16(m, k, n, xa, ya, &mut out, symmetric);
                } else if symmetric {
                    F::gemm_symmetric(n, k, xa, ya, &mut out);
                } else {
                    F::gemm(m, k, n, xa, ya, &mut out);
                }
                self.shaped(node, Val::array(m, n, out))
            }
            Op::Transpose(a) => match self.get(a)? {
                Val::Scalar(x) => Val::Scalar(*x),
                Val::Array { rows, cols, data } => {
                    Val::array(*cols, *rows, transposed(*rows, *cols, data))
                }
            },
            Op::MatFn(MatFn::Pow, a, e) => {
                let e = self.get(e)?.scalar();
                let Val::Array { rows: n, data, .. } = self.get(a)? else {
                    return Err(InterpError("`sym_pow` of a scalar".into()));
                };
                let n = *n;
                let a: Vec<f64> = data.iter().map(|x| x.to_f64()).collect();
                let out = sym_pow(n, &a, e).into_iter().map(F::from_f64).collect();
                Val::array(n, n, out)
            }
            Op::Shape(o, a) => {
                let v = self.get(a)?;
                let Val::Array {
                    rows: r,
                    cols: c,
                    data,
                } = v
                else {
                    return Err(InterpError(format!("`{}` of a scalar", o.name())));
                };
                let (r, c) = (*r, *c);
                let low = l.dims.low.min(r).min(c);
                match o {
                    // rows × cols as short × long: transposed when rows ≥ cols.
                    ShapeOp::Wide | ShapeOp::Unwide if l.dims.rows < l.dims.cols => v.clone(),
                    ShapeOp::Wide | ShapeOp::Unwide => Val::array(c, r, transposed(r, c, data)),
                    ShapeOp::LeadCols => {
                        // (c.max(1): an array with no columns has no rows of data either.)
                        let rows = data.chunks_exact(c.max(1)).take(r);
                        let out = rows.flat_map(|row| &row[..low]).copied();
                        Val::array(r, low, out.collect())
                    }
                    ShapeOp::LeadRows => Val::array(low, c, data[..low * c].to_vec()),
                }
            }
            Op::Linalg(l, a) => {
                let v = self.get(a)?;
                let (r, c) = v.shape();
                let data: Vec<f64> = match v {
                    Val::Array { data, .. } => data.iter().map(|x| x.to_f64()).collect(),
                    Val::Scalar(_) => {
                        return Err(InterpError(format!("`{}` of a scalar", l.name())))
                    }
                };
                let (rows, cols, out) = match l {
                    Linalg::Eigenbasis => (r, c, eigenbasis(r, &data)),
                    Linalg::Qr => {
                        if r < c {
                            return Err(InterpError(format!(
                                "`qr` of a {r} × {c} matrix: it needs at least as many rows as columns"
                            )));
                        }
                        (r, c, qr_factor(r, c, &data))
                    }
                    Linalg::SortPerm => {
                        let n = data.len();
                        (n, n, sort_perm(&data))
                    }
                };
                Val::array(rows, cols, out.into_iter().map(F::from_f64).collect())
            }
        })
    }

    /// A value of `node`'s shape: scalars stay scalars where the node is a
    /// scalar, a 1 × 1 product becomes one.
    fn shaped(&self, node: &Node, v: Val<'a, F>) -> Val<'a, F> {
        if node.rate.is_array() {
            v
        } else {
            Val::Scalar(v.scalar())
        }
    }

    /// `v` (a branch of a select) broadcast to the select's shape.
    fn broadcast_to(&self, node: &Node, v: Val<'a, F>) -> Result<Val<'a, F>, InterpError> {
        if !node.rate.is_array() {
            return Ok(Val::Scalar(v.scalar()));
        }
        let (r, c) = self.dims(node);
        if v.shape() == (r, c) && matches!(v, Val::Array { .. }) {
            return Ok(v);
        }
        Ok(Val::array(r, c, expand(v, r, c)))
    }

    fn dims(&self, node: &Node) -> (usize, usize) {
        let (r, c) = node.rate.shape();
        (r.len(self.leaves.extents()), c.len(self.leaves.extents()))
    }

    /// The operands of an element-wise array operation over its `r × c`
    /// result: each a scalar (rounded to `F`), the result's shape, a row
    /// (`1 × c`) or a column (`r × 1`) broadcast. `None` when the node is
    /// a scalar.
    fn operands<'v>(
        &'v self,
        node: &Node,
        args: &[ValueId],
    ) -> Result<Option<Layout<'v, F>>, InterpError> {
        if !node.rate.is_array() {
            return Ok(None);
        }
        let (r, c) = self.dims(node);
        let mut out = Vec::with_capacity(args.len());
        for a in args {
            out.push(match self.get(*a)? {
                Val::Scalar(x) => Arg::Scalar(F::from_f64(*x)),
                Val::Array { rows, cols, data } => match (*rows == r, *cols == c) {
                    (true, true) => Arg::Full(data),
                    (false, true) => Arg::Row(data),
                    (true, false) => Arg::Col(data),
                    (false, false) => Arg::Scalar(data.first().copied().unwrap_or_default()),
                },
            });
        }
        Ok(Some(Layout {
            rows: r,
            cols: c,
            args: out,
        }))
    }
}

/// One operand of an element-wise operation, as its result's shape sees it.
#[derive(Clone, Copy)]
enum Arg<'v, F> {
    /// One value for every element.
    Scalar(F),
    /// The result's own shape.
    Full(&'v [F]),
    /// One row (`1 × c`), the same for every row.
    Row(&'v [F]),
    /// One column (`r × 1`): one value per row.
    Col(&'v [F]),
}

/// A run of elements of one operand: a slice, or one value repeated.
#[derive(Clone, Copy)]
enum Run<'v, F> {
    Slice(&'v [F]),
    Value(F),
}

impl<F: Float> Run<'_, F> {
    #[inline]
    fn at(&self, k: usize) -> F {
        match self {
            Run::Slice(xs) => xs[k],
            Run::Value(x) => *x,
        }
    }
}

/// The operands of an element-wise operation over an `rows × cols` result.
struct Layout<'v, F> {
    rows: usize,
    cols: usize,
    args: Vec<Arg<'v, F>>,
}

/// Arrays of more elements than this are computed in parallel chunks.
const PARALLEL_ABOVE: usize = 1 << 16;
const CHUNK: usize = 1 << 14;

impl<F: Float> Layout<'_, F> {
    /// The result, filled by `f` over runs of elements: the whole array in
    /// chunks when no operand broadcasts along an axis, else row by row
    /// (in parallel for large arrays; element-wise, so the result does not
    /// depend on the split).
    fn fill(&self, f: impl Fn(&[Run<'_, F>], &mut [F]) + Sync) -> Vec<F> {
        let (r, c) = (self.rows, self.cols);
        let n = r * c;
        let flat = self
            .args
            .iter()
            .all(|a| matches!(a, Arg::Scalar(_) | Arg::Full(_)));
        if flat {
            let runs = |start: usize, len: usize| -> Vec<Run<'_, F>> {
                self.args
                    .iter()
                    .map(|a| match a {
                        Arg::Full(xs) => Run::Slice(&xs[start..start + len]),
                        Arg::Scalar(x) => Run::Value(*x),
                        Arg::Row(xs) | Arg::Col(xs) => Run::Value(xs[0]),
                    })
                    .collect()
            };
            if n > PARALLEL_ABOVE {
                return written_in_parallel(n, CHUNK, |k, chunk| {
                    f(&runs(k * CHUNK, chunk.len()), chunk);
                });
            }
            let mut out = kept_arrays::filled(n);
            f(&runs(0, n), &mut out);
            return out;
        }
        let row = |i: usize| -> Vec<Run<'_, F>> {
            self.args
                .iter()
                .map(|a| match a {
                    Arg::Scalar(x) => Run::Value(*x),
                    Arg::Full(xs) => Run::Slice(&xs[i * c..(i + 1) * c]),
                    Arg::Row(xs) => Run::Slice(&xs[..c]),
                    Arg::Col(xs) => Run::Value(xs[i]),
                })
                .collect()
        };
        if c == 0 {
            return kept_arrays::filled(n);
        }
        if n > PARALLEL_ABOVE {
            return written_in_parallel(n, c, |i, chunk| f(&row(i), chunk));
        }
        let mut out = kept_arrays::filled(n);
        for (i, chunk) in out.chunks_mut(c).enumerate() {
            f(&row(i), chunk);
        }
        out
    }

    fn map1(&self, g: impl Fn(F) -> F + Sync) -> Vec<F> {
        self.fill(|runs, out| match runs[0] {
            Run::Slice(xs) => {
                for (o, &a) in out.iter_mut().zip(xs) {
                    *o = g(a);
                }
            }
            Run::Value(a) => out.fill(g(a)),
        })
    }

    fn map2(&self, g: impl Fn(F, F) -> F + Sync) -> Vec<F> {
        self.fill(|runs, out| match (runs[0], runs[1]) {
            (Run::Slice(xs), Run::Slice(ys)) => {
                for ((o, &a), &b) in out.iter_mut().zip(xs).zip(ys) {
                    *o = g(a, b);
                }
            }
            (Run::Slice(xs), Run::Value(b)) => {
                for (o, &a) in out.iter_mut().zip(xs) {
                    *o = g(a, b);
                }
            }
            (Run::Value(a), Run::Slice(ys)) => {
                for (o, &b) in out.iter_mut().zip(ys) {
                    *o = g(a, b);
                }
            }
            (Run::Value(a), Run::Value(b)) => out.fill(g(a, b)),
        })
    }

    fn map3(&self, g: impl Fn(F, F, F) -> F + Sync) -> Vec<F> {
        self.fill(|runs, out| {
            for (k, o) in out.iter_mut().enumerate() {
                *o = g(runs[0].at(k), runs[1].at(k), runs[2].at(k));
            }
        })
    }
}

/// `n` values made piece by piece on the thread pool: `f(k, piece)` writes
/// piece `k` (`piece` values; the last may be shorter). Each piece is
/// zeroed by the thread that writes it, just before, while it is in that
/// core's cache, instead of the whole array by one thread first.
fn written_in_parallel<F: Copy + Default + Send + Sync + 'static>(
    n: usize,
    piece: usize,
    f: impl Fn(usize, &mut [F]) + Sync,
) -> Vec<F> {
    use rayon::prelude::*;
    let mut out: Vec<F> = kept_arrays::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(piece.max(1))
        .enumerate()
        .for_each(|(k, raw)| {
            for x in raw.iter_mut() {
                x.write(F::default());
            }
            // SAFETY: every element of `raw` was just initialised, and
            // `MaybeUninit<F>` has the layout of `F`.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut(raw.as_mut_ptr().cast::<F>(), raw.len()) };
            f(k, chunk);
        });
    // SAFETY: the pieces cover all `n` elements, each initialised above
    // (had `f` panicked, the panic would have left this function first).
    unsafe { out.set_len(n) };
    out
}

fn reduce<F: Float>(op: ReduceOp, v: &Val<'_, F>) -> f64 {
    match v {
        Val::Scalar(x) => {
            let mut acc = Acc::default();
            acc.add(op, *x);
            acc.finish(op)
        }
        Val::Array { data, .. } => reduce_slice(op, data),
    }
}

/// A reduction of `xs` in f64. Sums run in eight interleaved lanes
/// (element `k` into lane `k mod 8`, the lanes then added in order), which
/// is fixed whatever the machine and takes an eighth of the latency of one
/// running sum; `max_abs` and `count` do not depend on the order.
fn reduce_slice<F: Float>(op: ReduceOp, xs: &[F]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the only feature the function enables.
            return unsafe { reduce_slice_avx512(op, xs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, the only feature the function enables.
            return unsafe { reduce_slice_avx2(op, xs) };
        }
    }
    reduce_slice_lanes(op, xs)
}

/// [`reduce_slice`] with AVX-512 (the same additions in the same order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn reduce_slice_avx512<F: Float>(op: ReduceOp, xs: &[F]) -> f64 {
    reduce_slice_lanes(op, xs)
}

/// [`reduce_slice`] with AVX2 (the same additions in the same order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn reduce_slice_avx2<F: Float>(op: ReduceOp, xs: &[F]) -> f64 {
    reduce_slice_lanes(op, xs)
}

#[inline(always)]
fn reduce_slice_lanes<F: Float>(op: ReduceOp, xs: &[F]) -> f64 {
    // Generic over `f`, so that each use compiles to its own vector loop.
    #[inline(always)]
    fn lanes<F: Float>(xs: &[F], f: impl Fn(f64) -> f64) -> f64 {
        let mut acc = [0.0f64; 8];
        let chunks = xs.chunks_exact(8);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (a, x) in acc.iter_mut().zip(chunk) {
                *a += f(x.to_f64());
            }
        }
        for (a, x) in acc.iter_mut().zip(tail) {
            *a += f(x.to_f64());
        }
        acc.iter().sum()
    }
    match op {
        ReduceOp::Sum => lanes(xs, |x| x),
        ReduceOp::Mean => lanes(xs, |x| x) / xs.len() as f64,
        ReduceOp::Norm => lanes(xs, |x| x * x).sqrt(),
        ReduceOp::Count => xs.iter().filter(|x| x.to_f64() != 0.0).count() as f64,
        ReduceOp::MaxAbs => xs.iter().fold(0.0, |m, x| maximum(m, x.to_f64().abs())),
    }
}

/// The transpose of the row-major `r × c` array `data`, by tiles (so that
/// both the reads and the writes stay in cache).
fn transposed<F: Copy + Default + 'static>(r: usize, c: usize, data: &[F]) -> Vec<F> {
    const TILE: usize = 32;
    let mut out = kept_arrays::filled(r * c);
    for i0 in (0..r).step_by(TILE) {
        for j0 in (0..c).step_by(TILE) {
            for i in i0..(i0 + TILE).min(r) {
                for j in j0..(j0 + TILE).min(c) {
                    out[j * r + i] = data[i * c + j];
                }
            }
        }
    }
    out
}

/// The sizes of every tensor of a step, checked against its buffers.
fn check_sizes<F: Float>(
    rule: &Rule,
    present: &[bool],
    tensors: &[StepTensor<'_, F>],
    dims: &[Dims],
) -> Result<(), InterpError> {
    if dims.len() != tensors.len() || present.len() != rule.inputs.len() {
        return Err(InterpError(format!(
            "{} shapes and {} presence flags for {} tensors and {} inputs",
            dims.len(),
            present.len(),
            tensors.len(),
            rule.inputs.len()
        )));
    }
    for (i, (tt, d)) in tensors.iter().zip(dims).enumerate() {
        let (rows, cols) = (d.rows, d.cols);
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| InterpError(format!("tensor {i}: {rows} × {cols} overflows")))?;
        let bad = |what: &str, got: usize, want: usize| {
            InterpError(format!(
                "tensor {i}: {what} has {got} values, a {rows} × {cols} tensor needs {want}"
            ))
        };
        if tt.param.len() != n {
            return Err(bad("the parameter", tt.param.len(), n));
        }
        let low = rule.extents(tt.hypers, rows, cols).low;
        if low != d.low {
            let name = rule
                .low_axis
                .map_or("?", |h| rule.hypers[h as usize].name.as_str());
            return Err(InterpError(format!(
                "tensor {i}: hyperparameter `{name}` sets the low axis, {} long when the state was made and {low} now: the state cannot follow (make a new stepper)",
                d.low
            )));
        }
        let state_len = |kind: StateKind| kind.len(n, d.extents()).unwrap_or(usize::MAX);
        crate::interp::check_tensor(rule, present, i, tt, n, state_len, bad)?;
    }
    Ok(())
}

/// Runs step `t` of the matrix rule `rule` over `tensors`, tensor `i`
/// being the matrix `dims[i]` (see [`matrix_dims`]). With `fused`, the
/// plan's kernels compute their roots (in one pass each) instead of the
/// evaluator's node-by-node loops.
pub fn step<F: Float>(
    rule: &Rule,
    t: u64,
    present: &[bool],
    tensors: &mut [StepTensor<'_, F>],
    dims: &[Dims],
    fused: Option<Fused<'_, F>>,
) -> Result<(), InterpError> {
    check_sizes(rule, present, tensors, dims)?;
    let t = t as f64;
    let roots = rule.step_roots();
    // Global reductions first, in order, each over every tensor.
    let mut globals: Vec<(ValueId, f64)> = Vec::new();
    let live = rule.reachable(&roots);
    for (i, node) in rule.nodes.iter().enumerate() {
        let Op::Reduce(op, Scope::Global, arg) = node.op else {
            continue;
        };
        if !live[i] {
            continue;
        }
        let mut acc = Acc::default();
        for (tt, d) in tensors.iter().zip(dims) {
            let leaves = Leaves::of(tt, *d, present, t);
            let v = Evaluation::run(rule, &leaves, &globals, &[arg], None)?;
            if let Some(Val::Array { data, .. }) = v.first() {
                for x in data.iter() {
                    acc.add(op, x.to_f64());
                }
            }
        }
        globals.push((ValueId(i as u32), acc.finish(op)));
    }
    // A state's new value, or `None` where it is the state's own buffer as
    // the step found it (a preconditioner between refreshes): not copied.
    type NewStates<F> = Vec<Option<Val<'static, F>>>;
    let mut results: Vec<(Vec<F>, NewStates<F>)> = Vec::with_capacity(tensors.len());
    for (tt, d) in tensors.iter().zip(dims) {
        let (rows, cols) = (d.rows, d.cols);
        let leaves = Leaves::of(tt, *d, present, t);
        let outs = Evaluation::run(rule, &leaves, &globals, &rule.step_roots(), fused)?;
        let mut outs = outs.into_iter();
        let p = outs
            .next()
            .map(|v| expand(v, rows, cols))
            .unwrap_or_default();
        let states: NewStates<F> = outs
            .zip(&rule.states)
            .zip(tt.state.iter())
            .map(|((v, decl), old)| match decl.kind {
                StateKind::Scalar => Some(Val::Scalar(v.scalar())),
                kind => {
                    let (r, c) = kind.rate().shape();
                    let (r, c) = (r.len(d.extents()), c.len(d.extents()));
                    let unchanged = match (&v, old) {
                        (
                            Val::Array {
                                rows,
                                cols,
                                data: Buf::Borrowed(b),
                            },
                            StateBuf::Element(o),
                        ) => {
                            (*rows, *cols) == (r, c)
                                && std::ptr::eq(b.as_ptr(), o.as_ptr())
                                && b.len() == o.len()
                        }
                        _ => false,
                    };
                    (!unchanged).then(|| Val::array(r, c, expand(v, r, c)))
                }
            })
            .collect();
        results.push((p, states));
    }
    // Every tensor's new values were computed from the old; they are
    // checked to fit, then stored (a refused step writes nothing).
    for (tt, (p, states)) in tensors.iter().zip(&results) {
        let fits = p.len() == tt.param.len()
            && tt.state.iter().zip(states).all(|(buf, v)| match (buf, v) {
                (_, None) => true,
                (StateBuf::Element(old), Some(Val::Array { data, .. })) => data.len() == old.len(),
                (StateBuf::Scalar(_), Some(Val::Scalar(_))) => true,
                _ => false,
            });
        if !fits {
            return Err(InterpError(
                "a new value does not have its buffer's size".into(),
            ));
        }
    }
    for (tt, (p, states)) in tensors.iter_mut().zip(results) {
        tt.param.copy_from_slice(&p);
        kept_arrays::keep(p);
        for (buf, v) in tt.state.iter_mut().zip(states) {
            let Some(v) = v else { continue };
            match buf {
                StateBuf::Scalar(x) => *x = v.scalar(),
                StateBuf::Element(old) => kept_arrays::keep(std::mem::replace(old, v.into_data())),
            }
        }
    }
    Ok(())
}

/// `v` as a row-major `r × c` array (broadcasting a scalar, a row or a column).
fn expand<F: Float>(v: Val<'_, F>, r: usize, c: usize) -> Vec<F> {
    if v.shape() == (r, c) {
        if let Val::Array { .. } = v {
            return v.into_data();
        }
    }
    let rd = v.reader();
    let mut out = kept_arrays::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            out.push(rd.at(i, j));
        }
    }
    out
}

/// Creates the state of one `rows × cols` tensor from its initial values.
pub fn init_state<F: Float>(
    rule: &Rule,
    hypers: &[HyperValue],
    param: &[F],
    dims: Dims,
) -> Result<Vec<StateBuf<F>>, InterpError> {
    let (rows, cols) = (dims.rows, dims.cols);
    if rows.checked_mul(cols) != Some(param.len()) {
        return Err(InterpError(format!(
            "the parameter has {} values, not {rows} × {cols}",
            param.len()
        )));
    }
    let leaves = Leaves {
        param,
        grad: &[],
        inputs: &[],
        state: &[],
        hypers,
        present: &[],
        t: 0.0,
        dims,
    };
    let roots: Vec<ValueId> = rule.states.iter().map(|s| s.init).collect();
    let inits = Evaluation::run(rule, &leaves, &[], &roots, None)?;
    Ok(inits
        .into_iter()
        .zip(&rule.states)
        .map(|(v, s)| match s.kind {
            StateKind::Scalar => StateBuf::Scalar(v.scalar()),
            kind => {
                let (r, c) = kind.rate().shape();
                let (r, c) = (r.len(dims.extents()), c.len(dims.extents()));
                StateBuf::Element(expand(v, r, c))
            }
        })
        .collect())
}

/// What the model sees of one `rows × cols` parameter before step `t`.
pub fn view<F: Float>(
    rule: &Rule,
    t: u64,
    hypers: &[HyperValue],
    param: &[F],
    state: &[StateBuf<F>],
    dims: Dims,
) -> Result<Vec<F>, InterpError> {
    let (rows, cols) = (dims.rows, dims.cols);
    let Some(root) = rule.view else {
        return Ok(param.to_vec());
    };
    let leaves = Leaves {
        param,
        grad: &[],
        inputs: &[],
        state,
        hypers,
        present: &vec![false; rule.inputs.len()],
        t: t as f64,
        dims,
    };
    let v = Evaluation::run(rule, &leaves, &[], &[root], None)?;
    Ok(v.into_iter()
        .next()
        .map(|v| expand(v, rows, cols))
        .unwrap_or_default())
}
