//! The publications pg2lake streams, and the rule that keeps them from breaking the
//! application.
//!
//! ```text
//!  configured tables ─┬─ replica identity (primary key, index, FULL) ─► <source.publication>          insert, update, delete, truncate
//!                     └─ none (NOTHING, DEFAULT without a key)        ─► <source.publication>_inserts  insert, truncate
//!                                                     both streamed by the one slot ─► pgoutput ─► lake
//! ```
//!
//! **Invariant: pg2lake never puts a table without a replica identity into a publication
//! that publishes updates or deletes.** Postgres refuses every UPDATE and DELETE on such a
//! table as soon as one does ("cannot update table … because it does not have a replica
//! identity and publishes updates"): that would break the application. Those tables go to
//! a second publication that publishes only inserts and truncates, and their lake tables
//! record it (`pg2lake.source.changes`). The rule is checked again every few seconds while
//! streaming ([`keyless_tables`] from the pipeline), so a table whose key is dropped leaves
//! the main publication within seconds, and one that gets a key back returns to it.
//!
//! A publication pg2lake cannot change without changing what it publishes for others
//! (`FOR ALL TABLES`, `FOR TABLES IN SCHEMA`) is used as it is: tables are only added to
//! it, never removed, and `check` names its tables without a replica identity with the fix.
//!
//! pgoutput reads publications from the catalog *as of each decoded change*: a
//! publication created after a change's WAL position makes decoding fail ("publication
//! does not exist") for every session that starts before it. So the insert-only
//! publication is created with the main one, before the slot. Created later for an
//! existing slot (an upgrade, or an operator dropped it), its comment records a WAL
//! position after its creation, and it joins the stream only once the slot's
//! `restart_lsn` has passed that position; until then, tables that need it wait, and
//! keyless tables already in the main publication stay there until the switch.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::config::{INSERTS_PUBLICATION_SUFFIX, TableName};
use crate::lsn::Lsn;
use crate::pg::catalog::{self, CatalogError, SlotInfo};
use crate::sql::{quote_ident, quote_literal};

/// The start of the insert-only publication's comment; the WAL position follows.
const COMMENT_PREFIX: &str =
    "pg2lake: inserts and truncates of tables without a replica identity; streamable from WAL ";
/// The value of the lake table property `pg2lake.source.changes` for a table whose
/// updates and deletes are captured.
pub const ALL_CHANGES: &str = "insert,update,delete,truncate";
/// The same for a table without a replica identity.
pub const INSERTS_ONLY: &str = "insert,truncate";

/// The insert-only publication that goes with `publication`.
pub fn inserts_name(publication: &str) -> String {
    format!("{publication}{INSERTS_PUBLICATION_SUFFIX}")
}

/// An existing publication as `pg_publication` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publication {
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    /// Publishes whole schemas (`FOR TABLES IN SCHEMA`, PostgreSQL 15+).
    pub by_schema: bool,
    /// `publish_via_partition_root`.
    pub via_root: bool,
    /// Publishes updates or deletes: a table without a replica identity in it makes the
    /// application's UPDATE or DELETE on that table fail.
    pub publishes_updates: bool,
    /// The published tables, sorted (partitions of a published root are not listed).
    pub tables: Vec<TableName>,
    /// `COMMENT ON PUBLICATION`.
    pub comment: Option<String>,
}

impl Publication {
    /// Whether pg2lake may set its table list: not when it publishes all tables or
    /// whole schemas, which would change what it publishes for others.
    fn editable(&self) -> bool {
        !self.all_tables && !self.by_schema
    }

    /// Whether it publishes exactly `tables` (sorted) the way pg2lake needs.
    pub fn matches(&self, tables: &[TableName]) -> bool {
        self.all_tables || (self.tables == tables && self.via_root)
    }

    /// The WAL position recorded in the comment of an insert-only publication.
    fn streamable_from(&self) -> Option<Lsn> {
        self.comment
            .as_deref()?
            .strip_prefix(COMMENT_PREFIX)?
            .trim()
            .parse()
            .ok()
    }
}

