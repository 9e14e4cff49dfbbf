//! The report of `lensopt bench`: the table's rows as they are measured,
//! then either every row as a JSON line or the summaries below the table
//! (many small tensors, circuits, JIT latency).

use serde_json::Value;

/// One line of the table (after the header when `header`).
pub(super) fn print_row(row: &Value, header: bool) {
    if header {
        outln!(
            "{:<18} {:<7} {:>11} {:>7} {:>5} {:>9} {:>8} {:>9} {:>7} {:>9}",
            "kernel",
            "backend",
            "n",
            "threads",
            "B/el",
            "step ms",
            "GB/s",
            "ceiling",
            "ratio",
            "triad"
        );
    }
    let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    outln!(
        "{:<18} {:<7} {:>11} {:>7} {:>5} {:>9.3} {:>8.1} {:>9.1} {:>7.2} {:>9.1}",
        row["kernel"].as_str().unwrap_or(""),
        row["backend"].as_str().unwrap_or(""),
        row["n"],
        row["threads"],
        row["bytes_per_element"],
        f("step_ms"),
        f("gbps"),
        f("ceiling_gbps"),
        f("ratio_to_ceiling"),
        f("triad_gbps")
    );
}

/// What follows the measurements: with `--json`, every row as one JSON
/// object per line; otherwise the summaries below the table.
pub(super) fn print_end(rows: &[Value], json: bool) {
    if json {
        for row in rows {
            outln!("{row}");
        }
    } else {
        let scans: Vec<&Value> = rows.iter().filter(|r| r["kernel"] == "scan_cost").collect();
        if !scans.is_empty() {
            outln!("\nnon-finite scan (refuse against unchecked, same stepper, interleaved):");
        }
        for row in scans {
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            outln!(
                "  {:<8} {:<4} n={:<9} refuse {:.3} ms, unchecked {:.3} ms: {:+.1}%",
                row["rule"].as_str().unwrap_or(""),
                row["backend"].as_str().unwrap_or(""),
                row["n"],
                f("refuse_ms"),
                f("unchecked_ms"),
                100.0 * f("overhead")
            );
        }
        let folded: Vec<&Value> = rows
            .iter()
            .filter(|r| r["kernel"] == "scan_folded")
            .collect();
        if !folded.is_empty() {
            outln!("\nthe check folded into the pass that unscales the gradients (pass + step, refuse against unchecked):");
        }
        for row in folded {
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            outln!(
                "  {:<8} {:<4} n={:<9} checked {:.3} ms, unchecked {:.3} ms: {:+.1}%",
                row["rule"].as_str().unwrap_or(""),
                row["backend"].as_str().unwrap_or(""),
                row["n"],
                f("checked_ms"),
                f("unchecked_ms"),
                100.0 * f("overhead")
            );
        }
        for row in rows.iter().filter(|r| r["kernel"] == "adam_many_small") {
            outln!(
                "\nadam_many_small: {} tensors, {} elements in all, 2 groups: {:.3} ms per step, {:.2}x the time of one tensor of the same size ({:.3} ms)",
                row["tensors"], row["n"], row["step_ms"].as_f64().unwrap_or(0.0),
                row["time_ratio_to_one_tensor"].as_f64().unwrap_or(0.0), row["one_tensor_step_ms"].as_f64().unwrap_or(0.0)
            );
        }
        for row in rows.iter().filter(|r| {
            r["kernel"]
                .as_str()
                .is_some_and(|k| k.starts_with("circuit_") && k != "circuit_compile")
        }) {
            let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
            outln!(
                "\n{}: {} gates x {} examples, 1 thread: {:.2e} gate evaluations/s (one bool per byte: {:.2e}, {:.0}x)",
                row["kernel"].as_str().unwrap_or(""),
                row["gates"],
                row["examples"],
                f("gate_evals_per_s"),
                f("baseline_gate_evals_per_s"),
                f("gate_evals_per_s") / f("baseline_gate_evals_per_s")
            );
        }
        for row in rows.iter().filter(|r| r["kernel"] == "circuit_compile") {
            let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
            outln!(
                "circuit_compile: {} gates, values in {}: compiled in {:.1} ms ({:.1} us a gate); forward {:.2e} gate evaluations/s, interpreted {:.2e}",
                row["gates"],
                row["storage"].as_str().unwrap_or(""),
                f("compile_ms"),
                f("compile_us_per_gate"),
                f("gate_evals_per_s"),
                f("interpreted_gate_evals_per_s")
            );
        }
        let matrix: Vec<&Value> = rows
            .iter()
            .filter(|r| r["kernel"] == "matrix_step")
            .collect();
        if !matrix.is_empty() {
            outln!(
                "{:<10} {:>11} {:>10} {:>10} {:>9} {:>8} {:>10} {:>7} {:>11}",
                "rule",
                "shape",
                "step ms",
                "bound",
                "bound ms",
                "ratio",
                "GEMM GF/s",
                "B/el",
                "refresh ms"
            );
            for row in matrix {
                let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
                outln!(
                    "{:<10} {:>11} {:>10.2} {:>10} {:>9.2} {:>8.2} {:>10.1} {:>7.2} {:>11.0}",
                    row["rule"].as_str().unwrap_or(""),
                    format!("{}x{}", row["rows"], row["cols"]),
                    f("step_ms"),
                    row["bound"].as_str().unwrap_or(""),
                    f("bound_ms"),
                    f("ratio_to_bound"),
                    f("gemm_gflops"),
                    f("state_bytes_per_element"),
                    f("refresh_ms")
                );
            }
            return;
        }
        outln!("\nJIT latency (rule text -> callable kernels, median of 100):");
        for row in rows.iter().filter(|r| r["kernel"] == "jit_latency") {
            let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
            outln!(
                "  {:<8} {:>6.0} us (p10 {:.0}, p90 {:.0}; parse {:.0}, e-graph {:.0}, cranelift {:.0}); from the on-disk cache {:.0} us",
                row["rule"].as_str().unwrap_or(""),
                f("median_us"),
                f("p10_us"),
                f("p90_us"),
                f("parse_us"),
                f("optimize_us"),
                f("codegen_us"),
                f("cached_median_us")
            );
        }
    }
}
