//! The proc-macros of lensopt: `optimizer!`, `diagram!` and `circuit!`.
//!
//! This crate is a thin shell: the front end (parsing and checking) lives in
//! `lensopt-frontend` and works on `proc_macro2` tokens, so everything it
//! decides is unit-tested there and shared with `Rule::parse` at run time.
//! Here we turn its diagnostics into compile errors at their spans, and a
//! checked rule into Rust items: the optimizer's struct and the kernels
//! compiled into the crate (`lensopt_codegen::rust::module_source`: the
//! JIT's pipeline, run now).

mod circuit;
mod diagram;

use lensopt_ir::{HyperValue, Rule};
use proc_macro::TokenStream;
use proc_macro2::{Ident, TokenStream as TokenStream2};
use quote::quote;

/// Declares an optimizer: a struct with one field per hyperparameter
/// (`Default` gives the declared defaults, one builder setter per field) that
/// implements `lensopt::Optimizer`.
///
/// ```text
/// lensopt::optimizer! {
///     /// Plain SGD.
///     pub Sgd {
///         hyper lr = 0.01;
///         update { p = p - lr * g; }
///     }
/// }
/// ```
///
/// Mistakes in the rule are compile errors pointing at the offending token.
#[proc_macro]
pub fn optimizer(input: TokenStream) -> TokenStream {
    let tokens = TokenStream2::from(input);
    let source = tokens.to_string();
    let decl = match lensopt_frontend::parse::parse_tokens(tokens) {
        Ok(decl) => decl,
        Err(err) => return err.to_compile_error().into(),
    };
    match lensopt_frontend::check::check(&decl) {
        Ok(rule) => match expand(&decl, &rule, &source) {
            Ok(tokens) => tokens.into(),
            Err(err) => err.to_compile_error().into(),
        },
        Err(diags) => diags.to_syn_error().to_compile_error().into(),
    }
}

