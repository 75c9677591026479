//! Lake compaction after a simulated day of streaming: how many files `pg2lake maintain`
//! folds away, what it costs (time, peak memory, bytes rewritten), and what it buys a
//! reader of the change log (the README's current-state query, before and after).
//!
//! ```text
//! cargo bench --bench compaction                                      # 3,000,000 rows, 2,000 flushes
//! BENCH_ROWS=200000 BENCH_FLUSHES=200 cargo bench --bench compaction  # a quicker run
//! ```
//!
//! `items` (bigint key, int, text, timestamptz, numeric(12,2), jsonb) is loaded by
//! `pg2lake run` (initial load) with its own compactor off. Then BENCH_FLUSHES small
//! OLTP-shaped transactions (50 updates of recent keys, 5 inserts of new keys, one delete
//! of an old key) are committed one at a time, each waited for until pg2lake has committed
//! it as a Delta version of its own: one flush, one small file. A real day at the default
//! 10 s `flush.max_interval` is 8,640 flushes (with more rows each). The change log is
//! then read with DuckDB (tests/support/duckdb_query.py: the `deltalake` package reads the
//! files, DuckDB runs the query) before and after one `pg2lake maintain` pass, and 200
//! more flushes are streamed after it: the time of each flush (from COMMIT to its Delta
//! version, and pg2lake's own from its log) is printed before and after the pass too.
//! Times are wall times on whatever else the machine runs: the load average is printed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::bench::{
    block_on, items_database, items_lake, latest_version, load_average, size_from_env,
    version_file, wait_for_version,
};
use support::duckdb_query;
use support::lake::{readme_current_state_query, wait_caught_up};
use support::load::Rng;
use support::service::{Service, run_command_measured};

/// Rows loaded when `BENCH_ROWS` is unset.
const DEFAULT_ROWS: u64 = 3_000_000;
/// Flushes simulated when `BENCH_FLUSHES` is unset.
const DEFAULT_FLUSHES: u64 = 2_000;
/// Flushes in a day at the default `flush.max_interval` of 10 s.
const FLUSHES_PER_DAY: u64 = 24 * 60 * 60 / 10;
/// Slot and publication (config_yaml names the publication after the slot).
const SLOT: &str = "bench";
/// Updates per simulated flush.
const UPDATES: u64 = 50;
/// Inserts of new keys per simulated flush.
const INSERTS: u64 = 5;
/// Updates hit keys among the newest this many.
const RECENT_KEYS: u64 = 100_000;
/// Longest any one step may take.
const TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest pg2lake may take to commit one simulated flush.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// Flushes streamed after the pass (at most BENCH_FLUSHES), timed like those before it.
const AFTER_FLUSHES: u64 = 200;
/// Runs per query; the best is kept.
const QUERY_RUNS: usize = 3;

fn main() {
    block_on(run(
        size_from_env("BENCH_ROWS", DEFAULT_ROWS),
        size_from_env("BENCH_FLUSHES", DEFAULT_FLUSHES),
    ));
}

