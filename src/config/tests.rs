//! Tests of loading, overriding and validating the configuration.
use super::*;

const MINIMAL: &str =
    "source:\n  url: postgres://replicator@db:5432/app\ntables: [public.orders]\n";
const EXAMPLE: &str = include_str!("../../config/pg2lake.example.yaml");

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn with_env(vars: &[(&str, &str)]) -> Config {
    Config::from_yaml_str(MINIMAL, &env(vars)).unwrap()
}

fn error(yaml: &str, vars: &[(&str, &str)]) -> String {
    Config::from_yaml_str(yaml, &env(vars))
        .unwrap_err()
        .to_string()
}

#[test]
fn defaults() {
    let c = Config::from_yaml_str(MINIMAL, &[]).unwrap();
    assert_eq!(c.source.url, "postgres://replicator@db:5432/app");
    assert_eq!(c.source.password, None);
    assert_eq!(c.source.sslmode, SslMode::Prefer);
    assert_eq!(c.source.slot, "pg2lake");
    assert_eq!(c.source.publication, "pg2lake");
    assert_eq!(c.source.status_interval, Duration::from_secs(10));
    assert_eq!(c.source.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(c.source.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.source.reconnect_max_backoff, Duration::from_secs(30));
    assert_eq!(c.lake, LakeConfig::default());
    assert_eq!(c.lake.url, "./lake");
    assert_eq!(c.lake.checkpoint_interval, 100);
    assert_eq!(c.lake.log_retention, Duration::from_secs(30 * 86_400));
    assert!(!c.lake.allow_http);
    assert_eq!(c.flush.max_rows, 100_000);
    assert_eq!(c.flush.max_bytes, ByteSize(64 * 1024 * 1024));
    assert_eq!(c.flush.max_interval, Duration::from_secs(10));
    assert_eq!(c.memory_budget, ByteSize(512 * 1024 * 1024));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.metrics.listen, Some("0.0.0.0:9187".parse().unwrap()));
    assert_eq!(c.schema.on_type_change, TypeChangePolicy::NewColumn);
    assert_eq!(c.schema.on_type_change, DEFAULT_ON_TYPE_CHANGE);
    let expected = Config {
        source: SourceConfig {
            url: c.source.url.clone(),
            ..SourceConfig::default()
        },
        tables: vec!["public.orders".to_owned()],
        ..Config::default()
    };
    assert_eq!(c, expected);
}

#[test]
fn empty_sections_mean_defaults() {
    let c = Config::from_yaml_str(&format!("{MINIMAL}flush:\nlake:\nmetrics:\n"), &[]).unwrap();
    assert_eq!(c.flush, FlushConfig::default());
    assert_eq!(c.metrics, MetricsConfig::default());
}

#[test]
fn full_config() {
    let yaml = r#"
source:
  url: postgresql://replicator@db.internal:6432/shop?application_name=x
  password: "s3cret"
  sslmode: verify-full
  sslrootcert: /etc/ssl/ca.pem
  slot: shop_lake
  publication: Shop Pub
  status_interval: 500ms
  heartbeat_interval: 1min
  connect_timeout: 3s
  reconnect_max_backoff: 2m
tables: [public.orders, "sales.*", customers, 'public."Mixed Case"']
lake:
  url: s3://bucket/prefix
  endpoint: http://minio:9000
  region: eu-west-1
  allow_http: true
  checkpoint_interval: 10
  log_retention: 7 days
flush:
  max_rows: 5000
  max_bytes: 8 MiB
  max_interval: 2s
memory_budget: 1GiB
shutdown_timeout: 1m 30s
metrics:
  listen: 127.0.0.1:9000
"#;
    let c = Config::from_yaml_str(yaml, &[]).unwrap();
    assert_eq!(
        c.source.password.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert_eq!(c.source.sslmode, SslMode::VerifyFull);
    assert_eq!(c.source.sslrootcert, Some(PathBuf::from("/etc/ssl/ca.pem")));
    assert_eq!(c.source.slot, "shop_lake");
    assert_eq!(c.source.publication, "Shop Pub");
    assert_eq!(c.source.status_interval, Duration::from_millis(500));
    assert_eq!(c.source.heartbeat_interval, Duration::from_secs(60));
    assert_eq!(c.source.reconnect_max_backoff, Duration::from_secs(120));
    assert_eq!(c.lake.url, "s3://bucket/prefix");
    assert_eq!(c.lake.endpoint.as_deref(), Some("http://minio:9000"));
    assert_eq!(c.lake.region.as_deref(), Some("eu-west-1"));
    assert!(c.lake.allow_http);
    assert_eq!(c.lake.checkpoint_interval, 10);
    assert_eq!(c.lake.log_retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.flush.max_rows, 5000);
    assert_eq!(c.flush.max_bytes, ByteSize::mib(8));
    assert_eq!(c.flush.max_interval, Duration::from_secs(2));
    assert_eq!(c.memory_budget, ByteSize::gib(1));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(90));
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9000".parse().unwrap()));
    assert_eq!(
        c.table_patterns(),
        vec![
            TablePattern::Exact(TableName::new("public", "orders")),
            TablePattern::AllInSchema("sales".to_owned()),
            TablePattern::Exact(TableName::new("public", "customers")),
            TablePattern::Exact(TableName::new("public", "Mixed Case")),
        ]
    );
}

