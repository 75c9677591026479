//! pg2lake's own walsender client: the logical streaming replication protocol on
//! `postgres-protocol` over tokio. Stock tokio-postgres cannot speak it (no
//! `replication=database` startup, no CopyBoth mode).
//!
//! ```text
//!  connect ─► [SSLRequest ─► TLS] ─► startup (replication=database) ─► auth ─► ReadyForQuery
//!                                                                               │
//!     ReplicationClient: IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, SQL  ◄───────┘
//!                                                                               │ START_REPLICATION
//!                                                                               ▼ CopyBothResponse
//!     ReplicationStream:  server ─ CopyData 'w' XLogData / 'k' keepalive ─► next()
//!                         client ─ CopyData 'r' standby status update   ◄─ send_status_update()
//! ```
//!
//! Invariants:
//! - [`ReplicationStream::next`] is cancellation safe: it reads into a buffer owned by the
//!   stream and takes a frame off it only when the frame is complete, so it can be one arm
//!   of `tokio::select!` next to timers without losing data.
//! - Nothing here answers keepalives or confirms positions by itself: only the caller
//!   knows which LSN is durable downstream. A keepalive with `reply_requested` must be
//!   answered with [`ReplicationStream::send_status_update`] at once, or the walsender
//!   drops the connection after `wal_sender_timeout`.
//! - Bytes from the network are parsed without panics; a malformed message is a
//!   [`ReplicationError::Protocol`].
//! - ErrorResponse is an error everywhere; NoticeResponse is logged at debug level;
//!   ParameterStatus is remembered.

mod conn;
mod frame;
mod params;
mod tls;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::lsn::Lsn;
use crate::sql::{quote_ident, quote_literal};
use conn::{Backend, Connection, decode_row, server_error, unexpected};
use frame::publication_names;

pub use frame::{
    ReplicationMessage, StandbyStatus, encode_status_update, parse_copy_data, pg_now_micros,
};
pub use params::{
    ConnectParams, DEFAULT_APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT,
    DEFAULT_USER, Host, SESSION_OPTIONS, SslMode, encode_options,
};
pub use tls::tls_client_config;

/// Why the replication connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Reading from or writing to an established connection failed.
    #[error("postgres replication connection i/o error: {0}")]
    Io(#[source] std::io::Error),
    /// The server could not be reached.
    #[error("could not connect to postgres at {target}: {}", io_reason(.source))]
    Connect {
        /// `host:port` or the socket file.
        target: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// TLS negotiation or certificate verification failed.
    #[error("tls with postgres at {target} failed: {source}")]
    Tls {
        /// `host:port`.
        target: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The server answered with an ErrorResponse.
    #[error("postgres error {code}: {message}{}", details(.detail, .hint))]
    Server {
        /// Severity (ERROR, FATAL, PANIC), not localized.
        severity: String,
        /// SQLSTATE code.
        code: String,
        /// Primary message.
        message: String,
        /// Optional detail.
        detail: Option<String>,
        /// Optional hint.
        hint: Option<String>,
    },
    /// Authentication cannot proceed (no password configured, unsupported method, …).
    #[error("postgres authentication failed: {0}")]
    Auth(String),
    /// The server sent something this client does not understand.
    #[error("postgres replication protocol error: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("postgres closed the replication connection")]
    Closed,
    /// A time limit ran out.
    #[error("timed out {0}")]
    Timeout(String),
    /// The connection settings are invalid.
    #[error("invalid postgres {0}")]
    Config(String),
}

/// An i/o error as a lowercase reason without the OS error number:
/// "Connection refused (os error 111)" becomes "connection refused".
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text.get(..at).unwrap_or(&text),
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn details(detail: &Option<String>, hint: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(detail) = detail {
        out.push_str(&format!(" (detail: {detail})"));
    }
    if let Some(hint) = hint {
        out.push_str(&format!(" (hint: {hint})"));
    }
    out
}

impl ReplicationError {
    /// Whether retrying later may succeed (network, restarts, overload) as opposed to a
    /// definite failure (authentication, permissions, bad syntax or settings).
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Io(_)
            | ReplicationError::Connect { .. }
            | ReplicationError::Closed
            | ReplicationError::Timeout(_) => true,
            // A handshake cut by the network is transient; a certificate problem is not.
            ReplicationError::Tls { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::TimedOut
            ),
            ReplicationError::Server { code, .. } => crate::pg::sqlstate::is_transient(code),
            ReplicationError::Auth(_)
            | ReplicationError::Protocol(_)
            | ReplicationError::Config(_) => false,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier.
    pub systemid: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The database connected to.
    pub dbname: Option<String>,
}

/// What CREATE_REPLICATION_SLOT does with the slot's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSnapshot {
    /// No snapshot (`SNAPSHOT 'nothing'`).
    NoExport,
    /// Export a snapshot that other sessions can import with `SET TRANSACTION SNAPSHOT`
    /// until the next command on this connection (`SNAPSHOT 'export'`).
    Export,
    /// Use the snapshot in the current transaction of this connection, which must have
    /// begun with `BEGIN ISOLATION LEVEL REPEATABLE READ` (`SNAPSHOT 'use'`).
    Use,
}

/// The answer to CREATE_REPLICATION_SLOT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// The first position whose changes the slot streams; everything before is in the
    /// snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot's name, with [`SlotSnapshot::Export`].
    pub snapshot_name: Option<String>,
}

