//! `lensopt bench`: optimizer steps against the memory bus, measured in one run.
//!
//! For every rule and size it reports the step's bandwidth (the bytes the
//! compiled kernels must move: each array the rule reads, plus each it
//! writes, once per element) beside two ceilings measured in the same run
//! with the same threads:
//! - `ceiling_gbps`: a Rust kernel that reads and writes exactly the same
//!   arrays in place with trivial arithmetic (for Adam: read p, g, m, v;
//!   write p, m, v), i.e. the traffic the rule cannot avoid;
//! - `triad_gbps`: the STREAM triad `a = b + s * c`, 16 bytes per element
//!   (the store's write-allocate read included).
//!
//! `gbps` and `ceiling_gbps` come from the fastest step of each;
//! `ratio_to_ceiling` is the median over nine alternating rounds of the
//! ratio of the two, which bursts of bandwidth on a shared machine do not skew.
//!
//! Also: a hand-written Rust Adam (`adam_handwritten`), 1,000 small tensors
//! in two parameter groups in one step (`adam_many_small`) beside one tensor
//! of the same total size, and JIT latency (rule text to callable kernels).

use crate::Failure;
use lensopt::ir::schedule::Schedule;
use lensopt::{catalog, DynOptimizer, Group, Inputs, Optimizer, Rule, TensorMut, TensorRef};
use ndarray::Array1;
use rayon::prelude::*;
use serde_json::{json, Value};
use std::time::Instant;

/// Flags of `lensopt bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Threads for every kernel (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Tensor sizes (default 1e6, 1e7, and 1e8 when memory allows; at most 2^34,
    /// and what the machine's available memory holds).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Rules to measure (default adam, adamw, lion, adan, sophiah).
    #[arg(long, value_delimiter = ',')]
    rules: Vec<String>,
    /// Seconds to spend per measurement (at least 3 steps are timed): finite,
    /// more than 0, at most 3600.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// `cpu` (default) or `cuda`: Adam on the GPU against a device copy kernel.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The steps' policy for non-finite gradients: `refuse` (the library's
    /// default: one extra read of the gradient), `skip` or `unchecked`.
    #[arg(long, default_value = "refuse")]
    non_finite: String,
}

/// `lensopt bench --device cuda`: Adam's step on the GPU in GB/s against a
/// device-to-device copy kernel measured in the same run.
#[cfg(feature = "cuda")]
fn gpu(args: &Args) -> Result<(), Failure> {
    use lensopt::cuda::{copy_seconds, Device, GpuStepper};
    let dev = std::sync::Arc::new(Device::new(0).map_err(fail)?);
    let sizes = if args.sizes.is_empty() {
        vec![10_000_000, 100_000_000]
    } else {
        args.sizes.clone()
    };
    for n in sizes {
        check_memory(n, "adam on the GPU (host copies)", 3)?;
        let host = filled_vec(n, 3)?;
        let mut p = dev.upload(&host).map_err(fail)?;
        let g = dev.upload(&filled_vec(n, 4)?).map_err(fail)?;
        let adam = catalog::get("adam").ok_or_else(|| fail("no adam"))?;
        let mut st = GpuStepper::new(dev.clone(), &adam, &[&p]).map_err(fail)?;
        let mut result = Ok(());
        let s = time(args.seconds, || {
            if let Err(e) = st.step(&mut [&mut p], &[&g]) {
                result = Err(e);
            }
        });
        result.map_err(fail)?;
        let c = copy_seconds(&dev, n, 20).map_err(fail)?;
        let gbps = 28.0 * n as f64 / s / 1e9;
        let copy_gbps = 8.0 * n as f64 / c / 1e9;
        let row = json!({
            "kernel": "adam", "device": "cuda", "gpu": dev.name(), "n": n, "dtype": "f32",
            "step_ms": s * 1e3, "gbps": gbps, "copy_gbps": copy_gbps, "ratio_to_copy": gbps / copy_gbps,
        });
        outln!("{row}");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn gpu(_: &Args) -> Result<(), Failure> {
    Err(Failure::usage(
        "this lensopt was built without the `cuda` feature: cargo run --release --features cuda --bin lensopt -- bench --device cuda",
    ))
}

/// Elements per parallel chunk of the Rust reference kernels (as the JIT's).
const CHUNK: usize = 1 << 16;

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::usage(e.to_string())
}

/// Seconds per call of `f`: the fastest of at least 3 timed calls over about
/// `seconds`, after a warm-up call (the STREAM convention: on a shared, noisy
/// machine the minimum is the most repeatable estimate of what the code costs).
fn time(seconds: f64, mut f: impl FnMut()) -> f64 {
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
fn time_pair(seconds: f64, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64, f64) {
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

fn zeros(n: usize) -> Result<Vec<f32>, Failure> {
    try_vec(n, || 0.0)
}

/// `n` pseudo-random values in [-0.5, 0.5) (xorshift, seeded).
fn filled_vec(n: usize, seed: u32) -> Result<Vec<f32>, Failure> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    try_vec(n, || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    })
}

fn filled(n: usize, seed: u32) -> Result<Array1<f32>, Failure> {
    filled_vec(n, seed).map(Array1::from_vec)
}

const GIB: f64 = (1u64 << 30) as f64;

/// Refuses `--seconds` that are not finite, not positive, or over [`MAX_SECONDS`].
fn check_seconds(seconds: f64) -> Result<(), Failure> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "--seconds {seconds}: expected a finite number of seconds, more than 0 and at most {MAX_SECONDS}"
    )))
}

