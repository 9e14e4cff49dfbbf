//! The functions of the optimizer language: names, arities, and what they lower to.

use lensopt_ir::rule::{Axis, BinOp, Dim, ReduceOp, Scope, UnOp};

/// What a call lowers to in the IR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// A unary operation `f -> f`.
    Unary(UnOp),
    /// `min` / `max` / `pow`: `f x f -> f`.
    Binary(BinOp),
    /// `clamp(x, lo, hi) = min(max(x, lo), hi)`.
    Clamp,
    /// `select(cond, a, b)`.
    Select,
    /// `fma(a, b, c) = a * b + c`, one rounding.
    Fma,
    /// `f64(x)`: `x` itself (every value is representable in f64; the
    /// function says in the rule that no rounding is wanted).
    KeepF64,
    /// `lerp(a, b, w)`: `a + w (b - a)`, in PyTorch's two-sided form.
    Lerp,
    /// `present(h)`: whether optional input `h` is supplied this step.
    Present,
    /// `numel()`: the element count of the tensor.
    Numel,
    /// A reduction (`sum`, `mean`, `max_abs`, `norm`, `count`, with `global_` prefix across all tensors).
    Reduce(ReduceOp, Scope),
    /// `dot(a, b) = sum(a * b)` (and `global_dot`).
    Dot(Scope),
    /// `rows()` / `cols()`: the tensor's size along an axis, seen as a matrix.
    Extent(Dim),
    /// `ndim()`: the tensor's number of axes (a rule reading it takes vectors as `1 × n`).
    Rank,
    /// `eye_rows()` / `eye_cols()`: the identity of `rows × rows` / `cols × cols`.
    Eye(Dim),
    /// A reduction along an axis: `sum_rows(x)` is one sum per row.
    ReduceAxis(ReduceOp, Axis),
    /// `machine_eps()`: the element type's machine epsilon.
    MachineEps,
    /// `transpose(x)`.
    Transpose,
    /// `matmul(a, b)`, also written `a @ b`.
    Matmul,
    /// `sym_pow(A, e)`: a power of a symmetric matrix.
    SymPow,
    /// `eigenbasis(A)`, `qr(A)`, `sort_perm(v)`: a factorisation.
    Linalg(lensopt_ir::Linalg),
    /// `wide`, `unwide`, `lead_cols`, `lead_rows`: a change of shape.
    Shape(lensopt_ir::ShapeOp),
}

