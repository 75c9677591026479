//! `COPY … TO STDOUT (FORMAT binary)` framing: CopyData chunks in, rows out as byte
//! ranges of each field, ready for [`crate::batch::TableBatch::push_binary_copy`].
//!
//! ```text
//!  header: "PGCOPY\n\xff\r\n\0"  flags:i32  extension length:i32  extension
//!  tuple:  field count:i16  then per field  length:i32 (-1 = NULL)  bytes
//!  trailer: field count -1
//! ```
//!
//! Postgres sends one tuple per CopyData message, so a row is decoded straight from the
//! chunk it came in, without copying; a tuple split across chunks (allowed by the protocol)
//! is reassembled in a buffer. Code here parses bytes from the network and never panics.

use std::ops::Range;

use bytes::{Buf, BytesMut};

/// The binary COPY signature.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags and extension length.
const HEADER_BYTES: usize = SIGNATURE.len() + 4 + 4;

/// A binary COPY stream that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("malformed binary COPY data: {0}")]
pub struct CopyFormatError(pub String);

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
    Done,
}

/// Splits a binary COPY stream into rows, whatever the chunk boundaries.
#[derive(Debug)]
pub struct BinaryRows {
    columns: usize,
    state: State,
    pending: BytesMut,
    /// The field ranges of the row being handed out; reused across rows.
    fields: Vec<Option<Range<usize>>>,
}

impl BinaryRows {
    /// A parser for rows of `columns` fields.
    pub fn new(columns: usize) -> BinaryRows {
        BinaryRows {
            columns,
            state: State::Header,
            pending: BytesMut::new(),
            fields: Vec::with_capacity(columns),
        }
    }

