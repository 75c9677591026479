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
//! - The mapping is [`Conversion::for_type`] (builtins, by OID) and
//!   [`Conversion::for_resolved`] (what the catalog said, down to a builtin); [`Conversion`]
//!   also tells the batch builder how to parse the Postgres text form, so the two cannot
//!   drift apart.
//! - Nothing is lost: a type Delta cannot hold exactly gets a documented exact form
//!   (time as µs since midnight, interval and timetz as structs, money as cents) or, for
//!   unconstrained or wide numeric, ranges, network types and every type without a case
//!   here, Postgres's own text form, which is exact by construction. The README's
//!   "Types" table is the user-facing copy of this mapping.
//! - Types with database-specific OIDs (enums, domains, composites, extension types) are
//!   looked up in the catalog once per OID ([`TypeCatalog`]) and mapped by
//!   [`Conversion::for_resolved`], in streaming and snapshot alike.
//! - Source columns are all nullable (a delete carries only the replica-identity columns,
//!   a truncate none); metadata columns follow them in a fixed order.
//! - Arrow field metadata stays empty: the Delta writer compares schemas field by field,
//!   so the Postgres OID and typmod live in [`SourceColumn`] instead.
//! - The lake layout only grows: [`evolve`] keeps every column a table ever had (see there
//!   for ADD / DROP / RENAME / type changes), so files written with any earlier layout stay
//!   readable by column name.

mod evolve;
#[cfg(test)]
pub(crate) mod fixtures;
mod types;
mod widen;

pub use evolve::{Evolution, TypeChange, TypeChangeKind, TypeChangePolicy};
pub use types::{CatalogKind, CatalogType, FIRST_NORMAL_OID, TypeCatalog, column_key};
pub use widen::widen_array;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::privacy::{Policy, PolicyError, Protection};

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
    /// `cid`
    pub const CID: u32 = 29;
    /// `json`
    pub const JSON: u32 = 114;
    /// `xml`
    pub const XML: u32 = 142;
    /// `point`
    pub const POINT: u32 = 600;
    /// `cidr`
    pub const CIDR: u32 = 650;
    /// `float4` / `real`
    pub const FLOAT4: u32 = 700;
    /// `float8` / `double precision`
    pub const FLOAT8: u32 = 701;
    /// `macaddr8`
    pub const MACADDR8: u32 = 774;
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
    /// `tsvector`
    pub const TSVECTOR: u32 = 3614;
    /// `tsquery`
    pub const TSQUERY: u32 = 3615;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
    /// `int4range`
    pub const INT4RANGE: u32 = 3904;
    /// `numrange`
    pub const NUMRANGE: u32 = 3906;
    /// `tsrange`
    pub const TSRANGE: u32 = 3908;
    /// `tstzrange`
    pub const TSTZRANGE: u32 = 3910;
    /// `daterange`
    pub const DATERANGE: u32 = 3912;
    /// `int8range`
    pub const INT8RANGE: u32 = 3926;
    /// `xid8`
    pub const XID8: u32 = 5069;

    /// The builtin array types and their element types: `(array, element)`.
    ///
    /// Every builtin whose array text uses `,` between elements (all but `box`, whose
    /// arrays use `;` and stay text).
    pub const ARRAYS: &[(u32, u32)] = &[
        (1000, BOOL),
        (1001, BYTEA),
        (1002, CHAR),
        (1003, NAME),
        (1016, INT8),
        (1005, INT2),
        (1007, INT4),
        (1009, TEXT),
        (1028, OID),
        (1011, XID),
        (1012, CID),
        (199, JSON),
        (143, XML),
        (1017, POINT),
        (651, CIDR),
        (1021, FLOAT4),
        (1022, FLOAT8),
        (775, MACADDR8),
        (791, MONEY),
        (1040, MACADDR),
        (1041, INET),
        (1014, BPCHAR),
        (1015, VARCHAR),
        (1182, DATE),
        (1183, TIME),
        (1115, TIMESTAMP),
        (1185, TIMESTAMPTZ),
        (1187, INTERVAL),
        (1270, TIMETZ),
        (1561, BIT),
        (1563, VARBIT),
        (1231, NUMERIC),
        (2951, UUID),
        (3221, PG_LSN),
        (3643, TSVECTOR),
        (3645, TSQUERY),
        (3807, JSONB),
        (3905, INT4RANGE),
        (3907, NUMRANGE),
        (3909, TSRANGE),
        (3911, TSTZRANGE),
        (3913, DATERANGE),
        (3927, INT8RANGE),
        (271, XID8),
    ];

    /// The element type of a builtin array type.
    pub fn array_element(array: u32) -> Option<u32> {
        ARRAYS
            .iter()
            .find(|&&(a, _)| a == array)
            .map(|&(_, element)| element)
    }
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
    /// A `column_types` setting names a column it cannot apply to.
    #[error(
        "column_types.\"{column}\" cannot apply to a column of type {pg_type}: {reason} (fix: remove that entry from column_types, or point it at a numeric column)"
    )]
    ConfiguredType {
        /// The configured key, `schema.table.column`.
        column: String,
        /// The column's Postgres type.
        pg_type: String,
        /// Why not.
        reason: String,
    },
    /// A column policy cannot be decided or applied.
    #[error("{0}")]
    Policy(Box<PolicyError>),
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

