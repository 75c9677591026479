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
//! A session keeps nothing that is not in the lake or in the slot, so any failure is
//! handled the same way: drop everything, reconnect, resume from the slot's confirmed
//! position and skip per table what its Delta log already holds. This one retry layer is
//! what makes kill -9, Postgres restarts, network cuts and object-store errors safe.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, ApplyError, FlushPolicy, ReplicatedTable};
use crate::config::{Config, ConfigError, SlotLossPolicy, TableName, TablePattern};
use crate::lake::{self, Lake, LakeError, LakeOptions, LakeTable};
use crate::lsn::Lsn;
use crate::metrics;
use crate::pg::catalog::{self, CatalogError};
use crate::pg::connect::{self, ConnectError};
use crate::pg::pgoutput::{self, DecodeError, LogicalMessage, RelationColumn};
use crate::pg::publication::{self, Streaming};
use crate::pg::replication::{
    CreatedSlot, ReplicationClient, ReplicationError, ReplicationMessage, ReplicationStream,
    SlotSnapshot, StandbyStatus,
};
use crate::progress::Progress;
use crate::schema::{SchemaError, TableSchema, TypeCatalog, TypeChangePolicy};
use crate::snapshot::{self, SnapshotError, SnapshotPoint};

/// First wait before reconnecting after a transient failure; doubles up to the maximum.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// How long a session must have streamed to count as healthy: its failure resets the
/// reconnect backoff (see [`backoff_before_retry`]).
const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// How often the replicated tables' replica identities are checked while streaming (see
/// [`publication`]): the longest the application's UPDATE and DELETE on a table whose key
/// was just dropped can fail because of pg2lake's publication.
const IDENTITY_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The silence limit of the connections (see [`stream_changes`]) when the server's
/// `wal_sender_timeout` is 0 (off): Postgres's default.
const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// How often a slot held by another process is checked again: a standby takes over
/// within about this long after the active instance is gone.
const SLOT_BUSY_RECHECK: Duration = Duration::from_secs(2);
/// Upper bound on how often the flush policy's age rule is checked.
const FLUSH_CHECK_MAX_PERIOD: Duration = Duration::from_secs(1);

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

impl PipelineError {
    /// Whether a new session may succeed: network and server restarts, an object store
    /// outage. Configuration, privileges and data problems need a human.
    pub fn is_transient(&self) -> bool {
        match self {
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
        }
    }

    /// The `kind` label of `pg2lake_errors_total` for this error.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            PipelineError::Lake(_) | PipelineError::Apply(ApplyError::Lake(_)) => "object_store",
            PipelineError::Connect(_)
            | PipelineError::Catalog(_)
            | PipelineError::Replication(_)
            | PipelineError::SlotLost(_)
            | PipelineError::StreamEnded => "postgres",
            _ => "data",
        }
    }
}

/// The slot the lake's tables were streamed from is gone: the changes since its last
/// position cannot be streamed any more (see [`slot_loss`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "replication slot {slot} {problem}; the changes since its last position are gone from the server's WAL, so the lake's tables ({tables}) cannot be continued (fix: start once with source.on_slot_loss: resnapshot, e.g. PG2LAKE__SOURCE__ON_SLOT_LOSS=resnapshot, to create the slot again and reload every table; the history before stays in the lake)"
)]
pub struct SlotLost {
    /// The slot.
    slot: String,
    /// What happened to it.
    problem: String,
    /// The tables and the positions they hold.
    tables: String,
}

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

/// The type catalog of a session: empty but for the configured column types; the
/// catalog types are looked up as tables and Relation messages name them.
pub fn type_catalog(config: &Config) -> Result<TypeCatalog, ConfigError> {
    Ok(TypeCatalog::new(config.configured_types()?))
}

