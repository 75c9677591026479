//! The initial load: copy tables new to the lake as of a slot's exported snapshot, so
//! streaming from that slot continues with nothing missing and nothing doubled.
//!
//! ```text
//!  replication conn: CREATE_REPLICATION_SLOT … (SNAPSHOT 'export') ─► consistent point C,
//!                    snapshot name S          (then idle: S is valid until its next command)
//!  snapshot.parallelism sql conns, each: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S
//!             per table (or page range of one): COPY … (FORMAT binary) ─► TableBatch
//!                        ─► LakeTable::write (chunks) ─► ONE commit, txn version = C - 1
//!             (see `load` for the split and the tasks)
//!  replication conn: START_REPLICATION from C; a table skips transactions ≤ C - 1
//! ```
//!
//! Why C - 1 and not C: Postgres streams a transaction from a new slot when its commit
//! record starts at or after the consistent point, and the exported snapshot holds every
//! transaction that committed before it. A commit record may start exactly at C, so the
//! snapshot's position is the LSN just before it: the usual rule "skip transactions at
//! or below the table's committed LSN" then drops exactly what the snapshot holds.
//! Snapshot rows carry the same `_lsn`, so they sort before every streamed change.
//!
//! Invariants:
//! - A table's snapshot is committed as one Delta version at its end: a killed snapshot
//!   leaves no visible rows, and the table (no committed `txn`) is copied again next time.
//! - A table that is committed keeps its position; tables copied later use the consistent
//!   point of a temporary slot, so an existing slot is never dropped and no other
//!   table loses the changes it still has to stream.
//! - Memory is bounded: rows go to the writer in chunks, files are sealed as they fill.

pub mod copy;
mod load;
mod progress;

pub(crate) use load::{RowError, begin, copy_sql};

pub use load::copy_tables;

use std::time::Duration;

use tokio_postgres::Client;

use crate::apply::ReplicatedTable;
use crate::batch::BatchError;
use crate::config::TableName;
use crate::lake::LakeError;
use crate::lsn::Lsn;
use crate::pg::catalog::{self, CatalogError};
use crate::pg::connect::ConnectError;
use crate::pg::replication::{
    ConnectParams, CreatedSlot, ReplicationClient, ReplicationError, SlotSnapshot,
};
use crate::schema::TableSchema;

use copy::CopyFormatError;

