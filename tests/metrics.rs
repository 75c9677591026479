//! The metrics endpoint of `pg2lake run` against a real PostgreSQL: every documented
//! metric is exposed, counters follow the changes written, and the probes follow the
//! stream (not ready while another consumer holds the slot or Postgres is down).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::lake::wait_caught_up;
use support::scrape::{get, sample, sample_or_panic, try_get, with_metrics};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgServer, wait_until};

const CATCH_UP: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(30);
/// How long the probes may take to follow a change of state (slot recheck is 5 s).
const PROBE_FOLLOWS: Duration = Duration::from_secs(30);

/// The test's own copy of the documented metric names: it must equal
/// `pg2lake::metrics::METRIC_NAMES`, so the README table cannot drift from the code.
const DOCUMENTED: &[&str] = &[
    "pg2lake_replication_lag_bytes",
    "pg2lake_replication_lag_seconds",
    "pg2lake_received_lsn",
    "pg2lake_committed_lsn",
    "pg2lake_confirmed_lsn",
    "pg2lake_slot_retained_wal_bytes",
    "pg2lake_slot_active",
    "pg2lake_slot_wal_status",
    "pg2lake_slot_safe_wal_size_bytes",
    "pg2lake_changes_total",
    "pg2lake_rows_written_total",
    "pg2lake_parquet_files_total",
    "pg2lake_parquet_bytes_total",
    "pg2lake_delta_commits_total",
    "pg2lake_schema_changes_total",
    "pg2lake_flush_duration_seconds",
    "pg2lake_errors_total",
    "pg2lake_reconnects_total",
    "pg2lake_memory_buffered_bytes",
    "pg2lake_memory_budget_bytes",
    "pg2lake_streamed_transactions",
    "pg2lake_object_store_requests_total",
    "pg2lake_object_store_errors_total",
    "pg2lake_object_store_retries_total",
    "pg2lake_snapshot_rows",
    "pg2lake_snapshot_rows_estimated",
    "pg2lake_snapshot_tables_pending",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
];

