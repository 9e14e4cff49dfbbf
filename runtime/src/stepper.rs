//! `Stepper`: the state of an optimizer over a set of tensors, and its steps.
//!
//! It owns the per-tensor state, the parameter groups' hyperparameters and
//! the step counter. Every call validates its arguments (counts, shapes,
//! layouts, inputs) completely before touching anything, so a refused call
//! leaves parameters and state as they were. That includes the gradients'
//! values: NaN and infinity are handled by the stepper's [`NonFinite`]
//! policy before the first write.

use crate::error::{mismatch, Error};
use crate::jit;
use crate::non_finite::{self, CheckedGradients, Found, NonFinite};
use crate::optimizer::{resolve_groups, set_in_groups, Group};
use crate::schedules::{Schedule, Scheduled};
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use lensopt_codegen::cpu::{Program, StepBuffers, StepPlan};
use lensopt_ir::fusion::{Kernel, Plan};
use lensopt_ir::interp::{self, StateBuf, StepTensor};
use lensopt_ir::matrix;
use lensopt_ir::optimize::Mode;
use lensopt_ir::{HyperValue, Rule, StateKind};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::sync::Arc;

/// How a [`Stepper`] computes its steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Native code from the cranelift JIT, compiled once per rule, element
    /// type and specialisation, with the e-graph's rewrites of this mode.
    Jit(Mode),
    /// Native code with the default ([`Mode::Fast`]) rewrites. The default.
    #[default]
    JitDefault,
    /// The reference interpreter: slow, and the definition of what a rule means.
    Interpreter,
}

/// Extra per-element inputs for one step (a Hessian-diagonal estimate, a
/// second gradient...), by the names the rule declares, one tensor per parameter.
pub struct Inputs<'a, F> {
    items: Vec<(String, Vec<&'a dyn TensorRef<F>>)>,
}

impl<F> Default for Inputs<'_, F> {
    fn default() -> Self {
        Inputs { items: Vec::new() }
    }
}

impl<'a, F> Inputs<'a, F> {
    /// No extra inputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds input `name`, one tensor per parameter tensor.
    #[must_use]
    pub fn with(mut self, name: &str, tensors: Vec<&'a dyn TensorRef<F>>) -> Self {
        self.items.push((name.to_string(), tensors));
        self
    }
}

/// An optimizer's state over a fixed list of parameter tensors.
#[derive(Clone, Debug)]
pub struct Stepper<F: Float> {
    rule: Arc<Rule>,
    groups: Vec<Vec<HyperValue>>,
    group_of: Vec<usize>,
    shapes: Vec<Vec<usize>>,
    state: Vec<Vec<StateBuf<F>>>,
    t: u64,
    backend: Backend,
    non_finite: NonFinite,
    /// Steps skipped under [`NonFinite::Skip`], and whether the last call was one.
    skipped: u64,
    last_skipped: bool,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// The program of the last step, with its specialisation.
    program: Option<(jit::Key, Arc<Program<F>>)>,
    /// Whether kernels compiled into the crate may serve steps.
    compiled_in: bool,
    /// Scheduled hyperparameters.
    schedules: Scheduled,
    /// For a matrix rule, the `rows × cols` each tensor is seen as.
    dims: Option<Vec<matrix::Dims>>,
    /// For a matrix rule, its element-wise work fused into kernels.
    fusion: Option<Arc<Plan>>,
    /// Set when the tensors are this rank's shards of larger ones (see
    /// [`crate::dist::ShardedStepper`]): the whole tensors' lengths, and the
    /// ranks that hold the other shards.
    shard: Option<(Vec<usize>, Arc<dyn crate::dist::Collective>)>,
}

/// Fused kernels of a matrix rule, compiled by the CPU JIT in exact mode
/// (so a fused node is bit for bit the evaluator's) and run on the pool.
struct JitKernels<'p> {
    pool: Option<&'p rayon::ThreadPool>,
}

