//! End-to-end benchmark: pgspout against `psql \copy` on the same table, in the same run.
//!
//! Run with `scripts/bench.sh` (it provides a throwaway cluster through the PG* variables). Seeds `orders`
//! (BENCH_ROWS rows, default 1,000,000), starts the release `pgspout` binary, then times, interleaved over
//! BENCH_RUNS rounds (default 5), each client to /dev/null and prints median wall times as ratios to psql,
//! plus pgspout's peak RSS (in the text formats, then in all). Ratios, not absolute times, are what compare
//! across noisy machines.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COLUMNS: &str = "id, customer_name, email, amount, category, created_at, note";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run(program: &str, args: &[impl AsRef<std::ffi::OsStr> + std::fmt::Debug]) -> Duration {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("the client runs");
    assert!(status.success(), "{program} {args:?} failed: {status}");
    started.elapsed()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` this is a quick smoke run that keeps the bench working.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let rows = if benchmarking {
        env_number("BENCH_ROWS", 1_000_000)
    } else {
        5_000
    };
    let rounds = if benchmarking { env_number("BENCH_RUNS", 5) } else { 1 };
    let root = env!("CARGO_MANIFEST_DIR");
    eprintln!("seeding {rows} orders…");
    let database_url = support::database_url();
    support::seed_orders(rows);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_pgspout"))
        .args(["serve", "--config", &format!("{root}/config/pgspout.toml")])
        .env("DATABASE_URL", &database_url)
        .env("PGSPOUT_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("pgspout starts");
    let base = format!("http://127.0.0.1:{port}/v1/datasets/orders/rows");
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &format!("http://127.0.0.1:{port}/readyz")])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(ready, "pgspout did not become ready");

    let copy = format!("\\copy (SELECT {COLUMNS} FROM orders ORDER BY id) TO /dev/null CSV");
    let curl = |url: String, coding: Option<&str>| {
        let mut args: Vec<String> = ["-sS", "--fail", "-o", "/dev/null"].map(String::from).to_vec();
        if let Some(coding) = coding {
            args.extend(["-H".to_owned(), format!("Accept-Encoding: {coding}")]);
        }
        args.push(url);
        ("curl", args)
    };
    let cases: Vec<(&str, (&str, Vec<String>))> = vec![
        (
            "psql \\copy csv",
            ("psql", ["-X", "-q", "-c", &copy].map(String::from).to_vec()),
        ),
        ("pgspout ndjson", curl(base.clone(), None)),
        (
            "pgspout ndjson chunked",
            curl(format!("{base}?consistency=chunked"), None),
        ),
        ("pgspout csv", curl(format!("{base}?format=csv"), None)),
        ("pgspout ndjson+gzip", curl(base.clone(), Some("gzip"))),
        ("pgspout ndjson+zstd", curl(base.clone(), Some("zstd"))),
        ("pgspout json", curl(format!("{base}?format=json"), None)),
        ("pgspout sse", curl(format!("{base}?format=sse"), None)),
        // Columnar formats last: the warm-up reads the text formats' peak memory before they run.
        ("pgspout arrow", curl(format!("{base}?format=arrow"), None)),
    ];
    let columnar = cases
        .iter()
        .position(|(name, _)| *name == "pgspout arrow")
        .expect("listed above");
    // One warm-up round fills caches for everyone alike.
    let mut text_peak = 0;
    for (i, (_, (program, args))) in cases.iter().enumerate() {
        if i == columnar {
            text_peak = peak_rss_kib(server.id());
        }
        run(program, args);
    }
    let mut times = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, (_, (program, args))) in cases.iter().enumerate() {
            times[i].push(run(program, args));
        }
    }
    let peak = peak_rss_kib(server.id());
    let _ = server.kill();
    let _ = server.wait();

    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let psql = medians[0].as_secs_f64();
    println!("end_to_end: {rows} rows, median of {rounds} interleaved rounds");
    for ((name, _), time) in cases.iter().zip(&medians) {
        println!(
            "  {name:<22} {:>8.3} s   {:>5.2}x psql",
            time.as_secs_f64(),
            time.as_secs_f64() / psql
        );
    }
    println!(
        "  pgspout peak RSS: {:.1} MiB in the text formats, {:.1} MiB in all",
        text_peak as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
