//! Own compute kernels for the serving path, where candle's general kernels leave speed on the
//! table (see issue 18 and `docs/benchmarks.md`).
//!
//! - [`int8`]: [`Int8Linear`], an int8 GEMM/GEMV with dynamic per-row activation quantization
//!   (the method of ONNX Runtime's `quantize_dynamic`), AVX-512 VNNI / AVX2 / scalar chosen at
//!   run time, weights packed once at model load.
//!
//! Pure and synchronous: no tokio, no I/O, no HTTP or SQL.
//!
//! # Threads
//! A kernel runs on the calling thread (an inference thread, or a job worker). A large product
//! is cut into chunks of output channels that the caller and the **helper pool** take from one
//! atomic counter: the caller starts at once and never waits for a helper to wake, a helper
//! that wakes late (or whose core is busy with a job) simply takes fewer chunks, so a busy
//! machine degrades to about single-thread speed (plus at most the one chunk a descheduled
//! helper holds) instead of stalling on a descheduled thread (what made candle's spinning pool
//! 4–20× slower under load, see `nn`). The helper pool is process-wide,
//! made on first use with [`set_threads`]`(n)` − 1 threads (default: all cores − 1), shared by
//! every caller; helpers sleep when idle. Small products never leave the caller.

pub mod int8;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub use int8::{Int8Linear, Isa, KernelError, Parallel};

/// Threads a kernel computes on (caller included); set once, before the first kernel runs.
static THREADS: OnceLock<usize> = OnceLock::new();
static HELPERS: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Sets how many threads (the caller plus helpers) one large kernel call may use; `0` means
/// all available cores. Only the first call counts (later calls and calls after the first
/// kernel ran return `false`).
pub fn set_threads(threads: usize) -> bool {
    let n = if threads == 0 { available_cores() } else { threads };
    THREADS.set(n).is_ok()
}

/// Threads one large kernel call uses (caller included).
pub fn threads() -> usize {
    *THREADS.get_or_init(available_cores)
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The process-wide helper pool (`None` with one thread).
fn helpers() -> Option<&'static rayon::ThreadPool> {
    HELPERS
        .get_or_init(|| {
            let n = threads();
            if n <= 1 {
                return None;
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n - 1)
                .thread_name(|i| format!("modelpress-kernel-{i}"))
                .build()
                .map_err(|e| tracing::warn!(error = %e, "no kernel helper threads; kernels run single-threaded"))
                .ok()
        })
        .as_ref()
}

/// Runs `work(chunk)` for every chunk in `0..chunks`, on the caller and on up to `helpers`
/// threads of `pool` (see the module doc). Returns when all chunks are done.
pub(crate) fn for_each_chunk(chunks: usize, pool: Option<&rayon::ThreadPool>, work: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    let drain = || loop {
        let c = next.fetch_add(1, Ordering::Relaxed);
        if c >= chunks {
            break;
        }
        work(c);
    };
    match pool {
        Some(pool) if chunks > 1 => pool.in_place_scope(|s| {
            for _ in 0..pool.current_num_threads().min(chunks - 1) {
                s.spawn(|_| drain());
            }
            drain();
        }),
        _ => drain(),
    }
}

/// [`for_each_chunk`] on the process-wide helper pool.
pub(crate) fn for_each_chunk_shared(chunks: usize, work: impl Fn(usize) + Sync) {
    for_each_chunk(chunks, helpers(), work)
}
