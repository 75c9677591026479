//! What the benchmarks share: the size knob, the `items` table, and draining a queued
//! backlog of WAL (pg2lake until its slot confirms a position, `pg_recvlogical` until it
//! reaches one), optionally measuring the CPU time of the walsender that serves the
//! drain ([`WalsenderCpu`]) and of pg2lake.

use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::PgServer;
use super::service::{ConfigFile, Service};

/// The number in the environment variable `var` (e.g. `BENCH_ROWS`), or `default`.
pub fn size_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{var} is a number")))
        .unwrap_or(default)
}

/// Runs `bench` on a fresh multi-threaded runtime.
pub fn block_on<F: std::future::Future>(bench: F) -> F::Output {
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(bench)
}

/// Creates `items` (bigint key, int, text, timestamptz, numeric(12,2), jsonb) with
/// `rows` rows, then VACUUM ANALYZE (hint bits set, the row estimate known).
pub async fn build_items(db: &tokio_postgres::Client, rows: u64) {
    db.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, note text, at timestamptz NOT NULL,
                             price numeric(12,2), doc jsonb);
         INSERT INTO items
           SELECT g, g % 1000, 'item number ' || g, timestamptz '2026-01-01' + g * interval '1 second',
                  (g % 100000) / 100.0, jsonb_build_object('k', g, 'tag', 'x' || (g % 97))
           FROM generate_series(1, {rows}) g;"
    ))
    .await
    .expect("build the table");
    // On its own: VACUUM cannot run inside the implicit transaction of a multi-statement
    // query.
    db.batch_execute("VACUUM ANALYZE items")
        .await
        .expect("vacuum");
}

/// A PostgreSQL server with WAL room for millions of rows, its database `bench` holding
/// `items` of `rows` rows ([`build_items`]): the server, the database's URL, a client,
/// and how long building the table took.
pub async fn items_database(rows: u64) -> (PgServer, String, tokio_postgres::Client, Duration) {
    let pg = PgServer::start_with(super::PgOptions {
        conf: vec!["max_wal_size = '8GB'".into()],
        ..super::PgOptions::default()
    });
    let url = pg.create_database("bench").await;
    let db = pg.connect("bench").await;
    let started = Instant::now();
    build_items(&db, rows).await;
    (pg, url, db, started.elapsed())
}

/// `yaml` (made by `config_yaml`) flushing as soon as a transaction is complete (the
/// flush timer's floor is 50 ms), so waiting after each transaction keeps it a Delta
/// version of its own.
pub fn flush_each_transaction(yaml: &str) -> String {
    const DEFAULT: &str = "flush:\n  max_interval: 200ms\n";
    assert!(yaml.contains(DEFAULT), "{yaml}");
    yaml.replace(DEFAULT, "flush:\n  max_interval: 1ms\n")
}

/// The lake of an `items` benchmark: a temporary folder, the change log's folder and URI
/// in it, and a configuration (`config_yaml` with `extra`, slot `slot`) that flushes
/// each transaction as soon as it is complete ([`flush_each_transaction`]).
pub fn items_lake(
    url: &str,
    slot: &str,
    extra: &str,
) -> (tempfile::TempDir, std::path::PathBuf, String, ConfigFile) {
    let lake = tempfile::tempdir().expect("lake dir");
    let table_dir = lake.path().join("public/items");
    let table_uri = table_dir.display().to_string();
    let yaml = super::service::config_yaml(
        url,
        slot,
        &["public.items"],
        &lake.path().display().to_string(),
        extra,
    );
    let config = ConfigFile::new(&flush_each_transaction(&yaml));
    (lake, table_dir, table_uri, config)
}

