//! Which rank owns which elements of each tensor.

use crate::error::{mismatch, Error};
use lensopt_codegen::cpu::execute::CHUNK;
use std::ops::Range;

/// For every tensor, the contiguous range of elements each rank owns, in
/// rank order, covering the tensor (some ranges may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    numels: Vec<usize>,
    ranges: Vec<Vec<Range<usize>>>,
}

impl ShardLayout {
    /// Element-wise sharding: each tensor's chunks of [`CHUNK`] elements
    /// (the unit in which a step combines reductions) are split as evenly
    /// as whole chunks allow, consecutive chunks to consecutive ranks.
    /// Which rank takes the odd chunk rotates with the tensor's index, so
    /// that tensors of one chunk spread over the ranks.
    pub fn chunked(numels: &[usize], ranks: usize) -> Result<Self, Error> {
        Self::with(numels, ranks, |k, n| {
            let chunks = n.div_ceil(CHUNK);
            let shift = k % ranks.max(1);
            let bound = |r: usize| -> usize {
                let c = if r == 0 {
                    0
                } else {
                    ((chunks * r + shift) / ranks).min(chunks)
                };
                (c * CHUNK).min(n)
            };
            (0..ranks).map(|r| bound(r)..bound(r + 1)).collect()
        })
    }

    /// The layout whose tensor `k` of `n` elements `ranges(k, n)` splits.
    fn with(
        numels: &[usize],
        ranks: usize,
        ranges: impl Fn(usize, usize) -> Vec<Range<usize>>,
    ) -> Result<Self, Error> {
        if ranks == 0 {
            return Err(mismatch("a layout needs at least one rank"));
        }
        Ok(ShardLayout {
            numels: numels.to_vec(),
            ranges: numels
                .iter()
                .enumerate()
                .map(|(k, &n)| ranges(k, n))
                .collect(),
        })
    }

    /// Whole tensors: tensor `k` belongs to rank `k % ranks` (for rules
    /// that need a whole matrix at once).
    pub fn whole(numels: &[usize], ranks: usize) -> Result<Self, Error> {
        Self::with(numels, ranks, |k, n| {
            let owner = k % ranks.max(1);
            (0..ranks)
                .map(|r| match r.cmp(&owner) {
                    std::cmp::Ordering::Less => 0..0,
                    std::cmp::Ordering::Equal => 0..n,
                    std::cmp::Ordering::Greater => n..n,
                })
                .collect()
        })
    }

    /// The number of tensors.
    pub fn tensors(&self) -> usize {
        self.numels.len()
    }

    /// Elements of tensor `k`.
    pub fn numel(&self, k: usize) -> Result<usize, Error> {
        self.numels.get(k).copied().ok_or_else(|| {
            mismatch(format!(
                "no tensor {k} in a layout of {}",
                self.numels.len()
            ))
        })
    }

    /// Every tensor's length.
    pub fn numels(&self) -> &[usize] {
        &self.numels
    }

    /// Each rank's range of tensor `k`, in rank order.
    pub fn ranges(&self, k: usize) -> Result<&[Range<usize>], Error> {
        self.ranges.get(k).map(Vec::as_slice).ok_or_else(|| {
            mismatch(format!(
                "no tensor {k} in a layout of {}",
                self.numels.len()
            ))
        })
    }
}
