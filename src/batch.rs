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
//!
//! Text forms expected (the replication session runs with `DateStyle=ISO`,
//! `IntervalStyle=postgres`, `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex`):
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
//! | everything else | as sent | Utf8 |
//!
//! BC years are astronomical in the lake (`1 BC` is year 0). A finite timestamp that would
//! equal one of the infinity sentinels, or that lies beyond the µs range of `i64`
//! (after 294247-01-10), is an error rather than a silent clamp.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Int64Builder, ListBuilder,
    PrimitiveBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{
    ArrowPrimitiveType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, TimestampMicrosecondType,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::lsn::Lsn;
use crate::pg::pgoutput::TupleValue;
use crate::schema::{Conversion, SourceColumn, TableSchema, unchanged_element};

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

/// A primitive column builder and the value staged for the row being pushed.
struct Primitive<T: ArrowPrimitiveType> {
    builder: PrimitiveBuilder<T>,
    staged: Option<T::Native>,
}

impl<T: ArrowPrimitiveType> Primitive<T> {
    fn new(conversion: Conversion) -> Self {
        Primitive {
            // The exact schema type (decimal precision, time zone) so finish() output
            // matches the TableSchema field by construction.
            builder: PrimitiveBuilder::<T>::new().with_data_type(conversion.data_type()),
            staged: None,
        }
    }

    /// Parses `text` (None = null) into the staged slot; returns the bytes it will take.
    fn stage(
        &mut self,
        text: Option<&[u8]>,
        parse: impl FnOnce(&[u8]) -> Result<T::Native, ValueError>,
    ) -> Result<usize, ValueError> {
        // Clear first: a failed push must not leave a value for the next one.
        self.staged = None;
        if let Some(text) = text {
            self.staged = Some(parse(text)?);
        }
        Ok(std::mem::size_of::<T::Native>())
    }

    fn commit(&mut self) {
        self.builder.append_option(self.staged.take());
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.builder.finish())
    }
}

/// One source column's builder, typed by its [`Conversion`].
enum Column {
    Bool {
        builder: BooleanBuilder,
        staged: Option<bool>,
    },
    Int16(Primitive<Int16Type>),
    Int32(Primitive<Int32Type>),
    Int64(Primitive<Int64Type>),
    Float32(Primitive<Float32Type>),
    Float64(Primitive<Float64Type>),
    Decimal {
        precision: u8,
        scale: i8,
        values: Primitive<Decimal128Type>,
    },
    Text(StringBuilder),
    Bytea {
        builder: BinaryBuilder,
        staged: bool,
        /// The decoded bytes of the staged value; reused across rows.
        scratch: Vec<u8>,
    },
    Date(Primitive<Date32Type>),
    Timestamp {
        with_offset: bool,
        values: Primitive<TimestampMicrosecondType>,
    },
}

impl Column {
    fn new(conversion: Conversion) -> Column {
        match conversion {
            Conversion::Bool => Column::Bool {
                builder: BooleanBuilder::new(),
                staged: None,
            },
            Conversion::Int16 => Column::Int16(Primitive::new(conversion)),
            Conversion::Int32 => Column::Int32(Primitive::new(conversion)),
            Conversion::Int64 => Column::Int64(Primitive::new(conversion)),
            Conversion::Float32 => Column::Float32(Primitive::new(conversion)),
            Conversion::Float64 => Column::Float64(Primitive::new(conversion)),
            Conversion::Decimal { precision, scale } => Column::Decimal {
                precision,
                scale,
                values: Primitive::new(conversion),
            },
            Conversion::Text => Column::Text(StringBuilder::new()),
            Conversion::Bytea => Column::Bytea {
                builder: BinaryBuilder::new(),
                staged: false,
                scratch: Vec::new(),
            },
            Conversion::Date => Column::Date(Primitive::new(conversion)),
            Conversion::Timestamp => Column::Timestamp {
                with_offset: false,
                values: Primitive::new(conversion),
            },
            Conversion::TimestampTz => Column::Timestamp {
                with_offset: true,
                values: Primitive::new(conversion),
            },
        }
    }

    /// Parses the row's value (None = null) without appending; returns its estimated size.
    fn stage(&mut self, text: Option<&[u8]>) -> Result<usize, ValueError> {
        match self {
            Column::Bool { staged, .. } => {
                *staged = None;
                if let Some(text) = text {
                    *staged = Some(parse_bool(text)?);
                }
                Ok(1)
            }
            Column::Int16(values) => values.stage(text, parse_int::<i16>),
            Column::Int32(values) => values.stage(text, parse_int::<i32>),
            Column::Int64(values) => values.stage(text, parse_int::<i64>),
            Column::Float32(values) => values.stage(text, parse_float::<f32>),
            Column::Float64(values) => values.stage(text, parse_float::<f64>),
            Column::Decimal {
                precision,
                scale,
                values,
            } => {
                let (precision, scale) = (*precision, *scale);
                values.stage(text, |t| parse_decimal(t, precision, scale))
            }
            Column::Text(_) => match text {
                Some(text) => {
                    std::str::from_utf8(text).map_err(|_| ValueError::InvalidUtf8)?;
                    Ok(text.len() + OFFSET_BYTES)
                }
                None => Ok(OFFSET_BYTES),
            },
            Column::Bytea {
                staged, scratch, ..
            } => {
                *staged = false;
                match text {
                    Some(text) => {
                        decode_bytea(text, scratch)?;
                        *staged = true;
                        Ok(scratch.len() + OFFSET_BYTES)
                    }
                    None => Ok(OFFSET_BYTES),
                }
            }
            Column::Date(values) => values.stage(text, parse_date),
            Column::Timestamp {
                with_offset,
                values,
            } => {
                let with_offset = *with_offset;
                values.stage(text, |t| parse_timestamp(t, with_offset))
            }
        }
    }

    /// Appends the staged value; `text` must be what was staged.
    fn commit(&mut self, text: Option<&[u8]>) {
        match self {
            Column::Bool { builder, staged } => builder.append_option(staged.take()),
            Column::Int16(values) => values.commit(),
            Column::Int32(values) => values.commit(),
            Column::Int64(values) => values.commit(),
            Column::Float32(values) => values.commit(),
            Column::Float64(values) => values.commit(),
            Column::Decimal { values, .. } => values.commit(),
            // Validated in stage(); checking again is the price of an atomic push
            // without `unsafe` (std's ASCII fast path makes it cheap). It cannot fail.
            Column::Text(builder) => {
                builder.append_option(text.and_then(|t| std::str::from_utf8(t).ok()));
            }
            Column::Bytea {
                builder,
                staged,
                scratch,
            } => {
                if std::mem::take(staged) {
                    builder.append_value(scratch.as_slice());
                } else {
                    builder.append_null();
                }
            }
            Column::Date(values) => values.commit(),
            Column::Timestamp { values, .. } => values.commit(),
        }
    }

