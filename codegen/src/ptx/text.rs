//! The low-level PTX text: the module header, and [`Kernel`], one kernel
//! under construction: its body's lines, fresh registers (floats,
//! predicates, u64s) and their declarations, the prologue that loads a
//! tensor's descriptor, the slot loads, buffer addresses and offsets.

use super::{descriptor_words, Precision, PtxError, CHUNK};
use lensopt_ir::schedule::{buffer_of, Schedule};
use lensopt_ir::{Rule, Ty};

/// The module header: the oldest PTX ISA that knows `target`, 64-bit addresses.
pub(super) fn header(target: &str) -> Result<String, PtxError> {
    let version = isa_version(target).ok_or_else(|| {
        PtxError(format!(
            "unknown target `{target}`: one of {}",
            TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
        ))
    })?;
    Ok(format!(
        ".version {version}\n.target {target}\n.address_size 64\n\n"
    ))
}

/// The targets lensopt emits for, with the first PTX ISA version that has
/// each. A module for `sm_80` under ISA 7.0 is what the runtime loads on
/// every device: the driver compiles it forward for any newer GPU.
const TARGETS: [(&str, &str); 13] = [
    ("sm_80", "7.0"),
    ("sm_86", "7.1"),
    ("sm_87", "7.4"),
    ("sm_89", "7.8"),
    ("sm_90", "7.8"),
    ("sm_90a", "8.0"),
    ("sm_100", "8.6"),
    ("sm_100a", "8.6"),
    ("sm_101", "8.6"),
    ("sm_103", "8.8"),
    ("sm_120", "8.7"),
    ("sm_120a", "8.7"),
    ("sm_121", "8.8"),
];

/// The PTX ISA version a module for `target` declares, or `None` for a
/// target lensopt does not know.
pub fn isa_version(target: &str) -> Option<&'static str> {
    TARGETS.iter().find(|t| t.0 == target).map(|t| t.1)
}

/// One kernel under construction: its body, and counters for registers
/// (private: registers come from [`Kernel::float`] and its siblings).
pub(super) struct Kernel<'s> {
    pub(super) schedule: &'s Schedule,
    pub(super) rule: &'s Rule,
    pub(super) p: Precision,
    pub(super) body: String,
    floats: usize,
    preds: usize,
    u64s: usize,
    /// Scratch registers for precision rounding: f32 (`%sf`) and b16 (`%hb`).
    narrow: usize,
}

impl<'s> Kernel<'s> {
    pub(super) fn new(schedule: &'s Schedule, p: Precision) -> Self {
        Kernel {
            schedule,
            rule: &schedule.rule,
            p,
            body: String::new(),
            floats: 0,
            // %p0 to %p2 are the kernels' own (bounds and loop tests).
            preds: 2,
            u64s: 100,
            narrow: 0,
        }
    }

    pub(super) fn line(&mut self, s: impl AsRef<str>) {
        self.body.push('\t');
        self.body.push_str(s.as_ref());
        self.body.push('\n');
    }

    pub(super) fn float(&mut self) -> String {
        self.floats += 1;
        format!("{}{}", self.p.reg(), self.floats)
    }

    pub(super) fn pred(&mut self) -> String {
        self.preds += 1;
        format!("%p{}", self.preds)
    }

    pub(super) fn u64reg(&mut self) -> String {
        self.u64s += 1;
        format!("%rd{}", self.u64s)
    }

    /// A fresh f32 scratch register and a fresh b16 one (any element type).
    pub(super) fn narrow(&mut self) -> (String, String) {
        self.narrow += 1;
        (format!("%sf{}", self.narrow), format!("%hb{}", self.narrow))
    }

    /// `N` fresh float registers, numbered in order.
    pub(super) fn floats<const N: usize>(&mut self) -> [String; N] {
        std::array::from_fn(|_| self.float())
    }

    /// `N` fresh predicates, numbered in order.
    pub(super) fn preds<const N: usize>(&mut self) -> [String; N] {
        std::array::from_fn(|_| self.pred())
    }

    /// `N` fresh u64 registers, numbered in order.
    pub(super) fn u64regs<const N: usize>(&mut self) -> [String; N] {
        std::array::from_fn(|_| self.u64reg())
    }

    /// A fresh register holding the address of buffer `b`'s element at byte offset `%rd8`.
    pub(super) fn address(&mut self, b: usize) -> String {
        let a = self.u64reg();
        self.line(format!("add.u64 {a}, %rd{}, %rd8;", 10 + b));
        a
    }

    /// Loads this block's map entry and its tensor's descriptor: `%rd0` =
    /// the chunk's first element, `%rd1` = its end (the chunk's or the
    /// tensor's), `%rd2` = slots, `%rd{10 + b}` = buffer `b`; `%rd3` = this
    /// thread's first element, `%rd4` = the stride (the block's threads).
    /// [`super::LaunchMap::thread_elements`] is this arithmetic on the CPU.
    pub(super) fn prologue(&mut self, buffers: &[usize]) {
        let words = descriptor_words(self.rule);
        self.line("ld.param.u64 %rd5, [map];");
        self.line("cvta.to.global.u64 %rd5, %rd5;");
        self.line("mov.u32 %r1, %ctaid.x;");
        self.line("mul.wide.u32 %rd6, %r1, 8;");
        self.line("add.u64 %rd6, %rd5, %rd6;");
        self.line("ld.global.u64 %rd7, [%rd6];");
        self.line("shr.u64 %rd6, %rd7, 32;");
        self.line("cvt.u32.u64 %r2, %rd6;");
        self.line("and.b64 %rd7, %rd7, 4294967295;");
        self.line("ld.param.u64 %rd5, [table];");
        self.line("cvta.to.global.u64 %rd5, %rd5;");
        self.line(format!("mul.wide.u32 %rd6, %r2, {};", words * 8));
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
        self.line(format!("mul.lo.u64 %rd0, %rd7, {CHUNK};"));
        self.line(format!("add.u64 %rd7, %rd0, {CHUNK};"));
        self.line("min.u64 %rd1, %rd1, %rd7;");
        self.line("mov.u32 %r4, %ntid.x;");
        self.line("mov.u32 %r5, %tid.x;");
        self.line("cvt.u64.u32 %rd7, %r5;");
        self.line("add.u64 %rd3, %rd0, %rd7;");
        self.line("cvt.u64.u32 %rd4, %r4;");
    }

    /// The values of the slots (loaded once per thread), by node.
    pub(super) fn slots(&mut self, needed_by: &[usize]) -> Vec<Option<String>> {
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

    pub(super) fn buffers_of(&self, needed: &[usize], written: &[usize]) -> Vec<usize> {
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
    pub(super) fn offset(&mut self) {
        self.line(format!("mul.lo.u64 %rd8, %rd3, {};", self.p.bytes()));
    }

    /// The register declarations of everything this kernel allocated.
    pub(super) fn declarations(&self) -> String {
        let mut out = format!(
            "\t.reg .pred %p<{}>;\n\t.reg .u32 %r<16>;\n\t.reg .u64 %rd<{}>;\n\t.reg .{} {}<{}>;\n\t.reg .f64 %acc<64>;\n",
            self.preds + 2,
            self.u64s + 2,
            self.p.ty(),
            self.p.reg(),
            self.floats + 2
        );
        if self.narrow > 0 {
            out.push_str(&format!(
                "\t.reg .f32 %sf<{0}>;\n\t.reg .b16 %hb<{0}>;\n",
                self.narrow + 1
            ));
        }
        out
    }
}
