//! An MLP on the 8x8 handwritten digits, written as a string diagram and
//! trained with the catalog's Adam (a DSL rule, JIT-compiled).
//!
//! Fixed, seeded 80/20 split; pixels scaled to [0, 1]; 64 -> 128 -> 64 -> 10
//! with ReLU; softmax cross-entropy; batches of 128; 60 epochs. The last line
//! printed is `test_accuracy=0.xxxx`.
//!
//!     cargo run --release --example digits_mlp [-- --trace trace.json]
//!
//! `--trace FILE` also writes the initial parameters, the split, the first
//! batches and their losses as JSON, so that `scripts/torch_digits.py` can
//! train the same network from the same weights on the same batches in PyTorch.

use lensopt::diagram::plan::{Model, SplitMix};
use lensopt::loss::{accuracy, one_hot, SoftmaxCrossEntropy};
use lensopt::train::Trainer;
use ndarray::Array2;
use serde_json::json;

const BATCH: usize = 128;
const EPOCHS: usize = 60;
const TRACED_STEPS: usize = 50;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let trace = args
        .iter()
        .position(|a| a == "--trace")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let data = lensopt::data::digits()?;
    let (train_idx, test_idx) = data.split_indices(0.2, 2024);
    let (train, test) = data.split(0.2, 2024);
    let scale = |x: &Array2<f64>| x.mapv(|v| (v / 16.0) as f32);
    let (x_train, x_test) = (scale(&train.features), scale(&test.features));
    let y_train: Array2<f32> = one_hot(&train.labels, 10);

    // The wiring is checked at compile time: a size mismatch is a compile error.
    let diagram = lensopt::diagram!(
        dense(hidden1, 64, 128)
            >> relu(128)
            >> dense(hidden2, 128, 64)
            >> relu(64)
            >> dense(out, 64, 10)
    );
    let model = Model::<f32>::new(&diagram, 7)?;
    println!(
        "digits: {} train / {} test examples, {} parameters",
        train.labels.len(),
        test.labels.len(),
        model.num_parameters()
    );
    let initial: serde_json::Map<String, serde_json::Value> = model
        .params
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                json!({"shape": p.value.shape(), "values": p.value.iter().collect::<Vec<_>>()}),
            )
        })
        .collect();
    let adam = lensopt::catalog::Adam::default().lr(1e-3);
    let mut trainer = Trainer::new(model, SoftmaxCrossEntropy, &adam)?;
    let n = train.labels.len();
    let mut rng = SplitMix(99);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut losses: Vec<f32> = Vec::new();
    let started = std::time::Instant::now();
    let mut steps = 0;
    for epoch in 1..=EPOCHS {
        let order = rng.permutation(n);
        let mut total = 0.0;
        for chunk in order.chunks(BATCH) {
            let xb = Array2::from_shape_fn((chunk.len(), 64), |(i, j)| x_train[(chunk[i], j)]);
            let yb = Array2::from_shape_fn((chunk.len(), 10), |(i, j)| y_train[(chunk[i], j)]);
            let loss = trainer.step(&xb, &yb)?;
            total += f64::from(loss) * chunk.len() as f64;
            if steps < TRACED_STEPS {
                batches.push(chunk.to_vec());
                losses.push(loss);
            }
            steps += 1;
        }
        if epoch % 10 == 0 {
            let acc = accuracy(&trainer.model.predict(&x_test)?, &test.labels);
            println!(
                "epoch {epoch:>3}: train loss {:.4}, test accuracy {acc:.4}",
                total / n as f64
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_step_ms = elapsed * 1e3 / steps as f64;
    println!("{steps} steps in {elapsed:.2} s ({per_step_ms:.3} ms per step of {BATCH}, data handling included)");
    if let Some(path) = trace {
        let out = json!({
            "params": initial,
            "train_indices": train_idx,
            "test_indices": test_idx,
            "batches": batches,
            "losses": losses,
            "lr": 1e-3,
            "ms_per_step": per_step_ms,
        });
        std::fs::write(&path, serde_json::to_string(&out)?)?;
        println!("trace written to {path}");
    }
    let acc = accuracy(&trainer.model.predict(&x_test)?, &test.labels);
    println!("test_accuracy={acc:.4}");
    Ok(())
}
