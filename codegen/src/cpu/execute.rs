//! The safe, parallel execution of one step with a compiled [`Program`].
//!
//! The host evaluates per-step values once per group and per-tensor values
//! once per tensor (in f64, [`crate::host`]), then runs the kernels over
//! chunks of every tensor on a thread pool: each reduction pass, then the
//! element pass. Chunks are fixed in size and start at multiples of
//! [`CHUNK`] within their tensor (independent of the number of threads and
//! of the other tensors), so element results are identical for any thread
//! count and reductions are combined in the same order every time, also
//! when a tensor is split into shards at chunk boundaries across processes
//! ([`Program::step_shard`]). Every buffer is checked against the schedule
//! before the first kernel runs.

use super::kernel::output_buffer;
use super::lanes::JitFloat;
use super::program::{Program, ReduceFn, MAX_BUFFERS};
use crate::host::{self, combine_partials};
use lensopt_ir::schedule::{Schedule, REDUCTION_SETS};
use lensopt_ir::{HyperValue, Op, ReduceOp, StateKind};
use rayon::prelude::*;

/// Elements per chunk of work: a multiple of every vector width times the unroll.
pub const CHUNK: usize = 1 << 16;

/// Below this many elements in a step, kernels run on the calling thread.
pub const PARALLEL_MIN: usize = 1 << 17;

/// One tensor's buffers for a step.
pub struct StepBuffers<'a, F> {
    /// The parameter, updated in place.
    pub param: &'a mut [F],
    /// The gradient.
    pub grad: &'a [F],
    /// Extra inputs in the rule's order (`None`: absent).
    pub inputs: Vec<Option<&'a [F]>>,
    /// States in the rule's order: element states as slices, `None` for scalar states.
    pub states: Vec<Option<&'a mut [F]>>,
}

