//! Whole schemas: discovery of every readable relation, its key and its columns; live reload by NOTIFY and
//! by SIGHUP, without dropping running exports; a failed reload keeps the old catalog.

use std::collections::BTreeMap;
use std::time::Duration;

use pgspout::settings::{Consistency, DatasetSettings, SchemaSettings};
use serde_json::Value;

use crate::helpers::{BIG_VIEW, RawResponse, ServerProcess, TestDb, serve, settings, wait_until};

/// `{name: (key, columns)}` from `/v1/datasets`.
async fn served(address: &str) -> BTreeMap<String, (Value, Vec<String>)> {
    let body: Value = reqwest::get(format!("http://{address}/v1/datasets"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["datasets"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|d| {
            let columns = d["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect();
            (d["name"].as_str().unwrap().to_owned(), (d["key"].clone(), columns))
        })
        .collect()
}

async fn body_of(address: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_schema_serves_every_relation_the_role_may_read_with_its_key() {
    let db = TestDb::new().await;
    let role = format!("reader_{}", &db.name[db.name.len() - 8..]);
    db.client
        .batch_execute(&format!(
            "CREATE SCHEMA shop;
             CREATE TABLE shop.orders (id int PRIMARY KEY, customer text NOT NULL, total numeric);
             INSERT INTO shop.orders SELECT g, 'c' || (g % 3), g * 1.5 FROM generate_series(1, 20) g;
             CREATE TABLE public.orders (id int PRIMARY KEY);
             CREATE TABLE shop.pairs (a int, b int, PRIMARY KEY (a, b));
             CREATE TABLE shop.codes (code text NOT NULL UNIQUE, n int UNIQUE);
             CREATE TABLE shop.notes (body text);
             CREATE TABLE shop.tmp_scratch (id int PRIMARY KEY);
             CREATE TABLE shop.secret (id int PRIMARY KEY);
             CREATE TABLE shop.partial (id int PRIMARY KEY, visible text, hidden text);
             INSERT INTO shop.partial VALUES (1, 'yes', 'no');
             CREATE VIEW shop.big_orders AS SELECT * FROM shop.orders WHERE total > 10;
             CREATE MATERIALIZED VIEW shop.totals AS SELECT customer, sum(total) AS total FROM shop.orders GROUP BY 1;
             CREATE UNIQUE INDEX ON shop.totals (customer);
             CREATE TABLE shop.events (id int PRIMARY KEY, kind text) PARTITION BY RANGE (id);
             CREATE TABLE shop.events_low PARTITION OF shop.events FOR VALUES FROM (0) TO (100);
             CREATE TABLE shop.events_high PARTITION OF shop.events FOR VALUES FROM (100) TO (200);
             INSERT INTO shop.events VALUES (150, 'late'), (5, 'early'), (99, 'mid');
             CREATE EXTENSION file_fdw;
             CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
             CREATE FOREIGN TABLE shop.feed (n int, label text) SERVER files
               OPTIONS (program 'printf \"1,a\\n2,b\\n\"', format 'csv');
             CREATE ROLE {role} LOGIN PASSWORD 'reader-password';
             GRANT USAGE ON SCHEMA shop TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {role};
             REVOKE SELECT ON shop.secret, shop.partial FROM {role};
             GRANT SELECT (id, visible) ON shop.partial TO {role};
             GRANT SELECT ON public.orders TO {role};"
        ))
        .await
        .unwrap();

    let mut settings = settings(&db, &[]);
    let url = db.url().replace(
        &format!("user={}", std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())),
        &format!("user={role}"),
    );
    settings.database.url = Some(url.replace(
        &format!("password={}", std::env::var("PGPASSWORD").unwrap_or_default()),
        "password=reader-password",
    ));
    settings.schemas = vec![
        SchemaSettings {
            name: "shop".into(),
            include: None,
            exclude: vec!["tmp_*".into()],
            consistency: Consistency::Chunked,
            aggregates: Some(true),
        },
        SchemaSettings::public(),
    ];
    // A configured dataset wins over a discovered relation of the same name.
    settings.datasets = vec![DatasetSettings {
        name: "notes".into(),
        table: "shop.orders".into(),
        key: Some("id".into()),
        columns: Some(vec!["id".into()]),
        consistency: Consistency::Snapshot,
        aggregates: None,
    }];
    let address = serve(settings).await;

    let datasets = served(&address).await;
    let names: Vec<&str> = datasets.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "big_orders",
            "codes",
            "events",
            "feed",
            "notes",
            "pairs",
            "partial",
            "public.orders",
            "shop.orders",
            "totals"
        ],
        "no partitions, no unreadable or excluded table; clashing names qualified"
    );
    let key = |name: &str| datasets[name].0.as_str().map(str::to_owned);
    assert_eq!(key("shop.orders").as_deref(), Some("id"), "a one-column primary key");
    assert_eq!(
        key("codes").as_deref(),
        Some("code"),
        "a unique index on a NOT NULL column"
    );
    assert_eq!(
        key("events").as_deref(),
        Some("id"),
        "a partitioned table's primary key"
    );
    assert_eq!(key("partial").as_deref(), Some("id"));
    for keyless in ["pairs", "big_orders", "totals", "feed"] {
        assert_eq!(
            key(keyless),
            None,
            "{keyless}: composite, a view, nullable or foreign: no key"
        );
    }
    assert_eq!(datasets["partial"].1, ["id", "visible"], "only the columns granted");
    assert_eq!(
        datasets["notes"].1,
        ["id"],
        "the configured dataset, not the discovered table"
    );

    let (status, events) = body_of(&address, "/v1/datasets/events/rows?format=csv").await;
    assert_eq!((status, events.as_str()), (200, "id,kind\n5,early\n99,mid\n150,late\n"));
    let (status, feed) = body_of(&address, "/v1/datasets/feed/rows").await;
    assert_eq!(
        (status, feed.as_str()),
        (200, "{\"n\":1,\"label\":\"a\"}\n{\"n\":2,\"label\":\"b\"}\n")
    );
    let (status, partial) = body_of(&address, "/v1/datasets/partial/rows").await;
    assert_eq!((status, partial.as_str()), (200, "{\"id\":1,\"visible\":\"yes\"}\n"));
    // The schema's consistency: keyed datasets read in batches, keyless ones in one snapshot.
    let (status, orders) = body_of(&address, "/v1/datasets/shop.orders/rows?select=id&limit=3").await;
    assert_eq!((status, orders.as_str()), (200, "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n"));
    // The schema's aggregates = true reaches its datasets (a summary reads in one snapshot even where the
    // schema says chunked); public's datasets keep query.aggregates' default, off.
    let (status, count) = body_of(&address, "/v1/datasets/shop.orders/rows?select=count()").await;
    assert_eq!((status, count.trim()), (200, "{\"count\":20}"), "{count}");
    let (status, refused) = body_of(&address, "/v1/datasets/public.orders/rows?select=count()").await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.contains("query.aggregates"), "{refused}");
    let (status, totals) = body_of(&address, "/v1/datasets/totals/rows?order=customer").await;
    assert_eq!(status, 200, "{totals}");
    assert_eq!(totals.lines().count(), 3);
    for absent in ["secret", "tmp_scratch", "events_low", "orders"] {
        assert_eq!(
            body_of(&address, &format!("/v1/datasets/{absent}/rows")).await.0,
            404,
            "{absent}"
        );
    }

    drop(db);
    let admin = TestDb::new().await;
    admin.client.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
}

