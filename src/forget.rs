//! `pg2lake forget`: erases one person (a data subject) from the lake, history included,
//! for a deletion request under LGPD or GDPR.
//!
//! ```text
//!  --table T --key '{"id": 42}'        the row of key 42 of T (every change of it)
//!  --where '{"email": "ana@x.com"}'    every row whose email is that, in every table with
//!                                      an email column (or in the --table ones)
//!     │  values are given in clear; a hashed column is matched by the value's hash
//!     │  (the configured key), a clear one by the value itself
//!     ▼
//!  per table: the change log, then its mirror ─► lake::erase (rewrite, commit, delete
//!  history before the erasure) ─► report: files rewritten, rows removed, versions; never
//!  a value
//! ```
//!
//! It needs only the lake and the configuration (for the hash key), not Postgres. The
//! subject should be deleted in the source first, and `forget` run once pg2lake has
//! replicated that delete (its row holds the key too); rows of the subject streamed
//! after `forget` ran are not erased by it.

use std::collections::BTreeMap;

use arrow::array::{ArrayRef, StringArray};
use serde::Serialize;

use crate::bootstrap::lake_options;
use crate::config::Config;
use crate::lake::{self, ErasureReport, Lake, LakeError, LakeReader, SOURCE_KEY_PROPERTY, Subject};
use crate::privacy::{self, ColumnPolicies, Policy};
use crate::schema::Conversion;

/// Whom to erase, and where.
#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    /// Only these tables (`schema.name`); with `where_columns`, every table that has all
    /// its columns when empty.
    pub tables: Vec<String>,
    /// The subject's key in `tables` (exactly the key columns), as column → value.
    pub key: Option<BTreeMap<String, serde_json::Value>>,
    /// Columns and values that name the subject, in any table that has them.
    pub where_columns: Option<BTreeMap<String, serde_json::Value>>,
    /// Only report what would be rewritten.
    pub dry_run: bool,
}

/// Why a forget cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// The command line does not name a subject properly.
    #[error("{0}")]
    Usage(String),
    /// The lake could not be reached.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The configuration's policies or hash key are unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// What forget did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    /// `schema.name`.
    pub table: String,
    /// The change log.
    pub change_log: ErasureReport,
    /// Its current-state mirror, when it has one.
    pub mirror: Option<ErasureReport>,
    /// Why the table could not be erased.
    pub error: Option<String>,
}

/// What forget did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Whether it only looked.
    pub dry_run: bool,
    /// The tables it looked at.
    pub tables: Vec<TableReport>,
}

/// Parses a `--key` / `--where` argument: a JSON object of column → value.
pub fn parse_subject(text: &str) -> Result<BTreeMap<String, serde_json::Value>, ForgetError> {
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).map_err(|_| {
        ForgetError::Usage(
            "the subject must be a JSON object of column to value, e.g. '{\"id\": 42}' or '{\"email\": \"ana@example.com\"}'".into(),
        )
    })?;
    if map.is_empty() {
        return Err(ForgetError::Usage("the subject names no column".into()));
    }
    Ok(map)
}

/// Erases the subject (see the module docs). A table that fails is reported and the
/// others go on.
pub async fn forget(config: &Config, options: &ForgetOptions) -> Result<Report, ForgetError> {
    let (columns, by_key) = match (&options.key, &options.where_columns) {
        (Some(key), None) => {
            if options.tables.is_empty() {
                return Err(ForgetError::Usage(
                    "--key needs --table: a key means something in one table (use --where to name a subject in every table with a column)".into(),
                ));
            }
            (key, true)
        }
        (None, Some(columns)) => (columns, false),
        _ => {
            return Err(ForgetError::Usage(
                "name the subject with either --key or --where".into(),
            ));
        }
    };
    let policies = config.column_policies(|name| std::env::var(name).ok())?;
    let lake = Lake::open(lake_options(config))?;
    let tables = lake.tables_among(&options.tables).await?;
    for wanted in &options.tables {
        if !tables.iter().any(|(s, n)| &format!("{s}.{n}") == wanted) {
            return Err(ForgetError::Usage(format!(
                "table {wanted} is not in the lake"
            )));
        }
    }
    let mut report = Report {
        dry_run: options.dry_run,
        tables: Vec::new(),
    };
    for (schema, name) in tables {
        let table = format!("{schema}.{name}");
        let Some(reader) = LakeReader::open(&lake, &schema, &name).await? else {
            continue;
        };
        let subject = match subject_in(&reader, columns, by_key, &policies) {
            Ok(Some(subject)) => subject,
            // A --where column the table does not have: the subject is not in it.
            Ok(None) => continue,
            Err(message) => {
                report.tables.push(TableReport {
                    table,
                    error: Some(message),
                    ..TableReport::default()
                });
                continue;
            }
        };
        let mut table_report = TableReport {
            table: table.clone(),
            ..TableReport::default()
        };
        match erase_table(&lake, &schema, &name, &reader, &subject, options.dry_run).await {
            Ok((change_log, mirror)) => {
                table_report.change_log = change_log;
                table_report.mirror = mirror;
                tracing::info!(
                    table,
                    dry_run = options.dry_run,
                    files_rewritten = table_report.change_log.files_rewritten,
                    rows_removed = table_report.change_log.rows_removed,
                    version = table_report.change_log.version,
                    mirror_rows_removed = table_report.mirror.as_ref().map(|m| m.rows_removed),
                    "forget"
                );
            }
            Err(err) => {
                tracing::warn!(table, error = %err, "forget failed for a table");
                table_report.error = Some(err.to_string());
            }
        }
        report.tables.push(table_report);
    }
    Ok(report)
}

