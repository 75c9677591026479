//! Configuration: a YAML file, `PG2LAKE__SECTION__KEY` environment overrides, defaults
//! as named constants, and validation that names the key, the rule and the fix.
//!
//! ```text
//!  file ──parse──► serde_yaml_ng::Value ──merge PG2LAKE__* variables──► Value
//!       ──deserialize (deny_unknown_fields, defaults)──► Config ──validate()──► Config
//! ```
//!
//! Invariants:
//! - A [`Config`] returned by [`Config::load`] or [`Config::from_yaml_str`] has passed
//!   [`Config::validate`]: every `tables` entry parses, every period is non-zero, names
//!   follow Postgres' rules, the lake URL has a supported scheme.
//! - Every error is one line naming the key path (`flush.max_rows`), the file and line
//!   when known, and the environment variable when the value came from one.
//! - Secrets never print: [`Secret`] shows `***`, and the password inside `source.url`
//!   is masked in `Debug`, `Serialize` and error messages.
//!
//! Environment overrides are merged into the YAML tree *before* deserializing, so that
//! an unknown key in a variable is rejected exactly like one in the file. Values arrive
//! as strings and become the YAML scalar they read as (`5000` a number, `true` a bool,
//! `null` or an empty value unset); `tables` takes a comma list. When overrides apply,
//! the merged tree is written back to YAML and read again, so that string settings
//! accept number-looking values; a plain (unquoted) number-like string in the file such
//! as `0x1F` is then read in its canonical form (`31`), so quote such strings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_yaml_ng::{Mapping, Value};

use crate::privacy::ColumnPolicies;
use crate::schema::{Conversion, MAX_DECIMAL_PRECISION};

pub use crate::schema::TypeChangePolicy;
pub use tables::{TableName, TableNameError, TablePattern};
pub use values::{ByteSize, ByteSizeError, Secret};

mod tables;
mod validate;
mod values;

// The URL rule has unit tests of its own.
#[cfg(test)]
use validate::lake_url_problem;