/// A connection in walsender mode (`replication=database`), before streaming.
pub struct ReplicationClient {
    conn: Connection,
}

impl ReplicationClient {
    /// Connects, negotiates TLS per `sslmode`, and authenticates (trust, password, md5,
    /// SCRAM-SHA-256), all within `connect_timeout`.
    pub async fn connect(params: &ConnectParams) -> Result<Self, ReplicationError> {
        Ok(ReplicationClient {
            conn: Connection::connect(params).await?,
        })
    }

    /// A parameter the server reported (`server_version`, `TimeZone`, `DateStyle`, …).
    pub fn server_parameter(&self, name: &str) -> Option<&str> {
        self.conn.parameter(name)
    }

    /// The walsender's process id.
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.backend_pid()
    }

    /// Whether the connection is encrypted with TLS.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// Runs IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(rows, "IDENTIFY_SYSTEM", 4)?;
        let timeline = column(&row, 1, "IDENTIFY_SYSTEM")?;
        let xlogpos = column(&row, 2, "IDENTIFY_SYSTEM")?;
        Ok(SystemInfo {
            systemid: column(&row, 0, "IDENTIFY_SYSTEM")?.to_owned(),
            timeline: timeline.parse().map_err(|_| {
                ReplicationError::Protocol(format!("IDENTIFY_SYSTEM timeline {timeline:?}"))
            })?,
            xlogpos: parse_lsn(xlogpos, "IDENTIFY_SYSTEM xlogpos")?,
            dbname: row.get(3).cloned().flatten(),
        })
    }

    /// Runs `sql` with the simple query protocol and returns the rows of all its
    /// statements as text values. Walsender connections accept SQL as well as
    /// replication commands.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, self.conn.write_buf())
            .map_err(|e| ReplicationError::Config(format!("query cannot be sent: {e}")))?;
        self.conn.flush_write_buf().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.conn.read_message().await? {
                Backend::Message(Message::DataRow(body)) => {
                    if error.is_none() {
                        rows.push(decode_row(&body)?);
                    }
                }
                Backend::Message(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse
                    | Message::CopyData(_)
                    | Message::CopyDone,
                ) => {}
                Backend::Message(Message::ErrorResponse(body)) => {
                    // The server still sends ReadyForQuery; wait for it so the connection
                    // stays usable.
                    error.get_or_insert(server_error(body.fields()));
                }
                Backend::Message(Message::CopyInResponse(_)) => {
                    frontend::copy_fail(
                        "pg2lake sends no COPY data on the replication connection",
                        self.conn.write_buf(),
                    )
                    .map_err(|e| ReplicationError::Protocol(format!("CopyFail: {e}")))?;
                    self.conn.flush_write_buf().await?;
                    error.get_or_insert(ReplicationError::Protocol(
                        "COPY FROM STDIN is not supported on the replication connection".into(),
                    ));
                }
                Backend::Message(Message::CopyOutResponse(_)) => {
                    error.get_or_insert(ReplicationError::Protocol(
                        "COPY TO STDOUT is not supported on the replication connection".into(),
                    ));
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        None => Ok(rows),
                        Some(err) => Err(err),
                    };
                }
                other => return Err(unexpected(&other, "in a simple query")),
            }
        }
    }

    /// Creates a logical slot for pgoutput.
    ///
    /// Uses the PostgreSQL 15 option syntax, or the older keyword syntax on 14.
    pub async fn create_logical_slot(
        &mut self,
        slot: &str,
        snapshot: SlotSnapshot,
    ) -> Result<CreatedSlot, ReplicationError> {
        self.create_slot(slot, snapshot, false).await
    }

    /// Creates a temporary logical slot for pgoutput: Postgres drops it when this
    /// connection closes. Used for its exported snapshot and consistent point only.
    pub async fn create_temporary_logical_slot(
        &mut self,
        slot: &str,
        snapshot: SlotSnapshot,
    ) -> Result<CreatedSlot, ReplicationError> {
        self.create_slot(slot, snapshot, true).await
    }

    async fn create_slot(
        &mut self,
        slot: &str,
        snapshot: SlotSnapshot,
        temporary: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        validate_slot_name(slot)?;
        let sql = create_slot_command(slot, snapshot, temporary, self.server_major_version());
        let rows = self.simple_query(&sql).await?;
        let row = single_row(rows, "CREATE_REPLICATION_SLOT", 2)?;
        Ok(CreatedSlot {
            slot_name: column(&row, 0, "CREATE_REPLICATION_SLOT")?.to_owned(),
            consistent_point: parse_lsn(
                column(&row, 1, "CREATE_REPLICATION_SLOT")?,
                "CREATE_REPLICATION_SLOT consistent_point",
            )?,
            snapshot_name: row.get(2).cloned().flatten(),
        })
    }

    /// The major version from `server_version` ("15.4 (Debian …)" → 15).
    fn server_major_version(&self) -> Option<u32> {
        let version = self.server_parameter("server_version")?;
        let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// Starts streaming pgoutput (protocol version 2 with `streaming`: a transaction
    /// larger than the server's `logical_decoding_work_mem` is sent while in progress,
    /// instead of spilled to the server's disk until it commits) from `slot` at `start`
    /// ([`Lsn::ZERO`] resumes at the slot's confirmed position) and waits for the server
    /// to enter CopyBoth mode. `messages` also streams `pg_logical_emit_message` messages.
    pub async fn start_logical_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publications: &[String],
        messages: bool,
    ) -> Result<ReplicationStream, ReplicationError> {
        validate_slot_name(slot)?;
        let sql = start_replication_command(slot, start, publications, messages);
        frontend::query(&sql, self.conn.write_buf()).map_err(|e| {
            ReplicationError::Config(format!("START_REPLICATION cannot be sent: {e}"))
        })?;
        self.conn.flush_write_buf().await?;
        match self.conn.read_message().await? {
            Backend::CopyBothResponse => {
                tracing::debug!(slot, start_lsn = %start, "replication stream started");
                Ok(ReplicationStream {
                    conn: self.conn,
                    ended: false,
                })
            }
            Backend::Message(Message::ErrorResponse(body)) => Err(server_error(body.fields())),
            other => Err(unexpected(&other, "in answer to START_REPLICATION")),
        }
    }
}

