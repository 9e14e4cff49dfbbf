//! The workloads of `lensopt bench`: each catalog rule's step against its
//! ceiling, the hand-written Adam, 1,000 small tensors in two groups beside
//! one tensor of the same size, the JIT's latency (rule text to callable
//! kernels), and Adam on the GPU against a device copy (`--device cuda`).
//! Each adds its JSON rows to [`Bench`].

use super::ceilings::{adam_handwritten, ceiling, compiled_traffic};
use super::harness::{fail, filled, filled_vec, time, time_pair, zeros, Bench};
use super::Args;
use crate::Failure;
use lensopt::ParseRule;
use lensopt::{catalog, Group, Inputs, Optimizer, Rule, TensorMut, TensorRef};
use ndarray::Array1;
use serde_json::json;
use std::time::Instant;

/// `lensopt bench --device cuda`: Adam's step on the GPU in GB/s against
/// the best device copy measured in the same run and the bandwidth the
/// device reports; the fixed cost of a step (one small tensor, waited for
/// and queued); and Adam over GPT-2 small's 148 tensors and over one large
/// tensor beside 300 small ones, with the blocks launched.
#[cfg(feature = "cuda")]
pub(super) fn gpu(args: &Args) -> Result<(), Failure> {
    use lensopt::cuda::{copy_seconds, Device};
    let dev = std::sync::Arc::new(Device::new(0).map_err(fail)?);
    let sizes = if args.sizes.is_empty() {
        vec![10_000_000, 100_000_000]
    } else {
        args.sizes.clone()
    };
    let peak = dev.peak_gbps();
    for n in sizes {
        let (s, _) = gpu_adam(&dev, &[n], args.seconds)?;
        let c = copy_seconds(&dev, n, 20).map_err(fail)?;
        let gbps = 28.0 * n as f64 / s / 1e9;
        let copy_gbps = 8.0 * (n / 4 * 4) as f64 / c / 1e9;
        let row = json!({
            "kernel": "adam", "backend": "cuda", "device": "cuda", "gpu": dev.name(), "n": n, "dtype": "f32",
            "step_ms": s * 1e3, "gbps": gbps, "copy_gbps": copy_gbps, "ratio_to_copy": gbps / copy_gbps,
            "peak_gbps": peak, "ratio_to_peak": peak.map(|p| gbps / p),
        });
        outln!("{row}");
    }
    // The fixed cost: one tensor of 1,024 elements, each step waited for,
    // and 1,000 steps queued back to back.
    let (waited, queued) = gpu_adam(&dev, &[1024], args.seconds)?;
    outln!(
        "{}",
        json!({"kernel": "adam_fixed_cost", "backend": "cuda", "device": "cuda", "gpu": dev.name(), "n": 1024,
            "step_us_waited": waited * 1e6, "step_us_queued": queued * 1e6})
    );
    for (name, lens) in [
        ("adam_gpt2_small_tensors", gpt2_small_lengths()),
        ("adam_one_large_300_small", {
            let mut v = vec![10_000_000];
            v.extend([1000; 300]);
            v
        }),
    ] {
        let (s, _) = gpu_adam(&dev, &lens, args.seconds)?;
        let total: usize = lens.iter().sum();
        let map = lensopt_codegen::ptx::LaunchMap::new(&lens).map_err(fail)?;
        // The former launch: every tensor as many blocks as the largest needed (capped at 1,024).
        let largest = lens.iter().copied().max().unwrap_or(0);
        let uniform = lens.len() * largest.div_ceil(lensopt_codegen::ptx::BLOCK).min(1024);
        outln!(
            "{}",
            json!({"kernel": name, "backend": "cuda", "device": "cuda", "gpu": dev.name(), "tensors": lens.len(),
                "n": total, "dtype": "f32", "step_ms": s * 1e3, "gbps": 28.0 * total as f64 / s / 1e9,
                "blocks": map.blocks(), "blocks_uniform_grid": uniform})
        );
    }
    Ok(())
}

