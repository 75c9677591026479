//! One writer task per table while streaming: Parquet encoding, uploads and Delta
//! commits run beside the replication loop, so the loop keeps reading the walsender and
//! answering it while the object store works.
//!
//! ```text
//!  Applier ── Write / Follow / Spool / Commit(epoch) / Abandon ──► bounded channel ──► task
//!     ▲                                                                                │
//!     └──────────── Ack { table, Ok(commit of epoch) | Err(first failure) } ◄──────────┘
//!                   (one channel for all tables, read by the replication loop)
//! ```
//!
//! Invariants:
//! - A task applies its table's commands in the order sent (the sink's order rule).
//! - A position is confirmed only from acknowledgements: the applier counts each flush
//!   (an epoch) done when every table it committed to has acknowledged it.
//! - Rows handed to tasks and not yet encoded hold permits of one memory semaphore,
//!   shared by all tables: when it is spent, the applier waits, which stops reading the
//!   walsender; nothing is ever dropped.
//! - A task stops at its first failure and reports it; the session then ends, and the
//!   tasks are stopped and awaited before another session opens the tables (see
//!   [`super::Applier::close`]), so no commit of an old session lands under a new one.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use super::ApplyError;
use super::sink::{ChunkWriter, Committed, StreamedCommit, TableSink};
use crate::lake::{Spool, SpoolStore};
use crate::lsn::Lsn;
use crate::schema::TableSchema;

/// Commands queued per table; the memory semaphore, not this, bounds the rows queued.
const QUEUED_COMMANDS: usize = 32;
/// The semaphore counts KiB.
pub(super) const PERMIT_BYTES: usize = 1024;

/// What the applier asks of a table's writer task.
enum Command {
    /// Rows for the table's open files, with the memory they hold.
    Write {
        chunk: RecordBatch,
        _memory: Option<OwnedSemaphorePermit>,
    },
    /// A schema change (see [`ChunkWriter::follow_schema`]).
    Follow {
        schema: Arc<TableSchema>,
        layout_changed: bool,
    },
    /// A committed streamed transaction's spooled rows (boxed: the largest command, and
    /// the rarest).
    Spool(Box<(Spool, StreamedCommit)>),
    /// Commit everything before this, recording `lsn`; acknowledge as `epoch`.
    Commit {
        epoch: u64,
        lsn: Lsn,
        changes: [u64; 4],
    },
    /// Drop everything since the last commit.
    Abandon,
}

/// A table's commit, acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCommitted {
    /// The flush it belongs to.
    pub epoch: u64,
    /// The source commit LSN it records.
    pub lsn: Lsn,
    /// What the commit did.
    pub committed: Committed,
    /// Rows it committed.
    pub rows: usize,
    /// Changes per op it committed (`metrics::OPS` order).
    pub changes: [u64; 4],
}

/// A writer task's report: a commit done, or the failure that stopped it.
#[derive(Debug)]
pub struct Ack {
    /// The table's index in the applier.
    pub table: usize,
    /// The commit, or the failure.
    pub result: Result<TableCommitted, ApplyError>,
}

/// The applier's end of one table's writer task.
#[derive(Debug)]
pub struct Writer {
    name: String,
    commands: mpsc::Sender<Command>,
    memory: Arc<Semaphore>,
    /// All permits of `memory`: one chunk never asks for more.
    memory_permits: u32,
    committed: Option<Lsn>,
    spools: SpoolStore,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Write { chunk, .. } => write!(f, "Write({} rows)", chunk.num_rows()),
            Command::Follow { layout_changed, .. } => write!(f, "Follow({layout_changed})"),
            Command::Spool(spooled) => write!(f, "Spool({} rows)", spooled.0.rows()),
            Command::Commit { epoch, lsn, .. } => write!(f, "Commit({epoch}, {lsn})"),
            Command::Abandon => write!(f, "Abandon"),
        }
    }
}

/// The memory rows handed to writer tasks may hold: `bytes`, at least one chunk's worth.
pub fn memory(bytes: usize) -> Arc<Semaphore> {
    let permits = (bytes / PERMIT_BYTES).clamp(1, u32::MAX as usize >> 1);
    Arc::new(Semaphore::new(permits))
}