impl From<PolicyError> for SchemaError {
    fn from(error: PolicyError) -> SchemaError {
        SchemaError::Policy(Box::new(error))
    }
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
    /// Decimal integer → Int64 (also `oid`, `xid`, `cid`: unsigned 32-bit).
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
    /// `money` with `lc_monetary=C` (`-$1,234.56`) → Decimal128(19,2), the exact cents.
    Money,
    /// `time` (`HH:MM:SS[.ffffff]`, up to `24:00:00`) → Int64 µs since midnight.
    Time,
    /// `timetz` → Struct {microseconds: Int64 (local time of day), offset_seconds: Int32
    /// (east of UTC, the printed sign)}.
    TimeTz,
    /// `interval` (IntervalStyle postgres) → Struct {months: Int32, days: Int32,
    /// microseconds: Int64}: Postgres's own three fields, never normalised into each other.
    Interval,
    /// `hstore` (`"k"=>"v", "k2"=>NULL`) → Map<Utf8, Utf8> (values nullable).
    Hstore,
    /// Plain hex without `\x` (PostGIS `geometry`/`geography` print EWKB so) → Binary.
    HexBinary,
    /// Postgres array text (`{1,NULL,"a b"}`, any dimensions) → List of the element's
    /// type, elements in row-major order (the order of `unnest`), NULL elements kept.
    Array(Element),
    /// A builtin range (`[1,10)`, `(,5]`, `empty`) → Struct {lower, upper (the subtype's
    /// type; null when unbounded), lower_inc, upper_inc, empty: Boolean}.
    Range(Element),
    /// A `numeric` column given a decimal type by `column_types` in the configuration:
    /// parsed like `Decimal`, and a value that does not fit is an error naming the setting.
    ConfiguredDecimal {
        /// Total significant digits, 1..=38.
        precision: u8,
        /// Fractional digits, 0..=precision.
        scale: i8,
    },
}

/// The element conversion of an array column: every [`Conversion`] but `Array` itself
/// (Postgres has no arrays of arrays: `int[][]` is one multi-dimensional array type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is the Conversion of the same name
pub enum Element {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal { precision: u8, scale: i8 },
    Text,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    Money,
    Time,
    TimeTz,
    Interval,
    Hstore,
    HexBinary,
}

impl Element {
    /// The conversion of one element.
    pub fn conversion(self) -> Conversion {
        match self {
            Element::Bool => Conversion::Bool,
            Element::Int16 => Conversion::Int16,
            Element::Int32 => Conversion::Int32,
            Element::Int64 => Conversion::Int64,
            Element::Float32 => Conversion::Float32,
            Element::Float64 => Conversion::Float64,
            Element::Decimal { precision, scale } => Conversion::Decimal { precision, scale },
            Element::Text => Conversion::Text,
            Element::Bytea => Conversion::Bytea,
            Element::Date => Conversion::Date,
            Element::Timestamp => Conversion::Timestamp,
            Element::TimestampTz => Conversion::TimestampTz,
            Element::Money => Conversion::Money,
            Element::Time => Conversion::Time,
            Element::TimeTz => Conversion::TimeTz,
            Element::Interval => Conversion::Interval,
            Element::Hstore => Conversion::Hstore,
            Element::HexBinary => Conversion::HexBinary,
        }
    }
}

