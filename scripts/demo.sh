#!/usr/bin/env bash
# Five-minute demo (README): a throwaway local PostgreSQL, two tables, pg2lake streaming
# every change into ./demo-lake as Delta tables, then the lake printed back with the
# `deltalake` Python package (an independent reader).
#
#   scripts/demo.sh
#
# Environment: PG2LAKE_BIN (use this binary instead of `cargo build --release`),
# KEEP_DEMO=1 (keep the temp dir with the PostgreSQL data, logs and config),
# PG2LAKE_VENV, CARGO_TARGET_DIR, PG_BIN as in scripts/test.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

LAKE_DIR="$PG2LAKE_ROOT/demo-lake"
SLOT=pg2lake_demo
WAIT_SECONDS=60

step "prerequisites (PostgreSQL, openssl, python venv with deltalake)"
ensure_system_packages
ensure_venv
PY="$PG2LAKE_VENV/bin/python"
PG_BINDIR="$(pg_bindir)"

step "building pg2lake"
if [ -n "${PG2LAKE_BIN:-}" ]; then
    BIN="$PG2LAKE_BIN"
    echo "using PG2LAKE_BIN=$BIN"
else
    cargo build --release
    BIN="$CARGO_TARGET_DIR/release/pg2lake"
fi

# PostgreSQL refuses to run as root: as root, the server runs as the postgres OS user
# in a temp dir under /tmp, which that user can reach.
WORK="$(mktemp -d /tmp/pg2lake-demo.XXXXXX)"
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$WORK"
    as_pg() { (cd "$WORK" && runuser -u postgres -- "$@"); }
else
    as_pg() { (cd "$WORK" && "$@"); }
fi
PG_DATA="$WORK/data"
PG_LOG="$WORK/postgres.log"
CONFIG="$WORK/pg2lake.yaml"
PG2LAKE_LOG="$WORK/pg2lake.log"
PG2LAKE_PID=""
PG_RUNNING=0

