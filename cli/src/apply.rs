//! `lensopt apply`: the conformance interface of `tests/golden/README.md`.

use crate::Failure;
use lensopt::case::{self, Case};
use lensopt::ParseRule;
use lensopt::{DynOptimizer, Optimizer};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Flags of `lensopt apply`.
#[derive(clap::Args)]
pub struct Args {
    /// The case to replay (JSON: p0, grads, optional hessians / hessian_grads, dtype, lensopt).
    #[arg(long)]
    input: PathBuf,
    /// Where to write `{"params_after": [...], "state": {...}}`.
    #[arg(long)]
    output: PathBuf,
    /// Use this catalog optimizer instead of the case's `lensopt.optimizer`
    /// (with its own defaults: the case's hyperparameters are not applied).
    #[arg(long, conflicts_with = "rule")]
    optimizer: Option<String>,
    /// Use the rule in this file instead of a catalog optimizer; the case's
    /// hyperparameters apply to it (each must be one the rule declares).
    #[arg(long)]
    rule: Option<PathBuf>,
    /// Override a hyperparameter, `name=value` (repeatable; booleans as true/false).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

/// Runs `lensopt apply`.
pub fn run(args: &Args) -> Result<(), Failure> {
    // Streamed: the case's numbers are the only copy of it in memory.
    let file = std::fs::File::open(&args.input)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.input.display())))?;
    let case = Case::from_reader(file)
        .map_err(|e| Failure::usage(format!("{}: {e}", args.input.display())))?;
    let mut opt = optimizer(args, &case)?;
    // The case's own hyperparameters apply to the optimizer it names (or,
    // when it names none, to the one given) and to a rule file (every key
    // must be one the rule declares); a catalog optimizer named on the
    // command line instead of the case's keeps its own defaults.
    let same_optimizer = match (&args.optimizer, &case.optimizer) {
        (None, _) | (Some(_), None) => true,
        (Some(given), Some(named)) => given.eq_ignore_ascii_case(named),
    };
    if same_optimizer {
        let rule = opt.rule();
        for (name, value) in &case.hyper {
            if rule.hyper_index(name).is_none() {
                let declared: Vec<&str> = rule.hypers.iter().map(|h| h.name.as_str()).collect();
                let source = args
                    .rule
                    .as_ref()
                    .map_or_else(String::new, |p| format!(" in {}", p.display()));
                return Err(Failure::usage(format!(
                    "{}: no hyperparameter `{name}` in `{}`{source}: the case sets it, but the rule declares only: {}",
                    args.input.display(),
                    rule.name,
                    declared.join(", ")
                )));
            }
            case::set_hyper(&mut opt, name, *value).map_err(|e| Failure::usage(e.to_string()))?;
        }
        // String options: a catalog rule's fixed choices of its reference.
        let fixed = match &args.rule {
            Some(_) => &[][..],
            None => lensopt::catalog::fixed_options(&rule.catalog_name()),
        };
        for (name, value) in &case.options {
            if rule.hyper_index(name).is_some() {
                return Err(Failure::usage(format!(
                    "{}: hyperparameter `{name}` must be a number or a boolean, not the string \"{value}\"",
                    args.input.display()
                )));
            }
            case::check_option(&rule.name, fixed, name, value)
                .map_err(|e| Failure::usage(format!("{}: {e}", args.input.display())))?;
        }
    }
    for item in &args.set {
        let (name, value) = crate::parse_set(item)?;
        case::set_hyper(&mut opt, name, value).map_err(|e| Failure::usage(e.to_string()))?;
    }
    let replay = case::run(&case, &opt).map_err(|e| Failure::usage(e.to_string()))?;
    let dtype = match case.dtype {
        case::Dtype::F32 => "float32",
        case::Dtype::F64 => "float64",
    };
    // A matrix case is answered in its own nesting: rows of `cols` numbers.
    let cols = match case.shape.as_deref() {
        Some(&[_, c]) => Some(c),
        _ => None,
    };
    let n = case.p0.len();
    drop(case);
    let nested = |w: &mut dyn std::io::Write, v: &[f64]| -> std::io::Result<()> {
        match cols.filter(|c| *c > 0 && v.len() == n) {
            Some(c) => serde_json::to_writer(w, &v.chunks(c).collect::<Vec<_>>()),
            None => serde_json::to_writer(w, v),
        }
        .map_err(std::io::Error::other)
    };
    let name = opt.rule().catalog_name();
    // The keys in serde_json's order (sorted, as a `json!` object prints
    // them), written straight from the vectors: no JSON tree of them.
    let state: BTreeMap<&str, &Vec<f64>> = replay
        .state
        .iter()
        .map(|(name, values)| (name.as_str(), values))
        .collect();
    crate::atomic::write(&args.output, |w| {
        write!(w, "{{\"dtype\":\"{dtype}\",\"optimizer\":")?;
        serde_json::to_writer(&mut *w, &name)?;
        w.write_all(b",\"params_after\":[")?;
        for (t, row) in replay.params_after.iter().enumerate() {
            if t > 0 {
                w.write_all(b",")?;
            }
            nested(&mut *w, row)?;
        }
        w.write_all(b"]")?;
        w.write_all(b",\"state\":{")?;
        for (k, (name, values)) in state.iter().enumerate() {
            if k > 0 {
                w.write_all(b",")?;
            }
            serde_json::to_writer(&mut *w, name)?;
            w.write_all(b":")?;
            nested(&mut *w, values)?;
        }
        w.write_all(b"}}\n")
    })
}

fn optimizer(args: &Args, case: &Case) -> Result<DynOptimizer, Failure> {
    if let Some(path) = &args.rule {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
        return lensopt::Rule::parse(&source)
            .map(|rule| DynOptimizer::from_rule(std::sync::Arc::new(rule)))
            .map_err(|d| {
                let first = d.first().map_or_else(String::new, |x| x.to_string());
                Failure::usage(format!("{}:{first}", path.display()))
            });
    }
    // Without an optimizer in the case, its name is the catalog's (a
    // variant `muon_bf16` runs `muon`).
    let from_case_name = || {
        let name = case.name.as_deref()?.to_lowercase();
        if lensopt::catalog::get(&name).is_some() {
            return Some(name);
        }
        let (base, _variant) = name.rsplit_once('_')?;
        lensopt::catalog::get(base).map(|_| base.to_string())
    };
    let name = args
        .optimizer
        .clone()
        .or_else(|| case.optimizer.clone())
        .or_else(from_case_name)
        .ok_or_else(|| {
            Failure::usage("the case names no optimizer: pass --optimizer NAME or --rule FILE")
        })?;
    lensopt::catalog::get(&name.to_lowercase()).ok_or_else(|| {
        Failure::usage(format!(
            "unknown optimizer `{name}` (the catalog has: {})",
            lensopt::catalog::all_names().join(", ")
        ))
    })
}
