//! lensopt's own GEMM kernel, for the products `matrixmultiply` does not
//! serve well: products of bfloat16 matrices, and symmetric products.
//!
//! - [`gemm_bf16`]: `c = a @ b` with the operands' values rounded to
//!   bfloat16 (ties to even) and their products accumulated in f32. A
//!   product of two bfloat16 values is exact in f32, so this is the f32
//!   GEMM of the rounded operands, in this kernel's order of summation. On
//!   x86-64 CPUs with AVX-512-BF16 the products run on its dot-product
//!   instruction (`vdpbf16ps`: two products and their sum a lane, twice the
//!   multiplications of an f32 FMA per instruction), over operands packed
//!   in pairs of k. That instruction treats bfloat16 subnormals as zero and
//!   flushes subnormal sums to zero; the rounding is to nearest even, as
//!   f32 arithmetic. Elsewhere the rounded operands go to the f32 GEMM.
//! - [`gemm_symmetric_f32`]: an f32 product the caller knows to be
//!   symmetric, on AVX-512 FMA tiles where the CPU has them.
//!
//! A product the caller knows to be symmetric (`x xᵀ`, `S S` of a
//! symmetric `S`) computes only the tiles that reach the diagonal or lie
//! above it, and mirrors them: every element sums the same products in the
//! same order as its mirror image, so the result is the one the full
//! product of this kernel gives, bit for bit.

use crate::float::{bf16_bits as bits, bf16_of_f32};
use rayon::prelude::*;

/// An operand: its values and (row, column) strides.
pub type Operand<'a> = (&'a [f32], (usize, usize));

/// `c = a @ b` for `a` (m × k) and `b` (k × n), `c` (m × n) row-major
/// (every element written, none read),
/// the operands rounded to bfloat16; with `symmetric`, the caller states
/// that the result is symmetric (m = n), and only its upper triangle is
/// computed. Panics when an operand's slice does not hold its shape, or
/// `c` does not hold m × n (callers size them).
pub fn gemm_bf16(
    m: usize,
    k: usize,
    n: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    c: &mut [f32],
    symmetric: bool,
) {
    if !sized(m, k, n, a, b, c) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if <packed::Bf16 as packed::Kind>::supported() {
        packed::gemm::<packed::Bf16>(m, k, n, a, b, c, symmetric && m == n);
        return;
    }
    rounded_f32(m, k, n, a, b, c);
    if symmetric && m == n {
        // (Exactly symmetric, as the packed kernel's result.)
        mirror_upper(n, c);
    }
}

/// `c = a @ b` for `a` (n × k) and `b` (k × n) whose product the caller
/// states to be symmetric (`x xᵀ`, `S S` of a symmetric `S`), `c` (n × n)
/// row-major (every element written, none read), accumulated in f32: the
/// upper triangle on AVX-512 FMA tiles, mirrored, where the CPU has
/// AVX-512F; the f32 GEMM otherwise. Panics as [`gemm_bf16`].
pub fn gemm_symmetric_f32(n: usize, k: usize, a: Operand<'_>, b: Operand<'_>, c: &mut [f32]) {
    if !sized(n, k, n, a, b, c) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if <packed::F32 as packed::Kind>::supported() {
        packed::gemm::<packed::F32>(n, k, n, a, b, c, true);
        return;
    }
    <f32 as crate::Float>::gemm(n, k, n, a, b, c);
    // (Exactly symmetric, as the packed kernel's result.)
    mirror_upper(n, c);
}

/// Checks a product's sizes (panicking as the entry points say) and
/// computes the empty ones; true when a product is left to compute.
fn sized(m: usize, k: usize, n: usize, a: Operand<'_>, b: Operand<'_>, c: &mut [f32]) -> bool {
    assert!(c.len() == m * n, "gemm: the output does not hold {m} × {n}");
    if m == 0 || n == 0 {
        return false;
    }
    if k == 0 {
        c.fill(0.0);
        return false;
    }
    assert!(
        holds(a, m, k) && holds(b, k, n),
        "gemm: an operand does not hold its {m} × {k} × {n} shape"
    );
    true
}

/// Whether `data` holds every index `i * rs + j * cs` of a `rows × cols`
/// operand (`rows`, `cols` > 0).
fn holds((data, (rs, cs)): Operand<'_>, rows: usize, cols: usize) -> bool {
    (rows - 1)
        .checked_mul(rs)
        .zip((cols - 1).checked_mul(cs))
        .and_then(|(x, y)| x.checked_add(y))
        .is_some_and(|last| last < data.len())
}

