//! Boolean circuits compiled to bitwise code: every gate one `band`, `bxor`
//! or `bnot` on `i64x2` (128 examples per instruction), the whole netlist in
//! registers and stack slots for one pair of words at a time.
//!
//! Forward, `fn(inputs, params, outputs, words)`: `inputs[i * words + k]` is
//! word `k` of input bit `i`, `params[j]` is all ones or zeros, and
//! `outputs[o * words + k]` receives the outputs. Reverse,
//! `fn(inputs, params, dy, dparams, dinputs, words)`, recomputes the forward
//! values of a pair of words and runs the reverse derivative backwards over
//! the netlist (adjoints of a wire with several readers XOR together, which
//! is `R[copy]`). `words` must be even; the safe wrapper pads.

use super::program::{Allocator, Code, CompileError};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, UserFuncName, Value};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{Linkage, Module};
use lensopt_ir::circuit::{Circuit, Gate};

/// Netlists with more gates than this are compiled with cranelift's
/// single-pass register allocator (see [`CircuitCode::compile`]).
pub const SINGLE_PASS_FROM_GATES: usize = 1_000;

type ForwardFn = unsafe extern "C" fn(*const u64, *const u64, *mut u64, usize);
type ReverseFn =
    unsafe extern "C" fn(*const u64, *const u64, *const u64, *mut u64, *mut u64, usize);

/// A circuit's forward and reverse passes as native code.
pub struct CircuitCode {
    forward: ForwardFn,
    reverse: ReverseFn,
    clif: Vec<(String, String)>,
    _code: Code,
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
fn forward_values(
    b: &mut FunctionBuilder<'_>,
    circuit: &Circuit,
    inputs: Value,
    stride: Value,
    koff: Value,
    params: &[Value],
    zero: Value,
    ones: Value,
) -> Vec<Value> {
    let mut vals: Vec<Value> = Vec::with_capacity(circuit.gates().len());
    for gate in circuit.gates() {
        let v = match *gate {
            Gate::Input(i) => {
                let addr = row_addr(b, inputs, i, stride, koff);
                b.ins().load(types::I64X2, flags(), addr, 0)
            }
            Gate::Param(i) => params[i],
            Gate::Zero => zero,
            Gate::One => ones,
            Gate::And(x, y) => b.ins().band(vals[x], vals[y]),
            Gate::Xor(x, y) => b.ins().bxor(vals[x], vals[y]),
            Gate::Not(x) => b.ins().bnot(vals[x]),
        };
        vals.push(v);
    }
    vals
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

/// Loads every parameter word and splats it, and the constant vectors.
fn entry_values(
    b: &mut FunctionBuilder<'_>,
    circuit: &Circuit,
    params: Value,
) -> (Vec<Value>, Value, Value) {
    let ps = (0..circuit.params())
        .map(|j| {
            let w = b.ins().load(types::I64, flags(), params, (j * 8) as i32);
            b.ins().splat(types::I64X2, w)
        })
        .collect();
    let z = b.ins().iconst(types::I64, 0);
    let zero = b.ins().splat(types::I64X2, z);
    let ones = b.ins().bnot(zero);
    (ps, zero, ones)
}

impl CircuitCode {
    /// Compiles both passes of `circuit`.
    pub fn compile(circuit: &Circuit) -> Result<Self, CompileError> {
        let err = |e: &dyn std::fmt::Display| CompileError(e.to_string());
        // Backtracking allocation is superlinear in a function's size (1.4 s
        // for 10,000 gates, against 25 ms single-pass, whose code runs at
        // about half the speed): large netlists take the linear allocator.
        let allocator = if circuit.gates().len() > SINGLE_PASS_FROM_GATES {
            Allocator::SinglePass
        } else {
            Allocator::Backtracking
        };
        let mut module = super::program::module_with(allocator)?;
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let mut clif = Vec::new();
        let mut ids = Vec::new();
        for (name, params) in [("forward", 4), ("reverse", 6)] {
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
                if name == "forward" {
                    forward_body(&mut b, circuit, &args);
                } else {
                    reverse_body(&mut b, circuit, &args);
                }
                b.seal_all_blocks();
                b.finalize(module.isa().frontend_config());
            }
            clif.push((name.to_string(), ctx.func.display().to_string()));
            module.define_function(id, &mut ctx).map_err(|e| err(&e))?;
            module.clear_context(&mut ctx);
            ids.push(id);
        }
        module.finalize_definitions().map_err(|e| err(&e))?;
        let f = module.get_finalized_function(ids[0]);
        let r = module.get_finalized_function(ids[1]);
        // SAFETY: both pointers are finalized functions declared with the
        // signatures (4 x i64) -> () and (6 x i64) -> () under the platform's
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
            clif,
            _code: Code(Some(module)),
        })
    }

    /// `(function name, CLIF)` of both passes, as generated.
    pub fn clif(&self) -> &[(String, String)] {
        &self.clif
    }

    /// Runs the forward pass.
    ///
    /// # Safety
    /// `inputs` must hold `inputs * words` words, `params` one word per
    /// parameter, `outputs` room for `outputs * words` words, and `words`
    /// must be even.
    pub unsafe fn forward_raw(
        &self,
        inputs: *const u64,
        params: *const u64,
        outputs: *mut u64,
        words: usize,
    ) {
        // SAFETY: the caller upholds the buffer sizes the code indexes within.
        unsafe { (self.forward)(inputs, params, outputs, words) }
    }

    /// Runs the reverse pass.
    ///
    /// # Safety
    /// As [`CircuitCode::forward_raw`], with `dy` holding `outputs * words`
    /// words, `dparams` room for `params * words` and `dinputs` for `inputs * words`.
    pub unsafe fn reverse_raw(
        &self,
        inputs: *const u64,
        params: *const u64,
        dy: *const u64,
        dparams: *mut u64,
        dinputs: *mut u64,
        words: usize,
    ) {
        // SAFETY: the caller upholds the buffer sizes the code indexes within.
        unsafe { (self.reverse)(inputs, params, dy, dparams, dinputs, words) }
    }
}