impl<'a, F> StepBuffers<'a, F> {
    /// A shorter-lived view of the same buffers.
    fn reborrow(&mut self) -> StepBuffers<'_, F> {
        StepBuffers {
            param: &mut *self.param,
            grad: self.grad,
            inputs: self.inputs.clone(),
            states: self.states.iter_mut().map(|s| s.as_deref_mut()).collect(),
        }
    }

    /// Splits off the first `len` elements of every buffer.
    fn split_first(self, len: usize) -> (StepBuffers<'a, F>, StepBuffers<'a, F>) {
        let (p0, p1) = self.param.split_at_mut(len);
        let (g0, g1) = self.grad.split_at(len);
        let mut i0 = Vec::with_capacity(self.inputs.len());
        let mut i1 = Vec::with_capacity(self.inputs.len());
        for input in self.inputs {
            let (a, b) = match input {
                Some(s) => {
                    let (a, b) = s.split_at(len);
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            i0.push(a);
            i1.push(b);
        }
        let mut s0 = Vec::with_capacity(self.states.len());
        let mut s1 = Vec::with_capacity(self.states.len());
        for state in self.states {
            let (a, b) = match state {
                Some(s) => {
                    let (a, b) = s.split_at_mut(len);
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            s0.push(a);
            s1.push(b);
        }
        (
            StepBuffers {
                param: p0,
                grad: g0,
                inputs: i0,
                states: s0,
            },
            StepBuffers {
                param: p1,
                grad: g1,
                inputs: i1,
                states: s1,
            },
        )
    }

    /// The buffer table a kernel takes, in kernel order (null where absent).
    fn pointers(&mut self) -> [*mut u8; MAX_BUFFERS] {
        let mut ptrs = [std::ptr::null_mut(); MAX_BUFFERS];
        ptrs[0] = self.param.as_mut_ptr().cast();
        // Kernels never store through the gradient or input pointers (only
        // `p` and states are outputs), so casting away const is sound.
        ptrs[1] = self.grad.as_ptr().cast_mut().cast();
        let k = 2;
        for (j, input) in self.inputs.iter().enumerate() {
            if let Some(s) = input {
                ptrs[k + j] = s.as_ptr().cast_mut().cast();
            }
        }
        let k = k + self.inputs.len();
        for (j, state) in self.states.iter_mut().enumerate() {
            if let Some(s) = state {
                ptrs[k + j] = s.as_mut_ptr().cast();
            }
        }
        ptrs
    }
}

/// The step-level facts a step needs besides the buffers.
pub struct StepPlan<'a> {
    /// The step counter (1 on the first step).
    pub t: u64,
    /// Whether each optional input is present.
    pub present: &'a [bool],
    /// Hyperparameters of each group.
    pub group_hypers: &'a [Vec<HyperValue>],
    /// Group of each tensor.
    pub group_of: &'a [usize],
}

impl<F: JitFloat> Program<F> {
    /// Checks that every buffer a kernel touches is there, with the parameter's length.
    fn validate(&self, tensors: &[StepBuffers<'_, F>], plan: &StepPlan<'_>) -> Result<(), String> {
        let rule = &self.schedule.rule;
        if plan.group_of.len() != tensors.len()
            || plan.group_of.iter().any(|g| *g >= plan.group_hypers.len())
        {
            return Err("every tensor needs a parameter group".into());
        }
        if plan.present.len() != rule.inputs.len() {
            return Err("one presence flag per input is needed".into());
        }
        let mut reads_input = vec![false; rule.inputs.len()];
        let mut reads_state = vec![false; rule.states.len()];
        for node in &rule.nodes {
            match node.op {
                Op::Input(i) => reads_input[i as usize] = true,
                Op::State(i) => reads_state[i as usize] = true,
                _ => {}
            }
        }
        for (out, _) in &self.schedule.outputs {
            if let lensopt_ir::schedule::Output::State(i) = out {
                reads_state[*i as usize] = true;
            }
        }
        for (k, t) in tensors.iter().enumerate() {
            let n = t.param.len();
            if t.grad.len() != n {
                return Err(format!(
                    "tensor {k}: gradient of {} elements for {n} parameters",
                    t.grad.len()
                ));
            }
            if t.inputs.len() != rule.inputs.len() || t.states.len() != rule.states.len() {
                return Err(format!(
                    "tensor {k}: inputs or states do not match the rule"
                ));
            }
            for (i, input) in t.inputs.iter().enumerate() {
                match input {
                    Some(s) if s.len() != n => {
                        return Err(format!(
                            "tensor {k}: input `{}` has {} elements, not {n}",
                            rule.inputs[i].name,
                            s.len()
                        ))
                    }
                    None if reads_input[i] => {
                        return Err(format!(
                            "tensor {k}: input `{}` is missing",
                            rule.inputs[i].name
                        ))
                    }
                    _ => {}
                }
            }
            for (i, state) in t.states.iter().enumerate() {
                let element = rule.states[i].kind == StateKind::Element;
                match state {
                    Some(s) if s.len() != n => {
                        return Err(format!(
                            "tensor {k}: state `{}` has {} elements, not {n}",
                            rule.states[i].name,
                            s.len()
                        ))
                    }
                    None if element && reads_state[i] => {
                        return Err(format!(
                            "tensor {k}: state `{}` is missing",
                            rule.states[i].name
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Runs one step over `tensors`. `scalar_state[k]` holds tensor `k`'s
    /// scalar states (indexed like the rule's states) and is updated.
    pub fn step(
        &self,
        plan: &StepPlan<'_>,
        tensors: &mut [StepBuffers<'_, F>],
        scalar_state: &mut [Vec<f64>],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), String> {
        let numels: Vec<usize> = tensors.iter().map(|t| t.param.len()).collect();
        self.drive(plan, tensors, scalar_state, pool, &numels, None)
    }

    /// Runs one step over this process's shards of the tensors: `tensors[k]`
    /// holds elements `[offset, offset + len)` of tensor `k`, whose whole
    /// length is `shard.numels[k]`, with `offset` a multiple of [`CHUNK`]
    /// (and `len` one too, unless the shard ends the tensor). Each
    /// reduction pass's chunk partials reach every shard through
    /// `shard.exchange` and are combined in chunk order, so every shard
    /// computes the values of an unsharded step bit for bit, and its
    /// elements come out as the unsharded step's would.
    pub fn step_shard(
        &self,
        plan: &StepPlan<'_>,
        tensors: &mut [StepBuffers<'_, F>],
        scalar_state: &mut [Vec<f64>],
        pool: Option<&rayon::ThreadPool>,
        shard: Shard<'_>,
    ) -> Result<(), String> {
        self.drive(
            plan,
            tensors,
            scalar_state,
            pool,
            shard.numels,
            Some(shard.exchange),
        )
    }

    /// The phase driver over `tensors`, parts of tensors of `numels`
    /// elements (the whole tensors unless `exchange` brings the other parts'
    /// partials).
    fn drive(
        &self,
        plan: &StepPlan<'_>,
        tensors: &mut [StepBuffers<'_, F>],
        scalar_state: &mut [Vec<f64>],
        pool: Option<&rayon::ThreadPool>,
        numels: &[usize],
        exchange: Option<&mut dyn Exchange>,
    ) -> Result<(), String> {
        self.validate(tensors, plan)?;
        if scalar_state.len() != tensors.len() || numels.len() != tensors.len() {
            return Err("one scalar-state vector and one length per tensor are needed".into());
        }
        if let Some(k) = (0..tensors.len()).find(|&k| tensors[k].param.len() > numels[k]) {
            return Err(format!("tensor {k}: a shard longer than its tensor"));
        }
        let total: usize = tensors.iter().map(|t| t.param.len()).sum();
        let facts = host::StepFacts {
            t: plan.t,
            present: plan.present,
            group_hypers: plan.group_hypers,
            group_of: plan.group_of,
            numels,
        };
        let mut runner = Runner {
            program: self,
            tensors,
            parallel: total >= PARALLEL_MIN,
            pool,
            exchange,
        };
        host::drive(&self.schedule, &facts, scalar_state, &mut runner)
    }

    /// The kernels' scalar slots, rounded to the element type, each repeated
    /// across a whole vector (the layout the kernels load).
    fn slots(&self, values: &[f64]) -> Vec<F> {
        self.schedule
            .slots
            .iter()
            .flat_map(|v| std::iter::repeat_n(F::from_f64(values[v.index()]), F::LANES))
            .collect()
    }

    /// Splits every tensor into chunks and runs `work` on each; returns
    /// `(tensor, result)` pairs, tensors and chunks in order.
    fn run_chunks<R: Send>(
        &self,
        tensors: &mut [StepBuffers<'_, F>],
        parallel: bool,
        pool: Option<&rayon::ThreadPool>,
        work: impl Fn(usize, &mut StepBuffers<'_, F>) -> R + Sync,
    ) -> Vec<(usize, R)> {
        if !parallel {
            // Small steps: no chunk list; tensors of more than a chunk still
            // go chunk by chunk, so that reductions combine as they do in parallel.
            let mut out = Vec::new();
            for (k, t) in tensors.iter_mut().enumerate() {
                if t.param.len() <= CHUNK {
                    if !t.param.is_empty() {
                        out.push((k, work(k, t)));
                    }
                    continue;
                }
                let mut rest = t.reborrow();
                while rest.param.len() > CHUNK {
                    let (mut head, tail) = rest.split_first(CHUNK);
                    out.push((k, work(k, &mut head)));
                    rest = tail;
                }
                out.push((k, work(k, &mut rest)));
            }
            return out;
        }
        // Small tensors go whole (borrowed as they are); large ones in pieces.
        enum Chunk<'s, 'a, F> {
            Whole(&'s mut StepBuffers<'a, F>),
            Part(StepBuffers<'s, F>),
        }
        let mut chunks: Vec<(usize, Chunk<'_, '_, F>)> = Vec::with_capacity(tensors.len());
        for (k, t) in tensors.iter_mut().enumerate() {
            if t.param.len() <= CHUNK {
                if !t.param.is_empty() {
                    chunks.push((k, Chunk::Whole(t)));
                }
                continue;
            }
            let mut rest = t.reborrow();
            while rest.param.len() > CHUNK {
                let (head, tail) = rest.split_first(CHUNK);
                chunks.push((k, Chunk::Part(head)));
                rest = tail;
            }
            chunks.push((k, Chunk::Part(rest)));
        }
        let mut run = || {
            chunks
                .par_iter_mut()
                .map(|(k, c)| {
                    let r = match c {
                        Chunk::Whole(t) => work(*k, t),
                        Chunk::Part(t) => work(*k, t),
                    };
                    (*k, r)
                })
                .collect()
        };
        match pool {
            Some(p) => p.install(run),
            None => run(),
        }
    }

    /// Runs the element kernel over one chunk: whole iterations of its loop
    /// (`UNROLL` vectors) in place, the last `n % (UNROLL * L)` elements on
    /// zero-padded copies.
    fn element_chunk(&self, chunk: &mut StepBuffers<'_, F>, slots: &[F]) {
        let n = chunk.param.len();
        let step = F::LANES * super::kernel::UNROLL;
        let main = n - n % step;
        let ptrs = chunk.pointers();
        if main > 0 {
            // SAFETY: `validate` checked that every buffer the kernel reads or
            // writes is present with exactly `n >= main` elements; the pointer
            // table and `slots` (every schedule slot broadcast to `F::LANES`
            // values, the layout `load_slot` reads) outlive the call; the
            // kernel touches elements [0, main) only, `main` is a multiple of
            // `UNROLL * L` as it requires, and the only buffers it writes
            // (p and states) are distinct `&mut` slices.
            unsafe { (self.element)(ptrs.as_ptr(), slots.as_ptr().cast(), main) };
        }
        if main < n {
            let mut pad = Padded::<F>::new(chunk, main, step);
            let ptrs = pad.pointers();
            // SAFETY: as above, with every present buffer replaced by a padded
            // copy of exactly `step` elements.
            unsafe { (self.element)(ptrs.as_ptr(), slots.as_ptr().cast(), step) };
            pad.write_back(chunk, main, &self.schedule);
        }
    }

    /// Runs a reduction kernel over one chunk; returns one partial per reduction.
    fn reduce_chunk(
        &self,
        func: ReduceFn,
        ops: &[ReduceOp],
        chunk: &mut StepBuffers<'_, F>,
        slots: &[F],
    ) -> Vec<f64> {
        let count = ops.len();
        let n = chunk.param.len();
        // Reduction kernels take whole rounds of their accumulator sets.
        let width = F::LANES * REDUCTION_SETS;
        let main = n - n % width;
        let mut out = vec![0.0f64; count];
        let ptrs = chunk.pointers();
        if main > 0 {
            // SAFETY: as for the element kernel; reduction kernels only read
            // the buffers, and write `count` f64 values to `out`.
            unsafe {
                func(
                    ptrs.as_ptr(),
                    slots.as_ptr().cast(),
                    main,
                    main,
                    out.as_mut_ptr(),
                )
            };
        }
        if main < n {
            let mut tail = vec![0.0f64; count];
            let mut pad = Padded::<F>::new(chunk, main, width);
            let ptrs = pad.pointers();
            // SAFETY: as above on padded copies of `width` elements; lanes
            // at or past `n - main` are masked out by the kernel.
            unsafe {
                func(
                    ptrs.as_ptr(),
                    slots.as_ptr().cast(),
                    width,
                    n - main,
                    tail.as_mut_ptr(),
                )
            };
            for (k, pass_value) in out.iter_mut().enumerate() {
                *pass_value = combine_partials(ops[k], *pass_value, tail[k]);
            }
        }
        out
    }
}

/// Zero-padded copies, `width` elements each, of the elements of every
/// buffer of a chunk from `from` on (fewer than `width`).
struct Padded<F> {
    data: Vec<F>,
    present: Vec<bool>,
    width: usize,
}

impl<F: JitFloat> Padded<F> {
    fn new(chunk: &StepBuffers<'_, F>, from: usize, width: usize) -> Self {
        let nb = 2 + chunk.inputs.len() + chunk.states.len();
        let mut data = vec![F::default(); nb * width];
        let mut present = vec![false; nb];
        let mut put = |b: usize, src: &[F]| {
            let tail = &src[from..];
            data[b * width..b * width + tail.len()].copy_from_slice(tail);
            present[b] = true;
        };
        put(0, chunk.param);
        put(1, chunk.grad);
        for (j, input) in chunk.inputs.iter().enumerate() {
            if let Some(s) = input {
                put(2 + j, s);
            }
        }
        let base = 2 + chunk.inputs.len();
        for (j, state) in chunk.states.iter().enumerate() {
            if let Some(s) = state {
                put(base + j, s);
            }
        }
        Padded {
            data,
            present,
            width,
        }
    }

    fn pointers(&mut self) -> [*mut u8; MAX_BUFFERS] {
        let mut ptrs = [std::ptr::null_mut(); MAX_BUFFERS];
        for (b, p) in self.present.iter().enumerate() {
            if *p {
                ptrs[b] = self.data[b * self.width..].as_mut_ptr().cast();
            }
        }
        ptrs
    }

    /// Copies the outputs (p and written states) back into the chunk.
    fn write_back(&self, chunk: &mut StepBuffers<'_, F>, from: usize, schedule: &Schedule) {
        let rest = chunk.param.len() - from;
        for (out, _) in &schedule.outputs {
            let b = output_buffer(&schedule.rule, *out);
            let src = &self.data[b * self.width..b * self.width + rest];
            match out {
                lensopt_ir::schedule::Output::Param => chunk.param[from..].copy_from_slice(src),
                lensopt_ir::schedule::Output::State(s) => {
                    if let Some(dst) = chunk.states[*s as usize].as_deref_mut() {
                        dst[from..].copy_from_slice(src);
                    }
                }
            }
        }
    }
}

/// This process's part of a step sharded across processes.
pub struct Shard<'s> {
    /// The whole length of each tensor.
    pub numels: &'s [usize],
    /// Brings every shard's reduction partials to every shard.
    pub exchange: &'s mut dyn Exchange,
}

/// How the reduction partials of each shard reach all shards (an
/// all-gather, in shard order; shards hold consecutive parts of each tensor
/// in that order).
pub trait Exchange {
    /// This shard's values in, every shard's out (this one's included), in shard order.
    fn all_gather(&mut self, local: &[f64]) -> Result<Vec<Vec<f64>>, String>;
}

/// The CPU program as the phase driver's [`host::PassRunner`]: each pass
/// runs over fixed-size chunks of every tensor on the thread pool.
struct Runner<'p, 'b, 'a, 'x, F> {
    program: &'p Program<F>,
    tensors: &'b mut [StepBuffers<'a, F>],
    parallel: bool,
    pool: Option<&'p rayon::ThreadPool>,
    /// Set when the tensors are shards of a step sharded across processes.
    exchange: Option<&'x mut dyn Exchange>,
}

/// Per tensor, its chunk partials in chunk order from every shard (shard
/// order), read back from the all-gathered messages: each message holds,
/// per tensor, a count of chunks and then `count * width` values.
fn unpack_partials(
    messages: &[Vec<f64>],
    tensors: usize,
    width: usize,
) -> Result<Vec<Vec<f64>>, String> {
    let mut per_tensor = vec![Vec::new(); tensors];
    for m in messages {
        let mut at = 0;
        for partials in per_tensor.iter_mut() {
            let count = *m.get(at).ok_or("a shard's partials are cut short")?;
            let len = (count as usize)
                .checked_mul(width)
                .filter(|len| count >= 0.0 && at + 1 + len <= m.len())
                .ok_or("a shard's partials are malformed")?;
            partials.extend_from_slice(&m[at + 1..at + 1 + len]);
            at += 1 + len;
        }
        if at != m.len() {
            return Err("a shard sent more partials than its tensors have".into());
        }
    }
    Ok(per_tensor)
}

impl<F: JitFloat> host::PassRunner for Runner<'_, '_, '_, '_, F> {
    fn reduce(&mut self, pass: usize, values: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        let program = self.program;
        let rule = &program.schedule.rule;
        let func = program.passes[pass];
        let ops: Vec<ReduceOp> =
            lensopt_ir::schedule::reductions_of(rule, &program.schedule.passes[pass])
                .into_iter()
                .map(|(op, _)| op)
                .collect();
        let slots: Vec<Vec<F>> = values.iter().map(|v| program.slots(v)).collect();
        let results = program.run_chunks(self.tensors, self.parallel, self.pool, |k, chunk| {
            program.reduce_chunk(func, &ops, chunk, &slots[k])
        });
        let width = ops.len();
        let tensors = self.tensors.len();
        // Chunks come back in order (and shards in shard order); each
        // tensor's partials are combined in that order.
        let mut chunks: Vec<Vec<f64>> = vec![Vec::new(); tensors];
        for (k, partial) in results {
            chunks[k].extend(partial);
        }
        if let Some(exchange) = self.exchange.as_deref_mut() {
            let mut message = Vec::new();
            for partials in chunks {
                message.push((partials.len() / width.max(1)) as f64);
                message.extend(partials);
            }
            chunks = unpack_partials(&exchange.all_gather(&message)?, tensors, width)?;
        }
        let mut per_tensor = vec![vec![0.0; width]; tensors];
        for (k, partials) in chunks.iter().enumerate() {
            for partial in partials.chunks(width.max(1)) {
                for (r, op) in ops.iter().enumerate() {
                    per_tensor[k][r] = combine_partials(*op, per_tensor[k][r], partial[r]);
                }
            }
        }
        Ok(per_tensor)
    }

    fn element(&mut self, values: &[&[f64]], value_of: &[usize]) -> Result<(), String> {
        let program = self.program;
        let slots: Vec<Vec<F>> = values.iter().map(|v| program.slots(v)).collect();
        program.run_chunks(self.tensors, self.parallel, self.pool, |k, chunk| {
            program.element_chunk(chunk, &slots[value_of[k]]);
        });
        Ok(())
    }
}
