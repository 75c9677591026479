//! The decoder's tests: messages encoded the way PostgreSQL's proto.c writes them.

use super::*;

/// A test-only encoder that writes messages the way PostgreSQL's proto.c does.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn tag(c: u8) -> Enc {
        Enc(vec![c])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn str(self, s: &str) -> Self {
        self.raw(s.as_bytes()).u8(0)
    }
    fn tuple(mut self, values: &[TupleValue]) -> Self {
        self = self.u16(u16::try_from(values.len()).expect("test tuple width"));
        for v in values {
            self = match v {
                TupleValue::Null => self.u8(b'n'),
                TupleValue::UnchangedToast => self.u8(b'u'),
                TupleValue::Text(b) => self
                    .u8(b't')
                    .i32(i32::try_from(b.len()).expect("test value size"))
                    .raw(b),
                TupleValue::Binary(b) => self
                    .u8(b'b')
                    .i32(i32::try_from(b.len()).expect("test value size"))
                    .raw(b),
            };
        }
        self
    }
    fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn ok(bytes: Bytes) -> LogicalMessage {
    decode(bytes).expect("fixture decodes")
}

fn err(bytes: impl Into<Bytes>) -> DecodeError {
    decode(bytes.into()).expect_err("must not decode")
}

/// Every fixture as (wire bytes, expected message).
fn fixtures() -> Vec<(Bytes, LogicalMessage)> {
    let row = vec![
        text("42"),
        TupleValue::Null,
        TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 7])),
        text(""),
    ];
    let key = vec![
        text("42"),
        TupleValue::Null,
        TupleValue::Null,
        TupleValue::Null,
    ];
    let mut out = vec![
        (
            Enc::tag(b'B')
                .u64(0x16_B374_D848)
                .i64(778_000_000_123_456)
                .u32(7_654_321)
                .bytes(),
            LogicalMessage::Begin(Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_ts: 778_000_000_123_456,
                xid: 7_654_321,
            }),
        ),
        (
            Enc::tag(b'C')
                .u8(0)
                .u64(0x16_B374_D848)
                .u64(0x16_B374_D878)
                .i64(-5)
                .bytes(),
            LogicalMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_ts: -5,
            }),
        ),
        (
            Enc::tag(b'O').u64(99).str("node_a").bytes(),
            LogicalMessage::Origin(Origin {
                commit_lsn: Lsn(99),
                name: "node_a".into(),
            }),
        ),
        (
            Enc::tag(b'Y').u32(16_385).str("public").str("mood").bytes(),
            LogicalMessage::Type(TypeMessage {
                id: 16_385,
                namespace: "public".into(),
                name: "mood".into(),
            }),
        ),
        (
            Enc::tag(b'I').u32(16_400).u8(b'N').tuple(&row).bytes(),
            LogicalMessage::Insert(Insert {
                relation_id: 16_400,
                new: row.clone(),
            }),
        ),
        (
            Enc::tag(b'U').u32(16_400).u8(b'N').tuple(&row).bytes(),
            LogicalMessage::Update(Update {
                relation_id: 16_400,
                old: None,
                new: row.clone(),
            }),
        ),
        (
            Enc::tag(b'U')
                .u32(16_400)
                .u8(b'K')
                .tuple(&key)
                .u8(b'N')
                .tuple(&row)
                .bytes(),
            LogicalMessage::Update(Update {
                relation_id: 16_400,
                old: Some(OldTuple::Key(key.clone())),
                new: row.clone(),
            }),
        ),
        (
            Enc::tag(b'U')
                .u32(16_400)
                .u8(b'O')
                .tuple(&row)
                .u8(b'N')
                .tuple(&row)
                .bytes(),
            LogicalMessage::Update(Update {
                relation_id: 16_400,
                old: Some(OldTuple::Full(row.clone())),
                new: row.clone(),
            }),
        ),
        (
            // An update that left a large TOASTed column alone: it is not sent.
            Enc::tag(b'U')
                .u32(16_400)
                .u8(b'N')
                .tuple(&[text("42"), TupleValue::UnchangedToast, text("x")])
                .bytes(),
            LogicalMessage::Update(Update {
                relation_id: 16_400,
                old: None,
                new: vec![text("42"), TupleValue::UnchangedToast, text("x")],
            }),
        ),
        (
            Enc::tag(b'D').u32(16_400).u8(b'K').tuple(&key).bytes(),
            LogicalMessage::Delete(Delete {
                relation_id: 16_400,
                old: OldTuple::Key(key.clone()),
            }),
        ),
        (
            Enc::tag(b'D').u32(16_400).u8(b'O').tuple(&row).bytes(),
            LogicalMessage::Delete(Delete {
                relation_id: 16_400,
                old: OldTuple::Full(row.clone()),
            }),
        ),
        (
            Enc::tag(b'T')
                .u32(3)
                .u8(3)
                .u32(16_400)
                .u32(16_401)
                .u32(16_402)
                .bytes(),
            LogicalMessage::Truncate(Truncate {
                cascade: true,
                restart_identity: true,
                relation_ids: vec![16_400, 16_401, 16_402],
            }),
        ),
        (
            Enc::tag(b'T').u32(2).u8(2).u32(1).u32(2).bytes(),
            LogicalMessage::Truncate(Truncate {
                cascade: false,
                restart_identity: true,
                relation_ids: vec![1, 2],
            }),
        ),
        (
            Enc::tag(b'T').u32(1).u8(1).u32(9).bytes(),
            LogicalMessage::Truncate(Truncate {
                cascade: true,
                restart_identity: false,
                relation_ids: vec![9],
            }),
        ),
        (
            Enc::tag(b'M')
                .u8(1)
                .u64(0x1_0000_0010)
                .str("pg2lake_heartbeat")
                .i32(3)
                .raw(b"abc")
                .bytes(),
            LogicalMessage::Message(LogicalDecodingMessage {
                transactional: true,
                lsn: Lsn(0x1_0000_0010),
                prefix: "pg2lake_heartbeat".into(),
                content: Bytes::from_static(b"abc"),
            }),
        ),
        (
            Enc::tag(b'M').u8(0).u64(77).str("p").i32(0).bytes(),
            LogicalMessage::Message(LogicalDecodingMessage {
                transactional: false,
                lsn: Lsn(77),
                prefix: "p".into(),
                content: Bytes::new(),
            }),
        ),
    ];
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        out.push((
            Enc::tag(b'R')
                .u32(16_400)
                .str("")
                .str("orders")
                .u8(byte)
                .u16(3)
                .u8(1)
                .str("id")
                .u32(20)
                .i32(-1)
                .u8(0)
                .str("note")
                .u32(1043)
                .i32(104)
                .u8(0)
                .str("ünï")
                .u32(16_385)
                .i32(-1)
                .bytes(),
            LogicalMessage::Relation(Relation {
                id: 16_400,
                namespace: String::new(),
                name: "orders".into(),
                replica_identity: identity,
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "note".into(),
                        type_oid: 1043,
                        type_modifier: 104,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "ünï".into(),
                        type_oid: 16_385,
                        type_modifier: -1,
                    },
                ],
            }),
        ));
    }
    out
}

