//! Configuration from the environment: `PGSPOUT_<SECTION>__<KEY>` over the file, the file optional, and
//! unknown keys refused by name.

use std::time::{Duration, Instant};

use crate::helpers::{BIG_VIEW, ServerProcess, TestDb, small_table};

#[tokio::test]
async fn environment_variables_set_nested_keys_and_durations_over_the_file() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    small_table(&db, 10).await;
    let config = "[server]\nworkers = 2\n[database]\npool_size = 8\n\
                  [[datasets]]\nname = \"big\"\ntable = \"big\"\n\
                  [[datasets]]\nname = \"small\"\ntable = \"small\"\nkey = \"id\"\n";
    let server = ServerProcess::start_with(
        &db,
        config,
        &[
            ("PGSPOUT_DATABASE__POOL_SIZE", "3"),
            ("PGSPOUT_EXPORT__MAX_DURATION", "700ms"),
            ("PGSPOUT_PAGES__MAX_LIMIT", "200"),
            ("RUST_LOG", "warn"),
        ],
        std::process::Stdio::inherit(),
    )
    .await;
    let base = format!("http://{}", server.base);
    // pool_size: two workers of 3 connections each.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.lines().any(|l| l == "pgspout_db_pool_max 6"), "{metrics}");
    let page = reqwest::get(format!("{base}/v1/datasets/small/page?limit=201"))
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    assert!(page.text().await.unwrap().contains("between 1 and 200"));
    // A duration: the endless export is aborted after 700 ms.
    let started = Instant::now();
    let mut response = reqwest::get(format!("{base}/v1/datasets/big/rows")).await.unwrap();
    let ended = loop {
        match response.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    assert!(ended.is_err(), "an aborted export must not end cleanly");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}

#[tokio::test]
async fn without_a_file_the_environment_is_enough_and_unknown_keys_are_refused_by_name() {
    let db = TestDb::new().await;
    // An address that is taken: a valid configuration gets as far as binding it, then exits.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_address = taken.local_addr().unwrap().to_string();
    let run = |env: Vec<(&'static str, String)>| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgspout"))
            .arg("serve")
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", db.url())
            .env("PGSPOUT_LISTEN", &taken_address)
            .envs(env)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("pgspout did not exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stderr) = run(vec![("PGSPOUT_DATABASE__POOL_SISE", "3".into())]);
    assert!(!ok);
    assert!(stderr.contains("pool_sise"), "{stderr}");
    let (ok, stderr) = run(vec![("PGSPOUT_EXPORT__STALL_TIMEOUT", "soon".into())]);
    assert!(!ok);
    // Named as the variable is: `EXPORT.STALL_TIMEOUT in PGSPOUT_ environment variable(s)`.
    assert!(
        stderr.contains("EXPORT.STALL_TIMEOUT") && stderr.contains("PGSPOUT_"),
        "{stderr}"
    );
    let (ok, stderr) = run(vec![("PGSPOUT_LOG__FORMAT", "json".into())]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot listen on {taken_address}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn without_a_database_url_the_libpq_environment_is_used() {
    let db = TestDb::new().await;
    small_table(&db, 10).await;
    let dir = crate::jobs::temp_dir("libpq-env");
    std::fs::write(
        dir.join("pgspout.toml"),
        "[[datasets]]\nname = \"small\"\ntable = \"small\"\nkey = \"id\"\n",
    )
    .unwrap();
    let port = crate::helpers::free_port();
    // PGHOST, PGPORT, PGUSER and PGPASSWORD come from pg_virtualenv, as psql would read them.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgspout"))
        .args(["serve", "--config"])
        .arg(dir.join("pgspout.toml"))
        .env_remove("DATABASE_URL")
        .env("PGDATABASE", &db.name)
        .env("PGSSLMODE", "require")
        .env("PGSPOUT_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/datasets/small/rows");
    let body = crate::helpers::wait_for(Duration::from_secs(30), || async {
        match reqwest::get(&url).await {
            Ok(response) if response.status() == 200 => response.text().await.ok(),
            _ => None,
        }
    })
    .await;
    assert_eq!(body.lines().count(), 10);
    // PGSSLMODE=require took effect: the pooled connection, still open, is encrypted.
    let encrypted = db.pgspout_ssl().await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(encrypted, Some(true));
}

#[tokio::test]
async fn pgspout_check_lists_the_datasets_and_exits_non_zero_on_any_problem() {
    let db = TestDb::new().await;
    small_table(&db, 10).await;
    db.client
        .batch_execute("CREATE VIEW labels AS SELECT label FROM small")
        .await
        .unwrap();
    let dir = crate::jobs::temp_dir("check");
    let check = |config: &str, url: String| {
        let path = dir.join(format!("{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, config).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgspout"))
            .args(["check", "--config"])
            .arg(&path)
            .env("DATABASE_URL", url)
            .env("PGSPOUT_DATABASE__CONNECT_TIMEOUT", "2s")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let good = "[[datasets]]\nname = \"small\"\ntable = \"small\"\nkey = \"id\"\n\n\
                [[datasets]]\nname = \"labels\"\ntable = \"labels\"\n";
    let (code, stdout, stderr) = check(good, db.url());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("connected; 2 dataset(s):"), "{stdout}");
    assert!(
        stdout.contains("small  relation ") && stdout.contains("key id"),
        "{stdout}"
    );
    assert!(
        stdout.contains("labels  relation ") && stdout.contains("key none"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  id integer not null\n") && stdout.contains("  label text\n"),
        "{stdout}"
    );

    let missing = "[[datasets]]\nname = \"gone\"\ntable = \"no_such_table\"\n";
    let (code, stdout, stderr) = check(missing, db.url());
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with("pgspout check: ") && stderr.contains("no_such_table"),
        "{stderr}"
    );

    // Nothing listens on port 1.
    let (code, _, stderr) = check(good, format!("{} port=1", db.url_on("127.0.0.1")));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot connect"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_way_to_build_the_application_validates_its_settings() {
    let db = TestDb::new().await;
    small_table(&db, 1).await;
    let mut settings = crate::helpers::settings(&db, &[("small", "small", Some("id"))]);
    settings.export.chunk_size = 0;
    let Err(error) = pgspout::startup::Application::build(settings.clone()).await else {
        panic!("a chunk size of 0 was accepted");
    };
    assert!(error.to_string().contains("export.chunk_size"), "{error}");
    let error = pgspout::startup::check(&settings).await.unwrap_err();
    assert!(error.to_string().contains("export.chunk_size"), "{error}");
}
