//! `[[datasets]]` and `[[schemas]]`: what is served.

use serde::Deserialize;

use super::Consistency;

/// One `[[datasets]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSettings {
    /// The name in URLs: letters, digits, `_` and `-`.
    pub name: String,
    /// A table, view or materialized view, optionally schema-qualified (`public.orders`).
    pub table: String,
    /// A unique, orderable column: rows are streamed in its order.
    pub key: Option<String>,
    /// If set, the only columns readable, filterable and orderable (the key must be among them).
    pub columns: Option<Vec<String>>,
    /// `snapshot` (default) or `chunked`; a request's `consistency` parameter overrides it.
    #[serde(default)]
    pub consistency: Consistency,
    /// Whether requests may use aggregates on it; unset: `query.aggregates`.
    pub aggregates: Option<bool>,
}

/// One `[[schemas]]` entry: every table, view, materialized view, foreign table and partitioned table of the
/// schema that pgspout's role may read, as a dataset named like the relation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSettings {
    /// The schema.
    pub name: String,
    /// If set, only relations whose names match one of these globs (`*`, `?`, `[abc]`).
    pub include: Option<Vec<String>>,
    /// Relations whose names match one of these globs are left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `snapshot` (default) or `chunked` for the schema's datasets; those without a key read as `snapshot`.
    #[serde(default)]
    pub consistency: Consistency,
    /// Whether requests may use aggregates on the schema's datasets; unset: `query.aggregates`.
    pub aggregates: Option<bool>,
}

impl SchemaSettings {
    /// `public`, whole: what is served when nothing is configured.
    pub fn public() -> SchemaSettings {
        SchemaSettings {
            name: "public".into(),
            include: None,
            exclude: Vec::new(),
            consistency: Consistency::Snapshot,
            aggregates: None,
        }
    }

    /// Whether a relation called `relation` is included.
    pub fn includes(&self, relation: &str) -> bool {
        let matches = |globs: &[String]| {
            globs
                .iter()
                .any(|g| glob::Pattern::new(g).is_ok_and(|p| p.matches(relation)))
        };
        self.include.as_deref().is_none_or(matches) && !matches(&self.exclude)
    }
}

/// The rules of `[[datasets]]` and `[[schemas]]`: URL-safe dataset names, each name once, good globs.
pub(super) fn validate(datasets: &[DatasetSettings], schemas: &[SchemaSettings]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for dataset in datasets {
        let name = &dataset.name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "dataset name {name:?} may hold only letters, digits, '_' and '-'"
            ));
        }
        if !seen.insert(name) {
            return Err(format!("dataset {name:?} is configured twice"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for schema in schemas {
        if schema.name.is_empty() {
            return Err("a [[schemas]] entry has an empty name".into());
        }
        if !seen.insert(&schema.name) {
            return Err(format!("schema {:?} is configured twice", schema.name));
        }
        for glob in schema.include.iter().flatten().chain(&schema.exclude) {
            if let Err(error) = glob::Pattern::new(glob) {
                return Err(format!("schema {:?}: bad glob {glob:?}: {error}", schema.name));
            }
        }
    }
    Ok(())
}
