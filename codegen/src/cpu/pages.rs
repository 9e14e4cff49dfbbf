//! Memory for compiled code: pages from a process-wide pool instead of
//! fresh mappings for every program.
//!
//! cranelift's own provider maps new pages for each module and unmaps them
//! when the module is freed; mapping, faulting the pages in and unmapping
//! them took about a tenth of compiling a small rule. Here a program's
//! pages come from the pool, are sealed (executable or read-only, never
//! both writable and executable) when the module is finalized, and go back
//! to the pool writable again when its memory is freed.
//!
//! Only on x86-64, whose instruction caches stay coherent with the data
//! written: elsewhere cranelift's provider, which flushes them, is used.

use cranelift_jit::{BranchProtection, JITMemoryKind, JITMemoryProvider};
use cranelift_module::ModuleResult;
use memmap2::{Mmap, MmapMut};
use std::io;
use std::sync::Mutex;

/// Pages are mapped in runs of at least this many bytes.
const RUN: usize = 16 * 1024;

/// Free runs the pool keeps, in bytes in all; runs beyond are unmapped.
const POOL_LIMIT: usize = 16 << 20;

/// Free runs: mapped, writable and in no program's use.
static POOL: Mutex<Vec<MmapMut>> = Mutex::new(Vec::new());

/// A run of at least `len` bytes: the smallest free one that fits, or a new
/// mapping.
fn take(len: usize) -> io::Result<MmapMut> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let best = (0..pool.len())
        .filter(|&i| pool[i].len() >= len)
        .min_by_key(|&i| pool[i].len());
    match best {
        Some(i) => Ok(pool.swap_remove(i)),
        None => {
            drop(pool);
            MmapMut::map_anon(len.max(RUN))
        }
    }
}

/// Returns a writable run to the pool (or unmaps it when the pool is full).
fn give_back(run: MmapMut) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let held: usize = pool.iter().map(|r| r.len()).sum();
    if held + run.len() <= POOL_LIMIT {
        pool.push(run);
    }
}

/// What a segment's pages become when the module is finalized.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Code,
    ReadOnly,
    Data,
}

/// One run in a module's use.
struct Segment {
    pages: Pages,
    used: usize,
    kind: Kind,
}

enum Pages {
    /// Still being written (or writable data, which stays so).
    Writable(MmapMut),
    /// Sealed: executable or read-only.
    Sealed(Mmap),
    /// Lost: a protection change failed, and the pages were unmapped.
    Gone,
}

/// The memory of one JIT module (see the module docs).
#[derive(Default)]
pub struct PooledPages {
    segments: Vec<Segment>,
}

impl PooledPages {
    /// A provider holding no pages yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The start of an allocation of `size` at `align` in `segment`, if it fits.
fn fit(segment: &Segment, size: usize, align: usize) -> Option<usize> {
    let Pages::Writable(map) = &segment.pages else {
        return None;
    };
    let start = segment.used.checked_next_multiple_of(align)?;
    (start.checked_add(size)? <= map.len()).then_some(start)
}

impl JITMemoryProvider for PooledPages {
    fn allocate(&mut self, size: usize, align: u64, kind: JITMemoryKind) -> io::Result<*mut u8> {
        let align = usize::try_from(align).unwrap_or(usize::MAX);
        if !align.is_power_of_two() || align > RUN {
            return Err(io::Error::other(format!(
                "alignment {align} is not supported"
            )));
        }
        let kind = match kind {
            JITMemoryKind::Executable => Kind::Code,
            JITMemoryKind::ReadOnly => Kind::ReadOnly,
            JITMemoryKind::Writable => Kind::Data,
        };
        // Segments hold one kind only: read-only data never shares a page
        // with code, nor writable data with either.
        let found = self
            .segments
            .iter()
            .position(|s| s.kind == kind && fit(s, size, align).is_some());
        let index = match found {
            Some(i) => i,
            None => {
                // A fresh run starts page-aligned, so `size` bytes fit.
                let run = take(size.max(1))?;
                self.segments.push(Segment {
                    pages: Pages::Writable(run),
                    used: 0,
                    kind,
                });
                self.segments.len() - 1
            }
        };
        let segment = &mut self.segments[index];
        let start = fit(segment, size, align).ok_or_else(|| io::Error::other("no room"))?;
        segment.used = start + size;
        let Pages::Writable(map) = &mut segment.pages else {
            unreachable!("`fit` only accepts writable segments")
        };
        // SAFETY: `start + size <= map.len()`, checked by `fit`.
        Ok(unsafe { map.as_mut_ptr().add(start) })
    }