/// A decoder inside a stream block of transaction 900.
fn stream_block() -> Decoder {
    let mut decoder = Decoder::new();
    let start = decoder
        .decode(Enc::tag(b'S').u32(900).u8(1).bytes())
        .expect("a Stream Start opens a block");
    assert_eq!(start.xid, None);
    assert!(decoder.in_stream());
    decoder
}

/// A decoder inside a stream block or not.
fn decoder_in(in_stream: bool) -> Decoder {
    if in_stream {
        stream_block()
    } else {
        Decoder::new()
    }
}

/// The tags of the messages that carry an xid inside a stream block.
const XID_TAGS: &[u8] = b"RYIUDTM";

/// `bytes` with `xid` after the tag, as pgoutput sends a change inside a stream block.
fn with_xid(bytes: &Bytes, xid: u32) -> Bytes {
    let mut out = bytes.slice(..1).to_vec();
    out.extend_from_slice(&xid.to_be_bytes());
    out.extend_from_slice(&bytes.slice(1..));
    Bytes::from(out)
}

/// A fixture decoded by a [`Decoder`] inside a stream block or not.
struct StreamFixture {
    in_stream: bool,
    bytes: Bytes,
    expected: Decoded,
}

/// Every protocol 2 fixture: the stream messages, and inside a block every change
/// fixture with the xid of the subtransaction it belongs to (and Origin, without).
fn stream_fixtures() -> Vec<StreamFixture> {
    let between = |bytes: Bytes, message| StreamFixture {
        in_stream: false,
        bytes,
        expected: Decoded { message, xid: None },
    };
    let mut out = vec![
        between(
            Enc::tag(b'S').u32(7_654_321).u8(1).bytes(),
            LogicalMessage::StreamStart(StreamStart {
                xid: 7_654_321,
                first_segment: true,
            }),
        ),
        between(
            Enc::tag(b'S').u32(u32::MAX).u8(0).bytes(),
            LogicalMessage::StreamStart(StreamStart {
                xid: u32::MAX,
                first_segment: false,
            }),
        ),
        StreamFixture {
            in_stream: true,
            bytes: Enc::tag(b'E').bytes(),
            expected: Decoded {
                message: LogicalMessage::StreamStop,
                xid: None,
            },
        },
        between(
            Enc::tag(b'c')
                .u32(7_654_321)
                .u8(0)
                .u64(0x16_B374_D848)
                .u64(0x16_B374_D878)
                .i64(778_000_000_123_456)
                .bytes(),
            LogicalMessage::StreamCommit(StreamCommit {
                xid: 7_654_321,
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_ts: 778_000_000_123_456,
            }),
        ),
        // The whole transaction aborted.
        between(
            Enc::tag(b'A').u32(7_654_321).u32(7_654_321).bytes(),
            LogicalMessage::StreamAbort(StreamAbort {
                xid: 7_654_321,
                subxid: 7_654_321,
            }),
        ),
        // Only a subtransaction aborted (ROLLBACK TO SAVEPOINT).
        between(
            Enc::tag(b'A').u32(7_654_321).u32(7_654_330).bytes(),
            LogicalMessage::StreamAbort(StreamAbort {
                xid: 7_654_321,
                subxid: 7_654_330,
            }),
        ),
    ];
    for (bytes, message) in fixtures() {
        let tag = bytes[0];
        if XID_TAGS.contains(&tag) {
            out.push(StreamFixture {
                in_stream: true,
                bytes: with_xid(&bytes, 7_654_330),
                expected: Decoded {
                    message,
                    xid: Some(7_654_330),
                },
            });
        } else if tag == b'O' {
            out.push(StreamFixture {
                in_stream: true,
                bytes,
                expected: Decoded { message, xid: None },
            });
        }
    }
    out
}

/// Whether a block is open after `message` was decoded in the state `in_stream`.
fn in_stream_after(message: &LogicalMessage, in_stream: bool) -> bool {
    match message {
        LogicalMessage::StreamStart(_) => true,
        LogicalMessage::StreamStop => false,
        _ => in_stream,
    }
}

#[test]
fn decodes_every_fixture() {
    for (bytes, expected) in fixtures() {
        assert_eq!(ok(bytes.clone()), expected, "bytes {bytes:?}");
    }
}

#[test]
fn covers_every_message_kind() {
    let mut kinds: Vec<MessageKind> = fixtures().iter().map(|(_, m)| m.kind()).collect();
    kinds.extend(stream_fixtures().iter().map(|f| f.expected.message.kind()));
    kinds.dedup();
    for kind in [
        MessageKind::Begin,
        MessageKind::Commit,
        MessageKind::Origin,
        MessageKind::Relation,
        MessageKind::Type,
        MessageKind::Insert,
        MessageKind::Update,
        MessageKind::Delete,
        MessageKind::Truncate,
        MessageKind::Message,
        MessageKind::StreamStart,
        MessageKind::StreamStop,
        MessageKind::StreamCommit,
        MessageKind::StreamAbort,
    ] {
        assert!(kinds.contains(&kind), "no fixture for {kind}");
    }
}

#[test]
fn begin_fields() {
    let msg = ok(Enc::tag(b'B').u64(1).i64(2).u32(u32::MAX).bytes());
    assert_eq!(
        msg,
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(1),
            commit_ts: 2,
            xid: u32::MAX,
        })
    );
}

#[test]
fn relation_keeps_key_flags_per_column() {
    let (bytes, _) = fixtures()
        .into_iter()
        .find(|(_, m)| matches!(m, LogicalMessage::Relation(_)))
        .expect("relation fixture");
    let LogicalMessage::Relation(rel) = ok(bytes) else {
        panic!("not a relation");
    };
    let keys: Vec<bool> = rel.columns.iter().map(|c| c.is_key).collect();
    assert_eq!(keys, [true, false, false]);
}

#[test]
fn relation_with_no_columns() {
    let msg = ok(Enc::tag(b'R')
        .u32(5)
        .str("s")
        .str("t")
        .u8(b'n')
        .u16(0)
        .bytes());
    let LogicalMessage::Relation(rel) = msg else {
        panic!("not a relation");
    };
    assert!(rel.columns.is_empty());
    assert_eq!(rel.replica_identity, ReplicaIdentity::Nothing);
}

#[test]
fn replica_identity_byte_round_trips() {
    for b in [b'd', b'n', b'f', b'i'] {
        let identity = ReplicaIdentity::from_byte(b).expect("known identity");
        assert_eq!(identity.as_byte(), b);
    }
    assert_eq!(ReplicaIdentity::from_byte(b'x'), None);
}

#[test]
fn unchanged_toast_is_not_null() {
    let msg = ok(Enc::tag(b'U')
        .u32(1)
        .u8(b'N')
        .tuple(&[TupleValue::UnchangedToast, TupleValue::Null])
        .bytes());
    let LogicalMessage::Update(update) = msg else {
        panic!("not an update");
    };
    assert_eq!(update.new[0], TupleValue::UnchangedToast);
    assert_ne!(update.new[0], update.new[1]);
}

