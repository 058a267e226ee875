//! What a dataset is: a relation, its columns with their types and the operators those types have, its key
//! and how it is read. A leaf: settings, the query planner, the database layer and the encoders all describe
//! datasets with these types, and this module depends on none of them.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

/// A dataset, resolved against the database.
#[derive(Clone, Debug)]
pub(crate) struct Dataset {
    /// The name in URLs.
    pub(crate) name: String,
    /// The relation as quoted, schema-qualified SQL.
    pub(crate) relation: String,
    /// Its columns in table order.
    pub(crate) columns: Vec<Column>,
    /// The index in `columns` of the key, if it has one.
    pub(crate) key: Option<usize>,
    /// How `/rows` reads it unless a request says otherwise.
    pub(crate) consistency: Consistency,
    /// Whether requests may summarise it with aggregates (`query.aggregates`, or the dataset's own setting).
    pub(crate) aggregates: bool,
    /// The highest estimated cost a summary's plan may have (`query.max_cost`).
    pub(crate) max_cost: Option<f64>,
}

/// A column of a dataset.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    /// Its name.
    pub(crate) name: String,
    /// Its name as a quoted SQL identifier.
    pub(crate) ident: String,
    /// Its type as `format_type` prints it, e.g. `numeric(12,2)`.
    pub(crate) type_name: String,
    /// The type request values are cast to: without typmod (`numeric`, not `numeric(12,2)`, which would round,
    /// nor `varchar(5)`, which would truncate), and unlimited where the bare name means a length of 1
    /// (`bpchar` for `character(n)`, `bit varying` for `bit(n)`).
    pub(crate) cast_type: String,
    /// Whether it may hold NULL (always true for a view's columns).
    pub(crate) nullable: bool,
    /// How pgspout decodes its values.
    pub(crate) kind: ValueKind,
    /// What its values become in a columnar format.
    pub(crate) columnar: Columnar,
    /// Its type's output function as quoted SQL (for [`ValueKind::ServerFormatted`] columns in CSV, and for
    /// sort values).
    pub(crate) output_function: String,
    /// An enum's labels, in order (for the OpenAPI document).
    pub(crate) enum_labels: Option<Vec<String>>,
    /// What its type can be compared and sorted with.
    pub(crate) operators: Operators,
    /// What its type can be summarised with.
    pub(crate) aggregates: Aggregates,
}

/// The aggregates a column's type has, as Postgres resolves `pg_catalog.sum`, `avg`, `min` and `max` for it
/// (`count` takes any type). A summary the type lacks is refused before any query runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Aggregates {
    /// What `sum` returns, if the type has it.
    pub(crate) sum: Option<ValueType>,
    /// What `avg` returns, if the type has it.
    pub(crate) avg: Option<ValueType>,
    /// Whether `min` and `max` exist; they return values of the column's own type.
    pub(crate) min_max: bool,
}

impl Aggregates {
    /// The functions a column of this type takes, in the order the catalog lists them (`count` takes any).
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let mut names = vec!["count"];
        if self.sum.is_some() {
            names.push("sum");
        }
        if self.avg.is_some() {
            names.push("avg");
        }
        if self.min_max {
            names.extend(["min", "max"]);
        }
        names
    }
}

/// A type as a column describes it: what an aggregate returns.
#[derive(Clone, Debug)]
pub(crate) struct ValueType {
    /// As [`Column::type_name`].
    pub(crate) type_name: String,
    /// As [`Column::cast_type`].
    pub(crate) cast_type: String,
    /// As [`Column::kind`].
    pub(crate) kind: ValueKind,
    /// As [`Column::columnar`].
    pub(crate) columnar: Columnar,
    /// As [`Column::output_function`].
    pub(crate) output_function: String,
    /// As [`Column::operators`].
    pub(crate) operators: Operators,
}

impl Column {
    /// This column's type.
    pub(crate) fn value_type(&self) -> ValueType {
        ValueType {
            type_name: self.type_name.clone(),
            cast_type: self.cast_type.clone(),
            kind: self.kind,
            columnar: self.columnar,
            output_function: self.output_function.clone(),
            operators: self.operators,
        }
    }

    /// A column of a derived relation (a summary's output): `name` for clients, `ident` in SQL.
    pub(crate) fn derived(name: String, ident: String, value: ValueType, nullable: bool) -> Column {
        Column {
            name,
            ident,
            type_name: value.type_name,
            cast_type: value.cast_type,
            nullable,
            kind: value.kind,
            columnar: value.columnar,
            output_function: value.output_function,
            enum_labels: None,
            operators: value.operators,
            aggregates: Aggregates::default(),
        }
    }
}

/// The comparisons a column's type supports, as Postgres resolves and executes them. A filter or an `order`
/// the type lacks is refused before any query runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Operators {
    /// `=` (filters `eq`, `in`).
    pub(crate) equal: bool,
    /// `<>` (filter `neq`).
    pub(crate) unequal: bool,
    /// `<`, `<=`, `>`, `>=` (filters `gt`, `gte`, `lt`, `lte`).
    pub(crate) ordering: bool,
    /// A default btree operator class: `ORDER BY`, keyset pages and resumable batches.
    pub(crate) sortable: bool,
}

impl Operators {
    /// Every comparison (enums, ranges and the common scalar types).
    pub(crate) const ALL: Operators = Operators {
        equal: true,
        unequal: true,
        ordering: true,
        sortable: true,
    };
}