    fn finalize(&mut self, _branch_protection: BranchProtection) -> ModuleResult<()> {
        for segment in &mut self.segments {
            let pages = std::mem::replace(&mut segment.pages, Pages::Gone);
            let sealed = match (pages, segment.kind) {
                (Pages::Writable(map), Kind::Code) => map.make_exec().map(Pages::Sealed),
                (Pages::Writable(map), Kind::ReadOnly) => map.make_read_only().map(Pages::Sealed),
                (other, _) => Ok(other),
            };
            segment.pages =
                sealed.map_err(|err| cranelift_module::ModuleError::Allocation { err })?;
        }
        Ok(())
    }

    unsafe fn free_memory(&mut self) {
        for segment in self.segments.drain(..) {
            match segment.pages {
                Pages::Writable(map) => give_back(map),
                // A failure unmaps the pages (dropping them), which is as
                // good once the module is gone.
                Pages::Sealed(map) => {
                    if let Ok(map) = map.make_mut() {
                        give_back(map);
                    }
                }
                Pages::Gone => {}
            }
        }
    }
}

impl Drop for PooledPages {
    fn drop(&mut self) {
        // Sealed pages not freed may hold code still in use: they stay mapped.
        for segment in self.segments.drain(..) {
            match segment.pages {
                Pages::Writable(map) => give_back(map),
                Pages::Sealed(map) => std::mem::forget(map),
                Pages::Gone => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_separate_by_kind_and_reused() {
        let mut pages = PooledPages::new();
        let code = pages.allocate(100, 16, JITMemoryKind::Executable).unwrap();
        let more = pages.allocate(3000, 64, JITMemoryKind::Executable).unwrap();
        let data = pages.allocate(40, 8, JITMemoryKind::ReadOnly).unwrap();
        assert_eq!(code as usize % 16, 0);
        assert_eq!(more as usize % 64, 0);
        assert!(more as usize >= code as usize + 100, "allocations overlap");
        let code_page = code as usize / 4096;
        assert_ne!(
            data as usize / 4096,
            code_page,
            "data shares a page with code"
        );
        // SAFETY: each allocation is writable for its size until `finalize`.
        unsafe {
            code.write_bytes(0xc3, 100);
            more.write_bytes(0xc3, 3000);
            data.write_bytes(7, 40);
        }
        pages.finalize(BranchProtection::None).unwrap();
        // SAFETY: read-only data stays readable after `finalize`.
        assert_eq!(unsafe { data.read() }, 7);
        // SAFETY: nothing refers to the pages any more.
        unsafe { pages.free_memory() };
        // The next module takes writable pages, from the pool or fresh.
        let mut next = PooledPages::new();
        let p = next.allocate(5000, 16, JITMemoryKind::Executable).unwrap();
        // SAFETY: as above.
        unsafe { p.write_bytes(0x90, 5000) };
        // SAFETY: as above.
        unsafe { next.free_memory() };
    }

    #[test]
    fn impossible_requests_are_errors() {
        let mut pages = PooledPages::new();
        assert!(pages
            .allocate(10, 1 << 20, JITMemoryKind::Executable)
            .is_err());
        assert!(pages.allocate(10, 3, JITMemoryKind::Executable).is_err());
        assert!(pages
            .allocate(usize::MAX, 16, JITMemoryKind::Executable)
            .is_err());
        assert!(pages
            .allocate(usize::MAX - 8, 16, JITMemoryKind::ReadOnly)
            .is_err());
    }
}
