//! Decoding of `pgoutput` logical replication messages, protocol versions 1 and 2.
//!
//! One `XLogData` payload from the walsender carries exactly one message; [`decode`]
//! turns those bytes into a [`LogicalMessage`], and a [`Decoder`] does the same for a
//! session's messages in order, knowing whether a stream block is open:
//!
//! ```text
//!   walsender ──CopyData('w' XLogData)──▶ replication ──payload: Bytes──▶ Decoder
//!                                                                            │
//!     Begin · Relation · Insert/Update/Delete/Truncate · Message · Commit ◀──┤
//!     Stream Start · Stream Stop · Stream Commit · Stream Abort (protocol 2) ◀┘
//! ```
//!
//! Protocol 2 (`proto_version '2', streaming 'on'`, PostgreSQL 14+) may send a large
//! transaction before it commits, in stream blocks between other transactions:
//!
//! ```text
//!   Stream Start(xid, first segment?)                 ┐
//!     Relation · Type · Origin · Insert · Update ·    │ one stream block; its changes
//!     Delete · Truncate · Message                     │ carry their (sub)transaction xid
//!   Stream Stop                                       ┘
//!   … Begin … Commit of other transactions, whole …
//!   … more stream blocks, of this xid or others …
//!   Stream Commit(xid)  or  Stream Abort(xid, subxid)
//! ```
//!
//! Inside a block, Relation, Type, Insert, Update, Delete, Truncate and Message carry an
//! Int32 xid right after the tag, so the same bytes mean different things inside and
//! outside a block: [`Decoder::decode`] reads that xid into [`Decoded::xid`], and
//! [`decode`] decodes a message outside any block. Blocks do not nest, and Begin,
//! Commit, Stream Commit and Stream Abort come only between blocks; a message out of
//! place is a [`DecodeProblem::UnexpectedStreamState`].
//!
//! Invariants:
//! - Pure and total: no I/O, no panics and no `unsafe` for any input. Every read is
//!   bounds-checked and a failure becomes a [`DecodeError`] naming the message kind,
//!   the byte offset of the offending field and what was wrong. A failed
//!   [`Decoder::decode`] leaves the decoder's state as it was.
//! - Exact: a message must be consumed to its last byte; trailing bytes are an error,
//!   because they mean this decoder and the server disagree about the format.
//! - Zero-copy values: column values and logical decoding message contents are
//!   slices of the input [`Bytes`], so a large row is never copied here.
//! - Bounded allocation: a count read from the wire is checked against the smallest
//!   size the counted items could take in the bytes that remain before anything is
//!   allocated, so a hostile count cannot cause a huge allocation.
//! - Faithful to Postgres: an unchanged TOASTed value is [`TupleValue::UnchangedToast`],
//!   never a fake NULL; the old tuple of an update or delete keeps its 'K'/'O' meaning.
//!
//! Only what PostgreSQL sends for `proto_version '1'` or `'2'` with `messages 'true'`
//! (and `streaming 'on'`) is understood; two-phase messages (protocol 3) are rejected
//! as unknown tags, and the abort LSN and timestamp that protocol 4 may add to a Stream
//! Abort are trailing bytes, since pg2lake never asks for them.

pub use crate::schema::RelationColumn;
use std::fmt;

use bytes::Bytes;

use crate::lsn::Lsn;

/// Microseconds from the Unix epoch (1970-01-01) to the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800 * 1_000_000;

