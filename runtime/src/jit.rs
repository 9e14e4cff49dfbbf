//! Compiled programs for the runtime: specialisation keys and the process-wide cache.
//!
//! A rule is compiled once per element type, specialisation and rewrite
//! mode, and the result is shared by every `Stepper` of the process. The
//! specialisation compiles in the boolean hyperparameters, the numeric ones
//! that are exactly 0, and which optional inputs are present, provided every
//! parameter group agrees on the value (otherwise the value stays a runtime
//! scalar, so one program serves all groups).

use crate::Float;
use lensopt_codegen::cpu::Program;
use lensopt_ir::optimize::{optimize, Mode, Options};
use lensopt_ir::schedule::{live_states, Schedule};
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
        let first = &groups[0];
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
        let mut options = self.options_without_presence();
        options.present = self.present.iter().map(|p| Some(*p)).collect();
        options
    }

    fn options_without_presence(&self) -> Options {
        let mut options = Options::new(self.mode);
        options.specialize = self.specialize.clone();
        options
    }
}

type Cache = Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
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
pub fn compile<F: Float>(rule: &Rule, key: &Key) -> Result<Program<F>, String> {
    compile_timed(rule, key).map(|(p, _)| p)
}

/// Optimizes and schedules `rule` for `key`: what every backend compiles.
pub fn schedule(rule: &Rule, key: &Key) -> Schedule {
    let optimized = optimize(rule, &key.options());
    // Presence changes from step to step: a state unread at this step may be
    // read at the next, so liveness comes from the rule without it.
    let live = if rule.inputs.iter().any(|i| i.optional) {
        live_states(&optimize(rule, &key.options_without_presence()))
    } else {
        live_states(&optimized)
    };
    Schedule::with_live_states(optimized, live)
}

/// [`compile`], reporting how long each stage took.
pub fn compile_timed<F: Float>(rule: &Rule, key: &Key) -> Result<(Program<F>, Stages), String> {
    let start = std::time::Instant::now();
    let schedule = schedule(rule, key);
    let optimize_us = start.elapsed().as_secs_f64() * 1e6;
    let start = std::time::Instant::now();
    let program = Program::<F>::compile(schedule).map_err(|e| e.to_string())?;
    let codegen_us = start.elapsed().as_secs_f64() * 1e6;
    Ok((
        program,
        Stages {
            optimize_us,
            codegen_us,
        },
    ))
}

/// The compiled program for `rule` and `key`, from the cache or compiled now.
pub fn program<F: Float>(rule: &Rule, key: &Key) -> Result<Arc<Program<F>>, String> {
    let name = format!(
        "{}|{:?}|{:?}|{:?}|{rule}",
        F::NAME,
        key.mode,
        key.specialize,
        key.present
    );
    if let Some(found) = cache().lock().map_err(|e| e.to_string())?.get(&name) {
        if let Ok(program) = found.clone().downcast::<Program<F>>() {
            return Ok(program);
        }
    }
    let program = Arc::new(compile::<F>(rule, key)?);
    cache()
        .lock()
        .map_err(|e| e.to_string())?
        .insert(name, program.clone());
    Ok(program)
}

/// The PTX of `rule` for `key` (optimized and scheduled as for the CPU).
pub fn ptx(
    rule: &Rule,
    key: &Key,
    precision: lensopt_codegen::ptx::Precision,
    target: &str,
) -> Result<lensopt_codegen::ptx::PtxModule, String> {
    lensopt_codegen::ptx::emit(&schedule(rule, key), precision, target).map_err(|e| e.to_string())
}
