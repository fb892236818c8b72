//! Criterion benches of the pruning kernels (`modelpress::compress::prune`).
//!
//! Run: `cargo bench --bench prune -- --warm-up-time 1 --measurement-time 5 --sample-size 10`.
//! Goal: global threshold + apply over 50M f32 weights ≤ 0.35 s on one core.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use modelpress::compress::prune::{apply_cut, encode, global_cut, prune_n_m, NmPattern, Parallelism, TensorRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TENSORS: usize = 5;
const PER_TENSOR: usize = 10_000_000;

/// Roughly Gaussian weights (sum of 4 uniforms), seeded.
fn weights(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| (0..4).map(|_| rng.random_range(-0.05f32..0.05)).sum()).collect()
}

/// Runs `op` `iters` times on a fresh copy of `orig`, timing only `op`.
fn timed_with_reset(
    iters: u64,
    data: &mut [Vec<f32>],
    orig: &[Vec<f32>],
    mut op: impl FnMut(&mut [Vec<f32>]),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        for (d, o) in data.iter_mut().zip(orig) {
            d.copy_from_slice(o);
        }
        let start = Instant::now();
        op(data);
        total += start.elapsed();
    }
    total
}

/// Threshold + apply over 5 × 10M, the data restored (outside the timing) before each run.
fn global_50m(c: &mut Criterion) {
    let orig: Vec<Vec<f32>> = (0..TENSORS).map(|i| weights(i as u64, PER_TENSOR)).collect();
    let mut g = c.benchmark_group("magnitude_global_50M");
    g.throughput(Throughput::Elements((TENSORS * PER_TENSOR) as u64));
    for (label, par) in [("serial", Parallelism::Serial), ("rayon", Parallelism::Rayon)] {
        g.bench_function(format!("threshold+apply/{label}"), |b| {
            let mut data = orig.clone();
            b.iter_custom(|iters| {
                timed_with_reset(iters, &mut data, &orig, |data| {
                    let refs: Vec<TensorRef<'_>> = data.iter().map(|d| TensorRef { name: "w", data: d }).collect();
                    let gc = global_cut(&refs, 0.8, par).expect("no NaN in bench data");
                    let mut pruned = 0;
                    for (d, cut) in data.iter_mut().zip(&gc.cuts) {
                        pruned += apply_cut("w", d, cut, par).stats.pruned;
                    }
                    assert_eq!(pruned, gc.k);
                })
            });
        });
        g.bench_function(format!("threshold_only/{label}"), |b| {
            let refs: Vec<TensorRef<'_>> = orig.iter().map(|d| TensorRef { name: "w", data: d }).collect();
            b.iter(|| global_cut(&refs, 0.8, par).expect("no NaN in bench data"));
        });
    }
    g.finish();
}

fn nm_and_sparse(c: &mut Criterion) {
    let (rows, cols) = (4096, 4096);
    let orig = weights(42, rows * cols);
    let mut g = c.benchmark_group("nm_and_sparse_16M");
    g.throughput(Throughput::Bytes((rows * cols * 4) as u64));
    for (label, par) in [("serial", Parallelism::Serial), ("rayon", Parallelism::Rayon)] {
        g.bench_function(format!("nm_2:4/{label}"), |b| {
            let p: NmPattern = "2:4".parse().expect("valid pattern");
            let mut data = vec![orig.clone()];
            let orig = vec![orig.clone()];
            b.iter_custom(|iters| {
                timed_with_reset(iters, &mut data, &orig, |data| {
                    prune_n_m("w", &mut data[0], &[rows, cols], p, par).expect("divisible");
                })
            });
        });
    }
    // 90 % sparse input for the encoder.
    let mut sparse = orig.clone();
    let refs = [TensorRef { name: "w", data: &orig }];
    let gc = global_cut(&refs, 0.9, Parallelism::Serial).expect("no NaN");
    apply_cut("w", &mut sparse, &gc.cuts[0], Parallelism::Serial);
    g.bench_function("sparse_encode_90pct", |b| {
        b.iter(|| encode("w", &sparse, &[rows, cols]).expect("shape matches"));
    });
    g.finish();
}

criterion_group!(benches, global_50m, nm_and_sparse);
criterion_main!(benches);
