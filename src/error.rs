//! Why replication stopped, and how each failure is classified: retried by a new
//! session (transient), or the reason pg2lake stops (needs the operator, or permanent),
//! and which `kind` of `pg2lake_errors_total` it counts as. Each component says whether
//! its own errors are transient (one SQLSTATE list for every connection, see
//! `pg::sqlstate`); this is the one place the classes and kinds are derived.

use crate::apply::ApplyError;
use crate::config::ConfigError;
use crate::lake::LakeError;
use crate::pg::catalog::CatalogError;
use crate::pg::connect::ConnectError;
use crate::pg::pgoutput::DecodeError;
use crate::pg::replication::ReplicationError;
use crate::schema::SchemaError;
use crate::snapshot::SnapshotError;

/// Why replication stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Connecting over a normal connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A catalog query or check failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A table's schema cannot be mapped.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Applying changes failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The initial snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The slot exists but cannot be used by this configuration.
    #[error("replication slot {slot} {problem} (fix: {fix})")]
    SlotUnusable {
        /// The slot.
        slot: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The slot the lake's tables were streamed from is gone.
    #[error(transparent)]
    SlotLost(#[from] SlotLost),
    /// The server ended the replication stream.
    #[error("postgres ended the replication stream")]
    StreamEnded,
    /// The configuration is invalid (normally caught when it is loaded).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What a failure asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A new session may succeed: network cuts, server restarts, an object store outage.
    Transient,
    /// Someone must change something first: settings, privileges, the slot, the source
    /// table, a type-change policy.
    Operator,
    /// Neither retrying nor a setting helps: a protocol violation, a value pg2lake cannot
    /// convert. A bug report, with the log.
    Permanent,
}

impl ErrorClass {
    /// How logs name the class.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Operator => "needs the operator",
            ErrorClass::Permanent => "permanent",
        }
    }
}

impl PipelineError {
    /// The class of this failure: each component says whether its errors may pass by
    /// themselves; what cannot is the operator's unless nothing they set can fix it.
    pub fn class(&self) -> ErrorClass {
        let transient = match self {
            PipelineError::Connect(e) => e.is_transient(),
            PipelineError::Catalog(e) => e.is_transient(),
            PipelineError::Replication(e) => e.is_transient(),
            PipelineError::Apply(e) => e.is_transient(),
            PipelineError::Lake(e) => e.is_transient(),
            PipelineError::Snapshot(e) => e.is_transient(),
            PipelineError::StreamEnded => true,
            PipelineError::Decode(_)
            | PipelineError::Schema(_)
            | PipelineError::SlotUnusable { .. }
            | PipelineError::SlotLost(_)
            | PipelineError::Config(_) => false,
        };
        if transient {
            return ErrorClass::Transient;
        }
        match self {
            PipelineError::Decode(_)
            | PipelineError::Apply(
                ApplyError::UnknownRelation(_)
                | ApplyError::OutsideTransaction(_)
                | ApplyError::UnknownStreamedTransaction(_)
                | ApplyError::Batch(_)
                | ApplyError::WriterStopped(_),
            )
            | PipelineError::Snapshot(
                SnapshotError::Batch(_) | SnapshotError::Format { .. } | SnapshotError::Task(_),
            ) => ErrorClass::Permanent,
            _ => ErrorClass::Operator,
        }
    }

    /// Whether a new session may succeed (see [`ErrorClass::Transient`]).
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The `kind` label of `pg2lake_errors_total` for this error.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            PipelineError::Lake(_)
            | PipelineError::Apply(ApplyError::Lake(_))
            | PipelineError::Snapshot(SnapshotError::Lake(_)) => "object_store",
            PipelineError::Connect(_)
            | PipelineError::Catalog(_)
            | PipelineError::Replication(_)
            | PipelineError::SlotLost(_)
            | PipelineError::StreamEnded
            | PipelineError::Snapshot(
                SnapshotError::Connect(_)
                | SnapshotError::Catalog(_)
                | SnapshotError::Replication(_)
                | SnapshotError::Query { .. }
                | SnapshotError::Interrupted { .. },
            ) => "postgres",
            _ => "data",
        }
    }
}

/// The slot the lake's tables were streamed from is gone: the changes since its last
/// position cannot be streamed any more (`source.on_slot_loss`).
#[derive(Debug, thiserror::Error)]
#[error(
    "replication slot {slot} {problem}; the changes since its last position are gone from the server's WAL, so the lake's tables ({tables}) cannot be continued (fix: start once with source.on_slot_loss: resnapshot, e.g. PG2LAKE__SOURCE__ON_SLOT_LOSS=resnapshot, to create the slot again and reload every table; the history before stays in the lake)"
)]
pub struct SlotLost {
    /// The slot.
    pub(crate) slot: String,
    /// What happened to it.
    pub(crate) problem: String,
    /// The tables and the positions they hold.
    pub(crate) tables: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_errors_are_counted_by_their_cause() {
        let lake = PipelineError::Snapshot(SnapshotError::Lake(LakeError::SchemaMismatch {
            table: "t".into(),
            reason: "r".into(),
        }));
        assert_eq!(lake.metric_kind(), "object_store");
        let interrupted = PipelineError::Snapshot(SnapshotError::Interrupted {
            table: "public.t".into(),
        });
        assert_eq!(interrupted.metric_kind(), "postgres");
        let unreadable = PipelineError::Snapshot(SnapshotError::NotReadable {
            table: "public.t".into(),
            role: "r".into(),
        });
        assert_eq!(unreadable.metric_kind(), "data");
    }

    #[test]
    fn each_failure_has_one_class() {
        assert_eq!(PipelineError::StreamEnded.class(), ErrorClass::Transient);
        let unusable = PipelineError::SlotUnusable {
            slot: "s".into(),
            problem: "uses output plugin \"test_decoding\", not pgoutput".into(),
            fix: "drop it".into(),
        };
        assert_eq!(unusable.class(), ErrorClass::Operator);
        assert!(!unusable.is_transient());
        let violation = PipelineError::Apply(ApplyError::UnknownRelation(7));
        assert_eq!(violation.class(), ErrorClass::Permanent);
        let interrupted = PipelineError::Snapshot(SnapshotError::Interrupted {
            table: "public.t".into(),
        });
        assert_eq!(interrupted.class(), ErrorClass::Transient);
    }
}
