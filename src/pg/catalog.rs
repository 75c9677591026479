//! Catalog work over a normal connection: server settings, the configured tables and
//! their columns, the slot, and heartbeats (the publications are [`super::publication`]'s).
//!
//! Everything here is plain SQL through tokio-postgres; the replication connection
//! (see [`super::replication`]) is used only for the walsender commands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::config::{TableName, TablePattern};
use crate::lsn::Lsn;
use crate::pg::pgoutput::RelationColumn;
use crate::schema::{CatalogKind, CatalogType, TypeCatalog};
pub use crate::sql::quote_ident;

/// The prefix of pg2lake's heartbeat messages (`pg_logical_emit_message`).
pub const HEARTBEAT_PREFIX: &str = "pg2lake_heartbeat";

/// Errors from catalog queries and the checks built on them.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A query failed.
    #[error("{what}: {source}")]
    Query {
        /// What pg2lake was doing.
        what: String,
        /// The Postgres error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server is not configured for logical decoding.
    #[error(
        "postgres wal_level is {actual}, logical replication needs logical (fix: ALTER SYSTEM SET wal_level = logical; then restart postgres)"
    )]
    WalLevel {
        /// The current wal_level.
        actual: String,
    },
    /// The role lacks the REPLICATION attribute.
    #[error(
        "role {role} lacks the REPLICATION attribute (fix: ALTER ROLE {role} WITH REPLICATION; or use a role that has it)"
    )]
    NoReplicationPrivilege {
        /// The role pg2lake connects as.
        role: String,
    },
    /// A configured table does not exist.
    #[error("table {table} from the tables setting does not exist in the source database")]
    TableMissing {
        /// The table.
        table: String,
    },
    /// No table matched the configuration.
    #[error(
        "no table matches the tables setting {patterns} (fix: create the tables or correct the setting)"
    )]
    NoTables {
        /// The configured patterns.
        patterns: String,
    },
    /// A table without a replica identity needs the insert-only publication (see
    /// `pg::publication`), which pg2lake's role may not create.
    #[error(
        "table {table} has no replica identity, so pg2lake publishes only its inserts and truncates, through publication {publication}, which its role may not create (fix: GRANT CREATE ON DATABASE to pg2lake's role, or have the database owner run CREATE PUBLICATION \"{publication}\" WITH (publish = 'insert, truncate', publish_via_partition_root = true); before pg2lake's slot exists, or ALTER TABLE {quoted_table} REPLICA IDENTITY FULL;)"
    )]
    InsertsPublicationMissing {
        /// The table.
        table: String,
        /// The table, quoted for SQL.
        quoted_table: String,
        /// The insert-only publication.
        publication: String,
    },
    /// The server answered with a WAL position pg2lake cannot read.
    #[error("{what}: postgres answered {text:?}, which is not a WAL position")]
    UnreadableLsn {
        /// What pg2lake was reading.
        what: &'static str,
        /// The text the server sent.
        text: String,
    },
    /// The server is too old.
    #[error("postgres {version} is too old: pg2lake needs PostgreSQL 14 or newer")]
    ServerTooOld {
        /// The server_version.
        version: String,
    },
}

impl CatalogError {
    pub(crate) fn query(
        what: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
        let what = what.into();
        move |source| CatalogError::Query { what, source }
    }

    /// Whether retrying later may succeed: a lost or refused connection is transient;
    /// missing privileges, settings and tables need a human.
    pub fn is_transient(&self) -> bool {
        match self {
            CatalogError::Query { source, .. } => super::sqlstate::query_error_is_transient(source),
            _ => false,
        }
    }
}

/// Server settings relevant to logical replication.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `server_version_num`, e.g. 150004.
    pub version_num: i32,
    /// `server_version`, human readable.
    pub version: String,
    /// `wal_level`.
    pub wal_level: String,
    /// The role connected.
    pub role: String,
    /// Whether that role may start walsenders (REPLICATION or superuser).
    pub can_replicate: bool,
}

