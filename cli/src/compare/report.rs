//! The report of `lensopt compare`: one summary row per optimizer (mean and
//! spread over seeds, timings, non-finite outcomes), written with the loss
//! curves to `results.json` and the plots under `--out`, and printed as a
//! table or as JSON lines.

use super::harness::Run;
use super::tune::{Grid, Tuned};
use super::Args;
use crate::{plot, Failure};
use serde_json::json;
use std::path::Path;

/// Mean and (population) standard deviation; 0 and 0 for none.
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// One JSON row per optimizer: final and best loss, test accuracy (mean
/// and standard deviation over seeds), time per step, JIT time, and what
/// non-finite gradients did.
pub(super) fn rows(
    args: &Args,
    steps: usize,
    results: &[(String, Vec<Run>)],
    grid: Option<&Grid>,
    tuned: &[Option<Tuned>],
) -> Vec<serde_json::Value> {
    let problem = args.problem.as_str();
    let mut rows = Vec::new();
    for ((label, runs), tuned) in results.iter().zip(tuned) {
        let finals: Vec<f64> = runs
            .iter()
            .map(|r| *r.losses.last().unwrap_or(&f64::NAN))
            .collect();
        let bests: Vec<f64> = runs
            .iter()
            .map(|r| {
                r.losses
                    .iter()
                    .copied()
                    .filter(|v| v.is_finite())
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let accs: Vec<f64> = runs.iter().filter_map(|r| r.accuracy).collect();
        let test_losses: Vec<f64> = runs.iter().filter_map(|r| r.held_out_loss).collect();
        let (tl, tls) = mean_std(&test_losses);
        let r2s: Vec<f64> = runs.iter().filter_map(|r| r.r2).collect();
        let (r2, r2s_std) = mean_std(&r2s);
        let (fm, fs) = mean_std(&finals);
        let (bm, bs) = mean_std(&bests);
        let (am, asd) = mean_std(&accs);
        let steps_run: usize = runs.iter().map(|r| r.losses.len()).sum();
        let us = runs.iter().map(|r| r.seconds).sum::<f64>() * 1e6 / steps_run.max(1) as f64;
        let stopped: Vec<Option<usize>> = runs.iter().map(|r| r.stopped_at).collect();
        rows.push(json!({
            "optimizer": label, "problem": problem, "steps": steps, "seeds": args.seeds,
            "final_loss": fm, "final_loss_std": fs, "best_loss": bm, "best_loss_std": bs,
            "test_accuracy": if accs.is_empty() { serde_json::Value::Null } else { json!(am) },
            "test_accuracy_std": if accs.is_empty() { serde_json::Value::Null } else { json!(asd) },
            "test_loss": if test_losses.is_empty() { serde_json::Value::Null } else { json!(tl) },
            "test_loss_std": if test_losses.is_empty() { serde_json::Value::Null } else { json!(tls) },
            "test_r2": if r2s.is_empty() { serde_json::Value::Null } else { json!(r2) },
            "test_r2_std": if r2s.is_empty() { serde_json::Value::Null } else { json!(r2s_std) },
            "us_per_step": us, "jit_ms": runs.first().map_or(0.0, |r| r.jit_ms),
            "non_finite": args.non_finite,
            "skipped_steps": runs.iter().map(|r| r.skipped).sum::<u64>(),
            "stopped_at": stopped,
            "resumed_runs": runs.iter().filter(|r| r.resumed).count(),
            "tuned": match (grid, tuned) {
                (Some(g), Some(t)) => json!({
                    "name": g.name, "value": t.value, "grid": g.values,
                    "validation_loss": t.losses.iter().map(|l| if l.is_finite() { json!(l) } else { serde_json::Value::Null }).collect::<Vec<_>>(),
                }),
                _ => serde_json::Value::Null,
            },
        }));
    }
    rows
}

/// `curves.png`, `curves.svg` and `results.json` in `dir`, each written
/// atomically.
pub(super) fn write_files(
    dir: &Path,
    problem: &str,
    results: &[(String, Vec<Run>)],
    rows: &[serde_json::Value],
    grid: Option<&Grid>,
    tuned: &[Option<Tuned>],
) -> Result<(), Failure> {
    if let Some(g) = grid {
        let sweeps: Vec<crate::plot::Sweep> = results
            .iter()
            .zip(tuned)
            .filter_map(|((label, _), t)| {
                t.as_ref().map(|t| {
                    (
                        label.clone(),
                        g.values
                            .iter()
                            .copied()
                            .zip(t.losses.iter().copied())
                            .collect(),
                    )
                })
            })
            .collect();
        let title = format!("{problem}: final validation loss against {}", g.name);
        crate::plot::sweeps(&dir.join("tuning.png"), &title, &g.name, &sweeps)?;
        crate::plot::sweeps(&dir.join("tuning.svg"), &title, &g.name, &sweeps)?;
    }
    let curves: Vec<(String, Vec<Vec<f64>>)> = results
        .iter()
        .map(|(l, runs)| (l.clone(), runs.iter().map(|r| r.losses.clone()).collect()))
        .collect();
    let title = format!("{problem}: loss per step (log scale), mean over seeds, band min to max");
    plot::loss_curves(&dir.join("curves.png"), &title, &curves)?;
    plot::loss_curves(&dir.join("curves.svg"), &title, &curves)?;
    let json_text = serde_json::to_string_pretty(&json!({"results": rows, "curves": curves.iter().map(|(l, c)| json!({"optimizer": l, "losses": c})).collect::<Vec<_>>()}))
        .map_err(|e| Failure::usage(e.to_string()))?;
    crate::atomic::write_bytes(&dir.join("results.json"), json_text.as_bytes())?;
    Ok(())
}

/// The rows on stdout: JSON lines, or the table and where the files went.
pub(super) fn print(args: &Args, steps: usize, rows: &[serde_json::Value]) {
    let problem = args.problem.as_str();
    if args.json {
        for row in rows {
            outln!("{row}");
        }
    } else {
        print_table(problem, steps, args.seeds, rows);
    }
    if let Some(dir) = &args.out {
        if !args.json {
            outln!(
                "\ncurves: {0}/curves.png, {0}/curves.svg; checkpoints: {0}/checkpoints",
                dir.display()
            );
        }
    }
}

/// The table: one line per optimizer, under a header naming the problem.
fn print_table(problem: &str, steps: usize, seeds: u64, rows: &[serde_json::Value]) {
    outln!(
        "\n{problem}, {steps} steps, {seeds} seeds (mean ± std)\n{:<20} {:>22} {:>22} {:>16} {:>9} {:>8}  non-finite",
        "optimizer", "final loss", "best loss", "test acc. / R²", "us/step", "JIT ms"
    );
    for row in rows {
        let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
        let acc = if !row["test_accuracy"].is_null() {
            format!("{:.4} ± {:.4}", f("test_accuracy"), f("test_accuracy_std"))
        } else if !row["test_r2"].is_null() {
            // Regression: the coefficient of determination on the test set.
            format!("R² {:.3} ± {:.3}", f("test_r2"), f("test_r2_std"))
        } else {
            "-".to_string()
        };
        let stopped: Vec<String> = row["stopped_at"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_u64())
                    .map(|s| s.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let skipped = row["skipped_steps"].as_u64().unwrap_or(0);
        let non_finite = match (stopped.is_empty(), skipped) {
            (true, 0) => "-".to_string(),
            (true, n) => format!("{n} steps skipped"),
            (false, _) => format!("stopped at step {}", stopped.join(", ")),
        };
        outln!(
            "{:<20} {:>22} {:>22} {:>16} {:>9.1} {:>8.2}  {non_finite}",
            match row["tuned"].as_object() {
                Some(t) => format!(
                    "{} {}={}",
                    row["optimizer"].as_str().unwrap_or(""),
                    t["name"].as_str().unwrap_or(""),
                    t["value"]
                ),
                None => row["optimizer"].as_str().unwrap_or("").to_string(),
            },
            format!("{:.3e} ± {:.1e}", f("final_loss"), f("final_loss_std")),
            format!("{:.3e} ± {:.1e}", f("best_loss"), f("best_loss_std")),
            acc,
            f("us_per_step"),
            f("jit_ms")
        );
    }
}
