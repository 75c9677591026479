//! The lake: one Delta Lake table per replicated Postgres table, on a local folder or S3.
//!
//! ```text
//!  RecordBatch ─► LakeTable::write ─► RecordBatchWriter (Parquet, zstd, streamed to the store,
//!                                      files rolled at the target size, partitioned by `date`)
//!  LakeTable::commit(lsn) ─► one Delta commit: add actions + txn(app_id, version = lsn)
//! ```
//!
//! Invariants:
//! - Files become visible only through a Delta commit; a crash before the commit leaves
//!   unreferenced files that readers never see (and that `run` removes once it holds the
//!   slot, see `LakeTable::remove_uncommitted_files`).
//! - Every commit carries a `txn` action whose version is the commit LSN of the last source
//!   transaction it contains. Reading it back on start is how pg2lake skips transactions
//!   that are already in the lake, which makes replay after a crash exactly-once.
//! - Commits are create-only puts of `_delta_log/N.json` (object_store `PutMode::Create`),
//!   which local file systems and S3 (`If-None-Match`) provide without a lock service.

mod forget;
mod layout;
mod lease;
mod metered;
mod mirror;
mod store;
mod table;

pub use forget::{ErasureReport, FORGET_OPERATION, Subject, erase};
pub use layout::{app_id, table_location};
pub use lease::{Acquired, LEASE_FOLDER, Lease};
pub use mirror::{
    MIRROR_APP_ID, MIRROR_FOLDER, MirrorOptions, MirrorReport, mirror_location, mirror_position,
    refresh as refresh_mirror,
};
pub use store::{Lake, LakeError, LakeOptions};
pub use table::{
    CommitOutcome, CompactionOptions, CompactionReport, DataFile, FileStats, LakeReader, LakeTable,
    SOURCE_CHANGES_PROPERTY, SOURCE_KEY_PROPERTY, SPOOL_FOLDER, Spool, SpoolStore, VacuumReport,
    compact, file_stats, vacuum,
};
