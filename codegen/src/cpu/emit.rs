//! Element-wise IR nodes as CLIF vector instructions, one function per construct.
//!
//! Floats are vectors of the element type; booleans are lane masks (all
//! ones or all zeros), so comparisons, `&&`, `||`, `!` and `select` are
//! single instructions. `exp` is emitted inline, and `pow` as a square root
//! where its exponent is known to be 0.5; other functions without an
//! instruction (ln, cos, pow) are called lane by lane.

use super::lanes::JitFloat;
use super::math::MathFn;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{self, Endianness, FuncRef, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use lensopt_ir::{BinOp, Op, Rule, Ty, UnOp, ValueId};
use std::collections::HashMap;
use std::marker::PhantomData;

pub use lensopt_ir::schedule::buffer_count;
pub use lensopt_ir::schedule::buffer_of as buffer_index;

/// Memory flags of every kernel access: buffers are checked by the caller,
/// so accesses cannot trap; vectors are not assumed aligned.
pub fn mem_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Little-endian flags, for bitcasts between vector types.
pub fn bitcast_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// Emits the element-wise part of one vector iteration.
pub struct Emitter<'a, 'b, F> {
    /// The function under construction.
    pub b: &'a mut FunctionBuilder<'b>,
    /// The rule whose nodes are emitted.
    pub rule: &'a Rule,
    /// Base pointer of each buffer (loaded once at entry).
    pub bases: &'a [Option<Value>],
    /// Vector (or mask) of every non-element value loaded at entry.
    pub scalars: &'a [Option<Value>],
    /// Slots loaded where they are used instead (slot index and type), with
    /// the slot table's address: a kernel reading many slots would otherwise
    /// keep them all live across its loop, which the register allocator
    /// handles in superlinear time.
    pub lazy: LazySlots<'a>,
    /// Imported math functions.
    pub imports: &'a HashMap<MathFn, FuncRef>,
    /// Exponents known to be 0.5 in this loop: `pow` with one of them is a
    /// square root (see `lensopt_ir::schedule::scalar_exponents`).
    pub square_roots: &'a [ValueId],
    /// Element type.
    pub element: PhantomData<F>,
}

/// Slots that a kernel loads at their uses (see [`Emitter::lazy`]).
#[derive(Clone, Copy)]
pub struct LazySlots<'a> {
    /// The address of the slot table, when any slot is loaded lazily.
    pub table: Option<Value>,
    /// Per node, its slot index and type when it is loaded lazily.
    pub slots: &'a [Option<(usize, Ty)>],
}

impl<F: JitFloat> Emitter<'_, '_, F> {
    /// Emits the element nodes `needed` (ids in order) for the vector at byte
    /// offset `offset + imm` and returns each node's value.
    pub fn emit(&mut self, needed: &[usize], offset: Value, imm: i32) -> Vec<Option<Value>> {
        let mut vals: Vec<Option<Value>> = self.scalars.to_vec();
        for &id in needed {
            let op = self.rule.nodes[id].op;
            if let Some(table) = self.lazy.table {
                for a in op.args() {
                    if let (None, Some((slot, ty))) = (vals[a.index()], self.lazy.slots[a.index()])
                    {
                        vals[a.index()] = Some(load_slot::<F>(self.b, table, slot, ty));
                    }
                }
            }
            let v = |x: ValueId| vals[x.index()].expect("arguments are emitted first");
            let value = match op {
                Op::Param | Op::Grad | Op::Input(_) | Op::State(_) => self.load(&op, offset, imm),
                Op::Unary(u, a) => self.unary(u, v(a)),
                Op::Binary(BinOp::Pow, x, y) if self.square_roots.contains(&y) => {
                    self.half_power(v(x))
                }
                Op::Binary(bop, x, y) => self.binary(bop, v(x), v(y)),
                Op::Select(c, a, b) => {
                    let float = self.rule.nodes[id].ty == Ty::Float;
                    self.select(v(c), v(a), v(b), float)
                }
                Op::Fma(a, b, c) => self.b.ins().fma(v(a), v(b), v(c)),
                other => unreachable!("{other:?} is not element-wise"),
            };
            vals[id] = Some(value);
        }
        vals
    }

