//! The operation table: every unary and binary operation of the language
//! defined once, with its name in the textual IR, how the DSL spells it
//! (an infix operator with its precedence, a prefix operator, or a
//! function), its operand and result types, and its extraction cost in the
//! e-graph. The parser, the checker, the builtins, the graph builder, the
//! IR printer and the optimizer's cost read this table instead of each
//! keeping a match of its own; the interpreter and the backends give each
//! operation its meaning.

use crate::rule::{BinOp, Ty, UnOp};

/// How the DSL writes an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// `a OP b`, binding as tightly as its precedence (higher binds tighter).
    Infix(&'static str, u8),
    /// `OP a`.
    Prefix(&'static str),
    /// `name(a)` or `name(a, b)`.
    Call(&'static str),
}

impl Spelling {
    /// The operator or function name as written.
    pub fn symbol(self) -> &'static str {
        match self {
            Infix(s, _) | Prefix(s) | Call(s) => s,
        }
    }
}

/// What the table says about one operation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpInfo {
    /// The name in the textual IR (`add`, `sqrt`).
    pub name: &'static str,
    /// How the DSL writes it.
    pub spelling: Spelling,
    /// The type of every operand.
    pub operand: Ty,
    /// The type of the result.
    pub result: Ty,
    /// Relative cost of one evaluation, for extraction (an addition is 1).
    pub cost: f64,
}

/// Precedences of the infix operators, loosest first.
pub mod precedence {
    /// `||`
    pub const OR: u8 = 1;
    /// `&&`
    pub const AND: u8 = 2;
    /// comparisons (not chained)
    pub const COMPARE: u8 = 3;
    /// `+ -`
    pub const ADD: u8 = 4;
    /// `* /`
    pub const MUL: u8 = 5;
    /// prefix `-` and `!`
    pub const UNARY: u8 = 6;
    /// `^` (right-associative, tighter than unary minus)
    pub const POW: u8 = 7;
}

const fn info(
    name: &'static str,
    spelling: Spelling,
    operand: Ty,
    result: Ty,
    cost: f64,
) -> OpInfo {
    OpInfo {
        name,
        spelling,
        operand,
        result,
        cost,
    }
}

use precedence as p;
use Spelling::{Call, Infix, Prefix};
use Ty::{Bool as B, Float as F};

impl UnOp {
    /// Every unary operation, in table order.
    pub const ALL: [UnOp; 14] = [
        UnOp::Neg,
        UnOp::Sqrt,
        UnOp::Rsqrt,
        UnOp::Abs,
        UnOp::Sign,
        UnOp::Exp,
        UnOp::Ln,
        UnOp::Sigmoid,
        UnOp::Cos,
        UnOp::Floor,
        UnOp::RoundF32,
        UnOp::RoundBf16,
        UnOp::Not,
        UnOp::ExpFma,
    ];

    /// The table's entry for this operation.
    pub const fn info(self) -> OpInfo {
        match self {
            UnOp::Neg => info("neg", Prefix("-"), F, F, 1.0),
            UnOp::Sqrt => info("sqrt", Call("sqrt"), F, F, 4.0),
            UnOp::Rsqrt => info("rsqrt", Call("rsqrt"), F, F, 5.0),
            UnOp::Abs => info("abs", Call("abs"), F, F, 1.0),
            UnOp::Sign => info("sign", Call("sign"), F, F, 2.0),
            UnOp::Exp => info("exp", Call("exp"), F, F, 20.0),
            UnOp::Ln => info("ln", Call("ln"), F, F, 20.0),
            // 1 / (1 + exp(-x)): an exp, a negation, an addition and a division.
            UnOp::Sigmoid => info("sigmoid", Call("sigmoid"), F, F, 26.0),
            UnOp::Cos => info("cos", Call("cos"), F, F, 20.0),
            UnOp::Floor => info("floor", Call("floor"), F, F, 2.0),
            UnOp::RoundF32 => info("f32", Call("f32"), F, F, 2.0),
            UnOp::RoundBf16 => info("bf16", Call("bf16"), F, F, 3.0),
            UnOp::Not => info("not", Prefix("!"), B, B, 1.0),
            // Ten vector operations fewer than `exp` where the CPU fuses.
            UnOp::ExpFma => info("exp_fma", Call("exp_fma"), F, F, 14.0),
        }
    }
}

impl BinOp {
    /// Every binary operation, in table order.
    pub const ALL: [BinOp; 15] = [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Pow,
        BinOp::Min,
        BinOp::Max,
        BinOp::Lt,
        BinOp::Le,
        BinOp::Gt,
        BinOp::Ge,
        BinOp::Eq,
        BinOp::Ne,
        BinOp::And,
        BinOp::Or,
    ];

    /// The table's entry for this operation. `pow` is both `^` and
    /// `pow(a, b)`; the table lists the operator.
    pub const fn info(self) -> OpInfo {
        match self {
            BinOp::Add => info("add", Infix("+", p::ADD), F, F, 1.0),
            BinOp::Sub => info("sub", Infix("-", p::ADD), F, F, 1.0),
            BinOp::Mul => info("mul", Infix("*", p::MUL), F, F, 1.0),
            BinOp::Div => info("div", Infix("/", p::MUL), F, F, 4.0),
            BinOp::Pow => info("pow", Infix("^", p::POW), F, F, 20.0),
            BinOp::Min => info("min", Call("min"), F, F, 1.0),
            BinOp::Max => info("max", Call("max"), F, F, 1.0),
            BinOp::Lt => info("lt", Infix("<", p::COMPARE), F, B, 1.0),
            BinOp::Le => info("le", Infix("<=", p::COMPARE), F, B, 1.0),
            BinOp::Gt => info("gt", Infix(">", p::COMPARE), F, B, 1.0),
            BinOp::Ge => info("ge", Infix(">=", p::COMPARE), F, B, 1.0),
            BinOp::Eq => info("eq", Infix("==", p::COMPARE), F, B, 1.0),
            BinOp::Ne => info("ne", Infix("!=", p::COMPARE), F, B, 1.0),
            BinOp::And => info("and", Infix("&&", p::AND), B, B, 1.0),
            BinOp::Or => info("or", Infix("||", p::OR), B, B, 1.0),
        }
    }

    /// True for the comparisons, which do not chain.
    pub fn is_comparison(self) -> bool {
        matches!(self.info().spelling, Infix(_, p::COMPARE))
    }

    /// How the DSL writes the operator or function.
    pub fn symbol(self) -> &'static str {
        self.info().spelling.symbol()
    }
}

/// The unary or binary operation called `name(...)` in the DSL, if any.
pub fn call(name: &str) -> Option<Result<UnOp, BinOp>> {
    let spelled = |s: Spelling| matches!(s, Call(n) if n == name);
    UnOp::ALL
        .into_iter()
        .find(|u| spelled(u.info().spelling))
        .map(Ok)
        .or_else(|| {
            BinOp::ALL
                .into_iter()
                .find(|b| spelled(b.info().spelling))
                .map(Err)
        })
}