#[test]
fn example_file_loads_and_validates() {
    let c = Config::from_yaml_str(EXAMPLE, &[]).unwrap();
    assert_eq!(
        c.flush,
        FlushConfig::default(),
        "the example shows the defaults"
    );
    assert_eq!(c.lake, LakeConfig::default());
    assert_eq!(c.memory_budget, DEFAULT_MEMORY_BUDGET);
    assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
    assert_eq!(c.metrics, MetricsConfig::default());
}

/// Every key path of `value`, dotted.
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Mapping(map) = value {
        for (k, v) in map {
            let k = k.as_str().unwrap();
            let path = if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            };
            key_paths(v, &path, out);
            out.push(path);
        }
    }
}

#[test]
fn example_file_documents_every_key_and_its_variable() {
    // Optional keys appear commented out as `#key: value`; uncomment them.
    let uncommented: String = EXAMPLE
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            match trimmed.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with(|c: char| c.is_ascii_lowercase()) && rest.contains(':') =>
                {
                    format!("{indent}{rest}\n")
                }
                _ => format!("{line}\n"),
            }
        })
        .collect();
    let documented: Value = serde_yaml_ng::from_str(&uncommented).unwrap();
    // deny_unknown_fields: no stale key in the example.
    serde_yaml_ng::from_value::<Config>(documented.clone()).unwrap();
    let mut documented_keys = Vec::new();
    key_paths(&documented, "", &mut documented_keys);
    let mut all_keys = Vec::new();
    key_paths(
        &serde_yaml_ng::to_value(Config::default()).unwrap(),
        "",
        &mut all_keys,
    );
    for key in &all_keys {
        assert!(documented_keys.contains(key), "example lacks {key}");
        let var = env_var_name(key);
        assert!(EXAMPLE.contains(&var), "example does not name {var}");
    }
}

#[test]
fn env_overrides_every_kind() {
    let c = with_env(&[
        ("PG2LAKE__SOURCE__URL", "postgres://other@h/db"),
        ("PG2LAKE__SOURCE__PASSWORD", "hunter2"),
        ("PG2LAKE__SOURCE__SSLMODE", "verify-ca"),
        ("PG2LAKE__SOURCE__SSLROOTCERT", "/ca.pem"),
        ("PG2LAKE__SOURCE__STATUS_INTERVAL", "500ms"),
        ("PG2LAKE__TABLES", "public.a, public.b,,"),
        ("PG2LAKE__LAKE__URL", "s3://b/p"),
        ("PG2LAKE__LAKE__ALLOW_HTTP", "true"),
        ("PG2LAKE__LAKE__CHECKPOINT_INTERVAL", "7"),
        ("PG2LAKE__LAKE__LOG_RETENTION", "2 days"),
        ("PG2LAKE__FLUSH__MAX_ROWS", "5000"),
        ("PG2LAKE__FLUSH__MAX_BYTES", "1000"),
        ("PG2LAKE__MEMORY_BUDGET", "1GiB"),
        ("PG2LAKE__SHUTDOWN_TIMEOUT", "5s"),
        ("PG2LAKE__METRICS__LISTEN", ":9999"),
        ("PG2LAKE_CONFIG", "/not/an/override"),
        ("PATH", "/usr/bin"),
    ]);
    assert_eq!(c.source.url, "postgres://other@h/db");
    assert_eq!(
        c.source.password.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    assert_eq!(c.source.sslmode, SslMode::VerifyCa);
    assert_eq!(c.source.sslrootcert, Some(PathBuf::from("/ca.pem")));
    assert_eq!(c.source.status_interval, Duration::from_millis(500));
    assert_eq!(c.tables, ["public.a", "public.b"]);
    assert_eq!(c.lake.url, "s3://b/p");
    assert!(c.lake.allow_http);
    assert_eq!(c.lake.checkpoint_interval, 7);
    assert_eq!(c.lake.log_retention, Duration::from_secs(2 * 86_400));
    assert_eq!(c.flush.max_rows, 5000);
    assert_eq!(c.flush.max_bytes, ByteSize(1000));
    assert_eq!(c.memory_budget, ByteSize::gib(1));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.metrics.listen, Some("0.0.0.0:9999".parse().unwrap()));
}

#[test]
fn env_strings_are_kept_exactly() {
    for password in [
        "123456",
        "007",
        "true",
        "a #b",
        "- x",
        "key: value",
        "[1]",
        "1e3",
        " padded ",
    ] {
        let c = with_env(&[("PG2LAKE__SOURCE__PASSWORD", password)]);
        assert_eq!(
            c.source.password.as_ref().map(Secret::expose),
            Some(password),
            "{password:?}"
        );
    }
    assert_eq!(
        with_env(&[("PG2LAKE__SOURCE__SLOT", "123")]).source.slot,
        "123"
    );
}