/// The functions beyond the operation table's (whose unary and binary
/// operations spelled as calls, `sqrt` to `max`, come first), with their
/// arity. `pow(a, b)` is the function form of the `^` operator.
pub const BUILTINS: &[(&str, Builtin, usize)] = &[
    ("pow", Builtin::Binary(BinOp::Pow), 2),
    ("clamp", Builtin::Clamp, 3),
    ("select", Builtin::Select, 3),
    ("fma", Builtin::Fma, 3),
    ("f64", Builtin::KeepF64, 1),
    ("lerp", Builtin::Lerp, 3),
    ("present", Builtin::Present, 1),
    ("numel", Builtin::Numel, 0),
    ("sum", Builtin::Reduce(ReduceOp::Sum, Scope::Tensor), 1),
    ("mean", Builtin::Reduce(ReduceOp::Mean, Scope::Tensor), 1),
    (
        "max_abs",
        Builtin::Reduce(ReduceOp::MaxAbs, Scope::Tensor),
        1,
    ),
    ("norm", Builtin::Reduce(ReduceOp::Norm, Scope::Tensor), 1),
    ("count", Builtin::Reduce(ReduceOp::Count, Scope::Tensor), 1),
    ("dot", Builtin::Dot(Scope::Tensor), 2),
    (
        "global_sum",
        Builtin::Reduce(ReduceOp::Sum, Scope::Global),
        1,
    ),
    (
        "global_mean",
        Builtin::Reduce(ReduceOp::Mean, Scope::Global),
        1,
    ),
    (
        "global_max_abs",
        Builtin::Reduce(ReduceOp::MaxAbs, Scope::Global),
        1,
    ),
    (
        "global_norm",
        Builtin::Reduce(ReduceOp::Norm, Scope::Global),
        1,
    ),
    (
        "global_count",
        Builtin::Reduce(ReduceOp::Count, Scope::Global),
        1,
    ),
    ("global_dot", Builtin::Dot(Scope::Global), 2),
    ("rows", Builtin::Extent(Dim::Rows), 0),
    ("cols", Builtin::Extent(Dim::Cols), 0),
    ("ndim", Builtin::Rank, 0),
    ("eye_rows", Builtin::Eye(Dim::Rows), 0),
    ("eye_cols", Builtin::Eye(Dim::Cols), 0),
    ("sum_rows", Builtin::ReduceAxis(ReduceOp::Sum, Axis::Row), 1),
    (
        "mean_rows",
        Builtin::ReduceAxis(ReduceOp::Mean, Axis::Row),
        1,
    ),
    (
        "max_abs_rows",
        Builtin::ReduceAxis(ReduceOp::MaxAbs, Axis::Row),
        1,
    ),
    (
        "norm_rows",
        Builtin::ReduceAxis(ReduceOp::Norm, Axis::Row),
        1,
    ),
    ("sum_cols", Builtin::ReduceAxis(ReduceOp::Sum, Axis::Col), 1),
    (
        "mean_cols",
        Builtin::ReduceAxis(ReduceOp::Mean, Axis::Col),
        1,
    ),
    (
        "max_abs_cols",
        Builtin::ReduceAxis(ReduceOp::MaxAbs, Axis::Col),
        1,
    ),
    (
        "norm_cols",
        Builtin::ReduceAxis(ReduceOp::Norm, Axis::Col),
        1,
    ),
    ("machine_eps", Builtin::MachineEps, 0),
    ("transpose", Builtin::Transpose, 1),
    ("matmul", Builtin::Matmul, 2),
    ("sym_pow", Builtin::SymPow, 2),
    (
        "eigenbasis",
        Builtin::Linalg(lensopt_ir::Linalg::Eigenbasis),
        1,
    ),
    ("qr", Builtin::Linalg(lensopt_ir::Linalg::Qr), 1),
    (
        "sort_perm",
        Builtin::Linalg(lensopt_ir::Linalg::SortPerm),
        1,
    ),
    ("wide", Builtin::Shape(lensopt_ir::ShapeOp::Wide), 1),
    ("unwide", Builtin::Shape(lensopt_ir::ShapeOp::Unwide), 1),
    (
        "lead_cols",
        Builtin::Shape(lensopt_ir::ShapeOp::LeadCols),
        1,
    ),
    (
        "lead_rows",
        Builtin::Shape(lensopt_ir::ShapeOp::LeadRows),
        1,
    ),
];

/// Every function's name: the operation table's calls, then [`BUILTINS`].
pub fn names() -> Vec<&'static str> {
    let table = lensopt_ir::rule::UnOp::ALL
        .iter()
        .map(|u| u.info().spelling)
        .chain(
            lensopt_ir::rule::BinOp::ALL
                .iter()
                .map(|b| b.info().spelling),
        )
        .filter_map(|s| match s {
            lensopt_ir::ops::Spelling::Call(n) => Some(n),
            _ => None,
        });
    let mut out: Vec<&'static str> = table.chain(BUILTINS.iter().map(|b| b.0)).collect();
    out.dedup();
    out
}

/// The message for a call of a function that does not exist: the nearest
/// name (by edit distance, when close) and every function there is.
pub fn unknown_function(name: &str) -> String {
    let all = names();
    // (A name longer than any function's is not a misspelling of one.)
    let nearest = all
        .iter()
        .filter(|_| name.len() <= 32)
        .map(|n| (edit_distance(name, n), *n))
        .min()
        .filter(|(d, _)| *d <= (name.chars().count() / 3).max(1));
    let hint = nearest.map_or_else(String::new, |(_, n)| format!(": did you mean `{n}`?"));
    format!(
        "unknown function `{name}`{hint} (the functions are: {})",
        all.join(", ")
    )
}

/// Levenshtein distance over characters (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Looks a function up by name: what it lowers to and how many arguments it takes.
pub fn lookup(name: &str) -> Option<(Builtin, usize)> {
    match lensopt_ir::ops::call(name) {
        Some(Ok(u)) => return Some((Builtin::Unary(u), 1)),
        Some(Err(b)) => return Some((Builtin::Binary(b), 2)),
        None => {}
    }
    BUILTINS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, b, arity)| (b, arity))
}