async fn erase_table(
    lake: &Lake,
    schema: &str,
    name: &str,
    reader: &LakeReader,
    subject: &Subject,
    dry_run: bool,
) -> Result<(ErasureReport, Option<ErasureReport>), LakeError> {
    let change_log = lake::erase(lake, reader.location(), subject, None, false, dry_run).await?;
    let location = lake::mirror_location(lake.root(), schema, name);
    let Some(mirror) = LakeReader::open_at(lake, location.clone()).await? else {
        return Ok((change_log, None));
    };
    let key: Vec<String> = mirror
        .property(SOURCE_KEY_PROPERTY)?
        .and_then(|k| serde_json::from_str(&k).ok())
        .unwrap_or_default();
    // The mirror's earlier versions hold the subject even when its current one does not
    // (its row was deleted before): its history ends whenever the change log's did.
    let history = change_log.version.is_some();
    let mirror = lake::erase(lake, &location, subject, Some(&key), history, dry_run).await?;
    Ok((change_log, Some(mirror)))
}

/// The subject as the table holds it: each named column's lake value (hashed for a
/// hashed column). `Ok(None)` when the table lacks a `--where` column; an error (a message
/// without values) when the subject cannot be matched in it.
fn subject_in(
    reader: &LakeReader,
    columns: &BTreeMap<String, serde_json::Value>,
    by_key: bool,
    policies: &ColumnPolicies,
) -> Result<Option<Subject>, String> {
    let layout = reader.arrow_schema().map_err(|e| e.to_string())?;
    let property = |key: &str| reader.property(key).map_err(|e| e.to_string());
    if by_key {
        let key: Vec<String> = property(SOURCE_KEY_PROPERTY)?
            .and_then(|k| serde_json::from_str(&k).ok())
            .unwrap_or_default();
        let mut named: Vec<&String> = columns.keys().collect();
        let mut wanted: Vec<&String> = key.iter().collect();
        named.sort();
        wanted.sort();
        if named != wanted {
            return Err(format!(
                "--key must name exactly the table's key columns ({}); use --where for other columns",
                key.join(", ")
            ));
        }
    }
    let recorded = privacy::parse_recorded(property(privacy::POLICIES_PROPERTY)?.as_deref());
    let mut subject = Vec::new();
    for (column, value) in columns {
        let Ok(field) = layout.field_with_name(column) else {
            if by_key {
                return Err(format!("the table has no column {column}"));
            }
            return Ok(None);
        };
        let text = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
            _ => {
                return Err(format!(
                    "the value of {column} must be a string or a number"
                ));
            }
        };
        let policy = recorded.get(column).copied().unwrap_or(Policy::Clear);
        let array: ArrayRef = match policy {
            Policy::Clear => {
                let conversion = Conversion::for_arrow(field.data_type()).ok_or_else(|| {
                    format!("column {column} has a lake type forget cannot match")
                })?;
                crate::batch::parse_value(conversion, &text)
                    .map_err(|e| format!("the value given for {column} {e}"))?
            }
            Policy::Hash => {
                let key = policies.key().ok_or_else(|| {
                    format!("column {column} is hashed and no hash key is set (fix: set the key the table was written with)")
                })?;
                let recorded_key = property(privacy::HASH_KEY_ID_PROPERTY)?;
                if recorded_key.as_deref().is_some_and(|id| id != key.id()) {
                    return Err(format!(
                        "column {column} was hashed with key {} but the configured key is {}",
                        recorded_key.unwrap_or_default(),
                        key.id()
                    ));
                }
                let mut hash = Vec::new();
                key.hash_into(text.as_bytes(), &mut hash);
                std::sync::Arc::new(StringArray::from(vec![
                    String::from_utf8(hash).unwrap_or_default(),
                ]))
            }
            other => {
                return Err(format!(
                    "column {column} holds {other} values in the lake, which cannot name one subject (fix: name the subject by its key or a hashed column)"
                ));
            }
        };
        subject.push((column.clone(), array));
    }
    Ok(Some(Subject { columns: subject }))
}

/// The text form of a forget report: one block per table, no values.
pub fn report_text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    if report.tables.is_empty() {
        text.push_str("no table of the lake has the columns named\n");
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for table in &report.tables {
        let _ = writeln!(text, "{}", table.table);
        if let Some(error) = &table.error {
            let _ = writeln!(text, "  failed: {error}");
            continue;
        }
        let parts = std::iter::once(("change log", &table.change_log))
            .chain(table.mirror.iter().map(|m| ("mirror", m)));
        for (what, erasure) in parts {
            if erasure.rows_removed == 0 {
                let _ = writeln!(
                    text,
                    "  {what}: the subject is not in it ({} files read)",
                    erasure.files_read
                );
                continue;
            }
            let _ = writeln!(
                text,
                "  {what}: {verb} {} rows from {} files ({} bytes rewritten; {} files read)",
                erasure.rows_removed,
                erasure.files_rewritten,
                erasure.bytes_rewritten,
                erasure.files_read
            );
            if let Some(version) = erasure.version {
                let _ = writeln!(
                    text,
                    "    version {version}; deleted {} data files and {} log files; history now starts at version {}",
                    erasure.files_deleted,
                    erasure.log_files_deleted,
                    erasure.history_starts_at.unwrap_or(version)
                );
            }
        }
    }
    text
}
