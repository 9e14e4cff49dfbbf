//! The functions of a compiled schedule: one element kernel, one per reduction pass.
//!
//! Element kernel, `fn(bufs: *const *mut F, slots: *const F, n: usize)`:
//! ```text
//! entry:    load buffer base pointers and scalar slots (splatted once)
//! loop:     while i + UNROLL*L <= n { UNROLL x (load, compute, store) at i, i+L, ... }
//! ```
//! `n` must be a multiple of `UNROLL * L`; the caller runs the last
//! `n % (UNROLL * L)` elements through the same kernel on padded copies, so
//! the body is emitted `UNROLL` times and no more (no separate tail loop).
//! Compile time grows with the copies, and unrolling measured no faster:
//! `UNROLL` is 1.
//!
//! Reduction kernel, `fn(bufs, slots, n, valid, out: *mut f64)`: one vector
//! per iteration, every reduction of the pass accumulated in f64, element
//! `i` into accumulator `i % (L * REDUCTION_SETS)` (lanes at index `>= valid`
//! contribute nothing; see `lensopt_ir::schedule::REDUCTION_SETS`), the
//! accumulators combined in order at the end and stored to `out[k]`. `n`
//! must be a multiple of `L * REDUCTION_SETS`.

use super::emit::{bitcast_flags, load_slot, mem_flags, Emitter, LazySlots};
use super::lanes::JitFloat;
use super::math::MathFn;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, FuncRef, InstBuilder, Signature, UserFuncName, Value,
};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Linkage, Module, ModuleError};
pub use lensopt_ir::schedule::output_buffer;
use lensopt_ir::schedule::{element_nodes, scalar_exponents, Schedule, REDUCTION_SETS};
use lensopt_ir::{ReduceOp, ValueId};
use std::collections::HashMap;
use std::marker::PhantomData;

/// Results of building code (the error boxed: cranelift's is large).
type BuildResult<T> = Result<T, Box<ModuleError>>;

/// Vectors per iteration of the element kernel's loop.
pub const UNROLL: usize = 1;

/// The functions built for one schedule, and their CLIF text.
pub struct Built {
    /// The element kernel.
    pub element: FuncId,
    /// One reduction kernel per pass.
    pub passes: Vec<FuncId>,
    /// `(name, CLIF)` of every function, as generated (before cranelift's
    /// optimizations), when asked for.
    pub clif: Vec<(String, String)>,
    /// The functions' bytes, element kernel first (see [`super::image`]),
    /// when every one of them can be taken.
    pub image: Option<super::image::Image>,
}

/// Shared parts of every kernel's entry block.
struct Entry {
    bases: Vec<Option<Value>>,
    scalars: Vec<Option<Value>>,
    lazy: Vec<Option<(usize, lensopt_ir::Ty)>>,
    slot_table: Option<Value>,
    imports: HashMap<MathFn, FuncRef>,
}

impl Entry {
    fn lazy(&self) -> LazySlots<'_> {
        LazySlots {
            table: self.slot_table,
            slots: &self.lazy,
        }
    }
}

/// Kernels reading at most this many slots load them all once, at entry.
const HOISTED_SLOTS: usize = 48;

