//! The short-lived commands: `check` (preflight), `status` (slot lag, lake position),
//! `verify` and `maintain`, and the error type `main` maps to exit codes.

pub mod snapshot;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use crate::bootstrap;
use crate::config::{Config, TableName};
use crate::error::PipelineError;
use crate::lake::{self, Lake, LakeReader};
use crate::pg::catalog;
use crate::pg::connect;
use crate::pg::publication;
use crate::privacy::{self, Policy};
use crate::schema::{TableSchema, TypeCatalog};
use crate::verify::{Outcome, Report, VerifyError, VerifyOptions};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Replication or one of its steps failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// `run` did not finish within `shutdown_timeout` after a stop signal.
    #[error(
        "pg2lake did not stop within shutdown_timeout ({0:?}) (fix: raise shutdown_timeout, or look for a slow object store)"
    )]
    ShutdownTimeout(Duration),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// `check` found problems.
    #[error("{0} preflight check(s) failed; see the list above")]
    CheckFailed(usize),
    /// `verify` found tables whose lake differs from the source.
    #[error("{0} table(s) differ from the source; see the report above")]
    Different(usize),
    /// `verify` could not finish.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// `maintain` could not reach the lake.
    #[error(transparent)]
    Lake(#[from] lake::LakeError),
    /// `maintain` failed for some tables.
    #[error("maintenance failed for {0} table(s); see the report above")]
    MaintenanceFailed(usize),
    /// `forget` could not start.
    #[error(transparent)]
    Forget(#[from] crate::forget::ForgetError),
    /// `forget` failed for some tables.
    #[error("forget failed for {0} table(s); see the report above")]
    ForgetFailed(usize),
}

impl CommandError {
    /// What the failure asks for, when it is one of the pipeline's.
    pub fn class(&self) -> Option<crate::error::ErrorClass> {
        match self {
            CommandError::Pipeline(err) => Some(err.class()),
            _ => None,
        }
    }

    /// The process exit code: 1 for everything at run time (bad usage and configuration
    /// are found, with exit code 2, before a command runs), except that `verify` exits
    /// with 3 when it could not finish, so 1 always means "differs" there.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Verify(_) => 3,
            _ => 1,
        }
    }
}

/// How a `check` line is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// ✓
    Ok,
    /// `!`: not a failure, but something the operator should know and may want to fix;
    /// shown with its fix.
    Warn,
    /// ✗, shown with its fix; `check` fails.
    Fail,
}

impl Mark {
    fn ok_if(ok: bool) -> Mark {
        if ok { Mark::Ok } else { Mark::Fail }
    }
}

/// One line of `check` output.
struct CheckLine {
    mark: Mark,
    what: String,
    fix: Option<String>,
}

/// `pg2lake check`: connects, checks the settings replication depends on and the lake,
/// prints ✓/✗ per item with the fix for each ✗. Writes nothing but a probe object in
/// the lake (deleted again).
pub async fn check(config: &Config) -> Result<(), CommandError> {
    let mut lines = Vec::new();
    let result = run_checks(config, &mut lines).await;
    for line in &lines {
        let mark = match line.mark {
            Mark::Fail => "✗",
            Mark::Warn => "!",
            Mark::Ok => "✓",
        };
        match &line.fix {
            Some(fix) if line.mark != Mark::Ok => println!("{mark} {}\n    fix: {fix}", line.what),
            _ => println!("{mark} {}", line.what),
        }
    }
    if let Err(err) = result {
        println!("✗ {err}");
        return Err(CommandError::CheckFailed(
            lines.iter().filter(|l| l.mark == Mark::Fail).count() + 1,
        ));
    }
    let failed = lines.iter().filter(|l| l.mark == Mark::Fail).count();
    if failed > 0 {
        return Err(CommandError::CheckFailed(failed));
    }
    Ok(())
}

