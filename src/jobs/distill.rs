//! `distill` jobs: train a small student to imitate the job's model (the teacher) with Hinton's
//! loss ([`crate::nn::distill`]), resumably. Runs on a worker thread.
//!
//! Phases: the teacher's softened outputs are computed once for the training split (cached in
//! memory when they fit [`TEACHER_CACHE_BUDGET_BYTES`], otherwise the teacher runs on each
//! batch); the student trains (`distill` phase); with `baseline: true` the same student trains
//! again on plain cross-entropy with the same seed, initialisation and budget (`baseline`
//! phase); then teacher, student and baseline are evaluated on the dataset's test split.
//!
//! Checkpoints: after every epoch the phase's full training state (weights, optimizer moments,
//! best-so-far snapshot, curve, loss parts) is written to `checkpoints/<job>/<phase>.safetensors`
//! with the small JSON state in the file's `__metadata__`, so one atomic rename publishes both
//! (a separate JSON file could disagree with the tensors after a crash between two renames).
//! A job run again after a restart resumes each phase from its checkpoint; since every random
//! choice of the training loop derives from `(seed, epoch)`, the resumed run retraces the
//! uninterrupted one exactly. An unreadable or mismatched checkpoint is ignored (the phase
//! restarts) rather than failing the job. The directory is removed when the job ends in any way
//! except a shutdown, which requeues the job.
//!
//! Cancellation is checked between batches. With `keep_partial: true` a cancelled job still
//! succeeds with the best student so far (at least one finished epoch is needed) and its report
//! says `"cancelled": true`; otherwise it ends `cancelled` without output.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::common::{measure_latency, split_keys, DataNeed, Needs, Stored, TrainSettings};
use super::engine::{
    float_tensors, load_network, load_params_mode, load_split, load_test_split, spec_of, write_tensors,
};
use super::kind::Kind;
use super::{InputModel, JobContext, JobError, JobOutput, OutputModel};
use crate::error::{DomainError, ErrorCode};
use crate::nn::distill::{
    derive_student, trainable_parameters, Distiller, KdConfig, LossParts, StudentTemplate, TeacherTargets,
};
use crate::nn::{
    evaluate, Batch, EpochStats, Init, ModelSpec, Network, NnError, Split, TrainConfig, TrainHooks, TrainState,
};
use crate::tensorfile::{Dtype, TensorPlan, TensorWriter, Tensorfile};

/// Teacher outputs are cached for the whole training split when they take at most this much
/// memory (two f32 values per sample and class: 256 MiB holds 3.3M samples × 10 classes or
/// 33k samples × 1000 classes); beyond it the teacher runs on every batch instead.
pub const TEACHER_CACHE_BUDGET_BYTES: u64 = 256 << 20;

/// Default softening temperature.
pub const DEFAULT_TEMPERATURE: f64 = 4.0;
/// Default weight of the soft term.
pub const DEFAULT_ALPHA: f64 = 0.9;
/// Largest accepted temperature.
pub const MAX_TEMPERATURE: f64 = 100.0;

/// Where the student comes from: exactly one of `model_id`, `spec` or `from_teacher`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StudentSource {
    /// An uploaded model with a spec; `init` is `weights` (its weights, default) or `random`.
    Model { model_id: String, init: String },
    /// An inline spec (validated at submission).
    Spec { spec: Box<ModelSpec> },
    /// A template derived from the teacher's spec.
    Template { from_teacher: StudentTemplate },
}

/// Contract shapes of [`StudentSource`] (named, so generated clients get one class each; the
/// values are parsed by `parse_student`, never through these types).
mod student_schema {
    #![allow(dead_code)]
    use serde_json::Value;
    use std::collections::HashMap;

    /// An uploaded model with a spec.
    #[derive(utoipa::ToSchema)]
    pub struct StudentFromModel {
        pub model_id: String,
        /// `weights` (its weights, default) or `random`.
        #[schema(required = false)]
        pub init: String,
    }

    /// An inline architecture spec (docs/spec.md).
    #[derive(utoipa::ToSchema)]
    pub struct StudentFromSpec {
        #[schema(value_type = HashMap<String, Object>)]
        pub spec: HashMap<String, Value>,
    }

    /// A template derived from the teacher's spec, e.g. `{"width": 0.25}`.
    #[derive(utoipa::ToSchema)]
    pub struct StudentFromTeacher {
        #[schema(value_type = HashMap<String, Object>)]
        pub from_teacher: HashMap<String, Value>,
    }
}

impl utoipa::PartialSchema for StudentSource {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{schema::OneOfBuilder, Ref};
        OneOfBuilder::new()
            .description(Some("Where the student comes from: exactly one of `model_id`, `spec` or `from_teacher`."))
            .item(Ref::from_schema_name("StudentFromModel"))
            .item(Ref::from_schema_name("StudentFromSpec"))
            .item(Ref::from_schema_name("StudentFromTeacher"))
            .into()
    }
}

