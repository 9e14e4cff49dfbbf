//! `docs/language.md` stays true: every `lensopt` example parses, checks
//! and runs a step with the same result on the interpreter and the JIT;
//! every `lensopt,error` example fails with the message its first line
//! gives.

use lensopt::{Backend, DynOptimizer, Mode, Optimizer, Stepper, TensorMut, TensorRef};
use ndarray::Array1;

/// The fenced blocks of the manual: (info string, body).
fn blocks() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/language.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some(_)) => out.push(current.take().unwrap()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

fn step(opt: &DynOptimizer, backend: Backend) -> Vec<f64> {
    let mut p = Array1::from(vec![0.5, -1.0, 2.0, 0.0]);
    let g = Array1::from(vec![0.1, 0.3, -0.2, 0.05]);
    let mut st: Stepper<f64> = opt.init(&[&p as &dyn TensorRef<f64>]).unwrap();
    st.set_backend(backend);
    for _ in 0..2 {
        st.step(
            &mut [&mut p as &mut dyn TensorMut<f64>],
            &[&g as &dyn TensorRef<f64>],
        )
        .unwrap();
    }
    p.to_vec()
}

fn matrix_steps(opt: &DynOptimizer, shape: &[usize]) -> Vec<f64> {
    let values: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
    let grads: Vec<f64> = (0..12).map(|i| (i as f64 * 0.91).cos()).collect();
    let mut p = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), values).unwrap();
    let g = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), grads).unwrap();
    let mut st: Stepper<f64> = opt.init(&[&p as &dyn TensorRef<f64>]).unwrap();
    for _ in 0..2 {
        st.step(
            &mut [&mut p as &mut dyn TensorMut<f64>],
            &[&g as &dyn TensorRef<f64>],
        )
        .unwrap();
    }
    p.iter().copied().collect()
}

#[test]
fn every_example_of_the_manual_holds() {
    let (mut good, mut bad) = (0, 0);
    for (info, body) in blocks() {
        match info.as_str() {
            "lensopt" => {
                let opt = DynOptimizer::parse(&body)
                    .unwrap_or_else(|e| panic!("example does not check: {e}\n{body}"));
                if opt.rule().is_matrix() {
                    // A 3 × 4 matrix, and the same as a 3 × 2 × 2 tensor.
                    let a = matrix_steps(&opt, &[3, 4]);
                    let b = matrix_steps(&opt, &[3, 2, 2]);
                    assert_eq!(a, b, "{body}");
                    assert!(a.iter().all(|x| x.is_finite()), "{body}");
                    good += 1;
                    continue;
                }
                let want = step(&opt, Backend::Interpreter);
                let got = step(&opt, Backend::Jit(Mode::Exact));
                for (a, b) in want.iter().zip(&got) {
                    assert!(
                        (a - b).abs() <= 1e-12 * (1.0 + a.abs()),
                        "{a} vs {b}\n{body}"
                    );
                }
                good += 1;
            }
            "lensopt,error" => {
                let expected = body
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("// error: "))
                    .unwrap_or_else(|| panic!("an error example starts with `// error: `\n{body}"));
                let err = DynOptimizer::parse(&body).unwrap_err().to_string();
                assert!(
                    err.contains(expected),
                    "`{expected}` not in `{err}`\n{body}"
                );
                bad += 1;
            }
            _ => {}
        }
    }
    assert!(
        good >= 7 && bad >= 4,
        "{good} examples, {bad} error examples"
    );
}
