//! The PTX backend without a GPU: every catalog optimizer (default and
//! non-default switches, reductions included) emits PTX that NVIDIA's
//! `ptxas` assembles for sm_80 and sm_90, and the PTX of the catalog is
//! snapshot-tested.
//!
//! `ptxas` comes from the `nvidia-cuda-nvcc-cu12` wheel (`.ci/run` installs
//! it); set `LENSOPT_PTXAS` to use another. Without it the assembly test says
//! it was skipped; the snapshots run everywhere.

use lensopt::{catalog, DynOptimizer, Optimizer};
use lensopt_codegen::ptx::Precision;
use std::path::PathBuf;
use std::process::Command;

fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LENSOPT_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .ok()?;
    let site = String::from_utf8(out.stdout).ok()?;
    let path = PathBuf::from(site.trim()).join("nvidia/cuda_nvcc/bin/ptxas");
    path.exists().then_some(path)
}

/// The catalog with its defaults, plus the switches that add reductions or branches.
fn variants() -> Vec<(String, DynOptimizer)> {
    let mut out: Vec<(String, DynOptimizer)> = catalog::names()
        .into_iter()
        .map(|n| (n.to_string(), catalog::get(n).unwrap()))
        .collect();
    let extra: [(&str, &str, &str, lensopt::HyperValue); 4] = [
        ("lion_cautious", "lion", "cautious", true.into()),
        ("adan_clip", "adan", "max_grad_norm", 1.0.into()),
        ("adam_amsgrad", "adam", "amsgrad", true.into()),
        ("sgd_nesterov", "sgd", "nesterov", true.into()),
    ];
    for (label, name, hyper, value) in extra {
        out.push((
            label.to_string(),
            catalog::get(name).unwrap().with(hyper, value).unwrap(),
        ));
    }
    out
}

fn ptx(opt: &DynOptimizer, precision: Precision, target: &str) -> Result<String, String> {
    let rule = opt.rule();
    let key = lensopt::jit::Key::for_step(
        &[opt.hypers()],
        &vec![true; rule.inputs.len()],
        lensopt::Mode::Fast,
    );
    lensopt::jit::ptx(&rule, &key, precision, target).map(|m| m.text)
}

#[test]
fn every_catalog_kernel_assembles_with_ptxas() {
    let Some(ptxas) = ptxas() else {
        eprintln!(
            "skipped: ptxas not found (pip install nvidia-cuda-nvcc-cu12, or set LENSOPT_PTXAS)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("lensopt-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = 0;
    for (label, opt) in variants() {
        for precision in [Precision::F32, Precision::F64] {
            for target in ["sm_80", "sm_90"] {
                let text = match ptx(&opt, precision, target) {
                    Ok(t) => t,
                    // exp/ln/pow on elements are f32-only for now: the error says so.
                    Err(e) if precision == Precision::F64 && e.contains("f32 only") => continue,
                    Err(e) => panic!("{label} {precision:?} {target}: {e}"),
                };
                let file = dir.join(format!("{label}_{precision:?}_{target}.ptx"));
                std::fs::write(&file, &text).unwrap();
                let out = Command::new(&ptxas)
                    .args(["--gpu-name", target])
                    .arg(&file)
                    .arg("-o")
                    .arg(file.with_extension("cubin"))
                    .output()
                    .expect("ptxas runs");
                assert!(
                    out.status.success(),
                    "{label} {precision:?} {target}: ptxas failed:\n{}\n{text}",
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 70, "only {checked} modules assembled");
}

#[test]
fn ptx_of_the_catalog() {
    for (label, opt) in variants() {
        insta::assert_snapshot!(
            format!("ptx_{label}"),
            ptx(&opt, Precision::F32, "sm_80").unwrap()
        );
    }
}
