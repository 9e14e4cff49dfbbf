//! Result files written atomically.
//!
//! Every file the CLI writes as a result (`apply --output`, `compare`'s
//! `results.json` and curves) is written to a temporary file in the same
//! folder, flushed to disk (`fsync`), then renamed over its target: a
//! reader, or a run killed half-way, sees the old file or the new one,
//! never a truncated one. On an error the temporary file is removed. (A
//! process killed by a signal leaves its temporary `.NAME.tmp-*` file behind;
//! the target is untouched.)

use crate::Failure;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Writes `path` atomically with what `fill` writes (buffered).
pub fn write(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), Failure> {
    replace(path, |_, file| {
        let mut w = BufWriter::with_capacity(1 << 16, file);
        fill(&mut w)?;
        w.flush()
    })
}

/// Writes `path` atomically with the bytes `bytes`.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    write(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically through a writer that only takes a path (such
/// as plotters' PNG backend): `make` writes the temporary file named; it
/// keeps `path`'s extension, for writers that choose a format by it.
pub fn write_with_path(
    path: &Path,
    make: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), Failure> {
    replace(path, |tmp, file| {
        drop(file);
        make(tmp).map_err(io::Error::other)
    })
}

/// The temporary file beside `target`: `.NAME.tmp-PID-K[.EXT]`.
fn temporary(target: &Path) -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let name = target
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let k = COUNT.fetch_add(1, Ordering::Relaxed);
    let mut tmp = format!(".{name}.tmp-{}-{k}", std::process::id());
    if let Some(ext) = target.extension() {
        tmp.push('.');
        tmp.push_str(&ext.to_string_lossy());
    }
    target.with_file_name(tmp)
}

/// The file a write to `path` must replace: through symbolic links.
fn resolve(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path).unwrap_or(path.into()),
        _ => path.into(),
    }
}

fn replace(path: &Path, fill: impl FnOnce(&Path, File) -> io::Result<()>) -> Result<(), Failure> {
    let cannot =
        |e: &dyn std::fmt::Display| Failure::usage(format!("cannot write {}: {e}", path.display()));
    let target = resolve(path);
    if target.file_name().is_none() {
        return Err(cannot(&"not a file name"));
    }
    let tmp = temporary(&target);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| cannot(&e))?;
    let result = fill(&tmp, file)
        .and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, &target));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(cannot(&e));
    }
    // The rename itself, to disk (best effort: not every file system can).
    if let Some(dir) = target.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}
