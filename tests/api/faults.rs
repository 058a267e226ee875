//! Postgres misbehaving: restarts during and between exports, and half-open connections.
//!
//! Restarts use a cluster of the test's own (created with `pg_createcluster` inside the `pg_virtualenv`
//! environment), so stopping it does not disturb the other tests' cluster.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pgspout::settings::Settings;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

use crate::helpers::{BIG_VIEW, RawResponse, TestDb, free_port, serve, settings_for, small_table, wait_until};

/// A PostgreSQL cluster owned by one test, dropped with it.
pub(crate) struct PrivateCluster {
    version: String,
    name: String,
    pub(crate) port: u16,
    data: PathBuf,
}

async fn run(program: &str, args: &[&str]) {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivateCluster {
    async fn create() -> PrivateCluster {
        PrivateCluster::create_with(&[]).await
    }

    /// A cluster started with these `pg_createcluster -o guc=value` options.
    pub(crate) async fn create_with(options: &[&str]) -> PrivateCluster {
        PrivateCluster::make(options, true).await
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), started, with these options.
    pub(crate) async fn replica_of(primary: &PrivateCluster, options: &[&str]) -> PrivateCluster {
        let replica = PrivateCluster::make(options, false).await;
        // pg_basebackup wants an empty directory, and must run as the clusters' owner (postgres, under root).
        for entry in std::fs::read_dir(&replica.data).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
        let owner = std::process::Command::new("stat")
            .args(["-c", "%U", replica.data.to_str().unwrap()])
            .output()
            .unwrap();
        let owner = String::from_utf8(owner.stdout).unwrap().trim().to_owned();
        let port = primary.port.to_string();
        let backup = [
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            replica.data.to_str().unwrap(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ];
        let mut as_owner = vec!["-u", owner.as_str(), "--"];
        as_owner.extend(backup);
        if owner == std::env::var("USER").unwrap_or_default() || owner != "postgres" {
            run(backup[0], &backup[1..]).await;
        } else {
            run("runuser", &as_owner).await;
        }
        replica.start().await;
        replica
    }

    async fn make(options: &[&str], start: bool) -> PrivateCluster {
        let root = std::env::var("PG_CLUSTER_CONF_ROOT")
            .expect("PG_CLUSTER_CONF_ROOT is unset: run the tests with scripts/test.sh (pg_virtualenv)");
        let version = std::env::var("PGVERSION").expect("pg_virtualenv sets PGVERSION");
        let port = free_port();
        let name = format!("faults{port}");
        // Inside pg_virtualenv's temporary directory, which is removed with it even if this test crashes.
        let data: PathBuf = PathBuf::from(root)
            .parent()
            .unwrap()
            .join("data")
            .join(&version)
            .join(&name);
        let port_text = port.to_string();
        let mut args = vec![
            version.as_str(),
            name.as_str(),
            "-p",
            &port_text,
            "-d",
            data.to_str().unwrap(),
        ];
        if start {
            args.push("--start");
        }
        for option in options {
            args.extend(["-o", option]);
        }
        args.extend(["--", "--auth-host=trust", "--auth-local=trust"]);
        run("pg_createcluster", &args).await;
        PrivateCluster {
            version,
            name,
            port,
            data,
        }
    }

    /// Replaces its `pg_hba.conf` and reloads it.
    pub(crate) async fn set_hba(&self, rules: &str) {
        let root = std::env::var("PG_CLUSTER_CONF_ROOT").unwrap();
        let path = PathBuf::from(root)
            .join(&self.version)
            .join(&self.name)
            .join("pg_hba.conf");
        std::fs::write(&path, rules).unwrap();
        run("pg_ctlcluster", &[&self.version, &self.name, "reload"]).await;
    }

    pub(crate) fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    pub(crate) async fn stop(&self) {
        run("pg_ctlcluster", &[&self.version, &self.name, "stop", "-m", "fast"]).await;
    }

    pub(crate) async fn start(&self) {
        run("pg_ctlcluster", &[&self.version, &self.name, "start"]).await;
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pg_dropcluster")
            .args([&self.version, &self.name, "--stop"])
            .status();
    }
}

/// Test settings with short connect and acquire timeouts, so faults show quickly.
fn settings(url: String, datasets: &[(&str, &str, Option<&str>)]) -> Settings {
    let mut settings = settings_for(url, datasets);
    settings.database.connect_timeout = Duration::from_secs(1);
    settings.database.acquire_timeout = Duration::from_secs(2);
    settings
}

/// A complete `small` export: its row count.
async fn export_small(address: &str) -> usize {
    let mut response = RawResponse::get(address, "/v1/datasets/small/rows", &[]).await;
    assert_eq!(response.status, 200);
    let (chunks, terminated) = response.read_to_end().await;
    assert!(terminated, "the export ends cleanly");
    chunks.concat().iter().filter(|b| **b == b'\n').count()
}

async fn status(address: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{address}{path}"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_postgres_restart_fails_running_exports_visibly_and_pgspout_recovers_by_itself() {
    let cluster = PrivateCluster::create().await;
    let client = cluster.client().await;
    client
        .batch_execute(&format!(
            "{BIG_VIEW}; CREATE TABLE small (id int PRIMARY KEY, label text); \
             INSERT INTO small SELECT g, 'row ' || g FROM generate_series(1, 500) g"
        ))
        .await
        .unwrap();
    drop(client);
    let address = serve(settings(
        cluster.url(),
        &[("big", "big", None), ("small", "small", Some("id"))],
    ))
    .await;
    assert_eq!(export_small(&address).await, 500);

    // During an export: it fails visibly.
    let mut running = RawResponse::get(&address, "/v1/datasets/big/rows", &[]).await;
    assert_eq!(running.status, 200);
    running.next_chunk().await.unwrap().expect("a first chunk");
    cluster.stop().await;
    let (_, terminated) = running.read_to_end().await;
    assert!(!terminated, "an export cut by the restart must not look complete");

    // While Postgres is down: a clean 503 with Retry-After, and not ready.
    let down = status(&address, "/v1/datasets/small/rows").await;
    assert_eq!(down.status(), 503);
    assert_eq!(
        down.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    assert!(down.headers().contains_key("retry-after"));
    assert_eq!(status(&address, "/readyz").await.status(), 503);

    cluster.start().await;
    let back = Instant::now();
    assert_eq!(export_small(&address).await, 500, "the first request after the restart");
    eprintln!("figure: first export after the restart: {:?}", back.elapsed());
    assert_eq!(status(&address, "/readyz").await.status(), 200);

    // Between exports: the pool's idle connections die with the restart and are not handed out.
    cluster.stop().await;
    cluster.start().await;
    let back = Instant::now();
    assert_eq!(
        export_small(&address).await,
        500,
        "the first request after a quiet restart"
    );
    eprintln!("figure: first export after a quiet restart: {:?}", back.elapsed());
}

/// A TCP proxy to Postgres that can freeze the connections it carries: they stay open but nothing passes, as
/// with a peer that vanished without closing (a half-open connection).
struct Proxy {
    port: u16,
    freeze: tokio::sync::watch::Sender<u64>,
    /// Frozen connections that pgspout has since closed.
    discarded: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (freeze, generation) = tokio::sync::watch::channel(0u64);
        let discarded = Arc::new(AtomicUsize::new(0));
        let counter = discarded.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut generation = generation.clone();
                let counter = counter.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let born = *generation.borrow_and_update();
                    let mut server = TcpStream::connect(&upstream).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                        _ = generation.wait_for(|g| *g > born) => {}
                    }
                    // Frozen: swallow whatever pgspout sends until it gives up on the connection.
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = client.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    drop(server);
                });
            }
        });
        Proxy {
            port,
            freeze,
            discarded,
        }
    }

    /// Freezes every connection open now; later ones pass normally.
    fn freeze(&self) {
        self.freeze.send_modify(|g| *g += 1);
    }
}

#[tokio::test]
async fn a_half_open_pooled_connection_is_detected_and_replaced_not_handed_out() {
    let db = TestDb::new().await;
    small_table(&db, 300).await;
    let host = std::env::var("PGHOST").unwrap();
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    let url = db
        .url()
        .replace(&format!("host={}", std::env::var("PGHOST").unwrap()), "host=127.0.0.1")
        .replace(&format!("port={port}"), &format!("port={}", proxy.port));
    let address = serve(settings(url, &[("small", "small", Some("id"))])).await;
    assert_eq!(export_small(&address).await, 300);

    // The pooled connection now leads nowhere: the next export must not hang on it.
    proxy.freeze();
    let started = Instant::now();
    let export = tokio::time::timeout(Duration::from_secs(15), export_small(&address))
        .await
        .expect("an export on a half-open pooled connection hung");
    assert_eq!(export, 300);
    let took = started.elapsed();
    eprintln!("figure: export after the pooled connection went half-open: {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // And the dead connection was closed, not kept.
    wait_until(Duration::from_secs(30), || async {
        proxy.discarded.load(Ordering::SeqCst) == 1
    })
    .await;
}
