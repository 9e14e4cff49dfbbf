//! Kernels compiled into the crate by `optimizer!` ([`lensopt::aot`]),
//! and JIT programs loaded back from the on-disk cache
//! ([`lensopt::disk_cache`]), against the cranelift JIT compiling the same
//! rule for the same key.
//!
//! Both implement one optimized IR under one kernel contract, so they must
//! agree **bit for bit** (NaN matching NaN) on the parameters and every
//! state, element and scalar, in both rewrite modes, for every instruction
//! set the CPU has, on tensors with vector tails and chunk boundaries.

use lensopt::aot;
use lensopt::disk_cache::DiskCache;
use lensopt::ir::encoding;
use lensopt::ir::schedule::Schedule;
use lensopt::jit::{self, Engine, Key};
use lensopt::{catalog, Float, HyperValue, Mode, Optimizer, Program};
use lensopt_codegen::cpu::program::Origin;
use lensopt_codegen::cpu::{StepBuffers, StepPlan};
use ndarray::array;

/// Sizes of the tensors of one step: tails of every length, and a tensor
/// spanning two chunks.
const SIZES: [usize; 5] = [1, 3, 17, 1000, 70_001];

/// Deterministic pseudo-random numbers in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// Parameters, element states and scalar states after steps.
#[derive(Debug)]
struct Outcome<F> {
    params: Vec<Vec<F>>,
    states: Vec<Vec<Option<Vec<F>>>>,
    scalars: Vec<Vec<f64>>,
}

fn same_bits<F: Float>(a: &[F], b: &[F]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| {
        !(x.to_f64().to_bits() == y.to_f64().to_bits() || x.is_nan() && y.is_nan())
    })
}

/// Three steps of `program` from one seeded starting point.
fn run<F: Float>(program: &Program<F>, hypers: &[HyperValue], seed: u64) -> Outcome<F> {
    let rule = &program.schedule().rule;
    let mut rng = Lcg(seed);
    let mut draw = |n: usize, positive: bool| -> Vec<F> {
        (0..n)
            .map(|_| {
                let x = rng.next();
                F::from_f64(if positive { x.abs() } else { x })
            })
            .collect()
    };
    let mut params: Vec<Vec<F>> = SIZES.iter().map(|&n| draw(n, false)).collect();
    let grads: Vec<Vec<F>> = SIZES.iter().map(|&n| draw(n, false)).collect();
    let inputs: Vec<Vec<Vec<F>>> = SIZES
        .iter()
        .map(|&n| rule.inputs.iter().map(|_| draw(n, true)).collect())
        .collect();
    let mut states: Vec<Vec<Option<Vec<F>>>> = SIZES
        .iter()
        .map(|&n| {
            rule.states
                .iter()
                .map(|s| (s.kind == lensopt::ir::StateKind::Element).then(|| draw(n, true)))
                .collect()
        })
        .collect();
    let mut scalars: Vec<Vec<f64>> = SIZES
        .iter()
        .map(|_| rule.states.iter().map(|_| 0.5).collect())
        .collect();
    let present = vec![true; rule.inputs.len()];
    let groups = vec![hypers.to_vec()];
    let group_of = vec![0; SIZES.len()];
    for t in 1..=3 {
        let plan = StepPlan {
            t,
            present: &present,
            group_hypers: &groups,
            group_of: &group_of,
        };
        let mut buffers: Vec<StepBuffers<'_, F>> = params
            .iter_mut()
            .zip(&grads)
            .zip(&inputs)
            .zip(states.iter_mut())
            .map(|(((p, g), i), s)| StepBuffers {
                param: p.as_mut_slice(),
                grad: g.as_slice(),
                inputs: i.iter().map(|x| Some(x.as_slice())).collect(),
                states: s.iter_mut().map(|x| x.as_deref_mut()).collect(),
            })
            .collect();
        program
            .step(&plan, &mut buffers, &mut scalars, None)
            .unwrap_or_else(|e| panic!("`{}` step {t}: {e}", rule.name));
    }
    Outcome {
        params,
        states,
        scalars,
    }
}

