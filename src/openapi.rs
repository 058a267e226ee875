//! The OpenAPI 3.1 document of this instance, generated from the configured datasets at start-up.

use serde_json::{Map, Value, json};

use crate::dataset::{Catalog, Column, Dataset};
use crate::encode::{FORMATS, Format, ValueKind};
use crate::query::params::RESERVED;

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
            // `to_json()` prints a composite as an object, every other type as its text.
            ValueKind::ServerFormatted => json!({ "type": ["string", "object"] }),
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

/// A regular expression matching `text` literally (ECMA-262).
fn regex_escape(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if "\\^$.|?*+()[]{}/-".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// A regular expression for values a column accepts in filters, or `None` when its text form is not
/// describable (arrays, json, ranges, …: the API still takes them, the document offers only `is.null`).
/// The expressions are deliberately narrower than what Postgres parses, so every match is valid.
fn value_pattern(column: &Column) -> Option<String> {
    if let Some(labels) = &column.enum_labels {
        return Some(format!(
            "({})",
            labels.iter().map(|l| regex_escape(l)).collect::<Vec<_>>().join("|")
        ));
    }
    let date = "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])";
    Some(match column.kind {
        ValueKind::Int => match column.cast_type.as_str() {
            "smallint" => "-?[0-9]{1,4}".to_owned(),
            "integer" => "-?[0-9]{1,9}".to_owned(),
            _ => "-?[0-9]{1,18}".to_owned(),
        },
        ValueKind::Numeric => "-?[0-9]{1,12}(\\.[0-9]{1,6})?".to_owned(),
        ValueKind::Bool => "(true|false)".to_owned(),
        ValueKind::Text => "[^\\x00,()\"\\\\]*".to_owned(),
        ValueKind::Uuid => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}".to_owned(),
        ValueKind::Date => date.to_owned(),
        ValueKind::Timestamp | ValueKind::TimestampUtc => format!("{date}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"),
        _ if matches!(column.type_name.as_str(), "real" | "double precision") => {
            "-?[0-9]{1,6}(\\.[0-9]{1,6})?".to_owned()
        }
        _ => return None,
    })
}

/// For a dataset with aggregates: the pattern of a `select` item (a column, or an aggregate its type has,
/// with an optional alias) and of an `order` term's name (a column, an alias or a call).
fn summary_patterns(dataset: &Dataset) -> (String, String) {
    let names = |function: &str| {
        let names: Vec<String> = dataset
            .columns
            .iter()
            .filter(|c| c.aggregates.names().contains(&function))
            .map(|c| regex_escape(&c.name))
            .collect();
        (!names.is_empty()).then(|| format!("({})", names.join("|")))
    };
    // Every column takes count().
    let column = names("count").unwrap_or_default();
    let mut calls = vec!["count\\(\\)".to_owned()];
    for function in ["count", "sum", "avg", "min", "max"] {
        if let Some(columns) = names(function) {
            calls.push(format!("{columns}\\.{function}\\(\\)"));
        }
    }
    let call = format!("({})", calls.join("|"));
    let alias = "[A-Za-z0-9_]+";
    (
        format!("({column}|({alias}:)?{call})"),
        format!("({column}|{alias}|{call})"),
    )
}

/// The pattern of a filter on `column`: `[not.]op.value` for the operators its type supports.
fn filter_pattern(column: &Column) -> String {
    let mut alternatives = vec!["is\\.null".to_owned()];
    if let Some(value) = value_pattern(column) {
        alternatives.push(format!("(eq|neq|gt|gte|lt|lte)\\.{value}"));
        alternatives.push(format!("in\\.\\(({value}(,{value})*)?\\)"));
    }
    if column.kind.is_textual() && column.enum_labels.is_none() {
        alternatives.push("(like|ilike)\\.[^\\x00]*".to_owned());
    }
    if column.kind == ValueKind::Bool {
        alternatives.push("is\\.(true|false)".to_owned());
    }
    format!("^(not\\.)?({})$", alternatives.join("|"))
}

