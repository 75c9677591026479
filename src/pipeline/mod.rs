//! The apply loop of `pg2lake run`: decode → batch → commit → confirm.
//!
//! ```text
//!  run ─► session ─► preflight (settings, tables, publication, lake) ─► slot ─► snapshot ─► stream
//!   ▲        │                                                                                │
//!   │        └─ transient error (network, Postgres restart, store outage) ◄───────────────────┘
//!   └──────── backoff, then a fresh session that replays from the slot
//! ```
//!
//! The snapshot step copies the tables that have nothing committed in the lake yet (see
//! `snapshot`): with a slot created in this session, at the slot's own exported snapshot;
//! with an existing slot, at a temporary slot's.
//!
//! `slot` waits for, creates and checks the slot (and says what to do when it is gone);
//! `stream` is the select loop of a streaming session.
//!
//! A session keeps nothing that is not in the lake or in the slot, so any failure is
//! handled the same way: drop everything, reconnect, resume from the slot's confirmed
//! position and skip per table what its Delta log already holds. This one retry layer is
//! what makes kill -9, Postgres restarts, network cuts and object-store errors safe.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, FlushPolicy, ReplicatedTable};
use crate::bootstrap::{
    self, Preflight, SlotReady, SlotWait, prepare_slot, slot_loss, wait_for_free_slot,
};
use crate::config::{Config, TableName};
use crate::error::PipelineError;
use crate::lake;
use crate::lsn::Lsn;
use crate::metrics;
use crate::pg::catalog;
use crate::pg::connect;
use crate::pg::publication::Streaming;
use crate::pg::replication::{ConnectParams, ReplicationClient, ReplicationStream};
use crate::schema::TypeCatalog;
use crate::snapshot::{self, SnapshotPoint};

mod stream;

use stream::{DEFAULT_SILENCE_LIMIT, Session, stream_changes};

/// First wait before reconnecting after a transient failure; doubles up to the maximum.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// How long a session must have streamed to count as healthy: its failure resets the
/// reconnect backoff (see [`backoff_before_retry`]).
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// Why a replication session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// Tables matching a `schema.*` entry of `tables` appeared (the next session adds them
    /// to the publication and loads them), or a replicated table was dropped and created
    /// again (the next session refuses to go on with a clear error).
    TablesChanged,
    /// Another process took the slot while this session prepared: the next one waits
    /// for it (see [`wait_for_free_slot`]).
    SlotTaken,
}

fn flush_policy(config: &Config) -> FlushPolicy {
    FlushPolicy {
        max_rows: config.flush.max_rows,
        max_bytes: usize::try_from(config.flush.max_bytes.0).unwrap_or(usize::MAX),
        max_interval: config.flush.max_interval,
    }
}

/// Runs replication until `shutdown` is cancelled, reconnecting after transient failures.
///
/// Failures before a session first got as far as the slot are returned at once: a wrong
/// password or an unreachable server at start-up is a configuration problem the operator
/// should see (and Kubernetes restarts the pod with its own backoff). After that (during
/// an initial load, or streaming), a transient failure is retried with exponential backoff
/// up to `source.reconnect_max_backoff`.
pub async fn run(config: Arc<Config>, shutdown: CancellationToken) -> Result<(), PipelineError> {
    // When the latest session began streaming (START_REPLICATION accepted), if ever.
    let mut streaming_since: Option<Instant> = None;
    // Whether a session got as far as the slot: the settings, the privileges and the lake
    // are right, so a transient failure after that (a Postgres crash in the middle of an
    // initial load) is retried like one while streaming.
    let mut proven = false;
    let mut backoff = INITIAL_BACKOFF;
    // Tables whose folders hold no uncommitted files of this process's sessions: a session
    // that ends cleanly commits what it wrote; one that fails may not have.
    let mut tidy = HashSet::new();
    loop {
        let started = Instant::now();
        let result = session(
            &config,
            &shutdown,
            &mut streaming_since,
            &mut proven,
            &mut tidy,
        )
        .await;
        if result.is_err() {
            tidy.clear();
        }
        metrics::global().health.set_streaming(false);
        // Our walsender is gone with the session; the next slot poll says otherwise.
        metrics::global().slot_active.set(0);
        if let Err(err) = &result {
            metrics::global().record_error(err.metric_kind());
        }
        match result {
            Ok(SessionEnd::Shutdown) => return Ok(()),
            // Not a failure: a new session right away, at the position just confirmed.
            Ok(SessionEnd::TablesChanged | SessionEnd::SlotTaken) => {}
            Err(err) if err.is_transient() && (proven || streaming_since.is_some()) => {
                metrics::global().reconnects.inc();
                // The backoff is bounded by reconnect_max_backoff, which /healthz allows for.
                metrics::global().health.tick();
                let streamed_for = streaming_since
                    .filter(|since| *since >= started)
                    .map(|since| since.elapsed());
                backoff = backoff_before_retry(backoff, streamed_for);
                tracing::warn!(error = %err, retry_in = ?backoff, "replication session failed; reconnecting");
                tokio::select! {
                    biased;
                    // Shutdown first: a stopping service must not sit out a backoff.
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.source.reconnect_max_backoff);
            }
            Err(err) => return Err(err),
        }
    }
}