    fn load(&mut self, op: &Op, offset: Value, imm: i32) -> Value {
        let index = buffer_index(self.rule, op).expect("a buffer leaf");
        let base = self.bases[index].expect("the buffer is passed");
        let addr = self.b.ins().iadd(base, offset);
        self.b.ins().load(F::VECTOR, mem_flags(), addr, imm)
    }

    /// A vector with every lane `x`.
    pub fn splat(&mut self, x: f64) -> Value {
        let scalar = if F::BYTES == 4 {
            self.b.ins().f32const(x as f32)
        } else {
            self.b.ins().f64const(x)
        };
        self.b.ins().splat(F::VECTOR, scalar)
    }

    /// Reinterprets a lane mask as a float vector (for `bitselect`).
    fn mask_as_float(&mut self, mask: Value) -> Value {
        let flags = bitcast_flags();
        self.b.ins().bitcast(F::VECTOR, flags, mask)
    }

    /// f32 lanes rounded to bfloat16 in the lanes' bits, as
    /// `lensopt_ir::float::bf16_of_f32`: the low 16 bits rounded off to
    /// nearest, ties to even; a NaN quieted and truncated.
    fn round_bf16(&mut self, a: Value) -> Value {
        let flags = bitcast_flags();
        let ints = F::VECTOR.as_int();
        let splat = |this: &mut Self, x: u32| {
            let c = this.b.ins().iconst(ir::types::I32, i64::from(x as i32));
            this.b.ins().splat(ints, c)
        };
        let (one, half, high, quiet) = (
            splat(self, 1),
            splat(self, 0x7FFF),
            splat(self, 0xFFFF_0000),
            splat(self, 0x0040_0000),
        );
        let bits = self.b.ins().bitcast(ints, flags, a);
        let kept_low = self.b.ins().ushr_imm_u(bits, 16);
        let odd = self.b.ins().band(kept_low, one);
        let bias = self.b.ins().iadd(half, odd);
        let rounded = self.b.ins().iadd(bits, bias);
        let rounded = self.b.ins().band(rounded, high);
        let nan = self.b.ins().bor(bits, quiet);
        let nan = self.b.ins().band(nan, high);
        // (A lane mask: integer lanes, all ones where `a` is NaN.)
        let is_nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
        let out = self.b.ins().bitselect(is_nan, nan, rounded);
        self.b.ins().bitcast(F::VECTOR, flags, out)
    }

