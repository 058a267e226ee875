//! Datasets resolved against the database at start-up and on every reload: the relation, its columns, their
//! types and the comparisons those types support (so a filter or order a type lacks is refused before any
//! query), its key. Configured datasets come first; then every readable relation of the served schemas.
//!
//! Everything that later becomes SQL text (relation and column identifiers, output functions) is read from
//! the catalog here and quoted here; requests only ever pick among these.

use std::collections::HashMap;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;
use tokio_postgres::types::{Kind, Type};

use crate::dataset::{Catalog, Column, Consistency, Dataset, Operators, ValueKind};
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
}

/// Resolves every configured dataset, then discovers the served schemas' relations.
pub(crate) async fn load(client: &Client, sources: &Sources) -> Result<Catalog, CatalogError> {
    let mut datasets = Vec::new();
    for settings in &sources.datasets {
        let dataset = resolve(client, settings, sources.utc).await?;
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
        match resolve(client, &settings, sources.utc).await {
            Ok(dataset) => datasets.push(dataset),
            Err(error @ CatalogError::Query { .. }) => return Err(error),
            // A relation pgspout cannot serve as it found it is left out; configuring it names the problem.
            Err(error) => tracing::warn!(error = %error, "leaving a discovered relation out"),
        }
    }
    tracing::info!(datasets = datasets.len(), "catalog loaded");
    Ok(Catalog::new(datasets))
}

/// A readable relation found in a served schema.
struct Found {
    schema: String,
    relation: String,
    key: Option<String>,
    /// The columns pgspout's role may read, when it may not read them all (column privileges).
    columns: Option<Vec<String>>,
    consistency: Consistency,
}

/// The relations of `schema` that pgspout's role may SELECT (all its columns, or some), with their keys: a
/// one-column primary key, else a one-column unique index on a NOT NULL column. Partitions are left out;
/// their partitioned table is served.
async fn discover(client: &Client, schema: &SchemaSettings) -> Result<Vec<Found>, CatalogError> {
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
            })
        })
        .collect())
}

/// Names discovered relations: the relation's name, or `schema.name` where two served schemas have a relation
/// of that name. A configured dataset of the same name wins; a name that cannot be a URL path segment is
/// left out.
fn name_discovered(found: Vec<Found>, configured: &[DatasetSettings]) -> Vec<DatasetSettings> {
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
            })
        })
        .collect()
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
    let base = BaseTypes::load(client, &types).await.map_err(query_error)?;
    let columns: Vec<Column> = rows
        .iter()
        .zip(&types)
        .map(|(row, ty)| {
            let name: String = row.get(0);
            Column {
                ident: escape_identifier(&name),
                name,
                nullable: row.get(2),
                type_name: row.get(3),
                kind: value_kind(ty, utc),
                output_function: row.get(4),
                cast_type: row.get(5),
                enum_labels: enum_labels(ty),
                operators: base.operators(ty),
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
    })
}

/// What the catalog says of the base types a dataset's columns are built from: their default operator
/// classes and comparison operators (binary-coercible types count, as `varchar` uses `text`'s).
struct BaseTypes(HashMap<u32, BaseType>);

#[derive(Clone, Copy, Default)]
struct BaseType {
    /// A default btree operator class: sortable, and comparable inside arrays and composites.
    btree: bool,
    /// A default hash operator class: its equality works inside arrays and composites.
    hash: bool,
    /// The comparison operators the parser finds for the type itself.
    operators: Operators,
}

impl BaseTypes {
    async fn load(client: &Client, types: &[&Type]) -> Result<BaseTypes, tokio_postgres::Error> {
        let mut oids = Vec::new();
        for ty in types {
            collect_base_oids(ty, &mut oids);
        }
        let rows = client
            .query(
                "WITH ty AS (SELECT t.oid, ARRAY(SELECT t.oid UNION SELECT k.casttarget FROM pg_catalog.pg_cast k \
                   WHERE k.castsource = t.oid AND k.castmethod = 'b' AND k.castcontext = 'i') AS alike \
                   FROM pg_catalog.pg_type t WHERE t.oid = ANY($1)) \
                 SELECT ty.oid, \
                   EXISTS (SELECT 1 FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_am a ON a.oid = c.opcmethod \
                     WHERE a.amname = 'btree' AND c.opcdefault AND c.opcintype = ANY(ty.alike)), \
                   EXISTS (SELECT 1 FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_am a ON a.oid = c.opcmethod \
                     WHERE a.amname = 'hash' AND c.opcdefault AND c.opcintype = ANY(ty.alike)), \
                   ARRAY(SELECT DISTINCT o.oprname::text FROM pg_catalog.pg_operator o \
                     WHERE o.oprname IN ('=', '<>', '<', '<=', '>', '>=') AND o.oprleft = o.oprright \
                     AND o.oprleft = ANY(ty.alike) AND o.oprresult = 'pg_catalog.bool'::pg_catalog.regtype) \
                 FROM ty",
                &[&oids],
            )
            .await?;
        Ok(BaseTypes(
            rows.iter()
                .map(|row| {
                    let names: Vec<String> = row.get(3);
                    let has = |wanted: &[&str]| wanted.iter().all(|w| names.iter().any(|n| n == w));
                    let btree: bool = row.get(1);
                    let base = BaseType {
                        btree,
                        hash: row.get(2),
                        operators: Operators {
                            equal: has(&["="]),
                            unequal: has(&["<>"]),
                            ordering: has(&["<", "<=", ">", ">="]),
                            sortable: btree,
                        },
                    };
                    (row.get::<_, u32>(0), base)
                })
                .collect(),
        ))
    }

    fn get(&self, ty: &Type) -> BaseType {
        self.0.get(&ty.oid()).copied().unwrap_or_default()
    }

    /// What a column of type `ty` supports. Arrays and composites resolve to generic operators that look up
    /// their elements' comparison functions only when they run, so those are checked here too.
    fn operators(&self, ty: &Type) -> Operators {
        match ty.kind() {
            Kind::Domain(base) => self.operators(base),
            Kind::Enum(_) | Kind::Range(_) | Kind::Multirange(_) => Operators::ALL,
            Kind::Array(_) | Kind::Composite(_) => {
                let comparable = self.runtime(ty, true);
                let equal = self.runtime(ty, false);
                Operators {
                    equal,
                    unequal: equal,
                    ordering: comparable,
                    sortable: comparable,
                }
            }
            _ => self.get(ty).operators,
        }
    }

    /// Whether `ty`'s values can be compared (`ordered`) or tested for equality inside an array or record.
    fn runtime(&self, ty: &Type, ordered: bool) -> bool {
        match ty.kind() {
            Kind::Domain(inner) | Kind::Array(inner) => self.runtime(inner, ordered),
            Kind::Composite(fields) => fields.iter().all(|f| self.runtime(f.type_(), ordered)),
            Kind::Enum(_) | Kind::Range(_) | Kind::Multirange(_) => true,
            _ => {
                let base = self.get(ty);
                base.btree || (!ordered && base.hash)
            }
        }
    }
}

fn collect_base_oids(ty: &Type, oids: &mut Vec<u32>) {
    match ty.kind() {
        Kind::Domain(inner) | Kind::Array(inner) => collect_base_oids(inner, oids),
        Kind::Composite(fields) => fields.iter().for_each(|f| collect_base_oids(f.type_(), oids)),
        _ => oids.push(ty.oid()),
    }
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