/// Prefix of environment variables that override keys (`PG2LAKE__FLUSH__MAX_ROWS`).
pub const ENV_PREFIX: &str = "PG2LAKE__";
/// Separator between the sections of an override variable's name.
pub const ENV_SEPARATOR: &str = "__";
/// Default of `memory_budget`.
pub const DEFAULT_MEMORY_BUDGET: ByteSize = ByteSize::mib(512);
/// Default of `shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `source.sslmode`.
pub const DEFAULT_SSLMODE: SslMode = SslMode::Prefer;
/// Default of `source.slot`.
pub const DEFAULT_SLOT: &str = "pg2lake";
/// Default of `source.publication`.
pub const DEFAULT_PUBLICATION: &str = "pg2lake";
/// Default of `source.status_interval`.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Default of `source.heartbeat_interval`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Default of `source.table_discovery_interval`.
pub const DEFAULT_TABLE_DISCOVERY_INTERVAL: Duration = Duration::from_secs(30);
/// Default of `source.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `source.reconnect_max_backoff`.
pub const DEFAULT_RECONNECT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Default of `lake.url`.
pub const DEFAULT_LAKE_URL: &str = "./lake";
/// Default of `lake.checkpoint_interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 100;
/// Default of `lake.log_retention` (30 days, Delta's own default).
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Default of `lake.retention` (a week, Delta's default for removed files).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default of `lake.compaction.interval`.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// Default of `lake.compaction.target_file_size`.
pub const DEFAULT_COMPACTION_TARGET_FILE_SIZE: ByteSize = ByteSize::mib(128);
/// Default of `lake.compaction.min_files`: with a flush every 10 s, today's partition of
/// a busy table is compacted about every five minutes' worth of files.
pub const DEFAULT_COMPACTION_MIN_FILES: usize = 32;
/// Default of `lake.compaction.lease`.
pub const DEFAULT_COMPACTION_LEASE: Duration = Duration::from_secs(2 * 60);
/// Default of `mirror.interval`.
pub const DEFAULT_MIRROR_INTERVAL: Duration = Duration::from_secs(60);
/// Default of `mirror.target_file_rows`.
pub const DEFAULT_MIRROR_FILE_ROWS: usize = 250_000;
/// Default of `mirror.step_rows`.
pub const DEFAULT_MIRROR_STEP_ROWS: u64 = 500_000;
/// Default of `snapshot.parallelism`: two connections overlap one table's copy with
/// another's (or split a large table) without loading a small server much.
pub const DEFAULT_SNAPSHOT_PARALLELISM: usize = 2;
/// Largest `snapshot.parallelism`; each connection is a backend on the source.
pub const MAX_SNAPSHOT_PARALLELISM: usize = 64;
/// Default of `snapshot.range_size`: large enough that a range's COPY start-up is noise.
pub const DEFAULT_SNAPSHOT_RANGE_SIZE: ByteSize = ByteSize::mib(64);
/// Default of `flush.max_rows`.
pub const DEFAULT_FLUSH_MAX_ROWS: usize = 100_000;
/// Default of `flush.max_bytes`.
pub const DEFAULT_FLUSH_MAX_BYTES: ByteSize = ByteSize::mib(64);
/// Default of `flush.max_interval`.
pub const DEFAULT_FLUSH_MAX_INTERVAL: Duration = Duration::from_secs(10);
/// Default of `metrics.ready_max_lag`.
pub const DEFAULT_READY_MAX_LAG: Duration = Duration::from_secs(5 * 60);
/// Default of `metrics.listen`.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9187));
/// `memory_budget` must be at least this many times `flush.max_bytes`: one batch being
/// built, one being encoded to Parquet, and headroom for decoding and other tables.
pub const MEMORY_BUDGET_FLUSH_FACTOR: u64 = 4;
/// Longest Postgres identifier in bytes (NAMEDATALEN - 1); longer names are truncated
/// by the server, so pg2lake rejects them instead of silently using another name.
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// The suffix of the insert-only publication's name: `<source.publication>_inserts`
/// (see `pg::publication`).
pub const INSERTS_PUBLICATION_SUFFIX: &str = "_inserts";
/// The schema of a table named without one.
pub const DEFAULT_SCHEMA: &str = "public";

/// Keys whose environment override is a comma separated list.
const LIST_KEYS: &[&str] = &["tables", "privacy.no_statistics"];
/// Keys whose environment value is a YAML flow map (`{public.orders.amount: "decimal(20,4)"}`):
/// their own keys hold dots and letter case that variable names cannot.
const MAP_KEYS: &[&str] = &["column_types", "privacy.columns"];
/// Sections that may be left empty (`flush:` with every key commented out).
const SECTIONS: &[&str] = &["source", "lake", "flush", "metrics"];

/// Errors from loading or validating the configuration. Each displays as one complete
/// line (it already contains its cause's text), meant to be printed alone.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error(
        "config error: cannot read config file {}: {source} (fix: pass an existing YAML file with --config or PG2LAKE_CONFIG)",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("config error{}: invalid YAML: {message}", place(.origin.as_deref(), *.line))]
    Syntax {
        /// The file, when read from one.
        origin: Option<PathBuf>,
        /// The 1-based line, when known.
        line: Option<usize>,
        /// The parser's message without its position.
        message: String,
        /// The parser error.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A key is unknown, or a value has the wrong type or form.
    #[error(
        "config error{}: {message}{}",
        place(.origin.as_deref(), *.line),
        set_by(.env_var.as_deref())
    )]
    Setting {
        /// The file, when read from one.
        origin: Option<PathBuf>,
        /// The 1-based line, when known and the value came from the file.
        line: Option<usize>,
        /// The dotted key path (`lake.urll`), when known.
        key: Option<String>,
        /// What is wrong, naming the key.
        message: String,
        /// The environment variable that supplied the value, if one did.
        env_var: Option<String>,
        /// The deserializer's error, if it found the problem.
        #[source]
        source: Option<serde_yaml_ng::Error>,
    },
    /// A setting breaks a rule checked by [`Config::validate`].
    #[error(
        "config error{}: {message}{}",
        place(.origin.as_deref(), None),
        set_by(.env_var.as_deref())
    )]
    Invalid {
        /// The file, when read from one.
        origin: Option<PathBuf>,
        /// The dotted key path the rule is about.
        field: String,
        /// The rule and the fix, naming the key.
        message: String,
        /// The environment variable that supplied the value, if one did.
        env_var: Option<String>,
    },
    /// A `PG2LAKE__` environment variable cannot be applied.
    #[error("config error: environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// `source.password_file` could not be read.
    #[error(
        "config error{}: cannot read source.password_file {}: {source}",
        place(.origin.as_deref(), None),
        path.display()
    )]
    PasswordFile {
        /// The config file, when read from one.
        origin: Option<PathBuf>,
        /// The password file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The dotted key path the error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Setting { key, .. } => key.as_deref(),
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::PasswordFile { .. } => Some("source.password_file"),
            _ => None,
        }
    }

    fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: None,
            field: field.to_owned(),
            message: message.into(),
            env_var: None,
        }
    }

    /// Adds the file and, for a key set by an environment variable, the variable.
    fn in_context(mut self, file: Option<&Path>, overrides: &[EnvOverride]) -> ConfigError {
        let key = self.key().map(str::to_owned);
        match &mut self {
            ConfigError::Invalid {
                origin, env_var, ..
            } => {
                *origin = file.map(Path::to_path_buf);
                *env_var = key.and_then(|k| override_for(&k, overrides));
            }
            ConfigError::PasswordFile { origin, .. } => *origin = file.map(Path::to_path_buf),
            _ => {}
        }
        self
    }
}

/// ` in FILE:LINE`, ` in FILE`, ` at line LINE` or nothing.
fn place(origin: Option<&Path>, line: Option<usize>) -> String {
    match (origin, line) {
        (Some(path), Some(line)) => format!(" in {}:{line}", path.display()),
        (Some(path), None) => format!(" in {}", path.display()),
        (None, Some(line)) => format!(" at line {line}"),
        (None, None) => String::new(),
    }
}

