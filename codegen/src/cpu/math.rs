//! Math functions that cranelift has no instruction for, imported by generated code.
//!
//! Every import is registered explicitly with the JIT's symbol table, so no
//! symbol is ever looked up in the process. The same functions back the
//! reference interpreter, so results agree: `pow` is lensopt's own
//! (`lensopt_ir::elementary`), the others Rust's `std`, hence the platform
//! libm. (`exp` is emitted inline, see `emit`.)

/// A function generated code may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MathFn {
    /// ln x
    Ln,
    /// x^y
    Pow,
    /// cos x
    Cos,
    /// floor x
    Floor,
    /// x rounded to f32 ([`lensopt_ir::Float::round_f32`]).
    RoundF32,
    /// x rounded to bfloat16 ([`lensopt_ir::Float::round_bf16`]).
    RoundBf16,
}

impl MathFn {
    /// Every function, for registration.
    pub const ALL: [MathFn; 6] = [
        MathFn::Ln,
        MathFn::Pow,
        MathFn::Cos,
        MathFn::Floor,
        MathFn::RoundF32,
        MathFn::RoundBf16,
    ];

    /// The function an element operation calls (per lane), if any.
    pub fn called_by(op: &lensopt_ir::Op) -> Option<MathFn> {
        use lensopt_ir::{BinOp, Op, UnOp};
        match op {
            Op::Unary(UnOp::Ln, _) => Some(MathFn::Ln),
            Op::Unary(UnOp::Cos, _) => Some(MathFn::Cos),
            Op::Unary(UnOp::Floor, _) => Some(MathFn::Floor),
            Op::Unary(UnOp::RoundF32, _) => Some(MathFn::RoundF32),
            Op::Unary(UnOp::RoundBf16, _) => Some(MathFn::RoundBf16),
            Op::Binary(BinOp::Pow, _, _) => Some(MathFn::Pow),
            _ => None,
        }
    }

    /// Number of arguments.
    pub fn arity(self) -> usize {
        match self {
            MathFn::Ln | MathFn::Cos | MathFn::Floor | MathFn::RoundF32 | MathFn::RoundBf16 => 1,
            MathFn::Pow => 2,
        }
    }

    /// The symbol name for an element type (`"f32"` or `"f64"`).
    pub fn symbol(self, ty: &str) -> String {
        let base = match self {
            MathFn::Ln => "ln",
            MathFn::Pow => "pow",
            MathFn::Cos => "cos",
            MathFn::Floor => "floor",
            MathFn::RoundF32 => "round_f32",
            MathFn::RoundBf16 => "round_bf16",
        };
        format!("lensopt_{base}_{ty}")
    }
}

extern "C" fn ln_f32(x: f32) -> f32 {
    x.ln()
}
extern "C" fn ln_f64(x: f64) -> f64 {
    x.ln()
}
extern "C" fn pow_f32(x: f32, y: f32) -> f32 {
    lensopt_ir::elementary::pow_f32(x, y)
}
extern "C" fn pow_f64(x: f64, y: f64) -> f64 {
    lensopt_ir::elementary::pow_f64(x, y)
}
extern "C" fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}
extern "C" fn fma_f64(a: f64, b: f64, c: f64) -> f64 {
    a.mul_add(b, c)
}

extern "C" fn cos_f32(x: f32) -> f32 {
    x.cos()
}
extern "C" fn cos_f64(x: f64) -> f64 {
    x.cos()
}
extern "C" fn floor_f32(x: f32) -> f32 {
    x.floor()
}
extern "C" fn floor_f64(x: f64) -> f64 {
    x.floor()
}
extern "C" fn round_f32_f32(x: f32) -> f32 {
    x
}
extern "C" fn round_f32_f64(x: f64) -> f64 {
    lensopt_ir::Float::round_f32(x)
}
extern "C" fn round_bf16_f32(x: f32) -> f32 {
    lensopt_ir::Float::round_bf16(x)
}
extern "C" fn round_bf16_f64(x: f64) -> f64 {
    lensopt_ir::Float::round_bf16(x)
}

/// Every symbol generated code may reference, with its address: our math
/// functions, and cranelift's libcall names for the operations it may lower
/// to calls (`fmaf`, `fma`).
pub fn symbols() -> Vec<(String, *const u8)> {
    let ours: [(MathFn, *const u8, *const u8); 6] = [
        (MathFn::Ln, ln_f32 as *const u8, ln_f64 as *const u8),
        (MathFn::Pow, pow_f32 as *const u8, pow_f64 as *const u8),
        (MathFn::Cos, cos_f32 as *const u8, cos_f64 as *const u8),
        (
            MathFn::Floor,
            floor_f32 as *const u8,
            floor_f64 as *const u8,
        ),
        (
            MathFn::RoundF32,
            round_f32_f32 as *const u8,
            round_f32_f64 as *const u8,
        ),
        (
            MathFn::RoundBf16,
            round_bf16_f32 as *const u8,
            round_bf16_f64 as *const u8,
        ),
    ];
    let mut out = Vec::new();
    for (f, p32, p64) in ours {
        out.push((f.symbol("f32"), p32));
        out.push((f.symbol("f64"), p64));
    }
    out.push(("fmaf".to_string(), fma_f32 as *const u8));
    out.push(("fma".to_string(), fma_f64 as *const u8));
    out
}
