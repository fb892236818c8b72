//! [`Int8Linear`]: `y = x · Wᵀ + b` with int8 weights, the method of ONNX Runtime's
//! `quantize_dynamic` (DynamicQuantizeMatMul).
//!
//! # Numerics
//! - Weights are the stored int8 codes `q[n][k]` with one scale per output channel (or one per
//!   tensor) and optional zero points: `w = s_n · (q − z_n)`. They are used as stored: no
//!   re-blocking, no re-quantization, no f32 copy.
//! - Each input row is quantized on the fly to unsigned codes with a zero point:
//!   `lo = min(x, 0)`, `hi = max(x, 0)`, `s_x = (hi − lo) / L`, `z_x = round(−lo / s_x)`,
//!   `a = clamp(round(x / s_x + z_x), 0, L)` (round half to even). `L = 255` with AVX-512 VNNI
//!   and on the scalar path.
//! - **AVX2 uses `L = 127` (7-bit activations)**: `vpmaddubsw` adds two u8 × s8 products into a
//!   saturating i16, and 255 · 128 · 2 > 32767 would clip; with 7-bit activations the largest
//!   pair sum is 127 · 128 · 2 = 32512, so the AVX2 result is exact for its codes. This costs one
//!   bit of activation resolution only on CPUs without VNNI (ORT's MLAS handles the same limit
//!   with `reduce_range`, i.e. 7-bit weights; we keep the stored 8-bit weights bit-exact instead).
//! - The integer dot products `Σ_k a·q` are exact in i32 (`K ≤` [`MAX_K`]); then
//!   `y = s_x · s_n · (Σ a·q − z_x·Σ_k q − z_n·Σ_k a + K·z_x·z_n) + b_n`, with `Σ_k q` per
//!   channel computed once at packing and `Σ_k a` per row at quantization.
//!
//! # Layout and kernels
//! Weights are packed once, at model load, as `[⌈N/64⌉ panels][⌈K/4⌉ groups][64 channels][4 k]`
//! (zero-padded): one panel is one sequential read, and one group of a panel is four 512-bit
//! vectors holding 4 consecutive `k` for 64 channels — exactly what `vpdpbusd` consumes with a
//! broadcast of 4 activation bytes. The inner kernel covers up to 4 rows × 64 channels (16
//! accumulators, each weight vector used by every row). The AVX2 kernel walks the same layout in
//! two 32-channel halves (`vpmaddubsw` + `vpmaddwd` with ones) for up to 2 rows. The scalar
//! kernel is the portable fallback; tests check every SIMD kernel against a plain reference on
//! the unpacked weights, exactly (integers).
//! Measured on this machine (see `docs/benchmarks.md`): batch 1 is bound by reading the weights,
//! batch 64 by the dot-product throughput.
//!
//! # Threads
//! Runs on the calling thread; at [`PAR_MIN_MACS`] and above it cuts the panels (output
//! channels) into chunks shared with the kernel helper pool (see [`super`]): each weight byte is
//! read by one thread.

/// Output channels per packed panel.
pub const PANEL: usize = 64;
/// Consecutive inner-dimension values per channel in one packed group (`vpdpbusd` width).
const GROUP: usize = 4;
/// Bytes of one packed group of a panel.
const GROUP_BYTES: usize = PANEL * GROUP;
/// Largest inner dimension: `K · 255 · 128` must fit an i32 accumulator.
pub const MAX_K: usize = 65_536;
/// Products of at least this many multiply-adds are shared with the helper pool.
pub const PAR_MIN_MACS: usize = 1 << 21;
/// Chunks per thread of a shared product (load balance when a core is busy elsewhere).
const CHUNKS_PER_THREAD: usize = 4;

