//! Secrets never reach pg2lake's outputs: the source password, given by
//! `PG2LAKE__SOURCE__PASSWORD`, by `source.password_file` or inside `source.url`, and the
//! S3 secret key and session token stay out of stdout, stderr, the log (at `trace` for the
//! one-shot commands), the final error line, `status`, `/metrics` and the probes, on
//! success and on failure (a wrong password, a lake that is not there, a bad config), and
//! out of the `Debug` form of the config and of the connection settings.
//!
//! ```text
//!  secret ──► env / password_file / url / AWS_* ──► pg2lake check|snapshot|run|status
//!                                                        │
//!        stdout, stderr, log, error line, /metrics, /healthz, /readyz ◄──┘
//!                         └── searched for the marker "Sekr3t"
//! ```
//!
//! Every secret contains the marker `Sekr3t`, and each output is searched for the marker
//! (ignoring case) rather than for whole secrets, so a fragment left by a half-done
//! redaction (`4711@127.0.0.1`) or a percent-encoded copy (`pw%2FSekr3t%40…`) counts as
//! a leak too.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pg2lake::config::Config;
use support::lake::wait_caught_up;
use support::scrape::{get, sample, with_metrics};
use support::service::{ConfigFile, Service, config_yaml};
use support::{PgOptions, PgServer, S3Server, free_port};

/// What every secret below contains; outputs are searched for it, ignoring case.
const MARKER: &str = "sekr3t";
/// The password of `app_env`, given by `PG2LAKE__SOURCE__PASSWORD` (SCRAM).
const ENV_PASSWORD: &str = "pw-Sekr3t-4711";
/// The password of `app_file`, given by `source.password_file` (md5).
const FILE_PASSWORD: &str = "pw-Sekr3t-md5-0042";
/// The password of `app_url`, given inside `source.url` (SCRAM); it holds every character
/// a URL's user info must percent-encode, so a redaction that stops at the first `@`,
/// `/` or `#` shows.
const URL_PASSWORD: &str = "pw/Sekr3t@4711:#x";
/// [`URL_PASSWORD`] percent-encoded, as it is written in the URL.
const URL_PASSWORD_ENCODED: &str = "pw%2FSekr3t%404711%3A%23x";
/// A password that is not the role's.
const WRONG_PASSWORD: &str = "pw-Wr0ng-Sekr3t-9999";
/// `AWS_SECRET_ACCESS_KEY` (moto accepts any).
const S3_SECRET_KEY: &str = "s3-Sekr3t-0815";
/// `AWS_SESSION_TOKEN` (moto accepts any); sent as a request header, so a request dump
/// would show it.
const S3_SESSION_TOKEN: &str = "tok-Sekr3t-42";
/// Passwords written into `source.url` as they are, without percent-encoding: a `/`
/// (base64 alphabet), a `?` and a `#` after the secret part.
const UNESCAPED_URL_PASSWORDS: &[&str] = &["Sekr3t/4711+x=", "Sekr3t?4711", "Sekr3t#4711"];
/// Every secret of this file.
const SECRETS: &[&str] = &[
    ENV_PASSWORD,
    FILE_PASSWORD,
    URL_PASSWORD,
    URL_PASSWORD_ENCODED,
    WRONG_PASSWORD,
    S3_SECRET_KEY,
    S3_SESSION_TOKEN,
];

const COMMAND: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(30);

/// The lines of `text` that show a secret.
fn leaks(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.to_lowercase().contains(MARKER))
        .collect()
}

