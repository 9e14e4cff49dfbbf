//! Scheduling: an optimized rule split into the phases a backend runs.
//!
//! - **scalar** work (const, step and tensor rates) is evaluated by the host,
//!   once per step and group or once per tensor (by the compiled backends' host code);
//! - **reduction passes**: reductions grouped by depth (a reduction whose
//!   argument needs another reduction runs one pass later), each pass one
//!   read of the tensors computing all its reductions at once;
//! - one **element pass** that computes and stores `p` and the element
//!   states that can affect anything.
//!
//! A rule without reductions is one pass over memory; one with reductions
//! takes one pass per level of nesting, the minimum its data dependencies
//! allow. The scalar values the kernels read are numbered as *slots*.

use crate::rule::*;

/// The order in which every CPU backend's reduction kernels add (the JIT's,
/// and the kernels `optimizer!` compiles, which must agree bit for bit):
/// with `L` lanes per JIT vector (4 for f32, 2 for f64), element `i` of a
/// kernel's range goes to f64 accumulator `i % (L * REDUCTION_SETS)`, and
/// the accumulators are combined in index order at the end. Kernels take
/// ranges of a multiple of `L * REDUCTION_SETS` elements; the sets are
/// independent chains of additions, so a sum is not bound by one chain's
/// latency.
pub const REDUCTION_SETS: usize = 4;

/// Most reduction passes (levels of nested reductions) code generation takes.
pub const MAX_PASSES: usize = 4096;

/// Most element operations, over all kernels of a rule, code generation takes.
pub const MAX_KERNEL_OPERATIONS: usize = 1 << 20;

/// Where a kernel output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The parameter.
    Param,
    /// Element state `i`.
    State(u16),
}

/// A rule cut into phases.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The (optimized) rule being scheduled.
    pub rule: Rule,
    /// Reduction passes, in order; each lists the `Reduce` nodes it computes.
    pub passes: Vec<Vec<ValueId>>,
    /// What the element pass stores, and from which value.
    pub outputs: Vec<(Output, ValueId)>,
    /// Non-element values that kernels read, in slot order.
    pub slots: Vec<ValueId>,
    /// True when some tensor-rate value (a reduction, `numel()`, scalar
    /// state) is needed, so scalars must be evaluated per tensor.
    pub per_tensor_scalars: bool,
}

