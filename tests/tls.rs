//! TLS against a real PostgreSQL serving TLS with the harness's CA: verify-full with a
//! client certificate (`cert` authentication), a server certificate for another name,
//! and SCRAM-SHA-256-PLUS channel binding, on both connection kinds (pg2lake's
//! walsender client and tokio-postgres) and through the binary.
//!
//! Channel binding is proven by a man in the middle: a TLS-terminating relay holding a
//! certificate the same CA signed for the same address. Unbound, every login through it
//! succeeds; bound, the server refuses it, because the binding data pg2lake sends (the
//! hash of the certificate it saw) is not the hash of the server's own certificate.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pg2lake::config::ChannelBinding;
use pg2lake::pg::connect::{self, ConnectError};
use pg2lake::pg::replication::{ConnectParams, ReplicationClient, ReplicationError, SslMode};
use support::service::{ConfigFile, Service, config_yaml, run_command};
use support::{PgOptions, PgServer, try_read_delta};
use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Upper bound for a pg2lake command or a wait on the lake.
const PATIENCE: Duration = Duration::from_secs(60);
/// The Postgres SSLRequest packet: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Connection parameters for `user` on `pg`, verify-full against the harness CA.
fn verify_full(pg: &PgServer, user: &str) -> ConnectParams {
    let mut p = ConnectParams::from_url(&pg.url("postgres")).expect("the harness url parses");
    p.user = user.to_owned();
    p.sslmode = SslMode::VerifyFull;
    p.sslrootcert = pg.ssl_cert_path();
    p
}

async fn query_one(client: &mut ReplicationClient, sql: &str) -> Option<String> {
    let rows = client.simple_query(sql).await.expect(sql);
    rows.into_iter().next().and_then(|row| row[0].clone())
}

