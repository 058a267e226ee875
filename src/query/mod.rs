//! Request → validated plan: the SQL to run, its bind parameters, and how each result column is encoded.
//! No I/O here.
//!
//! # Layout
//! - `params`: the query string → a typed [`Request`] (PostgREST syntax).
//! - `cursor`: signed, opaque keyset cursors for pages.
//! - `keyset`: the "after this row" predicate, and exports read as keyset batches.
//!
//! Identifiers come only from the catalog (quoted there). Every value from the request is a bind parameter,
//! sent as text and cast in SQL to the column's type (without typmod, so `numeric(12,2)` does not round it).

pub(crate) mod cursor;
mod keyset;
pub(crate) mod params;
mod summary;

use crate::dataset::{Column, Dataset};
use crate::encode::{EncodedColumn, Format, ValueStyle};

use self::summary::Summary;

pub(crate) use self::keyset::KeysetScan;
pub use self::keyset::Position;
pub(crate) use self::params::{Endpoint, Filter, Operator, OrderTerm, ParamError, Request};

/// A value that must be checked against its column's type before the query runs, so that a bad one is a 400
/// naming its parameter rather than a failed export. All of a plan's checks run in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    /// The query parameter it came from.
    pub(crate) parameter: String,
    /// The type it is cast to (from the catalog, quoted there).
    pub(crate) cast_type: String,
    /// The value.
    pub(crate) value: String,
}

/// How to count the matching rows for `Prefer: count=…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CountMethod {
    /// `count(*)` in the export's own snapshot.
    Exact,
    /// The planner's estimate.
    Estimated,
}

/// A count query: SQL and how many of the plan's leading parameters it uses.
#[derive(Debug)]
pub(crate) struct CountPlan {
    /// How the count is made.
    pub(crate) method: CountMethod,
    /// `SELECT count(*) …` or `EXPLAIN (FORMAT JSON) …`.
    pub(crate) sql: String,
    /// It takes the plan's first `params` parameters (the filters').
    pub(crate) params: usize,
}

/// What an export or page runs and how it encodes the result.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The `SELECT`.
    pub(crate) sql: String,
    /// Its parameters, all sent as text.
    pub(crate) params: Vec<String>,
    /// Values to type-check first.
    pub(crate) checks: Vec<Check>,
    /// The count to run first, if asked for.
    pub(crate) count: Option<CountPlan>,
    /// The encoded result columns, in order. Pages append one hidden text column per sort term after these.
    pub(crate) columns: Vec<EncodedColumn>,
    /// The sort terms of a keyset plan; each row carries its position after the encoded columns.
    pub(crate) keyset: Vec<OrderTerm>,
    /// A summary's cost cap: the statement is refused if the planner estimates it above this.
    pub(crate) max_cost: Option<f64>,
}

impl Plan {
    /// The result columns holding each row's position (its sort values as text): after the encoded ones.
    pub(crate) fn position_columns(&self) -> std::ops::Range<usize> {
        self.columns.len()..self.columns.len() + self.keyset.len()
    }
}

/// The signature of the order `request` reads `dataset` in (its own, with the key as tie-breaker), which a
/// page cursor or resume token must match.
pub(crate) fn order_signature(dataset: &Dataset, request: &Request) -> String {
    let order = effective_order(dataset, request)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match &request.summary {
        // A summary's positions are of its own columns: never confused with the dataset's.
        Some(summary) => format!("{}|{order}", summary.signature()),
        None => order,
    }
}

/// SQL text under construction with its parameters.
struct Sql<'a> {
    /// The relation read (the dataset, or a summary's output).
    dataset: &'a Dataset,
    /// Its SQL: the dataset's relation, or a summary's derived table.
    relation: String,
    where_clauses: Vec<String>,
    params: Vec<String>,
    checks: Vec<Check>,
    max_cost: Option<f64>,
}

/// Types whose text input accepts any string, so their values need no check.
fn accepts_any_text(column: &Column) -> bool {
    matches!(
        column.cast_type.as_str(),
        "text" | "character varying" | "bpchar" | "name"
    )
}

impl<'a> Sql<'a> {
    fn new(dataset: &'a Dataset) -> Self {
        Sql {
            dataset,
            relation: dataset.relation.clone(),
            where_clauses: Vec::new(),
            params: Vec::new(),
            checks: Vec::new(),
            max_cost: None,
        }
    }

