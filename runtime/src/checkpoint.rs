//! Checkpoints: a model's parameters and an optimizer's state in one
//! safetensors file, so that training can stop and resume bit for bit.
//!
//! Layout (little-endian, as safetensors requires):
//!
//! | tensor              | dtype      | contents                                   |
//! |---------------------|------------|--------------------------------------------|
//! | `param.{name}`      | F32 or F64 | each named parameter                       |
//! | `state.{i}.{state}` | F32 or F64 | per-element state `state` of tensor `i`    |
//! | `state.{i}.{state}` | F64, `[]`  | scalar state (scalars are always f64)      |
//!
//! The header's metadata holds `format` (`lensopt.checkpoint.v1`), `rule`
//! (its name), `rule_fingerprint` (FNV-1a of the checked IR's text, so two
//! rules with one name are told apart), `dtype`, `t` (steps taken),
//! `skipped`, `shapes` and `hypers` (JSON: every group's values and which
//! group each tensor is in), and the caller's own entries as `user.{key}`.
//!
//! Loading checks everything (format, rule, fingerprint, element type,
//! parameter names, shapes, groups) before it writes anything: a checkpoint
//! of another rule or other shapes is refused with [`Error::Checkpoint`] and
//! the model and optimizer are left as they were. Saving writes a temporary
//! file beside the target and renames it, so a crash never leaves half a
//! checkpoint under the real name.

use crate::error::Error;
use crate::optimizer::{hyper_from_json, hyper_to_json};
use crate::stepper::Stepper;
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use lensopt_ir::interp::StateBuf;
use lensopt_ir::{Rule, StateKind};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The `format` entry of a lensopt checkpoint.
pub const FORMAT: &str = "lensopt.checkpoint.v1";

/// A stable fingerprint of a rule: FNV-1a (64 bits, hex) of its checked IR
/// as [`Rule`]'s `Display` prints it.
pub fn fingerprint(rule: &Rule) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn fail(message: impl Into<String>) -> Error {
    Error::Checkpoint(message.into())
}

fn dtype_of<F: Float>() -> Dtype {
    if F::NAME == "f32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

fn encode<F: Float>(xs: &[F]) -> Vec<u8> {
    if F::NAME == "f32" {
        // f32 -> f64 -> f32 is exact.
        xs.iter()
            .flat_map(|x| (x.to_f64() as f32).to_le_bytes())
            .collect()
    } else {
        xs.iter().flat_map(|x| x.to_f64().to_le_bytes()).collect()
    }
}

fn decode<F: Float>(bytes: &[u8]) -> Vec<F> {
    if F::NAME == "f32" {
        bytes
            .chunks_exact(4)
            .map(|c| F::from_f64(f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
            .collect()
    } else {
        bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                F::from_f64(f64::from_le_bytes(b))
            })
            .collect()
    }
}

/// The checkpoint of `params` (by name) and `optimizer`, as safetensors bytes.
pub fn to_bytes<F: Float>(
    params: &[(&str, &dyn TensorRef<F>)],
    optimizer: &Stepper<F>,
    user: &BTreeMap<String, String>,
) -> Result<Vec<u8>, Error> {
    let rule = optimizer.rule();
    let (groups, group_of, state) = (
        optimizer.group_values(),
        optimizer.group_of(),
        optimizer.state_buffers(),
    );
    let mut names: Vec<String> = Vec::new();
    let mut blobs: Vec<(Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, p) in params {
        let data = p.elements().ok_or_else(|| {
            fail(format!(
                "parameter `{name}` is not contiguous in standard order"
            ))
        })?;
        let key = format!("param.{name}");
        if names.contains(&key) {
            return Err(fail(format!("two parameters are called `{name}`")));
        }
        names.push(key);
        blobs.push((dtype_of::<F>(), p.shape().to_vec(), encode(data)));
    }
    for (i, bufs) in state.iter().enumerate() {
        for (decl, buf) in rule.states.iter().zip(bufs) {
            names.push(format!("state.{i}.{}", decl.name));
            blobs.push(match buf {
                StateBuf::Element(v) => (
                    dtype_of::<F>(),
                    optimizer.shape(i).unwrap_or(&[]).to_vec(),
                    encode(v),
                ),
                StateBuf::Scalar(x) => (Dtype::F64, Vec::new(), x.to_le_bytes().to_vec()),
            });
        }
    }
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("rule".into(), rule.name.clone());
    meta.insert("rule_fingerprint".into(), fingerprint(rule));
    meta.insert("dtype".into(), F::NAME.into());
    meta.insert("t".into(), optimizer.t().to_string());
    meta.insert("skipped".into(), optimizer.skipped().to_string());
    let shapes: Vec<&[usize]> = (0..optimizer.len())
        .map(|i| optimizer.shape(i).unwrap_or(&[]))
        .collect();
    meta.insert("shapes".into(), json!(shapes).to_string());
    let hyper_names: Vec<&str> = rule.hypers.iter().map(|h| h.name.as_str()).collect();
    let group_values: Vec<Vec<Value>> = groups
        .iter()
        .map(|g| g.iter().copied().map(hyper_to_json).collect())
        .collect();
    meta.insert(
        "hypers".into(),
        json!({"names": hyper_names, "groups": group_values, "group_of": group_of}).to_string(),
    );
    for (k, v) in user {
        meta.insert(format!("user.{k}"), v.clone());
    }
    let views = names
        .iter()
        .zip(&blobs)
        .map(|(n, (dtype, shape, bytes))| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| fail(format!("cannot encode `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| fail(format!("cannot encode: {e}")))
}

/// Writes the checkpoint of `params` and `optimizer` to `path` (through a
/// temporary file and a rename). `user` entries come back from [`load`].
pub fn save<F: Float>(
    path: &Path,
    params: &[(&str, &dyn TensorRef<F>)],
    optimizer: &Stepper<F>,
    user: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let bytes = to_bytes(params, optimizer, user)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(format!("cannot write {}: {e}", path.display()))
        })
}

/// Reads the checkpoint at `path` into `params` (by name) and `optimizer`;
/// returns the caller's entries given to [`save`]. On any error nothing changes.
pub fn load<F: Float>(
    path: &Path,
    params: &mut [(&str, &mut dyn TensorMut<F>)],
    optimizer: &mut Stepper<F>,
) -> Result<BTreeMap<String, String>, Error> {
    let bytes =
        std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    from_bytes(&bytes, params, optimizer).map_err(|e| match e {
        Error::Checkpoint(m) => fail(format!("{}: {m}", path.display())),
        other => other,
    })
}

fn meta<'m>(m: &'m HashMap<String, String>, key: &str) -> Result<&'m str, Error> {
    m.get(key)
        .map(String::as_str)
        .ok_or_else(|| fail(format!("the checkpoint has no `{key}` entry")))
}

