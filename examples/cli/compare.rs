//! `lensopt compare`: several optimizers on one problem, over several seeds,
//! with progress bars, a table and the loss curves as SVG.
//!
//! Problems: `rosenbrock` (2-D, start perturbed per seed), `quadratic` (50-D,
//! curvatures log-spaced from 1 to 1,000), `iris` (logistic regression, test
//! accuracy on a seeded 80/20 split) and `digits` (the 64-128-64-10 MLP).
//! An optimizer is a catalog name or a rule file.

use crate::Failure;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lensopt::diagram::plan::{Model, SplitMix};
use lensopt::loss::{accuracy, one_hot, SoftmaxCrossEntropy};
use lensopt::train::Trainer;
use lensopt::{DynOptimizer, Optimizer};
use ndarray::{Array1, Array2};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `lensopt compare`.
#[derive(clap::Args)]
pub struct Args {
    /// Optimizers: catalog names or rule files.
    #[arg(required = true)]
    optimizers: Vec<String>,
    /// rosenbrock, quadratic, iris or digits.
    #[arg(long)]
    problem: String,
    /// Steps per run (default depends on the problem).
    #[arg(long)]
    steps: Option<usize>,
    /// Seeds per optimizer.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Folder for `curves.svg` and `results.json`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a hyperparameter of every optimizer, `name=value` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Print the results as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// One run: the loss after every step, the final test accuracy (if any), timings.
struct Run {
    losses: Vec<f64>,
    accuracy: Option<f64>,
    micros_per_step: f64,
    jit_ms: f64,
}

fn optimizer(spec: &str, set: &[String]) -> Result<(String, DynOptimizer), Failure> {
    let mut opt = match lensopt::catalog::get(&spec.to_lowercase()) {
        Some(o) => o,
        None => {
            let text = std::fs::read_to_string(spec).map_err(|_| {
                Failure::usage(format!(
                    "`{spec}` is neither a catalog optimizer ({}) nor a readable rule file",
                    lensopt::catalog::names().join(", ")
                ))
            })?;
            DynOptimizer::parse(&text).map_err(|e| Failure::usage(format!("{spec}:{e}")))?
        }
    };
    for item in set {
        let (name, value) = crate::parse_set(item)?;
        // A hyperparameter an optimizer does not have is skipped for that optimizer.
        if opt.rule().hyper_index(name).is_some() {
            opt.set(name, value)
                .map_err(|e| Failure::usage(e.to_string()))?;
        }
    }
    Ok((opt.rule().name.clone(), opt))
}

/// Compile time of the optimizer's kernels (uncached), for the table.
fn jit_ms(opt: &DynOptimizer) -> f64 {
    let rule = opt.rule();
    let key = lensopt::jit::Key::for_step(
        &[opt.hypers()],
        &vec![false; rule.inputs.len()],
        lensopt::Mode::Fast,
    );
    let started = Instant::now();
    let _ = lensopt::jit::compile::<f64>(&rule, &key);
    started.elapsed().as_secs_f64() * 1e3
}

fn closed_form(
    opt: &DynOptimizer,
    problem: &str,
    steps: usize,
    seed: u64,
    bar: &ProgressBar,
) -> Result<Run, Failure> {
    let fail = |e: lensopt::Error| Failure::usage(e.to_string());
    let mut rng = SplitMix(seed);
    let (mut x, curv): (Array1<f64>, Vec<f64>) = if problem == "rosenbrock" {
        (
            Array1::from(vec![-1.2 + 0.1 * rng.normal(), 1.0 + 0.1 * rng.normal()]),
            Vec::new(),
        )
    } else {
        let n = 50;
        let curv = (0..n)
            .map(|i| 10f64.powf(3.0 * i as f64 / (n - 1) as f64))
            .collect();
        (
            Array1::from((0..n).map(|_| rng.normal()).collect::<Vec<_>>()),
            curv,
        )
    };
    let value_grad = |x: &Array1<f64>| -> (f64, Array1<f64>) {
        if curv.is_empty() {
            let (a, b) = (x[0], x[1]);
            (
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2),
                Array1::from(vec![
                    -2.0 * (1.0 - a) - 400.0 * a * (b - a * a),
                    200.0 * (b - a * a),
                ]),
            )
        } else {
            let v = x.iter().zip(&curv).map(|(x, c)| 0.5 * c * x * x).sum();
            (
                v,
                Array1::from_iter(x.iter().zip(&curv).map(|(x, c)| c * x)),
            )
        }
    };
    let mut st = opt.init::<f64>(&[&x]).map_err(fail)?;
    let mut losses = Vec::with_capacity(steps + 1);
    let started = Instant::now();
    for _ in 0..steps {
        let (v, g) = value_grad(&x);
        losses.push(v);
        st.step(&mut [&mut x], &[&g]).map_err(fail)?;
        bar.inc(1);
    }
    losses.push(value_grad(&x).0);
    Ok(Run {
        losses,
        accuracy: None,
        micros_per_step: started.elapsed().as_secs_f64() * 1e6 / steps.max(1) as f64,
        jit_ms: 0.0,
    })
}

