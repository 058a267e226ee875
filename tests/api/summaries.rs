//! Summaries: aggregates in `select`, compared with the same SQL in every format, paged on their groups,
//! and refused (400, naming the parameter) where a type lacks the function, the setting is off, or the plan
//! costs more than `query.max_cost`.

use arrow_array::{Array, Decimal128Array, Int64Array, StringArray};
use arrow_schema::DataType;
use serde_json::Value;

use crate::helpers::{TestApp, TestDb, settings, spawn_with};

/// Every family with aggregates: exact numerics (sums past `bigint`), floats, `money`, `interval`, times,
/// an enum, arrays; NULLs in groups and values.
const SALES: &str = r#"
CREATE TYPE tier AS ENUM ('bronze', 'silver', 'gold');
CREATE TABLE sales (
  id bigint PRIMARY KEY, category text, region text, amount numeric(12,2), qty int, small smallint,
  big bigint, ratio float8, price money, took interval, at timestamptz, day date, tier tier, flags int[],
  note text, ok boolean, r real, tm time, exact numeric
);
INSERT INTO sales
SELECT g,
       CASE WHEN g % 9 = 0 THEN NULL ELSE 'cat ' || (g % 4) END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'r' || (g % 3) END,
       CASE WHEN g % 13 = 0 THEN NULL ELSE round((g * 7.31) % 1000, 2) END,
       g % 17, (g % 300)::smallint,
       9000000000000000000 - g,
       g / 7.0,
       (g * 1.25)::numeric::money,
       make_interval(months => g % 3, days => g % 40, secs => g * 1.5),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes',
       date '2023-12-01' + g,
       (ARRAY['bronze', 'silver', 'gold'])[1 + g % 3]::tier,
       ARRAY[g % 5, g % 7],
       'note ' || g, g % 2 = 0, g / 3.0, time '00:00' + g * interval '7 minutes', g / 7.0
FROM generate_series(1, 240) g;
"#;

async fn app(configure: impl FnOnce(&mut pgspout::settings::Settings)) -> TestApp {
    let db = TestDb::new().await;
    db.client.batch_execute(SALES).await.unwrap();
    let mut settings = settings(&db, &[("sales", "sales", Some("id")), ("plain", "sales", Some("id"))]);
    settings.query.aggregates = true;
    settings.datasets[1].aggregates = Some(false);
    configure(&mut settings);
    spawn_with(db, settings).await
}