/// The instruction set a kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// AVX2 `vpmaddubsw` + `vpmaddwd` (7-bit activations, see the module doc).
    Avx2,
    /// AVX-512 VNNI `vpdpbusd`.
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Isa {
        [Isa::Avx512Vnni, Isa::Avx2].into_iter().find(|i| i.available()).unwrap_or(Isa::Scalar)
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Short name (`vnni`, `avx2`, `scalar`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Largest activation code.
    fn levels(self) -> u8 {
        match self {
            Isa::Avx2 => 127,
            Isa::Scalar | Isa::Avx512Vnni => 255,
        }
    }

    /// Rows per inner-kernel call.
    fn block_rows(self) -> usize {
        match self {
            Isa::Avx512Vnni => 4,
            Isa::Avx2 => 2,
            Isa::Scalar => 4,
        }
    }
}

/// Why a weight cannot be packed or a product cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("int8 kernel: {0}")]
    Shape(String),
    #[error("int8 kernel: this CPU cannot run {0}")]
    Unsupported(&'static str),
}

/// Quantization of one activation row.
#[derive(Debug, Clone, Copy)]
struct RowQuant {
    scale: f32,
    zero_point: i32,
    /// `Σ_k a` (only needed with weight zero points).
    sum: i32,
}

/// A packed int8 linear weight `[N, K]` (see the module doc).
pub struct Int8Linear {
    n: usize,
    k: usize,
    /// `k` rounded up to [`GROUP`].
    kp: usize,
    panels: usize,
    /// `[panels][kp / 4][64][4]`, zero-padded.
    packed: Vec<i8>,
    /// Per output channel.
    scales: Vec<f32>,
    /// Per output channel; `None` when symmetric.
    zero_points: Option<Vec<i32>>,
    /// `Σ_k q[n][k]` per output channel.
    wsum: Vec<i32>,
    isa: Isa,
}

impl std::fmt::Debug for Int8Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8Linear").field("n", &self.n).field("k", &self.k).field("isa", &self.isa).finish()
    }
}

impl Int8Linear {
    /// Packs `values` (`[n, k]` row-major codes) with `scales` and optional `zero_points` (one per
    /// row, or one for the tensor) for the best kernel of this CPU.
    pub fn new(
        values: &[i8],
        n: usize,
        k: usize,
        scales: &[f32],
        zero_points: Option<&[i8]>,
    ) -> Result<Int8Linear, KernelError> {
        Self::with_isa(values, n, k, scales, zero_points, Isa::detect())
    }

    /// The same for a given instruction set (tests and benchmarks compare them).
    pub fn with_isa(
        values: &[i8],
        n: usize,
        k: usize,
        scales: &[f32],
        zero_points: Option<&[i8]>,
        isa: Isa,
    ) -> Result<Int8Linear, KernelError> {
        if !isa.available() {
            return Err(KernelError::Unsupported(isa.name()));
        }
        if n == 0 || k == 0 || k > MAX_K {
            return Err(KernelError::Shape(format!("shape [{n}, {k}] (need 1 ≤ K ≤ {MAX_K} and N ≥ 1)")));
        }
        if values.len() != n * k {
            return Err(KernelError::Shape(format!("{} values for shape [{n}, {k}]", values.len())));
        }
        let per_channel = |len: usize, what: &str| match len {
            1 => Ok(false),
            l if l == n => Ok(true),
            l => Err(KernelError::Shape(format!("{l} {what} for {n} output channels"))),
        };
        let scale_pc = per_channel(scales.len(), "scales")?;
        let scales: Vec<f32> = (0..n).map(|j| scales[if scale_pc { j } else { 0 }]).collect();
        let zero_points = match zero_points {
            Some(z) => {
                let pc = per_channel(z.len(), "zero points")?;
                Some((0..n).map(|j| z[if pc { j } else { 0 }] as i32).collect::<Vec<i32>>())
            }
            None => None,
        };
        let kp = k.next_multiple_of(GROUP);
        let panels = n.div_ceil(PANEL);
        let mut packed = vec![0i8; panels * kp * PANEL];
        let mut wsum = vec![0i32; n];
        for (j, (row, sum)) in values.chunks_exact(k).zip(wsum.iter_mut()).enumerate() {
            let base = (j / PANEL) * kp * PANEL + (j % PANEL) * GROUP;
            for (g, quad) in row.chunks(GROUP).enumerate() {
                let at = base + g * GROUP_BYTES;
                packed[at..at + quad.len()].copy_from_slice(quad);
            }
            *sum = row.iter().map(|v| *v as i32).sum();
        }
        Ok(Int8Linear { n, k, kp, panels, packed, scales, zero_points, wsum, isa })
    }

