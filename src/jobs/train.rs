//! `train` jobs (run on a worker thread): trains the model's weights (or a fresh init) on a
//! dataset and stores the result as a new model.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::common::{check_split, dataset, split_keys, typed, DataNeed, Needs, TrainSettings};
use super::engine::{float_tensors, load_split, load_test_split, spec_of, write_tensors, JobHooks};
use super::evaluate::labels;
use super::kind::Kind;
use super::{JobContext, JobError, JobOutput, OutputModel};
use crate::error::DomainError;
use crate::nn::{evaluate, Init, Network};

/// Where training starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrainInit {
    /// The uploaded weights (default).
    Weights,
    /// A fresh initialisation.
    Random,
}

/// `kind: "train"`: a dataset, where to start, and the training settings (flattened).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TrainParams {
    pub dataset_id: String,
    /// Split to train on: `train` (default when present) or `all`.
    #[serde(default)]
    pub split: Option<String>,
    /// `weights` (start from the uploaded weights, default) or `random` (fresh init).
    #[serde(default = "d_init")]
    pub init: TrainInit,
    #[serde(flatten)]
    pub settings: TrainSettings,
}

fn d_init() -> TrainInit {
    TrainInit::Weights
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainHead {
    dataset_id: String,
    #[serde(default)]
    split: Option<String>,
    #[serde(default = "d_init")]
    init: TrainInit,
}

impl Kind for TrainParams {
    fn parse(params: &Value) -> Result<Self, DomainError> {
        let (head, rest) = split_keys(params, &["dataset_id", "split", "init"]);
        let head = Value::Object(head);
        super::common::check_choice(&head, "init", &["weights", "random"], "params.init")?;
        let head: TrainHead = typed("params", head)?;
        check_split("params.split", head.split.as_deref())?;
        let settings = TrainSettings::parse("params", rest)?;
        Ok(TrainParams { dataset_id: head.dataset_id, split: head.split, init: head.init, settings })
    }

    fn needs(&self) -> Needs {
        Needs {
            spec: true,
            data: vec![DataNeed::new(&self.dataset_id, "params.dataset_id", self.split.as_deref(), true)],
            ..Needs::default()
        }
    }

    fn run(&self, ctx: &JobContext) -> Result<JobOutput, JobError> {
        run(ctx, self)
    }
}

fn run(ctx: &JobContext, p: &TrainParams) -> Result<JobOutput, JobError> {
    let started = Instant::now();
    let model = ctx.input_model()?;
    let spec = spec_of(model)?;
    let ds = dataset(ctx, &p.dataset_id, "params.dataset_id")?;
    let (split_name, split) = load_split(ds, p.split.as_deref(), "train")?;
    labels(&split, &split_name)?;
    let init = if p.init == TrainInit::Random {
        Init::Random
    } else {
        Init::Params(float_tensors(&super::engine::load_params_mode(model, crate::artifact::LoadMode::Dequantized)?))
    };
    let cfg = p.settings.to_config();
    let mut hooks = JobHooks::new(ctx, cfg.epochs, (0.02, 0.95), "training");
    ctx.progress(0.02, "training");
    let out = crate::nn::train(&spec, &split, &cfg, init, &mut hooks)?;
    if out.cancelled {
        return Err(super::engine::stop_reason(ctx));
    }
    let net = Network::from_tensors(&spec, &out.params)?;
    let test = match load_test_split(ds)? {
        Some(t) if split_name != "test" => match &t.y {
            Some(y) => Some(evaluate(&net, &t.x, y, 256)?),
            None => None,
        },
        _ => None,
    };
    let mut meta = BTreeMap::new();
    meta.insert("modelpress.source_model".into(), model.id.clone());
    meta.insert("modelpress.job_id".into(), ctx.id.clone());
    let temp = write_tensors(ctx, &out.params, meta)?;
    let out_model = OutputModel::from_file(temp, format!("{}-trained", model.name), Some(spec.to_json()))?;
    let samples_per_sec = {
        let c = &out.curve;
        c.iter().map(|e| e.samples_per_sec).sum::<f64>() / c.len().max(1) as f64
    };
    let report = json!({
        "kind": "train",
        "dataset_id": p.dataset_id,
        "split": split_name,
        "init": p.init,
        "config": cfg,
        "curve": out.curve,
        "best_epoch": out.best_epoch,
        "stopped_early": out.stopped_early,
        "accuracy": test.as_ref().map(|t| t.accuracy),
        "test": test,
        "train_samples_per_sec": samples_per_sec,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    Ok(JobOutput { report, model: Some(out_model) })
}
