//! Postgres column types → Arrow types, and the row layout of a lake table.
//!
//! ```text
//!   Relation message / catalog           TableSchema
//!   (name, type OID, typmod, key)  ──►   source columns (typed, all nullable)
//!                                        + _op _lsn _seq _commit_ts _xid _unchanged date
//! ```
//!
//! Invariants:
//! - A column's Arrow type comes from its type OID and typmod alone, never from values, so
//!   every row of a table, and every run of pg2lake, agrees on the layout.
//! - The mapping is one `match` ([`Conversion::for_type`]); [`Conversion`] also tells the
//!   batch builder how to parse the Postgres text form, so the two cannot drift apart.
//! - Nothing is lost: a type Delta cannot hold exactly (unconstrained or wide numeric, and,
//!   until the type-fidelity work widens the mapping, every type without a case here) is
//!   stored as Postgres's own text form, which is exact by construction.
//! - Source columns are all nullable (a delete carries only the replica-identity columns,
//!   a truncate none); metadata columns follow them in a fixed order.
//! - Arrow field metadata stays empty: the Delta writer compares schemas field by field,
//!   so the Postgres OID and typmod live in [`SourceColumn`] instead.
//! - The lake layout only grows: [`evolve`] keeps every column a table ever had (see there
//!   for ADD / DROP / RENAME / type changes), so files written with any earlier layout stay
//!   readable by column name.

mod evolve;
mod widen;

pub use evolve::{Evolution, TypeChange, TypeChangeKind, TypeChangePolicy};
pub use widen::widen_array;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::pg::pgoutput::RelationColumn;

/// Well-known Postgres type OIDs (from `pg_type.dat`; fixed across versions).
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `"char"` (the one-byte internal type)
    pub const CHAR: u32 = 18;
    /// `name`
    pub const NAME: u32 = 19;
    /// `int8` / `bigint`
    pub const INT8: u32 = 20;
    /// `int2` / `smallint`
    pub const INT2: u32 = 21;
    /// `int4` / `integer`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `oid`
    pub const OID: u32 = 26;
    /// `xid`
    pub const XID: u32 = 28;
    /// `json`
    pub const JSON: u32 = 114;
    /// `xml`
    pub const XML: u32 = 142;
    /// `cidr`
    pub const CIDR: u32 = 650;
    /// `float4` / `real`
    pub const FLOAT4: u32 = 700;
    /// `float8` / `double precision`
    pub const FLOAT8: u32 = 701;
    /// `money`
    pub const MONEY: u32 = 790;
    /// `macaddr`
    pub const MACADDR: u32 = 829;
    /// `inet`
    pub const INET: u32 = 869;
    /// `bpchar` / `char(n)`
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `time`
    pub const TIME: u32 = 1083;
    /// `timestamp` (without time zone)
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `interval`
    pub const INTERVAL: u32 = 1186;
    /// `timetz`
    pub const TIMETZ: u32 = 1266;
    /// `bit`
    pub const BIT: u32 = 1560;
    /// `varbit`
    pub const VARBIT: u32 = 1562;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
    /// `pg_lsn`
    pub const PG_LSN: u32 = 3220;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
}

/// Name of the change-kind column (`r`, `c`, `u`, `d`, `t`).
pub const OP_COLUMN: &str = "_op";
/// Name of the source commit LSN column.
pub const LSN_COLUMN: &str = "_lsn";
/// Name of the ordinal-in-transaction column.
pub const SEQ_COLUMN: &str = "_seq";
/// Name of the source commit time column.
pub const COMMIT_TS_COLUMN: &str = "_commit_ts";
/// Name of the source transaction id column.
pub const XID_COLUMN: &str = "_xid";
/// Name of the column listing unchanged TOAST columns that were not sent.
pub const UNCHANGED_COLUMN: &str = "_unchanged";
/// The Delta partition column: the UTC date of `_commit_ts`.
pub const PARTITION_COLUMN: &str = "date";

