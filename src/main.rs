//! The `pgspout` binary: parse the command line, set up logging, load settings, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgspout::error::chain;
use pgspout::settings::Settings;
use pgspout::startup::Application;

/// Stream PostgreSQL tables and views over HTTP as NDJSON or CSV, compressed on request.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured datasets.
    ///
    /// DATABASE_URL overrides database.url and PGSPOUT_LISTEN overrides server.listen. Logging follows
    /// RUST_LOG (default: info).
    Serve {
        /// The TOML config file.
        #[arg(long, default_value = "config/pgspout.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve { config } = cli.command;
    let result = actix_web::rt::System::new().block_on(async move {
        let settings = Settings::load(&config).map_err(|e| chain(&e))?;
        let application = Application::build(settings).await.map_err(|e| chain(&e))?;
        application.run_until_stopped().await.map_err(|e| chain(&e))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pgspout: {message}");
            ExitCode::FAILURE
        }
    }
}