fn query_parameters(dataset: &Dataset, page: bool, max_limit: u64) -> Vec<Value> {
    let names: Vec<&str> = dataset.columns.iter().map(|c| c.name.as_str()).collect();
    let column = format!(
        "({})",
        names.iter().map(|n| regex_escape(n)).collect::<Vec<_>>().join("|")
    );
    let summaries = dataset.aggregates.then(|| summary_patterns(dataset));
    let (item, sorted) = match &summaries {
        Some((item, sorted)) => (item.clone(), sorted.clone()),
        None => (column.clone(), column.clone()),
    };
    let term = format!("{sorted}(\\.(asc|desc))?(\\.(nullsfirst|nullslast))?");
    let limit = if page {
        json!({ "type": "integer", "minimum": 1, "maximum": max_limit })
    } else {
        json!({ "type": "integer", "minimum": 0 })
    };
    let mut parameters = vec![
        parameter(
            "select",
            &match summaries {
                None => format!("Comma-separated columns, in output order: {}", names.join(", ")),
                Some(_) => format!(
                    "Comma-separated columns and aggregates, in output order: {}; count(), col.count(), col.sum(), \
                     col.avg(), col.min(), col.max() (where the column's type has them), each optionally named \
                     alias:amount.sum() (else after its function). With an aggregate, every plain column is a \
                     group: one row per group, filters applied before grouping",
                    names.join(", ")
                ),
            },
            json!({ "type": "string", "pattern": format!("^{item}(,{item})*$") }),
        ),
        parameter(
            "order",
            "Comma-separated col[.asc|.desc][.nullsfirst|.nullslast], each column once; the key breaks ties. A \
             summary orders by its groups and aggregates (by alias, name or call, e.g. total.desc or \
             amount.sum().desc); its groups break ties",
            json!({ "type": "string", "pattern": format!("^{term}(,{term})*$") }),
        ),
        parameter("limit", "Maximum number of rows", limit),
    ];
    if page {
        parameters.push(parameter(
            "cursor",
            "The opaque `next` value of the previous page (signed; any other value is refused)",
            json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]{43}$" }),
        ));
    } else {
        parameters.push(parameter(
            "format",
            &format!(
                "Output format (else the Accept header): {}",
                FORMATS
                    .iter()
                    .map(|f| format!("{} ({})", f.names[0], f.summary))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            json!({ "type": "string", "enum": Format::names() }),
        ));
        parameters.push(parameter(
            "compression",
            "Download a compressed file (application/gzip, application/zstd or application/x-brotli, no \
             Content-Encoding, named like orders.csv.gz) whatever Accept-Encoding says; identity: never compress. \
             Parquet compresses its own pages and takes neither",
            json!({ "type": "string", "enum": ["identity", "gzip", "zstd", "br"] }),
        ));
        if dataset.key.is_some() {
            parameters.push(parameter(
                "consistency",
                "snapshot: one transaction, one consistent snapshot for the whole download; chunked: keyset \
                 batches in short transactions, so no snapshot is held for long (rows changed meanwhile may \
                 appear in either state). Default: the dataset's",
                json!({ "type": "string", "enum": ["snapshot", "chunked"] }),
            ));
        }
        if let Some(pattern) = dataset.key.and_then(|k| value_pattern(&dataset.columns[k])) {
            parameters.push(parameter(
                "after",
                "Resume after this key value (key order)",
                json!({ "type": "string", "pattern": format!("^{pattern}$") }),
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
            json!({ "type": "string", "pattern": filter_pattern(column) }),
        ));
    }
    parameters
}

/// Only these entries of `problem_responses()`, with `extra` statuses added.
fn problems(statuses: &[&str], extra: &[(&str, &str)]) -> Value {
    let all = problem_responses();
    let problem = json!({ "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } });
    let mut responses = Map::new();
    for status in statuses {
        responses.insert((*status).into(), all[*status].clone());
    }
    for (status, description) in extra {
        responses.insert(
            (*status).into(),
            json!({ "description": description, "content": problem }),
        );
    }
    Value::Object(responses)
}

/// The `/v1/exports` paths and their schemas (background export jobs).
fn export_paths(catalog: &Catalog, paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    let datasets: Vec<&str> = catalog
        .iter()
        .filter(|d| d.key.is_some())
        .map(|d| d.name.as_str())
        .collect();
    schemas.insert(
        "ExportRequest".into(),
        json!({
            "type": "object",
            "properties": {
                "dataset": { "type": "string", "enum": datasets },
                "format": {
                    "type": "string",
                    "enum": FORMATS.iter().filter(|f| f.jobs.is_some()).map(|f| f.names[0]).collect::<Vec<_>>(),
                    "default": "ndjson"
                },
                "compression": {
                    "type": "string", "enum": ["identity", "gzip", "zstd"], "default": "identity",
                    "description": "identity only for parquet, which compresses its own pages"
                },
                "query": { "type": "string", "description": "A /rows query string: select, filters, order, limit, after" },
                "parallelism": {
                    "type": "integer", "minimum": 1, "default": 1,
                    "description": "Connections to read on, at most jobs.max_parallelism: key ranges of one \
                        snapshot, joined into the same file. Needs a key, ndjson or csv, no order and no limit"
                }
            },
            "required": ["dataset"],
            "additionalProperties": false
        }),
    );
    let nullable_time = json!({ "type": ["string", "null"], "format": "date-time" });
    schemas.insert(
        "Export".into(),
        json!({
            "type": "object",
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "dataset": { "type": "string" }, "format": { "type": "string" },
                "compression": { "type": "string" }, "query": { "type": "string" },
                "status": { "type": "string", "enum": ["queued", "running", "completed", "failed", "cancelled"] },
                "rows_written": { "type": "integer" }, "bytes_written": { "type": "integer" },
                "last_key": {}, "position": { "type": ["array", "null"] },
                "error": { "type": ["string", "null"] }, "attempts": { "type": "integer" },
                "resumable": {
                    "type": "boolean",
                    "description": "false for a dataset without a key and for arrow and parquet files: an \
                        interrupted run starts again from the first row"
                },
                "restarts": {
                    "type": "integer",
                    "description": "How many times a job that cannot resume started again from its first row"
                },
                "parallelism": { "type": "integer" },
                "parts": {
                    "type": ["array", "null"],
                    "description": "A parallel job's parts, in key order, once planned",
                    "items": {
                        "type": "object",
                        "properties": {
                            "rows_written": { "type": "integer" }, "bytes_written": { "type": "integer" },
                            "done": { "type": "boolean" }
                        }
                    }
                },
                "created_at": { "type": "string", "format": "date-time" },
                "started_at": nullable_time, "updated_at": { "type": "string", "format": "date-time" },
                "finished_at": nullable_time, "expires_at": nullable_time,
                "status_url": { "type": "string" }, "download_url": { "type": "string" },
                "webhooks": {
                    "type": "array",
                    "description": "The job's webhook deliveries ([[jobs.webhooks]]): one per event and endpoint; \
                        `id` is the `webhook-id` every attempt carries. Absent from a webhook's own `data`.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": { "type": "string", "format": "uuid" },
                            "event": { "type": "string", "enum": ["export.completed", "export.failed", "export.cancelled"] },
                            "status": { "type": "string", "enum": ["pending", "delivered", "failed"] },
                            "attempts": { "type": "integer" },
                            "last_error": { "type": ["string", "null"] },
                            "delivered_at": nullable_time, "next_attempt_at": nullable_time
                        },
                        "required": ["id", "event", "status", "attempts"]
                    }
                }
            },
            "required": ["id", "dataset", "status", "rows_written", "bytes_written", "status_url"]
        }),
    );
    let export = json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Export" } } });
    let id =
        json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }]);
    let unknown = ("404", "No such export, or background exports are off");
    let mut create = problems(
        &["400", "500", "503", "504"],
        &[
            ("403", "The database role may not read the dataset"),
            ("404", "Background exports are off"),
            ("422", "The Idempotency-Key was used for another request"),
        ],
    );
    create["202"] = json!({ "description": "Queued; Location names the status resource", "content": { "application/json": {
        "schema": { "type": "object", "properties": {
            "id": { "type": "string", "format": "uuid" }, "status": { "const": "queued" }, "status_url": { "type": "string" } },
            "required": ["id", "status", "status_url"] } } } });
    paths.insert(
        "/v1/exports".into(),
        json!({ "post": {
        "summary": "Queue a background export to a file", "operationId": "createExport",
        "parameters": [{ "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Makes a retry safe: the same key and request name the same export (the caller's own keys; \
                another request under a used key is a 422)",
            "schema": { "type": "string", "minLength": 1, "maxLength": 257 } }],
        "requestBody": { "required": true, "content": { "application/json": {
            "schema": { "$ref": "#/components/schemas/ExportRequest" } } } },
        "responses": create } }),
    );
    let mut show = problems(&["500", "503"], &[unknown]);
    show["200"] = json!({ "description": "The export's status", "content": export });
    let mut remove = problems(&["500", "503"], &[unknown]);
    remove["200"] = json!({ "description": "Cancelled; its status", "content": export });
    remove["204"] = json!({ "description": "A finished export and its file deleted" });
    paths.insert("/v1/exports/{id}".into(), json!({
        "get": { "summary": "An export's status", "operationId": "getExport", "parameters": id, "responses": show },
        "delete": { "summary": "Cancel a queued or running export, or delete a finished one", "operationId": "deleteExport",
            "parameters": id, "responses": remove } }));
    let mut file = Map::new();
    let job_types = FORMATS.iter().filter_map(|f| f.jobs).map(|j| j.media_type);
    for media_type in job_types.chain(["application/gzip", "application/zstd"]) {
        let essence = media_type.split(';').next().unwrap_or(media_type);
        file.insert(essence.into(), json!({ "schema": { "type": "string" } }));
    }
    let mut download = problems(&["500", "503"], &[unknown, ("409", "The export is not completed")]);
    download["200"] = json!({ "description": "The file, as stored", "content": file });
    download["206"] = json!({ "description": "The requested byte range (with If-Range: only while its validator \
        names this file; else 200 with all of it)", "content": file });
    download["304"] = json!({ "description": "If-None-Match named this file's ETag" });
    download["416"] = json!({ "description": "The range lies outside the file" });
    download["303"] = json!({ "description": "With jobs.storage (object storage) and jobs.download = redirect: \
        the file is at Location, a presigned URL valid for jobs.presign_expiry",
        "headers": { "Location": { "schema": { "type": "string", "format": "uri" } } } });
    paths.insert(
        "/v1/exports/{id}/download".into(),
        json!({ "get": {
        "summary": "Download a completed export (byte ranges supported)", "operationId": "downloadExport",
        "parameters": id, "responses": download } }),
    );
}

