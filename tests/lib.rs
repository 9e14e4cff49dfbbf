//! Shared helpers of lensopt's integration tests.

use lensopt::case::{self, Case, Dtype};
use lensopt::{catalog, DynOptimizer};
use std::path::PathBuf;

/// The tolerance `(abs, rel)` of `tests/golden/README.md` for one case.
pub fn tolerance(case: &Case) -> (f64, f64) {
    let clipped = case
        .hyper
        .iter()
        .any(|(name, v)| name == "max_grad_norm" && v.as_f64() > 0.0);
    match case.dtype {
        // The reference takes Adan's clipping norm in float32.
        Dtype::F64 if clipped => (1e-6, 1e-6),
        Dtype::F64 => (1e-12, 1e-9),
        Dtype::F32 => (2e-6, 1e-5),
    }
}

/// The catalog optimizer a case names, with the case's hyperparameters.
pub fn configured(case: &Case) -> Result<DynOptimizer, String> {
    let name = case
        .optimizer
        .as_deref()
        .ok_or("the case names no optimizer")?;
    let mut opt = catalog::get(name).ok_or(format!("no catalog entry `{name}`"))?;
    for (k, v) in &case.hyper {
        case::set_hyper(&mut opt, k, *v).map_err(|e| e.to_string())?;
    }
    Ok(opt)
}

/// The folder of the golden cases copied into the repository.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// Every golden case file, sorted by name.
pub fn golden_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Checks every `(name, text)` snapshot of an iterator with insta and
/// reports all that differ, rather than stopping at the first. A macro, so
/// that insta files the snapshots under the calling test's name.
#[macro_export]
macro_rules! assert_snapshots {
    ($cases:expr $(,)?) => {{
        let mut differ = Vec::new();
        for (name, text) in $cases {
            let name: String = name;
            let text: String = text;
            let outcome = std::panic::catch_unwind(|| insta::assert_snapshot!(name.clone(), text));
            if outcome.is_err() {
                differ.push(name);
            }
        }
        assert!(differ.is_empty(), "snapshots that differ: {differ:?}");
    }};
}
