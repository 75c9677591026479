//! The initial load over several connections: a table split into page ranges (with emptied
//! pages and TOASTed values), a partitioned table published via its root, and a table
//! without a primary key, each copied exactly once and handed off to streaming; and a
//! table added to the configuration of a running deployment, or created under a
//! `schema.*` entry while pg2lake streams, loaded at its own point; and a table dropped
//! and created again under its name, refused with the fix.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::lake::{Row, assert_no_duplicates, fold, op, wait_caught_up};
use support::load::{Rng, write_until};
use support::service::{ConfigFile, Service, config_yaml, run_command, run_command_measured};
use support::{PgServer, read_delta};

const COMMAND: Duration = Duration::from_secs(300);
const CATCH_UP: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(30);

fn lake_rows(lake: &std::path::Path, table: &str) -> Vec<Row> {
    read_delta(&lake.join("public").join(table).display().to_string(), &[]).rows
}

fn text(row: &Row, column: &str) -> Option<String> {
    match &row[column] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("{column} is not a string: {other}"),
    }
}

/// `(id, n, note, blob)` of every source row of `big`.
async fn big_source(db: &tokio_postgres::Client) -> BTreeMap<i64, (i32, String, Option<String>)> {
    db.query("SELECT id, n, note, blob FROM big", &[])
        .await
        .expect("read big")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn split_copy_partitioned_and_keyless_tables_land_exactly_once() {
    let pg = PgServer::start();
    let url = pg.create_database("par").await;
    let db = pg.connect("par").await;
    // `big`: ~40,000 rows over some 500 pages; every 40th row carries a 12 kB value of
    // hex digits chained through md5 (incompressible enough to be stored out of line).
    // Deleting a run of ids and vacuuming leaves empty pages in the middle of the heap.
    db.batch_execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, n int NOT NULL, note text NOT NULL, blob text);
         ALTER TABLE big ALTER COLUMN blob SET STORAGE EXTERNAL;
         INSERT INTO big
           SELECT g, g % 1000, repeat('n', 60) || g,
                  CASE WHEN g % 40 = 0 THEN
                    (SELECT string_agg(md5(g::text || ':' || i), '') FROM generate_series(1, 384) i)
                  END
           FROM generate_series(1, 40000) g;
         DELETE FROM big WHERE id BETWEEN 10001 AND 18000;
         DELETE FROM big WHERE id % 7 = 0;
         CREATE TABLE parted (id int NOT NULL, region text NOT NULL, qty int) PARTITION BY LIST (region);
         CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
         CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us');
         ALTER TABLE parted ADD PRIMARY KEY (id, region);
         INSERT INTO parted SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 3000) g;
         CREATE TABLE keyless (a int, b text);
         ALTER TABLE keyless REPLICA IDENTITY FULL;
         INSERT INTO keyless VALUES (1, 'same'), (1, 'same'), (2, NULL);",
    )
    .await
    .expect("create tables");
    db.batch_execute("VACUUM ANALYZE big")
        .await
        .expect("vacuum");
    let pages: i64 = db
        .query_one(
            "SELECT pg_relation_size('big') / current_setting('block_size')::int8",
            &[],
        )
        .await
        .expect("pages")
        .get(0);
    assert!(pages > 64, "big has {pages} pages: too few to split");

    let lake = tempfile::tempdir().expect("tempdir");
    // 64 KiB ranges: 8 ranges for 2 connections (4 each at most).
    let config = ConfigFile::new(&config_yaml(
        &url,
        "par",
        &["public.big", "public.parted", "public.keyless"],
        &lake.path().display().to_string(),
        "snapshot:\n  parallelism: 2\n  range_size: 64KiB\n",
    ));
    let path = config.path().display().to_string();
    let out = run_command(
        &["snapshot", "--config", &path, "--log-format", "json"],
        &[("RUST_LOG".into(), "info,pg2lake=debug".into())],
        COMMAND,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "snapshot failed:\n{stderr}");
    let planned = stderr
        .lines()
        .find(|l| l.contains("snapshot of table planned") && l.contains("public.big"))
        .unwrap_or_else(|| panic!("no plan line for big:\n{stderr}"));
    assert!(planned.contains("\"ranges\":8"), "{planned}");
    let range_starts = stderr
        .lines()
        .filter(|l| l.contains("snapshot of a page range started") && l.contains("public.big"))
        .count();
    assert_eq!(range_starts, 7, "ranges after the first:\n{stderr}");
    let parted_plan = stderr
        .lines()
        .find(|l| l.contains("snapshot of table planned") && l.contains("public.parted"))
        .unwrap_or_else(|| panic!("no plan line for parted:\n{stderr}"));
    assert!(
        parted_plan.contains("\"ranges\":1"),
        "a partitioned table is copied whole: {parted_plan}"
    );

    // Every row of big exactly once, TOASTed values intact, and (_lsn, _seq) unique.
    let rows = lake_rows(lake.path(), "big");
    assert_no_duplicates(&rows);
    assert!(rows.iter().all(|r| op(r) == "r"));
    let source = big_source(&db).await;
    let mut lake_big = BTreeMap::new();
    for row in &rows {
        let id = row["id"].as_i64().expect("id");
        let blob = text(row, "blob");
        let previous = lake_big.insert(
            id,
            (
                row["n"].as_i64().expect("n") as i32,
                text(row, "note").expect("note"),
                blob,
            ),
        );
        assert!(previous.is_none(), "row {id} copied twice");
    }
    assert_eq!(lake_big.len(), source.len(), "rows of big");
    assert!(
        lake_big == source,
        "big in the lake differs from the source"
    );
    assert!(
        source.values().filter(|v| v.2.is_some()).count() > 500,
        "the test holds TOASTed values"
    );

    // The partitioned table arrives under its root name, every partition's rows once.
    let parted = lake_rows(lake.path(), "parted");
    assert_eq!(parted.len(), 3000);
    let mut keys: Vec<(i64, String)> = parted
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().expect("id"),
                text(r, "region").expect("region"),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3000, "no partition row twice");
    assert!(!lake.path().join("public/parted_eu").exists());

    // Without a key, identical rows are both kept.
    let keyless = lake_rows(lake.path(), "keyless");
    let mut values: Vec<(i64, Option<String>)> = keyless
        .iter()
        .map(|r| (r["a"].as_i64().expect("a"), text(r, "b")))
        .collect();
    values.sort();
    assert_eq!(
        values,
        vec![
            (1, Some("same".into())),
            (1, Some("same".into())),
            (2, None)
        ]
    );

    // Streaming continues from the snapshot's slot for all three.
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute(
        "INSERT INTO parted VALUES (5001, 'eu', 1), (5002, 'us', 2);
         UPDATE parted SET qty = -1 WHERE id = 2 AND region = 'eu';
         INSERT INTO keyless VALUES (3, 'streamed');
         UPDATE big SET n = -5 WHERE id = 1;",
    )
    .await
    .expect("changes after the snapshot");
    wait_caught_up(&db, "par", CATCH_UP).await;
    assert!(service.stop(STOP).success());
    let parted = lake_rows(lake.path(), "parted");
    let streamed: Vec<(&str, i64, i64)> = parted
        .iter()
        .filter(|r| op(r) != "r")
        .map(|r| {
            (
                op(r),
                r["id"].as_i64().expect("id"),
                r["qty"].as_i64().expect("qty"),
            )
        })
        .collect();
    assert_eq!(streamed, vec![("c", 5001, 1), ("c", 5002, 2), ("u", 2, -1)]);
    let keyless = lake_rows(lake.path(), "keyless");
    assert_eq!(keyless.len(), 4);
    assert_eq!(op(keyless.last().expect("row")), "c");
    let big = lake_rows(lake.path(), "big");
    let update = big.last().expect("row");
    assert_eq!((op(update), update["n"].as_i64()), ("u", Some(-5)));
}