/// Connects and appends the lines of every check, in the order `check` prints them.
async fn run_checks(config: &Config, lines: &mut Vec<CheckLine>) -> Result<(), PipelineError> {
    let params = connect::params(config)?;
    let client = connect::sql(&params).await?;
    lines.push(CheckLine {
        mark: Mark::Ok,
        what: format!("connected to postgres at {}", params.target()),
        fix: None,
    });
    server_lines(config, &client, lines).await?;
    let tables = catalog::resolve_tables(&client, &config.table_patterns()).await?;
    let keyless = publication::keyless_tables(&client, &tables).await?;
    replica_identity_lines(config, &client, &tables, &keyless, lines).await?;
    column_type_lines(config, &client, &tables, lines).await?;
    select_lines(&client, &tables, lines).await?;
    publication_lines(config, &client, &tables, &keyless, lines).await?;
    lake_lines(config, &tables, lines).await
}

/// The server's version, `wal_level` and role, its replication headroom, and whether
/// the slot was invalidated.
async fn server_lines(
    config: &Config,
    client: &tokio_postgres::Client,
    lines: &mut Vec<CheckLine>,
) -> Result<(), PipelineError> {
    match catalog::check_server(client).await {
        Ok(settings) => lines.push(CheckLine {
            mark: Mark::Ok,
            what: format!(
                "postgres {}, wal_level logical, role {} may replicate",
                settings.version, settings.role
            ),
            fix: None,
        }),
        Err(err) => lines.push(CheckLine {
            mark: Mark::Fail,
            what: err.to_string(),
            fix: None,
        }),
    }
    capacity_lines(
        &catalog::replication_capacity(client, &config.source.slot).await?,
        &config.source.slot,
        lines,
    );
    if catalog::slot_info(client, &config.source.slot)
        .await?
        .is_some_and(|slot| slot.is_lost())
    {
        lines.push(CheckLine {
            mark: Mark::Fail,
            what: format!(
                "replication slot {} was invalidated (wal_status lost): the changes since its last position are gone from the WAL",
                config.source.slot
            ),
            fix: Some(
                "start pg2lake run once with source.on_slot_loss: resnapshot (PG2LAKE__SOURCE__ON_SLOT_LOSS=resnapshot) to create the slot again and reload the tables".into(),
            ),
        });
    }
    Ok(())
}

/// Per table: its replica identity, or a warning that only its inserts and truncates
/// are captured (through the insert-only publication) when it has none.
async fn replica_identity_lines(
    config: &Config,
    client: &tokio_postgres::Client,
    tables: &[TableName],
    keyless: &BTreeSet<TableName>,
    lines: &mut Vec<CheckLine>,
) -> Result<(), PipelineError> {
    let inserts = publication::inserts_name(&config.source.publication);
    for table in tables {
        let identity = catalog::replica_identity(client, table).await?;
        let captured = !keyless.contains(table);
        lines.push(CheckLine {
            mark: if captured { Mark::Ok } else { Mark::Warn },
            what: if captured {
                format!("table {table}: replica identity {}", identity.describe())
            } else {
                format!(
                    "table {table}: no replica identity (replica identity {}, or a partition's): only its inserts and truncates are captured, through publication {inserts}; its updates and deletes are not in the lake",
                    identity.describe()
                )
            },
            fix: (!captured).then(|| {
                format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL; (or add a primary key) to capture its updates and deletes too",
                    table.quoted()
                )
            }),
        });
    }
    Ok(())
}

/// Per table: whether the role may SELECT it, which the initial load needs.
async fn select_lines(
    client: &tokio_postgres::Client,
    tables: &[TableName],
    lines: &mut Vec<CheckLine>,
) -> Result<(), PipelineError> {
    for table in tables {
        let (readable, role) = catalog::can_select(client, table).await?;
        lines.push(CheckLine {
            mark: Mark::ok_if(readable),
            what: format!("table {table}: role {role} may SELECT it (initial load)"),
            fix: (!readable).then(|| format!("GRANT SELECT ON {} TO {role};", table.quoted())),
        });
    }
    Ok(())
}

