//! One Arrow builder per lake source column, typed by its [`Conversion`].

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int32Builder, Int64Builder, ListArray, MapBuilder,
    MapFieldNames, NullBufferBuilder, PrimitiveBuilder, StringBuilder, StructArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Decimal128Type, Field, Fields, Float32Type,
    Float64Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};

use super::text::{
    ArrayShape, RangeFlags, decode_hex, parse_array, parse_bool, parse_date, parse_decimal,
    parse_float, parse_hstore, parse_int, parse_interval, parse_money, parse_range, parse_time,
    parse_timestamp, parse_timetz,
};
use super::{OFFSET_BYTES, ValueError, binary};
use crate::schema::{
    Conversion, MAP_ENTRIES, interval_fields, list_element, range_fields, timetz_fields,
};

/// A primitive column builder and the value staged for the row being pushed.
pub(super) struct Primitive<T: ArrowPrimitiveType> {
    builder: PrimitiveBuilder<T>,
    staged: Option<T::Native>,
}

impl<T: ArrowPrimitiveType> Primitive<T> {
    pub(super) fn new(conversion: Conversion) -> Self {
        Primitive {
            // The exact schema type (decimal precision, time zone) so finish() output
            // matches the TableSchema field by construction.
            builder: PrimitiveBuilder::<T>::new().with_data_type(conversion.data_type()),
            staged: None,
        }
    }

    /// Parses `text` (None = null) into the staged slot; returns the bytes it will take.
    pub(super) fn stage(
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

    pub(super) fn commit(&mut self) {
        self.builder.append_option(self.staged.take());
    }

    pub(super) fn finish(&mut self) -> ArrayRef {
        Arc::new(self.builder.finish())
    }
}

/// One source column's builder, typed by its [`Conversion`].
pub(super) enum Column {
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
    /// `bytea` (`\x` then hex digits) and hex-printed binary types (PostGIS EWKB).
    Bytea {
        builder: BinaryBuilder,
        staged: bool,
        /// The decoded bytes of the staged value; reused across rows.
        scratch: Vec<u8>,
        /// Whether the text starts with bytea's `\x`.
        prefixed: bool,
    },
    Date(Primitive<Date32Type>),
    Timestamp {
        with_offset: bool,
        values: Primitive<TimestampMicrosecondType>,
    },
    Money(Primitive<Decimal128Type>),
    Time(Primitive<Int64Type>),
    TimeTz {
        micros: Int64Builder,
        offsets: Int32Builder,
        nulls: NullBufferBuilder,
        staged: Option<(i64, i32)>,
    },
    Interval {
        months: Int32Builder,
        days: Int32Builder,
        micros: Int64Builder,
        nulls: NullBufferBuilder,
        staged: Option<(i32, i32, i64)>,
    },
    Hstore {
        builder: MapBuilder<StringBuilder, StringBuilder>,
        staged: bool,
        /// Unescaped keys and values of the staged map; reused across rows.
        scratch: Vec<u8>,
        pairs: Vec<(Range<usize>, Option<Range<usize>>)>,
    },
    Array(Box<ListColumn>),
    Range(Box<RangeColumn>),
}

/// The texts of a range's two bounds (`None` = unbounded) within `scratch`.
fn bound_texts<'a>(scratch: &'a [u8], bounds: &[Option<Range<usize>>; 2]) -> [Option<&'a [u8]>; 2] {
    bounds
        .clone()
        .map(|bound| bound.map(|r| scratch.get(r).unwrap_or_default()))
}

/// A range column: the bounds go through their own [`Column`]s.
pub(super) struct RangeColumn {
    fields: Fields,
    lower: Column,
    upper: Column,
    lower_inc: BooleanBuilder,
    upper_inc: BooleanBuilder,
    empty: BooleanBuilder,
    nulls: NullBufferBuilder,
    staged: Option<RangeFlags>,
    /// Unescaped bound texts of the staged value and their spans; reused across rows.
    scratch: Vec<u8>,
    bounds: [Option<Range<usize>>; 2],
}

impl RangeColumn {
    /// An empty range column whose bounds convert as `bound`.
    fn new(bound: Conversion) -> RangeColumn {
        RangeColumn {
            fields: range_fields(bound.data_type()),
            lower: Column::new(bound),
            upper: Column::new(bound),
            lower_inc: BooleanBuilder::new(),
            upper_inc: BooleanBuilder::new(),
            empty: BooleanBuilder::new(),
            nulls: NullBufferBuilder::new(0),
            staged: None,
            scratch: Vec::new(),
            bounds: [None, None],
        }
    }

