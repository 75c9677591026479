//! The byte stream to the server and the message exchange on it: connecting (TCP or
//! Unix socket), SSLRequest and the TLS handshake, the startup packet, authentication,
//! and reading backend messages from a buffer that survives cancellation.
//!
//! Reading invariant: bytes are only ever appended to `read_buf` by `read_buf()` (which is
//! cancellation safe: a cancelled read consumed nothing), and a message is only taken off
//! the buffer once it is complete and is then handled without another `.await`. So a
//! `read_message()` future dropped at any point loses no byte and no message.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    self, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::backend::{DataRowBody, ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::ReplicationError;
use super::frame::{describe_tag, split_frame};
use super::params::{ConnectParams, Host, SslMode, encode_options};
use super::tls;
use crate::config::ChannelBinding;

/// Read in chunks of at least this size, so a stream of small messages costs few syscalls.
const READ_CHUNK: usize = 64 * 1024;
/// The `SSLRequest` answers.
const SSL_ACCEPTED: u8 = b'S';
const SSL_REFUSED: u8 = b'N';
/// Tag of `CopyBothResponse`, which `postgres_protocol`'s parser does not know.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// The transport: plain TCP, a Unix socket, or TLS over TCP.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A backend message: one `postgres_protocol` knows, or the `CopyBothResponse` it does not.
pub(crate) enum Backend {
    Message(Message),
    CopyBothResponse,
}

/// A started, authenticated connection and its buffers.
pub(crate) struct Connection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    target: String,
    tls: bool,
    parameters: HashMap<String, String>,
    backend_pid: Option<i32>,
}

impl Connection {
    /// Connects, negotiates TLS, starts up with `replication=database` and authenticates,
    /// all within `connect_timeout`.
    pub(crate) async fn connect(params: &ConnectParams) -> Result<Connection, ReplicationError> {
        params.check()?;
        let target = params.target();
        let attempt = Self::connect_inner(params, target.clone());
        if params.connect_timeout.is_zero() {
            return attempt.await;
        }
        tokio::time::timeout(params.connect_timeout, attempt)
            .await
            .map_err(|_| {
                ReplicationError::Timeout(format!(
                    "connecting to postgres at {target} (connect_timeout {}s)",
                    params.connect_timeout.as_secs_f64()
                ))
            })?
    }