/// Reads the settings and checks the ones that would stop replication before it starts.
pub async fn check_server(client: &Client) -> Result<ServerSettings, CatalogError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
             current_setting('wal_level'), current_user::text, \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .map_err(CatalogError::query("reading server settings"))?;
    let settings = ServerSettings {
        version_num: row.get(0),
        version: row.get(1),
        wal_level: row.get(2),
        role: row.get(3),
        can_replicate: row.get::<_, Option<bool>>(4).unwrap_or(false),
    };
    if settings.version_num < 140_000 {
        return Err(CatalogError::ServerTooOld {
            version: settings.version,
        });
    }
    if settings.wal_level != "logical" {
        return Err(CatalogError::WalLevel {
            actual: settings.wal_level,
        });
    }
    if !settings.can_replicate {
        return Err(CatalogError::NoReplicationPrivilege {
            role: settings.role,
        });
    }
    Ok(settings)
}

/// Resolves the configured names and `schema.*` patterns to existing ordinary and
/// partitioned tables (partitions themselves are replicated through their root),
/// sorted and without duplicates.
pub async fn resolve_tables(
    client: &Client,
    patterns: &[TablePattern],
) -> Result<Vec<TableName>, CatalogError> {
    let mut tables = Vec::new();
    for pattern in patterns {
        match pattern {
            TablePattern::Exact(table) => {
                let found = client
                    .query_opt(
                        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                        &[&table.schema, &table.name],
                    )
                    .await
                    .map_err(CatalogError::query("looking up configured tables"))?;
                if found.is_none() {
                    return Err(CatalogError::TableMissing {
                        table: table.to_string(),
                    });
                }
                tables.push(table.clone());
            }
            TablePattern::AllInSchema(schema) => {
                let rows = client
                    .query(
                        "SELECT c.relname::text FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') \
                         AND NOT c.relispartition ORDER BY 1",
                        &[schema],
                    )
                    .await
                    .map_err(CatalogError::query("listing tables of a schema"))?;
                tables.extend(rows.iter().map(|row| TableName {
                    schema: schema.clone(),
                    name: row.get(0),
                }));
            }
        }
    }
    tables.sort();
    tables.dedup();
    if tables.is_empty() {
        return Err(CatalogError::NoTables {
            patterns: patterns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(tables)
}

/// The columns of a table as a pgoutput Relation message would describe them: in
/// attribute order, dropped and system columns left out, `is_key` set for the columns
/// of the replica identity (all columns under REPLICA IDENTITY FULL).
pub async fn table_columns(
    client: &Client,
    table: &TableName,
) -> Result<Vec<RelationColumn>, CatalogError> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::oid, a.atttypmod, \
               CASE c.relreplident \
                 WHEN 'f' THEN true \
                 WHEN 'n' THEN false \
                 WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                                       AND i.indisprimary AND a.attnum = ANY(i.indkey)) \
                 ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                              AND i.indisreplident AND a.attnum = ANY(i.indkey)) \
               END \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(CatalogError::query(format!(
            "reading the columns of {table}"
        )))?;
    if rows.is_empty() {
        return Err(CatalogError::TableMissing {
            table: table.to_string(),
        });
    }
    Ok(rows
        .iter()
        .map(|row| RelationColumn {
            name: row.get(0),
            type_oid: row.get(1),
            type_modifier: row.get(2),
            is_key: row.get(3),
        })
        .collect())
}

/// The names of the primary key's columns of `table`, in key order; empty without one.
pub async fn primary_key_columns(
    client: &Client,
    table: &TableName,
) -> Result<Vec<String>, CatalogError> {
    let rows = client
        .query(
            "SELECT a.attname::text \
             FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(CatalogError::query(format!(
            "reading the primary key of {table}"
        )))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The relation OID of each of `tables` that exists, by table. A table dropped and
/// created again under the same name has a new OID: that is how pg2lake tells them apart.
pub async fn relation_oids(
    client: &Client,
    tables: &[TableName],
) -> Result<HashMap<TableName, u32>, CatalogError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.oid \
             FROM unnest($1::text[], $2::text[]) AS t(schema_name, table_name) \
             JOIN pg_namespace n ON n.nspname = t.schema_name \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name \
             WHERE c.relkind IN ('r', 'p')",
            &[&schemas, &names],
        )
        .await
        .map_err(CatalogError::query("looking up the tables' relation oids"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let table = TableName {
                schema: row.get(0),
                name: row.get(1),
            };
            (table, row.get(2))
        })
        .collect())
}

