//! The optimizers `lensopt compare` is given: catalog names or rule files
//! with the command line's `--set` applied, the check that every `--set`
//! names a hyperparameter one of them has, their kernels' compile time for
//! the table, and their labels made safe for file names.

use crate::Failure;
use lensopt::{DynOptimizer, Optimizer};
use std::time::Instant;

pub(super) fn optimizer(spec: &str, set: &[String]) -> Result<(String, DynOptimizer), Failure> {
    let mut opt = match lensopt::catalog::get(&spec.to_lowercase()) {
        Some(o) => o,
        None => {
            let text = std::fs::read_to_string(spec).map_err(|_| {
                Failure::usage(format!(
                    "`{spec}` is neither a catalog optimizer ({}) nor a readable rule file",
                    lensopt::catalog::all_names().join(", ")
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

/// Refuses a `--set` name that is a hyperparameter of none of `optimizers`
/// (a typo would otherwise change nothing), naming those they have.
pub(super) fn check_set(
    set: &[String],
    optimizers: &[(String, DynOptimizer)],
) -> Result<(), Failure> {
    for item in set {
        let (name, _) = crate::parse_set(item)?;
        if optimizers
            .iter()
            .any(|(_, o)| o.rule().hyper_index(name).is_some())
        {
            continue;
        }
        let mut known: Vec<String> = optimizers
            .iter()
            .flat_map(|(_, o)| {
                o.rule()
                    .hypers
                    .iter()
                    .map(|h| h.name.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        known.sort();
        known.dedup();
        let known = if known.is_empty() {
            "they have none".to_string()
        } else {
            format!("they have: {}", known.join(", "))
        };
        return Err(Failure::usage(format!(
            "--set {name}: no optimizer compared has a hyperparameter `{name}` ({known})"
        )));
    }
    Ok(())
}

/// Compile time of the optimizer's kernels (uncached), for the table.
pub(super) fn jit_ms(opt: &DynOptimizer) -> f64 {
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

/// A file-name-safe form of an optimizer's label.
pub(super) fn file_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
