//! The front end of lensopt: the optimizer language, from text (at run
//! time) or from `optimizer!`'s tokens (at compile time), parsed into the
//! surface syntax of [`ast`] and checked into the typed IR of
//! `lensopt_ir`, with every mistake reported at its token.
//!
//! Data flows one way: tokens or text -> [`parse`] -> [`check`] (names,
//! types, rates, SSA) -> `lensopt_ir::Rule`. The same front end serves the
//! macro and [`ParseRule::parse`], so a rule behaves the same whichever way
//! it was written. This is the only crate that depends on syn and
//! proc-macro2; the IR, the optimizer and the backends do not.

pub mod ast;
pub mod builtins;
pub mod check;
pub mod diag;
pub mod expand;
pub mod parse;
pub mod prelude;

pub use diag::{Diagnostic, Diagnostics, Placed, PlacedDiagnostics};

use lensopt_ir::Rule;

/// Rules from text or tokens: `Rule::parse(text)` with this trait in scope.
pub trait ParseRule: Sized {
    /// Parses and checks a rule written as text, the same language as the
    /// body of `optimizer!`. Errors carry line and column.
    fn parse(text: &str) -> Result<Self, Diagnostics>;

    /// Parses and checks a rule from tokens (what `optimizer!` receives).
    fn from_tokens(tokens: proc_macro2::TokenStream) -> Result<Self, Diagnostics>;
}

impl ParseRule for Rule {
    /// Parses and checks a rule written as text, the same language as the
    /// body of `optimizer!`. Errors carry line and column.
    ///
    /// ```
    /// use lensopt_frontend::ParseRule;
    /// use lensopt_ir::Rule;
    /// let rule = Rule::parse("Sgd { hyper lr = 0.1; update { p = p - lr * g; } }").unwrap();
    /// assert_eq!(rule.name, "Sgd");
    /// let err = Rule::parse("Sgd { hyper lr = 0.1; update { p = p - lr * q; } }").unwrap_err();
    /// assert_eq!(err.to_string(), "1:45: unknown name `q`");
    /// ```
    fn parse(text: &str) -> Result<Rule, Diagnostics> {
        let result = parse_text(text).map_err(|mut d| {
            d.resolve();
            d
        });
        // Text parsed at run time registers its source with proc-macro2's
        // per-thread source map, which would otherwise grow with every
        // parse. Nothing refers to those spans any more: the rule holds
        // none and the diagnostics were resolved to lines and columns.
        proc_macro2::extra::invalidate_current_thread_spans();
        result
    }

    /// Parses and checks a rule from tokens (what `optimizer!` receives).
    fn from_tokens(tokens: proc_macro2::TokenStream) -> Result<Rule, Diagnostics> {
        let decl = crate::parse::parse_tokens(tokens)?;
        crate::check::check(&decl)
    }
}

fn parse_text(text: &str) -> Result<Rule, Diagnostics> {
    let tokens: proc_macro2::TokenStream = text.parse().map_err(|e: proc_macro2::LexError| {
        let mut d = Diagnostics::default();
        match crate::parse::unbalanced_delimiter(text) {
            Some((line, column, message)) => d.push_at(line, column, message),
            None => d.push(e.span(), format!("cannot read the rule: {e}")),
        }
        d
    })?;
    <Rule as ParseRule>::from_tokens(tokens)
}
