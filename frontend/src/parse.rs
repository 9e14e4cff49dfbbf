//! Parsing: tokens (from `optimizer!` or from text) to the surface syntax of [`crate::ast`].
//!
//! The grammar, informally:
//!
//! ```text
//! input   := item* rule
//! item    := doc* 'fn' NAME '(' NAME,* ')' ('=' expr ';' | '{' ('let' NAME '=' expr ';')* expr '}')
//!          | doc* 'transform' NAME '(' NAME,* ')' '{' ('hyper' ... ';' | 'state' ... ';' | stmt)* expr '}'
//! rule    := doc* vis? NAME '{' section* '}'
//! section := 'hyper' NAME '=' literal (',' NAME '=' literal)* ';'
//!          | 'state' ('scalar' | 'row' | 'col')? NAME '=' expr (',' NAME '=' expr)* ';'
//!          | 'input' NAME '?'? (',' NAME '?'?)* ';'
//!          | 'view' expr ';'
//!          | 'update' '{' stmt* '}'
//! stmt    := 'let' NAME '=' expr ';' | NAME ('=' | '+=' | '-=' | '*=' | '/=') expr ';'
//!          | 'repeat' primary '{' stmt* '}' | 'every' primary '{' stmt* '}'
//! expr    := precedence, loosest first: '||'  '&&'  comparisons (not chained)
//!            '+' '-'  '*' '/' '@'  unary '-' '!'  '^' (right-associative, tighter than unary minus)
//! primary := number | 'true' | 'false' | NAME | NAME '(' expr,* ')' | '(' expr ')'
//! ```
//!
//! Parsing stops at the first syntax error; everything about meaning
//! (names, types, rates) is checked afterwards by [`crate::check`], which
//! reports all its findings at once.

use crate::ast::*;
use lensopt_ir::rule::{BinOp, UnOp};
use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{braced, parenthesized, Ident, Token};

/// The deepest nesting of brackets, and of operators within one
/// expression, that a rule may use. Real rules stay far below it; the limit
/// keeps every recursive pass (parsing, checking, dropping the syntax tree)
/// within a small, fixed stack.
pub const MAX_DEPTH: u32 = 256;

/// Parses a whole rule declaration from tokens (with the functions and
/// transforms declared before it), the prelude's functions in front.
pub fn parse_tokens(tokens: TokenStream) -> syn::Result<RuleDecl> {
    check_bracket_depth(&tokens)?;
    let mut decl = syn::parse2::<RuleDecl>(tokens)?;
    // Only the prelude items the rule may call are parsed (parsing all of
    // it costs more than a small rule).
    let wanted = crate::expand::unknown_calls(&decl);
    if !wanted.is_empty() {
        let mut functions = crate::prelude::functions_for(&wanted);
        functions.append(&mut decl.functions);
        decl.functions = functions;
    }
    crate::expand::declare_transforms(&mut decl)?;
    Ok(decl)
}

/// Parses function and transform declarations only (the prelude).
pub fn parse_functions(tokens: TokenStream) -> syn::Result<Vec<FunctionDecl>> {
    syn::parse::Parser::parse2(
        |input: ParseStream| {
            let mut out = Vec::new();
            while !input.is_empty() {
                parse_doc_attrs(input)?;
                match parse_function(input)? {
                    Some(f) => out.push(f),
                    None => return Err(input.error("expected `fn` or `transform`")),
                }
            }
            Ok(out)
        },
        tokens,
    )
}

