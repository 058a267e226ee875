//! `format=arrow` and `format=parquet`: every type family with its edge values read back by pyarrow and
//! compared with Postgres's own values; polars, pandas and DuckDB as their users call them, on responses and
//! on job files; bounded batches and row groups; values Arrow cannot hold abort the transfer, naming the
//! column; a columnar job killed mid-way starts over and says so.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ServerProcess, TestDb, python, spawn_app, wait_for};

/// Runs tests/clients/arrow_read.py in `mode` on `url`; its JSON, and whether it exited successfully.
async fn run_reader(mode: &str, url: &str) -> (Value, bool) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/arrow_read.py");
    let output = tokio::process::Command::new(python())
        .args([script, mode, url])
        .output()
        .await
        .unwrap();
    let parsed = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "arrow_read.py {mode}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    if !output.status.success() {
        // Shown with the test's failure: what the reader said, and how it ended.
        eprintln!(
            "arrow_read.py {mode} ended with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (parsed, output.status.success())
}

/// Each column: its name, its SQL type, the Arrow type pyarrow shows, and the SQL that renders a value of it
/// as the reader script renders the Arrow value (`{}` is the value).
const COLUMNS: &[(&str, &str, &str, &str)] = &[
    ("b", "boolean", "bool", "{}::text"),
    ("i2", "smallint", "int16", "{}::text"),
    ("i4", "integer", "int32", "{}::text"),
    ("i8", "bigint", "int64", "{}::text"),
    ("f4", "real", "float", "encode(float4send({}), 'hex')"),
    ("f8", "double precision", "double", "encode(float8send({}), 'hex')"),
    ("d", "numeric(12,2)", "decimal128(12, 2)", "{}::text"),
    ("dneg", "numeric(5,-2)", "decimal128(5, -2)", "{}::text"),
    ("d38", "numeric(38,0)", "decimal128(38, 0)", "{}::text"),
    ("n", "numeric", "string", "format('%s', {})"),
    ("t", "text", "string", "{}"),
    ("vc", "varchar(5)", "string", "{}::text"),
    ("c", "char(4)", "string", "format('%s', {})"),
    ("e", "mood", "string", "{}::text"),
    ("by", "bytea", "binary", "encode({}, 'hex')"),
    ("u", "uuid", "extension<arrow.uuid>", "{}::text"),
    ("dt", "date", "date32[day]", "({} - date '1970-01-01')::text"),
    (
        "tm",
        "time",
        "time64[us]",
        "(extract(epoch from {}) * 1000000)::bigint::text",
    ),
    (
        "ts",
        "timestamp",
        "timestamp[us]",
        "(extract(epoch from {}) * 1000000)::bigint::text",
    ),
    (
        "tz",
        "timestamptz",
        "timestamp[us, tz=UTC]",
        "(extract(epoch from {}) * 1000000)::bigint::text",
    ),
    (
        "iv",
        "interval",
        "month_day_nano_interval",
        "encode(interval_send({}), 'hex')",
    ),
    ("j", "json", "extension<arrow.json>", "{}::text"),
    ("jb", "jsonb", "extension<arrow.json>", "{}::text"),
    ("ia", "integer[]", "list<item: int32>", "{}::text"),
    ("ta", "text[]", "list<item: string>", "{}"),
    ("na", "numeric(6,2)[]", "list<item: decimal128(6, 2)>", "{}::text"),
    (
        "tsa",
        "timestamp[]",
        "list<item: timestamp[us]>",
        "(extract(epoch from {}) * 1000000)::bigint::text",
    ),
    ("ua", "uuid[]", "list<item: extension<arrow.uuid>>", "{}::text"),
    ("ip", "inet", "string", "format('%s', {})"),
    ("m", "money", "string", "format('%s', {})"),
    ("r", "int4range", "string", "format('%s', {})"),
    ("p", "point", "string", "format('%s', {})"),
    ("bv", "bit varying", "string", "format('%s', {})"),
    ("ttz", "time with time zone", "string", "format('%s', {})"),
    ("tsv", "tsvector", "string", "format('%s', {})"),
    ("grid", "integer[]", "list<item: int32>", "{}::text"),
    ("pos", "positive", "int32", "{}::text"),
    ("dsp", "numeric(2,5)", "string", "format('%s', {})"),
];

