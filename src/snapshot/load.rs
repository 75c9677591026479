//! The copy itself: tables split into page ranges, copied by several connections that share
//! one exported snapshot, decoded from binary COPY into Arrow, written by one task per table.
//!
//! ```text
//!  plan: per table  relkind, reltuples, pages ─► ranges [0,p1) [p1,p2) … [pn,∞)
//!                                                 (one range: small, partitioned, PG < 14)
//!  worker 1..N (own connection; BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S):
//!     take next range ─► COPY (SELECT … WHERE ctid >= '(p1,0)' AND ctid < '(p2,0)')
//!                        TO STDOUT (FORMAT binary) ─► BinaryRows ─► TableBatch (8 MiB chunks)
//!                                                                      │ bounded channel
//!  writer per table (own task): RecordBatch ─► Parquet encode + upload ─► after the last
//!                                range: ONE Delta commit whose txn version is the snapshot LSN
//! ```
//!
//! Invariants:
//! - Every connection imports the same snapshot, so the ranges of a table together hold
//!   each row visible to it exactly once: a row version lives at one ctid, and the ranges
//!   cover all pages (the last one is open-ended, for pages added after it was planned).
//! - A table is committed only after every one of its ranges has been copied: a failed or
//!   cancelled copy commits nothing, and the next start copies the table again.
//! - Memory is bounded whatever the table size: per worker one chunk being built, per
//!   table a channel of [`CHANNEL_CHUNKS`] chunks and one open Parquet file (files roll by
//!   size in the lake writer).
//! - Parquet encoding runs in the writer tasks, off the tasks that read the network.
//! - `_seq` of a snapshot row is `range << 40 | ordinal in range`: unique within the table,
//!   and increasing in page order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::task::AbortOnDropHandle;

use crate::apply::ReplicatedTable;
use crate::batch::{BatchError, ChangeMeta, Op, TableBatch, binary};
use crate::config::SnapshotConfig;
use crate::lake::CommitOutcome;
use crate::lsn::Lsn;
use crate::metrics;
use crate::pg::catalog::quote_ident;
use crate::pg::connect;
use crate::pg::replication::ConnectParams;
use crate::schema::TableSchema;

use super::copy::{BinaryRows, CopyFormatError};
use super::progress::{Progress, TableProgress};
use super::{SnapshotError, SnapshotPoint, TableReport};

/// Rows per Arrow chunk handed to the Parquet writer: larger than the streaming path's,
/// since a snapshot chunk never waits for a transaction to end (bytes bound it too).
const CHUNK_ROWS: usize = 65_536;
/// Bytes per Arrow chunk handed to the Parquet writer.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Chunks queued per table between its copying connections and its writer.
const CHANNEL_CHUNKS: usize = 4;
/// Ranges per connection for one large table, so connections finishing early take more.
const RANGES_PER_CONNECTION: i64 = 4;
/// The first server version with TID range scans; before it a ctid range reads the table.
const TID_RANGE_SCAN_VERSION: i32 = 140_000;
/// Bits of `_seq` for the ordinal of a row within its range.
const SEQ_RANGE_SHIFT: u32 = 40;

/// What flows from the copying connections to a table's writer.
enum Chunk {
    /// Rows to write.
    Rows(RecordBatch),
    /// One of the table's ranges was copied completely.
    RangeDone,
}

/// One COPY: a table's page range.
struct Range {
    table: Arc<TableProgress>,
    schema: Arc<TableSchema>,
    /// Ordinal of the range within its table.
    index: u64,
    /// Pages `[from, to)`; `None` bounds are open.
    from: Option<i64>,
    to: Option<i64>,
    chunks: mpsc::Sender<Chunk>,
}

/// Why a row of the COPY stream could not be taken.
pub(crate) enum RowError {
    /// The stream was malformed.
    Format(CopyFormatError),
    /// The row's values could not be converted.
    Batch(Box<BatchError>),
}

impl From<CopyFormatError> for RowError {
    fn from(error: CopyFormatError) -> Self {
        RowError::Format(error)
    }
}

