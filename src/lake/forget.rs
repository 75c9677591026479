//! Erasure of one subject's rows from a Delta table, all history included (`pg2lake
//! forget`).
//!
//! ```text
//!  every data file of the current version whose statistics may hold the subject
//!    ─► read; rows of the subject? ─ no ─► left alone
//!                                  └ yes ─► rewritten without them (compaction's rewrite)
//!  commit: remove those files + add their rewrites, one DELETE version F (commitInfo
//!          pg2lake.operation = forget; no value in it), beside any other writer; in a
//!          change log (append-only) with `dataChange: false`, like a compaction
//!  then history: a checkpoint at F; every file removed at or before F deleted now (not
//!  after lake.retention: time travel to before F must not return the subject), and
//!  files no version references that are older than the retention; the log's versions
//!  before F deleted (their add statistics and checkpoints may hold the subject's values)
//! ```
//!
//! Versions from F on read as before; versions before F are gone, which is the point.
//! A marker object (`_pg2lake_maintenance/forget-pending.json`, holding no value) is
//! written before the commit and deleted after the history is cleaned, so a crash in
//! between is finished by the next `forget` of the table. A table the subject is not in
//! is not touched: running `forget` twice changes nothing the second time.
//!
//! A mirror (current-state table) keeps each file's key range in its `add` tags; its
//! rewritten files get the range of the rows they keep, so no tag names the subject.

use std::collections::HashSet;
use std::sync::Mutex;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{and, filter_record_batch, not};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use deltalake_core::DeltaTable;
use deltalake_core::kernel::{Action, Add};
use deltalake_core::protocol::DeltaOperation;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::path::Path;
use serde::Serialize;
use url::Url;

use super::lease::LEASE_FOLDER;
use super::mirror::{first_and_last_key, with_key_range};
use super::store::{Lake, LakeError};
use super::table::commit::{self, Commit, Committed, active_paths, store_path};
use super::table::committed_schema;
use super::table::compact::{SourceFile, delete_files, rewrite_rows};

/// The `commitInfo` entry that marks a forget version; the mirror skips such versions
/// (they add no change, only drop rows it drops itself).
pub const FORGET_OPERATION: &str = "forget";
/// Whether a log action is the `commitInfo` of a forget version.
pub(super) fn is_forget_commit(action: &serde_json::Value) -> bool {
    action["commitInfo"]["pg2lake.operation"].as_str() == Some(FORGET_OPERATION)
}

/// The marker of a forget whose history cleanup has not finished.
const PENDING_MARKER: &str = "forget-pending.json";
/// Attempts when another writer replaces a file the erasure rewrites.
const MAX_ATTEMPTS: usize = 5;

/// One subject: lake column → the value it has in the lake (a one-element array of the
/// column's type: a hash for a hashed column).
#[derive(Debug, Clone)]
pub struct Subject {
    /// The columns and values that all must match.
    pub columns: Vec<(String, ArrayRef)>,
}

impl Subject {
    /// Which rows of `batch` are the subject's (a column `batch` lacks matches nothing).
    fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray, arrow::error::ArrowError> {
        let mut result: Option<BooleanArray> = None;
        for (column, value) in &self.columns {
            let Some(array) = batch.column_by_name(column) else {
                return Ok(BooleanArray::from(vec![false; batch.num_rows()]));
            };
            let equal = eq(array, &arrow::array::Scalar::new(value.clone()))?;
            result = Some(match result {
                Some(so_far) => and(&so_far, &equal)?,
                None => equal,
            });
        }
        // Nulls (a column without a value in a row) are not a match.
        let all = result.unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
        Ok(all.iter().map(|m| Some(m == Some(true))).collect())
    }

