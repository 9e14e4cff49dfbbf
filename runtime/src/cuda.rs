//! Optimizer steps on an NVIDIA GPU (feature `cuda`): the rule's PTX (from
//! [`crate::jit::ptx`]) launched through cudarc, all tensors of a step in one
//! launch per phase.
//!
//! The driver is loaded at run time: without one, [`Device::new`] returns an
//! error (never a panic), so the crate builds and its tests run anywhere.
//! Parameters and state live on the device; a step uploads the gradients'
//! pointers and the per-tensor scalars into buffers allocated when the
//! stepper is made, so a step allocates nothing on the device. Scalars and
//! the combination of reduction partials run on the host in f64, as on the CPU.
//! Unlike the CPU [`crate::Stepper`], a GPU step does not scan its gradients
//! for NaN or infinity ([`crate::NonFinite`]): that would need a device
//! reduction and a synchronisation per step; check the loss on the host.

use crate::circuit::eval::{input_words, param_words, Rows};
use crate::error::Error;
use crate::jit::{self, Key};
use crate::optimizer::{resolve_groups, set_in_groups, Group, Optimizer};
use crate::stepper::Stepper;
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use lensopt_codegen::ptx::{descriptor_words, BLOCK};
use lensopt_ir::interp;
use lensopt_ir::optimize::Mode;
use lensopt_ir::schedule::Schedule;
use lensopt_ir::{HyperValue, Op, Rule};
use std::sync::Arc;

fn device_error(e: impl std::fmt::Display) -> Error {
    Error::Compile(format!("CUDA: {e}"))
}

/// A CUDA device and its stream.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    target: String,
    name: String,
}

