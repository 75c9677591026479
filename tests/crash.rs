//! Faults while changes stream in: kill -9 at arbitrary points, and the network to
//! Postgres cut or frozen. Afterwards the lake's change log folded to current state
//! equals the source, and no change appears twice.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::bank::{assert_lake_equals_source, load, stop_and_compare};
use support::lake::wait_caught_up;
use support::load::Rng;
use support::proxy::Proxy;
use support::scrape::{get, with_metrics};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgOptions, PgServer};

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_load_then_restart_is_exactly_once() {
    let pg = PgServer::start();
    let url = pg.create_database("bank").await;
    let db = pg.connect("bank").await;
    db.batch_execute(support::bank::SCHEMA).await.unwrap();
    let lake = tempfile::tempdir().unwrap();
    // Small flushes: many commits, so kills land between, during and after them.
    let config = ConfigFile::new(
        &config_yaml(
            &url,
            "crash",
            &["public.accounts", "public.ledger"],
            &lake.path().display().to_string(),
            "",
        )
        .replace(
            "flush:\n  max_interval: 200ms\n",
            "flush:\n  max_interval: 100ms\n  max_rows: 300\n",
        ),
    );

    // The slot must exist before the load starts: a change committed before it would
    // never be streamed.
    let mut first = Service::start(&config, &[]);
    first.wait_streaming(Duration::from_secs(60));
    assert!(first.stop(Duration::from_secs(30)).success());

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        pg.connect("bank").await,
        stop.clone(),
        0x9E37_79B9_7F4A_7C15,
    ));

    let mut rng = Rng(42);
    for round in 0..5 {
        let mut service = Service::start(&config, &[]);
        let alive = Duration::from_millis(800 + rng.below(1500));
        tokio::time::sleep(alive).await;
        assert!(
            service.is_running(),
            "round {round}: pg2lake died:\n{}",
            service.log()
        );
        service.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    let committed = loader.await.unwrap();
    assert!(
        committed > 50,
        "the load committed only {committed} transactions"
    );

    let mut service = Service::start(&config, &[]);
    wait_caught_up(&db, "crash", Duration::from_secs(300)).await;
    assert_lake_equals_source(&db, lake.path(), "accounts").await;
    assert_lake_equals_source(&db, lake.path(), "ledger").await;
    assert!(service.stop(Duration::from_secs(30)).success());
}

