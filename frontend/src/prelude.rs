//! The prelude: the functions and transforms every rule may call without
//! declaring them (`ema`, `debias`, `scale_by_adam`, `add_decayed_weights`,
//! `clip_by_global_norm`, `cautious`, the learning-rate shapes, ...),
//! written in the language itself (`prelude.lo`). A rule parses only the
//! items it may call (those it names and what they name in turn), so a rule
//! that uses none pays nothing for the prelude.

use crate::ast::FunctionDecl;

/// The prelude's source text.
pub const SOURCE: &str = include_str!("prelude.lo");

/// The prelude's items as text: `(name, text)` in source order, each with
/// its doc comment. An item starts at a line beginning with `fn ` or
/// `transform ` (or at the `///` lines just above one).
fn items() -> &'static [(&'static str, String)] {
    static ITEMS: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    ITEMS.get_or_init(split_items)
}

fn split_items() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let mut pending = String::new();
    for line in SOURCE.lines() {
        let head = line
            .strip_prefix("fn ")
            .or_else(|| line.strip_prefix("transform "));
        match head {
            Some(rest) => {
                let name = rest.split('(').next().unwrap_or("").trim();
                let mut text = std::mem::take(&mut pending);
                text.push_str(line);
                text.push('\n');
                out.push((name, text));
            }
            None if line.starts_with("///") => {
                pending.push_str(line);
                pending.push('\n');
            }
            None if line.starts_with("//") || line.trim().is_empty() => pending.clear(),
            None => {
                if let Some(last) = out.last_mut() {
                    last.1.push_str(line);
                    last.1.push('\n');
                }
            }
        }
    }
    out
}

/// Whether `text` names `word` as a whole identifier.
fn names(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let before = text[..at].chars().next_back().is_some_and(ident);
        let after = text[at + word.len()..].chars().next().is_some_and(ident);
        !before && !after
    })
}

/// The prelude's declarations that `wanted` (names a rule calls) need,
/// with the items those name in turn, parsed, in source order. The text is
/// fixed and a test parses and checks every item, so the parse cannot fail
/// at run time; if it ever did, the prelude would be empty and its names
/// unknown functions.
pub fn functions_for(wanted: &[String]) -> Vec<FunctionDecl> {
    let items = items();
    let mut keep = vec![false; items.len()];
    let mut queue: Vec<String> = wanted.to_vec();
    while let Some(name) = queue.pop() {
        if let Some(i) = items.iter().position(|(n, _)| *n == name) {
            if !keep[i] {
                keep[i] = true;
                // Items refer only to those declared before them.
                for (n, _) in &items[..i] {
                    if names(&items[i].1, n) {
                        queue.push((*n).to_string());
                    }
                }
            }
        }
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| keep[*i])
        .flat_map(|(i, (_, text))| parsed(i, text))
        .collect()
}

thread_local! {
    /// Prelude items parsed on this thread so far, by index: a rule's
    /// parse clones them instead of parsing their text again. (Syntax
    /// trees hold `proc_macro2` spans, which stay on their thread.)
    static PARSED: std::cell::RefCell<Vec<Option<Vec<FunctionDecl>>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Item `index` of the prelude (whose text is `text`), parsed.
fn parsed(index: usize, text: &str) -> Vec<FunctionDecl> {
    PARSED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() <= index {
            cache.resize(index + 1, None);
        }
        cache[index]
            .get_or_insert_with(|| {
                text.parse::<proc_macro2::TokenStream>()
                    .ok()
                    .and_then(|tokens| crate::parse::parse_functions(tokens).ok())
                    .unwrap_or_default()
            })
            .clone()
    })
}

/// Every declaration of the prelude, parsed.
pub fn functions() -> Vec<FunctionDecl> {
    let all: Vec<String> = items().iter().map(|(n, _)| n.to_string()).collect();
    functions_for(&all)
}