/// The lake settings of a configuration.
pub fn lake_options(config: &Config) -> LakeOptions {
    LakeOptions {
        url: config.lake.url.clone(),
        endpoint: config.lake.endpoint.clone(),
        region: config.lake.region.clone(),
        allow_http: config.lake.allow_http,
        checkpoint_interval: config.lake.checkpoint_interval,
        log_retention: config.lake.log_retention,
        target_file_size: config.flush.max_bytes.0,
        target_file_rows: config.flush.max_rows,
    }
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
    let params = connect::params(config)?;
    let client = connect::sql(&params).await?;
    // Everything that can be checked without writing is checked first, so bad settings
    // leave no publication, slot or lake folder behind.
    catalog::check_server(&client).await?;
    let tables = catalog::resolve_tables(&client, &config.table_patterns()).await?;
    for table in &tables {
        // Zero-valued series from the start, so dashboards and rate() have a baseline.
        metrics::global().register_table(&format!("{}.{}", table.schema, table.name));
    }
    let tables = match wait_for_free_slot(config, &client, shutdown).await? {
        SlotWait::Free => tables,
        // The tables may have changed while this instance waited as a standby.
        SlotWait::Released => catalog::resolve_tables(&client, &config.table_patterns()).await?,
        SlotWait::Shutdown => return Ok(SessionEnd::Shutdown),
    };
    let lake = Lake::open(lake_options(config))?;
    lake.check_writable().await?;
    let slot_now = catalog::slot_info(&client, &config.source.slot).await?;
    // A lost slot is dropped below, or stops pg2lake: the publications are prepared for
    // the slot that streams next.
    let next_slot = slot_now.as_ref().filter(|s| !s.is_lost());
    let streaming = prepare_publications(config, &client, &tables, next_slot).await?;
    let tables = streaming.tables.clone();
    let app_id = lake::app_id(&config.source.slot);
    let (mut replicated, types) = open_tables(config, &client, &lake, &tables, &app_id).await?;
    record_source_changes(&mut replicated, &streaming)?;
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
    let load = Load {
        copied: &copied,
        reload: &reload,
    };

    let mut replication = ReplicationClient::connect(&params).await?;
    let slot = prepare_slot(config, &client, &mut replication).await?;
    *proven = true;
    let start = match slot {
        SlotReady::Taken => return Ok(SessionEnd::SlotTaken),
        // The slot's own exported snapshot is valid only while `replication` stays idle,
        // so the copy happens here, before START_REPLICATION is sent on it.
        // A table already in the lake is among `copied` only when it is reloaded: see
        // [`slot_loss`]; never does a new slot silently skip what happened before it.
        SlotReady::Created(created) => {
            if !copied.is_empty() {
                let point = SnapshotPoint::of_slot(&created);
                if !copy_unless_stopped(config, &point, &mut replicated, load, shutdown).await? {
                    return Ok(SessionEnd::Shutdown);
                }
            }
            created.consistent_point
        }
        // The slot is older than these tables' (missing) lake state: copy them at a
        // temporary slot's consistent point and keep the slot, whose confirmed position is
        // before it, so the tables already loaded lose nothing they still have to stream.
        SlotReady::Existing(position) => {
            if !copied.is_empty() {
                let (exporter, created) = snapshot::temporary_export(&params).await?;
                let point = SnapshotPoint::of_slot(&created);
                if !copy_unless_stopped(config, &point, &mut replicated, load, shutdown).await? {
                    return Ok(SessionEnd::Shutdown);
                }
                // Closing the connection drops the temporary slot.
                drop(exporter);
            }
            position
        }
    };
    let mut stream = replication
        .start_logical_replication(
            &config.source.slot,
            Lsn::ZERO,
            &streaming.publications,
            true,
        )
        .await?;
    *streaming_since = Some(Instant::now());
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
        metrics::global()
            .committed_lsn
            .set(i64::try_from(lsn.0).unwrap_or(i64::MAX));
    }
    metrics::global().health.set_streaming(true);
    for (table, committed) in applier.table_positions() {
        tracing::info!(table, committed_lsn = ?committed.map(|l| l.to_string()), "replicating table");
    }
    tracing::info!(slot = %config.source.slot, start_lsn = %start, tables = tables.len(), "streaming changes");
    let session = Session {
        config,
        client: &client,
        sources: &sources,
        streaming: &streaming,
        silence_limit: catalog::wal_sender_timeout(&client)
            .await?
            .unwrap_or(DEFAULT_SILENCE_LIMIT),
    };
    let end = stream_changes(&session, &mut stream, &mut applier, start, shutdown).await?;
    if end == SessionEnd::TablesChanged {
        // Ends START_REPLICATION, so the server releases the slot for the next session
        // at once instead of when it notices the closed connection.
        stream.finish().await?;
    }
    Ok(end)
}