#[test]
fn old_tuple_values_accessor() {
    let values = vec![text("a")];
    assert_eq!(OldTuple::Key(values.clone()).values(), values.as_slice());
    assert_eq!(OldTuple::Full(values.clone()).values(), values.as_slice());
}

#[test]
fn values_are_zero_copy_slices_of_the_input() {
    let input = Enc::tag(b'I')
        .u32(1)
        .u8(b'N')
        .tuple(&[
            text("hello"),
            TupleValue::Binary(Bytes::from_static(b"\x01\x02")),
        ])
        .bytes();
    let range = input.as_ptr_range();
    let LogicalMessage::Insert(insert) = ok(input.clone()) else {
        panic!("not an insert");
    };
    for value in &insert.new {
        let (TupleValue::Text(b) | TupleValue::Binary(b)) = value else {
            panic!("expected a value");
        };
        let inner = b.as_ptr_range();
        assert!(range.start <= inner.start && inner.end <= range.end);
    }
    let message = Enc::tag(b'M')
        .u8(0)
        .u64(1)
        .str("p")
        .i32(4)
        .raw(b"data")
        .bytes();
    let range = message.as_ptr_range();
    let LogicalMessage::Message(m) = ok(message.clone()) else {
        panic!("not a message");
    };
    let inner = m.content.as_ptr_range();
    assert!(range.start <= inner.start && inner.end <= range.end);
}

#[test]
fn empty_input_is_an_error() {
    let e = err(Bytes::new());
    assert_eq!(e.kind, MessageKind::Unknown);
    assert_eq!(e.offset, 0);
    assert!(matches!(e.problem, DecodeProblem::UnexpectedEnd { .. }));
}

#[test]
fn unknown_tag_is_named_as_a_char() {
    let e = err(Bytes::from_static(b"Pxyz"));
    assert_eq!(e.problem, DecodeProblem::UnknownTag(b'P'));
    assert_eq!(
        e.to_string(),
        "malformed pgoutput message at offset 0: unknown message tag 'P' (0x50)"
    );
    // Protocol 3 two-phase tags are not understood, inside a stream block or not.
    for tag in [b'b', b'P', b'K', b'r', b'p', b's', b'e', 0, 0xff] {
        assert_eq!(err(vec![tag]).problem, DecodeProblem::UnknownTag(tag));
        let e = stream_block()
            .decode(Bytes::from(vec![tag]))
            .expect_err("unknown in a block");
        assert_eq!(e.problem, DecodeProblem::UnknownTag(tag));
    }
}

#[test]
fn every_truncation_is_an_error() {
    for (bytes, expected) in fixtures() {
        for len in 0..bytes.len() {
            let e = decode(bytes.slice(..len)).expect_err("a strict prefix must not decode");
            assert!(
                matches!(
                    e.problem,
                    DecodeProblem::UnexpectedEnd { .. }
                        | DecodeProblem::UnterminatedString
                        | DecodeProblem::CountTooLarge { .. }
                ),
                "prefix {len} of {expected:?}: {e}"
            );
            assert!(e.offset <= len, "offset past the data: {e}");
            if len > 0 {
                assert_eq!(e.kind, expected.kind());
            }
        }
    }
}

#[test]
fn display_names_kind_offset_and_problem() {
    // Tag (1) + relation id (4) + 'N' (1) + count (2) + 't' (1) = value length at 9;
    // the second value's kind byte sits at 17 and is missing.
    let bytes = Enc::tag(b'U')
        .u32(1)
        .u8(b'N')
        .u16(2)
        .u8(b't')
        .i32(4)
        .raw(b"abcd")
        .bytes();
    let e = err(bytes);
    assert_eq!(e.offset, 17);
    assert_eq!(
        e.to_string(),
        "malformed pgoutput Update message at offset 17: unexpected end of data (needed 1 bytes, 0 left)"
    );
}

#[test]
fn trailing_garbage_is_an_error() {
    for (bytes, expected) in fixtures() {
        let mut longer = bytes.to_vec();
        longer.push(0);
        let e = err(longer);
        assert_eq!(e.problem, DecodeProblem::TrailingBytes(1));
        assert_eq!(e.offset, bytes.len());
        assert_eq!(e.kind, expected.kind());
    }
}

#[test]
fn invalid_utf8_name_is_an_error() {
    let bytes = Enc::tag(b'R')
        .u32(1)
        .str("public")
        .raw(&[b'o', 0xff, 0xfe])
        .u8(0)
        .u8(b'd')
        .u16(0)
        .bytes();
    let e = err(bytes);
    assert_eq!(e.kind, MessageKind::Relation);
    assert_eq!(e.offset, 12);
    assert!(matches!(e.problem, DecodeProblem::InvalidUtf8(_)));
    assert!(e.to_string().contains("not valid UTF-8"), "{e}");

    let column = Enc::tag(b'R')
        .u32(1)
        .str("s")
        .str("t")
        .u8(b'd')
        .u16(1)
        .u8(0)
        .raw(&[0xc3])
        .u8(0)
        .u32(23)
        .i32(-1)
        .bytes();
    assert!(matches!(err(column).problem, DecodeProblem::InvalidUtf8(_)));
    let prefix = Enc::tag(b'M')
        .u8(0)
        .u64(1)
        .raw(&[0x80])
        .u8(0)
        .i32(0)
        .bytes();
    assert!(matches!(err(prefix).problem, DecodeProblem::InvalidUtf8(_)));
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    let insert = Enc::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(u16::MAX)
        .u8(b'n')
        .bytes();
    let e = err(insert);
    assert_eq!(e.offset, 6);
    assert_eq!(
        e.problem,
        DecodeProblem::CountTooLarge {
            count: 65_535,
            remaining: 1,
        }
    );

    let relation = Enc::tag(b'R')
        .u32(1)
        .str("s")
        .str("t")
        .u8(b'f')
        .u16(u16::MAX)
        .u8(1)
        .str("a")
        .u32(23)
        .i32(-1)
        .bytes();
    assert!(matches!(
        err(relation).problem,
        DecodeProblem::CountTooLarge { count: 65_535, .. }
    ));

    let truncate = Enc::tag(b'T').u32(u32::MAX).u8(0).u32(1).bytes();
    assert!(matches!(
        err(truncate).problem,
        DecodeProblem::CountTooLarge { .. }
    ));
}

#[test]
fn lengths_must_fit_and_not_be_negative() {
    let negative = Enc::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(1)
        .u8(b't')
        .i32(-1)
        .bytes();
    let e = err(negative);
    assert_eq!(e.problem, DecodeProblem::NegativeLength(-1));
    assert_eq!(e.offset, 9);

    let huge = Enc::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(1)
        .u8(b'b')
        .i32(i32::MAX)
        .raw(b"xy")
        .bytes();
    assert!(matches!(
        err(huge).problem,
        DecodeProblem::UnexpectedEnd { .. }
    ));

    let message = Enc::tag(b'M').u8(1).u64(1).str("p").i32(-7).bytes();
    assert_eq!(err(message).problem, DecodeProblem::NegativeLength(-7));
}

