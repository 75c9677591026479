//! Compaction: the small files of a date partition rewritten into files near a target
//! size, committed as one OPTIMIZE version whose `remove`s and `add`s carry
//! `dataChange: false`.
//!
//! ```text
//!  plan:    per partition, the small files (below ¾ of the target size) in change-log order
//!           (their smallest `_lsn`, `_seq`); a closed partition (before today, UTC) with
//!           two or more, the open one with `min_files` or more; packed into bins whose
//!           inputs add up to about the target size; a bin of one file is left alone
//!  rewrite: each bin's files read a batch at a time, in order, into one writer
//!           (the rows, their order and every column unchanged) ─► new files
//!  commit:  per partition: remove inputs + add outputs, dataChange false, operation
//!           OPTIMIZE; if another writer replaced an input meanwhile ─► the outputs are
//!           deleted and the table is left for the next pass (table::commit)
//! ```
//!
//! Readers see the same rows before and after (streaming readers skip `dataChange:
//! false` versions); time travel to earlier versions keeps reading the inputs until
//! VACUUM deletes them after the retention period. The caller holds the table's
//! maintenance lease ([`crate::lake::Lease`]), renewed between bins.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;
use deltalake_core::DeltaTable;
use deltalake_core::kernel::{Action, Add, Remove};
use deltalake_core::protocol::DeltaOperation;
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Serialize;
use url::Url;

use super::commit::{self, Commit, Committed};
use super::{PARTITION_COLUMN, committed_schema, encoding, new_writer, reader::file_batches};
use crate::lake::lease::Lease;
use crate::lake::store::{Lake, LakeError};

/// What compaction rewrites, and when.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// Files below this size are small; a bin's inputs add up to about this size.
    pub target_file_size: u64,
    /// Small files the open partition (today's, or a later date) needs before it is
    /// compacted; a closed partition needs two.
    pub min_files: usize,
    /// Today, as days since 1970-01-01 (UTC): partitions before it are closed.
    pub today: i32,
    /// Only plan: report what would be rewritten, write nothing.
    pub dry_run: bool,
}

/// What a compaction of one table did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct CompactionReport {
    /// Partitions rewritten.
    pub partitions: usize,
    /// Small files replaced.
    pub files_removed: usize,
    /// Files written in their place.
    pub files_added: usize,
    /// Bytes of the replaced files (the bytes rewritten).
    pub bytes_removed: u64,
    /// Bytes of the files written.
    pub bytes_added: u64,
    /// Delta versions committed.
    pub versions: Vec<i64>,
    /// Partitions left alone because another writer replaced their files meanwhile.
    pub conflicts: usize,
}

/// Files, bytes and small files of a table's current version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileStats {
    /// Data files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files below the compaction target size.
    pub small_files: u64,
}

/// One data file as the planner sees it.
#[derive(Debug, Clone)]
struct Candidate {
    remove: Remove,
    path: Path,
    partition_values: std::collections::HashMap<String, Option<String>>,
    date: String,
    size: u64,
    /// Change-log order of its first row: smallest `_lsn`, `_seq`, then modification
    /// time and path for files without statistics.
    order: (i64, i64, i64, String),
}

/// Counts of the files of `table`'s loaded version, for metrics.
pub fn file_stats(
    location: &Url,
    table: &DeltaTable,
    target_file_size: u64,
) -> Result<FileStats, LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    let mut stats = FileStats::default();
    for file in snapshot.log_data().iter() {
        let size = u64::try_from(file.size()).unwrap_or(0);
        stats.files += 1;
        stats.bytes += size;
        stats.small_files += u64::from(is_small(size, target_file_size));
    }
    Ok(stats)
}

