//! Compiled programs for the runtime: specialisation keys and the [`Engine`] that owns them.
//!
//! A rule is compiled once per element type, specialisation and rewrite
//! mode, and the result is shared by every `Stepper` of the process
//! through a bounded cache. The
//! specialisation compiles in the boolean hyperparameters, the numeric ones
//! that are exactly 0, and which optional inputs are present, provided every
//! parameter group agrees on the value (otherwise the value stays a runtime
//! scalar, so one program serves all groups).

use crate::error::Error;
use crate::Float;
use lensopt_codegen::cpu::Program;
use lensopt_ir::optimize::{optimize_report, Mode, Options};
use lensopt_ir::schedule::Schedule;
use lensopt_ir::{HyperValue, Rule};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What a compiled program is specialised on.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// Per hyperparameter, the value compiled in.
    pub specialize: Vec<Option<HyperValue>>,
    /// Per input, its presence.
    pub present: Vec<bool>,
    /// Rewrite class.
    pub mode: Mode,
}

impl Key {
    /// The key for one step: values shared by all groups, presence of the inputs.
    pub fn for_step(groups: &[Vec<HyperValue>], present: &[bool], mode: Mode) -> Key {
        let Some(first) = groups.first() else {
            // No parameter groups (an optimizer over no tensors): nothing to specialise on.
            return Key {
                specialize: Vec::new(),
                present: present.to_vec(),
                mode,
            };
        };
        let specialize = Options::specialized_for(mode, first)
            .specialize
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.filter(|v| groups.iter().all(|g| g[i] == *v)))
            .collect();
        Key {
            specialize,
            present: present.to_vec(),
            mode,
        }
    }

    fn options(&self) -> Options {
        let mut options = Options::new(self.mode);
        options.specialize = self.specialize.clone();
        options.present = self.present.iter().map(|p| Some(*p)).collect();
        options
    }
}

thread_local! {
    static JIT_COMPILES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many programs cranelift has compiled on the calling thread (steps
/// compile on the thread that runs them), so a test can tell that a
/// declared optimizer ran on its compiled-in kernels ([`crate::aot`]).
pub fn jit_compiles() -> u64 {
    JIT_COMPILES.with(|c| c.get())
}

pub(crate) fn jit_compile<F: Float>(schedule: Schedule) -> Result<Program<F>, Error> {
    JIT_COMPILES.with(|c| c.set(c.get() + 1));
    Program::<F>::compile(schedule).map_err(|e| Error::Compile(e.to_string()))
}

/// Time spent in each stage of [`compile_timed`], in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stages {
    /// E-graph optimization (and the liveness run for optional inputs).
    pub optimize_us: f64,
    /// Scheduling and cranelift code generation, up to callable functions.
    pub codegen_us: f64,
}

/// Optimizes, schedules and compiles `rule` for `key` (no caching).
pub fn compile<F: Float>(rule: &Rule, key: &Key) -> Result<Program<F>, Error> {
    compile_timed(rule, key).map(|(p, _)| p)
}

/// Optimizes and schedules `rule` for `key`: what every backend compiles.
pub fn schedule(rule: &Rule, key: &Key) -> Schedule {
    schedule_report(rule, key).0
}

/// [`schedule`], with the reason the e-graph was skipped, if it was (a rule
/// beyond its budget is only specialised and constant-folded).
pub fn schedule_report(rule: &Rule, key: &Key) -> (Schedule, Option<String>) {
    let optimized = optimize_report(rule, &key.options());
    (Schedule::new(optimized.rule), optimized.fallback)
}

/// [`compile`], reporting how long each stage took.
pub fn compile_timed<F: Float>(rule: &Rule, key: &Key) -> Result<(Program<F>, Stages), Error> {
    let start = std::time::Instant::now();
    let schedule = schedule(rule, key);
    let optimize_us = start.elapsed().as_secs_f64() * 1e6;
    let start = std::time::Instant::now();
    let program = jit_compile::<F>(schedule)?;
    let codegen_us = start.elapsed().as_secs_f64() * 1e6;
    Ok((
        program,
        Stages {
            optimize_us,
            codegen_us,
        },
    ))
}

/// The compiled program for `rule` and `key`, from [`Engine::shared`] or compiled now.
pub fn program<F: Float>(rule: &Rule, key: &Key) -> Result<Arc<Program<F>>, Error> {
    Engine::shared().program(rule, key)
}

/// Owner of compiled programs: a bounded cache, least recently used first
/// out. Programs are keyed by the structural hash of their optimized IR
/// (so two rules that optimize to the same code share one program); a
/// second, larger memo maps a checked rule and its specialisation to that
/// hash, so a hit costs no optimization. Every hit is verified against
/// the stored rule, so a hash collision costs a compile, never a wrong
/// program. A dropped program frees its machine code.
pub struct Engine {
    capacity: usize,
    entries: Mutex<Entries>,
    disk: Option<crate::disk_cache::DiskCache>,
}

#[derive(Default)]
struct Entries {
    clock: u64,
    /// (element type, checked rule, key) -> structural hash of the optimized IR.
    memo: HashMap<u64, Memo>,
    /// (element type, optimized-IR hash, compiled-in kernels allowed) -> program.
    programs: HashMap<(&'static str, u64, bool), Compiled>,
}

struct Memo {
    element: &'static str,
    compiled_in: bool,
    rule: Rule,
    key: Key,
    optimized: u64,
    used: u64,
}

struct Compiled {
    rule: Rule,
    program: Arc<dyn Any + Send + Sync>,
    used: u64,
}

/// Removes the least recently used entries until `map` holds `keep`.
fn evict<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    keep: usize,
    used: impl Fn(&V) -> u64,
) {
    while map.len() > keep {
        let oldest = map
            .iter()
            .min_by_key(|(_, v)| used(v))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => map.remove(&k),
            None => return,
        };
    }
}

