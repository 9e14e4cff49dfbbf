//! Reverse Derivative Ascent on the data sets of the repository, after
//! Wilson and Zanasi: boolean circuits whose parameter bits are learned with
//! `p' = p XOR π_P R[f]((p, x), y XOR f(p, x))`.
//!
//! Features are min-max normalised over the task's examples and binarised
//! (bit = value > 0.5, or a thermometer code with one bit per level of
//! 0.25, 0.5, 0.75). Each task runs on five seeded 50/50 splits (the seed
//! also draws the circuit's random wiring) and reports the mean.
//!
//! - Iris: a truth table per output bit, trained with the paper's rule one
//!   example at a time.
//! - Digits (0 vs 1, and all ten) and MNIST 0 vs 1: one bank of lookup
//!   tables per class over shared random tuples of input bits, trained with
//!   the one-sided rule (error `y AND NOT f`, see `Combine::OneSided`); the
//!   class whose tables recognise the example most often wins.
//!
//! Prints one line per task, `task=NAME test_accuracy=0.xxxx`, after a line
//! per task with its details and the paper's rule on the same digits task.
//! `--study` first prints the evidence behind these choices: learning curves
//! and the effect of each change.
//!
//!     cargo run --release --example rda [-- --study]

use lensopt::circuit::rda::{Bits, Combine, Rda};
use lensopt::circuit::tables::{truth_table, tuple_tables, Discriminators};
use lensopt::circuit::{Circuit, CircuitBuilder};
use lensopt::data::Dataset;
use lensopt::diagram::plan::SplitMix;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const SEEDS: u64 = 5;
const ONE_LEVEL: &[f64] = &[0.5];
const THERMOMETER: &[f64] = &[0.25, 0.5, 0.75];

/// Binarised examples: one row of bits per example and its class's index.
#[derive(Clone)]
struct Examples {
    x: Vec<Vec<bool>>,
    labels: Vec<usize>,
}

