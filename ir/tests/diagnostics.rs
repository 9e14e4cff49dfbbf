//! Every mistake the checker reports, as a run-time `Err` with line and column.
//!
//! Each case is a rule written exactly as the trybuild case of the same
//! name in `tests/ui` (there as `optimizer!` input, here as text), so the
//! compile-time and run-time front ends are held to the same diagnostics.

use lensopt_ir::Rule;

/// Parses `text`, expects exactly one error, and checks its message and position.
fn rejects(text: &str, message: &str, line: usize, column: usize) {
    let err = Rule::parse(text).expect_err("the rule must be rejected");
    let first = err.first().expect("at least one diagnostic");
    assert!(
        first.message.contains(message),
        "got `{}`, want `{message}`",
        first.message
    );
    assert_eq!(
        (first.line(), first.column()),
        (line, column),
        "position of `{}`",
        first.message
    );
    assert_eq!(err.items.len(), 1, "exactly one error expected: {err}");
}

#[test]
fn unknown_name() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = p - lr * q;\n        }\n    }\n", "unknown name `q`", 5, 26);
}

#[test]
fn assign_hyperparameter() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            lr = 0.2;\n            p = p - lr * g;\n        }\n    }\n", "cannot assign to hyperparameter `lr`", 5, 13);
}

#[test]
fn assign_gradient() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            g = g * 2;\n            p = p - lr * g;\n        }\n    }\n", "cannot assign to input `g`", 5, 13);
}

#[test]
fn assign_input() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        input h;\n        update {\n            h = h + 1;\n            p = p - lr * g;\n        }\n    }\n", "cannot assign to input `h`", 6, 13);
}

#[test]
fn assign_step_counter() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            t = 1;\n            p = p - lr * g;\n        }\n    }\n", "cannot assign to the step counter `t`", 5, 13);
}

#[test]
fn p_never_updated() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        state m = 0;\n        update {\n            m = m + g;\n        }\n    }\n", "`p` is never updated", 5, 9);
}

#[test]
fn missing_update() {
    rejects(
        "\n    pub Bad {\n        hyper lr = 0.1;\n    }\n",
        "has no `update { ... }` block",
        2,
        9,
    );
}

#[test]
fn scalar_state_from_element() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        state scalar k = 0;\n        update {\n            k = g * g;\n            p = p - lr * g;\n        }\n    }\n", "scalar state `k` is one value per tensor, but this value is per element", 6, 15);
}

#[test]
fn wrong_arity() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = p - lr * sqrt(g, 2);\n        }\n    }\n", "`sqrt` takes 1 argument, but 2 were given", 5, 26);
}

#[test]
fn unknown_function() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = p - lr * sqroot(g);\n        }\n    }\n", "unknown function `sqroot`", 5, 26);
}

#[test]
fn duplicate_let() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            let d = g;\n            let d = g * 2;\n            p = p - lr * d;\n        }\n    }\n", "`d` is already defined", 6, 17);
}

#[test]
fn duplicate_hyperparameter() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1, lr = 0.2;\n        update {\n            p = p - lr * g;\n        }\n    }\n", "`lr` is already defined", 3, 25);
}

#[test]
fn use_before_definition() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            let a = b * 2;\n            let b = g;\n            p = p - lr * a;\n        }\n    }\n", "`b` is used before its definition", 5, 21);
}

#[test]
fn boolean_as_number() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1, nesterov = false;\n        update {\n            p = p - nesterov * g;\n        }\n    }\n", "`*` needs a number, but this is a boolean", 5, 21);
}

#[test]
fn number_as_condition() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = p - lr * select(g, 1, 2);\n        }\n    }\n", "the condition of `select` needs a boolean, but this is a number", 5, 33);
}

#[test]
fn reduction_of_a_scalar() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = p - sum(lr) * g;\n        }\n    }\n", "`sum` reduces over the elements of a tensor, but its argument is a step value", 5, 25);
}

#[test]
fn hyper_default_not_a_literal() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1 * 2;\n        update {\n            p = p - lr * g;\n        }\n    }\n", "the default of hyperparameter `lr` must be a number or `true`/`false`", 3, 24);
}

#[test]
fn state_initialised_from_gradient() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        state m = g;\n        update {\n            m = m + g;\n            p = p - lr * m;\n        }\n    }\n", "`g` is not known in an initial value", 4, 19);
}

#[test]
fn unknown_section() {
    rejects("\n    pub Bad {\n        hyperparams lr = 0.1;\n        update {\n            p = p - g;\n        }\n    }\n", "unknown section `hyperparams`", 3, 9);
}

#[test]
fn present_of_required_input() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        input h;\n        update {\n            p = p - lr * select(present(h), h, g);\n        }\n    }\n", "input `h` is always present", 6, 41);
}

#[test]
fn view_uses_gradient() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        view p - lr * g;\n        update {\n            p = p - lr * g;\n        }\n    }\n", "`g` is not known in the view", 4, 23);
}

#[test]
fn reserved_name() {
    rejects("\n    pub Bad {\n        hyper p = 0.1;\n        update {\n            p = p - g;\n        }\n    }\n", "`p` is reserved", 3, 15);
}

#[test]
fn chained_comparison() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = select(0 < g < 1, p - lr * g, p);\n        }\n    }\n", "comparisons cannot be chained", 5, 30);
}

#[test]
fn select_branches_differ() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = p - lr * select(g > 0, g, g > 1);\n        }\n    }\n", "the two branches of `select` must have the same type", 5, 26);
}

#[test]
fn assign_to_let() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            let d = g;\n            d = d * 2;\n            p = p - lr * d;\n        }\n    }\n", "cannot assign to `d`, a `let` binding", 6, 13);
}

#[test]
fn reduction_in_view() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        view p / norm(p);\n        update {\n            p = p - lr * g;\n        }\n    }\n", "`norm` is a reduction; reductions are not available in the view", 4, 18);
}

#[test]
fn typed_literal() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = p - 0.5f32 * g;\n        }\n    }\n", "numbers take no type suffix", 5, 21);
}

#[test]
fn value_called_as_function() {
    rejects("\n    pub Bad {\n        hyper lr = 0.1;\n        update {\n            p = p - lr(g);\n        }\n    }\n", "`lr` is a value, not a function", 5, 21);
}