fn assert_identical<F: Float>(what: &str, a: &Outcome<F>, b: &Outcome<F>) {
    for (k, (x, y)) in a.params.iter().zip(&b.params).enumerate() {
        if let Some(i) = same_bits(x, y) {
            panic!(
                "{what}: p of tensor {k} differs at {i}: {} vs {}",
                x[i], y[i]
            );
        }
    }
    for (k, (xs, ys)) in a.states.iter().zip(&b.states).enumerate() {
        for (s, (x, y)) in xs.iter().zip(ys).enumerate() {
            if let (Some(x), Some(y)) = (x, y) {
                if let Some(i) = same_bits(x, y) {
                    panic!(
                        "{what}: state {s} of tensor {k} differs at {i}: {} vs {}",
                        x[i], y[i]
                    );
                }
            }
        }
    }
    for (k, (x, y)) in a.scalars.iter().zip(&b.scalars).enumerate() {
        let same = x
            .iter()
            .zip(y)
            .all(|(u, v)| u.to_bits() == v.to_bits() || u.is_nan() && v.is_nan());
        assert!(same, "{what}: scalar states of tensor {k}: {x:?} vs {y:?}");
    }
}

/// The hyperparameters that take the generic variant: every boolean
/// flipped, every zero made 0.25 (a value no specialisation compiles in),
/// every one made 0.75 (so that AdaHessian's exponent is no longer 0.5 and
/// its kernels take the loop that calls `pow`).
fn non_default(hypers: &[HyperValue]) -> Vec<HyperValue> {
    hypers
        .iter()
        .map(|h| match h {
            HyperValue::Bool(b) => HyperValue::Bool(!b),
            HyperValue::Num(x) if *x == 0.0 => HyperValue::Num(0.25),
            HyperValue::Num(x) if *x == 1.0 => HyperValue::Num(0.75),
            other => *other,
        })
        .collect()
}

fn compare_rule<F: Float>(name: &str) -> usize {
    // The test crate may be a debug build: its kernels count all the same.
    aot::serve_unoptimized(true);
    let optimizer = catalog::get(name).expect("a catalog rule");
    let rule = optimizer.rule();
    let defaults = optimizer.hypers();
    let present = vec![true; rule.inputs.len()];
    let mut compared = 0;
    let cases = [
        (defaults.clone(), Mode::Exact),
        (defaults.clone(), Mode::Fast),
        (non_default(&defaults), Mode::Fast),
        (non_default(&defaults), Mode::Exact),
    ];
    for (hypers, mode) in cases {
        let key = Key::for_step(std::slice::from_ref(&hypers), &present, mode);
        let compiled = aot::program::<F>(&rule, &key)
            .unwrap_or_else(|| panic!("`{name}` has no compiled kernels for {key:?}"));
        // The JIT compiles for the key the compiled variant was built for
        // (the generic variant compiles nothing in).
        let served = Key {
            specialize: if compiled
                .schedule()
                .rule
                .same_structure(&jit::schedule(&rule, &key).rule)
            {
                key.specialize.clone()
            } else {
                vec![None; rule.hypers.len()]
            },
            ..key.clone()
        };
        let jitted = jit::compile::<F>(&rule, &served).expect("the JIT compiles catalog rules");
        assert!(
            jitted
                .schedule()
                .rule
                .same_structure(&compiled.schedule().rule),
            "`{name}` ({mode:?}, {}): the macro's e-graph and the run-time one disagree",
            F::NAME
        );
        let reference = run(&jitted, &hypers, 7);
        for isa in 0..=aot::isa() {
            let native = aot::program_for_isa::<F>(&rule, &key, isa).expect("registered");
            assert_eq!(native.origin(), Origin::Aot);
            let what = format!("`{name}` {} {mode:?} isa {isa} hypers {hypers:?}", F::NAME);
            assert_identical(&what, &run(&native, &hypers, 7), &reference);
            compared += 1;
        }
    }
    compared
}