impl Conversion {
    /// The conversion for a Postgres type: the single place where types are mapped.
    ///
    /// Builtin types map by OID; types with database-specific OIDs (enums, domains,
    /// composites, extension types) map through [`Conversion::for_resolved`] once the
    /// catalog has described them, and fall back to their text form here.
    pub fn for_type(type_oid: u32, type_modifier: i32) -> Conversion {
        match type_oid {
            oid::BOOL => Conversion::Bool,
            oid::INT2 => Conversion::Int16,
            oid::INT4 => Conversion::Int32,
            // oid, xid and cid are unsigned 32-bit integers: Int64 holds all of them.
            oid::INT8 | oid::OID | oid::XID | oid::CID => Conversion::Int64,
            // xid8 is unsigned 64-bit: 20 decimal digits hold all of it.
            oid::XID8 => Conversion::Decimal {
                precision: 20,
                scale: 0,
            },
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
            oid::MONEY => Conversion::Money,
            oid::BYTEA => Conversion::Bytea,
            oid::DATE => Conversion::Date,
            oid::TIME => Conversion::Time,
            oid::TIMETZ => Conversion::TimeTz,
            oid::TIMESTAMP => Conversion::Timestamp,
            oid::TIMESTAMPTZ => Conversion::TimestampTz,
            oid::INTERVAL => Conversion::Interval,
            oid::INT4RANGE => Conversion::Range(Element::Int32),
            oid::INT8RANGE => Conversion::Range(Element::Int64),
            // numrange's bounds are unconstrained numerics: their exact text.
            oid::NUMRANGE => Conversion::Range(Element::Text),
            oid::DATERANGE => Conversion::Range(Element::Date),
            oid::TSRANGE => Conversion::Range(Element::Timestamp),
            oid::TSTZRANGE => Conversion::Range(Element::TimestampTz),
            array => match oid::array_element(array) {
                // An array column's typmod is its elements' (numeric(10,2)[]).
                Some(element) => Conversion::for_type(element, type_modifier).array(),
                // text, varchar, bpchar, "char", name, uuid, json, jsonb, xml, inet, cidr,
                // macaddr, bit, varbit, tsvector, ranges, pg_lsn and every type not listed
                // above: Postgres's text output, which loses nothing.
                None => Conversion::Text,
            },
        }
    }

    /// The conversion of a type that may have a database-specific OID, with what the
    /// catalog said about it (`types`): enum → text; domain → its base type's (with the
    /// domain's typmod); array → a list of its element's; composite → its text form;
    /// hstore → map; citext → text; PostGIS geometry / geography → EWKB binary; anything
    /// else → its text form. Builtins map as in [`Conversion::for_type`].
    pub fn for_resolved(type_oid: u32, type_modifier: i32, types: &TypeCatalog) -> Conversion {
        let mut current = (type_oid, type_modifier);
        let mut array = false;
        for _ in 0..types::max_nesting() {
            let (type_oid, type_modifier) = current;
            let element = match types.described(type_oid) {
                None => Conversion::for_type(type_oid, type_modifier),
                Some(CatalogKind::Domain {
                    base,
                    base_modifier,
                }) => {
                    // A domain column's own typmod is -1; the domain holds the base's.
                    let modifier = if type_modifier >= 0 {
                        type_modifier
                    } else {
                        *base_modifier
                    };
                    current = (*base, modifier);
                    continue;
                }
                Some(CatalogKind::Array { element, delimiter }) => {
                    if array {
                        // An array of arrays does not exist; keep the text.
                        return Conversion::Text;
                    }
                    if *delimiter != b',' {
                        // Elements separated by another byte (PostGIS geometry and
                        // geography use `:`), like builtin `box[]` (`;`): the array's text.
                        return Conversion::Text;
                    }
                    array = true;
                    current = (*element, type_modifier);
                    continue;
                }
                Some(CatalogKind::Base) => types.named_base(type_oid).unwrap_or(Conversion::Text),
                Some(CatalogKind::Enum | CatalogKind::Composite | CatalogKind::Other) => {
                    Conversion::Text
                }
            };
            return match (array, element) {
                (false, conversion) => conversion,
                // A domain over an array type inside an array cannot happen either.
                (true, Conversion::Array(_)) => Conversion::Text,
                (true, conversion) => conversion.array(),
            };
        }
        // Domains nested beyond reason: the catalog is inconsistent; the text is exact.
        Conversion::Text
    }