fn set_by(env_var: Option<&str>) -> String {
    env_var.map_or_else(String::new, |var| format!(" (set by {var})"))
}

/// What to do when a column's type changes to one its lake column cannot hold and that
/// is not a widening: keep replicating into a new lake column (see README, schema changes).
pub const DEFAULT_ON_TYPE_CHANGE: TypeChangePolicy = TypeChangePolicy::NewColumn;

/// A `column_types` value (spaces and case ignored): `decimal(p,s)` as a configured
/// decimal conversion, `text` as the column's Postgres text form.
fn parse_column_type(text: &str) -> Option<Conversion> {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if compact == "text" {
        return Some(Conversion::Text);
    }
    let inner = compact.strip_prefix("decimal(")?.strip_suffix(')')?;
    let (precision, scale) = inner.split_once(',')?;
    let precision: u8 = precision.parse().ok()?;
    let scale: i8 = scale.parse().ok()?;
    let fits = (1..=MAX_DECIMAL_PRECISION).contains(&precision)
        && scale >= 0
        && i16::from(scale) <= i16::from(precision);
    fits.then_some(Conversion::ConfiguredDecimal { precision, scale })
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The Postgres database to replicate from.
    pub source: SourceConfig,
    /// Tables to replicate: `schema.table`, `schema.*`, or `table` (in `public`).
    pub tables: Vec<String>,
    /// Where the Delta tables are written.
    pub lake: LakeConfig,
    /// When buffered changes are written out.
    pub flush: FlushConfig,
    /// Upper bound for buffered change data.
    pub memory_budget: ByteSize,
    /// How long a graceful shutdown may take before pg2lake stops anyway.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// The Prometheus and probe endpoint.
    pub metrics: MetricsConfig,
    /// The initial load.
    pub snapshot: SnapshotConfig,
    /// How source schema changes are followed in the lake.
    pub schema: SchemaConfig,
    /// The current-state tables (one row per key) kept beside the change logs.
    pub mirror: MirrorConfig,
    /// Lake types forced onto columns, keyed by `schema.table.column`: `decimal(p,s)`
    /// for `numeric` columns that would otherwise be stored as exact text (unconstrained,
    /// or wider than 38 digits). A value that does not fit stops pg2lake with an error.
    pub column_types: BTreeMap<String, String>,
    /// Policies for personal data: which columns are excluded, nulled, hashed, masked or
    /// truncated on their way to the lake (see [`crate::privacy`]).
    pub privacy: PrivacyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: SourceConfig::default(),
            tables: Vec::new(),
            lake: LakeConfig::default(),
            flush: FlushConfig::default(),
            memory_budget: DEFAULT_MEMORY_BUDGET,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            metrics: MetricsConfig::default(),
            column_types: BTreeMap::new(),
            snapshot: SnapshotConfig::default(),
            schema: SchemaConfig::default(),
            mirror: MirrorConfig::default(),
            privacy: PrivacyConfig::default(),
        }
    }
}

/// Column policies for personal data (README, Personal data).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Policy by `schema.table.column` pattern (each part a name or `*`; a bare name is
    /// every column of that name): `exclude`, `null`, `hash`, `mask(N)`, `truncate(N)` or
    /// `clear`. YAML's `null` (unquoted) is the `null` policy too.
    #[serde(deserialize_with = "policy_map")]
    pub columns: BTreeMap<String, String>,
    /// Columns (same patterns) whose Parquet and Delta min/max statistics are not
    /// written, for columns kept in clear whose values must not sit in the Delta log.
    pub no_statistics: Vec<String>,
    /// The environment variable holding the HMAC key of hashed columns.
    pub hash_key_env: String,
    /// A file holding the HMAC key instead (a mounted secret); its trailing line break is
    /// not part of the key.
    pub hash_key_file: Option<PathBuf>,
}

/// `privacy.columns`, where an unquoted YAML `null` means the `null` policy.
fn policy_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, Option<String>>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(column, policy)| (column, policy.unwrap_or_else(|| "null".to_owned())))
        .collect())
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            columns: BTreeMap::new(),
            no_statistics: Vec::new(),
            hash_key_env: crate::privacy::DEFAULT_HASH_KEY_ENV.to_owned(),
            hash_key_file: None,
        }
    }
}

/// The current-state ("mirror") table of each change log with a key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// Whether `pg2lake run` keeps them (and `pg2lake snapshot` writes them). Off by
    /// default for now (see the README, Current state of a table).
    pub enabled: bool,
    /// How often each mirror is refreshed from what its change log committed.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Rows per mirror file at most; a refresh rewrites the files whose key range a
    /// changed key falls in.
    pub target_file_rows: usize,
    /// Change-log rows a refresh folds at a time at most (a step also stops at about
    /// `memory_budget` / 8 of rows in memory).
    pub step_rows: u64,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            enabled: false,
            interval: DEFAULT_MIRROR_INTERVAL,
            target_file_rows: DEFAULT_MIRROR_FILE_ROWS,
            step_rows: DEFAULT_MIRROR_STEP_ROWS,
        }
    }
}

