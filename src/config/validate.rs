//! [`Config::validate`]: the rules that types cannot express, section by section.
//!
//! The first broken rule is the error returned, so the order of the checks is part of
//! the behaviour: the sections are checked in the order `validate` calls them, and
//! where one section's rules sat between another's (compaction's sizes after the
//! mirror's rules, `metrics.ready_max_lag` between the flush rules and
//! `memory_budget`) that order is kept.

use std::path::Path;
use std::time::Duration;

use super::{
    ByteSize, ChannelBinding, CompactionConfig, Config, ConfigError, DEFAULT_SNAPSHOT_PARALLELISM,
    FlushConfig, INSERTS_PUBLICATION_SUFFIX, LakeConfig, MAX_IDENTIFIER_BYTES,
    MAX_SNAPSHOT_PARALLELISM, MEMORY_BUDGET_FLUSH_FACTOR, MirrorConfig, SnapshotConfig,
    SourceConfig, SslMode, TablePattern,
};

impl Config {
    /// Checks the rules that types cannot express; the first broken one is returned.
    /// The only files it touches are `source.sslcert` and `source.sslkey`, when set,
    /// which must be readable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.source.validate()?;
        self.validate_tables()?;
        self.lake.validate()?;
        self.mirror.validate()?;
        // After the mirror's rules, where they have always been checked (see above).
        self.lake.compaction.validate_sizes()?;
        self.snapshot.validate()?;
        self.flush.validate()?;
        check_nonzero("metrics.ready_max_lag", self.metrics.ready_max_lag, "5m")?;
        self.validate_memory_budget()?;
        check_nonzero("shutdown_timeout", self.shutdown_timeout, "30s")?;
        self.configured_types()?;
        self.privacy_rules()?;
        Ok(())
    }

    /// `tables` lists at least one entry, and every entry is a table name or pattern.
    fn validate_tables(&self) -> Result<(), ConfigError> {
        if self.tables.is_empty() {
            return Err(ConfigError::invalid(
                "tables",
                "tables must list at least one table (e.g. [public.orders] or [public.*])",
            ));
        }
        for (i, entry) in self.tables.iter().enumerate() {
            if let Err(err) = entry.parse::<TablePattern>() {
                return Err(ConfigError::invalid(
                    "tables",
                    format!("tables[{i}] {entry:?} is not a table name: {err}"),
                ));
            }
        }
        Ok(())
    }

    /// `memory_budget` holds [`MEMORY_BUDGET_FLUSH_FACTOR`] batches of `flush.max_bytes`.
    fn validate_memory_budget(&self) -> Result<(), ConfigError> {
        let flush = &self.flush;
        let needed = flush.max_bytes.0.saturating_mul(MEMORY_BUDGET_FLUSH_FACTOR);
        if self.memory_budget.0 < needed {
            return Err(ConfigError::invalid(
                "memory_budget",
                format!(
                    "memory_budget ({}) must be at least {MEMORY_BUDGET_FLUSH_FACTOR} x flush.max_bytes ({}) = {} (one batch building, one encoding, headroom for decoding; fix: raise memory_budget or lower flush.max_bytes)",
                    self.memory_budget,
                    flush.max_bytes,
                    ByteSize(needed)
                ),
            ));
        }
        Ok(())
    }
}

