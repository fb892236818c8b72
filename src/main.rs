//! Thin binary: parse the command line, set up logging, run the service.

use clap::Parser;
use modelpress::config::{Cli, Command};
use modelpress::startup::Application;
use modelpress::telemetry;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(config)) => config,
        None => cli.serve,
    };
    telemetry::init(config.log_format);
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
