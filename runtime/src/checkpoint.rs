//! Checkpoints: a model's parameters, an optimizer's state and the caller's
//! own data in one safetensors file, so that training can stop and resume
//! bit for bit.
//!
//! # Layout
//!
//! A safetensors file: an 8-byte little-endian header length `N`, a JSON
//! header of `N` bytes (padded with spaces so that the data starts at a
//! multiple of 8), then the data section, the tensors' little-endian bytes
//! back to back. Any safetensors reader opens it. The tensors:
//!
//! | tensor              | dtype      | contents                                   |
//! |---------------------|------------|--------------------------------------------|
//! | `param.{name}`      | F32 or F64 | each named parameter                       |
//! | `state.{i}.{state}` | F32 or F64 | per-element state `state` of tensor `i`    |
//! | `state.{i}.{state}` | F64, `[]`  | scalar state (scalars are always f64)      |
//! | `user.{key}`        | F64, `[n]` | the caller's vectors (a loss history, ...) |
//!
//! The header's `__metadata__` holds `header_checksum` (first, at a fixed
//! place: the header starts with `{"__metadata__":{"header_checksum":"`),
//! `checksum`, `format` (`lensopt.checkpoint.v2`), `rule` (its name),
//! `rule_fingerprint` (FNV-1a of the checked IR's text, so two rules with one
//! name are told apart), `dtype`, `t` (steps taken), `skipped`, `shapes` and
//! `hypers` (JSON: every group's values and which group each tensor is in),
//! and the caller's short entries as `user.{key}`. Bulk data belongs in
//! `user.{key}` tensors, not entries: the header is read whole, and its size
//! does not grow with a loss history kept as a tensor.
//!
//! # Checksums
//!
//! Both checksums are 16 lowercase hex digits of a 64-bit hash of 8-byte
//! little-endian words (the last one padded with zeros): starting from
//! `h = 0xcbf29ce484222325`, each word `w` does `h = (h ^ w) * K` (mod 2^64,
//! `K = 0x9e3779b97f4a7c15`) then `h ^= h >> 32`; the byte length is mixed
//! in last as one more word, followed by `h *= K; h ^= h >> 29`. Each step
//! is a bijection of `h`, so any change confined to one 8-byte word, such
//! as any single flipped bit, always changes the hash. `checksum` covers the
//! data section; `header_checksum` covers the first `8 + N` bytes of the file
//! (length and header, `checksum` included) with its own 16 digits written
//! as `0`. A corrupt header is refused before the data is read; corrupt data
//! after it is read and before anything is written.
//!
//! # Loading
//!
//! [`load`] reads the header first (its length is limited to
//! [`MAX_HEADER`] bytes, and to what the file holds, before anything is
//! allocated) and checks everything it says (format, header checksum, rule,
//! fingerprint, element type, parameter names, shapes, groups, that the
//! tensors tile the data section exactly, and that no tensor or entry is
//! unknown) before it reads the data. Then it reads and verifies the data,
//! hands the checkpoint's [`Contents`] to the caller's check ([`load_with`]:
//! a step counter that disagrees with `t`, hyperparameters that contradict
//! the run's configuration, ...) and only then writes. A refused load returns
//! [`Error::Checkpoint`], naming the problem and the path, and leaves the
//! model and optimizer as they were. Files of format v1 (no checksums, no
//! caller tensors) still load.
//!
//! # Saving
//!
//! [`save`] writes a temporary file `.{NAME}.tmp.{PID}` beside the target,
//! flushes it to disk (`fsync`), renames it over the target and flushes the
//! folder (best effort), so a crash never leaves half a checkpoint under the
//! real name. The temporary file is removed on any error, and stale ones of
//! the same target (left by a process that died, or by this one) are removed
//! by the next save. Saving streams the tensors (it does not build the file
//! in memory) and refuses a header over [`MAX_HEADER`], which could not be
//! loaded.

use crate::error::Error;
use crate::optimizer::{hyper_from_json, hyper_to_json};
use crate::stepper::Stepper;
use crate::tensor::{TensorMut, TensorRef};
use crate::Float;
use lensopt_ir::interp::StateBuf;
use lensopt_ir::{HyperValue, Rule, StateKind};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The `format` entry of a lensopt checkpoint.
pub const FORMAT: &str = "lensopt.checkpoint.v2";

/// The `format` entry of the first layout (no checksums, no caller
/// tensors), still loaded.
pub const FORMAT_V1: &str = "lensopt.checkpoint.v1";