/// Adam on the GPU over tensors of `lens`: the best time of one step waited
/// for, and the time per step of a queue of steps waited for once.
#[cfg(feature = "cuda")]
fn gpu_adam(
    dev: &std::sync::Arc<lensopt::cuda::Device>,
    lens: &[usize],
    seconds: f64,
) -> Result<(f64, f64), Failure> {
    use super::harness::check_memory;
    use lensopt::cuda::GpuStepper;
    let total: usize = lens.iter().sum();
    check_memory(total, "adam on the GPU (host copies)", 3)?;
    let mut ps = Vec::new();
    let mut gs = Vec::new();
    for (k, &n) in lens.iter().enumerate() {
        ps.push(
            dev.upload(&filled_vec(n, 3 + 2 * k as u32)?)
                .map_err(fail)?,
        );
        gs.push(
            dev.upload(&filled_vec(n, 4 + 2 * k as u32)?)
                .map_err(fail)?,
        );
    }
    let adam = catalog::get("adam").ok_or_else(|| fail("no adam"))?;
    let mut st =
        GpuStepper::new(dev.clone(), &adam, &ps.iter().collect::<Vec<_>>()).map_err(fail)?;
    let grads: Vec<_> = gs.iter().collect();
    let mut result = Ok(());
    let waited = time(seconds, || {
        let mut params: Vec<_> = ps.iter_mut().collect();
        if let Err(e) = st
            .step(&mut params, &grads)
            .and_then(|()| dev.synchronize())
        {
            result = Err(e);
        }
    });
    result.map_err(fail)?;
    let steps = 200;
    let start = Instant::now();
    for _ in 0..steps {
        let mut params: Vec<_> = ps.iter_mut().collect();
        st.step(&mut params, &grads).map_err(fail)?;
    }
    dev.synchronize().map_err(fail)?;
    Ok((waited, start.elapsed().as_secs_f64() / steps as f64))
}

/// The parameter tensors of GPT-2 small (124M parameters, 148 tensors):
/// token and position embeddings, 12 blocks of layer norms, attention and
/// MLP weights and biases, the final layer norm.
#[cfg(feature = "cuda")]
fn gpt2_small_lengths() -> Vec<usize> {
    let d = 768;
    let mut v = vec![50_257 * d, 1024 * d];
    for _ in 0..12 {
        v.extend([
            d,
            d,
            d * 3 * d,
            3 * d,
            d * d,
            d,
            d,
            d,
            d * 4 * d,
            4 * d,
            4 * d * d,
            d,
        ]);
    }
    v.extend([d, d]);
    v
}

#[cfg(not(feature = "cuda"))]
pub(super) fn gpu(_: &Args) -> Result<(), Failure> {
    Err(Failure::usage(
        "this lensopt was built without the `cuda` feature: cargo run --release --features cuda --bin lensopt -- bench --device cuda",
    ))
}

