//! Every built-in type family against every operator, `order` and page walk: no request answers 5xx, every
//! refusal is a 400 naming its parameter, and every 200 equals the same query in SQL.

use serde_json::Value;

use crate::helpers::{TestApp, TestDb, spawn_app};

/// A table with a column of each type family Postgres ships, six rows of values and one of NULLs.
pub(crate) const EVERY_TYPE: &str = r#"
CREATE TYPE every_mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a integer, b text);
CREATE TYPE jpair AS (a integer, j json);
CREATE TABLE every_type (
  id integer PRIMARY KEY,
  i2 smallint, i4 integer, i8 bigint, num numeric(12,3), r4 real, r8 double precision, cash money,
  txt text, vc varchar(10), ch char(4), nm name, ch1 "char",
  bin bytea, flag boolean,
  d date, t time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
  ip inet, net cidr, mac macaddr, mac8 macaddr8,
  pt point, ln line, seg lseg, bx box, pth path, poly polygon, circ circle,
  b3 bit(3), vb varbit,
  u uuid, x xml, j json, jb jsonb, jp jsonpath,
  ints integer[], texts text[], pts point[], jsons json[],
  r int4range, tr tstzrange, mr int4multirange,
  tsv tsvector, tsq tsquery,
  m every_mood, pi posint, p pair, jpr jpair,
  lsn pg_lsn, o oid, xi xid
);
INSERT INTO every_type
SELECT g,
  g * 10, g * 1000, g * 100000000000, g * 1.125, g / 3.0, g / 7.0, (g * 2.5)::numeric::money,
  'text ' || g, 'vc' || g, 'c' || g, 'name' || g, chr(96 + g)::"char",
  decode(lpad(to_hex(g), 2, '0') || 'ff', 'hex'), g % 2 = 0,
  date '2024-01-01' + g, time '10:00' + g * interval '1 minute', timetz '10:00+02' + g * interval '1 minute',
  timestamp '2024-01-01 12:00' + g * interval '1 day', timestamptz '2024-01-01 12:00+00' + g * interval '1 hour',
  g * interval '1 day 2 hours',
  ('10.0.0.' || g)::inet, ('10.' || g || '.0.0/16')::cidr, ('08:00:2b:01:02:0' || g)::macaddr,
  ('08:00:2b:01:02:03:04:0' || g)::macaddr8,
  point(g, g * 2), line(point(0, 0), point(1, g)), lseg(point(0, 0), point(g, g)), box(point(0, 0), point(g, g)),
  path(polygon(box(point(0, 0), point(g, g)))), polygon(box(point(0, 0), point(g, g))), circle(point(0, 0), g),
  (g % 8)::bit(3), (g::bit(5))::varbit,
  md5(g::text)::uuid, ('<a n="' || g || '"/>')::xml, json_build_object('g', g), jsonb_build_object('g', g, 's', 'x,y'),
  ('$.a[' || g || ']')::jsonpath,
  ARRAY[g, g + 1], ARRAY['a' || g, 'b,"' || g], ARRAY[point(g, g)], ARRAY[json_build_object('g', g)],
  int4range(g, g + 5), tstzrange(timestamptz '2024-01-01' + g * interval '1 day', NULL),
  int4multirange(int4range(g, g + 1), int4range(g + 3, g + 4)),
  to_tsvector('simple', 'word' || g || ' other'), to_tsquery('simple', 'word' || g),
  (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::every_mood, g::posint, ROW(g, 'p' || g)::pair,
  ROW(g, json_build_object('g', g))::jpair,
  ('0/' || to_hex(g * 4096))::pg_lsn, (1000 + g)::oid, (500 + g)::text::xid
FROM generate_series(1, 6) g;
INSERT INTO every_type (id) VALUES (7);
"#;

/// Each column's outcomes in the matrix below, in the order of its cases: `eq`, `not.eq`, `neq`, `not.neq`,
/// `gt`, `not.gt`, `gte`, `not.gte`, `lt`, `not.lt`, `lte`, `not.lte`, `in`, `like`, `ilike`, `is.null`,
/// `not.is.null`, then `order` ascending and descending (with its page walk).
const PINNED_OUTCOMES: &str = "
i2    2222222222222442222
i4    2222222222222442222
i8    2222222222222442222
num   2222222222222442222
r4    2222222222222442222
r8    2222222222222442222
cash  2222222222222442222
txt   2222222222222222222
vc    2222222222222222222
ch    2222222222222222222
nm    2222222222222222222
ch1   2222222222222442222
bin   2222222222222442222
flag  2222222222222442222
d     2222222222222442222
t     2222222222222442222
ttz   2222222222222442222
ts    2222222222222442222
tstz  2222222222222442222
iv    2222222222222442222
ip    2222222222222442222
net   2222222222222442222
mac   2222222222222442222
mac8  2222222222222442222
pt    4422444444444442244
ln    2244444444442442244
seg   2222222222222442244
bx    2244222222222442244
pth   2244222222222442244
poly  4444444444444442244
circ  2222222222222442244
b3    2222222222222442222
vb    2222222222222442222
u     2222222222222442222
x     4444444444444442244
j     4444444444444442244
jb    2222222222222442222
jp    4444444444444442244
ints  2222222222222442222
texts 2222222222222442222
pts   4444444444444442244
jsons 4444444444444442244
r     2222222222222442222
tr    2222222222222442222
mr    2222222222222442222
tsv   2222222222222442222
tsq   2222222222222442222
m     2222222222222222222
pi    2222222222222442222
p     2222222222222442222
jpr   4444444444444442244
lsn   2222222222222442222
o     2222222222222442222
xi    2222444444442442244
";

async fn app() -> TestApp {
    let db = TestDb::new().await;
    db.client.batch_execute(EVERY_TYPE).await.unwrap();
    spawn_app(db, &[("every", "every_type", Some("id"))]).await
}

/// Sends `query` to `path`: the status and, for a 200, the ids of `/rows` or of a page's rows with its next
/// cursor. A 5xx fails the test at once.
async fn request(app: &TestApp, path: &str, query: &str) -> (u16, String, Vec<i64>, Option<String>) {
    let response = app
        .get(&format!("/v1/datasets/every/{path}?select=id&{query}"), &[])
        .await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert!(status < 500, "{path}?{query} answered {status}: {body}");
    if status != 200 {
        let problem: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{query}: {body}"));
        assert_eq!(problem["status"], status, "{body}");
        return (status, body, Vec::new(), None);
    }
    let id = |row: &Value| row["id"].as_i64().unwrap();
    if path == "page" {
        let page: Value = serde_json::from_str(&body).unwrap();
        let ids = page["rows"].as_array().unwrap().iter().map(id).collect();
        return (status, body, ids, page["next"].as_str().map(str::to_owned));
    }
    let ids = body.lines().map(|l| id(&serde_json::from_str(l).unwrap())).collect();
    (status, body, ids, None)
}

/// The ids SQL selects: `SELECT id FROM every_type WHERE <condition> ORDER BY <order>`.
async fn sql(app: &TestApp, condition: &str, order: &str) -> Vec<i64> {
    let text = format!("SELECT id::int8 FROM every_type AS t WHERE {condition} ORDER BY {order}");
    app.db.column(&text).await
}

/// `name=value`, URL-encoded.
fn pair(name: &str, value: &str) -> String {
    serde_urlencoded::to_string([(name, value)]).unwrap()
}

/// A PostgREST list item: quoted, with `"` and `\` escaped.
fn item(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

#[tokio::test]
async fn every_operator_order_and_page_on_every_type_is_a_400_or_equals_sql() {
    let app = app().await;
    let columns: Vec<String> = app
        .db
        .column(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'every_type'::regclass AND attnum > 1 \
             ORDER BY attnum",
        )
        .await;
    let (mut answered, mut refused) = (0, 0);
    // Per column, each case's status in order ('2': 200 and equal to SQL, '4': a 400 naming the parameter).
    let mut outcomes = Vec::new();
    for column in &columns {
        let mut outcome = String::new();
        let value = |id: i32| {
            let app = &app;
            async move {
                let text = format!("SELECT {column}::text FROM every_type WHERE id = {id}");
                app.db.client.query_one(&text, &[]).await.unwrap().get::<_, String>(0)
            }
        };
        let (second, third) = (value(2).await, value(3).await);
        let same = |id: i32| format!("(SELECT {column} FROM every_type WHERE id = {id})");
        let mut cases: Vec<(String, String)> = Vec::new();
        for (op, sql_op) in [
            ("eq", "="),
            ("neq", "<>"),
            ("gt", ">"),
            ("gte", ">="),
            ("lt", "<"),
            ("lte", "<="),
        ] {
            cases.push((
                pair(column, &format!("{op}.{second}")),
                format!("t.{column} {sql_op} {}", same(2)),
            ));
            cases.push((
                pair(column, &format!("not.{op}.{second}")),
                format!("NOT (t.{column} {sql_op} {})", same(2)),
            ));
        }
        cases.push((
            pair(column, &format!("in.({},{})", item(&second), item(&third))),
            format!("t.{column} IN ({}, {})", same(2), same(3)),
        ));
        cases.push((pair(column, "like.*3*"), format!("t.{column}::text LIKE '%3%'")));
        cases.push((pair(column, "ilike.*TEXT*"), format!("t.{column}::text ILIKE '%TEXT%'")));
        cases.push((pair(column, "is.null"), format!("t.{column} IS NULL")));
        cases.push((pair(column, "not.is.null"), format!("NOT (t.{column} IS NULL)")));
        for (query, condition) in cases {
            let (status, body, ids, _) = request(&app, "rows", &query).await;
            if status == 200 {
                assert_eq!(ids, sql(&app, &condition, "id").await, "{query}");
                answered += 1;
                outcome.push('2');
            } else {
                assert_eq!(status, 400, "{query}: {body}");
                let name = query.split('=').next().unwrap();
                assert!(body.contains(&format!("\\\"{name}\\\"")), "{query}: {body}");
                refused += 1;
                outcome.push('4');
            }
        }
        for (modifier, sql_order) in [("", "ASC NULLS LAST"), (".desc", "DESC NULLS FIRST")] {
            let order = format!("order={column}{modifier}");
            let expected = format!("t.{column} {sql_order}, id");
            let (status, body, ids, _) = request(&app, "rows", &order).await;
            if status != 200 {
                assert!(body.contains("order"), "{order}: {body}");
                let (page_status, _, _, _) = request(&app, "page", &order).await;
                assert_eq!(page_status, 400, "/page?{order}");
                refused += 2;
                outcome.push('4');
                continue;
            }
            outcome.push('2');
            assert_eq!(ids, sql(&app, "true", &expected).await, "{order}");
            // Pages of two: every cursor round-trips this type's text through its input function.
            let mut walked = Vec::new();
            let mut query = format!("{order}&limit=2");
            for _ in 0..10 {
                let (status, body, ids, next) = request(&app, "page", &query).await;
                assert_eq!(status, 200, "/page?{query}: {body}");
                walked.extend(ids);
                match next {
                    Some(cursor) => query = format!("{order}&limit=2&{}", pair("cursor", &cursor)),
                    None => break,
                }
            }
            assert_eq!(walked, sql(&app, "true", &expected).await, "/page?{order}");
            answered += 2;
        }
        outcomes.push(format!("{column:5} {outcome}"));
    }
    println!("figure: every-type matrix: {answered} requests answered 200 and equal SQL, {refused} refused with 400");
    // Pinned: a type that gains or loses an operator, an order or a page walk shows here by name.
    let outcomes = outcomes.join("\n");
    assert_eq!(outcomes, PINNED_OUTCOMES.trim(), "the matrix moved:\n{outcomes}");
}

#[tokio::test]
async fn operators_a_type_lacks_are_400s_and_those_it_has_are_served() {
    let app = app().await;
    for query in [
        "j=eq.{}",
        "j=in.({})",
        "x=eq.<a/>",
        "jp=eq.$",
        "pt=gt.(1,2)",
        "ln=lt.{1,2,3}",
        "jpr=eq.(1,{})",
        "jsons=eq.{}",
        "pts=lt.{}",
        "xi=gt.501",
        "order=j",
        "order=jpr",
        "order=pts",
        "order=xi",
        "order=bx.desc",
        "limit=9223372036854775808",
        "limit=99999999999999999999",
        "txt=like.abc%5C",
    ] {
        let (status, body, _, _) = request(&app, "rows", query).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    for (query, ids) in [
        ("ints=eq.{2,3}", vec![2]),
        ("p=eq.(2,p2)", vec![2]),
        ("r=eq.[2,7)", vec![2]),
        ("mr=gt.{[5,6),[8,9)}", vec![6]),
        ("m=gt.ok", vec![2, 5]),
        ("pi=gte.5", vec![5, 6]),
        ("b3=eq.010", vec![2]),
        ("b3=eq.1", vec![]),
        ("ch=eq.c2", vec![2]),
        ("ch=in.(c3,c4%20%20%20)", vec![3, 4]),
        ("xi=eq.502", vec![2]),
        ("bx=eq.(3,3),(0,0)", vec![3]),
        ("tsq=eq.'word4'", vec![4]),
        ("txt=like.text%5C%5C*", vec![]),
        ("limit=9223372036854775807&order=p.desc", vec![7, 6, 5, 4, 3, 2, 1]),
        ("order=ints.desc&limit=2", vec![7, 6]),
        ("order=r&limit=2", vec![1, 2]),
    ] {
        let (status, body, got, _) = request(&app, "rows", query).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(got, ids, "{query}");
    }
    // A value the type's input rejects (a domain's CHECK, a tsquery syntax error) names its parameter.
    for query in ["pi=eq.-1", "tsq=eq.a b", "b3=eq.12", "m=eq.angry", "ints=eq.{x}"] {
        let (status, body, _, _) = request(&app, "rows", query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let name = query.split('=').next().unwrap();
        assert!(body.contains(&format!("\\\"{name}\\\"")), "{query}: {body}");
    }
    let (status, body, _, _) = request(&app, "page", "limit=9223372036854775808").await;
    assert_eq!(status, 400, "{body}");
}