/// The longest header accepted (and written), in bytes: safetensors' own limit.
pub const MAX_HEADER: u64 = 100_000_000;

/// How every v2 header starts: `header_checksum`'s digits follow.
const HEADER_START: &[u8] = br#"{"__metadata__":{"header_checksum":""#;

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

/// What a checkpoint holds besides the parameters and state it restores:
/// given to [`load_with`]'s check before anything is written, and returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    /// The optimizer's step counter.
    pub t: u64,
    /// The steps it skipped (non-finite gradients under `NonFinite::Skip`).
    pub skipped: u64,
    /// Every group's hyperparameters, by name, in the rule's order.
    pub hypers: Vec<Vec<(String, HyperValue)>>,
    /// The caller's entries (`user.{key}` in the header).
    pub entries: BTreeMap<String, String>,
    /// The caller's tensors (`user.{key}`, f64 vectors).
    pub tensors: BTreeMap<String, Vec<f64>>,
}

fn fail(message: impl Into<String>) -> Error {
    Error::Checkpoint(message.into())
}

fn at(path: &Path) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Checkpoint(m) => fail(format!("{}: {m}", path.display())),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// The checksum.

const HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const HASH_K: u64 = 0x9e37_79b9_7f4a_7c15;

/// The streaming form of the checksum described in the module's docs.
struct Checksum {
    h: u64,
    len: u64,
    pending: [u8; 8],
    fill: usize,
}

impl Checksum {
    fn new() -> Self {
        Checksum {
            h: HASH_SEED,
            len: 0,
            pending: [0; 8],
            fill: 0,
        }
    }

    fn word(h: u64, w: u64) -> u64 {
        let h = (h ^ w).wrapping_mul(HASH_K);
        h ^ (h >> 32)
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.fill > 0 {
            let take = (8 - self.fill).min(bytes.len());
            self.pending[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
            self.fill += take;
            bytes = &bytes[take..];
            if self.fill < 8 {
                return;
            }
            self.h = Self::word(self.h, u64::from_le_bytes(self.pending));
            self.fill = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.h = Self::word(self.h, u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.fill = rest.len();
    }

    fn finish(&self) -> u64 {
        let mut h = self.h;
        if self.fill > 0 {
            let mut last = [0u8; 8];
            last[..self.fill].copy_from_slice(&self.pending[..self.fill]);
            h = Self::word(h, u64::from_le_bytes(last));
        }
        let h = Self::word(h, self.len).wrapping_mul(HASH_K);
        h ^ (h >> 29)
    }
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// 16 lowercase hex digits, as the checksums are written.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.len() != 16
        || !digits
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

// ---------------------------------------------------------------------------
// Element types and encoding.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

impl Dtype {
    fn of<F: Float>() -> Dtype {
        if F::NAME == "f32" {
            Dtype::F32
        } else {
            Dtype::F64
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
        }
    }

    fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// Elements encoded per chunk when streaming.
const CHUNK: usize = 8192;

fn encode_into<F: Float>(xs: &[F], out: &mut Vec<u8>) {
    out.clear();
    if F::NAME == "f32" {
        // f32 -> f64 -> f32 is exact.
        for x in xs {
            out.extend_from_slice(&(x.to_f64() as f32).to_le_bytes());
        }
    } else {
        for x in xs {
            out.extend_from_slice(&x.to_f64().to_le_bytes());
        }
    }
}

fn decode_into<F: Float>(bytes: &[u8], out: &mut Vec<F>) {
    if F::NAME == "f32" {
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| F::from_f64(f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))),
        );
    } else {
        out.extend(bytes.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            F::from_f64(f64::from_le_bytes(b))
        }));
    }
}

// ---------------------------------------------------------------------------
// Saving.

/// The elements of one tensor to write.
enum Data<'a, F> {
    Floats(&'a [F]),
    F64s(&'a [f64]),
    Scalar(f64),
}

/// One tensor to write.
struct Out<'a, F> {
    name: String,
    shape: Vec<usize>,
    data: Data<'a, F>,
}