fn forward_body(b: &mut FunctionBuilder<'_>, circuit: &Circuit, args: &[Value]) {
    let (inputs, params, outputs, words) = (args[0], args[1], args[2], args[3]);
    let stride = b.ins().imul_imm_s(words, 8);
    let (ps, zero, ones) = entry_values(b, circuit, params);
    words_loop(b, words, |b, koff| {
        let vals = forward_values(b, circuit, inputs, stride, koff, &ps, zero, ones);
        for (o, w) in circuit.outputs().iter().enumerate() {
            let addr = row_addr(b, outputs, o, stride, koff);
            b.ins().store(flags(), vals[*w], addr, 0);
        }
    });
}

fn reverse_body(b: &mut FunctionBuilder<'_>, circuit: &Circuit, args: &[Value]) {
    let (inputs, params, dy, dparams, dinputs, words) =
        (args[0], args[1], args[2], args[3], args[4], args[5]);
    let stride = b.ins().imul_imm_s(words, 8);
    let (ps, zero, ones) = entry_values(b, circuit, params);
    words_loop(b, words, |b, koff| {
        let vals = forward_values(b, circuit, inputs, stride, koff, &ps, zero, ones);
        let mut adj: Vec<Option<Value>> = vec![None; circuit.gates().len()];
        // Contributions to one wire XOR together: R[copy](x, (d1, d2)) = d1 ^ d2.
        fn add(b: &mut FunctionBuilder<'_>, adj: &mut [Option<Value>], w: usize, d: Value) {
            adj[w] = Some(match adj[w] {
                Some(old) => b.ins().bxor(old, d),
                None => d,
            });
        }
        for (o, w) in circuit.outputs().iter().enumerate() {
            let addr = row_addr(b, dy, o, stride, koff);
            let d = b.ins().load(types::I64X2, flags(), addr, 0);
            add(b, &mut adj, *w, d);
        }
        for (w, gate) in circuit.gates().iter().enumerate().rev() {
            let d = adj[w];
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
                        let dx = b.ins().band(vals[y], d);
                        add(b, &mut adj, x, dx);
                        let dy2 = b.ins().band(vals[x], d);
                        add(b, &mut adj, y, dy2);
                    }
                }
                // R[XOR]((x1, x2), dy) = (dy, dy)
                Gate::Xor(x, y) => {
                    if let Some(d) = d {
                        add(b, &mut adj, x, d);
                        add(b, &mut adj, y, d);
                    }
                }
                // R[NOT](x, dy) = dy
                Gate::Not(x) => {
                    if let Some(d) = d {
                        add(b, &mut adj, x, d);
                    }
                }
            }
        }
    });
}
