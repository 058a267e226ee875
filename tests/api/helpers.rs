//! Test harness: a fresh database per test, pgspout on a random port, and a raw HTTP/1.1 client that sees
//! chunk framing and can stall or hang up mid-stream.

use std::time::{Duration, Instant};

use pgspout::settings::{DatasetSettings, Settings};
use pgspout::startup::Application;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

/// The cluster named by the PG* environment (scripts/test.sh runs the tests inside `pg_virtualenv`).
fn cluster(database: &str) -> tokio_postgres::Config {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| {
        panic!("no PostgreSQL: PGHOST is not set. Run the tests with scripts/test.sh, which starts a throwaway cluster")
    });
    let mut config = tokio_postgres::Config::new();
    config.host(&host).dbname(database);
    config.port(std::env::var("PGPORT").map_or(5432, |p| p.parse().expect("PGPORT is a port number")));
    config.user(std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()));
    if let Ok(password) = std::env::var("PGPASSWORD") {
        config.password(password);
    }
    config
}

async fn connect(config: &tokio_postgres::Config) -> Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL ({e}); run the tests with scripts/test.sh"));
    tokio::spawn(connection);
    client
}

/// A database of its own for one test, dropped at the end.
pub(crate) struct TestDb {
    pub(crate) name: String,
    pub(crate) client: Client,
    config: tokio_postgres::Config,
}

