//! The element-wise part of a schedule: the element nodes of one element
//! (shared with the reduction kernels), and the element kernel, with its
//! 16-byte vector loop for aligned tensors and its scalar loop.

use super::text::Kernel;
use super::PtxError;
use lensopt_ir::schedule::{buffer_of, element_nodes, output_buffer};
use lensopt_ir::{Op, Ty, ValueId};

impl Kernel<'_> {
    /// Emits the element nodes `needed` for the element at `%rd8`.
    pub(super) fn values(
        &mut self,
        needed: &[usize],
        vals: &mut [Option<String>],
    ) -> Result<(), PtxError> {
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
                Op::Unary(lensopt_ir::UnOp::Cos, _) if self.p == super::Precision::F64 => {
                    return Err(PtxError(
                        "`cos` per element in f64 has no PTX form yet (per step, as in schedules, it runs on the host)".into(),
                    ))
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

    pub(super) fn element(mut self) -> Result<String, PtxError> {
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
            ".visible .entry element(\n\t.param .u64 table,\n\t.param .u64 map\n)\n{{\n{}{}}}\n\n",
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
        // Groups from the chunk's first (%rd0 / lanes) + thread to %rd9 =
        // end / lanes (the chunk starts on a group boundary).
        let shift = lanes.trailing_zeros();
        self.line(format!("shr.u64 %rd9, %rd1, {shift};"));
        self.line(format!("shr.u64 %rd3, %rd0, {shift};"));
        self.line("cvt.u64.u32 %rd7, %r5;");
        self.line("add.u64 %rd3, %rd3, %rd7;");
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
        // The tail: elements from groups_end * lanes on, one per thread.
        self.body.push_str("VDONE:\n");
        self.line(format!("shl.b64 %rd9, %rd9, {shift};"));
        self.line("cvt.u64.u32 %rd7, %r5;");
        self.line("add.u64 %rd3, %rd9, %rd7;");
        Ok(())
    }
}
