//! The data sets of the repository's `data/` folder (Iris, 8x8 digits, diabetes),
//! compiled into the library and loaded as matrices; CSV files of the same
//! form; seeded train/test splits.

use crate::diagram::plan::SplitMix;
use crate::error::Error;
use ndarray::Array2;
use std::path::Path;

fn data_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Features (one example per row) and integer class labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// One row per example.
    pub features: Array2<f64>,
    /// The class of each example.
    pub labels: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
}

/// The Iris CSV, compiled into the library so that a binary does not
/// depend on the tree it was built in.
const IRIS_CSV: &str = include_str!("../../data/iris.csv");

/// The digits CSV (260 KB), compiled in for the same reason.
const DIGITS_CSV: &str = include_str!("../../data/digits.csv");

fn parse_rows(text: &str, skip: usize, path: &Path) -> Result<Vec<Vec<f64>>, Error> {
    text.lines()
        .enumerate()
        .skip(skip)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            line.split(',')
                .map(|x| {
                    x.trim().parse::<f64>().map_err(|_| {
                        data_error(path, format!("line {}: `{x}` is not a number", i + 1))
                    })
                })
                .collect()
        })
        .collect()
}

/// Loads a CSV whose last column is the class label.
pub fn load_csv(path: &Path, skip_header: bool) -> Result<Dataset, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| data_error(path, format!("cannot read it: {e}")))?;
    parse_csv(&text, skip_header, path)
}

/// Parses CSV text whose last column is the class label (`path` names it in errors).
fn parse_csv(text: &str, skip_header: bool, path: &Path) -> Result<Dataset, Error> {
    let rows = parse_rows(text, usize::from(skip_header), path)?;
    let width = rows.first().map_or(0, Vec::len);
    if width < 2 || rows.iter().any(|r| r.len() != width) {
        return Err(data_error(
            path,
            "rows must all have the same number (>= 2) of columns",
        ));
    }
    let features = Array2::from_shape_fn((rows.len(), width - 1), |(i, j)| rows[i][j]);
    // Labels are class indices: whole numbers from 0, and not absurdly many
    // classes (a model allocates one output per class).
    const MAX_CLASSES: f64 = 1e6;
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| {
        let y = r[width - 1];
        !(0.0..MAX_CLASSES).contains(&y) || y.fract() != 0.0
    }) {
        return Err(data_error(
            path,
            format!(
                "row {}: the label {} is not a class index (a whole number from 0 below {MAX_CLASSES})",
                i + 1,
                r[width - 1]
            ),
        ));
    }
    let labels: Vec<usize> = rows.iter().map(|r| r[width - 1] as usize).collect();
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    Ok(Dataset {
        features,
        labels,
        classes,
    })
}

/// Fisher's Iris: 150 examples, 4 features (cm), 3 classes.
pub fn iris() -> Result<Dataset, Error> {
    parse_csv(IRIS_CSV, true, Path::new("data/iris.csv"))
}

/// The 8x8 handwritten digits: 1,797 examples, 64 pixel counts (0..16), 10 classes.
pub fn digits() -> Result<Dataset, Error> {
    parse_csv(DIGITS_CSV, false, Path::new("data/digits.csv"))
}

impl Dataset {
    /// The example indices of [`Dataset::split`]: `(train, test)`.
    pub fn split_indices(&self, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let n = self.labels.len();
        let order = SplitMix(seed).permutation(n);
        let n_test = ((n as f64) * test_fraction).round() as usize;
        (order[n_test..].to_vec(), order[..n_test].to_vec())
    }