/// The shape of a table as the planner sees it.
struct TableSize {
    partitioned: bool,
    estimated_rows: Option<u64>,
    pages: i64,
}

/// Copies `tables[indices]` as of `point` with up to `parallelism` connections; each table
/// is committed as one Delta version whose `txn` is `point.lsn`. The exporting connection
/// must stay idle until this returns. On error, the tables that were being copied are
/// gone from `tables` (the caller ends its session).
pub async fn copy_tables(
    params: &ConnectParams,
    point: &SnapshotPoint,
    tables: &mut Vec<ReplicatedTable>,
    indices: &[usize],
    options: &SnapshotConfig,
) -> Result<Vec<TableReport>, SnapshotError> {
    // Without an exported snapshot every connection would see its own: one only.
    let parallelism = if point.name.is_some() {
        options.parallelism.max(1)
    } else {
        1
    };
    let first = begin(params, point).await?;
    let (commit_ts_micros, splitting) = snapshot_settings(&first, parallelism, options).await?;
    tracing::info!(lsn = %point.lsn, tables = indices.len(), parallelism, "snapshot started");

    let mut slots: Vec<Option<ReplicatedTable>> =
        std::mem::take(tables).into_iter().map(Some).collect();
    let mut queue = VecDeque::new();
    let mut writers = JoinSet::new();
    let progress = Progress::new(crate::terminal::status_lines_enabled());
    reset_gauges(&slots, indices);
    for &i in indices {
        let Some(table) = slots.get_mut(i).and_then(Option::take) else {
            continue;
        };
        let plan = plan_table(&first, table.schema(), splitting, &progress).await?;
        let ranges = plan.ranges.len();
        queue.extend(plan.ranges);
        writers.spawn(write_table(
            i,
            table,
            plan.chunks,
            ranges,
            point.lsn,
            plan.progress,
        ));
    }

    let connections = parallelism.min(queue.len()).max(1);
    let queue = Arc::new(Mutex::new(queue));
    let mut workers = JoinSet::new();
    workers.spawn(copy_ranges(
        first,
        queue.clone(),
        point.lsn,
        commit_ts_micros,
    ));
    for _ in 1..connections {
        let client = begin(params, point).await?;
        workers.spawn(copy_ranges(
            client,
            queue.clone(),
            point.lsn,
            commit_ts_micros,
        ));
    }
    drop(queue);
    // Aborted when this function returns, error or not.
    let _reporter = AbortOnDropHandle::new(progress.report_every(super::PROGRESS_INTERVAL));

    let mut reports = Vec::with_capacity(indices.len());
    let consequence = join_tasks(&mut workers, &mut writers, &mut slots, &mut reports).await?;
    progress.finish();
    if let Some(error) = consequence {
        return Err(error);
    }
    *tables = slots.into_iter().flatten().collect();
    // Report in the order the tables were asked for.
    reports.sort_by_key(|(slot, _)| indices.iter().position(|i| i == slot));
    Ok(reports.into_iter().map(|(_, report)| report).collect())
}

/// How the tables of one load are split into page ranges (see [`plan_ranges`]).
#[derive(Debug, Clone, Copy)]
struct Splitting {
    /// Whether tables may be split at all: several connections and TID range scans.
    split: bool,
    /// Connections that copy at once.
    parallelism: usize,
    /// Pages per range, from `snapshot.range_size`.
    range_pages: i64,
}

/// Reads, on the first connection, the snapshot's time (µs since the Unix epoch) and the
/// server settings that decide how tables are split.
async fn snapshot_settings(
    first: &Client,
    parallelism: usize,
    options: &SnapshotConfig,
) -> Result<(i64, Splitting), SnapshotError> {
    let err = |what| SnapshotError::query("*", what);
    let row = first
        .query_one(
            "SELECT (extract(epoch FROM now()) * 1000000)::int8, \
                    current_setting('server_version_num')::int, \
                    current_setting('block_size')::int8",
            &[],
        )
        .await
        .map_err(err("reading the snapshot time and server settings"))?;
    let commit_ts_micros: i64 = row.get(0);
    let version_num: i32 = row.get(1);
    let block_size: i64 = row.get(2);
    let range_pages =
        (i64::try_from(options.range_size.as_u64()).unwrap_or(i64::MAX) / block_size.max(1)).max(1);
    let split = parallelism > 1 && version_num >= TID_RANGE_SCAN_VERSION;
    Ok((
        commit_ts_micros,
        Splitting {
            split,
            parallelism,
            range_pages,
        },
    ))
}

