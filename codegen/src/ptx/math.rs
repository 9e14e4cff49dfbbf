//! The arithmetic of one element: the IR's unary and binary operations as
//! PTX instructions, with `exp`, `ln`, `pow` and `sigmoid` in f32 (the
//! hardware's `ex2`/`lg2` approximations) and f64 (range reduction and `fma`
//! series), and [`exp_f64_model`], [`ln_f64_model`]: the f64 steps on the CPU.

use super::text::Kernel;
use super::{Precision, PtxError};
use lensopt_ir::{BinOp, UnOp};

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

impl Kernel<'_> {
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

    pub(super) fn unary(&mut self, op: UnOp, a: &str) -> String {
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

    pub(super) fn binary(&mut self, op: BinOp, x: &str, y: &str) -> Result<String, PtxError> {
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
}