/// Panics naming `what` and quoting each line of `text` that shows a secret.
fn assert_clean(what: &str, text: &str) {
    let leaks = leaks(text);
    assert!(
        leaks.is_empty(),
        "{what} shows a secret in {} line(s):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `error: …` message pg2lake ends a failure with: stderr from its last line that
/// starts with `error: `, to the end; empty when there is none. Not just the last line:
/// an S3 error quotes the store's XML answer, which can hold a line break.
fn error_message(out: &Output) -> String {
    let stderr = stderr(out);
    let start = if stderr.starts_with("error: ") {
        Some(0)
    } else {
        stderr.rfind("\nerror: ").map(|i| i + 1)
    };
    start.map_or_else(String::new, |i| stderr[i..].trim_end().to_owned())
}

/// `pg2lake <args…> --config <config> --log-format json` with every target logging at
/// `trace` (so dependencies' own logs, the S3 and Postgres clients', are searched too).
///
/// The output goes to files rather than pipes: a `trace` log is far larger than a pipe's
/// buffer, and `support::service::run_command` reads its pipes only once the process
/// has exited, so the process would block on a full pipe.
fn run_traced(what: &str, args: &[&str], config: &ConfigFile, envs: &[(String, String)]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let file = |path: &Path| std::fs::File::create(path).expect("output file");
    let mut child = Command::new(support::pg2lake_bin())
        .args(args)
        .arg("--config")
        .arg(config.path())
        .args(["--log-format", "json"])
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(file(&stdout_path))
        .stderr(file(&stderr_path))
        .spawn()
        .expect("start pg2lake");
    let deadline = Instant::now() + COMMAND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!(
                "{what}: pg2lake {args:?} did not finish within {COMMAND:?}; stderr tail:\n{}",
                tail(&stderr, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&stdout_path).expect("read stdout"),
        stderr: std::fs::read(&stderr_path).expect("read stderr"),
    }
}

/// [`run_traced`]; panics if stdout or stderr shows a secret, else returns the output.
fn run_clean(what: &str, args: &[&str], config: &ConfigFile, envs: &[(String, String)]) -> Output {
    let out = run_traced(what, args, config, envs);
    assert_clean(&format!("{what}: stdout"), &stdout(&out));
    assert_clean(&format!("{what}: stderr"), &stderr(&out));
    out
}

/// [`run_clean`] of a command that must succeed.
fn run_ok(what: &str, args: &[&str], config: &ConfigFile, envs: &[(String, String)]) -> Output {
    let out = run_clean(what, args, config, envs);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr tail:\n{}",
        out.status,
        stdout(&out),
        tail(&stderr(&out), 20)
    );
    out
}

/// [`run_clean`] of a command that must fail with exit code `code` and an `error: …`
/// message; each of `needles` is named by that message or, for `check`, whose failures
/// are the ✗ lines of its report, by stdout. Returns the error message.
fn run_fails(
    what: &str,
    args: &[&str],
    config: &ConfigFile,
    envs: &[(String, String)],
    code: i32,
    needles: &[&str],
) -> String {
    let out = run_clean(what, args, config, envs);
    let message = error_message(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code; stdout:\n{}\nstderr tail:\n{}",
        stdout(&out),
        tail(&stderr(&out), 20)
    );
    assert!(
        !message.is_empty(),
        "{what}: no error line; stderr tail:\n{}",
        tail(&stderr(&out), 5)
    );
    let report = if args.first() == Some(&"check") {
        format!("{}{message}", stdout(&out))
    } else {
        message.clone()
    };
    for needle in needles {
        assert!(
            report.contains(needle),
            "{what}: {report:?} should name {needle:?}; stderr tail:\n{}",
            tail(&stderr(&out), 5)
        );
    }
    message
}

/// Runs each of `commands` with a password the server refuses: each fails with exit code
/// 1 and an error naming the role and no secret, and the server's log shows that it was
/// the password it refused, once more per command.
fn run_refused(
    what: &str,
    pg: &PgServer,
    role: &str,
    commands: &[&str],
    config: &ConfigFile,
    envs: &[(String, String)],
) {
    let refusal = format!("password authentication failed for user \"{role}\"");
    for command in commands {
        let what = format!("{what}: {command} with a wrong password");
        let before = pg.log().matches(&refusal).count();
        run_fails(&what, &[command], config, envs, 1, &[role]);
        let after = pg.log().matches(&refusal).count();
        assert!(
            after > before,
            "{what}: the server refused the password (no new {refusal:?} in its log)"
        );
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// pg_hba.conf lines making `role` authenticate with `method` over TCP, for normal and
/// replication connections (placed before the harness's trust lines: first match wins).
fn password_auth(role: &str, method: &str) -> Vec<String> {
    vec![
        format!("host all {role} 127.0.0.1/32 {method}"),
        format!("host replication {role} 127.0.0.1/32 {method}"),
    ]
}

/// `url` (the superuser's) for `user`, with `password` (already percent-encoded) in it
/// when given.
fn url_for(pg: &PgServer, url: &str, user: &str, password: Option<&str>) -> String {
    let userinfo = match password {
        Some(password) => format!("{user}:{password}@"),
        None => format!("{user}@"),
    };
    url.replacen(&format!("{}@", pg.superuser()), &userinfo, 1)
}

/// The config of `config_yaml` with `source.password_file` set to `file`.
fn with_password_file(yaml: &str, file: &Path) -> String {
    let replaced = yaml.replacen(
        "source:\n",
        &format!("source:\n  password_file: {}\n", file.display()),
        1,
    );
    assert_ne!(replaced, yaml, "config_yaml no longer starts with source:");
    replaced
}

/// A config that fails before it replicates anything: `source` (its indented keys),
/// table `t`, a local lake, and no HTTP endpoint (so parallel tests never contend for the
/// default port).
fn bare_config(source: &str, lake: &str) -> String {
    format!("source:\n{source}tables: [t]\nlake:\n  url: {lake}\nmetrics:\n  listen: null\n")
}

/// A streaming run: starts `pg2lake run`, makes changes, waits until the slot confirms
/// them (so they are in the lake), scrapes the HTTP endpoint when `metrics_port` is
/// given, runs `status` and `status --json` while streaming, stops it with SIGTERM and
/// checks the whole log.
async fn stream_clean(
    what: &str,
    config: &ConfigFile,
    envs: &[(String, String)],
    db: &tokio_postgres::Client,
    slot: &str,
    metrics_port: Option<u16>,
) {
    let mut service = Service::start(config, envs);
    service.wait_streaming(CATCH_UP);
    // New ids above the highest: several runs share the table.
    db.batch_execute(
        "INSERT INTO orders SELECT top.id + g, 'new ' || g
           FROM (SELECT max(id) AS id FROM orders) top, generate_series(1, 10) g;
         UPDATE orders SET note = 'updated' WHERE id <= 3;
         DELETE FROM orders WHERE id = (SELECT max(id) FROM orders);",
    )
    .await
    .expect("changes while streaming");
    wait_caught_up(db, slot, CATCH_UP).await;
    if let Some(port) = metrics_port {
        let (status, metrics) = get(port, "/metrics");
        assert_eq!(status, 200, "{metrics}");
        assert!(
            sample(
                &metrics,
                "pg2lake_rows_written_total{table=\"public.orders\"}"
            )
            .is_some_and(|rows| rows > 0.0),
            "the run wrote rows, so the metrics are the real ones:\n{metrics}"
        );
        assert_clean(&format!("{what}: /metrics"), &metrics);
        for probe in ["/healthz", "/readyz"] {
            let (_, body) = get(port, probe);
            assert_clean(&format!("{what}: {probe}"), &body);
        }
    }
    let human = run_ok(&format!("{what}: status"), &["status"], config, envs);
    assert!(stdout(&human).contains("active"), "{}", stdout(&human));
    run_ok(
        &format!("{what}: status --json"),
        &["status", "--json"],
        config,
        envs,
    );
    let status = service.stop(STOP);
    let log = service.log();
    assert!(status.success(), "{what}: run exited {status}:\n{log}");
    assert!(log.contains("streaming changes"), "{log}");
    assert_clean(&format!("{what}: run log"), &log);
}

/// The S3 lake with its secret key and session token in the environment, the source
/// password in `PG2LAKE__SOURCE__PASSWORD` (SCRAM): `check`, `snapshot`, a streaming
/// `run` with `/metrics`, `status`, `status --json`; then a wrong password and a bucket
/// that does not exist, each ending in an error line without a secret.
#[tokio::test(flavor = "multi_thread")]
async fn an_env_password_and_s3_keys_stay_out_of_every_output() {
    let s3 = S3Server::start();
    let pg = PgServer::start_with(PgOptions {
        hba: password_auth("app_env", "scram-sha-256"),
        ..Default::default()
    });
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 20) g;
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE app_env LOGIN REPLICATION PASSWORD '{ENV_PASSWORD}';
         GRANT SELECT ON orders TO app_env;
         CREATE PUBLICATION env_pw FOR TABLES IN SCHEMA public
           WITH (publish_via_partition_root = true);"
    ))
    .await
    .expect("table, role and publication");
    let lake_options = format!(
        "  endpoint: {}\n  region: us-east-1\n  allow_http: true\n",
        s3.endpoint
    );
    let port = free_port();
    let config = ConfigFile::new(&with_metrics(
        &config_yaml(
            &url_for(&pg, &url, "app_env", None),
            "env_pw",
            &["public.orders"],
            &s3.uri("lake"),
            &lake_options,
        ),
        port,
        "",
    ));
    let envs = env(&[
        ("PG2LAKE__SOURCE__PASSWORD", ENV_PASSWORD),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_SESSION_TOKEN", S3_SESSION_TOKEN),
    ]);

    let check = run_ok("env: check", &["check"], &config, &envs);
    assert!(
        stdout(&check).contains("is writable with atomic create-only puts"),
        "{}",
        stdout(&check)
    );
    run_ok("env: snapshot", &["snapshot"], &config, &envs);
    stream_clean("env", &config, &envs, &db, "env_pw", Some(port)).await;
    run_ok("env: status after the run", &["status"], &config, &envs);

    // A wrong password: the server refuses it, and neither it nor the right one (which
    // pg2lake never had here) shows.
    let wrong = env(&[
        ("PG2LAKE__SOURCE__PASSWORD", WRONG_PASSWORD),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_SESSION_TOKEN", S3_SESSION_TOKEN),
    ]);
    run_refused(
        "env",
        &pg,
        "app_env",
        &["run", "check", "status", "snapshot"],
        &config,
        &wrong,
    );

    // A lake that is not there: the store's error comes back with the S3 secrets set.
    let missing = ConfigFile::new(&config_yaml(
        &url_for(&pg, &url, "app_env", None),
        "env_pw",
        &["public.orders"],
        "s3://no-such-bucket/lake",
        &lake_options,
    ));
    run_fails(
        "env: run into a missing bucket",
        &["run"],
        &missing,
        &envs,
        1,
        &["no-such-bucket"],
    );
    let check = run_clean(
        "env: check of a missing bucket",
        &["check"],
        &missing,
        &envs,
    );
    assert_eq!(check.status.code(), Some(1), "{}", stdout(&check));
    assert!(
        stdout(&check).contains("no-such-bucket"),
        "{}",
        stdout(&check)
    );
}

