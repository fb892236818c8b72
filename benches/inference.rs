//! Benchmarks of serving (`modelpress::inference`): the forward passes the inference threads run,
//! on the models they build from stored artifacts.
//!
//! - `inference_digits_teacher`: the digits teacher (64-256-256-10) loaded as the service loads
//!   it, batch 1 / 64, and the in-process round trip through [`InferenceHandle`] (queue, thread
//!   hand-off, reply) at batch 1.
//! - `inference_mlp4096`: an MLP of 4 × 4096×4096 (67M parameters, seeded Gaussian weights / 64
//!   like `shared/peers/ort_peer.py`) stored as f32, int8 (per-channel, served as Q8_0 blocks with
//!   an f32 twin for large batches), q8_0 and q4_k artifacts, batch 1 / 64.
//! - `dynamic batching` (printed once, not a criterion group): requests/s of 64 concurrent
//!   in-process clients sending batch-1 requests vs one client, with p50/p99 latency.
//!
//! Run: `cargo bench --bench inference`. Threads: the forward passes run inside a rayon pool of
//! `INFER_BENCH_THREADS` threads (default 1, what one inference thread uses); candle's quantized
//! kernels use their own pool sized by `CANDLE_NUM_THREADS` (default: physical cores). Set
//! `INFER_BENCH_SKIP_LARGE=1` to skip the 67M-parameter model (it takes ~1 GB and a minute to set
//! up).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modelpress::compress::quant::{quantize_par, QuantizationConfig, Scheme, METADATA_KEY};
use modelpress::inference::model::{self, ServedModel};
use modelpress::inference::{InferenceConfig, InferenceHandle, ModelSource, OutputMode, PredictRequest};
use modelpress::nn::ModelSpec;
use modelpress::telemetry::Metrics;
use modelpress::tensorfile::{Dtype, TensorPlan, TensorWriter};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn pool() -> rayon::ThreadPool {
    let threads = std::env::var("INFER_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("bench pool")
}

fn teacher() -> (ModelSource, Arc<ServedModel>) {
    let spec_json = std::fs::read_to_string(format!("{ROOT}/examples/digits-mlp.spec.json")).expect("spec");
    let spec = Arc::new(ModelSpec::from_json(spec_json.as_bytes()).expect("valid spec"));
    let path = PathBuf::from(format!("{ROOT}/tests/fixtures/teacher_digits.safetensors"));
    let served = model::load("teacher", &path, spec.clone(), spec_json.clone(), &[1, 64]).expect("teacher loads");
    let id = "00000000-0000-7000-8000-00000000beef".to_string();
    (ModelSource { id, path, spec, spec_json: spec_json.into() }, Arc::new(served))
}

fn digits_x(rows: usize) -> Tensor {
    let d = candle_core::safetensors::load(format!("{ROOT}/tests/fixtures/digits.safetensors"), &Device::Cpu)
        .expect("digits");
    d["test_x"].narrow(0, 0, rows).expect("rows")
}

fn digits_teacher(c: &mut Criterion) {
    let pool = pool();
    let (source, served) = teacher();
    let mut group = c.benchmark_group("inference_digits_teacher");
    for rows in [1usize, 64] {
        let x = digits_x(rows);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::new("forward", rows), &x, |b, x| {
            pool.install(|| b.iter(|| served.network_for(rows).forward(x).expect("forward")))
        });
    }
    // The in-process round trip: queue, wake the inference thread, forward, reply.
    let handle = InferenceHandle::start(bench_config(1), Arc::new(Metrics::default())).expect("threads");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let row = digits_x(1).flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("row");
    let req = || PredictRequest { model: source.clone(), rows: 1, inputs: row.clone(), output: OutputMode::Logits };
    rt.block_on(handle.predict(req())).expect("warm");
    group.throughput(Throughput::Elements(1));
    group.bench_function("handle_roundtrip/1", |b| b.iter(|| rt.block_on(handle.predict(req())).expect("predict")));
    group.finish();
    handle.shutdown();
}

fn bench_config(threads: usize) -> InferenceConfig {
    InferenceConfig {
        threads,
        cache_bytes: 1 << 32,
        max_batch: 64,
        max_wait: Duration::from_micros(500),
        max_queue: 4096,
        warm_rows: vec![1, 64],
    }
}

/// Writes a 4 × 4096² MLP artifact: f32, or every weight quantized with `scheme`.
fn write_mlp(path: &Path, weights: &[Vec<f32>], n: usize, scheme: Option<Scheme>) {
    let mut plans = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    let mut cfg = scheme.map(QuantizationConfig::new);
    for (i, w) in weights.iter().enumerate() {
        let name = format!("fc{i}.weight");
        match scheme {
            Some(s) => {
                let q = quantize_par(&name, w, &[n, n], s).expect("quantize");
                for e in q.to_entries().expect("entries") {
                    plans.push(TensorPlan::new(e.name.clone(), Dtype::parse(e.dtype).expect("dtype"), e.shape.clone()));
                    data.push(e.bytes);
                }
                cfg.as_mut().expect("config").record(&q);
            }
            None => {
                plans.push(TensorPlan::new(name, Dtype::F32, vec![n, n]));
                data.push(w.iter().flat_map(|v| v.to_le_bytes()).collect());
            }
        }
        let bias = format!("fc{i}.bias");
        plans.push(TensorPlan::new(bias.clone(), Dtype::F32, vec![n]));
        data.push(vec![0u8; 4 * n]);
        if let Some(c) = cfg.as_mut() {
            c.record_float(&bias);
        }
    }
    let mut meta = BTreeMap::new();
    if let Some(c) = &cfg {
        meta.insert(METADATA_KEY.to_string(), c.to_json());
    }
    let mut w = TensorWriter::create(path, plans, &meta).expect("writer");
    for d in &data {
        w.write(d).expect("write");
    }
    w.finish().expect("finish");
}

