//! Start-up shared by `run`, `snapshot`, `check` and the lake commands: the checks
//! that need nothing written, the lake settings, the publications, the slot, and the
//! lake tables opened and reconciled with the source.
//!
//! ```text
//!  preflight: connect ─► server settings ─► tables the config names
//!  lake_options ─► Lake::open ─► check_writable
//!  prepare_publications ─► (slot: wait while taken, create or check it, slot loss)
//!  open_replicated: each table's lake table opened, its layout and policies reconciled,
//!                   which changes it captures and its key recorded
//! ```
//!
//! Everything here is read-only on the source except the publications and the slot, and
//! writes nothing to the lake but staged table properties, so a failure at start-up
//! leaves nothing half-done.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::apply::ReplicatedTable;
use crate::config::{Config, ConfigError, TableName};
use crate::error::PipelineError;
use crate::lake::{Lake, LakeError, LakeOptions, LakeTable};
use crate::pg::catalog::{self, CatalogError};
use crate::pg::connect;
use crate::pg::pgoutput::RelationColumn;
use crate::pg::publication::{self, Streaming};
use crate::pg::replication::ConnectParams;
use crate::privacy;
use crate::schema::{SchemaError, TableSchema, TypeCatalog, TypeChangePolicy};

mod slot;

pub use slot::{SlotReady, SlotWait, check_slot, prepare_slot, slot_loss, wait_for_free_slot};

/// A source connection that passed the checks that need nothing written.
pub struct Preflight {
    /// How to connect (for more connections: replication, the copy).
    pub params: ConnectParams,
    /// The catalog connection.
    pub client: Client,
    /// The tables the configuration names, as they are now.
    pub tables: Vec<TableName>,
}

/// Connects to the source, checks its settings and the role's privileges, and resolves
/// the configured tables.
pub async fn preflight(config: &Config) -> Result<Preflight, PipelineError> {
    let params = connect::params(config)?;
    let client = connect::sql(&params).await?;
    catalog::check_server(&client).await?;
    let tables = catalog::resolve_tables(&client, &config.table_patterns()).await?;
    Ok(Preflight {
        params,
        client,
        tables,
    })
}

/// Opens the lake and checks that pg2lake may write to it.
pub async fn open_lake(config: &Config) -> Result<Lake, LakeError> {
    let lake = Lake::open(lake_options(config))?;
    lake.check_writable().await?;
    Ok(lake)
}

/// Opens the lake tables of `tables` (see [`open_tables`]) and records in each which
/// source changes it captures (when `streaming` says, i.e. a slot will stream them) and
/// the source's key.
pub async fn open_replicated(
    config: &Config,
    client: &Client,
    lake: &Lake,
    tables: &[TableName],
    streaming: Option<&Streaming>,
    app_id: &str,
) -> Result<(Vec<ReplicatedTable>, TypeCatalog), PipelineError> {
    let (mut replicated, types) = open_tables(config, client, lake, tables, app_id).await?;
    if let Some(streaming) = streaming {
        record_source_changes(&mut replicated, streaming)?;
    }
    record_source_keys(client, &mut replicated).await?;
    Ok((replicated, types))
}

/// The type catalog of a session: empty but for the configured column types and the
/// column policies (with the hash key from the process environment or its file); the
/// catalog types are looked up as tables and Relation messages name them.
pub fn type_catalog(config: &Config) -> Result<TypeCatalog, ConfigError> {
    let policies = config.column_policies(|name| std::env::var(name).ok())?;
    Ok(TypeCatalog::new(config.configured_types()?).with_policies(policies))
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
        retention: config.lake.retention,
        target_file_size: config.flush.max_bytes.0,
        target_file_rows: config.flush.max_rows,
    }
}

/// Arranges the publications for `tables` (see [`publication`]) and warns about each
/// table whose updates and deletes cannot be captured.
/// `slot` is the slot that streams next, as it is now (`None`: it is created after this).
pub async fn prepare_publications(
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
pub fn record_source_changes(
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

/// Records in each lake table the source's key ([`crate::lake::SOURCE_KEY_PROPERTY`]):
/// its primary key, or the columns of its replica identity index; none under `REPLICA
/// IDENTITY FULL` without a primary key (every column is then part of the identity, and
/// nothing says which rows are the same row). The current-state mirror folds by it.
pub async fn record_source_keys(
    client: &Client,
    tables: &mut [ReplicatedTable],
) -> Result<(), PipelineError> {
    for table in tables {
        let schema = table.schema().clone();
        let name = TableName::new(schema.namespace.clone(), schema.name.clone());
        let mut key = catalog::primary_key_columns(client, &name).await?;
        if key.is_empty() {
            // Columns the source still has (not lake-only ones it dropped).
            let current = schema
                .columns
                .iter()
                .filter(|c| c.type_oid != crate::schema::UNKNOWN_TYPE);
            let identity: Vec<&crate::schema::SourceColumn> =
                current.clone().filter(|c| c.is_key).collect();
            if identity.len() < current.count() {
                key = identity.iter().map(|c| c.name.clone()).collect();
            }
        }
        let key = serde_json::to_string(&key).unwrap_or_default();
        table
            .lake_mut()
            .set_property(crate::lake::SOURCE_KEY_PROPERTY, &key)?;
    }
    Ok(())
}

/// Opens (or creates) the lake table of every table in `tables`; see [`open_table`].
/// Column types with database-specific OIDs are looked up first, into the type catalog
/// returned with the tables (the configured column types and policy come from `config`).
pub async fn open_tables(
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
        schema.tuple_columns.iter().flatten().map(move |&c| {
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
    // A table no data was committed to yet (just created) holds no values of any policy.
    let holds_values = lake_table.committed_lsn().is_some();
    check_policies(
        &known,
        columns,
        types,
        holds_values,
        lake_table.property(privacy::POLICIES_PROPERTY)?.as_deref(),
        lake_table
            .property(privacy::HASH_KEY_ID_PROPERTY)?
            .as_deref(),
    )?;
    let evolution = known.evolve_with(columns, types, policy)?;
    let mut table =
        ReplicatedTable::new(Arc::new(known), lake_table).with_type_change_policy(policy);
    table.evolve(evolution).await?;
    Ok(table)
}

/// Refuses to open a table whose configured column policies differ from those its lake
/// values were written with (`recorded`, the table's [`privacy::POLICIES_PROPERTY`]), or
/// whose hashed columns were hashed with another key (`recorded_key`); see
/// [`privacy::check_unchanged`]. A table without committed data (`holds_values` false)
/// takes the configured policies as they are.
fn check_policies(
    known: &TableSchema,
    columns: &[RelationColumn],
    types: &TypeCatalog,
    holds_values: bool,
    recorded: Option<&str>,
    recorded_key: Option<&str>,
) -> Result<(), SchemaError> {
    let configured = columns
        .iter()
        .map(|c| {
            Ok((
                c.name.clone(),
                types.policy(&known.namespace, &known.name, c)?,
            ))
        })
        .collect::<Result<_, SchemaError>>()?;
    let lake_columns: Vec<&str> = if holds_values {
        known.columns.iter().map(|c| c.name.as_str()).collect()
    } else {
        Vec::new()
    };
    privacy::check_unchanged(
        &known.qualified_name(),
        &privacy::parse_recorded(recorded),
        recorded_key,
        &lake_columns,
        &configured,
        types.policies().key(),
    )?;
    Ok(())
}