    /// Output features `N`.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input features `K`.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// The kernel this weight runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes held (packed codes, scales, sums).
    pub fn resident_bytes(&self) -> usize {
        self.packed.len()
            + 4 * (self.scales.len() + self.wsum.len())
            + self.zero_points.as_ref().map_or(0, |z| 4 * z.len())
    }

    /// The stored codes back, `[n, k]` row-major (the inverse of packing).
    pub fn values(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.n * self.k);
        for j in 0..self.n {
            let base = (j / PANEL) * self.kp * PANEL + (j % PANEL) * GROUP;
            out.extend((0..self.k).map(|kk| self.packed[base + (kk / GROUP) * GROUP_BYTES + kk % GROUP]));
        }
        out
    }

    /// The f32 weights `s_n · (q − z_n)`, `[n, k]` row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let q = self.values();
        let mut out = Vec::with_capacity(q.len());
        for (j, row) in q.chunks_exact(self.k).enumerate() {
            let z = self.zero_points.as_ref().map_or(0, |z| z[j]);
            out.extend(row.iter().map(|v| self.scales[j] * (*v as i32 - z) as f32));
        }
        out
    }

    /// `out[r][n] = Σ_k x[r][k] · w[n][k] + bias[n]` for `rows` rows of `x` (`[rows, K]`),
    /// writing `out` (`[rows, N]`); large products use the process-wide helper pool.
    pub fn forward(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, out: &mut [f32]) -> Result<(), KernelError> {
        self.forward_on(x, rows, bias, out, Parallel::Shared)
    }

    /// [`Self::forward`] with an explicit choice of helper threads.
    pub fn forward_on(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
        parallel: Parallel<'_>,
    ) -> Result<(), KernelError> {
        if x.len() != rows * self.k || out.len() != rows * self.n {
            return Err(KernelError::Shape(format!(
                "input of {} values / output of {} for {rows} rows of [{}, {}]",
                x.len(),
                out.len(),
                self.n,
                self.k
            )));
        }
        if bias.is_some_and(|b| b.len() != self.n) {
            return Err(KernelError::Shape(format!("bias length for {} outputs", self.n)));
        }
        let levels = self.isa.levels();
        let mut codes = vec![0u8; rows * self.kp];
        let quants: Vec<RowQuant> = x
            .chunks_exact(self.k)
            .zip(codes.chunks_exact_mut(self.kp))
            .map(|(row, dst)| quantize_row(row, levels, &mut dst[..self.k]))
            .collect();
        let job = Job { w: self, codes: &codes, quants: &quants, bias, rows, out: SharedOut(out.as_mut_ptr()) };
        if rows * self.n * self.k < PAR_MIN_MACS || self.panels == 1 {
            job.run(0..self.panels);
            return Ok(());
        }
        let threads = match parallel {
            Parallel::Caller => 1,
            Parallel::Shared => super::threads(),
            Parallel::Pool(p) => p.current_num_threads() + 1,
        };
        let chunks = (threads * CHUNKS_PER_THREAD).min(self.panels);
        let range = |c: usize| c * self.panels / chunks..(c + 1) * self.panels / chunks;
        match parallel {
            Parallel::Caller => job.run(0..self.panels),
            Parallel::Shared => super::for_each_chunk_shared(chunks, |c| job.run(range(c))),
            Parallel::Pool(p) => super::for_each_chunk(chunks, Some(p), |c| job.run(range(c))),
        }
        Ok(())
    }

    /// The exact integer products `Σ_k a[r][k] · q[n][k]` for already quantized rows
    /// (`codes`: `[rows, K]`), through the packed kernel. For tests and benchmarks.
    pub fn dot_codes(&self, codes: &[u8], rows: usize) -> Vec<i32> {
        assert_eq!(codes.len(), rows * self.k, "codes shape");
        let mut padded = vec![0u8; rows * self.kp];
        for (src, dst) in codes.chunks_exact(self.k).zip(padded.chunks_exact_mut(self.kp)) {
            dst[..self.k].copy_from_slice(src);
        }
        let mut out = vec![0i32; rows * self.n];
        let mut acc = [[0i32; PANEL]; 4];
        for p in 0..self.panels {
            let width = PANEL.min(self.n - p * PANEL);
            let mut r = 0;
            while r < rows {
                let rb = self.isa.block_rows().min(rows - r);
                self.block(p, &padded[r * self.kp..], rb, &mut acc);
                for (rr, a) in acc.iter().take(rb).enumerate() {
                    out[(r + rr) * self.n + p * PANEL..][..width].copy_from_slice(&a[..width]);
                }
                r += rb;
            }
        }
        out
    }

    /// Largest activation code of this weight's kernel (255, or 127 on AVX2).
    pub fn activation_levels(&self) -> u8 {
        self.isa.levels()
    }

    /// Integer products of `rb` rows (`codes`, row stride `kp`) with panel `p` into `acc[..rb]`.
    fn block(&self, p: usize, codes: &[u8], rb: usize, acc: &mut [[i32; PANEL]; 4]) {
        let panel = &self.packed[p * self.kp * PANEL..(p + 1) * self.kp * PANEL];
        assert!((1..=4).contains(&rb) && codes.len() >= (rb - 1) * self.kp + self.kp, "block shape");
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_isa` checked the CPU features; the assert above bounds every read
            // (rows `..rb` of stride `kp`, the panel's `kp / 4` groups).
            Isa::Avx512Vnni => unsafe {
                match rb {
                    1 => block_vnni::<1>(codes, self.kp, panel, acc),
                    2 => block_vnni::<2>(codes, self.kp, panel, acc),
                    3 => block_vnni::<3>(codes, self.kp, panel, acc),
                    _ => block_vnni::<4>(codes, self.kp, panel, acc),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe {
                match rb {
                    1 => block_avx2::<1>(codes, self.kp, panel, acc),
                    _ => block_avx2::<2>(codes, self.kp, panel, acc),
                }
            },
            _ => block_scalar(codes, self.kp, panel, rb, acc),
        }
    }
}

/// Which threads a product may use besides the caller.
#[derive(Clone, Copy)]
pub enum Parallel<'a> {
    /// The caller only.
    Caller,
    /// The process-wide kernel helper pool ([`super::set_threads`]).
    Shared,
    /// The threads of this pool (tests and benchmarks).
    Pool(&'a rayon::ThreadPool),
}

/// The output pointer shared by the threads of one product.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: threads write disjoint column ranges (their own panels) of the output; the slice
// outlives the parallel section (`forward` borrows it mutably throughout).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// One product in flight.
struct Job<'a> {
    w: &'a Int8Linear,
    codes: &'a [u8],
    quants: &'a [RowQuant],
    bias: Option<&'a [f32]>,
    rows: usize,
    out: SharedOut,
}

impl Job<'_> {
    /// Computes panels `range` for every row: panel-major, so a panel (K · 64 bytes) stays in
    /// cache while all row blocks pass over it.
    fn run(&self, range: std::ops::Range<usize>) {
        let w = self.w;
        let mut acc = [[0i32; PANEL]; 4];
        let block = w.isa.block_rows();
        for p in range {
            let width = PANEL.min(w.n - p * PANEL);
            let mut r = 0;
            while r < self.rows {
                let rb = block.min(self.rows - r);
                w.block(p, &self.codes[r * w.kp..], rb, &mut acc);
                for (rr, a) in acc.iter().take(rb).enumerate() {
                    let q = self.quants[r + rr];
                    let start = (r + rr) * w.n + p * PANEL;
                    // SAFETY: `start + width ≤ rows · n` (row `r + rr` < rows, channel < n), and
                    // no other thread writes channels of panel `p`.
                    let dst = unsafe { std::slice::from_raw_parts_mut(self.out.0.add(start), width) };
                    self.epilogue(p * PANEL, &a[..width], q, dst);
                }
                r += rb;
            }
        }
    }

    /// Integer sums → f32 outputs of channels `j0..j0 + dst.len()` of one row.
    fn epilogue(&self, j0: usize, acc: &[i32], q: RowQuant, dst: &mut [f32]) {
        let w = self.w;
        let k = w.k as i64;
        let zx = q.zero_point as i64;
        for (c, (y, a)) in dst.iter_mut().zip(acc).enumerate() {
            let j = j0 + c;
            let mut v = *a as i64 - zx * w.wsum[j] as i64;
            if let Some(z) = &w.zero_points {
                let zj = z[j] as i64;
                v += k * zx * zj - zj * q.sum as i64;
            }
            *y = v as f32 * (q.scale * w.scales[j]) + self.bias.map_or(0.0, |b| b[j]);
        }
    }
}

/// Quantizes one row to codes `0..=levels` (see the module doc), writing `dst` (`x.len()`).
fn quantize_row(x: &[f32], levels: u8, dst: &mut [u8]) -> RowQuant {
    let (lo, hi) = x.iter().fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let l = levels as f32;
    if hi - lo <= 0.0 || !(hi - lo).is_finite() {
        // All zeros (or a non-finite range): zero codes; the outputs are the bias.
        dst.fill(0);
        return RowQuant { scale: if hi - lo <= 0.0 { 1.0 } else { f32::NAN }, zero_point: 0, sum: 0 };
    }
    let scale = (hi - lo) / l;
    let inv = l / (hi - lo);
    let zp = (-lo * inv).round_ties_even().clamp(0.0, l);
    let mut sum = 0i32;
    for (d, v) in dst.iter_mut().zip(x) {
        let c = (v * inv + zp).clamp(0.0, l).round_ties_even() as u8;
        *d = c;
        sum += c as i32;
    }
    RowQuant { scale, zero_point: zp as i32, sum }
}

/// Portable kernel over the packed layout.
fn block_scalar(codes: &[u8], kp: usize, panel: &[i8], rb: usize, acc: &mut [[i32; PANEL]; 4]) {
    for (r, out) in acc.iter_mut().take(rb).enumerate() {
        out.fill(0);
        let row = &codes[r * kp..(r + 1) * kp];
        for (a, w) in row.chunks_exact(GROUP).zip(panel.chunks_exact(GROUP_BYTES)) {
            for (o, wc) in out.iter_mut().zip(w.chunks_exact(GROUP)) {
                *o += a.iter().zip(wc).map(|(a, w)| *a as i32 * *w as i32).sum::<i32>();
            }
        }
    }
}

/// AVX-512 VNNI kernel: `R` rows × 64 channels, 4 × `R` accumulators.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VNNI; `codes` holds `R` rows of stride `kp` (a multiple of
/// 4) and `panel` `kp / 4` groups of 256 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512vnni,avx512bw,avx512f")]
unsafe fn block_vnni<const R: usize>(codes: &[u8], kp: usize, panel: &[i8], acc: &mut [[i32; PANEL]; 4]) {
    use std::arch::x86_64::*;
    let groups = kp / GROUP;
    let (ap, wp) = (codes.as_ptr(), panel.as_ptr());
    let mut s = [[_mm512_setzero_si512(); 4]; R];
    for g in 0..groups {
        let w = wp.add(g * GROUP_BYTES);
        let w0 = _mm512_loadu_si512(w.cast());
        let w1 = _mm512_loadu_si512(w.add(64).cast());
        let w2 = _mm512_loadu_si512(w.add(128).cast());
        let w3 = _mm512_loadu_si512(w.add(192).cast());
        for (r, sr) in s.iter_mut().enumerate() {
            let b = _mm512_set1_epi32(ap.add(r * kp + g * GROUP).cast::<i32>().read_unaligned());
            sr[0] = _mm512_dpbusd_epi32(sr[0], b, w0);
            sr[1] = _mm512_dpbusd_epi32(sr[1], b, w1);
            sr[2] = _mm512_dpbusd_epi32(sr[2], b, w2);
            sr[3] = _mm512_dpbusd_epi32(sr[3], b, w3);
        }
    }
    for (sr, out) in s.iter().zip(acc.iter_mut()) {
        for (c, v) in sr.iter().enumerate() {
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * c).cast(), *v);
        }
    }
}

/// AVX2 kernel: `R` rows × 64 channels in two 32-channel halves (activation codes ≤ 127).
///
/// # Safety
/// The CPU must support AVX2; shapes as for [`block_vnni`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2<const R: usize>(codes: &[u8], kp: usize, panel: &[i8], acc: &mut [[i32; PANEL]; 4]) {
    use std::arch::x86_64::*;
    let groups = kp / GROUP;
    let (ap, wp) = (codes.as_ptr(), panel.as_ptr());
    let ones = _mm256_set1_epi16(1);
    for half in 0..2 {
        let mut s = [[_mm256_setzero_si256(); 4]; R];
        for g in 0..groups {
            let w = wp.add(g * GROUP_BYTES + half * 128);
            let wv = [
                _mm256_loadu_si256(w.cast()),
                _mm256_loadu_si256(w.add(32).cast()),
                _mm256_loadu_si256(w.add(64).cast()),
                _mm256_loadu_si256(w.add(96).cast()),
            ];
            for (r, sr) in s.iter_mut().enumerate() {
                let b = _mm256_set1_epi32(ap.add(r * kp + g * GROUP).cast::<i32>().read_unaligned());
                for (acc, w) in sr.iter_mut().zip(wv) {
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w), ones));
                }
            }
        }
        for (sr, out) in s.iter().zip(acc.iter_mut()) {
            for (c, v) in sr.iter().enumerate() {
                _mm256_storeu_si256(out.as_mut_ptr().add(half * 32 + 8 * c).cast(), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    fn isas() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|i| i.available()).collect()
    }

    /// Plain `Σ_k a·q` on the unpacked weights.
    fn reference(codes: &[u8], q: &[i8], rows: usize, n: usize, k: usize) -> Vec<i32> {
        let mut out = vec![0i32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] = (0..k).map(|kk| codes[r * k + kk] as i32 * q[j * k + kk] as i32).sum();
            }
        }
        out
    }

    #[test]
    fn integer_products_are_exact_on_every_kernel() {
        let mut g = rng(1);
        // Odd shapes: K not a multiple of 4 or 64, N not a multiple of 64, rows not of 4.
        for &(rows, n, k) in
            &[(1, 1, 1), (3, 5, 7), (5, 64, 4), (7, 65, 130), (2, 130, 257), (9, 200, 1001), (4, 64, 64)]
        {
            let q: Vec<i8> = (0..n * k).map(|_| g.random_range(-128i32..=127) as i8).collect();
            for isa in isas() {
                let w = Int8Linear::with_isa(&q, n, k, &[1.0], None, isa).unwrap();
                assert_eq!(w.values(), q, "{isa:?} pack/unpack");
                let top = w.activation_levels() as i32;
                // Extreme codes included: the AVX2 path must not saturate.
                let codes: Vec<u8> =
                    (0..rows * k).map(|i| if i % 5 == 0 { top as u8 } else { g.random_range(0..=top) as u8 }).collect();
                assert_eq!(w.dot_codes(&codes, rows), reference(&codes, &q, rows, n, k), "{isa:?} {rows}x{n}x{k}");
            }
        }
    }

    #[test]
    fn extreme_weights_do_not_saturate() {
        let (n, k) = (64, 512);
        for wv in [-128i8, 127] {
            let q = vec![wv; n * k];
            for isa in isas() {
                let w = Int8Linear::with_isa(&q, n, k, &[1.0], None, isa).unwrap();
                let codes = vec![w.activation_levels(); k];
                let want = k as i32 * w.activation_levels() as i32 * wv as i32;
                assert!(w.dot_codes(&codes, 1).iter().all(|v| *v == want), "{isa:?} {wv}");
            }
        }
    }

    /// f32 reference `x · Wᵀ + b` with the dequantized weights.
    fn float_reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let s: f64 = (0..k).map(|kk| x[r * k + kk] as f64 * w[j * k + kk] as f64).sum();
                out[r * n + j] = (s + b[j] as f64) as f32;
            }
        }
        out
    }

    #[test]
    fn forward_matches_f32_within_activation_rounding() {
        let mut g = rng(2);
        let (n, k) = (70, 300);
        let q: Vec<i8> = (0..n * k).map(|_| g.random_range(-127i32..=127) as i8).collect();
        let scales: Vec<f32> = (0..n).map(|_| g.random_range(0.001f32..0.01)).collect();
        let zps: Vec<i8> = (0..n).map(|_| g.random_range(-20i32..20) as i8).collect();
        let bias: Vec<f32> = (0..n).map(|_| g.random_range(-1f32..1.0)).collect();
        for rows in [1usize, 6] {
            // Mixed-sign rows, an all-positive row (zero point 0) and an all-zero row.
            let mut x: Vec<f32> = (0..rows * k).map(|_| g.random_range(-2f32..3.0)).collect();
            if rows > 2 {
                x[k..2 * k].iter_mut().for_each(|v| *v = v.abs());
                x[2 * k..3 * k].fill(0.0);
            }
            for zp in [None, Some(&zps[..])] {
                for isa in isas() {
                    let w = Int8Linear::with_isa(&q, n, k, &scales, zp, isa).unwrap();
                    let want = float_reference(&x, &w.dequantize(), &bias, rows, n, k);
                    let mut got = vec![0f32; rows * n];
                    w.forward(&x, rows, Some(&bias), &mut got).unwrap();
                    // Activation step s_x/2 per value; errors add up like a random walk.
                    let l = w.activation_levels() as f32;
                    for r in 0..rows {
                        let span = 5.0 / l;
                        let wmax = w.dequantize().iter().fold(0f32, |m, v| m.max(v.abs()));
                        let tol = span * wmax * (k as f32).sqrt() * 2.0 + 1e-5;
                        for j in 0..n {
                            let d = (got[r * n + j] - want[r * n + j]).abs();
                            assert!(d <= tol, "{isa:?} zp {} row {r} ch {j}: {d} > {tol}", zp.is_some());
                        }
                    }
                    if rows > 2 {
                        assert_eq!(&got[2 * n..3 * n], &bias[..], "{isa:?}: a zero row gives the bias");
                    }
                }
            }
        }
    }

    #[test]
    fn threads_give_the_same_result() {
        let mut g = rng(3);
        let (n, k, rows) = (300, 4100, 5);
        let q: Vec<i8> = (0..n * k).map(|_| g.random_range(-127i32..=127) as i8).collect();
        let x: Vec<f32> = (0..rows * k).map(|_| g.random_range(-1f32..1.0)).collect();
        let w = Int8Linear::new(&q, n, k, &[0.01], None).unwrap();
        assert!(rows * n * k >= PAR_MIN_MACS);
        let run = |parallel: Parallel<'_>| {
            let mut out = vec![0f32; rows * n];
            w.forward_on(&x, rows, None, &mut out, parallel).unwrap();
            out
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let alone = run(Parallel::Caller);
        assert_eq!(alone, run(Parallel::Pool(&pool)));
        assert_eq!(alone, run(Parallel::Shared));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Int8Linear::new(&[1, 2, 3], 2, 2, &[1.0], None).is_err());
        assert!(Int8Linear::new(&[1, 2, 3, 4], 2, 2, &[1.0, 2.0, 3.0], None).is_err());
        assert!(Int8Linear::new(&[], 0, 2, &[1.0], None).is_err());
        let w = Int8Linear::new(&[1, 2, 3, 4], 2, 2, &[1.0], Some(&[0, 1])).unwrap();
        let mut out = vec![0f32; 2];
        assert!(w.forward(&[1.0; 3], 1, None, &mut out).is_err());
        assert!(w.forward(&[1.0; 2], 1, Some(&[0.0]), &mut out).is_err());
        w.forward(&[1.0; 2], 1, None, &mut out).unwrap();
        // w = [[1, 2], [3 - 1, 4 - 1]] at scale 1; x = [1, 1] quantizes exactly (code 255 = 1.0).
        assert!((out[0] - 3.0).abs() < 1e-5 && (out[1] - 5.0).abs() < 1e-5, "{out:?}");
    }
}
