//! The replication slot of a session: waiting while another instance streams it (the
//! standby of an active/standby pair), creating or checking it, and what to do when the
//! slot the lake was streamed from is gone.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::ReplicatedTable;
use crate::config::{Config, SlotLossPolicy};
use crate::lsn::Lsn;
use crate::metrics;
use crate::pg::catalog;
use crate::pg::replication::{CreatedSlot, ReplicationClient, SlotSnapshot};

use crate::error::{PipelineError, SlotLost};

/// How often a slot held by another process is checked again: a standby takes over
/// within about this long after the active instance is gone.
const SLOT_BUSY_RECHECK: Duration = Duration::from_secs(2);

/// The tables to reload because the slot their lake state was streamed from is gone, or
/// the error that stops pg2lake instead (`source.on_slot_loss`). The slot is gone when it
/// was invalidated (`wal_status` lost), or when it is missing while tables hold changes
/// streamed from it (a first start has no such table). The changes since its last
/// position are gone from the server's WAL: going on without a reload would leave a
/// silent gap in every table.
pub fn slot_loss(
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
pub enum SlotReady {
    /// The slot exists; streaming starts at its confirmed position.
    Existing(Lsn),
    /// The slot was just created; its exported snapshot is valid while the replication
    /// connection stays idle.
    Created(CreatedSlot),
    /// Another process took the slot.
    Taken,
}

/// How [`wait_for_free_slot`] ended. `Free` and `Released` carry the slot as it was
/// then (`None`: it does not exist).
pub enum SlotWait {
    /// No other process streamed from the slot.
    Free(Option<catalog::SlotInfo>),
    /// Another process did, and has released it.
    Released(Option<catalog::SlotInfo>),
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
/// [`SLOT_BUSY_RECHECK`]. While it waits, `/readyz` says standby.
pub async fn wait_for_free_slot(
    config: &Config,
    client: &Client,
    shutdown: &CancellationToken,
) -> Result<SlotWait, PipelineError> {
    let result = wait_while_taken(config, client, shutdown).await;
    // However the wait ended (an error included), this instance is no standby any more.
    metrics::global().health.set_standby(false);
    result
}

async fn wait_while_taken(
    config: &Config,
    client: &Client,
    shutdown: &CancellationToken,
) -> Result<SlotWait, PipelineError> {
    let slot = &config.source.slot;
    let mut warned = false;
    loop {
        // Waiting for a busy slot is a live process, not a stuck one.
        metrics::global().health.tick();
        let info = catalog::slot_info(client, slot).await?;
        let Some(pid) = info.as_ref().and_then(|info| info.active_pid) else {
            if !warned {
                return Ok(SlotWait::Free(info));
            }
            tracing::info!(slot, "replication slot was released; taking over");
            return Ok(SlotWait::Released(info));
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
            () = shutdown.cancelled() => return Ok(SlotWait::Shutdown),
            () = tokio::time::sleep(SLOT_BUSY_RECHECK) => {}
        }
    }
}

/// Makes sure the slot exists and belongs to this database and plugin. A slot created
/// here exports its snapshot, which stays valid until `replication` runs its next
/// command.
pub async fn prepare_slot(
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
    check_slot(config, client, &info).await?;
    if info.active_pid.is_some() {
        // Taken since the session began (see [`wait_for_free_slot`]): what this session
        // read of the lake may be stale by now.
        return Ok(SlotReady::Taken);
    }
    Ok(SlotReady::Existing(
        info.confirmed_flush_lsn.unwrap_or_default(),
    ))
}

/// Checks that the existing slot `info` can stream this configuration: it decodes with
/// pgoutput and belongs to the configured database.
pub async fn check_slot(
    config: &Config,
    client: &Client,
    info: &catalog::SlotInfo,
) -> Result<(), PipelineError> {
    let slot = &config.source.slot;
    if info.plugin.as_deref() != Some("pgoutput") {
        return Err(PipelineError::SlotUnusable {
            slot: slot.clone(),
            problem: format!(
                "uses output plugin {:?}, not pgoutput",
                info.plugin.clone().unwrap_or_default()
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
    Ok(())
}
