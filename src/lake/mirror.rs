//! The current-state ("mirror") table of a change log: one row per key, the row as the
//! source holds it, refreshed from what the change log committed.
//!
//! ```text
//!  <lake>/<schema>/<table>/            the change log (every change)
//!  <lake>/_current/<schema>/<table>/   its mirror: source columns + _lsn, _commit_ts of the
//!                                       key's last change; no partition; txn(pg2lake-mirror,
//!                                       change-log version it reflects)
//!
//!  refresh: change-log versions (reflected, latest] ─► the files they added (dataChange)
//!           ─► fold per key in (_lsn, _seq) order: last change wins, a delete removes,
//!              a truncate empties, an unchanged TOAST value is carried from the key's
//!              earlier change or its mirror row
//!           ─► rewrite only the mirror files whose key range takes a changed key
//!           ─► one version: remove those + add the rewritten + txn(latest)
//! ```
//!
//! Mirror files are sorted by key and cover consecutive key ranges: each `add` records
//! its first and last key in its `tags` (the key columns in Arrow's row format, hex), and
//! a key belongs to the last file whose first key is not above it. OLTP updates touch
//! recent keys, so a refresh rewrites a few files, and its cost follows the changes, not
//! the table. A file that grows past `target_file_rows` is split.
//!
//! Every refresh is one Delta version carrying the change-log version it reflects, so a
//! crash at any point leaves a mirror exact as of some version, and the next refresh
//! goes on from it. A change-log layout change (a column added or widened), a change log
//! whose older log entries are cleaned up, or a mirror without a position rebuilds the
//! mirror from the whole change log in one version.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::compute::{concat_batches, interleave};
use arrow::datatypes::{Field, Int64Type, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use deltalake_core::DeltaTable;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::{Action, Add, MetadataExt, Remove, StructType};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::DeltaOperation;
use deltalake_core::table::state::DeltaTableState;
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Serialize;
use url::Url;

use super::layout::table_location;
use super::store::{Lake, LakeError};
use super::table::commit::{self, Commit, Committed};
use super::table::compact::{delete_files, first_row_position};
use super::table::reader::file_batches;
use super::table::{
    SOURCE_KEY_PROPERTY, committed_schema, new_writer, upgraded_protocol, writer_for_layout,
};
use crate::schema::{
    LSN_COLUMN, OP_COLUMN, PARTITION_COLUMN, SEQ_COLUMN, UNCHANGED_COLUMN, XID_COLUMN,
};

/// The folder of the mirrors, beside the schemas' folders.
pub const MIRROR_FOLDER: &str = "_current";
/// The `txn` app id of a mirror; its version is the change-log version reflected.
pub const MIRROR_APP_ID: &str = "pg2lake-mirror";
/// The `add` tags holding a mirror file's first and last key.
const KEY_MIN_TAG: &str = "pg2lake.keyMin";
const KEY_MAX_TAG: &str = "pg2lake.keyMax";
/// The change-log columns a mirror leaves out (it keeps `_lsn` and `_commit_ts`).
const LEFT_OUT: [&str; 5] = [
    OP_COLUMN,
    SEQ_COLUMN,
    XID_COLUMN,
    UNCHANGED_COLUMN,
    PARTITION_COLUMN,
];
/// Writer size limit: files are split by rows (`target_file_rows`), never by bytes.
const NO_BYTE_LIMIT: u64 = 1 << 40;

/// How mirrors are refreshed.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Rows per mirror file at most.
    pub target_file_rows: usize,
    /// The change log's `txn` app id (a slot's), whose LSN the mirror's commits record.
    pub app_id: String,
    /// Change-log rows folded in one step of a refresh at most.
    pub step_rows: u64,
    /// In-memory bytes of the change-log rows of one step at most (a file read whole
    /// can pass it): with `file_bytes`, what bounds a refresh's memory.
    pub step_bytes: u64,
    /// In-memory bytes of the rows of one mirror file, about.
    pub file_bytes: u64,
}

/// What a refresh of one mirror did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MirrorReport {
    /// `schema.name`.
    pub table: String,
    /// Why there is no mirror (no primary key), if there is none.
    pub skipped: Option<String>,
    /// The change-log version reflected before, if any.
    pub from_version: Option<i64>,
    /// The change-log version reflected now.
    pub to_version: i64,
    /// The change log's LSN at that version (for `status`).
    pub lsn: Option<i64>,
    /// Whether the mirror was built again from the whole change log.
    pub rebuilt: bool,
    /// Change-log rows read.
    pub changes: usize,
    /// Keys whose row changed.
    pub keys_changed: usize,
    /// Mirror files replaced, and their bytes.
    pub files_rewritten: usize,
    /// Bytes of the replaced mirror files.
    pub bytes_rewritten: u64,
    /// Mirror files written, and their bytes.
    pub files_written: usize,
    /// Bytes of the written mirror files.
    pub bytes_written: u64,
    /// Seconds between the oldest change-log version not yet reflected and the refresh.
    pub lag_seconds: f64,
}

/// The location of the mirror of `schema.name`: `<lake>/_current/<schema>/<name>`.
pub fn mirror_location(root: &Url, schema: &str, name: &str) -> Url {
    let mut location = table_location(root, MIRROR_FOLDER, schema);
    if let Ok(mut segments) = location.path_segments_mut() {
        segments.push(&name.replace('/', "_"));
    }
    location
}

