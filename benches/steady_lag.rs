//! Replication lag under a steady load with a slow object store: pg2lake streams a
//! constant rate of single-row transactions into an S3 lake whose every request arrives
//! 50 ms late, and `pg2lake_replication_lag_seconds` is sampled throughout.
//!
//! ```text
//! cargo bench --bench steady_lag                                 # 2,000 changes/s for 60 s
//! BENCH_RATE=500 BENCH_SECONDS=30 cargo bench --bench steady_lag # another rate, a quicker run
//! ```
//!
//! Why: the replication loop must not wait on the object store. With
//! `flush.max_interval: 1s` a change is due in the lake within about a second; if the
//! loop stopped reading the walsender while a flush's uploads and commit are in flight,
//! every request's latency would add up into the lag. So the claim measured here is that
//! a store answering each request at least 50 ms late does not push the lag's p99 past
//! `flush.max_interval + 1 s` (2 s).
//!
//! Set-up: PostgreSQL (`support::PgServer`), moto in server mode (`support::S3Server`),
//! and in front of moto a `DelayProxy` (tests/support/delay.rs) that sleeps 50 ms before
//! forwarding each chunk of bytes pg2lake sends (up to 64 KiB; answers come back
//! untouched), so every request is answered at least 50 ms late and an upload of several
//! chunks later still. pg2lake replicates `items (id bigint PRIMARY KEY, qty int, note
//! text, at timestamptz)` into `s3://<bucket>/steady_lag` through the relay, with
//! `flush.max_interval: 1s`, the other flush and lake settings at their defaults, and
//! `/metrics` on a free port.
//!
//! The load: one connection issues BENCH_RATE changes per second (default 2,000) for
//! BENCH_SECONDS seconds (default 60), paced by a 10 ms ticker; each tick sends the
//! changes due by then (at most four ticks' worth), each its own single-row transaction
//! (pipelined on the one connection): alternately an INSERT of a new key and an UPDATE
//! of a random key inserted by an earlier tick. The load stops after BENCH_SECONDS
//! whether or not it kept up; the achieved rate is printed, and when it falls short of
//! the target the machine could not generate the load and the lag numbers describe a
//! lighter one.
//!
//! The lag is read from `/metrics` every 100 ms while the load runs, the first 10 s
//! (warm-up: start-up, the first flushes) left out; p50, p99 and max of the samples are
//! printed beside the target and whether p99 is within it. After the load, the time
//! until the slot's `confirmed_flush_lsn` reaches `pg_current_wal_lsn()` at the load's
//! end is printed: pg2lake confirms after each lake commit, and WAL written after the
//! last change on its status tick (`source.status_interval`, 1 s here), so this can
//! include up to a second of idling. Then the lake is counted with the `deltalake`
//! Python package, read from moto directly (not through the relay): it must hold exactly
//! one row per change made. The 1-minute load average at the start is printed too:
//! other work on the machine skews every number here.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::bench::{block_on, load_average, size_from_env, wait_slot_confirmed};
use support::delay::DelayProxy;
use support::load::Rng;
use support::scrape::{get, sample_or_panic, with_metrics};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgServer, S3Server, free_port};

/// Changes per second when `BENCH_RATE` is unset.
const DEFAULT_RATE: u64 = 2_000;
/// Seconds of load when `BENCH_SECONDS` is unset.
const DEFAULT_SECONDS: u64 = 60;
/// Slot and publication (config_yaml names the publication after the slot).
const SLOT: &str = "steady";
/// What the relay adds to every chunk pg2lake sends to the object store.
const STORE_DELAY: Duration = Duration::from_millis(50);
/// `flush.max_interval` of the run.
const FLUSH_MAX_INTERVAL: Duration = Duration::from_secs(1);
/// The same, as written in the config.
const FLUSH_MAX_INTERVAL_YAML: &str = "1s";
/// The lag's p99 must stay within `flush.max_interval` plus this.
const TARGET_MARGIN: Duration = Duration::from_secs(1);
/// The load generator's ticker.
const TICK: Duration = Duration::from_millis(10);
/// Most ticks' worth of changes one tick sends when the generator fell behind.
const MAX_TICKS_PER_BATCH: f64 = 4.0;
/// How often the lag is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Samples taken in the load's first seconds are left out.
const WARM_UP: Duration = Duration::from_secs(10);
/// Longest pg2lake may take to confirm the load's last change.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