/// How long [`resolve_types`] waits for a type it cannot see yet to become visible.
///
/// The walsender may send a transaction as soon as its commit record is flushed, which is
/// before the committing backend makes the transaction visible to other sessions. A
/// Relation message can therefore name a type created in that very transaction while a
/// catalog query on another connection does not see it yet; the gap is usually
/// microseconds, more on a loaded machine.
const TYPE_VISIBILITY_WAIT: Duration = Duration::from_secs(2);

/// Looks up, once per OID, the types of `columns` that have database-specific OIDs
/// (enums, domains, composites, extension types, arrays of those), following domains to
/// their base type and arrays to their element, and records them in `types`.
///
/// An OID the catalog does not hold is looked up again for up to
/// [`TYPE_VISIBILITY_WAIT`] (see there) before it is recorded as dropped, in which case
/// its values keep their text form.
pub async fn resolve_types(
    client: &Client,
    types: &mut TypeCatalog,
    columns: &[RelationColumn],
) -> Result<(), CatalogError> {
    let mut wanted = types.unresolved(columns.iter().map(|c| c.type_oid));
    // Domains over domains and arrays of domains: a few rounds at most.
    while !wanted.is_empty() {
        let mut next = Vec::new();
        let mut pause = Duration::from_millis(5);
        let deadline = Instant::now() + TYPE_VISIBILITY_WAIT;
        loop {
            for (type_oid, described) in describe_types(client, &wanted).await? {
                next.extend(TypeCatalog::references(&described));
                types.insert(type_oid, Some(described));
            }
            wanted.retain(|&type_oid| types.get(type_oid).is_none());
            if wanted.is_empty() || Instant::now() >= deadline {
                break;
            }
            tracing::debug!(?wanted, "column types not visible yet, looking again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        for &type_oid in &wanted {
            // Dropped since the change was logged: its text form is all there is.
            types.insert(type_oid, None);
        }
        wanted = types.unresolved(next);
    }
    Ok(())
}

/// The catalog's description of each of `oids` that `pg_type` holds.
async fn describe_types(
    client: &Client,
    oids: &[u32],
) -> Result<Vec<(u32, CatalogType)>, CatalogError> {
    let rows = client
        .query(
            "SELECT t.oid, t.typtype::text, t.typcategory::text, t.typbasetype, t.typtypmod, \
               t.typelem, t.typname::text, n.nspname::text, \
               (SELECT e.extname::text FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid \
                 WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e' \
                 LIMIT 1), \
               (SELECT e.typdelim FROM pg_type e WHERE e.oid = t.typelem) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.oid = ANY($1)",
            &[&oids],
        )
        .await
        .map_err(CatalogError::query("reading column types from pg_type"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let typtype: String = row.get(1);
            let category: String = row.get(2);
            let kind = match (typtype.as_str(), category.as_str()) {
                ("e", _) => CatalogKind::Enum,
                ("c", _) => CatalogKind::Composite,
                ("d", _) => CatalogKind::Domain {
                    base: row.get(3),
                    base_modifier: row.get(4),
                },
                ("b", "A") if row.get::<_, u32>(5) != 0 => CatalogKind::Array {
                    element: row.get(5),
                    // `"char"`: one byte, read as i8.
                    delimiter: row
                        .get::<_, Option<i8>>(9)
                        .map_or(b',', |d| d.to_ne_bytes()[0]),
                },
                ("b", _) => CatalogKind::Base,
                _ => CatalogKind::Other,
            };
            let name: String = row.get(6);
            let namespace: String = row.get(7);
            let described = CatalogType {
                qualified_name: format!("{namespace}.{name}"),
                name,
                extension: row.get(8),
                kind,
            };
            (row.get(0), described)
        })
        .collect())
}

/// A table's replica identity: which old values Postgres logs for updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key (`has_primary_key` false: nothing identifies rows).
    Default {
        /// Whether the table has a primary key.
        has_primary_key: bool,
    },
    /// A unique index chosen with `REPLICA IDENTITY USING INDEX`.
    Index,
    /// The whole old row.
    Full,
    /// Nothing: Postgres refuses updates and deletes on published tables.
    Nothing,
}

impl ReplicaIdentity {
    /// Whether updates and deletes of the table can be captured.
    pub fn captures_updates(self) -> bool {
        !matches!(
            self,
            ReplicaIdentity::Nothing
                | ReplicaIdentity::Default {
                    has_primary_key: false
                }
        )
    }