cleanup() {
    local rc=$?
    set +e
    if [ -n "$PG2LAKE_PID" ] && kill -0 "$PG2LAKE_PID" 2>/dev/null; then
        kill -TERM "$PG2LAKE_PID"
        wait "$PG2LAKE_PID" 2>/dev/null
    fi
    if [ "$PG_RUNNING" -eq 1 ]; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
    fi
    if [ "$rc" -ne 0 ] || [ "${KEEP_DEMO:-0}" = 1 ]; then
        echo "demo files kept in $WORK (postgres.log, pg2lake.log, pg2lake.yaml)"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

step "starting a throwaway PostgreSQL in $WORK"
as_pg "$PG_BINDIR/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C --no-instructions >"$WORK/initdb.log"
echo "include 'demo.conf'" >>"$PG_DATA/postgresql.conf"
for attempt in 1 2 3 4 5; do
    PORT="$(free_port)"
    cat >"$PG_DATA/demo.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
CONF
    [ "$(id -u)" -ne 0 ] || chown postgres: "$PG_DATA/demo.conf"
    if as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null; then
        PG_RUNNING=1
        break
    fi
    # Another process may have taken the free port between the probe and the bind.
    if [ "$attempt" -eq 5 ] || ! grep -q 'could not bind' "$PG_LOG"; then
        tail -n 20 "$PG_LOG" >&2
        die "PostgreSQL did not start (log above)"
    fi
done
echo "PostgreSQL $("$PG_BINDIR/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT"

psql_demo() {
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"
}

step "creating database demo with tables customers and orders"
psql_demo -d postgres -c 'CREATE DATABASE demo'
psql_demo -d demo <<'SQL'
CREATE TABLE customers (
    id         integer PRIMARY KEY,
    name       text NOT NULL,
    email      text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    amount      numeric(10, 2) NOT NULL,
    status      text NOT NULL DEFAULT 'new'
);
SQL
psql_demo -d demo -c '\dt'

step "writing the pg2lake config ($CONFIG)"
cat >"$CONFIG" <<YAML
source:
  url: postgres://postgres@127.0.0.1:$PORT/demo
  slot: $SLOT
  publication: $SLOT
tables: [public.*]
lake:
  url: ./demo-lake
flush:
  max_interval: 1s
YAML
cat "$CONFIG"

if [ -e "$LAKE_DIR" ]; then
    echo "removing the previous demo lake $LAKE_DIR (it belongs to a PostgreSQL that is gone)"
    rm -rf "$LAKE_DIR"
fi

step "starting pg2lake run --config $CONFIG (log: $PG2LAKE_LOG)"
"$BIN" run --config "$CONFIG" >"$PG2LAKE_LOG" 2>&1 </dev/null &
PG2LAKE_PID=$!

pg2lake_failed() {
    echo "--- pg2lake log (last 40 lines) ---" >&2
    tail -n 40 "$PG2LAKE_LOG" >&2
    die "$*"
}

# Changes made once the slot exists are streamed (ops c/u/d/t). Rows that existed before
# are copied by the initial load when pg2lake starts; this demo streams everything.
deadline=$((SECONDS + WAIT_SECONDS))
until [ "$(psql_demo -d demo -At -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$SLOT'")" = 1 ]; do
    kill -0 "$PG2LAKE_PID" 2>/dev/null || pg2lake_failed "pg2lake exited before creating its replication slot"
    [ "$SECONDS" -lt "$deadline" ] || pg2lake_failed "pg2lake did not create slot $SLOT within ${WAIT_SECONDS}s"
    sleep 0.5
done
echo "slot $SLOT created"

step "writing changes: inserts, an update, a delete, a multi-statement transaction"
psql_demo -d demo -e <<'SQL'
INSERT INTO customers (id, name, email) VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com');
INSERT INTO orders (customer_id, amount) VALUES (1, 19.99);
INSERT INTO customers (id, name, email) VALUES (3, 'Linus', 'linus@example.com');
INSERT INTO orders (customer_id, amount) VALUES (2, 5.00), (3, 42.00);
UPDATE customers SET email = 'ada@lovelace.dev' WHERE id = 1;
DELETE FROM orders WHERE id = 1;
BEGIN;
INSERT INTO customers (id, name) VALUES (4, 'Barbara');
INSERT INTO orders (customer_id, amount, status) VALUES (4, 7.50, 'paid');
UPDATE orders SET status = 'shipped' WHERE customer_id = 2;
COMMIT;
SQL

# Change-log rows expected per table: one row per change.
#   customers: 2 inserts + insert 3 + update 1 + insert 4                  = 5
#   orders:    insert 1 + 2 inserts + delete 1 + insert + update           = 6
count_rows() {
    # A read that fails (say, mid-write) counts as 0 and is retried; its error is kept.
    "$PY" scripts/show_lake.py --count "$LAKE_DIR" "$1" 2>>"$WORK/show_lake.err" || echo 0
}
step "waiting up to ${WAIT_SECONDS}s for the lake to hold every change"
deadline=$((SECONDS + WAIT_SECONDS))
while :; do
    customers="$(count_rows public.customers)"
    orders="$(count_rows public.orders)"
    if [ "$customers" -ge 5 ] && [ "$orders" -ge 6 ]; then
        break
    fi
    kill -0 "$PG2LAKE_PID" 2>/dev/null || pg2lake_failed "pg2lake exited early (lake has customers=$customers/5, orders=$orders/6 rows)"
    [ "$SECONDS" -lt "$deadline" ] ||
        pg2lake_failed "the lake has customers=$customers/5, orders=$orders/6 rows after ${WAIT_SECONDS}s"
    sleep 1
done
echo "lake has customers=$customers, orders=$orders change rows"

step "stopping pg2lake (SIGTERM)"
kill -TERM "$PG2LAKE_PID"
deadline=$((SECONDS + 30))
while kill -0 "$PG2LAKE_PID" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        kill -KILL "$PG2LAKE_PID"
        pg2lake_failed "pg2lake did not exit within 30s of SIGTERM"
    fi
    sleep 0.2
done
rc=0
wait "$PG2LAKE_PID" || rc=$?
PG2LAKE_PID=""
[ "$rc" -eq 0 ] || pg2lake_failed "pg2lake exited with status $rc after SIGTERM"
echo "pg2lake exited with status 0"

step "what is in the lake ($LAKE_DIR), read back with the deltalake python package"
"$PY" scripts/show_lake.py "$LAKE_DIR"

step "stopping PostgreSQL"
as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
PG_RUNNING=0
echo "done: the lake stays in $LAKE_DIR"