#[test]
fn bad_markers_and_kinds_are_errors() {
    let insert = Enc::tag(b'I').u32(1).u8(b'K').tuple(&[]).bytes();
    assert!(matches!(
        err(insert).problem,
        DecodeProblem::UnexpectedTupleMarker { found: b'K', .. }
    ));
    let update = Enc::tag(b'U')
        .u32(1)
        .u8(b'K')
        .tuple(&[])
        .u8(b'O')
        .tuple(&[])
        .bytes();
    let e = err(update);
    assert_eq!(e.offset, 8);
    assert!(matches!(
        e.problem,
        DecodeProblem::UnexpectedTupleMarker { found: b'O', .. }
    ));
    let delete = Enc::tag(b'D').u32(1).u8(b'N').tuple(&[]).bytes();
    assert!(matches!(
        err(delete).problem,
        DecodeProblem::UnexpectedTupleMarker { found: b'N', .. }
    ));
    let kind = Enc::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'x').bytes();
    let e = err(kind);
    assert_eq!(e.problem, DecodeProblem::UnknownValueKind(b'x'));
    assert_eq!(e.offset, 8);
    let identity = Enc::tag(b'R')
        .u32(1)
        .str("s")
        .str("t")
        .u8(b'x')
        .u16(0)
        .bytes();
    let e = err(identity);
    assert_eq!(e.problem, DecodeProblem::UnknownReplicaIdentity(b'x'));
    assert_eq!(e.offset, 9);
}

#[test]
fn string_without_nul_is_an_error() {
    let e = err(Enc::tag(b'O').u64(1).raw(b"name").bytes());
    assert_eq!(e.problem, DecodeProblem::UnterminatedString);
    assert_eq!(e.offset, 9);
}

#[test]
fn pg_epoch_conversion() {
    assert_eq!(pg_epoch_micros_to_unix_micros(0), 946_684_800_000_000);
    assert_eq!(pg_epoch_micros_to_unix_micros(-946_684_800_000_000), 0);
    assert_eq!(pg_epoch_micros_to_unix_micros(i64::MAX), i64::MAX);
    assert_eq!(
        pg_epoch_micros_to_unix_micros(i64::MIN),
        i64::MIN + 946_684_800_000_000
    );
}

#[test]
fn decodes_every_stream_fixture() {
    for f in stream_fixtures() {
        let mut decoder = decoder_in(f.in_stream);
        let decoded = decoder.decode(f.bytes.clone());
        assert_eq!(decoded.as_ref(), Ok(&f.expected), "bytes {:?}", f.bytes);
        assert_eq!(
            decoder.in_stream(),
            in_stream_after(&f.expected.message, f.in_stream),
            "{:?}",
            f.expected
        );
        if !f.in_stream {
            // `decode` decodes a message outside any block.
            assert_eq!(decode(f.bytes), Ok(f.expected.message));
        }
    }
}

#[test]
fn protocol_1_fixtures_decode_the_same_through_a_decoder() {
    for (bytes, expected) in fixtures() {
        let mut decoder = Decoder::new();
        assert_eq!(
            decoder.decode(bytes),
            Ok(Decoded {
                message: expected,
                xid: None,
            })
        );
        assert!(!decoder.in_stream());
    }
}

#[test]
fn a_change_carries_its_xid_only_inside_a_block() {
    let row = [text("42"), TupleValue::Null];
    let plain = Enc::tag(b'I').u32(16_400).u8(b'N').tuple(&row).bytes();
    let streamed = Enc::tag(b'I')
        .u32(901)
        .u32(16_400)
        .u8(b'N')
        .tuple(&row)
        .bytes();
    let insert = LogicalMessage::Insert(Insert {
        relation_id: 16_400,
        new: row.to_vec(),
    });

    assert_eq!(decode(plain.clone()), Ok(insert.clone()));
    let mut decoder = stream_block();
    assert_eq!(
        decoder.decode(streamed.clone()),
        Ok(Decoded {
            message: insert.clone(),
            xid: Some(901),
        })
    );
    assert!(decoder.in_stream());

    // Read in the other state, the bytes do not mean the same change.
    let e = decoder.decode(plain).expect_err("no xid inside a block");
    assert_eq!(e.kind, MessageKind::Insert);
    assert_eq!(e.offset, 9);
    assert!(
        matches!(
            e.problem,
            DecodeProblem::UnexpectedTupleMarker { found: 0, .. }
        ),
        "{e}"
    );
    assert!(decoder.in_stream());
    assert!(decode(streamed).is_err());

    // Every change fixture, with its xid, means something else between blocks.
    for f in stream_fixtures() {
        if f.expected.xid.is_some() {
            assert_ne!(
                decode(f.bytes.clone()),
                Ok(f.expected.message.clone()),
                "bytes {:?}",
                f.bytes
            );
        }
    }
}

#[test]
fn offsets_inside_a_block_count_the_xid() {
    // Tag (1) + xid (4) + relation id (4) = the marker at 9.
    let bytes = Enc::tag(b'D').u32(901).u32(1).u8(b'N').tuple(&[]).bytes();
    let e = stream_block().decode(bytes).expect_err("bad marker");
    assert_eq!(e.offset, 9);
    assert!(matches!(
        e.problem,
        DecodeProblem::UnexpectedTupleMarker { found: b'N', .. }
    ));
    let truncate = Enc::tag(b'T').u32(901).u32(u32::MAX).u8(0).bytes();
    let e = stream_block().decode(truncate).expect_err("huge count");
    assert_eq!(e.offset, 5);
    assert!(matches!(e.problem, DecodeProblem::CountTooLarge { .. }));
}

#[test]
fn stream_messages_out_of_place_are_errors() {
    let stop = Enc::tag(b'E').bytes();
    let mut decoder = Decoder::new();
    let e = decoder.decode(stop.clone()).expect_err("no block to stop");
    assert_eq!(e.kind, MessageKind::StreamStop);
    assert_eq!(e.offset, 0);
    assert_eq!(
        e.problem,
        DecodeProblem::UnexpectedStreamState { in_stream: false }
    );
    assert_eq!(
        e.to_string(),
        "malformed pgoutput Stream Stop message at offset 0: not allowed outside a stream block"
    );
    assert!(!decoder.in_stream());
    assert_eq!(err(stop), e);

    let between_blocks_only = [
        (
            MessageKind::StreamStart,
            Enc::tag(b'S').u32(901).u8(0).bytes(),
        ),
        (
            MessageKind::StreamCommit,
            Enc::tag(b'c').u32(900).u8(0).u64(1).u64(2).i64(3).bytes(),
        ),
        (
            MessageKind::StreamAbort,
            Enc::tag(b'A').u32(900).u32(900).bytes(),
        ),
        (
            MessageKind::Begin,
            Enc::tag(b'B').u64(1).i64(2).u32(901).bytes(),
        ),
        (
            MessageKind::Commit,
            Enc::tag(b'C').u8(0).u64(1).u64(2).i64(3).bytes(),
        ),
    ];
    let mut decoder = stream_block();
    for (kind, bytes) in between_blocks_only {
        // Fine between blocks, whatever the body.
        assert_eq!(
            Decoder::new()
                .decode(bytes.clone())
                .map(|d| d.message.kind()),
            Ok(kind)
        );
        for input in [bytes.clone(), bytes.slice(..1)] {
            let e = decoder.decode(input).expect_err("not inside a block");
            assert_eq!(e.kind, kind);
            assert_eq!(e.offset, 0);
            assert_eq!(
                e.problem,
                DecodeProblem::UnexpectedStreamState { in_stream: true }
            );
            assert!(decoder.in_stream(), "a failed decode closed the block");
        }
    }
    let e = decoder
        .decode(Enc::tag(b'S').u32(901).u8(1).bytes())
        .expect_err("blocks do not nest");
    assert_eq!(
        e.to_string(),
        "malformed pgoutput Stream Start message at offset 0: not allowed inside a stream block"
    );
}

