//! Lake maintenance against a real Postgres and a lake written by `pg2lake run`:
//! compaction keeps the change log row for row beside streaming, one compactor works on
//! a table at a time, VACUUM deletes only what no retained version needs, and kill -9 in
//! the middle of any of it loses and doubles nothing. Read back with the deltalake
//! Python package.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::Value;
use support::bank::{SCHEMA, load, stop_and_compare};
use support::lake::{assert_no_duplicates, wait_caught_up};
use support::load::Rng;
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgServer, delta_history, pg2lake_bin, read_delta, read_delta_at};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `pg2lake maintain --json` with `args` and `envs`; returns the exit code, the
/// report and stderr.
fn maintain(config: &ConfigFile, args: &[&str], envs: &[(String, String)]) -> (i32, Value, String) {
    let path = config.path().display().to_string();
    let mut all = vec!["maintain", "--config", path.as_str(), "--json"];
    all.extend_from_slice(args);
    let out = run_command(&all, envs, TIMEOUT);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `pg2lake maintain` and asserts it succeeded; returns the report.
fn maintain_ok(config: &ConfigFile, args: &[&str]) -> Value {
    let (code, report, stderr) = maintain(config, args, &[]);
    assert_eq!(code, 0, "maintain failed: {report:#}\n{stderr}");
    report
}

/// The report of `table` in a maintain report.
fn table_report<'a>(report: &'a Value, table: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("no {table} in {report:#}"))
}

