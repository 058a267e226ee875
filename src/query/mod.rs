//! Request → validated plan: the SQL to run and how each result column is encoded. No I/O here.
//!
//! Identifiers come only from the catalog (quoted there); nothing from the request becomes SQL text.

use crate::db::catalog::Dataset;
use crate::encode::{EncodedColumn, Format};

/// What an export runs and how it encodes the result.
#[derive(Debug)]
pub struct Plan {
    /// The `SELECT`.
    pub sql: String,
    /// The result columns, in order.
    pub columns: Vec<EncodedColumn>,
}

/// Every column of `dataset`, in key order when it has a key.
///
/// Columns pgspout does not decode itself are formatted by Postgres in the query: with the type's output
/// function for CSV (what `COPY` uses; a `::text` cast differs for some types, e.g. `inet`) and with
/// `to_json()` for NDJSON.
pub fn plan(dataset: &Dataset, format: Format) -> Plan {
    let mut sql = String::from("SELECT ");
    for (i, column) in dataset.columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let ident = &column.ident;
        if column.kind.is_native() {
            sql.push_str(&format!("t.{ident}"));
        } else {
            match format {
                Format::Csv => sql.push_str(&format!("{}(t.{ident})::text", column.output_function)),
                Format::Ndjson => sql.push_str(&format!("pg_catalog.to_json(t.{ident})::text")),
            }
        }
    }
    sql.push_str(&format!(" FROM {} AS t", dataset.relation));
    if let Some(key) = dataset.key {
        sql.push_str(&format!(" ORDER BY t.{}", dataset.columns[key].ident));
    }
    let columns = dataset
        .columns
        .iter()
        .map(|c| EncodedColumn {
            name: c.name.clone(),
            kind: c.kind,
        })
        .collect();
    Plan { sql, columns }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::catalog::Column;
    use crate::encode::ValueKind;

    fn dataset() -> Dataset {
        let column = |name: &str, kind| Column {
            name: name.into(),
            ident: format!("\"{name}\""),
            type_name: String::new(),
            nullable: true,
            kind,
            output_function: "pg_catalog.inet_out".into(),
        };
        Dataset {
            name: "hosts".into(),
            relation: "public.hosts".into(),
            columns: vec![column("id", ValueKind::Int), column("addr", ValueKind::ServerFormatted)],
            key: Some(0),
        }
    }

    #[test]
    fn server_formatted_columns_use_output_functions_for_csv_and_to_json_for_ndjson() {
        assert_eq!(
            plan(&dataset(), Format::Csv).sql,
            "SELECT t.\"id\", pg_catalog.inet_out(t.\"addr\")::text FROM public.hosts AS t ORDER BY t.\"id\""
        );
        assert_eq!(
            plan(&dataset(), Format::Ndjson).sql,
            "SELECT t.\"id\", pg_catalog.to_json(t.\"addr\")::text FROM public.hosts AS t ORDER BY t.\"id\""
        );
    }

    #[test]
    fn a_dataset_without_key_is_not_ordered() {
        let mut dataset = dataset();
        dataset.key = None;
        assert!(!plan(&dataset, Format::Csv).sql.contains("ORDER BY"));
    }
}