#[test]
fn compiled_kernels_match_the_jit_bit_for_bit_on_every_catalog_rule() {
    let mut compared = 0;
    for name in catalog::names() {
        compared += compare_rule::<f32>(name);
        compared += compare_rule::<f64>(name);
    }
    println!(
        "compiled: {compared} (rule, type, mode, hyperparameters, instruction set) cases identical to the JIT; instruction sets 0..={}",
        aot::isa()
    );
    assert!(compared >= catalog::names().len() * 8);
}

lensopt::optimizer! {
    /// A rule only this test declares: its kernels come from the macro.
    pub Declared {
        hyper lr = 1e-2, beta = 0.9, eps = 1e-8, decay = 0.0, centered = false;
        state m = 0, v = 0;
        update {
            m = beta * m + (1 - beta) * g;
            v = beta * v + (1 - beta) * g * g;
            let den = sqrt(select(centered, v - m * m, v)) + eps;
            p = p * (1 - lr * decay) - lr * m / den / norm(g) * sqrt(numel());
        }
    }
}

#[test]
fn a_declared_optimizer_runs_with_no_jit_at_all() {
    aot::serve_unoptimized(true);
    let before = jit::jit_compiles();
    let mut w32 = array![1.0f32, -2.0, 3.0, 0.5, 0.25];
    let g32 = w32.mapv(|x| 0.1 * x);
    let mut w64 = array![1.0f64, -2.0, 3.0];
    let g64 = w64.mapv(|x| 0.1 * x);
    for optimizer in [
        Declared::default(),
        Declared::default().decay(0.1).centered(true),
    ] {
        for backend in [
            lensopt::Backend::JitDefault,
            lensopt::Backend::Jit(Mode::Exact),
        ] {
            let mut s32 = optimizer.init(&[&w32]).unwrap();
            s32.set_backend(backend);
            s32.step(&mut [&mut w32], &[&g32]).unwrap();
            assert_eq!(s32.program(&[]).unwrap().origin(), Origin::Aot);
            let mut s64 = optimizer.init(&[&w64]).unwrap();
            s64.set_backend(backend);
            s64.step(&mut [&mut w64], &[&g64]).unwrap();
            assert_eq!(s64.program(&[]).unwrap().origin(), Origin::Aot);
        }
    }
    assert!(w32.iter().chain(&[]).all(|x| x.is_finite()));
    assert_eq!(
        jit::jit_compiles(),
        before,
        "a declared optimizer called the JIT"
    );
    // A rule written as text is compiled by the JIT on this thread, and
    // counted (a rule new to this run, so no earlier run has cached it).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let text = lensopt::DynOptimizer::parse(&format!(
        "Fresh {{ hyper lr = 0.125, unique = {nanos}; update {{ p = p - lr * g * g * g + 0 * unique; }} }}"
    ))
    .unwrap();
    let mut s = text.init(&[&w64]).unwrap();
    s.step(&mut [&mut w64], &[&g64]).unwrap();
    assert_eq!(jit::jit_compiles(), before + 1);
    assert_eq!(s.program(&[]).unwrap().origin(), Origin::Jit);
}

#[test]
fn the_compiled_schedule_is_the_one_the_macro_saw() {
    // The optimized rule embedded by the macro schedules the same way at
    // run time: same passes, outputs and slots as the JIT's schedule.
    aot::serve_unoptimized(true);
    let rule = catalog::get("lamb").unwrap().rule();
    let key = Key::for_step(&[rule.default_hypers()], &[], Mode::Fast);
    let compiled = aot::program::<f32>(&rule, &key).unwrap();
    let scheduled = Schedule::new(compiled.schedule().rule.clone());
    assert_eq!(&scheduled, compiled.schedule());
    assert!(!compiled.schedule().passes.is_empty(), "LAMB reduces");
}

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn disk_round_trip<F: Float>(cache: &DiskCache, name: &str) {
    let rule = catalog::get(name).unwrap().rule();
    let hypers = rule.default_hypers();
    let key = Key::for_step(
        std::slice::from_ref(&hypers),
        &vec![true; rule.inputs.len()],
        Mode::Fast,
    );
    let engine = || Engine::new(4).with_disk_cache(Some(cache.clone()));
    // `compiled_in = false`: the JIT, as for a rule written as text.
    let first = engine().program_from::<F>(&rule, &key, false).unwrap();
    assert_eq!(first.origin(), Origin::Jit, "`{name}` {}", F::NAME);
    let second = engine().program_from::<F>(&rule, &key, false).unwrap();
    assert_eq!(second.origin(), Origin::Cached, "`{name}` {}", F::NAME);
    assert_eq!(second.schedule(), first.schedule());
    let what = format!("`{name}` {} from the disk cache", F::NAME);
    assert_identical(&what, &run(&second, &hypers, 11), &run(&first, &hypers, 11));
}