/// A `fn` or `transform` declaration, if one starts here.
fn parse_function(input: ParseStream) -> syn::Result<Option<FunctionDecl>> {
    let transform = if input.peek(Token![fn]) {
        input.parse::<Token![fn]>()?;
        false
    } else if input.peek(Ident)
        && input.peek2(Ident)
        && input.fork().parse::<Ident>()? == "transform"
    {
        input.parse::<Ident>()?;
        true
    } else {
        return Ok(None);
    };
    let name = parse_name(input)?;
    if crate::builtins::lookup(&name.text).is_some() || name.text == "chain" {
        return Err(syn::Error::new(
            name.span,
            format!(
                "`{}` is a built-in function; choose another name",
                name.text
            ),
        ));
    }
    let list;
    parenthesized!(list in input);
    let mut params = Vec::new();
    while !list.is_empty() {
        params.push(parse_name(&list)?);
        if list.is_empty() {
            break;
        }
        list.parse::<Token![,]>()?;
    }
    let mut f = FunctionDecl {
        transform,
        name,
        params,
        hypers: Vec::new(),
        states: Vec::new(),
        stmts: Vec::new(),
        result: Expr {
            kind: ExprKind::Num(0.0),
            span: Span::call_site(),
        },
    };
    if !transform && input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        f.result = parse_expr(input)?;
        input.parse::<Token![;]>()?;
        return Ok(Some(f));
    }
    let body;
    braced!(body in input);
    loop {
        if body.is_empty() {
            return Err(body.error(format!(
                "`{}` ends without a value: its last line is the expression it stands for",
                f.name.text
            )));
        }
        let section =
            body.peek(Ident) && body.peek2(Ident) && !body.peek2(Token![=]) && !peek_block(&body);
        let keyword = if section {
            body.fork().parse::<Ident>()?.to_string()
        } else {
            String::new()
        };
        if transform && (keyword == "hyper" || keyword == "state") {
            let mut holder = RuleDecl::empty(f.name.clone());
            parse_section(&body, &mut holder)?;
            f.hypers.append(&mut holder.hypers);
            f.states.append(&mut holder.states);
            continue;
        }
        let statement = body.peek(Token![let])
            || peek_block(&body)
            || (body.peek(Ident)
                && (body.peek2(Token![=]) && !body.peek2(Token![==])
                    || body.peek2(Token![+=])
                    || body.peek2(Token![-=])
                    || body.peek2(Token![*=])
                    || body.peek2(Token![/=])));
        if statement {
            let stmt = parse_stmt(&body)?;
            if let (false, Stmt::Assign(name, _, _)) = (transform, &stmt) {
                return Err(syn::Error::new(
                    name.span,
                    format!(
                        "a function cannot assign `{}`: it only computes a value (a `transform` may update its states)",
                        name.text
                    ),
                ));
            }
            f.stmts.push(stmt);
            continue;
        }
        f.result = parse_expr(&body)?;
        if !body.is_empty() {
            return Err(body.error(
                "expected the end of the body: the expression a function stands for comes last",
            ));
        }
        return Ok(Some(f));
    }
}

/// Refuses tokens whose brackets nest deeper than [`MAX_DEPTH`], walking
/// them with an explicit stack (the parser itself recurses per bracket).
fn check_bracket_depth(tokens: &TokenStream) -> syn::Result<()> {
    let mut stack = vec![tokens.clone().into_iter()];
    while let Some(top) = stack.last_mut() {
        match top.next() {
            Some(TokenTree::Group(group)) => {
                if stack.len() > MAX_DEPTH as usize {
                    return Err(syn::Error::new(
                        group.span_open(),
                        format!("brackets nest more than {MAX_DEPTH} deep"),
                    ));
                }
                stack.push(group.stream().into_iter());
            }
            Some(_) => {}
            None => {
                stack.pop();
            }
        }
    }
    Ok(())
}

/// The error for an expression nested deeper than [`MAX_DEPTH`].
fn too_deep(span: Span) -> syn::Error {
    syn::Error::new(
        span,
        format!("this expression nests more than {MAX_DEPTH} operations deep; split it with `let`"),
    )
}

impl RuleDecl {
    /// A declaration with nothing in it but its name.
    fn empty(name: Name) -> Self {
        RuleDecl {
            doc: Vec::new(),
            vis: TokenStream::new(),
            span: name.span,
            name,
            hypers: Vec::new(),
            states: Vec::new(),
            low_axis: None,
            inputs: Vec::new(),
            view: None,
            update: None,
            functions: Vec::new(),
        }
    }
}

