//! Applying decoded pgoutput messages to the lake tables.
//!
//! ```text
//!  Begin ─► Relation* ─► Insert/Update/Delete/Truncate* ─► Commit
//!             │                 │ skip if the table already holds this transaction
//!             ▼                 ▼ (its committed LSN ≥ the transaction's commit LSN)
//!        relation map      TableBatch (Arrow builders) ── chunk full ──► table's writer task
//!                                                                     (Parquet, not yet visible)
//!  Commit ─► flush policy (rows, bytes, age) ─► Commit(epoch, commit LSN) to each table's task
//!  every table's Ack of the epoch ─► confirmable = the transaction's end LSN
//! ```
//!
//! The writer tasks (see [`writer`]) encode, upload and commit beside the replication
//! loop; the loop hands each acknowledgement to [`Applier::on_ack`]. What a table's rows
//! go to is a [`TableSink`]: the lake table, or an in-memory one in the unit tests.
//!
//! A Relation message that changes a table's columns (ALTER TABLE) is applied in place
//! (see `schema::evolve`): rows buffered with the old layout go to the writer first, and
//! a grown layout is staged as a Delta `metaData` action that lands with the table's next
//! data commit, together with those rows, the new ones and the `txn`.
//!
//! A transaction larger than the server's `logical_decoding_work_mem` arrives in stream
//! blocks before it commits; its rows are spooled and join the pending rows at its
//! Stream Commit (see [`streamed`]).
//!
//! Invariants:
//! - Lake commits happen only between source transactions, so a reader never sees part
//!   of one; a transaction larger than a chunk is written as several files first.
//! - `confirmable` is the end LSN of the last source transaction whose changes are all
//!   committed, as acknowledged by the writer tasks (or that touched no replicated table
//!   while nothing else was pending or in flight). A
//!   transaction still being streamed does not hold it back: it commits after that
//!   position, so the slot streams it again from its beginning if pg2lake restarts.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::batch::{ChangeMeta, Op, TableBatch};
use crate::lake::LakeError;
use crate::lsn::Lsn;
use crate::pg::pgoutput::{
    self, Decoded, LogicalMessage, OldTuple, Relation, StreamAbort, StreamCommit, StreamStart,
    Truncate, TupleValue, Update,
};
use crate::schema::{OP_COLUMN, SchemaError, TypeCatalog};

mod flush;
#[cfg(test)]
mod memory;
mod sink;
mod streamed;
mod table;
#[cfg(test)]
mod tests;
mod writer;

use flush::InFlight;
pub use flush::{FlushPolicy, FlushReport};
pub use sink::{ChunkWriter, Committed, SpoolWritten, StreamedCommit, TableSink};
use streamed::{StreamedPart, StreamedTxn};
pub use table::ReplicatedTable;
pub use writer::{Ack, Writer};

/// Rows per Arrow chunk handed to the Parquet writer: bounded memory per table.
const CHUNK_ROWS: usize = 8192;
/// Bytes per Arrow chunk handed to the Parquet writer.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Errors while applying changes.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A change referenced a relation id that no Relation message announced.
    #[error("pgoutput change for unknown relation id {0} (protocol violation)")]
    UnknownRelation(u32),
    /// A change arrived outside Begin … Commit.
    #[error("pgoutput {0} message outside a transaction (protocol violation)")]
    OutsideTransaction(&'static str),
    /// A stream message named a transaction whose stream never began.
    #[error(
        "pgoutput stream message for transaction {0}, whose first stream segment never arrived (protocol violation)"
    )]
    UnknownStreamedTransaction(u32),
    /// A replicated table's columns changed in a way its lake table cannot follow.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A value could not be converted.
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
    /// The lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// A table's writer task is gone without saying why (it panicked).
    #[error("the lake writer of table {0} stopped")]
    WriterStopped(String),
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

#[derive(Debug, Clone, Copy)]
struct Transaction {
    commit_lsn: Lsn,
    commit_ts_micros: i64,
    xid: u32,
    seq: i64,
}

