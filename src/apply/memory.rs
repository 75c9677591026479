//! A table sink in memory, for the unit tests of the apply rules: it keeps what it was
//! given in order, makes it visible at each commit, and lets a test hold commits back
//! or make the next one fail.

use std::sync::{Arc, Mutex, MutexGuard};

use arrow::record_batch::RecordBatch;
use tokio::sync::Semaphore;

use super::ApplyError;
use super::sink::{ChunkWriter, Committed, SpoolWritten, StreamedCommit, TableSink};
use crate::lake::{CommitOutcome, LakeError, Spool, SpoolStore};
use crate::lsn::Lsn;
use crate::schema::TableSchema;

/// What a sink was given, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Rows, with the names of their columns.
    Write { rows: usize, columns: Vec<String> },
    /// A schema change: the source columns, and whether the layout changed.
    Follow {
        columns: Vec<String>,
        layout_changed: bool,
    },
    /// A commit recording the LSN.
    Commit(Lsn),
    /// What was given since the last commit was dropped.
    Abandon,
}

#[derive(Debug, Default)]
pub struct State {
    /// Everything given, in order.
    pub events: Vec<Event>,
    /// Rows given since the last commit.
    pending: Vec<RecordBatch>,
    /// Committed rows, per commit in order.
    pub commits: Vec<(Lsn, Vec<RecordBatch>)>,
    /// The last LSN committed.
    pub committed: Option<Lsn>,
    /// The next commit fails.
    pub fail_next_commit: bool,
}

/// The test's handle on a sink: what it holds, and the gates its commits and writes
/// wait at.
#[derive(Debug, Clone)]
pub struct MemoryTable {
    state: Arc<Mutex<State>>,
    gate: Arc<Semaphore>,
    writes: Arc<Semaphore>,
}

impl MemoryTable {
    /// A sink whose commits pass at once; the table holds everything up to `committed`.
    pub fn new(committed: Option<Lsn>) -> (MemoryTable, MemorySink) {
        let table = MemoryTable {
            state: Arc::new(Mutex::new(State {
                committed,
                ..State::default()
            })),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            writes: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        };
        let sink = MemorySink {
            table: table.clone(),
            spools: SpoolStore::in_memory(),
        };
        (table, sink)
    }

    /// What the sink holds now.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("sink state")
    }

    /// Holds every commit back until [`MemoryTable::let_commits_through`].
    pub fn hold_commits(&self) {
        let held = self.gate.available_permits();
        self.gate.forget_permits(held);
    }

    /// Holds every write back (a store that stopped answering).
    pub fn hold_writes(&self) {
        let held = self.writes.available_permits();
        self.writes.forget_permits(held);
    }

    /// Lets `n` commits through.
    pub fn let_commits_through(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// The committed rows of every commit, in order.
    pub fn committed_rows(&self) -> Vec<RecordBatch> {
        self.state()
            .commits
            .iter()
            .flat_map(|(_, batches)| batches.iter().cloned())
            .collect()
    }
}

/// The sink end, driven by a writer task.
#[derive(Debug)]
pub struct MemorySink {
    table: MemoryTable,
    spools: SpoolStore,
}

impl MemorySink {
    fn state(&self) -> MutexGuard<'_, State> {
        self.table.state()
    }

    fn write(&self, chunk: RecordBatch) {
        let columns = chunk
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut state = self.state();
        state.events.push(Event::Write {
            rows: chunk.num_rows(),
            columns,
        });
        state.pending.push(chunk);
    }
}

impl ChunkWriter for MemorySink {
    async fn write_rows(&mut self, chunk: RecordBatch) -> Result<(), ApplyError> {
        self.table
            .writes
            .acquire()
            .await
            .expect("the gate stays open")
            .forget();
        self.write(chunk);
        Ok(())
    }

    async fn follow_schema(
        &mut self,
        schema: Arc<TableSchema>,
        layout_changed: bool,
    ) -> Result<(), ApplyError> {
        let columns = schema.columns.iter().map(|c| c.name.clone()).collect();
        self.state().events.push(Event::Follow {
            columns,
            layout_changed,
        });
        Ok(())
    }

    fn committed_lsn(&self) -> Option<Lsn> {
        self.state().committed
    }

    fn spools(&self) -> SpoolStore {
        self.spools.clone()
    }
}

impl TableSink for MemorySink {
    async fn write_spool(
        &mut self,
        mut spool: Spool,
        commit: StreamedCommit,
    ) -> Result<SpoolWritten, ApplyError> {
        let mut written = SpoolWritten::default();
        for path in spool.finish().await? {
            for batch in spool.batches(&path).await? {
                let batch = commit
                    .finish(&batch?)
                    .map_err(|e| LakeError::SchemaMismatch {
                        table: "memory".into(),
                        reason: e.to_string(),
                    })?;
                written.rows += batch.num_rows();
                super::count_ops(&batch, &mut written.changes);
                self.write(batch);
            }
        }
        spool.discard().await;
        Ok(written)
    }

    async fn commit(&mut self, lsn: Lsn) -> Result<Committed, ApplyError> {
        self.table
            .gate
            .acquire()
            .await
            .expect("the gate stays open")
            .forget();
        let mut state = self.state();
        if std::mem::take(&mut state.fail_next_commit) {
            return Err(LakeError::SchemaMismatch {
                table: "memory".into(),
                reason: "commit failed on purpose".into(),
            }
            .into());
        }
        state.events.push(Event::Commit(lsn));
        let rows = std::mem::take(&mut state.pending);
        let outcome = if rows.is_empty() {
            CommitOutcome::NothingToCommit
        } else {
            state.committed = Some(lsn);
            let version = state.commits.len() as i64;
            state.commits.push((lsn, rows));
            CommitOutcome::Committed { version }
        };
        Ok(Committed {
            outcome,
            files: 1,
            bytes: 0,
        })
    }

    fn abandon(&mut self) {
        let mut state = self.state();
        state.pending.clear();
        state.events.push(Event::Abandon);
    }
}
