//! `sensitivity` job (runs on a worker thread): quantizes one layer at a time with the requested
//! scheme, runs the model on a labelled split, and ranks layers by how much that one layer costs
//! (accuracy drop, then mean KL against the float model) — the table users ask for when a
//! low-bit model loses accuracy. Suggests `overrides` that keep the worst layers at higher
//! precision.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::common::{check_split, dataset, split_keys, typed, DataNeed, Needs, SchemeRequest};
use super::engine::{load_network, load_params, load_split, spec_of};
use super::kind::Kind;
use super::{JobContext, JobError, JobOutput};
use crate::compress::quant::{quantize_par, QuantData, Scheme};
use crate::error::DomainError;
use crate::nn::{compare, evaluate, Network, Param};

/// `kind: "sensitivity"`: a scheme as for `quantize`, and the labelled data to measure on.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SensitivityParams {
    #[serde(flatten)]
    pub scheme: SchemeRequest,
    /// The labelled dataset (`dataset_id` is accepted as an alias).
    pub eval_dataset_id: String,
    /// Split to measure on (default `test`; `split` is accepted as an alias).
    #[serde(default)]
    pub eval_split: Option<String>,
    /// How many of the worst layers to keep at higher precision in the suggestion (default:
    /// every layer costing more than 0.5 accuracy points, at most a quarter of the layers).
    #[serde(default)]
    pub suggest: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SensitivityRest {
    #[serde(alias = "dataset_id")]
    eval_dataset_id: String,
    #[serde(default, alias = "split")]
    eval_split: Option<String>,
    #[serde(default)]
    suggest: Option<usize>,
}

impl Kind for SensitivityParams {
    fn parse(params: &Value) -> Result<Self, DomainError> {
        let scheme = SchemeRequest::parse(params)?;
        let (_, rest) = split_keys(params, &SchemeRequest::KEYS);
        let r: SensitivityRest = typed("params", rest)?;
        check_split("params.eval_split", r.eval_split.as_deref())?;
        Ok(SensitivityParams {
            scheme,
            eval_dataset_id: r.eval_dataset_id,
            eval_split: r.eval_split,
            suggest: r.suggest,
        })
    }

    fn needs(&self) -> Needs {
        Needs {
            spec: true,
            data: vec![DataNeed::new(
                &self.eval_dataset_id,
                "params.eval_dataset_id",
                self.eval_split.as_deref(),
                true,
            )],
            ..Needs::default()
        }
    }

    fn run(&self, ctx: &JobContext) -> Result<JobOutput, JobError> {
        run(ctx, self)
    }
}

/// A higher-precision scheme to suggest for a sensitive layer.
fn safer(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Int8 { .. } | Scheme::Ggml(crate::compress::quant::GgmlKind::Q8_0) => "f16",
        _ => "int8",
    }
}

fn run(ctx: &JobContext, p: &SensitivityParams) -> Result<JobOutput, JobError> {
    let started = std::time::Instant::now();
    let scheme = p.scheme.scheme()?;
    let model = ctx.input_model()?;
    let spec = spec_of(model)?;
    let (_, float_net) = load_network(model)?;
    let ds = dataset(ctx, &p.eval_dataset_id, "params.eval_dataset_id")?;
    let (split, data) = load_split(ds, p.eval_split.as_deref(), "test")?;
    let y =
        data.y.clone().ok_or_else(|| JobError::invalid("params.split", format!("split '{split}' has no labels")))?;
    let base = evaluate(&float_net, &data.x, &y, 256)?;
    let params = load_params(model)?;
    // Layers worth quantizing: the spec's weight matrices (2-D / 4-D).
    let layers: Vec<(String, Vec<usize>)> = spec
        .params()
        .into_iter()
        .filter(|i| i.shape.len() >= 2 && matches!(params.get(&i.name), Some(Param::Float(_))))
        .map(|i| (i.name, i.shape))
        .collect();
    let mut rows = Vec::new();
    for (i, (name, shape)) in layers.iter().enumerate() {
        ctx.checkpoint()?;
        let Some(Param::Float(t)) = params.get(name) else { continue };
        let vals: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let q = quantize_par(name, &vals, shape, scheme).map_err(|e| JobError::input(e.to_string()))?;
        let used = q.scheme();
        // Run the layer as it would be stored and served.
        let param = match q.data {
            QuantData::Ggml { .. } => {
                Param::Quantized(std::sync::Arc::new(q.to_qtensor().map_err(|e| JobError::input(e.to_string()))?))
            }
            _ => Param::Float(candle_core::Tensor::from_vec(
                q.dequantize().map_err(|e| JobError::input(e.to_string()))?,
                shape.clone(),
                &candle_core::Device::Cpu,
            )?),
        };
        let mut one = params.clone();
        one.insert(name.clone(), param);
        let net = Network::new(&spec, one)?;
        let r = evaluate(&net, &data.x, &y, 256)?;
        let agree = compare(&float_net, &net, &data.x, 256)?;
        rows.push(json!({
            "tensor": name,
            "scheme": used.label(),
            "accuracy": r.accuracy,
            "accuracy_drop": base.accuracy - r.accuracy,
            "mean_kl": agree.mean_kl,
            "top1_agreement": agree.top1_agreement,
        }));
        ctx.progress((i + 1) as f64 / layers.len().max(1) as f64 * 0.95, &format!("layer {}/{}", i + 1, layers.len()));
    }
    rows.sort_by(|a, b| {
        let k =
            |r: &serde_json::Value| (r["accuracy_drop"].as_f64().unwrap_or(0.0), r["mean_kl"].as_f64().unwrap_or(0.0));
        k(b).partial_cmp(&k(a)).unwrap_or(std::cmp::Ordering::Equal)
    });
    let limit = p.suggest.unwrap_or_else(|| {
        let costly = rows.iter().filter(|r| r["accuracy_drop"].as_f64().unwrap_or(0.0) > 0.005).count();
        costly.min(rows.len().div_ceil(4))
    });
    let overrides: serde_json::Map<String, serde_json::Value> = rows
        .iter()
        .take(limit)
        .map(|r| (r["tensor"].as_str().unwrap_or_default().to_string(), json!(safer(scheme))))
        .collect();
    let report = json!({
        "kind": "sensitivity",
        "scheme": scheme.label(),
        "dataset_id": p.eval_dataset_id,
        "split": split,
        "float_accuracy": base.accuracy,
        "layers": rows,
        "suggested_overrides": overrides,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    Ok(JobOutput { report, model: None })
}
