//! `consistency=chunked`: keyset batches in short transactions give the same rows as one snapshot, and no
//! snapshot is held for the whole download.

use pgspout::settings::Consistency;
use pgspout::startup::Application;

use crate::helpers::{RawResponse, TestApp, TestDb, settings, spawn_with, wait_for};

const ROWS: &str = "CREATE TABLE t (id int PRIMARY KEY, grp int, label text, pad text); \
     INSERT INTO t SELECT g, CASE WHEN g % 9 = 0 THEN NULL ELSE g % 4 END, 'row ' || g, repeat('x', 80) \
     FROM generate_series(1, 1000) g; \
     CREATE VIEW keyless AS SELECT * FROM t";

async fn body(app: &TestApp, query: &str) -> String {
    let response = app.get(&format!("/v1/datasets/t/rows?{query}"), &[]).await;
    assert_eq!(response.status(), 200, "{query}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn chunked_exports_equal_snapshot_exports_across_batch_boundaries() {
    let db = TestDb::new().await;
    db.client.batch_execute(ROWS).await.unwrap();
    let mut settings = settings(&db, &[("t", "t", Some("id")), ("keyless", "keyless", None)]);
    settings.export.batch_rows = 7;
    let app = spawn_with(db, settings).await;
    for query in [
        "",
        "format=csv",
        "select=label,grp",
        "order=grp.desc.nullsfirst",
        "order=grp.asc,label.desc&select=label",
        "grp=in.(1,3)&order=label",
        "grp=is.null",
        "limit=14",
        "limit=15&order=grp.nullsfirst",
        "limit=0",
        "after=500&limit=20",
        "id=gt.2000",
    ] {
        let snapshot = body(&app, &format!("{query}&consistency=snapshot")).await;
        let chunked = body(&app, &format!("{query}&consistency=chunked")).await;
        // Not assert_eq!: the bodies are long.
        assert!(
            chunked == snapshot,
            "{query}: {} lines chunked, {} in one snapshot",
            chunked.lines().count(),
            snapshot.lines().count()
        );
    }
    assert_eq!(body(&app, "consistency=chunked").await.lines().count(), 1000);

    for (query, expected) in [
        ("consistency=bogus", "must be snapshot or chunked"),
        ("consistency=chunked&consistency=snapshot", "more than once"),
    ] {
        let response = app.get(&format!("/v1/datasets/t/rows?{query}"), &[]).await;
        assert_eq!(response.status(), 400, "{query}");
        assert!(response.text().await.unwrap().contains(expected), "{query}");
    }
    let response = app.get("/v1/datasets/keyless/rows?consistency=chunked", &[]).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("needs a dataset with a key"));
}

#[tokio::test]
async fn a_dataset_can_default_to_chunked_but_only_with_a_key() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(&ROWS.replace("1000) g", "200000) g"))
        .await
        .unwrap();
    let mut bad = settings(&db, &[("keyless", "keyless", None)]);
    bad.datasets[0].consistency = Consistency::Chunked;
    let error = Application::build(bad).await.err().expect("start-up must fail");
    assert!(pgspout::report::chain(&error).contains("needs a key"));

    let mut settings = settings(&db, &[("t", "t", Some("id"))]);
    settings.datasets[0].consistency = Consistency::Chunked;
    settings.export.batch_rows = 1000;
    let app = spawn_with(db, settings).await;
    let (first, later) = seen_during_export(&app, "").await;
    assert!(
        first.xact_start_us < later.xact_start_us,
        "the dataset's default is chunked: {first:?} then {later:?}"
    );
}

/// What `pg_stat_activity` shows of the export's backend: its snapshot's xmin and when its transaction began.
#[derive(Debug, PartialEq)]
struct Seen {
    xmin: i64,
    xact_start_us: i64,
}

/// The export backend early in a slow export, and again once the export has moved on by several batches.
///
/// A chunked export is told apart by its transactions, not by its xmin: a snapshot's xmin is the oldest
/// transaction running anywhere in the cluster, so one long write in another test's database (a `CREATE
/// DATABASE`, a seeding `INSERT`) holds every snapshot's xmin still while it runs.
async fn seen_during_export(app: &TestApp, query: &str) -> (Seen, Seen) {
    let mut response = RawResponse::get(&app.address, &format!("/v1/datasets/t/rows?{query}"), &[]).await;
    assert_eq!(response.status, 200);
    let mut read = response.next_chunk().await.unwrap().unwrap().len();
    let seen = || async {
        app.db
            .client
            .query_opt(
                "SELECT backend_xmin::text::bigint, (extract(epoch FROM xact_start) * 1000000)::bigint \
                 FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'pgspout%' AND backend_xmin IS NOT NULL \
                   AND application_name <> 'pgspout listener'",
                &[],
            )
            .await
            .unwrap()
            .map(|row| Seen {
                xmin: row.get(0),
                xact_start_us: row.get(1),
            })
    };
    let first = wait_for(std::time::Duration::from_secs(30), seen).await;
    // Past what socket buffers can hold ahead of the reader (a few MB), the backend is many batches further.
    let mut later = None;
    while let Some(chunk) = response.next_chunk().await.unwrap() {
        read += chunk.len();
        if read > 12_000_000 && later.is_none() {
            // Between two batches there is no transaction for a moment; once the reader pauses, the backend
            // waits inside a batch.
            later = Some(wait_for(std::time::Duration::from_secs(30), seen).await);
        }
    }
    (first, later.expect("the export is larger than 12 MB"))
}

#[tokio::test]
async fn a_chunked_export_moves_its_snapshot_forward_and_a_snapshot_export_holds_it() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(&ROWS.replace("1000) g", "200000) g"))
        .await
        .unwrap();
    let mut settings = settings(&db, &[("t", "t", Some("id"))]);
    settings.export.batch_rows = 1000;
    let app = spawn_with(db, settings).await;
    let (first, later) = seen_during_export(&app, "consistency=snapshot").await;
    assert_eq!(first, later, "one transaction and one snapshot for the whole export");
    eprintln!(
        "figure: snapshot export: backend_xmin {} early and 12 MB later",
        first.xmin
    );
    let (first, later) = seen_during_export(&app, "consistency=chunked").await;
    assert!(
        first.xact_start_us < later.xact_start_us,
        "each batch is a transaction of its own: {first:?} then {later:?}"
    );
    assert!(first.xmin <= later.xmin, "{first:?} then {later:?}");
    eprintln!(
        "figure: chunked export: transaction began {} ms later 12 MB on",
        (later.xact_start_us - first.xact_start_us) / 1000
    );
}
