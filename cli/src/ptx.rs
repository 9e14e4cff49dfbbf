//! `lensopt ptx`: the PTX lensopt generates for a rule, for review or for
//! assembling with `ptxas` (no GPU needed).

use crate::Failure;
use lensopt::{DynOptimizer, Optimizer};
use lensopt_codegen::ptx::Precision;
use std::path::PathBuf;

/// Flags of `lensopt ptx`.
#[derive(clap::Args)]
pub struct Args {
    /// A catalog optimizer.
    #[arg(long, conflicts_with = "rule", required_unless_present = "rule")]
    optimizer: Option<String>,
    /// A rule file.
    #[arg(long)]
    rule: Option<PathBuf>,
    /// The GPU architecture (`.target`), sm_80 or later (the module
    /// declares the oldest PTX ISA that knows it; sm_80 runs everywhere).
    #[arg(long, default_value = "sm_80")]
    target: String,
    /// Element type: f32 or f64.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Hyperparameters to specialise on, `name=value` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

/// Runs `lensopt ptx`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let mut opt = match (&args.optimizer, &args.rule) {
        (Some(name), _) => lensopt::catalog::get(&name.to_lowercase())
            .ok_or_else(|| Failure::usage(format!("unknown optimizer `{name}`")))?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
            DynOptimizer::parse(&text)
                .map_err(|e| Failure::usage(format!("{}:{e}", path.display())))?
        }
        (None, None) => return Err(Failure::usage("pass --optimizer NAME or --rule FILE")),
    };
    for item in &args.set {
        let (name, value) = crate::parse_set(item)?;
        opt.set(name, value)
            .map_err(|e| Failure::usage(e.to_string()))?;
    }
    let precision = match args.dtype.as_str() {
        "f32" => Precision::F32,
        "f64" => Precision::F64,
        other => {
            return Err(Failure::usage(format!(
                "unknown dtype `{other}`: f32 or f64"
            )))
        }
    };
    check_target(&args.target)?;
    let rule = opt.rule();
    if rule.is_matrix() {
        let modules = lensopt::jit::matrix_ptx(&rule, precision, &args.target)
            .map_err(|e| Failure::usage(e.to_string()))?;
        out!(
            "// `{}` is a matrix rule: the PTX of its {} fused element-wise kernels, one module each.\n// Its GEMMs, axis reductions and factorisations have no device code yet.",
            rule.name,
            modules.len()
        );
        for (name, module) in modules {
            out!("\n// ---- {name}\n{}", module.text);
        }
        return Ok(());
    }
    let key = lensopt::jit::Key::for_step(
        &[opt.hypers()],
        &vec![true; rule.inputs.len()],
        lensopt::Mode::Fast,
    );
    let module = lensopt::jit::ptx(&rule, &key, precision, &args.target)
        .map_err(|e| Failure::usage(e.to_string()))?;
    out!("{}", module.text);
    Ok(())
}

/// Refuses anything but `sm_` followed by 2 or 3 ASCII digits (no leading
/// zero), 80 or more. Arch-specific targets (`sm_90a`) are refused too: they
/// need a later PTX ISA than the `.version` lensopt emits.
fn check_target(target: &str) -> Result<(), Failure> {
    if lensopt_codegen::ptx::isa_version(target).is_some() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "target `{target}`: expected one of sm_80, sm_86, sm_87, sm_89, sm_90, sm_90a, sm_100, sm_100a, sm_101, sm_103, sm_120, sm_120a, sm_121"
    )))
}
