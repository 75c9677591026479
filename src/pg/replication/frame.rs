//! Pure byte-level pieces of the replication protocol: splitting the backend byte stream
//! into frames, decoding the CopyData payloads of a replication stream, encoding standby
//! status updates, and quoting names into replication commands.
//!
//! Nothing here does I/O and nothing here panics on any input: every read is checked, so a
//! hostile or corrupt server produces an error, never a crash.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ReplicationError;
use crate::lsn::Lsn;
use crate::sql::{quote_ident, quote_literal};

/// Seconds from the Unix epoch to the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Largest backend message accepted. Postgres never sends more than 1 GiB in one message
/// (`MaxAllocSize`); anything larger is a corrupt length, and trusting it would make the
/// read buffer reserve gigabytes.
const MAX_FRAME_LEN: usize = (1 << 30) + 1024;

/// Bytes of an XLogData header: tag, start, end, clock.
const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;
/// Bytes of a primary keepalive: tag, end, clock, reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

/// One message of a logical replication stream (the payload of a CopyData frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: for a logical slot, one pgoutput message.
    XLogData {
        /// WAL position where `data` starts.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server time of sending, microseconds since 2000-01-01 UTC.
        server_clock: i64,
        /// The payload (a pgoutput message).
        data: Bytes,
    },
    /// The server's periodic keepalive.
    ///
    /// When `reply_requested` is set the caller must send a standby status update at once:
    /// the walsender asks because `wal_sender_timeout` is near and drops the connection if
    /// no reply arrives.
    PrimaryKeepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server time of sending, microseconds since 2000-01-01 UTC.
        server_clock: i64,
        /// Whether the server asks for an immediate status update.
        reply_requested: bool,
    },
}

/// The positions a standby status update reports to the walsender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatus {
    /// Last WAL position received.
    pub write: Lsn,
    /// Last WAL position durably stored; for a logical slot this becomes
    /// `confirmed_flush_lsn`, so it must only cover what is committed downstream.
    pub flush: Lsn,
    /// Last WAL position applied.
    pub apply: Lsn,
    /// Ask the server to answer with a keepalive right away.
    pub reply_requested: bool,
}

/// Decodes the payload of a CopyData frame of a replication stream.
///
/// Only the two messages a walsender sends are accepted: XLogData (`w`) and primary
/// keepalive (`k`). A truncated frame, trailing bytes after a keepalive, or any other tag
/// is a protocol error.
pub fn parse_copy_data(mut buf: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    let Some(&tag) = buf.first() else {
        return Err(ReplicationError::Protocol(
            "empty CopyData message in replication stream".into(),
        ));
    };
    match tag {
        b'w' => {
            if buf.len() < XLOG_DATA_HEADER {
                return Err(truncated("XLogData", buf.len(), XLOG_DATA_HEADER));
            }
            buf.advance(1);
            let wal_start = Lsn(buf.get_u64());
            let wal_end = Lsn(buf.get_u64());
            let server_clock = buf.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_clock,
                data: buf,
            })
        }
        b'k' => {
            if buf.len() != KEEPALIVE_LEN {
                return Err(if buf.len() < KEEPALIVE_LEN {
                    truncated("primary keepalive", buf.len(), KEEPALIVE_LEN)
                } else {
                    ReplicationError::Protocol(format!(
                        "primary keepalive of {} bytes, expected {KEEPALIVE_LEN}",
                        buf.len()
                    ))
                });
            }
            buf.advance(1);
            let wal_end = Lsn(buf.get_u64());
            let server_clock = buf.get_i64();
            let reply_requested = buf.get_u8() != 0;
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                server_clock,
                reply_requested,
            })
        }
        other => Err(ReplicationError::Protocol(format!(
            "unexpected message {} in replication stream",
            describe_tag(other)
        ))),
    }
}

fn truncated(what: &str, got: usize, want: usize) -> ReplicationError {
    ReplicationError::Protocol(format!(
        "truncated {what} message: {got} bytes, expected at least {want}"
    ))
}

/// Renders a tag byte for an error message: printable ASCII as a character, else hex.
pub(crate) fn describe_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", char::from(tag))
    } else {
        format!("0x{tag:02x}")
    }
}

/// Encodes a standby status update (`r`): the CopyData payload, without the frame header.
///
/// Layout: `r`, write, flush, apply (each a big-endian u64 LSN), the client clock
/// (microseconds since 2000-01-01 UTC, i64), and the reply-requested flag (one byte).
pub fn encode_status_update(status: &StandbyStatus, now_pg_micros: i64) -> Bytes {
    let mut buf = BytesMut::with_capacity(34);
    buf.put_u8(b'r');
    buf.put_u64(status.write.0);
    buf.put_u64(status.flush.0);
    buf.put_u64(status.apply.0);
    buf.put_i64(now_pg_micros);
    buf.put_u8(u8::from(status.reply_requested));
    buf.freeze()
}

/// The current time as microseconds since 2000-01-01 UTC, the clock of the protocol.
pub fn pg_now_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let since_pg = since_unix.saturating_sub(Duration::from_secs(PG_EPOCH_UNIX_SECS));
    i64::try_from(since_pg.as_micros()).unwrap_or(i64::MAX)
}

/// Splits one complete backend message (tag, length, body) off the front of `buf`.
///
/// Returns `None` when `buf` does not yet hold a whole message; nothing is consumed then,
/// which is what makes reading cancellation safe: a read buffer that survives a cancelled
/// future still holds every byte, and a frame is only taken once it is complete.
pub(crate) fn split_frame(buf: &mut BytesMut) -> Result<Option<(u8, BytesMut)>, ReplicationError> {
    let (Some(&tag), Some(len)) = (buf.first(), buf.get(1..5)) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(len);
    let len = u32::from_be_bytes(len_bytes);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if !(4..=MAX_FRAME_LEN).contains(&len) {
        return Err(ReplicationError::Protocol(format!(
            "invalid length {len} for backend message {}",
            describe_tag(tag)
        )));
    }
    let total = len + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some((tag, buf.split_to(total))))
}