    async fn connect_inner(
        params: &ConnectParams,
        target: String,
    ) -> Result<Connection, ReplicationError> {
        let connect_err = |source: io::Error| ReplicationError::Connect {
            target: target.clone(),
            source,
        };
        let stream = match &params.host {
            Host::Unix(_) => {
                let path = params.socket_path().unwrap_or_default();
                Stream::Unix(UnixStream::connect(&path).await.map_err(connect_err)?)
            }
            Host::Tcp(host) => {
                let tcp = TcpStream::connect((host.as_str(), params.port))
                    .await
                    .map_err(connect_err)?;
                // Status updates are tiny and latency matters more than packet count.
                tcp.set_nodelay(true).map_err(connect_err)?;
                negotiate_tls(tcp, params, &target).await?
            }
        };
        let tls = matches!(stream, Stream::Tls(_));
        if params.channel_binding == ChannelBinding::Require && !tls {
            // Checked before the startup packet, so nothing about the role goes out in
            // the clear.
            return Err(ReplicationError::Auth(format!(
                "channel_binding is require, but postgres at {target} does not accept tls (fix: enable ssl on the server, or set channel_binding to prefer)"
            )));
        }
        let mut conn = Connection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            target,
            tls,
            parameters: HashMap::new(),
            backend_pid: None,
        };
        conn.startup(params).await?;
        tracing::debug!(target = %conn.target, tls = conn.tls, user = %params.user, "replication connection ready");
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnectParams) -> Result<(), ReplicationError> {
        let options = encode_options(&params.options);
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            // A walsender that also accepts SQL and decodes this database's WAL.
            ("replication", "database"),
            ("application_name", params.application_name.as_str()),
            // pgoutput converts text values to the client encoding: ask for UTF-8.
            ("client_encoding", "UTF8"),
        ];
        if !options.is_empty() {
            startup.push(("options", options.as_str()));
        }
        frontend::startup_message(startup, &mut self.write_buf).map_err(|e| {
            ReplicationError::Config(format!("startup parameters cannot be sent: {e}"))
        })?;
        self.flush_write_buf().await?;
        self.authenticate(params).await?;
        loop {
            match self.read_message().await? {
                Backend::Message(Message::BackendKeyData(body)) => {
                    self.backend_pid = Some(body.process_id());
                }
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(()),
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()));
                }
                other => return Err(unexpected(&other, "after authentication")),
            }
        }
    }

    async fn authenticate(&mut self, params: &ConnectParams) -> Result<(), ReplicationError> {
        // Whether a SCRAM-SHA-256-PLUS exchange completed, for channel_binding require.
        let mut bound = false;
        loop {
            match self.read_message().await? {
                Backend::Message(Message::AuthenticationOk) => {
                    if params.channel_binding == ChannelBinding::Require && !bound {
                        return Err(ReplicationError::Auth(format!(
                            "channel_binding is require, but postgres let role {} in without SCRAM (trust or certificate authentication), so nothing was bound to the tls session (fix: use scram-sha-256 for this role in pg_hba.conf, or set channel_binding to prefer)",
                            params.user
                        )));
                    }
                    return Ok(());
                }
                Backend::Message(Message::AuthenticationCleartextPassword) => {
                    refuse_unbound(params, "a cleartext password")?;
                    let password = password(params, "a cleartext password")?;
                    frontend::password_message(password.as_bytes(), &mut self.write_buf)
                        .map_err(nul_in_password)?;
                    self.flush_write_buf().await?;
                }
                Backend::Message(Message::AuthenticationMd5Password(body)) => {
                    refuse_unbound(params, "an md5 password")?;
                    let password = password(params, "an md5 password")?;
                    let hash = md5_hash(params.user.as_bytes(), password.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(nul_in_password)?;
                    self.flush_write_buf().await?;
                }
                Backend::Message(Message::AuthenticationSasl(body)) => {
                    let mut offered = Vec::new();
                    let mut mechanisms = body.mechanisms();
                    while let Some(mechanism) = mechanisms.next().map_err(|e| {
                        ReplicationError::Protocol(format!("malformed SASL mechanism list: {e}"))
                    })? {
                        offered.push(mechanism.to_owned());
                    }
                    bound = self.scram(params, &offered).await?;
                }
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(with_refusal_fix(server_error(body.fields()), params));
                }
                Backend::Message(Message::AuthenticationGss)
                | Backend::Message(Message::AuthenticationGssContinue(_)) => {
                    return Err(unsupported_auth("GSSAPI"));
                }
                Backend::Message(Message::AuthenticationSspi) => {
                    return Err(unsupported_auth("SSPI"));
                }
                Backend::Message(Message::AuthenticationKerberosV5) => {
                    return Err(unsupported_auth("Kerberos V5"));
                }
                Backend::Message(Message::AuthenticationScmCredential) => {
                    return Err(unsupported_auth("SCM credential"));
                }
                other => return Err(unexpected(&other, "during authentication")),
            }
        }
    }

    /// SCRAM-SHA-256, with channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point)
    /// when [`choose_scram`] says so. Returns whether the exchange was bound.
    async fn scram(
        &mut self,
        params: &ConnectParams,
        offered: &[String],
    ) -> Result<bool, ReplicationError> {
        let end_point = match &self.stream {
            Stream::Tls(tls) => Some(match tls.get_ref().1.peer_certificates() {
                Some([cert, ..]) => tls::tls_server_end_point(cert),
                _ => Err("the server presented no certificate".to_owned()),
            }),
            Stream::Tcp(_) | Stream::Unix(_) => None,
        };
        let choice = choose_scram(offered, params.channel_binding, end_point)?;
        let bound = matches!(choice, ScramChoice::Plus(_));
        let (mechanism, binding) = match choice {
            ScramChoice::Plus(data) => (
                SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(data),
            ),
            ScramChoice::Plain { client_can_bind } => (
                SCRAM_SHA_256,
                if client_can_bind {
                    sasl::ChannelBinding::unrequested()
                } else {
                    sasl::ChannelBinding::unsupported()
                },
            ),
        };
        tracing::debug!(mechanism, "scram authentication");
        let password = password(params, "a SCRAM-SHA-256 password")?;
        let mut scram = ScramSha256::new(password.as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, scram.message(), &mut self.write_buf)
            .map_err(|e| ReplicationError::Protocol(format!("SASL initial response: {e}")))?;
        self.flush_write_buf().await?;
        match self.read_message().await? {
            Backend::Message(Message::AuthenticationSaslContinue(body)) => {
                scram.update(body.data()).map_err(|e| {
                    ReplicationError::Auth(format!("SCRAM-SHA-256 server challenge rejected: {e}"))
                })?;
            }
            Backend::Message(Message::ErrorResponse(body)) => {
                return Err(with_refusal_fix(server_error(body.fields()), params));
            }
            other => return Err(unexpected(&other, "during SCRAM authentication")),
        }
        frontend::sasl_response(scram.message(), &mut self.write_buf)
            .map_err(|e| ReplicationError::Protocol(format!("SASL response: {e}")))?;
        self.flush_write_buf().await?;
        match self.read_message().await? {
            Backend::Message(Message::AuthenticationSaslFinal(body)) => {
                // Verifies the server's signature: proves the server knows the password too
                // (and, bound, that it saw the same certificate: the binding data is part
                // of what it signed).
                scram.finish(body.data()).map_err(|e| {
                    ReplicationError::Auth(format!(
                        "SCRAM-SHA-256 server signature did not verify: {e}"
                    ))
                })?;
                Ok(bound)
            }
            Backend::Message(Message::ErrorResponse(body)) => {
                Err(with_refusal_fix(server_error(body.fields()), params))
            }
            other => Err(unexpected(&other, "during SCRAM authentication")),
        }
    }

    /// Reads the next backend message, handling NoticeResponse (logged) and
    /// ParameterStatus (remembered) itself. Cancellation safe (see the module doc).
    pub(crate) async fn read_message(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            while let Some((tag, frame)) = split_frame(&mut self.read_buf)? {
                match decode(tag, frame)? {
                    Backend::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                    Backend::Message(Message::ParameterStatus(body)) => {
                        if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                            self.parameters.insert(name.to_owned(), value.to_owned());
                        }
                    }
                    Backend::Message(Message::NotificationResponse(_)) => {}
                    other => return Ok(other),
                }
            }
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
                self.read_buf.reserve(READ_CHUNK);
            }
            let read = self
                .stream
                .read_buf(&mut self.read_buf)
                .await
                .map_err(ReplicationError::Io)?;
            if read == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    /// The write buffer, for a frontend message to be encoded into before `flush_write_buf`.
    pub(crate) fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Sends everything in the write buffer. Not cancellation safe: a cancelled call may
    /// leave half a message on the wire, after which the connection must be dropped.
    pub(crate) async fn flush_write_buf(&mut self) -> Result<(), ReplicationError> {
        let result = async {
            self.stream.write_all(&self.write_buf).await?;
            // TLS buffers records; without a flush a status update could sit unsent.
            self.stream.flush().await
        }
        .await;
        self.write_buf.clear();
        result.map_err(ReplicationError::Io)
    }

    /// A server parameter reported by ParameterStatus (`server_version`, `TimeZone`, …).
    pub(crate) fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The walsender's process id, from BackendKeyData.
    pub(crate) fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Sends SSLRequest unless TLS is disabled, and upgrades the stream when the server agrees.