/// Converts a PostgreSQL timestamp (µs since 2000-01-01 UTC) to µs since the Unix epoch.
///
/// Saturates instead of overflowing, so the infinite timestamps (`i64::MIN`/`MAX`)
/// stay at the ends of the range.
pub fn pg_epoch_micros_to_unix_micros(ts: i64) -> i64 {
    ts.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// Start of a transaction ('B').
    Begin(Begin),
    /// End of a transaction ('C').
    Commit(Commit),
    /// The replication origin of the transaction ('O').
    Origin(Origin),
    /// Description of a table's columns, sent before its first change ('R').
    Relation(Relation),
    /// Name of a non-built-in data type used by a relation ('Y').
    Type(TypeMessage),
    /// A row was inserted ('I').
    Insert(Insert),
    /// A row was updated ('U').
    Update(Update),
    /// A row was deleted ('D').
    Delete(Delete),
    /// One or more tables were truncated ('T').
    Truncate(Truncate),
    /// A message from `pg_logical_emit_message` ('M').
    Message(LogicalDecodingMessage),
    /// Start of a stream block of an in-progress transaction ('S', protocol 2).
    StreamStart(StreamStart),
    /// End of the current stream block ('E', protocol 2).
    StreamStop,
    /// A streamed transaction committed ('c', protocol 2).
    StreamCommit(StreamCommit),
    /// A streamed transaction or one of its subtransactions aborted ('A', protocol 2).
    StreamAbort(StreamAbort),
}

impl LogicalMessage {
    /// The kind of this message, for logs and errors.
    pub fn kind(&self) -> MessageKind {
        match self {
            LogicalMessage::Begin(_) => MessageKind::Begin,
            LogicalMessage::Commit(_) => MessageKind::Commit,
            LogicalMessage::Origin(_) => MessageKind::Origin,
            LogicalMessage::Relation(_) => MessageKind::Relation,
            LogicalMessage::Type(_) => MessageKind::Type,
            LogicalMessage::Insert(_) => MessageKind::Insert,
            LogicalMessage::Update(_) => MessageKind::Update,
            LogicalMessage::Delete(_) => MessageKind::Delete,
            LogicalMessage::Truncate(_) => MessageKind::Truncate,
            LogicalMessage::Message(_) => MessageKind::Message,
            LogicalMessage::StreamStart(_) => MessageKind::StreamStart,
            LogicalMessage::StreamStop => MessageKind::StreamStop,
            LogicalMessage::StreamCommit(_) => MessageKind::StreamCommit,
            LogicalMessage::StreamAbort(_) => MessageKind::StreamAbort,
        }
    }
}

/// A decoded message and, inside a stream block, the (sub)transaction id it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The message.
    pub message: LogicalMessage,
    /// The xid a Relation, Type, Insert, Update, Delete, Truncate or Message carried
    /// inside a stream block: that of the (sub)transaction the change belongs to.
    /// `None` outside a block and for messages that carry no such field (the stream
    /// messages keep their own xid in their body).
    pub xid: Option<u32>,
}

/// Start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 UTC, as on the wire.
    pub commit_ts: i64,
    /// The transaction id.
    pub xid: u32,
}

/// End of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags; unused by PostgreSQL (always 0) and kept only for completeness.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: the position to confirm once applied.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 UTC, as on the wire.
    pub commit_ts: i64,
}

/// The replication origin a transaction came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: String,
}

/// A table's layout as the publisher sees it; later tuples are positional against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation OID, used by later change messages to refer to this table.
    pub id: u32,
    /// The schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// The table name.
    pub name: String,
    /// The table's `REPLICA IDENTITY` setting.
    pub replica_identity: ReplicaIdentity,
    /// The published columns in tuple order (dropped and generated columns omitted).
    pub columns: Vec<RelationColumn>,
}

/// A table's `REPLICA IDENTITY` (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': the primary key, if any.
    Default,
    /// 'n': no old values are logged.
    Nothing,
    /// 'f': every column of the old row is logged.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The identity from its `relreplident` byte, or `None` if unknown.
    pub fn from_byte(byte: u8) -> Option<ReplicaIdentity> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The `relreplident` byte for this identity.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// Schema and name of a data type, sent before a relation that uses a non-built-in type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// The type OID.
    pub id: u32,
    /// The type's schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// The type name.
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// 'n': SQL NULL.
    Null,
    /// 'u': an unchanged TOASTed value that was not sent; the old value still holds.
    UnchangedToast,
    /// 't': the value in text format (a slice of the received message).
    Text(Bytes),
    /// 'b': the value in binary format (a slice of the received message).
    Binary(Bytes),
}

