//! Export jobs in object storage (`jobs.storage`), against a real S3 server: s3s-fs (files on disk behind
//! s3s, which checks SigV4 and presigned signatures and refuses parts under 5 MiB), served on a thread of its
//! own in this process, with every request it receives logged.
//!
//! As in the parallel jobs' tests, a job is held mid-way by an `ACCESS EXCLUSIVE` lock the test takes on
//! its table: each batch is a statement that waits for it, and no part is being uploaded while it waits.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_postgres::Client;

use crate::helpers::{ServerProcess, TestDb, metric, wait_for};
use crate::jobs::{create_ok, decompress, digest, rows_digest, status, temp_dir, wait_completed};

const ACCESS_KEY: &str = "pgspout-test";
const SECRET_KEY: &str = "pgspout-test-secret-access-key";
const BUCKET: &str = "exports";
/// S3's smallest part, which the tests' uploads use.
const PART: usize = 5 << 20;

/// An s3s-fs server; its files are removed when dropped (its thread idles until the tests end).
struct S3 {
    address: String,
    root: PathBuf,
    /// "METHOD path?query" of each request, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl S3 {
    fn start() -> S3 {
        let root = temp_dir("s3");
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = std::sync::mpsc::channel();
        let (log, files) = (requests.clone(), root.clone());
        // A runtime of its own: a test blocking its thread (waiting for a child process) must not stall it.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut builder = s3s::service::S3ServiceBuilder::new(s3s_fs::FileSystem::new(&files).unwrap());
                builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = builder.build();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                sender.send(listener.local_addr().unwrap().to_string()).unwrap();
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let (service, log) = (service.clone(), log.clone());
                    let logged = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        log.lock()
                            .unwrap()
                            .push(format!("{} {}", request.method(), request.uri()));
                        hyper::service::Service::call(&service, request)
                    });
                    tokio::spawn(async move {
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                        let _ = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(socket), logged)
                            .await;
                    });
                }
            });
        });
        let address = receiver.recv_timeout(Duration::from_secs(30)).unwrap();
        S3 {
            address,
            root,
            requests,
        }
    }

    /// The `[jobs]` section for this server, under `prefix`, with `extra` keys.
    fn config(&self, prefix: &str, extra: &str) -> String {
        format!(
            "[jobs]\nstorage = \"s3://{BUCKET}/{prefix}\"\nlease = \"6s\"\npoll_interval = \"100ms\"\n{extra}\n\
             [jobs.s3]\nendpoint = \"http://{}\"\npart_size = {PART}\n\n\
             [[datasets]]\nname = \"orders\"\ntable = \"orders\"\nkey = \"id\"\n",
            self.address
        )
    }

    /// The requests so far.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The object files in the bucket under `prefix` whose names start with `name`.
    fn objects(&self, prefix: &str, name: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.root.join(BUCKET).join(prefix)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(name))
            .map(|e| e.path())
            .collect()
    }

    /// The files of multipart uploads in progress (s3s-fs keeps them at its root).
    fn open_uploads(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload"))
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The credentials pgspout reads, as every AWS tool does.
const AWS_ENV: [(&str, &str); 4] = [
    ("RUST_LOG", "warn"),
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ("AWS_REGION", "us-east-1"),
];

async fn start(db: &TestDb, config: &str) -> ServerProcess {
    ServerProcess::start_with(db, config, &AWS_ENV, std::process::Stdio::inherit()).await
}

/// `n` orders of about 600 bytes each as NDJSON: 9,000 make a file of about 5 MiB, one part.
async fn wide_orders(db: &TestDb, n: i32) {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text, amount numeric(12,2), note text); \
             INSERT INTO orders SELECT g, 'customer ' || (g % 1000), (g % 10000) / 7.0, \
               CASE WHEN g % 13 = 0 THEN NULL ELSE repeat(md5(g::text), 16) END \
             FROM generate_series(1, {n}) g"
        ))
        .await
        .unwrap();
}