/// Refreshes the mirror of the change log of `schema.name` (see the module docs).
pub async fn refresh(
    lake: &Lake,
    schema: &str,
    name: &str,
    options: &MirrorOptions,
) -> Result<MirrorReport, LakeError> {
    match refresh_from(lake, schema, name, options, false).await {
        // A change-log file the refresh needed is gone: VACUUM deleted it after a
        // compaction replaced it (the mirror was behind by more than lake.retention).
        // The current change log still holds every row: rebuild from it.
        Err(LakeError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }) => {
            tracing::info!(table = %format!("{schema}.{name}"), "a change-log file the mirror needed is vacuumed; rebuilding the mirror");
            refresh_from(lake, schema, name, options, true).await
        }
        result => result,
    }
}

/// One refresh: brings the mirror to the change log's latest version, from the whole
/// change log when `rebuild` (or when the mirror cannot go on from where it is).
async fn refresh_from(
    lake: &Lake,
    schema: &str,
    name: &str,
    options: &MirrorOptions,
    rebuild: bool,
) -> Result<MirrorReport, LakeError> {
    let mut report = MirrorReport {
        table: format!("{schema}.{name}"),
        ..MirrorReport::default()
    };
    let log_location = table_location(lake.root(), schema, name);
    let log = lake.load_table(&log_location).await?;
    let Some(change_log) =
        ChangeLog::read(&log_location, &log, &options.app_id, &mut report).await?
    else {
        return Ok(report);
    };
    let (key, layout) = (&change_log.key, &change_log.mirror_layout);

    // The mirror holds the change log's values, so it follows its policies and its
    // columns without statistics.
    let privacy = change_log.privacy();
    let location = mirror_location(lake.root(), schema, name);
    let mut mirror = open_or_create(lake, &location, schema, name, layout, key, &privacy).await?;
    let reflected = commit::transaction_version(&location, &mirror, MIRROR_APP_ID).await?;
    report.from_version = reflected;
    let mirror_layout_now = committed_schema(&location, &mirror)?;
    let layout_changed = mirror_layout_now.fields() != layout.fields();
    if reflected == Some(change_log.version) && !layout_changed && !rebuild {
        return Ok(report);
    }
    let (inputs, rebuild) = change_log
        .inputs(reflected, rebuild || layout_changed, &mut report)
        .await?;

    let converter = key_converter(key, layout, &location)?;
    let files = mirror_files(&location, &mirror)?;
    // A new layout (a column added or widened) is committed with the rows written in it.
    let (writer, mut actions) = if layout_changed {
        writer_for_new_layout(&location, &mirror, layout, &privacy).await?
    } else {
        (
            new_writer(&location, &mirror, NO_BYTE_LIMIT, false)?,
            Vec::new(),
        )
    };
    let mut step = Step {
        mirror: &mirror,
        location: &location,
        layout,
        key,
        converter: &converter,
        writer,
        target_file_rows: options.target_file_rows.max(1),
        file_bytes: usize::try_from(options.file_bytes).unwrap_or(usize::MAX),
        files,
        removes: Vec::new(),
        adds: Vec::new(),
        report: &mut report,
    };
    step.fold_inputs(&change_log, &inputs, rebuild, options)
        .await?;
    let Step { removes, adds, .. } = step;

    actions.extend(removes.into_iter().map(Action::Remove));
    actions.extend(adds.iter().cloned().map(Action::Add));
    // The rewritten files are uploaded; the version that swaps them in is not written.
    crate::crash_point!("mirror::before_commit");
    let commit = change_log.mirror_commit(actions, lake.options().checkpoint_interval);
    commit_refresh(&location, &mut mirror, commit, &adds).await?;
    crate::crash_point!("mirror::after_commit");
    tracing::debug!(table = report.table, from = ?reflected, to = change_log.version, keys = report.keys_changed, files = report.files_rewritten, "refreshed the mirror");
    Ok(report)
}

/// The change log a refresh reads, at its latest version.
struct ChangeLog<'a> {
    location: &'a Url,
    table: &'a DeltaTable,
    snapshot: &'a DeltaTableState,
    /// The version the refresh brings the mirror to.
    version: i64,
    /// The source table's key columns.
    key: Vec<String>,
    /// The change log's own layout, which its files are read with.
    layout: SchemaRef,
    /// The mirror's layout for it.
    mirror_layout: SchemaRef,
    /// The LSN the change log recorded for the slot's app id at `version`.
    lsn: Option<i64>,
}

