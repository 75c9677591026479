"""Prints what a pg2lake lake holds, read with the `deltalake` Python package.

    show_lake.py LAKE_DIR                      every table: version, columns, rows
    show_lake.py --count LAKE_DIR SCHEMA.TABLE number of rows (0 while the table is missing)

A table is a folder <LAKE_DIR>/<schema>/<table> holding a Delta `_delta_log`. Rows are
the change log, printed in change order (by `_lsn`, `_seq`).
"""

import argparse
import os
import sys

import pyarrow  # noqa: F401  (imported before deltalake: see the end of the file)
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

MAX_WIDTH = 32


def tables(lake: str):
    """(schema.table, path) for every Delta table under the lake, sorted."""
    found = []
    for root, dirs, _files in os.walk(lake):
        if "_delta_log" in dirs:
            rel = os.path.relpath(root, lake)
            found.append((rel.replace(os.sep, "."), root))
            dirs.clear()  # a table's own folders hold no further tables
    return sorted(found)


def cell(value) -> str:
    if value is None:
        return "NULL"
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text if len(text) <= MAX_WIDTH else text[: MAX_WIDTH - 1] + "…"


def show(name: str, path: str) -> None:
    dt = DeltaTable(path)
    table = dt.to_pyarrow_table()
    rows = table.to_pylist()
    if "_lsn" in table.column_names and "_seq" in table.column_names:
        rows.sort(key=lambda r: (r["_lsn"] or 0, r["_seq"] or 0))
    print(f"\n{name}  (Delta version {dt.version()}, {len(rows)} rows, {path})")
    print("  columns: " + ", ".join(f"{f.name} {f.type}" for f in table.schema))
    names = table.column_names
    grid = [names] + [[cell(r[n]) for n in names] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(names))]
    for i, line in enumerate(grid):
        print("  " + " | ".join(text.ljust(w) for text, w in zip(line, widths)))
        if i == 0:
            print("  " + "-+-".join("-" * w for w in widths))


def count(lake: str, name: str) -> int:
    path = os.path.join(lake, *name.split(".", 1))
    try:
        return DeltaTable(path).to_pyarrow_table().num_rows
    except TableNotFoundError:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--count", action="store_true", help="print the row count of one table")
    parser.add_argument("lake")
    parser.add_argument("table", nargs="?", help="schema.table (with --count)")
    args = parser.parse_args()
    if args.count:
        if not args.table:
            parser.error("--count needs SCHEMA.TABLE")
        print(count(args.lake, args.table))
        return 0
    found = tables(args.lake)
    if not found:
        print(f"no Delta tables under {args.lake}")
        return 1
    for name, path in found:
        show(name, path)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: pyarrow's and delta-rs's native thread pools can abort
    # the process there ("terminate called without an active exception") after all
    # output is written, which would turn a good read into a failure.
    os._exit(code)
