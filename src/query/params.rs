//! The query string → a typed request: `select`, filters, `order`, `limit`, `after`, `cursor`, `format`.
//!
//! PostgREST's syntax. Every rejection names the parameter and says why; nothing here touches SQL.

use std::fmt;

use super::summary::{self, Item, Summary};
use crate::compress::Encoding;
use crate::dataset::{Consistency, Dataset, ValueKind};

/// What went wrong with one query parameter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("query parameter {parameter:?}: {reason}")]
pub(crate) struct ParamError {
    /// The parameter's name as sent.
    pub(crate) parameter: String,
    /// Why it was rejected.
    pub(crate) reason: String,
}

fn reject(parameter: &str, reason: impl Into<String>) -> ParamError {
    ParamError {
        parameter: parameter.to_owned(),
        reason: reason.into(),
    }
}

/// Which endpoint is asking: each takes a different set of reserved parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/rows`: `select`, `order`, `limit`, `after`, `format`, `consistency`.
    Rows,
    /// `/page`: `select`, `order`, `limit`, `cursor`.
    Page,
    /// A background export job's query: `select`, `order`, `limit`, `after` (the job's body names the format).
    Job,
}

/// A comparison a filter applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Operator {
    /// `eq`, `neq`, `gt`, `gte`, `lt`, `lte`: an SQL comparison operator and its value.
    Compare(&'static str, String),
    /// `like`, `ilike`: the SQL operator and its pattern (`*` already turned into `%`).
    Like(&'static str, String),
    /// `in.(a,b,"c,d")`.
    In(Vec<String>),
    /// `is.null`, `is.true`, `is.false`.
    Is(&'static str),
}

/// `column=[not.]op.value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Filter {
    /// The parameter name (for error messages).
    pub(crate) parameter: String,
    /// Index into the dataset's columns.
    pub(crate) column: usize,
    /// Whether `not.` negates it.
    pub(crate) negated: bool,
    /// The comparison.
    pub(crate) operator: Operator,
}

/// One `order` term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OrderTerm {
    /// Index into the dataset's columns.
    pub(crate) column: usize,
    /// Descending?
    pub(crate) descending: bool,
    /// NULLs before non-NULLs? (Postgres's default: only when descending.)
    pub(crate) nulls_first: bool,
}

impl fmt::Display for OrderTerm {
    /// `#<column>.<asc|desc>.<nullsfirst|nullslast>`: a stable signature for cursors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direction = if self.descending { "desc" } else { "asc" };
        let nulls = if self.nulls_first { "nullsfirst" } else { "nullslast" };
        write!(f, "{}.{direction}.{nulls}", self.column)
    }
}

/// A parsed, validated request against one dataset.
#[derive(Clone, Debug, Default)]
pub(crate) struct Request {
    /// Output columns (indexes into the columns of [`Request::output`]), in order.
    pub(crate) select: Vec<usize>,
    /// Filters (on the dataset's columns), ANDed.
    pub(crate) filters: Vec<Filter>,
    /// Explicit `order` (on the columns of [`Request::output`]); empty means the key's order.
    pub(crate) order: Vec<OrderTerm>,
    /// `select` with aggregates: the rows are the summary's, and `select` and `order` are on its output.
    pub(crate) summary: Option<Box<Summary>>,
    /// `limit`.
    pub(crate) limit: Option<u64>,
    /// `after`: resume after this key value.
    pub(crate) after: Option<String>,
    /// `cursor` (pages).
    pub(crate) cursor: Option<String>,
    /// `format` (rows).
    pub(crate) format: Option<String>,
    /// `compression` (rows): a compressed file, whatever `Accept-Encoding` says.
    pub(crate) compression: Option<Encoding>,
    /// `consistency` (rows): overrides the dataset's.
    pub(crate) consistency: Option<Consistency>,
}

/// Query parameter names that are not filters (on any endpoint; each takes some of them).
pub(crate) const RESERVED: [&str; 8] = [
    "select",
    "order",
    "limit",
    "after",
    "cursor",
    "format",
    "compression",
    "consistency",
];

