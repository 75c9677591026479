//! Flushes: pending rows handed to the writer tasks with a commit (an epoch), and the
//! acknowledgements that retire them, oldest first, moving the confirmable position.
//!
//! ```text
//!  flush() ─► Commit(epoch n) to each table with rows ─► in_flight: [.., n (outstanding k)]
//!  on_ack(table, n) ─► outstanding k-1 ─► 0 and every older epoch retired ─► confirmable = end of n
//! ```

use std::time::{Duration, Instant};

use super::{Ack, Applier, ApplyError};
use crate::lake::CommitOutcome;
use crate::lsn::Lsn;
use crate::metrics::{self, TableCommit};

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

/// What committed flushes did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// Tables that got a new Delta version.
    pub tables: usize,
    /// Rows committed.
    pub rows: usize,
    /// From the oldest flush's start to its last acknowledgement.
    pub elapsed: Duration,
}

impl FlushReport {
    fn merge(&mut self, other: FlushReport) {
        self.tables += other.tables;
        self.rows += other.rows;
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// A flush handed to the writer tasks and not yet acknowledged by all of them.
#[derive(Debug)]
pub(super) struct InFlight {
    epoch: u64,
    /// The last source transaction it holds: (commit LSN, end LSN).
    commit_lsn: Lsn,
    end_lsn: Lsn,
    /// Tables that have not acknowledged it yet.
    outstanding: usize,
    started: Instant,
    /// Commit time (Unix µs) of its oldest change.
    pub(super) oldest_commit_micros: Option<i64>,
    report: FlushReport,
}

impl Applier {
    /// Hands everything pending to the writer tasks to commit, one Delta version per
    /// table that has changes, each recording the commit LSN of the last applied source
    /// transaction. Must be called between transactions. Once every table acknowledged
    /// it (see [`Applier::on_ack`]), the end LSN of that transaction is confirmable.
    pub async fn flush(&mut self) -> Result<(), ApplyError> {
        let result = self.send_flush().await;
        result.map_err(|err| self.failure(err))
    }

    async fn send_flush(&mut self) -> Result<(), ApplyError> {
        debug_assert!(!self.in_transaction(), "flush inside a source transaction");
        let Some((commit_lsn, end_lsn)) = self.last_commit else {
            return Ok(());
        };
        if !self.has_unflushed() {
            return Ok(());
        }
        self.epoch += 1;
        let mut outstanding = 0;
        for table in &mut self.tables {
            if !table.has_pending() {
                continue;
            }
            table.write_chunk().await?;
            let changes = std::mem::take(&mut table.op_counts);
            table.lake.commit(self.epoch, commit_lsn, changes).await?;
            table.written = 0;
            outstanding += 1;
        }
        self.in_flight.push_back(InFlight {
            epoch: self.epoch,
            commit_lsn,
            end_lsn,
            outstanding,
            started: Instant::now(),
            oldest_commit_micros: self.pending_commit_micros.take(),
            report: FlushReport::default(),
        });
        self.clear_pending();
        Ok(())
    }

    /// The next acknowledgement of a writer task (waits for ever when none can come).
    /// A task that failed sends its error; one that panicked is reported as stopped.
    pub async fn next_ack(&mut self) -> Ack {
        loop {
            tokio::select! {
                biased;
                Some(ack) = self.acks.recv() => return ack,
                Some(joined) = self.tasks.join_next() => {
                    if let Err(err) = joined
                        && err.is_panic()
                    {
                        return Ack {
                            table: 0,
                            result: Err(ApplyError::WriterStopped(format!("(it panicked: {err})"))),
                        };
                    }
                }
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Takes a writer task's acknowledgement: a table committed (recorded in metrics),
    /// or the error that stopped its task. Returns what the flushes it completed
    /// committed, if it completed any: [`Applier::confirmable`] has moved then.
    pub fn on_ack(&mut self, ack: Ack) -> Result<Option<FlushReport>, ApplyError> {
        let done = ack.result?;
        let table = &mut self.tables[ack.table];
        if done.committed.outcome != CommitOutcome::NothingToCommit {
            table.lake.set_committed(done.lsn);
        }
        let name = table.qualified_name();
        metrics::global().record_commit(
            &name,
            &TableCommit {
                changes: done.changes,
                rows: done.rows as u64,
                files: done.committed.files,
                bytes: done.committed.bytes,
            },
        );
        tracing::debug!(table = %name, lsn = %done.lsn, rows = done.rows, outcome = ?done.committed.outcome, "committed to the lake");
        if let Some(flush) = self.in_flight.iter_mut().find(|f| f.epoch == done.epoch) {
            flush.outstanding = flush.outstanding.saturating_sub(1);
            flush.report.tables += 1;
            flush.report.rows += done.rows;
        }
        Ok(self.advance())
    }

    /// Retires the flushes every table has acknowledged, oldest first, moving
    /// `confirmable` to the end of each.
    fn advance(&mut self) -> Option<FlushReport> {
        let mut report: Option<FlushReport> = None;
        while self.in_flight.front().is_some_and(|f| f.outstanding == 0) {
            let Some(mut flush) = self.in_flight.pop_front() else {
                break;
            };
            self.confirmable = self.confirmable.max(flush.end_lsn);
            if flush.report.tables > 0 {
                self.last_flushed = Some(flush.commit_lsn);
            }
            flush.report.elapsed = flush.started.elapsed();
            report
                .get_or_insert_with(FlushReport::default)
                .merge(flush.report);
        }
        if report.is_some()
            && !self.has_pending()
            && !self.in_transaction()
            && let Some((_, end_lsn)) = self.last_commit
        {
            // Transactions completed since the flush touched no replicated table.
            self.confirmable = self.confirmable.max(end_lsn);
        }
        report
    }

    /// Waits until every flush handed to the writer tasks is acknowledged; returns what
    /// they committed.
    pub async fn drain(&mut self) -> Result<Option<FlushReport>, ApplyError> {
        let mut total: Option<FlushReport> = None;
        while !self.in_flight.is_empty() {
            let ack = self.next_ack().await;
            if let Some(report) = self.on_ack(ack)? {
                total.get_or_insert_with(FlushReport::default).merge(report);
            }
        }
        Ok(total)
    }

    /// The error to report for `err`: a writer task that stopped said why in its
    /// acknowledgements.
    pub(super) fn failure(&mut self, err: ApplyError) -> ApplyError {
        if !matches!(err, ApplyError::WriterStopped(_)) {
            return err;
        }
        while let Ok(ack) = self.acks.try_recv() {
            if let Err(cause) = ack.result {
                return cause;
            }
        }
        err
    }

    /// Stops the writer tasks and waits until they are gone, so nothing of this session
    /// reaches the lake after it ends (a commit under way lands whole or not at all).
    pub async fn close(self) {
        let Applier {
            tables, mut tasks, ..
        } = self;
        drop(tables);
        tasks.shutdown().await;
    }

    /// Drops everything not yet handed over with a commit (a shutdown inside a
    /// transaction): the source replays it from the slot next time, and the lake never
    /// references the files.
    pub async fn abandon(&mut self) -> Result<(), ApplyError> {
        let result = self.abandon_pending().await;
        result.map_err(|err| self.failure(err))
    }

    async fn abandon_pending(&mut self) -> Result<(), ApplyError> {
        for table in &mut self.tables {
            if table.has_pending() {
                // Finish the Arrow builders to empty them; the chunk is discarded.
                let _ = table.batch.finish();
                table.lake.abandon().await?;
                table.written = 0;
                table.op_counts = [0; 4];
            }
        }
        self.clear_pending();
        self.txn = None;
        Ok(())
    }

    /// Forgets the pending counts: what they counted was handed over or dropped.
    fn clear_pending(&mut self) {
        self.pending_rows = 0;
        self.pending_bytes = 0;
        self.pending_since = None;
        self.pending_commit_micros = None;
    }
}
