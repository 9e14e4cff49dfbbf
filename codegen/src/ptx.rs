//! The PTX backend: the phases of a schedule as PTX text for NVIDIA GPUs.
//!
//! One kernel per phase, all tensors of a step in one launch: the kernel
//! reads a table of tensor descriptors (u64 words: element count, pointer
//! to the tensor's scalar slots, then one pointer per buffer in kernel
//! order), takes its tensor from `%ctaid.y` and walks its elements with a
//! grid-stride loop over `%ctaid.x`.
//!
//! - element kernel `element(table, tensors)`: loads, arithmetic, stores,
//!   16 bytes at a time (`ld.global.v4.f32` / `v2.f64`) when the tensor's
//!   buffers are aligned, element by element for the rest;
//! - reduction kernel `reduceK(table, tensors, partials)` per pass: each
//!   thread accumulates in f64, warps combine with `shfl.sync.down`, warps
//!   through shared memory, and every block writes one partial per reduction
//!   to `partials[(tensor * gridDim.x + block) * count + k]`; the host
//!   combines the partials in order, so results are reproducible for a
//!   fixed launch shape.
//!
//! - circuit kernels (`emit_circuit`): one thread per 64-bit word of examples.
//!
//! Arithmetic uses the IEEE-rounded forms (`add.rn`, `mul.rn`, `div.rn`,
//! `sqrt.rn`, `fma.rn`, so nothing is contracted behind the IR's back) and
//! NaN-propagating `min`/`max` (`.NaN` in f32, a NaN test in f64), as the IR.
//! In f32, `exp`, `ln`, `pow` and `sigmoid` use the hardware's `ex2`/`lg2`
//! approximations; in f64 they are range reduction and `fma` series
//! ([`exp_f64_model`], [`ln_f64_model`] are the same steps on the CPU,
//! checked against libm), `pow` as `e^(y ln x)` for non-negative bases.
//! PTX ISA 7.8, `.target sm_80` or later.

use lensopt_ir::schedule::{buffer_count, buffer_of, element_nodes, output_buffer, Schedule};
use lensopt_ir::{BinOp, Op, ReduceOp, Rule, Ty, UnOp, ValueId};
use std::fmt::Write;

/// The element type of the generated kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 elements.
    F32,
    /// f64 elements.
    F64,
}

impl Precision {
    fn ty(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
    }
    fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F64 => 8,
        }
    }
    fn reg(self) -> &'static str {
        match self {
            Precision::F32 => "%f",
            Precision::F64 => "%fd",
        }
    }
    fn literal(self, x: f64) -> String {
        match self {
            Precision::F32 => format!("0f{:08X}", (x as f32).to_bits()),
            Precision::F64 => format!("0d{:016X}", x.to_bits()),
        }
    }
}

/// Why a rule has no PTX form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxError(pub String);

impl std::fmt::Display for PtxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PtxError {}

/// ln 2 split for exact range reduction: `LN2_HI` has trailing zeros, so `k * LN2_HI` is exact.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);

/// Taylor coefficients 1/j! of e^r for j = 0..=13 (|r| <= ln 2 / 2: error below 1e-17).
const EXP_TAYLOR: [f64; 14] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362880.0,
    1.0 / 3628800.0,
    1.0 / 39916800.0,
    1.0 / 479001600.0,
    1.0 / 6227020800.0,
];

/// Odd terms of the atanh series used by `ln`: 1/1, 1/3, ..., 1/(LN_TERMS - 1) plus 1/LN_TERMS.
const LN_TERMS: usize = 23;

/// The steps of the f64 `exp` the PTX backend emits, on the CPU (for tests).
pub fn exp_f64_model(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let c = x.clamp(-746.0, 710.0);
    let k = (c * std::f64::consts::LOG2_E).round_ties_even();
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, c));
    let mut p = EXP_TAYLOR[EXP_TAYLOR.len() - 1];
    for coef in EXP_TAYLOR.iter().rev().skip(1) {
        p = p.mul_add(r, *coef);
    }
    let k1 = k as i64;
    let k2 = k1 >> 1;
    let k1 = k1 - k2;
    let s1 = f64::from_bits(((k1 + 1023) as u64) << 52);
    let s2 = f64::from_bits(((k2 + 1023) as u64) << 52);
    p * s1 * s2
}

/// The steps of the f64 `ln` the PTX backend emits, on the CPU (for tests).
pub fn ln_f64_model(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x == f64::INFINITY {
        return x;
    }
    let sub = x < f64::MIN_POSITIVE;
    let xs = if sub { x * 18014398509481984.0 } else { x };
    let bits = xs.to_bits();
    let mut e = ((bits >> 52) & 2047) as i64 - 1023 - if sub { 54 } else { 0 };
    let mut m = f64::from_bits((bits & 4503599627370495) | 4607182418800017408);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut q = 1.0 / LN_TERMS as f64;
    for j in (0..LN_TERMS / 2).rev() {
        q = q.mul_add(s2, 1.0 / (2 * j + 1) as f64);
    }
    q *= s;
    q += q;
    let e = e as f64;
    e.mul_add(LN2_HI, e.mul_add(LN2_LO, q))
}

/// The module header: PTX ISA 7.8 for `target`, 64-bit addresses.
fn header(target: &str) -> String {
    format!(".version 7.8\n.target {target}\n.address_size 64\n\n")
}

/// Threads per block of every kernel (a multiple of the warp size).
pub const BLOCK: usize = 256;