/// Edge values, one row each: extremes, special floats, BC dates and the last timestamps Arrow holds, empty
/// and NULL-holding arrays, text that trips parsers; the last row is all NULL.
const ROWS: &[&str] = &[
    "true, -32768, -2147483648, -9223372036854775808, 'NaN', 'NaN', -9999999999.99, 12300, \
     -99999999999999999999999999999999999999, 'NaN', '', 'ab', 'ab', 'calm', '\\x00ff', \
     '00000000-0000-0000-0000-000000000000', '4713-01-01 BC', '00:00', '4713-01-01 00:00 BC', \
     '4713-01-01 00:00+00 BC', '-178000000 years', '{\"b\": 1,  \"a\": [1, 2]}', '{\"b\": 1, \"a\": [1, 2]}', \
     '{1,NULL,3}', '{\"a,b\",NULL,\"\"}', '{1.50,-2}', '{2000-01-01 00:00:00.000001,NULL}', \
     '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '10.0.0.1', 12.34, '[1,5)', '(1.5,-2)', B'101', '12:00+05', \
     'a:1 b:2', '{}', 1, 0.00012",
    "false, 32767, 2147483647, 9223372036854775807, '-Infinity', 'Infinity', 0, -9999900, \
     99999999999999999999999999999999999999, 1e-20, E'é ü 😀 \\n \"quoted\"', 'abcde', 'abcd', 'busy', '', \
     'ffffffff-ffff-ffff-ffff-ffffffffffff', '5874897-12-31', '24:00:00', '294246-12-31 23:59:59.999999', \
     '294246-12-31 23:59:59.999999+00', '2562047 hours 47 minutes 16.854775 seconds', '[]', '{}', '{}', '{}', \
     '{}', '{}', '{}', '::1/128', -0.01, 'empty', '(0,0)', B'', '00:00:00-15:59', '', NULL, 2147483647, -0.00099",
    "NULL, 0, 0, 0, '-0', '-0', 1.5, 0, 0, 123456789012345678901234567890.123, 'line\nbreak', NULL, NULL, NULL, \
     '\\x', NULL, '1970-01-01', '12:34:56.789012', '1999-12-31 23:59:59.999999', '2000-02-29 12:00:00+05:30', \
     '1 year 2 mons 3 days 04:05:06.789', 'null', 'null', NULL, '{NULL}', NULL, NULL, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL",
    "NULL, NULL, NULL, NULL, 3.4e38, 5e-324, 0.01, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
     '2000-02-29', NULL, NULL, NULL, '-1 mons -2 days -00:00:00.000001', '\"text\"', '[1, \"2\", null]', \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL",
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, NULL",
];

/// The columns as Parquet carries them: Arrow's types, but Postgres's text of intervals (Parquet's count
/// milliseconds) and of decimals with a negative scale (Parquet's have none).
fn parquet_columns() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    COLUMNS
        .iter()
        .map(|&(name, ty, arrow, render)| match ty {
            "interval" | "numeric(5,-2)" => (name, ty, "string", "format('%s', {})"),
            _ => (name, ty, arrow, render),
        })
        .collect()
}

/// SQL that renders each cell of `types` (ordered by id) as the reader script renders the Arrow value: a
/// JSON array per row, arrays as JSON arrays of their rendered elements.
fn expected_sql(columns: &[(&str, &str, &str, &str)]) -> String {
    let cells: Vec<String> = columns
        .iter()
        .map(|(name, ty, _, render)| {
            // format() renders NULL as an empty string; a NULL stays NULL here.
            let render = format!("CASE WHEN {{}} IS NOT NULL THEN {render} END");
            if ty.ends_with("[]") {
                let element = render.replace("{}", "u.e");
                format!(
                    "CASE WHEN {name} IS NOT NULL THEN coalesce((SELECT json_agg({element} ORDER BY u.n) \
                     FROM unnest({name}) WITH ORDINALITY AS u(e, n)), '[]') END"
                )
            } else {
                render.replace("{}", name)
            }
        })
        .collect();
    format!(
        "SELECT json_build_array({})::text FROM types ORDER BY id",
        cells.join(", ")
    )
}

