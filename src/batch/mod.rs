//! Per-table Arrow builders: Postgres text values in, `RecordBatch`es of lake rows out.
//!
//! ```text
//!   pgoutput tuple (text form)      TableBatch                          RecordBatch
//!   [Text, Null, UnchangedToast] ─► stage: parse every value ─► commit ─► finish() ─► lake writer
//!                                   (nothing appended yet)     (append)
//! ```
//!
//! Invariants:
//! - `push` is atomic: every value of the row is parsed ("staged") before anything is
//!   appended, so a value that cannot be converted leaves the batch exactly as it was.
//! - Conversions are exact. Numbers are parsed from the bytes Postgres sent, never via
//!   floating point or rounding; a value that does not fit its column is an error.
//! - Errors name the table, column and Postgres type, never the value: values are user data.
//! - Per row, parsing allocates nothing: text is parsed in place and appended straight into
//!   the builders (bytea decodes into one reused scratch buffer per column).
//! - An unchanged TOAST value that Postgres did not send becomes a null *and* its column
//!   name is listed in `_unchanged`, so readers can tell "not sent" from "NULL".
//! - Values are parsed as the column's source type; a lake column of a wider type (after
//!   a widening) receives them widened exactly when the chunk is finished.
//!
//! Text forms expected (every session runs with `DateStyle=ISO`, `IntervalStyle=postgres`,
//! `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex`, `lc_monetary=C`):
//!
//! | type | text | lake value |
//! |---|---|---|
//! | bool | `t` / `f` | Boolean |
//! | int2/4/8, oid | decimal | Int16/32/64 |
//! | float4/8 | shortest round-trip, `NaN`, `Infinity`, `-Infinity` | Float32/64 (exact) |
//! | numeric(p,s), p ≤ 38 | `-123.45` | Decimal128(p,s); NaN / ±Infinity are errors (Delta decimals have neither) |
//! | bytea | `\x0a0b` | Binary |
//! | date | `2026-11-22`, `0044-03-15 BC`, `infinity` | Date32: days since 1970-01-01; `infinity` = `i32::MAX`, `-infinity` = `i32::MIN` |
//! | timestamp | `2026-11-22 07:38:35.123456` | µs since 1970, no zone; `infinity` = `i64::MAX`, `-infinity` = `i64::MIN` |
//! | timestamptz | `… 07:38:35+00`, `+05:30`, `-08:00:00`, then ` BC` | µs since 1970 UTC; infinities as above |
//! | money | `-$1,234.56` | Decimal128(19,2): the cents |
//! | time | `13:14:15.5`, `24:00:00` | Int64 µs since midnight |
//! | timetz | `13:14:15.5+05:30` | Struct {microseconds, offset_seconds (east of UTC)} |
//! | interval | `-1 years -2 mons +3 days -04:05:06.789` | Struct {months, days, microseconds}, each with its own sign |
//! | arrays | `{1,NULL,"a \"b\""}`, `[0:1]={…}`, `{{1,2},{3,4}}` | List; NULL elements kept; multi-dimensional values flattened row-major (warned once per column) |
//! | hstore | `"k"=>"v", "k2"=>NULL` | Map<Utf8, Utf8> |
//! | builtin ranges | `[1,10)`, `(,"2020-01-01 00:00:00"]`, `empty` | Struct {lower, upper, lower_inc, upper_inc, empty} |
//! | geometry, geography | hex EWKB | Binary |
//! | everything else | as sent | Utf8 |
//!
//! BC years are astronomical in the lake (`1 BC` is year 0). A finite timestamp that would
//! equal one of the infinity sentinels, or that lies beyond the µs range of `i64`
//! (after 294247-01-10), is an error rather than a silent clamp.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::lsn::Lsn;
use crate::pg::pgoutput::TupleValue;
use crate::schema::{
    Conversion, SourceColumn, TableSchema, column_key, unchanged_element, widen_array,
};

use column::Column;

/// Microseconds per day.
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Estimated bytes of the metadata columns of one row: `_op` (1 byte + 4-byte offset),
/// `_lsn`, `_seq`, `_commit_ts`, `_xid` (8 each), `_unchanged` offset (4), `date` (4).
const META_ROW_BYTES: usize = 5 + 8 * 4 + 4 + 4;

/// Width of one offset in a Utf8/Binary/List array.
const OFFSET_BYTES: usize = 4;

