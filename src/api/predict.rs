//! `/v1/models/{id}/predict`: predictions from the stored artifact, and
//! `/v1/models/{id}/predict/info`: what a request must look like and how the model runs.
//!
//! Handlers check and convert inputs (bounded work: bodies are limited by
//! `--max-predict-rows` × the sample size; bodies over 256 KiB are parsed in `spawn_blocking`),
//! then hand the rows to the inference threads ([`crate::inference`]) and await the answer. If
//! the client goes away, the handler future is dropped and the request is skipped before compute.

use std::io::Cursor;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, ErrorCode, Problem};
use super::extract::{ApiPath, ApiQuery};
use super::AppState;
use crate::auth::Caller;
use crate::inference::{InferError, ModelSource, OutputMode, PredictRequest, Prediction, ServingPlan};
use crate::nn::spec::{InputDType, OutputKind};
use crate::nn::ModelSpec;
use crate::tensorfile::{parse_header, Dtype, HeaderLimits};

/// Bodies larger than this are parsed off the runtime threads.
const INLINE_PARSE_BYTES: usize = 256 * 1024;
/// Default `k` of `top_k`.
const DEFAULT_K: usize = 5;

/// JSON prediction request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PredictBody {
    /// A batch of samples: each sample nested in the spec's input shape (`[[…64 values…], …]`
    /// for shape `[64]`, `[[[…]]]` for `[1, 28, 28]`) or flat (all values of the sample in
    /// row-major order).
    #[schema(value_type = Vec<Object>)]
    pub inputs: Value,
    /// `logits` (default), `probabilities` or `top_k`.
    pub output: Option<String>,
    /// Classes per sample for `top_k` (default 5, at most the number of classes).
    #[schema(minimum = 1, maximum = 100000)]
    pub k: Option<usize>,
}

/// One class of a `top_k` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopClass {
    /// Class index.
    pub index: u32,
    /// Class name from the spec's `output.labels`, when it has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Probability.
    pub score: f32,
}

/// JSON prediction answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    pub model_id: String,
    /// The output mode used.
    pub output: String,
    /// One entry per sample: `classes` numbers (logits, probabilities) or `k` [`TopClass`]es.
    #[schema(value_type = Vec<Object>)]
    pub outputs: Value,
}

/// Options of the binary form (and defaults for the JSON form).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictQuery {
    /// `logits` (default), `probabilities` or `top_k`.
    pub output: Option<String>,
    /// Classes per sample for `top_k` (default 5, at most the number of classes).
    #[param(minimum = 1, maximum = 100000)]
    pub k: Option<usize>,
}

/// The per-sample input a model expects.
#[derive(Debug, Serialize, ToSchema)]
pub struct InputInfo {
    /// Per-sample shape; a request is `[N, ...shape]`.
    pub shape: Vec<usize>,
    /// Values per sample (the length of a flat sample).
    pub values_per_sample: usize,
    /// The spec's input dtype; JSON numbers must fit it (integers for integer dtypes).
    pub dtype: String,
    /// Preprocessing the service applies (`x * scale`, then `(x - mean[c]) / std[c]`); send raw
    /// inputs.
    #[schema(value_type = Option<Object>)]
    pub preprocess: Option<Value>,
    /// The binary form: a safetensors body with this tensor name.
    pub binary_tensor: String,
}

/// What a model outputs.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputInfo {
    /// Per-sample output shape (`[classes]`).
    pub shape: Vec<usize>,
    /// `logits` or `probabilities` (the network's own output).
    pub kind: String,
    pub classes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Accepted values of `output`.
    pub modes: Vec<String>,
    /// dtype of the outputs.
    pub dtype: String,
}

/// How the model is served.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionInfo {
    /// Whether the model is in the inference cache now.
    pub loaded: bool,
    /// Estimated resident bytes when loaded.
    pub resident_bytes: Option<u64>,
    /// Whether batches of ≤ 2 rows take the engine's plain-Rust path (when loaded).
    pub small_batch_path: Option<bool>,
    /// Per linear layer: stored representation and kernel.
    pub plan: ServingPlan,
    pub inference_threads: usize,
    /// Most rows merged into one forward pass.
    pub max_batch: usize,
    pub max_wait_us: u64,
    /// Most rows in one request.
    pub max_rows: usize,
}