/// The portable path: both operands rounded into row-major copies, then
/// the f32 GEMM.
fn rounded_f32(m: usize, k: usize, n: usize, a: Operand<'_>, b: Operand<'_>, c: &mut [f32]) {
    let copy = |(data, (rs, cs)): Operand<'_>, rows: usize, cols: usize| -> Vec<f32> {
        (0..rows)
            .flat_map(|i| (0..cols).map(move |j| bf16_of_f32(data[i * rs + j * cs])))
            .collect()
    };
    let (ra, rb) = (copy(a, m, k), copy(b, k, n));
    <f32 as crate::Float>::gemm(m, k, n, (&ra, (k, 1)), (&rb, (n, 1)), c);
}

#[cfg(target_arch = "x86_64")]
mod packed {
    //! The AVX-512 kernel: blocks of k packed in words (pairs of bfloat16
    //! values, or f32 values), an `MR × NR` tile of f32 sums in registers.
    use super::{bits, Operand};
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// Rows of a tile.
    const MR: usize = 6;
    /// Vectors of 16 f32 across a tile.
    const NV: usize = 4;
    /// Columns of a tile.
    const NR: usize = 16 * NV;
    /// Words of k in a packed slice (512 values of k in bfloat16): a tile
    /// reads 6 KiB of `a` and 64 KiB of `b` a slice (measured on AMD Zen 4:
    /// 128 words, which fit L1, run no faster, and twice as many slices of
    /// `c`).
    const KP: usize = 256;
    /// Rows of `c` a task computes (a multiple of `MR`): small, so that
    /// a symmetric product's tasks (their work shrinks down the diagonal)
    /// share out evenly.
    const MC: usize = 4 * MR;
    /// Columns of `c` a task computes at a time (a multiple of `NR`):
    /// `MC × NC` f32 sums, 192 KiB, stay in L2.
    const NC: usize = 32 * NR;
    /// Packed words of both operands at a time (32 MiB): a chunk of k
    /// stays in the last-level cache while every task reads it.
    const CHUNK: usize = 1 << 23;

    /// What a packed word holds, how operands are packed into words, and
    /// the register tile that multiplies them.
    pub(super) trait Kind {
        /// A packed word.
        type Word: Copy + Default + Send + Sync + 'static;
        /// Values of k a word holds.
        const PER_WORD: usize;
        /// Whether the CPU runs this kind's code.
        fn supported() -> bool;
        /// [`pack_operand`]'s layout for one group of `L` lines from `l0`
        /// (zero past `count`) of an operand whose lines are not adjacent.
        fn pack<const L: usize>(
            data: &[f32],
            strides: (usize, usize),
            sizes: (usize, usize),
            l0: usize,
            k0: usize,
            words: usize,
            out: &mut [Self::Word],
        );
        /// [`pack_operand`]'s layout for whole groups of lines from `l0`,
        /// the lines adjacent in memory (line `l`, value `kk` at `l + kk *
        /// along_k`).
        fn pack_adjacent<const L: usize>(
            data: &[f32],
            along_k: usize,
            sizes: (usize, usize),
            l0: usize,
            k0: usize,
            words: usize,
            out: &mut [Self::Word],
        );
        /// `s += a-panel @ b-panel` for the `MR × NR` tile at `s` (row
        /// stride `ld`; `s = ...`, not read, when `add` is false).
        ///
        /// # Safety
        /// [`Kind::supported`]; `a` points to `words * MR` and `b` to
        /// `words * NR` readable words, `s` to `MR` rows of `NR` writable
        /// f32 at stride `ld`.
        unsafe fn tile(
            words: usize,
            a: *const Self::Word,
            b: *const Self::Word,
            s: *mut f32,
            ld: usize,
            add: bool,
        );
    }

    /// Pairs of bfloat16 values of k in a `u32`, multiplied by `vdpbf16ps`.
    pub(super) struct Bf16;
    /// f32 values, multiplied by FMA.
    pub(super) struct F32;

    impl Kind for Bf16 {
        type Word = u32;
        const PER_WORD: usize = 2;
        fn supported() -> bool {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        }
        fn pack<const L: usize>(
            data: &[f32],
            strides: (usize, usize),
            sizes: (usize, usize),
            l0: usize,
            k0: usize,
            words: usize,
            out: &mut [u32],
        ) {
            pack_pairs::<L>(data, strides, sizes, l0, k0, words, out)
        }
        fn pack_adjacent<const L: usize>(
            data: &[f32],
            along_k: usize,
            sizes: (usize, usize),
            l0: usize,
            k0: usize,
            words: usize,
            out: &mut [u32],
        ) {
            pack_pairs_adjacent::<L>(data, along_k, sizes, l0, k0, words, out)
        }
        unsafe fn tile(
            words: usize,
            a: *const u32,
            b: *const u32,
            s: *mut f32,
            ld: usize,
            add: bool,
        ) {
            // SAFETY: the caller's contract is `tile_bf16`'s.
            unsafe { tile_bf16(words, a, b, s, ld, add) }
        }
    }

