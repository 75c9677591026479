//! pg2lake: change data capture from PostgreSQL logical replication into a Delta Lake.
//!
//! ```text
//!  PostgreSQL ──walsender (pgoutput)──► pg::replication ─► pg::pgoutput::decode
//!      │                                                         │ LogicalMessage
//!      ├── normal connection (pg::connect, pg::catalog):          ▼
//!      │   settings, tables, publication, slot, heartbeats    apply::Applier
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

pub mod apply;
pub mod batch;
pub mod cli;
pub mod commands;
pub mod config;
pub mod http;
pub mod lake;
pub mod lsn;
pub mod metrics;
pub mod pg;
pub mod pipeline;
pub mod progress;
pub mod schema;
pub mod snapshot;
pub mod telemetry;
pub mod terminal;