    fn stage(&mut self, text: Option<&[u8]>) -> Result<usize, ValueError> {
        self.staged = None;
        let Some(text) = text else {
            return Ok(3);
        };
        let flags = parse_range(text, &mut self.scratch, &mut self.bounds)?;
        // Both bounds are parsed now, so commit() cannot fail.
        let [lower, upper] = bound_texts(&self.scratch, &self.bounds);
        let bytes = 3 + self.lower.stage(lower)? + self.upper.stage(upper)?;
        self.staged = Some(flags);
        Ok(bytes)
    }

    fn commit(&mut self) {
        let staged = self.staged.take();
        let [lower, upper] = match staged {
            Some(_) => bound_texts(&self.scratch, &self.bounds),
            None => [None, None],
        };
        for (column, bound) in [(&mut self.lower, lower), (&mut self.upper, upper)] {
            // Staged successfully in stage(): cannot fail.
            let _ = column.stage(bound);
            column.commit(bound);
        }
        let flags = staged.unwrap_or_default();
        self.lower_inc.append_value(flags.lower_inc);
        self.upper_inc.append_value(flags.upper_inc);
        self.empty.append_value(flags.empty);
        self.nulls.append(staged.is_some());
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(StructArray::new(
            self.fields.clone(),
            vec![
                self.lower.finish(),
                self.upper.finish(),
                Arc::new(self.lower_inc.finish()),
                Arc::new(self.upper_inc.finish()),
                Arc::new(self.empty.finish()),
            ],
            self.nulls.finish(),
        ))
    }
}

/// A list column: the elements go through their own [`Column`].
pub(super) struct ListColumn {
    elements: Column,
    element_field: Arc<Field>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    staged: bool,
    /// Unescaped element texts of the staged array and their spans; reused across rows.
    scratch: Vec<u8>,
    spans: Vec<Option<Range<usize>>>,
    /// Whether a value with more than one dimension (or other lower bounds) was staged
    /// and not yet reported by [`Column::take_reshaped`].
    reshaped: bool,
    /// Whether that was reported already: it is reported once per column.
    reported: bool,
}

impl ListColumn {
    /// An empty list column whose elements convert as `element`.
    fn new(element: Conversion) -> ListColumn {
        ListColumn {
            elements: Column::new(element),
            element_field: Arc::new(list_element(element.data_type())),
            offsets: vec![0],
            nulls: NullBufferBuilder::new(0),
            staged: false,
            scratch: Vec::new(),
            spans: Vec::new(),
            reshaped: false,
            reported: false,
        }
    }

    fn stage(&mut self, text: Option<&[u8]>) -> Result<usize, ValueError> {
        self.staged = false;
        let Some(text) = text else {
            return Ok(OFFSET_BYTES);
        };
        let shape: ArrayShape = parse_array(text, &mut self.scratch, &mut self.spans)?;
        // Every element is parsed now, so commit() cannot fail.
        let mut bytes = OFFSET_BYTES;
        for span in &self.spans {
            let element = span
                .clone()
                .map(|r| self.scratch.get(r).unwrap_or_default());
            bytes += self.elements.stage(element)?;
        }
        if i32::try_from(self.elements_len() + self.spans.len()).is_err() {
            return Err(ValueError::OutOfRange);
        }
        self.reshaped |= !shape.is_plain() && !self.reported;
        self.staged = true;
        Ok(bytes)
    }

    fn elements_len(&self) -> usize {
        self.offsets
            .last()
            .map_or(0, |&o| usize::try_from(o).unwrap_or(0))
    }

    fn commit(&mut self) {
        if std::mem::take(&mut self.staged) {
            for span in &self.spans {
                let element = span
                    .clone()
                    .map(|r| self.scratch.get(r).unwrap_or_default());
                // Staged successfully in stage(): cannot fail.
                let _ = self.elements.stage(element);
                self.elements.commit(element);
            }
            self.nulls.append_non_null();
        } else {
            self.spans.clear();
            self.nulls.append_null();
        }
        let end = self.elements_len() + self.spans.len();
        // stage() checked that the offsets stay within i32.
        self.offsets.push(i32::try_from(end).unwrap_or(i32::MAX));
        self.spans.clear();
    }

    fn finish(&mut self) -> ArrayRef {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let values = self.elements.finish();
        let array = ListArray::new(
            self.element_field.clone(),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            values,
            self.nulls.finish(),
        );
        Arc::new(array)
    }
}