/// Reads a publication, `None` when it does not exist.
pub async fn publication(
    client: &Client,
    publication: &str,
) -> Result<Option<Publication>, CatalogError> {
    let Some(row) = client
        .query_opt(
            "SELECT p.puballtables, p.pubviaroot, p.pubupdate OR p.pubdelete, \
               obj_description(p.oid, 'pg_publication'), \
               to_regclass('pg_catalog.pg_publication_namespace') IS NOT NULL \
             FROM pg_publication p WHERE p.pubname = $1",
            &[&publication],
        )
        .await
        .map_err(CatalogError::query("reading the publication"))?
    else {
        return Ok(None);
    };
    // Schema publications exist from PostgreSQL 15 on; 14 has no such catalog.
    let by_schema = if row.get::<_, bool>(4) {
        client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_namespace pn \
                 JOIN pg_publication p ON p.oid = pn.pnpubid WHERE p.pubname = $1)",
                &[&publication],
            )
            .await
            .map_err(CatalogError::query("reading the publication's schemas"))?
            .get(0)
    } else {
        false
    };
    let published = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(CatalogError::query("reading the publication's tables"))?;
    let mut tables: Vec<TableName> = published
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    tables.sort();
    Ok(Some(Publication {
        all_tables: row.get(0),
        by_schema,
        via_root: row.get(1),
        publishes_updates: row.get(2),
        tables,
        comment: row.get(3),
    }))
}

/// The tables of `tables` whose updates and deletes Postgres cannot publish: replica
/// identity NOTHING, DEFAULT without a primary key, or USING INDEX of an index that is
/// gone. A partitioned table counts when any of its partitions does (the check is made on
/// the partition an UPDATE touches); one without partitions goes by its own identity.
pub async fn keyless_tables(
    client: &Client,
    tables: &[TableName],
) -> Result<BTreeSet<TableName>, CatalogError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text \
             FROM unnest($1::text[], $2::text[]) AS t(schema_name, table_name) \
             JOIN pg_namespace n ON n.nspname = t.schema_name \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name \
             WHERE c.relkind IN ('r', 'p') AND EXISTS ( \
               SELECT 1 FROM pg_class l \
               WHERE (l.oid IN (SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf) \
                      OR (l.oid = c.oid AND NOT EXISTS ( \
                            SELECT 1 FROM pg_partition_tree(c.oid) WHERE isleaf))) \
                 AND CASE l.relreplident \
                   WHEN 'f' THEN false \
                   WHEN 'n' THEN true \
                   WHEN 'i' THEN NOT EXISTS (SELECT 1 FROM pg_index i \
                                             WHERE i.indrelid = l.oid AND i.indisreplident) \
                   ELSE NOT EXISTS (SELECT 1 FROM pg_index i \
                                    WHERE i.indrelid = l.oid AND i.indisprimary) \
                 END)",
            &[&schemas, &names],
        )
        .await
        .map_err(CatalogError::query(
            "reading the tables' replica identities",
        ))?;
    Ok(rows
        .iter()
        .map(|row| TableName::new(row.get::<_, String>(0), row.get::<_, String>(1)))
        .collect())
}

/// The insert-only publication as a session finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertsPublication {
    /// The session streams it.
    Streamed,
    /// It exists, but decoding may still start before its creation: it can be streamed
    /// once the slot's `restart_lsn` has passed this position.
    From(Lsn),
    /// It does not exist, and pg2lake's role may not create it (no table needs it yet).
    Missing,
}

/// Whether decoding from `slot` (`None`: a slot created after now) can no longer reach a
/// change before `from`, the position recorded after the insert-only publication was
/// created: its `restart_lsn` has passed it.
pub fn slot_has_passed(slot: Option<&SlotInfo>, from: Lsn) -> bool {
    slot.is_none_or(|slot| slot.restart_lsn.is_some_and(|lsn| lsn >= from))
}

/// What a replication session streams, as [`prepare`] arranged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streaming {
    /// The publication names for START_REPLICATION.
    pub publications: Vec<String>,
    /// The configured tables the session replicates, sorted: those that wait for the
    /// insert-only publication to become streamable are left out.
    pub tables: Vec<TableName>,
    /// The tables of `tables` without a replica identity: only their inserts and
    /// truncates are captured.
    pub keyless: BTreeSet<TableName>,
    /// Whether the insert-only publication is streamed.
    pub inserts: InsertsPublication,
}

