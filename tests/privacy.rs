//! Column policies for personal data against a real Postgres: the same policy matrix
//! through the initial load and streaming (new rows, updates, deletes, a key change of a
//! hashed key), hashes checked against Python's `hmac`, masks and truncations exact,
//! excluded columns never selected nor written, no statistics of a column kept in clear
//! that asks for none, a policy or key change refused, `check` naming protected and
//! unreviewed columns, `verify` equal, and no clear value in any lake file or in the log.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value};
use support::lake::{fold, source_rows, wait_caught_up, wait_mirror_current};
use support::scrape::{get, with_metrics};
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgServer, read_delta, venv_python};

const TIMEOUT: Duration = Duration::from_secs(120);
const KEY: &str = "privacy-test-key-0123456789";
const KEY_ENV: &str = "PG2LAKE_HASH_KEY";

type Row = Map<String, Value>;

const POLICIES: &str = "privacy:\n  columns:\n    email: hash\n    \"public.customers.cpf\": hash\n    \"public.customers.phone\": mask(4)\n    \"public.customers.name\": truncate(1)\n    \"public.customers.notes\": exclude\n    \"public.customers.birth\": null\n    \"public.customers.city\": clear\n  no_statistics: [\"public.customers.city\"]\n";

/// Lowercase hex HMAC-SHA-256 of each value under `key`, computed by Python's `hmac`.
fn python_hmac(key: &str, values: &[String]) -> BTreeMap<String, String> {
    let script = "import hmac, hashlib, json, sys\n\
                  key = sys.argv[1].encode()\n\
                  values = json.loads(sys.stdin.read())\n\
                  print(json.dumps({v: hmac.new(key, v.encode(), hashlib.sha256).hexdigest() for v in values}))";
    let mut child = Command::new(venv_python())
        .args(["-c", script, key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(serde_json::to_string(values).expect("json").as_bytes())
            .expect("write values");
    }
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "python hmac failed");
    serde_json::from_slice(&out.stdout).expect("hashes")
}

/// `*` for every character but the last `keep`; all of a short value.
fn mask(value: &str, keep: usize) -> String {
    let count = value.chars().count();
    let masked = if count <= keep { count } else { count - keep };
    "*".repeat(masked) + &value.chars().skip(masked).collect::<String>()
}

/// The source columns of a lake row (metadata columns removed).
fn source_part(mut row: Row) -> Row {
    row.retain(|column, _| !column.starts_with('_') && column != "date");
    row
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The values of `needles` found in any byte of any file under `dir`, with the file.
fn leaks(dir: &Path, needles: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files_under(dir) {
        let bytes = std::fs::read(&file).expect("read lake file");
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("{needle:?} in {}", file.display()));
            }
        }
    }
    found
}