impl<'a> ChangeLog<'a> {
    /// What a refresh needs of the change log `table`; `None` when it can have no mirror,
    /// with the reason in `report.skipped`.
    async fn read(
        location: &'a Url,
        table: &'a DeltaTable,
        app_id: &str,
        report: &mut MirrorReport,
    ) -> Result<Option<ChangeLog<'a>>, LakeError> {
        let snapshot = table
            .snapshot()
            .map_err(|e| LakeError::delta(location, e))?;
        let version = snapshot.version() as i64;
        report.to_version = version;
        let key: Vec<String> = snapshot
            .metadata()
            .configuration()
            .get(SOURCE_KEY_PROPERTY)
            .and_then(|key| serde_json::from_str(key).ok())
            .unwrap_or_default();
        if key.is_empty() {
            report.skipped = Some("the source table has no primary key".into());
            return Ok(None);
        }
        let layout = committed_schema(location, table)?;
        let mirror_layout = mirror_layout(&layout);
        if let Some(missing) = key
            .iter()
            .find(|k| mirror_layout.field_with_name(k).is_err())
        {
            report.skipped = Some(format!("key column {missing} is not in the change log"));
            return Ok(None);
        }
        let lsn = commit::transaction_version(location, table, app_id).await?;
        report.lsn = lsn;
        Ok(Some(ChangeLog {
            location,
            table,
            snapshot,
            version,
            key,
            layout,
            mirror_layout,
            lsn,
        }))
    }

    /// The change log's privacy table properties, which its mirror takes.
    fn privacy(&self) -> Vec<(String, String)> {
        crate::privacy::TABLE_PROPERTIES
            .iter()
            .filter_map(|&k| {
                let value = self.snapshot.metadata().configuration().get(k)?;
                Some((k.to_owned(), value.clone()))
            })
            .collect()
    }

    /// The files to fold, in change-log order: what the change log added since the
    /// `reflected` version, or every file when `whole` or when that is not known; and
    /// whether they are every file (a rebuild).
    async fn inputs(
        &self,
        reflected: Option<i64>,
        whole: bool,
        report: &mut MirrorReport,
    ) -> Result<(Vec<Input>, bool), LakeError> {
        let since = match reflected {
            Some(reflected) if !whole && reflected < self.version => {
                added_since(self.table, self.location, reflected, self.version).await?
            }
            _ => None,
        };
        let (mut inputs, rebuild) = match since {
            Some((added, oldest_ms)) => {
                report.lag_seconds = lag_seconds(oldest_ms);
                (added, false)
            }
            None => {
                let all = self
                    .snapshot
                    .log_data()
                    .iter()
                    .map(|file| Input {
                        path: file.object_store_path(),
                        partition_values: file.partition_values_map(),
                        order: first_row_position(file.stats().as_deref()),
                    })
                    .collect();
                (all, true)
            }
        };
        report.rebuilt = rebuild;
        // Change-log order: a file's rows follow those of the files before it.
        inputs.sort_by_key(|input| input.order);
        Ok((inputs, rebuild))
    }

    /// The mirror version that swaps in a refresh's `actions` and records, in its `txn`,
    /// the change-log version it reflects.
    fn mirror_commit(&self, actions: Vec<Action>, checkpoint_interval: u64) -> Commit {
        Commit {
            actions,
            operation: DeltaOperation::Merge {
                predicate: None,
                merge_predicate: Some(format!("key ({})", self.key.join(", "))),
                matched_predicates: Vec::new(),
                not_matched_predicates: Vec::new(),
                not_matched_by_source_predicates: Vec::new(),
            },
            txn: Some((MIRROR_APP_ID.to_owned(), self.version)),
            info: vec![
                (
                    "pg2lake.changeLogVersion".to_owned(),
                    serde_json::json!(self.version),
                ),
                ("pg2lake.lsn".to_owned(), serde_json::json!(self.lsn)),
            ],
            checkpoint_interval,
        }
    }
}

/// The converter of the key columns to rows that sort as the mirror's files do.
fn key_converter(
    key: &[String],
    layout: &SchemaRef,
    location: &Url,
) -> Result<RowConverter, LakeError> {
    let key_fields: Vec<SortField> = key
        .iter()
        .map(|k| {
            layout
                .field_with_name(k)
                .map(|f| SortField::new(f.data_type().clone()))
        })
        .collect::<Result<_, _>>()
        .map_err(arrow_err(location))?;
    RowConverter::new(key_fields).map_err(arrow_err(location))
}

/// The mirror's committed files, sorted by their first key.
fn mirror_files(location: &Url, mirror: &DeltaTable) -> Result<Vec<MirrorFile>, LakeError> {
    let mirror_snapshot = mirror
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let mut files: Vec<MirrorFile> = mirror_snapshot
        .log_data()
        .iter()
        .map(|file| MirrorFile::new(&file))
        .collect();
    files.sort_by(|a, b| a.first.cmp(&b.first));
    Ok(files)
}

/// A writer for the mirror's new `layout`, and the `metaData` (and `protocol`) actions
/// that commit the layout with the rows written in it.
async fn writer_for_new_layout(
    location: &Url,
    mirror: &DeltaTable,
    layout: &SchemaRef,
    privacy: &[(String, String)],
) -> Result<(RecordBatchWriter, Vec<Action>), LakeError> {
    let mut actions: Vec<Action> = Vec::new();
    let delta_schema: StructType = layout
        .as_ref()
        .try_into_kernel()
        .map_err(arrow_err(location))?;
    let snapshot = mirror
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let mut metadata = snapshot
        .metadata()
        .clone()
        .with_schema(&delta_schema)
        .map_err(|e| LakeError::delta(location, e.into()))?;
    for (k, v) in privacy {
        metadata = metadata
            .add_config_key(k.clone(), v.clone())
            .map_err(|e| LakeError::delta(location, e.into()))?;
    }
    if let Some(protocol) = upgraded_protocol(snapshot.protocol(), &delta_schema, &metadata)
        .map_err(|e| LakeError::delta(location, e.into()))?
    {
        actions.push(Action::Protocol(protocol));
    }
    let configuration = metadata.configuration().clone();
    actions.push(Action::Metadata(metadata));
    let writer = writer_for_layout(
        location,
        mirror,
        &delta_schema,
        &[],
        configuration,
        NO_BYTE_LIMIT,
        false,
    )
    .await?;
    Ok((writer, actions))
}

/// Commits a refresh's version to the mirror. On a conflict the files the refresh wrote
/// are deleted: no version will reference them.
async fn commit_refresh(
    location: &Url,
    mirror: &mut DeltaTable,
    commit: Commit,
    adds: &[Add],
) -> Result<(), LakeError> {
    match commit::commit(location, mirror, commit).await {
        Ok(Committed::Version(_) | Committed::Landed) => Ok(()),
        Err(err) => {
            if matches!(err, LakeError::Conflict { .. }) {
                delete_files(mirror, adds).await;
            }
            Err(err)
        }
    }
}

/// One change-log file to fold.
struct Input {
    path: Path,
    partition_values: HashMap<String, Option<String>>,
    /// Its first row's (`_lsn`, `_seq`).
    order: (i64, i64),
}