/// A string diagram written with `>>` (sequential) and `|` (parallel)
/// composition of generators, checked at compile time: a wire mismatch, a
/// bad reshape, an unknown generator or a repeated parameter name is a
/// compile error at the offending token. Expands to a `lensopt::diagram::Diagram`.
///
/// ```text
/// let mlp = lensopt::diagram!(dense(hidden, 64, 128) >> relu(128) >> dense(out, 128, 10));
/// ```
#[proc_macro]
pub fn diagram(input: TokenStream) -> TokenStream {
    match diagram::expand(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// A boolean circuit written with `>>` and `|` over the Z2 generators
/// (`and`, `xor`, `not`, `zero`, `one`, `copy`, `discard`, `swap`, `param`,
/// `id(n)`), its wiring checked at compile time. Expands to a
/// `lensopt::circuit::Circuit`.
///
/// ```text
/// let half_adder = lensopt::circuit!((copy | copy) >> (id(1) | swap | id(1)) >> (xor | and));
/// ```
#[proc_macro]
pub fn circuit(input: TokenStream) -> TokenStream {
    match circuit::expand(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Names a hyperparameter may not take because the generated items use them.
const TAKEN: &[&str] = &[
    "default",
    "clone",
    "rule",
    "hypers",
    "set",
    "init",
    "init_groups",
    "eq",
    "fmt",
];

fn expand(
    decl: &lensopt_frontend::ast::RuleDecl,
    rule: &Rule,
    source: &str,
) -> syn_like::Result<TokenStream2> {
    let name = Ident::new(&decl.name.text, decl.name.span);
    let vis = &decl.vis;
    let doc = &decl.doc;
    let ir_text = rule.to_string();
    let mut fields = Vec::new();
    let mut defaults = Vec::new();
    let mut setters = Vec::new();
    let mut values = Vec::new();
    let mut set_arms = Vec::new();
    for (h, item) in rule.hypers.iter().zip(&decl.hypers) {
        if TAKEN.contains(&h.name.as_str()) {
            return Err(syn_like::error(
                item.name.span,
                format!(
                    "a hyperparameter cannot be called `{}`: the generated struct uses that name",
                    h.name
                ),
            ));
        }
        let field = Ident::new(&h.name, item.name.span);
        let field_doc = format!("Hyperparameter `{}` (default `{}`).", h.name, h.default);
        let setter_doc = format!("Sets `{}`.", h.name);
        let key = &h.name;
        match h.default {
            HyperValue::Num(x) => {
                fields.push(quote! { #[doc = #field_doc] pub #field: f64 });
                defaults.push(quote! { #field: #x });
                setters.push(quote! {
                    #[doc = #setter_doc]
                    #[must_use]
                    pub fn #field(mut self, value: f64) -> Self { self.#field = value; self }
                });
                values.push(quote! { ::lensopt::HyperValue::Num(self.#field) });
                set_arms.push(quote! {
                    (#key, ::lensopt::HyperValue::Num(x)) => { self.#field = x; Ok(()) }
                });
            }
            HyperValue::Bool(b) => {
                fields.push(quote! { #[doc = #field_doc] pub #field: bool });
                defaults.push(quote! { #field: #b });
                setters.push(quote! {
                    #[doc = #setter_doc]
                    #[must_use]
                    pub fn #field(mut self, value: bool) -> Self { self.#field = value; self }
                });
                values.push(quote! { ::lensopt::HyperValue::Bool(self.#field) });
                set_arms.push(quote! {
                    (#key, ::lensopt::HyperValue::Bool(x)) => { self.#field = x; Ok(()) }
                });
            }
        }
    }
    let rule_name = &decl.name.text;
    let module = Ident::new(
        &format!("__lensopt_compiled_{}", decl.name.text),
        decl.name.span,
    );
    let compiled: TokenStream2 = lensopt_codegen::rust::module_source(rule, &module.to_string())
        .parse()
        .map_err(|e| {
            syn_like::error(
                decl.name.span,
                format!("lensopt could not emit this rule's kernels: {e}"),
            )
        })?;
    Ok(quote! {
        #compiled

        #(#[doc = #doc])*
        // Optimizer names follow their papers and references (`SGD`).
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Clone, Debug, PartialEq)]
        #vis struct #name {
            #(#fields,)*
        }

        impl ::core::default::Default for #name {
            fn default() -> Self {
                Self { #(#defaults,)* }
            }
        }

        impl #name {
            /// The rule as written in the DSL.
            pub const SOURCE: &'static str = #source;
            /// The checked IR of the rule, in its textual form.
            pub const IR: &'static str = #ir_text;
            #(#setters)*
        }

        impl ::lensopt::Optimizer for #name {
            fn rule(&self) -> ::std::sync::Arc<::lensopt::Rule> {
                static RULE: ::std::sync::OnceLock<::std::sync::Arc<::lensopt::Rule>> = ::std::sync::OnceLock::new();
                RULE.get_or_init(|| ::lensopt::aot::register(&#module::COMPILED)).clone()
            }

            fn hypers(&self) -> ::std::vec::Vec<::lensopt::HyperValue> {
                ::std::vec![#(#values),*]
            }

            fn set(&mut self, name: &str, value: ::lensopt::HyperValue) -> ::core::result::Result<(), ::lensopt::Error> {
                #[allow(unreachable_patterns)]
                match (name, value) {
                    #(#set_arms)*
                    _ => Err(::lensopt::__private::bad_hyper(#rule_name, &::lensopt::Optimizer::rule(self), name, value)),
                }
            }
        }
    })
}

/// Errors of the expansion, as `compile_error!` at a span.
mod syn_like {
    use proc_macro2::{Span, TokenStream};
    use quote::quote_spanned;

    pub struct Error {
        span: Span,
        message: String,
    }

    pub type Result<T> = std::result::Result<T, Error>;

    pub fn error(span: Span, message: String) -> Error {
        Error { span, message }
    }

    impl Error {
        pub fn to_compile_error(&self) -> TokenStream {
            let msg = &self.message;
            quote_spanned! { self.span => ::core::compile_error!(#msg); }
        }
    }
}
