//! `pg2lake verify` against a real Postgres and a lake written by `pg2lake run`: equal
//! lakes verify clean while writes go on; damaged lakes are caught with the keys named.

mod support;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::PgServer;
use support::bank::{SCHEMA, load};
use support::lake::wait_caught_up;
use support::service::{ConfigFile, Service, config_yaml, run_command};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `pg2lake verify --json` with `args`; returns the exit code and the report.
fn verify(config: &ConfigFile, args: &[&str]) -> (i32, Value, Output) {
    let path = config.path().display().to_string();
    let mut all = vec!["verify", "--config", path.as_str(), "--json"];
    all.extend_from_slice(args);
    let out = run_command(&all, &[], TIMEOUT);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_equal_lake_verifies_clean_while_writes_go_on() {
    let pg = PgServer::start();
    let url = pg.create_database("bank").await;
    let db = pg.connect("bank").await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "verify",
        &["public.accounts", "public.ledger"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("bank").await, stop.clone(), 11));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Twice while the load goes on: the position makes it exact.
    for round in 0..2 {
        let (code, report, out) = verify(&config, &[]);
        assert_eq!(
            code,
            0,
            "round {round}: {report:#}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for table in report["tables"].as_array().expect("tables") {
            assert_eq!(table["status"], "equal", "{table:#}");
            assert!(
                table["source_rows"].as_u64().expect("rows") > 0,
                "{table:#}"
            );
            assert_eq!(table["source_rows"], table["lake_rows"], "{table:#}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    loader.await.expect("loader");
    wait_caught_up(&db, "verify", TIMEOUT).await;
    assert!(service.stop(Duration::from_secs(30)).success());
}
