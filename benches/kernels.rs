//! Benchmarks of the own kernels (`modelpress::kernels`) on one 4096×4096 layer, the size of the
//! 67M MLP's layers and of ONNX Runtime's peer (`shared/peers/ort_peer.py`):
//!
//! - `int8_gemm/{isa}-{t}t/{rows}`: [`Int8Linear::forward`] (activation quantization, integer
//!   products, dequantization and bias) per instruction set this CPU has, batch 1 and 64, on
//!   the caller alone (`1t`) and on the caller plus one helper thread (`2t`).
//!
//! Run: `cargo bench --bench kernels`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modelpress::kernels::{Int8Linear, Isa, Parallel};
use rand::{Rng, SeedableRng};

fn int8_gemm(c: &mut Criterion) {
    let helper = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("bench pool");
    let (n, k) = (4096usize, 4096usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let q: Vec<i8> = (0..n * k).map(|_| rng.random_range(-127i32..=127) as i8).collect();
    let scales: Vec<f32> = (0..n).map(|_| rng.random_range(1e-4f32..2e-4)).collect();
    let bias = vec![0.1f32; n];
    let x: Vec<f32> = (0..64 * k).map(|_| rng.random_range(-1f32..1.0)).collect();
    let mut group = c.benchmark_group("int8_gemm");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for isa in [Isa::Avx512Vnni, Isa::Avx2, Isa::Scalar].into_iter().filter(|i| i.available()) {
        let w = Int8Linear::with_isa(&q, n, k, &scales, None, isa).expect("packs");
        for rows in [1usize, 64] {
            if isa == Isa::Scalar && rows > 1 {
                continue; // seconds per call; the scalar path is the portable fallback only
            }
            for (t, parallel) in [(1, Parallel::Caller), (2, Parallel::Pool(&helper))] {
                let mut out = vec![0f32; rows * n];
                group.throughput(Throughput::Elements((rows * n * k) as u64));
                group.bench_with_input(BenchmarkId::new(format!("{}-{t}t", isa.name()), rows), &rows, |b, &rows| {
                    b.iter(|| w.forward_on(&x[..rows * k], rows, Some(&bias), &mut out, parallel).expect("forward"))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, int8_gemm);
criterion_main!(benches);
