//! One Delta table: open or create it, stream record batches into Parquet files, commit
//! them with the `txn` action that records how far the source has been applied.
//!
//! Schema changes ([`LakeTable::evolve`]) are staged and committed *with* the next data
//! commit, so the log never shows a layout before the rows that need it:
//!
//! ```text
//!  write(old layout) ─► evolve(new layout) ─► write(new layout) ─► commit(lsn)
//!    files A            seal A; stage metaData;    files B           one version: metaData
//!                       new writer for B                             (+ protocol) + add A, B + txn
//! ```
//!
//! Files A keep the old layout; that is valid because every source column is nullable
//! and readers resolve Parquet columns by name, reading the missing ones as null.
//!
//! A layout in which a column's type widens (`integer` → `long`, see
//! `schema::widen`) cannot keep files of the narrower physical type: Delta's
//! `typeWidening` table feature would allow that, but deltalake-core refuses to commit to
//! such a table and the Python reader refuses to read it. So the table is rewritten in
//! the same version as the schema change:
//!
//! ```text
//!  evolve(wider layout):  committed files C ──read, widen──► C' (dataChange false)
//!                         sealed files A    ──read, widen──► new writer (rows of the open transaction)
//!  commit(lsn):           one version: metaData + remove C + add C' + add A', B + txn
//! ```
//!
//! `remove`/`add` of C with `dataChange: false` is what OPTIMIZE writes: the rows are the
//! same, so append-only tables and streaming readers accept it. Older versions still
//! reference C, so time travel shows each version with the type its rows were written
//! with (until VACUUM removes C).
//!
//! The parts: this file opens the table and commits (the `txn`, a staged change, a
//! rewrite) through `commit`'s loop; `files` is the file writer; `staged` holds layout
//! and property changes and the widening rewrite; `spool` keeps streamed transactions;
//! `compact` and `vacuum` are maintenance over a loaded table; `reader` is the read-only
//! handle (`status`, `verify`, `forget`).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use deltalake_core::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake_core::kernel::{Action, Add, StructType};
use deltalake_core::logstore::LogStore;
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::writer::RecordBatchWriter;
use deltalake_core::{DeltaTable, TableProperty};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use url::Url;

use super::layout::table_location;
use super::lease;
use super::store::{Lake, LakeError};
use crate::lsn::Lsn;
use commit::{Commit, Committed};

pub(super) mod commit;
pub(super) mod compact;
mod encoding;
mod files;
pub(super) mod reader;
mod spool;
mod staged;
mod vacuum;

pub(super) use files::{conform, new_writer, partition_date, writer_for_layout};
pub(super) use staged::upgraded_protocol;
use staged::{Rewrite, StagedSchema};

pub use compact::{CompactionOptions, CompactionReport, FileStats, compact, file_stats};
pub use reader::{DataFile, LakeReader};
pub use spool::{SPOOL_FOLDER, Spool, SpoolStore};
pub use vacuum::{VacuumReport, vacuum};

/// The table property recording the source table's relation OID (see [`LakeTable::open`]).
pub const SOURCE_OID_PROPERTY: &str = "pg2lake.source.relationOid";
/// The table property recording which source changes the table captures: every change,
/// or only inserts and truncates for a source table without a replica identity (see
/// `pg::publication`).
pub const SOURCE_CHANGES_PROPERTY: &str = "pg2lake.source.changes";

/// The table property recording the source table's key (its primary key's columns, as a
/// JSON list), which the current-state mirror folds by; absent or empty without one.
pub const SOURCE_KEY_PROPERTY: &str = "pg2lake.source.key";

/// The partition column of every pg2lake table (see the README, The lake).
const PARTITION_COLUMN: &str = "date";
/// Rows per batch read back from a file being rewritten for a widened column.
const REWRITE_BATCH_ROWS: usize = 8192;

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// A new Delta version was written.
    Committed {
        /// The new table version.
        version: i64,
    },
    /// Nothing was pending; no version was written.
    NothingToCommit,
    /// The version was already in the log (a commit whose answer was lost, e.g. a
    /// connection cut after the store accepted it).
    AlreadyCommitted,
}

