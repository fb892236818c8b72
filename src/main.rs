//! Thin binary: parse the command line, set up logging, run the service.

use std::process::ExitCode;

use clap::Parser;
use modelpress::config::{Cli, Command, ConfigError};
use modelpress::startup::Application;
use modelpress::telemetry;

/// Exit status for a configuration the service refuses (clap uses 2 for usage errors too).
const EXIT_CONFIG: u8 = 2;

/// Start-up and fatal errors are printed as one line (the cause chain joined by `: `), never
/// with a backtrace: an operator reading `docker logs` needs the reason, not our stack.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("modelpress: configuration error: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("modelpress: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(config)) => config,
        None => cli.serve,
        Some(Command::Client(cmd)) => {
            pin_candle_threads();
            std::process::exit(modelpress::cli::run(cmd));
        }
    };
    telemetry::init(config.log_format);
    pin_candle_threads();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads)
        .thread_name("modelpress-http")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Application::build(config).await?;
        app.run_until_stopped().await
    })
}

fn pin_candle_threads() {
    // candle's quantized matmuls split each product over a process-wide pool of spin-waiting
    // threads sized by CANDLE_NUM_THREADS (default: every physical core). Next to the job workers
    // and the inference threads that pool oversubscribes the cores, and spin-waiting threads that
    // lose their core slow a 67M-parameter q8_0 forward ~2.7x (docs/benchmarks.md). Pin it to one
    // thread per product unless the operator chose otherwise. Set here, before any thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
