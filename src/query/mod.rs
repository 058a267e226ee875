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

use crate::dataset::{Column, Dataset};
use crate::encode::{EncodedColumn, Format, ValueStyle};

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
    effective_order(dataset, request)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// SQL text under construction with its parameters.
struct Sql<'a> {
    dataset: &'a Dataset,
    where_clauses: Vec<String>,
    params: Vec<String>,
    checks: Vec<Check>,
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
            where_clauses: Vec::new(),
            params: Vec::new(),
            checks: Vec::new(),
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

/// The order an export or page uses: the request's, then the key as a tie-breaker; or just the key.
fn effective_order(dataset: &Dataset, request: &Request) -> Vec<OrderTerm> {
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

/// The request's filters as SQL, and the count over them if one is asked for.
fn filtered<'a>(dataset: &'a Dataset, request: &Request, count: Option<CountMethod>) -> (Sql<'a>, Option<CountPlan>) {
    let mut sql = Sql::new(dataset);
    for filter in &request.filters {
        sql.filter(filter);
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
        sql.dataset.relation,
        sql.where_sql()
    )
}

fn count_plan(sql: &Sql<'_>, method: Option<CountMethod>) -> Option<CountPlan> {
    let method = method?;
    let from = format!("FROM {} AS t{}", sql.dataset.relation, sql.where_sql());
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
    let (expressions, columns) = select_list(dataset, &request.select, format);
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
mod fuzz;
