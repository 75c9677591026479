//! The current-state mirror (`<lake>/_current/<schema>/<table>`) under `pg2lake run`: how
//! long its first build takes, what a refresh costs (time, files and bytes rewritten) for
//! changes to clustered (recent) keys and to keys spread over the whole table, and what it
//! buys a reader (a count with a non-key predicate over the mirror, and the README's fold
//! of the change log with the same predicate).
//!
//! ```text
//! cargo bench --bench mirror                                   # 2,000,000 rows, 10 rounds a phase
//! BENCH_ROWS=200000 BENCH_ROUNDS=3 cargo bench --bench mirror  # a quicker run
//! ```
//!
//! `items` (bigint serial key, int, text, timestamptz, numeric(12,2), jsonb) is loaded by
//! `pg2lake run` (initial load) with `mirror.enabled: true`, `mirror.interval: 1s`, the
//! other mirror settings and `memory_budget` at their defaults, and the change log's
//! compactor off (`lake.compaction.enabled: false`: its commits would be refreshes too).
//! Then two phases of BENCH_ROUNDS rounds, each round one transaction updating 1,000
//! distinct keys, waited for until the mirror reflects the change-log version holding it:
//! clustered (keys among the newest 1% of ids, OLTP-shaped) and random (keys uniform over
//! the table). Each round's mirror version is read from its `_delta_log` JSON: files and
//! bytes (`remove.size`) it replaced, files and bytes it added.
//!
//! Times come from the commit files' modification times. pg2lake logs no refresh timing
//! ("refreshed the mirror" has no duration), so the refresh time is derived: a refresh
//! starts `mirror.interval` after the one before returned (the schedule sleeps, then
//! refreshes), so when the round's change-log version was committed before that tick, the
//! refresh that reflects it ran from (previous mirror commit + 1 s) to its own commit.
//! Rounds whose change-log version came after the tick show `-` there. The wall latency
//! (change-log version to mirror version, which includes the wait for the next tick) is
//! printed too. Peak memory is the process's VmHWM, reset (`/proc/<pid>/clear_refs`)
//! between the stages: the load, the first build, each phase. Queries run with DuckDB via
//! tests/support/duckdb_query.py (python start, the `deltalake` package reads the table,
//! DuckDB runs the query). Times are wall times on whatever else the machine runs: the
//! load average is printed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::bench::{
    block_on, flush_each_transaction, items_database, latest_version, load_average, size_from_env,
    version_file,
};
use support::lake::{readme_current_state_query, wait_caught_up};
use support::load::Rng;
use support::service::{ConfigFile, Service, config_yaml};
use support::{count_delta_rows, duckdb_query};

/// Rows loaded when `BENCH_ROWS` is unset.
const DEFAULT_ROWS: u64 = 2_000_000;
/// Rounds per phase when `BENCH_ROUNDS` is unset.
const DEFAULT_ROUNDS: u64 = 10;
/// Slot and publication (config_yaml names the publication after the slot).
const SLOT: &str = "bench";
/// Keys updated per round, in one transaction.
const KEYS_PER_ROUND: u64 = 1_000;
/// `mirror.interval`.
const INTERVAL: Duration = Duration::from_secs(1);
/// The mirror's `txn` app id.
const MIRROR_APP: &str = "pg2lake-mirror";
/// The `add` tags holding a mirror file's first and last key.
const KEY_MIN_TAG: &str = "pg2lake.keyMin";
const KEY_MAX_TAG: &str = "pg2lake.keyMax";
/// Longest the load and the mirror's first build may take.
const TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest one round may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the logs are polled.
const POLL: Duration = Duration::from_millis(5);
/// Runs per query; the best is kept.
const QUERY_RUNS: usize = 3;
/// The non-key predicate of the queries (`qty` is `id % 1000`, plus one per update).
const PREDICATE: &str = "qty < 100";

fn main() {
    block_on(run(
        size_from_env("BENCH_ROWS", DEFAULT_ROWS),
        size_from_env("BENCH_ROUNDS", DEFAULT_ROUNDS),
    ));
}