/// Arranges the publications for `tables` (see [`publication`]) and warns about each
/// table whose updates and deletes cannot be captured.
/// `slot` is the slot that streams next, as it is now (`None`: it is created after this).
pub(crate) async fn prepare_publications(
    config: &Config,
    client: &Client,
    tables: &[TableName],
    slot: Option<&catalog::SlotInfo>,
) -> Result<Streaming, PipelineError> {
    let streaming = publication::prepare(client, &config.source.publication, tables, slot).await?;
    for table in &streaming.keyless {
        tracing::warn!(
            table = %table,
            publication = %publication::inserts_name(&config.source.publication),
            fix = %format!("ALTER TABLE {} REPLICA IDENTITY FULL; (or add a primary key)", table.quoted()),
            "updates and deletes of this table cannot be captured: it has no replica identity, so only its inserts and truncates are published"
        );
    }
    Ok(streaming)
}

/// Records in each lake table which source changes it captures
/// ([`crate::lake::SOURCE_CHANGES_PROPERTY`]), committed with its next version.
pub(crate) fn record_source_changes(
    tables: &mut [ReplicatedTable],
    streaming: &Streaming,
) -> Result<(), LakeError> {
    for table in tables {
        let schema = table.schema();
        let name = TableName::new(schema.namespace.clone(), schema.name.clone());
        let changes = if streaming.keyless.contains(&name) {
            publication::INSERTS_ONLY
        } else {
            publication::ALL_CHANGES
        };
        table
            .lake_mut()
            .set_property(crate::lake::SOURCE_CHANGES_PROPERTY, changes)?;
    }
    Ok(())
}

