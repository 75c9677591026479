//! Schema evolution: a lake table's layout is the union of every column its source table
//! ever had, so `ALTER TABLE` does not stop replication.
//!
//! ```text
//!   lake layout before          Relation message (or catalog)      lake layout after
//!   id qty note                 id note price                      id qty note price
//!                               ──────────────────────────►        tuple_columns: 0 2 3
//!                               (qty dropped, price added)         (qty null from now on)
//! ```
//!
//! Rules, by what a Relation message (or the catalog at start-up) shows:
//! - ADD COLUMN: the column joins the lake after the known source columns, nullable;
//!   rows written before read as null.
//! - DROP COLUMN: the column stays in the lake and is null in rows from then on.
//! - A type change whose lake (Arrow) type is unchanged (`varchar(10)` → `varchar(20)` →
//!   `text`, `timestamp(3)` → `timestamp`): adopted in place.
//! - A widening (`int` → `bigint`, `real` → `double precision`, `numeric(12,2)` →
//!   `numeric(14,2)`, `date` → `timestamp`; see `widen`): the lake column takes the
//!   wider type ([`TypeChangeKind::Widened`]); the lake rewrites its older files.
//! - A source type narrower than its lake column (`bigint` back to `int`, or changes from
//!   before a widening replayed after a restart): the lake column keeps its type and the
//!   values are widened into it.
//! - Any other type change, by [`TypeChangePolicy`]: `new_column` sends the values to
//!   the lake column `<column>__<lake type>` (created when missing; the old column keeps
//!   its history and is null from then on), `fail` stops with
//!   [`SchemaError::IncompatibleType`].
//! - RENAME COLUMN: pgoutput only shows the new name at the same position, which is
//!   indistinguishable from DROP + ADD, and is handled as such: the old column keeps its
//!   history (null from then on), the new one starts null for older rows. Nothing is lost.
//!
//! Invariants:
//! - The layout only grows and never reorders: source columns in first-seen order, then
//!   the metadata columns in their fixed order. Files written with any earlier layout
//!   are read by column name (Delta without column mapping), missing columns as null.
//! - Names are matched exactly; a new column equal to a known one ignoring case is an
//!   error, because Delta treats the two as the same column.

use std::collections::HashSet;

use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};

use super::RelationColumn;
use super::{
    Conversion, META_COLUMNS, SchemaError, SourceColumn, TableSchema, TypeCatalog, UNKNOWN_TYPE,
    lake_arrow_schema, meta_fields,
};
use crate::privacy::Policy;

/// What pg2lake does when a column's type changes to one its lake column cannot hold
/// and that is not a widening (`schema.on_type_change`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeChangePolicy {
    /// Values of the new type go to the lake column `<column>__<lake type>` (e.g.
    /// `qty__string`), created when missing; the old column keeps its history. Replication
    /// goes on and nothing is lost.
    #[default]
    NewColumn,
    /// Stop pg2lake with an error naming the change and the fixes.
    Fail,
}

impl TypeChangePolicy {
    /// The config spelling, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeChangePolicy::NewColumn => "new_column",
            TypeChangePolicy::Fail => "fail",
        }
    }
}

/// How a column's changed type was followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeChangeKind {
    /// The lake column took the wider type in place.
    Widened,
    /// The values go to another lake column ([`TypeChangePolicy::NewColumn`]).
    NewColumn,
}

impl TypeChangeKind {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeChangeKind::Widened => "widen",
            TypeChangeKind::NewColumn => "new_column",
        }
    }
}

/// One source column whose type changed to a different lake type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeChange {
    /// The source column.
    pub column: String,
    /// The lake column its values go to from now on.
    pub lake_column: String,
    /// The previous type, Postgres and lake form, e.g. `int4 (lake type integer)`.
    pub old: String,
    /// The new type in the same form.
    pub new: String,
    /// How it was followed.
    pub kind: TypeChangeKind,
}

/// The outcome of [`TableSchema::evolve`]: the new schema and what changed.
#[derive(Debug, Clone)]
pub struct Evolution {
    /// The schema to apply changes with from now on.
    pub schema: TableSchema,
    /// Columns new to the lake table (its layout grows by these).
    pub added: Vec<String>,
    /// Columns the source had and no longer has (they stay in the lake, null from now).
    pub dropped: Vec<String>,
    /// Columns whose Postgres type changed without changing their lake type.
    pub retyped: Vec<String>,
    /// Columns whose type changed to another lake type: widened in place, or moved to a
    /// new lake column (which is also in `added` when it is new).
    pub type_changes: Vec<TypeChange>,
}