/// How the initial load copies tables.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Connections copying at once, all in the same exported snapshot: several tables
    /// at a time, and large tables split into ranges of pages.
    pub parallelism: usize,
    /// Size of the page ranges a large table is split into (a table is split once it
    /// holds two of them).
    pub range_size: ByteSize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            parallelism: DEFAULT_SNAPSHOT_PARALLELISM,
            range_size: DEFAULT_SNAPSHOT_RANGE_SIZE,
        }
    }
}

/// How source schema changes (ALTER TABLE) are followed in the lake.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaConfig {
    /// A column type change that is neither the same lake type nor a widening:
    /// `new_column` (values go to `<column>__<lake type>`) or `fail` (stop with an error).
    pub on_type_change: TypeChangePolicy,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig {
            on_type_change: DEFAULT_ON_TYPE_CHANGE,
        }
    }
}

/// The source database and the replication settings.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user@host:port/dbname`; required. A password in it is honoured but
    /// never printed.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// The password, preferably from `PG2LAKE__SOURCE__PASSWORD`.
    pub password: Option<Secret>,
    /// A file holding the password (e.g. a mounted Kubernetes secret).
    pub password_file: Option<PathBuf>,
    /// TLS mode, with libpq's meanings.
    pub sslmode: SslMode,
    /// CA bundle for `verify-ca` / `verify-full`; the system roots when unset.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM, optionally followed by its intermediates) presented when
    /// the server asks for one (`cert` auth, `clientcert=verify-full`); needs `sslkey`.
    pub sslcert: Option<PathBuf>,
    /// Unencrypted private key (PEM) of `sslcert`. A secret: only its path is ever shown.
    pub sslkey: Option<PathBuf>,
    /// SCRAM channel binding, with libpq's meanings: `prefer`, `require` or `disable`.
    pub channel_binding: ChannelBinding,
    /// The logical replication slot.
    pub slot: String,
    /// The publication, created for the configured tables when missing.
    pub publication: String,
    /// Period of standby status updates (confirmed position) to the server.
    #[serde(with = "duration")]
    pub status_interval: Duration,
    /// Period of `pg_logical_emit_message` heartbeats, which let the slot advance while
    /// the replicated tables are idle.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// How often the tables are looked up again while streaming: a table created since
    /// under a `schema.*` entry is added to the publication and loaded by a new session; a
    /// replicated table dropped and created again ends the session, and the next one stops
    /// with an error naming the fix.
    #[serde(with = "duration")]
    pub table_discovery_interval: Duration,
    /// Timeout for establishing a connection.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "duration")]
    pub reconnect_max_backoff: Duration,
    /// What pg2lake does when the slot the lake's tables were streamed from is gone
    /// (dropped, or invalidated by `max_slot_wal_keep_size`).
    pub on_slot_loss: SlotLossPolicy,
}

/// What pg2lake does when the slot the lake's tables were streamed from is gone
/// (`source.on_slot_loss`). The changes since the slot's last position are gone from the
/// server's WAL either way; the lake can only be made whole by copying the tables again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotLossPolicy {
    /// Stop with an error naming the slot, the tables and the fix, touching nothing.
    #[default]
    Fail,
    /// Create the slot again and reload every table at its snapshot: one Delta version
    /// per table holding a truncate marker and the table's rows, so the current state is
    /// exact again and the history before it stays readable.
    Resnapshot,
}

/// Default of `source.channel_binding`.
pub const DEFAULT_CHANNEL_BINDING: ChannelBinding = ChannelBinding::Prefer;

/// SCRAM channel binding (`source.channel_binding`), with libpq's meaning of each value.
/// Whether and how to use TLS, with libpq's meaning of each mode. Also the config's
/// `source.sslmode`, spelled as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate; plain otherwise.
    #[default]
    Prefer,
    /// Always use TLS, without verifying the certificate (protects against eavesdropping,
    /// not against an active man in the middle).
    Require,
    /// Always use TLS and verify the certificate chain, but not the host name.
    VerifyCa,
    /// Always use TLS and verify the certificate chain and the host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server that refuses TLS must be refused in turn.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Binding (SCRAM-SHA-256-PLUS, tls-server-end-point) ties the password exchange to the
/// server certificate this client saw, so a man in the middle that terminates TLS with
/// another certificate, even one a trusted CA signed, cannot relay the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// Never bind, even when the server offers it.
    Disable,
    /// Bind when the connection uses TLS and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Log in only through SCRAM-SHA-256-PLUS: no plain connection, no trust, password,
    /// md5 or certificate-only login.
    Require,
}