/// Number of u64 words of one tensor descriptor.
pub fn descriptor_words(rule: &Rule) -> usize {
    2 + buffer_count(rule)
}

/// A PTX module: its text and the names of its kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct PtxModule {
    /// The PTX text.
    pub text: String,
    /// `element`, then `reduce0`, `reduce1`, ...
    pub kernels: Vec<String>,
}

/// Emits the PTX of every phase of `schedule` for `target` (e.g. `sm_80`).
pub fn emit(
    schedule: &Schedule,
    precision: Precision,
    target: &str,
) -> Result<PtxModule, PtxError> {
    let mut text = String::new();
    let _ = writeln!(text, "// lensopt: rule {}", schedule.rule.name);
    text.push_str(&header(target));
    let mut kernels = Vec::new();
    for (k, pass) in schedule.passes.iter().enumerate() {
        let name = format!("reduce{k}");
        text.push_str(&Kernel::new(schedule, precision).reduction(&name, pass)?);
        kernels.push(name);
    }
    text.push_str(&Kernel::new(schedule, precision).element()?);
    kernels.push("element".to_string());
    Ok(PtxModule { text, kernels })
}

/// One kernel under construction: its body, and counters for registers.
struct Kernel<'s> {
    schedule: &'s Schedule,
    rule: &'s Rule,
    p: Precision,
    body: String,
    floats: usize,
    preds: usize,
    u64s: usize,
}

impl<'s> Kernel<'s> {
    fn new(schedule: &'s Schedule, p: Precision) -> Self {
        Kernel {
            schedule,
            rule: &schedule.rule,
            p,
            body: String::new(),
            floats: 0,
            // %p0 to %p2 are the kernels' own (bounds and loop tests).
            preds: 2,
            u64s: 100,
        }
    }

    fn line(&mut self, s: impl AsRef<str>) {
        self.body.push('\t');
        self.body.push_str(s.as_ref());
        self.body.push('\n');
    }

    fn float(&mut self) -> String {
        self.floats += 1;
        format!("{}{}", self.p.reg(), self.floats)
    }

    fn pred(&mut self) -> String {
        self.preds += 1;
        format!("%p{}", self.preds)
    }

    fn u64reg(&mut self) -> String {
        self.u64s += 1;
        format!("%rd{}", self.u64s)
    }

    /// `N` fresh float registers, numbered in order.
    fn floats<const N: usize>(&mut self) -> [String; N] {
        std::array::from_fn(|_| self.float())
    }

    /// `N` fresh predicates, numbered in order.
    fn preds<const N: usize>(&mut self) -> [String; N] {
        std::array::from_fn(|_| self.pred())
    }

    /// `N` fresh u64 registers, numbered in order.
    fn u64regs<const N: usize>(&mut self) -> [String; N] {
        std::array::from_fn(|_| self.u64reg())
    }

    /// A fresh register holding the address of buffer `b`'s element at byte offset `%rd8`.
    fn address(&mut self, b: usize) -> String {
        let a = self.u64reg();
        self.line(format!("add.u64 {a}, %rd{}, %rd8;", 10 + b));
        a
    }

    /// `%acc{k} = %acc{k} (op) %acc{32 + k}`: two partials of reduction `k`.
    fn combine(&mut self, op: ReduceOp, k: usize) {
        match op {
            ReduceOp::MaxAbs => self.max_nan(&format!("%acc{k}"), &format!("%acc{}", 32 + k)),
            _ => self.line(format!("add.rn.f64 %acc{k}, %acc{k}, %acc{};", 32 + k)),
        }
    }

    /// Loads the descriptor of this block's tensor: `%rd1` = n, `%rd2` = slots,
    /// `%rd{10 + b}` = buffer `b`; `%rd3` = this thread's first element, `%rd4` = stride.
    fn prologue(&mut self, buffers: &[usize]) {
        let words = descriptor_words(self.rule);
        self.line("ld.param.u64 %rd5, [table];");
        self.line("cvta.to.global.u64 %rd5, %rd5;");
        self.line("mov.u32 %r1, %ctaid.y;");
        self.line("ld.param.u32 %r2, [tensors];");
        self.line("setp.ge.u32 %p0, %r1, %r2;");
        self.line("@%p0 bra DONE;");
        self.line(format!("mul.wide.u32 %rd6, %r1, {};", words * 8));
        self.line("add.u64 %rd6, %rd5, %rd6;");
        self.line("ld.global.u64 %rd1, [%rd6];");
        self.line("ld.global.u64 %rd2, [%rd6+8];");
        for &b in buffers {
            self.line(format!(
                "ld.global.u64 %rd{}, [%rd6+{}];",
                10 + b,
                16 + 8 * b
            ));
        }
        self.line("mov.u32 %r3, %ctaid.x;");
        self.line("mov.u32 %r4, %ntid.x;");
        self.line("mov.u32 %r5, %tid.x;");
        self.line("mul.wide.u32 %rd3, %r3, %r4;");
        self.line("cvt.u64.u32 %rd7, %r5;");
        self.line("add.u64 %rd3, %rd3, %rd7;");
        self.line("mov.u32 %r6, %nctaid.x;");
        self.line("mul.wide.u32 %rd4, %r6, %r4;");
    }

