//! Matrix rules: the golden runs of Muon, Adafactor, SM3, CAME, Shampoo and
//! SOAP (`tests/golden/matrix`, from PyTorch and pytorch-optimizer, and
//! `tests/golden_extra/matrix`, from the transcriptions in
//! `scripts/references/matrix_optim.py`: rows > cols, momentum, weight
//! decay, SOAP on square shapes); the language's shapes, factorisations,
//! `repeat` and `every`; rank checks, checkpoints and state sizes.

use lensopt::case::{self, Case, Dtype};
use lensopt::ir::{BinOp, Op, UnOp};
use lensopt::{checkpoint, DynOptimizer, Optimizer, ParseRule, Rule, Stepper, TensorRef};
use ndarray::{Array2, ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// The case in `file`, and the catalog rule it names (or its case name,
/// `muon` for `muon_bf16`) with the case's hyperparameters.
fn case_and_optimizer(file: &Path) -> (Case, DynOptimizer) {
    let text = std::fs::read_to_string(file).unwrap();
    let case = Case::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let stem = case.name.clone().expect("the case names itself");
    let name = case
        .optimizer
        .clone()
        .unwrap_or_else(|| stem.trim_end_matches("_bf16").to_string());
    let mut opt = lensopt::catalog::get(&name).unwrap_or_else(|| panic!("no catalog `{name}`"));
    for (k, v) in &case.hyper {
        case::set_hyper(&mut opt, k, *v).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    (case, opt)
}

/// Replays one case through its catalog rule ([`case_and_optimizer`]) and
/// returns the worst error in tolerances.
fn replay(file: &Path) -> f64 {
    let (case, opt) = case_and_optimizer(file);
    let stem = case.name.clone().expect("the case names itself");
    let (abs, rel) = match (case.dtype, stem.as_str()) {
        (Dtype::F32, "muon_bf16") => (2e-3, 1e-2),
        (Dtype::F64, _) => (1e-10, 1e-8),
        (Dtype::F32, _) => (1e-5, 1e-4),
    };
    let got = case::run(&case, &opt).unwrap();
    let want = case.params_after.as_ref().unwrap();
    assert_eq!(got.params_after.len(), want.len());
    let mut worst: f64 = 0.0;
    for (ours, theirs) in got.params_after.iter().zip(want) {
        for (a, b) in ours.iter().zip(theirs) {
            worst = worst.max((a - b).abs() / (abs + rel * b.abs()));
        }
    }
    worst
}

#[test]
fn catalog_matrix_rules_reproduce_the_golden_runs() {
    let mut checked = 0;
    for file in json_files(&root().join("tests/golden/matrix")) {
        let stem = file.file_name().unwrap().to_string_lossy().to_string();
        // SOAP's step-1 eigenbasis of a rank-deficient factor is the
        // reference LAPACK's choice: checked where it does not reach, in
        // `soap_matches_the_golden_run_where_the_null_space_does_not_reach`.
        if stem.starts_with("soap") {
            continue;
        }
        let worst = replay(&file);
        assert!(worst <= 1.0, "{stem}: {worst:.2}x the tolerance");
        checked += 1;
    }
    assert_eq!(
        checked, 11,
        "muon, muon_bf16, adafactor, sm3, came, shampoo"
    );
}

#[test]
fn matrix_rules_reproduce_the_transcriptions_on_other_shapes_and_paths() {
    let files = json_files(&root().join("tests/golden_extra/matrix"));
    assert_eq!(
        files.len(),
        31,
        "seven transcribed cases, SOAP's, GaLore's, FRUGAL's and SWAN's two each in f64 and f32, GaLore's reference SVD in f32"
    );
    for file in files {
        let worst = replay(&file);
        assert!(
            worst <= 1.0,
            "{}: {worst:.2}x the tolerance",
            file.display()
        );
    }
}

/// SOAP on the golden 12 × 20 case. Its first step only gathers statistics
/// (the parameter is unchanged). At step 1 the right statistic `Gᵀ G` has
/// rank 12 of 20, so its eigenbasis has an 8-dimensional null space whose
/// basis is whatever LAPACK returned to the reference, and every later step
/// depends on it. The step-2 update restricted to the row space of `G₁`
/// (`Δ Π`, `Π` the projector onto it) does not: there lensopt must agree
/// with the reference to the float64 tolerance.
#[test]
fn soap_matches_the_golden_run_where_the_null_space_does_not_reach() {
    let (case, opt) = case_and_optimizer(&root().join("tests/golden/matrix/soap.json"));
    let ours = case::run(&case, &opt).unwrap().params_after;
    let theirs = case.params_after.clone().unwrap();
    let (rows, cols) = (12, 20);
    let as_matrix = |v: &[f64]| Array2::from_shape_vec((rows, cols), v.to_vec()).unwrap();
    for (a, b) in ours[0].iter().zip(&theirs[0]).zip(&case.p0) {
        assert_eq!((*a.0, *a.1), (*b, *b), "step 1 leaves the parameter alone");
    }
    let g1 = as_matrix(&case.grads[0]);
    let gram = g1.t().dot(&g1);
    let basis = lensopt::ir::linalg::eigenbasis(cols, gram.as_slice().unwrap());
    let basis = Array2::from_shape_vec((cols, cols), basis).unwrap();
    let range = basis.slice(ndarray::s![.., ..rows]);
    let projector = range.dot(&range.t());
    let decay = 1.0 - 0.003 * 1e-2; // 1 - lr · weight_decay (the reference's default)
    let delta =
        |after: &[Vec<f64>]| (as_matrix(&after[0]) - as_matrix(&after[1]) / decay).dot(&projector);
    let (d_ours, d_theirs) = (delta(&ours), delta(&theirs));
    let size = d_theirs.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(size > 1e-4, "the step moves the parameter ({size})");
    for (a, b) in d_ours.iter().zip(&d_theirs) {
        assert!((a - b).abs() <= 1e-10 + 1e-8 * b.abs(), "{a} vs {b}");
    }
    // The null-space part is the reference LAPACK's choice: it does differ.
    let full = |after: &[Vec<f64>]| as_matrix(&after[0]) - as_matrix(&after[1]) / decay;
    let gap = (full(&ours) - full(&theirs))
        .iter()
        .fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(gap > 1e-6, "the null-space part differs ({gap})");
}

#[test]
fn factorisations_are_unique_and_sorting_permutes_columns() {
    // eigenbasis: A Q = Q Λ with Λ descending, Q orthonormal, each column's largest entry positive.
    let m = matrix(6, 6, 70);
    let a = m.dot(&m.t());
    let q = lensopt::ir::linalg::eigenbasis(6, a.as_slice().unwrap());
    let q = Array2::from_shape_vec((6, 6), q).unwrap();
    let lambda = q.t().dot(&a).dot(&q);
    for ((i, j), v) in lambda.indexed_iter() {
        if i != j {
            assert!(v.abs() < 1e-12, "QᵀAQ[{i},{j}] = {v}");
        } else if i > 0 {
            assert!(lambda[[i - 1, i - 1]] >= *v, "descending");
        }
    }
    for col in q.columns() {
        let lead = col
            .iter()
            .fold(0.0f64, |m, x| if x.abs() > m.abs() { *x } else { m });
        assert!(lead > 0.0);
    }
    // qr through a rule: Q with orthonormal columns, QᵀG upper triangular with a non-negative diagonal.
    let g = matrix(7, 4, 71);
    let q = one_step("Q { update { p = qr(g); } }", &matrix(7, 4, 1), &g, &[]);
    let r = q.t().dot(&g);
    for ((i, j), v) in r.indexed_iter() {
        assert!(i <= j || v.abs() < 1e-12, "R[{i},{j}] = {v}");
        assert!(i != j || *v >= 0.0);
    }
    let back = q.dot(&r);
    for (x, y) in back.iter().zip(g.iter()) {
        assert!((x - y).abs() < 1e-12);
    }
    for ((i, j), v) in q.t().dot(&q).indexed_iter() {
        assert!((v - f64::from(u8::from(i == j))).abs() < 1e-12);
    }
    // Large enough for the threaded path: the same properties.
    let (r_big, c_big) = (300, 200);
    let a = matrix(r_big, c_big, 73);
    let q = lensopt::ir::linalg::qr_factor(r_big, c_big, a.as_slice().unwrap());
    let q = Array2::from_shape_vec((r_big, c_big), q).unwrap();
    let r = q.t().dot(&a);
    for ((i, j), v) in r.indexed_iter() {
        assert!(i <= j || v.abs() < 1e-11, "R[{i},{j}] = {v}");
        assert!(i != j || *v >= 0.0);
    }
    for ((i, j), v) in q.t().dot(&q).indexed_iter() {
        assert!((v - f64::from(u8::from(i == j))).abs() < 1e-12);
    }
    // A wide matrix has no thin QR: an error, not a wrong answer.
    let mut p = matrix(3, 5, 1).into_dyn();
    let opt = DynOptimizer::parse("Q { update { p = qr(g); } }").unwrap();
    let mut stepper: Stepper<f64> = opt.init(&[&p]).unwrap();
    let err = stepper
        .step(&mut [&mut p], &[&matrix(3, 5, 2).into_dyn()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least as many rows as columns"), "{err}");
    // sort_perm: g @ sort_perm(sum_cols(g)) orders the columns by their sums, descending.
    let g = matrix(3, 6, 72);
    let sorted = one_step(
        "S { update { p = g @ sort_perm(sum_cols(g)); } }",
        &g,
        &g,
        &[],
    );
    let sums: Vec<f64> = sorted.columns().into_iter().map(|c| c.sum()).collect();
    assert!(sums.windows(2).all(|w| w[0] >= w[1]), "{sums:?}");
    let mut before: Vec<f64> = g.iter().copied().collect();
    let mut after: Vec<f64> = sorted.iter().copied().collect();
    before.sort_by(f64::total_cmp);
    after.sort_by(f64::total_cmp);
    assert_eq!(before, after, "a permutation");
    // Shapes are checked at compile time, at the argument.
    for (rule, want) in [
        (
            "E { update { p = p - eigenbasis(g) @ g; } }",
            "needs a square matrix",
        ),
        (
            "S { update { p = p @ sort_perm(g); } }",
            "one row or one column",
        ),
    ] {
        let err = Rule::parse(rule).unwrap_err().to_string();
        assert!(err.contains(want), "{rule}: {err}");
    }
}

fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    let mut s = seed;
    Array2::from_shape_fn((rows, cols), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    })
}

fn one_step(source: &str, p: &Array2<f64>, g: &Array2<f64>, set: &[(&str, f64)]) -> Array2<f64> {
    let mut opt = DynOptimizer::parse(source).unwrap();
    for (k, v) in set {
        opt.set(k, (*v).into()).unwrap();
    }
    let mut p = p.clone().into_dyn();
    let g = g.clone().into_dyn();
    let mut stepper: Stepper<f64> = opt.init(&[&p]).unwrap();
    stepper.step(&mut [&mut p], &[&g]).unwrap();
    p.into_dimensionality().unwrap()
}

#[test]
fn axis_reductions_broadcast_and_matrix_products_mean_what_numpy_means() {
    let (p, g) = (matrix(3, 5, 1), matrix(3, 5, 2));
    let rule = "R { hyper lr = 1; update { p = p - lr * (mean_rows(g) * max_abs_cols(g) + transpose(g @ transpose(g) @ g) @ eye_rows()); } }";
    // transpose(...) @ eye_rows() needs cols×rows @ rows×rows: cols × rows, not the tensor's shape.
    assert!(Rule::parse(rule).is_err());
    let rule = "R { hyper lr = 1; update { p = p - lr * (mean_rows(g) * max_abs_cols(g) + eye_rows() @ (g @ transpose(g)) @ g); } }";
    let got = one_step(rule, &p, &g, &[]);
    let mean_rows = g
        .mean_axis(ndarray::Axis(1))
        .unwrap()
        .insert_axis(ndarray::Axis(1));
    let max_cols = g
        .mapv(f64::abs)
        .fold_axis(ndarray::Axis(0), 0.0_f64, |a, b| a.max(*b));
    let want = &p - &(&mean_rows * &max_cols + g.dot(&g.t()).dot(&g));
    for (a, b) in got.iter().zip(want.iter()) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn gram_products_and_their_squares_mean_what_numpy_means_on_sides_past_the_gemm_blocks() {
    // Shapes larger than the GEMM kernel's blocks, with strided
    // (transposed) operands on both sides of the product.
    let rule = "R { hyper lr = 1; update { let s = g @ transpose(g); let c = transpose(g) @ g; \
                p = p - lr * ((s @ s) @ g + g @ (c @ c)); } }";
    for (rows, cols) in [(300, 280), (520, 260), (100, 90)] {
        let (p, g) = (matrix(rows, cols, 5), matrix(rows, cols, 6));
        let got = one_step(rule, &p, &g, &[]);
        let (s, c) = (g.dot(&g.t()), g.t().dot(&g));
        let want = &p - &(s.dot(&s).dot(&g) + g.dot(&c.dot(&c)));
        let scale = want.iter().fold(0.0_f64, |m, x| m.max(x.abs()));
        for (a, b) in got.iter().zip(want.iter()) {
            assert!(
                (a - b).abs() <= 1e-12 * scale,
                "{rows} × {cols}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn repeat_by_a_hyperparameter_runs_that_many_times_and_every_k_runs_on_multiples() {
    let (p, g) = (matrix(4, 3, 3), matrix(4, 3, 4));
    let counted = "R { hyper n = 3; update { let x = g; repeat n { x = x * 2; } p = p - x; } }";
    for n in [0.0, 1.0, 3.0, 7.0] {
        let got = one_step(counted, &p, &g, &[("n", n)]);
        let want = &p - &(&g * 2f64.powf(n));
        assert_eq!(got, want, "n = {n}");
        let literal =
            format!("R {{ update {{ let x = g; repeat {n} {{ x = x * 2; }} p = p - x; }} }}");
        assert_eq!(one_step(&literal, &p, &g, &[]), want, "repeat {n}");
    }
    // A count the unrolled block cannot honour is refused, not cut short.
    let mut opt = DynOptimizer::parse(counted).unwrap();
    for bad in [40.0, 2.5, -1.0] {
        let err = opt.set("n", bad.into()).unwrap_err().to_string();
        assert!(err.contains("whole number from 0 to 32"), "{bad}: {err}");
    }
    let mut muon = lensopt::catalog::get("muon").unwrap();
    assert!(muon.set("ns_steps", 33.0.into()).is_err());
    assert!(muon.set("ns_steps", 32.0.into()).is_ok());
    // `every 3`: the state moves at t = 3 and 6 only.
    let every = "R { state scalar k = 0; update { every 3 { k = k + 1; } p = p - k * g; } }";
    let opt = DynOptimizer::parse(every).unwrap();
    let mut x = p.clone().into_dyn();
    let gd = g.clone().into_dyn();
    let mut stepper: Stepper<f64> = opt.init(&[&x]).unwrap();
    let mut seen = Vec::new();
    for _ in 0..7 {
        stepper.step(&mut [&mut x], &[&gd]).unwrap();
        seen.push(stepper.scalar_state(0, "k").unwrap());
    }
    assert_eq!(seen, [0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
}

#[test]
fn shape_mistakes_are_errors_at_their_token() {
    let cases = [
        (
            "R { update { p = p - g @ g; } }",
            "`@` needs the columns of its left operand to match the rows of its right one",
        ),
        (
            "R { state row r = 0; update { r = g; p = p - r; } }",
            "state `r` is one value per row, but this value is per element",
        ),
        (
            "R { update { p = p - g @ transpose(g); } }",
            "shapes rows × cols and rows × rows do not match",
        ),
        (
            "R { update { p = p - sum_rows(mean_rows(g)); } }",
            "a reduction along the rows needs a value with more than one entry along them",
        ),
        (
            "R { update { p = p - sym_pow(g, 0.5); } }",
            "a matrix function needs a square matrix",
        ),
        (
            "R { hyper k = true; update { repeat k { p = p - g; } } }",
            "`repeat` counts with a number, not a boolean",
        ),
        (
            "R { update { repeat 2.5 { p = p - g; } } }",
            "`repeat` takes a whole number",
        ),
        (
            "R { update { every g { p = p - g; } } }",
            "`every` takes a number of steps known before the step",
        ),
        (
            "R { update { repeat 1024 { repeat 1024 { p = p - g; } } } }",
            "unroll to more than 100000 statements",
        ),
    ];
    for (source, expect) in cases {
        let err = Rule::parse(source).expect_err(source).to_string();
        assert!(err.contains(expect), "{source}: `{expect}` not in {err}");
        assert!(err.contains("1:"), "{source}: no position in {err}");
    }
}

#[test]
fn a_matrix_rule_refuses_vectors_and_the_kernel_backends_refuse_it() {
    let muon = lensopt::catalog::get("muon").unwrap();
    let v = ArrayD::<f64>::zeros(IxDyn(&[7]));
    let err = muon.init::<f64>(&[&v]).unwrap_err().to_string();
    assert!(err.contains("rank 2 or more"), "{err}");
    // Rank 3 is seen as rows × (the rest).
    let cube = ArrayD::<f64>::from_elem(IxDyn(&[2, 3, 4]), 0.5);
    let mut stepper: Stepper<f64> = muon.init(&[&cube]).unwrap();
    let err = stepper.program(&[]).unwrap_err().to_string();
    assert!(err.contains("matrix rule"), "{err}");
    let mut p = cube.clone();
    let g = ArrayD::<f64>::from_elem(IxDyn(&[2, 3, 4]), 0.1);
    stepper.step(&mut [&mut p], &[&g]).unwrap();
    assert!(p.iter().all(|x| x.is_finite() && *x != 0.5));
    // Arrays the evaluator cannot hold, and eigensolves it cannot finish
    // soon, are errors before anything is computed.
    for (rule, shape, expect) in [
        (
            "R { update { p = p - sum(g @ transpose(g)) * g; } }",
            [100_000, 2],
            "more than the matrix evaluator's limit",
        ),
        (
            "R { update { p = p - sym_pow(g @ transpose(g), -0.5) @ g; } }",
            [4100, 3],
            "factors matrices of sides up to 4096",
        ),
    ] {
        let opt = DynOptimizer::parse(rule).unwrap();
        let mut p = ArrayD::<f64>::zeros(IxDyn(&shape));
        let g = ArrayD::<f64>::from_elem(IxDyn(&shape), 0.5);
        let mut stepper: Stepper<f64> = opt.init(&[&p]).unwrap();
        let err = stepper.step(&mut [&mut p], &[&g]).unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
        assert_eq!(stepper.t(), 0);
    }
    // Flat buffers through the interpreter are 1 × n matrices, not a panic.
    let rule = muon.rule();
    let mut flat = vec![0.5; 6];
    let hypers = muon.hypers();
    let mut state = lensopt::ir::interp::init_state(&rule, &hypers, &flat);
    let mut tensors = vec![lensopt::ir::interp::StepTensor {
        param: &mut flat,
        grad: &[0.1; 6],
        inputs: vec![],
        state: &mut state,
        hypers: &hypers,
    }];
    lensopt::ir::interp::step(&rule, 1, &[], &mut tensors).unwrap();
}

#[test]
fn factored_state_is_rows_plus_cols_and_survives_a_checkpoint() {
    let (rows, cols) = (64, 32);
    let mut p = matrix(rows, cols, 5).into_dyn();
    let g = matrix(rows, cols, 6).into_dyn();
    let adafactor = lensopt::catalog::get("adafactor").unwrap();
    let stepper: Stepper<f64> = adafactor.init(&[&p]).unwrap();
    let per_element = stepper.state_bytes_per_element();
    assert_eq!(
        per_element,
        ((rows + cols) * 8) as f64 / (rows * cols) as f64
    );
    assert_eq!(stepper.state(0, "vr").unwrap().shape(), &[rows, 1]);
    assert_eq!(stepper.state(0, "vc").unwrap().shape(), &[1, cols]);
    // Shampoo's matrix state round-trips through a checkpoint bit for bit.
    let mut shampoo = lensopt::catalog::get("shampoo").unwrap();
    shampoo
        .set("preconditioning_compute_steps", 2.0.into())
        .unwrap();
    let mut a: Stepper<f64> = shampoo.init(&[&p]).unwrap();
    for _ in 0..3 {
        a.step(&mut [&mut p], &[&g]).unwrap();
    }
    let params: [(&str, &dyn TensorRef<f64>); 1] = [("w", &p)];
    let bytes = checkpoint::to_bytes(&params, &a, &BTreeMap::new()).unwrap();
    let mut q = ArrayD::<f64>::zeros(IxDyn(&[rows, cols]));
    let mut b: Stepper<f64> = shampoo.init(&[&q]).unwrap();
    checkpoint::from_bytes(&bytes, &mut [("w", &mut q)], &mut b).unwrap();
    assert_eq!(q, p);
    assert_eq!(b.state(0, "left").unwrap().shape(), &[rows, rows]);
    let mut p2 = p.clone();
    a.step(&mut [&mut p], &[&g]).unwrap();
    b.step(&mut [&mut p2], &[&g]).unwrap();
    assert_eq!(p, p2);
}

/// GaLore keeps a `short × rank` projector and two `rank × long` moments:
/// its state shrinks with the rank, survives a checkpoint, and refuses a
/// rank change that would reshape it.
#[test]
fn galore_state_is_low_rank_and_its_rank_is_checked() {
    let (rows, cols, rank) = (48, 32, 4);
    let mut p = matrix(rows, cols, 8).into_dyn();
    let g = matrix(rows, cols, 9).into_dyn();
    let mut galore = lensopt::catalog::get("galore").unwrap();
    galore.set("rank", (rank as f64).into()).unwrap();
    galore.set("update_proj_gap", 2.0.into()).unwrap();
    let mut a: Stepper<f64> = galore.init(&[&p]).unwrap();
    // Tall: the wide view is cols × rows, so short = cols, long = rows.
    assert_eq!(a.state(0, "proj").unwrap().shape(), &[cols, rank]);
    assert_eq!(a.state(0, "m").unwrap().shape(), &[rank, rows]);
    assert_eq!(
        a.state_bytes_per_element(),
        ((cols * rank + 2 * rank * rows) * 8) as f64 / (rows * cols) as f64
    );
    for _ in 0..3 {
        a.step(&mut [&mut p], &[&g]).unwrap();
    }
    // The projector has orthonormal columns.
    let proj = a.state(0, "proj").unwrap().to_owned();
    let proj = proj.into_dimensionality::<ndarray::Ix2>().unwrap();
    for ((i, j), v) in proj.t().dot(&proj).indexed_iter() {
        assert!((v - f64::from(u8::from(i == j))).abs() < 1e-12);
    }
    // A rank that reshapes the state is refused, and nothing changes.
    let err = a.set_hyper("rank", 5.0).unwrap_err().to_string();
    assert!(err.contains("low axis"), "{err}");
    assert_eq!(a.hyper(0, "rank"), Some(4.0.into()));
    a.set_hyper("rank", 400.0).unwrap_err();
    for bad in [0.0, 2.5, -1.0] {
        let err = galore.set("rank", bad.into()).unwrap_err().to_string();
        assert!(err.contains("whole number of at least 1"), "{err}");
    }
    // A rank above the short side is the short side (the reference slices).
    let mut wide = galore.clone();
    wide.set("rank", 1000.0.into()).unwrap();
    let w: Stepper<f64> = wide.init(&[&p]).unwrap();
    assert_eq!(w.state(0, "proj").unwrap().shape(), &[cols, cols]);
    // Checkpoints carry the low-rank state and its shape.
    let params: [(&str, &dyn TensorRef<f64>); 1] = [("w", &p)];
    let bytes = checkpoint::to_bytes(&params, &a, &BTreeMap::new()).unwrap();
    let mut q = ArrayD::<f64>::zeros(IxDyn(&[rows, cols]));
    let mut b: Stepper<f64> = galore.init(&[&q]).unwrap();
    checkpoint::from_bytes(&bytes, &mut [("w", &mut q)], &mut b).unwrap();
    let mut p2 = p.clone();
    a.step(&mut [&mut p], &[&g]).unwrap();
    b.step(&mut [&mut p2], &[&g]).unwrap();
    assert_eq!(p, p2);
    // A checkpoint brings its own rank: a stepper made with another takes it.
    let mut other = galore.clone();
    other.set("rank", 3.0.into()).unwrap();
    let mut c: Stepper<f64> = other.init(&[&q]).unwrap();
    let saved: Stepper<f64> = galore.init(&[&q]).unwrap();
    let params: [(&str, &dyn TensorRef<f64>); 1] = [("w", &p2)];
    let bytes = checkpoint::to_bytes(&params, &saved, &BTreeMap::new()).unwrap();
    assert!(checkpoint::from_bytes(&bytes, &mut [("w", &mut q)], &mut c).is_ok());
    assert_eq!(c.state(0, "m").unwrap().shape(), &[rank, rows]);
    assert_eq!(c.hyper(0, "rank"), Some((rank as f64).into()));
    c.step(&mut [&mut q], &[&g]).unwrap();
}

/// Tensors with an empty axis go through every matrix rule without a
/// panic: a step of nothing, or an error.
#[test]
fn matrix_rules_take_tensors_with_an_empty_axis() {
    for name in lensopt::catalog::matrix_names() {
        for shape in [[0usize, 5], [4, 0], [0, 0]] {
            let opt = lensopt::catalog::get(name).unwrap();
            let mut p = ArrayD::<f64>::zeros(IxDyn(&shape));
            let g = ArrayD::<f64>::zeros(IxDyn(&shape));
            if let Ok(mut stepper) = opt.init::<f64>(&[&p]) {
                let _ = stepper.step(&mut [&mut p], &[&g]);
                let _ = stepper.step(&mut [&mut p], &[&g]);
            }
        }
    }
}

/// A per-tensor scalar state in a matrix rule: created with the others
/// (its initial value is not a read of itself) and carried between steps.
#[test]
fn scalar_state_in_a_matrix_rule_counts_steps() {
    let rule = "K { hyper lr = 0.1; state scalar k = 0; state row r = 0; update { k = k + 1; r = mean_rows(g); p = p - lr * k * r; } }";
    let mut opt = DynOptimizer::parse(rule).unwrap();
    opt.set("lr", 0.5.into()).unwrap();
    let mut p = Array2::<f64>::zeros((2, 3)).into_dyn();
    let g = Array2::from_shape_vec((2, 3), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
        .unwrap()
        .into_dyn();
    let mut stepper: Stepper<f64> = opt.init(&[&p]).unwrap();
    for _ in 0..3 {
        stepper.step(&mut [&mut p], &[&g]).unwrap();
    }
    assert_eq!(stepper.scalar_state(0, "k"), Some(3.0));
    // p = -0.5 (1 + 2 + 3) row means.
    assert_eq!(p[[0, 0]], -3.0);
    assert_eq!(p[[1, 2]], -6.0);
}

#[test]
fn the_low_axis_and_the_wide_view_are_checked_at_compile_time() {
    for (rule, want) in [
        (
            "L { hyper k = 2; update { p = p - lead_cols(g) @ transpose(lead_cols(g)) @ g; } }",
            "needs a declaration",
        ),
        (
            "L { hyper k = 2; state [low, cols] m = 0; update { p = p; } }",
            "needs a declaration",
        ),
        (
            "L { hyper k = true; axis low = k; update { p = p; } }",
            "numeric hyperparameter",
        ),
        (
            "L { hyper k = 2; axis high = k; update { p = p; } }",
            "unknown axis",
        ),
        (
            "L { hyper k = 2; state [rows, wide] m = 0; update { p = p; } }",
            "unknown axis",
        ),
        (
            "L { hyper k = 2; state [rows] m = 0; update { p = p; } }",
            "two axes",
        ),
        ("L { update { p = p - unwide(g); } }", "short × long"),
        (
            "L { update { p = p - wide(mean_rows(g)); } }",
            "rows × cols",
        ),
        ("L { update { p = p - wide(g); } }", "do not match"),
    ] {
        let err = Rule::parse(rule).unwrap_err().to_string();
        assert!(err.contains(want), "{rule}: {err}");
    }
    // wide and unwide are inverse, and wide transposes exactly when rows ≥ cols.
    for (r, c) in [(3, 5), (5, 3), (4, 4)] {
        let g = matrix(r, c, 10);
        let same = one_step("W { update { p = unwide(2 * wide(g)); } }", &g, &g, &[]);
        assert_eq!(same, &g * 2.0);
        // Column sums of the wide view, back in the tensor's shape: sums down
        // the columns of g when it is wide, along its rows otherwise.
        let sums = one_step(
            "W { update { p = unwide(wide(g) * 0 + sum_cols(wide(g))); } }",
            &g,
            &g,
            &[],
        );
        for ((i, j), v) in sums.indexed_iter() {
            let want = if r < c {
                g.column(j).sum()
            } else {
                g.row(i).sum()
            };
            assert!(
                (v - want).abs() < 1e-12,
                "{r} × {c}: [{i},{j}] {v} vs {want}"
            );
        }
    }
}

#[test]
fn muon_adamw_is_muon_on_matrices_and_adamw_on_vectors() {
    let combined = lensopt::catalog::get("muon_adamw").unwrap();
    let muon = lensopt::catalog::get("muon").unwrap();
    let mut muon = muon;
    muon.set("lr", 0.02.into()).unwrap();
    muon.set("weight_decay", 0.01.into()).unwrap();
    let adamw = lensopt::catalog::get("adamw").unwrap();
    let mut w = matrix(6, 4, 7).into_dyn();
    let mut b = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.5, -0.25, 1.0, 0.0]).unwrap();
    let (w0, b0) = (w.clone(), b.clone());
    let gw = matrix(6, 4, 8).into_dyn();
    let gb = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.1, -0.2, 0.3, 0.05]).unwrap();
    let mut both: Stepper<f64> = combined.init(&[&w, &b]).unwrap();
    let (mut w1, mut b1) = (w0.clone(), b0.clone());
    let mut alone_w: Stepper<f64> = muon.init(&[&w1]).unwrap();
    let mut alone_b: Stepper<f64> = adamw.init(&[&b1]).unwrap();
    for _ in 0..3 {
        both.step(&mut [&mut w, &mut b], &[&gw, &gb]).unwrap();
        alone_w.step(&mut [&mut w1], &[&gw]).unwrap();
        alone_b.step(&mut [&mut b1], &[&gb]).unwrap();
    }
    for (x, y) in w.iter().zip(&w1) {
        assert!((x - y).abs() <= 1e-14, "matrix: {x} vs {y}");
    }
    for (x, y) in b.iter().zip(&b1) {
        assert!(
            (x - y).abs() <= 1e-15 * (1.0 + y.abs()),
            "vector: {x} vs {y}"
        );
    }
    // A vector's Muon state stays untouched, and so does a matrix's Adam state.
    assert!(both.state(1, "buf").unwrap().iter().all(|x| *x == 0.0));
    assert!(both.state(0, "m").unwrap().iter().all(|x| *x == 0.0));
}

#[test]
fn swan_standardises_rows_and_whitens() {
    // The pieces of the catalog's SWAN, as rules whose new `p` is the piece.
    let normed = "N { update { p = (g - mean_rows(g)) / sqrt(mean_rows((g - mean_rows(g)) ^ 2) + 1e-12); } }";
    let whitened = "W { update { let x = (g - mean_rows(g)) / sqrt(mean_rows((g - mean_rows(g)) ^ 2) + 1e-12); p = sym_pow(x @ transpose(x), -0.5) @ x; } }";
    let (p, g) = (matrix(5, 9, 9), matrix(5, 9, 10));
    let x = one_step(normed, &p, &g, &[]);
    for row in x.rows() {
        let mean = row.sum() / 9.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 9.0;
        assert!(
            mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-9,
            "{mean} {var}"
        );
    }
    let w = one_step(whitened, &p, &g, &[]);
    let gram = w.dot(&w.t());
    for ((i, j), v) in gram.indexed_iter() {
        let want = if i == j { 1.0 } else { 0.0 };
        assert!((v - want).abs() < 1e-9, "W Wᵀ[{i}, {j}] = {v}");
    }
}

/// Runs `name` for five steps on a `rows × cols` matrix with `backend`;
/// returns the parameters and every state after them.
fn run_backend<F: lensopt::Float>(
    name: &str,
    rows: usize,
    cols: usize,
    backend: lensopt::Backend,
) -> Vec<Vec<F>> {
    let opt = lensopt::catalog::get(name).unwrap();
    let cast = |a: Array2<f64>| a.mapv(F::from_f64).into_dyn();
    let mut p = cast(matrix(rows, cols, 31));
    let mut stepper: Stepper<F> = opt.init(&[&p]).unwrap();
    stepper.set_backend(backend);
    for t in 0..5 {
        let g = cast(matrix(rows, cols, 40 + t));
        stepper.step(&mut [&mut p], &[&g]).unwrap();
    }
    let mut out = vec![p.iter().copied().collect::<Vec<F>>()];
    for s in &opt.rule().states {
        if let Some(v) = stepper.state(0, &s.name) {
            out.push(v.iter().copied().collect());
        }
    }
    out
}

#[test]
fn fused_kernels_compute_what_the_evaluator_computes_bit_for_bit() {
    use lensopt::Backend;
    for name in lensopt::catalog::matrix_names() {
        let rule = lensopt::catalog::get(name).unwrap().rule();
        let plan = lensopt::ir::fusion::Plan::new(&rule);
        for kernel in &plan.kernels {
            assert!(kernel.operations >= 1 && !kernel.rule.is_matrix(), "{name}");
            // An operation alone is a kernel only where the evaluator's own
            // loop would call a function per element.
            let alone = rule.node(kernel.root).op;
            let fast = matches!(
                alone,
                Op::Binary(BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div, ..)
                    | Op::Unary(UnOp::Neg | UnOp::Sqrt | UnOp::Rsqrt | UnOp::Abs, _)
            );
            assert!(kernel.operations >= 2 || !fast, "{name}: {alone:?} alone");
        }
        for (rows, cols) in [(7, 5), (5, 7)] {
            let a = run_backend::<f64>(name, rows, cols, Backend::Interpreter);
            let b = run_backend::<f64>(name, rows, cols, Backend::default());
            assert_eq!(a, b, "{name} f64 {rows}x{cols}");
            let a = run_backend::<f32>(name, rows, cols, Backend::Interpreter);
            let b = run_backend::<f32>(name, rows, cols, Backend::default());
            assert_eq!(a, b, "{name} f32 {rows}x{cols}");
        }
    }
    // Adafactor's update fuses: rsqrt of the clamped estimate times g, and
    // the decayed parameter minus the scaled update.
    let rule = lensopt::catalog::get("adafactor").unwrap().rule();
    let plan = lensopt::ir::fusion::Plan::new(&rule);
    assert!(plan.kernels.len() >= 2, "{} kernels", plan.kernels.len());
}

#[test]
fn the_eigensolver_diagonalises_symmetric_matrices() {
    // Sizes on both sides of the solver's switch to threads (192).
    for n in [1, 2, 3, 7, 31, 64, 200] {
        let m = matrix(n, n, 50 + n as u64);
        // Symmetric, with a repeated eigenvalue block for n > 2 (rank-deficient Gram part).
        let a = &m
            + &m.t()
            + m.slice(ndarray::s![.., ..1])
                .dot(&m.slice(ndarray::s![.., ..1]).t());
        let (values, vectors) =
            lensopt::ir::linalg::symmetric_eigen(n, a.iter().copied().collect());
        let q = Array2::from_shape_vec((n, n), vectors).unwrap();
        let lambda = Array2::from_diag(&ndarray::Array1::from(values));
        let back = q.dot(&lambda).dot(&q.t());
        let scale = a.iter().fold(0.0f64, |s, x| s.max(x.abs()));
        for (x, y) in back.iter().zip(a.iter()) {
            assert!(
                (x - y).abs() <= 1e-12 * scale * n as f64,
                "n = {n}: {x} vs {y}"
            );
        }
        let eye = q.t().dot(&q);
        for ((i, j), v) in eye.indexed_iter() {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!(
                (v - want).abs() <= 1e-12 * n as f64,
                "n = {n}: QᵀQ[{i},{j}] = {v}"
            );
        }
    }
}

/// Matrices a solver can stumble on: zero, diagonal (already solved),
/// repeated eigenvalues, a huge spread of scales, and non-finite entries,
/// which must return (garbage in, garbage out) rather than hang.
#[test]
fn the_eigensolver_handles_degenerate_and_non_finite_matrices() {
    use lensopt::ir::linalg::symmetric_eigen;
    let n = 9;
    let check = |a: &Array2<f64>| {
        let (values, vectors) = symmetric_eigen(n, a.iter().copied().collect());
        let q = Array2::from_shape_vec((n, n), vectors).unwrap();
        let back = q
            .dot(&Array2::from_diag(&ndarray::Array1::from(values)))
            .dot(&q.t());
        let scale = a.iter().fold(1e-300f64, |s, x| s.max(x.abs()));
        for (x, y) in back.iter().zip(a.iter()) {
            assert!((x - y).abs() <= 1e-13 * scale, "{x} vs {y}");
        }
    };
    check(&Array2::zeros((n, n)));
    check(&Array2::from_diag(&ndarray::Array1::from_iter(
        (0..n).map(|i| (i as f64 - 4.0) * 1e3),
    )));
    check(&Array2::eye(n));
    let m = matrix(n, 2, 77);
    check(&m.dot(&m.t())); // rank 2: seven zero eigenvalues
    let spread = Array2::from_shape_fn((n, n), |(i, j)| 10f64.powi((i + j) as i32 - 8) * 0.5);
    check(&(&spread + &spread.t()));
    let mut bad = Array2::<f64>::eye(n);
    bad[[2, 5]] = f64::NAN;
    bad[[5, 2]] = f64::NAN;
    bad[[0, 1]] = f64::INFINITY;
    bad[[1, 0]] = f64::INFINITY;
    let (values, vectors) = symmetric_eigen(n, bad.iter().copied().collect());
    assert_eq!((values.len(), vectors.len()), (n, n * n));
}

#[test]
fn muon_in_bfloat16_reproduces_the_library_default_to_the_last_bits() {
    let (case, mut opt) =
        case_and_optimizer(&root().join("tests/golden/matrix/muon_bf16.f32.json"));
    opt.set("ns_bf16", true.into()).unwrap();
    let got = case::run(&case, &opt).unwrap();
    for (ours, theirs) in got
        .params_after
        .iter()
        .zip(case.params_after.as_ref().unwrap())
    {
        for (a, b) in ours.iter().zip(theirs) {
            // The README's tolerance for this case is 2e-3 + 1e-2 |ref|.
            assert!((a - b).abs() <= 1e-7 + 1e-6 * b.abs(), "{a} vs {b}");
        }
    }
}