/// Starts the writer task of table `index` (named `name`) on `tasks`, driving `sink`;
/// acknowledgements go to `acks`, queued rows hold permits of `memory`.
pub fn spawn<S: TableSink>(
    index: usize,
    name: String,
    sink: S,
    acks: mpsc::UnboundedSender<Ack>,
    memory: Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) -> Writer {
    let (commands, queue) = mpsc::channel(QUEUED_COMMANDS);
    let writer = Writer {
        name,
        commands,
        memory_permits: u32::try_from(memory.available_permits()).unwrap_or(u32::MAX),
        memory,
        committed: sink.committed_lsn(),
        spools: sink.spools(),
    };
    tasks.spawn(drive(index, sink, queue, acks));
    writer
}

impl Writer {
    /// Records that the table committed through `lsn` (from its acknowledgement).
    pub fn set_committed(&mut self, lsn: Lsn) {
        self.committed = self.committed.max(Some(lsn));
    }

    /// Writes a committed streamed transaction's spooled rows.
    pub async fn write_spool(
        &mut self,
        spool: Spool,
        commit: StreamedCommit,
    ) -> Result<(), ApplyError> {
        self.send(Command::Spool(Box::new((spool, commit)))).await
    }

    /// Commits what was sent before, recording `lsn`; acknowledged as `epoch`, with
    /// `changes` (what the applier counted) added to what the task counted itself.
    pub async fn commit(
        &mut self,
        epoch: u64,
        lsn: Lsn,
        changes: [u64; 4],
    ) -> Result<(), ApplyError> {
        self.send(Command::Commit {
            epoch,
            lsn,
            changes,
        })
        .await
    }

    /// Drops what was sent since the last commit.
    pub async fn abandon(&mut self) -> Result<(), ApplyError> {
        self.send(Command::Abandon).await
    }

    async fn send(&self, command: Command) -> Result<(), ApplyError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ApplyError::WriterStopped(self.name.clone()))
    }
}

impl ChunkWriter for Writer {
    async fn write_rows(&mut self, chunk: RecordBatch) -> Result<(), ApplyError> {
        let wanted = chunk.get_array_memory_size().div_ceil(PERMIT_BYTES);
        let wanted = u32::try_from(wanted)
            .unwrap_or(u32::MAX)
            .clamp(1, self.memory_permits);
        // Waits while the tasks hold the budget: the backpressure that stops reading.
        let memory = self.memory.clone().acquire_many_owned(wanted).await.ok();
        self.send(Command::Write {
            chunk,
            _memory: memory,
        })
        .await
    }

    async fn follow_schema(
        &mut self,
        schema: Arc<TableSchema>,
        layout_changed: bool,
    ) -> Result<(), ApplyError> {
        self.send(Command::Follow {
            schema,
            layout_changed,
        })
        .await
    }

    fn committed_lsn(&self) -> Option<Lsn> {
        self.committed
    }

    fn spools(&self) -> SpoolStore {
        self.spools.clone()
    }
}

/// The task: applies commands in order until the applier goes or a command fails.
async fn drive<S: TableSink>(
    table: usize,
    mut sink: S,
    mut queue: mpsc::Receiver<Command>,
    acks: mpsc::UnboundedSender<Ack>,
) {
    // Rows and changes per op sent since the last commit.
    let mut rows = 0;
    let mut counted = [0u64; 4];
    while let Some(command) = queue.recv().await {
        let done = match command {
            Command::Write { chunk, _memory } => {
                rows += chunk.num_rows();
                // The permit goes once the rows are in the sink's encoder.
                sink.write_rows(chunk).await
            }
            Command::Follow {
                schema,
                layout_changed,
            } => sink.follow_schema(schema, layout_changed).await,
            Command::Spool(spooled) => {
                let (spool, commit) = *spooled;
                sink.write_spool(spool, commit).await.map(|written| {
                    rows += written.rows;
                    add(&mut counted, written.changes);
                })
            }
            Command::Commit {
                epoch,
                lsn,
                changes,
            } => sink.commit(lsn).await.map(|committed| {
                add(&mut counted, changes);
                let done = TableCommitted {
                    epoch,
                    lsn,
                    committed,
                    rows: std::mem::take(&mut rows),
                    changes: std::mem::take(&mut counted),
                };
                // The applier may be gone (its session ended); nothing is owed then.
                let _ = acks.send(Ack {
                    table,
                    result: Ok(done),
                });
            }),
            Command::Abandon => {
                sink.abandon();
                rows = 0;
                counted = [0; 4];
                Ok(())
            }
        };
        if let Err(err) = done {
            let _ = acks.send(Ack {
                table,
                result: Err(err),
            });
            return;
        }
    }
}

fn add(total: &mut [u64; 4], more: [u64; 4]) {
    for (t, n) in total.iter_mut().zip(more) {
        *t += n;
    }
}