/// `PG2LAKE__SOURCE__*` overrides.
fn source_env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (format!("PG2LAKE__SOURCE__{k}"), (*v).to_owned()))
        .collect()
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// Runs `pg2lake check`; (exit code, stdout, stderr).
fn check(config: &ConfigFile, env: &[(String, String)]) -> (Option<i32>, String, String) {
    let config_path = text(config.path());
    let out = run_command(&["check", "--config", &config_path], env, PATIENCE);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_with_a_client_certificate() {
    // `cert`: TLS, a client certificate the CA signed, and CN = role. No other way in for
    // the role: plain connections are rejected.
    let pg = PgServer::start_with(PgOptions {
        hba: vec![
            "hostssl all cdc 127.0.0.1/32 cert".into(),
            "host all cdc 127.0.0.1/32 reject".into(),
        ],
        ssl: true,
        ..Default::default()
    });
    let url = pg.create_database("shop").await;
    pg.connect("postgres")
        .await
        .batch_execute("CREATE ROLE cdc LOGIN REPLICATION")
        .await
        .unwrap();
    let db = pg.connect("shop").await;
    db.batch_execute(
        "GRANT CREATE ON DATABASE shop TO cdc;
         CREATE TABLE orders (id int PRIMARY KEY, item text);
         ALTER TABLE orders OWNER TO cdc;
         INSERT INTO orders VALUES (1, 'before');",
    )
    .await
    .unwrap();
    let (cert, key) = pg.client_cert("cdc");
    let (intruder_cert, intruder_key) = pg.client_cert("intruder");

    // The walsender client: in with the certificate, and the server saw it.
    let mut p = verify_full(&pg, "cdc");
    p.sslcert = Some(cert.clone());
    p.sslkey = Some(key.clone());
    let mut client = ReplicationClient::connect(&p).await.unwrap();
    assert!(client.is_tls());
    assert_eq!(
        query_one(
            &mut client,
            "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await
        .as_deref(),
        Some("/CN=cdc")
    );
    client.identify_system().await.unwrap();

    // Without it: refused, with the fix.
    let mut no_cert = verify_full(&pg, "cdc");
    let err = ReplicationClient::connect(&no_cert).await.err().unwrap();
    assert_eq!(err.code(), Some("28000"), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("connection requires a valid client certificate"),
        "{message}"
    );
    assert!(
        message.contains("pg2lake sent no client certificate: set sslcert and sslkey"),
        "{message}"
    );
    assert!(!err.is_transient());
    // Nor plain.
    no_cert.sslmode = SslMode::Disable;
    let err = ReplicationClient::connect(&no_cert).await.err().unwrap();
    assert_eq!(err.code(), Some("28000"), "{err}");

    // Another role's certificate: the CA signed it, but the CN is not the role.
    let mut other = verify_full(&pg, "cdc");
    other.sslcert = Some(intruder_cert);
    other.sslkey = Some(intruder_key);
    let err = ReplicationClient::connect(&other).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("certificate authentication failed for user \"cdc\""),
        "{err}"
    );
    assert!(err.to_string().contains("common name (CN)"), "{err}");

    // The SQL connection (tokio-postgres) presents the same certificate.
    let sql = connect::sql(&p).await.unwrap();
    let dn: Option<String> = sql
        .query_one(
            "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dn.as_deref(), Some("/CN=cdc"));
    let err = connect::sql(&verify_full(&pg, "cdc")).await.err().unwrap();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("(fix: pg2lake sent no client certificate"),
        "{err}"
    );

    // The binary, configured through the environment.
    let lake = tempfile::tempdir().unwrap();
    let cdc_url = url.replace("postgres@", "cdc@");
    let config = ConfigFile::new(&config_yaml(
        &cdc_url,
        "tls_cert",
        &["public.orders"],
        &text(lake.path()),
        "",
    ));
    let ca = text(&pg.ssl_cert_path().unwrap());
    let tls_env = source_env(&[
        ("SSLMODE", "verify-full"),
        ("SSLROOTCERT", &ca),
        ("SSLCERT", &text(&cert)),
        ("SSLKEY", &text(&key)),
    ]);

    // An unreadable key is a configuration error naming the key and its variable.
    let mut bad_key = tls_env.clone();
    bad_key[3].1 = "/nonexistent/cdc.key".into();
    let (code, _, stderr) = check(&config, &bad_key);
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains(
            "cannot read source.sslkey /nonexistent/cdc.key: no such file or directory (fix: "
        ) && line.ends_with("(set by PG2LAKE__SOURCE__SSLKEY)"),
        "{line}"
    );

    // Without the certificate, check names the refusal and the fix.
    let (code, stdout, stderr) = check(&config, &tls_env[..2]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("connection requires a valid client certificate")
            && stdout.contains("set sslcert and sslkey"),
        "{stdout}"
    );

    // With it: a snapshot row and a streamed row land in the lake.
    let mut service = Service::start(&config, &tls_env);
    service.wait_streaming(PATIENCE);
    db.batch_execute("INSERT INTO orders VALUES (2, 'streamed')")
        .await
        .unwrap();
    let table = text(&lake.path().join("public").join("orders"));
    support::wait_until(PATIENCE, "both rows in the lake", || {
        try_read_delta(&table, &[]).is_some_and(|read| read.rows.len() == 2)
    });
    let rows = try_read_delta(&table, &[]).unwrap().rows;
    let mut seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["_op"].as_str().unwrap(), r["item"].as_str().unwrap()))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [("c", "streamed"), ("r", "before")]);
    assert!(service.stop(PATIENCE).success(), "{}", service.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_refuses_a_certificate_for_another_name() {
    let mut pg = PgServer::start_with(PgOptions {
        ssl: true,
        ..Default::default()
    });
    let p = verify_full(&pg, "postgres");
    ReplicationClient::connect(&p).await.unwrap();

    // The CA still signs it, but for a name pg2lake does not connect to.
    pg.replace_server_cert(&["db.example.com"]);
    let err = ReplicationClient::connect(&p).await.err().unwrap();
    assert!(matches!(err, ReplicationError::Tls { .. }), "{err}");
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("not valid for name") && message.contains("127.0.0.1"),
        "{message}"
    );
    assert!(
        message.contains("(fix: connect with a host name the server certificate names"),
        "{message}"
    );
    let err = connect::sql(&p).await.err().unwrap();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // verify-ca checks the chain only, as in libpq.
    let mut ca_only = p.clone();
    ca_only.sslmode = SslMode::VerifyCa;
    ReplicationClient::connect(&ca_only).await.unwrap();
    connect::sql(&ca_only).await.unwrap();

    // The binary: one line naming the cause and the fix.
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(&config_yaml(
        &pg.url("postgres"),
        "tls_name",
        &["public.orders"],
        &text(lake.path()),
        "",
    ));
    let ca = text(&pg.ssl_cert_path().unwrap());
    let env = source_env(&[("SSLMODE", "verify-full"), ("SSLROOTCERT", &ca)]);
    let (code, stdout, stderr) = check(&config, &env);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("not valid for name") && stdout.contains("db.example.com"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_with_channel_binding() {
    let pg = PgServer::start_with(PgOptions {
        // SCRAM with or without TLS: the server offers SCRAM-SHA-256-PLUS only over TLS.
        hba: vec!["host all scram_cdc 127.0.0.1/32 scram-sha-256".into()],
        ssl: true,
        ..Default::default()
    });
    pg.connect("postgres")
        .await
        .batch_execute("CREATE ROLE scram_cdc LOGIN REPLICATION PASSWORD 'bound secret'")
        .await
        .unwrap();
    let scram = |binding: ChannelBinding| {
        let mut p = verify_full(&pg, "scram_cdc");
        p.password = Some("bound secret".into());
        p.channel_binding = binding;
        p
    };

    // Direct: bound logins succeed on both connection kinds, whatever the sslmode.
    for mode in [SslMode::Require, SslMode::VerifyFull] {
        let mut p = scram(ChannelBinding::Require);
        p.sslmode = mode;
        let mut client = ReplicationClient::connect(&p)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        client.identify_system().await.unwrap();
        connect::sql(&p)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
    }

    // Through a man in the middle with a certificate the CA signed for 127.0.0.1.
    let mitm = Mitm::start(&pg, false).await;
    let via = |binding: ChannelBinding| {
        let mut p = scram(binding);
        p.port = mitm.port;
        p
    };
    // Unbound, it is invisible: TLS verifies and the password exchange succeeds...
    let mut client = ReplicationClient::connect(&via(ChannelBinding::Disable))
        .await
        .unwrap();
    client.identify_system().await.unwrap();
    connect::sql(&via(ChannelBinding::Disable)).await.unwrap();
    // ...bound (require, and prefer: the default binds whenever it can), the server
    // refuses: pg2lake used SCRAM-SHA-256-PLUS, and its binding data is the hash of the
    // certificate it saw, not of the server's.
    for binding in [ChannelBinding::Require, ChannelBinding::Prefer] {
        let err = ReplicationClient::connect(&via(binding))
            .await
            .err()
            .unwrap();
        let message = err.to_string();
        assert!(
            message.contains("SCRAM channel binding check failed"),
            "{binding}: {message}"
        );
        assert!(
            message.contains("something between them ends tls"),
            "{binding}: {message}"
        );
        let err = connect::sql(&via(binding)).await.err().unwrap();
        assert!(
            matches!(err, ConnectError::Refused { .. }),
            "{binding}: {err}"
        );
        assert!(
            err.to_string()
                .contains("SCRAM channel binding check failed"),
            "{binding}: {err}"
        );
    }

    // require with nothing to bind to: one clear error each, before any password is sent.
    let mut plain = scram(ChannelBinding::Require);
    plain.sslmode = SslMode::Disable;
    let err = ReplicationClient::connect(&plain).await.err().unwrap();
    assert!(matches!(err, ReplicationError::Config(_)), "{err}");
    assert!(
        err.to_string()
            .contains("channel_binding require needs tls, but sslmode is disable (fix: "),
        "{err}"
    );
    let err = connect::sql(&plain).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("channel_binding require needs tls"),
        "{err}"
    );
    // A server (here: a relay) that refuses TLS under sslmode prefer.
    let refusing = Mitm::start(&pg, true).await;
    let mut p = scram(ChannelBinding::Require);
    p.sslmode = SslMode::Prefer;
    p.port = refusing.port;
    let err = ReplicationClient::connect(&p).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("channel_binding is require, but postgres at 127.0.0.1"),
        "{err}"
    );
    // tokio-postgres learns it only from the SASL request (no -PLUS without TLS), and
    // refuses before it sends anything derived from the password.
    let err = connect::sql(&p).await.err().unwrap();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    assert!(
        err.to_string().contains("(fix: channel_binding is require"),
        "{err}"
    );
    // prefer logs in unbound there.
    p.channel_binding = ChannelBinding::Prefer;
    let mut client = ReplicationClient::connect(&p).await.unwrap();
    assert!(!client.is_tls());
    client.identify_system().await.unwrap();
    connect::sql(&p).await.unwrap();
    // A login without SCRAM (trust for postgres): nothing was bound.
    let mut trust = verify_full(&pg, "postgres");
    trust.channel_binding = ChannelBinding::Require;
    let err = ReplicationClient::connect(&trust).await.err().unwrap();
    assert!(
        err.to_string().contains(
            "channel_binding is require, but postgres let role postgres in without SCRAM"
        ),
        "{err}"
    );
    let err = connect::sql(&trust).await.err().unwrap();
    assert!(
        err.to_string().contains("(fix: channel_binding is require"),
        "{err}"
    );

    // The binary: require with sslmode disable is a configuration error (exit 2), and
    // with TLS the connection check passes.
    let lake = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(&config_yaml(
        &pg.url("postgres").replace("postgres@", "scram_cdc@"),
        "tls_scram",
        &["public.orders"],
        &text(lake.path()),
        "",
    ));
    let mut env = source_env(&[
        ("PASSWORD", "bound secret"),
        ("CHANNEL_BINDING", "require"),
        ("SSLMODE", "disable"),
    ]);
    let (code, _, stderr) = check(&config, &env);
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("source.channel_binding is require but source.sslmode is disable"),
        "{line}"
    );
    env[2].1 = "verify-full".into();
    env.extend(source_env(&[(
        "SSLROOTCERT",
        &text(&pg.ssl_cert_path().unwrap()),
    )]));
    let (_, stdout, stderr) = check(&config, &env);
    assert!(
        stdout.contains("✓ connected to postgres at 127.0.0.1"),
        "{stdout}{stderr}"
    );
}