    /// The conversion of an array whose elements convert as `self`; `Text` (the whole
    /// array's text form) when `self` is itself an array.
    pub fn array(self) -> Conversion {
        Conversion::Array(match self {
            Conversion::Bool => Element::Bool,
            Conversion::Int16 => Element::Int16,
            Conversion::Int32 => Element::Int32,
            Conversion::Int64 => Element::Int64,
            Conversion::Float32 => Element::Float32,
            Conversion::Float64 => Element::Float64,
            Conversion::Decimal { precision, scale }
            | Conversion::ConfiguredDecimal { precision, scale } => {
                Element::Decimal { precision, scale }
            }
            Conversion::Text => Element::Text,
            Conversion::Bytea => Element::Bytea,
            Conversion::Date => Element::Date,
            Conversion::Timestamp => Element::Timestamp,
            Conversion::TimestampTz => Element::TimestampTz,
            Conversion::Money => Element::Money,
            Conversion::Time => Element::Time,
            Conversion::TimeTz => Element::TimeTz,
            Conversion::Interval => Element::Interval,
            Conversion::Hstore => Element::Hstore,
            Conversion::HexBinary => Element::HexBinary,
            // A list of structs of lists would be one level too deep for the Column
            // builders: an array of ranges keeps each range's text.
            Conversion::Range(_) => Element::Text,
            Conversion::Array(_) => return Conversion::Text,
        })
    }

    /// The conversion whose Arrow type is `data_type`, used for lake columns that the
    /// source no longer has (always null, so any conversion of that type serves). The
    /// inverse of [`Conversion::data_type`] where that is one-to-one; `Int64` stands for
    /// `time` and `Decimal(19,2)` for `money` too. `None` for types pg2lake never writes.
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
            other if *other == Conversion::TimeTz.data_type() => Conversion::TimeTz,
            other if *other == Conversion::Interval.data_type() => Conversion::Interval,
            other if *other == Conversion::Hstore.data_type() => Conversion::Hstore,
            DataType::Struct(fields)
                if fields.len() == RANGE_FIELDS.len()
                    && fields.iter().zip(RANGE_FIELDS).all(|(f, n)| f.name() == n) =>
            {
                let bound = Conversion::for_arrow(fields.first()?.data_type())?;
                match bound.array() {
                    Conversion::Array(element)
                        if Conversion::Range(element).data_type() == *data_type =>
                    {
                        Conversion::Range(element)
                    }
                    _ => return None,
                }
            }
            DataType::List(element) if element.name() == LIST_ELEMENT => {
                match Conversion::for_arrow(element.data_type())?.array() {
                    array @ Conversion::Array(_) if array.data_type() == *data_type => array,
                    _ => return None,
                }
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
            Conversion::Int64 | Conversion::Time => "long".into(),
            Conversion::Float32 => "float".into(),
            Conversion::Float64 => "double".into(),
            Conversion::Decimal { precision, scale }
            | Conversion::ConfiguredDecimal { precision, scale } => {
                format!("decimal({precision},{scale})")
            }
            Conversion::Money => "decimal(19,2)".into(),
            Conversion::Text => "string".into(),
            Conversion::Bytea | Conversion::HexBinary => "binary".into(),
            Conversion::Date => "date".into(),
            Conversion::Timestamp => "timestamp_ntz".into(),
            Conversion::TimestampTz => "timestamp".into(),
            Conversion::TimeTz => "struct<microseconds:long,offset_seconds:integer>".into(),
            Conversion::Interval => "struct<months:integer,days:integer,microseconds:long>".into(),
            Conversion::Hstore => "map<string,string>".into(),
            Conversion::Range(element) => {
                let bound = element.conversion().lake_type_name();
                format!(
                    "struct<lower:{bound},upper:{bound},lower_inc:boolean,upper_inc:boolean,empty:boolean>"
                )
            }
            Conversion::Array(element) => {
                format!("array<{}>", element.conversion().lake_type_name())
            }
        }
    }

    /// The Arrow type this conversion produces.
    pub fn data_type(self) -> DataType {
        match self {
            Conversion::Bool => DataType::Boolean,
            Conversion::Int16 => DataType::Int16,
            Conversion::Int32 => DataType::Int32,
            Conversion::Int64 | Conversion::Time => DataType::Int64,
            Conversion::Float32 => DataType::Float32,
            Conversion::Float64 => DataType::Float64,
            Conversion::Decimal { precision, scale }
            | Conversion::ConfiguredDecimal { precision, scale } => {
                DataType::Decimal128(precision, scale)
            }
            Conversion::Money => DataType::Decimal128(MONEY_PRECISION, MONEY_SCALE),
            Conversion::Text => DataType::Utf8,
            Conversion::Bytea | Conversion::HexBinary => DataType::Binary,
            Conversion::Date => DataType::Date32,
            Conversion::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Conversion::TimestampTz => utc_timestamp(),
            Conversion::TimeTz => DataType::Struct(timetz_fields()),
            Conversion::Interval => DataType::Struct(interval_fields()),
            Conversion::Hstore => DataType::Map(Arc::new(hstore_entries()), false),
            Conversion::Range(element) => {
                DataType::Struct(range_fields(element.conversion().data_type()))
            }
            Conversion::Array(element) => {
                DataType::List(Arc::new(list_element(element.conversion().data_type())))
            }
        }
    }
}

