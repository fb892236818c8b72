//! Unit tests of the inference threads on the digits teacher fixture: predictions equal the
//! engine's forward, batching returns each caller its rows, the queue bound, withdrawn
//! requests, eviction and the cache budget.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};

use super::*;
use crate::nn::Network;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn teacher_source(id: &str) -> ModelSource {
    let spec_json = std::fs::read_to_string(format!("{ROOT}/examples/digits-mlp.spec.json")).expect("spec");
    let spec = ModelSpec::from_json(spec_json.as_bytes()).expect("valid spec");
    ModelSource {
        id: id.to_string(),
        path: PathBuf::from(format!("{ROOT}/tests/fixtures/teacher_digits.safetensors")),
        spec: Arc::new(spec),
        spec_json: spec_json.into(),
    }
}

fn reference() -> (Tensor, Tensor) {
    let r = candle_core::safetensors::load(
        format!("{ROOT}/tests/fixtures/reference/digits_teacher.safetensors"),
        &Device::Cpu,
    )
    .expect("reference");
    (r["x"].clone(), r["logits"].clone())
}

fn config(threads: usize) -> InferenceConfig {
    InferenceConfig {
        threads,
        cache_bytes: 1 << 30,
        max_batch: 64,
        max_wait: Duration::from_millis(2),
        max_queue: 1000,
        warm_rows: vec![1, 8],
    }
}

