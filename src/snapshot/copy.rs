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
    /// A chunk was rejected; nothing after it is parsed.
    Failed,
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
    /// `i` is `data[fields[i]]`, `None` for NULL. Stops at the first error of either kind;
    /// after an error, every later `feed` and [`BinaryRows::finish`] fails too.
    pub fn feed<E: From<CopyFormatError>>(
        &mut self,
        chunk: &[u8],
        on_row: impl FnMut(&[u8], &[Option<Range<usize>>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let result = self.consume(chunk, on_row);
        if result.is_err() {
            // An error leaves the parser mid-item with `pending` possibly dropped, and
            // what remains can look like a finished stream (rejected data after the
            // trailer leaves `Done` and nothing pending): the error must be final.
            self.state = State::Failed;
        }
        result
    }

    /// [`BinaryRows::feed`] without making its errors final.
    fn consume<E: From<CopyFormatError>>(
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
            (State::Failed, _) => Err(CopyFormatError("the stream was rejected earlier".into())),
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
                    // As PostgreSQL's own reader does, reject any of the high 16 flag bits:
                    // bit 16 puts an OID field before each row's fields and the others are
                    // undefined critical flags, so either would misframe every row. The
                    // low 16 bits are defined as safe to ignore.
                    let flags = be_i32(&header[SIGNATURE.len()..HEADER_BYTES - 4]);
                    if flags >> 16 != 0 {
                        return Err(CopyFormatError(format!(
                            "unrecognized critical flags {flags:#010x} in the header"
                        ))
                        .into());
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
                State::Failed => {
                    return Err(CopyFormatError("data after an earlier error".into()).into());
                }
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

    /// A row as the parser hands it out, copied out of its buffer.
    fn owned_row(data: &[u8], fields: &[Option<Range<usize>>]) -> Vec<Option<Vec<u8>>> {
        fields
            .iter()
            .map(|f| f.clone().map(|r| data[r].to_vec()))
            .collect()
    }

    fn collect(parser: &mut BinaryRows, chunks: &[&[u8]]) -> Vec<Vec<Option<Vec<u8>>>> {
        let mut rows = Vec::new();
        for chunk in chunks {
            parser
                .feed::<CopyFormatError>(chunk, |data, fields| {
                    rows.push(owned_row(data, fields));
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

    #[test]
    fn critical_header_flags_are_rejected() {
        // Found by `header_flags_follow_postgres`: bit 16 (WITH OIDS) was accepted,
        // although it adds a field to every row.
        let mut oids = stream(&[]);
        oids[SIGNATURE.len()..HEADER_BYTES - 4].copy_from_slice(&0x0001_0000i32.to_be_bytes());
        let mut parser = BinaryRows::new(0);
        let error = parser
            .feed::<CopyFormatError>(&oids, |_, _| Ok(()))
            .expect_err("WITH OIDS");
        assert!(error.to_string().contains("critical flags"), "{error}");

        let mut compatible = stream(&[&[None]]);
        compatible[SIGNATURE.len()..HEADER_BYTES - 4]
            .copy_from_slice(&0x0000_8001i32.to_be_bytes());
        let mut parser = BinaryRows::new(1);
        assert_eq!(collect(&mut parser, &[&compatible]), vec![vec![None]]);
        parser.finish().expect("low flag bits are ignorable");
    }

    #[test]
    fn an_error_is_final() {
        // Found by `arbitrary_bytes_give_one_outcome_whatever_the_chunking`: header,
        // trailer, one more byte. `feed` rejected the byte but `finish` then accepted
        // the stream, since the parser was left Done with nothing pending.
        let mut extra = stream(&[]);
        extra.push(0);
        let mut parser = BinaryRows::new(0);
        assert!(
            parser
                .feed::<CopyFormatError>(&extra, |_, _| Ok(()))
                .is_err()
        );
        assert!(parser.finish().is_err(), "finish after a rejected chunk");
        assert!(
            parser.feed::<CopyFormatError>(&[], |_, _| Ok(())).is_err(),
            "feed after a rejected chunk"
        );

        // The same when the error comes from a chunk joined to buffered bytes.
        let good = stream(&[]);
        let (head, tail) = good.split_at(5);
        let mut parser = BinaryRows::new(0);
        parser
            .feed::<CopyFormatError>(head, |_, _| Ok(()))
            .expect("a partial header");
        let mut rest = tail.to_vec();
        rest.push(0);
        assert!(
            parser
                .feed::<CopyFormatError>(&rest, |_, _| Ok(()))
                .is_err()
        );
        assert!(parser.finish().is_err());
    }

    /// Property tests: any stream, split anywhere, gives the same rows and the same
    /// verdict as when fed whole, and a malformed one ends in an error, never a panic.
    mod properties {
        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;
        use crate::pg::mutation::{Wire, mutate, mutation};

        /// A row as handed out: `None` for NULL.
        type Row = Vec<Option<Vec<u8>>>;

        /// The stream `COPY … TO STDOUT (FORMAT binary)` sends for `rows`.
        fn encode(extension: &[u8], rows: &[Row]) -> Wire {
            let mut w = Wire::default();
            w.put(SIGNATURE);
            w.put(&0i32.to_be_bytes());
            let len = i32::try_from(extension.len()).expect("test extension size");
            w.size(&len.to_be_bytes());
            w.put(extension);
            for row in rows {
                let count = i16::try_from(row.len()).expect("test row width");
                w.size(&count.to_be_bytes());
                for field in row {
                    match field {
                        Some(value) => {
                            let len = i32::try_from(value.len()).expect("test value size");
                            w.size(&len.to_be_bytes());
                            w.put(value);
                        }
                        None => w.put(&(-1i32).to_be_bytes()),
                    }
                }
            }
            w.put(&(-1i16).to_be_bytes());
            w
        }

        /// What a parser made of a whole stream.
        #[derive(Debug, PartialEq)]
        struct Outcome {
            rows: Vec<Row>,
            /// The first error `feed` returned; feeding stops there.
            fed: Result<(), String>,
            /// What `finish` said afterwards, error or not.
            finished: Result<(), String>,
        }

        impl Outcome {
            fn is_ok(&self) -> bool {
                self.fed.is_ok() && self.finished.is_ok()
            }
        }

        /// Feeds `chunks` in order, stopping at the first error, then calls `finish`.
        fn run(columns: usize, chunks: &[&[u8]]) -> Outcome {
            let mut parser = BinaryRows::new(columns);
            let mut rows = Vec::new();
            let mut fed = Ok(());
            for chunk in chunks {
                let result = parser.feed::<CopyFormatError>(chunk, |data, fields| {
                    rows.push(owned_row(data, fields));
                    Ok(())
                });
                if let Err(e) = result {
                    fed = Err(e.to_string());
                    break;
                }
            }
            let finished = parser.finish().map_err(|e| e.to_string());
            Outcome {
                rows,
                fed,
                finished,
            }
        }

        /// `bytes` split at the given cut points (empty chunks included).
        fn split<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::with_capacity(at.len() + 1);
            let mut start = 0;
            for end in at {
                chunks.push(&bytes[start..end]);
                start = end;
            }
            chunks.push(&bytes[start..]);
            chunks
        }

        /// Feeds `bytes` whole and in the chunks `cuts` makes, checks the two agree and
        /// that an error from `feed` is final, and returns the outcome.
        fn run_checked(
            columns: usize,
            bytes: &[u8],
            cuts: &[Index],
        ) -> Result<Outcome, TestCaseError> {
            let whole = run(columns, &[bytes]);
            let chunked = run(columns, &split(bytes, cuts));
            prop_assert_eq!(&chunked, &whole, "chunk boundaries changed the outcome");
            if whole.fed.is_err() {
                prop_assert!(whole.finished.is_err(), "finish accepted a rejected stream");
            }
            Ok(whole)
        }

        /// Column count, header extension and rows of a valid stream.
        fn stream() -> impl Strategy<Value = (usize, Vec<u8>, Vec<Row>)> {
            (0usize..5).prop_flat_map(|columns| {
                let field = prop::option::of(prop::collection::vec(any::<u8>(), 0..10));
                (
                    Just(columns),
                    prop::collection::vec(any::<u8>(), 0..6),
                    prop::collection::vec(prop::collection::vec(field, columns), 0..6),
                )
            })
        }

        fn cuts() -> impl Strategy<Value = Vec<Index>> {
            prop::collection::vec(any::<Index>(), 0..6)
        }

        /// Bytes biased toward 0x00 and 0xff, which make small and -1 counts and lengths.
        fn protocol_bytes() -> impl Strategy<Value = Vec<u8>> {
            let byte = prop_oneof![2 => any::<u8>(), 2 => Just(0u8), 1 => Just(0xffu8)];
            prop::collection::vec(byte, 0..64)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn arbitrary_bytes_give_one_outcome_whatever_the_chunking(
                columns in 0usize..4,
                with_header in any::<bool>(),
                body in protocol_bytes(),
                cuts in cuts(),
            ) {
                // A valid header half the time, so the tuple parser sees the bytes.
                let mut bytes = Vec::new();
                if with_header {
                    bytes = encode(&[], &[]).bytes;
                    bytes.truncate(HEADER_BYTES);
                }
                bytes.extend_from_slice(&body);
                run_checked(columns, &bytes, &cuts)?;
            }

            #[test]
            fn valid_streams_decode_whatever_the_chunking(
                (columns, extension, rows) in stream(),
                cuts in cuts(),
            ) {
                let bytes = encode(&extension, &rows).bytes;
                let outcome = run_checked(columns, &bytes, &cuts)?;
                prop_assert_eq!(
                    outcome,
                    Outcome { rows, fed: Ok(()), finished: Ok(()) }
                );
            }

            #[test]
            fn every_truncation_of_a_valid_stream_fails_at_finish(
                (columns, extension, rows) in stream(),
            ) {
                let bytes = encode(&extension, &rows).bytes;
                for len in 0..bytes.len() {
                    let outcome = run(columns, &[&bytes[..len]]);
                    prop_assert_eq!(&outcome.fed, &Ok(()), "prefix {}", len);
                    prop_assert!(outcome.finished.is_err(), "prefix {len} finished");
                    prop_assert!(rows.starts_with(&outcome.rows), "prefix {len}");
                }
            }

            #[test]
            fn mutated_streams_give_one_outcome_whatever_the_chunking(
                (columns, extension, rows) in stream(),
                mutations in prop::collection::vec(mutation(), 1..4),
                cuts in cuts(),
            ) {
                let mut bytes = encode(&extension, &rows).bytes;
                for mutation in &mutations {
                    mutate(&mut bytes, mutation);
                }
                run_checked(columns, &bytes, &cuts)?;
            }

            #[test]
            fn inflated_counts_and_lengths_are_errors(
                (columns, extension, rows) in stream(),
                which in any::<Index>(),
                huge in 0x4000_0000u32..=0xffff_fffe,
                cuts in cuts(),
            ) {
                // A negative or over-2^30 length (never -1, which would be a valid NULL),
                // or a field count of 2^14 or more or negative: -1 turns a row into a
                // trailer with data after it. Every stream has its extension length.
                let (bytes, _) = encode(&extension, &rows)
                    .inflated(which, huge)
                    .expect("a header extension length");
                let outcome = run_checked(columns, &bytes, &cuts)?;
                prop_assert!(!outcome.is_ok(), "accepted: {outcome:?}");
            }

            #[test]
            fn header_flags_follow_postgres(
                (columns, extension, rows) in stream(),
                bit in 0u32..32,
                cuts in cuts(),
            ) {
                let mut bytes = encode(&extension, &rows).bytes;
                let flags = SIGNATURE.len()..SIGNATURE.len() + 4;
                bytes[flags].copy_from_slice(&(1u32 << bit).to_be_bytes());
                let outcome = run_checked(columns, &bytes, &cuts)?;
                if bit < 16 {
                    // Bits 0-15 are backwards-compatible: readers ignore them.
                    prop_assert_eq!(outcome, Outcome { rows, fed: Ok(()), finished: Ok(()) });
                } else {
                    prop_assert!(outcome.fed.is_err(), "critical flag bit {bit} accepted");
                }
            }
        }
    }
}