    impl Kind for F32 {
        type Word = f32;
        const PER_WORD: usize = 1;
        fn supported() -> bool {
            is_x86_feature_detected!("avx512f")
        }
        fn pack<const L: usize>(
            data: &[f32],
            (along_lines, along_k): (usize, usize),
            (count, k): (usize, usize),
            l0: usize,
            k0: usize,
            words: usize,
            out: &mut [f32],
        ) {
            let lines = L.min(count.saturating_sub(l0));
            let full = words.min(k - k0);
            zero_lines_past::<L, f32>(&mut out[..words * L], words, lines);
            for l in 0..lines {
                let base = (l0 + l) * along_lines + k0 * along_k;
                let slots = out[l..].iter_mut().step_by(L).take(full);
                if along_k == 1 {
                    for (o, x) in slots.zip(&data[base..base + full]) {
                        *o = *x;
                    }
                } else {
                    for (q, o) in slots.enumerate() {
                        *o = data[base + q * along_k];
                    }
                }
            }
        }
        fn pack_adjacent<const L: usize>(
            data: &[f32],
            along_k: usize,
            (count, k): (usize, usize),
            l0: usize,
            k0: usize,
            words: usize,
            out: &mut [f32],
        ) {
            let group_len = words * L;
            let groups = out.len() / group_len;
            let lines = (groups * L).min(count - l0);
            let full = words.min(k - k0);
            for q in 0..full {
                let start = l0 + (k0 + q) * along_k;
                let run = &data[start..start + lines];
                for (g, part) in run.chunks(L).enumerate() {
                    let at = g * group_len + q * L;
                    out[at..at + part.len()].copy_from_slice(part);
                }
            }
            zero_lines_past::<L, f32>(out, words, lines);
        }
        unsafe fn tile(
            words: usize,
            a: *const f32,
            b: *const f32,
            s: *mut f32,
            ld: usize,
            add: bool,
        ) {
            // SAFETY: the caller's contract is `tile_f32`'s.
            unsafe { tile_f32(words, a, b, s, ld, add) }
        }
    }
    /// Lines a task packs together where lines are adjacent in memory:
    /// about 1 KiB of each of two rows of the operand per pair of k.
    const ADJACENT_LINES: usize = 256;

    /// `c = a @ b` (nothing of `c` read), the operands packed as `K`
    /// packs them; with `upper`, only tiles reaching the diagonal or above
    /// it, then mirrored. The caller has checked that the operands hold
    /// their shapes and that the CPU runs `K` ([`Kind::supported`]).
    pub(super) fn gemm<K: Kind>(
        m: usize,
        k: usize,
        n: usize,
        a: Operand<'_>,
        b: Operand<'_>,
        c: &mut [f32],
        upper: bool,
    ) {
        debug_assert!(K::supported());
        let (strips, panels) = (m.div_ceil(MR), n.div_ceil(NR));
        let words_total = k.div_ceil(K::PER_WORD);
        // Both operands are packed a chunk of k at a time: whole slices of
        // `KP` words, at most `CHUNK` words when k allows.
        let chunk = (CHUNK / (strips * MR + panels * NR)).max(KP) / KP * KP;
        let most = chunk.min(words_total);
        let mut packed_a = crate::kept_arrays::overwritten::<K::Word>(strips * MR * most);
        let mut packed_b = crate::kept_arrays::overwritten::<K::Word>(panels * NR * most);
        let (b_data, (rsb, csb)) = b;
        for c0 in (0..words_total).step_by(chunk) {
            let span = chunk.min(words_total - c0);
            let k0 = K::PER_WORD * c0;
            let pa = &mut packed_a[..strips * MR * span];
            pack_operand::<K, MR>(a.0, a.1, (m, k), k0, span, pa);
            let pb = &mut packed_b[..panels * NR * span];
            pack_operand::<K, NR>(b_data, (csb, rsb), (n, k), k0, span, pb);
            let (pa, pb) = (&*pa, &*pb);
            // A task per block of rows: its slice of `c` (at most `NC`
            // columns at a time) stays in L2 through every slice of k.
            c.par_chunks_mut(MC * n)
                .enumerate()
                .with_max_len(1)
                .for_each(|(block, rows_of_c)| {
                    let i0 = block * MC;
                    let mc = rows_of_c.len() / n;
                    for jc in (0..panels).step_by(NC / NR) {
                        if upper && (jc + NC / NR) * NR <= i0 {
                            continue; // wholly below the diagonal
                        }
                        for p0 in (0..span).step_by(KP) {
                            let words = KP.min(span - p0);
                            let first = c0 == 0 && p0 == 0;
                            for jp in jc..(jc + NC / NR).min(panels) {
                                let j0 = jp * NR;
                                let at = (jp * span + p0) * NR;
                                let panel_b = &pb[at..at + words * NR];
                                for r0 in (0..mc).step_by(MR) {
                                    if upper && j0 + NR <= i0 + r0 {
                                        continue; // wholly below the diagonal
                                    }
                                    let at = (((i0 + r0) / MR) * span + p0) * MR;
                                    let panel_a = &pa[at..at + words * MR];
                                    let out = &mut rows_of_c[r0 * n + j0..];
                                    let shape = (MR.min(mc - r0), NR.min(n - j0));
                                    tile::<K>(words, panel_a, panel_b, out, n, shape, !first);
                                }
                            }
                        }
                    }
                });
        }
        crate::kept_arrays::keep(packed_a);
        crate::kept_arrays::keep(packed_b);
        if upper {
            super::mirror_upper(n, c);
        }
    }

