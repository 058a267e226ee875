//! Concurrency benchmark: 64 simultaneous exports of the `orders` table.
//!
//! Run with `scripts/bench.sh`. Phase 1 sets limits that admit all 64 and checks that every export completes
//! with the right rows (each body's line count and checksum equal a reference export), reporting pgspout's
//! peak RSS. Phase 2 uses the default limits: each export must either complete correctly or get a clean 503
//! with Retry-After, never a broken stream. Under `cargo test` it is a small smoke run.

mod support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

const CLIENTS: usize = 64;

struct Server {
    child: Child,
    port: u16,
    config: std::path::PathBuf,
}

impl Server {
    fn start(root: &str, extra: &str, database_url: &str) -> Server {
        let config = std::env::temp_dir().join(format!("pgspout-concurrency-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            format!("{extra}\n[[datasets]]\nname = \"orders\"\ntable = \"orders\"\nkey = \"id\"\n"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_pgspout"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("DATABASE_URL", database_url)
            .env("PGSPOUT_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .current_dir(root)
            .spawn()
            .expect("pgspout starts");
        let ready = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(ready, "pgspout did not start");
        Server { child, port, config }
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// What one export delivered.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Status 200 and a complete body: its line count and FNV-1a checksum.
    Complete(usize, u64),
    /// A clean 503 with Retry-After.
    Refused,
    /// Anything else: a broken stream or an unexpected status.
    Broken(String),
}

async fn export(client: reqwest::Client, url: String) -> Outcome {
    let mut response = match client.get(&url).send().await {
        Ok(response) => response,
        Err(error) => return Outcome::Broken(error.to_string()),
    };
    if response.status() == 503 {
        return if response.headers().contains_key("retry-after") {
            Outcome::Refused
        } else {
            Outcome::Broken("503 without Retry-After".into())
        };
    }
    if response.status() != 200 {
        return Outcome::Broken(format!("status {}", response.status()));
    }
    let (mut lines, mut hash) = (0usize, 0xcbf29ce484222325u64);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                for &b in chunk.iter() {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x100000001b3);
                }
                lines += chunk.iter().filter(|b| **b == b'\n').count();
            }
            Ok(None) => return Outcome::Complete(lines, hash),
            Err(error) => return Outcome::Broken(error.to_string()),
        }
    }
}

async fn wave(port: u16) -> (Vec<Outcome>, Duration) {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/datasets/orders/rows");
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(export(client.clone(), url.clone())))
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    (outcomes, started.elapsed())
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let rows: usize = if benchmarking {
        std::env::var("BENCH_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        2_000
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let database_url = support::database_url();
    support::seed_orders(rows);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // Phase 1: limits that admit every export.
    let admit_all = "[server]\nworkers = 2\n[database]\npool_size = 34\nacquire_timeout = \"60s\"\n\
                     [export]\nmax_concurrent = 32\n";
    let server = Server::start(root, admit_all, &database_url);
    let reference = runtime.block_on(export(
        reqwest::Client::new(),
        format!("http://127.0.0.1:{}/v1/datasets/orders/rows", server.port),
    ));
    assert!(
        matches!(reference, Outcome::Complete(n, _) if n == rows),
        "reference export: {reference:?}"
    );
    let (outcomes, took) = runtime.block_on(wave(server.port));
    let correct = outcomes.iter().filter(|o| **o == reference).count();
    println!(
        "concurrency: {CLIENTS} concurrent exports of {rows} rows, all admitted: {correct} complete and identical \
         to the reference in {:.1} s; pgspout peak RSS {:.1} MiB",
        took.as_secs_f64(),
        server.peak_rss_mib()
    );
    assert_eq!(correct, CLIENTS, "{outcomes:?}");
    drop(server);

    // Phase 2: the default limits.
    let server = Server::start(root, "[server]\nworkers = 2\n", &database_url);
    let (outcomes, took) = runtime.block_on(wave(server.port));
    let complete = outcomes.iter().filter(|o| **o == reference).count();
    let refused = outcomes.iter().filter(|o| **o == Outcome::Refused).count();
    println!(
        "concurrency: {CLIENTS} concurrent exports with default limits: {complete} complete and correct, {refused} \
         refused with 503 + Retry-After, {} otherwise, in {:.1} s; pgspout peak RSS {:.1} MiB",
        CLIENTS - complete - refused,
        took.as_secs_f64(),
        server.peak_rss_mib()
    );
    assert_eq!(complete + refused, CLIENTS, "{outcomes:?}");
}
