//! `quantize` job glue (runs on a worker thread): streams tensors from the memory-mapped input,
//! quantizes the selected ones with the `compress::quant` kernels, writes the quantized
//! safetensors layout (documented in docs/formats.md), and reports per-tensor error and — with
//! a spec and `eval_dataset_id` — the accuracy of the stored artifact against the float model.
//!
//! Tensors are processed one at a time: each quantized tensor's stored parts are appended to a
//! spool file as soon as they exist, so memory stays near the largest tensor; the final file is
//! the header followed by a copy of the spool.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::common::{
    check_globs, check_split, split_keys, typed, DataNeed, FinetuneSettings, Needs, SchemeRequest, Stored,
};
use super::kind::Kind;
use super::{JobContext, JobError, JobOutput, OutputModel};
use crate::compress::quant::{
    quantize_par, to_bf16, to_f16, ErrorAccumulator, ErrorStats, QuantError, QuantizationConfig, QuantizedTensor,
    Scheme, TensorRecord, INT4_GROUP_SIZES, METADATA_KEY,
};
use crate::error::DomainError;
use crate::tensorfile::{Dtype, TensorEntry, TensorPlan, TensorWriter, Tensorfile};

/// `kind: "quantize"`: the scheme (see [`SchemeRequest`]), which tensors, and optionally an
/// accuracy check of the stored artifact and quantization-aware fine-tuning first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QuantizeParams {
    #[serde(flatten)]
    pub scheme: SchemeRequest,
    /// Only tensors whose name matches one of these globs (`*`, `?`).
    #[serde(default)]
    pub include: Vec<String>,
    /// Never these tensors.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Per-tensor schemes by glob (`{"fc3.weight": "int8", "embeddings.*": "f16"}`); `float`
    /// keeps a tensor in its stored precision.
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
    /// Integer schemes: tensors with fewer elements stay float (default 1024).
    #[serde(default = "d_min_elements")]
    #[schema(default = 1024)]
    pub min_elements: usize,
    /// Measure accuracy of the stored artifact against the float model on this dataset.
    #[serde(default)]
    pub eval_dataset_id: Option<String>,
    /// Split for the accuracy check (default `test`).
    #[serde(default)]
    pub eval_split: Option<String>,
    /// Quantization-aware fine-tuning before the final quantization: trains with the selected
    /// weights fake-quantized in the forward pass (straight-through estimator). Defaults as
    /// `train`, but 3 epochs and lr 1e-4.
    #[serde(default)]
    pub finetune: Option<FinetuneSettings>,
}

/// The keys of [`QuantizeParams`] besides the scheme request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantizeRest {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    overrides: BTreeMap<String, String>,
    #[serde(default = "d_min_elements")]
    min_elements: usize,
    #[serde(default)]
    eval_dataset_id: Option<String>,
    #[serde(default)]
    eval_split: Option<String>,
    #[serde(default)]
    finetune: Option<Value>,
}

fn d_min_elements() -> usize {
    1024
}

impl Kind for QuantizeParams {
    fn parse(params: &Value) -> Result<Self, DomainError> {
        let scheme = SchemeRequest::parse(params)?;
        let (_, rest) = split_keys(params, &SchemeRequest::KEYS);
        let r: QuantizeRest = typed("params", rest)?;
        for (glob, s) in &r.overrides {
            if s != "float" {
                s.parse::<Scheme>().map_err(|e| {
                    DomainError::validation(format!("params.overrides.{glob}"), format!("unknown scheme '{s}': {e}"))
                })?;
            }
        }
        check_globs("params.include", &r.include)?;
        check_globs("params.exclude", &r.exclude)?;
        check_split("params.eval_split", r.eval_split.as_deref())?;
        let finetune = match &r.finetune {
            Some(v) => Some(FinetuneSettings::parse(
                "params.finetune",
                v,
                &[("epochs", Value::from(3)), ("lr", Value::from(1e-4))],
            )?),
            None => None,
        };
        Ok(QuantizeParams {
            scheme,
            include: r.include,
            exclude: r.exclude,
            overrides: r.overrides,
            min_elements: r.min_elements,
            eval_dataset_id: r.eval_dataset_id,
            eval_split: r.eval_split,
            finetune,
        })
    }

