//! `circuit!`: a boolean circuit written with `>>` and `|` over the Z2
//! generators, its wiring (numbers of bits) checked at compile time,
//! expanded into the run-time builder's generators and composition.
//!
//! ```text
//! circuit := seq
//! seq     := par ('>>' par)*
//! par     := atom ('|' atom)*
//! atom    := '(' seq ')' | GATE | GATE '(' INTEGER ')'
//! GATE    := and | xor | not | zero | one | copy | discard | swap | param | id(n)
//! ```

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::{ParseStream, Parser};
use syn::{parenthesized, Ident, LitInt, Token};

/// A checked piece: its numbers of input and output bits and the tokens that build it.
struct Piece {
    inputs: usize,
    outputs: usize,
    tokens: TokenStream,
}

/// Parses and checks the macro input; returns the expansion.
pub fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let piece = (|stream: ParseStream| {
        let piece = seq(stream)?;
        if !stream.is_empty() {
            return Err(stream.error("expected `>>`, `|` or the end of the circuit"));
        }
        Ok(piece)
    })
    .parse2(input)?;
    let tokens = piece.tokens;
    Ok(
        quote! { { #[allow(unused_imports)] use ::lensopt::circuit::gates as __lensopt_g; #tokens } },
    )
}

fn seq(input: ParseStream) -> syn::Result<Piece> {
    let mut left = par(input)?;
    while input.peek(Token![>>]) {
        let op: Token![>>] = input.parse()?;
        let right = par(input)?;
        if left.outputs != right.inputs {
            return Err(syn::Error::new(
                op.spans[0],
                format!(
                    "cannot compose: the left circuit produces {} bits but the right one takes {}",
                    left.outputs, right.inputs
                ),
            ));
        }
        let (lt, rt) = (left.tokens, right.tokens);
        left = Piece {
            inputs: left.inputs,
            outputs: right.outputs,
            tokens: quote! { ::lensopt::__private::then_checked(#lt, #rt) },
        };
    }
    Ok(left)
}

fn par(input: ParseStream) -> syn::Result<Piece> {
    let mut left = atom(input)?;
    while input.peek(Token![|]) && !input.peek(Token![||]) {
        input.parse::<Token![|]>()?;
        let right = atom(input)?;
        let (lt, rt) = (left.tokens, right.tokens);
        left = Piece {
            inputs: left.inputs + right.inputs,
            outputs: left.outputs + right.outputs,
            tokens: quote! { (#lt | #rt) },
        };
    }
    Ok(left)
}

fn atom(input: ParseStream) -> syn::Result<Piece> {
    if input.peek(syn::token::Paren) {
        let content;
        parenthesized!(content in input);
        return seq(&content);
    }
    let name: Ident = input.parse().map_err(|_| {
        input.error(
            "expected a gate (and, xor, not, zero, one, copy, discard, swap, param, id(n)) or `(`",
        )
    })?;
    let g = name.to_string();
    let (inputs, outputs) = match g.as_str() {
        "and" | "xor" => (2, 1),
        "not" => (1, 1),
        "zero" | "one" | "param" => (0, 1),
        "copy" => (1, 2),
        "discard" => (1, 0),
        "swap" => (2, 2),
        "id" => {
            let content;
            parenthesized!(content in input);
            let n: LitInt = content.parse()?;
            let n: usize = n.base10_parse()?;
            return Ok(Piece {
                inputs: n,
                outputs: n,
                tokens: quote! { __lensopt_g::identity(#n) },
            });
        }
        _ => {
            return Err(syn::Error::new(
                name.span(),
                format!("unknown gate `{g}`: expected one of and, xor, not, zero, one, copy, discard, swap, param, id(n)"),
            ))
        }
    };
    let f = Ident::new(&g, name.span());
    Ok(Piece {
        inputs,
        outputs,
        tokens: quote! { __lensopt_g::#f() },
    })
}
