//! `lensopt check`: parse and check a rule file from the shell.

use crate::Failure;
use lensopt::ParseRule;
use std::path::PathBuf;

/// Flags of `lensopt check`.
#[derive(clap::Args)]
pub struct Args {
    /// The rule file (the same language as the body of `optimizer!`).
    rule: PathBuf,
    /// Print `{"ok": true, "ir": ...}` or `{"ok": false, "errors": [{line, column, message}]}`.
    #[arg(long)]
    json: bool,
}

/// Runs `lensopt check`: prints the IR, or every diagnostic with its source line.
pub fn run(args: &Args) -> Result<(), Failure> {
    let source = std::fs::read_to_string(&args.rule)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.rule.display())))?;
    match lensopt::Rule::parse(&source) {
        Ok(rule) => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({"ok": true, "rule": rule.name, "ir": rule.to_string()})
                );
            } else {
                out!("{rule}");
            }
            Ok(())
        }
        Err(diags) => {
            let file = args.rule.display().to_string();
            if args.json {
                let errors: Vec<serde_json::Value> = diags
                    .items
                    .iter()
                    .map(|d| serde_json::json!({"line": d.line(), "column": d.column(), "message": d.message}))
                    .collect();
                outln!("{}", serde_json::json!({"ok": false, "errors": errors}));
            } else {
                for d in &diags.items {
                    errln!("{}", d.render(&source, &file));
                }
            }
            let n = diags.items.len();
            Err(Failure {
                message: format!("{file}: {n} error{}", if n == 1 { "" } else { "s" }),
                status: 1,
            })
        }
    }
}