/// Refuses a size of 0 or over [`MAX_SIZE`].
fn check_size(n: usize) -> Result<(), Failure> {
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
fn check_memory(n: usize, what: &str, arrays: usize) -> Result<(), Failure> {
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
fn arrays_held(opt: &DynOptimizer) -> usize {
    let rule = opt.rule();
    let buffers = 2 + rule.inputs.len() + rule.states.len();
    3 + rule.states.len() + buffers + 1
}

/// Which arrays a rule's compiled kernels read and write, by kernel buffer index.
struct Traffic {
    reads: Vec<usize>,
    writes: Vec<usize>,
}

impl Traffic {
    fn of(schedule: &Schedule) -> Traffic {
        Traffic {
            reads: schedule.buffers_read(),
            writes: schedule.buffers_written(),
        }
    }

    fn bytes_per_element(&self) -> usize {
        4 * (self.reads.len() + self.writes.len())
    }
}

/// The ceiling's inner loop for `R` read-only arrays and `W` arrays read and
/// written in place: one fused pass, as a fused kernel makes, with trivial
/// arithmetic. Monomorphised per (R, W) so that rustc unrolls over the
/// arrays and vectorises over the elements.
fn fused_ceiling<const R: usize, const W: usize>(reads: &[&[f32]], writes: &mut [&mut [f32]]) {
    let n = writes[0].len();
    let reads: [&[f32]; R] = std::array::from_fn(|r| &reads[r][..n]);
    let mut iter = writes.iter_mut();
    let mut writes: [&mut [f32]; W] = std::array::from_fn(|_| {
        let w = iter.next().expect("W arrays");
        &mut w[..n]
    });
    for i in 0..n {
        let mut acc = 0.0f32;
        for r in &reads {
            acc += r[i];
        }
        for w in writes.iter_mut() {
            w[i] = w[i] * 0.999 + acc;
        }
    }
}

macro_rules! dispatch_ceiling {
    ($r:expr, $w:expr, $reads:expr, $writes:expr; $(($R:literal, $W:literal)),*) => {
        match ($r, $w) {
            $(($R, $W) => fused_ceiling::<$R, $W>($reads, $writes),)*
            (r, w) => unreachable!("no ceiling kernel for {r} read and {w} written arrays"),
        }
    };
}

/// The ceiling: the same arrays the rule's kernels read and write, in place,
/// in one fused pass with trivial arithmetic (for Adam: read p, g, m, v;
/// write p, m, v).
fn ceiling(arrays: &mut [Vec<f32>], traffic: &Traffic, pool: &rayon::ThreadPool) {
    let pure_reads: Vec<usize> = traffic
        .reads
        .iter()
        .copied()
        .filter(|b| !traffic.writes.contains(b))
        .collect();
    let n = arrays[0].len();
    let mut read_chunks: Vec<Vec<&[f32]>> = (0..n.div_ceil(CHUNK)).map(|_| Vec::new()).collect();
    let mut write_chunks: Vec<Vec<&mut [f32]>> =
        (0..n.div_ceil(CHUNK)).map(|_| Vec::new()).collect();
    for (b, a) in arrays.iter_mut().enumerate() {
        if traffic.writes.contains(&b) {
            for (k, c) in a.chunks_mut(CHUNK).enumerate() {
                write_chunks[k].push(c);
            }
        } else if pure_reads.contains(&b) {
            for (k, c) in a.chunks(CHUNK).enumerate() {
                read_chunks[k].push(c);
            }
        }
    }
    let (r, w) = (pure_reads.len(), traffic.writes.len());
    pool.install(|| {
        read_chunks
            .par_iter()
            .zip(write_chunks.par_iter_mut())
            .for_each(|(reads, writes)| {
                dispatch_ceiling!(r, w, reads, writes;
                    (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6),
                    (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8),
                    (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6),
                    (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (3, 6))
            });
    });
}

/// STREAM triad `a = b + s * c`.
fn triad(a: &mut [f32], b: &[f32], c: &[f32], pool: &rayon::ThreadPool) {
    pool.install(|| {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .zip(c.par_chunks(CHUNK))
            .for_each(|((a, b), c)| {
                for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                    *a = *b + 0.5 * *c;
                }
            });
    });
}

/// Adam as a person would write it in Rust (torch.optim.Adam's arithmetic).
fn adam_handwritten(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: i32,
    pool: &rayon::ThreadPool,
) {
    let (lr, b1, b2, eps) = (1e-3f32, 0.9f32, 0.999f32, 1e-8f32);
    let step = lr / (1.0 - b1.powi(t));
    let bc2 = (1.0 - b2.powi(t)).sqrt();
    pool.install(|| {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = b1 * *m + (1.0 - b1) * *g;
                    *v = b2 * *v + (1.0 - b2) * *g * *g;
                    *p -= step * *m / (v.sqrt() / bc2 + eps);
                }
            });
    });
}

