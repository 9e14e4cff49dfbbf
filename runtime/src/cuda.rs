//! Optimizer steps on an NVIDIA GPU (feature `cuda`): the rule's PTX (from
//! [`crate::jit::ptx`]) launched through cudarc, all tensors of a step in one
//! launch per phase.
//!
//! The driver is loaded at run time: without one, [`Device::new`] returns an
//! error (never a panic), so the crate builds and its tests run anywhere.
//! Modules are emitted for sm_80 under PTX ISA 7.0, which the driver
//! compiles forward for any later GPU (Hopper, Blackwell and beyond); a
//! module it refuses is reported with the driver's compile log.
//!
//! Parameters and state live on the device. A launch has one block per
//! chunk of each tensor ([`LaunchMap`], uploaded once: the tensors' lengths
//! are fixed), so small tensors beside a large one cost one block each. The
//! descriptor table is uploaded only when a buffer changed; a step uploads
//! its per-tensor scalars from page-locked memory without waiting, and a rule with reductions copies the per-block
//! partials back and combines them on the host in f64, as on the CPU. The
//! element pass is queued without waiting: steps follow each other on the
//! stream, and a download (or [`Device::synchronize`]) waits for them; a
//! launch failure surfaces at the next call that waits. Every
//! specialisation used (hyperparameters compiled in, optional inputs
//! present or absent) stays loaded, so inputs that come and go cost no
//! recompilation. A state no loaded kernel touches stays on the host.
//!
//! Non-finite gradients and inputs follow the same [`NonFinite`] policy as
//! on the CPU: before anything changes, a scan kernel
//! ([`crate::device_scan_rule`], one reduction pass over the same table)
//! counts the non-finite elements of each tensor; a step with any is refused
//! (naming the tensor and the first element, read back) or skipped.
//! `NonFinite::Unchecked` saves the scan's pass and its wait.

use crate::circuit::eval::{input_words, param_words, Rows};
use crate::error::Error;
use crate::jit::{self, Key};
use crate::optimizer::{resolve_groups, set_in_groups, Group, Optimizer};
use crate::schedules::{self, Scheduled};
use crate::stepper::Stepper;
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use crate::NonFinite;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use lensopt_codegen::ptx::{descriptor_words, LaunchMap, BLOCK, DEVICE_TARGET};
use lensopt_ir::interp;
use lensopt_ir::optimize::Mode;
use lensopt_ir::schedule::buffer_count;
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
    capability: (i32, i32),
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
            capability: (major, minor),
            name,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's compute capability (major, minor). Kernels are emitted
    /// for sm_80 whatever it is: the driver compiles them forward.
    pub fn capability(&self) -> (i32, i32) {
        self.capability
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
    /// Which kernel buffers (by [`lensopt_ir::schedule::buffer_of`] index)
    /// any kernel reads or writes.
    uses: Vec<bool>,
    _module: Arc<CudaModule>,
    element: CudaFunction,
    passes: Vec<CudaFunction>,
}

/// The most specialisations a stepper keeps loaded (the oldest goes first).
const MAX_LOADED: usize = 16;