/// Waits (polling every 2 ms) until the Delta table in `table_dir` has version `version`;
/// panics naming `what` after `timeout`, or when pg2lake exits.
pub async fn wait_for_version(
    table_dir: &std::path::Path,
    version: u64,
    service: &mut Service,
    timeout: Duration,
    what: &str,
) {
    let deadline = Instant::now() + timeout;
    while !version_file(table_dir, version).exists() {
        assert!(
            Instant::now() < deadline,
            "pg2lake did not commit {what} (version {version}) within {timeout:?}"
        );
        assert!(
            service.is_running(),
            "pg2lake exited; log:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

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
    let (elapsed, mut service) = run_pg2lake_until_confirmed(db, config, slot, end_lsn).await;
    let peak = service.peak_rss();
    assert!(service.stop(Duration::from_secs(60)).success());
    (elapsed, peak)
}

/// What a measured drain saw ([`drain_with_pg_recvlogical_measured`],
/// [`drain_with_pg2lake_measured`]).
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// Wall time from starting the consumer until it reached the end of the backlog.
    pub time: Duration,
    /// CPU seconds (user + system) of the walsender serving the slot during the drain;
    /// `None` when the drain was over before a walsender was seen.
    pub walsender_cpu: Option<f64>,
    /// CPU seconds (user + system, all threads) of the consumer, read just before it was
    /// stopped: pg2lake only.
    pub consumer_cpu: Option<f64>,
    /// Peak resident memory of the consumer in bytes: pg2lake only (0 otherwise).
    pub peak_rss: u64,
}

impl Drain {
    /// The walsender's busy fraction: its CPU time over the drain's wall time. Below 1.0
    /// it waited on its consumer, or needed less CPU for the same WAL (it sends in bulk
    /// to a consumer that lets its socket fill).
    pub fn walsender_busy(&self) -> Option<f64> {
        self.walsender_cpu
            .map(|cpu| cpu / self.time.as_secs_f64().max(f64::MIN_POSITIVE))
    }
}

/// [`drain_with_pg_recvlogical`], also sampling the CPU time of the walsender serving
/// `slot` (found through a connection to `url`).
pub fn drain_with_pg_recvlogical_measured(
    pg: &PgServer,
    url: &str,
    slot: &str,
    publication: &str,
    options: &[&str],
    end_lsn: &str,
) -> Drain {
    let walsender = WalsenderCpu::start(url, slot);
    let time = drain_with_pg_recvlogical(pg, url, slot, publication, options, end_lsn);
    Drain {
        time,
        walsender_cpu: walsender.finish(),
        consumer_cpu: None,
        peak_rss: 0,
    }
}

/// [`drain_with_pg2lake`], also sampling the CPU time of the walsender serving `slot`
/// (found through a connection to `url`) and reading pg2lake's own CPU time just before
/// it is stopped.
pub async fn drain_with_pg2lake_measured(
    db: &tokio_postgres::Client,
    url: &str,
    config: &ConfigFile,
    slot: &str,
    end_lsn: &str,
) -> Drain {
    let walsender = WalsenderCpu::start(url, slot);
    let (time, mut service) = run_pg2lake_until_confirmed(db, config, slot, end_lsn).await;
    let walsender_cpu = walsender.finish();
    let consumer_cpu = cpu_seconds_of(service.pid());
    let peak_rss = service.peak_rss();
    assert!(service.stop(Duration::from_secs(60)).success());
    Drain {
        time,
        walsender_cpu,
        consumer_cpu,
        peak_rss,
    }
}

/// Starts `pg2lake run` with `config` and waits until `slot` has confirmed `end_lsn`;
/// the time it took and the still running process.
async fn run_pg2lake_until_confirmed(
    db: &tokio_postgres::Client,
    config: &ConfigFile,
    slot: &str,
    end_lsn: &str,
) -> (Duration, Service) {
    let started = Instant::now();
    let mut service = Service::start(config, &[]);
    let poll = Duration::from_millis(50);
    wait_slot_confirmed(db, &mut service, slot, end_lsn, DRAIN_TIMEOUT, poll).await;
    (started.elapsed(), service)
}

/// Waits (polling every `poll`) until `slot` has confirmed `end_lsn`, which pg2lake
/// does only once every change up to there is committed in the lake; fails when
/// `service` exits or `timeout` passes first.
pub async fn wait_slot_confirmed(
    db: &tokio_postgres::Client,
    service: &mut Service,
    slot: &str,
    end_lsn: &str,
    timeout: Duration,
    poll: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let done: Option<bool> = db
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&end_lsn, &slot],
            )
            .await
            .expect("slot position")
            .get(0);
        if done == Some(true) {
            return;
        }
        assert!(
            service.is_running(),
            "pg2lake exited; log:\n{}",
            service.log()
        );
        assert!(
            Instant::now() < deadline,
            "pg2lake did not confirm {end_lsn} within {timeout:?}"
        );
        tokio::time::sleep(poll).await;
    }
}

/// How often [`WalsenderCpu`] reads the CPU time of the walsender it follows.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// How often [`WalsenderCpu`] asks for the slot's walsender while it has none.
const SEARCH_INTERVAL: Duration = Duration::from_millis(10);