/// Opens (or creates) the lake table of every table in `tables`; see [`open_table`].
/// Column types with database-specific OIDs are looked up first, into the type catalog
/// returned with the tables (the configured column types and policy come from `config`).
pub(crate) async fn open_tables(
    config: &Config,
    client: &Client,
    lake: &Lake,
    tables: &[crate::config::TableName],
    app_id: &str,
) -> Result<(Vec<ReplicatedTable>, TypeCatalog), PipelineError> {
    let mut catalog_types = type_catalog(config)?;
    let types = &mut catalog_types;
    let policy = config.schema.on_type_change;
    let mut replicated = Vec::with_capacity(tables.len());
    let oids = catalog::relation_oids(client, tables).await?;
    for table in tables {
        let source_oid = oids
            .get(table)
            .copied()
            .ok_or_else(|| CatalogError::TableMissing {
                table: table.to_string(),
            })?;
        let columns = catalog::table_columns(client, table).await?;
        catalog::resolve_types(client, types, &columns).await?;
        types.warn_unknown(&table.schema, &table.name, &columns);
        replicated
            .push(open_table(lake, table, source_oid, &columns, app_id, types, policy).await?);
    }
    let columns = replicated.iter().flat_map(|t| {
        let schema = t.schema();
        schema.tuple_columns.iter().map(move |&c| {
            (
                schema.namespace.as_str(),
                schema.name.as_str(),
                schema.columns[c].name.as_str(),
            )
        })
    });
    for key in types.unmatched_configured(columns) {
        tracing::warn!(
            column_types = %key,
            "column_types names no column of a replicated table; it applies once such a column appears (fix: check the schema.table.column spelling)"
        );
    }
    Ok((replicated, catalog_types))
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

/// The tables to reload because the slot their lake state was streamed from is gone, or
/// the error that stops pg2lake instead (`source.on_slot_loss`). The slot is gone when it
/// was invalidated (`wal_status` lost), or when it is missing while tables hold changes
/// streamed from it (a first start has no such table). The changes since its last
/// position are gone from the server's WAL: going on without a reload would leave a
/// silent gap in every table.
fn slot_loss(
    config: &Config,
    slot: Option<&catalog::SlotInfo>,
    tables: &[ReplicatedTable],
) -> Result<Vec<usize>, SlotLost> {
    let loaded: Vec<usize> = tables
        .iter()
        .enumerate()
        .filter(|(_, t)| t.committed_lsn().is_some())
        .map(|(i, _)| i)
        .collect();
    let problem = match slot {
        Some(slot) if slot.is_lost() => {
            "was invalidated (wal_status lost: the server removed WAL it still needed, see max_slot_wal_keep_size)"
        }
        None if !loaded.is_empty() => "does not exist, but the lake holds tables streamed from it",
        _ => return Ok(Vec::new()),
    };
    if config.source.on_slot_loss == SlotLossPolicy::Resnapshot {
        return Ok(loaded);
    }
    let names: Vec<String> = loaded
        .iter()
        .map(|&i| {
            let table = &tables[i];
            let position = table
                .committed_lsn()
                .map(|l| l.to_string())
                .unwrap_or_default();
            format!("{} up to {position}", table.schema().qualified_name())
        })
        .collect();
    Err(SlotLost {
        slot: config.source.slot.clone(),
        problem: problem.to_owned(),
        tables: names.join(", "),
    })
}

/// Where streaming starts: an existing slot's position, or a slot just created whose
/// exported snapshot is still valid; or another process took the slot meanwhile.
enum SlotReady {
    Existing(Lsn),
    Created(CreatedSlot),
    Taken,
}

/// Opens (or creates) the lake table of `table` (relation `source_oid`; see
/// [`LakeTable::open`]) and reconciles its layout with
/// the source's current `columns`: columns added while pg2lake was not running join the
/// lake layout (committed with the table's next data), dropped ones stay in it, a
/// widened type rewrites the lake table's files, and any other type change follows
/// `policy` (under `fail` it stops here, before anything is written).
async fn open_table(
    lake: &Lake,
    table: &TableName,
    source_oid: u32,
    columns: &[RelationColumn],
    app_id: &str,
    types: &TypeCatalog,
    policy: TypeChangePolicy,
) -> Result<ReplicatedTable, PipelineError> {
    let (namespace, name) = (table.schema.as_str(), table.name.as_str());
    // Names the lake cannot hold fail here even when the lake table exists already.
    let source = TableSchema::with_types(namespace, name, columns, types)?;
    let lake_table = LakeTable::open(
        lake,
        namespace,
        name,
        source.arrow.clone(),
        app_id,
        source_oid,
    )
    .await?;
    let known = TableSchema::from_lake(namespace, name, &*lake_table.arrow_schema()?)?;
    let evolution = known.evolve_with(columns, types, policy)?;
    let mut table =
        ReplicatedTable::new(Arc::new(known), lake_table).with_type_change_policy(policy);
    table.evolve(evolution).await?;
    Ok(table)
}

/// How [`wait_for_free_slot`] ended.
enum SlotWait {
    /// No other process streamed from the slot.
    Free,
    /// Another process did, and has released it.
    Released,
    /// Shutdown came first.
    Shutdown,
}

/// Waits while another process streams from the slot.
///
/// That process is the active one of an active/standby pair, or an old pod still
/// terminating during a rollout: fighting over the slot would make both fail. Waiting
/// happens before this session reads the lake or touches the publications, so the
/// instance that takes over starts from what the other one committed last; the slot
/// itself is the lock (only one walsender can stream it), and a standby checks it every
/// [`SLOT_BUSY_RECHECK`].
async fn wait_for_free_slot(
    config: &Config,
    client: &Client,
    shutdown: &CancellationToken,
) -> Result<SlotWait, PipelineError> {
    let slot = &config.source.slot;
    let mut warned = false;
    loop {
        // Waiting for a busy slot is a live process, not a stuck one.
        metrics::global().health.tick();
        let Some(pid) = catalog::slot_info(client, slot)
            .await?
            .and_then(|info| info.active_pid)
        else {
            if !warned {
                return Ok(SlotWait::Free);
            }
            metrics::global().health.set_standby(false);
            tracing::info!(slot, "replication slot was released; taking over");
            return Ok(SlotWait::Released);
        };
        if !warned {
            tracing::warn!(
                slot,
                active_pid = pid,
                "replication slot is in use by another process; waiting for it to be released (standby)"
            );
            warned = true;
            metrics::global().health.set_standby(true);
        }
        metrics::global().slot_active.set(1);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                metrics::global().health.set_standby(false);
                return Ok(SlotWait::Shutdown);
            }
            () = tokio::time::sleep(SLOT_BUSY_RECHECK) => {}
        }
    }
}

