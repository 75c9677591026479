//! One replicated table as the applier holds it: its current schema, the rows not yet
//! handed to the writer, and the writer: the lake table itself at start-up (initial
//! load, schema reconciliation), its writer task while streaming (see `writer`).

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::ApplyError;
use super::sink::{ChunkWriter, TableSink};
use super::writer::{self, Ack, Writer};
use crate::batch::TableBatch;
use crate::lake::LakeTable;
use crate::lsn::Lsn;
use crate::metrics;
use crate::schema::{Evolution, TableSchema, TypeChangeKind, TypeChangePolicy};

/// One replicated table: its schema, the rows not yet handed to the writer, the writer.
pub struct ReplicatedTable<W = LakeTable> {
    pub(super) schema: Arc<TableSchema>,
    pub(super) batch: TableBatch,
    pub(super) lake: W,
    /// Rows handed to the lake writer since its last commit.
    pub(super) written: usize,
    /// Changes per op since the last commit (`metrics::OPS` order), for metrics.
    pub(super) op_counts: [u64; 4],
    /// How type changes the lake column cannot hold are followed.
    pub(super) type_change: TypeChangePolicy,
}

impl<W: ChunkWriter> ReplicatedTable<W> {
    /// Pairs a table schema with its writer (an opened lake table).
    pub fn new(schema: Arc<TableSchema>, lake: W) -> Self {
        ReplicatedTable {
            batch: TableBatch::new(schema.clone()),
            schema,
            lake,
            written: 0,
            op_counts: [0; 4],
            type_change: TypeChangePolicy::default(),
        }
    }

    /// Sets how type changes the lake column cannot hold are followed.
    pub fn with_type_change_policy(mut self, policy: TypeChangePolicy) -> Self {
        self.type_change = policy;
        self
    }

    /// How type changes the lake column cannot hold are followed.
    pub fn type_change_policy(&self) -> TypeChangePolicy {
        self.type_change
    }

    pub(super) fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema.namespace, self.schema.name)
    }

    /// The table's current schema (source columns and lake layout).
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// The highest source commit LSN committed to this table, if any.
    pub fn committed_lsn(&self) -> Option<Lsn> {
        self.lake.committed_lsn()
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.batch.is_empty() || self.written > 0
    }

    /// Switches to the schema a Relation message (or the catalog) describes: rows
    /// buffered with the old one go to the lake writer first, and a grown layout is
    /// staged in the lake table for its next commit.
    pub async fn evolve(&mut self, evolution: Evolution) -> Result<(), ApplyError> {
        if evolution.schema.same_source(&self.schema) {
            return Ok(());
        }
        self.write_chunk().await?;
        let layout_changed = evolution.layout_changed();
        let schema = Arc::new(evolution.schema.clone());
        self.lake
            .follow_schema(schema.clone(), layout_changed)
            .await?;
        let table = self.qualified_name();
        if evolution.is_visible() {
            tracing::info!(
                table = %table,
                added = ?evolution.added,
                dropped = ?evolution.dropped,
                retyped = ?evolution.retyped,
                "table schema changed"
            );
        }
        for change in &evolution.type_changes {
            let policy = match change.kind {
                TypeChangeKind::Widened => "widen",
                TypeChangeKind::NewColumn => self.type_change.as_str(),
            };
            tracing::warn!(
                table = %table,
                column = %change.column,
                old_type = %change.old,
                new_type = %change.new,
                policy,
                lake_column = %change.lake_column,
                "column type changed"
            );
        }
        // A new column made by a type change counts as that change, not as an added column.
        let moved = evolution
            .type_changes
            .iter()
            .filter(|c| c.kind == TypeChangeKind::NewColumn)
            .count();
        let metrics = metrics::global();
        metrics.record_schema_changes(
            &table,
            "add_column",
            evolution.added.len() - moved.min(evolution.added.len()),
        );
        metrics.record_schema_changes(&table, "drop_column", evolution.dropped.len());
        metrics.record_schema_changes(&table, "retype", evolution.retyped.len());
        metrics.record_schema_changes(&table, "widen", evolution.widened().count());
        metrics.record_schema_changes(&table, "new_column", moved);
        self.schema = schema;
        self.batch = TableBatch::new(self.schema.clone());
        Ok(())
    }

    pub(super) async fn write_chunk(&mut self) -> Result<(), ApplyError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = self.batch.len();
        let chunk = self.batch.finish()?;
        self.lake.write_rows(chunk).await?;
        self.written += rows;
        Ok(())
    }
}

impl<S: TableSink> ReplicatedTable<S> {
    /// Hands the table's sink to a writer task of its own (see [`writer`]), as table
    /// `index` of the applier.
    pub(super) fn spawn_writer(
        self,
        index: usize,
        acks: mpsc::UnboundedSender<Ack>,
        memory: Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
    ) -> ReplicatedTable<Writer> {
        let name = self.qualified_name();
        ReplicatedTable {
            schema: self.schema,
            batch: self.batch,
            lake: writer::spawn(index, name, self.lake, acks, memory, tasks),
            written: self.written,
            op_counts: self.op_counts,
            type_change: self.type_change,
        }
    }
}

impl ReplicatedTable<LakeTable> {
    /// The lake table, for the initial snapshot, which writes and commits it directly.
    pub fn lake_mut(&mut self) -> &mut LakeTable {
        &mut self.lake
    }

    /// The lake table.
    pub fn lake(&self) -> &LakeTable {
        &self.lake
    }
}