/// Bytes per element of every array `opt` touches, and the compiled schedule.
fn compiled_traffic(opt: &DynOptimizer, present: &[bool]) -> Result<Traffic, Failure> {
    let p = Array1::<f32>::zeros(4);
    let mut st = opt.init::<f32>(&[&p]).map_err(fail)?;
    let program = st.program(present).map_err(fail)?;
    Ok(Traffic::of(program.schedule()))
}

struct Bench {
    threads: usize,
    /// One pool for every kernel measured, lensopt's included: two pools
    /// would compete for the cores while one of them spins down.
    pool: std::sync::Arc<rayon::ThreadPool>,
    seconds: f64,
    non_finite: lensopt::NonFinite,
    rows: Vec<Value>,
}

impl Bench {
    fn triad_gbps(&self, n: usize) -> Result<f64, Failure> {
        let mut a = zeros(n)?;
        let b = filled_vec(n, 1)?;
        let c = filled_vec(n, 2)?;
        let s = time(self.seconds, || triad(&mut a, &b, &c, &self.pool));
        Ok(16.0 * n as f64 / s / 1e9)
    }

    fn rule(&mut self, name: &str, n: usize, triad_gbps: f64) -> Result<(), Failure> {
        let opt = catalog::get(name).ok_or_else(|| fail(format!("unknown rule `{name}`")))?;
        let rule = opt.rule();
        let present = vec![true; rule.inputs.len()];
        let traffic = compiled_traffic(&opt, &present)?;
        let bytes = traffic.bytes_per_element() as f64 * n as f64;
        let mut p = filled(n, 3)?;
        let g = filled(n, 4)?;
        let mut h = filled(n, 5)?;
        h.mapv_inplace(f32::abs);
        let mut st = opt.init::<f32>(&[&p]).map_err(fail)?;
        st.set_pool(self.pool.clone());
        st.set_non_finite(self.non_finite);
        let mut inputs = Inputs::new();
        for input in &rule.inputs {
            inputs = inputs.with(&input.name, vec![&h as &dyn TensorRef<f32>]);
        }
        let buffers = 2 + rule.inputs.len() + rule.states.len();
        let mut arrays: Vec<Vec<f32>> = (0..buffers)
            .map(|b| {
                if traffic.reads.contains(&b) || traffic.writes.contains(&b) {
                    filled_vec(n, 10 + b as u32)
                } else {
                    zeros(n)
                }
            })
            .collect::<Result<_, _>>()?;
        let mut result = Ok(());
        let pool = &self.pool;
        let (s, c, ratio) = time_pair(
            self.seconds,
            || {
                if let Err(e) = st.step_with(&mut [&mut p], &[&g], &inputs) {
                    result = Err(e);
                }
            },
            || ceiling(&mut arrays, &traffic, pool),
        );
        result.map_err(fail)?;
        let gbps = bytes / s / 1e9;
        let ceiling_gbps = bytes / c / 1e9;
        self.rows.push(json!({
            "kernel": name, "n": n, "dtype": "f32", "threads": self.threads,
            "bytes_per_element": traffic.bytes_per_element(),
            "step_ms": s * 1e3,
            "gbps": gbps, "ceiling_gbps": ceiling_gbps, "ratio_to_ceiling": ratio,
            "triad_gbps": triad_gbps, "non_finite": format!("{:?}", self.non_finite).to_lowercase(),
        }));
        Ok(())
    }