#[test]
fn env_null_and_off_unset_optional_keys() {
    let yaml = format!("{MINIMAL}lake:\n  region: eu-west-1\n");
    let c = Config::from_yaml_str(&yaml, &env(&[("PG2LAKE__LAKE__REGION", "")])).unwrap();
    assert_eq!(c.lake.region, None);
    for off in ["off", "null", ""] {
        assert_eq!(
            with_env(&[("PG2LAKE__METRICS__LISTEN", off)])
                .metrics
                .listen,
            None,
            "{off:?}"
        );
    }
}

#[test]
fn env_wins_over_file_and_creates_sections() {
    let yaml = format!("{MINIMAL}flush:\n  max_rows: 10\n");
    let c = Config::from_yaml_str(&yaml, &env(&[("PG2LAKE__FLUSH__MAX_ROWS", "20")])).unwrap();
    assert_eq!(c.flush.max_rows, 20);
    let c = Config::from_yaml_str(
        "tables: [t]\n",
        &env(&[
            ("PG2LAKE__SOURCE__URL", "postgres://u@h/d"),
            ("pg2lake__flush__max_rows", "3"),
        ]),
    )
    .unwrap();
    assert_eq!(c.source.url, "postgres://u@h/d");
    assert_eq!(
        c.flush.max_rows, 100_000,
        "only upper-case PG2LAKE__ names are read"
    );
}

#[test]
fn unknown_key_in_file_names_path_and_choices() {
    let yaml = "source:\n  url: postgres://localhost/db\ntables: [public.t]\nlake:\n  urll: ./x\n";
    let err = Config::from_yaml_str(yaml, &[]).unwrap_err();
    assert_eq!(err.key(), Some("lake.urll"));
    assert_eq!(
        err.to_string(),
        "config error at line 5: unknown key lake.urll (expected one of: url, endpoint, region, allow_http, checkpoint_interval, log_retention, retention, compaction)"
    );
    let top = error(&format!("{MINIMAL}sorce: {{}}\n"), &[]);
    assert!(
        top.contains("unknown key sorce (expected one of: source, tables, lake,"),
        "{top}"
    );
}

#[test]
fn unknown_key_in_env_names_the_variable() {
    let err = error(MINIMAL, &[("PG2LAKE__LAKE__URLL", "./x")]);
    assert!(
        err.contains("unknown key lake.urll (expected one of: url,"),
        "{err}"
    );
    assert!(err.ends_with("(set by PG2LAKE__LAKE__URLL)"), "{err}");
    let err = error(MINIMAL, &[("PG2LAKE__NOPE", "1")]);
    assert!(
        err.contains("unknown key nope") && err.contains("PG2LAKE__NOPE"),
        "{err}"
    );
}

#[test]
fn malformed_env_names_are_errors() {
    let err = error(MINIMAL, &[("PG2LAKE__TABLES__X", "1")]);
    assert!(
        err.contains("PG2LAKE__TABLES__X: tables is not a section"),
        "{err}"
    );
    let err = error(MINIMAL, &[("PG2LAKE__FLUSH____MAX_ROWS", "1")]);
    assert!(
        err.contains("PG2LAKE__FLUSH____MAX_ROWS") && err.contains("PG2LAKE__SECTION__KEY"),
        "{err}"
    );
}

#[test]
fn wrong_types_name_the_key() {
    let err = error(&format!("{MINIMAL}flush:\n  max_rows: many\n"), &[]);
    assert!(
        err.starts_with("config error at line 5: flush.max_rows: invalid type"),
        "{err}"
    );
    let err = error(MINIMAL, &[("PG2LAKE__FLUSH__MAX_ROWS", "many")]);
    assert!(
        err.contains("flush.max_rows: invalid type")
            && err.ends_with("(set by PG2LAKE__FLUSH__MAX_ROWS)"),
        "{err}"
    );
    let err = error(&format!("{MINIMAL}memory_budget: 1 parsec\n"), &[]);
    assert!(
        err.contains("memory_budget: \"1 parsec\" is not a size: unknown unit"),
        "{err}"
    );
    let err = error(&format!("{MINIMAL}shutdown_timeout: 10\n"), &[]);
    assert!(
        err.starts_with("config error at line 4: shutdown_timeout: \"10\" is not a duration"),
        "{err}"
    );
    let err = error(&format!("{MINIMAL}flush:\n  max_interval: soon\n"), &[]);
    assert!(
        err.starts_with("config error at line 5: flush.max_interval: \"soon\" is not a duration"),
        "{err}"
    );
    let err = error(&format!("{MINIMAL}metrics:\n  listen: nowhere\n"), &[]);
    assert!(
        err.starts_with(
            "config error at line 5: metrics.listen: \"nowhere\" is not a listen address"
        ),
        "{err}"
    );
    let err = error(&format!("{MINIMAL}lake:\n  allow_http: maybe\n"), &[]);
    assert!(err.contains("lake.allow_http: invalid type"), "{err}");
    let err = error(MINIMAL, &[("PG2LAKE__SOURCE__SSLMODE", "sometimes")]);
    assert!(
            err.contains("source.sslmode: unknown value \"sometimes\" (expected one of: disable, prefer, require, verify-ca, verify-full)"),
            "{err}"
        );
}