impl Evolution {
    /// Whether the lake table's layout (its Delta schema) changes.
    pub fn layout_changed(&self) -> bool {
        !self.added.is_empty() || self.widened().next().is_some()
    }

    /// The lake columns whose type widened.
    pub fn widened(&self) -> impl Iterator<Item = &TypeChange> {
        self.type_changes
            .iter()
            .filter(|change| change.kind == TypeChangeKind::Widened)
    }

    /// Whether anything a log reader cares about changed.
    pub fn is_visible(&self) -> bool {
        !(self.added.is_empty()
            && self.dropped.is_empty()
            && self.retyped.is_empty()
            && self.type_changes.is_empty())
    }
}

impl TableSchema {
    /// The layout of an existing lake table, from its Arrow schema: every non-metadata
    /// column is a source column whose Postgres type is not known yet
    /// ([`UNKNOWN_TYPE`]) and no change tuple maps onto it until [`TableSchema::evolve`].
    pub fn from_lake(
        namespace: &str,
        name: &str,
        lake: &Schema,
    ) -> Result<TableSchema, SchemaError> {
        let table = format!("{namespace}.{name}");
        let unwritable = |reason: String| SchemaError::LakeLayout {
            table: table.clone(),
            reason,
        };
        for meta in meta_fields() {
            match lake.field_with_name(meta.name()) {
                Ok(field) if field.data_type() == meta.data_type() => {}
                Ok(field) => {
                    return Err(unwritable(format!(
                        "metadata column {} is {} instead of {}",
                        meta.name(),
                        field.data_type(),
                        meta.data_type()
                    )));
                }
                Err(_) => {
                    return Err(unwritable(format!(
                        "metadata column {} is missing",
                        meta.name()
                    )));
                }
            }
        }
        let mut columns = Vec::new();
        for field in lake.fields() {
            if META_COLUMNS.contains(&field.name().as_str()) {
                continue;
            }
            let conversion = Conversion::for_arrow(field.data_type()).ok_or_else(|| {
                unwritable(format!(
                    "column {} has type {}, which pg2lake never writes",
                    field.name(),
                    field.data_type()
                ))
            })?;
            columns.push(SourceColumn {
                name: field.name().clone(),
                type_oid: UNKNOWN_TYPE,
                type_modifier: -1,
                is_key: false,
                type_name: None,
                conversion,
                data_type: conversion.data_type(),
                policy: Policy::Clear,
                protection: None,
                statistics: true,
            });
        }
        Ok(TableSchema {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            tuple_columns: Vec::new(),
            excluded: Vec::new(),
            arrow: lake_arrow_schema(&columns),
            columns,
        })
    }

    /// The schema after the source table's columns became `columns` (a Relation message,
    /// or the catalog at start-up): the union of the known columns and `columns`, with
    /// change tuples mapped onto it. A type change the lake column cannot hold and that
    /// is not a widening is handled by `policy`. Errors on names Delta cannot hold.
    pub fn evolve(
        &self,
        columns: &[RelationColumn],
        policy: TypeChangePolicy,
    ) -> Result<Evolution, SchemaError> {
        self.evolve_with(columns, &TypeCatalog::default(), policy)
    }

    /// [`TableSchema::evolve`] with column types resolved through `types` (catalog
    /// types and configured column types): what replication uses.
    pub fn evolve_with(
        &self,
        columns: &[RelationColumn],
        types: &TypeCatalog,
        policy: TypeChangePolicy,
    ) -> Result<Evolution, SchemaError> {
        let mut evolving = Evolving::new(self, columns);
        for column in columns {
            evolving.check_name(column)?;
            let privacy = types.policy(&self.namespace, &self.name, column)?;
            if privacy == Policy::Exclude {
                evolving.excluded.push(column.name.clone());
                evolving.tuple_columns.push(None);
                continue;
            }
            let incoming = SourceColumn::typed(
                column,
                types,
                types.conversion(&self.namespace, &self.name, column)?,
                privacy,
                types.policies().protection(
                    &format!("{}.{}.{}", self.namespace, self.name, column.name),
                    privacy,
                )?,
                types
                    .policies()
                    .statistics(&self.namespace, &self.name, &column.name),
            );
            evolving.map(column, incoming, policy)?;
        }
        Ok(evolving.finish())
    }

