//! `evaluate` and `train` jobs (run on a worker thread).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;

use super::engine::{float_tensors, load_network, load_split, load_test_split, spec_of, write_tensors, JobHooks};
use super::params::{EvaluateParams, TrainParams};
use super::{JobContext, JobError, JobOutput, OutputModel};
use crate::nn::{evaluate, Init, Network};

fn dataset<'a>(ctx: &'a JobContext, id: &str) -> Result<&'a super::InputDataset, JobError> {
    ctx.datasets
        .get(id)
        .ok_or_else(|| JobError::invalid("params.dataset_id", format!("dataset '{id}' is not available")))
}

fn labels(split: &crate::nn::Split, name: &str) -> Result<Vec<u32>, JobError> {
    split.y.clone().ok_or_else(|| JobError::invalid("params.split", format!("split '{name}' has no labels")))
}

pub fn run_evaluate(ctx: &JobContext, p: &EvaluateParams) -> Result<JobOutput, JobError> {
    let model = ctx.input_model()?;
    ctx.progress(0.05, "loading model");
    let (_, net) = load_network(model)?;
    let ds = dataset(ctx, &p.dataset_id)?;
    let (split_name, split) = load_split(ds, p.split.as_deref(), "test")?;
    let y = labels(&split, &split_name)?;
    ctx.checkpoint()?;
    ctx.progress(0.2, "evaluating");
    let r = evaluate(&net, &split.x, &y, p.batch_size)?;
    let mut report = serde_json::to_value(&r).map_err(|e| JobError::Internal(e.to_string()))?;
    if let Some(o) = report.as_object_mut() {
        o.insert("kind".into(), json!("evaluate"));
        o.insert("dataset_id".into(), json!(p.dataset_id));
        o.insert("split".into(), json!(split_name));
    }
    Ok(JobOutput { report, model: None })
}

pub fn run_train(ctx: &JobContext, p: &TrainParams) -> Result<JobOutput, JobError> {
    let started = Instant::now();
    let model = ctx.input_model()?;
    let spec = spec_of(model)?;
    let ds = dataset(ctx, &p.dataset_id)?;
    let (split_name, split) = load_split(ds, p.split.as_deref(), "train")?;
    labels(&split, &split_name)?;
    let init = if p.init == "random" {
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