    /// Whether a file with these statistics may hold the subject: false only when a
    /// string or integer column's min/max range excludes its value.
    fn may_be_in(&self, stats: Option<&str>) -> bool {
        let Some(stats) = stats.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            return true;
        };
        self.columns.iter().all(|(column, value)| {
            let (min, max) = (&stats["minValues"][column], &stats["maxValues"][column]);
            match value.data_type() {
                DataType::Utf8 => {
                    let wanted = value
                        .as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .map(|a| a.value(0).to_owned());
                    match (wanted, min.as_str(), max.as_str()) {
                        // Statistics of long strings are truncated prefixes: compare only
                        // when both bounds are shorter than the value's prefix limit.
                        (Some(w), Some(lo), Some(hi)) if lo.len() < 32 && hi.len() < 32 => {
                            lo <= w.as_str() && w.as_str() <= hi
                        }
                        _ => true,
                    }
                }
                DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                    let wanted = arrow::compute::cast(value, &DataType::Int64)
                        .ok()
                        .and_then(|a| {
                            a.as_any()
                                .downcast_ref::<arrow::array::Int64Array>()
                                .map(|a| a.value(0))
                        });
                    match (wanted, min.as_i64(), max.as_i64()) {
                        (Some(w), Some(lo), Some(hi)) => lo <= w && w <= hi,
                        _ => true,
                    }
                }
                _ => true,
            }
        })
    }
}

/// What an erasure did to one Delta table (or, dry, would do). Never a value.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// Data files read (those whose statistics may hold the subject).
    pub files_read: usize,
    /// Files that held the subject, rewritten without it (or removed when nothing else
    /// was in them).
    pub files_rewritten: usize,
    /// The subject's rows removed.
    pub rows_removed: u64,
    /// Bytes of the files rewritten.
    pub bytes_rewritten: u64,
    /// The version that removed them.
    pub version: Option<i64>,
    /// Data files deleted from storage (the rewritten ones and older removed ones).
    pub files_deleted: usize,
    /// Log files deleted (the versions before the erasure).
    pub log_files_deleted: usize,
    /// The first version still readable after the erasure.
    pub history_starts_at: Option<i64>,
}

/// Removes the subject's rows from every file of the table at `location` and from its
/// history (see the module docs). `mirror_key`: the key columns of a mirror, whose
/// rewritten files get new key range tags. `history`: end the history at the current
/// version even when the subject is not in it (a mirror whose row of the subject was
/// deleted already still has it in earlier versions).
pub async fn erase(
    lake: &Lake,
    location: &Url,
    subject: &Subject,
    mirror_key: Option<&[String]>,
    history: bool,
    dry_run: bool,
) -> Result<ErasureReport, LakeError> {
    let mut table = lake.load_table(location).await?;
    let mut report = ErasureReport::default();
    if !dry_run {
        finish_pending(lake, location, &mut table, &mut report).await?;
    }
    for attempt in 1..=MAX_ATTEMPTS {
        // The change log is append-only (`delta.appendOnly`): its erasure is committed
        // like a compaction, `dataChange: false`, which streaming readers skip. A mirror's
        // is a deletion like any other.
        let data_change = mirror_key.is_some();
        let Some(found) = find(location, &table, subject, data_change, &mut report).await? else {
            if history && !dry_run {
                let version = commit::loaded_version(&table).unwrap_or(0);
                write_marker(lake, location, Marker::CleanAt(version)).await?;
                clean_history(lake, location, version, &mut report).await?;
                delete_marker(lake, location).await?;
            }
            return Ok(report);
        };
        if dry_run {
            return Ok(report);
        }
        let before = commit::loaded_version(&table).unwrap_or(-1);
        write_marker(lake, location, Marker::After(before)).await?;
        let adds: Vec<Add> = rewrite(location, &table, subject, mirror_key, &found)
            .await?
            .into_iter()
            .map(|add| Add { data_change, ..add })
            .collect();
        let actions: Vec<Action> = found
            .iter()
            .map(|file| Action::Remove(file.remove.clone()))
            .chain(adds.iter().cloned().map(Action::Add))
            .collect();
        crate::crash_point!("forget::before_commit");
        let commit = Commit {
            actions,
            operation: DeltaOperation::Delete { predicate: None },
            txn: None,
            info: vec![(
                "pg2lake.operation".to_owned(),
                serde_json::json!(FORGET_OPERATION),
            )],
            checkpoint_interval: lake.options().checkpoint_interval,
        };
        let version = match commit::commit(location, &mut table, commit).await {
            Ok(Committed::Version(version)) => version,
            Ok(Committed::Landed) => commit::loaded_version(&table).unwrap_or(0),
            Err(LakeError::Conflict { reason, .. }) if attempt < MAX_ATTEMPTS => {
                tracing::info!(table = %location, reason, "a file to rewrite was replaced meanwhile; erasing again from the new version");
                delete_files(&table, &adds).await;
                commit::reload(location, &mut table).await?;
                report = ErasureReport::default();
                continue;
            }
            Err(err) => return Err(err),
        };
        crate::crash_point!("forget::after_commit");
        // `find` counted the files and rows of this attempt.
        report.version = Some(version);
        clean_history(lake, location, version, &mut report).await?;
        delete_marker(lake, location).await?;
        return Ok(report);
    }
    Err(LakeError::Conflict {
        table: location.to_string(),
        reason: "other writers kept replacing the files to rewrite".into(),
    })
}

