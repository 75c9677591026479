//! Postgres binary send forms of the common scalar types, as a binary `COPY` sends them.
//!
//! Only the types in [`decodes`] are taken in binary: their send forms are fixed-width
//! integers or raw bytes, so decoding is a few instructions and never allocates. Every other
//! column is selected as its text output and goes through the text parsers, so both
//! forms of one type always land as the same lake value:
//!
//! | type | send form | lake value |
//! |---|---|---|
//! | bool | 1 byte | Boolean |
//! | int2/4/8 | big-endian | Int16/32/64 |
//! | float4/8 | big-endian IEEE 754 | Float32/64 |
//! | numeric | ndigits, weight, sign, dscale, base-10000 digits | Decimal128 (exact, else an error) |
//! | text, varchar, bpchar, name | the characters (bpchar with its padding) | Utf8 |
//! | bytea | the bytes | Binary |
//! | date | int32 days since 2000-01-01, `i32::MAX`/`MIN` = ±infinity | Date32 |
//! | timestamp(tz) | int64 µs since 2000-01-01, `i64::MAX`/`MIN` = ±infinity | µs since 1970 |
//!
//! Bytes come from the network: every function checks lengths and never panics.

use super::ValueError;
use crate::schema::{Conversion, SourceColumn, oid};

/// Days from 1970-01-01 to 2000-01-01, the Postgres epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Whether a binary COPY sends `column` in a form this module decodes into its lake
/// column; the snapshot selects every other column as its text output.
pub fn decodes(column: &SourceColumn) -> bool {
    matches!(
        (column.type_oid, column.conversion),
        (oid::BOOL, Conversion::Bool)
            | (oid::INT2, Conversion::Int16)
            | (oid::INT4, Conversion::Int32)
            | (oid::INT8, Conversion::Int64)
            | (oid::FLOAT4, Conversion::Float32)
            | (oid::FLOAT8, Conversion::Float64)
            | (oid::NUMERIC, Conversion::Decimal { .. })
            | (
                oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME,
                Conversion::Text
            )
            | (oid::BYTEA, Conversion::Bytea)
            | (oid::DATE, Conversion::Date)
            | (oid::TIMESTAMP, Conversion::Timestamp)
            | (oid::TIMESTAMPTZ, Conversion::TimestampTz)
    )
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], ValueError> {
    raw.try_into().map_err(|_| ValueError::Malformed)
}

/// `bool`: one byte, non-zero is true.
pub(super) fn bool(raw: &[u8]) -> Result<bool, ValueError> {
    Ok(fixed::<1>(raw)?[0] != 0)
}

/// `int2`.
pub(super) fn int2(raw: &[u8]) -> Result<i16, ValueError> {
    Ok(i16::from_be_bytes(fixed(raw)?))
}

/// `int4`.
pub(super) fn int4(raw: &[u8]) -> Result<i32, ValueError> {
    Ok(i32::from_be_bytes(fixed(raw)?))
}

/// `int8`.
pub(super) fn int8(raw: &[u8]) -> Result<i64, ValueError> {
    Ok(i64::from_be_bytes(fixed(raw)?))
}

/// `float4`, bit for bit (NaN and ±Infinity included).
pub(super) fn float4(raw: &[u8]) -> Result<f32, ValueError> {
    Ok(f32::from_be_bytes(fixed(raw)?))
}

/// `float8`, bit for bit.
pub(super) fn float8(raw: &[u8]) -> Result<f64, ValueError> {
    Ok(f64::from_be_bytes(fixed(raw)?))
}

/// `date` → days since 1970-01-01; ±infinity keep the `i32` extremes, as in text.
pub(super) fn date(raw: &[u8]) -> Result<i32, ValueError> {
    match i32::from_be_bytes(fixed(raw)?) {
        days @ (i32::MAX | i32::MIN) => Ok(days),
        days => days
            .checked_add(PG_EPOCH_DAYS)
            .filter(|d| *d != i32::MAX)
            .ok_or(ValueError::OutOfRange),
    }
}