impl Schedule {
    /// Cuts `rule` into phases. Every declared state is maintained: a state
    /// is observable (`state()`, checkpoints, a later change of
    /// specialisation), so only a state whose new value is its old one is
    /// left unwritten.
    pub fn new(rule: Rule) -> Schedule {
        let rule = broadcast_scalar_reductions(rule);
        let mut outputs = vec![(Output::Param, rule.param_out)];
        for (i, s) in rule.states.iter().enumerate() {
            if s.kind == StateKind::Element && rule.state_out[i] != state_read(&rule, i) {
                outputs.push((Output::State(i as u16), rule.state_out[i]));
            }
        }
        // Depth: how many reductions a value sits on top of.
        let mut depth = vec![0usize; rule.nodes.len()];
        for (i, node) in rule.nodes.iter().enumerate() {
            let d = node
                .op
                .args()
                .iter()
                .map(|a| depth[a.index()])
                .max()
                .unwrap_or(0);
            depth[i] = if matches!(node.op, Op::Reduce(..)) {
                d + 1
            } else {
                d
            };
        }
        let mut roots: Vec<ValueId> = outputs.iter().map(|o| o.1).collect();
        roots.extend(
            rule.states
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind == StateKind::Scalar)
                .map(|(i, _)| rule.state_out[i]),
        );
        let live = rule.reachable(&roots);
        let mut passes: Vec<Vec<ValueId>> = Vec::new();
        for (i, node) in rule.nodes.iter().enumerate() {
            if live[i] && matches!(node.op, Op::Reduce(..)) {
                let level = depth[i] - 1;
                if passes.len() <= level {
                    passes.resize(level + 1, Vec::new());
                }
                passes[level].push(ValueId(i as u32));
            }
        }
        // Slots: non-element values that element-rate nodes (of any kernel) read.
        let mut slot_of = vec![false; rule.nodes.len()];
        for (i, node) in rule.nodes.iter().enumerate() {
            if !live[i] {
                continue;
            }
            let kernel_node = node.rate == Rate::Element;
            if kernel_node && !matches!(node.op, Op::Reduce(..)) {
                for a in node.op.args() {
                    if rule.node(a).rate < Rate::Element {
                        slot_of[a.index()] = true;
                    }
                }
            }
        }
        for (_, v) in &outputs {
            if rule.node(*v).rate < Rate::Element {
                slot_of[v.index()] = true;
            }
        }
        let slots: Vec<ValueId> = (0..rule.nodes.len() as u32)
            .map(ValueId)
            .filter(|v| slot_of[v.index()])
            .collect();
        let per_tensor_scalars = rule
            .nodes
            .iter()
            .enumerate()
            .any(|(i, n)| live[i] && n.rate == Rate::Tensor);
        Schedule {
            rule,
            passes,
            outputs,
            slots,
            per_tensor_scalars,
        }
    }

    /// The buffers the kernels read (by [`buffer_of`] index), in order.
    pub fn buffers_read(&self) -> Vec<usize> {
        let mut roots: Vec<ValueId> = self.outputs.iter().map(|o| o.1).collect();
        for pass in &self.passes {
            roots.extend(pass.iter().copied());
        }
        let live = self.rule.reachable(&roots);
        let mut out: Vec<usize> = self
            .rule
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| live[*i])
            .filter_map(|(_, n)| buffer_of(&self.rule, &n.op))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The buffers the element pass writes.
    pub fn buffers_written(&self) -> Vec<usize> {
        self.outputs
            .iter()
            .map(|(o, _)| output_buffer(&self.rule, *o))
            .collect()
    }

    /// Checks the schedule against the code generators' budget: at most
    /// [`MAX_PASSES`] reduction passes and [`MAX_KERNEL_OPERATIONS`] element
    /// operations over all kernels, so that compiling any rule takes
    /// bounded time and memory. Backends call this before generating code.
    pub fn check_budget(&self) -> Result<(), String> {
        if self.rule.is_matrix() {
            return Err(format!(
                "`{}` is a matrix rule (values per row or column, matrix products): it runs on the matrix evaluator, and no kernels are generated for it",
                self.rule.name
            ));
        }
        if self.passes.len() > MAX_PASSES {
            return Err(format!(
                "the rule nests reductions {} deep, more than the {MAX_PASSES} passes code generation allows",
                self.passes.len()
            ));
        }
        let roots: Vec<ValueId> = self.outputs.iter().map(|o| o.1).collect();
        let mut operations = element_nodes(&self.rule, &roots).len();
        for pass in &self.passes {
            let args: Vec<ValueId> = pass
                .iter()
                .flat_map(|r| self.rule.node(*r).op.args())
                .collect();
            operations += element_nodes(&self.rule, &args).len();
        }
        if operations > MAX_KERNEL_OPERATIONS {
            return Err(format!(
                "the rule's kernels hold {operations} element operations, more than the {MAX_KERNEL_OPERATIONS} code generation allows"
            ));
        }
        Ok(())
    }

    /// The slot index of a value, if kernels read it.
    pub fn slot(&self, v: ValueId) -> Option<usize> {
        self.slots.iter().position(|s| *s == v)
    }
}

/// The reductions of a pass (`Schedule::passes` entry) as `(operation,
/// argument)` pairs, in the pass's order.
pub fn reductions_of(rule: &Rule, pass: &[ValueId]) -> Vec<(ReduceOp, ValueId)> {
    pass.iter()
        .map(|r| match rule.node(*r).op {
            Op::Reduce(op, _, arg) => (op, arg),
            _ => unreachable!("passes hold reductions"),
        })
        .collect()
}

/// What a kernel that computes the element nodes `nodes`, stores to the
/// buffers `written` and needs the values `roots` touches: per buffer,
/// whether it reads or writes it; per node, whether it reads its value
/// (an argument of one of `nodes`, or a root). Every backend's kernel entry
/// loads exactly these.
pub fn kernel_uses(
    rule: &Rule,
    nodes: &[usize],
    roots: &[ValueId],
    written: &[usize],
) -> (Vec<bool>, Vec<bool>) {
    let mut buffers = vec![false; buffer_count(rule)];
    for &k in written {
        buffers[k] = true;
    }
    let mut values = vec![false; rule.nodes.len()];
    for &id in nodes {
        if let Some(k) = buffer_of(rule, &rule.nodes[id].op) {
            buffers[k] = true;
        }
        for a in rule.nodes[id].op.args() {
            values[a.index()] = true;
        }
    }
    for r in roots {
        values[r.index()] = true;
    }
    (buffers, values)
}

