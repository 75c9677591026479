//! Initial-load throughput: `pg2lake snapshot --no-slot` of one wide table into a
//! local-folder lake with `snapshot.parallelism` 1 and 2, beside `COPY … TO STDOUT` of the
//! same rows into nothing (binary and text format) over one connection, all in the same run.
//!
//! ```text
//! cargo bench --bench snapshot                       # 5,000,000 rows
//! BENCH_ROWS=500000 cargo bench --bench snapshot     # a quicker run
//! ```
//!
//! The table has a bigint key, int, text, timestamptz, numeric(12,2) and jsonb columns.
//! The lake's row count is checked with the `deltalake` Python package. Printed: rows/s
//! and MB/s (of COPY binary bytes) for each, pg2lake's ratio to the binary baseline (the
//! most one connection can be sent), and pg2lake's peak RSS.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::bench::{block_on, build_items, size_from_env};
use support::service::{ConfigFile, config_yaml};
use support::{PgOptions, PgServer, pg2lake_bin};

/// Rows loaded when `BENCH_ROWS` is unset.
const DEFAULT_ROWS: u64 = 5_000_000;
/// The COPY query both baselines run: the columns pg2lake selects.
const SELECT: &str = "SELECT id, qty, note, at, price, doc FROM items";

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
    let started = Instant::now();
    build_items(&db, rows).await;
    println!(
        "built items with {rows} rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let (binary_time, binary_bytes) = copy_into_nothing(&db, "binary").await;
    let (text_time, text_bytes) = copy_into_nothing(&db, "text").await;

    let mut loads = Vec::new();
    for parallelism in [1, 2] {
        let lake = tempfile::tempdir().expect("lake dir");
        let config = ConfigFile::new(&config_yaml(
            &url,
            "bench",
            &["public.items"],
            &lake.path().display().to_string(),
            &format!("snapshot:\n  parallelism: {parallelism}\n"),
        ));
        let (time, peak_rss) = snapshot(&config);
        let counted = support::count_delta_rows(&lake.path().join("public/items"));
        assert_eq!(
            counted, rows,
            "the lake holds every row (deltalake package)"
        );
        loads.push((parallelism, time, peak_rss));
    }

    let line = |what: &str, time: Duration| {
        let secs = time.as_secs_f64();
        println!(
            "{what:<40} {secs:>7.1}s {:>10.0} rows/s {:>7.1} MB/s",
            rows as f64 / secs,
            binary_bytes as f64 / secs / 1e6
        );
    };
    println!(
        "COPY binary: {binary_bytes} bytes; COPY text: {text_bytes} bytes (MB/s below are of binary bytes)"
    );
    line("COPY (FORMAT binary) into nothing", binary_time);
    line("COPY (FORMAT text) into nothing", text_time);
    for &(parallelism, time, _) in &loads {
        line(
            &format!("pg2lake snapshot, parallelism {parallelism}"),
            time,
        );
    }
    for &(parallelism, time, peak_rss) in &loads {
        println!(
            "parallelism {parallelism}: ratio pg2lake / COPY binary {:.2}; peak RSS {} MiB",
            binary_time.as_secs_f64() / time.as_secs_f64(),
            peak_rss >> 20
        );
    }
}

/// Runs the COPY in `format` and throws the bytes away; returns the time and byte count.
async fn copy_into_nothing(db: &tokio_postgres::Client, format: &str) -> (Duration, u64) {
    let started = Instant::now();
    let stream = db
        .copy_out(&format!("COPY ({SELECT}) TO STDOUT (FORMAT {format})"))
        .await
        .expect("start COPY");
    let mut stream = std::pin::pin!(stream);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("COPY data").len() as u64;
    }
    (started.elapsed(), bytes)
}

/// Runs `pg2lake snapshot --no-slot`; returns the time and the peak RSS seen.
fn snapshot(config: &ConfigFile) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = Command::new(pg2lake_bin())
        .args(["snapshot", "--no-slot", "--log-format", "json", "--config"])
        .arg(config.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pg2lake snapshot");
    let mut peak = 0;
    let status = loop {
        peak = peak.max(support::service::peak_rss_of(child.id()));
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "pg2lake snapshot failed: {status}");
    (started.elapsed(), peak)
}
