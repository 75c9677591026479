//! Lake maintenance: compaction and VACUUM of every table of the lake, on a schedule
//! inside `pg2lake run`, and once as `pg2lake maintain` (a Kubernetes CronJob); and the
//! refresh of each table's current-state mirror, on its own schedule in `run`.
//!
//! ```text
//!  every lake.compaction.interval (run) or once (maintain):
//!    for each <lake>/<schema>/<table>/ with a _delta_log:
//!      take the table's maintenance lease ─ busy ─► skip (another compactor is on it)
//!      compact small files (lake::compact) ─► VACUUM files removed > lake.retention ago
//!      release the lease; file counts ─► metrics
//! ```
//!
//! In `run` it works on a thread and runtime of its own: Parquet decoding and encoding
//! are CPU work that must not take a worker thread from the replication loop. It talks to
//! the lake only, never to Postgres, and commits beside the streaming writer like any
//! other Delta writer (see `lake::table::commit`).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bootstrap::lake_options;
use crate::config::Config;
use crate::lake::{
    self, Acquired, CompactionOptions, CompactionReport, FileStats, Lake, LakeError, Lease,
    MirrorOptions, MirrorReport, VacuumReport,
};
use crate::metrics;

/// What a maintenance pass does.
#[derive(Debug, Clone, Default)]
pub struct MaintainOptions {
    /// Only these tables (`schema.name`); every table of the lake when empty.
    pub tables: Vec<String>,
    /// Only report what would be rewritten and deleted.
    pub dry_run: bool,
    /// Stops the pass between steps (`run` shutting down): the table being maintained
    /// gives its lease back at once instead of leaving it to expire.
    pub shutdown: CancellationToken,
}

/// What a pass did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    /// `schema.name`.
    pub table: String,
    /// Another compactor held the table's lease: nothing was done.
    pub busy: Option<String>,
    /// The compaction.
    pub compaction: CompactionReport,
    /// The VACUUM.
    pub vacuum: VacuumReport,
    /// The VACUUM of the table's mirror (the files refreshes replaced).
    pub mirror_vacuum: VacuumReport,
    /// The table's files after the pass.
    pub files: FileStats,
    /// Seconds the compaction took.
    pub compaction_seconds: f64,
    /// Seconds the VACUUM took.
    pub vacuum_seconds: f64,
    /// Why the pass failed for this table.
    pub error: Option<String>,
}

/// What a pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Whether it only planned.
    pub dry_run: bool,
    /// One entry per table.
    pub tables: Vec<TableReport>,
}

impl Report {
    /// Whether every table was maintained (or skipped because another compactor was on it).
    pub fn succeeded(&self) -> bool {
        self.tables.iter().all(|table| table.error.is_none())
    }
}

/// Compacts and vacuums the lake's tables once. A table that fails is reported and the
/// others go on; only not reaching the lake at all is an error.
pub async fn maintain(
    config: &Config,
    options: &MaintainOptions,
    holder: &str,
) -> Result<Report, LakeError> {
    let lake = Lake::open(lake_options(config))?;
    let tables = lake.tables_among(&options.tables).await?;
    let mut report = Report {
        dry_run: options.dry_run,
        tables: Vec::new(),
    };
    for (schema, name) in tables {
        if options.shutdown.is_cancelled() {
            break;
        }
        let table = format!("{schema}.{name}");
        let result = maintain_table(&lake, config, &schema, &name, options, holder).await;
        let table_report = match result {
            Ok(table_report) => table_report,
            Err(err) => {
                tracing::warn!(table, error = %err, "maintenance of a table failed");
                TableReport {
                    table: table.clone(),
                    error: Some(err.to_string()),
                    ..TableReport::default()
                }
            }
        };
        report.tables.push(table_report);
    }
    if !options.dry_run {
        record_maintenance(&report);
    }
    Ok(report)
}