/// A data file that holds the subject.
struct Found {
    remove: deltalake_core::kernel::Remove,
    path: Path,
    partition_values: std::collections::HashMap<String, Option<String>>,
    size: u64,
    /// The subject's rows in it.
    rows: u64,
}

/// The files of the loaded version that hold the subject; `None` when none does.
async fn find(
    location: &Url,
    table: &DeltaTable,
    subject: &Subject,
    data_change: bool,
    report: &mut ErasureReport,
) -> Result<Option<Vec<Found>>, LakeError> {
    let layout = committed_schema(location, table)?;
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let candidates: Vec<_> = snapshot
        .log_data()
        .iter()
        .filter(|file| subject.may_be_in(file.stats().as_deref()))
        .map(|file| {
            (
                file.remove_action(data_change),
                file.object_store_path(),
                file.partition_values_map(),
                u64::try_from(file.size()).unwrap_or(0),
            )
        })
        .collect();
    let mut found = Vec::new();
    for (remove, path, partition_values, size) in candidates {
        report.files_read += 1;
        let batches =
            super::table::reader::file_batches(table, location, &path, &partition_values, &layout)
                .await?;
        let mut rows = 0u64;
        for batch in batches {
            let matched = subject
                .matches(&batch?)
                .map_err(|e| arrow_error(location, e))?;
            rows += matched.true_count() as u64;
        }
        if rows > 0 {
            found.push(Found {
                remove,
                path,
                partition_values,
                size,
                rows,
            });
        }
    }
    report.files_rewritten = found.len();
    report.rows_removed = found.iter().map(|f| f.rows).sum();
    report.bytes_rewritten = found.iter().map(|f| f.size).sum();
    Ok((!found.is_empty()).then_some(found))
}

