//! Type widening: which lake types hold every value of another exactly, and the cast.
//!
//! ```text
//!   short ─► integer ─► long          float ─► double
//!     └────────┴──────► double         date ─► timestamp_ntz (midnight)
//!     └────────┴────────┴──► decimal(p,0…) with enough integer digits
//!   decimal(p,s) ─► decimal(p+k1, s+k2), k1 ≥ k2 ≥ 0
//! ```
//!
//! These are the widenings the Delta protocol's type-widening feature lists. pg2lake
//! does not use that table feature (its writer cannot commit to such a table and the
//! Python reader cannot read one); it rewrites the table's files instead, see
//! `lake::table`. Invariants:
//! - [`Conversion::widens_to`] is true only when every value of the narrow type has
//!   exactly one value of the wide type that means the same; anything it does not list
//!   (including conversions added later) is not a widening.
//! - [`widen_array`] never rounds or clamps: a value that does not fit is an error, and
//!   the `date` infinity sentinels become the `timestamp` ones, as Postgres's own
//!   `ALTER … TYPE timestamp` turns `infinity` into `infinity`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, TimestampMicrosecondArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Date32Type, TimeUnit};
use arrow::error::ArrowError;

use super::Conversion;

/// Microseconds per day.
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Decimal digits an integer type needs: i16 has 5, i32 10, i64 19.
fn integer_digits(conversion: Conversion) -> Option<i16> {
    match conversion {
        Conversion::Int16 => Some(5),
        Conversion::Int32 => Some(10),
        Conversion::Int64 => Some(19),
        _ => None,
    }
}

impl Conversion {
    /// Whether a lake column of this conversion's type can be changed to `wider`'s type
    /// with every value kept exactly (see the module docs). False for equal types.
    pub fn widens_to(self, wider: Conversion) -> bool {
        use Conversion::{Date, Decimal, Float32, Float64, Int16, Int32, Int64, Timestamp};
        match (self, wider) {
            (Int16, Int32 | Int64) | (Int32, Int64) => true,
            (Int16 | Int32 | Float32, Float64) => true,
            (Date, Timestamp) => true,
            (Int16 | Int32 | Int64, Decimal { precision, scale }) => integer_digits(self)
                .is_some_and(|digits| i16::from(precision) - i16::from(scale) >= digits),
            (
                Decimal { precision, scale },
                Decimal {
                    precision: wide_precision,
                    scale: wide_scale,
                },
            ) => {
                (precision, scale) != (wide_precision, wide_scale)
                    && wide_scale >= scale
                    && i16::from(wide_precision) - i16::from(wide_scale)
                        >= i16::from(precision) - i16::from(scale)
            }
            _ => false,
        }
    }

    /// The lake type's name as it appears in column names: lowercase letters, digits and
    /// single underscores (`long`, `decimal_14_2`, `timestamp_ntz`), since Delta column
    /// names cannot hold parentheses or commas.
    pub fn column_suffix(self) -> String {
        let mut suffix = String::new();
        for c in self.lake_type_name().chars() {
            if c.is_ascii_alphanumeric() {
                suffix.push(c.to_ascii_lowercase());
            } else if !suffix.is_empty() && !suffix.ends_with('_') {
                suffix.push('_');
            }
        }
        while suffix.ends_with('_') {
            suffix.pop();
        }
        suffix
    }
}