impl SourceConfig {
    /// The `source` rules: a Postgres URL, one password setting, TLS, the slot's and
    /// the publication's names, and non-zero periods.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_url()?;
        if self.password.is_some() && self.password_file.is_some() {
            return Err(ConfigError::invalid(
                "source.password_file",
                "source.password and source.password_file are both set (fix: keep only one)",
            ));
        }
        self.validate_tls()?;
        self.validate_names()?;
        check_nonzero("source.status_interval", self.status_interval, "10s")?;
        check_nonzero("source.heartbeat_interval", self.heartbeat_interval, "30s")?;
        check_nonzero(
            "source.table_discovery_interval",
            self.table_discovery_interval,
            "30s",
        )?;
        check_nonzero("source.connect_timeout", self.connect_timeout, "10s")?;
        check_nonzero(
            "source.reconnect_max_backoff",
            self.reconnect_max_backoff,
            "30s",
        )?;
        Ok(())
    }

    /// `url` is set and is a `postgres://` or `postgresql://` URL.
    fn validate_url(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(ConfigError::invalid(
                "source.url",
                "source.url is required (e.g. postgres://replicator@db:5432/app)",
            ));
        }
        if !["postgres://", "postgresql://"]
            .iter()
            .any(|p| self.url.starts_with(p))
        {
            return Err(ConfigError::invalid(
                "source.url",
                format!(
                    "source.url {:?} must be a postgres:// or postgresql:// URL (e.g. postgres://replicator@db:5432/app)",
                    self.redacted_url()
                ),
            ));
        }
        Ok(())
    }

    /// The TLS rules: `sslcert` and `sslkey` are set together and both can be read, and
    /// `channel_binding: require` has TLS to bind to. The files are opened at load time
    /// so that a wrong path or mode is a configuration error naming the key, not a failed
    /// connection later; only their first byte is read, and nothing of them is shown.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        match (&self.sslcert, &self.sslkey) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "source.sslkey",
                    "source.sslcert is set but source.sslkey is not (fix: set source.sslkey to the client certificate's private key, or unset both)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "source.sslcert",
                    "source.sslkey is set but source.sslcert is not (fix: set source.sslcert to the client certificate, or unset both)",
                ));
            }
            (Some(cert), Some(key)) => {
                check_readable(
                    "source.sslcert",
                    cert,
                    "point it at the PEM client certificate, readable by the user pg2lake runs as",
                )?;
                check_readable(
                    "source.sslkey",
                    key,
                    "point it at the PEM private key of source.sslcert, readable by the user pg2lake runs as",
                )?;
            }
        }
        if self.channel_binding == ChannelBinding::Require && self.sslmode == SslMode::Disable {
            return Err(ConfigError::invalid(
                "source.channel_binding",
                "source.channel_binding is require but source.sslmode is disable: channel binding needs TLS (fix: set source.sslmode to verify-full or require, or source.channel_binding to prefer)",
            ));
        }
        Ok(())
    }

    /// `slot` and `publication` are names Postgres takes as they are.
    fn validate_names(&self) -> Result<(), ConfigError> {
        // ReplicationSlotValidateName: lower-case letters, digits and underscores.
        let slot_ok = !self.slot.is_empty()
            && self.slot.len() <= MAX_IDENTIFIER_BYTES
            && self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !slot_ok {
            return Err(ConfigError::invalid(
                "source.slot",
                format!(
                    "source.slot {:?} must be lowercase letters, digits and underscores (at most {MAX_IDENTIFIER_BYTES})",
                    self.slot
                ),
            ));
        }
        if self.publication.trim().is_empty() {
            return Err(ConfigError::invalid(
                "source.publication",
                "source.publication must not be empty (e.g. pg2lake)",
            ));
        }
        // The insert-only publication's name adds a suffix (see pg::publication).
        let max_publication = MAX_IDENTIFIER_BYTES - INSERTS_PUBLICATION_SUFFIX.len();
        if self.publication.len() > max_publication {
            return Err(ConfigError::invalid(
                "source.publication",
                format!(
                    "source.publication {:?} is longer than {max_publication} bytes: with the suffix {:?} of its insert-only publication Postgres would truncate it",
                    self.publication, INSERTS_PUBLICATION_SUFFIX
                ),
            ));
        }
        Ok(())
    }
}

/// Fails unless `path` is a non-empty file this process may read.
fn check_readable(key: &str, path: &Path, fix: &str) -> Result<(), ConfigError> {
    use std::io::Read;
    let mut first = [0u8; 1];
    let read = std::fs::File::open(path).and_then(|mut file| file.read(&mut first));
    let problem = match read {
        Ok(0) => "the file is empty".to_owned(),
        Ok(_) => return Ok(()),
        Err(err) => {
            // "Permission denied (os error 13)" reads better as "permission denied".
            let text = err.to_string();
            let text = text
                .rsplit_once(" (os error ")
                .map_or(text.as_str(), |(reason, _)| reason);
            let mut chars = text.chars();
            chars
                .next()
                .map(|c| c.to_lowercase().chain(chars).collect())
                .unwrap_or_default()
        }
    };
    Err(ConfigError::invalid(
        key,
        format!(
            "cannot read {key} {}: {problem} (fix: {fix})",
            path.display()
        ),
    ))
}

impl LakeConfig {
    /// The `lake` rules: a usable URL and endpoint, and non-zero checkpoint interval,
    /// retentions and compaction periods.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(problem) = lake_url_problem(&self.url) {
            return Err(ConfigError::invalid(
                "lake.url",
                format!(
                    "lake.url {:?} {problem}; it must be a local path, file:///absolute/path or s3://bucket/prefix",
                    self.url
                ),
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            let lower = endpoint.to_ascii_lowercase();
            if !lower.starts_with("http://") && !lower.starts_with("https://") {
                return Err(ConfigError::invalid(
                    "lake.endpoint",
                    format!("lake.endpoint {endpoint:?} must start with https:// or http://"),
                ));
            }
            if lower.starts_with("http://") && !self.allow_http {
                return Err(ConfigError::invalid(
                    "lake.endpoint",
                    format!(
                        "lake.endpoint {endpoint:?} is plain http (fix: set lake.allow_http: true, or use https)"
                    ),
                ));
            }
        }
        if self.checkpoint_interval < 1 {
            return Err(ConfigError::invalid(
                "lake.checkpoint_interval",
                "lake.checkpoint_interval must be at least 1 (e.g. 100)",
            ));
        }
        check_nonzero("lake.log_retention", self.log_retention, "30 days")?;
        check_nonzero("lake.retention", self.retention, "7 days")?;
        self.compaction.validate_periods()
    }
}

