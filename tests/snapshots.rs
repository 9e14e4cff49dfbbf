//! Snapshots of what the compiler makes of the catalog, so that any change to
//! the front end, the optimizer, the scheduler or code generation shows up as
//! a reviewed diff: the checked IR and the optimized IR (default
//! hyperparameters, fast mode) of every optimizer, the CLIF of the
//! kernels of adam, lion, adan and lamb (f32), and the Rust `optimizer!`
//! emits for adam.

use lensopt::ir::optimize::{optimize, Mode, Options};
use lensopt::{catalog, Optimizer};

#[test]
fn checked_ir_of_the_catalog() {
    lensopt_tests::assert_snapshots!(catalog::names().into_iter().map(|name| {
        let rule = catalog::get(name).unwrap().rule();
        (format!("ir_{name}"), rule.to_string())
    }));
}

#[test]
fn optimized_ir_of_the_catalog() {
    lensopt_tests::assert_snapshots!(catalog::names().into_iter().map(|name| {
        let opt = catalog::get(name).unwrap();
        let optimized = optimize(
            &opt.rule(),
            &Options::specialized_for(Mode::Fast, &opt.hypers()),
        );
        (format!("optimized_{name}"), optimized.to_string())
    }));
}

#[test]
fn clif_of_adam_lion_adan_lamb() {
    lensopt_tests::assert_snapshots!(["adam", "lion", "adan", "lamb"].into_iter().map(|name| {
        let opt = catalog::get(name).unwrap();
        let present = vec![false; opt.rule().inputs.len()];
        let key = lensopt::jit::Key::for_step(&[opt.hypers()], &present, Mode::Fast);
        // The JIT's code: a step of a catalog rule runs its compiled-in kernels.
        let schedule = lensopt::jit::schedule(&opt.rule(), &key);
        let program = lensopt::Program::<f32>::compile_with_clif(schedule).unwrap();
        let text: String = program
            .clif()
            .iter()
            .map(|(f, clif)| format!("; {f}\n{clif}\n"))
            .collect();
        (format!("clif_{name}"), text)
    }));
}

/// What `optimizer!` compiles into a crate for Adam: every variant's
/// kernels (f32, f64; three instruction sets), the optimized and checked
/// rules as Rust, and the table `lensopt::aot` registers.
#[test]
fn rust_that_optimizer_emits_for_adam() {
    let rule = catalog::get("adam").unwrap().rule();
    insta::assert_snapshot!(
        "rust_adam",
        lensopt_codegen::rust::module_source(&rule, "__lensopt_compiled_Adam")
    );
}

#[test]
fn clif_of_a_full_adder_and_its_reverse_derivative() {
    use lensopt::circuit::compiled::CompiledCircuit;
    use lensopt::circuit::CircuitBuilder;
    let mut b = CircuitBuilder::new();
    let (x, y, carry_in) = (b.input(), b.input(), b.input());
    let half = b.xor(x, y);
    let sum = b.xor(half, carry_in);
    let (c1, c2) = (b.and(x, y), b.and(half, carry_in));
    let carry = b.xor(c1, c2);
    let adder = b.finish(vec![sum, carry]).unwrap();
    let compiled = CompiledCircuit::with_clif(&adder).unwrap();
    lensopt_tests::assert_snapshots!(compiled
        .clif()
        .iter()
        .map(|(name, clif)| (format!("circuit_full_adder_{name}"), clif.clone())),);
}

/// The public way to snapshot one's own optimizer: every stage as one
/// text ([`lensopt::Stages`]), here for a rule composed with the prelude.
#[test]
fn stages_of_a_users_own_optimizer() {
    let opt = lensopt::DynOptimizer::parse(
        "ClippedAdamW {
            hyper lr = 1e-3, weight_decay = 1e-2, max_norm = 1;
            update { p = p + chain(g, clip_by_global_norm, scale_by_adam, add_decayed_weights, scale_by_learning_rate); }
        }",
    )
    .unwrap();
    let stages = lensopt::Stages::of::<f32>(&opt).unwrap();
    assert_eq!(
        stages.clif.len(),
        2,
        "one reduction pass and the element pass"
    );
    // The same text twice: nothing in it depends on the run.
    assert_eq!(stages, lensopt::Stages::of::<f32>(&opt).unwrap());
    insta::assert_snapshot!("stages_clipped_adamw", stages.text());
}
