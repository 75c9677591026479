//! `pg2lake check` reports slot and walsender headroom and WAL retention, and
//! `pg2lake status` reports the lag in seconds, against a real PostgreSQL.

mod support;

use std::process::Output;
use std::time::Duration;

use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgOptions, PgServer, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);

fn pg2lake(command: &str, config: &ConfigFile, extra: &[&str]) -> Output {
    let path = config.path().display().to_string();
    let mut args = vec![command, "--config", path.as_str()];
    args.extend_from_slice(extra);
    run_command(&args, &[], TIMEOUT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_slot_headroom_and_wal_retention() {
    let pg = PgServer::start_with(PgOptions {
        conf: vec![
            "max_replication_slots = 1".into(),
            "max_slot_wal_keep_size = 2GB".into(),
        ],
        ..Default::default()
    });
    let url = pg.create_database("app").await;
    let db = pg.connect("app").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("table");
    db.batch_execute("SELECT pg_create_logical_replication_slot('other', 'pgoutput')")
        .await
        .expect("someone else's slot");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "s",
        &["public.t"],
        &lake.path().display().to_string(),
        "",
    ));

    let out = pg2lake("check", &config, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ replication slots: 1 of max_replication_slots 1 in use"),
        "{text}"
    );
    assert!(text.contains("fix: raise max_replication_slots"), "{text}");
    assert!(
        text.contains("✓ wal senders: 0 of max_wal_senders"),
        "{text}"
    );
    assert!(text.contains("max_slot_wal_keep_size is 2048MB"), "{text}");

    db.batch_execute("SELECT pg_drop_replication_slot('other')")
        .await
        .expect("drop the other slot");
    let out = pg2lake("check", &config, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "✓ replication slots: 0 of max_replication_slots 1 in use, slot s will be created"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_select_privilege_and_publication_contents() {
    let pg = PgServer::start();
    let url = pg.create_database("app").await;
    let db = pg.connect("app").await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);
         CREATE PUBLICATION s FOR TABLE t WITH (publish_via_partition_root = true);
         CREATE ROLE reader LOGIN REPLICATION; GRANT SELECT ON t TO reader;",
    )
    .await
    .expect("schema, publication and role");
    let lake = tempfile::tempdir().expect("lake dir");
    let reader_url = url.replacen("postgres@", "reader@", 1);
    let config = ConfigFile::new(&config_yaml(
        &reader_url,
        "s",
        &["public.t", "public.u"],
        &lake.path().display().to_string(),
        "",
    ));

    let out = pg2lake("check", &config, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✓ table public.t: role reader may SELECT it"),
        "{text}"
    );
    assert!(
        text.contains("✗ table public.u: role reader may SELECT it"),
        "{text}"
    );
    assert!(
        text.contains("fix: GRANT SELECT ON \"public\".\"u\" TO reader;"),
        "{text}"
    );
    assert!(
        text.contains("publication s publishes 1 tables (public.t) but the config names 2"),
        "{text}"
    );

    db.batch_execute("GRANT SELECT ON u TO reader; ALTER PUBLICATION s ADD TABLE u;")
        .await
        .expect("grant and publish");
    let out = pg2lake("check", &config, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("✓ publication s publishes the 2 configured tables"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_lag_seconds_while_streaming() {
    let pg = PgServer::start();
    let url = pg.create_database("app").await;
    let db = pg.connect("app").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("table");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "st",
        &["public.t"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);
    db.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("insert");
    let status = |config: &ConfigFile| -> serde_json::Value {
        let out = pg2lake("status", config, &["--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    };
    wait_until(TIMEOUT, "a walsender lag in status", || {
        status(&config)["lag_seconds"].is_f64()
    });
    let json = status(&config);
    assert!(json["lag_seconds"].as_f64().expect("lag") < 60.0, "{json}");
    let human = stdout(&pg2lake("status", &config, &[]));
    assert!(human.contains("s behind"), "{human}");

    assert!(service.stop(Duration::from_secs(30)).success());
    let json = status(&config);
    assert!(
        json["lag_seconds"].is_null(),
        "no walsender once stopped: {json}"
    );
    assert!(stdout(&pg2lake("status", &config, &[])).contains("no walsender"));
}