impl utoipa::ToSchema for StudentSource {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        use student_schema::*;
        use utoipa::PartialSchema;
        schemas.push((StudentFromModel::name().into(), StudentFromModel::schema()));
        schemas.push((StudentFromSpec::name().into(), StudentFromSpec::schema()));
        schemas.push((StudentFromTeacher::name().into(), StudentFromTeacher::schema()));
    }
}

/// `kind: "distill"`: a teacher (`model_id`), a student, the softening, and the training
/// settings (flattened).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DistillParams {
    pub dataset_id: String,
    /// Training split: `train` (default when present) or `all`.
    #[schema(required = false)]
    pub split: Option<String>,
    pub student: StudentSource,
    /// Softening temperature, (0, 100] (default 4).
    #[schema(required = false, default = 4.0)]
    pub temperature: f64,
    /// Weight of the soft term, [0, 1] (default 0.9).
    #[schema(required = false, default = 0.9)]
    pub alpha: f64,
    /// Keep the partial student when cancelled.
    #[schema(required = false)]
    pub keep_partial: bool,
    /// Also train the student alone on the labels, for comparison.
    #[schema(required = false)]
    pub baseline: bool,
    #[serde(flatten)]
    pub settings: TrainSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    dataset_id: String,
    #[serde(default)]
    split: Option<String>,
    student: Value,
    #[serde(default = "d_temperature")]
    temperature: f64,
    #[serde(default = "d_alpha")]
    alpha: f64,
    #[serde(default)]
    keep_partial: bool,
    #[serde(default)]
    baseline: bool,
}

fn d_temperature() -> f64 {
    DEFAULT_TEMPERATURE
}
fn d_alpha() -> f64 {
    DEFAULT_ALPHA
}

const HEAD_KEYS: [&str; 7] = ["dataset_id", "split", "student", "temperature", "alpha", "keep_partial", "baseline"];

fn typed<T: serde::de::DeserializeOwned>(field: &str, v: Value) -> Result<T, DomainError> {
    serde_json::from_value(v).map_err(|e| DomainError::validation(field, e.to_string()))
}

fn parse_student(v: &Value) -> Result<StudentSource, DomainError> {
    const F: &str = "params.student";
    let obj = v.as_object().ok_or_else(|| {
        DomainError::validation(F, "must be an object: {\"model_id\"}, {\"spec\"} or {\"from_teacher\"}")
    })?;
    let kinds: Vec<&str> = ["model_id", "spec", "from_teacher"].into_iter().filter(|k| obj.contains_key(*k)).collect();
    if kinds.len() != 1 {
        return Err(DomainError::validation(
            F,
            "give exactly one of model_id (an uploaded model), spec (an inline spec) or from_teacher (a template)",
        ));
    }
    let allowed: &[&str] = match kinds[0] {
        "model_id" => &["model_id", "init"],
        other => &[other][..],
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(DomainError::validation(format!("{F}.{k}"), format!("unknown field next to {}", kinds[0])));
    }
    match kinds[0] {
        "model_id" => {
            let id = obj["model_id"]
                .as_str()
                .ok_or_else(|| DomainError::validation(format!("{F}.model_id"), "must be a string"))?;
            let init = match obj.get("init") {
                None => "weights".to_string(),
                Some(Value::String(s)) if s == "weights" || s == "random" => s.clone(),
                Some(_) => return Err(DomainError::validation(format!("{F}.init"), "weights or random")),
            };
            Ok(StudentSource::Model { model_id: id.to_string(), init })
        }
        "spec" => {
            let text = serde_json::to_vec(&obj["spec"]).map_err(DomainError::internal)?;
            let spec = ModelSpec::from_json(&text).map_err(|e| {
                let mut err = DomainError::new(ErrorCode::InvalidSpec, format!("params.student.spec: {e}"));
                err.field = Some(format!("{F}.spec"));
                err
            })?;
            Ok(StudentSource::Spec { spec: Box::new(spec) })
        }
        _ => {
            let t: StudentTemplate = typed(&format!("{F}.from_teacher"), obj["from_teacher"].clone())?;
            t.check().map_err(|e| DomainError::validation(format!("{F}.from_teacher"), e.to_string()))?;
            Ok(StudentSource::Template { from_teacher: t })
        }
    }
}

