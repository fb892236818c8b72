//! Following a job until it ends: the SSE stream (`/v1/jobs/{id}/events`) drives a progress bar
//! on a terminal or plain lines otherwise. When the stream ends early (server restart, SSE slot
//! limit) the job is polled and the stream reopened, until the job is terminal or the timeout.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::client::{CliError, Client};
use super::is_terminal;
use super::ProgressMode;

/// Where progress goes.
enum Display {
    Bar(ProgressBar),
    Plain { last_pct: i64, last_status: String, last_line: Instant },
    None,
}

impl Display {
    fn new(mode: ProgressMode, id: &str) -> Display {
        let bar = match mode {
            ProgressMode::Bar => true,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Plain => false,
            ProgressMode::None => return Display::None,
        };
        if !bar {
            return Display::Plain { last_pct: -1, last_status: String::new(), last_line: Instant::now() };
        }
        // `term_like` would hide the bar when stderr is not a terminal; `--progress bar` means
        // draw anyway (and the pty test relies on auto detecting the terminal).
        let pb = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr_with_hz(10));
        let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-");
        pb.set_style(style);
        pb.set_message(format!("job {id} queued"));
        pb.enable_steady_tick(Duration::from_millis(200));
        Display::Bar(pb)
    }

    fn update(&mut self, status: &str, progress: f64, stage: &str) {
        match self {
            Display::Bar(pb) => {
                pb.set_position((progress.clamp(0.0, 1.0) * 1000.0) as u64);
                pb.set_message(if stage.is_empty() { status.to_string() } else { format!("{status}: {stage}") });
            }
            Display::Plain { last_pct, last_status, last_line } => {
                let pct = (progress * 100.0).floor() as i64;
                // CI logs stay short: a line when the status changes, every 10 points, or at
                // most every 10 s while the stage text moves (long epochs).
                let due = status != last_status
                    || pct >= *last_pct + 10
                    || (pct != *last_pct && last_line.elapsed() >= Duration::from_secs(10));
                if due {
                    eprintln!("{status} {pct:>3}% {stage}");
                    *last_pct = pct;
                    *last_status = status.to_string();
                    *last_line = Instant::now();
                }
            }
            Display::None => {}
        }
    }

    fn finish(&mut self, job: &Value) {
        let status = job["status"].as_str().unwrap_or_default();
        match self {
            Display::Bar(pb) => {
                if status == "succeeded" {
                    pb.set_position(1000);
                }
                pb.finish_with_message(status.to_string());
            }
            Display::Plain { .. } => eprintln!("{status}"),
            Display::None => {}
        }
    }
}

/// Follows job `id` until it is terminal; returns the final job.
pub async fn follow(client: &Client, id: &str, mode: ProgressMode, timeout_secs: u64) -> Result<Value, CliError> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut display = Display::new(mode, id);
    loop {
        match stream_until_end(client, id, &mut display, deadline).await {
            Ok(Some(job)) => {
                display.finish(&job);
                return Ok(job);
            }
            Ok(None) => {}
            // 429 (no free SSE slot) or a dropped connection: fall back to polling below.
            Err(CliError::Http { status, .. }) if status == 429 || status >= 500 => {}
            Err(CliError::Connect { .. }) => {}
            Err(e) => return Err(e),
        }
        let job = client.get_json(&format!("/v1/jobs/{id}")).await?;
        let status = job["status"].as_str().unwrap_or_default();
        if is_terminal(status) {
            display.finish(&job);
            return Ok(job);
        }
        display.update(status, job["progress"].as_f64().unwrap_or(0.0), job["stage"].as_str().unwrap_or_default());
        if Instant::now() >= deadline {
            return Err(CliError::Timeout(format!("job {id} did not end within --timeout")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads the SSE stream; `Some(job)` once the terminal state arrived, `None` if it ended first.
async fn stream_until_end(
    client: &Client,
    id: &str,
    display: &mut Display,
    deadline: Instant,
) -> Result<Option<Value>, CliError> {
    let resp = client
        .http
        .get(client.url(&format!("/v1/jobs/{id}/events")))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| CliError::Connect { server: client.base.clone(), detail: e.to_string() })?;
    let resp = Client::check(resp).await?;
    let mut events = resp.bytes_stream().eventsource();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let next = match tokio::time::timeout(remaining, events.next()).await {
            Ok(n) => n,
            Err(_) => return Err(CliError::Timeout(format!("job {id} did not end within --timeout"))),
        };
        let Some(ev) = next else { return Ok(None) };
        let Ok(ev) = ev else { return Ok(None) };
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else { continue };
        match ev.event.as_str() {
            "state" => {
                let status = data["status"].as_str().unwrap_or_default();
                if is_terminal(status) {
                    return Ok(Some(data));
                }
                display.update(status, data["progress"].as_f64().unwrap_or(0.0), data["stage"].as_str().unwrap_or(""));
            }
            "progress" => display.update(
                data["status"].as_str().unwrap_or("running"),
                data["progress"].as_f64().unwrap_or(0.0),
                data["stage"].as_str().unwrap_or(""),
            ),
            _ => {}
        }
    }
}
