//! The query language: every operator against the same query in SQL, typed values, injection attempts,
//! keyset pages, resuming with `after`, the catalog, counts and the OpenAPI document.

use std::collections::HashSet;

use crate::helpers::{TestApp, TestDb, settings, spawn_with};

const ITEMS: &str = r#"
CREATE TYPE tone AS ENUM ('low', 'high');
CREATE TABLE items (
  id bigint PRIMARY KEY, name text, price numeric(10,2), paid boolean, seen timestamptz, ref uuid,
  tone tone, secret text
);
INSERT INTO items
SELECT g,
       CASE WHEN g % 7 = 0 THEN NULL WHEN g % 5 = 0 THEN '50% off_' || g ELSE 'item ' || g END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE (g * 3.75) % 400 END,
       CASE WHEN g % 3 = 0 THEN NULL ELSE g % 2 = 0 END,
       timestamptz '2024-03-01 00:00:00+00' + g * interval '1 hour',
       md5(g::text)::uuid,
       CASE WHEN g % 2 = 0 THEN 'low' ELSE 'high' END::tone,
       'do not show ' || g
FROM generate_series(1, 400) g;
INSERT INTO items (id, name) VALUES (1000, 'quote '' " ; -- ) ☃'), (1001, 'comma, "c,d"');
"#;

async fn app() -> TestApp {
    let db = TestDb::new().await;
    db.client.batch_execute(ITEMS).await.unwrap();
    let mut settings = settings(&db, &[("items", "items", Some("id"))]);
    settings.datasets[0].columns = Some(
        ["id", "name", "price", "paid", "seen", "ref", "tone"]
            .map(String::from)
            .to_vec(),
    );
    settings.pages.max_limit = 500;
    spawn_with(db, settings).await
}

