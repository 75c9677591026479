//! The streaming part of a session: the select loop that reads the walsender, applies
//! changes, hands flushes to the tables' writer tasks and confirms the positions they
//! acknowledge, beside its timers (status updates, flushes, heartbeats, table discovery,
//! replica-identity checks), and how a cut or frozen connection is noticed.

use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, FlushReport};
use crate::config::{Config, TableName, TablePattern};
use crate::lsn::Lsn;
use crate::metrics;
use crate::pg::catalog::{self, CatalogError};
use crate::pg::pgoutput::{self, Decoder, LogicalMessage};
use crate::pg::publication::{self, Streaming};
use crate::pg::replication::{
    ReplicationError, ReplicationMessage, ReplicationStream, StandbyStatus,
};
use crate::progress::Progress;

use super::SessionEnd;
use crate::error::PipelineError;

/// How often the replicated tables' replica identities are checked while streaming (see
/// [`publication`]): the longest the application's UPDATE and DELETE on a table whose key
/// was just dropped can fail because of pg2lake's publication.
const IDENTITY_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The silence limit of the connections (see [`stream_changes`]) when the server's
/// `wal_sender_timeout` is 0 (off): Postgres's default.
pub(super) const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound on how often the flush policy's age rule is checked.
const FLUSH_CHECK_MAX_PERIOD: Duration = Duration::from_secs(1);
/// How long ago a transaction must have committed for the stream to count as catching
/// up (see [`Reader::take`]).
const BEHIND: Duration = Duration::from_secs(1);
/// Messages taken at once while catching up before the loop's timers get a turn.
const DRAIN_AT_ONCE: usize = 4096;
/// How long a catching-up loop lets messages arrive when none is waiting. Besides
/// pg2lake's own wake-ups, it saves the walsender's: it flushes its socket after every
/// message while the socket is writable, so a reader that takes each message at once
/// costs it a send per message; with the socket filling meanwhile it sends in bulk.
/// Measured on 2 cores (`benches/catchup.rs`, 1,000,000 changes): 2 ms drained
/// single-row transactions at 1.15x pg_recvlogical's rate, 5 ms at 1.24x, 10 ms at 2.1x
/// (10,000-row ones at 2.0x), 25 ms at 0.99x (the socket filled and the walsender waited).
const COALESCE: Duration = Duration::from_millis(10);

/// What a streaming session works with besides the stream and the applier.
pub(super) struct Session<'a> {
    pub(super) config: &'a Config,
    /// The session's catalog connection.
    pub(super) client: &'a Client,
    /// The session's tables and their relation OIDs; the session ends when they change
    /// (see [`tables_changed`]).
    pub(super) sources: &'a [(TableName, u32)],
    /// The publications streamed and the tables without a replica identity.
    pub(super) streaming: &'a Streaming,
    /// How long the connections may stay silent before they count as cut or stalled: the
    /// server's `wal_sender_timeout` (see [`stream_changes`]).
    pub(super) silence_limit: Duration,
}