#[tokio::test]
async fn with_nothing_configured_pgspout_serves_public() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE people (id int PRIMARY KEY, name text);
             INSERT INTO people VALUES (1, 'ada'), (2, 'grace');
             CREATE SCHEMA hidden; CREATE TABLE hidden.other (id int);",
        )
        .await
        .unwrap();
    // Only DATABASE_URL and the listen address: an empty config file.
    let server = ServerProcess::start(&db, "").await;
    assert_eq!(served(&server.base).await.keys().collect::<Vec<_>>(), ["people"]);
    let (status, rows) = body_of(&server.base, "/v1/datasets/people/rows?format=csv").await;
    assert_eq!((status, rows.as_str()), (200, "id,name\n1,ada\n2,grace\n"));
}

#[tokio::test]
async fn notify_reloads_the_catalog_while_a_running_export_goes_on() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(&format!("{BIG_VIEW}; CREATE TABLE doomed (id int PRIMARY KEY);"))
        .await
        .unwrap();
    let address = serve(settings(&db, &[])).await;
    assert!(served(&address).await.contains_key("doomed"));
    db.listener_caught_up().await;

    // An export under the old catalog, read slowly.
    let mut running = RawResponse::get(&address, "/v1/datasets/big/rows?limit=200000", &[]).await;
    assert_eq!(running.status, 200);
    assert!(running.next_chunk().await.unwrap().is_some());

    db.client
        .batch_execute(
            "DROP TABLE doomed; CREATE TABLE newcomer (id int PRIMARY KEY); INSERT INTO newcomer VALUES (7);",
        )
        .await
        .unwrap();
    assert_eq!(
        body_of(&address, "/v1/datasets/newcomer/rows").await.0,
        404,
        "not before the reload"
    );
    db.client.batch_execute("NOTIFY pgspout, 'reload'").await.unwrap();
    wait_until(Duration::from_secs(60), || async {
        body_of(&address, "/v1/datasets/newcomer/rows").await == (200, "{\"id\":7}\n".into())
    })
    .await;
    assert_eq!(
        body_of(&address, "/v1/datasets/doomed/rows").await.0,
        404,
        "a dropped table is gone"
    );
    let openapi = body_of(&address, "/v1/openapi.json").await.1;
    assert!(openapi.contains("/v1/datasets/newcomer/rows") && !openapi.contains("doomed"));

    // The export that started before the reload ends complete.
    let (chunks, terminated) = running.read_to_end().await;
    assert!(terminated, "the running export was not cut by the reload");
    let lines = chunks.concat().iter().filter(|b| **b == b'\n').count();
    assert!(lines >= 199_000, "{lines} lines");
}