/// The metadata columns, in the order they follow the source columns.
pub const META_COLUMNS: [&str; 7] = [
    OP_COLUMN,
    LSN_COLUMN,
    SEQ_COLUMN,
    COMMIT_TS_COLUMN,
    XID_COLUMN,
    UNCHANGED_COLUMN,
    PARTITION_COLUMN,
];

/// Name of the element field of the `_unchanged` list.
///
/// The Delta kernel names list elements `element` when it turns a Delta schema back into
/// Arrow; using the same name keeps our batches equal to the writer's schema (no cast).
pub const LIST_ELEMENT: &str = "element";

/// Largest decimal precision Delta (and Arrow Decimal128) holds.
pub const MAX_DECIMAL_PRECISION: u8 = 38;

/// Why a table cannot be given a lake layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    /// A source column is named like a metadata column.
    #[error(
        "table {table} has a column {column:?} whose name is reserved for pg2lake metadata ({reserved}; compared case-insensitively as Delta does) (fix: rename the column, or leave the table out of the replicated set)"
    )]
    ReservedColumn {
        /// The table, `schema.name`.
        table: String,
        /// The offending column.
        column: String,
        /// The reserved names.
        reserved: String,
    },
    /// A column changed to a type whose Arrow (Delta) type differs from its lake column's.
    #[error(
        "table {table} column {column} changed type from {old} to {new}, which its lake column cannot hold (fix: change the column back to {old_pg}, or add a new column of the new type instead of changing this one, or move the table's lake folder away and restart to re-create it)"
    )]
    IncompatibleType {
        /// The table, `schema.name`.
        table: String,
        /// The column.
        column: String,
        /// The previous type, Postgres and lake form, e.g. `int4 (lake type integer)`.
        old: String,
        /// The new type in the same form.
        new: String,
        /// The previous Postgres type alone, for the fix.
        old_pg: String,
    },
    /// The lake column a type change's values would go to (`<column>__<lake type>`) is a
    /// source column of its own, or holds another type.
    #[error(
        "table {table} column {column} changed type, and the lake column {target} its values would go to (schema.on_type_change: new_column) is taken by {taken_by} (fix: rename that column, or change {column} back)"
    )]
    NewColumnTaken {
        /// The table, `schema.name`.
        table: String,
        /// The column whose type changed.
        column: String,
        /// The lake column its values would go to.
        target: String,
        /// What holds that name.
        taken_by: String,
    },
    /// An existing lake table has columns pg2lake cannot write.
    #[error(
        "delta table of {table} has a schema pg2lake cannot write to: {reason} (fix: point lake.url at a fresh location or move that table's folder away)"
    )]
    LakeLayout {
        /// The table, `schema.name`.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// Two source columns differ only in case, which Delta treats as the same column.
    #[error(
        "table {table} has columns {first:?} and {second:?} that differ only in letter case; Delta column names are case-insensitive (fix: rename one of them)"
    )]
    DuplicateColumn {
        /// The table, `schema.name`.
        table: String,
        /// The first column.
        first: String,
        /// The column that collides with it.
        second: String,
    },
}

/// How a column's Postgres text form becomes an Arrow value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// `t` / `f` → Boolean.
    Bool,
    /// Decimal integer → Int16.
    Int16,
    /// Decimal integer → Int32.
    Int32,
    /// Decimal integer → Int64 (also `oid`, which is unsigned 32-bit).
    Int64,
    /// Shortest round-trip decimal, `NaN`, `Infinity` → Float32.
    Float32,
    /// Shortest round-trip decimal, `NaN`, `Infinity` → Float64.
    Float64,
    /// Exact decimal text → Decimal128 with this precision and scale (no rounding).
    Decimal {
        /// Total significant digits, 1..=38.
        precision: u8,
        /// Fractional digits, 0..=precision.
        scale: i8,
    },
    /// The text form as-is → Utf8.
    Text,
    /// `\x` hex → Binary.
    Bytea,
    /// ISO date → Date32 (days since 1970-01-01).
    Date,
    /// ISO timestamp → Timestamp(µs), no time zone.
    Timestamp,
    /// ISO timestamp with offset → Timestamp(µs, "UTC").
    TimestampTz,
}