/// Each file of `found` rewritten without the subject's rows (a file that held nothing
/// else is not replaced); mirror files get the key range of what they keep.
async fn rewrite(
    location: &Url,
    table: &DeltaTable,
    subject: &Subject,
    mirror_key: Option<&[String]>,
    found: &[Found],
) -> Result<Vec<Add>, LakeError> {
    let layout = committed_schema(location, table)?;
    let converter = match mirror_key {
        Some(key) => Some(
            RowConverter::new(
                key.iter()
                    .map(|k| {
                        layout
                            .field_with_name(k)
                            .map(|f| SortField::new(f.data_type().clone()))
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| arrow_error(location, e))?,
            )
            .map_err(|e| arrow_error(location, e))?,
        ),
        None => None,
    };
    let mut adds = Vec::new();
    for file in found {
        // The first and last key of the rows kept, for a mirror file's tags.
        let range: Mutex<(Option<String>, Option<String>)> = Mutex::new((None, None));
        let keep = |batch: RecordBatch| -> Result<RecordBatch, LakeError> {
            let matched = subject
                .matches(&batch)
                .map_err(|e| arrow_error(location, e))?;
            let kept = filter_record_batch(
                &batch,
                &not(&matched).map_err(|e| arrow_error(location, e))?,
            )
            .map_err(|e| arrow_error(location, e))?;
            if let (Some(key), Some(converter)) = (mirror_key, &converter)
                && kept.num_rows() > 0
            {
                let (first, last) = first_and_last_key(&kept, key, converter)
                    .map_err(|e| arrow_error(location, e))?;
                let mut range = range.lock().unwrap_or_else(|e| e.into_inner());
                range.0.get_or_insert(first);
                range.1 = Some(last);
            }
            Ok(kept)
        };
        let files: [SourceFile<'_>; 1] = [(&file.path, &file.partition_values)];
        let written = match rewrite_rows(location, table, &files, &layout, file.size, &keep).await {
            Ok(written) => written,
            Err(err) => {
                delete_files(table, &adds).await;
                return Err(err);
            }
        };
        let range = range.into_inner().unwrap_or_else(|e| e.into_inner());
        for add in written {
            adds.push(match (&range, mirror_key) {
                ((Some(first), Some(last)), Some(_)) => {
                    with_key_range(add, &(first.clone(), last.clone()))
                }
                _ => add,
            });
        }
    }
    Ok(adds)
}

/// After the erasure at `version`: a checkpoint there, the data files no version from
/// it on references deleted, and the log before it deleted (see the module docs).
async fn clean_history(
    lake: &Lake,
    location: &Url,
    version: i64,
    report: &mut ErasureReport,
) -> Result<(), LakeError> {
    let delta_err = |e| LakeError::delta(location, e);
    let log_store = lake.log_store(location)?;
    let mut at = DeltaTable::new(log_store.clone());
    at.load_version(u64::try_from(version).unwrap_or(0))
        .await
        .map_err(delta_err)?;
    deltalake_core::checkpoints::create_checkpoint(&at, None)
        .await
        .map_err(delta_err)?;
    let latest = lake.load_table(location).await?;
    let mut keep: HashSet<String> = active_paths(location, &at)?;
    keep.extend(active_paths(location, &latest)?);
    let snapshot = at.snapshot().map_err(delta_err)?;
    let tombstones: HashSet<String> = snapshot
        .all_tombstones(log_store.as_ref())
        .map_ok(|t| store_path(&t.path()))
        .try_collect()
        .await
        .map_err(delta_err)?;
    let retention =
        chrono::Duration::from_std(lake.options().retention).unwrap_or(chrono::Duration::MAX);
    let old = chrono::Utc::now()
        .checked_sub_signed(retention)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let store = at.object_store();
    let store_err = |source| LakeError::Store {
        url: location.to_string(),
        source,
    };
    let mut listing = store.list(None);
    let mut data_deleted = 0;
    let mut logs_deleted = 0;
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(store_err)?;
        let path = meta.location.to_string();
        if let Some(name) = path.strip_prefix("_delta_log/") {
            if log_version(name).is_some_and(|v| v < version) {
                store.delete(&meta.location).await.map_err(store_err)?;
                logs_deleted += 1;
            }
            continue;
        }
        // The log's folder is handled above; other `_` folders (spool, lease) are not data.
        let internal = meta
            .location
            .parts()
            .any(|part| part.as_ref().starts_with('_'));
        if internal || keep.contains(&path) {
            continue;
        }
        if tombstones.contains(&path) || meta.last_modified < old {
            store.delete(&meta.location).await.map_err(store_err)?;
            data_deleted += 1;
        }
    }
    report.files_deleted = data_deleted;
    report.log_files_deleted = logs_deleted;
    report.history_starts_at = Some(version);
    Ok(())
}

/// The version a `_delta_log` file belongs to (commits, checkpoints, checksums).
fn log_version(name: &str) -> Option<i64> {
    let digits = name.get(..20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || name.as_bytes().get(20) != Some(&b'.') {
        return None;
    }
    digits.parse().ok()
}

fn marker_path() -> Path {
    Path::from(format!("{LEASE_FOLDER}/{PENDING_MARKER}"))
}

/// What an unfinished erasure left to do.
enum Marker {
    /// Its version is the first forget version after this one.
    After(i64),
    /// End the history at this version.
    CleanAt(i64),
}

async fn write_marker(lake: &Lake, location: &Url, marker: Marker) -> Result<(), LakeError> {
    let store = lake.log_store(location)?.object_store(None);
    let body = match marker {
        Marker::After(version) => serde_json::json!({ "after_version": version }),
        Marker::CleanAt(version) => serde_json::json!({ "clean_at": version }),
    }
    .to_string();
    store
        .put(&marker_path(), PutPayload::from(body.into_bytes()))
        .await
        .map_err(|source| LakeError::Store {
            url: location.to_string(),
            source,
        })?;
    Ok(())
}

async fn delete_marker(lake: &Lake, location: &Url) -> Result<(), LakeError> {
    let store = lake.log_store(location)?.object_store(None);
    match store.delete(&marker_path()).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(LakeError::Store {
            url: location.to_string(),
            source,
        }),
    }
}

/// Finishes the history cleanup of an erasure that crashed after its commit: the marker
/// names the version before it; the forget version is the first after it.
async fn finish_pending(
    lake: &Lake,
    location: &Url,
    table: &mut DeltaTable,
    report: &mut ErasureReport,
) -> Result<(), LakeError> {
    let store = table.object_store();
    let marker = match store.get(&marker_path()).await {
        Ok(result) => result.bytes().await,
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(err) => Err(err),
    }
    .map_err(|source| LakeError::Store {
        url: location.to_string(),
        source,
    })?;
    let marker = serde_json::from_slice::<serde_json::Value>(&marker).unwrap_or_default();
    if let Some(version) = marker["clean_at"].as_i64() {
        tracing::info!(table = %location, version, "finishing the history cleanup of an interrupted forget");
        clean_history(lake, location, version, report).await?;
        delete_marker(lake, location).await?;
        return commit::reload(location, table).await;
    }
    let after = marker["after_version"].as_i64().unwrap_or(-1);
    let latest = commit::loaded_version(table).unwrap_or(-1);
    for version in after + 1..=latest {
        let path = Path::from(format!("_delta_log/{version:020}.json"));
        let Ok(result) = store.get(&path).await else {
            continue;
        };
        let Ok(bytes) = result.bytes().await else {
            continue;
        };
        let forget = bytes.split(|b| *b == b'\n').any(|line| {
            serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|a| is_forget_commit(&a))
        });
        if forget {
            tracing::info!(table = %location, version, "finishing the history cleanup of an interrupted forget");
            clean_history(lake, location, version, report).await?;
            break;
        }
    }
    delete_marker(lake, location).await?;
    commit::reload(location, table).await
}

