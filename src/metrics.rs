//! Prometheus metrics and the health state behind `/healthz` and `/readyz`.
//!
//! ```text
//!  pipeline (per batch / commit / status tick) ──► Metrics (one registry, created once)
//!                                                     │
//!  http::serve ── GET /metrics ──► Registry::gather ──┘   GET /healthz, /readyz ──► Health
//! ```
//!
//! Telemetry rules (Vector's spec): names are `pg2lake_<name>_<base unit>`, counters end
//! in `_total`, label values are few (a table, an op, an error kind), and values are
//! updated per flush, commit or tick, never per row. Every labelled series is created
//! with its zero value up front, so a scrape shows every metric from the first second
//! and `rate()` has a starting point. `METRIC_NAMES` lists them for the deploy checker
//! (scripts/check_deploy.py); tests/metrics.rs checks that it and the README's metrics
//! table both name exactly the families a running `pg2lake run` serves.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::lsn::Lsn;
use crate::pg::catalog::ServerPosition;

/// Every metric pg2lake exposes (without histogram suffixes), in documentation order.
pub const METRIC_NAMES: &[&str] = &[
    "pg2lake_replication_lag_bytes",
    "pg2lake_replication_lag_seconds",
    "pg2lake_received_lsn",
    "pg2lake_committed_lsn",
    "pg2lake_confirmed_lsn",
    "pg2lake_slot_retained_wal_bytes",
    "pg2lake_slot_active",
    "pg2lake_slot_wal_status",
    "pg2lake_slot_safe_wal_size_bytes",
    "pg2lake_changes_total",
    "pg2lake_rows_written_total",
    "pg2lake_parquet_files_total",
    "pg2lake_parquet_bytes_total",
    "pg2lake_delta_commits_total",
    "pg2lake_schema_changes_total",
    "pg2lake_flush_duration_seconds",
    "pg2lake_errors_total",
    "pg2lake_reconnects_total",
    "pg2lake_memory_buffered_bytes",
    "pg2lake_memory_budget_bytes",
    "pg2lake_streamed_transactions",
    "pg2lake_object_store_requests_total",
    "pg2lake_object_store_errors_total",
    "pg2lake_object_store_retries_total",
    "pg2lake_snapshot_rows",
    "pg2lake_snapshot_rows_estimated",
    "pg2lake_snapshot_tables_pending",
    "pg2lake_lake_files",
    "pg2lake_lake_bytes",
    "pg2lake_lake_small_files",
    "pg2lake_compaction_bytes_rewritten_total",
    "pg2lake_compaction_files_removed_total",
    "pg2lake_vacuum_files_deleted_total",
    "pg2lake_maintenance_last_success_timestamp_seconds",
    "pg2lake_maintenance_duration_seconds",
    "pg2lake_mirror_lag_seconds",
    "pg2lake_mirror_version",
    "pg2lake_mirror_bytes_rewritten_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_threads",
    "process_start_time_seconds",
];

/// The `table` label value used for every table when `metrics.per_table_labels` is off.
pub const ALL_TABLES: &str = "_all";

/// The values of `pg2lake_slot_wal_status{status}` (`pg_replication_slots.wal_status`).
pub const WAL_STATUSES: &[&str] = &["reserved", "extended", "unreserved", "lost"];

/// The values of `pg2lake_errors_total{kind}`.
pub const ERROR_KINDS: &[&str] = &["object_store", "postgres", "data"];

/// The values of `pg2lake_object_store_requests_total{op}`, `_errors_total{op}` and
/// `_retries_total{op}` (which also has `credentials`, for the S3 client's credential
/// fetches).
pub const OBJECT_STORE_OPS: &[&str] = &[
    "put",
    "get",
    "list",
    "delete",
    "copy",
    "multipart_start",
    "multipart_part",
    "multipart_complete",
    "multipart_abort",
];

/// The values of `pg2lake_changes_total{op}`, named after the lake's `_op` column.
pub const OPS: &[&str] = &["insert", "update", "delete", "truncate"];