fn request(source: &ModelSource, x: &Tensor, row: usize, output: OutputMode) -> PredictRequest {
    let inputs = x.narrow(0, row, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    PredictRequest { model: source.clone(), rows: 1, inputs, output }
}

fn counter(metrics: &Metrics, line_start: &str) -> f64 {
    metrics
        .render(&[])
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_rows() {
    let metrics = Arc::new(Metrics::default());
    let handle = InferenceHandle::start(config(1), metrics.clone()).unwrap();
    let source = teacher_source("00000000-0000-7000-8000-000000000001");
    let (x, logits) = reference();
    let n = x.dim(0).unwrap();
    let mut tasks = Vec::new();
    for i in 0..n {
        let h = handle.clone();
        let req = request(&source, &x, i, OutputMode::Logits);
        tasks.push(tokio::spawn(async move { (i, h.predict(req).await) }));
    }
    let expected = logits.to_vec2::<f32>().unwrap();
    let mut merged = 0;
    for t in tasks {
        let (i, p) = t.await.unwrap();
        let p = p.unwrap();
        assert_eq!((p.rows, p.width), (1, 10));
        let d = p.values.iter().zip(&expected[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "row {i}: max abs diff {d}");
        if p.batch_rows > 1 {
            merged += 1;
        }
    }
    assert!(handle.batches_run() < n as u64, "{} batches for {n} requests", handle.batches_run());
    assert!(merged > 0);
    assert_eq!(counter(&metrics, "modelpress_model_cache_total{event=\"load\"}"), 1.0);
    handle.shutdown();
}

#[tokio::test]
async fn output_modes_and_multi_row_requests() {
    let handle = InferenceHandle::start(config(1), Arc::new(Metrics::default())).unwrap();
    let source = teacher_source("00000000-0000-7000-8000-000000000002");
    let (x, logits) = reference();
    let rows = 5;
    let inputs = x.narrow(0, 0, rows).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let probs = handle
        .predict(PredictRequest {
            model: source.clone(),
            rows,
            inputs: inputs.clone(),
            output: OutputMode::Probabilities,
        })
        .await
        .unwrap();
    let top =
        handle.predict(PredictRequest { model: source, rows, inputs, output: OutputMode::TopK(3) }).await.unwrap();
    assert_eq!((top.rows, top.width, top.indices.len()), (rows, 3, rows * 3));
    let expected = logits.to_vec2::<f32>().unwrap();
    for (r, want) in expected.iter().take(rows).enumerate() {
        let p = &probs.values[r * 10..(r + 1) * 10];
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let argmax = (0..10).max_by(|a, b| want[*a].total_cmp(&want[*b])).unwrap();
        assert_eq!(top.indices[r * 3] as usize, argmax);
        assert!((top.values[r * 3] - p[argmax]).abs() < 1e-6);
        assert!(top.values[r * 3] >= top.values[r * 3 + 1] && top.values[r * 3 + 1] >= top.values[r * 3 + 2]);
    }
    handle.shutdown();
}

#[tokio::test]
async fn a_full_queue_rejects_and_withdrawn_requests_are_skipped() {
    // No threads: nothing drains the queue, so the test drives `next_batch` itself.
    let metrics = Arc::new(Metrics::default());
    let handle = InferenceHandle::start(InferenceConfig { max_queue: 3, ..config(0) }, metrics.clone()).unwrap();
    let source = teacher_source("00000000-0000-7000-8000-000000000003");
    let (x, _) = reference();
    let a = handle.submit(request(&source, &x, 0, OutputMode::Logits)).unwrap();
    let b = handle.submit(request(&source, &x, 1, OutputMode::Logits)).unwrap();
    let _c = handle.submit(request(&source, &x, 2, OutputMode::Logits)).unwrap();
    match handle.submit(request(&source, &x, 3, OutputMode::Logits)) {
        Err(InferError::QueueFull { capacity: 3 }) => {}
        other => panic!("expected a full queue, got {other:?}"),
    }
    assert_eq!(counter(&metrics, "modelpress_rejections_total{reason=\"inference_queue_full\"}"), 1.0);
    drop(a);
    drop(b);
    let batch = handle.shared.next_batch().expect("a batch");
    assert_eq!(batch.items.len(), 1, "withdrawn requests are not computed");
    assert_eq!(batch.items[0].req.inputs[..], request(&source, &x, 2, OutputMode::Logits).inputs[..]);
    assert_eq!(counter(&metrics, "modelpress_rejections_total{reason=\"client_gone\"}"), 2.0);
    assert_eq!(handle.queue_len(), 0);
    handle.shutdown();
}

#[tokio::test]
async fn evicted_models_are_not_served_and_the_budget_holds() {
    let metrics = Arc::new(Metrics::default());
    let handle = InferenceHandle::start(config(1), metrics.clone()).unwrap();
    let (x, _) = reference();
    let a = teacher_source("00000000-0000-7000-8000-000000000004");
    handle.predict(request(&a, &x, 0, OutputMode::Logits)).await.unwrap();
    let loaded = handle.cached(&a.id).expect("cached after use");
    // f32 weights twice (candle layout + small-batch path).
    assert_eq!(loaded.bytes, 2 * 4 * (64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10));
    handle.evict(&a.id);
    assert!(handle.cached(&a.id).is_none());
    match handle.predict(request(&a, &x, 0, OutputMode::Logits)).await {
        Err(InferError::ModelGone(id)) => assert_eq!(id, a.id),
        other => panic!("a deleted model must not be served: {other:?}"),
    }
    handle.shutdown();

    // A budget for one model: loading a second evicts the first.
    let budget = loaded.bytes + 10;
    let handle = InferenceHandle::start(InferenceConfig { cache_bytes: budget, ..config(1) }, metrics.clone()).unwrap();
    let b = teacher_source("00000000-0000-7000-8000-000000000005");
    let c = teacher_source("00000000-0000-7000-8000-000000000006");
    handle.predict(request(&b, &x, 0, OutputMode::Logits)).await.unwrap();
    handle.predict(request(&c, &x, 0, OutputMode::Logits)).await.unwrap();
    assert!(handle.cached(&b.id).is_none() && handle.cached(&c.id).is_some());
    assert_eq!(counter(&metrics, "modelpress_model_cache_total{event=\"evict\"}"), 2.0);
    handle.shutdown();

    let handle = InferenceHandle::start(InferenceConfig { cache_bytes: 1000, ..config(1) }, metrics).unwrap();
    match handle.predict(request(&b, &x, 0, OutputMode::Logits)).await {
        Err(InferError::TooLarge { needs, budget: 1000, .. }) => assert_eq!(needs, loaded.bytes),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    handle.shutdown();
}

#[tokio::test]
async fn shutdown_answers_queued_requests() {
    let handle = InferenceHandle::start(config(0), Arc::new(Metrics::default())).unwrap();
    let source = teacher_source("00000000-0000-7000-8000-000000000007");
    let (x, _) = reference();
    let rx = handle.submit(request(&source, &x, 0, OutputMode::Logits)).unwrap();
    handle.shutdown();
    assert!(handle.shared.next_batch().is_none());
    assert!(matches!(rx.await.unwrap(), Err(InferError::Stopping)));
    assert!(matches!(handle.submit(request(&source, &x, 0, OutputMode::Logits)), Err(InferError::Stopping)));
}

/// int8 weights served through the int8 kernel agree with the exact f32 evaluation of the same
/// stored values (`evaluate`'s path) up to the per-row activation quantization, at every batch.
#[test]
fn large_int8_layers_run_on_the_int8_kernel() {
    use crate::compress::quant::{quantize, Granularity, Scheme};
    let spec_json = r#"{"format": "modelpress.spec", "version": 1, "input": {"shape": [256]},
        "output": {"classes": 10},
        "layers": [{"type": "linear", "name": "fc1", "in_features": 256, "out_features": 4096},
                   {"type": "relu"},
                   {"type": "linear", "name": "fc2", "in_features": 4096, "out_features": 10}]}"#;
    let spec = ModelSpec::from_json(spec_json.as_bytes()).unwrap();
    let params = crate::nn::init_params(&spec, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    // Quantize fc1.weight (2²⁰ weights: QUANT_KERNEL_MIN_WEIGHTS) as int8 per channel.
    let w = params["fc1.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scheme = Scheme::Int8 { symmetric: true, granularity: Granularity::PerChannel };
    let q = quantize("fc1.weight", &w, &[4096, 256], scheme).unwrap();
    write_quantized(&path, &params, &q, scheme);

    let source =
        ModelSource { id: "m".into(), path: path.clone(), spec: Arc::new(spec.clone()), spec_json: spec_json.into() };
    let served = model::load(&source.id, &path, source.spec.clone(), spec_json.into(), &[1, 16]).unwrap();
    assert_eq!(served.plan.quantization.as_deref(), Some("int8"));
    let fc1 = &served.plan.layers[0];
    assert_eq!((fc1.stored.as_str(), fc1.runs_as.as_str()), ("int8", "int8"));
    let fc2 = &served.plan.layers[1];
    assert_eq!(fc2.runs_as, "f32");
    assert!(!served.plan.large_batch_twin && served.large_batch_net.is_none(), "no f32 twin");

    // Reference: the exact dequantized values through the engine (what `evaluate` runs).
    let exact = crate::artifact::load_params(&path, crate::artifact::LoadMode::Dequantized).unwrap();
    let reference = Network::new(&spec, exact).unwrap();
    // A fixed input: the Q8_0 error depends on it, and an unseeded draw made the bound flaky.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
    let xs: Vec<f32> = (0..16 * 256).map(|_| rand::Rng::random_range(&mut rng, -1.7f32..1.7)).collect();
    let x = Tensor::from_vec(xs, (16, 256), &Device::Cpu).unwrap();
    let want = reference.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    for rows in [1usize, 3, 16] {
        let got = served.network_for(rows).forward(&x.narrow(0, 0, rows).unwrap()).unwrap().to_vec2::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            let scale = w.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-3);
            let d = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // The kernel quantizes each input row to 8 bits (7 on AVX2-only CPUs).
            assert!(d <= 0.02 * scale, "rows {rows}: max abs diff {d} (scale {scale})");
            assert!(d > 0.0, "the int8 kernel ran (activation rounding leaves a trace)");
        }
    }
}

/// Writes `params` with `q` in the quantized-safetensors layout (what the quantize job writes).
fn write_quantized(
    path: &std::path::Path,
    params: &HashMap<String, Tensor>,
    q: &crate::compress::quant::QuantizedTensor,
    scheme: crate::compress::quant::Scheme,
) {
    use crate::compress::quant::{QuantizationConfig, METADATA_KEY};
    use crate::tensorfile::{Dtype, TensorPlan, TensorWriter};
    let entries = q.to_entries().unwrap();
    let mut floats: Vec<&String> = params.keys().filter(|k| *k != &q.name).collect();
    floats.sort();
    let mut plans: Vec<TensorPlan> = entries
        .iter()
        .map(|e| TensorPlan::new(e.name.clone(), Dtype::parse(e.dtype).unwrap(), e.shape.clone()))
        .collect();
    plans.extend(floats.iter().map(|n| TensorPlan::new(n.as_str(), Dtype::F32, params[*n].dims().to_vec())));
    let mut cfg = QuantizationConfig::new(scheme);
    cfg.record(q);
    for n in &floats {
        cfg.record_float(n);
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(METADATA_KEY.to_string(), cfg.to_json());
    let mut w = TensorWriter::create(path, plans, &meta).unwrap();
    for e in &entries {
        w.write(&e.bytes).unwrap();
    }
    for n in floats {
        w.write_f32_as(&params[n].flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
    }
    w.finish().unwrap();
}