/// A row was inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The relation OID, as announced by a previous [`Relation`].
    pub relation_id: u32,
    /// The new row, positional against the relation's columns.
    pub new: Vec<TupleValue>,
}

/// The old row sent with an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': the replica identity key; non-key columns are sent as NULL.
    Key(Vec<TupleValue>),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(Vec<TupleValue>),
}

impl OldTuple {
    /// The values, whichever kind of old tuple this is.
    pub fn values(&self) -> &[TupleValue] {
        match self {
            OldTuple::Key(values) | OldTuple::Full(values) => values,
        }
    }
}

/// A row was updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The relation OID, as announced by a previous [`Relation`].
    pub relation_id: u32,
    /// The old key ('K', only when the key changed) or old row ('O', under FULL).
    pub old: Option<OldTuple>,
    /// The new row; may contain [`TupleValue::UnchangedToast`].
    pub new: Vec<TupleValue>,
}

/// A row was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The relation OID, as announced by a previous [`Relation`].
    pub relation_id: u32,
    /// The deleted row's key ('K') or whole row ('O', under FULL).
    pub old: OldTuple,
}

/// One or more tables were truncated together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE ... CASCADE` (option bit 1).
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY` (option bit 2).
    pub restart_identity: bool,
    /// The OIDs of the truncated relations.
    pub relation_ids: Vec<u32>,
}

/// A message written by `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalDecodingMessage {
    /// Whether it was emitted transactionally (inside Begin/Commit) or immediately.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content (a slice of the received message).
    pub content: Bytes,
}

/// Start of a stream block: changes of an in-progress transaction follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction id the block streams.
    pub xid: u32,
    /// Whether this is the first stream block of that transaction.
    pub first_segment: bool,
}

/// A streamed transaction committed; everything streamed for it now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// The transaction id.
    pub xid: u32,
    /// Flags; unused by PostgreSQL (always 0) and kept only for completeness.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: the position to confirm once applied.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 UTC, as on the wire.
    pub commit_ts: i64,
}

/// A streamed transaction, or one of its subtransactions, aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction id.
    pub xid: u32,
    /// The aborted subtransaction's id; equal to `xid` when the whole transaction
    /// aborted, and then everything streamed for it is void.
    pub subxid: u32,
}

/// The kind of message being decoded, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// The tag byte was missing or not a known tag.
    Unknown,
    /// Begin ('B').
    Begin,
    /// Commit ('C').
    Commit,
    /// Origin ('O').
    Origin,
    /// Relation ('R').
    Relation,
    /// Type ('Y').
    Type,
    /// Insert ('I').
    Insert,
    /// Update ('U').
    Update,
    /// Delete ('D').
    Delete,
    /// Truncate ('T').
    Truncate,
    /// Logical decoding message ('M').
    Message,
    /// Stream Start ('S').
    StreamStart,
    /// Stream Stop ('E').
    StreamStop,
    /// Stream Commit ('c').
    StreamCommit,
    /// Stream Abort ('A').
    StreamAbort,
}

impl MessageKind {
    /// The kind a message tag byte names, or `None` for a tag this decoder does not know.
    fn from_tag(tag: u8) -> Option<MessageKind> {
        match tag {
            b'B' => Some(MessageKind::Begin),
            b'C' => Some(MessageKind::Commit),
            b'O' => Some(MessageKind::Origin),
            b'R' => Some(MessageKind::Relation),
            b'Y' => Some(MessageKind::Type),
            b'I' => Some(MessageKind::Insert),
            b'U' => Some(MessageKind::Update),
            b'D' => Some(MessageKind::Delete),
            b'T' => Some(MessageKind::Truncate),
            b'M' => Some(MessageKind::Message),
            b'S' => Some(MessageKind::StreamStart),
            b'E' => Some(MessageKind::StreamStop),
            b'c' => Some(MessageKind::StreamCommit),
            b'A' => Some(MessageKind::StreamAbort),
            _ => None,
        }
    }