impl TestDb {
    pub(crate) async fn new() -> TestDb {
        let name = format!("pgspout_test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&cluster("postgres")).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let config = cluster(&name);
        let client = connect(&config).await;
        TestDb { name, client, config }
    }

    /// Another connection to the test database (for a transaction of the test's own beside `client`).
    pub(crate) async fn connect(&self) -> Client {
        connect(&self.config).await
    }

    /// A libpq key=value string for pgspout.
    pub(crate) fn url(&self) -> String {
        self.url_on(&std::env::var("PGHOST").unwrap())
    }

    /// A libpq key=value string for pgspout, reaching the cluster as `host`.
    pub(crate) fn url_on(&self, host: &str) -> String {
        let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
        let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
        let password = std::env::var("PGPASSWORD").unwrap_or_default();
        format!(
            "host={host} port={port} user={user} password={password} dbname={}",
            self.name
        )
    }

    /// The backends pgspout holds in this database for requests and jobs: (pid, state, wait_event,
    /// application_name). Its catalog-reload listener is not one of them.
    pub(crate) async fn pgspout_backends(&self) -> Vec<(i32, String, Option<String>, String)> {
        self.client
            .query(
                "SELECT pid, coalesce(state, ''), wait_event, application_name FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'pgspout%' \
                   AND application_name <> 'pgspout listener'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// Whether a batch of job `id` is running in Postgres: its backend is active under the job's name. The event
    /// to wait for when a test needs a job mid-batch, rather than a checkpoint a loaded machine may take minutes
    /// to reach on the endless view.
    pub(crate) async fn job_batch_running(&self, id: &str) -> bool {
        let name = format!("pgspout job:{id}");
        self.pgspout_backends()
            .await
            .iter()
            .any(|(_, state, _, application)| *application == name && state == "active")
    }

    /// The first column of every row `sql` returns, in order.
    pub(crate) async fn column<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let rows = self
            .client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Whether every pgspout connection to this database is encrypted, per `pg_stat_ssl`; `None` with none.
    pub(crate) async fn pgspout_ssl(&self) -> Option<bool> {
        self.client
            .query_one(
                "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.datname = current_database() AND a.application_name LIKE 'pgspout%'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until pgspout's reload listener is listening and has done the reload it does on starting:
    /// its last statement no longer the `LISTEN`, and idle for 200 ms (the reload's statements follow each
    /// other closely). Only then does a change wait for a notification.
    pub(crate) async fn listener_caught_up(&self) {
        wait_for(Duration::from_secs(60), || async {
            self.client
                .query_opt(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                       AND application_name = 'pgspout listener' AND state = 'idle' AND query NOT LIKE 'LISTEN%' \
                       AND state_change < clock_timestamp() - interval '200 milliseconds'",
                    &[],
                )
                .await
                .unwrap()
                .map(|_| ())
        })
        .await
    }

    /// The pid of pgspout's one active export, waiting for it to appear.
    pub(crate) async fn active_export(&self) -> i32 {
        wait_for(Duration::from_secs(30), || async {
            self.pgspout_backends()
                .await
                .into_iter()
                .find(|b| b.1 == "active")
                .map(|b| b.0)
        })
        .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let admin = connect(&cluster("postgres")).await;
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                })
        })
        .join();
        let _ = &self.config;
    }
}

/// pgspout running in this process.
pub(crate) struct TestApp {
    pub(crate) address: String,
    pub(crate) db: TestDb,
}

/// Settings for a test: one worker, the given datasets, everything else default.
pub(crate) fn settings(db: &TestDb, datasets: &[(&str, &str, Option<&str>)]) -> Settings {
    settings_for(db.url(), datasets)
}

/// Settings for a test against the database at `url`: one worker, the given datasets, everything else default.
pub(crate) fn settings_for(url: String, datasets: &[(&str, &str, Option<&str>)]) -> Settings {
    let mut settings = Settings::parse("").unwrap();
    settings.server.listen = "127.0.0.1:0".into();
    settings.server.workers = Some(1);
    settings.database.url = Some(url);
    settings.datasets = datasets
        .iter()
        .map(|(name, table, key)| DatasetSettings {
            name: (*name).into(),
            table: (*table).into(),
            key: key.map(Into::into),
            columns: None,
            consistency: Default::default(),
            aggregates: None,
        })
        .collect();
    settings
}

pub(crate) async fn spawn_app(db: TestDb, datasets: &[(&str, &str, Option<&str>)]) -> TestApp {
    let settings = settings(&db, datasets);
    spawn_with(db, settings).await
}

pub(crate) async fn spawn_with(db: TestDb, settings: Settings) -> TestApp {
    let address = serve(settings).await;
    TestApp { address, db }
}

/// Runs pgspout with `settings` in this process until the test ends; returns its address.
pub(crate) async fn serve(settings: Settings) -> String {
    let app = Application::build(settings).await.expect("pgspout starts");
    let address = format!("127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    address
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub(crate) async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    pub(crate) async fn raw(&self, path: &str, headers: &[(&str, &str)]) -> RawResponse {
        RawResponse::get(&self.address, path, headers).await
    }
}

/// A response read by hand from the socket, so tests see HTTP chunks and control when (and whether) to read.
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
}

impl RawResponse {
    pub(crate) async fn get(address: &str, path: &str, headers: &[(&str, &str)]) -> RawResponse {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status = line.split(' ').nth(1).expect("a status line").parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        RawResponse {
            status,
            headers,
            reader,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The next chunk's data; `Ok(None)` at the terminating chunk; `Err` when the connection ends before it.
    pub(crate) async fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).await?;
        data.truncate(size);
        Ok((size > 0).then_some(data))
    }

    /// Every chunk to the end: (chunks, whether the terminating chunk arrived).
    pub(crate) async fn read_to_end(&mut self) -> (Vec<Vec<u8>>, bool) {
        let mut chunks = Vec::new();
        loop {
            match self.next_chunk().await {
                Ok(Some(chunk)) => chunks.push(chunk),
                Ok(None) => return (chunks, true),
                Err(_) => return (chunks, false),
            }
        }
    }