/// Compacts `table` at `location`, loaded by the caller (see the module docs), renewing
/// `lease` (the table's maintenance lease, which the caller holds) between bins. `table`
/// is left at the latest version this compaction saw.
pub async fn compact(
    lake: &Lake,
    location: &Url,
    table: &mut DeltaTable,
    options: &CompactionOptions,
    mut lease: Option<&mut Lease>,
) -> Result<CompactionReport, LakeError> {
    let mut report = CompactionReport::default();
    let partitions = plan(&candidates(location, table)?, options);
    for (date, bins) in partitions {
        let inputs: Vec<&Candidate> = bins.iter().flatten().collect();
        let bytes_removed: u64 = inputs.iter().map(|file| file.size).sum();
        if options.dry_run {
            report.partitions += 1;
            report.files_removed += inputs.len();
            report.bytes_removed += bytes_removed;
            report.files_added += bins.len();
            continue;
        }
        let mut adds = Vec::new();
        let written =
            rewrite_partition(location, table, &bins, lease.as_deref_mut(), &mut adds).await;
        if let Err(err) = written {
            delete_files(table, &adds).await;
            return Err(err);
        }
        let actions: Vec<Action> = inputs
            .iter()
            .map(|file| Action::Remove(file.remove.clone()))
            .chain(adds.iter().cloned().map(Action::Add))
            .collect();
        // The rewritten files are uploaded; the version that swaps them in is not written.
        crate::crash_point!("compact::before_commit");
        let commit = Commit {
            actions,
            operation: DeltaOperation::Optimize {
                predicate: Some(format!("{PARTITION_COLUMN} = '{date}'")),
                target_size: i64::try_from(options.target_file_size).unwrap_or(i64::MAX),
            },
            txn: None,
            info: vec![(
                "pg2lake.operation".to_owned(),
                serde_json::json!("compaction"),
            )],
            checkpoint_interval: lake.options().checkpoint_interval,
        };
        let version = match commit::commit(location, table, commit).await {
            Ok(Committed::Version(version)) => Some(version),
            Ok(Committed::Landed) => commit::loaded_version(table),
            Err(LakeError::Conflict { reason, .. }) => {
                tracing::info!(table = %location, date, reason, "compaction conflicts with another writer; left for the next pass");
                delete_files(table, &adds).await;
                report.conflicts += 1;
                // The plan was made from a version that is gone: plan again next pass.
                break;
            }
            Err(err) => {
                // Unknown whether it landed (the store may be down): leave the files, a
                // later VACUUM removes them if they stayed unreferenced.
                return Err(err);
            }
        };
        crate::crash_point!("compact::after_commit");
        report.partitions += 1;
        report.files_removed += inputs.len();
        report.bytes_removed += bytes_removed;
        report.files_added += adds.len();
        report.bytes_added += adds
            .iter()
            .map(|add| u64::try_from(add.size).unwrap_or(0))
            .sum::<u64>();
        report.versions.extend(version);
        tracing::info!(table = %location, date, files = inputs.len(), into = adds.len(), bytes = bytes_removed, version, "compacted partition");
    }
    Ok(report)
}

/// Rewrites each bin of one partition into new files (appended to `adds` as they are
/// written, so the caller can delete them when something fails).
async fn rewrite_partition(
    location: &Url,
    table: &DeltaTable,
    bins: &[Vec<Candidate>],
    mut lease: Option<&mut Lease>,
    adds: &mut Vec<Add>,
) -> Result<(), LakeError> {
    let layout = committed_schema(location, table)?;
    for bin in bins {
        let target: u64 = bin.iter().map(|file| file.size).sum();
        let files: Vec<SourceFile<'_>> = bin
            .iter()
            .map(|file| (&file.path, &file.partition_values))
            .collect();
        let written =
            rewrite_rows(location, table, &files, &layout, target, &|batch| Ok(batch)).await?;
        adds.extend(written.into_iter().map(|add| Add {
            data_change: false,
            ..add
        }));
        let Some(lease) = lease.as_deref_mut() else {
            continue;
        };
        let renewed = lease.renew().await.map_err(|source| LakeError::Store {
            url: location.to_string(),
            source,
        })?;
        if !renewed {
            return Err(LakeError::Conflict {
                table: location.to_string(),
                reason: "the maintenance lease expired and another compactor took it".into(),
            });
        }
    }
    Ok(())
}

/// A data file to read: its path and partition values.
pub(in crate::lake) type SourceFile<'a> = (
    &'a Path,
    &'a std::collections::HashMap<String, Option<String>>,
);

/// What a rewrite keeps of each batch it reads (all of it for compaction; the rows
/// that are not the subject's for `forget`).
pub(in crate::lake) type RowFilter<'a> =
    &'a (dyn Fn(RecordBatch) -> Result<RecordBatch, LakeError> + Sync);