    /// The phrase used in error messages, e.g. "Update message".
    fn describe(self) -> &'static str {
        match self {
            MessageKind::Unknown => "message",
            MessageKind::Begin => "Begin message",
            MessageKind::Commit => "Commit message",
            MessageKind::Origin => "Origin message",
            MessageKind::Relation => "Relation message",
            MessageKind::Type => "Type message",
            MessageKind::Insert => "Insert message",
            MessageKind::Update => "Update message",
            MessageKind::Delete => "Delete message",
            MessageKind::Truncate => "Truncate message",
            MessageKind::Message => "logical decoding message",
            MessageKind::StreamStart => "Stream Start message",
            MessageKind::StreamStop => "Stream Stop message",
            MessageKind::StreamCommit => "Stream Commit message",
            MessageKind::StreamAbort => "Stream Abort message",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A pgoutput message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput {kind} at offset {offset}: {problem}")]
pub struct DecodeError {
    /// The kind of message being decoded.
    pub kind: MessageKind,
    /// Byte offset in the message of the field that was wrong.
    pub offset: usize,
    /// What was wrong.
    pub problem: DecodeProblem,
}

/// What was wrong with a pgoutput message.
///
/// Displayed as part of [`DecodeError`] rather than chained as its source: the problem
/// is the error itself, not an underlying cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeProblem {
    /// The message ended before a field was complete.
    UnexpectedEnd {
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// The first byte is not a message tag this decoder knows.
    UnknownTag(u8),
    /// A string had no terminating NUL before the end of the message.
    UnterminatedString,
    /// A string was not valid UTF-8.
    InvalidUtf8(std::str::Utf8Error),
    /// The replica identity byte was not 'd', 'n', 'f' or 'i'.
    UnknownReplicaIdentity(u8),
    /// A tuple column's kind byte was not 'n', 'u', 't' or 'b'.
    UnknownValueKind(u8),
    /// A tuple marker byte ('N', 'K', 'O') was not one the message allows here.
    UnexpectedTupleMarker {
        /// The markers allowed at this point.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// A length field was negative.
    NegativeLength(i32),
    /// A count promised more items than the remaining bytes could hold.
    CountTooLarge {
        /// The count read.
        count: usize,
        /// Bytes that were left after the count.
        remaining: usize,
    },
    /// Bytes were left after a complete message.
    TrailingBytes(usize),
    /// The message is not allowed in the stream-block state it arrived in: a Stream
    /// Start inside a stream block, a Stream Stop outside one, or a Begin, Commit,
    /// Stream Commit or Stream Abort inside one.
    UnexpectedStreamState {
        /// Whether a stream block was open.
        in_stream: bool,
    },
}

impl fmt::Display for DecodeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeProblem::UnexpectedEnd { needed, remaining } => write!(
                f,
                "unexpected end of data (needed {needed} bytes, {remaining} left)"
            ),
            DecodeProblem::UnknownTag(tag) => {
                write!(
                    f,
                    "unknown message tag {:?} (0x{tag:02x})",
                    char::from(*tag)
                )
            }
            DecodeProblem::UnterminatedString => {
                f.write_str("string is not NUL-terminated before the end of data")
            }
            DecodeProblem::InvalidUtf8(err) => write!(f, "string is not valid UTF-8 ({err})"),
            DecodeProblem::UnknownReplicaIdentity(b) => write!(
                f,
                "unknown replica identity {:?} (0x{b:02x})",
                char::from(*b)
            ),
            DecodeProblem::UnknownValueKind(b) => write!(
                f,
                "unknown tuple value kind {:?} (0x{b:02x})",
                char::from(*b)
            ),
            DecodeProblem::UnexpectedTupleMarker { expected, found } => write!(
                f,
                "expected tuple marker {expected}, found {:?} (0x{found:02x})",
                char::from(*found)
            ),
            DecodeProblem::NegativeLength(len) => write!(f, "negative length {len}"),
            DecodeProblem::CountTooLarge { count, remaining } => write!(
                f,
                "count {count} cannot fit in the {remaining} remaining bytes"
            ),
            DecodeProblem::TrailingBytes(n) => {
                write!(f, "{n} trailing bytes after a complete message")
            }
            DecodeProblem::UnexpectedStreamState { in_stream: true } => {
                f.write_str("not allowed inside a stream block")
            }
            DecodeProblem::UnexpectedStreamState { in_stream: false } => {
                f.write_str("not allowed outside a stream block")
            }
        }
    }
}

