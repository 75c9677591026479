//! Transactions larger than `logical_decoding_work_mem` reach the lake as one transaction
//! each, without the primary spilling them to its own disk.
//!
//! pg2lake asks the walsender for pgoutput protocol version 2 with `streaming 'on'`, so a
//! transaction that outgrows the server's `logical_decoding_work_mem` is streamed to
//! pg2lake while it is still open instead of being spilled to `pg_replslot` on the
//! primary. pg2lake spools those rows to Parquet files under
//! `<lake>/<schema>/<table>/_pg2lake_spool/` and commits them to the Delta table only at
//! the Stream Commit; a Stream Abort (the whole transaction, or a subtransaction through
//! ROLLBACK TO SAVEPOINT) leaves nothing visible and its spool files are deleted.
//!
//! One real PostgreSQL with `logical_decoding_work_mem = '64kB'` (so a few thousand rows
//! stream), one `pg2lake run` writing a local lake, a loop of one-row transactions on
//! `ticks` running beside it the whole time, and the lake read back with the independent
//! Python `deltalake` reader. Phases, in sequence:
//!
//! 1. A 40,000-row transaction, watched in `pg_stat_replication_slots` until it streams:
//!    while it is open the lake holds none of its rows, yet the small transactions that
//!    commit meanwhile arrive. After COMMIT the lake equals the source, the transaction's
//!    rows carry one `_lsn` (between the ticks committed before and after it), its
//!    `_xid`, and `_seq` 1..40,000 in statement order; the slot streamed and never spilled.
//! 2. A streamed 30,000-row (38 MB) transaction rolled back after pg2lake spooled part of
//!    it to files: nothing of it reaches the lake, a later small commit does, and its
//!    spool files are gone within seconds.
//! 3. Savepoints inside one streamed transaction (each part streamed before the
//!    ROLLBACK TO that discards it): the lake equals the source and `_seq` is exactly 1..N
//!    over the changes that survived, in statement order.
//! 4. `ALTER TABLE … ADD COLUMN` inside a streamed transaction: committed, the lake gains
//!    the column with its values; rolled back, the lake never sees the column or the rows.
//! 5. kill -9 of pg2lake while a streamed transaction is open (restart, then COMMIT), and
//!    right after a large COMMIT: the lake equals the source, no change twice, `_seq`
//!    without holes or repeats, and no spool file left behind.
//!
//! The slot's `spill_bytes` stays 0 through phases 1–4. After a kill -9 PostgreSQL itself
//! may spill: the new walsender re-reads WAL from the slot's `restart_lsn` and may not
//! stream what lies below its `confirmed_flush_lsn` (reorderbuffer.c,
//! `ReorderBufferCanStartStreaming`), so a large transaction partly in that window is
//! spilled once. Before each kill the test moves `restart_lsn` past the earlier phases
//! (CHECKPOINT), so only the transaction open at the kill can be in the window: a spill
//! after a restart is accepted only when pg2lake had confirmed past that transaction's
//! start (it does not hold confirmations back for a transaction still streaming), and
//! the end check demands 0 when it had not.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::lake::{Row, assert_no_duplicates, fold, lsn, op, seq, wait_caught_up};
use support::service::{ConfigFile, Service, config_yaml};
use support::{
    DeltaRead, PgOptions, PgServer, SlotStats, count_delta_rows, read_delta, try_read_delta,
};
use tokio_postgres::Client;

/// Slot and publication name.
const SLOT: &str = "large";
/// How long the walsender may take to stream an open transaction (and report it).
const STREAMED: Duration = Duration::from_secs(60);
/// Catching up with tens of thousands of rows in a debug build on two cores.
const CATCH_UP: Duration = Duration::from_secs(300);
/// A small commit reaching the lake behind whatever pg2lake is still busy with.
const ARRIVE: Duration = Duration::from_secs(120);
/// How long the spool files of an aborted transaction may outlive its abort.
const SPOOL_CLEAN: Duration = Duration::from_secs(15);
const START: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(30);

async fn slot_stats(db: &Client) -> SlotStats {
    support::slot_stats(db, SLOT).await
}

