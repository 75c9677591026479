//! One Arrow builder per lake source column, typed by its [`Conversion`].

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, BooleanBuilder, PrimitiveBuilder, StringBuilder};
use arrow::datatypes::{
    ArrowPrimitiveType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, TimestampMicrosecondType,
};

use super::text::{
    decode_bytea, parse_bool, parse_date, parse_decimal, parse_float, parse_int, parse_timestamp,
};
use super::{OFFSET_BYTES, ValueError, binary};
use crate::schema::Conversion;

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
    pub(super) fn stage(&mut self, text: Option<&[u8]>) -> Result<usize, ValueError> {
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
        }
    }
}