    /// Parses `chunk` and calls `on_row(data, fields)` for every row it completes: field
    /// `i` is `data[fields[i]]`, `None` for NULL. Stops at the first error of either kind.
    pub fn feed<E: From<CopyFormatError>>(
        &mut self,
        chunk: &[u8],
        mut on_row: impl FnMut(&[u8], &[Option<Range<usize>>]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.pending.is_empty() {
            let used = self.parse(chunk, &mut on_row)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let buffer = std::mem::take(&mut self.pending);
            let used = self.parse(&buffer, &mut on_row)?;
            self.pending = buffer;
            self.pending.advance(used);
        }
        Ok(())
    }

    /// Checks that the stream ended where it should: after the trailer, nothing left over.
    pub fn finish(&self) -> Result<(), CopyFormatError> {
        match (self.state, self.pending.is_empty()) {
            (State::Done, true) => Ok(()),
            (State::Done, false) => Err(CopyFormatError("data after the trailer".into())),
            _ => Err(CopyFormatError(
                "the stream ended before its trailer".into(),
            )),
        }
    }

    /// Parses as much of `data` as holds whole items; returns the bytes consumed.
    fn parse<E: From<CopyFormatError>>(
        &mut self,
        data: &[u8],
        on_row: &mut impl FnMut(&[u8], &[Option<Range<usize>>]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut at = 0;
        loop {
            match self.state {
                State::Header => {
                    let Some(header) = data.get(at..at + HEADER_BYTES) else {
                        return Ok(at);
                    };
                    if &header[..SIGNATURE.len()] != SIGNATURE {
                        return Err(CopyFormatError("bad signature".into()).into());
                    }
                    let extension = be_i32(&header[HEADER_BYTES - 4..]);
                    let Ok(extension) = usize::try_from(extension) else {
                        return Err(CopyFormatError("negative header extension".into()).into());
                    };
                    if data.len() < at + HEADER_BYTES + extension {
                        return Ok(at);
                    }
                    at += HEADER_BYTES + extension;
                    self.state = State::Tuples;
                }
                State::Tuples => match self.tuple(&data[at..])? {
                    None => return Ok(at),
                    Some(Tuple::Trailer) => {
                        at += 2;
                        self.state = State::Done;
                    }
                    Some(Tuple::Row(length)) => {
                        on_row(&data[at..at + length], &self.fields)?;
                        at += length;
                    }
                },
                State::Done => {
                    return if at == data.len() {
                        Ok(at)
                    } else {
                        Err(CopyFormatError("data after the trailer".into()).into())
                    };
                }
            }
        }
    }

    /// Reads one tuple at the start of `data` into `self.fields` (ranges relative to
    /// `data`); `None` when `data` does not hold all of it yet.
    fn tuple(&mut self, data: &[u8]) -> Result<Option<Tuple>, CopyFormatError> {
        let Some(count) = data.get(..2) else {
            return Ok(None);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            return Ok(Some(Tuple::Trailer));
        }
        if usize::try_from(count).ok() != Some(self.columns) {
            return Err(CopyFormatError(format!(
                "a row has {count} fields where {} columns were selected",
                self.columns
            )));
        }
        self.fields.clear();
        let mut at = 2;
        for _ in 0..self.columns {
            let Some(length) = data.get(at..at + 4) else {
                return Ok(None);
            };
            let length = be_i32(length);
            at += 4;
            if length == -1 {
                self.fields.push(None);
                continue;
            }
            let Ok(length) = usize::try_from(length) else {
                return Err(CopyFormatError(format!("a field has length {length}")));
            };
            if data.len() < at + length {
                return Ok(None);
            }
            self.fields.push(Some(at..at + length));
            at += length;
        }
        Ok(Some(Tuple::Row(at)))
    }
}

/// What starts a tuple position.
enum Tuple {
    /// The end-of-data marker (2 bytes).
    Trailer,
    /// A row of this many bytes.
    Row(usize),
}

fn be_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0i32.to_be_bytes());
        out.extend(3i32.to_be_bytes());
        out.extend(b"ext");
        for row in rows {
            out.extend((row.len() as i16).to_be_bytes());
            for field in *row {
                match field {
                    Some(bytes) => {
                        out.extend((bytes.len() as i32).to_be_bytes());
                        out.extend(*bytes);
                    }
                    None => out.extend((-1i32).to_be_bytes()),
                }
            }
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    fn collect(parser: &mut BinaryRows, chunks: &[&[u8]]) -> Vec<Vec<Option<Vec<u8>>>> {
        let mut rows = Vec::new();
        for chunk in chunks {
            parser
                .feed::<CopyFormatError>(chunk, |data, fields| {
                    rows.push(
                        fields
                            .iter()
                            .map(|f| f.clone().map(|r| data[r].to_vec()))
                            .collect(),
                    );
                    Ok(())
                })
                .unwrap();
        }
        rows
    }

    #[test]
    fn rows_come_out_whatever_the_chunk_boundaries() {
        let data = stream(&[
            &[Some(b"1"), None, Some(b"")],
            &[Some(b"22"), Some(b"abc"), None],
        ]);
        let want = vec![
            vec![Some(b"1".to_vec()), None, Some(vec![])],
            vec![Some(b"22".to_vec()), Some(b"abc".to_vec()), None],
        ];
        for split in 0..=data.len() {
            let mut parser = BinaryRows::new(3);
            let rows = collect(&mut parser, &[&data[..split], &data[split..]]);
            assert_eq!(rows, want, "split at {split}");
            parser.finish().unwrap();
        }
        // One byte at a time.
        let mut parser = BinaryRows::new(3);
        let chunks: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(collect(&mut parser, &chunks), want);
        parser.finish().unwrap();
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        let good = stream(&[&[Some(b"1")]]);
        let mut parser = BinaryRows::new(2);
        assert!(
            parser
                .feed::<CopyFormatError>(&good, |_, _| Ok(()))
                .is_err()
        );

        let mut bad = good.clone();
        bad[0] = b'X';
        let mut parser = BinaryRows::new(1);
        assert!(parser.feed::<CopyFormatError>(&bad, |_, _| Ok(())).is_err());

        let mut parser = BinaryRows::new(1);
        parser
            .feed::<CopyFormatError>(&good[..good.len() - 2], |_, _| Ok(()))
            .unwrap();
        assert!(parser.finish().is_err(), "no trailer");

        let mut negative = stream(&[]);
        negative.truncate(HEADER_BYTES - 4);
        negative.extend((-5i32).to_be_bytes());
        let mut parser = BinaryRows::new(1);
        assert!(
            parser
                .feed::<CopyFormatError>(&negative, |_, _| Ok(()))
                .is_err()
        );

        let mut extra = good.clone();
        extra.push(0);
        let mut parser = BinaryRows::new(1);
        assert!(
            parser
                .feed::<CopyFormatError>(&extra, |_, _| Ok(()))
                .is_err()
        );
    }
}