impl Conversion {
    /// The conversion for a Postgres type: the single place where types are mapped.
    pub fn for_type(type_oid: u32, type_modifier: i32) -> Conversion {
        match type_oid {
            oid::BOOL => Conversion::Bool,
            oid::INT2 => Conversion::Int16,
            oid::INT4 => Conversion::Int32,
            // oid is an unsigned 32-bit integer: Int64 holds all of it.
            oid::INT8 | oid::OID => Conversion::Int64,
            oid::FLOAT4 => Conversion::Float32,
            oid::FLOAT8 => Conversion::Float64,
            oid::NUMERIC => match numeric_typmod(type_modifier) {
                Some((precision, scale)) if fits_decimal128(precision, scale) => {
                    // Both bounds were just checked, so the narrowing cannot fail.
                    match (u8::try_from(precision), i8::try_from(scale)) {
                        (Ok(precision), Ok(scale)) => Conversion::Decimal { precision, scale },
                        _ => Conversion::Text,
                    }
                }
                // Unconstrained, wider than 38 digits, or a negative / oversized scale:
                // Postgres's text form is the exact value (NaN and ±Infinity included).
                _ => Conversion::Text,
            },
            oid::BYTEA => Conversion::Bytea,
            oid::DATE => Conversion::Date,
            oid::TIMESTAMP => Conversion::Timestamp,
            oid::TIMESTAMPTZ => Conversion::TimestampTz,
            // text, varchar, bpchar, name, uuid, json, jsonb, xml and every type not
            // listed above: Postgres's text output, which loses nothing.
            _ => Conversion::Text,
        }
    }

    /// The conversion whose Arrow type is `data_type`: the inverse of
    /// [`Conversion::data_type`] (which is one-to-one), used for lake columns that the
    /// source no longer has. `None` for types pg2lake never writes.
    pub fn for_arrow(data_type: &DataType) -> Option<Conversion> {
        Some(match data_type {
            DataType::Boolean => Conversion::Bool,
            DataType::Int16 => Conversion::Int16,
            DataType::Int32 => Conversion::Int32,
            DataType::Int64 => Conversion::Int64,
            DataType::Float32 => Conversion::Float32,
            DataType::Float64 => Conversion::Float64,
            DataType::Decimal128(precision, scale) => Conversion::Decimal {
                precision: *precision,
                scale: *scale,
            },
            DataType::Utf8 => Conversion::Text,
            DataType::Binary => Conversion::Bytea,
            DataType::Date32 => Conversion::Date,
            DataType::Timestamp(TimeUnit::Microsecond, None) => Conversion::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => {
                Conversion::TimestampTz
            }
            _ => return None,
        })
    }

    /// The Delta type name of the lake column, for messages (`integer`, `string` …).
    pub fn lake_type_name(self) -> String {
        match self {
            Conversion::Bool => "boolean".into(),
            Conversion::Int16 => "short".into(),
            Conversion::Int32 => "integer".into(),
            Conversion::Int64 => "long".into(),
            Conversion::Float32 => "float".into(),
            Conversion::Float64 => "double".into(),
            Conversion::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            Conversion::Text => "string".into(),
            Conversion::Bytea => "binary".into(),
            Conversion::Date => "date".into(),
            Conversion::Timestamp => "timestamp_ntz".into(),
            Conversion::TimestampTz => "timestamp".into(),
        }
    }