/// A password in `source.password_file` (md5) and one inside `source.url`,
/// percent-encoded (SCRAM), with a local lake: `check`, `snapshot`, a streaming `run`,
/// `status`, `status --json`; then a wrong password given each way.
#[tokio::test(flavor = "multi_thread")]
async fn file_and_url_passwords_stay_out_of_every_output() {
    let mut hba = password_auth("app_file", "md5");
    hba.extend(password_auth("app_url", "scram-sha-256"));
    let pg = PgServer::start_with(PgOptions {
        hba,
        ..Default::default()
    });
    let url = pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 20) g;
         SET password_encryption = 'md5';
         CREATE ROLE app_file LOGIN REPLICATION PASSWORD '{FILE_PASSWORD}';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE app_url LOGIN REPLICATION PASSWORD '{URL_PASSWORD}';
         GRANT SELECT ON orders TO app_file, app_url;
         CREATE PUBLICATION file_pw FOR TABLES IN SCHEMA public
           WITH (publish_via_partition_root = true);
         CREATE PUBLICATION url_pw FOR TABLES IN SCHEMA public
           WITH (publish_via_partition_root = true);"
    ))
    .await
    .expect("table, roles and publications");
    let dir = tempfile::tempdir().expect("temp dir");

    // source.password_file, as a mounted Kubernetes secret: with its trailing line break.
    let password_file = dir.path().join("pgpass");
    std::fs::write(&password_file, format!("{FILE_PASSWORD}\n")).expect("password file");
    let file_lake = dir.path().join("file-lake");
    let file_config = ConfigFile::new(&with_password_file(
        &config_yaml(
            &url_for(&pg, &url, "app_file", None),
            "file_pw",
            &["public.orders"],
            &file_lake.display().to_string(),
            "",
        ),
        &password_file,
    ));
    run_ok("file: check", &["check"], &file_config, &[]);
    stream_clean("file", &file_config, &[], &db, "file_pw", None).await;
    std::fs::write(&password_file, format!("{WRONG_PASSWORD}\n")).expect("password file");
    run_refused(
        "file",
        &pg,
        "app_file",
        &["run", "check", "status"],
        &file_config,
        &[],
    );

    // source.url with the password in it.
    let url_lake = dir.path().join("url-lake");
    let url_config = ConfigFile::new(&config_yaml(
        &url_for(&pg, &url, "app_url", Some(URL_PASSWORD_ENCODED)),
        "url_pw",
        &["public.orders"],
        &url_lake.display().to_string(),
        "",
    ));
    run_ok("url: check", &["check"], &url_config, &[]);
    run_ok("url: snapshot", &["snapshot"], &url_config, &[]);
    stream_clean("url", &url_config, &[], &db, "url_pw", None).await;
    let wrong_url_config = ConfigFile::new(&config_yaml(
        &url_for(&pg, &url, "app_url", Some(WRONG_PASSWORD)),
        "url_pw",
        &["public.orders"],
        &url_lake.display().to_string(),
        "",
    ));
    run_refused(
        "url",
        &pg,
        "app_url",
        &["run", "check", "status"],
        &wrong_url_config,
        &[],
    );
}