fn arrow_error(location: &Url, error: arrow::error::ArrowError) -> LakeError {
    LakeError::delta(location, error.into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn subject() -> Subject {
        Subject {
            columns: vec![
                (
                    "id".into(),
                    Arc::new(Int32Array::from(vec![42])) as ArrayRef,
                ),
                (
                    "email".into(),
                    Arc::new(StringArray::from(vec!["ab"])) as ArrayRef,
                ),
            ],
        }
    }

    #[test]
    fn every_column_must_match_and_nulls_do_not() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int32, true),
                Field::new("email", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int32Array::from(vec![Some(42), Some(42), None, Some(7)])),
                Arc::new(StringArray::from(vec![
                    Some("ab"),
                    None,
                    Some("ab"),
                    Some("ab"),
                ])),
            ],
        )
        .unwrap();
        let matched = subject().matches(&batch).unwrap();
        assert_eq!(
            matched.iter().collect::<Vec<_>>(),
            [Some(true), Some(false), Some(false), Some(false)]
        );
    }

    #[test]
    fn statistics_rule_out_files_only_when_they_can() {
        let s = subject();
        assert!(s.may_be_in(None));
        assert!(s.may_be_in(Some(
            r#"{"minValues":{"id":1,"email":"aa"},"maxValues":{"id":50,"email":"zz"}}"#
        )));
        assert!(!s.may_be_in(Some(
            r#"{"minValues":{"id":43,"email":"aa"},"maxValues":{"id":50,"email":"zz"}}"#
        )));
        assert!(!s.may_be_in(Some(
            r#"{"minValues":{"id":1,"email":"ac"},"maxValues":{"id":50,"email":"zz"}}"#
        )));
        // No statistics of a column: it may be there.
        assert!(s.may_be_in(Some(r#"{"minValues":{},"maxValues":{}}"#)));
        assert_eq!(log_version("00000000000000000012.json"), Some(12));
        assert_eq!(
            log_version("00000000000000000012.checkpoint.parquet"),
            Some(12)
        );
        assert_eq!(log_version("_last_checkpoint"), None);
    }
}