    fn append_null(&mut self) {
        // Staging a null cannot fail; committing it appends the null.
        let _ = self.stage(None);
        self.commit(None);
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Bool { builder, .. } => Arc::new(builder.finish()),
            Column::Int16(values) => values.finish(),
            Column::Int32(values) => values.finish(),
            Column::Int64(values) => values.finish(),
            Column::Float32(values) => values.finish(),
            Column::Float64(values) => values.finish(),
            Column::Decimal { values, .. } => values.finish(),
            Column::Text(builder) => Arc::new(builder.finish()),
            Column::Bytea { builder, .. } => Arc::new(builder.finish()),
            Column::Date(values) => values.finish(),
            Column::Timestamp { values, .. } => values.finish(),
        }
    }
}

/// The rows of one table not yet handed to the lake writer, in Arrow builders.
pub struct TableBatch {
    schema: Arc<TableSchema>,
    /// One builder per lake source column (`schema.columns`).
    columns: Vec<Column>,
    /// Per lake source column, the position of its value in a change tuple; `None` for
    /// a column the source no longer has (always null).
    tuple_positions: Vec<Option<usize>>,
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
        for (position, &column) in schema.tuple_columns.iter().enumerate() {
            if let Some(slot) = tuple_positions.get_mut(column) {
                *slot = Some(position);
            }
        }
        TableBatch {
            columns,
            tuple_positions,
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
        for ((column, source), &position) in self
            .columns
            .iter_mut()
            .zip(&self.schema.columns)
            .zip(&self.tuple_positions)
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
                .stage(text)
                .map_err(|error| value_error(&self.schema, source, error))?;
        }

        // Commit: append the staged values; nothing below can fail.
        for (column, &position) in self.columns.iter_mut().zip(&self.tuple_positions) {
            column.commit(value_of(position).and_then(text_of));
        }
        if any_unchanged {
            for (&index, value) in self.schema.tuple_columns.iter().zip(values) {
                if matches!(value, TupleValue::UnchangedToast) {
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
        RecordBatch::try_new(self.schema.arrow.clone(), arrays).map_err(|source| {
            BatchError::Arrow {
                table: self.schema.qualified_name(),
                source,
            }
        })
    }
}

fn text_of(value: &TupleValue) -> Option<&[u8]> {
    match value {
        TupleValue::Text(text) => Some(text.as_ref()),
        _ => None,
    }
}

fn value_error(schema: &TableSchema, column: &SourceColumn, source: ValueError) -> BatchError {
    BatchError::Value {
        table: schema.qualified_name(),
        column: column.name.clone(),
        pg_type: column.pg_type(),
        source,
    }
}

/// The UTC calendar date (days since 1970-01-01) of a µs timestamp.
fn utc_date(micros: i64) -> i32 {
    // |i64::MAX µs| is about 106.8 million days, well inside i32.
    let days = micros.div_euclid(MICROS_PER_DAY);
    i32::try_from(days).unwrap_or(if days < 0 { i32::MIN } else { i32::MAX })
}

// ---------------------------------------------------------------------------------------
// Text-form parsers. Pure functions over the bytes Postgres sent; they never panic.
// ---------------------------------------------------------------------------------------

fn parse_bool(text: &[u8]) -> Result<bool, ValueError> {
    match text {
        b"t" => Ok(true),
        b"f" => Ok(false),
        _ => Err(ValueError::Malformed),
    }
}

/// A decimal integer (`-` sign only, as Postgres prints) narrowed to `T`.
fn parse_int<T: TryFrom<i64>>(text: &[u8]) -> Result<T, ValueError> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(ValueError::Malformed);
    }
    let mut value: i64 = 0;
    for &byte in digits {
        let digit = ascii_digit(byte)?;
        // Accumulate towards the sign so i64::MIN parses without overflow.
        value = value
            .checked_mul(10)
            .and_then(|v| {
                if negative {
                    v.checked_sub(digit)
                } else {
                    v.checked_add(digit)
                }
            })
            .ok_or(ValueError::OutOfRange)?;
    }
    T::try_from(value).map_err(|_| ValueError::OutOfRange)
}

fn ascii_digit(byte: u8) -> Result<i64, ValueError> {
    if byte.is_ascii_digit() {
        Ok(i64::from(byte - b'0'))
    } else {
        Err(ValueError::Malformed)
    }
}

/// Postgres prints floats as the shortest text that round-trips (`extra_float_digits` > 0)
/// or `NaN` / `Infinity` / `-Infinity`; Rust's parser is correctly rounded and accepts all
/// of these, so the value is recovered bit for bit.
fn parse_float<T: std::str::FromStr>(text: &[u8]) -> Result<T, ValueError> {
    std::str::from_utf8(text)
        .map_err(|_| ValueError::InvalidUtf8)?
        .parse()
        .map_err(|_| ValueError::Malformed)
}

/// A numeric's text as the unscaled integer of a Decimal128(precision, scale); exact.
///
/// Postgres prints constrained numerics with exactly `scale` fractional digits; fewer are
/// padded, more are an error (never rounded), as are more than `precision - scale`
/// integer digits, so the result always fits the declared precision.
fn parse_decimal(text: &[u8], precision: u8, scale: i8) -> Result<i128, ValueError> {
    if matches!(text, b"NaN" | b"Infinity" | b"-Infinity") {
        return Err(ValueError::NotFinite);
    }
    let scale = usize::try_from(scale).map_err(|_| ValueError::OutOfRange)?;
    let int_room = usize::from(precision).saturating_sub(scale);
    let (negative, unsigned) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    let (int, frac) = match unsigned.iter().position(|&b| b == b'.') {
        Some(dot) => (
            unsigned.get(..dot).unwrap_or_default(),
            unsigned.get(dot + 1..).unwrap_or_default(),
        ),
        None => (unsigned, &[][..]),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(ValueError::Malformed);
    }
    if !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return Err(ValueError::Malformed);
    }
    if frac.len() > scale {
        return Err(ValueError::TooManyFractionalDigits);
    }
    let significant = match int.iter().position(|&b| b != b'0') {
        Some(first) => int.get(first..).unwrap_or_default(),
        None => &[][..],
    };
    if significant.len() > int_room {
        return Err(ValueError::TooManyIntegerDigits);
    }
    // At most 38 digits from here on, below i128::MAX (about 1.7e38).
    let mut value: i128 = 0;
    for &byte in significant.iter().chain(frac) {
        let digit = i128::from(ascii_digit(byte)?);
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(digit))
            .ok_or(ValueError::OutOfRange)?;
    }
    for _ in frac.len()..scale {
        value = value.checked_mul(10).ok_or(ValueError::OutOfRange)?;
    }
    Ok(if negative { -value } else { value })
}

