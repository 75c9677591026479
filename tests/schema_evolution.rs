//! ALTER TABLE while replicating: added columns join the lake, dropped ones stay (null from
//! then on), compatible type changes are adopted, incompatible ones stop pg2lake with a
//! clear error; every Delta version stays readable by the independent Python reader.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::lake::{Row, assert_no_duplicates, fold, op, wait_caught_up};
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgServer, S3Server, read_delta, read_delta_at};

const CATCH_UP: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(30);

fn lake_table(lake: &std::path::Path, table: &str) -> String {
    lake.join("public").join(table).display().to_string()
}

fn config(url: &str, slot: &str, table: &str, lake: &std::path::Path) -> ConfigFile {
    ConfigFile::new(&config_yaml(
        url,
        slot,
        &[&format!("public.{table}")],
        &lake.display().to_string(),
        "",
    ))
}

/// The source table as the reader renders values: `SELECT id, <columns>` where each
/// column expression yields JSON-comparable text or integers, keyed by id.
async fn source_state(
    client: &tokio_postgres::Client,
    sql: &str,
) -> BTreeMap<String, serde_json::Map<String, Value>> {
    let rows = client.query(sql, &[]).await.expect("query source");
    rows.iter()
        .map(|row| {
            let mut values = serde_json::Map::new();
            for (i, column) in row.columns().iter().enumerate() {
                let value = if *column.type_() == tokio_postgres::types::Type::INT4 {
                    json!(row.get::<_, Option<i32>>(i))
                } else {
                    json!(row.get::<_, Option<String>>(i))
                };
                values.insert(column.name().to_owned(), value);
            }
            (values["id"].to_string(), values)
        })
        .collect()
}

/// Asserts that the lake folded to current state equals `expected` on its columns.
fn assert_state(
    rows: Vec<Row>,
    expected: &BTreeMap<String, serde_json::Map<String, Value>>,
    what: &str,
) {
    assert_no_duplicates(&rows);
    let state = fold(rows, "id");
    assert_eq!(
        state.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (id, want) in expected {
        for (column, value) in want {
            assert_eq!(
                state[id].get(column).unwrap_or(&Value::Null),
                value,
                "{what}: column {column} of row {id}"
            );
        }
    }
}

/// Writes small transactions touching only columns every ALTER below keeps, until `stop`.
async fn background_writes(client: tokio_postgres::Client, stop: Arc<AtomicBool>) -> u64 {
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = 100_000 + n;
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO items (id, qty, code) VALUES ({id}, {n}, 'bg');
                 UPDATE items SET qty = qty + 1 WHERE id = {}; COMMIT;",
                1 + n % 20
            ))
            .await
            .expect("background write");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    n
}

fn column_names(read: &support::DeltaRead) -> Vec<&str> {
    read.columns()
}

