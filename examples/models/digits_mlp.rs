//! An MLP on the 8x8 handwritten digits, written as a string diagram and
//! trained with the catalog's Adam (a DSL rule, JIT-compiled).
//!
//! Fixed, seeded 80/20 split; pixels scaled to [0, 1]; 64 -> 128 -> 64 -> 10
//! with ReLU; softmax cross-entropy; batches of 128. The last line printed is
//! `test_accuracy=0.xxxx`.
//!
//!     cargo run --release --example digits_mlp

use lensopt::diagram::plan::Model;
use lensopt::loss::{accuracy, one_hot, SoftmaxCrossEntropy};
use lensopt::train::Trainer;
use ndarray::Array2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = lensopt::data::digits()?;
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
    let adam = lensopt::catalog::Adam::default().lr(1e-3);
    let mut trainer = Trainer::new(model, SoftmaxCrossEntropy, &adam)?;
    let batch = 128;
    let n = train.labels.len();
    let mut rng = lensopt::diagram::plan::SplitMix(99);
    let started = std::time::Instant::now();
    let mut steps = 0;
    for epoch in 1..=60 {
        let order = rng.permutation(n);
        let mut total = 0.0;
        for chunk in order.chunks(batch) {
            let xb = Array2::from_shape_fn((chunk.len(), 64), |(i, j)| x_train[(chunk[i], j)]);
            let yb = Array2::from_shape_fn((chunk.len(), 10), |(i, j)| y_train[(chunk[i], j)]);
            total += f64::from(trainer.step(&xb, &yb)?) * chunk.len() as f64;
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
    println!(
        "{steps} steps in {elapsed:.2} s ({:.3} ms per step of {batch})",
        elapsed * 1e3 / steps as f64
    );
    let acc = accuracy(&trainer.model.predict(&x_test)?, &test.labels);
    println!("test_accuracy={acc:.4}");
    Ok(())
}