fn main() {
    // `cargo bench` passes `--bench`; any filter argument is ignored (one benchmark).
    block_on(run(
        size_from_env("BENCH_RATE", DEFAULT_RATE),
        size_from_env("BENCH_SECONDS", DEFAULT_SECONDS),
    ));
}

async fn run(rate: u64, seconds: u64) {
    assert!(rate > 0, "BENCH_RATE must be at least 1");
    assert!(
        Duration::from_secs(seconds) > WARM_UP,
        "BENCH_SECONDS must be more than the {}s warm-up",
        WARM_UP.as_secs()
    );
    println!("load average (1 min) at start: {:.2}", load_average());

    let s3 = S3Server::start();
    let relay = DelayProxy::start(s3.endpoint.trim_start_matches("http://"), STORE_DELAY);
    let pg = PgServer::start();
    let url = pg.create_database("bench").await;
    let db = pg.connect("bench").await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int, note text, at timestamptz)",
    )
    .await
    .expect("schema");

    let lake_url = s3.uri("steady_lag");
    let port = free_port();
    let yaml = config_yaml(
        &url,
        SLOT,
        &["public.items"],
        &lake_url,
        &format!(
            "  endpoint: {}\n  region: us-east-1\n  allow_http: true\n",
            relay.endpoint
        ),
    );
    let default_flush = "flush:\n  max_interval: 200ms\n";
    assert!(yaml.contains(default_flush), "{yaml}");
    let yaml = yaml.replace(
        default_flush,
        &format!("flush:\n  max_interval: {FLUSH_MAX_INTERVAL_YAML}\n"),
    );
    let config = ConfigFile::new(&with_metrics(&yaml, port, ""));
    let credentials = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
    ];
    let mut service = Service::start(&config, &credentials);
    service.wait_streaming(Duration::from_secs(120));
    println!(
        "object store: moto behind a relay delaying each chunk to it by {} ms; flush.max_interval {FLUSH_MAX_INTERVAL_YAML}",
        STORE_DELAY.as_millis()
    );

    // The sampler runs on its own thread (blocking HTTP) while the load runs here.
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || sample_lag(port, load_started, &stop))
    };
    let load = generate_load(pg.connect("bench").await, rate, seconds, load_started).await;
    let load_ended = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let end_lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("end lsn")
        .get(0);
    let poll = Duration::from_millis(10);
    wait_slot_confirmed(&db, &mut service, SLOT, &end_lsn, CATCH_UP_TIMEOUT, poll).await;
    let catch_up = load_ended.elapsed();
    let mut lags = sampler.join().expect("lag sampler");

    let changes = load.inserts + load.updates;
    println!(
        "load: {changes} changes ({} inserts, {} updates) in {:.1}s: {:.0} changes/s achieved (target {rate})",
        load.inserts,
        load.updates,
        load.elapsed.as_secs_f64(),
        changes as f64 / load.elapsed.as_secs_f64()
    );

    lags.sort_by(f64::total_cmp);
    let target = (FLUSH_MAX_INTERVAL + TARGET_MARGIN).as_secs_f64();
    let p99 = percentile(&lags, 0.99);
    println!(
        "lag samples: {} (every {} ms after a {}s warm-up)",
        lags.len(),
        SAMPLE_EVERY.as_millis(),
        WARM_UP.as_secs()
    );
    println!(
        "replication lag: p50 {:.3}s  p99 {p99:.3}s  max {:.3}s",
        percentile(&lags, 0.5),
        lags.last().copied().unwrap_or_default()
    );
    println!(
        "target for p99 (flush.max_interval + 1s): {target:.3}s; within target: {}",
        if p99 <= target { "yes" } else { "no" }
    );

    println!(
        "caught up {:.2}s after the load stopped (slot confirmed {end_lsn})",
        catch_up.as_secs_f64()
    );
    println!(
        "relay delayed {} chunks on their way to the object store",
        relay.delayed_chunks()
    );
    assert!(
        service.stop(Duration::from_secs(60)).success(),
        "{}",
        service.log()
    );

    let rows =
        support::count_delta_rows_at(&format!("{lake_url}/public/items"), &s3.storage_options());
    println!("lake rows (read with the deltalake package): {rows}; changes made: {changes}");
    assert_eq!(
        rows, changes,
        "the lake holds one row per change made (read with the deltalake package)"
    );
}

