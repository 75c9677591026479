//! Postgres text-form parsers: pure functions over the bytes Postgres sent; they never panic.

use std::ops::Range;

use super::{MICROS_PER_DAY, ValueError};

/// Microseconds per second.
const MICROS_PER_SECOND: i64 = 1_000_000;

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
    // Extra fractional zeros lose nothing (an unconstrained numeric keeps its display
    // scale, `1.500`, and may be configured into decimal(p,1)); other digits would round.
    let frac = match frac.get(scale..) {
        Some(extra) if extra.iter().all(|&b| b == b'0') => frac.get(..scale).unwrap_or(frac),
        Some(_) => return Err(ValueError::TooManyFractionalDigits),
        None => frac,
    };
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
    let clock = parse_clock(&mut cursor, false)?;
    let offset_seconds = if with_offset {
        parse_offset(&mut cursor)?
    } else {
        0
    };
    cursor.end()?;
    let micros = days
        .checked_mul(MICROS_PER_DAY)
        .and_then(|m| m.checked_add(clock - offset_seconds * MICROS_PER_SECOND))
        .ok_or(ValueError::OutOfRange)?;
    // A finite value must not pose as an infinity.
    if micros == i64::MAX || micros == i64::MIN {
        return Err(ValueError::OutOfRange);
    }
    Ok(micros)
}

