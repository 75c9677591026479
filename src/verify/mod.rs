//! `pg2lake verify`: proves, table by table, that the lake equals the source at one
//! position, and names the keys where it does not.
//!
//! ```text
//!  temporary slot ─► exported snapshot S at consistent point C (position P = C − 1)
//!  wait until pg2lake's slot confirmed ≥ C: every transaction in S is in the lake
//!  per table:
//!    source: COPY in S (binary, as the initial load reads it) ─► Arrow ─► Buckets
//!    lake:   change log rows with _lsn ≤ P, folded per key     ─► Arrow ─► Buckets
//!    buckets equal ─► equal; else the differing buckets are read again, key by key,
//!    on both sides, and the keys that differ are reported (key columns only)
//! ```
//!
//! Invariants:
//! - Exact, not approximate: the source snapshot and the lake fold are at the same
//!   position, whatever is written meanwhile.
//! - Bounded cost: the source is read once by a plain sequential COPY (a statement
//!   timeout bounds the snapshot's life; a rate limit spares a busy primary) and never
//!   held in memory; the lake is read a file at a time, its keys folded in as many passes
//!   as keep a pass near [`KEYS_PER_PASS`] changes.
//! - Values are compared as the type mapping defines them: both sides are decoded into
//!   the lake's Arrow types by pg2lake's own conversions and compared byte for byte.
//! - Values other than key columns never appear in the report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::OwnedRow;
use futures::StreamExt;
use serde::Serialize;
use tokio_postgres::Client;

use crate::batch::{BatchError, ChangeMeta, Op, TableBatch};
use crate::bootstrap;
use crate::config::{Config, ConfigError, TableName};
use crate::error::PipelineError;
use crate::lake::{self, Lake, LakeError, LakeReader};
use crate::lsn::Lsn;
use crate::pg::catalog::{self, CatalogError};
use crate::pg::connect::{self, ConnectError};
use crate::schema::{SchemaError, TableSchema};
use crate::snapshot::copy::{BinaryRows, CopyFormatError};
use crate::snapshot::{self, RowError, SnapshotError, SnapshotPoint};

mod digest;
mod fold;
mod push;

pub use push::{PUSHED_METRIC_NAMES, PushError, push_metrics};

use digest::{BUCKETS, Buckets, Digester, bucket_of, row_hash};
use fold::{Fold, Folded};

/// Changes of the lake folded in one pass; more make more passes over the lake's files.
/// A change costs about 150 bytes plus 8 per column while its pass lasts.
const KEYS_PER_PASS: u64 = 1_000_000;
/// Buckets examined key by key when they differ; the rest are only counted.
const MAX_BUCKETS_EXAMINED: usize = 64;
/// Keys listed per table.
const MAX_KEYS_LISTED: usize = 100;
/// How long WAL replay on a replica may take to pause.
const REPLAY_PAUSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows per Arrow chunk read from the source.
const CHUNK_ROWS: usize = 8192;

/// How `verify` runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only these tables (`schema.name`); all configured ones when empty.
    pub tables: Vec<String>,
    /// Read the source from this read replica instead of the primary.
    pub source_url: Option<String>,
    /// Source rows read per second at most.
    pub max_rows_per_second: Option<u64>,
    /// How long to wait for pg2lake to commit the position compared at.
    pub wait: Duration,
    /// The statement timeout of the source reads.
    pub statement_timeout: Duration,
}

/// Why verifying could not finish (a difference is not an error: see [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Connecting, the catalog, the lake or the snapshot failed.
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
    /// pg2lake did not commit the position in time.
    #[error(
        "the lake did not reach position {position} within {waited:?}: slot {slot} has confirmed {confirmed} (fix: make sure `pg2lake run` is streaming, or raise --wait)"
    )]
    NotCaughtUp {
        /// The position compared at.
        position: Lsn,
        /// How long verify waited.
        waited: Duration,
        /// pg2lake's slot.
        slot: String,
        /// What the slot confirmed.
        confirmed: String,
    },
    /// `--source-url` names a server that is not a standby.
    #[error(
        "--source-url is not a read replica (pg_is_in_recovery() is false) (fix: give a standby of the source, or leave --source-url out to read the primary)"
    )]
    NotAReplica,
    /// WAL replay on the replica did not pause.
    #[error(
        "WAL replay on the replica did not pause within 30s, so no position can be fixed (fix: check the replica's log)"
    )]
    ReplayNotPaused,
    /// A table asked for with --table is not among the configured ones.
    #[error(
        "table {0} is not replicated by this configuration (fix: check --table against tables)"
    )]
    UnknownTable(String),
    /// Rows could not be digested.
    #[error("table {table}: {source}")]
    Arrow {
        /// `schema.name`.
        table: String,
        /// What failed.
        source: ArrowError,
    },
    /// The metrics could not be pushed.
    #[error(transparent)]
    Push(#[from] PushError),
    /// Reading the source failed.
    #[error("table {table}: {what}: {source}")]
    Query {
        /// `schema.name`.
        table: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: tokio_postgres::Error,
    },
    /// The source's COPY stream was malformed.
    #[error("table {table}: {source}")]
    Format {
        /// `schema.name`.
        table: String,
        /// What was wrong.
        source: CopyFormatError,
    },
}