impl Column {
    pub(super) fn new(conversion: Conversion) -> Column {
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
            Conversion::Decimal { precision, scale }
            | Conversion::ConfiguredDecimal { precision, scale } => Column::Decimal {
                precision,
                scale,
                values: Primitive::new(conversion),
            },
            Conversion::Text => Column::Text(StringBuilder::new()),
            Conversion::Bytea => Column::Bytea {
                builder: BinaryBuilder::new(),
                staged: false,
                scratch: Vec::new(),
                prefixed: true,
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
            Conversion::Money => Column::Money(Primitive::new(conversion)),
            Conversion::Time => Column::Time(Primitive::new(conversion)),
            Conversion::TimeTz => Column::TimeTz {
                micros: Int64Builder::new(),
                offsets: Int32Builder::new(),
                nulls: NullBufferBuilder::new(0),
                staged: None,
            },
            Conversion::Interval => Column::Interval {
                months: Int32Builder::new(),
                days: Int32Builder::new(),
                micros: Int64Builder::new(),
                nulls: NullBufferBuilder::new(0),
                staged: None,
            },
            Conversion::Hstore => Column::Hstore {
                builder: hstore_builder(),
                staged: false,
                scratch: Vec::new(),
                pairs: Vec::new(),
            },
            Conversion::Range(element) => {
                Column::Range(Box::new(RangeColumn::new(element.conversion())))
            }
            Conversion::HexBinary => Column::Bytea {
                builder: BinaryBuilder::new(),
                staged: false,
                scratch: Vec::new(),
                prefixed: false,
            },
            Conversion::Array(element) => {
                Column::Array(Box::new(ListColumn::new(element.conversion())))
            }
        }
    }

    /// Whether an array value with more than one dimension, or lower bounds other than
    /// 1, was staged (its list holds the elements, not the shape); true once per column.
    pub(super) fn take_reshaped(&mut self) -> bool {
        match self {
            Column::Array(list) if list.reshaped => {
                list.reshaped = false;
                list.reported = true;
                true
            }
            _ => false,
        }
    }

    /// Parses the row's value (None = null) without appending; returns its estimated size.
    pub(super) fn stage(&mut self, text: Option<&[u8]>) -> Result<usize, ValueError> {
        match self {
            Column::Bool { staged, .. } => {
                stage_parsed(staged, text, parse_bool)?;
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
                staged,
                scratch,
                prefixed,
                ..
            } => {
                *staged = false;
                match text {
                    Some(text) => {
                        decode_hex(hex_digits(text, *prefixed)?, scratch)?;
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
            Column::Money(values) => values.stage(text, parse_money),
            Column::Time(values) => values.stage(text, parse_time),
            Column::TimeTz { staged, .. } => {
                stage_parsed(staged, text, parse_timetz)?;
                Ok(8 + 4)
            }
            Column::Interval { staged, .. } => {
                stage_parsed(staged, text, parse_interval)?;
                Ok(4 + 4 + 8)
            }
            Column::Hstore {
                staged,
                scratch,
                pairs,
                ..
            } => {
                *staged = false;
                let Some(text) = text else {
                    return Ok(OFFSET_BYTES);
                };
                parse_utf8_hstore(text, scratch, pairs)?;
                *staged = true;
                Ok(scratch.len() + OFFSET_BYTES * (1 + 2 * pairs.len()))
            }
            Column::Array(list) => list.stage(text),
            Column::Range(range) => range.stage(text),
        }
    }

    /// Decodes the row's value in its binary send form (None = null) without appending,
    /// for columns [`binary::decodes`] accepts; `commit` then appends it like a text value.
    pub(super) fn stage_binary(&mut self, raw: Option<&[u8]>) -> Result<usize, ValueError> {
        match self {
            Column::Bool { staged, .. } => {
                *staged = raw.map(binary::bool).transpose()?;
                Ok(1)
            }
            Column::Int16(values) => values.stage(raw, binary::int2),
            Column::Int32(values) => values.stage(raw, binary::int4),
            Column::Int64(values) => values.stage(raw, binary::int8),
            Column::Float32(values) => values.stage(raw, binary::float4),
            Column::Float64(values) => values.stage(raw, binary::float8),
            Column::Decimal {
                precision,
                scale,
                values,
            } => {
                let (precision, scale) = (*precision, *scale);
                values.stage(raw, |r| binary::numeric(r, precision, scale))
            }
            // The send form of text types is the characters themselves.
            Column::Text(_) => self.stage(raw),
            Column::Bytea {
                staged, scratch, ..
            } => {
                scratch.clear();
                *staged = raw.is_some();
                scratch.extend_from_slice(raw.unwrap_or_default());
                Ok(scratch.len() + OFFSET_BYTES)
            }
            Column::Date(values) => values.stage(raw, binary::date),
            Column::Timestamp { values, .. } => values.stage(raw, binary::timestamp),
            // The snapshot selects every other column as text (see `binary::decodes`).
            _ => Err(ValueError::Malformed),
        }
    }

    /// Appends the staged value; `text` must be what was staged.
    pub(super) fn commit(&mut self, text: Option<&[u8]>) {
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
                ..
            } => {
                if std::mem::take(staged) {
                    builder.append_value(scratch.as_slice());
                } else {
                    builder.append_null();
                }
            }
            Column::Date(values) => values.commit(),
            Column::Timestamp { values, .. } => values.commit(),
            Column::Money(values) => values.commit(),
            Column::Time(values) => values.commit(),
            Column::TimeTz {
                micros,
                offsets,
                nulls,
                staged,
            } => {
                // A null struct still needs a slot in every child; 0 is as good as any.
                let (value, valid) = match staged.take() {
                    Some(value) => (value, true),
                    None => ((0, 0), false),
                };
                micros.append_value(value.0);
                offsets.append_value(value.1);
                nulls.append(valid);
            }
            Column::Interval {
                months,
                days,
                micros,
                nulls,
                staged,
            } => {
                let (value, valid) = match staged.take() {
                    Some(value) => (value, true),
                    None => ((0, 0, 0), false),
                };
                months.append_value(value.0);
                days.append_value(value.1);
                micros.append_value(value.2);
                nulls.append(valid);
            }
            Column::Hstore {
                builder,
                staged,
                scratch,
                pairs,
            } => {
                let valid = std::mem::take(staged);
                if valid {
                    let text = |range: &Range<usize>| {
                        // Validated in stage(): cannot fail.
                        std::str::from_utf8(scratch.get(range.clone()).unwrap_or_default())
                            .unwrap_or_default()
                    };
                    for (key, value) in pairs.iter() {
                        builder.keys().append_value(text(key));
                        builder.values().append_option(value.as_ref().map(text));
                    }
                }
                pairs.clear();
                // Keys and values were appended in pairs, so this cannot fail.
                let _ = builder.append(valid);
            }
            Column::Array(list) => list.commit(),
            Column::Range(range) => range.commit(),
        }
    }

    pub(super) fn append_null(&mut self) {
        // Staging a null cannot fail; committing it appends the null.
        let _ = self.stage(None);
        self.commit(None);
    }

    pub(super) fn finish(&mut self) -> ArrayRef {
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
            Column::Money(values) => values.finish(),
            Column::Time(values) => values.finish(),
            Column::TimeTz {
                micros,
                offsets,
                nulls,
                ..
            } => Arc::new(StructArray::new(
                timetz_fields(),
                vec![Arc::new(micros.finish()), Arc::new(offsets.finish())],
                nulls.finish(),
            )),
            Column::Interval {
                months,
                days,
                micros,
                nulls,
                ..
            } => Arc::new(StructArray::new(
                interval_fields(),
                vec![
                    Arc::new(months.finish()),
                    Arc::new(days.finish()),
                    Arc::new(micros.finish()),
                ],
                nulls.finish(),
            )),
            Column::Hstore { builder, .. } => Arc::new(builder.finish()),
            Column::Array(list) => list.finish(),
            Column::Range(range) => range.finish(),
        }
    }
}