/// A Delta table being appended to, with the files written since the last commit.
pub struct LakeTable {
    location: Url,
    table: DeltaTable,
    writer: RecordBatchWriter,
    app_id: String,
    /// The relation OID of the source table (see [`LakeTable::open`]).
    source_oid: u32,
    committed: Option<Lsn>,
    /// Files sealed since the last commit, waiting for it.
    sealed: Vec<Add>,
    /// Number and total size of the files the last commit added, for metrics.
    last_commit_files: (u64, u64),
    /// A schema change waiting for the next data commit, and the layout it describes.
    staged_schema: Option<StagedSchema>,
    /// Committed files rewritten for a widened column, waiting for the next data commit.
    rewrite: Option<Rewrite>,
    target_file_size: u64,
    /// Rows in the files still open in the writer.
    open_rows: usize,
    /// Whether the writer gives date columns statistics; off for this handle once a batch holds
    /// a date outside years 1 to 9999 (see [`encoding`]).
    date_statistics: bool,
    pending_rows: usize,
    target_file_rows: usize,
    checkpoint_interval: u64,
}

impl std::fmt::Debug for LakeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeTable")
            .field("location", &self.location.as_str())
            .field("committed", &self.committed)
            .field("pending_rows", &self.pending_rows)
            .finish()
    }
}

impl LakeTable {
    /// Opens the Delta table of `schema.table`, creating it with `arrow_schema` when the
    /// lake has none, and reads back the last LSN this app (slot) committed to it. An
    /// existing table keeps its own layout ([`LakeTable::arrow_schema`]); reconciling it
    /// with the source is [`crate::schema::TableSchema::evolve`]'s job.
    ///
    /// `source_oid` is the source table's relation OID. A new table records it in its
    /// configuration ([`SOURCE_OID_PROPERTY`]); a table that recorded another one was
    /// written from a table that has since been dropped and created again, and opening it
    /// is an error ([`LakeError::SourceReplaced`]).
    pub async fn open(
        lake: &Lake,
        namespace: &str,
        name: &str,
        arrow_schema: SchemaRef,
        app_id: &str,
        source_oid: u32,
    ) -> Result<LakeTable, LakeError> {
        let location = table_location(lake.root(), namespace, name);
        let log_store = lake.log_store(&location)?;
        let delta_err = |e| LakeError::delta(&location, e);
        let mut table = DeltaTable::new(log_store.clone());
        let exists = log_store
            .is_delta_table_location()
            .await
            .map_err(delta_err)?;
        let qualified = format!("{namespace}.{name}");
        if exists {
            table.load().await.map_err(delta_err)?;
            check_source_oid(&location, &table, &qualified, source_oid)?;
        } else {
            table = create_change_log(
                lake,
                &location,
                log_store.clone(),
                &qualified,
                &arrow_schema,
                source_oid,
            )
            .await?;
            tracing::info!(table = %location, "created delta table");
        }
        let committed = read_committed_lsn(&location, &table, app_id).await?;
        let writer = new_writer(&location, &table, lake.options().target_file_size, true)?;
        Ok(LakeTable {
            location,
            table,
            writer,
            app_id: app_id.to_owned(),
            source_oid,
            committed,
            sealed: Vec::new(),
            last_commit_files: (0, 0),
            staged_schema: None,
            rewrite: None,
            target_file_size: lake.options().target_file_size,
            open_rows: 0,
            date_statistics: true,
            pending_rows: 0,
            target_file_rows: lake.options().target_file_rows.max(1),
            checkpoint_interval: lake.options().checkpoint_interval.max(1),
        })
    }

    /// The relation OID of the source table it is written from.
    pub fn source_oid(&self) -> u32 {
        self.source_oid
    }

    /// The table's location.
    pub fn location(&self) -> &Url {
        &self.location
    }

    /// The highest source commit LSN whose changes are committed in this table, if any.
    /// Source transactions at or below it must be skipped on replay.
    pub fn committed_lsn(&self) -> Option<Lsn> {
        self.committed
    }

    /// The Delta version currently loaded.
    pub fn version(&self) -> Option<i64> {
        commit::loaded_version(&self.table)
    }

    /// Rows written since the last commit.
    pub fn pending_rows(&self) -> usize {
        self.pending_rows
    }

    /// The table's layout as Arrow: a staged schema change if there is one, else the
    /// committed schema.
    pub fn arrow_schema(&self) -> Result<SchemaRef, LakeError> {
        if let Some(staged) = &self.staged_schema {
            return Ok(staged.arrow.clone());
        }
        committed_schema(&self.location, &self.table)
    }

    /// Seals the files written since the last commit and commits them as one Delta
    /// version whose `txn` action records `lsn`, the commit LSN of the last source
    /// transaction they contain. A staged schema change goes into the same version.
    ///
    /// If the store reports that the version already exists and the log shows our own
    /// `txn` at `lsn` or beyond, the earlier attempt landed and this is not an error.
    pub async fn commit(&mut self, lsn: Lsn) -> Result<CommitOutcome, LakeError> {
        if self.pending_rows == 0 {
            return Ok(CommitOutcome::NothingToCommit);
        }
        self.commit_through(lsn).await
    }

