//! Boolean circuits over Z2: the reverse derivative of every generator and of
//! random read-once circuits against the brute-force oracle
//! `R[f](x, dy)_i = parity((f(x) ^ f(x ^ e_i)) & dy)`, the RD axioms over Z2
//! on random circuits with fan-out, bit-sliced evaluation against one
//! example at a time, wiring errors, and RDA learning a truth table.

use lensopt::circuit::eval::{bit, pack, Machine};
use lensopt::circuit::gates;
use lensopt::circuit::rda::{Bits, Combine, Rda};
use lensopt::circuit::{Circuit, CircuitBuilder, CircuitError};
use lensopt::diagram::plan::SplitMix;

/// Evaluates `c` (no parameters) on one example.
fn apply(c: &Circuit, x: &[bool]) -> Vec<bool> {
    let mut m = Machine::new(c, 1).unwrap();
    let out = m.forward(c, &[], &pack(&[x.to_vec()], c.inputs())).unwrap();
    out.iter().map(|w| bit(w, 0)).collect()
}

/// `R[c](x, dy)` on one example, with respect to the inputs.
fn reverse(c: &Circuit, params: &[bool], x: &[bool], dy: &[bool]) -> (Vec<bool>, Vec<bool>) {
    let mut m = Machine::new(c, 1).unwrap();
    m.forward(c, params, &pack(&[x.to_vec()], c.inputs()))
        .unwrap();
    let (dp, dx) = m
        .reverse(c, &pack(&[dy.to_vec()], c.outputs().len()))
        .unwrap();
    (
        dp.iter().map(|w| bit(w, 0)).collect(),
        dx.iter().map(|w| bit(w, 0)).collect(),
    )
}

fn bits(v: usize, n: usize) -> Vec<bool> {
    (0..n).map(|i| v >> i & 1 == 1).collect()
}

/// The oracle: `R[f](x, dy)_i = parity((f(x) ^ f(x ^ e_i)) & dy)`.
fn oracle(c: &Circuit, x: &[bool], dy: &[bool]) -> Vec<bool> {
    let fx = apply(c, x);
    (0..x.len())
        .map(|i| {
            let mut xi = x.to_vec();
            xi[i] = !xi[i];
            let fxi = apply(c, &xi);
            fx.iter()
                .zip(&fxi)
                .zip(dy)
                .fold(false, |acc, ((a, b), d)| acc ^ ((a ^ b) & d))
        })
        .collect()
}

fn check_oracle_exhaustively(name: &str, c: &Circuit) {
    for xv in 0..1usize << c.inputs() {
        for dv in 0..1usize << c.outputs().len() {
            let (x, dy) = (bits(xv, c.inputs()), bits(dv, c.outputs().len()));
            assert_eq!(
                reverse(c, &[], &x, &dy).1,
                oracle(c, &x, &dy),
                "{name}: x={x:?} dy={dy:?}"
            );
        }
    }
}

#[test]
fn every_generator_matches_the_oracle() {
    let all = [
        ("and", gates::and()),
        ("xor", gates::xor()),
        ("not", gates::not()),
        ("zero", gates::zero()),
        ("one", gates::one()),
        ("copy", gates::copy()),
        ("discard", gates::discard()),
        ("swap", gates::swap()),
        ("identity", gates::identity(3)),
    ];
    for (name, c) in &all {
        check_oracle_exhaustively(name, c);
    }
}

/// A random read-once circuit: a tree of AND, XOR and NOT over `n` distinct inputs.
fn read_once(rng: &mut SplitMix, n: usize) -> Circuit {
    let mut b = CircuitBuilder::new();
    let mut pool: Vec<usize> = (0..n).map(|_| b.input()).collect();
    while pool.len() > 1 {
        let i = (rng.next_u64() % pool.len() as u64) as usize;
        let x = pool.swap_remove(i);
        let j = (rng.next_u64() % pool.len() as u64) as usize;
        let y = pool.swap_remove(j);
        let mut z = if rng.next_u64().is_multiple_of(2) {
            b.and(x, y)
        } else {
            b.xor(x, y)
        };
        if rng.next_u64().is_multiple_of(3) {
            z = b.not(z);
        }
        pool.push(z);
    }
    b.finish(pool).unwrap()
}