/// The state of a refresh between its steps: the mirror's files as they now are
/// (committed ones and ones this refresh wrote), and the actions to commit.
struct Step<'a> {
    mirror: &'a DeltaTable,
    location: &'a Url,
    layout: &'a SchemaRef,
    key: &'a [String],
    converter: &'a RowConverter,
    writer: RecordBatchWriter,
    target_file_rows: usize,
    file_bytes: usize,
    files: Vec<MirrorFile>,
    removes: Vec<Remove>,
    adds: Vec<Add>,
    report: &'a mut MirrorReport,
}

impl Step<'_> {
    /// Folds the change-log files `inputs` into the mirror's files, in steps; the first
    /// step of a `rebuild` replaces every file.
    async fn fold_inputs(
        &mut self,
        change_log: &ChangeLog<'_>,
        inputs: &[Input],
        rebuild: bool,
        options: &MirrorOptions,
    ) -> Result<(), LakeError> {
        // In steps of at most `step_rows` change-log rows and about `step_bytes`, so memory
        // holds one step's changes and one mirror file, whatever the backlog (a rebuild after an initial load reads
        // the whole table). Files written by a step and replaced by a later one are deleted
        // at once; one version commits the outcome.
        let mut first = true;
        let mut batches = Vec::new();
        let (mut rows, mut bytes) = (0u64, 0u64);
        for (i, input) in inputs.iter().enumerate() {
            for batch in file_batches(
                change_log.table,
                change_log.location,
                &input.path,
                &input.partition_values,
                &change_log.layout,
            )
            .await?
            {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                bytes += batch.get_array_memory_size() as u64;
                batches.push(batch);
            }
            let last = i + 1 == inputs.len();
            if !last && rows < options.step_rows && bytes < options.step_bytes {
                continue;
            }
            let changes = concat_batches(&change_log.layout, &batches)
                .map_err(arrow_err(change_log.location))?;
            batches.clear();
            (rows, bytes) = (0, 0);
            self.apply(&changes, rebuild && first).await?;
            first = false;
        }
        if rebuild && first {
            // Nothing in the change log: an empty mirror.
            self.replace_all().await;
        }
        Ok(())
    }

    /// Folds `changes` into the mirror's files: rewrites the files whose key range takes
    /// a changed key (all of them with `replace_all`, or after a truncate).
    async fn apply(&mut self, changes: &RecordBatch, replace_all: bool) -> Result<(), LakeError> {
        let location = self.location;
        let folded = fold(changes, self.key, self.converter).map_err(arrow_err(location))?;
        self.report.changes += changes.num_rows();
        self.report.keys_changed += folded.keys.len();
        if replace_all || folded.truncated {
            self.replace_all().await;
        }
        let changed = project(changes, self.layout).map_err(arrow_err(location))?;
        let groups = group_by_file(&self.files, &folded, false);
        let mut replaced = Vec::new();
        let mut written = Vec::new();
        for (file, keys) in groups {
            let existing = match file {
                Some(index) => {
                    replaced.push(index);
                    let path = self.files[index].path.clone();
                    read_file(self.mirror, location, &path, self.layout).await?
                }
                None => RecordBatch::new_empty(self.layout.clone()),
            };
            let merged = merge(
                &existing,
                &changed,
                &folded,
                &keys,
                self.key,
                self.converter,
            )
            .map_err(arrow_err(location))?;
            drop(existing);
            // Files of at most `target_file_rows` rows and about `file_bytes` in memory:
            // a later refresh holds one of them at a time.
            let row_bytes = merged.get_array_memory_size() / merged.num_rows().max(1);
            let file_rows = (self.file_bytes / row_bytes.max(1)).clamp(1, self.target_file_rows);
            for chunk in split(&merged, file_rows) {
                let first_last = first_and_last_key(&chunk, self.key, self.converter)
                    .map_err(arrow_err(location))?;
                self.writer
                    .write(chunk)
                    .await
                    .map_err(|e| LakeError::delta(location, e))?;
                let flushed = self
                    .writer
                    .flush()
                    .await
                    .map_err(|e| LakeError::delta(location, e))?;
                for add in flushed {
                    let add = with_key_range(add, &first_last);
                    self.report.files_written += 1;
                    self.report.bytes_written += u64::try_from(add.size).unwrap_or(0);
                    written.push(MirrorFile::written(&add));
                    self.adds.push(add);
                }
            }
        }
        replaced.sort_unstable();
        for index in replaced.into_iter().rev() {
            let file = self.files.remove(index);
            self.drop_file(file).await;
        }
        self.files.extend(written);
        self.files.sort_by(|a, b| a.first.cmp(&b.first));
        Ok(())
    }

    /// Drops every file of the mirror (a rebuild, a truncate).
    async fn replace_all(&mut self) {
        for file in std::mem::take(&mut self.files) {
            self.drop_file(file).await;
        }
    }

    /// A file replaced: a committed one is removed by the commit, one this refresh wrote
    /// is deleted now.
    async fn drop_file(&mut self, file: MirrorFile) {
        if file.committed {
            self.report.files_rewritten += 1;
            self.report.bytes_rewritten += file.size;
            self.removes.push(file.remove);
        } else {
            self.adds.retain(|add| add.path != file.remove.path);
            if let Err(err) = self.mirror.object_store().delete(&file.path).await {
                tracing::debug!(error = %err, "could not delete a replaced mirror file; VACUUM will");
            }
        }
    }
}

