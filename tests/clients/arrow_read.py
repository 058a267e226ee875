"""Reads pgspout's `format=arrow` streams, `format=parquet` files and Arrow and Parquet job files as their
users do, and prints what came through as JSON.

Usage: arrow_read.py cells URL          — pyarrow reads the IPC stream straight off the HTTP response; prints
                                          the schema (name, type, pgspout.type), the batches' row counts, and
                                          every cell in a canonical text form the test compares with Postgres's
                                          own values
       arrow_read.py parquet-cells URL  — the same of a Parquet response, read by pyarrow.parquet.read_table;
                                          "batches" are its row groups' row counts
       arrow_read.py frames URL         — polars (read_ipc_stream) and pandas (through pyarrow) read it; prints
                                          their row counts and column sums
       arrow_read.py cut URL            — reads a stream the server aborts; prints the reader's error (exit 0
                                          only if reading failed)
       arrow_read.py parquet-cut URL    — the same of a Parquet response
       arrow_read.py job-files ARROW_URL PARQUET_URL
                                        — a job's Arrow IPC file (pyarrow.ipc.open_file) and Parquet file
                                          (polars.read_parquet and DuckDB's read_parquet on the URL, through
                                          httpfs; pyarrow and pandas): row counts and sums of id and amount
"""
import decimal
import json
import os
import struct
import sys
import urllib.request
import uuid

import pyarrow as pa

mode, url = sys.argv[1], sys.argv[2]