/// The wait before the next session, given the one the last failure doubled to and how
/// long the failed session streamed (`None`: it failed before streaming). A session that
/// streamed for [`HEALTHY_SESSION`] was healthy: the failure is a new outage and starts
/// again from [`INITIAL_BACKOFF`]; a session that failed soon after it began streaming
/// keeps the backoff growing, so a server that drops every session at once is not
/// hammered.
fn backoff_before_retry(doubled: Duration, streamed_for: Option<Duration>) -> Duration {
    match streamed_for {
        Some(streamed) if streamed >= HEALTHY_SESSION => INITIAL_BACKOFF,
        _ => doubled,
    }
}

/// One connection's worth of replication: preflight, slot, stream until shutdown or error.
/// Sets `proven` once the slot is ready, and `streaming_since` once the server accepted
/// START_REPLICATION. Tables not in `tidy` have their uncommitted files deleted, and join
/// it.
async fn session(
    config: &Config,
    shutdown: &CancellationToken,
    streaming_since: &mut Option<Instant>,
    proven: &mut bool,
    tidy: &mut HashSet<String>,
) -> Result<SessionEnd, PipelineError> {
    let Some(mut prepared) = prepare(config, shutdown).await? else {
        return Ok(SessionEnd::Shutdown);
    };
    let mut replication = ReplicationClient::connect(&prepared.params).await?;
    let slot = prepare_slot(config, &prepared.client, &mut replication).await?;
    *proven = true;
    let start = match load(config, &mut prepared, slot, shutdown).await? {
        ControlFlow::Continue(start) => start,
        ControlFlow::Break(end) => return Ok(end),
    };
    let mut stream = replication
        .start_logical_replication(
            &config.source.slot,
            Lsn::ZERO,
            &prepared.streaming.publications,
            true,
        )
        .await?;
    *streaming_since = Some(Instant::now());
    let end = stream_tables(config, prepared, &mut stream, start, tidy, shutdown).await?;
    if end == SessionEnd::TablesChanged {
        // Ends START_REPLICATION, so the server releases the slot for the next session
        // at once instead of when it notices the closed connection.
        stream.finish().await?;
    }
    Ok(end)
}

/// What a session has prepared before it touches the slot.
struct Prepared {
    /// How to connect (replication, the copy).
    params: ConnectParams,
    /// The session's catalog connection.
    client: Client,
    /// The publications and the tables they stream.
    streaming: Streaming,
    /// The tables opened in the lake, reconciled with their source.
    replicated: Vec<ReplicatedTable>,
    /// The types of the tables' columns.
    types: TypeCatalog,
    /// The tables to copy before streaming (sorted indices into `replicated`).
    copied: Vec<usize>,
    /// Those of `copied` already in the lake, loaded again (see [`slot_loss`]).
    reload: Vec<usize>,
}