/// The existing publication: the keyless tables whose updates it breaks, and whether it
/// publishes the configured tables.
async fn publication_lines(
    config: &Config,
    client: &tokio_postgres::Client,
    tables: &[TableName],
    keyless: &BTreeSet<TableName>,
    lines: &mut Vec<CheckLine>,
) -> Result<(), PipelineError> {
    let existing = publication::publication(client, &config.source.publication).await?;
    lines.extend(breaking_lines(
        existing.as_ref(),
        &config.source.publication,
        keyless,
    ));
    // The main publication is for the tables whose updates and deletes are captured.
    let keyed: Vec<TableName> = tables
        .iter()
        .filter(|t| !keyless.contains(t))
        .cloned()
        .collect();
    lines.push(publication_line(
        existing,
        &config.source.publication,
        &keyed,
    ));
    Ok(())
}

/// Whether the lake takes atomic create-only puts, then, when mirrors are on, each
/// table's mirror.
async fn lake_lines(
    config: &Config,
    tables: &[TableName],
    lines: &mut Vec<CheckLine>,
) -> Result<(), PipelineError> {
    let lake = Lake::open(bootstrap::lake_options(config))?;
    match lake.check_writable().await {
        Ok(()) => lines.push(CheckLine {
            mark: Mark::Ok,
            what: format!(
                "lake {} is writable with atomic create-only puts",
                lake.root()
            ),
            fix: None,
        }),
        Err(err) => lines.push(CheckLine {
            mark: Mark::Fail,
            what: err.to_string(),
            fix: None,
        }),
    }
    if config.mirror.enabled {
        mirror_lines(&lake, tables, lines).await?;
    }
    Ok(())
}

/// Per table already in the lake: how far its current-state mirror is behind the
/// change log, or why it has none yet.
async fn mirror_lines(
    lake: &Lake,
    tables: &[TableName],
    lines: &mut Vec<CheckLine>,
) -> Result<(), lake::LakeError> {
    for table in tables {
        let Some(reader) = LakeReader::open(lake, &table.schema, &table.name).await? else {
            continue;
        };
        let keyless = reader
            .property(lake::SOURCE_KEY_PROPERTY)?
            .is_some_and(|key| key == "[]");
        let what = match lake::mirror_position(lake, &table.schema, &table.name).await? {
            _ if keyless => format!(
                "table {table}: no mirror (the table has no primary key or replica identity index)"
            ),
            None => format!("table {table}: no mirror yet (the next refresh of `run` writes it)"),
            Some((version, _)) => {
                let latest = reader.version().unwrap_or(version);
                format!(
                    "table {table}: mirror reflects change-log version {version} of {latest} ({} behind)",
                    (latest - version).max(0)
                )
            }
        };
        lines.push(CheckLine {
            mark: Mark::Ok,
            what,
            fix: None,
        });
    }
    Ok(())
}

/// Per table: whether every column maps to a lake type (and which are stored as text
/// because pg2lake does not know their type); then `column_types` entries that name no
/// column of a configured table.
async fn column_type_lines(
    config: &Config,
    client: &tokio_postgres::Client,
    tables: &[crate::config::TableName],
    lines: &mut Vec<CheckLine>,
) -> Result<(), PipelineError> {
    let mut types = bootstrap::type_catalog(config)?;
    let mut all_columns = Vec::new();
    for table in tables {
        let columns = catalog::table_columns(client, table).await?;
        catalog::resolve_types(client, &mut types, &columns).await?;
        let typed = TableSchema::with_types(&table.schema, &table.name, &columns, &types);
        if let Ok(schema) = &typed {
            privacy_lines(schema, &types, lines);
        }
        lines.push(match typed {
            Ok(_) => {
                let unknown: Vec<String> = columns
                    .iter()
                    .filter(|c| types.is_unknown(c.type_oid))
                    .map(|c| {
                        format!(
                            "{} ({})",
                            c.name,
                            types.type_name(c.type_oid, c.type_modifier)
                        )
                    })
                    .collect();
                let mut what = format!("table {table}: every column maps to a lake type");
                if !unknown.is_empty() {
                    what.push_str(&format!(
                        "; stored as text, type unknown to pg2lake: {}",
                        unknown.join(", ")
                    ));
                }
                CheckLine {
                    mark: Mark::Ok,
                    what,
                    fix: None,
                }
            }
            Err(err) => CheckLine {
                mark: Mark::Fail,
                what: err.to_string(),
                fix: None,
            },
        });
        all_columns.extend(
            columns
                .into_iter()
                .map(|c| (table.schema.clone(), table.name.clone(), c.name)),
        );
    }
    let present = all_columns
        .iter()
        .map(|(schema, table, column)| (schema.as_str(), table.as_str(), column.as_str()));
    for key in types.unmatched_configured(present) {
        lines.push(CheckLine {
            mark: Mark::Fail,
            what: format!("column_types.\"{key}\" names no column of a configured table"),
            fix: Some(
                "check the schema.table.column spelling, or remove the entry until the column exists"
                    .into(),
            ),
        });
    }
    Ok(())
}