/// `HH:MM:SS[.ffffff]` as µs since midnight; `24:00:00` only when `allow_24` (a `time`).
fn parse_clock(cursor: &mut Cursor<'_>, allow_24: bool) -> Result<i64, ValueError> {
    let hour = cursor.digits(2, 2)?;
    cursor.expect(b':')?;
    let minute = cursor.digits(2, 2)?;
    cursor.expect(b':')?;
    let second = cursor.digits(2, 2)?;
    let fraction = parse_fraction(cursor)?;
    let midnight_end = allow_24 && hour == 24 && minute == 0 && second == 0 && fraction == 0;
    if (hour > 23 && !midnight_end) || minute > 59 || second > 59 {
        return Err(ValueError::Malformed);
    }
    Ok((hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND + fraction)
}

/// An optional `.f` to `.ffffff` as µs; Postgres trims trailing zeros (".5" is 500000).
fn parse_fraction(cursor: &mut Cursor<'_>) -> Result<i64, ValueError> {
    if !cursor.eat(b'.') {
        return Ok(0);
    }
    let start = cursor.rest.len();
    let digits = cursor.digits(1, 6)?;
    let width = start - cursor.rest.len();
    if cursor.rest.first().is_some_and(u8::is_ascii_digit) {
        // More than 6 fractional digits: finer than µs, not a Postgres value.
        return Err(ValueError::Malformed);
    }
    Ok(digits * 10_i64.pow(u32::try_from(6 - width).unwrap_or(0)))
}

/// A UTC offset `+HH[:MM[:SS]]` / `-…` as seconds east of UTC (the printed sign).
fn parse_offset(cursor: &mut Cursor<'_>) -> Result<i64, ValueError> {
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
    Ok(sign * (hours * 3600 + minutes * 60 + seconds))
}

/// A `time` as µs since midnight, `0..=86_400_000_000` (Postgres allows `24:00:00`).
pub(super) fn parse_time(text: &[u8]) -> Result<i64, ValueError> {
    let mut cursor = Cursor::new(text);
    let micros = parse_clock(&mut cursor, true)?;
    cursor.end()?;
    Ok(micros)
}

/// A `timetz` as (µs since midnight of the local time, offset in seconds east of UTC).
pub(super) fn parse_timetz(text: &[u8]) -> Result<(i64, i32), ValueError> {
    let mut cursor = Cursor::new(text);
    let micros = parse_clock(&mut cursor, true)?;
    let offset = parse_offset(&mut cursor)?;
    cursor.end()?;
    // Postgres limits offsets to ±15:59:59.
    let offset = i32::try_from(offset).map_err(|_| ValueError::OutOfRange)?;
    Ok((micros, offset))
}

/// `money` printed with `lc_monetary=C` (`$1,234.56`, `-$0.01`) as its exact cents.
///
/// The C locale prints a `$` sign, `,` between thousands and always two fractional
/// digits; anything else (another locale's symbols) is refused rather than guessed at.
pub(super) fn parse_money(text: &[u8]) -> Result<i128, ValueError> {
    let (negative, rest) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    let rest = rest.strip_prefix(b"$").ok_or(ValueError::Malformed)?;
    let (int, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (
            rest.get(..dot).unwrap_or_default(),
            rest.get(dot + 1..).unwrap_or_default(),
        ),
        None => (rest, &[][..]),
    };
    if int.is_empty() || frac.len() != 2 || int.first() == Some(&b',') {
        return Err(ValueError::Malformed);
    }
    let mut cents: i128 = 0;
    for &byte in int.iter().filter(|&&b| b != b',').chain(frac) {
        let digit = i128::from(ascii_digit(byte)?);
        cents = cents
            .checked_mul(10)
            .and_then(|v| v.checked_add(digit))
            .ok_or(ValueError::OutOfRange)?;
    }
    // money is an int64 of cents: 19 digits at most.
    if cents > i128::from(i64::MAX) + 1 || (!negative && cents > i128::from(i64::MAX)) {
        return Err(ValueError::OutOfRange);
    }
    Ok(if negative { -cents } else { cents })
}

/// An `interval` in IntervalStyle `postgres` (`-1 years -2 mons +3 days -04:05:06.789`)
/// as Postgres stores it: (months, days, microseconds), each with its own sign.
pub(super) fn parse_interval(text: &[u8]) -> Result<(i32, i32, i64), ValueError> {
    let mut months: i64 = 0;
    let mut days: i64 = 0;
    let mut micros: i64 = 0;
    let mut tokens = text.split(|&b| b == b' ').peekable();
    let mut seen_time = false;
    while let Some(token) = tokens.next() {
        if seen_time {
            // The time part is always last.
            return Err(ValueError::Malformed);
        }
        let (negative, unsigned) = match token {
            [b'-', rest @ ..] => (true, rest),
            [b'+', rest @ ..] => (false, rest),
            _ => (false, token),
        };
        if unsigned.contains(&b':') {
            seen_time = true;
            micros = parse_interval_clock(unsigned, negative)?;
            continue;
        }
        let number: i64 = parse_int::<i64>(unsigned)?;
        let number = if negative { -number } else { number };
        let unit = tokens.next().ok_or(ValueError::Malformed)?;
        let (target, factor) = match unit {
            b"year" | b"years" => (&mut months, 12),
            b"mon" | b"mons" => (&mut months, 1),
            b"day" | b"days" => (&mut days, 1),
            _ => return Err(ValueError::Malformed),
        };
        *target = number
            .checked_mul(factor)
            .and_then(|n| target.checked_add(n))
            .ok_or(ValueError::OutOfRange)?;
    }
    let months = i32::try_from(months).map_err(|_| ValueError::OutOfRange)?;
    let days = i32::try_from(days).map_err(|_| ValueError::OutOfRange)?;
    Ok((months, days, micros))
}

/// The `H…H:MM:SS[.ffffff]` part of an interval (hours unbounded) as signed µs.
fn parse_interval_clock(text: &[u8], negative: bool) -> Result<i64, ValueError> {
    let colon = text
        .iter()
        .position(|&b| b == b':')
        .ok_or(ValueError::Malformed)?;
    let hours = parse_int::<i64>(text.get(..colon).unwrap_or_default())?;
    let mut cursor = Cursor::new(text.get(colon + 1..).unwrap_or_default());
    let minutes = cursor.digits(2, 2)?;
    cursor.expect(b':')?;
    let seconds = cursor.digits(2, 2)?;
    let fraction = parse_fraction(&mut cursor)?;
    cursor.end()?;
    if minutes > 59 || seconds > 59 {
        return Err(ValueError::Malformed);
    }
    // In i128: -2562047788:00:54.775808 is i64::MIN, whose magnitude i64 cannot hold.
    let magnitude = i128::from(hours) * 3_600_000_000
        + i128::from(minutes * 60 + seconds) * i128::from(MICROS_PER_SECOND)
        + i128::from(fraction);
    let signed = if negative { -magnitude } else { magnitude };
    i64::try_from(signed).map_err(|_| ValueError::OutOfRange)
}

/// Hex digits, decoded into `out` (cleared first): bytea after its `\x`, and PostGIS's
/// EWKB, which is printed without a prefix.
pub(super) fn decode_hex(text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    out.clear();
    if !text.len().is_multiple_of(2) {
        return Err(ValueError::Malformed);
    }
    out.reserve(text.len() / 2);
    for pair in text.chunks_exact(2) {
        let [high, low] = pair else {
            return Err(ValueError::Malformed);
        };
        out.push((hex_digit(*high)? << 4) | hex_digit(*low)?);
    }
    Ok(())
}

/// The shape of a parsed array value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ArrayShape {
    /// Nesting depth of the braces: 1 for `{1,2}`, 2 for `{{1},{2}}`; 0 for `{}`.
    pub dimensions: usize,
    /// Whether a `[lower:upper]=` prefix gave a lower bound other than 1.
    pub custom_bounds: bool,
}

impl ArrayShape {
    /// Whether the value is a plain one-dimensional array starting at index 1, which
    /// its list holds exactly.
    pub fn is_plain(self) -> bool {
        self.dimensions <= 1 && !self.custom_bounds
    }
}