#[test]
fn random_read_once_circuits_match_the_oracle() {
    let mut rng = SplitMix(3);
    for n in 1..=7 {
        for _ in 0..20 {
            let c = read_once(&mut rng, n);
            check_oracle_exhaustively("read-once circuit", &c);
        }
    }
}

#[test]
fn reconvergent_fan_out_is_where_the_oracle_and_the_derivative_part() {
    // x AND x: the reverse derivative is the formal derivative of x*x, 2x = 0
    // over Z2, while the finite difference (x AND x) ^ (!x AND !x) is 1. The
    // chain rule (RD.5) holds for R, not for the finite difference, which is
    // why the oracle is checked on read-once circuits and generators.
    let mut b = CircuitBuilder::new();
    let x = b.input();
    let y = b.and(x, x);
    let c = b.finish(vec![y]).unwrap();
    assert_eq!(reverse(&c, &[], &[true], &[true]).1, vec![false]);
    assert_eq!(oracle(&c, &[true], &[true]), vec![true]);
}

/// A random circuit with fan-out over `n` inputs and `k` parameters, `m` outputs.
fn random_circuit(rng: &mut SplitMix, n: usize, k: usize, m: usize, gates_count: usize) -> Circuit {
    let mut b = CircuitBuilder::new();
    let mut wires: Vec<usize> = (0..n).map(|_| b.input()).collect();
    wires.extend((0..k).map(|_| b.param()));
    for _ in 0..gates_count {
        let pick = |rng: &mut SplitMix, w: &[usize]| w[(rng.next_u64() % w.len() as u64) as usize];
        let (x, y) = (pick(rng, &wires), pick(rng, &wires));
        let z = match rng.next_u64() % 3 {
            0 => b.and(x, y),
            1 => b.xor(x, y),
            _ => b.not(x),
        };
        wires.push(z);
    }
    let outs = (0..m).map(|i| wires[wires.len() - 1 - i]).collect();
    b.finish(outs).unwrap()
}

fn xor_vec(a: &[bool], b: &[bool]) -> Vec<bool> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

#[test]
fn rd_axioms_over_z2_on_random_circuits() {
    let mut rng = SplitMix(11);
    for _ in 0..200 {
        let (n, m) = (
            1 + (rng.next_u64() % 5) as usize,
            1 + (rng.next_u64() % 3) as usize,
        );
        let f = random_circuit(&mut rng, n, 0, m, 12);
        let g = random_circuit(&mut rng, m, 0, 2, 10);
        let x = bits(rng.next_u64() as usize, n);
        let (d1, d2) = (
            bits(rng.next_u64() as usize, m),
            bits(rng.next_u64() as usize, m),
        );
        // RD.2: linear in dy, R[f](x, 0) = 0.
        let r = |dy: &[bool]| reverse(&f, &[], &x, dy).1;
        assert_eq!(r(&xor_vec(&d1, &d2)), xor_vec(&r(&d1), &r(&d2)), "RD.2");
        assert!(r(&vec![false; m]).iter().all(|b| !b), "RD.2 zero");
        // RD.5: R[f ; g](x, c) = R[f](x, R[g](f(x), c)).
        let fg = f.then(&g).unwrap();
        let c = bits(rng.next_u64() as usize, 2);
        let fx = apply(&f, &x);
        let inner = reverse(&g, &[], &fx, &c).1;
        assert_eq!(
            reverse(&fg, &[], &x, &c).1,
            reverse(&f, &[], &x, &inner).1,
            "RD.5"
        );
        // RD.4: R[<f, h>](x, (b, c)) = R[f](x, b) ^ R[h](x, c), with <f, h> = copy ; (f | h).
        let h = random_circuit(&mut rng, n, 0, 1, 8);
        let copies = {
            let mut b = CircuitBuilder::new();
            let xs: Vec<usize> = (0..n).map(|_| b.input()).collect();
            let outs = xs.iter().chain(&xs).copied().collect();
            b.finish(outs).unwrap()
        };
        let pair = copies.then(&f.beside(&h)).unwrap();
        let cc = bits(rng.next_u64() as usize, 1);
        let dd: Vec<bool> = d1.iter().chain(&cc).copied().collect();
        let want = xor_vec(&reverse(&f, &[], &x, &d1).1, &reverse(&h, &[], &x, &cc).1);
        assert_eq!(reverse(&pair, &[], &x, &dd).1, want, "RD.4");
        // RD.3: identity and the first projection.
        let id = gates::identity(n);
        assert_eq!(reverse(&id, &[], &x, &x).1, x, "RD.3 identity");
        let proj = gates::identity(1).beside(&gates::discard());
        assert_eq!(
            reverse(&proj, &[], &[true, true], &[true]).1,
            vec![true, false],
            "RD.3 projection"
        );
    }
    // RD.1: f + g = copy ; (f | g) ; xor has R[f + g] = R[f] ^ R[g].
    let f = random_circuit(&mut rng, 1, 0, 1, 6);
    let g = random_circuit(&mut rng, 1, 0, 1, 6);
    let sum = gates::copy()
        .then(&f.beside(&g))
        .unwrap()
        .then(&gates::xor())
        .unwrap();
    for x in [false, true] {
        let want = xor_vec(
            &reverse(&f, &[], &[x], &[true]).1,
            &reverse(&g, &[], &[x], &[true]).1,
        );
        assert_eq!(reverse(&sum, &[], &[x], &[true]).1, want, "RD.1");
    }
}

