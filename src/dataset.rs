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
    /// Its type's output function as quoted SQL (for [`ValueKind::ServerFormatted`] columns in CSV, and for
    /// sort values).
    pub(crate) output_function: String,
    /// An enum's labels, in order (for the OpenAPI document).
    pub(crate) enum_labels: Option<Vec<String>>,
    /// What its type can be compared and sorted with.
    pub(crate) operators: Operators,
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