impl Streaming {
    /// Whether the insert-only publication is among the streamed ones.
    pub fn streams_inserts(&self) -> bool {
        self.inserts == InsertsPublication::Streamed
    }
}

/// The membership changes that carry out the invariant, and the session's tables.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    main_add: Vec<TableName>,
    main_drop: Vec<TableName>,
    inserts_add: Vec<TableName>,
    inserts_drop: Vec<TableName>,
    /// Configured tables published by neither publication this session.
    waiting: Vec<TableName>,
}

/// Decides where each of `tables` (sorted) is published. `main` is `None` when the main
/// publication does not exist yet (it will be created publishing everything); `inserts`
/// lists the insert-only publication's tables when this session streams it, and is
/// `None` when it does not (its tables are then left as they are).
fn plan(
    tables: &[TableName],
    keyless: &BTreeSet<TableName>,
    main: Option<&Publication>,
    inserts: Option<&[TableName]>,
) -> Plan {
    let empty = Publication {
        publishes_updates: true,
        via_root: true,
        ..Publication::default()
    };
    let main = main.unwrap_or(&empty);
    let in_main = |t: &TableName| main.all_tables || main.tables.contains(t);
    let mut plan = Plan::default();
    let mut wanted_inserts = Vec::new();
    for table in tables {
        if !keyless.contains(table) || !main.publishes_updates {
            // Harmless in the main publication: updates and deletes are logged (or not
            // published at all).
            if !in_main(table) {
                plan.main_add.push(table.clone());
            }
        } else if in_main(table) {
            // Already breaking the application's UPDATE and DELETE (an older pg2lake put
            // it there, or the key was just dropped): moved out as soon as the
            // insert-only publication streams. A publication for all tables or schemas
            // is the user's to change.
            if main.editable() && inserts.is_some() {
                plan.main_drop.push(table.clone());
                wanted_inserts.push(table.clone());
            }
        } else if inserts.is_some() {
            wanted_inserts.push(table.clone());
        } else {
            plan.waiting.push(table.clone());
        }
    }
    if main.editable() {
        plan.main_drop.extend(
            main.tables
                .iter()
                .filter(|t| tables.binary_search(t).is_err())
                .cloned(),
        );
        plan.main_drop.sort();
    }
    if let Some(inserts) = inserts {
        plan.inserts_add = wanted_inserts
            .iter()
            .filter(|t| !inserts.contains(t))
            .cloned()
            .collect();
        plan.inserts_drop = inserts
            .iter()
            .filter(|t| !wanted_inserts.contains(t))
            .cloned()
            .collect();
    }
    plan
}

impl Plan {
    /// The SQL that carries out this plan: `main` is the main publication as it is
    /// (`None`: it is created), `main_name` and `inserts_name` the two publications.
    fn statements(
        &self,
        main: Option<&Publication>,
        main_name: &str,
        inserts_name: &str,
    ) -> Vec<String> {
        let (main_q, inserts_q) = (quote_ident(main_name), quote_ident(inserts_name));
        let mut statements = Vec::new();
        match main {
            None if self.main_add.is_empty() => statements.push(format!(
                "CREATE PUBLICATION {main_q} WITH (publish_via_partition_root = true)"
            )),
            None => statements.push(format!(
                "CREATE PUBLICATION {main_q} FOR TABLE {} WITH (publish_via_partition_root = true)",
                table_list(&self.main_add)
            )),
            Some(existing) => {
                if !self.main_add.is_empty() {
                    statements.push(format!(
                        "ALTER PUBLICATION {main_q} ADD TABLE {}",
                        table_list(&self.main_add)
                    ));
                }
                if !self.main_drop.is_empty() {
                    statements.push(format!(
                        "ALTER PUBLICATION {main_q} DROP TABLE {}",
                        table_list(&self.main_drop)
                    ));
                }
                if !existing.via_root && !existing.all_tables {
                    statements.push(format!(
                        "ALTER PUBLICATION {main_q} SET (publish_via_partition_root = true)"
                    ));
                }
            }
        }
        if !self.inserts_add.is_empty() {
            statements.push(format!(
                "ALTER PUBLICATION {inserts_q} ADD TABLE {}",
                table_list(&self.inserts_add)
            ));
        }
        if !self.inserts_drop.is_empty() {
            statements.push(format!(
                "ALTER PUBLICATION {inserts_q} DROP TABLE {}",
                table_list(&self.inserts_drop)
            ));
        }
        statements
    }
}

