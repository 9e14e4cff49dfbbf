//! File tests: a directory of rules whose header comments say what to check.
//!
//! Every `tests/filetests/*.lo` file starts with comment lines:
//!
//! ```text
//! // test optimize mode=exact      what to run: check | optimize | ptx | error | interp
//! // check: fma                    a line of the output contains this (in order)
//! // check-not: div                no line of the output contains this
//! // check-count 1: element f = div  exactly this many lines contain it
//! // error: 5:13: cannot assign    (test error) the diagnostics, all of them, in order
//! // p0: 1, 2, 3                   (test interp) parameter, gradient, steps, then
//! // g: 0.1, 0.2, 0.3              the expected values after the steps, of `p`
//! // steps: 3                      and of any state, checked on the interpreter and
//! // expect p: 0.9, 1.8, 2.7       on both JIT modes (f64, within 1e-12 relative)
//! // expect state m: ...
//! ```
//!
//! `test optimize` prints the IR after the e-graph with the declared
//! defaults compiled in as the runtime does (`mode=exact` or the default
//! `mode=fast`); `test check` the checked IR; `test ptx` the f32 PTX for
//! sm_80. Every file is run and every failure reported (one per file).
//!
//! A second test holds the run-time front end to the compile-time one:
//! every `tests/ui` case of `optimizer!` is parsed at run time, and its
//! diagnostic must be the one rustc printed (message, line and column).

use lensopt::ir::optimize::{optimize, Mode, Options};
use lensopt::ParseRule;
use lensopt::{Backend, DynOptimizer, Optimizer, Rule, Stepper, TensorMut, TensorRef};
use ndarray::Array1;
use std::path::{Path, PathBuf};

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

/// The header's directives: `(key, value)` of each `// key: value` line.
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map_while(|l| l.strip_prefix("//"))
        .map(|l| {
            let l = l.trim();
            match l.split_once(':') {
                Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                None => (l.to_string(), String::new()),
            }
        })
        .collect()
}

fn numbers(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|e| format!("`{x}`: {e}")))
        .collect()
}

/// Applies check, check-not and check-count lines to `output`.
fn check_output(output: &str, dirs: &[(String, String)]) -> Result<(), String> {
    let lines: Vec<&str> = output.lines().collect();
    let mut at = 0;
    let mut checks = 0;
    for (key, value) in dirs {
        if key == "check" {
            checks += 1;
            match lines[at..].iter().position(|l| l.contains(value.as_str())) {
                Some(k) => at += k + 1,
                None => return Err(format!("no line (after line {at}) contains `{value}`")),
            }
        } else if key == "check-not" {
            checks += 1;
            if let Some(l) = lines.iter().find(|l| l.contains(value.as_str())) {
                return Err(format!("`{value}` must not appear, but: {l}"));
            }
        } else if let Some(n) = key.strip_prefix("check-count ") {
            checks += 1;
            let want: usize = n.trim().parse().map_err(|_| format!("bad count `{n}`"))?;
            let got = lines.iter().filter(|l| l.contains(value.as_str())).count();
            if got != want {
                return Err(format!("`{value}` appears on {got} lines, not {want}"));
            }
        }
    }
    if checks == 0 {
        return Err("the file checks nothing".into());
    }
    Ok(())
}

/// `steps` steps on the interpreter and on both JIT modes: `p` and every state.
fn interp_case(rule: &Rule, dirs: &[(String, String)]) -> Result<(), String> {
    let get = |k: &str| {
        dirs.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("missing `// {k}:`"))
    };
    let p0 = numbers(get("p0")?)?;
    let g = Array1::from(numbers(get("g")?)?);
    let steps: usize = get("steps")?.parse().map_err(|_| "bad steps".to_string())?;
    let opt = DynOptimizer::from_rule(std::sync::Arc::new(rule.clone()));
    for backend in [
        Backend::Interpreter,
        Backend::Jit(Mode::Exact),
        Backend::Jit(Mode::Fast),
    ] {
        let mut p = Array1::from(p0.clone());
        let mut st: Stepper<f64> = opt
            .init(&[&p as &dyn TensorRef<f64>])
            .map_err(|e| e.to_string())?;
        st.set_backend(backend);
        for _ in 0..steps {
            st.step(&mut [&mut p as &mut dyn TensorMut<f64>], &[&g])
                .map_err(|e| e.to_string())?;
        }
        for (key, value) in dirs {
            let Some(what) = key.strip_prefix("expect ") else {
                continue;
            };
            let got: Vec<f64> = if what == "p" {
                p.to_vec()
            } else if let Some(name) = what.strip_prefix("state ") {
                match st.state(0, name) {
                    Some(v) => v.iter().copied().collect(),
                    None => vec![st
                        .scalar_state(0, name)
                        .ok_or_else(|| format!("no state `{name}`"))?],
                }
            } else {
                return Err(format!("cannot expect `{what}`"));
            };
            let want = numbers(value)?;
            let close = got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + y.abs()));
            if !close {
                return Err(format!("{backend:?}: {what} is {got:?}, expected {want:?}"));
            }
        }
    }
    Ok(())
}

