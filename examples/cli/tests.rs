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
    let input = golden("sgd.json");
    let rule = scratch("plain_sgd.lo");
    std::fs::write(
        &rule,
        "Plain { hyper lr = 0.5; update { p = p - lr * g; } }",
    )
    .unwrap();
    let output = scratch("sgd_rule.out.json");
    let out = lensopt(&[
        "apply",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--rule",
        rule.to_str().unwrap(),
        "--set",
        "lr=0.25",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&input).unwrap();
    let case: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p0: Vec<f64> = serde_json::from_value(case["p0"].clone()).unwrap();
    let g0: Vec<f64> = serde_json::from_value(case["grads"][0].clone()).unwrap();
    let first = &params_after(&output)[0];
    for i in 0..p0.len() {
        assert_eq!(first[i], p0[i] - 0.25 * g0[i]);
    }
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