impl ChannelBinding {
    /// The libpq name of the value.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

impl fmt::Display for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SourceConfig {
    /// `url` with any password replaced by `***`, for logs and messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            url: String::new(),
            password: None,
            password_file: None,
            sslmode: DEFAULT_SSLMODE,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: DEFAULT_CHANNEL_BINDING,
            slot: DEFAULT_SLOT.to_owned(),
            publication: DEFAULT_PUBLICATION.to_owned(),
            status_interval: DEFAULT_STATUS_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            table_discovery_interval: DEFAULT_TABLE_DISCOVERY_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_max_backoff: DEFAULT_RECONNECT_MAX_BACKOFF,
            on_slot_loss: SlotLossPolicy::Fail,
        }
    }
}

// By hand so that a password inside the URL never reaches a log line.
impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("url", &self.redacted_url())
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("channel_binding", &self.channel_binding)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("status_interval", &self.status_interval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("table_discovery_interval", &self.table_discovery_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_max_backoff", &self.reconnect_max_backoff)
            .field("on_slot_loss", &self.on_slot_loss)
            .finish()
    }
}

fn serialize_redacted_url<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

/// The lake: where and how Delta tables are written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LakeConfig {
    /// A local path, `file:///path`, or `s3://bucket/prefix`.
    pub url: String,
    /// Endpoint of an S3-compatible store (MinIO, R2, ...).
    pub endpoint: Option<String>,
    /// S3 region; from the AWS environment when unset.
    pub region: Option<String>,
    /// Allow a plain `http://` endpoint.
    pub allow_http: bool,
    /// Write a Delta checkpoint every this many commits.
    pub checkpoint_interval: u64,
    /// Delta's `delta.logRetentionDuration`: how long commit files are kept.
    #[serde(with = "duration")]
    pub log_retention: Duration,
    /// How long a data file stays after a version removed it (compaction replaced it),
    /// so time travel to the versions before still reads it; VACUUM deletes it after
    /// that. Delta's `delta.deletedFileRetentionDuration`.
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Rewriting small files into large ones.
    pub compaction: CompactionConfig,
}

/// Compaction of the lake's small files (and VACUUM after it).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    /// Whether `pg2lake run` compacts and vacuums on its own (`pg2lake maintain` does
    /// either way).
    pub enabled: bool,
    /// How often `pg2lake run` looks at each table.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Compaction writes files of about this size; files below three quarters of it
    /// are small.
    pub target_file_size: ByteSize,
    /// Small files today's partition needs before it is compacted (a past day's
    /// partition is compacted once it has two).
    pub min_files: usize,
    /// How long a compactor's hold on a table lasts unless renewed (it renews between
    /// the files it writes): how long one that died keeps others off the table.
    #[serde(with = "duration")]
    pub lease: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: true,
            interval: DEFAULT_COMPACTION_INTERVAL,
            target_file_size: DEFAULT_COMPACTION_TARGET_FILE_SIZE,
            min_files: DEFAULT_COMPACTION_MIN_FILES,
            lease: DEFAULT_COMPACTION_LEASE,
        }
    }
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            url: DEFAULT_LAKE_URL.to_owned(),
            endpoint: None,
            region: None,
            allow_http: false,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            log_retention: DEFAULT_LOG_RETENTION,
            retention: DEFAULT_RETENTION,
            compaction: CompactionConfig::default(),
        }
    }
}

/// When buffered changes of a table are written as a Parquet file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlushConfig {
    /// Rows per file at most.
    pub max_rows: usize,
    /// Buffered bytes per file at most.
    pub max_bytes: ByteSize,
    /// Longest time a change waits before being flushed.
    #[serde(with = "duration")]
    pub max_interval: Duration,
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            max_rows: DEFAULT_FLUSH_MAX_ROWS,
            max_bytes: DEFAULT_FLUSH_MAX_BYTES,
            max_interval: DEFAULT_FLUSH_MAX_INTERVAL,
        }
    }
}

/// The HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on; `null` or `off` disables the endpoint.
    #[serde(deserialize_with = "deserialize_listen")]
    pub listen: Option<SocketAddr>,
    /// Label throughput metrics by table; off collapses them into `table="_all"`.
    pub per_table_labels: bool,
    /// `/readyz` fails while `pg2lake_replication_lag_seconds` is above this.
    #[serde(with = "duration")]
    pub ready_max_lag: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(DEFAULT_METRICS_LISTEN),
            per_table_labels: true,
            ready_max_lag: DEFAULT_READY_MAX_LAG,
        }
    }
}

fn deserialize_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    d.deserialize_option(ListenVisitor)
}

/// Reads `metrics.listen` inside the visitor, so errors carry the key's path and line.
struct ListenVisitor;

impl<'de> Visitor<'de> for ListenVisitor {
    type Value = Option<SocketAddr>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address such as 0.0.0.0:9187, or off")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(ListenVisitor)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        parse_listen(Some(v)).map_err(E::custom)
    }
}