async fn body(app: &TestApp, path: &str) -> (u16, String) {
    let response = app.get(path, &[]).await;
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The rows of `SELECT <select> FROM sales [WHERE …] [GROUP BY …]`, ordered, as `row_to_json` prints them.
async fn sql_rows(app: &TestApp, summary: &str, order: &str) -> Vec<String> {
    let sql = format!("SELECT row_to_json(q)::text FROM ({summary}) q ORDER BY {order}");
    // pgspout's sessions print timestamptz in UTC.
    app.db.client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    app.db
        .client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn every_aggregate_grouped_or_not_filtered_aliased_and_ordered_equals_the_same_sql() {
    let app = app(|_| {}).await;
    let cases = [
        (
            "select=n:count(),amount_sum:amount.sum(),amount_avg:amount.avg(),amount_min:amount.min(),\
             amount_max:amount.max(),qty_sum:qty.sum(),small_sum:small.sum(),big_sum:big.sum(),big_avg:big.avg(),\
             ratio_sum:ratio.sum(),ratio_avg:ratio.avg(),price_sum:price.sum(),price_max:price.max(),\
             took_sum:took.sum(),took_avg:took.avg(),at_min:at.min(),day_max:day.max(),tier_max:tier.max(),\
             flags_min:flags.min(),notes:note.count(),amounts:amount.count(),r_sum:r.sum(),r_avg:r.avg(),\
             tm_min:tm.min(),exact_sum:exact.sum(),exact_avg:exact.avg()",
            "SELECT count(*) AS n, sum(amount) AS amount_sum, avg(amount) AS amount_avg, min(amount) AS amount_min, \
             max(amount) AS amount_max, sum(qty) AS qty_sum, sum(small) AS small_sum, sum(big) AS big_sum, \
             avg(big) AS big_avg, sum(ratio) AS ratio_sum, avg(ratio) AS ratio_avg, sum(price) AS price_sum, \
             max(price) AS price_max, sum(took) AS took_sum, avg(took) AS took_avg, min(at) AS at_min, \
             max(day) AS day_max, max(tier) AS tier_max, min(flags) AS flags_min, count(note) AS notes, \
             count(amount) AS amounts, sum(r) AS r_sum, avg(r) AS r_avg, min(tm) AS tm_min, sum(exact) AS exact_sum, \
             avg(exact) AS exact_avg FROM sales",
            "1",
        ),
        (
            "select=category,total:amount.sum(),count()&qty=gte.3&order=total.desc&limit=3",
            "SELECT category, sum(amount) AS total, count(*) AS count FROM sales WHERE qty >= 3 GROUP BY category",
            "total DESC NULLS FIRST, category LIMIT 3",
        ),
        (
            "select=category,region,qty.max(),amount.sum()",
            "SELECT category, region, max(qty) AS max, sum(amount) AS sum FROM sales GROUP BY category, region",
            "category, region",
        ),
        (
            "select=tier,amount.sum(),took.avg()&order=amount.sum().asc&ok=is.true",
            "SELECT tier, sum(amount) AS sum, avg(took) AS avg FROM sales WHERE ok IS TRUE GROUP BY tier",
            "sum, tier",
        ),
        (
            "select=count(),big.sum()&category=eq.nothing",
            "SELECT count(*) AS count, sum(big) AS sum FROM sales WHERE category = 'nothing'",
            "1",
        ),
    ];
    for (query, summary, order) in cases {
        let (status, ndjson) = body(&app, &format!("/v1/datasets/sales/rows?{query}")).await;
        assert_eq!(status, 200, "{query}: {ndjson}");
        let got: Vec<&str> = ndjson.lines().collect();
        let expected = sql_rows(&app, summary, order).await;
        assert!(!expected.is_empty(), "{summary}");
        assert_eq!(got, expected, "{query}");
    }

    // CSV: the types' own text, a sum past bigint exact; a count of groups for Prefer: count=exact.
    let response = app
        .get(
            "/v1/datasets/sales/rows?select=region,big.sum(),n:count()&format=csv",
            &[("Prefer", "count=exact")],
        )
        .await;
    assert_eq!(response.headers()["x-total-count"], "4", "three regions and NULL");
    let csv = response.text().await.unwrap();
    let expected: Vec<String> = app
        .db
        .client
        .query(
            "SELECT coalesce(region, '') || ',' || sum(big)::text || ',' || count(*) FROM sales \
             GROUP BY region ORDER BY region",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(csv, format!("region,sum,n\n{}\n", expected.join("\n")));
}

#[tokio::test]
async fn a_summary_pages_on_its_groups_and_keeps_decimal_types_in_arrow_and_parquet() {
    let app = app(|_| {}).await;
    // Pages, ordered by an aggregate: together they are the whole summary, each group once.
    let query = "select=category,region,total:amount.sum()&order=total.desc";
    let (_, whole) = body(&app, &format!("/v1/datasets/sales/rows?{query}")).await;
    let mut paged = Vec::new();
    let mut path = format!("/v1/datasets/sales/page?{query}&limit=4");
    for _ in 0..20 {
        let page: Value = app.get(&path, &[]).await.json().await.unwrap();
        for row in page["rows"].as_array().unwrap() {
            paged.push(row.to_string());
        }
        match page["next"].as_str() {
            Some(cursor) => path = format!("/v1/datasets/sales/page?{query}&limit=4&cursor={cursor}"),
            None => break,
        }
    }
    let whole: Vec<String> = whole
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap().to_string())
        .collect();
    assert!(
        whole.len() > 10,
        "up to five categories (one NULL) by four regions (one NULL)"
    );
    assert_eq!(paged, whole);
    // A plain page's cursor does not fit the summary.
    let plain: Value = app
        .get("/v1/datasets/sales/page?limit=2", &[])
        .await
        .json()
        .await
        .unwrap();
    let cursor = plain["next"].as_str().unwrap();
    let (status, _) = body(&app, &format!("/v1/datasets/sales/page?{query}&cursor={cursor}")).await;
    assert_eq!(status, 400);

    // Arrow and Parquet: the sum of a numeric(12,2) is a decimal128(38,2), exact; a count an int64.
    let sums: Vec<(Option<String>, String, i64)> = app
        .db
        .client
        .query(
            "SELECT category, sum(amount)::text, count(*) FROM sales GROUP BY category ORDER BY category",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let path = "/v1/datasets/sales/rows?select=category,total:amount.sum(),n:count()";
    let arrow = app
        .get(&format!("{path}&format=arrow"), &[])
        .await
        .bytes()
        .await
        .unwrap();
    let reader = arrow_ipc::reader::StreamReader::try_new(&arrow[..], None).unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let parquet = app
        .get(&format!("{path}&format=parquet"), &[])
        .await
        .bytes()
        .await
        .unwrap();
    let parquet: Vec<_> = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (label, batches) in [("arrow", batches), ("parquet", parquet)] {
        let schema = batches[0].schema();
        assert_eq!(schema.field(1).data_type(), &DataType::Decimal128(38, 2), "{label}");
        assert_eq!(schema.field(2).data_type(), &DataType::Int64, "{label}");
        let mut read = Vec::new();
        for batch in &batches {
            let categories = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let totals = batch.column(1).as_any().downcast_ref::<Decimal128Array>().unwrap();
            let counts = batch.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..batch.num_rows() {
                read.push((
                    categories.is_valid(i).then(|| categories.value(i).to_owned()),
                    totals.value_as_string(i),
                    counts.value(i),
                ));
            }
        }
        assert_eq!(read, sums, "{label}");
    }
}

#[tokio::test]
async fn summaries_the_types_the_settings_or_the_cost_cap_refuse_are_400s_naming_the_parameter() {
    let app = app(|settings| settings.query.max_cost = Some(1_000.0)).await;
    for (query, parameter, says) in [
        ("select=note.sum()", "select", "text"),
        ("select=ok.max()", "select", "boolean"),
        ("select=flags.avg()", "select", "integer[]"),
        ("select=category,count()&order=id", "order", "not in select"),
        ("select=amount.sum(),qty.sum()", "select", "aliases"),
        ("select=count()&after=5", "after", "summary"),
    ] {
        let (status, problem) = body(&app, &format!("/v1/datasets/sales/rows?{query}")).await;
        assert_eq!(status, 400, "{query}: {problem}");
        let problem: Value = serde_json::from_str(&problem).unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("\"{parameter}\"")), "{query}: {detail}");
        assert!(detail.contains(says), "{query}: {detail}");
    }
    let (status, problem) = body(&app, "/v1/datasets/plain/rows?select=count()").await;
    assert_eq!(status, 400);
    assert!(
        problem.contains("query.aggregates") && problem.contains("\\\"select\\\""),
        "{problem}"
    );

    // The cost cap: a cheap summary runs, a costly one (a self-join's worth of rows) is refused before it runs.
    app.db
        .client
        .batch_execute(
            "CREATE VIEW pairs AS SELECT a.id, b.category FROM sales a CROSS JOIN sales b \
             CROSS JOIN generate_series(1, 100) c; ANALYZE sales",
        )
        .await
        .unwrap();
    let (status, cheap) = body(&app, "/v1/datasets/sales/rows?select=count()&id=eq.7").await;
    assert_eq!((status, cheap.trim()), (200, "{\"count\":1}"));
    let mut settings = settings(&app.db, &[("pairs", "pairs", None)]);
    settings.query.aggregates = true;
    settings.query.max_cost = Some(1_000.0);
    let address = crate::helpers::serve(settings).await;
    let response = reqwest::get(format!(
        "http://{address}/v1/datasets/pairs/rows?select=category,count()"
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"select\"") && detail.contains("query.max_cost"),
        "{detail}"
    );
    // Plain exports are not summaries: the cap leaves them alone.
    let response = reqwest::get(format!("http://{address}/v1/datasets/pairs/rows?limit=1"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_catalog_and_the_openapi_document_describe_summaries() {
    let app = app(|_| {}).await;
    let sales: Value = app.get("/v1/datasets/sales", &[]).await.json().await.unwrap();
    assert_eq!(sales["aggregates"], true);
    let functions = |name: &str| {
        let column = sales["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        column["aggregates"].clone()
    };
    assert_eq!(
        functions("amount"),
        serde_json::json!(["count", "sum", "avg", "min", "max"])
    );
    assert_eq!(functions("note"), serde_json::json!(["count", "min", "max"]));
    assert_eq!(functions("ok"), serde_json::json!(["count"]));
    let plain: Value = app.get("/v1/datasets/plain", &[]).await.json().await.unwrap();
    assert_eq!(plain["aggregates"], false);
    assert!(plain["columns"][0].get("aggregates").is_none());

    // The document is valid, and its patterns take the summaries these tests send and refuse what the
    // types lack (pattern and value checked by Python's re, which reads these patterns as ECMA-262 does).
    let document: Value = app.get("/v1/openapi.json", &[]).await.json().await.unwrap();
    let parameters = document["paths"]["/v1/datasets/sales/rows"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let pattern = |name: &str| {
        parameters.iter().find(|p| p["name"] == name).unwrap()["schema"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let checks = serde_json::json!([
        [pattern("select"), "category,total:amount.sum(),count()", true],
        [
            pattern("select"),
            "tier,amount.sum(),took.avg(),flags.min(),n:note.count()",
            true
        ],
        [pattern("select"), "note.sum()", false],
        [pattern("select"), "ok.max()", false],
        [
            pattern("order"),
            "total.desc,amount.sum().asc.nullsfirst,category",
            true
        ],
    ]);
    crate::helpers::check_openapi(&document, checks).await;
}
