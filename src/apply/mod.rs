//! Applying decoded pgoutput messages to the lake tables.
//!
//! ```text
//!  Begin ─► Relation* ─► Insert/Update/Delete/Truncate* ─► Commit
//!             │                 │ skip if the table already holds this transaction
//!             ▼                 ▼ (its committed LSN ≥ the transaction's commit LSN)
//!        relation map      TableBatch (Arrow builders) ── chunk full ──► LakeTable::write
//!                                                                     (Parquet, not yet visible)
//!  Commit ─► flush policy (rows, bytes, age) ─► LakeTable::commit(commit LSN) per table
//!                                             ─► confirmable = the transaction's end LSN
//! ```
//!
//! A Relation message that changes a table's columns (ALTER TABLE) is applied in place
//! (see `schema::evolve`): rows buffered with the old layout go to the writer first, and
//! a grown layout is staged as a Delta `metaData` action that lands with the table's next
//! data commit, together with those rows, the new ones and the `txn`.
//!
//! Invariants:
//! - Lake commits happen only between source transactions, so a reader never sees part
//!   of one; a transaction larger than a chunk is written as several files first.
//! - `confirmable` is the end LSN of the last source transaction whose changes are all
//!   committed (or that touched no replicated table while nothing else was pending).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{ChangeMeta, Op, TableBatch};
use crate::lake::{CommitOutcome, LakeError, LakeTable};
use crate::lsn::Lsn;
use crate::metrics::{self, TableCommit};
use crate::pg::pgoutput::{self, LogicalMessage, OldTuple, Relation, TupleValue};
use crate::schema::{
    Evolution, SchemaError, TableSchema, TypeCatalog, TypeChangeKind, TypeChangePolicy,
};

/// Rows per Arrow chunk handed to the Parquet writer: bounded memory per table.
const CHUNK_ROWS: usize = 8192;
/// Bytes per Arrow chunk handed to the Parquet writer.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// When buffered changes are committed to the lake.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Commit once this many changes are pending.
    pub max_rows: usize,
    /// Commit once about this many bytes of changes are pending.
    pub max_bytes: usize,
    /// Commit pending changes at least this often.
    pub max_interval: Duration,
}

/// Errors while applying changes.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A change referenced a relation id that no Relation message announced.
    #[error("pgoutput change for unknown relation id {0} (protocol violation)")]
    UnknownRelation(u32),
    /// A change arrived outside Begin … Commit.
    #[error("pgoutput {0} message outside a transaction (protocol violation)")]
    OutsideTransaction(&'static str),
    /// A replicated table's columns changed in a way its lake table cannot follow.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A value could not be converted.
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
    /// The lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

impl ApplyError {
    /// Whether a new session may succeed where this one failed.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Lake(err) => err.is_transient(),
            _ => false,
        }
    }
}

/// One replicated table: its schema, the rows not yet handed to the writer, the lake table.
pub struct ReplicatedTable {
    schema: Arc<TableSchema>,
    batch: TableBatch,
    lake: LakeTable,
    /// Rows handed to the lake writer since its last commit.
    written: usize,
    /// Changes per op since the last commit (`metrics::OPS` order), for metrics.
    op_counts: [u64; 4],
    /// How type changes the lake column cannot hold are followed.
    type_change: TypeChangePolicy,
}

impl ReplicatedTable {
    /// Pairs a table schema with its opened lake table.
    pub fn new(schema: Arc<TableSchema>, lake: LakeTable) -> Self {
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

    fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema.namespace, self.schema.name)
    }

    /// The table's current schema (source columns and lake layout).
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// The lake table, for the initial snapshot, which writes and commits it directly.
    pub fn lake_mut(&mut self) -> &mut LakeTable {
        &mut self.lake
    }

    /// The lake table.
    pub fn lake(&self) -> &LakeTable {
        &self.lake
    }

    /// The highest source commit LSN committed to this table, if any.
    pub fn committed_lsn(&self) -> Option<Lsn> {
        self.lake.committed_lsn()
    }

    fn has_pending(&self) -> bool {
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
        if evolution.layout_changed() {
            // A widened column makes the lake rewrite its files (see `lake::table`).
            self.lake.evolve(evolution.schema.arrow.clone()).await?;
        }
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
        self.schema = Arc::new(evolution.schema);
        self.batch = TableBatch::new(self.schema.clone());
        Ok(())
    }

    async fn write_chunk(&mut self) -> Result<(), ApplyError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = self.batch.len();
        let chunk = self.batch.finish()?;
        self.lake.write(chunk).await?;
        self.written += rows;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Transaction {
    commit_lsn: Lsn,
    commit_ts_micros: i64,
    xid: u32,
    seq: i64,
}

