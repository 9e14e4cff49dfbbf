//! The launch shape of a step: which block works on which part of which
//! tensor. Every tensor is cut into chunks of [`CHUNK`] elements and every
//! chunk is one block of a one-dimensional grid, so the work launched is in
//! proportion to each tensor (a 1,000-element tensor beside a 10^7-element
//! one costs one block, not as many as the largest tensor needs). The
//! kernels read their block's entry of the map, `tensor << 32 | chunk`, and
//! walk the chunk with a block-stride loop.
//!
//! [`LaunchMap::thread_elements`] is the kernels' index arithmetic on the
//! CPU, so tests can check that every element of every tensor is visited
//! exactly once, without a GPU.

use super::{PtxError, BLOCK};
use std::ops::Range;

/// Elements per block: a multiple of the vector width (4 f32 or 2 f64, so
/// every chunk but a tensor's last starts and ends on a 16-byte boundary)
/// and of [`BLOCK`], 64 elements per thread.
pub const CHUNK: usize = 16_384;

/// The most blocks one launch may have (the grid's x dimension).
pub const MAX_BLOCKS: usize = (1 << 31) - 1;

/// The flattened block-to-tensor map of a list of tensor lengths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchMap {
    /// One entry per block: `tensor << 32 | chunk`.
    entries: Vec<u64>,
    /// `first[k]..first[k + 1]` are tensor `k`'s blocks.
    first: Vec<usize>,
}

impl LaunchMap {
    /// The map for tensors of `lens` elements (empty tensors get no block).
    /// An error when the launch would exceed the grid or the map's fields.
    pub fn new(lens: &[usize]) -> Result<Self, PtxError> {
        if lens.len() > u32::MAX as usize {
            return Err(PtxError(format!("{} tensors in one launch", lens.len())));
        }
        let total = lens
            .iter()
            .try_fold(0usize, |acc, n| acc.checked_add(n.div_ceil(CHUNK)))
            .filter(|&b| b <= MAX_BLOCKS)
            .ok_or_else(|| {
                PtxError(format!(
                    "more than {MAX_BLOCKS} blocks of {CHUNK} elements in one launch"
                ))
            })?;
        let mut entries = Vec::with_capacity(total);
        let mut first = Vec::with_capacity(lens.len() + 1);
        for (k, n) in lens.iter().enumerate() {
            first.push(entries.len());
            // Chunks per tensor are below 2^31 (checked above), so they fit 32 bits.
            entries.extend((0..n.div_ceil(CHUNK) as u64).map(|c| (k as u64) << 32 | c));
        }
        first.push(entries.len());
        Ok(LaunchMap { entries, first })
    }

    /// The map as the kernels read it, one u64 per block.
    pub fn entries(&self) -> &[u64] {
        &self.entries
    }

    /// Blocks in the launch (at least one entry per non-empty tensor).
    pub fn blocks(&self) -> usize {
        self.entries.len()
    }

    /// The blocks of tensor `k`, in chunk order (and so the order in which
    /// a reduction's per-block partials are combined).
    pub fn blocks_of(&self, k: usize) -> Range<usize> {
        self.first[k]..self.first[k + 1]
    }

    /// The elements thread `thread` of block `block` visits, in order, for
    /// tensors of `lens` when the vector loop takes `lanes` elements at a
    /// time (`aligned`: every buffer of the tensor is 16-byte aligned).
    /// This is the kernels' prologue and loops, step by step, on the CPU.
    pub fn thread_elements(
        &self,
        lens: &[usize],
        block: usize,
        thread: usize,
        lanes: usize,
        aligned: bool,
    ) -> Vec<usize> {
        let entry = self.entries[block];
        let (tensor, chunk) = ((entry >> 32) as usize, (entry & 0xFFFF_FFFF) as usize);
        // Prologue: %rd0 = chunk start, %rd1 = chunk end, %rd3 = first element.
        let start = chunk * CHUNK;
        let end = (start + CHUNK).min(lens[tensor]);
        let mut out = Vec::new();
        let mut next = start + thread;
        if aligned {
            // Vector loop over groups start / lanes + thread .. end / lanes.
            let groups_end = end / lanes;
            let mut group = start / lanes + thread;
            while group < groups_end {
                out.extend(group * lanes..group * lanes + lanes);
                group += BLOCK;
            }
            // The tail from groups_end * lanes, one element per thread.
            next = groups_end * lanes + thread;
        }
        while next < end {
            out.push(next);
            next += BLOCK;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element of every tensor exactly once, vectorised or not.
    #[test]
    fn every_element_is_visited_once() {
        let lens = [
            0,
            1,
            5,
            CHUNK - 1,
            CHUNK,
            CHUNK + 3,
            262_147,
            1_048_577,
            3 * CHUNK + 2,
        ];
        let map = LaunchMap::new(&lens).unwrap();
        for lanes in [4, 2] {
            for aligned in [true, false] {
                let mut seen: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0; n]).collect();
                for (k, counts) in seen.iter_mut().enumerate() {
                    for block in map.blocks_of(k) {
                        for thread in 0..BLOCK {
                            for e in map.thread_elements(&lens, block, thread, lanes, aligned) {
                                counts[e] += 1;
                            }
                        }
                    }
                }
                for (k, s) in seen.iter().enumerate() {
                    assert!(
                        s.iter().all(|&c| c == 1),
                        "tensor {k} of {} (lanes {lanes}, aligned {aligned})",
                        lens[k]
                    );
                }
            }
        }
    }

    #[test]
    fn blocks_follow_each_tensor_size() {
        let map = LaunchMap::new(&[10_000_000, 0, 1000, 1]).unwrap();
        assert_eq!(map.blocks_of(0), 0..611);
        assert_eq!(map.blocks_of(1), 611..611);
        assert_eq!(map.blocks_of(2), 611..612);
        assert_eq!(map.blocks(), 613);
        assert_eq!(map.entries()[612], 3 << 32);
        assert!(LaunchMap::new(&[]).unwrap().blocks() == 0);
        assert!(LaunchMap::new(&[usize::MAX]).is_err());
    }

    /// GPT-2 small's 148 tensors: blocks in proportion to their elements,
    /// against one grid as large as the largest tensor needs for every
    /// tensor (the uniform launch, capped at 1,024 blocks per tensor).
    #[test]
    fn a_model_launches_in_proportion_to_its_tensors() {
        let d = 768;
        let mut lens = vec![50_257 * d, 1024 * d];
        for _ in 0..12 {
            lens.extend([
                d,
                d,
                3 * d * d,
                3 * d,
                d * d,
                d,
                d,
                d,
                4 * d * d,
                4 * d,
                4 * d * d,
                d,
            ]);
        }
        lens.extend([d, d]);
        assert_eq!(lens.len(), 148);
        let total: usize = lens.iter().sum();
        let map = LaunchMap::new(&lens).unwrap();
        // Each tensor's blocks cover it; all blocks together exceed the
        // elements' share by at most one partial chunk per tensor.
        assert!(map.blocks() * CHUNK >= total);
        assert!(map.blocks() <= total / CHUNK + lens.len());
        let uniform = lens.len() * 1024;
        assert!(map.blocks() * 15 < uniform, "{} vs {uniform}", map.blocks());
        for (k, n) in lens.iter().enumerate() {
            assert_eq!(map.blocks_of(k).len(), n.div_ceil(CHUNK));
        }
    }
}