impl<F: Float> Out<'_, F> {
    fn dtype(&self) -> Dtype {
        match self.data {
            Data::Floats(_) => Dtype::of::<F>(),
            Data::F64s(_) | Data::Scalar(_) => Dtype::F64,
        }
    }

    fn bytes(&self) -> u64 {
        let n = match self.data {
            Data::Floats(x) => x.len(),
            Data::F64s(x) => x.len(),
            Data::Scalar(_) => 1,
        };
        n as u64 * self.dtype().size()
    }

    /// Hands the tensor's bytes to `sink`, a chunk at a time.
    fn emit(
        &self,
        buf: &mut Vec<u8>,
        sink: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        match self.data {
            Data::Floats(xs) => {
                for c in xs.chunks(CHUNK) {
                    encode_into(c, buf);
                    sink(buf)?;
                }
            }
            Data::F64s(xs) => {
                for c in xs.chunks(CHUNK) {
                    encode_into(c, buf);
                    sink(buf)?;
                }
            }
            Data::Scalar(x) => sink(&x.to_le_bytes())?,
        }
        Ok(())
    }
}

/// A checkpoint ready to be written: the length and header, then the tensors.
struct Encoded<'a, F> {
    head: Vec<u8>,
    outs: Vec<Out<'a, F>>,
    data_len: u64,
}

impl<F: Float> Encoded<'_, F> {
    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.head)?;
        let mut buf = Vec::with_capacity(CHUNK * 8);
        for out in &self.outs {
            out.emit(&mut buf, &mut |bytes| w.write_all(bytes))?;
        }
        Ok(())
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn encode<'a, F: Float>(
    params: &'a [(&str, &dyn TensorRef<F>)],
    optimizer: &'a Stepper<F>,
    entries: &BTreeMap<String, String>,
    tensors: &'a [(&str, &[f64])],
) -> Result<Encoded<'a, F>, Error> {
    let rule = optimizer.rule();
    let mut outs: Vec<Out<'a, F>> = Vec::new();
    for (name, p) in params {
        let data = p.elements().ok_or_else(|| {
            fail(format!(
                "parameter `{name}` is not contiguous in standard order"
            ))
        })?;
        let key = format!("param.{name}");
        if outs.iter().any(|o| o.name == key) {
            return Err(fail(format!("two parameters are called `{name}`")));
        }
        outs.push(Out {
            name: key,
            shape: p.shape().to_vec(),
            data: Data::Floats(data),
        });
    }
    for (i, bufs) in optimizer.state_buffers().iter().enumerate() {
        for (decl, buf) in rule.states.iter().zip(bufs) {
            let name = format!("state.{i}.{}", decl.name);
            outs.push(match buf {
                StateBuf::Element(v) => Out {
                    name,
                    shape: crate::stepper::state_shape(
                        decl.kind,
                        optimizer.shape(i).unwrap_or(&[]),
                        optimizer.low_len(i),
                    ),
                    data: Data::Floats(v),
                },
                StateBuf::Scalar(x) => Out {
                    name,
                    shape: Vec::new(),
                    data: Data::Scalar(*x),
                },
            });
        }
    }
    for (key, values) in tensors {
        let name = format!("user.{key}");
        if outs.iter().any(|o| o.name == name) {
            return Err(fail(format!("two caller tensors are called `{key}`")));
        }
        outs.push(Out {
            name,
            shape: vec![values.len()],
            data: Data::F64s(values),
        });
    }

    // The data's checksum: a first pass over the tensors, without a copy.
    let mut sum = Checksum::new();
    let mut buf = Vec::with_capacity(CHUNK * 8);
    for out in &outs {
        out.emit(&mut buf, &mut |bytes| {
            sum.update(bytes);
            Ok(())
        })
        .map_err(|e| fail(format!("cannot encode `{}`: {e}", out.name)))?;
    }

    let shapes: Vec<&[usize]> = (0..optimizer.len())
        .map(|i| optimizer.shape(i).unwrap_or(&[]))
        .collect();
    let hyper_names: Vec<&str> = rule.hypers.iter().map(|h| h.name.as_str()).collect();
    let group_values: Vec<Vec<Value>> = optimizer
        .group_values()
        .iter()
        .map(|g| g.iter().copied().map(hyper_to_json).collect())
        .collect();
    let mut meta: Vec<(String, String)> = vec![
        ("checksum".into(), hex(sum.finish())),
        ("format".into(), FORMAT.into()),
        ("rule".into(), rule.name.clone()),
        ("rule_fingerprint".into(), fingerprint(rule)),
        ("dtype".into(), F::NAME.into()),
        ("t".into(), optimizer.t().to_string()),
        ("skipped".into(), optimizer.skipped().to_string()),
        ("shapes".into(), json!(shapes).to_string()),
        (
            "hypers".into(),
            json!({"names": hyper_names, "groups": group_values, "group_of": optimizer.group_of()})
                .to_string(),
        ),
    ];
    meta.extend(
        entries
            .iter()
            .map(|(k, v)| (format!("user.{k}"), v.clone())),
    );

    let mut header = String::from_utf8_lossy(HEADER_START).into_owned();
    header.push_str(&"0".repeat(16));
    header.push('"');
    for (k, v) in &meta {
        header.push(',');
        header.push_str(&json_string(k));
        header.push(':');
        header.push_str(&json_string(v));
    }
    header.push('}');
    let mut offset = 0u64;
    for out in &outs {
        let end = offset + out.bytes();
        header.push(',');
        header.push_str(&json_string(&out.name));
        header.push_str(&format!(
            r#":{{"dtype":"{}","shape":{},"data_offsets":[{offset},{end}]}}"#,
            out.dtype().name(),
            json!(out.shape)
        ));
        offset = end;
    }
    header.push('}');
    while !(8 + header.len()).is_multiple_of(8) {
        header.push(' ');
    }
    if header.len() as u64 > MAX_HEADER {
        return Err(fail(format!(
            "the header would take {} bytes, over the {MAX_HEADER}-byte limit (keep bulk data in caller tensors, not entries)",
            header.len()
        )));
    }
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(&(header.len() as u64).to_le_bytes());
    head.extend_from_slice(header.as_bytes());
    let mut sum = Checksum::new();
    sum.update(&head);
    let digits = 8 + HEADER_START.len();
    head[digits..digits + 16].copy_from_slice(hex(sum.finish()).as_bytes());
    Ok(Encoded {
        head,
        outs,
        data_len: offset,
    })
}

