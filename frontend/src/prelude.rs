//! The prelude: the functions and transforms every rule may call without
//! declaring them (`ema`, `debias`, `scale_by_adam`, `add_decayed_weights`,
//! `clip_by_global_norm`, `cautious`, ...), written in the language itself
//! (`prelude.lo`).

use crate::ast::FunctionDecl;

/// The prelude's source text.
pub const SOURCE: &str = include_str!("prelude.lo");

/// The prelude's declarations, parsed. The text is fixed and a test parses
/// and checks every declaration, so the parse cannot fail at run time; if it
/// ever did, the prelude would be empty and calls to it unknown functions.
pub fn functions() -> Vec<FunctionDecl> {
    SOURCE
        .parse::<proc_macro2::TokenStream>()
        .ok()
        .and_then(|tokens| crate::parse::parse_functions(tokens).ok())
        .unwrap_or_default()
}