    /// Packs an operand of `count` lines (`a`'s rows, or `b`'s columns)
    /// for the tiles, `span` words of k from `k0`: `out` holds a group of
    /// `L` lines after another, each `span` words of `L` lines, word `q` of
    /// line `l` at `q * L + l` (for bfloat16, values `k0 + 2q` in the low
    /// half and `k0 + 2q + 1` in the high half; zero past `k` and for lines
    /// past `count`). The element `(line, kk)` is `data[line * along_lines
    /// + kk * along_k]`.
    fn pack_operand<K: Kind, const L: usize>(
        data: &[f32],
        (along_lines, along_k): (usize, usize),
        (count, k): (usize, usize),
        k0: usize,
        span: usize,
        out: &mut [K::Word],
    ) {
        let group = span * L;
        if along_lines == 1 && along_k != 1 {
            // Lines adjacent in memory: a task reads runs across several
            // groups' lines for each word, rather than a short run each.
            let groups = (ADJACENT_LINES / L).max(1);
            out.par_chunks_mut(groups * group)
                .enumerate()
                .for_each(|(t, out)| {
                    K::pack_adjacent::<L>(data, along_k, (count, k), t * groups * L, k0, span, out)
                });
        } else {
            out.par_chunks_mut(group).enumerate().for_each(|(g, out)| {
                K::pack::<L>(
                    data,
                    (along_lines, along_k),
                    (count, k),
                    g * L,
                    k0,
                    span,
                    out,
                )
            });
        }
    }

    /// Zeroes the words of lines `lines..` in `out`, groups of `L` lines of
    /// `words` words each (as [`pack_operand`] lays them out): the padding
    /// past an operand's last line.
    fn zero_lines_past<const L: usize, W: Copy + Default>(
        out: &mut [W],
        words: usize,
        lines: usize,
    ) {
        let group_len = words * L;
        for l in lines..out.len() / words {
            let start = (l / L) * group_len + l % L;
            for x in out[start..].iter_mut().step_by(L).take(words) {
                *x = W::default();
            }
        }
    }

    /// [`pack_operand`]'s layout for whole groups of lines from `l0`, the
    /// lines adjacent in memory (line `l`, value `kk` at `l + kk *
    /// along_k`): each pair of k is two runs across all of them, zipped 16
    /// lines at a time.
    fn pack_pairs_adjacent<const L: usize>(
        data: &[f32],
        along_k: usize,
        (count, k): (usize, usize),
        l0: usize,
        k0: usize,
        pairs: usize,
        out: &mut [u32],
    ) {
        let group_len = pairs * L;
        let lines = (out.len() / pairs).min(count - l0);
        let full = pairs.min((k - k0) / 2);
        let at = |l: usize, q: usize| (l / L) * group_len + q * L + l % L;
        let mut zipped = [0u32; 16];
        for q in 0..full {
            let start = l0 + (k0 + 2 * q) * along_k;
            let lo = &data[start..start + lines];
            let hi = &data[start + along_k..start + along_k + lines];
            for (c, (lo, hi)) in lo.chunks(16).zip(hi.chunks(16)).enumerate() {
                let zipped = &mut zipped[..lo.len()];
                // SAFETY: the CPU has what `gemm` requires (the only
                // caller); the three slices have one length, at most 16.
                unsafe { zipped16(lo, hi, zipped) };
                let first = c * 16;
                if L.is_multiple_of(16) {
                    // The 16 lines lie in one group, side by side.
                    let at = at(first, q);
                    out[at..at + zipped.len()].copy_from_slice(zipped);
                } else {
                    let (mut group, mut l) = (first / L, first % L);
                    for x in zipped.iter() {
                        out[group * group_len + q * L + l] = *x;
                        l += 1;
                        if l == L {
                            (group, l) = (group + 1, 0);
                        }
                    }
                }
            }
        }
        // An odd k's last pair, and the lines past `count`.
        for q in full..pairs {
            for l in 0..lines {
                out[at(l, q)] = bits(data[l0 + l + (k0 + 2 * q) * along_k]);
            }
        }
        zero_lines_past::<L, u32>(out, pairs, lines);
    }

