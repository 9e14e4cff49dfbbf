//! Sharded optimizer state across ranks, checked: every catalog rule's
//! sharded step against one process's, bit for bit, then data-parallel
//! training of a digits MLP on the ranks against one process with the whole
//! batch. Prints one line per case:
//!
//! ```text
//! ranks=N rule=NAME identical=true|false
//! ranks=N task=digits_data_parallel steps=S max_param_diff=... test_accuracy=... one_process_test_accuracy=... within_tolerance=true|false
//! ```
//!
//!     mpirun -n 4 target/release/examples/dist_check      # built with --features mpi
//!     cargo run --release --example dist_check -- --threads 4   # ranks as threads
//!     cargo run --release --features nccl --example dist_check -- --nccl 1   # a rank per GPU
//!
//! Exits 1 when a case fails. `--fault` instead makes rank 1 leave in the
//! middle of training: under MPI it exits (and `mpirun` must end the job),
//! with threads its end of the group is dropped and rank 0's next step must
//! fail, naming it (`ranks=N task=rank_dies_mid_step stopped=true`).
//! `--bench [N]` instead times a sharded Adam
//! step on N elements (default 1e7) and prints one JSON row: the step's
//! time, the bytes this rank sent, and the alpha-beta model of the step
//! (latency and bandwidth measured in the same run, plus one process's
//! step on the shard).

use lensopt::diagram::plan::{Model, SplitMix};
use lensopt::dist::check::sharded_matches_one_process;
use lensopt::dist::{all_reduce_f64, Collective, DataParallel, Metered, ShardedStepper, Threads};
use lensopt::loss::{accuracy, one_hot, SoftmaxCrossEntropy};
use lensopt::train::Trainer;
use lensopt::Optimizer;
use ndarray::Array2;
use std::sync::Arc;
use std::time::Duration;

/// Rules compared for several steps; the data-parallel model's steps and batch.
const STEPS: u64 = 3;
const TRAIN_STEPS: usize = 60;
const BATCH: usize = 64;
/// Parameters of data-parallel training may differ from one process's by
/// the rounding of the gradient's sum over the batch, split differently.
const TOLERANCE: f32 = 1e-3;

/// Runs every case on this rank; returns this rank's lines (rank 0 prints) and whether all passed.
fn run(comm: Arc<dyn Collective>) -> Result<(Vec<String>, bool), Box<dyn std::error::Error>> {
    let ranks = comm.size();
    let mut lines = Vec::new();
    let mut all_ok = true;
    for name in lensopt::catalog::all_names() {
        let mine = match sharded_matches_one_process::<f32>(name, comm.clone(), STEPS) {
            Ok(None) => 1.0,
            Ok(Some(what)) => {
                eprintln!("rank {}: {name}: {what} differs", comm.rank());
                0.0
            }
            Err(e) => {
                eprintln!("rank {}: {name}: {e}", comm.rank());
                0.0
            }
        };
        let agreed = all_reduce_f64(comm.as_ref(), &[mine], f64::min)?[0] == 1.0;
        all_ok &= agreed;
        lines.push(format!("ranks={ranks} rule={name} identical={agreed}"));
    }
    let (line, ok) = data_parallel_digits(comm)?;
    all_ok &= ok;
    lines.push(line);
    Ok((lines, all_ok))
}

/// Trains a 64 -> 32 -> 10 MLP with Adam: on the ranks, each with its
/// slice of every batch, and on one process with the whole batch.
fn data_parallel_digits(
    comm: Arc<dyn Collective>,
) -> Result<(String, bool), Box<dyn std::error::Error>> {
    let ranks = comm.size();
    let data = lensopt::data::digits()?;
    let (train, test) = data.split(0.2, 2024);
    let scale = |x: &Array2<f64>| x.mapv(|v| (v / 16.0) as f32);
    let (x_train, x_test) = (scale(&train.features), scale(&test.features));
    let y_train: Array2<f32> = one_hot(&train.labels, 10);
    let diagram = lensopt::diagram!(dense(hidden, 64, 32) >> relu(32) >> dense(out, 32, 10));
    let adam = lensopt::catalog::Adam::default().lr(1e-2);
    let mut sharded = DataParallel::new(
        Model::<f32>::new(&diagram, 3)?,
        SoftmaxCrossEntropy,
        &adam,
        comm.clone(),
    )?;
    let mut single = Trainer::new(Model::<f32>::new(&diagram, 3)?, SoftmaxCrossEntropy, &adam)?;
    let per_rank = BATCH / ranks;
    let mut rng = SplitMix(5);
    let mut order = rng.permutation(train.labels.len());
    for step in 0..TRAIN_STEPS {
        if (step + 1) * BATCH > order.len() {
            order = rng.permutation(train.labels.len());
        }
        let at = (step * BATCH) % (order.len() - order.len() % BATCH);
        let batch = &order[at..at + per_rank * ranks];
        let rows = |idx: &[usize], m: &Array2<f32>| {
            Array2::from_shape_fn((idx.len(), m.ncols()), |(i, j)| m[(idx[i], j)])
        };
        let mine = &batch[comm.rank() * per_rank..(comm.rank() + 1) * per_rank];
        sharded.step(&rows(mine, &x_train), &rows(mine, &y_train))?;
        single.step(&rows(batch, &x_train), &rows(batch, &y_train))?;
    }
    let max_diff = sharded
        .model
        .params
        .iter()
        .zip(&single.model.params)
        .flat_map(|(a, b)| {
            a.value
                .iter()
                .zip(b.value.iter())
                .map(|(x, y)| (x - y).abs())
        })
        .fold(0.0f32, f32::max);
    let test_accuracy = accuracy(&sharded.model.predict(&x_test)?, &test.labels);
    let one = accuracy(&single.model.predict(&x_test)?, &test.labels);
    let ok = max_diff <= TOLERANCE;
    Ok((
        format!(
            "ranks={ranks} task=digits_data_parallel steps={TRAIN_STEPS} max_param_diff={max_diff:.2e} test_accuracy={test_accuracy:.4} one_process_test_accuracy={one:.4} within_tolerance={ok}"
        ),
        ok,
    ))
}

