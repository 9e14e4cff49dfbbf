//! The on-disk cache of compiled programs: a rule compiled by the JIT in
//! one run starts at once in the next.
//!
//! A file holds the optimized rule (`lensopt_ir::encoding`) and the
//! kernels' machine code (`lensopt_codegen::cpu::image`), under a name
//! hashed from everything the code depends on: this build of lensopt (its
//! version, and the running program's path, size and modification time,
//! so a rebuilt program never loads an earlier build's code), the CPU's
//! features and cranelift's settings, the element type, the checked
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
use lensopt_ir::encoding::{self, fnv1a, put_bytes, put_count, Reader};
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
        self.dir.join(format!("{:016x}.bin", fnv1a(key_bytes)))
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
        let optimized = encoding::encode(&program.schedule().rule);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, &key_bytes);
        put_bytes(&mut out, &optimized);
        put_count(&mut out, image.functions.len());
        for f in &image.functions {
            put_bytes(&mut out, &f.code);
            put_count(&mut out, f.relocs.len());
            for (offset, addend, symbol) in &f.relocs {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&addend.to_le_bytes());
                put_bytes(&mut out, symbol.as_bytes());
            }
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        if self.create_dir().is_err() {
            return;
        }
        let path = self.path(&key_bytes);
        let temp = self.dir.join(format!(
            ".{:016x}.{}.{}.tmp",
            fnv1a(&key_bytes),
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

/// This build of lensopt: the package version, and the running program's
/// path, size and modification time, so that a rebuilt program (whose code
/// generator may have changed under the same version) never loads code an
/// earlier build compiled. `None` when the program cannot be identified.
fn build() -> Option<&'static [u8]> {
    static BUILD: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    BUILD
        .get_or_init(|| {
            let exe = std::env::current_exe().ok()?;
            let meta = std::fs::metadata(&exe).ok()?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            let mut out = Vec::new();
            put_bytes(&mut out, env!("CARGO_PKG_VERSION").as_bytes());
            put_bytes(&mut out, exe.to_string_lossy().as_bytes());
            out.extend_from_slice(&meta.len().to_le_bytes());
            out.extend_from_slice(&modified.as_nanos().to_le_bytes());
            Some(out)
        })
        .as_deref()
}

/// Everything a program depends on, as bytes (`None`: not cacheable).
fn key_bytes<F: Float>(rule: &Rule, key: &Key) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    put_bytes(&mut out, build()?);
    put_bytes(
        &mut out,
        lensopt_codegen::cpu::program::host_features()
            .ok()?
            .as_bytes(),
    );
    put_bytes(&mut out, F::NAME.as_bytes());
    put_bytes(&mut out, &encoding::encode(rule));
    out.push(key.mode as u8);
    put_count(&mut out, key.specialize.len());
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
    put_count(&mut out, key.present.len());
    out.extend(key.present.iter().map(|p| u8::from(*p)));
    Some(out)
}

/// The optimized rule and image of a file, if it is whole and for `key_bytes`.
fn parse(bytes: &[u8], key_bytes: &[u8]) -> Option<(Rule, Image)> {
    let (body, sum) = bytes.split_at(bytes.len().checked_sub(8)?);
    let stored = (Reader { bytes: sum }).u64().ok()?;
    if fnv1a(body) != stored {
        return None;
    }
    let mut r = Reader { bytes: body };
    if r.take(8).ok()? != MAGIC || r.bytes().ok()? != key_bytes {
        return None;
    }
    let optimized = encoding::decode(r.bytes().ok()?).ok()?;
    let mut functions = Vec::new();
    for _ in 0..r.count(8).ok()? {
        let code = r.bytes().ok()?.to_vec();
        let mut relocs = Vec::new();
        for _ in 0..r.count(16).ok()? {
            let offset = r.u32().ok()?;
            let addend = r.u64().ok()? as i64;
            let symbol = std::str::from_utf8(r.bytes().ok()?).ok()?.to_string();
            relocs.push((offset, addend, symbol));
        }
        functions.push(Function { code, relocs });
    }
    r.bytes
        .is_empty()
        .then_some((optimized, Image { functions }))
}