fn mlp4096(c: &mut Criterion) {
    if std::env::var("INFER_BENCH_SKIP_LARGE").is_ok() {
        return;
    }
    let n = 4096;
    let layers: Vec<serde_json::Value> = (0..4)
        .flat_map(|i| {
            let mut v = vec![
                serde_json::json!({"type": "linear", "name": format!("fc{i}"), "in_features": n, "out_features": n}),
            ];
            if i < 3 {
                v.push(serde_json::json!({"type": "relu"}));
            }
            v
        })
        .collect();
    let spec_json = serde_json::json!({"format": "modelpress.spec", "version": 1, "input": {"shape": [n]},
                                       "output": {"classes": n}, "layers": layers})
    .to_string();
    let spec = Arc::new(ModelSpec::from_json(spec_json.as_bytes()).expect("spec"));
    let weights: Vec<Vec<f32>> = (0..4)
        .map(|i| {
            let t = Tensor::randn(0f32, 1f32 / 64.0, (n, n), &Device::Cpu).expect("randn");
            let _ = i;
            t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values")
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = pool();
    let mut group = c.benchmark_group("inference_mlp4096");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    let x64 = Tensor::randn(0f32, 1f32, (64, n), &Device::Cpu).expect("x");
    for (label, scheme) in [
        ("f32", None),
        ("int8", Some("int8".parse::<Scheme>().expect("scheme"))),
        ("q8_0", Some("q8_0".parse().expect("scheme"))),
        ("q4_k", Some("q4_k".parse().expect("scheme"))),
    ] {
        let path = dir.path().join(format!("{label}.safetensors"));
        write_mlp(&path, &weights, n, scheme);
        let served =
            pool.install(|| model::load(label, &path, spec.clone(), spec_json.clone(), &[1, 64])).expect("loads");
        eprintln!(
            "mlp4096 {label}: file {} MB, resident ≈ {} MB, layers run as {:?} (large batches: {:?})",
            std::fs::metadata(&path).map(|m| m.len() / 1_000_000).unwrap_or(0),
            served.bytes / 1_000_000,
            served.plan.layers.iter().map(|l| l.runs_as.as_str()).collect::<Vec<_>>(),
            served.plan.layers.iter().map(|l| l.large_batch_runs_as.as_deref()).collect::<Vec<_>>(),
        );
        for rows in [1usize, 64] {
            let x = x64.narrow(0, 0, rows).expect("rows");
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(BenchmarkId::new(label, rows), &x, |b, x| {
                pool.install(|| b.iter(|| served.network_for(rows).forward(x).expect("forward")))
            });
        }
        std::fs::remove_file(&path).ok();
    }
    group.finish();
}

/// Requests/s and latency percentiles of `clients` concurrent clients, each sending `per_client`
/// batch-1 requests one after another.
fn load_test(handle: &InferenceHandle, source: &ModelSource, clients: usize, per_client: usize) -> (f64, f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("runtime");
    let row = digits_x(1).flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("row");
    let start = Instant::now();
    let mut lat: Vec<f64> = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (h, s, row) = (handle.clone(), source.clone(), row.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        let req = PredictRequest {
                            model: s.clone(),
                            rows: 1,
                            inputs: row.clone(),
                            output: OutputMode::Logits,
                        };
                        h.predict(req).await.expect("predict");
                        lat.push(t.elapsed().as_secs_f64());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client"));
        }
        all
    });
    let total = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] * 1e6;
    ((clients * per_client) as f64 / total, pct(0.5), pct(0.99))
}

fn dynamic_batching(_c: &mut Criterion) {
    let (source, _) = teacher();
    let handle = InferenceHandle::start(bench_config(1), Arc::new(Metrics::default())).expect("threads");
    load_test(&handle, &source, 1, 200); // load + warm
    let (one, p50_1, p99_1) = load_test(&handle, &source, 1, 4000);
    let before = handle.batches_run();
    let (many, p50_64, p99_64) = load_test(&handle, &source, 64, 100);
    let batches = handle.batches_run() - before;
    println!(
        "dynamic batching (in-process, digits teacher, 1 inference thread): 1 client {one:.0} req/s \
         (p50 {p50_1:.0} µs, p99 {p99_1:.0} µs); 64 clients {many:.0} req/s (p50 {p50_64:.0} µs, \
         p99 {p99_64:.0} µs), {:.1} rows per forward; ratio {:.2}×",
        6400.0 / batches.max(1) as f64,
        many / one
    );
    handle.shutdown();
}

criterion_group!(benches, digits_teacher, dynamic_batching, mlp4096);
criterion_main!(benches);
