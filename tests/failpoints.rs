//! kill -9 at chosen points, not only at random ones: the binary built with the
//! `failpoints` feature aborts where `FAILPOINTS` says (see `crash_point!`), and each
//! point is hit five times under load before a clean run catches up. The folded lake
//! then equals the source, and no change appears twice.
//!
//! | point | state left behind |
//! |---|---|
//! | `lake::before_commit` | Parquet files uploaded, no Delta version references them |
//! | `pipeline::after_commit` | Delta version committed, the slot not told |
//! | `lake::checkpoint` | a checkpoint's Parquet file written, `_last_checkpoint` not |
//! | `snapshot::before_commit` | an initial load copied and written, not committed |

#![cfg(feature = "failpoints")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::PgServer;
use support::bank::{SCHEMA, assert_lake_equals_source, load};
use support::lake::wait_caught_up;
use support::load::Rng;
use support::service::{ConfigFile, Service, config_yaml};

/// Rounds per failpoint: four points, twenty restarts.
const ROUNDS: usize = 5;

/// Starts pg2lake with `point` set to abort on its `skip + 1`th hit, and waits for the
/// abort.
fn kill_at(config: &ConfigFile, point: &str, skip: u64) {
    let failpoints = format!("{point}={skip}*off->return");
    let mut service = Service::start(config, &[("FAILPOINTS".to_owned(), failpoints)]);
    let status = service.wait_exit(Duration::from_secs(90));
    let log = service.log();
    assert!(
        !status.success() && log.contains(&format!("failpoint {point} hit")),
        "pg2lake did not die at {point} ({status:?}):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_chosen_points_loses_and_doubles_nothing() {
    let pg = PgServer::start();
    let url = pg.create_database("points").await;
    let db = pg.connect("points").await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let lake_url = lake.path().display().to_string();
    // Small flushes and a checkpoint every second version: every point comes up often.
    let yaml = |tables: &[&str]| {
        config_yaml(
            &url,
            "points",
            tables,
            &lake_url,
            "  checkpoint_interval: 2\n",
        )
        .replace(
            "flush:\n  max_interval: 200ms\n",
            "flush:\n  max_interval: 100ms\n  max_rows: 300\n",
        )
    };
    let config = ConfigFile::new(&yaml(&["public.accounts", "public.ledger"]));
    // The slot first: a change committed before it would never be streamed.
    let mut first = Service::start(&config, &[]);
    first.wait_streaming(Duration::from_secs(60));
    assert!(first.stop(Duration::from_secs(30)).success());

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("points").await, stop.clone(), 0xC0FFEE));
    let mut rng = Rng(7);
    for point in [
        "lake::checkpoint",
        "lake::before_commit",
        "pipeline::after_commit",
    ] {
        for _ in 0..ROUNDS {
            kill_at(&config, point, rng.below(2));
        }
    }

    // A table added to the config is loaded by the next start; it dies at the load's
    // commit each time, and is copied again by the next.
    db.batch_execute(
        "CREATE TABLE extra (id int PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL);
         INSERT INTO extra SELECT g, g, 'x' || g FROM generate_series(1, 5000) g;",
    )
    .await
    .expect("a table to load");
    let config = ConfigFile::new(&yaml(&["public.accounts", "public.ledger", "public.extra"]));
    for _ in 0..ROUNDS {
        kill_at(&config, "snapshot::before_commit", 0);
    }

    stop.store(true, Ordering::Relaxed);
    let committed = loader.await.expect("loader");
    assert!(
        committed > 50,
        "the load committed only {committed} transactions"
    );
    db.batch_execute("UPDATE extra SET balance = balance + 1 WHERE id <= 10")
        .await
        .expect("change the loaded table");
    let mut service = Service::start(&config, &[]);
    wait_caught_up(&db, "points", Duration::from_secs(300)).await;
    for table in ["accounts", "ledger", "extra"] {
        assert_lake_equals_source(&db, lake.path(), table).await;
    }
    assert!(service.stop(Duration::from_secs(30)).success());
}
