//! `pg2lake verify` of one large table: its time and peak memory beside a plain
//! `SELECT count(*)` of the same table in the same run.
//!
//! ```text
//! cargo bench --bench verify                      # 3,000,000 rows
//! BENCH_ROWS=500000 cargo bench --bench verify    # a quicker run
//! ```
//!
//! The table (bigint key, int, text, timestamptz, numeric(12,2), jsonb) is loaded by
//! `pg2lake run` (initial load), then 1% of its rows are updated and 0.1% deleted so that
//! the change log holds more than one version of some keys. With pg2lake still running,
//! `verify` compares the table at one position; it must find it equal.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::bench::{block_on, build_items, size_from_env};
use support::lake::wait_caught_up;
use support::service::{ConfigFile, Service, config_yaml, run_command_measured};
use support::{PgOptions, PgServer};

/// Rows loaded when `BENCH_ROWS` is unset.
const DEFAULT_ROWS: u64 = 3_000_000;
/// Slot and publication.
const SLOT: &str = "bench";

fn main() {
    block_on(run(size_from_env("BENCH_ROWS", DEFAULT_ROWS)));
}

async fn run(rows: u64) {
    let pg = PgServer::start_with(PgOptions {
        conf: vec!["max_wal_size = '8GB'".into()],
        ..PgOptions::default()
    });
    let url = pg.create_database("bench").await;
    let db = pg.connect("bench").await;
    build_items(&db, rows).await;

    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        SLOT,
        &["public.items"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(3600));
    db.batch_execute(
        "UPDATE items SET qty = qty + 1, note = note || ' (changed)' WHERE id % 100 = 0;
         DELETE FROM items WHERE id % 1000 = 1;",
    )
    .await
    .expect("changes");
    wait_caught_up(&db, SLOT, Duration::from_secs(3600)).await;

    let started = Instant::now();
    let count: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    let count_time = started.elapsed();

    let path = config.path().display().to_string();
    let started = Instant::now();
    let (out, peak_rss) = run_command_measured(
        &["verify", "--config", &path, "--json"],
        &[],
        Duration::from_secs(3600),
    );
    let verify_time = started.elapsed();
    assert!(
        out.status.success(),
        "verify failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let table = &report["tables"][0];
    assert_eq!(table["status"], "equal", "{report:#}");
    assert_eq!(table["source_rows"].as_i64(), Some(count), "{report:#}");
    assert!(service.stop(Duration::from_secs(60)).success());

    println!(
        "SELECT count(*):  {:>7.2}s ({count} rows)",
        count_time.as_secs_f64()
    );
    println!(
        "pg2lake verify:   {:>7.2}s  peak RSS {} MiB  ({:.0} rows/s)",
        verify_time.as_secs_f64(),
        peak_rss >> 20,
        count as f64 / verify_time.as_secs_f64()
    );
    println!(
        "ratio verify / count(*): {:.1}",
        verify_time.as_secs_f64() / count_time.as_secs_f64()
    );
}
