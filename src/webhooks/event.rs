//! The JSON event a webhook receives. Built from the job row at each attempt: a terminal job
//! never changes, so every attempt of a delivery carries the same body (only the signature's
//! timestamp differs).
//!
//! ```json
//! {"id": "<delivery id>", "type": "job.succeeded", "created_at": "…",
//!  "job": {"id", "kind", "status", "model_id", "output_model_id", "created_at", "finished_at",
//!          "error": <problem or null>, "headline": {"size_ratio": 0.27, …}},
//!  "links": {"job": "…/v1/jobs/<id>", "deliveries": "…", "output_model": "…", "download": "…"}}
//! ```

use serde_json::{json, Map, Value};

use crate::db::webhooks::DeliveryRow;
use crate::db::JobRow;

/// The event body for one delivery of a (terminal) job.
pub fn build(delivery: &DeliveryRow, job: &JobRow, public_url: Option<&str>) -> Value {
    let base = public_url.map(|u| u.trim_end_matches('/')).unwrap_or("");
    let report: Value = job.report.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or(Value::Null);
    let error: Value = job.error.as_deref().and_then(|e| serde_json::from_str(e).ok()).unwrap_or(Value::Null);
    let headline = if report.is_null() { Map::new() } else { crate::report::headline(&job.kind, &report) };
    let mut links = Map::new();
    links.insert("job".into(), json!(format!("{base}/v1/jobs/{}", job.id)));
    links.insert("deliveries".into(), json!(format!("{base}/v1/jobs/{}/deliveries", job.id)));
    if let Some(m) = &job.output_model_id {
        links.insert("output_model".into(), json!(format!("{base}/v1/models/{m}")));
        links.insert("download".into(), json!(format!("{base}/v1/models/{m}/download")));
    }
    json!({
        "id": delivery.id,
        "type": delivery.event,
        "created_at": delivery.created_at,
        "job": {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "model_id": job.model_id,
            "output_model_id": job.output_model_id,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "error": error,
            "headline": headline,
        },
        "links": links,
    })
}
