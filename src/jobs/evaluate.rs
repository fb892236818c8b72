//! `evaluate` jobs (run on a worker thread): accuracy, loss, confusion matrix and speed of a
//! model on a labelled split.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::common::{check_batch, check_split, dataset, typed, DataNeed, Needs};
use super::engine::{load_network, load_split};
use super::kind::Kind;
use super::{JobContext, JobError, JobOutput};
use crate::error::DomainError;
use crate::nn::evaluate;

fn default_eval_batch() -> usize {
    256
}

/// `kind: "evaluate"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The labelled dataset (`eval_dataset_id` is accepted as an alias).
    #[serde(alias = "eval_dataset_id")]
    pub dataset_id: String,
    /// `test` (default when the dataset has it), `train` or `all`.
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default = "default_eval_batch")]
    #[schema(default = 256)]
    pub batch_size: usize,
}

impl Kind for EvaluateParams {
    fn parse(params: &Value) -> Result<Self, DomainError> {
        let p: EvaluateParams = typed("params", params.clone())?;
        check_batch("params.batch_size", p.batch_size)?;
        check_split("params.split", p.split.as_deref())?;
        Ok(p)
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

/// The labels of a split, or a refusal naming the split.
pub fn labels(split: &crate::nn::Split, name: &str) -> Result<Vec<u32>, JobError> {
    split.y.clone().ok_or_else(|| JobError::invalid("params.split", format!("split '{name}' has no labels")))
}

fn run(ctx: &JobContext, p: &EvaluateParams) -> Result<JobOutput, JobError> {
    let model = ctx.input_model()?;
    ctx.progress(0.05, "loading model");
    let (_, net) = load_network(model)?;
    let ds = dataset(ctx, &p.dataset_id, "params.dataset_id")?;
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