    /// From here on, the SQL reads `summary` of the rows filtered so far (their parameters come first).
    fn summarised(self, summary: &'a Summary) -> Self {
        Sql {
            relation: summary.relation(self.dataset, &self.where_sql()),
            max_cost: self.dataset.max_cost,
            dataset: &summary.output,
            where_clauses: Vec::new(),
            ..self
        }
    }

    /// A parameter placeholder for `value`, cast to `column`'s type.
    fn bind(&mut self, value: &str, column: &Column, parameter: &str) -> String {
        self.params.push(value.to_owned());
        if !accepts_any_text(column) {
            self.checks.push(Check {
                parameter: parameter.to_owned(),
                cast_type: column.cast_type.clone(),
                value: value.to_owned(),
            });
        }
        format!("${}::text::{}", self.params.len(), column.cast_type)
    }

    /// A parameter that is plain text (patterns) or a number we produced.
    fn bind_text(&mut self, value: String) -> String {
        self.params.push(value);
        format!("${}::text", self.params.len())
    }

    fn filter(&mut self, filter: &Filter) {
        let column = &self.dataset.columns[filter.column];
        let target = format!("t.{}", column.ident);
        let condition = match &filter.operator {
            Operator::Compare(op, value) => format!("{target} {op} {}", self.bind(value, column, &filter.parameter)),
            Operator::Like(op, pattern) => format!("{target}::text {op} {}", self.bind_text(pattern.clone())),
            Operator::In(items) if items.is_empty() => "false".to_owned(),
            Operator::In(items) => {
                let placeholders: Vec<String> = items
                    .iter()
                    .map(|item| self.bind(item, column, &filter.parameter))
                    .collect();
                format!("{target} IN ({})", placeholders.join(", "))
            }
            Operator::Is(what) => format!("{target} IS {what}"),
        };
        self.where_clauses.push(if filter.negated {
            format!("NOT ({condition})")
        } else {
            condition
        });
    }

    /// `SELECT <expressions> … ORDER BY <order> [LIMIT n]` as a plan. With `hidden_sort_values`, each row also
    /// carries its sort values as text after the encoded columns (for keyset positions).
    fn into_plan(
        mut self,
        mut expressions: Vec<String>,
        order: Vec<OrderTerm>,
        limit: Option<u64>,
        count: Option<CountPlan>,
        columns: Vec<EncodedColumn>,
        hidden_sort_values: bool,
    ) -> Plan {
        if hidden_sort_values {
            for term in &order {
                let column = &self.dataset.columns[term.column];
                expressions.push(format!("{}(t.{})::text", column.output_function, column.ident));
            }
        }
        let mut text = select_from(&expressions, &self);
        text.push_str(&order_sql(self.dataset, &order));
        if let Some(limit) = limit {
            let placeholder = self.bind_text(limit.to_string());
            text.push_str(&format!(" LIMIT {placeholder}::bigint"));
        }
        Plan {
            sql: text,
            params: self.params,
            checks: self.checks,
            count,
            columns,
            keyset: if hidden_sort_values { order } else { Vec::new() },
            max_cost: self.max_cost,
        }
    }

    fn where_sql(&self) -> String {
        if self.where_clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.where_clauses.join(" AND "))
        }
    }
}

/// The SELECT list for `columns` in `format`, and their encodings.
///
/// The format says how it takes each column ([`Format::column_style`]). Columns pgspout does not decode itself
/// are formatted by Postgres in the query: with the type's output function for CSV and the columnar formats
/// (what `COPY` uses; a `::text` cast differs for some types, e.g. `inet`) and with `to_json()` for NDJSON.
fn select_list(dataset: &Dataset, columns: &[usize], format: Format) -> (Vec<String>, Vec<EncodedColumn>) {
    columns
        .iter()
        .map(|&i| {
            let column = &dataset.columns[i];
            let ident = &column.ident;
            let (style, columnar) = format.column_style(column.kind, column.columnar);
            let expression = match style {
                ValueStyle::Binary => format!("t.{ident}"),
                ValueStyle::Text => format!("{}(t.{ident})::text", column.output_function),
                ValueStyle::Json => format!("pg_catalog.to_json(t.{ident})::text"),
            };
            (
                expression,
                EncodedColumn {
                    name: column.name.clone(),
                    kind: column.kind,
                    columnar,
                    type_name: column.type_name.clone(),
                },
            )
        })
        .unzip()
}