/// Makes sure the slot exists and belongs to this database and plugin. A slot created
/// here exports its snapshot, which stays valid until `replication` runs its next
/// command.
async fn prepare_slot(
    config: &Config,
    client: &Client,
    replication: &mut ReplicationClient,
) -> Result<SlotReady, PipelineError> {
    let slot = &config.source.slot;
    let Some(info) = catalog::slot_info(client, slot).await? else {
        let created = replication
            .create_logical_slot(slot, SlotSnapshot::Export)
            .await?;
        tracing::info!(slot, consistent_point = %created.consistent_point, "created replication slot");
        return Ok(SlotReady::Created(created));
    };
    if info.plugin.as_deref() != Some("pgoutput") {
        return Err(PipelineError::SlotUnusable {
            slot: slot.clone(),
            problem: format!(
                "uses output plugin {:?}, not pgoutput",
                info.plugin.unwrap_or_default()
            ),
            fix: "drop it or set source.slot to another name".into(),
        });
    }
    // A failed lookup is the session's error (transient when the connection broke),
    // never a mismatch: comparing with nothing would stop pg2lake for good over a
    // network blip.
    let database = catalog::current_database(client).await?;
    if let Some(slot_database) = info.database.as_ref()
        && *slot_database != database
    {
        return Err(PipelineError::SlotUnusable {
            slot: slot.clone(),
            problem: format!("belongs to database {slot_database:?}, not {database:?}"),
            fix: "set source.slot to a slot of this database".into(),
        });
    }
    if info.active_pid.is_some() {
        // Taken since the session began (see [`wait_for_free_slot`]): what this session
        // read of the lake may be stale by now.
        return Ok(SlotReady::Taken);
    }
    Ok(SlotReady::Existing(
        info.confirmed_flush_lsn.unwrap_or_default(),
    ))
}

/// What a streaming session works with besides the stream and the applier.
struct Session<'a> {
    config: &'a Config,
    /// The session's catalog connection.
    client: &'a Client,
    /// The session's tables and their relation OIDs; the session ends when they change
    /// (see [`tables_changed`]).
    sources: &'a [(TableName, u32)],
    /// The publications streamed and the tables without a replica identity.
    streaming: &'a Streaming,
    /// How long the connections may stay silent before they count as cut or stalled: the
    /// server's `wal_sender_timeout` (see [`stream_changes`]).
    silence_limit: Duration,
}