    /// The Arrow type this conversion produces.
    pub fn data_type(self) -> DataType {
        match self {
            Conversion::Bool => DataType::Boolean,
            Conversion::Int16 => DataType::Int16,
            Conversion::Int32 => DataType::Int32,
            Conversion::Int64 => DataType::Int64,
            Conversion::Float32 => DataType::Float32,
            Conversion::Float64 => DataType::Float64,
            Conversion::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            Conversion::Text => DataType::Utf8,
            Conversion::Bytea => DataType::Binary,
            Conversion::Date => DataType::Date32,
            Conversion::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Conversion::TimestampTz => utc_timestamp(),
        }
    }
}

/// The Arrow type for a Postgres type OID and typmod.
pub fn arrow_type(type_oid: u32, type_modifier: i32) -> DataType {
    Conversion::for_type(type_oid, type_modifier).data_type()
}

/// Precision and scale of a `numeric` typmod, `None` when unconstrained.
///
/// Postgres stores `((precision << 16) | (scale & 0x7ff)) + VARHDRSZ`; since PG 15 the
/// scale may be negative (11-bit two's complement) or exceed the precision.
pub fn numeric_typmod(type_modifier: i32) -> Option<(i32, i32)> {
    const VARHDRSZ: i32 = 4;
    if type_modifier < VARHDRSZ {
        return None;
    }
    let raw = type_modifier - VARHDRSZ;
    let precision = (raw >> 16) & 0xffff;
    // Sign-extend the low 11 bits.
    let scale = ((raw & 0x7ff) ^ 0x400) - 0x400;
    Some((precision, scale))
}

fn fits_decimal128(precision: i32, scale: i32) -> bool {
    (1..=i32::from(MAX_DECIMAL_PRECISION)).contains(&precision) && (0..=precision).contains(&scale)
}

/// A human-readable Postgres type name for error messages, e.g. `numeric(12,2)`.
pub fn pg_type_name(type_oid: u32, type_modifier: i32) -> String {
    let name = match type_oid {
        oid::BOOL => "bool",
        oid::BYTEA => "bytea",
        oid::CHAR => "\"char\"",
        oid::NAME => "name",
        oid::INT8 => "int8",
        oid::INT2 => "int2",
        oid::INT4 => "int4",
        oid::TEXT => "text",
        oid::OID => "oid",
        oid::XID => "xid",
        oid::JSON => "json",
        oid::XML => "xml",
        oid::CIDR => "cidr",
        oid::FLOAT4 => "float4",
        oid::FLOAT8 => "float8",
        oid::MONEY => "money",
        oid::MACADDR => "macaddr",
        oid::INET => "inet",
        oid::BPCHAR => "bpchar",
        oid::VARCHAR => "varchar",
        oid::DATE => "date",
        oid::TIME => "time",
        oid::TIMESTAMP => "timestamp",
        oid::TIMESTAMPTZ => "timestamptz",
        oid::INTERVAL => "interval",
        oid::TIMETZ => "timetz",
        oid::BIT => "bit",
        oid::VARBIT => "varbit",
        oid::NUMERIC => {
            return match numeric_typmod(type_modifier) {
                Some((p, s)) => format!("numeric({p},{s})"),
                None => "numeric".to_owned(),
            };
        }
        oid::UUID => "uuid",
        oid::PG_LSN => "pg_lsn",
        oid::JSONB => "jsonb",
        other => return format!("type oid {other}"),
    };
    name.to_owned()
}

fn utc_timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// One column of the source table and its lake type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// The column name, as in Postgres.
    pub name: String,
    /// The OID of the column's data type; [`UNKNOWN_TYPE`] for a lake column whose
    /// Postgres type this run has not seen (one the source dropped before it started).
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
    /// Whether the column is part of the replica identity.
    pub is_key: bool,
    /// How text values of this column are parsed.
    pub conversion: Conversion,
    /// The Arrow type of the column in the lake: `conversion`'s type, or a type it widens
    /// to exactly ([`Conversion::widens_to`]).
    pub data_type: DataType,
}