/// Postgres accepts only these slot names, and the replication command scanner cannot
/// escape a quote inside a quoted name, so anything else is refused before sending.
fn validate_slot_name(slot: &str) -> Result<(), ReplicationError> {
    let valid = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ReplicationError::Config(format!(
            "replication slot name {slot:?}: use 1 to 63 lower case letters, digits and underscores"
        )))
    }
}

fn create_slot_command(
    slot: &str,
    snapshot: SlotSnapshot,
    temporary: bool,
    major: Option<u32>,
) -> String {
    let slot = quote_ident(slot);
    let temporary = if temporary { " TEMPORARY" } else { "" };
    if major.is_some_and(|v| v < 15) {
        let keyword = match snapshot {
            SlotSnapshot::NoExport => "NOEXPORT_SNAPSHOT",
            SlotSnapshot::Export => "EXPORT_SNAPSHOT",
            SlotSnapshot::Use => "USE_SNAPSHOT",
        };
        return format!("CREATE_REPLICATION_SLOT {slot}{temporary} LOGICAL pgoutput {keyword}");
    }
    let action = match snapshot {
        SlotSnapshot::NoExport => "nothing",
        SlotSnapshot::Export => "export",
        SlotSnapshot::Use => "use",
    };
    format!(
        "CREATE_REPLICATION_SLOT {slot}{temporary} LOGICAL pgoutput (SNAPSHOT {})",
        quote_literal(action)
    )
}