/// The kind of change a lake row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A row copied by the initial snapshot.
    Read,
    /// An INSERT.
    Insert,
    /// An UPDATE (the new row).
    Update,
    /// A DELETE (the replica-identity columns of the old row).
    Delete,
    /// A TRUNCATE of the table (no column values).
    Truncate,
}

impl Op {
    /// The `_op` code: `r`, `c`, `u`, `d` or `t` (Debezium's letters).
    pub fn code(self) -> char {
        match self {
            Op::Read => 'r',
            Op::Insert => 'c',
            Op::Update => 'u',
            Op::Delete => 'd',
            Op::Truncate => 't',
        }
    }

    /// The `_op` code as a string slice.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// The metadata of one change: where it sits in the source's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeMeta {
    /// What happened.
    pub op: Op,
    /// Commit LSN of the source transaction (snapshot rows: the snapshot's LSN).
    pub lsn: Lsn,
    /// Ordinal of the change inside its transaction.
    pub seq: i64,
    /// Commit time of the source transaction, µs since the Unix epoch, UTC.
    pub commit_ts_micros: i64,
    /// Source transaction id, when Postgres sent one.
    pub xid: Option<u32>,
}

/// Why a row could not be added to a batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The row has a different number of values than the table has columns.
    #[error(
        "table {table}: a change carries {got} column values but the table has {expected} columns (protocol violation or a missed Relation message)"
    )]
    ColumnCount {
        /// The table, `schema.name`.
        table: String,
        /// Columns in the table schema.
        expected: usize,
        /// Values in the change.
        got: usize,
    },
    /// A value arrived in binary format, which pg2lake never requests.
    #[error(
        "table {table} column {column} ({pg_type}): the value arrived in binary format, which pg2lake does not request (protocol violation)"
    )]
    BinaryFormat {
        /// The table, `schema.name`.
        table: String,
        /// The column.
        column: String,
        /// The column's Postgres type.
        pg_type: String,
    },
    /// A value could not be converted exactly to its lake type.
    #[error("table {table} column {column} ({pg_type}): the value {source}")]
    Value {
        /// The table, `schema.name`.
        table: String,
        /// The column.
        column: String,
        /// The column's Postgres type.
        pg_type: String,
        /// What is wrong with the value (never the value itself).
        #[source]
        source: ValueError,
    },
    /// A value does not fit the decimal type `column_types` gave its column.
    #[error(
        "table {table} column {column} ({pg_type}): the value {source}, so it does not fit column_types.\"{key}\" = decimal({precision},{scale}) (fix: give that entry a wider decimal, or remove it to store the exact decimal text)"
    )]
    ConfiguredDecimal {
        /// The table, `schema.name`.
        table: String,
        /// The column.
        column: String,
        /// The column's Postgres type.
        pg_type: String,
        /// The configured key, `schema.table.column`.
        key: String,
        /// The configured precision.
        precision: u8,
        /// The configured scale.
        scale: i8,
        /// What is wrong with the value (never the value itself).
        #[source]
        source: ValueError,
    },
    /// Arrow refused the assembled columns (a bug: builders and schema disagree).
    #[error("table {table}: assembling the Arrow record batch failed: {source}")]
    Arrow {
        /// The table, `schema.name`.
        table: String,
        /// Arrow's complaint.
        #[source]
        source: ArrowError,
    },
}

/// What is wrong with one value; phrased to follow "the value …", and never quoting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The bytes are not UTF-8.
    #[error("is not valid UTF-8 (fix: run the source database with UTF8 encoding)")]
    InvalidUtf8,
    /// The text is not in the form Postgres prints for this type.
    #[error("is not in the Postgres text form expected for this type")]
    Malformed,
    /// The value does not fit the lake type.
    #[error("is out of range for the column's lake type")]
    OutOfRange,
    /// A decimal with more fractional digits than the column scale.
    #[error("has more fractional digits than the column scale (pg2lake never rounds)")]
    TooManyFractionalDigits,
    /// A decimal with more integer digits than precision − scale.
    #[error("has more integer digits than the column precision allows")]
    TooManyIntegerDigits,
    /// NaN or ±Infinity in a constrained numeric column.
    #[error(
        "is NaN or infinite, which a Delta decimal column cannot hold (only unconstrained numeric columns, stored as text, keep such values)"
    )]
    NotFinite,
    /// A bytea value not in hex format.
    #[error("is not in bytea hex format (fix: set bytea_output = 'hex' for the replication role)")]
    ByteaNotHex,
}

