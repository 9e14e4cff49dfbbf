//! Boolean circuits compiled to bitwise code: every gate one `band`, `bxor`
//! or `bnot` on `i64x2` (128 examples per instruction), one pair of words at
//! a time. Netlists of up to [`REGISTER_GATES`] gates keep every value in
//! registers and stack slots; larger ones keep them in a scratch buffer the
//! caller provides ([`CircuitCode::scratch_words`]), so that no netlist,
//! however large, needs a stack frame in proportion to it.
//!
//! Forward, `fn(inputs, params, outputs, words, scratch)`: `inputs[i * words + k]`
//! is word `k` of input bit `i`, `params[j]` is all ones or zeros, and
//! `outputs[o * words + k]` receives the outputs. Reverse,
//! `fn(inputs, params, dy, dparams, dinputs, words, scratch)`, recomputes the
//! forward values of a pair of words and runs the reverse derivative
//! backwards over the netlist (adjoints of a wire with several readers XOR
//! together, which is `R[copy]`). `words` must be even; the safe wrapper pads.

use super::program::{Allocator, Code, CompileError};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, UserFuncName, Value};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{Linkage, Module};
use lensopt_ir::circuit::{Circuit, Gate};

/// Netlists with more gates than this are compiled with cranelift's
/// single-pass register allocator (see [`CircuitCode::compile`]).
pub const SINGLE_PASS_FROM_GATES: usize = 1_000;

/// Netlists with more gates than this keep their values in the scratch
/// buffer: in registers and stack slots, a pass's frame grows with the
/// netlist, and this bounds it under 1 MiB (a test runs the largest such
/// netlist on a thread with a 1 MiB stack; Rust's threads get 2 MiB).
pub const REGISTER_GATES: usize = 16_384;

/// The most gates a netlist may have: the scratch buffer is addressed
/// with 32-bit offsets of 32 bytes a gate.
pub const MAX_GATES: usize = (i32::MAX as usize) / 32;

type ForwardFn = unsafe extern "C" fn(*const u64, *const u64, *mut u64, usize, *mut u64);
type ReverseFn =
    unsafe extern "C" fn(*const u64, *const u64, *const u64, *mut u64, *mut u64, usize, *mut u64);

/// A circuit's forward and reverse passes as native code.
pub struct CircuitCode {
    forward: ForwardFn,
    reverse: ReverseFn,
    scratch_words: usize,
    clif: Vec<(String, String)>,
    _code: Code,
}

/// In scratch storage, a value or adjoint stays an SSA value only while
/// its readers are at most this many gates away, which bounds how many are
/// live at once (and so the frame); the others go through the scratch buffer.
const WINDOW: usize = 8;

/// Where the values (and, in the reverse pass, the adjoints) of gates live.
#[derive(Clone, Copy)]
enum Storage<'a> {
    /// SSA values: registers and stack slots.
    Registers,
    /// Two words (one `i64x2`) per gate at `base + 16 * gate`, written for
    /// the gates `stored` marks; adjoints after the values, at
    /// `base + 16 * (gates + gate)`.
    Scratch { base: Value, stored: &'a [bool] },
}

/// The gates whose values a pass reads more than [`WINDOW`] gates after
/// making them: the forward pass's far operands and outputs, or the reverse
/// pass's far operands and every operand of an AND (which its reverse
/// derivative reads, after the whole forward sweep).
fn far_values(circuit: &Circuit, reverse: bool) -> Vec<bool> {
    let n = circuit.gates().len();
    let mut far = vec![false; n];
    for (r, gate) in circuit.gates().iter().enumerate() {
        let (operands, and): (&[usize], bool) = match gate {
            Gate::And(x, y) => (&[*x, *y], true),
            Gate::Xor(x, y) => (&[*x, *y], false),
            Gate::Not(x) => (std::slice::from_ref(x), false),
            _ => (&[], false),
        };
        for &x in operands {
            if r - x > WINDOW || (reverse && and) {
                far[x] = true;
            }
        }
    }
    if !reverse {
        for &o in circuit.outputs() {
            if n - o > WINDOW {
                far[o] = true;
            }
        }
    }
    far
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// The words of row `row` at word offset `koff` (bytes) of a `[row][word]` table.
fn row_addr(
    b: &mut FunctionBuilder<'_>,
    base: Value,
    row: usize,
    stride: Value,
    koff: Value,
) -> Value {
    let row_off = b.ins().imul_imm_s(stride, row as i64);
    let a = b.ins().iadd(base, row_off);
    b.ins().iadd(a, koff)
}

/// Emits the forward values of every gate for the words at `koff`.
#[allow(clippy::too_many_arguments)]
fn forward_values<'a>(
    b: &mut FunctionBuilder<'_>,
    circuit: &Circuit,
    inputs: Value,
    stride: Value,
    koff: Value,
    params: Value,
    storage: Storage<'a>,
) -> Values<'a> {
    let z = b.ins().iconst(types::I64, 0);
    let zero = b.ins().splat(types::I64X2, z);
    let ones = b.ins().bnot(zero);
    let mut vals = Values {
        storage,
        ssa: Vec::with_capacity(circuit.gates().len()),
        zero,
    };
    for (g, gate) in circuit.gates().iter().enumerate() {
        let v = match *gate {
            Gate::Input(i) => {
                let addr = row_addr(b, inputs, i, stride, koff);
                b.ins().load(types::I64X2, flags(), addr, 0)
            }
            Gate::Param(i) => {
                // i < gates <= MAX_GATES, so the offset fits an i32.
                let w = b.ins().load(types::I64, flags(), params, (i * 8) as i32);
                b.ins().splat(types::I64X2, w)
            }
            Gate::Zero => zero,
            Gate::One => ones,
            Gate::And(x, y) => {
                let (x, y) = (vals.get(b, x, g), vals.get(b, y, g));
                b.ins().band(x, y)
            }
            Gate::Xor(x, y) => {
                let (x, y) = (vals.get(b, x, g), vals.get(b, y, g));
                b.ins().bxor(x, y)
            }
            Gate::Not(x) => {
                let x = vals.get(b, x, g);
                b.ins().bnot(x)
            }
        };
        vals.set(b, g, v);
    }
    vals
}