fn start_replication_command(
    slot: &str,
    start: Lsn,
    publications: &[String],
    messages: bool,
) -> String {
    let mut options = format!(
        "proto_version '2', streaming 'on', publication_names {}",
        publication_names(publications)
    );
    if messages {
        options.push_str(", messages 'true'");
    }
    format!(
        "START_REPLICATION SLOT {} LOGICAL {start} ({options})",
        quote_ident(slot)
    )
}

fn single_row(
    rows: Vec<Vec<Option<String>>>,
    command: &str,
    min_columns: usize,
) -> Result<Vec<Option<String>>, ReplicationError> {
    let mut rows = rows.into_iter();
    match (rows.next(), rows.next()) {
        (Some(row), None) if row.len() >= min_columns => Ok(row),
        _ => Err(ReplicationError::Protocol(format!(
            "{command} did not answer with one row of at least {min_columns} columns"
        ))),
    }
}

fn column<'a>(
    row: &'a [Option<String>],
    index: usize,
    command: &str,
) -> Result<&'a str, ReplicationError> {
    row.get(index)
        .and_then(Option::as_deref)
        .ok_or_else(|| ReplicationError::Protocol(format!("{command}: column {index} is null")))
}

fn parse_lsn(text: &str, what: &str) -> Result<Lsn, ReplicationError> {
    text.parse()
        .map_err(|_| ReplicationError::Protocol(format!("{what} {text:?} is not an LSN")))
}

/// A connection in CopyBoth mode, streaming a logical slot.
pub struct ReplicationStream {
    conn: Connection,
    ended: bool,
}

