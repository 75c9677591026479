//! A Delta table opened for reading only (`status`, `verify`): never created, never
//! written, no writer allocated.
//!
//! ```text
//!  open ─► committed layout, txn position ─► files() ─► batches(file): the file's rows in
//!                                                      the table's layout (missing columns
//!                                                      null, widened columns widened, the
//!                                                      date partition filled in)
//! ```

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake_core::DeltaTable;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use url::Url;

use super::{
    PARTITION_COLUMN, REWRITE_BATCH_ROWS, committed_schema, conform, partition_date,
    read_committed_lsn,
};
use crate::lake::layout::table_location;
use crate::lake::store::{Lake, LakeError};
use crate::lsn::Lsn;

/// One data file of the current version.
#[derive(Debug, Clone)]
pub struct DataFile {
    path: Path,
    partition_values: HashMap<String, Option<String>>,
    /// Rows in the file, when its statistics say.
    pub rows: Option<u64>,
}

/// A Delta table loaded at its latest version, for reading.
pub struct LakeReader {
    location: Url,
    table: DeltaTable,
}

impl std::fmt::Debug for LakeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeReader")
            .field("location", &self.location.as_str())
            .field("version", &self.version())
            .finish()
    }
}

impl LakeReader {
    /// Loads the latest version of the Delta table of `namespace.name`; `None` when the
    /// lake has no such table.
    pub async fn open(
        lake: &Lake,
        namespace: &str,
        name: &str,
    ) -> Result<Option<LakeReader>, LakeError> {
        LakeReader::open_at(lake, table_location(lake.root(), namespace, name)).await
    }

    /// Loads the latest version of the Delta table at `location` (a change log or a
    /// mirror); `None` when there is none.
    pub async fn open_at(lake: &Lake, location: Url) -> Result<Option<LakeReader>, LakeError> {
        if !lake.table_exists(&location).await? {
            return Ok(None);
        }
        let table = lake.load_table(&location).await?;
        Ok(Some(LakeReader { location, table }))
    }

    /// A table property (`None` when the table has none of that name).
    pub fn property(&self, key: &str) -> Result<Option<String>, LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| LakeError::delta(&self.location, e))?;
        Ok(snapshot.metadata().configuration().get(key).cloned())
    }

    /// The table's location.
    pub fn location(&self) -> &Url {
        &self.location
    }

    /// The Delta version loaded.
    pub fn version(&self) -> Option<i64> {
        super::commit::loaded_version(&self.table)
    }

    /// The highest source commit LSN the application `app_id` (a slot) committed.
    pub async fn committed_lsn(&self, app_id: &str) -> Result<Option<Lsn>, LakeError> {
        read_committed_lsn(&self.location, &self.table, app_id).await
    }

    /// The committed layout.
    pub fn arrow_schema(&self) -> Result<SchemaRef, LakeError> {
        committed_schema(&self.location, &self.table)
    }

    /// The data files of the loaded version.
    pub fn files(&self) -> Result<Vec<DataFile>, LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| LakeError::delta(&self.location, e))?;
        Ok(snapshot
            .log_data()
            .iter()
            .map(|file| DataFile {
                path: file.object_store_path(),
                partition_values: file.partition_values_map(),
                rows: file.num_records().and_then(|n| u64::try_from(n).ok()),
            })
            .collect())
    }

    /// The rows of `file` in the layout `layout`, a batch at a time (see [`file_batches`]).
    pub async fn batches(
        &self,
        file: &DataFile,
        layout: &SchemaRef,
    ) -> Result<impl Iterator<Item = Result<RecordBatch, LakeError>> + use<>, LakeError> {
        file_batches(
            &self.table,
            &self.location,
            &file.path,
            &file.partition_values,
            layout,
        )
        .await
    }
}

/// The rows of the data file at `path` of `table`, with its `partition_values`, in the
/// layout `layout` (missing columns null, widened columns widened, the date partition
/// filled in when the file has one), a batch at a time. The whole file is fetched first (a data file is at most
/// about its target size), and decoded as the batches are taken.
pub(in crate::lake) async fn file_batches(
    table: &DeltaTable,
    location: &Url,
    path: &Path,
    partition_values: &HashMap<String, Option<String>>,
    layout: &SchemaRef,
) -> Result<impl Iterator<Item = Result<RecordBatch, LakeError>> + use<>, LakeError> {
    let location = location.clone();
    let store_err = |source| LakeError::Store {
        url: location.to_string(),
        source,
    };
    let bytes = table
        .object_store()
        .get(path)
        .await
        .map_err(store_err)?
        .bytes()
        .await
        .map_err(store_err)?;
    // A change-log file's date partition is filled in; a file of an unpartitioned table
    // (a mirror) has none.
    let day = match partition_values.get(PARTITION_COLUMN) {
        None => None,
        Some(_) => {
            Some(
                partition_date(partition_values).ok_or_else(|| LakeError::SchemaMismatch {
                    table: location.to_string(),
                    reason: format!("a data file has no valid {PARTITION_COLUMN} partition value"),
                })?,
            )
        }
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|builder| builder.with_batch_size(REWRITE_BATCH_ROWS).build())
        .map_err(|e| LakeError::delta(&location, e.into()))?;
    let layout = layout.clone();
    Ok(reader.map(move |batch| {
        batch
            .and_then(|batch| conform(&batch, day, &layout))
            .map_err(|e| LakeError::delta(&location, e.into()))
    }))
}
