//! `diagram!`: a string diagram written with `>>` and `|`, its wiring checked
//! at compile time by the same rules as the run-time builder
//! (`lensopt_ir::diagram`), expanded into calls of that builder.
//!
//! ```text
//! diagram := seq
//! seq     := par ('>>' par)*
//! par     := atom ('|' atom)*
//! atom    := '(' seq ')' | GENERATOR '(' arg,* ')'
//! arg     := INTEGER | '[' INTEGER,* ']' | NAME | "string"
//! ```

use lensopt_ir::diagram::{self as d, Diagram, DiagramError};
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::{ParseStream, Parser};
use syn::{bracketed, parenthesized, Ident, LitInt, LitStr, Token};

/// A checked piece of diagram: its value (for checking) and the tokens that build it at run time.
struct Piece {
    diagram: Diagram,
    tokens: TokenStream,
}

/// One argument of a generator.
enum Arg {
    Int(usize, Span),
    Shape(Vec<usize>, Span),
    Name(String, Span),
}

impl Arg {
    fn span(&self) -> Span {
        match self {
            Arg::Int(_, s) | Arg::Shape(_, s) | Arg::Name(_, s) => *s,
        }
    }
}

/// Parses and checks the macro input; returns the expansion.
pub fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let names = std::cell::RefCell::new(Vec::<(String, Span)>::new());
    let piece = (|stream: ParseStream| {
        let piece = seq(stream, &names)?;
        if !stream.is_empty() {
            return Err(stream.error("expected `>>`, `|` or the end of the diagram"));
        }
        Ok(piece)
    })
    .parse2(input)?;
    // Parameter names must be unique across the diagram.
    let names = names.into_inner();
    for (i, (name, span)) in names.iter().enumerate() {
        if names[..i].iter().any(|(n, _)| n == name) {
            return Err(syn::Error::new(
                *span,
                format!("two generators are called `{name}`: parameter names must be unique"),
            ));
        }
    }
    let tokens = piece.tokens;
    Ok(quote! { { #[allow(unused_imports)] use ::lensopt::diagram as __lensopt_d; #tokens } })
}

fn seq(input: ParseStream, names: &std::cell::RefCell<Vec<(String, Span)>>) -> syn::Result<Piece> {
    let mut left = par(input, names)?;
    while input.peek(Token![>>]) {
        let op: Token![>>] = input.parse()?;
        let right = par(input, names)?;
        let diagram = left.diagram.clone().then(right.diagram.clone());
        // Repeated parameter names are reported at the name, after parsing.
        if let Err(e @ DiagramError::Mismatch { .. }) = diagram.check() {
            return Err(syn::Error::new(op.spans[0], e.to_string()));
        }
        let (lt, rt) = (left.tokens, right.tokens);
        left = Piece {
            diagram,
            tokens: quote! { (#lt >> #rt) },
        };
    }
    Ok(left)
}

fn par(input: ParseStream, names: &std::cell::RefCell<Vec<(String, Span)>>) -> syn::Result<Piece> {
    let mut left = atom(input, names)?;
    while input.peek(Token![|]) && !input.peek(Token![||]) {
        input.parse::<Token![|]>()?;
        let right = atom(input, names)?;
        let diagram = left.diagram.clone().beside(right.diagram.clone());
        let (lt, rt) = (left.tokens, right.tokens);
        left = Piece {
            diagram,
            tokens: quote! { (#lt | #rt) },
        };
    }
    Ok(left)
}

fn atom(input: ParseStream, names: &std::cell::RefCell<Vec<(String, Span)>>) -> syn::Result<Piece> {
    if input.peek(syn::token::Paren) {
        let content;
        parenthesized!(content in input);
        return seq(&content, names);
    }
    let name: Ident = input
        .parse()
        .map_err(|_| input.error("expected a generator, such as `dense(name, 64, 128)`, or `(`"))?;
    let content;
    parenthesized!(content in input);
    let mut args = Vec::new();
    while !content.is_empty() {
        args.push(arg(&content)?);
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    generator(&name, &args, names)
}

fn arg(input: ParseStream) -> syn::Result<Arg> {
    if input.peek(LitInt) {
        let lit: LitInt = input.parse()?;
        return Ok(Arg::Int(lit.base10_parse()?, lit.span()));
    }
    if input.peek(syn::token::Bracket) {
        let content;
        let bracket = bracketed!(content in input);
        let mut dims = Vec::new();
        while !content.is_empty() {
            let lit: LitInt = content.parse()?;
            dims.push(lit.base10_parse()?);
            if content.is_empty() {
                break;
            }
            content.parse::<Token![,]>()?;
        }
        return Ok(Arg::Shape(dims, bracket.span.join()));
    }
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Ok(Arg::Name(lit.value(), lit.span()));
    }
    let ident: Ident = input
        .parse()
        .map_err(|_| input.error("expected a size, a shape `[..]` or a parameter name"))?;
    Ok(Arg::Name(ident.to_string(), ident.span()))
}

const GENERATORS: &str = "linear, dense, bias, matmul, add, mul, copy, discard, swap, identity, relu, sigmoid, tanh, exp, log, softmax, sum, broadcast, reshape";

fn generator(
    name: &Ident,
    args: &[Arg],
    names: &std::cell::RefCell<Vec<(String, Span)>>,
) -> syn::Result<Piece> {
    let g = name.to_string();
    let want = |kinds: &str| {
        syn::Error::new(
            name.span(),
            format!(
                "`{g}` takes ({kinds}), but was given {} argument{}",
                args.len(),
                if args.len() == 1 { "" } else { "s" }
            ),
        )
    };
    let int = |a: &Arg, what: &str| match a {
        Arg::Int(n, _) => Ok(*n),
        other => Err(syn::Error::new(
            other.span(),
            format!("expected {what} (a number)"),
        )),
    };
    let shape = |a: &Arg| match a {
        Arg::Int(n, _) => Ok(vec![*n]),
        Arg::Shape(s, _) => Ok(s.clone()),
        Arg::Name(_, span) => Err(syn::Error::new(*span, "expected a shape: a size or `[..]`")),
    };
    let pname = |a: &Arg| match a {
        Arg::Name(n, span) => {
            names.borrow_mut().push((n.clone(), *span));
            Ok(n.clone())
        }
        other => Err(syn::Error::new(other.span(), "expected a parameter name")),
    };
    let shape_tokens = |s: &[usize]| quote! { ::std::vec![#(#s),*] };
    let (diagram, tokens) = match (g.as_str(), args) {
        ("linear" | "dense", [n, i, o]) => {
            let (n, i, o) = (
                pname(n)?,
                int(i, "the input size")?,
                int(o, "the output size")?,
            );
            let f = Ident::new(&g, name.span());
            let d = if g == "linear" {
                d::linear(&n, i, o)
            } else {
                d::dense(&n, i, o)
            };
            (d, quote! { __lensopt_d::#f(#n, #i, #o) })
        }
        ("linear" | "dense", _) => return Err(want("name, inputs, outputs")),
        ("bias", [n, s]) => {
            let (n, s) = (pname(n)?, int(s, "the size")?);
            (d::bias(&n, s), quote! { __lensopt_d::bias(#n, #s) })
        }
        ("bias", _) => return Err(want("name, size")),
        ("matmul", [m, k, n]) => {
            let (m, k, n) = (int(m, "m")?, int(k, "k")?, int(n, "n")?);
            (
                d::matmul(m, k, n),
                quote! { __lensopt_d::matmul(#m, #k, #n) },
            )
        }
        ("matmul", _) => return Err(want("m, k, n")),
        ("softmax" | "broadcast", [n]) => {
            let n = int(n, "the size")?;
            let f = Ident::new(&g, name.span());
            let d = if g == "softmax" {
                d::softmax(n)
            } else {
                d::broadcast(n)
            };
            (d, quote! { __lensopt_d::#f(#n) })
        }
        ("softmax" | "broadcast", _) => return Err(want("size")),
        ("swap" | "reshape", [s, t]) => {
            let (s, t) = (shape(s)?, shape(t)?);
            let (st, tt) = (shape_tokens(&s), shape_tokens(&t));
            let f = Ident::new(&g, name.span());
            let d = if g == "swap" {
                d::swap(s, t)
            } else {
                d::reshape(s, t)
            };
            (d, quote! { __lensopt_d::#f(#st, #tt) })
        }
        ("swap" | "reshape", _) => return Err(want("shape, shape")),
        (
            "add" | "mul" | "copy" | "discard" | "identity" | "relu" | "sigmoid" | "tanh" | "exp"
            | "log" | "sum",
            [s],
        ) => {
            let s = shape(s)?;
            let st = shape_tokens(&s);
            let f = Ident::new(&g, name.span());
            let d = match g.as_str() {
                "add" => d::add(s),
                "mul" => d::mul(s),
                "copy" => d::copy(s),
                "discard" => d::discard(s),
                "identity" => d::identity(s),
                "relu" => d::relu(s),
                "sigmoid" => d::sigmoid(s),
                "tanh" => d::tanh(s),
                "exp" => d::exp(s),
                "log" => d::log(s),
                _ => d::sum(s),
            };
            (d, quote! { __lensopt_d::#f(#st) })
        }
        (
            "add" | "mul" | "copy" | "discard" | "identity" | "relu" | "sigmoid" | "tanh" | "exp"
            | "log" | "sum",
            _,
        ) => return Err(want("shape")),
        _ => {
            return Err(syn::Error::new(
                name.span(),
                format!("unknown generator `{g}`: expected one of {GENERATORS}"),
            ))
        }
    };
    if let Err(e) = diagram.check() {
        return Err(syn::Error::new(name.span(), e.to_string()));
    }
    Ok(Piece { diagram, tokens })
}