fn order_sql(dataset: &Dataset, terms: &[OrderTerm]) -> String {
    let terms: Vec<String> = terms
        .iter()
        .map(|term| {
            format!(
                "t.{} {} NULLS {}",
                dataset.columns[term.column].ident,
                if term.descending { "DESC" } else { "ASC" },
                if term.nulls_first { "FIRST" } else { "LAST" }
            )
        })
        .collect();
    if terms.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", terms.join(", "))
    }
}

/// The order an export or page uses: the request's, then the key as a tie-breaker; or just the key. (A
/// summary's order already ends with its groups.)
fn effective_order(dataset: &Dataset, request: &Request) -> Vec<OrderTerm> {
    let dataset = request.output(dataset);
    let mut order = request.order.clone();
    if let Some(key) = dataset.key
        && !order.iter().any(|t| t.column == key)
    {
        order.push(OrderTerm {
            column: key,
            descending: false,
            nulls_first: false,
        });
    }
    order
}

/// The request's filters as SQL (and its summary of the rows they keep), and the count over them if one is
/// asked for.
fn filtered<'a>(
    dataset: &'a Dataset,
    request: &'a Request,
    count: Option<CountMethod>,
) -> (Sql<'a>, Option<CountPlan>) {
    let mut sql = Sql::new(dataset);
    for filter in &request.filters {
        sql.filter(filter);
    }
    if let Some(summary) = &request.summary {
        sql = sql.summarised(summary);
    }
    let count = count_plan(&sql, count);
    // `after` resumes a download: rows past a key value (it is refused with any order but the key's).
    if let (Some(after), Some(key)) = (&request.after, dataset.key) {
        let column = &dataset.columns[key];
        let placeholder = sql.bind(after, column, "after");
        sql.where_clauses.push(format!("t.{} > {placeholder}", column.ident));
    }
    (sql, count)
}

/// `SELECT <expressions> FROM <relation> AS t WHERE …`.
fn select_from(expressions: &[String], sql: &Sql<'_>) -> String {
    format!(
        "SELECT {} FROM {} AS t{}",
        expressions.join(", "),
        sql.relation,
        sql.where_sql()
    )
}

fn count_plan(sql: &Sql<'_>, method: Option<CountMethod>) -> Option<CountPlan> {
    let method = method?;
    let from = format!("FROM {} AS t{}", sql.relation, sql.where_sql());
    let text = match method {
        CountMethod::Exact => format!("SELECT count(*) {from}"),
        CountMethod::Estimated => format!("EXPLAIN (FORMAT JSON) SELECT 1 {from}"),
    };
    Some(CountPlan {
        method,
        sql: text,
        params: sql.params.len(),
    })
}

/// The plan for `/rows`: the selected columns of every matching row, in order.
pub(crate) fn plan_rows(dataset: &Dataset, request: &Request, format: Format, count: Option<CountMethod>) -> Plan {
    rows_plan(dataset, request, format, count, false)
}

/// As [`plan_rows`], each row followed by its sort values (its position: for key order, its key).
pub(crate) fn plan_rows_with_keys(
    dataset: &Dataset,
    request: &Request,
    format: Format,
    count: Option<CountMethod>,
) -> Plan {
    rows_plan(dataset, request, format, count, true)
}

fn rows_plan(dataset: &Dataset, request: &Request, format: Format, count: Option<CountMethod>, keys: bool) -> Plan {
    let (sql, count) = filtered(dataset, request, count);
    let (expressions, columns) = select_list(request.output(dataset), &request.select, format);
    sql.into_plan(
        expressions,
        effective_order(dataset, request),
        request.limit,
        count,
        columns,
        keys,
    )
}

/// The plan for one `/page`: up to `limit + 1` rows after the cursor's position, each with its position
/// (the extra row tells whether there is a next page).
pub(crate) fn plan_page(
    dataset: &Dataset,
    request: &Request,
    after: Option<&Position>,
    limit: u64,
    count: Option<CountMethod>,
) -> Plan {
    keyset::plan_keyset(dataset, request, Format::Ndjson, after, Some(limit + 1), count)
}