/// A tensor's element state: on the host until a loaded kernel uses it, then
/// on the device (a state that no specialisation touches costs no device
/// memory, e.g. Adam's `vmax` while `amsgrad` is off).
enum ElementState<F> {
    Host(Vec<F>),
    Device(CudaSlice<F>),
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
    states: Vec<Vec<Option<ElementState<F>>>>,
    scalar_states: Vec<Vec<f64>>,
    /// What every launch reads and writes besides the tensors.
    buffers: LaunchBuffers<F>,
    /// The descriptor table last uploaded (its device copy is in `buffers`).
    table_host: Vec<u64>,
    /// Every specialisation used so far (at most [`MAX_LOADED`]).
    loaded: Vec<Loaded>,
    /// Scheduled hyperparameters, as on the CPU.
    schedules: Scheduled,
    /// The non-finite policy, the scan kernels per presence of the inputs,
    /// and the steps skipped.
    non_finite: NonFinite,
    scans: Vec<Loaded>,
    skipped: u64,
    last_skipped: bool,
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
        if rule.is_matrix() {
            return Err(Error::Compile(format!(
                "`{}` is a matrix rule: it runs on the matrix evaluator (CPU); no GPU kernels are generated for it yet",
                rule.name
            )));
        }
        let (groups, group_of) = resolve_groups(&rule, &optimizer.hypers(), params.len(), groups)?;
        let lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
        let launch = LaunchMap::new(&lens).map_err(|e| Error::Mismatch(e.to_string()))?;
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
                        row.push(Some(ElementState::Host(v)));
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
        let stream = &device.stream;
        let map = match launch.blocks() {
            0 => None,
            _ => Some(stream.clone_htod(launch.entries()).map_err(device_error)?),
        };
        let table = stream
            .alloc_zeros::<u64>(n * descriptor_words(&rule))
            .map_err(device_error)?;
        let slots = stream
            .alloc_zeros::<F>(n * slot_capacity)
            .map_err(device_error)?;
        let staging = Staging::new(&device, n * slot_capacity)?;
        Ok(GpuStepper {
            device,
            rule,
            groups,
            group_of,
            lens,
            states,
            scalar_states,
            buffers: LaunchBuffers {
                launch,
                map,
                table,
                slots,
                staging,
                partials: None,
                slot_capacity,
            },
            table_host: Vec::new(),
            loaded: Vec::new(),
            schedules: Scheduled::default(),
            non_finite: NonFinite::default(),
            scans: Vec::new(),
            skipped: 0,
            last_skipped: false,
            t: 0,
        })
    }

    /// Chooses what a step does with non-finite gradients or inputs, as on
    /// the CPU ([`NonFinite::Refuse`] by default): the scan is one more
    /// reduction launch over the gradients and inputs, and a wait for its
    /// per-block counts, before anything changes.
    pub fn set_non_finite(&mut self, policy: NonFinite) {
        self.non_finite = policy;
    }

    /// The non-finite policy in use.
    pub fn non_finite(&self) -> NonFinite {
        self.non_finite
    }

    /// Steps skipped under [`NonFinite::Skip`].
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Whether the last step was skipped.
    pub fn last_skipped(&self) -> bool {
        self.last_skipped
    }

    /// Specialisations compiled and loaded so far (each kept for reuse: an
    /// optional input that comes and goes costs no recompilation).
    pub fn specialisations(&self) -> usize {
        self.loaded.len()
    }

    /// Blocks per launch: one per [`lensopt_codegen::ptx::CHUNK`] elements of each tensor.
    pub fn blocks(&self) -> usize {
        self.buffers.launch.blocks()
    }

    /// Steps taken.
    pub fn t(&self) -> u64 {
        self.t
    }

    /// An element state's values on the host.
    fn download_state(&self, state: &ElementState<F>) -> Result<Vec<F>, Error> {
        match state {
            ElementState::Host(v) => Ok(v.clone()),
            ElementState::Device(b) => self.device.download(b),
        }
    }

    /// The state of tensor `k` copied to the host, in the interpreter's form.
    fn host_state(&self, k: usize) -> Result<Vec<interp::StateBuf<F>>, Error> {
        self.states[k]
            .iter()
            .zip(&self.scalar_states[k])
            .map(|(buf, scalar)| match buf {
                Some(b) => Ok(interp::StateBuf::Element(self.download_state(b)?)),
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
            Some(Some(buf)) => self.download_state(buf),
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
                    (interp::StateBuf::Element(v), Some(ElementState::Device(device))) => {
                        stream.memcpy_htod(v, device).map_err(device_error)?
                    }
                    (interp::StateBuf::Element(v), Some(ElementState::Host(host))) => {
                        host.clone_from(v)
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

    /// Schedules hyperparameter `name` as [`crate::Stepper::set_schedule`]
    /// does: before each step `t`, every group's value is its value now
    /// times `schedule.factor(t)`, without recompiling.
    pub fn set_schedule(&mut self, name: &str, schedule: schedules::Schedule) -> Result<(), Error> {
        self.schedules.set(&self.rule, &self.groups, name, schedule)
    }

    /// Stops scheduling `name`; it keeps its last value.
    pub fn clear_schedule(&mut self, name: &str) {
        self.schedules.clear(&self.rule, name);
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

    /// The index in `loaded` of the kernels for `present` and the current
    /// hyperparameters, compiling and loading them if they are new. A
    /// module the driver refuses is reported with the driver's log.
    fn load_kernels(&mut self, present: &[bool]) -> Result<usize, Error> {
        let key = Key::for_step(&self.groups, present, Mode::Fast);
        if let Some(i) = self.loaded.iter().position(|l| l.key == key) {
            return Ok(i);
        }
        // One schedule for the kernels and for the host's scalars and slots.
        let schedule = jit::schedule(&self.rule, &key);
        if schedule.slots.len() > self.buffers.slot_capacity {
            return Err(Error::Compile(format!(
                "more than {} scalar slots",
                self.buffers.slot_capacity
            )));
        }
        let module = lensopt_codegen::ptx::emit(&schedule, F::PRECISION, DEVICE_TARGET)
            .map_err(|e| Error::Compile(e.to_string()))?;
        let cuda_module = load_module(&self.device, &module.text)?;
        let element = cuda_module.load_function("element").map_err(device_error)?;
        let passes = (0..schedule.passes.len())
            .map(|k| {
                cuda_module
                    .load_function(&format!("reduce{k}"))
                    .map_err(device_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.buffers.fit_partials(&self.device, &schedule)?;
        let mut uses = vec![false; buffer_count(&schedule.rule)];
        for b in schedule
            .buffers_read()
            .into_iter()
            .chain(schedule.buffers_written())
        {
            uses[b] = true;
        }
        if self.loaded.len() == MAX_LOADED {
            self.loaded.remove(0);
        }
        self.loaded.push(Loaded {
            key,
            schedule,
            uses,
            _module: cuda_module,
            element,
            passes,
        });
        Ok(self.loaded.len() - 1)
    }

    /// The index in `scans` of the non-finite scan for `present`, loading it
    /// if new ([`crate::device_scan_rule`]: one reduction pass over the same
    /// descriptor table as the rule's kernels).
    fn load_scan(&mut self, present: &[bool]) -> Result<usize, Error> {
        let key = Key::for_step(&[Vec::new()], present, Mode::Exact);
        if let Some(i) = self.scans.iter().position(|l| l.key == key) {
            return Ok(i);
        }
        let rule = crate::device_scan_rule(&self.rule).map_err(Error::Compile)?;
        let schedule = jit::schedule(&rule, &key);
        let module = lensopt_codegen::ptx::emit(&schedule, F::PRECISION, DEVICE_TARGET)
            .map_err(|e| Error::Compile(e.to_string()))?;
        let cuda_module = load_module(&self.device, &module.text)?;
        let element = cuda_module.load_function("element").map_err(device_error)?;
        let passes = vec![cuda_module.load_function("reduce0").map_err(device_error)?];
        self.buffers.fit_partials(&self.device, &schedule)?;
        let uses = vec![false; buffer_count(&schedule.rule)];
        self.scans.push(Loaded {
            key,
            schedule,
            uses,
            _module: cuda_module,
            element,
            passes,
        });
        Ok(self.scans.len() - 1)
    }

    /// Where the first non-finite value of tensor `k` is, read back from
    /// the device (only after the scan counted one there).
    fn locate_non_finite(
        &self,
        k: usize,
        grads: &[&CudaSlice<F>],
        inputs: &[Option<Vec<&CudaSlice<F>>>],
    ) -> Result<Option<(String, usize, f64)>, Error> {
        let g = self.device.download(grads[k])?;
        if let Some((index, value)) = crate::non_finite::first_non_finite(&g) {
            return Ok(Some((format!("gradient {k}"), index, value)));
        }
        for (decl, given) in self.rule.inputs.iter().zip(inputs) {
            if let Some(ts) = given {
                let x = self.device.download(ts[k])?;
                if let Some((index, value)) = crate::non_finite::first_non_finite(&x) {
                    return Ok(Some((format!("input `{}` {k}", decl.name), index, value)));
                }
            }
        }
        Ok(None)
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
        self.schedules.apply(&mut self.groups, self.t + 1);
        let index = self.load_kernels(&present)?;
        let scan = if self.non_finite != NonFinite::Unchecked && self.buffers.launch.blocks() > 0 {
            Some(self.load_scan(&present)?)
        } else {
            None
        };
        let stream = self.device.stream.clone();
        // A state this specialisation's kernels use moves to the device, once.
        let first_state = 2 + self.rule.inputs.len();
        for row in &mut self.states {
            for (s, state) in row.iter_mut().enumerate() {
                if let Some(ElementState::Host(values)) = state {
                    // (An empty tensor has no blocks: its states stay here.)
                    if self.loaded[index].uses[first_state + s] && !values.is_empty() {
                        *state = Some(ElementState::Device(self.device.upload(values)?));
                    }
                }
            }
        }
        let loaded = &self.loaded[index];
        let rule = &loaded.schedule.rule;
        let tensors = self.lens.len();
        let t = self.t + 1;
        // The descriptor table: n, slots pointer, then p, g, the inputs' and
        // the states' pointers (0 for a buffer no kernel touches). Written
        // buffers are taken with write intent, read ones with read intent;
        // the guards record this step's work on them when dropped, after
        // the launches.
        let words = descriptor_words(rule);
        let mut table = vec![0u64; tensors * words];
        let mut guards = Vec::new();
        let (slots_base, _) = self.buffers.slots.device_ptr(&stream);
        let slot_capacity = self.buffers.slot_capacity;
        for (k, p) in params.iter_mut().enumerate() {
            let row = &mut table[k * words..(k + 1) * words];
            row[0] = self.lens[k] as u64;
            row[1] = slots_base + (k * slot_capacity * F::BYTES) as u64;
            let (pointer, guard) = p.device_ptr_mut(&stream);
            row[2] = pointer;
            guards.push(guard);
            let (pointer, guard) = grads[k].device_ptr(&stream);
            row[3] = pointer;
            guards.push(guard);
            for (i, given) in inputs.iter().enumerate() {
                if let Some(ts) = given {
                    let (pointer, guard) = ts[k].device_ptr(&stream);
                    row[4 + i] = pointer;
                    guards.push(guard);
                }
            }
        }
        for (k, row_states) in self.states.iter_mut().enumerate() {
            for (s, state) in row_states.iter_mut().enumerate() {
                if let Some(ElementState::Device(buf)) = state {
                    let (pointer, guard) = buf.device_ptr_mut(&stream);
                    table[k * words + 4 + rule.inputs.len() + s] = pointer;
                    guards.push(guard);
                }
            }
        }
        // The table stays on the device while the buffers stay the same.
        if tensors > 0 && table != self.table_host {
            stream
                .memcpy_htod(&table, &mut self.buffers.table)
                .map_err(device_error)?;
            self.table_host = table;
        }
        // The non-finite scan: before anything on the device changes.
        self.last_skipped = false;
        if let Some(scan) = scan {
            let loaded = &self.scans[scan];
            let values = vec![vec![0.0; loaded.schedule.rule.nodes.len()]; tensors];
            let mut runner = DevicePasses {
                loaded,
                stream: &stream,
                buffers: &mut self.buffers,
                tensors,
            };
            let counts = lensopt_codegen::host::PassRunner::reduce(&mut runner, 0, &values)
                .map_err(Error::Compile)?;
            if let Some(k) = counts.iter().position(|c| c.iter().any(|n| *n > 0.0)) {
                drop(guards);
                if self.non_finite == NonFinite::Skip {
                    self.skipped += 1;
                    self.last_skipped = true;
                    return Ok(());
                }
                let (what, index, value) = self
                    .locate_non_finite(k, grads, inputs)?
                    .unwrap_or_else(|| (format!("gradient {k}"), 0, f64::NAN));
                return Err(Error::NonFinite {
                    what,
                    index,
                    value,
                    step: t,
                });
            }
        }
        let loaded = &self.loaded[index];
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
            buffers: &mut self.buffers,
            tensors,
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
        drop(guards);
        self.t = t;
        Ok(())
    }
}

/// Page-locked staging for the scalar slots: a ring of host buffers, each
/// with an event recorded after the copy out of it. A copy from page-locked
/// memory is queued without waiting for the device (one from ordinary
/// memory waits for the stream), and a buffer is rewritten only once its
/// last copy is done.
struct Staging<F> {
    ring: Vec<(PinnedHostSlice<F>, CudaEvent)>,
    next: usize,
}

impl<F: Float> Staging<F> {
    /// Buffers in the ring: how many phases the host may run ahead.
    const DEPTH: usize = 4;

    fn new(device: &Device, len: usize) -> Result<Self, Error> {
        let ring = (0..Self::DEPTH)
            .map(|_| {
                // SAFETY: the buffer's contents are unset; every upload
                // fills it completely (see `upload`) before copying it.
                let mut buf = unsafe { device.ctx.alloc_pinned::<F>(len) }.map_err(device_error)?;
                buf.as_mut_slice().map_err(device_error)?.fill(F::default());
                let event = device.ctx.new_event(None).map_err(device_error)?;
                Ok((buf, event))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Staging { ring, next: 0 })
    }

    /// Fills the next buffer with `fill` and queues its copy into `dst`.
    fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        dst: &mut CudaSlice<F>,
        fill: impl FnOnce(&mut [F]),
    ) -> Result<(), cudarc::driver::DriverError> {
        let (buf, event) = &mut self.ring[self.next];
        self.next = (self.next + 1) % Self::DEPTH;
        // The previous copy out of this buffer has finished.
        event.synchronize()?;
        fill(buf.as_mut_slice()?);
        stream.memcpy_htod(&*buf, dst)?;
        event.record(stream)
    }
}

/// Loads a PTX module; when the driver refuses it, the error carries the
/// driver's compile log (loading it again with a log buffer).
fn load_module(device: &Device, text: &str) -> Result<Arc<CudaModule>, Error> {
    match device.ctx.load_module(Ptx::from_src(text)) {
        Ok(module) => Ok(module),
        Err(e) => {
            let log = driver_log(device, text).unwrap_or_default();
            Err(device_error(format!("{e}: {log}")))
        }
    }
}

/// The driver's error log for loading `text`, if it writes one.
fn driver_log(device: &Device, text: &str) -> Option<String> {
    use cudarc::driver::sys;
    let source = std::ffi::CString::new(text).ok()?;
    device.ctx.bind_to_thread().ok()?;
    let mut log = vec![0u8; 1 << 14];
    let mut options = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    // The size option's value is the integer itself, as the driver API expects.
    let mut values = [
        log.as_mut_ptr().cast::<std::ffi::c_void>(),
        log.len() as *mut std::ffi::c_void,
    ];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `source` is a NUL-terminated image that outlives the call; the
    // two options point at `log` (writable, of the size passed) and at the
    // size; the context is current on this thread (bound above).
    let status = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            source.as_ptr().cast(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    if status == sys::CUresult::CUDA_SUCCESS {
        // SAFETY: `module` was just loaded by this call and is not shared.
        unsafe { sys::cuModuleUnload(module) };
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The GPU stepper's passes as the phase driver's
/// [`lensopt_codegen::host::PassRunner`]: each pass is one launch over every
/// tensor's chunks (the [`LaunchMap`]), its scalar slots uploaded first; a
/// reduction's per-block partials are copied back and combined per tensor in
/// block order. The element pass is queued without waiting for it: a later
/// copy on the stream (a download, the next step's reduction) waits for it.
struct DevicePasses<'a, F> {
    loaded: &'a Loaded,
    stream: &'a Arc<CudaStream>,
    buffers: &'a mut LaunchBuffers<F>,
    tensors: usize,
}

/// What every launch of a stepper reads and writes besides the tensors:
/// the block-to-tensor map (on the host, and on the device unless no tensor
/// holds an element; fixed, as the tensors' lengths are), the descriptor
/// table, the scalar slots and their page-locked staging, and the per-block
/// reduction partials (sized for the widest pass loaded).
struct LaunchBuffers<F> {
    launch: LaunchMap,
    map: Option<CudaSlice<u64>>,
    table: CudaSlice<u64>,
    slots: CudaSlice<F>,
    staging: Staging<F>,
    partials: Option<CudaSlice<f64>>,
    slot_capacity: usize,
}

impl<F> LaunchBuffers<F> {
    /// Grows the partials to one f64 per block and reduction of
    /// `schedule`'s widest pass.
    fn fit_partials(&mut self, device: &Device, schedule: &Schedule) -> Result<(), Error> {
        let widest = schedule.passes.iter().map(Vec::len).max().unwrap_or(0);
        let needed = widest * self.launch.blocks();
        if needed > 0 && self.partials.as_ref().is_none_or(|p| p.len() < needed) {
            let buffer = device
                .stream
                .alloc_zeros::<f64>(needed)
                .map_err(device_error)?;
            self.partials = Some(buffer);
        }
        Ok(())
    }
}

impl<F: Float> DevicePasses<'_, F> {
    /// Uploads each tensor's slot values (rounded to the element type):
    /// tensor `k` reads `values[value_of(k)]`.
    fn upload_slots(
        &mut self,
        values: &[&[f64]],
        value_of: impl Fn(usize) -> usize,
    ) -> Result<(), String> {
        let slots = &self.loaded.schedule.slots;
        if slots.is_empty() || self.tensors == 0 {
            return Ok(());
        }
        let (tensors, capacity) = (self.tensors, self.buffers.slot_capacity);
        let buffers = &mut *self.buffers;
        buffers
            .staging
            .upload(self.stream, &mut buffers.slots, |host| {
                for k in 0..tensors {
                    let v = values[value_of(k)];
                    for (j, id) in slots.iter().enumerate() {
                        host[k * capacity + j] = F::from_f64(v[id.index()]);
                    }
                }
            })
            .map_err(|e| device_error(e).to_string())
    }

    fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.buffers.launch.blocks() as u32, 1, 1),
            block_dim: (BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

impl<F: Float> lensopt_codegen::host::PassRunner for DevicePasses<'_, F> {
    fn reduce(&mut self, pass: usize, values: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        let reductions = &self.loaded.schedule.passes[pass];
        let count = reductions.len();
        let mut per_tensor = vec![vec![0.0; count]; self.tensors];
        if self.buffers.map.is_none() || self.buffers.partials.is_none() {
            // No elements anywhere: every partial is its identity, 0.
            return Ok(per_tensor);
        };
        let views: Vec<&[f64]> = values.iter().map(Vec::as_slice).collect();
        self.upload_slots(&views, |k| k)?;
        let cfg = self.config();
        let LaunchBuffers {
            map: Some(map),
            partials: Some(partials),
            table,
            launch: blocks,
            ..
        } = &mut *self.buffers
        else {
            return Ok(per_tensor);
        };
        let mut launch = self.stream.launch_builder(&self.loaded.passes[pass]);
        launch.arg(&*table).arg(&*map).arg(&mut *partials);
        // SAFETY: one block per map entry; each reads its entry, its
        // tensor's row of the descriptor table just uploaded (every pointer
        // a live device buffer of the row's length, or 0 for a buffer this
        // kernel does not touch) and elements of its chunk below the
        // tensor's length, and writes `count` f64 partials at `block *
        // count`, within the buffer sized for the widest pass.
        unsafe { launch.launch(cfg) }.map_err(|e| device_error(e).to_string())?;
        // Only the partials this launch wrote: (block, reduction).
        let used = blocks.blocks() * count;
        let mut host = vec![0f64; used];
        self.stream
            .memcpy_dtoh(&partials.slice(..used), &mut host)
            .map_err(|e| device_error(e).to_string())?;
        let rule = &self.loaded.schedule.rule;
        for (r, id) in reductions.iter().enumerate() {
            let Op::Reduce(op, _, _) = rule.node(*id).op else {
                continue;
            };
            for (k, out) in per_tensor.iter_mut().enumerate() {
                out[r] = blocks.blocks_of(k).fold(0.0, |acc, b| {
                    lensopt_codegen::host::combine_partials(op, acc, host[b * count + r])
                });
            }
        }
        Ok(per_tensor)
    }

    fn element(&mut self, values: &[&[f64]], value_of: &[usize]) -> Result<(), String> {
        if self.buffers.map.is_none() {
            return Ok(());
        }
        self.upload_slots(values, |k| value_of[k])?;
        let cfg = self.config();
        let LaunchBuffers {
            map: Some(map),
            table,
            ..
        } = &*self.buffers
        else {
            return Ok(());
        };
        let mut launch = self.stream.launch_builder(&self.loaded.element);
        launch.arg(table).arg(map);
        // SAFETY: as for the reductions; the element kernel writes p and the
        // states through the table's pointers, each within its chunk of its
        // row's length.
        unsafe { launch.launch(cfg) }.map_err(|e| device_error(e).to_string())?;
        Ok(())
    }
}

/// The best device-to-device copy of `n` f32 values (`n` rounded down to a
/// multiple of 4): [`lensopt_codegen::ptx::copy_kernel`], 16-byte loads with
/// four in flight per thread, timed with the stream synchronised (seconds
/// per copy, best of `reps`).
pub fn copy_seconds(device: &Device, n: usize, reps: usize) -> Result<f64, Error> {
    let module = lensopt_codegen::ptx::copy_kernel(DEVICE_TARGET)
        .map_err(|e| Error::Compile(e.to_string()))?;
    let module = load_module(device, &module.text)?;
    let func = module.load_function("copy16").map_err(device_error)?;
    let stream = &device.stream;
    let groups = n / 4;
    let src = stream
        .alloc_zeros::<f32>(groups * 4)
        .map_err(device_error)?;
    let mut dst = stream
        .alloc_zeros::<f32>(groups * 4)
        .map_err(device_error)?;
    let groups64 = groups as u64;
    let blocks = groups
        .div_ceil(4 * BLOCK)
        .clamp(1, lensopt_codegen::ptx::MAX_BLOCKS);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(2) {
        let started = std::time::Instant::now();
        let mut launch = stream.launch_builder(&func);
        launch.arg(&src).arg(&mut dst).arg(&groups64);
        // SAFETY: both buffers hold `groups` 16-byte groups (allocations are
        // 256-byte aligned) and the kernel touches groups below `groups`.
        unsafe { launch.launch(cfg) }.map_err(device_error)?;
        stream.synchronize().map_err(device_error)?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

impl Device {
    /// The memory bandwidth the device's attributes imply (memory clock x
    /// bus width x 2 transfers per clock), in GB/s; `None` when the driver
    /// does not report them.
    pub fn peak_gbps(&self) -> Option<f64> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let clock_khz = self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
            .ok()?;
        let bus_bits = self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
            .ok()?;
        (clock_khz > 0 && bus_bits > 0)
            .then(|| 2.0 * clock_khz as f64 * 1e3 * bus_bits as f64 / 8.0 / 1e9)
    }

    /// Waits until all queued work on the device's stream is done (steps
    /// are queued without waiting; a download waits by itself).
    pub fn synchronize(&self) -> Result<(), Error> {
        self.stream.synchronize().map_err(device_error)
    }
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
        let module = lensopt_codegen::ptx::emit_circuit(circuit, DEVICE_TARGET)
            .map_err(|e| Error::Compile(e.to_string()))?;
        let loaded = load_module(&device, &module.text)?;
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
