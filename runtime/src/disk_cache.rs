//! The on-disk cache of compiled programs: a rule compiled by the JIT in
//! one run starts at once in the next.
//!
//! A file holds the optimized rule (`lensopt_ir::encoding`) and the
//! kernels' machine code (`lensopt_codegen::cpu::image`), under a name
//! hashed from everything the code depends on: this build of lensopt, the
//! CPU's features and cranelift's settings, the element type, the checked
//! rule and its specialisation. That key is stored in full and compared on
//! load, and the whole file is checksummed, so a collision, a truncated
//! write or a corrupted file costs a compile, never a wrong program.
//! Files are written whole and renamed into place, so concurrent runs never
//! read half a file. The directory keeps about [`MAX_FILES`] programs (it
//! is looked over every 16th store), the oldest removed first.
//!
//! Location: `LENSOPT_CACHE_DIR`, else `$XDG_CACHE_HOME/lensopt/programs`,
//! else `$HOME/.cache/lensopt/programs`; `LENSOPT_CACHE_DIR=off` turns the
//! cache off. The directory is created private to its user (its files
//! hold code that runs).

use crate::jit::Key;
use crate::Float;
use lensopt_codegen::cpu::image::{Function, Image};
use lensopt_codegen::cpu::Program;
use lensopt_ir::encoding;
use lensopt_ir::schedule::Schedule;
use lensopt_ir::{HyperValue, Rule};
use std::path::{Path, PathBuf};

/// Most programs the directory keeps.
pub const MAX_FILES: usize = 256;

/// Largest file read back (real programs are kilobytes).
const MAX_FILE_BYTES: u64 = 64 << 20;

const MAGIC: &[u8; 8] = b"LOPROG01";

/// A directory of compiled programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// A cache in `dir` (created when the first program is stored).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        DiskCache { dir: dir.into() }
    }

    /// The cache the environment names (see the module documentation),
    /// or `None` when it is off or no location is known.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("LENSOPT_CACHE_DIR") {
            return (dir != "off").then(|| DiskCache::at(dir));
        }
        let base = var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(DiskCache::at(base.join("lensopt").join("programs")))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key_bytes: &[u8]) -> PathBuf {
        self.dir.join(format!("{:016x}.bin", fnv(key_bytes)))
    }

    /// The program for `rule` and `key` from an earlier run, if one was stored.
    pub fn load<F: Float>(&self, rule: &Rule, key: &Key) -> Option<Program<F>> {
        let key_bytes = key_bytes::<F>(rule, key)?;
        let path = self.path(&key_bytes);
        let file = std::fs::File::open(&path).ok()?;
        if file.metadata().ok()?.len() > MAX_FILE_BYTES {
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        let (optimized, image) = parse(&bytes, &key_bytes)?;
        let schedule = Schedule::new(optimized);
        // SAFETY: the file was written by `store` from a program this build
        // of lensopt compiled for this very key, which names the build, the
        // CPU's features, cranelift's settings and the element type; the key
        // matched in full and the checksum over the whole file held, so the
        // image is that program's code and the rule the one it was
        // compiled from.
        unsafe { Program::from_image(schedule, image) }.ok()
    }

    /// Stores `program` (compiled by the JIT for `rule` and `key`). Errors
    /// only lose the cache entry: the program is already in hand.
    pub fn store<F: Float>(&self, rule: &Rule, key: &Key, program: &Program<F>) {
        let (Some(key_bytes), Some(image)) = (key_bytes::<F>(rule, key), program.image()) else {
            return;
        };
        let Some(optimized) = encoding::encode(&program.schedule().rule) else {
            return;
        };
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        block(&mut out, &key_bytes);
        block(&mut out, &optimized);
        put_u32(&mut out, image.functions.len());
        for f in &image.functions {
            block(&mut out, &f.code);
            put_u32(&mut out, f.relocs.len());
            for (offset, addend, symbol) in &f.relocs {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&addend.to_le_bytes());
                block(&mut out, symbol.as_bytes());
            }
        }
        let sum = fnv(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        if self.create_dir().is_err() {
            return;
        }
        let path = self.path(&key_bytes);
        let temp = self.dir.join(format!(
            ".{:016x}.{}.{}.tmp",
            fnv(&key_bytes),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        if std::fs::write(&temp, &out).is_err() || std::fs::rename(&temp, &path).is_err() {
            let _ = std::fs::remove_file(&temp);
            return;
        }
        // Listing the directory costs more than a store: look every 16th.
        static STORES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        if STORES
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(16)
        {
            self.evict();
        }
    }

    fn create_dir(&self) -> std::io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&self.dir)
    }

    /// Removes the oldest programs beyond [`MAX_FILES`] (down to three
    /// quarters of it, so eviction runs rarely).
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= MAX_FILES {
            return;
        }
        files.sort();
        let excess = files.len() - MAX_FILES * 3 / 4;
        for (_, path) in files.into_iter().take(excess) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Everything a program depends on, as bytes (`None`: not cacheable).
fn key_bytes<F: Float>(rule: &Rule, key: &Key) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    block(&mut out, env!("CARGO_PKG_VERSION").as_bytes());
    block(
        &mut out,
        lensopt_codegen::cpu::program::host_features()
            .ok()?
            .as_bytes(),
    );
    block(&mut out, F::NAME.as_bytes());
    block(&mut out, &encoding::encode(rule)?);
    out.push(key.mode as u8);
    put_u32(&mut out, key.specialize.len());
    for v in &key.specialize {
        match v {
            None => out.push(0),
            Some(HyperValue::Num(x)) => {
                out.push(1);
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            Some(HyperValue::Bool(b)) => out.push(2 + u8::from(*b)),
        }
    }
    put_u32(&mut out, key.present.len());
    out.extend(key.present.iter().map(|p| u8::from(*p)));
    Some(out)
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn block(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// 64-bit FNV-1a.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads `bytes` front to back, every length checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<usize> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn block(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(n)
    }
}

/// The optimized rule and image of a file, if it is whole and for `key_bytes`.
fn parse(bytes: &[u8], key_bytes: &[u8]) -> Option<(Rule, Image)> {
    let (body, sum) = bytes.split_at(bytes.len().checked_sub(8)?);
    let mut stored = [0u8; 8];
    stored.copy_from_slice(sum);
    if fnv(body) != u64::from_le_bytes(stored) {
        return None;
    }
    let mut r = Reader(body);
    if r.take(8)? != MAGIC || r.block()? != key_bytes {
        return None;
    }
    let optimized = encoding::decode(r.block()?).ok()?;
    let count = r.u32()?;
    let mut functions = Vec::new();
    for _ in 0..count.min(body.len()) {
        let code = r.block()?.to_vec();
        let relocs_count = r.u32()?;
        let mut relocs = Vec::new();
        for _ in 0..relocs_count.min(body.len()) {
            let offset = r.take(4)?;
            let addend = r.take(8)?;
            let symbol = std::str::from_utf8(r.block()?).ok()?.to_string();
            let mut a = [0u8; 8];
            a.copy_from_slice(addend);
            relocs.push((
                u32::from_le_bytes([offset[0], offset[1], offset[2], offset[3]]),
                i64::from_le_bytes(a),
                symbol,
            ));
        }
        functions.push(Function { code, relocs });
    }
    if !r.0.is_empty() || functions.len() != count {
        return None;
    }
    Some((optimized, Image { functions }))
}