    fn handwritten(&mut self, n: usize, triad_gbps: f64, adam_ceiling: f64) -> Result<(), Failure> {
        let mut p = filled_vec(n, 3)?;
        let g = filled_vec(n, 4)?;
        let mut m = zeros(n)?;
        let mut v = zeros(n)?;
        let mut t = 0;
        let s = time(self.seconds, || {
            t += 1;
            adam_handwritten(&mut p, &g, &mut m, &mut v, t, &self.pool);
        });
        let gbps = 28.0 * n as f64 / s / 1e9;
        self.rows.push(json!({
            "kernel": "adam_handwritten", "n": n, "dtype": "f32", "threads": self.threads,
            "bytes_per_element": 28, "step_ms": s * 1e3,
            "gbps": gbps, "ceiling_gbps": adam_ceiling, "ratio_to_ceiling": gbps / adam_ceiling,
            "triad_gbps": triad_gbps,
        }));
        Ok(())
    }

    fn many_small(&mut self, triad_gbps: f64) -> Result<(), Failure> {
        let (tensors, each) = (1000, 1000);
        let n = tensors * each;
        let opt = catalog::get("adam").ok_or_else(|| fail("no adam"))?;
        let mut params: Vec<Array1<f32>> = (0..tensors)
            .map(|k| filled(each, k as u32))
            .collect::<Result<_, _>>()?;
        let grads: Vec<Array1<f32>> = (0..tensors)
            .map(|k| filled(each, 7 + k as u32))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&dyn TensorRef<f32>> =
            params.iter().map(|p| p as &dyn TensorRef<f32>).collect();
        let groups = [
            Group::new(0..tensors / 2),
            Group::new(tensors / 2..tensors).set("lr", 1e-4),
        ];
        let mut st = opt.init_groups(&refs, &groups).map_err(fail)?;
        st.set_pool(self.pool.clone());
        let gs: Vec<&dyn TensorRef<f32>> = grads.iter().map(|g| g as &dyn TensorRef<f32>).collect();
        let mut result = Ok(());
        let s = time(self.seconds, || {
            let mut ps: Vec<&mut dyn TensorMut<f32>> = params
                .iter_mut()
                .map(|p| p as &mut dyn TensorMut<f32>)
                .collect();
            if let Err(e) = st.step(&mut ps, &gs) {
                result = Err(e);
            }
        });
        result.map_err(fail)?;
        // One tensor of the same total size, same rule, in the same run.
        let mut p = filled(n, 3)?;
        let g = filled(n, 4)?;
        let mut one = opt.init::<f32>(&[&p]).map_err(fail)?;
        one.set_pool(self.pool.clone());
        let s1 = time(self.seconds, || {
            let _ = one.step(&mut [&mut p], &[&g]);
        });
        let gbps = 28.0 * n as f64 / s / 1e9;
        self.rows.push(json!({
            "kernel": "adam_many_small", "tensors": tensors, "n": n, "dtype": "f32", "threads": self.threads,
            "groups": 2, "step_ms": s * 1e3, "one_tensor_step_ms": s1 * 1e3, "time_ratio_to_one_tensor": s / s1,
            "gbps": gbps, "triad_gbps": triad_gbps,
        }));
        Ok(())
    }

