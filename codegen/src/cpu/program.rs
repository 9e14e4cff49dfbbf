//! A compiled schedule: the host's cranelift target, the JIT module with
//! the math imports, and the native functions of every phase, owned with
//! the code they live in. Running them is [`super::execute`]'s job.

use super::emit::buffer_count;
use super::kernel;
use super::lanes::JitFloat;
use super::math;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use lensopt_ir::schedule::Schedule;
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

/// Most buffers a kernel may take (`p`, `g`, inputs and states).
pub(super) const MAX_BUFFERS: usize = 64;

/// Why a schedule could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError(pub String);

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot compile the rule: {}", self.0)
    }
}

impl std::error::Error for CompileError {}

/// An element kernel: `(buffer table, slots, n)` (see [`super::kernel`]).
pub type ElementFn = unsafe extern "C" fn(*const *mut u8, *const u8, usize);
/// A reduction kernel: `(buffer table, slots, n, valid, out)` (see [`super::kernel`]).
pub type ReduceFn = unsafe extern "C" fn(*const *mut u8, *const u8, usize, usize, *mut f64);

/// Keeps the JIT's code alive as long as the program, and unmaps it when
/// the program is dropped.
pub(crate) struct Code(pub(crate) Option<JITModule>);

impl Drop for Code {
    fn drop(&mut self) {
        if let Some(module) = self.0.take() {
            // SAFETY: the only pointers into this module's code are the
            // function pointers of the `Program` or `CircuitCode` that owns
            // this `Code`; they are private to it and never handed out, and
            // the owner is being dropped, so no call into the code can happen
            // after this.
            unsafe { module.free_memory() };
        }
    }
}

// SAFETY: the module is only kept so that its executable memory stays
// mapped; after `finalize_definitions` nothing mutates it, and the compiled
// functions are pure code that may run on any thread.
unsafe impl Send for Code {}
// SAFETY: as above: shared references never reach the module's state.
unsafe impl Sync for Code {}

/// The kernels of one schedule for element type `F`.
pub struct Program<F> {
    pub(super) schedule: Schedule,
    pub(super) element: ElementFn,
    pub(super) passes: Vec<ReduceFn>,
    clif: Vec<(String, String)>,
    image: Option<super::image::Image>,
    /// What keeps the kernels' code mapped; it also says where it came from.
    code: Backing,
    _element: PhantomData<F>,
}

impl<F> fmt::Debug for Program<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program")
            .field("rule", &self.schedule.rule.name)
            .field("passes", &self.passes.len())
            .finish()
    }
}

/// The memory a program's kernels live in.
enum Backing {
    /// Cranelift's module (compiled now).
    Jit { _module: Box<Code> },
    /// A mapping made from an image (loaded from the on-disk cache).
    Mapped { _map: memmap2::Mmap },
    /// The crate's own code (compiled in by `optimizer!`).
    Static,
}

/// Where a program's machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now by cranelift.
    Jit,
    /// Compiled by cranelift in an earlier run, loaded from the on-disk cache.
    Cached,
    /// Compiled with the crate by rustc (`optimizer!`'s kernels).
    Aot,
}

impl Origin {
    /// `"jit"`, `"cached"` or `"aot"`.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Jit => "jit",
            Origin::Cached => "cached",
            Origin::Aot => "aot",
        }
    }
}

/// How cranelift allocates registers: `backtracking` (better code) for
/// optimizer kernels, `single_pass` (linear time) for circuits, whose one
/// straight-line function per pass holds every gate of the netlist.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allocator {
    Backtracking,
    SinglePass,
}

/// The host's target description (CPU features detected once per process).
fn host_isa() -> Result<OwnedTargetIsa, CompileError> {
    isa_with(Allocator::Backtracking)
}

fn isa_with(allocator: Allocator) -> Result<OwnedTargetIsa, CompileError> {
    static ISAS: [OnceLock<Result<OwnedTargetIsa, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let isa = ISAS[allocator as usize].get_or_init(|| {
        let mut flags = settings::builder();
        flags.set("opt_level", "none").map_err(|e| e.to_string())?;
        flags
            .set("use_colocated_libcalls", "false")
            .map_err(|e| e.to_string())?;
        flags.set("is_pic", "false").map_err(|e| e.to_string())?;
        let algorithm = match allocator {
            Allocator::Backtracking => "backtracking",
            Allocator::SinglePass => "single_pass",
        };
        flags
            .set("regalloc_algorithm", algorithm)
            .map_err(|e| e.to_string())?;
        // Frames over a page touch each page in turn, so that one too large
        // for its thread's stack meets the guard page instead of memory beyond it.
        flags
            .set("enable_probestack", "true")
            .map_err(|e| e.to_string())?;
        flags
            .set("probestack_strategy", "inline")
            .map_err(|e| e.to_string())?;
        // The verifier checks the code this crate generates; release builds
        // trust it (the debug builds that run the tests keep it on).
        let verify = if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        };
        flags
            .set("enable_verifier", verify)
            .map_err(|e| e.to_string())?;
        cranelift_native::builder()
            .map_err(|e| e.to_string())?
            .finish(settings::Flags::new(flags))
            .map_err(|e| e.to_string())
    });
    isa.clone().map_err(CompileError)
}

/// What the host's code depends on: target triple, cranelift's shared
/// settings and the CPU features it detected (the on-disk cache's key).
pub fn host_features() -> Result<String, CompileError> {
    let isa = host_isa()?;
    let features: Vec<String> = isa.isa_flags().iter().map(|v| v.to_string()).collect();
    Ok(format!(
        "{} | {} | {}",
        isa.triple(),
        isa.flags(),
        features.join(",")
    ))
}

