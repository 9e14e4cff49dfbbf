//! A mutation fuzzer of rule text: catalog rules (and a few edge cases)
//! mutated by deleting, duplicating and swapping tokens, inserting random
//! operators, numbers, names, unicode and brackets, truncating, and nesting
//! deeply, then pushed through every stage that takes a rule: parse, check,
//! optimize (both modes, with the defaults compiled in), schedule, CPU
//! codegen and PTX. No stage may panic; every mutant gets an `Err` or a
//! result.
//!
//! 20,000 mutants per run from a fixed seed; `LENSOPT_FUZZ_MUTANTS=N`
//! changes the count and `LENSOPT_FUZZ_SEED=S` the seed (for longer runs).

use lensopt::ir::optimize::{optimize, Mode, Options};
use lensopt::ir::schedule::Schedule;
use lensopt::ParseRule;
use lensopt::Rule;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// SplitMix64: small, fast and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Splits text into tokens at boundaries between words, numbers, spaces and
/// punctuation (each punctuation character its own token).
fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let class = |c: char| {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            0
        } else if c.is_whitespace() {
            1
        } else {
            2
        }
    };
    for c in text.chars() {
        match out.last_mut() {
            Some(last) if class(c) != 2 && last.chars().last().map(class) == Some(class(c)) => {
                last.push(c)
            }
            _ => out.push(c.to_string()),
        }
    }
    out
}

const OPERATORS: &[&str] = &[
    "+", "-", "*", "/", "^", "<", "<=", ">", ">=", "==", "!=", "&&", "||", "!", "=", "+=", "-=",
    "*=", "/=", "?", ",", ";", ":", "#", "@", "$", "&", "|", "%",
];
const WORDS: &[&str] = &[
    "p",
    "g",
    "t",
    "m",
    "v",
    "lr",
    "let",
    "update",
    "hyper",
    "state",
    "scalar",
    "input",
    "view",
    "sum",
    "mean",
    "norm",
    "max_abs",
    "count",
    "dot",
    "global_norm",
    "global_sum",
    "select",
    "fma",
    "clamp",
    "sqrt",
    "rsqrt",
    "exp",
    "ln",
    "pow",
    "sign",
    "abs",
    "min",
    "max",
    "sigmoid",
    "f32",
    "f64",
    "bf16",
    "lerp",
    "cos",
    "floor",
    "warmup_cosine",
    "chain",
    "transform",
    "scale_by_adam",
    "ema",
    "cautious",
    "present",
    "numel",
    "true",
    "false",
    "pub",
    "fn",
    "h",
    "h?",
    "x",
];
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "0.5",
    "1e-8",
    "1e400",
    "-1e400",
    "1e-400",
    "0x10",
    "1_000",
    "1.",
    ".5",
    "1e",
    "18446744073709551616",
    "1f32",
    "2.5e308",
    "nan",
    "inf",
    "3.4e38",
];
const STRANGE: &[&str] = &[
    "é",
    "λ",
    "🙂",
    "\u{0}",
    "\u{feff}",
    "\u{202e}",
    "\"",
    "'",
    "\\",
    "//",
    "/*",
    "*/",
    "\n",
    "\t",
    "r#",
    "b'x'",
    "'a",
    "\"unterminated",
];
const BRACKETS: &[&str] = &["(", ")", "{", "}", "[", "]"];

fn mutate(rng: &mut Rng, base: &str) -> String {
    let mut toks = tokens(base);
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        let n = toks.len();
        if n == 0 {
            toks.push(rng.pick(WORDS).to_string());
            continue;
        }
        let at = rng.below(n);
        match rng.below(10) {
            0 => {
                toks.remove(at);
            }
            1 => {
                let t = toks[at].clone();
                toks.insert(at, t);
            }
            2 => {
                let other = rng.below(n);
                toks.swap(at, other);
            }
            3 => toks.insert(at, rng.pick(OPERATORS).to_string()),
            4 => toks[at] = rng.pick(NUMBERS).to_string(),
            5 => toks.insert(at, rng.pick(WORDS).to_string()),
            6 => toks.insert(at, rng.pick(STRANGE).to_string()),
            7 => toks.truncate(at),
            8 => toks.insert(at, rng.pick(BRACKETS).to_string()),
            _ => {
                // Deep nesting of a random kind around a token.
                let depth = [10, 300, 3000][rng.below(3)];
                let (open, close) = match rng.below(4) {
                    0 => ("(", ")"),
                    1 => ("abs(", ")"),
                    2 => ("-", ""),
                    _ => ("{", "}"),
                };
                let t = toks[at].clone();
                toks[at] = format!("{}{t}{}", open.repeat(depth), close.repeat(depth));
            }
        }
    }
    toks.concat()
}