/// Precision of the lake decimal of `money` (an int64 of cents: 17 + 2 digits).
pub const MONEY_PRECISION: u8 = 19;
/// Scale of the lake decimal of `money`: cents, as `lc_monetary=C` prints them.
pub const MONEY_SCALE: i8 = 2;

/// Field names of the `timetz` struct.
pub const TIMETZ_FIELDS: [&str; 2] = ["microseconds", "offset_seconds"];
/// Field names of the `interval` struct.
pub const INTERVAL_FIELDS: [&str; 3] = ["months", "days", "microseconds"];
/// Field names of a range struct.
pub const RANGE_FIELDS: [&str; 5] = ["lower", "upper", "lower_inc", "upper_inc", "empty"];

/// The fields of a range struct whose bounds are `bound`.
pub fn range_fields(bound: DataType) -> Fields {
    Fields::from(vec![
        Field::new(RANGE_FIELDS[0], bound.clone(), true),
        Field::new(RANGE_FIELDS[1], bound, true),
        Field::new(RANGE_FIELDS[2], DataType::Boolean, true),
        Field::new(RANGE_FIELDS[3], DataType::Boolean, true),
        Field::new(RANGE_FIELDS[4], DataType::Boolean, true),
    ])
}

/// Names of the map entry struct and its fields, as the Delta kernel names them when it
/// turns a Delta schema back into Arrow (so our batches equal the writer's schema).
pub const MAP_ENTRIES: [&str; 3] = ["key_value", "key", "value"];

/// The fields of a `timetz` struct. Nullable, as Delta struct fields are by default.
pub fn timetz_fields() -> Fields {
    Fields::from(vec![
        Field::new(TIMETZ_FIELDS[0], DataType::Int64, true),
        Field::new(TIMETZ_FIELDS[1], DataType::Int32, true),
    ])
}

/// The fields of an `interval` struct.
pub fn interval_fields() -> Fields {
    Fields::from(vec![
        Field::new(INTERVAL_FIELDS[0], DataType::Int32, true),
        Field::new(INTERVAL_FIELDS[1], DataType::Int32, true),
        Field::new(INTERVAL_FIELDS[2], DataType::Int64, true),
    ])
}

/// The entry field of an `hstore` map: non-null string keys, nullable string values.
pub fn hstore_entries() -> Field {
    Field::new(
        MAP_ENTRIES[0],
        DataType::Struct(Fields::from(vec![
            Field::new(MAP_ENTRIES[1], DataType::Utf8, false),
            Field::new(MAP_ENTRIES[2], DataType::Utf8, true),
        ])),
        false,
    )
}