/// A table's protected columns with their policies, and a warning for each column whose
/// name looks personal (`email`, `cpf`, `phone`…) that no `privacy.columns` entry names.
fn privacy_lines(schema: &TableSchema, types: &TypeCatalog, lines: &mut Vec<CheckLine>) {
    let table = schema.qualified_name();
    let mut protected: Vec<String> = schema
        .columns
        .iter()
        .filter(|c| c.policy != Policy::Clear)
        .map(|c| format!("{} ({})", c.name, c.policy))
        .collect();
    protected.extend(schema.excluded.iter().map(|c| format!("{c} (exclude)")));
    if !protected.is_empty() {
        lines.push(CheckLine {
            mark: Mark::Ok,
            what: format!("table {table}: protected columns: {}", protected.join(", ")),
            fix: None,
        });
    }
    let unreviewed: Vec<&str> = schema
        .columns
        .iter()
        .filter(|c| c.policy == Policy::Clear && privacy::looks_personal(&c.name))
        .filter(|c| {
            !types
                .policies()
                .names(&schema.namespace, &schema.name, &c.name)
        })
        .map(|c| c.name.as_str())
        .collect();
    if !unreviewed.is_empty() {
        let first = unreviewed[0];
        lines.push(CheckLine {
            mark: Mark::Warn,
            what: format!(
                "table {table}: columns that look personal have no policy and go to the lake in clear: {}",
                unreviewed.join(", ")
            ),
            fix: Some(format!(
                "give each a policy under privacy.columns (e.g. \"{}.{}.{first}\": hash), or `clear` once reviewed",
                schema.namespace, schema.name
            )),
        });
    }
}

/// The slot and walsender headroom, and the WAL a slot may retain.
fn capacity_lines(capacity: &catalog::ReplicationCapacity, slot: &str, lines: &mut Vec<CheckLine>) {
    lines.push(CheckLine {
        mark: Mark::ok_if(capacity.slot_room()),
        what: format!(
            "replication slots: {} of max_replication_slots {} in use{}",
            capacity.slots_used,
            capacity.max_slots,
            if capacity.slot_exists {
                format!(", slot {slot} exists")
            } else {
                format!(", slot {slot} will be created")
            }
        ),
        fix: Some(format!(
            "raise max_replication_slots (now {}; needs a restart) or drop an unused slot",
            capacity.max_slots
        )),
    });
    lines.push(CheckLine {
        mark: Mark::ok_if(capacity.sender_room()),
        what: format!(
            "wal senders: {} of max_wal_senders {} in use",
            capacity.wal_senders_used, capacity.max_wal_senders
        ),
        fix: Some(format!(
            "raise max_wal_senders (now {}; needs a restart)",
            capacity.max_wal_senders
        )),
    });
    // Not a failure either way, but the operator should know which risk they carry:
    // unlimited retention can fill the server's disk while pg2lake is down; a limit
    // can invalidate the slot, which then needs a new snapshot.
    lines.push(CheckLine {
        mark: Mark::Ok,
        what: if capacity.max_slot_wal_keep_size_mb < 0 {
            "max_slot_wal_keep_size is unlimited: while pg2lake is stopped the slot retains WAL until the disk fills (alert on pg2lake_slot_retained_wal_bytes)".to_owned()
        } else {
            format!(
                "max_slot_wal_keep_size is {}MB: a slot further behind is invalidated and needs a new snapshot",
                capacity.max_slot_wal_keep_size_mb
            )
        },
        fix: None,
    });
}