impl<F: Float> matrix::Kernels<F> for JitKernels<'_> {
    fn run(
        &self,
        kernel: &Kernel,
        scalars: &[HyperValue],
        arrays: &[&[F]],
        out: &mut [F],
    ) -> Result<(), String> {
        let present = vec![true; arrays.len()];
        let groups = [scalars.to_vec()];
        let key = jit::Key::for_step(&groups, &present, Mode::Exact);
        let program = jit::program::<F>(&kernel.rule, &key).map_err(|e| e.to_string())?;
        let grad: &[F] = arrays.first().copied().unwrap_or(&[]);
        let mut buffers = [StepBuffers {
            param: out,
            grad,
            inputs: arrays.iter().map(|a| Some(*a)).collect(),
            states: Vec::new(),
        }];
        let plan = StepPlan {
            t: 1,
            present: &present,
            group_hypers: &groups,
            group_of: &[0],
        };
        program.step(&plan, &mut buffers, &mut [Vec::new()], self.pool)
    }
}

/// The shape of a state of `kind` of a tensor of shape `shape`: the
/// tensor's own for element state, `[]` for scalar state, and for matrix
/// state its `rows × cols` matrix's axes (`[rows, 1]` per row), the low
/// axis being `low` long.
pub fn state_shape(kind: StateKind, shape: &[usize], low: usize) -> Vec<usize> {
    match kind {
        StateKind::Element => shape.to_vec(),
        StateKind::Scalar => Vec::new(),
        StateKind::Array(r, c) => {
            // A vector (under a rule reading `ndim()`) is 1 × n.
            let (rows, cols) = matrix::rows_and_cols(shape).unwrap_or((0, 0));
            let e = lensopt_ir::Extents { rows, cols, low };
            vec![r.len(e), c.len(e)]
        }
    }
}

/// Tensor `index`'s elements, checked against `shape` and for row-major order.
pub(crate) fn elements<'a, F>(
    what: &str,
    index: usize,
    tensor: &'a dyn TensorRef<F>,
    shape: &[usize],
) -> Result<&'a [F], Error> {
    if tensor.shape() != shape {
        return Err(mismatch(format!(
            "{what} {index} has shape {:?}, but parameter {index} has shape {shape:?}",
            tensor.shape()
        )));
    }
    tensor.elements().ok_or_else(|| {
        mismatch(format!(
            "{what} {index} is not contiguous in standard (row-major) order"
        ))
    })
}