pub mod binary;
mod column;
#[cfg(test)]
mod tests;
mod text;

/// The rows of one table not yet handed to the lake writer, in Arrow builders.
pub struct TableBatch {
    schema: Arc<TableSchema>,
    /// One builder per lake source column (`schema.columns`).
    columns: Vec<Column>,
    /// Per lake source column, the position of its value in a change tuple; `None` for
    /// a column the source no longer has (always null).
    tuple_positions: Vec<Option<usize>>,
    /// Per lake source column, whether a binary COPY sends it in binary (else as text).
    copy_binary: Vec<bool>,
    /// Per lake source column, what its policy does to each value (see [`crate::privacy`]).
    treatments: Vec<Treatment>,
    /// Per lake source column, the protected form of the row being pushed.
    scratch: Vec<Vec<u8>>,
    op: StringBuilder,
    lsn: Int64Builder,
    seq: Int64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    xid: Int64Builder,
    unchanged: ListBuilder<StringBuilder>,
    date: Date32Builder,
    rows: usize,
    bytes: usize,
}

impl fmt::Debug for TableBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableBatch")
            .field("table", &self.schema.qualified_name())
            .field("rows", &self.rows)
            .field("approx_bytes", &self.bytes)
            .finish()
    }
}

impl TableBatch {
    /// Empty builders for the lake rows of `schema`.
    pub fn new(schema: Arc<TableSchema>) -> Self {
        let columns = schema
            .columns
            .iter()
            .map(|c| Column::new(c.conversion))
            .collect();
        let mut tuple_positions = vec![None; schema.columns.len()];
        for (position, column) in schema.tuple_columns.iter().enumerate() {
            if let Some(slot) = column.and_then(|c| tuple_positions.get_mut(c)) {
                *slot = Some(position);
            }
        }
        let copy_binary = schema.columns.iter().map(binary::decodes).collect();
        let treatments = schema.columns.iter().map(Treatment::of).collect();
        TableBatch {
            columns,
            tuple_positions,
            copy_binary,
            treatments,
            scratch: vec![Vec::new(); schema.columns.len()],
            op: StringBuilder::new(),
            lsn: Int64Builder::new(),
            seq: Int64Builder::new(),
            commit_ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            xid: Int64Builder::new(),
            unchanged: ListBuilder::new(StringBuilder::new()).with_field(unchanged_element()),
            date: Date32Builder::new(),
            rows: 0,
            bytes: 0,
            schema,
        }
    }