/// One table's pass, under its lease.
async fn maintain_table(
    lake: &Lake,
    config: &Config,
    schema: &str,
    name: &str,
    options: &MaintainOptions,
    holder: &str,
) -> Result<TableReport, LakeError> {
    let dry_run = options.dry_run;
    let location = lake::table_location(lake.root(), schema, name);
    let mut report = TableReport {
        table: format!("{schema}.{name}"),
        ..TableReport::default()
    };
    let store_err = |source| LakeError::Store {
        url: location.to_string(),
        source,
    };
    // A dry run writes nothing, not even a lease.
    let mut lease = if dry_run {
        None
    } else {
        let store = lake.log_store(&location)?.object_store(None);
        match Lease::acquire(store, holder, config.lake.compaction.lease)
            .await
            .map_err(store_err)?
        {
            Acquired::Held(lease) => Some(lease),
            Acquired::Busy { holder } => {
                tracing::info!(
                    table = report.table,
                    holder,
                    "another compactor holds the table; skipped"
                );
                report.busy = Some(holder);
                return Ok(report);
            }
        }
    };
    let work = async {
        let compaction = CompactionOptions {
            target_file_size: config.lake.compaction.target_file_size.0,
            min_files: config.lake.compaction.min_files,
            today: today(),
            dry_run,
        };
        // One load of the log serves the compaction, the VACUUM and the file counts.
        let mut table = lake.load_table(&location).await?;
        let started = Instant::now();
        report.compaction =
            lake::compact(lake, &location, &mut table, &compaction, lease.as_mut()).await?;
        report.compaction_seconds = started.elapsed().as_secs_f64();
        if let Some(lease) = lease.as_mut()
            && !lease.renew().await.map_err(store_err)?
        {
            return Err(LakeError::Conflict {
                table: location.to_string(),
                reason: "the maintenance lease expired and another compactor took it".into(),
            });
        }
        let started = Instant::now();
        report.vacuum = lake::vacuum(&location, &table, config.lake.retention, dry_run).await?;
        let mirror = lake::mirror_location(lake.root(), schema, name);
        if lake.table_exists(&mirror).await? {
            let loaded = lake.load_table(&mirror).await?;
            report.mirror_vacuum =
                lake::vacuum(&mirror, &loaded, config.lake.retention, dry_run).await?;
        }
        report.vacuum_seconds = started.elapsed().as_secs_f64();
        report.files =
            lake::file_stats(&location, &table, config.lake.compaction.target_file_size.0)?;
        Ok(())
    };
    // Cut short by shutdown, the work is dropped between two awaits: rewritten files not
    // committed are left to VACUUM, and the lease is given back below.
    let result = tokio::select! {
        biased;
        () = options.shutdown.cancelled() => Err(LakeError::Conflict {
            table: location.to_string(),
            reason: "pg2lake is stopping".into(),
        }),
        result = work => result,
    };
    if let Some(lease) = lease {
        lease.release().await;
    }
    result.map(|()| report)
}

/// Runs, until `shutdown`, [`maintain`] every `lake.compaction.interval` (when
/// `lake.compaction.enabled`) and [`refresh_mirrors`] every `mirror.interval` (when
/// `mirror.enabled`), on a thread and runtime of their own (see the module docs). The
/// thread ends soon after `shutdown`, having given back any lease it held; the caller
/// may wait for it.
pub fn spawn(
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Option<std::thread::JoinHandle<()>> {
    if !config.lake.compaction.enabled && !config.mirror.enabled {
        return None;
    }
    let spawned = std::thread::Builder::new()
        .name("pg2lake-maintain".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async {
                    tokio::join!(
                        maintenance_schedule(&config, &shutdown),
                        mirror_schedule(&config, &shutdown)
                    );
                }),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start lake maintenance");
                }
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(err) => {
            tracing::warn!(error = %err, "cannot start lake maintenance");
            None
        }
    }
}

async fn maintenance_schedule(config: &Config, shutdown: &CancellationToken) {
    if !config.lake.compaction.enabled {
        return;
    }
    let holder = holder_name();
    let options = MaintainOptions {
        shutdown: shutdown.clone(),
        ..MaintainOptions::default()
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.lake.compaction.interval) => {}
        }
        // A pass cut short by shutdown gives its lease back and leaves any rewritten
        // file that was not committed to VACUUM.
        let result = maintain(config, &options, &holder).await;
        if shutdown.is_cancelled() {
            return;
        }
        match result {
            Ok(report) => {
                let rewritten: u64 = report
                    .tables
                    .iter()
                    .map(|t| t.compaction.bytes_removed)
                    .sum();
                let deleted: usize = report.tables.iter().map(|t| t.vacuum.files.len()).sum();
                tracing::info!(
                    tables = report.tables.len(),
                    bytes_rewritten = rewritten,
                    files_vacuumed = deleted,
                    "lake maintenance pass done"
                );
            }
            Err(err) => {
                metrics::global().record_error("object_store");
                tracing::warn!(error = %err, "lake maintenance pass failed; trying again next interval");
            }
        }
    }
}