/// Parses the decoded query pairs of a request for `dataset`.
pub(crate) fn parse(dataset: &Dataset, endpoint: Endpoint, pairs: &[(String, String)]) -> Result<Request, ParamError> {
    let mut request = Request {
        select: (0..dataset.columns.len()).collect(),
        ..Request::default()
    };
    let mut seen = std::collections::HashSet::new();
    let (mut select, mut order) = (None, None);
    for (name, value) in pairs {
        if name.contains('\0') || value.contains('\0') {
            return Err(reject(name, "contains a NUL byte, which PostgreSQL text cannot hold"));
        }
        let reserved = RESERVED.contains(&name.as_str());
        if reserved && !seen.insert(name.as_str()) {
            return Err(reject(name, "given more than once"));
        }
        match (name.as_str(), endpoint) {
            ("select", _) => select = Some(value),
            ("order", _) => order = Some(value),
            ("limit", _) => request.limit = Some(parse_limit(name, value)?),
            ("after", Endpoint::Rows | Endpoint::Job) => request.after = Some(value.clone()),
            ("format", Endpoint::Rows) => request.format = Some(value.clone()),
            ("compression", Endpoint::Rows) => {
                request.compression =
                    Some(Encoding::from_name(value).ok_or_else(|| reject(name, "must be identity, gzip, zstd or br"))?)
            }
            ("consistency", Endpoint::Rows) => {
                request.consistency = Some(match value.as_str() {
                    "snapshot" => Consistency::Snapshot,
                    "chunked" if dataset.key.is_some() => Consistency::Chunked,
                    "chunked" => return Err(reject(name, "chunked needs a dataset with a key")),
                    _ => return Err(reject(name, "must be snapshot or chunked")),
                })
            }
            ("cursor", Endpoint::Page) => request.cursor = Some(value.clone()),
            (_, _) if reserved => return Err(reject(name, "is not accepted by this endpoint")),
            _ => request.filters.push(parse_filter(dataset, name, value)?),
        }
    }
    let selected = match select {
        Some(value) => parse_select(dataset, value)?,
        None => Vec::new(),
    };
    if selected.iter().any(|s| matches!(s.item, Item::Aggregate(..))) {
        if !dataset.aggregates {
            return Err(reject(
                "select",
                "aggregates are off for this dataset (the operator enables them with query.aggregates = true, \
                 or aggregates = true on the dataset)",
            ));
        }
        let summary = Summary::new(dataset, selected)?;
        request.select = (0..summary.output.columns.len()).collect();
        if let Some(value) = order {
            let named = summary_order_names(dataset, &summary, value);
            request.order = parse_order(&summary.output, "order", &named).map_err(|mut error| {
                if let Some(name) = error.reason.strip_prefix("no column ") {
                    error.reason = format!(
                        "{name} is not in select: a summary is ordered by its groups and aggregates \
                         (by alias, name or call: total, sum, amount.sum())"
                    );
                }
                error
            })?;
        }
        // The groups, in select order, make the order total (pages need one).
        for column in summary.groups() {
            if !request.order.iter().any(|t| t.column == column) {
                request.order.push(OrderTerm {
                    column,
                    descending: false,
                    nulls_first: false,
                });
            }
        }
        if request.after.is_some() {
            return Err(reject("after", "a summary has no key to resume by; page it with /page"));
        }
        if request.consistency == Some(Consistency::Chunked) {
            return Err(reject("consistency", "a summary is read in one snapshot"));
        }
        request.summary = Some(Box::new(summary));
        return Ok(request);
    }
    if select.is_some() {
        request.select = selected
            .into_iter()
            .map(|s| match s.item {
                Item::Group(column) => column,
                Item::Aggregate(..) => unreachable!("no aggregates here"),
            })
            .collect();
    }
    if let Some(value) = order {
        request.order = parse_order(dataset, "order", value)?;
    }
    if request.after.is_some() {
        if dataset.key.is_none() {
            return Err(reject("after", "this dataset has no key to resume by"));
        }
        if !request.is_key_ordered(dataset) {
            return Err(reject("after", "can only be combined with the key's ascending order"));
        }
    }
    Ok(request)
}

