//! Catch-up throughput: how fast pg2lake drains a queued backlog into a local-folder
//! lake, beside `pg_recvlogical` draining the same WAL (same plugin, same publication,
//! same protocol) to /dev/null in the same run, for two shapes of backlog of the same
//! number of changes:
//! - `single`: single-row transactions, half INSERT, half UPDATE: a BEGIN and a COMMIT
//!   around every change;
//! - `bulk`: transactions of 10,000 rows each, again half INSERT (one INSERT … SELECT
//!   per transaction), half UPDATE (one ranged UPDATE per transaction).
//!
//! ```text
//! cargo bench --bench catchup                       # 1,000,000 changes per shape
//! BENCH_CHANGES=200000 cargo bench --bench catchup  # a quicker run
//! BENCH_SHAPE=bulk cargo bench --bench catchup      # one shape only: single or bulk
//! ```
//!
//! Each shape is a phase of its own with its own table and two slots of its own
//! (pg2lake's and `pg_recvlogical`'s), created just before its load and dropped after
//! its drains, so each consumer decodes exactly that shape's backlog. The consumers run
//! one after the other, never at once (the machine has two cores). The lake is then
//! counted with the `deltalake` Python package, so the number checked is of rows an
//! independent reader sees, not of rows pg2lake believes it wrote.
//!
//! Printed per shape and consumer: the time to drain and the changes per second, and the
//! walsender's busy fraction: the CPU time of the walsender process serving the slot
//! (from `/proc/<pid>/stat`) over the drain's wall time. Below 100% the walsender waited
//! on its consumer, or needed less CPU for the same WAL: it sends a message at a time to
//! a consumer that reads each at once (`pg_recvlogical`, which does nothing with what it
//! receives), and in bulk to one that lets its socket fill (pg2lake while catching up).
//! For pg2lake also its own CPU seconds per million changes and its peak RSS; last, the
//! ratio of pg2lake's throughput to `pg_recvlogical`'s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::bench::{
    Drain, block_on, drain_with_pg_recvlogical_measured, drain_with_pg2lake_measured, size_from_env,
};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgOptions, PgServer};

/// Changes queued per shape when `BENCH_CHANGES` is unset.
const DEFAULT_CHANGES: u64 = 1_000_000;
/// Rows per transaction of the bulk shape.
const BULK_ROWS_PER_TRANSACTION: u64 = 10_000;
/// The protocol pg2lake asks for (large transactions arrive while in progress), which
/// `pg_recvlogical` asks for too.
const PROTOCOL: &[&str] = &["proto_version=2", "streaming=on"];

/// The tables and the procedures that queue each shape's backlog. Both procedures give
/// `n` changes: `n / 2` inserted rows, then `n - n / 2` updates cycling over them. The
/// bulk one never updates a row twice in one transaction (a transaction ends at the end
/// of a lap over the rows), so each UPDATE gives one change per row it matches.
const SCHEMA: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, note text, at timestamptz NOT NULL);
CREATE TABLE bulk_items (id bigint PRIMARY KEY, qty int NOT NULL, note text, at timestamptz NOT NULL);
CREATE PROCEDURE load_single(n bigint) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..n / 2 LOOP
    INSERT INTO items VALUES (i, 1, 'item ' || i, now());
    COMMIT;
  END LOOP;
  FOR i IN 1..n - n / 2 LOOP
    UPDATE items SET qty = qty + 1, at = now() WHERE id = (i - 1) % (n / 2) + 1;
    COMMIT;
  END LOOP;
END $$;
CREATE PROCEDURE load_bulk(n bigint, per_txn bigint) LANGUAGE plpgsql AS $$
DECLARE
  inserts bigint := n / 2;
  updates bigint := n - n / 2;
  done bigint := 0;
  upto bigint;
BEGIN
  WHILE done < inserts LOOP
    upto := least(done + per_txn, inserts);
    INSERT INTO bulk_items SELECT g, 1, 'item ' || g, now() FROM generate_series(done + 1, upto) g;
    COMMIT;
    done := upto;
  END LOOP;
  done := 0;
  WHILE done < updates LOOP
    -- Change i (from 1) updates row (i - 1) % inserts + 1, as in load_single.
    upto := least(done + per_txn, updates, (done / inserts + 1) * inserts);
    UPDATE bulk_items SET qty = qty + 1, at = now()
      WHERE id BETWEEN done % inserts + 1 AND (upto - 1) % inserts + 1;
    COMMIT;
    done := upto;
  END LOOP;
END $$;
";

/// A shape of backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Single-row transactions.
    Single,
    /// Transactions of [`BULK_ROWS_PER_TRANSACTION`] rows.
    Bulk,
}