    /// The values of the slots (loaded once per thread), by node.
    fn slots(&mut self, needed_by: &[usize]) -> Vec<Option<String>> {
        let mut reads = vec![false; self.rule.nodes.len()];
        for &id in needed_by {
            for a in self.rule.nodes[id].op.args() {
                reads[a.index()] = true;
            }
        }
        for (_, v) in &self.schedule.outputs {
            reads[v.index()] = true;
        }
        let mut vals = vec![None; self.rule.nodes.len()];
        let schedule = self.schedule;
        for (j, v) in schedule.slots.iter().enumerate() {
            if !reads[v.index()] {
                continue;
            }
            let f = self.float();
            let ty = self.p.ty();
            self.line(format!(
                "ld.global.{ty} {f}, [%rd2+{}];",
                j * self.p.bytes()
            ));
            vals[v.index()] = Some(match self.rule.node(*v).ty {
                Ty::Float => f,
                Ty::Bool => {
                    let p = self.pred();
                    let zero = self.p.literal(0.0);
                    self.line(format!("setp.ne.{ty} {p}, {f}, {zero};"));
                    p
                }
            });
        }
        vals
    }

    fn buffers_of(&self, needed: &[usize], written: &[usize]) -> Vec<usize> {
        let mut b: Vec<usize> = needed
            .iter()
            .filter_map(|&i| buffer_of(self.rule, &self.rule.nodes[i].op))
            .chain(written.iter().copied())
            .collect();
        b.sort_unstable();
        b.dedup();
        b
    }

    /// `%rd8` = byte offset of element `%rd3`.
    fn offset(&mut self) {
        self.line(format!("mul.lo.u64 %rd8, %rd3, {};", self.p.bytes()));
    }

    /// Emits the element nodes `needed` for the element at `%rd8`.
    fn values(&mut self, needed: &[usize], vals: &mut [Option<String>]) -> Result<(), PtxError> {
        let ty = self.p.ty();
        for &id in needed {
            let node = self.rule.nodes[id];
            let v = |x: ValueId| vals[x.index()].clone().expect("arguments first");
            let out = match node.op {
                // Leaves already loaded (by a vector load) are kept.
                Op::Param | Op::Grad | Op::Input(_) | Op::State(_) if vals[id].is_some() => {
                    continue
                }
                Op::Param | Op::Grad | Op::Input(_) | Op::State(_) => {
                    let b = buffer_of(self.rule, &node.op).expect("a buffer");
                    let a = self.address(b);
                    let f = self.float();
                    self.line(format!("ld.global.{ty} {f}, [{a}];"));
                    f
                }
                Op::Unary(u, a) => self.unary(u, &v(a)),
                Op::Binary(b, x, y) => self.binary(b, &v(x), &v(y))?,
                Op::Select(c, a, b) => {
                    if node.ty == Ty::Float {
                        let f = self.float();
                        self.line(format!("selp.{ty} {f}, {}, {}, {};", v(a), v(b), v(c)));
                        f
                    } else {
                        // (c & a) | (!c & b) on predicates.
                        let [t, e, o] = self.preds();
                        self.line(format!("and.pred {t}, {}, {};", v(c), v(a)));
                        self.line(format!("not.pred {e}, {};", v(c)));
                        self.line(format!("and.pred {e}, {e}, {};", v(b)));
                        self.line(format!("or.pred {o}, {t}, {e};"));
                        o
                    }
                }
                Op::Fma(a, b, c) => {
                    let f = self.float();
                    self.line(format!("fma.rn.{ty} {f}, {}, {}, {};", v(a), v(b), v(c)));
                    f
                }
                other => return Err(PtxError(format!("{other:?} is not element-wise"))),
            };
            vals[id] = Some(out);
        }
        Ok(())
    }

    /// `e^x`: in f32 `ex2.approx(x * log2 e)`; in f64 the range reduction
    /// of [`exp_f64_model`] (the same steps, checked against libm in the tests).
    fn exp(&mut self, x: &str) -> String {
        if self.p == Precision::F64 {
            return self.exp64(x);
        }
        let [t, f] = self.floats();
        self.line(format!("mul.rn.f32 {t}, {x}, 0f3FB8AA3B;"));
        self.line(format!("ex2.approx.f32 {f}, {t};"));
        f
    }

    /// `ln x`: in f32 `lg2.approx(x) * ln 2`; in f64 [`ln_f64_model`]'s steps.
    fn ln(&mut self, x: &str) -> String {
        if self.p == Precision::F64 {
            return self.ln64(x);
        }
        let [t, f] = self.floats();
        self.line(format!("lg2.approx.f32 {t}, {x};"));
        self.line(format!("mul.rn.f32 {f}, {t}, 0f3F317218;"));
        f
    }

    fn lit(x: f64) -> String {
        Precision::F64.literal(x)
    }