/// Decodes one pgoutput message (the payload of one `XLogData`) outside any stream
/// block, as a fresh [`Decoder`] would.
pub fn decode(buf: Bytes) -> Result<LogicalMessage, DecodeError> {
    decode_in(buf, false).map(|decoded| decoded.message)
}

/// Decodes a session's messages in order, knowing whether a stream block is open.
#[derive(Debug, Default)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    /// A decoder for a new session: no stream block is open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a Stream Start was decoded and its Stream Stop not yet.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes the next message (the payload of one `XLogData`).
    ///
    /// Inside a stream block the xid that Relation, Type, Insert, Update, Delete,
    /// Truncate and Message carry there is read into [`Decoded::xid`]. Stream Start
    /// opens the block and Stream Stop closes it. A Stream Start inside a block, a
    /// Stream Stop outside one, or a Begin, Commit, Stream Commit or Stream Abort inside
    /// one is a [`DecodeProblem::UnexpectedStreamState`] at offset 0. On any error the
    /// decoder's state is unchanged.
    pub fn decode(&mut self, buf: Bytes) -> Result<Decoded, DecodeError> {
        let decoded = decode_in(buf, self.in_stream)?;
        match decoded.message {
            LogicalMessage::StreamStart(_) => self.in_stream = true,
            LogicalMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(decoded)
    }
}

/// Decodes one message, inside a stream block or not; changes no state.
fn decode_in(buf: Bytes, in_stream: bool) -> Result<Decoded, DecodeError> {
    let mut r = Reader {
        buf,
        pos: 0,
        kind: MessageKind::Unknown,
    };
    let tag = r.u8()?;
    r.kind =
        MessageKind::from_tag(tag).ok_or_else(|| r.error_at(0, DecodeProblem::UnknownTag(tag)))?;
    let carries_xid =
        carries_xid(r.kind, tag, in_stream).map_err(|problem| r.error_at(0, problem))?;
    let xid = if carries_xid { Some(r.u32()?) } else { None };
    let message = match r.kind {
        MessageKind::Begin => LogicalMessage::Begin(Begin {
            final_lsn: r.lsn()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        }),
        MessageKind::Commit => LogicalMessage::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_ts: r.i64()?,
        }),
        MessageKind::Origin => LogicalMessage::Origin(Origin {
            commit_lsn: r.lsn()?,
            name: r.string()?,
        }),
        MessageKind::Relation => LogicalMessage::Relation(relation(&mut r)?),
        MessageKind::Type => LogicalMessage::Type(TypeMessage {
            id: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        }),
        MessageKind::Insert => LogicalMessage::Insert(insert(&mut r)?),
        MessageKind::Update => LogicalMessage::Update(update(&mut r)?),
        MessageKind::Delete => LogicalMessage::Delete(delete(&mut r)?),
        MessageKind::Truncate => LogicalMessage::Truncate(truncate(&mut r)?),
        MessageKind::Message => LogicalMessage::Message(logical_decoding_message(&mut r)?),
        MessageKind::StreamStart => LogicalMessage::StreamStart(StreamStart {
            xid: r.u32()?,
            first_segment: r.u8()? != 0,
        }),
        MessageKind::StreamStop => LogicalMessage::StreamStop,
        MessageKind::StreamCommit => LogicalMessage::StreamCommit(StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_ts: r.i64()?,
        }),
        MessageKind::StreamAbort => LogicalMessage::StreamAbort(StreamAbort {
            xid: r.u32()?,
            subxid: r.u32()?,
        }),
        // Unknown tags returned above; kept as an error rather than a panic.
        MessageKind::Unknown => return Err(r.error_at(0, DecodeProblem::UnknownTag(tag))),
    };
    r.finish()?;
    Ok(Decoded { message, xid })
}