macro_rules! via_pipeline {
    ($($error:ty),*) => {$(
        impl From<$error> for VerifyError {
            fn from(error: $error) -> Self {
                VerifyError::Pipeline(Box::new(error.into()))
            }
        }
    )*};
}
via_pipeline!(
    ConnectError,
    CatalogError,
    LakeError,
    SnapshotError,
    SchemaError,
    ConfigError
);

impl From<PipelineError> for VerifyError {
    fn from(error: PipelineError) -> Self {
        VerifyError::Pipeline(Box::new(error))
    }
}

impl From<BatchError> for VerifyError {
    fn from(error: BatchError) -> Self {
        SnapshotError::Batch(error).into()
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The position compared at: source transactions committed before it.
    pub position: String,
    /// Per table.
    pub tables: Vec<TableReport>,
}

impl Report {
    /// Whether every table compared equal.
    pub fn equal(&self) -> bool {
        self.tables.iter().all(|t| t.status != Outcome::Different)
    }
}

/// The outcome for one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The folded lake equals the source.
    Equal,
    /// They differ; the keys are listed.
    Different,
    /// Not compared (the reason says why).
    Skipped,
}

/// What `verify` found for one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `schema.name`.
    pub table: String,
    /// The outcome.
    pub status: Outcome,
    /// Why the table was skipped, or why it differs without keys listed (the lake has no
    /// table for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rows of the source in the snapshot.
    pub source_rows: u64,
    /// Keys of the folded lake at the position.
    pub lake_rows: u64,
    /// Buckets (of 4096, by key hash) whose digests differ.
    pub differing_buckets: usize,
    /// The keys that differ (key columns only), at most 100.
    pub keys: Vec<KeyDifference>,
    /// Keys found to differ (in the examined buckets: a lower bound when more than 64
    /// buckets differ).
    pub mismatched_keys: u64,
    /// Whether more keys differ than are listed (or than the examined buckets hold).
    pub keys_truncated: bool,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// One key that differs.
#[derive(Debug, Clone, Serialize)]
pub struct KeyDifference {
    /// The key columns' values.
    pub key: BTreeMap<String, String>,
    /// `missing_in_lake`, `not_in_source`, `values_differ`, or `duplicated_change` (the
    /// key's change log holds a change twice).
    pub difference: &'static str,
}

/// One table to compare: its schema as the pipeline maps it, key and compared columns.
struct Target {
    name: String,
    schema: Arc<TableSchema>,
    reader: LakeReader,
    key_columns: Vec<usize>,
}