/// What one committed flush did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// Tables that got a new Delta version.
    pub tables: usize,
    /// Rows committed.
    pub rows: usize,
}

/// The apply state of one replication session.
pub struct Applier {
    tables: Vec<ReplicatedTable>,
    by_name: HashMap<(String, String), usize>,
    by_relation: HashMap<u32, Option<usize>>,
    policy: FlushPolicy,
    txn: Option<Transaction>,
    /// Last source transaction fully applied: (commit LSN, end LSN).
    last_commit: Option<(Lsn, Lsn)>,
    pending_rows: usize,
    pending_bytes: usize,
    pending_since: Option<Instant>,
    /// Commit time (Unix µs) of the first pending change: what the lag is measured from.
    pending_commit_micros: Option<i64>,
    /// Commit LSN of the last flush that committed something.
    last_flushed: Option<Lsn>,
    confirmable: Lsn,
    /// Catalog and configured column types, for Relation messages.
    types: TypeCatalog,
}

impl Applier {
    /// Starts applying into `tables`; nothing before `start` is confirmable.
    pub fn new(tables: Vec<ReplicatedTable>, policy: FlushPolicy, start: Lsn) -> Self {
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.schema.namespace.clone(), t.schema.name.clone()), i))
            .collect();
        Applier {
            tables,
            by_name,
            by_relation: HashMap::new(),
            policy,
            txn: None,
            last_commit: None,
            pending_rows: 0,
            pending_bytes: 0,
            pending_since: None,
            pending_commit_micros: None,
            last_flushed: None,
            confirmable: start,
            types: TypeCatalog::default(),
        }
    }

    /// The column types Relation messages are mapped with; the pipeline looks up the
    /// types a Relation names here before applying it.
    pub fn types_mut(&mut self) -> &mut TypeCatalog {
        &mut self.types
    }

    /// Whether a source transaction is open (between Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Whether changes are buffered or written but not yet committed.
    pub fn has_pending(&self) -> bool {
        self.pending_rows > 0 || self.tables.iter().any(ReplicatedTable::has_pending)
    }

    /// The highest LSN that may be confirmed to Postgres now.
    pub fn confirmable(&self) -> Lsn {
        self.confirmable
    }

    /// Records that the server has sent everything up to `wal_end` (a keepalive). When no
    /// transaction is open and nothing is pending, that position holds nothing pg2lake
    /// still owes the lake, so it becomes confirmable: this keeps the slot advancing
    /// while only unreplicated tables (or other databases) are written.
    pub fn idle_position(&mut self, wal_end: Lsn) {
        if !self.in_transaction() && !self.has_pending() {
            self.confirmable = self.confirmable.max(wal_end);
        }
    }

    /// Commit LSN of the last source transaction committed to the lake in this session.
    pub fn last_commit_lsn(&self) -> Option<Lsn> {
        self.last_flushed
    }

    /// Commit time (Unix µs) of the oldest source change not yet committed to the lake.
    pub fn oldest_pending_commit_micros(&self) -> Option<i64> {
        self.pending_commit_micros
    }

    /// Approximate bytes of change data buffered and not yet committed.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The per-table committed LSNs, for logs.
    pub fn table_positions(&self) -> impl Iterator<Item = (String, Option<Lsn>)> + '_ {
        self.tables
            .iter()
            .map(|t| (t.qualified_name(), t.lake.committed_lsn()))
    }

    /// Whether the flush policy asks for a commit now (only ever between transactions).
    pub fn flush_due(&self, now: Instant) -> bool {
        if self.in_transaction() || !self.has_pending() {
            return false;
        }
        self.pending_rows >= self.policy.max_rows
            || self.pending_bytes >= self.policy.max_bytes
            || self
                .pending_since
                .is_some_and(|since| now.duration_since(since) >= self.policy.max_interval)
    }

    /// Applies one decoded message. Returns `true` when the message completed a
    /// transaction (a Commit), the point where a flush may happen.
    pub async fn apply(&mut self, message: LogicalMessage) -> Result<bool, ApplyError> {
        match message {
            LogicalMessage::Begin(begin) => {
                self.txn = Some(Transaction {
                    commit_lsn: begin.final_lsn,
                    commit_ts_micros: pgoutput::pg_epoch_micros_to_unix_micros(begin.commit_ts),
                    xid: begin.xid,
                    seq: 0,
                });
                Ok(false)
            }
            LogicalMessage::Commit(commit) => {
                self.txn = None;
                self.last_commit = Some((commit.commit_lsn, commit.end_lsn));
                if !self.has_pending() {
                    // Nothing of ours is in flight: this transaction touched no replicated
                    // table (or only ones that already hold it), so its end is durable.
                    self.confirmable = self.confirmable.max(commit.end_lsn);
                }
                Ok(true)
            }
            LogicalMessage::Relation(relation) => {
                self.on_relation(&relation).await?;
                Ok(false)
            }
            LogicalMessage::Insert(insert) => {
                self.on_row(insert.relation_id, Op::Insert, &insert.new, None)
                    .await?;
                Ok(false)
            }
            LogicalMessage::Update(update) => {
                // A key tuple is sent only when the update changed the replica identity
                // key: the row under the old key is gone, so the change log says so
                // first (as Debezium does), and folding by key stays correct.
                if let Some(OldTuple::Key(old_key)) = &update.old {
                    self.on_row(update.relation_id, Op::Delete, old_key, None)
                        .await?;
                }
                let old = match &update.old {
                    Some(OldTuple::Full(values)) => Some(values.as_slice()),
                    _ => None,
                };
                self.on_row(update.relation_id, Op::Update, &update.new, old)
                    .await?;
                Ok(false)
            }
            LogicalMessage::Delete(delete) => {
                let values = match &delete.old {
                    OldTuple::Key(values) | OldTuple::Full(values) => values,
                };
                self.on_row(delete.relation_id, Op::Delete, values, None)
                    .await?;
                Ok(false)
            }
            LogicalMessage::Truncate(truncate) => {
                for relation_id in truncate.relation_ids {
                    if let Some((index, meta)) = self.change_target(relation_id, Op::Truncate)? {
                        let table = &mut self.tables[index];
                        table.batch.push_truncate(&meta);
                        self.note_pending(index, &meta, 0);
                    }
                }
                Ok(false)
            }
            LogicalMessage::Origin(_) | LogicalMessage::Type(_) | LogicalMessage::Message(_) => {
                Ok(false)
            }
        }
    }

    /// pgoutput sends a Relation message before a relation's first change in a session
    /// and again after every change to its definition, describing the columns of the
    /// changes that follow. On replay after a restart these are the columns as they were
    /// then, which the union layout holds already.
    async fn on_relation(&mut self, relation: &Relation) -> Result<(), ApplyError> {
        let key = (relation.namespace.clone(), relation.name.clone());
        let index = self.by_name.get(&key).copied();
        if let Some(i) = index {
            let table = &mut self.tables[i];
            self.types
                .warn_unknown(&relation.namespace, &relation.name, &relation.columns);
            let evolution =
                table
                    .schema
                    .evolve_with(&relation.columns, &self.types, table.type_change)?;
            table.evolve(evolution).await?;
        }
        self.by_relation.insert(relation.id, index);
        Ok(())
    }

    /// Where a change of `relation_id` goes, or `None` when it is not replicated or the
    /// lake table already holds this transaction (a replay after restart).
    fn change_target(
        &mut self,
        relation_id: u32,
        op: Op,
    ) -> Result<Option<(usize, ChangeMeta)>, ApplyError> {
        let txn = self
            .txn
            .as_mut()
            .ok_or(ApplyError::OutsideTransaction(op_name(op)))?;
        // The ordinal counts every change of the transaction, replicated or not, so it
        // is the same on every replay of it.
        txn.seq += 1;
        let index = match self.by_relation.get(&relation_id) {
            Some(index) => *index,
            None => return Err(ApplyError::UnknownRelation(relation_id)),
        };
        let Some(index) = index else {
            return Ok(None);
        };
        if self.tables[index]
            .lake
            .committed_lsn()
            .is_some_and(|committed| committed >= txn.commit_lsn)
        {
            return Ok(None);
        }
        Ok(Some((
            index,
            ChangeMeta {
                op,
                lsn: txn.commit_lsn,
                seq: txn.seq,
                commit_ts_micros: txn.commit_ts_micros,
                xid: Some(txn.xid),
            },
        )))
    }

    async fn on_row(
        &mut self,
        relation_id: u32,
        op: Op,
        values: &[TupleValue],
        old: Option<&[TupleValue]>,
    ) -> Result<(), ApplyError> {
        let Some((index, meta)) = self.change_target(relation_id, op)? else {
            return Ok(());
        };
        let table = &mut self.tables[index];
        let before = table.batch.approx_bytes();
        match old {
            // REPLICA IDENTITY FULL sends the old row: an unchanged TOAST value that the
            // new tuple leaves out is the old one, so fill it in rather than report it.
            Some(old)
                if values
                    .iter()
                    .any(|v| matches!(v, TupleValue::UnchangedToast)) =>
            {
                let merged: Vec<TupleValue> = values
                    .iter()
                    .zip(
                        old.iter()
                            .chain(std::iter::repeat(&TupleValue::UnchangedToast)),
                    )
                    .map(|(new, old)| match new {
                        TupleValue::UnchangedToast => old.clone(),
                        other => other.clone(),
                    })
                    .collect();
                table.batch.push(&meta, &merged)?;
            }
            _ => table.batch.push(&meta, values)?,
        }
        let added = table.batch.approx_bytes().saturating_sub(before);
        self.note_pending(index, &meta, added);
        let table = &mut self.tables[index];
        if table.batch.len() >= CHUNK_ROWS || table.batch.approx_bytes() >= CHUNK_BYTES {
            table.write_chunk().await?;
        }
        Ok(())
    }

    fn note_pending(&mut self, index: usize, meta: &ChangeMeta, bytes: usize) {
        // Counted here in a plain array; the metric is updated once per commit.
        if let Some(slot) = op_index(meta.op) {
            self.tables[index].op_counts[slot] += 1;
        }
        self.pending_commit_micros
            .get_or_insert(meta.commit_ts_micros);
        self.pending_rows += 1;
        self.pending_bytes += bytes;
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// Commits everything pending, one Delta version per table that has changes, each
    /// recording the commit LSN of the last applied source transaction. Must be called
    /// between transactions. Returns what was committed; afterwards the end LSN of that
    /// transaction is confirmable.
    pub async fn flush(&mut self) -> Result<FlushReport, ApplyError> {
        debug_assert!(!self.in_transaction(), "flush inside a source transaction");
        let Some((commit_lsn, end_lsn)) = self.last_commit else {
            return Ok(FlushReport::default());
        };
        let mut report = FlushReport::default();
        for table in &mut self.tables {
            if !table.has_pending() {
                continue;
            }
            table.write_chunk().await?;
            let rows = table.written;
            let outcome = table.lake.commit(commit_lsn).await?;
            let (files, bytes) = match outcome {
                CommitOutcome::Committed { .. } => table.lake.last_commit_files(),
                _ => (0, 0),
            };
            metrics::global().record_commit(
                &table.qualified_name(),
                &TableCommit {
                    changes: table.op_counts,
                    rows: rows as u64,
                    files,
                    bytes,
                },
            );
            table.op_counts = [0; 4];
            table.written = 0;
            tracing::debug!(table = %table.qualified_name(), lsn = %commit_lsn, rows, ?outcome, "committed to the lake");
            report.tables += 1;
            report.rows += rows;
        }
        self.pending_rows = 0;
        self.pending_bytes = 0;
        self.pending_since = None;
        self.pending_commit_micros = None;
        if report.tables > 0 {
            self.last_flushed = Some(commit_lsn);
        }
        self.confirmable = self.confirmable.max(end_lsn);
        Ok(report)
    }

    /// Drops everything not yet committed (a shutdown inside a transaction): the source
    /// replays it from the slot next time, and the lake never references the files.
    pub fn abandon(&mut self) {
        for table in &mut self.tables {
            if table.has_pending() {
                // Finish the Arrow builders to empty them; the chunk is discarded.
                let _ = table.batch.finish();
                table.lake.abandon_pending();
                table.written = 0;
                table.op_counts = [0; 4];
            }
        }
        self.pending_rows = 0;
        self.pending_bytes = 0;
        self.pending_since = None;
        self.pending_commit_micros = None;
        self.txn = None;
    }
}

/// Where `op` counts in `metrics::OPS`; snapshot reads are not changes.
fn op_index(op: Op) -> Option<usize> {
    match op {
        Op::Read => None,
        Op::Insert => Some(0),
        Op::Update => Some(1),
        Op::Delete => Some(2),
        Op::Truncate => Some(3),
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Read => "Read",
        Op::Insert => "Insert",
        Op::Update => "Update",
        Op::Delete => "Delete",
        Op::Truncate => "Truncate",
    }
}