/// Starts the snapshot gauges of `slots[indices]` over.
fn reset_gauges(slots: &[Option<ReplicatedTable>], indices: &[usize]) {
    // A retried load starts its gauges over (they are sums when table labels are off).
    let metrics = metrics::global();
    metrics
        .snapshot_tables_pending
        .set(i64::try_from(indices.len()).unwrap_or(i64::MAX));
    for table in indices
        .iter()
        .filter_map(|&i| slots.get(i).and_then(Option::as_ref))
    {
        let label = metrics
            .table_label(&table.schema().qualified_name())
            .to_owned();
        metrics.snapshot_rows.with_label_values(&[&label]).set(0);
        metrics
            .snapshot_rows_estimated
            .with_label_values(&[&label])
            .set(0);
    }
}

/// One table's planned copy: its ranges for the workers, the rest for its writer.
struct TablePlan {
    ranges: Vec<Range>,
    chunks: mpsc::Receiver<Chunk>,
    progress: Arc<TableProgress>,
}

/// Plans the page ranges of one table and the channel that carries their chunks.
async fn plan_table(
    first: &Client,
    schema: &Arc<TableSchema>,
    splitting: Splitting,
    progress: &Progress,
) -> Result<TablePlan, SnapshotError> {
    let size = table_size(first, schema).await?;
    let pages = plan_ranges(
        &size,
        splitting.split,
        splitting.parallelism,
        splitting.range_pages,
    );
    let state = progress.add(schema.qualified_name(), size.estimated_rows);
    let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
    let ranges: Vec<Range> = pages
        .iter()
        .copied()
        .enumerate()
        .map(|(index, (from, to))| Range {
            table: state.clone(),
            schema: schema.clone(),
            index: index as u64,
            from,
            to,
            chunks: sender.clone(),
        })
        .collect();
    tracing::info!(
        table = %schema.qualified_name(),
        estimated_rows = size.estimated_rows,
        pages = size.pages,
        ranges = ranges.len(),
        "snapshot of table planned"
    );
    Ok(TablePlan {
        ranges,
        chunks: receiver,
        progress: state,
    })
}

/// What a table's writer hands back: its slot, the table, and its report or error.
type Written = (usize, ReplicatedTable, Result<TableReport, SnapshotError>);

/// Waits for the copying connections and the writers, handing finished tables back to
/// `slots` and their reports to `reports`. Returns the first cause of a failure as the
/// error, and an error that only reflects another task's failure (a writer whose senders
/// went away, a worker whose writer went away) as `Ok(Some)`, in case no cause shows up.
async fn join_tasks(
    workers: &mut JoinSet<Result<(), SnapshotError>>,
    writers: &mut JoinSet<Written>,
    slots: &mut [Option<ReplicatedTable>],
    reports: &mut Vec<(usize, TableReport)>,
) -> Result<Option<SnapshotError>, SnapshotError> {
    let mut consequence = None;
    while !(workers.is_empty() && writers.is_empty()) {
        tokio::select! {
            biased;
            // Copying connections first: when a copy fails, its error is the cause, and
            // the writer that then sees its channel close only reports a consequence.
            // Either way the loop ends at the first cause (dropping both sets aborts the
            // rest of the load).
            Some(done) = workers.join_next(), if !workers.is_empty() => match done {
                Ok(Ok(())) => {}
                Ok(Err(error @ SnapshotError::Interrupted { .. })) => consequence = Some(error),
                Ok(Err(error)) => return Err(error),
                Err(join) => return Err(SnapshotError::Task(join.to_string())),
            },
            // Writers: a finished table is handed back; a lake error is a cause too.
            Some(done) = writers.join_next(), if !writers.is_empty() => match done {
                Ok((slot, table, Ok(report))) => {
                    slots[slot] = Some(table);
                    metrics::global().snapshot_tables_pending.dec();
                    reports.push((slot, report));
                }
                Ok((_, _, Err(error @ SnapshotError::Interrupted { .. }))) => {
                    consequence = Some(error);
                }
                Ok((_, _, Err(error))) => return Err(error),
                Err(join) => return Err(SnapshotError::Task(join.to_string())),
            },
        }
    }
    Ok(consequence)
}