#[test]
fn file_errors_keep_their_line_when_env_is_set() {
    let yaml = format!("{MINIMAL}flush:\n  max_rows: many\n");
    let err = error(&yaml, &[("PG2LAKE__LAKE__URL", "./x")]);
    assert!(
        err.starts_with("config error at line 5: flush.max_rows"),
        "{err}"
    );
}

#[test]
fn syntax_errors_and_non_mappings() {
    let err = error("source: [\n", &[]);
    assert!(
        err.starts_with("config error at line 2: invalid YAML: "),
        "{err}"
    );
    let err = error("- a\n- b\n", &[]);
    assert!(err.contains("the top level must be a mapping"), "{err}");
}

#[test]
fn each_validation_rule() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "source:\n  slot: x\ntables: [t]\n",
            "source.url",
            "source.url is required",
        ),
        (
            "source:\n  url: mysql://h/db\ntables: [t]\n",
            "source.url",
            "must be a postgres:// or postgresql:// URL",
        ),
        (
            "source:\n  url: postgres://h/db\n  password: x\n  password_file: /p\ntables: [t]\n",
            "source.password_file",
            "source.password and source.password_file are both set",
        ),
        (
            "source:\n  url: postgres://h/db\n  slot: Bad-Name\ntables: [t]\n",
            "source.slot",
            "source.slot \"Bad-Name\" must be lowercase letters, digits and underscores (at most 63)",
        ),
        (
            "source:\n  url: postgres://h/db\n  slot: ''\ntables: [t]\n",
            "source.slot",
            "must be lowercase",
        ),
        (
            "source:\n  url: postgres://h/db\n  publication: ''\ntables: [t]\n",
            "source.publication",
            "must not be empty",
        ),
        (
            "source:\n  url: postgres://h/db\n  status_interval: 0s\ntables: [t]\n",
            "source.status_interval",
            "greater than 0",
        ),
        (
            "source:\n  url: postgres://h/db\n  heartbeat_interval: 0s\ntables: [t]\n",
            "source.heartbeat_interval",
            "greater than 0",
        ),
        (
            "source:\n  url: postgres://h/db\n  connect_timeout: 0s\ntables: [t]\n",
            "source.connect_timeout",
            "greater than 0",
        ),
        (
            "source:\n  url: postgres://h/db\n  reconnect_max_backoff: 0s\ntables: [t]\n",
            "source.reconnect_max_backoff",
            "greater than 0",
        ),
        (
            "source:\n  url: postgres://h/db\n",
            "tables",
            "tables must list at least one table",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: ['a.b.c']\n",
            "tables",
            "tables[0] \"a.b.c\" is not a table name",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t, 'bad-name']\n",
            "tables",
            "tables[1] \"bad-name\"",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  url: gs://b/p\n",
            "lake.url",
            "unsupported scheme gs://",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  url: ''\n",
            "lake.url",
            "is empty",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  url: s3://\n",
            "lake.url",
            "has no bucket",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  url: file://rel\n",
            "lake.url",
            "absolute path",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  url: s3://b\n  endpoint: minio:9000\n",
            "lake.endpoint",
            "must start with https:// or http://",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  url: s3://b\n  endpoint: http://minio:9000\n",
            "lake.endpoint",
            "set lake.allow_http: true",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  checkpoint_interval: 0\n",
            "lake.checkpoint_interval",
            "lake.checkpoint_interval must be at least 1",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  log_retention: 0s\n",
            "lake.log_retention",
            "greater than 0",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nflush:\n  max_rows: 0\n",
            "flush.max_rows",
            "flush.max_rows must be at least 1",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nflush:\n  max_bytes: 0\n",
            "flush.max_bytes",
            "at least 1 byte",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nflush:\n  max_interval: 0s\n",
            "flush.max_interval",
            "greater than 0",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nflush:\n  max_bytes: 64MiB\nmemory_budget: 200MiB\n",
            "memory_budget",
            "memory_budget (200MiB) must be at least 4 x flush.max_bytes (64MiB) = 256MiB",
        ),
        (
            "source:\n  url: postgres://h/db\ntables: [t]\nshutdown_timeout: 0s\n",
            "shutdown_timeout",
            "greater than 0",
        ),
    ];
    for (yaml, field, needle) in cases {
        let err = Config::from_yaml_str(yaml, &[]).unwrap_err();
        assert_eq!(err.key(), Some(*field), "{yaml}");
        let text = err.to_string();
        assert!(text.starts_with("config error: "), "{text}");
        assert!(text.contains(needle), "{text:?} should contain {needle:?}");
    }
    let err = error(
        "source:\n  url: postgres://h/db\ntables: [t]\n",
        &[("PG2LAKE__FLUSH__MAX_ROWS", "0")],
    );
    assert!(
        err.ends_with("must be at least 1 (e.g. 100000) (set by PG2LAKE__FLUSH__MAX_ROWS)"),
        "{err}"
    );
    let ok = "source:\n  url: postgres://h/db\ntables: [t]\nlake:\n  url: s3://b\n  endpoint: http://m:9000\n  allow_http: true\n";
    Config::from_yaml_str(ok, &[]).unwrap();
    for url in [
        "./lake",
        "/var/lake",
        "lake",
        "file:///var/lake",
        "s3://bucket",
        "S3://bucket/a/b",
    ] {
        assert_eq!(lake_url_problem(url), None, "{url}");
    }
}

