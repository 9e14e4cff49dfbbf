//! Scheduling: an optimized rule split into the phases a backend runs.
//!
//! - **scalar** work (const, step and tensor rates) is evaluated by the host,
//!   once per step and group or once per tensor ([`crate::interp::scalar_values`]);
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
    /// Element states the element pass keeps up to date. A state whose value
    /// can never reach `p`, the view or another maintained state (Adam's
    /// `vmax` with `amsgrad` compiled out) is left as it is.
    pub live_states: Vec<bool>,
    /// True when some tensor-rate value (a reduction, `numel()`, scalar
    /// state) is needed, so scalars must be evaluated per tensor.
    pub per_tensor_scalars: bool,
}

impl Schedule {
    /// Cuts `rule` into phases, maintaining the states that `rule` can observe.
    pub fn new(rule: Rule) -> Schedule {
        let live = live_states(&rule);
        Schedule::with_live_states(rule, live)
    }

    /// Cuts `rule` into phases, maintaining the states marked in `live_states`
    /// (for a rule specialised on something that changes from step to step,
    /// such as the presence of an optional input, liveness must come from
    /// the rule without that specialisation).
    pub fn with_live_states(rule: Rule, live_states: Vec<bool>) -> Schedule {
        let mut outputs = vec![(Output::Param, rule.param_out)];
        for (i, s) in rule.states.iter().enumerate() {
            if s.kind == StateKind::Element
                && live_states[i]
                && rule.state_out[i] != state_read(&rule, i)
            {
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
            live_states,
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

    /// The slot index of a value, if kernels read it.
    pub fn slot(&self, v: ValueId) -> Option<usize> {
        self.slots.iter().position(|s| *s == v)
    }
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
/// excluded (their results reach kernels as slots).
pub fn element_nodes(rule: &Rule, roots: &[ValueId]) -> Vec<usize> {
    let live = rule.reachable(roots);
    (0..rule.nodes.len())
        .filter(|&i| {
            live[i]
                && rule.nodes[i].rate == Rate::Element
                && !matches!(rule.nodes[i].op, Op::Reduce(..))
        })
        .collect()
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

/// States to maintain: those that can influence `p` or the view, directly or
/// through other states, and those never read at all (pure outputs, whose
/// value is only there to be inspected). What is left is state read only to
/// update itself, such as Adam's `vmax` when `amsgrad` is compiled out.
pub fn live_states(rule: &Rule) -> Vec<bool> {
    let mut live: Vec<bool> = (0..rule.states.len())
        .map(|s| !rule.nodes.iter().any(|n| n.op == Op::State(s as u16)))
        .collect();
    let mut roots = vec![rule.param_out];
    roots.extend(rule.view);
    loop {
        let reach = rule.reachable(&roots);
        let mut changed = false;
        for (i, node) in rule.nodes.iter().enumerate() {
            if let Op::State(s) = node.op {
                let s = s as usize;
                if reach[i] && !live[s] {
                    live[s] = true;
                    roots.push(rule.state_out[s]);
                    changed = true;
                }
            }
        }
        if !changed {
            return live;
        }
    }
}