#[tokio::test(flavor = "multi_thread")]
async fn add_drop_and_retype_columns_while_writes_continue() {
    let pg = PgServer::start();
    let url = pg.create_database("evolve").await;
    let db = pg.connect("evolve").await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty int, code varchar(10), legacy text);
         INSERT INTO items SELECT g, g, 'c' || g, 'old' || g FROM generate_series(1, 20) g;",
    )
    .await
    .expect("create table");
    let lake = tempfile::tempdir().expect("temp dir");
    let table = lake_table(lake.path(), "items");
    let config = config(&url, "evolve", "items", lake.path());
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(30));
    db.batch_execute(
        "INSERT INTO items SELECT g, g, 'c' || g, 'old' || g FROM generate_series(21, 40) g",
    )
    .await
    .expect("insert");
    wait_caught_up(&db, "evolve", CATCH_UP).await;
    let before_add = read_delta(&table, &[]);
    assert!(!column_names(&before_add).contains(&"price"));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(background_writes(pg.connect("evolve").await, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // ADD COLUMN (two: a decimal and a timestamp without time zone, which needs a
    // Delta protocol feature the table did not have), then rows using them.
    db.batch_execute(
        "ALTER TABLE items ADD COLUMN price numeric(10,2), ADD COLUMN seen_at timestamp;
         INSERT INTO items (id, qty, code, legacy, price, seen_at)
           SELECT g, g, 'n' || g, 'old' || g, (g - 1000) * 1.25,
                  '2026-01-02 03:04:05'::timestamp + (g - 1000) * interval '1 minute'
           FROM generate_series(1001, 1010) g;
         UPDATE items SET price = 9.99 WHERE id = 5;",
    )
    .await
    .expect("add columns");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A transaction that mixes rows from before and after an ALTER.
    db.batch_execute(
        "BEGIN;
         INSERT INTO items (id, qty, code, legacy) VALUES (1500, 1, 'mix', 'kept');
         ALTER TABLE items DROP COLUMN legacy;
         INSERT INTO items (id, qty, code, price) VALUES (1501, 2, 'mix', 1.50);
         COMMIT;
         INSERT INTO items (id, qty, code, price) SELECT g, g, 'd' || g, 2.5 FROM generate_series(2001, 2010) g;",
    )
    .await
    .expect("drop column");
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.batch_execute(
        "ALTER TABLE items ALTER COLUMN code TYPE varchar(20);
         INSERT INTO items (id, qty, code) VALUES (3001, 1, 'nineteen-characters');
         ALTER TABLE items ALTER COLUMN code TYPE text;
         INSERT INTO items (id, qty, code) VALUES (3002, 2, repeat('t', 50));",
    )
    .await
    .expect("retype column");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let background = writer.await.expect("background writer");
    assert!(background > 10, "only {background} background transactions");
    wait_caught_up(&db, "evolve", CATCH_UP).await;
    assert!(
        service.is_running(),
        "ALTER TABLE must not stop pg2lake:\n{}",
        service.log()
    );

    let latest = read_delta(&table, &[]);
    assert_eq!(
        column_names(&latest),
        [
            "id",
            "qty",
            "code",
            "legacy",
            "price",
            "seen_at",
            "_op",
            "_lsn",
            "_seq",
            "_commit_ts",
            "_xid",
            "_unchanged",
            "date"
        ],
        "source columns in first-seen order, then the metadata columns"
    );
    assert_eq!(latest.column_type("price"), Some("decimal128(10, 2)"));
    assert_eq!(latest.column_type("seen_at"), Some("timestamp[us]"));
    assert_eq!(latest.column_type("code"), Some("string"));

    // Nothing lost: the folded change log equals the source.
    let expected = source_state(
        &db,
        "SELECT id, qty, code, price::text AS price,
                to_char(seen_at, 'YYYY-MM-DD\"T\"HH24:MI:SS') AS seen_at
         FROM items",
    )
    .await;
    assert_state(latest.rows.clone(), &expected, "latest version");

    let rows = &latest.rows;
    let by_id = |id: i64| -> Vec<&Row> {
        rows.iter()
            .filter(|r| r["id"] == json!(id) && op(r) == "c")
            .collect()
    };
    // Rows from before ADD COLUMN read the new columns as null.
    for id in [21, 30, 40] {
        let row = by_id(id)[0];
        assert_eq!(row["price"], Value::Null, "row {id}");
        assert_eq!(row["seen_at"], Value::Null, "row {id}");
        assert_eq!(row["legacy"], json!(format!("old{id}")), "row {id}");
    }
    let row = by_id(1003)[0];
    assert_eq!(row["price"], json!("3.75"));
    assert_eq!(row["seen_at"], json!("2026-01-02T03:07:05"));
    assert_eq!(row["legacy"], json!("old1003"));
    // Inside one transaction: before the DROP the column has its value, after it null.
    assert_eq!(by_id(1500)[0]["legacy"], json!("kept"));
    assert_eq!(by_id(1501)[0]["legacy"], Value::Null);
    assert_eq!(by_id(1501)[0]["price"], json!("1.50"));
    for id in 2001..=2010 {
        assert_eq!(by_id(id)[0]["legacy"], Value::Null, "row {id}");
    }
    assert_eq!(by_id(3001)[0]["code"], json!("nineteen-characters"));
    assert_eq!(by_id(3002)[0]["code"], json!("t".repeat(50)));

    // Every version is readable, the layout only grows, and each layout change arrives
    // together with rows (never a metadata-only version ahead of its data).
    let mut previous: Option<support::DeltaRead> = None;
    let mut layouts = 0;
    for version in 0..=latest.version {
        let read = read_delta_at(&table, &[], version);
        assert_eq!(read.version, version);
        if let Some(previous) = &previous {
            let (before, after) = (column_names(previous), column_names(&read));
            if before != after {
                layouts += 1;
                assert!(
                    before.iter().all(|c| after.contains(c)),
                    "version {version} lost columns: {before:?} → {after:?}"
                );
                assert!(
                    read.rows.len() > previous.rows.len(),
                    "version {version} changes the layout without adding rows"
                );
            }
        }
        previous = Some(read);
    }
    assert_eq!(layouts, 1, "price and seen_at arrive in one layout change");
    // Time travel: the version read before the ALTER has the layout its rows were written with.
    let old = read_delta_at(&table, &[], before_add.version);
    assert!(!column_names(&old).contains(&"price"));
    assert_eq!(old.rows.len(), before_add.rows.len());

    let log = service.log();
    assert!(
        log.lines().any(|l| l.contains("table schema changed")
            && l.contains("price")
            && l.contains("seen_at")),
        "an info line names the added columns:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("table schema changed") && l.contains("legacy")),
        "an info line names the dropped column"
    );
    assert!(service.stop(STOP).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn columns_added_while_stopped_appear_after_restart() {
    let pg = PgServer::start();
    let url = pg.create_database("offline").await;
    let db = pg.connect("offline").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await
        .expect("create table");
    let lake = tempfile::tempdir().expect("temp dir");
    let table = lake_table(lake.path(), "t");
    let config = config(&url, "offline", "t", lake.path());
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(30));
    db.batch_execute("INSERT INTO t VALUES (1, 10)")
        .await
        .expect("insert");
    wait_caught_up(&db, "offline", CATCH_UP).await;
    assert!(service.stop(STOP).success());

    // While pg2lake is down: a column that stays, and one that comes and goes again
    // (only the replayed Relation messages know it existed).
    db.batch_execute(
        "ALTER TABLE t ADD COLUMN extra text;
         INSERT INTO t VALUES (2, 20, 'x');
         ALTER TABLE t ADD COLUMN brief int;
         INSERT INTO t VALUES (3, 30, 'y', 7);
         ALTER TABLE t DROP COLUMN brief;
         INSERT INTO t VALUES (4, 40, 'z');",
    )
    .await
    .expect("alter while stopped");
    let mut service = Service::start(&config, &[]);
    wait_caught_up(&db, "offline", CATCH_UP).await;
    db.batch_execute("INSERT INTO t VALUES (5, 50, 'w')")
        .await
        .expect("insert after restart");
    wait_caught_up(&db, "offline", CATCH_UP).await;

    let read = read_delta(&table, &[]);
    let columns = column_names(&read);
    assert_eq!(&columns[..4], ["id", "v", "extra", "brief"], "{columns:?}");
    let expected = source_state(&db, "SELECT id, v, extra FROM t").await;
    assert_state(read.rows.clone(), &expected, "after restart");
    let state = fold(read.rows, "id");
    assert_eq!(state["1"]["extra"], Value::Null);
    assert_eq!(state["2"]["extra"], json!("x"));
    assert_eq!(
        state["3"]["brief"],
        json!(7),
        "a column added and dropped while down"
    );
    assert_eq!(state["4"]["brief"], Value::Null);
    assert!(service.stop(STOP).success());
}

/// The last non-empty line of a log: the `error: …` line pg2lake ends with.
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incompatible_type_change_stops_with_a_clear_error() {
    let pg = PgServer::start();
    let url = pg.create_database("retype").await;
    let db = pg.connect("retype").await;
    db.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, qty int)")
        .await
        .expect("create table");
    let lake = tempfile::tempdir().expect("temp dir");
    let table = lake_table(lake.path(), "orders");
    let config = config(&url, "retype", "orders", lake.path());
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(30));
    db.batch_execute("INSERT INTO orders VALUES (1, 5)")
        .await
        .expect("insert");
    wait_caught_up(&db, "retype", CATCH_UP).await;
    let before = read_delta(&table, &[]);

    db.batch_execute(
        "ALTER TABLE orders ALTER COLUMN qty TYPE text USING qty::text;
         INSERT INTO orders VALUES (2, 'many');",
    )
    .await
    .expect("retype");
    let status = service.wait_exit(CATCH_UP);
    assert_eq!(status.code(), Some(1), "log:\n{}", service.log());
    let line = last_line(&service.log());
    assert!(line.starts_with("error: "), "{line:?}");
    for needle in ["public.orders", "qty", "int4", "text", "fix:"] {
        assert!(line.contains(needle), "{line:?} should mention {needle:?}");
    }
    let after = read_delta(&table, &[]);
    assert_eq!(after.version, before.version, "nothing was committed");
    assert_eq!(after.rows.len(), 1);

    // A restart meets the same change in the catalog and says the same, before streaming.
    let out = run_command(
        &["run", "--config", &config.path().display().to_string()],
        &[],
        CATCH_UP,
    );
    assert_eq!(out.status.code(), Some(1));
    let line = last_line(&String::from_utf8_lossy(&out.stderr));
    assert!(
        line.starts_with("error: ") && line.contains("qty") && line.contains("fix:"),
        "{line:?}"
    );
}