impl<F: Float> Stepper<F> {
    pub(crate) fn new(
        rule: Arc<Rule>,
        base: Vec<HyperValue>,
        params: &[&dyn TensorRef<F>],
        groups: &[Group],
    ) -> Result<Self, Error> {
        let (groups, group_of) = resolve_groups(&rule, &base, params.len(), groups)?;
        for values in &groups {
            rule.check_hypers(values).map_err(mismatch)?;
        }
        let shapes: Vec<Vec<usize>> = params.iter().map(|p| p.shape().to_vec()).collect();
        let dims = if rule.is_matrix() {
            let dims = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    matrix::matrix_dims(&rule, s, &groups[group_of[i]]).map_err(|e| {
                        mismatch(format!("`{}` cannot update tensor {i}: {e}", rule.name))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(dims)
        } else {
            None
        };
        let fusion = dims.as_ref().map(|_| Arc::new(Plan::new(&rule)));
        let mut state = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let data = elements("parameter", i, *p, &shapes[i])?;
            let hypers = &groups[group_of[i]];
            state.push(match &dims {
                Some(dims) => matrix::init_state(&rule, hypers, data, dims[i])
                    .map_err(|e| mismatch(format!("tensor {i}: {}", e.0)))?,
                None => interp::init_state(&rule, hypers, data),
            });
        }
        Ok(Stepper {
            rule,
            groups,
            group_of,
            shapes,
            state,
            t: 0,
            backend: Backend::default(),
            non_finite: NonFinite::default(),
            skipped: 0,
            last_skipped: false,
            pool: None,
            program: None,
            compiled_in: true,
            schedules: Scheduled::default(),
            fusion,
            dims,
            shard: None,
        })
    }

    /// Makes the tensors this rank's shards of tensors of `numels` elements,
    /// whose other shards `comm`'s other ranks hold: steps then exchange
    /// reduction partials with them. Element rules on the compiled backend only.
    pub(crate) fn set_shard(
        &mut self,
        numels: Vec<usize>,
        comm: Arc<dyn crate::dist::Collective>,
    ) -> Result<(), Error> {
        if self.dims.is_some() || self.backend == Backend::Interpreter {
            return Err(mismatch(format!(
                "`{}` cannot be sharded by elements: matrix rules and the interpreter step whole tensors",
                self.rule.name
            )));
        }
        if numels.len() != self.shapes.len() {
            return Err(mismatch("one length per tensor is needed"));
        }
        self.shard = Some((numels, comm));
        Ok(())
    }

    /// Schedules hyperparameter `name`: before each step `t`, every group's
    /// value becomes its value now times `schedule.factor(t)` (no
    /// recompilation: hyperparameters are per-step values of the kernels).
    /// A schedule set again replaces the first; checkpoints hold the
    /// values of the last step, not the schedule.
    pub fn set_schedule(&mut self, name: &str, schedule: Schedule) -> Result<(), Error> {
        self.schedules.set(&self.rule, &self.groups, name, schedule)
    }

    /// Stops scheduling `name`; it keeps its last value.
    pub fn clear_schedule(&mut self, name: &str) {
        self.schedules.clear(&self.rule, name);
    }

    /// Chooses how steps are computed (the JIT by default). A sharded
    /// stepper's shards keep the compiled backend.
    pub fn set_backend(&mut self, backend: Backend) {
        if self.shard.is_some() && backend == Backend::Interpreter {
            return;
        }
        self.backend = backend;
        self.program = None;
    }

    /// Lets steps run on the kernels `optimizer!` compiled into the crate
    /// (`true`, the default) or only on the JIT's (`false`), to compare the two.
    pub fn set_compiled_kernels(&mut self, on: bool) {
        self.compiled_in = on;
        self.program = None;
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Chooses what a step does with NaN or infinite gradients or inputs
    /// (see [`NonFinite`]; refusing the step is the default).
    pub fn set_non_finite(&mut self, policy: NonFinite) {
        self.non_finite = policy;
    }

    /// The policy for non-finite gradients.
    pub fn non_finite(&self) -> NonFinite {
        self.non_finite
    }

    /// Steps skipped so far under [`NonFinite::Skip`] (not counted in [`Stepper::t`]).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// True when the last call to a step method skipped its step.
    pub fn last_skipped(&self) -> bool {
        self.last_skipped
    }

    /// Runs the JIT's kernels on a pool of `threads` threads owned by this
    /// stepper (created once), instead of the process-wide pool.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), Error> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| mismatch(format!("cannot start {threads} threads: {e}")))?;
        self.pool = Some(Arc::new(pool));
        Ok(())
    }

    /// Runs the JIT's kernels on `pool` (shared with other work of the
    /// caller, so that two pools never compete for the same cores).
    pub fn set_pool(&mut self, pool: Arc<rayon::ThreadPool>) {
        self.pool = Some(pool);
    }

    /// The compiled program the next step would use (compiling it if needed),
    /// for inspection: its schedule and CLIF.
    pub fn program(&mut self, present: &[bool]) -> Result<Arc<Program<F>>, Error> {
        let mode = match self.backend {
            Backend::Jit(mode) => mode,
            Backend::JitDefault | Backend::Interpreter => Mode::Fast,
        };
        if present.len() != self.rule.inputs.len() {
            return Err(mismatch(format!(
                "{} presence flags for the {} inputs of `{}`",
                present.len(),
                self.rule.inputs.len(),
                self.rule.name
            )));
        }
        let key = jit::Key::for_step(&self.groups, present, mode);
        if let Some((k, p)) = &self.program {
            if *k == key {
                return Ok(p.clone());
            }
        }
        let program =
            jit::Engine::shared().program_from::<F>(&self.rule, &key, self.compiled_in)?;
        self.program = Some((key, program.clone()));
        Ok(program)
    }

    /// One step with gradients only.
    pub fn step(
        &mut self,
        params: &mut [&mut dyn TensorMut<F>],
        grads: &[&dyn TensorRef<F>],
    ) -> Result<(), Error> {
        self.step_with(params, grads, &Inputs::new())
    }

    /// One step with gradients and extra inputs.
    pub fn step_with(
        &mut self,
        params: &mut [&mut dyn TensorMut<F>],
        grads: &[&dyn TensorRef<F>],
        inputs: &Inputs<'_, F>,
    ) -> Result<(), Error> {
        self.check_count(params.len(), grads.len())?;
        let grad_data = (0..grads.len())
            .map(|i| elements("gradient", i, grads[i], &self.shapes[i]))
            .collect::<Result<Vec<_>, _>>()?;
        self.step_on(params, grad_data, None, inputs)
    }

    /// One step on gradients a pass has already checked
    /// ([`CheckedGradients`]): the policy follows that pass's verdict, and
    /// the gradients are not read an extra time (any extra inputs still are).
    pub fn step_checked(
        &mut self,
        params: &mut [&mut dyn TensorMut<F>],
        grads: &CheckedGradients<'_, F>,
    ) -> Result<(), Error> {
        self.step_checked_with(params, grads, &Inputs::new())
    }

    /// [`Stepper::step_checked`] with extra inputs.
    pub fn step_checked_with(
        &mut self,
        params: &mut [&mut dyn TensorMut<F>],
        grads: &CheckedGradients<'_, F>,
        inputs: &Inputs<'_, F>,
    ) -> Result<(), Error> {
        self.check_count(params.len(), grads.len())?;
        let mut grad_data = Vec::with_capacity(grads.len());
        for (i, shape) in self.shapes.iter().enumerate() {
            let (xs, got) = grads.tensor(i);
            if got != shape.as_slice() {
                return Err(mismatch(format!(
                    "gradient {i} has shape {got:?}, but parameter {i} has shape {shape:?}"
                )));
            }
            grad_data.push(xs);
        }
        self.step_on(params, grad_data, Some(grads.found()), inputs)
    }

    /// The step's counts agree with the tensors the optimizer holds.
    fn check_count(&self, params: usize, grads: usize) -> Result<(), Error> {
        let n = self.shapes.len();
        if params != n || grads != n {
            return Err(mismatch(format!(
                "the optimizer holds {n} tensors, but the step got {params} parameters and {grads} gradients"
            )));
        }
        Ok(())
    }

    /// The step on `grad_data` (shapes checked); `checked` is the verdict
    /// of a pass that already looked at the gradients, if one did.
    fn step_on(
        &mut self,
        params: &mut [&mut dyn TensorMut<F>],
        grad_data: Vec<&[F]>,
        checked: Option<Option<&Found>>,
        inputs: &Inputs<'_, F>,
    ) -> Result<(), Error> {
        let n = self.shapes.len();
        for (k, (name, _)) in inputs.items.iter().enumerate() {
            if inputs.items[..k].iter().any(|(other, _)| other == name) {
                return Err(mismatch(format!(
                    "input `{name}` is given twice: give each input once"
                )));
            }
            if self.rule.input_index(name).is_none() {
                return Err(mismatch(format!(
                    "optimizer `{}` takes no input `{name}`",
                    self.rule.name
                )));
            }
        }
        // Per rule input: the supplied tensors, if any.
        let mut supplied: Vec<Option<&Vec<&dyn TensorRef<F>>>> = Vec::new();
        for decl in &self.rule.inputs {
            let found = inputs.items.iter().find(|(name, _)| *name == decl.name);
            match found {
                Some((_, tensors)) if tensors.len() != n => {
                    return Err(mismatch(format!(
                        "input `{}` has {} tensors, but there are {n} parameters",
                        decl.name,
                        tensors.len()
                    )))
                }
                None if !decl.optional => {
                    return Err(mismatch(format!(
                        "optimizer `{}` needs input `{}` at every step",
                        self.rule.name, decl.name
                    )))
                }
                _ => {}
            }
            supplied.push(found.map(|(_, t)| t));
        }
        let present: Vec<bool> = supplied.iter().map(Option::is_some).collect();
        let mut input_data: Vec<Vec<Option<&[F]>>> = Vec::with_capacity(n);
        for i in 0..n {
            let mut row = Vec::with_capacity(supplied.len());
            for (decl, tensors) in self.rule.inputs.iter().zip(&supplied) {
                row.push(match tensors {
                    Some(t) => Some(elements(
                        &format!("input `{}`", decl.name),
                        i,
                        t[i],
                        &self.shapes[i],
                    )?),
                    None => None,
                });
            }
            input_data.push(row);
        }
        for (i, p) in params.iter_mut().enumerate() {
            elements("parameter", i, &**p, &self.shapes[i])?;
        }
        self.last_skipped = false;
        if self.non_finite != NonFinite::Unchecked {
            let decls = &self.rule.inputs;
            // Gradients a pass has checked are not read again; their
            // verdict comes first, as the scan looks at gradients first.
            let (verdict, unread): (Option<Found>, &[&[F]]) = match checked {
                Some(found) => (found.cloned(), &[]),
                None => (None, &grad_data),
            };
            let scan = || non_finite::scan(unread, &input_data, decls);
            let found = verdict.or_else(|| match &self.pool {
                Some(pool) => pool.install(scan),
                None => scan(),
            });
            if let Some(found) = found {
                if self.non_finite == NonFinite::Skip {
                    self.skipped += 1;
                    self.last_skipped = true;
                    return Ok(());
                }
                return Err(Error::NonFinite {
                    what: found.what,
                    index: found.index,
                    value: found.value,
                    step: self.t + 1,
                });
            }
        }
        self.schedules.apply(&mut self.groups, self.t + 1);
        if self.dims.is_some() || self.backend == Backend::Interpreter || n == 0 {
            let mut tensors: Vec<StepTensor<'_, F>> = Vec::with_capacity(n);
            for ((((p, g), inputs), state), group) in params
                .iter_mut()
                .zip(grad_data)
                .zip(input_data)
                .zip(self.state.iter_mut())
                .zip(&self.group_of)
            {
                let param = p
                    .elements_mut()
                    .ok_or_else(|| mismatch("a parameter is not contiguous"))?;
                tensors.push(StepTensor {
                    param,
                    grad: g,
                    inputs,
                    state,
                    hypers: &self.groups[*group],
                });
            }
            let kernels = JitKernels {
                pool: self.pool.as_deref(),
            };
            let fused: Option<matrix::Fused<'_, F>> = match (&self.fusion, self.backend) {
                (Some(plan), Backend::Jit(_) | Backend::JitDefault) => Some((plan, &kernels)),
                _ => None,
            };
            match &self.dims {
                Some(dims) => {
                    matrix::step(&self.rule, self.t + 1, &present, &mut tensors, dims, fused)
                }
                None => interp::step(&self.rule, self.t + 1, &present, &mut tensors),
            }
            .map_err(|e| mismatch(e.0))?;
        } else {
            let program = self.program(&present)?;
            let has_scalar_state = self.rule.states.iter().any(|s| s.kind == StateKind::Scalar);
            let mut scalar_state: Vec<Vec<f64>> = self
                .state
                .iter()
                .filter(|_| has_scalar_state)
                .map(|s| {
                    s.iter()
                        .map(|b| match b {
                            StateBuf::Scalar(x) => *x,
                            StateBuf::Element(_) => f64::NAN,
                        })
                        .collect()
                })
                .collect();
            if !has_scalar_state {
                scalar_state.resize_with(n, Vec::new);
            }
            let mut buffers: Vec<StepBuffers<'_, F>> = Vec::with_capacity(n);
            for (((p, g), inputs), state) in params
                .iter_mut()
                .zip(grad_data)
                .zip(input_data)
                .zip(self.state.iter_mut())
            {
                let param = p
                    .elements_mut()
                    .ok_or_else(|| mismatch("a parameter is not contiguous"))?;
                let states = state
                    .iter_mut()
                    .map(|b| match b {
                        StateBuf::Element(v) => Some(v.as_mut_slice()),
                        StateBuf::Scalar(_) => None,
                    })
                    .collect();
                buffers.push(StepBuffers {
                    param,
                    grad: g,
                    inputs,
                    states,
                });
            }
            let plan = StepPlan {
                t: self.t + 1,
                present: &present,
                group_hypers: &self.groups,
                group_of: &self.group_of,
            };
            match &self.shard {
                None => program.step(&plan, &mut buffers, &mut scalar_state, self.pool.as_deref()),
                Some((numels, comm)) => program.step_shard(
                    &plan,
                    &mut buffers,
                    &mut scalar_state,
                    self.pool.as_deref(),
                    lensopt_codegen::cpu::Shard {
                        numels,
                        exchange: &mut crate::dist::PartialExchange(comm.as_ref()),
                    },
                ),
            }
            .map_err(mismatch)?;
            drop(buffers);
            for (state, scalars) in self.state.iter_mut().zip(scalar_state) {
                for (b, x) in state.iter_mut().zip(scalars) {
                    if let StateBuf::Scalar(v) = b {
                        *v = x;
                    }
                }
            }
        }
        self.t += 1;
        Ok(())
    }