impl DistillParams {
    fn parse_params(params: &Value) -> Result<DistillParams, DomainError> {
        let (head, rest) = split_keys(params, &HEAD_KEYS);
        if !head.contains_key("student") {
            return Err(DomainError::validation(
                "params.student",
                "required: {\"model_id\": ...}, {\"spec\": {...}} or {\"from_teacher\": {\"width\": 0.25}}",
            ));
        }
        let head: Head = typed("params", Value::Object(head))?;
        let settings = TrainSettings::parse("params", rest)?;
        match head.split.as_deref() {
            None | Some("train") | Some("all") => {}
            Some(other) => {
                return Err(DomainError::validation(
                    "params.split",
                    format!("unknown training split '{other}'; use train or all (test is kept for the report)"),
                ))
            }
        }
        if !(head.temperature.is_finite() && head.temperature > 0.0 && head.temperature <= MAX_TEMPERATURE) {
            return Err(DomainError::validation("params.temperature", format!("must be in (0, {MAX_TEMPERATURE}]")));
        }
        if !(0.0..=1.0).contains(&head.alpha) {
            return Err(DomainError::validation("params.alpha", "must be in [0, 1]"));
        }
        Ok(DistillParams {
            student: parse_student(&head.student)?,
            dataset_id: head.dataset_id,
            split: head.split,
            temperature: head.temperature,
            alpha: head.alpha,
            keep_partial: head.keep_partial,
            baseline: head.baseline,
            settings,
        })
    }

    /// The uploaded student's id, if the student is an uploaded model.
    pub fn student_model_id(&self) -> Option<&str> {
        match &self.student {
            StudentSource::Model { model_id, .. } => Some(model_id),
            _ => None,
        }
    }

    /// Submission check, once the teacher's spec (and the uploaded student's stored spec, when
    /// the student is an uploaded model) are known: the student spec exists or derives, and
    /// its input shape and classes are the teacher's. 422 naming `params.student` otherwise.
    pub fn check_models(&self, teacher: &ModelSpec, student_spec: Option<&str>) -> Result<(), DomainError> {
        let student = self.student_spec(teacher, student_spec).map_err(|e| match e {
            JobError::Invalid { field, detail } => {
                let mut err = DomainError::new(ErrorCode::Validation, detail);
                err.field = field;
                err
            }
            other => DomainError::internal(other.to_string()),
        })?;
        check_pair(teacher, &student).map_err(|d| DomainError::validation("params.student", d))
    }

    /// The student's spec: inline, derived from the teacher, or the uploaded model's stored one.
    fn student_spec(&self, teacher: &ModelSpec, stored: Option<&str>) -> Result<ModelSpec, JobError> {
        match &self.student {
            StudentSource::Spec { spec } => Ok((**spec).clone()),
            StudentSource::Template { from_teacher } => derive_student(teacher, from_teacher)
                .map_err(|e| JobError::invalid("params.student.from_teacher", e.to_string())),
            StudentSource::Model { model_id, .. } => {
                let text = stored.ok_or_else(|| {
                    JobError::invalid(
                        "params.student.model_id",
                        format!("model '{model_id}' has no architecture spec; PUT /v1/models/{model_id}/spec first"),
                    )
                })?;
                ModelSpec::from_json(text.as_bytes())
                    .map_err(|e| JobError::invalid("params.student.model_id", format!("stored spec: {e}")))
            }
        }
    }
}

impl Kind for DistillParams {
    fn parse(params: &Value) -> Result<Self, DomainError> {
        DistillParams::parse_params(params)
    }

    /// The teacher needs a spec; the dataset needs labels only for the baseline (without labels
    /// the loss is the soft term alone).
    fn needs(&self) -> Needs {
        Needs {
            spec: true,
            data: vec![DataNeed::new(&self.dataset_id, "params.dataset_id", self.split.as_deref(), self.baseline)],
            models: match &self.student {
                StudentSource::Model { model_id, .. } => vec![(model_id.clone(), "params.student.model_id".into())],
                _ => Vec::new(),
            },
            ..Needs::default()
        }
    }

    /// Teacher and student must fit each other.
    fn check(&self, stored: &Stored) -> Result<(), DomainError> {
        let Some(teacher) = &stored.spec else { return Ok(()) };
        let student = self.student_model_id().and_then(|id| stored.models.get(id)).and_then(|m| m.spec.as_deref());
        self.check_models(teacher, student)
    }

    fn run(&self, ctx: &JobContext) -> Result<JobOutput, JobError> {
        run(ctx, self)
    }
}