/// The plan of a resumed stream: the rows after `after` in the request's order (with the key as
/// tie-breaker), at most `limit`, each with its position.
pub(crate) fn plan_after(
    dataset: &Dataset,
    request: &Request,
    format: Format,
    after: &Position,
    limit: Option<u64>,
    count: Option<CountMethod>,
) -> Plan {
    keyset::plan_keyset(dataset, request, format, Some(after), limit, count)
}

#[cfg(test)]
mod tests {
    use super::params::tests::dataset;
    use super::*;
    use crate::dataset::ValueKind;

    fn request(query: &str) -> Request {
        params::parse(
            &dataset(),
            Endpoint::Rows,
            &serde_urlencoded::from_str::<Vec<_>>(query).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn values_are_bind_parameters_cast_to_the_column_type() {
        let plan = plan_rows(
            &dataset(),
            &request("amount=gte.10.5&name=eq.x'); drop table t;--&limit=3"),
            Format::Csv,
            None,
        );
        assert_eq!(
            plan.sql,
            "SELECT t.\"id\", t.\"name\", t.\"amount\", t.\"paid\" FROM public.orders AS t \
             WHERE t.\"amount\" >= $1::text::numeric AND t.\"name\" = $2::text::text ORDER BY t.\"id\" ASC NULLS LAST \
             LIMIT $3::text::bigint"
        );
        assert_eq!(plan.params, vec!["10.5", "x'); drop table t;--", "3"]);
        assert_eq!(
            plan.checks,
            vec![Check {
                parameter: "amount".into(),
                cast_type: "numeric".into(),
                value: "10.5".into()
            }]
        );
    }

    #[test]
    fn server_formatted_columns_use_output_functions_for_csv_and_to_json_for_ndjson() {
        let mut dataset = dataset();
        dataset.columns[3].kind = ValueKind::ServerFormatted;
        dataset.columns[3].output_function = "pg_catalog.boolout".into();
        let csv = plan_rows(&dataset, &request("select=paid"), Format::Csv, None);
        assert!(
            csv.sql.starts_with("SELECT pg_catalog.boolout(t.\"paid\")::text FROM"),
            "{}",
            csv.sql
        );
        let ndjson = plan_rows(&dataset, &request("select=paid"), Format::Ndjson, None);
        assert!(
            ndjson
                .sql
                .starts_with("SELECT pg_catalog.to_json(t.\"paid\")::text FROM"),
            "{}",
            ndjson.sql
        );
    }

    #[test]
    fn in_not_and_is_compose() {
        let plan = plan_rows(
            &dataset(),
            &request("id=not.in.(1,2)&paid=is.true&name=in.()"),
            Format::Csv,
            None,
        );
        assert!(
            plan.sql.contains(
                "WHERE NOT (t.\"id\" IN ($1::text::bigint, $2::text::bigint)) AND t.\"paid\" IS TRUE AND false"
            ),
            "{}",
            plan.sql
        );
    }

    #[test]
    fn counts_use_only_the_filters() {
        let plan = plan_rows(
            &dataset(),
            &request("amount=gt.1&after=7&limit=2"),
            Format::Csv,
            Some(CountMethod::Exact),
        );
        let count = plan.count.unwrap();
        assert_eq!(
            count.sql,
            "SELECT count(*) FROM public.orders AS t WHERE t.\"amount\" > $1::text::numeric"
        );
        assert_eq!(count.params, 1);
        assert!(plan.sql.contains("t.\"id\" > $2::text::bigint"));
    }

    #[test]
    fn keyset_handles_directions_and_nulls() {
        let request = params::parse(
            &dataset(),
            Endpoint::Page,
            &serde_urlencoded::from_str::<Vec<_>>("order=amount.desc").unwrap(),
        )
        .unwrap();
        let plan = plan_page(
            &dataset(),
            &request,
            Some(&Position(vec![None, Some("7".into())])),
            10,
            None,
        );
        // amount DESC NULLS FIRST, then id: after a NULL amount come non-NULL amounts, or NULLs with a higher id.
        assert!(
            plan.sql.contains(
                "WHERE ((t.\"amount\" IS NOT NULL) OR (t.\"amount\" IS NULL AND t.\"id\" > $1::text::bigint))"
            ),
            "{}",
            plan.sql
        );
        assert!(
            plan.sql
                .ends_with("ORDER BY t.\"amount\" DESC NULLS FIRST, t.\"id\" ASC NULLS LAST LIMIT $2::text::bigint")
        );
        assert_eq!(plan.params, vec!["7", "11"]);
        assert_eq!(plan.keyset.len(), 2);
    }

    #[test]
    fn keyset_on_not_null_columns_in_one_direction_is_a_row_comparison() {
        let mut dataset = dataset();
        dataset.columns[2].nullable = false;
        let request = params::parse(
            &dataset,
            Endpoint::Page,
            &serde_urlencoded::from_str::<Vec<_>>("order=amount.desc,id.desc").unwrap(),
        )
        .unwrap();
        let values = Position(vec![Some("9.5".to_owned()), Some("7".to_owned())]);
        let plan = plan_page(&dataset, &request, Some(&values), 10, None);
        assert!(
            plan.sql
                .contains("WHERE (t.\"amount\", t.\"id\") < ($1::text::numeric, $2::text::bigint)"),
            "{}",
            plan.sql
        );
        // The key alone: a plain comparison, no IS NULL alternative to defeat the index.
        let plan = plan_page(
            &dataset,
            &Request {
                select: vec![0],
                ..Request::default()
            },
            Some(&Position(vec![Some("7".into())])),
            10,
            None,
        );
        assert!(
            plan.sql.contains("WHERE (t.\"id\") > ($1::text::bigint)"),
            "{}",
            plan.sql
        );
    }
}

#[cfg(test)]
mod summary_tests {
    use super::params::tests::dataset;
    use super::*;
    use crate::dataset::{Aggregates, ValueType};

    /// The test dataset with aggregates on: `amount` (numeric) has sum and avg, every column but `paid` min
    /// and max.
    fn summarised() -> Dataset {
        let mut dataset = dataset();
        dataset.aggregates = true;
        let numeric = dataset.columns[2].value_type();
        dataset.columns[2].aggregates = Aggregates {
            sum: Some(numeric.clone()),
            avg: Some(ValueType { ..numeric }),
            min_max: true,
        };
        dataset.columns[0].aggregates.min_max = true;
        dataset.columns[1].aggregates.min_max = true;
        dataset
    }

    fn parse(endpoint: Endpoint, query: &str) -> Result<Request, ParamError> {
        params::parse(
            &summarised(),
            endpoint,
            &serde_urlencoded::from_str::<Vec<_>>(query).unwrap(),
        )
    }

    #[test]
    fn a_summary_groups_by_its_plain_columns_after_the_filters() {
        let dataset = summarised();
        let request = parse(
            Endpoint::Rows,
            "select=name,total:amount.sum(),count()&amount=gt.1&order=total.desc&limit=5",
        )
        .unwrap();
        let plan = plan_rows(&dataset, &request, Format::Csv, Some(CountMethod::Exact));
        let relation = "(SELECT t.\"name\" AS s1, pg_catalog.sum(t.\"amount\") AS s2, pg_catalog.count(*) AS s3 \
                        FROM public.orders AS t WHERE t.\"amount\" > $1::text::numeric GROUP BY t.\"name\") AS t";
        assert!(
            plan.sql.contains(&format!(
                "FROM {relation} ORDER BY t.s2 DESC NULLS FIRST, t.s1 ASC NULLS LAST LIMIT $2::text::bigint"
            )),
            "{}",
            plan.sql
        );
        assert_eq!(plan.params, vec!["1", "5"]);
        let names: Vec<&str> = plan.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["name", "total", "count"]);
        assert_eq!(
            plan.count.unwrap().sql,
            format!("SELECT count(*) FROM {relation}"),
            "a count counts groups"
        );
        // Without groups: one row, no GROUP BY; unaliased items are named after their functions.
        let request = parse(Endpoint::Rows, "select=count(),amount.avg(),id.max()").unwrap();
        let plan = plan_rows(&dataset, &request, Format::Ndjson, None);
        assert!(
            plan.sql.contains("pg_catalog.count(*) AS s1, pg_catalog.avg(t.\"amount\") AS s2, pg_catalog.max(t.\"id\") AS s3 FROM public.orders AS t) AS t"),
            "{}",
            plan.sql
        );
        let names: Vec<&str> = plan.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["count", "avg", "max"]);
        assert_eq!(plan.columns[0].kind, crate::dataset::ValueKind::Int);
    }

