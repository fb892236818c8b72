//! Glue between job workers and the execution engine (`nn`): loading a stored model as a
//! runnable network, loading dataset splits, writing trained weights, and the training hooks
//! that report progress and honour cancellation. Runs on worker threads.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;
use serde_json::json;

use super::{InputDataset, InputModel, JobContext, JobError};
use crate::nn::{EpochStats, ModelSpec, Network, NnError, Param, Split, TrainHooks};
use crate::storage::TempFile;
use crate::tensorfile::{Dtype, TensorPlan, TensorWriter};

impl From<NnError> for JobError {
    fn from(e: NnError) -> Self {
        match e {
            NnError::Candle(e) => JobError::Internal(format!("candle: {e}")),
            other => JobError::input(other.to_string()),
        }
    }
}

impl From<candle_core::Error> for JobError {
    fn from(e: candle_core::Error) -> Self {
        JobError::Internal(format!("candle: {e}"))
    }
}

/// The model's architecture spec, or a clear error.
pub fn spec_of(model: &InputModel) -> Result<ModelSpec, JobError> {
    let text = model.spec.as_deref().ok_or_else(|| {
        JobError::invalid(
            "model_id",
            format!("model '{}' has no architecture spec; PUT /v1/models/{}/spec first", model.id, model.id),
        )
    })?;
    Ok(ModelSpec::from_json(text.as_bytes()).map_err(NnError::from)?)
}

/// Loads every tensor of a stored model as engine parameters (quantized artifacts included,
/// see [`crate::artifact`]).
pub fn load_params(model: &InputModel) -> Result<HashMap<String, Param>, JobError> {
    load_params_mode(model, crate::artifact::LoadMode::Native)
}

pub fn load_params_mode(
    model: &InputModel,
    mode: crate::artifact::LoadMode,
) -> Result<HashMap<String, Param>, JobError> {
    crate::artifact::load_params(&model.path, mode).map_err(|e| match e {
        crate::artifact::ArtifactError::Candle(e) => JobError::Internal(format!("candle: {e}")),
        other => JobError::input(other.to_string()),
    })
}

/// Float tensors of the params (for training from stored weights).
pub fn float_tensors(params: &HashMap<String, Param>) -> HashMap<String, Tensor> {
    params
        .iter()
        .filter_map(|(k, p)| match p {
            Param::Float(t) => Some((k.clone(), t.clone())),
            Param::Quantized(_) | Param::Int8(_) => None,
        })
        .collect()
}

/// Builds the runnable network of a stored model.
pub fn load_network(model: &InputModel) -> Result<(ModelSpec, Network), JobError> {
    let spec = spec_of(model)?;
    let params = load_params(model)?;
    let net = Network::new(&spec, params)?;
    Ok((spec, net))
}

/// The split to use: the requested one, else `preferred` if present, else `all`.
pub fn load_split(ds: &InputDataset, split: Option<&str>, preferred: &str) -> Result<(String, Split), JobError> {
    let data = crate::nn::Dataset::load(&ds.path)?;
    let pick = |name: &str| -> Option<Split> {
        match name {
            "train" => data.train.clone(),
            "test" => data.test.clone(),
            "all" => data.all.clone(),
            _ => None,
        }
    };
    let name = match split {
        Some(s) => s.to_string(),
        None if pick(preferred).is_some() => preferred.to_string(),
        None => "all".to_string(),
    };
    let s = pick(&name)
        .ok_or_else(|| JobError::invalid("params.split", format!("dataset '{}' has no '{name}' split", ds.id)))?;
    Ok((name, s))
}

/// Optionally the evaluation split (`test` when present).
pub fn load_test_split(ds: &InputDataset) -> Result<Option<Split>, JobError> {
    Ok(crate::nn::Dataset::load(&ds.path)?.test)
}

/// Writes tensors (f32) as a new safetensors file under a temp name, names sorted.
pub fn write_tensors(
    ctx: &JobContext,
    tensors: &HashMap<String, Tensor>,
    meta: BTreeMap<String, String>,
) -> Result<TempFile, JobError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let plans = names.iter().map(|n| TensorPlan::new(n.as_str(), Dtype::F32, tensors[*n].dims().to_vec())).collect();
    let temp = ctx.store.temp_file("safetensors");
    let mut w = TensorWriter::create(temp.path(), plans, &meta)?;
    for n in names {
        let v: Vec<f32> = tensors[n].to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        w.write_f32_as(&v)?;
    }
    w.finish()?;
    Ok(temp)
}

/// Training hooks that report each epoch as progress and an `epoch` SSE event, and stop when
/// the job is cancelled or the service shuts down.
pub struct JobHooks<'a> {
    pub ctx: &'a JobContext,
    pub epochs: usize,
    /// Progress range this training covers (e.g. 0.1..0.9 when other phases surround it).
    pub range: (f64, f64),
    pub stage: String,
    pub curve: Vec<EpochStats>,
}

impl<'a> JobHooks<'a> {
    pub fn new(ctx: &'a JobContext, epochs: usize, range: (f64, f64), stage: &str) -> Self {
        JobHooks { ctx, epochs, range, stage: stage.to_string(), curve: Vec::new() }
    }
}

impl TrainHooks for JobHooks<'_> {
    fn on_epoch(&mut self, s: &EpochStats) {
        let frac = s.epoch as f64 / self.epochs.max(1) as f64;
        let p = self.range.0 + (self.range.1 - self.range.0) * frac;
        let elapsed: f64 = self.curve.iter().map(|c| c.elapsed_s).sum::<f64>() + s.elapsed_s;
        let remaining = elapsed / s.epoch.max(1) as f64 * self.epochs.saturating_sub(s.epoch) as f64;
        self.ctx.progress(p, &format!("{}: epoch {}/{}", self.stage, s.epoch, self.epochs));
        let mut ev = serde_json::to_value(s).unwrap_or_default();
        if let Some(o) = ev.as_object_mut() {
            o.insert("phase".into(), json!(self.stage));
            o.insert("epochs".into(), json!(self.epochs));
            o.insert("elapsed_total_s".into(), json!(elapsed));
            o.insert("eta_s".into(), json!(remaining));
        }
        self.ctx.event("epoch", ev);
        self.curve.push(s.clone());
    }

    fn should_stop(&self) -> bool {
        self.ctx.is_stopping()
    }
}

/// After a training run that stopped early because of cancellation/shutdown.
pub fn stop_reason(ctx: &JobContext) -> JobError {
    match ctx.checkpoint() {
        Err(e) => e,
        Ok(()) => JobError::Cancelled,
    }
}