#[tokio::test]
async fn arrow_and_parquet_carry_every_type_family_with_its_edge_values_as_postgres_has_them() {
    let db = TestDb::new().await;
    let definitions: Vec<String> = COLUMNS.iter().map(|(name, ty, _, _)| format!("{name} {ty}")).collect();
    let mut setup = format!(
        "SET TimeZone = 'America/New_York'; \
         CREATE TYPE mood AS ENUM ('calm', 'busy'); CREATE DOMAIN positive AS integer CHECK (VALUE > 0); \
         CREATE TABLE types (id int PRIMARY KEY, {}); ",
        definitions.join(", ")
    );
    for (id, values) in ROWS.iter().enumerate() {
        setup.push_str(&format!("INSERT INTO types VALUES ({id}, {values}); "));
    }
    db.client.batch_execute(&setup).await.unwrap();
    let parquet = parquet_columns();
    let mut expected = Vec::new();
    for columns in [COLUMNS, &parquet[..]] {
        let rows: Vec<Value> = db
            .column::<String>(&expected_sql(columns))
            .await
            .iter()
            .map(|row| serde_json::from_str(row).unwrap())
            .collect();
        expected.push(rows);
    }
    let app = spawn_app(db, &[("types", "types", Some("id"))]).await;

    let arrow = run_reader("cells", &app.url("/v1/datasets/types/rows?format=arrow")).await;
    let parquet_read = run_reader("parquet-cells", &app.url("/v1/datasets/types/rows?format=parquet")).await;
    for ((read, ok), (columns, expected)) in [arrow, parquet_read]
        .iter()
        .zip([COLUMNS, &parquet[..]].iter().zip(&expected))
    {
        assert!(ok, "{read}");
        assert_cells(read, columns, expected);
    }
}

/// The reader's schema and cells equal what `columns` say and Postgres rendered.
fn assert_cells(read: &Value, columns: &[(&str, &str, &str, &str)], expected: &[Value]) {
    let schema = read["schema"].as_array().unwrap();
    assert_eq!(schema[0], serde_json::json!(["id", "int32", "integer"]));
    for ((name, ty, arrow, _), field) in columns.iter().zip(&schema[1..]) {
        assert_eq!(field[0], *name);
        assert_eq!(field[1], *arrow, "{name} {ty}");
        // The field metadata names the Postgres type, user-defined ones included.
        if matches!(*ty, "positive" | "mood" | "numeric(12,2)" | "inet" | "interval") {
            assert_eq!(field[2], *ty);
        }
    }
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len());
    for (index, (row, expected)) in rows.iter().zip(expected).enumerate() {
        for (column, (cell, wanted)) in row.as_array().unwrap()[1..]
            .iter()
            .zip(expected.as_array().unwrap())
            .enumerate()
        {
            assert_eq!(
                cell, wanted,
                "row {index}, column {} ({})",
                columns[column].0, columns[column].1
            );
        }
    }
}

#[tokio::test]
async fn arrow_batches_are_bounded_and_polars_and_pandas_read_the_stream() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE VIEW many AS SELECT g AS id, (g % 1000 * 0.01)::numeric(8,2) AS amount \
             FROM generate_series(1, 140000) AS g",
        )
        .await
        .unwrap();
    let expected: String = db
        .client
        .query_one("SELECT sum(amount)::text FROM many", &[])
        .await
        .unwrap()
        .get(0);
    let app = spawn_app(db, &[("many", "many", Some("id"))]).await;

    let response = reqwest::Client::new()
        .get(app.url("/v1/datasets/many/rows?limit=1"))
        .header("Accept", "application/vnd.apache.arrow.stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("many.arrows"),
        "{:?}",
        response.headers()
    );

    // Parquet compresses its own pages: asked for a gzip file it answers 400 before any byte, and it ignores
    // Accept-Encoding (a coding on top would only cost CPU).
    let refused = app
        .get("/v1/datasets/many/rows?format=parquet&compression=gzip", &[])
        .await;
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("compresses its own pages"),
        "{problem}"
    );
    let plain = app
        .get(
            "/v1/datasets/many/rows?format=parquet&limit=10",
            &[("Accept-Encoding", "gzip")],
        )
        .await;
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["content-type"], "application/vnd.apache.parquet");
    assert!(
        plain.headers().get("content-encoding").is_none(),
        "{:?}",
        plain.headers()
    );
    assert!(plain.bytes().await.unwrap().starts_with(b"PAR1"));

    let url = app.url("/v1/datasets/many/rows?format=arrow");
    let (read, ok) = run_reader("cells", &url).await;
    assert!(ok, "{read}");
    let batches: Vec<u64> = read["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(batches.iter().sum::<u64>(), 140_000);
    assert!(
        batches.len() >= 3 && batches.iter().all(|b| *b <= 65_536),
        "{batches:?}"
    );

    let (frames, ok) = run_reader("frames", &url).await;
    assert!(ok, "{frames}");
    let sum_of_ids = 140_000u64 * 140_001 / 2;
    for reader in ["polars", "pandas"] {
        assert_eq!(frames[reader][0], 140_000, "{reader}: {frames}");
        assert_eq!(frames[reader][1], sum_of_ids, "{reader}: {frames}");
        assert_eq!(frames[reader][2], expected.as_str(), "{reader}: {frames}");
    }
}

