//! Unstructured magnitude pruning with an exact threshold found in O(n).
//!
//! Called by the pruning job on its worker thread; the optional parallel passes run on the
//! current rayon pool.
//!
//! For non-negative floats `to_bits()` is monotonic, so ranking `|w|` is ranking the `u32`
//! bits `w.to_bits() & 0x7fff_ffff`. The k-th smallest magnitude is found exactly with two
//! 65,536-bin histograms: one over the top 16 bits of all elements, then one over the low
//! 16 bits of the elements that fall in the top-level bin holding rank k. Memory is two
//! histograms per thread; nothing is sorted or copied. When several elements share the
//! threshold magnitude, the first ones in (tensor order, index order) are pruned so that
//! exactly `k = round(s · total)` elements are pruned overall; only in that (rare) split-tie
//! case a third read-only pass counts the ties per tensor.
//!
//! The work is split in two steps so that the caller can stream: [`global_cut`] /
//! [`per_layer_cuts`] read the weights (which may be an mmap) and return one [`Cut`] per
//! tensor; [`apply_cut`] then prunes one tensor at a time. [`prune_global`] and
//! [`prune_per_layer`] do both for tensors already in memory.

use rayon::prelude::*;

use super::{Mask, Parallelism, PruneError, PruneResult, PruneStats};

const BINS: usize = 1 << 16;
const ABS_MASK: u32 = 0x7fff_ffff;
/// `f32::INFINITY.to_bits()`: any larger absolute bit pattern is a NaN.
const INF_BITS: u32 = 0x7f80_0000;
/// Elements per parallel work unit (4 MiB of f32); a multiple of 64 so each unit of the
/// apply pass owns whole mask words, and < 2^32 so per-unit counters fit `u32`.
const CHUNK: usize = 1 << 20;

/// A named read-only tensor (row-major data; the shape does not matter to magnitude pruning).
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Name used in errors and statistics.
    pub name: &'a str,
    /// The weights.
    pub data: &'a [f32],
}

/// A named tensor to prune in place.
#[derive(Debug)]
pub struct TensorMut<'a> {
    /// Name used in errors and statistics.
    pub name: &'a str,
    /// The weights, pruned in place.
    pub data: &'a mut [f32],
}

/// What to prune in one tensor: every element with `|w| < threshold`, plus the first
/// [`Cut::ties`] elements (in index order) with `|w| == threshold`.
///
/// Built by [`global_cut`] / [`per_layer_cuts`] for the data they read; applying it to
/// other data prunes by the same rule but the counts are no longer guaranteed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cut {
    /// Reported threshold: the k-th smallest magnitude of the search (0 when k = 0).
    threshold: f32,
    /// Elements with absolute bits below this are pruned.
    below_bits: u32,
    /// Elements with absolute bits equal to `below_bits` pruned, first ones first.
    ties: u64,
}

impl Cut {
    const NOTHING: Cut = Cut { threshold: 0.0, below_bits: 0, ties: 0 };

    /// The magnitude threshold: elements below it are pruned, and [`Cut::ties`] of those
    /// equal to it. It is the largest magnitude the search pruned (shared by all tensors in
    /// the global scope), or 0 when the search pruned nothing.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// How many elements with `|w|` exactly at the boundary this tensor prunes.
    pub fn ties(&self) -> u64 {
        self.ties
    }
}

/// The result of a global threshold search: one [`Cut`] per input tensor, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalCut {
    /// The single magnitude threshold shared by all tensors.
    pub threshold: f32,
    /// Total number of elements over all tensors.
    pub total: u64,
    /// Number of elements the cuts prune together: `round(sparsity · total)`.
    pub k: u64,
    /// Per-tensor cut, same order as the input.
    pub cuts: Vec<Cut>,
}