#[test]
fn bit_sliced_batches_equal_one_example_at_a_time() {
    let mut rng = SplitMix(5);
    let c = random_circuit(&mut rng, 6, 3, 2, 40);
    let params = vec![true, false, true];
    let examples: Vec<Vec<bool>> = (0..200).map(|_| bits(rng.next_u64() as usize, 6)).collect();
    let dys: Vec<Vec<bool>> = (0..200).map(|_| bits(rng.next_u64() as usize, 2)).collect();
    let mut m = Machine::new(&c, 4).unwrap();
    let out = m.forward(&c, &params, &pack(&examples, 6)).unwrap();
    let (dp, dx) = m.reverse(&c, &pack(&dys, 2)).unwrap();
    for (e, x) in examples.iter().enumerate() {
        let (p1, x1) = reverse(&c, &params, x, &dys[e]);
        let mut single = Machine::new(&c, 1).unwrap();
        let o1 = single
            .forward(&c, &params, &pack(std::slice::from_ref(x), 6))
            .unwrap();
        assert_eq!(
            out.iter().map(|w| bit(w, e)).collect::<Vec<_>>(),
            o1.iter().map(|w| bit(w, 0)).collect::<Vec<_>>()
        );
        assert_eq!(dp.iter().map(|w| bit(w, e)).collect::<Vec<_>>(), p1);
        assert_eq!(dx.iter().map(|w| bit(w, e)).collect::<Vec<_>>(), x1);
    }
}

#[test]
fn wiring_errors_are_values() {
    let err = gates::and().then(&gates::and()).unwrap_err();
    assert_eq!(err, CircuitError::Mismatch { left: 1, right: 2 });
    assert_eq!(
        err.to_string(),
        "cannot compose: the left circuit produces 1 bits but the right one takes 2"
    );
    let mut b = CircuitBuilder::new();
    let x = b.input();
    b.and(x, 5);
    assert_eq!(b.finish(vec![x]).unwrap_err(), CircuitError::UnknownWire(5));
    let c = gates::xor();
    let mut m = Machine::new(&c, 1).unwrap();
    assert!(
        m.forward(&c, &[], &[vec![0]]).is_err(),
        "one input row for two inputs"
    );
    assert!((gates::and() >> gates::not()).is_ok());
    assert!((gates::and() >> gates::and()).is_err());
}