#[test]
fn a_failed_decode_leaves_the_state_unchanged() {
    let mut decoder = Decoder::new();
    let e = decoder
        .decode(Enc::tag(b'S').u32(901).bytes())
        .expect_err("no first-segment flag");
    assert_eq!(e.kind, MessageKind::StreamStart);
    assert_eq!(e.offset, 5);
    assert!(!decoder.in_stream());
    let e = decoder
        .decode(Enc::tag(b'S').u32(901).u8(1).u8(0).bytes())
        .expect_err("trailing byte");
    assert_eq!(e.problem, DecodeProblem::TrailingBytes(1));
    assert!(!decoder.in_stream());

    let mut decoder = stream_block();
    let e = decoder
        .decode(Enc::tag(b'E').u8(0).bytes())
        .expect_err("trailing byte");
    assert_eq!(e.kind, MessageKind::StreamStop);
    assert_eq!(e.offset, 1);
    assert_eq!(e.problem, DecodeProblem::TrailingBytes(1));
    assert!(decoder.in_stream());
    assert!(decoder.decode(Enc::tag(b'I').u32(901).bytes()).is_err());
    assert!(decoder.in_stream());
    assert!(decoder.decode(Bytes::new()).is_err());
    assert!(decoder.in_stream());
}

#[test]
fn a_session_streams_blocks_between_whole_transactions() {
    let row = [text("1")];
    // (bytes, expected message, its xid, whether a block is open after it)
    let session = [
        (
            Enc::tag(b'S').u32(900).u8(1).bytes(),
            LogicalMessage::StreamStart(StreamStart {
                xid: 900,
                first_segment: true,
            }),
            None,
            true,
        ),
        (
            Enc::tag(b'O').u64(5).str("node_a").bytes(),
            LogicalMessage::Origin(Origin {
                commit_lsn: Lsn(5),
                name: "node_a".into(),
            }),
            None,
            true,
        ),
        (
            Enc::tag(b'R')
                .u32(900)
                .u32(16_400)
                .str("public")
                .str("t")
                .u8(b'd')
                .u16(0)
                .bytes(),
            LogicalMessage::Relation(Relation {
                id: 16_400,
                namespace: "public".into(),
                name: "t".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: Vec::new(),
            }),
            Some(900),
            true,
        ),
        (
            Enc::tag(b'I')
                .u32(901)
                .u32(16_400)
                .u8(b'N')
                .tuple(&row)
                .bytes(),
            LogicalMessage::Insert(Insert {
                relation_id: 16_400,
                new: row.to_vec(),
            }),
            Some(901),
            true,
        ),
        (
            Enc::tag(b'E').bytes(),
            LogicalMessage::StreamStop,
            None,
            false,
        ),
        // A small transaction commits whole between the blocks.
        (
            Enc::tag(b'B').u64(10).i64(11).u32(950).bytes(),
            LogicalMessage::Begin(Begin {
                final_lsn: Lsn(10),
                commit_ts: 11,
                xid: 950,
            }),
            None,
            false,
        ),
        (
            Enc::tag(b'I').u32(16_400).u8(b'N').tuple(&row).bytes(),
            LogicalMessage::Insert(Insert {
                relation_id: 16_400,
                new: row.to_vec(),
            }),
            None,
            false,
        ),
        (
            Enc::tag(b'C').u8(0).u64(10).u64(12).i64(11).bytes(),
            LogicalMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(12),
                commit_ts: 11,
            }),
            None,
            false,
        ),
        (
            Enc::tag(b'S').u32(900).u8(0).bytes(),
            LogicalMessage::StreamStart(StreamStart {
                xid: 900,
                first_segment: false,
            }),
            None,
            true,
        ),
        (
            Enc::tag(b'D')
                .u32(901)
                .u32(16_400)
                .u8(b'K')
                .tuple(&row)
                .bytes(),
            LogicalMessage::Delete(Delete {
                relation_id: 16_400,
                old: OldTuple::Key(row.to_vec()),
            }),
            Some(901),
            true,
        ),
        (
            Enc::tag(b'E').bytes(),
            LogicalMessage::StreamStop,
            None,
            false,
        ),
        (
            Enc::tag(b'A').u32(900).u32(901).bytes(),
            LogicalMessage::StreamAbort(StreamAbort {
                xid: 900,
                subxid: 901,
            }),
            None,
            false,
        ),
        (
            Enc::tag(b'c')
                .u32(900)
                .u8(0)
                .u64(20)
                .u64(21)
                .i64(22)
                .bytes(),
            LogicalMessage::StreamCommit(StreamCommit {
                xid: 900,
                flags: 0,
                commit_lsn: Lsn(20),
                end_lsn: Lsn(21),
                commit_ts: 22,
            }),
            None,
            false,
        ),
    ];
    let mut decoder = Decoder::new();
    for (bytes, message, xid, open) in session {
        assert_eq!(
            decoder.decode(bytes),
            Ok(Decoded {
                message: message.clone(),
                xid,
            })
        );
        assert_eq!(decoder.in_stream(), open, "after {message:?}");
    }
}

#[test]
fn every_truncation_of_a_stream_fixture_is_an_error() {
    for f in stream_fixtures() {
        for len in 0..f.bytes.len() {
            let mut decoder = decoder_in(f.in_stream);
            let e = decoder
                .decode(f.bytes.slice(..len))
                .expect_err("a strict prefix must not decode");
            assert!(
                matches!(
                    e.problem,
                    DecodeProblem::UnexpectedEnd { .. }
                        | DecodeProblem::UnterminatedString
                        | DecodeProblem::CountTooLarge { .. }
                ),
                "prefix {len} of {:?}: {e}",
                f.expected
            );
            assert!(e.offset <= len, "offset past the data: {e}");
            if len > 0 {
                assert_eq!(e.kind, f.expected.message.kind());
            }
            assert_eq!(decoder.in_stream(), f.in_stream);
        }
    }
}

#[test]
fn trailing_garbage_after_a_stream_fixture_is_an_error() {
    for f in stream_fixtures() {
        let mut longer = f.bytes.to_vec();
        longer.push(0);
        let mut decoder = decoder_in(f.in_stream);
        let e = decoder
            .decode(Bytes::from(longer))
            .expect_err("trailing byte");
        assert_eq!(e.problem, DecodeProblem::TrailingBytes(1));
        assert_eq!(e.offset, f.bytes.len());
        assert_eq!(e.kind, f.expected.message.kind());
        assert_eq!(decoder.in_stream(), f.in_stream);
    }
}