/// Whether a message of `kind` carries an xid after its tag, or the problem if it may
/// not arrive in this stream-block state.
fn carries_xid(kind: MessageKind, tag: u8, in_stream: bool) -> Result<bool, DecodeProblem> {
    let (allowed, carries_xid) = match kind {
        // Only between stream blocks.
        MessageKind::Begin
        | MessageKind::Commit
        | MessageKind::StreamStart
        | MessageKind::StreamCommit
        | MessageKind::StreamAbort => (!in_stream, false),
        // Only inside a stream block.
        MessageKind::StreamStop => (in_stream, false),
        // Anywhere, and with no xid: pgoutput sends it after a first Stream Start.
        MessageKind::Origin => (true, false),
        // Anywhere, with the (sub)transaction's xid inside a block.
        MessageKind::Relation
        | MessageKind::Type
        | MessageKind::Insert
        | MessageKind::Update
        | MessageKind::Delete
        | MessageKind::Truncate
        | MessageKind::Message => (true, in_stream),
        // `decode_in` rejects unknown tags before asking; kept as an error, not a panic.
        MessageKind::Unknown => return Err(DecodeProblem::UnknownTag(tag)),
    };
    if !allowed {
        return Err(DecodeProblem::UnexpectedStreamState { in_stream });
    }
    Ok(carries_xid)
}

/// The body of an Insert message, after the tag (and xid).
fn insert(r: &mut Reader) -> Result<Insert, DecodeError> {
    let relation_id = r.u32()?;
    r.marker(b"N", "'N'")?;
    Ok(Insert {
        relation_id,
        new: r.tuple()?,
    })
}

/// The body of an Update message, after the tag (and xid).
fn update(r: &mut Reader) -> Result<Update, DecodeError> {
    let relation_id = r.u32()?;
    let old = match r.marker(b"KON", "'K', 'O' or 'N'")? {
        b'K' => Some(OldTuple::Key(r.tuple()?)),
        b'O' => Some(OldTuple::Full(r.tuple()?)),
        _ => None,
    };
    if old.is_some() {
        r.marker(b"N", "'N'")?;
    }
    Ok(Update {
        relation_id,
        old,
        new: r.tuple()?,
    })
}

/// The body of a Delete message, after the tag (and xid).
fn delete(r: &mut Reader) -> Result<Delete, DecodeError> {
    let relation_id = r.u32()?;
    let old = match r.marker(b"KO", "'K' or 'O'")? {
        b'K' => OldTuple::Key(r.tuple()?),
        _ => OldTuple::Full(r.tuple()?),
    };
    Ok(Delete { relation_id, old })
}

/// The body of a Truncate message, after the tag (and xid).
fn truncate(r: &mut Reader) -> Result<Truncate, DecodeError> {
    let count_at = r.pos;
    let count = usize_from(r.u32()?);
    let options = r.u8()?;
    // Each relation id takes four bytes.
    r.check_count(count_at, count, 4)?;
    let mut relation_ids = Vec::with_capacity(count);
    for _ in 0..count {
        relation_ids.push(r.u32()?);
    }
    Ok(Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relation_ids,
    })
}

/// The body of a logical decoding message, after the tag (and xid).
fn logical_decoding_message(r: &mut Reader) -> Result<LogicalDecodingMessage, DecodeError> {
    let flags = r.u8()?;
    let lsn = r.lsn()?;
    let prefix = r.string()?;
    let len = r.length()?;
    Ok(LogicalDecodingMessage {
        transactional: flags & 1 != 0,
        lsn,
        prefix,
        content: r.bytes(len)?,
    })
}

