//! The `pgspout` binary: parse the command line, set up logging, load settings, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pgspout::report::chain;
use pgspout::settings::Settings;
use pgspout::startup::{Application, shutdown_signal};

/// Stream PostgreSQL tables and views over HTTP as NDJSON, CSV or Arrow, compressed on request.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = after_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const AFTER_HELP: &str = "\
Endpoints:
  GET  /v1/datasets/{name}/rows   the matching rows, streamed, ordered by the dataset's key
         ?select=a,b  ?col=[not.]op.value (eq neq gt gte lt lte like ilike in.(..) is.null|true|false;
         an operator or order the column's type lacks is a 400)
         ?order=col.desc.nullslast  ?limit=N  ?after=<key>  ?format={formats} (else Accept; else NDJSON)
         ?consistency=snapshot|chunked (one snapshot, or keyset batches in short transactions)
         Accept-Encoding: zstd, gzip, br (q-values honoured; none sent = uncompressed)
         ?compression=gzip|zstd|br|identity: a compressed file instead (a download link)
         Prefer: count=exact|estimated adds X-Total-Count
  HEAD /v1/datasets/{name}/rows   the same headers, without running the query
  GET  /v1/datasets/{name}/page   one keyset page: {rows: [...], next: cursor or null}, Link rel=next
  GET  /v1/datasets[/{name}]      columns, key and row estimate (under [auth]: those the caller may read)
  POST /v1/exports                a background export to a file: {dataset, format, compression, query}
  GET  /v1/exports/{id}           its status; DELETE cancels it or deletes its file
  GET  /v1/exports/{id}/download  the finished file (byte ranges supported)
  GET  /v1/openapi.json           the OpenAPI 3.1 document
  GET  /v1/client.js              the JavaScript client (ES module; client.d.ts: its types)
  GET  /                          the live page: build a query, watch rows stream in, download, export
  GET  /metrics                   Prometheus metrics (or only on server.metrics_listen)
  gRPC Arrow Flight               on server.flight_listen: ListFlights, GetFlightInfo, DoGet (README)
  GET  /healthz                   200 while the process runs
  GET  /readyz                    200 when PostgreSQL answers, else 503

Errors before the first byte are RFC 9457 problem+json; an export that fails after it is aborted,
never ended cleanly. Every response carries X-Request-Id (the client's, if well-formed); it is in the
logs, in problem+json bodies and in pg_stat_activity's application_name (`pgspout <id>`).

Environment, over the config file: DATABASE_URL (database.url), PGSPOUT_LISTEN (server.listen),
PGSPOUT_<SECTION>__<KEY> for any key (PGSPOUT_DATABASE__POOL_SIZE=16, PGSPOUT_LOG__FORMAT=json),
PGSPOUT_CONFIG (the file), RUST_LOG (log filter, default info). Without database.url and
DATABASE_URL, libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT, …
are used, as by psql. Every config key is listed, with its default, in config/pgspout.toml and the
README.

With [auth], requests run as the role of their token (Authorization: Bearer <JWT or API key>, or
auth.cookie), and Postgres (GRANTs, row-level security) decides what they see.
With no [[datasets]] and no [[schemas]], the public schema is served whole. SIGHUP, or
NOTIFY pgspout, 'reload' on the database, reads the catalog again. database.replicas: /rows, /page
and counts read from a healthy read replica.";

/// The endpoint summary, with the formats as `encode::FORMATS` lists them.
fn after_help() -> String {
    AFTER_HELP.replace("{formats}", &pgspout::encode::Format::names().join("|"))
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured datasets and schemas (the `public` schema when none is configured).
    ///
    /// SIGHUP, or `NOTIFY pgspout, 'reload'` on the database, reads the catalog again.
    ///
    /// Settings: defaults, then the config file, then DATABASE_URL and PGSPOUT_LISTEN, then
    /// PGSPOUT_<SECTION>__<KEY>. Logging follows RUST_LOG (default: info) and log.format.
    Serve(ConfigFile),
    /// Check the configuration against the database, then exit.
    ///
    /// Reads the same settings as serve, connects to the primary and every replica, resolves every dataset
    /// and prints them (name, relation, key, columns) and each replica's state. Exits 0 when serve would
    /// start with every replica healthy, else prints the problem and exits 1.
    Check(ConfigFile),
}

/// Where the settings come from, for every subcommand.
#[derive(Args)]
struct ConfigFile {
    /// The TOML config file [default: config/pgspout.toml, if it exists]
    #[arg(long, env = "PGSPOUT_CONFIG")]
    config: Option<PathBuf>,
}

/// The config file read when none is named and it exists.
const DEFAULT_CONFIG: &str = "config/pgspout.toml";

/// jemalloc, configured (in .cargo/config.toml) to purge freed pages on a background thread within about a
/// second: after a burst of concurrent exports, resident memory goes back down, where glibc kept what 20
/// concurrent compressors once needed. One arena: an export's task moves between threads, and with an arena
/// per thread what one thread freed was not reused by the next (a Parquet job's row groups).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The default file is optional; one named on the command line must exist.
    let file = |config: Option<PathBuf>| config.or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()));
    let config = match cli.command {
        Command::Serve(ConfigFile { config }) => config,
        Command::Check(ConfigFile { config }) => {
            let checked = actix_web::rt::System::new().block_on(async move {
                let settings = Settings::load(file(config).as_deref()).map_err(|e| chain(&e))?;
                pgspout::startup::check(&settings).await.map_err(|e| chain(&e))
            });
            return match checked {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("pgspout check: {message}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let settings = Settings::load(file(config).as_deref()).map_err(|e| chain(&e))?;
        pgspout::telemetry::init_logging(settings.log.format);
        let shutdown = shutdown_signal().map_err(|e| format!("cannot listen for signals: {e}"))?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot listen for signals: {e}"))?;
        let application = Application::build(settings).await.map_err(|e| chain(&e))?;
        let reloader = application.reloader();
        actix_web::rt::spawn(async move {
            while hangup.recv().await.is_some() {
                reloader.reload("SIGHUP").await;
            }
        });
        application.run_until_stopped(shutdown).await.map_err(|e| chain(&e))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pgspout: {message}");
            ExitCode::FAILURE
        }
    }
}
