//! The reduction kernels: each thread accumulates its elements in f64, warps
//! combine with `shfl.sync.down`, warps through shared memory, and thread 0
//! writes one partial per reduction and block; and the combine of two
//! partials (sum, or NaN-propagating max).

use super::text::Kernel;
use super::{Precision, PtxError, BLOCK};
use lensopt_ir::schedule::element_nodes;
use lensopt_ir::{ReduceOp, ValueId};

impl Kernel<'_> {
    /// `%acc{k} = %acc{k} (op) %acc{32 + k}`: two partials of reduction `k`.
    fn combine(&mut self, op: ReduceOp, k: usize) {
        match op {
            ReduceOp::MaxAbs => self.max_nan(&format!("%acc{k}"), &format!("%acc{}", 32 + k)),
            _ => self.line(format!("add.rn.f64 %acc{k}, %acc{k}, %acc{};", 32 + k)),
        }
    }

    /// `acc = max(acc, x)` in f64, NaN-propagating (PTX's f64 `max` is not).
    fn max_nan(&mut self, acc: &str, x: &str) {
        let nan = self.pred();
        self.line(format!("setp.nan.f64 {nan}, {acc}, {x};"));
        self.line(format!("max.f64 {acc}, {acc}, {x};"));
        self.line(format!("@{nan} mov.f64 {acc}, 0d7FF8000000000000;"));
    }

    pub(super) fn reduction(mut self, name: &str, pass: &[ValueId]) -> Result<String, PtxError> {
        let args = lensopt_ir::schedule::reductions_of(self.rule, pass);
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
        self.line(format!("mul.wide.u32 %rd7, %r1, {};", count * 8));
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
            ".visible .entry {name}(\n\t.param .u64 table,\n\t.param .u64 map,\n\t.param .u64 partials\n)\n{{\n{}\t.shared .align 8 .f64 warp_partials[{}];\n{}}}\n\n",
            self.declarations(),
            BLOCK / 32 * count,
            self.body
        ))
    }
}
