//! `lensopt`: the command-line tool.
//!
//! - `lensopt apply`: replay a conformance case (JSON) through an optimizer;
//! - `lensopt check`: parse and check a rule file, print its IR or its errors;
//! - `lensopt list`: the catalog;
//! - `lensopt compare`: optimizers on a problem over seeds, with a table and loss curves;
//! - `lensopt bench`: optimizer steps in GB/s against ceilings measured in the same run;
//! - `lensopt jit`: a rule through every stage of the compiler, with timings;
//! - `lensopt ptx`: the PTX generated for a rule;
//! - `lensopt demo`: minimise the Rosenbrock function with catalog optimizers
//!   and a rule written as text, and print a table.
//!
//! Misuse (bad flags, unreadable or malformed input, unknown names,
//! mismatched lengths) exits with status 2 and a one-line message on stderr.
//! Output goes through [`output`] (a closed pipe ends the command quietly),
//! result files through [`atomic`] (never left half-written).

#[macro_use]
mod output;
mod apply;
mod atomic;
mod bench;
mod check;
mod compare;
mod demo;
mod jit;
mod plot;
mod ptx;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lensopt",
    version,
    about = "Optimizers declared in a DSL, compiled to fused kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a conformance case through an optimizer and write the parameters after each step.
    Apply(apply::Args),
    /// Parse and check a rule file; print its IR, or its errors with line and column.
    Check(check::Args),
    /// List the catalog's optimizers with their hyperparameters.
    List(ListArgs),
    /// Compare optimizers (catalog names or rule files) on a problem over several seeds: table and loss curves.
    Compare(compare::Args),
    /// Minimise the Rosenbrock function with several optimizers and print a table.
    Demo(demo::Args),
    /// Measure optimizer steps against the memory bus (GB/s vs ceilings measured in the same run).
    Bench(bench::Args),
    /// Print the PTX generated for a rule (assemble it with ptxas; no GPU needed).
    Ptx(ptx::Args),
    /// Show what the compiler makes of a rule file (ir, optimized, clif, ptx) and how long each stage took.
    Jit(jit::Args),
}

/// A failure to report: message and exit status.
pub struct Failure {
    /// One line for stderr.
    pub message: String,
    /// 2 for misuse and bad input, 1 for a rule that does not check.
    pub status: u8,
}

impl Failure {
    /// Misuse or bad input: exit status 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            status: 2,
        }
    }
}

/// Parses one `--set name=value` (booleans as true/false; numbers finite).
pub fn parse_set(item: &str) -> Result<(&str, lensopt::HyperValue), Failure> {
    let (name, value) = item
        .split_once('=')
        .ok_or_else(|| Failure::usage(format!("--set takes name=value, got `{item}`")))?;
    let parsed = lensopt::HyperValue::parse(value).ok_or_else(|| {
        Failure::usage(format!(
            "--set {name}: `{value}` is not a number, `true` or `false`"
        ))
    })?;
    if let lensopt::HyperValue::Num(x) = parsed {
        if !x.is_finite() {
            return Err(Failure::usage(format!(
                "--set {name}: `{value}` is not a finite number"
            )));
        }
    }
    Ok((name.trim(), parsed))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Apply(args) => apply::run(&args),
        Command::Check(args) => check::run(&args),
        Command::List(args) => {
            list(&args);
            Ok(())
        }
        Command::Demo(args) => demo::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Ptx(args) => ptx::run(&args),
        Command::Jit(args) => jit::run(&args),
    };
    output::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                errln!("lensopt: error: {}", f.message);
            }
            ExitCode::from(f.status)
        }
    }
}

/// Flags of `lensopt list`.
#[derive(clap::Args)]
struct ListArgs {
    /// One JSON object per optimizer: name, rule, hyperparameters, states, inputs.
    #[arg(long)]
    json: bool,
}

fn list(args: &ListArgs) {
    use lensopt::Optimizer;
    for name in lensopt::catalog::all_names() {
        let opt = lensopt::catalog::get(name).expect("listed names exist");
        let rule = opt.rule();
        if args.json {
            let hypers: serde_json::Map<String, serde_json::Value> = rule
                .hypers
                .iter()
                .map(|h| (h.name.clone(), lensopt::hyper_to_json(h.default)))
                .collect();
            let states: Vec<&str> = rule.states.iter().map(|s| s.name.as_str()).collect();
            let inputs: Vec<&str> = rule.inputs.iter().map(|i| i.name.as_str()).collect();
            outln!(
                "{}",
                serde_json::json!({"name": name, "rule": rule.name, "hypers": hypers, "states": states, "inputs": inputs, "matrix": rule.is_matrix(), "doc": rule.doc.join("\n")})
            );
            continue;
        }
        let hypers: Vec<String> = rule
            .hypers
            .iter()
            .map(|h| format!("{}={}", h.name, h.default))
            .collect();
        let kind = if rule.is_matrix() {
            " (matrix rule)"
        } else {
            ""
        };
        outln!("{name:<11} {}{kind}", hypers.join(" "));
    }
}