/// `array` cast to `to`, a type it widens to (or equals): exact, never rounded. The
/// `date` sentinels for ±infinity (`i32::MAX` / `i32::MIN`) become the `timestamp`
/// ones (`i64::MAX` / `i64::MIN`).
pub fn widen_array(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    if let (DataType::Date32, DataType::Timestamp(TimeUnit::Microsecond, None)) =
        (array.data_type(), to)
    {
        let days = array.as_primitive::<Date32Type>();
        let micros: TimestampMicrosecondArray = days.unary(|day| match day {
            i32::MAX => i64::MAX,
            i32::MIN => i64::MIN,
            // |i32| days in µs is at most 1.9e17, far inside i64.
            day => i64::from(day) * MICROS_PER_DAY,
        });
        return Ok(Arc::new(micros));
    }
    // `safe: false`: a value that does not fit is an error, never a silent null.
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    cast_with_options(array, to, &options)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Date32Array, Decimal128Array, Float32Array, Int16Array, Int32Array};

    use super::*;

    fn dec(precision: u8, scale: i8) -> Conversion {
        Conversion::Decimal { precision, scale }
    }

    #[test]
    fn lists_the_exact_widenings() {
        use Conversion::*;
        let widen = [
            (Int16, Int32),
            (Int16, Int64),
            (Int32, Int64),
            (Float32, Float64),
            (Int32, Float64),
            (Date, Timestamp),
            (dec(12, 2), dec(14, 2)),
            (dec(12, 2), dec(38, 2)),
            (dec(12, 2), dec(13, 3)),
            (Int32, dec(10, 0)),
            (Int64, dec(21, 2)),
        ];
        for (narrow, wide) in widen {
            assert!(narrow.widens_to(wide), "{narrow:?} → {wide:?}");
            assert!(!wide.widens_to(narrow), "{wide:?} → {narrow:?}");
        }
        let not = [
            (Int32, Int32),
            (Int64, Float64),
            (Int32, Text),
            (Text, Int32),
            (Timestamp, TimestampTz),
            (TimestampTz, Timestamp),
            (dec(12, 2), dec(12, 3)),
            (dec(12, 2), dec(14, 1)),
            (Int32, dec(9, 0)),
            (Int64, dec(38, 20)),
            (Float64, dec(38, 10)),
            (Bool, Int16),
            (Bytea, Text),
        ];
        for (from, to) in not {
            assert!(!from.widens_to(to), "{from:?} → {to:?}");
        }
    }

    #[test]
    fn suffixes_are_plain_column_names() {
        assert_eq!(Conversion::Text.column_suffix(), "string");
        assert_eq!(Conversion::Int64.column_suffix(), "long");
        assert_eq!(dec(14, 2).column_suffix(), "decimal_14_2");
        assert_eq!(Conversion::Timestamp.column_suffix(), "timestamp_ntz");
    }

    #[test]
    fn widening_casts_are_exact() {
        let shorts: ArrayRef = Arc::new(Int16Array::from(vec![Some(i16::MIN), None, Some(7)]));
        let longs = widen_array(&shorts, &DataType::Int64).unwrap();
        assert_eq!(
            longs.as_primitive::<arrow::datatypes::Int64Type>().values(),
            &[i64::from(i16::MIN), 0, 7]
        );
        assert!(longs.is_null(1));

        let floats: ArrayRef = Arc::new(Float32Array::from(vec![1.1_f32, f32::NAN]));
        let doubles = widen_array(&floats, &DataType::Float64).unwrap();
        let doubles = doubles.as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(doubles.value(0), f64::from(1.1_f32));
        assert!(doubles.value(1).is_nan());

        let decimals: ArrayRef = Arc::new(
            Decimal128Array::from(vec![123_456, -99_999_999_999])
                .with_precision_and_scale(12, 2)
                .unwrap(),
        );
        let wide = widen_array(&decimals, &DataType::Decimal128(14, 3)).unwrap();
        assert_eq!(
            wide.as_primitive::<arrow::datatypes::Decimal128Type>()
                .values(),
            &[1_234_560, -999_999_999_990]
        );

        let ints: ArrayRef = Arc::new(Int32Array::from(vec![i32::MAX]));
        let decimal = widen_array(&ints, &DataType::Decimal128(10, 0)).unwrap();
        assert_eq!(
            decimal
                .as_primitive::<arrow::datatypes::Decimal128Type>()
                .value(0),
            i128::from(i32::MAX)
        );

        let dates: ArrayRef = Arc::new(Date32Array::from(vec![1, i32::MAX, i32::MIN, -1]));
        let ts = widen_array(&dates, &DataType::Timestamp(TimeUnit::Microsecond, None)).unwrap();
        assert_eq!(
            ts.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .values(),
            &[MICROS_PER_DAY, i64::MAX, i64::MIN, -MICROS_PER_DAY]
        );
    }
}