impl Bench {
    /// Catalog rule `name` on `n` elements, on its compiled-in kernels
    /// (`compiled_in`) or the JIT's, against its ceiling.
    pub(super) fn rule(
        &mut self,
        name: &str,
        n: usize,
        triad_gbps: f64,
        compiled_in: bool,
    ) -> Result<(), Failure> {
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
        st.set_compiled_kernels(compiled_in);
        let backend = st.program(&present).map_err(fail)?.origin().name();
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
            "kernel": name, "backend": backend, "n": n, "dtype": "f32", "threads": self.threads,
            "bytes_per_element": traffic.bytes_per_element(),
            "step_ms": s * 1e3,
            "gbps": gbps, "ceiling_gbps": ceiling_gbps, "ratio_to_ceiling": ratio,
            "triad_gbps": triad_gbps, "non_finite": format!("{:?}", self.non_finite).to_lowercase(),
        }));
        Ok(())
    }

    /// Catalog rule `name`'s stepper over `n` elements on the bench's pool,
    /// with a parameter, a gradient and a positive extra input, the rule's
    /// input names, and where its kernels come from.
    fn policy_case(&self, name: &str, n: usize) -> Result<PolicyCase, Failure> {
        let opt = catalog::get(name).ok_or_else(|| fail(format!("unknown rule `{name}`")))?;
        let p = filled(n, 3)?;
        let g = filled(n, 4)?;
        let mut h = filled(n, 5)?;
        h.mapv_inplace(f32::abs);
        let mut stepper = opt.init::<f32>(&[&p]).map_err(fail)?;
        stepper.set_pool(self.pool.clone());
        let inputs: Vec<String> = opt.rule().inputs.iter().map(|i| i.name.clone()).collect();
        let backend = stepper
            .program(&vec![true; inputs.len()])
            .map_err(fail)?
            .origin()
            .name();
        Ok(PolicyCase {
            stepper,
            p,
            g,
            h,
            inputs,
            backend,
        })
    }

    /// What the default non-finite policy costs: catalog rule `name`'s step
    /// on `n` elements with the gradient scan (`refuse`) against the same
    /// stepper and buffers without it (`unchecked`), interleaved.
    pub(super) fn scan_cost(&mut self, name: &str, n: usize) -> Result<(), Failure> {
        let PolicyCase {
            stepper: st,
            p,
            g,
            h,
            inputs: names,
            backend,
        } = self.policy_case(name, n)?;
        let inputs = every_input(&names, &h);
        let state = std::cell::RefCell::new((st, p, Ok(())));
        let step = |policy: lensopt::NonFinite| {
            let mut state = state.borrow_mut();
            let (st, p, result) = &mut *state;
            st.set_non_finite(policy);
            if let Err(e) = st.step_with(&mut [p], &[&g], &inputs) {
                *result = Err(e);
            }
        };
        let (refuse, unchecked, _) = time_pair(
            self.seconds,
            || step(lensopt::NonFinite::Refuse),
            || step(lensopt::NonFinite::Unchecked),
        );
        let (_, _, result) = state.into_inner();
        result.map_err(fail)?;
        self.rows.push(json!({
            "kernel": "scan_cost", "rule": name, "backend": backend, "n": n, "dtype": "f32",
            "threads": self.threads, "refuse_ms": refuse * 1e3, "unchecked_ms": unchecked * 1e3,
            "overhead": refuse / unchecked - 1.0,
        }));
        Ok(())
    }

    /// What the default policy costs when the check rides on a pass that
    /// writes the gradients anyway: unscaling them (by 1/2 and 2 in turn,
    /// exact) as after a loss-scaled backward pass, then rule `name`'s
    /// step. Checked: [`lensopt::CheckedGradients::scale`] and
    /// `step_checked` under `refuse`; plain: the same pass without the
    /// check and the step `unchecked`. Interleaved, same stepper.
    pub(super) fn scan_folded(&mut self, name: &str, n: usize) -> Result<(), Failure> {
        let PolicyCase {
            stepper: st,
            p,
            g,
            h,
            inputs: names,
            backend,
        } = self.policy_case(name, n)?;
        let inputs = every_input(&names, &h);
        let pool = self.pool.clone();
        let state = std::cell::RefCell::new((st, p, g, 0.5f32, Ok(())));
        let pipeline = |checked: bool| {
            let mut state = state.borrow_mut();
            let (st, p, g, factor, result) = &mut *state;
            *factor = 1.0 / *factor;
            let stepped = if checked {
                st.set_non_finite(lensopt::NonFinite::Refuse);
                let factor = *factor;
                pool.install(|| lensopt::CheckedGradients::scale(vec![g], factor))
                    .and_then(|g| st.step_checked_with(&mut [p], &g, &inputs))
            } else {
                st.set_non_finite(lensopt::NonFinite::Unchecked);
                let xs = g.as_slice_mut().expect("contiguous");
                pool.install(|| scale_plain(xs, *factor));
                st.step_with(&mut [p], &[&*g], &inputs)
            };
            if let Err(e) = stepped {
                *result = Err(e);
            }
        };
        let (checked, plain, _) = time_pair(self.seconds, || pipeline(true), || pipeline(false));
        let (.., result) = state.into_inner();
        result.map_err(fail)?;
        self.rows.push(json!({
            "kernel": "scan_folded", "rule": name, "backend": backend, "n": n, "dtype": "f32",
            "threads": self.threads, "pass": "unscale", "checked_ms": checked * 1e3,
            "unchecked_ms": plain * 1e3, "overhead": checked / plain - 1.0,
        }));
        Ok(())
    }

    /// The hand-written Adam on `n` elements, against Adam's ceiling.
    pub(super) fn handwritten(
        &mut self,
        n: usize,
        triad_gbps: f64,
        adam_ceiling: f64,
    ) -> Result<(), Failure> {
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
            "kernel": "adam_handwritten", "backend": "rust", "n": n, "dtype": "f32", "threads": self.threads,
            "bytes_per_element": 28, "step_ms": s * 1e3,
            "gbps": gbps, "ceiling_gbps": adam_ceiling, "ratio_to_ceiling": gbps / adam_ceiling,
            "triad_gbps": triad_gbps,
        }));
        Ok(())
    }

    /// Adam on 1,000 tensors of 1,000 elements in two groups, and on one
    /// tensor of the same total size.
    pub(super) fn many_small(&mut self, triad_gbps: f64) -> Result<(), Failure> {
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
        let backend = st.program(&[]).map_err(fail)?.origin().name();
        self.rows.push(json!({
            "kernel": "adam_many_small", "backend": backend, "tensors": tensors, "n": n, "dtype": "f32", "threads": self.threads,
            "groups": 2, "step_ms": s * 1e3, "one_tensor_step_ms": s1 * 1e3, "time_ratio_to_one_tensor": s / s1,
            "gbps": gbps, "triad_gbps": triad_gbps,
        }));
        Ok(())
    }

    /// Rule text to callable kernels, 100 times: median, p10, p90, stages;
    /// and the median from the on-disk cache, as a second run starts.
    pub(super) fn jit_latency(&mut self, name: &str) -> Result<(), Failure> {
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
        let cached = cached_latency(text, &defaults)?;
        self.rows.push(json!({
            "kernel": "jit_latency", "rule": name, "median_us": samples[50],
            "p10_us": samples[10], "p90_us": samples[90],
            "parse_us": parse, "optimize_us": optimize, "codegen_us": codegen,
            "cached_median_us": cached,
        }));
        Ok(())
    }
}

