//! The harness of `lensopt bench`: the run's settings and result rows
//! ([`Bench`]), the timing of kernels (fastest of several calls, and
//! alternating pairs for ratios), the seeded buffers they run on, and the
//! limits on `--seconds`, `--sizes` and memory checked before anything runs.

use crate::Failure;
use lensopt::{DynOptimizer, Optimizer};
use ndarray::Array1;
use serde_json::Value;
use std::time::Instant;

/// One run of `lensopt bench`: its settings, and the rows measured so far.
pub(super) struct Bench {
    pub(super) threads: usize,
    /// One pool for every kernel measured, lensopt's included: two pools
    /// would compete for the cores while one of them spins down.
    pub(super) pool: std::sync::Arc<rayon::ThreadPool>,
    pub(super) seconds: f64,
    pub(super) non_finite: lensopt::NonFinite,
    pub(super) rows: Vec<Value>,
}

pub(super) fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::usage(e.to_string())
}

/// Seconds per call of `f`: the fastest of at least 3 timed calls over about
/// `seconds`, after a warm-up call (the STREAM convention: on a shared, noisy
/// machine the minimum is the most repeatable estimate of what the code costs).
pub(super) fn time(seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    let mut count = 0;
    let start = Instant::now();
    while count < 3 || (start.elapsed().as_secs_f64() < seconds && count < 1000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        count += 1;
    }
    best
}

/// Times `a` and `b` in alternating short rounds, so that both see the same
/// machine conditions. Returns the best time of each, and the median over
/// rounds of `time(b) / time(a)` (robust to bursts of memory bandwidth that
/// other tenants of the machine leave to one round and not the next).
pub(super) fn time_pair(seconds: f64, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64, f64) {
    const ROUNDS: usize = 9;
    let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let ra = time(seconds / (2 * ROUNDS) as f64, &mut a);
        let rb = time(seconds / (2 * ROUNDS) as f64, &mut b);
        ta = ta.min(ra);
        tb = tb.min(rb);
        ratios.push(rb / ra);
    }
    ratios.sort_by(f64::total_cmp);
    (ta, tb, ratios[ROUNDS / 2])
}

/// The largest tensor `--sizes` takes: 2^34 elements (64 GiB per f32 array).
const MAX_SIZE: usize = 1 << 34;

/// The most `--seconds` takes per measurement: an hour.
const MAX_SECONDS: f64 = 3600.0;

/// `n` values of `f`, with the allocation's failure as an error (not an abort).
fn try_vec(n: usize, f: impl FnMut() -> f32) -> Result<Vec<f32>, Failure> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Failure::usage(format!(
            "cannot allocate {n} f32 elements ({:.1} GiB): use smaller --sizes",
            4.0 * n as f64 / GIB
        ))
    })?;
    v.extend(std::iter::repeat_with(f).take(n));
    Ok(v)
}

pub(super) fn zeros(n: usize) -> Result<Vec<f32>, Failure> {
    try_vec(n, || 0.0)
}

/// `n` pseudo-random values in [-0.5, 0.5) (xorshift, seeded).
pub(super) fn filled_vec(n: usize, seed: u32) -> Result<Vec<f32>, Failure> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    try_vec(n, || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    })
}

pub(super) fn filled(n: usize, seed: u32) -> Result<Array1<f32>, Failure> {
    filled_vec(n, seed).map(Array1::from_vec)
}

const GIB: f64 = (1u64 << 30) as f64;

/// Refuses `--seconds` that are not finite, not positive, or over [`MAX_SECONDS`].
pub(super) fn check_seconds(seconds: f64) -> Result<(), Failure> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "--seconds {seconds}: expected a finite number of seconds, more than 0 and at most {MAX_SECONDS}"
    )))
}

/// Refuses a size of 0 or over [`MAX_SIZE`].
pub(super) fn check_size(n: usize) -> Result<(), Failure> {
    if n == 0 {
        return Err(Failure::usage("--sizes: 0 is not a tensor size"));
    }
    if n > MAX_SIZE {
        return Err(Failure::usage(format!(
            "--sizes {n}: at most {MAX_SIZE} (2^34) elements"
        )));
    }
    Ok(())
}

/// Refuses a size whose `arrays` f32 arrays of `n` elements would not fit
/// in the memory available (when the system says how much that is).
pub(super) fn check_memory(n: usize, what: &str, arrays: usize) -> Result<(), Failure> {
    let need = (4 * arrays) as f64 * n as f64;
    match available_memory() {
        Some(have) if need > have as f64 => Err(Failure::usage(format!(
            "--sizes {n}: {what} needs about {:.1} GiB, more than the {:.1} GiB of memory available",
            need / GIB,
            have as f64 / GIB
        ))),
        _ => Ok(()),
    }
}

/// How many f32 arrays of the tensor's size the bench of rule `opt` holds at
/// once: p, g and h, the stepper's states, and the ceiling's copies of every
/// buffer, with one more for the stepper's own scratch.
pub(super) fn arrays_held(opt: &DynOptimizer) -> usize {
    let rule = opt.rule();
    let buffers = 2 + rule.inputs.len() + rule.states.len();
    3 + rule.states.len() + buffers + 1
}

pub(super) fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