/// The forward values of a pair of words, wherever they live.
struct Values<'a> {
    storage: Storage<'a>,
    /// Every gate's SSA value; in scratch storage only the last
    /// [`WINDOW`] are read.
    ssa: Vec<Value>,
    zero: Value,
}

impl Values<'_> {
    /// Gate `gate`'s value, as read by gate `reader` (`usize::MAX`: after
    /// the forward sweep).
    fn get(&self, b: &mut FunctionBuilder<'_>, gate: usize, reader: usize) -> Value {
        match self.storage {
            Storage::Scratch { base, .. } if reader - gate > WINDOW => {
                b.ins()
                    .load(types::I64X2, flags(), base, (gate * 16) as i32)
            }
            _ => self.ssa[gate],
        }
    }

    fn set(&mut self, b: &mut FunctionBuilder<'_>, gate: usize, v: Value) {
        self.ssa.push(v);
        if let Storage::Scratch { base, stored } = self.storage {
            if stored[gate] {
                b.ins().store(flags(), v, base, (gate * 16) as i32);
            }
        }
    }
}

/// Loop scaffolding shared by both passes: `body(b, koff)` runs for k = 0, 2, 4, .. < words.
fn words_loop(
    b: &mut FunctionBuilder<'_>,
    words: Value,
    body: impl FnOnce(&mut FunctionBuilder<'_>, Value),
) {
    let k = b.declare_var(types::I64);
    let zero = b.ins().iconst(types::I64, 0);
    b.def_var(k, zero);
    let head = b.create_block();
    let block = b.create_block();
    let exit = b.create_block();
    b.ins().jump(head, &[]);
    b.switch_to_block(head);
    let kv = b.use_var(k);
    let more = b.ins().icmp(IntCC::UnsignedLessThan, kv, words);
    b.ins().brif(more, block, &[], exit, &[]);
    b.switch_to_block(block);
    let kv = b.use_var(k);
    let koff = b.ins().imul_imm_s(kv, 8);
    body(b, koff);
    let next = b.ins().iadd_imm_s(kv, 2);
    b.def_var(k, next);
    b.ins().jump(head, &[]);
    b.switch_to_block(exit);
    b.ins().return_(&[]);
}

impl CircuitCode {
    /// Compiles both passes of `circuit`.
    pub fn compile(circuit: &Circuit) -> Result<Self, CompileError> {
        Self::compile_keeping_clif(circuit, false)
    }

    /// Compiles both passes of `circuit` and keeps their CLIF text ([`Self::clif`]).
    pub fn compile_with_clif(circuit: &Circuit) -> Result<Self, CompileError> {
        Self::compile_keeping_clif(circuit, true)
    }

    fn compile_keeping_clif(circuit: &Circuit, keep_clif: bool) -> Result<Self, CompileError> {
        let err = |e: &dyn std::fmt::Display| CompileError(e.to_string());
        // Backtracking allocation is superlinear in a function's size (1.4 s
        // for 10,000 gates, against 25 ms single-pass, whose code runs at
        // about half the speed): large netlists take the linear allocator.
        let gates = circuit.gates().len();
        if gates > MAX_GATES {
            return Err(CompileError(format!(
                "a netlist of {gates} gates is over the {MAX_GATES} that can be compiled"
            )));
        }
        let allocator = if gates > SINGLE_PASS_FROM_GATES {
            Allocator::SinglePass
        } else {
            Allocator::Backtracking
        };
        let in_scratch = gates > REGISTER_GATES;
        let scratch_words = if in_scratch { 4 * gates } else { 0 };
        let mut module = super::program::module_with(allocator)?;
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let mut clif = Vec::new();
        let mut ids = Vec::new();
        for (name, params) in [("forward", 5), ("reverse", 7)] {
            let mut sig = module.make_signature();
            for _ in 0..params {
                sig.params.push(AbiParam::new(types::I64));
            }
            let id = module
                .declare_function(name, Linkage::Local, &sig)
                .map_err(|e| err(&e))?;
            ctx.func.signature = sig;
            ctx.func.name = UserFuncName::user(0, id.as_u32());
            {
                let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                let start = b.create_block();
                b.append_block_params_for_function_params(start);
                b.switch_to_block(start);
                let args = b.block_params(start).to_vec();
                let base = *args.last().expect("the scratch pointer");
                let stored = if in_scratch {
                    far_values(circuit, name == "reverse")
                } else {
                    Vec::new()
                };
                let storage = if in_scratch {
                    Storage::Scratch {
                        base,
                        stored: &stored,
                    }
                } else {
                    Storage::Registers
                };
                if name == "forward" {
                    forward_body(&mut b, circuit, &args, storage);
                } else {
                    reverse_body(&mut b, circuit, &args, storage);
                }
                b.seal_all_blocks();
                b.finalize(module.isa().frontend_config());
            }
            if keep_clif {
                clif.push((name.to_string(), ctx.func.display().to_string()));
            }
            module.define_function(id, &mut ctx).map_err(|e| err(&e))?;
            module.clear_context(&mut ctx);
            ids.push(id);
        }
        module.finalize_definitions().map_err(|e| err(&e))?;
        let f = module.get_finalized_function(ids[0]);
        let r = module.get_finalized_function(ids[1]);
        // SAFETY: both pointers are finalized functions declared with the
        // signatures (5 x i64) -> () and (7 x i64) -> () under the platform's
        // C calling convention, which are these types' ABIs on 64-bit targets.
        let (forward, reverse) = unsafe {
            (
                std::mem::transmute::<*const u8, ForwardFn>(f),
                std::mem::transmute::<*const u8, ReverseFn>(r),
            )
        };
        Ok(CircuitCode {
            forward,
            reverse,
            scratch_words,
            clif,
            _code: Code(Some(module)),
        })
    }

    /// The words of scratch memory a call needs (0 when the values live in
    /// registers), not shared between concurrent calls.
    pub fn scratch_words(&self) -> usize {
        self.scratch_words
    }

    /// `(function name, CLIF)` of both passes, as generated; empty unless
    /// compiled by [`Self::compile_with_clif`].
    pub fn clif(&self) -> &[(String, String)] {
        &self.clif
    }

    /// Runs the forward pass.
    ///
    /// # Safety
    /// `inputs` must hold `inputs * words` words, `params` one word per
    /// parameter, `outputs` room for `outputs * words` words, `words` must
    /// be even, and `scratch` must hold [`Self::scratch_words`] words, used
    /// by no one else during the call.
    pub unsafe fn forward_raw(
        &self,
        inputs: *const u64,
        params: *const u64,
        outputs: *mut u64,
        words: usize,
        scratch: *mut u64,
    ) {
        // SAFETY: the caller upholds the buffer sizes the code indexes within.
        unsafe { (self.forward)(inputs, params, outputs, words, scratch) }
    }

    /// Runs the reverse pass.
    ///
    /// # Safety
    /// As [`CircuitCode::forward_raw`], with `dy` holding `outputs * words`
    /// words, `dparams` room for `params * words` and `dinputs` for `inputs * words`.
    #[allow(clippy::too_many_arguments)] // one per argument of the generated function
    pub unsafe fn reverse_raw(
        &self,
        inputs: *const u64,
        params: *const u64,
        dy: *const u64,
        dparams: *mut u64,
        dinputs: *mut u64,
        words: usize,
        scratch: *mut u64,
    ) {
        // SAFETY: the caller upholds the buffer sizes the code indexes within.
        unsafe { (self.reverse)(inputs, params, dy, dparams, dinputs, words, scratch) }
    }
}

fn forward_body(b: &mut FunctionBuilder<'_>, circuit: &Circuit, args: &[Value], storage: Storage) {
    let (inputs, params, outputs, words) = (args[0], args[1], args[2], args[3]);
    let stride = b.ins().imul_imm_s(words, 8);
    let n = circuit.gates().len();
    words_loop(b, words, |b, koff| {
        let vals = forward_values(b, circuit, inputs, stride, koff, params, storage);
        for (o, w) in circuit.outputs().iter().enumerate() {
            let v = vals.get(b, *w, n);
            let addr = row_addr(b, outputs, o, stride, koff);
            b.ins().store(flags(), v, addr, 0);
        }
    });
}

/// The adjoints of a pair of words: contributions to one wire XOR together,
/// `R[copy](x, (d1, d2)) = d1 ^ d2`. The netlist is walked once, backwards,
/// so whether a wire has contributions yet is known while generating the
/// code. In scratch storage, a contribution from a reader at most
/// [`WINDOW`] gates away stays an SSA value; farther ones accumulate in
/// the scratch buffer.
struct Adjoints<'a> {
    storage: Storage<'a>,
    gates: usize,
    ssa: Vec<Option<Value>>,
    in_scratch: Vec<bool>,
}