impl Engine {
    /// An engine that keeps at most `capacity` compiled programs (at least one).
    pub fn new(capacity: usize) -> Self {
        Engine {
            capacity: capacity.max(1),
            entries: Mutex::new(Entries::default()),
            disk: None,
        }
    }

    /// The same engine, keeping what the JIT compiles in `cache` too and
    /// looking there before compiling (the shared engine uses
    /// [`crate::disk_cache::DiskCache::from_env`]).
    #[must_use]
    pub fn with_disk_cache(mut self, cache: Option<crate::disk_cache::DiskCache>) -> Self {
        self.disk = cache;
        self
    }

    /// The process's default engine (64 programs, and the on-disk cache
    /// the environment names), used by every `Stepper`.
    pub fn shared() -> &'static Engine {
        static SHARED: OnceLock<Engine> = OnceLock::new();
        SHARED.get_or_init(|| {
            Engine::new(64).with_disk_cache(crate::disk_cache::DiskCache::from_env())
        })
    }

    /// How many compiled programs the engine holds.
    pub fn len(&self) -> usize {
        self.lock().programs.len()
    }

    /// True when the engine holds no program.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves only a cache behind: use it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled program for `rule` and `key`, from the cache or compiled
    /// now: the kernels `optimizer!` compiled into the crate where they
    /// serve `key` ([`crate::aot`]), else the JIT's.
    pub fn program<F: Float>(&self, rule: &Rule, key: &Key) -> Result<Arc<Program<F>>, Error> {
        self.program_from(rule, key, true)
    }

    /// [`Engine::program`], never from compiled-in kernels when
    /// `compiled_in` is false (the JIT compiles, or its cached program serves).
    pub fn program_from<F: Float>(
        &self,
        rule: &Rule,
        key: &Key,
        compiled_in: bool,
    ) -> Result<Arc<Program<F>>, Error> {
        let memo_key = {
            let mut h = rule.structural_hash();
            for word in [
                F::NAME.len() as u64,
                u64::from(compiled_in),
                key.mode as u64,
                key.specialize.len() as u64,
                key.present.len() as u64,
            ] {
                h = h.rotate_left(7) ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            for (i, v) in key.specialize.iter().enumerate() {
                let bits = match v {
                    None => u64::MAX,
                    Some(HyperValue::Num(x)) => x.to_bits(),
                    Some(HyperValue::Bool(b)) => u64::from(*b) + 2,
                };
                h = h.rotate_left(11) ^ (bits ^ i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            for p in &key.present {
                h = h.rotate_left(3) ^ u64::from(*p);
            }
            h
        };
        {
            let mut entries = self.lock();
            entries.clock += 1;
            let now = entries.clock;
            let optimized = match entries.memo.get_mut(&memo_key) {
                Some(m)
                    if m.element == F::NAME
                        && m.compiled_in == compiled_in
                        && m.key == *key
                        && m.rule.same_structure(rule) =>
                {
                    m.used = now;
                    Some(m.optimized)
                }
                _ => None,
            };
            if let Some(hash) = optimized {
                if let Some(c) = entries.programs.get_mut(&(F::NAME, hash, compiled_in)) {
                    c.used = now;
                    if let Ok(program) = c.program.clone().downcast::<Program<F>>() {
                        return Ok(program);
                    }
                }
            }
        }
        // Kernels compiled into the crate, or by the JIT in an earlier run,
        // need neither the e-graph nor cranelift.
        let native = compiled_in
            .then(|| crate::aot::program::<F>(rule, key))
            .flatten()
            .or_else(|| self.disk.as_ref()?.load::<F>(rule, key));
        let (schedule, native) = match native {
            Some(p) => (p.schedule().clone(), Some(p)),
            None => (schedule(rule, key), None),
        };
        let hash = schedule.rule.structural_hash();
        let found = {
            let mut entries = self.lock();
            let now = entries.clock;
            match entries.programs.get_mut(&(F::NAME, hash, compiled_in)) {
                Some(c) if c.rule.same_structure(&schedule.rule) => {
                    c.used = now;
                    c.program.clone().downcast::<Program<F>>().ok()
                }
                _ => None,
            }
        };
        let program = match found {
            Some(program) => program,
            None => {
                let optimized_rule = schedule.rule.clone();
                let program = Arc::new(match native {
                    Some(p) => p,
                    None => {
                        let p = jit_compile::<F>(schedule)?;
                        if let Some(disk) = &self.disk {
                            disk.store(rule, key, &p);
                        }
                        p
                    }
                });
                let mut entries = self.lock();
                let now = entries.clock;
                entries.programs.insert(
                    (F::NAME, hash, compiled_in),
                    Compiled {
                        rule: optimized_rule,
                        program: program.clone(),
                        used: now,
                    },
                );
                evict(&mut entries.programs, self.capacity, |c| c.used);
                program
            }
        };
        let mut entries = self.lock();
        let now = entries.clock;
        entries.memo.insert(
            memo_key,
            Memo {
                element: F::NAME,
                compiled_in,
                rule: rule.clone(),
                key: key.clone(),
                optimized: hash,
                used: now,
            },
        );
        evict(&mut entries.memo, self.capacity * 4, |m| m.used);
        Ok(program)
    }
}

/// The PTX of the element-wise phases of the matrix rule `rule`: one module
/// per fused kernel of its [`lensopt_ir::fusion::Plan`] (array leaves as
/// inputs, scalar leaves as hyperparameters), named `fused{k}`, as the CPU
/// compiles them (unoptimised, so exact). The other phases (GEMMs, axis
/// reductions, factorisations) have no device code yet.
pub fn matrix_ptx(
    rule: &Rule,
    precision: lensopt_codegen::ptx::Precision,
    target: &str,
) -> Result<Vec<(String, lensopt_codegen::ptx::PtxModule)>, Error> {
    lensopt_ir::fusion::Plan::new(rule)
        .kernels
        .into_iter()
        .enumerate()
        .map(|(k, kernel)| {
            let schedule = lensopt_ir::schedule::Schedule::new(kernel.rule);
            lensopt_codegen::ptx::emit(&schedule, precision, target)
                .map(|module| (format!("fused{k}"), module))
                .map_err(|e| Error::Compile(format!("fused kernel {k}: {e}")))
        })
        .collect()
}

/// The PTX of `rule` for `key` (optimized and scheduled as for the CPU).
pub fn ptx(
    rule: &Rule,
    key: &Key,
    precision: lensopt_codegen::ptx::Precision,
    target: &str,
) -> Result<lensopt_codegen::ptx::PtxModule, Error> {
    lensopt_codegen::ptx::emit(&schedule(rule, key), precision, target)
        .map_err(|e| Error::Compile(e.to_string()))
}
