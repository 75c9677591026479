//! `pg2lake verify` against a real Postgres and a lake written by `pg2lake run`: equal
//! lakes verify clean while writes go on, on the primary and on a read replica; damaged
//! lakes are caught with the keys named.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::bank::{SCHEMA, load};
use support::lake::wait_caught_up;
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgServer, read_delta, venv_python};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `pg2lake verify --json` with `args`; returns the exit code and the report.
fn verify(config: &ConfigFile, args: &[&str]) -> (i32, Value, Output) {
    let path = config.path().display().to_string();
    let mut all = vec!["verify", "--config", path.as_str(), "--json"];
    all.extend_from_slice(args);
    let out = run_command(&all, &[], TIMEOUT);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, out)
}

/// Runs verify with `args` and asserts exit 0 with every table equal, non-empty, and the
/// same row count on both sides.
fn assert_all_equal(config: &ConfigFile, args: &[&str], what: &str) {
    let (code, report, out) = verify(config, args);
    assert_eq!(
        code,
        0,
        "{what}: {report:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in report["tables"].as_array().expect("tables") {
        assert_eq!(table["status"], "equal", "{what}: {table:#}");
        assert!(
            table["source_rows"].as_u64().expect("rows") > 0,
            "{what}: {table:#}"
        );
        assert_eq!(
            table["source_rows"], table["lake_rows"],
            "{what}: {table:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_equal_lake_verifies_clean_on_the_primary_and_a_replica_while_writes_go_on() {
    let pg = PgServer::start();
    let url = pg.create_database("bank").await;
    let db = pg.connect("bank").await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "verify",
        &["public.accounts", "public.ledger"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("bank").await, stop.clone(), 11));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Twice while the load goes on: the position makes it exact.
    for round in 0..2 {
        assert_all_equal(&config, &[], &format!("primary, round {round}"));
    }
    // A hot standby of the source, read at its replayed position (--source-url).
    let standby = pg.start_standby();
    let replica_url = standby.url("bank");
    for round in 0..2 {
        let round_started = Instant::now();
        assert_all_equal(
            &config,
            &["--source-url", &replica_url],
            &format!("replica, round {round}"),
        );
        eprintln!(
            "verify on the replica, round {round}: {:.1}s",
            round_started.elapsed().as_secs_f64()
        );
    }
    // Replay runs again: a row written now reaches the standby.
    db.batch_execute("INSERT INTO accounts VALUES (100000, 1, 'after verify')")
        .await
        .expect("insert");
    let replica = standby.connect("bank").await;
    support::wait_until_async(TIMEOUT, "the standby replaying after verify", || async {
        replica
            .query_opt("SELECT 1 FROM accounts WHERE id = 100000", &[])
            .await
            .expect("query the standby")
            .is_some()
    })
    .await;

    // The primary is not a replica: refused, exit 3, nothing compared.
    let (code, _, out) = verify(&config, &["--source-url", &url]);
    assert_eq!(code, 3, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a read replica"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same source against a lake that lacks the tables (a wrong lake.url, a deleted
    // folder): a difference, never a pass.
    let empty = tempfile::tempdir().expect("empty lake dir");
    let elsewhere = ConfigFile::new(&config_yaml(
        &url,
        "verify",
        &["public.accounts", "public.ledger"],
        &empty.path().display().to_string(),
        "",
    ));
    let (code, report, _) = verify(&elsewhere, &[]);
    assert_eq!(code, 1, "{report:#}");
    for table in report["tables"].as_array().expect("tables") {
        assert_eq!(table["status"], "different", "{table:#}");
        assert!(
            table["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no table")),
            "{table:#}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    loader.await.expect("loader");
    wait_caught_up(&db, "verify", TIMEOUT).await;
    assert!(service.stop(Duration::from_secs(30)).success());
}

/// Runs damage_lake.py on the Delta table in `table_dir`; returns what it printed.
fn damage(table_dir: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/damage_lake.py");
    let out = Command::new(venv_python())
        .arg(script)
        .arg(table_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run damage_lake.py");
    assert!(
        out.status.success(),
        "damage_lake.py {} {args:?} failed ({}):\n{}",
        table_dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "damage_lake.py printed invalid JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The report of `table` in `report`; panics when it is not there.
fn table_report<'a>(report: &'a Value, table: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == format!("public.{table}"))
        .unwrap_or_else(|| panic!("no report of public.{table}: {report:#}"))
}

/// The keys `table` reports, as id → difference; panics unless every key is `{"id": …}`.
fn differing_keys(table: &Value) -> BTreeMap<i64, String> {
    let mut keys = BTreeMap::new();
    for entry in table["keys"].as_array().expect("keys") {
        let key = entry["key"].as_object().expect("key is an object");
        assert_eq!(key.len(), 1, "only the key column is reported: {entry}");
        let id: i64 = key["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("id is an integer as text: {entry}"));
        let difference = entry["difference"].as_str().expect("difference").to_owned();
        assert!(
            keys.insert(id, difference).is_none(),
            "key {id} listed twice: {table:#}"
        );
    }
    keys
}

/// Asserts that `table` differs in exactly `expected` (id → difference), with these row
/// counts on either side.
fn assert_different(report: &Value, table: &str, rows: (u64, u64), expected: &[(i64, &str)]) {
    let found = table_report(report, table);
    assert_eq!(found["status"], "different", "{found:#}");
    let expected: BTreeMap<i64, String> = expected
        .iter()
        .map(|(id, kind)| (*id, (*kind).to_owned()))
        .collect();
    assert_eq!(differing_keys(found), expected, "{table}: {found:#}");
    assert_eq!(found["keys_truncated"], false, "{found:#}");
    let buckets = found["differing_buckets"]
        .as_u64()
        .expect("differing_buckets");
    assert!(
        (1..=expected.len() as u64).contains(&buckets),
        "{expected:?} lie in 1 to {} buckets: {found:#}",
        expected.len()
    );
    assert_eq!(
        (found["source_rows"].as_u64(), found["lake_rows"].as_u64()),
        (Some(rows.0), Some(rows.1)),
        "source and lake rows of {table}: {found:#}"
    );
}

/// Asserts that `table` compared equal with `rows` rows on both sides.
fn assert_equal(report: &Value, table: &str, rows: u64) {
    let found = table_report(report, table);
    assert_eq!(found["status"], "equal", "{found:#}");
    assert_eq!(found["keys"], serde_json::json!([]), "{found:#}");
    assert_eq!(found["differing_buckets"], 0, "{found:#}");
    assert_eq!(
        (found["source_rows"].as_u64(), found["lake_rows"].as_u64()),
        (Some(rows), Some(rows)),
        "{found:#}"
    );
}

/// Asserts that nothing `verify` printed holds a value of a non-key column: every `v`
/// written below starts with `secret-`, the tampered one is `tampered-value`.
fn assert_no_values(out: &Output) {
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(text);
        for value in ["secret-", "tampered-value"] {
            assert!(
                !text.contains(value),
                "{stream} shows the non-key value {value:?}:\n{text}"
            );
        }
    }
}

/// Each table gets one kind of damage; `untouched` none.
const TABLES: [&str; 7] = [
    "untouched",
    "dropped_row",
    "changed_value",
    "copied_file",
    "readded_file",
    "removed_file",
    "missed_truncate",
];

/// `INSERT` of ids `from..=to` into `table`, each `v` naming table and id.
fn insert(table: &str, from: i64, to: i64) -> String {
    format!(
        "INSERT INTO {table} SELECT g, 'secret-{table}-' || g FROM generate_series({from}, {to}) g;"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_lake_is_caught_with_the_keys_named() {
    let started = Instant::now();
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    for table in TABLES {
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL);"
        ))
        .await
        .expect("create table");
    }
    let lake = tempfile::tempdir().expect("lake dir");
    let names: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "verify",
        &names,
        &lake.path().display().to_string(),
        "",
    ));
    let table_dir = |table: &str| lake.path().join("public").join(table);
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);

    // Two rounds of transactions, each round committed to the lake before the next, so
    // that the rounds lie in different data files of each table.
    let first_round = [
        insert("untouched", 1, 5),
        insert("dropped_row", 1, 10),
        insert("changed_value", 1, 10),
        insert("copied_file", 1, 3),
        insert("readded_file", 1, 3),
        insert("removed_file", 1, 3),
        insert("missed_truncate", 1, 5),
    ];
    for sql in &first_round {
        db.batch_execute(sql).await.expect("first round");
    }
    wait_caught_up(&db, "verify", TIMEOUT).await;
    let second_round = [
        insert("copied_file", 4, 6),
        "DELETE FROM copied_file WHERE id = 3;".to_owned(),
        insert("readded_file", 4, 6),
        format!(
            "BEGIN; {} UPDATE removed_file SET v = 'secret-removed_file-updated' WHERE id = 1; COMMIT;",
            insert("removed_file", 4, 6)
        ),
        "TRUNCATE missed_truncate;".to_owned(),
        format!(
            "INSERT INTO missed_truncate VALUES (1, 'secret-missed_truncate-again'); {}",
            insert("missed_truncate", 6, 7)
        ),
    ];
    for sql in &second_round {
        db.batch_execute(sql).await.expect("second round");
    }
    wait_caught_up(&db, "verify", TIMEOUT).await;

    // The undamaged lake verifies clean: what follows is the damage's doing.
    let (code, report, out) = verify(&config, &[]);
    assert_eq!(
        code,
        0,
        "{report:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_equal(&report, "missed_truncate", 3);
    assert_equal(&report, "removed_file", 6);

    // Damage only committed files, with pg2lake stopped: it neither writes meanwhile nor
    // holds a stale view of a log that grew under it. Its restart keeps every file the log
    // references (also the removed one: a removal stays referenced for time travel).
    assert!(service.stop(Duration::from_secs(30)).success());
    let dropped = damage(&table_dir("dropped_row"), &["drop-row", "--id", "3"]);
    assert_eq!(
        dropped["rows_after"].as_u64().map(|n| n + 1),
        dropped["rows_before"].as_u64(),
        "{dropped}"
    );
    let changed = damage(
        &table_dir("changed_value"),
        &[
            "set-value",
            "--id",
            "5",
            "--column",
            "v",
            "--value",
            "tampered-value",
        ],
    );
    assert_eq!(changed["rows_after"], changed["rows_before"], "{changed}");
    // The first round's file of copied_file (keys 1 to 3) committed a second time, as a
    // copy under another name: the same changes twice in the log.
    damage(&table_dir("copied_file"), &["copy-add", "--id", "1"]);
    // The same file added again under its own name: Delta's log replay keeps one `add`
    // per path (the newest), so the table still holds each change once. The independent
    // reader sees it so; verify must agree rather than count the file twice.
    let readded = damage(&table_dir("readded_file"), &["readd", "--id", "1"]);
    let read = read_delta(&table_dir("readded_file").display().to_string(), &[]);
    assert_eq!(Some(read.version), readded["version"].as_i64(), "{readded}");
    assert_eq!((read.files.len(), read.rows.len()), (2, 6), "{read:?}");
    // The second round's file of removed_file (keys 4 to 6 and the update of key 1) taken
    // out of the log.
    damage(&table_dir("removed_file"), &["remove", "--id", "4"]);
    // The truncate never reached the lake.
    damage(&table_dir("missed_truncate"), &["drop-truncates"]);
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);

    let (code, report, out) = verify(&config, &[]);
    assert_eq!(
        code,
        1,
        "{report:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_values(&out);
    assert_eq!(
        report["tables"].as_array().map(Vec::len),
        Some(TABLES.len()),
        "{report:#}"
    );
    assert_equal(&report, "untouched", 5);
    assert_equal(&report, "readded_file", 6);
    assert_different(&report, "dropped_row", (10, 9), &[(3, "missing_in_lake")]);
    assert_different(&report, "changed_value", (10, 10), &[(5, "values_differ")]);
    // Keys 1 and 2 exist with their changes twice; key 3 is deleted in the source and the
    // lake (so the lake holds 5 rows), but its history holds a change twice.
    assert_different(
        &report,
        "copied_file",
        (5, 5),
        &[
            (1, "duplicated_change"),
            (2, "duplicated_change"),
            (3, "duplicated_change"),
        ],
    );
    assert_different(
        &report,
        "removed_file",
        (6, 3),
        &[
            (1, "values_differ"),
            (4, "missing_in_lake"),
            (5, "missing_in_lake"),
            (6, "missing_in_lake"),
        ],
    );
    // Key 1 came back after the truncate: its last change is right, truncate or not.
    assert_different(
        &report,
        "missed_truncate",
        (3, 7),
        &[
            (2, "not_in_source"),
            (3, "not_in_source"),
            (4, "not_in_source"),
            (5, "not_in_source"),
        ],
    );

    // The human report names the same keys, and no values either.
    let path = config.path().display().to_string();
    let out = run_command(&["verify", "--config", &path], &[], TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_no_values(&out);
    for line in [
        "id=3: missing in lake",
        "id=5: values differ",
        "id=2: not in source",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }

    // --table: only that table is compared, and only its outcome sets the exit code.
    let (code, report, out) = verify(&config, &["--table", "public.changed_value"]);
    assert_eq!(
        code,
        1,
        "{report:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_values(&out);
    assert_eq!(
        report["tables"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert_different(&report, "changed_value", (10, 10), &[(5, "values_differ")]);
    let (code, report, out) = verify(&config, &["--table", "public.untouched"]);
    assert_eq!(
        code,
        0,
        "{report:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        report["tables"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert_equal(&report, "untouched", 5);
    let (code, _, out) = verify(&config, &["--table", "public.nowhere"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code, 3, "stderr: {stderr}");
    assert!(
        stderr.contains("public.nowhere"),
        "names the table: {stderr}"
    );

    // pg2lake stopped with changes pending: the position is never confirmed.
    assert!(service.stop(Duration::from_secs(30)).success());
    db.batch_execute(&insert("untouched", 6, 8))
        .await
        .expect("pending insert");
    let asked = Instant::now();
    let (code, report, out) = verify(&config, &["--wait", "2s"]);
    let waited = asked.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code, 3, "{report:#}\nstderr: {stderr}");
    assert_eq!(report, Value::Null, "no report when nothing was compared");
    assert!(
        stderr.contains("make sure `pg2lake run` is streaming"),
        "tells to check that pg2lake runs: {stderr}"
    );
    assert!(
        waited >= Duration::from_secs(2),
        "waited {waited:?}: {stderr}"
    );
    eprintln!("a damaged lake is caught: {:?}", started.elapsed());
}