fn parse_json(text: &str, key: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| fail(format!("the `{key}` entry is malformed: {e}")))
}

fn tensor_data<'a>(
    file: &SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    what: &str,
) -> Result<&'a [u8], Error> {
    let view = file
        .tensor(name)
        .map_err(|_| fail(format!("the checkpoint has no {what} (`{name}`)")))?;
    if view.dtype() != dtype {
        return Err(fail(format!(
            "{what} is {:?} in the checkpoint, {dtype:?} here",
            view.dtype()
        )));
    }
    if view.shape() != shape {
        return Err(fail(format!(
            "{what} has shape {:?} in the checkpoint, {shape:?} here",
            view.shape()
        )));
    }
    Ok(view.data())
}

/// [`load`] from bytes already in memory.
pub fn from_bytes<F: Float>(
    bytes: &[u8],
    params: &mut [(&str, &mut dyn TensorMut<F>)],
    optimizer: &mut Stepper<F>,
) -> Result<BTreeMap<String, String>, Error> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| fail(format!("not a safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| fail(format!("not a safetensors file ({e})")))?;
    let empty = HashMap::new();
    let m = header.metadata().as_ref().unwrap_or(&empty);
    if m.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(fail(format!(
            "not a lensopt checkpoint (its `format` entry is not `{FORMAT}`)"
        )));
    }
    let rule = optimizer.rule().clone();
    let (name, print) = (meta(m, "rule")?, meta(m, "rule_fingerprint")?);
    if name != rule.name {
        return Err(fail(format!(
            "the checkpoint is of optimizer `{name}`, not `{}`",
            rule.name
        )));
    }
    if print != fingerprint(&rule) {
        return Err(fail(format!(
            "the checkpoint is of another rule called `{name}` (fingerprint {print}, this one {})",
            fingerprint(&rule)
        )));
    }
    let dtype = meta(m, "dtype")?;
    if dtype != F::NAME {
        return Err(fail(format!(
            "the checkpoint holds {dtype} tensors, this optimizer {}",
            F::NAME
        )));
    }
    let number = |key: &str| -> Result<u64, Error> {
        meta(m, key)?
            .parse()
            .map_err(|_| fail(format!("the `{key}` entry is not a step count")))
    };
    let (t, skipped) = (number("t")?, number("skipped")?);
    // Shapes of the optimizer's tensors.
    let shapes: Vec<Vec<usize>> = serde_json::from_value(parse_json(meta(m, "shapes")?, "shapes")?)
        .map_err(|e| fail(format!("the `shapes` entry is malformed: {e}")))?;
    if shapes.len() != optimizer.len() {
        return Err(fail(format!(
            "the checkpoint's optimizer holds {} tensors, this one {}",
            shapes.len(),
            optimizer.len()
        )));
    }
    for (i, s) in shapes.iter().enumerate() {
        let here = optimizer.shape(i).unwrap_or(&[]);
        if s.as_slice() != here {
            return Err(fail(format!(
                "optimizer tensor {i} has shape {s:?} in the checkpoint, {here:?} here"
            )));
        }
    }
    // Hyperparameter groups.
    let hypers = parse_json(meta(m, "hypers")?, "hypers")?;
    let group_of_here = optimizer.group_of().to_vec();
    let group_of: Vec<usize> = serde_json::from_value(hypers["group_of"].clone())
        .map_err(|e| fail(format!("the `hypers` entry is malformed: {e}")))?;
    let groups_here = optimizer.num_groups();
    let saved_groups = hypers["groups"].as_array().cloned().unwrap_or_default();
    if group_of != group_of_here || saved_groups.len() != groups_here {
        return Err(fail(format!(
            "the checkpoint's parameter groups ({} groups, tensors in {group_of:?}) differ from this optimizer's ({groups_here} groups, {group_of_here:?})",
            saved_groups.len()
        )));
    }
    let mut groups = Vec::with_capacity(groups_here);
    for g in &saved_groups {
        let values = g.as_array().cloned().unwrap_or_default();
        if values.len() != rule.hypers.len() {
            return Err(fail(
                "the `hypers` entry does not match the rule's hyperparameters",
            ));
        }
        let mut group = Vec::with_capacity(values.len());
        for (decl, v) in rule.hypers.iter().zip(values) {
            match hyper_from_json(&v) {
                Some(value) if value.kind() == decl.default.kind() => group.push(value),
                _ => {
                    return Err(fail(format!(
                        "hyperparameter `{}` has a value of the wrong kind in the checkpoint",
                        decl.name
                    )))
                }
            }
        }
        groups.push(group);
    }
    // Parameters: the same names, no more, no fewer, the same shapes.
    let mut saved_params: Vec<&str> = file
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix("param."))
        .collect();
    saved_params.sort_unstable();
    for n in &saved_params {
        if !params.iter().any(|(name, _)| name == n) {
            return Err(fail(format!(
                "the checkpoint has parameter `{n}`, which this model does not"
            )));
        }
    }
    let mut param_data = Vec::with_capacity(params.len());
    for (name, p) in params.iter() {
        if p.elements().is_none() {
            return Err(fail(format!(
                "parameter `{name}` is not contiguous in standard order"
            )));
        }
        let data = tensor_data(
            &file,
            &format!("param.{name}"),
            dtype_of::<F>(),
            p.shape(),
            &format!("parameter `{name}`"),
        )?;
        param_data.push(decode::<F>(data));
    }
    // Optimizer state.
    let mut state = Vec::with_capacity(shapes.len());
    for (i, shape) in shapes.iter().enumerate() {
        let mut bufs = Vec::with_capacity(rule.states.len());
        for decl in &rule.states {
            let key = format!("state.{i}.{}", decl.name);
            let what = format!("state `{}` of tensor {i}", decl.name);
            bufs.push(match decl.kind {
                StateKind::Element => StateBuf::Element(decode(tensor_data(
                    &file,
                    &key,
                    dtype_of::<F>(),
                    shape,
                    &what,
                )?)),
                StateKind::Scalar => {
                    let data = tensor_data(&file, &key, Dtype::F64, &[], &what)?;
                    StateBuf::Scalar(decode::<f64>(data)[0])
                }
            });
        }
        state.push(bufs);
    }
    // Everything checked: write.
    for ((_, p), values) in params.iter_mut().zip(param_data) {
        // Contiguity and length were checked above.
        if let Some(dst) = p.elements_mut() {
            dst.copy_from_slice(&values);
        }
    }
    optimizer.restore(t, skipped, groups, state);
    Ok(m.iter()
        .filter_map(|(k, v)| k.strip_prefix("user.").map(|k| (k.to_string(), v.clone())))
        .collect())
}