/// The select loop: timers, then the stream; see each arm for why it has its priority.
async fn stream_changes(
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
    let mut status_tick = tokio::time::interval(config.source.status_interval);
    status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let flush_period =
        (config.flush.max_interval / 4).clamp(Duration::from_millis(50), FLUSH_CHECK_MAX_PERIOD);
    let mut flush_tick = tokio::time::interval(flush_period);
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heartbeat_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.source.heartbeat_interval,
        config.source.heartbeat_interval,
    );
    heartbeat_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let wildcards: Vec<TablePattern> = config
        .table_patterns()
        .into_iter()
        .filter(|p| matches!(p, TablePattern::AllInSchema(_)))
        .collect();
    let mut discovery_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.source.table_discovery_interval,
        config.source.table_discovery_interval,
    );
    discovery_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut identity_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + IDENTITY_CHECK_INTERVAL,
        IDENTITY_CHECK_INTERVAL,
    );
    identity_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The tables changed; the session ends at the next transaction boundary.
    let mut changed = false;
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
            _ = status_tick.tick() => {
                // When idle, ask for a keepalive: its position is confirmable, so the slot
                // keeps up with WAL written by other databases and unpublished tables.
                // After a long silence, ask too: the answer proves the connection alive.
                let idle = !applier.in_transaction() && !applier.has_pending();
                let quiet = last_received.elapsed() >= silence_limit / 2;
                send_status(stream, &progress, idle || quiet).await?;
                record_loop(&progress, applier);
            }
            // The age rule of the flush policy; cheap when nothing is due.
            _ = flush_tick.tick() => {
                metrics::global().health.tick();
                if applier.flush_due(Instant::now()) {
                    flush(stream, applier, &mut progress).await?;
                }
            }
            // Heartbeats keep the slot moving when the only WAL is from other databases.
            _ = heartbeat_tick.tick() => {
                let lsn = within(silence_limit, "emitting a heartbeat", catalog::emit_heartbeat(client)).await??;
                tracing::debug!(lsn = %lsn, "emitted heartbeat");
                refresh_server_metrics(config, client, silence_limit).await;
            }
            // Tables created since the session began that `schema.*` entries match, and
            // replicated tables dropped and created again.
            _ = discovery_tick.tick(), if !changed => {
                changed = within(silence_limit, "looking for new tables", tables_changed(client, &wildcards, sources)).await?;
            }
            // A table that lost its replica identity breaks the application's UPDATE and
            // DELETE while the main publication holds it: moved out at once, here.
            _ = identity_tick.tick(), if !changed => {
                changed = within(silence_limit, "checking replica identities", publications_changed(session)).await??;
            }
            // Bounded by the silence limit (see `last_received`); a message already in
            // the socket is taken first, so a loop busy elsewhere never trips it.
            message = tokio::time::timeout_at(last_received + silence_limit, stream.next()) => {
                let Ok(message) = message else {
                    return Err(ReplicationError::Timeout(format!(
                        "nothing from the walsender for {}s (wal_sender_timeout), although a reply was asked for: the connection is cut or stalled",
                        silence_limit.as_secs()
                    )).into());
                };
                last_received = tokio::time::Instant::now();
                match message? {
                    None => return Err(PipelineError::StreamEnded),
                    Some(ReplicationMessage::XLogData { wal_start, data, .. }) => {
                        progress.receive(wal_start);
                        let message = pgoutput::decode(data)?;
                        if let LogicalMessage::Relation(relation) = &message {
                            // Before the Relation is applied: its columns' types with
                            // database-specific OIDs are looked up (once per OID).
                            catalog::resolve_types(client, applier.types_mut(), &relation.columns)
                                .await?;
                        }
                        let completed = applier.apply(message).await?;
                        if completed {
                            if applier.flush_due(Instant::now()) {
                                flush(stream, applier, &mut progress).await?;
                            } else {
                                progress.confirm(applier.confirmable());
                            }
                        }
                    }
                    Some(ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. }) => {
                        progress.receive(wal_end);
                        applier.idle_position(wal_end);
                        if !applier.in_transaction() && !applier.has_pending() {
                            // Everything the server sent is in the lake: a change lost
                            // with an earlier session was replayed and committed, or was
                            // in the lake already.
                            metrics::global().caught_up();
                        }
                        progress.confirm(applier.confirmable());
                        if reply_requested {
                            // The walsender asks because wal_sender_timeout is near.
                            send_status(stream, &progress, false).await?;
                        }
                    }
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
        let slot = catalog::slot_info(client, &config.source.slot).await;
        if let Ok(Some(slot)) = slot
            && slot.restart_lsn.is_some_and(|lsn| lsn >= from)
        {
            tracing::info!(streamable_from = %from, "the insert-only publication can be streamed now; starting a new session");
            return Ok(true);
        }
    }
    Ok(false)
}

/// Commits what is pending and tells Postgres the new durable position at once, so the
/// server can recycle WAL without waiting for the next status tick.
async fn flush(
    stream: &mut ReplicationStream,
    applier: &mut Applier,
    progress: &mut Progress,
) -> Result<(), PipelineError> {
    let started = Instant::now();
    let report = applier.flush().await?;
    metrics::global().caught_up();
    // Committed to the lake; Postgres has not heard of it yet.
    crate::crash_point!("pipeline::after_commit");
    // Only now, after the lake commit, may the position be confirmed.
    progress.confirm(applier.confirmable());
    let m = metrics::global();
    m.flush_duration.observe(started.elapsed().as_secs_f64());
    if let Some(lsn) = applier.last_commit_lsn() {
        m.committed_lsn
            .set(i64::try_from(lsn.0).unwrap_or(i64::MAX));
    }
    record_loop(progress, applier);
    tracing::info!(
        tables = report.tables,
        rows = report.rows,
        lsn = %progress.confirmed(),
        elapsed_ms = started.elapsed().as_millis() as u64,
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
        applier.abandon();
    } else if applier.has_pending() {
        flush(stream, applier, progress).await?;
    }
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
