//! The arithmetic of one element: the IR's unary and binary operations as
//! PTX instructions, with `exp`, `ln`, `pow` and `sigmoid` in f32 (the
//! hardware's `ex2`/`lg2` approximations) and f64 (range reduction and `fma`
//! series), and [`exp_f64_model`], [`ln_f64_model`]: the f64 steps on the CPU.

use super::text::Kernel;
use super::{Precision, PtxError};
use lensopt_ir::elementary::EXP_F64;
use lensopt_ir::{BinOp, UnOp};

/// ln 2 split for exact range reduction, and the Taylor terms 1/j! of e^r
/// for j = 0..=13 (|r| <= ln 2 / 2: error below 1e-17): the CPU's `exp`
/// numbers (`lensopt_ir::elementary`), here summed with `fma`.
const LN2_HI: f64 = EXP_F64.ln2_hi;
const LN2_LO: f64 = EXP_F64.ln2_lo;
const EXP_TAYLOR: &[f64] = EXP_F64.taylor;

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

/// The special cases the PTX `pow` applies around its core
/// `core(|x|, y)` = `e^(y ln |x|)`, on the CPU: with an exact core the
/// result is C's `pow` (tests check it against libm). Negative bases (and
/// -0) take the sign from odd integer exponents and give NaN for finite
/// non-integer ones; a NaN exponent gives NaN; `pow(x, ±0)`, `pow(1, y)` and `pow(-1, ±inf)` are 1;
/// `pow(x, 0.5)` is the correctly rounded square root, as lensopt's `pow` on
/// the CPU (`lensopt_ir::elementary::pow_f64`).
pub fn pow_special_model(x: f64, y: f64, core: impl Fn(f64, f64) -> f64) -> f64 {
    let r = core(x.abs(), y);
    // The PTX steps: integer test by truncation, odd test on y / 2.
    let integer = y.trunc() == y;
    let odd = integer && (y * 0.5).trunc() != y * 0.5;
    let negative_sign = 1f64.copysign(x) < 0.0;
    let mut r = if negative_sign && odd { -r } else { r };
    let fraction = !integer && !y.is_nan();
    if (x < 0.0 && x > f64::NEG_INFINITY && fraction) || y.is_nan() {
        r = f64::NAN;
    }
    if x == 1.0 || y == 0.0 || (x == -1.0 && y.abs() == f64::INFINITY) {
        r = 1.0;
    }
    if y == 0.5 {
        r = lensopt_ir::elementary::half_power_f64(x);
    }
    r
}