    /// [`pack_operand`]'s layout for one group of `L` lines from `l0`
    /// (zero past `count`), from an operand whose lines are not adjacent.
    fn pack_pairs<const L: usize>(
        data: &[f32],
        (along_lines, along_k): (usize, usize),
        (count, k): (usize, usize),
        l0: usize,
        k0: usize,
        pairs: usize,
        out: &mut [u32],
    ) {
        let lines = L.min(count.saturating_sub(l0));
        let full = pairs.min((k - k0) / 2);
        zero_lines_past::<L, u32>(&mut out[..pairs * L], pairs, lines);
        for l in 0..lines {
            let base = (l0 + l) * along_lines + k0 * along_k;
            if along_k == 1 {
                let run = &data[base..base + 2 * full];
                let mut q = 0;
                for block in run.chunks_exact(32) {
                    // SAFETY: the CPU has what `gemm` requires (the only
                    // caller); `block` holds 32 values.
                    let two = unsafe { pairs16(block) };
                    for (o, x) in out[q * L + l..].iter_mut().step_by(L).zip(two) {
                        *o = x;
                    }
                    q += 16;
                }
                for two in run[2 * q..].chunks_exact(2) {
                    out[q * L + l] = bits(two[0]) | (bits(two[1]) << 16);
                    q += 1;
                }
            } else {
                for q in 0..full {
                    let at = base + 2 * q * along_k;
                    out[q * L + l] = bits(data[at]) | (bits(data[at + along_k]) << 16);
                }
            }
        }
        // An odd k: the last pair's second value is zero.
        for q in full..pairs {
            for l in 0..lines {
                let at = (l0 + l) * along_lines + (k0 + 2 * q) * along_k;
                out[q * L + l] = bits(data[at]);
            }
        }
    }

    /// 32 consecutive values of k as 16 pairs, rounded by the CPU
    /// (`vcvtne2ps2bf16`: to nearest even, NaN quieted; subnormals, which
    /// the products treat as zero anyway, flushed).
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX-512-BF16; `x` holds 32 values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pairs16(x: &[f32]) -> [u32; 16] {
        debug_assert!(x.len() >= 32);
        let lo = _mm512_loadu_ps(x.as_ptr());
        let hi = _mm512_loadu_ps(x.as_ptr().add(16));
        let mut out = [0u32; 16];
        let v = as_bits(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
        out
    }

    /// `out[j]` = `lo[j]` and `hi[j]` rounded (as [`pairs16`]) into one
    /// pair, for the slices' length (masked loads and stores: nothing past
    /// them is touched).
    ///
    /// # Safety
    /// As [`pairs16`]; the three slices have one length, at most 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn zipped16(lo: &[f32], hi: &[f32], out: &mut [u32]) {
        debug_assert!(lo.len() <= 16 && hi.len() == lo.len() && out.len() == lo.len());
        let mask: __mmask16 = ((1u32 << lo.len()) - 1) as u16;
        let a = _mm512_maskz_loadu_ps(mask, lo.as_ptr());
        let b = _mm512_maskz_loadu_ps(mask, hi.as_ptr());
        // Halves [lo's 16, hi's 16], interleaved: lane j of the result is
        // (lo[j], hi[j]).
        let halves = as_bits(_mm512_cvtne2ps_pbh(b, a));
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        let pairs = _mm512_permutexvar_epi16(order, halves);
        _mm512_mask_storeu_epi32(out.as_mut_ptr().cast(), mask, pairs);
    }

