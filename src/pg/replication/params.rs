//! Connection parameters of the replication connection, parsed from a libpq-style URL.
//!
//! Follows libpq where pg2lake users would expect it: `postgres://` and `postgresql://`
//! schemes, percent-decoding, `?host=/dir` (or a percent-encoded host starting with `/`)
//! for a Unix socket directory, `sslmode` names and semantics, and the escaping rules of
//! the startup packet's `options` value. Differences: a URL without a host connects to
//! `localhost` over TCP (not to a compiled-in socket directory), and `sslmode=allow` is
//! rejected because "plain first, TLS if the server insists" is never what a CDC service
//! wants.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::ReplicationError;
use crate::config::ChannelBinding;
pub use crate::config::SslMode;

/// Default PostgreSQL port.
pub const DEFAULT_PORT: u16 = 5432;
/// Role used when the URL names none.
pub const DEFAULT_USER: &str = "postgres";
/// Host used when the URL names none.
pub const DEFAULT_HOST: &str = "localhost";
/// `application_name` used when the URL names none; shows in `pg_stat_replication`.
pub const DEFAULT_APPLICATION_NAME: &str = "pg2lake";
/// Time allowed for connecting, TLS and authentication when the URL names none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Session settings pg2lake always sends, on the replication connection (pgoutput's
/// text values) and the SQL one (the snapshot's COPY), so that text values are
/// unambiguous: ISO dates, the plain interval format, UTC offsets, floats that
/// round-trip exactly, bytea in hex, and `money` in the C locale (`-$1,234.56`: a fixed
/// sign, separator and two fractional digits, whatever the database's locale).
pub const SESSION_OPTIONS: [(&str, &str); 6] = [
    ("datestyle", "ISO"),
    ("intervalstyle", "postgres"),
    ("timezone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
];

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A Unix socket directory; the socket file is `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl Host {
    /// Parses a libpq host value: a value starting with `/` is a socket directory.
    pub fn parse(host: &str) -> Host {
        if host.starts_with('/') {
            Host::Unix(PathBuf::from(host))
        } else {
            // `[::1]` is how URLs write IPv6 addresses; the socket API wants it bare.
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            Host::Tcp(bare.to_owned())
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(host) => f.write_str(host),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

impl FromStr for SslMode {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(ReplicationError::Config(format!(
                "sslmode {other:?} is not supported (use disable, prefer, require, verify-ca or verify-full)"
            ))),
        }
    }
}

/// Everything needed to open a replication connection.
#[derive(Clone)]
pub struct ConnectParams {
    /// Host name, IP address or Unix socket directory.
    pub host: Host,
    /// TCP port, also the number in the Unix socket file name.
    pub port: u16,
    /// Role to log in as; needs the REPLICATION attribute.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Database whose changes are decoded.
    pub dbname: String,
    /// TLS policy; Unix sockets never use TLS.
    pub sslmode: SslMode,
    /// PEM file of trusted root certificates for verify-ca / verify-full; the system's
    /// roots when unset.
    pub sslrootcert: Option<PathBuf>,
    /// PEM client certificate (and intermediates) presented when the server asks for
    /// one; needs `sslkey`.
    pub sslcert: Option<PathBuf>,
    /// PEM private key of `sslcert`; only its path is ever shown.
    pub sslkey: Option<PathBuf>,
    /// SCRAM channel binding (SCRAM-SHA-256-PLUS over TLS), with libpq's meanings.
    pub channel_binding: ChannelBinding,
    /// Shown in `pg_stat_activity` and `pg_stat_replication`.
    pub application_name: String,
    /// Settings sent in the startup packet as `options=-c k=v ...`.
    pub options: Vec<(String, String)>,
    /// Time allowed for connecting, TLS and authentication; zero means no limit.
    pub connect_timeout: Duration,
}

/// Never prints the password.
impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("channel_binding", &self.channel_binding)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ConnectParams {
    /// Parses `postgres://user:pass@host:port/db?sslmode=..&host=/path` (libpq URL form).
    ///
    /// Defaults: host `localhost`, port 5432, user `postgres`, database = user, sslmode
    /// prefer, application name `pg2lake`, and the [`SESSION_OPTIONS`] settings. Error
    /// messages never repeat the URL, since it may hold a password.
    pub fn from_url(url: &str) -> Result<Self, ReplicationError> {
        let bad = |reason: String| ReplicationError::Config(format!("connection url: {reason}"));
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or_else(|| bad("it does not start with postgres:// or postgresql://".into()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        // An '@' only after the first '/' or '?' means the user info holds one of them
        // unescaped (as libpq reads it too): the pieces would be taken for a host, port
        // or parameter, and an error quoting them would print part of the password.
        if !authority.contains('@') && (path.contains('@') || query.contains('@')) {
            return Err(bad(
                "the part before '@' holds a '/' or '?' (fix: percent-encode them in the password or user name: / as %2F, ? as %3F, # as %23, @ as %40)".into(),
            ));
        }
        // The password may hold an unescaped '@'; the host never does.
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (authority.get(..at), authority.get(at + 1..).unwrap_or("")),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (info, None),
            },
            None => ("", None),
        };
        let (host, port) = split_host_port(hostport).map_err(bad)?;
        let mut params = ConnectParams {
            host: Host::Tcp(DEFAULT_HOST.to_owned()),
            port: DEFAULT_PORT,
            user: percent_decode(user).map_err(bad)?,
            password: password.map(percent_decode).transpose().map_err(bad)?,
            dbname: percent_decode(path).map_err(bad)?,
            sslmode: SslMode::default(),
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: ChannelBinding::default(),
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            options: SESSION_OPTIONS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        };
        if !host.is_empty() {
            params.host = Host::parse(&percent_decode(host).map_err(bad)?);
        }
        if let Some(port) = port {
            params
                .apply_query_param("port", percent_decode(port).map_err(bad)?)
                .map_err(bad)?;
        }
        for pair in query.split('&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key).map_err(bad)?;
            let value = percent_decode(value).map_err(bad)?;
            params.apply_query_param(&key, value).map_err(bad)?;
        }
        if params.user.is_empty() {
            DEFAULT_USER.clone_into(&mut params.user);
        }
        if params.dbname.is_empty() {
            params.dbname.clone_from(&params.user);
        }
        Ok(params)
    }

    fn apply_query_param(&mut self, key: &str, value: String) -> Result<(), String> {
        match key {
            "host" => {
                if value.contains(',') {
                    return Err("several hosts are not supported".into());
                }
                self.host = Host::parse(&value);
            }
            "port" => {
                self.port = value
                    .parse()
                    .map_err(|_| format!("port {value:?} is not a number from 1 to 65535"))?;
            }
            "user" => self.user = value,
            "password" => self.password = Some(value),
            "dbname" => self.dbname = value,
            "sslmode" => self.sslmode = value.parse().map_err(|e| format!("{e}"))?,
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            "sslcert" => self.sslcert = Some(PathBuf::from(value)),
            "sslkey" => self.sslkey = Some(PathBuf::from(value)),
            "channel_binding" => {
                self.channel_binding = match value.as_str() {
                    "disable" => ChannelBinding::Disable,
                    "prefer" => ChannelBinding::Prefer,
                    "require" => ChannelBinding::Require,
                    other => {
                        return Err(format!(
                            "channel_binding {other:?} is not supported (use disable, prefer or require)"
                        ));
                    }
                }
            }
            "application_name" => self.application_name = value,
            "connect_timeout" => {
                let secs: u64 = value.parse().map_err(|_| {
                    format!("connect_timeout {value:?} is not a whole number of seconds")
                })?;
                self.connect_timeout = Duration::from_secs(secs);
            }
            "options" => self.options.extend(parse_options(&value)?),
            other => return Err(format!("parameter {other:?} is not supported")),
        }
        Ok(())
    }

    /// The rules between settings that hold whatever the server does, checked before
    /// anything is sent: channel binding needs TLS, and a client certificate its key.
    pub fn check(&self) -> Result<(), ReplicationError> {
        if self.channel_binding == ChannelBinding::Require {
            if self.sslmode == SslMode::Disable {
                return Err(ReplicationError::Config(
                    "settings: channel_binding require needs tls, but sslmode is disable (fix: set sslmode to verify-full or require, or channel_binding to prefer)".into(),
                ));
            }
            if let Host::Unix(_) = self.host {
                return Err(ReplicationError::Config(
                    "settings: channel_binding require needs tls, which a unix socket connection never uses (fix: connect over tcp, or set channel_binding to prefer)".into(),
                ));
            }
        }
        match (&self.sslcert, &self.sslkey) {
            (Some(_), None) => Err(ReplicationError::Config(
                "settings: sslcert is set but sslkey is not (fix: set sslkey to the client certificate's private key, or unset both)".into(),
            )),
            (None, Some(_)) => Err(ReplicationError::Config(
                "settings: sslkey is set but sslcert is not (fix: set sslcert to the client certificate, or unset both)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The fix for a login the server refused, when these settings explain it: a missing
    /// or wrong client certificate, or a channel binding check that failed. `code` and
    /// `message` are the server's SQLSTATE and primary message (not localized codes,
    /// English messages: the server sends these before the session's lc_messages applies).
    pub fn refusal_fix(&self, code: &str, message: &str) -> Option<String> {
        if code == "28000" && message.contains("requires a valid client certificate") {
            return Some(if self.sslcert.is_none() {
                "pg2lake sent no client certificate: set sslcert and sslkey (source.sslcert, source.sslkey) to a certificate for this role signed by a CA in the server's ssl_ca_file".to_owned()
            } else {
                "the server did not accept the client certificate: it must be signed by a CA in the server's ssl_ca_file".to_owned()
            });
        }
        if code == "28000" && message.starts_with("certificate authentication failed") {
            return Some(format!(
                "the client certificate's common name (CN) must be the role name {} or be mapped to it in pg_ident.conf",
                self.user
            ));
        }
        // "SCRAM channel binding check failed": the binding data differ; "… negotiation
        // error": the client was told -PLUS was not offered, though the server offered it.
        if message.contains("channel binding check failed")
            || message.contains("channel binding negotiation error")
        {
            return Some(
                "the server's certificate is not the one pg2lake saw: something between them ends tls (a man in the middle, or a tls-terminating proxy); connect to the server directly, or set channel_binding to disable only if that proxy is trusted".to_owned(),
            );
        }
        None
    }

    /// The fix for a failed TLS handshake (`err`, as the TLS connector returned it) when
    /// it is a certificate problem an operator can fix, such as a host name the server
    /// certificate does not name.
    pub fn handshake_fix(&self, err: &std::io::Error) -> Option<&'static str> {
        super::tls::handshake_fix(err)
    }

    /// What the connection is made to, for messages: `host:port` or the socket file path.
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(host) if host.contains(':') => format!("[{host}]:{}", self.port),
            Host::Tcp(host) => format!("{host}:{}", self.port),
            Host::Unix(_) => self
                .socket_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }
    }

    /// The Unix socket file, when the host is a socket directory.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; the host keeps its brackets.
fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), String> {
    if hostport.contains(',') {
        return Err("several hosts are not supported".into());
    }
    if hostport.starts_with('[') {
        let close = hostport.find(']').ok_or("unterminated [ in the host")?;
        let (host, after) = hostport.split_at(close + 1);
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err("unexpected text after the [address]".into()),
        };
    }
    Ok(match hostport.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    })
}

