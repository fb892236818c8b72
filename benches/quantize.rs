//! Throughput of the quantization kernels on a 4096×4096 f32 tensor (64 MB), reported in GB/s of
//! f32 input. Run: `cargo bench --bench quantize -- --warm-up-time 1 --measurement-time 3`.
//! Goals: int8 per-channel ≥ 2 GB/s on one core; Q4_K ≥ 0.25 GB/s on 2 threads.

use candle_core::quantized::{GgmlDType, QTensor};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use modelpress::compress::quant::{
    quantize_ggml, quantize_ggml_par, quantize_int4, quantize_int8, quantize_int8_par, to_bf16, to_f16, GgmlKind,
    Granularity,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: usize = 4096;
const COLS: usize = 4096;

fn weights() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..ROWS * COLS)
        .map(|_| {
            // Box–Muller, one sample per pair: fine for a benchmark.
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random::<f32>();
            0.02 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let x = weights();
    let shape = [ROWS, COLS];
    let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("rayon pool");

    let mut g = c.benchmark_group("quantize_4096x4096");
    g.throughput(Throughput::BytesDecimal((x.len() * 4) as u64));
    g.sample_size(10);
    g.bench_function("int8_sym_per_channel_1t", |b| {
        b.iter(|| quantize_int8("w", black_box(&x), &shape, true, Granularity::PerChannel).unwrap())
    });
    g.bench_function("int8_asym_per_channel_1t", |b| {
        b.iter(|| quantize_int8("w", black_box(&x), &shape, false, Granularity::PerChannel).unwrap())
    });
    g.bench_function("int8_sym_per_tensor_1t", |b| {
        b.iter(|| quantize_int8("w", black_box(&x), &shape, true, Granularity::PerTensor).unwrap())
    });
    g.bench_function("int8_sym_per_channel_2t", |b| {
        b.iter(|| {
            pool2.install(|| quantize_int8_par("w", black_box(&x), &shape, true, Granularity::PerChannel).unwrap())
        })
    });
    g.bench_function("int4_g128_sym_1t", |b| b.iter(|| quantize_int4("w", black_box(&x), &shape, 128, true).unwrap()));
    g.bench_function("int4_g128_asym_1t", |b| {
        b.iter(|| quantize_int4("w", black_box(&x), &shape, 128, false).unwrap())
    });
    g.bench_function("f16_cast_1t", |b| b.iter(|| to_f16("w", black_box(&x)).unwrap()));
    g.bench_function("bf16_cast_1t", |b| b.iter(|| to_bf16("w", black_box(&x)).unwrap()));
    g.bench_function("q8_0_1t", |b| b.iter(|| quantize_ggml("w", black_box(&x), &shape, GgmlKind::Q8_0).unwrap()));
    g.bench_function("q8_0_2t", |b| {
        b.iter(|| pool2.install(|| quantize_ggml_par("w", black_box(&x), &shape, GgmlKind::Q8_0).unwrap()))
    });
    // candle's own single-threaded quantizer, for reference.
    let t = candle_core::Tensor::from_slice(&x, &shape[..], &candle_core::Device::Cpu).expect("tensor");
    g.bench_function("q8_0_candle_1t", |b| b.iter(|| QTensor::quantize(black_box(&t), GgmlDType::Q8_0).unwrap()));
    g.bench_function("q4_k_candle_1t", |b| b.iter(|| QTensor::quantize(black_box(&t), GgmlDType::Q4K).unwrap()));
    g.bench_function("q4_k_1t", |b| b.iter(|| quantize_ggml("w", black_box(&x), &shape, GgmlKind::Q4K).unwrap()));
    g.bench_function("q4_k_2t", |b| {
        b.iter(|| pool2.install(|| quantize_ggml_par("w", black_box(&x), &shape, GgmlKind::Q4K).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
