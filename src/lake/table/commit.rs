//! Committing one Delta version while other writers commit to the same table.
//!
//! A table has one streaming writer (the holder of the slot), and maintenance commits
//! beside it (compaction, VACUUM's bookkeeping versions), from the same process or from
//! a `pg2lake maintain` job. Every commit is a create-only put of the next
//! `_delta_log/N.json`, so two writers never both get version N; the one that loses
//! reloads the log and tries N+1:
//!
//! ```text
//!  attempt at N ──► N taken ──► reload ──► did our version land after all? ── yes ─► done
//!                                              │ no
//!                                              ▼
//!                        is every file we remove still in the table? ── no ─► Conflict
//!                                              │ yes
//!                                              ▼
//!                                       attempt at N+1
//! ```
//!
//! deltalake-core's own conflict checker is not enough here: it lets two removes of the
//! same file pass when both carry `dataChange: false` (two compactions of the same files,
//! or a compaction and a widening rewrite), and that would duplicate rows. So commits go
//! out with deltalake-core's retries off and this loop checks the removes itself, against
//! the exact version the next attempt builds on.

use std::collections::HashSet;

use deltalake_core::DeltaTable;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{Action, Transaction};
use deltalake_core::protocol::DeltaOperation;
use object_store::path::Path;
use url::Url;

use crate::lake::store::LakeError;

/// Attempts at a commit before giving up when other writers keep taking the version.
const MAX_ATTEMPTS: usize = 20;

/// One version to commit.
pub(crate) struct Commit {
    /// The `add`, `remove`, `metaData`, `protocol` actions.
    pub actions: Vec<Action>,
    /// What the version is (WRITE, OPTIMIZE), for the log's `commitInfo`.
    pub operation: DeltaOperation,
    /// The `txn` action recording how far the source is applied: an app id and its
    /// version (an LSN for the change log, a change-log version for a mirror).
    pub txn: Option<(String, i64)>,
    /// Extra `commitInfo` entries.
    pub info: Vec<(String, serde_json::Value)>,
    /// The table's checkpoint interval: log cleanup runs with the checkpoints.
    pub checkpoint_interval: u64,
}

/// What became of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
    /// Written as this version.
    Version(i64),
    /// An attempt whose answer was lost had landed: the log holds it already.
    Landed,
}

/// Commits `commit` to `table`, at the version after the loaded one or, when other
/// writers took that, after theirs (see the module docs). On success `table` holds the
/// new version's state; on a lost answer, the reloaded log.
pub(crate) async fn commit(
    location: &Url,
    table: &mut DeltaTable,
    commit: Commit,
) -> Result<Committed, LakeError> {
    let delta_err = |e| LakeError::delta(location, e);
    let mut attempt = 1;
    loop {
        let snapshot = table.snapshot().map_err(delta_err)?;
        check_removes_present(location, table, &commit.actions)?;
        let next_version = snapshot.version() + 1;
        // Log cleanup lists the whole _delta_log: run it only with the checkpoints the
        // post-commit hook writes (every `checkpoint_interval` versions), not per commit.
        let checkpoint_due = (next_version + 1).is_multiple_of(commit.checkpoint_interval.max(1));
        let mut properties = CommitProperties::default()
            // Retries are this loop's (see the module docs).
            .with_max_retries(0)
            .with_cleanup_expired_logs(Some(checkpoint_due))
            .with_metadata(commit.info.iter().cloned().chain([(
                "pg2lake.version".to_owned(),
                serde_json::json!(env!("CARGO_PKG_VERSION")),
            )]));
        if let Some((app_id, version)) = &commit.txn {
            properties =
                properties.with_application_transaction(Transaction::new_with_last_update(
                    app_id,
                    *version,
                    Some(chrono::Utc::now().timestamp_millis()),
                ));
        }
        let result = CommitBuilder::from(properties)
            .with_actions(commit.actions.clone())
            .build(Some(snapshot), table.log_store(), commit.operation.clone())
            .await;
        let err = match result {
            Ok(finalized) => {
                let version = i64::try_from(finalized.version()).unwrap_or(i64::MAX);
                table.state = Some(finalized.snapshot());
                return Ok(Committed::Version(version));
            }
            Err(err) => err,
        };
        // Find out whether the version landed after all (an answer lost on the way back),
        // or whether another writer took it.
        reload(location, table).await?;
        if landed(location, table, &commit).await? {
            return Ok(Committed::Landed);
        }
        if !version_taken(&err) || attempt >= MAX_ATTEMPTS {
            return Err(delta_err(err));
        }
        tracing::debug!(table = %location, attempt, "another writer committed first; committing at the next version");
        attempt += 1;
    }
}

