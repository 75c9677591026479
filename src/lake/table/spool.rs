//! The rows of a source transaction that Postgres streams before it commits (pgoutput
//! protocol 2), kept in the lake's store until its end is known.
//!
//! ```text
//!  Stream blocks of xid X ─► Spool::write ─► _pg2lake_spool/X-<id>-<n>.parquet (not in the log)
//!  Stream Commit of X     ─► LakeTable::write_spool: read back a file at a time,
//!                            finish each batch (commit LSN, time, date, ...), write it
//!                            through the table's writer; then delete the spool files
//!  Stream Abort of X      ─► Spool::discard: delete the spool files
//! ```
//!
//! Invariants:
//! - Spool files live under the table's folder but never in its Delta log, so readers
//!   never see them; a process killed with a spool open leaves files that
//!   `LakeTable::remove_uncommitted_files` deletes on the next start (the slot streams the
//!   transaction again from its beginning).
//! - Memory stays bounded: an open spool file buffers at most one row group
//!   ([`ROW_GROUP_BYTES`]), and reading back fetches one file (at most about
//!   [`FILE_BYTES`]) at a time.
//! - A spool file has one layout; rows of another layout (a column added inside the
//!   transaction) start a new file, and reading back conforms each file to the table's
//!   layout by column name.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use url::Url;

use super::encoding::ROW_GROUP_BYTES;
use crate::lake::LakeError;

/// The folder, under a table's root, of the spool files of transactions in progress.
pub const SPOOL_FOLDER: &str = "_pg2lake_spool";

/// Rows per batch read back from a spool file.
const READ_BATCH_ROWS: usize = 8192;
/// Compressed bytes at which a spool file is closed and the next one begun: a file is
/// fetched whole when read back, so this bounds that read's memory.
const FILE_BYTES: usize = 64 * 1024 * 1024;

/// Where a table's spools are kept: the table's store and location.
#[derive(Clone)]
pub struct SpoolStore {
    store: Arc<dyn ObjectStore>,
    location: Url,
}

impl std::fmt::Debug for SpoolStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolStore")
            .field("location", &self.location.as_str())
            .finish()
    }
}

impl SpoolStore {
    /// Spools in `store`, rooted at the table's folder `location`.
    pub(super) fn new(store: Arc<dyn ObjectStore>, location: Url) -> SpoolStore {
        SpoolStore { store, location }
    }

    /// Spools kept in memory, for tests of what streams into a table.
    pub fn in_memory() -> SpoolStore {
        SpoolStore {
            store: Arc::new(object_store::memory::InMemory::new()),
            location: Url::parse("memory:///").expect("a valid URL"),
        }
    }

    /// An empty spool for the rows of the source transaction `xid`, which Postgres
    /// streams before it commits.
    pub fn spool(&self, xid: u32) -> Spool {
        Spool::new(self.store.clone(), self.location.clone(), xid)
    }
}

/// The spooled rows of one in-progress source transaction for one table.
pub struct Spool {
    store: Arc<dyn ObjectStore>,
    location: Url,
    /// `_pg2lake_spool/<xid>-<random>`: the files are `<prefix>-<n>.parquet`.
    prefix: String,
    /// Closed files, in the order they were written.
    files: Vec<Path>,
    open: Option<OpenFile>,
    rows: usize,
}

struct OpenFile {
    writer: AsyncArrowWriter<BufWriter>,
    schema: SchemaRef,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("location", &self.location.as_str())
            .field("prefix", &self.prefix)
            .field("files", &self.files.len())
            .field("rows", &self.rows)
            .finish()
    }
}

impl Spool {
    /// An empty spool for the transaction `xid` in the table at `location`, whose store
    /// `store` is rooted at the table's folder.
    fn new(store: Arc<dyn ObjectStore>, location: Url, xid: u32) -> Spool {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Spool {
            store,
            location,
            prefix: format!("{SPOOL_FOLDER}/{xid}-{}", &id[..12]),
            files: Vec::new(),
            open: None,
            rows: 0,
        }
    }

    /// Rows spooled so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends `batch` to the spool; a batch of another layout than the open file's
    /// closes it and opens the next.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), LakeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.open.as_ref().is_some_and(|open| {
            open.schema != batch.schema() || open.writer.bytes_written() >= FILE_BYTES
        }) {
            self.close().await?;
        }
        if self.open.is_none() {
            let path = Path::from(format!("{}-{}.parquet", self.prefix, self.files.len()));
            let writer = AsyncArrowWriter::try_new(
                BufWriter::new(self.store.clone(), path.clone()),
                batch.schema(),
                Some(spool_properties()),
            )
            .map_err(|e| self.error(e))?;
            self.files.push(path);
            self.open = Some(OpenFile {
                writer,
                schema: batch.schema(),
            });
        }
        let location = self.location.clone();
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| LakeError::SchemaMismatch {
                table: location.to_string(),
                reason: "spool file not open".to_owned(),
            })?;
        open.writer
            .write(batch)
            .await
            .map_err(|e| LakeError::delta(&location, e.into()))?;
        // The writer buffers a row group in memory until told otherwise.
        if open.writer.in_progress_size() >= ROW_GROUP_BYTES {
            open.writer
                .flush()
                .await
                .map_err(|e| LakeError::delta(&location, e.into()))?;
        }
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Closes the open file, if any.
    async fn close(&mut self) -> Result<(), LakeError> {
        if let Some(open) = self.open.take() {
            open.writer.close().await.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Closes the spool and hands out its files in the order they were written.
    pub async fn finish(&mut self) -> Result<Vec<Path>, LakeError> {
        self.close().await?;
        Ok(self.files.clone())
    }

    /// The batches of the spool file `path`: the file is fetched whole (at most about
    /// [`FILE_BYTES`]) and decoded a batch at a time.
    pub async fn batches(
        // `&mut`: a future holding `&self` is not `Send` (the open writer is not `Sync`).
        &mut self,
        path: &Path,
    ) -> Result<impl Iterator<Item = Result<RecordBatch, LakeError>> + use<>, LakeError> {
        let store_error = |source| LakeError::Store {
            url: self.location.to_string(),
            source,
        };
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(store_error)?
            .bytes()
            .await
            .map_err(store_error)?;
        let batches = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| self.error(e))?
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| self.error(e))?;
        let location = self.location.clone();
        Ok(batches.map(move |batch| batch.map_err(|e| LakeError::delta(&location, e.into()))))
    }

    /// Deletes the spool's files (the transaction aborted, or its rows are in the
    /// table's writer now). A file that cannot be deleted is logged and left to the
    /// next start's cleanup.
    pub async fn discard(mut self) {
        // An open writer is dropped unfinished: its upload is abandoned.
        self.open = None;
        for path in &self.files {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => {
                    tracing::warn!(table = %self.location, file = %path, error = %err, "cannot delete a spool file; it is removed on the next start");
                }
            }
        }
    }

    fn error(&self, source: parquet::errors::ParquetError) -> LakeError {
        LakeError::delta(&self.location, source.into())
    }
}

/// Spool files are read once, by pg2lake: no statistics, the fastest zstd level.
fn spool_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::None)
        .set_created_by(format!("pg2lake {}", env!("CARGO_PKG_VERSION")))
        .build()
}