fn supervised(
    opt: &DynOptimizer,
    problem: &str,
    steps: usize,
    seed: u64,
    bar: &ProgressBar,
) -> Result<Run, Failure> {
    let fail = |e: Box<dyn std::error::Error>| Failure::usage(e.to_string());
    let (data, diagram, scale) = if problem == "iris" {
        (
            lensopt::data::iris().map_err(|e| fail(e.into()))?,
            lensopt::diagram!(dense(logits, 4, 3)),
            None,
        )
    } else {
        (
            lensopt::data::digits().map_err(|e| fail(e.into()))?,
            lensopt::diagram!(
                dense(hidden1, 64, 128)
                    >> relu(128)
                    >> dense(hidden2, 128, 64)
                    >> relu(64)
                    >> dense(out, 64, 10)
            ),
            Some(16.0),
        )
    };
    let (train, test) = data.split(0.2, 2024);
    let (train, test) = match scale {
        Some(s) => {
            let (mut a, mut b) = (train, test);
            a.features.mapv_inplace(|v| v / s);
            b.features.mapv_inplace(|v| v / s);
            (a, b)
        }
        None => {
            let (min, max) = train.ranges();
            (train.scaled(&min, &max), test.scaled(&min, &max))
        }
    };
    let x_train = train.features.mapv(|v| v as f32);
    let x_test = test.features.mapv(|v| v as f32);
    let classes = data.classes;
    let y_train: Array2<f32> = one_hot(&train.labels, classes);
    let model = Model::<f32>::new(&diagram, seed).map_err(|e| fail(e.into()))?;
    let mut trainer = Trainer::new(model, SoftmaxCrossEntropy, opt).map_err(|e| fail(e.into()))?;
    let batch = 128.min(x_train.nrows());
    let mut rng = SplitMix(seed ^ 0x5EED);
    let mut order = rng.permutation(x_train.nrows());
    let mut at = 0;
    let mut losses = Vec::with_capacity(steps);
    let started = Instant::now();
    for _ in 0..steps {
        if at + batch > order.len() {
            order = rng.permutation(x_train.nrows());
            at = 0;
        }
        let idx = &order[at..at + batch];
        at += batch;
        let xb = Array2::from_shape_fn((batch, x_train.ncols()), |(i, j)| x_train[(idx[i], j)]);
        let yb = Array2::from_shape_fn((batch, classes), |(i, j)| y_train[(idx[i], j)]);
        let loss = trainer.step(&xb, &yb).map_err(|e| fail(e.into()))?;
        losses.push(f64::from(loss));
        bar.inc(1);
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / steps.max(1) as f64;
    let acc = accuracy(
        &trainer.model.predict(&x_test).map_err(|e| fail(e.into()))?,
        &test.labels,
    );
    Ok(Run {
        losses,
        accuracy: Some(acc),
        micros_per_step: micros,
        jit_ms: 0.0,
    })
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The loss curves (mean over seeds, band from min to max), log-scaled, as SVG.
fn svg(problem: &str, curves: &[(String, Vec<Vec<f64>>)]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    const M: f64 = 60.0;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
    ];
    let log = |v: f64| v.max(1e-300).log10();
    let all = curves
        .iter()
        .flat_map(|(_, runs)| runs.iter().flatten().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(log(v)), b.max(log(v)))
    });
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let steps = curves
        .iter()
        .flat_map(|(_, r)| r.iter().map(Vec::len))
        .max()
        .unwrap_or(1)
        .max(2);
    let px = |i: usize| M + (W - 2.0 * M) * i as f64 / (steps - 1) as f64;
    let py = |v: f64| H - M - (H - 2.0 * M) * (log(v).clamp(lo, hi) - lo) / (hi - lo);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{M}\" y=\"30\" font-size=\"16\">{problem}: loss (log scale) per step, mean over seeds, band min to max</text>\n"
    );
    out.push_str(&format!(
        "<line x1=\"{M}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/><line x1=\"{M}\" y1=\"{M}\" x2=\"{M}\" y2=\"{0}\" stroke=\"black\"/>\n",
        H - M,
        W - M
    ));
    for k in 0..=4 {
        let e = lo + (hi - lo) * k as f64 / 4.0;
        out.push_str(&format!(
            "<text x=\"5\" y=\"{:.1}\">1e{e:.1}</text>\n",
            py(10f64.powf(e)) + 4.0
        ));
    }
    out.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\">{steps} steps</text>\n",
        W - M - 60.0,
        H - M + 20.0
    ));
    for (c, (name, runs)) in curves.iter().enumerate() {
        let color = colors[c % colors.len()];
        let len = runs.iter().map(Vec::len).min().unwrap_or(0);
        let stat =
            |i: usize, f: &dyn Fn(&[f64]) -> f64| f(&runs.iter().map(|r| r[i]).collect::<Vec<_>>());
        let mean: Vec<f64> = (0..len)
            .map(|i| stat(i, &|v| v.iter().sum::<f64>() / v.len() as f64))
            .collect();
        let min: Vec<f64> = (0..len)
            .map(|i| stat(i, &|v| v.iter().copied().fold(f64::INFINITY, f64::min)))
            .collect();
        let max: Vec<f64> = (0..len)
            .map(|i| stat(i, &|v| v.iter().copied().fold(f64::NEG_INFINITY, f64::max)))
            .collect();
        let band: Vec<String> = (0..len)
            .map(|i| format!("{:.1},{:.1}", px(i), py(max[i])))
            .chain(
                (0..len)
                    .rev()
                    .map(|i| format!("{:.1},{:.1}", px(i), py(min[i]))),
            )
            .collect();
        out.push_str(&format!(
            "<polygon points=\"{}\" fill=\"{color}\" fill-opacity=\"0.15\"/>\n",
            band.join(" ")
        ));
        let line: Vec<String> = (0..len)
            .map(|i| format!("{:.1},{:.1}", px(i), py(mean[i])))
            .collect();
        out.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>\n",
            line.join(" ")
        ));
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{name}</text>\n",
            W - M - 150.0,
            M + 15.0 * c as f64
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// Runs `lensopt compare`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let problem = args.problem.as_str();
    let default_steps = match problem {
        "rosenbrock" => 2000,
        "quadratic" => 500,
        "iris" => 300,
        "digits" => 400,
        other => {
            return Err(Failure::usage(format!(
                "unknown problem `{other}`: rosenbrock, quadratic, iris or digits"
            )))
        }
    };
    let steps = args.steps.unwrap_or(default_steps);
    let optimizers: Vec<(String, DynOptimizer)> = args
        .optimizers
        .iter()
        .map(|o| optimizer(o, &args.set))
        .collect::<Result<_, _>>()?;
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>22} {bar:30} {pos}/{len} steps {msg}")
        .map_err(|e| Failure::usage(e.to_string()))?;
    let mut results: Vec<(String, Vec<Run>)> = Vec::new();
    for (label, opt) in &optimizers {
        let bar = bars.add(ProgressBar::new(steps as u64 * args.seeds));
        bar.set_style(style.clone());
        bar.set_prefix(label.clone());
        let jit = jit_ms(opt);
        let mut runs = Vec::new();
        for seed in 0..args.seeds {
            let mut run = match problem {
                "rosenbrock" | "quadratic" => closed_form(opt, problem, steps, seed, &bar)?,
                _ => supervised(opt, problem, steps, seed, &bar)?,
            };
            run.jit_ms = jit;
            runs.push(run);
        }
        bar.finish_with_message("done");
        results.push((label.clone(), runs));
    }
    let mut rows = Vec::new();
    for (label, runs) in &results {
        let finals: Vec<f64> = runs
            .iter()
            .map(|r| *r.losses.last().unwrap_or(&f64::NAN))
            .collect();
        let bests: Vec<f64> = runs
            .iter()
            .map(|r| r.losses.iter().copied().fold(f64::INFINITY, f64::min))
            .collect();
        let accs: Vec<f64> = runs.iter().filter_map(|r| r.accuracy).collect();
        let (fm, fs) = mean_std(&finals);
        let (bm, bs) = mean_std(&bests);
        let (am, asd) = mean_std(&accs);
        let us = runs.iter().map(|r| r.micros_per_step).sum::<f64>() / runs.len().max(1) as f64;
        rows.push(json!({
            "optimizer": label, "problem": problem, "steps": steps, "seeds": args.seeds,
            "final_loss": fm, "final_loss_std": fs, "best_loss": bm, "best_loss_std": bs,
            "test_accuracy": if accs.is_empty() { serde_json::Value::Null } else { json!(am) },
            "test_accuracy_std": if accs.is_empty() { serde_json::Value::Null } else { json!(asd) },
            "us_per_step": us, "jit_ms": runs.first().map_or(0.0, |r| r.jit_ms),
        }));
    }
    if args.json {
        for row in &rows {
            println!("{row}");
        }
    } else {
        println!(
            "\n{problem}, {steps} steps, {} seeds (mean ± std)\n{:<20} {:>22} {:>22} {:>16} {:>9} {:>8}",
            args.seeds, "optimizer", "final loss", "best loss", "test accuracy", "us/step", "JIT ms"
        );
        for row in &rows {
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            let acc = if row["test_accuracy"].is_null() {
                "-".to_string()
            } else {
                format!("{:.4} ± {:.4}", f("test_accuracy"), f("test_accuracy_std"))
            };
            println!(
                "{:<20} {:>22} {:>22} {:>16} {:>9.1} {:>8.2}",
                row["optimizer"].as_str().unwrap_or(""),
                format!("{:.3e} ± {:.1e}", f("final_loss"), f("final_loss_std")),
                format!("{:.3e} ± {:.1e}", f("best_loss"), f("best_loss_std")),
                acc,
                f("us_per_step"),
                f("jit_ms")
            );
        }
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", dir.display())))?;
        let curves: Vec<(String, Vec<Vec<f64>>)> = results
            .iter()
            .map(|(l, runs)| (l.clone(), runs.iter().map(|r| r.losses.clone()).collect()))
            .collect();
        let svg_path = dir.join("curves.svg");
        std::fs::write(&svg_path, svg(problem, &curves))
            .map_err(|e| Failure::usage(e.to_string()))?;
        let json_text = serde_json::to_string_pretty(&json!({"results": rows, "curves": curves.iter().map(|(l, c)| json!({"optimizer": l, "losses": c})).collect::<Vec<_>>()}))
            .map_err(|e| Failure::usage(e.to_string()))?;
        std::fs::write(dir.join("results.json"), json_text)
            .map_err(|e| Failure::usage(e.to_string()))?;
        if !args.json {
            println!("\ncurves: {}", svg_path.display());
        }
    }
    Ok(())
}