#[test]
fn rda_learns_a_truth_table() {
    // The truth table of a random 4-bit function, as XOR of (p_m AND minterm_m).
    let mut b = CircuitBuilder::new();
    let x: Vec<usize> = (0..4).map(|_| b.input()).collect();
    let nots: Vec<usize> = x.iter().map(|&w| b.not(w)).collect();
    let mut out = b.constant(false);
    for m in 0..16 {
        let mut term = if m & 1 == 1 { x[0] } else { nots[0] };
        for i in 1..4 {
            let lit = if m >> i & 1 == 1 { x[i] } else { nots[i] };
            term = b.and(term, lit);
        }
        let p = b.param();
        let gated = b.and(p, term);
        out = b.xor(out, gated);
    }
    let c = b.finish(vec![out]).unwrap();
    let target: Vec<bool> = (0..16).map(|v| (v * 7 + 3) % 5 < 2).collect();
    let data = Bits {
        x: (0..16).map(|v| bits(v, 4)).collect(),
        y: target.iter().map(|t| vec![*t]).collect(),
    };
    for combine in [Combine::Online, Combine::Majority] {
        let mut rda = Rda::new(c.clone());
        rda.epoch(&data, combine).unwrap();
        assert_eq!(rda.accuracy(&data).unwrap(), 1.0, "{combine:?}");
        assert_eq!(
            rda.epoch(&data, combine).unwrap(),
            0,
            "{combine:?}: nothing left to flip"
        );
    }
}

#[test]
fn compiled_circuits_agree_with_the_bit_sliced_interpreter() {
    use lensopt::circuit::compiled::CompiledCircuit;
    let mut rng = SplitMix(21);
    for case in 0..40 {
        let (n, k, m) = (1 + case % 7, case % 4, 1 + case % 3);
        let c = random_circuit(&mut rng, n, k, m, 5 + 3 * case);
        let compiled = CompiledCircuit::new(&c).unwrap();
        let params: Vec<bool> = (0..k).map(|_| rng.next_u64() & 1 == 1).collect();
        let words = 1 + case % 5; // odd and even word counts
        let inputs: Vec<Vec<u64>> = (0..n)
            .map(|_| (0..words).map(|_| rng.next_u64()).collect())
            .collect();
        let dy: Vec<Vec<u64>> = (0..m)
            .map(|_| (0..words).map(|_| rng.next_u64()).collect())
            .collect();
        let mut machine = Machine::new(&c, words).unwrap();
        let want = machine.forward(&c, &params, &inputs).unwrap();
        assert_eq!(
            compiled.forward(&params, &inputs).unwrap(),
            want,
            "forward, case {case}"
        );
        let (dp, dx) = machine.reverse(&c, &dy).unwrap();
        assert_eq!(
            compiled.reverse(&params, &inputs, &dy).unwrap(),
            (dp, dx),
            "reverse, case {case}"
        );
    }
    let c = gates::and();
    let compiled = CompiledCircuit::new(&c).unwrap();
    assert!(
        compiled.forward(&[], &[vec![0]]).is_err(),
        "two input rows are needed"
    );
}

#[test]
fn the_circuit_macro_builds_what_the_builder_builds() {
    // A half adder: (x, y) -> (x ^ y, x & y).
    let macro_made = lensopt::circuit!((copy | copy) >> (id(1) | swap | id(1)) >> (xor | and));
    let by_hand = gates::copy()
        .beside(&gates::copy())
        .then(
            &gates::identity(1)
                .beside(&gates::swap())
                .beside(&gates::identity(1)),
        )
        .unwrap()
        .then(&gates::xor().beside(&gates::and()))
        .unwrap();
    assert_eq!(macro_made, by_hand);
    for v in 0..4 {
        let x = bits(v, 2);
        assert_eq!(apply(&macro_made, &x), vec![x[0] ^ x[1], x[0] & x[1]]);
    }
    let with_param = lensopt::circuit!((param | id(1)) >> and);
    assert_eq!((with_param.inputs(), with_param.params()), (1, 1));
}