/// Updates random rows of `a` and `b` (ids 1..=1000) in small transactions until `stop`.
async fn write_both(client: tokio_postgres::Client, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    write_until(client, stop, Duration::ZERO, |n| {
        let id = 1 + rng.below(1000);
        format!(
            "BEGIN; UPDATE a SET v = v + 1 WHERE id = {id}; UPDATE b SET v = v + 1 WHERE id = {id};
             INSERT INTO b VALUES ({}, 0) ON CONFLICT DO NOTHING; COMMIT;",
            999 + n
        )
    })
    .await
}

/// `id → v` of the folded lake table.
fn folded(lake: &std::path::Path, table: &str) -> BTreeMap<i64, i64> {
    let rows = lake_rows(lake, table);
    assert_no_duplicates(&rows);
    fold(rows, "id")
        .values()
        .map(|r| (r["id"].as_i64().expect("id"), r["v"].as_i64().expect("v")))
        .collect()
}

async fn source(db: &tokio_postgres::Client, table: &str) -> BTreeMap<i64, i64> {
    db.query(&format!("SELECT id::int8, v::int8 FROM {table}"), &[])
        .await
        .expect("read source")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// `PG2LAKE__SOURCE__TABLE_DISCOVERY_INTERVAL=1s`: new and re-created tables are noticed
/// within a second.
fn fast_discovery() -> [(String, String); 1] {
    [(
        "PG2LAKE__SOURCE__TABLE_DISCOVERY_INTERVAL".to_owned(),
        "1s".to_owned(),
    )]
}

/// Starts pg2lake again after a fix, writes to `a` and `b` once it streams, and checks
/// both tables against the source (`slot` names the database's slot too).
async fn restart_write_and_match(
    config: &ConfigFile,
    db: &tokio_postgres::Client,
    slot: &str,
    lake: &std::path::Path,
) {
    let mut service = Service::start(config, &fast_discovery());
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute(
        "UPDATE a SET v = v + 10 WHERE id = 50; UPDATE b SET v = v + 10 WHERE id = 50;",
    )
    .await
    .expect("write after the fix");
    wait_caught_up(db, slot, CATCH_UP).await;
    assert!(service.stop(STOP).success());
    assert_a_and_b_match(lake, db).await;
}

/// `a` and `b` folded from the lake equal the source, with no duplicate, and `b` holds
/// both copied (`r`) and streamed rows.
async fn assert_a_and_b_match(lake: &std::path::Path, db: &tokio_postgres::Client) {
    assert_eq!(folded(lake, "a"), source(db, "a").await, "a");
    assert_eq!(folded(lake, "b"), source(db, "b").await, "b");
    let b_rows = lake_rows(lake, "b");
    assert!(b_rows.iter().any(|r| op(r) == "r") && b_rows.iter().any(|r| op(r) != "r"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_added_to_the_config_is_loaded_at_its_own_point_while_writes_go_on() {
    let pg = PgServer::start();
    let url = pg.create_database("grow").await;
    let db = pg.connect("grow").await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL);
         CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO a SELECT g, 0 FROM generate_series(1, 1000) g;
         INSERT INTO b SELECT g, 0 FROM generate_series(1, 1000) g;",
    )
    .await
    .expect("create tables");
    let lake = tempfile::tempdir().expect("tempdir");
    let lake_url = lake.path().display().to_string();
    let only_a = ConfigFile::new(&config_yaml(&url, "grow", &["public.a"], &lake_url, ""));
    let both = ConfigFile::new(&config_yaml(
        &url,
        "grow",
        &["public.a", "public.b"],
        &lake_url,
        "",
    ));

    // Writes run from before the first start until after b is loaded and streaming.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_both(pg.connect("grow").await, stop.clone()));
    let mut service = Service::start(&only_a, &[]);
    service.wait_streaming(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(service.stop(STOP).success());
    assert!(!lake.path().join("public/b").exists());

    let mut service = Service::start(&both, &[]);
    service.wait_streaming(Duration::from_secs(120));
    let log = service.log();
    assert!(
        log.contains("created temporary slot for the snapshot"),
        "b is copied at a point of its own:\n{log}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.expect("writer");
    assert!(writes > 20, "only {writes} write transactions");
    wait_caught_up(&db, "grow", CATCH_UP).await;
    assert!(service.stop(STOP).success());

    assert_a_and_b_match(lake.path(), &db).await;
}

/// `public.*` and a table created while pg2lake streams, with writes going on to both the
/// old and the new table: pg2lake finds it within `source.table_discovery_interval`,
/// ends the session at a transaction boundary, adds the table to the publication, copies
/// it at a point of its own and streams it; both tables then equal the source, and the
/// new session was not counted as a failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_created_under_a_schema_pattern_is_found_and_loaded_while_writes_go_on() {
    let pg = PgServer::start();
    let url = pg.create_database("found").await;
    let db = pg.connect("found").await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO a SELECT g, 0 FROM generate_series(1, 1000) g;",
    )
    .await
    .expect("create a");
    let lake = tempfile::tempdir().expect("tempdir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "found",
        &["public.*"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &fast_discovery());
    service.wait_streaming(Duration::from_secs(60));

    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let only_a = tokio::spawn(write_until(
        pg.connect("found").await,
        stop.clone(),
        Duration::ZERO,
        move |_| format!("UPDATE a SET v = v + 1 WHERE id = {}", 1 + rng.below(1000)),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.batch_execute(
        "CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO b SELECT g, 0 FROM generate_series(1, 1000) g;",
    )
    .await
    .expect("create b");
    let both = tokio::spawn(write_both(pg.connect("found").await, stop.clone()));
    support::wait_until(
        Duration::from_secs(120),
        "a second session streaming",
        || service.log().matches("streaming changes").count() >= 2,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = only_a.await.expect("writer") + both.await.expect("writer");
    assert!(writes > 20, "only {writes} write transactions");
    wait_caught_up(&db, "found", CATCH_UP).await;
    assert!(service.stop(STOP).success());

    let log = service.log();
    assert!(
        log.contains("new tables match the tables setting") && log.contains("public.b"),
        "the new table is named in the log:\n{log}"
    );
    assert!(
        log.contains("created temporary slot for the snapshot"),
        "b is copied at a point of its own:\n{log}"
    );
    assert!(
        !log.contains("reconnecting"),
        "the new session is not a failure:\n{log}"
    );
    assert_a_and_b_match(lake.path(), &db).await;
}

/// The least-privilege setup the README gives for `public.*`: a role with REPLICATION
/// and SELECT, and a publication `FOR TABLES IN SCHEMA public` made by a superuser (the
/// role owns no table, so it could not add one to a publication). A table created later
/// is published by Postgres itself; pg2lake finds it, and without SELECT on it stops
/// with the GRANT to run; after the grant, the next start loads it.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_found_under_a_schema_pattern_needs_select_and_is_loaded_after_the_grant() {
    let pg = PgServer::start();
    let url = pg.create_database("granted").await;
    let db = pg.connect("granted").await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO a SELECT g, 0 FROM generate_series(1, 100) g;
         CREATE ROLE rep LOGIN REPLICATION;
         GRANT SELECT ON a TO rep;
         CREATE PUBLICATION granted FOR TABLES IN SCHEMA public
           WITH (publish_via_partition_root = true);",
    )
    .await
    .expect("create table, role and publication");
    let lake = tempfile::tempdir().expect("tempdir");
    let url = url.replacen(&format!("{}@", pg.superuser()), "rep@", 1);
    let config = ConfigFile::new(&config_yaml(
        &url,
        "granted",
        &["public.*"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &fast_discovery());
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute(
        "CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO b SELECT g, 0 FROM generate_series(1, 100) g;
         UPDATE a SET v = 1 WHERE id <= 10;",
    )
    .await
    .expect("create b");
    service.wait_error(
        Duration::from_secs(60),
        &["rep", "\"public\".\"b\"", "GRANT SELECT"],
    );

    db.batch_execute("GRANT SELECT ON b TO rep; UPDATE b SET v = 2 WHERE id <= 10;")
        .await
        .expect("grant");
    restart_write_and_match(&config, &db, "granted", lake.path()).await;
}

/// A replicated table dropped and created again under its name while pg2lake streams:
/// the lake table holds the old table's changes and misses the new table's first rows,
/// so pg2lake stops with an error naming the table and the fix instead of mixing the two.
/// After the fix (its folder moved away) the next start loads the new table.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_created_again_under_its_name_stops_with_the_fix() {
    let pg = PgServer::start();
    let url = pg.create_database("again").await;
    let db = pg.connect("again").await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL);
         CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO a SELECT g, 0 FROM generate_series(1, 100) g;
         INSERT INTO b SELECT g, 0 FROM generate_series(1, 100) g;",
    )
    .await
    .expect("create tables");
    let lake = tempfile::tempdir().expect("tempdir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "again",
        &["public.a", "public.b"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &fast_discovery());
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute(
        "UPDATE b SET v = 1 WHERE id <= 10;
         DROP TABLE b;
         CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO b SELECT g, 2 FROM generate_series(1, 50) g;
         UPDATE a SET v = 3 WHERE id <= 10;",
    )
    .await
    .expect("drop and create b again");
    service.wait_error(
        Duration::from_secs(60),
        &["public.b", "dropped and created again", "fix:"],
    );

    std::fs::rename(
        lake.path().join("public/b"),
        lake.path().join("public/b.replaced"),
    )
    .expect("move the old table away");
    restart_write_and_match(&config, &db, "again", lake.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_larger_than_memory_bound_stays_within_it() {
    let pg = PgServer::start();
    let url = pg.create_database("big").await;
    let db = pg.connect("big").await;
    // About 460 MB of row data, far more than the copy may hold at once.
    db.batch_execute(
        "CREATE TABLE wide (id bigint PRIMARY KEY, body text NOT NULL);
         ALTER TABLE wide ALTER COLUMN body SET STORAGE PLAIN;
         INSERT INTO wide SELECT g, repeat(md5(g::text), 14) FROM generate_series(1, 1000000) g;",
    )
    .await
    .expect("build the table");
    let source_bytes: i64 = db
        .query_one("SELECT sum(octet_length(body))::int8 FROM wide", &[])
        .await
        .expect("size")
        .get(0);
    let lake = tempfile::tempdir().expect("tempdir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "big",
        &["public.wide"],
        &lake.path().display().to_string(),
        "snapshot:\n  parallelism: 2\n  range_size: 16MiB\n",
    ));
    let path = config.path().display().to_string();
    let (out, peak) = run_command_measured(
        &[
            "snapshot",
            "--no-slot",
            "--config",
            &path,
            "--log-format",
            "json",
        ],
        &[],
        COMMAND,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "snapshot failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        support::count_delta_rows(&lake.path().join("public/wide")),
        1_000_000
    );
    // Chunks of 8 MiB per connection, four queued per table, one row group and one file
    // being written: far below the table. Buffering the table would pass 400 MiB.
    const BOUND: u64 = 320 << 20;
    assert!(
        source_bytes as u64 > BOUND,
        "the table ({source_bytes} bytes) must exceed the bound"
    );
    println!(
        "snapshot of a {} MiB table: peak RSS {} MiB",
        source_bytes >> 20,
        peak >> 20
    );
    assert!(
        peak < BOUND,
        "peak RSS {} MiB for a {} MiB table",
        peak >> 20,
        source_bytes >> 20
    );
}