/// Median time, over 100 runs, from rule text to callable kernels when an
/// earlier run left the program in the on-disk cache: parse, then load
/// (a fresh engine each time, a private cache directory removed after).
fn cached_latency(text: &str, defaults: &[lensopt::HyperValue]) -> Result<f64, Failure> {
    use lensopt::disk_cache::DiskCache;
    use lensopt::jit::{Engine, Key};
    let dir = std::env::temp_dir().join(format!("lensopt-bench-cache-{}", std::process::id()));
    let cache = DiskCache::at(&dir);
    let mut samples = Vec::new();
    let mut result = Ok(());
    for round in 0..101 {
        let t = Instant::now();
        let rule = Rule::parse(text).map_err(fail)?;
        let key = Key::for_step(
            &[defaults.to_vec()],
            &vec![true; rule.inputs.len()],
            lensopt::Mode::Fast,
        );
        let engine = Engine::new(1).with_disk_cache(Some(cache.clone()));
        let program = engine
            .program_from::<f32>(&rule, &key, false)
            .map_err(fail)?;
        let elapsed = t.elapsed().as_secs_f64() * 1e6;
        // The first round compiles and stores; the others must load.
        if round > 0 {
            if program.origin() != lensopt::Origin::Cached {
                result = Err(fail("the on-disk cache did not serve the program"));
            }
            samples.push(elapsed);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// What [`Bench::policy_case`] sets up.
struct PolicyCase {
    stepper: lensopt::Stepper<f32>,
    p: Array1<f32>,
    g: Array1<f32>,
    h: Array1<f32>,
    inputs: Vec<String>,
    backend: &'static str,
}

/// `h` as every input named in `names`.
fn every_input<'a>(names: &[String], h: &'a Array1<f32>) -> Inputs<'a, f32> {
    names.iter().fold(Inputs::new(), |inputs, name| {
        inputs.with(name, vec![h as &dyn TensorRef<f32>])
    })
}

/// `xs *= factor` on the current pool, in the chunks the checked pass
/// uses, with the widest vectors the CPU has: that pass without its check.
fn scale_plain(xs: &mut [f32], factor: f32) {
    use rayon::prelude::*;
    fn scale(xs: &mut [f32], factor: f32) {
        for x in xs {
            *x *= factor;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn scale_avx512(xs: &mut [f32], factor: f32) {
        scale(xs, factor)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn scale_avx2(xs: &mut [f32], factor: f32) {
        scale(xs, factor)
    }
    xs.par_chunks_mut(1 << 16).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { scale_avx512(c, factor) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { scale_avx2(c, factor) };
            }
        }
        scale(c, factor)
    });
}