async fn negotiate_tls(
    mut tcp: TcpStream,
    params: &ConnectParams,
    target: &str,
) -> Result<Stream, ReplicationError> {
    if params.sslmode == SslMode::Disable {
        return Ok(Stream::Tcp(tcp));
    }
    // Fail on bad TLS settings before anything goes on the wire.
    let (connector, server_name) = tls::connector(params)?;
    let connect_err = |source: io::Error| ReplicationError::Connect {
        target: target.to_owned(),
        source,
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(connect_err)?;
    // Exactly one byte: anything the server sent after it before the handshake must not be
    // read as if it were protected (CVE-2021-23222).
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(connect_err)?;
    match answer[0] {
        SSL_ACCEPTED => {
            let tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|source| ReplicationError::Tls {
                    target: target.to_owned(),
                    source: tls::handshake_error(source),
                })?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        SSL_REFUSED if params.sslmode.requires_tls() => Err(ReplicationError::Tls {
            target: target.to_owned(),
            source: io::Error::other(format!(
                "the server does not accept tls but sslmode is {} (fix: enable ssl on the server or set sslmode to prefer or disable)",
                params.sslmode
            )),
        }),
        SSL_REFUSED => Ok(Stream::Tcp(tcp)),
        other => Err(ReplicationError::Protocol(format!(
            "unexpected answer {} to the tls request",
            describe_tag(other)
        ))),
    }
}

/// Decodes one complete frame; `W` by hand, the rest with `postgres_protocol`.
fn decode(tag: u8, mut frame: BytesMut) -> Result<Backend, ReplicationError> {
    if tag == COPY_BOTH_RESPONSE_TAG {
        // Body: overall format, column count, per-column formats. A walsender sends
        // "text, no columns" and its CopyData payloads are binary regardless, so the body
        // carries nothing to act on.
        return Ok(Backend::CopyBothResponse);
    }
    match Message::parse(&mut frame) {
        Ok(Some(message)) => Ok(Backend::Message(message)),
        Ok(None) => Err(ReplicationError::Protocol(format!(
            "incomplete backend message {}",
            describe_tag(tag)
        ))),
        Err(e) => Err(ReplicationError::Protocol(format!(
            "malformed backend message {}: {e}",
            describe_tag(tag)
        ))),
    }
}

/// A DataRow as text values.
pub(crate) fn decode_row(body: &DataRowBody) -> Result<Vec<Option<String>>, ReplicationError> {
    let malformed = |e: String| ReplicationError::Protocol(format!("malformed DataRow: {e}"));
    let buffer = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    while let Some(range) = ranges.next().map_err(|e| malformed(e.to_string()))? {
        let value = match range {
            None => None,
            Some(range) => {
                let bytes = buffer
                    .get(range)
                    .ok_or_else(|| malformed("value out of bounds".into()))?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| malformed("value is not UTF-8".into()))?;
                Some(text.to_owned())
            }
        };
        row.push(value);
    }
    Ok(row)
}