impl ReplicationStream {
    /// The next XLogData or keepalive; `None` once the server ended the stream cleanly
    /// (CopyDone, or CommandComplete from a walsender that stops with the server).
    ///
    /// Cancellation safe: it may be one arm of `tokio::select!` beside timers; a cancelled
    /// call loses no data (the read buffer belongs to the stream). A keepalive with
    /// `reply_requested` must be answered with [`Self::send_status_update`] at once.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        if self.ended {
            return Ok(None);
        }
        match self.conn.read_message().await? {
            Backend::Message(Message::CopyData(body)) => {
                parse_copy_data(body.into_bytes()).map(Some)
            }
            // A walsender that is shutting down (the server is stopping) ends with
            // CommandComplete alone, without CopyDone: both mean the stream is over.
            Backend::Message(Message::CopyDone | Message::CommandComplete(_)) => {
                self.ended = true;
                Ok(None)
            }
            Backend::Message(Message::ErrorResponse(body)) => Err(server_error(body.fields())),
            other => Err(unexpected(&other, "in the replication stream")),
        }
    }

    /// Sends a standby status update. `flush` becomes the slot's `confirmed_flush_lsn`:
    /// report only what is durable downstream.
    ///
    /// Not cancellation safe: a cancelled call may leave a partial message on the wire,
    /// after which the stream must be dropped. Call it from a `select!` arm body, not as
    /// the arm's future.
    pub async fn send_status_update(
        &mut self,
        status: StandbyStatus,
    ) -> Result<(), ReplicationError> {
        let payload = encode_status_update(&status, pg_now_micros());
        frontend::CopyData::new(payload)
            .map_err(|e| ReplicationError::Protocol(format!("status update: {e}")))?
            .write(self.conn.write_buf());
        self.conn.flush_write_buf().await
    }

    /// Ends streaming: sends CopyDone, skips what the server still had in flight, and
    /// returns the connection to command mode once the server is ready for queries.
    /// Positions are not confirmed by this; send a status update first.
    pub async fn finish(mut self) -> Result<ReplicationClient, ReplicationError> {
        frontend::copy_done(self.conn.write_buf());
        self.conn.flush_write_buf().await?;
        let mut error = None;
        loop {
            match self.conn.read_message().await? {
                Backend::Message(
                    Message::CopyData(_) | Message::CopyDone | Message::CommandComplete(_),
                )
                | Backend::Message(Message::DataRow(_) | Message::RowDescription(_)) => {}
                Backend::Message(Message::ErrorResponse(body)) => {
                    error.get_or_insert(server_error(body.fields()));
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        None => Ok(ReplicationClient { conn: self.conn }),
                        Some(err) => Err(err),
                    };
                }
                other => return Err(unexpected(&other, "while ending the replication stream")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> ReplicationError {
        ReplicationError::Server {
            severity: "FATAL".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn classifies_transient_errors() {
        for code in [
            "08006", "08P01", "57P01", "57P02", "57P03", "53300", "55006",
        ] {
            assert!(server(code).is_transient(), "{code}");
        }
        for code in ["28P01", "28000", "42501", "42601", "3D000", "42704"] {
            assert!(!server(code).is_transient(), "{code}");
        }
        assert!(ReplicationError::Closed.is_transient());
        assert!(ReplicationError::Timeout("x".into()).is_transient());
        let refused = ReplicationError::Connect {
            target: "127.0.0.1:5432".into(),
            source: std::io::Error::from_raw_os_error(111),
        };
        assert!(refused.is_transient());
        assert_eq!(
            refused.to_string(),
            "could not connect to postgres at 127.0.0.1:5432: connection refused"
        );
        assert!(!ReplicationError::Auth("x".into()).is_transient());
        assert!(!ReplicationError::Protocol("x".into()).is_transient());
        let cert = ReplicationError::Tls {
            target: "h:1".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad cert"),
        };
        assert!(!cert.is_transient());
    }

    #[test]
    fn formats_server_errors() {
        let err = ReplicationError::Server {
            severity: "FATAL".into(),
            code: "42501".into(),
            message: "permission denied to start WAL sender".into(),
            detail: None,
            hint: Some(
                "Only roles with the REPLICATION attribute may start a WAL sender process.".into(),
            ),
        };
        assert_eq!(
            err.to_string(),
            "postgres error 42501: permission denied to start WAL sender (hint: Only roles with the REPLICATION attribute may start a WAL sender process.)"
        );
        assert_eq!(err.code(), Some("42501"));
        let err = ReplicationError::Server {
            severity: "ERROR".into(),
            code: "XX000".into(),
            message: "m".into(),
            detail: Some("d".into()),
            hint: None,
        };
        assert_eq!(err.to_string(), "postgres error XX000: m (detail: d)");
    }

    #[test]
    fn builds_slot_commands() {
        assert_eq!(
            create_slot_command("pg2lake", SlotSnapshot::NoExport, false, Some(15)),
            "CREATE_REPLICATION_SLOT \"pg2lake\" LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        assert_eq!(
            create_slot_command("a_1", SlotSnapshot::Export, false, None),
            "CREATE_REPLICATION_SLOT \"a_1\" LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_slot_command("s", SlotSnapshot::Use, false, Some(14)),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput USE_SNAPSHOT"
        );
        assert_eq!(
            create_slot_command("t", SlotSnapshot::Export, true, Some(16)),
            "CREATE_REPLICATION_SLOT \"t\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_slot_command("t", SlotSnapshot::Export, true, Some(14)),
            "CREATE_REPLICATION_SLOT \"t\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
    }

    #[test]
    fn validates_slot_names() {
        assert!(validate_slot_name("pg2lake_slot_01").is_ok());
        for bad in [
            "",
            "Upper",
            "with space",
            "quo\"te",
            "dash-ed",
            &"x".repeat(64),
        ] {
            let err = validate_slot_name(bad).unwrap_err();
            assert!(matches!(err, ReplicationError::Config(_)), "{bad}");
        }
    }

    #[test]
    fn builds_start_replication_command() {
        assert_eq!(
            start_replication_command(
                "s",
                Lsn(0x1_0000_00A0),
                &["pub".into(), "Other's".into()],
                true
            ),
            "START_REPLICATION SLOT \"s\" LOGICAL 1/A0 (proto_version '2', streaming 'on', publication_names '\"pub\",\"Other''s\"', messages 'true')"
        );
        assert_eq!(
            start_replication_command("s", Lsn::ZERO, &["p".into()], false),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '2', streaming 'on', publication_names '\"p\"')"
        );
    }
}