/// Teacher and student must read the same samples and predict the same classes.
fn check_pair(teacher: &ModelSpec, student: &ModelSpec) -> Result<(), String> {
    if student.input.shape != teacher.input.shape {
        return Err(format!(
            "the student's input shape {:?} differs from the teacher's {:?}; both must read the same samples",
            student.input.shape, teacher.input.shape
        ));
    }
    if student.output.classes != teacher.output.classes {
        return Err(format!(
            "the student predicts {} classes but the teacher {}; they must match",
            student.output.classes, teacher.output.classes
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

const CKPT_FORMAT: &str = "modelpress.distill_checkpoint.v1";
const META_KEY: &str = "modelpress.distill";

/// What a phase checkpoint holds besides the engine's [`TrainState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CkptMeta {
    format: String,
    phase: String,
    /// The engine's state metadata ([`TrainState::meta_json`]).
    state: Value,
    /// Loss parts per finished epoch.
    parts: Vec<LossParts>,
    /// No epoch is left to run (last epoch done or early stopping triggered).
    finished: bool,
}

/// The job's checkpoint directory; removed on drop unless the job is being requeued.
struct CheckpointDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for CheckpointDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl CheckpointDir {
    fn file(&self, phase: &str) -> PathBuf {
        self.path.join(format!("{phase}.safetensors"))
    }

    fn save(&self, phase: &str, state: &TrainState, parts: &[LossParts], finished: bool) -> Result<(), JobError> {
        std::fs::create_dir_all(&self.path)?;
        let tensors = state.to_tensors();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        let plans =
            names.iter().map(|n| TensorPlan::new(n.as_str(), Dtype::F32, tensors[*n].dims().to_vec())).collect();
        let meta = CkptMeta {
            format: CKPT_FORMAT.into(),
            phase: phase.into(),
            state: state.meta_json(),
            parts: parts.to_vec(),
            finished,
        };
        let mut md = BTreeMap::new();
        md.insert(META_KEY.to_string(), serde_json::to_string(&meta).map_err(|e| JobError::Internal(e.to_string()))?);
        let tmp = self.path.join(format!("{phase}.safetensors.part"));
        let mut w = TensorWriter::create(&tmp, plans, &md)?;
        for n in names {
            let v: Vec<f32> = tensors[n].to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
            w.write_f32_as(&v)?;
        }
        w.finish()?;
        std::fs::rename(&tmp, self.file(phase))?;
        Ok(())
    }

    /// The phase's checkpoint, or None when there is none or it cannot be used.
    fn load(&self, phase: &str) -> Option<(TrainState, CkptMeta)> {
        let path = self.file(phase);
        if !path.exists() {
            return None;
        }
        match read_checkpoint(&path, phase) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable checkpoint");
                None
            }
        }
    }
}

fn read_checkpoint(path: &Path, phase: &str) -> Result<(TrainState, CkptMeta), String> {
    let tf = Tensorfile::open_trusted(path).map_err(|e| e.to_string())?;
    let meta: CkptMeta =
        serde_json::from_str(tf.header.metadata.get(META_KEY).ok_or("no metadata")?).map_err(|e| e.to_string())?;
    if meta.format != CKPT_FORMAT || meta.phase != phase {
        return Err(format!("checkpoint is {} / {}", meta.format, meta.phase));
    }
    let mut tensors = HashMap::new();
    for t in &tf.header.tensors {
        let v = tf.to_f32(t).map_err(|e| e.to_string())?;
        let tensor = Tensor::from_vec(v, t.shape.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?;
        tensors.insert(t.name.clone(), tensor);
    }
    let state = TrainState::from_parts(tensors, &meta.state).map_err(|e| e.to_string())?;
    if meta.parts.len() != state.curve.len() {
        return Err("loss parts and curve disagree".into());
    }
    Ok((state, meta))
}

// ---------------------------------------------------------------------------------------------
// Training phases

/// One epoch of the report's curve: the engine's statistics plus the loss parts.
#[derive(Debug, Clone, Serialize)]
struct CurvePoint {
    #[serde(flatten)]
    stats: EpochStats,
    #[serde(flatten)]
    parts: LossParts,
}

/// What one phase produced.
struct PhaseOutcome {
    params: HashMap<String, Tensor>,
    curve: Vec<CurvePoint>,
    best_epoch: usize,
    stopped_early: bool,
    cancelled: bool,
    resumed_from: Option<usize>,
}

/// Hooks of one phase: the loss (distillation or plain cross-entropy), an `epoch` SSE event
/// with the loss parts, per-epoch checkpoints, and cancellation.
struct PhaseHooks<'a, 'b> {
    ctx: &'a JobContext,
    ck: &'a CheckpointDir,
    phase: &'static str,
    kd: Option<Distiller<'b>>,
    cfg: &'a TrainConfig,
    range: (f64, f64),
    /// Epochs of phases still to run after this one (for the ETA).
    epochs_after: usize,
    /// Seconds spent by earlier phases.
    elapsed_before: f64,
    parts: Vec<LossParts>,
    elapsed: f64,
    ce_sum: f64,
    ce_samples: usize,
    resumed_from: Option<usize>,
    error: Option<JobError>,
}

impl PhaseHooks<'_, '_> {
    fn take_parts(&mut self) -> LossParts {
        match &mut self.kd {
            Some(kd) => kd.take_parts(),
            None => {
                let ce = self.ce_sum / self.ce_samples.max(1) as f64;
                self.ce_sum = 0.0;
                self.ce_samples = 0;
                LossParts { kd_loss: 0.0, ce_loss: Some(ce) }
            }
        }
    }
}

impl TrainHooks for PhaseHooks<'_, '_> {
    fn loss(&mut self, batch: &Batch<'_>) -> Result<Tensor, NnError> {
        match &mut self.kd {
            Some(kd) => kd.batch_loss(batch),
            None => {
                let ce = batch.cross_entropy()?;
                self.ce_sum += ce.to_scalar::<f32>()? as f64 * batch.idx.len() as f64;
                self.ce_samples += batch.idx.len();
                Ok(ce)
            }
        }
    }

    fn on_epoch(&mut self, s: &EpochStats) {
        let parts = self.take_parts();
        self.parts.push(parts);
        self.elapsed += s.elapsed_s;
        let done = self.parts.len();
        let epochs = self.cfg.epochs;
        let frac = s.epoch as f64 / epochs.max(1) as f64;
        self.ctx.progress(
            self.range.0 + (self.range.1 - self.range.0) * frac,
            &format!("{}: epoch {}/{}", self.phase, s.epoch, epochs),
        );
        let per_epoch = self.elapsed / done.max(1) as f64;
        let remaining = per_epoch * (epochs.saturating_sub(s.epoch) + self.epochs_after) as f64;
        let mut ev = serde_json::to_value(s).unwrap_or_default();
        if let Some(o) = ev.as_object_mut() {
            o.insert("phase".into(), json!(self.phase));
            o.insert("epochs".into(), json!(epochs));
            o.insert("kd_loss".into(), if self.kd.is_some() { json!(parts.kd_loss) } else { Value::Null });
            o.insert("ce_loss".into(), json!(parts.ce_loss));
            o.insert("elapsed_total_s".into(), json!(self.elapsed_before + self.elapsed));
            o.insert("eta_s".into(), json!(remaining));
            o.insert("resumed_from_epoch".into(), json!(self.resumed_from));
        }
        self.ctx.event("epoch", ev);
    }

    fn wants_checkpoint(&self, _epoch: usize) -> bool {
        self.error.is_none()
    }

    fn on_checkpoint(&mut self, state: &TrainState) -> Result<(), NnError> {
        let early = match (self.cfg.early_stopping_patience, state.curve.last().and_then(|c| c.val_accuracy)) {
            (Some(p), Some(_)) => state.epochs_without_improvement >= p,
            _ => false,
        };
        let finished = state.epochs_done >= self.cfg.epochs || early;
        if let Err(e) = self.ck.save(self.phase, state, &self.parts, finished) {
            // A failed checkpoint costs resumability, not the job: log it and stop trying.
            tracing::warn!(job_id = %self.ctx.id, error = %e, "checkpoint write failed; continuing without");
            self.error = Some(e);
        }
        Ok(())
    }

    fn should_stop(&self) -> bool {
        self.ctx.is_stopping()
    }
}

/// Settings of one phase.
struct PhaseRun<'a> {
    phase: &'static str,
    spec: &'a ModelSpec,
    split: &'a Split,
    cfg: &'a TrainConfig,
    init: Init,
    range: (f64, f64),
    epochs_after: usize,
    elapsed_before: f64,
}

/// Runs (or resumes, or skips when its checkpoint says it is finished) one phase.
fn run_phase(
    ctx: &JobContext,
    ck: &CheckpointDir,
    run: PhaseRun<'_>,
    kd: Option<Distiller<'_>>,
) -> Result<PhaseOutcome, JobError> {
    let resume = ck.load(run.phase).filter(|(s, _)| s.seed == run.cfg.seed && s.epochs_done <= run.cfg.epochs);
    if let Some((state, meta)) = &resume {
        if meta.finished {
            return Ok(finished_outcome(state.clone(), &meta.parts, run.cfg));
        }
    }
    let mut hooks = PhaseHooks {
        ctx,
        ck,
        phase: run.phase,
        kd,
        cfg: run.cfg,
        range: run.range,
        epochs_after: run.epochs_after,
        elapsed_before: run.elapsed_before,
        parts: Vec::new(),
        elapsed: 0.0,
        ce_sum: 0.0,
        ce_samples: 0,
        resumed_from: None,
        error: None,
    };
    let out = match resume {
        Some((state, meta)) => {
            hooks.parts = meta.parts;
            hooks.elapsed = state.curve.iter().map(|c| c.elapsed_s).sum();
            hooks.resumed_from = Some(state.epochs_done);
            ctx.progress(run.range.0, &format!("{}: resuming after epoch {}", run.phase, state.epochs_done));
            tracing::info!(job_id = %ctx.id, phase = run.phase, epoch = state.epochs_done, "resuming from checkpoint");
            match crate::nn::train(run.spec, run.split, run.cfg, Init::Resume(Box::new(state)), &mut hooks) {
                Err(NnError::Checkpoint(e)) => {
                    tracing::warn!(job_id = %ctx.id, error = %e, "checkpoint rejected; restarting the phase");
                    hooks.parts.clear();
                    hooks.elapsed = 0.0;
                    hooks.resumed_from = None;
                    crate::nn::train(run.spec, run.split, run.cfg, run.init, &mut hooks)?
                }
                other => other?,
            }
        }
        None => {
            ctx.progress(run.range.0, &format!("{}: epoch 0/{}", run.phase, run.cfg.epochs));
            crate::nn::train(run.spec, run.split, run.cfg, run.init, &mut hooks)?
        }
    };
    let curve = zip_curve(&out.curve, &hooks.parts);
    Ok(PhaseOutcome {
        params: out.params,
        curve,
        best_epoch: out.best_epoch,
        stopped_early: out.stopped_early,
        cancelled: out.cancelled,
        resumed_from: hooks.resumed_from,
    })
}

fn zip_curve(stats: &[EpochStats], parts: &[LossParts]) -> Vec<CurvePoint> {
    stats.iter().zip(parts).map(|(s, p)| CurvePoint { stats: s.clone(), parts: *p }).collect()
}

/// The outcome a finished checkpoint stands for (what `train` returned when it was taken).
fn finished_outcome(state: TrainState, parts: &[LossParts], cfg: &TrainConfig) -> PhaseOutcome {
    let last = state.curve.last().map(|c| c.epoch).unwrap_or(0);
    let stopped_early = state.epochs_done < cfg.epochs;
    let curve = zip_curve(&state.curve, parts);
    let (params, best_epoch) = match state.best {
        Some(b) if cfg.restore_best => (b.params, b.epoch),
        _ => (state.params, last),
    };
    PhaseOutcome { params, curve, best_epoch, stopped_early, cancelled: false, resumed_from: Some(state.epochs_done) }
}

// ---------------------------------------------------------------------------------------------
// The job

fn student_model<'a>(ctx: &'a JobContext, id: &str) -> Result<&'a InputModel, JobError> {
    ctx.models
        .get(id)
        .ok_or_else(|| JobError::invalid("params.student.model_id", format!("model '{id}' is not available")))
}