#[test]
fn rda_with_compiled_passes_learns_the_same_bits() {
    let mut rng = SplitMix(8);
    let c = random_circuit(&mut rng, 5, 6, 2, 60);
    let data = Bits {
        x: (0..100).map(|_| bits(rng.next_u64() as usize, 5)).collect(),
        y: (0..100).map(|_| bits(rng.next_u64() as usize, 2)).collect(),
    };
    for combine in [Combine::Online, Combine::Majority] {
        let mut interpreted = Rda::new(c.clone());
        let mut compiled = Rda::new(c.clone());
        compiled.compile().unwrap();
        for _ in 0..5 {
            assert_eq!(
                interpreted.epoch(&data, combine).unwrap(),
                compiled.epoch(&data, combine).unwrap()
            );
            assert_eq!(interpreted.params, compiled.params, "{combine:?}");
        }
    }
}

/// A random netlist whose gates read one of the last dozen wires half of
/// the time (as tables and adders do) and any earlier wire otherwise.
fn local_random_circuit(rng: &mut SplitMix, n: usize, k: usize, m: usize, count: usize) -> Circuit {
    let mut b = CircuitBuilder::new();
    let mut wires: Vec<usize> = (0..n).map(|_| b.input()).collect();
    wires.extend((0..k).map(|_| b.param()));
    for _ in 0..count {
        let mut pick = || {
            let r = rng.next_u64();
            let span = if r & 1 == 0 {
                wires.len().min(12)
            } else {
                wires.len()
            };
            wires[wires.len() - 1 - ((r >> 1) % span as u64) as usize]
        };
        let (x, y) = (pick(), pick());
        let z = match rng.next_u64() % 3 {
            0 => b.and(x, y),
            1 => b.xor(x, y),
            _ => b.not(x),
        };
        wires.push(z);
    }
    let outs = (0..m).map(|i| wires[wires.len() - 1 - 7 * i]).collect();
    b.finish(outs).unwrap()
}