/// The rows of the whole record batches in the Arrow stream `bytes` begins with.
fn rows_in(bytes: &[u8]) -> usize {
    let Ok(reader) = arrow_ipc::reader::StreamReader::try_new(bytes, None) else {
        return 0;
    };
    reader.map_while(Result::ok).map(|batch| batch.num_rows()).sum()
}

#[tokio::test]
async fn a_slow_query_reaches_the_client_in_batches_of_what_arrived_each_flush_interval() {
    let db = TestDb::new().await;
    // Ten rows of 2 KB at once (more than the 8 KB Postgres buffers before it sends), then the query waits
    // on a lock the test holds: only a flush brings the rows that arrived out.
    db.client
        .batch_execute(
            "CREATE VIEW held AS SELECT g AS id, repeat('x', 2000) AS pad FROM generate_series(1, 20) g \
             WHERE CASE WHEN g <= 10 THEN true ELSE pg_advisory_xact_lock_shared(42)::text = '' END; \
             SELECT pg_advisory_lock(42)",
        )
        .await
        .unwrap();
    let mut settings = crate::helpers::settings(&db, &[("held", "held", None)]);
    settings.export.flush_interval = Duration::from_millis(100);
    let app = crate::helpers::spawn_with(db, settings).await;
    let mut response = app.raw("/v1/datasets/held/rows?format=arrow", &[]).await;
    let mut bytes = Vec::new();
    while rows_in(&bytes) == 0 {
        let chunk = tokio::time::timeout(Duration::from_secs(60), response.next_chunk())
            .await
            .expect("the rows that arrived come out while the query waits")
            .unwrap()
            .expect("the stream goes on");
        bytes.extend_from_slice(&chunk);
    }
    assert!(rows_in(&bytes) <= 10, "only rows from before the lock");
    app.db
        .client
        .batch_execute("SELECT pg_advisory_unlock(42)")
        .await
        .unwrap();
    let (rest, terminated) = response.read_to_end().await;
    assert!(terminated);
    bytes.extend(rest.concat());
    assert_eq!(rows_in(&bytes), 20);
    assert!(
        bytes.ends_with(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
        "the end-of-stream marker"
    );
}

#[tokio::test]
async fn a_value_arrow_cannot_hold_aborts_the_stream_and_the_log_names_its_column() {
    let db = TestDb::new().await;
    let cases = [
        ("timestamp", "'infinity'", "infinity"),
        ("timestamp", "'294270-01-01 00:00'", "a timestamp past Arrow's range"),
        ("date", "'-infinity'", "infinity"),
        ("numeric(10,2)", "'NaN'", "NaN"),
        ("integer[]", "'{{1,2},{3,4}}'", "an array of more than one dimension"),
        ("interval", "'2562048 hours'", "an interval past Arrow's range"),
    ];
    let mut config = String::new();
    for (index, (ty, value, _)) in cases.iter().enumerate() {
        // Many good rows first, so that the stream has begun when the bad one comes.
        db.client
            .batch_execute(&format!(
                "CREATE TABLE bad{index} (id int PRIMARY KEY, \"value {index}\" {ty}); \
                 INSERT INTO bad{index} SELECT g, NULL FROM generate_series(1, 100000) g; \
                 INSERT INTO bad{index} VALUES (100001, {value})"
            ))
            .await
            .unwrap();
        config.push_str(&format!(
            "[[datasets]]\nname = \"bad{index}\"\ntable = \"bad{index}\"\nkey = \"id\"\n\n"
        ));
    }
    let log = std::env::temp_dir().join(format!("pgspout-arrow-{}.log", uuid::Uuid::new_v4()));
    let server = ServerProcess::start_with(
        &db,
        &config,
        &[("RUST_LOG", "warn")],
        std::fs::File::create(&log).unwrap(),
    )
    .await;
    // Every case as an Arrow stream, two as Parquet files (whose footer never comes, so the download is no
    // file).
    let arrow = (0..cases.len()).map(|index| ("arrow", "cut", "Arrow", index));
    let parquet = [0, 3].map(|index| ("parquet", "parquet-cut", "Parquet", index));
    for (format, mode, label, index) in arrow.chain(parquet) {
        let (ty, _, what) = cases[index];
        let url = format!("http://{}/v1/datasets/bad{index}/rows?format={format}", server.base);
        let (read, failed) = run_reader(mode, &url).await;
        assert!(failed, "{ty}: the reader saw a complete {format} download: {read}");
        // The log line is written as the export aborts; wait for it rather than for a moment.
        let column = format!("value {index}");
        let holds = format!("holds {what}");
        let label = format!("its {label} type cannot hold");
        wait_for(Duration::from_secs(30), || async {
            let text = std::fs::read_to_string(&log).unwrap();
            text.lines()
                .any(|line| line.contains(&column) && line.contains(&holds) && line.contains(&label))
                .then_some(())
        })
        .await;
    }
    // The bad value in the first row: refused before the response begins, a 422 naming the column.
    for (format, index) in [("arrow", 0), ("parquet", 3)] {
        let url = format!(
            "http://{}/v1/datasets/bad{index}/rows?format={format}&order=id.desc",
            server.base
        );
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 422, "{format}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("\"value {index}\"")) && detail.contains(cases[index].2),
            "{detail}"
        );
    }
    drop(server);
    let _ = std::fs::remove_file(&log);
}

