//! Resolution: one dataset's relation, its columns (quoted, with their types' abilities) and its key.

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::types::{AggregateFunctions, BaseTypes, base_oids, columnar, enum_labels, value_kind};
use super::{CatalogError, Sources};
use crate::dataset::{Column, Consistency, Dataset};
use crate::settings::DatasetSettings;

/// The dataset `settings` configures, as the catalog describes it.
pub(super) async fn resolve(
    client: &Client,
    settings: &DatasetSettings,
    sources: &Sources,
) -> Result<Dataset, CatalogError> {
    let utc = sources.utc;
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

    // The cast type drops the typmod (it would round numerics and truncate varchars); where the bare name
    // means a length of 1 (`character`, `bit`), the unlimited type of the same family compares the same way.
    let rows = client
        .query(
            "SELECT a.attname::text, a.attnum, NOT a.attnotnull, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    pg_catalog.quote_ident(pn.nspname) || '.' || pg_catalog.quote_ident(p.proname), \
                    CASE pg_catalog.format_type(a.atttypid, NULL) \
                         WHEN 'character' THEN 'bpchar' WHEN 'character[]' THEN 'bpchar[]' \
                         WHEN 'bit' THEN 'bit varying' WHEN 'bit[]' THEN 'bit varying[]' \
                         ELSE pg_catalog.format_type(a.atttypid, NULL) END \
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
    let types: Vec<&Type> = statement.columns().iter().map(|c| c.type_()).collect();
    let mut oids = base_oids(&types);
    let aggregates_on = settings.aggregates.unwrap_or(sources.query.aggregates);
    let functions = if aggregates_on {
        AggregateFunctions::load(client, &oids).await.map_err(query_error)?
    } else {
        AggregateFunctions::default()
    };
    oids.extend(functions.returned_oids());
    let base = BaseTypes::load(client, &oids).await.map_err(query_error)?;
    let columns: Vec<Column> = rows
        .iter()
        .zip(&types)
        .map(|(row, ty)| {
            let name: String = row.get(0);
            let type_name: String = row.get(3);
            let aggregates = base.aggregates(ty, &type_name, &functions, utc);
            Column {
                ident: escape_identifier(&name),
                name,
                nullable: row.get(2),
                kind: value_kind(ty, utc),
                columnar: columnar(ty, &type_name),
                type_name,
                output_function: row.get(4),
                cast_type: row.get(5),
                enum_labels: enum_labels(ty),
                operators: base.operators(ty),
                aggregates,
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
            if !columns[index].operators.sortable {
                return Err(CatalogError::KeyNotSortable {
                    dataset,
                    key: key.clone(),
                    type_name: columns[index].type_name.clone(),
                });
            }
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
        aggregates: aggregates_on,
        max_cost: sources.query.max_cost,
    })
}