    #[test]
    fn order_names_an_aggregate_by_alias_name_or_call() {
        let dataset = summarised();
        for order in ["total.desc", "amount.sum().desc"] {
            let request = parse(Endpoint::Rows, &format!("select=paid,total:amount.sum()&order={order}")).unwrap();
            let plan = plan_rows(&dataset, &request, Format::Csv, None);
            assert!(
                plan.sql
                    .ends_with("ORDER BY t.s2 DESC NULLS FIRST, t.s1 ASC NULLS LAST"),
                "{order}: {}",
                plan.sql
            );
        }
        let request = parse(Endpoint::Rows, "select=paid,count()&order=count.desc,paid.desc").unwrap();
        let plan = plan_rows(&dataset, &request, Format::Csv, None);
        assert!(
            plan.sql
                .ends_with("ORDER BY t.s2 DESC NULLS FIRST, t.s1 DESC NULLS FIRST"),
            "{}",
            plan.sql
        );
    }

    #[test]
    fn a_summary_pages_on_its_groups_with_a_signature_of_its_own() {
        let dataset = summarised();
        let request = parse(Endpoint::Page, "select=name,total:amount.sum()&order=total.desc").unwrap();
        let after = Position(vec![Some("9.5".into()), Some("x".into())]);
        let plan = plan_page(&dataset, &request, Some(&after), 10, None);
        assert!(
            plan.sql.contains(
                ") AS t WHERE ((t.s2 < $1::text::numeric) OR (t.s2 = $1::text::numeric AND (t.s1 > $2::text::text OR t.s1 IS NULL))) ORDER BY"
            ),
            "{}",
            plan.sql
        );
        assert_eq!(plan.keyset.len(), 2);
        let plain = params::parse(&dataset, Endpoint::Page, &[("order".into(), "amount.desc".into())]).unwrap();
        assert_ne!(order_signature(&dataset, &request), order_signature(&dataset, &plain));
        assert!(order_signature(&dataset, &request).starts_with("g1,sum(2)|"));
    }