/// The select loop: timers, then the stream; see each arm for why it has its priority.
pub(super) async fn stream_changes(
    session: &Session<'_>,
    stream: &mut ReplicationStream,
    applier: &mut Applier,
    start: Lsn,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, PipelineError> {
    let Session {
        config,
        client,
        sources,
        silence_limit,
        ..
    } = *session;
    let mut progress = Progress::new(start);
    // A cut or frozen network (no RST: a dead route, a NAT entry gone) leaves a socket
    // that never delivers another byte. The walsender answers a status update that asks
    // for a reply at once, and one is asked for after half the limit of silence; nothing
    // for the whole limit means the connection is gone. Postgres's own standbys do the
    // same with wal_receiver_timeout.
    let mut last_received = tokio::time::Instant::now();
    let mut timers = Timers::new(config);
    let wildcards = wildcards(config);
    // The tables changed; the session ends at the next transaction boundary.
    let mut changed = false;
    let mut reader = Reader::new(client);
    // Positions first: the lag is measured against them.
    record_loop(&progress, applier);
    refresh_server_metrics(config, client, silence_limit).await;

    loop {
        tokio::select! {
            biased;
            // Shutdown first, so SIGTERM is honoured even while changes keep arriving.
            () = shutdown.cancelled() => {
                stop(stream, applier, &mut progress).await?;
                return Ok(SessionEnd::Shutdown);
            }
            // Status updates before the stream: under a steady stream the stream arm is
            // always ready, and a walsender that hears nothing for wal_sender_timeout
            // drops the connection.
            _ = timers.status.tick() => {
                // When idle, ask for a keepalive: its position is confirmable, so the slot
                // keeps up with WAL written by other databases and unpublished tables.
                // After a long silence, ask too: the answer proves the connection alive.
                let idle = !applier.in_transaction() && !applier.has_pending();
                let quiet = last_received.elapsed() >= silence_limit / 2;
                send_status(stream, &progress, idle || quiet).await?;
                record_loop(&progress, applier);
            }
            // A writer task committed (or failed): what every table acknowledged is
            // confirmed at once, so the server can recycle WAL.
            ack = applier.next_ack() => {
                if let Some(report) = applier.on_ack(ack)? {
                    committed(stream, applier, &mut progress, &report).await?;
                }
            }
            // The age rule of the flush policy; cheap when nothing is due.
            _ = timers.flush.tick() => {
                metrics::global().health.tick();
                if applier.flush_due(Instant::now()) {
                    flush(applier).await?;
                }
            }
            // Heartbeats keep the slot moving when the only WAL is from other databases.
            _ = timers.heartbeat.tick() => heartbeat(session).await?,
            // Tables created since the session began that `schema.*` entries match, and
            // replicated tables dropped and created again.
            _ = timers.discovery.tick(), if !changed => {
                changed = within(silence_limit, "looking for new tables", tables_changed(client, &wildcards, sources)).await?;
            }
            // A table that lost its replica identity breaks the application's UPDATE and
            // DELETE while the main publication holds it: moved out at once, here.
            _ = timers.identity.tick(), if !changed => {
                changed = within(silence_limit, "checking replica identities", publications_changed(session)).await??;
            }
            // Bounded by the silence limit (see `last_received`); a message already in
            // the socket is taken first, so a loop busy elsewhere never trips it.
            message = tokio::time::timeout_at(last_received + silence_limit, stream.next()) => {
                let Ok(message) = message else {
                    return Err(silence(silence_limit));
                };
                last_received = tokio::time::Instant::now();
                reader.take_ready(stream, applier, &mut progress, message?).await?;
                if reader.behind {
                    tokio::time::sleep(COALESCE).await;
                }
            }
        }
        // At a transaction boundary: what is pending is committed and confirmed, and the
        // next session starts after it.
        if changed && !applier.in_transaction() {
            stop(stream, applier, &mut progress).await?;
            return Ok(SessionEnd::TablesChanged);
        }
    }
}

/// Emits a heartbeat and reads the server's position and the slot's health.
async fn heartbeat(session: &Session<'_>) -> Result<(), PipelineError> {
    let Session {
        config,
        client,
        silence_limit,
        ..
    } = *session;
    let lsn = within(
        silence_limit,
        "emitting a heartbeat",
        catalog::emit_heartbeat(client),
    )
    .await??;
    tracing::debug!(lsn = %lsn, "emitted heartbeat");
    refresh_server_metrics(config, client, silence_limit).await;
    Ok(())
}

/// The `schema.*` entries of `tables`, which new tables can match while streaming.
fn wildcards(config: &Config) -> Vec<TablePattern> {
    config
        .table_patterns()
        .into_iter()
        .filter(|p| matches!(p, TablePattern::AllInSchema(_)))
        .collect()
}

/// The select loop's timers.
struct Timers {
    /// Standby status updates to the walsender.
    status: Interval,
    /// The flush policy's age rule.
    flush: Interval,
    /// Heartbeats that move the slot when only other databases write WAL.
    heartbeat: Interval,
    /// Looking for new and re-created tables.
    discovery: Interval,
    /// Checking the replica identities.
    identity: Interval,
}

impl Timers {
    /// The timers for `config`: status and flush checks tick at once, the others first
    /// after their period. A late tick is delayed, never made up in a burst.
    fn new(config: &Config) -> Self {
        let flush_period = (config.flush.max_interval / 4)
            .clamp(Duration::from_millis(50), FLUSH_CHECK_MAX_PERIOD);
        let now = tokio::time::Instant::now();
        let every = |first: tokio::time::Instant, period: Duration| {
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick
        };
        Timers {
            status: every(now, config.source.status_interval),
            flush: every(now, flush_period),
            heartbeat: every(
                now + config.source.heartbeat_interval,
                config.source.heartbeat_interval,
            ),
            discovery: every(
                now + config.source.table_discovery_interval,
                config.source.table_discovery_interval,
            ),
            identity: every(now + IDENTITY_CHECK_INTERVAL, IDENTITY_CHECK_INTERVAL),
        }
    }
}

/// The error of a connection silent for the whole `limit` although a reply was asked
/// for (see `last_received` in [`stream_changes`]).
fn silence(limit: Duration) -> PipelineError {
    ReplicationError::Timeout(format!(
        "nothing from the walsender for {}s (wal_sender_timeout), although a reply was asked for: the connection is cut or stalled",
        limit.as_secs()
    ))
    .into()
}

/// Takes the walsender's messages: decodes, applies, flushes when due, confirms.
struct Reader<'a> {
    /// The session's catalog connection, for the types of new relations' columns.
    client: &'a Client,
    /// Knows whether a stream block (a transaction sent before its commit) is open.
    decoder: Decoder,
    /// Whether the last transaction begun committed more than [`BEHIND`] ago.
    behind: bool,
}