async fn run(rows: u64, rounds: u64) {
    assert!(
        rows >= KEYS_PER_ROUND,
        "BENCH_ROWS must be at least {KEYS_PER_ROUND}"
    );
    let bench_started = Instant::now();
    let (_pg, url, db, build_time) = items_database(rows).await;

    let lake = tempfile::tempdir().expect("lake dir");
    let log_dir = lake.path().join("public/items");
    let mirror_dir = lake.path().join("_current/public/items");
    // The compactor off; the mirror on, refreshed every second. A flush as soon as a
    // transaction is complete (the flush timer's floor is 50 ms), so a round's change-log
    // version lands well before the next refresh tick.
    let yaml = config_yaml(
        &url,
        SLOT,
        &["public.items"],
        &lake.path().display().to_string(),
        &format!(
            "  compaction:\n    enabled: false\nmirror:\n  enabled: true\n  interval: {}ms\n",
            INTERVAL.as_millis()
        ),
    );
    let config = ConfigFile::new(&flush_each_transaction(&yaml));
    let service_started = SystemTime::now();
    let started = Instant::now();
    let service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);
    wait_caught_up(&db, SLOT, TIMEOUT).await;
    let caught_up = started.elapsed();
    let peak_load = service.peak_rss();
    let mut peaks_reset = reset_peak_rss(service.pid());
    let loaded_version = latest_version(&log_dir);
    let loaded_at = modified(&version_file(&log_dir, loaded_version));

    // The first build: every mirror version until one reflects the loaded change log.
    let mut bench = Bench {
        service,
        log_dir,
        log_version: loaded_version,
        mirror: MirrorLog::new(mirror_dir.clone()),
    };
    let build = bench
        .wait_mirror(loaded_version, TIMEOUT, "its first build")
        .await;
    let built_at = build.last().expect("a mirror version").written_at;
    let first_reflected = since(service_started, built_at);
    let build_after_load = since(loaded_at, built_at);
    let peak_build = bench.service.peak_rss();
    let files_after_build = bench.mirror.files();
    let build_added: u64 = build.iter().map(|v| v.added_bytes).sum();
    let build_removed: u64 = build.iter().map(|v| v.removed_bytes).sum();
    let build_removed_files: usize = build.iter().map(|v| v.removed_files).sum();
    let build_versions = build.len();
    let build_last = build.last().expect("a mirror version").clone();

    // The two phases, back to back.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let recent = (rows / 100).max(KEYS_PER_ROUND);
    let newest = rows - recent + 1;
    let pid = bench.service.pid();
    let rss_before_rounds = rss_of(pid);
    peaks_reset &= reset_peak_rss(pid);
    let load_before = load_average();
    let mut clustered = Vec::new();
    for n in 0..rounds {
        let ids = distinct(&mut rng, newest, rows);
        clustered.push(bench.round(&db, &ids, &format!("clustered {n}")).await);
    }
    let load_mid = load_average();
    let peak_clustered = bench.service.peak_rss();
    peaks_reset &= reset_peak_rss(pid);
    let mut random = Vec::new();
    for n in 0..rounds {
        let ids = distinct(&mut rng, 1, rows);
        random.push(bench.round(&db, &ids, &format!("random {n}")).await);
    }
    let load_after = load_average();
    let peak_random = bench.service.peak_rss();
    let files_end = bench.mirror.files();
    let mirror_version = bench.mirror.version.expect("mirror versions");
    let log_version = bench.log_version;

    // The queries, once nothing changes any more.
    wait_caught_up(&db, SLOT, TIMEOUT).await;
    assert_eq!(
        latest_version(&bench.log_dir),
        log_version,
        "no change-log versions beyond the rounds"
    );
    let source_rows: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    let source_hits: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM items WHERE {PREDICATE}"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    let mirror_rows = count_delta_rows(&mirror_dir);
    assert_eq!(
        i64::try_from(mirror_rows).ok(),
        Some(source_rows),
        "the mirror has the source's rows"
    );
    let mirror_uri = mirror_dir.display().to_string();
    let log_uri = bench.log_dir.display().to_string();
    let fold = readme_current_state_query();
    let fold = fold.trim().trim_end_matches(';');
    let (mirror_time, mirror_hits) = best_of(
        &mirror_uri,
        "items",
        &format!("SELECT count(*) AS n FROM items WHERE {PREDICATE}"),
    );
    let (fold_time, fold_hits) = best_of(
        &log_uri,
        "orders",
        &format!("SELECT count(*) AS n FROM ({fold}) s WHERE {PREDICATE}"),
    );
    assert_eq!(mirror_hits, Some(source_hits), "the mirror's count");
    assert_eq!(fold_hits, Some(source_hits), "the fold's count");
    let mut service = bench.service;
    assert!(service.stop(Duration::from_secs(60)).success());

    println!("--- current-state mirror: refresh cost and query time ---");
    println!(
        "table:      {rows} rows (build {:.1}s), loaded by pg2lake run: caught up {:.1}s after start, \
         change-log version {loaded_version}",
        build_time.as_secs_f64(),
        caught_up.as_secs_f64()
    );
    println!(
        "config:     mirror.interval {}s; mirror.target_file_rows, mirror.step_rows, memory_budget at their \
         defaults; lake.compaction.enabled false; flush.max_interval 1ms",
        INTERVAL.as_secs_f64()
    );
    println!(
        "first build: the mirror reflected the loaded change log {:.1}s after pg2lake started \
         ({:.1}s after the load's last change-log commit), in {build_versions} mirror versions \
         (the last: {} files, {} written)",
        first_reflected.as_secs_f64(),
        build_after_load.as_secs_f64(),
        build_last.added_files,
        mib(build_last.added_bytes)
    );
    println!(
        "            bytes the build's versions added {}, of which later build versions removed {} \
         ({build_removed_files} files; files a refresh writes and replaces itself are deleted, not logged)",
        mib(build_added),
        mib(build_removed)
    );
    println!(
        "            mirror after the build: {}",
        files_after_build.describe()
    );
    println!("            files: {}", files_after_build.ranges());
    println!(
        "memory:     pg2lake run peak RSS (VmHWM, {}): load until caught up {} MiB; from then to the \
         first build {} MiB; RSS before the rounds {} MiB; clustered phase {} MiB; random phase {} MiB",
        if peaks_reset {
            "reset between the stages"
        } else {
            "could not be reset: cumulative"
        },
        peak_load >> 20,
        peak_build >> 20,
        rss_before_rounds >> 20,
        peak_clustered >> 20,
        peak_random >> 20
    );
    println!(
        "rounds:     {rounds} per phase, each one transaction updating {KEYS_PER_ROUND} distinct keys \
         (qty, note, at); load average {load_before:.1} -> {load_mid:.1} -> {load_after:.1} on {} CPUs",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "            per round: mirror versions, files replaced (remove), MiB replaced, rows replaced, \
         files added, MiB added, refresh time (derived), change-log version -> mirror version, \
         COMMIT -> mirror version (each round commits just after the previous refresh, so the \
         last two include nearly a full mirror.interval of waiting for the next tick)"
    );
    for (name, ids, phase) in [
        (
            "clustered",
            format!("ids {newest}..={rows} (newest {recent})"),
            &clustered,
        ),
        ("random", format!("ids 1..={rows}"), &random),
    ] {
        println!("{:<12}{ids}", format!("{name}:"));
        for (n, round) in phase.iter().enumerate() {
            println!("            {n:>3} {}", round.describe());
        }
        let removed: Vec<f64> = phase.iter().map(|r| r.removed_bytes() as f64).collect();
        let per_row: Vec<f64> = removed.iter().map(|b| b / KEYS_PER_ROUND as f64).collect();
        let files: Vec<f64> = phase.iter().map(|r| r.removed_files() as f64).collect();
        let added: Vec<f64> = phase.iter().map(|r| r.added_bytes() as f64).collect();
        let refresh: Vec<f64> = phase.iter().filter_map(|r| r.refresh_ms).collect();
        let latency: Vec<f64> = phase.iter().map(|r| r.log_to_mirror_ms).collect();
        let commit: Vec<f64> = phase.iter().map(|r| r.commit_to_mirror_ms).collect();
        println!(
            "            bytes rewritten per refresh (sum of remove.size): median {}, max {}",
            mib(median(&removed) as u64),
            mib(max(&removed) as u64)
        );
        println!(
            "            bytes rewritten per changed row (/ {KEYS_PER_ROUND}): median {:.0} B, max {:.0} B",
            median(&per_row),
            max(&per_row)
        );
        println!(
            "            files rewritten per refresh: median {:.0}, max {:.0}; bytes added per refresh: median {}",
            median(&files),
            max(&files),
            mib(median(&added) as u64)
        );
        println!(
            "            refresh time (derived, {} of {} rounds): median {:.0} ms, max {:.0} ms",
            refresh.len(),
            phase.len(),
            median(&refresh),
            max(&refresh)
        );
        println!(
            "            change-log version -> mirror version: median {:.0} ms, max {:.0} ms; \
             COMMIT -> mirror version: median {:.0} ms, max {:.0} ms",
            median(&latency),
            max(&latency),
            median(&commit),
            max(&commit)
        );
    }
    println!(
        "mirror:     at the end (version {mirror_version}, reflecting change-log version {log_version}): {}",
        files_end.describe()
    );
    println!("            files: {}", files_end.ranges());
    println!(
        "queries:    count(*) WHERE {PREDICATE}, DuckDB via duckdb_query.py (python start, deltalake read, query), best of {QUERY_RUNS}:"
    );
    println!(
        "  mirror (_current/public/items)             {:>6.2}s  -> {}",
        mirror_time.as_secs_f64(),
        mirror_hits.unwrap_or_default()
    );
    println!(
        "  README fold of the change log              {:>6.2}s  -> {}   (ratio {:.1})",
        fold_time.as_secs_f64(),
        fold_hits.unwrap_or_default(),
        fold_time.as_secs_f64() / mirror_time.as_secs_f64()
    );
    println!(
        "  Postgres: {source_hits} of {source_rows} rows; the mirror holds {mirror_rows} rows"
    );
    println!("total:      {:.1}s", bench_started.elapsed().as_secs_f64());
}

