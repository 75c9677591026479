//! Bad input ends with a one-line error naming the cause and the fix, a non-zero exit
//! code, and nothing written: no slot, no publication, no lake folder.

mod support;

use std::process::Output;
use std::time::Duration;

use support::service::{ConfigFile, config_yaml, run_command};
use support::{PgOptions, PgServer};

const TIMEOUT: Duration = Duration::from_secs(60);

fn run(config: &ConfigFile) -> Output {
    run_command(
        &[
            "run",
            "--config",
            &config.path().display().to_string(),
            "--log-format",
            "json",
        ],
        &[],
        TIMEOUT,
    )
}

/// The last line on stderr: the error pg2lake ends with.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned()
}

fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let line = error_line(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        line.starts_with("error: "),
        "one error line expected, got {line:?}"
    );
    for needle in needles {
        assert!(line.contains(needle), "{line:?} should mention {needle:?}");
    }
}

async fn nothing_written(pg: &PgServer, db: &str, lake: &std::path::Path) {
    let client = pg.connect(db).await;
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .expect("count catalog rows")
        .get(0);
    let publications: i64 = client
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .expect("count catalog rows")
        .get(0);
    assert_eq!(
        (slots, publications),
        (0, 0),
        "no slot or publication is created"
    );
    let lake_entries = std::fs::read_dir(lake).map(|d| d.count()).unwrap_or(0);
    assert_eq!(lake_entries, 0, "nothing is written to the lake");
}

#[test]
fn unknown_config_key_is_a_usage_error() {
    let config = ConfigFile::new(
        "source:\n  url: postgres://localhost/db\ntables: [public.t]\nlake:\n  urll: ./x\n",
    );
    let out = run(&config);
    assert_fails(&out, 2, &["urll"]);
}

#[test]
fn a_missing_config_file_is_a_usage_error() {
    let out = run_command(
        &["run", "--config", "/nonexistent/pg2lake.yaml"],
        &[],
        TIMEOUT,
    );
    assert_fails(&out, 2, &["/nonexistent/pg2lake.yaml"]);
}

#[test]
fn unreachable_postgres_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lake = tempfile::tempdir().unwrap();
    let lake_path = lake.path().join("lake");
    let config = ConfigFile::new(&config_yaml(
        &format!("postgres://postgres@127.0.0.1:{port}/db"),
        "s",
        &["public.t"],
        &lake_path.display().to_string(),
        "",
    ));
    let out = run(&config);
    assert_fails(&out, 1, &[&format!("127.0.0.1:{port}")]);
    assert!(!lake_path.exists(), "no lake folder is created");
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_level_replica_is_named_with_its_fix() {
    let pg = PgServer::start_with(PgOptions {
        conf: vec!["wal_level = replica".into()],
        ..Default::default()
    });
    let url = pg.create_database("app").await;
    pg.connect("app")
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "s",
        &["public.t"],
        &lake.path().display().to_string(),
        "",
    ));
    let out = run(&config);
    assert_fails(&out, 1, &["wal_level", "logical", "ALTER SYSTEM"]);
    nothing_written(&pg, "app", lake.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_replication_is_named_with_its_fix() {
    let pg = PgServer::start();
    let url = pg.create_database("app").await;
    let client = pg.connect("app").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE ROLE reader LOGIN; GRANT SELECT ON t TO reader;",
        )
        .await
        .unwrap();
    let url = url.replacen("postgres@", "reader@", 1);
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "s",
        &["public.t"],
        &lake.path().display().to_string(),
        "",
    ));
    let out = run(&config);
    assert_fails(&out, 1, &["reader", "REPLICATION"]);
    nothing_written(&pg, "app", lake.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_lake_is_named_and_nothing_is_written() {
    let pg = PgServer::start();
    let url = pg.create_database("app").await;
    pg.connect("app")
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let lake = file.join("lake");
    let config = ConfigFile::new(&config_yaml(
        &url,
        "s",
        &["public.t"],
        &lake.display().to_string(),
        "",
    ));
    let out = run(&config);
    assert_fails(&out, 1, &["not writable", "a-file"]);
    nothing_written(&pg, "app", dir.path().join("empty").as_path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_table_is_named() {
    let pg = PgServer::start();
    let url = pg.create_database("app").await;
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(&config_yaml(
        &url,
        "s",
        &["public.nope"],
        &lake.path().display().to_string(),
        "",
    ));
    let out = run(&config);
    assert_fails(&out, 1, &["public.nope", "does not exist"]);
    nothing_written(&pg, "app", lake.path()).await;
}