    /// What the model should see of each parameter before the next step:
    /// the rule's `view` (e.g. Nesterov's look-ahead), or the parameters themselves.
    pub fn view(&self, params: &[&dyn TensorRef<F>]) -> Result<Vec<ArrayD<F>>, Error> {
        if params.len() != self.shapes.len() {
            return Err(mismatch(format!(
                "the optimizer holds {} tensors, but the view got {}",
                self.shapes.len(),
                params.len()
            )));
        }
        let mut out = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let data = elements("parameter", i, *p, &self.shapes[i])?;
            let hypers = &self.groups[self.group_of[i]];
            let values = match &self.dims {
                Some(dims) => matrix::view(
                    &self.rule,
                    self.t + 1,
                    hypers,
                    data,
                    &self.state[i],
                    dims[i],
                )
                .map_err(|e| mismatch(e.0))?,
                None => interp::view(&self.rule, self.t + 1, hypers, data, &self.state[i]),
            };
            out.push(
                ArrayD::from_shape_vec(IxDyn(&self.shapes[i]), values)
                    .map_err(|e| mismatch(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// The rule being applied.
    pub fn rule(&self) -> &Arc<Rule> {
        &self.rule
    }

    /// Steps taken so far (the next step is `t() + 1`).
    pub fn t(&self) -> u64 {
        self.t
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// True when the optimizer holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// Number of parameter groups.
    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    /// The value of hyperparameter `name` in group `group`.
    pub fn hyper(&self, group: usize, name: &str) -> Option<HyperValue> {
        let index = self.rule.hyper_index(name)?;
        self.groups.get(group).map(|g| g[index])
    }

    /// Sets a hyperparameter in every group (a schedule, say), for the following steps.
    pub fn set_hyper(&mut self, name: &str, value: impl Into<HyperValue>) -> Result<(), Error> {
        self.set_in(None, name, value.into())
    }

    /// Sets a hyperparameter in one group, for the following steps.
    pub fn set_group_hyper(
        &mut self,
        group: usize,
        name: &str,
        value: impl Into<HyperValue>,
    ) -> Result<(), Error> {
        self.set_in(Some(group), name, value.into())
    }

    /// Sets a hyperparameter, refusing (and changing nothing) a value that
    /// would change the length of the low axis the state was made for.
    fn set_in(&mut self, group: Option<usize>, name: &str, value: HyperValue) -> Result<(), Error> {
        let sets_low_axis = self
            .rule
            .low_axis
            .is_some_and(|h| self.rule.hypers[h as usize].name == name);
        let (Some(dims), true) = (&self.dims, sets_low_axis) else {
            return set_in_groups(&self.rule, &mut self.groups, group, name, value);
        };
        let mut groups = self.groups.clone();
        set_in_groups(&self.rule, &mut groups, group, name, value)?;
        for (i, d) in dims.iter().enumerate() {
            let low = self
                .rule
                .extents(&groups[self.group_of[i]], d.rows, d.cols)
                .low;
            if low != d.low {
                return Err(mismatch(format!(
                    "`{name}` sets the low axis, {} long on tensor {i} when its state was made: the state cannot change shape (make a new stepper)",
                    d.low
                )));
            }
        }
        self.groups = groups;
        Ok(())
    }

    /// Array state `name` of tensor `tensor`: shaped like the parameter
    /// for per-element state, `[rows, 1]` / `[1, cols]` / `[n, n]` for the
    /// per-row, per-column and matrix state of a matrix rule.
    pub fn state(&self, tensor: usize, name: &str) -> Option<ArrayViewD<'_, F>> {
        let s = self.rule.state_index(name)?;
        let kind = self.rule.states[s].kind;
        if kind == StateKind::Scalar {
            return None;
        }
        let buf = self.state.get(tensor)?[s].elements();
        let shape = state_shape(kind, &self.shapes[tensor], self.low_len(tensor));
        ArrayViewD::from_shape(IxDyn(&shape), buf).ok()
    }

    /// Bytes of optimizer state held per parameter element (a factored
    /// second moment holds `rows + cols` values, not `rows × cols`).
    pub fn state_bytes_per_element(&self) -> f64 {
        let elements: usize = self
            .shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum();
        let bytes: usize = self
            .state
            .iter()
            .flatten()
            .map(|b| match b {
                StateBuf::Element(v) => v.len() * std::mem::size_of::<F>(),
                StateBuf::Scalar(_) => std::mem::size_of::<f64>(),
            })
            .sum();
        bytes as f64 / elements.max(1) as f64
    }

    /// Scalar state `name` of tensor `tensor`.
    pub fn scalar_state(&self, tensor: usize, name: &str) -> Option<f64> {
        let s = self.rule.state_index(name)?;
        match self.state.get(tensor)?[s] {
            StateBuf::Scalar(x) => Some(x),
            StateBuf::Element(_) => None,
        }
    }

    /// Every group's hyperparameter values (for checkpoints).
    pub(crate) fn group_values(&self) -> &[Vec<HyperValue>] {
        &self.groups
    }

    /// The group of each tensor (for checkpoints).
    pub(crate) fn group_of(&self) -> &[usize] {
        &self.group_of
    }

    /// Each tensor's state buffers (for checkpoints).
    pub(crate) fn state_buffers(&self) -> &[Vec<StateBuf<F>>] {
        &self.state
    }

    /// Replaces counters, hyperparameters and state with a checkpoint's,
    /// which [`crate::checkpoint`] has checked against this stepper.
    pub(crate) fn restore(
        &mut self,
        t: u64,
        skipped: u64,
        groups: Vec<Vec<HyperValue>>,
        state: Vec<Vec<StateBuf<F>>>,
    ) {
        self.t = t;
        self.skipped = skipped;
        self.last_skipped = false;
        self.groups = groups;
        self.state = state;
        if let Some(dims) = &mut self.dims {
            for (i, d) in dims.iter_mut().enumerate() {
                let values = &self.groups[self.group_of[i]];
                d.low = self.rule.extents(values, d.rows, d.cols).low;
            }
        }
    }

    /// The length of the low axis on tensor `tensor` (0 for a rule without one).
    pub(crate) fn low_len(&self, tensor: usize) -> usize {
        self.dims
            .as_ref()
            .and_then(|d| d.get(tensor))
            .map_or(0, |d| d.low)
    }

    /// The shape of tensor `tensor`.
    pub fn shape(&self, tensor: usize) -> Option<&[usize]> {
        self.shapes.get(tensor).map(Vec::as_slice)
    }
}