/// The exponents of the `pow` nodes among `nodes` that are slots (the same
/// for every element), deduplicated. An element kernel with any runs one of
/// two loops, chosen at entry: when every one of them is 0.5, a loop that
/// takes those powers as square roots, which vectorize, instead of calling
/// `pow` element by element (see `crate::elementary::pow_f64`).
pub fn scalar_exponents(schedule: &Schedule, nodes: &[usize]) -> Vec<ValueId> {
    let mut exponents = Vec::new();
    for &id in nodes {
        if let Op::Binary(BinOp::Pow, _, y) = schedule.rule.nodes[id].op {
            if schedule.slot(y).is_some() && !exponents.contains(&y) {
                exponents.push(y);
            }
        }
    }
    exponents
}

/// The kernel buffer a leaf reads: `p` is 0, `g` 1, then the inputs, then
/// the states (every backend passes its buffers in this order).
pub fn buffer_of(rule: &Rule, op: &Op) -> Option<usize> {
    match *op {
        Op::Param => Some(0),
        Op::Grad => Some(1),
        Op::Input(i) => Some(2 + i as usize),
        Op::State(i) => Some(2 + rule.inputs.len() + i as usize),
        _ => None,
    }
}

/// Number of buffers a kernel of `rule` takes: `p`, `g`, the inputs, the states.
pub fn buffer_count(rule: &Rule) -> usize {
    2 + rule.inputs.len() + rule.states.len()
}

/// Element-rate nodes that `roots` need, in evaluation order, reductions
/// excluded (their results reach kernels as slots). The order is a
/// depth-first post-order from the roots, so each value is computed close
/// to its use: a long chain of terms keeps few values live at once, which
/// keeps register allocation linear in the size of the kernel.
pub fn element_nodes(rule: &Rule, roots: &[ValueId]) -> Vec<usize> {
    let in_kernel = |i: usize| {
        rule.nodes[i].rate == Rate::Element && !matches!(rule.nodes[i].op, Op::Reduce(..))
    };
    let mut done = vec![false; rule.nodes.len()];
    let mut order = Vec::new();
    // (node, whether its arguments have been pushed)
    let mut stack: Vec<(usize, bool)> = roots.iter().rev().map(|r| (r.index(), false)).collect();
    while let Some((i, expanded)) = stack.pop() {
        if done[i] {
            continue;
        }
        if !in_kernel(i) {
            done[i] = true;
            continue;
        }
        if expanded {
            done[i] = true;
            order.push(i);
            continue;
        }
        stack.push((i, true));
        for a in rule.nodes[i].op.args().iter().rev() {
            if !done[a.index()] {
                stack.push((a.index(), false));
            }
        }
    }
    order
}

/// The kernel buffer an output is stored to.
pub fn output_buffer(rule: &Rule, out: Output) -> usize {
    match out {
        Output::Param => 0,
        Output::State(s) => 2 + rule.inputs.len() + s as usize,
    }
}

fn state_read(rule: &Rule, i: usize) -> ValueId {
    rule.nodes
        .iter()
        .position(|n| n.op == Op::State(i as u16))
        .map_or(ValueId(u32::MAX), |k| ValueId(k as u32))
}

/// Gives every reduction an element-rate argument. The optimizer may fold
/// a reduction's argument to a per-step value (`sum(z * g)` with `z = 0`
/// compiled in); kernels reduce element values, so such an argument is
/// broadcast with `select(true, x, g)`, which every element evaluates to `x`
/// rounded to the element type, exactly as the interpreter does.
pub fn broadcast_scalar_reductions(rule: Rule) -> Rule {
    let scalar_arg = |op: &Op| match *op {
        Op::Reduce(_, _, a) => rule.node(a).rate < Rate::Element,
        _ => false,
    };
    if !rule.nodes.iter().any(|n| scalar_arg(&n.op)) {
        return rule;
    }
    rule.rebuild(|graph, op| match op {
        Op::Reduce(r, scope, a) if graph.nodes[a.index()].rate < Rate::Element => {
            let always = graph.add(Op::ConstBool(true), Ty::Bool, Rate::Const);
            let g = graph.add(Op::Grad, Ty::Float, Rate::Element);
            let other = match graph.nodes[a.index()].ty {
                Ty::Float => g,
                Ty::Bool => graph.interior(Op::Binary(BinOp::Eq, g, g)),
            };
            let broadcast = graph.interior(Op::Select(always, a, other));
            graph.interior(Op::Reduce(r, scope, broadcast))
        }
        op => graph.add_like(op),
    })
}