/// `GET /v1/models/{id}/predict/info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictInfo {
    pub model_id: String,
    pub input: InputInfo,
    pub output: OutputInfo,
    pub execution: ExecutionInfo,
}

fn problem_422(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::validation(field, detail)
}

fn join(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn dtype_name(d: InputDType) -> &'static str {
    match d {
        InputDType::F32 => "f32",
        InputDType::F16 => "f16",
        InputDType::Bf16 => "bf16",
        InputDType::F64 => "f64",
        InputDType::U8 => "u8",
        InputDType::U32 => "u32",
        InputDType::I16 => "i16",
        InputDType::I32 => "i32",
        InputDType::I64 => "i64",
    }
}

/// The model row, its spec and where its file is; 404 / 422 when it cannot be served.
/// The caller's model (another tenant's is 404, checked before anything reaches the inference
/// cache, which is keyed by model id alone).
async fn model_source(st: &AppState, caller: &Caller, id: &str) -> ApiResult<ModelSource> {
    let row = super::models::load_model(st, caller, id).await?;
    let spec_json = row.spec.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Validation,
            format!(
                "model '{id}' has no architecture spec, so it cannot be run; attach one with \
                 PUT /v1/models/{id}/spec (see docs/spec.md)"
            ),
        )
    })?;
    let spec = match st.inference.cached_spec(id, &spec_json) {
        Some(s) => s,
        None => Arc::new(
            ModelSpec::from_json(spec_json.as_bytes())
                .map_err(|e| ApiError::internal(format!("stored spec of {id} does not parse: {e}")))?,
        ),
    };
    Ok(ModelSource { id: row.id, path: st.store.model_path(id), spec, spec_json: spec_json.into() })
}

/// Parses `output` and `k`.
fn output_mode(output: Option<&str>, k: Option<usize>, classes: usize) -> ApiResult<OutputMode> {
    let mode = match output.unwrap_or("logits") {
        "logits" => OutputMode::Logits,
        "probabilities" => OutputMode::Probabilities,
        "top_k" => {
            let k = k.unwrap_or(DEFAULT_K.min(classes));
            if k == 0 || k > classes {
                return Err(problem_422("k", format!("must be between 1 and {classes} (the number of classes)")));
            }
            OutputMode::TopK(k)
        }
        other => {
            return Err(problem_422("output", format!("unknown output '{other}'; use logits, probabilities or top_k")))
        }
    };
    if k.is_some() && !matches!(mode, OutputMode::TopK(_)) {
        return Err(problem_422("k", "is only used with \"output\": \"top_k\""));
    }
    Ok(mode)
}

/// The checked rows of one request.
#[derive(Debug)]
struct Rows {
    rows: usize,
    values: Vec<f32>,
}