async fn mirror_schedule(config: &Config, shutdown: &CancellationToken) {
    if !config.mirror.enabled {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.mirror.interval) => {}
        }
        let result = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            result = refresh_mirrors(config) => result,
        };
        if let Err(err) = result {
            metrics::global().record_error("object_store");
            tracing::warn!(error = %err, "refreshing the mirrors failed; trying again next interval");
        }
    }
}

/// Refreshes the mirror of every table of the lake once (see `lake::refresh_mirror`).
/// A table whose refresh fails is logged and counted, and the others go on.
pub async fn refresh_mirrors(config: &Config) -> Result<Vec<MirrorReport>, LakeError> {
    let lake = Lake::open(lake_options(config))?;
    let options = MirrorOptions {
        target_file_rows: config.mirror.target_file_rows,
        app_id: lake::app_id(&config.source.slot),
        step_rows: config.mirror.step_rows,
        // A refresh holds a step's changes, one mirror file and the file it writes from
        // them (about twice both): within the memory budget, beside the streaming.
        step_bytes: config.memory_budget.0 / 8,
        file_bytes: config.memory_budget.0 / 16,
    };
    let mut reports = Vec::new();
    for (schema, name) in lake.tables().await? {
        match lake::refresh_mirror(&lake, &schema, &name, &options).await {
            Ok(report) => {
                record_mirror(&report);
                reports.push(report);
            }
            Err(err) => {
                metrics::global().record_error("object_store");
                tracing::warn!(table = %format!("{schema}.{name}"), error = %err, "refreshing a mirror failed");
            }
        }
    }
    Ok(reports)
}

/// A name for this process in lease objects: the host (the pod's name in Kubernetes)
/// and a random suffix.
pub fn holder_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "pg2lake".to_owned());
    format!("{host}/{}", uuid::Uuid::new_v4().as_simple())
}

/// Today (UTC) as days since 1970-01-01: partitions before it are closed.
fn today() -> i32 {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    i32::try_from((chrono::Utc::now().date_naive() - epoch).num_days()).unwrap_or(i32::MAX)
}

/// Records a mirror refresh.
fn record_mirror(report: &MirrorReport) {
    let m = metrics::global();
    if report.skipped.is_some() {
        return;
    }
    let label = m.table_label(&report.table);
    m.mirror_lag
        .with_label_values(&[label])
        .set(report.lag_seconds);
    m.mirror_version
        .with_label_values(&[label])
        .set(report.to_version);
    m.mirror_bytes_rewritten
        .with_label_values(&[label])
        .inc_by(report.bytes_rewritten);
}

/// Records a maintenance pass: what it rewrote and deleted, each table's files (their
/// sums under `_all` when per-table labels are off), and when each task last
/// succeeded for every table.
fn record_maintenance(report: &Report) {
    let m = metrics::global();
    let mut files: std::collections::BTreeMap<&str, [u64; 3]> = Default::default();
    for table in &report.tables {
        let label = m.table_label(&table.table);
        m.compaction_bytes_rewritten
            .with_label_values(&[label])
            .inc_by(table.compaction.bytes_removed);
        m.compaction_files_removed
            .with_label_values(&[label])
            .inc_by(metrics::saturating_u64(table.compaction.files_removed));
        m.vacuum_files_deleted
            .with_label_values(&[label])
            .inc_by(metrics::saturating_u64(table.vacuum.files.len()));
        if table.error.is_none() && table.busy.is_none() {
            let sums = files.entry(label).or_default();
            sums[0] += table.files.files;
            sums[1] += table.files.bytes;
            sums[2] += table.files.small_files;
        }
    }
    for (label, [count, bytes, small]) in files {
        m.lake_files
            .with_label_values(&[label])
            .set(metrics::saturating_i64(count));
        m.lake_bytes
            .with_label_values(&[label])
            .set(metrics::saturating_i64(bytes));
        m.lake_small_files
            .with_label_values(&[label])
            .set(metrics::saturating_i64(small));
    }
    let seconds = |task: fn(&TableReport) -> f64| report.tables.iter().map(task).sum::<f64>();
    m.maintenance_duration
        .with_label_values(&["compaction"])
        .set(seconds(|t| t.compaction_seconds));
    m.maintenance_duration
        .with_label_values(&["vacuum"])
        .set(seconds(|t| t.vacuum_seconds));
    if report.succeeded() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for task in metrics::MAINTENANCE_TASKS {
            m.maintenance_last_success
                .with_label_values(&[task])
                .set(metrics::saturating_i64(now));
        }
    }
}
