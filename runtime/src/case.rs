//! Conformance cases: one parameter vector, a few steps, recorded inputs.
//!
//! This is the JSON format of the golden vectors (see `tests/golden/README.md`):
//! `p0`, per-step `grads`, optional per-step `hessians` (fed to input `h`)
//! and `hessian_grads` (fed to input `ghat`), a `dtype`, and under `lensopt`
//! the optimizer's catalog name and hyperparameters. [`run`] replays a case
//! through any optimizer; `lensopt apply` and the conformance tests use it.
//!
//! A case is read as a stream ([`Case::from_reader`]): numbers go straight
//! into `Vec<f64>` and the fields the format does not use are checked and
//! skipped without being built, so reading a case takes little more memory
//! than its numbers (8 bytes each). A case holding more than
//! [`MAX_ELEMENTS`] numbers is refused, as is any field of the wrong type.

use crate::error::{mismatch, Error};
use crate::optimizer::{DynOptimizer, Optimizer};
use crate::stepper::{Backend, Inputs};
use crate::tensor::TensorRef;
use crate::Float;
use lensopt_ir::HyperValue;
use ndarray::{ArrayD, IxDyn};
use std::io::{self, Read};

/// The most numbers a case may hold: `p0`, `grads`, `hessians`,
/// `hessian_grads` and `params_after` together (2^26, 512 MiB as f64).
pub const MAX_ELEMENTS: usize = 1 << 26;

/// JSON nested deeper than this is refused (serde_json's limit).
const MAX_DEPTH: usize = 128;

/// A parsed case.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// `float64` or `float32`.
    pub dtype: Dtype,
    /// Initial parameters.
    pub p0: Vec<f64>,
    /// One gradient per step.
    pub grads: Vec<Vec<f64>>,
    /// Per step, the Hessian-diagonal estimate fed to input `h`, if any.
    pub hessians: Vec<Option<Vec<f64>>>,
    /// Per step, the gradient on sampled labels fed to input `ghat`, if any.
    pub hessian_grads: Vec<Option<Vec<f64>>>,
    /// The optimizer named by the case (`lensopt.optimizer`), if any.
    pub optimizer: Option<String>,
    /// Hyperparameters named by the case (`lensopt.hyper`), in file order.
    pub hyper: Vec<(String, HyperValue)>,
    /// String-valued options named by the case (`lensopt.hyper`, e.g.
    /// GaLore's `"projection_type": "std"`), in file order: see
    /// [`check_option`].
    pub options: Vec<(String, String)>,
    /// The reference's parameters after each step, when the case records them.
    pub params_after: Option<Vec<Vec<f64>>>,
    /// The parameter's shape (`shape`, e.g. `[rows, cols]`), when the case
    /// gives one; vectors are then nested lists, row-major, flattened here.
    pub shape: Option<Vec<usize>>,
    /// The case's own name (`case`), when it is a string.
    pub name: Option<String>,
}

/// The element type a case runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// f32
    F32,
    /// f64
    F64,
}

fn bad(message: impl Into<String>) -> Error {
    mismatch(message)
}

fn too_large() -> Error {
    bad(format!(
        "the case holds more than {MAX_ELEMENTS} numbers (p0, grads, hessians, hessian_grads \
         and params_after together), the most a case may hold"
    ))
}

fn out_of_memory(what: &str) -> Error {
    bad(format!("not enough memory to read `{what}`"))
}

/// A streaming JSON reader over bytes, with the position of the next byte
/// for messages.
struct Parser<R> {
    input: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    eof: bool,
    line: usize,
    column: usize,
    /// The text of the number being read.
    scratch: Vec<u8>,
    /// Numbers stored so far, against [`MAX_ELEMENTS`].
    elements: usize,
    /// `(rows, cols)` of the last vector read, when it was a matrix.
    last_rows: Option<(usize, usize)>,
    /// Every vector read: its name and its `(rows, cols)` if a matrix.
    nestings: Vec<(String, Option<(usize, usize)>)>,
}

impl<R: Read> Parser<R> {
    fn new(input: R) -> Self {
        Parser {
            input,
            buf: vec![0; 1 << 16].into_boxed_slice(),
            pos: 0,
            end: 0,
            eof: false,
            line: 1,
            column: 0,
            scratch: Vec::new(),
            elements: 0,
            last_rows: None,
            nestings: Vec::new(),
        }
    }

