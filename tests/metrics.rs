//! The metrics endpoint of `pg2lake run` against a real PostgreSQL: the metric families
//! it serves are exactly the ones README.md's metrics table documents (and
//! `pg2lake::metrics::METRIC_NAMES` lists), counters follow the changes written, and the
//! probes follow the stream (not ready while another consumer holds the slot or Postgres
//! is down).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pg2lake::metrics::METRIC_NAMES;
use support::lake::wait_caught_up;
use support::scrape::{get, sample, sample_or_panic, try_get, with_metrics};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgServer, wait_until};

const CATCH_UP: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(30);
/// How long the probes may take to follow a change of state (slot recheck is 5 s).
const PROBE_FOLLOWS: Duration = Duration::from_secs(30);

/// The README section whose first table documents every metric `/metrics` serves.
const METRICS_SECTION: &str = "## Metrics and probes";

/// The metric names of README.md's metrics table: every backticked name in the first
/// column (one cell may list several), in table order. Panics when the section or its
/// table is missing, or when a row names no metric, so a reshaped README cannot turn
/// the check into a comparison with nothing.
fn documented_names(readme: &str) -> Vec<String> {
    let mut lines = readme
        .lines()
        .skip_while(|line| line.trim_end() != METRICS_SECTION)
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .skip_while(|line| !line.starts_with('|'));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no table under {METRICS_SECTION:?} in README.md"));
    let rule = lines.next().unwrap_or_default();
    assert!(
        rule.starts_with("|---") || rule.starts_with("| ---"),
        "the first table under {METRICS_SECTION:?} has no header row: {header:?} then {rule:?}"
    );
    let mut names = Vec::new();
    for row in lines.take_while(|line| line.starts_with('|')) {
        let first_cell = row.split('|').nth(1).unwrap_or_default();
        let before = names.len();
        for name in first_cell.split('`').skip(1).step_by(2) {
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "not a metric name in README.md's metrics table: {name:?} in {row:?}"
            );
            names.push(name.to_owned());
        }
        assert!(
            names.len() > before,
            "README.md metrics row without a `name` in its first column: {row:?}"
        );
    }
    assert!(
        !names.is_empty(),
        "the table under {METRICS_SECTION:?} in README.md has no rows"
    );
    names
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric families of a Prometheus text exposition: the names of its `# TYPE`
/// lines (a histogram has one, for its `_bucket`, `_sum` and `_count` samples).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let name = rest.split_whitespace().next();
            name.unwrap_or_else(|| panic!("bad TYPE line: {rest:?}"))
                .to_owned()
        })
        .collect()
}

/// `listed` against `emitted`: (emitted and not listed, listed and not emitted), each
/// sorted. A name listed twice is an error of the list.
fn mismatch(listed: &[String], emitted: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(set.len(), listed.len(), "a name listed twice: {listed:?}");
    let missing = emitted.difference(&set).cloned().collect();
    let extra = set.difference(emitted).cloned().collect();
    (missing, extra)
}

/// How the names of `readme`'s metrics table and of `pg2lake::metrics::METRIC_NAMES`
/// (which scripts/check_deploy.py reads) differ from the metric families of
/// `exposition`, one line per list and direction; empty when they agree.
fn name_differences(readme: &str, exposition: &str) -> Vec<String> {
    let emitted = exposed_names(exposition);
    let in_code: Vec<String> = METRIC_NAMES.iter().map(|&n| n.to_owned()).collect();
    let mut differences = Vec::new();
    for (list, names) in [
        ("README.md's metrics table", documented_names(readme)),
        ("pg2lake::metrics::METRIC_NAMES", in_code),
    ] {
        let (missing, extra) = mismatch(&names, &emitted);
        if !missing.is_empty() {
            differences.push(format!("emitted but not in {list}: {}", missing.join(", ")));
        }
        if !extra.is_empty() {
            differences.push(format!("in {list} but not emitted: {}", extra.join(", ")));
        }
    }
    differences
}

/// Panics, naming each difference, unless README.md's metrics table and `METRIC_NAMES`
/// both list exactly the metric families of the scrape `exposition`.
fn assert_names_match(exposition: &str, when: &str) {
    let differences = name_differences(&readme(), exposition);
    assert!(
        differences.is_empty(),
        "/metrics {when}:\n{}",
        differences.join("\n")
    );
}

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

/// The name check itself, without a server, on this library's own exposition: the
/// README agrees with it, and each kind of drift is reported by name. The service test
/// below applies the same check to what a running `pg2lake run` serves.
#[test]
fn the_name_check_reports_undocumented_and_unemitted_metrics() {
    let readme = readme();
    let metrics = pg2lake::metrics::global();
    metrics.register_table("public.t");
    let exposition = String::from_utf8(metrics.render()).expect("utf-8 exposition");
    assert_eq!(name_differences(&readme, &exposition), Vec::<String>::new());

    // A metric registered in code, documented nowhere.
    let registered = format!(
        "{exposition}# HELP pg2lake_new_total new\n# TYPE pg2lake_new_total counter\n\
         pg2lake_new_total 0\n"
    );
    assert_eq!(
        name_differences(&readme, &registered),
        [
            "emitted but not in README.md's metrics table: pg2lake_new_total",
            "emitted but not in pg2lake::metrics::METRIC_NAMES: pg2lake_new_total",
        ]
    );

    // A README row dropped: the table's first row, one in the middle, its last one
    // with a single name, and one name of the row that lists several.
    let edited = |from: &str, to: &str| {
        assert_eq!(readme.matches(from).count(), 1, "{from:?} in README.md");
        readme.replacen(from, to, 1)
    };
    for name in [
        "pg2lake_replication_lag_bytes",
        "pg2lake_reconnects_total",
        "pg2lake_snapshot_tables_pending",
    ] {
        let row = readme
            .lines()
            .find(|line| line.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("no README row for {name}"));
        assert_eq!(
            name_differences(&edited(&format!("{row}\n"), ""), &exposition),
            [format!(
                "emitted but not in README.md's metrics table: {name}"
            )]
        );
    }
    assert_eq!(
        name_differences(&edited("`process_open_fds`", ""), &exposition),
        ["emitted but not in README.md's metrics table: process_open_fds"]
    );

    // A README row for a metric nobody emits, after the table's last row.
    let last = readme
        .lines()
        .skip_while(|line| line.trim_end() != METRICS_SECTION)
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .last()
        .expect("the metrics table");
    let fake = format!("{last}\n| `pg2lake_fake_total` | counter | | never emitted |\n");
    assert_eq!(
        name_differences(&edited(&format!("{last}\n"), &fake), &exposition),
        ["in README.md's metrics table but not emitted: pg2lake_fake_total"]
    );
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
    // Every table's series are created before the slot wait, so all metrics show.
    assert_names_match(&before, "before streaming");

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
    assert_names_match(&text, "streaming");
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