#[allow(clippy::too_many_arguments)]
fn entry<F: JitFloat>(
    b: &mut FunctionBuilder<'_>,
    module: &mut JITModule,
    schedule: &Schedule,
    needed: &[usize],
    extra_roots: &[ValueId],
    written: &[usize],
    bufs: Value,
    slots: Value,
) -> BuildResult<Entry> {
    let rule = &schedule.rule;
    let (used, reads) = lensopt_ir::schedule::kernel_uses(rule, needed, extra_roots, written);
    let mut bases = vec![None; used.len()];
    for (k, u) in used.iter().enumerate() {
        if *u {
            bases[k] = Some(b.ins().load(types::I64, mem_flags(), bufs, (k * 8) as i32));
        }
    }
    // Scalars: the slots that these nodes (or the outputs) read.
    let mut scalars = vec![None; rule.nodes.len()];
    let mut lazy = vec![None; rule.nodes.len()];
    let read_count = schedule.slots.iter().filter(|v| reads[v.index()]).count();
    let hoist_all = read_count <= HOISTED_SLOTS;
    let mut any_lazy = false;
    for (slot, v) in schedule.slots.iter().enumerate() {
        if !reads[v.index()] {
            continue;
        }
        let ty = rule.node(*v).ty;
        if hoist_all || extra_roots.contains(v) {
            scalars[v.index()] = Some(load_slot::<F>(b, slots, slot, ty));
        } else {
            lazy[v.index()] = Some((slot, ty));
            any_lazy = true;
        }
    }
    // Only the math functions these nodes call are imported, so a kernel's
    // CLIF names what it uses and no more.
    let wanted: Vec<MathFn> = needed
        .iter()
        .filter_map(|&id| MathFn::called_by(&rule.nodes[id].op))
        .collect();
    let mut imports = HashMap::new();
    for f in MathFn::ALL.into_iter().filter(|f| wanted.contains(f)) {
        let mut sig = module.make_signature();
        for _ in 0..f.arity() {
            sig.params.push(AbiParam::new(F::SCALAR));
        }
        sig.returns.push(AbiParam::new(F::SCALAR));
        let id = module.declare_function(&f.symbol(F::NAME), Linkage::Import, &sig)?;
        imports.insert(f, module.declare_func_in_func(id, b.func));
    }
    Ok(Entry {
        bases,
        scalars,
        lazy,
        slot_table: any_lazy.then_some(slots),
        imports,
    })
}

