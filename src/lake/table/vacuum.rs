//! VACUUM: deleting the data files no retained version needs any more.
//!
//! deltalake-core's VACUUM in full mode does it the way Delta defines it: a file is
//! deleted when the current version does not reference it, no removal younger than the
//! retention period names it, and (for a file no removal names: an upload whose commit
//! never happened) it was written longer ago than the retention period. So:
//!
//! - files compaction replaced go once their removal is older than `lake.retention`,
//!   which is as long as time travel to the versions before it keeps working;
//! - a file that is being written and not committed yet is young, and stays;
//! - folders starting with `_` (the log, the spool of streamed transactions, the
//!   maintenance lease) are never looked at.
//!
//! A VACUUM that deletes something records a `VACUUM START` and a `VACUUM END` version
//! (commit information only, which conflicts with no other writer).

use std::time::Duration;

use deltalake_core::DeltaTable;
use deltalake_core::operations::vacuum::VacuumMode;
use serde::Serialize;
use url::Url;

use crate::lake::store::LakeError;

/// What a VACUUM of one table did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct VacuumReport {
    /// Files deleted (or that would be), as paths inside the table's folder.
    pub files: Vec<String>,
}

/// Deletes the files of `table` at `location` (loaded by the caller) that no version of
/// the last `retention` references (see the module docs); with `dry_run`, only lists
/// them.
pub async fn vacuum(
    location: &Url,
    table: &DeltaTable,
    retention: Duration,
    dry_run: bool,
) -> Result<VacuumReport, LakeError> {
    let delta_err = |e| LakeError::delta(location, e);
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let (_, metrics) = table
        .clone()
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(retention)
        // `lake.retention` is the setting; a table created with another keeps its
        // property, which VACUUM would otherwise insist on.
        .with_enforce_retention_duration(false)
        .with_dry_run(dry_run)
        .await
        .map_err(delta_err)?;
    let mut files = metrics.files_deleted;
    files.sort();
    Ok(VacuumReport { files })
}
