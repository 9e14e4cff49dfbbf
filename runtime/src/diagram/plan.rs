//! A diagram compiled to a plan: forward values and reverse derivatives.
//!
//! The term is flattened into steps over wire registers (sequential
//! composition feeds registers on, parallel composition splits them); the
//! forward pass runs the steps in order and keeps every register, and the
//! reverse pass runs them backwards, each generator's reverse derivative
//! taking its forward inputs and the gradients of its outputs:
//! `R[f ; g](a, c) = R[f](a, R[g](f(a), c))` step by step, and
//! `R[f | g]((a, b), (c, d)) = (R[f](a, c), R[g](b, d))` by construction.
//! Gradients of a wire used twice (after `copy`) add up, as `R[copy]` says.
//! Registers and gradient buffers are allocated once per batch size.
//! Matrix products go through ndarray's GEMM; runs of element-wise
//! generators (relu, sigmoid, tanh, exp, log) are fused into JIT kernels
//! compiled by the optimizer compiler, forward and backward.

use super::{size, Diagram, DiagramError, Generator, Init, Shape, Term};
use crate::{jit, Float, Mode, Rule};
use lensopt_codegen::cpu::{Program, StepBuffers, StepPlan};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayD, Axis, IxDyn};
use std::fmt;
use std::sync::Arc;

/// Element types models run in.
/// One generator application in the plan.
#[derive(Clone, Debug)]
struct Step {
    gen: Generator,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    /// First parameter block of this generator.
    param: usize,
}

/// A deterministic generator of pseudo-random numbers (SplitMix64), for
/// initialisation and data shuffling; the same seed gives the same model.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// A parameter block: its name and value.
#[derive(Clone, Debug)]
pub struct Param<F> {
    /// `layer.weight`, `layer.bias`.
    pub name: String,
    /// The value.
    pub value: ArrayD<F>,
}

/// A diagram compiled for element type `F`, with its parameters.
#[derive(Clone, Debug)]
pub struct Model<F> {
    term: Term,
    steps: Vec<Step>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    shapes: Vec<Shape>,
    /// Parameter blocks, in the order the generators appear.
    pub params: Vec<Param<F>>,
    /// Gradients of the parameters after [`Model::backward`].
    pub grads: Vec<ArrayD<F>>,
    /// Fused element-wise chains, by the index of their first step.
    chains: Vec<Option<Chain<F>>>,
    /// Steps inside a fused chain (after its first), skipped when running.
    inside_chain: Vec<bool>,
    /// Forward values of every register for the last batch.
    values: Vec<Array2<F>>,
    /// Gradients of every register for the last backward pass.
    adjoints: Vec<Array2<F>>,
    batch: usize,
}

fn flatten(
    term: &Term,
    inputs: Vec<usize>,
    steps: &mut Vec<Step>,
    shapes: &mut Vec<Shape>,
    param: &mut usize,
) -> Vec<usize> {
    match term {
        Term::Gen(g) => {
            let outputs: Vec<usize> = g
                .cod()
                .into_iter()
                .map(|s| {
                    shapes.push(s);
                    shapes.len() - 1
                })
                .collect();
            steps.push(Step {
                gen: g.clone(),
                inputs,
                outputs: outputs.clone(),
                param: *param,
            });
            *param += g.params().len();
            outputs
        }
        Term::Seq(f, g) => {
            let mid = flatten(f, inputs, steps, shapes, param);
            flatten(g, mid, steps, shapes, param)
        }
        Term::Par(f, g) => {
            let k = f.dom().len();
            let right = inputs[k..].to_vec();
            let mut out = flatten(f, inputs[..k].to_vec(), steps, shapes, param);
            out.extend(flatten(g, right, steps, shapes, param));
            out
        }
    }
}

fn init_block<F: Float>(shape: &[usize], init: Init, rng: &mut SplitMix) -> ArrayD<F> {
    let fan_in = if shape.len() == 2 { shape[1] } else { shape[0] };
    let fan_out = shape[0];
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        let x = match init {
            Init::Zeros => 0.0,
            Init::He => rng.normal() * (2.0 / fan_in as f64).sqrt(),
            Init::Glorot => {
                let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
                (rng.uniform() * 2.0 - 1.0) * a
            }
            Init::Normal(std) => rng.normal() * std,
        };
        F::from_f64(x)
    })
}

