//! Hyperparameter values: the numbers and booleans a rule is configured with.

use std::fmt;

/// The value of one hyperparameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HyperValue {
    /// A real number (all arithmetic on hyperparameters is per-step, in f64).
    Num(f64),
    /// A switch such as `amsgrad` or `nesterov`.
    Bool(bool),
}

impl HyperValue {
    /// The value as the interpreter sees it: booleans are 0 and 1.
    pub fn as_f64(self) -> f64 {
        match self {
            HyperValue::Num(x) => x,
            HyperValue::Bool(b) => f64::from(u8::from(b)),
        }
    }

    /// `"number"` or `"boolean"`, for error messages.
    pub fn kind(self) -> &'static str {
        match self {
            HyperValue::Num(_) => "number",
            HyperValue::Bool(_) => "boolean",
        }
    }

    /// Parses `true`, `false` or a number, as written on a command line.
    pub fn parse(text: &str) -> Option<HyperValue> {
        match text.trim() {
            "true" => Some(HyperValue::Bool(true)),
            "false" => Some(HyperValue::Bool(false)),
            other => other.parse::<f64>().ok().map(HyperValue::Num),
        }
    }
}

impl From<f64> for HyperValue {
    fn from(x: f64) -> Self {
        HyperValue::Num(x)
    }
}

impl From<bool> for HyperValue {
    fn from(b: bool) -> Self {
        HyperValue::Bool(b)
    }
}

impl fmt::Display for HyperValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HyperValue::Num(x) => write!(f, "{x:?}"),
            HyperValue::Bool(b) => write!(f, "{b}"),
        }
    }
}
