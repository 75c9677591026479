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
//! - Any other type change of a column with the same name:
//!   [`SchemaError::IncompatibleType`]; widening types is a later policy.
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

use super::{
    Conversion, META_COLUMNS, SchemaError, SourceColumn, TableSchema, TypeCatalog, UNKNOWN_TYPE,
    lake_arrow_schema, meta_fields,
};
use crate::pg::pgoutput::RelationColumn;

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
}

impl Evolution {
    /// Whether the lake table's layout (its Delta schema) changes.
    pub fn layout_changed(&self) -> bool {
        !self.added.is_empty()
    }

    /// Whether anything a log reader cares about changed.
    pub fn is_visible(&self) -> bool {
        !(self.added.is_empty() && self.dropped.is_empty() && self.retyped.is_empty())
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
            });
        }
        Ok(TableSchema {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            tuple_columns: Vec::new(),
            arrow: lake_arrow_schema(&columns),
            columns,
        })
    }

    /// The schema after the source table's columns became `columns` (a Relation message,
    /// or the catalog at start-up): the union of the known columns and `columns`, with
    /// change tuples mapped onto it. Errors on a type change the lake column cannot hold
    /// and on names Delta cannot hold.
    pub fn evolve(&self, columns: &[RelationColumn]) -> Result<Evolution, SchemaError> {
        self.evolve_with(columns, &TypeCatalog::default())
    }

    /// [`TableSchema::evolve`] with column types resolved through `types` (catalog
    /// types and configured column types): what replication uses.
    pub fn evolve_with(
        &self,
        columns: &[RelationColumn],
        types: &TypeCatalog,
    ) -> Result<Evolution, SchemaError> {
        let table = || self.qualified_name();
        let mut lake = self.columns.clone();
        let mut tuple_columns = Vec::with_capacity(columns.len());
        let mut added = Vec::new();
        let mut retyped = Vec::new();
        // Delta resolves column names case-insensitively, so collisions are checked that way.
        let mut seen: HashSet<String> = HashSet::with_capacity(columns.len());
        for column in columns {
            if META_COLUMNS
                .iter()
                .any(|meta| meta.eq_ignore_ascii_case(&column.name))
            {
                return Err(SchemaError::ReservedColumn {
                    table: table(),
                    column: column.name.clone(),
                    reserved: META_COLUMNS.join(", "),
                });
            }
            let duplicate = |first: &str| SchemaError::DuplicateColumn {
                table: table(),
                first: first.to_owned(),
                second: column.name.clone(),
            };
            if !seen.insert(column.name.to_ascii_lowercase()) {
                let first = columns
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(&column.name))
                    .map_or("", |c| c.name.as_str());
                return Err(duplicate(first));
            }
            let incoming = SourceColumn::typed(
                column,
                types,
                types.conversion(&self.namespace, &self.name, column)?,
            );
            match lake
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(&column.name))
            {
                Some(index) => {
                    let known = &mut lake[index];
                    if known.name != column.name {
                        return Err(duplicate(&known.name));
                    }
                    if known.data_type != incoming.data_type {
                        return Err(SchemaError::IncompatibleType {
                            table: table(),
                            column: column.name.clone(),
                            old: known.type_description(),
                            new: incoming.type_description(),
                            old_pg: if known.type_oid == UNKNOWN_TYPE {
                                "its previous type".to_owned()
                            } else {
                                known.pg_type()
                            },
                        });
                    }
                    if known.type_oid != UNKNOWN_TYPE
                        && (known.type_oid, known.type_modifier)
                            != (incoming.type_oid, incoming.type_modifier)
                    {
                        retyped.push(column.name.clone());
                    }
                    // Same lake type, so the same conversion: adopt the Postgres type.
                    *known = incoming;
                    tuple_columns.push(index);
                }
                None => {
                    added.push(column.name.clone());
                    lake.push(incoming);
                    tuple_columns.push(lake.len() - 1);
                }
            }
        }
        let dropped = self
            .tuple_columns
            .iter()
            .filter(|index| !tuple_columns.contains(index))
            .map(|&index| self.columns[index].name.clone())
            .collect();
        let arrow = if added.is_empty() {
            self.arrow.clone()
        } else {
            lake_arrow_schema(&lake)
        };
        Ok(Evolution {
            schema: TableSchema {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                columns: lake,
                tuple_columns,
                arrow,
            },
            added,
            dropped,
            retyped,
        })
    }

    /// Whether `other` maps change tuples the same way: same columns with the same
    /// Postgres types and keys, same tuple layout. When it does, a Relation message
    /// changed nothing pg2lake acts on.
    pub fn same_source(&self, other: &TableSchema) -> bool {
        self.tuple_columns == other.tuple_columns && self.columns == other.columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::oid;

    fn col(name: &str, type_oid: u32, type_modifier: i32) -> RelationColumn {
        RelationColumn {
            is_key: false,
            name: name.to_owned(),
            type_oid,
            type_modifier,
        }
    }

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

    const META: [&str; 7] = [
        "_op",
        "_lsn",
        "_seq",
        "_commit_ts",
        "_xid",
        "_unchanged",
        "date",
    ];

    fn with_meta<'a>(source: &[&'a str]) -> Vec<&'a str> {
        source.iter().copied().chain(META).collect()
    }

    #[test]
    fn unchanged_columns_change_nothing() {
        let schema = base();
        let same = schema
            .evolve(&[
                col("id", oid::INT8, -1),
                col("qty", oid::INT4, -1),
                col("note", oid::VARCHAR, varchar(10)),
            ])
            .unwrap();
        assert!(!same.is_visible());
        assert!(!same.layout_changed());
        assert!(same.schema.same_source(&schema));
        assert_eq!(same.schema.arrow, schema.arrow);
    }

    #[test]
    fn an_added_column_joins_before_the_metadata_columns() {
        let evolution = base()
            .evolve(&[
                col("id", oid::INT8, -1),
                col("qty", oid::INT4, -1),
                col("note", oid::VARCHAR, varchar(10)),
                col("price", oid::FLOAT8, -1),
            ])
            .unwrap();
        assert_eq!(evolution.added, ["price"]);
        assert!(evolution.dropped.is_empty() && evolution.retyped.is_empty());
        assert!(evolution.layout_changed());
        assert_eq!(
            names(&evolution.schema),
            with_meta(&["id", "qty", "note", "price"])
        );
        assert_eq!(evolution.schema.tuple_columns, [0, 1, 2, 3]);
        let price = evolution.schema.arrow.field_with_name("price").unwrap();
        assert!(price.is_nullable());
        assert_eq!(price.data_type(), &arrow::datatypes::DataType::Float64);
    }

    #[test]
    fn a_dropped_column_stays_in_the_lake_and_is_unmapped() {
        let evolution = base()
            .evolve(&[
                col("id", oid::INT8, -1),
                col("note", oid::VARCHAR, varchar(10)),
            ])
            .unwrap();
        assert_eq!(evolution.dropped, ["qty"]);
        assert!(evolution.added.is_empty());
        assert!(!evolution.layout_changed());
        assert!(evolution.is_visible());
        assert_eq!(names(&evolution.schema), with_meta(&["id", "qty", "note"]));
        assert_eq!(evolution.schema.tuple_columns, [0, 2]);
        // Dropped once is not dropped again.
        let again = evolution
            .schema
            .evolve(&[
                col("id", oid::INT8, -1),
                col("note", oid::VARCHAR, varchar(10)),
            ])
            .unwrap();
        assert!(!again.is_visible());
    }

    #[test]
    fn a_rename_is_a_drop_and_an_add_at_the_same_position() {
        let evolution = base()
            .evolve(&[
                col("id", oid::INT8, -1),
                col("quantity", oid::INT4, -1),
                col("note", oid::VARCHAR, varchar(10)),
            ])
            .unwrap();
        assert_eq!(evolution.added, ["quantity"]);
        assert_eq!(evolution.dropped, ["qty"]);
        assert_eq!(
            names(&evolution.schema),
            with_meta(&["id", "qty", "note", "quantity"])
        );
        assert_eq!(evolution.schema.tuple_columns, [0, 3, 2]);
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
                .evolve(&[
                    col("id", oid::INT8, -1),
                    col("qty", oid::INT4, -1),
                    col("note", type_oid, typmod),
                ])
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
        let evolution = ts.evolve(&[col("at", oid::TIMESTAMP, 6)]).unwrap();
        assert_eq!(evolution.retyped, ["at"]);
        assert!(!evolution.layout_changed());
    }

    #[test]
    fn an_incompatible_type_change_is_a_clear_error() {
        let err = base()
            .evolve(&[
                col("id", oid::INT8, -1),
                col("qty", oid::TEXT, -1),
                col("note", oid::VARCHAR, varchar(10)),
            ])
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
        // numeric(12,2) → numeric(14,2) changes the Delta decimal: widening is later work.
        let typmod = |p: i32, s: i32| ((p << 16) | s) + 4;
        let numeric = TableSchema::new("s", "t", &[col("n", oid::NUMERIC, typmod(12, 2))]).unwrap();
        assert!(matches!(
            numeric.evolve(&[col("n", oid::NUMERIC, typmod(14, 2))]),
            Err(SchemaError::IncompatibleType { .. })
        ));
    }

    #[test]
    fn a_re_added_column_reuses_its_lake_column_only_with_the_same_type() {
        let dropped = base().evolve(&[col("id", oid::INT8, -1)]).unwrap().schema;
        let back = dropped
            .evolve(&[col("id", oid::INT8, -1), col("qty", oid::INT4, -1)])
            .unwrap();
        assert!(back.added.is_empty());
        assert_eq!(back.schema.tuple_columns, [0, 1]);
        assert!(matches!(
            dropped.evolve(&[col("id", oid::INT8, -1), col("qty", oid::INT8, -1)]),
            Err(SchemaError::IncompatibleType { .. })
        ));
    }

    #[test]
    fn names_delta_cannot_hold_are_rejected_when_added() {
        let schema = base();
        let err = schema
            .evolve(&[col("id", oid::INT8, -1), col("Qty", oid::INT4, -1)])
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
            schema.evolve(&[col("id", oid::INT8, -1), col("_LSN", oid::INT8, -1)]),
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
        let evolution = lake.evolve(&source).unwrap();
        // Learning the Postgres types of known columns is not a change worth a log line.
        assert!(!evolution.is_visible());
        assert!(evolution.schema.same_source(&base()));
        // The source gained a column while pg2lake was down, and lost one.
        let evolution = lake
            .evolve(&[col("id", oid::INT8, -1), col("extra", oid::BOOL, -1)])
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