impl CompactionConfig {
    /// `lake.compaction.interval` and `lake.compaction.lease` are non-zero.
    fn validate_periods(&self) -> Result<(), ConfigError> {
        check_nonzero("lake.compaction.interval", self.interval, "10 minutes")?;
        check_nonzero("lake.compaction.lease", self.lease, "2 minutes")
    }

    /// Compaction writes files of some size, and waits for at least two small ones.
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        if self.target_file_size.0 < 1 {
            return Err(ConfigError::invalid(
                "lake.compaction.target_file_size",
                "lake.compaction.target_file_size must be greater than 0 (e.g. 128MiB)",
            ));
        }
        if self.min_files < 2 {
            return Err(ConfigError::invalid(
                "lake.compaction.min_files",
                "lake.compaction.min_files must be at least 2 (e.g. 32)",
            ));
        }
        Ok(())
    }
}

impl MirrorConfig {
    /// The `mirror` rules: a non-zero interval, and at least one row per step and file.
    fn validate(&self) -> Result<(), ConfigError> {
        check_nonzero("mirror.interval", self.interval, "1 minute")?;
        if self.step_rows < 1 {
            return Err(ConfigError::invalid(
                "mirror.step_rows",
                "mirror.step_rows must be at least 1 (e.g. 500000)",
            ));
        }
        if self.target_file_rows < 1 {
            return Err(ConfigError::invalid(
                "mirror.target_file_rows",
                "mirror.target_file_rows must be at least 1 (e.g. 250000)",
            ));
        }
        Ok(())
    }
}

impl SnapshotConfig {
    /// The `snapshot` rules: a bounded number of connections, and ranges of some size.
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SNAPSHOT_PARALLELISM).contains(&self.parallelism) {
            return Err(ConfigError::invalid(
                "snapshot.parallelism",
                format!(
                    "snapshot.parallelism must be between 1 and {MAX_SNAPSHOT_PARALLELISM} (e.g. {DEFAULT_SNAPSHOT_PARALLELISM})"
                ),
            ));
        }
        if self.range_size.0 < 1 {
            return Err(ConfigError::invalid(
                "snapshot.range_size",
                "snapshot.range_size must be at least 1 byte (e.g. 64MiB)",
            ));
        }
        Ok(())
    }
}

impl FlushConfig {
    /// The `flush` rules: at least one row and one byte per file, a non-zero interval.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_rows < 1 {
            return Err(ConfigError::invalid(
                "flush.max_rows",
                "flush.max_rows must be at least 1 (e.g. 100000)",
            ));
        }
        if self.max_bytes.0 < 1 {
            return Err(ConfigError::invalid(
                "flush.max_bytes",
                "flush.max_bytes must be at least 1 byte (e.g. 64MiB)",
            ));
        }
        check_nonzero("flush.max_interval", self.max_interval, "10s")
    }
}

/// Fails when `value` is zero, naming `field` and an example of a valid value.
fn check_nonzero(field: &str, value: Duration, example: &str) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(
            field,
            format!("{field} must be greater than 0 (e.g. {example})"),
        ));
    }
    Ok(())
}

/// Why a lake URL is not usable, if it is not.
pub(super) fn lake_url_problem(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty() {
        return Some("is empty".to_owned());
    }
    let scheme = url
        .split_once("://")
        .map(|(s, rest)| (s.to_ascii_lowercase(), rest))
        .filter(|(s, _)| {
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
    match scheme {
        None => None,
        Some((s, rest)) if s == "file" => (!rest.starts_with('/')).then(|| {
            "is a file:// URL without an absolute path (write file:///absolute/path)".to_owned()
        }),
        Some((s, rest)) if s == "s3" => rest
            .split('/')
            .next()
            .is_none_or(str::is_empty)
            .then(|| "has no bucket (write s3://bucket/prefix)".to_owned()),
        Some((s, _)) => Some(format!("has the unsupported scheme {s}://")),
    }
}