/// The checkpoint of `params` (by name) and `optimizer`, as safetensors bytes.
pub fn to_bytes<F: Float>(
    params: &[(&str, &dyn TensorRef<F>)],
    optimizer: &Stepper<F>,
    user: &BTreeMap<String, String>,
) -> Result<Vec<u8>, Error> {
    to_bytes_with(params, optimizer, user, &[])
}

/// [`to_bytes`] with the caller's tensors (`tensors`, by key) as well.
pub fn to_bytes_with<F: Float>(
    params: &[(&str, &dyn TensorRef<F>)],
    optimizer: &Stepper<F>,
    entries: &BTreeMap<String, String>,
    tensors: &[(&str, &[f64])],
) -> Result<Vec<u8>, Error> {
    let encoded = encode(params, optimizer, entries, tensors)?;
    let mut bytes = Vec::with_capacity(encoded.head.len() + encoded.data_len as usize);
    encoded
        .write_to(&mut bytes)
        .map_err(|e| fail(format!("cannot encode: {e}")))?;
    Ok(bytes)
}

/// Writes the checkpoint of `params` and `optimizer` to `path` (through a
/// temporary file and a rename). `user` entries come back from [`load`].
pub fn save<F: Float>(
    path: &Path,
    params: &[(&str, &dyn TensorRef<F>)],
    optimizer: &Stepper<F>,
    user: &BTreeMap<String, String>,
) -> Result<(), Error> {
    save_with(path, params, optimizer, user, &[])
}

/// [`save`] with the caller's tensors as well: f64 vectors by key, such as
/// a loss history, stored as tensors `user.{key}` (not in the header), which
/// come back from [`load_with`] in [`Contents::tensors`].
pub fn save_with<F: Float>(
    path: &Path,
    params: &[(&str, &dyn TensorRef<F>)],
    optimizer: &Stepper<F>,
    entries: &BTreeMap<String, String>,
    tensors: &[(&str, &[f64])],
) -> Result<(), Error> {
    let encoded = encode(params, optimizer, entries, tensors).map_err(at(path))?;
    let cannot = |e: &dyn std::fmt::Display| fail(format!("cannot write {}: {e}", path.display()));
    let name = path
        .file_name()
        .ok_or_else(|| cannot(&"not a file name"))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    remove_stale_temporaries(&dir, &name);
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|file| {
            let mut w = BufWriter::with_capacity(1 << 20, file);
            encoded.write_to(&mut w)?;
            let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(cannot(&e));
    }
    // The rename itself, to disk (best effort: not every system can open a folder).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes `.{name}.tmp.{PID}` files in `dir` left by a process that no
/// longer runs (or by this one). Where it cannot tell whether a process
/// runs (no `/proc`), it removes them all: two processes saving one
/// checkpoint at once is not supported anyway.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.tmp.");
    let own = std::process::id();
    let proc_fs = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != own && proc_fs && Path::new("/proc").join(pid.to_string()).exists();
        if !alive {
            let _ = fs::remove_file(entry.path());
        }
    }
}