impl<'a> Reader<'a> {
    /// A reader at the start of a session: no stream block open, not behind.
    fn new(client: &'a Client) -> Self {
        Reader {
            client,
            decoder: Decoder::new(),
            behind: false,
        }
    }

    /// Takes `message` and, while catching up, the messages already received after it:
    /// waking for every message of a backlog of small transactions costs pg2lake more
    /// CPU in scheduling than in work, CPU the walsender's decoding (the real limit)
    /// needs on a small machine. The caller then lets more arrive for a moment (see
    /// [`COALESCE`]).
    async fn take_ready(
        &mut self,
        stream: &mut ReplicationStream,
        applier: &mut Applier,
        progress: &mut Progress,
        message: Option<ReplicationMessage>,
    ) -> Result<(), PipelineError> {
        self.take(stream, applier, progress, message).await?;
        if self.behind {
            for _ in 0..DRAIN_AT_ONCE {
                match stream.next().now_or_never() {
                    Some(message) => self.take(stream, applier, progress, message?).await?,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Takes one message (`None`: the server ended the stream), and notes whether the
    /// stream is catching up: the last transaction begun committed more than [`BEHIND`]
    /// ago (by this host's clock; a skewed clock costs at most [`COALESCE`] per wait).
    async fn take(
        &mut self,
        stream: &mut ReplicationStream,
        applier: &mut Applier,
        progress: &mut Progress,
        message: Option<ReplicationMessage>,
    ) -> Result<(), PipelineError> {
        match message {
            None => Err(PipelineError::StreamEnded),
            Some(ReplicationMessage::XLogData {
                wal_start, data, ..
            }) => {
                progress.receive(wal_start);
                let message = self.decoder.decode(data)?;
                if let LogicalMessage::Begin(begin) = &message.message {
                    let committed = pgoutput::pg_epoch_micros_to_unix_micros(begin.commit_ts);
                    let now = chrono::Utc::now().timestamp_micros();
                    self.behind = now.saturating_sub(committed) > BEHIND.as_micros() as i64;
                }
                if let LogicalMessage::Relation(relation) = &message.message {
                    // Before the Relation is applied: its columns' types with
                    // database-specific OIDs are looked up (once per OID).
                    catalog::resolve_types(self.client, applier.types_mut(), &relation.columns)
                        .await?;
                }
                let completed = applier.apply(message).await?;
                if completed {
                    if applier.flush_due(Instant::now()) {
                        flush(applier).await?;
                    }
                    progress.confirm(applier.confirmable());
                }
                Ok(())
            }
            Some(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
                ..
            }) => {
                progress.receive(wal_end);
                applier.idle_position(wal_end);
                if !applier.in_transaction() && !applier.has_pending() {
                    // Everything the server sent is in the lake: a change lost with an
                    // earlier session was replayed and committed, or was in the lake
                    // already.
                    metrics::global().caught_up();
                }
                progress.confirm(applier.confirmable());
                if reply_requested {
                    // The walsender asks because wal_sender_timeout is near.
                    send_status(stream, progress, false).await?;
                }
                Ok(())
            }
        }
    }
}

/// Whether the replicated tables changed since the session began: `wildcards`
/// (`schema.*` entries) match tables beyond `sources`, or a table of `sources` has another
/// relation OID now (dropped and created again). A failed lookup counts as no and is
/// logged; a broken connection surfaces through the heartbeat.
async fn tables_changed(
    client: &Client,
    wildcards: &[TablePattern],
    sources: &[(TableName, u32)],
) -> bool {
    let names: Vec<TableName> = sources.iter().map(|(table, _)| table.clone()).collect();
    let current = match catalog::relation_oids(client, &names).await {
        Ok(current) => current,
        Err(err) => {
            tracing::warn!(error = %err, "looking up the replicated tables failed; trying again later");
            return false;
        }
    };
    let mut changed = false;
    for (table, oid) in sources {
        // A dropped table is not a change here: nothing of it arrives any more.
        if let Some(&now) = current.get(table)
            && now != *oid
        {
            tracing::warn!(table = %table, relation_oid = oid, now, "table was dropped and created again; ending the replication session");
            changed = true;
        }
    }
    if wildcards.is_empty() {
        return changed;
    }
    match catalog::resolve_tables(client, wildcards).await {
        Ok(found) => {
            let new: Vec<String> = found
                .iter()
                .filter(|t| !names.contains(t))
                .map(ToString::to_string)
                .collect();
            if !new.is_empty() {
                tracing::info!(
                    tables = %new.join(", "),
                    "new tables match the tables setting; starting a new session to add and load them"
                );
                changed = true;
            }
        }
        // The schemas hold no table right now.
        Err(CatalogError::NoTables { .. }) => {}
        Err(err) => {
            tracing::warn!(error = %err, "looking for new tables failed; trying again later");
        }
    }
    changed
}

/// Runs a query of the loop's catalog connection, which a cut or frozen network would
/// leave waiting for ever, within `limit`; running out is a transient session error.
async fn within<T>(
    limit: Duration,
    what: &str,
    query: impl std::future::Future<Output = T>,
) -> Result<T, PipelineError> {
    tokio::time::timeout(limit, query).await.map_err(|_| {
        PipelineError::Replication(ReplicationError::Timeout(format!(
            "{what}: no answer from postgres for {}s (wal_sender_timeout): the connection is cut or stalled",
            limit.as_secs()
        )))
    })
}

/// Keeps the publication invariant while streaming (see [`publication`]): when a table's
/// replica identity came or went, moves it between the publications right away and says
/// that the session should end (the next one records the change in the lake table).
/// Also says so once the insert-only publication became streamable. A failed lookup
/// counts as no change and is logged; a broken connection surfaces through the heartbeat.
async fn publications_changed(session: &Session<'_>) -> Result<bool, PipelineError> {
    let Session {
        config,
        client,
        streaming,
        ..
    } = *session;
    let keyless = match publication::keyless_tables(client, &streaming.tables).await {
        Ok(keyless) => keyless,
        Err(err) => {
            tracing::warn!(error = %err, "reading the tables' replica identities failed; trying again later");
            return Ok(false);
        }
    };
    if keyless != streaming.keyless {
        // An error here stops the session: the application may be failing right now, and
        // the next session tries again (or stops with the fix).
        publication::rearrange(client, &config.source.publication, streaming, &keyless).await?;
        tracing::warn!(
            tables_without_replica_identity = keyless.len(),
            "a table's replica identity changed; publications updated, starting a new session"
        );
        return Ok(true);
    }
    if let publication::InsertsPublication::From(from) = streaming.inserts {
        // A failed lookup counts as not yet; a slot gone meanwhile ends the session
        // through the stream.
        if let Ok(Some(slot)) = catalog::slot_info(client, &config.source.slot).await
            && publication::slot_has_passed(Some(&slot), from)
        {
            tracing::info!(streamable_from = %from, "the insert-only publication can be streamed now; starting a new session");
            return Ok(true);
        }
    }
    Ok(false)
}

/// Hands what is pending to the writer tasks to commit; [`committed`] confirms it once
/// they acknowledge.
async fn flush(applier: &mut Applier) -> Result<(), PipelineError> {
    // The lag counts from the oldest change this flush holds, whether or not the
    // status tick saw it pending: should the commit fail (the store down), the lag keeps
    // growing from there through the sessions that follow.
    metrics::global().set_lag_from(applier.oldest_pending_commit_micros());
    applier.flush().await?;
    Ok(())
}

/// Flushes every table acknowledged: tells Postgres the new durable position at once,
/// so the server can recycle WAL without waiting for the next status tick.
async fn committed(
    stream: &mut ReplicationStream,
    applier: &Applier,
    progress: &mut Progress,
    report: &FlushReport,
) -> Result<(), PipelineError> {
    metrics::global().caught_up();
    // Committed to the lake; Postgres has not heard of it yet.
    crate::crash_point!("pipeline::after_commit");
    // Only now, after the lake commit, may the position be confirmed.
    progress.confirm(applier.confirmable());
    let m = metrics::global();
    m.flush_duration.observe(report.elapsed.as_secs_f64());
    if let Some(lsn) = applier.last_commit_lsn() {
        m.committed_lsn.set(lsn.as_i64());
    }
    record_loop(progress, applier);
    tracing::info!(
        tables = report.tables,
        rows = report.rows,
        lsn = %progress.confirmed(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "committed changes to the lake"
    );
    send_status(stream, progress, false).await
}

/// Graceful stop: commit what is complete, confirm it, leave the rest to the slot.
async fn stop(
    stream: &mut ReplicationStream,
    applier: &mut Applier,
    progress: &mut Progress,
) -> Result<(), PipelineError> {
    if applier.in_transaction() {
        // A half-received source transaction cannot be committed, and the files written
        // so far mix it with complete ones: drop all of it; the slot replays it.
        tracing::info!("stopping inside a source transaction; it will be replayed on restart");
        applier.abandon().await?;
    } else if applier.has_pending() {
        flush(applier).await?;
    }
    if let Some(report) = applier.drain().await? {
        committed(stream, applier, progress, &report).await?;
    }
    // Transactions still being streamed are streamed again from their beginning.
    applier.discard_streamed().await;
    metrics::global().streamed_transactions.set(0);
    progress.confirm(applier.confirmable());
    send_status(stream, progress, false).await?;
    tracing::info!(confirmed_lsn = %progress.confirmed(), "replication stopped");
    Ok(())
}

/// Updates the per-tick metrics and marks the loop as turning (`/healthz`).
fn record_loop(progress: &Progress, applier: &Applier) {
    let m = metrics::global();
    m.health.tick();
    m.set_positions(progress.received(), progress.confirmed());
    m.set_lag_from(applier.oldest_pending_commit_micros());
    m.memory_buffered_bytes
        .set(i64::try_from(applier.pending_bytes()).unwrap_or(i64::MAX));
    m.streamed_transactions
        .set(i64::try_from(applier.streamed_transactions()).unwrap_or(i64::MAX));
}

/// Reads the server's WAL position and the slot's health for the lag and slot metrics.
/// A failure here only costs a stale metric: the heartbeat on the same connection
/// reports a broken connection as the session error.
async fn refresh_server_metrics(config: &Config, client: &Client, limit: Duration) {
    let position = within(
        limit,
        "reading the slot's health",
        catalog::server_position(client, &config.source.slot),
    )
    .await;
    match position {
        Ok(Ok(position)) => metrics::global().set_server(&position),
        Ok(Err(err)) => {
            metrics::global().record_error("postgres");
            tracing::warn!(error = %err, "cannot read the replication slot's health");
        }
        Err(err) => {
            metrics::global().record_error("postgres");
            tracing::warn!(error = %err, "cannot read the replication slot's health");
        }
    }
}

async fn send_status(
    stream: &mut ReplicationStream,
    progress: &Progress,
    reply_requested: bool,
) -> Result<(), PipelineError> {
    stream
        .send_status_update(StandbyStatus {
            write: progress.received(),
            flush: progress.confirmed(),
            apply: progress.confirmed(),
            reply_requested,
        })
        .await?;
    Ok(())
}