/// Reads `metrics.listen`: `null`, `off`, `host:port`, `:port` or a bare port.
fn parse_listen(raw: Option<&str>) -> Result<Option<SocketAddr>, String> {
    let Some(raw) = raw.map(str::trim) else {
        return Ok(None);
    };
    if raw.is_empty()
        || ["off", "false", "none", "null"]
            .iter()
            .any(|w| raw.eq_ignore_ascii_case(w))
    {
        return Ok(None);
    }
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    if let Ok(port) = raw.strip_prefix(':').unwrap_or(raw).parse::<u16>() {
        return Ok(Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        ))));
    }
    Err(format!(
        "{raw:?} is not a listen address (write e.g. 0.0.0.0:9187, 127.0.0.1:9187, :9187, or off)"
    ))
}

/// Human-readable durations (`500ms`, `10s`, `30 days`) through `humantime`.
mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(DurationVisitor)
    }

    // The check runs inside the visitor, while the deserializer still points at the
    // value: serde_yaml_ng then reports the key's own path and line, not its parent's.
    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 10s")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text.trim()).map_err(|err| {
                E::custom(format!(
                    "{text:?} is not a duration: {err} (write e.g. 500ms, 10s, 5min or 30 days)"
                ))
            })
        }
    }
}

/// `url` with the password part of its user info replaced by `***`. Deliberately
/// eager: everything between the first `:` of the user info and the *last* `@` is
/// masked, so an unescaped `@`, `/` or `#` in a password cannot leak it; at worst the
/// host is masked too.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}***{}",
            &url[..scheme_end],
            &rest[..=colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// The password in a `postgres://user:password@host/db` URL, percent-decoded; the user
/// info ends at the first `@` before any `/`, as libpq reads it.
fn url_password(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.find('@')?];
    let (_, password) = userinfo.split_once(':')?;
    Some(percent_decode(password))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The environment variable that overrides a dotted key: `flush.max_rows` →
/// `PG2LAKE__FLUSH__MAX_ROWS`.
pub fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
    )
}

/// One applied environment override, kept to name the variable in errors.
#[derive(Debug)]
struct EnvOverride {
    key: String,
    var: String,
}

/// The variable that set `key` or a section containing it.
fn override_for(key: &str, overrides: &[EnvOverride]) -> Option<String> {
    overrides
        .iter()
        .find(|o| {
            key.strip_prefix(o.key.as_str()).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
            })
        })
        .map(|o| o.var.clone())
}

/// An environment value as the YAML scalar it reads as. Only canonical numbers become
/// numbers, so that `007` stays the string it was meant to be.
fn env_scalar(raw: &str) -> Value {
    match raw {
        "" | "null" | "~" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(v) = raw.parse::<u64>()
        && v.to_string() == raw
    {
        return Value::from(v);
    }
    if let Ok(v) = raw.parse::<i64>()
        && v.to_string() == raw
    {
        return Value::from(v);
    }
    Value::String(raw.to_owned())
}

/// Applies `PG2LAKE__*` variables to the YAML tree, in name order.
fn merge_env(
    root: &mut Mapping,
    env: &[(String, String)],
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    let mut applied = Vec::with_capacity(vars.len());
    for (var, raw) in vars {
        let env_error = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let segments: Vec<String> = var[ENV_PREFIX.len()..]
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if segments.iter().any(String::is_empty) {
            return Err(env_error(
                "expected PG2LAKE__KEY or PG2LAKE__SECTION__KEY, e.g. PG2LAKE__FLUSH__MAX_ROWS"
                    .to_owned(),
            ));
        }
        let key = segments.join(".");
        let value = if LIST_KEYS.contains(&key.as_str()) {
            Value::Sequence(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::String(item.to_owned()))
                    .collect(),
            )
        } else if MAP_KEYS.contains(&key.as_str()) {
            match serde_yaml_ng::from_str::<Value>(raw) {
                Ok(map @ Value::Mapping(_)) => map,
                _ => {
                    return Err(env_error(
                        "expected a YAML map, e.g. {public.orders.amount: \"decimal(20,4)\"}"
                            .to_owned(),
                    ));
                }
            }
        } else {
            env_scalar(raw)
        };
        insert_path(root, &segments, value, "").map_err(env_error)?;
        applied.push(EnvOverride {
            key,
            var: var.clone(),
        });
    }
    Ok(applied)
}

fn insert_path(
    map: &mut Mapping,
    segments: &[String],
    value: Value,
    parent: &str,
) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        return Ok(());
    };
    let key = Value::String(first.clone());
    if rest.is_empty() {
        map.insert(key, value);
        return Ok(());
    }
    let path = if parent.is_empty() {
        first.clone()
    } else {
        format!("{parent}.{first}")
    };
    if map.get(&key).is_none_or(Value::is_null) {
        map.insert(key.clone(), Value::Mapping(Mapping::new()));
    }
    match map.get_mut(&key) {
        Some(Value::Mapping(section)) => insert_path(section, rest, value, &path),
        _ => Err(format!(
            "{path} is not a section, so it has no key {}",
            rest.join(".")
        )),
    }
}