impl Parse for RuleDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut functions = Vec::new();
        let doc = loop {
            let doc = parse_doc_attrs(input)?;
            match parse_function(input)? {
                Some(f) => functions.push(f),
                None => break doc,
            }
        };
        let vis = parse_visibility(input)?;
        let name = parse_name(input)?;
        let body;
        braced!(body in input);
        let mut decl = RuleDecl {
            doc,
            vis,
            span: name.span,
            name,
            hypers: Vec::new(),
            states: Vec::new(),
            low_axis: None,
            inputs: Vec::new(),
            view: None,
            update: None,
            functions,
        };
        while !body.is_empty() {
            parse_section(&body, &mut decl)?;
        }
        if !input.is_empty() {
            return Err(input
                .error("unexpected tokens after the rule: declare one optimizer per invocation"));
        }
        Ok(decl)
    }
}

fn parse_doc_attrs(input: ParseStream) -> syn::Result<Vec<String>> {
    let mut doc = Vec::new();
    while input.peek(Token![#]) {
        input.parse::<Token![#]>()?;
        let content;
        syn::bracketed!(content in input);
        let key = content.call(Ident::parse_any)?;
        if key != "doc" {
            return Err(syn::Error::new(
                key.span(),
                "only doc comments may precede an optimizer",
            ));
        }
        content.parse::<Token![=]>()?;
        let text: syn::LitStr = content.parse()?;
        doc.push(text.value());
    }
    Ok(doc)
}

fn parse_visibility(input: ParseStream) -> syn::Result<TokenStream> {
    let mut vis = TokenStream::new();
    if input.peek(Token![pub]) {
        let kw: Token![pub] = input.parse()?;
        vis.extend([TokenTree::Ident(proc_macro2::Ident::new("pub", kw.span))]);
        if input.peek(syn::token::Paren) {
            let group: proc_macro2::Group = input.parse()?;
            vis.extend([TokenTree::Group(group)]);
        }
    }
    Ok(vis)
}

fn parse_name(input: ParseStream) -> syn::Result<Name> {
    let ident: Ident = input.parse()?;
    Ok(Name {
        text: ident.to_string(),
        span: ident.span(),
    })
}

fn parse_section(input: ParseStream, decl: &mut RuleDecl) -> syn::Result<()> {
    let keyword = input.call(Ident::parse_any).map_err(|_| {
        input.error("expected `hyper`, `state`, `input`, `axis`, `view` or `update`")
    })?;
    match keyword.to_string().as_str() {
        "axis" => {
            let name = parse_name(input)?;
            if name.text != "low" {
                return Err(syn::Error::new(
                    name.span,
                    format!("unknown axis `{}`: a rule may declare the low axis, `axis low = k;` (k a hyperparameter)", name.text),
                ));
            }
            input.parse::<Token![=]>()?;
            let hyper = parse_name(input)?;
            if decl.low_axis.is_some() {
                return Err(syn::Error::new(
                    keyword.span(),
                    "the low axis is declared twice",
                ));
            }
            decl.low_axis = Some(hyper);
            input.parse::<Token![;]>()?;
        }
        "hyper" => {
            loop {
                let name = parse_name(input)?;
                input.parse::<Token![=]>()?;
                let default = parse_literal(input)?;
                decl.hypers.push(HyperItem { name, default });
                if !comma_continues(input)? {
                    break;
                }
            }
            input.parse::<Token![;]>()?;
        }
        "state" => {
            // `state WORD NAME = ...`: WORD is `scalar`, `row` or `col`.
            let mut scalar = false;
            let mut per = None;
            let mut shape = None;
            if input.peek(syn::token::Bracket) {
                let content;
                let brackets = syn::bracketed!(content in input);
                let mut axes = Vec::new();
                while !content.is_empty() {
                    let axis = if content.peek(syn::LitInt) {
                        let one: syn::LitInt = content.parse()?;
                        if one.base10_digits() != "1" {
                            return Err(syn::Error::new(one.span(), "an axis of a state's shape is `1`, `rows`, `cols`, `short`, `long` or `low`"));
                        }
                        "1".to_string()
                    } else {
                        let axis = content.call(Ident::parse_any)?;
                        if lensopt_ir::Dim::from_name(&axis.to_string()).is_none() {
                            return Err(syn::Error::new(axis.span(), format!("unknown axis `{axis}`: an axis of a state's shape is `1`, `rows`, `cols`, `short`, `long` or `low`")));
                        }
                        axis.to_string()
                    };
                    axes.push(axis);
                    if content.is_empty() {
                        break;
                    }
                    content.parse::<Token![,]>()?;
                }
                let [a, b]: [String; 2] = axes.try_into().map_err(|_| {
                    syn::Error::new(
                        brackets.span.join(),
                        "a state's shape has two axes: `state [rows, low] u = 0;`",
                    )
                })?;
                shape = Some(([a, b], brackets.span.join()));
            } else if input.peek(Ident) && input.peek2(Ident) {
                let kind: Ident = input.parse()?;
                match kind.to_string().as_str() {
                    "scalar" => scalar = true,
                    "row" => per = Some(lensopt_ir::Axis::Row),
                    "col" => per = Some(lensopt_ir::Axis::Col),
                    _ => {
                        return Err(syn::Error::new(
                            kind.span(),
                            format!(
                                "unknown state kind `{kind}`: write `state m = 0` for a value per element, `state scalar k = 0` for one value per tensor, `state row r = 0` / `state col c = 0` for one per row / column"
                            ),
                        ))
                    }
                }
            }
            loop {
                let name = parse_name(input)?;
                input.parse::<Token![=]>()?;
                let init = parse_expr(input)?;
                decl.states.push(StateItem {
                    name,
                    scalar,
                    per,
                    shape: shape.clone(),
                    init,
                });
                if !comma_continues(input)? {
                    break;
                }
            }
            input.parse::<Token![;]>()?;
        }
        "input" => {
            loop {
                let name = parse_name(input)?;
                let optional = if input.peek(Token![?]) {
                    input.parse::<Token![?]>()?;
                    true
                } else {
                    false
                };
                decl.inputs.push(InputItem { name, optional });
                if !comma_continues(input)? {
                    break;
                }
            }
            input.parse::<Token![;]>()?;
        }
        "view" => {
            if decl.view.is_some() {
                return Err(syn::Error::new(
                    keyword.span(),
                    "the view is declared twice",
                ));
            }
            decl.view = Some(parse_expr(input)?);
            input.parse::<Token![;]>()?;
        }
        "update" => {
            if decl.update.is_some() {
                return Err(syn::Error::new(
                    keyword.span(),
                    "the update block is declared twice",
                ));
            }
            let stmts = parse_body(input)?;
            decl.update = Some(Block {
                stmts,
                span: keyword.span(),
            });
        }
        other => {
            return Err(syn::Error::new(
                keyword.span(),
                format!(
                "unknown section `{other}`: expected `hyper`, `state`, `input`, `view` or `update`"
            ),
            ))
        }
    }
    Ok(())
}

/// Consumes a separating comma; true when another item follows it.
fn comma_continues(input: ParseStream) -> syn::Result<bool> {
    if input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
        Ok(!input.peek(Token![;]))
    } else {
        Ok(false)
    }
}

/// True when the next token is a literal. syn's peeks for literal types
/// parse the token as one (and build an error when it is not), so the
/// literal branches look at the cursor first: most tokens are names.
fn next_is_literal(input: ParseStream) -> bool {
    input.cursor().literal().is_some()
}

/// True when the next token is `true` or `false`.
fn next_is_bool(input: ParseStream) -> bool {
    input
        .cursor()
        .ident()
        .is_some_and(|(name, _)| name == "true" || name == "false")
}

/// A hyperparameter default: a number (optionally negative) or a boolean.
/// Anything else is parsed as an expression and reported by the checker.
fn parse_literal(input: ParseStream) -> syn::Result<Result<Literal, Span>> {
    let fork = input.fork();
    let negative = fork.peek(Token![-]);
    if negative {
        fork.parse::<Token![-]>()?;
    }
    let lit = if !negative && next_is_bool(&fork) && fork.peek(syn::LitBool) {
        let b: syn::LitBool = fork.parse()?;
        Some(Literal::Bool(b.value))
    } else if next_is_literal(&fork) && (fork.peek(syn::LitFloat) || fork.peek(syn::LitInt)) {
        let (value, _) = parse_number(&fork)?;
        Some(Literal::Num(if negative { -value } else { value }))
    } else {
        None
    };
    let ends = fork.peek(Token![,]) || fork.peek(Token![;]);
    match lit {
        Some(lit) if ends => {
            use syn::parse::discouraged::Speculative;
            input.advance_to(&fork);
            Ok(Ok(lit))
        }
        _ => {
            let expr = parse_expr(input)?;
            Ok(Err(expr.span))
        }
    }
}

fn parse_number(input: ParseStream) -> syn::Result<(f64, Span)> {
    if input.peek(syn::LitFloat) {
        let lit: syn::LitFloat = input.parse()?;
        if !lit.suffix().is_empty() {
            return Err(syn::Error::new(
                lit.span(),
                "numbers take no type suffix: the element type is chosen when the rule runs",
            ));
        }
        let value = lit.base10_parse::<f64>()?;
        finite(value, lit.span())
    } else {
        let lit: syn::LitInt = input.parse()?;
        if !lit.suffix().is_empty() {
            return Err(syn::Error::new(
                lit.span(),
                "numbers take no type suffix: the element type is chosen when the rule runs",
            ));
        }
        let value = lit
            .base10_digits()
            .parse::<f64>()
            .map_err(|_| syn::Error::new(lit.span(), "integer literal is not a valid number"))?;
        finite(value, lit.span())
    }
}

/// A literal must be a finite f64: `1e400` would silently become infinity.
fn finite(value: f64, span: Span) -> syn::Result<(f64, Span)> {
    if value.is_finite() {
        Ok((value, span))
    } else {
        Err(syn::Error::new(
            span,
            "this number is too large for f64 (the largest is about 1.8e308)",
        ))
    }
}

/// True when the input starts a `repeat` or `every` block (a keyword that
/// is not assigned to).
fn peek_block(input: ParseStream) -> bool {
    input.peek(Ident)
        && !input.peek2(Token![=])
        && !input.peek2(Token![+=])
        && !input.peek2(Token![-=])
        && !input.peek2(Token![*=])
        && !input.peek2(Token![/=])
        && input
            .fork()
            .parse::<Ident>()
            .is_ok_and(|k| k == "repeat" || k == "every")
}

/// The statements of a `{ ... }` body.
fn parse_body(input: ParseStream) -> syn::Result<Vec<Stmt>> {
    let body;
    braced!(body in input);
    let mut stmts = Vec::new();
    while !body.is_empty() {
        stmts.push(parse_stmt(&body)?);
    }
    Ok(stmts)
}

fn parse_stmt(input: ParseStream) -> syn::Result<Stmt> {
    if peek_block(input) {
        let keyword: Ident = input.parse()?;
        let count = parse_binary(input, PREC_UNARY, 1)?.0;
        if !input.peek(syn::token::Brace) {
            return Err(input.error(format!(
                "expected `{{` after `{keyword} {}`: write `{keyword} N {{ ... }}`",
                if keyword == "repeat" { "N" } else { "k" }
            )));
        }
        let body = parse_body(input)?;
        return Ok(if keyword == "repeat" {
            Stmt::Repeat(count, body, keyword.span())
        } else {
            Stmt::Every(count, body, keyword.span())
        });
    }
    if input.peek(Token![let]) {
        input.parse::<Token![let]>()?;
        let name = parse_name(input)?;
        input.parse::<Token![=]>()?;
        let value = parse_expr(input)?;
        input.parse::<Token![;]>()?;
        return Ok(Stmt::Let(name, value));
    }
    if !input.peek(Ident) {
        return Err(input.error("expected a statement: `let name = expr;` or `name = expr;`"));
    }
    let name = parse_name(input)?;
    let compound = if input.peek(Token![+=]) {
        Some((BinOp::Add, input.parse::<Token![+=]>()?.spans[0]))
    } else if input.peek(Token![-=]) {
        Some((BinOp::Sub, input.parse::<Token![-=]>()?.spans[0]))
    } else if input.peek(Token![*=]) {
        Some((BinOp::Mul, input.parse::<Token![*=]>()?.spans[0]))
    } else if input.peek(Token![/=]) {
        Some((BinOp::Div, input.parse::<Token![/=]>()?.spans[0]))
    } else {
        None
    };
    let (value, eq_span) = match compound {
        Some((op, span)) => {
            let rhs = parse_expr(input)?;
            let lhs = Expr {
                kind: ExprKind::Var(name.text.clone()),
                span: name.span,
            };
            (
                Expr {
                    kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                    span,
                },
                span,
            )
        }
        None => {
            let eq: Token![=] = input.parse().map_err(|_| {
                input.error("expected `=` (or `+=`, `-=`, `*=`, `/=`) after the name")
            })?;
            (parse_expr(input)?, eq.span)
        }
    };
    input.parse::<Token![;]>()?;
    Ok(Stmt::Assign(name, value, eq_span))
}

/// Parses one expression.
pub fn parse_expr(input: ParseStream) -> syn::Result<Expr> {
    parse_nested(input, 0)
}

/// Parses an expression that sits `nest` recursive calls deep; its syntax
/// tree may be at most [`MAX_DEPTH`] deep.
fn parse_nested(input: ParseStream, nest: u32) -> syn::Result<Expr> {
    let (expr, depth) = parse_binary(input, 0, nest)?;
    if depth > MAX_DEPTH {
        return Err(too_deep(expr.span));
    }
    Ok(expr)
}

const PREC_UNARY: u8 = lensopt_ir::ops::precedence::UNARY;
const PREC_MUL: u8 = lensopt_ir::ops::precedence::MUL;

fn peek_binary(input: ParseStream) -> Option<(BinOp, u8)> {
    // Longer operators first: `<=` also starts with `<`. The precedence
    // comes from the operation table.
    let table: [(bool, BinOp); 13] = [
        (input.peek(Token![||]), BinOp::Or),
        (input.peek(Token![&&]), BinOp::And),
        (input.peek(Token![<=]), BinOp::Le),
        (input.peek(Token![>=]), BinOp::Ge),
        (input.peek(Token![==]), BinOp::Eq),
        (input.peek(Token![!=]), BinOp::Ne),
        (input.peek(Token![<]), BinOp::Lt),
        (input.peek(Token![>]), BinOp::Gt),
        (input.peek(Token![+]) && !input.peek(Token![+=]), BinOp::Add),
        (input.peek(Token![-]) && !input.peek(Token![-=]), BinOp::Sub),
        (input.peek(Token![*]) && !input.peek(Token![*=]), BinOp::Mul),
        (input.peek(Token![/]) && !input.peek(Token![/=]), BinOp::Div),
        (input.peek(Token![^]) && !input.peek(Token![^=]), BinOp::Pow),
    ];
    let op = table.iter().find(|(hit, _)| *hit)?.1;
    match op.info().spelling {
        lensopt_ir::ops::Spelling::Infix(_, prec) => Some((op, prec)),
        _ => None,
    }
}

/// Consumes the operator `op` (already peeked) and returns its span.
fn take_binary(input: ParseStream, op: BinOp) -> syn::Result<Span> {
    Ok(match op {
        BinOp::Or => input.parse::<Token![||]>()?.spans[0],
        BinOp::And => input.parse::<Token![&&]>()?.spans[0],
        BinOp::Le => input.parse::<Token![<=]>()?.spans[0],
        BinOp::Ge => input.parse::<Token![>=]>()?.spans[0],
        BinOp::Eq => input.parse::<Token![==]>()?.spans[0],
        BinOp::Ne => input.parse::<Token![!=]>()?.spans[0],
        BinOp::Lt => input.parse::<Token![<]>()?.span,
        BinOp::Gt => input.parse::<Token![>]>()?.span,
        BinOp::Add => input.parse::<Token![+]>()?.span,
        BinOp::Sub => input.parse::<Token![-]>()?.span,
        BinOp::Mul => input.parse::<Token![*]>()?.span,
        BinOp::Div => input.parse::<Token![/]>()?.span,
        BinOp::Pow => input.parse::<Token![^]>()?.span,
        BinOp::Min | BinOp::Max => unreachable!("`min` and `max` are functions"),
    })
}

/// Parses operators of precedence `min_prec` and tighter; returns the
/// expression and the depth of its syntax tree. `nest` counts the recursive
/// calls above this one, so that no input can exhaust the stack.
fn parse_binary(input: ParseStream, min_prec: u8, nest: u32) -> syn::Result<(Expr, u32)> {
    if nest > MAX_DEPTH {
        return Err(too_deep(input.span()));
    }
    let (mut lhs, mut depth) = parse_unary(input, nest)?;
    loop {
        // `a @ b` (matrix product) binds as `*`; it lowers to `matmul(a, b)`.
        if input.peek(Token![@]) && PREC_MUL >= min_prec {
            let span = input.parse::<Token![@]>()?.span;
            let (rhs, rhs_depth) = parse_binary(input, PREC_MUL + 1, nest + 1)?;
            depth = depth.max(rhs_depth) + 1;
            if depth > MAX_DEPTH {
                return Err(too_deep(span));
            }
            lhs = Expr {
                kind: ExprKind::Call("matmul".into(), vec![lhs, rhs]),
                span,
            };
            continue;
        }
        let Some((op, prec)) = peek_binary(input) else {
            break;
        };
        if prec < min_prec {
            break;
        }
        let span = take_binary(input, op)?;
        // `^` is right-associative; everything else associates to the left.
        let next_min = if op == BinOp::Pow { prec } else { prec + 1 };
        let (rhs, rhs_depth) = parse_binary(input, next_min, nest + 1)?;
        if op.is_comparison() && peek_binary(input).is_some_and(|(next, _)| next.is_comparison()) {
            return Err(input.error("comparisons cannot be chained: write `a < b && b < c`"));
        }
        depth = depth.max(rhs_depth) + 1;
        if depth > MAX_DEPTH {
            return Err(too_deep(span));
        }
        lhs = Expr {
            kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
            span,
        };
    }
    if let Some(error) = foreign_operator(input) {
        return Err(error);
    }
    Ok((lhs, depth))
}

/// An operator other languages have and this one does not, right after an
/// operand: a message that says what to write instead of "expected `)`".
fn foreign_operator(input: ParseStream) -> Option<syn::Error> {
    let message = if input.peek(Token![?]) {
        "the language has no `? :`: write `select(condition, if_true, if_false)`"
    } else if input.peek(Token![%]) {
        "the language has no `%` (remainder) operator"
    } else if input.peek(Token![&]) && !input.peek(Token![&&]) {
        "`&` is not an operator here: write `&&` for a logical and"
    } else if input.peek(Token![|]) && !input.peek(Token![||]) {
        "`|` is not an operator here: write `||` for a logical or"
    } else {
        return None;
    };
    Some(input.error(message))
}

fn parse_unary(input: ParseStream, nest: u32) -> syn::Result<(Expr, u32)> {
    let unary = if input.peek(Token![-]) {
        Some((UnOp::Neg, input.parse::<Token![-]>()?.span))
    } else if input.peek(Token![!]) {
        Some((UnOp::Not, input.parse::<Token![!]>()?.span))
    } else {
        None
    };
    if let Some((op, span)) = unary {
        let (operand, depth) = parse_binary(input, PREC_UNARY, nest + 1)?;
        return Ok((
            Expr {
                kind: ExprKind::Unary(op, Box::new(operand)),
                span,
            },
            depth + 1,
        ));
    }
    parse_primary(input, nest)
}

fn parse_primary(input: ParseStream, nest: u32) -> syn::Result<(Expr, u32)> {
    if next_is_literal(input) && (input.peek(syn::LitFloat) || input.peek(syn::LitInt)) {
        let (value, span) = parse_number(input)?;
        return Ok((
            Expr {
                kind: ExprKind::Num(value),
                span,
            },
            1,
        ));
    }
    if next_is_bool(input) && input.peek(syn::LitBool) {
        let b: syn::LitBool = input.parse()?;
        return Ok((
            Expr {
                kind: ExprKind::Bool(b.value),
                span: b.span,
            },
            1,
        ));
    }
    if input.peek(syn::token::Paren) {
        let content;
        parenthesized!(content in input);
        let inner = parse_binary(&content, 0, nest + 1)?;
        if !content.is_empty() {
            return Err(content.error("expected `)`"));
        }
        return Ok(inner);
    }
    if input.peek(Ident) {
        let name = parse_name(input)?;
        if input.peek(syn::token::Paren) {
            let content;
            parenthesized!(content in input);
            let mut args = Vec::new();
            let mut depth = 0;
            while !content.is_empty() {
                let (arg, arg_depth) = parse_binary(&content, 0, nest + 1)?;
                args.push(arg);
                depth = depth.max(arg_depth);
                if content.is_empty() {
                    break;
                }
                content.parse::<Token![,]>()?;
            }
            return Ok((
                Expr {
                    kind: ExprKind::Call(name.text, args),
                    span: name.span,
                },
                depth + 1,
            ));
        }
        return Ok((
            Expr {
                kind: ExprKind::Var(name.text),
                span: name.span,
            },
            1,
        ));
    }
    Err(input.error("expected an expression: a number, a name, a call or `(`"))
}

/// Finds the first unbalanced bracket of `text` (skipping comments and
/// strings), for a better message than the tokenizer's: `(line, column, message)`,
/// both 1-based.
pub fn unbalanced_delimiter(text: &str) -> Option<(usize, usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut open: Vec<(char, usize, usize)> = Vec::new();
    let (mut line, mut column) = (1, 1);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let skip_to = if c == '/' && next == Some('/') {
            chars[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(chars.len(), |k| i + k)
        } else if c == '/' && next == Some('*') {
            (i + 2..chars.len().saturating_sub(1))
                .find(|&k| chars[k] == '*' && chars[k + 1] == '/')
                .map_or(chars.len(), |k| k + 2)
        } else if c == '"' {
            let mut k = i + 1;
            while k < chars.len() && chars[k] != '"' {
                k += if chars[k] == '\\' { 2 } else { 1 };
            }
            (k + 1).min(chars.len())
        } else {
            match c {
                '(' | '[' | '{' => open.push((c, line, column)),
                ')' | ']' | '}' => {
                    let want = match c {
                        ')' => '(',
                        ']' => '[',
                        _ => '{',
                    };
                    match open.pop() {
                        Some((o, _, _)) if o == want => {}
                        Some((o, l, col)) => {
                            return Some((
                                l,
                                col,
                                format!("this `{o}` is closed by `{c}` at {line}:{column}"),
                            ))
                        }
                        None => return Some((line, column, format!("`{c}` closes nothing"))),
                    }
                }
                _ => {}
            }
            i + 1
        };
        for &x in &chars[i..skip_to] {
            if x == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        i = skip_to.max(i + 1);
    }
    open.pop()
        .map(|(o, l, col)| (l, col, format!("this `{o}` is never closed")))
}