    /// Whether `other` maps change tuples the same way: same columns with the same
    /// Postgres types and keys, same tuple layout. When it does, a Relation message
    /// changed nothing pg2lake acts on.
    pub fn same_source(&self, other: &TableSchema) -> bool {
        self.tuple_columns == other.tuple_columns
            && self.columns == other.columns
            && self.excluded == other.excluded
    }
}

/// A [`TableSchema::evolve_with`] under way: the lake columns so far, where the source
/// columns seen so far map onto them, and what changed.
struct Evolving<'a> {
    /// The schema evolved from.
    before: &'a TableSchema,
    /// The source table's columns now.
    columns: &'a [RelationColumn],
    /// The names seen so far, lower-cased: Delta resolves column names
    /// case-insensitively, so collisions are checked that way.
    seen: HashSet<String>,
    lake: Vec<SourceColumn>,
    tuple_columns: Vec<Option<usize>>,
    excluded: Vec<String>,
    added: Vec<String>,
    retyped: Vec<String>,
    type_changes: Vec<TypeChange>,
}

impl<'a> Evolving<'a> {
    /// Nothing evolved yet: the lake columns of `before`, no source column mapped.
    fn new(before: &'a TableSchema, columns: &'a [RelationColumn]) -> Evolving<'a> {
        Evolving {
            before,
            columns,
            seen: HashSet::with_capacity(columns.len()),
            lake: before.columns.clone(),
            tuple_columns: Vec::with_capacity(columns.len()),
            excluded: Vec::new(),
            added: Vec::new(),
            retyped: Vec::new(),
            type_changes: Vec::new(),
        }
    }

    /// `schema.name` of the table, for errors.
    fn table(&self) -> String {
        self.before.qualified_name()
    }

    /// Errors on a name Delta cannot hold beside the others: a metadata column's, or one
    /// seen before (ignoring case).
    fn check_name(&mut self, column: &RelationColumn) -> Result<(), SchemaError> {
        if META_COLUMNS
            .iter()
            .any(|meta| meta.eq_ignore_ascii_case(&column.name))
        {
            return Err(SchemaError::ReservedColumn {
                table: self.table(),
                column: column.name.clone(),
                reserved: META_COLUMNS.join(", "),
            });
        }
        if !self.seen.insert(column.name.to_ascii_lowercase()) {
            let first = self
                .columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&column.name))
                .map_or("", |c| c.name.as_str());
            return Err(self.duplicate(first, column));
        }
        Ok(())
    }

    /// The error for `column`, whose name collides with the column named `first`.
    fn duplicate(&self, first: &str, column: &RelationColumn) -> SchemaError {
        SchemaError::DuplicateColumn {
            table: self.table(),
            first: first.to_owned(),
            second: column.name.clone(),
        }
    }

    /// Maps `column`, typed as `incoming`, onto a lake column: a new one, or the known one
    /// of its name when it holds the type or widens to it; otherwise `policy` decides.
    fn map(
        &mut self,
        column: &RelationColumn,
        incoming: SourceColumn,
        policy: TypeChangePolicy,
    ) -> Result<(), SchemaError> {
        let Some(index) = position(&self.lake, &column.name) else {
            self.added.push(column.name.clone());
            self.lake.push(incoming);
            self.tuple_columns.push(Some(self.lake.len() - 1));
            return Ok(());
        };
        let known = &self.lake[index];
        if known.name != column.name {
            return Err(self.duplicate(&known.name, column));
        }
        if holds(known, &incoming) {
            if known.type_oid != UNKNOWN_TYPE
                && (known.type_oid, known.type_modifier)
                    != (incoming.type_oid, incoming.type_modifier)
            {
                self.retyped.push(column.name.clone());
            }
            self.lake[index] = SourceColumn {
                data_type: known.data_type.clone(),
                ..incoming
            };
            self.tuple_columns.push(Some(index));
        } else if known.lake_conversion().widens_to(incoming.conversion) {
            self.type_changes.push(TypeChange {
                column: column.name.clone(),
                lake_column: column.name.clone(),
                old: known.type_description(),
                new: incoming.type_description(),
                kind: TypeChangeKind::Widened,
            });
            self.lake[index] = incoming;
            self.tuple_columns.push(Some(index));
        } else if policy == TypeChangePolicy::Fail {
            return Err(SchemaError::IncompatibleType {
                table: self.table(),
                column: column.name.clone(),
                old: known.type_description(),
                new: incoming.type_description(),
                old_pg: if known.type_oid == UNKNOWN_TYPE {
                    "its previous type".to_owned()
                } else {
                    known.pg_type()
                },
            });
        } else {
            self.map_to_new_column(column, index, incoming)?;
        }
        Ok(())
    }

    /// Maps `column`, whose type `incoming` the lake column at `known` cannot hold, onto
    /// the lake column `<column>__<lake type>`, created when missing
    /// ([`TypeChangePolicy::NewColumn`]).
    fn map_to_new_column(
        &mut self,
        column: &RelationColumn,
        known: usize,
        incoming: SourceColumn,
    ) -> Result<(), SchemaError> {
        let target = format!("{}__{}", column.name, incoming.conversion.column_suffix());
        if let Some(other) = self
            .columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&target))
        {
            return Err(SchemaError::NewColumnTaken {
                table: self.table(),
                column: column.name.clone(),
                target,
                taken_by: other.name.clone(),
            });
        }
        let old = self.lake[known].type_description();
        let change = |lake_column: &str| TypeChange {
            column: column.name.clone(),
            lake_column: lake_column.to_owned(),
            old: old.clone(),
            new: incoming.type_description(),
            kind: TypeChangeKind::NewColumn,
        };
        match position(&self.lake, &target) {
            Some(existing) => {
                let held = &self.lake[existing];
                if held.name != target || !holds(held, &incoming) {
                    return Err(SchemaError::NewColumnTaken {
                        table: self.table(),
                        column: column.name.clone(),
                        taken_by: format!("{} ({})", held.name, held.type_description()),
                        target,
                    });
                }
                // Already the target in this session, or known only from the lake
                // (a restart): the change was reported when it happened.
                let ongoing = self.before.tuple_columns.contains(&Some(existing))
                    || self
                        .before
                        .columns
                        .get(existing)
                        .is_some_and(|c| c.type_oid == UNKNOWN_TYPE);
                if !ongoing {
                    self.type_changes.push(change(&target));
                }
                self.lake[existing] = SourceColumn {
                    name: target,
                    data_type: held.data_type.clone(),
                    ..incoming
                };
                self.tuple_columns.push(Some(existing));
            }
            None => {
                self.type_changes.push(change(&target));
                self.added.push(target.clone());
                self.lake.push(SourceColumn {
                    name: target,
                    ..incoming
                });
                self.tuple_columns.push(Some(self.lake.len() - 1));
            }
        }
        Ok(())
    }

    /// The evolved schema, and what changed: columns mapped before and not now are
    /// dropped.
    fn finish(self) -> Evolution {
        let before = self.before;
        let dropped = before
            .tuple_columns
            .iter()
            .flatten()
            .filter(|&&index| !self.tuple_columns.contains(&Some(index)))
            .map(|&index| before.columns[index].name.clone())
            .collect();
        let widened = self
            .type_changes
            .iter()
            .any(|c| c.kind == TypeChangeKind::Widened);
        let arrow = if self.added.is_empty() && !widened {
            before.arrow.clone()
        } else {
            lake_arrow_schema(&self.lake)
        };
        Evolution {
            schema: TableSchema {
                namespace: before.namespace.clone(),
                name: before.name.clone(),
                columns: self.lake,
                tuple_columns: self.tuple_columns,
                excluded: self.excluded,
                arrow,
            },
            added: self.added,
            dropped,
            retyped: self.retyped,
            type_changes: self.type_changes,
        }
    }
}

