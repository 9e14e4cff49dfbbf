//! `lensopt demo`: the Rosenbrock function, minimised by several optimizers.
//!
//! Each optimizer gets a small learning-rate sweep from the classic start
//! (-1.2, 1); the table reports its best run. One of the contestants is a
//! rule written as text and parsed at run time (Yogi), next to catalog rules.

use crate::Failure;
use lensopt::{DynOptimizer, Optimizer};
use ndarray::{array, Array1};
use std::time::Instant;

/// Flags of `lensopt demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Steps per run.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
}

/// Yogi (Zaheer et al. 2018), written as text: the second moment moves
/// additively towards g^2, by the sign of the difference.
const YOGI: &str = "
Yogi {
    hyper lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-3;
    state m = 0, v = 0;
    update {
        m = beta1 * m + (1 - beta1) * g;
        v = v - (1 - beta2) * sign(v - g * g) * g * g;
        p = p - lr / (1 - beta1 ^ t) * m / (sqrt(v / (1 - beta2 ^ t)) + eps);
    }
}";

fn rosenbrock(x: &Array1<f64>) -> (f64, Array1<f64>) {
    let (a, b) = (x[0], x[1]);
    let loss = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
    let grad = array![
        -2.0 * (1.0 - a) - 400.0 * a * (b - a * a),
        200.0 * (b - a * a)
    ];
    (loss, grad)
}

struct Outcome {
    lr: f64,
    final_loss: f64,
    best_loss: f64,
    distance: f64,
    micros_per_step: f64,
}

fn run_one(opt: &DynOptimizer, steps: usize) -> Result<Outcome, lensopt::Error> {
    let mut x = array![-1.2, 1.0];
    let mut stepper = opt.init::<f64>(&[&x])?;
    let mut best = f64::INFINITY;
    let started = Instant::now();
    let mut diverged = false;
    for _ in 0..steps {
        let (loss, grad) = rosenbrock(&x);
        best = best.min(loss);
        match stepper.step(&mut [&mut x], &[&grad]) {
            Ok(()) => {}
            // This learning rate diverged: the sweep moves on to the next.
            Err(lensopt::Error::NonFinite { .. }) => {
                diverged = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let final_loss = if diverged {
        f64::INFINITY
    } else {
        rosenbrock(&x).0
    };
    let lr = match opt.hypers()[opt.rule().hyper_index("lr").unwrap_or(0)] {
        lensopt::HyperValue::Num(v) => v,
        lensopt::HyperValue::Bool(_) => f64::NAN,
    };
    Ok(Outcome {
        lr,
        final_loss: if final_loss.is_finite() {
            final_loss
        } else {
            f64::INFINITY
        },
        best_loss: best.min(final_loss),
        distance: ((x[0] - 1.0).powi(2) + (x[1] - 1.0).powi(2)).sqrt(),
        micros_per_step: elapsed * 1e6 / steps as f64,
    })
}

/// Runs `lensopt demo`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let fail = |e: lensopt::Error| Failure::usage(e.to_string());
    let mut contestants: Vec<(String, DynOptimizer)> = Vec::new();
    let catalog = |name: &str| lensopt::catalog::get(name).expect("catalog entry");
    contestants.push((
        "sgd (nesterov 0.9)".into(),
        catalog("sgd")
            .with("momentum", 0.9)
            .and_then(|o| o.with("nesterov", true))
            .map_err(fail)?,
    ));
    contestants.push(("adam".into(), catalog("adam")));
    contestants.push(("lion".into(), catalog("lion")));
    contestants.push(("adan".into(), catalog("adan")));
    contestants.push((
        "yogi (text rule)".into(),
        DynOptimizer::parse(YOGI).map_err(fail)?,
    ));
    let lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1];
    outln!(
        "Rosenbrock from (-1.2, 1), {} steps, best learning rate of {:?}",
        args.steps,
        lrs
    );
    outln!(
        "{:<20} {:>8} {:>12} {:>12} {:>12} {:>9}",
        "optimizer",
        "lr",
        "final loss",
        "best loss",
        "|x - x*|",
        "us/step"
    );
    for (label, opt) in contestants {
        let mut best: Option<Outcome> = None;
        for lr in lrs {
            let opt = opt.clone().with("lr", lr).map_err(fail)?;
            let outcome = run_one(&opt, args.steps).map_err(fail)?;
            if best
                .as_ref()
                .is_none_or(|b| outcome.final_loss < b.final_loss)
            {
                best = Some(outcome);
            }
        }
        let b = best.expect("at least one learning rate");
        outln!(
            "{:<20} {:>8.0e} {:>12.3e} {:>12.3e} {:>12.3e} {:>9.2}",
            label,
            b.lr,
            b.final_loss,
            b.best_loss,
            b.distance,
            b.micros_per_step
        );
    }
    Ok(())
}