/// The `type_oid` of a column known only from the lake (Postgres never uses OID 0).
pub const UNKNOWN_TYPE: u32 = 0;

impl SourceColumn {
    fn new(column: &RelationColumn) -> SourceColumn {
        let conversion = Conversion::for_type(column.type_oid, column.type_modifier);
        SourceColumn {
            name: column.name.clone(),
            type_oid: column.type_oid,
            type_modifier: column.type_modifier,
            is_key: column.is_key,
            conversion,
            data_type: conversion.data_type(),
        }
    }

    /// The Postgres type for messages, e.g. `numeric(12,2)`.
    pub fn pg_type(&self) -> String {
        if self.type_oid == UNKNOWN_TYPE {
            return format!("unknown (lake type {})", self.conversion.lake_type_name());
        }
        pg_type_name(self.type_oid, self.type_modifier)
    }

    /// Postgres and lake type for messages, e.g. `int4 (lake type integer)`.
    pub fn type_description(&self) -> String {
        let lake = self.lake_conversion().lake_type_name();
        if self.type_oid == UNKNOWN_TYPE {
            return format!("lake type {lake}");
        }
        format!("{} (lake type {lake})", self.pg_type())
    }

    /// The conversion of the lake column's type. It differs from [`SourceColumn::conversion`]
    /// when the source type is narrower than the lake column (after a widening, changes
    /// written before it are replayed, or the source type was narrowed again): values are
    /// parsed as the source type and widened to the lake type.
    pub fn lake_conversion(&self) -> Conversion {
        Conversion::for_arrow(&self.data_type).unwrap_or(self.conversion)
    }
}

/// The lake layout of one replicated table: source columns then metadata columns.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// The Postgres schema (namespace) of the table.
    pub namespace: String,
    /// The table name.
    pub name: String,
    /// Every source column the lake table holds, in first-seen order: the current ones
    /// and those the source dropped or renamed (null in newer rows).
    pub columns: Vec<SourceColumn>,
    /// For each value of a change tuple (the source's current attribute order), the
    /// index of its column in `columns`.
    pub tuple_columns: Vec<usize>,
    /// The Arrow schema of the lake rows (`columns`, then [`META_COLUMNS`]).
    pub arrow: SchemaRef,
}

impl TableSchema {
    /// Types the columns of `namespace.name` and builds the lake row schema of a new
    /// lake table (no earlier columns).
    pub fn new(
        namespace: &str,
        name: &str,
        columns: &[RelationColumn],
    ) -> Result<TableSchema, SchemaError> {
        let empty = TableSchema {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            columns: Vec::new(),
            tuple_columns: Vec::new(),
            arrow: lake_arrow_schema(&[]),
        };
        // A new table has no earlier columns, so no type changes: the policy never applies.
        Ok(empty.evolve(columns, TypeChangePolicy::Fail)?.schema)
    }

    /// `namespace.name`, for messages.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// Whether `other` has the same source column names and Arrow types, in order.
    pub fn same_layout(&self, other: &TableSchema) -> bool {
        self.columns.len() == other.columns.len()
            && self
                .columns
                .iter()
                .zip(&other.columns)
                .all(|(a, b)| a.name == b.name && a.data_type == b.data_type)
    }
}

/// The Arrow schema of lake rows with these source columns: all nullable, then the
/// metadata columns.
fn lake_arrow_schema(columns: &[SourceColumn]) -> SchemaRef {
    let mut fields: Vec<Field> = columns
        .iter()
        .map(|c| Field::new(&c.name, c.data_type.clone(), true))
        .collect();
    fields.extend(meta_fields());
    Arc::new(Schema::new(fields))
}

/// The element field of the `_unchanged` list.
///
/// Marked nullable (Delta `containsNull = true`, what Spark writes by default) although
/// pg2lake never stores a null name.
pub fn unchanged_element() -> Field {
    Field::new(LIST_ELEMENT, DataType::Utf8, true)
}