impl Adjoints<'_> {
    fn offset(&self, gate: usize) -> i32 {
        ((self.gates + gate) * 16) as i32
    }

    fn get(&self, b: &mut FunctionBuilder<'_>, gate: usize) -> Option<Value> {
        let near = self.ssa[gate];
        let Storage::Scratch { base, .. } = self.storage else {
            return near;
        };
        if !self.in_scratch[gate] {
            return near;
        }
        let far = b.ins().load(types::I64X2, flags(), base, self.offset(gate));
        Some(match near {
            Some(v) => b.ins().bxor(v, far),
            None => far,
        })
    }

    /// Adds `d` to the adjoint of `gate`, contributed while reverse-sweeping `reader`.
    fn add(&mut self, b: &mut FunctionBuilder<'_>, gate: usize, d: Value, reader: usize) {
        if let Storage::Scratch { base, .. } = self.storage {
            if reader - gate > WINDOW {
                let offset = self.offset(gate);
                let sum = if self.in_scratch[gate] {
                    let old = b.ins().load(types::I64X2, flags(), base, offset);
                    b.ins().bxor(old, d)
                } else {
                    d
                };
                b.ins().store(flags(), sum, base, offset);
                self.in_scratch[gate] = true;
                return;
            }
        }
        self.ssa[gate] = Some(match self.ssa[gate] {
            Some(old) => b.ins().bxor(old, d),
            None => d,
        });
    }
}