impl Shape {
    /// The name printed and accepted in `BENCH_SHAPE`.
    fn name(self) -> &'static str {
        match self {
            Shape::Single => "single",
            Shape::Bulk => "bulk",
        }
    }

    /// The table its backlog changes (in schema `public`).
    fn table(self) -> &'static str {
        match self {
            Shape::Single => "items",
            Shape::Bulk => "bulk_items",
        }
    }

    /// Slot and publication of pg2lake (config_yaml names the publication after the
    /// slot); `pg_recvlogical` reads the slot of this name with `_recv` appended.
    fn slot(self) -> &'static str {
        match self {
            Shape::Single => "bench_single",
            Shape::Bulk => "bench_bulk",
        }
    }

    /// The statement that queues `changes` changes.
    fn load(self, changes: u64) -> String {
        match self {
            Shape::Single => format!("CALL load_single({changes})"),
            Shape::Bulk => format!("CALL load_bulk({changes}, {BULK_ROWS_PER_TRANSACTION})"),
        }
    }

    /// Its transactions, in words.
    fn transactions(self) -> String {
        match self {
            Shape::Single => "single-row transactions".to_owned(),
            Shape::Bulk => format!("transactions of {BULK_ROWS_PER_TRANSACTION} rows"),
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any filter argument is ignored (one benchmark).
    let shapes = match std::env::var("BENCH_SHAPE").ok().as_deref() {
        None | Some("") => vec![Shape::Single, Shape::Bulk],
        Some("single") => vec![Shape::Single],
        Some("bulk") => vec![Shape::Bulk],
        Some(other) => panic!("BENCH_SHAPE is single or bulk, not {other:?}"),
    };
    block_on(run(
        size_from_env("BENCH_CHANGES", DEFAULT_CHANGES),
        &shapes,
    ));
}

async fn run(changes: u64, shapes: &[Shape]) {
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
    db.batch_execute(SCHEMA).await.expect("schema");
    for &shape in shapes {
        measure(&pg, &url, &db, shape, changes).await;
    }
}

/// One shape's phase: its slots, its load, both drains, the count of the lake, the
/// figures; then its slots are dropped, so the next phase's consumers decode only their
/// own backlog.
async fn measure(
    pg: &PgServer,
    url: &str,
    db: &tokio_postgres::Client,
    shape: Shape,
    changes: u64,
) {
    println!("shape {}: {changes} changes", shape.name());
    let slot = shape.slot();
    let recv_slot = format!("{slot}_recv");
    let table = format!("public.{}", shape.table());

    // A first short run creates pg2lake's publication and slot; the second slot is for
    // pg_recvlogical. Both now hold the WAL of the load that follows.
    let lake = tempfile::tempdir().expect("lake dir");
    let lake_url = lake.path().display().to_string();
    let yaml = config_yaml(url, slot, &[table.as_str()], &lake_url, "")
        .replace("flush:\n  max_interval: 200ms\n", "");
    let config = ConfigFile::new(&yaml);
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    assert!(service.stop(Duration::from_secs(60)).success());
    db.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&recv_slot],
    )
    .await
    .expect("pg_recvlogical slot");

    let started = Instant::now();
    db.batch_execute(&shape.load(changes)).await.expect("load");
    let load = started.elapsed();
    let end_lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("end lsn")
        .get(0);
    println!(
        "  queued as {} in {:.1}s; backlog ends at {end_lsn}",
        shape.transactions(),
        load.as_secs_f64()
    );

    let rate = |d: &Drain| changes as f64 / d.time.as_secs_f64();
    let recv = drain_with_pg_recvlogical_measured(pg, url, &recv_slot, slot, PROTOCOL, &end_lsn);
    println!(
        "  pg_recvlogical: {:>7.1}s {:>9.0} changes/s  walsender busy {}",
        recv.time.as_secs_f64(),
        rate(&recv),
        busy(&recv)
    );

    let lake_drain = drain_with_pg2lake_measured(db, url, &config, slot, &end_lsn).await;
    let rows = support::count_delta_rows(&lake.path().join("public").join(shape.table()));
    assert_eq!(
        rows, changes,
        "the lake holds one row per queued change (read with the deltalake package)"
    );
    let cpu = lake_drain.consumer_cpu.expect("pg2lake's CPU time");
    println!(
        "  pg2lake:        {:>7.1}s {:>9.0} changes/s  walsender busy {}  \
         pg2lake {:.1} CPU-s per million changes  peak RSS {} MiB",
        lake_drain.time.as_secs_f64(),
        rate(&lake_drain),
        busy(&lake_drain),
        cpu / changes as f64 * 1e6,
        lake_drain.peak_rss >> 20
    );
    println!(
        "  ratio pg2lake / pg_recvlogical throughput: {:.2}",
        rate(&lake_drain) / rate(&recv)
    );

    drop_slot(db, &recv_slot).await;
    drop_slot(db, slot).await;
}

/// The walsender's busy fraction of `drain` as a percentage.
fn busy(drain: &Drain) -> String {
    match drain.walsender_busy() {
        Some(fraction) => format!("{:.0}%", fraction * 100.0),
        None => "n/a (drained before its walsender was seen)".to_owned(),
    }
}

/// Drops `slot` once its consumer's walsender has gone (it exits a moment after its
/// consumer), so that it holds no WAL and no catalog rows back.
async fn drop_slot(db: &tokio_postgres::Client, slot: &str) {
    support::wait_until_async(
        Duration::from_secs(60),
        "the slot's walsender to exit",
        || async {
            db.query_one(
                "SELECT active_pid IS NULL FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("slot state")
            .get::<_, bool>(0)
        },
    )
    .await;
    db.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap_or_else(|e| panic!("drop slot {slot}: {e}"));
}