/// The fields of an ErrorResponse as a [`ReplicationError::Server`].
pub(crate) fn server_error(mut fields: ErrorFields<'_>) -> ReplicationError {
    let mut severity = None;
    let mut localized_severity = None;
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    let mut hint = None;
    // A malformed field list still yields what was read before the damage.
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => severity = Some(value),
            b'S' => localized_severity = Some(value),
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    ReplicationError::Server {
        severity: severity.or(localized_severity).unwrap_or_default(),
        code,
        message,
        detail,
        hint,
    }
}

fn log_notice(fields: ErrorFields<'_>) {
    if let ReplicationError::Server {
        severity,
        code,
        message,
        ..
    } = server_error(fields)
    {
        tracing::debug!(%severity, %code, %message, "postgres notice on replication connection");
    }
}

/// A refused login's server error, with pg2lake's fix added to the hint when the
/// settings explain the refusal (see [`ConnectParams::refusal_fix`]).
fn with_refusal_fix(mut err: ReplicationError, params: &ConnectParams) -> ReplicationError {
    if let ReplicationError::Server {
        code,
        message,
        hint,
        ..
    } = &mut err
        && let Some(fix) = params.refusal_fix(code, message)
    {
        *hint = Some(match hint.take() {
            Some(hint) => format!("{hint}; {fix}"),
            None => fix,
        });
    }
    err
}

/// What to answer a SASL request with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScramChoice {
    /// SCRAM-SHA-256-PLUS bound to this tls-server-end-point data.
    Plus(Vec<u8>),
    /// SCRAM-SHA-256 unbound. `client_can_bind` is the gs2 flag `y` ("I could bind, but
    /// you did not offer it"), which lets a server that did offer -PLUS detect that an
    /// attacker stripped it from the list; `n` otherwise.
    Plain {
        /// Whether this client could have bound.
        client_can_bind: bool,
    },
}

