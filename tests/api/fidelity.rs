//! Output is exactly Postgres's own: CSV against `COPY … (FORMAT csv, HEADER)`, NDJSON against `row_to_json`.

use crate::helpers::{TestApp, TestDb, settings, spawn_with};

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('happy', 'sad', 'with "quotes", commas');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE everything (
  id int PRIMARY KEY,
  i2 smallint, i4 integer, i8 bigint, n numeric, n2 numeric(12,2), r real, d double precision, b boolean,
  t text, vc varchar(20), c char(5), ba bytea, u uuid,
  dt date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
  j json, jb jsonb, ai int[], at text[], m mood, ip inet, net cidr, pos positive, mac macaddr,
  rng int4range, pt point, cash money, bits varbit, "Odd ""name"", here" text
);
-- Inserted out of key order: the export must sort by the key.
INSERT INTO everything (id) VALUES (4);
INSERT INTO everything VALUES (2, 32767, 2147483647, 9223372036854775807, 12345678901234567890.123456789, 1234.50,
  3.14, 2.718281828459045, true, 'hello', 'varchar', 'ab', '\xdeadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '2024-02-29', '12:34:56.789', '12:34:56+05:30', '2024-02-29 12:34:56.123456', '2024-02-29 12:34:56.5+02',
  '1 year 2 mons 3 days 04:05:06.7', '{"a": [1, 2.50, "x"]}', '{"b": 1, "a": "é"}', '{1,NULL,3}',
  '{"a,b","c\"d",NULL}', 'happy', '192.168.0.1', '10.0.0.0/8', 5, '08:00:2b:01:02:03', '[1,10)', '(1.5,2)',
  12.34, B'10101', 'odd');
INSERT INTO everything VALUES (3, -32768, -2147483648, -9223372036854775808, 'NaN', -0.01, 'NaN', '-Infinity', false,
  E'quote " comma , newline \n return \r tab \t backslash \\ ctrl \x01 unicode ☃ 🎉', '', '', '\x', 
  '00000000-0000-0000-0000-000000000000', '0044-03-15 BC', '00:00:00', '23:59:59.999999-12', 'infinity',
  '-infinity', '-178000000 days', '"string"', 'null', '{}', '{}', 'with "quotes", commas', '::1', '::/0', 1,
  'ff:ff:ff:ff:ff:ff', 'empty', '(0,0)', -1, B'', E'a\nb');
INSERT INTO everything VALUES (1, 0, 0, 0, 'Infinity', 0, 1e-6, 1e300, null, '\.', E'\\.', 'x    ', '\x00ff',
  null, 'infinity', '24:00:00', null, '0001-01-01 00:00:00 BC', '1999-12-31 23:59:59.999999+00', '-1 day',
  '  {"a" :1}  ', '[1, "two", {"three": 3.0}]', '{{1,2},{3,4}}', '{"",NULL," "}', 'sad', '2001:db8::ff/64',
  '2001:db8::/32', 2147483647, null, '(,)', null, 0, null, '');
INSERT INTO everything (id, r, d, n, ts, tstz, dt)
SELECT 100 + g,
  ((random() - 0.5) * 10 ^ (random() * 70 - 35))::real,
  (random() - 0.5) * 10 ^ (random() * 600 - 300),
  round((random() * 10 ^ (random() * 30))::numeric, (random() * 12)::int),
  timestamp '2000-01-01' + random() * interval '3000000 days' - interval '1500000 days',
  timestamptz '2000-01-01' + (random() * 10 ^ (random() * 11)) * interval '1 second' * sign(random() - 0.5),
  date '2000-01-01' + ((random() - 0.5) * 2000000)::int
FROM generate_series(1, 2000) g;
"#;

/// The session settings pgspout fixes for every export, here for the reference queries.
fn session(timezone: &str) -> String {
    format!(
        "SET TimeZone = '{timezone}'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; \
         SET extra_float_digits = 1; SET bytea_output = 'hex';"
    )
}

async fn app(timezone: &str) -> TestApp {
    let db = TestDb::new().await;
    db.client
        .batch_execute(&format!("SELECT setseed(0.42); {SCHEMA}"))
        .await
        .unwrap();
    let mut settings = settings(&db, &[("everything", "everything", Some("id"))]);
    settings.database.timezone = timezone.into();
    spawn_with(db, settings).await
}

async fn reference_csv(app: &TestApp, timezone: &str) -> String {
    use futures::TryStreamExt;
    app.db.client.batch_execute(&session(timezone)).await.unwrap();
    let stream = app
        .db
        .client
        .copy_out("COPY (SELECT * FROM everything ORDER BY id) TO STDOUT (FORMAT csv, HEADER)")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    String::from_utf8(chunks.concat()).unwrap()
}

async fn reference_ndjson(app: &TestApp, timezone: &str) -> String {
    app.db.client.batch_execute(&session(timezone)).await.unwrap();
    let rows = app
        .db
        .client
        .query(
            "SELECT row_to_json(whole_row)::text FROM (SELECT * FROM everything ORDER BY id) AS whole_row",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0) + "\n").collect()
}

async fn export(app: &TestApp, format: &str) -> String {
    let response = app
        .get(&format!("/v1/datasets/everything/rows?format={format}"), &[])
        .await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn assert_same_lines(ours: &str, reference: &str) {
    for (i, (a, b)) in ours.lines().zip(reference.lines()).enumerate() {
        assert_eq!(a, b, "line {i} differs");
    }
    assert_eq!(ours, reference);
}

#[tokio::test]
async fn csv_is_byte_identical_to_copy() {
    let app = app("UTC").await;
    assert_same_lines(&export(&app, "csv").await, &reference_csv(&app, "UTC").await);
}

#[tokio::test]
async fn ndjson_is_byte_identical_to_row_to_json() {
    let app = app("UTC").await;
    assert_same_lines(&export(&app, "ndjson").await, &reference_ndjson(&app, "UTC").await);
}

#[tokio::test]
async fn a_non_utc_timezone_prints_timestamps_as_postgres_does() {
    let zone = "America/New_York";
    let app = app(zone).await;
    assert_same_lines(&export(&app, "csv").await, &reference_csv(&app, zone).await);
    assert_same_lines(&export(&app, "ndjson").await, &reference_ndjson(&app, zone).await);
}