/// `\x` followed by pairs of hex digits, decoded into `out` (cleared first).
fn decode_bytea(text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    out.clear();
    let hex = text.strip_prefix(b"\\x").ok_or(ValueError::ByteaNotHex)?;
    if !hex.len().is_multiple_of(2) {
        return Err(ValueError::Malformed);
    }
    out.reserve(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        let [high, low] = pair else {
            return Err(ValueError::Malformed);
        };
        out.push((hex_digit(*high)? << 4) | hex_digit(*low)?);
    }
    Ok(())
}

fn hex_digit(byte: u8) -> Result<u8, ValueError> {
    match byte {
        b'0'..=b'9' => Ok(byte - b'0'),
        b'a'..=b'f' => Ok(byte - b'a' + 10),
        b'A'..=b'F' => Ok(byte - b'A' + 10),
        _ => Err(ValueError::Malformed),
    }
}

/// A cursor over ASCII text for the date/time parsers.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(text: &'a [u8]) -> Self {
        Cursor { rest: text }
    }

    /// Between `min` and `max` decimal digits as a number.
    fn digits(&mut self, min: usize, max: usize) -> Result<i64, ValueError> {
        let count = self
            .rest
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if count < min {
            return Err(ValueError::Malformed);
        }
        let (digits, rest) = self
            .rest
            .split_at_checked(count)
            .ok_or(ValueError::Malformed)?;
        self.rest = rest;
        // At most 9 digits are ever requested, so this cannot overflow.
        digits
            .iter()
            .try_fold(0i64, |acc, &b| Ok(acc * 10 + ascii_digit(b)?))
    }

    /// Consumes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == byte => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), ValueError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(ValueError::Malformed)
        }
    }

    fn end(&self) -> Result<(), ValueError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ValueError::Malformed)
        }
    }
}