/// The CPU time of the walsender(s) serving a slot while a consumer drains it, sampled
/// on a thread of its own (with its own connection) so that the drain may block.
///
/// The walsender is the slot's `active_pid` in `pg_replication_slots`; its CPU time is
/// read from `/proc/<pid>/stat` every [`SAMPLE_INTERVAL`], keeping the last reading,
/// because the process exits with its consumer (what it spends in its last interval is
/// not seen). A walsender that exits while sampling continues is replaced by the slot's
/// next one, and the CPU times of all of them are added up.
pub struct WalsenderCpu {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Option<f64>>>,
}

impl WalsenderCpu {
    /// Starts sampling the walsender of `slot`, connecting to `url` to find it.
    pub fn start(url: &str, slot: &str) -> WalsenderCpu {
        let (url, slot) = (url.to_owned(), slot.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(sample_walsender(&url, &slot, &flag))
        });
        WalsenderCpu {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling (after one last reading); the walsender's CPU seconds, `None` if
    /// no walsender of the slot was seen.
    pub fn finish(mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("sampler already finished");
        thread.join().expect("walsender sampler panicked")
    }
}

impl Drop for WalsenderCpu {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A walsender seen by [`sample_walsender`] and its last CPU reading.
struct Sampled {
    pid: u32,
    /// Start time since boot in clock ticks: tells the process from a later one that got
    /// the same pid.
    start: u64,
    /// utime + stime in clock ticks at the last reading.
    ticks: u64,
}

/// The loop of [`WalsenderCpu`]'s thread: until `stop`, reads the current walsender's
/// CPU time, or looks the slot's walsender up when there is none; then CPU seconds.
async fn sample_walsender(url: &str, slot: &str, stop: &AtomicBool) -> Option<f64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection closed: {e}");
        }
    });
    let mut seen: Vec<Sampled> = Vec::new();
    // Whether the last of `seen` still runs.
    let mut following = false;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if following {
            let last = seen.last_mut().expect("a walsender followed");
            match proc_stat(last.pid) {
                Some((start, ticks)) if start == last.start => last.ticks = ticks,
                _ => following = false,
            }
        }
        if !following && !stopping {
            let pid: Option<i32> = client
                .query_one(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap_or_else(|e| panic!("walsender of slot {slot}: {e}"))
                .get(0);
            let pid = pid.and_then(|pid| u32::try_from(pid).ok());
            if let Some((pid, (start, ticks))) = pid.and_then(|pid| Some((pid, proc_stat(pid)?))) {
                // The slot may still name a walsender that is gone from its view.
                let known = seen.iter().any(|s| s.pid == pid && s.start == start);
                if !known {
                    seen.push(Sampled { pid, start, ticks });
                    following = true;
                }
            }
        }
        if stopping {
            break;
        }
        let pause = if following {
            SAMPLE_INTERVAL
        } else {
            SEARCH_INTERVAL
        };
        tokio::time::sleep(pause).await;
    }
    if seen.is_empty() {
        return None;
    }
    let ticks: u64 = seen.iter().map(|s| s.ticks).sum();
    Some(ticks as f64 / clock_ticks_per_second())
}

/// Clock ticks per second of the CPU times in `/proc` (`getconf CLK_TCK`; 100 when that
/// fails).
pub fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .filter(|ticks: &f64| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system, all threads) process `pid` has used so far; `None` once
/// it is gone.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    proc_stat(pid).map(|(_, ticks)| ticks as f64 / clock_ticks_per_second())
}

/// From `/proc/<pid>/stat`: the process's start time since boot and its utime + stime,
/// both in clock ticks; `None` when it is gone.
fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command name, is in parentheses and may hold spaces and parentheses:
    // count from after the last ')'. The first field there is field 3 (state); utime,
    // stime and starttime are fields 14, 15 and 22.
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(22)?, field(14)? + field(15)?))
}

/// The 1-minute load average: other work on the machine skews every time a benchmark
/// prints.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

/// The log entry of `version` in the Delta table's folder.
pub fn version_file(table_dir: &std::path::Path, version: u64) -> std::path::PathBuf {
    table_dir.join(format!("_delta_log/{version:020}.json"))
}

/// The table's latest version, from its log's file names.
pub fn latest_version(table_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(table_dir.join("_delta_log"))
        .expect("read _delta_log")
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("a committed version")
}
