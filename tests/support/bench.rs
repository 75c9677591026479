//! What the benchmarks share: the size knob, the `items` table, and draining a queued
//! backlog of WAL (pg2lake until its slot confirms a position, `pg_recvlogical` until it
//! reaches one).

use std::process::Command;
use std::time::{Duration, Instant};

use super::PgServer;
use super::service::{ConfigFile, Service};

/// The number in the environment variable `var` (e.g. `BENCH_ROWS`), or `default`.
pub fn size_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{var} is a number")))
        .unwrap_or(default)
}

/// Runs `bench` on a fresh multi-threaded runtime.
pub fn block_on<F: std::future::Future>(bench: F) -> F::Output {
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(bench)
}

/// Creates `items` (bigint key, int, text, timestamptz, numeric(12,2), jsonb) with
/// `rows` rows, then VACUUM ANALYZE (hint bits set, the row estimate known).
pub async fn build_items(db: &tokio_postgres::Client, rows: u64) {
    db.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, note text, at timestamptz NOT NULL,
                             price numeric(12,2), doc jsonb);
         INSERT INTO items
           SELECT g, g % 1000, 'item number ' || g, timestamptz '2026-01-01' + g * interval '1 second',
                  (g % 100000) / 100.0, jsonb_build_object('k', g, 'tag', 'x' || (g % 97))
           FROM generate_series(1, {rows}) g;"
    ))
    .await
    .expect("build the table");
    // On its own: VACUUM cannot run inside the implicit transaction of a multi-statement
    // query.
    db.batch_execute("VACUUM ANALYZE items")
        .await
        .expect("vacuum");
}

/// A PostgreSQL server with WAL room for millions of rows, its database `bench` holding
/// `items` of `rows` rows ([`build_items`]): the server, the database's URL, a client,
/// and how long building the table took.
pub async fn items_database(rows: u64) -> (PgServer, String, tokio_postgres::Client, Duration) {
    let pg = PgServer::start_with(super::PgOptions {
        conf: vec!["max_wal_size = '8GB'".into()],
        ..super::PgOptions::default()
    });
    let url = pg.create_database("bench").await;
    let db = pg.connect("bench").await;
    let started = Instant::now();
    build_items(&db, rows).await;
    (pg, url, db, started.elapsed())
}

/// `yaml` (made by `config_yaml`) flushing as soon as a transaction is complete (the
/// flush timer's floor is 50 ms), so waiting after each transaction keeps it a Delta
/// version of its own.
pub fn flush_each_transaction(yaml: &str) -> String {
    const DEFAULT: &str = "flush:\n  max_interval: 200ms\n";
    assert!(yaml.contains(DEFAULT), "{yaml}");
    yaml.replace(DEFAULT, "flush:\n  max_interval: 1ms\n")
}

/// The lake of an `items` benchmark: a temporary folder, the change log's folder and URI
/// in it, and a configuration (`config_yaml` with `extra`, slot `slot`) that flushes
/// each transaction as soon as it is complete ([`flush_each_transaction`]).
pub fn items_lake(
    url: &str,
    slot: &str,
    extra: &str,
) -> (tempfile::TempDir, std::path::PathBuf, String, ConfigFile) {
    let lake = tempfile::tempdir().expect("lake dir");
    let table_dir = lake.path().join("public/items");
    let table_uri = table_dir.display().to_string();
    let yaml = super::service::config_yaml(
        url,
        slot,
        &["public.items"],
        &lake.path().display().to_string(),
        extra,
    );
    let config = ConfigFile::new(&flush_each_transaction(&yaml));
    (lake, table_dir, table_uri, config)
}

/// Waits (polling every 2 ms) until the Delta table in `table_dir` has version `version`;
/// panics naming `what` after `timeout`, or when pg2lake exits.
pub async fn wait_for_version(
    table_dir: &std::path::Path,
    version: u64,
    service: &mut Service,
    timeout: Duration,
    what: &str,
) {
    let deadline = Instant::now() + timeout;
    while !version_file(table_dir, version).exists() {
        assert!(
            Instant::now() < deadline,
            "pg2lake did not commit {what} (version {version}) within {timeout:?}"
        );
        assert!(
            service.is_running(),
            "pg2lake exited; log:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Longest a consumer may take to drain a backlog.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// Runs `pg_recvlogical` on `slot` (pgoutput with `options`, e.g. `proto_version=1`)
/// streaming `publication` to /dev/null until it reaches `end_lsn`; returns the time.
pub fn drain_with_pg_recvlogical(
    pg: &PgServer,
    url: &str,
    slot: &str,
    publication: &str,
    options: &[&str],
    end_lsn: &str,
) -> Duration {
    let started = Instant::now();
    let mut command = Command::new(pg.bin_dir().join("pg_recvlogical"));
    command.args(["--dbname", url, "--slot", slot, "--start", "--no-loop"]);
    for option in options {
        command.args(["--option", option]);
    }
    let status = command
        .args(["--option", &format!("publication_names={publication}")])
        .args(["--endpos", end_lsn, "--file", "/dev/null"])
        .status()
        .expect("run pg_recvlogical");
    let elapsed = started.elapsed();
    assert!(status.success(), "pg_recvlogical failed: {status}");
    elapsed
}

/// Starts `pg2lake run` with `config` and waits until `slot` has confirmed `end_lsn`,
/// which pg2lake does only once every change up to there is committed in the lake.
/// Returns the time and the peak RSS.
pub async fn drain_with_pg2lake(
    db: &tokio_postgres::Client,
    config: &ConfigFile,
    slot: &str,
    end_lsn: &str,
) -> (Duration, u64) {
    let started = Instant::now();
    let mut service = Service::start(config, &[]);
    let deadline = started + DRAIN_TIMEOUT;
    loop {
        let done: bool = db
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&end_lsn, &slot],
            )
            .await
            .expect("slot position")
            .get(0);
        if done {
            break;
        }
        assert!(
            service.is_running(),
            "pg2lake exited; log:\n{}",
            service.log()
        );
        assert!(Instant::now() < deadline, "pg2lake did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let peak = service.peak_rss();
    assert!(service.stop(Duration::from_secs(60)).success());
    (elapsed, peak)
}

/// The 1-minute load average: other work on the machine skews every time a benchmark
/// prints.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

/// The log entry of `version` in the Delta table's folder.
pub fn version_file(table_dir: &std::path::Path, version: u64) -> std::path::PathBuf {
    table_dir.join(format!("_delta_log/{version:020}.json"))
}

/// The table's latest version, from its log's file names.
pub fn latest_version(table_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(table_dir.join("_delta_log"))
        .expect("read _delta_log")
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("a committed version")
}
