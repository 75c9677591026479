//! The initial snapshot: rows that exist before pg2lake starts land as `_op = 'r'`, and
//! the handoff to streaming misses nothing and doubles nothing — under concurrent writes,
//! across separate `snapshot` and `run` processes, and after a kill -9 mid-copy.

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use support::lake::{Row, assert_no_duplicates, fold, lsn, op, wait_caught_up};
use support::load::{Rng, write_until};
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgServer, read_delta, try_read_delta};

const CATCH_UP: Duration = Duration::from_secs(120);
const COMMAND: Duration = Duration::from_secs(180);
const STOP: Duration = Duration::from_secs(30);

fn lake_table(lake: &std::path::Path, table: &str) -> String {
    lake.join("public").join(table).display().to_string()
}

fn lake_rows(lake: &std::path::Path, table: &str) -> Vec<Row> {
    read_delta(&lake_table(lake, table), &[]).rows
}

fn snapshot(config: &ConfigFile, extra: &[&str]) -> Output {
    let path = config.path().display().to_string();
    let mut args = vec![
        "snapshot",
        "--config",
        path.as_str(),
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    run_command(&args, &[], COMMAND)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_success(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "exit code; stdout:\n{}\nstderr:\n{}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn slot_count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .expect("count slots")
        .get(0)
}

/// Writes transactions of inserts, updates and deletes over `items` (ids 1..=keys) until
/// `stop` is set. Returns how many committed.
async fn write_load(client: tokio_postgres::Client, stop: Arc<AtomicBool>, keys: u64) -> u64 {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    write_until(client, stop, Duration::ZERO, |_| {
        let mut sql = String::from("BEGIN;");
        for _ in 0..1 + rng.below(5) {
            let id = 1 + rng.below(keys);
            match rng.below(3) {
                0 => sql.push_str(&format!(
                    "INSERT INTO items VALUES ({id}, {}, 'i{}') ON CONFLICT (id) DO UPDATE SET qty = EXCLUDED.qty, note = EXCLUDED.note;",
                    rng.below(1000),
                    rng.next()
                )),
                1 => sql.push_str(&format!(
                    "UPDATE items SET qty = qty + 1, note = 'u{}' WHERE id = {id};",
                    rng.next()
                )),
                _ => sql.push_str(&format!("DELETE FROM items WHERE id = {id};")),
            }
        }
        sql.push_str("COMMIT;");
        sql
    })
    .await
}

/// The folded lake of `table` (keyed by `id`, columns id/qty/note) equals the source.
async fn assert_items_equal(client: &tokio_postgres::Client, lake: &std::path::Path, table: &str) {
    let rows = lake_rows(lake, table);
    assert_no_duplicates(&rows);
    let state = fold(rows, "id");
    let source = client
        .query(
            &format!("SELECT id, qty, note FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .expect("read the source");
    assert_eq!(
        state.len(),
        source.len(),
        "{table}: rows of the folded lake"
    );
    for row in &source {
        let id: i32 = row.get(0);
        let lake_row = state
            .get(&json!(id).to_string())
            .unwrap_or_else(|| panic!("{table}: row {id} missing in the lake"));
        assert_eq!(
            lake_row["qty"],
            json!(row.get::<_, Option<i32>>(1)),
            "{table}: qty of {id}"
        );
        assert_eq!(
            lake_row["note"],
            json!(row.get::<_, Option<String>>(2)),
            "{table}: note of {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_snapshots_existing_rows_and_hands_off_exactly_under_writes() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty int, note text);
         INSERT INTO items SELECT g, g % 100, 'n' || g || E'\\ttab\\nline\\\\' FROM generate_series(1, 20000) g;
         CREATE TABLE empty_t (id int PRIMARY KEY, v text);
         CREATE TABLE nopk (a int, b text);
         INSERT INTO nopk SELECT g % 7, NULL FROM generate_series(1, 500) g;
         CREATE TABLE kinds (id int PRIMARY KEY, price numeric(12,2), day date, at timestamptz,
             data bytea, flag bool);
         INSERT INTO kinds VALUES (1, 12.34, '2026-11-22', '2026-11-22 10:00:00.5+02', '\\x00ff0a5c', true),
                                  (2, NULL, NULL, NULL, NULL, NULL);",
    )
    .await
    .expect("create tables");
    let lake = tempfile::tempdir().expect("tempdir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "snap",
        &[
            "public.items",
            "public.empty_t",
            "public.nopk",
            "public.kinds",
        ],
        &lake.path().display().to_string(),
        "",
    ));

    // Writes run before, during and after the snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(write_load(pg.connect("shop").await, stop.clone(), 25_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let committed = loader.await.expect("loader");
    assert!(
        committed > 20,
        "the load committed only {committed} transactions"
    );
    db.batch_execute(
        "INSERT INTO empty_t VALUES (1, 'late'); INSERT INTO nopk VALUES (99, 'late');",
    )
    .await
    .expect("late inserts");
    wait_caught_up(&db, "snap", CATCH_UP).await;

    let log = service.log();
    assert!(log.contains("snapshot of table committed"), "{log}");
    assert_items_equal(&db, lake.path(), "items").await;

    let items = lake_rows(lake.path(), "items");
    let reads: Vec<&Row> = items.iter().filter(|r| op(r) == "r").collect();
    assert!(
        items.iter().any(|r| op(r) != "r"),
        "the load wrote changes after the snapshot's position"
    );
    assert!(!reads.is_empty(), "snapshot rows are `r`");
    let snapshot_lsn = lsn(reads[0]);
    assert!(
        reads.iter().all(|r| lsn(r) == snapshot_lsn),
        "one snapshot position"
    );
    assert!(
        reads.iter().all(|r| r["_xid"].is_null()),
        "snapshot rows have no xid"
    );
    assert!(
        items
            .iter()
            .filter(|r| op(r) != "r")
            .all(|r| lsn(r) > snapshot_lsn),
        "every streamed change comes after the snapshot"
    );
    let mut seqs: Vec<i64> = reads.iter().map(|r| support::lake::seq(r)).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=reads.len() as i64).collect::<Vec<_>>(),
        "row ordinals"
    );

    // The empty table streams its first row; the keyless one holds snapshot + stream.
    let empty = lake_rows(lake.path(), "empty_t");
    assert_eq!(empty.len(), 1, "{empty:?}");
    assert_eq!((op(&empty[0]), &empty[0]["v"]), ("c", &json!("late")));
    let nopk = lake_rows(lake.path(), "nopk");
    let warned = service.log().lines().any(|line| {
        line.contains("updates and deletes of this table cannot be captured")
            && line.contains("public.nopk")
    });
    assert!(warned, "a table without a primary key is flagged at start");
    assert_eq!(nopk.iter().filter(|r| op(r) == "r").count(), 500);
    assert_eq!(nopk.iter().filter(|r| op(r) == "c").count(), 1);
    assert!(
        nopk.iter()
            .filter(|r| op(r) == "r")
            .all(|r| r["b"].is_null())
    );

    // Types and escapes through COPY text are those of the streaming path.
    let kinds = fold(lake_rows(lake.path(), "kinds"), "id");
    let one = &kinds["1"];
    assert_eq!(one["price"], json!("12.34"), "{one:?}");
    assert_eq!(one["day"], json!("2026-11-22"), "{one:?}");
    assert_eq!(
        one["at"],
        json!("2026-11-22T08:00:00.500000+00:00"),
        "{one:?}"
    );
    assert_eq!(one["data"], json!("00ff0a5c"), "{one:?}");
    assert_eq!(one["flag"], json!(true), "{one:?}");
    let two = &kinds["2"];
    for column in ["price", "day", "at", "data", "flag"] {
        assert!(two[column].is_null(), "{column} of row 2: {two:?}");
    }
    let note = &fold(lake_rows(lake.path(), "items"), "id");
    let source_note: Option<String> = db
        .query_opt(
            "SELECT note FROM items WHERE id = 19999 AND note LIKE 'n%'",
            &[],
        )
        .await
        .expect("read note")
        .map(|r| r.get(0));
    if let Some(source_note) = source_note {
        assert_eq!(note["19999"]["note"], json!(source_note), "escapes survive");
        assert!(
            source_note.contains('\t') && source_note.contains('\n') && source_note.ends_with('\\')
        );
    }
    assert!(service.stop(STOP).success());
}

/// A table that is empty at the initial load, then written while pg2lake is stopped: the
/// load committed its (empty) position, so the next start streams each of those changes
/// from the slot, one row each, instead of copying the table again.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_table_streams_the_changes_made_while_pg2lake_was_stopped() {
    let pg = PgServer::start();
    let url = pg.create_database("later").await;
    let db = pg.connect("later").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .expect("create table");
    let lake = tempfile::tempdir().expect("temp dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "later",
        &["public.t"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    assert!(service.stop(STOP).success());
    let versions = try_read_delta(&lake_table(lake.path(), "t"), &[]).map(|r| r.version);
    assert_eq!(versions, Some(1), "the empty load is a version of its own");

    db.batch_execute(
        "INSERT INTO t VALUES (1, 'a'), (2, 'b');
         UPDATE t SET v = 'c' WHERE id = 1;
         DELETE FROM t WHERE id = 2;",
    )
    .await
    .expect("writes while stopped");
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(CATCH_UP);
    wait_caught_up(&db, "later", CATCH_UP).await;
    assert!(service.stop(STOP).success());
    let log = service.log();
    assert!(
        !log.contains("created temporary slot for the snapshot"),
        "the table is not copied again:\n{log}"
    );
    let rows = lake_rows(lake.path(), "t");
    let ops: Vec<&str> = rows.iter().map(op).collect();
    assert_eq!(ops, ["c", "c", "u", "d"], "{rows:?}");
    let state = fold(rows, "id");
    assert_eq!(state.len(), 1);
    assert_eq!(state["1"]["v"], json!("c"));
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_command_then_run_misses_and_doubles_nothing() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty int, note text);
         INSERT INTO items SELECT g, g, 'n' || g FROM generate_series(1, 5000) g;
         CREATE TABLE empty_t (id int PRIMARY KEY);",
    )
    .await
    .expect("create tables");
    let lake = tempfile::tempdir().expect("tempdir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "snap2",
        &["public.items", "public.empty_t"],
        &lake.path().display().to_string(),
        "",
    ));

    let out = snapshot(&config, &[]);
    assert_success(&out);
    let summary = stdout(&out);
    assert!(summary.contains("slot snap2 kept"), "{summary}");
    let line = summary
        .lines()
        .find(|l| l.starts_with("public.items"))
        .unwrap_or_else(|| panic!("no line for public.items in {summary}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "5000", "{line}");
    assert!(
        fields[2].parse::<u64>().expect("bytes") > 5000 * 4,
        "{line}"
    );
    assert!(fields[3].parse::<f64>().is_ok(), "{line}");
    assert!(summary.contains("public.empty_t"), "{summary}");
    assert_eq!(slot_count(&db).await, 1, "the slot stays for run");
    let reads = lake_rows(lake.path(), "items");
    assert_eq!(reads.len(), 5000);
    assert!(reads.iter().all(|r| op(r) == "r"));

    // Changes between the two processes come from the slot.
    db.batch_execute(
        "UPDATE items SET qty = -1 WHERE id <= 10; DELETE FROM items WHERE id BETWEEN 11 AND 20;
         INSERT INTO items VALUES (9001, 1, 'new'); INSERT INTO empty_t VALUES (7);",
    )
    .await
    .expect("changes");

    // A second snapshot copies nothing loaded already.
    let again = snapshot(&config, &[]);
    assert_success(&again);
    assert!(
        stdout(&again).contains("public.items"),
        "{}",
        stdout(&again)
    );
    assert!(stdout(&again).contains("skipped"), "{}", stdout(&again));
    assert_eq!(
        lake_rows(lake.path(), "items").len(),
        5000,
        "nothing copied twice"
    );

    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute("UPDATE items SET note = 'after' WHERE id = 30")
        .await
        .expect("change while running");
    wait_caught_up(&db, "snap2", CATCH_UP).await;
    assert_items_equal(&db, lake.path(), "items").await;
    let empty = fold(lake_rows(lake.path(), "empty_t"), "id");
    assert_eq!(empty.keys().collect::<Vec<_>>(), vec!["7"]);
    assert!(service.stop(STOP).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_slot_snapshot_leaves_no_slot() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty int, note text);
         INSERT INTO items SELECT g, g, NULL FROM generate_series(1, 1000) g;",
    )
    .await
    .expect("create tables");
    let lake = tempfile::tempdir().expect("tempdir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "once",
        &["public.items"],
        &lake.path().display().to_string(),
        "",
    ));
    let out = snapshot(&config, &["--no-slot"]);
    assert_success(&out);
    assert!(
        stdout(&out).contains("no slot left behind"),
        "{}",
        stdout(&out)
    );
    assert_eq!(slot_count(&db).await, 0, "no slot after --no-slot");
    let publications: i64 = db
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .expect("count publications")
        .get(0);
    assert_eq!(publications, 0, "no publication after --no-slot");
    let current: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    let rows = lake_rows(lake.path(), "items");
    assert_eq!(rows.len(), 1000);
    assert!(rows.iter().all(|r| op(r) == "r"));
    let (hi, lo) = current.split_once('/').expect("lsn text");
    let current = (u64::from_str_radix(hi, 16).expect("hex") << 32)
        | u64::from_str_radix(lo, 16).expect("hex");
    assert!(
        rows.iter()
            .all(|r| lsn(r) > 0 && (lsn(r) as u64) <= current)
    );
    assert_items_equal(&db, lake.path(), "items").await;
}

