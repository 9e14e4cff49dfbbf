//! Checking: surface syntax to the typed IR, with every mistake reported at its token.
//!
//! This pass resolves names, infers each value's type and rate, lowers
//! statements to SSA (each assignment makes a new version of `p` or of a
//! state), hash-conses identical nodes, and drops values nothing uses.
//! It collects all errors instead of stopping at the first; a value that
//! failed to check is "poisoned" so that its uses report nothing more.

use crate::ast::{self, Expr, ExprKind, RuleDecl, Stmt};
use crate::builtins::{self, Builtin};
use crate::diag::Diagnostics;
use lensopt_ir::builder::GraphBuilder;
use lensopt_ir::hyper::HyperValue;
use lensopt_ir::rule::*;
use proc_macro2::Span;
use std::collections::HashMap;

/// Checks a parsed rule and lowers it to IR.
pub fn check(decl: &RuleDecl) -> Result<Rule, Diagnostics> {
    let mut cx = Checker {
        decl,
        graph: GraphBuilder::default(),
        names: HashMap::new(),
        diags: Diagnostics::default(),
        hypers: Vec::new(),
        inputs: Vec::new(),
        states: Vec::new(),
        let_positions: HashMap::new(),
        statement: 0,
        current_p: None,
        current_state: Vec::new(),
        visible: decl.functions.len(),
        inlined: 0,
        in_pure_function: false,
        blocks: 0,
        unrolled: 0,
        repeat_counts: Vec::new(),
        low_axis: None,
    };
    cx.declare();
    let view = cx.check_view();
    let (param_out, state_out) = cx.check_update();
    if !cx.diags.is_empty() {
        return Err(cx.diags.sorted());
    }
    let rule = Rule {
        name: decl.name.text.clone(),
        doc: decl.doc.iter().map(|l| l.trim().to_string()).collect(),
        hypers: cx.hypers,
        inputs: cx.inputs,
        states: cx.states,
        nodes: cx.graph.nodes,
        view,
        param_out,
        state_out,
        repeat_counts: cx.repeat_counts,
        low_axis: cx.low_axis,
    };
    Ok(rule.compact())
}

/// What a name in scope refers to.
#[derive(Clone, Copy, Debug)]
enum Binding {
    Param,
    Grad,
    Step,
    Hyper(u16),
    Input(u16),
    State(u16),
    Let(Option<ValueId>),
}

/// Where an expression is being checked; each context allows different names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    /// A state's initial value: constants, hyperparameters, `p`, earlier states.
    Init,
    /// The view: no gradient, no inputs, no reductions.
    View,
    /// The update block: everything.
    Update,
}

struct Checker<'a> {
    decl: &'a RuleDecl,
    graph: GraphBuilder,
    /// Names in scope, with their current SSA values where they have one.
    names: HashMap<String, (Binding, Span)>,
    diags: Diagnostics,
    hypers: Vec<HyperDecl>,
    inputs: Vec<InputDecl>,
    states: Vec<StateDecl>,
    /// The last statement that binds each `let` name (for "used before its definition").
    let_positions: HashMap<String, usize>,
    /// Index of the statement being checked.
    statement: usize,
    /// The current SSA version of `p` in the update block (`None`: its value at the step's start).
    current_p: Option<ValueId>,
    /// The current SSA version of each state in the update block.
    current_state: Vec<Option<ValueId>>,
    /// How many of the declared functions the body being checked may call
    /// (a function sees only those declared before it: no recursion).
    visible: usize,
    /// Calls inlined so far ([`crate::expand::MAX_INLINED`] at most).
    inlined: usize,
    /// True inside a `fn`'s body, which may not call a transform.
    in_pure_function: bool,
    /// How many `repeat` / `every` blocks enclose the statement being checked.
    blocks: usize,
    /// Statements checked inside `repeat` bodies so far, every iteration counted.
    unrolled: usize,
    /// Hyperparameters counting `repeat` blocks, with their bound.
    repeat_counts: Vec<(u16, u32)>,
    /// The hyperparameter of `axis low = k;`.
    low_axis: Option<u16>,
}

/// The most statements `repeat` blocks may unroll to in one rule (nested
/// blocks multiply), so that checking stays bounded whatever the counts.
pub const MAX_UNROLLED: usize = 100_000;

/// The most iterations a `repeat` may unroll.
pub const MAX_REPEAT: usize = 1024;
/// The most iterations a `repeat` counted by a hyperparameter runs.
pub const MAX_REPEAT_HYPER: usize = 32;

/// The values a block may change, before it runs.
struct Before {
    names: HashMap<String, (Binding, Span)>,
    p: Option<ValueId>,
    states: Vec<Option<ValueId>>,
}

const RESERVED: &[&str] = &["p", "g", "t"];

/// Declarations are numbered with 16 bits in the IR.
const MAX_DECLARED: usize = u16::MAX as usize;