/// A deserializer error rephrased around the key path (`unknown key lake.urll
/// (expected one of: url, ...)`), with the file line when it is meaningful.
fn setting_error(
    err: serde_yaml_ng::Error,
    origin: Option<&Path>,
    with_line: bool,
    overrides: &[EnvOverride],
) -> ConfigError {
    let (text, line) = strip_location(&err);
    let (key, message) = describe(&text);
    let env_var = key.as_deref().and_then(|k| override_for(k, overrides));
    ConfigError::Setting {
        origin: origin.map(Path::to_path_buf),
        line: line.filter(|_| with_line && env_var.is_none()),
        key,
        message,
        env_var,
        source: Some(err),
    }
}

/// serde_yaml_ng's message without ` at line L column C`, and the line.
fn strip_location(err: &serde_yaml_ng::Error) -> (String, Option<usize>) {
    let text = err.to_string();
    // serde_yaml_ng reports document-level errors at index 0, which is not a real position.
    match err.location().filter(|l| l.index() > 0) {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            (text.replacen(&suffix, "", 1), Some(loc.line()))
        }
        None => (text, None),
    }
}

/// Splits serde_yaml_ng's `path: message` and rephrases serde's common messages.
fn describe(text: &str) -> (Option<String>, String) {
    let (path, msg) = match text.split_once(": ") {
        Some((p, m)) if !p.is_empty() && !p.contains(char::is_whitespace) && !p.contains('`') => {
            (Some(p), m)
        }
        _ => (None, text),
    };
    let join = |field: &str| path.map_or_else(|| field.to_owned(), |p| format!("{p}.{field}"));
    if let Some((field, expected)) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
    {
        let key = join(field);
        let names = backticked(expected);
        let message = if names.is_empty() {
            format!("unknown key {key}")
        } else {
            format!("unknown key {key} (expected one of: {})", names.join(", "))
        };
        return (Some(key), message);
    }
    if let Some((value, expected)) = msg
        .strip_prefix("unknown variant `")
        .and_then(|r| r.split_once('`'))
    {
        let key = path.unwrap_or("value").to_owned();
        let message = format!(
            "{key}: unknown value {value:?} (expected one of: {})",
            backticked(expected).join(", ")
        );
        return (Some(key), message);
    }
    if let Some((field, _)) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split_once('`'))
    {
        let key = join(field);
        return (Some(key.clone()), format!("{key} is required"));
    }
    match path {
        Some(p) => (Some(p.to_owned()), format!("{p}: {msg}")),
        None => (None, msg.to_owned()),
    }
}

/// The `names` inside backticks of serde's "expected one of `a`, `b`".
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn top_level_not_mapping(origin: Option<&Path>) -> ConfigError {
    ConfigError::Setting {
        origin: origin.map(Path::to_path_buf),
        line: None,
        key: None,
        message: "the top level must be a mapping of settings (source, tables, lake, flush, memory_budget, shutdown_timeout, metrics, snapshot, schema, mirror, column_types, privacy)".to_owned(),
        env_var: None,
        source: None,
    }
}

/// File text + environment → validated config; `origin` names the file in errors.
fn parse(
    yaml: &str,
    env: &[(String, String)],
    origin: Option<&Path>,
) -> Result<Config, ConfigError> {
    let tree: Value = serde_yaml_ng::from_str(yaml).map_err(|source| {
        let (message, line) = strip_location(&source);
        ConfigError::Syntax {
            origin: origin.map(Path::to_path_buf),
            line,
            message,
            source,
        }
    })?;
    let mut root = match tree {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        _ => return Err(top_level_not_mapping(origin)),
    };
    let mut modified = false;
    for section in SECTIONS {
        if root.get(*section).is_some_and(Value::is_null) {
            root.remove(*section);
            modified = true;
        }
    }
    let overrides = merge_env(&mut root, env)?;
    modified |= !overrides.is_empty();

    let config = if modified {
        let merged = serde_yaml_ng::to_string(&Value::Mapping(root)).map_err(|source| {
            ConfigError::Setting {
                origin: origin.map(Path::to_path_buf),
                line: None,
                key: None,
                message: format!("cannot merge the environment overrides: {source}"),
                env_var: None,
                source: Some(source),
            }
        })?;
        match serde_yaml_ng::from_str::<Config>(&merged) {
            Ok(config) => config,
            Err(err) => {
                let merged_err = setting_error(err, origin, false, &overrides);
                // Not from a variable: the same problem read from the file itself has a
                // line number worth showing.
                if let ConfigError::Setting {
                    env_var: None,
                    message,
                    ..
                } = &merged_err
                    && let Err(file_err) = serde_yaml_ng::from_str::<Config>(yaml)
                {
                    let file_err = setting_error(file_err, origin, true, &[]);
                    if matches!(&file_err, ConfigError::Setting { message: m, .. } if m == message)
                    {
                        return Err(file_err);
                    }
                }
                return Err(merged_err);
            }
        }
    } else {
        serde_yaml_ng::from_str::<Config>(yaml)
            .map_err(|err| setting_error(err, origin, true, &[]))?
    };
    config
        .validate()
        .map_err(|e| e.in_context(origin, &overrides))?;
    Ok(config)
}