/// A run of element-wise generators fused into two JIT kernels (through the
/// optimizer compiler): `p = f_n(...f_1(g))` forward, and
/// `p = g * f_1'(x_0) * ... * f_n'(x_{n-1})` backward, recomputing the
/// intermediate values from the chain's input `x` instead of storing them.
#[derive(Clone)]
struct Chain<F> {
    input: usize,
    output: usize,
    forward: Arc<Program<F>>,
    backward: Arc<Program<F>>,
}

impl<F> fmt::Debug for Chain<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Chain({} -> {})", self.input, self.output)
    }
}

/// Builds a chain's forward and backward kernels as rules. The forward
/// rule maps `g` (the chain's input) through the chain into `p`; the
/// backward rule takes the chain's input as input `x` and the output's
/// adjoint as `g`, and writes the input's adjoint into `p`.
fn chain_rules(ops: &[Generator]) -> Result<(Rule, Rule), String> {
    use lensopt_ir::builder::RuleBuilder;
    use lensopt_ir::{BinOp, Op, UnOp, ValueId};
    /// `op(a)` and its slope at `a` (given `b = op(a)`).
    fn value(r: &mut RuleBuilder, op: &Generator, a: ValueId) -> Result<ValueId, String> {
        let bin = |r: &mut RuleBuilder, o, x, y| r.op(Op::Binary(o, x, y));
        match op {
            Generator::Relu(_) => {
                let zero = r.constant(0.0);
                bin(r, BinOp::Max, a, zero)
            }
            Generator::Sigmoid(_) => r.op(Op::Unary(UnOp::Sigmoid, a)),
            Generator::Tanh(_) => {
                // tanh(a) = 2 sigmoid(2a) - 1
                let (one, two) = (r.constant(1.0), r.constant(2.0));
                let twice = bin(r, BinOp::Mul, two, a)?;
                let s = r.op(Op::Unary(UnOp::Sigmoid, twice))?;
                let s2 = bin(r, BinOp::Mul, two, s)?;
                bin(r, BinOp::Sub, s2, one)
            }
            Generator::Exp(_) => r.op(Op::Unary(UnOp::Exp, a)),
            _ => r.op(Op::Unary(UnOp::Ln, a)),
        }
    }
    fn slope(
        r: &mut RuleBuilder,
        op: &Generator,
        a: ValueId,
        b: ValueId,
    ) -> Result<ValueId, String> {
        let bin = |r: &mut RuleBuilder, o, x, y| r.op(Op::Binary(o, x, y));
        let one = r.constant(1.0);
        match op {
            Generator::Relu(_) => {
                let zero = r.constant(0.0);
                let positive = bin(r, BinOp::Gt, a, zero)?;
                r.op(Op::Select(positive, one, zero))
            }
            Generator::Sigmoid(_) => {
                let rest = bin(r, BinOp::Sub, one, b)?;
                bin(r, BinOp::Mul, b, rest)
            }
            Generator::Tanh(_) => {
                let sq = bin(r, BinOp::Mul, b, b)?;
                bin(r, BinOp::Sub, one, sq)
            }
            Generator::Exp(_) => Ok(b),
            _ => bin(r, BinOp::Div, one, a),
        }
    }
    let mut fwd = RuleBuilder::new("FusedForward");
    let mut x = fwd.grad();
    for op in ops {
        x = value(&mut fwd, op, x)?;
    }
    let forward = fwd.finish(x, &[])?;
    let mut bwd = RuleBuilder::new("FusedBackward");
    let mut x = bwd.input("x", false);
    let mut d = bwd.grad();
    for op in ops {
        let y = value(&mut bwd, op, x)?;
        let s = slope(&mut bwd, op, x, y)?;
        d = bwd.op(Op::Binary(BinOp::Mul, d, s))?;
        x = y;
    }
    let backward = bwd.finish(d, &[])?;
    Ok((forward, backward))
}

fn elementwise(g: &Generator) -> bool {
    matches!(
        g,
        Generator::Relu(_)
            | Generator::Sigmoid(_)
            | Generator::Tanh(_)
            | Generator::Exp(_)
            | Generator::Log(_)
    )
}

/// The chains of a plan by first step, and which steps lie inside a chain.
type Fusion<F> = (Vec<Option<Chain<F>>>, Vec<bool>);

