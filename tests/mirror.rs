//! The current-state mirror (`<lake>/_current/<schema>/<table>`) against a real Postgres:
//! equal to the source through updates, unchanged TOAST values, deletes, key changes, a
//! column added and a truncate; a refresh of recent keys rewrites one file; and kill -9
//! at and around refresh commits under load leaves a mirror exactly equal to the change
//! log folded at the version it records. Read back with the deltalake Python package.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{Map, Value};
use support::bank::{SCHEMA, load};
use support::lake::{fold, wait_caught_up};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgServer, delta_txn_version, duckdb_query, read_delta, read_delta_at};

const TIMEOUT: Duration = Duration::from_secs(120);
const MIRROR_APP: &str = "pg2lake-mirror";

type Row = Map<String, Value>;

/// The change log's and the mirror's locations of `public.<table>`.
fn locations(lake: &Path, table: &str) -> (String, String) {
    (
        lake.join("public").join(table).display().to_string(),
        lake.join("_current/public")
            .join(table)
            .display()
            .to_string(),
    )
}

/// Waits until the mirror of `table` reflects the change log's latest version.
fn wait_mirror_current(lake: &Path, table: &str) -> i64 {
    let (log, mirror) = locations(lake, table);
    support::lake::wait_mirror_current(&log, &mirror, TIMEOUT)
}

/// The mirror's rows by key, without `_lsn` and `_commit_ts`.
fn mirror_rows(mirror: &str, key: &str) -> BTreeMap<String, Row> {
    read_delta(mirror, &[])
        .rows
        .into_iter()
        .map(|mut row| {
            row.remove("_lsn");
            row.remove("_commit_ts");
            (row[key].to_string(), row)
        })
        .collect()
}

/// The source table's rows by key, as JSON.
async fn source_rows(db: &tokio_postgres::Client, table: &str, key: &str) -> BTreeMap<String, Row> {
    support::lake::source_rows(db, &format!("SELECT * FROM {table}"), key).await
}

/// Asserts the mirror equals the source, naming the first keys that differ.
async fn assert_mirror_equals_source(
    db: &tokio_postgres::Client,
    lake: &Path,
    table: &str,
    key: &str,
) {
    let (_, mirror) = locations(lake, table);
    let lake_rows = mirror_rows(&mirror, key);
    let source = source_rows(db, table, key).await;
    let differing: Vec<&String> = source
        .keys()
        .chain(lake_rows.keys())
        .filter(|k| source.get(*k) != lake_rows.get(*k))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "{table}: the mirror differs from the source at keys {differing:?} ({} rows in the mirror, {} in the source); e.g. mirror {:?} source {:?}",
        lake_rows.len(),
        source.len(),
        differing.first().and_then(|k| lake_rows.get(*k)),
        differing.first().and_then(|k| source.get(*k)),
    );
}