async fn run(rows: u64, flushes: u64) {
    let bench_started = Instant::now();
    let (_pg, url, db, build_time) = items_database(rows).await;

    // The compactor of `run` off: `maintain` below is the only one. A flush as soon as a
    // transaction is complete (the flush timer's floor is 50 ms): the wait after each
    // transaction below keeps each one a commit of its own.
    let (_lake, table_dir, table_uri, config) =
        items_lake(&url, SLOT, "  compaction:\n    enabled: false\n");
    let config_path = config.path().display().to_string();
    let started = Instant::now();
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);
    wait_caught_up(&db, SLOT, TIMEOUT).await;
    let load_time = started.elapsed();
    let load_version = latest_version(&table_dir);

    // The day of streaming: one transaction, then wait for its Delta version.
    let mut workload = Workload {
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        rows,
        next_id: rows + 1,
        flush: 0,
    };
    let load_before = load_average();
    let started = Instant::now();
    let (waits, extra_versions) = workload
        .flushes(&db, &mut service, &table_dir, flushes)
        .await;
    let stream_time = started.elapsed();
    let load_after = load_average();
    wait_caught_up(&db, SLOT, TIMEOUT).await;
    let stream_versions = latest_version(&table_dir) - load_version;
    let source_rows: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    // pg2lake's own time per flush (its log), to tell the commit from the rest of the wait.
    let commit_ms = flush_times(&service.log());

    // Before: the files as `maintain --dry-run` sees them, and the reader's time.
    let plan = maintain(&config_path, true).0;
    let plan = table_report(&plan);
    let files_before = plan["files"].clone();
    let queries = queries();
    let before: Vec<_> = queries
        .iter()
        .map(|(_, sql)| best_of(&table_uri, sql))
        .collect();

    // One pass.
    let (report, maintain_time, peak_rss) = maintain(&config_path, false);
    let pass = table_report(&report);
    let compaction = &pass["compaction"];
    let files_after = &pass["files"];
    let vacuumed = pass["vacuum"]["files"].as_array().map_or(0, Vec::len);
    let after: Vec<_> = queries
        .iter()
        .map(|(_, sql)| best_of(&table_uri, sql))
        .collect();
    for (((name, _), (_, a)), (_, b)) in queries.iter().zip(&before).zip(&after) {
        assert_eq!(a, b, "{name}: compaction changed the answer");
    }
    assert_eq!(
        before[1].1[0]["n"].as_i64(),
        Some(source_rows),
        "the folded change log has the source's rows"
    );

    // Streaming on after the pass: does a flush cost what it did before it?
    let more = AFTER_FLUSHES.min(flushes);
    let (waits_after, _) = workload.flushes(&db, &mut service, &table_dir, more).await;
    let log = flush_times(&service.log());
    let commit_ms_after = &log[log.len().saturating_sub(waits_after.len())..];
    assert!(service.stop(Duration::from_secs(60)).success());

    let mib = |v: &Value| v.as_u64().unwrap_or_default() as f64 / (1024.0 * 1024.0);
    let count = |v: &Value| v.as_u64().unwrap_or_default();
    println!("--- compaction after a simulated day of streaming ---");
    println!(
        "table:      {rows} rows loaded in {:.1}s (build {:.1}s); {source_rows} rows at the end",
        load_time.as_secs_f64(),
        build_time.as_secs_f64()
    );
    println!(
        "streaming:  {flushes} flushes simulated ({UPDATES} updates + {INSERTS} inserts + 1 delete each) in {:.1}s; \
         a real day at a 10 s flush is {FLUSHES_PER_DAY} flushes ({:.0}% of a day here)",
        stream_time.as_secs_f64(),
        100.0 * flushes as f64 / FLUSHES_PER_DAY as f64
    );
    println!(
        "            {stream_versions} Delta versions committed ({extra_versions} beyond one per flush); \
         load average {load_before:.1} -> {load_after:.1} on {} CPUs",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "            wait from COMMIT to its Delta version: {}",
        spread(&waits)
    );
    println!(
        "            pg2lake's flush (its log, {} flushes): {}",
        commit_ms.len(),
        spread(&commit_ms)
    );
    println!(
        "files:      before {} files, {:.1} MiB ({} small)  ->  after {} files, {:.1} MiB ({} small)",
        count(&files_before["files"]),
        mib(&files_before["bytes"]),
        count(&files_before["small_files"]),
        count(&files_after["files"]),
        mib(&files_after["bytes"]),
        count(&files_after["small_files"])
    );
    println!(
        "maintain:   {:.1}s wall (compaction {:.1}s, vacuum {:.1}s), peak RSS {} MiB",
        maintain_time.as_secs_f64(),
        pass["compaction_seconds"].as_f64().unwrap_or_default(),
        pass["vacuum_seconds"].as_f64().unwrap_or_default(),
        peak_rss >> 20
    );
    println!(
        "            rewrote {} files, {:.1} MiB into {} files, {:.1} MiB, in {} partition(s); \
         VACUUM deleted {vacuumed} files (replaced ones stay for lake.retention, 7 days)",
        count(&compaction["files_removed"]),
        mib(&compaction["bytes_removed"]),
        count(&compaction["files_added"]),
        mib(&compaction["bytes_added"]),
        count(&compaction["partitions"])
    );
    println!(
        "after:      {more} more flushes streamed beside the compacted table: wait {}",
        spread(&waits_after)
    );
    println!("            pg2lake's flush: {}", spread(commit_ms_after));
    println!(
        "queries:    DuckDB over the change log via duckdb_query.py (python start, deltalake read, query), best of {QUERY_RUNS}:"
    );
    for (((name, _), (b, _)), (a, _)) in queries.iter().zip(&before).zip(&after) {
        println!(
            "  {name:<44} before {:>6.2}s  after {:>6.2}s  ratio {:.2}",
            b.as_secs_f64(),
            a.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    println!("total:      {:.1}s", bench_started.elapsed().as_secs_f64());
}

/// The simulated OLTP traffic: each flush is one small transaction.
struct Workload {
    rng: Rng,
    /// Rows loaded at the start: deletes take the oldest of them.
    rows: u64,
    /// The next new key.
    next_id: u64,
    /// Flushes simulated so far.
    flush: u64,
}

impl Workload {
    /// Commits `count` transactions, each once pg2lake has committed the one before as a
    /// Delta version of its own. Returns the milliseconds from each COMMIT to its version,
    /// and how many versions beyond one per transaction appeared (none expected).
    async fn flushes(
        &mut self,
        db: &tokio_postgres::Client,
        service: &mut Service,
        table_dir: &Path,
        count: u64,
    ) -> (Vec<f64>, u64) {
        let mut version = latest_version(table_dir);
        let mut extra_versions = 0;
        let mut waits = Vec::with_capacity(usize::try_from(count).unwrap_or_default());
        for _ in 0..count {
            let flush = self.flush;
            self.flush += 1;
            let newest = self.next_id - 1;
            let ids = (0..UPDATES)
                .map(|_| (newest - self.rng.below(RECENT_KEYS.min(newest))).to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let (first, last) = (self.next_id, self.next_id + INSERTS - 1);
            self.next_id += INSERTS;
            let victim = 1 + flush % self.rows;
            db.batch_execute(&format!(
                "BEGIN;
                 UPDATE items SET qty = qty + 1, note = 'updated in flush {flush}', at = now()
                   WHERE id IN ({ids});
                 INSERT INTO items
                   SELECT g, g % 1000, 'item number ' || g, now(), (g % 100000) / 100.0,
                          jsonb_build_object('k', g, 'tag', 'x' || (g % 97))
                   FROM generate_series({first}, {last}) g;
                 DELETE FROM items WHERE id = {victim};
                 COMMIT;"
            ))
            .await
            .expect("a simulated flush's transaction");
            let committed = Instant::now();
            wait_for_version(
                table_dir,
                version + 1,
                service,
                FLUSH_TIMEOUT,
                &format!("flush {flush}"),
            )
            .await;
            waits.push(committed.elapsed().as_secs_f64() * 1000.0);
            version += 1;
            // A flush that made more than one version: counted, not waited for.
            while version_file(table_dir, version + 1).exists() {
                version += 1;
                extra_versions += 1;
            }
        }
        (waits, extra_versions)
    }
}

/// Median, p99 and max of `ms`, and the medians of its first and last tenth (does the
/// cost grow with the table's files?).
fn spread(ms: &[f64]) -> String {
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((sorted.len().max(1) - 1) as f64 * q).round() as usize;
        sorted.get(i).copied().unwrap_or_default()
    };
    let tenth = (ms.len() / 10).max(1).min(ms.len());
    format!(
        "median {:.0} ms, p99 {:.0} ms, max {:.0} ms; median of the first tenth {:.0} ms, of the last {:.0} ms",
        at(0.5),
        at(0.99),
        at(1.0),
        median(&ms[..tenth]),
        median(&ms[ms.len() - tenth..])
    )
}

/// `elapsed_ms` of every "committed changes to the lake" line of a pg2lake JSON log.
fn flush_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["message"] == "committed changes to the lake")
        .filter_map(|entry| entry["elapsed_ms"].as_f64())
        .collect()
}