/// The map builder of an `hstore` column, with the lake schema's field names.
fn hstore_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    let names = MapFieldNames {
        entry: MAP_ENTRIES[0].into(),
        key: MAP_ENTRIES[1].into(),
        value: MAP_ENTRIES[2].into(),
    };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
        .with_values_field(Field::new(MAP_ENTRIES[2], DataType::Utf8, true))
}

/// The hex digits of a hex-printed value: those after bytea's `\x` when `prefixed`.
fn hex_digits(text: &[u8], prefixed: bool) -> Result<&[u8], ValueError> {
    if prefixed {
        text.strip_prefix(b"\\x").ok_or(ValueError::ByteaNotHex)
    } else {
        Ok(text)
    }
}

/// Parses `text` (None = null) into `staged`, which is cleared first so that a failed
/// push leaves no value for the next one.
fn stage_parsed<T>(
    staged: &mut Option<T>,
    text: Option<&[u8]>,
    parse: impl FnOnce(&[u8]) -> Result<T, ValueError>,
) -> Result<(), ValueError> {
    *staged = None;
    if let Some(text) = text {
        *staged = Some(parse(text)?);
    }
    Ok(())
}

/// Parses an `hstore`'s text form like [`parse_hstore`] and checks that its keys and
/// values are UTF-8, as the map's string columns need.
fn parse_utf8_hstore(
    text: &[u8],
    scratch: &mut Vec<u8>,
    pairs: &mut Vec<(Range<usize>, Option<Range<usize>>)>,
) -> Result<(), ValueError> {
    parse_hstore(text, scratch, pairs)?;
    std::str::from_utf8(scratch).map_err(|_| ValueError::InvalidUtf8)?;
    // Each part must be UTF-8 on its own (a split inside a character is not).
    for (key, value) in pairs.iter() {
        for range in std::iter::once(key).chain(value) {
            let part = scratch.get(range.clone()).unwrap_or_default();
            std::str::from_utf8(part).map_err(|_| ValueError::InvalidUtf8)?;
        }
    }
    Ok(())
}
