//! Benchmarks of the own kernels (`modelpress::kernels`) on one 4096×4096 layer, the size of the
//! 67M MLP's layers and of ONNX Runtime's peer (`shared/peers/ort_peer.py`):
//!
//! - `int8_gemm/{isa}-{t}t/{rows}`: [`Int8Linear::forward`] (activation quantization, integer
//!   products, dequantization and bias) per instruction set this CPU has, batch 1 and 64, on
//!   the caller alone (`1t`) and on the caller plus one helper thread (`2t`).
//!
//! - `cpu time` (printed, not a criterion group): one thread, the 4-layer 4096² int8 MLP of
//!   `ort_peer.py` (layers + ReLU) on this kernel and on what served int8 before (candle Q8_0
//!   `QMatMul` at batch 1, the f32 twin through candle's matmul at batch 64): median **on-CPU
//!   time** per forward of the computing thread (`/proc/thread-self/schedstat`), which the other
//!   processes of a shared machine disturb far less than wall time. `scripts/ort_cputime.py`
//!   measures ONNX Runtime the same way.
//!
//! Run: `cargo bench --bench kernels` (`KERNEL_BENCH_ONLY_CPUTIME=1` for the printed part only).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modelpress::kernels::{Int8Linear, Isa, Parallel};
use rand::{Rng, SeedableRng};

fn int8_gemm(c: &mut Criterion) {
    if std::env::var("KERNEL_BENCH_ONLY_CPUTIME").is_ok() {
        return;
    }
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

/// On-CPU nanoseconds of the calling thread so far.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Mean on-CPU and median wall milliseconds of `f` over `n` calls (after 2 warm-up calls). The
/// on-CPU figure is the total over all calls divided by `n`: read from `/proc`, the counter of
/// the running thread advances in scheduler ticks (4 ms here), too coarse for one call.
fn cpu_median(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    f();
    let mut wall = Vec::with_capacity(n);
    let c = thread_cpu_ns();
    for _ in 0..n {
        let t = std::time::Instant::now();
        f();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = (thread_cpu_ns() - c) as f64 / 1e6 / n as f64;
    wall.sort_by(|a, b| a.total_cmp(b));
    (cpu, wall[n / 2])
}

fn cpu_time(_c: &mut Criterion) {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    let n = 4096usize;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let layers: Vec<Vec<f32>> =
        (0..4).map(|_| (0..n * n).map(|_| rng.random_range(-1f32..1.0) * 0.027).collect()).collect();
    // Symmetric per-channel int8, as the quantize job stores it.
    let int8: Vec<Int8Linear> = layers
        .iter()
        .map(|w| {
            let (mut q, mut scales) = (Vec::with_capacity(n * n), Vec::with_capacity(n));
            for row in w.chunks_exact(n) {
                let s = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                scales.push(s);
                q.extend(row.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
            }
            Int8Linear::new(&q, n, n, &scales, None).expect("packs")
        })
        .collect();
    let dev = Device::Cpu;
    let tensors: Vec<Tensor> = layers.iter().map(|w| Tensor::from_slice(w, (n, n), &dev).expect("tensor")).collect();
    let q8: Vec<QMatMul> = tensors
        .iter()
        .map(|t| QMatMul::from_qtensor(QTensor::quantize(t, GgmlDType::Q8_0).expect("q8_0")).expect("qmatmul"))
        .collect();
    let twin: Vec<Tensor> = tensors.iter().map(|t| t.t().and_then(|t| t.contiguous()).expect("wt")).collect();
    drop(tensors);
    let x: Vec<f32> = (0..64 * n).map(|_| rng.random_range(-1f32..1.0)).collect();
    // Accuracy at batch 4: relative error ‖y − y_f32‖ / ‖y_f32‖ of the MLP output.
    {
        let rows = 4;
        let xt = Tensor::from_slice(&x[..rows * n], (rows, n), &dev).expect("x");
        let run = |q: bool| {
            let mut h = xt.clone();
            for i in 0..4 {
                h = if q { q8[i].forward(&h) } else { h.matmul(&twin[i]) }.expect("candle");
                if i < 3 {
                    h = h.relu().expect("relu");
                }
            }
            h.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values")
        };
        let (exact, q8_0) = (run(false), run(true));
        let (mut a, mut b) = (x[..rows * n].to_vec(), vec![0f32; rows * n]);
        for (i, w) in int8.iter().enumerate() {
            w.forward_on(&a, rows, None, &mut b, Parallel::Caller).expect("forward");
            if i < 3 {
                b.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            std::mem::swap(&mut a, &mut b);
        }
        let rel = |y: &[f32]| {
            let num: f64 = y.iter().zip(&exact).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let den: f64 = exact.iter().map(|b| (*b as f64).powi(2)).sum();
            (num / den).sqrt()
        };
        println!(
            "accuracy, int8 MLP 4 x 4096², output vs f32: int8 kernel {:.2e}, candle Q8_0 {:.2e}",
            rel(&a),
            rel(&q8_0)
        );
    }
    for rows in [1usize, 64] {
        let reps = if rows == 1 { 100 } else { 16 };
        let (ours_cpu, ours_wall) = pool.install(|| {
            let (mut a, mut b) = (x[..rows * n].to_vec(), vec![0f32; rows * n]);
            cpu_median(reps, || {
                for (i, w) in int8.iter().enumerate() {
                    w.forward_on(&a, rows, None, &mut b, Parallel::Caller).expect("forward");
                    if i < 3 {
                        b.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                    std::mem::swap(&mut a, &mut b);
                }
            })
        });
        let xt = Tensor::from_slice(&x[..rows * n], (rows, n), &dev).expect("x");
        let (old_cpu, old_wall) = pool.install(|| {
            cpu_median(reps, || {
                let mut h = xt.clone();
                for i in 0..4 {
                    h = if rows == 1 { q8[i].forward(&h) } else { h.matmul(&twin[i]) }.expect("candle");
                    if i < 3 {
                        h = h.relu().expect("relu");
                    }
                }
            })
        });
        let old = if rows == 1 { "candle Q8_0 QMatMul" } else { "f32 twin (candle matmul)" };
        println!(
            "cpu time, int8 MLP 4 x 4096², batch {rows}, 1 thread: int8 kernel ({}) {ours_cpu:.2} ms on-CPU \
             ({ours_wall:.2} ms wall); before: {old} {old_cpu:.2} ms on-CPU ({old_wall:.2} ms wall); {:.2}× faster",
            int8[0].isa().name(),
            old_cpu / ours_cpu
        );
    }
}

criterion_group!(benches, cpu_time, int8_gemm);
criterion_main!(benches);