// ---------------------------------------------------------------------------
// Loading.

/// Reads the checkpoint at `path` into `params` (by name) and `optimizer`;
/// returns the caller's entries given to [`save`]. On any error nothing changes.
pub fn load<F: Float>(
    path: &Path,
    params: &mut [(&str, &mut dyn TensorMut<F>)],
    optimizer: &mut Stepper<F>,
) -> Result<BTreeMap<String, String>, Error> {
    load_with(path, params, optimizer, |_| Ok(())).map(|c| c.entries)
}

/// [`load`], with the caller's `check` of the checkpoint's [`Contents`]
/// (counters, hyperparameters, the caller's entries and tensors) after
/// everything else is checked and before anything is written: an `Err`
/// refuses the load with that message (and the path), and nothing changes.
/// Returns the contents, the caller's tensors included.
pub fn load_with<F: Float>(
    path: &Path,
    params: &mut [(&str, &mut dyn TensorMut<F>)],
    optimizer: &mut Stepper<F>,
    check: impl FnOnce(&Contents) -> Result<(), String>,
) -> Result<Contents, Error> {
    let cannot = |e: io::Error| fail(format!("cannot read {}: {e}", path.display()));
    let file = File::open(path).map_err(cannot)?;
    let len = file.metadata().map_err(cannot)?.len();
    read(
        BufReader::with_capacity(1 << 20, file),
        len,
        params,
        optimizer,
        check,
    )
    .map_err(at(path))
}

/// [`load`] from bytes already in memory.
pub fn from_bytes<F: Float>(
    bytes: &[u8],
    params: &mut [(&str, &mut dyn TensorMut<F>)],
    optimizer: &mut Stepper<F>,
) -> Result<BTreeMap<String, String>, Error> {
    from_bytes_with(bytes, params, optimizer, |_| Ok(())).map(|c| c.entries)
}

/// [`load_with`] from bytes already in memory.
pub fn from_bytes_with<F: Float>(
    bytes: &[u8],
    params: &mut [(&str, &mut dyn TensorMut<F>)],
    optimizer: &mut Stepper<F>,
    check: impl FnOnce(&Contents) -> Result<(), String>,
) -> Result<Contents, Error> {
    read(bytes, bytes.len() as u64, params, optimizer, check)
}

fn meta<'m>(m: &'m HashMap<String, String>, key: &str) -> Result<&'m str, Error> {
    m.get(key)
        .map(String::as_str)
        .ok_or_else(|| fail(format!("the checkpoint has no `{key}` entry")))
}

fn parse_json(text: &str, key: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| fail(format!("the `{key}` entry is malformed: {e}")))
}

fn not_safetensors(why: impl std::fmt::Display) -> Error {
    fail(format!("not a safetensors file ({why})"))
}