    /// A short description for `check` and logs.
    pub fn describe(self) -> &'static str {
        match self {
            ReplicaIdentity::Default {
                has_primary_key: true,
            } => "default (primary key)",
            ReplicaIdentity::Default {
                has_primary_key: false,
            } => "default without a primary key: updates and deletes cannot be captured",
            ReplicaIdentity::Index => "index",
            ReplicaIdentity::Full => "full",
            ReplicaIdentity::Nothing => "nothing: updates and deletes cannot be captured",
        }
    }
}

/// Reads a table's replica identity.
pub async fn replica_identity(
    client: &Client,
    table: &TableName,
) -> Result<ReplicaIdentity, CatalogError> {
    let row = client
        .query_opt(
            "SELECT c.relreplident::text, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(CatalogError::query(format!(
            "reading the replica identity of {table}"
        )))?
        .ok_or_else(|| CatalogError::TableMissing {
            table: table.to_string(),
        })?;
    let kind: String = row.get(0);
    Ok(match kind.as_str() {
        "f" => ReplicaIdentity::Full,
        "n" => ReplicaIdentity::Nothing,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default {
            has_primary_key: row.get(1),
        },
    })
}

/// Whether the connected role may SELECT `table` (what the initial load needs), and the
/// role's name.
pub async fn can_select(
    client: &Client,
    table: &TableName,
) -> Result<(bool, String), CatalogError> {
    let row = client
        .query_one(
            "SELECT has_table_privilege($1, 'SELECT'), current_user::text",
            &[&table.quoted()],
        )
        .await
        .map_err(CatalogError::query("checking privileges"))?;
    Ok((row.get(0), row.get(1)))
}

/// The state of a replication slot in `pg_replication_slots`.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// The output plugin.
    pub plugin: Option<String>,
    /// The database the slot belongs to.
    pub database: Option<String>,
    /// The walsender process currently using the slot, if any.
    pub active_pid: Option<i32>,
    /// Position up to which the consumer confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL the slot retains.
    pub restart_lsn: Option<Lsn>,
    /// `wal_status`: reserved, extended, unreserved, or lost (invalidated: the WAL it
    /// needs is gone, and it can never be streamed again).
    pub wal_status: Option<String>,
}

impl SlotInfo {
    /// Whether the slot was invalidated (`wal_status` lost).
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// Reads a slot, `None` when it does not exist.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, \
             restart_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(CatalogError::query("reading the replication slot"))?;
    Ok(row.map(|row| SlotInfo {
        plugin: row.get(0),
        database: row.get(1),
        active_pid: row.get(2),
        confirmed_flush_lsn: row.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
        restart_lsn: row.get::<_, Option<String>>(4).and_then(|s| s.parse().ok()),
        wal_status: row.get(5),
    }))
}

/// Drops a replication slot that no process uses.
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), CatalogError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(CatalogError::query(format!(
            "dropping replication slot {slot}"
        )))?;
    Ok(())
}

/// Writes a transactional logical decoding message into the WAL. Its commit reaches
/// the slot like any transaction, so the slot's position can advance even when the
/// only writes on the server are to other databases or unpublished tables.
pub async fn emit_heartbeat(client: &Client) -> Result<Lsn, CatalogError> {
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, '')::text",
            &[&HEARTBEAT_PREFIX],
        )
        .await
        .map_err(CatalogError::query("emitting a heartbeat message"))?;
    parse_lsn("emitting a heartbeat message", row.get(0))
}

/// A WAL position the server sent as text; one that does not parse is an error rather
/// than 0/0, which would read as "nothing is behind".
fn parse_lsn(what: &'static str, text: String) -> Result<Lsn, CatalogError> {
    text.parse()
        .map_err(|_| CatalogError::UnreadableLsn { what, text })
}

/// How much room the server has for one more replication consumer, and how much WAL a
/// slot may hold back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationCapacity {
    /// `max_replication_slots`.
    pub max_slots: i32,
    /// Slots that exist now.
    pub slots_used: i64,
    /// Whether the configured slot is one of them (it needs no new room).
    pub slot_exists: bool,
    /// `max_wal_senders`.
    pub max_wal_senders: i32,
    /// Walsenders running now.
    pub wal_senders_used: i64,
    /// `max_slot_wal_keep_size` in MB; -1 means a slot may retain WAL without limit.
    pub max_slot_wal_keep_size_mb: i64,
}