/// The Arrow type of the `_unchanged` column.
pub fn unchanged_type() -> DataType {
    DataType::List(Arc::new(unchanged_element()))
}

fn meta_fields() -> [Field; 7] {
    [
        Field::new(OP_COLUMN, DataType::Utf8, false),
        Field::new(LSN_COLUMN, DataType::Int64, false),
        Field::new(SEQ_COLUMN, DataType::Int64, false),
        Field::new(COMMIT_TS_COLUMN, utc_timestamp(), false),
        Field::new(XID_COLUMN, DataType::Int64, true),
        Field::new(UNCHANGED_COLUMN, unchanged_type(), true),
        Field::new(PARTITION_COLUMN, DataType::Date32, false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, type_oid: u32, type_modifier: i32) -> RelationColumn {
        RelationColumn {
            is_key: false,
            name: name.to_owned(),
            type_oid,
            type_modifier,
        }
    }

    /// The typmod Postgres stores for `numeric(p,s)`.
    fn typmod(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | (scale & 0x7ff)) + 4
    }

    #[test]
    fn maps_scalar_types() {
        let cases = [
            (oid::BOOL, DataType::Boolean),
            (oid::INT2, DataType::Int16),
            (oid::INT4, DataType::Int32),
            (oid::INT8, DataType::Int64),
            (oid::OID, DataType::Int64),
            (oid::FLOAT4, DataType::Float32),
            (oid::FLOAT8, DataType::Float64),
            (oid::BYTEA, DataType::Binary),
            (oid::DATE, DataType::Date32),
            (
                oid::TIMESTAMP,
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            (
                oid::TIMESTAMPTZ,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
        ];
        for (type_oid, want) in cases {
            assert_eq!(arrow_type(type_oid, -1), want, "oid {type_oid}");
        }
    }

    #[test]
    fn maps_text_like_and_unknown_types_to_utf8() {
        for type_oid in [
            oid::TEXT,
            oid::VARCHAR,
            oid::BPCHAR,
            oid::NAME,
            oid::UUID,
            oid::JSON,
            oid::JSONB,
            oid::XML,
            oid::TIME,
            oid::INTERVAL,
            oid::INET,
            987_654,
        ] {
            assert_eq!(arrow_type(type_oid, -1), DataType::Utf8, "oid {type_oid}");
        }
        // varchar(10) and char(3) carry a typmod that must not matter.
        assert_eq!(arrow_type(oid::VARCHAR, 14), DataType::Utf8);
        assert_eq!(arrow_type(oid::BPCHAR, 7), DataType::Utf8);
    }

    #[test]
    fn maps_numeric_by_typmod() {
        assert_eq!(
            arrow_type(oid::NUMERIC, typmod(12, 2)),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(
            arrow_type(oid::NUMERIC, typmod(38, 0)),
            DataType::Decimal128(38, 0)
        );
        assert_eq!(
            arrow_type(oid::NUMERIC, typmod(38, 38)),
            DataType::Decimal128(38, 38)
        );
        assert_eq!(
            arrow_type(oid::NUMERIC, typmod(1, 0)),
            DataType::Decimal128(1, 0)
        );
        // Unconstrained, too wide, negative scale (PG 15), scale above precision.
        assert_eq!(arrow_type(oid::NUMERIC, -1), DataType::Utf8);
        assert_eq!(arrow_type(oid::NUMERIC, typmod(39, 0)), DataType::Utf8);
        assert_eq!(arrow_type(oid::NUMERIC, typmod(1000, 10)), DataType::Utf8);
        assert_eq!(arrow_type(oid::NUMERIC, typmod(10, -3)), DataType::Utf8);
        assert_eq!(arrow_type(oid::NUMERIC, typmod(3, 5)), DataType::Utf8);
    }

    #[test]
    fn decodes_numeric_typmod() {
        assert_eq!(numeric_typmod(-1), None);
        assert_eq!(numeric_typmod(typmod(12, 2)), Some((12, 2)));
        assert_eq!(numeric_typmod(typmod(10, -3)), Some((10, -3)));
        assert_eq!(numeric_typmod(typmod(5, -1000)), Some((5, -1000)));
        assert_eq!(numeric_typmod(typmod(1000, 1000)), Some((1000, 1000)));
    }

    #[test]
    fn builds_source_then_meta_columns() {
        let mut id = col("id", oid::INT8, -1);
        id.is_key = true;
        let schema = TableSchema::new(
            "public",
            "orders",
            &[id, col("amount", oid::NUMERIC, typmod(12, 2))],
        )
        .unwrap();
        let names: Vec<&str> = schema
            .arrow
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "amount",
                "_op",
                "_lsn",
                "_seq",
                "_commit_ts",
                "_xid",
                "_unchanged",
                "date"
            ]
        );
        assert!(schema.columns[0].is_key);
        assert_eq!(
            schema.columns[1].conversion,
            Conversion::Decimal {
                precision: 12,
                scale: 2
            }
        );
        let nullable: Vec<bool> = schema
            .arrow
            .fields()
            .iter()
            .map(|f| f.is_nullable())
            .collect();
        assert_eq!(
            nullable,
            [true, true, false, false, false, false, true, true, false]
        );
        assert!(
            schema
                .arrow
                .fields()
                .iter()
                .all(|f| f.metadata().is_empty())
        );
        assert!(schema.arrow.metadata().is_empty());
        assert_eq!(schema.qualified_name(), "public.orders");
        assert_eq!(schema.columns[1].pg_type(), "numeric(12,2)");
    }

    #[test]
    fn rejects_reserved_column_names() {
        for reserved in ["_op", "_lsn", "date", "Date", "_UNCHANGED"] {
            let err = TableSchema::new("public", "t", &[col(reserved, oid::INT4, -1)])
                .expect_err(reserved);
            let message = err.to_string();
            assert!(message.contains("public.t"), "{message}");
            assert!(message.contains(reserved), "{message}");
        }
    }

    #[test]
    fn rejects_columns_equal_ignoring_case() {
        let err = TableSchema::new(
            "s",
            "t",
            &[col("Name", oid::TEXT, -1), col("name", oid::TEXT, -1)],
        )
        .unwrap_err();
        assert_eq!(
            err,
            SchemaError::DuplicateColumn {
                table: "s.t".into(),
                first: "Name".into(),
                second: "name".into()
            }
        );
    }

    #[test]
    fn compares_layouts() {
        let a = TableSchema::new("s", "t", &[col("a", oid::INT4, -1)]).unwrap();
        let same = TableSchema::new("s", "t", &[col("a", oid::INT4, -1)]).unwrap();
        let retyped = TableSchema::new("s", "t", &[col("a", oid::INT8, -1)]).unwrap();
        let renamed = TableSchema::new("s", "t", &[col("b", oid::INT4, -1)]).unwrap();
        // varchar(10) → varchar(20) changes the typmod but not the lake layout.
        let v10 = TableSchema::new("s", "t", &[col("a", oid::VARCHAR, 14)]).unwrap();
        let v20 = TableSchema::new("s", "t", &[col("a", oid::VARCHAR, 24)]).unwrap();
        assert!(a.same_layout(&same));
        assert!(!a.same_layout(&retyped));
        assert!(!a.same_layout(&renamed));
        assert!(v10.same_layout(&v20));
    }

    #[test]
    fn names_types_for_messages() {
        assert_eq!(pg_type_name(oid::TIMESTAMPTZ, -1), "timestamptz");
        assert_eq!(pg_type_name(oid::NUMERIC, -1), "numeric");
        assert_eq!(pg_type_name(424_242, -1), "type oid 424242");
    }
}