#[test]
fn byte_sizes() {
    let cases = [
        ("1000", 1000),
        ("64MiB", 64 << 20),
        ("512 MiB", 512 << 20),
        ("1GiB", 1 << 30),
        ("100kB", 100_000),
        ("100KB", 100_000),
        ("10MB", 10_000_000),
        ("2TB", 2_000_000_000_000),
        ("1.5GiB", 3 << 29),
        ("0.5KiB", 512),
        ("4Ki", 4096),
        ("7B", 7),
        (" 3 mib ", 3 << 20),
    ];
    for (text, bytes) in cases {
        assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
    }
    for bad in [
        "",
        "MiB",
        "1.2.3MiB",
        "-1",
        "1 parsec",
        "0.5B",
        "99999999999TiB",
        "1e3",
    ] {
        assert!(bad.parse::<ByteSize>().is_err(), "{bad:?}");
    }
    assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
    assert_eq!(ByteSize::gib(1).to_string(), "1GiB");
    assert_eq!(ByteSize(0).to_string(), "0B");
    assert_eq!(ByteSize(1000).to_string(), "1000B");
    assert_eq!(ByteSize(1536).to_string(), "1.50KiB");
    assert_eq!(ByteSize(10_000_000).to_string(), "9.54MiB");
    let from_int: ByteSize = serde_yaml_ng::from_str("4096").unwrap();
    assert_eq!(from_int, ByteSize::kib(4));
    assert!(serde_yaml_ng::from_str::<ByteSize>("-5").is_err());
    assert_eq!(
        serde_yaml_ng::to_string(&ByteSize(1000)).unwrap().trim(),
        "1000"
    );
    assert_eq!(
        serde_yaml_ng::to_string(&ByteSize::mib(3)).unwrap().trim(),
        "3MiB"
    );
}

#[test]
fn durations_read_like_humans_write_them() {
    for (text, secs) in [
        ("30 days", 30 * 86_400),
        ("30days", 30 * 86_400),
        ("1h 30m", 5400),
        ("10s", 10),
    ] {
        let c = with_env(&[("PG2LAKE__SHUTDOWN_TIMEOUT", text)]);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(secs), "{text}");
    }
}

#[test]
fn metrics_listen_forms() {
    let addr = |s: &str| parse_listen(Some(s));
    assert_eq!(addr("0.0.0.0:9187"), Ok(Some(DEFAULT_METRICS_LISTEN)));
    assert_eq!(addr(":9187"), Ok(Some(DEFAULT_METRICS_LISTEN)));
    assert_eq!(addr("9187"), Ok(Some(DEFAULT_METRICS_LISTEN)));
    assert_eq!(addr("[::1]:80"), Ok(Some("[::1]:80".parse().unwrap())));
    assert_eq!(addr("OFF"), Ok(None));
    assert_eq!(parse_listen(None), Ok(None));
    assert!(addr("localhost:x").is_err());
    let yaml = format!("{MINIMAL}metrics:\n  listen: null\n");
    assert_eq!(
        Config::from_yaml_str(&yaml, &[]).unwrap().metrics.listen,
        None
    );
    let yaml = format!("{MINIMAL}metrics:\n  listen: off\n");
    assert_eq!(
        Config::from_yaml_str(&yaml, &[]).unwrap().metrics.listen,
        None
    );
}

#[test]
fn secrets_never_print() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret}"), "***");
    assert_eq!(format!("{secret:?}"), "***");
    assert_eq!(secret.expose(), "hunter2");
    let yaml = "source:\n  url: postgres://u:urlpass%21@h/db\n  password: hunter2\ntables: [t]\n";
    let c = Config::from_yaml_str(yaml, &[]).unwrap();
    for shown in [
        format!("{c:?}"),
        format!("{c:#?}"),
        serde_yaml_ng::to_string(&c).unwrap(),
    ] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("urlpass"),
            "{shown}"
        );
        assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
    }
    let err = error("source:\n  url: mysql://u:urlpass@h/db\ntables: [t]\n", &[]);
    assert!(
        !err.contains("urlpass") && err.contains("mysql://u:***@h/db"),
        "{err}"
    );
}

