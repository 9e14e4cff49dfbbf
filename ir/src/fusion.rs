//! Fusion of a matrix rule's element-wise work: which per-element nodes run
//! together as one kernel, and the element rule each kernel is.
//!
//! The matrix evaluator ([`crate::matrix`]) computes a node at a time, one
//! pass over memory each. Between its GEMMs and axis reductions a matrix
//! rule is mostly element-wise arithmetic on `rows × cols` arrays, which the
//! element rules' JIT fuses into one pass. A [`Plan`] finds those runs: a
//! *kernel* is a tree of per-element operations (unary, binary, `fma`, and
//! `select` on a per-element condition) on arrays of one shape (the
//! tensor's, or a matrix's such as a Gram matrix) whose inner nodes are
//! used only inside it, over *leaves* that are whole arrays of that shape
//! or scalars. Each kernel is written as an ordinary element rule (its array
//! leaves are inputs `x0, x1...`, its scalar leaves hyperparameters `s0,
//! s1...`, its root the new `p`), which any element backend compiles.
//!
//! Left out, so that the evaluator keeps what makes it cheap: a `select` on
//! a scalar condition (only its taken branch is computed), operands that
//! broadcast along an axis (a row or column value), and optional inputs
//! (absent, they are no array).

use crate::builder::RuleBuilder;
use crate::rule::*;
use crate::HyperValue;

/// One fused kernel of a matrix rule.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The node the kernel computes.
    pub root: ValueId,
    /// Its array leaves (the rule's inputs `x0, x1...`, in order).
    pub arrays: Vec<ValueId>,
    /// Its scalar leaves (the rule's hyperparameters `s0, s1...`, in order).
    pub scalars: Vec<ValueId>,
    /// The element rule computing the root from the leaves.
    pub rule: Rule,
    /// How many operations it fuses.
    pub operations: usize,
}

/// The kernels of a matrix rule, by root.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Every kernel, roots in node order.
    pub kernels: Vec<Kernel>,
    /// For each node: the index of the kernel it is the root of.
    root_of: Vec<Option<usize>>,
}

impl Plan {
    /// The kernel computing node `v`, if `v` is a kernel's root.
    pub fn kernel(&self, v: ValueId) -> Option<&Kernel> {
        self.root_of
            .get(v.index())
            .copied()
            .flatten()
            .map(|k| &self.kernels[k])
    }

    /// Finds the kernels of `rule` (none for an element rule: the JIT
    /// already fuses the whole of it). Kernels of one operation are left
    /// to the evaluator where its own loop is as fast (see `slow_alone`).
    pub fn new(rule: &Rule) -> Plan {
        let n = rule.nodes.len();
        if !rule.is_matrix() {
            return Plan::default();
        }
        let scalar = |v: ValueId| !rule.node(v).rate.is_array();
        let optional_input = |v: ValueId| matches!(rule.node(v).op, Op::Input(i) if rule.inputs[i as usize].optional);
        // Arrays of one shape (the tensor's, or a square matrix's), with
        // operands of that same shape or scalars: flat buffers of one length.
        let fusable: Vec<bool> = rule
            .nodes
            .iter()
            .map(|node| {
                node.rate.is_array()
                    && match node.op {
                        Op::Unary(..) | Op::Binary(..) | Op::Fma(..) => true,
                        Op::Select(c, ..) => !scalar(c),
                        _ => false,
                    }
                    && node.op.args().iter().all(|&a| {
                        (scalar(a) || rule.node(a).rate == node.rate) && !optional_input(a)
                    })
            })
            .collect();
        // Uses of each node by the step's values (roots count as a use).
        let mut uses = vec![0usize; n];
        let mut consumer: Vec<Option<usize>> = vec![None; n];
        let live = rule.reachable(&rule.step_roots());
        for (i, node) in rule.nodes.iter().enumerate() {
            if !live[i] {
                continue;
            }
            for a in node.op.args() {
                uses[a.index()] += 1;
                consumer[a.index()] = Some(i);
            }
        }
        for r in rule.step_roots().iter().chain(rule.view.iter()) {
            uses[r.index()] += 1;
        }
        // A fusable node used once, by a fusable node, joins that node's kernel.
        let mut owner: Vec<Option<usize>> = vec![None; n];
        for i in (0..n).rev() {
            if !live[i] || !fusable[i] {
                continue;
            }
            owner[i] = match consumer[i] {
                Some(c) if uses[i] == 1 && fusable[c] => owner[c],
                _ => Some(i),
            };
        }
        let mut plan = Plan {
            kernels: Vec::new(),
            root_of: vec![None; n],
        };
        let mut members_of: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, o) in owner.iter().enumerate() {
            if let Some(root) = o {
                members_of[*root].push(i);
            }
        }
        for (root, members) in members_of.iter().enumerate() {
            if members.is_empty() || (members.len() < 2 && !slow_alone(rule.nodes[root].op)) {
                continue;
            }
            if let Some(kernel) = build(rule, root, members, &owner) {
                plan.root_of[root] = Some(plan.kernels.len());
                plan.kernels.push(kernel);
            }
        }
        plan
    }
}

/// Whether one operation alone is worth a kernel: the evaluator's loops
/// vectorize `+ - * /`, negation, `sqrt`, `rsqrt` and `abs`, but call a
/// function per element for the rest (`fma` among them, without the FMA
/// instructions; `bf16` through f64; comparisons and `select` by lane).
fn slow_alone(op: Op) -> bool {
    match op {
        Op::Binary(b, ..) => !matches!(b, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div),
        Op::Unary(u, _) => !matches!(u, UnOp::Neg | UnOp::Sqrt | UnOp::Rsqrt | UnOp::Abs),
        _ => true,
    }
}

/// The element rule of the kernel rooted at `root` with `members` (in node order).
fn build(rule: &Rule, root: usize, members: &[usize], owner: &[Option<usize>]) -> Option<Kernel> {
    let mut b = RuleBuilder::new(&format!("{}_kernel_{root}", rule.name));
    let mut map: std::collections::HashMap<u32, ValueId> = std::collections::HashMap::new();
    let (mut arrays, mut scalars) = (Vec::new(), Vec::new());
    for &i in members {
        for a in rule.nodes[i].op.args() {
            if owner[a.index()] == Some(root) || map.contains_key(&a.0) {
                continue;
            }
            let leaf = rule.node(a);
            let v = match leaf.op {
                Op::Const(x) => b.constant(x),
                _ if leaf.rate.is_array() => {
                    let v = b.input(&format!("x{}", arrays.len()), false);
                    arrays.push(a);
                    v
                }
                _ => {
                    let default = match leaf.ty {
                        Ty::Float => HyperValue::Num(1.0),
                        Ty::Bool => HyperValue::Bool(true),
                    };
                    let v = b.hyper(&format!("s{}", scalars.len()), default);
                    scalars.push(a);
                    v
                }
            };
            map.insert(a.0, v);
        }
        let op = rule.nodes[i].op.map_args(|a| map[&a.0]);
        let v = b.op(op).ok()?;
        map.insert(i as u32, v);
    }
    let out = map[&(root as u32)];
    let kernel_rule = b.finish(out, &[]).ok()?;
    Some(Kernel {
        root: ValueId(root as u32),
        arrays,
        scalars,
        rule: kernel_rule,
        operations: members.len(),
    })
}