    /// f64 `e^x` (see [`exp_f64_model`]).
    fn exp64(&mut self, x: &str) -> String {
        let [c, t, k, r, p, out] = self.floats();
        let [k1, k2, b1, b2] = self.u64regs();
        let [s1, s2] = self.floats();
        let nan = self.pred();
        self.line(format!("max.f64 {c}, {x}, {};", Self::lit(-746.0)));
        self.line(format!("min.f64 {c}, {c}, {};", Self::lit(710.0)));
        self.line(format!(
            "mul.rn.f64 {t}, {c}, {};",
            Self::lit(std::f64::consts::LOG2_E)
        ));
        self.line(format!("cvt.rni.f64.f64 {k}, {t};"));
        self.line(format!("neg.f64 {t}, {k};"));
        self.line(format!("fma.rn.f64 {r}, {t}, {}, {c};", Self::lit(LN2_HI)));
        self.line(format!("fma.rn.f64 {r}, {t}, {}, {r};", Self::lit(LN2_LO)));
        self.line(format!(
            "mov.f64 {p}, {};",
            Self::lit(EXP_TAYLOR[EXP_TAYLOR.len() - 1])
        ));
        for coef in EXP_TAYLOR.iter().rev().skip(1) {
            self.line(format!("fma.rn.f64 {p}, {p}, {r}, {};", Self::lit(*coef)));
        }
        // 2^k as 2^k1 * 2^k2 (k1 = k / 2), each a normal number.
        self.line(format!("cvt.rni.s64.f64 {k1}, {k};"));
        self.line(format!("shr.s64 {k2}, {k1}, 1;"));
        self.line(format!("sub.s64 {k1}, {k1}, {k2};"));
        self.line(format!("add.s64 {b1}, {k1}, 1023;"));
        self.line(format!("shl.b64 {b1}, {b1}, 52;"));
        self.line(format!("add.s64 {b2}, {k2}, 1023;"));
        self.line(format!("shl.b64 {b2}, {b2}, 52;"));
        self.line(format!("mov.b64 {s1}, {b1};"));
        self.line(format!("mov.b64 {s2}, {b2};"));
        self.line(format!("mul.rn.f64 {out}, {p}, {s1};"));
        self.line(format!("mul.rn.f64 {out}, {out}, {s2};"));
        // NaN passes through (min/max above dropped it).
        self.line(format!("setp.nan.f64 {nan}, {x}, {x};"));
        self.line(format!("@{nan} mov.f64 {out}, {x};"));
        out
    }

    /// f64 `ln x` (see [`ln_f64_model`]).
    fn ln64(&mut self, x: &str) -> String {
        let [xs, m, num, den, s, s2, q, e, out] = self.floats();
        let [bits, ex, mb] = self.u64regs();
        let [sub, big, bad, zero, inf] = self.preds();
        // Subnormals: scale by 2^54 first.
        self.line(format!(
            "setp.lt.f64 {sub}, {x}, {};",
            Self::lit(f64::MIN_POSITIVE)
        ));
        self.line(format!(
            "mul.rn.f64 {xs}, {x}, {};",
            Self::lit(18014398509481984.0)
        ));
        self.line(format!("selp.f64 {xs}, {xs}, {x}, {sub};"));
        self.line(format!("mov.b64 {bits}, {xs};"));
        self.line(format!("shr.u64 {ex}, {bits}, 52;"));
        self.line(format!("and.b64 {ex}, {ex}, 2047;"));
        self.line(format!("sub.s64 {ex}, {ex}, 1023;"));
        self.line(format!("@{sub} sub.s64 {ex}, {ex}, 54;"));
        self.line(format!("and.b64 {mb}, {bits}, 4503599627370495;"));
        self.line(format!("or.b64 {mb}, {mb}, 4607182418800017408;"));
        self.line(format!("mov.b64 {m}, {mb};"));
        // m in [1, 2): above sqrt 2, halve it and count one more.
        self.line(format!(
            "setp.gt.f64 {big}, {m}, {};",
            Self::lit(std::f64::consts::SQRT_2)
        ));
        self.line(format!("@{big} mul.rn.f64 {m}, {m}, {};", Self::lit(0.5)));
        self.line(format!("@{big} add.s64 {ex}, {ex}, 1;"));
        self.line(format!("cvt.rn.f64.s64 {e}, {ex};"));
        // ln m = 2 atanh(s), s = (m - 1) / (m + 1).
        self.line(format!("sub.rn.f64 {num}, {m}, {};", Self::lit(1.0)));
        self.line(format!("add.rn.f64 {den}, {m}, {};", Self::lit(1.0)));
        self.line(format!("div.rn.f64 {s}, {num}, {den};"));
        self.line(format!("mul.rn.f64 {s2}, {s}, {s};"));
        self.line(format!(
            "mov.f64 {q}, {};",
            Self::lit(1.0 / LN_TERMS as f64)
        ));
        for j in (0..LN_TERMS / 2).rev() {
            self.line(format!(
                "fma.rn.f64 {q}, {q}, {s2}, {};",
                Self::lit(1.0 / (2 * j + 1) as f64)
            ));
        }
        self.line(format!("mul.rn.f64 {q}, {q}, {s};"));
        self.line(format!("add.rn.f64 {q}, {q}, {q};"));
        self.line(format!("fma.rn.f64 {q}, {e}, {}, {q};", Self::lit(LN2_LO)));
        self.line(format!(
            "fma.rn.f64 {out}, {e}, {}, {q};",
            Self::lit(LN2_HI)
        ));
        // ln of a negative number or NaN is NaN, ln 0 = -inf, ln inf = inf.
        self.line(format!("setp.ltu.f64 {bad}, {x}, {};", Self::lit(0.0)));
        self.line(format!("@{bad} mov.f64 {out}, {};", Self::lit(f64::NAN)));
        self.line(format!("setp.eq.f64 {zero}, {x}, {};", Self::lit(0.0)));
        self.line(format!(
            "@{zero} mov.f64 {out}, {};",
            Self::lit(f64::NEG_INFINITY)
        ));
        self.line(format!(
            "setp.eq.f64 {inf}, {x}, {};",
            Self::lit(f64::INFINITY)
        ));
        self.line(format!("@{inf} mov.f64 {out}, {x};"));
        out
    }

