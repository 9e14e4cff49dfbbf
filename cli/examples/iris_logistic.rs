//! Multinomial logistic regression on Iris, as a one-generator diagram
//! (`dense : [4] → [3]`) trained with the catalog's AdamW against softmax
//! cross-entropy. Features min-max scaled on the training split; fixed,
//! seeded 80/20 split. The last line printed is `test_accuracy=0.xxxx`.
//!
//!     cargo run --release --example iris_logistic

use lensopt::diagram::plan::Model;
use lensopt::diagram::{dense_with, Init};
use lensopt::loss::{accuracy, one_hot, SoftmaxCrossEntropy};
use lensopt::train::Trainer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = lensopt::data::iris()?;
    let (train, test) = data.split(0.2, 7);
    let (min, max) = train.ranges();
    let (train, test) = (train.scaled(&min, &max), test.scaled(&min, &max));
    let x_train = train.features.mapv(|v| v as f32);
    let x_test = test.features.mapv(|v| v as f32);
    let y_train = one_hot::<f32>(&train.labels, 3);
    let model = Model::<f32>::new(&dense_with("logits", 4, 3, Init::Zeros), 1)?;
    let optimizer = lensopt::catalog::AdamW::default()
        .lr(0.05)
        .weight_decay(0.0);
    let mut trainer = Trainer::new(model, SoftmaxCrossEntropy, &optimizer)?;
    for step in 1..=500 {
        let loss = trainer.step(&x_train, &y_train)?;
        if step % 100 == 0 {
            let acc = accuracy(&trainer.model.predict(&x_test)?, &test.labels);
            println!("step {step:>3}: train loss {loss:.4}, test accuracy {acc:.4}");
        }
    }
    let acc = accuracy(&trainer.model.predict(&x_test)?, &test.labels);
    println!("test_accuracy={acc:.4}");
    Ok(())
}
