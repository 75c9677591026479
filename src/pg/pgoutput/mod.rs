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
mod tests;
