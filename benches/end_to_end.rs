//! End-to-end benchmark: pgspout against `psql \copy` on the same table, in the same run.
//!
//! Run with `scripts/bench.sh` (it provides a throwaway cluster through the PG* variables). Seeds `orders`
//! (BENCH_ROWS rows, default 1,000,000), starts the release `pgspout` binary, then times, interleaved over
//! BENCH_RUNS rounds (default 5), each client to /dev/null and prints median wall times as ratios to psql,
//! the CPU time pgspout and the Postgres cluster spent per million rows, plus pgspout's peak RSS (in the
//! text formats, then in all). An export through one connection cannot take less time than its backend's
//! CPU time. Ratios, not absolute times, are what compare across noisy machines. With BENCH_JOB_ROWS, it then
//! reseeds `orders` with that many rows and times a background csv job of it at parallelism 1, 2 and 4
//! against `psql \copy`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COLUMNS: &str = "id, customer_name, email, amount, category, created_at, note";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run(program: &str, args: &[String]) -> Duration {
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

    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, flight_port) = (free_port(), free_port());
    let mut server = Command::new(env!("CARGO_BIN_EXE_pgspout"))
        .args(["serve", "--config", &format!("{root}/config/pgspout.toml")])
        .env("DATABASE_URL", &database_url)
        .env("PGSPOUT_LISTEN", format!("127.0.0.1:{port}"))
        .env("PGSPOUT_SERVER__FLIGHT_LISTEN", format!("127.0.0.1:{flight_port}"))
        // A job starts within 0.1 s of its POST, not the shipped second: the job bench times from the POST.
        .env("PGSPOUT_JOBS__POLL_INTERVAL", "100ms")
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
        Case::new("curl", args)
    };
    let mut cases: Vec<(&str, Case)> = vec![
        (
            "psql \\copy csv",
            Case::new("psql", ["-X", "-q", "-c", &copy].map(String::from).to_vec()),
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
        ("pgspout parquet", curl(format!("{base}?format=parquet"), None)),
    ];
    let columnar = cases.len() - 2;
    // Time to an Arrow table in Python, against the readers a pipeline would pick instead (BENCH_PYTHON: a
    // Python with pyarrow, DuckDB's postgres scanner, ConnectorX and ADBC; scripts/bench.sh makes one).
    if let Ok(python) = std::env::var("BENCH_PYTHON") {
        let script = format!("{root}/benches/to_arrow.py");
        let query = format!("SELECT {COLUMNS} FROM orders ORDER BY id");
        let postgres = postgres_url();
        let readers = [
            ("python: pgspout arrow", "pgspout", format!("{base}?format=arrow")),
            (
                "python: pgspout flight",
                "flight",
                format!("grpc://127.0.0.1:{flight_port}"),
            ),
            (
                "python: pgspout parquet",
                "pgspout-parquet",
                format!("{base}?format=parquet"),
            ),
            ("python: duckdb scanner", "duckdb", postgres.clone()),
            ("python: connectorx x1", "connectorx1", postgres.clone()),
            ("python: connectorx x2", "connectorx2", postgres.clone()),
            ("python: adbc", "adbc", postgres),
        ];
        for (name, reader, source) in readers {
            let args = vec![script.clone(), reader.to_owned(), source, query.clone()];
            cases.push((name, Case::reported(&python, args)));
        }
    }
    let ticks = clock_ticks();
    // One warm-up round fills caches for everyone alike.
    let mut text_peak = 0;
    for (i, (_, case)) in cases.iter().enumerate() {
        if i == columnar {
            text_peak = peak_rss_kib(server.id());
        }
        case.run();
    }
    let mut times = vec![Vec::new(); cases.len()];
    let mut cpu = vec![Vec::new(); cases.len()];
    let mut backend = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, (_, case)) in cases.iter().enumerate() {
            let (before, backend_before) = (cpu_ticks(server.id()), postgres_ticks());
            times[i].push(case.run());
            cpu[i].push(Duration::from_secs_f64(
                (cpu_ticks(server.id()) - before) as f64 / ticks,
            ));
            backend[i].push(Duration::from_secs_f64(
                (postgres_ticks() - backend_before) as f64 / ticks,
            ));
        }
    }
    let peak = peak_rss_kib(server.id());
    // Last: it reseeds `orders`.
    let job_rows = if benchmarking {
        env_number("BENCH_JOB_ROWS", 0)
    } else {
        rows
    };
    let jobs = (job_rows > 0).then(|| parallel_jobs(port, server.id(), job_rows, &cases[0].1, benchmarking));
    let _ = server.kill();
    let _ = server.wait();

    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let cpu: Vec<Duration> = cpu.into_iter().map(median).collect();
    let backend: Vec<Duration> = backend.into_iter().map(median).collect();
    let psql = medians[0].as_secs_f64();
    let millions = rows as f64 / 1e6;
    println!("end_to_end: {rows} rows, median of {rounds} interleaved rounds");
    println!(
        "  {:<24} {:>8}   {:>10}   CPU s per million rows: pgspout   Postgres",
        "", "time", "ratio"
    );
    for ((((name, _), time), cpu), backend) in cases.iter().zip(&medians).zip(&cpu).zip(&backend) {
        println!(
            "  {name:<24} {:>8.3} s   {:>5.2}x psql   {:>31.2}   {:>8.2}",
            time.as_secs_f64(),
            time.as_secs_f64() / psql,
            cpu.as_secs_f64() / millions,
            backend.as_secs_f64() / millions
        );
    }
    println!(
        "  pgspout peak RSS: {:.1} MiB in the text formats, {:.1} MiB in all",
        text_peak as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    if let Some((psql, jobs)) = jobs {
        println!("background csv job of {job_rows} rows, from POST to completed (psql \\copy csv: {psql:.3} s)");
        println!("                      time        ratio   pgspout CPU s per million rows   machine busy");
        for job in jobs {
            let seconds = job.time.as_secs_f64();
            println!(
                "  parallelism {}   {seconds:>8.3} s   {:>5.2}x psql   {:>5.2}                            {:>3.0} %",
                job.parallelism,
                seconds / psql,
                job.cpu.as_secs_f64() / (job_rows as f64 / 1e6),
                job.busy * 100.0
            );
        }
    }
}

