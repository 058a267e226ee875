"""Reads a pgspout dataset over HTTP with DuckDB, as NDJSON and as CSV, and prints summaries as JSON.

Usage: duckdb_read.py BASE_URL DATASET. Extensions come from the duckdb-extension-* wheels, loaded by path,
since DuckDB cannot download them without internet.
"""
import glob
import importlib
import json
import os
import sys

import duckdb

base, dataset = sys.argv[1], sys.argv[2]
con = duckdb.connect()
for name in ("httpfs", "json"):
    module = importlib.import_module(f"duckdb_extension_{name}")
    (path,) = glob.glob(os.path.join(os.path.dirname(module.__file__), "extensions", "*", f"{name}.duckdb_extension"))
    con.execute(f"LOAD '{path}'")

url = f"{base}/v1/datasets/{dataset}/rows"
summary = "count(*), min(id), max(id), round(sum(amount), 2), count(note)"
result = {
    "ndjson": con.execute(f"SELECT {summary} FROM read_json('{url}', format = 'newline_delimited')").fetchone(),
    "csv": con.execute(f"SELECT {summary} FROM read_csv('{url}?format=csv')").fetchone(),
}
print(json.dumps(result))
# Out at once, output flushed: pyarrow's thread pools (DuckDB's too) can abort with std::terminate, or hang,
# while the interpreter tears them down at exit, after the work is done (apache/arrow#34314, #50482); seen
# here as "terminate called without an active exception" (SIGABRT) on a loaded machine.
sys.stdout.flush()
os._exit(0)