/// The apply state of one replication session.
pub struct Applier {
    tables: Vec<ReplicatedTable<Writer>>,
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
    /// Transactions being streamed before their commit, by transaction id.
    streamed: HashMap<u32, StreamedTxn>,
    /// The transaction of the open stream block.
    stream_block: Option<u32>,
    /// Flushes sent to the writer tasks and not acknowledged by all, oldest first.
    in_flight: VecDeque<InFlight>,
    /// The last flush's number.
    epoch: u64,
    /// The writer tasks' acknowledgements.
    acks: mpsc::UnboundedReceiver<Ack>,
    /// The writer tasks.
    tasks: JoinSet<()>,
    /// Memory of the rows handed to the writer tasks and not yet encoded.
    memory: Arc<Semaphore>,
    memory_permits: usize,
}

/// Where a change goes: the rows of committed transactions, or a streamed one's.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Table index.
    Committed(usize),
    /// Transaction id and table index.
    Streamed(u32, usize),
}

impl Applier {
    /// Starts applying into `tables`, each driven by a writer task of its own (see
    /// [`writer`]); nothing before `start` is confirmable. The rows handed to the tasks
    /// and not yet encoded hold at most `policy.max_bytes` (one chunk at least).
    pub fn new<S: TableSink>(
        tables: Vec<ReplicatedTable<S>>,
        policy: FlushPolicy,
        start: Lsn,
    ) -> Self {
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.schema.namespace.clone(), t.schema.name.clone()), i))
            .collect();
        let (ack_sender, acks) = mpsc::unbounded_channel();
        let memory = writer::memory(policy.max_bytes.max(CHUNK_BYTES));
        let memory_permits = memory.available_permits();
        let mut tasks = JoinSet::new();
        let tables = tables
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.spawn_writer(i, ack_sender.clone(), memory.clone(), &mut tasks))
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
            streamed: HashMap::new(),
            stream_block: None,
            in_flight: VecDeque::new(),
            epoch: 0,
            acks,
            tasks,
            memory,
            memory_permits,
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

    /// Whether changes are buffered, written or being committed, and not yet
    /// acknowledged as committed: the lake does not hold them yet.
    pub fn has_pending(&self) -> bool {
        self.has_unflushed() || !self.in_flight.is_empty()
    }

    /// Whether changes wait for a flush.
    fn has_unflushed(&self) -> bool {
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
        self.in_flight
            .iter()
            .find_map(|f| f.oldest_commit_micros)
            .or(self.pending_commit_micros)
    }

    /// Approximate bytes of change data buffered in memory and not yet committed, the
    /// rows of transactions being streamed and those queued for the writer tasks
    /// included (spooled rows and the encoders' buffers are not).
    pub fn pending_bytes(&self) -> usize {
        let queued = self
            .memory_permits
            .saturating_sub(self.memory.available_permits());
        self.pending_bytes
            + queued * writer::PERMIT_BYTES
            + self
                .streamed
                .values()
                .map(StreamedTxn::buffered_bytes)
                .sum::<usize>()
    }

    /// Source transactions being streamed before their commit.
    pub fn streamed_transactions(&self) -> usize {
        self.streamed.len()
    }

    /// The per-table committed LSNs, for logs.
    pub fn table_positions(&self) -> impl Iterator<Item = (String, Option<Lsn>)> + '_ {
        self.tables
            .iter()
            .map(|t| (t.qualified_name(), t.lake.committed_lsn()))
    }

    /// Whether the flush policy asks for a commit now (only ever between transactions).
    pub fn flush_due(&self, now: Instant) -> bool {
        if self.in_transaction() || !self.has_unflushed() {
            return false;
        }
        self.pending_rows >= self.policy.max_rows
            || self.pending_bytes >= self.policy.max_bytes
            || self
                .pending_since
                .is_some_and(|since| now.duration_since(since) >= self.policy.max_interval)
    }

    /// Applies one decoded message. Returns `true` when the message completed a
    /// transaction (a Commit or Stream Commit), the point where a flush may happen.
    pub async fn apply(&mut self, decoded: Decoded) -> Result<bool, ApplyError> {
        let result = self.apply_message(decoded).await;
        result.map_err(|err| self.failure(err))
    }

    async fn apply_message(&mut self, decoded: Decoded) -> Result<bool, ApplyError> {
        let Decoded { message, xid } = decoded;
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
                self.completed(commit.commit_lsn, commit.end_lsn);
                Ok(true)
            }
            LogicalMessage::StreamStart(start) => {
                self.on_stream_start(&start).await?;
                Ok(false)
            }
            LogicalMessage::StreamStop => {
                self.stream_block = None;
                Ok(false)
            }
            LogicalMessage::StreamCommit(commit) => {
                let txn = self
                    .streamed
                    .remove(&commit.xid)
                    .ok_or(ApplyError::UnknownStreamedTransaction(commit.xid))?;
                self.commit_streamed(txn, &commit).await?;
                self.completed(commit.commit_lsn, commit.end_lsn);
                Ok(true)
            }
            LogicalMessage::StreamAbort(abort) => {
                self.on_stream_abort(&abort).await;
                Ok(false)
            }
            LogicalMessage::Relation(relation) => {
                match self.stream_block {
                    Some(stream) => self.on_streamed_relation(stream, relation).await?,
                    None => self.on_relation(&relation).await?,
                }
                Ok(false)
            }
            LogicalMessage::Insert(insert) => {
                self.on_row(insert.relation_id, Op::Insert, &insert.new, None, xid)
                    .await?;
                Ok(false)
            }
            LogicalMessage::Update(update) => {
                self.on_update(&update, xid).await?;
                Ok(false)
            }
            LogicalMessage::Delete(delete) => {
                let values = match &delete.old {
                    OldTuple::Key(values) | OldTuple::Full(values) => values,
                };
                self.on_row(delete.relation_id, Op::Delete, values, None, xid)
                    .await?;
                Ok(false)
            }
            LogicalMessage::Truncate(truncate) => {
                self.on_truncate(truncate, xid).await?;
                Ok(false)
            }
            LogicalMessage::Origin(_) | LogicalMessage::Type(_) | LogicalMessage::Message(_) => {
                Ok(false)
            }
        }
    }

    /// A segment of a streamed transaction begins: the first opens it (again, when an
    /// earlier session streamed part of it), a later one continues it.
    async fn on_stream_start(&mut self, start: &StreamStart) -> Result<(), ApplyError> {
        if start.first_segment {
            // A transaction streamed by an earlier session is streamed again from
            // its first segment; nothing of that attempt is kept.
            if let Some(earlier) = self.streamed.remove(&start.xid) {
                earlier.discard().await;
            }
            self.streamed.insert(start.xid, StreamedTxn::new(start.xid));
        } else if !self.streamed.contains_key(&start.xid) {
            return Err(ApplyError::UnknownStreamedTransaction(start.xid));
        }
        self.stream_block = Some(start.xid);
        Ok(())
    }

    /// A streamed transaction, or one of its subtransactions, rolled back.
    async fn on_stream_abort(&mut self, abort: &StreamAbort) {
        if abort.subxid == abort.xid {
            if let Some(txn) = self.streamed.remove(&abort.xid) {
                tracing::debug!(xid = abort.xid, "streamed transaction aborted");
                txn.discard().await;
            }
        } else if let Some(txn) = self.streamed.get_mut(&abort.xid) {
            txn.abort_subtransaction(abort.subxid);
        }
    }

    /// An update: a delete under the old key first when the key changed, then the row.
    async fn on_update(&mut self, update: &Update, xid: Option<u32>) -> Result<(), ApplyError> {
        // A key tuple is sent only when the update changed the replica identity
        // key: the row under the old key is gone, so the change log says so
        // first (as Debezium does), and folding by key stays correct.
        if let Some(OldTuple::Key(old_key)) = &update.old {
            self.on_row(update.relation_id, Op::Delete, old_key, None, xid)
                .await?;
        }
        let old = match &update.old {
            Some(OldTuple::Full(values)) => Some(values.as_slice()),
            _ => None,
        };
        self.on_row(update.relation_id, Op::Update, &update.new, old, xid)
            .await
    }

    /// A truncate: a marker row in each replicated table it names.
    async fn on_truncate(
        &mut self,
        truncate: Truncate,
        xid: Option<u32>,
    ) -> Result<(), ApplyError> {
        for relation_id in truncate.relation_ids {
            if let Some((target, meta)) = self.change_target(relation_id, Op::Truncate, xid)? {
                self.batch_of(target)?.push_truncate(&meta);
                self.noted(target, &meta, 0).await?;
            }
        }
        Ok(())
    }

    /// A source transaction is fully applied (its rows pending, if any).
    fn completed(&mut self, commit_lsn: Lsn, end_lsn: Lsn) {
        self.last_commit = Some((commit_lsn, end_lsn));
        if !self.has_pending() {
            // Nothing of ours is in flight: this transaction touched no replicated table
            // (or only ones that already hold it), so its end is durable.
            self.confirmable = self.confirmable.max(end_lsn);
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

    /// A Relation message inside a stream block: the table as the streamed transaction
    /// sees it (its own ALTER TABLE included). It shapes that transaction's rows, and
    /// reaches the table's schema when the transaction commits.
    async fn on_streamed_relation(
        &mut self,
        xid: u32,
        relation: Relation,
    ) -> Result<(), ApplyError> {
        let key = (relation.namespace.clone(), relation.name.clone());
        let index = self.by_name.get(&key).copied();
        let txn = self
            .streamed
            .get_mut(&xid)
            .ok_or(ApplyError::UnknownStreamedTransaction(xid))?;
        txn.relation_tables.insert(relation.id, index);
        if let Some(i) = index {
            let table = &self.tables[i];
            let current = txn.schemas.get(&i).unwrap_or(&table.schema).clone();
            let evolution =
                current.evolve_with(&relation.columns, &self.types, table.type_change)?;
            if !evolution.schema.same_source(&current) {
                let schema = Arc::new(evolution.schema);
                if let Some(part) = txn.parts.get_mut(&i) {
                    part.evolve(schema.clone()).await?;
                }
                txn.schemas.insert(i, schema);
            }
        }
        txn.relations.push(relation);
        Ok(())
    }

    /// Where a change of `relation_id` goes, or `None` when it is not replicated or the
    /// lake table already holds this transaction (a replay after restart). `xid` is the
    /// (sub)transaction a change inside a stream block belongs to.
    fn change_target(
        &mut self,
        relation_id: u32,
        op: Op,
        xid: Option<u32>,
    ) -> Result<Option<(Target, ChangeMeta)>, ApplyError> {
        if let Some(stream) = self.stream_block {
            let txn = self
                .streamed
                .get_mut(&stream)
                .ok_or(ApplyError::UnknownStreamedTransaction(stream))?;
            let ordinal = txn.next_ordinal(xid);
            let index = match txn
                .relation_tables
                .get(&relation_id)
                .or_else(|| self.by_relation.get(&relation_id))
            {
                Some(index) => *index,
                None => return Err(ApplyError::UnknownRelation(relation_id)),
            };
            let Some(index) = index else {
                return Ok(None);
            };
            if !txn.parts.contains_key(&index) {
                let table = &self.tables[index];
                let schema = txn.schemas.get(&index).unwrap_or(&table.schema).clone();
                let spool = table.lake.spools().spool(stream);
                txn.parts.insert(index, StreamedPart::new(schema, spool));
            }
            // The commit position and time are known at the Stream Commit (see
            // `streamed::finish_batch`); until then `_seq` holds the change's ordinal.
            let meta = ChangeMeta {
                op,
                lsn: Lsn::ZERO,
                seq: ordinal,
                commit_ts_micros: 0,
                xid: Some(stream),
            };
            return Ok(Some((Target::Streamed(stream, index), meta)));
        }
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
            Target::Committed(index),
            ChangeMeta {
                op,
                lsn: txn.commit_lsn,
                seq: txn.seq,
                commit_ts_micros: txn.commit_ts_micros,
                xid: Some(txn.xid),
            },
        )))
    }

    /// The Arrow builders of `target`.
    fn batch_of(&mut self, target: Target) -> Result<&mut TableBatch, ApplyError> {
        match target {
            Target::Committed(index) => Ok(&mut self.tables[index].batch),
            Target::Streamed(xid, index) => self
                .streamed
                .get_mut(&xid)
                .and_then(|txn| txn.parts.get_mut(&index))
                .map(|part| &mut part.batch)
                .ok_or(ApplyError::UnknownStreamedTransaction(xid)),
        }
    }

    async fn on_row(
        &mut self,
        relation_id: u32,
        op: Op,
        values: &[TupleValue],
        old: Option<&[TupleValue]>,
        xid: Option<u32>,
    ) -> Result<(), ApplyError> {
        let Some((target, meta)) = self.change_target(relation_id, op, xid)? else {
            return Ok(());
        };
        let values: Cow<'_, [TupleValue]> = match old {
            // REPLICA IDENTITY FULL sends the old row: an unchanged TOAST value that the
            // new tuple leaves out is the old one, so fill it in rather than report it.
            Some(old)
                if values
                    .iter()
                    .any(|v| matches!(v, TupleValue::UnchangedToast)) =>
            {
                values
                    .iter()
                    .zip(
                        old.iter()
                            .chain(std::iter::repeat(&TupleValue::UnchangedToast)),
                    )
                    .map(|(new, old)| match new {
                        TupleValue::UnchangedToast => old.clone(),
                        other => other.clone(),
                    })
                    .collect()
            }
            _ => Cow::Borrowed(values),
        };
        let batch = self.batch_of(target)?;
        let before = batch.approx_bytes();
        batch.push(&meta, &values)?;
        let added = batch.approx_bytes().saturating_sub(before);
        self.noted(target, &meta, added).await
    }

    /// Accounts for a row just pushed to `target`, and hands a full chunk on: to the lake
    /// writer, or to a streamed transaction's spool.
    async fn noted(
        &mut self,
        target: Target,
        meta: &ChangeMeta,
        bytes: usize,
    ) -> Result<(), ApplyError> {
        match target {
            Target::Committed(index) => {
                self.note_pending(index, meta, bytes);
                let table = &mut self.tables[index];
                if table.batch.len() >= CHUNK_ROWS || table.batch.approx_bytes() >= CHUNK_BYTES {
                    table.write_chunk().await?;
                }
            }
            Target::Streamed(xid, index) => {
                if let Some(part) = self
                    .streamed
                    .get_mut(&xid)
                    .and_then(|txn| txn.parts.get_mut(&index))
                    && part.full()
                {
                    part.spill().await?;
                }
            }
        }
        Ok(())
    }

    /// The Stream Commit of `txn`: its Relation messages are applied to the tables as a
    /// transaction sent whole would have applied them, then its spooled rows join the
    /// pending rows as the committed transaction's.
    async fn commit_streamed(
        &mut self,
        mut txn: StreamedTxn,
        commit: &StreamCommit,
    ) -> Result<(), ApplyError> {
        for relation in std::mem::take(&mut txn.relations) {
            self.on_relation(&relation).await?;
        }
        let commit_ts = pgoutput::pg_epoch_micros_to_unix_micros(commit.commit_ts);
        let mut committed_rows = 0;
        for (index, mut part) in std::mem::take(&mut txn.parts) {
            let table = &mut self.tables[index];
            if table
                .committed_lsn()
                .is_some_and(|committed| committed >= commit.commit_lsn)
            {
                // A replay after a restart: the lake holds this transaction already.
                part.spool.discard().await;
                continue;
            }
            part.spill().await?;
            // Rows of earlier transactions first, so files follow the commit order.
            table.write_chunk().await?;
            // Aborted rows included: the task counts what it commits.
            let rows = part.spool.rows();
            let finish = StreamedCommit {
                aborted: txn.aborted.clone(),
                commit_lsn: commit.commit_lsn,
                commit_ts_micros: commit_ts,
            };
            table.lake.write_spool(part.spool, finish).await?;
            table.written += rows;
            if rows > 0 {
                committed_rows += rows;
                self.pending_rows += rows;
                self.pending_commit_micros.get_or_insert(commit_ts);
                self.pending_since.get_or_insert_with(Instant::now);
            }
        }
        tracing::debug!(xid = txn.xid, lsn = %commit.commit_lsn, rows = committed_rows, "streamed transaction committed");
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

    /// Deletes the spools of the transactions being streamed (the session ends): the slot
    /// streams them again from their beginning next time.
    pub async fn discard_streamed(&mut self) {
        self.stream_block = None;
        for (_, txn) in self.streamed.drain() {
            txn.discard().await;
        }
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

/// Adds the changes per op of `batch` (by its `_op` column) to `counts`
/// (`metrics::OPS` order).
fn count_ops(batch: &RecordBatch, counts: &mut [u64; 4]) {
    const COUNTED: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];
    let Some(ops) = batch
        .column_by_name(OP_COLUMN)
        .and_then(|column| column.as_string_opt::<i32>())
    else {
        return;
    };
    for code in ops.iter().flatten() {
        if let Some(slot) = COUNTED.iter().position(|op| op.as_str() == code) {
            counts[slot] += 1;
        }
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