/// What the load generator did.
struct Load {
    inserts: u64,
    updates: u64,
    /// From the load's start until its last transaction returned.
    elapsed: Duration,
}

/// One single-row transaction.
enum Change {
    Insert(i64),
    Update(i64),
}

/// Runs `rate` single-row transactions per second for `seconds` seconds from `started`,
/// on `client`: every `TICK`, the changes due by then (at most `MAX_TICKS_PER_BATCH`
/// ticks' worth), pipelined, each its own implicit transaction; alternately an INSERT of
/// the next key and an UPDATE of a random key inserted by an earlier tick.
async fn generate_load(
    client: tokio_postgres::Client,
    rate: u64,
    seconds: u64,
    started: Instant,
) -> Load {
    let insert = client
        .prepare("INSERT INTO items VALUES ($1, 1, $2, now())")
        .await
        .expect("prepare insert");
    let update = client
        .prepare("UPDATE items SET qty = qty + 1, at = now() WHERE id = $1")
        .await
        .expect("prepare update");
    let duration = Duration::from_secs(seconds);
    let max_batch = (rate as f64 * TICK.as_secs_f64() * MAX_TICKS_PER_BATCH).ceil() as u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut issued, mut inserted, mut updates) = (0_u64, 0_i64, 0_u64);
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let elapsed = started.elapsed().min(duration);
        let due = (rate as f64 * elapsed.as_secs_f64()) as u64;
        let count = due.saturating_sub(issued).min(max_batch.max(1));
        // Updates pick among keys inserted by earlier ticks (committed already), so no
        // update depends on the order of the pipelined transactions; until there are
        // any, every change is an insert.
        let committed_keys = inserted as u64;
        let mut batch = Vec::with_capacity(count as usize);
        for _ in 0..count {
            if issued % 2 == 0 || committed_keys == 0 {
                inserted += 1;
                batch.push(Change::Insert(inserted));
            } else {
                let key = rng.below(committed_keys) as i64 + 1;
                batch.push(Change::Update(key));
                updates += 1;
            }
            issued += 1;
        }
        let results = futures::future::try_join_all(batch.iter().map(|change| async {
            match change {
                Change::Insert(id) => client.execute(&insert, &[id, &format!("item {id}")]).await,
                Change::Update(id) => client.execute(&update, &[id]).await,
            }
        }))
        .await
        .expect("load transaction");
        assert!(
            results.iter().all(|&rows| rows == 1),
            "every transaction changes one row"
        );
        if elapsed >= duration {
            break;
        }
    }
    Load {
        inserts: inserted as u64,
        updates,
        elapsed: started.elapsed(),
    }
}

/// Reads `pg2lake_replication_lag_seconds` from the metrics endpoint on `port` every
/// `SAMPLE_EVERY` until `stop`; returns the samples taken after the warm-up.
fn sample_lag(port: u16, started: Instant, stop: &AtomicBool) -> Vec<f64> {
    let mut lags = Vec::new();
    let mut next = started;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
            continue;
        }
        next += SAMPLE_EVERY;
        let (status, metrics) = get(port, "/metrics");
        assert_eq!(status, 200, "/metrics answered {status}:\n{metrics}");
        if started.elapsed() >= WARM_UP {
            lags.push(sample_or_panic(&metrics, "pg2lake_replication_lag_seconds"));
        }
    }
    lags
}

/// The nearest-rank `q` quantile of `sorted` (0 when empty).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