/// The running service and where the two logs stand.
struct Bench {
    service: Service,
    log_dir: PathBuf,
    /// The change log's latest version seen.
    log_version: u64,
    mirror: MirrorLog,
}

impl Bench {
    /// Commits one transaction updating `ids`, waits for its change-log version and then
    /// for the mirror version reflecting it.
    async fn round(&mut self, db: &tokio_postgres::Client, ids: &[u64], label: &str) -> Round {
        // The refresh after the last one starts an interval after it returned.
        let tick = self
            .mirror
            .written_at
            .map(|at| at + INTERVAL)
            .expect("a mirror version before the rounds");
        let list = ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        db.batch_execute(&format!(
            "BEGIN;
             UPDATE items SET qty = qty + 1, note = 'updated in round {label}', at = now()
               WHERE id IN ({list});
             COMMIT;"
        ))
        .await
        .expect("a round's transaction");
        let committed = SystemTime::now();
        let deadline = Instant::now() + ROUND_TIMEOUT;
        let target = self.log_version + 1;
        while !version_file(&self.log_dir, target).exists() {
            self.check(deadline, label);
            tokio::time::sleep(POLL).await;
        }
        let log_at = modified(&version_file(&self.log_dir, target));
        let mut extra_log_versions = 0;
        self.log_version = target;
        while version_file(&self.log_dir, self.log_version + 1).exists() {
            self.log_version += 1;
            extra_log_versions += 1;
        }
        let versions = self
            .wait_mirror(self.log_version, ROUND_TIMEOUT, label)
            .await;
        let end = versions.last().expect("a mirror version").written_at;
        let refresh_ms =
            (log_at < tick && versions.len() == 1).then(|| millis(end.duration_since(tick)));
        Round {
            versions,
            extra_log_versions,
            refresh_ms,
            log_to_mirror_ms: millis(end.duration_since(log_at)),
            commit_to_mirror_ms: millis(end.duration_since(committed)),
        }
    }