/// `f` on a thread with a stack of `bytes` (an overflow aborts the test run).
fn on_a_stack_of<T: Send>(bytes: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(bytes)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

/// Netlists too large to keep in registers run with their values in a
/// scratch buffer; they must agree with the interpreter bit for bit, on a
/// thread with a small stack (the frame does not grow with the netlist).
#[test]
fn compiled_netlists_in_scratch_memory_agree_with_the_interpreter() {
    use lensopt::circuit::compiled::CompiledCircuit;
    use lensopt::circuit::tables::tuple_tables;
    use lensopt_codegen::cpu::circuit::REGISTER_GATES;
    let mut rng = SplitMix(77);
    let (bank, _) = tuple_tables(30, 12, 10, 5).unwrap();
    let circuits = [
        local_random_circuit(&mut rng, 9, 40, 3, REGISTER_GATES + 300),
        bank,
    ];
    for c in circuits {
        assert!(c.gates().len() > REGISTER_GATES);
        let compiled = CompiledCircuit::new(&c).unwrap();
        for words in [1, 3] {
            let params: Vec<bool> = (0..c.params()).map(|_| rng.next_u64() & 1 == 1).collect();
            let row = |rng: &mut SplitMix| (0..words).map(|_| rng.next_u64()).collect::<Vec<u64>>();
            let inputs: Vec<Vec<u64>> = (0..c.inputs()).map(|_| row(&mut rng)).collect();
            let dy: Vec<Vec<u64>> = c.outputs().iter().map(|_| row(&mut rng)).collect();
            let mut machine = Machine::new(&c, words).unwrap();
            let want = machine.forward(&c, &params, &inputs).unwrap();
            let want_reverse = machine.reverse(&c, &dy).unwrap();
            let got = on_a_stack_of(256 << 10, || {
                (
                    compiled.forward(&params, &inputs).unwrap(),
                    compiled.reverse(&params, &inputs, &dy).unwrap(),
                )
            });
            assert_eq!(got.0, want, "forward, {} gates", c.gates().len());
            assert_eq!(got.1, want_reverse, "reverse, {} gates", c.gates().len());
        }
    }
}

/// The largest netlist kept in registers fits a thread's stack of 1 MiB
/// (Rust's threads get 2 MiB): its frame is bounded by `REGISTER_GATES`.
#[test]
fn the_largest_netlist_in_registers_fits_a_small_stack() {
    use lensopt::circuit::compiled::CompiledCircuit;
    use lensopt_codegen::cpu::circuit::REGISTER_GATES;
    let mut rng = SplitMix(78);
    let c = random_circuit(&mut rng, 16, 64, 4, REGISTER_GATES - 80);
    let compiled = CompiledCircuit::new(&c).unwrap();
    let params = vec![true; 64];
    let inputs: Vec<Vec<u64>> = (0..16).map(|_| vec![rng.next_u64(); 2]).collect();
    let dy: Vec<Vec<u64>> = (0..4).map(|_| vec![u64::MAX; 2]).collect();
    let mut machine = Machine::new(&c, 2).unwrap();
    let want = machine.forward(&c, &params, &inputs).unwrap();
    let want_reverse = machine.reverse(&c, &dy).unwrap();
    let got = on_a_stack_of(1 << 20, || {
        (
            compiled.forward(&params, &inputs).unwrap(),
            compiled.reverse(&params, &inputs, &dy).unwrap(),
        )
    });
    assert_eq!(got, (want, want_reverse));
}

#[test]
fn a_truth_table_reads_row_m_from_its_parameter_m() {
    use lensopt::circuit::tables::truth_table;
    let mut rng = SplitMix(90);
    for k in 0..=6 {
        let mut b = CircuitBuilder::new();
        let x: Vec<usize> = (0..k).map(|_| b.input()).collect();
        let out = truth_table(&mut b, &x).unwrap();
        let c = b.finish(vec![out]).unwrap();
        assert_eq!(c.params(), 1 << k);
        let params: Vec<bool> = (0..1 << k).map(|_| rng.next_u64() & 1 == 1).collect();
        let rows: Vec<Vec<bool>> = (0..1usize << k).map(|v| bits(v, k)).collect();
        let packed = pack(&rows, k);
        let words = packed.first().map_or(1, Vec::len);
        let mut m = Machine::new(&c, words).unwrap();
        let got = m.forward(&c, &params, &packed).unwrap();
        for (v, want) in params.iter().enumerate() {
            assert_eq!(bit(&got[0], v), *want, "k = {k}, row {v}");
        }
    }
    let mut b = CircuitBuilder::new();
    let x: Vec<usize> = (0..17).map(|_| b.input()).collect();
    assert!(truth_table(&mut b, &x).is_err(), "2^17 rows are refused");
}

/// The one-sided rule on banks of tables, against a brute-force count: row
/// `m` of a class's table `t` is set exactly when at least `at_least`
/// examples of the class spell `m` on the table's tuple.
#[test]
fn one_sided_rda_sets_the_rows_enough_examples_of_the_class_reach() {
    use lensopt::circuit::tables::Discriminators;
    let mut rng = SplitMix(91);
    let (inputs, classes, tables, tuple) = (12, 3, 6, 4);
    let x: Vec<Vec<bool>> = (0..150)
        .map(|_| bits(rng.next_u64() as usize, inputs))
        .collect();
    let labels: Vec<usize> = (0..150).map(|_| (rng.next_u64() % 3) as usize).collect();
    for at_least in [1, 2, 3] {
        for compiled in [false, true] {
            let mut d = Discriminators::new(inputs, classes, tables, tuple, 7).unwrap();
            if compiled {
                d.compile().unwrap();
            }
            d.train(&x, &labels, at_least).unwrap();
            let tuples = d.tuples().to_vec();
            let row = |e: usize, t: usize| {
                tuples[t]
                    .iter()
                    .enumerate()
                    .map(|(i, &bit)| usize::from(x[e][bit]) << i)
                    .sum::<usize>()
            };
            for c in 0..classes {
                for t in 0..tables {
                    for m in 0..1usize << tuple {
                        let count = (0..x.len())
                            .filter(|&e| labels[e] == c && row(e, t) == m)
                            .count();
                        assert_eq!(
                            d.params(c).unwrap()[t * (1 << tuple) + m],
                            count >= at_least as usize,
                            "class {c}, table {t}, row {m}, at least {at_least}"
                        );
                    }
                }
            }
            assert_eq!(
                d.train(&x, &labels, at_least).unwrap(),
                0,
                "a second epoch flips nothing"
            );
            // Scores count the set rows the example reaches; ties go to the lowest class.
            let scores = d.scores(&x).unwrap();
            for (e, s) in scores.iter().enumerate() {
                for (c, &score) in s.iter().enumerate() {
                    let want = (0..tables)
                        .filter(|&t| d.params(c).unwrap()[t * (1 << tuple) + row(e, t)])
                        .count();
                    assert_eq!(score, want);
                }
            }
            let predicted = d.predict(&x).unwrap();
            for (s, p) in scores.iter().zip(&predicted) {
                let best = *s.iter().max().unwrap();
                assert_eq!(*p, s.iter().position(|&v| v == best).unwrap());
            }
        }
    }
}

#[test]
fn discriminators_refuse_bad_shapes_and_labels_and_change_nothing() {
    use lensopt::circuit::tables::{tuple_tables, Discriminators, MAX_ROWS};
    assert!(Discriminators::new(8, 0, 4, 3, 1).is_err(), "no classes");
    assert!(tuple_tables(8, 0, 3, 1).is_err(), "no tables");
    assert!(tuple_tables(8, 4, 0, 1).is_err(), "empty tuples");
    assert!(tuple_tables(8, 4, 9, 1).is_err(), "more bits than inputs");
    assert!(
        tuple_tables(64, MAX_ROWS / 1024 + 1, 10, 1).is_err(),
        "too many rows"
    );
    let mut d = Discriminators::new(8, 2, 4, 3, 1).unwrap();
    let x = vec![vec![true; 8], vec![false; 8]];
    let before: Vec<Vec<bool>> = (0..2).map(|c| d.params(c).unwrap().to_vec()).collect();
    assert!(d.train(&x, &[0, 2], 1).is_err(), "label out of range");
    assert!(d.train(&x, &[0], 1).is_err(), "one label short");
    assert!(
        d.train(&[vec![true; 7]], &[0], 1).is_err(),
        "an example one bit short"
    );
    assert!(d.scores(&[vec![true; 9]]).is_err());
    let after: Vec<Vec<bool>> = (0..2).map(|c| d.params(c).unwrap().to_vec()).collect();
    assert_eq!(before, after);
    d.train(&x, &[0, 1], 1).unwrap();
    assert_eq!(d.predict(&x).unwrap(), vec![0, 1]);
}

/// The learner the `rda` example reports for digits 0 vs 1, on two splits:
/// one-sided discriminators on a three-level thermometer code.
#[test]
fn discriminators_tell_digits_zero_and_one_apart() {
    use lensopt::circuit::tables::Discriminators;
    let digits = lensopt::data::digits().unwrap();
    let keep: Vec<usize> = (0..digits.labels.len())
        .filter(|&i| digits.labels[i] < 2)
        .collect();
    // Pixel counts are 0..16 for every pixel of these digits' scale.
    let x: Vec<Vec<bool>> = keep
        .iter()
        .map(|&i| {
            [4.0, 8.0, 12.0]
                .iter()
                .flat_map(|&t| (0..64).map(move |j| (j, t)))
                .map(|(j, t)| digits.features[(i, j)] > t)
                .collect()
        })
        .collect();
    let labels: Vec<usize> = keep.iter().map(|&i| digits.labels[i]).collect();
    for seed in [0, 1] {
        let order = SplitMix(seed).permutation(x.len());
        let (train, test) = order.split_at(x.len() / 2);
        let pick = |idx: &[usize]| -> (Vec<Vec<bool>>, Vec<usize>) {
            (
                idx.iter().map(|&i| x[i].clone()).collect(),
                idx.iter().map(|&i| labels[i]).collect(),
            )
        };
        let ((tx, ty), (ex, ey)) = (pick(train), pick(test));
        let mut d = Discriminators::new(192, 2, 32, 6, seed).unwrap();
        d.train(&tx, &ty, 1).unwrap();
        assert_eq!(d.accuracy(&tx, &ty).unwrap(), 1.0);
        let accuracy = d.accuracy(&ex, &ey).unwrap();
        assert!(accuracy >= 0.99, "seed {seed}: test accuracy {accuracy}");
    }
}