/// How often a table's copy reports its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Why a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The replication connection that exports the snapshot failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// A catalog query failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The role may not read a table that needs a snapshot.
    #[error(
        "role {role} cannot read table {table} for its initial snapshot (fix: GRANT SELECT ON {table} TO {role}; or remove the table from the tables setting)"
    )]
    NotReadable {
        /// The table, quoted.
        table: String,
        /// The role pg2lake connects as.
        role: String,
    },
    /// A query of the snapshot failed.
    #[error("snapshot of {table}: {what}: {source}")]
    Query {
        /// The table (or `*` for the snapshot transaction).
        table: String,
        /// What pg2lake was doing.
        what: &'static str,
        /// The Postgres error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// COPY sent a row pg2lake cannot parse.
    #[error("snapshot of {table}: {source}")]
    Format {
        /// The table.
        table: String,
        /// What is wrong with the row.
        #[source]
        source: CopyFormatError,
    },
    /// A copy of the table stopped because another part of the load failed (that
    /// failure is the one reported).
    #[error("snapshot of {table} was interrupted before all of it was copied")]
    Interrupted {
        /// The table.
        table: String,
    },
    /// A task of the load ended abnormally.
    #[error("snapshot task failed: {0}")]
    Task(String),
    /// A value could not be converted to its lake type.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

impl SnapshotError {
    /// Whether a new attempt may succeed: a lost connection or an object-store outage.
    pub fn is_transient(&self) -> bool {
        match self {
            SnapshotError::Connect(e) => e.is_transient(),
            SnapshotError::Replication(e) => e.is_transient(),
            SnapshotError::Lake(e) => e.is_transient(),
            SnapshotError::Catalog(e) => e.is_transient(),
            SnapshotError::Query { source, .. } => {
                crate::pg::sqlstate::query_error_is_transient(source)
            }
            SnapshotError::Interrupted { .. } => true,
            SnapshotError::NotReadable { .. }
            | SnapshotError::Task(_)
            | SnapshotError::Format { .. }
            | SnapshotError::Batch(_) => false,
        }
    }

    fn interrupted(schema: &TableSchema) -> Self {
        SnapshotError::Interrupted {
            table: schema.qualified_name(),
        }
    }

    fn query(table: &str, what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let table = table.to_owned();
        move |source| SnapshotError::Query {
            table,
            what,
            source,
        }
    }
}

/// A consistent point of the source to copy at.
#[derive(Debug, Clone)]
pub struct SnapshotPoint {
    /// The exported snapshot to import; `None` copies in a fresh snapshot of its own.
    pub name: Option<String>,
    /// The position every copied row and the tables' `txn` record.
    pub lsn: Lsn,
}

impl SnapshotPoint {
    /// The snapshot a slot exported: its position is just before the consistent point
    /// (see the module docs for why).
    pub fn of_slot(created: &CreatedSlot) -> SnapshotPoint {
        SnapshotPoint {
            name: created.snapshot_name.clone(),
            lsn: Lsn(created.consistent_point.0.saturating_sub(1)),
        }
    }
}

/// What copying one table did.
#[derive(Debug, Clone)]
pub struct TableReport {
    /// The table, `schema.name`.
    pub table: String,
    /// Rows copied.
    pub rows: u64,
    /// Bytes of COPY text received.
    pub bytes: u64,
    /// Wall time of the copy and its commit.
    pub elapsed: Duration,
}

/// The tables whose lake table holds nothing committed by this slot: they need a copy.
pub fn unloaded(tables: &[ReplicatedTable]) -> Vec<usize> {
    tables
        .iter()
        .enumerate()
        .filter(|(_, t)| t.committed_lsn().is_none())
        .map(|(i, _)| i)
        .collect()
}

/// Starts the reload of a table that holds changes streamed from a slot that is gone
/// (`source.on_slot_loss: resnapshot`): a truncate row at the snapshot's position, ordinal
/// 0, written before the copy so that it lands in the copy's commit, ahead of the copied
/// rows (whose ordinals start at 1). Readers fold the change log from the last truncate
/// on, so the current state is the copy, and the history before it stays readable.
pub async fn write_reload_marker(
    table: &mut ReplicatedTable,
    point: &SnapshotPoint,
) -> Result<(), SnapshotError> {
    let mut batch = crate::batch::TableBatch::new(table.schema().clone());
    batch.push_truncate(&crate::batch::ChangeMeta {
        op: crate::batch::Op::Truncate,
        lsn: point.lsn,
        seq: 0,
        commit_ts_micros: chrono::Utc::now().timestamp_micros(),
        xid: None,
    });
    let rows = batch.finish()?;
    table.lake_mut().write(rows).await?;
    Ok(())
}

/// Fails with a one-line error naming the first of `tables` the role cannot SELECT,
/// before any slot is created or anything is written.
pub async fn check_readable(
    client: &Client,
    tables: &[ReplicatedTable],
    indices: &[usize],
) -> Result<(), SnapshotError> {
    for &i in indices {
        let schema = tables[i].schema();
        let table = TableName {
            schema: schema.namespace.clone(),
            name: schema.name.clone(),
        };
        let (readable, role) = catalog::can_select(client, &table).await?;
        if !readable {
            return Err(SnapshotError::NotReadable {
                table: table.quoted(),
                role,
            });
        }
    }
    Ok(())
}

/// Creates a temporary slot on a new replication connection and returns both: the
/// connection must stay open and idle while its exported snapshot is in use, and
/// closing it drops the slot.
pub async fn temporary_export(
    params: &ConnectParams,
) -> Result<(ReplicationClient, CreatedSlot), SnapshotError> {
    let mut replication = ReplicationClient::connect(params).await?;
    // The walsender's pid is unique on the server while the connection lives.
    let name = format!(
        "pg2lake_snapshot_{}",
        replication.backend_pid().unwrap_or(0)
    );
    let created = replication
        .create_temporary_logical_slot(&name, SlotSnapshot::Export)
        .await?;
    tracing::info!(slot = %name, consistent_point = %created.consistent_point, "created temporary slot for the snapshot");
    Ok((replication, created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_sits_just_before_the_consistent_point() {
        let created = CreatedSlot {
            slot_name: "s".into(),
            consistent_point: Lsn(0x1_0000_0028),
            snapshot_name: Some("00000003-00000002-1".into()),
        };
        let point = SnapshotPoint::of_slot(&created);
        // A transaction whose commit record starts at the consistent point is streamed,
        // so the tables' position must not cover it.
        assert_eq!(point.lsn, Lsn(0x1_0000_0027));
        assert_eq!(point.name.as_deref(), Some("00000003-00000002-1"));
    }
}