impl Kernel<'_> {
    /// `x^y` with C's semantics: the core `e^(y ln |x|)` (`ex2`/`lg2` in
    /// f32), then [`pow_special_model`]'s special cases, step for step.
    fn pow(&mut self, x: &str, y: &str) -> String {
        let ty = self.p.ty();
        let lit = |v: f64| self.p.literal(v);
        let (one, half, zero, inf) = (lit(1.0), lit(0.5), lit(0.0), lit(f64::INFINITY));
        let (minus_one, minus_inf, nan) = (lit(-1.0), lit(f64::NEG_INFINITY), lit(f64::NAN));
        let a = self.float();
        self.line(format!("abs.{ty} {a}, {x};"));
        let r = if self.p == Precision::F64 {
            let l = self.ln64(&a);
            let t = self.float();
            self.line(format!("mul.rn.f64 {t}, {y}, {l};"));
            self.exp64(&t)
        } else {
            let [l, t, f] = self.floats();
            self.line(format!("lg2.approx.f32 {l}, {a};"));
            self.line(format!("mul.rn.f32 {t}, {y}, {l};"));
            self.line(format!("ex2.approx.f32 {f}, {t};"));
            f
        };
        // integer = trunc(y) == y; odd = integer && trunc(y / 2) != y / 2.
        let [yi, h, hi, sign, neg, out, ya] = self.floats();
        let [integer, odd, negative, flip, xneg, xfin, fraction, ynum, ones, p1, p2] = self.preds();
        self.line(format!("cvt.rzi.{ty}.{ty} {yi}, {y};"));
        self.line(format!("setp.eq.{ty} {integer}, {yi}, {y};"));
        self.line(format!("mul.rn.{ty} {h}, {y}, {half};"));
        self.line(format!("cvt.rzi.{ty}.{ty} {hi}, {h};"));
        self.line(format!("setp.neu.{ty} {odd}, {hi}, {h};"));
        self.line(format!("and.pred {odd}, {odd}, {integer};"));
        // A negative sign (-0 included) and an odd exponent: the sign flips.
        self.line(format!("copysign.{ty} {sign}, {x}, {one};"));
        self.line(format!("setp.lt.{ty} {negative}, {sign}, {zero};"));
        self.line(format!("and.pred {flip}, {negative}, {odd};"));
        self.line(format!("neg.{ty} {neg}, {r};"));
        self.line(format!("selp.{ty} {out}, {neg}, {r}, {flip};"));
        // A finite negative base and a finite non-integer exponent: NaN.
        self.line(format!("setp.lt.{ty} {xneg}, {x}, {zero};"));
        self.line(format!("setp.gt.{ty} {xfin}, {x}, {minus_inf};"));
        self.line(format!("and.pred {xneg}, {xneg}, {xfin};"));
        self.line(format!("setp.num.{ty} {ynum}, {y}, {y};"));
        self.line(format!("not.pred {fraction}, {integer};"));
        self.line(format!("and.pred {fraction}, {fraction}, {ynum};"));
        self.line(format!("and.pred {xneg}, {xneg}, {fraction};"));
        // A NaN exponent: NaN (unless the base is 1, below).
        self.line(format!("not.pred {ynum}, {ynum};"));
        self.line(format!("or.pred {xneg}, {xneg}, {ynum};"));
        self.line(format!("selp.{ty} {out}, {nan}, {out}, {xneg};"));
        // x == 1, y == ±0, or x == -1 with an infinite exponent: 1.
        self.line(format!("setp.eq.{ty} {ones}, {x}, {one};"));
        self.line(format!("setp.eq.{ty} {p1}, {y}, {zero};"));
        self.line(format!("or.pred {ones}, {ones}, {p1};"));
        self.line(format!("abs.{ty} {ya}, {y};"));
        self.line(format!("setp.eq.{ty} {p1}, {ya}, {inf};"));
        self.line(format!("setp.eq.{ty} {p2}, {x}, {minus_one};"));
        self.line(format!("and.pred {p1}, {p1}, {p2};"));
        self.line(format!("or.pred {ones}, {ones}, {p1};"));
        self.line(format!("selp.{ty} {out}, {one}, {out}, {ones};"));
        // y == 0.5: the correctly rounded root of x + 0 (so -0 gives +0),
        // and +inf for -inf, as lensopt's `pow` on the CPU.
        let [plus, root] = self.floats();
        let [halves, minf] = self.preds();
        self.line(format!("add.rn.{ty} {plus}, {x}, {zero};"));
        self.line(format!("sqrt.rn.{ty} {root}, {plus};"));
        self.line(format!("setp.eq.{ty} {minf}, {x}, {minus_inf};"));
        self.line(format!("selp.{ty} {root}, {inf}, {root}, {minf};"));
        self.line(format!("setp.eq.{ty} {halves}, {y}, {half};"));
        self.line(format!("selp.{ty} {out}, {root}, {out}, {halves};"));
        out
    }

    /// `f32(x)` and `bf16(x)`: rounded to f32 (`cvt.rn`, the identity on
    /// f32 elements), then for bf16 to bfloat16 with `cvt.rn.bf16.f32` and
    /// widened back by placing its bits on top of a zero half.
    fn round(&mut self, bf16: bool, a: &str) -> String {
        let (narrow, half) = self.narrow();
        let single = match self.p {
            Precision::F32 if !bf16 => return a.to_string(),
            Precision::F32 => a.to_string(),
            Precision::F64 => {
                self.line(format!("cvt.rn.f32.f64 {narrow}, {a};"));
                narrow.clone()
            }
        };
        let rounded = if bf16 {
            let (zero, _) = self.narrow();
            let (_, low) = self.narrow();
            self.line(format!("cvt.rn.bf16.f32 {half}, {single};"));
            self.line(format!("mov.b16 {low}, 0;"));
            self.line(format!("mov.b32 {zero}, {{{low}, {half}}};"));
            zero
        } else {
            single
        };
        match self.p {
            Precision::F32 => {
                let f = self.float();
                self.line(format!("mov.f32 {f}, {rounded};"));
                f
            }
            Precision::F64 => {
                let f = self.float();
                self.line(format!("cvt.f64.f32 {f}, {rounded};"));
                f
            }
        }
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

    pub(super) fn unary(&mut self, op: UnOp, a: &str) -> String {
        let ty = self.p.ty();
        match op {
            UnOp::RoundF32 | UnOp::RoundBf16 => self.round(op == UnOp::RoundBf16, a),
            UnOp::Floor => {
                let f = self.float();
                self.line(format!("cvt.rmi.{ty}.{ty} {f}, {a};"));
                f
            }
            // f32 only (the element kernel refuses f64 `cos`): the hardware's approximation.
            UnOp::Cos => {
                let f = self.float();
                self.line(format!("cos.approx.f32 {f}, {a};"));
                f
            }
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
            // The GPU's exp is within tolerance of both CPU ones.
            UnOp::Exp | UnOp::ExpFma => self.exp(a),
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
            BinOp::Pow => return Ok(self.pow(x, y)),
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
