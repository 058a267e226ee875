"""Reads a pgspout dataset with pandas and polars, as their users do, and prints summaries as JSON.

Usage: dataframes.py BASE_URL DATASET JOB_DOWNLOAD_URL. pandas reads /rows URLs directly (NDJSON with
lines=True, CSV, and the JSON array); polars reads the job file's download URL (it wants a Content-Length,
which a streamed /rows body has not) and a file object over a /rows stream.
"""
import json
import os
import sys
import urllib.request

import pandas as pd
import polars as pl

base, dataset, download = sys.argv[1], sys.argv[2], sys.argv[3]
rows = f"{base}/v1/datasets/{dataset}/rows"


def summary(count, low, high, total, notes):
    return [int(count), int(low), int(high), round(float(total), 2), int(notes)]


def pandas_summary(frame):
    return summary(len(frame), frame["id"].min(), frame["id"].max(), frame["amount"].astype(float).sum(),
                   frame["note"].notna().sum())


def polars_summary(frame):
    return summary(frame.height, frame["id"].min(), frame["id"].max(), frame["amount"].cast(pl.Float64).sum(),
                   frame["note"].is_not_null().sum())


with urllib.request.urlopen(rows) as stream:
    polars_stream = pl.read_ndjson(stream)
result = {
    "pandas_ndjson": pandas_summary(pd.read_json(rows, lines=True)),
    "pandas_csv": pandas_summary(pd.read_csv(f"{rows}?format=csv")),
    "pandas_json": pandas_summary(pd.read_json(f"{rows}?format=json")),
    "polars_job_csv": polars_summary(pl.read_csv(download)),
    "polars_file_object": polars_summary(polars_stream),
}
print(json.dumps(result))
# Out at once, output flushed: pyarrow's thread pools (DuckDB's too) can abort with std::terminate, or hang,
# while the interpreter tears them down at exit, after the work is done (apache/arrow#34314, #50482); seen
# here as "terminate called without an active exception" (SIGABRT) on a loaded machine.
sys.stdout.flush()
os._exit(0)
