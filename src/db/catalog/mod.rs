//! Datasets resolved against the database at start-up and on every reload: the relation, its columns, their
//! types and the comparisons those types support (so a filter or order a type lacks is refused before any
//! query), its key. Configured datasets come first; then every readable relation of the served schemas.
//!
//! Everything that later becomes SQL text (relation and column identifiers, output functions) is read from
//! the catalog here and quoted here; requests only ever pick among these.
//!
//! # Layout
//! - `discovery`: the relations of a served schema, with their keys and readable columns.
//! - `resolve`: one dataset's relation, columns and key.
//! - `types`: what a column's type can do (its comparisons, its encoding).

mod discovery;
mod resolve;
mod types;

use tokio_postgres::Client;

use self::discovery::{discover, name_discovered};
use self::resolve::resolve;
use crate::dataset::Catalog;
use crate::settings::{DatasetSettings, SchemaSettings};

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
    /// The key's type has no btree ordering, so rows cannot be streamed or paged in its order.
    #[error("dataset {dataset:?}: key column {key:?} is of type {type_name}, which cannot be sorted")]
    KeyNotSortable {
        /// The dataset.
        dataset: String,
        /// The configured key.
        key: String,
        /// Its type.
        type_name: String,
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
    /// A served schema does not exist (or pgspout's role may not use it).
    #[error("schema {schema:?} does not exist, or pgspout's role lacks USAGE on it")]
    NoSchema {
        /// The schema.
        schema: String,
    },
    /// The catalog's snapshot could not be taken or ended.
    #[error("opening or ending the catalog's read-only snapshot")]
    Snapshot(#[source] tokio_postgres::Error),
    /// A catalog query failed.
    #[error("reading the catalog for dataset {dataset:?}")]
    Query {
        /// The dataset.
        dataset: String,
        /// The database error.
        source: tokio_postgres::Error,
    },
}

/// What the catalog is built from.
pub(crate) struct Sources {
    /// `[[datasets]]`, resolved as configured; a mismatch is an error.
    pub(crate) datasets: Vec<DatasetSettings>,
    /// The schemas served whole.
    pub(crate) schemas: Vec<SchemaSettings>,
    /// pgspout's own job schema, never served.
    pub(crate) hidden_schema: Option<String>,
    /// Whether the session TimeZone lets pgspout print timestamptz.
    pub(crate) utc: bool,
    /// `[query]`: aggregates for datasets that do not say, and the cost cap.
    pub(crate) query: crate::settings::QuerySettings,
}

/// Resolves every configured dataset, then discovers the served schemas' relations, all in one read-only
/// snapshot: read statement by statement, a change committed between two of them (a configured table renamed
/// away and a new one created, in one transaction) could be half seen, and a reload that should fail would
/// serve a catalog that never existed. `client` is a connection of the catalog's own, never a pooled one.
pub(crate) async fn load(client: &Client, sources: &Sources) -> Result<Catalog, CatalogError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(CatalogError::Snapshot)?;
    let loaded = read(client, sources).await;
    // A failed read leaves the transaction aborted; ROLLBACK ends that as well as a good one.
    client.batch_execute("ROLLBACK").await.map_err(CatalogError::Snapshot)?;
    loaded
}

/// [`load`]'s statements.
async fn read(client: &Client, sources: &Sources) -> Result<Catalog, CatalogError> {
    let mut datasets = Vec::new();
    for settings in &sources.datasets {
        let dataset = resolve(client, settings, sources).await?;
        tracing::debug!(dataset = %dataset.name, relation = %dataset.relation, columns = dataset.columns.len(), "dataset ready");
        datasets.push(dataset);
    }
    let mut discovered = Vec::new();
    for schema in &sources.schemas {
        if sources.hidden_schema.as_ref() == Some(&schema.name) {
            tracing::warn!(schema = %schema.name, "not serving pgspout's own job schema");
            continue;
        }
        discovered.extend(discover(client, schema).await?);
    }
    for settings in name_discovered(discovered, &sources.datasets) {
        match resolve(client, &settings, sources).await {
            Ok(dataset) => datasets.push(dataset),
            Err(error @ CatalogError::Query { .. }) => return Err(error),
            // A relation pgspout cannot serve as it found it is left out; configuring it names the problem.
            Err(error) => tracing::warn!(error = %error, "leaving a discovered relation out"),
        }
    }
    tracing::info!(datasets = datasets.len(), "catalog loaded");
    Ok(Catalog::new(datasets))
}