/// The version `table` has loaded (`None` before its first load).
pub(crate) fn loaded_version(table: &DeltaTable) -> Option<i64> {
    table.version().and_then(|v| i64::try_from(v).ok())
}

/// Brings `table` to the latest version. Reading on from the loaded version needs the
/// log's entries after it; when `forget` deleted them (history before an erasure ends
/// there), the table is loaded afresh from the checkpoint the erasure wrote.
pub(crate) async fn reload(location: &Url, table: &mut DeltaTable) -> Result<(), LakeError> {
    if table.update_state().await.is_ok() {
        return Ok(());
    }
    let mut fresh = DeltaTable::new(table.log_store());
    fresh
        .load()
        .await
        .map_err(|e| LakeError::delta(location, e))?;
    *table = fresh;
    Ok(())
}

/// Fails with [`LakeError::Conflict`] when a file `actions` removes is no longer in the
/// loaded version: another writer replaced it, and removing it again would keep both its
/// rows and their copy.
pub(crate) fn check_removes_present(
    location: &Url,
    table: &DeltaTable,
    actions: &[Action],
) -> Result<(), LakeError> {
    let mut removes = actions
        .iter()
        .filter_map(|action| match action {
            Action::Remove(remove) => Some(store_path(&remove.path)),
            _ => None,
        })
        .peekable();
    if removes.peek().is_none() {
        return Ok(());
    }
    let present = active_paths(location, table)?;
    match removes.find(|path| !present.contains(path)) {
        None => Ok(()),
        Some(path) => Err(LakeError::Conflict {
            table: location.to_string(),
            reason: format!("file {path} was replaced by another writer"),
        }),
    }
}

/// Whether the loaded log holds `commit`: its `txn` at its LSN or beyond, or (without a
/// `txn`) every file it adds.
async fn landed(location: &Url, table: &DeltaTable, commit: &Commit) -> Result<bool, LakeError> {
    if let Some((app_id, version)) = &commit.txn {
        let committed = transaction_version(location, table, app_id).await?;
        return Ok(committed.is_some_and(|committed| committed >= *version));
    }
    let mut adds = commit
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Add(add) => Some(store_path(&add.path)),
            _ => None,
        })
        .peekable();
    if adds.peek().is_none() {
        return Ok(false);
    }
    let present = active_paths(location, table)?;
    Ok(adds.all(|path| present.contains(&path)))
}

/// The data files of the loaded version, as object-store paths.
pub(crate) fn active_paths(
    location: &Url,
    table: &DeltaTable,
) -> Result<HashSet<String>, LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|file| file.object_store_path().to_string())
        .collect())
}

/// The object-store path of an `add` or `remove` action's (URL-encoded) path.
pub(crate) fn store_path(action_path: &str) -> String {
    Path::from_url_path(action_path)
        .map(|path| path.to_string())
        .unwrap_or_else(|_| action_path.to_owned())
}

/// Whether a commit failed because another writer took the version.
fn version_taken(err: &deltalake_core::DeltaTableError) -> bool {
    matches!(
        err,
        deltalake_core::DeltaTableError::VersionAlreadyExists(_)
            | deltalake_core::DeltaTableError::Transaction {
                source: TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
            }
    )
}

/// The version of the `txn` action of `app_id` in the loaded version, if any.
pub(crate) async fn transaction_version(
    location: &Url,
    table: &DeltaTable,
    app_id: &str,
) -> Result<Option<i64>, LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(location, e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|e| LakeError::delta(location, e))
}