/// The tables quoted and comma-separated, as a publication's table list.
fn table_list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Arranges both publications for `tables` at the start of a session (see the module
/// docs) and says what the session streams. `slot` is the slot as it is now (`None`: it
/// is created after this, so both publications predate it).
pub async fn prepare(
    client: &Client,
    publication_name: &str,
    tables: &[TableName],
    slot: Option<&SlotInfo>,
) -> Result<Streaming, CatalogError> {
    let inserts_name = inserts_name(publication_name);
    let inserts = match ensure_inserts_publication(client, &inserts_name).await? {
        Some(from) if !slot_has_passed(slot, from) => InsertsPublication::From(from),
        Some(_) => InsertsPublication::Streamed,
        None => InsertsPublication::Missing,
    };
    let keyless = keyless_tables(client, tables).await?;
    let waiting = arrange(
        client,
        publication_name,
        tables,
        &keyless,
        inserts == InsertsPublication::Streamed,
    )
    .await?
    .waiting;
    if let (Some(table), InsertsPublication::Missing) = (waiting.first(), inserts) {
        return Err(CatalogError::InsertsPublicationMissing {
            table: table.to_string(),
            quoted_table: table.quoted(),
            publication: inserts_name,
        });
    }
    for table in &waiting {
        tracing::warn!(
            table = %table,
            publication = %inserts_name,
            "table has no replica identity and waits until the insert-only publication can be streamed (the slot must first pass its creation; pg2lake switches by itself, usually within a minute)"
        );
    }
    let session_tables: Vec<TableName> = tables
        .iter()
        .filter(|t| !waiting.contains(t))
        .cloned()
        .collect();
    let mut publications = vec![publication_name.to_owned()];
    if inserts == InsertsPublication::Streamed {
        publications.push(inserts_name);
    }
    Ok(Streaming {
        publications,
        keyless: keyless
            .into_iter()
            .filter(|t| session_tables.contains(t))
            .collect(),
        tables: session_tables,
        inserts,
    })
}

/// Moves tables between the publications after their replica identity changed while a
/// session streams (`streaming` is what it streams): a table that lost its key leaves the
/// main publication for the insert-only one, in one transaction, so no insert is missed.
pub async fn rearrange(
    client: &Client,
    publication_name: &str,
    streaming: &Streaming,
    keyless: &BTreeSet<TableName>,
) -> Result<(), CatalogError> {
    arrange(
        client,
        publication_name,
        &streaming.tables,
        keyless,
        streaming.streams_inserts(),
    )
    .await
    .map(drop)
}

/// Creates the insert-only publication when missing and returns the WAL position from
/// which it can be streamed; `None` when it is missing and the role may not create it.
///
/// A position is recorded in its comment right after creating it. One without such a
/// comment was made by hand (or pg2lake stopped between the two steps): it gets one now
/// when pg2lake's role owns it, and is taken as streamable when it does not.
async fn ensure_inserts_publication(
    client: &Client,
    name: &str,
) -> Result<Option<Lsn>, CatalogError> {
    let existing = publication(client, name).await?;
    if let Some(lsn) = existing.as_ref().and_then(Publication::streamable_from) {
        return Ok(Some(lsn));
    }
    let quoted = quote_ident(name);
    if existing.is_none() {
        let created = client
            .batch_execute(&format!(
                "CREATE PUBLICATION {quoted} WITH (publish = 'insert, truncate', publish_via_partition_root = true)"
            ))
            .await;
        match created {
            Ok(()) => tracing::info!(publication = name, "created insert-only publication"),
            Err(err) if is_insufficient_privilege(&err) => {
                tracing::debug!(publication = name, error = %err, "may not create the insert-only publication");
                return Ok(None);
            }
            Err(err) => {
                return Err(CatalogError::Query {
                    what: format!("creating publication {name}"),
                    source: err,
                });
            }
        }
    }
    // Read after the creation committed: any later position is a safe one to record.
    let lsn = catalog::current_wal_lsn(client).await?;
    let comment = format!("{COMMENT_PREFIX}{lsn}");
    let commented = client
        .batch_execute(&format!(
            "COMMENT ON PUBLICATION {quoted} IS {}",
            quote_literal(&comment)
        ))
        .await;
    match commented {
        Ok(()) => Ok(Some(lsn)),
        // Made by someone else, before pg2lake's slot as the README asks.
        Err(err) if is_insufficient_privilege(&err) && existing.is_some() => Ok(Some(Lsn::ZERO)),
        Err(err) => Err(CatalogError::Query {
            what: format!("commenting on publication {name} (fix: make pg2lake's role own it)"),
            source: err,
        }),
    }
}

fn is_insufficient_privilege(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
}

/// Carries out [`plan`] in one transaction, creating the main publication when missing.
async fn arrange(
    client: &Client,
    publication_name: &str,
    tables: &[TableName],
    keyless: &BTreeSet<TableName>,
    inserts_streamed: bool,
) -> Result<Plan, CatalogError> {
    let inserts_name = inserts_name(publication_name);
    let main = publication(client, publication_name).await?;
    let inserts = if inserts_streamed {
        publication(client, &inserts_name)
            .await?
            .map(|p| p.tables)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let plan = plan(
        tables,
        keyless,
        main.as_ref(),
        inserts_streamed.then_some(inserts.as_slice()),
    );
    let statements = plan.statements(main.as_ref(), publication_name, &inserts_name);
    if statements.is_empty() {
        return Ok(plan);
    }
    // One transaction: a table moved between the publications is in one of them at every
    // WAL position, so the stream misses none of its inserts.
    let sql = format!("BEGIN; {}; COMMIT", statements.join("; "));
    if let Err(err) = client.batch_execute(&sql).await {
        // The failed transaction must not linger on the connection.
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(CatalogError::Query {
            what: format!(
                "updating publications {publication_name} and {inserts_name} (fix: make pg2lake's role own both publications and the tables, or make the changes yourself: {})",
                statements.join("; ")
            ),
            source: err,
        });
    }
    for table in &plan.main_drop {
        if keyless.contains(table) {
            tracing::info!(table = %table, from = publication_name, to = %inserts_name, "moved table without a replica identity to the insert-only publication");
        }
    }
    tracing::info!(
        publication = publication_name,
        added = plan.main_add.len(),
        removed = plan.main_drop.len(),
        inserts_added = plan.inserts_add.len(),
        inserts_removed = plan.inserts_drop.len(),
        "updated publications"
    );
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableName {
        TableName::new("public", name)
    }

    fn set(names: &[&str]) -> BTreeSet<TableName> {
        names.iter().map(|n| t(n)).collect()
    }

    fn explicit(names: &[&str]) -> Publication {
        Publication {
            publishes_updates: true,
            via_root: true,
            tables: names.iter().map(|n| t(n)).collect(),
            ..Publication::default()
        }
    }

    #[test]
    fn a_new_setup_puts_keyless_tables_only_in_the_insert_only_publication() {
        let tables = [t("logs"), t("orders")];
        let plan = plan(&tables, &set(&["logs"]), None, Some(&[]));
        assert_eq!(plan.main_add, vec![t("orders")]);
        assert_eq!(plan.inserts_add, vec![t("logs")]);
        assert!(plan.main_drop.is_empty() && plan.waiting.is_empty());
    }

    #[test]
    fn a_keyless_table_in_the_main_publication_moves_out_in_the_same_plan() {
        let tables = [t("logs"), t("orders")];
        let main = explicit(&["logs", "orders"]);
        let plan = plan(&tables, &set(&["logs"]), Some(&main), Some(&[]));
        assert_eq!(plan.main_drop, vec![t("logs")]);
        assert_eq!(plan.inserts_add, vec![t("logs")]);
        assert!(plan.main_add.is_empty());
    }

    #[test]
    fn a_table_that_got_a_key_returns_to_the_main_publication() {
        let tables = [t("logs")];
        let plan = plan(&tables, &set(&[]), Some(&explicit(&[])), Some(&[t("logs")]));
        assert_eq!(plan.main_add, vec![t("logs")]);
        assert_eq!(plan.inserts_drop, vec![t("logs")]);
    }

    #[test]
    fn keyless_tables_wait_while_the_insert_only_publication_is_not_streamable() {
        let tables = [t("logs"), t("old_logs"), t("orders")];
        let main = explicit(&["old_logs", "orders"]);
        let plan = plan(&tables, &set(&["logs", "old_logs"]), Some(&main), None);
        // Already published (and already breaking updates): left until the switch, so
        // its inserts keep streaming; never added anywhere they could break more.
        assert!(plan.main_drop.is_empty() && plan.main_add.is_empty());
        assert!(plan.inserts_add.is_empty() && plan.inserts_drop.is_empty());
        assert_eq!(plan.waiting, vec![t("logs")]);
    }

    #[test]
    fn publications_for_all_tables_or_schemas_are_never_narrowed() {
        let tables = [t("logs"), t("orders")];
        let all = Publication {
            all_tables: true,
            ..explicit(&["logs", "orders", "other"])
        };
        let plan_all = plan(&tables, &set(&["logs"]), Some(&all), Some(&[]));
        assert_eq!(plan_all, Plan::default());
        let schema = Publication {
            by_schema: true,
            ..explicit(&["logs", "other"])
        };
        let plan_schema = plan(&tables, &set(&["logs"]), Some(&schema), Some(&[]));
        assert_eq!(plan_schema.main_add, vec![t("orders")], "keyed: added");
        assert!(plan_schema.main_drop.is_empty(), "nothing removed");
        assert!(
            plan_schema.inserts_add.is_empty(),
            "streams through the schema one"
        );
    }

    #[test]
    fn unconfigured_tables_leave_an_explicit_main_publication() {
        let plan = plan(
            &[t("orders")],
            &set(&[]),
            Some(&explicit(&["gone", "orders"])),
            Some(&[]),
        );
        assert_eq!(plan.main_drop, vec![t("gone")]);
    }

    #[test]
    fn a_main_publication_without_updates_may_hold_keyless_tables() {
        let main = Publication {
            publishes_updates: false,
            ..explicit(&[])
        };
        let plan = plan(&[t("logs")], &set(&["logs"]), Some(&main), Some(&[]));
        assert_eq!(plan.main_add, vec![t("logs")]);
        assert!(plan.inserts_add.is_empty());
    }

    #[test]
    fn the_insert_only_publication_streams_once_the_slot_has_passed_its_creation() {
        let from: Lsn = "0/2000".parse().unwrap();
        let slot = |restart: Option<&str>| SlotInfo {
            plugin: Some("pgoutput".into()),
            database: None,
            active_pid: None,
            confirmed_flush_lsn: None,
            restart_lsn: restart.map(|l| l.parse().unwrap()),
            wal_status: None,
        };
        assert!(slot_has_passed(None, from), "a slot created after it");
        assert!(slot_has_passed(Some(&slot(Some("0/2000"))), from));
        assert!(!slot_has_passed(Some(&slot(Some("0/1FFF"))), from));
        assert!(!slot_has_passed(Some(&slot(None)), from), "no restart_lsn");
    }

    #[test]
    fn the_streamable_position_is_read_back_from_the_comment() {
        let with = |comment: &str| Publication {
            comment: Some(comment.to_owned()),
            ..Publication::default()
        };
        assert_eq!(
            with(&format!("{COMMENT_PREFIX}0/16B3748")).streamable_from(),
            Some("0/16B3748".parse().unwrap())
        );
        assert_eq!(with("made by hand").streamable_from(), None);
        assert_eq!(Publication::default().streamable_from(), None);
    }
}