    fn jit_latency(&mut self, name: &str) -> Result<(), Failure> {
        let text = catalog::source(name).ok_or_else(|| fail(format!("unknown rule `{name}`")))?;
        let defaults = Rule::parse(text).map_err(fail)?.default_hypers();
        let mut samples = Vec::new();
        let mut stages = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            let rule = Rule::parse(text).map_err(fail)?;
            let parse_us = t.elapsed().as_secs_f64() * 1e6;
            let key = lensopt::jit::Key::for_step(
                std::slice::from_ref(&defaults),
                &vec![true; rule.inputs.len()],
                lensopt::Mode::Fast,
            );
            let (_, s) = lensopt::jit::compile_timed::<f32>(&rule, &key).map_err(fail)?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            stages.push((parse_us, s.optimize_us, s.codegen_us));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let parse = median(stages.iter().map(|s| s.0).collect());
        let optimize = median(stages.iter().map(|s| s.1).collect());
        let codegen = median(stages.iter().map(|s| s.2).collect());
        samples.sort_by(f64::total_cmp);
        self.rows.push(json!({
            "kernel": "jit_latency", "rule": name, "median_us": samples[50],
            "p10_us": samples[10], "p90_us": samples[90],
            "parse_us": parse, "optimize_us": optimize, "codegen_us": codegen,
        }));
        Ok(())
    }
}

/// A random circuit of `gates` AND/XOR/NOT gates with fan-out, over 64 inputs.
fn random_circuit(gates: usize, seed: u64) -> lensopt::circuit::Circuit {
    let mut rng = lensopt::diagram::plan::SplitMix(seed);
    let mut b = lensopt::circuit::CircuitBuilder::new();
    let mut wires: Vec<usize> = (0..64).map(|_| b.input()).collect();
    for _ in 0..gates {
        // Mostly recent wires, as in a layered circuit.
        let pick = |rng: &mut lensopt::diagram::plan::SplitMix, w: &[usize]| {
            let back = (rng.next_u64() % 256).min(w.len() as u64 - 1) as usize;
            w[w.len() - 1 - back]
        };
        let (x, y) = (pick(&mut rng, &wires), pick(&mut rng, &wires));
        let z = match rng.next_u64() % 3 {
            0 => b.and(x, y),
            1 => b.xor(x, y),
            _ => b.not(x),
        };
        wires.push(z);
    }
    let outs = wires[wires.len() - 16..].to_vec();
    b.finish(outs).expect("well formed")
}

/// The baseline: one `bool` per byte, one example at a time.
fn bool_forward(c: &lensopt::circuit::Circuit, x: &[bool], values: &mut [bool]) {
    use lensopt::circuit::Gate;
    for (w, g) in c.gates().iter().enumerate() {
        values[w] = match *g {
            Gate::Input(i) => x[i],
            Gate::Param(_) | Gate::Zero => false,
            Gate::One => true,
            Gate::And(a, b) => values[a] & values[b],
            Gate::Xor(a, b) => values[a] ^ values[b],
            Gate::Not(a) => !values[a],
        };
    }
}

fn bool_reverse(c: &lensopt::circuit::Circuit, values: &[bool], adj: &mut [bool]) {
    use lensopt::circuit::Gate;
    adj.fill(false);
    for o in c.outputs() {
        adj[*o] ^= true;
    }
    for (w, g) in c.gates().iter().enumerate().rev() {
        let d = adj[w];
        match *g {
            Gate::And(a, b) => {
                adj[a] ^= values[b] & d;
                adj[b] ^= values[a] & d;
            }
            Gate::Xor(a, b) => {
                adj[a] ^= d;
                adj[b] ^= d;
            }
            Gate::Not(a) => adj[a] ^= d,
            _ => {}
        }
    }
}

