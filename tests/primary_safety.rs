//! pg2lake never breaks what the application may do on its database: a table without a
//! replica identity is never put into a publication that publishes updates or deletes
//! (Postgres would then refuse every UPDATE and DELETE on it). Real PostgreSQL, the real
//! binary, the lake read back with the `deltalake` Python reader.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use serde_json::{Value, json};
use support::lake::{
    assert_no_duplicates, fold, in_change_order, lsn, op, readme_current_state_query, seq,
    wait_caught_up,
};
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgServer, duckdb_query, read_delta};
use tokio_postgres::Client;

const CATCH_UP: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(30);
/// How long the application's UPDATE may keep failing after a key is dropped: the
/// identity check runs every 5 s.
const REPAIR: Duration = Duration::from_secs(15);

fn table_uri(lake: &Path, table: &str) -> String {
    lake.join("public").join(table).display().to_string()
}

/// The rows of a lake table in change order, with no (`_lsn`, `_seq`) twice.
fn lake_rows(lake: &Path, table: &str) -> Vec<serde_json::Map<String, Value>> {
    let rows = in_change_order(read_delta(&table_uri(lake, table), &[]).rows);
    assert_no_duplicates(&rows);
    rows
}

/// `(op, a, b)` of each row of the keyless `logs` table, in change order.
fn log_changes(lake: &Path) -> Vec<(String, Option<i64>, Option<String>)> {
    lake_rows(lake, "logs")
        .iter()
        .map(|r| {
            (
                op(r).to_owned(),
                r["a"].as_i64(),
                r["b"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The value of a table property in the latest `metaData` action of the Delta log.
fn table_property(lake: &Path, table: &str, key: &str) -> Option<String> {
    let log = lake.join("public").join(table).join("_delta_log");
    let mut entries: Vec<_> = std::fs::read_dir(&log)
        .expect("delta log")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    let mut value = None;
    for entry in entries {
        for line in std::fs::read_to_string(entry).expect("log entry").lines() {
            let action: Value = serde_json::from_str(line).expect("json action");
            if let Some(config) = action.get("metaData").map(|m| &m["configuration"]) {
                value = config[key].as_str().map(str::to_owned);
            }
        }
    }
    value
}

/// The tables a publication holds, as `schema.table`, sorted.
async fn published(db: &Client, publication: &str) -> Vec<String> {
    db.query(
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
         WHERE pubname = $1 ORDER BY 1",
        &[&publication],
    )
    .await
    .expect("publication tables")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Runs `sql` until Postgres accepts it, and returns how long that took; panics after
/// `within`, with Postgres's last error.
async fn accepted_within(db: &Client, sql: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match db.batch_execute(sql).await {
            Ok(()) => return started.elapsed(),
            Err(err) => assert!(
                started.elapsed() < within,
                "{sql} still fails after {within:?}: {:?}",
                err.as_db_error().map(|e| e.message().to_owned())
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `public.*`, a table without a primary key is replicated append-only and the
/// application keeps updating and deleting its rows; a key dropped while pg2lake runs
/// is noticed within seconds, and one added back makes updates flow again.
#[tokio::test(flavor = "multi_thread")]
async fn the_applications_updates_and_deletes_keep_working_on_keyless_tables() {
    let pg = PgServer::start();
    let url = pg.create_database("app").await;
    let db = pg.connect("app").await;
    db.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, v text);
         CREATE TABLE logs (a int, b text);
         CREATE TABLE parted (id int, v text) PARTITION BY RANGE (id);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
         INSERT INTO logs VALUES (0, 'before');",
    )
    .await
    .expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "safe",
        &["public.*"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    assert_eq!(published(&db, "safe").await, ["public.orders"]);
    assert_eq!(
        published(&db, "safe_inserts").await,
        ["public.logs", "public.parted"]
    );

    // What failed before: every UPDATE and DELETE of the application on `logs`.
    db.batch_execute(
        "INSERT INTO logs VALUES (1, 'x'), (2, 'y');
         UPDATE logs SET b = 'z' WHERE a = 1;
         DELETE FROM logs WHERE a = 2;
         INSERT INTO parted VALUES (1, 'p');
         UPDATE parted SET v = 'q';
         DELETE FROM parted;
         INSERT INTO orders VALUES (1, 'o');
         UPDATE orders SET v = 'p' WHERE id = 1;
         TRUNCATE logs;
         INSERT INTO logs VALUES (3, 'w');",
    )
    .await
    .expect("the application's writes all succeed");
    wait_caught_up(&db, "safe", CATCH_UP).await;
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        log_changes(lake.path()),
        [
            ("r".to_owned(), Some(0), s("before")),
            ("c".to_owned(), Some(1), s("x")),
            ("c".to_owned(), Some(2), s("y")),
            ("t".to_owned(), None, None),
            ("c".to_owned(), Some(3), s("w")),
        ],
        "inserts and truncates of the keyless table"
    );
    let parted: Vec<String> = lake_rows(lake.path(), "parted")
        .iter()
        .map(|r| op(r).to_owned())
        .collect();
    assert_eq!(parted, ["c"], "a keyless partitioned table: its insert");
    let orders: Vec<String> = lake_rows(lake.path(), "orders")
        .iter()
        .map(|r| op(r).to_owned())
        .collect();
    assert_eq!(orders, ["c", "u"]);
    let changes = |table: &str| table_property(lake.path(), table, "pg2lake.source.changes");
    assert_eq!(changes("logs").as_deref(), Some("insert,truncate"));
    assert_eq!(
        changes("orders").as_deref(),
        Some("insert,update,delete,truncate")
    );
    let log = service.log();
    assert!(
        log.lines().any(
            |l| l.contains("updates and deletes of this table cannot be captured")
                && l.contains("public.logs")
        ),
        "{log}"
    );

    // The key goes while pg2lake streams: the application's UPDATE fails at most until
    // the next identity check moves the table out of the main publication.
    db.batch_execute("ALTER TABLE orders DROP CONSTRAINT orders_pkey")
        .await
        .expect("drop the key");
    let failing = accepted_within(&db, "UPDATE orders SET v = 'no key'", REPAIR).await;
    assert_eq!(published(&db, "safe").await, Vec::<String>::new());
    assert_eq!(
        published(&db, "safe_inserts").await,
        ["public.logs", "public.orders", "public.parted"]
    );
    db.batch_execute("INSERT INTO orders VALUES (2, 'keyless insert')")
        .await
        .expect("insert");
    // And comes back: updates are captured again.
    db.batch_execute("ALTER TABLE orders ADD PRIMARY KEY (id)")
        .await
        .expect("add the key back");
    let start = Instant::now();
    while published(&db, "safe").await != ["public.orders"] {
        assert!(start.elapsed() < REPAIR, "orders is not published again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The session that follows the move must be streaming before the update is made, or
    // the update would be decoded under the old publication set.
    wait_caught_up(&db, "safe", CATCH_UP).await;
    db.batch_execute("UPDATE orders SET v = 'keyed again' WHERE id = 2")
        .await
        .expect("update");
    wait_caught_up(&db, "safe", CATCH_UP).await;
    let orders: Vec<(String, Option<String>)> = lake_rows(lake.path(), "orders")
        .iter()
        .map(|r| (op(r).to_owned(), r["v"].as_str().map(str::to_owned)))
        .collect();
    assert_eq!(
        orders,
        [
            ("c".to_owned(), s("o")),
            ("u".to_owned(), s("p")),
            ("c".to_owned(), s("keyless insert")),
            ("u".to_owned(), s("keyed again")),
        ],
        "the update without a key is not captured; the insert and the later update are"
    );
    assert_eq!(
        changes("orders").as_deref(),
        Some("insert,update,delete,truncate")
    );
    assert_eq!(service.stop(STOP).code(), Some(0));

    let path = config.path().display().to_string();
    let out = run_command(&["check", "--config", &path], &[], CATCH_UP);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("! table public.logs: no replica identity")
            && text.contains("fix: ALTER TABLE \"public\".\"logs\" REPLICA IDENTITY FULL;"),
        "{text}"
    );
    eprintln!("the application's UPDATE failed for {failing:?} after its key was dropped");
}

/// The state an earlier pg2lake left behind: a keyless table in the main publication
/// (the application's UPDATE on it fails) and a slot older than any insert-only
/// publication. pg2lake creates that publication, waits until the slot has passed its
/// creation, then moves the table in one transaction: the application's UPDATE works
/// again, and the table's inserts, made all along, are in the lake exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyless_table_left_in_the_main_publication_is_moved_without_losing_inserts() {
    let pg = PgServer::start();
    let url = pg.create_database("old").await;
    let db = pg.connect("old").await;
    db.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, v text);
         CREATE TABLE logs (a int, b text);
         INSERT INTO logs SELECT g, 'copied' FROM generate_series(1, 100) g;
         CREATE PUBLICATION old FOR TABLE orders, logs WITH (publish_via_partition_root = true);",
    )
    .await
    .expect("an earlier setup");
    db.batch_execute("SELECT pg_create_logical_replication_slot('old', 'pgoutput')")
        .await
        .expect("its slot");
    let broken = db.batch_execute("UPDATE logs SET b = 'u'").await;
    assert!(broken.is_err(), "the defect this repairs: UPDATE fails");

    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "old",
        &["public.orders", "public.logs"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    // Inserts keep coming through the switch.
    let writer = {
        let writes = pg.connect("old").await;
        tokio::spawn(async move {
            let mut next = 101;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(120) {
                writes
                    .batch_execute(&format!("INSERT INTO logs VALUES ({next}, 'streamed')"))
                    .await
                    .expect("insert");
                next += 1;
                if writes
                    .batch_execute("UPDATE logs SET b = 'u' WHERE a = 1")
                    .await
                    .is_ok()
                {
                    return next;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("UPDATE on logs still fails after 120 s");
        })
    };
    let next = writer.await.expect("writer");
    db.batch_execute(&format!("INSERT INTO logs VALUES ({next}, 'after')"))
        .await
        .expect("insert after");
    assert_eq!(published(&db, "old").await, ["public.orders"]);
    assert_eq!(published(&db, "old_inserts").await, ["public.logs"]);
    wait_caught_up(&db, "old", CATCH_UP).await;

    let mut keys: Vec<i64> = log_changes(lake.path())
        .iter()
        .filter(|(op, _, _)| op != "u")
        .map(|(_, a, _)| a.expect("a"))
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        (1..=next).collect::<Vec<_>>(),
        "every insert exactly once"
    );
    assert_eq!(
        table_property(lake.path(), "logs", "pg2lake.source.changes").as_deref(),
        Some("insert,truncate")
    );
    assert!(
        service
            .log()
            .contains("moved table without a replica identity"),
        "{}",
        service.log()
    );
    assert_eq!(service.stop(STOP).code(), Some(0));
}

/// `id → (status, note)` of the source's `orders`.
async fn source_orders(db: &Client) -> BTreeMap<i64, (Value, Value)> {
    db.query("SELECT id::int8, status, note FROM orders", &[])
        .await
        .expect("read orders")
        .iter()
        .map(|r| {
            let status: Option<String> = r.get(1);
            let note: Option<String> = r.get(2);
            (r.get(0), (json!(status), json!(note)))
        })
        .collect()
}

/// The lake's `orders` folded to its current state twice, by the harness and by the
/// README's DuckDB query, each equal to the source.
async fn assert_orders_equal(db: &Client, lake: &Path) {
    let source = source_orders(db).await;
    let folded: BTreeMap<i64, (Value, Value)> = fold(lake_rows(lake, "orders"), "id")
        .into_values()
        .map(|r| {
            let id = r["id"].as_i64().expect("id");
            (id, (r["status"].clone(), r["note"].clone()))
        })
        .collect();
    assert_eq!(folded, source, "the folded change log");
    let result = duckdb_query(
        &table_uri(lake, "orders"),
        "orders",
        &readme_current_state_query(),
    );
    let queried: BTreeMap<i64, (Value, Value)> = result
        .rows
        .iter()
        .map(|r| {
            let id = r["id"].as_i64().expect("id");
            (id, (r["status"].clone(), r["note"].clone()))
        })
        .collect();
    assert_eq!(queried, source, "the README's DuckDB query");
}

/// Delta versions of a lake table.
fn versions(lake: &Path, table: &str) -> usize {
    std::fs::read_dir(lake.join("public").join(table).join("_delta_log"))
        .expect("delta log")
        .filter(|e| {
            e.as_ref()
                .expect("entry")
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count()
}

/// Changes made while the slot is gone are gone from the WAL pg2lake could read: a
/// dropped slot, and one invalidated by `max_slot_wal_keep_size`, each stop pg2lake with
/// the fix and touch nothing; one start with `on_slot_loss: resnapshot` reloads the table
/// (a truncate marker and the copy in one version), after which the folded lake, and the
/// README's query, equal the source again and streaming goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_or_lost_slot_stops_with_the_fix_and_a_resnapshot_makes_the_lake_exact() {
    let pg = PgServer::start();
    let url = pg.create_database("gone").await;
    let db = pg.connect("gone").await;
    db.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, note text);
         INSERT INTO orders SELECT g, 'new', 'n' || g FROM generate_series(1, 50) g;",
    )
    .await
    .expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "gone",
        &["public.orders"],
        &lake.path().display().to_string(),
        "",
    ));
    let resnapshot = [(
        "PG2LAKE__SOURCE__ON_SLOT_LOSS".to_owned(),
        "resnapshot".to_owned(),
    )];
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute("UPDATE orders SET status = 'paid' WHERE id <= 20")
        .await
        .expect("update");
    wait_caught_up(&db, "gone", CATCH_UP).await;
    assert_eq!(service.stop(STOP).code(), Some(0));

    // Round 1: an operator drops the slot; the application goes on writing.
    db.batch_execute("SELECT pg_drop_replication_slot('gone')")
        .await
        .expect("drop the slot");
    let gap = "UPDATE orders SET status = 'gap' WHERE id <= 10;
               DELETE FROM orders WHERE id BETWEEN 11 AND 15;
               INSERT INTO orders SELECT g, 'gap', NULL FROM generate_series(51, 55) g;";
    db.batch_execute(gap).await.expect("writes without a slot");
    let before = versions(lake.path(), "orders");
    let mut stopped = Service::start(&config, &[]);
    stopped.wait_error(
        STOP,
        &[
            "replication slot gone does not exist",
            "public.orders up to",
            "on_slot_loss: resnapshot",
        ],
    );
    assert_eq!(versions(lake.path(), "orders"), before, "nothing written");
    let slot: Option<String> = support::lake::confirmed_flush(&db, "gone").await;
    assert!(slot.is_none(), "no slot created that would hide the gap");

    let mut service = Service::start(&config, &resnapshot);
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute("UPDATE orders SET note = 'after' WHERE id IN (1, 30)")
        .await
        .expect("update after");
    wait_caught_up(&db, "gone", CATCH_UP).await;
    assert_orders_equal(&db, lake.path()).await;
    // The reload is one version: the truncate marker first, then the copied rows.
    let rows = lake_rows(lake.path(), "orders");
    let marker = rows
        .iter()
        .rposition(|r| op(r) == "t")
        .expect("a truncate marker");
    let reload: Vec<&serde_json::Map<String, Value>> =
        rows[marker + 1..].iter().filter(|r| op(r) == "r").collect();
    assert_eq!(
        reload.len(),
        source_orders(&db).await.len(),
        "every row of the source, once"
    );
    assert!(reload.iter().all(|r| lsn(r) == lsn(&rows[marker])));
    assert_eq!(seq(&rows[marker]), 0);
    assert_eq!(service.stop(STOP).code(), Some(0));

    // Round 2: the slot falls further behind than max_slot_wal_keep_size allows.
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
    ] {
        db.batch_execute(sql).await.expect("limit retained WAL");
    }
    for round in 0..3 {
        db.batch_execute(&format!(
            "UPDATE orders SET status = 'lost {round}' WHERE id <= 5; SELECT pg_switch_wal();"
        ))
        .await
        .expect("write and switch WAL");
    }
    let started = Instant::now();
    loop {
        db.batch_execute("CHECKPOINT").await.expect("checkpoint");
        let status: Option<String> = db
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'gone'",
                &[],
            )
            .await
            .expect("slot status")
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(started.elapsed() < CATCH_UP, "the slot is still {status:?}");
        db.batch_execute("INSERT INTO orders VALUES (1000, 'filler', NULL); DELETE FROM orders WHERE id = 1000; SELECT pg_switch_wal();")
            .await
            .expect("more WAL");
    }
    for sql in [
        "ALTER SYSTEM RESET max_slot_wal_keep_size",
        "SELECT pg_reload_conf()",
    ] {
        db.batch_execute(sql).await.expect("reset the limit");
    }
    let path = config.path().display().to_string();
    let out = run_command(&["check", "--config", &path], &[], CATCH_UP);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ replication slot gone was invalidated (wal_status lost)"),
        "{text}"
    );
    let before = versions(lake.path(), "orders");
    let mut stopped = Service::start(&config, &[]);
    stopped.wait_error(
        STOP,
        &["replication slot gone was invalidated", "wal_status lost"],
    );
    assert_eq!(versions(lake.path(), "orders"), before, "nothing written");

    let mut service = Service::start(&config, &resnapshot);
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute("INSERT INTO orders VALUES (56, 'streamed', 'x')")
        .await
        .expect("insert after");
    wait_caught_up(&db, "gone", CATCH_UP).await;
    assert_orders_equal(&db, lake.path()).await;
    assert_eq!(service.stop(STOP).code(), Some(0));
}
