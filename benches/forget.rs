//! `pg2lake forget` on a table of millions of rows: what erasing one data subject from the
//! change log (history included) costs (files read, files rewritten, bytes rewritten,
//! time, peak memory), against a full scan of the same change log by an independent
//! reader measured in the same run.
//!
//! ```text
//! cargo bench --bench forget                                             # 3,000,000 rows, 300 transactions
//! BENCH_ROWS=200000 BENCH_TRANSACTIONS=100 cargo bench --bench forget    # a quicker run
//! ```
//!
//! `items` (bigint key, int, text, timestamptz, numeric(12,2), jsonb) is loaded by
//! `pg2lake run` (initial load) with its compactor off (`lake.compaction.enabled: false`:
//! the small files stay as they were written) and its text column `note` hashed
//! (`privacy.columns`, key from `PG2LAKE_HASH_KEY`). The subject is the row of key
//! BENCH_ROWS / 2. Then BENCH_TRANSACTIONS small transactions are committed one at a time,
//! each updating 20 keys drawn uniformly from the whole table (so each small file's key
//! range spans the table and its statistics rule nothing out) and, every
//! 10th transaction, the subject too; each is waited for until pg2lake has committed it as a
//! Delta version of its own: one flush, one small file. Then the subject is deleted in the
//! source and that delete replicated, as an operator would before a deletion request.
//!
//! With `pg2lake run` still running beside it (idle), `pg2lake forget --table
//! public.items --key '{"id": N}' --json` is timed (wall time of the process, peak RSS
//! from its VmHWM), then run again (nothing left to erase: nothing rewritten). The
//! baseline is a `count(*)` of the whole change log with DuckDB via
//! tests/support/duckdb_query.py (python start, the `deltalake` package reads every file
//! of the table, DuckDB counts), best of 3, run just before; the count is taken again after
//! the forget and must have lost exactly the rows the report says were removed. Times are
//! wall times on whatever else the machine runs: the load average is printed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::bench::{
    block_on, items_database, items_lake, latest_version, load_average, size_from_env,
    wait_for_version,
};
use support::duckdb_query;
use support::lake::wait_caught_up;
use support::load::Rng;
use support::service::{Service, run_command_measured};

/// Rows loaded when `BENCH_ROWS` is unset.
const DEFAULT_ROWS: u64 = 3_000_000;
/// Transactions streamed after the load when `BENCH_TRANSACTIONS` is unset.
const DEFAULT_TRANSACTIONS: u64 = 300;
/// Slot and publication (config_yaml names the publication after the slot).
const SLOT: &str = "bench";
/// Other keys updated per transaction.
const OTHER_KEYS: u64 = 20;
/// Every this many transactions, one updates the subject too.
const SUBJECT_EVERY: u64 = 10;
/// The hash key (`privacy.hash_key_env`'s default variable).
const HASH_KEY_ENV: &str = "PG2LAKE_HASH_KEY";
const HASH_KEY: &str = "bench-forget-hash-key-0123456789";
/// Longest any one step may take.
const TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest pg2lake may take to commit one transaction.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// Runs of the baseline; the best is kept.
const BASELINE_RUNS: usize = 3;

fn main() {
    block_on(run(
        size_from_env("BENCH_ROWS", DEFAULT_ROWS),
        size_from_env("BENCH_TRANSACTIONS", DEFAULT_TRANSACTIONS),
    ));
}

