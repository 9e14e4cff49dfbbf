//! The PTX backend without a GPU: every catalog optimizer (default and
//! non-default switches, reductions included) emits PTX that NVIDIA's
//! `ptxas` assembles: the sm_80 module the runtime loads, compiled forward
//! for sm_80, sm_90 and sm_100 as the driver does, and modules emitted for
//! sm_90 and sm_100 themselves; the PTX of the catalog is snapshot-tested.
//!
//! `ptxas` comes from the `nvidia-cuda-nvcc-cu12` wheel (`.ci/run` installs
//! it); set `LENSOPT_PTXAS` to use another. Without it the assembly test says
//! it was skipped; the snapshots run everywhere.

use lensopt::{catalog, DynOptimizer, Optimizer};
use lensopt_codegen::ptx::Precision;
use std::path::{Path, PathBuf};
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

/// `ptxas`, or `None` after saying the test is skipped.
fn ptxas_or_skip() -> Option<PathBuf> {
    let found = ptxas();
    if found.is_none() {
        eprintln!(
            "skipped: ptxas not found (pip install nvidia-cuda-nvcc-cu12, or set LENSOPT_PTXAS)"
        );
    }
    found
}

/// (the target a module is emitted for, the GPU ptxas compiles it for).
const TARGETS: [(&str, &str); 5] = [
    ("sm_80", "sm_80"),
    ("sm_80", "sm_90"),
    ("sm_80", "sm_100"),
    ("sm_90", "sm_90"),
    ("sm_100", "sm_100"),
];