    /// `e^x` on every lane, inline: the steps of `lensopt_ir::elementary`
    /// with its constants, in its order, so the bits are the interpreter's
    /// (cranelift's `fmin`/`fmax` keep NaN as `clamp` does, and it never
    /// fuses a multiply and an add). `fused`: `exp_fma`'s steps, with an
    /// `fma` wherever a product feeds a sum (a libcall to `fmaf`/`fma` on
    /// a CPU without FMA, so the bits are the same).
    fn exp(&mut self, x: Value, fused: bool) -> Value {
        use lensopt_ir::elementary::{EXP_F32, EXP_F64};
        let steps = if F::BYTES == 4 { EXP_F32 } else { EXP_F64 };
        let flags = bitcast_flags();
        let ints = F::VECTOR.as_int();
        let (low, high) = (self.splat(steps.low), self.splat(steps.high));
        let c = self.b.ins().fmax(x, low);
        let c = self.b.ins().fmin(c, high);
        let shifter = self.splat(steps.shifter);
        let log2e = self.splat(steps.log2e);
        let (k, r) = if fused {
            let k = self.b.ins().fma(c, log2e, shifter);
            let k = self.b.ins().fsub(k, shifter);
            let (hi, lo) = (self.splat(-steps.ln2_hi), self.splat(-steps.ln2_lo));
            let r = self.b.ins().fma(k, hi, c);
            (k, self.b.ins().fma(k, lo, r))
        } else {
            let k = self.b.ins().fmul(c, log2e);
            let k = self.b.ins().fadd(k, shifter);
            let k = self.b.ins().fsub(k, shifter);
            let (hi, lo) = (self.splat(steps.ln2_hi), self.splat(steps.ln2_lo));
            let khi = self.b.ins().fmul(k, hi);
            let r = self.b.ins().fsub(c, khi);
            let klo = self.b.ins().fmul(k, lo);
            (k, self.b.ins().fsub(r, klo))
        };
        let (last, rest) = steps.taylor.split_last().expect("Taylor terms");
        let mut p = self.splat(*last);
        for coefficient in rest.iter().rev() {
            let term = self.splat(*coefficient);
            p = if fused {
                self.b.ins().fma(p, r, term)
            } else {
                let product = self.b.ins().fmul(p, r);
                self.b.ins().fadd(product, term)
            };
        }
        let half = self.splat(0.5);
        let halved = self.b.ins().fmul(k, half);
        let halved = self.b.ins().fadd(halved, shifter);
        let back = self.b.ins().fsub(halved, shifter);
        let remaining = self.b.ins().fsub(k, back);
        let remaining = self.b.ins().fadd(remaining, shifter);
        let bias = self.b.ins().iconst(ints.lane_type(), i64::from(steps.bias));
        let bias = self.b.ins().splat(ints, bias);
        let mut two_to = |t: Value| {
            let bits = self.b.ins().bitcast(ints, flags, t);
            let bits = self.b.ins().iadd(bits, bias);
            let bits = self
                .b
                .ins()
                .ishl_imm_u(bits, i64::from(steps.mantissa_bits));
            self.b.ins().bitcast(F::VECTOR, flags, bits)
        };
        let (s_rest, s_half) = (two_to(remaining), two_to(halved));
        let scaled = self.b.ins().fmul(p, s_rest);
        self.b.ins().fmul(scaled, s_half)
    }