    fn needs(&self) -> Needs {
        let mut n = Needs::default();
        if let Some(d) = &self.eval_dataset_id {
            n.spec = true;
            n.data.push(DataNeed::new(d, "params.eval_dataset_id", self.eval_split.as_deref(), true));
        }
        if let Some(f) = &self.finetune {
            n.spec = true;
            n.data.push(f.need("params.finetune"));
        }
        n
    }

    /// The stored file must be float, and every tensor the plan quantizes must be able to hold
    /// its scheme.
    fn check(&self, stored: &Stored) -> Result<(), DomainError> {
        let Some(model) = &stored.model else { return Ok(()) };
        if crate::artifact::quant_config(&model.header).is_some() {
            return Err(DomainError::validation(
                "model_id",
                "the model is already quantized; quantize its float parent instead",
            ));
        }
        let base = self.scheme.scheme()?;
        for t in &model.header.tensors {
            let action =
                plan_action(self, base, t).map_err(|e| DomainError::validation("params.overrides", e.to_string()))?;
            if let Action::Quantize(s) = action {
                if t.shape.is_empty() && !matches!(s, Scheme::F16 | Scheme::Bf16) {
                    let field = match self.overrides.keys().find(|g| crate::glob::matches(g, &t.name)) {
                        Some(g) => format!("params.overrides.{g}"),
                        None => "params.scheme".to_string(),
                    };
                    return Err(DomainError::validation(
                        field,
                        format!("tensor '{}' is a scalar: scheme {} cannot hold it; keep it float", t.name, s.label()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &JobContext) -> Result<JobOutput, JobError> {
        run(ctx, self)
    }
}

/// What happens to one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Keep,
    Quantize(Scheme),
}

fn plan_action(p: &QuantizeParams, base: Scheme, t: &TensorEntry) -> Result<Action, JobError> {
    if !t.dtype.is_float() {
        return Ok(Action::Keep);
    }
    if let Some((_, s)) = p.overrides.iter().find(|(glob, _)| crate::glob::matches(glob, &t.name)) {
        return Ok(if s == "float" {
            Action::Keep
        } else {
            Action::Quantize(s.parse().map_err(|e: QuantError| JobError::invalid("params.overrides", e.to_string()))?)
        });
    }
    if (!p.include.is_empty() && !crate::glob::any(&p.include, &t.name)) || crate::glob::any(&p.exclude, &t.name) {
        return Ok(Action::Keep);
    }
    let cast_only = matches!(base, Scheme::F16 | Scheme::Bf16);
    // Integer schemes only pay off on weight matrices (linear 2-D, conv 4-D); biases, norms and
    // small tensors stay float. Float casts apply to every float tensor.
    if !cast_only && (t.shape.len() < 2 || (t.numel() as usize) < p.min_elements) {
        return Ok(Action::Keep);
    }
    Ok(Action::Quantize(base))
}

/// Quantizes with the fallbacks the kernels leave to the caller: int4 rows that no group size
/// divides use the largest group that fits, else int8 per-channel.
fn quantize_with_fallback(
    name: &str,
    vals: &[f32],
    shape: &[usize],
    scheme: Scheme,
) -> Result<QuantizedTensor, QuantError> {
    match quantize_par(name, vals, shape, scheme) {
        Err(QuantError::GroupNotDivisible { cols, .. }) => {
            let Scheme::Int4 { symmetric, .. } = scheme else { unreachable!("only int4 has groups") };
            let fallback = INT4_GROUP_SIZES
                .iter()
                .rev()
                .find(|&&g| cols % g == 0)
                .map(|&group_size| Scheme::Int4 { group_size, symmetric })
                .unwrap_or(Scheme::Int8 { symmetric, granularity: crate::compress::quant::Granularity::PerChannel });
            let mut q = quantize_par(name, vals, shape, fallback)?;
            q.requested = scheme;
            Ok(q)
        }
        other => other,
    }
}

/// Elements converted per step of a streaming cast.
const CHUNK: usize = 1 << 20;

/// Casts one tensor to f16/bf16 chunk by chunk, appending the bytes to `out`.
fn cast_streaming(
    tf: &Tensorfile,
    t: &TensorEntry,
    scheme: Scheme,
    out: &mut impl Write,
) -> Result<ErrorStats, JobError> {
    let data = tf.bytes(t);
    let es = t.dtype.size();
    let mut acc = ErrorAccumulator::new();
    let mut vals: Vec<f32> = Vec::with_capacity(CHUNK);
    let mut bytes = Vec::with_capacity(CHUNK * 2);
    for (ci, chunk) in data.chunks(CHUNK * es).enumerate() {
        vals.clear();
        match t.dtype {
            Dtype::F32 => vals.extend(chunk.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            Dtype::F64 => {
                vals.extend(chunk.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32))
            }
            Dtype::F16 => vals.extend(chunk.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
            _ => vals.extend(chunk.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        }
        let offset = |e: QuantError| match e {
            QuantError::NonFinite { tensor, index, what } => {
                JobError::input(format!("tensor {tensor}: contains {what} at index {}", ci * CHUNK + index))
            }
            other => quant_error(other),
        };
        bytes.clear();
        let back: Vec<f32> = if scheme == Scheme::F16 {
            let h = to_f16(&t.name, &vals).map_err(offset)?;
            h.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
            h.iter().map(|x| x.to_f32()).collect()
        } else {
            let h = to_bf16(&t.name, &vals).map_err(offset)?;
            h.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
            h.iter().map(|x| x.to_f32()).collect()
        };
        acc.update(&vals, &back).map_err(quant_error)?;
        out.write_all(&bytes)?;
    }
    Ok(acc.finish())
}

fn quant_error(e: QuantError) -> JobError {
    JobError::input(e.to_string())
}

fn dtype_of(code: &str) -> Result<Dtype, JobError> {
    Dtype::parse(code).ok_or_else(|| JobError::Internal(format!("kernel produced unknown dtype {code}")))
}

fn run(ctx: &JobContext, p: &QuantizeParams) -> Result<JobOutput, JobError> {
    let started = Instant::now();
    let base = p.scheme.scheme().map_err(JobError::from)?;
    let input = ctx.input_model()?;
    let original = Tensorfile::open_trusted(&input.path)?;
    if crate::artifact::quant_config(&original.header).is_some() {
        // Refused at submission (Kind::check); the file could only change by a restore.
        return Err(JobError::invalid("model_id", "the model is already quantized; quantize its float parent instead"));
    }
    // Quantization-aware fine-tuning first: the trained float weights are then quantized.
    let (finetuned, finetune_report) = match &p.finetune {
        Some(f) => {
            let (file, report) = finetune(ctx, p, base, &original, f)?;
            (Some(file), Some(report))
        }
        None => (None, None),
    };
    let tf = match &finetuned {
        Some(file) => Tensorfile::open_trusted(file.path())?,
        None => original,
    };
    let mut config = QuantizationConfig::new(base);
    let mut plans = Vec::new();
    let spool = ctx.store.temp_file("spool");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(spool.path())?);
    let mut per_tensor = Vec::new();
    let total = tf.header.data_len.max(1) as f64;
    let (mut done, mut q_elems, mut q_bytes) = (0u64, 0u64, 0u64);
    for t in &tf.header.tensors {
        ctx.checkpoint()?;
        match plan_action(p, base, t)? {
            Action::Keep => {
                plans.push(TensorPlan::new(&t.name, t.dtype, t.shape.clone()));
                out.write_all(tf.bytes(t))?;
                if t.dtype.is_float() {
                    config.record_float(&t.name);
                }
                per_tensor.push(
                    json!({"name": t.name, "action": "kept", "dtype": t.dtype, "shape": t.shape, "bytes": t.nbytes()}),
                );
            }
            Action::Quantize(scheme @ (Scheme::F16 | Scheme::Bf16)) => {
                // Float casts stream in chunks: memory stays flat whatever the tensor size.
                let dtype = if scheme == Scheme::F16 { Dtype::F16 } else { Dtype::Bf16 };
                let stats = cast_streaming(&tf, t, scheme, &mut out)?;
                plans.push(TensorPlan::new(&t.name, dtype, t.shape.clone()));
                config.tensors.insert(t.name.clone(), TensorRecord { scheme, requested: None, shape: t.shape.clone() });
                let stored = t.numel() * 2;
                q_elems += t.numel();
                q_bytes += stored;
                per_tensor.push(json!({
                    "name": t.name,
                    "action": "quantized",
                    "scheme_requested": scheme.label(),
                    "scheme": scheme.label(),
                    "fell_back": false,
                    "shape": t.shape,
                    "dtype_before": t.dtype,
                    "bytes_before": t.nbytes(),
                    "bytes_after": stored,
                    "rel_error": stats.rel_error,
                    "sqnr_db": stats.sqnr_db,
                    "max_abs_error": stats.max_abs_error,
                }));
            }
            Action::Quantize(scheme) => {
                let vals = tf.to_f32(t)?;
                let q = quantize_with_fallback(&t.name, &vals, &t.shape, scheme).map_err(quant_error)?;
                let stats = ErrorStats::compute(&vals, &q.dequantize().map_err(quant_error)?).map_err(quant_error)?;
                // Peak memory: the f32 values, their dequantized copy and the quantized data
                // (≈ 2.25× the tensor for int8); release the f32 copies before encoding.
                drop(vals);
                let entries = q.to_entries().map_err(quant_error)?;
                let stored: u64 = entries.iter().map(|e| e.bytes.len() as u64).sum();
                for e in &entries {
                    plans.push(TensorPlan::new(&e.name, dtype_of(e.dtype)?, e.shape.clone()));
                    out.write_all(&e.bytes)?;
                }
                config.record(&q);
                q_elems += t.numel();
                q_bytes += stored;
                per_tensor.push(json!({
                    "name": t.name,
                    "action": "quantized",
                    "scheme_requested": scheme.label(),
                    "scheme": q.scheme().label(),
                    "fell_back": q.fell_back() || q.scheme() != scheme,
                    "shape": t.shape,
                    "dtype_before": t.dtype,
                    "bytes_before": t.nbytes(),
                    "bytes_after": stored,
                    "rel_error": stats.rel_error,
                    "sqnr_db": stats.sqnr_db,
                    "max_abs_error": stats.max_abs_error,
                }));
            }
        }
        done += t.nbytes();
        ctx.progress(0.8 * done as f64 / total, "quantizing");
    }
    out.flush()?;
    drop(out);

    let mut meta: BTreeMap<String, String> = tf
        .header
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != METADATA_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert(METADATA_KEY.into(), config.to_json());
    meta.insert("modelpress.source_model".into(), input.id.clone());
    meta.insert("modelpress.job_id".into(), ctx.id.clone());
    meta.insert("modelpress.scheme".into(), base.label());
    let temp = ctx.store.temp_file("safetensors");
    let mut w = TensorWriter::create(temp.path(), plans, &meta)?;
    let mut spool_reader = std::fs::File::open(spool.path())?;
    std::io::copy(&mut spool_reader, &mut WriterAdapter(&mut w))?;
    w.finish()?;
    drop(spool);
    ctx.progress(0.85, "hashing");
    let bytes_before = std::fs::metadata(&input.path)?.len();
    let model = OutputModel::from_file(temp, format!("{}-{}", input.name, base.label()), input.spec.clone())?;
    let bytes_after = model.size_bytes;

    let accuracy = match &p.eval_dataset_id {
        Some(ds) => {
            ctx.progress(0.9, "measuring accuracy of the stored artifact");
            Some(measure_accuracy(ctx, p, ds, model.file.path())?)
        }
        None => None,
    };
    let report = json!({
        "kind": "quantize",
        "scheme": base.label(),
        "bytes_before": bytes_before,
        "bytes_after": bytes_after,
        "size_ratio": bytes_after as f64 / bytes_before.max(1) as f64,
        "quantized_parameters": q_elems,
        "bits_per_weight": if q_elems > 0 { Some(q_bytes as f64 * 8.0 / q_elems as f64) } else { None },
        "tensors_quantized": per_tensor.iter().filter(|t| t["action"] == "quantized").count(),
        "tensors_kept": per_tensor.iter().filter(|t| t["action"] == "kept").count(),
        "fallbacks": per_tensor.iter().filter(|t| t["fell_back"] == true).map(|t| t["name"].clone()).collect::<Vec<_>>(),
        "tensors": per_tensor,
        "accuracy": accuracy,
        "finetune": finetune_report,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    Ok(JobOutput { report, model: Some(model) })
}

/// Runs the float model and the stored artifact on the evaluation split.
fn measure_accuracy(
    ctx: &JobContext,
    p: &QuantizeParams,
    ds_id: &str,
    artifact: &std::path::Path,
) -> Result<Value, JobError> {
    let input = ctx.input_model()?;
    let (spec, float_net) = super::engine::load_network(input)?;
    let qparams = crate::artifact::load_params(artifact, crate::artifact::LoadMode::Native)
        .map_err(|e| JobError::Internal(format!("re-reading the artifact: {e}")))?;
    let qnet = crate::nn::Network::new(&spec, qparams)?;
    let ds =
        ctx.datasets.get(ds_id).ok_or_else(|| JobError::invalid("params.eval_dataset_id", "dataset not available"))?;
    let (split, data) = super::engine::load_split(ds, p.eval_split.as_deref(), "test")?;
    let y = data
        .y
        .clone()
        .ok_or_else(|| JobError::invalid("params.eval_split", format!("split '{split}' has no labels")))?;
    let f = crate::nn::evaluate(&float_net, &data.x, &y, 256)?;
    let q = crate::nn::evaluate(&qnet, &data.x, &y, 256)?;
    let agree = crate::nn::compare(&float_net, &qnet, &data.x, 256)?;
    Ok(json!({
        "dataset_id": ds_id,
        "split": split,
        "samples": q.samples,
        "float": {"accuracy": f.accuracy, "correct": f.correct, "mean_loss": f.mean_loss},
        "quantized": {"accuracy": q.accuracy, "correct": q.correct, "mean_loss": q.mean_loss},
        "accuracy_delta": q.accuracy - f.accuracy,
        "top1_agreement": agree.top1_agreement,
        "mean_kl": agree.mean_kl,
    }))
}

/// `io::Write` over the tensor writer, so the spool can be copied with `io::copy`.
struct WriterAdapter<'a>(&'a mut TensorWriter);

impl Write for WriterAdapter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Keep the OS error (a full disk must stay recognisable as ENOSPC).
        self.0.write(buf).map_err(|e| match e {
            crate::tensorfile::TensorfileError::Io(io) => io,
            e => std::io::Error::other(e.to_string()),
        })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fake quantization with a straight-through estimator: the forward pass sees `q(w)`, the
/// gradient flows to `w` unchanged (`w + (q(w) − w).detach()`).
struct QatHooks<'a> {
    inner: super::engine::JobHooks<'a>,
    schemes: std::collections::HashMap<String, Scheme>,
}

fn fake_quant(name: &str, w: &candle_core::Tensor, scheme: Scheme) -> Result<candle_core::Tensor, crate::nn::NnError> {
    let vals: Vec<f32> = w.flatten_all()?.to_vec1()?;
    let q = quantize_with_fallback(name, &vals, w.dims(), scheme)
        .and_then(|q| q.dequantize())
        .map_err(|e| crate::nn::NnError::Train(e.to_string()))?;
    let wq = candle_core::Tensor::from_vec(q, w.dims(), w.device())?;
    Ok(w.add(&wq.sub(w)?.detach())?)
}

impl crate::nn::TrainHooks for QatHooks<'_> {
    fn transform_weight(&self, name: &str, w: &candle_core::Tensor) -> Result<candle_core::Tensor, crate::nn::NnError> {
        match self.schemes.get(name) {
            Some(s) => fake_quant(name, w, *s),
            None => Ok(w.clone()),
        }
    }
    fn on_epoch(&mut self, s: &crate::nn::EpochStats) {
        self.inner.on_epoch(s)
    }
    fn should_stop(&self) -> bool {
        self.inner.should_stop()
    }
}

/// Trains the model with fake-quantized weights; returns the trained float weights as a temp
/// file and the before/after accuracy of the fake-quantized model on the fine-tuning data's
/// test split (or the training split when there is none).
fn finetune(
    ctx: &JobContext,
    p: &QuantizeParams,
    base: Scheme,
    tf: &Tensorfile,
    f: &FinetuneSettings,
) -> Result<(crate::storage::TempFile, Value), JobError> {
    let input = ctx.input_model()?;
    let spec = super::engine::spec_of(input)?;
    let ds = ctx
        .datasets
        .get(&f.dataset_id)
        .ok_or_else(|| JobError::invalid("params.finetune.dataset_id", "not available"))?;
    let (split_name, split) = super::engine::load_split(ds, f.split.as_deref(), "train")?;
    let test = super::engine::load_test_split(ds)?.unwrap_or_else(|| split.clone());
    let y = test
        .y
        .clone()
        .ok_or_else(|| JobError::invalid("params.finetune.dataset_id", "the test split has no labels"))?;
    let mut schemes = std::collections::HashMap::new();
    for t in &tf.header.tensors {
        if let Action::Quantize(s) = plan_action(p, base, t)? {
            schemes.insert(t.name.clone(), s);
        }
    }
    let float =
        super::engine::float_tensors(&super::engine::load_params_mode(input, crate::artifact::LoadMode::Dequantized)?);
    let simulate = |params: &std::collections::HashMap<String, candle_core::Tensor>| -> Result<f64, JobError> {
        let mut q = params.clone();
        for (n, s) in &schemes {
            if let Some(w) = params.get(n) {
                q.insert(n.clone(), fake_quant(n, w, *s)?);
            }
        }
        let net = crate::nn::Network::from_tensors(&spec, &q)?;
        Ok(crate::nn::evaluate(&net, &test.x, &y, 256)?.accuracy)
    };
    let before = simulate(&float)?;
    let cfg = f.settings.to_config();
    let mut hooks = QatHooks {
        inner: super::engine::JobHooks::new(ctx, cfg.epochs, (0.0, 0.7), "fine-tuning"),
        schemes: schemes.clone(),
    };
    let out = crate::nn::train(&spec, &split, &cfg, crate::nn::Init::Params(float), &mut hooks)?;
    if out.cancelled {
        return Err(super::engine::stop_reason(ctx));
    }
    let after = simulate(&out.params)?;
    let file = super::engine::write_tensors(ctx, &out.params, tf.header.metadata.clone())?;
    let report = json!({
        "dataset_id": f.dataset_id,
        "split": split_name,
        "epochs": cfg.epochs,
        "accuracy_before": before,
        "accuracy_after": after,
        "curve": hooks.inner.curve,
    });
    Ok((file, report))
}