/// Renders settings as the startup packet's `options` value: `-c k=v` items separated by
/// spaces, with spaces and backslashes inside them escaped by a backslash, which is how
/// the server's `pg_split_opts` reads it back.
pub fn encode_options(options: &[(String, String)]) -> String {
    let escape = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if c == '\\' || c.is_ascii_whitespace() || c == '\x0b' {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    options
        .iter()
        .map(|(k, v)| format!("-c {}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a libpq `options` value (`-c k=v`, `-ck=v` or `--k=v` items) into settings.
fn parse_options(value: &str) -> Result<Vec<(String, String)>, String> {
    let words = split_options(value);
    let mut out = Vec::new();
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        let setting = if word == "-c" {
            iter.next().ok_or("options: -c without a setting")?
        } else if let Some(rest) = word.strip_prefix("-c").or_else(|| word.strip_prefix("--")) {
            rest.to_owned()
        } else {
            return Err(format!("options: {word:?} is not a -c name=value setting"));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("options: {setting:?} is not name=value"))?;
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Splits on unescaped whitespace, dropping the escaping backslashes (`pg_split_opts`).
fn split_options(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    let mut in_word = false;
    for c in value.chars() {
        if escaped {
            current.push(c);
            escaped = false;
            in_word = true;
        } else if c == '\\' {
            escaped = true;
            in_word = true;
        } else if c.is_ascii_whitespace() || c == '\x0b' {
            if in_word {
                words.push(std::mem::take(&mut current));
                in_word = false;
            }
        } else {
            current.push(c);
            in_word = true;
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(input: &str) -> Result<String, String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid percent-encoding")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let p = ConnectParams::from_url(
            "postgres://rep%40lica:p%40ss%2Fw@db.example.com:6543/app%20db?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(p.host, Host::Tcp("db.example.com".into()));
        assert_eq!(p.port, 6543);
        assert_eq!(p.user, "rep@lica");
        assert_eq!(p.password.as_deref(), Some("p@ss/w"));
        assert_eq!(p.dbname, "app db");
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(p.application_name, "x");
        assert_eq!(p.connect_timeout, Duration::from_secs(3));
        assert_eq!(p.target(), "db.example.com:6543");
    }

    #[test]
    fn applies_defaults() {
        let p = ConnectParams::from_url("postgresql://db").unwrap();
        assert_eq!(p.host, Host::Tcp("db".into()));
        assert_eq!(p.port, 5432);
        assert_eq!(p.user, "postgres");
        assert_eq!(p.dbname, "postgres");
        assert_eq!(p.password, None);
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(p.application_name, "pg2lake");
        assert_eq!(p.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(p.options.len(), SESSION_OPTIONS.len());
        let p = ConnectParams::from_url("postgres://alice@db/").unwrap();
        assert_eq!(p.dbname, "alice", "database defaults to the user");
        let p = ConnectParams::from_url("postgres:///app").unwrap();
        assert_eq!(p.host, Host::Tcp("localhost".into()));
        let p = ConnectParams::from_url("postgres://u:p@ss@h:1/d").unwrap();
        assert_eq!((p.password.as_deref(), p.port), (Some("p@ss"), 1));
    }

    #[test]
    fn reads_unix_socket_hosts() {
        let p = ConnectParams::from_url("postgres://u@/app?host=/tmp/pg%20sock&port=5499").unwrap();
        assert_eq!(p.host, Host::Unix("/tmp/pg sock".into()));
        assert_eq!(p.target(), "/tmp/pg sock/.s.PGSQL.5499");
        let p = ConnectParams::from_url("postgres://u@%2Fvar%2Frun%2Fpostgresql/app").unwrap();
        assert_eq!(p.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!(
            p.socket_path(),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5432"))
        );
    }

    #[test]
    fn reads_ipv6_hosts() {
        let p = ConnectParams::from_url("postgres://u@[::1]:5433/app").unwrap();
        assert_eq!(p.host, Host::Tcp("::1".into()));
        assert_eq!(p.target(), "[::1]:5433");
    }

    #[test]
    fn rejects_bad_urls_without_echoing_secrets() {
        for url in [
            "mysql://u:secret@h/db",
            "postgres://u:secret@[::1/db",
            "postgres://u:secret@h:x/db",
            "postgres://u:secret@h1,h2/db",
            "postgres://u:secret@h/db?sslmode=allow",
            "postgres://u:secret@h/db?sslmode=bogus",
            "postgres://u:secret@h/db?port=99999",
            "postgres://u:secret@h/db?frobnicate=1",
            "postgres://u:secret@h/db?host=a,b",
            "postgres://u:secret@h/d%zzb",
            // An unescaped '/' or '?' in the password.
            "postgres://u:sec/ret@h:5432/db",
            "postgres://u:sec?ret@h:5432/db",
            "postgres://u:a?secret=1@h/db",
            "not a url secret",
        ] {
            let err = ConnectParams::from_url(url).unwrap_err();
            assert!(matches!(err, ReplicationError::Config(_)), "{url}: {err}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let p = ConnectParams::from_url("postgres://u:hunter2@h/db").unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn parses_sslmodes() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(mode.as_str().parse::<SslMode>().unwrap(), mode);
        }
        assert!("allow".parse::<SslMode>().is_err());
    }

    #[test]
    fn escapes_options_like_libpq() {
        let opts = vec![
            ("datestyle".to_owned(), "ISO, MDY".to_owned()),
            ("search_path".to_owned(), r"a\b".to_owned()),
            ("timezone".to_owned(), "UTC".to_owned()),
        ];
        let encoded = encode_options(&opts);
        assert_eq!(
            encoded,
            r"-c datestyle=ISO,\ MDY -c search_path=a\\b -c timezone=UTC"
        );
        // What the server reads back is what was meant.
        assert_eq!(parse_options(&encoded).unwrap(), opts);
        assert_eq!(encode_options(&[]), "");
    }

    #[test]
    fn reads_options_from_the_url() {
        let p = ConnectParams::from_url(
            "postgres://u@h/db?options=-c%20statement_timeout%3D0%20-cwork_mem=64MB%20--lock_timeout=5s",
        )
        .unwrap();
        let extra = &p.options[SESSION_OPTIONS.len()..];
        assert_eq!(
            extra,
            &[
                ("statement_timeout".to_owned(), "0".to_owned()),
                ("work_mem".to_owned(), "64MB".to_owned()),
                ("lock_timeout".to_owned(), "5s".to_owned()),
            ]
        );
        assert!(ConnectParams::from_url("postgres://u@h/db?options=-x").is_err());
        assert!(ConnectParams::from_url("postgres://u@h/db?options=-c").is_err());
    }

    #[test]
    fn reads_client_certificate_and_channel_binding_from_the_url() {
        let p = ConnectParams::from_url(
            "postgres://u@h/db?sslcert=/c/client.crt&sslkey=/c/client.key&channel_binding=require",
        )
        .unwrap();
        assert_eq!(p.sslcert, Some(PathBuf::from("/c/client.crt")));
        assert_eq!(p.sslkey, Some(PathBuf::from("/c/client.key")));
        assert_eq!(p.channel_binding, ChannelBinding::Require);
        let shown = format!("{p:?}");
        assert!(shown.contains("client.key"), "{shown}");
        let p = ConnectParams::from_url("postgres://u@h/db").unwrap();
        assert_eq!(p.channel_binding, ChannelBinding::Prefer);
        assert_eq!((p.sslcert, p.sslkey), (None, None));
        assert!(ConnectParams::from_url("postgres://u@h/db?channel_binding=allow").is_err());
    }

    #[test]
    fn checks_settings_that_cannot_work_together() {
        let ok = ConnectParams::from_url("postgres://u@h/db?channel_binding=require").unwrap();
        ok.check().unwrap();
        let mut p = ok.clone();
        p.sslmode = SslMode::Disable;
        let err = p.check().unwrap_err().to_string();
        assert!(err.contains("channel_binding require needs tls"), "{err}");
        assert!(err.contains("sslmode is disable"), "{err}");
        let mut p = ok.clone();
        p.host = Host::Unix("/run/postgresql".into());
        let err = p.check().unwrap_err().to_string();
        assert!(err.contains("unix socket"), "{err}");
        let mut p = ok.clone();
        p.sslcert = Some("/c.crt".into());
        let err = p.check().unwrap_err().to_string();
        assert!(err.contains("sslcert is set but sslkey is not"), "{err}");
        p.sslcert = None;
        p.sslkey = Some("/c.key".into());
        let err = p.check().unwrap_err().to_string();
        assert!(err.contains("sslkey is set but sslcert is not"), "{err}");
    }

    #[test]
    fn explains_refusals_the_settings_cause() {
        let p = ConnectParams::from_url("postgres://cdc@h/db").unwrap();
        let fix = p
            .refusal_fix("28000", "connection requires a valid client certificate")
            .unwrap();
        assert!(fix.contains("set sslcert and sslkey"), "{fix}");
        let fix = p
            .refusal_fix(
                "28000",
                "certificate authentication failed for user \"cdc\"",
            )
            .unwrap();
        assert!(fix.contains("role name cdc"), "{fix}");
        let fix = p
            .refusal_fix("08P01", "SCRAM channel binding check failed")
            .unwrap();
        assert!(fix.contains("something between them ends tls"), "{fix}");
        assert_eq!(
            p.refusal_fix("28P01", "password authentication failed"),
            None
        );
    }
}