/// The types of `format=arrow` (README's table, in brief).
const ARROW_TYPES: &str = "An Arrow IPC stream. Types: boolean → bool; smallint, integer, bigint → int16, int32, int64; \
real, double precision → float32, float64; numeric(p,s) with p ≤ 38 and s ≤ p → decimal128(p,s) (other numerics: exact text); \
text, varchar, char(n), name, enums → utf8; bytea → binary; uuid → arrow.uuid; date → date32; time → time64[us]; \
timestamp → timestamp[us]; timestamptz → timestamp[us, UTC]; interval → month_day_nano; json, jsonb → arrow.json; \
one-dimensional arrays of these → list; anything else → utf8 with Postgres's text. Each field's metadata \
`pgspout.type` names its Postgres type. A value the Arrow type cannot hold (infinity, a timestamp past Arrow's \
range, NaN in a decimal, a second array dimension) aborts the stream; a stream without its end-of-stream marker is \
incomplete.";

/// How `format=parquet` differs from Arrow.
const PARQUET_TYPES: &str = "A Parquet file (zstd pages, row groups of at most 131,072 rows or 16 MiB, the footer last: a cut \
download is no valid file; never compressed over HTTP). The Arrow types of format=arrow, through Parquet's logical \
types (UUID, JSON, DECIMAL, DATE, TIME, TIMESTAMP, LIST; the Arrow schema travels in the footer), except interval and \
numeric with a negative scale, which are Postgres's exact text.";

