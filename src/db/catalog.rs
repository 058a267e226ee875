//! Datasets resolved against the database at start-up: the relation, its columns and types, its key.
//!
//! Everything that later becomes SQL text (relation and column identifiers, output functions) is read from
//! the catalog here and quoted here; requests only ever pick among these.

use std::collections::HashMap;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;
use tokio_postgres::types::{Kind, Type};

use crate::encode::ValueKind;
use crate::query::Consistency;
use crate::settings::DatasetSettings;

/// A configured dataset, checked against the database.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The name in URLs.
    pub name: String,
    /// The relation as quoted, schema-qualified SQL.
    pub relation: String,
    /// Its columns in table order.
    pub columns: Vec<Column>,
    /// The index in `columns` of the key, if one is configured.
    pub key: Option<usize>,
    /// How `/rows` reads it unless a request says otherwise.
    pub consistency: Consistency,
}

/// A column of a dataset.
#[derive(Clone, Debug)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its name as a quoted SQL identifier.
    pub ident: String,
    /// Its type as `format_type` prints it, e.g. `numeric(12,2)`.
    pub type_name: String,
    /// Its type without typmod, for casting request values (`numeric`, not `numeric(12,2)`, which would round).
    pub cast_type: String,
    /// Whether it may hold NULL (always true for a view's columns).
    pub nullable: bool,
    /// How pgspout decodes its values.
    pub kind: ValueKind,
    /// Its type's output function as quoted SQL (for [`ValueKind::ServerFormatted`] columns in CSV).
    pub output_function: String,
    /// An enum's labels, in order (for the OpenAPI document).
    pub enum_labels: Option<Vec<String>>,
}

/// All datasets by name.
#[derive(Debug, Default)]
pub struct Catalog {
    datasets: HashMap<String, Dataset>,
}

impl Catalog {
    /// The dataset called `name`.
    pub fn get(&self, name: &str) -> Option<&Dataset> {
        self.datasets.get(name)
    }

    /// Every dataset, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Dataset> {
        let mut datasets: Vec<&Dataset> = self.datasets.values().collect();
        datasets.sort_by(|a, b| a.name.cmp(&b.name));
        datasets.into_iter()
    }
}

/// A dataset that does not match the database.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The table or view is not there (or not visible to pgspout's role).
    #[error("dataset {dataset:?}: table or view {table:?} does not exist")]
    NoRelation {
        /// The dataset.
        dataset: String,
        /// Its configured table.
        table: String,
    },
    /// The relation is of a kind that cannot be read (an index, a sequence, …).
    #[error("dataset {dataset:?}: {table:?} is not a table or view")]
    NotReadable {
        /// The dataset.
        dataset: String,
        /// Its configured table.
        table: String,
    },
    /// The key names no column of the relation.
    #[error("dataset {dataset:?}: key column {key:?} does not exist in {table:?}")]
    NoKeyColumn {
        /// The dataset.
        dataset: String,
        /// The configured key.
        key: String,
        /// Its configured table.
        table: String,
    },
    /// `columns` names a column the relation does not have, or leaves out the key.
    #[error("dataset {dataset:?}: {problem}")]
    Columns {
        /// The dataset.
        dataset: String,
        /// What is wrong.
        problem: String,
    },
    /// A table's key may be NULL, so keyset pages and `after` could skip or repeat rows.
    #[error("dataset {dataset:?}: key column {key:?} of {table:?} must be NOT NULL")]
    KeyNullable {
        /// The dataset.
        dataset: String,
        /// The configured key.
        key: String,
        /// Its configured table.
        table: String,
    },
    /// `consistency = "chunked"` reads in key order, so it needs a key.
    #[error("dataset {dataset:?}: consistency = \"chunked\" needs a key")]
    ChunkedWithoutKey {
        /// The dataset.
        dataset: String,
    },
    /// A table's key is not backed by a unique index, so ordering by it would not be total.
    #[error("dataset {dataset:?}: key column {key:?} of {table:?} has no unique index of its own")]
    KeyNotUnique {
        /// The dataset.
        dataset: String,
        /// The configured key.
        key: String,
        /// Its configured table.
        table: String,
    },
    /// A catalog query failed.
    #[error("reading the catalog for dataset {dataset:?}")]
    Query {
        /// The dataset.
        dataset: String,
        /// The database error.
        source: tokio_postgres::Error,
    },
}

/// Resolves every configured dataset; `utc` says whether the session TimeZone lets pgspout print timestamptz.
pub async fn load(client: &Client, configured: &[DatasetSettings], utc: bool) -> Result<Catalog, CatalogError> {
    let mut datasets = HashMap::new();
    for settings in configured {
        let dataset = resolve(client, settings, utc).await?;
        tracing::info!(dataset = %dataset.name, relation = %dataset.relation, columns = dataset.columns.len(), "dataset ready");
        datasets.insert(dataset.name.clone(), dataset);
    }
    Ok(Catalog { datasets })
}

