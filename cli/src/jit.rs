//! `lensopt jit`: what the compiler makes of a rule, stage by stage, with timings.

use crate::Failure;
use lensopt::{DynOptimizer, Optimizer};
use lensopt_codegen::ptx::Precision;
use std::path::PathBuf;
use std::time::Instant;

/// What to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The checked IR.
    Ir,
    /// The IR after the e-graph (default hyperparameters, fast mode).
    Optimized,
    /// The cranelift IR of every kernel (f32).
    Clif,
    /// The PTX (f32, sm_80).
    Ptx,
}

/// Flags of `lensopt jit`.
#[derive(clap::Args)]
pub struct Args {
    /// A rule file, or the name of a catalog optimizer (`adamw`, `SGD`).
    rule: PathBuf,
    /// Which stage's output to print.
    #[arg(long, value_enum, default_value = "optimized")]
    emit: Emit,
    /// Print one JSON object: the stage's text and every stage's time.
    #[arg(long)]
    json: bool,
}

/// The text of the rule `arg` names: the file at that path, or else the
/// catalog optimizer of that name (any case).
fn rule_text(arg: &std::path::Path) -> Result<String, Failure> {
    match std::fs::read_to_string(arg) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = arg.to_string_lossy().to_lowercase();
            lensopt::catalog::source(&name)
                .map(str::to_string)
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "{}: no such file, and no catalog optimizer of that name (the catalog has: {})",
                        arg.display(),
                        lensopt::catalog::all_names().join(", ")
                    ))
                })
        }
        Err(e) => Err(Failure::usage(format!(
            "cannot read {}: {e}",
            arg.display()
        ))),
    }
}

/// Runs `lensopt jit`: prints the chosen stage, then each stage's time on stderr.
pub fn run(args: &Args) -> Result<(), Failure> {
    let text = rule_text(&args.rule)?;
    let started = Instant::now();
    let opt = match DynOptimizer::parse(&text) {
        Ok(opt) => opt,
        Err(lensopt::Error::Rule(diags)) => {
            let file = args.rule.display().to_string();
            for d in &diags.items {
                errln!("{}", d.render(&text, &file));
            }
            return Err(Failure {
                message: format!("{file}: {} error(s)", diags.items.len()),
                status: 1,
            });
        }
        Err(e) => return Err(Failure::usage(e.to_string())),
    };
    let parse_us = started.elapsed().as_secs_f64() * 1e6;
    let rule = opt.rule();
    let key = lensopt::jit::Key::for_step(
        &[opt.hypers()],
        &vec![true; rule.inputs.len()],
        lensopt::Mode::Fast,
    );
    let started = Instant::now();
    let (schedule, fallback) = lensopt::jit::schedule_report(&rule, &key);
    let optimize_us = started.elapsed().as_secs_f64() * 1e6;
    let started = Instant::now();
    let program = lensopt::Program::<f32>::compile_with_clif(schedule.clone())
        .map_err(|e| Failure::usage(e.to_string()))?;
    let codegen_us = started.elapsed().as_secs_f64() * 1e6;
    let started = Instant::now();
    let ptx = lensopt_codegen::ptx::emit(&schedule, Precision::F32, "sm_80")
        .map_err(|e| Failure::usage(e.to_string()))?;
    let ptx_us = started.elapsed().as_secs_f64() * 1e6;
    let output = match args.emit {
        Emit::Ir => rule.to_string(),
        Emit::Optimized => schedule.rule.to_string(),
        Emit::Clif => program
            .clif()
            .iter()
            .map(|(name, clif)| format!("; {name}\n{clif}\n"))
            .collect(),
        Emit::Ptx => ptx.text.clone(),
    };
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "rule": rule.name, "emit": format!("{:?}", args.emit).to_lowercase(), "output": output,
                "parse_check_us": parse_us, "egraph_schedule_us": optimize_us,
                "cranelift_us": codegen_us, "ptx_us": ptx_us,
                "reduction_passes": schedule.passes.len(), "slots": schedule.slots.len(),
                "egraph_fallback": fallback,
            })
        );
        return Ok(());
    }
    out!("{output}");
    if let Some(why) = &fallback {
        errln!("note: {why}");
    }
    errln!(
        "parse+check {parse_us:.0} us, e-graph+schedule {optimize_us:.0} us ({} reduction passes, {} slots), cranelift {codegen_us:.0} us, ptx {ptx_us:.0} us",
        schedule.passes.len(),
        schedule.slots.len()
    );
    Ok(())
}