/// Assembles the PTX in `file` for `target`; ptxas's messages on failure.
fn assemble(ptxas: &Path, target: &str, file: &Path) -> Result<(), String> {
    let out = Command::new(ptxas)
        .args(["--gpu-name", target])
        .arg(file)
        .arg("-o")
        .arg(file.with_extension("cubin"))
        .output()
        .expect("ptxas runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
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
    lensopt::jit::ptx(&rule, &key, precision, target)
        .map(|m| m.text)
        .map_err(|e| e.to_string())
}

#[test]
fn every_catalog_kernel_assembles_with_ptxas() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("lensopt-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = 0;
    for (label, opt) in variants() {
        for precision in [Precision::F32, Precision::F64] {
            for (target, gpu) in TARGETS {
                let text = ptx(&opt, precision, target)
                    .unwrap_or_else(|e| panic!("{label} {precision:?} {target}: {e}"));
                let file = dir.join(format!("{label}_{precision:?}_{target}_{gpu}.ptx"));
                std::fs::write(&file, &text).unwrap();
                if let Err(e) = assemble(&ptxas, gpu, &file) {
                    panic!("{label} {precision:?} {target} on {gpu}: ptxas failed:\n{e}\n{text}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 200, "every variant, f32 and f64, every target");
}

/// The element-wise phases of every matrix rule (its fused kernels, one
/// module each) assemble, in both precisions, for the oldest and newest
/// targets: the first 12 kernels of each (Muon's unrolled iterations make
/// 194 of the same few shapes).
#[test]
fn matrix_rules_fused_kernels_assemble_with_ptxas() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("lensopt-ptx-matrix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut modules = 0;
    for name in catalog::matrix_names() {
        let rule = catalog::get(name).unwrap().rule();
        for precision in [Precision::F32, Precision::F64] {
            for target in ["sm_80", "sm_100"] {
                let emitted = lensopt::jit::matrix_ptx(&rule, precision, target)
                    .unwrap_or_else(|e| panic!("{name} {precision:?} {target}: {e}"));
                for (kernel, module) in emitted.into_iter().take(12) {
                    let file = dir.join(format!("{name}_{kernel}_{precision:?}_{target}.ptx"));
                    std::fs::write(&file, &module.text).unwrap();
                    if let Err(e) = assemble(&ptxas, target, &file) {
                        panic!("{name} {kernel} {precision:?} {target}: ptxas failed:\n{e}");
                    }
                    modules += 1;
                }
            }
        }
    }
    // Every matrix rule has fused kernels (at least two); four builds of each.
    assert!(
        modules >= 4 * 2 * catalog::matrix_names().len(),
        "{modules} modules"
    );
}

#[test]
fn ptx_of_the_catalog() {
    lensopt_tests::assert_snapshots!(variants().into_iter().map(|(label, opt)| {
        (
            format!("ptx_{label}"),
            ptx(&opt, Precision::F32, "sm_80").unwrap(),
        )
    }));
}

/// The example circuits: a full adder, a 4-bit truth table with parameter
/// bits (the RDA example's Iris architecture), and a random 300-gate circuit.
fn example_circuits() -> Vec<(&'static str, lensopt::circuit::Circuit)> {
    use lensopt::circuit::CircuitBuilder;
    let mut b = CircuitBuilder::new();
    let (x, y, c) = (b.input(), b.input(), b.input());
    let half = b.xor(x, y);
    let sum = b.xor(half, c);
    let (c1, c2) = (b.and(x, y), b.and(half, c));
    let carry = b.xor(c1, c2);
    let adder = b.finish(vec![sum, carry]).unwrap();
    let mut b = CircuitBuilder::new();
    let xs: Vec<usize> = (0..4).map(|_| b.input()).collect();
    let nots: Vec<usize> = xs.iter().map(|&w| b.not(w)).collect();
    let mut out = b.constant(false);
    for m in 0..16 {
        let mut term = if m & 1 == 1 { xs[0] } else { nots[0] };
        for i in 1..4 {
            let lit = if m >> i & 1 == 1 { xs[i] } else { nots[i] };
            term = b.and(term, lit);
        }
        let p = b.param();
        let gated = b.and(p, term);
        out = b.xor(out, gated);
    }
    let table = b.finish(vec![out]).unwrap();
    let mut b = CircuitBuilder::new();
    let mut wires: Vec<usize> = (0..16).map(|_| b.input()).collect();
    let mut s = 7u64;
    for k in 0..300 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (x, y) = (
            wires[(s >> 33) as usize % wires.len()],
            wires[(s >> 17) as usize % wires.len()],
        );
        let z = match k % 3 {
            0 => b.and(x, y),
            1 => b.xor(x, y),
            _ => b.not(x),
        };
        wires.push(z);
    }
    let random = b.finish(wires[wires.len() - 8..].to_vec()).unwrap();
    vec![
        ("full_adder", adder),
        ("truth_table", table),
        ("random_300", random),
    ]
}

#[test]
fn circuit_kernels_assemble_with_ptxas() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("lensopt-ptx-circuits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, circuit) in example_circuits() {
        for (target, gpu) in TARGETS {
            let module = lensopt_codegen::ptx::emit_circuit(&circuit, target).unwrap();
            let file = dir.join(format!("{name}_{target}_{gpu}.ptx"));
            std::fs::write(&file, &module.text).unwrap();
            if let Err(e) = assemble(&ptxas, gpu, &file) {
                panic!("{name} {target} on {gpu}: {e}");
            }
        }
    }
    // And the benchmark's copy kernel.
    for (target, gpu) in TARGETS {
        let module = lensopt_codegen::ptx::copy_kernel(target).unwrap();
        let file = dir.join(format!("copy_{target}_{gpu}.ptx"));
        std::fs::write(&file, &module.text).unwrap();
        if let Err(e) = assemble(&ptxas, gpu, &file) {
            panic!("copy {target} on {gpu}: {e}");
        }
    }
}

/// A target lensopt does not know is an error, not a module the driver
/// would refuse at load time.
#[test]
fn unknown_targets_are_refused() {
    let opt = catalog::get("adam").unwrap();
    for target in ["sm_70", "sm_75", "compute_80", "sm_999", ""] {
        let err = ptx(&opt, Precision::F32, target).unwrap_err();
        assert!(err.contains("unknown target"), "{target}: {err}");
    }
    assert_eq!(lensopt_codegen::ptx::isa_version("sm_80"), Some("7.0"));
    assert_eq!(lensopt_codegen::ptx::isa_version("sm_100"), Some("8.6"));
}

#[test]
fn ptx_of_a_full_adder() {
    let (_, adder) = example_circuits().swap_remove(0);
    insta::assert_snapshot!(
        "ptx_circuit_full_adder",
        lensopt_codegen::ptx::emit_circuit(&adder, "sm_80")
            .unwrap()
            .text
    );
}

/// An element-wise `pow` (C's special cases around `e^(y ln |x|)`), the
/// precision roundings `f32` and `bf16` and `lerp` assemble in f32 and f64.
#[test]
fn element_pow_and_precision_assemble_with_ptxas() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let opt = DynOptimizer::parse(
        "P { hyper lr = 0.1; state m = 0; update { m = pow(g, p) + m ^ 3 + bf16(g) + f32(p * 3); p = lerp(p, m, lr); } }",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("lensopt-ptx-pow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for precision in [Precision::F32, Precision::F64] {
        let text = ptx(&opt, precision, "sm_80").unwrap();
        assert!(text.contains("copysign"), "the special cases are emitted");
        assert!(text.contains("cvt.rn.bf16.f32"), "bf16 is emitted");
        let file = dir.join(format!("pow_{precision:?}.ptx"));
        std::fs::write(&file, &text).unwrap();
        if let Err(e) = assemble(&ptxas, "sm_90", &file) {
            panic!("pow {precision:?}: {e}\n{text}");
        }
    }
}

/// The GPU's non-finite scan: for every catalog rule, one reduction pass
/// over the same descriptor table as the rule's own kernels, counting per
/// tensor; its PTX assembles.
#[test]
fn the_non_finite_scan_shares_the_rules_table_and_assembles() {
    let ptxas = ptxas_or_skip();
    let dir = std::env::temp_dir().join(format!("lensopt-ptx-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in catalog::names() {
        let rule = catalog::get(name).unwrap().rule();
        let scan = lensopt::device_scan_rule(&rule).unwrap();
        assert_eq!(
            lensopt_codegen::ptx::descriptor_words(&scan),
            lensopt_codegen::ptx::descriptor_words(&rule),
            "{name}"
        );
        let present = vec![true; rule.inputs.len()];
        let key = lensopt::jit::Key::for_step(&[Vec::new()], &present, lensopt::Mode::Exact);
        let schedule = lensopt::jit::schedule(&scan, &key);
        assert_eq!(schedule.passes.len(), 1, "{name}: one pass");
        assert_eq!(
            schedule.passes[0].len(),
            1 + rule.inputs.len(),
            "{name}: g and each input"
        );
        let module = lensopt_codegen::ptx::emit(&schedule, Precision::F32, "sm_80").unwrap();
        if let Some(ptxas) = &ptxas {
            let file = dir.join(format!("scan_{name}.ptx"));
            std::fs::write(&file, &module.text).unwrap();
            if let Err(e) = assemble(ptxas, "sm_90", &file) {
                panic!("scan {name}: {e}");
            }
        }
    }
}
