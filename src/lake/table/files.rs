//! The table's file writer: record batches streamed into Parquet files in the table's
//! folder (one open file per `date` partition), sealed into `add` actions that the next
//! commit references; and the writers for layouts not committed yet.
//!
//! Nothing written here is visible to readers until `LakeTable::commit`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, new_null_array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use deltalake_core::DeltaTable;
use deltalake_core::kernel::{Metadata, StructType};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter};
use url::Url;

use super::encoding;
use super::spool::Spool;
use super::{LakeTable, PARTITION_COLUMN, field_names};
use crate::lake::store::LakeError;
use crate::schema::widen_array;

impl LakeTable {
    /// A writer for a layout that is not committed yet.
    ///
    /// `RecordBatchWriter` takes its schema from a loaded table, and deltalake-core offers
    /// no way to build one from a schema and an object store directly. So the staged
    /// layout is created as a throwaway in-memory table (same columns, partitioning and
    /// configuration) whose loaded state is paired with this table's log store: the
    /// writer then encodes the new layout and writes into this table's folder.
    pub(super) async fn writer_for(
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
    pub(super) async fn stop_date_statistics(&mut self) -> Result<(), LakeError> {
        self.refresh_writer_properties(false).await?;
        tracing::debug!(table = %self.location, "a date outside years 1 to 9999: no date statistics from now on");
        Ok(())
    }

    /// Seals the open files and goes on with writer properties for `date_statistics` and
    /// the table's columns without statistics. The writer keeps its layout (a staged one
    /// too): it changes properties only by value, so a writer for the committed layout
    /// stands in during the swap.
    pub(super) async fn refresh_writer_properties(
        &mut self,
        date_statistics: bool,
    ) -> Result<(), LakeError> {
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

    pub(super) async fn seal(&mut self) -> Result<(), LakeError> {
        let adds = self
            .writer
            .flush()
            .await
            .map_err(|e| LakeError::delta(&self.location, e))?;
        self.sealed.extend(adds);
        self.open_rows = 0;
        Ok(())
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

    pub(super) fn store_error(&self, source: object_store::Error) -> LakeError {
        LakeError::Store {
            url: self.location.to_string(),
            source,
        }
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
pub(in crate::lake) fn new_writer(
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
pub(in crate::lake) async fn writer_for_layout(
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

/// `batch`, read from a file, in the layout `arrow`: each column by name, widened where
/// its type grew (exact; see `schema::widen`), a column the file lacks as nulls, and the
/// partition column as `day` when given (a data file does not store it).
pub(in crate::lake) fn conform(
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

/// Days since 1970-01-01 of a file's `date` partition value (`YYYY-MM-DD`).
pub(in crate::lake) fn partition_date(
    partition_values: &HashMap<String, Option<String>>,
) -> Option<i32> {
    let value = partition_values.get(PARTITION_COLUMN)?.as_deref()?;
    let date = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((date - epoch).num_days()).ok()
}
