//! The same end-to-end path against an S3-compatible server (moto in server mode), with the
//! lake read back through S3 by the Python `deltalake` reader; and S3 throttling, retried
//! and counted.

mod support;

use std::time::Duration;

use serde_json::json;
use support::bank::{SCHEMA, assert_table_equals_source, load};
use support::lake::{assert_no_duplicates, fold, in_change_order, op, wait_caught_up};
use support::proxy::Proxy;
use support::scrape::{get, sample, with_metrics};
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::throttle::ThrottlingProxy;
use support::{PgServer, S3Server, free_port, read_delta};

#[tokio::test(flavor = "multi_thread")]
async fn streams_into_an_s3_lake() {
    let s3 = S3Server::start();
    let pg = PgServer::start();
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, total numeric(10,2), note text)")
        .await
        .unwrap();
    let lake_url = format!("s3://{}/lake", s3.bucket);
    let config = ConfigFile::new(&config_yaml(
        &url,
        "s3",
        &["public.orders"],
        &lake_url,
        &format!(
            "  endpoint: {}\n  region: us-east-1\n  allow_http: true\n  checkpoint_interval: 3\n  retention: 1s\n  compaction:\n    enabled: false\n    min_files: 2\n",
            s3.endpoint
        ),
    ));
    let credentials = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
    ];
    let mut service = Service::start(&config, &credentials);
    service.wait_streaming(Duration::from_secs(30));
    for batch in 0..5 {
        db.batch_execute(&format!(
            "INSERT INTO orders SELECT g, g * 1.25, 'b{batch}' FROM generate_series({}, {}) g;
             UPDATE orders SET note = 'updated' WHERE id = {};
             DELETE FROM orders WHERE id = {};",
            batch * 100 + 1,
            batch * 100 + 100,
            batch * 100 + 1,
            batch * 100 + 2
        ))
        .await
        .unwrap();
        // Separate flushes: several Delta versions, and a checkpoint at interval 3.
        wait_caught_up(&db, "s3", Duration::from_secs(60)).await;
    }
    let table = read_delta(&format!("{lake_url}/public/orders"), &s3.storage_options());
    assert!(
        table.version >= 5,
        "one version per flush, got {}",
        table.version
    );
    let rows = in_change_order(table.rows);
    assert_no_duplicates(&rows);
    assert_eq!(rows.iter().filter(|r| op(r) == "d").count(), 5);
    let state = fold(rows, "id");
    assert_eq!(state.len(), 495);
    assert_eq!(state["101"]["note"], json!("updated"));
    assert_eq!(state["150"]["total"], json!("187.50"));
    assert!(
        service.stop(Duration::from_secs(30)).success(),
        "{}",
        service.log()
    );

    // Maintenance on S3: the lease, the compaction commit and VACUUM's listing go through
    // the S3 API. The first pass compacts, the second (a retention later) deletes the
    // replaced files; the rows stay the same throughout.
    let before = read_delta(&format!("{lake_url}/public/orders"), &s3.storage_options());
    let path = config.path().display().to_string();
    let mut deleted = 0;
    for pass in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        let out = run_command(
            &["maintain", "--config", &path, "--json"],
            &credentials,
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "pass {pass}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
        let table = &report["tables"][0];
        assert_eq!(table["table"], "public.orders", "{report:#}");
        if pass == 0 {
            assert!(
                table["compaction"]["files_removed"].as_u64() >= Some(2),
                "{report:#}"
            );
        }
        deleted += table["vacuum"]["files"].as_array().map_or(0, Vec::len);
    }
    let after = read_delta(&format!("{lake_url}/public/orders"), &s3.storage_options());
    assert_eq!(after.rows, before.rows);
    assert!(after.files.len() < before.files.len());
    assert!(deleted >= 2, "VACUUM deleted {deleted} files");

    // forget on S3: the rewrite, the checkpoint and the deletes of files and log
    // versions go through the S3 API.
    let out = run_command(
        &[
            "forget",
            "--config",
            &path,
            "--table",
            "public.orders",
            "--key",
            r#"{"id": 150}"#,
            "--json",
        ],
        &credentials,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let erased = &report["tables"][0]["change_log"];
    assert!(erased["rows_removed"].as_u64() >= Some(1), "{report:#}");
    let first = erased["history_starts_at"].as_i64().expect("history start");
    let forgotten = read_delta(&format!("{lake_url}/public/orders"), &s3.storage_options());
    let without: Vec<_> = after
        .rows
        .into_iter()
        .filter(|r| r["id"] != json!(150))
        .collect();
    assert_eq!(forgotten.rows, without);
    let older_logs: Vec<String> = s3
        .list_keys("lake/public/orders/_delta_log/")
        .into_iter()
        .filter(|key| {
            let name = key.rsplit('/').next().unwrap_or_default();
            name.get(..20)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < first)
        })
        .collect();
    assert!(
        older_logs.is_empty(),
        "log versions before the erasure: {older_logs:?}"
    );
}