/// No server needed: the `Debug` form of the config and of the connection settings built
/// from it, for each way of giving the password; and `check` and `run` of configs
/// refused before any connection (or at a closed port) while a password is set.
#[test]
fn debug_forms_and_config_errors_hide_passwords() {
    for secret in SECRETS {
        assert!(secret.to_lowercase().contains(MARKER), "{secret}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("pgpass");
    std::fs::write(&password_file, format!("{FILE_PASSWORD}\n")).expect("password file");
    let plain = "source:\n  url: postgres://app@db.example.com:5432/app\ntables: [public.t]\n";
    let cases = [
        (
            "env",
            plain.to_owned(),
            env(&[("PG2LAKE__SOURCE__PASSWORD", ENV_PASSWORD)]),
            ENV_PASSWORD,
        ),
        (
            "yaml",
            plain.replacen(
                "source:\n",
                &format!("source:\n  password: {ENV_PASSWORD}\n"),
                1,
            ),
            Vec::new(),
            ENV_PASSWORD,
        ),
        (
            "file",
            with_password_file(plain, &password_file),
            Vec::new(),
            FILE_PASSWORD,
        ),
        (
            "url",
            plain.replacen("app@", &format!("app:{URL_PASSWORD_ENCODED}@"), 1),
            Vec::new(),
            URL_PASSWORD,
        ),
    ];
    for (how, yaml, envs, password) in cases {
        let config = Config::from_yaml_str(&yaml, &envs).expect("config");
        let params = pg2lake::pg::connect::params(&config).expect("connection settings");
        assert_eq!(
            params.password.as_deref(),
            Some(password),
            "{how}: the password reaches the connection settings"
        );
        assert_clean(&format!("{how}: Config Debug"), &format!("{config:?}"));
        assert_clean(&format!("{how}: Config Debug"), &format!("{config:#?}"));
        assert_clean(
            &format!("{how}: ConnectParams Debug"),
            &format!("{params:?}"),
        );
        assert_clean(
            &format!("{how}: ConnectParams Debug"),
            &format!("{params:#?}"),
        );
        assert_clean(
            &format!("{how}: redacted url"),
            &config.source.redacted_url(),
        );
    }

    // Refused configs and a closed port, with the password given each way.
    let closed = free_port();
    let lake = dir.path().join("lake").display().to_string();
    let refused = [
        (
            "a url that is not postgres://",
            bare_config(
                &format!("  url: mysql://app:{URL_PASSWORD_ENCODED}@127.0.0.1/app\n"),
                &lake,
            ),
            Vec::new(),
            2,
            "mysql://",
        ),
        (
            "a url with a bad port",
            bare_config(
                &format!("  url: postgres://app:{URL_PASSWORD_ENCODED}@127.0.0.1:notaport/app\n"),
                &lake,
            ),
            Vec::new(),
            1,
            "notaport",
        ),
        (
            "a closed port",
            bare_config(
                &format!("  url: postgres://app:{URL_PASSWORD_ENCODED}@127.0.0.1:{closed}/app\n"),
                &lake,
            ),
            Vec::new(),
            1,
            "could not connect",
        ),
        (
            "password and password_file both set",
            with_password_file(
                &bare_config(
                    &format!(
                        "  url: postgres://app@127.0.0.1:{closed}/app\n  password: {ENV_PASSWORD}\n"
                    ),
                    &lake,
                ),
                &password_file,
            ),
            Vec::new(),
            2,
            "password_file",
        ),
        (
            "an unknown key with the password in the environment",
            bare_config(
                &format!("  url: postgres://app@127.0.0.1:{closed}/app\n  passwort: x\n"),
                &lake,
            ),
            env(&[("PG2LAKE__SOURCE__PASSWORD", ENV_PASSWORD)]),
            2,
            "passwort",
        ),
    ];
    for (what, yaml, envs, code, needle) in refused {
        let config = ConfigFile::new(&yaml);
        for command in ["check", "run"] {
            let what = format!("{what}: {command}");
            run_fails(&what, &[command], &config, &envs, code, &[needle]);
        }
    }
}

/// A password written into `source.url` without percent-encoding its `/`, `?` or `#`
/// (common in generated passwords): the URL cannot be read as meant, and the error that
/// says so must not quote the password's text. No server needed: a closed port.
#[test]
fn an_unescaped_url_password_stays_out_of_url_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lake = dir.path().join("lake").display().to_string();
    let closed = free_port();
    // Every case and command runs, so one failure lists every leak.
    let mut shown = Vec::new();
    for password in UNESCAPED_URL_PASSWORDS {
        assert!(password.to_lowercase().contains(MARKER), "{password}");
        let config = ConfigFile::new(&bare_config(
            &format!("  url: postgres://app:{password}@127.0.0.1:{closed}/app\n"),
            &lake,
        ));
        for command in ["check", "run"] {
            let what = format!("url password {password:?} unescaped: {command}");
            let out = run_traced(&what, &[command], &config, &[]);
            assert!(
                !out.status.success(),
                "{what}: cannot succeed at a closed port"
            );
            for (stream, text) in [("stdout", stdout(&out)), ("stderr", stderr(&out))] {
                shown.extend(
                    leaks(&text)
                        .into_iter()
                        .map(|l| format!("{what}: {stream}: {l}")),
                );
            }
        }
    }
    assert!(
        shown.is_empty(),
        "{} line(s) show a secret:\n{}",
        shown.len(),
        shown.join("\n")
    );
}
