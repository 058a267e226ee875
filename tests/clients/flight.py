"""Reads pgspout's Arrow Flight endpoint with pyarrow's Flight client, as its users do, and prints what came
through as JSON.

Usage: flight.py list LOCATION [TOKEN]
                 — ListFlights: each flight's path, command, row estimate and field names
       flight.py get LOCATION HTTP_BASE DESCRIPTOR [TOKEN]
                 — GetFlightInfo on DESCRIPTOR (`path:orders` or `cmd:orders?amount=gt.5`), DoGet on its
                   ticket; the table's rows, sum of `id` if any, schema, and whether it equals what
                   /rows?format=arrow sends for the same query (read with pyarrow.ipc.open_stream)
       flight.py error LOCATION DESCRIPTOR [TOKEN]
                 — GetFlightInfo then DoGet, expecting a failure: prints the error's class and message
       flight.py forged LOCATION [TOKEN]
                 — DoGet on a ticket pgspout did not issue: prints the error
       flight.py cancel LOCATION DESCRIPTOR
                 — reads one batch, then cancels the call
       flight.py killed LOCATION DESCRIPTOR
                 — reads one batch, prints "reading", waits for a line on stdin, then reads on: prints the
                   error that ends the stream (exit 1 if it ended cleanly)
"""
import json
import sys
import urllib.parse
import urllib.request

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight


def options(token):
    headers = [(b"authorization", b"Bearer " + token.encode())] if token else []
    return flight.FlightCallOptions(headers=headers)


def descriptor(text):
    kind, _, value = text.partition(":")
    if kind == "path":
        return flight.FlightDescriptor.for_path(value)
    return flight.FlightDescriptor.for_command(value)


def failure(error):
    return {"error": type(error).__name__, "message": str(error)}


def main():
    mode, location = sys.argv[1], sys.argv[2]
    client = flight.FlightClient(location)
    if mode == "list":
        token = sys.argv[3] if len(sys.argv) > 3 else None
        flights = []
        for info in client.list_flights(options=options(token)):
            flights.append({
                "path": [p.decode() if isinstance(p, bytes) else p for p in (info.descriptor.path or [])],
                "rows": info.total_records,
                "fields": info.schema.names,
                "endpoints": len(info.endpoints),
            })
        print(json.dumps(flights))
    elif mode == "get":
        http_base, text = sys.argv[3], sys.argv[4]
        token = sys.argv[5] if len(sys.argv) > 5 else None
        info = client.get_flight_info(descriptor(text), options(token))
        table = client.do_get(info.endpoints[0].ticket, options(token)).read_all()
        name, _, query = text.partition(":")[2].partition("?")
        url = f"{http_base}/v1/datasets/{name}/rows?format=arrow" + (f"&{query}" if query else "")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(request) as response:
            http = pa.ipc.open_stream(response).read_all()
        result = {
            "rows": table.num_rows,
            "schema": [[f.name, str(f.type)] for f in table.schema],
            "same_schema": info.schema.equals(table.schema),
            "equal_to_http": table.equals(http),
        }
        if "id" in table.column_names:
            result["id_sum"] = pc.sum(table["id"]).as_py()
            result["ids"] = table["id"].to_pylist()[:5]
        print(json.dumps(result))
    elif mode == "error":
        text = sys.argv[3]
        token = sys.argv[4] if len(sys.argv) > 4 else None
        try:
            info = client.get_flight_info(descriptor(text), options(token))
            client.do_get(info.endpoints[0].ticket, options(token)).read_all()
        except Exception as error:  # the test checks the class
            print(json.dumps(failure(error)))
            return
        sys.exit("the call succeeded")
    elif mode == "forged":
        token = sys.argv[3] if len(sys.argv) > 3 else None
        try:
            client.do_get(flight.Ticket(b"orders"), options(token)).read_all()
        except Exception as error:
            print(json.dumps(failure(error)))
            return
        sys.exit("a forged ticket was read")
    elif mode in ("cancel", "killed"):
        info = client.get_flight_info(descriptor(sys.argv[3]))
        reader = client.do_get(info.endpoints[0].ticket)
        reader.read_chunk()
        if mode == "cancel":
            reader.cancel()
            print(json.dumps({"cancelled": True}), flush=True)
            return
        print("reading", flush=True)
        sys.stdin.readline()
        try:
            while True:
                reader.read_chunk()
        except StopIteration:
            sys.exit("the stream ended cleanly")
        except Exception as error:
            print(json.dumps(failure(error)), flush=True)


main()
