//! Draining a queued backlog of WAL, for the benchmarks: pg2lake until its slot confirms a
//! position, `pg_recvlogical` until it reaches one.

use std::process::Command;
use std::time::{Duration, Instant};

use super::PgServer;
use super::service::{ConfigFile, Service};

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