    fn unary(&mut self, op: UnOp, a: &str) -> String {
        let ty = self.p.ty();
        match op {
            UnOp::Neg | UnOp::Abs | UnOp::Sqrt => {
                let name = match op {
                    UnOp::Neg => "neg",
                    UnOp::Abs => "abs",
                    _ => "sqrt.rn",
                };
                let f = self.float();
                self.line(format!("{name}.{ty} {f}, {a};"));
                f
            }
            UnOp::Rsqrt => {
                let [s, f] = self.floats();
                self.line(format!("sqrt.rn.{ty} {s}, {a};"));
                self.line(format!("div.rn.{ty} {f}, {}, {s};", self.p.literal(1.0)));
                f
            }
            UnOp::Sign => {
                // 1 where a > 0, -1 where a < 0, else a (0, -0, NaN).
                let [pos, neg] = self.preds();
                let [t, f] = self.floats();
                let zero = self.p.literal(0.0);
                self.line(format!("setp.gt.{ty} {pos}, {a}, {zero};"));
                self.line(format!("setp.lt.{ty} {neg}, {a}, {zero};"));
                self.line(format!(
                    "selp.{ty} {t}, {}, {a}, {neg};",
                    self.p.literal(-1.0)
                ));
                self.line(format!(
                    "selp.{ty} {f}, {}, {t}, {pos};",
                    self.p.literal(1.0)
                ));
                f
            }
            UnOp::Exp => self.exp(a),
            UnOp::Ln => self.ln(a),
            UnOp::Sigmoid => {
                let m = self.float();
                self.line(format!("neg.{ty} {m}, {a};"));
                let e = self.exp(&m);
                let [d, f] = self.floats();
                let one = self.p.literal(1.0);
                self.line(format!("add.rn.{ty} {d}, {e}, {one};"));
                self.line(format!("div.rn.{ty} {f}, {one}, {d};"));
                f
            }
            UnOp::Not => {
                let p = self.pred();
                self.line(format!("not.pred {p}, {a};"));
                p
            }
        }
    }

    fn binary(&mut self, op: BinOp, x: &str, y: &str) -> Result<String, PtxError> {
        let ty = self.p.ty();
        let arith = |name: &str| format!("{name}.rn.{ty}");
        let instr = match op {
            BinOp::Add => arith("add"),
            BinOp::Sub => arith("sub"),
            BinOp::Mul => arith("mul"),
            BinOp::Div => arith("div"),
            BinOp::Min | BinOp::Max if self.p == Precision::F64 => {
                let f = self.float();
                let name = if op == BinOp::Min { "min" } else { "max" };
                let (nan, sum) = (self.pred(), self.float());
                // PTX's f64 min/max drop NaN; the IR propagates it: a + b is NaN then.
                self.line(format!("{name}.f64 {f}, {x}, {y};"));
                self.line(format!("setp.nan.f64 {nan}, {x}, {y};"));
                self.line(format!("add.rn.f64 {sum}, {x}, {y};"));
                self.line(format!("selp.f64 {f}, {sum}, {f}, {nan};"));
                return Ok(f);
            }
            BinOp::Min => format!("min.NaN.{ty}"),
            BinOp::Max => format!("max.NaN.{ty}"),
            BinOp::Pow => {
                // x^y as e^(y ln x) (non-negative bases; ex2/lg2 directly in f32).
                if self.p == Precision::F64 {
                    let l = self.ln64(x);
                    let t = self.float();
                    self.line(format!("mul.rn.f64 {t}, {y}, {l};"));
                    return Ok(self.exp64(&t));
                }
                let [l, t, f] = self.floats();
                self.line(format!("lg2.approx.f32 {l}, {x};"));
                self.line(format!("mul.rn.f32 {t}, {y}, {l};"));
                self.line(format!("ex2.approx.f32 {f}, {t};"));
                return Ok(f);
            }
            BinOp::And | BinOp::Or => {
                let p = self.pred();
                let name = if op == BinOp::And { "and" } else { "or" };
                self.line(format!("{name}.pred {p}, {x}, {y};"));
                return Ok(p);
            }
            cmp => {
                let cc = match cmp {
                    BinOp::Lt => "lt",
                    BinOp::Le => "le",
                    BinOp::Gt => "gt",
                    BinOp::Ge => "ge",
                    BinOp::Eq => "eq",
                    _ => "neu",
                };
                let p = self.pred();
                self.line(format!("setp.{cc}.{ty} {p}, {x}, {y};"));
                return Ok(p);
            }
        };
        let f = self.float();
        self.line(format!("{instr} {f}, {x}, {y};"));
        Ok(f)
    }

    /// `acc = max(acc, x)` in f64, NaN-propagating (PTX's f64 `max` is not).
    fn max_nan(&mut self, acc: &str, x: &str) {
        let nan = self.pred();
        self.line(format!("setp.nan.f64 {nan}, {acc}, {x};"));
        self.line(format!("max.f64 {acc}, {acc}, {x};"));
        self.line(format!("@{nan} mov.f64 {acc}, 0d7FF8000000000000;"));
    }