/// Waits until the service's log holds more than `before` reconnect lines and returns how
/// many it holds and how long that took.
fn wait_reconnects(service: &Service, before: usize, within: Duration) -> (usize, Duration) {
    let started = Instant::now();
    loop {
        let now = service
            .log()
            .matches("replication session failed; reconnecting")
            .count();
        if now > before {
            return (now, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "pg2lake did not notice within {within:?}:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The network between pg2lake and Postgres fails twice under load: first it freezes (no
/// byte moves, no RST: a dead route), then every connection is cut. pg2lake notices the
/// freeze within the server's wal_sender_timeout plus a status interval, reconnects
/// once the network is back, and the lake ends exactly equal to the source.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_or_frozen_network_to_postgres_is_noticed_and_loses_nothing() {
    let pg = PgServer::start_with(PgOptions {
        conf: vec!["wal_sender_timeout = 5s".into()],
        ..PgOptions::default()
    });
    let url = pg.create_database("net").await;
    let db = pg.connect("net").await;
    db.batch_execute(support::bank::SCHEMA)
        .await
        .expect("schema");
    let proxy = Proxy::start(&format!("127.0.0.1:{}", pg.port));
    let url = url.replace(&format!(":{}/", pg.port), &format!(":{}/", proxy.port));
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "net",
        &["public.accounts", "public.ledger"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("net").await, stop.clone(), 7));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Frozen: wal_sender_timeout (5 s) and a status interval (1 s) at most, plus slack
    // for a loaded machine.
    proxy.freeze();
    let (reconnects, noticed) = wait_reconnects(&service, 0, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    proxy.thaw();
    eprintln!("a frozen network was noticed after {noticed:?}");
    wait_caught_up(&db, "net", Duration::from_secs(120)).await;

    proxy.cut();
    let (_, noticed_cut) = wait_reconnects(&service, reconnects, Duration::from_secs(20));
    eprintln!("a cut network was noticed after {noticed_cut:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_and_compare(&stop, loader, &db, "net", lake.path()).await;
    assert!(service.stop(Duration::from_secs(30)).success());
}

/// Two instances with one configuration: one streams, the other waits as a standby
/// (not ready on /readyz, alive on /healthz) and takes over within seconds when the
/// first is killed. The lake ends exactly equal to the source.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_within_seconds_when_the_active_instance_dies() {
    let pg = PgServer::start();
    let url = pg.create_database("pair").await;
    let db = pg.connect("pair").await;
    db.batch_execute(support::bank::SCHEMA)
        .await
        .expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let yaml = config_yaml(
        &url,
        "pair",
        &["public.accounts", "public.ledger"],
        &lake.path().display().to_string(),
        "",
    );
    let (port_a, port_b) = (support::free_port(), support::free_port());
    let config_a = ConfigFile::new(&with_metrics(&yaml, port_a, ""));
    let config_b = ConfigFile::new(&with_metrics(&yaml, port_b, ""));
    let mut active = Service::start(&config_a, &[]);
    active.wait_streaming(Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("pair").await, stop.clone(), 11));

    let mut standby = Service::start(&config_b, &[]);
    support::wait_until(Duration::from_secs(30), "the standby waits", || {
        standby.log().contains("in use by another process")
    });
    let (code, body) = get(port_b, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(get(port_b, "/healthz").0, 200);
    assert_eq!(get(port_a, "/readyz").0, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;

    active.kill9();
    let killed = Instant::now();
    support::wait_until(Duration::from_secs(30), "the standby takes over", || {
        standby.log().contains("streaming changes")
    });
    let took = killed.elapsed();
    eprintln!("the standby took over {took:?} after the active instance died");
    assert!(took < Duration::from_secs(15), "took over after {took:?}");
    support::wait_until(Duration::from_secs(30), "the new active is ready", || {
        get(port_b, "/readyz").0 == 200
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_and_compare(&stop, loader, &db, "pair", lake.path()).await;
    assert!(standby.stop(Duration::from_secs(30)).success());
}

/// Postgres crashes (`pg_ctl stop -m immediate`) twice: in the middle of the initial
/// load of a large table, and while pg2lake receives a large transaction. pg2lake
/// retries by itself both times, and the lake ends exactly equal to the source.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_crash_mid_load_and_mid_transaction_loses_nothing() {
    let mut pg = PgServer::start();
    let url = pg.create_database("crashing").await;
    {
        let db = pg.connect("crashing").await;
        db.batch_execute(support::bank::SCHEMA)
            .await
            .expect("schema");
        db.batch_execute(
            "INSERT INTO accounts SELECT g, g, repeat('x', 200) || g FROM generate_series(1, 300000) g",
        )
        .await
        .expect("a table that takes a while to copy");
    }
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(
        &config_yaml(
            &url,
            "crashing",
            &["public.accounts", "public.ledger"],
            &lake.path().display().to_string(),
            "",
        )
        .replace(
            "heartbeat_interval: 2s\n",
            "heartbeat_interval: 2s\n  reconnect_max_backoff: 1s\n",
        ),
    );
    let mut service = Service::start(&config, &[]);
    support::wait_until(Duration::from_secs(60), "the initial load", || {
        service.log().contains("snapshot of table started")
    });
    std::thread::sleep(Duration::from_millis(300));
    pg.kill();
    assert!(
        !service
            .log()
            .contains("snapshot of table committed\",\"table\":\"public.accounts"),
        "the crash came too late to interrupt the load"
    );
    std::thread::sleep(Duration::from_secs(1));
    pg.restart();
    service.wait_streaming(Duration::from_secs(180));
    assert!(
        service.is_running(),
        "pg2lake must survive:\n{}",
        service.log()
    );

    let db = pg.connect("crashing").await;
    db.batch_execute(
        "INSERT INTO ledger SELECT g, g, 'big' || g FROM generate_series(1, 200000) g;
         UPDATE accounts SET balance = -balance WHERE id % 1000 = 0;",
    )
    .await
    .expect("a large transaction");
    std::thread::sleep(Duration::from_millis(200));
    pg.kill();
    std::thread::sleep(Duration::from_secs(1));
    pg.restart();
    let db = pg.connect("crashing").await;
    db.batch_execute("UPDATE ledger SET balance = 0 WHERE id <= 10")
        .await
        .expect("a change after the crash");
    wait_caught_up(&db, "crashing", Duration::from_secs(180)).await;
    assert!(
        service.is_running(),
        "pg2lake must survive:\n{}",
        service.log()
    );
    assert!(
        service.log().contains("reconnecting"),
        "the crashes were noticed"
    );
    assert_lake_equals_source(&db, lake.path(), "accounts").await;
    assert_lake_equals_source(&db, lake.path(), "ledger").await;
    assert!(service.stop(Duration::from_secs(30)).success());
}