    /// Adds the product of a packed `MR`-row panel of `a` and a packed
    /// `NR`-column panel of `b` (`pairs` pairs of k) to the `rows × cols`
    /// corner of `out` (row stride `ld`), or with `add` false, writes it
    /// there.
    fn tile<K: Kind>(
        words: usize,
        a: &[K::Word],
        b: &[K::Word],
        out: &mut [f32],
        ld: usize,
        (rows, cols): (usize, usize),
        add: bool,
    ) {
        assert!(a.len() >= words * MR && b.len() >= words * NR && rows <= MR && cols <= NR);
        assert!(rows > 0 && cols > 0 && ld >= cols && out.len() >= (rows - 1) * ld + cols);
        if rows == MR && cols == NR {
            // SAFETY: the CPU runs `K` (the caller, this module's `gemm`,
            // runs only there); `a` and `b` hold `words` words of their
            // panels, and `out` a whole tile at row stride `ld` (checked
            // above).
            unsafe { K::tile(words, a.as_ptr(), b.as_ptr(), out.as_mut_ptr(), ld, add) };
            return;
        }
        let mut sums = [0f32; MR * NR];
        if add {
            for r in 0..rows {
                sums[r * NR..r * NR + cols].copy_from_slice(&out[r * ld..r * ld + cols]);
            }
        }
        // SAFETY: as above, with `sums` a whole tile at row stride `NR`.
        unsafe { K::tile(words, a.as_ptr(), b.as_ptr(), sums.as_mut_ptr(), NR, true) };
        for r in 0..rows {
            out[r * ld..r * ld + cols].copy_from_slice(&sums[r * NR..r * NR + cols]);
        }
    }

    /// The register tile: `s += a-panel @ b-panel` for the `MR × NR`
    /// tile at `s` (row stride `ld`; `s = ...` when `add` is false, and
    /// `s` is not read), its sums in `MR × NV` vectors, each step of k
    /// `NV` `vdpbf16ps` a row.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512-BF16; `a` points to `pairs * MR`
    /// and `b` to `pairs * NR` readable u32, `s` to `MR` rows of `NR`
    /// writable f32 at stride `ld`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_bf16(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        s: *mut f32,
        ld: usize,
        add: bool,
    ) {
        let mut acc = sums_at(s, ld, add);
        for q in 0..pairs {
            let bq = b.add(q * NR);
            let mut bv = [as_bf16(_mm512_setzero_si512()); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = as_bf16(_mm512_loadu_si512(bq.add(16 * v).cast()));
            }
            let aq = a.add(q * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let x = as_bf16(_mm512_set1_epi32(*aq.add(r) as i32));
                for (sum, b) in row.iter_mut().zip(&bv) {
                    *sum = _mm512_dpbf16_ps(*sum, x, *b);
                }
            }
        }
        store_sums(&acc, s, ld);
    }

    /// A tile's sums: the `MR × NR` f32 at `s` (row stride `ld`), or zeros
    /// when `add` is false.
    ///
    /// # Safety
    /// The CPU has AVX-512F; with `add`, `s` points to `MR` rows of `NR`
    /// readable f32 at stride `ld`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sums_at(s: *const f32, ld: usize, add: bool) -> [[__m512; NV]; MR] {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for (r, row) in acc.iter_mut().enumerate().filter(|_| add) {
            for (v, x) in row.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(s.add(r * ld + 16 * v));
            }
        }
        acc
    }

    /// Stores a tile's sums at `s` (row stride `ld`).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `s` points to `MR` rows of `NR` writable f32
    /// at stride `ld`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_sums(acc: &[[__m512; NV]; MR], s: *mut f32, ld: usize) {
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(s.add(r * ld + 16 * v), *x);
            }
        }
    }

    /// [`tile_bf16`] for f32 words: each step of k `NV` FMAs a row.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` points to `words * MR` and `b` to `words
    /// * NR` readable f32, `s` to `MR` rows of `NR` writable f32 at stride
    /// `ld`.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_f32(
        words: usize,
        a: *const f32,
        b: *const f32,
        s: *mut f32,
        ld: usize,
        add: bool,
    ) {
        let mut acc = sums_at(s, ld, add);
        for q in 0..words {
            let bq = b.add(q * NR);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bq.add(16 * v));
            }
            let aq = a.add(q * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*aq.add(r));
                for (sum, b) in row.iter_mut().zip(&bv) {
                    *sum = _mm512_fmadd_ps(x, *b, *sum);
                }
            }
        }
        store_sums(&acc, s, ld);
    }

    /// 32 bfloat16 values in the 512 bits of `x`.
    #[inline(always)]
    fn as_bf16(x: __m512i) -> __m512bh {
        // SAFETY: both are 512-bit vectors, every bit pattern valid in each.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
    }

    /// The 512 bits of 32 bfloat16 values.
    #[inline(always)]
    fn as_bits(x: __m512bh) -> __m512i {
        // SAFETY: as `as_bf16`.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(x) }
    }
}