/// Finds the global magnitude threshold pruning exactly `round(sparsity · total)` elements
/// (halves rounded up) over all `tensors`: scope "global", like
/// `np.percentile(|all weights|, s·100)` but exact and without sorting. Errors on NaN
/// (first one in tensor order) or a sparsity outside `[0, 1)`.
pub fn global_cut(tensors: &[TensorRef<'_>], sparsity: f64, par: Parallelism) -> Result<GlobalCut, PruneError> {
    check_sparsity("global pruning", sparsity)?;
    let total: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
    let k = target_count(sparsity, total);
    let (threshold, cuts) = find_cuts(tensors, k, par)?;
    Ok(GlobalCut { threshold, total, k, cuts })
}

/// Scope "per_layer": one cut per tensor, each pruning exactly `round(targets[i] · len_i)`
/// of its own elements. `targets` is parallel to `tensors` (repeat one value for a uniform
/// sparsity).
pub fn per_layer_cuts(tensors: &[TensorRef<'_>], targets: &[f64], par: Parallelism) -> Result<Vec<Cut>, PruneError> {
    if targets.len() != tensors.len() {
        return Err(PruneError::TargetCount { targets: targets.len(), tensors: tensors.len() });
    }
    for (t, &s) in tensors.iter().zip(targets) {
        check_sparsity(&format!("tensor {}", t.name), s)?;
    }
    let one = |(t, &s): (&TensorRef<'_>, &f64)| {
        let k = target_count(s, t.data.len() as u64);
        find_cuts(std::slice::from_ref(t), k, par).map(|(_, cuts)| cuts[0])
    };
    // Collect every outcome, then report the first error in tensor order, so that the
    // message does not depend on thread timing.
    let outcomes: Vec<Result<Cut, PruneError>> = match par {
        Parallelism::Serial => tensors.iter().zip(targets).map(one).collect(),
        Parallelism::Rayon => tensors.par_iter().zip(targets).map(one).collect(),
    };
    outcomes.into_iter().collect()
}

/// Prunes `data` in place according to `cut`; returns the statistics and the keep-mask.
/// Pruned elements become +0.0.
pub fn apply_cut(name: &str, data: &mut [f32], cut: &Cut, par: Parallelism) -> PruneResult {
    let len = data.len();
    let mut words = vec![0u64; len.div_ceil(64)];
    let mut zeros: u64 = match par {
        Parallelism::Serial => apply_below(data, &mut words, cut.below_bits),
        Parallelism::Rayon => data
            .par_chunks_mut(CHUNK)
            .zip(words.par_chunks_mut(CHUNK / 64))
            .map(|(d, w)| apply_below(d, w, cut.below_bits))
            .sum(),
    };
    if cut.ties > 0 {
        // The first `ties` elements at exactly the threshold, in index order: a short
        // sequential scan that stops as soon as the budget is spent.
        let mut left = cut.ties;
        for (i, w) in data.iter_mut().enumerate() {
            if w.to_bits() & ABS_MASK == cut.below_bits {
                if *w != 0.0 {
                    zeros += 1;
                }
                *w = 0.0;
                words[i / 64] &= !(1u64 << (i % 64));
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
    }
    let mask = Mask::from_words(len, words);
    let pruned = len as u64 - mask.kept_count();
    PruneResult { stats: PruneStats::new(name, len as u64, pruned, zeros, Some(cut.threshold)), mask }
}

/// Scope "global" on tensors in memory: [`global_cut`] then [`apply_cut`] on each tensor.
/// Results are in input order.
pub fn prune_global(
    tensors: &mut [TensorMut<'_>],
    sparsity: f64,
    par: Parallelism,
) -> Result<Vec<PruneResult>, PruneError> {
    let gc = global_cut(&as_refs(tensors), sparsity, par)?;
    Ok(tensors.iter_mut().zip(&gc.cuts).map(|(t, cut)| apply_cut(t.name, t.data, cut, par)).collect())
}

/// Scope "per_layer" on tensors in memory: [`per_layer_cuts`] then [`apply_cut`].
pub fn prune_per_layer(
    tensors: &mut [TensorMut<'_>],
    targets: &[f64],
    par: Parallelism,
) -> Result<Vec<PruneResult>, PruneError> {
    let cuts = per_layer_cuts(&as_refs(tensors), targets, par)?;
    let apply = |(t, cut): (&mut TensorMut<'_>, &Cut)| apply_cut(t.name, t.data, cut, par);
    Ok(match par {
        Parallelism::Serial => tensors.iter_mut().zip(&cuts).map(apply).collect(),
        Parallelism::Rayon => tensors.par_iter_mut().zip(&cuts).map(apply).collect(),
    })
}

fn as_refs<'a>(tensors: &'a [TensorMut<'_>]) -> Vec<TensorRef<'a>> {
    tensors.iter().map(|t| TensorRef { name: t.name, data: t.data }).collect()
}

fn check_sparsity(target: &str, s: f64) -> Result<(), PruneError> {
    if !(0.0..1.0).contains(&s) {
        return Err(PruneError::InvalidSparsity { target: target.to_owned(), value: s });
    }
    Ok(())
}

/// `round(s · total)` (halves away from zero), never above `total`.
fn target_count(s: f64, total: u64) -> u64 {
    ((s * total as f64).round() as u64).min(total)
}

/// A contiguous piece of one tensor, the unit of work of the read passes.
struct Piece<'a> {
    tensor: usize,
    start: usize,
    data: &'a [f32],
}

fn pieces<'a>(tensors: &[TensorRef<'a>]) -> Vec<Piece<'a>> {
    let mut out = Vec::new();
    for (tensor, t) in tensors.iter().enumerate() {
        for (c, data) in t.data.chunks(CHUNK).enumerate() {
            out.push(Piece { tensor, start: c * CHUNK, data });
        }
    }
    out
}

/// Returns the reported threshold and one cut per tensor pruning exactly `k` elements in
/// total (k ≤ total elements).
fn find_cuts(tensors: &[TensorRef<'_>], k: u64, par: Parallelism) -> Result<(f32, Vec<Cut>), PruneError> {
    let pieces = pieces(tensors);

    // Pass 1: top 16 bits of |w|, and the first NaN if any.
    let top = histogram(&pieces, par, |p, hist| {
        count_top_bits(p.data, hist);
        // NaN and ±inf land in the bins from INF_BITS >> 16 up: only a piece with something
        // there is scanned again, so the NaN check costs nothing on finite weights.
        let special = hist[(INF_BITS >> 16) as usize..=(ABS_MASK >> 16) as usize].iter().any(|&c| c > 0);
        special.then(|| p.data.iter().position(|w| w.is_nan()).map(|i| (p.tensor, p.start + i))).flatten()
    });
    if let Some((tensor, index)) = top.first_nan {
        return Err(PruneError::NaN { tensor: tensors[tensor].name.to_owned(), index });
    }
    if k == 0 {
        return Ok((0.0, vec![Cut::NOTHING; tensors.len()]));
    }
    let (bin, below_bin) = bin_of_rank(&top.counts, k);

    // Pass 2: low 16 bits of the elements inside that bin give the exact value.
    let low = histogram(&pieces, par, |p, hist| {
        count_low_bits(p.data, bin, hist);
        None
    });
    let (low_bin, below_in_bin) = bin_of_rank(&low.counts, k - below_bin);
    let t_bits = (bin << 16) | low_bin;
    let threshold = f32::from_bits(t_bits);
    let equal = low.counts[low_bin as usize];
    let ties = k - below_bin - below_in_bin; // in 1..=equal

    if ties == equal {
        // Every element at the threshold goes: "prune |w| <= t" needs no tie bookkeeping.
        // t_bits <= INF_BITS (no NaN), so + 1 cannot overflow.
        let cut = Cut { threshold, below_bits: t_bits + 1, ties: 0 };
        return Ok((threshold, vec![cut; tensors.len()]));
    }

    // Split tie: count the elements equal to t in each tensor and hand out the budget in
    // tensor order.
    let count = |p: &Piece<'_>| {
        let n = p.data.iter().filter(|w| w.to_bits() & ABS_MASK == t_bits).count();
        (p.tensor, n as u64)
    };
    let per_piece: Vec<(usize, u64)> = match par {
        Parallelism::Serial => pieces.iter().map(count).collect(),
        Parallelism::Rayon => pieces.par_iter().map(count).collect(),
    };
    let mut equal_per_tensor = vec![0u64; tensors.len()];
    for (t, n) in per_piece {
        equal_per_tensor[t] += n;
    }
    let mut left = ties;
    let cuts = equal_per_tensor
        .iter()
        .map(|&eq| {
            let take = eq.min(left);
            left -= take;
            Cut { threshold, below_bits: t_bits, ties: take }
        })
        .collect();
    Ok((threshold, cuts))
}

/// Bin holding the element of 1-based rank `k` in `counts`, and how many elements lie in
/// lower bins. The caller guarantees `1 <= k <= sum(counts)`.
fn bin_of_rank(counts: &[u64], k: u64) -> (u32, u64) {
    let mut below = 0u64;
    for (b, &c) in counts.iter().enumerate() {
        if below + c >= k {
            return (b as u32, below);
        }
        below += c;
    }
    unreachable!("rank {k} exceeds the histogram total {below}")
}

struct Histogram {
    counts: Vec<u64>,
    first_nan: Option<(usize, usize)>,
}

/// Per-thread state: a `u32` scratch histogram that stays in L2 while counting one piece
/// (≤ 2^20 elements, no overflow), folded into `u64` totals after each piece.
struct HistAcc {
    counts: Vec<u64>,
    scratch: Box<[u32; BINS]>,
    first_nan: Option<(usize, usize)>,
}

impl HistAcc {
    fn new() -> Self {
        Self {
            counts: vec![0; BINS],
            scratch: vec![0u32; BINS].into_boxed_slice().try_into().expect("the vector has exactly BINS elements"),
            first_nan: None,
        }
    }

    fn add<F>(mut self, piece: &Piece<'_>, kernel: &F) -> Self
    where
        F: Fn(&Piece<'_>, &mut [u32; BINS]) -> Option<(usize, usize)>,
    {
        let nan = kernel(piece, &mut self.scratch);
        self.first_nan = min_opt(self.first_nan, nan);
        for (c, s) in self.counts.iter_mut().zip(self.scratch.iter_mut()) {
            *c += u64::from(*s);
            *s = 0;
        }
        self
    }

    fn merge(mut self, other: Self) -> Self {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.first_nan = min_opt(self.first_nan, other.first_nan);
        self
    }
}

fn min_opt(a: Option<(usize, usize)>, b: Option<(usize, usize)>) -> Option<(usize, usize)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn histogram<F>(pieces: &[Piece<'_>], par: Parallelism, kernel: F) -> Histogram
where
    F: Fn(&Piece<'_>, &mut [u32; BINS]) -> Option<(usize, usize)> + Sync,
{
    let acc = match par {
        Parallelism::Serial => pieces.iter().fold(HistAcc::new(), |acc, p| acc.add(p, &kernel)),
        Parallelism::Rayon => pieces
            .par_iter()
            .fold(HistAcc::new, |acc, p| acc.add(p, &kernel))
            .reduce_with(HistAcc::merge)
            .unwrap_or_else(HistAcc::new),
    };
    Histogram { counts: acc.counts, first_nan: acc.first_nan }
}

/// Counts the top 16 bits of `|w|`.
fn count_top_bits(data: &[f32], hist: &mut [u32; BINS]) {
    for &w in data {
        hist[((w.to_bits() & ABS_MASK) >> 16) as usize] += 1;
    }
}

/// Counts the low 16 bits of `|w|` for elements whose top 16 bits equal `bin`.
fn count_low_bits(data: &[f32], bin: u32, hist: &mut [u32; BINS]) {
    let mut count = |w: f32| {
        let a = w.to_bits() & ABS_MASK;
        if a >> 16 == bin {
            hist[(a & 0xffff) as usize] += 1;
        }
    };
    // Few elements fall in the bin: a branch-free (vectorized) test per block of 64 skips
    // almost every block.
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(false, |any, w| any | ((w.to_bits() & ABS_MASK) >> 16 == bin)) {
            block.iter().for_each(|&w| count(w));
        }
    }
    blocks.remainder().iter().for_each(|&w| count(w));
}

/// Zeroes every element whose absolute bits are below `below`, writes the keep bits into
/// `words` (one per 64 elements) and returns the number of zeros left in `data`.
fn apply_below(data: &mut [f32], words: &mut [u64], below: u32) -> u64 {
    let mut zeros = 0u64;
    let mut blocks = data.chunks_exact_mut(64);
    let mut word_iter = words.iter_mut();
    for (block, word) in (&mut blocks).zip(&mut word_iter) {
        let block: &mut [f32; 64] = block.try_into().expect("chunks_exact_mut(64) yields 64 elements");
        let (bits, z) = apply_block(block, below);
        *word = bits;
        zeros += u64::from(z);
    }
    let rest = blocks.into_remainder();
    if let Some(word) = word_iter.next() {
        let mut bits = 0u64;
        for (i, w) in rest.iter_mut().enumerate() {
            let keep = w.to_bits() & ABS_MASK >= below;
            if !keep {
                *w = 0.0;
            }
            bits |= u64::from(keep) << i;
            zeros += u64::from(*w == 0.0);
        }
        *word = bits;
    }
    zeros
}

/// One full block: keep bits and zeros count.
#[inline(always)]
fn apply_block(block: &mut [f32; 64], below: u32) -> (u64, u32) {
    // Keep bits a byte at a time, then the zeroing in a separate loop: both loops
    // vectorize, a single fused loop does not (measured ≈ 1.7× faster than fused).
    let mut bits = 0u64;
    for (k, oct) in block.chunks_exact(8).enumerate() {
        let mut b = 0u8;
        for (j, w) in oct.iter().enumerate() {
            b |= u8::from(w.to_bits() & ABS_MASK >= below) << j;
        }
        bits |= u64::from(b) << (8 * k);
    }
    let mut zeros = 0u32;
    for w in block.iter_mut() {
        let v = if w.to_bits() & ABS_MASK >= below { *w } else { 0.0 };
        *w = v;
        zeros += u32::from(v == 0.0);
    }
    (bits, zeros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        // Exact zeros would blur "pruned" vs "already zero" in the checks below.
        (0..n)
            .map(|_| {
                let v = rng.random_range(-1.0f32..1.0);
                if v == 0.0 {
                    0.5
                } else {
                    v
                }
            })
            .collect()
    }

    /// Reference: sort every (|w|, tensor, index) and take the k first.
    fn reference_pruned(tensors: &[Vec<f32>], k: usize) -> Vec<Vec<bool>> {
        let mut all: Vec<(u32, usize, usize)> = tensors
            .iter()
            .enumerate()
            .flat_map(|(t, d)| d.iter().enumerate().map(move |(i, w)| (w.to_bits() & ABS_MASK, t, i)))
            .collect();
        all.sort();
        let mut out: Vec<Vec<bool>> = tensors.iter().map(|d| vec![false; d.len()]).collect();
        for &(_, t, i) in &all[..k] {
            out[t][i] = true;
        }
        out
    }

    fn run_global(mut data: Vec<Vec<f32>>, s: f64, par: Parallelism) -> (Vec<Vec<f32>>, Vec<PruneResult>) {
        let names: Vec<String> = (0..data.len()).map(|i| format!("t{i}")).collect();
        let mut ts: Vec<TensorMut<'_>> =
            data.iter_mut().zip(&names).map(|(d, n)| TensorMut { name: n, data: d }).collect();
        let res = prune_global(&mut ts, s, par).unwrap();
        (data, res)
    }

    fn check_against_reference(orig: &[Vec<f32>], pruned: &[Vec<f32>], res: &[PruneResult], k: usize) {
        let reference = reference_pruned(orig, k);
        let mut total_pruned = 0;
        for (t, r) in res.iter().enumerate() {
            for i in 0..orig[t].len() {
                let should_prune = reference[t][i];
                assert_eq!(r.mask.is_kept(i), Some(!should_prune), "tensor {t} index {i}");
                if should_prune {
                    assert_eq!(pruned[t][i].to_bits(), 0, "pruned element must be +0.0");
                } else {
                    assert_eq!(pruned[t][i].to_bits(), orig[t][i].to_bits());
                }
            }
            total_pruned += r.stats.pruned as usize;
        }
        assert_eq!(total_pruned, k);
    }

    #[test]
    fn global_matches_full_sort_on_random_data() {
        let orig = vec![random(1, 3000), random(2, 5000), random(3, 17)];
        let total = 8017;
        for s in [0.1, 0.5, 0.9, 0.999] {
            let k = (s * total as f64).round() as usize;
            for par in [Parallelism::Serial, Parallelism::Rayon] {
                let (pruned, res) = run_global(orig.clone(), s, par);
                check_against_reference(&orig, &pruned, &res, k);
                // The threshold equals the k-th smallest magnitude of a full sort.
                let mut mags: Vec<f32> = orig.iter().flatten().map(|w| w.abs()).collect();
                mags.sort_by(f32::total_cmp);
                for r in &res {
                    assert_eq!(r.stats.threshold, Some(mags[k - 1]));
                }
            }
        }
    }

    #[test]
    fn global_cut_reports_k_and_threshold() {
        let a = random(7, 1000);
        let b = random(8, 1000);
        let refs = [TensorRef { name: "a", data: &a }, TensorRef { name: "b", data: &b }];
        let gc = global_cut(&refs, 0.25, Parallelism::Serial).unwrap();
        assert_eq!(gc.total, 2000);
        assert_eq!(gc.k, 500);
        let below = a.iter().chain(&b).filter(|w| w.abs() < gc.threshold).count();
        let at = a.iter().chain(&b).filter(|w| w.abs() == gc.threshold).count();
        assert!(below < 500 && below + at >= 500);
    }

    #[test]
    fn ties_are_pruned_in_tensor_then_index_order() {
        // 10 + 6 elements, all equal magnitude (signs mixed): k = round(0.5 * 16) = 8.
        let orig = vec![vec![0.5, -0.5, 0.5, 0.5, -0.5, 0.5, 0.5, 0.5, 0.5, 0.5], vec![0.5, 0.5, -0.5, 0.5, 0.5, 0.5]];
        for par in [Parallelism::Serial, Parallelism::Rayon] {
            let (pruned, res) = run_global(orig.clone(), 0.5, par);
            assert_eq!(res[0].stats.pruned, 8);
            assert_eq!(res[1].stats.pruned, 0);
            assert!(pruned[0][..8].iter().all(|w| w.to_bits() == 0));
            assert!(pruned[0][8..].iter().all(|&w| w == 0.5));
            assert_eq!(pruned[1], orig[1]);
            assert_eq!(res[0].stats.threshold, Some(0.5));
            check_against_reference(&orig, &pruned, &res, 8);
        }
        // 0.75 of 16 = 12: all of tensor 0, then 2 of tensor 1.
        let (pruned, res) = run_global(orig.clone(), 0.75, Parallelism::Serial);
        assert_eq!((res[0].stats.pruned, res[1].stats.pruned), (10, 2));
        assert_eq!(&pruned[1][2..], &orig[1][2..]);
    }

    #[test]
    fn ties_mixed_with_distinct_values() {
        // Values below, at and above a tied threshold.
        let orig = vec![vec![0.1, 0.3, 0.3, 0.9, -0.3, 0.2], vec![0.3, 0.05, 0.3, 1.0]];
        // sorted magnitudes: .05 .1 .2 .3 .3 .3 .3 .3 .9 1.0 ; k = 5 prunes 3 below + 2 ties
        let (pruned, res) = run_global(orig.clone(), 0.5, Parallelism::Serial);
        check_against_reference(&orig, &pruned, &res, 5);
        assert_eq!(pruned[0], vec![0.0, 0.0, 0.0, 0.9, -0.3, 0.0]);
        assert_eq!(pruned[1], vec![0.3, 0.0, 0.3, 1.0]);
    }

    #[test]
    fn all_zero_all_equal_and_edge_sparsities() {
        for par in [Parallelism::Serial, Parallelism::Rayon] {
            // All zero: pruning selects zeros; the tensor stays all zero.
            let (pruned, res) = run_global(vec![vec![0.0; 100]], 0.3, par);
            assert_eq!(res[0].stats.pruned, 30);
            assert_eq!(res[0].stats.zeros, 100);
            assert_eq!(res[0].stats.sparsity, 1.0);
            assert_eq!(res[0].mask.kept_count(), 70);
            assert!(pruned[0].iter().all(|&w| w == 0.0));

            // All equal: exactly round(s·n).
            let (_, res) = run_global(vec![vec![-2.5; 1001]], 0.37, par);
            assert_eq!(res[0].stats.pruned, 370);
            assert_eq!(res[0].stats.threshold, Some(2.5));

            // s = 0: nothing changes, threshold 0.
            let orig = vec![random(4, 300)];
            let (pruned, res) = run_global(orig.clone(), 0.0, par);
            assert_eq!(pruned, orig);
            assert_eq!(res[0].stats.pruned, 0);
            assert_eq!(res[0].stats.threshold, Some(0.0));
            assert_eq!(res[0].mask.kept_count(), 300);

            // k = total - 1: only the largest magnitude survives.
            let orig = vec![random(5, 100), random(6, 100)];
            let s = 199.0 / 200.0;
            let (pruned, res) = run_global(orig.clone(), s, par);
            check_against_reference(&orig, &pruned, &res, 199);
            let survivors: Vec<f32> = pruned.iter().flatten().copied().filter(|&w| w != 0.0).collect();
            let max = orig.iter().flatten().copied().max_by(|a, b| a.abs().total_cmp(&b.abs())).unwrap();
            assert_eq!(survivors, vec![max]);

            // Tiny and empty tensors; k = round(1.5) = 2 (half away from zero).
            let orig = vec![vec![3.0], vec![], vec![-1.0, 2.0]];
            let (pruned, res) = run_global(orig.clone(), 0.5, par);
            assert_eq!(pruned, vec![vec![3.0], vec![], vec![0.0, 0.0]]);
            let (pruned, _) = run_global(orig.clone(), 0.4, par);
            assert_eq!(pruned, vec![vec![3.0], vec![], vec![0.0, 2.0]]);
            assert_eq!(res[1].stats.elements, 0);
            assert_eq!(res[1].stats.sparsity, 0.0);
        }
    }

    #[test]
    fn negative_zero_and_infinity() {
        let orig = vec![vec![-0.0, f32::INFINITY, 1.0, f32::NEG_INFINITY, 0.5]];
        let (pruned, res) = run_global(orig.clone(), 0.6, Parallelism::Serial);
        check_against_reference(&orig, &pruned, &res, 3);
        assert_eq!(pruned[0][0].to_bits(), 0, "-0.0 pruned to +0.0");
        assert_eq!(pruned[0][1], f32::INFINITY);
    }

    #[test]
    fn nan_is_rejected_with_name_and_index() {
        let a = random(9, 50);
        let mut b = random(10, 50);
        b[17] = f32::NAN;
        let mut c = random(11, 50);
        c[3] = -f32::NAN;
        let refs = [
            TensorRef { name: "fc1.weight", data: &a },
            TensorRef { name: "fc2.weight", data: &b },
            TensorRef { name: "fc3.weight", data: &c },
        ];
        for par in [Parallelism::Serial, Parallelism::Rayon] {
            let e = global_cut(&refs, 0.5, par).unwrap_err();
            assert_eq!(e.to_string(), "tensor fc2.weight: contains NaN at index 17");
            // Even at sparsity 0.
            assert!(matches!(global_cut(&refs, 0.0, par), Err(PruneError::NaN { .. })));
            let e = per_layer_cuts(&refs, &[0.5; 3], par).unwrap_err();
            assert_eq!(e.to_string(), "tensor fc2.weight: contains NaN at index 17");
        }
        // A NaN whose payload sits only in the low 16 bits shares the top bits with ±inf.
        let d = [1.0, f32::from_bits(0x7f80_0001)];
        let refs = [TensorRef { name: "x", data: &d }];
        assert!(matches!(global_cut(&refs, 0.5, Parallelism::Serial), Err(PruneError::NaN { index: 1, .. })));
    }

    #[test]
    fn invalid_sparsity_is_rejected() {
        let a = random(12, 10);
        let refs = [TensorRef { name: "a", data: &a }];
        for s in [1.0, -0.1, f64::NAN, 2.0] {
            assert!(matches!(global_cut(&refs, s, Parallelism::Serial), Err(PruneError::InvalidSparsity { .. })));
        }
        let e = per_layer_cuts(&refs, &[1.5], Parallelism::Serial).unwrap_err();
        assert_eq!(e.to_string(), "tensor a: sparsity 1.5 is out of range; use a number in [0, 1)");
        let e = global_cut(&refs, 1.0, Parallelism::Serial).unwrap_err();
        assert_eq!(e.to_string(), "global pruning: sparsity 1 is out of range; use a number in [0, 1)");
        let e = per_layer_cuts(&refs, &[0.5, 0.5], Parallelism::Serial).unwrap_err();
        assert!(matches!(e, PruneError::TargetCount { targets: 2, tensors: 1 }));
    }

    #[test]
    fn per_layer_is_exact_per_tensor() {
        let orig = vec![random(13, 1000), vec![1.0; 333], random(14, 77)];
        let targets = [0.5, 0.8, 0.123];
        for par in [Parallelism::Serial, Parallelism::Rayon] {
            let mut data = orig.clone();
            let mut ts: Vec<TensorMut<'_>> = data.iter_mut().map(|d| TensorMut { name: "t", data: d }).collect();
            let res = prune_per_layer(&mut ts, &targets, par).unwrap();
            for ((r, o), s) in res.iter().zip(&orig).zip(targets) {
                let k = (s * o.len() as f64).round() as u64;
                assert_eq!(r.stats.pruned, k);
                assert!((r.stats.sparsity - s).abs() <= 1.0 / o.len() as f64);
            }
            // Each tensor matches its own full-sort reference.
            for (t, o) in orig.iter().enumerate() {
                let k = (targets[t] * o.len() as f64).round() as usize;
                let reference = reference_pruned(std::slice::from_ref(o), k);
                for (i, &p) in reference[0].iter().enumerate() {
                    assert_eq!(res[t].mask.is_kept(i), Some(!p));
                }
            }
        }
    }

    #[test]
    fn split_ties_across_chunks_and_tensors() {
        // Large enough for several pieces (CHUNK) so the parallel tie counting is exercised.
        let n = CHUNK + 1000;
        let orig = [vec![0.25f32; n], vec![0.25f32; 500]];
        let total = (n + 500) as f64;
        let s = 0.6;
        let k = (s * total).round() as u64;
        let refs: Vec<TensorRef<'_>> = orig.iter().map(|d| TensorRef { name: "t", data: d }).collect();
        let serial = global_cut(&refs, s, Parallelism::Serial).unwrap();
        let parallel = global_cut(&refs, s, Parallelism::Rayon).unwrap();
        assert_eq!(serial, parallel);
        assert_eq!(serial.cuts[0].ties() + serial.cuts[1].ties(), k);
        assert_eq!(serial.cuts[1].ties(), 0);
    }

    #[test]
    fn real_teacher_weights_global_and_sparse_round_trip() {
        use crate::compress::prune::sparse::{decode_f32, encode, SparseView};
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/teacher_digits.safetensors");
        let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
        let names = ["fc1.weight", "fc2.weight", "fc3.weight"];
        let shapes: Vec<Vec<usize>> = names.iter().map(|n| tensors[*n].dims().to_vec()).collect();
        let orig: Vec<Vec<f32>> =
            names.iter().map(|n| tensors[*n].flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
        let total: usize = orig.iter().map(Vec::len).sum();
        for s in [0.5, 0.9] {
            let k = (s * total as f64).round() as usize;
            let (pruned, res) = run_global(orig.clone(), s, Parallelism::Rayon);
            check_against_reference(&orig, &pruned, &res, k);
            // Global scope: layers end up with different sparsities around the target.
            let overall: u64 = res.iter().map(|r| r.stats.zeros).sum();
            assert_eq!(overall as usize, k);
            // The sparse artifact of each pruned layer decodes bit-exactly.
            for ((name, shape), data) in names.iter().zip(&shapes).zip(&pruned) {
                let parts = encode(name, data, shape).unwrap();
                let view = SparseView::from_parts(name, &parts).unwrap();
                let (back, back_shape) = decode_f32(name, &view).unwrap();
                assert_eq!(&back_shape, shape);
                assert!(back.iter().zip(data).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn apply_serial_and_parallel_agree() {
        let orig = random(15, 3 * CHUNK / 2 + 77);
        let refs = [TensorRef { name: "t", data: &orig }];
        let cut = per_layer_cuts(&refs, &[0.7], Parallelism::Serial).unwrap()[0];
        let mut a = orig.clone();
        let mut b = orig.clone();
        let ra = apply_cut("t", &mut a, &cut, Parallelism::Serial);
        let rb = apply_cut("t", &mut b, &cut, Parallelism::Rayon);
        assert_eq!(ra, rb);
        assert_eq!(a, b);
        assert_eq!(ra.stats.pruned, (0.7 * orig.len() as f64).round() as u64);
        assert_eq!(Mask::from_nonzero(&a), ra.mask);
    }
}