/// Runs `verify` for the configured tables (or `options.tables`).
pub async fn verify(config: &Config, options: &VerifyOptions) -> Result<Report, VerifyError> {
    let params = connect::params(config)?;
    let client = connect::sql(&params).await?;
    catalog::check_server(&client).await?;
    let mut tables = catalog::resolve_tables(&client, &config.table_patterns()).await?;
    if !options.tables.is_empty() {
        for wanted in &options.tables {
            if !tables.iter().any(|t| &t.to_string() == wanted) {
                return Err(VerifyError::UnknownTable(wanted.clone()));
            }
        }
        tables.retain(|t| options.tables.contains(&t.to_string()));
    }
    let (source, point, consistent_point) = match &options.source_url {
        // The position: a temporary slot's exported snapshot holds exactly the
        // transactions that commit before its consistent point.
        None => {
            let (exporter, created) = snapshot::temporary_export(&params).await?;
            let point = SnapshotPoint::of_slot(&created);
            let source = snapshot::begin(&params, &point).await?;
            drop(exporter);
            (source, point, created.consistent_point)
        }
        Some(url) => {
            let (source, replayed) = replica_snapshot(config, url).await?;
            let point = SnapshotPoint {
                name: None,
                lsn: Lsn(replayed.0.saturating_sub(1)),
            };
            (source, point, replayed)
        }
    };
    source
        .batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            options.statement_timeout.as_millis()
        ))
        .await
        .map_err(|source| VerifyError::Query {
            table: "*".into(),
            what: "setting the statement timeout",
            source,
        })?;
    wait_committed(&client, &config.source.slot, consistent_point, options.wait).await?;

    let lake = Lake::open(bootstrap::lake_options(config))?;
    let mut types = bootstrap::type_catalog(config)?;
    let mut reports = Vec::with_capacity(tables.len());
    for table in &tables {
        let started = Instant::now();
        let mut report = match target(config, &client, &lake, &mut types, table).await? {
            Ok(target) => compare(&source, &target, point.lsn, options).await?,
            Err(Unverifiable::Keyless) => TableReport::unverified(
                table.to_string(),
                Outcome::Skipped,
                "no primary key or replica identity index: rows cannot be matched by key",
            ),
            Err(Unverifiable::Missing(reason)) => {
                TableReport::unverified(table.to_string(), Outcome::Different, &reason)
            }
        };
        report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        reports.push(report);
    }
    let _ = source.batch_execute("ROLLBACK").await;
    Ok(Report {
        position: point.lsn.to_string(),
        tables: reports,
    })
}