/// The `status --json` document.
#[derive(Debug, Serialize)]
struct Status {
    slot: String,
    slot_exists: bool,
    slot_active: bool,
    confirmed_flush_lsn: Option<String>,
    current_wal_lsn: String,
    lag_bytes: Option<u64>,
    /// `pg_stat_replication.replay_lag` of the slot's walsender; `None` when inactive.
    lag_seconds: Option<f64>,
    tables: Vec<TableStatus>,
}

#[derive(Debug, Serialize)]
struct TableStatus {
    table: String,
    lake_version: Option<i64>,
    committed_lsn: Option<String>,
    /// The change-log version the table's current-state mirror reflects.
    mirror_version: Option<i64>,
    /// The change log's committed LSN at that version.
    mirror_lsn: Option<String>,
    /// Change-log versions the mirror has not reflected yet.
    mirror_versions_behind: Option<i64>,
}

/// `pg2lake status`: the slot's lag behind the server and each table's lake position.
pub async fn status(config: &Config, json: bool) -> Result<(), CommandError> {
    let status = collect_status(config).await?;
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(err) => tracing::error!(error = %err, "cannot render status"),
        }
        return Ok(());
    }
    println!(
        "slot {}: {}",
        status.slot,
        match (status.slot_exists, status.slot_active) {
            (false, _) => "missing".to_owned(),
            (true, active) => format!(
                "{}, confirmed {} of {}, lag {} bytes, {}",
                if active { "active" } else { "inactive" },
                status.confirmed_flush_lsn.as_deref().unwrap_or("-"),
                status.current_wal_lsn,
                status.lag_bytes.map_or("-".to_owned(), |b| b.to_string()),
                status
                    .lag_seconds
                    .map_or("no walsender".to_owned(), |s| format!("{s:.1}s behind"))
            ),
        }
    );
    println!(
        "{:<40} {:>10} {:>20} {:>20} {:>14}",
        "table", "version", "committed lsn", "mirror lsn", "mirror behind"
    );
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    for table in &status.tables {
        println!(
            "{:<40} {:>10} {:>20} {:>20} {:>14}",
            table.table,
            or_dash(table.lake_version.map(|v| v.to_string())),
            or_dash(table.committed_lsn.clone()),
            or_dash(table.mirror_lsn.clone()),
            or_dash(
                table
                    .mirror_versions_behind
                    .map(|v| format!("{v} versions"))
            ),
        );
    }
    Ok(())
}

async fn collect_status(config: &Config) -> Result<Status, PipelineError> {
    let params = connect::params(config)?;
    let client = connect::sql(&params).await?;
    let slot = catalog::slot_info(&client, &config.source.slot).await?;
    let current = catalog::current_wal_lsn(&client).await?;
    let lag_seconds = catalog::slot_lag_seconds(&client, &config.source.slot).await?;
    let tables = catalog::resolve_tables(&client, &config.table_patterns()).await?;
    let lake = Lake::open(bootstrap::lake_options(config))?;
    let app_id = lake::app_id(&config.source.slot);
    let mut table_status = Vec::with_capacity(tables.len());
    for table in &tables {
        // Read only: status never creates a lake table nor allocates a writer.
        let reader = LakeReader::open(&lake, &table.schema, &table.name).await?;
        let committed_lsn = match &reader {
            Some(reader) => reader.committed_lsn(&app_id).await?,
            None => None,
        };
        let lake_version = reader.as_ref().and_then(LakeReader::version);
        let mirror = lake::mirror_position(&lake, &table.schema, &table.name).await?;
        table_status.push(TableStatus {
            table: table.to_string(),
            lake_version,
            committed_lsn: committed_lsn.map(|l| l.to_string()),
            mirror_version: mirror.map(|(version, _)| version),
            mirror_lsn: mirror
                .and_then(|(_, lsn)| lsn)
                .map(|lsn| crate::lsn::Lsn::from_i64(lsn).to_string()),
            mirror_versions_behind: mirror
                .zip(lake_version)
                .map(|((version, _), latest)| (latest - version).max(0)),
        });
    }
    let confirmed = slot.as_ref().and_then(|s| s.confirmed_flush_lsn);
    Ok(Status {
        slot: config.source.slot.clone(),
        slot_exists: slot.is_some(),
        slot_active: slot.as_ref().is_some_and(|s| s.active_pid.is_some()),
        confirmed_flush_lsn: confirmed.map(|l| l.to_string()),
        current_wal_lsn: current.to_string(),
        lag_bytes: confirmed.map(|c| current.0.saturating_sub(c.0)),
        lag_seconds,
        tables: table_status,
    })
}