/// Property tests: whatever bytes arrive, [`decode`] returns a message or an error
/// that names the message kind and an offset inside the input — never a panic.
///
/// Valid messages come from strategies for every kind and a test-only encoder that
/// mirrors PostgreSQL's proto.c and records where each count and length field sits,
/// so mutations can target the fields that drive allocation and slicing.
mod properties {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::pg::mutation::{Wire, mutate, mutation};

    /// Every message tag of protocols 1 and 2.
    const TAGS: &[u8] = b"BCORYIUDTMSEcA";

    /// The pgoutput fields of a test encoder.
    trait PgoutputWire {
        fn str(&mut self, s: &str);
        fn value(&mut self, v: &[u8]);
        fn tuple(&mut self, values: &[TupleValue]);
        fn old(&mut self, old: &OldTuple);
    }

    impl PgoutputWire for Wire {
        fn str(&mut self, s: &str) {
            self.put(s.as_bytes());
            self.byte(0);
        }
        fn value(&mut self, v: &[u8]) {
            let len = i32::try_from(v.len()).expect("test value size");
            self.size(&len.to_be_bytes());
            self.put(v);
        }
        fn tuple(&mut self, values: &[TupleValue]) {
            let count = u16::try_from(values.len()).expect("test tuple width");
            self.size(&count.to_be_bytes());
            for value in values {
                match value {
                    TupleValue::Null => self.byte(b'n'),
                    TupleValue::UnchangedToast => self.byte(b'u'),
                    TupleValue::Text(v) => {
                        self.byte(b't');
                        self.value(v);
                    }
                    TupleValue::Binary(v) => {
                        self.byte(b'b');
                        self.value(v);
                    }
                }
            }
        }
        fn old(&mut self, old: &OldTuple) {
            match old {
                OldTuple::Key(_) => self.byte(b'K'),
                OldTuple::Full(_) => self.byte(b'O'),
            }
            self.tuple(old.values());
        }
    }

    /// The tag of a message of `kind`; the inverse of [`kind_of`].
    fn tag_of(kind: MessageKind) -> u8 {
        match kind {
            MessageKind::Begin => b'B',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
            MessageKind::Message => b'M',
            MessageKind::StreamStart => b'S',
            MessageKind::StreamStop => b'E',
            MessageKind::StreamCommit => b'c',
            MessageKind::StreamAbort => b'A',
            MessageKind::Unknown => 0,
        }
    }

    /// Whether a message with this tag carries an xid inside a stream block.
    fn carries_xid(tag: u8) -> bool {
        b"RYIUDTM".contains(&tag)
    }

    /// Whether a message of `kind` may come inside a stream block (`in_stream`) or
    /// between blocks: Stream Stop only inside, Begin, Commit, Stream Start, Commit and
    /// Abort only between, the rest anywhere.
    fn allowed_in(kind: MessageKind, in_stream: bool) -> bool {
        match kind {
            MessageKind::StreamStop => in_stream,
            MessageKind::Begin
            | MessageKind::Commit
            | MessageKind::StreamStart
            | MessageKind::StreamCommit
            | MessageKind::StreamAbort => !in_stream,
            _ => true,
        }
    }

    /// The wire form of `message`, as PostgreSQL's proto.c writes it, with `xid`
    /// after the tag when it is sent inside a stream block.
    fn encode(message: &LogicalMessage, xid: Option<u32>) -> Wire {
        let mut w = Wire::default();
        w.byte(tag_of(message.kind()));
        if let Some(xid) = xid {
            w.put(&xid.to_be_bytes());
        }
        match message {
            LogicalMessage::Begin(m) => {
                w.put(&m.final_lsn.0.to_be_bytes());
                w.put(&m.commit_ts.to_be_bytes());
                w.put(&m.xid.to_be_bytes());
            }
            LogicalMessage::Commit(m) => {
                w.byte(m.flags);
                w.put(&m.commit_lsn.0.to_be_bytes());
                w.put(&m.end_lsn.0.to_be_bytes());
                w.put(&m.commit_ts.to_be_bytes());
            }
            LogicalMessage::Origin(m) => {
                w.put(&m.commit_lsn.0.to_be_bytes());
                w.str(&m.name);
            }
            LogicalMessage::Relation(m) => {
                w.put(&m.id.to_be_bytes());
                w.str(&m.namespace);
                w.str(&m.name);
                w.byte(m.replica_identity.as_byte());
                let count = u16::try_from(m.columns.len()).expect("test column count");
                w.size(&count.to_be_bytes());
                for column in &m.columns {
                    w.byte(u8::from(column.is_key));
                    w.str(&column.name);
                    w.put(&column.type_oid.to_be_bytes());
                    w.put(&column.type_modifier.to_be_bytes());
                }
            }
            LogicalMessage::Type(m) => {
                w.put(&m.id.to_be_bytes());
                w.str(&m.namespace);
                w.str(&m.name);
            }
            LogicalMessage::Insert(m) => {
                w.put(&m.relation_id.to_be_bytes());
                w.byte(b'N');
                w.tuple(&m.new);
            }
            LogicalMessage::Update(m) => {
                w.put(&m.relation_id.to_be_bytes());
                if let Some(old) = &m.old {
                    w.old(old);
                }
                w.byte(b'N');
                w.tuple(&m.new);
            }
            LogicalMessage::Delete(m) => {
                w.put(&m.relation_id.to_be_bytes());
                w.old(&m.old);
            }
            LogicalMessage::Truncate(m) => {
                let count = u32::try_from(m.relation_ids.len()).expect("test count");
                w.size(&count.to_be_bytes());
                w.byte(u8::from(m.cascade) | u8::from(m.restart_identity) << 1);
                for id in &m.relation_ids {
                    w.put(&id.to_be_bytes());
                }
            }
            LogicalMessage::Message(m) => {
                w.byte(u8::from(m.transactional));
                w.put(&m.lsn.0.to_be_bytes());
                w.str(&m.prefix);
                w.value(&m.content);
            }
            LogicalMessage::StreamStart(m) => {
                w.put(&m.xid.to_be_bytes());
                w.byte(u8::from(m.first_segment));
            }
            LogicalMessage::StreamStop => {}
            LogicalMessage::StreamCommit(m) => {
                w.put(&m.xid.to_be_bytes());
                w.byte(m.flags);
                w.put(&m.commit_lsn.0.to_be_bytes());
                w.put(&m.end_lsn.0.to_be_bytes());
                w.put(&m.commit_ts.to_be_bytes());
            }
            LogicalMessage::StreamAbort(m) => {
                w.put(&m.xid.to_be_bytes());
                w.put(&m.subxid.to_be_bytes());
            }
        }
        w
    }

    /// The kind a tag announces; an independent copy of the decoder's table.
    fn kind_of(tag: u8) -> MessageKind {
        match tag {
            b'B' => MessageKind::Begin,
            b'C' => MessageKind::Commit,
            b'O' => MessageKind::Origin,
            b'R' => MessageKind::Relation,
            b'Y' => MessageKind::Type,
            b'I' => MessageKind::Insert,
            b'U' => MessageKind::Update,
            b'D' => MessageKind::Delete,
            b'T' => MessageKind::Truncate,
            b'M' => MessageKind::Message,
            b'S' => MessageKind::StreamStart,
            b'E' => MessageKind::StreamStop,
            b'c' => MessageKind::StreamCommit,
            b'A' => MessageKind::StreamAbort,
            _ => MessageKind::Unknown,
        }
    }