#[test]
fn jit_programs_come_back_from_the_disk_cache_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("lensopt-disk-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = DiskCache::at(&dir);
    for name in ["adam", "lamb", "sophiah", "adan"] {
        disk_round_trip::<f32>(&cache, name);
        disk_round_trip::<f64>(&cache, name);
    }
    let files = files_in(&dir);
    assert_eq!(files.len(), 8, "one file per rule and element type");
    // Any damage costs a compile, never a wrong program: flip one byte of
    // every file, or cut it short.
    let rule = catalog::get("lamb").unwrap().rule();
    let key = Key::for_step(&[rule.default_hypers()], &[], Mode::Fast);
    for (k, file) in files.iter().enumerate() {
        let mut bytes = std::fs::read(file).unwrap();
        match k % 2 {
            0 => {
                let at = bytes.len() / 2;
                bytes[at] ^= 0x40;
            }
            _ => bytes.truncate(bytes.len() / 3),
        }
        std::fs::write(file, bytes).unwrap();
    }
    let engine = || Engine::new(4).with_disk_cache(Some(cache.clone()));
    let recompiled = engine().program_from::<f32>(&rule, &key, false).unwrap();
    assert_eq!(recompiled.origin(), Origin::Jit);
    let again = engine().program_from::<f32>(&rule, &key, false).unwrap();
    assert_eq!(
        again.origin(),
        Origin::Cached,
        "the damaged file was replaced"
    );
    // A cache that cannot be written is no cache, and no error.
    let blocked = DiskCache::at(files[0].join("not-a-directory"));
    let engine = Engine::new(4).with_disk_cache(Some(blocked));
    let program = engine.program_from::<f32>(&rule, &key, false).unwrap();
    assert_eq!(program.origin(), Origin::Jit);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rules_round_trip_through_their_encoding_and_damage_is_an_error() {
    for name in catalog::names() {
        let opt = catalog::get(name).unwrap();
        let rule = opt.rule();
        let key = Key::for_step(&[opt.hypers()], &vec![true; rule.inputs.len()], Mode::Fast);
        for r in [(*rule).clone(), jit::schedule(&rule, &key).rule] {
            let bytes = encoding::encode(&r);
            let back = encoding::decode(&bytes).unwrap();
            assert_eq!(back, r, "`{name}`");
            // Every prefix is an error, and so is every single-byte change
            // that makes the rule malformed; none panics.
            for cut in 0..bytes.len() {
                assert!(
                    encoding::decode(&bytes[..cut]).is_err(),
                    "`{name}` cut at {cut}"
                );
            }
            let mut rng = Lcg(bytes.len() as u64);
            for _ in 0..2000 {
                let mut damaged = bytes.clone();
                let at = ((rng.next() + 1.0) / 2.0 * bytes.len() as f64) as usize % bytes.len();
                damaged[at] = damaged[at].wrapping_add(1 + (at % 255) as u8);
                let _ = encoding::decode(&damaged);
            }
        }
    }
    // Matrix rules too (`optimizer!` compiles every rule in this form).
    for name in catalog::matrix_names() {
        let rule = catalog::get(name).unwrap().rule();
        assert_eq!(
            encoding::decode(&encoding::encode(&rule)).unwrap(),
            *rule,
            "`{name}`"
        );
    }
}

#[test]
fn any_bytes_in_a_cache_file_are_a_miss_or_a_program_never_a_panic() {
    let dir = std::env::temp_dir().join(format!("lensopt-disk-garbage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = DiskCache::at(&dir);
    let rule = catalog::get("lamb").unwrap().rule();
    let key = Key::for_step(&[rule.default_hypers()], &[], Mode::Fast);
    let engine = || Engine::new(4).with_disk_cache(Some(cache.clone()));
    engine().program_from::<f32>(&rule, &key, false).unwrap();
    let file = files_in(&dir).pop().expect("the stored program");
    let good = std::fs::read(&file).unwrap();
    let mut rng = Lcg(99);
    for round in 0..200 {
        let bytes: Vec<u8> = match round % 4 {
            // Random bytes of random length.
            0 => (0..(rng.next().abs() * 4096.0) as usize)
                .map(|_| (rng.next().abs() * 256.0) as u8)
                .collect(),
            // The real file with its checksum recomputed after a change, so
            // the parser itself meets the damage.
            _ => {
                let mut b = good[..good.len() - 8].to_vec();
                let at = (rng.next().abs() * b.len() as f64) as usize % b.len();
                b[at] ^= 1 << (round % 8);
                let sum = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
                    (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
                });
                b.extend_from_slice(&sum.to_le_bytes());
                b
            }
        };
        std::fs::write(&file, &bytes).unwrap();
        // A miss recompiles (and rewrites the file); a hit is a program of
        // the rule's schedule. (Its code is not run here: machine code in a
        // file whose key and checksum hold is trusted, as the cache's
        // documentation says; the checksum guards against damage, the
        // directory's permissions against other users.)
        let program = engine().program_from::<f32>(&rule, &key, false).unwrap();
        assert_eq!(program.schedule().passes.len(), 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// JIT programs of catalog rules, compiled in the order given on a fresh
/// thread: each one's machine code and relocations.
type Compile = (&'static str, bool, bool, Mode);

fn images_in_order(order: Vec<Compile>) -> Vec<Option<lensopt_codegen::cpu::image::Image>> {
    std::thread::spawn(move || {
        order
            .into_iter()
            .map(|(name, f64_elements, defaults, mode)| {
                let optimizer = catalog::get(name).expect("a catalog rule");
                let rule = optimizer.rule();
                let hypers = if defaults {
                    optimizer.hypers()
                } else {
                    non_default(&optimizer.hypers())
                };
                let present = vec![true; rule.inputs.len()];
                let key = Key::for_step(std::slice::from_ref(&hypers), &present, mode);
                if f64_elements {
                    jit::compile::<f64>(&rule, &key)
                        .expect("compiles")
                        .image()
                        .cloned()
                } else {
                    jit::compile::<f32>(&rule, &key)
                        .expect("compiles")
                        .image()
                        .cloned()
                }
            })
            .collect()
    })
    .join()
    .expect("the compiling thread")
}

/// A program's machine code (and its relocations) is a function of the
/// program alone: compiling others first on the same thread, in any order,
/// changes nothing.
#[test]
fn machine_code_does_not_depend_on_earlier_programs() {
    let mut order = Vec::new();
    for name in catalog::names() {
        for f64_elements in [false, true] {
            for (defaults, mode) in [
                (true, Mode::Exact),
                (true, Mode::Fast),
                (false, Mode::Fast),
                (false, Mode::Exact),
            ] {
                order.push((name, f64_elements, defaults, mode));
            }
        }
    }
    let forwards = images_in_order(order.clone());
    let mut backwards = images_in_order(order.iter().rev().cloned().collect());
    backwards.reverse();
    for ((what, a), b) in order.iter().zip(&forwards).zip(&backwards) {
        assert!(a.is_some(), "{what:?}: no image");
        assert_eq!(
            a, b,
            "{what:?}: the machine code depends on what was compiled before"
        );
    }
}