/// Starts `pg2lake snapshot` in the background, logging to `log`.
fn spawn_snapshot(config: &ConfigFile, log: &std::path::Path) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    Command::new(support::pg2lake_bin())
        .args(["snapshot", "--config"])
        .arg(config.path())
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("start pg2lake snapshot")
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_snapshot_then_rerun_is_exact() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE a_small (id int PRIMARY KEY, qty int, note text);
         INSERT INTO a_small SELECT g, g, 's' FROM generate_series(1, 100) g;
         CREATE TABLE big (id int PRIMARY KEY, qty int, note text);
         INSERT INTO big SELECT g, g % 1000, repeat('x', 20) || g FROM generate_series(1, 300000) g;
         ANALYZE big;",
    )
    .await
    .expect("create tables");
    let lake = tempfile::tempdir().expect("tempdir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "killed",
        &["public.a_small", "public.big"],
        &lake.path().display().to_string(),
        "",
    ));
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("snapshot.log");
    let mut child = spawn_snapshot(&config, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    support::wait_until(Duration::from_secs(60), "big's copy started", || {
        read_log()
            .lines()
            .any(|l| l.contains("snapshot of table started") && l.contains("public.big"))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the snapshot finished before the kill; make the table bigger:\n{}",
        read_log()
    );
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(
        !read_log()
            .lines()
            .any(|l| l.contains("snapshot of table committed") && l.contains("public.big")),
        "big was committed before the kill"
    );
    // The killed table shows nothing; the one finished before stays.
    let big = try_read_delta(&lake_table(lake.path(), "big"), &[]);
    assert!(
        big.is_none_or(|b| b.rows.is_empty()),
        "half a table is visible"
    );
    assert_eq!(lake_rows(lake.path(), "a_small").len(), 100);

    // Changes while nothing runs, to both tables.
    db.batch_execute(
        "UPDATE a_small SET qty = -1 WHERE id <= 5; DELETE FROM big WHERE id <= 100;
         UPDATE big SET note = 'changed' WHERE id BETWEEN 101 AND 200; INSERT INTO a_small VALUES (1000, 1, 'n');",
    )
    .await
    .expect("changes");
    let out = snapshot(&config, &[]);
    assert_success(&out);
    let summary = stdout(&out);
    assert!(
        summary.contains("a_small") && summary.contains("skipped"),
        "{summary}"
    );
    let big_line = summary
        .lines()
        .find(|l| l.starts_with("public.big"))
        .unwrap_or_else(|| panic!("no line for public.big in {summary}"));
    assert_eq!(
        big_line.split_whitespace().nth(1),
        Some("299900"),
        "{big_line}"
    );
    assert_eq!(
        slot_count(&db).await,
        1,
        "only the slot is left, no temporary one"
    );

    db.batch_execute(
        "UPDATE big SET qty = -7 WHERE id = 300000; DELETE FROM a_small WHERE id = 6;",
    )
    .await
    .expect("more changes");
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    wait_caught_up(&db, "killed", CATCH_UP).await;
    assert_items_equal(&db, lake.path(), "a_small").await;
    assert_items_equal(&db, lake.path(), "big").await;
    assert!(service.stop(STOP).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_table_is_a_one_line_error_and_leaves_no_slot() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE open_t (id int PRIMARY KEY);
         CREATE TABLE secret (id int PRIMARY KEY);
         INSERT INTO secret VALUES (1);
         CREATE PUBLICATION locked FOR TABLE open_t, secret WITH (publish_via_partition_root = true);
         CREATE ROLE rep LOGIN REPLICATION;
         GRANT SELECT ON open_t TO rep;",
    )
    .await
    .expect("create tables and role");
    let lake = tempfile::tempdir().expect("tempdir");
    let url = url.replacen(&format!("{}@", pg.superuser()), "rep@", 1);
    let config = ConfigFile::new(&config_yaml(
        &url,
        "locked",
        &["public.open_t", "public.secret"],
        &lake.path().display().to_string(),
        "",
    ));
    for command in ["snapshot", "run"] {
        let path = config.path().display().to_string();
        let out = run_command(
            &[command, "--config", &path, "--log-format", "json"],
            &[],
            COMMAND,
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(line.starts_with("error: "), "{command}: {line}");
        for needle in ["rep", "\"public\".\"secret\"", "GRANT SELECT"] {
            assert!(
                line.contains(needle),
                "{command}: {line:?} should mention {needle:?}"
            );
        }
        assert_eq!(slot_count(&db).await, 0, "{command}: no slot created");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_snapshot_of_run_stops_cleanly_and_restart_completes() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, qty int, note text);
         INSERT INTO big SELECT g, g % 1000, repeat('y', 20) || g FROM generate_series(1, 300000) g;
         ANALYZE big;",
    )
    .await
    .expect("create tables");
    let lake = tempfile::tempdir().expect("tempdir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "stopped",
        &["public.big"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    support::wait_until(Duration::from_secs(60), "big's copy started", || {
        service.log().contains("snapshot of table started")
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !service.log().contains("snapshot of table committed"),
        "the copy finished before the stop; make the table bigger"
    );
    let status = service.stop(STOP);
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        service.log()
    );
    let big = try_read_delta(&lake_table(lake.path(), "big"), &[]);
    assert!(
        big.is_none_or(|b| b.rows.is_empty()),
        "half a table is visible"
    );
    assert_eq!(
        slot_count(&db).await,
        1,
        "the slot stays; no temporary slot is left"
    );

    db.batch_execute("DELETE FROM big WHERE id <= 1000; UPDATE big SET qty = -1 WHERE id = 2000;")
        .await
        .expect("changes while stopped");
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(120));
    db.batch_execute("INSERT INTO big VALUES (300001, 1, 'new')")
        .await
        .expect("change while running");
    wait_caught_up(&db, "stopped", CATCH_UP).await;
    assert_items_equal(&db, lake.path(), "big").await;
    let log = service.log();
    assert!(
        log.contains("created temporary slot for the snapshot"),
        "{log}"
    );
    assert!(service.stop(STOP).success());
}