    fn unary(&mut self, op: UnOp, a: Value) -> Value {
        match op {
            UnOp::Neg => self.b.ins().fneg(a),
            UnOp::Sqrt => self.b.ins().sqrt(a),
            UnOp::Rsqrt => {
                let one = self.splat(1.0);
                let root = self.b.ins().sqrt(a);
                self.b.ins().fdiv(one, root)
            }
            UnOp::Abs => self.b.ins().fabs(a),
            // sign(x) = 1 where x > 0, -1 where x < 0, else x (keeps 0, -0, NaN).
            UnOp::Sign => {
                let zero = self.splat(0.0);
                let one = self.splat(1.0);
                let minus_one = self.splat(-1.0);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, a, zero);
                let neg = self.b.ins().fcmp(FloatCC::LessThan, a, zero);
                let pos = self.mask_as_float(pos);
                let neg = self.mask_as_float(neg);
                let r = self.b.ins().bitselect(neg, minus_one, a);
                self.b.ins().bitselect(pos, one, r)
            }
            UnOp::Exp => self.exp(a, false),
            UnOp::ExpFma => self.exp(a, true),
            UnOp::Ln => self.per_lane(MathFn::Ln, &[a]),
            // sigmoid(x) = 1 / (1 + e^-x)
            UnOp::Sigmoid => {
                let minus = self.b.ins().fneg(a);
                let e = self.exp(minus, false);
                let one = self.splat(1.0);
                let den = self.b.ins().fadd(one, e);
                self.b.ins().fdiv(one, den)
            }
            UnOp::Cos => self.per_lane(MathFn::Cos, &[a]),
            UnOp::Floor => self.per_lane(MathFn::Floor, &[a]),
            // Rounding to f32 is the identity on f32 lanes.
            UnOp::RoundF32 if F::VECTOR.lane_type() == ir::types::F32 => a,
            UnOp::RoundF32 => self.per_lane(MathFn::RoundF32, &[a]),
            UnOp::RoundBf16 if F::VECTOR.lane_type() == ir::types::F32 => self.round_bf16(a),
            UnOp::RoundBf16 => self.per_lane(MathFn::RoundBf16, &[a]),
            UnOp::Not => self.b.ins().bnot(a),
        }
    }

    fn binary(&mut self, op: BinOp, x: Value, y: Value) -> Value {
        let cmp = |cc: FloatCC, this: &mut Self| this.b.ins().fcmp(cc, x, y);
        match op {
            BinOp::Add => self.b.ins().fadd(x, y),
            BinOp::Sub => self.b.ins().fsub(x, y),
            BinOp::Mul => self.b.ins().fmul(x, y),
            BinOp::Div => self.b.ins().fdiv(x, y),
            BinOp::Pow => self.per_lane(MathFn::Pow, &[x, y]),
            // cranelift's fmin/fmax are IEEE 754-2019 minimum/maximum, as the IR's.
            BinOp::Min => self.b.ins().fmin(x, y),
            BinOp::Max => self.b.ins().fmax(x, y),
            BinOp::Lt => cmp(FloatCC::LessThan, self),
            BinOp::Le => cmp(FloatCC::LessThanOrEqual, self),
            BinOp::Gt => cmp(FloatCC::GreaterThan, self),
            BinOp::Ge => cmp(FloatCC::GreaterThanOrEqual, self),
            BinOp::Eq => cmp(FloatCC::Equal, self),
            BinOp::Ne => cmp(FloatCC::NotEqual, self),
            BinOp::And => self.b.ins().band(x, y),
            BinOp::Or => self.b.ins().bor(x, y),
        }
    }

    fn select(&mut self, mask: Value, a: Value, b: Value, float: bool) -> Value {
        if float {
            let m = self.mask_as_float(mask);
            self.b.ins().bitselect(m, a, b)
        } else {
            self.b.ins().bitselect(mask, a, b)
        }
    }

    /// `x^0.5` as `lensopt_ir::elementary::half_power_f64`: the vector
    /// square root of `x + 0` (so -0 gives +0), and +inf for -inf.
    fn half_power(&mut self, x: Value) -> Value {
        let zero = self.splat(0.0);
        let plus = self.b.ins().fadd(x, zero);
        let root = self.b.ins().sqrt(plus);
        let minus_inf = self.splat(f64::NEG_INFINITY);
        let inf = self.splat(f64::INFINITY);
        let is_minus_inf = self.b.ins().fcmp(FloatCC::Equal, x, minus_inf);
        self.select(is_minus_inf, inf, root, true)
    }

    /// Calls `f` on each lane and gathers the results into a vector.
    fn per_lane(&mut self, f: MathFn, args: &[Value]) -> Value {
        let func: FuncRef = self.imports[&f];
        let mut out = args[0];
        for lane in 0..F::LANES as u8 {
            let lane_args: Vec<Value> = args
                .iter()
                .map(|a| self.b.ins().extractlane(*a, lane))
                .collect();
            let call = self.b.ins().call(func, &lane_args);
            let r = self.b.inst_results(call)[0];
            out = self.b.ins().insertlane(out, r, lane);
        }
        out
    }
}

/// Loads scalar slot `index` from `slots`, where the host stores every slot
/// already broadcast to a whole vector (a load at entry stays in a register
/// across the loop; a splat would be recomputed inside it). Booleans become masks.
pub fn load_slot<F: JitFloat>(
    b: &mut FunctionBuilder<'_>,
    slots: Value,
    index: usize,
    ty: Ty,
) -> Value {
    let v = b.ins().load(
        F::VECTOR,
        mem_flags(),
        slots,
        (index * F::LANES * F::BYTES) as i32,
    );
    match ty {
        Ty::Float => v,
        Ty::Bool => {
            let zero = if F::BYTES == 4 {
                b.ins().f32const(0.0)
            } else {
                b.ins().f64const(0.0)
            };
            let zero = b.ins().splat(F::VECTOR, zero);
            b.ins().fcmp(FloatCC::NotEqual, v, zero)
        }
    }
}

/// The type of a slot's vector value.
pub fn vector_type<F: JitFloat>(ty: Ty) -> ir::Type {
    match ty {
        Ty::Float => F::VECTOR,
        Ty::Bool => F::MASK,
    }
}
