//! One large transaction: what it costs the primary and pg2lake. A single INSERT of
//! 5,000,000 rows (about 0.9 GB of changes) is far beyond the default
//! `logical_decoding_work_mem` (64 MB).
//!
//! ```text
//! cargo bench --bench large_txn                    # 5,000,000 rows
//! BENCH_ROWS=1000000 cargo bench --bench large_txn # a quicker run
//! ```
//!
//! The same backlog is drained twice, one consumer after the other:
//! - `pg_recvlogical` with pgoutput protocol 1 to /dev/null: what the walsender does for a
//!   consumer that cannot take a transaction before its commit (and what pg2lake asked
//!   for before it streamed): it spills the transaction to `pg_replslot` on the
//!   primary's disk;
//! - pg2lake (protocol 2, `streaming`), into a local-folder lake.
//!
//! Printed per consumer: the slot's `spill_bytes` and `stream_bytes` from
//! `pg_stat_replication_slots` (the primary's disk writes this benchmark is about), the
//! time to drain, and pg2lake's peak RSS beside its `memory_budget`. The lake is counted
//! with the `deltalake` Python package.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::bench::{block_on, drain_with_pg_recvlogical, drain_with_pg2lake, size_from_env};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgOptions, PgServer, SlotStats, slot_stats};

/// Rows inserted when `BENCH_ROWS` is unset.
const DEFAULT_ROWS: u64 = 5_000_000;
/// Slot and publication of pg2lake (config_yaml names the publication after the slot).
const SLOT: &str = "bench";
/// Slot `pg_recvlogical` reads.
const RECV_SLOT: &str = "bench_recv";

fn main() {
    block_on(run(size_from_env("BENCH_ROWS", DEFAULT_ROWS)));
}

async fn run(rows: u64) {
    let pg = PgServer::start_with(PgOptions {
        conf: vec![
            "synchronous_commit = off".into(),
            "max_wal_size = '8GB'".into(),
        ],
        ..PgOptions::default()
    });
    let url = pg.create_database("bench").await;
    let db = pg.connect("bench").await;
    db.batch_execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, body text NOT NULL, at timestamptz NOT NULL)",
    )
    .await
    .expect("schema");
    let work_mem: String = db
        .query_one("SHOW logical_decoding_work_mem", &[])
        .await
        .expect("logical_decoding_work_mem")
        .get(0);

    // pg2lake's slot and publication first, then pg_recvlogical's slot: both hold the
    // WAL of the transaction that follows.
    let lake = tempfile::tempdir().expect("lake dir");
    let lake_url = lake.path().display().to_string();
    let yaml = config_yaml(&url, SLOT, &["public.events"], &lake_url, "")
        .replace("flush:\n  max_interval: 200ms\n", "");
    let config = ConfigFile::new(&yaml);
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    assert!(service.stop(Duration::from_secs(60)).success());
    db.batch_execute(&format!(
        "SELECT pg_create_logical_replication_slot('{RECV_SLOT}', 'pgoutput')"
    ))
    .await
    .expect("pg_recvlogical slot");

    let started = Instant::now();
    db.batch_execute(&format!(
        "INSERT INTO events SELECT g, repeat(md5(g::text), 4), now() FROM generate_series(1, {rows}) g"
    ))
    .await
    .expect("load");
    let end_lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("end lsn")
        .get(0);
    let wal: i64 = db
        .query_one(
            "SELECT ($1::text::pg_lsn - '0/0'::pg_lsn)::int8",
            &[&end_lsn],
        )
        .await
        .expect("wal size")
        .get(0);
    println!(
        "one transaction of {rows} rows in {:.1}s; backlog ends at {end_lsn} ({} MiB of WAL); logical_decoding_work_mem = {work_mem}",
        started.elapsed().as_secs_f64(),
        wal >> 20
    );

    let recv =
        drain_with_pg_recvlogical(&pg, &url, RECV_SLOT, SLOT, &["proto_version=1"], &end_lsn);
    let recv_stats = final_slot_stats(&db, RECV_SLOT).await;
    let (lake_time, peak_rss) = drain_with_pg2lake(&db, &config, SLOT, &end_lsn).await;
    let lake_stats = final_slot_stats(&db, SLOT).await;
    let lake_rows = support::count_delta_rows(&lake.path().join("public/events"));
    assert_eq!(
        lake_rows, rows,
        "the lake holds every row (read with the deltalake package)"
    );

    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    println!(
        "pg_recvlogical, protocol 1: {:>7.1}s  spilled {:>8.1} MiB in {} txn(s), streamed {:>8.1} MiB in {} txn(s)",
        recv.as_secs_f64(),
        mib(recv_stats.spill_bytes),
        recv_stats.spill_txns,
        mib(recv_stats.stream_bytes),
        recv_stats.stream_txns
    );
    println!(
        "pg2lake, protocol 2:        {:>7.1}s  spilled {:>8.1} MiB in {} txn(s), streamed {:>8.1} MiB in {} txn(s)  peak RSS {} MiB (memory_budget 512 MiB)",
        lake_time.as_secs_f64(),
        mib(lake_stats.spill_bytes),
        lake_stats.spill_txns,
        mib(lake_stats.stream_bytes),
        lake_stats.stream_txns,
        peak_rss >> 20
    );
    println!(
        "ratio pg2lake / pg_recvlogical drain time: {:.2}",
        lake_time.as_secs_f64() / recv.as_secs_f64()
    );
}

/// The slot's statistics, once the walsender that used it has reported them.
async fn final_slot_stats(db: &tokio_postgres::Client, slot: &str) -> SlotStats {
    // A walsender reports its counts when it exits: wait until they stop changing.
    let mut last = slot_stats(db, slot).await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = slot_stats(db, slot).await;
        if now.spill_bytes == last.spill_bytes && now.stream_bytes == last.stream_bytes {
            return now;
        }
        last = now;
    }
}