/// Finds maximal chains of element-wise steps whose intermediate wires feed
/// nothing else, and compiles each. Returns the chains by first step, and
/// which steps lie inside a chain.
fn fuse<F: Float>(steps: &[Step], outputs: &[usize]) -> Result<Fusion<F>, DiagramError> {
    let mut readers = std::collections::HashMap::<usize, usize>::new();
    for st in steps {
        for r in &st.inputs {
            *readers.entry(*r).or_default() += 1;
        }
    }
    let private = |r: usize| readers.get(&r) == Some(&1) && !outputs.contains(&r);
    let mut chains: Vec<Option<Chain<F>>> = vec![None; steps.len()];
    let mut inside = vec![false; steps.len()];
    let mut i = 0;
    while i < steps.len() {
        if !elementwise(&steps[i].gen) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j + 1 < steps.len()
            && elementwise(&steps[j + 1].gen)
            && steps[j + 1].inputs[0] == steps[j].outputs[0]
            && private(steps[j].outputs[0])
        {
            j += 1;
        }
        let ops: Vec<Generator> = steps[i..=j].iter().map(|s| s.gen.clone()).collect();
        let (fwd, bwd) = chain_rules(&ops).map_err(DiagramError::Invalid)?;
        let compile = |rule: &Rule| -> Result<Arc<Program<F>>, DiagramError> {
            let key = jit::Key::for_step(&[Vec::new()], &vec![true; rule.inputs.len()], Mode::Fast);
            jit::program::<F>(rule, &key).map_err(|e| DiagramError::Invalid(e.to_string()))
        };
        chains[i] = Some(Chain {
            input: steps[i].inputs[0],
            output: steps[j].outputs[0],
            forward: compile(&fwd)?,
            backward: compile(&bwd)?,
        });
        for flag in &mut inside[i + 1..=j] {
            *flag = true;
        }
        i = j + 1;
    }
    Ok((chains, inside))
}

/// Runs a chain kernel: `out = kernel(grad, input)`.
fn run_chain<F: Float>(
    program: &Program<F>,
    out: &mut Array2<F>,
    grad: &Array2<F>,
    input: Option<&Array2<F>>,
) -> Result<(), String> {
    let param = out.as_slice_mut().ok_or("a register is not contiguous")?;
    let grad = grad.as_slice().ok_or("a register is not contiguous")?;
    let inputs = match input {
        Some(x) => vec![Some(x.as_slice().ok_or("a register is not contiguous")?)],
        None => Vec::new(),
    };
    let mut buffers = [StepBuffers {
        param,
        grad,
        inputs,
        states: Vec::new(),
    }];
    // The backward kernels read the forward input; the forward ones have none.
    let present: &[bool] = if program.schedule().rule.inputs.is_empty() {
        &[]
    } else {
        &[true]
    };
    let plan = StepPlan {
        t: 1,
        present,
        group_hypers: &[Vec::new()],
        group_of: &[0],
    };
    program.step(&plan, &mut buffers, &mut [Vec::new()], None)
}

fn as2<F>(a: &ArrayD<F>) -> ndarray::ArrayView2<'_, F> {
    a.view().into_dimensionality().expect("a 2-d parameter")
}

fn as1<F>(a: &ArrayD<F>) -> ndarray::ArrayView1<'_, F> {
    a.view().into_dimensionality().expect("a 1-d parameter")
}

impl<F: Float> Model<F> {
    /// Compiles `diagram`, initialising its parameters from `seed`.
    pub fn new(diagram: &Diagram, seed: u64) -> Result<Self, DiagramError> {
        let term = diagram.check()?.clone();
        let mut shapes: Vec<Shape> = term.dom();
        let inputs: Vec<usize> = (0..shapes.len()).collect();
        let mut steps = Vec::new();
        let mut param = 0;
        let outputs = flatten(&term, inputs.clone(), &mut steps, &mut shapes, &mut param);
        let mut rng = SplitMix(seed);
        let mut params = Vec::new();
        for step in &steps {
            for (name, shape, init) in step.gen.params() {
                params.push(Param {
                    name,
                    value: init_block(&shape, init, &mut rng),
                });
            }
        }
        let grads = params
            .iter()
            .map(|p| ArrayD::zeros(p.value.raw_dim()))
            .collect();
        let (chains, inside_chain) = fuse::<F>(&steps, &outputs)?;
        Ok(Model {
            term,
            steps,
            inputs,
            outputs,
            shapes,
            params,
            grads,
            chains,
            inside_chain,
            values: Vec::new(),
            adjoints: Vec::new(),
            batch: usize::MAX,
        })
    }

