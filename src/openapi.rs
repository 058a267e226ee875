//! The OpenAPI 3.1 document of this instance, generated from the configured datasets at start-up.

use serde_json::{Map, Value, json};

use crate::db::catalog::{Catalog, Column, Dataset};
use crate::encode::ValueKind;

/// Query parameter names that are not filters.
const RESERVED: [&str; 6] = ["select", "order", "limit", "after", "cursor", "format"];

/// The JSON Schema of a column's values as pgspout writes them in NDJSON (as `to_json()` does).
fn value_schema(column: &Column) -> Value {
    let type_name = column.type_name.as_str();
    let mut schema = if type_name.ends_with("[]") {
        json!({ "type": "array" })
    } else {
        match column.kind {
            ValueKind::Int => json!({ "type": "integer" }),
            ValueKind::Bool => json!({ "type": "boolean" }),
            ValueKind::Json | ValueKind::Jsonb => json!({}),
            ValueKind::Numeric => {
                json!({ "type": ["number", "string"], "description": "NaN and ±Infinity are strings" })
            }
            ValueKind::Uuid => json!({ "type": "string", "format": "uuid" }),
            ValueKind::Date => json!({ "type": "string", "format": "date" }),
            ValueKind::TimestampUtc => json!({ "type": "string", "format": "date-time" }),
            _ if type_name == "real" || type_name == "double precision" => {
                json!({ "type": ["number", "string"], "description": "NaN and ±Infinity are strings" })
            }
            _ => json!({ "type": "string" }),
        }
    };
    schema["description"] = json!(match schema.get("description").and_then(Value::as_str) {
        Some(note) => format!("PostgreSQL type {type_name}; {note}"),
        None => format!("PostgreSQL type {type_name}"),
    });
    if column.nullable {
        schema = json!({ "anyOf": [schema, { "type": "null" }] });
    }
    schema
}

