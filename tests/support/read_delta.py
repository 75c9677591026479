"""Independent reader for the integration tests: reads a Delta table with the `deltalake`
Python package (delta-rs's Python binding, not pg2lake's own code) and prints JSON.

    read_delta.py URI [--options JSON] [--version N] [--app-id ID ...]
    read_delta.py URI [--options JSON] --history

Table output:
    {"version": N,
     "schema": [[name, arrow type string], ...],        # pyarrow's spelling, e.g. "int64"
     "partition_columns": [...],
     "files": [uri, ...],
     "txn": {app_id: version or null, ...},             # only for the --app-id given
     "rows": [{column: value}, ...]}                    # sorted by (_lsn, _seq) when present
History output: the list DeltaTable.history() returns, newest first.

Values are made JSON-safe and exact: decimals as strings ("12.50", scale kept),
timestamps/dates/times as ISO strings, bytes as lowercase hex, lists as lists, maps as
lists of [key, value], structs as objects, NaN/Infinity as the strings "NaN",
"Infinity", "-Infinity". A value Python cannot represent (a timestamp past year 9999)
becomes {"raw": <int64 value>, "type": <arrow type>}.

Exit code 3 (and "table not found" on stderr) when URI holds no Delta table, so a
caller can poll for a table that is not written yet.
"""

import argparse
import datetime
import decimal
import json
import math
import os
import sys

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError


def safe(value):
    """One Python value (from pyarrow's to_pylist) to a JSON-safe value."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, decimal.Decimal):
        # 'f' keeps the scale and never switches to exponent notation.
        return format(value, "f")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return {"microseconds": (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): safe(v) for k, v in value.items()}
    if isinstance(value, tuple):
        # map entries come back from pyarrow as (key, value) tuples
        return [safe(v) for v in value]
    if isinstance(value, list):
        return [safe(v) for v in value]
    return str(value)


def column_values(column: pa.ChunkedArray):
    """A column as JSON-safe values; falls back to raw integers where Python's
    datetime cannot hold the value, at any depth (inside structs and lists too)."""
    out = []
    for chunk in column.chunks:
        out.extend(array_values(chunk))
    return out


def array_values(array: pa.Array):
    """One Arrow array as JSON-safe values, see column_values."""
    try:
        return [safe(v) for v in array.to_pylist()]
    except (OverflowError, ValueError) as err:
        error = err
    valid = array.is_valid().to_pylist()
    if pa.types.is_struct(array.type):
        fields = [array.type.field(i).name for i in range(array.type.num_fields)]
        children = [array_values(array.field(i)) for i in range(len(fields))]
        return [
            dict(zip(fields, values)) if ok else None
            for ok, values in zip(valid, zip(*children))
        ]
    if pa.types.is_list(array.type):
        flat = array_values(array.flatten())
        offsets = array.offsets.to_pylist()
        # flatten() drops the values before the first offset of a sliced array.
        base = offsets[0]
        return [
            flat[start - base:end - base] if ok else None
            for ok, start, end in zip(valid, offsets, offsets[1:])
        ]
    if not pa.types.is_temporal(array.type):
        raise error
    # date32 casts to int32 only; every other temporal type is 64 bits wide.
    width = pa.int32() if pa.types.is_date32(array.type) else pa.int64()
    raw = array.cast(width).to_pylist()
    out = []
    for value, raw_value in zip(array, raw):
        try:
            out.append(safe(value.as_py()))
        except (OverflowError, ValueError):
            out.append({"raw": raw_value, "type": str(array.type)})
    return out


def filesystem(uri: str, options: dict):
    """The pyarrow filesystem and root path for a table URI (local path or s3://)."""
    import pyarrow.fs as pafs

    if uri.startswith("s3://"):
        endpoint = options.get("AWS_ENDPOINT_URL")
        fs = pafs.S3FileSystem(
            access_key=options.get("AWS_ACCESS_KEY_ID"),
            secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
            region=options.get("AWS_REGION", "us-east-1"),
            endpoint_override=endpoint,
            scheme="http" if endpoint and endpoint.startswith("http://") else "https",
        )
        return fs, uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), uri.removeprefix("file://").rstrip("/")


def read_listed_files(dt: DeltaTable, uri: str, options: dict) -> pa.Table:
    """The table as pyarrow reads the files the Delta log lists, partition columns added
    from the log. Used when deltalake's own scan fails: it parses the min/max statistics
    of date columns with Python's datetime, which cannot hold a date before year 1
    (Postgres allows dates back to 4713 BC)."""
    import pyarrow.parquet as pq

    fs, root = filesystem(uri, options)
    schema = pa.schema(dt.schema().to_arrow())
    partitions = list(dt.metadata().partition_columns)
    actions = pa.table(dt.get_add_actions(flatten=True))
    # Only the path and partition values: the statistics columns hold the very dates
    # Python cannot represent.
    wanted = ["path"] + [f"partition.{name}" for name in partitions]
    actions = actions.select([n for n in wanted if n in actions.column_names]).to_pylist()
    tables = []
    for action in actions:
        data = pq.read_table(f"{root}/{action['path']}", filesystem=fs)
        for name in partitions:
            value = action.get(f"partition.{name}")
            field = schema.field(name)
            column = pa.array([value] * data.num_rows).cast(field.type)
            data = data.append_column(field, column)
        tables.append(data.select(schema.names).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_table(dt: DeltaTable, app_ids, uri: str, options: dict):
    try:
        table = dt.to_pyarrow_table()
    except ValueError:
        table = read_listed_files(dt, uri, options)
    names = table.column_names
    columns = [column_values(table.column(name)) for name in names]
    rows = [dict(zip(names, values)) for values in zip(*columns)] if names else []
    if "_lsn" in names and "_seq" in names:
        rows.sort(key=lambda r: (r["_lsn"] is None, r["_lsn"] or 0, r["_seq"] or 0))
    return {
        "version": dt.version(),
        "schema": [[field.name, str(field.type)] for field in table.schema],
        "partition_columns": list(dt.metadata().partition_columns),
        "files": list(dt.file_uris()),
        "txn": {app_id: dt.transaction_version(app_id) for app_id in app_ids},
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("uri")
    parser.add_argument("--options", default="{}", help="storage options as a JSON object")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--history", action="store_true")
    parser.add_argument("--app-id", action="append", default=[])
    args = parser.parse_args()
    options = json.loads(args.options)
    try:
        dt = DeltaTable(args.uri, version=args.version, storage_options=options or None)
    except TableNotFoundError as err:
        print(f"table not found: {args.uri}: {err}", file=sys.stderr)
        return 3
    if args.history:
        out = safe(dt.history())
    else:
        out = read_table(dt, args.app_id, args.uri, options)
    json.dump(out, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: pyarrow's and delta-rs's native thread pools can abort
    # the process there ("terminate called without an active exception") after all
    # output is written, which would turn a good read into a failure.
    os._exit(code)
