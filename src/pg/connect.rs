//! Connection settings from the config, and normal (SQL) connections over tokio-postgres
//! with the same TLS policy as the replication connection: the same rustls
//! configuration (certificate checks, client certificate) and the same channel binding
//! policy. tokio-postgres does SCRAM-SHA-256-PLUS itself, with the tls-server-end-point
//! data that tokio-postgres-rustls computes from the server certificate.

use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};
use tokio_postgres::{Client, NoTls};

use crate::config::{ChannelBinding, Config, ConfigError};
use crate::pg::replication::{self, ConnectParams, Host, ReplicationError, SslMode};

/// Errors while opening a normal connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection settings are unusable.
    #[error(transparent)]
    Params(#[from] ReplicationError),
    /// The password file could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Connecting or authenticating failed.
    #[error("could not connect to postgres at {target}: {}", driver_error(.source))]
    Connect {
        /// host:port/db.
        target: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server refused the login for a reason the settings explain (client
    /// certificate, channel binding).
    #[error(
        "could not connect to postgres at {target}: {} (fix: {fix})",
        driver_error(.source)
    )]
    Refused {
        /// host:port/db.
        target: String,
        /// What to change.
        fix: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Whether retrying may succeed: a server that is down or restarting, not a wrong
    /// password or a bad setting.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Connect { source, .. } | ConnectError::Refused { source, .. } => {
                super::sqlstate::query_error_is_transient(source)
            }
            ConnectError::Params(err) => err.is_transient(),
            ConnectError::Config(_) => false,
        }
    }
}

/// The connection parameters of `config.source`: the URL, with the password, sslmode,
/// certificate and channel binding settings layered on top.
pub fn params(config: &Config) -> Result<ConnectParams, ConnectError> {
    params_with_url(config, &config.source.url)
}

/// [`params`] for another server of the same cluster (a read replica) at `url`, with
/// the source's password and TLS settings.
pub fn params_with_url(config: &Config, url: &str) -> Result<ConnectParams, ConnectError> {
    let mut params = ConnectParams::from_url(url)?;
    if let Some(password) = config.source_password()? {
        params.password = Some(password.expose().to_owned());
    }
    params.sslmode = config.source.sslmode;
    params.channel_binding = config.source.channel_binding;
    if let Some(root) = &config.source.sslrootcert {
        params.sslrootcert = Some(root.clone());
    }
    // The pair replaces the URL's: a certificate from one place with a key from the
    // other would never match.
    if config.source.sslcert.is_some() {
        params.sslcert.clone_from(&config.source.sslcert);
        params.sslkey.clone_from(&config.source.sslkey);
    }
    params.connect_timeout = config.source.connect_timeout;
    Ok(params)
}

/// Opens a normal connection and spawns its driver task. The session settings match
/// the replication connection's (UTC, ISO dates) so text values compare equal.
pub async fn sql(params: &ConnectParams) -> Result<Client, ConnectError> {
    params.check()?;
    let mut pg = tokio_postgres::Config::new();
    match &params.host {
        Host::Tcp(host) => pg.host(host),
        Host::Unix(dir) => pg.host_path(dir),
    };
    pg.port(params.port)
        .user(&params.user)
        .dbname(&params.dbname)
        .application_name(&params.application_name)
        .options(replication::encode_options(&params.options));
    if let Some(password) = &params.password {
        pg.password(password);
    }
    if !params.connect_timeout.is_zero() {
        pg.connect_timeout(params.connect_timeout);
    }
    pg.channel_binding(match params.channel_binding {
        ChannelBinding::Disable => PgChannelBinding::Disable,
        ChannelBinding::Prefer => PgChannelBinding::Prefer,
        ChannelBinding::Require => PgChannelBinding::Require,
    });
    let connect_err = |source| refused(params, source);
    let use_tls = matches!(params.host, Host::Tcp(_)) && params.sslmode != SslMode::Disable;
    let client = if use_tls {
        pg.ssl_mode(if params.sslmode.requires_tls() {
            PgSslMode::Require
        } else {
            PgSslMode::Prefer
        });
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            replication::tls_client_config(params)?.as_ref().clone(),
        );
        let (client, connection) = pg.connect(tls).await.map_err(connect_err)?;
        tokio::spawn(drive(connection));
        client
    } else {
        pg.ssl_mode(PgSslMode::Disable);
        let (client, connection) = pg.connect(NoTls).await.map_err(connect_err)?;
        tokio::spawn(drive(connection));
        client
    };
    Ok(client)
}

/// A failed connect as [`ConnectError`], with the fix when the settings explain it.
fn refused(params: &ConnectParams, source: tokio_postgres::Error) -> ConnectError {
    let target = params.target();
    let io_cause =
        std::error::Error::source(&source).and_then(|c| c.downcast_ref::<std::io::Error>());
    let fix = if let Some(db) = source.as_db_error() {
        params.refusal_fix(db.code().code(), db.message())
    } else if let Some(fix) = io_cause.and_then(|io| params.handshake_fix(io)) {
        Some(fix.to_owned())
    } else if params.channel_binding == ChannelBinding::Require
        && driver_error(&source).contains("channel binding")
    {
        // tokio-postgres's own refusal under channel_binding require: the server let the
        // role in without SCRAM-SHA-256-PLUS (trust, password, md5, certificate, no TLS,
        // or a server that did not offer -PLUS).
        Some("channel_binding is require, so the role must log in with SCRAM-SHA-256-PLUS over tls: use scram-sha-256 for it on a hostssl line in pg_hba.conf, connect to postgres directly (not through a proxy that ends tls), or set channel_binding to prefer".to_owned())
    } else {
        None
    };
    match fix {
        Some(fix) => ConnectError::Refused {
            target,
            fix,
            source,
        },
        None => ConnectError::Connect { target, source },
    }
}

/// The driver error as one line. tokio-postgres's own text names only the kind ("db
/// error", "error performing TLS handshake"), so the cause is added: the server's
/// SQLSTATE, message, detail and hint (as the replication connection shows them), or
/// the TLS or I/O error underneath.
fn driver_error(err: &tokio_postgres::Error) -> String {
    let one_line = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(db) = err.as_db_error() {
        let mut out = format!(
            "postgres error {}: {}",
            db.code().code(),
            one_line(db.message())
        );
        if let Some(detail) = db.detail() {
            out.push_str(&format!(" (detail: {})", one_line(detail)));
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!(" (hint: {})", one_line(hint)));
        }
        return out;
    }
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {}", one_line(&cause.to_string())),
        None => err.to_string(),
    }
}

async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(err) = connection.await {
        tracing::debug!(error = %err, "postgres connection closed");
    }
}