async fn run(rows: u64, transactions: u64) {
    assert!(
        rows >= 2 * OTHER_KEYS,
        "BENCH_ROWS must be at least {}",
        2 * OTHER_KEYS
    );
    let bench_started = Instant::now();
    let (_pg, url, db, build_time) = items_database(rows).await;

    // The compactor off (the files stay as written); `note` hashed. A flush as soon as a
    // transaction is complete (the flush timer's floor is 50 ms): the wait after each
    // transaction below keeps each one a commit of its own.
    let (_lake, table_dir, table_uri, config) = items_lake(
        &url,
        SLOT,
        "  compaction:\n    enabled: false\nprivacy:\n  columns:\n    \"public.items.note\": hash\n",
    );
    let config_path = config.path().display().to_string();
    let env = vec![(HASH_KEY_ENV.to_owned(), HASH_KEY.to_owned())];
    let started = Instant::now();
    let mut service = Service::start(&config, &env);
    service.wait_streaming(TIMEOUT);
    wait_caught_up(&db, SLOT, TIMEOUT).await;
    let load_time = started.elapsed();
    let load_files = data_files(&table_dir).0;

    // The subject's history: updates spread over many small files, then its delete.
    let subject = rows / 2;
    let started = Instant::now();
    let subject_updates = stream(&db, &mut service, &table_dir, rows, subject, transactions).await;
    let stream_time = started.elapsed();
    db.batch_execute(&format!("DELETE FROM items WHERE id = {subject}"))
        .await
        .expect("delete the subject in the source");
    wait_caught_up(&db, SLOT, TIMEOUT).await;
    // The initial load's row, each update, the delete.
    let subject_rows = 1 + subject_updates + 1;

    let (files_before, bytes_before) = data_files(&table_dir);
    let version_before = latest_version(&table_dir);
    let log_files_before = log_files(&table_dir);

    // The baseline: the independent reader scans the whole change log.
    let load_before = load_average();
    let mut baseline = Duration::MAX;
    let mut log_rows = 0;
    for _ in 0..BASELINE_RUNS {
        let started = Instant::now();
        log_rows = count_rows(&table_uri);
        baseline = baseline.min(started.elapsed());
    }

    // The forget, beside the running service.
    let key = format!("{{\"id\": {subject}}}");
    let (first, first_time, first_rss) = forget(&config_path, &key, &env);
    let erased = &first["change_log"];
    let rows_removed = count(&erased["rows_removed"]);
    assert!(
        rows_removed > 0,
        "the first forget removed nothing: {first:#}"
    );
    let (second, second_time, second_rss) = forget(&config_path, &key, &env);
    assert_eq!(
        count(&second["change_log"]["rows_removed"]),
        0,
        "the second forget removed rows again: {second:#}"
    );
    let load_after = load_average();
    assert!(
        service.is_running(),
        "pg2lake stopped while forget ran:\n{}",
        service.log()
    );
    let log_rows_after = count_rows(&table_uri);
    assert_eq!(
        log_rows_after,
        log_rows - rows_removed,
        "the change log lost other rows than the ones reported: {first:#}"
    );
    let (files_after, bytes_after) = data_files(&table_dir);
    let log_files_after = log_files(&table_dir);
    assert!(service.stop(Duration::from_secs(60)).success());

    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let seconds = first_time.as_secs_f64();
    println!("--- forget of one subject from a change log of millions of rows ---");
    println!(
        "table:      {rows} rows loaded in {:.1}s (build {:.1}s) into {load_files} files",
        load_time.as_secs_f64(),
        build_time.as_secs_f64()
    );
    println!(
        "streaming:  {transactions} transactions ({OTHER_KEYS} updates of random keys each; the subject \
         in every {SUBJECT_EVERY}th: {subject_updates} updates) in {:.1}s, then its delete",
        stream_time.as_secs_f64()
    );
    println!(
        "change log: {log_rows} rows in {files_before} data files, {:.1} MiB; version {version_before}, \
         {log_files_before} log files; the subject (id {subject}) in {subject_rows} rows",
        mib(bytes_before)
    );
    println!(
        "forget:     {seconds:.2}s wall, peak RSS {} MiB (service running beside it); load average \
         {load_before:.1} -> {load_after:.1} on {} CPUs",
        first_rss >> 20,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "            files read {}, files rewritten {}, rows removed {rows_removed}, bytes rewritten {} ({:.1} MiB)",
        count(&erased["files_read"]),
        count(&erased["files_rewritten"]),
        count(&erased["bytes_rewritten"]),
        mib(count(&erased["bytes_rewritten"]))
    );
    println!(
        "            version {}, data files deleted {}, log files deleted {}, history starts at {}",
        erased["version"],
        count(&erased["files_deleted"]),
        count(&erased["log_files_deleted"]),
        erased["history_starts_at"]
    );
    println!(
        "            after: {log_rows_after} rows in {files_after} data files, {:.1} MiB; {log_files_after} log files",
        mib(bytes_after)
    );
    println!(
        "again:      {:.2}s wall, peak RSS {} MiB; files read {}, files rewritten {}, rows removed {}",
        second_time.as_secs_f64(),
        second_rss >> 20,
        count(&second["change_log"]["files_read"]),
        count(&second["change_log"]["files_rewritten"]),
        count(&second["change_log"]["rows_removed"])
    );
    println!(
        "baseline:   count(*) of the change log with DuckDB via duckdb_query.py (python start, \
         deltalake reads every file), best of {BASELINE_RUNS}: {:.2}s",
        baseline.as_secs_f64()
    );
    println!(
        "ratio:      forget / baseline = {:.2} (again: {:.2})",
        seconds / baseline.as_secs_f64(),
        second_time.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("total:      {:.1}s", bench_started.elapsed().as_secs_f64());
}

/// Commits `transactions` transactions, each once pg2lake has committed the one before as
/// a Delta version of its own: OTHER_KEYS random keys updated, and the subject in every
/// SUBJECT_EVERY-th. Returns how many updated the subject.
async fn stream(
    db: &tokio_postgres::Client,
    service: &mut Service,
    table_dir: &Path,
    rows: u64,
    subject: u64,
    transactions: u64,
) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut version = latest_version(table_dir);
    let mut subject_updates = 0;
    for n in 0..transactions {
        let mut ids: Vec<u64> = (0..OTHER_KEYS)
            .map(|_| 1 + rng.below(rows))
            .filter(|&id| id != subject)
            .collect();
        if n % SUBJECT_EVERY == 0 {
            ids.push(subject);
            subject_updates += 1;
        }
        let ids = ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        db.batch_execute(&format!(
            "UPDATE items SET qty = qty + 1, note = 'updated in transaction {n}', at = now()
               WHERE id IN ({ids})"
        ))
        .await
        .expect("a streamed transaction");
        wait_for_version(
            table_dir,
            version + 1,
            service,
            FLUSH_TIMEOUT,
            &format!("transaction {n}"),
        )
        .await;
        version = latest_version(table_dir);
    }
    subject_updates
}

