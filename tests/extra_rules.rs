//! The optimizers beyond the catalog, shipped as rule files
//! (`examples/rules/*.lo`: NAdam, RAdam, Adamax, Adadelta, Rprop, ADOPT,
//! LaProp, AdEMAMix, QHAdam, AdaMod, Yogi, Tiger, NovoGrad, StableAdamW),
//! each replaying its reference's cases (`tests/golden_extra/`, float64 and
//! float32) within the golden tolerances. The cases come from line-by-line
//! transcriptions of the references' code (`scripts/references/`); see
//! `tests/golden_extra/README.md` for their provenance.

use lensopt::case::{self, Case, Dtype};
use lensopt::DynOptimizer;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_rule_file_reproduces_its_reference() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/golden_extra"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut rules_checked = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let case = Case::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
        let rule_path = meta["lensopt"]["rule"].as_str().expect("lensopt.rule");
        let source = std::fs::read_to_string(root().join(rule_path)).unwrap();
        let mut opt = DynOptimizer::parse(&source).unwrap_or_else(|e| panic!("{rule_path}: {e}"));
        for (name, value) in &case.hyper {
            case::set_hyper(&mut opt, name, *value)
                .unwrap_or_else(|e| panic!("{}: {name}: {e}", file.display()));
        }
        let replay = case::run(&case, &opt).unwrap();
        let (abs, rel) = match case.dtype {
            Dtype::F64 => (1e-12, 1e-9),
            Dtype::F32 => (2e-6, 1e-5),
        };
        let want = case.params_after.as_ref().expect("params_after");
        assert_eq!(replay.params_after.len(), want.len(), "{}", file.display());
        for (step, (ours, theirs)) in replay.params_after.iter().zip(want).enumerate() {
            for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
                assert!(
                    (a - b).abs() <= abs + rel * b.abs(),
                    "{} step {} element {i}: {a} vs {b}",
                    file.display(),
                    step + 1
                );
            }
        }
        rules_checked.insert(rule_path.to_string());
    }
    assert_eq!(files.len(), 28, "two cases per optimizer");
    assert_eq!(rules_checked.len(), 14, "every rule file has its cases");
    let shipped = std::fs::read_dir(root().join("examples/rules"))
        .unwrap()
        .count();
    assert_eq!(shipped, 14, "every rule file is checked");
}