/// Writes the rows `keep` leaves of `files` (in order, every column unchanged) into new
/// files of `table` in the layout `layout`, for inputs of about `bytes` in all; returns
/// their `add`s (nothing committed). Date columns get statistics unless a value outside
/// years 1 to 9999 shows up (see `encoding`); the files are then written again without.
pub(in crate::lake) async fn rewrite_rows(
    location: &Url,
    table: &DeltaTable,
    files: &[SourceFile<'_>],
    layout: &arrow::datatypes::SchemaRef,
    bytes: u64,
    keep: RowFilter<'_>,
) -> Result<Vec<Add>, LakeError> {
    // The writer rolls over past the target size; the inputs are about that size, so
    // this is one file (two when rows compress worse than in the inputs).
    let target = bytes.saturating_mul(2).max(1);
    let mut date_statistics = true;
    loop {
        let mut writer = new_writer(location, table, target, date_statistics)?;
        if write_files(
            location,
            table,
            files,
            layout,
            &mut writer,
            date_statistics,
            keep,
        )
        .await?
        {
            return writer
                .flush()
                .await
                .map_err(|e| LakeError::delta(location, e));
        }
        writer.reset();
        date_statistics = false;
    }
}

/// Writes the rows `keep` leaves of `files` into `writer`, in order. `false` when a date
/// does not fit statistics and `date_statistics` is on (nothing is flushed yet).
async fn write_files(
    location: &Url,
    table: &DeltaTable,
    files: &[SourceFile<'_>],
    layout: &arrow::datatypes::SchemaRef,
    writer: &mut RecordBatchWriter,
    date_statistics: bool,
    keep: RowFilter<'_>,
) -> Result<bool, LakeError> {
    for (path, partition_values) in files {
        let batches = file_batches(table, location, path, partition_values, layout).await?;
        for batch in batches {
            let batch = keep(batch?)?;
            if batch.num_rows() == 0 {
                continue;
            }
            if date_statistics && !encoding::dates_fit_statistics(&batch) {
                return Ok(false);
            }
            writer
                .write(batch)
                .await
                .map_err(|e| LakeError::delta(location, e))?;
        }
    }
    Ok(true)
}

/// Deletes files written for a commit that will not happen (a compaction or mirror
/// refresh that conflicted; best effort: a file left behind is unreferenced, and VACUUM
/// removes it after the retention period).
pub(in crate::lake) async fn delete_files(table: &DeltaTable, adds: &[Add]) {
    let store = table.object_store();
    for add in adds {
        if let Ok(path) = Path::from_url_path(&add.path)
            && let Err(err) = store.delete(&path).await
        {
            tracing::debug!(error = %err, "could not delete an uncommitted compaction output");
        }
    }
}

/// The data files of `table`'s loaded version, as the planner sees them.
fn candidates(location: &Url, table: &DeltaTable) -> Result<Vec<Candidate>, LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|file| {
            let partition_values = file.partition_values_map();
            let date = partition_values
                .get(PARTITION_COLUMN)
                .cloned()
                .flatten()
                .unwrap_or_default();
            let (lsn, seq) = first_row_position(file.stats().as_deref());
            Candidate {
                remove: file.remove_action(false),
                path: file.object_store_path(),
                partition_values,
                date,
                size: u64::try_from(file.size()).unwrap_or(0),
                order: (lsn, seq, file.modification_time(), file.path().into_owned()),
            }
        })
        .collect())
}

/// The smallest `_lsn` and `_seq` in a file's statistics (`i64::MAX` when absent).
pub(in crate::lake) fn first_row_position(stats: Option<&str>) -> (i64, i64) {
    let stats: Option<serde_json::Value> = stats.and_then(|s| serde_json::from_str(s).ok());
    let min = |column: &str| {
        stats
            .as_ref()
            .and_then(|stats| stats["minValues"][column].as_i64())
            .unwrap_or(i64::MAX)
    };
    (min("_lsn"), min("_seq"))
}

/// Whether a file of `size` bytes is small: below three quarters of the target size. A
/// bin's inputs add up to at most the target, so a rewritten file of a full bin is about
/// that, and is not taken up again; the last, partial bin of a partition is, with the
/// small files that come after it.
fn is_small(size: u64, target_file_size: u64) -> bool {
    size < target_file_size - target_file_size / 4
}