/// Checks one value against the input dtype.
fn check_value(v: f64, dtype: InputDType, at: &dyn Fn() -> String) -> ApiResult<f32> {
    let range = |lo: f64, hi: f64, name: &str| -> ApiResult<f32> {
        if v.fract() != 0.0 || v < lo || v > hi {
            return Err(problem_422(
                "inputs",
                format!("{}: {v} is not a {name} integer in [{lo}, {hi}], the model's input dtype", at()),
            ));
        }
        Ok(v as f32)
    };
    match dtype {
        InputDType::U8 => range(0.0, 255.0, "u8"),
        InputDType::I16 => range(-32768.0, 32767.0, "i16"),
        InputDType::U32 => range(0.0, 4294967295.0, "u32"),
        InputDType::I32 => range(-2147483648.0, 2147483647.0, "i32"),
        InputDType::I64 => range(-9.223372036854776e18, 9.223372036854776e18, "i64"),
        InputDType::F16 if v.abs() > 65504.0 => {
            Err(problem_422("inputs", format!("{}: {v} is outside the f16 range (±65504) of the model's input", at())))
        }
        _ => {
            let f = v as f32;
            if !f.is_finite() {
                return Err(problem_422("inputs", format!("{}: {v} is not a finite f32 value", at())));
            }
            Ok(f)
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null (NaN and Infinity cannot be sent as JSON numbers)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The nested shape of a JSON value, dims taken from first elements (ragged arrays are caught
/// while flattening).
fn json_shape(v: &Value) -> Vec<usize> {
    let mut dims = Vec::new();
    let mut cur = v;
    while let Value::Array(a) = cur {
        dims.push(a.len());
        match a.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    dims
}

/// Flattens one sample in row-major order, checking every element.
fn flatten_sample(
    v: &Value,
    path: &mut String,
    dtype: InputDType,
    expected_dims: &[usize],
    out: &mut Vec<f32>,
) -> ApiResult<()> {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().ok_or_else(|| problem_422("inputs", format!("{path}: {n} is not representable")))?;
            out.push(check_value(x, dtype, &|| path.clone())?);
            Ok(())
        }
        Value::Array(a) => {
            if let Some((&d, rest)) = expected_dims.split_first() {
                if a.len() != d {
                    return Err(problem_422(
                        "inputs",
                        format!("{path} has {} elements where the shape needs {d}", a.len()),
                    ));
                }
                let len = path.len();
                for (i, e) in a.iter().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    flatten_sample(e, path, dtype, rest, out)?;
                    path.truncate(len);
                }
                Ok(())
            } else {
                Err(problem_422("inputs", format!("{path}: expected a number, received an array")))
            }
        }
        other => Err(problem_422("inputs", format!("{path}: expected a number, received {}", kind_of(other)))),
    }
}

/// Checks and flattens `inputs` of a JSON request.
fn json_rows(inputs: &Value, spec: &ModelSpec, max_rows: usize) -> ApiResult<Rows> {
    let shape = &spec.input.shape;
    let numel: usize = shape.iter().product();
    let Value::Array(samples) = inputs else {
        return Err(problem_422(
            "inputs",
            format!(
                "must be an array of samples (a batch of shape [N, {}]), received {}",
                join(shape),
                kind_of(inputs)
            ),
        ));
    };
    if samples.is_empty() {
        return Err(problem_422("inputs", "the batch is empty; send at least one sample"));
    }
    if samples.len() > max_rows {
        return Err(too_many_rows(samples.len(), max_rows));
    }
    let flat = [numel];
    let mut values = Vec::with_capacity(samples.len() * numel);
    let mut path = String::new();
    for (i, s) in samples.iter().enumerate() {
        let dims = json_shape(s);
        let expected: &[usize] = if dims[..] == shape[..] {
            shape
        } else if dims[..] == flat[..] {
            &flat
        } else {
            let mut batch = vec![samples.len()];
            batch.extend(&dims);
            return Err(problem_422(
                "inputs",
                format!(
                    "expected a batch of shape [N, {}] (or [N, {numel}] flat), received {batch:?}; \
                     sample {i} has shape {dims:?}",
                    join(shape)
                ),
            ));
        };
        path.clear();
        path.push_str(&format!("inputs[{i}]"));
        let before = values.len();
        flatten_sample(s, &mut path, spec.input.dtype, expected, &mut values)?;
        debug_assert_eq!(values.len() - before, numel);
    }
    Ok(Rows { rows: samples.len(), values })
}

fn too_many_rows(n: usize, max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the batch has {n} samples, more than the limit of {max} per request (--max-predict-rows); split it"),
    )
}

/// Checks and converts the `inputs` tensor of a safetensors body.
/// Fuzzing entry (`fuzz/`): parses a binary (safetensors) predict body for `spec` exactly as
/// `POST /v1/models/{id}/predict` does; returns the number of rows.
#[doc(hidden)]
pub fn fuzz_binary_body(body: &[u8], spec: &ModelSpec, max_rows: usize) -> ApiResult<usize> {
    binary_rows(body, spec, max_rows).map(|r| r.rows)
}

fn binary_rows(body: &[u8], spec: &ModelSpec, max_rows: usize) -> ApiResult<Rows> {
    let limits = HeaderLimits { max_header_bytes: 1024 * 1024, max_tensors: 64 };
    let header = parse_header(Cursor::new(body), body.len() as u64, limits)
        .map_err(|e| ApiError::new(ErrorCode::InvalidSafetensors, format!("request body: {e}")))?;
    let Some(t) = header.get("inputs") else {
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        return Err(problem_422("inputs", format!("the safetensors body has no 'inputs' tensor (it has {names:?})")));
    };
    let shape = &spec.input.shape;
    let numel: usize = shape.iter().product();
    let dims = &t.shape;
    let ok = !dims.is_empty() && (dims[1..] == shape[..] || dims[1..] == [numel]);
    if !ok {
        return Err(problem_422(
            "inputs",
            format!("expected a tensor of shape [N, {}] (or [N, {numel}]), received {dims:?}", join(shape)),
        ));
    }
    let n = dims[0];
    if n == 0 {
        return Err(problem_422("inputs", "the batch is empty; send at least one sample"));
    }
    if n > max_rows {
        return Err(too_many_rows(n, max_rows));
    }
    let start = (header.data_start + t.begin) as usize;
    let bytes = &body[start..(header.data_start + t.end) as usize];
    let raw: Vec<f64> = match t.dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        Dtype::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        Dtype::Bf16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        Dtype::U8 => bytes.iter().map(|&b| b as f64).collect(),
        Dtype::I8 => bytes.iter().map(|&b| b as i8 as f64).collect(),
        Dtype::I16 => bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f64).collect(),
        Dtype::U16 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f64).collect(),
        Dtype::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        Dtype::U32 => bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        Dtype::I64 => {
            bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")) as f64).collect()
        }
        other => {
            return Err(problem_422(
                "inputs",
                format!("dtype {other} is not accepted; send F32 (or another numeric dtype)"),
            ))
        }
    };
    let mut values = Vec::with_capacity(raw.len());
    for (i, v) in raw.into_iter().enumerate() {
        if !v.is_finite() {
            return Err(problem_422(
                "inputs",
                format!("sample {}, value {}: {v} is not a finite number", i / numel, i % numel),
            ));
        }
        values.push(check_value(v, spec.input.dtype, &|| format!("sample {}, value {}", i / numel, i % numel))?);
    }
    Ok(Rows { rows: n, values })
}