/// `timestamp` / `timestamptz` → µs since 1970-01-01 (UTC for timestamptz); ±infinity keep
/// the `i64` extremes, and a finite value that would reach one is out of range.
pub(super) fn timestamp(raw: &[u8]) -> Result<i64, ValueError> {
    match i64::from_be_bytes(fixed(raw)?) {
        micros @ (i64::MAX | i64::MIN) => Ok(micros),
        micros => micros
            .checked_add(PG_EPOCH_MICROS)
            .filter(|m| *m != i64::MAX && *m != i64::MIN)
            .ok_or(ValueError::OutOfRange),
    }
}

/// `numeric` → the unscaled `i128` of a `decimal(precision, scale)`, exactly: digits
/// beyond the scale must be zero and the integer part must fit, else an error (never a
/// rounding).
pub(super) fn numeric(raw: &[u8], precision: u8, scale: i8) -> Result<i128, ValueError> {
    const NEGATIVE: u16 = 0x4000;
    const POSITIVE: u16 = 0x0000;
    let header = raw.get(..8).ok_or(ValueError::Malformed)?;
    let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let ndigits = usize::from(word(0));
    let weight = i32::from(word(2) as i16);
    let sign = word(4);
    let digits = &raw[8..];
    if sign != POSITIVE && sign != NEGATIVE {
        // NaN (0xC000), +Infinity (0xD000), -Infinity (0xF000).
        return Err(ValueError::NotFinite);
    }
    if digits.len() != ndigits * 2 {
        return Err(ValueError::Malformed);
    }
    let scale = i32::from(scale);
    let mut unscaled: i128 = 0;
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let digit = u16::from_be_bytes([pair[0], pair[1]]);
        if digit > 9999 {
            return Err(ValueError::Malformed);
        }
        if digit == 0 {
            continue;
        }
        // This digit is worth digit × 10000^(weight − i), i.e. digit × 10^exponent once
        // scaled; `i` is below 2^16, so none of this overflows i32.
        let exponent = 4 * (weight - i as i32) + scale;
        let digit = i128::from(digit);
        let part = if exponent >= 0 {
            10i128
                .checked_pow(exponent as u32)
                .and_then(|p| p.checked_mul(digit))
                .ok_or(ValueError::TooManyIntegerDigits)?
        } else {
            // Below the scale: only trailing zeros of the base-10000 digit may fall off.
            let divisor = 10i128.pow((-exponent).min(4) as u32);
            if -exponent >= 4 || digit % divisor != 0 {
                return Err(ValueError::TooManyFractionalDigits);
            }
            digit / divisor
        };
        unscaled = unscaled
            .checked_add(part)
            .ok_or(ValueError::TooManyIntegerDigits)?;
    }
    if unscaled >= 10i128.pow(u32::from(precision)) {
        return Err(ValueError::TooManyIntegerDigits);
    }
    Ok(if sign == NEGATIVE {
        -unscaled
    } else {
        unscaled
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The send form of a numeric from its parts.
    fn numeric_raw(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend((digits.len() as u16).to_be_bytes());
        raw.extend(weight.to_be_bytes());
        raw.extend(sign.to_be_bytes());
        raw.extend(dscale.to_be_bytes());
        for d in digits {
            raw.extend(d.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numerics_are_exact_or_refused() {
        // 1234.5678 = [1234, 5678], weight 0.
        let v = numeric_raw(0, 0, 4, &[1234, 5678]);
        assert_eq!(numeric(&v, 12, 4), Ok(12_345_678));
        assert_eq!(numeric(&v, 12, 6), Ok(1_234_567_800));
        assert_eq!(numeric(&v, 12, 2), Err(ValueError::TooManyFractionalDigits));
        assert_eq!(numeric(&v, 5, 2), Err(ValueError::TooManyFractionalDigits));
        assert_eq!(numeric(&v, 7, 4), Err(ValueError::TooManyIntegerDigits));
        // -12.5 = [12, 5000], weight 0, scale 1 keeps the significant 5.
        let v = numeric_raw(0, 0x4000, 1, &[12, 5000]);
        assert_eq!(numeric(&v, 3, 1), Ok(-125));
        assert_eq!(numeric(&v, 3, 0), Err(ValueError::TooManyFractionalDigits));
        // 0.0001 = [1], weight -1.
        let v = numeric_raw(-1, 0, 4, &[1]);
        assert_eq!(numeric(&v, 4, 4), Ok(1));
        assert_eq!(numeric(&v, 4, 3), Err(ValueError::TooManyFractionalDigits));
        // 10^20 = [1], weight 5.
        let v = numeric_raw(5, 0, 0, &[1]);
        assert_eq!(numeric(&v, 21, 0), Ok(10i128.pow(20)));
        assert_eq!(numeric(&v, 20, 0), Err(ValueError::TooManyIntegerDigits));
        // The largest decimal(38,0) and one past it.
        let nines = numeric_raw(
            9,
            0,
            0,
            &[99, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999],
        );
        assert_eq!(numeric(&nines, 38, 0), Ok(10i128.pow(38) - 1));
        let huge = numeric_raw(30, 0, 0, &[1]);
        assert_eq!(numeric(&huge, 38, 0), Err(ValueError::TooManyIntegerDigits));
        // Zero has no digits.
        assert_eq!(numeric(&numeric_raw(0, 0, 2, &[]), 5, 2), Ok(0));
        for special in [0xC000, 0xD000, 0xF000] {
            assert_eq!(
                numeric(&numeric_raw(0, special, 0, &[]), 5, 2),
                Err(ValueError::NotFinite)
            );
        }
        // Truncated or corrupt input is an error, never a panic.
        assert_eq!(numeric(&[0, 1], 5, 2), Err(ValueError::Malformed));
        assert_eq!(
            numeric(&numeric_raw(0, 0, 0, &[10_000]), 5, 0),
            Err(ValueError::Malformed)
        );
        let mut short = numeric_raw(0, 0, 0, &[1, 2]);
        short.pop();
        assert_eq!(numeric(&short, 5, 0), Err(ValueError::Malformed));
    }

    #[test]
    fn dates_and_timestamps_shift_to_the_unix_epoch() {
        assert_eq!(date(&0i32.to_be_bytes()), Ok(10_957));
        assert_eq!(date(&(-10_957i32).to_be_bytes()), Ok(0));
        assert_eq!(date(&i32::MAX.to_be_bytes()), Ok(i32::MAX));
        assert_eq!(date(&i32::MIN.to_be_bytes()), Ok(i32::MIN));
        assert_eq!(timestamp(&0i64.to_be_bytes()), Ok(PG_EPOCH_MICROS));
        assert_eq!(timestamp(&i64::MAX.to_be_bytes()), Ok(i64::MAX));
        assert_eq!(timestamp(&i64::MIN.to_be_bytes()), Ok(i64::MIN));
        assert_eq!(
            timestamp(&(i64::MAX - 1).to_be_bytes()),
            Err(ValueError::OutOfRange)
        );
        assert_eq!(timestamp(&[0; 7]), Err(ValueError::Malformed));
    }

    #[test]
    fn fixed_widths_are_checked() {
        assert_eq!(int4(&[0, 0, 1, 0]), Ok(256));
        assert_eq!(int4(&[0, 1, 0]), Err(ValueError::Malformed));
        assert_eq!(int2(&(-2i16).to_be_bytes()), Ok(-2));
        assert_eq!(int8(&i64::MIN.to_be_bytes()), Ok(i64::MIN));
        assert_eq!(bool(&[1]), Ok(true));
        assert_eq!(bool(&[]), Err(ValueError::Malformed));
        assert!(float8(&f64::NAN.to_be_bytes()).unwrap().is_nan());
        assert_eq!(
            float4(&f32::NEG_INFINITY.to_be_bytes()),
            Ok(f32::NEG_INFINITY)
        );
    }
}
