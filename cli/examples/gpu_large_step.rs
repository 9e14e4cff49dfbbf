//! One SGD step on the GPU over a tensor of more than 2^31 elements
//! (default 2^31 + 7 f32, 17 GB on the device), checked element by element
//! against the step's exact result: the 64-bit indexing, the launch map's
//! last chunks and the vector tail at sizes no test reaches.
//!
//! `cargo run --release --features cuda --example gpu_large_step [N]`
//! prints `gpu_large_step n=N checked=N wrong=0 seconds=S` and exits 1 on
//! any wrong element. Also the program `scripts/gpu-check.sh` runs under
//! `compute-sanitizer` with a small N.

#[cfg(feature = "cuda")]
fn main() -> std::process::ExitCode {
    use lensopt::catalog;
    use lensopt::cuda::{Device, GpuStepper};
    let n: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => (1 << 31) + 7,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("gpu_large_step: N must be a positive number of elements");
            return std::process::ExitCode::from(2);
        }
    };
    let dev = match Device::new(0) {
        Ok(d) => std::sync::Arc::new(d),
        Err(e) => {
            eprintln!("gpu_large_step: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // p[i] = i mod 1024 and g[i] = 1 exactly representable; SGD with lr 0.5
    // gives p[i] - 0.5, exactly.
    let p0: Vec<f32> = (0..n).map(|i| (i % 1024) as f32).collect();
    let mut p = dev.upload(&p0).expect("upload p");
    drop(p0);
    let g = dev.upload(&vec![1f32; n]).expect("upload g");
    let sgd = catalog::get("sgd").unwrap().with("lr", 0.5).unwrap();
    let mut st = GpuStepper::new(dev.clone(), &sgd, &[&p]).expect("stepper");
    let start = std::time::Instant::now();
    st.step(&mut [&mut p], &[&g]).expect("step");
    dev.synchronize().expect("step finished");
    let seconds = start.elapsed().as_secs_f64();
    let after = dev.download(&p).expect("download p");
    let wrong = after
        .iter()
        .enumerate()
        .filter(|(i, v)| **v != (i % 1024) as f32 - 0.5)
        .count();
    println!(
        "gpu_large_step n={n} checked={} wrong={wrong} blocks={} seconds={seconds:.4}",
        after.len(),
        st.blocks()
    );
    if wrong == 0 && after.len() == n {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("built without the `cuda` feature: cargo run --release --features cuda --example gpu_large_step");
    std::process::exit(2);
}