/// Removes of the mirror's latest version (the files its refresh rewrote).
fn removes_in_latest_version(mirror: &str) -> usize {
    let version = read_delta(mirror, &[]).version;
    let path = format!("{mirror}/_delta_log/{version:020}.json");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|line| line.starts_with("{\"remove\""))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mirror_follows_updates_toast_deletes_key_changes_columns_and_truncates() {
    let pg = PgServer::start();
    let url = pg.create_database("mirror").await;
    let db = pg.connect("mirror").await;
    db.batch_execute(
        // Every tenth note is 10,240 characters of chained md5 hex, which pglz cannot
        // shrink: stored out of line (TOAST), and not sent by an update that leaves it.
        "CREATE FUNCTION big(text) RETURNS text LANGUAGE sql IMMUTABLE AS
           $$ SELECT string_agg(md5($1 || ':' || i), '' ORDER BY i) FROM generate_series(1, 320) i $$;
         CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, note text);
         INSERT INTO orders SELECT g, 'new', CASE WHEN g % 10 = 0 THEN big(g::text) ELSE 'n' || g END
         FROM generate_series(1, 2000) g;",
    )
    .await
    .expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "mirror",
        &["public.orders"],
        &lake.path().display().to_string(),
        "  compaction:\n    enabled: false\nmirror:\n  enabled: true\n  interval: 300ms\n  target_file_rows: 500\n  step_rows: 700\n",
    ));
    let _service = Service::start(&config, &[]);
    let (_, mirror) = locations(lake.path(), "orders");
    // The initial load reaches the mirror too: 2,000 rows in four files of 500 keys.
    wait_caught_up(&db, "mirror", TIMEOUT).await;
    wait_mirror_current(lake.path(), "orders");
    assert_mirror_equals_source(&db, lake.path(), "orders", "id").await;
    assert_eq!(read_delta(&mirror, &[]).files.len(), 4);

    // OLTP-shaped: recent keys change; one file's key range takes them all.
    db.batch_execute("UPDATE orders SET status = 'paid' WHERE id > 1990")
        .await
        .expect("update");
    wait_caught_up(&db, "mirror", TIMEOUT).await;
    wait_mirror_current(lake.path(), "orders");
    assert_mirror_equals_source(&db, lake.path(), "orders", "id").await;
    assert_eq!(
        removes_in_latest_version(&mirror),
        1,
        "a refresh of recent keys rewrote more than their file"
    );

    // Unchanged TOAST values (the large notes of every tenth row are not sent), deletes,
    // a key change and new keys, in separate transactions. (A key change that leaves a
    // large value alone is the one case nothing can fill: see the README.)
    db.batch_execute(
        "UPDATE orders SET status = 'shipped' WHERE id % 7 = 0;
         DELETE FROM orders WHERE id % 11 = 0;
         UPDATE orders SET id = 5000 WHERE id = 21;
         INSERT INTO orders VALUES (2001, 'new', big('2001')), (0, 'new', NULL);
         BEGIN; UPDATE orders SET note = 'changed' WHERE id = 30; UPDATE orders SET status = 'x' WHERE id = 30; COMMIT;",
    )
    .await
    .expect("changes");
    wait_caught_up(&db, "mirror", TIMEOUT).await;
    wait_mirror_current(lake.path(), "orders");
    assert_mirror_equals_source(&db, lake.path(), "orders", "id").await;
    // DuckDB reads the mirror's files to the same answer as Postgres.
    const SUMMARY: &str = "SELECT count(*)::bigint AS n, sum(length(note))::bigint AS chars, \
                           sum(id)::bigint AS ids, count(DISTINCT status)::bigint AS statuses FROM orders";
    let duck = duckdb_query(&mirror, "orders", SUMMARY);
    let pg_row = db.query_one(SUMMARY, &[]).await.expect("summary");
    let expected: Vec<Value> = (0..4)
        .map(|i| serde_json::json!(pg_row.get::<_, i64>(i)))
        .collect();
    let got: Vec<Value> = ["n", "chars", "ids", "statuses"]
        .iter()
        .map(|c| duck.rows[0][*c].clone())
        .collect();
    assert_eq!(got, expected, "DuckDB over the mirror vs Postgres");

    // A column added: the mirror takes the new layout (old rows null in it).
    db.batch_execute(
        "ALTER TABLE orders ADD COLUMN priority int;
         UPDATE orders SET priority = 1 WHERE id BETWEEN 100 AND 120;",
    )
    .await
    .expect("add column");
    wait_caught_up(&db, "mirror", TIMEOUT).await;
    wait_mirror_current(lake.path(), "orders");
    assert_mirror_equals_source(&db, lake.path(), "orders", "id").await;

    // A truncate empties it; what follows in the same transaction stays.
    db.batch_execute(
        "BEGIN; TRUNCATE orders; INSERT INTO orders VALUES (1, 'again', 'n1', 2); COMMIT;",
    )
    .await
    .expect("truncate");
    wait_caught_up(&db, "mirror", TIMEOUT).await;
    wait_mirror_current(lake.path(), "orders");
    assert_mirror_equals_source(&db, lake.path(), "orders", "id").await;
    assert_eq!(read_delta(&mirror, &[]).rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_around_mirror_refreshes_under_load_leaves_an_exact_mirror() {
    let pg = PgServer::start();
    let url = pg.create_database("mirrorkill").await;
    let db = pg.connect("mirrorkill").await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "mirrorkill",
        &["public.accounts", "public.ledger"],
        &lake.path().display().to_string(),
        "  compaction:\n    enabled: false\nmirror:\n  enabled: true\n  interval: 200ms\n  target_file_rows: 300\n  step_rows: 200\n",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("mirrorkill").await, stop.clone(), 23));
    let (log, mirror) = locations(lake.path(), "accounts");
    // Killed between a refresh's upload and its commit, right after its commit, and at
    // random; each time the mirror is exactly the change log folded at the version it
    // records.
    let points = [
        "mirror::before_commit",
        "mirror::after_commit",
        "mirror::before_commit",
        "mirror::after_commit",
    ];
    let mut compared = 0;
    for (round, point) in points.iter().enumerate() {
        let failpoints = format!("{point}={}*off->return", 2 + round);
        let mut service = Service::start(&config, &[("FAILPOINTS".to_owned(), failpoints)]);
        let status = service.wait_exit(TIMEOUT);
        assert!(
            !status.success() && service.log().contains(&format!("failpoint {point} hit")),
            "round {round}: pg2lake did not die at {point}:\n{}",
            service.log()
        );
        let Some(reflected) = support::try_read_delta(&mirror, &[])
            .and_then(|_| delta_txn_version(&mirror, &[], MIRROR_APP))
        else {
            continue;
        };
        let expected = fold(read_delta_at(&log, &[], reflected).rows, "id");
        let expected: BTreeMap<String, Row> = expected
            .into_iter()
            .map(|(key, row)| {
                let row = row
                    .into_iter()
                    .filter(|(column, _)| ["id", "balance", "note"].contains(&column.as_str()))
                    .collect();
                (key, row)
            })
            .collect();
        assert!(!expected.is_empty(), "round {round}: nothing to compare");
        assert_eq!(
            mirror_rows(&mirror, "id"),
            expected,
            "round {round}: the mirror is not the change log folded at version {reflected}"
        );
        compared += 1;
    }
    assert!(
        compared >= 3,
        "only {compared} rounds had a mirror to compare"
    );
    let service = Service::start(&config, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = loader.await.expect("loader");
    assert!(committed > 50, "the load committed only {committed}");
    wait_caught_up(&db, "mirrorkill", TIMEOUT).await;
    for table in ["accounts", "ledger"] {
        wait_mirror_current(lake.path(), table);
        assert_mirror_equals_source(&db, lake.path(), table, "id").await;
    }
    drop(service);
}