    /// A seeded shuffle split: `test_fraction` of the examples for testing.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let (train, test) = self.split_indices(test_fraction, seed);
        let pick = |idx: &[usize]| Dataset {
            features: Array2::from_shape_fn((idx.len(), self.features.ncols()), |(i, j)| {
                self.features[(idx[i], j)]
            }),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
        };
        (pick(&train), pick(&test))
    }

    /// Features scaled column by column to [0, 1] with the given minima and maxima.
    pub fn scaled(&self, min: &[f64], max: &[f64]) -> Dataset {
        let mut out = self.clone();
        for (j, mut col) in out.features.columns_mut().into_iter().enumerate() {
            let span = (max[j] - min[j]).max(1e-12);
            col.mapv_inplace(|v| (v - min[j]) / span);
        }
        out
    }

    /// Per-column minima and maxima.
    pub fn ranges(&self) -> (Vec<f64>, Vec<f64>) {
        let cols = self.features.ncols();
        let mut min = vec![f64::INFINITY; cols];
        let mut max = vec![f64::NEG_INFINITY; cols];
        for row in self.features.rows() {
            for (j, v) in row.iter().enumerate() {
                min[j] = min[j].min(*v);
                max[j] = max[j].max(*v);
            }
        }
        (min, max)
    }
}

/// The diabetes progression data (Efron, Hastie, Johnstone and Tibshirani
/// 2004, "Least Angle Regression"), compiled in: 442 patients.
const DIABETES_CSV: &str = include_str!("../../data/diabetes.csv");

/// Features (one example per row) and a real-valued target per example.
#[derive(Clone, Debug)]
pub struct Regression {
    /// One row per example.
    pub features: Array2<f64>,
    /// The target of each example.
    pub targets: Vec<f64>,
}

/// Diabetes: 442 patients, 10 baseline variables (age, sex, body mass
/// index, blood pressure, six blood serum measurements, unscaled), and a
/// quantitative measure of disease progression one year later.
pub fn diabetes() -> Result<Regression, Error> {
    let path = Path::new("data/diabetes.csv");
    let rows = parse_rows(DIABETES_CSV, 0, path)?;
    let width = rows.first().map_or(0, Vec::len);
    if width < 2 || rows.iter().any(|r| r.len() != width) {
        return Err(data_error(
            path,
            "rows must all have the same number (>= 2) of columns",
        ));
    }
    Ok(Regression {
        features: Array2::from_shape_fn((rows.len(), width - 1), |(i, j)| rows[i][j]),
        targets: rows.iter().map(|r| r[width - 1]).collect(),
    })
}

impl Regression {
    /// A seeded shuffle split: `test_fraction` of the examples for testing.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Regression, Regression) {
        let n = self.targets.len();
        let order = SplitMix(seed).permutation(n);
        let n_test = ((n as f64) * test_fraction).round() as usize;
        let pick = |idx: &[usize]| Regression {
            features: Array2::from_shape_fn((idx.len(), self.features.ncols()), |(i, j)| {
                self.features[(idx[i], j)]
            }),
            targets: idx.iter().map(|&i| self.targets[i]).collect(),
        };
        (pick(&order[n_test..]), pick(&order[..n_test]))
    }

    /// Per-column means and standard deviations of the features, then of
    /// the target (to standardise with the training set's statistics).
    pub fn moments(&self) -> (Vec<(f64, f64)>, (f64, f64)) {
        let stats = |v: &mut dyn Iterator<Item = f64>| {
            let values: Vec<f64> = v.collect();
            let n = values.len().max(1) as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            (mean, var.sqrt().max(1e-12))
        };
        let columns = self
            .features
            .columns()
            .into_iter()
            .map(|c| stats(&mut c.iter().copied()))
            .collect();
        (columns, stats(&mut self.targets.iter().copied()))
    }

    /// Features and target standardised with the given moments.
    pub fn standardised(&self, features: &[(f64, f64)], target: (f64, f64)) -> Regression {
        let mut out = self.clone();
        for (j, mut col) in out.features.columns_mut().into_iter().enumerate() {
            let (m, s) = features[j];
            col.mapv_inplace(|v| (v - m) / s);
        }
        out.targets
            .iter_mut()
            .for_each(|y| *y = (*y - target.0) / target.1);
        out
    }
}