/// A Postgres array's text form: every element in row-major order into `spans` (`None` =
/// NULL), unescaped element bytes into `out` (both cleared first).
///
/// `{a,"b c",NULL,"NULL","x\"y"}`: quoted elements have `\` escapes; an unquoted `NULL`
/// (any case) is a null; a leading `[1:2][0:1]=` gives the bounds.
pub(super) fn parse_array(
    text: &[u8],
    out: &mut Vec<u8>,
    spans: &mut Vec<Option<Range<usize>>>,
) -> Result<ArrayShape, ValueError> {
    out.clear();
    spans.clear();
    let (rest, custom_bounds) = strip_array_bounds(text)?;
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    let mut i = 0;
    // After '{' or ',' an element (or a nested '{') is expected; after an element or
    // '}' a ',' or '}'.
    let mut expect_element = false;
    while let Some(&byte) = rest.get(i) {
        match byte {
            b'{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
                expect_element = true;
                i += 1;
            }
            b'}' => {
                if depth == 0 {
                    return Err(ValueError::Malformed);
                }
                // `{}` is empty; `{1,}` is not a Postgres array.
                if expect_element && rest.get(i.wrapping_sub(1)) != Some(&b'{') {
                    return Err(ValueError::Malformed);
                }
                depth -= 1;
                expect_element = false;
                i += 1;
                if depth == 0 && i != rest.len() {
                    return Err(ValueError::Malformed);
                }
            }
            b',' => {
                if expect_element || depth == 0 {
                    return Err(ValueError::Malformed);
                }
                expect_element = true;
                i += 1;
            }
            _ => {
                if !expect_element || depth == 0 {
                    return Err(ValueError::Malformed);
                }
                i = read_element(rest, i, out, spans)?;
                expect_element = false;
            }
        }
    }
    if depth != 0 || max_depth == 0 {
        return Err(ValueError::Malformed);
    }
    Ok(ArrayShape {
        dimensions: if spans.is_empty() { 0 } else { max_depth },
        custom_bounds,
    })
}

/// Splits a leading `[lower:upper]…=` off an array's text form: the rest, and whether
/// a lower bound other than 1 was given. Text without one is returned whole.
fn strip_array_bounds(text: &[u8]) -> Result<(&[u8], bool), ValueError> {
    let mut custom_bounds = false;
    if let Some(equals) = text.iter().position(|&b| b == b'=')
        && text.first() == Some(&b'[')
    {
        let bounds = text.get(..equals).unwrap_or_default();
        for dimension in bounds.split(|&b| b == b']').filter(|d| !d.is_empty()) {
            let dimension = dimension.strip_prefix(b"[").ok_or(ValueError::Malformed)?;
            let colon = dimension
                .iter()
                .position(|&b| b == b':')
                .ok_or(ValueError::Malformed)?;
            let lower = parse_int::<i32>(dimension.get(..colon).unwrap_or_default())?;
            parse_int::<i32>(dimension.get(colon + 1..).unwrap_or_default())?;
            custom_bounds |= lower != 1;
        }
        return Ok((text.get(equals + 1..).unwrap_or_default(), custom_bounds));
    }
    Ok((text, custom_bounds))
}

/// Reads the element at `i` (quoted, unquoted, or an unquoted `NULL`) into `out` and its
/// span into `spans`; returns the index after it.
fn read_element(
    text: &[u8],
    i: usize,
    out: &mut Vec<u8>,
    spans: &mut Vec<Option<Range<usize>>>,
) -> Result<usize, ValueError> {
    let start = out.len();
    if text.get(i) == Some(&b'"') {
        let end = read_quoted(text, i + 1, out)?;
        spans.push(Some(start..out.len()));
        return Ok(end);
    }
    let end = read_unquoted(text, i, out)?;
    let element = out.get(start..).unwrap_or_default();
    if element.eq_ignore_ascii_case(b"NULL") {
        out.truncate(start);
        spans.push(None);
    } else {
        spans.push(Some(start..out.len()));
    }
    Ok(end)
}