    #[test]
    fn summaries_the_types_or_settings_do_not_allow_are_refused_naming_the_parameter() {
        for (query, parameter, reason) in [
            ("select=name.sum()", "select", "text"),
            ("select=paid.min()", "select", "boolean"),
            ("select=amount.sum(),id.count()&order=nope", "order", "nope"),
            ("select=amount.sum(),id.sum()", "select", "bigint"),
            (
                "select=amount.sum(),amount.avg(),s:amount.sum(),s:id.count()",
                "select",
                "\"s\"",
            ),
            ("select=amount.sum(),amount.sum()", "select", "\"sum\""),
            ("select=n:name,count()", "select", "alias"),
            ("select=amount.median()", "select", "median"),
            ("select=sum()", "select", "column"),
            ("select=amount.sum()::int", "select", "amount.sum()::int"),
            ("select=name,count()&order=id", "order", "not in select"),
            ("select=count()&after=3", "after", "summary"),
            ("select=count()&consistency=chunked", "consistency", "snapshot"),
            ("select=b@d:count()", "select", "alias"),
        ] {
            let error = parse(Endpoint::Rows, query).unwrap_err();
            assert_eq!(error.parameter, parameter, "{query}: {error}");
            assert!(error.reason.contains(reason), "{query}: {error}");
        }
        let mut off = summarised();
        off.aggregates = false;
        let error = params::parse(&off, Endpoint::Rows, &[("select".into(), "count()".into())]).unwrap_err();
        assert_eq!(error.parameter, "select");
        assert!(error.reason.contains("query.aggregates"), "{error}");
        let mut unsortable = summarised();
        unsortable.columns[1].operators = crate::dataset::Operators::default();
        let error =
            params::parse(&unsortable, Endpoint::Rows, &[("select".into(), "name,count()".into())]).unwrap_err();
        assert!(error.reason.contains("cannot be grouped"), "{error}");
    }
}

#[cfg(test)]
mod fuzz;