/// The reflected change-log version of the mirror of `schema.name`, and the LSN its
/// last refresh recorded; `None` when it has no mirror.
pub async fn mirror_position(
    lake: &Lake,
    schema: &str,
    name: &str,
) -> Result<Option<(i64, Option<i64>)>, LakeError> {
    let location = mirror_location(lake.root(), schema, name);
    if !lake.table_exists(&location).await? {
        return Ok(None);
    }
    let mirror = lake.load_table(&location).await?;
    let Some(version) = commit::transaction_version(&location, &mirror, MIRROR_APP_ID).await?
    else {
        return Ok(None);
    };
    let lsn = last_recorded_lsn(&mirror).await;
    Ok(Some((version, lsn)))
}

/// The `pg2lake.lsn` of the mirror's latest commit.
async fn last_recorded_lsn(mirror: &DeltaTable) -> Option<i64> {
    let mut history = mirror.history(Some(1));
    history
        .next()
        .await?
        .ok()?
        .info
        .get("pg2lake.lsn")?
        .as_i64()
}

/// The mirror's layout: the change log's columns without the per-change ones.
fn mirror_layout(log_layout: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = log_layout
        .fields()
        .iter()
        .filter(|field| !LEFT_OUT.contains(&field.name().as_str()))
        .map(|field| field.as_ref().clone())
        .collect();
    Arc::new(Schema::new(fields))
}

async fn open_or_create(
    lake: &Lake,
    location: &Url,
    schema: &str,
    name: &str,
    layout: &SchemaRef,
    key: &[String],
    privacy: &[(String, String)],
) -> Result<DeltaTable, LakeError> {
    let delta_err = |e| LakeError::delta(location, e);
    let log_store = lake.log_store(location)?;
    if log_store
        .is_delta_table_location()
        .await
        .map_err(delta_err)?
    {
        let mut table = DeltaTable::new(log_store);
        table.load().await.map_err(delta_err)?;
        return Ok(table);
    }
    let delta_schema: StructType =
        layout
            .as_ref()
            .try_into_kernel()
            .map_err(|e: arrow::error::ArrowError| LakeError::SchemaMismatch {
                table: location.to_string(),
                reason: e.to_string(),
            })?;
    let options = lake.options();
    CreateBuilder::new()
        .with_log_store(log_store)
        .with_table_name(format!("{schema}.{name}"))
        .with_comment(format!(
            "current state of postgres table {schema}.{name} (one row per key), written by pg2lake"
        ))
        .with_columns(delta_schema.fields().cloned())
        .with_configuration_property(
            deltalake_core::TableProperty::CheckpointInterval,
            Some(options.checkpoint_interval.to_string()),
        )
        .with_configuration_property(
            deltalake_core::TableProperty::DeletedFileRetentionDuration,
            Some(format!("interval {} seconds", options.retention.as_secs())),
        )
        .with_configuration([(
            SOURCE_KEY_PROPERTY,
            Some(serde_json::to_string(key).unwrap_or_default()),
        )])
        .with_configuration(privacy.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))))
        .with_raise_if_key_not_exists(false)
        .await
        .map_err(delta_err)
}

/// The data files the change log added with `dataChange: true` in the versions after
/// `reflected` up to `version`, and the commit time (Unix ms) of the first of them.
/// `None` when a log entry is gone (cleaned up): the mirror is then rebuilt.
async fn added_since(
    log: &DeltaTable,
    location: &Url,
    reflected: i64,
    version: i64,
) -> Result<Option<(Vec<Input>, Option<i64>)>, LakeError> {
    let store = log.log_store().object_store(None);
    let mut added = Vec::new();
    let mut oldest = None;
    for v in reflected + 1..=version {
        let path = Path::from(format!("_delta_log/{v:020}.json"));
        let bytes = match store.get(&path).await {
            Ok(result) => result.bytes().await,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => Err(err),
        }
        .map_err(|source| LakeError::Store {
            url: location.to_string(),
            source,
        })?;
        // A forget version adds no change: it rewrote files without a subject the
        // mirror's own forget removes.
        let mut version_added = Vec::new();
        let mut forget = false;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                LakeError::delta(
                    location,
                    deltalake_core::DeltaTableError::SerializeLogJson { json_err: e },
                )
            })?;
            if oldest.is_none()
                && let Some(ts) = action["commitInfo"]["timestamp"].as_i64()
            {
                oldest = Some(ts);
            }
            forget |= super::forget::is_forget_commit(&action);
            let add = &action["add"];
            if add.is_object() && add["dataChange"].as_bool() == Some(true) {
                let path = add["path"].as_str().unwrap_or_default();
                let path = Path::from_url_path(path).map_err(|e| LakeError::Store {
                    url: location.to_string(),
                    source: e.into(),
                })?;
                let partition_values =
                    serde_json::from_value(add["partitionValues"].clone()).unwrap_or_default();
                version_added.push(Input {
                    path,
                    partition_values,
                    order: first_row_position(add["stats"].as_str()),
                });
            }
        }
        if !forget {
            added.extend(version_added);
        }
    }
    Ok(Some((added, oldest)))
}

fn lag_seconds(oldest_ms: Option<i64>) -> f64 {
    oldest_ms.map_or(0.0, |ms| {
        ((chrono::Utc::now().timestamp_millis() - ms) as f64 / 1000.0).max(0.0)
    })
}

/// What the changes leave of each changed key.
struct Folded {
    /// Per changed key: its final change, or `None` when it is deleted.
    keys: BTreeMap<OwnedRow, Option<Upsert>>,
    /// Whether a truncate is among the changes: every row from before it is gone.
    truncated: bool,
}

/// Where a column's unsent TOAST value comes from: (column index in the mirror layout,
/// the earlier change that sent it; `None`: the key's row in the mirror).
type FillSource = (usize, Option<usize>);

/// A key's final row: the change it comes from, and for each column whose unchanged
/// TOAST value it did not send, where the value comes from.
struct Upsert {
    row: usize,
    fills: Vec<FillSource>,
}