/// Every `add` action of a Delta table's JSON log, and the last `metaData` configuration.
fn log_actions(table: &Path) -> (Vec<Value>, Map<String, Value>) {
    let mut adds = Vec::new();
    let mut configuration = Map::new();
    let mut logs: Vec<_> = files_under(&table.join("_delta_log"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    logs.sort();
    for log in logs {
        for line in std::fs::read_to_string(&log).expect("log").lines() {
            let action: Value = serde_json::from_str(line).expect("action");
            if let Some(add) = action.get("add") {
                adds.push(add.clone());
            }
            if let Some(conf) = action.pointer("/metaData/configuration") {
                configuration = conf.as_object().cloned().unwrap_or_default();
            }
        }
    }
    (adds, configuration)
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_protect_personal_columns_in_the_initial_load_and_streaming() {
    let pg = PgServer::start();
    let url = pg.create_database("privacy").await;
    let db = pg.connect("privacy").await;
    db.batch_execute(
        "ALTER DATABASE privacy SET log_statement = 'all';
         CREATE TABLE customers (id int PRIMARY KEY, email text, cpf text, phone text, name text,
                                 notes text, birth date, city text);
         INSERT INTO customers SELECT g, 'person' || g || '@example.com', lpad((g * 7919)::text, 11, '7'),
           '+55 11 9' || lpad(g::text, 8, '0'), 'Person' || g || ' Surname', 'secret note ' || g,
           date '1980-01-01' + g, 'City' || (g % 5)
         FROM generate_series(1, 200) g;
         CREATE TABLE accounts (email text PRIMARY KEY, plan text, owner_name text);
         INSERT INTO accounts SELECT 'person' || g || '@example.com', 'free', 'Owner ' || g
         FROM generate_series(1, 50) g;",
    )
    .await
    .expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let yaml = config_yaml(
        &url,
        "privacy",
        &["public.customers", "public.accounts"],
        &lake.path().display().to_string(),
        "mirror:\n  enabled: true\n  interval: 300ms\n",
    );
    let port = support::free_port();
    let config = ConfigFile::new(&with_metrics(&format!("{yaml}{POLICIES}"), port, ""));
    let key_env = vec![(KEY_ENV.to_owned(), KEY.to_owned())];
    let mut service = Service::start(&config, &key_env);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(service.is_running(), "pg2lake stopped:\n{}", service.log());
    wait_caught_up(&db, "privacy", TIMEOUT).await;

    // Streaming: new rows, updates (before-images of keys), deletes, and a hashed key
    // that changes.
    db.batch_execute(
        "INSERT INTO customers VALUES (201, 'late201@example.com', '12345678901', '+55 81 912345678',
           'Zed Late', 'streamed secret', '1999-09-09', 'Recife');
         UPDATE customers SET phone = '+55 21 98888' || id, notes = 'changed secret ' || id WHERE id <= 20;
         DELETE FROM customers WHERE id BETWEEN 190 AND 195;
         UPDATE accounts SET plan = 'pro' WHERE email IN ('person1@example.com', 'person2@example.com');
         DELETE FROM accounts WHERE email = 'person3@example.com';
         UPDATE accounts SET email = 'renamed4@example.com' WHERE email = 'person4@example.com';
         INSERT INTO accounts VALUES ('late@example.com', 'free', 'Late Owner');",
    )
    .await
    .expect("changes");
    wait_caught_up(&db, "privacy", TIMEOUT).await;

    // Every clear value of a protected column, past and present.
    let mut clear_values: Vec<String> = Vec::new();
    for sql in [
        "SELECT email AS v FROM customers UNION SELECT 'person' || g || '@example.com' FROM generate_series(1, 200) g",
        "SELECT cpf FROM customers UNION SELECT lpad((g * 7919)::text, 11, '7') FROM generate_series(1, 200) g",
        "SELECT 'secret note ' || g FROM generate_series(1, 200) g UNION SELECT 'changed secret ' || g FROM generate_series(1, 20) g UNION SELECT 'streamed secret'",
        "SELECT phone FROM customers UNION SELECT '+55 11 9' || lpad(g::text, 8, '0') FROM generate_series(1, 200) g",
        "SELECT name FROM customers",
        "SELECT email FROM accounts UNION SELECT 'person' || g || '@example.com' FROM generate_series(1, 50) g",
    ] {
        for row in db.query(sql, &[]).await.expect("clear values") {
            clear_values.push(row.get(0));
        }
    }
    clear_values.sort();
    clear_values.dedup();
    let hashes = python_hmac(KEY, &clear_values);

    // customers: the fold of the change log equals the source with the policies applied.
    let customers_lake = lake.path().join("public/customers");
    let read = read_delta(&customers_lake.display().to_string(), &[]);
    let columns = read.columns();
    assert!(
        !columns.contains(&"notes"),
        "an excluded column is a lake column: {columns:?}"
    );
    assert!(
        read.column_type("birth")
            .is_some_and(|t| t.starts_with("date32")),
        "a null column keeps its type: {:?}",
        read.column_type("birth")
    );
    assert_eq!(
        read.column_type("cpf"),
        read.column_type("city"),
        "a hashed column is a string"
    );
    let folded: BTreeMap<String, Row> = fold(read.rows, "id")
        .into_iter()
        .map(|(k, row)| (k, source_part(row)))
        .collect();
    let expected: BTreeMap<String, Row> = source_rows(&db, "SELECT * FROM customers", "id")
        .await
        .into_iter()
        .map(|(k, mut row)| {
            row.remove("notes");
            let text = |row: &Row, c: &str| row[c].as_str().expect("text").to_owned();
            let email = hashes[&text(&row, "email")].clone();
            let cpf = hashes[&text(&row, "cpf")].clone();
            let phone = mask(&text(&row, "phone"), 4);
            let name: String = text(&row, "name").chars().take(1).collect();
            row.insert("email".into(), Value::String(email));
            row.insert("cpf".into(), Value::String(cpf));
            row.insert("phone".into(), Value::String(phone));
            row.insert("name".into(), Value::String(name));
            row.insert("birth".into(), Value::Null);
            (k, row)
        })
        .collect();
    assert_eq!(folded.len(), expected.len());
    for (key, row) in &expected {
        assert_eq!(folded.get(key), Some(row), "customers id {key}");
    }
    let customers_expected = expected;

    // accounts: folded by its hashed key, with a key change and a delete among them.
    let accounts_lake = lake.path().join("public/accounts");
    let folded: BTreeMap<String, Row> = fold(
        read_delta(&accounts_lake.display().to_string(), &[]).rows,
        "email",
    )
    .into_values()
    .map(|row| {
        let row = source_part(row);
        (row["email"].as_str().expect("hash").to_owned(), row)
    })
    .collect();
    let expected: BTreeMap<String, Row> = source_rows(&db, "SELECT * FROM accounts", "email")
        .await
        .into_values()
        .map(|mut row| {
            let hash = hashes[row["email"].as_str().expect("email")].clone();
            row.insert("email".into(), Value::String(hash.clone()));
            (hash, row)
        })
        .collect();
    assert_eq!(folded, expected, "accounts folded by the hashed key");

    // The initial load never selected the excluded or nulled columns.
    let copies: Vec<String> = pg
        .log()
        .lines()
        .filter(|l| l.contains("COPY (SELECT") && l.contains("customers"))
        .map(str::to_owned)
        .collect();
    assert!(!copies.is_empty(), "no COPY of customers in the server log");
    for copy in &copies {
        assert!(
            !copy.contains("notes") && !copy.contains("birth"),
            "the initial load selected an excluded or nulled column: {copy}"
        );
    }

    // The policies are recorded in the table; the clear column has no statistics, the
    // hashed ones have statistics of hashes.
    let (adds, configuration) = log_actions(&customers_lake);
    let recorded_text = configuration["pg2lake.privacy.policies"].clone();
    let recorded: Value =
        serde_json::from_str(recorded_text.as_str().expect("policies recorded")).expect("json");
    assert_eq!(
        recorded,
        serde_json::json!({"birth": "null", "cpf": "hash", "email": "hash", "name": "truncate(1)", "notes": "exclude", "phone": "mask(4)"})
    );
    assert!(!adds.is_empty());
    for add in &adds {
        let stats: Value =
            serde_json::from_str(add["stats"].as_str().expect("stats")).expect("stats json");
        assert!(
            stats["minValues"].get("city").is_none(),
            "statistics of city: {stats}"
        );
        assert!(
            stats["minValues"]["email"]
                .as_str()
                .is_some_and(|h| h.len() == 64),
            "email statistics are not hashes: {stats}"
        );
    }

    // The current-state mirror holds the same protected values and follows the same
    // statistics rule.
    let mirror = lake.path().join("_current/public/customers");
    wait_mirror_current(
        &customers_lake.display().to_string(),
        &mirror.display().to_string(),
        TIMEOUT,
    );
    let mirrored: BTreeMap<String, Row> = read_delta(&mirror.display().to_string(), &[])
        .rows
        .into_iter()
        .map(|row| (row["id"].to_string(), source_part(row)))
        .collect();
    assert_eq!(mirrored, customers_expected, "the mirror of customers");
    let (adds, configuration) = log_actions(&mirror);
    assert_eq!(configuration["pg2lake.privacy.policies"], recorded_text);
    for add in &adds {
        let stats: Value =
            serde_json::from_str(add["stats"].as_str().expect("stats")).expect("stats json");
        assert!(
            stats["minValues"].get("city").is_none(),
            "mirror statistics of city: {stats}"
        );
    }

    // `verify` compares the source, with the policies applied, to the lake.
    let path = config.path().display().to_string();
    let out = run_command(&["verify", "--config", &path], &key_env, TIMEOUT);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // `check` lists protected columns and warns about a personal-looking one without a
    // policy.
    let out = run_command(&["check", "--config", &path], &key_env, TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("table public.customers: protected columns: ")
            && stdout.contains("notes (exclude)")
            && stdout.contains("phone (mask(4))"),
        "{stdout}"
    );
    assert!(
        stdout.contains("! table public.accounts: columns that look personal have no policy")
            && stdout.contains("owner_name"),
        "{stdout}"
    );
    // With mirrors on, `check` shows how far each is behind its change log.
    assert!(
        stdout.contains("table public.customers: mirror reflects change-log version"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("public.customers: columns that look personal"),
        "{stdout}"
    );

    // No clear value of a protected column anywhere in the lake, nor in pg2lake's log or
    // metrics.
    let (_, metrics) = get(port, "/metrics");
    assert!(metrics.contains("pg2lake_"), "{metrics}");
    let counted: Vec<&String> = clear_values
        .iter()
        .filter(|v| metrics.contains(v.as_str()))
        .collect();
    assert!(
        counted.is_empty(),
        "clear values in the metrics: {counted:?}"
    );
    service.stop(TIMEOUT);
    let found = leaks(lake.path(), &clear_values);
    assert!(found.is_empty(), "clear values in the lake: {found:?}");
    let log = service.log();
    let logged: Vec<&String> = clear_values
        .iter()
        .filter(|v| log.contains(v.as_str()))
        .collect();
    assert!(logged.is_empty(), "clear values in the log: {logged:?}");

    // A changed policy, or another key, is refused before anything is written.
    let changed = ConfigFile::new(&format!(
        "{yaml}{}",
        POLICIES.replace("phone\": mask(4)", "phone\": hash")
    ));
    let mut refused = Service::start(&changed, &key_env);
    refused.wait_error(TIMEOUT, &["column phone", "policy mask(4)", "hash"]);
    let other_key = vec![(
        KEY_ENV.to_owned(),
        "another-key-0123456789abcdef".to_owned(),
    )];
    let mut refused = Service::start(&config, &other_key);
    refused.wait_error(TIMEOUT, &["hash key", "set the key back"]);
    // Without a key, a hashed column stops pg2lake with the fix.
    let mut refused = Service::start(&config, &[]);
    refused.wait_error(TIMEOUT, &["no hash key is set", KEY_ENV]);
}

/// Runs `pg2lake forget --json` with `args`; the exit code and the report.
fn forget(config: &ConfigFile, env: &[(String, String)], args: &[&str]) -> (i32, Value, String) {
    let path = config.path().display().to_string();
    let mut all = vec!["forget", "--config", path.as_str(), "--json"];
    all.extend_from_slice(args);
    let out = run_command(&all, env, TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        report,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// Rows removed from a table's change log and mirror, by table, from a forget report.
fn removed(report: &Value) -> BTreeMap<String, (u64, u64)> {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            (
                t["table"].as_str().expect("table").to_owned(),
                (
                    t["change_log"]["rows_removed"].as_u64().unwrap_or(0),
                    t["mirror"]["rows_removed"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_erases_a_subject_from_every_file_and_version_while_streaming() {
    let pg = PgServer::start();
    let url = pg.create_database("forget").await;
    let db = pg.connect("forget").await;
    db.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, email text, name text);
         INSERT INTO customers SELECT g, 'c' || g || '@example.com', 'Customer ' || g
         FROM generate_series(1, 3000) g;
         UPDATE customers SET email = 'subject@example.com', name = 'Ana Subject Unique' WHERE id = 7;
         CREATE TABLE orders (id int PRIMARY KEY, email text, item text);
         INSERT INTO orders SELECT g, 'c' || (g % 3000 + 1) || '@example.com', 'item ' || g
         FROM generate_series(1, 6000) g;
         UPDATE orders SET item = 'subject-secret-item-' || id WHERE email = 'c7@example.com';
         UPDATE orders SET email = 'subject@example.com' WHERE email = 'c7@example.com';",
    )
    .await
    .expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let yaml = config_yaml(
        &url,
        "forget",
        &["public.customers", "public.orders"],
        &lake.path().display().to_string(),
        "mirror:\n  enabled: true\n  interval: 300ms\n  target_file_rows: 1000\nprivacy:\n  columns:\n    email: hash\n",
    );
    let config = ConfigFile::new(&yaml);
    let key_env = vec![(KEY_ENV.to_owned(), KEY.to_owned())];
    let mut service = Service::start(&config, &key_env);
    wait_caught_up(&db, "forget", TIMEOUT).await;
    // History: the subject changes in several versions, then leaves the source; other
    // rows change too.
    for n in 1..=4 {
        db.batch_execute(&format!(
            "UPDATE customers SET name = 'Ana Subject Unique v{n}' WHERE id = 7;
             UPDATE customers SET name = name || '.' WHERE id % 500 = {n};"
        ))
        .await
        .expect("history");
        wait_caught_up(&db, "forget", TIMEOUT).await;
    }
    db.batch_execute(
        "DELETE FROM orders WHERE email = 'subject@example.com'; DELETE FROM customers WHERE id = 7;",
    )
    .await
    .expect("erase in the source");
    wait_caught_up(&db, "forget", TIMEOUT).await;
    let customers = lake.path().join("public/customers").display().to_string();
    let customers_mirror = lake
        .path()
        .join("_current/public/customers")
        .display()
        .to_string();
    wait_mirror_current(&customers, &customers_mirror, TIMEOUT);
    let subject_hash = python_hmac(KEY, &["subject@example.com".to_owned()])
        .remove("subject@example.com")
        .expect("hash");
    let mut needles = vec![
        "Ana Subject Unique".to_owned(),
        "subject-secret-item-".to_owned(),
    ];
    needles.push(subject_hash.clone());
    assert!(
        !leaks(lake.path(), &needles).is_empty(),
        "the subject is not in the lake before forget: the scan would prove nothing"
    );
    let is_subject = |row: &Row| {
        row.get("id").and_then(Value::as_i64) == Some(7)
            || row.get("email").and_then(Value::as_str) == Some(subject_hash.as_str())
    };
    let before: Vec<Row> = read_delta(&customers, &[])
        .rows
        .into_iter()
        .filter(|r| !is_subject(r))
        .collect();
    let before_end = before
        .iter()
        .map(|r| (r["_lsn"].as_i64(), r["_seq"].as_i64()))
        .max();

    // Other writes go on while forget runs.
    let writer = pg.connect("forget").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 10_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer
                    .batch_execute(&format!(
                        "INSERT INTO customers VALUES ({n}, 'c{n}@example.com', 'Later {n}');
                         UPDATE customers SET name = name || '+' WHERE id = {};",
                        n % 3000 + 1
                    ))
                    .await
                    .expect("load");
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // By a hashed column, in every table that has it; then the customer's key, for the
    // delete row (it holds the key only).
    let (code, report, out) = forget(
        &config,
        &key_env,
        &["--where", r#"{"email": "subject@example.com"}"#],
    );
    assert_eq!(code, 0, "{out}");
    let by_email = removed(&report);
    assert!(
        by_email["public.orders"].0 > 0 && by_email["public.customers"].0 > 0,
        "{report:#}"
    );
    let (code, report, out) = forget(
        &config,
        &key_env,
        &["--table", "public.customers", "--key", r#"{"id": 7}"#],
    );
    assert_eq!(code, 0, "{out}");
    assert!(removed(&report)["public.customers"].0 > 0, "{report:#}");
    // The report names no value.
    assert!(
        !out.contains("subject@example.com") && !out.contains(&subject_hash),
        "{out}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.expect("load task");
    wait_caught_up(&db, "forget", TIMEOUT).await;
    wait_mirror_current(&customers, &customers_mirror, TIMEOUT);
    assert!(
        service.is_running(),
        "pg2lake stopped while forget ran:\n{}",
        service.log()
    );

    // Nothing of the subject in any byte of the lake: data files, log, checkpoints.
    let found = leaks(lake.path(), &needles);
    assert!(
        found.is_empty(),
        "the subject is still in the lake: {found:?}"
    );
    // The rest of the change log is unchanged row for row, and streaming went on.
    let after = read_delta(&customers, &[]).rows;
    assert!(!after.iter().any(is_subject));
    support::lake::assert_no_duplicates(&after);
    let mut kept: Vec<Row> = after
        .iter()
        .filter(|r| Some((r["_lsn"].as_i64(), r["_seq"].as_i64())) <= before_end)
        .cloned()
        .collect();
    let mut expected = before;
    let order = |r: &Row| (r["_lsn"].as_i64(), r["_seq"].as_i64());
    kept.sort_by_key(order);
    expected.sort_by_key(order);
    assert_eq!(
        kept.len(),
        expected.len(),
        "rows other than the subject's changed"
    );
    assert!(kept == expected, "rows other than the subject's changed");
    assert!(
        after.len() > expected.len(),
        "streaming stopped during forget"
    );
    // The mirror equals the source.
    let mirrored: BTreeMap<String, Row> = read_delta(&customers_mirror, &[])
        .rows
        .into_iter()
        .map(|row| (row["id"].to_string(), source_part(row)))
        .collect();
    let source = source_rows(&db, "SELECT * FROM customers", "id").await;
    let emails: Vec<String> = source
        .values()
        .map(|row| row["email"].as_str().expect("email").to_owned())
        .collect();
    let hashes = python_hmac(KEY, &emails);
    let source: BTreeMap<String, Row> = source
        .into_iter()
        .map(|(k, mut row)| {
            let hashed = hashes[row["email"].as_str().expect("email")].clone();
            row.insert("email".into(), Value::String(hashed));
            (k, row)
        })
        .collect();
    assert!(mirrored == source, "the mirror differs from the source");
    // Every retained version reads, from the first after the erasure to the latest.
    let history = support::delta_history(&customers, &[]);
    let versions: Vec<i64> = history
        .iter()
        .filter_map(|h| h["version"].as_i64())
        .collect();
    let first = *versions.iter().min().expect("versions");
    let last = *versions.iter().max().expect("versions");
    for version in first..=last {
        support::read_delta_at(&customers, &[], version);
    }

    // Again: nothing left to erase, nothing changes.
    let version = read_delta(&customers, &[]).version;
    let (code, report, out) = forget(
        &config,
        &key_env,
        &["--where", r#"{"email": "subject@example.com"}"#],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        removed(&report)
            .values()
            .all(|&(log, mirror)| log == 0 && mirror == 0),
        "{report:#}"
    );
    assert_eq!(read_delta(&customers, &[]).version, version);
    service.stop(TIMEOUT);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forget_killed_at_any_point_is_finished_by_the_next() {
    let pg = PgServer::start();
    let url = pg.create_database("forgetkill").await;
    let db = pg.connect("forgetkill").await;
    db.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, name text);
         INSERT INTO people SELECT g, 'Person ' || g FROM generate_series(1, 2000) g;
         UPDATE people SET name = 'Zoe Killtest Unique' WHERE id = 5;",
    )
    .await
    .expect("schema");
    let lake = tempfile::tempdir().expect("lake dir");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "forgetkill",
        &["public.people"],
        &lake.path().display().to_string(),
        "",
    ));
    let mut service = Service::start(&config, &[]);
    wait_caught_up(&db, "forgetkill", TIMEOUT).await;
    for n in 1..=3 {
        db.batch_execute(&format!(
            "UPDATE people SET name = 'Zoe Killtest Unique {n}' WHERE id = 5"
        ))
        .await
        .expect("history");
        wait_caught_up(&db, "forgetkill", TIMEOUT).await;
    }
    service.stop(TIMEOUT);
    let needles = vec!["Zoe Killtest Unique".to_owned()];
    let people = lake.path().join("public/people");
    let args = ["--table", "public.people", "--key", r#"{"id": 5}"#];
    for point in ["forget::before_commit", "forget::after_commit"] {
        let path = config.path().display().to_string();
        let mut all = vec!["forget", "--config", path.as_str()];
        all.extend_from_slice(&args);
        let out = run_command(
            &all,
            &[("FAILPOINTS".to_owned(), format!("{point}=return"))],
            TIMEOUT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&format!("failpoint {point} hit")),
            "forget did not die at {point}: {stderr}"
        );
        // Killed: the subject is still somewhere (the files, or the history).
        assert!(!leaks(lake.path(), &needles).is_empty(), "{point}");
        read_delta(&people.display().to_string(), &[]);
    }
    // The next run finishes what the killed one left: nothing of the subject anywhere,
    // and the table reads.
    let (code, report, out) = forget(&config, &[], &args);
    assert_eq!(code, 0, "{out}");
    let table = &report["tables"][0]["change_log"];
    assert!(table["log_files_deleted"].as_u64() > Some(0), "{report:#}");
    let found = leaks(lake.path(), &needles);
    assert!(
        found.is_empty(),
        "the subject is still in the lake: {found:?}"
    );
    let rows = read_delta(&people.display().to_string(), &[]).rows;
    assert!(!rows.iter().any(|r| r["id"].as_i64() == Some(5)));
    assert_eq!(fold(rows, "id").len(), 1999);
    assert!(
        !people
            .join("_pg2lake_maintenance/forget-pending.json")
            .exists(),
        "the marker of the interrupted forget is left"
    );
}