/// The queries timed, by name. The README's fold is wrapped in a count (its 3,000,000 rows
/// would otherwise be timed as JSON output); `count(note)` keeps the carried-forward
/// `note` column computed.
fn queries() -> Vec<(&'static str, String)> {
    let fold = readme_current_state_query();
    let fold = fold.trim().trim_end_matches(';');
    vec![
        (
            "count(*) of the change log",
            "SELECT count(*) AS n FROM orders".to_owned(),
        ),
        (
            "README current-state fold, counted",
            format!("SELECT count(*) AS n, count(note) AS notes FROM ({fold}) s"),
        ),
        (
            "fold WHERE qty < 100 (non-key predicate)",
            format!("SELECT count(*) AS n FROM ({fold}) s WHERE qty < 100"),
        ),
    ]
}

/// The best time of [`QUERY_RUNS`] runs of `sql` over the table, and its rows.
fn best_of(table_uri: &str, sql: &str) -> (Duration, Vec<serde_json::Map<String, Value>>) {
    let mut best = Duration::MAX;
    let mut rows = Vec::new();
    for _ in 0..QUERY_RUNS {
        let started = Instant::now();
        let result = duckdb_query(table_uri, "orders", sql);
        best = best.min(started.elapsed());
        rows = result.rows;
    }
    (best, rows)
}

/// Runs `pg2lake maintain --json` (with `--dry-run` when `dry_run`); the report, the wall
/// time and the peak RSS.
fn maintain(config_path: &str, dry_run: bool) -> (Value, Duration, u64) {
    let mut args = vec!["maintain", "--config", config_path, "--json"];
    if dry_run {
        args.push("--dry-run");
    }
    let started = Instant::now();
    let (out, peak_rss) = run_command_measured(&args, &[], TIMEOUT);
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "maintain failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&out.stdout).expect("maintain report");
    (report, elapsed, peak_rss)
}

/// The report of `public.items`.
fn table_report(report: &Value) -> Value {
    let table = report["tables"]
        .as_array()
        .and_then(|tables| tables.iter().find(|t| t["table"] == "public.items"))
        .unwrap_or_else(|| panic!("no public.items in {report:#}"))
        .clone();
    assert!(
        table["error"].is_null() && table["busy"].is_null(),
        "{table:#}"
    );
    table
}