/// S3 answering `503 Slow Down` to the first requests: the S3 client retries them with
/// backoff, pg2lake writes the lake as usual, and every throttled attempt shows in
/// `pg2lake_object_store_retries_total` while `_errors_total` stays at zero.
#[tokio::test(flavor = "multi_thread")]
async fn throttled_requests_are_retried_and_counted() {
    const THROTTLED: usize = 4;
    let s3 = S3Server::start();
    let proxy = ThrottlingProxy::start(&s3.endpoint, THROTTLED);
    let pg = PgServer::start();
    let url = pg.create_database("throttled").await;
    let db = pg.connect("throttled").await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let lake_url = format!("s3://{}/lake", s3.bucket);
    let port = free_port();
    let config = ConfigFile::new(&with_metrics(
        &config_yaml(
            &url,
            "throttled",
            &["public.items"],
            &lake_url,
            &format!(
                "  endpoint: {}\n  region: us-east-1\n  allow_http: true\n",
                proxy.endpoint
            ),
        ),
        port,
        "",
    ));
    let credentials = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
    ];
    let mut service = Service::start(&config, &credentials);
    service.wait_streaming(Duration::from_secs(60));
    db.batch_execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(51, 80) g")
        .await
        .unwrap();
    wait_caught_up(&db, "throttled", Duration::from_secs(60)).await;
    assert_eq!(
        proxy.throttled(),
        THROTTLED,
        "the proxy throttled its first requests"
    );

    let (status, metrics) = get(port, "/metrics");
    assert_eq!(status, 200);
    let by_op = |name: &str| -> f64 {
        pg2lake::metrics::OBJECT_STORE_OPS
            .iter()
            .chain(std::iter::once(&"credentials"))
            .filter_map(|op| sample(&metrics, &format!("{name}{{op=\"{op}\"}}")))
            .sum()
    };
    let retries = by_op("pg2lake_object_store_retries_total");
    assert!(
        retries >= THROTTLED as f64,
        "{THROTTLED} throttled attempts, {retries} retries counted:\n{metrics}"
    );
    assert_eq!(
        by_op("pg2lake_object_store_errors_total"),
        0.0,
        "every throttled request succeeded on a retry:\n{metrics}"
    );
    assert!(by_op("pg2lake_object_store_requests_total") > 0.0);
    assert!(
        service.stop(Duration::from_secs(30)).success(),
        "{}",
        service.log()
    );

    let rows = in_change_order(
        read_delta(&format!("{lake_url}/public/items"), &s3.storage_options()).rows,
    );
    assert_no_duplicates(&rows);
    let state = fold(rows, "id");
    assert_eq!(state.len(), 80);
    assert_eq!(state["80"]["name"], json!("n80"));
}

/// How long the object store is down in the outage test: several minutes, long enough
/// for many failed sessions and retries in a row.
const OUTAGE_SECONDS: u64 = 180;