fn problem_responses() -> Value {
    let problem = json!({ "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } });
    let mut responses = Map::new();
    for (status, description) in [
        ("400", "A query parameter is unknown or malformed"),
        ("404", "No such dataset"),
        ("406", "No acceptable format or encoding"),
        ("500", "Internal error (details in the server log)"),
        (
            "503",
            "All connections busy or the database unavailable; see Retry-After",
        ),
        ("504", "The statement timeout was reached"),
    ] {
        responses.insert(status.into(), json!({ "description": description, "content": problem }));
    }
    Value::Object(responses)
}

fn parameter(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn query_parameters(dataset: &Dataset, page: bool) -> Vec<Value> {
    let names: Vec<&str> = dataset.columns.iter().map(|c| c.name.as_str()).collect();
    let mut parameters = vec![
        parameter(
            "select",
            &format!("Comma-separated columns, in output order: {}", names.join(", ")),
            json!({ "type": "string" }),
        ),
        parameter(
            "order",
            "Comma-separated col[.asc|.desc][.nullsfirst|.nullslast]",
            json!({ "type": "string" }),
        ),
        parameter(
            "limit",
            "Maximum number of rows",
            json!({ "type": "integer", "minimum": if page { 1 } else { 0 } }),
        ),
    ];
    if page {
        parameters.push(parameter(
            "cursor",
            "The `next` value of the previous page",
            json!({ "type": "string" }),
        ));
    } else {
        parameters.push(parameter(
            "format",
            "Output format (else the Accept header)",
            json!({ "type": "string", "enum": ["ndjson", "csv"] }),
        ));
        if dataset.key.is_some() {
            parameters.push(parameter(
                "after",
                "Resume after this key value (key order)",
                json!({ "type": "string" }),
            ));
        }
    }
    for column in dataset.columns.iter().filter(|c| !RESERVED.contains(&c.name.as_str())) {
        parameters.push(parameter(
            &column.name,
            &format!(
                "Filter on {} ({}): [not.]op.value with op one of eq, neq, gt, gte, lt, lte, like, ilike, in.(a,b,\"c,d\"), is.null, is.true, is.false",
                column.name, column.type_name
            ),
            json!({ "type": "string", "pattern": "^(not\\.)?(eq|neq|gt|gte|lt|lte|like|ilike|in|is)\\..*$" }),
        ));
    }
    parameters
}

/// The whole document.
pub fn document(catalog: &Catalog) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details",
            "properties": {
                "type": { "type": "string" }, "title": { "type": "string" },
                "status": { "type": "integer" }, "detail": { "type": "string" }
            },
            "required": ["type", "title", "status"]
        }),
    );
    schemas.insert(
        "Dataset".into(),
        json!({
            "type": "object",
            "properties": {
                "name": { "type": "string" },
                "columns": { "type": "array", "items": { "type": "object", "properties": {
                    "name": { "type": "string" }, "type": { "type": "string" }, "nullable": { "type": "boolean" } } } },
                "key": { "type": ["string", "null"] },
                "estimated_rows": { "type": ["integer", "null"] }
            },
            "required": ["name", "columns", "key", "estimated_rows"]
        }),
    );
    let status =
        |what: &str| json!({ "type": "object", "properties": { "status": { "type": "string", "const": what } } });
    paths.insert("/healthz".into(), json!({ "get": { "summary": "The process runs", "operationId": "healthz",
        "responses": { "200": { "description": "Alive", "content": { "application/json": { "schema": status("ok") } } } } } }));
    paths.insert("/readyz".into(), json!({ "get": { "summary": "PostgreSQL answers", "operationId": "readyz",
        "responses": { "200": { "description": "Ready", "content": { "application/json": { "schema": status("ready") } } },
                       "503": problem_responses()["503"] } } }));
    paths.insert("/v1/datasets".into(), json!({ "get": { "summary": "Every dataset", "operationId": "listDatasets",
        "responses": { "200": { "description": "The datasets", "content": { "application/json": { "schema": {
            "type": "object", "properties": { "datasets": { "type": "array", "items": { "$ref": "#/components/schemas/Dataset" } } } } } } },
            "503": problem_responses()["503"] } } }));
    for dataset in catalog.iter() {
        let name = &dataset.name;
        let row_schema = format!("#/components/schemas/{name}Row");
        let properties: Map<String, Value> = dataset
            .columns
            .iter()
            .map(|c| (c.name.clone(), value_schema(c)))
            .collect();
        schemas.insert(
            format!("{name}Row"),
            json!({ "type": "object", "properties": properties }),
        );
        paths.insert(
            format!("/v1/datasets/{name}"),
            json!({ "get": {
            "summary": format!("The {name} dataset"), "operationId": format!("describe_{name}"),
            "responses": { "200": { "description": "The dataset", "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/Dataset" } } } }, "503": problem_responses()["503"] } } }),
        );
        let mut rows_responses = problem_responses();
        rows_responses["200"] = json!({
            "description": "The rows, streamed; gzip, zstd or br when Accept-Encoding asks",
            "content": {
                "application/x-ndjson": { "schema": { "$ref": row_schema } },
                "text/csv": { "schema": { "type": "string" } }
            }
        });
        paths.insert(
            format!("/v1/datasets/{name}/rows"),
            json!({ "get": {
            "summary": format!("Stream the rows of {name}"), "operationId": format!("rows_{name}"),
            "parameters": query_parameters(dataset, false), "responses": rows_responses } }),
        );
        if dataset.key.is_some() {
            let mut page_responses = problem_responses();
            page_responses["200"] = json!({ "description": "One page", "content": { "application/json": { "schema": {
                "type": "object",
                "properties": { "rows": { "type": "array", "items": { "$ref": row_schema } }, "next": { "type": ["string", "null"] } },
                "required": ["rows", "next"] } } } });
            paths.insert(
                format!("/v1/datasets/{name}/page"),
                json!({ "get": {
                "summary": format!("One keyset page of {name}"), "operationId": format!("page_{name}"),
                "parameters": query_parameters(dataset, true), "responses": page_responses } }),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pgspout",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Streams PostgreSQL datasets as NDJSON or CSV. Filters follow PostgREST's syntax."
        },
        "paths": paths,
        "components": { "schemas": schemas }
    })
}