    /// A syntax error at the next byte.
    fn syntax(&self, what: &str) -> Error {
        bad(format!(
            "malformed JSON: {what} at line {} column {}",
            self.line,
            self.column + 1
        ))
    }

    #[inline]
    fn peek(&mut self) -> Result<Option<u8>, Error> {
        if self.pos < self.end {
            return Ok(Some(self.buf[self.pos]));
        }
        self.fill()
    }

    /// Refills the buffer; the next byte, if any.
    #[cold]
    fn fill(&mut self) -> Result<Option<u8>, Error> {
        while self.pos == self.end {
            if self.eof {
                return Ok(None);
            }
            match self.input.read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(k) => {
                    self.pos = 0;
                    self.end = k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(bad(format!("cannot read the case: {e}"))),
            }
        }
        Ok(Some(self.buf[self.pos]))
    }

    /// A value of the wrong type, where `message` says what was expected;
    /// a syntax error if no JSON value starts at the next byte.
    fn wrong_type(&mut self, message: impl Into<String>) -> Error {
        match self.peek() {
            Ok(Some(b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')) => bad(message),
            Ok(Some(_)) => self.syntax("expected a JSON value"),
            Ok(None) => self.syntax("unexpected end of input"),
            Err(e) => e,
        }
    }

    /// The next byte, which must exist.
    fn peek_some(&mut self) -> Result<u8, Error> {
        self.peek()?
            .ok_or_else(|| self.syntax("unexpected end of input"))
    }

    #[inline]
    fn bump(&mut self, b: u8) {
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
            self.column = 0;
        } else {
            self.column += 1;
        }
    }

    fn next(&mut self) -> Result<u8, Error> {
        let b = self.peek_some()?;
        self.bump(b);
        Ok(b)
    }

    /// Skips white space; returns the next byte, if any.
    fn skip_ws(&mut self) -> Result<Option<u8>, Error> {
        loop {
            match self.peek()? {
                Some(b @ (b' ' | b'\t' | b'\n' | b'\r')) => self.bump(b),
                other => return Ok(other),
            }
        }
    }

    /// Inside an object: the next key (its `:` consumed, the value next), or
    /// `None` at the closing `}`.
    fn next_key(&mut self, first: &mut bool) -> Result<Option<String>, Error> {
        let mut b = self.skip_ws()?;
        if b == Some(b'}') {
            self.bump(b'}');
            return Ok(None);
        }
        if !*first {
            if b != Some(b',') {
                return Err(self.syntax("expected `,` or `}`"));
            }
            self.bump(b',');
            b = self.skip_ws()?;
        }
        *first = false;
        if b != Some(b'"') {
            return Err(self.syntax("expected a key in double quotes"));
        }
        let key = self.string()?;
        if self.skip_ws()? != Some(b':') {
            return Err(self.syntax("expected `:`"));
        }
        self.bump(b':');
        self.skip_ws()?;
        Ok(Some(key))
    }

    /// Inside an array: whether another item follows (white space before it
    /// skipped), or `false` at the closing `]`.
    fn next_item(&mut self, first: &mut bool) -> Result<bool, Error> {
        let mut b = self.skip_ws()?;
        if b == Some(b']') {
            self.bump(b']');
            return Ok(false);
        }
        if !*first {
            if b != Some(b',') {
                return Err(self.syntax("expected `,` or `]`"));
            }
            self.bump(b',');
            b = self.skip_ws()?;
            if b == Some(b']') {
                return Err(self.syntax("trailing comma"));
            }
        }
        *first = false;
        if b.is_none() {
            return Err(self.syntax("unexpected end of input"));
        }
        Ok(true)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Error> {
        for &want in word {
            if self.peek()? != Some(want) {
                return Err(self.syntax("expected a JSON value"));
            }
            self.bump(want);
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut v = 0;
        for _ in 0..4 {
            let b = self.peek_some()?;
            let d = (b as char)
                .to_digit(16)
                .ok_or_else(|| self.syntax("invalid escape"))?;
            self.bump(b);
            v = v * 16 + d;
        }
        Ok(v)
    }

    /// A string, at its opening quote.
    fn string(&mut self) -> Result<String, Error> {
        self.bump(b'"');
        let mut bytes = Vec::new();
        loop {
            let b = self.peek_some()?;
            match b {
                b'"' => {
                    self.bump(b);
                    break;
                }
                b'\\' => {
                    self.bump(b);
                    let e = self.next()?;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                self.literal(b"\\u")
                                    .map_err(|_| self.syntax("lone surrogate in an escape"))?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.syntax("lone surrogate in an escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code)
                                .ok_or_else(|| self.syntax("lone surrogate in an escape"))?
                        }
                        _ => return Err(self.syntax("invalid escape")),
                    };
                    let mut utf8 = [0; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                0..=0x1f => return Err(self.syntax("control character in a string")),
                _ => {
                    self.bump(b);
                    bytes.push(b);
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| self.syntax("invalid UTF-8 in a string"))
    }

    fn digits(&mut self) -> Result<usize, Error> {
        let mut count = 0;
        while let Some(b @ b'0'..=b'9') = self.peek()? {
            self.scratch.push(b);
            self.bump(b);
            count += 1;
        }
        Ok(count)
    }

    /// A number's text (JSON's grammar) into `scratch`; whether it is an
    /// integer (no fraction, no exponent).
    fn number_text(&mut self) -> Result<bool, Error> {
        self.scratch.clear();
        let mut integer = true;
        if self.peek()? == Some(b'-') {
            self.scratch.push(b'-');
            self.bump(b'-');
        }
        match self.peek()? {
            Some(b'0') => {
                self.scratch.push(b'0');
                self.bump(b'0');
            }
            Some(b'1'..=b'9') => {
                self.digits()?;
            }
            _ => return Err(self.syntax("invalid number")),
        }
        if self.peek()? == Some(b'.') {
            integer = false;
            self.scratch.push(b'.');
            self.bump(b'.');
            if self.digits()? == 0 {
                return Err(self.syntax("invalid number"));
            }
        }
        if let Some(e @ (b'e' | b'E')) = self.peek()? {
            integer = false;
            self.scratch.push(e);
            self.bump(e);
            if let Some(s @ (b'+' | b'-')) = self.peek()? {
                self.scratch.push(s);
                self.bump(s);
            }
            if self.digits()? == 0 {
                return Err(self.syntax("invalid number"));
            }
        }
        Ok(integer)
    }

    /// A finite number (correctly rounded, as serde_json's `float_roundtrip`).
    fn float(&mut self) -> Result<f64, Error> {
        self.number_text()?;
        let x = std::str::from_utf8(&self.scratch)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|x| x.is_finite());
        x.ok_or_else(|| self.syntax("number out of range"))
    }

    /// A non-negative integer such as `n` or `steps`.
    fn unsigned(&mut self, what: &str) -> Result<u64, Error> {
        let message = format!("`{what}` must be a non-negative integer");
        if !matches!(self.peek()?, Some(b'0'..=b'9')) {
            return Err(self.wrong_type(message));
        }
        if !self.number_text()? {
            return Err(bad(message));
        }
        std::str::from_utf8(&self.scratch)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| bad(message))
    }

    /// Checks and skips one value.
    fn skip_value(&mut self, depth: usize) -> Result<(), Error> {
        match self.peek_some()? {
            open @ (b'{' | b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(self.syntax("nesting too deep"));
                }
                self.bump(open);
                let mut first = true;
                if open == b'{' {
                    while self.next_key(&mut first)?.is_some() {
                        self.skip_value(depth + 1)?;
                    }
                } else {
                    while self.next_item(&mut first)? {
                        self.skip_value(depth + 1)?;
                    }
                }
                Ok(())
            }
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.float().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => Err(self.syntax("expected a JSON value")),
        }
    }

    /// An array of numbers, or a matrix written as rows of numbers
    /// (`[[...], [...]]`, flattened row-major; its `(rows, cols)` are kept
    /// in `last_rows` for the caller to check against the case's shape).
    fn vector(&mut self, what: &str, expect: Option<usize>) -> Result<Vec<f64>, Error> {
        if self.peek()? != Some(b'[') {
            return Err(self.wrong_type(format!("`{what}` must be an array of numbers")));
        }
        self.bump(b'[');
        let mut v: Vec<f64> = Vec::new();
        if let Some(n) = expect {
            let room = MAX_ELEMENTS.saturating_sub(self.elements);
            v.try_reserve_exact(n.min(room))
                .map_err(|_| out_of_memory(what))?;
        }
        self.last_rows = None;
        if self.skip_ws()? == Some(b'[') {
            let mut first = true;
            let mut rows = 0usize;
            let mut cols: Option<usize> = None;
            while self.next_item(&mut first)? {
                if self.peek()? != Some(b'[') {
                    return Err(self.wrong_type(format!(
                        "`{what}[{rows}]`: the entries of a matrix are rows (arrays of numbers)"
                    )));
                }
                self.bump(b'[');
                let before = v.len();
                self.numbers(&mut v, &format!("{what}[{rows}]"))?;
                let len = v.len() - before;
                if cols.is_some_and(|c| c != len) {
                    return Err(bad(format!(
                        "`{what}[{rows}]` has {len} numbers, but `{what}[0]` has {}",
                        cols.unwrap_or(0)
                    )));
                }
                cols = Some(len);
                rows += 1;
            }
            self.last_rows = Some((rows, cols.unwrap_or(0)));
        } else {
            self.numbers(&mut v, what)?;
        }
        v.shrink_to_fit();
        Ok(v)
    }

    /// The numbers of an array whose `[` was read, appended to `v`.
    fn numbers(&mut self, v: &mut Vec<f64>, what: &str) -> Result<(), Error> {
        let start = v.len();
        let mut first = true;
        while self.next_item(&mut first)? {
            if !matches!(self.peek()?, Some(b'-' | b'0'..=b'9')) {
                return Err(
                    self.wrong_type(format!("`{what}[{}]` is not a number", v.len() - start))
                );
            }
            let x = self.float()?;
            self.elements += 1;
            if self.elements > MAX_ELEMENTS {
                return Err(too_large());
            }
            v.try_reserve(1).map_err(|_| out_of_memory(what))?;
            v.push(x);
        }
        Ok(())
    }

    /// An array with one entry per step, each an array of numbers or null.
    fn rows(&mut self, what: &str, expect: Option<usize>) -> Result<Vec<Option<Vec<f64>>>, Error> {
        if self.peek()? != Some(b'[') {
            return Err(
                self.wrong_type(format!("`{what}` must be an array with one entry per step"))
            );
        }
        self.bump(b'[');
        let mut rows = Vec::new();
        let mut first = true;
        while self.next_item(&mut first)? {
            if self.peek()? == Some(b'n') {
                self.literal(b"null")?;
                rows.push(None);
            } else {
                let name = format!("{what}[{}]", rows.len());
                rows.push(Some(self.vector(&name, expect)?));
                self.nestings.push((name, self.last_rows));
            }
        }
        Ok(rows)
    }

    /// Like [`Parser::rows`], with `null` for "not given".
    fn optional_rows(
        &mut self,
        what: &str,
        expect: Option<usize>,
    ) -> Result<Option<Vec<Option<Vec<f64>>>>, Error> {
        if self.peek()? == Some(b'n') {
            self.literal(b"null")?;
            return Ok(None);
        }
        self.rows(what, expect).map(Some)
    }

    fn dtype(&mut self) -> Result<Dtype, Error> {
        if self.peek()? != Some(b'"') {
            return Err(self.wrong_type("`dtype` must be the string `float64` or `float32`"));
        }
        match self.string()?.as_str() {
            "float64" => Ok(Dtype::F64),
            "float32" => Ok(Dtype::F32),
            other => Err(bad(format!(
                "unknown dtype `{other}`: expected `float64` or `float32`"
            ))),
        }
    }

    /// The `lensopt` object: the optimizer's name and hyperparameters.
    fn meta(&mut self) -> Result<Meta, Error> {
        let mut meta = Meta::default();
        match self.peek()? {
            Some(b'n') => {
                self.literal(b"null")?;
                return Ok(meta);
            }
            Some(b'{') => self.bump(b'{'),
            _ => {
                return Err(
                    self.wrong_type("`lensopt` must be an object with `optimizer` and `hyper`")
                )
            }
        }
        let (mut first, mut seen) = (true, Vec::new());
        while let Some(key) = self.next_key(&mut first)? {
            if matches!(key.as_str(), "optimizer" | "hyper") {
                if seen.contains(&key) {
                    return Err(bad(format!("`lensopt.{key}` is given twice")));
                }
                seen.push(key.clone());
            }
            match key.as_str() {
                "optimizer" => match self.peek()? {
                    Some(b'"') => meta.optimizer = Some(self.string()?),
                    Some(b'n') => self.literal(b"null")?,
                    _ => {
                        return Err(self.wrong_type(
                            "`lensopt.optimizer` must be a string (a catalog name) or null",
                        ))
                    }
                },
                "hyper" => (meta.hyper, meta.options) = self.hypers()?,
                _ => self.skip_value(2)?,
            }
        }
        Ok(meta)
    }

    /// `lensopt.hyper`: an object of numbers, booleans and strings (options),
    /// or null.
    #[allow(clippy::type_complexity)]
    fn hypers(&mut self) -> Result<(Vec<(String, HyperValue)>, Vec<(String, String)>), Error> {
        let mut hyper: Vec<(String, HyperValue)> = Vec::new();
        let mut options: Vec<(String, String)> = Vec::new();
        match self.peek()? {
            Some(b'n') => {
                self.literal(b"null")?;
                return Ok((hyper, options));
            }
            Some(b'{') => self.bump(b'{'),
            _ => {
                return Err(self.wrong_type(
                    "`lensopt.hyper` must be an object of hyperparameters (numbers and booleans)",
                ))
            }
        }
        let mut first = true;
        while let Some(name) = self.next_key(&mut first)? {
            if hyper.iter().any(|(n, _)| *n == name) || options.iter().any(|(n, _)| *n == name) {
                return Err(bad(format!("hyperparameter `{name}` is given twice")));
            }
            if self.peek()? == Some(b'"') {
                let value = self.string()?;
                options.push((name, value));
                continue;
            }
            let value = match self.peek()? {
                Some(b't') => self.literal(b"true").map(|()| HyperValue::Bool(true))?,
                Some(b'f') => self.literal(b"false").map(|()| HyperValue::Bool(false))?,
                Some(b'-' | b'0'..=b'9') => HyperValue::Num(self.float()?),
                _ => {
                    return Err(self.wrong_type(format!(
                        "hyperparameter `{name}` must be a number, a boolean or a string"
                    )))
                }
            };
            hyper.push((name, value));
        }
        Ok((hyper, options))
    }

    /// The whole input: one object, then nothing but white space.
    fn case(&mut self) -> Result<Fields, Error> {
        match self.skip_ws()? {
            None => return Err(self.syntax("the input is empty")),
            Some(b'{') => self.bump(b'{'),
            Some(_) => {
                self.skip_value(0)?;
                self.end_of_input()?;
                return Err(bad("malformed case: the top level must be a JSON object"));
            }
        }
        let mut f = Fields::default();
        let (mut first, mut seen) = (true, Vec::new());
        while let Some(key) = self.next_key(&mut first)? {
            let known = [
                "shape",
                "dtype",
                "n",
                "steps",
                "p0",
                "grads",
                "hessians",
                "hessian_grads",
                "params_after",
                "lensopt",
            ];
            if known.contains(&key.as_str()) {
                if seen.contains(&key) {
                    return Err(bad(format!("`{key}` is given twice")));
                }
                seen.push(key.clone());
            }
            // Vectors are allocated once at the length of `p0`, once known.
            let expect = f.p0.as_ref().map(Vec::len).or(f.n.map(|n| n as usize));
            match key.as_str() {
                "dtype" => f.dtype = Some(self.dtype()?),
                "n" => {
                    f.n = Some(self.unsigned("n")?);
                    f.check_declared_size()?;
                }
                "steps" => {
                    f.steps = Some(self.unsigned("steps")?);
                    f.check_declared_size()?;
                }
                "p0" => {
                    f.p0 = Some(self.vector("p0", f.n.map(|n| n as usize))?);
                    self.nestings.push(("p0".into(), self.last_rows));
                }
                "shape" => f.shape = Some(self.shape()?),
                "case" if self.peek()? == Some(b'"') => f.name = Some(self.string()?),
                "grads" => f.grads = Some(self.rows("grads", expect)?),
                "hessians" => f.hessians = self.optional_rows("hessians", expect)?,
                "hessian_grads" => f.hessian_grads = self.optional_rows("hessian_grads", expect)?,
                "params_after" => f.params_after = self.optional_rows("params_after", expect)?,
                "lensopt" => f.meta = self.meta()?,
                _ => self.skip_value(1)?,
            }
        }
        self.end_of_input()?;
        f.nestings = std::mem::take(&mut self.nestings);
        Ok(f)
    }

    /// `shape`: an array of at most two whole numbers.
    fn shape(&mut self) -> Result<Vec<usize>, Error> {
        let wrong = "`shape` must be an array of one or two whole numbers, e.g. [rows, cols]";
        if self.peek()? != Some(b'[') {
            return Err(self.wrong_type(wrong));
        }
        self.bump(b'[');
        let mut dims = Vec::new();
        let mut first = true;
        while self.next_item(&mut first)? {
            if dims.len() == 2 || !matches!(self.peek()?, Some(b'0'..=b'9')) {
                return Err(bad(wrong));
            }
            let d = self.unsigned("shape")?;
            dims.push(usize::try_from(d).map_err(|_| too_large())?);
        }
        if dims.is_empty() {
            return Err(bad(wrong));
        }
        Ok(dims)
    }

    fn end_of_input(&mut self) -> Result<(), Error> {
        match self.skip_ws()? {
            None => Ok(()),
            Some(_) => Err(self.syntax("trailing characters")),
        }
    }
}

/// `lensopt`: the optimizer's name and hyperparameters.
#[derive(Default)]
struct Meta {
    optimizer: Option<String>,
    hyper: Vec<(String, HyperValue)>,
    options: Vec<(String, String)>,
}

/// A case's fields as read, before their lengths are checked.
#[derive(Default)]
struct Fields {
    dtype: Option<Dtype>,
    n: Option<u64>,
    steps: Option<u64>,
    p0: Option<Vec<f64>>,
    grads: Option<Vec<Option<Vec<f64>>>>,
    hessians: Option<Vec<Option<Vec<f64>>>>,
    hessian_grads: Option<Vec<Option<Vec<f64>>>>,
    params_after: Option<Vec<Option<Vec<f64>>>>,
    meta: Meta,
    shape: Option<Vec<usize>>,
    name: Option<String>,
    nestings: Vec<(String, Option<(usize, usize)>)>,
}

impl Fields {
    /// Refuses a case whose declared `n` and `steps` already exceed
    /// [`MAX_ELEMENTS`], before reading its numbers.
    fn check_declared_size(&self) -> Result<(), Error> {
        let n = self.n.unwrap_or(0);
        let vectors = self.steps.unwrap_or(0).saturating_add(1);
        if n.saturating_mul(vectors) > MAX_ELEMENTS as u64 {
            return Err(too_large());
        }
        Ok(())
    }
}

/// Checks that per-step rows number `steps` and have `n` elements each.
fn check_rows(
    rows: Option<Vec<Option<Vec<f64>>>>,
    what: &str,
    steps: usize,
    n: usize,
) -> Result<Vec<Option<Vec<f64>>>, Error> {
    let Some(rows) = rows else {
        return Ok(vec![None; steps]);
    };
    if rows.len() != steps {
        return Err(bad(format!(
            "`{what}` has {} entries, but the case has {steps} steps",
            rows.len()
        )));
    }
    check_lengths(&rows, what, n)?;
    Ok(rows)
}

/// The case's shape: as declared (its size must be `n`), or the rows and
/// columns of a `p0` written as a matrix. Every vector written as a matrix
/// must have the shape's rows and columns (a flat vector of the right
/// length is accepted too).
fn check_shape(
    declared: Option<Vec<usize>>,
    nestings: &[(String, Option<(usize, usize)>)],
    n: usize,
) -> Result<Option<Vec<usize>>, Error> {
    let p0 = nestings
        .iter()
        .find(|(w, _)| w == "p0")
        .and_then(|(_, r)| *r);
    let shape = match (declared, p0) {
        (Some(s), _) => Some(s),
        (None, Some((r, c))) => Some(vec![r, c]),
        (None, None) => None,
    };
    let Some(shape) = shape else {
        if let Some((what, _)) = nestings.iter().find(|(_, r)| r.is_some()) {
            return Err(bad(format!(
                "`{what}` is a matrix, but `p0` is not and there is no `shape`"
            )));
        }
        return Ok(None);
    };
    let size = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
    if size != Some(n) {
        return Err(bad(format!(
            "`shape` {shape:?} holds {} elements, but `p0` has {n}",
            size.map_or_else(|| "too many".to_string(), |s| s.to_string())
        )));
    }
    let want = (shape.len() == 2).then(|| (shape[0], shape[1]));
    for (what, rows) in nestings {
        match (rows, want) {
            (None, _) => {}
            (Some(r), Some(w)) if *r == w => {}
            (Some((r, c)), _) => {
                return Err(bad(format!(
                    "`{what}` has {r} rows of {c}, but `shape` is {shape:?}"
                )))
            }
        }
    }
    Ok(Some(shape))
}

fn check_lengths(rows: &[Option<Vec<f64>>], what: &str, n: usize) -> Result<(), Error> {
    for (t, row) in rows.iter().enumerate() {
        if let Some(v) = row.as_ref().filter(|v| v.len() != n) {
            return Err(bad(format!(
                "`{what}[{t}]` has {} elements, but `p0` has {n}",
                v.len()
            )));
        }
    }
    Ok(())
}

impl Case {
    /// Parses a case from JSON text, checking every type and length.
    pub fn from_json(text: &str) -> Result<Case, Error> {
        Case::from_reader(text.as_bytes())
    }

    /// Reads a case from a stream of JSON (buffered here: pass a file as
    /// it is), checking every type and length. The numbers are read straight
    /// into the case's vectors; the rest of the document is checked and
    /// skipped. Refuses cases of more than [`MAX_ELEMENTS`] numbers.
    pub fn from_reader(reader: impl Read) -> Result<Case, Error> {
        let f = Parser::new(reader).case()?;
        let p0 = f.p0.ok_or_else(|| bad("the case has no `p0`"))?;
        let n = p0.len();
        if let Some(declared) = f.n.filter(|&d| d != n as u64) {
            return Err(bad(format!("`n` is {declared}, but `p0` has {n} elements")));
        }
        let grads = f.grads.ok_or_else(|| bad("the case has no `grads`"))?;
        check_lengths(&grads, "grads", n)?;
        let grads = grads
            .into_iter()
            .enumerate()
            .map(|(t, g)| g.ok_or_else(|| bad(format!("`grads[{t}]` is null"))))
            .collect::<Result<Vec<_>, _>>()?;
        let steps = grads.len();
        if let Some(declared) = f.steps.filter(|&d| d != steps as u64) {
            return Err(bad(format!(
                "`steps` is {declared}, but `grads` has {steps} entries"
            )));
        }
        let hessians = check_rows(f.hessians, "hessians", steps, n)?;
        let hessian_grads = check_rows(f.hessian_grads, "hessian_grads", steps, n)?;
        let params_after = match f.params_after {
            Some(rows) => Some(
                check_rows(Some(rows), "params_after", steps, n)?
                    .into_iter()
                    .map(|r| r.ok_or_else(|| bad("`params_after` has a null entry")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let shape = check_shape(f.shape, &f.nestings, n)?;
        Ok(Case {
            shape,
            dtype: f.dtype.unwrap_or(Dtype::F64),
            p0,
            grads,
            hessians,
            hessian_grads,
            optimizer: f.meta.optimizer,
            hyper: f.meta.hyper,
            options: f.meta.options,
            params_after,
            name: f.name,
        })
    }
}

/// Sets a hyperparameter, accepting 0 and 1 for boolean switches.
pub fn set_hyper(opt: &mut DynOptimizer, name: &str, value: HyperValue) -> Result<(), Error> {
    let rule = opt.rule();
    let value = match (
        rule.hyper_index(name).map(|i| rule.hypers[i].default),
        value,
    ) {
        (Some(HyperValue::Bool(_)), HyperValue::Num(x)) if x == 0.0 || x == 1.0 => {
            HyperValue::Bool(x == 1.0)
        }
        _ => value,
    };
    opt.set(name, value)
}

/// Accepts a case's string-valued option `name = value` for the rule
/// called `rule` when `fixed` (the options it implements, each with its one
/// value: [`crate::catalog::fixed_options`]) has exactly that choice;
/// anything else is an error saying what the rule does implement.
pub fn check_option(
    rule: &str,
    fixed: &[(&str, &str)],
    name: &str,
    value: &str,
) -> Result<(), Error> {
    match fixed.iter().find(|(n, _)| *n == name) {
        Some((_, v)) if *v == value => Ok(()),
        Some((_, v)) => Err(bad(format!(
            "`{rule}` implements `{name}` = \"{v}\" only, not \"{value}\""
        ))),
        None if fixed.is_empty() => Err(bad(format!(
            "`{rule}` takes numbers and booleans, not the string option `{name}`"
        ))),
        None => Err(bad(format!(
            "`{rule}` has no option `{name}` (its options: {})",
            fixed
                .iter()
                .map(|(n, v)| format!("{n} = \"{v}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The result of replaying a case.
#[derive(Clone, Debug, PartialEq)]
pub struct Replay {
    /// Parameters after each step, widened to f64.
    pub params_after: Vec<Vec<f64>>,
    /// Per-element state after the last step, by name, widened to f64.
    pub state: Vec<(String, Vec<f64>)>,
}

/// Replays `case` through `opt` in the case's dtype, with the default backend.
pub fn run(case: &Case, opt: &DynOptimizer) -> Result<Replay, Error> {
    run_with(case, opt, Backend::default())
}

/// Replays `case` through `opt` in the case's dtype, with `backend`.
pub fn run_with(case: &Case, opt: &DynOptimizer, backend: Backend) -> Result<Replay, Error> {
    match case.dtype {
        Dtype::F32 => run_typed::<f32>(case, opt, backend),
        Dtype::F64 => run_typed::<f64>(case, opt, backend),
    }
}

fn run_typed<F: Float>(case: &Case, opt: &DynOptimizer, backend: Backend) -> Result<Replay, Error> {
    // Tensors take the case's shape (a matrix stays a matrix for the rule).
    let dims = case.shape.clone().unwrap_or_else(|| vec![case.p0.len()]);
    let array = |v: &[f64]| -> Result<ArrayD<F>, Error> {
        ArrayD::from_shape_vec(IxDyn(&dims), v.iter().map(|&x| F::from_f64(x)).collect())
            .map_err(|e| bad(format!("the case's shape: {e}")))
    };
    let rule = opt.rule();
    let mut p: ArrayD<F> = array(&case.p0)?;
    let mut stepper = opt.init::<F>(&[&p])?;
    stepper.set_backend(backend);
    let mut params_after = Vec::with_capacity(case.grads.len());
    for t in 0..case.grads.len() {
        let g: ArrayD<F> = array(&case.grads[t])?;
        let h: Option<ArrayD<F>> = case.hessians[t].as_deref().map(array).transpose()?;
        let ghat: Option<ArrayD<F>> = case.hessian_grads[t].as_deref().map(array).transpose()?;
        let mut inputs = Inputs::new();
        if let (Some(h), Some(_)) = (&h, rule.input_index("h")) {
            inputs = inputs.with("h", vec![h as &dyn TensorRef<F>]);
        }
        if let (Some(ghat), Some(_)) = (&ghat, rule.input_index("ghat")) {
            inputs = inputs.with("ghat", vec![ghat as &dyn TensorRef<F>]);
        }
        stepper.step_with(&mut [&mut p], &[&g], &inputs)?;
        params_after.push(p.iter().map(|x| x.to_f64()).collect());
    }
    let state = rule
        .states
        .iter()
        .filter_map(|s| {
            stepper
                .state(0, &s.name)
                .map(|v| (s.name.clone(), v.iter().map(|x| x.to_f64()).collect()))
        })
        .collect();
    Ok(Replay {
        params_after,
        state,
    })
}