/// Waits until the walsender has streamed more of in-progress transactions than it had
/// at `before` (the statistics are reported with some delay, so this polls).
async fn wait_streamed(db: &Client, before: SlotStats, what: &str) -> SlotStats {
    let started = Instant::now();
    loop {
        let now = slot_stats(db).await;
        if now.stream_bytes > before.stream_bytes {
            eprintln!("{what}: streamed after {:?}: {now}", started.elapsed());
            return now;
        }
        assert!(
            started.elapsed() < STREAMED,
            "{what}: the walsender streamed nothing more within {STREAMED:?} \
             (slot statistics now {now}, before {before}): a transaction larger than \
             logical_decoding_work_mem must be streamed to pg2lake, not spilled to the \
             primary's pg_replslot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Commits one-row transactions on `ticks` (ids 1, 2, …) until `stop`; `last` holds
/// the id of the last one committed.
async fn ticks(client: Client, stop: Arc<AtomicBool>, last: Arc<AtomicI64>) {
    let mut id: i32 = 0;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        client
            .execute("INSERT INTO ticks (id) VALUES ($1)", &[&id])
            .await
            .expect("a tick");
        last.store(i64::from(id), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until tick `id` has committed in the source.
async fn wait_tick_committed(last: &AtomicI64, id: i64) {
    let started = Instant::now();
    while last.load(Ordering::SeqCst) < id {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tick {id} never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn table_path(lake: &Path, table: &str) -> PathBuf {
    lake.join("public").join(table)
}

fn table_uri(lake: &Path, table: &str) -> String {
    table_path(lake, table).display().to_string()
}

/// Rows of a lake table, counted without reading them into this process; 0 while the
/// table has no Delta log yet.
fn lake_count(lake: &Path, table: &str) -> u64 {
    let path = table_path(lake, table);
    if !path.join("_delta_log").is_dir() {
        return 0;
    }
    tokio::task::block_in_place(|| count_delta_rows(&path))
}

fn read_table(lake: &Path, table: &str) -> DeltaRead {
    tokio::task::block_in_place(|| read_delta(&table_uri(lake, table), &[]))
}

/// Waits until the lake table holds more than `before` rows; returns the count.
async fn wait_count_above(lake: &Path, table: &str, before: u64, what: &str) -> u64 {
    let started = Instant::now();
    loop {
        let now = lake_count(lake, table);
        if now > before {
            return now;
        }
        assert!(
            started.elapsed() < ARRIVE,
            "{what}: {table} in the lake still holds {now} rows after {ARRIVE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until tick `id` is in the lake.
async fn wait_tick_in_lake(lake: &Path, id: i64, what: &str) {
    let started = Instant::now();
    loop {
        let read = tokio::task::block_in_place(|| try_read_delta(&table_uri(lake, "ticks"), &[]));
        if read.is_some_and(|r| r.rows.iter().any(|row| row["id"].as_i64() == Some(id))) {
            eprintln!("{what}: tick {id} arrived after {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < ARRIVE,
            "{what}: tick {id}, committed in the source, is not in the lake after {ARRIVE:?}: \
             an open streamed transaction must not hold back transactions that commit meanwhile"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `_lsn` of tick `id` in the lake.
fn tick_lsn(ticks: &DeltaRead, id: i64) -> i64 {
    let found: Vec<i64> = ticks
        .rows
        .iter()
        .filter(|r| r["id"].as_i64() == Some(id))
        .map(lsn)
        .collect();
    assert_eq!(found.len(), 1, "tick {id} in the lake: {found:?}");
    found[0]
}

/// Files under big's spool folder (a missing folder holds none).
fn spool_files(lake: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![table_path(lake, "big").join("_pg2lake_spool")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

async fn wait_spool_empty(lake: &Path, what: &str) {
    let started = Instant::now();
    loop {
        let files = spool_files(lake);
        if files.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < SPOOL_CLEAN,
            "{what}: {} spool files remain {SPOOL_CLEAN:?} later: {files:?}",
            files.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `pg_current_wal_lsn()` as text.
async fn current_lsn(db: &Client) -> String {
    db.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("current lsn")
        .get(0)
}

/// Whether the slot's confirmed_flush_lsn is past `position` (and that lsn, for logs),
/// read once the walsender of a killed pg2lake has exited: until then it may still
/// apply a confirmation that was on the way.
async fn confirmed_past(db: &Client, position: &str) -> (bool, String) {
    let started = Instant::now();
    loop {
        let active: bool = db
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .expect("slot activity")
            .get(0);
        if !active {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the walsender of the killed pg2lake still holds the slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = db
        .query_one(
            "SELECT confirmed_flush_lsn > $1::text::pg_lsn, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $2",
            &[&position, &SLOT],
        )
        .await
        .expect("slot position");
    (row.get(0), row.get(1))
}

/// Moves the slot's restart_lsn past everything written so far: CHECKPOINT logs the
/// running transactions, pg2lake confirms past that record, and the walsender then moves
/// restart_lsn up to it. After a restart the walsender re-reads WAL from restart_lsn and
/// may not stream what lies below confirmed_flush_lsn, so a large transaction of an
/// earlier phase still in that window would be spilled; this keeps it out.
async fn advance_restart_lsn(db: &Client) {
    let target = current_lsn(db).await;
    let started = Instant::now();
    loop {
        db.batch_execute("CHECKPOINT").await.expect("checkpoint");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let row = db
            .query_one(
                "SELECT restart_lsn >= $1::text::pg_lsn, restart_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $2",
                &[&target, &SLOT],
            )
            .await
            .expect("slot restart_lsn");
        if row.get::<_, bool>(0) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slot's restart_lsn stays at {} below {target}",
            row.get::<_, String>(1)
        );
    }
}

/// `INSERT` of big's rows `ids`: payload and amount derived from the id, every 7th
/// amount NULL; `extra` and `ghost` are set when given (an SQL expression over `g`).
fn insert_sql(ids: RangeInclusive<i64>, extra: Option<&str>, ghost: Option<&str>) -> String {
    let (mut columns, mut values) = (
        String::from("id, payload, amount"),
        String::from(
            "g, 'p' || g || '-' || repeat('x', 24), \
             CASE WHEN g % 7 = 0 THEN NULL ELSE round((g * 37 % 1000000) / 100.0, 2) END",
        ),
    );
    for (column, expr) in [("extra", extra), ("ghost", ghost)] {
        if let Some(expr) = expr {
            columns.push_str(", ");
            columns.push_str(column);
            values.push_str(", ");
            values.push_str(expr);
        }
    }
    format!(
        "INSERT INTO big ({columns}) SELECT {values} FROM generate_series({}, {}) g",
        ids.start(),
        ids.end()
    )
}

/// Runs `sql` on `tx` and checks how many rows it touched.
async fn exec(tx: &Client, sql: &str, rows: u64) {
    let touched = tx
        .execute(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(touched, rows, "{sql}");
}

/// The id of the current transaction (assigning one if it has none yet).
async fn xid(tx: &Client) -> i64 {
    tx.query_one("SELECT txid_current()", &[])
        .await
        .expect("txid_current")
        .get(0)
}

/// Panics unless big's folded change log equals the source table (payload, amount to
/// the cent, and `extra` once the source has it) and no change is in it twice. Returns
/// what was read.
async fn assert_big_equals_source(db: &Client, lake: &Path, what: &str) -> DeltaRead {
    let has_extra: bool = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'big'::regclass \
             AND attname = 'extra' AND NOT attisdropped)",
            &[],
        )
        .await
        .expect("columns of big")
        .get(0);
    let extra = if has_extra { "extra" } else { "NULL::int" };
    let source: BTreeMap<String, Value> = db
        .query(
            &format!("SELECT id::bigint, payload, amount::text, {extra} FROM big"),
            &[],
        )
        .await
        .expect("read big")
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let (payload, amount, extra): (String, Option<String>, Option<i32>) =
                (r.get(1), r.get(2), r.get(3));
            (
                id.to_string(),
                json!({"payload": payload, "amount": amount, "extra": extra}),
            )
        })
        .collect();
    let read = read_table(lake, "big");
    assert_no_duplicates(&read.rows);
    let state = fold(read.rows.clone(), "id");
    let lake_ids: BTreeSet<&String> = state.keys().collect();
    let source_ids: BTreeSet<&String> = source.keys().collect();
    if lake_ids != source_ids {
        let missing: Vec<_> = source_ids.difference(&lake_ids).take(10).collect();
        let extra_ids: Vec<_> = lake_ids.difference(&source_ids).take(10).collect();
        panic!(
            "{what}: big has {} keys in the source and {} in the folded lake; \
             missing in the lake (first 10): {missing:?}; only in the lake (first 10): {extra_ids:?}",
            source_ids.len(),
            lake_ids.len()
        );
    }
    let field = |row: &Row, name: &str| row.get(name).cloned().unwrap_or(Value::Null);
    let differ: Vec<String> = source
        .iter()
        .filter_map(|(id, want)| {
            let row = &state[id];
            let got = json!({
                "payload": field(row, "payload"),
                "amount": field(row, "amount"),
                "extra": field(row, "extra"),
            });
            (&got != want).then(|| format!("id {id}: source {want}, lake {got}"))
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: {} rows of big differ, first: {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
    eprintln!(
        "{what}: lake equals source ({} rows, {} changes in the log)",
        source.len(),
        read.rows.len()
    );
    read
}

/// The changes one statement made, as the lake must hold them.
struct Changes {
    op: &'static str,
    ids: Vec<i64>,
    /// Whether they must appear in `ids` order (an INSERT … SELECT FROM generate_series
    /// inserts in series order; an UPDATE or DELETE visits rows in no promised order).
    ordered: bool,
}

fn inserts(ids: RangeInclusive<i64>) -> Changes {
    Changes {
        op: "c",
        ids: ids.collect(),
        ordered: true,
    }
}

fn updates(ids: impl IntoIterator<Item = i64>) -> Changes {
    Changes {
        op: "u",
        ids: ids.into_iter().collect(),
        ordered: false,
    }
}

fn deletes(ids: impl IntoIterator<Item = i64>) -> Changes {
    Changes {
        op: "d",
        ids: ids.into_iter().collect(),
        ordered: false,
    }
}

/// Panics unless the rows of transaction `xid` in `rows` share one `_lsn`, carry `_xid`
/// `xid`, have `_seq` exactly 1..N (N the number of `expected` changes) and, in `_seq`
/// order, are the `expected` changes. Returns the transaction's `_lsn`.
fn assert_transaction(rows: &[Row], xid: i64, expected: &[Changes], what: &str) -> i64 {
    let lsns: BTreeSet<i64> = rows
        .iter()
        .filter(|r| r["_xid"].as_i64() == Some(xid))
        .map(lsn)
        .collect();
    assert_eq!(
        lsns.len(),
        1,
        "{what}: the rows of transaction {xid} carry _lsn {lsns:?}: want one commit LSN"
    );
    let commit = *lsns.first().expect("one lsn");
    let mut mine: Vec<&Row> = rows.iter().filter(|r| lsn(r) == commit).collect();
    mine.sort_by_key(|r| seq(r));
    let foreign: Vec<(i64, Value)> = mine
        .iter()
        .filter(|r| r["_xid"].as_i64() != Some(xid))
        .take(5)
        .map(|r| (seq(r), r["_xid"].clone()))
        .collect();
    assert!(
        foreign.is_empty(),
        "{what}: rows at _lsn {commit} with another _xid than the transaction's {xid} \
         ((_seq, _xid), first 5): {foreign:?}"
    );
    let n: usize = expected.iter().map(|c| c.ids.len()).sum();
    let seqs: Vec<i64> = mine.iter().map(|r| seq(r)).collect();
    if let Some(at) =
        (0..n.max(seqs.len())).find(|&i| i >= n || seqs.get(i) != Some(&(i as i64 + 1)))
    {
        panic!(
            "{what}: transaction {xid} must have _seq 1..={n} (one per surviving change); \
             the lake holds {} rows at its _lsn, the {at}th _seq is {:?}",
            seqs.len(),
            seqs.get(at)
        );
    }
    let mut at = 0;
    for (part, changes) in expected.iter().enumerate() {
        let mut got: Vec<(String, i64)> = mine[at..at + changes.ids.len()]
            .iter()
            .map(|r| (op(r).to_owned(), r["id"].as_i64().expect("id")))
            .collect();
        let mut want: Vec<(String, i64)> = changes
            .ids
            .iter()
            .map(|&id| (changes.op.to_owned(), id))
            .collect();
        if !changes.ordered {
            got.sort();
            want.sort();
        }
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{what}: part {part} of transaction {xid} (_seq {}..={}): at _seq {} the lake \
                 holds {:?}, want {:?}",
                at + 1,
                at + changes.ids.len(),
                at + i + 1,
                got[i],
                want[i]
            );
        }
        at += changes.ids.len();
    }
    commit
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transactions_stream_and_land_whole_or_not_at_all() {
    let whole = Instant::now();
    let pg = PgServer::start_with(PgOptions {
        conf: vec!["logical_decoding_work_mem = '64kB'".into()],
        ..Default::default()
    });
    let url = pg.create_database("large").await;
    let db = pg.connect("large").await;
    db.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL, amount numeric(12,2));
         CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());",
    )
    .await
    .expect("schema");
    let lake_dir = tempfile::tempdir().expect("lake dir");
    let lake = lake_dir.path();
    let config = ConfigFile::new(&config_yaml(
        &url,
        SLOT,
        &["public.big", "public.ticks"],
        &lake.display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(START);

    let stop_ticks = Arc::new(AtomicBool::new(false));
    let last_tick = Arc::new(AtomicI64::new(0));
    let ticker = tokio::spawn(ticks(
        pg.connect("large").await,
        stop_ticks.clone(),
        last_tick.clone(),
    ));
    wait_tick_committed(&last_tick, 1).await;
    let tx = pg.connect("large").await;

    // Phase 1: 40,000 rows in one transaction, streamed while open.
    let phase = Instant::now();
    let what = "phase 1 (40,000-row commit)";
    let before = slot_stats(&db).await;
    let count_before = lake_count(lake, "big");
    tx.batch_execute("BEGIN").await.expect("begin");
    let xid1 = xid(&tx).await;
    for part in 0..4 {
        exec(
            &tx,
            &insert_sql(part * 10_000 + 1..=(part + 1) * 10_000, None, None),
            10_000,
        )
        .await;
    }
    wait_streamed(&db, before, what).await;
    // A tick that commits after the stream was seen must arrive while the big one is open.
    let later_tick = last_tick.load(Ordering::SeqCst) + 2;
    wait_tick_committed(&last_tick, later_tick).await;
    wait_tick_in_lake(lake, later_tick, what).await;
    assert_eq!(
        lake_count(lake, "big"),
        count_before,
        "{what}: rows of a transaction still open are in the lake"
    );
    let tick_before_commit = last_tick.load(Ordering::SeqCst);
    tx.batch_execute("COMMIT").await.expect("commit");
    let tick_after_commit = last_tick.load(Ordering::SeqCst) + 2;
    wait_tick_committed(&last_tick, tick_after_commit).await;
    wait_caught_up(&db, SLOT, CATCH_UP).await;
    let read = assert_big_equals_source(&db, lake, what).await;
    let commit1 = assert_transaction(&read.rows, xid1, &[inserts(1..=40_000)], what);
    let tick_read = read_table(lake, "ticks");
    let (lsn_before, lsn_after) = (
        tick_lsn(&tick_read, tick_before_commit),
        tick_lsn(&tick_read, tick_after_commit),
    );
    assert!(
        lsn_before < commit1 && commit1 < lsn_after,
        "{what}: the transaction's _lsn {commit1} must be its commit LSN, between the ticks \
         committed before ({lsn_before}) and after ({lsn_after}) it"
    );
    let stats = slot_stats(&db).await;
    assert!(
        stats.spill_bytes == 0 && stats.stream_bytes > 0,
        "{what}: the slot must have streamed and never spilled: {stats}"
    );
    eprintln!("{what}: {:?}, {stats}", phase.elapsed());

    // Phase 2: a streamed transaction rolled back.
    let phase = Instant::now();
    let what = "phase 2 (30,000-row, 38 MB rollback)";
    let before = slot_stats(&db).await;
    let count_before = lake_count(lake, "big");
    tx.batch_execute("BEGIN").await.expect("begin");
    // Rows of 1,280 hex digits that compress poorly: enough that pg2lake's spool has to
    // put files on disk before the transaction ends, so their removal is tested.
    let heavy = |ids: RangeInclusive<i64>| {
        format!(
            "INSERT INTO big (id, payload, amount) SELECT g, \
             (SELECT string_agg(md5(g::text || '-' || k), '') FROM generate_series(1, 40) k), \
             1.00 FROM generate_series({}, {}) g",
            ids.start(),
            ids.end()
        )
    };
    exec(&tx, &heavy(100_001..=115_000), 15_000).await;
    exec(&tx, &heavy(115_001..=130_000), 15_000).await;
    wait_streamed(&db, before, what).await;
    let started = Instant::now();
    while spool_files(lake).is_empty() {
        assert!(
            started.elapsed() < STREAMED,
            "{what}: no spool file on disk {STREAMED:?} after the walsender streamed 38 MB \
             of an open transaction ({}): pg2lake must spool it, not hold it in memory",
            slot_stats(&db).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{what}: spool files while the transaction is open: {:?}",
        spool_files(lake)
    );
    tx.batch_execute("ROLLBACK").await.expect("rollback");
    db.batch_execute("INSERT INTO big VALUES (150001, 'after the rollback', 2.50)")
        .await
        .expect("a small commit");
    let count = wait_count_above(lake, "big", count_before, what).await;
    assert_eq!(
        count,
        count_before + 1,
        "{what}: only the small commit may follow the rolled-back transaction into the lake"
    );
    let read = assert_big_equals_source(&db, lake, what).await;
    let aborted: Vec<&Value> = read
        .rows
        .iter()
        .map(|r| &r["id"])
        .filter(|id| {
            id.as_i64()
                .is_some_and(|id| (100_001..=130_000).contains(&id))
        })
        .take(5)
        .collect();
    assert!(
        aborted.is_empty(),
        "{what}: rows of the aborted transaction in the change log: {aborted:?}"
    );
    wait_spool_empty(lake, what).await;
    eprintln!("{what}: {:?}, {}", phase.elapsed(), slot_stats(&db).await);

    // Phase 3: savepoints, each part streamed before the rollback that discards it.
    let phase = Instant::now();
    let what = "phase 3 (savepoints)";
    let mut stats = slot_stats(&db).await;
    tx.batch_execute("BEGIN").await.expect("begin");
    let xid3 = xid(&tx).await;
    exec(&tx, &insert_sql(300_001..=303_000, None, None), 3_000).await;
    stats = wait_streamed(&db, stats, "phase 3, top-level inserts").await;
    tx.batch_execute("SAVEPOINT a").await.expect("savepoint a");
    exec(&tx, &insert_sql(303_001..=306_000, None, None), 3_000).await;
    stats = wait_streamed(&db, stats, "phase 3, inserts in a").await;
    tx.batch_execute("SAVEPOINT b").await.expect("savepoint b");
    exec(
        &tx,
        "UPDATE big SET payload = 'in b', amount = -1 \
         WHERE id BETWEEN 300001 AND 303000 OR id BETWEEN 2001 AND 3000",
        4_000,
    )
    .await;
    stats = wait_streamed(&db, stats, "phase 3, updates in b").await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT b")
        .await
        .expect("rollback to b");
    exec(&tx, &insert_sql(306_001..=308_000, None, None), 2_000).await;
    stats = wait_streamed(&db, stats, "phase 3, inserts after rollback to b").await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT a")
        .await
        .expect("rollback to a");
    exec(&tx, &insert_sql(308_001..=311_000, None, None), 3_000).await;
    tx.batch_execute("SAVEPOINT c").await.expect("savepoint c");
    exec(
        &tx,
        "DELETE FROM big WHERE id BETWEEN 300001 AND 301000 OR id BETWEEN 1 AND 500",
        1_500,
    )
    .await;
    exec(
        &tx,
        "UPDATE big SET payload = payload || '-c', amount = amount + 1 \
         WHERE id BETWEEN 1001 AND 2000 OR id BETWEEN 302001 AND 303000",
        2_000,
    )
    .await;
    stats = wait_streamed(&db, stats, "phase 3, changes in c").await;
    tx.batch_execute("RELEASE SAVEPOINT c")
        .await
        .expect("release c");
    exec(
        &tx,
        "UPDATE big SET amount = NULL WHERE id BETWEEN 309001 AND 309500",
        500,
    )
    .await;
    tx.batch_execute("COMMIT").await.expect("commit");
    wait_caught_up(&db, SLOT, CATCH_UP).await;
    let read = assert_big_equals_source(&db, lake, what).await;
    assert_transaction(
        &read.rows,
        xid3,
        &[
            inserts(300_001..=303_000),
            inserts(308_001..=311_000),
            deletes((300_001..=301_000).chain(1..=500)),
            updates((1_001..=2_000).chain(302_001..=303_000)),
            updates(309_001..=309_500),
        ],
        what,
    );
    let rolled_back: Vec<&Value> = read
        .rows
        .iter()
        .filter(|r| {
            r["id"]
                .as_i64()
                .is_some_and(|id| (303_001..=308_000).contains(&id))
                || r.get("payload") == Some(&json!("in b"))
        })
        .map(|r| &r["id"])
        .take(5)
        .collect();
    assert!(
        rolled_back.is_empty(),
        "{what}: changes of rolled-back subtransactions in the change log: {rolled_back:?}"
    );
    wait_spool_empty(lake, what).await;
    eprintln!("{what}: {:?}, {stats}", phase.elapsed());

    // Phase 4: a column added inside a streamed transaction, committed, then rolled back.
    let phase = Instant::now();
    let what = "phase 4 (ADD COLUMN committed)";
    let before = slot_stats(&db).await;
    tx.batch_execute("BEGIN; ALTER TABLE big ADD COLUMN extra int")
        .await
        .expect("add column extra");
    let xid4 = xid(&tx).await;
    let extra = Some("CASE WHEN g % 11 = 0 THEN NULL ELSE (g % 1000)::int END");
    exec(&tx, &insert_sql(400_001..=410_000, extra, None), 10_000).await;
    exec(&tx, &insert_sql(410_001..=420_000, extra, None), 10_000).await;
    wait_streamed(&db, before, what).await;
    tx.batch_execute("COMMIT").await.expect("commit");
    wait_caught_up(&db, SLOT, CATCH_UP).await;
    let read = assert_big_equals_source(&db, lake, what).await;
    assert_eq!(read.column_type("extra"), Some("int32"), "{what}");
    assert_transaction(&read.rows, xid4, &[inserts(400_001..=420_000)], what);
    eprintln!("{what}: {:?}", phase.elapsed());

    let phase = Instant::now();
    let what = "phase 4 (ADD COLUMN rolled back)";
    let before = slot_stats(&db).await;
    let count_before = lake_count(lake, "big");
    tx.batch_execute("BEGIN; ALTER TABLE big ADD COLUMN ghost text")
        .await
        .expect("add column ghost");
    exec(
        &tx,
        &insert_sql(500_001..=510_000, extra, Some("'boo' || g")),
        10_000,
    )
    .await;
    exec(
        &tx,
        &insert_sql(510_001..=520_000, extra, Some("'boo' || g")),
        10_000,
    )
    .await;
    wait_streamed(&db, before, what).await;
    tx.batch_execute("ROLLBACK").await.expect("rollback");
    db.batch_execute("INSERT INTO big VALUES (600001, 'after the ghost', 3.25, 7)")
        .await
        .expect("a small commit");
    let count = wait_count_above(lake, "big", count_before, what).await;
    assert_eq!(
        count,
        count_before + 1,
        "{what}: only the small commit may follow the rolled-back transaction into the lake"
    );
    let read = assert_big_equals_source(&db, lake, what).await;
    assert!(
        !read.columns().contains(&"ghost"),
        "{what}: a column added by a rolled-back transaction reached the lake: {:?}",
        read.schema
    );
    assert!(
        !read.rows.iter().any(|r| r["id"]
            .as_i64()
            .is_some_and(|id| (500_001..=520_000).contains(&id))),
        "{what}: rows of the rolled-back transaction in the change log"
    );
    wait_spool_empty(lake, what).await;
    let stats = slot_stats(&db).await;
    assert_eq!(
        stats.spill_bytes, 0,
        "phases 1-4 must not make the primary spill: {stats}"
    );
    eprintln!("{what}: {:?}, {stats}", phase.elapsed());

    // Phase 5: kill -9 while a streamed transaction is open, and right after a large
    // COMMIT. A spill after a restart is PostgreSQL's rule when the slot was confirmed
    // past the start of the transaction (see the module doc); otherwise none is allowed.
    let mut spill_excuses = Vec::new();
    let phase = Instant::now();
    let what = "phase 5 (kill -9 with a streamed transaction open)";
    advance_restart_lsn(&db).await;
    let before = slot_stats(&db).await;
    let start = current_lsn(&db).await;
    tx.batch_execute("BEGIN").await.expect("begin");
    let xid5 = xid(&tx).await;
    exec(&tx, &insert_sql(700_001..=720_000, None, None), 20_000).await;
    wait_streamed(&db, before, what).await;
    service.kill9();
    let (past, confirmed) = confirmed_past(&db, &start).await;
    eprintln!("{what}: killed; slot confirmed {confirmed}, the transaction started after {start}");
    if past {
        spill_excuses.push(format!(
            "{what}: confirmed {confirmed} past the transaction's start {start}"
        ));
    }
    let spilled_before = slot_stats(&db).await.spill_bytes;
    service = Service::start(&config, &[]);
    service.wait_streaming(START);
    eprintln!("{what}: restarted, {}", slot_stats(&db).await);
    exec(&tx, &insert_sql(720_001..=730_000, None, None), 10_000).await;
    exec(
        &tx,
        "UPDATE big SET payload = payload || '-k' WHERE id BETWEEN 700001 AND 701000",
        1_000,
    )
    .await;
    tx.batch_execute("COMMIT").await.expect("commit");
    wait_caught_up(&db, SLOT, CATCH_UP).await;
    let read = assert_big_equals_source(&db, lake, what).await;
    assert_transaction(
        &read.rows,
        xid5,
        &[
            inserts(700_001..=720_000),
            inserts(720_001..=730_000),
            updates(700_001..=701_000),
        ],
        what,
    );
    wait_spool_empty(lake, what).await;
    let stats = slot_stats(&db).await;
    assert!(
        past || stats.spill_bytes == spilled_before,
        "{what}: the primary spilled after the restart although the slot was confirmed \
         only up to {confirmed}, before the transaction began (after {start}): {stats}"
    );
    eprintln!("{what}: {:?}, {stats}", phase.elapsed());

    let phase = Instant::now();
    let what = "phase 5 (kill -9 right after a large COMMIT)";
    advance_restart_lsn(&db).await;
    let before = slot_stats(&db).await;
    let start = current_lsn(&db).await;
    tx.batch_execute("BEGIN").await.expect("begin");
    let xid6 = xid(&tx).await;
    exec(&tx, &insert_sql(800_001..=820_000, None, None), 20_000).await;
    wait_streamed(&db, before, what).await;
    tx.batch_execute("COMMIT").await.expect("commit");
    service.kill9();
    let (past, confirmed) = confirmed_past(&db, &start).await;
    eprintln!("{what}: killed; slot confirmed {confirmed}, the transaction started after {start}");
    if past {
        spill_excuses.push(format!(
            "{what}: confirmed {confirmed} past the transaction's start {start}"
        ));
    }
    let spilled_before = slot_stats(&db).await.spill_bytes;
    service = Service::start(&config, &[]);
    service.wait_streaming(START);
    wait_caught_up(&db, SLOT, CATCH_UP).await;
    let read = assert_big_equals_source(&db, lake, what).await;
    assert_transaction(&read.rows, xid6, &[inserts(800_001..=820_000)], what);
    wait_spool_empty(lake, what).await;
    let stats = slot_stats(&db).await;
    assert!(
        past || stats.spill_bytes == spilled_before,
        "{what}: the primary spilled after the restart although the slot was confirmed \
         only up to {confirmed}, before the transaction began (after {start}): {stats}"
    );
    eprintln!("{what}: {:?}, {stats}", phase.elapsed());

    // The end: the ticks all landed exactly once, and the primary spilled only where
    // PostgreSQL had to.
    stop_ticks.store(true, Ordering::Relaxed);
    ticker.await.expect("ticks");
    let last = last_tick.load(Ordering::SeqCst);
    wait_caught_up(&db, SLOT, CATCH_UP).await;
    let tick_rows = read_table(lake, "ticks").rows;
    assert_no_duplicates(&tick_rows);
    let lake_ticks: Vec<i64> = fold(tick_rows, "id")
        .values()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect::<BTreeSet<i64>>()
        .into_iter()
        .collect();
    assert_eq!(
        lake_ticks,
        (1..=last).collect::<Vec<i64>>(),
        "every tick exactly once in the lake"
    );
    let stats = slot_stats(&db).await;
    if spill_excuses.is_empty() {
        assert_eq!(stats.spill_bytes, 0, "the primary spilled: {stats}");
    } else {
        eprintln!("end: {stats}; a spill after kill -9 is PostgreSQL's own: {spill_excuses:?}");
    }
    assert!(
        service.stop(STOP).success(),
        "pg2lake stops cleanly:\n{}",
        service.log()
    );
    eprintln!(
        "large transactions: {:?} in all ({last} ticks)",
        whole.elapsed()
    );
}
