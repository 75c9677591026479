//! pg2lake: change data capture from PostgreSQL logical replication into a Delta Lake.
//!
//! ```text
//!  PostgreSQL ──walsender (pgoutput)──► pg::replication ─► pg::pgoutput::decode
//!      │                                                         │ LogicalMessage
//!      ├── normal connection (pg::connect, pg::catalog,           ▼
//!      │   pg::publication): settings, tables, publications,  apply::Applier
//!      │   slot, heartbeats
//!      └── snapshot: COPY at the slot's exported snapshot ──► batch::TableBatch (`_op` r)
//!                                                                 │ per table: batch::TableBatch
//!                                                                 ▼ (Arrow builders, schema::TableSchema)
//!                                                  lake::LakeTable: Parquet files ─► Delta commit
//!                                                                 │ txn(app = slot, version = commit LSN)
//!                                                                 ▼
//!                                   progress::Progress: standby status update (only now)
//! ```
//!
//! `pipeline` owns the loop and the reconnects; `main` maps errors to exit codes.

/// A point where the fault tests kill the process (see `tests/failpoints.rs`): with the
/// `failpoints` feature, `FAILPOINTS=<name>=return` (the `fail` crate's syntax, e.g.
/// `2*off->return` for the third hit) makes the process abort there at once, as kill -9
/// would: no destructor runs, nothing is flushed. Compiled out without the feature.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            eprintln!("failpoint {} hit: aborting", $name);
            std::process::abort();
        }
    };
}

pub mod apply;
#[cfg(test)]
mod architecture;
pub mod batch;
pub mod bootstrap;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod forget;
pub mod http;
pub mod lake;
pub mod lsn;
pub mod maintain;
pub mod metrics;
pub mod pg;
pub mod pipeline;
pub mod privacy;
pub mod progress;
pub mod schema;
pub mod snapshot;
pub mod sql;
pub mod telemetry;
pub mod terminal;
pub mod verify;