/// Inserts rows, now and then adding a column and filling it, until `stop`.
async fn load_with_ddl(client: tokio_postgres::Client, stop: Arc<AtomicBool>) -> u32 {
    let mut added = 0;
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut sql = format!("BEGIN; INSERT INTO log (id, v) VALUES ({n}, {n});");
        if n.is_multiple_of(25) {
            added += 1;
            sql.push_str(&format!(
                "ALTER TABLE log ADD COLUMN c{added} int; UPDATE log SET c{added} = id WHERE id % 3 = 0;"
            ));
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.expect("load transaction");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    added
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_around_schema_changes_is_exactly_once() {
    let pg = PgServer::start();
    let url = pg.create_database("crashddl").await;
    let db = pg.connect("crashddl").await;
    db.batch_execute("CREATE TABLE log (id int PRIMARY KEY, v int)")
        .await
        .expect("create table");
    let lake = tempfile::tempdir().expect("temp dir");
    let config = config(&url, "crashddl", "log", lake.path());
    // The slot must exist before the load starts: rows from before it are not streamed.
    let mut first = Service::start(&config, &[]);
    first.wait_streaming(Duration::from_secs(30));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load_with_ddl(pg.connect("crashddl").await, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    first.kill9();
    for (round, alive_ms) in [900_u64, 1700, 1300, 2100].into_iter().enumerate() {
        let mut service = Service::start(&config, &[]);
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        assert!(
            service.is_running(),
            "round {round}: pg2lake died:\n{}",
            service.log()
        );
        service.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    let added = loader.await.expect("loader");
    assert!(added >= 3, "only {added} columns were added");

    let mut service = Service::start(&config, &[]);
    wait_caught_up(&db, "crashddl", Duration::from_secs(120)).await;
    let columns: Vec<String> = (1..=added).map(|i| format!("c{i}")).collect();
    let expected = source_state(
        &db,
        &format!("SELECT id, v, {} FROM log", columns.join(", ")),
    )
    .await;
    let read = read_delta(&lake_table(lake.path(), "log"), &[]);
    for column in &columns {
        assert!(
            read.columns().contains(&column.as_str()),
            "{column} in the lake"
        );
    }
    assert_state(read.rows, &expected, "after kill -9 rounds");
    assert!(service.stop(STOP).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_mid_transaction_lands_in_an_s3_lake() {
    let s3 = S3Server::start();
    let pg = PgServer::start();
    let url = pg.create_database("s3evolve").await;
    let db = pg.connect("s3evolve").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await
        .expect("create table");
    let lake_url = format!("s3://{}/lake", s3.bucket);
    let config = ConfigFile::new(&config_yaml(
        &url,
        "s3evolve",
        &["public.t"],
        &lake_url,
        &format!(
            "  endpoint: {}\n  region: us-east-1\n  allow_http: true\n",
            s3.endpoint
        ),
    ));
    let credentials = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
    ];
    let mut service = Service::start(&config, &credentials);
    service.wait_streaming(Duration::from_secs(30));
    // Old-layout rows are written and pending when the layout grows: both kinds of files
    // go into the same Delta version, written through the S3 store.
    db.batch_execute(
        "BEGIN;
         INSERT INTO t SELECT g, g FROM generate_series(1, 50) g;
         ALTER TABLE t ADD COLUMN note text;
         INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(51, 100) g;
         COMMIT;",
    )
    .await
    .expect("alter mid-transaction");
    wait_caught_up(&db, "s3evolve", CATCH_UP).await;
    let read = read_delta(&format!("{lake_url}/public/t"), &s3.storage_options());
    assert_eq!(
        read.version, 1,
        "one Delta version for the source transaction"
    );
    assert!(read.columns().contains(&"note"));
    let state = fold(read.rows, "id");
    assert_eq!(state.len(), 100);
    assert_eq!(state["7"]["note"], Value::Null);
    assert_eq!(state["77"]["note"], json!("n77"));
    assert!(service.stop(STOP).success(), "{}", service.log());
}