impl ReplicationCapacity {
    /// Whether the slot exists or one more can be created.
    pub fn slot_room(&self) -> bool {
        self.slot_exists || self.slots_used < i64::from(self.max_slots)
    }

    /// Whether one more walsender can start.
    pub fn sender_room(&self) -> bool {
        self.wal_senders_used < i64::from(self.max_wal_senders)
    }
}

/// Reads the slot and walsender limits and their use.
pub async fn replication_capacity(
    client: &Client,
    slot: &str,
) -> Result<ReplicationCapacity, CatalogError> {
    let row = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int, \
             (SELECT count(*) FROM pg_replication_slots), \
             EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
             current_setting('max_wal_senders')::int, \
             (SELECT count(*) FROM pg_stat_replication), \
             CASE WHEN current_setting('max_slot_wal_keep_size') = '-1' THEN -1::bigint \
               ELSE pg_size_bytes(current_setting('max_slot_wal_keep_size')) / 1048576 END",
            &[&slot],
        )
        .await
        .map_err(CatalogError::query("reading replication limits"))?;
    Ok(ReplicationCapacity {
        max_slots: row.get(0),
        slots_used: row.get(1),
        slot_exists: row.get(2),
        max_wal_senders: row.get(3),
        wal_senders_used: row.get(4),
        max_slot_wal_keep_size_mb: row.get(5),
    })
}

/// How far behind the walsender of `slot` reports its consumer (`pg_stat_replication
/// .replay_lag`, the time from WAL flush to pg2lake's confirmation), in seconds; `None`
/// when no walsender streams the slot, 0 when caught up.
pub async fn slot_lag_seconds(client: &Client, slot: &str) -> Result<Option<f64>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT COALESCE(EXTRACT(epoch FROM r.replay_lag)::float8, 0) \
             FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(CatalogError::query("reading the replication lag"))?;
    Ok(row.map(|row| row.get(0)))
}

/// The server's WAL position and the health columns of `slot` (`None` when missing),
/// read in one statement so retained WAL and lag are measured against the same point.
pub async fn server_position(client: &Client, slot: &str) -> Result<ServerPosition, CatalogError> {
    let rows = client
        .query(
            "SELECT pg_current_wal_lsn()::text, s.active, s.restart_lsn::text, s.wal_status, \
             s.safe_wal_size FROM (SELECT 1) AS one \
             LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(CatalogError::query("reading the replication slot's health"))?;
    let Some(row) = rows.first() else {
        return Ok(ServerPosition::default());
    };
    let active: Option<bool> = row.get(1);
    Ok(ServerPosition {
        current: parse_lsn("reading the server's WAL position", row.get(0))?,
        slot: active.map(|active| SlotHealth {
            active,
            restart_lsn: row.get::<_, Option<String>>(2).and_then(|s| s.parse().ok()),
            wal_status: row.get(3),
            safe_wal_size: row.get(4),
        }),
    })
}

/// The server's `wal_sender_timeout`, `None` when it is 0 (off).
pub async fn wal_sender_timeout(client: &Client) -> Result<Option<Duration>, CatalogError> {
    let row = client
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await
        .map_err(CatalogError::query("reading wal_sender_timeout"))?;
    let millis: i64 = row.get(0);
    Ok((millis > 0).then(|| Duration::from_millis(u64::try_from(millis).unwrap_or(0))))
}

/// The database the connection is to.
pub async fn current_database(client: &Client) -> Result<String, CatalogError> {
    let row = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(CatalogError::query("reading the current database"))?;
    Ok(row.get(0))
}

/// The server's current WAL insert position.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, CatalogError> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(CatalogError::query("reading the current WAL position"))?;
    parse_lsn("reading the current WAL position", row.get(0))
}

/// The server's WAL position and the slot's state, read on the heartbeat tick.
#[derive(Debug, Clone, Default)]
pub struct ServerPosition {
    /// `pg_current_wal_lsn()`.
    pub current: Lsn,
    /// The slot, if it exists.
    pub slot: Option<SlotHealth>,
}

/// The health columns of `pg_replication_slots`.
#[derive(Debug, Clone, Default)]
pub struct SlotHealth {
    /// Whether a walsender uses the slot.
    pub active: bool,
    /// Oldest WAL the slot needs.
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes until the slot would be lost; `None` when `max_slot_wal_keep_size` is -1.
    pub safe_wal_size: Option<i64>,
}