/// Picks the SASL mechanism, as libpq does: -PLUS whenever the connection is TLS, the
/// server offers it, the certificate's binding data can be computed and the policy is
/// not `disable`. `end_point` is `None` without TLS, else the binding data or why there
/// is none. Under `require`, every unbound outcome is an error naming its cause.
fn choose_scram(
    offered: &[String],
    policy: ChannelBinding,
    end_point: Option<Result<Vec<u8>, String>>,
) -> Result<ScramChoice, ReplicationError> {
    let plus_offered = offered.iter().any(|m| m == SCRAM_SHA_256_PLUS);
    let plain_offered = offered.iter().any(|m| m == SCRAM_SHA_256);
    if !plus_offered && !plain_offered {
        return Err(ReplicationError::Auth(format!(
            "postgres offered SASL mechanisms {offered:?}, none of which pg2lake supports (fix: allow SCRAM-SHA-256 for this role)"
        )));
    }
    let end_point = match policy {
        ChannelBinding::Disable => None,
        ChannelBinding::Prefer | ChannelBinding::Require => end_point,
    };
    let unbound = match end_point {
        Some(Ok(data)) if plus_offered => return Ok(ScramChoice::Plus(data)),
        Some(Ok(_)) => (
            true,
            "postgres did not offer SCRAM-SHA-256-PLUS (fix: connect to postgres directly rather than through a pooler or proxy that ends tls, or set channel_binding to prefer)".to_owned(),
        ),
        Some(Err(reason)) => (
            false,
            format!(
                "{reason} (fix: give the server a certificate signed with ECDSA or RSA and SHA-256, or set channel_binding to prefer)"
            ),
        ),
        None => (
            false,
            "the connection does not use tls (fix: set sslmode to verify-full or require)"
                .to_owned(),
        ),
    };
    let (client_can_bind, why) = unbound;
    if policy == ChannelBinding::Require {
        return Err(ReplicationError::Auth(format!(
            "channel_binding is require, but {why}"
        )));
    }
    if !plain_offered {
        return Err(ReplicationError::Auth(format!(
            "postgres offered only SCRAM-SHA-256-PLUS, but {why}"
        )));
    }
    Ok(ScramChoice::Plain { client_can_bind })
}

/// Under `channel_binding: require`, refuses to send a password outside SCRAM, where
/// nothing binds it to the tls session.
fn refuse_unbound(params: &ConnectParams, what: &str) -> Result<(), ReplicationError> {
    if params.channel_binding == ChannelBinding::Require {
        return Err(ReplicationError::Auth(format!(
            "channel_binding is require, but postgres asked for {what} for role {}, which cannot be bound to the tls session (fix: use scram-sha-256 for this role in pg_hba.conf, or set channel_binding to prefer)",
            params.user
        )));
    }
    Ok(())
}

fn password<'a>(params: &'a ConnectParams, what: &str) -> Result<&'a str, ReplicationError> {
    params.password.as_deref().ok_or_else(|| {
        ReplicationError::Auth(format!(
            "postgres asked for {what} for role {}, but none is configured (fix: configure the source password)",
            params.user
        ))
    })
}

fn nul_in_password(_: io::Error) -> ReplicationError {
    ReplicationError::Auth("the configured password contains a NUL byte".into())
}

fn unsupported_auth(method: &str) -> ReplicationError {
    ReplicationError::Auth(format!(
        "postgres asked for {method} authentication, which pg2lake does not support (fix: use scram-sha-256, md5 or password for this role in pg_hba.conf)"
    ))
}