/// Folds `changes` (change-log rows) per key, in (`_lsn`, `_seq`) order.
fn fold(
    changes: &RecordBatch,
    key: &[String],
    converter: &RowConverter,
) -> Result<Folded, arrow::error::ArrowError> {
    let column = |name: &str| {
        changes.column_by_name(name).ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("the change log has no {name}"))
        })
    };
    let lsn = column(LSN_COLUMN)?.as_primitive::<Int64Type>().clone();
    let seq = column(SEQ_COLUMN)?.as_primitive::<Int64Type>().clone();
    let op = column(OP_COLUMN)?.as_string::<i32>().clone();
    let unchanged = column(UNCHANGED_COLUMN)?.as_list::<i32>().clone();
    let key_columns: Vec<ArrayRef> = key
        .iter()
        .map(|k| column(k).cloned())
        .collect::<Result<_, _>>()?;
    let keys = converter.convert_columns(&key_columns)?;
    let position = |i: usize| (lsn.value(i), seq.value(i));
    let mut order: Vec<usize> = (0..changes.num_rows()).collect();
    order.sort_by_key(|&i| position(i));
    let truncate = order
        .iter()
        .rev()
        .find(|&&i| op.value(i) == "t")
        .map(|&i| position(i));
    let mut per_key: HashMap<OwnedRow, Vec<usize>> = HashMap::new();
    for &i in &order {
        if op.value(i) == "t" || truncate.is_some_and(|t| position(i) <= t) {
            continue;
        }
        per_key.entry(keys.row(i).owned()).or_default().push(i);
    }
    let mirror_columns: Vec<&str> = changes
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|name| !LEFT_OUT.contains(name))
        .collect();
    let unsent = |i: usize| -> Vec<String> {
        if unchanged.is_null(i) {
            return Vec::new();
        }
        let list = unchanged.value(i);
        let names = list.as_string::<i32>();
        (0..names.len())
            .filter(|&j| !names.is_null(j))
            .map(|j| names.value(j).to_owned())
            .collect()
    };
    let mut folded = BTreeMap::new();
    for (key, rows) in per_key {
        let Some(&last) = rows.last() else { continue };
        if op.value(last) == "d" {
            folded.insert(key, None);
            continue;
        }
        let mut fills = Vec::new();
        for name in unsent(last) {
            let Some(index) = mirror_columns.iter().position(|c| *c == name) else {
                continue;
            };
            // The latest earlier change of the key that sent the column; a delete or a
            // truncate in between would have ended the row, so none is looked past.
            let source = rows[..rows.len() - 1]
                .iter()
                .rev()
                .take_while(|&&i| op.value(i) != "d")
                .find(|&&i| !unsent(i).contains(&name))
                .copied();
            // No earlier change sent it: the mirror's row has it, unless the key was
            // deleted or truncated away in between.
            let from_mirror = source.is_none()
                && truncate.is_none()
                && !rows[..rows.len() - 1].iter().any(|&i| op.value(i) == "d");
            if source.is_some() || from_mirror {
                fills.push((index, source));
            }
        }
        folded.insert(key, Some(Upsert { row: last, fills }));
    }
    Ok(Folded {
        keys: folded,
        truncated: truncate.is_some(),
    })
}

/// One file of the mirror.
struct MirrorFile {
    path: Path,
    remove: Remove,
    size: u64,
    /// Its first key (row format); empty when unknown (sorted first).
    first: Vec<u8>,
    /// Whether a committed version holds it (else this refresh wrote it).
    committed: bool,
}

impl MirrorFile {
    fn new(file: &deltalake_core::kernel::LogicalFileView) -> MirrorFile {
        // A file's tags are reachable only through its `add` action (deprecated in
        // favour of Arrow arrays that do not expose them).
        #[allow(deprecated)]
        let add = file.add_action();
        MirrorFile {
            path: file.object_store_path(),
            remove: file.remove_action(true),
            size: u64::try_from(file.size()).unwrap_or(0),
            first: first_key(&add),
            committed: true,
        }
    }

    /// A file this refresh wrote.
    fn written(add: &Add) -> MirrorFile {
        MirrorFile {
            path: Path::from_url_path(&add.path).unwrap_or_else(|_| Path::from(add.path.as_str())),
            remove: remove_of(&add.path),
            size: u64::try_from(add.size).unwrap_or(0),
            first: first_key(add),
            committed: false,
        }
    }
}

/// The first key of a mirror file, from its `add` tags (empty when it has none).
fn first_key(add: &Add) -> Vec<u8> {
    add.tags
        .as_ref()
        .and_then(|tags| tags.get(KEY_MIN_TAG).cloned().flatten())
        .and_then(|hex| decode_hex(&hex))
        .unwrap_or_default()
}

/// A `remove` (with `dataChange`) of the mirror file at `path`.
fn remove_of(path: &str) -> Remove {
    Remove {
        path: path.to_owned(),
        data_change: true,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        extended_file_metadata: None,
        partition_values: None,
        size: None,
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    }
}

/// The changed keys by the mirror file whose key range takes them (`None`: no file, a
/// new one is written). With `replace_all`, every key goes to one new group.
fn group_by_file(
    files: &[MirrorFile],
    folded: &Folded,
    replace_all: bool,
) -> Vec<(Option<usize>, Vec<OwnedRow>)> {
    let mut groups: BTreeMap<Option<usize>, Vec<OwnedRow>> = BTreeMap::new();
    if replace_all || files.is_empty() {
        groups.insert(None, folded.keys.keys().cloned().collect());
        return groups.into_iter().collect();
    }
    let firsts: Vec<Vec<u8>> = files.iter().map(|f| f.first.clone()).collect();
    for key in folded.keys.keys() {
        let bytes = key.row().data();
        // The last file whose first key is not above this one; the first file for a key
        // below them all.
        let index = firsts.partition_point(|first| first.as_slice() <= bytes);
        groups
            .entry(Some(index.saturating_sub(1)))
            .or_default()
            .push(key.clone());
    }
    groups.into_iter().collect()
}