    /// Waits until the mirror reflects change-log version `target`; the mirror versions
    /// that appeared meanwhile.
    async fn wait_mirror(
        &mut self,
        target: u64,
        timeout: Duration,
        what: &str,
    ) -> Vec<MirrorVersion> {
        let deadline = Instant::now() + timeout;
        let mut versions = Vec::new();
        loop {
            while let Some(version) = self.mirror.next() {
                versions.push(version);
            }
            if self.mirror.reflects.is_some_and(|v| v >= target) {
                return versions;
            }
            self.check(deadline, what);
            tokio::time::sleep(POLL).await;
        }
    }

    /// Panics if pg2lake exited or `deadline` passed.
    fn check(&mut self, deadline: Instant, what: &str) {
        assert!(
            Instant::now() < deadline,
            "the mirror did not reflect {what} in time"
        );
        assert!(
            self.service.is_running(),
            "pg2lake exited; log:\n{}",
            self.service.log()
        );
    }
}

/// One round: the mirror versions its refresh committed, and its times.
struct Round {
    versions: Vec<MirrorVersion>,
    /// Change-log versions beyond the round's one (none expected).
    extra_log_versions: u64,
    /// From the tick the refresh started at to its commit, when that tick is known.
    refresh_ms: Option<f64>,
    /// From the change-log version to the mirror version reflecting it.
    log_to_mirror_ms: f64,
    /// From COMMIT in Postgres to the mirror version.
    commit_to_mirror_ms: f64,
}