/// The bins to rewrite, by partition (see the module docs).
fn plan(files: &[Candidate], options: &CompactionOptions) -> BTreeMap<String, Vec<Vec<Candidate>>> {
    let mut small: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for file in files {
        if is_small(file.size, options.target_file_size) {
            small
                .entry(file.date.clone())
                .or_default()
                .push(file.clone());
        }
    }
    let mut planned = BTreeMap::new();
    for (date, mut files) in small {
        let closed = super::partition_date(&files[0].partition_values)
            .is_some_and(|day| day < options.today);
        let needed = if closed { 2 } else { options.min_files.max(2) };
        if files.len() < needed {
            continue;
        }
        files.sort_by(|a, b| a.order.cmp(&b.order));
        let mut bins: Vec<Vec<Candidate>> = Vec::new();
        let mut bin: Vec<Candidate> = Vec::new();
        let mut bin_bytes = 0;
        for file in files {
            if !bin.is_empty() && bin_bytes + file.size > options.target_file_size {
                bins.push(std::mem::take(&mut bin));
                bin_bytes = 0;
            }
            bin_bytes += file.size;
            bin.push(file);
        }
        bins.push(bin);
        bins.retain(|bin| bin.len() >= 2);
        if !bins.is_empty() {
            planned.insert(date, bins);
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn file(date: &str, size: u64, lsn: i64) -> Candidate {
        let partition_values =
            HashMap::from([(PARTITION_COLUMN.to_owned(), Some(date.to_owned()))]);
        Candidate {
            remove: Remove {
                path: format!("{date}/{lsn}.parquet"),
                data_change: false,
                deletion_timestamp: None,
                extended_file_metadata: None,
                partition_values: None,
                size: None,
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
            },
            path: Path::from(format!("{date}/{lsn}.parquet")),
            partition_values,
            date: date.to_owned(),
            size,
            order: (lsn, 1, 0, String::new()),
        }
    }

    fn options(min_files: usize) -> CompactionOptions {
        CompactionOptions {
            target_file_size: 100,
            min_files,
            // 2026-12-02
            today: 20_789,
            dry_run: false,
        }
    }

    fn lsns(bins: &[Vec<Candidate>]) -> Vec<Vec<i64>> {
        bins.iter()
            .map(|bin| bin.iter().map(|f| f.order.0).collect())
            .collect()
    }

    #[test]
    fn closed_partitions_need_two_small_files_the_open_one_min_files() {
        let files = vec![
            file("2026-11-30", 10, 1),
            file("2026-12-01", 10, 2),
            file("2026-12-01", 10, 3),
            file("2026-12-02", 10, 4),
            file("2026-12-02", 10, 5),
            file("2026-12-02", 10, 6),
        ];
        let planned = plan(&files, &options(4));
        assert_eq!(planned.keys().collect::<Vec<_>>(), ["2026-12-01"]);
        let planned = plan(&files, &options(3));
        assert_eq!(
            planned.keys().collect::<Vec<_>>(),
            ["2026-12-01", "2026-12-02"]
        );
    }

    #[test]
    fn bins_follow_change_log_order_and_skip_large_and_lonely_files() {
        let files = vec![
            file("2026-11-01", 40, 5),
            file("2026-11-01", 500, 2),
            file("2026-11-01", 40, 1),
            file("2026-11-01", 40, 3),
            file("2026-11-01", 90, 9),
            file("2026-11-01", 30, 4),
        ];
        let planned = plan(&files, &options(10));
        // Small files (below 75) in order 1, 3, 4, 5: [1, 3] (80), then 4 + 5 = 70; 9
        // (90) is not small.
        assert_eq!(lsns(&planned["2026-11-01"]), vec![vec![1, 3], vec![4, 5]]);
    }

    #[test]
    fn statistics_give_the_first_row_position() {
        let stats = r#"{"numRecords":3,"minValues":{"_lsn":42,"_seq":7},"maxValues":{}}"#;
        assert_eq!(first_row_position(Some(stats)), (42, 7));
        assert_eq!(first_row_position(None), (i64::MAX, i64::MAX));
    }
}
