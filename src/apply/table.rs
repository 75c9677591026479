//! One replicated table as the applier holds it: its current schema, the rows not yet
//! handed to the lake writer, and the lake table.

use std::sync::Arc;

use super::ApplyError;
use crate::batch::TableBatch;
use crate::lake::LakeTable;
use crate::lsn::Lsn;
use crate::metrics;
use crate::privacy::{self, Policy, Protection};
use crate::schema::{Evolution, TableSchema, TypeChangeKind, TypeChangePolicy, UNKNOWN_TYPE};

/// One replicated table: its schema, the rows not yet handed to the writer, the lake table.
pub struct ReplicatedTable {
    pub(super) schema: Arc<TableSchema>,
    pub(super) batch: TableBatch,
    pub(super) lake: LakeTable,
    /// Rows handed to the lake writer since its last commit.
    pub(super) written: usize,
    /// Changes per op since the last commit (`metrics::OPS` order), for metrics.
    pub(super) op_counts: [u64; 4],
    /// How type changes the lake column cannot hold are followed.
    pub(super) type_change: TypeChangePolicy,
}

impl ReplicatedTable {
    /// Pairs a table schema with its opened lake table.
    pub fn new(schema: Arc<TableSchema>, lake: LakeTable) -> Self {
        ReplicatedTable {
            batch: TableBatch::new(schema.clone()),
            schema,
            lake,
            written: 0,
            op_counts: [0; 4],
            type_change: TypeChangePolicy::default(),
        }
    }

    /// Sets how type changes the lake column cannot hold are followed.
    pub fn with_type_change_policy(mut self, policy: TypeChangePolicy) -> Self {
        self.type_change = policy;
        self
    }

    /// How type changes the lake column cannot hold are followed.
    pub fn type_change_policy(&self) -> TypeChangePolicy {
        self.type_change
    }

    pub(super) fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema.namespace, self.schema.name)
    }

    /// The table's current schema (source columns and lake layout).
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// The lake table, for the initial snapshot, which writes and commits it directly.
    pub fn lake_mut(&mut self) -> &mut LakeTable {
        &mut self.lake
    }

    /// The lake table.
    pub fn lake(&self) -> &LakeTable {
        &self.lake
    }

    /// The highest source commit LSN committed to this table, if any.
    pub fn committed_lsn(&self) -> Option<Lsn> {
        self.lake.committed_lsn()
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.batch.is_empty() || self.written > 0
    }

    /// Switches to the schema a Relation message (or the catalog) describes: rows
    /// buffered with the old one go to the lake writer first, and a grown layout is
    /// staged in the lake table for its next commit.
    pub async fn evolve(&mut self, evolution: Evolution) -> Result<(), ApplyError> {
        if evolution.schema.same_source(&self.schema) {
            return Ok(());
        }
        self.write_chunk().await?;
        if evolution.layout_changed() {
            // A widened column makes the lake rewrite its files (see `lake::table`).
            self.lake.evolve(evolution.schema.arrow.clone()).await?;
        }
        record_policies(&mut self.lake, &evolution.schema).await?;
        let table = self.qualified_name();
        if evolution.is_visible() {
            tracing::info!(
                table = %table,
                added = ?evolution.added,
                dropped = ?evolution.dropped,
                retyped = ?evolution.retyped,
                "table schema changed"
            );
        }
        for change in &evolution.type_changes {
            let policy = match change.kind {
                TypeChangeKind::Widened => "widen",
                TypeChangeKind::NewColumn => self.type_change.as_str(),
            };
            tracing::warn!(
                table = %table,
                column = %change.column,
                old_type = %change.old,
                new_type = %change.new,
                policy,
                lake_column = %change.lake_column,
                "column type changed"
            );
        }
        // A new column made by a type change counts as that change, not as an added column.
        let moved = evolution
            .type_changes
            .iter()
            .filter(|c| c.kind == TypeChangeKind::NewColumn)
            .count();
        let metrics = metrics::global();
        metrics.record_schema_changes(
            &table,
            "add_column",
            evolution.added.len() - moved.min(evolution.added.len()),
        );
        metrics.record_schema_changes(&table, "drop_column", evolution.dropped.len());
        metrics.record_schema_changes(&table, "retype", evolution.retyped.len());
        metrics.record_schema_changes(&table, "widen", evolution.widened().count());
        metrics.record_schema_changes(&table, "new_column", moved);
        self.schema = Arc::new(evolution.schema);
        self.batch = TableBatch::new(self.schema.clone());
        Ok(())
    }

    pub(super) async fn write_chunk(&mut self) -> Result<(), ApplyError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = self.batch.len();
        let chunk = self.batch.finish()?;
        self.lake.write(chunk).await?;
        self.written += rows;
        Ok(())
    }
}

/// Records in the lake table what `schema`'s policies are (staged for its next commit,
/// nothing when unchanged): each protected column's policy, the hash key's id, and the
/// columns without statistics, which every writer of the table reads.
async fn record_policies(lake: &mut LakeTable, schema: &TableSchema) -> Result<(), ApplyError> {
    let current = schema
        .columns
        .iter()
        .filter(|c| c.type_oid != UNKNOWN_TYPE)
        .map(|c| (c.name.as_str(), c.policy))
        .chain(
            schema
                .excluded
                .iter()
                .map(|n| (n.as_str(), Policy::Exclude)),
        );
    let recorded = lake.property(privacy::POLICIES_PROPERTY)?;
    if let Some(merged) = privacy::merge_recorded(recorded.as_deref(), current) {
        lake.set_property(privacy::POLICIES_PROPERTY, &merged)?;
    }
    let key = schema.columns.iter().find_map(|c| match &c.protection {
        Some(Protection::Hash(key)) => Some(key),
        _ => None,
    });
    if let Some(key) = key {
        lake.set_property(privacy::HASH_KEY_ID_PROPERTY, key.id())?;
    }
    let unstated: Vec<&str> = schema
        .columns
        .iter()
        .filter(|c| !c.statistics)
        .map(|c| c.name.as_str())
        .collect();
    let property = lake.property(privacy::NO_STATISTICS_PROPERTY)?;
    if !unstated.is_empty() || property.is_some() {
        let list = serde_json::to_string(&unstated).unwrap_or_default();
        lake.set_no_statistics(&list).await?;
    }
    Ok(())
}