    /// The table this batch buffers rows for.
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Estimated bytes buffered (values, fixed widths, offsets); kept as a running sum.
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Adds one change; `values` holds one entry per column of the source's current
    /// layout (`schema.tuple_columns`), in attribute order. Lake columns the source no
    /// longer has are null.
    ///
    /// Atomic: on error nothing is added. An `UnchangedToast` value becomes a null and its
    /// column is named in `_unchanged`.
    pub fn push(&mut self, meta: &ChangeMeta, values: &[TupleValue]) -> Result<(), BatchError> {
        if values.len() != self.schema.tuple_columns.len() {
            return Err(BatchError::ColumnCount {
                table: self.schema.qualified_name(),
                expected: self.schema.tuple_columns.len(),
                got: values.len(),
            });
        }
        let value_of = |position: Option<usize>| position.and_then(|p| values.get(p));

        // Stage: parse every value; nothing is appended yet.
        let mut bytes = META_ROW_BYTES;
        let mut any_unchanged = false;
        for ((((column, source), &position), treatment), scratch) in self
            .columns
            .iter_mut()
            .zip(&self.schema.columns)
            .zip(&self.tuple_positions)
            .zip(&self.treatments)
            .zip(&mut self.scratch)
        {
            let text = match value_of(position) {
                None | Some(TupleValue::Null) => None,
                Some(TupleValue::UnchangedToast) => {
                    any_unchanged = true;
                    None
                }
                Some(TupleValue::Text(text)) => Some(text.as_ref()),
                Some(TupleValue::Binary(_)) => {
                    return Err(BatchError::BinaryFormat {
                        table: self.schema.qualified_name(),
                        column: source.name.clone(),
                        pg_type: source.pg_type(),
                    });
                }
            };
            bytes += column
                .stage(treatment.apply(text, scratch))
                .map_err(|error| value_error(&self.schema, source, error))?;
        }

        // Commit: append the staged values; nothing below can fail.
        self.commit_staged(|position| value_of(position).and_then(text_of));
        for (column, source) in self.columns.iter_mut().zip(&self.schema.columns) {
            if column.take_reshaped() {
                tracing::warn!(
                    table = %self.schema.qualified_name(),
                    column = %source.name,
                    pg_type = %source.pg_type(),
                    fix = %format!(
                        "column_types: {{{}: text}} stores each array's text form, dimensions and bounds included",
                        crate::schema::column_key(&self.schema.namespace, &self.schema.name, &source.name)
                    ),
                    "array value with several dimensions or lower bounds other than 1 stored as the flat list of its elements (row-major); its dimensions are not kept"
                );
            }
        }
        if any_unchanged {
            for (&index, value) in self.schema.tuple_columns.iter().zip(values) {
                if let (Some(index), TupleValue::UnchangedToast) = (index, value) {
                    let name = &self.schema.columns[index].name;
                    self.unchanged.values().append_value(name);
                    bytes += name.len() + OFFSET_BYTES;
                }
            }
        }
        // A null list, not an empty one, when every column was sent.
        self.unchanged.append(any_unchanged);
        self.append_meta(meta);
        self.rows += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// Adds one row of a binary `COPY` of the source's current columns: `fields[i]` is
    /// the range in `data` of the i-th column's value (attribute order), `None` for NULL.
    /// Columns [`binary::decodes`] accepts arrive in their send form, the others as their
    /// text output (the snapshot selects them so). Atomic like [`TableBatch::push`].
    pub fn push_binary_copy(
        &mut self,
        meta: &ChangeMeta,
        data: &[u8],
        fields: &[Option<Range<usize>>],
    ) -> Result<(), BatchError> {
        if fields.len() != self.schema.tuple_columns.len() {
            return Err(BatchError::ColumnCount {
                table: self.schema.qualified_name(),
                expected: self.schema.tuple_columns.len(),
                got: fields.len(),
            });
        }
        let value_of = |position: Option<usize>| -> Option<&[u8]> {
            let range = fields.get(position?)?.clone()?;
            data.get(range)
        };
        let mut bytes = META_ROW_BYTES;
        for (((((column, source), &position), &binary), treatment), scratch) in self
            .columns
            .iter_mut()
            .zip(&self.schema.columns)
            .zip(&self.tuple_positions)
            .zip(&self.copy_binary)
            .zip(&self.treatments)
            .zip(&mut self.scratch)
        {
            let raw = value_of(position);
            // A protected column's value is its text (a text type's send form is its
            // text), and what is staged is the protected form of it.
            let staged = if binary && matches!(treatment, Treatment::Keep) {
                column.stage_binary(raw)
            } else {
                column.stage(treatment.apply(raw, scratch))
            };
            bytes += staged.map_err(|error| value_error(&self.schema, source, error))?;
        }
        self.commit_staged(value_of);
        self.unchanged.append(false);
        self.append_meta(meta);
        self.rows += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// Appends the values staged for one row: `value_of` gives a column's raw value from
    /// its tuple position, as it was staged.
    fn commit_staged<'a>(&mut self, value_of: impl Fn(Option<usize>) -> Option<&'a [u8]>) {
        for (((column, &position), treatment), scratch) in self
            .columns
            .iter_mut()
            .zip(&self.tuple_positions)
            .zip(&self.treatments)
            .zip(&self.scratch)
        {
            column.commit(treatment.applied(value_of(position), scratch));
        }
    }

    /// Adds a truncate row: every source column null.
    pub fn push_truncate(&mut self, meta: &ChangeMeta) {
        let mut bytes = META_ROW_BYTES;
        for column in &mut self.columns {
            column.append_null();
            bytes += 1;
        }
        self.unchanged.append(false);
        self.append_meta(meta);
        self.rows += 1;
        self.bytes += bytes;
    }

    fn append_meta(&mut self, meta: &ChangeMeta) {
        self.op.append_value(meta.op.as_str());
        self.lsn.append_value(meta.lsn.as_i64());
        self.seq.append_value(meta.seq);
        self.commit_ts.append_value(meta.commit_ts_micros);
        self.xid.append_option(meta.xid.map(i64::from));
        self.date.append_value(utc_date(meta.commit_ts_micros));
    }

    /// Takes the buffered rows as a `RecordBatch` of the table's lake schema; the builders
    /// are left empty and reusable.
    pub fn finish(&mut self) -> Result<RecordBatch, BatchError> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 7);
        arrays.extend(self.columns.iter_mut().map(Column::finish));
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.lsn.finish()));
        arrays.push(Arc::new(self.seq.finish()));
        arrays.push(Arc::new(self.commit_ts.finish()));
        arrays.push(Arc::new(self.xid.finish()));
        arrays.push(Arc::new(self.unchanged.finish()));
        arrays.push(Arc::new(self.date.finish()));
        self.rows = 0;
        self.bytes = 0;
        let arrow_error = |source| BatchError::Arrow {
            table: self.schema.qualified_name(),
            source,
        };
        // A source type narrower than its lake column (after a widening) is parsed as the
        // source type and widened exactly here, once per chunk.
        for (array, source) in arrays.iter_mut().zip(&self.schema.columns) {
            if array.data_type() != &source.data_type {
                *array = widen_array(array, &source.data_type).map_err(arrow_error)?;
            }
        }
        RecordBatch::try_new(self.schema.arrow.clone(), arrays).map_err(|source| {
            BatchError::Arrow {
                table: self.schema.qualified_name(),
                source,
            }
        })
    }
}