/// Splits off the ` BC` suffix Postgres appends to dates before year 1.
fn strip_bc(text: &[u8]) -> (&[u8], bool) {
    match text.strip_suffix(b" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// `YYYY-MM-DD` (4 to 7 year digits) as days since 1970-01-01, with the BC flag applied.
fn parse_ymd(cursor: &mut Cursor<'_>, bc: bool) -> Result<i64, ValueError> {
    // Postgres dates reach year 5874897: seven digits.
    let year = cursor.digits(4, 7)?;
    cursor.expect(b'-')?;
    let month = cursor.digits(2, 2)?;
    cursor.expect(b'-')?;
    let day = cursor.digits(2, 2)?;
    if year == 0 {
        // Postgres never prints year 0: 1 BC is followed by 1 AD.
        return Err(ValueError::Malformed);
    }
    // Astronomical numbering, as Postgres computes internally: 1 BC = 0, 2 BC = -1.
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(ValueError::Malformed);
    }
    Ok(days_from_civil(year, month, day))
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year), after
/// Howard Hinnant's `days_from_civil`. Exact for any year a Postgres date can hold.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A `date` as days since 1970-01-01; `infinity` / `-infinity` → `i32::MAX` / `i32::MIN`.
fn parse_date(text: &[u8]) -> Result<i32, ValueError> {
    match text {
        b"infinity" => return Ok(i32::MAX),
        b"-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (text, bc) = strip_bc(text);
    let mut cursor = Cursor::new(text);
    let days = parse_ymd(&mut cursor, bc)?;
    cursor.end()?;
    // Postgres dates span about ±5.9 million years: inside i32 days, and never equal
    // to the infinity sentinels.
    i32::try_from(days).map_err(|_| ValueError::OutOfRange)
}

/// A `timestamp` (`with_offset` false) or `timestamptz` (true) as µs since the Unix
/// epoch (UTC for timestamptz); `infinity` / `-infinity` → `i64::MAX` / `i64::MIN`.
fn parse_timestamp(text: &[u8], with_offset: bool) -> Result<i64, ValueError> {
    match text {
        b"infinity" => return Ok(i64::MAX),
        b"-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    // Postgres prints ` BC` last, after the offset.
    let (text, bc) = strip_bc(text);
    let mut cursor = Cursor::new(text);
    let days = parse_ymd(&mut cursor, bc)?;
    cursor.expect(b' ')?;
    let hour = cursor.digits(2, 2)?;
    cursor.expect(b':')?;
    let minute = cursor.digits(2, 2)?;
    cursor.expect(b':')?;
    let second = cursor.digits(2, 2)?;
    let mut fraction = 0;
    if cursor.eat(b'.') {
        let start = cursor.rest.len();
        let digits = cursor.digits(1, 6)?;
        let width = start - cursor.rest.len();
        // Postgres trims trailing zeros: ".5" is 500000 µs.
        fraction = digits * 10_i64.pow(u32::try_from(6 - width).unwrap_or(0));
        if cursor.rest.first().is_some_and(u8::is_ascii_digit) {
            // More than 6 fractional digits: finer than µs, not a Postgres timestamp.
            return Err(ValueError::Malformed);
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(ValueError::Malformed);
    }
    let mut offset_seconds = 0;
    if with_offset {
        let sign = if cursor.eat(b'+') {
            1
        } else if cursor.eat(b'-') {
            -1
        } else {
            return Err(ValueError::Malformed);
        };
        let hours = cursor.digits(2, 2)?;
        let mut minutes = 0;
        let mut seconds = 0;
        if cursor.eat(b':') {
            minutes = cursor.digits(2, 2)?;
            if cursor.eat(b':') {
                seconds = cursor.digits(2, 2)?;
            }
        }
        if minutes > 59 || seconds > 59 {
            return Err(ValueError::Malformed);
        }
        offset_seconds = sign * (hours * 3600 + minutes * 60 + seconds);
    }
    cursor.end()?;
    let local_seconds = hour * 3600 + minute * 60 + second;
    let micros = days
        .checked_mul(MICROS_PER_DAY)
        .and_then(|m| m.checked_add((local_seconds - offset_seconds) * 1_000_000))
        .and_then(|m| m.checked_add(fraction))
        .ok_or(ValueError::OutOfRange)?;
    // A finite value must not pose as an infinity.
    if micros == i64::MAX || micros == i64::MIN {
        return Err(ValueError::OutOfRange);
    }
    Ok(micros)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, TimeUnit};
    use bytes::Bytes;
    use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};

    use super::*;
    use crate::pg::pgoutput::RelationColumn;
    use crate::schema::oid;

    fn typmod(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | (scale & 0x7ff)) + 4
    }

    fn table(columns: &[(&str, u32, i32)]) -> Arc<TableSchema> {
        let columns: Vec<RelationColumn> = columns
            .iter()
            .map(|&(name, type_oid, type_modifier)| RelationColumn {
                is_key: false,
                name: name.to_owned(),
                type_oid,
                type_modifier,
            })
            .collect();
        Arc::new(TableSchema::new("public", "t", &columns).unwrap())
    }

    fn meta(op: Op) -> ChangeMeta {
        ChangeMeta {
            op,
            lsn: Lsn(0x16_B374_D848),
            seq: 3,
            // 2026-11-22 07:38:35 UTC
            commit_ts_micros: 1_795_333_115_000_000,
            xid: Some(4242),
        }
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// One column of `type_oid`/`typmod` holding `value`: the finished column array.
    fn convert(type_oid: u32, type_modifier: i32, value: &str) -> Result<ArrayRef, BatchError> {
        let mut batch = TableBatch::new(table(&[("v", type_oid, type_modifier)]));
        batch.push(&meta(Op::Insert), &[text(value)])?;
        Ok(batch.finish().unwrap().column(0).clone())
    }

    fn convert_err(type_oid: u32, type_modifier: i32, value: &str) -> ValueError {
        match convert(type_oid, type_modifier, value) {
            Err(BatchError::Value { source, .. }) => source,
            other => panic!("{value:?} should fail, got {other:?}"),
        }
    }

    fn ts(value: &str) -> i64 {
        parse_timestamp(value.as_bytes(), true).unwrap()
    }

    #[test]
    fn converts_every_type_and_null() {
        let schema = table(&[
            ("b", oid::BOOL, -1),
            ("i2", oid::INT2, -1),
            ("i4", oid::INT4, -1),
            ("i8", oid::INT8, -1),
            ("o", oid::OID, -1),
            ("f4", oid::FLOAT4, -1),
            ("f8", oid::FLOAT8, -1),
            ("n", oid::NUMERIC, typmod(12, 2)),
            ("nu", oid::NUMERIC, -1),
            ("t", oid::TEXT, -1),
            ("vc", oid::VARCHAR, 14),
            ("u", oid::UUID, -1),
            ("j", oid::JSONB, -1),
            ("by", oid::BYTEA, -1),
            ("d", oid::DATE, -1),
            ("ts", oid::TIMESTAMP, -1),
            ("tz", oid::TIMESTAMPTZ, -1),
        ]);
        let mut batch = TableBatch::new(schema.clone());
        let row = [
            "t",
            "-7",
            "123456",
            "9000000000",
            "4294967295",
            "0.1",
            "3.141592653589793",
            "1234.50",
            "-0.000000000000000000000000000000000000000001",
            "héllo",
            "abc",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            r#"{"a": 1}"#,
            r"\x0a0bFF",
            "2026-11-22",
            "2026-11-22 07:38:35",
            "2026-11-22 07:38:35.123456+00",
        ];
        batch
            .push(&meta(Op::Insert), &row.map(text))
            .expect("valid row");
        let nulls: Vec<TupleValue> = row.iter().map(|_| TupleValue::Null).collect();
        batch.push(&meta(Op::Update), &nulls).unwrap();
        let rb = batch.finish().unwrap();
        assert_eq!(rb.schema(), schema.arrow);
        assert_eq!(rb.num_rows(), 2);
        for (i, column) in rb.columns().iter().take(row.len()).enumerate() {
            assert!(column.is_valid(0), "column {i} row 0");
            assert!(column.is_null(1), "column {i} row 1");
        }
        let col = |name: &str| rb.column_by_name(name).unwrap().clone();
        assert!(col("b").as_boolean().value(0));
        assert_eq!(col("i2").as_primitive::<Int16Type>().value(0), -7);
        assert_eq!(col("i4").as_primitive::<Int32Type>().value(0), 123_456);
        assert_eq!(
            col("i8").as_primitive::<Int64Type>().value(0),
            9_000_000_000
        );
        assert_eq!(col("o").as_primitive::<Int64Type>().value(0), 4_294_967_295);
        assert_eq!(col("f4").as_primitive::<Float32Type>().value(0), 0.1_f32);
        assert_eq!(
            col("f8").as_primitive::<Float64Type>().value(0),
            std::f64::consts::PI
        );
        assert_eq!(col("n").as_primitive::<Decimal128Type>().value(0), 123_450);
        assert_eq!(col("n").data_type(), &DataType::Decimal128(12, 2));
        assert_eq!(
            col("nu").as_string::<i32>().value(0),
            "-0.000000000000000000000000000000000000000001"
        );
        assert_eq!(col("t").as_string::<i32>().value(0), "héllo");
        assert_eq!(col("vc").as_string::<i32>().value(0), "abc");
        assert_eq!(
            col("u").as_string::<i32>().value(0),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(col("j").as_string::<i32>().value(0), r#"{"a": 1}"#);
        assert_eq!(
            col("by").as_binary::<i32>().value(0),
            &[0x0a, 0x0b, 0xff][..]
        );
        let date = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let days = (date - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days();
        assert_eq!(
            i64::from(col("d").as_primitive::<Date32Type>().value(0)),
            days
        );
        assert_eq!(
            col("ts")
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_795_333_115_000_000
        );
        assert_eq!(
            col("tz")
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_795_333_115_123_456
        );
        assert_eq!(
            col("tz").data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }

    #[test]
    fn writes_metadata_columns() {
        let mut batch = TableBatch::new(table(&[("id", oid::INT4, -1)]));
        let mut m = meta(Op::Delete);
        batch.push(&m, &[text("1")]).unwrap();
        m.op = Op::Read;
        m.xid = None;
        // 1969-12-31 23:59:59.999999 UTC: before the epoch, the date must floor.
        m.commit_ts_micros = -1;
        batch.push(&m, &[text("2")]).unwrap();
        let rb = batch.finish().unwrap();
        let col = |name: &str| rb.column_by_name(name).unwrap().clone();
        let op = col("_op");
        assert_eq!(op.as_string::<i32>().value(0), "d");
        assert_eq!(op.as_string::<i32>().value(1), "r");
        assert_eq!(
            col("_lsn").as_primitive::<Int64Type>().value(0),
            0x16_B374_D848
        );
        assert_eq!(col("_seq").as_primitive::<Int64Type>().value(0), 3);
        assert_eq!(
            col("_commit_ts")
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_795_333_115_000_000
        );
        assert_eq!(col("_xid").as_primitive::<Int64Type>().value(0), 4242);
        assert!(col("_xid").is_null(1));
        assert!(col("_unchanged").is_null(0));
        let date = col("date");
        let date = date.as_primitive::<Date32Type>();
        assert_eq!(date.value(0), 20_779); // 2026-11-22
        assert_eq!(date.value(1), -1); // 1969-12-31
        let codes = [Op::Read, Op::Insert, Op::Update, Op::Delete, Op::Truncate].map(Op::code);
        assert_eq!(codes, ['r', 'c', 'u', 'd', 't']);
        for op in [Op::Read, Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
            assert_eq!(op.as_str(), op.code().to_string());
        }
    }

    #[test]
    fn integer_extremes() {
        let i8 = |v: &str| {
            convert(oid::INT8, -1, v)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0)
        };
        assert_eq!(i8("9223372036854775807"), i64::MAX);
        assert_eq!(i8("-9223372036854775808"), i64::MIN);
        assert_eq!(i8("0"), 0);
        assert_eq!(
            convert_err(oid::INT8, -1, "9223372036854775808"),
            ValueError::OutOfRange
        );
        assert_eq!(
            convert(oid::INT2, -1, "-32768")
                .unwrap()
                .as_primitive::<Int16Type>()
                .value(0),
            i16::MIN
        );
        assert_eq!(convert_err(oid::INT2, -1, "32768"), ValueError::OutOfRange);
        assert_eq!(
            convert(oid::INT4, -1, "2147483647")
                .unwrap()
                .as_primitive::<Int32Type>()
                .value(0),
            i32::MAX
        );
        for bad in ["", "-", "1.0", " 1", "1e3", "+1", "０"] {
            assert_eq!(
                convert_err(oid::INT4, -1, bad),
                ValueError::Malformed,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn float_specials_and_exactness() {
        let f8 = |v: &str| {
            convert(oid::FLOAT8, -1, v)
                .unwrap()
                .as_primitive::<Float64Type>()
                .value(0)
        };
        assert!(f8("NaN").is_nan());
        assert_eq!(f8("Infinity"), f64::INFINITY);
        assert_eq!(f8("-Infinity"), f64::NEG_INFINITY);
        assert_eq!(f8("1e+308"), 1e308);
        assert_eq!(f8("-0"), 0.0);
        assert!(f8("-0").is_sign_negative());
        assert_eq!(f8("5e-324"), f64::from_bits(1));
        let f4 = convert(oid::FLOAT4, -1, "3.4028235e+38").unwrap();
        assert_eq!(f4.as_primitive::<Float32Type>().value(0), f32::MAX);
        assert_eq!(convert_err(oid::FLOAT8, -1, "one"), ValueError::Malformed);
    }

    #[test]
    fn numeric_exact_and_extremes() {
        let dec = |p, s, v: &str| {
            convert(oid::NUMERIC, typmod(p, s), v)
                .unwrap()
                .as_primitive::<Decimal128Type>()
                .value(0)
        };
        let max38 = "99999999999999999999999999999999999999";
        assert_eq!(dec(38, 0, max38), 10_i128.pow(38) - 1);
        assert_eq!(dec(38, 0, &format!("-{max38}")), -(10_i128.pow(38) - 1));
        assert_eq!(
            dec(38, 38, "0.99999999999999999999999999999999999999"),
            10_i128.pow(38) - 1
        );
        assert_eq!(dec(12, 2, "-0.01"), -1);
        assert_eq!(dec(12, 2, "0.00"), 0);
        assert_eq!(dec(12, 2, "-0.00"), 0);
        assert_eq!(dec(12, 2, "9999999999.99"), 999_999_999_999);
        // Fewer fractional digits than the scale are padded.
        assert_eq!(dec(12, 2, "12.5"), 1250);
        assert_eq!(dec(12, 2, "12"), 1200);
        assert_eq!(dec(5, 0, "00042"), 42);
        assert_eq!(
            convert_err(oid::NUMERIC, typmod(12, 2), "1.234"),
            ValueError::TooManyFractionalDigits
        );
        assert_eq!(
            convert_err(oid::NUMERIC, typmod(12, 2), "12345678901.00"),
            ValueError::TooManyIntegerDigits
        );
        assert_eq!(
            convert_err(oid::NUMERIC, typmod(38, 0), &format!("{max38}9")),
            ValueError::TooManyIntegerDigits
        );
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(
                convert_err(oid::NUMERIC, typmod(12, 2), special),
                ValueError::NotFinite
            );
        }
        for bad in ["", "-", ".", "1.2.3", "1,00", "1e5", "--1", " 1"] {
            assert_eq!(
                convert_err(oid::NUMERIC, typmod(12, 2), bad),
                ValueError::Malformed,
                "{bad:?}"
            );
        }
        // Unconstrained numeric keeps the exact text, specials included.
        for v in ["NaN", "Infinity", "-Infinity", "123.4500", "1e-5"] {
            let array = convert(oid::NUMERIC, -1, v).unwrap();
            assert_eq!(array.as_string::<i32>().value(0), v);
        }
    }

    #[test]
    fn bytea_hex() {
        let bytes = |v: &str| {
            convert(oid::BYTEA, -1, v)
                .unwrap()
                .as_binary::<i32>()
                .value(0)
                .to_vec()
        };
        assert_eq!(bytes(r"\x"), Vec::<u8>::new());
        assert_eq!(bytes(r"\xDEADbeef"), vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(convert_err(oid::BYTEA, -1, r"\x0"), ValueError::Malformed);
        assert_eq!(convert_err(oid::BYTEA, -1, r"\xzz"), ValueError::Malformed);
        assert_eq!(
            convert_err(oid::BYTEA, -1, r"\001abc"),
            ValueError::ByteaNotHex
        );
    }

    #[test]
    fn bool_and_text() {
        let b = |v: &str| convert(oid::BOOL, -1, v).unwrap().as_boolean().value(0);
        assert!(b("t"));
        assert!(!b("f"));
        assert_eq!(convert_err(oid::BOOL, -1, "true"), ValueError::Malformed);
        let mut batch = TableBatch::new(table(&[("v", oid::TEXT, -1)]));
        let err = batch
            .push(
                &meta(Op::Insert),
                &[TupleValue::Text(Bytes::from_static(b"\xff\xfe"))],
            )
            .unwrap_err();
        assert!(matches!(
            err,
            BatchError::Value {
                source: ValueError::InvalidUtf8,
                ..
            }
        ));
    }

    #[test]
    fn dates_bc_far_future_and_infinity() {
        let d = |v: &str| parse_date(v.as_bytes()).unwrap();
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let chrono_days = |y, m, dd| {
            i32::try_from((NaiveDate::from_ymd_opt(y, m, dd).unwrap() - epoch).num_days()).unwrap()
        };
        assert_eq!(d("1970-01-01"), 0);
        assert_eq!(d("2024-02-29"), chrono_days(2024, 2, 29));
        assert_eq!(d("10000-01-01"), chrono_days(10000, 1, 1));
        // 1 BC is astronomical year 0 (a leap year); 44 BC is -43.
        assert_eq!(d("0001-01-01 BC"), chrono_days(0, 1, 1));
        assert_eq!(d("0001-02-29 BC"), chrono_days(0, 2, 29));
        assert_eq!(d("0044-03-15 BC"), chrono_days(-43, 3, 15));
        // Postgres's first date, Julian day 0.
        assert_eq!(d("4714-11-24 BC"), -2_440_588);
        // Postgres's last date: the day before JULIAN_MAX (5874898-01-01).
        assert_eq!(d("5874897-12-31"), 2_147_483_494 - 1 - 2_440_588);
        assert_eq!(d("infinity"), i32::MAX);
        assert_eq!(d("-infinity"), i32::MIN);
        for bad in [
            "2023-02-29",
            "2023-13-01",
            "2023-00-10",
            "2023-01-32",
            "0000-01-01",
            "123-01-01",
            "2023-1-01",
            "2023-01-01 AD",
            "2023-01-01 ",
            "Infinity",
        ] {
            assert!(parse_date(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let array = convert(oid::DATE, -1, "0044-03-15 BC").unwrap();
        assert_eq!(
            array.as_primitive::<Date32Type>().value(0),
            chrono_days(-43, 3, 15)
        );
    }

    #[test]
    fn timestamps_offsets_bc_and_infinity() {
        let utc = ts("2026-11-22 07:38:35.123456+00");
        assert_eq!(utc, 1_795_333_115_123_456);
        assert_eq!(ts("2026-11-22 13:08:35.123456+05:30"), utc);
        assert_eq!(ts("2026-11-21 23:38:35.123456-08:00:00"), utc);
        assert_eq!(ts("2026-11-22 07:38:35.5+00"), 1_795_333_115_500_000);
        assert_eq!(ts("1970-01-01 00:00:00+00"), 0);
        assert_eq!(ts("1969-12-31 23:59:59.999999+00"), -1);
        assert_eq!(ts("1970-01-01 00:00:00-00:00:01"), 1_000_000);
        let bc = NaiveDate::from_ymd_opt(-43, 3, 15)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros();
        assert_eq!(ts("0044-03-15 12:00:00+00 BC"), bc);
        assert_eq!(
            parse_timestamp(b"0044-03-15 12:00:00 BC", false).unwrap(),
            bc
        );
        let y10k = NaiveDate::from_ymd_opt(10000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros();
        assert_eq!(ts("10000-01-01 00:00:00+00"), y10k);
        assert_eq!(ts("infinity"), i64::MAX);
        assert_eq!(ts("-infinity"), i64::MIN);
        // Postgres allows up to 294276 AD, past i64 µs since 1970: an error, not a clamp.
        assert_eq!(
            parse_timestamp(b"294276-12-31 23:59:59.999999+00", true),
            Err(ValueError::OutOfRange)
        );
        // The one finite instant that would read back as 'infinity'.
        assert_eq!(
            parse_timestamp(b"294247-01-10 04:00:54.775807+00", true),
            Err(ValueError::OutOfRange)
        );
        assert_eq!(
            parse_timestamp(b"294247-01-10 04:00:54.775806+00", true),
            Ok(i64::MAX - 1)
        );
        for bad in [
            "2026-11-22 07:38:35",            // timestamptz needs an offset
            "2026-11-22 07:38:35+0",          // offset hours are two digits
            "2026-11-22 07:38:35.1234567+00", // finer than µs
            "2026-11-22 24:00:00+00",
            "2026-11-22 07:60:00+00",
            "2026-11-22T07:38:35+00",
            "2026-11-22 07:38:35.+00",
            "2026-11-22 07:38:35+05:",
            "2026-11-22 07:38:35+05:60",
            "2026-11-22 07:38:35+00 BC BC",
        ] {
            assert!(parse_timestamp(bad.as_bytes(), true).is_err(), "{bad:?}");
        }
        // timestamp without time zone rejects an offset.
        assert!(parse_timestamp(b"2026-11-22 07:38:35+00", false).is_err());
        let array = convert(oid::TIMESTAMPTZ, -1, "2026-11-22 13:08:35.123456+05:30").unwrap();
        assert_eq!(
            array.as_primitive::<TimestampMicrosecondType>().value(0),
            utc
        );
        let array = convert(oid::TIMESTAMP, -1, "infinity").unwrap();
        assert_eq!(
            array.as_primitive::<TimestampMicrosecondType>().value(0),
            i64::MAX
        );
    }

    #[test]
    fn unchanged_toast_is_null_and_listed() {
        let mut batch = TableBatch::new(table(&[
            ("id", oid::INT4, -1),
            ("body", oid::TEXT, -1),
            ("doc", oid::JSONB, -1),
        ]));
        batch
            .push(
                &meta(Op::Update),
                &[
                    text("1"),
                    TupleValue::UnchangedToast,
                    TupleValue::UnchangedToast,
                ],
            )
            .unwrap();
        batch
            .push(&meta(Op::Update), &[text("2"), text("x"), TupleValue::Null])
            .unwrap();
        let rb = batch.finish().unwrap();
        let body = rb.column_by_name("body").unwrap();
        assert!(body.is_null(0));
        let unchanged = rb.column_by_name("_unchanged").unwrap().as_list::<i32>();
        let first = unchanged.value(0);
        let names: Vec<&str> = first.as_string::<i32>().iter().flatten().collect();
        assert_eq!(names, ["body", "doc"]);
        // Every column sent: null, not an empty list.
        assert!(unchanged.is_null(1));
        assert_eq!(
            rb.schema()
                .field_with_name("_unchanged")
                .unwrap()
                .data_type(),
            &crate::schema::unchanged_type()
        );
    }

    #[test]
    fn truncate_row_has_null_source_columns() {
        let mut batch = TableBatch::new(table(&[
            ("id", oid::INT8, -1),
            ("n", oid::NUMERIC, typmod(10, 2)),
            ("by", oid::BYTEA, -1),
            ("t", oid::TEXT, -1),
        ]));
        batch.push_truncate(&meta(Op::Truncate));
        assert_eq!(batch.len(), 1);
        let rb = batch.finish().unwrap();
        for i in 0..4 {
            assert!(rb.column(i).is_null(0), "column {i}");
        }
        let op = rb.column_by_name("_op").unwrap();
        assert_eq!(op.as_string::<i32>().value(0), "t");
        assert!(rb.column_by_name("_unchanged").unwrap().is_null(0));
    }

    #[test]
    fn finish_twice_and_reuse() {
        let mut batch = TableBatch::new(table(&[("v", oid::TEXT, -1)]));
        batch.push(&meta(Op::Insert), &[text("a")]).unwrap();
        assert_eq!(batch.finish().unwrap().num_rows(), 1);
        assert!(batch.is_empty());
        assert_eq!(batch.approx_bytes(), 0);
        let empty = batch.finish().unwrap();
        assert_eq!(empty.num_rows(), 0);
        assert_eq!(empty.schema(), batch.schema().arrow);
        batch.push(&meta(Op::Insert), &[text("b")]).unwrap();
        let again = batch.finish().unwrap();
        assert_eq!(again.num_rows(), 1);
        assert_eq!(again.column(0).as_string::<i32>().value(0), "b");
    }

    #[test]
    fn approx_bytes_grows_with_data() {
        let mut batch = TableBatch::new(table(&[("id", oid::INT8, -1), ("v", oid::TEXT, -1)]));
        assert_eq!(batch.approx_bytes(), 0);
        batch
            .push(&meta(Op::Insert), &[text("1"), text("a")])
            .unwrap();
        let one = batch.approx_bytes();
        assert!(one >= 8 + 1 + META_ROW_BYTES, "{one}");
        let big = "x".repeat(10_000);
        batch
            .push(&meta(Op::Insert), &[text("2"), text(&big)])
            .unwrap();
        assert!(batch.approx_bytes() >= one + 10_000);
        batch.push_truncate(&meta(Op::Truncate));
        assert!(batch.approx_bytes() > one + 10_000 + META_ROW_BYTES);
    }

    #[test]
    fn values_land_in_their_lake_columns_after_the_source_evolved() {
        let columns = |spec: &[(&str, u32)]| -> Vec<RelationColumn> {
            spec.iter()
                .map(|&(name, type_oid)| RelationColumn {
                    is_key: false,
                    name: name.to_owned(),
                    type_oid,
                    type_modifier: -1,
                })
                .collect()
        };
        let base = table(&[("id", oid::INT4, -1), ("old", oid::TEXT, -1)]);
        // `old` dropped, `added` added: the tuple is (id, added); the lake (id, old, added).
        let evolved = base
            .evolve(&columns(&[("id", oid::INT4), ("added", oid::INT8)]))
            .unwrap()
            .schema;
        let mut batch = TableBatch::new(Arc::new(evolved));
        batch
            .push(&meta(Op::Insert), &[text("7"), TupleValue::UnchangedToast])
            .unwrap();
        batch
            .push(&meta(Op::Insert), &[text("8"), text("80")])
            .unwrap();
        let err = batch
            .push(&meta(Op::Insert), &[text("9"), text("x"), text("y")])
            .unwrap_err();
        assert!(matches!(
            err,
            BatchError::ColumnCount {
                expected: 2,
                got: 3,
                ..
            }
        ));
        let out = batch.finish().unwrap();
        let names: Vec<&str> = out
            .schema_ref()
            .fields()
            .iter()
            .take(3)
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["id", "old", "added"]);
        let id = out.column(0).as_primitive::<Int32Type>();
        assert_eq!((id.value(0), id.value(1)), (7, 8));
        assert_eq!(out.column(1).null_count(), 2, "a dropped column is null");
        let added = out.column(2).as_primitive::<Int64Type>();
        assert!(added.is_null(0));
        assert_eq!(added.value(1), 80);
        let unchanged = out.column_by_name("_unchanged").unwrap().as_list::<i32>();
        assert_eq!(
            unchanged.value(0).as_string::<i32>().value(0),
            "added",
            "an unchanged TOAST value is named by its lake column"
        );
        assert!(unchanged.is_null(1));
    }

    #[test]
    fn wrong_column_count_is_an_error() {
        let mut batch = TableBatch::new(table(&[("a", oid::INT4, -1), ("b", oid::INT4, -1)]));
        let err = batch.push(&meta(Op::Insert), &[text("1")]).unwrap_err();
        assert!(matches!(
            err,
            BatchError::ColumnCount {
                expected: 2,
                got: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("public.t"), "{err}");
        assert!(batch.is_empty());
    }

    #[test]
    fn binary_values_are_rejected_by_column() {
        let mut batch = TableBatch::new(table(&[("a", oid::INT4, -1)]));
        let err = batch
            .push(
                &meta(Op::Insert),
                &[TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 1]))],
            )
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, BatchError::BinaryFormat { .. }));
        assert!(
            message.contains("public.t") && message.contains("column a"),
            "{message}"
        );
        assert!(message.contains("int4"), "{message}");
    }

    #[test]
    fn failed_push_adds_nothing_and_never_shows_the_value() {
        let mut batch = TableBatch::new(table(&[
            ("id", oid::INT8, -1),
            ("secret", oid::TEXT, -1),
            ("amount", oid::NUMERIC, typmod(12, 2)),
            ("blob", oid::BYTEA, -1),
        ]));
        batch
            .push(
                &meta(Op::Insert),
                &[text("1"), text("a"), text("1.00"), text(r"\x01")],
            )
            .unwrap();
        let before = batch.approx_bytes();
        let err = batch
            .push(
                &meta(Op::Insert),
                &[text("2"), text("hunter2"), text("31337.123"), text(r"\x02")],
            )
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("public.t"), "{message}");
        assert!(message.contains("column amount"), "{message}");
        assert!(message.contains("numeric(12,2)"), "{message}");
        assert!(
            !message.contains("31337") && !message.contains("hunter2"),
            "{message}"
        );
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.approx_bytes(), before);
        // A following row lands cleanly: no half-appended columns, no stale staged bytea.
        batch
            .push(
                &meta(Op::Insert),
                &[text("3"), text("c"), text("3.00"), TupleValue::Null],
            )
            .unwrap();
        let rb = batch.finish().unwrap();
        assert_eq!(rb.num_rows(), 2);
        assert_eq!(rb.column(0).as_primitive::<Int64Type>().value(1), 3);
        assert!(rb.column(3).is_null(1));
    }

    /// xorshift64: deterministic, no extra crates.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, bound: u128) -> u128 {
            ((u128::from(self.next()) << 64) | u128::from(self.next())) % bound
        }

        /// Uniform in `lo..=hi`.
        fn between(&mut self, lo: i64, hi: i64) -> i64 {
            let span = u128::try_from(i128::from(hi) - i128::from(lo) + 1).unwrap();
            i64::try_from(i128::from(lo) + i128::try_from(self.below(span)).unwrap()).unwrap()
        }
    }

    /// How Postgres prints a numeric(p,s) value: exactly `scale` fractional digits.
    fn render_numeric(unscaled: i128, scale: usize) -> String {
        let digits = format!("{:0>width$}", unscaled.unsigned_abs(), width = scale + 1);
        let (int, frac) = digits.split_at(digits.len() - scale);
        let sign = if unscaled < 0 { "-" } else { "" };
        if scale == 0 {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        }
    }

    #[test]
    fn property_numeric_text_round_trips() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let precision = 1 + rng.below(38) as u8;
            let scale = rng.below(u128::from(precision) + 1) as i8;
            // Bias towards short values too, so small magnitudes are exercised.
            let digits = 1 + rng.below(u128::from(precision)) as u32;
            let magnitude = rng.below(10_u128.pow(digits)) as i128;
            let unscaled = if rng.next().is_multiple_of(2) {
                magnitude
            } else {
                -magnitude
            };
            let rendered = render_numeric(unscaled, scale as usize);
            assert_eq!(
                parse_decimal(rendered.as_bytes(), precision, scale),
                Ok(unscaled),
                "numeric({precision},{scale}) {rendered}"
            );
        }
    }

    /// How Postgres prints a timestamp (ISO DateStyle): trailing fractional zeros trimmed,
    /// offset as short as exact, ` BC` last.
    fn render_timestamp(local: NaiveDateTime, offset_seconds: Option<i64>) -> String {
        let (year, bc) = if local.year() <= 0 {
            (1 - local.year(), " BC")
        } else {
            (local.year(), "")
        };
        let mut out = format!(
            "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            local.month(),
            local.day(),
            local.hour(),
            local.minute(),
            local.second()
        );
        let micros = local.nanosecond() / 1000;
        if micros != 0 {
            let fraction = format!("{micros:06}");
            out.push('.');
            out.push_str(fraction.trim_end_matches('0'));
        }
        if let Some(offset) = offset_seconds {
            let sign = if offset < 0 { '-' } else { '+' };
            let abs = offset.abs();
            out.push_str(&format!("{sign}{:02}", abs / 3600));
            if abs % 3600 != 0 {
                out.push_str(&format!(":{:02}", abs % 3600 / 60));
                if abs % 60 != 0 {
                    out.push_str(&format!(":{:02}", abs % 60));
                }
            }
        }
        out.push_str(bc);
        out
    }

    #[test]
    fn property_timestamp_text_round_trips() {
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        // Postgres's first instant (4714-11-24 BC) to near chrono's last year.
        let lo = -210_866_803_200_000_000;
        let hi = 8_000_000_000_000_000_000;
        for i in 0..20_000 {
            let micros = match i {
                0 => lo,
                1 => 0,
                _ if i % 3 == 0 => rng.between(-100_000_000_000_000_000, 100_000_000_000_000_000),
                _ => rng.between(lo, hi),
            };
            let utc = DateTime::from_timestamp_micros(micros).unwrap().naive_utc();
            let plain = render_timestamp(utc, None);
            assert_eq!(
                parse_timestamp(plain.as_bytes(), false),
                Ok(micros),
                "{plain}"
            );
            let offset = match i % 4 {
                0 => 0,
                1 => 19_800,  // +05:30
                2 => -28_800, // -08:00
                _ => rng.between(-15 * 3600 - 3599, 15 * 3600 + 3599),
            };
            let local = DateTime::from_timestamp_micros(micros + offset * 1_000_000)
                .unwrap()
                .naive_utc();
            let tz = render_timestamp(local, Some(offset));
            assert_eq!(parse_timestamp(tz.as_bytes(), true), Ok(micros), "{tz}");
        }
    }

    #[test]
    fn property_date_text_round_trips() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        for _ in 0..20_000 {
            // chrono's range (about ±262143 years) covers every Postgres timestamp date.
            let days = rng.between(-2_440_588, 90_000_000);
            let date = epoch + chrono::TimeDelta::days(days);
            let (year, bc) = if date.year() <= 0 {
                (1 - date.year(), " BC")
            } else {
                (date.year(), "")
            };
            let text = format!("{year:04}-{:02}-{:02}{bc}", date.month(), date.day());
            assert_eq!(
                parse_date(text.as_bytes()).map(i64::from),
                Ok(days),
                "{text}"
            );
        }
    }
}
