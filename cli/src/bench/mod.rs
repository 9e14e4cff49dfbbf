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
//!
//! With `--matrix`, the matrix rules instead ([`matrix`]).
//!
//! The command's parts: [`harness`] runs and times (settings, timing,
//! buffers, limits), [`ceilings`] holds the reference kernels the steps are
//! measured against, [`workloads`] the optimizer steps measured (CPU and
//! GPU) and the JIT's latency, [`circuits`] the bit-sliced circuit
//! throughput, [`matrix`] the matrix rules against their GEMMs, and
//! [`report`] prints the table or the JSON lines.

mod ceilings;
mod circuits;
mod harness;
mod matrix;
mod report;
mod workloads;

use crate::Failure;
use harness::{arrays_held, check_memory, check_seconds, check_size, fail, Bench};
use lensopt::{catalog, DynOptimizer};

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
    /// Measure the matrix rules instead: Muon (f32, and bfloat16 as
    /// `muon_bf16`), Shampoo, GaLore, SOAP and Adafactor steps on 1024 x 1024
    /// and 4096 x 1024 f32 matrices against the GEMMs (or, for Adafactor, the
    /// plain loop) they cannot avoid, timed in the same run.
    #[arg(long)]
    matrix: bool,
    /// Where the catalog rules' kernels come from: `aot` (compiled into
    /// lensopt by `optimizer!`, what a step uses) and/or `jit` (cranelift,
    /// what a rule written as text gets); one row per rule and backend.
    #[arg(long, value_delimiter = ',', default_value = "aot")]
    backend: Vec<String>,
}

/// Runs `lensopt bench`.
pub fn run(args: &Args) -> Result<(), Failure> {
    check_seconds(args.seconds)?;
    for &n in &args.sizes {
        check_size(n)?;
    }
    match args.device.as_str() {
        "cpu" => {}
        "cuda" => return workloads::gpu(args),
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
    let policy = lensopt::NonFinite::parse(&args.non_finite).ok_or_else(|| {
        Failure::usage(format!(
            "--non-finite: `{}` is not refuse, skip or unchecked",
            args.non_finite
        ))
    })?;
    if args.matrix {
        let mut bench = Bench {
            threads,
            pool,
            seconds: args.seconds,
            non_finite: policy,
            rows: Vec::new(),
        };
        bench.matrix_rules()?;
        report::print_end(&bench.rows, args.json);
        return Ok(());
    }
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
        if harness::available_memory().is_some_and(|m| m > 2 * 12 * 4 * 100_000_000) {
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
        non_finite: policy,
        rows: Vec::new(),
    };
    let mut compiled_in = Vec::new();
    for backend in &args.backend {
        compiled_in.push(match backend.as_str() {
            "aot" => true,
            "jit" => false,
            other => {
                return Err(Failure::usage(format!(
                    "--backend: `{other}` is not aot or jit"
                )))
            }
        });
    }
    // `aot` rows measure the compiled-in kernels whatever the build (in a
    // debug build of this tool they are unoptimized, and say so by their speed).
    lensopt::aot::serve_unoptimized(true);
    for &n in &sizes {
        let triad_gbps = bench.triad_gbps(n)?;
        for name in &rules {
            for &compiled in &compiled_in {
                bench.rule(name, n, triad_gbps, compiled)?;
                if !args.json {
                    report::print_row(bench.rows.last().expect("a row"), bench.rows.len() == 1);
                }
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
            report::print_row(bench.rows.last().expect("a row"), false);
        }
        for name in &rules {
            bench.scan_cost(name, n)?;
            bench.scan_folded(name, n)?;
        }
    }
    let triad_gbps = bench.triad_gbps(1_000_000)?;
    bench.many_small(triad_gbps)?;
    for name in ["adam", "adamw", "lion", "adan", "sophiah", "lamb"] {
        bench.jit_latency(name)?;
    }
    bench.circuits()?;
    report::print_end(&bench.rows, args.json);
    Ok(())
}