/// A message that has no place at this point of the exchange.
pub(crate) fn unexpected(message: &Backend, context: &str) -> ReplicationError {
    let name = match message {
        Backend::CopyBothResponse => "CopyBothResponse",
        Backend::Message(m) => match m {
            Message::AuthenticationOk
            | Message::AuthenticationCleartextPassword
            | Message::AuthenticationMd5Password(_)
            | Message::AuthenticationSasl(_)
            | Message::AuthenticationSaslContinue(_)
            | Message::AuthenticationSaslFinal(_) => "an authentication request",
            Message::BackendKeyData(_) => "BackendKeyData",
            Message::CommandComplete(_) => "CommandComplete",
            Message::CopyData(_) => "CopyData",
            Message::CopyDone => "CopyDone",
            Message::CopyInResponse(_) => "CopyInResponse",
            Message::CopyOutResponse(_) => "CopyOutResponse",
            Message::DataRow(_) => "DataRow",
            Message::EmptyQueryResponse => "EmptyQueryResponse",
            Message::ReadyForQuery(_) => "ReadyForQuery",
            Message::RowDescription(_) => "RowDescription",
            _ => "a backend message",
        },
    };
    ReplicationError::Protocol(format!("unexpected {name} {context}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(mechanisms: &[&str]) -> Vec<String> {
        mechanisms.iter().map(|m| (*m).to_owned()).collect()
    }

    const BOTH: &[&str] = &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256];

    fn data() -> Option<Result<Vec<u8>, String>> {
        Some(Ok(vec![7; 32]))
    }

    #[test]
    fn binds_whenever_it_can_unless_disabled() {
        for policy in [ChannelBinding::Prefer, ChannelBinding::Require] {
            assert_eq!(
                choose_scram(&offered(BOTH), policy, data()).unwrap(),
                ScramChoice::Plus(vec![7; 32]),
                "{policy}"
            );
        }
        assert_eq!(
            choose_scram(&offered(BOTH), ChannelBinding::Disable, data()).unwrap(),
            ScramChoice::Plain {
                client_can_bind: false
            }
        );
    }

    #[test]
    fn prefer_falls_back_with_the_right_gs2_flag() {
        // TLS, but -PLUS not offered: `y`, so a server that did offer it sees the downgrade.
        assert_eq!(
            choose_scram(&offered(&[SCRAM_SHA_256]), ChannelBinding::Prefer, data()).unwrap(),
            ScramChoice::Plain {
                client_can_bind: true
            }
        );
        // No TLS, or a certificate without binding data: `n`.
        for end_point in [None, Some(Err("Ed25519".to_owned()))] {
            assert_eq!(
                choose_scram(&offered(BOTH), ChannelBinding::Prefer, end_point).unwrap(),
                ScramChoice::Plain {
                    client_can_bind: false
                }
            );
        }
    }

    #[test]
    fn require_names_why_it_cannot_bind() {
        let reason = |offer: &[&str], end_point| {
            choose_scram(&offered(offer), ChannelBinding::Require, end_point)
                .unwrap_err()
                .to_string()
        };
        let err = reason(&[SCRAM_SHA_256], data());
        assert!(err.contains("did not offer SCRAM-SHA-256-PLUS"), "{err}");
        let err = reason(BOTH, None);
        assert!(err.contains("does not use tls"), "{err}");
        let err = reason(BOTH, Some(Err("signed with Ed25519".into())));
        assert!(err.contains("signed with Ed25519"), "{err}");
        for err in [reason(&[SCRAM_SHA_256], data()), reason(BOTH, None)] {
            assert!(err.contains("channel_binding is require"), "{err}");
            assert!(err.contains("(fix: "), "{err}");
        }
    }

    #[test]
    fn unknown_mechanisms_are_refused() {
        let err =
            choose_scram(&offered(&["SCRAM-SHA-512"]), ChannelBinding::Prefer, None).unwrap_err();
        assert!(err.to_string().contains("none of which"), "{err}");
        // Only -PLUS offered and no TLS: nothing this client can do.
        let err = choose_scram(
            &offered(&[SCRAM_SHA_256_PLUS]),
            ChannelBinding::Prefer,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("only SCRAM-SHA-256-PLUS"), "{err}");
    }

    #[test]
    fn refusals_get_the_fix_as_hint() {
        let mut params = ConnectParams::from_url("postgres://cdc@db/app").unwrap();
        let refused = |params: &ConnectParams, message: &str, hint: Option<&str>| {
            with_refusal_fix(
                ReplicationError::Server {
                    severity: "FATAL".into(),
                    code: "28000".into(),
                    message: message.into(),
                    detail: None,
                    hint: hint.map(str::to_owned),
                },
                params,
            )
            .to_string()
        };
        let err = refused(
            &params,
            "connection requires a valid client certificate",
            None,
        );
        assert!(
            err.contains("(hint: pg2lake sent no client certificate"),
            "{err}"
        );
        params.sslcert = Some("/c.crt".into());
        let err = refused(
            &params,
            "connection requires a valid client certificate",
            None,
        );
        assert!(
            err.contains("did not accept the client certificate"),
            "{err}"
        );
        let err = refused(
            &params,
            "certificate authentication failed for user \"cdc\"",
            Some("server hint"),
        );
        assert!(
            err.contains("(hint: server hint; the client certificate's common name"),
            "{err}"
        );
        let err = refused(
            &params,
            "password authentication failed for user \"cdc\"",
            None,
        );
        assert!(!err.contains("hint"), "{err}");
    }
}
