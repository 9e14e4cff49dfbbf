//! Declaring what transforms bring: before checking, the transforms an
//! update block calls (directly, through `chain`, or inside other
//! transforms) add their hyperparameters and states to the rule's, so the
//! checker sees one rule. A hyperparameter the rule declares itself keeps
//! the rule's default; two transforms may share a hyperparameter only with
//! the same default, and never a state; a transform with state is called
//! once. The calls themselves are inlined by the checker.

use crate::ast::{Expr, ExprKind, FunctionDecl, HyperItem, Literal, Name, RuleDecl, Stmt};
use crate::builtins;
use proc_macro2::Span;

/// The most function and transform calls one rule may inline (counting
/// calls inside inlined bodies): beyond it a rule is refused, so no input
/// can make checking take exponential time.
pub const MAX_INLINED: usize = 100_000;

/// The index of the function `name` visible from a body that sees the
/// first `visible` functions (the latest of that name).
pub fn resolve(functions: &[FunctionDecl], visible: usize, name: &str) -> Option<usize> {
    functions[..visible.min(functions.len())]
        .iter()
        .rposition(|f| f.name.text == name)
}

/// Adds the hyperparameters and states of every transform `decl`'s update
/// block calls to `decl`; an error for a clash.
pub fn declare_transforms(decl: &mut RuleDecl) -> syn::Result<()> {
    let mut calls = Vec::new();
    if let Some(block) = &decl.update {
        let visible = decl.functions.len();
        for stmt in &block.stmts {
            walk_stmt(&decl.functions, visible, stmt, &mut calls);
        }
    }
    if calls.len() > MAX_INLINED {
        return Err(syn::Error::new(
            decl.name.span,
            format!("the update block calls transforms more than {MAX_INLINED} times (counting calls inside them)"),
        ));
    }
    let mut seen: Vec<usize> = Vec::new();
    let declared_hypers = decl.hypers.len();
    for (index, span) in calls {
        let f = decl.functions[index].clone();
        if seen.contains(&index) {
            if let Some(state) = f.states.first() {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "transform `{}` is called twice, but its state (`{}`) exists once: declare a second transform for a second copy",
                        f.name.text, state.name.text
                    ),
                ));
            }
            continue;
        }
        seen.push(index);
        for h in &f.hypers {
            match decl.hypers.iter().position(|d| d.name.text == h.name.text) {
                Some(at) if at < declared_hypers => {}
                Some(at) if !same_default(&decl.hypers[at], h) => {
                    return Err(syn::Error::new(
                        span,
                        format!(
                            "transform `{}` gives hyperparameter `{}` another default than an earlier transform: declare `{}` in the rule to choose one",
                            f.name.text, h.name.text, h.name.text
                        ),
                    ));
                }
                Some(_) => {}
                None => decl.hypers.push(HyperItem {
                    name: at_call(&h.name, span),
                    default: h.default.clone(),
                }),
            }
        }
        for s in &f.states {
            if decl.states.iter().any(|d| d.name.text == s.name.text) {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "transform `{}` declares state `{}`, which the rule or an earlier transform already declares",
                        f.name.text, s.name.text
                    ),
                ));
            }
            let mut state = s.clone();
            state.name = at_call(&s.name, span);
            decl.states.push(state);
        }
    }
    Ok(())
}

fn at_call(name: &Name, span: Span) -> Name {
    Name {
        text: name.text.clone(),
        span,
    }
}

fn same_default(a: &HyperItem, b: &HyperItem) -> bool {
    match (&a.default, &b.default) {
        (Ok(Literal::Num(x)), Ok(Literal::Num(y))) => x.to_bits() == y.to_bits(),
        (Ok(Literal::Bool(x)), Ok(Literal::Bool(y))) => x == y,
        _ => false,
    }
}

fn walk_stmt(
    functions: &[FunctionDecl],
    visible: usize,
    stmt: &Stmt,
    out: &mut Vec<(usize, Span)>,
) {
    for e in stmt.exprs() {
        walk(functions, visible, e, out);
    }
}

/// Records the transform calls of `e` (and of the transforms they call), in
/// evaluation order. Depth is bounded: the parser limits nesting, and a
/// transform sees only the functions declared before it.
fn walk(functions: &[FunctionDecl], visible: usize, e: &Expr, out: &mut Vec<(usize, Span)>) {
    match &e.kind {
        ExprKind::Num(_) | ExprKind::Bool(_) | ExprKind::Var(_) => {}
        ExprKind::Unary(_, a) => walk(functions, visible, a, out),
        ExprKind::Binary(_, a, b) => {
            walk(functions, visible, a, out);
            walk(functions, visible, b, out);
        }
        ExprKind::Call(name, args) => {
            for a in args {
                walk(functions, visible, a, out);
            }
            let callee = |name: &str, span: Span, out: &mut Vec<(usize, Span)>| {
                if builtins::lookup(name).is_some() {
                    return;
                }
                if let Some(i) = resolve(functions, visible, name) {
                    if functions[i].transform && out.len() <= MAX_INLINED {
                        out.push((i, span));
                        // A transform sees the functions declared before it.
                        for stmt in &functions[i].stmts {
                            walk_stmt(functions, i, stmt, out);
                        }
                        walk(functions, i, &functions[i].result, out);
                    }
                }
            };
            if name == "chain" {
                for a in args.iter().skip(1) {
                    if let ExprKind::Var(step) = &a.kind {
                        callee(step, a.span, out);
                    }
                }
            } else {
                callee(name, e.span, out);
            }
        }
    }
}

/// The names `decl` calls (or chains) that are neither built-ins nor its
/// own functions: those the prelude may define.
pub fn unknown_calls(decl: &RuleDecl) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let known = |name: &str| {
        builtins::lookup(name).is_some()
            || name == "chain"
            || decl.functions.iter().any(|f| f.name.text == name)
    };
    let mut exprs: Vec<&Expr> = Vec::new();
    if let Some(block) = &decl.update {
        exprs.extend(block.stmts.iter().flat_map(Stmt::exprs));
    }
    exprs.extend(decl.view.iter());
    exprs.extend(decl.states.iter().map(|s| &s.init));
    for f in &decl.functions {
        exprs.extend(f.stmts.iter().flat_map(Stmt::exprs));
        exprs.push(&f.result);
        exprs.extend(f.states.iter().map(|s| &s.init));
    }
    // An explicit stack: expressions nest at most as deep as the parser allows.
    while let Some(e) = exprs.pop() {
        match &e.kind {
            ExprKind::Num(_) | ExprKind::Bool(_) | ExprKind::Var(_) => {}
            ExprKind::Unary(_, a) => exprs.push(a),
            ExprKind::Binary(_, a, b) => {
                exprs.push(a);
                exprs.push(b);
            }
            ExprKind::Call(name, args) => {
                if !known(name) && !out.contains(name) {
                    out.push(name.clone());
                }
                if name == "chain" {
                    for a in args.iter().skip(1) {
                        if let ExprKind::Var(step) = &a.kind {
                            if !known(step) && !out.contains(step) {
                                out.push(step.clone());
                            }
                        }
                    }
                }
                exprs.extend(args.iter());
            }
        }
    }
    out
}
