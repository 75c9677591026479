//! Catch-up throughput: how fast pg2lake drains a backlog of queued single-row
//! transactions into a local-folder lake, beside `pg_recvlogical` draining the same WAL
//! (same plugin, same publication) to /dev/null in the same run.
//!
//! ```text
//! cargo bench --bench catchup                      # 1,000,000 changes
//! BENCH_CHANGES=200000 cargo bench --bench catchup # a quicker run
//! ```
//!
//! Both consumers start from slots created before the load, so each decodes exactly the
//! same backlog: half single-row INSERT transactions, half single-row UPDATE
//! transactions. They run one after the other, never at once (the machine has two
//! cores). The lake is then counted with the `deltalake` Python package, so the number
//! reported is of rows an independent reader sees, not of rows pg2lake believes it
//! wrote. The result is printed as changes per second and as a ratio against
//! `pg_recvlogical`, the floor set by Postgres' own decoding.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::bench::{block_on, drain_with_pg_recvlogical, drain_with_pg2lake, size_from_env};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgOptions, PgServer};

/// Changes queued when `BENCH_CHANGES` is unset.
const DEFAULT_CHANGES: u64 = 1_000_000;
/// Slot and publication of pg2lake (config_yaml names the publication after the slot).
const SLOT: &str = "bench";
/// Slot `pg_recvlogical` reads.
const RECV_SLOT: &str = "bench_recv";

fn main() {
    // `cargo bench` passes `--bench`; any filter argument is ignored (one benchmark).
    block_on(run(size_from_env("BENCH_CHANGES", DEFAULT_CHANGES)));
}

async fn run(changes: u64) {
    // The load, not the consumers, is what synchronous_commit=off speeds up.
    let pg = PgServer::start_with(PgOptions {
        conf: vec![
            "synchronous_commit = off".into(),
            "max_wal_size = '4GB'".into(),
        ],
        ..PgOptions::default()
    });
    let url = pg.create_database("bench").await;
    let db = pg.connect("bench").await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, note text, at timestamptz NOT NULL);
         CREATE PROCEDURE load(n bigint) LANGUAGE plpgsql AS $$
         BEGIN
           FOR i IN 1..n / 2 LOOP
             INSERT INTO items VALUES (i, 1, 'item ' || i, now());
             COMMIT;
           END LOOP;
           FOR i IN 1..n - n / 2 LOOP
             UPDATE items SET qty = qty + 1, at = now() WHERE id = (i - 1) % (n / 2) + 1;
             COMMIT;
           END LOOP;
         END $$;",
    )
    .await
    .expect("schema");

    // A first short run creates pg2lake's publication and slot; the second slot is for
    // pg_recvlogical. Both now hold the WAL of the load that follows.
    let lake = tempfile::tempdir().expect("lake dir");
    let lake_url = lake.path().display().to_string();
    let yaml = config_yaml(&url, SLOT, &["public.items"], &lake_url, "")
        .replace("flush:\n  max_interval: 200ms\n", "");
    let config = ConfigFile::new(&yaml);
    let mut service = Service::start(&config, &[]);
    support::wait_until(Duration::from_secs(60), "pg2lake streaming", || {
        service.log().contains("streaming changes")
    });
    assert!(service.stop(Duration::from_secs(60)).success());
    db.batch_execute(&format!(
        "SELECT pg_create_logical_replication_slot('{RECV_SLOT}', 'pgoutput')"
    ))
    .await
    .expect("pg_recvlogical slot");

    let started = Instant::now();
    db.batch_execute(&format!("CALL load({changes})"))
        .await
        .expect("load");
    let load = started.elapsed();
    let end_lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("end lsn")
        .get(0);
    println!(
        "queued {changes} single-row transactions in {:.1}s; backlog ends at {end_lsn}",
        load.as_secs_f64()
    );

    // The protocol pg2lake asks for: large transactions arrive while in progress.
    let recv = drain_with_pg_recvlogical(
        &pg,
        &url,
        RECV_SLOT,
        SLOT,
        &["proto_version=2", "streaming=on"],
        &end_lsn,
    );
    let (lake_time, peak_rss) = drain_with_pg2lake(&db, &config, SLOT, &end_lsn).await;
    let rows = support::count_delta_rows(&lake.path().join("public/items"));
    assert_eq!(
        rows, changes,
        "the lake holds one row per queued change (read with the deltalake package)"
    );

    let rate = |d: Duration| changes as f64 / d.as_secs_f64();
    println!(
        "pg_recvlogical to /dev/null: {:>8.1}s {:>10.0} changes/s",
        recv.as_secs_f64(),
        rate(recv)
    );
    println!(
        "pg2lake to a local lake:     {:>8.1}s {:>10.0} changes/s  peak RSS {} MiB",
        lake_time.as_secs_f64(),
        rate(lake_time),
        peak_rss >> 20
    );
    println!(
        "ratio pg2lake / pg_recvlogical throughput: {:.2}",
        rate(lake_time) / rate(recv)
    );
}
