//! Changes to the table's layout and properties, staged for its next data commit (see
//! the module docs of `lake::table`): a `metaData` action (with a protocol upgrade when
//! the new columns need one), and for a widened column the rewrite of the table's files.

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::{
    Add, Metadata, MetadataExt, Protocol, Remove, StructType, contains_timestampntz,
};
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter};
use object_store::path::Path;

use super::{LakeTable, reader};
use crate::lake::store::LakeError;

impl LakeTable {
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
    pub(super) fn current_metadata(&self) -> Result<Metadata, LakeError> {
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
    pub(super) async fn rewrite_for(
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
    pub(super) async fn copy_file(
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
}

/// The actions of a schema change not yet committed.
pub(super) struct StagedSchema {
    pub(super) arrow: SchemaRef,
    pub(super) metadata: Metadata,
    /// A protocol upgrade the new columns need (timestamp without time zone).
    pub(super) protocol: Option<Protocol>,
}

/// The committed files replaced by rewritten ones (a widened column), not yet committed.
pub(super) struct Rewrite {
    /// The committed files, removed with `dataChange: false`.
    pub(super) removes: Vec<Remove>,
    /// Their rewritten copies in the wider layout, added with `dataChange: false`.
    pub(super) adds: Vec<Add>,
}

/// The protocol a table needs once its schema is `schema`, when `current` does not
/// suffice: a timestamp-without-time-zone column needs the `timestampNtz` reader and
/// writer feature (as `CreateBuilder` sets for a new table). `None` when nothing changes.
///
/// Mirrors deltalake-core's own upgrade (its `ProtocolExt` is crate-private): table
/// features need reader version 3 and writer version 7, and a legacy writer version 2
/// table's `appendOnly` becomes an explicit feature. `invariants` is not listed: pg2lake
/// never sets column invariants, and this writer build cannot enforce them.
pub(in crate::lake) fn upgraded_protocol(
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