fn run_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let dirs = directives(&text);
    let Some((_, _)) = dirs.first().filter(|(k, _)| k.starts_with("test ")) else {
        return Err("the first line must be `// test KIND`".into());
    };
    let test = dirs[0].0.clone();
    let mut words = test.split_whitespace().skip(1);
    let kind = words.next().unwrap_or_default();
    let mode = match words.next() {
        None | Some("mode=fast") => Mode::Fast,
        Some("mode=exact") => Mode::Exact,
        Some(other) => return Err(format!("unknown option `{other}`")),
    };
    if kind == "error" {
        let want: Vec<&str> = dirs
            .iter()
            .filter(|(k, _)| k == "error")
            .map(|(_, v)| v.as_str())
            .collect();
        let got = match Rule::parse(&text) {
            Ok(_) => return Err("the rule was accepted".into()),
            Err(d) => d.to_string(),
        };
        let got: Vec<&str> = got.lines().collect();
        return if got == want {
            Ok(())
        } else {
            Err(format!("diagnostics {got:#?}, expected {want:#?}"))
        };
    }
    let rule = Rule::parse(&text).map_err(|d| format!("does not check: {d}"))?;
    let options = Options::specialized_for(mode, &rule.default_hypers());
    match kind {
        "check" => check_output(&rule.to_string(), &dirs),
        "optimize" => check_output(&optimize(&rule, &options).to_string(), &dirs),
        "ptx" => {
            let schedule = lensopt::ir::schedule::Schedule::new(optimize(&rule, &options));
            let module = lensopt_codegen::ptx::emit(
                &schedule,
                lensopt_codegen::ptx::Precision::F32,
                "sm_80",
            )
            .map_err(|e| e.to_string())?;
            check_output(&module.text, &dirs)
        }
        "interp" => interp_case(&rule, &dirs),
        other => Err(format!("unknown test kind `{other}`")),
    }
}

#[test]
fn filetests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("filetests");
    let all = files(&dir, "lo");
    assert!(!all.is_empty(), "no file tests in {}", dir.display());
    let failures: Vec<String> = all
        .iter()
        .filter_map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let outcome = std::panic::catch_unwind(|| run_file(path))
                .unwrap_or_else(|_| Err("panicked".to_string()));
            outcome.err().map(|e| format!("{name}: {e}"))
        })
        .collect();
    println!("{} file tests, {} failed", all.len(), failures.len());
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The body of `lensopt::optimizer! { ... }` in `source`, everything else
/// blanked to spaces (newlines kept), so positions match the file's.
fn macro_body(source: &str) -> Option<String> {
    let start = source.find("optimizer!")?;
    let open = start + source[start..].find('{')?;
    let mut depth = 0usize;
    let mut close = None;
    for (i, c) in source[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close?;
    Some(
        source
            .char_indices()
            .map(|(i, c)| {
                if (i > open && i < close) || c == '\n' {
                    c
                } else {
                    ' '
                }
            })
            .collect(),
    )
}

#[test]
fn run_time_diagnostics_match_the_compile_time_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in files(&dir, "rs") {
        let source = std::fs::read_to_string(&path).unwrap();
        let Some(body) = macro_body(&source) else {
            continue; // circuit! and diagram! cases
        };
        let stderr = std::fs::read_to_string(path.with_extension("stderr")).unwrap();
        // rustc's first diagnostic: `error: MESSAGE` then ` --> FILE:LINE:COLUMN`.
        let mut lines = stderr.lines();
        let message = lines.next().unwrap().trim_start_matches("error: ");
        let place = lines.next().unwrap();
        let position = place.rsplit(".rs:").next().unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        checked += 1;
        match Rule::parse(&body) {
            Ok(_) => failures.push(format!("{name}: accepted at run time")),
            Err(d) => {
                let first = d.first().unwrap();
                let got = format!("{}:{}", first.line(), first.column());
                if first.message != message || got != position {
                    failures.push(format!(
                        "{name}: run time says {got}: {}\n  compile time says {position}: {message}",
                        first.message
                    ));
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} optimizer! cases found");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
