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
    use lensopt::cuda::Device;
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
    match step_and_check(&dev, n) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gpu_large_step: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// One SGD step over `n` elements; true when every element is right.
#[cfg(feature = "cuda")]
fn step_and_check(
    dev: &std::sync::Arc<lensopt::cuda::Device>,
    n: usize,
) -> Result<bool, lensopt::Error> {
    use lensopt::cuda::GpuStepper;
    // p[i] = i mod 1024 and g[i] = 1 exactly representable; SGD with lr 0.5
    // gives p[i] - 0.5, exactly.
    let p0: Vec<f32> = (0..n).map(|i| (i % 1024) as f32).collect();
    let mut p = dev.upload(&p0)?;
    drop(p0);
    let g = dev.upload(&vec![1f32; n])?;
    let sgd = lensopt::catalog::get("sgd")
        .ok_or_else(|| lensopt::Error::Mismatch("no sgd in the catalog".into()))?
        .with("lr", 0.5)?;
    let mut st = GpuStepper::new(dev.clone(), &sgd, &[&p])?;
    let start = std::time::Instant::now();
    st.step(&mut [&mut p], &[&g])?;
    dev.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let after = dev.download(&p)?;
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
    Ok(wrong == 0 && after.len() == n)
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("built without the `cuda` feature: cargo run --release --features cuda --example gpu_large_step");
    std::process::exit(2);
}