impl Device {
    /// Opens device `ordinal`; an error when there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<Self, Error> {
        // SAFETY: only tries to load the driver library; no driver call is made.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(device_error("no CUDA driver library on this machine"));
        }
        let count = CudaContext::device_count().map_err(device_error)?;
        if ordinal >= count.max(0) as usize {
            return Err(device_error(format!(
                "no device {ordinal} (there are {count})"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(device_error)?;
        let (major, minor) = ctx.compute_capability().map_err(device_error)?;
        if major < 8 {
            return Err(device_error(format!(
                "compute capability {major}.{minor}: sm_80 or later is needed"
            )));
        }
        let name = ctx.name().map_err(device_error)?;
        let stream = ctx.default_stream();
        Ok(Device {
            ctx,
            stream,
            target: format!("sm_{major}{minor}"),
            name,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Copies host values to a new device buffer.
    pub fn upload<F: Float>(&self, values: &[F]) -> Result<CudaSlice<F>, Error> {
        self.stream.clone_htod(values).map_err(device_error)
    }

    /// Copies a device buffer back to the host.
    pub fn download<F: Float>(&self, values: &CudaSlice<F>) -> Result<Vec<F>, Error> {
        self.stream.clone_dtoh(values).map_err(device_error)
    }
}

/// The kernels of one specialisation, loaded on the device.
struct Loaded {
    key: Key,
    schedule: Schedule,
    _module: Arc<CudaModule>,
    element: CudaFunction,
    passes: Vec<CudaFunction>,
}

/// An optimizer's state over tensors of `F` on a GPU, in parameter groups
/// with their own hyperparameters as on the CPU.
pub struct GpuStepper<F: Float> {
    device: Arc<Device>,
    rule: Arc<Rule>,
    /// Hyperparameters of each group, and the group of each tensor.
    groups: Vec<Vec<HyperValue>>,
    group_of: Vec<usize>,
    lens: Vec<usize>,
    /// Element states per tensor (`None` for scalar states).
    states: Vec<Vec<Option<CudaSlice<F>>>>,
    scalar_states: Vec<Vec<f64>>,
    table: CudaSlice<u64>,
    slots: CudaSlice<F>,
    partials: CudaSlice<f64>,
    slot_capacity: usize,
    blocks: u32,
    loaded: Option<Loaded>,
    t: u64,
}

impl<F: Float> GpuStepper<F> {
    /// State for `params` (device buffers) under `optimizer`'s rule and hyperparameters.
    pub fn new(
        device: Arc<Device>,
        optimizer: &impl Optimizer,
        params: &[&CudaSlice<F>],
    ) -> Result<Self, Error> {
        Self::with_groups(device, optimizer, params, &[Group::new(0..params.len())])
    }

    /// State for `params` in parameter `groups` (each tensor in exactly one),
    /// each group's hyperparameters `optimizer`'s with the group's overrides.
    pub fn with_groups(
        device: Arc<Device>,
        optimizer: &impl Optimizer,
        params: &[&CudaSlice<F>],
        groups: &[Group],
    ) -> Result<Self, Error> {
        let rule = optimizer.rule();
        let (groups, group_of) = resolve_groups(&rule, &optimizer.hypers(), params.len(), groups)?;
        let lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
        let mut states = Vec::new();
        let mut scalar_states = Vec::new();
        for (k, p) in params.iter().enumerate() {
            let host = device.download(p)?;
            let init = interp::init_state::<F>(&rule, &groups[group_of[k]], &host);
            let mut row = Vec::new();
            let mut scalars = Vec::new();
            for buf in init {
                match buf {
                    interp::StateBuf::Element(v) => {
                        row.push(Some(device.upload(&v)?));
                        scalars.push(f64::NAN);
                    }
                    interp::StateBuf::Scalar(x) => {
                        row.push(None);
                        scalars.push(x);
                    }
                }
            }
            states.push(row);
            scalar_states.push(scalars);
        }
        let n = params.len().max(1);
        let slot_capacity = 64;
        let blocks = 1024u32;
        let stream = &device.stream;
        let table = stream
            .alloc_zeros::<u64>(n * descriptor_words(&rule))
            .map_err(device_error)?;
        let slots = stream
            .alloc_zeros::<F>(n * slot_capacity)
            .map_err(device_error)?;
        let partials = stream
            .alloc_zeros::<f64>(n * blocks as usize * 32)
            .map_err(device_error)?;
        Ok(GpuStepper {
            device,
            rule,
            groups,
            group_of,
            lens,
            states,
            scalar_states,
            table,
            slots,
            partials,
            slot_capacity,
            blocks,
            loaded: None,
            t: 0,
        })
    }

    /// Steps taken.
    pub fn t(&self) -> u64 {
        self.t
    }

    /// The state of tensor `k` copied to the host, in the interpreter's form.
    fn host_state(&self, k: usize) -> Result<Vec<interp::StateBuf<F>>, Error> {
        self.states[k]
            .iter()
            .zip(&self.scalar_states[k])
            .map(|(buf, scalar)| match buf {
                Some(b) => Ok(interp::StateBuf::Element(self.device.download(b)?)),
                None => Ok(interp::StateBuf::Scalar(*scalar)),
            })
            .collect()
    }

    /// Per-element state `name` of tensor `tensor`, copied to the host.
    pub fn state(&self, tensor: usize, name: &str) -> Result<Vec<F>, Error> {
        let s = self
            .rule
            .state_index(name)
            .ok_or_else(|| Error::Mismatch(format!("no state `{name}`")))?;
        match self.states.get(tensor).map(|row| &row[s]) {
            Some(Some(buf)) => self.device.download(buf),
            Some(None) => Err(Error::Mismatch(format!(
                "state `{name}` is one value per tensor"
            ))),
            None => Err(Error::Mismatch(format!("no tensor {tensor}"))),
        }
    }

    /// What the model sees of the parameters (the lens's forward part, the
    /// rule's `view`), computed on the host from copies, as
    /// [`crate::Stepper::view`] does.
    pub fn view(&self, params: &[&CudaSlice<F>]) -> Result<Vec<Vec<F>>, Error> {
        if params.len() != self.lens.len() {
            return Err(Error::Mismatch(format!(
                "the stepper holds {} tensors, but the view got {}",
                self.lens.len(),
                params.len()
            )));
        }
        let mut out = Vec::with_capacity(params.len());
        for (k, p) in params.iter().enumerate() {
            if p.len() != self.lens[k] {
                return Err(Error::Mismatch(format!(
                    "parameter {k} has {} elements, not {}",
                    p.len(),
                    self.lens[k]
                )));
            }
            let data = self.device.download(p)?;
            let state = self.host_state(k)?;
            let hypers = &self.groups[self.group_of[k]];
            out.push(interp::view(&self.rule, self.t + 1, hypers, &data, &state));
        }
        Ok(out)
    }

    /// A host [`Stepper`] holding copies of this stepper's groups, state and
    /// step counter over `params` (copied too), for checkpoints.
    fn host_stepper(
        &self,
        params: &[&CudaSlice<F>],
    ) -> Result<(Stepper<F>, Vec<ndarray::Array1<F>>), Error> {
        if params.len() != self.lens.len()
            || params.iter().zip(&self.lens).any(|(p, n)| p.len() != *n)
        {
            return Err(Error::Mismatch(
                "one parameter per tensor of the stepper, of its length, is needed".into(),
            ));
        }
        let hosts: Vec<ndarray::Array1<F>> = params
            .iter()
            .map(|p| self.device.download(p).map(ndarray::Array1::from))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&dyn TensorRef<F>> = hosts.iter().map(|h| h as &dyn TensorRef<F>).collect();
        let groups: Vec<Group> = (0..self.groups.len())
            .map(|g| Group::new((0..self.lens.len()).filter(|&k| self.group_of[k] == g)))
            .collect();
        let base = self.groups.first().cloned().unwrap_or_default();
        let mut stepper = Stepper::new(self.rule.clone(), base, &refs, &groups)?;
        let states = (0..self.lens.len())
            .map(|k| self.host_state(k))
            .collect::<Result<Vec<_>, _>>()?;
        stepper.restore(self.t, 0, self.groups.clone(), states);
        Ok((stepper, hosts))
    }

    /// Saves the parameters (named by `names`), every group's
    /// hyperparameters, the state and the step counter as a checkpoint
    /// ([`crate::checkpoint::save`]'s format: a GPU checkpoint loads on the
    /// CPU and back).
    pub fn save(
        &self,
        path: &std::path::Path,
        names: &[&str],
        params: &[&CudaSlice<F>],
        user: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Error> {
        if names.len() != params.len() {
            return Err(Error::Mismatch("one name per parameter is needed".into()));
        }
        let (stepper, hosts) = self.host_stepper(params)?;
        let named: Vec<(&str, &dyn TensorRef<F>)> = names
            .iter()
            .zip(&hosts)
            .map(|(n, h)| (*n, h as &dyn TensorRef<F>))
            .collect();
        crate::checkpoint::save(path, &named, &stepper, user)
    }

    /// Restores a checkpoint into `params` (on the device) and this
    /// stepper, checked first as [`crate::checkpoint::load`] checks: a
    /// refused checkpoint changes nothing. Returns the caller's entries.
    pub fn load(
        &mut self,
        path: &std::path::Path,
        names: &[&str],
        params: &mut [&mut CudaSlice<F>],
    ) -> Result<std::collections::BTreeMap<String, String>, Error> {
        if names.len() != params.len() {
            return Err(Error::Mismatch("one name per parameter is needed".into()));
        }
        let (mut stepper, mut hosts) = {
            let views: Vec<&CudaSlice<F>> = params.iter().map(|p| &**p).collect();
            self.host_stepper(&views)?
        };
        let user = {
            let mut named: Vec<(&str, &mut dyn TensorMut<F>)> = names
                .iter()
                .zip(hosts.iter_mut())
                .map(|(n, h)| (*n, h as &mut dyn TensorMut<F>))
                .collect();
            crate::checkpoint::load(path, &mut named, &mut stepper)?
        };
        // Checked and decoded: now copy everything back to the device.
        let stream = self.device.stream.clone();
        for (p, h) in params.iter_mut().zip(&hosts) {
            let data = h
                .as_slice()
                .ok_or_else(|| Error::Mismatch("non-contiguous".into()))?;
            stream.memcpy_htod(data, &mut **p).map_err(device_error)?;
        }
        for (k, row) in stepper.state_buffers().iter().enumerate() {
            for (s, buf) in row.iter().enumerate() {
                match (buf, &mut self.states[k][s]) {
                    (interp::StateBuf::Element(v), Some(device)) => {
                        stream.memcpy_htod(v, device).map_err(device_error)?
                    }
                    (interp::StateBuf::Scalar(x), None) => self.scalar_states[k][s] = *x,
                    _ => return Err(Error::Mismatch("state kinds differ".into())),
                }
            }
        }
        self.groups = stepper.group_values().to_vec();
        self.t = stepper.t();
        Ok(user)
    }

    /// The value of hyperparameter `name` in group `group`.
    pub fn hyper(&self, group: usize, name: &str) -> Option<HyperValue> {
        let index = self.rule.hyper_index(name)?;
        self.groups.get(group).map(|g| g[index])
    }

    /// Sets a hyperparameter in every group, for the following steps.
    pub fn set_hyper(&mut self, name: &str, value: impl Into<HyperValue>) -> Result<(), Error> {
        set_in_groups(&self.rule, &mut self.groups, None, name, value.into())
    }

    /// Sets a hyperparameter in one group, for the following steps.
    pub fn set_group_hyper(
        &mut self,
        group: usize,
        name: &str,
        value: impl Into<HyperValue>,
    ) -> Result<(), Error> {
        set_in_groups(
            &self.rule,
            &mut self.groups,
            Some(group),
            name,
            value.into(),
        )
    }

    fn load_kernels(&mut self, present: &[bool]) -> Result<(), Error> {
        let key = Key::for_step(&self.groups, present, Mode::Fast);
        if self.loaded.as_ref().is_some_and(|l| l.key == key) {
            return Ok(());
        }
        // One schedule for the kernels and for the host's scalars and slots.
        let schedule = jit::schedule(&self.rule, &key);
        let module = lensopt_codegen::ptx::emit(&schedule, F::PRECISION, &self.device.target)
            .map_err(|e| Error::Compile(e.to_string()))?;
        if schedule.slots.len() > self.slot_capacity {
            return Err(Error::Compile(format!(
                "more than {} scalar slots",
                self.slot_capacity
            )));
        }
        let cuda_module = self
            .device
            .ctx
            .load_module(Ptx::from_src(module.text))
            .map_err(device_error)?;
        let element = cuda_module.load_function("element").map_err(device_error)?;
        let passes = (0..schedule.passes.len())
            .map(|k| {
                cuda_module
                    .load_function(&format!("reduce{k}"))
                    .map_err(device_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.loaded = Some(Loaded {
            key,
            schedule,
            _module: cuda_module,
            element,
            passes,
        });
        Ok(())
    }

    /// One step: `params` are updated in place on the device from `grads`.
    pub fn step(
        &mut self,
        params: &mut [&mut CudaSlice<F>],
        grads: &[&CudaSlice<F>],
    ) -> Result<(), Error> {
        let absent = vec![None; self.rule.inputs.len()];
        self.step_with(params, grads, &absent)
    }

    /// One step with extra inputs: per input of the rule, one device tensor
    /// per parameter, or `None` where an optional input is absent.
    pub fn step_with(
        &mut self,
        params: &mut [&mut CudaSlice<F>],
        grads: &[&CudaSlice<F>],
        inputs: &[Option<Vec<&CudaSlice<F>>>],
    ) -> Result<(), Error> {
        if params.len() != self.lens.len() || grads.len() != self.lens.len() {
            return Err(Error::Mismatch(format!(
                "the stepper holds {} tensors, got {} parameters and {} gradients",
                self.lens.len(),
                params.len(),
                grads.len()
            )));
        }
        for (k, (p, g)) in params.iter().zip(grads).enumerate() {
            if p.len() != self.lens[k] || g.len() != self.lens[k] {
                return Err(Error::Mismatch(format!(
                    "tensor {k}: lengths differ from the parameter's"
                )));
            }
        }
        if inputs.len() != self.rule.inputs.len() {
            return Err(Error::Mismatch(format!(
                "the rule takes {} extra inputs, got {}",
                self.rule.inputs.len(),
                inputs.len()
            )));
        }
        for (decl, given) in self.rule.inputs.iter().zip(inputs) {
            match given {
                None if !decl.optional => {
                    return Err(Error::Mismatch(format!(
                        "input `{}` is required",
                        decl.name
                    )))
                }
                Some(ts)
                    if ts.len() != self.lens.len()
                        || ts.iter().zip(&self.lens).any(|(t, n)| t.len() != *n) =>
                {
                    return Err(Error::Mismatch(format!(
                        "input `{}` needs one tensor per parameter, of its length",
                        decl.name
                    )))
                }
                _ => {}
            }
        }
        let present: Vec<bool> = inputs.iter().map(Option::is_some).collect();
        self.load_kernels(&present)?;
        let loaded = self.loaded.as_ref().expect("loaded above");
        let rule = &loaded.schedule.rule;
        let stream = self.device.stream.clone();
        let tensors = self.lens.len();
        let t = self.t + 1;
        // The descriptor table: n, slots pointer, then p, g and the states' pointers.
        let words = descriptor_words(rule);
        let mut table = vec![0u64; tensors * words];
        {
            let (slots_base, _s) = self.slots.device_ptr(&stream);
            for k in 0..tensors {
                let row = &mut table[k * words..(k + 1) * words];
                row[0] = self.lens[k] as u64;
                row[1] = slots_base + (k * self.slot_capacity * F::BYTES) as u64;
                row[2] = params[k].device_ptr(&stream).0;
                row[3] = grads[k].device_ptr(&stream).0;
                for (i, given) in inputs.iter().enumerate() {
                    if let Some(ts) = given {
                        row[4 + i] = ts[k].device_ptr(&stream).0;
                    }
                }
                for (s, state) in self.states[k].iter().enumerate() {
                    if let Some(buf) = state {
                        row[4 + rule.inputs.len() + s] = buf.device_ptr(&stream).0;
                    }
                }
            }
        }
        stream
            .memcpy_htod(&table, &mut self.table)
            .map_err(device_error)?;
        let max_n = self.lens.iter().copied().max().unwrap_or(0);
        let blocks = (max_n.div_ceil(BLOCK) as u32).clamp(1, self.blocks);
        let cfg = LaunchConfig {
            grid_dim: (blocks, tensors as u32, 1),
            block_dim: (BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let facts = lensopt_codegen::host::StepFacts {
            t,
            present: &present,
            group_hypers: &self.groups,
            group_of: &self.group_of,
            numels: &self.lens,
        };
        let mut runner = DevicePasses {
            loaded,
            stream: &stream,
            table: &self.table,
            slots: &mut self.slots,
            partials: &mut self.partials,
            cfg,
            blocks: blocks as usize,
            tensors,
            slot_capacity: self.slot_capacity,
        };
        // Device failures come back as the driver's strings ("CUDA: ..."),
        // reported as the compile-or-launch errors they are.
        lensopt_codegen::host::drive(
            &loaded.schedule,
            &facts,
            &mut self.scalar_states,
            &mut runner,
        )
        .map_err(Error::Compile)?;
        self.t = t;
        Ok(())
    }
}

/// The GPU stepper's passes as the phase driver's
/// [`lensopt_codegen::host::PassRunner`]: each pass is one launch over every
/// tensor, its scalar slots uploaded first, and a reduction's per-block
/// partials copied back and combined per tensor in block order.
struct DevicePasses<'a, F> {
    loaded: &'a Loaded,
    stream: &'a Arc<CudaStream>,
    table: &'a CudaSlice<u64>,
    slots: &'a mut CudaSlice<F>,
    partials: &'a mut CudaSlice<f64>,
    cfg: LaunchConfig,
    blocks: usize,
    tensors: usize,
    slot_capacity: usize,
}

impl<F: Float> DevicePasses<'_, F> {
    /// Uploads each tensor's slot values (rounded to the element type):
    /// tensor `k` reads `values[value_of(k)]`.
    fn upload_slots(
        &mut self,
        values: &[&[f64]],
        value_of: impl Fn(usize) -> usize,
    ) -> Result<(), String> {
        let mut host = vec![F::default(); self.tensors * self.slot_capacity];
        for k in 0..self.tensors {
            let v = values[value_of(k)];
            for (j, id) in self.loaded.schedule.slots.iter().enumerate() {
                host[k * self.slot_capacity + j] = F::from_f64(v[id.index()]);
            }
        }
        self.stream
            .memcpy_htod(&host, self.slots)
            .map_err(|e| device_error(e).to_string())
    }
}

impl<F: Float> lensopt_codegen::host::PassRunner for DevicePasses<'_, F> {
    fn reduce(&mut self, pass: usize, values: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        let views: Vec<&[f64]> = values.iter().map(Vec::as_slice).collect();
        self.upload_slots(&views, |k| k)?;
        let reductions = &self.loaded.schedule.passes[pass];
        let rule = &self.loaded.schedule.rule;
        let tensors_arg = self.tensors as u32;
        let mut launch = self.stream.launch_builder(&self.loaded.passes[pass]);
        launch
            .arg(self.table)
            .arg(&tensors_arg)
            .arg(&mut *self.partials);
        // SAFETY: the kernel reads the descriptor table just uploaded
        // (tensors rows, every pointer a live device buffer of the row's
        // length or unused), and writes blocks * tensors * pass.len() f64
        // partials, within the buffer allocated for 1,024 blocks x 32.
        unsafe { launch.launch(self.cfg) }.map_err(|e| device_error(e).to_string())?;
        // Only the partials this launch wrote: (tensor, block, reduction).
        let used = self.tensors * self.blocks * reductions.len();
        let mut host = vec![0f64; used];
        self.stream
            .memcpy_dtoh(&self.partials.slice(..used), &mut host)
            .map_err(|e| device_error(e).to_string())?;
        let mut per_tensor = vec![vec![0.0; reductions.len()]; self.tensors];
        for (r, id) in reductions.iter().enumerate() {
            let Op::Reduce(op, _, _) = rule.node(*id).op else {
                continue;
            };
            for (k, out) in per_tensor.iter_mut().enumerate() {
                out[r] = (0..self.blocks).fold(0.0, |acc, b| {
                    lensopt_codegen::host::combine_partials(
                        op,
                        acc,
                        host[(k * self.blocks + b) * reductions.len() + r],
                    )
                });
            }
        }
        Ok(per_tensor)
    }

    fn element(&mut self, values: &[&[f64]], value_of: &[usize]) -> Result<(), String> {
        self.upload_slots(values, |k| value_of[k])?;
        let tensors_arg = self.tensors as u32;
        let mut launch = self.stream.launch_builder(&self.loaded.element);
        launch.arg(self.table).arg(&tensors_arg);
        // SAFETY: as for the reductions; the element kernel writes p and the
        // states through the table's pointers, each within its row's length.
        unsafe { launch.launch(self.cfg) }.map_err(|e| device_error(e).to_string())?;
        self.stream
            .synchronize()
            .map_err(|e| device_error(e).to_string())
    }
}

/// Device-to-device copy bandwidth: a grid-stride f32 copy kernel of `n`
/// elements, timed with the stream synchronised (seconds per copy, best of `reps`).
pub fn copy_seconds(device: &Device, n: usize, reps: usize) -> Result<f64, Error> {
    const COPY: &str = ".version 7.8\n.target sm_80\n.address_size 64\n\
.visible .entry copy(.param .u64 src, .param .u64 dst, .param .u64 n)\n{\n\
\t.reg .pred %p<2>;\n\t.reg .u32 %r<8>;\n\t.reg .u64 %rd<12>;\n\t.reg .f32 %f<2>;\n\
\tld.param.u64 %rd1, [src];\n\tld.param.u64 %rd2, [dst];\n\tld.param.u64 %rd3, [n];\n\
\tcvta.to.global.u64 %rd1, %rd1;\n\tcvta.to.global.u64 %rd2, %rd2;\n\
\tmov.u32 %r1, %ctaid.x;\n\tmov.u32 %r2, %ntid.x;\n\tmov.u32 %r3, %tid.x;\n\
\tmul.wide.u32 %rd4, %r1, %r2;\n\tcvt.u64.u32 %rd5, %r3;\n\tadd.u64 %rd4, %rd4, %rd5;\n\
\tmov.u32 %r4, %nctaid.x;\n\tmul.wide.u32 %rd6, %r4, %r2;\n\
LOOP:\n\tsetp.ge.u64 %p1, %rd4, %rd3;\n\t@%p1 bra DONE;\n\
\tmul.lo.u64 %rd7, %rd4, 4;\n\tadd.u64 %rd8, %rd1, %rd7;\n\tadd.u64 %rd9, %rd2, %rd7;\n\
\tld.global.f32 %f1, [%rd8];\n\tst.global.f32 [%rd9], %f1;\n\
\tadd.u64 %rd4, %rd4, %rd6;\n\tbra LOOP;\nDONE:\n\tret;\n}\n";
    let module = device
        .ctx
        .load_module(Ptx::from_src(COPY))
        .map_err(device_error)?;
    let func = module.load_function("copy").map_err(device_error)?;
    let stream = &device.stream;
    let src = stream.alloc_zeros::<f32>(n).map_err(device_error)?;
    let mut dst = stream.alloc_zeros::<f32>(n).map_err(device_error)?;
    let n64 = n as u64;
    let cfg = LaunchConfig {
        grid_dim: ((n.div_ceil(BLOCK) as u32).clamp(1, 4096), 1, 1),
        block_dim: (BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(2) {
        let started = std::time::Instant::now();
        let mut launch = stream.launch_builder(&func);
        launch.arg(&src).arg(&mut dst).arg(&n64);
        // SAFETY: both buffers hold `n` f32 values and the kernel touches indices below `n`.
        unsafe { launch.launch(cfg) }.map_err(device_error)?;
        stream.synchronize().map_err(device_error)?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// A boolean circuit's bit-sliced forward and reverse passes on the GPU.
pub struct GpuCircuit {
    device: Arc<Device>,
    circuit: crate::circuit::Circuit,
    _module: Arc<CudaModule>,
    forward: CudaFunction,
    reverse: CudaFunction,
}

impl GpuCircuit {
    /// Loads `circuit`'s kernels on `device`.
    pub fn new(device: Arc<Device>, circuit: &crate::circuit::Circuit) -> Result<Self, Error> {
        let module = lensopt_codegen::ptx::emit_circuit(circuit, &device.target);
        let loaded = device
            .ctx
            .load_module(Ptx::from_src(module.text))
            .map_err(device_error)?;
        let forward = loaded
            .load_function("circuit_forward")
            .map_err(device_error)?;
        let reverse = loaded
            .load_function("circuit_reverse")
            .map_err(device_error)?;
        Ok(GpuCircuit {
            device,
            circuit: circuit.clone(),
            _module: loaded,
            forward,
            reverse,
        })
    }

    fn rows(rows: &[Vec<u64>], count: usize, words: usize) -> Result<Vec<u64>, Error> {
        if rows.len() != count || rows.iter().any(|r| r.len() != words) {
            return Err(Error::Mismatch(format!(
                "{count} rows of {words} words are needed"
            )));
        }
        Ok(rows.concat())
    }

    fn config(words: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (words.div_ceil(BLOCK).max(1) as u32, 1, 1),
            block_dim: (BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// The outputs for `inputs` (one row of words per input bit).
    pub fn forward(&self, params: &[bool], inputs: &[Vec<u64>]) -> Result<Vec<Vec<u64>>, Error> {
        let c = &self.circuit;
        let words = input_words(c, params, inputs)?;
        let x = inputs.concat();
        let p = param_words(params);
        let s = &self.device.stream;
        let dx = s.clone_htod(&x).map_err(device_error)?;
        let dp = s.clone_htod(&p).map_err(device_error)?;
        let mut out = s
            .alloc_zeros::<u64>(c.outputs().len() * words)
            .map_err(device_error)?;
        let w = words as u64;
        let mut launch = s.launch_builder(&self.forward);
        launch.arg(&dx).arg(&dp).arg(&mut out).arg(&w);
        // SAFETY: the buffers hold inputs x words, params and outputs x words
        // u64 values; each thread touches its own word of each row.
        unsafe { launch.launch(Self::config(words)) }.map_err(device_error)?;
        let host = s.clone_dtoh(&out).map_err(device_error)?;
        Ok(host.chunks(words.max(1)).map(<[u64]>::to_vec).collect())
    }

    /// `R[f]` at `(params, inputs)` for output changes `dy`: `(d params, d inputs)`.
    pub fn reverse(
        &self,
        params: &[bool],
        inputs: &[Vec<u64>],
        dy: &[Vec<u64>],
    ) -> Result<(Rows, Rows), Error> {
        let c = &self.circuit;
        let words = input_words(c, params, inputs)?;
        let x = inputs.concat();
        let d = Self::rows(dy, c.outputs().len(), words)?;
        let p = param_words(params);
        let s = &self.device.stream;
        let (dx, dd, dp) = (
            s.clone_htod(&x).map_err(device_error)?,
            s.clone_htod(&d).map_err(device_error)?,
            s.clone_htod(&p).map_err(device_error)?,
        );
        let mut gp = s
            .alloc_zeros::<u64>(c.params().max(1) * words.max(1))
            .map_err(device_error)?;
        let mut gx = s
            .alloc_zeros::<u64>(c.inputs().max(1) * words.max(1))
            .map_err(device_error)?;
        let w = words as u64;
        let mut launch = s.launch_builder(&self.reverse);
        launch
            .arg(&dx)
            .arg(&dp)
            .arg(&dd)
            .arg(&mut gp)
            .arg(&mut gx)
            .arg(&w);
        // SAFETY: as for `forward`, with dparams and dinputs sized params x words and inputs x words.
        unsafe { launch.launch(Self::config(words)) }.map_err(device_error)?;
        let (hp, hx) = (
            s.clone_dtoh(&gp).map_err(device_error)?,
            s.clone_dtoh(&gx).map_err(device_error)?,
        );
        let split = |v: Vec<u64>, rows: usize| {
            (0..rows)
                .map(|r| v[r * words..(r + 1) * words].to_vec())
                .collect()
        };
        Ok((split(hp, c.params()), split(hx, c.inputs())))
    }
}