def finish(code):
    # Out at once, output flushed: pyarrow's thread pools (DuckDB's too) can abort with std::terminate, or hang,
    # while the interpreter tears them down at exit, after the work is done (apache/arrow#34314, #50482); seen
    # here as "terminate called without an active exception" (SIGABRT) on a loaded machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def canonical(value, arrow_type):
    """A cell as the test's SQL renders it: the same text for the same value, whatever the type."""
    if value is None:
        return None
    if isinstance(arrow_type, pa.ExtensionType):
        if arrow_type.extension_name == "arrow.uuid":
            return str(value if isinstance(value, uuid.UUID) else uuid.UUID(bytes=value))
        return value
    if pa.types.is_list(arrow_type):
        return [canonical(v, arrow_type.value_type) for v in value]
    if pa.types.is_boolean(arrow_type):
        return "true" if value else "false"
    if pa.types.is_float32(arrow_type):
        return struct.pack(">f", value).hex()
    if pa.types.is_float64(arrow_type):
        return struct.pack(">d", value).hex()
    if pa.types.is_decimal(arrow_type):
        return format(value, "f")
    if pa.types.is_binary(arrow_type):
        return value.hex()
    if pa.types.is_interval(arrow_type):
        return struct.pack(">qii", value.nanoseconds // 1000, value.days, value.months).hex()
    return str(value)


def raw_numbers(array):
    """Dates, times and timestamps as the integers Arrow stores (Python's datetime cannot hold BC dates)."""
    storage = {pa.types.is_date32: pa.int32()}
    for test, integer in storage.items():
        if test(array.type):
            return array.cast(integer)
    if pa.types.is_time64(array.type) or pa.types.is_timestamp(array.type):
        return array.cast(pa.int64())
    return None


def cells(table):
    columns = []
    for index, field in enumerate(table.schema):
        array = table.column(index).combine_chunks()
        numbers = raw_numbers(array)
        if numbers is not None:
            columns.append([None if v is None else str(v) for v in numbers.to_pylist()])
            continue
        if pa.types.is_list(field.type) and raw_numbers(array.values) is not None:
            values = [None if v is None else str(v) for v in raw_numbers(array.values).to_pylist()]
            lists, offsets = [], array.offsets.to_pylist()
            for row, valid in enumerate(array.is_valid().to_pylist()):
                lists.append(values[offsets[row]:offsets[row + 1]] if valid else None)
            columns.append(lists)
            continue
        columns.append([canonical(v, field.type) for v in array.to_pylist()])
    return [list(row) for row in zip(*columns)]


def described(table, batches):
    schema = [
        [f.name, str(f.type), (f.metadata or {}).get(b"pgspout.type", b"").decode()] for f in table.schema
    ]
    return json.dumps({"schema": schema, "batches": batches, "rows": cells(table)})


def download(url):
    with urllib.request.urlopen(url) as response:
        return response.read()


def sums(height, ids, amounts):
    return [int(height), int(ids), str(amounts)]


if mode == "cells":
    with urllib.request.urlopen(url) as response:
        reader = pa.ipc.open_stream(response)
        batches = list(reader)
    table = pa.Table.from_batches(batches, schema=reader.schema)
    print(described(table, [b.num_rows for b in batches]))
elif mode == "parquet-cells":
    import io

    import pyarrow.parquet as pq

    body = io.BytesIO(download(url))
    groups = pq.ParquetFile(body).metadata
    table = pq.read_table(body)
    print(described(table, [groups.row_group(i).num_rows for i in range(groups.num_row_groups)]))
elif mode == "frames":
    import io

    import polars as pl

    with urllib.request.urlopen(url) as response:
        body = response.read()
    polars = pl.read_ipc_stream(io.BytesIO(body))
    with urllib.request.urlopen(url) as response:
        pandas = pa.ipc.open_stream(response).read_pandas()
    print(json.dumps({
        "polars": [polars.height, int(polars["id"].cast(pl.Int64).sum()), str(polars["amount"].sum())],
        "pandas": [len(pandas), int(pandas["id"].sum()), str(sum(pandas["amount"], decimal.Decimal(0)))],
    }))
elif mode in ("cut", "parquet-cut"):
    import io

    import pyarrow.parquet as pq

    def read(url):
        if mode == "cut":
            with urllib.request.urlopen(url) as response:
                return pa.ipc.open_stream(response).read_all().num_rows
        # The server aborts the transfer: urllib raises, or (were it to end cleanly) the bytes are no file.
        return pq.read_table(io.BytesIO(download(url))).num_rows

    try:
        rows = read(url)
    except Exception as error:  # noqa: BLE001 - any failure is the expected outcome
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        finish(0)
    print(json.dumps({"rows": rows}))
    finish(1)
elif mode == "job-files":
    import io

    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet_url = sys.argv[3]
    arrow = pa.ipc.open_file(io.BytesIO(download(url))).read_all()
    parquet = pq.read_table(io.BytesIO(download(parquet_url)))
    polars = pl.read_parquet(parquet_url)
    frame = pd.read_parquet(io.BytesIO(download(parquet_url)))
    import glob

    import duckdb_extension_httpfs

    connection = duckdb.connect()
    # The extension from its PyPI wheel, loaded by path (this machine has no route to DuckDB's repository).
    extensions = os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions")
    (httpfs,) = glob.glob(os.path.join(extensions, "*", "httpfs.duckdb_extension"))
    connection.execute(f"LOAD '{httpfs}'")
    duck = connection.execute(
        "SELECT count(*), sum(id), sum(amount)::text FROM read_parquet(?)", [parquet_url]
    ).fetchone()
    amount_type = connection.execute(
        "SELECT typeof(amount) FROM read_parquet(?) LIMIT 1", [parquet_url]
    ).fetchone()[0]
    total = lambda column: sum((v for v in column.to_pylist() if v is not None), decimal.Decimal(0))  # noqa: E731
    print(json.dumps({
        "arrow_file": sums(arrow.num_rows, pc.sum(arrow["id"]).as_py(), total(arrow["amount"])),
        "pyarrow": sums(parquet.num_rows, pc.sum(parquet["id"]).as_py(), total(parquet["amount"])),
        "polars": sums(polars.height, polars["id"].cast(pl.Int64).sum(), polars["amount"].sum()),
        "pandas": sums(len(frame), frame["id"].sum(), sum(frame["amount"].dropna(), decimal.Decimal(0))),
        "duckdb": sums(duck[0], duck[1], duck[2]),
        "duckdb_amount_type": amount_type,
        "arrow_types": [str(f.type) for f in arrow.schema],
        "parquet_types": [str(f.type) for f in parquet.schema],
    }))
finish(0)