/// `pg2lake verify`: compares every table (or the chosen ones) at one position and
/// prints the report; fails with [`CommandError::Different`] when a table differs.
pub async fn verify(
    config: &Config,
    options: &VerifyOptions,
    json: bool,
    push_url: Option<&str>,
) -> Result<(), CommandError> {
    let report = crate::verify::verify(config, options).await?;
    if let Some(url) = push_url {
        // The report is printed whether or not the push works; a failed push fails the
        // run, so the CronJob shows it.
        if let Err(err) = crate::verify::push_metrics(url, &config.source.slot, &report).await {
            print_report(&report, json);
            return Err(VerifyError::from(err).into());
        }
    }
    print_report(&report, json);
    match report
        .tables
        .iter()
        .filter(|t| t.status == Outcome::Different)
        .count()
    {
        0 => Ok(()),
        n => Err(CommandError::Different(n)),
    }
}

fn print_report(report: &Report, json: bool) {
    if !json {
        print_verify(report);
        return;
    }
    match serde_json::to_string_pretty(report) {
        Ok(text) => println!("{text}"),
        Err(err) => tracing::error!(error = %err, "cannot render the verify report"),
    }
}

fn print_verify(report: &Report) {
    println!(
        "compared at {} (source transactions committed before it)",
        report.position
    );
    for table in &report.tables {
        let elapsed = table.elapsed_ms as f64 / 1000.0;
        match table.status {
            Outcome::Equal => println!(
                "✓ {}: equal, {} rows ({elapsed:.1}s)",
                table.table, table.source_rows
            ),
            Outcome::Skipped => println!(
                "- {}: skipped: {}",
                table.table,
                table.reason.as_deref().unwrap_or("")
            ),
            Outcome::Different => {
                println!(
                    "✗ {}: DIFFERENT: source {} rows, lake {} rows; {} of 4096 key buckets differ ({elapsed:.1}s)",
                    table.table, table.source_rows, table.lake_rows, table.differing_buckets
                );
                for key in &table.keys {
                    let key_text: Vec<String> =
                        key.key.iter().map(|(c, v)| format!("{c}={v}")).collect();
                    println!(
                        "    {}: {}",
                        key_text.join(", "),
                        key.difference.replace('_', " ")
                    );
                }
                if table.keys_truncated {
                    println!("    … more keys differ than are listed");
                }
            }
        }
    }
}

/// Tables without a replica identity that a publication `run` does not change (for all
/// tables, or for whole schemas) publishes with updates: the application's UPDATE and
/// DELETE on them fail today. A failure: the fix is the user's to make.
fn breaking_lines(
    existing: Option<&publication::Publication>,
    name: &str,
    keyless: &std::collections::BTreeSet<TableName>,
) -> Vec<CheckLine> {
    let Some(existing) = existing.filter(|p| p.publishes_updates && (p.all_tables || p.by_schema))
    else {
        return Vec::new();
    };
    keyless
        .iter()
        .filter(|t| existing.all_tables || existing.tables.contains(t))
        .map(|table| CheckLine {
            mark: Mark::Fail,
            what: format!(
                "publication {name} publishes updates of {table}, which has no replica identity: UPDATE and DELETE on it fail on the primary"
            ),
            fix: Some(format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL; (or add a primary key, or use a publication FOR TABLE of keyed tables: pg2lake then streams this table's inserts through its own insert-only publication)",
                table.quoted()
            )),
        })
        .collect()
}

