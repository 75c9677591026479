//! `pg2lake snapshot`: the initial load as a one-shot command.
//!
//! ```text
//!  slot missing  ─► create it, exporting its snapshot ─► copy ─► exit 0 (slot kept: a later
//!                                                                `pg2lake run` streams from it)
//!  slot exists   ─► temporary slot's snapshot ─► copy the tables not yet loaded
//!  --no-slot     ─► temporary slot's snapshot ─► copy; no slot and no publication left
//! ```
//!
//! A `--no-slot` copy is a point-in-time export that no slot can continue: its `txn`
//! is recorded under its own app id (`pg2lake:<slot>:no-slot`), so a later `pg2lake run`
//! does not take it for a streamable position and loads the table again.

use std::time::Instant;

use tokio_postgres::Client;

use crate::apply::ReplicatedTable;
use crate::bootstrap::{self, Preflight};
use crate::config::{Config, TableName};
use crate::error::PipelineError;
use crate::lake;
use crate::pg::catalog;
use crate::pg::publication::Streaming;
use crate::pg::replication::{ConnectParams, ReplicationClient, SlotSnapshot};
use crate::snapshot::{self, SnapshotPoint, TableReport};

/// What the summary prints for one configured table.
enum Line {
    Copied(TableReport),
    Skipped { table: String, lsn: String },
}

/// Runs the one-shot snapshot and prints its summary to stdout.
pub async fn run(config: &Config, no_slot: bool) -> Result<(), PipelineError> {
    let started = Instant::now();
    let Preflight {
        params,
        client,
        tables,
    } = bootstrap::preflight(config).await?;
    let lake = bootstrap::open_lake(config).await?;
    let (app_id, streaming) = plan_streaming(config, &client, &tables, no_slot).await?;
    // Tables waiting for the insert-only publication are loaded once it can be streamed.
    let tables = streaming.as_ref().map_or(tables, |s| s.tables.clone());
    let (mut replicated, _) =
        bootstrap::open_replicated(config, &client, &lake, &tables, streaming.as_ref(), &app_id)
            .await?;
    let unloaded = snapshot::unloaded(&replicated);
    let mut lines = skipped_lines(&replicated);
    snapshot::check_readable(&client, &replicated, &unloaded).await?;

    let headline = if unloaded.is_empty() {
        "nothing to copy: every table is in the lake".to_owned()
    } else {
        let (headline, reports) = copy_unloaded(
            config,
            &params,
            &client,
            no_slot,
            &mut replicated,
            &unloaded,
        )
        .await?;
        lines.extend(reports.into_iter().map(Line::Copied));
        headline
    };
    // The loaded tables' current-state mirrors, so they are there before `run` starts.
    if config.mirror.enabled && !unloaded.is_empty() {
        match crate::maintain::refresh_mirrors(config).await {
            Ok(reports) => {
                tracing::info!(tables = reports.len(), "wrote the current-state mirrors");
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not write the current-state mirrors; pg2lake run writes them");
            }
        }
    }
    print_summary(&headline, &lines, started.elapsed().as_secs_f64());
    Ok(())
}

/// The app id the copy records its progress under and, unless `--no-slot`, the
/// publications of the slot that will stream the tables afterwards (an existing slot
/// first passes `run`'s checks and must not be streaming now).
async fn plan_streaming(
    config: &Config,
    client: &Client,
    tables: &[TableName],
    no_slot: bool,
) -> Result<(String, Option<Streaming>), PipelineError> {
    let slot = &config.source.slot;
    if no_slot {
        return Ok((format!("{}:no-slot", lake::app_id(slot)), None));
    }
    let existing = catalog::slot_info(client, slot).await?;
    if let Some(info) = &existing {
        // The slot `run` will stream these tables from: the same checks as `run`'s.
        bootstrap::check_slot(config, client, info).await?;
        if let Some(pid) = info.active_pid {
            return Err(PipelineError::SlotUnusable {
                slot: slot.clone(),
                problem: format!("is being streamed (walsender pid {pid})"),
                fix: "pg2lake run loads new tables itself; stop it before a one-shot snapshot, or use --no-slot".into(),
            });
        }
    }
    // The slot that will stream these tables needs them in its publications.
    let streaming =
        bootstrap::prepare_publications(config, client, tables, existing.as_ref()).await?;
    Ok((lake::app_id(slot), Some(streaming)))
}

/// A summary line for each table the lake already holds, which the copy skips.
fn skipped_lines(replicated: &[ReplicatedTable]) -> Vec<Line> {
    let mut lines = Vec::new();
    for table in replicated {
        if let Some(lsn) = table.committed_lsn() {
            let name = table.schema().qualified_name();
            tracing::info!(table = %name, committed_lsn = %lsn, "table is already in the lake; skipping");
            lines.push(Line::Skipped {
                table: name,
                lsn: lsn.to_string(),
            });
        }
    }
    lines
}

/// Copies the `unloaded` tables in an exported snapshot: a new slot's when none exists
/// (and not `--no-slot`), else a temporary slot's. Returns the summary's headline and
/// the tables' reports.
async fn copy_unloaded(
    config: &Config,
    params: &ConnectParams,
    client: &Client,
    no_slot: bool,
    replicated: &mut Vec<ReplicatedTable>,
    unloaded: &[usize],
) -> Result<(String, Vec<TableReport>), PipelineError> {
    let slot = &config.source.slot;
    let existing = catalog::slot_info(client, slot).await?;
    // The exporting connection must stay open and idle until the copy is done.
    let (exporter, created, kept) = if no_slot || existing.is_some() {
        let (exporter, created) = snapshot::temporary_export(params).await?;
        (exporter, created, existing.is_some())
    } else {
        let mut replication = ReplicationClient::connect(params).await?;
        let created = replication
            .create_logical_slot(slot, SlotSnapshot::Export)
            .await?;
        tracing::info!(slot, consistent_point = %created.consistent_point, "created replication slot");
        (replication, created, true)
    };
    let point = SnapshotPoint::of_slot(&created);
    let reports =
        snapshot::copy_tables(params, &point, replicated, unloaded, &config.snapshot).await?;
    drop(exporter);
    let headline = if kept {
        format!(
            "snapshot at {}; slot {slot} kept for pg2lake run",
            point.lsn
        )
    } else {
        format!("snapshot at {}; no slot left behind", point.lsn)
    };
    Ok((headline, reports))
}

fn print_summary(headline: &str, lines: &[Line], seconds: f64) {
    println!("{headline}");
    println!(
        "{:<40} {:>12} {:>14} {:>9}",
        "table", "rows", "bytes", "seconds"
    );
    let (mut rows, mut bytes) = (0u64, 0u64);
    for line in lines {
        match line {
            Line::Copied(report) => {
                rows += report.rows;
                bytes += report.bytes;
                println!(
                    "{:<40} {:>12} {:>14} {:>9.2}",
                    report.table,
                    report.rows,
                    report.bytes,
                    report.elapsed.as_secs_f64()
                );
            }
            Line::Skipped { table, lsn } => {
                println!("{table:<40} skipped: already in the lake up to {lsn}");
            }
        }
    }
    println!("{:<40} {rows:>12} {bytes:>14} {seconds:>9.2}", "total");
}