/// The Parquet data files under a table's folder (not the `_`-folders), relative to it.
fn data_files(table_dir: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('_') {
                    walk(&path, root, out);
                }
            } else if name.ends_with(".parquet") {
                let relative = path.strip_prefix(root).expect("under root");
                out.insert(relative.display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(table_dir, table_dir, &mut out);
    out
}

/// The data files the current version references, relative to the table's folder.
fn referenced_files(uri: &str) -> BTreeSet<String> {
    read_delta(uri, &[])
        .files
        .iter()
        .map(|file| {
            let file = file.strip_prefix("file://").unwrap_or(file);
            let file = file.strip_prefix(uri).unwrap_or(file);
            file.trim_start_matches('/').to_owned()
        })
        .collect()
}

/// The actions of version `version` of the table in `table_dir`, one JSON object each.
fn log_actions(table_dir: &Path, version: i64) -> Vec<Value> {
    let path = table_dir.join(format!("_delta_log/{version:020}.json"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("a log line is JSON"))
        .collect()
}

/// Versions whose operation is OPTIMIZE, from the table's history.
fn optimize_versions(uri: &str) -> Vec<i64> {
    delta_history(uri, &[])
        .iter()
        .filter(|commit| commit["operation"] == "OPTIMIZE")
        .map(|commit| commit["version"].as_i64().expect("version"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_keeps_the_change_log_row_for_row_beside_streaming_one_compactor_at_a_time() {
    let pg = PgServer::start();
    let url = pg.create_database("maint").await;
    let db = pg.connect("maint").await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let lake_url = lake.path().display().to_string();
    let tables = ["public.accounts", "public.ledger"];
    let accounts_dir: PathBuf = lake.path().join("public/accounts");
    let accounts = accounts_dir.display().to_string();
    let lake_yaml = |compaction: &str, retention: &str| {
        format!(
            "  retention: {retention}\n  compaction:\n    lease: 5s\n    target_file_size: 64MiB\n{compaction}"
        )
    };
    // `run` without its own compactor first: the compactors here are `maintain` processes.
    let config = ConfigFile::new(&config_yaml(
        &url,
        "maint",
        &tables,
        &lake_url,
        &lake_yaml("    enabled: false\n    min_files: 4\n", "1h"),
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("maint").await, stop.clone(), 5));
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    loader.await.expect("loader");
    wait_caught_up(&db, "maint", TIMEOUT).await;
    let before = read_delta(&accounts, &[]);
    assert!(
        before.files.len() >= 8,
        "the load made only {} files",
        before.files.len()
    );

    // Two compactors at once: one does the work, the other finds the table taken (or,
    // if it came second, nothing left to do).
    let path = config.path().display().to_string();
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let out = run_command(&["maintain", "--config", &path, "--json"], &[], TIMEOUT);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                serde_json::from_slice::<Value>(&out.stdout).expect("report")
            })
        })
        .collect();
    let reports: Vec<Value> = racers
        .into_iter()
        .map(|racer| racer.join().expect("maintain thread"))
        .collect();
    for table in ["public.accounts", "public.ledger"] {
        let compacted = reports
            .iter()
            .filter(|report| {
                table_report(report, table)["compaction"]["files_removed"].as_u64() > Some(0)
            })
            .count();
        assert_eq!(compacted, 1, "{table}: {reports:#?}");
    }

    // The change log is unchanged row for row (every column, the order by _lsn, _seq),
    // in fewer files.
    let after = read_delta(&accounts, &[]);
    assert_eq!(
        after.rows, before.rows,
        "compaction changed the change log's rows"
    );
    assert!(
        after.files.len() < before.files.len(),
        "{} files before, {} after",
        before.files.len(),
        after.files.len()
    );
    // One OPTIMIZE version whose removes and adds all carry dataChange false, and no
    // other action that changes data.
    let optimized = optimize_versions(&accounts);
    assert_eq!(optimized.len(), 1, "{optimized:?}");
    let actions = log_actions(&accounts_dir, optimized[0]);
    let files: Vec<&Value> = actions
        .iter()
        .filter_map(|a| a.get("add").or_else(|| a.get("remove")))
        .collect();
    assert!(files.len() >= 3, "{actions:#?}");
    assert!(
        files.iter().all(|f| f["dataChange"] == false),
        "{actions:#?}"
    );
    // Every version still reads (time travel to before the compaction included), and the
    // one before the compaction has the same rows.
    for version in 0..=after.version {
        let read = read_delta_at(&accounts, &[], version);
        if version == optimized[0] - 1 {
            assert_eq!(read.rows, after.rows, "version {version}");
        }
    }
    // With a week of retention nothing may be vacuumed yet.
    let dry = maintain_ok(&config, &["--dry-run"]);
    assert_eq!(
        table_report(&dry, "public.accounts")["vacuum"]["files"],
        serde_json::json!([]),
        "{dry:#}"
    );

    // `run` with its own compactor, under load, with `maintain` jobs beside it: streaming
    // commits go on around the compactions, and the lake equals the source.
    service.stop(TIMEOUT);
    let config = ConfigFile::new(&config_yaml(
        &url,
        "maint",
        &tables,
        &lake_url,
        &lake_yaml("    interval: 1s\n    min_files: 4\n", "1h"),
    ));
    let mut service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("maint").await, stop.clone(), 6));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        maintain_ok(&config, &[]);
    }
    stop_and_compare(&stop, loader, &db, "maint", lake.path()).await;
    assert!(
        optimize_versions(&accounts).len() >= 3,
        "no compactions beside streaming: {:?}",
        optimize_versions(&accounts)
    );
    let log = service.log();
    assert!(
        !log.contains("replication session failed"),
        "streaming failed beside compaction:\n{log}"
    );

    // VACUUM with a retention of one second (and no compaction): exactly the files the
    // current version does not reference go, and it reads the same rows.
    service.stop(TIMEOUT);
    let config = ConfigFile::new(&config_yaml(
        &url,
        "maint",
        &tables,
        &lake_url,
        &lake_yaml("    enabled: false\n    min_files: 100000\n", "1s"),
    ));
    // A pass that the stop cut short leaves its lease (5 s here) to expire.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let on_disk = data_files(&accounts_dir);
    let referenced = referenced_files(&accounts);
    let unreferenced: BTreeSet<String> = on_disk.difference(&referenced).cloned().collect();
    assert!(!unreferenced.is_empty(), "compaction replaced no files");
    let rows = read_delta(&accounts, &[]).rows;
    let dry = maintain_ok(&config, &["--dry-run"]);
    let listed: BTreeSet<String> = table_report(&dry, "public.accounts")["vacuum"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().expect("path").to_owned())
        .collect();
    assert_eq!(listed, unreferenced, "the dry run lists other files");
    assert_eq!(
        data_files(&accounts_dir),
        on_disk,
        "the dry run deleted files"
    );
    let done = maintain_ok(&config, &[]);
    assert_eq!(
        table_report(&done, "public.accounts")["vacuum"]["files"]
            .as_array()
            .map(Vec::len),
        Some(unreferenced.len()),
        "{done:#}"
    );
    assert_eq!(
        data_files(&accounts_dir),
        referenced,
        "VACUUM left or took other files"
    );
    assert_eq!(read_delta(&accounts, &[]).rows, rows);
    assert!(accounts_dir.join("_delta_log").is_dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_compaction_and_vacuum_under_load_loses_and_doubles_nothing() {
    let pg = PgServer::start();
    let url = pg.create_database("maintkill").await;
    let db = pg.connect("maintkill").await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let lake_url = lake.path().display().to_string();
    let accounts_dir = lake.path().join("public/accounts");
    let accounts = accounts_dir.display().to_string();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "maintkill",
        &["public.accounts", "public.ledger"],
        &lake_url,
        "  retention: 1s\n  checkpoint_interval: 3\n  compaction:\n    enabled: false\n    min_files: 2\n    lease: 2s\n",
    ));
    let service = Service::start(&config, &[]);
    service.wait_streaming(TIMEOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(pg.connect("maintkill").await, stop.clone(), 7));

    // Killed between the rewrite and its commit, and between the commit and VACUUM.
    for round in 0..3 {
        for point in ["compact::before_commit", "compact::after_commit"] {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let envs = [("FAILPOINTS".to_owned(), format!("{point}=return"))];
            let (code, _, stderr) = maintain(&config, &[], &envs);
            assert!(
                code != 0 && stderr.contains(&format!("failpoint {point} hit")),
                "round {round}: maintain did not die at {point} (exit {code}):\n{stderr}"
            );
            assert_no_duplicates(&read_delta(&accounts, &[]).rows);
            // The dead compactor's lease expires.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // Killed at random moments: in the middle of a rewrite, a commit or a VACUUM.
    let mut rng = Rng(11);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut child = Command::new(pg2lake_bin())
            .args(["maintain", "--config", &config.path().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maintain");
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        let _ = child.kill();
        let _ = child.wait();
        assert_no_duplicates(&read_delta(&accounts, &[]).rows);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let compactions = optimize_versions(&accounts);
    assert!(
        compactions.len() >= 3,
        "the killed compactors committed only {compactions:?}"
    );

    // Clean passes after it all (the second one vacuums what the first compacted), then
    // the comparison with the source.
    stop_and_compare(&stop, loader, &db, "maintkill", lake.path()).await;
    for pass in 0..2 {
        // Past the killed compactors' leases (2 s), and then past the retention (1 s)
        // of what the first pass replaced.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let report = maintain_ok(&config, &[]);
        assert!(
            report["tables"]
                .as_array()
                .is_some_and(|t| t.iter().all(|t| t["busy"].is_null())),
            "pass {pass}: a table still held: {report:#}"
        );
    }
    for table in ["accounts", "ledger"] {
        support::bank::assert_lake_equals_source(&db, lake.path(), table).await;
    }
    // Nothing the killed compactors wrote and never committed is left, and every file
    // the current version needs is there (the reads above prove the second).
    assert_eq!(
        data_files(&accounts_dir),
        referenced_files(&accounts),
        "files no version references are left"
    );
    let log = service.log();
    assert!(
        !log.contains("replication session failed"),
        "streaming failed beside the killed compactors:\n{log}"
    );
}

/// `run` stopped (SIGTERM) in the middle of a compaction gives the table's lease back at
/// once: a `maintain` right after finds the table free, though the lease would last ten
/// minutes.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_mid_pass_gives_back_its_lease() {
    let pg = PgServer::start();
    let url = pg.create_database("leaseback").await;
    let db = pg.connect("leaseback").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "leaseback",
        &["public.t"],
        &lake.path().display().to_string(),
        "  compaction:\n    interval: 1s\n    min_files: 2\n    lease: 10m\n",
    ));
    // The pass stops for a while just before its commit, holding the lease.
    let mut service = Service::start(
        &config,
        &[(
            "FAILPOINTS".to_owned(),
            "compact::before_commit=sleep(4000)".to_owned(),
        )],
    );
    service.wait_streaming(TIMEOUT);
    for n in 0..4 {
        db.batch_execute(&format!("INSERT INTO t VALUES ({n}, 'v{n}')"))
            .await
            .expect("insert");
        wait_caught_up(&db, "leaseback", TIMEOUT).await;
    }
    let leases = lake.path().join("public/t/_pg2lake_maintenance");
    support::wait_until(TIMEOUT, "the compactor taking the lease", || {
        std::fs::read_dir(&leases).is_ok_and(|mut entries| entries.next().is_some())
    });
    assert!(service.stop(TIMEOUT).success(), "{}", service.log());
    let report = maintain_ok(&config, &["--table", "public.t"]);
    let table = table_report(&report, "public.t");
    assert!(
        table["busy"].is_null(),
        "the stopped run kept its lease: {report:#}"
    );
}