    #[test]
    fn tag_tables_agree() {
        for tag in 0..=u8::MAX {
            let kind = kind_of(tag);
            assert_eq!(kind != MessageKind::Unknown, TAGS.contains(&tag), "{tag}");
            if kind != MessageKind::Unknown {
                assert_eq!(tag_of(kind), tag);
            }
        }
    }

    /// Decodes `input` with a [`Decoder`] inside a stream block or not, and checks
    /// what every outcome must satisfy: a message of the kind its tag announces, with
    /// an xid exactly when inside a block its kind carries one, and the block opened
    /// or closed as a Stream Start or Stop says; or an error of that kind whose offset
    /// lies within the input and whose text names the kind and the offset, with the
    /// state unchanged and a misplaced message reported as such. Outside a block,
    /// [`decode`] agrees.
    fn decode_checked(
        input: &[u8],
        in_stream: bool,
    ) -> Result<Result<Decoded, DecodeError>, TestCaseError> {
        let tag = input.first().copied();
        let kind = tag.map_or(MessageKind::Unknown, kind_of);
        let mut decoder = Decoder { in_stream };
        let result = decoder.decode(Bytes::copy_from_slice(input));
        match &result {
            Ok(decoded) => {
                prop_assert_eq!(decoded.message.kind(), kind);
                prop_assert!(allowed_in(kind, in_stream), "{:?} decoded", decoded);
                prop_assert_eq!(
                    decoded.xid.is_some(),
                    in_stream && tag.is_some_and(carries_xid),
                    "{:?}",
                    decoded
                );
                let open = match kind {
                    MessageKind::StreamStart => true,
                    MessageKind::StreamStop => false,
                    _ => in_stream,
                };
                prop_assert_eq!(decoder.in_stream(), open);
            }
            Err(e) => {
                prop_assert!(
                    e.offset <= input.len(),
                    "offset past the {} input bytes: {e}",
                    input.len()
                );
                prop_assert_eq!(e.kind, kind, "{}", e);
                let shown = e.to_string();
                let named = format!("malformed pgoutput {kind} at offset {}: ", e.offset);
                prop_assert!(shown.starts_with(&named), "{shown}");
                prop_assert_eq!(decoder.in_stream(), in_stream, "{}", e);
                // Out of place is the first thing checked after the tag, and only then.
                let misplaced = kind != MessageKind::Unknown && !allowed_in(kind, in_stream);
                prop_assert_eq!(
                    e.problem == DecodeProblem::UnexpectedStreamState { in_stream },
                    misplaced,
                    "{}",
                    e
                );
            }
        }
        if !in_stream {
            prop_assert_eq!(
                decode(Bytes::copy_from_slice(input)),
                result.clone().map(|decoded| decoded.message)
            );
        }
        Ok(result)
    }

    /// Names and prefixes: any UTF-8 but NUL, which would end the string early.
    fn name() -> impl Strategy<Value = String> {
        "[^\\x00]{0,10}"
    }

    fn lsn() -> impl Strategy<Value = Lsn> {
        any::<u64>().prop_map(Lsn)
    }

