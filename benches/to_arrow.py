"""Time to an Arrow table in Python: one reader, one read of the bench's `orders` query; prints the seconds the
read took (imports and connection set-up excluded, so that only the transfer and decoding are compared) and
the table's row count, as `seconds rows`.

Usage: to_arrow.py READER SOURCE QUERY
  READER  pgspout (SOURCE: the /rows URL with format=arrow), pgspout-parquet (format=parquet, read by
          pyarrow.parquet), flight (SOURCE: pgspout's Arrow Flight location; DoGet of the whole `orders`
          dataset, in key order), duckdb (DuckDB's postgres scanner),
          connectorx1 / connectorx2 (ConnectorX, one or two partitions on id), adbc (ADBC's PostgreSQL driver);
          SOURCE for the others is a postgresql:// URL
  QUERY   the SELECT the database readers run (pgspout's URL says the same)
The end-to-end bench runs it from the bench's own venv (scripts/bench.sh makes it).
"""
import glob
import importlib
import os
import sys
import time
import urllib.request

reader, source, query = sys.argv[1], sys.argv[2], sys.argv[3]

if reader == "pgspout":
    import pyarrow as pa

    started = time.perf_counter()
    with urllib.request.urlopen(source) as response:
        table = pa.ipc.open_stream(response).read_all()
elif reader == "pgspout-parquet":
    import io

    import pyarrow.parquet as pq

    started = time.perf_counter()
    with urllib.request.urlopen(source) as response:
        table = pq.read_table(io.BytesIO(response.read()))
elif reader == "flight":
    import pyarrow.flight as flight

    client = flight.FlightClient(source)
    started = time.perf_counter()
    info = client.get_flight_info(flight.FlightDescriptor.for_path("orders"))
    table = client.do_get(info.endpoints[0].ticket).read_all()
elif reader == "duckdb":
    import duckdb

    con = duckdb.connect()
    module = importlib.import_module("duckdb_extension_postgres_scanner")
    (path,) = glob.glob(os.path.join(os.path.dirname(module.__file__), "extensions", "*", "*.duckdb_extension"))
    con.execute(f"LOAD '{path}'")
    con.execute(f"ATTACH '{source}' AS pg (TYPE postgres, READ_ONLY)")
    started = time.perf_counter()
    table = con.execute(f"SELECT * FROM postgres_query('pg', $q${query}$q$)").to_arrow_table()
elif reader.startswith("connectorx"):
    import connectorx as cx

    partitions = int(reader.removeprefix("connectorx"))
    extra = {"partition_on": "id", "partition_num": partitions} if partitions > 1 else {}
    started = time.perf_counter()
    table = cx.read_sql(source, query.replace(" ORDER BY id", ""), return_type="arrow", **extra)
elif reader == "adbc":
    import adbc_driver_postgresql.dbapi

    connection = adbc_driver_postgresql.dbapi.connect(source)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(query)
        table = cursor.fetch_arrow_table()
else:
    sys.exit(f"unknown reader {reader}")
print(f"{time.perf_counter() - started:.6f} {table.num_rows}")
# Out at once, output flushed: pyarrow's thread pools (DuckDB's too) can abort with std::terminate, or hang,
# while the interpreter tears them down at exit, after the work is done (apache/arrow#34314, #50482); seen
# here as "terminate called without an active exception" (SIGABRT) on a loaded machine.
sys.stdout.flush()
os._exit(0)