/// An `orders` table of `rows` rows, and the sum of its amounts as Postgres prints it.
async fn orders(db: &TestDb, rows: u32) -> String {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(8,2), note text); \
             INSERT INTO orders SELECT g, CASE WHEN g % 7 > 0 THEN (g % 1000) * 0.01 END, 'order ' || g \
             FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    db.client
        .query_one("SELECT sum(amount)::text FROM orders", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn arrow_and_parquet_jobs_are_files_that_pyarrow_polars_pandas_and_duckdb_read_from_their_urls() {
    let db = TestDb::new().await;
    let amounts = orders(&db, 30_000).await;
    let directory = crate::jobs::temp_dir("columnar-jobs");
    let mut settings = crate::helpers::settings(&db, &[("orders", "orders", Some("id"))]);
    settings.jobs.directory = Some(directory.clone());
    settings.jobs.poll_interval = Duration::from_millis(100);
    let address = crate::helpers::serve(settings).await;

    // Parquet compresses its own pages: a job asking for gzip on top is told so.
    let refused = crate::jobs::create(
        &address,
        json!({"dataset": "orders", "format": "parquet", "compression": "gzip"}),
    )
    .await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("compresses its own pages"));

    let arrow = crate::jobs::create_ok(&address, json!({"dataset": "orders", "format": "arrow"})).await;
    let parquet = crate::jobs::create_ok(&address, json!({"dataset": "orders", "format": "parquet"})).await;
    for id in [&arrow, &parquet] {
        let done = wait_for(Duration::from_secs(60), || async {
            let status = crate::jobs::status(&address, id).await;
            (status["status"] == "completed").then_some(status)
        })
        .await;
        assert_eq!(done["rows_written"], 30_000, "{done}");
        // A columnar file cannot be appended to after its footer: the job would start over, and says so.
        assert_eq!(done["resumable"], false, "{done}");
        assert_eq!(done["restarts"], 0, "{done}");
    }
    let url = |id: &str| format!("http://{address}/v1/exports/{id}/download");
    for (id, media_type, extension, magic) in [
        (&arrow, "application/vnd.apache.arrow.file", "arrow", &b"ARROW1"[..]),
        (&parquet, "application/vnd.apache.parquet", "parquet", &b"PAR1"[..]),
    ] {
        // The last bytes, as a reader of the footer asks for them: a byte range.
        let tail = reqwest::Client::new()
            .get(url(id))
            .header("Range", "bytes=-8")
            .send()
            .await
            .unwrap();
        assert_eq!(tail.status(), 206);
        assert_eq!(tail.headers()["content-type"], media_type);
        let disposition = tail.headers()["content-disposition"].to_str().unwrap().to_owned();
        assert!(
            disposition.contains(&format!("orders-{id}.{extension}")),
            "{disposition}"
        );
        assert!(tail.bytes().await.unwrap().ends_with(magic));
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/arrow_read.py");
    let output = tokio::process::Command::new(python())
        .args([script, "job-files", &url(&arrow), &url(&parquet)])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read: Value = serde_json::from_slice(&output.stdout).unwrap();
    let wanted = json!([30_000, 30_000u64 * 30_001 / 2, amounts]);
    for reader in ["arrow_file", "pyarrow", "polars", "pandas", "duckdb"] {
        assert_eq!(read[reader], wanted, "{reader}: {read}");
    }
    assert_eq!(read["duckdb_amount_type"], "DECIMAL(8,2)", "{read}");
    for file in ["arrow_types", "parquet_types"] {
        assert_eq!(
            read[file],
            json!(["int32", "decimal128(8, 2)", "string"]),
            "{file}: {read}"
        );
    }
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_parquet_job_killed_mid_way_starts_over_says_so_and_leaves_one_whole_file() {
    let db = TestDb::new().await;
    let amounts = orders(&db, 60_000).await;
    db.client
        .batch_execute(
            "CREATE VIEW slow_orders AS SELECT * FROM orders \
             WHERE CASE WHEN id % 1000 = 0 THEN pg_sleep(0.1) IS NOT NULL ELSE true END",
        )
        .await
        .unwrap();
    let directory = crate::jobs::temp_dir("parquet-restart");
    let config = format!(
        "[jobs]\ndirectory = {:?}\nlease = \"6s\"\npoll_interval = \"100ms\"\nbatch_rows = 5000\n\n\
         [[datasets]]\nname = \"orders\"\ntable = \"slow_orders\"\nkey = \"id\"\n",
        directory.display().to_string()
    );
    let server = ServerProcess::start(&db, &config).await;
    let id = crate::jobs::create_ok(&server.base, json!({"dataset": "orders", "format": "parquet"})).await;
    wait_for(Duration::from_secs(60), || async {
        let status = crate::jobs::status(&server.base, &id).await;
        (status["rows_written"].as_i64().unwrap() >= 5000).then_some(())
    })
    .await;
    drop(server); // kill -9 mid-way: the file holds row groups and no footer

    let server = ServerProcess::start(&db, &config).await;
    let done = wait_for(Duration::from_secs(120), || async {
        let status = crate::jobs::status(&server.base, &id).await;
        (status["status"] == "completed").then_some(status)
    })
    .await;
    assert_eq!(done["rows_written"], 60_000, "{done}");
    assert_eq!(done["restarts"], 1, "{done}");
    let url = format!("http://{}/v1/exports/{id}/download", server.base);
    let (read, ok) = run_reader("parquet-cells", &url).await;
    assert!(ok, "{read}");
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 60_000);
    let ids: Vec<i64> = rows.iter().map(|r| r[0].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, (1..=60_000).collect::<Vec<_>>(), "every row once, in key order");
    let sum: f64 = rows
        .iter()
        .filter_map(|r| r[1].as_str())
        .map(|a| a.parse::<f64>().unwrap())
        .sum();
    assert!(
        (sum - amounts.parse::<f64>().unwrap()).abs() < 0.005,
        "{sum} vs {amounts}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&directory);
}
