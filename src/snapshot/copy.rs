//! `COPY … TO STDOUT` text format → the `TupleValue::Text` values the streaming path
//! decodes, so snapshot rows go through exactly the same typed conversion as changes.
//!
//! ```text
//!  CopyData chunks ─► RowSplitter (rows end at a raw '\n') ─► parse_row
//!                                         fields split at a raw '\t', `\N` → Null,
//!                                         backslash escapes undone → Text(bytes)
//! ```
//!
//! A raw newline or tab never occurs inside a field: COPY escapes them. Code here parses
//! bytes from the network and never panics.

use bytes::{Bytes, BytesMut};

use crate::pg::pgoutput::TupleValue;

/// A COPY text row that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("malformed COPY text row: {0}")]
pub struct CopyFormatError(pub String);

/// Reassembles rows from CopyData chunks, whatever their boundaries.
#[derive(Debug, Default)]
pub struct RowSplitter {
    pending: BytesMut,
}

impl RowSplitter {
    /// Adds a chunk and returns the rows it completed, without their newline.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        // Postgres sends one row per CopyData message: take the fast path then.
        if self.pending.is_empty()
            && chunk.last() == Some(&b'\n')
            && memchr_count(chunk, b'\n') == 1
        {
            return vec![Bytes::copy_from_slice(&chunk[..chunk.len() - 1])];
        }
        self.pending.extend_from_slice(chunk);
        let mut rows = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let mut row = self.pending.split_to(end + 1);
            row.truncate(end);
            rows.push(row.freeze());
        }
        rows
    }

    /// Whether a partial row is left over (a truncated stream).
    pub fn has_partial_row(&self) -> bool {
        !self.pending.is_empty()
    }
}

fn memchr_count(bytes: &[u8], needle: u8) -> usize {
    bytes.iter().filter(|&&b| b == needle).count()
}

/// Splits one row (without its newline) into values; `expected` is the column count.
pub fn parse_row(row: &[u8], expected: usize) -> Result<Vec<TupleValue>, CopyFormatError> {
    let mut values = Vec::with_capacity(expected);
    if expected == 0 {
        // A table without columns still has rows: each is an empty line.
        return if row.is_empty() {
            Ok(values)
        } else {
            Err(CopyFormatError(
                "data in a row of a table without columns".into(),
            ))
        };
    }
    for field in row.split(|&b| b == b'\t') {
        values.push(parse_field(field)?);
    }
    if values.len() != expected {
        return Err(CopyFormatError(format!(
            "{} fields where {expected} columns were selected",
            values.len()
        )));
    }
    Ok(values)
}

/// One field: `\N` is NULL, everything else is text with COPY's escapes undone.
pub fn parse_field(field: &[u8]) -> Result<TupleValue, CopyFormatError> {
    if field == b"\\N" {
        return Ok(TupleValue::Null);
    }
    if !field.contains(&b'\\') {
        return Ok(TupleValue::Text(Bytes::copy_from_slice(field)));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&next) = field.get(i) else {
            return Err(CopyFormatError("a field ends with a lone backslash".into()));
        };
        i += 1;
        match next {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                // Up to three octal digits, as COPY FROM reads them.
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u8;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value.wrapping_mul(16).wrapping_add(d as u8);
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value);
            }
            // Any other escaped character stands for itself (`\\` included).
            other => out.push(other),
        }
    }
    Ok(TupleValue::Text(Bytes::from(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &[u8]) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s))
    }

    #[test]
    fn nulls_and_plain_fields() {
        assert_eq!(
            parse_row(b"1\t\\N\tabc\t", 4).unwrap(),
            vec![text(b"1"), TupleValue::Null, text(b"abc"), text(b"")]
        );
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(
            parse_field(b"a\\tb\\nc\\\\d\\re\\bf\\fg\\vh").unwrap(),
            text(b"a\tb\nc\\d\re\x08f\x0cg\x0bh")
        );
        // bytea's hex output has its backslash doubled by COPY.
        assert_eq!(parse_field(b"\\\\x00ff").unwrap(), text(b"\\x00ff"));
        assert_eq!(
            parse_field(b"\\101\\7\\x41\\x4a!").unwrap(),
            text(b"A\x07AJ!")
        );
        // A backslash before an ordinary character stands for that character.
        assert_eq!(parse_field(b"\\N2").unwrap(), text(b"N2"));
        assert_eq!(parse_field(b"\\xz").unwrap(), text(b"xz"));
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        assert!(parse_field(b"abc\\").is_err());
        assert!(parse_row(b"1\t2", 3).is_err());
        assert!(parse_row(b"x", 0).is_err());
        assert_eq!(parse_row(b"", 0).unwrap(), vec![]);
    }

    #[test]
    fn rows_are_reassembled_across_chunks() {
        let mut splitter = RowSplitter::default();
        assert_eq!(splitter.push(b"1\ta\n"), vec![Bytes::from_static(b"1\ta")]);
        assert!(splitter.push(b"2\tb").is_empty());
        assert!(splitter.has_partial_row());
        assert_eq!(
            splitter.push(b"b\n3\tc\n4"),
            vec![Bytes::from_static(b"2\tbb"), Bytes::from_static(b"3\tc")]
        );
        assert_eq!(splitter.push(b"\n"), vec![Bytes::from_static(b"4")]);
        assert!(!splitter.has_partial_row());
    }
}
