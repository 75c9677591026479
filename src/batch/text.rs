//! Postgres text-form parsers: pure functions over the bytes Postgres sent; they never panic.

use super::{MICROS_PER_DAY, ValueError};

pub(super) fn parse_bool(text: &[u8]) -> Result<bool, ValueError> {
    match text {
        b"t" => Ok(true),
        b"f" => Ok(false),
        _ => Err(ValueError::Malformed),
    }
}

/// A decimal integer (`-` sign only, as Postgres prints) narrowed to `T`.
pub(super) fn parse_int<T: TryFrom<i64>>(text: &[u8]) -> Result<T, ValueError> {
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
pub(super) fn parse_float<T: std::str::FromStr>(text: &[u8]) -> Result<T, ValueError> {
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
pub(super) fn parse_decimal(text: &[u8], precision: u8, scale: i8) -> Result<i128, ValueError> {
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
pub(super) fn decode_bytea(text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
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
pub(super) fn parse_date(text: &[u8]) -> Result<i32, ValueError> {
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
pub(super) fn parse_timestamp(text: &[u8], with_offset: bool) -> Result<i64, ValueError> {
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