fn reverse_body(b: &mut FunctionBuilder<'_>, circuit: &Circuit, args: &[Value], storage: Storage) {
    let (inputs, params, dy, dparams, dinputs, words) =
        (args[0], args[1], args[2], args[3], args[4], args[5]);
    let stride = b.ins().imul_imm_s(words, 8);
    words_loop(b, words, |b, koff| {
        let vals = forward_values(b, circuit, inputs, stride, koff, params, storage);
        let zero = vals.zero;
        let n = circuit.gates().len();
        let mut adj = Adjoints {
            storage,
            gates: n,
            ssa: vec![None; n],
            in_scratch: vec![false; n],
        };
        for (o, w) in circuit.outputs().iter().enumerate() {
            let addr = row_addr(b, dy, o, stride, koff);
            let d = b.ins().load(types::I64X2, flags(), addr, 0);
            adj.add(b, *w, d, n);
        }
        for (w, gate) in circuit.gates().iter().enumerate().rev() {
            let d = adj.get(b, w);
            match *gate {
                Gate::Input(i) => {
                    let addr = row_addr(b, dinputs, i, stride, koff);
                    b.ins().store(flags(), d.unwrap_or(zero), addr, 0);
                }
                Gate::Param(j) => {
                    let addr = row_addr(b, dparams, j, stride, koff);
                    b.ins().store(flags(), d.unwrap_or(zero), addr, 0);
                }
                Gate::Zero | Gate::One => {}
                // R[AND]((x1, x2), dy) = (x2 & dy, x1 & dy)
                Gate::And(x, y) => {
                    if let Some(d) = d {
                        let vy = vals.get(b, y, usize::MAX);
                        let dx = b.ins().band(vy, d);
                        adj.add(b, x, dx, w);
                        let vx = vals.get(b, x, usize::MAX);
                        let dy2 = b.ins().band(vx, d);
                        adj.add(b, y, dy2, w);
                    }
                }
                // R[XOR]((x1, x2), dy) = (dy, dy)
                Gate::Xor(x, y) => {
                    if let Some(d) = d {
                        adj.add(b, x, d, w);
                        adj.add(b, y, d, w);
                    }
                }
                // R[NOT](x, dy) = dy
                Gate::Not(x) => {
                    if let Some(d) = d {
                        adj.add(b, x, d, w);
                    }
                }
            }
        }
    });
}