/// The `PG2LAKE__*` variables of this process.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::Env {
            var: name.to_owned(),
            message: "the value is not valid UTF-8".to_owned(),
        })?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

impl Config {
    /// Reads `path`, applies `PG2LAKE__*` environment overrides and validates; also
    /// checks that `source.password_file`, when set, is readable.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = parse(&yaml, &process_env()?, Some(path))?;
        config
            .source_password()
            .map_err(|e| e.in_context(Some(path), &[]))?;
        Ok(config)
    }

    /// Parses YAML text with the given environment (only `PG2LAKE__*` entries are
    /// used) and validates it. Pure: no file or process environment is read.
    pub fn from_yaml_str(yaml: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        parse(yaml, env, None)
    }

    /// `privacy.columns` and `privacy.no_statistics` parsed, without the hash key.
    fn privacy_rules(&self) -> Result<ColumnPolicies, ConfigError> {
        ColumnPolicies::parse(&self.privacy.columns, &self.privacy.no_statistics)
            .map_err(|(field, message)| ConfigError::invalid(&field, message))
    }

    /// The column policies with the hash key, read from `privacy.hash_key_file` or the
    /// environment variable `privacy.hash_key_env` (`env` stands for the process
    /// environment). No key is an error only once a hashed column needs one.
    pub fn column_policies(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ColumnPolicies, ConfigError> {
        let rules = self.privacy_rules()?;
        let privacy = &self.privacy;
        let secret = match &privacy.hash_key_file {
            Some(path) => {
                let contents = std::fs::read(path).map_err(|e| {
                    ConfigError::invalid(
                        "privacy.hash_key_file",
                        format!("cannot read privacy.hash_key_file {}: {e}", path.display()),
                    )
                })?;
                let end = contents
                    .iter()
                    .rposition(|b| !matches!(b, b'\n' | b'\r'))
                    .map_or(0, |i| i + 1);
                Some((contents[..end].to_vec(), "privacy.hash_key_file"))
            }
            None => env(&privacy.hash_key_env)
                .filter(|v| !v.is_empty())
                .map(|v| (v.into_bytes(), "privacy.hash_key_env")),
        };
        let key = match secret {
            Some((bytes, field)) => Some(
                crate::privacy::HashKey::new(&bytes)
                    .map_err(|message| ConfigError::invalid(field, message))?,
            ),
            None => None,
        };
        Ok(rules.with_key(key, &privacy.hash_key_env))
    }

    /// `column_types` as conversions by `schema.table.column`; an error names the first
    /// entry that is not `"schema.table.column": "decimal(p,s)"` with 1 ≤ p ≤ 38, 0 ≤ s ≤ p,
    /// or `"schema.table.column": text`.
    pub fn configured_types(&self) -> Result<HashMap<String, Conversion>, ConfigError> {
        let mut types = HashMap::with_capacity(self.column_types.len());
        for (key, value) in &self.column_types {
            let field = format!("column_types.{key}");
            let parts: Vec<&str> = key.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
                return Err(ConfigError::invalid(
                    &field,
                    format!(
                        "column_types.\"{key}\": the key must be schema.table.column (e.g. \"public.orders.amount\")"
                    ),
                ));
            }
            let conversion = parse_column_type(value).ok_or_else(|| {
                ConfigError::invalid(
                    &field,
                    format!(
                        "column_types.\"{key}\": {value:?} must be text, or decimal(p,s) with 1 <= p <= {MAX_DECIMAL_PRECISION} and 0 <= s <= p (e.g. decimal(20,4))"
                    ),
                )
            })?;
            types.insert(key.clone(), conversion);
        }
        Ok(types)
    }

    /// The parsed `tables` entries, in order. Entries that do not parse are skipped;
    /// [`Config::validate`] rejects them, so a loaded config has none.
    pub fn table_patterns(&self) -> Vec<TablePattern> {
        self.tables.iter().filter_map(|t| t.parse().ok()).collect()
    }

    /// The source password: `source.password`, else the contents of
    /// `source.password_file` without its trailing line break, else the password in
    /// `source.url`; `None` when there is none (trust or certificate auth).
    pub fn source_password(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(password) = &self.source.password {
            return Ok(Some(password.clone()));
        }
        if let Some(path) = &self.source.password_file {
            let contents =
                std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
                    origin: None,
                    path: path.clone(),
                    source,
                })?;
            let password = contents.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(ConfigError::invalid(
                    "source.password_file",
                    format!("source.password_file {} is empty", path.display()),
                ));
            }
            return Ok(Some(Secret::new(password)));
        }
        Ok(url_password(&self.source.url)
            .filter(|p| !p.is_empty())
            .map(Secret::new))
    }
}

#[cfg(test)]
mod tests;
