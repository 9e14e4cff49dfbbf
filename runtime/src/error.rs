//! The runtime's error type: every way a call can be refused, as a value.

use lensopt_frontend::{Diagnostics, PlacedDiagnostics};
use std::fmt;

/// Why an optimizer call was refused. Nothing is modified when a call fails.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// A rule written at run time did not parse or check (each error at
    /// its line and column).
    Rule(PlacedDiagnostics),
    /// A hyperparameter the rule does not declare.
    UnknownHyper {
        /// The optimizer.
        optimizer: String,
        /// The name asked for.
        name: String,
        /// The names the rule declares.
        known: Vec<String>,
    },
    /// A hyperparameter given a value of the wrong kind (number vs boolean).
    HyperType {
        /// The hyperparameter.
        name: String,
        /// `"number"` or `"boolean"`.
        expected: &'static str,
    },
    /// A hyperparameter given a value no step can use (NaN).
    HyperValue {
        /// The hyperparameter.
        name: String,
        /// The value refused.
        value: f64,
    },
    /// Tensors, shapes, lengths, groups or inputs that do not fit together.
    Mismatch(String),
    /// The JIT could not compile the rule.
    Compile(String),
    /// A diagram that does not compose, or data that does not fit it.
    Diagram(crate::diagram::DiagramError),
    /// A gradient or input held NaN or infinity, and the policy is to refuse
    /// the step ([`crate::NonFinite::Refuse`]): nothing was changed.
    NonFinite {
        /// `gradient 2`, or `input `h` 0`.
        what: String,
        /// The element, in row-major order.
        index: usize,
        /// Its value.
        value: f64,
        /// The step that was refused (1-based).
        step: u64,
    },
    /// A data file that cannot be read or does not hold a data set.
    Data {
        /// The file (or the name of a data set compiled in).
        path: std::path::PathBuf,
        /// What is wrong, with the line where there is one.
        message: String,
    },
    /// A checkpoint that cannot be read, or that belongs to another rule,
    /// element type or set of shapes: nothing was changed.
    Checkpoint(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rule(d) => write!(f, "{d}"),
            Error::UnknownHyper {
                optimizer,
                name,
                known,
            } => {
                write!(f, "optimizer `{optimizer}` has no hyperparameter `{name}`")?;
                if known.is_empty() {
                    write!(f, " (it has none)")
                } else {
                    write!(f, " (it has: {})", known.join(", "))
                }
            }
            Error::HyperType { name, expected } => {
                write!(f, "hyperparameter `{name}` takes a {expected}")
            }
            Error::HyperValue { name, value } => {
                write!(f, "hyperparameter `{name}` cannot be {value}")
            }
            Error::Mismatch(m) => f.write_str(m),
            Error::Compile(m) => f.write_str(m),
            Error::Diagram(e) => write!(f, "{e}"),
            Error::NonFinite {
                what,
                index,
                value,
                step,
            } => write!(
                f,
                "step {step}: {what} holds {value} at element {index}; the step was refused and nothing changed"
            ),
            Error::Data { path, message } => write!(f, "{}: {message}", path.display()),
            Error::Checkpoint(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Rule(d) => Some(d),
            Error::Diagram(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Diagnostics> for Error {
    fn from(d: Diagnostics) -> Self {
        Error::Rule(d.into())
    }
}

/// Shorthand for a mismatch error.
pub(crate) fn mismatch(message: impl Into<String>) -> Error {
    Error::Mismatch(message.into())
}

#[cfg(test)]
mod tests {
    /// Errors cross threads and convert into `Box<dyn Error + Send + Sync>`
    /// (and so into `anyhow::Error`).
    #[test]
    fn errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<super::Error>();
        // A rule's errors keep their places on the way out of a thread.
        let err = std::thread::spawn(|| {
            crate::DynOptimizer::parse("Sgd {\n  hyper lr = 0.1;\n  update { p = p - lr * q; }\n}")
                .map(|_| ())
                .expect_err("an unknown name")
        })
        .join()
        .expect("the thread finished");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        let super::Error::Rule(d) = boxed.downcast_ref::<super::Error>().expect("an Error") else {
            panic!("expected a rule error, got {boxed}");
        };
        let first = d.first().expect("one error");
        assert_eq!(
            (first.line(), first.column(), first.width()),
            (3, 25, 1),
            "{d}"
        );
        assert!(first.message.contains("`q`"), "{d}");
        assert!(boxed.to_string().starts_with("3:25: "), "{boxed}");
    }
}