    /// The body for a non-chunked (e.g. problem+json) response.
    pub(crate) async fn read_body(&mut self) -> Vec<u8> {
        let length: usize = self
            .header("content-length")
            .expect("a content-length")
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await.unwrap();
        body
    }
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` every 50 ms until it holds; panics after `limit`.
pub(crate) async fn wait_until<F, Fut>(limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(limit, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Polls `probe` every 50 ms until it yields a value; panics after `limit`.
pub(crate) async fn wait_for<T, F, Fut>(limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < limit, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An endless-looking dataset: 10 million ~150-byte rows, no storage needed. The set-returning function sits
/// in a select list (ProjectSet), which streams; in FROM it would be materialized before the first row.
pub(crate) const BIG_VIEW: &str = "CREATE VIEW big AS SELECT g AS id, 'customer ' || g AS name, \
     repeat('x', 100) AS pad, (g * 1.25)::numeric(12,2) AS amount \
     FROM (SELECT generate_series(1, 10000000) AS g) AS series";

/// The Python with DuckDB, pyarrow, polars and pandas that scripts/test.sh prepares.
pub(crate) fn python() -> String {
    std::env::var("PGSPOUT_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("PGSPOUT_TEST_PYTHON is not set: run the tests with scripts/test.sh"))
}

/// A small table of `n` rows.
pub(crate) async fn small_table(db: &TestDb, n: i32) {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE small (id int PRIMARY KEY, label text); \
             INSERT INTO small SELECT g, 'row ' || g FROM generate_series(1, {n}) g"
        ))
        .await
        .unwrap();
}

/// The pgspout binary running as a child process on a free port, for tests of the process itself
/// (signals, memory). Killed when dropped.
pub(crate) struct ServerProcess {
    pub(crate) child: std::process::Child,
    pub(crate) base: String,
    dir: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts `pgspout serve` with `config` (TOML, without `database.url`) against `db`; waits until healthy.
    pub(crate) async fn start(db: &TestDb, config: &str) -> ServerProcess {
        ServerProcess::start_with(db, config, &[("RUST_LOG", "warn")], std::process::Stdio::inherit()).await
    }

    /// As [`ServerProcess::start`], with more environment variables and stderr sent to `stderr`.
    pub(crate) async fn start_with(
        db: &TestDb,
        config: &str,
        env: &[(&str, &str)],
        stderr: impl Into<std::process::Stdio>,
    ) -> ServerProcess {
        let dir = std::env::temp_dir().join(format!("pgspout-process-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgspout.toml");
        std::fs::write(&path, config).unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgspout"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("DATABASE_URL", db.url())
            .env("PGSPOUT_LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let base = format!("127.0.0.1:{port}");
        let health = format!("http://{base}/healthz");
        wait_until(Duration::from_secs(30), || async {
            reqwest::get(&health).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        ServerProcess { child, base, dir }
    }

    /// Peak resident memory so far, in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Validates an OpenAPI `document` with `openapi-spec-validator` (from the venv scripts/test.sh prepares), and
/// checks each `[pattern, value, matches]` of `checks` with Python's `re`, which reads these patterns as
/// ECMA-262 does.
pub(crate) async fn check_openapi(document: &serde_json::Value, checks: serde_json::Value) {
    let python = std::env::var("PGSPOUT_TEST_PYTHON").expect("PGSPOUT_TEST_PYTHON: run scripts/test.sh");
    let path = std::env::temp_dir().join(format!("pgspout-openapi-{}.json", uuid::Uuid::new_v4()));
    let given = serde_json::json!({ "document": document, "checks": checks });
    std::fs::write(&path, given.to_string()).unwrap();
    let output = tokio::process::Command::new(python)
        .args([
            "-c",
            "import json, re, sys\n\
             from openapi_spec_validator import validate\n\
             given = json.load(open(sys.argv[1]))\n\
             validate(given['document'])\n\
             for pattern, value, matches in given['checks']:\n\
             \x20   assert bool(re.search(pattern, value)) == matches, (pattern, value)\n",
        ])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// The value of the metric `series` (name and labels) of the instance at `base`, 0 if it has none yet.
pub(crate) async fn metric(base: &str, series: &str) -> i64 {
    let metrics = reqwest::get(format!("http://{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}