/// The body of a Relation message, after the tag.
fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32()?;
    let namespace = r.string()?;
    let name = r.string()?;
    let identity_at = r.pos;
    let identity_byte = r.u8()?;
    let replica_identity = ReplicaIdentity::from_byte(identity_byte).ok_or_else(|| {
        r.error_at(
            identity_at,
            DecodeProblem::UnknownReplicaIdentity(identity_byte),
        )
    })?;
    let count_at = r.pos;
    let count = usize::from(r.u16()?);
    // Smallest column: flags (1) + empty name (1, its NUL) + type OID (4) + typmod (4).
    r.check_count(count_at, count, 10)?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = r.u8()?;
        columns.push(RelationColumn {
            is_key: flags & 1 != 0,
            name: r.string()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// `u32` to `usize`; saturates on (hypothetical) 16-bit targets, where the count check
/// then rejects it.
fn usize_from(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A bounds-checked cursor over one message.
struct Reader {
    buf: Bytes,
    pos: usize,
    kind: MessageKind,
}

impl Reader {
    fn error_at(&self, offset: usize, problem: DecodeProblem) -> DecodeError {
        DecodeError {
            kind: self.kind,
            offset,
            problem,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Advances past `n` bytes and returns their range, or fails without moving.
    fn advance(&mut self, n: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        let start = self.pos;
        match start.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                Ok(start..end)
            }
            _ => Err(self.error_at(
                start,
                DecodeProblem::UnexpectedEnd {
                    needed: n,
                    remaining: self.remaining(),
                },
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let start = self.pos;
        let range = self.advance(N)?;
        self.buf
            .get(range)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            // Unreachable: `advance` checked the bounds. Reported, not panicked on.
            .ok_or_else(|| {
                self.error_at(
                    start,
                    DecodeProblem::UnexpectedEnd {
                        needed: N,
                        remaining: 0,
                    },
                )
            })
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let [byte] = self.array()?;
        Ok(byte)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    /// An Int32 length that must not be negative.
    fn length(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let len = self.i32()?;
        usize::try_from(len).map_err(|_| self.error_at(at, DecodeProblem::NegativeLength(len)))
    }

    /// `n` bytes as a zero-copy slice of the message.
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let range = self.advance(n)?;
        Ok(self.buf.slice(range))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error_at(start, DecodeProblem::UnterminatedString));
        };
        let text = rest.get(..len).unwrap_or_default();
        let text = std::str::from_utf8(text)
            .map_err(|err| self.error_at(start, DecodeProblem::InvalidUtf8(err)))?
            .to_owned();
        self.pos = start.saturating_add(len).saturating_add(1);
        Ok(text)
    }

    /// A tuple marker byte that must be one of `allowed`.
    fn marker(&mut self, allowed: &[u8], expected: &'static str) -> Result<u8, DecodeError> {
        let at = self.pos;
        let found = self.u8()?;
        if allowed.contains(&found) {
            Ok(found)
        } else {
            Err(self.error_at(at, DecodeProblem::UnexpectedTupleMarker { expected, found }))
        }
    }

    /// Rejects a `count` of items of at least `min_size` bytes each that cannot fit in
    /// the remaining bytes, before anything is allocated for them.
    fn check_count(
        &self,
        count_at: usize,
        count: usize,
        min_size: usize,
    ) -> Result<(), DecodeError> {
        let remaining = self.remaining();
        if count.saturating_mul(min_size) > remaining {
            return Err(self.error_at(count_at, DecodeProblem::CountTooLarge { count, remaining }));
        }
        Ok(())
    }

    /// TupleData: Int16 column count, then per column a kind byte and maybe a value.
    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let count_at = self.pos;
        let count = usize::from(self.u16()?);
        // Every column takes at least its kind byte.
        self.check_count(count_at, count, 1)?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let kind_at = self.pos;
            let value = match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.length()?;
                    TupleValue::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.length()?;
                    TupleValue::Binary(self.bytes(len)?)
                }
                other => {
                    return Err(self.error_at(kind_at, DecodeProblem::UnknownValueKind(other)));
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    /// Succeeds only if the whole message was consumed.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error_at(self.pos, DecodeProblem::TrailingBytes(n))),
        }
    }
}

#[cfg(test)]
mod tests {
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
                .prop_map(|(id, namespace, name, replica_identity, columns)| {
                    Relation {
                        id,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    }
                })
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
}
