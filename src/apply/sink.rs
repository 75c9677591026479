//! The seam between the applier and a lake table: what the applier asks of the place a
//! table's changes go, so the apply rules (confirm after commit, the per-table skip,
//! `_seq`, schema before rows) are tested against an in-memory table (`apply::memory`)
//! as well as run against the lake.
//!
//! ```text
//!  Applier ─► ReplicatedTable<W: ChunkWriter> ── write / follow_schema ──► W
//!                                 W = LakeTable      (start-up: the table is used directly)
//!                                 W = writer::Writer (streaming: commands to the table's
//!                                                     writer task, which drives a TableSink)
//! ```
//!
//! Invariant: a sink applies what it is given in the order given, and a commit makes
//! everything given before it visible at once, or fails and makes none of it visible.

use std::future::Future;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use super::ApplyError;
use super::streamed::{Aborted, finish_batch};
use crate::lake::{CommitOutcome, LakeTable, SpoolStore};
use crate::lsn::Lsn;
use crate::privacy::{self, Policy, Protection};
use crate::schema::{TableSchema, UNKNOWN_TYPE};

/// Where the chunks of rows of one table go, in order.
pub trait ChunkWriter: Send {
    /// Hands a chunk of rows (the table's current layout) to the table's open files.
    fn write_rows(
        &mut self,
        chunk: RecordBatch,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Goes on with `schema` (a Relation message changed the table): its layout when
    /// `layout_changed`, and its column policies, from the table's next commit on.
    fn follow_schema(
        &mut self,
        schema: Arc<TableSchema>,
        layout_changed: bool,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// The highest source commit LSN the table holds, if any: source transactions at or
    /// below it are skipped on replay.
    fn committed_lsn(&self) -> Option<Lsn>;

    /// Where the rows of transactions streamed before their commit are spooled.
    fn spools(&self) -> SpoolStore;
}

/// A source transaction streamed before its commit, now committed: what its spooled rows
/// need to become the committed transaction's rows (see `streamed::finish_batch`).
#[derive(Debug, Clone)]
pub struct StreamedCommit {
    /// The changes of aborted subtransactions.
    pub aborted: Aborted,
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// Its commit time, Unix µs.
    pub commit_ts_micros: i64,
}

impl StreamedCommit {
    /// A spooled batch as the committed transaction's rows.
    pub fn finish(&self, batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
        finish_batch(batch, &self.aborted, self.commit_lsn, self.commit_ts_micros)
    }
}

/// What writing a streamed transaction's spool did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolWritten {
    /// Rows written (its aborted changes dropped).
    pub rows: usize,
    /// Changes per op (`metrics::OPS` order).
    pub changes: [u64; 4],
}

/// What one table's commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The outcome.
    pub outcome: CommitOutcome,
    /// Number of data files the commit added.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// A lake table as the writer task of a streaming session drives it.
pub trait TableSink: ChunkWriter + 'static {
    /// Writes the rows of a streamed transaction's `spool` (each batch finished by
    /// `commit`) like [`ChunkWriter::write_rows`], then deletes the spool.
    fn write_spool(
        &mut self,
        spool: crate::lake::Spool,
        commit: StreamedCommit,
    ) -> impl Future<Output = Result<SpoolWritten, ApplyError>> + Send;

    /// Commits everything written since the last commit as one version recording `lsn`,
    /// the commit LSN of the last source transaction it holds.
    fn commit(&mut self, lsn: Lsn) -> impl Future<Output = Result<Committed, ApplyError>> + Send;

    /// Drops everything written since the last commit (a stop inside a transaction).
    fn abandon(&mut self);
}

impl ChunkWriter for LakeTable {
    async fn write_rows(&mut self, chunk: RecordBatch) -> Result<(), ApplyError> {
        Ok(self.write(chunk).await?)
    }

    async fn follow_schema(
        &mut self,
        schema: Arc<TableSchema>,
        layout_changed: bool,
    ) -> Result<(), ApplyError> {
        if layout_changed {
            // A widened column makes the lake rewrite its files (see `lake::table`).
            self.evolve(schema.arrow.clone()).await?;
        }
        record_policies(self, &schema).await
    }

    fn committed_lsn(&self) -> Option<Lsn> {
        LakeTable::committed_lsn(self)
    }

    fn spools(&self) -> SpoolStore {
        LakeTable::spools(self)
    }
}

impl TableSink for LakeTable {
    async fn write_spool(
        &mut self,
        spool: crate::lake::Spool,
        commit: StreamedCommit,
    ) -> Result<SpoolWritten, ApplyError> {
        let mut changes = [0; 4];
        let rows = LakeTable::write_spool(self, spool, |batch| {
            let batch = commit.finish(batch)?;
            super::count_ops(&batch, &mut changes);
            Ok(batch)
        })
        .await?;
        Ok(SpoolWritten { rows, changes })
    }

    async fn commit(&mut self, lsn: Lsn) -> Result<Committed, ApplyError> {
        let outcome = LakeTable::commit(self, lsn).await?;
        let (files, bytes) = match outcome {
            CommitOutcome::Committed { .. } => self.last_commit_files(),
            _ => (0, 0),
        };
        Ok(Committed {
            outcome,
            files,
            bytes,
        })
    }

    fn abandon(&mut self) {
        self.abandon_pending();
    }
}

/// Records in the lake table what `schema`'s policies are (staged for its next commit,
/// nothing when unchanged): each protected column's policy, the hash key's id, and the
/// columns without statistics, which every writer of the table reads.
async fn record_policies(lake: &mut LakeTable, schema: &TableSchema) -> Result<(), ApplyError> {
    let current = schema
        .columns
        .iter()
        .filter(|c| c.type_oid != UNKNOWN_TYPE)
        .map(|c| (c.name.as_str(), c.policy))
        .chain(
            schema
                .excluded
                .iter()
                .map(|n| (n.as_str(), Policy::Exclude)),
        );
    let recorded = lake.property(privacy::POLICIES_PROPERTY)?;
    if let Some(merged) = privacy::merge_recorded(recorded.as_deref(), current) {
        lake.set_property(privacy::POLICIES_PROPERTY, &merged)?;
    }
    let key = schema.columns.iter().find_map(|c| match &c.protection {
        Some(Protection::Hash(key)) => Some(key),
        _ => None,
    });
    if let Some(key) = key {
        lake.set_property(privacy::HASH_KEY_ID_PROPERTY, key.id())?;
    }
    let unstated: Vec<&str> = schema
        .columns
        .iter()
        .filter(|c| !c.statistics)
        .map(|c| c.name.as_str())
        .collect();
    let property = lake.property(privacy::NO_STATISTICS_PROPERTY)?;
    if !unstated.is_empty() || property.is_some() {
        let list = serde_json::to_string(&unstated).unwrap_or_default();
        lake.set_no_statistics(&list).await?;
    }
    Ok(())
}