    /// Like [`LakeTable::commit`], but with nothing pending it still commits a version,
    /// holding only the `txn` action: the table is then known to hold every change up to
    /// `lsn` (an initial load that found the table empty), and its changes stream from
    /// there instead of the table being copied again.
    pub async fn commit_position(&mut self, lsn: Lsn) -> Result<CommitOutcome, LakeError> {
        self.commit_through(lsn).await
    }

    async fn commit_through(&mut self, lsn: Lsn) -> Result<CommitOutcome, LakeError> {
        self.seal().await?;
        let mut actions: Vec<Action> = Vec::with_capacity(self.sealed.len() + 2);
        if let Some(staged) = &self.staged_schema {
            actions.push(Action::Metadata(staged.metadata.clone()));
            if let Some(protocol) = &staged.protocol {
                actions.push(Action::Protocol(protocol.clone()));
            }
        }
        if let Some(rewrite) = &self.rewrite {
            actions.extend(rewrite.removes.iter().cloned().map(Action::Remove));
            actions.extend(rewrite.adds.iter().cloned().map(Action::Add));
        }
        self.last_commit_files = (
            self.sealed.len() as u64,
            self.sealed
                .iter()
                .map(|add| u64::try_from(add.size).unwrap_or(0))
                .sum(),
        );
        actions.extend(self.sealed.drain(..).map(Action::Add));
        // Every file is uploaded; the version that references them is not written yet.
        crate::crash_point!("lake::before_commit");
        let commit = Commit {
            actions,
            operation: DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![PARTITION_COLUMN.to_owned()]),
                predicate: None,
            },
            txn: Some((self.app_id.clone(), lsn.as_i64())),
            info: vec![("pg2lake.lsn".to_owned(), serde_json::json!(lsn.to_string()))],
            checkpoint_interval: self.checkpoint_interval,
        };
        let result = commit::commit(&self.location, &mut self.table, commit).await;
        self.pending_rows = 0;
        let outcome = match result? {
            Committed::Version(version) => CommitOutcome::Committed { version },
            // The staged metaData action (and rewrite) was part of the version that landed.
            Committed::Landed => CommitOutcome::AlreadyCommitted,
        };
        self.committed = Some(lsn);
        self.rewrite = None;
        if let Some(staged) = self.staged_schema.take() {
            tracing::debug!(table = %self.location, columns = ?field_names(&staged.arrow), "committed schema change");
        }
        Ok(outcome)
    }

    /// Number and total bytes of the Parquet files the last commit added.
    pub fn last_commit_files(&self) -> (u64, u64) {
        self.last_commit_files
    }

    /// Deletes the table's Parquet files that no commit references: what a writer that was
    /// killed between writing and committing left behind. Returns how many it deleted.
    ///
    /// Only for a process that is the table's sole streaming writer (the holder of the
    /// slot), and before it writes anything itself: another writer's files are
    /// unreferenced too until its commit, and would be deleted under it. Compactors hold
    /// the table's maintenance lease while they write; nothing is deleted then. A file stays while the current version
    /// or a removal still in the log (a widening rewrite's) references it.
    pub async fn remove_uncommitted_files(&self) -> Result<usize, LakeError> {
        let delta_err = |e| LakeError::delta(&self.location, e);
        let snapshot = self.table.snapshot().map_err(delta_err)?;
        let mut committed: HashSet<String> = snapshot
            .log_data()
            .into_iter()
            .map(|add| add.object_store_path().to_string())
            .collect();
        // Files a widening rewrite removed stay referenced by the versions before it, for
        // time travel (kept as long as the log, see delta.deletedFileRetentionDuration).
        let log_store = self.table.log_store();
        let mut tombstones = snapshot.all_tombstones(log_store.as_ref());
        while let Some(tombstone) = tombstones.next().await {
            let tombstone = tombstone.map_err(delta_err)?;
            committed.insert(Path::from(tombstone.path().as_ref()).to_string());
        }
        drop(tombstones);
        let store = log_store.object_store(None);
        // A compactor (of this process or a `pg2lake maintain` job) writes files no commit
        // references yet, too: while one holds the table's lease, leave them all to VACUUM.
        if lease::is_held(store.as_ref())
            .await
            .map_err(|e| self.store_error(e))?
        {
            tracing::info!(table = %self.location, "maintenance in progress; uncommitted files are left to VACUUM");
            return Ok(0);
        }
        let mut listing = store.list(None);
        let mut orphans = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| delta_err(e.into()))?;
            let path = meta.location.to_string();
            if path.ends_with(".parquet")
                && !path.starts_with("_delta_log/")
                && !committed.contains(&path)
            {
                orphans.push(meta.location);
            }
        }
        for path in &orphans {
            match store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(delta_err(e.into())),
            }
        }
        if !orphans.is_empty() {
            tracing::info!(table = %self.location, files = orphans.len(), "removed data files no commit references");
        }
        Ok(orphans.len())
    }

    /// Where the spools of the source transactions that Postgres streams before they
    /// commit are kept (see [`Spool`]).
    pub fn spools(&self) -> SpoolStore {
        SpoolStore::new(self.table.object_store(), self.location.clone())
    }
}