    fn declarations(&self) -> String {
        format!(
            "\t.reg .pred %p<{}>;\n\t.reg .u32 %r<16>;\n\t.reg .u64 %rd<{}>;\n\t.reg .{} {}<{}>;\n\t.reg .f64 %acc<64>;\n",
            self.preds + 2,
            self.u64s + 2,
            self.p.ty(),
            self.p.reg(),
            self.floats + 2
        )
    }

    fn element(mut self) -> Result<String, PtxError> {
        let schedule = self.schedule;
        let roots: Vec<ValueId> = schedule.outputs.iter().map(|o| o.1).collect();
        let needed = element_nodes(self.rule, &roots);
        let buffers = self.buffers_of(&needed, &schedule.buffers_written());
        self.prologue(&buffers);
        let slot_vals = self.slots(&needed);
        self.vector_loop(&needed, &buffers, &slot_vals)?;
        let mut vals = slot_vals;
        self.body.push_str("LOOP:\n");
        self.line("setp.ge.u64 %p1, %rd3, %rd1;");
        self.line("@%p1 bra DONE;");
        self.offset();
        self.values(&needed, &mut vals)?;
        let ty = self.p.ty();
        for &(out, v) in &schedule.outputs {
            let a = self.address(output_buffer(self.rule, out));
            let value = vals[v.index()].clone().expect("outputs are computed");
            self.line(format!("st.global.{ty} [{a}], {value};"));
        }
        self.line("add.u64 %rd3, %rd3, %rd4;");
        self.line("bra LOOP;");
        self.body.push_str("DONE:\n\tret;\n");
        Ok(format!(
            ".visible .entry element(\n\t.param .u64 table,\n\t.param .u32 tensors\n)\n{{\n{}{}}}\n\n",
            self.declarations(),
            self.body
        ))
    }

    /// The vector part of the element kernel: when every buffer of this
    /// tensor is 16-byte aligned, groups of 16 bytes (4 f32 or 2 f64) are
    /// loaded and stored with `ld.global.v4`/`v2`, the arithmetic done lane by
    /// lane; afterwards (or at once, when misaligned) the scalar loop takes
    /// the elements from `%rd3` on.
    fn vector_loop(
        &mut self,
        needed: &[usize],
        buffers: &[usize],
        slot_vals: &[Option<String>],
    ) -> Result<(), PtxError> {
        let lanes = 16 / self.p.bytes();
        let ty = self.p.ty();
        let v = if lanes == 4 { "v4" } else { "v2" };
        // Any misaligned buffer: scalar loop only.
        self.line("mov.u64 %rd9, 0;");
        for b in buffers {
            self.line(format!("or.b64 %rd9, %rd9, %rd{};", 10 + b));
        }
        self.line("and.b64 %rd9, %rd9, 15;");
        self.line("setp.ne.u64 %p2, %rd9, 0;");
        self.line("@%p2 bra LOOP;");
        // %rd9 = number of whole groups; the thread's first group is %rd3.
        self.line(format!("shr.u64 %rd9, %rd1, {};", lanes.trailing_zeros()));
        self.body.push_str("VLOOP:\n");
        self.line("setp.ge.u64 %p2, %rd3, %rd9;");
        self.line("@%p2 bra VDONE;");
        self.line("mul.lo.u64 %rd8, %rd3, 16;");
        let mut lanes_vals: Vec<Vec<Option<String>>> =
            (0..lanes).map(|_| slot_vals.to_vec()).collect();
        for &id in needed {
            let op = self.rule.nodes[id].op;
            if let Some(b) = buffer_of(self.rule, &op) {
                let regs: Vec<String> = (0..lanes).map(|_| self.float()).collect();
                let a = self.address(b);
                self.line(format!(
                    "ld.global.{v}.{ty} {{{}}}, [{a}];",
                    regs.join(", ")
                ));
                for (l, r) in regs.into_iter().enumerate() {
                    lanes_vals[l][id] = Some(r);
                }
            }
        }
        for vals in &mut lanes_vals {
            self.values(needed, vals)?;
        }
        let schedule = self.schedule;
        for &(out, val) in &schedule.outputs {
            let a = self.address(output_buffer(self.rule, out));
            let regs: Vec<String> = lanes_vals
                .iter()
                .map(|vals| vals[val.index()].clone().expect("outputs are computed"))
                .collect();
            self.line(format!(
                "st.global.{v}.{ty} [{a}], {{{}}};",
                regs.join(", ")
            ));
        }
        self.line("add.u64 %rd3, %rd3, %rd4;");
        self.line("bra VLOOP;");
        // The tail: elements from groups * lanes on, one per thread.
        self.body.push_str("VDONE:\n");
        self.line(format!("shl.b64 %rd9, %rd9, {};", lanes.trailing_zeros()));
        self.line("mov.u32 %r3, %ctaid.x;");
        self.line("mul.wide.u32 %rd3, %r3, %r4;");
        self.line("cvt.u64.u32 %rd7, %r5;");
        self.line("add.u64 %rd3, %rd3, %rd7;");
        self.line("add.u64 %rd3, %rd3, %rd9;");
        Ok(())
    }