impl Bench {
    /// Bit-sliced circuit evaluation (one thread) against one bool per byte.
    fn circuits(&mut self) -> Result<(), Failure> {
        use lensopt::circuit::eval::Machine;
        let c = random_circuit(10_000, 17);
        let gates = c.logic_gates();
        let words = 1024;
        let examples = 64 * words;
        let mut rng = lensopt::diagram::plan::SplitMix(3);
        let inputs: Vec<Vec<u64>> = (0..c.inputs())
            .map(|_| (0..words).map(|_| rng.next_u64()).collect())
            .collect();
        let mut m = Machine::new(&c, words).map_err(|e| Failure::usage(e.to_string()))?;
        let fwd = time(self.seconds, || {
            let _ = m.forward(&c, &[], &inputs);
        });
        let dy: Vec<Vec<u64>> = c.outputs().iter().map(|_| vec![u64::MAX; words]).collect();
        let rev = time(self.seconds, || {
            let _ = m.reverse(&c, &dy);
        });
        // The baseline on fewer examples (it is slow), scaled per example.
        let few = 2048;
        let xs: Vec<Vec<bool>> = (0..few)
            .map(|_| (0..64).map(|_| rng.next_u64() & 1 == 1).collect())
            .collect();
        let mut values = vec![false; c.gates().len()];
        let mut adj = vec![false; c.gates().len()];
        let base_fwd = time(self.seconds, || {
            for x in &xs {
                bool_forward(&c, x, &mut values);
            }
        });
        let base_rev = time(self.seconds, || {
            for x in &xs {
                bool_forward(&c, x, &mut values);
                bool_reverse(&c, &values, &mut adj);
            }
        }) - base_fwd;
        // The same circuit compiled to bitwise code by cranelift.
        let started = Instant::now();
        let compiled = lensopt::circuit::compiled::CompiledCircuit::new(&c).map_err(fail)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let cfwd = time(self.seconds, || {
            let _ = compiled.forward(&[], &inputs);
        });
        let crev = time(self.seconds, || {
            let _ = compiled.reverse(&[], &inputs, &dy);
        });
        for (kernel, t, b) in [
            ("circuit_forward", cfwd, base_fwd),
            ("circuit_reverse", crev, base_rev.max(1e-9)),
            ("circuit_forward_interpreted", fwd, base_fwd),
            ("circuit_reverse_interpreted", rev, base_rev.max(1e-9)),
        ] {
            let compile = if kernel.ends_with("interpreted") {
                0.0
            } else {
                compile_ms
            };
            self.rows.push(json!({
                "kernel": kernel, "gates": gates, "examples": examples, "threads": 1,
                "gate_evals_per_s": gates as f64 * examples as f64 / t,
                "baseline_gate_evals_per_s": gates as f64 * few as f64 / b,
                "compile_ms": compile,
            }));
        }
        Ok(())
    }
}

fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs `lensopt bench`.
pub fn run(args: &Args) -> Result<(), Failure> {
    check_seconds(args.seconds)?;
    for &n in &args.sizes {
        check_size(n)?;
    }
    match args.device.as_str() {
        "cpu" => {}
        "cuda" => return gpu(args),
        other => {
            return Err(Failure::usage(format!(
                "unknown device `{other}`: cpu or cuda"
            )))
        }
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(fail)?,
    );
    let rules: Vec<String> = if args.rules.is_empty() {
        ["adam", "adamw", "lion", "adan", "sophiah"]
            .map(String::from)
            .to_vec()
    } else {
        args.rules.clone()
    };
    let opts: Vec<DynOptimizer> = rules
        .iter()
        .map(|name| catalog::get(name).ok_or_else(|| fail(format!("unknown rule `{name}`"))))
        .collect::<Result<_, _>>()?;
    let sizes: Vec<usize> = if args.sizes.is_empty() {
        let mut s = vec![1_000_000, 10_000_000];
        // Adan touches 11 arrays; keep 1e8 for machines with room for it and the ceiling's copies.
        if available_memory().is_some_and(|m| m > 2 * 12 * 4 * 100_000_000) {
            s.push(100_000_000);
        }
        s
    } else {
        args.sizes.clone()
    };
    for &n in &sizes {
        for (name, opt) in rules.iter().zip(&opts) {
            check_memory(n, name, arrays_held(opt))?;
        }
    }
    let mut bench = Bench {
        threads,
        pool,
        seconds: args.seconds,
        non_finite: lensopt::NonFinite::parse(&args.non_finite).ok_or_else(|| {
            Failure::usage(format!(
                "--non-finite: `{}` is not refuse, skip or unchecked",
                args.non_finite
            ))
        })?,
        rows: Vec::new(),
    };
    for &n in &sizes {
        let triad_gbps = bench.triad_gbps(n)?;
        for name in &rules {
            bench.rule(name, n, triad_gbps)?;
            if !args.json {
                print_row(bench.rows.last().expect("a row"), bench.rows.len() == 1);
            }
        }
        let adam_ceiling = bench
            .rows
            .iter()
            .rev()
            .find(|r| r["kernel"] == "adam" && r["n"] == n)
            .map_or(f64::NAN, |r| r["ceiling_gbps"].as_f64().unwrap_or(f64::NAN));
        bench.handwritten(n, triad_gbps, adam_ceiling)?;
        if !args.json {
            print_row(bench.rows.last().expect("a row"), false);
        }
    }
    let triad_gbps = bench.triad_gbps(1_000_000)?;
    bench.many_small(triad_gbps)?;
    for name in ["adam", "adamw", "lion", "adan", "sophiah", "lamb"] {
        bench.jit_latency(name)?;
    }
    bench.circuits()?;
    if args.json {
        for row in &bench.rows {
            outln!("{row}");
        }
    } else {
        for row in bench
            .rows
            .iter()
            .filter(|r| r["kernel"] == "adam_many_small")
        {
            outln!(
                "\nadam_many_small: {} tensors, {} elements in all, 2 groups: {:.3} ms per step, {:.2}x the time of one tensor of the same size ({:.3} ms)",
                row["tensors"], row["n"], row["step_ms"].as_f64().unwrap_or(0.0),
                row["time_ratio_to_one_tensor"].as_f64().unwrap_or(0.0), row["one_tensor_step_ms"].as_f64().unwrap_or(0.0)
            );
        }
        for row in bench.rows.iter().filter(|r| {
            r["kernel"]
                .as_str()
                .is_some_and(|k| k.starts_with("circuit_"))
        }) {
            let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
            outln!(
                "\n{}: {} gates x {} examples, 1 thread: {:.2e} gate evaluations/s (one bool per byte: {:.2e}, {:.0}x)",
                row["kernel"].as_str().unwrap_or(""),
                row["gates"],
                row["examples"],
                f("gate_evals_per_s"),
                f("baseline_gate_evals_per_s"),
                f("gate_evals_per_s") / f("baseline_gate_evals_per_s")
            );
        }
        outln!("\nJIT latency (rule text -> callable kernels, median of 100):");
        for row in bench.rows.iter().filter(|r| r["kernel"] == "jit_latency") {
            let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
            outln!(
                "  {:<8} {:>6.0} us (p10 {:.0}, p90 {:.0}; parse {:.0}, e-graph {:.0}, cranelift {:.0})",
                row["rule"].as_str().unwrap_or(""),
                f("median_us"),
                f("p10_us"),
                f("p90_us"),
                f("parse_us"),
                f("optimize_us"),
                f("codegen_us")
            );
        }
    }
    Ok(())
}

fn print_row(row: &Value, header: bool) {
    if header {
        outln!(
            "{:<18} {:>11} {:>7} {:>5} {:>9} {:>8} {:>9} {:>7} {:>9}",
            "kernel",
            "n",
            "threads",
            "B/el",
            "step ms",
            "GB/s",
            "ceiling",
            "ratio",
            "triad"
        );
    }
    let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    outln!(
        "{:<18} {:>11} {:>7} {:>5} {:>9.3} {:>8.1} {:>9.1} {:>7.2} {:>9.1}",
        row["kernel"].as_str().unwrap_or(""),
        row["n"],
        row["threads"],
        row["bytes_per_element"],
        f("step_ms"),
        f("gbps"),
        f("ceiling_gbps"),
        f("ratio_to_ceiling"),
        f("triad_gbps")
    );
}