/// `pg_recvlogical` streaming from `slot`: another consumer that holds the slot.
fn hold_slot(pg: &PgServer, url: &str, slot: &str) -> Child {
    Command::new(pg.bin_dir().join("pg_recvlogical"))
        .args(["-d", url, "--slot", slot, "--start", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={slot}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pg_recvlogical")
}

#[test]
fn documented_names_are_the_emitted_ones() {
    assert_eq!(DOCUMENTED, pg2lake::metrics::METRIC_NAMES);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_changes_and_probes_follow_the_stream() {
    let mut pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         CREATE PUBLICATION m FOR TABLE orders, customers WITH (publish_via_partition_root = true);",
    )
    .await
    .expect("schema and publication");
    // A slot cannot be created in the implicit transaction of the statements above.
    db.batch_execute("SELECT pg_create_logical_replication_slot('m', 'pgoutput')")
        .await
        .expect("slot");
    let mut holder = hold_slot(&pg, &url, "m");
    wait_until(
        Duration::from_secs(10),
        "pg_recvlogical holds the slot",
        || {
            pg.psql(
                "shop",
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'm'",
            ) == "t"
        },
    );

    let port = support::free_port();
    let lake = tempfile::tempdir().expect("lake dir");
    let yaml = config_yaml(
        &url,
        "m",
        &["public.orders", "public.customers"],
        &lake.path().display().to_string(),
        "",
    );
    let config = ConfigFile::new(&with_metrics(&yaml, port, "  ready_max_lag: 1h\n"));
    let mut service = Service::start(&config, &[]);

    // Before streaming: alive, not ready.
    wait_until(Duration::from_secs(30), "the metrics endpoint", || {
        try_get(port, "/healthz").is_some()
    });
    wait_until(PROBE_FOLLOWS, "pg2lake waiting for the busy slot", || {
        service.log().contains("in use by another process")
    });
    assert_eq!(get(port, "/healthz").0, 200);
    let (status, body) = get(port, "/readyz");
    assert_eq!(status, 503, "ready while another process holds the slot");
    assert!(body.contains("not streaming"), "{body}");
    let (status, before) = get(port, "/metrics");
    assert_eq!(status, 200);
    for name in DOCUMENTED {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} not exposed before streaming:\n{before}"
        );
    }

    // The other consumer goes away: pg2lake takes the slot and becomes ready.
    holder.kill().expect("stop pg_recvlogical");
    holder.wait().expect("wait pg_recvlogical");
    wait_until(PROBE_FOLLOWS, "/readyz 200 once streaming", || {
        get(port, "/readyz").0 == 200
    });

    db.batch_execute(
        "INSERT INTO orders VALUES (1, 'a'), (2, 'b'), (3, 'c');
         UPDATE orders SET note = 'B' WHERE id = 2;
         DELETE FROM orders WHERE id = 3;
         BEGIN; INSERT INTO customers VALUES (1, 'ada'), (2, 'grace'); COMMIT;",
    )
    .await
    .expect("changes");
    wait_caught_up(&db, "m", CATCH_UP).await;
    // The slot poll runs on the heartbeat tick (2 s in tests).
    wait_until(PROBE_FOLLOWS, "slot reported active", || {
        sample(&get(port, "/metrics").1, "pg2lake_slot_active") == Some(1.0)
    });

    let (_, text) = get(port, "/metrics");
    for name in DOCUMENTED {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} not exposed:\n{text}"
        );
    }
    let expect = |series: &str, value: f64| {
        assert_eq!(sample_or_panic(&text, series), value, "{series}");
    };
    expect(
        r#"pg2lake_changes_total{op="insert",table="public.orders"}"#,
        3.0,
    );
    expect(
        r#"pg2lake_changes_total{op="update",table="public.orders"}"#,
        1.0,
    );
    expect(
        r#"pg2lake_changes_total{op="delete",table="public.orders"}"#,
        1.0,
    );
    expect(
        r#"pg2lake_changes_total{op="truncate",table="public.orders"}"#,
        0.0,
    );
    expect(
        r#"pg2lake_changes_total{op="insert",table="public.customers"}"#,
        2.0,
    );
    expect(r#"pg2lake_rows_written_total{table="public.orders"}"#, 5.0);
    expect(
        r#"pg2lake_rows_written_total{table="public.customers"}"#,
        2.0,
    );
    expect(r#"pg2lake_slot_wal_status{status="reserved"}"#, 1.0);
    expect(r#"pg2lake_slot_wal_status{status="lost"}"#, 0.0);
    expect("pg2lake_memory_budget_bytes", 512.0 * 1024.0 * 1024.0);
    // Commits are create-only puts of log entries; a local lake fails none of them.
    assert!(sample_or_panic(&text, r#"pg2lake_object_store_requests_total{op="put"}"#) >= 2.0);
    expect(r#"pg2lake_object_store_errors_total{op="put"}"#, 0.0);
    for table in ["public.orders", "public.customers"] {
        for counter in [
            "pg2lake_delta_commits_total",
            "pg2lake_parquet_files_total",
            "pg2lake_parquet_bytes_total",
        ] {
            let series = format!(r#"{counter}{{table="{table}"}}"#);
            assert!(sample_or_panic(&text, &series) >= 1.0, "{series}");
        }
    }
    assert!(sample_or_panic(&text, "pg2lake_flush_duration_seconds_count") >= 1.0);
    let committed = sample_or_panic(&text, "pg2lake_committed_lsn");
    let confirmed = sample_or_panic(&text, "pg2lake_confirmed_lsn");
    assert!(
        committed > 0.0 && confirmed >= committed,
        "{committed} {confirmed}"
    );
    assert!(sample_or_panic(&text, "process_resident_memory_bytes") > 0.0);
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/nothing").0, 404);

    // Postgres goes away: no longer ready, still alive (reconnecting), and counted.
    drop(db);
    pg.stop();
    wait_until(PROBE_FOLLOWS, "/readyz 503 once postgres is down", || {
        get(port, "/readyz").0 == 503
    });
    wait_until(PROBE_FOLLOWS, "a reconnect attempt counted", || {
        sample(&get(port, "/metrics").1, "pg2lake_reconnects_total").unwrap_or(0.0) >= 1.0
    });
    let (_, text) = get(port, "/metrics");
    assert!(sample_or_panic(&text, r#"pg2lake_errors_total{kind="postgres"}"#) >= 1.0);
    assert_eq!(get(port, "/healthz").0, 200, "reconnecting is alive");
    assert!(service.stop(STOP).success(), "{}", service.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn per_table_labels_off_reports_all_tables_as_one() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);")
        .await
        .expect("tables");
    let port = support::free_port();
    let lake = tempfile::tempdir().expect("lake dir");
    let yaml = config_yaml(
        &url,
        "agg",
        &["public.a", "public.b"],
        &lake.path().display().to_string(),
        "",
    );
    let config = ConfigFile::new(&with_metrics(&yaml, port, "  per_table_labels: false\n"));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(PROBE_FOLLOWS);
    db.batch_execute("INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (1);")
        .await
        .expect("changes");
    wait_caught_up(&db, "agg", CATCH_UP).await;
    let (_, text) = get(port, "/metrics");
    assert_eq!(
        sample(&text, r#"pg2lake_changes_total{op="insert",table="_all"}"#),
        Some(3.0),
        "{text}"
    );
    assert!(!text.contains(r#"table="public.a""#), "{text}");
    assert!(service.stop(STOP).success(), "{}", service.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_initial_load_reports_rows_done_and_expected() {
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, note text);
         INSERT INTO a SELECT g, 'n' || g FROM generate_series(1, 3000) g;
         CREATE TABLE b (id int PRIMARY KEY);",
    )
    .await
    .expect("tables");
    db.batch_execute("ANALYZE a").await.expect("analyze");
    let port = support::free_port();
    let lake = tempfile::tempdir().expect("lake dir");
    let yaml = config_yaml(
        &url,
        "load",
        &["public.a", "public.b"],
        &lake.path().display().to_string(),
        "",
    );
    let config = ConfigFile::new(&with_metrics(&yaml, port, ""));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(PROBE_FOLLOWS);
    let (_, text) = get(port, "/metrics");
    let expect = |series: &str, value: f64| {
        assert_eq!(sample_or_panic(&text, series), value, "{series}");
    };
    expect(r#"pg2lake_snapshot_rows{table="public.a"}"#, 3000.0);
    expect(
        r#"pg2lake_snapshot_rows_estimated{table="public.a"}"#,
        3000.0,
    );
    expect(r#"pg2lake_snapshot_rows{table="public.b"}"#, 0.0);
    expect("pg2lake_snapshot_tables_pending", 0.0);
    assert!(service.stop(STOP).success(), "{}", service.log());
}