/// The event grammar of `format=sse`.
const SSE_GRAMMAR: &str = "`retry: 1000`, then events. Rows travel in unnamed (message) events, one `data:` line \
    per row holding its JSON object; on a keyed dataset each event has `id: <opaque resume token>`, and a \
    reconnect with `Last-Event-ID` continues the same request (filters, order, what is left of limit) right \
    after that event. After every rows event, `event: progress` with \
    `data: {\"rows\": <sent, before a reconnect too>, \"total\": <estimate or null>}`. After the last row, `event: end` with \
    `data: {\"rows\": <n>}`: a stream that stops without `end` is incomplete.";

/// The whole document; `max_limit` is the largest page; `jobs` adds the background export endpoints.
pub(crate) fn document(catalog: &Catalog, max_limit: u64, jobs: bool) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details",
            "properties": {
                "type": { "type": "string" }, "title": { "type": "string" },
                "status": { "type": "integer" }, "detail": { "type": "string" },
                "instance": { "type": "string", "description": "urn:pgspout:request:<request id>" },
                "request_id": { "type": "string", "description": "The X-Request-Id of this response" }
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
    let format = json!({
        "type": "object",
        "properties": {
            "name": { "type": "string" }, "aliases": { "type": "array", "items": { "type": "string" } },
            "accepts": { "type": "array", "items": { "type": "string" } },
            "media_type": { "type": "string" }, "extension": { "type": "string" },
            "compressible": { "type": "boolean" }, "summary": { "type": "string" },
            "job": { "type": ["object", "null"], "properties": {
                "extension": { "type": "string" }, "media_type": { "type": "string" }, "resumes": { "type": "boolean" } } }
        },
        "required": ["name", "media_type", "extension", "compressible", "job"]
    });
    paths.insert(
        "/v1/formats".into(),
        json!({ "get": { "summary": "The output formats, and what jobs write of each",
        "operationId": "listFormats",
        "responses": { "200": { "description": "The formats", "content": { "application/json": { "schema": {
            "type": "object", "properties": { "formats": { "type": "array", "items": format } },
            "required": ["formats"] } } } } } } }),
    );
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
            "description": "The rows, streamed; gzip, zstd or br when Accept-Encoding asks, or a compressed file \
                with `compression`",
            "content": {
                "application/x-ndjson": { "schema": { "$ref": row_schema } },
                "text/csv": { "schema": { "type": "string" } },
                "application/json": { "schema": { "type": "array", "items": { "$ref": row_schema } } },
                "text/event-stream": { "schema": {
                    "description": SSE_GRAMMAR,
                    "type": "object",
                    "properties": {
                        "event": { "type": "string", "enum": ["message", "progress", "end"] },
                        "data": { "type": "string" },
                        "id": { "type": "string" },
                        "retry": { "type": "integer" }
                    }
                } },
                "application/vnd.apache.arrow.stream": { "schema": {
                    "type": "string", "format": "binary", "description": ARROW_TYPES } },
                "application/vnd.apache.parquet": { "schema": {
                    "type": "string", "format": "binary", "description": PARQUET_TYPES } },
                "application/gzip": { "schema": { "type": "string" } },
                "application/zstd": { "schema": { "type": "string" } },
                "application/x-brotli": { "schema": { "type": "string" } }
            }
        });
        paths.insert(
            format!("/v1/datasets/{name}/rows"),
            json!({ "get": {
            "summary": format!("Stream the rows of {name}"), "operationId": format!("rows_{name}"),
            "parameters": query_parameters(dataset, false, max_limit), "responses": rows_responses } }),
        );
        if dataset.key.is_some() {
            let mut page_responses = problem_responses();
            page_responses["200"] = json!({ "description": "One page", "content": { "application/json": { "schema": {
                "type": "object",
                "properties": { "rows": { "type": "array", "items": { "$ref": row_schema } }, "next": { "type": ["string", "null"] } },
                "required": ["rows", "next"] } } } });
            page_responses["422"] = json!({
                "description": "A value on the page is larger than export.max_value_bytes (the detail names its column)",
                "content": problem_responses()["400"]["content"] });
            paths.insert(
                format!("/v1/datasets/{name}/page"),
                json!({ "get": {
                "summary": format!("One keyset page of {name}"), "operationId": format!("page_{name}"),
                "parameters": query_parameters(dataset, true, max_limit), "responses": page_responses } }),
            );
        }
    }
    if jobs {
        export_paths(catalog, &mut paths, &mut schemas);
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
