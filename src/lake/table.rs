//! One Delta table: open or create it, stream record batches into Parquet files, commit
//! them with the `txn` action that records how far the source has been applied.

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, StructType, Transaction};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter};
use deltalake_core::{DeltaTable, TableProperty};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use url::Url;

use super::layout::table_location;
use super::store::{Lake, LakeError};
use crate::lsn::Lsn;

/// Rows per Parquet row group: large enough for good compression and scans.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Bytes per Parquet row group: an open file buffers one row group in memory, so this
/// bounds the writer's memory per open partition whatever the row width.
const ROW_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// zstd level 3: zstd's own default, a good speed/size balance for change logs.
const ZSTD_LEVEL: i32 = 3;
/// The partition column of every pg2lake table (see DESIGN.md, lake layout).
const PARTITION_COLUMN: &str = "date";

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
    committed: Option<Lsn>,
    /// Files sealed since the last commit, waiting for it.
    sealed: Vec<Add>,
    /// Rows in the files still open in the writer.
    open_rows: usize,
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
    /// lake has none, and reads back the last LSN this app (slot) committed to it.
    pub async fn open(
        lake: &Lake,
        namespace: &str,
        name: &str,
        arrow_schema: SchemaRef,
        app_id: &str,
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
            check_schema(&location, &table, &arrow_schema)?;
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
                .with_configuration_property(TableProperty::AppendOnly, Some("true"))
                .await
                .map_err(delta_err)?;
            tracing::info!(table = %location, "created delta table");
        }
        let committed = read_committed_lsn(&location, &table, app_id).await?;
        let writer = new_writer(&location, &table, lake.options().target_file_size)?;
        Ok(LakeTable {
            location,
            table,
            writer,
            app_id: app_id.to_owned(),
            committed,
            sealed: Vec::new(),
            open_rows: 0,
            pending_rows: 0,
            target_file_rows: lake.options().target_file_rows.max(1),
            checkpoint_interval: lake.options().checkpoint_interval.max(1),
        })
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
        self.table.version().and_then(|v| i64::try_from(v).ok())
    }

    /// Rows written since the last commit.
    pub fn pending_rows(&self) -> usize {
        self.pending_rows
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
    /// transaction they contain.
    ///
    /// If the store reports that the version already exists and the log shows our own
    /// `txn` at `lsn` or beyond, the earlier attempt landed and this is not an error.
    pub async fn commit(&mut self, lsn: Lsn) -> Result<CommitOutcome, LakeError> {
        if self.pending_rows == 0 {
            return Ok(CommitOutcome::NothingToCommit);
        }
        self.seal().await?;
        let actions: Vec<Action> = self.sealed.drain(..).map(Action::Add).collect();
        let result = self.commit_actions(actions, lsn).await;
        match result {
            Ok(version) => {
                self.committed = Some(lsn);
                self.pending_rows = 0;
                Ok(CommitOutcome::Committed { version })
            }
            Err(err) => {
                // Find out whether the commit landed after all: reload and read our txn.
                self.table
                    .update_state()
                    .await
                    .map_err(|e| LakeError::delta(&self.location, e))?;
                let now = read_committed_lsn(&self.location, &self.table, &self.app_id).await?;
                if now.is_some_and(|c| c >= lsn) {
                    self.committed = now;
                    self.pending_rows = 0;
                    Ok(CommitOutcome::AlreadyCommitted)
                } else {
                    self.pending_rows = 0;
                    Err(err)
                }
            }
        }
    }

    async fn commit_actions(&mut self, actions: Vec<Action>, lsn: Lsn) -> Result<i64, LakeError> {
        let location = self.location.clone();
        let delta_err = |e| LakeError::delta(&location, e);
        let snapshot = self.table.snapshot().map_err(delta_err)?;
        let next_version = snapshot.version() + 1;
        // Log cleanup lists the whole _delta_log: run it only with the checkpoints the
        // post-commit hook writes (every `checkpoint_interval` versions), not per commit.
        let checkpoint_due = (next_version + 1).is_multiple_of(self.checkpoint_interval);
        let txn = Transaction::new_with_last_update(
            &self.app_id,
            lsn.as_i64(),
            Some(chrono::Utc::now().timestamp_millis()),
        );
        let properties = CommitProperties::default()
            .with_application_transaction(txn)
            // A conflicting writer is never expected; one retry handles a lost answer,
            // and the caller reconciles through the txn version either way.
            .with_max_retries(0)
            .with_cleanup_expired_logs(Some(checkpoint_due))
            .with_metadata([
                ("pg2lake.lsn".to_owned(), serde_json::json!(lsn.to_string())),
                (
                    "pg2lake.version".to_owned(),
                    serde_json::json!(env!("CARGO_PKG_VERSION")),
                ),
            ]);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec![PARTITION_COLUMN.to_owned()]),
            predicate: None,
        };
        let finalized = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(delta_err)?;
        let version = i64::try_from(finalized.version()).unwrap_or(i64::MAX);
        self.table.state = Some(finalized.snapshot());
        Ok(version)
    }

    /// Drops everything written since the last commit (the files stay unreferenced).
    pub fn abandon_pending(&mut self) {
        self.writer.reset();
        self.sealed.clear();
        self.open_rows = 0;
        self.pending_rows = 0;
    }
}