async fn lock_orders(locker: &Client) {
    locker
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
}

/// The job's checkpoint: rows written, its upload's id and the number of its parts.
async fn checkpoint(db: &TestDb, id: &str) -> (i64, Option<String>, usize, String) {
    let id: uuid::Uuid = id.parse().unwrap();
    let row = db
        .client
        .query_one(
            "SELECT rows_written, upload_id, coalesce(cardinality(upload_etags), 0), status \
             FROM pgspout.export_jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get::<_, i32>(2) as usize, row.get(3))
}

/// Waits until the job's checkpoint records more than `parts` parts, then takes the lock. `None` when
/// the job completed before the lock was granted (its batches go on until then).
async fn hold_after(db: &TestDb, locker: &Client, id: &str, parts: usize) -> Option<(i64, String, usize)> {
    wait_for(Duration::from_secs(120), || async {
        let (_, _, recorded, status) = checkpoint(db, id).await;
        assert_ne!(status, "failed");
        (recorded > parts || status == "completed").then_some(())
    })
    .await;
    lock_orders(locker).await;
    let (rows, upload, recorded, status) = checkpoint(db, id).await;
    if status == "completed" {
        locker.batch_execute("COMMIT").await.unwrap();
        return None;
    }
    Some((rows, upload.unwrap(), recorded))
}

/// A job on all of `orders`, held by the lock once it has checkpointed a part: its id and checkpoint. Should
/// a job finish before the lock is granted, another is made (at most three).
async fn held_job(db: &TestDb, locker: &Client, base: &str) -> (String, (i64, String, usize)) {
    for _ in 0..3 {
        let id = create_ok(base, json!({ "dataset": "orders" })).await;
        if let Some(held) = hold_after(db, locker, &id, 0).await {
            return (id, held);
        }
    }
    panic!("no attempt caught the job mid-upload");
}

/// The part numbers of the `UploadPart` requests among `requests`, with their upload ids.
fn part_uploads(requests: &[String]) -> Vec<(u32, String)> {
    requests
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("partNumber="))
        .map(|r| {
            let query = r.split_once('?').unwrap().1;
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
            let get = |name: &str| pairs.iter().find(|(k, _)| k == name).unwrap().1.clone();
            (get("partNumber").parse().unwrap(), get("uploadId"))
        })
        .collect()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_job_killed_twice_mid_upload_continues_its_upload_and_its_object_equals_rows() {
    let db = TestDb::new().await;
    // About 23 MiB of NDJSON: four parts of 5 MiB and a last one.
    wide_orders(&db, 40_000).await;
    let s3 = S3::start();
    let config = s3.config("runs", "batch_rows = 1000\nmax_running = 1");
    let mut server = start(&db, &config).await;
    let locker = db.connect().await;

    // Killed once it has checkpointed a part, and again once it has checkpointed another: each time
    // while the lock holds its next batch, so its checkpoint cannot move.
    let (id, first) = held_job(&db, &locker, &server.base).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (rows_1, upload, parts_1) = first;
    let killed_1 = s3.requests().len();
    eprintln!("figure: first kill -9 at {rows_1} rows, {parts_1} part(s) checkpointed");
    locker.batch_execute("COMMIT").await.unwrap();

    server = start(&db, &config).await;
    let Some((rows_2, upload_2, parts_2)) = hold_after(&db, &locker, &id, parts_1).await else {
        panic!("the job completed before the second kill (about 20 batches after the part it waited for)");
    };
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let killed_2 = s3.requests().len();
    eprintln!("figure: second kill -9 at {rows_2} rows, {parts_2} part(s) checkpointed");
    assert_eq!(upload_2, upload, "the second run continued the first run's upload");
    locker.batch_execute("COMMIT").await.unwrap();

    server = start(&db, &config).await;
    let done = wait_completed(&server.base, std::slice::from_ref(&id), Duration::from_secs(120)).await;
    assert_eq!(done[0]["rows_written"], 40_000, "{}", done[0]);
    // Each run after a kill wrote only the rows after the checkpoint it continued from.
    assert_eq!(metric(&server.base, "pgspout_job_rows_total").await, 40_000 - rows_2);

    // One upload, and no part a checkpoint recorded was sent again.
    let requests = s3.requests();
    let uploads = part_uploads(&requests);
    assert!(uploads.iter().all(|(_, u)| *u == upload), "{uploads:?}");
    let count = |range: std::ops::Range<usize>, number: usize| {
        part_uploads(&requests[range])
            .iter()
            .filter(|(n, _)| *n as usize == number)
            .count()
    };
    for number in 1..=parts_2 {
        assert_eq!(
            count(killed_2..requests.len(), number),
            0,
            "part {number} (checkpointed before the second kill) was uploaded again"
        );
    }
    for number in 1..=parts_1 {
        assert_eq!(
            count(killed_1..requests.len(), number),
            0,
            "part {number} (checkpointed before the first kill) was uploaded again"
        );
    }
    let last = uploads.iter().map(|(n, _)| *n).max().unwrap();
    assert!(last >= 4, "{uploads:?}");

    // The download is a redirect to a presigned URL; the object, read through it, equals `/rows`.
    let response = no_redirects()
        .get(format!("http://{}/v1/exports/{id}/download", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("http://{}/{BUCKET}/runs/{id}.ndjson?", s3.address)),
        "{location}"
    );
    assert!(
        location.contains("X-Amz-Signature=") && location.contains("X-Amz-Expires=900"),
        "{location}"
    );
    let object = reqwest::get(&location).await.unwrap();
    assert_eq!(object.status(), 200);
    assert_eq!(object.headers()["content-type"], "application/x-ndjson");
    let object = object.bytes().await.unwrap();
    assert_eq!(done[0]["bytes_written"], object.len());
    assert_eq!(digest(&object), rows_digest(&server.base, "").await);
    // Without the signature the store refuses it.
    let unsigned = reqwest::get(location.split_once('?').unwrap().0).await.unwrap();
    assert_eq!(unsigned.status(), 403);
    drop(server);
}

#[tokio::test]
async fn object_storage_proxies_ranges_aborts_a_cancelled_upload_and_deletes_objects() {
    let db = TestDb::new().await;
    wide_orders(&db, 20_000).await;
    let s3 = S3::start();
    let config = s3.config("proxied/", "batch_rows = 1000\nmax_running = 1\ndownload = \"proxy\"");
    let server = start(&db, &config).await;
    let base = &server.base;

    // A small gzip job: one part, the last, under 5 MiB.
    let small = create_ok(
        base,
        json!({ "dataset": "orders", "compression": "gzip", "query": "id=lte.500" }),
    )
    .await;
    let done = wait_completed(base, std::slice::from_ref(&small), Duration::from_secs(60)).await;
    let url = format!("http://{base}/v1/exports/{small}/download");
    let whole = reqwest::get(&url).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "application/gzip");
    assert_eq!(
        whole.headers()["content-disposition"],
        format!("attachment; filename=\"orders-{small}.ndjson.gz\"").as_str()
    );
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    let whole = whole.bytes().await.unwrap();
    assert_eq!(done[0]["bytes_written"], whole.len());
    assert_eq!(
        digest(&decompress(&whole, "gzip")),
        rows_digest(base, "id=lte.500").await
    );
    let client = reqwest::Client::new();
    let range = client.get(&url).header("range", "bytes=10-99").send().await.unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(
        range.headers()["content-range"],
        format!("bytes 10-99/{}", whole.len()).as_str()
    );
    assert_eq!(range.bytes().await.unwrap(), whole[10..100]);
    let unchanged = client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()["etag"], etag.as_str());
    // A range of another version is the whole object instead; of this one, the range.
    for (validator, status, length) in [("\"other\"", 200, whole.len()), (etag.as_str(), 206, 10)] {
        let response = client
            .get(&url)
            .header("range", "bytes=0-9")
            .header("if-range", validator)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{validator}");
        assert_eq!(response.bytes().await.unwrap(), whole[..length]);
    }
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], whole.len().to_string().as_str());

    // A parallel job's parts, spooled on this machine, are joined into one upload: the object equals `/rows`.
    db.client.batch_execute("ANALYZE orders").await.unwrap();
    let parallel = create_ok(
        base,
        json!({ "dataset": "orders", "query": "id=lte.12000", "parallelism": 2 }),
    )
    .await;
    let done = wait_completed(base, std::slice::from_ref(&parallel), Duration::from_secs(120)).await;
    assert_eq!(done[0]["parts"].as_array().unwrap().len(), 2, "{}", done[0]);
    let joined = client
        .get(format!("http://{base}/v1/exports/{parallel}/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(joined.status(), 200);
    assert_eq!(
        digest(&joined.bytes().await.unwrap()),
        rows_digest(base, "id=lte.12000").await
    );
    let parts = part_uploads(&s3.requests());
    assert!(parts.len() >= 2, "{parts:?}");

    // Deleting the finished job deletes its object.
    assert_eq!(s3.objects("proxied", &small).len(), 1);
    let deleted = client
        .delete(format!("http://{base}/v1/exports/{small}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(s3.objects("proxied", &small), Vec::<PathBuf>::new());

    // Cancelling a job mid-upload aborts its upload: no part is left, and no object appears.
    let locker = db.connect().await;
    let (big, (_, upload, _)) = held_job(&db, &locker, base).await;
    assert!(!s3.open_uploads().is_empty());
    let cancelled = client
        .delete(format!("http://{base}/v1/exports/{big}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        s3.open_uploads(),
        Vec::<String>::new(),
        "upload {upload} was not aborted"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    // The runner stops at its next lease renewal (or at its next part, which the store refuses): its run
    // ends, and still nothing is stored.
    wait_for(Duration::from_secs(60), || async {
        let mut ended = 0;
        for outcome in ["cancelled", "interrupted", "failed", "lease_lost"] {
            ended += metric(base, &format!("pgspout_job_runs_total{{outcome=\"{outcome}\"}}")).await;
        }
        (ended > 0).then_some(())
    })
    .await;
    assert_eq!(status(base, &big).await["status"], "cancelled");
    assert_eq!(s3.open_uploads(), Vec::<String>::new());
    assert_eq!(s3.objects("proxied", &big), Vec::<PathBuf>::new());

    // A job that fails mid-upload (a column it reads is dropped while it waits for its next batch) aborts
    // its upload too.
    let (failing, (_, upload, _)) = held_job(&db, &locker, base).await;
    assert!(!s3.open_uploads().is_empty());
    locker
        .batch_execute("ALTER TABLE orders DROP COLUMN note; COMMIT")
        .await
        .unwrap();
    let failed = wait_for(Duration::from_secs(60), || async {
        let status = status(base, &failing).await;
        (status["status"] == "failed").then_some(status)
    })
    .await;
    assert!(failed["error"].as_str().unwrap().contains("note"), "{failed}");
    wait_for(Duration::from_secs(60), || async {
        s3.open_uploads().is_empty().then_some(())
    })
    .await;
    assert_eq!(s3.objects("proxied", &failing), Vec::<PathBuf>::new(), "{upload}");
    drop(server);
}

#[tokio::test]
async fn check_says_whether_the_bucket_takes_objects() {
    let db = TestDb::new().await;
    wide_orders(&db, 1).await;
    let s3 = S3::start();
    let dir = temp_dir("s3-check");
    let check = async |config: &str, secret: &str| {
        let path = dir.join(format!("{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, config).unwrap();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgspout"))
            .args(["check", "--config"])
            .arg(&path)
            .env("DATABASE_URL", db.url())
            .envs(AWS_ENV)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .await
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code(), text(&output.stdout), text(&output.stderr))
    };
    let (code, stdout, stderr) = check(&s3.config("checked", ""), SECRET_KEY).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("jobs.storage s3://{BUCKET}/checked: writable")),
        "{stdout}"
    );
    // Its probe object is gone again.
    assert_eq!(s3.objects("checked", ""), Vec::<PathBuf>::new());

    for (config, secret, says) in [
        (s3.config("checked", ""), "wrong", "SignatureDoesNotMatch"),
        // Nothing listens there.
        (
            s3.config("checked", "")
                .replace(&s3.address, &format!("127.0.0.1:{}", crate::helpers::free_port())),
            SECRET_KEY,
            "PutObject: error sending request",
        ),
    ] {
        let (code, stdout, stderr) = check(&config, secret).await;
        assert_eq!(code, Some(1), "{stdout}{stderr}");
        assert!(
            stderr.contains("cannot write, read back and delete an object"),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
    }

    // Credentials in `[jobs.s3]` win over the environment's, either way.
    let configured = |secret: &str| {
        s3.config("configured", "").replace(
            "[jobs.s3]\n",
            &format!(
                "[jobs.s3]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{secret}\"\nregion = \"us-east-1\"\n"
            ),
        )
    };
    let (code, stdout, stderr) = check(&configured(SECRET_KEY), "wrong").await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("/configured: writable"), "{stdout}");
    // The secret never reaches the output.
    assert!(!format!("{stdout}{stderr}").contains(SECRET_KEY), "{stdout}{stderr}");
    let (code, stdout, stderr) = check(&configured("wrong"), SECRET_KEY).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    assert!(!format!("{stdout}{stderr}").contains(SECRET_KEY), "{stdout}{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn expiry_deletes_objects_and_aborts_an_upload_a_failed_job_left_behind() {
    let db = TestDb::new().await;
    // About 11 MiB of NDJSON: two parts and a tail.
    wide_orders(&db, 20_000).await;
    let s3 = S3::start();
    let config = s3.config("expiring", "retention = \"1s\"\nbatch_rows = 1000\nmax_running = 1");
    let mut server = start(&db, &config).await;
    let locker = db.connect().await;

    // A job killed mid-upload, then marked failed and expired as a failed job whose abort never reached the
    // store would be: its upload is recorded, and only the sweep can abort it now.
    let (failed, (_, upload, _)) = held_job(&db, &locker, &server.base).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(!s3.open_uploads().is_empty());
    db.client
        .execute(
            "UPDATE pgspout.export_jobs SET status = 'failed', expires_at = now() WHERE id = $1",
            &[&failed.parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap();
    locker.batch_execute("COMMIT").await.unwrap();

    // A job that completes, and expires a second later.
    server = start(&db, &config).await;
    let completed = create_ok(
        &server.base,
        json!({ "dataset": "orders", "query": "select=id&limit=100" }),
    )
    .await;

    let object = |id: &str| format!("/{BUCKET}/expiring/{id}.ndjson?");
    let logged = |method: &str, path: &str, query: &str| {
        s3.requests()
            .iter()
            .any(|r| r.starts_with(&format!("{method} {path}")) && r.contains(query))
    };
    let gone = async |id: &str| {
        reqwest::get(format!("http://{}/v1/exports/{id}", server.base))
            .await
            .unwrap()
            .status()
            == 404
    };
    wait_for(Duration::from_secs(120), || async {
        // The completed job's object was made (and the request log keeps it), then deleted with its job.
        let done = logged("POST", &object(&completed), "uploadId=")
            && logged("DELETE", &object(&completed), "X-Amz-Signature=")
            && s3.objects("expiring", &completed).is_empty()
            && gone(&completed).await;
        // The failed job's upload was aborted, and the job is gone.
        let aborted = logged("DELETE", &object(&failed), &format!("uploadId={upload}"))
            && s3.open_uploads().is_empty()
            && gone(&failed).await;
        // And so is every job (any that `held_job` saw complete first too).
        let jobs = db.column::<i64>("SELECT count(*) FROM pgspout.export_jobs").await;
        (done && aborted && jobs == [0]).then_some(())
    })
    .await;
}