/// The ids of the rows `/rows` returns for `query`, in order.
async fn ids(app: &TestApp, query: &str) -> Vec<i64> {
    let response = app
        .get(&format!("/v1/datasets/items/rows?select=id&{query}"), &[])
        .await;
    assert_eq!(response.status(), 200, "{query}: {}", response.text().await.unwrap());
    let body = response.text().await.unwrap();
    body.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

/// The ids the same condition selects in SQL.
async fn sql_ids(app: &TestApp, condition: &str, order: &str) -> Vec<i64> {
    let sql = format!("SELECT id FROM items WHERE {condition} ORDER BY {order}");
    app.db
        .client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn every_operator_matches_the_same_query_in_sql() {
    let app = app().await;
    for (query, condition) in [
        ("id=eq.42", "id = 42"),
        ("id=neq.42", "id <> 42"),
        ("price=gt.100.5", "price > 100.5"),
        ("price=gte.300", "price >= 300"),
        ("price=lt.7.5", "price < 7.5"),
        ("price=lte.7.5", "price <= 7.5"),
        ("name=like.item 1*", "name LIKE 'item 1%'"),
        ("name=ilike.ITEM 2*", "name ILIKE 'item 2%'"),
        ("name=eq.50%25 off_15", "name = '50% off_15'"),
        ("name=like.50\\%25*", "name LIKE '50\\%%'"),
        ("id=in.(1,2,3,999)", "id IN (1, 2, 3, 999)"),
        (
            "name=in.(\"comma, \\\"c,d\\\"\",item 4)",
            "name IN ('comma, \"c,d\"', 'item 4')",
        ),
        ("id=in.()", "false"),
        ("name=is.null", "name IS NULL"),
        ("paid=is.true", "paid IS TRUE"),
        ("paid=is.false", "paid IS FALSE"),
        ("paid=eq.true", "paid = true"),
        ("paid=not.is.null", "paid IS NOT NULL"),
        ("id=not.in.(1,2)", "NOT (id IN (1, 2))"),
        ("price=not.gt.100", "NOT (price > 100)"),
        (
            "seen=gte.2024-03-05T12:00:00%2B02:00",
            "seen >= '2024-03-05 12:00:00+02'",
        ),
        (
            "ref=eq.c4ca4238-a0b9-2382-0dcc-509a6f75849b",
            "ref = 'c4ca4238a0b923820dcc509a6f75849b'",
        ),
        (
            "tone=eq.low&price=lt.50&paid=is.true",
            "tone = 'low' AND price < 50 AND paid",
        ),
        ("id=gt.10&id=lt.20", "id > 10 AND id < 20"),
        ("name=eq.quote ' \" ; -- ) ☃", "name = 'quote '' \" ; -- ) ☃'"),
    ] {
        assert_eq!(ids(&app, query).await, sql_ids(&app, condition, "id").await, "{query}");
    }
}

#[tokio::test]
async fn select_order_limit_and_csv_follow_the_request() {
    let app = app().await;
    let body = app
        .get(
            "/v1/datasets/items/rows?select=price,id&order=price.desc.nullslast,id&limit=3&format=csv&price=lt.10",
            &[],
        )
        .await
        .text()
        .await
        .unwrap();
    let expected: Vec<String> = app
        .db
        .client
        .query(
            "SELECT price::text, id FROM items WHERE price < 10 ORDER BY price DESC NULLS LAST, id LIMIT 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{},{}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    assert_eq!(body, format!("price,id\n{}\n", expected.join("\n")));
    let ordered = ids(&app, "order=name.asc.nullsfirst").await;
    assert_eq!(ordered, sql_ids(&app, "true", "name ASC NULLS FIRST, id").await);
}

async fn problem(app: &TestApp, query: &str) -> (u16, String) {
    let response = app.get(&format!("/v1/datasets/items/rows?{query}"), &[]).await;
    let status = response.status().as_u16();
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (status, body["detail"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn malformed_values_and_names_are_400s_that_name_the_parameter() {
    let app = app().await;
    for (query, parameter) in [
        ("price=gt.cheap", "price"),
        ("id=in.(1,two)", "id"),
        ("seen=lt.yesterday-ish", "seen"),
        ("ref=eq.not-a-uuid", "ref"),
        ("paid=eq.maybe", "paid"),
        ("tone=eq.medium", "tone"),
        ("id=eq.99999999999999999999", "id"),
        ("after=x", "after"),
        ("secret=eq.x", "secret"),
        ("select=secret", "select"),
        ("order=secret", "order"),
        ("id=eq.1;DROP TABLE items", "id"),
        ("id) OR (1=1=eq.1", "id) OR (1"),
        ("name=eq.x&name\u{2028}=eq.y", "name\u{2028}"),
    ] {
        let (status, detail) = problem(&app, query).await;
        assert_eq!(status, 400, "{query}: {detail}");
        assert!(
            detail.contains(&format!("{parameter:?}")),
            "{query}: {detail:?} should name {parameter:?}"
        );
    }
    let count: i64 = app
        .db
        .client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 402, "the table is intact");
}

#[tokio::test]
async fn long_in_lists_are_checked_in_one_statement_and_a_bad_value_among_them_is_named() {
    let app = app().await;
    let list = |n: usize, bad: Option<usize>| {
        let values: Vec<String> = (1..=n)
            .map(|i| {
                if Some(i) == bad {
                    "seven".to_owned()
                } else {
                    i.to_string()
                }
            })
            .collect();
        format!("in.({})", values.join(","))
    };
    // The most an in list holds: every value checked, the rows those of SQL.
    let started = std::time::Instant::now();
    let found = ids(
        &app,
        &format!("id={}&price=in.({})", list(1000, None), "3.75,7.50,11.25"),
    )
    .await;
    eprintln!(
        "figure: 1000 id values and 3 price values checked and run in {:?}",
        started.elapsed()
    );
    let expected: Vec<i64> = app
        .db
        .column("SELECT id FROM items WHERE id BETWEEN 1 AND 1000 AND price IN (3.75, 7.50, 11.25) ORDER BY id")
        .await;
    assert!(expected.len() >= 3);
    assert_eq!(found, expected);
    // One bad value among them, in either parameter, is found and named.
    for (query, parameter) in [
        (format!("id={}&price=in.(1.5,2.5)", list(1000, Some(777))), "id"),
        (format!("id={}&price=in.(1.5,dear,2.5)", list(999, None)), "price"),
        (format!("price=in.(1.5,2.5)&id={}&name=eq.x", list(1000, Some(1))), "id"),
    ] {
        let (status, detail) = problem(&app, &query).await;
        assert_eq!(status, 400, "{detail}");
        assert!(
            detail.contains(&format!("{parameter:?}")),
            "{detail:?} should name {parameter:?}"
        );
    }
    // One more value than an in list holds is refused before any query, naming the parameter.
    let (status, detail) = problem(&app, &format!("id={}", list(1001, None))).await;
    assert_eq!(status, 400);
    assert!(detail.contains("\"id\"") && detail.contains("at most 1000"), "{detail}");
}

#[tokio::test]
async fn injection_attempts_in_values_match_literally() {
    let app = app().await;
    for value in [
        "1' OR '1'='1",
        "x'); DROP TABLE items; --",
        "*/ SELECT 1 /*",
        ") OR true --",
        "\\'; SELECT pg_sleep(5); --",
    ] {
        let query = serde_urlencoded::to_string([("select", "id"), ("name", &format!("eq.{value}"))]).unwrap();
        let response = app.get(&format!("/v1/datasets/items/rows?{query}"), &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "", "{value} must match nothing");
    }
}

#[tokio::test]
async fn resuming_with_after_completes_a_cut_off_download_exactly() {
    let app = app().await;
    let all = ids(&app, "price=gt.100").await;
    // A download cut after some rows resumes from the last key it saw.
    let cut = &all[..all.len() / 3];
    let rest = ids(&app, &format!("price=gt.100&after={}", cut.last().unwrap())).await;
    assert_eq!([cut, &rest[..]].concat(), all);
    assert_eq!(problem(&app, "after=5&order=price").await.0, 400);
}

async fn walk(app: &TestApp, first: &str, insert_during: bool) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut url = format!("/v1/datasets/items/page?{first}");
    for round in 0..1000u16 {
        let response = app.get(&url, &[]).await;
        assert_eq!(response.status(), 200, "{url}");
        let link = response.headers().get("link").map(|l| l.to_str().unwrap().to_owned());
        let page: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        seen.extend(
            page["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        if insert_during && round < 5 {
            // Rows inserted elsewhere in the order while the walk is under way.
            let id = 5000 + i64::from(round);
            app.db
                .client
                .execute("INSERT INTO items (id, name, price) VALUES ($1, 'late', 1)", &[&id])
                .await
                .unwrap();
        }
        match page["next"].as_str() {
            None => {
                assert!(link.is_none());
                return seen;
            }
            Some(next) => {
                let link = link.expect("a Link header with the next page");
                assert!(link.ends_with(">; rel=\"next\""), "{link}");
                url = link.trim_start_matches('<').split(">;").next().unwrap().to_owned();
                assert!(url.contains(&serde_urlencoded::to_string([("cursor", next)]).unwrap()));
            }
        }
    }
    panic!("the walk did not end");
}

#[tokio::test]
async fn a_page_walk_returns_every_matching_row_exactly_once() {
    let app = app().await;
    for (query, condition, order) in [
        ("limit=17", "true", "id"),
        (
            "limit=9&order=price.desc&price=lt.300",
            "price < 300",
            "price DESC NULLS FIRST, id",
        ),
        (
            "limit=13&order=name.asc.nullsfirst,paid.desc",
            "true",
            "name ASC NULLS FIRST, paid DESC, id",
        ),
        ("limit=500", "true", "id"),
    ] {
        let walked = walk(&app, query, false).await;
        assert_eq!(walked, sql_ids(&app, condition, order).await, "{query}");
    }
    let before: HashSet<i64> = sql_ids(&app, "true", "id").await.into_iter().collect();
    let walked = walk(&app, "limit=25&order=price.asc", true).await;
    let unique: HashSet<i64> = walked.iter().copied().collect();
    assert_eq!(unique.len(), walked.len(), "no row twice");
    assert!(before.is_subset(&unique), "every row present at the start is returned");
}

#[tokio::test]
async fn tampered_foreign_or_malformed_cursors_are_400s() {
    let app = app().await;
    let page: serde_json::Value = serde_json::from_slice(
        &app.get("/v1/datasets/items/page?limit=5", &[])
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let next = page["next"].as_str().unwrap().to_owned();
    let (payload, tag) = next.split_once('.').unwrap();
    let mut flipped = tag.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for (query, why) in [
        (format!("cursor={payload}.{flipped}"), "tampered"),
        (format!("cursor={next}&order=price"), "another order"),
        ("cursor=garbage".to_owned(), "malformed"),
        ("limit=0".to_owned(), "limit"),
        ("limit=501".to_owned(), "limit"),
        ("format=csv".to_owned(), "format"),
        ("seen=gt.".to_owned(), "a value that is no timestamp"),
    ] {
        let response = app.get(&format!("/v1/datasets/items/page?{query}"), &[]).await;
        assert_eq!(response.status(), 400, "{why}");
    }
}

#[tokio::test]
async fn the_catalog_lists_columns_keys_and_estimates() {
    let app = app().await;
    app.db.client.batch_execute("ANALYZE items").await.unwrap();
    let response = app.get("/v1/datasets", &[]).await;
    let catalog: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let items = &catalog["datasets"][0];
    assert_eq!(items["name"], "items");
    assert_eq!(items["key"], "id");
    assert_eq!(items["estimated_rows"], 402);
    let columns: Vec<&str> = items["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["id", "name", "price", "paid", "seen", "ref", "tone"],
        "secret is not configured"
    );
    assert_eq!(
        items["columns"][2],
        serde_json::json!({ "name": "price", "type": "numeric(10,2)", "nullable": true })
    );
    assert_eq!(items["columns"][0]["nullable"], false);
    let one: serde_json::Value =
        serde_json::from_slice(&app.get("/v1/datasets/items", &[]).await.bytes().await.unwrap()).unwrap();
    assert_eq!(&one, items);
    assert_eq!(app.get("/v1/datasets/nope", &[]).await.status(), 404);
}

#[tokio::test]
async fn prefer_count_adds_the_total_to_rows_and_pages() {
    let app = app().await;
    app.db.client.batch_execute("ANALYZE items").await.unwrap();
    let exact = [("prefer", "count=exact")];
    let response = app.get("/v1/datasets/items/rows?price=gt.200&limit=3", &exact).await;
    let expected = sql_ids(&app, "price > 200", "id").await.len().to_string();
    assert_eq!(response.headers()["x-total-count"], expected.as_str());
    assert_eq!(response.headers()["preference-applied"], "count=exact");
    assert_eq!(response.text().await.unwrap().lines().count(), 3);
    let page = app.get("/v1/datasets/items/page?limit=2&price=gt.200", &exact).await;
    assert_eq!(page.headers()["x-total-count"], expected.as_str());
    let estimated = app
        .get("/v1/datasets/items/rows?limit=1", &[("prefer", "count=estimated")])
        .await;
    assert_eq!(estimated.headers()["preference-applied"], "count=estimated");
    let estimate: i64 = estimated.headers()["x-total-count"].to_str().unwrap().parse().unwrap();
    assert!((300..=500).contains(&estimate), "{estimate}");
    let plain = app.get("/v1/datasets/items/rows?limit=1", &[]).await;
    assert!(plain.headers().get("x-total-count").is_none());
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_covers_every_dataset() {
    let app = app().await;
    let response = app.get("/v1/openapi.json", &[]).await;
    assert_eq!(response.status(), 200);
    let document: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let rows = &document["paths"]["/v1/datasets/items/rows"]["get"];
    let names: Vec<&str> = rows["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in ["select", "order", "limit", "format", "after", "id", "price", "tone"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert!(!names.contains(&"secret"));
    assert!(document["paths"]["/v1/datasets/items/page"]["get"].is_object());
    // A real validator, from the venv scripts/test.sh prepares.
    crate::helpers::check_openapi(&document, serde_json::json!([])).await;
}

#[tokio::test]
async fn at_scale_page_walks_and_resumed_downloads_return_each_row_once() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, category text, amount numeric(12,2)); \
             INSERT INTO big SELECT g, (ARRAY['a','b','c','d'])[1 + g % 4], CASE WHEN g % 13 = 0 THEN NULL \
               ELSE (g * 7919) % 100000 / 100.0 END FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    let mut settings = settings(&db, &[("big", "big", Some("id"))]);
    settings.pages.max_limit = 5000;
    let app = spawn_with(db, settings).await;

    // A filtered walk in a custom order, NULLs included, against the same query in SQL.
    let mut walked: Vec<i64> = Vec::new();
    let mut url = "/v1/datasets/big/page?select=id&category=in.(a,c)&order=amount.desc,category&limit=3000".to_owned();
    for _ in 0..100 {
        let response = app.get(&url, &[]).await;
        assert_eq!(response.status(), 200);
        let page: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        walked.extend(
            page["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        let Some(next) = page["next"].as_str() else { break };
        url = format!(
            "/v1/datasets/big/page?select=id&category=in.(a,c)&order=amount.desc,category&limit=3000&{}",
            serde_urlencoded::to_string([("cursor", next)]).unwrap()
        );
    }
    let expected: Vec<i64> = app
        .db
        .column("SELECT id FROM big WHERE category IN ('a','c') ORDER BY amount DESC NULLS FIRST, category, id")
        .await;
    assert_eq!(expected.len(), 50_000);
    assert_eq!(walked, expected);

    // A download cut off mid-stream resumes from the last complete row it holds.
    let mut response = app.raw("/v1/datasets/big/rows?amount=gt.100", &[]).await;
    let mut received = Vec::new();
    for _ in 0..10 {
        received.extend(response.next_chunk().await.unwrap().unwrap());
    }
    drop(response);
    let complete = &received[..=received.iter().rposition(|b| *b == b'\n').unwrap()];
    let mut ids: Vec<i64> = complete
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let last = *ids.last().unwrap();
    let rest = app
        .get(&format!("/v1/datasets/big/rows?amount=gt.100&after={last}"), &[])
        .await
        .text()
        .await
        .unwrap();
    ids.extend(rest.lines().map(|l| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
            .as_i64()
            .unwrap()
    }));
    let all: Vec<i64> = app
        .db
        .client
        .query("SELECT id FROM big WHERE amount > 100 ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        ids.len() > 1000 && last < *all.last().unwrap(),
        "the download was really cut"
    );
    assert_eq!(ids, all);
}