/// The element field of a list column of `data_type` (named like `_unchanged`'s).
pub fn list_element(data_type: DataType) -> Field {
    Field::new(LIST_ELEMENT, data_type, true)
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
        oid::CID => "cid",
        oid::XID8 => "xid8",
        oid::POINT => "point",
        oid::MACADDR8 => "macaddr8",
        oid::TSVECTOR => "tsvector",
        oid::TSQUERY => "tsquery",
        oid::INT4RANGE => "int4range",
        oid::INT8RANGE => "int8range",
        oid::NUMRANGE => "numrange",
        oid::TSRANGE => "tsrange",
        oid::TSTZRANGE => "tstzrange",
        oid::DATERANGE => "daterange",
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
        other => {
            return match oid::array_element(other) {
                Some(element) => format!("{}[]", pg_type_name(element, type_modifier)),
                None => format!("type oid {other}"),
            };
        }
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
    /// The catalog's name of a type with a database-specific OID (`public.mood`), for
    /// messages; `None` for builtins and lake-only columns.
    pub type_name: Option<String>,
    /// How text values of this column are parsed.
    pub conversion: Conversion,
    /// The Arrow type of the column in the lake: `conversion`'s type, or a type it widens
    /// to exactly ([`Conversion::widens_to`]).
    pub data_type: DataType,
    /// What of the column's values may reach the lake ([`crate::privacy`]); `Clear` for a
    /// column known only from the lake until the source describes it.
    pub policy: Policy,
    /// What the batch builder does to each value under `policy` (hash, mask, truncate).
    pub protection: Option<Protection>,
    /// Whether files carry min/max statistics of the column (`privacy.no_statistics`).
    pub statistics: bool,
}

/// The `type_oid` of a column known only from the lake (Postgres never uses OID 0).
pub const UNKNOWN_TYPE: u32 = 0;

impl SourceColumn {
    /// `column` with the conversion its type resolved to (see [`TypeCatalog`]).
    fn typed(
        column: &RelationColumn,
        types: &TypeCatalog,
        conversion: Conversion,
        policy: Policy,
        protection: Option<Protection>,
        statistics: bool,
    ) -> SourceColumn {
        SourceColumn {
            policy,
            protection,
            statistics,
            name: column.name.clone(),
            type_oid: column.type_oid,
            type_modifier: column.type_modifier,
            is_key: column.is_key,
            type_name: types
                .get(column.type_oid)
                .map(|described| described.qualified_name.clone()),
            conversion,
            data_type: conversion.data_type(),
        }
    }

    /// The Postgres type for messages, e.g. `numeric(12,2)`.
    pub fn pg_type(&self) -> String {
        if self.type_oid == UNKNOWN_TYPE {
            return format!("unknown (lake type {})", self.conversion.lake_type_name());
        }
        if let Some(name) = &self.type_name {
            return name.clone();
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
    /// index of its column in `columns`; `None` for a column whose policy is `exclude`
    /// (its values are dropped).
    pub tuple_columns: Vec<Option<usize>>,
    /// The source's current columns that are not written (policy `exclude`).
    pub excluded: Vec<String>,
    /// The Arrow schema of the lake rows (`columns`, then [`META_COLUMNS`]).
    pub arrow: SchemaRef,
}

/// One column of a source table as a pgoutput Relation message (or the catalog)
/// describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (every column under FULL).
    pub is_key: bool,
    /// The column name.
    pub name: String,
    /// The OID of the column's data type.
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

impl TableSchema {
    /// Types the columns of `namespace.name` and builds the lake row schema of a new
    /// lake table (no earlier columns).
    pub fn new(
        namespace: &str,
        name: &str,
        columns: &[RelationColumn],
    ) -> Result<TableSchema, SchemaError> {
        TableSchema::with_types(namespace, name, columns, &TypeCatalog::default())
    }

    /// [`TableSchema::new`] with column types resolved through `types`.
    pub fn with_types(
        namespace: &str,
        name: &str,
        columns: &[RelationColumn],
        types: &TypeCatalog,
    ) -> Result<TableSchema, SchemaError> {
        let empty = TableSchema {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            columns: Vec::new(),
            tuple_columns: Vec::new(),
            excluded: Vec::new(),
            arrow: lake_arrow_schema(&[]),
        };
        // A new table has no earlier columns, so no type changes: the policy never applies.
        Ok(empty
            .evolve_with(columns, types, TypeChangePolicy::Fail)?
            .schema)
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
mod tests;
