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
//!
//! The refresh and the public API are here; `fold` folds a step's changes into the row
//! each changed key is left with, `files` holds the mirror's files and their key ranges.

mod files;
mod fold;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
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
use crate::schema::{OP_COLUMN, PARTITION_COLUMN, SEQ_COLUMN, UNCHANGED_COLUMN, XID_COLUMN};
use files::{MirrorFile, group_by_file, read_file};
pub(super) use files::{first_and_last_key, with_key_range};
use fold::{fold, merge, project, split};

/// The folder of the mirrors, beside the schemas' folders.
pub const MIRROR_FOLDER: &str = "_current";
/// The `txn` app id of a mirror; its version is the change-log version reflected.
pub const MIRROR_APP_ID: &str = "pg2lake-mirror";
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

fn arrow_err<E: Into<deltalake_core::DeltaTableError>>(
    location: &Url,
) -> impl Fn(E) -> LakeError + '_ {
    move |e| LakeError::delta(location, e.into())
}

#[cfg(test)]
mod tests;