/// The committed layout of `table` as Arrow.
pub(super) fn committed_schema(location: &Url, table: &DeltaTable) -> Result<SchemaRef, LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let schema: Schema =
        snapshot
            .schema()
            .as_ref()
            .try_into_arrow()
            .map_err(|e: arrow::error::ArrowError| LakeError::SchemaMismatch {
                table: location.to_string(),
                reason: e.to_string(),
            })?;
    Ok(Arc::new(schema))
}

/// Errors when the loaded `table` recorded a source relation OID other than
/// `source_oid`: it was written from a table that has since been dropped and created
/// again.
fn check_source_oid(
    location: &Url,
    table: &DeltaTable,
    qualified: &str,
    source_oid: u32,
) -> Result<(), LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let recorded = snapshot
        .metadata()
        .configuration()
        .get(SOURCE_OID_PROPERTY)
        .and_then(|oid| oid.parse::<u32>().ok());
    // Tables created before the property existed have none: nothing to compare.
    if let Some(recorded) = recorded
        && recorded != source_oid
    {
        return Err(LakeError::SourceReplaced {
            table: qualified.to_owned(),
            location: location.to_string(),
            recorded,
            current: source_oid,
        });
    }
    Ok(())
}

/// Creates the change-log table of the source table `qualified` (`schema.name`) with
/// the layout `arrow_schema`, recording `source_oid`.
async fn create_change_log(
    lake: &Lake,
    location: &Url,
    log_store: Arc<dyn LogStore>,
    qualified: &str,
    arrow_schema: &SchemaRef,
    source_oid: u32,
) -> Result<DeltaTable, LakeError> {
    let delta_schema: StructType =
        arrow_schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e: arrow::error::ArrowError| LakeError::SchemaMismatch {
                table: location.to_string(),
                reason: e.to_string(),
            })?;
    let options = lake.options();
    CreateBuilder::new()
        .with_log_store(log_store)
        .with_table_name(qualified)
        .with_comment(format!(
            "change log of postgres table {qualified}, written by pg2lake"
        ))
        .with_columns(delta_schema.fields().cloned())
        .with_partition_columns([PARTITION_COLUMN])
        .with_configuration_property(
            TableProperty::CheckpointInterval,
            Some(options.checkpoint_interval.to_string()),
        )
        .with_configuration_property(
            TableProperty::LogRetentionDuration,
            Some(format!(
                "interval {} seconds",
                options.log_retention.as_secs()
            )),
        )
        // Files compaction (or a widening rewrite) removes stay this long for
        // time travel, then VACUUM deletes them (`lake.retention`).
        .with_configuration_property(
            TableProperty::DeletedFileRetentionDuration,
            Some(format!("interval {} seconds", options.retention.as_secs())),
        )
        .with_configuration_property(TableProperty::AppendOnly, Some("true"))
        .with_configuration([(SOURCE_OID_PROPERTY, Some(source_oid.to_string()))])
        // The source property is pg2lake's own, not a Delta table property.
        .with_raise_if_key_not_exists(false)
        .await
        .map_err(|e| LakeError::delta(location, e))
}

async fn read_committed_lsn(
    location: &Url,
    table: &DeltaTable,
    app_id: &str,
) -> Result<Option<Lsn>, LakeError> {
    match commit::transaction_version(location, table, app_id).await? {
        None => Ok(None),
        Some(v) if v >= 0 => Ok(Some(Lsn::from_i64(v))),
        Some(v) => Err(LakeError::InvalidTxnVersion {
            table: location.to_string(),
            version: v,
        }),
    }
}

fn field_names(schema: &SchemaRef) -> Vec<&str> {
    schema.fields().iter().map(|f| f.name().as_str()).collect()
}

#[cfg(test)]
mod tests;
