//! The surface syntax of the optimizer language, as written.
//!
//! This is what [`crate::parse`] produces and [`crate::check`] consumes:
//! names are still strings, nothing is resolved or typed yet. Every node
//! keeps the span of the token a diagnostic about it should point at.

use lensopt_ir::rule::{BinOp, UnOp};
use proc_macro2::{Span, TokenStream};

/// A name with its span.
#[derive(Clone, Debug)]
pub struct Name {
    /// The identifier.
    pub text: String,
    /// Where it was written.
    pub span: Span,
}

/// One optimizer declaration: `pub Adam { hyper ...; state ...; update { ... } }`.
#[derive(Clone, Debug)]
pub struct RuleDecl {
    /// Doc comment lines (`///` or `#[doc = ...]`).
    pub doc: Vec<String>,
    /// Visibility tokens (`pub`, `pub(crate)`, or empty), kept for expansion.
    pub vis: TokenStream,
    /// The optimizer's name.
    pub name: Name,
    /// `hyper` declarations.
    pub hypers: Vec<HyperItem>,
    /// `state` declarations.
    pub states: Vec<StateItem>,
    /// `axis low = k;`: the hyperparameter naming the low axis's length.
    pub low_axis: Option<Name>,
    /// `input` declarations.
    pub inputs: Vec<InputItem>,
    /// The `view` of the parameter, if declared.
    pub view: Option<Expr>,
    /// The `update` block, if present (its absence is a check error).
    pub update: Option<Block>,
    /// The functions and transforms the rule may call: the prelude's, then
    /// those declared before the rule (a later one of the same name hides
    /// an earlier one).
    pub functions: Vec<FunctionDecl>,
    /// Span of the whole declaration's name, for errors about missing parts.
    pub span: Span,
}

/// `fn name(params) = expr;` or `fn name(params) { let ...; expr }`: a pure
/// function, inlined where it is called; or `transform name(params) { hyper
/// ...; state ...; statements; expr }`: a piece of an update with its own
/// hyperparameters and state, inlined into the update block that calls it
/// (its hyperparameters and states become the rule's).
#[derive(Clone, Debug)]
pub struct FunctionDecl {
    /// True for a `transform`.
    pub transform: bool,
    /// The function's name.
    pub name: Name,
    /// Parameter names.
    pub params: Vec<Name>,
    /// A transform's hyperparameters (empty for a function).
    pub hypers: Vec<HyperItem>,
    /// A transform's states (empty for a function).
    pub states: Vec<StateItem>,
    /// `let` bindings (and, in a transform, assignments to its states).
    pub stmts: Vec<Stmt>,
    /// The value the call stands for.
    pub result: Expr,
}

/// A literal value of a hyperparameter default.
#[derive(Clone, Debug)]
pub enum Literal {
    /// A number.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
}

/// `name = literal` inside `hyper ...;`.
#[derive(Clone, Debug)]
pub struct HyperItem {
    /// Name of the hyperparameter.
    pub name: Name,
    /// Default value, or the expression written where a literal belongs.
    pub default: Result<Literal, Span>,
}

/// `name = expr` inside `state ...;` or `state scalar ...;`.
#[derive(Clone, Debug)]
pub struct StateItem {
    /// Name of the state variable.
    pub name: Name,
    /// True for `state scalar` (one value per tensor instead of per element).
    pub scalar: bool,
    /// `state row` (one value per row) or `state col` (one per column).
    pub per: Option<lensopt_ir::Axis>,
    /// `state [a, b]`: the axes of a matrix state (`1`, `rows`, `cols`,
    /// `short`, `long`, `low`), with the span of the brackets.
    pub shape: Option<([String; 2], Span)>,
    /// Initial value.
    pub init: Expr,
}

/// `name` or `name?` inside `input ...;`.
#[derive(Clone, Debug)]
pub struct InputItem {
    /// Name of the extra per-element input.
    pub name: Name,
    /// True when the input may be absent at a step.
    pub optional: bool,
}

/// The statements of `update { ... }`.
#[derive(Clone, Debug)]
pub struct Block {
    /// Statements in execution order.
    pub stmts: Vec<Stmt>,
    /// Span of the `update` keyword.
    pub span: Span,
}

/// One statement.
#[derive(Clone, Debug)]
pub enum Stmt {
    /// `let name = expr;`
    Let(Name, Expr),
    /// `name = expr;` (span of the `=`)
    Assign(Name, Expr, Span),
    /// `repeat count { ... }`: the body `count` times (an integer literal,
    /// or a hyperparameter); span of the keyword.
    Repeat(Expr, Vec<Stmt>, Span),
    /// `every period { ... }`: the body's assignments take effect at steps
    /// `t` that are multiples of `period`; span of the keyword.
    Every(Expr, Vec<Stmt>, Span),
}

impl Stmt {
    /// Every expression of the statement, nested blocks included.
    pub fn exprs(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(s) = stack.pop() {
            match s {
                Stmt::Let(_, e) | Stmt::Assign(_, e, _) => out.push(e),
                Stmt::Repeat(e, body, _) | Stmt::Every(e, body, _) => {
                    out.push(e);
                    stack.extend(body.iter().rev());
                }
            }
        }
        out
    }
}

/// An expression; `span` is the token a diagnostic about it points at
/// (the operator of a binary expression, the name of a call).
#[derive(Clone, Debug)]
pub struct Expr {
    /// What kind of expression.
    pub kind: ExprKind,
    /// The token to point at.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Clone, Debug)]
pub enum ExprKind {
    /// A number literal.
    Num(f64),
    /// `true` / `false`.
    Bool(bool),
    /// A name.
    Var(String),
    /// A prefix operation (`-x`, `!b`), from the operation table.
    Unary(UnOp, Box<Expr>),
    /// An infix operation, from the operation table.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// A function call `f(a, b)`.
    Call(String, Vec<Expr>),
}