/// Test-split figures of one network.
fn measure(net: &Network, test: Option<&(Tensor, Vec<u32>)>, spec: &ModelSpec) -> Result<Value, JobError> {
    let mut v = json!({ "parameters": trainable_parameters(spec) });
    if let Some((x, y)) = test {
        let r = evaluate(net, x, y, 256)?;
        v["accuracy"] = json!(r.accuracy);
        v["correct"] = json!(r.correct);
        v["samples"] = json!(r.samples);
        v["mean_loss"] = json!(r.mean_loss);
        v["samples_per_sec"] = json!(r.samples_per_sec);
        let l = measure_latency(net, x)?;
        v["latency_ms"] = json!(l.batch_1_ms);
        v["latency"] = json!(l);
    }
    Ok(v)
}

fn run(ctx: &JobContext, p: &DistillParams) -> Result<JobOutput, JobError> {
    let mut ck = CheckpointDir { path: ctx.store.checkpoint_dir(&ctx.id), keep: false };
    let result = run_job(ctx, p, &ck);
    // Keep the checkpoints only for a requeued job: it resumes from them.
    ck.keep = matches!(result, Err(JobError::Shutdown));
    result
}

fn run_job(ctx: &JobContext, p: &DistillParams, ck: &CheckpointDir) -> Result<JobOutput, JobError> {
    let started = Instant::now();
    let teacher_model = ctx.input_model()?;
    ctx.progress(0.01, "loading teacher and data");
    let (tspec, teacher) = load_network(teacher_model)?;
    let ds = super::common::dataset(ctx, &p.dataset_id, "params.dataset_id")?;
    let (split_name, split) = load_split(ds, p.split.as_deref(), "train")?;
    let labelled = split.y.is_some();
    if p.baseline && !labelled {
        return Err(JobError::invalid("params.baseline", format!("split '{split_name}' has no labels")));
    }
    let stored = match &p.student {
        StudentSource::Model { model_id, .. } => student_model(ctx, model_id)?.spec.clone(),
        _ => None,
    };
    let sspec = p.student_spec(&tspec, stored.as_deref())?;
    check_pair(&tspec, &sspec).map_err(|d| JobError::invalid("params.student", d))?;
    split.check_for(&sspec)?;
    let init = match &p.student {
        StudentSource::Model { model_id, init } if init == "weights" => {
            let m = student_model(ctx, model_id)?;
            spec_of(m)?;
            Init::Params(float_tensors(&load_params_mode(m, crate::artifact::LoadMode::Dequantized)?))
        }
        _ => Init::Random,
    };
    let cfg = p.settings.to_config();
    ctx.checkpoint()?;

    ctx.progress(0.02, "computing teacher outputs");
    let kd_cfg = KdConfig { temperature: p.temperature, alpha: p.alpha };
    let targets = TeacherTargets::new(&teacher, &split.x, p.temperature, TEACHER_CACHE_BUDGET_BYTES, 256)?;
    let cached = targets.is_cached();
    let distiller = Distiller::new(targets, kd_cfg)?;

    let end = if p.baseline { 0.5 } else { 0.9 };
    let distill_run = PhaseRun {
        phase: "distill",
        spec: &sspec,
        split: &split,
        cfg: &cfg,
        init: init.clone(),
        range: (0.05, end),
        epochs_after: if p.baseline { cfg.epochs } else { 0 },
        elapsed_before: 0.0,
    };
    let student = run_phase(ctx, ck, distill_run, Some(distiller))?;
    let mut cancelled = false;
    if student.cancelled {
        match super::engine::stop_reason(ctx) {
            JobError::Cancelled if p.keep_partial && !student.curve.is_empty() => cancelled = true,
            e => return Err(e),
        }
    }

    let mut baseline = None;
    if p.baseline && !cancelled {
        let run = PhaseRun {
            phase: "baseline",
            spec: &sspec,
            split: &split,
            cfg: &cfg,
            init,
            range: (end, 0.9),
            epochs_after: 0,
            elapsed_before: student.curve.iter().map(|c| c.stats.elapsed_s).sum(),
        };
        let b = run_phase(ctx, ck, run, None)?;
        if b.cancelled {
            match super::engine::stop_reason(ctx) {
                JobError::Cancelled if p.keep_partial => cancelled = true,
                e => return Err(e),
            }
        } else {
            baseline = Some(b);
        }
    }

    ctx.progress(0.92, "evaluating");
    let test = match load_test_split(ds)? {
        Some(t) if split_name != "test" => t.y.clone().map(|y| (t.x.clone(), y)),
        _ => None,
    };
    let snet = Network::from_tensors(&sspec, &student.params)?;
    let mut teacher_report = measure(&teacher, test.as_ref(), &tspec)?;
    teacher_report["model_id"] = json!(teacher_model.id);
    teacher_report["file_bytes"] = json!(std::fs::metadata(&teacher_model.path)?.len());
    let mut student_report = measure(&snet, test.as_ref(), &sspec)?;
    let baseline_report = match &baseline {
        Some(b) => {
            let net = Network::from_tensors(&sspec, &b.params)?;
            let mut v = measure(&net, test.as_ref(), &sspec)?;
            v["best_epoch"] = json!(b.best_epoch);
            v["stopped_early"] = json!(b.stopped_early);
            v["curve"] = json!(b.curve);
            Some(v)
        }
        None => None,
    };

    ctx.progress(0.96, "writing student");
    let mut meta = BTreeMap::new();
    meta.insert("modelpress.source_model".into(), teacher_model.id.clone());
    meta.insert("modelpress.job_id".into(), ctx.id.clone());
    meta.insert("modelpress.distill.teacher".into(), teacher_model.id.clone());
    let temp = write_tensors(ctx, &student.params, meta)?;
    let out_model = OutputModel::from_file(temp, format!("{}-student", teacher_model.name), Some(sspec.to_json()))?;
    student_report["file_bytes"] = json!(out_model.size_bytes);
    student_report["best_epoch"] = json!(student.best_epoch);
    student_report["stopped_early"] = json!(student.stopped_early);
    student_report["source"] = match &p.student {
        StudentSource::Model { model_id, init } => json!({"model_id": model_id, "init": init}),
        StudentSource::Spec { .. } => json!("spec"),
        StudentSource::Template { from_teacher } => json!({"from_teacher": from_teacher}),
    };
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    let gain =
        match (student_report["accuracy"].as_f64(), baseline_report.as_ref().and_then(|b| b["accuracy"].as_f64())) {
            (Some(s), Some(b)) => json!(s - b),
            _ => Value::Null,
        };
    let mut resumed = Vec::new();
    if let Some(e) = student.resumed_from {
        resumed.push(json!({"phase": "distill", "from_epoch": e}));
    }
    if let Some(e) = baseline.as_ref().and_then(|b| b.resumed_from) {
        resumed.push(json!({"phase": "baseline", "from_epoch": e}));
    }
    let report = json!({
        "kind": "distill",
        "dataset_id": p.dataset_id,
        "split": split_name,
        "accuracy": student_report["accuracy"],
        "teacher": teacher_report,
        "student": student_report,
        "baseline": baseline_report,
        "distillation_gain": gain,
        "parameter_ratio": ratio(&teacher_report["parameters"], &student_report["parameters"]),
        "size_ratio": ratio(&teacher_report["file_bytes"], &student_report["file_bytes"]),
        "speedup": ratio(&teacher_report["latency_ms"], &student_report["latency_ms"]),
        "loss": {
            "formula": kd_cfg.describe(labelled),
            "temperature": p.temperature,
            "alpha": p.alpha,
            "labelled": labelled,
        },
        "teacher_outputs": {
            "cached": cached,
            "cache_bytes": TeacherTargets::cache_bytes(split.len(), tspec.output.classes),
            "budget_bytes": TEACHER_CACHE_BUDGET_BYTES,
        },
        "student_spec": serde_json::to_value(&sspec).unwrap_or_default(),
        "config": cfg,
        "curve": student.curve,
        "resumed": resumed,
        "attempts": ctx.attempts,
        "cancelled": cancelled,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    Ok(JobOutput { report, model: Some(out_model) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<DistillParams, DomainError> {
        DistillParams::parse_params(&v)
    }

    fn spec(name: &str) -> ModelSpec {
        let path = format!("{}/examples/{name}.spec.json", env!("CARGO_MANIFEST_DIR"));
        ModelSpec::from_json(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn defaults_and_student_forms() {
        let p = parse(json!({"dataset_id": "d", "student": {"from_teacher": {"width": 0.25}}})).unwrap();
        assert_eq!((p.temperature, p.alpha, p.keep_partial, p.baseline), (4.0, 0.9, false, false));
        assert_eq!(p.settings.epochs, 10);
        assert!(p.needs().models.is_empty());
        assert_eq!(p.needs().data, vec![DataNeed::new("d", "params.dataset_id", None, false)]);
        let p = parse(json!({"dataset_id": "d", "student": {"model_id": "m", "init": "random"}, "baseline": true,
                             "epochs": 200, "batch_size": 32, "lr": 0.003, "seed": 3}))
        .unwrap();
        assert_eq!(p.needs().models, vec![("m".to_string(), "params.student.model_id".to_string())]);
        assert_eq!(p.student, StudentSource::Model { model_id: "m".into(), init: "random".into() });
        assert!(p.needs().data[0].labels, "the baseline needs labels");
        assert_eq!(p.settings.to_config().epochs, 200);
        let inline: Value = serde_json::from_slice(
            &std::fs::read(format!("{}/examples/digits-student.spec.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        )
        .unwrap();
        let p = parse(json!({"dataset_id": "d", "student": {"spec": inline}})).unwrap();
        assert!(matches!(p.student, StudentSource::Spec { .. }));
    }

    #[test]
    fn bad_params_name_their_field() {
        let cases = [
            (json!({"dataset_id": "d"}), "params.student"),
            (json!({"dataset_id": "d", "student": {}}), "params.student"),
            (json!({"dataset_id": "d", "student": {"model_id": "m", "spec": {}}}), "params.student"),
            (json!({"dataset_id": "d", "student": {"model_id": "m", "init": "zeros"}}), "params.student.init"),
            (json!({"dataset_id": "d", "student": {"from_teacher": {"width": 0}}}), "params.student.from_teacher"),
            (json!({"dataset_id": "d", "student": {"from_teacher": {"widht": 0.5}}}), "params.student.from_teacher"),
            (json!({"dataset_id": "d", "student": {"spec": {"format": "x"}}}), "params.student.spec"),
            (json!({"dataset_id": "d", "student": {"spec": {}}, "init": "x"}), "params"),
            (json!({"dataset_id": "d", "student": {"from_teacher": {}}, "temperature": 0}), "params.temperature"),
            (json!({"dataset_id": "d", "student": {"from_teacher": {}}, "alpha": 1.5}), "params.alpha"),
            (json!({"dataset_id": "d", "student": {"from_teacher": {}}, "epochs": 0}), "params.epochs"),
            (json!({"dataset_id": "d", "student": {"from_teacher": {}}, "split": "test"}), "params.split"),
            (json!({"dataset_id": "d", "student": {"from_teacher": {}}, "bogus": 1}), "params"),
        ];
        for (v, field) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{v}: {e:?}");
        }
    }

    #[test]
    fn teacher_and_student_must_agree() {
        let teacher = spec("digits-mlp");
        let ok = parse(json!({"dataset_id": "d", "student": {"from_teacher": {"width": 0.125, "depth": 0}}})).unwrap();
        ok.check_models(&teacher, None).unwrap();
        let stored =
            std::fs::read_to_string(format!("{}/examples/digits-student.spec.json", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        let by_model = parse(json!({"dataset_id": "d", "student": {"model_id": "m"}})).unwrap();
        by_model.check_models(&teacher, Some(&stored)).unwrap();
        let e = by_model.check_models(&teacher, None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.student.model_id"));
        // Other classes, other input.
        let mut classes: Value = serde_json::from_str(&stored).unwrap();
        classes["output"] = json!({"classes": 9});
        classes["layers"][2]["out_features"] = json!(9);
        let mut input: Value = serde_json::from_str(&stored).unwrap();
        input["input"]["shape"] = json!([63]);
        input["layers"][0]["in_features"] = json!(63);
        for (s, want) in [(classes, "classes"), (input, "input shape")] {
            let p = parse(json!({"dataset_id": "d", "student": {"spec": s}})).unwrap();
            let e = p.check_models(&teacher, None).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("params.student"));
            assert!(e.detail.contains(want), "{}", e.detail);
        }
        // A template that cannot be applied to this teacher.
        let cnn = spec("mnist-cnn");
        let p = parse(json!({"dataset_id": "d", "student": {"from_teacher": {"width": 0.5}}})).unwrap();
        p.check_models(&cnn, None).unwrap();
    }
}