/// A summary's `order` with the terms that name an aggregate by its call (`amount.sum().desc`) renamed to the
/// aggregate's output name.
fn summary_order_names(dataset: &Dataset, summary: &Summary, value: &str) -> String {
    value
        .split(',')
        .map(|term| match term.split_once("()") {
            Some((call, modifiers)) => match summary.find_call(dataset, call) {
                Some(name) => format!("{name}{modifiers}"),
                None => term.to_owned(),
            },
            None => term.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Request {
    /// The relation `select` and `order` are on: the dataset, or its summary.
    pub(crate) fn output<'a>(&'a self, dataset: &'a Dataset) -> &'a Dataset {
        self.summary.as_ref().map_or(dataset, |s| &s.output)
    }

    /// How the rows are read: a summary in one snapshot, else as the request or the dataset says.
    pub(crate) fn consistency(&self, dataset: &Dataset) -> Consistency {
        match self.summary {
            Some(_) => Consistency::Snapshot,
            None => self.consistency.unwrap_or(dataset.consistency),
        }
    }

    /// Whether rows come in the key's ascending order (the default order): the order `after` resumes in.
    pub(crate) fn is_key_ordered(&self, dataset: &Dataset) -> bool {
        let Some(key) = dataset.key else {
            return false;
        };
        let key_order = [OrderTerm {
            column: key,
            descending: false,
            nulls_first: false,
        }];
        self.order.is_empty() || self.order == key_order
    }
}

/// The largest `limit`: Postgres's `LIMIT` is a bigint.
const MAX_LIMIT: u64 = i64::MAX as u64;

fn parse_limit(parameter: &str, value: &str) -> Result<u64, ParamError> {
    match value.parse::<u64>() {
        Ok(limit) if limit <= MAX_LIMIT => Ok(limit),
        Ok(_) => Err(reject(parameter, format!("must be at most {MAX_LIMIT}"))),
        Err(_) => Err(reject(parameter, "must be a non-negative integer")),
    }
}

fn column(dataset: &Dataset, parameter: &str, name: &str) -> Result<usize, ParamError> {
    dataset
        .columns
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| reject(parameter, format!("no column {name:?}")))
}

fn parse_select(dataset: &Dataset, value: &str) -> Result<Vec<summary::Selected>, ParamError> {
    let mut select: Vec<summary::Selected> = Vec::new();
    for text in value.split(',') {
        let selected = summary::parse_item(text, |name| column(dataset, "select", name))?;
        if let Item::Group(index) = selected.item
            && select.iter().any(|s| s.item == selected.item)
        {
            let name = &dataset.columns[index].name;
            return Err(reject("select", format!("names {name:?} twice")));
        }
        select.push(selected);
    }
    Ok(select)
}

fn parse_order(dataset: &Dataset, parameter: &str, value: &str) -> Result<Vec<OrderTerm>, ParamError> {
    let mut terms: Vec<OrderTerm> = Vec::new();
    for term in value.split(',') {
        let mut parts = term.split('.');
        let name = parts.next().unwrap_or_default();
        let column = column(dataset, parameter, name)?;
        let (mut descending, mut nulls) = (false, None);
        for modifier in parts {
            match modifier {
                "asc" => descending = false,
                "desc" => descending = true,
                "nullsfirst" => nulls = Some(true),
                "nullslast" => nulls = Some(false),
                other => {
                    return Err(reject(
                        parameter,
                        format!("unknown modifier {other:?} (asc, desc, nullsfirst, nullslast)"),
                    ));
                }
            }
        }
        if terms.iter().any(|t| t.column == column) {
            return Err(reject(parameter, format!("orders by {name:?} twice")));
        }
        let type_name = &dataset.columns[column].type_name;
        if !dataset.columns[column].operators.sortable {
            return Err(reject(
                parameter,
                format!("{name:?} is of type {type_name}, which has no ordering to sort by"),
            ));
        }
        terms.push(OrderTerm {
            column,
            descending,
            nulls_first: nulls.unwrap_or(descending),
        });
    }
    Ok(terms)
}

fn parse_filter(dataset: &Dataset, parameter: &str, value: &str) -> Result<Filter, ParamError> {
    let column = column(dataset, parameter, parameter)?;
    let (negated, rest) = match value.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let Some((op, argument)) = rest.split_once('.') else {
        return Err(reject(
            parameter,
            "expected op.value, e.g. eq.5 (operators: eq neq gt gte lt lte like ilike in is)",
        ));
    };
    let described = &dataset.columns[column];
    let lacks = |what: &str| {
        reject(
            parameter,
            format!("{op} needs {what}, which type {} does not have", described.type_name),
        )
    };
    let compare = |sql: &'static str| {
        let operators = described.operators;
        let (supported, what) = match sql {
            "=" => (operators.equal, "an = operator"),
            "<>" => (operators.unequal, "a <> operator"),
            _ => (operators.ordering, "an ordering"),
        };
        if supported {
            Ok(Operator::Compare(sql, argument.to_owned()))
        } else {
            Err(lacks(what))
        }
    };
    let operator = match op {
        "eq" => compare("=")?,
        "neq" => compare("<>")?,
        "gt" => compare(">")?,
        "gte" => compare(">=")?,
        "lt" => compare("<")?,
        "lte" => compare("<=")?,
        "like" | "ilike" => {
            if !described.kind.is_textual() {
                return Err(reject(parameter, format!("{op} applies only to text columns")));
            }
            // Postgres fails a pattern that ends in its escape character, mid-query; refuse it up front.
            if argument.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1 {
                return Err(reject(parameter, "the pattern ends with an unescaped backslash"));
            }
            Operator::Like(if op == "like" { "LIKE" } else { "ILIKE" }, argument.replace('*', "%"))
        }
        "in" if !described.operators.equal => return Err(lacks("an = operator")),
        "in" => {
            let items = parse_list(parameter, argument)?;
            if items.len() > MAX_IN_VALUES {
                return Err(reject(
                    parameter,
                    format!("in lists hold at most {MAX_IN_VALUES} values ({} given)", items.len()),
                ));
            }
            Operator::In(items)
        }
        "is" => match argument {
            "null" => Operator::Is("NULL"),
            "true" | "false" if described.kind != ValueKind::Bool => {
                return Err(reject(
                    parameter,
                    format!("is.{argument} applies only to boolean columns"),
                ));
            }
            "true" => Operator::Is("TRUE"),
            "false" => Operator::Is("FALSE"),
            other => {
                return Err(reject(
                    parameter,
                    format!("is.{other}: expected is.null, is.true or is.false"),
                ));
            }
        },
        other => return Err(reject(parameter, format!("unknown operator {other:?}"))),
    };
    Ok(Filter {
        parameter: parameter.to_owned(),
        column,
        negated,
        operator,
    })
}

/// `(a,b,"c,d","say \"hi\"")` → its items; quotes protect commas, `\` escapes inside quotes.
/// The most values one `in` list may hold. Every value is a bind parameter (Postgres takes at most 65,535
/// per statement) and is type-checked before the query runs.
pub(crate) const MAX_IN_VALUES: usize = 1000;

fn parse_list(parameter: &str, argument: &str) -> Result<Vec<String>, ParamError> {
    let inner = argument
        .strip_prefix('(')
        .and_then(|a| a.strip_suffix(')'))
        .ok_or_else(|| reject(parameter, "in expects a parenthesised list: in.(a,b,\"c,d\")"))?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Ok(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => item.push(
                        chars
                            .next()
                            .ok_or_else(|| reject(parameter, "list ends inside an escape"))?,
                    ),
                    Some('"') => break,
                    Some(c) => item.push(c),
                    None => return Err(reject(parameter, "list has an unterminated quote")),
                }
            }
            match chars.next() {
                None => {
                    items.push(item);
                    return Ok(items);
                }
                Some(',') => {}
                Some(_) => return Err(reject(parameter, "list has text after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    Some(',') => break,
                    Some(c) => item.push(c),
                    None => {
                        items.push(item);
                        return Ok(items);
                    }
                }
            }
        }
        items.push(item);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataset::{Aggregates, Column, Operators};

    pub(crate) fn dataset() -> Dataset {
        let column = |name: &str, kind, cast: &str| Column {
            name: name.into(),
            ident: format!("\"{name}\""),
            type_name: cast.into(),
            cast_type: cast.into(),
            nullable: true,
            kind,
            columnar: crate::dataset::Columnar::TEXT,
            output_function: "pg_catalog.textout".into(),
            enum_labels: None,
            operators: Operators::ALL,
            aggregates: Aggregates::default(),
        };
        Dataset {
            name: "orders".into(),
            relation: "public.orders".into(),
            columns: vec![
                column("id", ValueKind::Int, "bigint"),
                column("name", ValueKind::Text, "text"),
                column("amount", ValueKind::Numeric, "numeric"),
                column("paid", ValueKind::Bool, "boolean"),
            ],
            key: Some(0),
            consistency: Consistency::Snapshot,
            aggregates: false,
            max_cost: None,
        }
    }

    fn pairs(query: &str) -> Vec<(String, String)> {
        serde_urlencoded::from_str(query).unwrap()
    }

    fn parse_rows(query: &str) -> Result<Request, ParamError> {
        parse(&dataset(), Endpoint::Rows, &pairs(query))
    }

    #[test]
    fn filters_select_order_and_limit_parse() {
        let request =
            parse_rows("select=amount,id&amount=gt.100&name=not.like.B*&order=amount.desc,id&limit=5").unwrap();
        assert_eq!(request.select, vec![2, 0]);
        assert_eq!(request.filters[0].operator, Operator::Compare(">", "100".into()));
        assert!(request.filters[1].negated);
        assert_eq!(request.filters[1].operator, Operator::Like("LIKE", "B%".into()));
        assert_eq!(
            request.order[0],
            OrderTerm {
                column: 2,
                descending: true,
                nulls_first: true
            }
        );
        assert_eq!(
            request.order[1],
            OrderTerm {
                column: 0,
                descending: false,
                nulls_first: false
            }
        );
        assert_eq!(request.limit, Some(5));
    }

    #[test]
    fn in_lists_honour_quotes_and_escapes() {
        let list = |arg: &str| parse_list("p", arg);
        assert_eq!(list("(a,b,\"c,d\")").unwrap(), vec!["a", "b", "c,d"]);
        assert_eq!(list("(\"say \\\"hi\\\"\",x)").unwrap(), vec!["say \"hi\"", "x"]);
        assert_eq!(list("()").unwrap(), Vec::<String>::new());
        assert_eq!(list("(a,,b)").unwrap(), vec!["a", "", "b"]);
        assert!(list("(\"open").is_err());
        assert!(list("a,b").is_err());
    }

    #[test]
    fn rejections_name_the_parameter() {
        for (query, parameter) in [
            ("nope=eq.1", "nope"),
            ("id=equals.1", "id"),
            ("id=5", "id"),
            ("select=id,ghost", "select"),
            ("order=id.sideways", "order"),
            ("limit=-1", "limit"),
            ("limit=9223372036854775808", "limit"),
            ("name=like.abc\\", "name"),
            ("name=is.maybe", "name"),
            ("id=like.1*", "id"),
            ("name=is.true", "name"),
            ("after=5&order=amount", "after"),
            ("cursor=abc", "cursor"),
            ("limit=1&limit=2", "limit"),
            ("id;drop table x=eq.1", "id;drop table x"),
            ("name=eq.a%00b", "name"),
        ] {
            let error = parse_rows(query).unwrap_err();
            assert_eq!(error.parameter, parameter, "{query}: {error}");
        }
    }

    #[test]
    fn operators_and_orders_the_type_lacks_are_refused_naming_the_parameter() {
        let mut dataset = dataset();
        dataset.columns[2].operators = Operators {
            equal: true,
            ..Operators::default()
        };
        dataset.columns[2].type_name = "box".into();
        let run = |dataset: &Dataset, query: &str| parse(dataset, Endpoint::Rows, &pairs(query));
        assert!(run(&dataset, "amount=eq.(1,1),(0,0)").is_ok());
        assert!(run(&dataset, "amount=in.(1)").is_ok());
        for query in [
            "amount=neq.1",
            "amount=gt.1",
            "amount=lte.1",
            "order=amount",
            "order=id,amount.desc",
        ] {
            let error = run(&dataset, query).unwrap_err();
            assert!(error.reason.contains("box"), "{query}: {error}");
        }
        dataset.columns[2].operators = Operators::default();
        assert_eq!(run(&dataset, "amount=in.(1,2)").unwrap_err().parameter, "amount");
        assert!(run(&dataset, "amount=is.null").is_ok());
    }

    #[test]
    fn after_needs_a_key_and_the_key_order() {
        assert!(parse_rows("after=10&order=id.asc").is_ok());
        let mut keyless = dataset();
        keyless.key = None;
        assert!(parse(&keyless, Endpoint::Rows, &pairs("after=1")).is_err());
    }
}