/// Every stage a rule goes through, for both element types' code; a matrix
/// rule also takes a step on the matrix evaluator (a 3 x 4 matrix and a
/// flat buffer), where the kernel backends refuse it.
fn compile_everything(rule: &Rule) {
    if rule.is_matrix() {
        use lensopt::ir::interp::StepTensor;
        use lensopt::ir::matrix;
        let hypers = rule.default_hypers();
        let dims = matrix::matrix_dims(rule, &[3, 4], &hypers).expect("a 3 x 4 matrix");
        let mut p: Vec<f64> = (0..12).map(|i| (i as f64 * 0.7).sin()).collect();
        let g: Vec<f64> = (0..12).map(|i| (i as f64 * 1.3).cos()).collect();
        if let Ok(mut state) = matrix::init_state(rule, &hypers, &p, dims) {
            let inputs = vec![Some(g.as_slice()); rule.inputs.len()];
            let present = vec![true; rule.inputs.len()];
            let mut tensors = vec![StepTensor {
                param: &mut p,
                grad: &g,
                inputs,
                state: &mut state,
                hypers: &hypers,
            }];
            let _ = matrix::step(rule, 1, &present, &mut tensors, &[dims], None);
            // The fusion plan's kernels are element rules the JIT compiles.
            for kernel in lensopt::ir::fusion::Plan::new(rule).kernels {
                let _ = lensopt::ir::schedule::Schedule::new(kernel.rule).check_budget();
            }
        }
    }
    for mode in [Mode::Exact, Mode::Fast] {
        let options = Options::specialized_for(mode, &rule.default_hypers());
        let optimized = optimize(rule, &options);
        let schedule = Schedule::new(optimized);
        // Codegen may refuse (too many buffers, say), but must not panic.
        let _ = lensopt_codegen::cpu::Program::<f32>::compile(schedule.clone());
        let _ =
            lensopt_codegen::ptx::emit(&schedule, lensopt_codegen::ptx::Precision::F32, "sm_80");
        let _ =
            lensopt_codegen::ptx::emit(&schedule, lensopt_codegen::ptx::Precision::F64, "sm_90");
    }
}

fn seeds() -> Vec<String> {
    let mut out: Vec<String> = lensopt::catalog::all_names()
        .into_iter()
        .filter_map(lensopt::catalog::source)
        .map(str::to_string)
        .collect();
    out.push("R { hyper lr = 0.1, z = 0; update { p = p - lr * g * sum(z * g); } }".into());
    out.push("H { hyper lr = 0.1; input h?; update { p = p - lr * g * sum(h); } }".into());
    out.push(
        "D { hyper lr = 0.1; state m = 0, seen = 0; update { seen = seen + 1; m = 0.9 * m + g; p = p - lr * m; } }"
            .into(),
    );
    out.push(
        "transform mom(u) { hyper mu = 0.9; state buf = 0; buf = mu * buf + u; buf } fn half(x) { let h = x * 0.5; h } C { hyper lr = 0.1; update { p = p + chain(g, mom, half, scale_by_learning_rate) + 0 * ema(p, g, 0.5); } }"
            .into(),
    );
    out
}

#[test]
fn mutated_rules_never_panic() {
    let count: usize = std::env::var("LENSOPT_FUZZ_MUTANTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("LENSOPT_FUZZ_SEED")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0x01e5_00b7);
    let seeds = seeds();
    for text in &seeds {
        let rule = Rule::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        compile_everything(&rule);
    }
    let mut rng = Rng(seed);
    let (mut parsed, mut refused, mut panics) = (0usize, 0usize, Vec::new());
    // Quiet the default hook: a panic is recorded and reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..count {
        let base = &seeds[rng.below(seeds.len())];
        let text = mutate(&mut rng, base);
        let outcome = catch_unwind(AssertUnwindSafe(|| match Rule::parse(&text) {
            Ok(rule) => {
                // Valid mutants are compiled in full; to keep the run short,
                // every fourth one (the rest were checked up to the IR).
                if i % 4 == 0 {
                    compile_everything(&rule);
                }
                true
            }
            Err(d) => {
                // Errors must render, with a line and column.
                let _ = d.to_string();
                false
            }
        }));
        match outcome {
            Ok(true) => parsed += 1,
            Ok(false) => refused += 1,
            Err(_) => panics.push(text),
        }
    }
    std::panic::set_hook(hook);
    println!(
        "{count} mutants: {parsed} valid, {refused} refused, {} panics",
        panics.len()
    );
    assert!(
        panics.is_empty(),
        "{} mutants panicked; the first:\n{}",
        panics.len(),
        panics[0].chars().take(2000).collect::<String>()
    );
    // The fuzzer must exercise both outcomes to mean anything.
    assert!(parsed > count / 50, "only {parsed} valid mutants");
    assert!(refused > count / 50, "only {refused} refused mutants");
}