/// A tensor as the header describes it.
struct Info {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// The safetensors structure of a header.
struct Layout {
    /// The `__metadata__` entries.
    meta: HashMap<String, String>,
    /// The tensors, sorted by offset: they tile the data without gaps or overlaps.
    infos: Vec<Info>,
    /// The length of the data they describe.
    data_len: u64,
}

/// The safetensors structure of a header, checked.
fn parse_header(header: &[u8]) -> Result<Layout, Error> {
    let map: Map<String, Value> = serde_json::from_slice(header)
        .map_err(|e| not_safetensors(format!("its header is not a JSON object: {e}")))?;
    let mut metadata = HashMap::new();
    let mut infos = Vec::new();
    for (name, value) in map {
        if name == "__metadata__" {
            let entries = value
                .as_object()
                .ok_or_else(|| not_safetensors("its `__metadata__` is not an object"))?;
            for (k, v) in entries {
                let v = v.as_str().ok_or_else(|| {
                    not_safetensors(format!("its `__metadata__` entry `{k}` is not a string"))
                })?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let bad = |why: &str| not_safetensors(format!("tensor `{name}` {why}"));
        let fields = value
            .as_object()
            .filter(|o| o.len() == 3)
            .ok_or_else(|| bad("is not described by `dtype`, `shape` and `data_offsets`"))?;
        let dtype = match fields.get("dtype").and_then(Value::as_str) {
            Some("F32") => Dtype::F32,
            Some("F64") => Dtype::F64,
            Some(other) => {
                return Err(fail(format!(
                    "tensor `{name}` is {other}; a checkpoint holds F32 and F64 tensors only"
                )))
            }
            None => return Err(bad("has no `dtype`")),
        };
        let numbers = |key: &str| -> Option<Vec<u64>> {
            fields
                .get(key)?
                .as_array()?
                .iter()
                .map(Value::as_u64)
                .collect()
        };
        let shape = numbers("shape")
            .and_then(|s| s.into_iter().map(|d| usize::try_from(d).ok()).collect())
            .ok_or_else(|| bad("has a malformed `shape`"))?;
        let (start, end) = match numbers("data_offsets").as_deref() {
            Some(&[s, e]) if s <= e => (s, e),
            _ => return Err(bad("has malformed `data_offsets`")),
        };
        infos.push(Info {
            name,
            dtype,
            shape,
            start,
            end,
        });
    }
    infos.sort_by_key(|i| (i.start, i.end));
    let mut expect = 0u64;
    for info in &infos {
        if info.start != expect {
            return Err(not_safetensors(format!(
                "tensor `{}` starts at byte {} of the data, not {expect}",
                info.name, info.start
            )));
        }
        let bytes = info
            .shape
            .iter()
            .try_fold(info.dtype.size(), |n, &d| n.checked_mul(d as u64));
        if bytes != Some(info.end - info.start) {
            return Err(not_safetensors(format!(
                "tensor `{}` takes {} bytes, not what its shape {:?} needs",
                info.name,
                info.end - info.start,
                info.shape
            )));
        }
        expect = info.end;
    }
    Ok(Layout {
        meta: metadata,
        infos,
        data_len: expect,
    })
}

/// Whether the file holds the `expect` bytes of data its header describes.
fn check_data_len(expect: u64, data_len: u64) -> Result<(), Error> {
    if expect > data_len {
        return Err(fail(format!(
            "the file is truncated: its tensors need {expect} bytes of data, it holds {data_len}"
        )));
    }
    if expect < data_len {
        return Err(not_safetensors(format!(
            "{} bytes follow its last tensor",
            data_len - expect
        )));
    }
    Ok(())
}

/// Where a tensor of the file goes.
enum Role {
    Param(usize),
    State(usize, usize),
    User(String),
}

fn read<F: Float, R: Read>(
    mut r: R,
    len: u64,
    params: &mut [(&str, &mut dyn TensorMut<F>)],
    optimizer: &mut Stepper<F>,
    check: impl FnOnce(&Contents) -> Result<(), String>,
) -> Result<Contents, Error> {
    let io_fail = |e: io::Error| fail(format!("cannot read: {e}"));
    // The header's length, bounded before anything is allocated.
    if len < 8 {
        return Err(not_safetensors(format!(
            "it holds {len} bytes, fewer than a header length"
        )));
    }
    let mut prefix = [0u8; 8];
    r.read_exact(&mut prefix).map_err(io_fail)?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER {
        return Err(not_safetensors(format!(
            "its header length, {n} bytes, is over the {MAX_HEADER}-byte limit"
        )));
    }
    if n > len - 8 {
        return Err(not_safetensors(format!(
            "its header length, {n} bytes, runs past the end of the file ({len} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header).map_err(io_fail)?;
    let data_len = len - 8 - n;

    // v2: the header's checksum, before anything in it is believed.
    let sealed = header.starts_with(HEADER_START);
    if sealed {
        let digits = HEADER_START.len();
        let stored = header
            .get(digits..digits + 16)
            .and_then(parse_hex)
            .ok_or_else(|| fail("the header is corrupt (its `header_checksum` is malformed)"))?;
        let mut sum = Checksum::new();
        sum.update(&prefix);
        sum.update(&header[..digits]);
        sum.update(b"0000000000000000");
        sum.update(&header[digits + 16..]);
        let computed = sum.finish();
        if stored != computed {
            return Err(fail(format!(
                "the header is corrupt (header checksum {} stored, {} computed)",
                hex(stored),
                hex(computed)
            )));
        }
    }
    let Layout {
        meta: m,
        infos,
        data_len: described,
    } = parse_header(&header)?;
    drop(header);

    let v2 = match m.get("format").map(String::as_str) {
        Some(FORMAT) if sealed => true,
        Some(FORMAT) => {
            return Err(fail(
                "the header is corrupt (it does not start with its `header_checksum`)",
            ))
        }
        Some(FORMAT_V1) => false,
        Some(other) if other.starts_with("lensopt.checkpoint.") => {
            return Err(fail(format!(
                "its format `{other}` is not one this version reads ({FORMAT} or {FORMAT_V1})"
            )))
        }
        _ => {
            return Err(fail(format!(
                "not a lensopt checkpoint (its `format` entry is not `{FORMAT}`)"
            )))
        }
    };
    let known: &[&str] = &[
        "format",
        "rule",
        "rule_fingerprint",
        "dtype",
        "t",
        "skipped",
        "shapes",
        "hypers",
    ];
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_unstable();
    for k in keys {
        let sums = v2 && (k == "checksum" || k == "header_checksum");
        if !(sums || known.contains(&k.as_str()) || k.starts_with("user.")) {
            return Err(fail(format!("the checkpoint has an unknown entry `{k}`")));
        }
    }
    let data_sum = if v2 {
        Some(
            parse_hex(meta(&m, "checksum")?.as_bytes())
                .ok_or_else(|| fail("the `checksum` entry is malformed"))?,
        )
    } else {
        None
    };

    let rule = optimizer.rule().clone();
    let (name, print) = (meta(&m, "rule")?, meta(&m, "rule_fingerprint")?);
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
    let dtype = meta(&m, "dtype")?;
    if dtype != F::NAME {
        return Err(fail(format!(
            "the checkpoint holds {dtype} tensors, this optimizer {}",
            F::NAME
        )));
    }
    let number = |key: &str| -> Result<u64, Error> {
        meta(&m, key)?
            .parse()
            .map_err(|_| fail(format!("the `{key}` entry is not a step count")))
    };
    let (t, skipped) = (number("t")?, number("skipped")?);
    // Shapes of the optimizer's tensors.
    let shapes: Vec<Vec<usize>> =
        serde_json::from_value(parse_json(meta(&m, "shapes")?, "shapes")?)
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
    let hypers = parse_json(meta(&m, "hypers")?, "hypers")?;
    let names: Vec<String> = serde_json::from_value(hypers["names"].clone())
        .map_err(|e| fail(format!("the `hypers` entry is malformed: {e}")))?;
    let names_here: Vec<&str> = rule.hypers.iter().map(|h| h.name.as_str()).collect();
    if names != names_here {
        return Err(fail(format!(
            "the checkpoint's hyperparameters are {names:?}, this rule's {names_here:?}"
        )));
    }
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

    // Tensors: every expected one, with its element type and shape, and no other.
    let mut expected: HashMap<String, Role> = HashMap::new();
    for (j, (name, p)) in params.iter().enumerate() {
        if p.elements().is_none() {
            return Err(fail(format!(
                "parameter `{name}` is not contiguous in standard order"
            )));
        }
        if expected
            .insert(format!("param.{name}"), Role::Param(j))
            .is_some()
        {
            return Err(fail(format!("two parameters are called `{name}`")));
        }
    }
    for i in 0..shapes.len() {
        for (s, decl) in rule.states.iter().enumerate() {
            expected.insert(format!("state.{i}.{}", decl.name), Role::State(i, s));
        }
    }
    let mut saved_params: Vec<&str> = infos
        .iter()
        .filter_map(|i| i.name.strip_prefix("param."))
        .filter(|n| !expected.contains_key(&format!("param.{n}")))
        .collect();
    saved_params.sort_unstable();
    if let Some(n) = saved_params.first() {
        return Err(fail(format!(
            "the checkpoint has parameter `{n}`, which this model does not"
        )));
    }
    let what = |role: &Role| match role {
        Role::Param(j) => format!("parameter `{}`", params[*j].0),
        Role::State(i, s) => format!("state `{}` of tensor {i}", rule.states[*s].name),
        Role::User(key) => format!("caller tensor `{key}`"),
    };
    let mut plan: Vec<Role> = Vec::with_capacity(infos.len());
    for info in &infos {
        let role = match expected.remove(&info.name) {
            Some(role) => role,
            None => match info.name.strip_prefix("user.") {
                Some(key) => Role::User(key.to_string()),
                None => {
                    return Err(fail(format!(
                        "the checkpoint has an unknown tensor `{}`",
                        info.name
                    )))
                }
            },
        };
        let (dtype, shape): (Dtype, Vec<usize>) = match role {
            Role::Param(j) => (Dtype::of::<F>(), params[j].1.shape().to_vec()),
            Role::State(i, s) => match rule.states[s].kind {
                StateKind::Scalar => (Dtype::F64, Vec::new()),
                kind => {
                    // The low axis as the checkpoint's own hyperparameters set it.
                    let (rows, cols) =
                        crate::ir::matrix::rows_and_cols(&shapes[i]).unwrap_or((0, 0));
                    let low = rule.extents(&groups[group_of[i]], rows, cols).low;
                    (
                        Dtype::of::<F>(),
                        crate::stepper::state_shape(kind, &shapes[i], low),
                    )
                }
            },
            Role::User(_) if info.shape.len() == 1 => (Dtype::F64, info.shape.clone()),
            Role::User(_) => {
                return Err(fail(format!(
                    "{} has shape {:?}, not a vector",
                    what(&role),
                    info.shape
                )))
            }
        };
        if info.dtype != dtype {
            return Err(fail(format!(
                "{} is {:?} in the checkpoint, {dtype:?} here",
                what(&role),
                info.dtype
            )));
        }
        if info.shape != shape {
            return Err(fail(format!(
                "{} has shape {:?} in the checkpoint, {shape:?} here",
                what(&role),
                info.shape
            )));
        }
        plan.push(role);
    }
    let mut missing: Vec<(&String, &Role)> = expected.iter().collect();
    missing.sort_by_key(|(n, _)| n.as_str());
    if let Some((name, role)) = missing.first() {
        return Err(fail(format!(
            "the checkpoint has no {} (`{name}`)",
            what(role)
        )));
    }

    // Everything the header says is checked: the data, verified as it is read.
    check_data_len(described, data_len)?;
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK * 8];
    let mut param_data: Vec<Vec<F>> = vec![Vec::new(); params.len()];
    let mut state: Vec<Vec<Option<StateBuf<F>>>> = (0..shapes.len())
        .map(|_| (0..rule.states.len()).map(|_| None).collect())
        .collect();
    let mut tensors = BTreeMap::new();
    for (info, role) in infos.iter().zip(plan) {
        // Parameters and per-element state are of the optimizer's type; the rest f64.
        let native = match role {
            Role::Param(_) => true,
            Role::State(_, s) => rule.states[s].kind != StateKind::Scalar,
            Role::User(_) => false,
        };
        let mut left = info.end - info.start;
        let elements = (left / info.dtype.size()) as usize;
        let (mut floats, mut doubles): (Vec<F>, Vec<f64>) = if native {
            (Vec::with_capacity(elements), Vec::new())
        } else {
            (Vec::new(), Vec::with_capacity(elements))
        };
        while left > 0 {
            let take = left.min(buf.len() as u64) as usize;
            let chunk = &mut buf[..take];
            r.read_exact(chunk).map_err(io_fail)?;
            sum.update(chunk);
            left -= take as u64;
            if native {
                decode_into(chunk, &mut floats);
            } else {
                decode_into(chunk, &mut doubles);
            }
        }
        match role {
            Role::Param(j) => param_data[j] = floats,
            Role::State(i, s) => {
                state[i][s] = Some(if native {
                    StateBuf::Element(floats)
                } else {
                    StateBuf::Scalar(doubles[0])
                });
            }
            Role::User(key) => {
                tensors.insert(key, doubles);
            }
        }
    }
    if let Some(stored) = data_sum {
        let computed = sum.finish();
        if stored != computed {
            return Err(fail(format!(
                "the data is corrupt (checksum {} stored, {} computed)",
                hex(stored),
                hex(computed)
            )));
        }
    }
    let state: Vec<Vec<StateBuf<F>>> = state
        .into_iter()
        .map(|bufs| bufs.into_iter().flatten().collect())
        .collect();

    let contents = Contents {
        t,
        skipped,
        hypers: groups
            .iter()
            .map(|g| {
                rule.hypers
                    .iter()
                    .zip(g)
                    .map(|(h, v)| (h.name.clone(), *v))
                    .collect()
            })
            .collect(),
        entries: m
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("user.").map(|k| (k.to_string(), v.clone())))
            .collect(),
        tensors,
    };
    check(&contents).map_err(fail)?;

    // Everything checked: write.
    for ((_, p), values) in params.iter_mut().zip(param_data) {
        // Contiguity and length were checked above.
        if let Some(dst) = p.elements_mut() {
            dst.copy_from_slice(&values);
        }
    }
    optimizer.restore(t, skipped, groups, state);
    Ok(contents)
}
