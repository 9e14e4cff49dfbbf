//! Diagnostics: errors of a rule, each tied to the source token it is about.
//!
//! At compile time a [`Diagnostic`] becomes a `compile_error!` at its span;
//! at run time it is an `Err` value that reports line and column. This module
//! owns that one representation and its rendering, nothing else.

use proc_macro2::Span;
use std::fmt;

/// One error in a rule, with the span of the token it points at.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    /// Where the mistake is.
    pub span: Span,
    /// What is wrong, in one sentence.
    pub message: String,
    /// An explicit (line, column) for errors found before tokens exist,
    /// and for errors whose span was resolved ([`Diagnostics::resolve`]).
    pub position: Option<(usize, usize)>,
    /// The width in columns of the token pointed at, once resolved.
    pub width: Option<usize>,
}

impl Diagnostic {
    /// A diagnostic at `span`.
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            span,
            message: message.into(),
            position: None,
            width: None,
        }
    }

    /// Line (1-based) of the span's start, when spans carry locations
    /// (always at run time; in the compiler the span itself is used).
    pub fn line(&self) -> usize {
        self.position
            .map_or_else(|| self.span.start().line, |p| p.0)
    }

    /// Column (1-based) of the span's start.
    pub fn column(&self) -> usize {
        self.position
            .map_or_else(|| self.span.start().column + 1, |p| p.1)
    }
}

impl Diagnostic {
    /// The width of the span on one line, when it has a location.
    fn span_width(&self) -> Option<usize> {
        if self.position.is_some() {
            return None;
        }
        let (start, end) = (self.span.start(), self.span.end());
        (end.line == start.line && end.column > start.column).then(|| end.column - start.column)
    }

    /// Renders the diagnostic as a compiler does, with the source line and a caret:
    ///
    /// ```text
    /// error: unknown name `q`
    ///  --> rule.lo:3:22
    ///   |
    /// 3 |     p = p - lr * q;
    ///   |                  ^
    /// ```
    pub fn render(&self, source: &str, file: &str) -> String {
        let width = self.width.unwrap_or_else(|| self.span_width().unwrap_or(1));
        render(
            &self.message,
            self.line(),
            self.column(),
            width,
            source,
            file,
        )
    }
}

/// The compiler-style report of `message` at `line`:`column` (1-based),
/// with the source line and `width` carets under the token.
fn render(
    message: &str,
    line: usize,
    column: usize,
    width: usize,
    source: &str,
    file: &str,
) -> String {
    let mut out = format!("error: {message}\n --> {file}:{line}:{column}\n");
    if let Some(text) = source.lines().nth(line.saturating_sub(1)) {
        let gutter = line.to_string().len();
        let pad = " ".repeat(gutter);
        let caret_at: String = text
            .chars()
            .take(column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!(
            "{pad} |\n{line} | {text}\n{pad} | {caret_at}{}\n",
            "^".repeat(width)
        ));
    }
    out
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line(), self.column(), self.message)
    }
}

impl From<syn::Error> for Diagnostics {
    fn from(err: syn::Error) -> Self {
        Diagnostics {
            items: err
                .into_iter()
                .map(|e| Diagnostic::new(e.span(), e.to_string()))
                .collect(),
        }
    }
}

/// All errors found in a rule, in source order.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    /// The individual errors.
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records an error.
    pub fn push(&mut self, span: Span, message: impl Into<String>) {
        self.items.push(Diagnostic::new(span, message));
    }

    /// Records an error at an explicit 1-based line and column.
    pub fn push_at(&mut self, line: usize, column: usize, message: impl Into<String>) {
        let mut d = Diagnostic::new(Span::call_site(), message);
        d.position = Some((line, column));
        self.items.push(d);
    }

    /// Turns every span into an explicit line, column and width, and
    /// forgets the span (it becomes `Span::call_site()`), so that the
    /// diagnostics outlive the source map of the thread that parsed them.
    pub fn resolve(&mut self) {
        for d in &mut self.items {
            if d.position.is_none() {
                d.width = d.span_width();
                d.position = Some((d.span.start().line, d.span.start().column + 1));
            }
            d.span = Span::call_site();
        }
    }

    /// True when no error was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The errors, sorted by position so that reports read top to bottom.
    pub fn sorted(mut self) -> Self {
        self.items.sort_by_key(|d| (d.line(), d.column()));
        self
    }

    /// The first error (every failed check records at least one).
    pub fn first(&self) -> Option<&Diagnostic> {
        self.items.first()
    }

    /// All errors as one `syn::Error`, for `to_compile_error`.
    pub fn to_syn_error(&self) -> syn::Error {
        let mut iter = self.items.iter();
        let first = iter
            .next()
            .map(|d| syn::Error::new(d.span, &d.message))
            .unwrap_or_else(|| syn::Error::new(Span::call_site(), "invalid rule"));
        iter.fold(first, |mut acc, d| {
            acc.combine(syn::Error::new(d.span, &d.message));
            acc
        })
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        lines(f, &self.items)
    }
}

/// `items`, one to a line.
fn lines(f: &mut fmt::Formatter<'_>, items: &[impl fmt::Display]) -> fmt::Result {
    for (i, d) in items.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{d}")?;
    }
    Ok(())
}

impl std::error::Error for Diagnostics {}

/// One error of a rule written as text, placed at its line and column: what
/// a run-time error carries. It holds no span, so it crosses threads
/// (`Send + Sync`), and reads like a [`Diagnostic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// What is wrong, in one sentence.
    pub message: String,
    line: usize,
    column: usize,
    width: usize,
}

impl Placed {
    /// Line (1-based).
    pub fn line(&self) -> usize {
        self.line
    }

    /// Column (1-based).
    pub fn column(&self) -> usize {
        self.column
    }

    /// The width in columns of the token pointed at.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Renders the error as a compiler does (see [`Diagnostic::render`]).
    pub fn render(&self, source: &str, file: &str) -> String {
        render(
            &self.message,
            self.line,
            self.column,
            self.width,
            source,
            file,
        )
    }
}

impl fmt::Display for Placed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// All errors of a rule written as text, placed, in source order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacedDiagnostics {
    /// The individual errors.
    pub items: Vec<Placed>,
}

impl From<Diagnostics> for PlacedDiagnostics {
    fn from(mut d: Diagnostics) -> Self {
        d.resolve();
        PlacedDiagnostics {
            items: d
                .items
                .into_iter()
                .map(|d| Placed {
                    line: d.line(),
                    column: d.column(),
                    width: d.width.unwrap_or(1),
                    message: d.message,
                })
                .collect(),
        }
    }
}

impl PlacedDiagnostics {
    /// The first error.
    pub fn first(&self) -> Option<&Placed> {
        self.items.first()
    }
}

impl fmt::Display for PlacedDiagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        lines(f, &self.items)
    }
}

impl std::error::Error for PlacedDiagnostics {}
