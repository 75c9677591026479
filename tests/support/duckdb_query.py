"""Runs a SQL query with DuckDB over a Delta table and prints the result as JSON.

    duckdb_query.py URI VIEW < query.sql

The table is read with the `deltalake` Python package (the files its log lists, with the
partition column) and registered in DuckDB as the view VIEW, so a query written for
`delta_scan(...)` runs unchanged once that call is replaced by VIEW: DuckDB's own
`delta` extension is downloaded at run time, which the test machines cannot do.

Output: {"columns": [name, ...], "rows": [{column: value}, ...]}, values made JSON-safe
as read_delta.py does.
"""

import json
import os
import sys

import duckdb
from deltalake import DeltaTable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from read_delta import safe  # noqa: E402


def main() -> int:
    uri, view = sys.argv[1], sys.argv[2]
    sql = sys.stdin.read()
    log = DeltaTable(uri).to_pyarrow_table()
    con = duckdb.connect()
    con.register(view, log)
    cursor = con.execute(sql)
    columns = [d[0] for d in cursor.description]
    rows = [dict(zip(columns, (safe(v) for v in row))) for row in cursor.fetchall()]
    json.dump({"columns": columns, "rows": rows}, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # As in read_delta.py: skip interpreter teardown, where native thread pools can abort.
    os._exit(code)