/// A relay on 127.0.0.1 in front of `pg` that ends TLS itself, with a certificate the
/// harness CA signed for 127.0.0.1, and opens its own TLS session to the server: what
/// an attacker holding a misissued certificate, or a TLS-terminating proxy, does. With
/// `refuse_tls` it answers the client's TLS request with "no" and relays plain bytes.
struct Mitm {
    port: u16,
    accept: tokio::task::JoinHandle<()>,
}

impl Mitm {
    async fn start(pg: &PgServer, refuse_tls: bool) -> Mitm {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let (cert, key) = pg.issue_server_cert("mitm", &["127.0.0.1", "localhost"]);
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&cert, &key)));
        let connector = TlsConnector::from(Arc::new(client_config(
            &pg.ssl_cert_path().expect("an ssl server has a CA"),
        )));
        let upstream = pg.port;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, connector) = (acceptor.clone(), connector.clone());
                tokio::spawn(async move {
                    // A relay error only ends that connection; the client reports it.
                    let _ = relay(client, upstream, acceptor, connector, refuse_tls).await;
                });
            }
        });
        Mitm { port, accept }
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: u16,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    refuse_tls: bool,
) -> std::io::Result<()> {
    let mut request = [0u8; 8];
    client.read_exact(&mut request).await?;
    assert_eq!(request, SSL_REQUEST, "pg2lake asks for TLS first");
    let mut server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    if refuse_tls {
        client.write_all(b"N").await?;
        copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    client.write_all(b"S").await?;
    let mut client = acceptor.accept(client).await?;
    server.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    server.read_exact(&mut answer).await?;
    assert_eq!(&answer, b"S", "the server serves TLS");
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut server = connector.connect(name, server).await?;
    copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

fn server_config(cert: &Path, key: &Path) -> ServerConfig {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .expect("the relay certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("the relay key");
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the relay's tls configuration")
}

fn client_config(ca: &Path) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("the harness CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("a usable CA certificate");
    }
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