impl Round {
    fn removed_bytes(&self) -> u64 {
        self.versions.iter().map(|v| v.removed_bytes).sum()
    }

    fn removed_files(&self) -> usize {
        self.versions.iter().map(|v| v.removed_files).sum()
    }

    fn added_bytes(&self) -> u64 {
        self.versions.iter().map(|v| v.added_bytes).sum()
    }

    fn describe(&self) -> String {
        let sum = |f: fn(&MirrorVersion) -> u64| self.versions.iter().map(f).sum::<u64>();
        let extra = if self.extra_log_versions > 0 {
            format!(" ({} more change-log versions)", self.extra_log_versions)
        } else {
            String::new()
        };
        format!(
            "{} version(s): removed {} files {} {} rows; added {} files {}; refresh {}; {:.0} ms; {:.0} ms{extra}",
            self.versions.len(),
            self.removed_files(),
            mib(self.removed_bytes()),
            sum(|v| v.removed_rows),
            sum(|v| v.added_files as u64),
            mib(self.added_bytes()),
            self.refresh_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms")),
            self.log_to_mirror_ms,
            self.commit_to_mirror_ms
        )
    }
}

/// What one mirror version did.
#[derive(Clone)]
struct MirrorVersion {
    removed_files: usize,
    removed_bytes: u64,
    /// Rows of the removed files (from the `add` that wrote each).
    removed_rows: u64,
    added_files: usize,
    added_bytes: u64,
    /// Modification time of its commit file.
    written_at: SystemTime,
}

/// The mirror's `_delta_log` replayed version by version: its live files.
struct MirrorLog {
    dir: PathBuf,
    /// The last version replayed.
    version: Option<u64>,
    /// The change-log version it reflects.
    reflects: Option<u64>,
    /// When that version's commit file was written.
    written_at: Option<SystemTime>,
    /// Live files by path.
    files: HashMap<String, LiveFile>,
}

impl MirrorLog {
    fn new(dir: PathBuf) -> MirrorLog {
        MirrorLog {
            dir,
            version: None,
            reflects: None,
            written_at: None,
            files: HashMap::new(),
        }
    }

    /// Replays the next version if it is committed.
    fn next(&mut self) -> Option<MirrorVersion> {
        let number = self.version.map_or(0, |v| v + 1);
        let path = version_file(&self.dir, number);
        // A commit file appears whole (written aside, then linked in place).
        let text = std::fs::read_to_string(&path).ok()?;
        let mut version = MirrorVersion {
            removed_files: 0,
            removed_bytes: 0,
            removed_rows: 0,
            added_files: 0,
            added_bytes: 0,
            written_at: modified(&path),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let action: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
            if let Some(add) = action.get("add") {
                let size = add["size"].as_u64().expect("add.size");
                let rows = add["stats"]
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .and_then(|s| s["numRecords"].as_u64())
                    .unwrap_or_default();
                let file = add["path"].as_str().expect("add.path").to_owned();
                let tag = |name: &str| add["tags"][name].as_str().map(key_of).unwrap_or_default();
                version.added_files += 1;
                version.added_bytes += size;
                self.files.insert(
                    file,
                    LiveFile {
                        bytes: size,
                        rows,
                        first: tag(KEY_MIN_TAG),
                        last: tag(KEY_MAX_TAG),
                    },
                );
            } else if let Some(remove) = action.get("remove") {
                let file = remove["path"].as_str().expect("remove.path");
                let live = self
                    .files
                    .remove(file)
                    .unwrap_or_else(|| panic!("version {number} removes {file}, not a live file"));
                version.removed_files += 1;
                version.removed_bytes += remove["size"].as_u64().expect("remove.size");
                version.removed_rows += live.rows;
            } else if let Some(txn) = action.get("txn")
                && txn["appId"] == MIRROR_APP
            {
                self.reflects = txn["version"].as_u64();
            }
        }
        self.version = Some(number);
        self.written_at = Some(version.written_at);
        Some(version)
    }

