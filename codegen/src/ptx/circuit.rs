//! The bit-sliced circuit kernels: a boolean circuit's forward and reverse
//! passes, one thread per 64-bit word of examples.

use super::text::header;
use super::{PtxError, PtxModule};
use std::fmt::Write;

/// PTX of a boolean circuit's forward and reverse passes, bit-sliced: one
/// thread per 64-bit word of examples (`words` of them), every gate one
/// `and.b64` / `xor.b64` / `not.b64`. Layouts as the CPU's
/// (`[row][word]`): `circuit_forward(inputs, params, outputs, words)` and
/// `circuit_reverse(inputs, params, dy, dparams, dinputs, words)`, where
/// `params[j]` is all ones or zeros. An error for an unknown `target`.
pub fn emit_circuit(
    circuit: &lensopt_ir::circuit::Circuit,
    target: &str,
) -> Result<PtxModule, PtxError> {
    use lensopt_ir::circuit::Gate;
    let n = circuit.gates().len();
    let mut text = header(target)?;
    for reverse in [false, true] {
        let name = if reverse {
            "circuit_reverse"
        } else {
            "circuit_forward"
        };
        let params = if reverse {
            ".param .u64 inputs, .param .u64 params, .param .u64 dy, .param .u64 dparams, .param .u64 dinputs, .param .u64 words"
        } else {
            ".param .u64 inputs, .param .u64 params, .param .u64 outputs, .param .u64 words"
        };
        let mut b = String::new();
        let mut line = |s: String| {
            b.push('\t');
            b.push_str(&s);
            b.push('\n');
        };
        line(format!(".reg .b64 %v<{}>;", n + 1));
        line(format!(".reg .b64 %a<{}>;", n + 1));
        line(".reg .u64 %rd<16>;".into());
        line(".reg .u32 %r<8>;".into());
        line(".reg .pred %p<2>;".into());
        line("ld.param.u64 %rd1, [inputs];".into());
        line("ld.param.u64 %rd2, [params];".into());
        line("ld.param.u64 %rd3, [words];".into());
        let pointers: &[(&str, &str)] = if reverse {
            &[("%rd4", "dy"), ("%rd5", "dparams"), ("%rd6", "dinputs")]
        } else {
            &[("%rd4", "outputs")]
        };
        for (reg, name) in pointers {
            line(format!("ld.param.u64 {reg}, [{name}];"));
        }
        for reg in ["%rd1", "%rd2"]
            .iter()
            .chain(pointers.iter().map(|(r, _)| r))
        {
            line(format!("cvta.to.global.u64 {reg}, {reg};"));
        }
        line("mov.u32 %r1, %ctaid.x;".into());
        line("mov.u32 %r2, %ntid.x;".into());
        line("mov.u32 %r3, %tid.x;".into());
        line("mul.wide.u32 %rd7, %r1, %r2;".into());
        line("cvt.u64.u32 %rd8, %r3;".into());
        line("add.u64 %rd7, %rd7, %rd8;".into());
        line("setp.ge.u64 %p1, %rd7, %rd3;".into());
        line("@%p1 bra DONE;".into());
        // %rd9 = this word's byte offset in a row; %rd10 = a row's length in bytes.
        line("mul.lo.u64 %rd9, %rd7, 8;".into());
        line("mul.lo.u64 %rd10, %rd3, 8;".into());
        let row = |line: &mut dyn FnMut(String), base: &str, r: usize| {
            line(format!("mad.lo.u64 %rd11, %rd10, {r}, {base};"));
            line("add.u64 %rd11, %rd11, %rd9;".into());
        };
        for (w, gate) in circuit.gates().iter().enumerate() {
            match *gate {
                Gate::Input(i) => {
                    row(&mut line, "%rd1", i);
                    line(format!("ld.global.b64 %v{w}, [%rd11];"));
                }
                Gate::Param(j) => line(format!("ld.global.b64 %v{w}, [%rd2+{}];", j * 8)),
                Gate::Zero => line(format!("mov.b64 %v{w}, 0;")),
                Gate::One => line(format!("mov.b64 %v{w}, -1;")),
                Gate::And(x, y) => line(format!("and.b64 %v{w}, %v{x}, %v{y};")),
                Gate::Xor(x, y) => line(format!("xor.b64 %v{w}, %v{x}, %v{y};")),
                Gate::Not(x) => line(format!("not.b64 %v{w}, %v{x};")),
            }
        }
        if !reverse {
            for (o, w) in circuit.outputs().iter().enumerate() {
                row(&mut line, "%rd4", o);
                line(format!("st.global.b64 [%rd11], %v{w};"));
            }
        } else {
            // Adjoints start at 0; outputs seed them (shared wires XOR: R[copy]).
            for w in 0..n {
                line(format!("mov.b64 %a{w}, 0;"));
            }
            for (o, w) in circuit.outputs().iter().enumerate() {
                row(&mut line, "%rd4", o);
                line(format!("ld.global.b64 %v{n}, [%rd11];"));
                line(format!("xor.b64 %a{w}, %a{w}, %v{n};"));
            }
            for (w, gate) in circuit.gates().iter().enumerate().rev() {
                match *gate {
                    Gate::Input(_) | Gate::Param(_) => {
                        let (base, r) = match *gate {
                            Gate::Input(i) => ("%rd6", i),
                            Gate::Param(j) => ("%rd5", j),
                            _ => unreachable!("matched above"),
                        };
                        row(&mut line, base, r);
                        line(format!("st.global.b64 [%rd11], %a{w};"));
                    }
                    Gate::Zero | Gate::One => {}
                    Gate::And(x, y) => {
                        line(format!("and.b64 %v{n}, %v{y}, %a{w};"));
                        line(format!("xor.b64 %a{x}, %a{x}, %v{n};"));
                        line(format!("and.b64 %v{n}, %v{x}, %a{w};"));
                        line(format!("xor.b64 %a{y}, %a{y}, %v{n};"));
                    }
                    Gate::Xor(x, y) => {
                        line(format!("xor.b64 %a{x}, %a{x}, %a{w};"));
                        line(format!("xor.b64 %a{y}, %a{y}, %a{w};"));
                    }
                    Gate::Not(x) => line(format!("xor.b64 %a{x}, %a{x}, %a{w};")),
                }
            }
        }
        b.push_str("DONE:\n\tret;\n");
        let _ = write!(text, ".visible .entry {name}({params})\n{{\n{b}}}\n\n");
    }
    Ok(PtxModule {
        text,
        kernels: vec!["circuit_forward".into(), "circuit_reverse".into()],
    })
}