/// Parses a JSON body into rows and options.
fn json_request(body: &[u8], spec: &ModelSpec, q: &PredictQuery, max_rows: usize) -> ApiResult<(Rows, OutputMode)> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(&body[..body.len().min(1 << 20)]);
        if ["NaN", "Infinity"].iter().any(|t| text.contains(t)) {
            problem_422("inputs", "NaN and Infinity are not valid inputs (and not valid JSON numbers)")
        } else {
            ApiError::new(ErrorCode::BadRequest, format!("the body is not valid JSON: {e}"))
        }
    })?;
    let body: PredictBody =
        serde_json::from_value(v).map_err(|e| ApiError::new(ErrorCode::Validation, format!("body: {e}")))?;
    let classes = spec.output.classes;
    let mode = output_mode(body.output.as_deref().or(q.output.as_deref()), body.k.or(q.k), classes)?;
    Ok((json_rows(&body.inputs, spec, max_rows)?, mode))
}

fn infer_error(e: InferError) -> ApiError {
    match e {
        InferError::QueueFull { .. } => ApiError::new(ErrorCode::RateLimited, e.to_string()).with_retry_after(1),
        InferError::Stopping => ApiError::new(ErrorCode::Unavailable, e.to_string()),
        InferError::ModelGone(id) => ApiError::not_found("model", &id),
        InferError::Unusable { .. } => ApiError::new(ErrorCode::InvalidSpec, e.to_string()),
        InferError::TooLarge { .. } => ApiError::new(ErrorCode::Unavailable, e.to_string()),
        InferError::Internal(m) => ApiError::internal(format!("inference: {m}")),
    }
}

/// Largest body accepted for a model: every row at its widest encoding, plus slack.
fn body_limit(st: &AppState, numel: usize, json: bool) -> usize {
    let per_value = if json { 32 } else { 8 };
    let limit = st.config.max_predict_rows.saturating_mul(numel).saturating_mul(per_value).saturating_add(1 << 20);
    limit.min(st.config.max_upload_bytes.min(usize::MAX as u64) as usize)
}