/// A connection inside the snapshot: a read-only repeatable-read transaction that
/// imports the exported snapshot.
pub(crate) async fn begin(
    params: &ConnectParams,
    point: &SnapshotPoint,
) -> Result<Client, SnapshotError> {
    let client = connect::sql(params).await?;
    let err = |what| SnapshotError::query("*", what);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(err("starting the snapshot transaction"))?;
    if let Some(name) = &point.name {
        client
            .batch_execute(&format!(
                "SET TRANSACTION SNAPSHOT '{}'",
                name.replace('\'', "''")
            ))
            .await
            .map_err(err("importing the exported snapshot"))?;
    }
    Ok(client)
}

async fn table_size(client: &Client, schema: &TableSchema) -> Result<TableSize, SnapshotError> {
    let name = schema.qualified_name();
    let row = client
        .query_opt(
            "SELECT c.relkind = 'p', c.reltuples::float8, \
                    pg_relation_size(c.oid) / current_setting('block_size')::int8 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema.namespace, &schema.name],
        )
        .await
        .map_err(SnapshotError::query(&name, "reading the table size"))?;
    Ok(match row {
        Some(row) => TableSize {
            partitioned: row.get(0),
            // -1 (never analyzed, PG 14+) means unknown.
            estimated_rows: Some(row.get::<_, f64>(1))
                .filter(|r| *r >= 0.0)
                .map(|r| r as u64),
            pages: row.get(2),
        },
        None => TableSize {
            partitioned: false,
            estimated_rows: None,
            pages: 0,
        },
    })
}

/// The page ranges of a table: consecutive, covering page 0 onwards, the last one open.
fn plan_ranges(
    size: &TableSize,
    split: bool,
    parallelism: usize,
    range_pages: i64,
) -> Vec<(Option<i64>, Option<i64>)> {
    // A partitioned table's ctids repeat across its partitions: it is copied whole.
    if !split || size.partitioned {
        return vec![(None, None)];
    }
    let wanted = i64::try_from(parallelism)
        .unwrap_or(i64::MAX)
        .saturating_mul(RANGES_PER_CONNECTION);
    let count = (size.pages / range_pages.max(1)).clamp(1, wanted.max(1));
    (0..count)
        .map(|i| {
            let from = (i > 0).then(|| size.pages * i / count);
            let to = (i + 1 < count).then(|| size.pages * (i + 1) / count);
            (from, to)
        })
        .collect()
}

/// The COPY statement of one range, with every column in its binary send form or, where
/// pg2lake does not decode that (or a policy rewrites the value), its text output (`format('%s', …)` calls the type's output
/// function, as pgoutput does; a plain `::text` cast would not for bool, inet or char(n)).
pub(crate) fn copy_sql(schema: &TableSchema, from: Option<i64>, to: Option<i64>) -> String {
    let columns: Vec<String> = schema
        .tuple_columns
        .iter()
        .map(|&c| {
            // A column whose policy keeps its values out of the lake (exclude, null) is
            // not read at all: NULL stands in its place.
            let Some(column) = c
                .map(|c| &schema.columns[c])
                .filter(|c| c.policy.selected())
            else {
                return "NULL".to_owned();
            };
            let name = quote_ident(&column.name);
            if binary::decodes(column) {
                name
            } else {
                // num_nulls, not IS NULL: a composite whose fields are all null IS NULL
                // but is a value ("(,)"), and only a true NULL may become one.
                format!("CASE WHEN num_nulls({name}) = 1 THEN NULL ELSE format('%s', {name}) END")
            }
        })
        .collect();
    let mut bounds = Vec::new();
    if let Some(from) = from {
        bounds.push(format!("ctid >= '({from},0)'::tid"));
    }
    if let Some(to) = to {
        bounds.push(format!("ctid < '({to},0)'::tid"));
    }
    let filter = if bounds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", bounds.join(" AND "))
    };
    // The SELECT form also reads partitioned tables, which plain COPY TO refuses.
    format!(
        "COPY (SELECT {} FROM {}.{}{filter}) TO STDOUT (FORMAT binary)",
        if columns.is_empty() {
            // A table without columns still has rows.
            String::new()
        } else {
            columns.join(", ")
        },
        quote_ident(&schema.namespace),
        quote_ident(&schema.name)
    )
}

