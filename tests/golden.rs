//! Conformance: every golden case, replayed through its catalog optimizer,
//! matches the reference implementation at the tolerances of
//! `tests/golden/README.md`, after every step, in f64 and f32, through the
//! reference interpreter and through the JIT in both rewrite modes.

use lensopt::case::{self, Case};
use lensopt::{Backend, Mode};
use lensopt_tests::{configured, tolerance};

#[test]
fn every_golden_case_matches_its_reference_in_the_interpreter() {
    check_all(Backend::Interpreter);
}

#[test]
fn every_golden_case_matches_its_reference_through_the_jit() {
    check_all(Backend::Jit(Mode::Fast));
}

#[test]
fn every_golden_case_matches_its_reference_through_the_exact_jit() {
    check_all(Backend::Jit(Mode::Exact));
}

fn check_all(backend: Backend) {
    let files = lensopt_tests::golden_files();
    assert!(
        files.len() >= 50,
        "expected the full golden set, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let case = Case::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let opt = configured(&case).unwrap_or_else(|e| panic!("{name}: {e}"));
        let replay = case::run_with(&case, &opt, backend).unwrap_or_else(|e| panic!("{name}: {e}"));
        let reference = case
            .params_after
            .as_ref()
            .expect("golden cases record params_after");
        let (abs, rel) = tolerance(&case);
        let mut worst = (0.0f64, 0usize, 0usize);
        for (t, (ours, theirs)) in replay.params_after.iter().zip(reference).enumerate() {
            for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
                let excess = (a - b).abs() / (abs + rel * b.abs());
                // NaN (ours or theirs) counts as infinitely far off.
                let excess = if excess.is_nan() {
                    f64::INFINITY
                } else {
                    excess
                };
                if excess > 1.0 && excess > worst.0 {
                    worst = (excess, t, i);
                }
            }
        }
        if worst.0 > 1.0 {
            let (_, t, i) = worst;
            failures.push(format!(
                "{name}: step {} element {i}: ours {:e}, reference {:e} ({:.1}x the tolerance)",
                t + 1,
                replay.params_after[t][i],
                reference[t][i],
                worst.0
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