/// Background csv jobs of the whole `orders` table, reseeded with `rows` rows, at parallelism 1, 2 and 4
/// (1 and 2 in a smoke run), each timed from its `POST` until it is completed; with the median time of
/// `copy` (`psql \copy`) on the same table. Each job's file is deleted after it.
fn parallel_jobs(port: u16, pid: u32, rows: usize, copy: &Case, benchmarking: bool) -> (f64, Vec<JobRun>) {
    eprintln!("seeding {rows} orders for the jobs…");
    support::seed_orders(rows);
    let psql = median((0..3).map(|_| copy.run()).collect()).as_secs_f64();
    let exports = format!("http://127.0.0.1:{port}/v1/exports");
    let curl = |args: &[&str]| -> serde_json::Value {
        let output = Command::new("curl")
            .args(["-sS", "--fail"])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(output.status.success(), "curl {args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    };
    let levels: &[u32] = if benchmarking { &[1, 2, 4] } else { &[1, 2] };
    let mut times = Vec::new();
    for &parallelism in levels {
        let body = serde_json::json!({ "dataset": "orders", "format": "csv", "parallelism": parallelism });
        let started = Instant::now();
        let (cpu_before, machine_before) = (cpu_ticks(pid), machine_ticks());
        let created = curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            &exports,
        ]);
        let status_url = format!("{exports}/{}", created["id"].as_str().expect("an id"));
        let status = loop {
            let status = curl(&[&status_url]);
            match status["status"].as_str() {
                Some("completed") => break status,
                Some("queued" | "running") => std::thread::sleep(Duration::from_millis(20)),
                _ => panic!("the job did not complete: {status}"),
            }
        };
        let time = started.elapsed();
        let (busy, total) = machine_ticks();
        times.push(JobRun {
            parallelism,
            time,
            cpu: Duration::from_secs_f64((cpu_ticks(pid) - cpu_before) as f64 / clock_ticks()),
            busy: (busy - machine_before.0) as f64 / (total - machine_before.1) as f64,
        });
        assert_eq!(status["rows_written"], rows, "{status}");
        eprintln!(
            "job at parallelism {parallelism}: {} parts",
            status["parts"].as_array().map_or(1, Vec::len)
        );
        curl(&["-X", "DELETE", &status_url]);
    }
    (psql, times)
}

/// One client run: a command whose wall time counts, or one that reports its own time (`seconds rows` on
/// stdout), as the Python readers do to leave their imports and connection set-up out.
struct Case {
    program: String,
    args: Vec<String>,
    reported: bool,
}

impl Case {
    fn new(program: &str, args: Vec<String>) -> Case {
        Case {
            program: program.to_owned(),
            args,
            reported: false,
        }
    }

    fn reported(program: &str, args: Vec<String>) -> Case {
        Case {
            reported: true,
            ..Case::new(program, args)
        }
    }

    fn run(&self) -> Duration {
        if !self.reported {
            return run(&self.program, &self.args);
        }
        let output = Command::new(&self.program)
            .args(&self.args)
            .stderr(Stdio::inherit())
            .output()
            .expect("the reader runs");
        assert!(output.status.success(), "{} {:?} failed", self.program, self.args);
        let text = String::from_utf8_lossy(&output.stdout);
        let seconds: f64 = text
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{:?} printed {text:?}", self.args));
        Duration::from_secs_f64(seconds)
    }
}

/// The same cluster as a `postgresql://` URL (for the Python readers the end-to-end bench compares).
fn postgres_url() -> String {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let user = var("PGUSER", "postgres");
    let password = var("PGPASSWORD", "");
    let credentials = if password.is_empty() {
        user
    } else {
        format!("{user}:{password}")
    };
    format!(
        "postgresql://{credentials}@{}:{}/{}",
        var("PGHOST", "localhost"),
        var("PGPORT", "5432"),
        var("PGDATABASE", "postgres")
    )
}

/// One timed job: its parallelism, wall time, pgspout's CPU time, and how busy the machine's CPUs were.
struct JobRun {
    parallelism: u32,
    time: Duration,
    cpu: Duration,
    busy: f64,
}

/// The machine's busy and total CPU time so far (all CPUs, in clock ticks), from the first line of
/// `/proc/stat`: busy is all but idle and iowait.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let total: u64 = fields.iter().sum();
    (total - fields[3] - fields[4], total)
}

/// The kernel's clock ticks per second, in which /proc reports CPU time.
fn clock_ticks() -> f64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().expect("getconf runs");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}

/// The CPU time of every `postgres` process, in clock ticks, including that of backends which have exited
/// (the postmaster reaps them and counts their time as its children's): how much the cluster worked for
/// a client, whichever connections it opened. It counts every cluster on the machine: run the bench alone.
fn postgres_ticks() -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        // A process may exit while this reads.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        // utime, stime, cutime and cstime: the 12th to 15th fields after the command name.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        total += fields[11..15]
            .iter()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .sum::<u64>();
    }
    total
}

/// The user and system CPU time `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name: state is the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