/// Whether the publication publishes the configured tables. A missing or different one
/// is not a failure: `run` creates or updates it, which needs CREATE on the database and
/// ownership of the tables.
fn publication_line(
    existing: Option<publication::Publication>,
    name: &str,
    tables: &[TableName],
) -> CheckLine {
    let what = match &existing {
        None => format!("publication {name} does not exist yet: run creates it"),
        Some(p) if p.all_tables => format!("publication {name} is FOR ALL TABLES"),
        Some(p) if p.matches(tables) => {
            format!(
                "publication {name} publishes the {} configured tables",
                tables.len()
            )
        }
        Some(p) => format!(
            "publication {name} publishes {} tables ({}) but the config names {}: run updates it",
            p.tables.len(),
            p.tables
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            tables.len()
        ),
    };
    CheckLine {
        mark: Mark::Ok,
        what,
        fix: None,
    }
}

/// `pg2lake maintain`: compacts and vacuums the lake's tables once (see `maintain`), and
/// prints what it did per table.
pub async fn maintain(
    config: &Config,
    options: &crate::maintain::MaintainOptions,
    json: bool,
) -> Result<(), CommandError> {
    let holder = crate::maintain::holder_name();
    let report = crate::maintain::maintain(config, options, &holder).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", maintain_text(&report));
    }
    let failed = report.tables.iter().filter(|t| t.error.is_some()).count();
    if failed > 0 {
        return Err(CommandError::MaintenanceFailed(failed));
    }
    Ok(())
}

/// `pg2lake forget`: erases one subject from the lake (see `forget`) and prints what it
/// did per table, without values.
pub async fn forget(
    config: &Config,
    options: &crate::forget::ForgetOptions,
    json: bool,
) -> Result<(), CommandError> {
    let report = crate::forget::forget(config, options).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", crate::forget::report_text(&report));
    }
    let failed = report.tables.iter().filter(|t| t.error.is_some()).count();
    if failed > 0 {
        return Err(CommandError::ForgetFailed(failed));
    }
    Ok(())
}

/// The text form of a maintenance report: one block per table.
fn maintain_text(report: &crate::maintain::Report) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let (rewrite, delete) = if report.dry_run {
        ("would rewrite", "would delete")
    } else {
        ("rewrote", "deleted")
    };
    if report.tables.is_empty() {
        text.push_str("no tables in the lake\n");
    }
    for table in &report.tables {
        let _ = writeln!(text, "{}", table.table);
        if let Some(holder) = &table.busy {
            let _ = writeln!(
                text,
                "  skipped: another compactor ({holder}) is working on it"
            );
            continue;
        }
        if let Some(error) = &table.error {
            let _ = writeln!(text, "  failed: {error}");
            continue;
        }
        let compaction = &table.compaction;
        let _ = writeln!(
            text,
            "  compaction: {rewrite} {} small files ({} bytes) in {} partitions into {} files{}",
            compaction.files_removed,
            compaction.bytes_removed,
            compaction.partitions,
            compaction.files_added,
            if compaction.conflicts > 0 {
                "; a partition changed under it and is left for the next pass"
            } else {
                ""
            }
        );
        let _ = writeln!(
            text,
            "  vacuum: {delete} {} files",
            table.vacuum.files.len()
        );
        if report.dry_run {
            for file in &table.vacuum.files {
                let _ = writeln!(text, "    {file}");
            }
        } else {
            let _ = writeln!(
                text,
                "  now: {} files, {} bytes, {} small",
                table.files.files, table.files.bytes, table.files.small_files
            );
        }
    }
    text
}
