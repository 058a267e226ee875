//! Discovery: the relations of a served schema that pgspout's role may read, with their keys, named as
//! datasets.

use std::collections::HashMap;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;

use super::CatalogError;
use crate::dataset::Consistency;
use crate::settings::{DatasetSettings, SchemaSettings};

/// A readable relation found in a served schema.
pub(super) struct Found {
    schema: String,
    relation: String,
    key: Option<String>,
    /// The columns pgspout's role may read, when it may not read them all (column privileges).
    columns: Option<Vec<String>>,
    consistency: Consistency,
    aggregates: Option<bool>,
}

/// The relations of `schema` that pgspout's role may SELECT (all its columns, or some), with their keys: a
/// one-column primary key, else a one-column unique index on a NOT NULL column. Partitions are left out;
/// their partitioned table is served.
pub(super) async fn discover(client: &Client, schema: &SchemaSettings) -> Result<Vec<Found>, CatalogError> {
    let query_error = |source| CatalogError::Query {
        dataset: format!("schema {}", schema.name),
        source,
    };
    let usable: Option<bool> = client
        .query_opt(
            "SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE') FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&schema.name],
        )
        .await
        .map_err(query_error)?
        .map(|row| row.get(0));
    if usable != Some(true) {
        return Err(CatalogError::NoSchema {
            schema: schema.name.clone(),
        });
    }
    let rows = client
        .query(
            "SELECT c.relname::text, \
               (SELECT a.attname::text FROM pg_catalog.pg_index i \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 \
                   AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attnotnull \
                 ORDER BY i.indisprimary DESC, i.indexrelid LIMIT 1), \
               pg_catalog.has_table_privilege(c.oid, 'SELECT'), \
               ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                   AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT') ORDER BY a.attnum) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition \
               AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT') \
             ORDER BY c.relname",
            &[&schema.name],
        )
        .await
        .map_err(query_error)?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let relation: String = row.get(0);
            if !schema.includes(&relation) {
                return None;
            }
            let whole: bool = row.get(2);
            let columns = (!whole).then(|| row.get::<_, Vec<String>>(3));
            // A key the role may not read is no key.
            let key = row
                .get::<_, Option<String>>(1)
                .filter(|k| columns.as_ref().is_none_or(|c| c.contains(k)));
            let consistency = match key {
                Some(_) => schema.consistency,
                None => Consistency::Snapshot,
            };
            Some(Found {
                schema: schema.name.clone(),
                relation,
                key,
                columns,
                consistency,
                aggregates: schema.aggregates,
            })
        })
        .collect())
}

/// Names discovered relations: the relation's name, or `schema.name` where two served schemas have a relation
/// of that name. A configured dataset of the same name wins; a name that cannot be a URL path segment is
/// left out.
pub(super) fn name_discovered(found: Vec<Found>, configured: &[DatasetSettings]) -> Vec<DatasetSettings> {
    let mut uses: HashMap<String, usize> = HashMap::new();
    for f in &found {
        *uses.entry(f.relation.clone()).or_default() += 1;
    }
    found
        .into_iter()
        .filter_map(|f| {
            let name = match uses[&f.relation] {
                1 => f.relation.clone(),
                _ => format!("{}.{}", f.schema, f.relation),
            };
            if configured.iter().any(|d| d.name == name) {
                return None;
            }
            if name.chars().any(|c| c.is_control() || matches!(c, '/' | '%' | '+')) {
                tracing::warn!(relation = %name, "leaving out a relation whose name cannot be a URL path segment");
                return None;
            }
            Some(DatasetSettings {
                name,
                table: format!("{}.{}", escape_identifier(&f.schema), escape_identifier(&f.relation)),
                key: f.key,
                columns: f.columns,
                consistency: f.consistency,
                aggregates: f.aggregates,
            })
        })
        .collect()
}