/// Everything before the slot: preflight, waiting for the slot to be free, the lake, the
/// publications, the tables, and which of them to copy (`None`: shutdown came first).
async fn prepare(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<Prepared>, PipelineError> {
    // Everything that can be checked without writing is checked first, so bad settings
    // leave no publication, slot or lake folder behind.
    let Preflight {
        params,
        client,
        tables,
    } = bootstrap::preflight(config).await?;
    for table in &tables {
        // Zero-valued series from the start, so dashboards and rate() have a baseline.
        metrics::global().register_table(&format!("{}.{}", table.schema, table.name));
    }
    let (tables, slot_now) = match wait_for_free_slot(config, &client, shutdown).await? {
        SlotWait::Free(slot) => (tables, slot),
        // The tables may have changed while this instance waited as a standby.
        SlotWait::Released(slot) => (
            catalog::resolve_tables(&client, &config.table_patterns()).await?,
            slot,
        ),
        SlotWait::Shutdown => return Ok(None),
    };
    let lake = bootstrap::open_lake(config).await?;
    // A lost slot is dropped below, or stops pg2lake: the publications are prepared for
    // the slot that streams next.
    let next_slot = slot_now.as_ref().filter(|s| !s.is_lost());
    let streaming = bootstrap::prepare_publications(config, &client, &tables, next_slot).await?;
    let app_id = lake::app_id(&config.source.slot);
    let (replicated, types) = bootstrap::open_replicated(
        config,
        &client,
        &lake,
        &streaming.tables,
        Some(&streaming),
        &app_id,
    )
    .await?;
    let unloaded = snapshot::unloaded(&replicated);
    let reload = slot_loss(config, slot_now.as_ref(), &replicated)?;
    let mut copied: Vec<usize> = unloaded.iter().chain(&reload).copied().collect();
    copied.sort_unstable();
    snapshot::check_readable(&client, &replicated, &copied).await?;
    if slot_now.as_ref().is_some_and(catalog::SlotInfo::is_lost) {
        catalog::drop_slot(&client, &config.source.slot).await?;
        tracing::warn!(slot = %config.source.slot, tables = reload.len(), "dropped the lost replication slot; creating it again and reloading the tables (source.on_slot_loss: resnapshot)");
    } else if !reload.is_empty() {
        tracing::warn!(slot = %config.source.slot, tables = reload.len(), "the replication slot is gone; creating it again and reloading the tables (source.on_slot_loss: resnapshot)");
    }
    Ok(Some(Prepared {
        params,
        client,
        streaming,
        replicated,
        types,
        copied,
        reload,
    }))
}

/// Copies the tables that need it, at a point that fits `slot`, and says where streaming
/// starts (`Break`: the session ends instead).
async fn load(
    config: &Config,
    prepared: &mut Prepared,
    slot: SlotReady,
    shutdown: &CancellationToken,
) -> Result<ControlFlow<SessionEnd, Lsn>, PipelineError> {
    let load = Load {
        copied: &prepared.copied,
        reload: &prepared.reload,
    };
    let replicated = &mut prepared.replicated;
    let start = match slot {
        SlotReady::Taken => return Ok(ControlFlow::Break(SessionEnd::SlotTaken)),
        // The slot's own exported snapshot is valid only while the replication connection
        // stays idle, so the copy happens here, before START_REPLICATION is sent on it.
        // A table already in the lake is among `copied` only when it is reloaded: see
        // [`slot_loss`]; never does a new slot silently skip what happened before it.
        SlotReady::Created(created) => {
            if !load.copied.is_empty() {
                let point = SnapshotPoint::of_slot(&created);
                if !copy_unless_stopped(config, &point, replicated, load, shutdown).await? {
                    return Ok(ControlFlow::Break(SessionEnd::Shutdown));
                }
            }
            created.consistent_point
        }
        // The slot is older than these tables' (missing) lake state: copy them at a
        // temporary slot's consistent point and keep the slot, whose confirmed position is
        // before it, so the tables already loaded lose nothing they still have to stream.
        SlotReady::Existing(position) => {
            if !load.copied.is_empty() {
                let (exporter, created) = snapshot::temporary_export(&prepared.params).await?;
                let point = SnapshotPoint::of_slot(&created);
                if !copy_unless_stopped(config, &point, replicated, load, shutdown).await? {
                    return Ok(ControlFlow::Break(SessionEnd::Shutdown));
                }
                // Closing the connection drops the temporary slot.
                drop(exporter);
            }
            position
        }
    };
    Ok(ControlFlow::Continue(start))
}

/// Streams the prepared tables from `start` until shutdown, an error or a change of
/// tables; their writer tasks are gone when it returns.
async fn stream_tables(
    config: &Config,
    prepared: Prepared,
    stream: &mut ReplicationStream,
    start: Lsn,
    tidy: &mut HashSet<String>,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, PipelineError> {
    let Prepared {
        client,
        streaming,
        replicated,
        types,
        ..
    } = prepared;
    // The server accepted START_REPLICATION, so this process holds the slot: no other
    // pg2lake writes these tables now, and files none of their commits reference are
    // leftovers of a writer killed before its commit. A listing per table: once per
    // process, and again after a failed session.
    for table in &replicated {
        let name = table.schema().qualified_name();
        if !tidy.contains(&name) {
            table.lake().remove_uncommitted_files().await?;
            tidy.insert(name);
        }
    }
    let sources: Vec<(TableName, u32)> = replicated
        .iter()
        .map(|t| {
            let schema = t.schema();
            let name = TableName {
                schema: schema.namespace.clone(),
                name: schema.name.clone(),
            };
            (name, t.lake().source_oid())
        })
        .collect();
    let mut applier = Applier::new(replicated, flush_policy(config), start);
    *applier.types_mut() = types;
    if let Some(lsn) = applier.table_positions().filter_map(|(_, lsn)| lsn).max() {
        metrics::global().committed_lsn.set(lsn.as_i64());
    }
    metrics::global().health.set_streaming(true);
    for (table, committed) in applier.table_positions() {
        tracing::info!(table, committed_lsn = ?committed.map(|l| l.to_string()), "replicating table");
    }
    tracing::info!(slot = %config.source.slot, start_lsn = %start, tables = streaming.tables.len(), "streaming changes");
    let session = Session {
        config,
        client: &client,
        sources: &sources,
        streaming: &streaming,
        silence_limit: catalog::wal_sender_timeout(&client)
            .await?
            .unwrap_or(DEFAULT_SILENCE_LIMIT),
    };
    let end = stream_changes(&session, stream, &mut applier, start, shutdown).await;
    // Whatever ended the session, its writer tasks are gone before the next one opens
    // the tables.
    applier.close().await;
    end
}

/// The tables a session copies: `copied` (sorted indices), of which `reload` are tables
/// already in the lake that are loaded again (see [`slot_loss`]).
#[derive(Clone, Copy)]
struct Load<'a> {
    copied: &'a [usize],
    reload: &'a [usize],
}

/// Copies `tables[load.copied]` at `point`, each reloaded table after its truncate
/// marker; `false` when shutdown came first. Nothing of an unfinished copy is
/// committed, so the next start copies those tables again.
async fn copy_unless_stopped(
    config: &Config,
    point: &SnapshotPoint,
    tables: &mut Vec<ReplicatedTable>,
    load: Load<'_>,
    shutdown: &CancellationToken,
) -> Result<bool, PipelineError> {
    let params = connect::params(config)?;
    for &i in load.reload {
        snapshot::write_reload_marker(&mut tables[i], point).await?;
    }
    tokio::select! {
        biased;
        // Shutdown first: a stop must not wait for a table copy that may take hours.
        () = shutdown.cancelled() => Ok(false),
        result = snapshot::copy_tables(&params, point, tables, load.copied, &config.snapshot) => {
            result?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_session_resets_the_reconnect_backoff() {
        let grown = Duration::from_secs(32);
        assert_eq!(
            backoff_before_retry(grown, Some(HEALTHY_SESSION)),
            INITIAL_BACKOFF,
            "a new outage after a healthy session starts over"
        );
        assert_eq!(
            backoff_before_retry(grown, Some(Duration::from_secs(1))),
            grown,
            "a session dropped right after it began keeps the backoff growing"
        );
        assert_eq!(
            backoff_before_retry(grown, None),
            grown,
            "a session that never streamed keeps it growing"
        );
    }
}