#[test]
fn url_redaction() {
    assert_eq!(
        redact_url("postgres://u:p@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(redact_url("postgres://h:5432/db"), "postgres://h:5432/db");
    assert_eq!(
        redact_url("postgres://u:p#a/s@h/db"),
        "postgres://u:***@h/db"
    );
    assert_eq!(
        redact_url("postgres://u:p@h/db?x=a@b"),
        "postgres://u:***@b"
    );
    assert_eq!(redact_url("not a url"), "not a url");
}

#[test]
fn source_password_precedence() {
    let mut c = with_env(&[]);
    assert_eq!(c.source_password().unwrap(), None);
    c.source.url = "postgres://u:p%40ss%2Fw@h/db".to_owned();
    assert_eq!(c.source_password().unwrap().unwrap().expose(), "p@ss/w");
    let file = std::env::temp_dir().join(format!("pg2lake-config-test-pw-{}", std::process::id()));
    std::fs::write(&file, "from-file\n").unwrap();
    c.source.password_file = Some(file.clone());
    assert_eq!(c.source_password().unwrap().unwrap().expose(), "from-file");
    c.source.password = Some(Secret::new("direct"));
    assert_eq!(c.source_password().unwrap().unwrap().expose(), "direct");
    std::fs::write(&file, "\n").unwrap();
    c.source.password = None;
    assert!(
        c.source_password()
            .unwrap_err()
            .to_string()
            .contains("is empty")
    );
    std::fs::remove_file(&file).unwrap();
    let err = c.source_password().unwrap_err();
    assert!(matches!(err, ConfigError::PasswordFile { .. }));
    assert!(
        err.to_string().contains("cannot read source.password_file"),
        "{err}"
    );
}

#[test]
fn load_reads_the_file_and_names_a_missing_one() {
    let err = Config::load(Path::new("/nonexistent/pg2lake.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/pg2lake.yaml") && text.contains("--config"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("pg2lake-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pg2lake.yaml");
    std::fs::write(&path, MINIMAL).unwrap();
    assert_eq!(Config::load(&path).unwrap().tables, ["public.orders"]);
    std::fs::write(&path, format!("{MINIMAL}flush:\n  max_rowz: 1\n")).unwrap();
    let text = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        text,
        format!(
            "config error in {}:5: unknown key flush.max_rowz (expected one of: max_rows, max_bytes, max_interval)",
            path.display()
        )
    );
    std::fs::write(&path, format!("{MINIMAL}flush:\n  max_rows: 0\n")).unwrap();
    let text = Config::load(&path).unwrap_err().to_string();
    assert!(
        text.starts_with(&format!(
            "config error in {}: flush.max_rows",
            path.display()
        )),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn table_patterns_parse_like_postgres() {
    let exact = |s: &str, n: &str| TablePattern::Exact(TableName::new(s, n));
    let cases = [
        ("public.orders", exact("public", "orders")),
        ("orders", exact("public", "orders")),
        ("Sales.Orders", exact("sales", "orders")),
        ("public.*", TablePattern::AllInSchema("public".to_owned())),
        (
            "\"My Schema\".*",
            TablePattern::AllInSchema("My Schema".to_owned()),
        ),
        ("public.\"My Table\"", exact("public", "My Table")),
        ("\"a\"\"b\".\"c.d\"", exact("a\"b", "c.d")),
        (" public.t_1$ ", exact("public", "t_1$")),
        ("_x.été", exact("_x", "été")),
    ];
    for (text, pattern) in &cases {
        assert_eq!(text.parse::<TablePattern>().as_ref(), Ok(pattern), "{text}");
    }
    for bad in [
        "", "*", "*.t", "a.b.c", "public.", ".t", "\"open", "\"\".t", "my-table", "1abc", "a .b",
    ] {
        assert!(bad.parse::<TablePattern>().is_err(), "{bad:?}");
    }
    assert!(
        format!("public.{}", "x".repeat(64))
            .parse::<TablePattern>()
            .is_err()
    );
    assert!(
        format!("public.{}", "x".repeat(63))
            .parse::<TablePattern>()
            .is_ok()
    );
    let mixed = TableName::new("public", "My \"T\"");
    assert_eq!(mixed.to_string(), "public.\"My \"\"T\"\"\"");
    assert_eq!(mixed.quoted(), "\"public\".\"My \"\"T\"\"\"");
    assert_eq!(TableName::new("public", "nope").to_string(), "public.nope");
    assert_eq!(
        TablePattern::AllInSchema("S".to_owned()).to_string(),
        "\"S\".*"
    );
    // Display reads back to the same pattern.
    for (text, _) in cases {
        let pattern: TablePattern = text.parse().unwrap();
        assert_eq!(pattern.to_string().parse::<TablePattern>(), Ok(pattern));
    }
}

#[test]
fn env_var_names() {
    assert_eq!(env_var_name("flush.max_rows"), "PG2LAKE__FLUSH__MAX_ROWS");
    assert_eq!(env_var_name("memory_budget"), "PG2LAKE__MEMORY_BUDGET");
}

#[test]
fn schema_type_change_policy() {
    let c =
        Config::from_yaml_str(&format!("{MINIMAL}schema:\n  on_type_change: fail\n"), &[]).unwrap();
    assert_eq!(c.schema.on_type_change, TypeChangePolicy::Fail);
    let c = Config::from_yaml_str(
        &format!("{MINIMAL}schema:\n  on_type_change: new_column\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.schema.on_type_change, TypeChangePolicy::NewColumn);
    let c = with_env(&[("PG2LAKE__SCHEMA__ON_TYPE_CHANGE", "fail")]);
    assert_eq!(c.schema.on_type_change, TypeChangePolicy::Fail);
    let err = error(&format!("{MINIMAL}schema:\n  on_type_change: cast\n"), &[]);
    assert!(
        err.contains(
            "schema.on_type_change: unknown value \"cast\" (expected one of: new_column, fail)"
        ),
        "{err}"
    );
    let err = error(&format!("{MINIMAL}schema:\n  on_type_changes: fail\n"), &[]);
    assert!(err.contains("on_type_changes"), "{err}");
}

#[test]
fn column_types_force_decimals_and_name_bad_entries() {
    let base = "source:\n  url: postgres://u@h/db\ntables: [public.orders]\n";
    let config = Config::from_yaml_str(&format!(
        "{base}column_types:\n  public.orders.amount: decimal(20, 4)\n  public.orders.total: DECIMAL(38,38)\n  public.orders.grid: TEXT\n"
    ), &[])
    .expect("valid column_types");
    let types = config.configured_types().unwrap();
    assert_eq!(
        types["public.orders.amount"],
        Conversion::ConfiguredDecimal {
            precision: 20,
            scale: 4
        }
    );
    assert_eq!(types["public.orders.grid"], Conversion::Text);
    assert_eq!(types.len(), 3);
    for (entry, key) in [
        ("orders.amount: decimal(20,4)", "orders.amount"),
        (
            "public.orders.amount: decimal(39,2)",
            "public.orders.amount",
        ),
        ("public.orders.amount: decimal(5,6)", "public.orders.amount"),
        ("public.orders.amount: decimal(0,0)", "public.orders.amount"),
        (
            "public.orders.amount: numeric(10,2)",
            "public.orders.amount",
        ),
        ("public.orders.amount: string", "public.orders.amount"),
        ("public..amount: decimal(10,2)", "public..amount"),
    ] {
        let field = format!("column_types.\"{key}\"");
        let err = Config::from_yaml_str(&format!("{base}column_types:\n  {entry}\n"), &[])
            .expect_err(entry);
        let message = err.to_string();
        assert!(message.contains(&field), "{entry}: {message}");
    }
    let c = with_env(&[(
        "PG2LAKE__COLUMN_TYPES",
        r#"{public.orders.amount: "decimal(20,4)"}"#,
    )]);
    assert_eq!(c.configured_types().unwrap().len(), 1);
}

#[test]
fn tls_defaults() {
    let c = Config::from_yaml_str(MINIMAL, &[]).unwrap();
    assert_eq!(c.source.sslcert, None);
    assert_eq!(c.source.sslkey, None);
    assert_eq!(c.source.channel_binding, ChannelBinding::Prefer);
    assert_eq!(c.source.channel_binding, DEFAULT_CHANNEL_BINDING);
}

/// A client certificate and key pair of (any) readable files.
fn client_files() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("client.crt");
    let key = dir.path().join("client.key");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nsecret-key-bytes\n").unwrap();
    (dir, cert, key)
}

#[test]
fn client_certificate_and_channel_binding_from_file_and_env() {
    let (_dir, cert, key) = client_files();
    let yaml = format!(
        "source:\n  url: postgres://replicator@db:5432/app\n  sslmode: verify-full\n  sslcert: {}\n  sslkey: {}\n  channel_binding: require\ntables: [public.orders]\n",
        cert.display(),
        key.display()
    );
    let c = Config::from_yaml_str(&yaml, &[]).unwrap();
    assert_eq!(c.source.sslcert.as_deref(), Some(cert.as_path()));
    assert_eq!(c.source.sslkey.as_deref(), Some(key.as_path()));
    assert_eq!(c.source.channel_binding, ChannelBinding::Require);
    // The key's path may show, its contents never.
    let shown = format!("{c:?}");
    assert!(shown.contains("client.key"), "{shown}");
    assert!(!shown.contains("secret-key-bytes"), "{shown}");

    let c = with_env(&[
        ("PG2LAKE__SOURCE__SSLCERT", &cert.display().to_string()),
        ("PG2LAKE__SOURCE__SSLKEY", &key.display().to_string()),
        ("PG2LAKE__SOURCE__CHANNEL_BINDING", "disable"),
    ]);
    assert_eq!(c.source.sslcert.as_deref(), Some(cert.as_path()));
    assert_eq!(c.source.sslkey.as_deref(), Some(key.as_path()));
    assert_eq!(c.source.channel_binding, ChannelBinding::Disable);
}

#[test]
fn client_certificate_needs_its_key_and_readable_files() {
    let (dir, cert, key) = client_files();
    let cert_var = ("PG2LAKE__SOURCE__SSLCERT", cert.display().to_string());
    let key_var = ("PG2LAKE__SOURCE__SSLKEY", key.display().to_string());
    let err = error(MINIMAL, &[(cert_var.0, &cert_var.1)]);
    assert!(
        err.contains("source.sslcert is set but source.sslkey is not (fix: "),
        "{err}"
    );
    assert!(!err.contains("set by"), "{err}");
    let err = error(MINIMAL, &[(key_var.0, &key_var.1)]);
    assert!(
        err.contains("source.sslkey is set but source.sslcert is not (fix: "),
        "{err}"
    );

    let missing = dir.path().join("missing.key").display().to_string();
    let err = error(
        MINIMAL,
        &[
            (cert_var.0, &cert_var.1),
            ("PG2LAKE__SOURCE__SSLKEY", &missing),
        ],
    );
    assert!(
        err.starts_with(&format!(
            "config error: cannot read source.sslkey {missing}: no such file or directory (fix: "
        )),
        "{err}"
    );
    assert!(err.ends_with("(set by PG2LAKE__SOURCE__SSLKEY)"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.display().to_string();
    let err = error(
        MINIMAL,
        &[
            ("PG2LAKE__SOURCE__SSLCERT", &empty),
            (key_var.0, &key_var.1),
        ],
    );
    assert!(
        err.contains(&format!(
            "cannot read source.sslcert {empty}: the file is empty"
        )),
        "{err}"
    );
    let folder = dir.path().display().to_string();
    let err = error(
        MINIMAL,
        &[
            (cert_var.0, &cert_var.1),
            ("PG2LAKE__SOURCE__SSLKEY", &folder),
        ],
    );
    assert!(err.contains("cannot read source.sslkey"), "{err}");
    assert!(!err.contains("secret-key-bytes"), "{err}");
}

#[test]
fn channel_binding_rules() {
    let err = error(
        MINIMAL,
        &[
            ("PG2LAKE__SOURCE__CHANNEL_BINDING", "require"),
            ("PG2LAKE__SOURCE__SSLMODE", "disable"),
        ],
    );
    assert!(
        err.contains("source.channel_binding is require but source.sslmode is disable"),
        "{err}"
    );
    assert!(
        err.ends_with("(set by PG2LAKE__SOURCE__CHANNEL_BINDING)"),
        "{err}"
    );
    let err = error(MINIMAL, &[("PG2LAKE__SOURCE__CHANNEL_BINDING", "allow")]);
    assert!(err.contains("channel_binding"), "{err}");
    assert!(err.contains("prefer"), "{err}");
    for value in ["prefer", "require", "disable"] {
        let c = with_env(&[("PG2LAKE__SOURCE__CHANNEL_BINDING", value)]);
        assert_eq!(c.source.channel_binding.as_str(), value);
    }
}

#[test]
fn privacy_policies_parse_from_yaml_and_env_and_the_key_from_env_or_file() {
    let yaml = format!(
        "{MINIMAL}privacy:\n  columns:\n    email: hash\n    public.users.birth: null\n    public.users.phone: mask(4)\n  no_statistics: [public.users.city]\n"
    );
    let c = Config::from_yaml_str(&yaml, &[]).unwrap();
    assert_eq!(
        c.privacy.columns["public.users.birth"], "null",
        "YAML null is the null policy"
    );
    let policies = c.column_policies(|_| None).unwrap();
    assert!(policies.key().is_none());
    assert_eq!(
        policies.policy("public", "users", "phone"),
        Ok(crate::privacy::Policy::Mask(4))
    );
    assert!(!policies.statistics("public", "users", "city"));
    // From the environment: the map and the list.
    let c = Config::from_yaml_str(
        MINIMAL,
        &env(&[
            (
                "PG2LAKE__PRIVACY__COLUMNS",
                "{cpf: hash, \"public.t.notes\": exclude}",
            ),
            ("PG2LAKE__PRIVACY__NO_STATISTICS", "public.t.city"),
        ]),
    )
    .unwrap();
    assert_eq!(c.privacy.columns["public.t.notes"], "exclude");
    assert_eq!(c.privacy.no_statistics, ["public.t.city"]);
    // The key: from the variable it names, or a file without its line break; never shown.
    let key = c
        .column_policies(|name| (name == "PG2LAKE_HASH_KEY").then(|| "k".repeat(32)))
        .unwrap();
    let id = key.key().expect("key").id().to_owned();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{}\n", "k".repeat(32))).unwrap();
    let mut from_file = c.clone();
    from_file.privacy.hash_key_file = Some(file.path().to_path_buf());
    let policies = from_file.column_policies(|_| None).unwrap();
    assert_eq!(policies.key().expect("key").id(), id);
    let short = c
        .column_policies(|_| Some("short".into()))
        .unwrap_err()
        .to_string();
    assert!(
        short.contains("at least 16") && !short.contains("short"),
        "{short}"
    );
    // A bad policy names its entry.
    let bad = error(
        &format!("{MINIMAL}privacy:\n  columns:\n    email: sha1\n"),
        &[],
    );
    assert!(
        bad.contains("privacy.columns.email") && bad.contains("mask(N)"),
        "{bad}"
    );
}