/// Copies the upper triangle of the `n × n` matrix `c` onto the lower,
/// a stripe of rows a task, in blocks of 8 × 8 (with rows 4 KiB apart,
/// larger blocks of a column overflow the cache's ways).
fn mirror_upper(n: usize, c: &mut [f32]) {
    const B: usize = 8;
    assert!(c.len() == n * n);
    let shared = SharedOutput(c.as_mut_ptr());
    (0..n.div_ceil(B)).into_par_iter().for_each(|stripe| {
        let shared = &shared;
        let rows = stripe * B..((stripe + 1) * B).min(n);
        for bj in (0..rows.end).step_by(B) {
            for j in bj..(bj + B).min(rows.end) {
                for i in rows.clone() {
                    if j < i {
                        // SAFETY: `i, j < n`, so both indices lie in
                        // `c`; tasks write only elements below the
                        // diagonal (j < i) of their own rows, and read
                        // only elements above it, which nothing writes.
                        unsafe { *shared.0.add(i * n + j) = *shared.0.add(j * n + i) };
                    }
                }
            }
        }
    });
}

/// `c`'s buffer, shared by the tasks that mirror it (see
/// `mirror_upper` for why their accesses never overlap).
struct SharedOutput(*mut f32);
// SAFETY: the tasks holding it read and write disjoint elements.
unsafe impl Sync for SharedOutput {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values spread over several binades, a fixed pseudo-random sequence.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                ((u - 0.5) * 4.0 * (1.0 + (s % 5) as f64)) as f32
            })
            .collect()
    }

    /// `a @ b` of the bfloat16-rounded operands in f64, and the sum of the
    /// products' magnitudes (the scale of f32's rounding error).
    fn reference(m: usize, k: usize, n: usize, a: Operand<'_>, b: Operand<'_>) -> Vec<(f64, f64)> {
        let at = |(d, (rs, cs)): Operand<'_>, i: usize, j: usize| {
            f64::from(bf16_of_f32(d[i * rs + j * cs]))
        };
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0.0, 0.0);
                for l in 0..k {
                    let p = at(a, i, l) * at(b, l, j);
                    s += p;
                    mag += p.abs();
                }
                out.push((s, mag));
            }
        }
        out
    }

    #[test]
    fn products_of_rounded_operands_match_f64_on_edges_strides_and_odd_k() {
        // Shapes around the tile (12 × 32), the task's rows (96) and the
        // packed slice of k (256), past the task's columns (1,024) and
        // the packed chunk of `b` (2^23 pairs), with row-major and
        // transposed operands.
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 33),
            (96, 257, 31),
            (100, 513, 70),
            (25, 600, 97),
            (2, 8301, 2100),
        ] {
            let a_data = values(m * k, (m * 31 + k) as u64);
            let b_data = values(k * n, (n * 17 + k) as u64);
            for (a, b) in [
                ((&a_data[..], (k, 1)), (&b_data[..], (n, 1))),
                ((&a_data[..], (1, m)), (&b_data[..], (1, k))),
            ] {
                let mut c = vec![f32::NAN; m * n];
                gemm_bf16(m, k, n, a, b, &mut c, false);
                let mut portable = vec![f32::NAN; m * n];
                rounded_f32(m, k, n, a, b, &mut portable);
                let want = reference(m, k, n, a, b);
                for (got, (want, mag)) in c.iter().chain(&portable).zip(want.iter().chain(&want)) {
                    let (want, mag) = (*want, *mag);
                    let err = (f64::from(*got) - want).abs();
                    assert!(
                        err <= mag * 1e-6 + 1e-30,
                        "{m}×{k}×{n}: {got} against {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_symmetric_product_is_the_full_product_bit_for_bit() {
        // (1,100: past the task's columns; its square is left out, slow in
        // a debug build.)
        for &(n, k) in &[(5, 9), (40, 33), (130, 300), (200, 64), (1100, 24)] {
            let x = values(n * k, (n + k) as u64);
            // x xᵀ, then the square of its bfloat16 rounding.
            let (a, b) = ((&x[..], (k, 1)), (&x[..], (1, k)));
            let (mut full, mut half) = (vec![0f32; n * n], vec![1f32; n * n]);
            gemm_bf16(n, k, n, a, b, &mut full, false);
            gemm_bf16(n, k, n, a, b, &mut half, true);
            assert_eq!(
                full.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                half.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            if n > 1000 {
                continue;
            }
            let s: Vec<f32> = full.iter().map(|&x| bf16_of_f32(x)).collect();
            let (a, b) = ((&s[..], (n, 1)), (&s[..], (n, 1)));
            gemm_bf16(n, n, n, a, b, &mut full, false);
            gemm_bf16(n, n, n, a, b, &mut half, true);
            assert_eq!(
                full.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                half.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn symmetric_f32_products_match_f64_and_are_symmetric_bit_for_bit() {
        // Past the tile (6 × 64), the task's rows (24), the slice of k (256)
        // and the task's columns (2,048); both operand layouts (x xᵀ from a
        // row-major x, xᵀ x from a row-major x: rows adjacent in memory).
        for &(n, k) in &[(1, 1), (7, 3), (70, 300), (130, 257), (2100, 5)] {
            let x = values(n * k, (n * 3 + k) as u64);
            let exact = |a: Operand<'_>, b: Operand<'_>| {
                let at =
                    |(d, (rs, cs)): Operand<'_>, i: usize, j: usize| f64::from(d[i * rs + j * cs]);
                let mut out = Vec::with_capacity(n * n);
                for i in 0..n {
                    for j in 0..n {
                        let terms = (0..k).map(|l| at(a, i, l) * at(b, l, j));
                        let (s, mag) = terms.fold((0.0, 0.0), |(s, m), p| (s + p, m + f64::abs(p)));
                        out.push((s, mag));
                    }
                }
                out
            };
            // x (n × k) as x xᵀ; the same values as a k × n matrix y, yᵀ y.
            for (a, b) in [
                ((&x[..], (k, 1)), (&x[..], (1, k))),
                ((&x[..], (1, n)), (&x[..], (n, 1))),
            ] {
                let mut c = vec![f32::NAN; n * n];
                gemm_symmetric_f32(n, k, a, b, &mut c);
                let want = exact(a, b);
                for i in 0..n {
                    for j in 0..n {
                        let got = c[i * n + j];
                        assert_eq!(
                            got.to_bits(),
                            c[j * n + i].to_bits(),
                            "({i}, {j}) of {n} × {k}"
                        );
                        let (w, mag) = want[i * n + j];
                        let bound = k as f64 * f64::from(f32::EPSILON) * mag;
                        assert!(
                            (f64::from(got) - w).abs() <= bound + 1e-30,
                            "{n} × {k}: {got} against {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn random_shapes_and_layouts_agree_with_the_portable_path() {
        // 150 products of random sizes (up to 3 tiles of each kind), each
        // operand row-major or transposed: the packed kernel against the
        // rounded operands' f32 GEMM, within f32's bound for the sum.
        let sizes = values(450, 99);
        for t in 0..150 {
            let size = |i: usize| 1 + (sizes[3 * t + i].abs() * 23.0) as usize % 70;
            let (m, k, n) = (size(0), size(1) * 3, size(2));
            let a_data = values(m * k, t as u64 + 1);
            let b_data = values(k * n, t as u64 + 1000);
            let a = if t % 2 == 0 {
                (&a_data[..], (k, 1))
            } else {
                (&a_data[..], (1, m))
            };
            let b = if t % 3 == 0 {
                (&b_data[..], (n, 1))
            } else {
                (&b_data[..], (1, k))
            };
            let mut packed = vec![f32::NAN; m * n];
            gemm_bf16(m, k, n, a, b, &mut packed, false);
            let mut portable = vec![f32::NAN; m * n];
            rounded_f32(m, k, n, a, b, &mut portable);
            for (i, (x, (w, mag))) in packed.iter().zip(reference(m, k, n, a, b)).enumerate() {
                let bound = k as f64 * f64::from(f32::EPSILON) * mag;
                assert!(
                    (f64::from(*x) - w).abs() <= bound + 1e-30,
                    "{m}×{k}×{n} [{i}]"
                );
                assert!(
                    (f64::from(portable[i]) - w).abs() <= bound + 1e-30,
                    "{m}×{k}×{n} [{i}]"
                );
            }
        }
    }

    #[test]
    fn mirroring_copies_the_upper_triangle_onto_the_lower() {
        for n in [1, 7, 8, 9, 70] {
            let original = values(n * n, n as u64);
            let mut c = original.clone();
            mirror_upper(n, &mut c);
            for i in 0..n {
                for j in 0..n {
                    let want = if j >= i {
                        original[i * n + j]
                    } else {
                        original[j * n + i]
                    };
                    assert_eq!(c[i * n + j].to_bits(), want.to_bits(), "({i}, {j}) of {n}");
                }
            }
        }
    }

    #[test]
    fn empty_and_mis_sized_operands() {
        let mut c = vec![5f32; 6];
        gemm_bf16(2, 0, 3, (&[], (0, 1)), (&[], (3, 1)), &mut c, false);
        assert_eq!(c, [0.0; 6]);
        let r = std::panic::catch_unwind(|| {
            let mut c = vec![0f32; 4];
            gemm_bf16(
                2,
                3,
                2,
                (&[1.0; 5], (3, 1)),
                (&[1.0; 6], (2, 1)),
                &mut c,
                false,
            );
        });
        assert!(r.is_err(), "a short operand is refused, not read past");
    }
}