    fn reduction(mut self, name: &str, pass: &[ValueId]) -> Result<String, PtxError> {
        let args: Vec<(ReduceOp, ValueId)> = pass
            .iter()
            .map(|r| match self.rule.node(*r).op {
                Op::Reduce(op, _, arg) => (op, arg),
                _ => unreachable!("passes hold reductions"),
            })
            .collect();
        if args.len() > 32 {
            return Err(PtxError("more than 32 reductions in one pass".into()));
        }
        let roots: Vec<ValueId> = args.iter().map(|a| a.1).collect();
        let needed = element_nodes(self.rule, &roots);
        let buffers = self.buffers_of(&needed, &[]);
        self.prologue(&buffers);
        let mut vals = self.slots(&needed);
        for k in 0..args.len() {
            self.line(format!("mov.f64 %acc{k}, 0d0000000000000000;"));
        }
        self.body.push_str("LOOP:\n");
        self.line("setp.ge.u64 %p1, %rd3, %rd1;");
        self.line("@%p1 bra REDUCE;");
        self.offset();
        self.values(&needed, &mut vals)?;
        for (k, (op, arg)) in args.iter().enumerate() {
            let x = vals[arg.index()].clone().expect("computed");
            let w = format!("%acc{}", 32 + k);
            if *op == ReduceOp::Count {
                self.line(format!(
                    "selp.f64 {w}, 0d3FF0000000000000, 0d0000000000000000, {x};"
                ));
            } else if self.p == Precision::F32 {
                self.line(format!("cvt.f64.f32 {w}, {x};"));
            } else {
                self.line(format!("mov.f64 {w}, {x};"));
            }
            match op {
                ReduceOp::Norm => self.line(format!("fma.rn.f64 %acc{k}, {w}, {w}, %acc{k};")),
                ReduceOp::MaxAbs => {
                    self.line(format!("abs.f64 {w}, {w};"));
                    self.max_nan(&format!("%acc{k}"), &w);
                }
                _ => self.line(format!("add.rn.f64 %acc{k}, %acc{k}, {w};")),
            }
        }
        self.line("add.u64 %rd3, %rd3, %rd4;");
        self.line("bra LOOP;");
        // Warp reduction, then warps through shared memory, then one partial per block.
        self.body.push_str("REDUCE:\n");
        for (k, (op, _)) in args.iter().enumerate() {
            for shift in [16, 8, 4, 2, 1] {
                self.line(format!("mov.b64 {{%r7, %r8}}, %acc{k};"));
                self.line(format!("shfl.sync.down.b32 %r9, %r7, {shift}, 31, -1;"));
                self.line(format!("shfl.sync.down.b32 %r10, %r8, {shift}, 31, -1;"));
                self.line(format!("mov.b64 %acc{}, {{%r9, %r10}};", 32 + k));
                self.combine(*op, k);
            }
        }
        let count = args.len();
        self.line("and.b32 %r11, %r5, 31;");
        self.line("shr.u32 %r12, %r5, 5;");
        self.line("setp.ne.u32 %p1, %r11, 0;");
        self.line("@%p1 bra SYNC;");
        for k in 0..count {
            self.line(format!("mad.lo.u32 %r13, %r12, {}, {};", count * 8, k * 8));
            self.line("mov.u32 %r14, warp_partials;");
            self.line("add.u32 %r13, %r13, %r14;");
            self.line(format!("st.shared.f64 [%r13], %acc{k};"));
        }
        self.body.push_str("SYNC:\n");
        self.line("bar.sync 0;");
        self.line("setp.ne.u32 %p1, %r5, 0;");
        self.line("@%p1 bra DONE;");
        // Thread 0 combines the warps' partials in order and writes the block's.
        self.line("ld.param.u64 %rd9, [partials];");
        self.line("cvta.to.global.u64 %rd9, %rd9;");
        self.line("mov.u32 %r15, %nctaid.x;");
        self.line("mad.lo.u32 %r15, %r1, %r15, %r3;");
        self.line(format!("mul.wide.u32 %rd7, %r15, {};", count * 8));
        self.line("add.u64 %rd9, %rd9, %rd7;");
        for (k, (op, _)) in args.iter().enumerate() {
            self.line(format!("mov.f64 %acc{k}, 0d0000000000000000;"));
            for warp in 0..BLOCK / 32 {
                self.line(format!(
                    "ld.shared.f64 %acc{}, [warp_partials+{}];",
                    32 + k,
                    (warp * count + k) * 8
                ));
                self.combine(*op, k);
            }
            self.line(format!("st.global.f64 [%rd9+{}], %acc{k};", k * 8));
        }
        self.body.push_str("DONE:\n\tret;\n");
        Ok(format!(
            ".visible .entry {name}(\n\t.param .u64 table,\n\t.param .u32 tensors,\n\t.param .u64 partials\n)\n{{\n{}\t.shared .align 8 .f64 warp_partials[{}];\n{}}}\n\n",
            self.declarations(),
            BLOCK / 32 * count,
            self.body
        ))
    }
}