/// How a column's raw binary value is turned into text.
///
/// The native kinds are decoded by pgspout; [`ValueKind::ServerFormatted`] columns are rendered by Postgres in
/// the query itself (the type's output function for CSV, `to_json()` for NDJSON) and arrive as text.
/// `real` and `double precision` are server-formatted: Postgres's shortest-digit output is Ryu built without
/// accepting interval bounds, which the `ryu` crate cannot reproduce for every value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// `boolean`.
    Bool,
    /// `smallint`, `integer`, `bigint`.
    Int,
    /// `numeric`, exact.
    Numeric,
    /// `text`, `varchar`, `char(n)`, `name`, enum labels: UTF-8 text.
    Text,
    /// `uuid`.
    Uuid,
    /// `date`.
    Date,
    /// `timestamp without time zone`.
    Timestamp,
    /// `timestamptz`, only while the session TimeZone is UTC.
    TimestampUtc,
    /// `json`: its text.
    Json,
    /// `jsonb`: a version byte, then its text.
    Jsonb,
    /// `bytea`.
    Bytea,
    /// Anything else: Postgres formats it in the query.
    ServerFormatted,
}

impl ValueKind {
    /// Whether values are text that `LIKE` can match (text-like types and enums).
    pub(crate) fn is_textual(self) -> bool {
        self == ValueKind::Text
    }

    /// Whether pgspout decodes this kind itself rather than asking Postgres to format it.
    pub(crate) fn is_native(self) -> bool {
        self != ValueKind::ServerFormatted
    }
}

/// What a column's values become in a columnar format (Arrow): a type pgspout decodes from the binary wire
/// value, one-dimensional arrays of one, or Postgres's own text. README's type table documents the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columnar {
    /// The type of the values (of the elements, for a list).
    pub scalar: Scalar,
    /// Whether values are one-dimensional arrays of `scalar`.
    pub list: bool,
}

/// A columnar value type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// `boolean` → `bool`.
    Bool,
    /// `smallint` → `int16`.
    Int16,
    /// `integer` → `int32`.
    Int32,
    /// `bigint` → `int64`.
    Int64,
    /// `real` → `float32`.
    Float32,
    /// `double precision` → `float64`.
    Float64,
    /// `numeric(p,s)` with p ≤ 38 → `decimal128(p,s)`.
    Decimal {
        /// Digits in all.
        precision: u8,
        /// Digits after the point (negative: zeros before it).
        scale: i8,
    },
    /// Text-like types and enums → `utf8`.
    Utf8,
    /// `bytea` → `binary`.
    Binary,
    /// `uuid` → the `arrow.uuid` extension.
    Uuid,
    /// `date` → `date32`.
    Date,
    /// `time` → `time64[us]`.
    Time,
    /// `timestamp` → `timestamp[us]`.
    Timestamp,
    /// `timestamptz` → `timestamp[us, UTC]`.
    TimestampUtc,
    /// `interval` → `month_day_nano`.
    Interval,
    /// `json` → the `arrow.json` extension.
    Json,
    /// `jsonb` → the `arrow.json` extension.
    Jsonb,
    /// Anything else → `utf8` holding the type's output text.
    Text,
}

impl Columnar {
    /// A column of Postgres text.
    pub const TEXT: Columnar = Columnar {
        scalar: Scalar::Text,
        list: false,
    };

    /// Whether values are sent as Postgres's text (the type's output function) rather than binary.
    pub fn is_text(self) -> bool {
        self.scalar == Scalar::Text
    }
}

/// How an export reads its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// One statement in one transaction: every row from one consistent snapshot, which is held (and holds
    /// back VACUUM) for the whole download.
    #[default]
    Snapshot,
    /// Keyset batches, each a short statement in a transaction of its own: no snapshot outlives a batch, but
    /// rows changed during the download may be seen in either state. Needs a key.
    Chunked,
}

/// All datasets by name. A reload builds a new catalog; exports that started under the old one keep their
/// datasets (they hold an `Arc`).
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    datasets: HashMap<String, Arc<Dataset>>,
}

impl Catalog {
    /// A catalog of `datasets` (their names are unique).
    pub(crate) fn new(datasets: impl IntoIterator<Item = Dataset>) -> Catalog {
        Catalog {
            datasets: datasets.into_iter().map(|d| (d.name.clone(), Arc::new(d))).collect(),
        }
    }

    /// The dataset called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Dataset>> {
        self.datasets.get(name).cloned()
    }

    /// Every dataset, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Dataset> {
        let mut datasets: Vec<&Dataset> = self.datasets.values().map(|d| &**d).collect();
        datasets.sort_by(|a, b| a.name.cmp(&b.name));
        datasets.into_iter()
    }

    /// The datasets named in `names` only.
    pub(crate) fn subset(&self, names: &[String]) -> Catalog {
        Catalog {
            datasets: names
                .iter()
                .filter_map(|n| self.datasets.get_key_value(n))
                .map(|(n, d)| (n.clone(), d.clone()))
                .collect(),
        }
    }

    /// The datasets' names, as the job runner claims only jobs it can run.
    pub(crate) fn names(&self) -> Vec<String> {
        self.iter().map(|d| d.name.clone()).collect()
    }
}