/// Runs `pg2lake forget --table public.items --key KEY --json`; the table's report, the
/// wall time and the peak RSS. Panics unless it exits 0 without an error for the table.
fn forget(config_path: &str, key: &str, env: &[(String, String)]) -> (Value, Duration, u64) {
    let args = [
        "forget",
        "--config",
        config_path,
        "--table",
        "public.items",
        "--key",
        key,
        "--json",
    ];
    let started = Instant::now();
    let (out, peak_rss) = run_command_measured(&args, env, TIMEOUT);
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "forget failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("forget report");
    let table = report["tables"]
        .as_array()
        .and_then(|tables| tables.iter().find(|t| t["table"] == "public.items"))
        .unwrap_or_else(|| panic!("no public.items in {report:#}"))
        .clone();
    assert!(table["error"].is_null(), "{table:#}");
    (table, elapsed, peak_rss)
}

/// Rows of the change log, counted by DuckDB over what the `deltalake` package reads.
fn count_rows(table_uri: &str) -> u64 {
    let result = duckdb_query(table_uri, "t", "SELECT count(*) AS n FROM t");
    result.rows[0]["n"].as_u64().expect("a count")
}

/// A count in a report (0 when absent).
fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or_default()
}

/// Parquet data files under the table's folder (not under `_` folders such as the log),
/// and their bytes. The compactor is off and nothing removed files before the forget, so
/// before it these are the latest version's files.
fn data_files(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)
        .expect("read the table's folder")
        .flatten()
    {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.starts_with('_') {
            continue;
        }
        if path.is_dir() {
            let (f, b) = data_files(&path);
            files += f;
            bytes += b;
        } else if name.ends_with(".parquet") {
            files += 1;
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    (files, bytes)
}

/// Files in the table's `_delta_log` folder (commits, checkpoints, checksums).
fn log_files(table_dir: &Path) -> usize {
    std::fs::read_dir(table_dir.join("_delta_log"))
        .expect("read _delta_log")
        .flatten()
        .filter(|entry| entry.path().is_file())
        .count()
}