/// The `publication_names` option value: a literal holding a comma-separated list of
/// quoted identifiers, which pgoutput splits with `SplitIdentifierString`.
pub(crate) fn publication_names(publications: &[String]) -> String {
    let list: Vec<String> = publications.iter().map(|p| quote_ident(p)).collect();
    quote_literal(&list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog(start: u64, end: u64, clock: i64, data: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(clock);
        b.put_slice(data);
        b.freeze()
    }

    fn keepalive(end: u64, clock: i64, reply: u8) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(end);
        b.put_i64(clock);
        b.put_u8(reply);
        b.freeze()
    }

    #[test]
    fn parses_xlog_data() {
        let msg = parse_copy_data(xlog(0x1_0000_0010, 0x1_0000_0020, 42, b"BEGIN")).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x1_0000_0010),
                wal_end: Lsn(0x1_0000_0020),
                server_clock: 42,
                data: Bytes::from_static(b"BEGIN"),
            }
        );
        // An XLogData with no payload is well formed.
        let empty = parse_copy_data(xlog(1, 2, 3, b"")).unwrap();
        assert!(matches!(empty, ReplicationMessage::XLogData { data, .. } if data.is_empty()));
    }

    #[test]
    fn parses_keepalive() {
        let msg = parse_copy_data(keepalive(0xABCD, -5, 1)).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(0xABCD),
                server_clock: -5,
                reply_requested: true,
            }
        );
        let msg = parse_copy_data(keepalive(7, 0, 0)).unwrap();
        assert!(matches!(
            msg,
            ReplicationMessage::PrimaryKeepalive {
                reply_requested: false,
                ..
            }
        ));
    }

    #[test]
    fn rejects_truncated_frames() {
        let full = xlog(1, 2, 3, b"");
        for len in 0..full.len() {
            assert!(
                parse_copy_data(full.slice(..len)).is_err(),
                "xlog len {len}"
            );
        }
        let full = keepalive(1, 2, 0);
        for len in 0..full.len() {
            assert!(
                parse_copy_data(full.slice(..len)).is_err(),
                "keepalive len {len}"
            );
        }
        let mut long = BytesMut::from(&full[..]);
        long.put_u8(0);
        assert!(parse_copy_data(long.freeze()).is_err());
    }

    #[test]
    fn rejects_unknown_tags() {
        for tag in [b'r', b'x', 0u8, 0xff] {
            let mut b = BytesMut::from(&keepalive(1, 2, 0)[..]);
            b[0] = tag;
            let err = parse_copy_data(b.freeze()).unwrap_err();
            assert!(matches!(err, ReplicationError::Protocol(_)), "{err}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic sweep standing in for a fuzzer.
        let mut seed: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let len = (seed >> 24) as usize % 40;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let v = seed.rotate_left(i as u32) as u8;
                    if i == 0 {
                        [b'w', b'k', v][v as usize % 3]
                    } else {
                        v
                    }
                })
                .collect();
            let _ = parse_copy_data(Bytes::from(bytes.clone()));
            let _ = split_frame(&mut BytesMut::from(&bytes[..]));
        }
    }

    #[test]
    fn encodes_status_update_layout() {
        let status = StandbyStatus {
            write: Lsn(0x0102_0304_0506_0708),
            flush: Lsn(0x1112_1314_1516_1718),
            apply: Lsn(0x2122_2324_2526_2728),
            reply_requested: true,
        };
        let bytes = encode_status_update(&status, 0x3132_3334_3536_3738);
        let expected: Vec<u8> = [
            &[b'r'][..],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18],
            &[0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28],
            &[0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38],
            &[1],
        ]
        .concat();
        assert_eq!(&bytes[..], &expected[..]);
        let quiet = encode_status_update(
            &StandbyStatus {
                reply_requested: false,
                ..status
            },
            0,
        );
        assert_eq!(quiet.len(), 34);
        assert_eq!(quiet[33], 0);
    }

    #[test]
    fn pg_clock_counts_from_2000() {
        let now = pg_now_micros();
        // 2024-01-01 is 24 years after the PostgreSQL epoch.
        assert!(now > 24 * 365 * 86_400 * 1_000_000);
    }

    #[test]
    fn splits_frames_only_when_complete() {
        let mut buf = BytesMut::new();
        assert!(split_frame(&mut buf).unwrap().is_none());
        buf.put_slice(&[b'Z', 0, 0, 0, 5]);
        assert!(split_frame(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 5, "an incomplete frame is not consumed");
        buf.put_slice(b"I");
        buf.put_slice(&[b'd', 0, 0]);
        let (tag, frame) = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(tag, b'Z');
        assert_eq!(&frame[..], &[b'Z', 0, 0, 0, 5, b'I']);
        assert_eq!(&buf[..], &[b'd', 0, 0]);
        assert!(split_frame(&mut buf).unwrap().is_none());
    }

    #[test]
    fn rejects_impossible_frame_lengths() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(split_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(split_frame(&mut buf).is_err());
    }

    #[test]
    fn quotes_names() {
        assert_eq!(quote_ident("slot"), "\"slot\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            publication_names(&["a".into(), "B c".into(), "q\"'x".into()]),
            "'\"a\",\"B c\",\"q\"\"''x\"'"
        );
    }
}