/// Where the lake column named `name` (compared case-insensitively, as Delta does) is.
fn position(lake: &[SourceColumn], name: &str) -> Option<usize> {
    lake.iter().position(|c| c.name.eq_ignore_ascii_case(name))
}

/// Whether the lake column `known` holds every value of `incoming` as is: the same lake
/// type, or a narrower one that widens into it exactly.
fn holds(known: &SourceColumn, incoming: &SourceColumn) -> bool {
    known.data_type == incoming.data_type || incoming.conversion.widens_to(known.lake_conversion())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::fixtures::{col, typmod};
    use crate::schema::{META_COLUMNS, oid};

    /// varchar(n)'s typmod.
    fn varchar(n: i32) -> i32 {
        n + 4
    }

    fn names(schema: &TableSchema) -> Vec<&str> {
        schema
            .arrow
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect()
    }

    fn base() -> TableSchema {
        TableSchema::new(
            "public",
            "orders",
            &[
                col("id", oid::INT8, -1),
                col("qty", oid::INT4, -1),
                col("note", oid::VARCHAR, varchar(10)),
            ],
        )
        .unwrap()
    }

    fn with_meta<'a>(source: &[&'a str]) -> Vec<&'a str> {
        source.iter().copied().chain(META_COLUMNS).collect()
    }

    #[test]
    fn unchanged_columns_change_nothing() {
        let schema = base();
        let same = schema
            .evolve(
                &[
                    col("id", oid::INT8, -1),
                    col("qty", oid::INT4, -1),
                    col("note", oid::VARCHAR, varchar(10)),
                ],
                TypeChangePolicy::Fail,
            )
            .unwrap();
        assert!(!same.is_visible());
        assert!(!same.layout_changed());
        assert!(same.schema.same_source(&schema));
        assert_eq!(same.schema.arrow, schema.arrow);
    }

    #[test]
    fn an_added_column_joins_before_the_metadata_columns() {
        let evolution = base()
            .evolve(
                &[
                    col("id", oid::INT8, -1),
                    col("qty", oid::INT4, -1),
                    col("note", oid::VARCHAR, varchar(10)),
                    col("price", oid::FLOAT8, -1),
                ],
                TypeChangePolicy::Fail,
            )
            .unwrap();
        assert_eq!(evolution.added, ["price"]);
        assert!(evolution.dropped.is_empty() && evolution.retyped.is_empty());
        assert!(evolution.layout_changed());
        assert_eq!(
            names(&evolution.schema),
            with_meta(&["id", "qty", "note", "price"])
        );
        assert_eq!(
            evolution.schema.tuple_columns,
            [Some(0), Some(1), Some(2), Some(3)]
        );
        let price = evolution.schema.arrow.field_with_name("price").unwrap();
        assert!(price.is_nullable());
        assert_eq!(price.data_type(), &arrow::datatypes::DataType::Float64);
    }

    #[test]
    fn a_dropped_column_stays_in_the_lake_and_is_unmapped() {
        let evolution = base()
            .evolve(
                &[
                    col("id", oid::INT8, -1),
                    col("note", oid::VARCHAR, varchar(10)),
                ],
                TypeChangePolicy::Fail,
            )
            .unwrap();
        assert_eq!(evolution.dropped, ["qty"]);
        assert!(evolution.added.is_empty());
        assert!(!evolution.layout_changed());
        assert!(evolution.is_visible());
        assert_eq!(names(&evolution.schema), with_meta(&["id", "qty", "note"]));
        assert_eq!(evolution.schema.tuple_columns, [Some(0), Some(2)]);
        // Dropped once is not dropped again.
        let again = evolution
            .schema
            .evolve(
                &[
                    col("id", oid::INT8, -1),
                    col("note", oid::VARCHAR, varchar(10)),
                ],
                TypeChangePolicy::Fail,
            )
            .unwrap();
        assert!(!again.is_visible());
    }

    #[test]
    fn a_rename_is_a_drop_and_an_add_at_the_same_position() {
        let evolution = base()
            .evolve(
                &[
                    col("id", oid::INT8, -1),
                    col("quantity", oid::INT4, -1),
                    col("note", oid::VARCHAR, varchar(10)),
                ],
                TypeChangePolicy::Fail,
            )
            .unwrap();
        assert_eq!(evolution.added, ["quantity"]);
        assert_eq!(evolution.dropped, ["qty"]);
        assert_eq!(
            names(&evolution.schema),
            with_meta(&["id", "qty", "note", "quantity"])
        );
        assert_eq!(evolution.schema.tuple_columns, [Some(0), Some(3), Some(2)]);
    }

    #[test]
    fn a_type_change_with_the_same_lake_type_is_adopted_in_place() {
        let schema = base();
        for (type_oid, typmod) in [
            (oid::VARCHAR, varchar(20)),
            (oid::TEXT, -1),
            (oid::BPCHAR, varchar(5)),
        ] {
            let evolution = schema
                .evolve(
                    &[
                        col("id", oid::INT8, -1),
                        col("qty", oid::INT4, -1),
                        col("note", type_oid, typmod),
                    ],
                    TypeChangePolicy::Fail,
                )
                .unwrap();
            assert_eq!(evolution.retyped, ["note"], "oid {type_oid}");
            assert!(!evolution.layout_changed());
            assert_eq!(evolution.schema.arrow, schema.arrow);
            assert_eq!(evolution.schema.columns[2].type_oid, type_oid);
            assert_eq!(evolution.schema.columns[2].type_modifier, typmod);
            assert!(!evolution.schema.same_source(&schema));
        }
        // A pure typmod change on a type whose lake type ignores it: timestamp(3) → (6).
        let ts = TableSchema::new("s", "t", &[col("at", oid::TIMESTAMP, 3)]).unwrap();
        let evolution = ts
            .evolve(&[col("at", oid::TIMESTAMP, 6)], TypeChangePolicy::Fail)
            .unwrap();
        assert_eq!(evolution.retyped, ["at"]);
        assert!(!evolution.layout_changed());
    }

    #[test]
    fn an_incompatible_type_change_is_a_clear_error() {
        let err = base()
            .evolve(
                &[
                    col("id", oid::INT8, -1),
                    col("qty", oid::TEXT, -1),
                    col("note", oid::VARCHAR, varchar(10)),
                ],
                TypeChangePolicy::Fail,
            )
            .unwrap_err();
        assert_eq!(
            err,
            SchemaError::IncompatibleType {
                table: "public.orders".into(),
                column: "qty".into(),
                old: "int4 (lake type integer)".into(),
                new: "text (lake type string)".into(),
                old_pg: "int4".into(),
            }
        );
        let message = err.to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("fix:"), "{message}");
        // Fewer fractional digits is not a widening either.
        let numeric = TableSchema::new("s", "t", &[col("n", oid::NUMERIC, typmod(12, 2))]).unwrap();
        assert!(matches!(
            numeric.evolve(
                &[col("n", oid::NUMERIC, typmod(14, 1))],
                TypeChangePolicy::Fail
            ),
            Err(SchemaError::IncompatibleType { .. })
        ));
    }

    #[test]
    fn a_widening_changes_the_lake_type_in_place() {
        let schema = base();
        for policy in [TypeChangePolicy::Fail, TypeChangePolicy::NewColumn] {
            let evolution = schema
                .evolve(
                    &[
                        col("id", oid::INT8, -1),
                        col("qty", oid::INT8, -1),
                        col("note", oid::VARCHAR, varchar(10)),
                    ],
                    policy,
                )
                .unwrap();
            assert_eq!(
                evolution.type_changes,
                [TypeChange {
                    column: "qty".into(),
                    lake_column: "qty".into(),
                    old: "int4 (lake type integer)".into(),
                    new: "int8 (lake type long)".into(),
                    kind: TypeChangeKind::Widened,
                }]
            );
            assert!(evolution.added.is_empty() && evolution.retyped.is_empty());
            assert!(evolution.layout_changed() && evolution.is_visible());
            assert_eq!(names(&evolution.schema), with_meta(&["id", "qty", "note"]));
            let qty = evolution.schema.arrow.field_with_name("qty").unwrap();
            assert_eq!(qty.data_type(), &arrow::datatypes::DataType::Int64);
            assert_eq!(evolution.schema.tuple_columns, [Some(0), Some(1), Some(2)]);
        }
        let numeric = TableSchema::new("s", "t", &[col("n", oid::NUMERIC, typmod(12, 2))]).unwrap();
        let wider = numeric
            .evolve(
                &[col("n", oid::NUMERIC, typmod(14, 2))],
                TypeChangePolicy::Fail,
            )
            .unwrap();
        assert_eq!(
            wider.schema.columns[0].data_type,
            arrow::datatypes::DataType::Decimal128(14, 2)
        );
        assert_eq!(wider.widened().count(), 1);
    }

    #[test]
    fn a_narrower_source_type_is_held_by_the_wider_lake_column() {
        // int8 in the lake; the source goes back to int4 (or its older changes replay).
        let wide = TableSchema::new("s", "t", &[col("n", oid::INT8, -1)]).unwrap();
        let evolution = wide
            .evolve(&[col("n", oid::INT4, -1)], TypeChangePolicy::Fail)
            .unwrap();
        assert_eq!(evolution.retyped, ["n"]);
        assert!(evolution.type_changes.is_empty() && !evolution.layout_changed());
        let n = &evolution.schema.columns[0];
        assert_eq!(
            n.conversion,
            Conversion::Int32,
            "values parse as the source type"
        );
        assert_eq!(
            n.data_type,
            arrow::datatypes::DataType::Int64,
            "the lake keeps long"
        );
        assert_eq!(n.type_description(), "int4 (lake type long)");
        assert_eq!(evolution.schema.arrow, wide.arrow);

        // Rows are parsed as int4 and land widened in the long column.
        use crate::batch::{ChangeMeta, Op, TableBatch};
        use crate::pg::pgoutput::TupleValue;
        let mut batch = TableBatch::new(std::sync::Arc::new(evolution.schema));
        let meta = ChangeMeta {
            op: Op::Insert,
            lsn: crate::lsn::Lsn(1),
            seq: 1,
            commit_ts_micros: 0,
            xid: None,
        };
        batch
            .push(&meta, &[TupleValue::Text("-2147483648".into())])
            .unwrap();
        let rows = batch.finish().unwrap();
        let column = rows
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(column.value(0), i64::from(i32::MIN));
    }

    #[test]
    fn an_incompatible_type_change_goes_to_a_new_column_by_policy() {
        let schema = base();
        let source = [
            col("id", oid::INT8, -1),
            col("qty", oid::TEXT, -1),
            col("note", oid::VARCHAR, varchar(10)),
        ];
        let evolution = schema.evolve(&source, TypeChangePolicy::NewColumn).unwrap();
        assert_eq!(
            evolution.type_changes,
            [TypeChange {
                column: "qty".into(),
                lake_column: "qty__string".into(),
                old: "int4 (lake type integer)".into(),
                new: "text (lake type string)".into(),
                kind: TypeChangeKind::NewColumn,
            }]
        );
        assert_eq!(evolution.added, ["qty__string"]);
        assert_eq!(
            evolution.dropped,
            ["qty"],
            "the old column is null from now on"
        );
        assert_eq!(
            names(&evolution.schema),
            with_meta(&["id", "qty", "note", "qty__string"])
        );
        assert_eq!(evolution.schema.tuple_columns, [Some(0), Some(3), Some(2)]);
        assert_eq!(
            evolution
                .schema
                .arrow
                .field_with_name("qty")
                .unwrap()
                .data_type(),
            &arrow::datatypes::DataType::Int32,
            "the old column keeps its type and history"
        );
        let moved = evolution.schema;

        // The same Relation again (or a restart from the lake) is not a new change.
        let again = moved.evolve(&source, TypeChangePolicy::NewColumn).unwrap();
        assert!(!again.is_visible(), "{again:?}");
        let lake = TableSchema::from_lake("public", "orders", &moved.arrow).unwrap();
        let restarted = lake.evolve(&source, TypeChangePolicy::NewColumn).unwrap();
        assert!(restarted.type_changes.is_empty() && restarted.added.is_empty());
        assert_eq!(restarted.schema.tuple_columns, [Some(0), Some(3), Some(2)]);

        // Back to int4: the original column again; text again: the same new column.
        let back = moved
            .evolve(
                &[
                    col("id", oid::INT8, -1),
                    col("qty", oid::INT4, -1),
                    col("note", oid::VARCHAR, varchar(10)),
                ],
                TypeChangePolicy::NewColumn,
            )
            .unwrap();
        assert!(back.type_changes.is_empty() && back.added.is_empty());
        assert_eq!(back.dropped, ["qty__string"]);
        assert_eq!(back.schema.tuple_columns, [Some(0), Some(1), Some(2)]);
        let forth = back
            .schema
            .evolve(&source, TypeChangePolicy::NewColumn)
            .unwrap();
        assert_eq!(forth.type_changes.len(), 1, "reported: it happened again");
        assert!(forth.added.is_empty());
        assert_eq!(forth.schema.tuple_columns, [Some(0), Some(3), Some(2)]);
    }

    #[test]
    fn a_new_column_name_that_is_taken_is_a_clear_error() {
        let schema = base();
        let err = schema
            .evolve(
                &[
                    col("id", oid::INT8, -1),
                    col("qty", oid::TEXT, -1),
                    col("QTY__string", oid::TEXT, -1),
                ],
                TypeChangePolicy::NewColumn,
            )
            .unwrap_err();
        assert!(matches!(err, SchemaError::NewColumnTaken { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("qty__string") && message.contains("fix:"),
            "{message}"
        );
    }

    #[test]
    fn a_re_added_column_reuses_its_lake_column_only_with_the_same_type() {
        let dropped = base()
            .evolve(&[col("id", oid::INT8, -1)], TypeChangePolicy::Fail)
            .unwrap()
            .schema;
        let back = dropped
            .evolve(
                &[col("id", oid::INT8, -1), col("qty", oid::INT4, -1)],
                TypeChangePolicy::Fail,
            )
            .unwrap();
        assert!(back.added.is_empty());
        assert_eq!(back.schema.tuple_columns, [Some(0), Some(1)]);
        assert!(matches!(
            dropped.evolve(
                &[col("id", oid::INT8, -1), col("qty", oid::BOOL, -1)],
                TypeChangePolicy::Fail
            ),
            Err(SchemaError::IncompatibleType { .. })
        ));
    }

    #[test]
    fn names_delta_cannot_hold_are_rejected_when_added() {
        let schema = base();
        let err = schema
            .evolve(
                &[col("id", oid::INT8, -1), col("Qty", oid::INT4, -1)],
                TypeChangePolicy::Fail,
            )
            .unwrap_err();
        assert_eq!(
            err,
            SchemaError::DuplicateColumn {
                table: "public.orders".into(),
                first: "qty".into(),
                second: "Qty".into(),
            }
        );
        assert!(matches!(
            schema.evolve(
                &[col("id", oid::INT8, -1), col("_LSN", oid::INT8, -1)],
                TypeChangePolicy::Fail
            ),
            Err(SchemaError::ReservedColumn { .. })
        ));
    }

    #[test]
    fn a_lake_layout_round_trips_and_gains_source_types() {
        let source = [
            col("id", oid::INT8, -1),
            col("qty", oid::INT4, -1),
            col("note", oid::VARCHAR, varchar(10)),
        ];
        let lake = TableSchema::from_lake("public", "orders", &base().arrow).unwrap();
        assert_eq!(lake.arrow, base().arrow);
        assert!(lake.tuple_columns.is_empty());
        assert_eq!(lake.columns[1].type_oid, UNKNOWN_TYPE);
        assert_eq!(lake.columns[1].type_description(), "lake type integer");
        let evolution = lake.evolve(&source, TypeChangePolicy::Fail).unwrap();
        // Learning the Postgres types of known columns is not a change worth a log line.
        assert!(!evolution.is_visible());
        assert!(evolution.schema.same_source(&base()));
        // The source gained a column while pg2lake was down, and lost one.
        let evolution = lake
            .evolve(
                &[col("id", oid::INT8, -1), col("extra", oid::BOOL, -1)],
                TypeChangePolicy::Fail,
            )
            .unwrap();
        assert_eq!(evolution.added, ["extra"]);
        assert!(
            evolution.dropped.is_empty(),
            "unknown before, so not reported"
        );
        assert_eq!(
            names(&evolution.schema),
            with_meta(&["id", "qty", "note", "extra"])
        );
    }

    #[test]
    fn a_lake_layout_pg2lake_cannot_write_is_named() {
        use arrow::datatypes::{DataType, Field};
        let mut fields: Vec<Field> = vec![Field::new("id", DataType::UInt64, true)];
        fields.extend(meta_fields());
        let err = TableSchema::from_lake("s", "t", &Schema::new(fields)).unwrap_err();
        assert!(err.to_string().contains("column id"), "{err}");
        let no_meta = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
        let err = TableSchema::from_lake("s", "t", &no_meta).unwrap_err();
        assert!(err.to_string().contains("_op is missing"), "{err}");
    }
}