/// A snapshot on the read replica at `url` whose position is known exactly: replay is
/// paused while the snapshot is taken, so it holds precisely the transactions whose
/// commit record ends at or before the replayed position returned. Replay resumes at
/// once, whatever happens.
async fn replica_snapshot(config: &Config, url: &str) -> Result<(Client, Lsn), VerifyError> {
    let params = connect::params_with_url(config, url)?;
    let control = connect::sql(&params).await?;
    let query_err = |what| {
        move |source| VerifyError::Query {
            table: "*".into(),
            what,
            source,
        }
    };
    let standby: bool = control
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(query_err("asking the replica whether it is a standby"))?
        .get(0);
    if !standby {
        return Err(VerifyError::NotAReplica);
    }
    let source = connect::sql(&params).await?;
    control
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .map_err(query_err(
            "pausing WAL replay on the replica (needs superuser, or EXECUTE on pg_wal_replay_pause and pg_wal_replay_resume)",
        ))?;
    let taken = async {
        let started = Instant::now();
        loop {
            let state: String = control
                .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
                .await
                .map_err(query_err("waiting for WAL replay to pause"))?
                .get(0);
            if state == "paused" {
                break;
            }
            if started.elapsed() > REPLAY_PAUSE_TIMEOUT {
                return Err(VerifyError::ReplayNotPaused);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let replayed: String = control
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
            .map_err(query_err("reading the replayed position"))?
            .get(0);
        // The first statement of a repeatable-read transaction takes its snapshot.
        source
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
            .await
            .map_err(query_err("taking the snapshot on the replica"))?;
        replayed
            .parse::<Lsn>()
            .map_err(|_| VerifyError::ReplayNotPaused)
    }
    .await;
    let resumed = control
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .map_err(query_err("resuming WAL replay on the replica"));
    let replayed = taken?;
    resumed?;
    Ok((source, replayed))
}

/// Waits until pg2lake's slot has confirmed `consistent_point`: pg2lake confirms only
/// what is committed to the lake, so every transaction before it is there.
async fn wait_committed(
    client: &Client,
    slot: &str,
    consistent_point: Lsn,
    wait: Duration,
) -> Result<(), VerifyError> {
    let started = Instant::now();
    loop {
        let info = catalog::slot_info(client, slot).await?;
        let confirmed = info.as_ref().and_then(|s| s.confirmed_flush_lsn);
        if confirmed.is_some_and(|c| c >= consistent_point) {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(VerifyError::NotCaughtUp {
                position: Lsn(consistent_point.0.saturating_sub(1)),
                waited: wait,
                slot: slot.to_owned(),
                confirmed: match (info, confirmed) {
                    (None, _) => "nothing (the slot does not exist)".to_owned(),
                    (Some(_), None) => "nothing".to_owned(),
                    (Some(_), Some(c)) => c.to_string(),
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Why a table cannot be compared.
enum Unverifiable {
    /// The lake lacks the table: a difference (the source's rows are not in the lake).
    Missing(String),
    /// Rows cannot be matched without a key: skipped.
    Keyless,
}

/// The table as the pipeline maps it, or why it cannot be compared.
async fn target(
    config: &Config,
    client: &Client,
    lake: &Lake,
    types: &mut crate::schema::TypeCatalog,
    table: &TableName,
) -> Result<Result<Target, Unverifiable>, VerifyError> {
    let Some(reader) = LakeReader::open(lake, &table.schema, &table.name).await? else {
        return Ok(Err(Unverifiable::Missing(
            "the lake has no table for it (check lake.url, or whether its folder was deleted)"
                .to_owned(),
        )));
    };
    if reader
        .committed_lsn(&lake::app_id(&config.source.slot))
        .await?
        .is_none()
    {
        return Ok(Err(Unverifiable::Missing(format!(
            "the lake table holds nothing from slot {}",
            config.source.slot
        ))));
    }
    let columns = catalog::table_columns(client, table).await?;
    catalog::resolve_types(client, types, &columns).await?;
    let known = TableSchema::from_lake(&table.schema, &table.name, &*reader.arrow_schema()?)?;
    let schema = known
        .evolve_with(&columns, types, config.schema.on_type_change)?
        .schema;
    // Rows are matched by the replica identity's columns, which delete rows carry; under
    // REPLICA IDENTITY FULL every column is in it, so the primary key matches instead.
    let key_names: Vec<String> = if columns.iter().all(|c| c.is_key) {
        catalog::primary_key_columns(client, table).await?
    } else {
        columns
            .iter()
            .filter(|c| c.is_key)
            .map(|c| c.name.clone())
            .collect()
    };
    let key_columns: Vec<usize> = key_names
        .iter()
        .filter_map(|name| {
            let position = columns.iter().position(|c| &c.name == name)?;
            schema.tuple_columns.get(position).copied().flatten()
        })
        .collect();
    if key_columns.is_empty() || key_columns.len() != key_names.len() {
        return Ok(Err(Unverifiable::Keyless));
    }
    Ok(Ok(Target {
        name: table.to_string(),
        schema: Arc::new(schema),
        reader,
        key_columns,
    }))
}

impl Target {
    /// The error of an Arrow failure on this table.
    fn arrow_error(&self, source: ArrowError) -> VerifyError {
        VerifyError::Arrow {
            table: self.name.clone(),
            source,
        }
    }
}

impl TableReport {
    fn unverified(table: String, status: Outcome, reason: &str) -> TableReport {
        TableReport {
            table,
            status,
            reason: Some(reason.to_owned()),
            source_rows: 0,
            lake_rows: 0,
            differing_buckets: 0,
            keys: Vec::new(),
            mismatched_keys: 0,
            keys_truncated: false,
            elapsed_ms: 0,
        }
    }
}

/// Compares one table: buckets first, then the keys of the buckets that differ.
async fn compare(
    source: &Client,
    target: &Target,
    position: Lsn,
    options: &VerifyOptions,
) -> Result<TableReport, VerifyError> {
    let comparison = Comparison::new(source, target, position, options)?;
    let (source_buckets, lake_buckets, lake_rows) = comparison.buckets().await?;
    let differing = source_buckets.differing(&lake_buckets);
    let mut report = TableReport {
        table: target.name.clone(),
        status: if differing.is_empty() {
            Outcome::Equal
        } else {
            Outcome::Different
        },
        reason: None,
        source_rows: source_buckets.rows(),
        lake_rows,
        differing_buckets: differing.len(),
        keys: Vec::new(),
        mismatched_keys: 0,
        keys_truncated: differing.len() > MAX_BUCKETS_EXAMINED,
        elapsed_ms: 0,
    };
    if differing.is_empty() {
        return Ok(report);
    }
    // Key by key, in the buckets that differ.
    let examined: HashSet<usize> = differing.into_iter().take(MAX_BUCKETS_EXAMINED).collect();
    let differences = comparison.differing_keys(&examined).await?;
    report.mismatched_keys = differences.len() as u64;
    report.keys_truncated |= differences.len() > MAX_KEYS_LISTED;
    for (key, difference) in differences.into_iter().take(MAX_KEYS_LISTED) {
        let key = comparison
            .digester
            .describe_key(&key, &target.schema.arrow)
            .map_err(|source| target.arrow_error(source))?;
        report.keys.push(KeyDifference {
            key: key.into_iter().collect(),
            difference,
        });
    }
    Ok(report)
}

/// One table's comparison: the source snapshot and the lake at a position, both read
/// through the same digester.
struct Comparison<'a> {
    source: &'a Client,
    target: &'a Target,
    position: Lsn,
    options: &'a VerifyOptions,
    digester: Digester,
    /// The names of the compared lake columns.
    compared: Vec<String>,
}

impl<'a> Comparison<'a> {
    /// The comparison of `target` in the snapshot `source` reads with the lake at
    /// `position`.
    fn new(
        source: &'a Client,
        target: &'a Target,
        position: Lsn,
        options: &'a VerifyOptions,
    ) -> Result<Comparison<'a>, VerifyError> {
        let layout = &target.schema.arrow;
        // Excluded columns are in neither the lake nor the comparison.
        let written: Vec<usize> = target
            .schema
            .tuple_columns
            .iter()
            .flatten()
            .copied()
            .collect();
        let digester = Digester::new(layout, &target.key_columns, &written)
            .map_err(|source| target.arrow_error(source))?;
        let compared: Vec<String> = written
            .iter()
            .map(|&i| layout.field(i).name().clone())
            .collect();
        Ok(Comparison {
            source,
            target,
            position,
            options,
            digester,
            compared,
        })
    }

    /// The row hashes of the source and of the lake, each in buckets by key hash, and the
    /// number of keys the lake holds.
    async fn buckets(&self) -> Result<(Buckets, Buckets, u64), VerifyError> {
        let mut source_buckets = Buckets::default();
        read_source(
            self.source,
            self.target,
            &self.digester,
            self.options,
            |_, key_hash, row| {
                source_buckets.add(key_hash, row);
            },
        )
        .await?;
        let mut lake_buckets = Buckets::default();
        let mut lake_rows = 0;
        fold_lake(
            self.target,
            &self.digester,
            &self.compared,
            self.position,
            |_| true,
            |folded| {
                lake_rows += u64::from(folded.row.is_some());
                lake_buckets.add(folded.key_hash, lake_digest(&folded));
            },
        )
        .await?;
        Ok((source_buckets, lake_buckets, lake_rows))
    }

    /// The keys in the `examined` buckets that differ, read again on both sides.
    async fn differing_keys(
        &self,
        examined: &HashSet<usize>,
    ) -> Result<Vec<(OwnedRow, &'static str)>, VerifyError> {
        let mut source_rows: HashMap<OwnedRow, u64> = HashMap::new();
        read_source(
            self.source,
            self.target,
            &self.digester,
            self.options,
            |key, key_hash, row| {
                if examined.contains(&bucket_of(key_hash)) {
                    source_rows.insert(key.clone(), row);
                }
            },
        )
        .await?;
        let mut lake_keys: HashMap<OwnedRow, (Option<u64>, bool)> = HashMap::new();
        fold_lake(
            self.target,
            &self.digester,
            &self.compared,
            self.position,
            |key_hash| examined.contains(&bucket_of(key_hash)),
            |folded| {
                lake_keys.insert(folded.key, (folded.row, folded.duplicated));
            },
        )
        .await?;
        Ok(key_differences(&source_rows, &lake_keys))
    }
}

/// How the keys of the source (row hash by key) and of the lake (row hash, if the key
/// exists, and whether its change log holds a change twice, by key) differ, sorted by
/// key.
fn key_differences(
    source_rows: &HashMap<OwnedRow, u64>,
    lake_keys: &HashMap<OwnedRow, (Option<u64>, bool)>,
) -> Vec<(OwnedRow, &'static str)> {
    let mut differences: Vec<(OwnedRow, &'static str)> = Vec::new();
    for (key, (lake, duplicated)) in lake_keys {
        let source = source_rows.get(key);
        let difference = match (source, lake) {
            _ if *duplicated => Some("duplicated_change"),
            (None, Some(_)) => Some("not_in_source"),
            (Some(_), None) => Some("missing_in_lake"),
            (Some(source), Some(lake)) if source != lake => Some("values_differ"),
            _ => None,
        };
        if let Some(difference) = difference {
            differences.push((key.clone(), difference));
        }
    }
    for key in source_rows.keys() {
        if !lake_keys.contains_key(key) {
            differences.push((key.clone(), "missing_in_lake"));
        }
    }
    differences.sort_by(|a, b| a.0.cmp(&b.0));
    differences
}

/// Reads the table in the source snapshot and hands every row's key, key hash and row
/// hash to `each`.
async fn read_source(
    client: &Client,
    target: &Target,
    digester: &Digester,
    options: &VerifyOptions,
    mut each: impl FnMut(&OwnedRow, u64, u64),
) -> Result<(), VerifyError> {
    let query_err = |what| {
        let table = target.name.clone();
        move |source| VerifyError::Query {
            table,
            what,
            source,
        }
    };
    let stream = client
        .copy_out(&snapshot::copy_sql(&target.schema, None, None))
        .await
        .map_err(query_err("starting COPY"))?;
    let mut stream = std::pin::pin!(stream);
    let mut batch = TableBatch::new(target.schema.clone());
    let mut rows = BinaryRows::new(target.schema.tuple_columns.len());
    let meta = ChangeMeta {
        op: Op::Read,
        lsn: Lsn::ZERO,
        seq: 0,
        commit_ts_micros: 0,
        xid: None,
    };
    let started = Instant::now();
    let mut read: u64 = 0;
    let mut digest = |batch: &RecordBatch| -> Result<(), VerifyError> {
        let digested = digester
            .digest(batch)
            .map_err(|source| VerifyError::Arrow {
                table: target.name.clone(),
                source,
            })?;
        for row in 0..batch.num_rows() {
            each(
                &digested.keys[row],
                digested.key_hashes[row],
                row_hash(&digested.row(row)),
            );
        }
        Ok(())
    };
    while let Some(data) = stream.next().await {
        let data = data.map_err(query_err("reading COPY data"))?;
        rows.feed::<RowError>(&data, |row, fields| {
            batch
                .push_binary_copy(&meta, row, fields)
                .map_err(|e| RowError::Batch(Box::new(e)))
        })
        .map_err(|error| match error {
            RowError::Format(source) => VerifyError::Format {
                table: target.name.clone(),
                source,
            },
            RowError::Batch(error) => (*error).into(),
        })?;
        if batch.len() >= CHUNK_ROWS {
            read += batch.len() as u64;
            digest(&batch.finish()?)?;
            throttle(started, read, options.max_rows_per_second).await;
        }
    }
    rows.finish().map_err(|source| VerifyError::Format {
        table: target.name.clone(),
        source,
    })?;
    if !batch.is_empty() {
        digest(&batch.finish()?)?;
    }
    Ok(())
}

/// What a folded key adds to the lake's buckets: its row's hash, changed when its change
/// log holds a change twice so that it never matches the source.
fn lake_digest(folded: &Folded) -> u64 {
    const DUPLICATED: u64 = 0x9e37_79b9_7f4a_7c15;
    let row = folded.row.unwrap_or(0);
    if folded.duplicated {
        row ^ DUPLICATED
    } else {
        row
    }
}

/// Sleeps as long as reading `read` rows since `started` ran ahead of the rate limit.
async fn throttle(started: Instant, read: u64, limit: Option<u64>) {
    if let Some(limit) = limit.filter(|l| *l > 0) {
        let due = Duration::from_secs_f64(read as f64 / limit as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
}

/// Folds the lake's change log at `position` for the keys `wanted` accepts and hands
/// every key that exists there (or whose change log holds a change twice) to `each`. The keys are
/// split into passes over the files so that one pass holds about [`KEYS_PER_PASS`]
/// changes.
async fn fold_lake(
    target: &Target,
    digester: &Digester,
    compared: &[String],
    position: Lsn,
    wanted: impl Fn(u64) -> bool,
    mut each: impl FnMut(Folded),
) -> Result<(), VerifyError> {
    let layout: SchemaRef = target.schema.arrow.clone();
    let files = target.reader.files()?;
    let changes: u64 = files.iter().map(|f| f.rows.unwrap_or(0)).sum();
    let passes = changes.div_ceil(KEYS_PER_PASS).max(1);
    for pass in 0..passes {
        let in_pass =
            |key_hash: u64| (key_hash / BUCKETS as u64) % passes == pass && wanted(key_hash);
        let mut fold = Fold::new(position.as_i64(), compared);
        for file in &files {
            for batch in target.reader.batches(file, &layout).await? {
                fold.add(&batch?, &layout, digester, in_pass)
                    .map_err(|source| VerifyError::Arrow {
                        table: target.name.clone(),
                        source,
                    })?;
            }
        }
        for folded in fold.finish() {
            each(folded);
        }
    }
    Ok(())
}