/// Copies a quoted element starting after its `"` into `out`; returns the index after
/// the closing quote.
fn read_quoted(text: &[u8], mut i: usize, out: &mut Vec<u8>) -> Result<usize, ValueError> {
    loop {
        match text.get(i) {
            None => return Err(ValueError::Malformed),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => {
                out.push(*text.get(i + 1).ok_or(ValueError::Malformed)?);
                i += 2;
            }
            Some(&byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
}

/// Copies an unquoted element (up to `,` or `}`) into `out`; returns the index after it.
fn read_unquoted(text: &[u8], mut i: usize, out: &mut Vec<u8>) -> Result<usize, ValueError> {
    loop {
        match text.get(i) {
            None => return Err(ValueError::Malformed),
            Some(b',' | b'}') => return Ok(i),
            Some(b'{' | b'"') => return Err(ValueError::Malformed),
            Some(b'\\') => {
                out.push(*text.get(i + 1).ok_or(ValueError::Malformed)?);
                i += 2;
            }
            Some(&byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
}

/// An `hstore`'s text form (`"a"=>"1", "b"=>NULL`): the pairs into `pairs` (value `None`
/// = NULL), unescaped bytes into `out` (both cleared first).
pub(super) fn parse_hstore(
    text: &[u8],
    out: &mut Vec<u8>,
    pairs: &mut Vec<(Range<usize>, Option<Range<usize>>)>,
) -> Result<(), ValueError> {
    out.clear();
    pairs.clear();
    let mut i = 0;
    let skip_spaces = |i: &mut usize| {
        while text.get(*i) == Some(&b' ') {
            *i += 1;
        }
    };
    skip_spaces(&mut i);
    while i < text.len() {
        if text.get(i) != Some(&b'"') {
            return Err(ValueError::Malformed);
        }
        let key_start = out.len();
        i = read_quoted(text, i + 1, out)?;
        let key = key_start..out.len();
        if text.get(i..i + 2) != Some(b"=>") {
            return Err(ValueError::Malformed);
        }
        i += 2;
        let value = if text.get(i..i + 4) == Some(b"NULL") {
            i += 4;
            None
        } else if text.get(i) == Some(&b'"') {
            let value_start = out.len();
            i = read_quoted(text, i + 1, out)?;
            Some(value_start..out.len())
        } else {
            return Err(ValueError::Malformed);
        };
        pairs.push((key, value));
        if text.get(i) == Some(&b',') {
            i += 1;
            skip_spaces(&mut i);
            if i == text.len() {
                return Err(ValueError::Malformed);
            }
        } else if i != text.len() {
            return Err(ValueError::Malformed);
        }
    }
    Ok(())
}

/// The flags of a parsed range value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct RangeFlags {
    /// `[` rather than `(` (false when unbounded below).
    pub lower_inc: bool,
    /// `]` rather than `)` (false when unbounded above).
    pub upper_inc: bool,
    /// The value is `empty`.
    pub empty: bool,
}

/// A range's text form (`[1,10)`, `(,5]`, `["2020-01-01 00:00:00",)`, `empty`): the bound
/// texts, unescaped, into `out` (cleared first) with their spans in `bounds` (`None` =
/// unbounded).
///
/// Postgres quotes a bound holding `,()[]"\` or spaces and doubles `"` and `\` inside
/// the quotes; a backslash also escapes the next character.
pub(super) fn parse_range(
    text: &[u8],
    out: &mut Vec<u8>,
    bounds: &mut [Option<Range<usize>>; 2],
) -> Result<RangeFlags, ValueError> {
    out.clear();
    *bounds = [None, None];
    if text == b"empty" {
        return Ok(RangeFlags {
            empty: true,
            ..RangeFlags::default()
        });
    }
    let mut flags = RangeFlags::default();
    let (open, rest) = text.split_first().ok_or(ValueError::Malformed)?;
    flags.lower_inc = match open {
        b'[' => true,
        b'(' => false,
        _ => return Err(ValueError::Malformed),
    };
    let (close, rest) = rest.split_last().ok_or(ValueError::Malformed)?;
    flags.upper_inc = match close {
        b']' => true,
        b')' => false,
        _ => return Err(ValueError::Malformed),
    };
    let mut i = 0;
    for (index, end) in [(0, b','), (1, b'\0')] {
        let start = out.len();
        let mut any = false;
        loop {
            match rest.get(i) {
                None if index == 1 => break,
                None => return Err(ValueError::Malformed),
                Some(&byte) if byte == end && index == 0 => break,
                Some(b'"') => {
                    any = true;
                    i += 1;
                    loop {
                        match rest.get(i) {
                            None => return Err(ValueError::Malformed),
                            Some(b'"') if rest.get(i + 1) == Some(&b'"') => {
                                out.push(b'"');
                                i += 2;
                            }
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(b'\\') => {
                                out.push(*rest.get(i + 1).ok_or(ValueError::Malformed)?);
                                i += 2;
                            }
                            Some(&byte) => {
                                out.push(byte);
                                i += 1;
                            }
                        }
                    }
                }
                Some(b'\\') => {
                    any = true;
                    out.push(*rest.get(i + 1).ok_or(ValueError::Malformed)?);
                    i += 2;
                }
                Some(&byte) => {
                    any = true;
                    out.push(byte);
                    i += 1;
                }
            }
        }
        if index == 0 {
            // Skip the comma.
            i += 1;
        }
        if let Some(slot) = bounds.get_mut(index) {
            *slot = any.then_some(start..out.len());
        }
    }
    // Unbounded ends are never inclusive.
    flags.lower_inc &= bounds[0].is_some();
    flags.upper_inc &= bounds[1].is_some();
    Ok(flags)
}