    fn files(&self) -> FileStats {
        let mut files: Vec<LiveFile> = self.files.values().cloned().collect();
        files.sort_by_key(|f| f.first);
        FileStats(files)
    }
}

/// A live mirror file.
#[derive(Clone)]
struct LiveFile {
    bytes: u64,
    rows: u64,
    /// Its first and last key (`id`), from the `add` tags.
    first: Option<i64>,
    last: Option<i64>,
}

/// The live files of the mirror, in key order.
struct FileStats(Vec<LiveFile>);

impl FileStats {
    fn describe(&self) -> String {
        let bytes: u64 = self.0.iter().map(|f| f.bytes).sum();
        let rows: u64 = self.0.iter().map(|f| f.rows).sum();
        format!(
            "{} files, {}, {rows} rows ({} a row on disk)",
            self.0.len(),
            mib(bytes),
            if rows > 0 {
                format!("{:.1} B", bytes as f64 / rows as f64)
            } else {
                "-".to_owned()
            }
        )
    }

    /// Each file's key range, rows and size, in key order.
    fn ranges(&self) -> String {
        let key = |k: Option<i64>| k.map_or_else(|| "?".to_owned(), |k| k.to_string());
        self.0
            .iter()
            .map(|f| {
                format!(
                    "{}..={} {} rows {}",
                    key(f.first),
                    key(f.last),
                    f.rows,
                    mib(f.bytes)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The `bigint` key a mirror file's key tag holds: Arrow's row format of one non-null
/// Int64 (0x01, then the value big-endian with its sign bit flipped), in hex.
fn key_of(hex: &str) -> Option<i64> {
    let value = hex.strip_prefix("01").filter(|v| v.len() == 16)?;
    let bits = u64::from_str_radix(value, 16).ok()? ^ (1 << 63);
    Some(bits as i64)
}

/// [`KEYS_PER_ROUND`] distinct keys drawn uniformly from `low..=high`, sorted.
fn distinct(rng: &mut Rng, low: u64, high: u64) -> Vec<u64> {
    let mut keys = BTreeSet::new();
    while (keys.len() as u64) < KEYS_PER_ROUND {
        keys.insert(low + rng.below(high - low + 1));
    }
    keys.into_iter().collect()
}

/// The best time of [`QUERY_RUNS`] runs of `sql` over the table at `uri` (as view
/// `view`), and its `n`.
fn best_of(uri: &str, view: &str, sql: &str) -> (Duration, Option<i64>) {
    let mut best = Duration::MAX;
    let mut n = None;
    for _ in 0..QUERY_RUNS {
        let started = Instant::now();
        let result = duckdb_query(uri, view, sql);
        best = best.min(started.elapsed());
        n = result.rows.first().and_then(|row| row["n"].as_i64());
    }
    (best, n)
}

/// Median of `v` (the upper one of an even count); 0 when empty.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Largest of `v`; 0 when empty.
fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Bytes as MiB.
fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A duration in milliseconds; 0 when the clock went backwards.
fn millis(d: Result<Duration, std::time::SystemTimeError>) -> f64 {
    d.map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `to - from`, zero when negative.
fn since(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

/// Modification time of `path`.
fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Current resident memory (VmRSS) of `pid`, in bytes; 0 once it is gone.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak resident memory (VmHWM) of `pid` to its current RSS (`clear_refs`);
/// whether that worked.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}