/// Predict with a stored model.
///
/// JSON: `{"inputs": [[...], ...], "output": "logits" | "probabilities" | "top_k", "k": 5}` →
/// `{"model_id", "output", "outputs": [...]}`. Binary (large batches): a safetensors body with an
/// `inputs` tensor `[N, ...input shape]` (`Content-Type: application/octet-stream`, options in the
/// query) → a safetensors body with `outputs` F32 `[N, width]` (and `indices` I64 `[N, k]` for
/// `top_k`). Concurrent requests for the same model are batched into one forward pass on the
/// inference threads.
#[utoipa::path(post, path = "/v1/models/{id}/predict", tag = "models",
    params(("id" = String, Path, description = "Model id"), PredictQuery),
    request_body(content(
        (PredictBody = "application/json"),
        ("application/octet-stream"),
    ), description = "JSON batch, or a safetensors file with an `inputs` tensor"),
    responses(
        (status = 200, description = "One output per sample", content(
            (PredictResponse = "application/json"),
            ("application/octet-stream"),
        )),
        (status = 400, description = "Body is not valid JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "More samples than --max-predict-rows, or body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Inputs do not fit the spec (shape, dtype, non-finite values, empty batch), bad output/k, model without spec, or weights that do not fit the spec", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Inference queue full (--max-inference-queue); retry after Retry-After seconds", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Internal failure", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the model does not fit --inference-cache-bytes", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn predict(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PredictQuery>,
    req: Request,
) -> ApiResult<Response> {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let json = if ct.starts_with("application/json") {
        true
    } else if ct.starts_with("application/octet-stream") {
        false
    } else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Type '{ct}' is not accepted; send application/json or application/octet-stream (safetensors)"
            ),
        ));
    };
    let source = model_source(&st, &caller, &id).await?;
    let spec = source.spec.clone();
    let numel: usize = spec.input.shape.iter().product();
    let limit = body_limit(&st, numel, json);
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the body exceeds {limit} bytes, the most {} samples of this model can take (--max-predict-rows)",
                st.config.max_predict_rows
            ),
        )
    };
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let mut stream = req.into_body().into_data_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("reading the body failed: {e}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let max_rows = st.config.max_predict_rows;
    let parse = {
        let spec = spec.clone();
        move || -> ApiResult<(Rows, OutputMode)> {
            if json {
                json_request(&body, &spec, &q, max_rows)
            } else {
                let mode = output_mode(q.output.as_deref(), q.k, spec.output.classes)?;
                Ok((binary_rows(&body, &spec, max_rows)?, mode))
            }
        }
    };
    let (rows, mode) = if limit <= INLINE_PARSE_BYTES {
        parse()?
    } else {
        tokio::task::spawn_blocking(parse).await.map_err(ApiError::internal)??
    };
    let request = PredictRequest { model: source, rows: rows.rows, inputs: rows.values, output: mode };
    let prediction = st.inference.predict(request).await.map_err(infer_error)?;
    if json {
        Ok(Json(json_response(&id, &spec, mode, &prediction)).into_response())
    } else {
        binary_response(&id, mode, &prediction)
    }
}

fn json_response(id: &str, spec: &ModelSpec, mode: OutputMode, p: &Prediction) -> PredictResponse {
    let outputs = match mode {
        OutputMode::TopK(_) => {
            let labels = spec.output.labels.as_ref();
            Value::Array(
                (0..p.rows)
                    .map(|r| {
                        let row: Vec<TopClass> = (0..p.width)
                            .map(|j| {
                                let index = p.indices[r * p.width + j];
                                TopClass {
                                    index,
                                    label: labels.and_then(|l| l.get(index as usize).cloned()),
                                    score: p.values[r * p.width + j],
                                }
                            })
                            .collect();
                        serde_json::to_value(row).unwrap_or(Value::Null)
                    })
                    .collect(),
            )
        }
        _ => Value::Array(
            p.values.chunks(p.width.max(1)).map(|row| serde_json::to_value(row).unwrap_or(Value::Null)).collect(),
        ),
    };
    PredictResponse { model_id: id.to_string(), output: mode.name().to_string(), outputs }
}