impl Examples {
    fn pick(&self, idx: &[usize]) -> Examples {
        Examples {
            x: idx.iter().map(|&i| self.x[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Targets as the class index in `bits` bits (a circuit's outputs).
    fn bits(&self, bits: usize) -> Bits {
        Bits {
            x: self.x.clone(),
            y: self
                .labels
                .iter()
                .map(|l| (0..bits).map(|b| l >> b & 1 == 1).collect())
                .collect(),
        }
    }

    /// A seeded 50/50 split.
    fn split(&self, seed: u64) -> (Examples, Examples) {
        let order = SplitMix(seed).permutation(self.x.len());
        let half = self.x.len() / 2;
        (self.pick(&order[..half]), self.pick(&order[half..]))
    }
}

/// The examples of `classes`, each feature min-max normalised over them
/// and given one bit per level (value > level).
fn encode(data: &Dataset, classes: &[usize], levels: &[f64]) -> Examples {
    let keep: Vec<usize> = (0..data.labels.len())
        .filter(|&i| classes.contains(&data.labels[i]))
        .collect();
    let cols = data.features.ncols();
    let (mut min, mut max) = (vec![f64::INFINITY; cols], vec![f64::NEG_INFINITY; cols]);
    for &i in &keep {
        for j in 0..cols {
            min[j] = min[j].min(data.features[(i, j)]);
            max[j] = max[j].max(data.features[(i, j)]);
        }
    }
    let x = keep
        .iter()
        .map(|&i| {
            levels
                .iter()
                .flat_map(|&level| (0..cols).map(move |j| (j, level)))
                .map(|(j, level)| {
                    (data.features[(i, j)] - min[j]) / (max[j] - min[j]).max(1e-12) > level
                })
                .collect()
        })
        .collect();
    let labels = keep
        .iter()
        .map(|&i| {
            classes
                .iter()
                .position(|&c| c == data.labels[i])
                .unwrap_or(0)
        })
        .collect();
    Examples { x, labels }
}

/// `data/mnist_0_1_bits.csv` (see data/README.md): label, then 784 bits in hex.
fn mnist_0_1() -> Res<Examples> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist_0_1_bits.csv");
    let text = std::fs::read_to_string(path)?;
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let bad = || format!("{path}:{}: expected `label,196 hex digits`", n + 1);
        let (label, hex) = line.split_once(',').ok_or_else(bad)?;
        if hex.len() != 196 {
            return Err(bad().into());
        }
        let mut row = Vec::with_capacity(784);
        for digit in hex.chars() {
            let v = digit.to_digit(16).ok_or_else(bad)?;
            row.extend((0..4).rev().map(|b| v >> b & 1 == 1));
        }
        labels.push(label.parse::<usize>().map_err(|_| bad())?);
        x.push(row);
    }
    Ok(Examples { x, labels })
}

/// One truth table per output bit over all the input bits.
fn tables(inputs: usize, outputs: usize) -> Circuit {
    let mut b = CircuitBuilder::new();
    let x: Vec<usize> = (0..inputs).map(|_| b.input()).collect();
    let outs = (0..outputs)
        .map(|_| truth_table(&mut b, &x))
        .collect::<Result<_, _>>()
        .expect("four inputs");
    b.finish(outs).expect("well formed")
}

/// Two levels of tables: `hidden` tables over random `fan_in`-bit subsets
/// of the inputs, then per output bit a table over `fan_in` hidden bits.
fn two_level(inputs: usize, outputs: usize, hidden: usize, fan_in: usize, seed: u64) -> Circuit {
    let mut rng = SplitMix(seed);
    let mut b = CircuitBuilder::new();
    let x: Vec<usize> = (0..inputs).map(|_| b.input()).collect();
    let h: Vec<usize> = (0..hidden)
        .map(|_| {
            let pick: Vec<usize> = rng.permutation(inputs)[..fan_in]
                .iter()
                .map(|&i| x[i])
                .collect();
            truth_table(&mut b, &pick).expect("at most 7 bits")
        })
        .collect();
    let outs = (0..outputs)
        .map(|_| {
            let pick: Vec<usize> = rng.permutation(hidden)[..fan_in.min(hidden)]
                .iter()
                .map(|&i| h[i])
                .collect();
            truth_table(&mut b, &pick).expect("at most 7 bits")
        })
        .collect();
    b.finish(outs).expect("well formed")
}

/// Train and test accuracy of a circuit trained with `combine` for
/// `epochs` passes, at the epoch with the best training accuracy; with
/// `curve`, one line per epoch.
fn paper_rule(
    circuit: &Circuit,
    train: &Bits,
    test: &Bits,
    combine: Combine,
    epochs: usize,
    curve: Option<&str>,
) -> Res<(f64, f64)> {
    let mut rda = Rda::new(circuit.clone());
    if circuit.logic_gates() >= 1000 {
        rda.compile()?;
    }
    let mut best = (-1.0, 0.0);
    for epoch in 1..=epochs {
        let flips = rda.epoch(train, combine)?;
        let (tr, te) = (rda.accuracy(train)?, rda.accuracy(test)?);
        if let Some(name) = curve {
            println!("curve {name} epoch={epoch} flips={flips} train_accuracy={tr:.4} test_accuracy={te:.4}");
        }
        if tr > best.0 {
            best = (tr, te);
        }
    }
    Ok(best)
}

/// Mean of `f(seed)` over the seeds.
fn mean_over_seeds(mut f: impl FnMut(u64) -> Res<(f64, f64)>) -> Res<(f64, f64)> {
    let mut sum = (0.0, 0.0);
    for seed in 0..SEEDS {
        let (a, b) = f(seed)?;
        sum = (sum.0 + a, sum.1 + b);
    }
    Ok((sum.0 / SEEDS as f64, sum.1 / SEEDS as f64))
}

/// How a bank of lookup-table discriminators is shaped and trained.
#[derive(Clone, Copy)]
struct Bank {
    tables: usize,
    tuple: usize,
    at_least: u32,
}

/// Train and test accuracy of discriminators trained on `train` (one
/// epoch: a second flips nothing), compiled.
fn discriminate(
    bank: Bank,
    train: &Examples,
    test: &Examples,
    classes: usize,
    seed: u64,
) -> Res<(f64, f64)> {
    let inputs = train.x.first().map_or(0, Vec::len);
    let mut d = Discriminators::new(inputs, classes, bank.tables, bank.tuple, seed)?;
    d.compile()?;
    d.train(&train.x, &train.labels, bank.at_least)?;
    Ok((
        d.accuracy(&train.x, &train.labels)?,
        d.accuracy(&test.x, &test.labels)?,
    ))
}

/// A bank of tables all trained to the label with the majority rule, read
/// by a vote of its outputs (an ensemble of single tables).
fn voting_tables(bank: Bank, train: &Examples, test: &Examples, seed: u64) -> Res<(f64, f64)> {
    let inputs = train.x.first().map_or(0, Vec::len);
    let (circuit, _) = tuple_tables(inputs, bank.tables, bank.tuple, seed)?;
    let mut rda = Rda::new(circuit);
    rda.compile()?;
    let targets = |e: &Examples| Bits {
        x: e.x.clone(),
        y: e.labels
            .iter()
            .map(|&l| vec![l == 1; bank.tables])
            .collect(),
    };
    rda.epoch(&targets(train), Combine::Majority)?;
    let vote = |rda: &Rda, e: &Examples| -> Res<f64> {
        let out = rda.predict(&e.x)?;
        let right = out
            .iter()
            .zip(&e.labels)
            .filter(|(o, &l)| (2 * o.iter().filter(|b| **b).count() > o.len()) == (l == 1))
            .count();
        Ok(right as f64 / e.x.len() as f64)
    };
    Ok((vote(&rda, train)?, vote(&rda, test)?))
}

/// All ten digits with the paper's rule: one two-level circuit per pair of
/// digits (trained on those two only), the class with the most votes wins.
fn one_vs_one(train: &Examples, test: &Examples, seed: u64) -> Res<(f64, f64)> {
    let mut votes = vec![[0usize; 10]; test.x.len()];
    for a in 0..10 {
        for b in a + 1..10 {
            let pick: Vec<usize> = (0..train.x.len())
                .filter(|&i| train.labels[i] == a || train.labels[i] == b)
                .collect();
            let data = Bits {
                x: pick.iter().map(|&i| train.x[i].clone()).collect(),
                y: pick.iter().map(|&i| vec![train.labels[i] == b]).collect(),
            };
            let circuit = two_level(64, 1, 7, 7, seed * 100 + (a * 10 + b) as u64);
            let mut rda = Rda::new(circuit);
            let mut best = (rda.accuracy(&data)?, rda.params.clone());
            for _ in 0..30 {
                rda.epoch(&data, Combine::Online)?;
                let acc = rda.accuracy(&data)?;
                if acc > best.0 {
                    best = (acc, rda.params.clone());
                }
            }
            rda.params = best.1;
            for (v, p) in votes.iter_mut().zip(rda.predict(&test.x)?) {
                v[if p[0] { b } else { a }] += 1;
            }
        }
    }
    let right = votes
        .iter()
        .zip(&test.labels)
        .filter(|(v, &l)| (0..10).max_by_key(|&c| (v[c], std::cmp::Reverse(c))) == Some(l))
        .count();
    Ok((f64::NAN, right as f64 / test.x.len() as f64))
}

fn study(digits: &Dataset) -> Res<()> {
    let plain = encode(digits, &[0, 1], ONE_LEVEL);
    let thermo = encode(digits, &[0, 1], THERMOMETER);
    let (train, test) = plain.split(0);
    println!("# The paper's rule on digits 0 vs 1, two levels of tables (8 of 4 bits, then one of 4), seed 0:");
    paper_rule(
        &two_level(64, 1, 8, 4, 0),
        &train.bits(1),
        &test.bits(1),
        Combine::Online,
        30,
        Some("two_level_8x4"),
    )?;
    println!("# ... with more capacity (16 tables of 6 bits, then one of 8):");
    paper_rule(
        &two_level(64, 1, 16, 6, 0),
        &train.bits(1),
        &test.bits(1),
        Combine::Online,
        30,
        Some("two_level_16x6"),
    )?;
    println!("# Digits 0 vs 1, each change on its own, mean over {SEEDS} seeds:");
    let report = |name: &str, (tr, te): (f64, f64)| {
        println!(
            "study task=digits_0_vs_1 learner={name} train_accuracy={tr:.4} test_accuracy={te:.4}"
        );
    };
    let two = |hidden, fan_in| {
        mean_over_seeds(|s| {
            let (tr, te) = plain.split(s);
            paper_rule(
                &two_level(64, 1, hidden, fan_in, s),
                &tr.bits(1),
                &te.bits(1),
                Combine::Online,
                30,
                None,
            )
        })
    };
    report("paper_rule_two_level_8x4", two(8, 4)?);
    report("paper_rule_two_level_16x6", two(16, 6)?);
    let bank = Bank {
        tables: 32,
        tuple: 6,
        at_least: 1,
    };
    report(
        "majority_tables_32x6_vote",
        mean_over_seeds(|s| {
            let (tr, te) = plain.split(s);
            voting_tables(bank, &tr, &te, s)
        })?,
    );
    for (name, data) in [
        ("one_sided_discriminators_32x6", &plain),
        ("one_sided_discriminators_32x6_thermometer", &thermo),
    ] {
        report(
            name,
            mean_over_seeds(|s| {
                let (tr, te) = data.split(s);
                discriminate(bank, &tr, &te, 2, s)
            })?,
        );
    }
    println!("# All ten digits, mean over {SEEDS} seeds:");
    let ten_plain = encode(digits, &(0..10).collect::<Vec<_>>(), ONE_LEVEL);
    let ten_thermo = encode(digits, &(0..10).collect::<Vec<_>>(), THERMOMETER);
    let report = |name: &str, (tr, te): (f64, f64)| {
        println!("study task=digits_ten_class learner={name} train_accuracy={tr:.4} test_accuracy={te:.4}");
    };
    report(
        "paper_rule_45_one_vs_one_two_level_7x7",
        mean_over_seeds(|s| {
            let (tr, te) = ten_plain.split(s);
            one_vs_one(&tr, &te, s)
        })?,
    );
    for (name, data, bank) in [
        (
            "one_sided_discriminators_128x8",
            &ten_plain,
            Bank {
                tables: 128,
                tuple: 8,
                at_least: 1,
            },
        ),
        (
            "one_sided_discriminators_128x6_thermometer",
            &ten_thermo,
            Bank {
                tables: 128,
                tuple: 6,
                at_least: 1,
            },
        ),
        (
            "one_sided_discriminators_128x8_thermometer",
            &ten_thermo,
            Bank {
                tables: 128,
                tuple: 8,
                at_least: 1,
            },
        ),
        (
            "one_sided_discriminators_128x8_thermometer_at_least_2",
            &ten_thermo,
            Bank {
                tables: 128,
                tuple: 8,
                at_least: 2,
            },
        ),
    ] {
        report(
            name,
            mean_over_seeds(|s| {
                let (tr, te) = data.split(s);
                discriminate(bank, &tr, &te, 10, s)
            })?,
        );
    }
    println!("# Learning curve of the ten-class discriminators (128 tables of 8 bits, thermometer): share of the training half used, seed 0:");
    let (tr, te) = ten_thermo.split(0);
    for share in [0.1, 0.25, 0.5, 1.0] {
        let n = ((tr.x.len() as f64 * share) as usize).max(1);
        let part = tr.pick(&(0..n).collect::<Vec<_>>());
        let (a, b) = discriminate(
            Bank {
                tables: 128,
                tuple: 8,
                at_least: 1,
            },
            &part,
            &te,
            10,
            0,
        )?;
        println!(
            "curve digits_ten_class train_examples={n} train_accuracy={a:.4} test_accuracy={b:.4}"
        );
    }
    Ok(())
}

fn main() -> Res<()> {
    let iris = lensopt::data::iris()?;
    let digits = lensopt::data::digits()?;
    if std::env::args().any(|a| a == "--study") {
        study(&digits)?;
    }
    let mut lines = Vec::new();
    let mut task = |name: &str, detail: String, (_, test): (f64, f64)| {
        println!("{name}: {detail}; mean test accuracy over {SEEDS} seeds {test:.4}");
        lines.push(format!("task={name} test_accuracy={test:.4}"));
    };

    for (name, classes, bits) in [
        ("iris_two_class", vec![0, 1], 1),
        ("iris_three_class", vec![0, 1, 2], 2),
    ] {
        let data = encode(&iris, &classes, ONE_LEVEL);
        let circuit = tables(4, bits);
        let result = mean_over_seeds(|s| {
            let (tr, te) = data.split(s);
            paper_rule(
                &circuit,
                &tr.bits(bits),
                &te.bits(bits),
                Combine::Online,
                30,
                None,
            )
        })?;
        let detail = format!(
            "a truth table per output bit ({} logic gates, {} parameter bits), the paper's rule online",
            circuit.logic_gates(),
            circuit.params()
        );
        task(name, detail, result);
    }

    let started = Instant::now();
    let zero_one = encode(&digits, &[0, 1], THERMOMETER);
    let paper = mean_over_seeds(|s| {
        let (tr, te) = encode(&digits, &[0, 1], ONE_LEVEL).split(s);
        paper_rule(
            &two_level(64, 1, 8, 4, s),
            &tr.bits(1),
            &te.bits(1),
            Combine::Online,
            30,
            None,
        )
    })?;
    let bank = Bank {
        tables: 32,
        tuple: 6,
        at_least: 1,
    };
    let result = mean_over_seeds(|s| {
        let (tr, te) = zero_one.split(s);
        discriminate(bank, &tr, &te, 2, s)
    })?;
    task(
        "digits_0_vs_1",
        format!(
            "2 banks of 32 tables over 6 of 192 thermometer bits, one-sided rule, compiled; \
             the paper's rule on two levels of tables reaches {:.4}; {:.1} s",
            paper.1,
            started.elapsed().as_secs_f64()
        ),
        result,
    );

    let started = Instant::now();
    let ten = encode(&digits, &(0..10).collect::<Vec<_>>(), THERMOMETER);
    let bank = Bank {
        tables: 128,
        tuple: 8,
        at_least: 1,
    };
    let result = mean_over_seeds(|s| {
        let (tr, te) = ten.split(s);
        discriminate(bank, &tr, &te, 10, s)
    })?;
    task(
        "digits_ten_class",
        format!(
            "10 banks of 128 tables over 8 of 192 thermometer bits, one-sided rule, compiled; {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        result,
    );

    let started = Instant::now();
    let mnist = mnist_0_1()?;
    let bank = Bank {
        tables: 128,
        tuple: 10,
        at_least: 1,
    };
    let result = mean_over_seeds(|s| {
        let (tr, te) = mnist.split(s);
        discriminate(bank, &tr, &te, 2, s)
    })?;
    task(
        "mnist_0_vs_1",
        format!(
            "{} MNIST examples (data/README.md), 2 banks of 128 tables over 10 of 784 bits, one-sided rule, compiled; {:.1} s",
            mnist.x.len(),
            started.elapsed().as_secs_f64()
        ),
        result,
    );

    for line in lines {
        println!("{line}");
    }
    Ok(())
}