/// A worker: copies ranges from the queue until it is empty, then ends its transaction.
async fn copy_ranges(
    client: Client,
    queue: Arc<Mutex<VecDeque<Range>>>,
    lsn: Lsn,
    commit_ts_micros: i64,
) -> Result<(), SnapshotError> {
    loop {
        // The lock is never held across an await.
        let next = queue
            .lock()
            .map_err(|_| SnapshotError::Task("a copy task panicked".into()))?
            .pop_front();
        let Some(range) = next else { break };
        copy_range(&client, &range, lsn, commit_ts_micros).await?;
        if range.chunks.send(Chunk::RangeDone).await.is_err() {
            return Err(SnapshotError::interrupted(&range.schema));
        }
    }
    // Read only: nothing to commit, and ending it releases the snapshot at once.
    client
        .batch_execute("ROLLBACK")
        .await
        .map_err(SnapshotError::query("*", "ending the snapshot transaction"))
}

async fn copy_range(
    client: &Client,
    range: &Range,
    lsn: Lsn,
    commit_ts_micros: i64,
) -> Result<(), SnapshotError> {
    let schema = &range.schema;
    let name = schema.qualified_name();
    range.table.start();
    if range.index == 0 {
        tracing::info!(table = %name, "snapshot of table started");
    } else {
        tracing::debug!(table = %name, range = range.index, from_page = range.from, to_page = range.to, "snapshot of a page range started");
    }
    let stream = client
        .copy_out(&copy_sql(schema, range.from, range.to))
        .await
        .map_err(SnapshotError::query(&name, "starting COPY"))?;
    let mut stream = std::pin::pin!(stream);
    let mut batch = TableBatch::new(schema.clone());
    let mut rows = BinaryRows::new(schema.tuple_columns.len());
    let mut meta = ChangeMeta {
        op: Op::Read,
        lsn,
        seq: i64::try_from(range.index << SEQ_RANGE_SHIFT).unwrap_or(i64::MAX),
        commit_ts_micros,
        xid: None,
    };
    // Rows of `batch` and bytes received not yet counted in the table's progress.
    let (mut counted, mut bytes) = (0, 0);
    while let Some(data) = stream.next().await {
        let data = data.map_err(SnapshotError::query(&name, "reading COPY data"))?;
        bytes += data.len() as u64;
        rows.feed::<RowError>(&data, |row, fields| {
            meta.seq += 1;
            batch
                .push_binary_copy(&meta, row, fields)
                .map_err(|e| RowError::Batch(Box::new(e)))
        })
        .map_err(|error| match error {
            RowError::Format(source) => SnapshotError::Format {
                table: name.clone(),
                source,
            },
            RowError::Batch(error) => SnapshotError::Batch(*error),
        })?;
        if batch.len() >= CHUNK_ROWS || batch.approx_bytes() >= CHUNK_BYTES {
            range
                .table
                .add(batch.len() - counted, std::mem::take(&mut bytes));
            counted = 0;
            let chunk = batch.finish()?;
            if range.chunks.send(Chunk::Rows(chunk)).await.is_err() {
                return Err(SnapshotError::interrupted(schema));
            }
        } else if batch.len() - counted >= CHUNK_ROWS / 8 {
            // Progress moves between chunks too, for tables with wide rows.
            range
                .table
                .add(batch.len() - counted, std::mem::take(&mut bytes));
            counted = batch.len();
        }
    }
    rows.finish().map_err(|source| SnapshotError::Format {
        table: name.clone(),
        source,
    })?;
    range.table.add(batch.len() - counted, bytes);
    if !batch.is_empty() {
        let chunk = batch.finish()?;
        if range.chunks.send(Chunk::Rows(chunk)).await.is_err() {
            return Err(SnapshotError::interrupted(schema));
        }
    }
    Ok(())
}