/// A safetensors body: `outputs` F32 `[rows, width]`, `indices` I64 for top-k.
fn binary_response(id: &str, mode: OutputMode, p: &Prediction) -> ApiResult<Response> {
    let out_bytes = p.values.len() * 4;
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("model_id".into(), Value::String(id.to_string()));
    meta.insert("output".into(), Value::String(mode.name().to_string()));
    header.insert("__metadata__".into(), Value::Object(meta));
    header.insert(
        "outputs".into(),
        serde_json::json!({"dtype": "F32", "shape": [p.rows, p.width], "data_offsets": [0, out_bytes]}),
    );
    if !p.indices.is_empty() {
        header.insert(
            "indices".into(),
            serde_json::json!({"dtype": "I64", "shape": [p.rows, p.width],
                               "data_offsets": [out_bytes, out_bytes + p.indices.len() * 8]}),
        );
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).map_err(ApiError::internal)?;
    // safetensors pads the header to 8 bytes with spaces so the data is aligned.
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut body = Vec::with_capacity(8 + h.len() + out_bytes + p.indices.len() * 8);
    body.extend_from_slice(&(h.len() as u64).to_le_bytes());
    body.extend_from_slice(&h);
    for v in &p.values {
        body.extend_from_slice(&v.to_le_bytes());
    }
    for i in &p.indices {
        body.extend_from_slice(&(*i as i64).to_le_bytes());
    }
    let mut resp = (StatusCode::OK, Body::from(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(resp)
}

/// How to call a model's predict endpoint and how it runs.
///
/// Input and output shapes, dtype, preprocessing, labels, and the serving plan: which kernel each
/// linear layer runs on (f32, candle's quantized matmul on the stored blocks, …).
#[utoipa::path(get, path = "/v1/models/{id}/predict/info", tag = "models",
    params(("id" = String, Path, description = "Model id")),
    responses(
        (status = 200, description = "Prediction metadata", body = PredictInfo),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The model has no architecture spec", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn predict_info(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<PredictInfo>> {
    let source = model_source(&st, &caller, &id).await?;
    let spec = source.spec.clone();
    let cached = st.inference.cached(&id).filter(|m| *m.spec_json == *source.spec_json);
    let plan = match &cached {
        Some(m) => m.plan.clone(),
        None => {
            let path = source.path.clone();
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || {
                crate::tensorfile::Tensorfile::open_trusted(&path)
                    .map(|f| crate::inference::model::plan(&f.header, &spec))
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| match e {
                crate::tensorfile::TensorfileError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    ApiError::not_found("model", &id)
                }
                other => ApiError::internal(other),
            })?
        }
    };
    let cfg = st.inference.config();
    let classes = spec.output.classes;
    Ok(Json(PredictInfo {
        model_id: id.clone(),
        input: InputInfo {
            shape: spec.input.shape.clone(),
            values_per_sample: spec.input.shape.iter().product(),
            dtype: dtype_name(spec.input.dtype).to_string(),
            preprocess: spec.input.preprocess.as_ref().and_then(|p| serde_json::to_value(p).ok()),
            binary_tensor: "inputs".to_string(),
        },
        output: OutputInfo {
            shape: vec![classes],
            kind: match spec.output.kind {
                OutputKind::Logits => "logits".into(),
                OutputKind::Probabilities => "probabilities".into(),
            },
            classes,
            labels: spec.output.labels.clone(),
            modes: vec!["logits".into(), "probabilities".into(), "top_k".into()],
            dtype: "f32".into(),
        },
        execution: ExecutionInfo {
            loaded: cached.is_some(),
            resident_bytes: cached.as_ref().map(|m| m.bytes),
            small_batch_path: cached.as_ref().map(|m| m.net.has_small_batch_path()),
            plan,
            inference_threads: cfg.threads,
            max_batch: cfg.max_batch,
            max_wait_us: cfg.max_wait.as_micros() as u64,
            max_rows: st.config.max_predict_rows,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: &str, dtype: &str) -> ModelSpec {
        ModelSpec::from_json(
            format!(
                r#"{{"format": "modelpress.spec", "version": 1, "input": {{"shape": {shape}, "dtype": "{dtype}"}},
                   "output": {{"classes": 3}}, "layers": [{{"type": "flatten"}},
                   {{"type": "linear", "in_features": 4, "out_features": 3}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn detail(e: ApiError) -> String {
        e.detail.clone()
    }

    #[test]
    fn nested_and_flat_samples() {
        let s = spec("[2, 2]", "f32");
        let r = json_rows(&serde_json::json!([[[1, 2], [3, 4]], [5, 6, 7, 8]]), &s, 10).unwrap();
        assert_eq!(r.rows, 2);
        assert_eq!(r.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let e = detail(json_rows(&serde_json::json!([[1, 2, 3]]), &s, 10).unwrap_err());
        assert!(e.contains("expected a batch of shape [N, 2, 2]") && e.contains("received [1, 3]"), "{e}");
        let e = detail(json_rows(&serde_json::json!([[[1, 2], [3]]]), &s, 10).unwrap_err());
        assert!(e.contains("inputs[0][1] has 1 elements where the shape needs 2"), "{e}");
        let e = detail(json_rows(&serde_json::json!([[[1, 2], [3, "x"]]]), &s, 10).unwrap_err());
        assert_eq!(e, "inputs: inputs[0][1][1]: expected a number, received a string");
        let e = detail(json_rows(&serde_json::json!([[[1, 2], [3, null]]]), &s, 10).unwrap_err());
        assert!(e.contains("received null (NaN and Infinity"), "{e}");
        let e = detail(json_rows(&serde_json::json!([]), &s, 10).unwrap_err());
        assert!(e.contains("the batch is empty"), "{e}");
        let e = json_rows(&serde_json::json!([[1, 2, 3, 4], [1, 2, 3, 4]]), &s, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        let e = detail(json_rows(&serde_json::json!([[1e39, 2, 3, 4]]), &s, 10).unwrap_err());
        assert!(e.contains("not a finite f32 value"), "{e}");
    }

    #[test]
    fn integer_dtypes_are_checked() {
        let s = spec("[4]", "u8");
        assert!(json_rows(&serde_json::json!([[0, 255, 3, 4]]), &s, 10).is_ok());
        let e = detail(json_rows(&serde_json::json!([[0, 256, 3, 4]]), &s, 10).unwrap_err());
        assert!(e.contains("inputs[0][1]: 256 is not a u8 integer"), "{e}");
        let e = detail(json_rows(&serde_json::json!([[0, 1.5, 3, 4]]), &s, 10).unwrap_err());
        assert!(e.contains("1.5 is not a u8 integer"), "{e}");
    }

    #[test]
    fn output_modes_parse() {
        assert_eq!(output_mode(None, None, 10).unwrap(), OutputMode::Logits);
        assert_eq!(output_mode(Some("top_k"), None, 10).unwrap(), OutputMode::TopK(5));
        assert_eq!(output_mode(Some("top_k"), None, 3).unwrap(), OutputMode::TopK(3));
        assert!(output_mode(Some("top_k"), Some(11), 10).is_err());
        assert!(output_mode(Some("logits"), Some(2), 10).is_err());
        assert!(output_mode(Some("softmax"), None, 10).is_err());
    }

    #[test]
    fn binary_round_trip_and_nan() {
        let s = spec("[4]", "f32");
        let body = |vals: &[f32], shape: &[usize]| {
            let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            let h = serde_json::json!({"inputs": {"dtype": "F32", "shape": shape, "data_offsets": [0, data.len()]}});
            let h = serde_json::to_vec(&h).unwrap();
            let mut out = (h.len() as u64).to_le_bytes().to_vec();
            out.extend(h);
            out.extend(data);
            out
        };
        let r = binary_rows(&body(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 4]), &s, 10).unwrap();
        assert_eq!((r.rows, r.values.len()), (2, 8));
        let e = detail(binary_rows(&body(&[1.0, f32::NAN, 3.0, 4.0], &[1, 4]), &s, 10).unwrap_err());
        assert!(e.contains("sample 0, value 1: NaN is not a finite number"), "{e}");
        let e = detail(binary_rows(&body(&[1.0, 2.0, 3.0], &[1, 3]), &s, 10).unwrap_err());
        assert!(e.contains("expected a tensor of shape [N, 4]") && e.contains("received [1, 3]"), "{e}");

        let p = Prediction { rows: 1, width: 2, values: vec![0.5, 0.25], indices: vec![1, 0], batch_rows: 1 };
        let resp = binary_response("m", OutputMode::TopK(2), &p).unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/octet-stream");
    }
}