/// The values of `pg2lake_schema_changes_total{kind}`: a column added, a column dropped,
/// a type change within the same lake type, a widening of the lake type, and a type
/// change sent to a new lake column (`schema.on_type_change: new_column`).
pub const SCHEMA_CHANGE_KINDS: &[&str] =
    &["add_column", "drop_column", "retype", "widen", "new_column"];

/// The values of `pg2lake_maintenance_last_success_timestamp_seconds{task}` and
/// `pg2lake_maintenance_duration_seconds{task}`.
pub const MAINTENANCE_TASKS: &[&str] = &["compaction", "vacuum"];

/// Upper bounds of the flush-duration histogram buckets, in seconds: a local folder
/// commits in milliseconds, S3 in hundreds of milliseconds, a struggling store in tens
/// of seconds.
const FLUSH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The metric handles and the health state of the process.
pub struct Metrics {
    registry: Registry,
    per_table_labels: AtomicBool,
    /// `pg2lake_replication_lag_bytes`.
    pub lag_bytes: IntGauge,
    /// `pg2lake_replication_lag_seconds`.
    pub lag_seconds: Gauge,
    /// `pg2lake_received_lsn`.
    pub received_lsn: IntGauge,
    /// `pg2lake_committed_lsn`.
    pub committed_lsn: IntGauge,
    /// `pg2lake_confirmed_lsn`.
    pub confirmed_lsn: IntGauge,
    /// `pg2lake_slot_retained_wal_bytes`.
    pub slot_retained_wal_bytes: IntGauge,
    /// `pg2lake_slot_active`.
    pub slot_active: IntGauge,
    /// `pg2lake_slot_wal_status{status}`.
    pub slot_wal_status: IntGaugeVec,
    /// `pg2lake_slot_safe_wal_size_bytes`.
    pub slot_safe_wal_size_bytes: IntGauge,
    /// `pg2lake_changes_total{table,op}`.
    pub changes: IntCounterVec,
    /// `pg2lake_rows_written_total{table}`.
    pub rows_written: IntCounterVec,
    /// `pg2lake_parquet_files_total{table}`.
    pub parquet_files: IntCounterVec,
    /// `pg2lake_parquet_bytes_total{table}`.
    pub parquet_bytes: IntCounterVec,
    /// `pg2lake_delta_commits_total{table}`.
    pub delta_commits: IntCounterVec,
    /// `pg2lake_schema_changes_total{table,kind}`.
    pub schema_changes: IntCounterVec,
    /// `pg2lake_flush_duration_seconds`.
    pub flush_duration: Histogram,
    /// `pg2lake_errors_total{kind}`.
    pub errors: IntCounterVec,
    /// `pg2lake_reconnects_total`.
    pub reconnects: IntCounter,
    /// `pg2lake_memory_buffered_bytes`.
    pub memory_buffered_bytes: IntGauge,
    /// `pg2lake_memory_budget_bytes`.
    pub memory_budget_bytes: IntGauge,
    /// `pg2lake_streamed_transactions`.
    pub streamed_transactions: IntGauge,
    /// Probe state.
    pub health: Health,
    /// Commit time (Unix µs) of the oldest source change received and not yet committed
    /// to the lake, kept across sessions: a session that fails leaves its changes to be
    /// replayed, and the lag goes on counting from them. `i64::MIN` when there is none.
    oldest_uncommitted_micros: AtomicI64,
    /// Object-store requests, by operation.
    pub object_store_requests: IntCounterVec,
    /// Object-store requests that failed after the store's own retries, by operation.
    pub object_store_errors: IntCounterVec,
    /// S3 HTTP attempts that failed in a way the S3 client retries, by operation.
    pub object_store_retries: IntCounterVec,
    /// Rows the initial load has copied, by table (for the copies of this process).
    pub snapshot_rows: IntGaugeVec,
    /// Rows the initial load expects to copy (planner estimate), by table.
    pub snapshot_rows_estimated: IntGaugeVec,
    /// Tables whose initial load has not been committed yet.
    pub snapshot_tables_pending: IntGauge,
    /// Data files of each table's current version.
    pub lake_files: IntGaugeVec,
    /// Their bytes.
    pub lake_bytes: IntGaugeVec,
    /// Those below three quarters of `lake.compaction.target_file_size`.
    pub lake_small_files: IntGaugeVec,
    /// Bytes of the small files compaction replaced.
    pub compaction_bytes_rewritten: IntCounterVec,
    /// Small files compaction replaced.
    pub compaction_files_removed: IntCounterVec,
    /// Files VACUUM deleted.
    pub vacuum_files_deleted: IntCounterVec,
    /// When the last maintenance pass finished a task for every table, by task.
    pub maintenance_last_success: IntGaugeVec,
    /// How long the last maintenance pass spent on a task, over all tables, by task.
    pub maintenance_duration: prometheus::GaugeVec,
    /// Age of the oldest change-log version a mirror had not reflected, at its last refresh.
    pub mirror_lag: prometheus::GaugeVec,
    /// The change-log version each mirror reflects.
    pub mirror_version: IntGaugeVec,
    /// Bytes of mirror files refreshes replaced.
    pub mirror_bytes_rewritten: IntCounterVec,
}

