//! Connection settings from the config, and normal (SQL) connections over tokio-postgres
//! with the same TLS policy as the replication connection.

use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, NoTls};

use crate::config::{Config, ConfigError};
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
    #[error("could not connect to postgres at {target}: {source}")]
    Connect {
        /// host:port/db.
        target: String,
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
            ConnectError::Connect { source, .. } => match source.code() {
                None => true,
                Some(code) => {
                    let code = code.code();
                    code.starts_with("08") || code.starts_with("57P") || code == "53300"
                }
            },
            ConnectError::Params(err) => err.is_transient(),
            ConnectError::Config(_) => false,
        }
    }
}

/// The connection parameters of `config.source`: the URL, with the password, sslmode
/// and root certificate settings layered on top.
pub fn params(config: &Config) -> Result<ConnectParams, ConnectError> {
    let mut params = ConnectParams::from_url(&config.source.url)?;
    if let Some(password) = config.source_password()? {
        params.password = Some(password.expose().to_owned());
    }
    params.sslmode = config.source.sslmode;
    if let Some(root) = &config.source.sslrootcert {
        params.sslrootcert = Some(root.clone());
    }
    params.connect_timeout = config.source.connect_timeout;
    Ok(params)
}

/// Opens a normal connection and spawns its driver task. The session settings match
/// the replication connection's (UTC, ISO dates) so text values compare equal.
pub async fn sql(params: &ConnectParams) -> Result<Client, ConnectError> {
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
    let connect_err = |source| ConnectError::Connect {
        target: params.target(),
        source,
    };
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

async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(err) = connection.await {
        tracing::debug!(error = %err, "postgres connection closed");
    }
}