/// A JIT module for the host, with every math import registered.
pub fn module() -> Result<JITModule, CompileError> {
    module_with(Allocator::Backtracking)
}

/// [`module`] with the given register allocator.
pub(crate) fn module_with(allocator: Allocator) -> Result<JITModule, CompileError> {
    let isa = isa_with(allocator)?;
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    for (name, ptr) in math::symbols() {
        builder.symbol(name, ptr);
    }
    #[cfg(target_arch = "x86_64")]
    builder.memory_provider(Box::new(super::pages::PooledPages::new()));
    Ok(JITModule::new(builder))
}

impl<F: JitFloat> Program<F> {
    /// Compiles every phase of `schedule` to native code.
    pub fn compile(schedule: Schedule) -> Result<Self, CompileError> {
        Self::compile_with(schedule, false)
    }

    /// [`Program::compile`], keeping the CLIF text of every kernel for
    /// [`Program::clif`].
    pub fn compile_with_clif(schedule: Schedule) -> Result<Self, CompileError> {
        Self::compile_with(schedule, true)
    }

    fn compile_with(schedule: Schedule, with_clif: bool) -> Result<Self, CompileError> {
        schedule.check_budget().map_err(CompileError)?;
        if buffer_count(&schedule.rule) > MAX_BUFFERS {
            return Err(CompileError(format!(
                "a rule may have at most {} inputs and states",
                MAX_BUFFERS - 2
            )));
        }
        let mut module = module()?;
        let built = kernel::build::<F>(&mut module, &schedule, with_clif)
            .map_err(|e| CompileError(e.to_string()))?;
        module
            .finalize_definitions()
            .map_err(|e| CompileError(e.to_string()))?;
        let element_ptr = module.get_finalized_function(built.element);
        // SAFETY: `element_ptr` is the finalized code of a function declared
        // with the signature (i64, i64, i64) -> () under the platform's C
        // calling convention, which is `ElementFn`'s ABI on 64-bit targets.
        let element: ElementFn =
            unsafe { std::mem::transmute::<*const u8, ElementFn>(element_ptr) };
        let passes = built
            .passes
            .iter()
            .map(|id| {
                let ptr = module.get_finalized_function(*id);
                // SAFETY: as above, for (i64, i64, i64, i64, i64) -> ().
                unsafe { std::mem::transmute::<*const u8, ReduceFn>(ptr) }
            })
            .collect();
        Ok(Program {
            schedule,
            element,
            passes,
            clif: built.clif,
            image: built.image,
            code: Backing::Jit {
                _module: Box::new(Code(Some(module))),
            },
            _element: PhantomData,
        })
    }

    /// The program's machine code as an [`super::image::Image`], for a
    /// program cranelift compiled on x86-64 (the on-disk cache stores it).
    pub fn image(&self) -> Option<&super::image::Image> {
        self.image.as_ref()
    }

    /// A program from the image of an earlier compile of `schedule`.
    ///
    /// # Safety
    ///
    /// `image` must be [`Program::image`] of a program compiled from this
    /// schedule for element type `F` by this build of the crate on a CPU
    /// with this one's features (the on-disk cache keys its files by all
    /// of these and checksums them).
    pub unsafe fn from_image(
        schedule: Schedule,
        image: super::image::Image,
    ) -> Result<Self, CompileError> {
        if image.functions.len() != 1 + schedule.passes.len() {
            return Err(CompileError(format!(
                "the image holds {} functions, the schedule needs {}",
                image.functions.len(),
                1 + schedule.passes.len()
            )));
        }
        // SAFETY: the caller guarantees the image is this crate's code for
        // this CPU.
        let loaded = unsafe { super::image::load(&image) }.map_err(CompileError)?;
        // SAFETY: each entry starts a function compiled with the kernel
        // signatures of `kernel::build` (element first, then the passes in
        // order), as `Program::compile` transmutes them.
        let element: ElementFn =
            unsafe { std::mem::transmute::<*const u8, ElementFn>(loaded.entries[0]) };
        let passes = loaded.entries[1..]
            .iter()
            // SAFETY: as above, for the reduction signature.
            .map(|p| unsafe { std::mem::transmute::<*const u8, ReduceFn>(*p) })
            .collect();
        Ok(Program {
            schedule,
            element,
            passes,
            clif: Vec::new(),
            image: Some(image),
            code: Backing::Mapped { _map: loaded._map },
            _element: PhantomData,
        })
    }

    /// A program whose kernels were compiled ahead of time.
    ///
    /// # Safety
    ///
    /// `element` and `passes` (one per reduction pass of `schedule`, in
    /// order) must be `schedule`'s kernels for element type `F` under the
    /// contract of [`super::kernel`], as `lensopt_codegen::rust` emits them,
    /// and must run on this CPU (their instruction set is available).
    pub unsafe fn from_native(
        schedule: Schedule,
        element: ElementFn,
        passes: Vec<ReduceFn>,
    ) -> Self {
        debug_assert_eq!(passes.len(), schedule.passes.len());
        Program {
            schedule,
            element,
            passes,
            clif: Vec::new(),
            image: None,
            code: Backing::Static,
            _element: PhantomData,
        }
    }

    /// Where the machine code came from.
    pub fn origin(&self) -> Origin {
        match self.code {
            Backing::Jit { .. } => Origin::Jit,
            Backing::Mapped { .. } => Origin::Cached,
            Backing::Static => Origin::Aot,
        }
    }

    /// The schedule this program runs.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// `(function name, CLIF text)` of every kernel, as generated, for a
    /// program from [`Program::compile_with_clif`] (empty otherwise).
    pub fn clif(&self) -> &[(String, String)] {
        &self.clif
    }
}
