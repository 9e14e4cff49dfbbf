//! The `lensopt` command line, driven as a user drives it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn lensopt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lensopt"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lensopt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn params_after(path: &Path) -> Vec<Vec<f64>> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(v["params_after"].clone()).unwrap()
}

#[test]
fn apply_reproduces_a_golden_case() {
    let input = golden("adan_clip.json");
    let output = scratch("adan_clip.out.json");
    let out = lensopt(&[
        "apply",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ours = params_after(&output);
    let reference = params_after(&input);
    assert_eq!(ours.len(), 5);
    for (a, b) in ours.iter().flatten().zip(reference.iter().flatten()) {
        assert!((a - b).abs() <= 1e-6 + 1e-6 * b.abs(), "{a} vs {b}");
    }
}

#[test]
fn apply_writes_f32_cases_exactly_as_f32_values() {
    let input = golden("lion.f32.json");
    let output = scratch("lion.f32.out.json");
    let out = lensopt(&[
        "apply",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for x in params_after(&output).iter().flatten() {
        assert_eq!(f64::from(*x as f32), *x, "{x} is not an f32 value");
    }
}

#[test]
fn apply_overrides_optimizer_rule_and_hyperparameters() {
    // sgd.json sets lr = 0.01 and weight_decay = 0.1.
    let input = golden("sgd.json");
    let rule = scratch("plain_sgd.lo");
    std::fs::write(
        &rule,
        "Plain { hyper lr = 0.5, weight_decay = 0; update { p = p - lr * (g + weight_decay * p); } }",
    )
    .unwrap();
    let text = std::fs::read_to_string(&input).unwrap();
    let case: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p0: Vec<f64> = serde_json::from_value(case["p0"].clone()).unwrap();
    let g0: Vec<f64> = serde_json::from_value(case["grads"][0].clone()).unwrap();
    let apply = |name: &str, extra: &[&str]| {
        let output = scratch(name);
        let mut args = vec![
            "apply",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--rule",
            rule.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = lensopt(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        params_after(&output)[0].clone()
    };
    // The case's hyperparameters apply to the rule...
    let first = apply("sgd_rule.out.json", &[]);
    for i in 0..p0.len() {
        assert_eq!(first[i], p0[i] - 0.01 * (g0[i] + 0.1 * p0[i]));
    }
    // ... and `--set` overrides them.
    let first = apply("sgd_rule_set.out.json", &["--set", "lr=0.25"]);
    for i in 0..p0.len() {
        assert_eq!(first[i], p0[i] - 0.25 * (g0[i] + 0.1 * p0[i]));
    }
    // A case key the rule does not declare is refused, in one line.
    let narrow = scratch("narrow_sgd.lo");
    std::fs::write(
        &narrow,
        "Narrow { hyper lr = 0.5; update { p = p - lr * g; } }",
    )
    .unwrap();
    assert_usage_error(
        &[
            "apply",
            "--input",
            input.to_str().unwrap(),
            "--output",
            scratch("narrow.out.json").to_str().unwrap(),
            "--rule",
            narrow.to_str().unwrap(),
        ],
        "no hyperparameter `weight_decay` in `Narrow` in",
    );
    // A catalog optimizer on the command line keeps its own defaults.
    let output = scratch("sgd_as_adam.out.json");
    let out = lensopt(&[
        "apply",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--optimizer",
        "adam",
        "--set",
        "amsgrad=true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn assert_usage_error(args: &[&str], expect: &str) {
    let out = lensopt(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.contains(expect), "`{expect}` not in: {err}");
}

#[test]
fn apply_refuses_bad_input_with_status_2() {
    let output = scratch("refused.json");
    let out_path = output.to_str().unwrap();
    let adam = golden("adam.json");
    let adam = adam.to_str().unwrap();
    assert_usage_error(
        &[
            "apply",
            "--input",
            adam,
            "--output",
            out_path,
            "--optimizer",
            "adamx",
        ],
        "unknown optimizer `adamx`",
    );
    assert_usage_error(
        &[
            "apply",
            "--input",
            adam,
            "--output",
            out_path,
            "--set",
            "momentum=0.9",
        ],
        "no hyperparameter `momentum`",
    );
    assert_usage_error(
        &[
            "apply",
            "--input",
            adam,
            "--output",
            out_path,
            "--set",
            "amsgrad=0.5",
        ],
        "takes a boolean",
    );
    let malformed = scratch("malformed.json");
    std::fs::write(&malformed, "{\"p0\": [1.0, 2.0], \"grads\": [[0.1, ").unwrap();
    assert_usage_error(
        &[
            "apply",
            "--input",
            malformed.to_str().unwrap(),
            "--output",
            out_path,
        ],
        "malformed JSON",
    );
    let short = scratch("short.json");
    std::fs::write(&short, r#"{"lensopt": {"optimizer": "sgd", "hyper": {}}, "p0": [1.0, 2.0], "grads": [[0.1, 0.2], [0.3]]}"#).unwrap();
    assert_usage_error(
        &[
            "apply",
            "--input",
            short.to_str().unwrap(),
            "--output",
            out_path,
        ],
        "`grads[1]` has 1 elements",
    );
    let unknown_hyper = scratch("unknown_hyper.json");
    std::fs::write(&unknown_hyper, r#"{"lensopt": {"optimizer": "sgd", "hyper": {"lr": 0.1, "beta9": 1}}, "p0": [1.0], "grads": [[0.1]]}"#).unwrap();
    assert_usage_error(
        &[
            "apply",
            "--input",
            unknown_hyper.to_str().unwrap(),
            "--output",
            out_path,
        ],
        "no hyperparameter `beta9`",
    );
    assert_usage_error(
        &[
            "apply",
            "--input",
            "/nonexistent/case.json",
            "--output",
            out_path,
        ],
        "cannot read",
    );
    assert!(!output.exists(), "a refused call writes nothing");
}

#[test]
fn check_prints_the_ir_or_the_diagnostics() {
    let good = scratch("good.lo");
    std::fs::write(&good, "Sgd { hyper lr = 0.1; update { p = p - lr * g; } }").unwrap();
    let out = lensopt(&["check", good.to_str().unwrap()]);
    assert!(out.status.success());
    let ir = String::from_utf8_lossy(&out.stdout);
    assert!(ir.starts_with("rule Sgd\n"), "{ir}");
    assert!(ir.contains("out p = "), "{ir}");

    let bad = scratch("bad.lo");
    std::fs::write(&bad, "Sgd {\n    hyper lr = 0.1;\n    update {\n        p = p - lr * q;\n        lr = 1;\n    }\n}\n").unwrap();
    let out = lensopt(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("bad.lo:4:22"), "{err}");
    assert!(err.contains("unknown name `q`"), "{err}");
    assert!(err.contains("bad.lo:5:9"), "{err}");
    assert!(
        err.contains("cannot assign to hyperparameter `lr`"),
        "{err}"
    );
    assert!(err.contains("2 errors"), "{err}");
}

#[test]
fn misuse_of_the_command_line_exits_2() {
    let out = lensopt(&["apply", "--input"]);
    assert_eq!(out.status.code(), Some(2));
    let out = lensopt(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn jit_shows_every_stage() {
    let rule = scratch("jit_rule.lo");
    std::fs::write(
        &rule,
        "Sgd { hyper lr = 0.1, wd = 0; update { p = p - lr * (g + wd * p); } }",
    )
    .unwrap();
    for (emit, expect) in [
        ("ir", "hyper wd"),
        ("optimized", "out p"),
        ("clif", "function"),
        ("ptx", ".target sm_80"),
    ] {
        let out = lensopt(&["jit", rule.to_str().unwrap(), "--emit", emit]);
        assert!(out.status.success(), "{emit}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(expect), "{emit}: {text}");
        assert!(stderr(&out).contains("cranelift"), "timings on stderr");
    }
    // wd = 0 is compiled out of the optimized IR.
    let out = lensopt(&["jit", rule.to_str().unwrap(), "--emit", "optimized"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("= hyper wd"));
    let out = lensopt(&["jit", rule.to_str().unwrap(), "--emit", "asm"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn compare_prints_a_table_and_writes_curves() {
    let rule = scratch("cmp_rule.lo");
    std::fs::write(
        &rule,
        "Plain { hyper lr = 0.001; update { p = p - lr * g; } }",
    )
    .unwrap();
    let out_dir = scratch("compare_out");
    let out = lensopt(&[
        "compare",
        "adam",
        rule.to_str().unwrap(),
        "--problem",
        "quadratic",
        "--steps",
        "50",
        "--seeds",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["optimizer"], "Plain");
    assert!(
        rows[0]["final_loss"].as_f64().unwrap() < rows[0]["best_loss"].as_f64().unwrap() * 10.0
    );
    let svg = std::fs::read_to_string(out_dir.join("curves.svg")).unwrap();
    assert!(svg.contains("Adam") && svg.contains("Plain"), "legend");
    assert!(svg.contains("<polygon"), "the seeds' band");
    let png = std::fs::read(out_dir.join("curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, after the signature and chunk header.
    assert_eq!(
        u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
        960
    );
    assert!(out_dir.join("results.json").exists());
    assert!(out_dir.join("checkpoints/Plain-seed1.safetensors").exists());
    let out = lensopt(&["compare", "adam", "--problem", "mnist"]);
    assert_eq!(out.status.code(), Some(2));
    let out = lensopt(&["compare", "no_such_optimizer", "--problem", "iris"]);
    assert_eq!(out.status.code(), Some(2));
}

fn compare_json(args: &[&str]) -> (Vec<serde_json::Value>, Output) {
    let out = lensopt(args);
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (rows, out)
}

fn curves(dir: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    v["curves"].clone()
}

#[test]
fn compare_resumes_bit_exactly_and_refuses_foreign_checkpoints() {
    let (half, straight) = (scratch("resume_half"), scratch("resume_straight"));
    let run = |dir: &Path, steps: &str, extra: &[&str]| {
        let mut args = vec![
            "compare",
            "adam",
            "lion",
            "--problem",
            "iris",
            "--seeds",
            "2",
            "--steps",
            steps,
            "--checkpoint-every",
            "7",
            "--json",
            "--out",
        ];
        args.push(dir.to_str().unwrap());
        args.extend_from_slice(extra);
        compare_json(&args)
    };
    let (_, out) = run(&half, "30", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Resume to 60 steps: the same numbers as 60 steps straight.
    let (resumed, out) = run(&half, "60", &["--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (fresh, out) = run(&straight, "60", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(resumed[0]["resumed_runs"], 2);
    assert_eq!(fresh[0]["resumed_runs"], 0);
    assert_eq!(curves(&half), curves(&straight));
    for (a, b) in resumed.iter().zip(&fresh) {
        assert_eq!(a["final_loss"], b["final_loss"]);
        assert_eq!(a["test_accuracy"], b["test_accuracy"]);
    }
    // Resuming to fewer steps than the checkpoint holds is refused.
    let (_, out) = run(&half, "20", &["--resume"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("beyond --steps 20"),
        "{}",
        stderr(&out)
    );
    // A checkpoint of another configuration is refused, with exit 2.
    let (_, out) = run(&half, "60", &["--resume", "--set", "lr=0.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("another run"), "{}", stderr(&out));
    // A checkpoint of another rule under the file name of this one.
    std::fs::copy(
        half.join("checkpoints/Lion-seed0.safetensors"),
        half.join("checkpoints/Adam-seed0.safetensors"),
    )
    .unwrap();
    let (_, out) = run(&half, "60", &["--resume"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not `Adam`"), "{}", stderr(&out));
    let out = lensopt(&["compare", "adam", "--problem", "iris", "--resume"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn compare_reports_non_finite_gradients() {
    // Plain gradient descent with lr = 0.01 diverges on Rosenbrock within a few steps.
    let args = |policy: &str| {
        vec![
            "compare",
            "sgd",
            "--problem",
            "rosenbrock",
            "--seeds",
            "2",
            "--steps",
            "100",
            "--set",
            "lr=0.01",
            "--json",
            "--non-finite",
            policy,
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    let stop: Vec<String> = args("stop");
    let (rows, out) = compare_json(&stop.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let stopped = rows[0]["stopped_at"].as_array().unwrap();
    assert!(
        stopped.iter().all(|s| s.as_u64().is_some_and(|s| s < 100)),
        "{stopped:?}"
    );
    assert_eq!(rows[0]["skipped_steps"], 0);
    let skip: Vec<String> = args("skip");
    let (rows, out) = compare_json(&skip.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(rows[0]["skipped_steps"].as_u64().unwrap() > 0);
    assert!(rows[0]["stopped_at"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s.is_null()));
    let bad: Vec<String> = args("ignore");
    let (_, out) = compare_json(&bad.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn list_check_and_jit_speak_json() {
    let out = lensopt(&["list", "--json"]);
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let adam = rows
        .iter()
        .find(|r| r["name"] == "adam")
        .expect("adam listed");
    assert_eq!(adam["hypers"]["beta2"], 0.999);
    assert_eq!(adam["hypers"]["amsgrad"], false);
    assert_eq!(adam["states"].as_array().unwrap().len(), 3);

    let bad = scratch("json_bad.lo");
    std::fs::write(
        &bad,
        "Bad {\n  hyper lr = 0.1;\n  update { p = p - lr * q; }\n}\n",
    )
    .unwrap();
    let out = lensopt(&["check", bad.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], 3);
    assert_eq!(v["errors"][0]["column"], 25);
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("`q`"));

    let good = scratch("json_good.lo");
    std::fs::write(&good, "Sgd { hyper lr = 0.1; update { p = p - lr * g; } }").unwrap();
    let out = lensopt(&["check", good.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["rule"].clone()),
        (true.into(), "Sgd".into())
    );
    let out = lensopt(&["jit", good.to_str().unwrap(), "--emit", "clif", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["emit"], "clif");
    assert!(v["output"].as_str().unwrap().contains("function"));
    assert!(v["cranelift_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn demo_sweeps_learning_rates_past_divergence() {
    // The sweep's largest learning rates diverge on Rosenbrock: those runs
    // end at the refused step and the sweep goes on.
    let out = lensopt(&["demo", "--steps", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2 + 5, "{text}");
}

/// Runs lensopt with stdout a pipe whose reading end is already closed:
/// every write to stdout fails with a broken pipe.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_lensopt"))
        .args(args)
        .stdout(writer)
        .output()
        .expect("the binary runs")
}

fn assert_quiet_exit(args: &[&str], out: &Output) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    assert!(!err.contains("error"), "{args:?}: {err}");
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let good = scratch("pipe_good.lo");
    std::fs::write(&good, "Sgd { hyper lr = 0.1; update { p = p - lr * g; } }").unwrap();
    let good = good.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["list", "--json"],
        vec!["check", good],
        vec!["check", good, "--json"],
        vec!["jit", good],
        vec!["jit", good, "--json"],
        vec!["ptx", "--optimizer", "adam"],
        vec!["demo", "--steps", "10"],
        vec![
            "compare",
            "adam",
            "--problem",
            "rosenbrock",
            "--steps",
            "5",
            "--seeds",
            "1",
            "--json",
        ],
        vec![
            "bench",
            "--sizes",
            "1000",
            "--rules",
            "adam",
            "--seconds",
            "0.001",
        ],
    ];
    for args in &commands {
        assert_quiet_exit(args, &with_closed_stdout(args));
    }
}

#[test]
fn a_reader_that_stops_after_one_line_ends_the_command_quietly() {
    use std::io::BufRead;
    // An IR far larger than a pipe's buffer: the writer is still writing
    // when the reader goes away.
    let states: Vec<String> = (0..3000).map(|i| format!("s{i} = 0")).collect();
    let body: Vec<String> = (0..3000)
        .map(|i| format!("s{i} = 0.5 * s{i} + g;"))
        .collect();
    let big = scratch("pipe_big.lo");
    std::fs::write(
        &big,
        format!(
            "Big {{ hyper lr = 0.1; state {}; update {{ {} p = p - lr * g; }} }}",
            states.join(", "),
            body.join(" ")
        ),
    )
    .unwrap();
    for args in [vec!["check", big.to_str().unwrap()], vec!["list"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lensopt"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?}");
        let out = child.wait_with_output().unwrap();
        assert_quiet_exit(&args, &out);
    }
}

#[test]
fn a_failing_stdout_is_reported_on_one_line() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return; // not Linux
    };
    let out = Command::new(env!("CARGO_BIN_EXE_lensopt"))
        .arg("list")
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("lensopt: error: cannot write to standard output"),
        "{err}"
    );
}

#[test]
fn bench_refuses_sizes_and_seconds_it_cannot_run() {
    let mut refused = vec![
        (
            vec!["--sizes", "18446744073709551615"],
            "at most 17179869184",
        ),
        (vec!["--sizes", "1000000000000"], "at most 17179869184"),
        (vec!["--sizes", "1000,0"], "0 is not a tensor size"),
        (vec!["--seconds", "inf"], "--seconds inf"),
        (vec!["--seconds", "NaN"], "--seconds NaN"),
        (vec!["--seconds", "0"], "more than 0"),
        (vec!["--seconds=-1"], "more than 0"),
        (vec!["--seconds", "1e9"], "at most 3600"),
        (vec!["--rules", "adam,nosuch"], "unknown rule `nosuch`"),
        (vec!["--backend", "aot,llvm"], "`llvm` is not aot or jit"),
        (
            vec!["--device", "cuda", "--seconds", "inf"],
            "--seconds inf",
        ),
        (
            vec!["--device", "cuda", "--sizes", "18446744073709551615"],
            "at most",
        ),
    ];
    if cfg!(target_os = "linux") {
        // 2^34 - 1 elements pass the bound, not the memory (about 0.7 TiB).
        refused.push((vec!["--sizes", "17179869183"], "memory available"));
    }
    for (args, expect) in refused {
        let mut all = vec!["bench"];
        all.extend(args);
        assert_usage_error(&all, expect);
    }
}

#[test]
fn bench_runs_small_sizes() {
    let out = lensopt(&[
        "bench",
        "--sizes",
        "1000,3000",
        "--rules",
        "adam",
        "--seconds",
        "0.001",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows
        .iter()
        .any(|r| r["kernel"] == "adam" && r["n"] == 3000 && r["gbps"].as_f64().unwrap() > 0.0));
    // Rows say which backend ran: the catalog's compiled-in kernels by default.
    let adam: Vec<&serde_json::Value> = rows.iter().filter(|r| r["kernel"] == "adam").collect();
    assert!(adam
        .iter()
        .all(|r| r["backend"] == "aot" && r["non_finite"] == "refuse"));
    let scans: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["kernel"] == "scan_cost").collect();
    assert_eq!(scans.len(), 2, "one scan_cost row per size");
    assert!(scans
        .iter()
        .all(|r| r["refuse_ms"].as_f64().unwrap() > 0.0 && r["overhead"].is_number()));
    let latency = rows.iter().find(|r| r["kernel"] == "jit_latency").unwrap();
    assert!(latency["cached_median_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_compares_compiled_in_and_jit_kernels() {
    let out = lensopt(&[
        "bench",
        "--sizes",
        "1000",
        "--rules",
        "lion",
        "--backend",
        "aot,jit",
        "--seconds",
        "0.001",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let backends: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kernel"] == "lion")
        .map(|r| r["backend"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(backends.len(), 2);
    assert_eq!(backends[0], "aot");
    // The JIT's program, compiled now or loaded from an earlier run's cache.
    assert!(
        backends[1] == "jit" || backends[1] == "cached",
        "{backends:?}"
    );
}

/// A case with one field replaced (or added) in a valid one.
fn case_with(field: &str, value: &str) -> String {
    let mut fields = vec![
        ("lensopt", r#"{"optimizer": "sgd", "hyper": {"lr": 0.1}}"#),
        ("dtype", r#""float64""#),
        ("n", "2"),
        ("steps", "1"),
        ("p0", "[1.0, 2.0]"),
        ("grads", "[[0.1, 0.2]]"),
    ];
    match fields.iter_mut().find(|(k, _)| *k == field) {
        Some(f) => f.1 = value,
        None => fields.push((field, value)),
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    format!("{{{}}}", body.join(", "))
}

fn apply_text(name: &str, text: &str, extra: &[&str]) -> Output {
    let input = scratch(&format!("{name}.json"));
    std::fs::write(&input, text).unwrap();
    let output = scratch(&format!("{name}.out.json"));
    let mut args = vec![
        "apply",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lensopt(&args)
}

#[test]
fn apply_refuses_case_fields_of_the_wrong_type() {
    let out = apply_text("typed_ok", &case_with("dtype", r#""float32""#), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let accepted = [
        (
            "lensopt",
            r#"{"optimizer": "sgd", "hyper": null, "x": [{}]}"#,
        ),
        ("hessians", "null"),
        ("hessians", "[null]"),
        (
            "notes",
            r#"{"a": ["\u00e9\ud83d\ude00", 1e-300, -0, true, null]}"#,
        ),
    ];
    for (field, value) in accepted {
        let out = apply_text("typed_accepted", &case_with(field, value), &[]);
        assert!(out.status.success(), "{field}: {value}: {}", stderr(&out));
    }
    let out = apply_text(
        "typed_null_optimizer",
        &case_with("lensopt", r#"{"optimizer": null}"#),
        &["--optimizer", "sgd"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = [
        ("dtype", "32", "`dtype` must be the string"),
        ("dtype", "null", "`dtype` must be the string"),
        ("dtype", r#""float16""#, "unknown dtype `float16`"),
        ("dtype", r#""Float64""#, "unknown dtype `Float64`"),
        ("lensopt", "3", "`lensopt` must be an object"),
        (
            "lensopt",
            r#"{"optimizer": 3}"#,
            "`lensopt.optimizer` must be a string",
        ),
        (
            "lensopt",
            r#"{"optimizer": "sgd", "hyper": 3}"#,
            "`lensopt.hyper` must be an object",
        ),
        (
            "lensopt",
            r#"{"optimizer": "sgd", "hyper": [0.1]}"#,
            "`lensopt.hyper` must be an object",
        ),
        (
            "lensopt",
            r#"{"optimizer": "sgd", "hyper": {"lr": "0.1"}}"#,
            "`lr` must be a number or a boolean",
        ),
        (
            "lensopt",
            r#"{"optimizer": "sgd", "hyper": {"lr": 0.1, "lr": 0.2}}"#,
            "`lr` is given twice",
        ),
        (
            "lensopt",
            r#"{"optimizer": "sgd", "optimizer": "adam"}"#,
            "`lensopt.optimizer` is given twice",
        ),
        ("p0", r#""[1.0, 2.0]""#, "`p0` must be an array of numbers"),
        ("p0", "[1.0, true]", "`p0[1]` is not a number"),
        ("p0", "[1.0, 1e999]", "malformed JSON: number out of range"),
        ("p0", "[1.0, NaN]", "malformed JSON"),
        ("p0", "[1.0, 02]", "malformed JSON"),
        ("p0", "[1.0, 2.0,]", "malformed JSON: trailing comma"),
        (
            "grads",
            "null",
            "`grads` must be an array with one entry per step",
        ),
        (
            "grads",
            "{}",
            "`grads` must be an array with one entry per step",
        ),
        ("grads", "[[0.1, 0.2], null]", "`grads[1]` is null"),
        (
            "hessians",
            "3",
            "`hessians` must be an array with one entry per step",
        ),
        ("hessians", "[[1.0]]", "`hessians[0]` has 1 elements"),
        ("params_after", "[null]", "`params_after` has a null entry"),
        ("n", "2.0", "`n` must be a non-negative integer"),
        ("n", r#""2""#, "`n` must be a non-negative integer"),
        ("n", "3", "`n` is 3, but `p0` has 2 elements"),
        ("steps", "-1", "`steps` must be a non-negative integer"),
        ("steps", "2", "`steps` is 2, but `grads` has 1 entries"),
    ];
    for (field, value, expect) in refused {
        let text = case_with(field, value);
        let out = apply_text("typed_refused", &text, &[]);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{text}: {err}");
        assert!(err.contains(expect), "{text}: `{expect}` not in {err}");
    }
    let valid = case_with("dtype", r#""float64""#);
    for (text, expect) in [
        (format!("{valid} x"), "trailing characters"),
        (
            valid.replacen("\"p0\"", "\"p0\": [3], \"p0\"", 1),
            "`p0` is given twice",
        ),
        ("[1, 2]".to_string(), "the top level must be a JSON object"),
        (String::new(), "malformed JSON"),
        (
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
            "malformed JSON",
        ),
        (
            valid.replacen(
                "\"n\"",
                "\"deep\": [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]], \"n\"",
                1,
            ) + "{",
            "trailing characters",
        ),
    ] {
        let out = apply_text("typed_refused", &text, &[]);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{text}: {}", stderr(&out));
    }
}

#[test]
fn apply_refuses_cases_over_the_element_limit_without_aborting() {
    // Declared sizes are refused before any number is read.
    for (n, steps) in [("100000000", "1"), ("20000000", "10")] {
        let text = format!(r#"{{"n": {n}, "steps": {steps}, "p0": [1]}}"#);
        let out = apply_text("declared_huge", &text, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("more than 67108864 numbers"),
            "{}",
            stderr(&out)
        );
    }
    // Undeclared: refused while streaming, at 2^26 + 1 numbers.
    let input = scratch("over_limit.json");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        w.write_all(br#"{"lensopt": {"optimizer": "sgd"}, "p0": ["#)
            .unwrap();
        for _ in 0..(1 << 26) {
            w.write_all(b"0,").unwrap();
        }
        w.write_all(br#"0], "grads": []}"#).unwrap();
    }
    let output = scratch("over_limit.out.json");
    let out = lensopt(&[
        "apply",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    std::fs::remove_file(&input).unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("more than 67108864 numbers"),
        "{}",
        stderr(&out)
    );
    assert!(!output.exists());
}

#[test]
fn apply_writes_its_output_in_the_documented_layout() {
    let input = golden("adam.json");
    let output = scratch("layout.out.json");
    let out = lensopt(&[
        "apply",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(
        text.starts_with(r#"{"dtype":"float64","optimizer":"adam","params_after":[["#),
        "{}",
        &text[..80]
    );
    assert!(text.ends_with("]}}\n"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The same text as serde_json prints the value it parses to.
    assert_eq!(serde_json::to_string(&v).unwrap() + "\n", text);
    assert!(v["state"].as_object().is_some_and(|s| !s.is_empty()));
}

/// The names in `dir` that look like this CLI's temporary files.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn apply_replaces_its_output_atomically() {
    let dir = scratch("atomic");
    std::fs::create_dir_all(&dir).unwrap();
    let input = golden("adam.json");
    let input = input.to_str().unwrap();
    // A folder as output: refused, and nothing left beside it.
    let folder = dir.join("folder.json");
    std::fs::create_dir_all(&folder).unwrap();
    assert_usage_error(
        &[
            "apply",
            "--input",
            input,
            "--output",
            folder.to_str().unwrap(),
        ],
        "cannot write",
    );
    assert_usage_error(
        &[
            "apply",
            "--input",
            input,
            "--output",
            dir.join("no/such/dir.json").to_str().unwrap(),
        ],
        "cannot write",
    );
    assert_eq!(temporaries(&dir), Vec::<String>::new());

    // A run killed while it writes leaves the old output or the new one.
    let big = dir.join("big.json");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let n = 1_000_000;
        let row = |k: u64| -> String {
            let v: Vec<String> = (0..n)
                .map(|i| format!("{}", ((i * 7919 + k) % 1000) as f64 / 997.0 - 0.5))
                .collect();
            format!("[{}]", v.join(","))
        };
        write!(
            w,
            r#"{{"lensopt": {{"optimizer": "adam"}}, "p0": {}, "grads": [{}, {}]}}"#,
            row(1),
            row(2),
            row(3)
        )
        .unwrap();
    }
    let output = dir.join("big.out.json");
    let old = "{\"old\": true}\n";
    std::fs::write(&output, old).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lensopt"))
        .args([
            "apply",
            "--input",
            big.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    // Kill it as soon as it starts writing: a temporary file appears, or
    // (written in place) the output changes.
    loop {
        let writing = !temporaries(&dir).is_empty()
            || std::fs::metadata(&output).map_or(true, |m| m.len() != old.len() as u64);
        if writing || child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&output).unwrap();
    if text != old {
        let v: serde_json::Value = serde_json::from_str(&text).expect("a complete output");
        assert_eq!(v["params_after"].as_array().unwrap().len(), 2);
    }
    // Left by the kill: the next run writes its own, complete output.
    for t in temporaries(&dir) {
        std::fs::remove_file(dir.join(t)).unwrap();
    }
    let out = lensopt(&[
        "apply",
        "--input",
        big.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(params_after(&output).len(), 2);
    assert_eq!(temporaries(&dir), Vec::<String>::new());
    std::fs::remove_file(&big).unwrap();
    std::fs::remove_file(&output).unwrap();
}

#[test]
fn compare_refuses_unknown_or_non_finite_settings() {
    let base = [
        "compare",
        "adam",
        "lion",
        "--problem",
        "rosenbrock",
        "--steps",
        "5",
        "--seeds",
        "1",
    ];
    let with = |set: &str| {
        let mut args = base.to_vec();
        args.extend(["--set", set]);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let args = with("lrr=0.1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_usage_error(&args, "--set lrr");
    let err = stderr(&lensopt(&args));
    assert!(
        err.contains("`lrr`") && err.contains("beta1") && err.contains("lr,"),
        "{err}"
    );
    for bad in ["lr=nan", "lr=NaN", "lr=inf", "lr=-inf", "lr=1e999"] {
        let args = with(bad);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_usage_error(&args, "not a finite number");
    }
    // A hyperparameter of only one of the optimizers applies to that one.
    let out = lensopt(&[
        "compare",
        "adam",
        "sgd",
        "--problem",
        "rosenbrock",
        "--steps",
        "5",
        "--seeds",
        "1",
        "--set",
        "momentum=0.9",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // apply and ptx refuse non-finite settings too.
    let input = golden("adam.json");
    let output = scratch("nan_set.out.json");
    assert_usage_error(
        &[
            "apply",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--set",
            "lr=nan",
        ],
        "not a finite number",
    );
    assert_usage_error(
        &["ptx", "--optimizer", "adam", "--set", "eps=inf"],
        "not a finite number",
    );
}

#[test]
fn compare_leaves_no_temporary_files() {
    let out_dir = scratch("compare_atomic");
    let out = lensopt(&[
        "compare",
        "adam",
        "--problem",
        "quadratic",
        "--steps",
        "5",
        "--seeds",
        "1",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["results.json", "curves.png", "curves.svg"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(v["results"][0]["optimizer"], "Adam");
    assert!(std::fs::read_to_string(out_dir.join("curves.svg"))
        .unwrap()
        .contains("</svg>"));
    assert_eq!(temporaries(&out_dir), Vec::<String>::new());
    // An output that cannot be written is refused on one line.
    let blocked = scratch("compare_blocked");
    std::fs::create_dir_all(blocked.join("results.json")).unwrap();
    assert_usage_error(
        &[
            "compare",
            "adam",
            "--problem",
            "quadratic",
            "--steps",
            "5",
            "--seeds",
            "1",
            "--out",
            blocked.to_str().unwrap(),
        ],
        "cannot write",
    );
    assert_eq!(temporaries(&blocked), Vec::<String>::new());
}

#[test]
fn ptx_parses_targets_strictly() {
    for target in [
        "sm_+80",
        "sm_8_0",
        "sm_",
        "sm",
        "sm_79",
        "sm_080",
        "sm_0080",
        "sm_1000",
        "SM_80",
        "sm_80a",
        " sm_80",
        "sm_80 ",
        "sm_-80",
        "sm_８０",
        "compute_80",
    ] {
        assert_usage_error(
            &["ptx", "--optimizer", "adam", "--target", target],
            "expected one of sm_80",
        );
    }
    // Each target with the oldest PTX ISA that knows it.
    for (target, version) in [
        ("sm_80", "7.0"),
        ("sm_90", "7.8"),
        ("sm_90a", "8.0"),
        ("sm_100", "8.6"),
        ("sm_120", "8.7"),
    ] {
        let out = lensopt(&["ptx", "--optimizer", "adam", "--target", target]);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(".version {version}\n.target {target}\n")),
            "{target}"
        );
    }
}

/// A checkpoint's header length and header (plain safetensors).
fn checkpoint_header(path: &Path) -> (usize, serde_json::Value) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (n, serde_json::from_slice(&bytes[8..8 + n]).unwrap())
}

fn compare_adam_rosenbrock(dir: &Path, steps: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "compare",
        "adam",
        "--problem",
        "rosenbrock",
        "--seeds",
        "1",
        "--steps",
        steps,
        "--checkpoint-every",
        "500",
        "--json",
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lensopt(&args)
}

#[test]
fn compare_keeps_the_loss_history_out_of_the_checkpoint_header() {
    let (short, long) = (scratch("history_short"), scratch("history_long"));
    // A temporary file left by a crashed save goes with the next save.
    std::fs::create_dir_all(long.join("checkpoints")).unwrap();
    let stale = long.join("checkpoints/.Adam-seed0.safetensors.tmp.4000000000");
    std::fs::write(&stale, b"stale").unwrap();
    let out = compare_adam_rosenbrock(&short, "50", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = compare_adam_rosenbrock(&long, "5000", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stale.exists());
    let file = long.join("checkpoints/Adam-seed0.safetensors");
    let (hs, _) = checkpoint_header(&short.join("checkpoints/Adam-seed0.safetensors"));
    let (hl, header) = checkpoint_header(&file);
    // The header does not grow with the steps (but for a few digits).
    assert!(hl < 4096 && hl.abs_diff(hs) <= 24, "{hs} and {hl} bytes");
    assert!(header["__metadata__"].get("user.losses").is_none());
    assert_eq!(header["__metadata__"]["user.step"], "5000");
    assert_eq!(header["user.losses"]["dtype"], "F64");
    assert_eq!(header["user.losses"]["shape"], serde_json::json!([5000]));
    // Resumed from it, the run goes on and the history grows in the data.
    let out = compare_adam_rosenbrock(&long, "6000", &["--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["resumed_runs"], 1);
    let (_, header) = checkpoint_header(&file);
    assert_eq!(header["user.losses"]["shape"], serde_json::json!([6000]));
    let leftovers = std::fs::read_dir(long.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".tmp."))
        .count();
    assert_eq!(leftovers, 0);
}

/// Rewrites `compare`'s checkpoint of Adam on Rosenbrock through the
/// library, after `edit` of its optimizer, entries and losses.
fn rewrite_adam_checkpoint(
    path: &Path,
    edit: impl FnOnce(
        &mut lensopt::Stepper<f64>,
        &mut std::collections::BTreeMap<String, String>,
        &mut Vec<f64>,
    ),
) {
    use lensopt::Optimizer;
    let mut x = ndarray::Array1::<f64>::zeros(2);
    let mut st = lensopt::catalog::get("adam")
        .unwrap()
        .init::<f64>(&[&x])
        .unwrap();
    let contents =
        lensopt::checkpoint::load_with(path, &mut [("x", &mut x)], &mut st, |_| Ok(())).unwrap();
    let (mut entries, mut losses) = (contents.entries, contents.tensors["losses"].clone());
    edit(&mut st, &mut entries, &mut losses);
    lensopt::checkpoint::save_with(path, &[("x", &x)], &st, &entries, &[("losses", &losses)])
        .unwrap();
}

#[test]
fn compare_resume_refuses_hyperparameters_the_command_line_contradicts() {
    let dir = scratch("resume_hypers");
    let file = dir.join("checkpoints/Adam-seed0.safetensors");
    let out = compare_adam_rosenbrock(&dir, "20", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Rewritten as it was: it resumes.
    rewrite_adam_checkpoint(&file, |_, _, _| {});
    let out = compare_adam_rosenbrock(&dir, "30", &["--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Its optimizer's learning rate changed under the same configuration
    // entry: refused, naming the hyperparameter, not silently adopted.
    rewrite_adam_checkpoint(&file, |st, _, _| st.set_hyper("lr", 0.5).unwrap());
    let before = std::fs::read(&file).unwrap();
    let out = compare_adam_rosenbrock(&dir, "40", &["--resume"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("hyperparameter `lr` is 0.5, this run's 0.001"),
        "{err}"
    );
    assert!(err.contains("Adam-seed0.safetensors"), "{err}");
    let after = std::fs::read(&file).unwrap();
    assert!(after == before, "the refused resume changed the checkpoint");
    // The command line that configures 0.5 is another run too (its
    // configuration entry says 0.001).
    let out = compare_adam_rosenbrock(&dir, "40", &["--resume", "--set", "lr=0.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("another run"), "{}", stderr(&out));
}

#[test]
fn compare_resume_refuses_a_step_its_optimizer_did_not_take() {
    let dir = scratch("resume_step");
    let file = dir.join("checkpoints/Adam-seed0.safetensors");
    let out = compare_adam_rosenbrock(&dir, "20", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A recorded step (with a history to match) that `t` contradicts.
    rewrite_adam_checkpoint(&file, |_, entries, losses| {
        entries.insert("step".into(), "15".into());
        losses.truncate(15);
    });
    let out = compare_adam_rosenbrock(&dir, "40", &["--resume"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("records step 15, but its optimizer took 20 steps"),
        "{err}"
    );
    // A history that does not match the step.
    let out = compare_adam_rosenbrock(&dir, "20", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    rewrite_adam_checkpoint(&file, |_, _, losses| losses.truncate(19));
    let out = compare_adam_rosenbrock(&dir, "40", &["--resume"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("19 losses for 20 steps"),
        "{}",
        stderr(&out)
    );
}

/// `jit` takes a catalog optimizer's name (any case) as well as a file, and
/// display names follow the references (`SGD`, `AdamW`).
#[test]
fn jit_takes_catalog_names() {
    for (name, display) in [("SGD", "SGD"), ("adamw", "AdamW"), ("Lion", "Lion")] {
        let out = lensopt(&["jit", name, "--emit", "ir"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("rule {display}\n")),
            "{name}: {text}"
        );
    }
    assert_usage_error(
        &["jit", "no_such_optimizer"],
        "no such file, and no catalog optimizer of that name",
    );
    let out = lensopt(&["ptx", "--optimizer", "SGD"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rule SGD"));
}

/// `--tune` picks a value per optimizer on held-out data, reports it and
/// plots the sweep; bad grids and hyperparameters an optimizer lacks are
/// usage errors.
#[test]
fn compare_tunes_a_hyperparameter_per_optimizer() {
    let dir = scratch("tuned");
    let (rows, out) = compare_json(&[
        "compare",
        "sgd",
        "adam",
        "--problem",
        "iris",
        "--steps",
        "60",
        "--seeds",
        "1",
        "--tune",
        "lr=1e-3,1e-1",
        "--json",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let tuned = &row["tuned"];
        assert_eq!(tuned["name"], "lr");
        let losses: Vec<f64> = tuned["validation_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // The chosen value is the grid's lowest validation loss.
        let best = if losses[0] < losses[1] { 1e-3 } else { 1e-1 };
        assert_eq!(tuned["value"].as_f64().unwrap(), best, "{row}");
    }
    for file in ["tuning.png", "tuning.svg", "results.json"] {
        assert!(dir.join(file).exists(), "{file}");
    }
    assert_usage_error(
        &[
            "compare",
            "sgd",
            "--problem",
            "iris",
            "--tune",
            "lr=1e-3,oops",
        ],
        "`oops` is not a number",
    );
    assert_usage_error(
        &["compare", "sgd", "--problem", "iris", "--tune", "beta1=0.9"],
        "--tune: `SGD` has no hyperparameter `beta1`",
    );
}

/// `--schedule` scales the learning rate per step (changing the results,
/// entering each checkpoint's configuration) and refuses bad shapes.
#[test]
fn compare_takes_a_schedule() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "compare",
            "sgd",
            "--problem",
            "quadratic",
            "--steps",
            "50",
            "--seeds",
            "1",
            "--json",
        ];
        args.extend(extra);
        let (rows, out) = compare_json(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        rows[0]["final_loss"].as_f64().unwrap()
    };
    let plain = run(&[]);
    let scheduled = run(&["--schedule", "warmup_cosine:10,0.1"]);
    assert_ne!(plain, scheduled);
    assert_eq!(scheduled, run(&["--schedule", "warmup_cosine:10,0.1"]));
    assert_usage_error(
        &[
            "compare",
            "sgd",
            "--problem",
            "quadratic",
            "--schedule",
            "cosine:2",
        ],
        "`floor` must be between 0 and 1",
    );
    assert_usage_error(
        &[
            "compare",
            "sgd",
            "--problem",
            "quadratic",
            "--schedule",
            "sawtooth",
        ],
        "unknown schedule `sawtooth`",
    );
}

/// The regression problem: diabetes progression, reported as test R².
#[test]
fn compare_runs_the_regression_problem() {
    let (rows, out) = compare_json(&[
        "compare",
        "adam",
        "--problem",
        "diabetes",
        "--steps",
        "150",
        "--seeds",
        "1",
        "--json",
        "--set",
        "lr=1e-2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let row = &rows[0];
    assert!(row["test_accuracy"].is_null());
    let r2 = row["test_r2"].as_f64().unwrap();
    assert!(
        r2 > 0.2 && r2 < 0.8,
        "a fitted regression, not a perfect one: R² = {r2}"
    );
}

/// A matrix case (`shape` and nested `p0`/`grads`) is replayed on a tensor
/// of that shape and answered in the same nesting, with the numbers of the
/// same case written flat; ragged rows and a wrong shape are refused.
#[test]
fn apply_takes_matrix_cases_in_their_nesting() {
    let p0: Vec<f64> = (0..12).map(|i| (i as f64 - 5.5) / 4.0).collect();
    let grads: Vec<Vec<f64>> = (0..3)
        .map(|t| {
            (0..12)
                .map(|i| ((i * 7 + t * 3) % 11) as f64 / 10.0 - 0.5)
                .collect()
        })
        .collect();
    let rows = |v: &[f64]| v.chunks(4).map(<[f64]>::to_vec).collect::<Vec<_>>();
    let nested = serde_json::json!({
        "dtype": "float64", "shape": [3, 4], "p0": rows(&p0),
        "grads": grads.iter().map(|g| rows(g)).collect::<Vec<_>>(),
        "lensopt": {"optimizer": "adamw", "hyper": {"lr": 0.01}},
    });
    let flat = serde_json::json!({
        "dtype": "float64", "p0": p0, "grads": grads,
        "lensopt": {"optimizer": "adamw", "hyper": {"lr": 0.01}},
    });
    let run = |case: &serde_json::Value, name: &str| -> serde_json::Value {
        let input = scratch(&format!("{name}.json"));
        let output = scratch(&format!("{name}.out.json"));
        std::fs::write(&input, case.to_string()).unwrap();
        let out = lensopt(&[
            "apply",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap()
    };
    let a = run(&nested, "matrix_case");
    let b = run(&flat, "flat_case");
    let after = a["params_after"].as_array().unwrap();
    assert_eq!(after.len(), 3);
    for (t, step) in after.iter().enumerate() {
        let step: Vec<Vec<f64>> = serde_json::from_value(step.clone()).unwrap();
        assert_eq!(step.len(), 3, "rows");
        let flat_step: Vec<f64> = serde_json::from_value(b["params_after"][t].clone()).unwrap();
        assert_eq!(step.concat(), flat_step, "step {t}");
    }
    assert_eq!(
        a["state"]["m"].as_array().unwrap().len(),
        3,
        "states nested too"
    );
    // Refusals, one line each.
    for (case, expect) in [
        (
            serde_json::json!({"shape": [3, 4], "p0": [[1, 2], [3]], "grads": []}),
            "has 1 numbers, but `p0[0]` has 2",
        ),
        (
            serde_json::json!({"shape": [2, 2], "p0": [1, 2, 3], "grads": [[1, 2, 3]]}),
            "`shape` [2, 2] holds 4 elements, but `p0` has 3",
        ),
        (
            serde_json::json!({"shape": [3, 1], "p0": [[1, 2, 3]], "grads": [[[1, 2, 3]]]}),
            "has 1 rows of 3, but `shape` is [3, 1]",
        ),
        (
            serde_json::json!({"p0": [1, 2], "grads": [[[1], [2]]]}),
            "is a matrix, but `p0` is not",
        ),
    ] {
        let input = scratch("bad_matrix.json");
        std::fs::write(&input, case.to_string()).unwrap();
        assert_usage_error(
            &[
                "apply",
                "--input",
                input.to_str().unwrap(),
                "--output",
                scratch("bad_matrix.out.json").to_str().unwrap(),
                "--optimizer",
                "sgd",
            ],
            expect,
        );
    }
}

/// The matrix cases through `apply`, as they are run from outside: with
/// `--optimizer NAME` (the case's hyperparameters apply, since the case names
/// no optimizer of its own) and without (the case's name is the catalog's,
/// `muon` for `muon_bf16`); `params_after` nested as the case's `p0`.
#[test]
fn apply_runs_the_matrix_cases_with_and_without_optimizer() {
    for (case, optimizer, abs, rel) in [
        ("muon.json", Some("muon"), 1e-10, 1e-8),
        ("muon.json", None, 1e-10, 1e-8),
        ("muon_bf16.f32.json", None, 2e-3, 1e-2),
        ("adafactor.f32.json", Some("adafactor"), 1e-5, 1e-4),
        ("shampoo.json", None, 1e-10, 1e-8),
    ] {
        let input = golden("matrix").join(case);
        let output = scratch(&format!("matrix-{case}"));
        let mut args = vec![
            "apply",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        if let Some(name) = optimizer {
            args.extend(["--optimizer", name]);
        }
        let out = lensopt(&args);
        assert!(out.status.success(), "{case}: {}", stderr(&out));
        let ours: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
        let theirs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&input).unwrap()).unwrap();
        let steps = theirs["params_after"].as_array().unwrap();
        assert_eq!(ours["params_after"].as_array().unwrap().len(), steps.len());
        for (t, step) in steps.iter().enumerate() {
            let rows = step.as_array().unwrap();
            for (i, row) in rows.iter().enumerate() {
                for (j, want) in row.as_array().unwrap().iter().enumerate() {
                    let want = want.as_f64().unwrap();
                    let got = ours["params_after"][t][i][j].as_f64().unwrap();
                    assert!(
                        (got - want).abs() <= abs + rel * want.abs(),
                        "{case} step {t} [{i}][{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
    // A string option is accepted where the rule implements that choice of
    // its reference (GaLore's `std` projection), and refused otherwise.
    let case = std::fs::read_to_string(golden("../golden_extra/matrix/galore_wide.json")).unwrap();
    for (value, ok) in [("std", true), ("left", false)] {
        let text = case.replacen(
            "\"hyper\": {",
            &format!("\"hyper\": {{\"projection_type\": \"{value}\", "),
            1,
        );
        let input = scratch(&format!("galore-{value}.json"));
        std::fs::write(&input, text).unwrap();
        let out = lensopt(&[
            "apply",
            "--input",
            input.to_str().unwrap(),
            "--output",
            scratch("galore-out.json").to_str().unwrap(),
        ]);
        assert_eq!(out.status.success(), ok, "{value}: {}", stderr(&out));
        if !ok {
            assert!(
                stderr(&out).contains("implements `projection_type` = \"std\" only"),
                "{}",
                stderr(&out)
            );
        }
    }
    // A matrix rule refuses a vector case with one line and status 2.
    let out = lensopt(&[
        "apply",
        "--input",
        golden("adam.json").to_str().unwrap(),
        "--output",
        scratch("muon-on-vector.json").to_str().unwrap(),
        "--optimizer",
        "muon",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("rank 2 or more"), "{}", stderr(&out));
}