/// One value's Postgres text form as a one-element array of `conversion`'s lake type,
/// parsed exactly as a change's value is (for `forget`, which names a subject by value).
pub fn parse_value(conversion: Conversion, text: &str) -> Result<ArrayRef, ValueError> {
    let mut column = Column::new(conversion);
    column.stage(Some(text.as_bytes()))?;
    column.commit(Some(text.as_bytes()));
    Ok(column.finish())
}

/// What a column's policy does to its values on the way into the batch.
#[derive(Debug, Clone)]
enum Treatment {
    /// Values as they come.
    Keep,
    /// Every value null (policy `null`).
    Null,
    /// Values replaced by their protected form (hash, mask, truncate).
    Protect(crate::privacy::Protection),
}

impl Treatment {
    fn of(column: &SourceColumn) -> Treatment {
        match (&column.protection, column.policy) {
            (Some(protection), _) => Treatment::Protect(protection.clone()),
            (None, crate::privacy::Policy::Null) => Treatment::Null,
            (None, _) => Treatment::Keep,
        }
    }

    /// The value to stage: `raw`, none, or its protected form (computed into `scratch`).
    fn apply<'a>(&self, raw: Option<&'a [u8]>, scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        if let (Treatment::Protect(protection), Some(raw)) = (self, raw) {
            protection.apply(raw, scratch);
        }
        self.applied(raw, scratch)
    }

    /// The value staged by [`Treatment::apply`] for the same `raw` (for the commit step).
    fn applied<'a>(&self, raw: Option<&'a [u8]>, scratch: &'a [u8]) -> Option<&'a [u8]> {
        match self {
            Treatment::Keep => raw,
            Treatment::Null => None,
            Treatment::Protect(_) => raw.map(|_| scratch),
        }
    }
}

fn text_of(value: &TupleValue) -> Option<&[u8]> {
    match value {
        TupleValue::Text(text) => Some(text.as_ref()),
        _ => None,
    }
}

fn value_error(schema: &TableSchema, column: &SourceColumn, source: ValueError) -> BatchError {
    if let Conversion::ConfiguredDecimal { precision, scale } = column.conversion {
        return BatchError::ConfiguredDecimal {
            table: schema.qualified_name(),
            column: column.name.clone(),
            pg_type: column.pg_type(),
            key: column_key(&schema.namespace, &schema.name, &column.name),
            precision,
            scale,
            source,
        };
    }
    BatchError::Value {
        table: schema.qualified_name(),
        column: column.name.clone(),
        pg_type: column.pg_type(),
        source,
    }
}

/// The UTC calendar date (days since 1970-01-01) of a µs timestamp.
pub(crate) fn utc_date(micros: i64) -> i32 {
    // |i64::MAX µs| is about 106.8 million days, well inside i32.
    let days = micros.div_euclid(MICROS_PER_DAY);
    i32::try_from(days).unwrap_or(if days < 0 { i32::MIN } else { i32::MAX })
}