/// What `/healthz` and `/readyz` answer from.
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the last turn of a pipeline loop.
    last_tick_ms: AtomicU64,
    /// Whether the replication stream is running now.
    streaming: AtomicBool,
    /// Whether this instance waits for a slot another process streams (a standby).
    standby: AtomicBool,
}

impl Health {
    fn new() -> Health {
        Health {
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            standby: AtomicBool::new(false),
        }
    }

    /// Records that a pipeline loop turned (the stream loop, a slot wait, a backoff).
    pub fn tick(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_tick_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last loop turn (or since start).
    pub fn since_last_tick(&self) -> Duration {
        let last = Duration::from_millis(self.last_tick_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Records whether the replication stream runs.
    pub fn set_streaming(&self, streaming: bool) {
        self.streaming.store(streaming, Ordering::Relaxed);
    }

    /// Whether the replication stream runs.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }

    /// Records whether this instance waits as a standby for a slot another process holds.
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
    }

    /// Whether this instance waits as a standby.
    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }
}

/// The process-wide metrics, created on first use.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, metric)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, metric)
}

/// Registration fails only for a name or label that is invalid or used twice: a
/// programming error that the unit test below catches, hence the panic.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("registering a metric: {e}"));
    metric
}

/// The replication positions, the lag and the slot's state.
struct ReplicationMetrics {
    lag_bytes: IntGauge,
    lag_seconds: Gauge,
    received_lsn: IntGauge,
    committed_lsn: IntGauge,
    confirmed_lsn: IntGauge,
    slot_retained_wal_bytes: IntGauge,
    slot_active: IntGauge,
    slot_wal_status: IntGaugeVec,
    slot_safe_wal_size_bytes: IntGauge,
}