/// PTX of a boolean circuit's forward and reverse passes, bit-sliced: one
/// thread per 64-bit word of examples (`words` of them), every gate one
/// `and.b64` / `xor.b64` / `not.b64`. Layouts as the CPU's
/// (`[row][word]`): `circuit_forward(inputs, params, outputs, words)` and
/// `circuit_reverse(inputs, params, dy, dparams, dinputs, words)`, where
/// `params[j]` is all ones or zeros.
pub fn emit_circuit(circuit: &lensopt_ir::circuit::Circuit, target: &str) -> PtxModule {
    use lensopt_ir::circuit::Gate;
    let n = circuit.gates().len();
    let mut text = header(target);
    for reverse in [false, true] {
        let name = if reverse {
            "circuit_reverse"
        } else {
            "circuit_forward"
        };
        let params = if reverse {
            ".param .u64 inputs, .param .u64 params, .param .u64 dy, .param .u64 dparams, .param .u64 dinputs, .param .u64 words"
        } else {
            ".param .u64 inputs, .param .u64 params, .param .u64 outputs, .param .u64 words"
        };
        let mut b = String::new();
        let mut line = |s: String| {
            b.push('\t');
            b.push_str(&s);
            b.push('\n');
        };
        line(format!(".reg .b64 %v<{}>;", n + 1));
        line(format!(".reg .b64 %a<{}>;", n + 1));
        line(".reg .u64 %rd<16>;".into());
        line(".reg .u32 %r<8>;".into());
        line(".reg .pred %p<2>;".into());
        line("ld.param.u64 %rd1, [inputs];".into());
        line("ld.param.u64 %rd2, [params];".into());
        line("ld.param.u64 %rd3, [words];".into());
        let pointers: &[(&str, &str)] = if reverse {
            &[("%rd4", "dy"), ("%rd5", "dparams"), ("%rd6", "dinputs")]
        } else {
            &[("%rd4", "outputs")]
        };
        for (reg, name) in pointers {
            line(format!("ld.param.u64 {reg}, [{name}];"));
        }
        for reg in ["%rd1", "%rd2"]
            .iter()
            .chain(pointers.iter().map(|(r, _)| r))
        {
            line(format!("cvta.to.global.u64 {reg}, {reg};"));
        }
        line("mov.u32 %r1, %ctaid.x;".into());
        line("mov.u32 %r2, %ntid.x;".into());
        line("mov.u32 %r3, %tid.x;".into());
        line("mul.wide.u32 %rd7, %r1, %r2;".into());
        line("cvt.u64.u32 %rd8, %r3;".into());
        line("add.u64 %rd7, %rd7, %rd8;".into());
        line("setp.ge.u64 %p1, %rd7, %rd3;".into());
        line("@%p1 bra DONE;".into());
        // %rd9 = this word's byte offset in a row; %rd10 = a row's length in bytes.
        line("mul.lo.u64 %rd9, %rd7, 8;".into());
        line("mul.lo.u64 %rd10, %rd3, 8;".into());
        let row = |line: &mut dyn FnMut(String), base: &str, r: usize| {
            line(format!("mad.lo.u64 %rd11, %rd10, {r}, {base};"));
            line("add.u64 %rd11, %rd11, %rd9;".into());
        };
        for (w, gate) in circuit.gates().iter().enumerate() {
            match *gate {
                Gate::Input(i) => {
                    row(&mut line, "%rd1", i);
                    line(format!("ld.global.b64 %v{w}, [%rd11];"));
                }
                Gate::Param(j) => line(format!("ld.global.b64 %v{w}, [%rd2+{}];", j * 8)),
                Gate::Zero => line(format!("mov.b64 %v{w}, 0;")),
                Gate::One => line(format!("mov.b64 %v{w}, -1;")),
                Gate::And(x, y) => line(format!("and.b64 %v{w}, %v{x}, %v{y};")),
                Gate::Xor(x, y) => line(format!("xor.b64 %v{w}, %v{x}, %v{y};")),
                Gate::Not(x) => line(format!("not.b64 %v{w}, %v{x};")),
            }
        }
        if !reverse {
            for (o, w) in circuit.outputs().iter().enumerate() {
                row(&mut line, "%rd4", o);
                line(format!("st.global.b64 [%rd11], %v{w};"));
            }
        } else {
            // Adjoints start at 0; outputs seed them (shared wires XOR: R[copy]).
            for w in 0..n {
                line(format!("mov.b64 %a{w}, 0;"));
            }
            for (o, w) in circuit.outputs().iter().enumerate() {
                row(&mut line, "%rd4", o);
                line(format!("ld.global.b64 %v{n}, [%rd11];"));
                line(format!("xor.b64 %a{w}, %a{w}, %v{n};"));
            }
            for (w, gate) in circuit.gates().iter().enumerate().rev() {
                match *gate {
                    Gate::Input(_) | Gate::Param(_) => {
                        let (base, r) = match *gate {
                            Gate::Input(i) => ("%rd6", i),
                            Gate::Param(j) => ("%rd5", j),
                            _ => unreachable!("matched above"),
                        };
                        row(&mut line, base, r);
                        line(format!("st.global.b64 [%rd11], %a{w};"));
                    }
                    Gate::Zero | Gate::One => {}
                    Gate::And(x, y) => {
                        line(format!("and.b64 %v{n}, %v{y}, %a{w};"));
                        line(format!("xor.b64 %a{x}, %a{x}, %v{n};"));
                        line(format!("and.b64 %v{n}, %v{x}, %a{w};"));
                        line(format!("xor.b64 %a{y}, %a{y}, %v{n};"));
                    }
                    Gate::Xor(x, y) => {
                        line(format!("xor.b64 %a{x}, %a{x}, %a{w};"));
                        line(format!("xor.b64 %a{y}, %a{y}, %a{w};"));
                    }
                    Gate::Not(x) => line(format!("xor.b64 %a{x}, %a{x}, %a{w};")),
                }
            }
        }
        b.push_str("DONE:\n\tret;\n");
        let _ = write!(text, ".visible .entry {name}({params})\n{{\n{b}}}\n\n");
    }
    PtxModule {
        text,
        kernels: vec!["circuit_forward".into(), "circuit_reverse".into()],
    }
}