    fn payload() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
    }

    fn tuple() -> impl Strategy<Value = Vec<TupleValue>> {
        let value = prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            payload().prop_map(TupleValue::Text),
            payload().prop_map(TupleValue::Binary),
        ];
        prop::collection::vec(value, 0..6)
    }

    fn old_tuple() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            tuple().prop_map(OldTuple::Key),
            tuple().prop_map(OldTuple::Full)
        ]
    }

    fn relation() -> impl Strategy<Value = Relation> {
        let identity = prop::sample::select(vec![
            ReplicaIdentity::Default,
            ReplicaIdentity::Nothing,
            ReplicaIdentity::Full,
            ReplicaIdentity::Index,
        ]);
        let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
            |(is_key, name, type_oid, type_modifier)| RelationColumn {
                is_key,
                name,
                type_oid,
                type_modifier,
            },
        );
        (
            any::<u32>(),
            name(),
            name(),
            identity,
            prop::collection::vec(column, 0..5),
        )
            .prop_map(
                |(id, namespace, name, replica_identity, columns)| Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                },
            )
    }

    fn begin() -> impl Strategy<Value = Begin> {
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_ts, xid)| Begin {
            final_lsn,
            commit_ts,
            xid,
        })
    }

    fn commit() -> impl Strategy<Value = Commit> {
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_ts)| Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts,
            },
        )
    }

    fn stream_start() -> impl Strategy<Value = StreamStart> {
        (any::<u32>(), any::<bool>())
            .prop_map(|(xid, first_segment)| StreamStart { xid, first_segment })
    }

    /// A Stream Commit or Stream Abort.
    fn stream_end() -> impl Strategy<Value = LogicalMessage> {
        prop_oneof![
            (any::<u32>(), any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
                |(xid, flags, commit_lsn, end_lsn, commit_ts)| {
                    LogicalMessage::StreamCommit(StreamCommit {
                        xid,
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_ts,
                    })
                }
            ),
            (any::<u32>(), any::<u32>()).prop_map(|(xid, subxid)| {
                LogicalMessage::StreamAbort(StreamAbort { xid, subxid })
            }),
        ]
    }

    /// Any valid message that may come inside a stream block as well as between
    /// them: the changes, and the metadata that comes with them.
    fn change() -> impl Strategy<Value = LogicalMessage> {
        prop_oneof![
            (lsn(), name()).prop_map(|(commit_lsn, name)| {
                LogicalMessage::Origin(Origin { commit_lsn, name })
            }),
            relation().prop_map(LogicalMessage::Relation),
            (any::<u32>(), name(), name()).prop_map(|(id, namespace, name)| {
                LogicalMessage::Type(TypeMessage {
                    id,
                    namespace,
                    name,
                })
            }),
            (any::<u32>(), tuple()).prop_map(|(relation_id, new)| {
                LogicalMessage::Insert(Insert { relation_id, new })
            }),
            (any::<u32>(), prop::option::of(old_tuple()), tuple()).prop_map(
                |(relation_id, old, new)| {
                    LogicalMessage::Update(Update {
                        relation_id,
                        old,
                        new,
                    })
                }
            ),
            (any::<u32>(), old_tuple()).prop_map(|(relation_id, old)| {
                LogicalMessage::Delete(Delete { relation_id, old })
            }),
            (
                any::<bool>(),
                any::<bool>(),
                prop::collection::vec(any::<u32>(), 0..6)
            )
                .prop_map(|(cascade, restart_identity, relation_ids)| {
                    LogicalMessage::Truncate(Truncate {
                        cascade,
                        restart_identity,
                        relation_ids,
                    })
                }),
            (any::<bool>(), lsn(), name(), payload()).prop_map(
                |(transactional, lsn, prefix, content)| {
                    LogicalMessage::Message(LogicalDecodingMessage {
                        transactional,
                        lsn,
                        prefix,
                        content,
                    })
                }
            ),
        ]
    }

    /// Any valid message of any kind.
    fn message() -> impl Strategy<Value = LogicalMessage> {
        prop_oneof![
            8 => change(),
            1 => begin().prop_map(LogicalMessage::Begin),
            1 => commit().prop_map(LogicalMessage::Commit),
            1 => stream_start().prop_map(LogicalMessage::StreamStart),
            1 => Just(LogicalMessage::StreamStop),
            2 => stream_end(),
        ]
    }

    /// A valid message where a session may send it.
    #[derive(Debug, Clone)]
    struct Placed {
        /// Whether a stream block is open when it arrives.
        in_stream: bool,
        message: LogicalMessage,
        /// The xid it carries inside a block, if its kind carries one.
        xid: Option<u32>,
    }

    impl Placed {
        fn wire(&self) -> Wire {
            encode(&self.message, self.xid)
        }

        fn decoded(&self) -> Decoded {
            Decoded {
                message: self.message.clone(),
                xid: self.xid,
            }
        }
    }

    /// Any valid message, inside a stream block or between blocks as its kind allows.
    fn placed() -> impl Strategy<Value = Placed> {
        (message(), any::<bool>(), any::<u32>()).prop_map(|(message, inside, xid)| {
            let kind = message.kind();
            let in_stream = match kind {
                MessageKind::StreamStop => true,
                MessageKind::Begin
                | MessageKind::Commit
                | MessageKind::StreamStart
                | MessageKind::StreamCommit
                | MessageKind::StreamAbort => false,
                _ => inside,
            };
            let xid = (in_stream && carries_xid(tag_of(kind))).then_some(xid);
            Placed {
                in_stream,
                message,
                xid,
            }
        })
    }

    /// A session's messages in order, as pgoutput sends them under protocol 2:
    /// whole transactions (Begin, changes, Commit), stream blocks (Stream Start,
    /// changes each with its subtransaction's xid, Stream Stop) and the Stream Commits
    /// and Aborts that end streamed transactions, in any order.
    fn session() -> impl Strategy<Value = Vec<Placed>> {
        let between = |message| Placed {
            in_stream: false,
            message,
            xid: None,
        };
        let whole = (begin(), prop::collection::vec(change(), 0..4), commit()).prop_map(
            move |(begin, changes, commit)| {
                let mut out = vec![between(LogicalMessage::Begin(begin))];
                out.extend(changes.into_iter().map(between));
                out.push(between(LogicalMessage::Commit(commit)));
                out
            },
        );
        let block = (
            stream_start(),
            prop::collection::vec((change(), any::<u32>()), 0..4),
        )
            .prop_map(move |(start, changes)| {
                let mut out = vec![between(LogicalMessage::StreamStart(start))];
                for (message, subxid) in changes {
                    let xid = carries_xid(tag_of(message.kind())).then_some(subxid);
                    out.push(Placed {
                        in_stream: true,
                        message,
                        xid,
                    });
                }
                out.push(Placed {
                    in_stream: true,
                    message: LogicalMessage::StreamStop,
                    xid: None,
                });
                out
            });
        let end = stream_end().prop_map(move |message| vec![between(message)]);
        prop::collection::vec(prop_oneof![1 => whole, 2 => block, 1 => end], 0..6)
            .prop_map(|units| units.into_iter().flatten().collect())
    }

    /// Bytes biased toward NULs, markers and value kinds, so that random input gets
    /// past the first field: zeros make small counts and terminate strings.
    fn protocol_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => any::<u8>(),
            2 => Just(0u8),
            1 => prop::sample::select(b"NKOntub\xff".to_vec()),
        ];
        prop::collection::vec(byte, 0..64)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_decode_or_name_kind_and_offset(
            bytes in prop::collection::vec(any::<u8>(), 0..48),
            in_stream in any::<bool>(),
        ) {
            let _ = decode_checked(&bytes, in_stream)?;
        }

        #[test]
        fn arbitrary_bodies_after_each_tag_decode_or_name_kind_and_offset(
            tag in prop::sample::select(TAGS.to_vec()),
            body in protocol_bytes(),
            in_stream in any::<bool>(),
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&body);
            let _ = decode_checked(&bytes, in_stream)?;
        }

        #[test]
        fn valid_messages_round_trip(placed in placed()) {
            let wire = placed.wire();
            prop_assert_eq!(decode_checked(&wire.bytes, placed.in_stream)?, Ok(placed.decoded()));

            // Exact: one more byte is an error at the end of the message.
            let mut longer = wire.bytes.clone();
            longer.push(0);
            let e = decode_checked(&longer, placed.in_stream)?.expect_err("trailing byte");
            prop_assert_eq!(e.problem, DecodeProblem::TrailingBytes(1));
            prop_assert_eq!(e.offset, wire.bytes.len());
        }

        #[test]
        fn every_truncation_of_a_valid_message_is_an_error(placed in placed()) {
            let bytes = placed.wire().bytes;
            for len in 0..bytes.len() {
                let prefix = bytes.get(..len).expect("a prefix");
                prop_assert!(
                    decode_checked(prefix, placed.in_stream)?.is_err(),
                    "a {len}-byte prefix of {placed:?} decoded"
                );
            }
        }

        #[test]
        fn mutated_messages_decode_or_name_kind_and_offset(
            placed in placed(),
            mutations in prop::collection::vec(mutation(), 1..4),
        ) {
            let mut bytes = placed.wire().bytes;
            for mutation in &mutations {
                mutate(&mut bytes, mutation);
            }
            let _ = decode_checked(&bytes, placed.in_stream)?;
        }

        #[test]
        fn inflated_counts_and_lengths_are_errors_at_their_field(
            placed in placed(),
            which in any::<Index>(),
            huge in 0x4000_0000u32..=0xffff_fffe,
        ) {
            // At least 2^14 items or 2^30 bytes, or a negative length: more than any
            // generated message holds either way.
            // Begin, Commit, Origin, Type and the stream messages have no count or
            // length to inflate.
            let Some((bytes, field)) = placed.wire().inflated(which, huge) else {
                return Ok(());
            };
            let e = decode_checked(&bytes, placed.in_stream)?
                .expect_err("an inflated field must not decode");
            prop_assert!(
                matches!(
                    e.problem,
                    DecodeProblem::CountTooLarge { .. }
                        | DecodeProblem::NegativeLength(_)
                        | DecodeProblem::UnexpectedEnd { .. }
                ),
                "{e}"
            );
            // Named at the field itself, or for a length at the value it announces.
            prop_assert!(
                e.offset == field.at || e.offset == field.at + field.width,
                "field at {}, {e}",
                field.at
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn sessions_round_trip_through_one_decoder(session in session()) {
            let mut decoder = Decoder::new();
            for placed in &session {
                prop_assert_eq!(decoder.in_stream(), placed.in_stream, "before {:?}", placed);
                let bytes = Bytes::from(placed.wire().bytes);
                prop_assert_eq!(decoder.decode(bytes), Ok(placed.decoded()));
            }
            prop_assert!(!decoder.in_stream());
        }
    }
}
