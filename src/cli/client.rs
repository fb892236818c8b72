//! The client's HTTP calls (reqwest): JSON requests, streamed uploads and downloads, and
//! problem+json answers turned into readable errors.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::auth::Secret;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server answered with an error (problem+json rendered as `title: detail`).
    #[error("{status}: {message}")]
    Http { status: u16, message: String },
    #[error("cannot reach {server}: {detail}")]
    Connect { server: String, detail: String },
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Usage(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("{0}")]
    Timeout(String),
}

/// A JSON answer, with the headers the client cares about.
pub struct Answer {
    pub body: String,
    /// `Modelpress-Webhook-Secret` of a job submission.
    pub webhook_secret: Option<String>,
}

/// A downloaded file.
pub struct Downloaded {
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, key: Option<&Secret>) -> Client {
        let mut headers = HeaderMap::new();
        if let Some(k) = key {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", k.expose())) {
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("modelpress-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Client { base: server.trim_end_matches('/').to_string(), http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn connect_error(&self, e: reqwest::Error) -> CliError {
        CliError::Connect { server: self.base.clone(), detail: e.to_string() }
    }

    /// Turns a non-2xx answer into [`CliError::Http`].
    pub async fn check(resp: reqwest::Response) -> Result<reqwest::Response, CliError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<Value>(&text) {
            Ok(p) => {
                let title = p["title"].as_str().unwrap_or("error");
                let mut m = match p["detail"].as_str() {
                    Some(d) => format!("{title}: {d}"),
                    None => title.to_string(),
                };
                if let Some(f) = p["field"].as_str() {
                    m.push_str(&format!(" (field {f})"));
                }
                m
            }
            Err(_) => text.chars().take(500).collect(),
        };
        Err(CliError::Http { status, message })
    }

    pub async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        let r = self.http.get(self.url(path)).send().await.map_err(|e| self.connect_error(e))?;
        let r = Self::check(r).await?;
        r.json().await.map_err(|e| CliError::Protocol(e.to_string()))
    }

    pub async fn post_json(&self, path: &str, body: &Value, idempotency_key: Option<&str>) -> Result<Answer, CliError> {
        let mut req = self.http.post(self.url(path)).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.map_err(|e| self.connect_error(e))?;
        let r = Self::check(r).await?;
        let webhook_secret =
            r.headers().get("modelpress-webhook-secret").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = r.text().await.map_err(|e| CliError::Protocol(e.to_string()))?;
        Ok(Answer { body, webhook_secret })
    }

    /// Streams a file as the `file_part` of a multipart form (never read into memory).
    pub async fn upload(
        &self,
        path: &str,
        file_part: &'static str,
        file: &Path,
        fields: Vec<(&'static str, String)>,
    ) -> Result<Value, CliError> {
        let f = tokio::fs::File::open(file).await.map_err(|e| CliError::Io(format!("{}: {e}", file.display())))?;
        let len = f.metadata().await.map_err(|e| CliError::Io(e.to_string()))?.len();
        let stream = tokio_util::io::ReaderStream::new(f);
        let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "upload".into());
        let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
            .file_name(name)
            .mime_str("application/octet-stream")
            .map_err(|e| CliError::Protocol(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k, v);
        }
        // The file last: the server reads the small fields before the stream.
        form = form.part(file_part, part);
        let r = self.http.post(self.url(path)).multipart(form).send().await.map_err(|e| self.connect_error(e))?;
        let r = Self::check(r).await?;
        r.json().await.map_err(|e| CliError::Protocol(e.to_string()))
    }

    /// Streams a model to `<out>.part`, then renames it into place.
    pub async fn download(
        &self,
        model: &str,
        format: Option<&str>,
        out: Option<&Path>,
    ) -> Result<Downloaded, CliError> {
        let mut url = self.url(&format!("/v1/models/{model}/download"));
        if let Some(f) = format {
            url.push_str(&format!("?format={f}"));
        }
        let r = self.http.get(url).send().await.map_err(|e| self.connect_error(e))?;
        let r = Self::check(r).await?;
        let path = match out {
            Some(p) => p.to_path_buf(),
            None => {
                let ext = if format == Some("gguf") { "gguf" } else { "safetensors" };
                PathBuf::from(format!("{model}.{ext}"))
            }
        };
        let mut tmp = path.clone().into_os_string();
        tmp.push(".part");
        let tmp = PathBuf::from(tmp);
        let io = |e: std::io::Error| CliError::Io(format!("{}: {e}", path.display()));
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut bytes = 0u64;
        let mut stream = r.bytes_stream();
        let written: Result<(), CliError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| CliError::Protocol(format!("download interrupted: {e}")))?;
                f.write_all(&chunk).await.map_err(io)?;
                bytes += chunk.len() as u64;
            }
            f.flush().await.map_err(io)?;
            f.sync_all().await.map_err(io)?;
            Ok(())
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        Ok(Downloaded { path, bytes })
    }
}
