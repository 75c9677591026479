"""Damages a local Delta table written by pg2lake on purpose, for the tests of
`pg2lake verify`: every change here is one a broken writer or a careless hand could make.

    damage_lake.py TABLE_DIR drop-row   --id N            # rewrite a data file without key N's rows
    damage_lake.py TABLE_DIR set-value  --id N --column C --value X
    damage_lake.py TABLE_DIR drop-truncates               # rewrite files without their `t` rows
    damage_lake.py TABLE_DIR readd      --id N            # new version: `add` of the same file again
    damage_lake.py TABLE_DIR copy-add   --id N            # new version: `add` of a copy of the file
    damage_lake.py TABLE_DIR remove     --id N            # new version: `remove` of the file

`--id N` picks the one data file of the current version that holds a row (not a truncate)
whose column `id` is N; it is an error when no file or more than one does. Rewritten files
keep their path and schema (only the rows change); the log's statistics for them go stale,
which is what an in-place overwrite leaves. New versions are written as
`_delta_log/<version>.json` with an exclusive create, like any Delta writer.

The current files are found by replaying the JSON commits (pg2lake writes a checkpoint only
every 100 versions; a table with a checkpoint is refused). Prints one JSON object saying
what was done: {"file": path, "rows_before": n, "rows_after": n, "version": v}.
"""

import argparse
import glob
import json
import os
import shutil
import sys
import time
import urllib.parse
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def log_dir(table: str) -> str:
    return os.path.join(table, "_delta_log")


def commits(table: str):
    """(version, [action, ...]) of every JSON commit, in version order."""
    if glob.glob(os.path.join(log_dir(table), "*.checkpoint*.parquet")):
        raise SystemExit(f"{table} has a checkpoint: this script replays JSON commits only")
    out = []
    for path in glob.glob(os.path.join(log_dir(table), "*.json")):
        name = os.path.basename(path)[: -len(".json")]
        if not name.isdigit():
            continue
        with open(path, encoding="utf-8") as f:
            actions = [json.loads(line) for line in f if line.strip()]
        out.append((int(name), actions))
    out.sort(key=lambda c: c[0])
    return out


def current_adds(table: str):
    """path → the `add` action that put it into the current version."""
    files = {}
    for _, actions in commits(table):
        for action in actions:
            if "add" in action:
                files[action["add"]["path"]] = action["add"]
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
    return files


def local_path(table: str, path: str) -> str:
    return os.path.join(table, urllib.parse.unquote(path))


def read(table: str, path: str) -> pa.Table:
    # ParquetFile, not read_table: no hive partition column inferred from the directory.
    return pq.ParquetFile(local_path(table, path)).read()


def file_of(table: str, key: int):
    """(path, add action) of the one current file holding a row of key `key`."""
    found = []
    for path, add in current_adds(table).items():
        data = read(table, path)
        rows = pc.and_(pc.equal(data["id"], key), pc.not_equal(data["_op"], "t"))
        if pc.any(rows).as_py():
            found.append((path, add))
    if len(found) != 1:
        raise SystemExit(f"key {key} is in {len(found)} current files of {table}, not one")
    return found[0]


def rewrite(table: str, path: str, data: pa.Table) -> None:
    """Overwrites the file at `path` with `data`, in place (same name, same schema)."""
    target = local_path(table, path)
    tmp = target + ".tmp"
    pq.write_table(data, tmp)
    os.replace(tmp, target)


def commit(table: str, actions) -> int:
    """Writes the next version holding `actions` (plus commitInfo); returns its number."""
    version = max(v for v, _ in commits(table)) + 1
    now = int(time.time() * 1000)
    lines = [{"commitInfo": {"timestamp": now, "operation": "DAMAGE", "operationParameters": {}}}]
    lines.extend(actions)
    path = os.path.join(log_dir(table), f"{version:020d}.json")
    with open(path, "x", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("table")
    parser.add_argument(
        "action",
        choices=["drop-row", "set-value", "drop-truncates", "readd", "copy-add", "remove"],
    )
    parser.add_argument("--id", type=int)
    parser.add_argument("--column")
    parser.add_argument("--value")
    args = parser.parse_args()
    table = args.table
    result = {}

    if args.action == "drop-truncates":
        changed = []
        for path in current_adds(table):
            data = read(table, path)
            keep = pc.not_equal(data["_op"], "t")
            kept = data.filter(keep)
            if kept.num_rows != data.num_rows:
                rewrite(table, path, kept)
                changed.append({"file": path, "rows_before": data.num_rows, "rows_after": kept.num_rows})
        if not changed:
            raise SystemExit(f"no current file of {table} holds a truncate")
        result = {"files": changed}
    else:
        if args.id is None:
            raise SystemExit(f"{args.action} needs --id")
        path, add = file_of(table, args.id)
        data = read(table, path)
        result = {"file": path, "rows_before": data.num_rows}
        if args.action == "drop-row":
            data = data.filter(pc.not_equal(data["id"], args.id))
            rewrite(table, path, data)
        elif args.action == "set-value":
            if args.column is None or args.value is None:
                raise SystemExit("set-value needs --column and --value")
            index = data.schema.get_field_index(args.column)
            column = data[args.column]
            hit = pc.and_(pc.equal(data["id"], args.id), pc.not_equal(data["_op"], "t"))
            value = pa.scalar(args.value, type=column.type)
            data = data.set_column(index, data.schema.field(index), pc.if_else(hit, value, column))
            rewrite(table, path, data)
        elif args.action == "readd":
            again = dict(add)
            again["modificationTime"] = int(time.time() * 1000)
            again["dataChange"] = True
            result["version"] = commit(table, [{"add": again}])
        elif args.action == "copy-add":
            # Beside the original, under a new name: the same changes in a second file.
            copy = os.path.join(os.path.dirname(path), f"part-00000-{uuid.uuid4()}-c000.snappy.parquet")
            shutil.copyfile(local_path(table, path), local_path(table, copy))
            again = dict(add)
            again["path"] = copy
            again["modificationTime"] = int(time.time() * 1000)
            again["dataChange"] = True
            result["file_copy"] = copy
            result["version"] = commit(table, [{"add": again}])
        elif args.action == "remove":
            remove = {
                "path": path,
                "deletionTimestamp": int(time.time() * 1000),
                "dataChange": True,
                "extendedFileMetadata": True,
                "partitionValues": add.get("partitionValues", {}),
                "size": add.get("size"),
            }
            result["version"] = commit(table, [{"remove": remove}])
        result["rows_after"] = data.num_rows
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # As read_delta.py: skip interpreter teardown, which pyarrow's thread pools can abort.
    os._exit(code)