/// The median of `f`'s times over `runs` runs, in seconds.
fn median(
    runs: usize,
    mut f: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = std::time::Instant::now();
        f()?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Times a sharded Adam step on `n` f32 elements, and the alpha-beta model
/// of the same step: `2 (R - 1) (alpha + beta 4n / R)` for the gradients'
/// reduce-scatter and the parameters' all-gather, plus one process's step
/// on a shard of `n / R` elements.
fn bench(
    comm: Arc<dyn Collective>,
    n: usize,
) -> Result<(Vec<String>, bool), Box<dyn std::error::Error>> {
    let ranks = comm.size();
    let metered = Arc::new(Metered::new(comm.clone()));
    let shared: Arc<dyn Collective> = metered.clone();
    let adam = lensopt::catalog::get("adam").ok_or("no adam")?;
    let mut p = ndarray::Array1::<f32>::from_elem(n, 0.5).into_dyn();
    let g = ndarray::Array1::<f32>::from_elem(n, 0.01).into_dyn();
    let mut stepper = ShardedStepper::new(&adam, &[&p], shared.clone())?;
    stepper.step(&mut [&mut p], &[&g])?; // compiles and touches every page
    let before = metered.sent();
    let steps = 5;
    let step_s = median(steps, || Ok(stepper.step(&mut [&mut p], &[&g])?))?;
    let bytes_per_step = (metered.sent() - before) / steps as u64;
    // Latency and bandwidth of this transport, on the path a step takes:
    // all-gathers of 8 bytes and of 8 MiB a rank into a known layout.
    let small = vec![0u8; 8];
    let large = vec![0u8; 8 << 20];
    let mut out_small = vec![0u8; 8 * ranks];
    let mut out_large = vec![0u8; (8 << 20) * ranks];
    let t_small = median(9, || {
        Ok(comm.all_gather_into(&small, &vec![8; ranks], &mut out_small)?)
    })?;
    let t_large = median(5, || {
        Ok(comm.all_gather_into(&large, &vec![8 << 20; ranks], &mut out_large)?)
    })?;
    let hops = (ranks - 1).max(1) as f64;
    let alpha = t_small / hops;
    let beta = ((t_large - t_small) / hops / large.len() as f64).max(0.0);
    // One process's step on one shard.
    let shard = n.div_ceil(ranks);
    let mut sp = ndarray::Array1::<f32>::from_elem(shard, 0.5).into_dyn();
    let sg = ndarray::Array1::<f32>::from_elem(shard, 0.01).into_dyn();
    let mut local = adam.init(&[&sp])?;
    local.step(&mut [&mut sp], &[&sg])?;
    let compute_s = median(steps, || Ok(local.step(&mut [&mut sp], &[&sg])?))?;
    let model_comm_s = if ranks > 1 {
        2.0 * (ranks - 1) as f64 * (alpha + beta * 4.0 * n as f64 / ranks as f64)
    } else {
        0.0
    };
    let row = serde_json::json!({
        "kernel": "dist_step", "rule": "adam", "backend": if std::env::args().any(|a| a == "--threads") { "threads" } else { "mpi" },
        "ranks": ranks, "n": n, "step_ms": step_s * 1e3,
        "bytes_sent_per_rank": bytes_per_step,
        "model_bytes_sent_per_rank": if ranks > 1 { 2 * (ranks - 1) * 4 * n / ranks } else { 0 },
        "alpha_us": alpha * 1e6, "bandwidth_gbps": if beta > 0.0 { 1e-9 / beta } else { f64::INFINITY },
        "compute_ms": compute_s * 1e3, "model_comm_ms": model_comm_s * 1e3,
        "model_step_ms": (compute_s + model_comm_s) * 1e3,
    });
    Ok((vec![row.to_string()], true))
}

/// Rank 1 leaves after the first step; rank 0 tries a second.
fn fault(comm: Arc<dyn Collective>) -> Result<(Vec<String>, bool), Box<dyn std::error::Error>> {
    let adam = lensopt::catalog::get("adam").ok_or("no adam")?;
    let mut p = ndarray::Array1::<f32>::from_elem(300_000, 0.5).into_dyn();
    let g = ndarray::Array1::<f32>::from_elem(300_000, 0.01).into_dyn();
    let mut stepper = ShardedStepper::new(&adam, &[&p], comm.clone())?;
    stepper.step(&mut [&mut p], &[&g])?;
    if comm.rank() == 1 {
        if std::env::args().any(|a| a == "--threads") {
            return Ok((Vec::new(), true)); // this rank's end of the group goes
        }
        eprintln!("rank 1 exits in the middle of training");
        std::process::exit(3);
    }
    let started = std::time::Instant::now();
    let stopped = stepper.step(&mut [&mut p], &[&g]);
    let line = format!(
        "ranks={} task=rank_dies_mid_step stopped={} seconds={:.3} error={}",
        comm.size(),
        stopped.is_err() || comm.size() == 1,
        started.elapsed().as_secs_f64(),
        stopped
            .err()
            .map_or("none".to_string(), |e| format!("{e:?}")),
    );
    Ok((vec![line], true))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench_n = args.iter().position(|a| a == "--bench").map(|i| {
        args.get(i + 1)
            .and_then(|n| n.parse::<f64>().ok())
            .map_or(10_000_000, |n| n as usize)
    });
    let faulty = args.iter().any(|a| a == "--fault");
    let run = move |comm: Arc<dyn Collective>| match bench_n {
        Some(n) => bench(comm, n),
        None if faulty => fault(comm),
        None => run(comm),
    };
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .map(|i| args.get(i + 1).and_then(|n| n.parse::<usize>().ok()));
    if let Some(i) = args.iter().position(|a| a == "--nccl") {
        let gpus = args
            .get(i + 1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1);
        report(over_nccl(gpus, &run));
    }
    let results: Vec<Result<(Vec<String>, bool), String>> = match threads {
        Some(Some(n)) if n > 0 => {
            let group = Threads::group(n, Duration::from_secs(300));
            std::thread::scope(|s| {
                let handles: Vec<_> = group
                    .into_iter()
                    .map(|comm| {
                        let run = &run;
                        s.spawn(move || run(Arc::new(comm)).map_err(|e| e.to_string()))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("a rank panicked".into())))
                    .collect()
            })
        }
        Some(_) => {
            eprintln!("--threads takes a number of ranks, at least 1");
            std::process::exit(2);
        }
        None => vec![over_mpi()],
    };
    report(results);
}

/// Prints rank 0's lines and every rank's error; exits 1 when any case failed.
fn report(results: Vec<Result<(Vec<String>, bool), String>>) -> ! {
    let mut ok = true;
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok((lines, passed)) => {
                if rank == 0 {
                    for line in lines {
                        println!("{line}");
                    }
                }
                ok &= passed;
            }
            Err(e) => {
                eprintln!("rank {rank}: {e}");
                ok = false;
            }
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}

type RankRun<'r> = &'r (dyn Fn(Arc<dyn Collective>) -> Result<(Vec<String>, bool), Box<dyn std::error::Error>>
         + Sync);

/// One rank per GPU, each on its own thread.
#[cfg(feature = "nccl")]
fn over_nccl(gpus: usize, run: RankRun<'_>) -> Vec<Result<(Vec<String>, bool), String>> {
    let ordinals: Vec<usize> = (0..gpus.max(1)).collect();
    let ranks = match lensopt::dist::nccl::Nccl::on_devices(&ordinals) {
        Ok(r) => r,
        Err(e) => return vec![Err(e.to_string())],
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| s.spawn(move || run(Arc::new(comm)).map_err(|e| e.to_string())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a rank panicked".into())))
            .collect()
    })
}

#[cfg(not(feature = "nccl"))]
fn over_nccl(_gpus: usize, _run: RankRun<'_>) -> Vec<Result<(Vec<String>, bool), String>> {
    vec![Err(
        "built without NCCL: build with `--features nccl`".into()
    )]
}

#[cfg(feature = "mpi")]
fn over_mpi() -> Result<(Vec<String>, bool), String> {
    let comm = lensopt::dist::mpi::Mpi::init().map_err(|e| e.to_string())?;
    let rank = comm.rank();
    let args: Vec<String> = std::env::args().collect();
    let bench_n = args.iter().position(|a| a == "--bench").map(|i| {
        args.get(i + 1)
            .and_then(|n| n.parse::<f64>().ok())
            .map_or(10_000_000, |n| n as usize)
    });
    let comm: Arc<dyn Collective> = Arc::new(comm);
    let (lines, ok) = match bench_n {
        Some(n) => bench(comm, n),
        None if args.iter().any(|a| a == "--fault") => fault(comm),
        None => run(comm),
    }
    .map_err(|e| e.to_string())?;
    // Only rank 0 prints (the caller prints rank 0's lines).
    Ok(if rank == 0 {
        (lines, ok)
    } else {
        (Vec::new(), ok)
    })
}

#[cfg(not(feature = "mpi"))]
fn over_mpi() -> Result<(Vec<String>, bool), String> {
    Err(
        "built without MPI: build with `--features mpi` and run under mpirun, or pass --threads N"
            .into(),
    )
}