    /// The diagram's input wires.
    pub fn dom(&self) -> Vec<Shape> {
        self.term.dom()
    }

    /// The diagram's output wires.
    pub fn cod(&self) -> Vec<Shape> {
        self.term.cod()
    }

    /// Total number of parameters.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    fn ensure_batch(&mut self, batch: usize) {
        if self.batch != batch {
            self.values = self
                .shapes
                .iter()
                .map(|s| Array2::zeros((batch, size(s))))
                .collect();
            self.adjoints = self
                .shapes
                .iter()
                .map(|s| Array2::zeros((batch, size(s))))
                .collect();
            self.batch = batch;
        }
    }

    /// Runs the diagram on a batch: one matrix (examples × values) per input
    /// wire. Returns the output wires' values.
    pub fn forward(&mut self, inputs: &[Array2<F>]) -> Result<Vec<Array2<F>>, DiagramError> {
        let dom = self.dom();
        if inputs.len() != dom.len() {
            return Err(DiagramError::Invalid(format!(
                "the diagram takes {} input wires, got {}",
                dom.len(),
                inputs.len()
            )));
        }
        let batch = inputs.first().map_or(1, |x| x.nrows());
        for (k, (x, s)) in inputs.iter().zip(&dom).enumerate() {
            if x.nrows() != batch || x.ncols() != size(s) {
                return Err(DiagramError::Invalid(format!(
                    "input {k} is {}x{}, expected {batch} examples of {} values (shape {s:?})",
                    x.nrows(),
                    x.ncols(),
                    size(s)
                )));
            }
        }
        self.ensure_batch(batch);
        for (r, x) in self.inputs.clone().into_iter().zip(inputs) {
            self.values[r].assign(x);
        }
        for i in 0..self.steps.len() {
            if self.inside_chain[i] {
                continue;
            }
            match self.chains[i].clone() {
                Some(chain) => {
                    let mut out = std::mem::take(&mut self.values[chain.output]);
                    let result =
                        run_chain(&chain.forward, &mut out, &self.values[chain.input], None);
                    self.values[chain.output] = out;
                    result.map_err(DiagramError::Invalid)?;
                }
                None => self.forward_step(i),
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|r| self.values[*r].clone())
            .collect())
    }

    fn forward_step(&mut self, i: usize) {
        let step = &self.steps[i];
        if let Generator::Linear { .. } | Generator::Dense { .. } = step.gen {
            // y = x Wᵀ (+ b), written into the output register: no allocation.
            let (input, output, param) = (step.inputs[0], step.outputs[0], step.param);
            let mut y = std::mem::take(&mut self.values[output]);
            let w = as2(&self.params[param].value);
            general_mat_mul(
                F::from_f64(1.0),
                &self.values[input],
                &w.t(),
                F::default(),
                &mut y,
            );
            if let Generator::Dense { .. } = step.gen {
                y += &as1(&self.params[param + 1].value);
            }
            self.values[output] = y;
            return;
        }
        let x = |k: usize| &self.values[step.inputs[k]];
        let p = |k: usize| &self.params[step.param + k].value;
        let out: Vec<Array2<F>> = match &step.gen {
            Generator::Linear { .. } | Generator::Dense { .. } => unreachable!("GEMM above"),
            Generator::Relu(_)
            | Generator::Sigmoid(_)
            | Generator::Tanh(_)
            | Generator::Exp(_)
            | Generator::Log(_) => unreachable!("element-wise steps run as fused chains"),
            Generator::Bias { .. } => vec![x(0) + &as1(p(0))],
            Generator::MatMul { m, k, n } => {
                let (a, b) = (x(0), x(1));
                let mut y = Array2::zeros((a.nrows(), m * n));
                for e in 0..a.nrows() {
                    let am = a.row(e).into_shape_with_order((*m, *k)).expect("shape");
                    let bm = b.row(e).into_shape_with_order((*k, *n)).expect("shape");
                    let prod = am.dot(&bm);
                    y.row_mut(e)
                        .assign(&prod.into_shape_with_order(m * n).expect("shape"));
                }
                vec![y]
            }
            Generator::Add(_) => vec![x(0) + x(1)],
            Generator::Mul(_) => vec![x(0) * x(1)],
            Generator::Copy(_) => vec![x(0).clone(), x(0).clone()],
            Generator::Discard(_) => vec![],
            Generator::Swap(..) => vec![x(1).clone(), x(0).clone()],
            Generator::Identity(_) | Generator::Reshape(..) => vec![x(0).clone()],
            Generator::Softmax(_) => vec![softmax_rows(x(0))],
            Generator::Sum(_) => vec![x(0).sum_axis(Axis(1)).insert_axis(Axis(1))],
            Generator::Broadcast(n) => {
                let col = x(0).column(0).to_owned();
                vec![Array2::from_shape_fn((col.len(), *n), |(e, _)| col[e])]
            }
        };
        for (r, v) in step.outputs.clone().into_iter().zip(out) {
            self.values[r] = v;
        }
    }

    /// The reverse derivative of the last forward pass: given the gradients
    /// of the outputs (one matrix per output wire), stores the parameters'
    /// gradients in [`Model::grads`] and returns the inputs' gradients.
    pub fn backward(&mut self, output_grads: &[Array2<F>]) -> Result<Vec<Array2<F>>, DiagramError> {
        if self.batch == usize::MAX {
            return Err(DiagramError::Invalid(
                "backward before any forward pass".into(),
            ));
        }
        if output_grads.len() != self.outputs.len() {
            return Err(DiagramError::Invalid(format!(
                "the diagram has {} output wires, got {} gradients",
                self.outputs.len(),
                output_grads.len()
            )));
        }
        for a in &mut self.adjoints {
            a.fill(F::default());
        }
        for (k, (r, g)) in self.outputs.iter().zip(output_grads).enumerate() {
            if g.dim() != self.adjoints[*r].dim() {
                return Err(DiagramError::Invalid(format!(
                    "gradient {k} is {:?}, the output is {:?}",
                    g.dim(),
                    self.adjoints[*r].dim()
                )));
            }
            self.adjoints[*r] += g;
        }
        for g in &mut self.grads {
            g.fill(F::default());
        }
        for i in (0..self.steps.len()).rev() {
            if self.inside_chain[i] {
                continue;
            }
            match self.chains[i].clone() {
                Some(chain) => {
                    let mut dx = Array2::zeros(self.values[chain.input].dim());
                    run_chain(
                        &chain.backward,
                        &mut dx,
                        &self.adjoints[chain.output],
                        Some(&self.values[chain.input]),
                    )
                    .map_err(DiagramError::Invalid)?;
                    self.adjoints[chain.input] += &dx;
                }
                None => self.reverse_step(i),
            }
        }
        Ok(self
            .inputs
            .iter()
            .map(|r| self.adjoints[*r].clone())
            .collect())
    }

    /// `R[generator]`: input gradients (added to the registers' adjoints) and
    /// parameter gradients, from forward inputs and output gradients.
    fn reverse_step(&mut self, i: usize) {
        if let Generator::Linear { .. } | Generator::Dense { .. } = self.steps[i].gen {
            // dW += dyᵀ x, db += Σ dy, dx += dy W: accumulated in place.
            let one = F::from_f64(1.0);
            let (input, output, param) = (
                self.steps[i].inputs[0],
                self.steps[i].outputs[0],
                self.steps[i].param,
            );
            let dy = std::mem::take(&mut self.adjoints[output]);
            {
                let mut dw = self.grads[param]
                    .view_mut()
                    .into_dimensionality::<ndarray::Ix2>()
                    .expect("a 2-d parameter");
                general_mat_mul(one, &dy.t(), &self.values[input], one, &mut dw);
            }
            if let Generator::Dense { .. } = self.steps[i].gen {
                for (b, g) in self.grads[param + 1].iter_mut().zip(dy.sum_axis(Axis(0))) {
                    *b += g;
                }
            }
            let w = as2(&self.params[param].value);
            general_mat_mul(one, &dy, &w, one, &mut self.adjoints[input]);
            self.adjoints[output] = dy;
            return;
        }
        let step = self.steps[i].clone();
        let x = |k: usize| &self.values[step.inputs[k]];
        let y = |k: usize| &self.values[step.outputs[k]];
        let dy = |k: usize| &self.adjoints[step.outputs[k]];
        let mut dparams: Vec<ArrayD<F>> = Vec::new();
        let dx: Vec<Array2<F>> = match &step.gen {
            Generator::Linear { .. } | Generator::Dense { .. } => unreachable!("GEMM above"),
            Generator::Relu(_)
            | Generator::Sigmoid(_)
            | Generator::Tanh(_)
            | Generator::Exp(_)
            | Generator::Log(_) => unreachable!("element-wise steps run as fused chains"),
            Generator::Bias { .. } => {
                dparams.push(dy(0).sum_axis(Axis(0)).into_dyn());
                vec![dy(0).clone()]
            }
            Generator::MatMul { m, k, n } => {
                let (a, b, g) = (x(0), x(1), dy(0));
                let mut da = Array2::zeros(a.dim());
                let mut db = Array2::zeros(b.dim());
                for e in 0..a.nrows() {
                    let am = a.row(e).into_shape_with_order((*m, *k)).expect("shape");
                    let bm = b.row(e).into_shape_with_order((*k, *n)).expect("shape");
                    let gm = g.row(e).into_shape_with_order((*m, *n)).expect("shape");
                    da.row_mut(e)
                        .assign(&gm.dot(&bm.t()).into_shape_with_order(m * k).expect("shape"));
                    db.row_mut(e)
                        .assign(&am.t().dot(&gm).into_shape_with_order(k * n).expect("shape"));
                }
                vec![da, db]
            }
            Generator::Add(_) => vec![dy(0).clone(), dy(0).clone()],
            Generator::Mul(_) => vec![dy(0) * x(1), dy(0) * x(0)],
            Generator::Copy(_) => vec![dy(0) + dy(1)],
            Generator::Discard(_) => vec![Array2::zeros(x(0).dim())],
            Generator::Swap(..) => vec![dy(1).clone(), dy(0).clone()],
            Generator::Identity(_) | Generator::Reshape(..) => vec![dy(0).clone()],
            Generator::Softmax(_) => {
                // dx = s * (dy - <dy, s>) per example.
                let s = y(0);
                let inner = (dy(0) * s).sum_axis(Axis(1)).insert_axis(Axis(1));
                vec![s * &(dy(0) - &inner)]
            }
            Generator::Sum(_) => {
                let n = x(0).ncols();
                let g = dy(0).column(0).to_owned();
                vec![Array2::from_shape_fn((g.len(), n), |(e, _)| g[e])]
            }
            Generator::Broadcast(_) => vec![dy(0).sum_axis(Axis(1)).insert_axis(Axis(1))],
        };
        for (k, d) in dparams.into_iter().enumerate() {
            self.grads[step.param + k] += &d;
        }
        for (r, d) in step.inputs.iter().zip(dx) {
            self.adjoints[*r] += &d;
        }
    }

    /// Runs forward on one input wire and returns the first output wire
    /// (the common case of a model `[features] → [outputs]`).
    pub fn predict(&mut self, x: &Array2<F>) -> Result<Array2<F>, DiagramError> {
        let mut out = self.forward(std::slice::from_ref(x))?;
        if out.is_empty() {
            return Err(DiagramError::Invalid(
                "the diagram has no output wire".into(),
            ));
        }
        Ok(out.swap_remove(0))
    }

    /// All parameters, block after block, as one vector.
    pub fn flat_params(&self) -> Vec<F> {
        self.params
            .iter()
            .flat_map(|p| p.value.iter().copied())
            .collect()
    }

    /// Sets all parameters from one vector (the layout of [`Model::flat_params`]);
    /// extra values are ignored, missing ones leave parameters as they are.
    pub fn set_flat_params(&mut self, values: &[F]) {
        let mut it = values.iter();
        for p in &mut self.params {
            for v in p.value.iter_mut() {
                match it.next() {
                    Some(x) => *v = *x,
                    None => return,
                }
            }
        }
    }

    /// The parameters' gradients of the last backward pass, as one vector.
    pub fn flat_grads(&self) -> Vec<F> {
        self.grads.iter().flat_map(|g| g.iter().copied()).collect()
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&ArrayD<F>> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.value)
    }

    /// Rows `from..to` of a matrix, as an owned batch.
    pub fn rows(x: &Array2<F>, from: usize, to: usize) -> Array2<F> {
        x.slice(s![from..to, ..]).to_owned()
    }
}

/// Softmax of each row, shifted by the row's maximum for stability.
pub fn softmax_rows<F: Float>(x: &Array2<F>) -> Array2<F> {
    let mut out = x.clone();
    for mut row in out.rows_mut() {
        let max =
            row.iter().copied().fold(
                F::from_f64(f64::NEG_INFINITY),
                |a, b| if b > a { b } else { a },
            );
        row.mapv_inplace(|v| (v - max).exp());
        let total = row.iter().copied().fold(F::default(), |a, b| a + b);
        row.mapv_inplace(|v| v / total);
    }
    out
}
