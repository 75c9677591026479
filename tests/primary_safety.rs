//! pg2lake never breaks what the application may do on its database: a table without a
//! replica identity is never put into a publication that publishes updates or deletes
//! (Postgres would then refuse every UPDATE and DELETE on it). Real PostgreSQL, the real
//! binary, the lake read back with the `deltalake` Python reader.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::lake::{assert_no_duplicates, in_change_order, op, wait_caught_up};
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgServer, read_delta};
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
