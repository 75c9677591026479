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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, new_null_array};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use deltalake_core::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake_core::kernel::{
    Action, Add, Metadata, MetadataExt, Protocol, Remove, StructType, contains_timestampntz,
};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter};
use deltalake_core::{DeltaTable, TableProperty};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use url::Url;

use super::layout::table_location;
use super::lease;
use super::store::{Lake, LakeError};
use crate::lsn::Lsn;
use crate::schema::widen_array;
use commit::{Commit, Committed};

pub(super) mod commit;
pub(super) mod compact;
mod encoding;
pub(super) mod reader;
mod spool;
mod vacuum;

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

/// The actions of a schema change not yet committed.
struct StagedSchema {
    arrow: SchemaRef,
    metadata: Metadata,
    /// A protocol upgrade the new columns need (timestamp without time zone).
    protocol: Option<Protocol>,
}

/// The committed files replaced by rewritten ones (a widened column), not yet committed.
struct Rewrite {
    /// The committed files, removed with `dataChange: false`.
    removes: Vec<Remove>,
    /// Their rewritten copies in the wider layout, added with `dataChange: false`.
    adds: Vec<Add>,
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
        if exists {
            table.load().await.map_err(delta_err)?;
            let snapshot = table.snapshot().map_err(delta_err)?;
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
                    table: format!("{namespace}.{name}"),
                    location: location.to_string(),
                    recorded,
                    current: source_oid,
                });
            }
        } else {
            let delta_schema: StructType = arrow_schema.as_ref().try_into_kernel().map_err(
                |e: arrow::error::ArrowError| LakeError::SchemaMismatch {
                    table: location.to_string(),
                    reason: e.to_string(),
                },
            )?;
            let options = lake.options();
            table = CreateBuilder::new()
                .with_log_store(log_store.clone())
                .with_table_name(format!("{namespace}.{name}"))
                .with_comment(format!(
                    "change log of postgres table {namespace}.{name}, written by pg2lake"
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
                .map_err(delta_err)?;
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

    /// Changes the table's layout to `arrow_schema` from the next commit on: files
    /// written so far are sealed with the old layout, a `metaData` action with the new
    /// schema (same table id, configuration and partition columns) is staged for the next
    /// data commit, and later writes use the new layout. `arrow_schema` must keep every
    /// column of the old one, with its type or a type it widens to exactly (the lake
    /// layout only grows); a widened column rewrites the table's files (see the module
    /// docs).
    pub async fn evolve(&mut self, arrow_schema: SchemaRef) -> Result<(), LakeError> {
        let location = self.location.clone();
        let mismatch = |reason: String| LakeError::SchemaMismatch {
            table: location.to_string(),
            reason,
        };
        let delta_schema: StructType = arrow_schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e: arrow::error::ArrowError| mismatch(e.to_string()))?;
        self.seal().await?;
        let delta_err = |e: deltalake_core::DeltaTableError| LakeError::delta(&location, e);
        let snapshot = self.table.snapshot().map_err(delta_err)?;
        let metadata = self
            .current_metadata()?
            .with_schema(&delta_schema)
            .map_err(|e| delta_err(e.into()))?;
        let protocol = upgraded_protocol(snapshot.protocol(), &delta_schema, &metadata)
            .map_err(|e| mismatch(format!("cannot upgrade the table protocol: {e}")))?;
        let configuration = metadata.configuration().clone();
        let before = self.arrow_schema()?;
        let widened = before.fields().iter().any(|old| {
            arrow_schema
                .field_with_name(old.name())
                .is_ok_and(|new| new.data_type() != old.data_type())
        });
        self.writer = self
            .writer_for(&delta_schema, configuration.clone(), self.date_statistics)
            .await?;
        if widened {
            self.rewrite_for(&arrow_schema, &delta_schema, configuration)
                .await?;
        }
        self.staged_schema = Some(StagedSchema {
            arrow: arrow_schema,
            metadata,
            protocol,
        });
        Ok(())
    }

    /// The table's metadata with a staged change applied.
    fn current_metadata(&self) -> Result<Metadata, LakeError> {
        if let Some(staged) = &self.staged_schema {
            return Ok(staged.metadata.clone());
        }
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| LakeError::delta(&self.location, e))?;
        Ok(snapshot.metadata().clone())
    }

    /// The value of one of the table's properties (a staged change included).
    pub fn property(&self, key: &str) -> Result<Option<String>, LakeError> {
        Ok(self.current_metadata()?.configuration().get(key).cloned())
    }

    /// Sets a table property from the next commit on, like a schema change (see
    /// [`LakeTable::evolve`]); nothing is staged when it has that value already.
    pub fn set_property(&mut self, key: &str, value: &str) -> Result<(), LakeError> {
        if self.property(key)?.as_deref() == Some(value) {
            return Ok(());
        }
        let metadata = self
            .current_metadata()?
            .add_config_key(key.to_owned(), value.to_owned())
            .map_err(|e| LakeError::delta(&self.location, e.into()))?;
        let arrow = self.arrow_schema()?;
        let protocol = self.staged_schema.take().and_then(|s| s.protocol);
        self.staged_schema = Some(StagedSchema {
            arrow,
            metadata,
            protocol,
        });
        Ok(())
    }

    /// Sets the columns without statistics ([`crate::privacy::NO_STATISTICS_PROPERTY`], a
    /// JSON list) like [`LakeTable::set_property`]; files written from now on follow it
    /// (open ones are sealed first).
    pub async fn set_no_statistics(&mut self, list: &str) -> Result<(), LakeError> {
        if self
            .property(crate::privacy::NO_STATISTICS_PROPERTY)?
            .as_deref()
            == Some(list)
        {
            return Ok(());
        }
        self.set_property(crate::privacy::NO_STATISTICS_PROPERTY, list)?;
        self.refresh_writer_properties(self.date_statistics).await
    }

    /// Rewrites every file of the table in the layout `arrow` (a column widened): the
    /// files of the open transaction go through the new writer, the committed ones (or
    /// their rewritten copies, after an earlier widening in the same transaction) into a
    /// rewrite staged for the next commit. One file is read at a time, in batches.
    async fn rewrite_for(
        &mut self,
        arrow: &SchemaRef,
        delta_schema: &StructType,
        configuration: HashMap<String, String>,
    ) -> Result<(), LakeError> {
        // Rows of the open transaction: new rows, so they stay `dataChange: true`. They
        // are counted as pending already.
        let pending_rows = self.pending_rows;
        for add in std::mem::take(&mut self.sealed) {
            let path = Path::from_url_path(&add.path).map_err(|e| self.store_error(e.into()))?;
            self.copy_file(path, &add.partition_values, arrow, None)
                .await?;
        }
        self.pending_rows = pending_rows;
        let (removes, sources) = match self.rewrite.take() {
            Some(earlier) => {
                let sources = earlier
                    .adds
                    .iter()
                    .map(|add| {
                        Path::from_url_path(&add.path)
                            .map(|path| (path, add.partition_values.clone()))
                            .map_err(|e| self.store_error(e.into()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (earlier.removes, sources)
            }
            None => {
                let snapshot = self
                    .table
                    .snapshot()
                    .map_err(|e| LakeError::delta(&self.location, e))?;
                let mut removes = Vec::new();
                let mut sources = Vec::new();
                for file in snapshot.log_data().iter() {
                    sources.push((file.object_store_path(), file.partition_values_map()));
                    removes.push(file.remove_action(false));
                }
                (removes, sources)
            }
        };
        // Rewritten files keep no date statistics: their dates are not looked at here.
        let mut writer = self.writer_for(delta_schema, configuration, false).await?;
        let mut adds = Vec::new();
        let files = sources.len();
        for (path, partition_values) in sources {
            self.copy_file(path, &partition_values, arrow, Some(&mut writer))
                .await?;
            // One rewritten file per source file keeps each rewrite's memory to one file.
            let written = writer
                .flush()
                .await
                .map_err(|e| LakeError::delta(&self.location, e))?;
            adds.extend(written.into_iter().map(|add| Add {
                data_change: false,
                ..add
            }));
        }
        tracing::info!(table = %self.location, files, "rewrote the table's files for a widened column");
        self.rewrite = Some(Rewrite { removes, adds });
        Ok(())
    }

    /// Copies the rows of the Parquet file at `path` (with its partition values) into
    /// `writer`, or into the table's own writer when `None`, in the layout `arrow`:
    /// columns widened, columns the file lacks as nulls, the partition column added.
    async fn copy_file(
        &mut self,
        path: Path,
        partition_values: &HashMap<String, Option<String>>,
        arrow: &SchemaRef,
        mut writer: Option<&mut RecordBatchWriter>,
    ) -> Result<(), LakeError> {
        let batches =
            reader::file_batches(&self.table, &self.location, &path, partition_values, arrow)
                .await?;
        for batch in batches {
            let batch = batch?;
            match writer.as_deref_mut() {
                Some(writer) => writer
                    .write(batch)
                    .await
                    .map_err(|e| LakeError::delta(&self.location, e))?,
                None => self.write(batch).await?,
            }
        }
        Ok(())
    }

    fn store_error(&self, source: object_store::Error) -> LakeError {
        LakeError::Store {
            url: self.location.to_string(),
            source,
        }
    }

    /// A writer for a layout that is not committed yet.
    ///
    /// `RecordBatchWriter` takes its schema from a loaded table, and deltalake-core offers
    /// no way to build one from a schema and an object store directly. So the staged
    /// layout is created as a throwaway in-memory table (same columns, partitioning and
    /// configuration) whose loaded state is paired with this table's log store: the
    /// writer then encodes the new layout and writes into this table's folder.
    async fn writer_for(
        // `&mut`: the future of a method holding `&self` is not `Send` (the writer is not
        // `Sync`), and writer tasks run on any thread.
        &mut self,
        schema: &StructType,
        configuration: HashMap<String, String>,
        date_statistics: bool,
    ) -> Result<RecordBatchWriter, LakeError> {
        writer_for_layout(
            &self.location,
            &self.table,
            schema,
            &[PARTITION_COLUMN],
            configuration,
            self.target_file_size,
            date_statistics,
        )
        .await
    }

    /// Streams `batch` into the table's open Parquet files (one per `date` partition).
    /// Files are sealed once they hold `target_file_rows` rows (or reach the target
    /// size), which frees their buffers; nothing is visible to readers until
    /// [`LakeTable::commit`].
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), LakeError> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        // The writer projects a batch onto its own schema by name and, on a partitioned
        // table, drops columns it does not know: a layout that was not evolved first would
        // lose values silently. Refuse instead.
        let expected = self.writer.arrow_schema();
        let same_names = expected.fields().len() == batch.num_columns()
            && expected
                .fields()
                .iter()
                .zip(batch.schema_ref().fields())
                .all(|(a, b)| a.name() == b.name());
        if !same_names {
            return Err(LakeError::SchemaMismatch {
                table: self.location.to_string(),
                reason: format!(
                    "rows with columns {:?} do not match the table's layout {:?}",
                    field_names(batch.schema_ref()),
                    field_names(&expected)
                ),
            });
        }
        if self.date_statistics && !encoding::dates_fit_statistics(&batch) {
            self.stop_date_statistics().await?;
        }
        self.writer
            .write(batch)
            .await
            .map_err(|e| LakeError::delta(&self.location, e))?;
        self.pending_rows += rows;
        self.open_rows += rows;
        if self.open_rows >= self.target_file_rows {
            self.seal().await?;
        }
        Ok(())
    }

    /// Seals the open files, whose dates all fit statistics, and goes on without date
    /// statistics.
    async fn stop_date_statistics(&mut self) -> Result<(), LakeError> {
        self.refresh_writer_properties(false).await?;
        tracing::debug!(table = %self.location, "a date outside years 1 to 9999: no date statistics from now on");
        Ok(())
    }

    /// Seals the open files and goes on with writer properties for `date_statistics` and
    /// the table's columns without statistics. The writer keeps its layout (a staged one
    /// too): it changes properties only by value, so a writer for the committed layout
    /// stands in during the swap.
    async fn refresh_writer_properties(&mut self, date_statistics: bool) -> Result<(), LakeError> {
        self.seal().await?;
        let stand_in = RecordBatchWriter::for_table(&self.table)
            .map_err(|e| LakeError::delta(&self.location, e))?;
        let writer = std::mem::replace(&mut self.writer, stand_in);
        let properties = encoding::writer_properties(
            &writer.arrow_schema(),
            date_statistics,
            &no_statistics(&self.current_metadata()?),
        );
        self.writer = writer.with_writer_properties(properties);
        self.date_statistics = date_statistics;
        Ok(())
    }

    async fn seal(&mut self) -> Result<(), LakeError> {
        let adds = self
            .writer
            .flush()
            .await
            .map_err(|e| LakeError::delta(&self.location, e))?;
        self.sealed.extend(adds);
        self.open_rows = 0;
        Ok(())
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

    /// Writes the rows of `spool` into the table's open files, like [`LakeTable::write`]:
    /// each batch read back goes through `finish` (which gives it what only the
    /// transaction's end tells: commit position and time, surviving rows) and is conformed
    /// to the table's layout by column name. Then the spool files are deleted. Returns
    /// the rows written.
    pub async fn write_spool(
        &mut self,
        mut spool: Spool,
        mut finish: impl FnMut(&RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError>,
    ) -> Result<usize, LakeError> {
        let location = self.location.clone();
        let arrow_err = |e: arrow::error::ArrowError| LakeError::delta(&location, e.into());
        let mut rows = 0;
        for path in spool.finish().await? {
            for batch in spool.batches(&path).await? {
                let batch = finish(&batch?).map_err(arrow_err)?;
                let layout = self.writer.arrow_schema();
                let batch = conform(&batch, None, &layout).map_err(arrow_err)?;
                rows += batch.num_rows();
                self.write(batch).await?;
            }
        }
        spool.discard().await;
        Ok(rows)
    }

    /// Drops everything written since the last commit (the files stay unreferenced). A
    /// staged schema change stays staged: the writer already uses its layout.
    pub fn abandon_pending(&mut self) {
        self.writer.reset();
        self.sealed.clear();
        self.open_rows = 0;
        self.pending_rows = 0;
    }
}

/// The columns `metadata`'s table writes no statistics of
/// ([`crate::privacy::NO_STATISTICS_PROPERTY`]).
fn no_statistics(metadata: &Metadata) -> Vec<String> {
    crate::privacy::parse_no_statistics(
        metadata
            .configuration()
            .get(crate::privacy::NO_STATISTICS_PROPERTY)
            .map(String::as_str),
    )
}

/// A writer for `table`'s layout, with date statistics when `date_statistics` is set
/// (see [`encoding`]).
pub(super) fn new_writer(
    location: &Url,
    table: &DeltaTable,
    target_file_size: u64,
    date_statistics: bool,
) -> Result<RecordBatchWriter, LakeError> {
    let writer = RecordBatchWriter::for_table(table).map_err(|e| LakeError::delta(location, e))?;
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let properties = encoding::writer_properties(
        &writer.arrow_schema(),
        date_statistics,
        &no_statistics(snapshot.metadata()),
    );
    Ok(writer
        .with_writer_properties(properties)
        .with_target_file_size(target_file_size))
}

/// A writer into `table`'s folder for a layout that is not committed yet.
///
/// `RecordBatchWriter` takes its schema from a loaded table, and deltalake-core offers no
/// way to build one from a schema and an object store directly. So the layout is created
/// as a throwaway in-memory table (same columns, partitioning and configuration) whose
/// loaded state is paired with `table`'s log store: the writer then encodes the new
/// layout and writes into `table`'s folder.
pub(super) async fn writer_for_layout(
    location: &Url,
    table: &DeltaTable,
    schema: &StructType,
    partition_columns: &[&str],
    configuration: HashMap<String, String>,
    target_file_size: u64,
    date_statistics: bool,
) -> Result<RecordBatchWriter, LakeError> {
    let staged = CreateBuilder::new()
        .with_log_store(DeltaTable::new_in_memory().log_store())
        .with_columns(schema.fields().cloned())
        .with_partition_columns(partition_columns.iter().copied())
        .with_configuration(configuration.into_iter().map(|(k, v)| (k, Some(v))))
        .with_raise_if_key_not_exists(false)
        .await
        .map_err(|e| LakeError::delta(location, e))?;
    let mut shadow = DeltaTable::new(table.log_store());
    shadow.state = staged.state;
    new_writer(location, &shadow, target_file_size, date_statistics)
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

/// Days since 1970-01-01 of a file's `date` partition value (`YYYY-MM-DD`).
fn partition_date(partition_values: &HashMap<String, Option<String>>) -> Option<i32> {
    let value = partition_values.get(PARTITION_COLUMN)?.as_deref()?;
    let date = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((date - epoch).num_days()).ok()
}

/// `batch`, read from a file, in the layout `arrow`: each column by name, widened where
/// its type grew (exact; see `schema::widen`), a column the file lacks as nulls, and the
/// partition column as `day` when given (a data file does not store it).
pub(super) fn conform(
    batch: &RecordBatch,
    day: Option<i32>,
    arrow: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let rows = batch.num_rows();
    let columns = arrow
        .fields()
        .iter()
        .map(|field| -> Result<ArrayRef, arrow::error::ArrowError> {
            if let Some(day) = day
                && field.name() == PARTITION_COLUMN
                && field.data_type() == &DataType::Date32
            {
                return Ok(Arc::new(Date32Array::from(vec![day; rows])));
            }
            match batch.column_by_name(field.name()) {
                Some(column) => widen_array(column, field.data_type()),
                None => Ok(new_null_array(field.data_type(), rows)),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(arrow.clone(), columns)
}

fn field_names(schema: &SchemaRef) -> Vec<&str> {
    schema.fields().iter().map(|f| f.name().as_str()).collect()
}

/// The protocol a table needs once its schema is `schema`, when `current` does not
/// suffice: a timestamp-without-time-zone column needs the `timestampNtz` reader and
/// writer feature (as `CreateBuilder` sets for a new table). `None` when nothing changes.
///
/// Mirrors deltalake-core's own upgrade (its `ProtocolExt` is crate-private): table
/// features need reader version 3 and writer version 7, and a legacy writer version 2
/// table's `appendOnly` becomes an explicit feature. `invariants` is not listed: pg2lake
/// never sets column invariants, and this writer build cannot enforce them.
pub(super) fn upgraded_protocol(
    current: &Protocol,
    schema: &StructType,
    metadata: &Metadata,
) -> Result<Option<Protocol>, serde_json::Error> {
    const NTZ: &str = "timestampNtz";
    if !contains_timestampntz(schema.fields()) {
        return Ok(None);
    }
    let mut value = serde_json::to_value(current)?;
    let has = |value: &serde_json::Value, key: &str| {
        value[key]
            .as_array()
            .is_some_and(|features| features.iter().any(|f| f == NTZ))
    };
    if has(&value, "readerFeatures") && has(&value, "writerFeatures") {
        return Ok(None);
    }
    let features = |value: &serde_json::Value, key: &str| -> Vec<serde_json::Value> {
        value[key].as_array().cloned().unwrap_or_default()
    };
    let mut reader = features(&value, "readerFeatures");
    let mut writer = features(&value, "writerFeatures");
    let legacy_writer = current.min_writer_version() < 7;
    let append_only = metadata
        .configuration()
        .get("delta.appendOnly")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if legacy_writer && current.min_writer_version() >= 2 && append_only {
        writer.push(serde_json::json!("appendOnly"));
    }
    for list in [&mut reader, &mut writer] {
        if !list.iter().any(|f| f == NTZ) {
            list.push(serde_json::json!(NTZ));
        }
    }
    value["minReaderVersion"] = serde_json::json!(3);
    value["minWriterVersion"] = serde_json::json!(7);
    value["readerFeatures"] = serde_json::Value::Array(reader);
    value["writerFeatures"] = serde_json::Value::Array(writer);
    serde_json::from_value(value).map(Some)
}

#[cfg(test)]
mod tests;