async fn resolve(client: &Client, settings: &DatasetSettings, utc: bool) -> Result<Dataset, CatalogError> {
    let dataset = settings.name.clone();
    let table = settings.table.clone();
    let query_error = |source| CatalogError::Query {
        dataset: dataset.clone(),
        source,
    };
    let relation = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&settings.table],
        )
        .await
        .map_err(query_error)?
        .ok_or_else(|| CatalogError::NoRelation {
            dataset: dataset.clone(),
            table: table.clone(),
        })?;
    let oid: u32 = relation.get(0);
    let relkind: String = relation.get(3);
    if !matches!(relkind.as_str(), "r" | "p" | "v" | "m" | "f") {
        return Err(CatalogError::NotReadable { dataset, table });
    }
    let relation_sql = format!(
        "{}.{}",
        escape_identifier(relation.get::<_, &str>(1)),
        escape_identifier(relation.get::<_, &str>(2))
    );

    let rows = client
        .query(
            "SELECT a.attname::text, a.attnum, NOT a.attnotnull, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    pg_catalog.quote_ident(pn.nspname) || '.' || pg_catalog.quote_ident(p.proname), \
                    pg_catalog.format_type(a.atttypid, NULL) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             JOIN pg_catalog.pg_proc p ON p.oid = t.typoutput \
             JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(query_error)?;
    // Preparing a `SELECT *` makes tokio-postgres resolve each column's type, enums and domains included.
    let statement = client
        .prepare(&format!("SELECT * FROM {relation_sql}"))
        .await
        .map_err(query_error)?;
    let columns: Vec<Column> = rows
        .iter()
        .zip(statement.columns())
        .map(|(row, described)| {
            let name: String = row.get(0);
            Column {
                ident: escape_identifier(&name),
                name,
                nullable: row.get(2),
                type_name: row.get(3),
                kind: value_kind(described.type_(), utc),
                output_function: row.get(4),
                cast_type: row.get(5),
                enum_labels: enum_labels(described.type_()),
            }
        })
        .collect();
    let attnums: Vec<i16> = rows.iter().map(|r| r.get(1)).collect();
    let (columns, attnums) = match &settings.columns {
        None => (columns, attnums),
        Some(allowed) => {
            let mut kept = Vec::new();
            for name in allowed {
                let Some(index) = columns.iter().position(|c| &c.name == name) else {
                    let problem = format!("columns names {name:?}, which {table:?} does not have");
                    return Err(CatalogError::Columns { dataset, problem });
                };
                if kept.contains(&index) {
                    return Err(CatalogError::Columns {
                        dataset,
                        problem: format!("columns names {name:?} twice"),
                    });
                }
                kept.push(index);
            }
            let attnums = kept.iter().map(|&i| attnums[i]).collect();
            let mut columns: Vec<Option<Column>> = columns.into_iter().map(Some).collect();
            (
                kept.iter()
                    .map(|&i| columns[i].take().expect("each index once"))
                    .collect(),
                attnums,
            )
        }
    };

    let key = match &settings.key {
        None => None,
        Some(key) => {
            let Some(index) = columns.iter().position(|c| &c.name == key) else {
                if settings.columns.is_some() {
                    let problem = format!("columns must include the key {key:?}");
                    return Err(CatalogError::Columns { dataset, problem });
                }
                return Err(CatalogError::NoKeyColumn {
                    dataset,
                    key: key.clone(),
                    table,
                });
            };
            if matches!(relkind.as_str(), "r" | "p" | "m") {
                if columns[index].nullable {
                    return Err(CatalogError::KeyNullable {
                        dataset,
                        key: key.clone(),
                        table,
                    });
                }
                let attnum = attnums[index];
                let unique: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = $1 AND i.indisunique \
                         AND i.indnkeyatts = 1 AND i.indkey[0] = $2 AND i.indpred IS NULL AND i.indexprs IS NULL)",
                        &[&oid, &attnum],
                    )
                    .await
                    .map_err(query_error)?
                    .get(0);
                if !unique {
                    return Err(CatalogError::KeyNotUnique {
                        dataset,
                        key: key.clone(),
                        table,
                    });
                }
            }
            Some(index)
        }
    };
    if settings.consistency == Consistency::Chunked && key.is_none() {
        return Err(CatalogError::ChunkedWithoutKey { dataset });
    }
    Ok(Dataset {
        name: dataset,
        relation: relation_sql,
        columns,
        key,
        consistency: settings.consistency,
    })
}

/// The labels of an enum type (or of a domain over one).
fn enum_labels(ty: &Type) -> Option<Vec<String>> {
    match ty.kind() {
        Kind::Enum(labels) => Some(labels.clone()),
        Kind::Domain(base) => enum_labels(base),
        _ => None,
    }
}

/// Which values pgspout decodes itself; everything else Postgres formats in the query.
fn value_kind(ty: &Type, utc: bool) -> ValueKind {
    match ty.kind() {
        Kind::Domain(base) => return value_kind(base, utc),
        Kind::Enum(_) => return ValueKind::Text,
        _ => {}
    }
    match *ty {
        Type::BOOL => ValueKind::Bool,
        Type::INT2 | Type::INT4 | Type::INT8 => ValueKind::Int,
        Type::NUMERIC => ValueKind::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ValueKind::Text,
        Type::UUID => ValueKind::Uuid,
        Type::DATE => ValueKind::Date,
        Type::TIMESTAMP => ValueKind::Timestamp,
        Type::TIMESTAMPTZ if utc => ValueKind::TimestampUtc,
        Type::JSON => ValueKind::Json,
        Type::JSONB => ValueKind::Jsonb,
        Type::BYTEA => ValueKind::Bytea,
        _ => ValueKind::ServerFormatted,
    }
}
