//! Faults while changes stream in: kill -9 at arbitrary points, and the network to
//! Postgres cut or frozen. Afterwards the lake's change log folded to current state
//! equals the source, and no change appears twice.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::lake::{assert_no_duplicates, fold, wait_caught_up};
use support::load::Rng;
use support::proxy::Proxy;
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgOptions, PgServer, read_delta};

/// Writes random multi-statement transactions (inserts, updates, deletes over 2,000 keys,
/// across two tables) until `stop` is set. Returns how many transactions committed.
async fn load(client: tokio_postgres::Client, stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut committed = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut sql = String::from("BEGIN;");
        for _ in 0..1 + rng.below(20) {
            let id = rng.below(2000);
            let table = if rng.below(4) == 0 {
                "ledger"
            } else {
                "accounts"
            };
            match rng.below(3) {
                0 => sql.push_str(&format!(
                    "INSERT INTO {table} VALUES ({id}, {}, 'n{}') ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance;",
                    rng.below(1_000_000),
                    rng.next()
                )),
                1 => sql.push_str(&format!(
                    "UPDATE {table} SET balance = balance + 1, note = 'u{}' WHERE id = {id};",
                    rng.next()
                )),
                _ => sql.push_str(&format!("DELETE FROM {table} WHERE id = {id};")),
            }
        }
        // Now and then a transaction that never happened.
        let rollback = rng.below(10) == 0;
        sql.push_str(if rollback { "ROLLBACK;" } else { "COMMIT;" });
        client.batch_execute(&sql).await.expect("load transaction");
        if !rollback {
            committed += 1;
        }
        // Paced so the backlog stays within what a debug build catches up with in the
        // final wait: the test is about exactly-once, not throughput.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    committed
}

async fn assert_lake_equals_source(
    client: &tokio_postgres::Client,
    lake: &std::path::Path,
    table: &str,
) {
    let rows = read_delta(&lake.join("public").join(table).display().to_string(), &[]).rows;
    assert_no_duplicates(&rows);
    let history = rows.clone();
    let state = fold(rows, "id");
    let source = client
        .query(
            &format!("SELECT id, balance, note FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .expect("read the source table");
    let source_ids: std::collections::BTreeSet<String> = source
        .iter()
        .map(|row| json!(row.get::<_, i32>(0)).to_string())
        .collect();
    let lake_ids: std::collections::BTreeSet<String> = state.keys().cloned().collect();
    if source_ids != lake_ids {
        // Name the keys that differ and each one's change history in the lake.
        let differ: Vec<&String> = source_ids.symmetric_difference(&lake_ids).collect();
        let trail: Vec<_> = history
            .iter()
            .filter(|r| differ.contains(&&r["id"].to_string()))
            .map(|r| {
                (
                    r["id"].clone(),
                    r["_op"].clone(),
                    r["_lsn"].clone(),
                    r["_seq"].clone(),
                )
            })
            .collect();
        panic!(
            "{table}: keys differ between source ({}) and folded lake ({}): {differ:?}; lake history of those keys: {trail:?}",
            source_ids.len(),
            lake_ids.len()
        );
    }
    for row in &source {
        let id: i32 = row.get(0);
        let balance: i64 = row.get(1);
        let note: String = row.get(2);
        let lake_row = state
            .get(&json!(id).to_string())
            .unwrap_or_else(|| panic!("{table}: row {id} missing in the lake"));
        assert_eq!(
            lake_row["balance"],
            json!(balance),
            "{table}: balance of {id}"
        );
        assert_eq!(lake_row["note"], json!(note), "{table}: note of {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_load_then_restart_is_exactly_once() {
    let pg = PgServer::start();
    let url = pg.create_database("bank").await;
    let db = pg.connect("bank").await;
    db.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL);
         CREATE TABLE ledger (id int PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL);",
    )
    .await
    .unwrap();
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
    db.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL);
         CREATE TABLE ledger (id int PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL);",
    )
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
    stop.store(true, Ordering::Relaxed);
    let committed = loader.await.expect("loader");
    assert!(
        committed > 50,
        "the load committed only {committed} transactions"
    );
    wait_caught_up(&db, "net", Duration::from_secs(120)).await;
    assert_lake_equals_source(&db, lake.path(), "accounts").await;
    assert_lake_equals_source(&db, lake.path(), "ledger").await;
    assert!(service.stop(Duration::from_secs(30)).success());
}