/// The sum of every sample of the metric `name` (all label values).
fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The object store goes down under load for three minutes: every open connection cut,
/// every new one refused; later it hangs for 35 s, past the S3 client's request timeout.
/// The S3 client retries with backoff and pg2lake stops reading from the walsender while
/// its commit waits (backpressure), so memory stays bounded; the retries and the growing
/// lag show in the metrics, and when the store is back pg2lake catches up by itself, the
/// lake exactly equal to the source.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_store_outage_is_survived_and_shows_in_the_metrics() {
    let s3 = S3Server::start();
    let proxy = Proxy::start(s3.endpoint.trim_start_matches("http://"));
    let pg = PgServer::start();
    let url = pg.create_database("outage").await;
    let db = pg.connect("outage").await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let lake_url = format!("s3://{}/outage", s3.bucket);
    let port = free_port();
    let yaml = config_yaml(
        &url,
        "outage",
        &["public.accounts", "public.ledger"],
        &lake_url,
        &format!(
            "  endpoint: http://127.0.0.1:{}\n  region: us-east-1\n  allow_http: true\n",
            proxy.port
        ),
    );
    let config = ConfigFile::new(&with_metrics(&yaml, port, "  ready_max_lag: 5s\n"));
    let credentials = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
    ];
    let mut service = Service::start(&config, &credentials);
    service.wait_streaming(Duration::from_secs(60));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("outage").await, stop.clone(), 3));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = get(port, "/metrics").1;
    proxy.set_down(true);
    let mut lag = 0.0_f64;
    let mut not_ready = false;
    for _ in 0..OUTAGE_SECONDS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let metrics = get(port, "/metrics").1;
        lag = lag.max(sample(&metrics, "pg2lake_replication_lag_seconds").unwrap_or(0.0));
        not_ready |= get(port, "/readyz").0 == 503;
    }
    let during = get(port, "/metrics").1;
    // The peak so far (VmHWM): through the whole outage.
    let peak_during = service.peak_rss();
    proxy.set_down(false);
    assert!(
        service.is_running(),
        "pg2lake must ride out the outage:\n{}",
        service.log()
    );
    let failed = |m: &str| {
        total(m, "pg2lake_object_store_retries_total")
            + total(m, "pg2lake_object_store_errors_total")
    };
    assert!(
        failed(&during) > failed(&before),
        "the outage shows as retried or failed requests:\n{during}"
    );
    // The lag is measured from the oldest change not in the lake: it grows through
    // the whole outage, across the sessions that fail meanwhile.
    assert!(
        lag >= (OUTAGE_SECONDS - 30) as f64,
        "the lag grew through the outage: {lag}"
    );
    assert!(not_ready, "/readyz reported the lag");

    // Recovered by itself: the reconnect backoff (30 s at most by then) ends, the
    // backlog is committed and the lag falls under ready_max_lag again.
    let recovering = std::time::Instant::now();
    support::wait_until(
        Duration::from_secs(240),
        "ready again after the outage",
        || get(port, "/readyz").0 == 200,
    );
    eprintln!(
        "ready again {:.0} s after the store came back",
        recovering.elapsed().as_secs_f64()
    );

    // Then the store hangs instead (no answer, no reset) for longer than the S3 client's
    // 30 s request timeout: the request times out and is retried, and pg2lake goes on
    // once the store answers again.
    let before = get(port, "/metrics").1;
    proxy.freeze();
    tokio::time::sleep(Duration::from_secs(35)).await;
    proxy.thaw();
    assert!(
        service.is_running(),
        "pg2lake must ride out the stall:\n{}",
        service.log()
    );
    let after = get(port, "/metrics").1;
    assert!(
        failed(&after) > failed(&before),
        "the stall shows as retried or failed requests:\n{after}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = loader.await.expect("loader");
    assert!(
        committed > 50,
        "the load committed only {committed} transactions"
    );
    wait_caught_up(&db, "outage", Duration::from_secs(300)).await;
    for table in ["accounts", "ledger"] {
        let uri = format!("{lake_url}/public/{table}");
        assert_table_equals_source(&db, &uri, &s3.storage_options(), table).await;
    }
    let peak = service.peak_rss();
    assert!(
        peak < 512 * 1024 * 1024,
        "peak RSS {} MiB over the default memory_budget",
        peak >> 20
    );
    eprintln!(
        "after a {OUTAGE_SECONDS} s object-store outage and a 35 s stall: peak RSS {} MiB ({} MiB during the outage), lag up to {lag:.0} s",
        peak >> 20,
        peak_during >> 20
    );
    assert!(service.stop(Duration::from_secs(30)).success());
}