impl Checker<'_> {
    fn add(&mut self, op: Op, ty: Ty, rate: Rate) -> ValueId {
        self.graph.add(op, ty, rate)
    }

    fn node(&self, id: ValueId) -> Node {
        self.graph.nodes[id.index()]
    }

    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.diags.push(span, message);
    }

    /// Brings a declared name into scope, reporting clashes.
    fn bind_new(&mut self, name: &ast::Name, binding: Binding) -> bool {
        let declared = self
            .hypers
            .len()
            .max(self.inputs.len())
            .max(self.states.len());
        if !matches!(binding, Binding::Let(_)) && declared >= MAX_DECLARED {
            self.error(
                name.span,
                format!("a rule may declare at most {MAX_DECLARED} hyperparameters, inputs or states of each kind"),
            );
            return false;
        }
        if RESERVED.contains(&name.text.as_str()) {
            self.error(
                name.span,
                format!(
                    "`{}` is reserved: `p` is the parameter, `g` the gradient, `t` the step counter",
                    name.text
                ),
            );
            return false;
        }
        if builtins::lookup(&name.text).is_some() {
            self.error(
                name.span,
                format!(
                    "`{}` is the name of a function; choose another name",
                    name.text
                ),
            );
            return false;
        }
        if let Some((_, _)) = self.names.get(&name.text) {
            self.error(name.span, format!("`{}` is already defined", name.text));
            return false;
        }
        self.names.insert(name.text.clone(), (binding, name.span));
        true
    }

    /// Declarations: hyperparameters, inputs, states (with their initial values).
    fn declare(&mut self) {
        let decl = self.decl;
        self.names.insert("p".into(), (Binding::Param, decl.span));
        self.names.insert("g".into(), (Binding::Grad, decl.span));
        self.names.insert("t".into(), (Binding::Step, decl.span));
        for h in &decl.hypers {
            let default = match &h.default {
                Ok(ast::Literal::Num(x)) => HyperValue::Num(*x),
                Ok(ast::Literal::Bool(b)) => HyperValue::Bool(*b),
                Err(span) => {
                    self.error(
                        *span,
                        format!(
                            "the default of hyperparameter `{}` must be a number or `true`/`false`",
                            h.name.text
                        ),
                    );
                    HyperValue::Num(0.0)
                }
            };
            let index = self.hypers.len() as u16;
            if self.bind_new(&h.name, Binding::Hyper(index)) {
                self.hypers.push(HyperDecl {
                    name: h.name.text.clone(),
                    default,
                });
            }
        }
        for i in &decl.inputs {
            let index = self.inputs.len() as u16;
            if self.bind_new(&i.name, Binding::Input(index)) {
                self.inputs.push(InputDecl {
                    name: i.name.text.clone(),
                    optional: i.optional,
                });
            }
        }
        if let Some(k) = &decl.low_axis {
            match self.names.get(&k.text) {
                Some((Binding::Hyper(i), _))
                    if matches!(self.hypers[*i as usize].default, HyperValue::Num(_)) =>
                {
                    self.low_axis = Some(*i);
                }
                _ => self.error(
                    k.span,
                    format!(
                        "the low axis is as long as a numeric hyperparameter, and `{}` is not one",
                        k.text
                    ),
                ),
            }
        }
        for s in &decl.states {
            let init = self.expr(&s.init, Context::Init);
            let init_rate = init.map(|v| self.node(v).rate);
            let shaped = s.shape.as_ref().and_then(|(axes, span)| {
                let dim = |a: &str| lensopt_ir::Dim::from_name(a).unwrap_or(Dim::One);
                let (r, c) = (dim(&axes[0]), dim(&axes[1]));
                if (r == Dim::Low || c == Dim::Low) && decl.low_axis.is_none() {
                    self.error(*span, "the `low` axis needs a declaration: `axis low = k;` with `k` a hyperparameter");
                    return None;
                }
                match Rate::of_shape(r, c) {
                    Rate::Element => Some(StateKind::Element),
                    Rate::Array(r, c) => Some(StateKind::Array(r, c)),
                    _ => Some(StateKind::Scalar),
                }
            });
            let kind = shaped.unwrap_or(match (s.scalar, s.per, init_rate) {
                (true, _, _) => StateKind::Scalar,
                (_, Some(Axis::Row), _) => StateKind::Array(Dim::Rows, Dim::One),
                (_, Some(Axis::Col), _) => StateKind::Array(Dim::One, Dim::Cols),
                // A matrix initial value (`eye_rows()`) makes a matrix state.
                (_, None, Some(Rate::Array(r, c))) => StateKind::Array(r, c),
                _ => StateKind::Element,
            });
            let init = init.and_then(|v| {
                let node = self.node(v);
                if node.ty != Ty::Float {
                    self.error(
                        s.init.span,
                        format!(
                            "state `{}` holds numbers, but its initial value is a boolean",
                            s.name.text
                        ),
                    );
                    None
                } else if !lensopt_ir::builder::fits_state(node.rate, kind) {
                    self.error(
                        s.init.span,
                        format!(
                            "{}state `{}` is {}, but its initial value is {}",
                            if kind == StateKind::Scalar {
                                "scalar "
                            } else {
                                ""
                            },
                            s.name.text,
                            kind_phrase(kind),
                            rate_phrase(node.rate)
                        ),
                    );
                    None
                } else {
                    Some(v)
                }
            });
            let index = self.states.len() as u16;
            if self.bind_new(&s.name, Binding::State(index)) {
                // A placeholder keeps indices aligned when the initial value failed.
                let init = init.unwrap_or_else(|| self.add(Op::Const(0.0), Ty::Float, Rate::Const));
                self.states.push(StateDecl {
                    name: s.name.text.clone(),
                    kind,
                    init,
                });
            }
        }
    }

    fn check_view(&mut self) -> Option<ValueId> {
        let expr = self.decl.view.as_ref()?;
        let v = self.expr(expr, Context::View)?;
        if self.node(v).ty != Ty::Float {
            self.error(expr.span, "the view must be a number, not a boolean");
            return None;
        }
        Some(v)
    }

    /// The update block, lowered to SSA. Returns the final `p` and states.
    fn check_update(&mut self) -> (ValueId, Vec<ValueId>) {
        let decl = self.decl;
        self.current_p = None;
        self.current_state = vec![None; self.states.len()];
        let mut p_assigned = false;
        match &decl.update {
            None => self.error(
                decl.span,
                format!(
                    "optimizer `{}` has no `update {{ ... }}` block",
                    decl.name.text
                ),
            ),
            Some(block) => {
                // The last statement index at which each name is bound by `let`.
                let mut last_let: HashMap<String, usize> = HashMap::new();
                for (index, stmt) in block.stmts.iter().enumerate() {
                    if let Stmt::Let(name, _) = stmt {
                        last_let.insert(name.text.clone(), index);
                    }
                }
                self.let_positions = last_let;
                for (index, stmt) in block.stmts.iter().enumerate() {
                    self.statement = index;
                    match stmt {
                        Stmt::Let(name, value) => {
                            let v = self.expr(value, Context::Update);
                            // The name is defined from the next statement on.
                            self.statement = index + 1;
                            self.bind_new(name, Binding::Let(v));
                        }
                        Stmt::Assign(name, value, eq_span) => {
                            p_assigned |= self.assign(name, value, *eq_span);
                        }
                        Stmt::Repeat(..) | Stmt::Every(..) => {
                            p_assigned |= self.block_stmt(stmt, Context::Update);
                        }
                    }
                }
                if !p_assigned {
                    self.error(
                        block.span,
                        "`p` is never updated: the update block must assign the parameter `p`",
                    );
                }
            }
        }
        self.let_positions.clear();
        let param_out = self
            .current_p
            .unwrap_or_else(|| self.add(Op::Param, Ty::Float, Rate::Element));
        let state_out = self
            .current_state
            .clone()
            .iter()
            .enumerate()
            .map(|(i, v)| v.unwrap_or_else(|| self.state_read(i as u16)))
            .collect();
        (param_out, state_out)
    }

    /// `name = value;` in an update block or a transform: a new SSA version
    /// of `p` or of a state. True when `p` was assigned.
    fn assign(&mut self, name: &ast::Name, value: &Expr, eq_span: Span) -> bool {
        let eq_span = &eq_span;
        let mut assigned_p = false;
        let v = self.expr(value, Context::Update);
        match self.names.get(&name.text).map(|b| b.0) {
            Some(Binding::Param) => {
                assigned_p = true;
                if let Some(v) = v {
                    if self.expect_float(v, value.span, "`p`") {
                        self.current_p = Some(v);
                    }
                }
            }
            Some(Binding::State(i)) => {
                if let Some(v) = v {
                    let state = &self.states[i as usize];
                    let what = format!("state `{}`", state.name);
                    let kind = state.kind;
                    if self.in_pure_function {
                        self.error(
                            name.span,
                            format!("a function cannot assign `{}`: it only computes a value (a `transform` may update its states)", name.text),
                        );
                    } else if self.expect_float(v, value.span, &what) {
                        let rate = self.node(v).rate;
                        if !lensopt_ir::builder::fits_state(rate, kind) {
                            let hint = if kind == StateKind::Scalar {
                                " (reduce it first, e.g. with `mean`)"
                            } else {
                                ""
                            };
                            self.error(*eq_span, format!(
                                "{}state `{}` is {}, but this value is {}{hint}",
                                if kind == StateKind::Scalar { "scalar " } else { "" },
                                name.text,
                                kind_phrase(kind),
                                rate_phrase(rate),
                            ));
                        } else {
                            self.current_state[i as usize] = Some(v);
                        }
                    }
                }
            }
            Some(Binding::Hyper(_)) => self.error(
                name.span,
                format!("cannot assign to hyperparameter `{}`: hyperparameters are fixed during a step (change them between steps)", name.text),
            ),
            Some(Binding::Grad) | Some(Binding::Input(_)) => self.error(
                name.span,
                format!("cannot assign to input `{}`: inputs are read-only; bind a new name with `let`", name.text),
            ),
            Some(Binding::Step) => self.error(
                name.span,
                "cannot assign to the step counter `t`",
            ),
            Some(Binding::Let(_)) if self.blocks > 0 => {
                if let Some(v) = v {
                    let span = self.names[&name.text].1;
                    self.names
                        .insert(name.text.clone(), (Binding::Let(Some(v)), span));
                }
            }
            Some(Binding::Let(_)) => self.error(
                name.span,
                format!("cannot assign to `{}`, a `let` binding: bind a new name instead (inside `repeat` and `every` blocks a `let` may be assigned)", name.text),
            ),
            None => {
                let later = self.defined_later(&name.text);
                self.unknown_name(&name.text, name.span, later);
            }
        }
        assigned_p
    }

    /// `chain(x, f1, f2, ...)`: `fn(...f2(f1(x)))` for functions and
    /// transforms of one argument, in order.
    fn chain(&mut self, args: &[Expr], span: Span, cx: Context) -> Option<ValueId> {
        if args.len() < 2 {
            self.error(
                span,
                "`chain(x, f, ...)` takes a value, then one or more functions or transforms to apply in turn",
            );
            return None;
        }
        let mut v = self.expr(&args[0], cx)?;
        for step in &args[1..] {
            let found = match &step.kind {
                ExprKind::Var(name) => {
                    crate::expand::resolve(&self.decl.functions, self.visible, name)
                        .map(|i| (i, name))
                }
                _ => None,
            };
            let Some((index, name)) = found else {
                self.error(
                    step.span,
                    "each step of `chain` is the name of a function or transform of one argument",
                );
                return None;
            };
            if self.decl.functions[index].params.len() != 1 {
                self.error(
                    step.span,
                    format!(
                        "`{name}` takes {} arguments; a step of `chain` takes one",
                        self.decl.functions[index].params.len()
                    ),
                );
                return None;
            }
            v = self.inline(index, vec![v], step.span, cx)?;
        }
        Some(v)
    }

    /// A call of declared function `index` with argument values `vals`:
    /// its body checked in its own scope (its parameters, `t`, and for a
    /// transform `p` as it stands, `g`, its hyperparameters and states), its
    /// value returned. Errors inside the body are reported at the call.
    fn inline(
        &mut self,
        index: usize,
        vals: Vec<ValueId>,
        span: Span,
        cx: Context,
    ) -> Option<ValueId> {
        let decl = self.decl;
        let f = &decl.functions[index];
        let kind = if f.transform { "transform" } else { "function" };
        if vals.len() != f.params.len() {
            self.error(
                span,
                format!(
                    "{kind} `{}` takes {} argument(s), but {} were given",
                    f.name.text,
                    f.params.len(),
                    vals.len()
                ),
            );
            return None;
        }
        if f.transform && (cx != Context::Update || self.in_pure_function) {
            let place = if self.in_pure_function {
                "in a `fn` (functions are pure; call it from the update block or a transform)"
                    .to_string()
            } else {
                context_phrase(cx).to_string()
            };
            self.error(
                span,
                format!(
                    "transform `{}` updates state and cannot be called {place}",
                    f.name.text
                ),
            );
            return None;
        }
        self.inlined += 1;
        if self.inlined > crate::expand::MAX_INLINED {
            if self.inlined == crate::expand::MAX_INLINED + 1 {
                self.error(
                    span,
                    format!(
                        "the rule inlines more than {} calls of functions and transforms",
                        crate::expand::MAX_INLINED
                    ),
                );
            }
            return None;
        }
        let mut scope: HashMap<String, (Binding, Span)> = HashMap::new();
        scope.insert("t".into(), (Binding::Step, span));
        if f.transform {
            let p = self.var("p", span, cx)?;
            scope.insert("p".into(), (Binding::Let(Some(p)), span));
            scope.insert("g".into(), (Binding::Grad, span));
            for name in f
                .hypers
                .iter()
                .map(|h| &h.name)
                .chain(f.states.iter().map(|s| &s.name))
            {
                if let Some(binding) = self.names.get(&name.text) {
                    scope.insert(name.text.clone(), *binding);
                }
            }
        }
        for (param, v) in f.params.iter().zip(vals) {
            if scope.contains_key(&param.text) && !f.transform
                || RESERVED.contains(&param.text.as_str())
            {
                self.error(
                    span,
                    format!(
                        "in {kind} `{}`: parameter `{}` repeats a name it already sees",
                        f.name.text, param.text
                    ),
                );
                return None;
            }
            scope.insert(param.text.clone(), (Binding::Let(Some(v)), param.span));
        }
        let before = self.diags.items.len();
        let saved_names = std::mem::replace(&mut self.names, scope);
        let saved_lets = std::mem::take(&mut self.let_positions);
        let saved_statement = self.statement;
        let saved_visible = std::mem::replace(&mut self.visible, index);
        let pure = self.in_pure_function || !f.transform;
        let saved_pure = std::mem::replace(&mut self.in_pure_function, pure);
        for stmt in &f.stmts {
            match stmt {
                Stmt::Let(name, value) => {
                    let v = self.expr(value, cx);
                    self.bind_new(name, Binding::Let(v));
                }
                Stmt::Assign(name, _, _) if name.text == "p" => self.error(
                    name.span,
                    "a transform cannot assign `p`: the value it ends with is the update",
                ),
                Stmt::Assign(name, value, eq_span) => {
                    self.assign(name, value, *eq_span);
                }
                Stmt::Repeat(..) | Stmt::Every(..) => {
                    if self.block_stmt(stmt, cx) {
                        self.error(
                            span,
                            "a transform cannot assign `p`: the value it ends with is the update",
                        );
                    }
                }
            }
        }
        let out = self.expr(&f.result, cx);
        self.names = saved_names;
        self.let_positions = saved_lets;
        self.statement = saved_statement;
        self.visible = saved_visible;
        self.in_pure_function = saved_pure;
        // Errors inside the body point at the call, saying where they arose.
        for d in &mut self.diags.items[before..] {
            if !d.message.starts_with("in ") {
                d.message = format!("in {kind} `{}`: {}", f.name.text, d.message);
            }
            d.span = span;
            d.position = None;
        }
        out
    }

    /// A statement inside a `repeat` or `every` body; true when it assigns `p`.
    fn inner_stmt(&mut self, stmt: &Stmt, cx: Context) -> bool {
        match stmt {
            Stmt::Let(name, value) => {
                let v = self.expr(value, cx);
                self.bind_new(name, Binding::Let(v));
                false
            }
            Stmt::Assign(name, value, eq_span) => {
                if name.text == "p" && (self.in_pure_function || cx != Context::Update) {
                    self.error(name.span, "only the update block assigns `p`");
                    return false;
                }
                self.assign(name, value, *eq_span)
            }
            Stmt::Repeat(..) | Stmt::Every(..) => self.block_stmt(stmt, cx),
        }
    }

    fn before(&self) -> Before {
        Before {
            names: self.names.clone(),
            p: self.current_p,
            states: self.current_state.clone(),
        }
    }

    /// Ends a block: names it introduced go out of scope, and every value
    /// it changed becomes `select(cond, new, old)` (`cond = None`: the new value).
    fn merge(&mut self, before: Before, cond: Option<ValueId>) {
        let mut names = std::mem::take(&mut self.names);
        names.retain(|k, _| before.names.contains_key(k));
        for (k, (binding, _)) in names.iter_mut() {
            if let (Binding::Let(Some(new)), Some((Binding::Let(Some(old)), _)), Some(c)) =
                (*binding, before.names.get(k), cond)
            {
                if new != *old {
                    *binding = Binding::Let(Some(self.choose(c, new, *old)));
                }
            }
        }
        self.names = names;
        if let Some(c) = cond {
            if self.current_p != before.p {
                if let Some(new) = self.current_p {
                    let old = before
                        .p
                        .unwrap_or_else(|| self.add(Op::Param, Ty::Float, Rate::Element));
                    self.current_p = Some(self.choose(c, new, old));
                }
            }
            for i in 0..self.current_state.len() {
                if self.current_state[i] != before.states[i] {
                    if let Some(new) = self.current_state[i] {
                        let old = before.states[i].unwrap_or_else(|| self.state_read(i as u16));
                        self.current_state[i] = Some(self.choose(c, new, old));
                    }
                }
            }
        }
    }

    /// `select(c, new, old)` (the shapes fit: both are values of one name).
    fn choose(&mut self, c: ValueId, new: ValueId, old: ValueId) -> ValueId {
        let rate = self.rate_of(&[c, new, old]);
        let ty = self.node(new).ty;
        self.add(Op::Select(c, new, old), ty, rate)
    }

    /// `repeat n { ... }` (unrolled; with a hyperparameter `n`, iteration
    /// `k` keeps its results only where `k < n`) or `every k { ... }` (the
    /// body's results kept only when `t` is a multiple of `k`). True when
    /// the block assigns `p`.
    fn block_stmt(&mut self, stmt: &Stmt, cx: Context) -> bool {
        let (count, body, span, repeat) = match stmt {
            Stmt::Repeat(c, b, s) => (c, b, *s, true),
            Stmt::Every(c, b, s) => (c, b, *s, false),
            _ => return false,
        };
        self.blocks += 1;
        let mut assigned = false;
        if repeat {
            let (times, bound) = match &count.kind {
                ExprKind::Num(x) if x.fract() == 0.0 && *x >= 0.0 && *x <= MAX_REPEAT as f64 => {
                    (*x as usize, None)
                }
                ExprKind::Var(name)
                    if matches!(self.names.get(name), Some((Binding::Hyper(_), _))) =>
                {
                    if let Some((Binding::Hyper(i), _)) = self.names.get(name) {
                        let entry = (*i, MAX_REPEAT_HYPER as u32);
                        if !self.repeat_counts.contains(&entry) {
                            self.repeat_counts.push(entry);
                        }
                    }
                    let h = self.var(name, count.span, cx);
                    (MAX_REPEAT_HYPER, h)
                }
                _ => {
                    self.error(
                        count.span,
                        format!("`repeat` takes a whole number from 0 to {MAX_REPEAT}, or a hyperparameter (which may count up to {MAX_REPEAT_HYPER})"),
                    );
                    self.blocks -= 1;
                    return false;
                }
            };
            if let Some(h) = bound {
                if self.node(h).ty != Ty::Float {
                    self.error(count.span, "`repeat` counts with a number, not a boolean");
                    self.blocks -= 1;
                    return false;
                }
            }
            for k in 0..times {
                self.unrolled += body.len().max(1);
                if self.unrolled > MAX_UNROLLED {
                    self.error(
                        span,
                        format!("the rule's `repeat` blocks unroll to more than {MAX_UNROLLED} statements"),
                    );
                    break;
                }
                let errors = self.diags.items.len();
                let before = self.before();
                for s in body {
                    assigned |= self.inner_stmt(s, cx);
                }
                let cond = bound.map(|h| {
                    let k = self.constant(k as f64);
                    self.binary(BinOp::Lt, k, h, Ty::Bool)
                });
                self.merge(before, cond);
                if self.diags.items.len() > errors {
                    break; // one report per mistake, not one per iteration
                }
            }
        } else {
            let period = self.expr(count, cx);
            let Some(period) = period else {
                self.blocks -= 1;
                return false;
            };
            if self.node(period).ty != Ty::Float || self.node(period).rate > Rate::Step {
                self.error(
                    count.span,
                    "`every` takes a number of steps known before the step (a constant or a hyperparameter)",
                );
                self.blocks -= 1;
                return false;
            }
            let before = self.before();
            for s in body {
                assigned |= self.inner_stmt(s, cx);
            }
            // t is a multiple of the period: t - k * floor(t / k) == 0.
            let t = self.add(Op::Step, Ty::Float, Rate::Step);
            let ratio = self.binary(BinOp::Div, t, period, Ty::Float);
            let whole = self.unary(UnOp::Floor, ratio);
            let back = self.binary(BinOp::Mul, period, whole, Ty::Float);
            let rest = self.binary(BinOp::Sub, t, back, Ty::Float);
            let zero = self.constant(0.0);
            let due = self.binary(BinOp::Eq, rest, zero, Ty::Bool);
            self.merge(before, Some(due));
        }
        self.blocks -= 1;
        assigned
    }

    fn state_read(&mut self, i: u16) -> ValueId {
        let rate = self.states[i as usize].kind.rate();
        self.add(Op::State(i), Ty::Float, rate)
    }

    /// Reports at `span` when the values `vals` cannot be combined element-wise.
    fn fit(&mut self, vals: &[ValueId], span: Span) -> Option<()> {
        let rates: Vec<Rate> = vals.iter().map(|v| self.node(*v).rate).collect();
        let probe = Op::Select(vals[0], vals[0], vals[0]);
        match lensopt_ir::builder::result_rate(&probe, &rates) {
            Ok(_) => Some(()),
            Err(e) => {
                self.error(span, e);
                None
            }
        }
    }

    /// Adds an interior matrix operation, reporting a shape mismatch at `span`.
    fn shaped(&mut self, op: Op, span: Span) -> Option<ValueId> {
        let rates: Vec<Rate> = op.args().iter().map(|v| self.node(*v).rate).collect();
        match lensopt_ir::builder::result_rate(&op, &rates) {
            Ok(_) => Some(self.graph.interior(op)),
            Err(e) => {
                self.error(span, e);
                None
            }
        }
    }

    fn expect_float(&mut self, v: ValueId, span: Span, what: &str) -> bool {
        if self.node(v).ty == Ty::Float {
            true
        } else {
            self.error(
                span,
                format!("{what} holds numbers, but this value is a boolean"),
            );
            false
        }
    }

    /// True when a `let` at or after the current statement binds `name`.
    fn defined_later(&self, name: &str) -> bool {
        self.let_positions
            .get(name)
            .is_some_and(|&at| at >= self.statement)
    }

    fn unknown_name(&mut self, name: &str, span: Span, defined_later: bool) {
        if defined_later {
            self.error(span, format!("`{name}` is used before its definition"));
        } else {
            self.error(span, format!("unknown name `{name}`"));
        }
    }

    /// Resolves a name in an expression.
    fn var(&mut self, name: &str, span: Span, cx: Context) -> Option<ValueId> {
        let Some(&(binding, _)) = self.names.get(name) else {
            let later_state =
                cx == Context::Init && self.decl.states.iter().any(|s| s.name.text == name);
            let later = self.defined_later(name) || later_state;
            self.unknown_name(name, span, later);
            return None;
        };
        match binding {
            Binding::Param => Some(match (cx, self.current_p) {
                (Context::Update, Some(v)) => v,
                _ => self.add(Op::Param, Ty::Float, Rate::Element),
            }),
            Binding::Grad => {
                if cx != Context::Update {
                    self.error(span, format!("`g` is not known {}", context_phrase(cx)));
                    return None;
                }
                Some(self.add(Op::Grad, Ty::Float, Rate::Element))
            }
            Binding::Step => {
                if cx == Context::Init {
                    self.error(span, format!("`t` is not known {}", context_phrase(cx)));
                    return None;
                }
                Some(self.add(Op::Step, Ty::Float, Rate::Step))
            }
            Binding::Hyper(i) => {
                let ty = match self.hypers[i as usize].default {
                    HyperValue::Num(_) => Ty::Float,
                    HyperValue::Bool(_) => Ty::Bool,
                };
                Some(self.add(Op::Hyper(i), ty, Rate::Step))
            }
            Binding::Input(i) => {
                if cx != Context::Update {
                    self.error(
                        span,
                        format!("input `{name}` is not known {}", context_phrase(cx)),
                    );
                    return None;
                }
                Some(self.add(Op::Input(i), Ty::Float, Rate::Element))
            }
            Binding::State(i) => match cx {
                Context::Init => Some(self.states[i as usize].init),
                Context::View => Some(self.state_read(i)),
                Context::Update => match self.current_state.get(i as usize).copied().flatten() {
                    Some(v) => Some(v),
                    None => Some(self.state_read(i)),
                },
            },
            Binding::Let(v) => v,
        }
    }

    /// Checks an expression; `None` when it has an error (already reported).
    fn expr(&mut self, e: &Expr, cx: Context) -> Option<ValueId> {
        match &e.kind {
            ExprKind::Num(x) => Some(self.add(Op::Const(*x), Ty::Float, Rate::Const)),
            ExprKind::Bool(b) => Some(self.add(Op::ConstBool(*b), Ty::Bool, Rate::Const)),
            ExprKind::Var(name) => self.var(name, e.span, cx),
            ExprKind::Unary(op, inner) => {
                let a = self.expr(inner, cx)?;
                let info = op.info();
                let what = format!("`{}`", lensopt_ir::ops::Spelling::symbol(info.spelling));
                self.operand(a, info.operand, inner.span, &what)?;
                Some(self.unary(*op, a))
            }
            ExprKind::Binary(op, l, r) => {
                let a = self.expr(l, cx);
                let b = self.expr(r, cx);
                let (a, b) = (a?, b?);
                let info = op.info();
                let what = format!("`{}`", op.symbol());
                let ok_a = self.operand(a, info.operand, l.span, &what);
                let ok_b = self.operand(b, info.operand, r.span, &what);
                ok_a?;
                ok_b?;
                self.fit(&[a, b], e.span)?;
                Some(self.binary(*op, a, b, info.result))
            }
            ExprKind::Call(name, args) => self.call(name, args, e.span, cx),
        }
    }

    /// Checks the type of an operand.
    fn operand(&mut self, v: ValueId, want: Ty, span: Span, what: &str) -> Option<()> {
        let got = self.node(v).ty;
        if got == want {
            return Some(());
        }
        let msg = match want {
            Ty::Float => format!("{what} needs a number, but this is a boolean (use `select(cond, a, b)` to turn a condition into a number)"),
            Ty::Bool => format!("{what} needs a boolean, but this is a number (compare it, e.g. `x > 0`)"),
        };
        self.error(span, msg);
        None
    }

    /// The broadcast rate of `args` (callers check that they fit first).
    fn rate_of(&self, args: &[ValueId]) -> Rate {
        args.iter().fold(Rate::Const, |acc, a| {
            acc.broadcast(self.node(*a).rate).unwrap_or(Rate::Element)
        })
    }

    fn unary(&mut self, op: UnOp, a: ValueId) -> ValueId {
        let ty = self.node(a).ty;
        let rate = self.rate_of(&[a]);
        self.add(Op::Unary(op, a), ty, rate)
    }

    fn binary(&mut self, op: BinOp, a: ValueId, b: ValueId, ty: Ty) -> ValueId {
        let rate = self.rate_of(&[a, b]);
        self.add(Op::Binary(op, a, b), ty, rate)
    }

    fn constant(&mut self, x: f64) -> ValueId {
        self.add(Op::Const(x), Ty::Float, Rate::Const)
    }

    fn fma(&mut self, a: ValueId, b: ValueId, c: ValueId) -> ValueId {
        let rate = self.rate_of(&[a, b, c]);
        self.add(Op::Fma(a, b, c), Ty::Float, rate)
    }

    fn call(&mut self, name: &str, args: &[Expr], span: Span, cx: Context) -> Option<ValueId> {
        if name == "chain" {
            return self.chain(args, span, cx);
        }
        if builtins::lookup(name).is_none() {
            if let Some(index) = crate::expand::resolve(&self.decl.functions, self.visible, name) {
                let vals: Vec<Option<ValueId>> = args.iter().map(|a| self.expr(a, cx)).collect();
                let vals: Vec<ValueId> = vals.into_iter().collect::<Option<_>>()?;
                return self.inline(index, vals, span, cx);
            }
        }
        let Some((builtin, arity)) = builtins::lookup(name) else {
            let hint = if self.names.contains_key(name) {
                format!("`{name}` is a value, not a function")
            } else {
                builtins::unknown_function(name)
            };
            self.error(span, hint);
            // Still check the arguments, for their own errors.
            for a in args {
                self.expr(a, cx);
            }
            return None;
        };
        if args.len() != arity {
            let plural = if arity == 1 { "" } else { "s" };
            self.error(
                span,
                format!(
                    "`{name}` takes {arity} argument{plural}, but {} {} given",
                    args.len(),
                    if args.len() == 1 { "was" } else { "were" }
                ),
            );
            return None;
        }
        if builtin == Builtin::Present {
            return self.present(&args[0]);
        }
        if let (
            Builtin::Reduce(..) | Builtin::Dot(_) | Builtin::ReduceAxis(..),
            Context::Init | Context::View,
        ) = (builtin, cx)
        {
            self.error(
                span,
                format!(
                    "`{name}` is a reduction; reductions are not available {}",
                    context_phrase(cx)
                ),
            );
            return None;
        }
        match builtin {
            Builtin::Numel => return Some(self.add(Op::Numel, Ty::Float, Rate::Tensor)),
            Builtin::Extent(d) => return Some(self.add(Op::Extent(d), Ty::Float, Rate::Tensor)),
            Builtin::Eye(d) => return Some(self.add(Op::Eye(d), Ty::Float, Rate::Array(d, d))),
            Builtin::MachineEps => return Some(self.add(Op::MachineEps, Ty::Float, Rate::Step)),
            Builtin::Rank => return Some(self.add(Op::Rank, Ty::Float, Rate::Tensor)),
            _ => {}
        }
        let mut vals = Vec::with_capacity(args.len());
        for a in args {
            vals.push(self.expr(a, cx));
        }
        let vals: Vec<ValueId> = vals.into_iter().collect::<Option<_>>()?;
        let what = format!("`{name}`");
        match builtin {
            Builtin::Unary(op) => {
                self.operand(vals[0], Ty::Float, args[0].span, &what)?;
                Some(self.unary(op, vals[0]))
            }
            Builtin::Binary(op) => {
                self.floats(&vals, args, &what)?;
                self.fit(&vals, span)?;
                Some(self.binary(op, vals[0], vals[1], Ty::Float))
            }
            Builtin::Clamp => {
                self.floats(&vals, args, &what)?;
                self.fit(&vals, span)?;
                let lo = self.binary(BinOp::Max, vals[0], vals[1], Ty::Float);
                Some(self.binary(BinOp::Min, lo, vals[2], Ty::Float))
            }
            Builtin::KeepF64 => {
                self.floats(&vals, args, &what)?;
                Some(vals[0])
            }
            // lerp(a, b, w) = a + w (b - a) for |w| < 1/2, else b - (b - a)(1 - w),
            // each as one fma, as PyTorch's vectorised `lerp`.
            Builtin::Lerp => {
                self.floats(&vals, args, &what)?;
                self.fit(&vals, span)?;
                let (a, b, w) = (vals[0], vals[1], vals[2]);
                let diff = self.binary(BinOp::Sub, b, a, Ty::Float);
                let abs = self.unary(UnOp::Abs, w);
                let half = self.constant(0.5);
                let small = self.binary(BinOp::Lt, abs, half, Ty::Bool);
                let one = self.constant(1.0);
                let w1 = self.binary(BinOp::Sub, w, one, Ty::Float);
                let near_a = self.fma(w, diff, a);
                let near_b = self.fma(w1, diff, b);
                let rate = self.rate_of(&[small, near_a, near_b]);
                Some(self.add(Op::Select(small, near_a, near_b), Ty::Float, rate))
            }
            Builtin::Fma => {
                self.floats(&vals, args, &what)?;
                self.fit(&vals, span)?;
                let rate = self.rate_of(&vals);
                Some(self.add(Op::Fma(vals[0], vals[1], vals[2]), Ty::Float, rate))
            }
            Builtin::Select => {
                self.operand(vals[0], Ty::Bool, args[0].span, "the condition of `select`")?;
                let (ta, tb) = (self.node(vals[1]).ty, self.node(vals[2]).ty);
                if ta != tb {
                    self.error(
                        span,
                        "the two branches of `select` must have the same type (both numbers or both booleans)",
                    );
                    return None;
                }
                self.fit(&vals, span)?;
                let rate = self.rate_of(&vals);
                Some(self.add(Op::Select(vals[0], vals[1], vals[2]), ta, rate))
            }
            Builtin::Reduce(op, scope) => {
                let want = if op == ReduceOp::Count {
                    Ty::Bool
                } else {
                    Ty::Float
                };
                self.operand(vals[0], want, args[0].span, &what)?;
                self.reduced(vals[0], scope, args[0].span, name)?;
                Some(self.add(Op::Reduce(op, scope, vals[0]), Ty::Float, Rate::Tensor))
            }
            Builtin::Dot(scope) => {
                self.floats(&vals, args, &what)?;
                self.fit(&vals, span)?;
                let prod = self.binary(BinOp::Mul, vals[0], vals[1], Ty::Float);
                self.reduced(prod, scope, span, name)?;
                Some(self.add(
                    Op::Reduce(ReduceOp::Sum, scope, prod),
                    Ty::Float,
                    Rate::Tensor,
                ))
            }
            Builtin::ReduceAxis(op, axis) => {
                self.floats(&vals, args, &what)?;
                self.shaped(Op::ReduceAxis(op, axis, vals[0]), args[0].span)
            }
            Builtin::Transpose => {
                self.floats(&vals, args, &what)?;
                self.shaped(Op::Transpose(vals[0]), span)
            }
            Builtin::Matmul => {
                self.floats(&vals, args, &what)?;
                self.shaped(Op::Matmul(vals[0], vals[1]), span)
            }
            Builtin::SymPow => {
                self.floats(&vals, args, &what)?;
                self.shaped(Op::MatFn(lensopt_ir::MatFn::Pow, vals[0], vals[1]), span)
            }
            Builtin::Linalg(l) => {
                self.floats(&vals, args, &what)?;
                self.shaped(Op::Linalg(l, vals[0]), args[0].span)
            }
            Builtin::Shape(o) => {
                self.floats(&vals, args, &what)?;
                if matches!(o, ShapeOp::LeadCols | ShapeOp::LeadRows) && self.low_axis.is_none() {
                    self.error(
                        span,
                        format!("`{name}` takes the low axis, which needs a declaration: `axis low = k;` with `k` a hyperparameter"),
                    );
                    return None;
                }
                self.shaped(Op::Shape(o, vals[0]), args[0].span)
            }
            Builtin::Present
            | Builtin::Numel
            | Builtin::Extent(_)
            | Builtin::Eye(_)
            | Builtin::Rank
            | Builtin::MachineEps => {
                unreachable!("handled above")
            }
        }
    }

    fn floats(&mut self, vals: &[ValueId], args: &[Expr], what: &str) -> Option<()> {
        let mut ok = Some(());
        for (v, a) in vals.iter().zip(args) {
            if self.operand(*v, Ty::Float, a.span, what).is_none() {
                ok = None;
            }
        }
        ok
    }

    /// A reduction's argument must vary per element (or be a matrix, for
    /// a reduction over one tensor).
    fn reduced(&mut self, v: ValueId, scope: Scope, span: Span, name: &str) -> Option<()> {
        let rate = self.node(v).rate;
        if rate == Rate::Element || scope == Scope::Tensor && rate.is_array() {
            return Some(());
        }
        if rate.is_array() {
            self.error(
                span,
                format!("`{name}` reduces over every tensor's elements, but its argument is a {} value, not one per element", rate.name()),
            );
            return None;
        }
        self.error(
            span,
            format!(
                "`{name}` reduces over the elements of a tensor, but its argument is a {} value, the same for every element",
                self.node(v).rate.name()
            ),
        );
        None
    }

    fn present(&mut self, arg: &Expr) -> Option<ValueId> {
        if let ExprKind::Var(name) = &arg.kind {
            if let Some((Binding::Input(i), _)) = self.names.get(name).copied() {
                if self.inputs[i as usize].optional {
                    return Some(self.add(Op::Present(i), Ty::Bool, Rate::Step));
                }
                self.error(
                    arg.span,
                    format!("input `{name}` is always present: declare it `input {name}?;` to make it optional"),
                );
                return None;
            }
        }
        self.error(
            arg.span,
            "`present` takes the name of an optional input (declared `input h?;`)",
        );
        None
    }
}

/// "one value per element", "one value per row"... for messages.
fn kind_phrase(kind: StateKind) -> String {
    match kind {
        StateKind::Element => "one value per element".into(),
        StateKind::Scalar => "one value per tensor".into(),
        StateKind::Array(..) => {
            let phrase = rate_phrase(kind.rate());
            if phrase.starts_with("per ") {
                format!("one value {phrase}")
            } else {
                phrase
            }
        }
    }
}

fn rate_phrase(rate: Rate) -> String {
    match rate {
        Rate::Const | Rate::Step | Rate::Tensor => "per tensor".into(),
        Rate::Element => "per element".into(),
        Rate::Array(Dim::Rows, Dim::One) => "per row".into(),
        Rate::Array(Dim::One, Dim::Cols) => "per column".into(),
        Rate::Array(r, c) => format!("a {} × {} matrix", r.name(), c.name()),
    }
}

fn context_phrase(cx: Context) -> &'static str {
    match cx {
        Context::Init => "in an initial value (state is created before the first gradient exists)",
        Context::View => "in the view (the model sees the parameter before the gradient exists)",
        Context::Update => "here",
    }
}