fn new_writer(
    location: &Url,
    table: &DeltaTable,
    target_file_size: u64,
) -> Result<RecordBatchWriter, LakeError> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default(),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_created_by(format!("pg2lake {}", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(RecordBatchWriter::for_table(table)
        .map_err(|e| LakeError::delta(location, e))?
        .with_writer_properties(properties)
        .with_target_file_size(target_file_size))
}

async fn read_committed_lsn(
    location: &Url,
    table: &DeltaTable,
    app_id: &str,
) -> Result<Option<Lsn>, LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let version = snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|e| LakeError::delta(location, e))?;
    match version {
        None => Ok(None),
        Some(v) if v >= 0 => Ok(Some(Lsn::from_i64(v))),
        Some(v) => Err(LakeError::InvalidTxnVersion {
            table: location.to_string(),
            version: v,
        }),
    }
}

/// An existing table must hold every column pg2lake writes, with the same types.
fn check_schema(location: &Url, table: &DeltaTable, wanted: &SchemaRef) -> Result<(), LakeError> {
    let mismatch = |reason: String| LakeError::SchemaMismatch {
        table: location.to_string(),
        reason,
    };
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let existing: HashMap<String, _> = snapshot
        .schema()
        .fields()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let wanted_delta: StructType = wanted
        .as_ref()
        .try_into_kernel()
        .map_err(|e: arrow::error::ArrowError| mismatch(e.to_string()))?;
    for field in wanted_delta.fields() {
        match existing.get(field.name()) {
            None => return Err(mismatch(format!("column {} is missing", field.name()))),
            Some(t) if t != field.data_type() => {
                return Err(mismatch(format!(
                    "column {} is {t} in the lake but {} in postgres",
                    field.name(),
                    field.data_type()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::{Date32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::lake::LakeOptions;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("_op", DataType::Utf8, false),
            Field::new("date", DataType::Date32, false),
        ]))
    }

    fn batch(ids: &[i64], day: i32) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(vec!["c"; ids.len()])),
                Arc::new(Date32Array::from(vec![day; ids.len()])),
            ],
        )
        .unwrap()
    }

    fn lake(dir: &std::path::Path) -> Lake {
        Lake::open(LakeOptions {
            url: dir.display().to_string(),
            endpoint: None,
            region: None,
            allow_http: false,
            checkpoint_interval: 2,
            log_retention: Duration::from_secs(3600),
            target_file_size: 1 << 20,
            target_file_rows: 2,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn commit_records_the_lsn_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path());
        let mut table = LakeTable::open(&lake, "public", "t", schema(), "pg2lake:s")
            .await
            .unwrap();
        assert_eq!(table.committed_lsn(), None);
        assert_eq!(
            table.commit(Lsn(5)).await.unwrap(),
            CommitOutcome::NothingToCommit
        );
        table.write(batch(&[1, 2], 20_000)).await.unwrap();
        table.write(batch(&[3], 20_001)).await.unwrap();
        let outcome = table.commit(Lsn(100)).await.unwrap();
        assert_eq!(outcome, CommitOutcome::Committed { version: 1 });
        table.write(batch(&[4], 20_001)).await.unwrap();
        assert_eq!(
            table.commit(Lsn(200)).await.unwrap(),
            CommitOutcome::Committed { version: 2 }
        );
        // Version 1 (0-based count 2) was due for a checkpoint with interval 2.
        assert!(
            dir.path()
                .join("public/t/_delta_log/_last_checkpoint")
                .exists()
        );
        assert!(dir.path().join("public/t/date=2024-10-04").exists());

        let reopened = LakeTable::open(&lake, "public", "t", schema(), "pg2lake:s")
            .await
            .unwrap();
        assert_eq!(reopened.committed_lsn(), Some(Lsn(200)));
        assert_eq!(reopened.version(), Some(2));
        let other_app = LakeTable::open(&lake, "public", "t", schema(), "pg2lake:other")
            .await
            .unwrap();
        assert_eq!(other_app.committed_lsn(), None);
    }

    #[tokio::test]
    async fn abandoned_rows_are_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path());
        let mut table = LakeTable::open(&lake, "public", "t", schema(), "a")
            .await
            .unwrap();
        table.write(batch(&[1], 20_000)).await.unwrap();
        table.abandon_pending();
        assert_eq!(
            table.commit(Lsn(1)).await.unwrap(),
            CommitOutcome::NothingToCommit
        );
        table.write(batch(&[2], 20_000)).await.unwrap();
        table.commit(Lsn(2)).await.unwrap();
        let files: Vec<_> = table.table.get_file_uris().unwrap().collect();
        assert_eq!(files.len(), 1, "{files:?}");
        // Three rows with target_file_rows 2: two sealed files, one commit.
        table.write(batch(&[3, 4], 20_000)).await.unwrap();
        table.write(batch(&[5], 20_000)).await.unwrap();
        assert_eq!(
            table.commit(Lsn(3)).await.unwrap(),
            CommitOutcome::Committed { version: 2 }
        );
        let files: Vec<_> = table.table.get_file_uris().unwrap().collect();
        assert_eq!(files.len(), 3, "{files:?}");
    }

    #[tokio::test]
    async fn schema_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path());
        LakeTable::open(&lake, "public", "t", schema(), "a")
            .await
            .unwrap();
        let other = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("_op", DataType::Utf8, false),
            Field::new("date", DataType::Date32, false),
        ]));
        let err = LakeTable::open(&lake, "public", "t", other, "a")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("column id"), "{err}");
    }
}