impl ReplicationMetrics {
    /// Registers the position, lag and slot metrics, every WAL status at 0.
    fn new(r: &Registry) -> ReplicationMetrics {
        let slot_wal_status = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "pg2lake_slot_wal_status",
                    "1 for the slot's current pg_replication_slots.wal_status",
                ),
                &["status"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        for status in WAL_STATUSES {
            slot_wal_status.with_label_values(&[status]).set(0);
        }
        ReplicationMetrics {
            lag_bytes: gauge(
                r,
                "pg2lake_replication_lag_bytes",
                "Server WAL position minus the position durable in the lake",
            ),
            lag_seconds: register(
                r,
                Gauge::new(
                    "pg2lake_replication_lag_seconds",
                    "Age of the oldest source change not yet committed to the lake (0 when caught up)",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            received_lsn: gauge(
                r,
                "pg2lake_received_lsn",
                "Highest WAL position received from the server",
            ),
            committed_lsn: gauge(
                r,
                "pg2lake_committed_lsn",
                "Commit LSN of the last source transaction committed to the lake",
            ),
            confirmed_lsn: gauge(
                r,
                "pg2lake_confirmed_lsn",
                "Position confirmed to the server (slot confirmed_flush_lsn)",
            ),
            slot_retained_wal_bytes: gauge(
                r,
                "pg2lake_slot_retained_wal_bytes",
                "WAL the slot holds back: server WAL position minus the slot's restart_lsn",
            ),
            slot_active: gauge(
                r,
                "pg2lake_slot_active",
                "1 when a walsender streams from the slot",
            ),
            slot_wal_status,
            slot_safe_wal_size_bytes: gauge(
                r,
                "pg2lake_slot_safe_wal_size_bytes",
                "WAL that can still be written before the slot is lost (-1 when unlimited)",
            ),
        }
    }
}

/// What the lake commits: changes, rows, files, versions, schema changes, flush time.
struct LakeWriteMetrics {
    changes: IntCounterVec,
    rows_written: IntCounterVec,
    parquet_files: IntCounterVec,
    parquet_bytes: IntCounterVec,
    delta_commits: IntCounterVec,
    schema_changes: IntCounterVec,
    flush_duration: Histogram,
}

impl LakeWriteMetrics {
    /// Registers the per-table commit counters and the flush-duration histogram.
    fn new(r: &Registry) -> LakeWriteMetrics {
        LakeWriteMetrics {
            changes: counter_vec(
                r,
                "pg2lake_changes_total",
                "Source changes committed to the lake",
                &["table", "op"],
            ),
            rows_written: counter_vec(
                r,
                "pg2lake_rows_written_total",
                "Rows committed to the lake",
                &["table"],
            ),
            parquet_files: counter_vec(
                r,
                "pg2lake_parquet_files_total",
                "Parquet files committed to the lake",
                &["table"],
            ),
            parquet_bytes: counter_vec(
                r,
                "pg2lake_parquet_bytes_total",
                "Bytes of Parquet files committed to the lake",
                &["table"],
            ),
            delta_commits: counter_vec(
                r,
                "pg2lake_delta_commits_total",
                "Delta versions committed",
                &["table"],
            ),
            schema_changes: counter_vec(
                r,
                "pg2lake_schema_changes_total",
                "Source schema changes followed in the lake, by kind",
                &["table", "kind"],
            ),
            flush_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pg2lake_flush_duration_seconds",
                        "Time to write and commit one flush to the lake",
                    )
                    .buckets(FLUSH_BUCKETS.to_vec()),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
        }
    }
}

/// The sessions' failures and restarts, and what the pipeline holds in memory.
struct PipelineMetrics {
    errors: IntCounterVec,
    reconnects: IntCounter,
    memory_buffered_bytes: IntGauge,
    memory_budget_bytes: IntGauge,
    streamed_transactions: IntGauge,
}

impl PipelineMetrics {
    /// Registers the error, reconnect and memory metrics, every error kind at 0.
    fn new(r: &Registry) -> PipelineMetrics {
        let errors = counter_vec(
            r,
            "pg2lake_errors_total",
            "Failed replication sessions and failed side queries, by cause",
            &["kind"],
        );
        for kind in ERROR_KINDS {
            errors.with_label_values(&[kind]).inc_by(0);
        }
        PipelineMetrics {
            errors,
            reconnects: register(
                r,
                IntCounter::new(
                    "pg2lake_reconnects_total",
                    "Replication sessions restarted after a transient failure",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            memory_buffered_bytes: gauge(
                r,
                "pg2lake_memory_buffered_bytes",
                "Change data buffered and not yet committed",
            ),
            memory_budget_bytes: gauge(
                r,
                "pg2lake_memory_budget_bytes",
                "The configured memory_budget",
            ),
            streamed_transactions: gauge(
                r,
                "pg2lake_streamed_transactions",
                "Source transactions being received before their commit, their rows spooled to the lake's store",
            ),
        }
    }
}

/// Requests to the lake's object store, their failures and their retries.
struct ObjectStoreMetrics {
    requests: IntCounterVec,
    errors: IntCounterVec,
    retries: IntCounterVec,
}

impl ObjectStoreMetrics {
    /// Registers the object-store counters, every operation at 0.
    fn new(r: &Registry) -> ObjectStoreMetrics {
        let requests = counter_vec(
            r,
            "pg2lake_object_store_requests_total",
            "Requests to the lake's object store, by operation",
            &["op"],
        );
        let errors = counter_vec(
            r,
            "pg2lake_object_store_errors_total",
            "Object-store requests that failed after the store's own retries, by operation",
            &["op"],
        );
        let retries = counter_vec(
            r,
            "pg2lake_object_store_retries_total",
            "S3 request attempts that failed in a way the S3 client retries with backoff \
             (5xx such as 503 Slow Down, 429, 408, connection and timeout errors), by operation",
            &["op"],
        );
        for op in OBJECT_STORE_OPS {
            requests.with_label_values(&[op]).inc_by(0);
            errors.with_label_values(&[op]).inc_by(0);
            retries.with_label_values(&[op]).inc_by(0);
        }
        ObjectStoreMetrics {
            requests,
            errors,
            retries,
        }
    }
}

/// The initial load's progress.
struct SnapshotMetrics {
    rows: IntGaugeVec,
    rows_estimated: IntGaugeVec,
    tables_pending: IntGauge,
}

impl SnapshotMetrics {
    /// Registers the initial load's row and table gauges.
    fn new(r: &Registry) -> SnapshotMetrics {
        SnapshotMetrics {
            rows: gauge_vec(
                r,
                "pg2lake_snapshot_rows",
                "Rows the initial load has copied so far",
                &["table"],
            ),
            rows_estimated: gauge_vec(
                r,
                "pg2lake_snapshot_rows_estimated",
                "Rows the initial load expects to copy (pg_class.reltuples)",
                &["table"],
            ),
            tables_pending: gauge(
                r,
                "pg2lake_snapshot_tables_pending",
                "Tables whose initial load is not committed yet",
            ),
        }
    }
}

/// The tables' files as maintenance finds them, and what compaction and VACUUM do.
struct MaintenanceMetrics {
    lake_files: IntGaugeVec,
    lake_bytes: IntGaugeVec,
    lake_small_files: IntGaugeVec,
    compaction_bytes_rewritten: IntCounterVec,
    compaction_files_removed: IntCounterVec,
    vacuum_files_deleted: IntCounterVec,
    last_success: IntGaugeVec,
    duration: prometheus::GaugeVec,
}

impl MaintenanceMetrics {
    /// Registers the file, compaction and VACUUM metrics, every maintenance task at 0.
    fn new(r: &Registry) -> MaintenanceMetrics {
        let last_success = gauge_vec(
            r,
            "pg2lake_maintenance_last_success_timestamp_seconds",
            "When a maintenance pass last finished the task for every table (Unix seconds)",
            &["task"],
        );
        let duration = register(
            r,
            prometheus::GaugeVec::new(
                Opts::new(
                    "pg2lake_maintenance_duration_seconds",
                    "Time the last maintenance pass spent on the task, over all tables",
                ),
                &["task"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        for task in MAINTENANCE_TASKS {
            last_success.with_label_values(&[task]).set(0);
            duration.with_label_values(&[task]).set(0.0);
        }
        MaintenanceMetrics {
            lake_files: gauge_vec(
                r,
                "pg2lake_lake_files",
                "Data files of the table's current Delta version (as of the last maintenance pass)",
                &["table"],
            ),
            lake_bytes: gauge_vec(
                r,
                "pg2lake_lake_bytes",
                "Bytes of the data files of the table's current Delta version",
                &["table"],
            ),
            lake_small_files: gauge_vec(
                r,
                "pg2lake_lake_small_files",
                "Data files below three quarters of lake.compaction.target_file_size in the table's current version",
                &["table"],
            ),
            compaction_bytes_rewritten: counter_vec(
                r,
                "pg2lake_compaction_bytes_rewritten_total",
                "Bytes of small files compaction rewrote into larger ones",
                &["table"],
            ),
            compaction_files_removed: counter_vec(
                r,
                "pg2lake_compaction_files_removed_total",
                "Small files compaction replaced",
                &["table"],
            ),
            vacuum_files_deleted: counter_vec(
                r,
                "pg2lake_vacuum_files_deleted_total",
                "Data files VACUUM deleted (replaced longer ago than lake.retention, or never committed)",
                &["table"],
            ),
            last_success,
            duration,
        }
    }
}

/// The mirrors' lag, version and rewrites.
struct MirrorMetrics {
    lag: prometheus::GaugeVec,
    version: IntGaugeVec,
    bytes_rewritten: IntCounterVec,
}

impl MirrorMetrics {
    /// Registers the per-table mirror metrics.
    fn new(r: &Registry) -> MirrorMetrics {
        MirrorMetrics {
            lag: register(
                r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "pg2lake_mirror_lag_seconds",
                        "Age of the oldest change-log commit the table's mirror had not reflected, at its last refresh (0: it was current)",
                    ),
                    &["table"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            version: gauge_vec(
                r,
                "pg2lake_mirror_version",
                "The change-log version the table's mirror reflects",
                &["table"],
            ),
            bytes_rewritten: counter_vec(
                r,
                "pg2lake_mirror_bytes_rewritten_total",
                "Bytes of mirror files refreshes replaced",
                &["table"],
            ),
        }
    }
}

/// Registers the `process_*` metrics where the crate can read them (Linux); a failure
/// only loses those.
fn register_process(r: &Registry) {
    #[cfg(target_os = "linux")]
    {
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(err) = r.register(Box::new(process)) {
            tracing::warn!(error = %err, "process metrics unavailable");
        }
    }
}

impl Metrics {
    /// Registers every metric in one new registry and assembles the handles.
    fn new() -> Metrics {
        let r = Registry::new();
        let replication = ReplicationMetrics::new(&r);
        let lake = LakeWriteMetrics::new(&r);
        let pipeline = PipelineMetrics::new(&r);
        let object_store = ObjectStoreMetrics::new(&r);
        let snapshot = SnapshotMetrics::new(&r);
        let maintenance = MaintenanceMetrics::new(&r);
        let mirror = MirrorMetrics::new(&r);
        register_process(&r);
        Metrics {
            lag_bytes: replication.lag_bytes,
            lag_seconds: replication.lag_seconds,
            oldest_uncommitted_micros: AtomicI64::new(i64::MIN),
            received_lsn: replication.received_lsn,
            committed_lsn: replication.committed_lsn,
            confirmed_lsn: replication.confirmed_lsn,
            slot_retained_wal_bytes: replication.slot_retained_wal_bytes,
            slot_active: replication.slot_active,
            slot_wal_status: replication.slot_wal_status,
            slot_safe_wal_size_bytes: replication.slot_safe_wal_size_bytes,
            changes: lake.changes,
            rows_written: lake.rows_written,
            parquet_files: lake.parquet_files,
            parquet_bytes: lake.parquet_bytes,
            delta_commits: lake.delta_commits,
            schema_changes: lake.schema_changes,
            flush_duration: lake.flush_duration,
            errors: pipeline.errors,
            reconnects: pipeline.reconnects,
            memory_buffered_bytes: pipeline.memory_buffered_bytes,
            memory_budget_bytes: pipeline.memory_budget_bytes,
            streamed_transactions: pipeline.streamed_transactions,
            per_table_labels: AtomicBool::new(true),
            health: Health::new(),
            object_store_requests: object_store.requests,
            object_store_errors: object_store.errors,
            object_store_retries: object_store.retries,
            snapshot_rows: snapshot.rows,
            snapshot_rows_estimated: snapshot.rows_estimated,
            snapshot_tables_pending: snapshot.tables_pending,
            lake_files: maintenance.lake_files,
            lake_bytes: maintenance.lake_bytes,
            lake_small_files: maintenance.lake_small_files,
            compaction_bytes_rewritten: maintenance.compaction_bytes_rewritten,
            compaction_files_removed: maintenance.compaction_files_removed,
            vacuum_files_deleted: maintenance.vacuum_files_deleted,
            maintenance_last_success: maintenance.last_success,
            maintenance_duration: maintenance.duration,
            mirror_lag: mirror.lag,
            mirror_version: mirror.version,
            mirror_bytes_rewritten: mirror.bytes_rewritten,
            registry: r,
        }
    }

    /// Applies the `metrics` settings that shape label values, and the budget.
    pub fn configure(&self, per_table_labels: bool, memory_budget: u64) {
        self.per_table_labels
            .store(per_table_labels, Ordering::Relaxed);
        self.memory_budget_bytes.set(saturating_i64(memory_budget));
    }

    /// The `table` label value for `table` (`_all` when per-table labels are off).
    pub fn table_label<'a>(&self, table: &'a str) -> &'a str {
        if self.per_table_labels.load(Ordering::Relaxed) {
            table
        } else {
            ALL_TABLES
        }
    }

    /// Creates the zero-valued series of a replicated table, so it shows before data.
    pub fn register_table(&self, table: &str) {
        let table = self.table_label(table);
        for op in OPS {
            self.changes.with_label_values(&[table, op]).inc_by(0);
        }
        for vec in [&self.snapshot_rows, &self.snapshot_rows_estimated] {
            vec.with_label_values(&[table]).add(0);
        }
        for kind in SCHEMA_CHANGE_KINDS {
            self.schema_changes
                .with_label_values(&[table, kind])
                .inc_by(0);
        }
        for vec in [
            &self.rows_written,
            &self.parquet_files,
            &self.parquet_bytes,
            &self.delta_commits,
            &self.compaction_bytes_rewritten,
            &self.compaction_files_removed,
            &self.vacuum_files_deleted,
        ] {
            vec.with_label_values(&[table]).inc_by(0);
        }
        for vec in [
            &self.lake_files,
            &self.lake_bytes,
            &self.lake_small_files,
            &self.mirror_version,
        ] {
            vec.with_label_values(&[table]).add(0);
        }
        self.mirror_bytes_rewritten
            .with_label_values(&[table])
            .inc_by(0);
        self.mirror_lag.with_label_values(&[table]).add(0.0);
    }

    /// Records one table's share of a lake commit.
    pub fn record_commit(&self, table: &str, commit: &TableCommit) {
        let table = self.table_label(table);
        for (op, count) in OPS.iter().zip(commit.changes) {
            if count > 0 {
                self.changes.with_label_values(&[table, op]).inc_by(count);
            }
        }
        self.rows_written
            .with_label_values(&[table])
            .inc_by(commit.rows);
        self.parquet_files
            .with_label_values(&[table])
            .inc_by(commit.files);
        self.parquet_bytes
            .with_label_values(&[table])
            .inc_by(commit.bytes);
        self.delta_commits.with_label_values(&[table]).inc();
    }

    /// Records the replication positions of the session.
    pub fn set_positions(&self, received: Lsn, confirmed: Lsn) {
        self.received_lsn.set(received.as_i64());
        self.confirmed_lsn.set(confirmed.as_i64());
    }

    /// Records the server's side: its WAL position and the slot's state.
    pub fn set_server(&self, server: &ServerPosition) {
        let confirmed = u64::try_from(self.confirmed_lsn.get()).unwrap_or(0);
        self.lag_bytes
            .set(saturating_i64(server.current.0.saturating_sub(confirmed)));
        let Some(slot) = &server.slot else {
            self.slot_active.set(0);
            return;
        };
        self.slot_active.set(i64::from(slot.active));
        self.slot_retained_wal_bytes.set(saturating_i64(
            slot.restart_lsn
                .map_or(0, |r| server.current.0.saturating_sub(r.0)),
        ));
        for status in WAL_STATUSES {
            let current = slot.wal_status.as_deref() == Some(*status);
            self.slot_wal_status
                .with_label_values(&[status])
                .set(i64::from(current));
        }
        self.slot_safe_wal_size_bytes
            .set(slot.safe_wal_size.unwrap_or(-1));
    }

    /// Notes the commit time (Unix µs) of the oldest source change the session holds
    /// uncommitted, if any, and updates the lag. A change noted earlier and not
    /// committed since (its session failed) stays the oldest until [`Self::caught_up`].
    pub fn set_lag_from(&self, oldest_pending_commit_micros: Option<i64>) {
        if let Some(micros) = oldest_pending_commit_micros {
            // Only the first: a replay delivers the lost changes again, oldest first.
            let _ = self.oldest_uncommitted_micros.compare_exchange(
                i64::MIN,
                micros,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.refresh_lag();
    }

    /// Notes that everything received is committed to the lake (a successful flush, or
    /// an idle stream with nothing pending): the lag is 0.
    pub fn caught_up(&self) {
        self.oldest_uncommitted_micros
            .store(i64::MIN, Ordering::Relaxed);
        self.lag_seconds.set(0.0);
    }

    /// Recomputes `pg2lake_replication_lag_seconds` for now: it grows while nothing
    /// commits (an object store that is down), also between sessions.
    pub fn refresh_lag(&self) {
        let oldest = self.oldest_uncommitted_micros.load(Ordering::Relaxed);
        let lag = if oldest == i64::MIN {
            0.0
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            (now.saturating_sub(oldest)).max(0) as f64 / 1e6
        };
        self.lag_seconds.set(lag);
    }

    /// Counts `count` schema changes of one kind (see [`SCHEMA_CHANGE_KINDS`]).
    pub fn record_schema_changes(&self, table: &str, kind: &str, count: usize) {
        if count > 0 {
            self.schema_changes
                .with_label_values(&[self.table_label(table), kind])
                .inc_by(count as u64);
        }
    }

    /// Counts a failed session or side query.
    pub fn record_error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.refresh_lag();
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %err, "cannot encode metrics");
        }
        out
    }
}

/// One table's share of a lake commit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableCommit {
    /// Changes per op, in `OPS` order.
    pub changes: [u64; 4],
    /// Rows committed.
    pub rows: u64,
    /// Parquet files committed.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

/// `v` as a counter increment.
pub fn saturating_u64(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// `v` as a gauge value.
pub fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::catalog::SlotHealth;

    #[test]
    fn every_documented_metric_is_exposed() {
        let m = global();
        m.register_table("public.t");
        let text = String::from_utf8(m.render()).unwrap();
        for name in METRIC_NAMES {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("# TYPE {name} "))),
                "{name} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn schema_changes_start_at_zero_and_count_by_kind() {
        let m = Metrics::new();
        m.register_table("public.s");
        for kind in SCHEMA_CHANGE_KINDS {
            assert_eq!(
                m.schema_changes
                    .with_label_values(&["public.s", kind])
                    .get(),
                0
            );
        }
        m.record_schema_changes("public.s", "widen", 2);
        m.record_schema_changes("public.s", "new_column", 0);
        assert_eq!(
            m.schema_changes
                .with_label_values(&["public.s", "widen"])
                .get(),
            2
        );
        assert_eq!(
            m.schema_changes
                .with_label_values(&["public.s", "new_column"])
                .get(),
            0
        );
    }

    #[test]
    fn wal_status_marks_only_the_current_one() {
        let m = Metrics::new();
        m.set_positions(Lsn(100), Lsn(90));
        m.set_server(&ServerPosition {
            current: Lsn(1000),
            slot: Some(SlotHealth {
                active: true,
                restart_lsn: Some(Lsn(400)),
                wal_status: Some("extended".into()),
                safe_wal_size: None,
            }),
        });
        assert_eq!(m.lag_bytes.get(), 910);
        assert_eq!(m.slot_retained_wal_bytes.get(), 600);
        assert_eq!(m.slot_safe_wal_size_bytes.get(), -1);
        let set: Vec<i64> = WAL_STATUSES
            .iter()
            .map(|s| m.slot_wal_status.with_label_values(&[s]).get())
            .collect();
        assert_eq!(set, [0, 1, 0, 0]);
    }

    #[test]
    fn table_label_collapses_when_off() {
        let m = Metrics::new();
        m.configure(false, 1);
        assert_eq!(m.table_label("public.orders"), ALL_TABLES);
        m.configure(true, 1);
        assert_eq!(m.table_label("public.orders"), "public.orders");
    }

    #[test]
    fn lag_is_zero_when_nothing_is_pending() {
        let m = Metrics::new();
        m.set_lag_from(None);
        assert_eq!(m.lag_seconds.get(), 0.0);
        let ten_s_ago = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
            - 10_000_000;
        m.set_lag_from(Some(ten_s_ago));
        assert!((9.5..20.0).contains(&m.lag_seconds.get()));
    }
}