/// The rows of one mirror file.
async fn read_file(
    mirror: &DeltaTable,
    location: &Url,
    path: &Path,
    layout: &SchemaRef,
) -> Result<RecordBatch, LakeError> {
    let mut batches = Vec::new();
    for batch in file_batches(mirror, location, path, &HashMap::new(), layout).await? {
        batches.push(batch?);
    }
    concat_batches(layout, &batches).map_err(arrow_err(location))
}

/// `changes` with only the mirror's columns.
fn project(
    changes: &RecordBatch,
    layout: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = layout
        .fields()
        .iter()
        .map(|field| {
            changes
                .column_by_name(field.name())
                .cloned()
                .ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(format!("no column {}", field.name()))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(layout.clone(), columns)
}

/// One row of [`merge`]'s output.
struct OutputRow<'a> {
    /// Its key (row format).
    key: &'a [u8],
    /// Where its values come from: (0, a change) or (1, a row of the file).
    pick: (usize, usize),
    /// For an upsert, where its unsent TOAST values come from.
    sources: &'a [FillSource],
}

/// The rows of a file after the changes: its rows whose key did not change, and the
/// final rows of `keys` (those not deleted), sorted by key.
fn merge(
    existing: &RecordBatch,
    changed: &RecordBatch,
    folded: &Folded,
    keys: &[OwnedRow],
    key: &[String],
    converter: &RowConverter,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let existing_keys = key_rows(existing, key, converter)?;
    let changed_set: HashSet<&[u8]> = keys.iter().map(|k| k.row().data()).collect();
    let mut existing_row: HashMap<&[u8], usize> = HashMap::new();
    // Per output row: its key, (source, row) with source 0 the changes, 1 the file, 2 a
    // null, and for an upsert where its unsent values come from.
    let mut rows: Vec<OutputRow> = Vec::new();
    for i in 0..existing.num_rows() {
        let row = existing_keys.row(i).data();
        if changed_set.contains(row) {
            existing_row.insert(row, i);
        } else {
            rows.push(OutputRow {
                key: row,
                pick: (1, i),
                sources: &[],
            });
        }
    }
    for key in keys {
        if let Some(Some(upsert)) = folded.keys.get(key) {
            rows.push(OutputRow {
                key: key.row().data(),
                pick: (0, upsert.row),
                sources: &upsert.fills,
            });
        }
    }
    // Sorted by key before the one copy of the values.
    rows.sort_by(|a, b| a.key.cmp(b.key));
    let picks: Vec<(usize, usize)> = rows.iter().map(|row| row.pick).collect();
    let columns = (0..existing.num_columns())
        .map(|c| {
            let mut indices = picks.clone();
            for (at, row) in rows.iter().enumerate() {
                if let Some((_, source)) = row.sources.iter().find(|(column, _)| *column == c) {
                    indices[at] = match source {
                        Some(change) => (0, *change),
                        None => existing_row.get(row.key).map_or((2, 0), |i| (1, *i)),
                    };
                }
            }
            let null = new_null_array(existing.column(c).data_type(), 1);
            interleave(
                &[
                    changed.column(c).as_ref(),
                    existing.column(c).as_ref(),
                    null.as_ref(),
                ],
                &indices,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(existing.schema(), columns)
}

fn key_rows(
    batch: &RecordBatch,
    key: &[String],
    converter: &RowConverter,
) -> Result<Rows, arrow::error::ArrowError> {
    let columns: Vec<ArrayRef> =
        key.iter()
            .map(|k| {
                batch.column_by_name(k).cloned().ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(format!("no key column {k}"))
                })
            })
            .collect::<Result<_, _>>()?;
    converter.convert_columns(&columns)
}

/// `batch` in pieces of at most `rows` rows (none for an empty batch).
fn split(batch: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    (0..batch.num_rows())
        .step_by(rows)
        .map(|start| batch.slice(start, rows.min(batch.num_rows() - start)))
        .collect()
}

pub(super) fn first_and_last_key(
    batch: &RecordBatch,
    key: &[String],
    converter: &RowConverter,
) -> Result<(String, String), arrow::error::ArrowError> {
    let rows = key_rows(batch, key, converter)?;
    let hex = |i: usize| encode_hex(rows.row(i).data());
    Ok((hex(0), hex(batch.num_rows().saturating_sub(1))))
}

pub(super) fn with_key_range(add: Add, (first, last): &(String, String)) -> Add {
    let mut tags = add.tags.clone().unwrap_or_default();
    tags.insert(KEY_MIN_TAG.to_owned(), Some(first.clone()));
    tags.insert(KEY_MAX_TAG.to_owned(), Some(last.clone()));
    Add {
        tags: Some(tags),
        ..add
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn arrow_err<E: Into<deltalake_core::DeltaTableError>>(
    location: &Url,
) -> impl Fn(E) -> LakeError + '_ {
    move |e| LakeError::delta(location, e.into())
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, Int64Array, ListBuilder, StringArray, StringBuilder};
    use arrow::datatypes::DataType;

    use super::*;

    /// Change-log rows (id, note, _op, _lsn, _seq, _unchanged).
    type Change<'a> = (i32, Option<&'a str>, &'a str, i64, i64, &'a [&'a str]);

    fn changes(rows: &[Change]) -> RecordBatch {
        let mut unchanged = ListBuilder::new(StringBuilder::new());
        for (.., names) in rows {
            if names.is_empty() {
                unchanged.append_null();
            } else {
                for name in *names {
                    unchanged.values().append_value(name);
                }
                unchanged.append(true);
            }
        }
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("note", DataType::Utf8, true),
            Field::new(OP_COLUMN, DataType::Utf8, false),
            Field::new(LSN_COLUMN, DataType::Int64, false),
            Field::new(SEQ_COLUMN, DataType::Int64, false),
            Field::new(
                UNCHANGED_COLUMN,
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(rows.iter().map(|r| Some(r.0)).collect::<Int32Array>()),
                Arc::new(rows.iter().map(|r| r.1).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| Some(r.2)).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| Some(r.3)).collect::<Int64Array>()),
                Arc::new(rows.iter().map(|r| Some(r.4)).collect::<Int64Array>()),
                Arc::new(unchanged.finish()),
            ],
        )
        .unwrap()
    }

    fn converter() -> RowConverter {
        RowConverter::new(vec![SortField::new(DataType::Int32)]).unwrap()
    }

    fn key(id: i32) -> OwnedRow {
        let column: ArrayRef = Arc::new(Int32Array::from(vec![id]));
        converter()
            .convert_columns(&[column])
            .unwrap()
            .row(0)
            .owned()
    }

    #[test]
    fn the_last_change_wins_a_delete_removes_and_a_truncate_ends_what_came_before() {
        let batch = changes(&[
            (3, Some("c"), "c", 40, 2, &[]),
            (1, Some("a2"), "u", 20, 1, &[]),
            (1, Some("a"), "c", 10, 1, &[]),
            (2, Some("b"), "c", 10, 2, &[]),
            (2, None, "d", 30, 1, &[]),
        ]);
        let folded = fold(&batch, &["id".to_owned()], &converter()).unwrap();
        assert!(!folded.truncated);
        assert_eq!(folded.keys[&key(1)].as_ref().map(|u| u.row), Some(1));
        assert!(folded.keys[&key(2)].is_none(), "a deleted key has no row");
        assert_eq!(folded.keys[&key(3)].as_ref().map(|u| u.row), Some(0));

        let batch = changes(&[
            (1, Some("a"), "c", 10, 1, &[]),
            (0, None, "t", 40, 1, &[]),
            (3, Some("c"), "c", 40, 2, &[]),
        ]);
        let folded = fold(&batch, &["id".to_owned()], &converter()).unwrap();
        assert!(folded.truncated);
        assert_eq!(
            folded.keys.keys().cloned().collect::<Vec<_>>(),
            vec![key(3)]
        );
    }

    #[test]
    fn unsent_toast_values_come_from_the_last_change_that_sent_them_or_the_mirror() {
        let batch = changes(&[
            (1, Some("big"), "c", 10, 1, &[]),
            (1, None, "u", 20, 1, &["note"]),
            (1, None, "u", 30, 1, &["note"]),
            (2, None, "u", 20, 2, &["note"]),
            (3, Some("old"), "c", 5, 1, &[]),
            (3, None, "d", 6, 1, &[]),
            (3, None, "u", 7, 1, &["note"]),
        ]);
        let folded = fold(&batch, &["id".to_owned()], &converter()).unwrap();
        let fills = |id| folded.keys[&key(id)].as_ref().unwrap().fills.clone();
        // note is column 1 of the mirror (id, note).
        assert_eq!(
            fills(1),
            vec![(1, Some(0))],
            "from the insert two changes back"
        );
        assert_eq!(
            fills(2),
            vec![(1, None)],
            "from the key's row in the mirror"
        );
        assert_eq!(fills(3), vec![], "a delete in between: nothing to carry");
    }

    #[test]
    fn merge_keeps_untouched_rows_applies_changes_and_sorts_by_key() {
        let layout = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let existing = RecordBatch::try_new(
            layout.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .unwrap();
        let log = changes(&[
            (2, None, "d", 10, 1, &[]),
            (4, Some("d"), "c", 10, 2, &[]),
            (1, None, "u", 10, 3, &["note"]),
        ]);
        let folded = fold(&log, &["id".to_owned()], &converter()).unwrap();
        let changed = project(&log, &layout).unwrap();
        let keys: Vec<OwnedRow> = folded.keys.keys().cloned().collect();
        let merged = merge(
            &existing,
            &changed,
            &folded,
            &keys,
            &["id".to_owned()],
            &converter(),
        )
        .unwrap();
        let ids = merged
            .column(0)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let notes = merged.column(1).as_string::<i32>();
        assert_eq!(ids.values().to_vec(), vec![1, 3, 4]);
        assert_eq!(
            (0..3).map(|i| notes.value(i)).collect::<Vec<_>>(),
            vec!["a", "c", "d"],
            "key 1 keeps its unsent note from the mirror"
        );
    }

    #[test]
    fn keys_go_to_the_file_whose_range_takes_them() {
        let file = |first: i32| MirrorFile {
            path: Path::from("f.parquet"),
            remove: remove_of("f.parquet"),
            size: 0,
            first: key(first).row().data().to_vec(),
            committed: true,
        };
        let files = vec![file(1), file(500), file(1000)];
        let folded = Folded {
            keys: [0, 2, 499, 500, 1999]
                .into_iter()
                .map(|id| (key(id), None))
                .collect(),
            truncated: false,
        };
        let groups = group_by_file(&files, &folded, false);
        let grouped: Vec<(Option<usize>, usize)> = groups
            .iter()
            .map(|(file, keys)| (*file, keys.len()))
            .collect();
        // 0 (below every range) and 2 and 499 → the first file, 500 → the second,
        // 1999 → the last.
        assert_eq!(grouped, vec![(Some(0), 3), (Some(1), 1), (Some(2), 1)]);
    }
}