fn signature(module: &JITModule, params: usize) -> Signature {
    let mut sig = module.make_signature();
    for _ in 0..params {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

/// Builds every function of `schedule` into `module`, with their CLIF
/// text when `with_clif` (formatting it costs a good part of a compile).
pub fn build<F: JitFloat>(
    module: &mut JITModule,
    schedule: &Schedule,
    with_clif: bool,
) -> BuildResult<Built> {
    // The function builder's context is reused across programs on one
    // thread (it keeps its allocations, and `finalize` clears it; after a
    // failed build it is dropped). The compilation context is made anew for
    // every program: with one reused (cleared) from program to program, a
    // JIT kernel once gave results one ulp from the compiled-in kernels'.
    thread_local! {
        static BUILDERS: std::cell::RefCell<Option<FunctionBuilderContext>> =
            const { std::cell::RefCell::new(None) };
    }
    let mut fctx = BUILDERS.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let mut ctx = module.make_context();
    let built = build_in::<F>(module, schedule, with_clif, &mut ctx, &mut fctx);
    // A build that failed may have left a function half built in it.
    if built.is_ok() {
        BUILDERS.with(|c| *c.borrow_mut() = Some(fctx));
    }
    built
}

fn build_in<F: JitFloat>(
    module: &mut JITModule,
    schedule: &Schedule,
    with_clif: bool,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
) -> BuildResult<Built> {
    let mut taken = Taken {
        clif: with_clif.then(Vec::new),
        image: Some(super::image::Image::default()),
    };
    let element = define(module, ctx, fctx, "element", 3, &mut taken, |b, m| {
        element_body::<F>(b, m, schedule)
    })?;
    let mut passes = Vec::new();
    for (k, pass) in schedule.passes.iter().enumerate() {
        let name = format!("reduce{k}");
        passes.push(define(module, ctx, fctx, &name, 5, &mut taken, |b, m| {
            reduction_body::<F>(b, m, schedule, pass)
        })?);
    }
    Ok(Built {
        element,
        passes,
        clif: taken.clif.unwrap_or_default(),
        image: taken.image,
    })
}

/// What [`define`] keeps of each function besides its code.
struct Taken {
    /// CLIF text, when asked for.
    clif: Option<Vec<(String, String)>>,
    /// The image, while every function so far could be taken.
    image: Option<super::image::Image>,
}

fn define(
    module: &mut JITModule,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
    name: &str,
    params: usize,
    taken: &mut Taken,
    body: impl FnOnce(&mut FunctionBuilder<'_>, &mut JITModule) -> BuildResult<()>,
) -> BuildResult<FuncId> {
    let sig = signature(module, params);
    let id = module.declare_function(name, Linkage::Local, &sig)?;
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        body(&mut b, module)?;
        b.seal_all_blocks();
        b.finalize(module.isa().frontend_config());
    }
    if let Some(clif) = &mut taken.clif {
        clif.push((name.to_string(), ctx.func.display().to_string()));
    }
    module.define_function(id, ctx)?;
    if let Some(image) = &mut taken.image {
        match super::image::capture(module, ctx) {
            Some(f) => image.functions.push(f),
            None => taken.image = None,
        }
    }
    module.clear_context(ctx);
    Ok(id)
}

fn element_body<F: JitFloat>(
    b: &mut FunctionBuilder<'_>,
    module: &mut JITModule,
    schedule: &Schedule,
) -> BuildResult<()> {
    let rule = &schedule.rule;
    let roots: Vec<ValueId> = schedule.outputs.iter().map(|o| o.1).collect();
    let needed = element_nodes(rule, &roots);
    let start = b.create_block();
    b.append_block_params_for_function_params(start);
    b.switch_to_block(start);
    let (bufs, slots, n) = {
        let p = b.block_params(start);
        (p[0], p[1], p[2])
    };
    let written: Vec<usize> = schedule
        .outputs
        .iter()
        .map(|o| output_buffer(rule, o.0))
        .collect();
    let e = entry::<F>(b, module, schedule, &needed, &roots, &written, bufs, slots)?;
    let exponents = scalar_exponents(schedule, &needed);
    let exit = if exponents.is_empty() {
        element_loop::<F>(b, schedule, &e, &needed, n, &[], None)
    } else {
        // Every scalar exponent 0.5: the loop of square roots; else the
        // loop of calls (a call in the loop alone halves its speed: every
        // vector register is the callee's to clobber).
        let half = if F::BYTES == 4 {
            b.ins().f32const(0.5)
        } else {
            b.ins().f64const(0.5)
        };
        let half = b.ins().splat(F::VECTOR, half);
        let mut all_half = None;
        for y in &exponents {
            let slot = schedule.slot(*y).expect("scalar exponents are slots");
            let value = load_slot::<F>(b, slots, slot, lensopt_ir::Ty::Float);
            let equal = b.ins().fcmp(FloatCC::Equal, value, half);
            let all = b.ins().vall_true(equal);
            all_half = Some(match all_half {
                Some(before) => b.ins().band(before, all),
                None => all,
            });
        }
        let (roots_loop, calls_loop) = (b.create_block(), b.create_block());
        let all_half = all_half.expect("at least one exponent");
        b.ins().brif(all_half, roots_loop, &[], calls_loop, &[]);
        b.switch_to_block(roots_loop);
        let exit = element_loop::<F>(b, schedule, &e, &needed, n, &exponents, None);
        b.switch_to_block(calls_loop);
        element_loop::<F>(b, schedule, &e, &needed, n, &[], Some(exit))
    };
    b.switch_to_block(exit);
    b.ins().return_(&[]);
    Ok(())
}

/// The element loop, from the current block to `exit` (a new block when
/// `None`, returned), with `pow` as a square root for the exponents
/// `square_roots`.
fn element_loop<F: JitFloat>(
    b: &mut FunctionBuilder<'_>,
    schedule: &Schedule,
    e: &Entry,
    needed: &[usize],
    n: Value,
    square_roots: &[ValueId],
    exit: Option<Block>,
) -> Block {
    let lanes = F::LANES as i64;
    let i = b.declare_var(types::I64);
    let zero = b.ins().iconst(types::I64, 0);
    b.def_var(i, zero);
    let head = b.create_block();
    let body = b.create_block();
    let exit = exit.unwrap_or_else(|| b.create_block());
    b.ins().jump(head, &[]);

    b.switch_to_block(head);
    let iv = b.use_var(i);
    let next = b.ins().iadd_imm_s(iv, lanes * UNROLL as i64);
    let fits = b.ins().icmp(IntCC::UnsignedLessThanOrEqual, next, n);
    b.ins().brif(fits, body, &[], exit, &[]);

    b.switch_to_block(body);
    let iv = b.use_var(i);
    let offset = b.ins().imul_imm_s(iv, F::BYTES as i64);
    for k in 0..UNROLL {
        let imm = (k * F::LANES * F::BYTES) as i32;
        vector_step::<F>(b, schedule, e, needed, square_roots, (offset, imm));
    }
    let next = b.ins().iadd_imm_s(iv, lanes * UNROLL as i64);
    b.def_var(i, next);
    b.ins().jump(head, &[]);
    exit
}

/// One vector of the element pass: compute, then store every output.
fn vector_step<F: JitFloat>(
    b: &mut FunctionBuilder<'_>,
    schedule: &Schedule,
    e: &Entry,
    needed: &[usize],
    square_roots: &[ValueId],
    (offset, imm): (Value, i32),
) {
    let rule = &schedule.rule;
    let mut em = Emitter::<F> {
        b,
        rule,
        bases: &e.bases,
        scalars: &e.scalars,
        lazy: e.lazy(),
        imports: &e.imports,
        square_roots,
        element: PhantomData,
    };
    let vals = em.emit(needed, offset, imm);
    for (out, v) in &schedule.outputs {
        let value = vals[v.index()].expect("outputs are computed");
        let base = e.bases[output_buffer(rule, *out)].expect("output bases are loaded at entry");
        let addr = em.b.ins().iadd(base, offset);
        em.b.ins().store(mem_flags(), value, addr, imm);
    }
}

fn reduction_body<F: JitFloat>(
    b: &mut FunctionBuilder<'_>,
    module: &mut JITModule,
    schedule: &Schedule,
    pass: &[ValueId],
) -> BuildResult<()> {
    let rule = &schedule.rule;
    let args = lensopt_ir::schedule::reductions_of(rule, pass);
    let arg_ids: Vec<ValueId> = args.iter().map(|a| a.1).collect();
    let needed = element_nodes(rule, &arg_ids);
    let start = b.create_block();
    b.append_block_params_for_function_params(start);
    b.switch_to_block(start);
    let (bufs, slots, n, valid, out) = {
        let p = b.block_params(start);
        (p[0], p[1], p[2], p[3], p[4])
    };
    let e = entry::<F>(b, module, schedule, &needed, &arg_ids, &[], bufs, slots)?;
    // Per reduction, `REDUCTION_SETS` sets of accumulators, each set one
    // f64x2 vector per two lanes: lanes 0 and 1, then 2 and 3 (f32).
    let halves = F::LANES / 2;
    let zero64 = b.ins().f64const(0.0);
    let zeros = b.ins().splat(types::F64X2, zero64);
    let accs: Vec<Vec<Vec<Variable>>> = args
        .iter()
        .map(|_| {
            (0..REDUCTION_SETS)
                .map(|_| {
                    (0..halves)
                        .map(|_| {
                            let v = b.declare_var(types::F64X2);
                            b.def_var(v, zeros);
                            v
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    // The lanes' offsets in each half, for the mask against `valid`.
    let offsets: Vec<Value> = (0..halves)
        .map(|h| {
            let lanes: Vec<u8> = [2 * h as u64, 2 * h as u64 + 1]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            let constant = b.func.dfg.constants.insert(lanes.into());
            b.ins().vconst(types::I64X2, constant)
        })
        .collect();
    let i = b.declare_var(types::I64);
    let zero = b.ins().iconst(types::I64, 0);
    b.def_var(i, zero);
    let head = b.create_block();
    let body = b.create_block();
    let exit = b.create_block();
    b.ins().jump(head, &[]);

    b.switch_to_block(head);
    let iv = b.use_var(i);
    let more = b.ins().icmp(IntCC::UnsignedLessThan, iv, n);
    b.ins().brif(more, body, &[], exit, &[]);

    b.switch_to_block(body);
    let iv = b.use_var(i);
    let offset = b.ins().imul_imm_s(iv, F::BYTES as i64);
    let vals = {
        let mut em = Emitter::<F> {
            b: &mut *b,
            rule,
            bases: &e.bases,
            scalars: &e.scalars,
            lazy: e.lazy(),
            imports: &e.imports,
            square_roots: &[],
            element: PhantomData,
        };
        em.emit(&needed, offset, 0)
    };
    // Lanes at or past `valid` add zero: lane `k` of a half counts while
    // `offset k < valid - i` (both below 2^63, so signed compares hold).
    let left = b.ins().isub(valid, iv);
    let left = b.ins().splat(types::I64X2, left);
    let counts: Vec<Value> = offsets
        .iter()
        .map(|o| {
            let ok = b.ins().icmp(IntCC::SignedLessThan, *o, left);
            b.ins().bitcast(types::F64X2, bitcast_flags(), ok)
        })
        .collect();
    for ((op, arg), sets) in args.iter().zip(&accs) {
        let x = vals[arg.index()].expect("reduced values are computed");
        for (half, ok) in counts.iter().enumerate() {
            let contribution = half_contribution::<F>(b, *op, x, half);
            let masked = b.ins().bitselect(*ok, contribution, zeros);
            let old = b.use_var(sets[0][half]);
            let new = match op {
                ReduceOp::MaxAbs => b.ins().fmax(old, masked),
                _ => b.ins().fadd(old, masked),
            };
            // The vector adds to set 0, then the sets rotate: vector `j`
            // reaches set `j % REDUCTION_SETS`, and after a multiple of
            // `REDUCTION_SETS` vectors (every range) each set is back in place.
            let later: Vec<Value> = sets[1..].iter().map(|s| b.use_var(s[half])).collect();
            for (set, value) in later.into_iter().enumerate() {
                b.def_var(sets[set][half], value);
            }
            b.def_var(sets[REDUCTION_SETS - 1][half], new);
        }
    }
    let next = b.ins().iadd_imm_s(iv, F::LANES as i64);
    b.def_var(i, next);
    b.ins().jump(head, &[]);

    b.switch_to_block(exit);
    // The accumulators in index order: set by set, lane by lane.
    for (k, ((op, _), sets)) in args.iter().zip(&accs).enumerate() {
        let mut total: Option<Value> = None;
        for var in sets.iter().flatten() {
            let pair = b.use_var(*var);
            for lane in 0..2 {
                let x = b.ins().extractlane(pair, lane);
                total = Some(match (total, op) {
                    (None, _) => x,
                    (Some(t), ReduceOp::MaxAbs) => b.ins().fmax(t, x),
                    (Some(t), _) => b.ins().fadd(t, x),
                });
            }
        }
        let total = total.expect("at least one accumulator");
        b.ins().store(mem_flags(), total, out, (k * 8) as i32);
    }
    b.ins().return_(&[]);
    Ok(())
}

/// What lanes `2 half` and `2 half + 1` of `x` add to their accumulators,
/// as an f64x2 vector.
fn half_contribution<F: JitFloat>(
    b: &mut FunctionBuilder<'_>,
    op: ReduceOp,
    x: Value,
    half: usize,
) -> Value {
    if op == ReduceOp::Count {
        // x is a mask: lanes are all ones (true) or zero; widened to 64-bit
        // lanes, it keeps 1.0's bits or none.
        let mask = if F::BYTES == 4 {
            if half == 0 {
                b.ins().swiden_low(x)
            } else {
                b.ins().swiden_high(x)
            }
        } else {
            x
        };
        let one = b.ins().iconst(types::I64, 1f64.to_bits() as i64);
        let ones = b.ins().splat(types::I64X2, one);
        let bits = b.ins().band(mask, ones);
        return b.ins().bitcast(types::F64X2, bitcast_flags(), bits);
    }
    let wide = if F::BYTES == 4 {
        let lanes = if half == 0 {
            x
        } else {
            // Lanes 2 and 3 moved down to 0 and 1.
            let bytes = b.ins().bitcast(types::I8X16, bitcast_flags(), x);
            let order: Vec<u8> = (8..16).chain(8..16).collect();
            let order = b.func.dfg.immediates.push(order.into());
            let moved = b.ins().shuffle(bytes, bytes, order);
            b.ins().bitcast(types::F32X4, bitcast_flags(), moved)
        };
        b.ins().fvpromote_low(lanes)
    } else {
        x
    };
    match op {
        ReduceOp::Sum | ReduceOp::Mean => wide,
        ReduceOp::Norm => b.ins().fmul(wide, wide),
        ReduceOp::MaxAbs => b.ins().fabs(wide),
        ReduceOp::Count => unreachable!(),
    }
}
