//! Compile-fail tests: every diagnostic of `optimizer!` is a compile error
//! at the offending token. The `.stderr` files under `tests/ui` are the
//! reviewed output; `ir/tests/diagnostics.rs` checks the same mistakes at
//! run time. Diagnostics text depends on the compiler, which
//! `rust-toolchain.toml` pins.

#[test]
fn optimizer_macro_diagnostics() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