/// A table's writer: writes the chunks of all its ranges, then commits once.
async fn write_table(
    slot: usize,
    mut table: ReplicatedTable,
    mut chunks: mpsc::Receiver<Chunk>,
    ranges: usize,
    lsn: Lsn,
    progress: Arc<TableProgress>,
) -> (usize, ReplicatedTable, Result<TableReport, SnapshotError>) {
    let result = write_and_commit(&mut table, &mut chunks, ranges, lsn, &progress).await;
    (slot, table, result)
}

async fn write_and_commit(
    table: &mut ReplicatedTable,
    chunks: &mut mpsc::Receiver<Chunk>,
    ranges: usize,
    lsn: Lsn,
    progress: &TableProgress,
) -> Result<TableReport, SnapshotError> {
    let mut done = 0;
    while done < ranges {
        match chunks.recv().await {
            Some(Chunk::Rows(batch)) => {
                table.lake_mut().write(batch).await?;
                // A copy of a large table takes hours: it is the loop turning, and
                // /healthz must not have the pod restarted in the middle of it.
                metrics::global().health.tick();
            }
            Some(Chunk::RangeDone) => done += 1,
            // Every sender is gone before the last range was done: a copy failed.
            None => return Err(SnapshotError::interrupted(table.schema())),
        }
    }
    // An empty table commits a version without rows: it records that the table holds
    // everything up to `lsn`, so the changes after it stream from the slot. Left
    // uncommitted, it would be copied again at the next start, and the changes made in
    // between would reach the lake as one copy instead of one row each.
    // Every range is copied and written; the table's first version is not committed yet.
    crate::crash_point!("snapshot::before_commit");
    let outcome = table.lake_mut().commit_position(lsn).await?;
    progress.finish();
    let elapsed = progress.elapsed();
    let version = match outcome {
        CommitOutcome::Committed { version } => Some(version),
        _ => None,
    };
    let (rows, bytes) = progress.totals();
    let name = table.schema().qualified_name();
    tracing::info!(
        table = %name,
        rows,
        bytes,
        lsn = %lsn,
        ?version,
        elapsed_ms = elapsed.as_millis() as u64,
        "snapshot of table committed"
    );
    Ok(TableReport {
        table: name,
        rows,
        bytes,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(pages: i64) -> TableSize {
        TableSize {
            partitioned: false,
            estimated_rows: None,
            pages,
        }
    }

    #[test]
    fn ranges_cover_every_page_once() {
        const PAGES: i64 = 8192;
        assert_eq!(
            plan_ranges(&size(1_000_000), false, 4, PAGES),
            vec![(None, None)]
        );
        assert_eq!(plan_ranges(&size(100), true, 4, PAGES), vec![(None, None)]);
        let ranges = plan_ranges(&size(100_000), true, 2, PAGES);
        assert_eq!(ranges.len(), 8);
        assert_eq!(ranges[0].0, None);
        assert_eq!(ranges[7].1, None);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "consecutive");
        }
        let mut partitioned = size(100_000);
        partitioned.partitioned = true;
        assert_eq!(
            plan_ranges(&partitioned, true, 2, PAGES),
            vec![(None, None)]
        );
        // A table between one and two ranges is not split.
        assert_eq!(plan_ranges(&size(PAGES * 3 / 2), true, 2, PAGES).len(), 1);
        assert_eq!(plan_ranges(&size(PAGES * 3), true, 2, PAGES).len(), 3);
        assert_eq!(plan_ranges(&size(PAGES * 3), true, 2, 1).len(), 8);
    }
}