#[tokio::test]
async fn sighup_reloads_and_a_failed_reload_keeps_the_old_catalog() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE base (id int PRIMARY KEY); CREATE SCHEMA extra;")
        .await
        .unwrap();
    let log = std::env::temp_dir().join(format!("pgspout-reload-{}.log", db.name));
    let server = ServerProcess::start_with(
        &db,
        "[[datasets]]\nname = \"fixed\"\ntable = \"base\"\nkey = \"id\"\n\n[[schemas]]\nname = \"extra\"\n",
        &[("RUST_LOG", "info")],
        std::fs::File::create(&log).unwrap(),
    )
    .await;
    let hangup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let names = |address: String| async move {
        let openapi = body_of(&address, "/v1/openapi.json").await.1;
        ["fixed", "one", "two", "three"]
            .into_iter()
            .filter(|n| openapi.contains(&format!("/v1/datasets/{n}/rows")))
            .collect::<Vec<_>>()
    };

    db.client
        .batch_execute("CREATE TABLE extra.one (id int)")
        .await
        .unwrap();
    hangup();
    // The SIGHUP's own reload, not the one the listener does when it starts.
    wait_until(Duration::from_secs(60), || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .any(|line| line.contains("catalog reloaded") && line.contains("SIGHUP"))
    })
    .await;
    assert_eq!(names(server.base.clone()).await, ["fixed", "one"]);

    // The configured table is renamed away: the reload fails, says why, and the old catalog stays.
    db.client
        .batch_execute("ALTER TABLE base RENAME TO base_moved; CREATE TABLE extra.two (id int)")
        .await
        .unwrap();
    hangup();
    wait_until(Duration::from_secs(60), || async {
        std::fs::read_to_string(&log).unwrap().contains("catalog reload failed")
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("\"base\" does not exist"), "{logged}");
    assert_eq!(names(server.base.clone()).await, ["fixed", "one"]);
    assert_eq!(
        reqwest::get(format!("http://{}/healthz", server.base))
            .await
            .unwrap()
            .status(),
        200
    );

    // Fixed, and announced by NOTIFY this time.
    db.client
        .batch_execute(
            "ALTER TABLE base_moved RENAME TO base; CREATE TABLE extra.three (id int); NOTIFY pgspout, 'reload'",
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), || async {
        names(server.base.clone()).await == ["fixed", "one", "two", "three"]
    })
    .await;
    let _ = std::fs::remove_file(&log);
}
