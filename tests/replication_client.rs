//! The walsender client against a real PostgreSQL: authentication methods, TLS modes,
//! Unix sockets, replication commands, streaming, status updates and cancellation safety.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use pg2lake::lsn::Lsn;
use pg2lake::pg::replication::{
    ConnectParams, Host, ReplicationClient, ReplicationError, ReplicationMessage,
    ReplicationStream, SlotSnapshot, SslMode, StandbyStatus,
};
use support::{PgOptions, PgServer};

/// Upper bound for any wait on the server in these tests.
const PATIENCE: Duration = Duration::from_secs(30);

fn params(pg: &PgServer, db: &str) -> ConnectParams {
    ConnectParams::from_url(&pg.url(db)).expect("the harness url parses")
}

fn as_user(pg: &PgServer, db: &str, user: &str, password: Option<&str>) -> ConnectParams {
    let mut p = params(pg, db);
    p.user = user.to_owned();
    p.password = password.map(str::to_owned);
    p
}

async fn query_one(client: &mut ReplicationClient, sql: &str) -> Option<String> {
    let rows = client.simple_query(sql).await.expect(sql);
    assert_eq!(rows.len(), 1, "{sql}");
    rows[0][0].clone()
}

/// The next message, failing the test if none arrives in time.
async fn next(stream: &mut ReplicationStream) -> ReplicationMessage {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a replication message in time")
        .expect("no replication error")
        .expect("the stream did not end")
}

/// The end LSN of a pgoutput Commit message: 'C', flags, commit LSN, end LSN, timestamp.
fn commit_end_lsn(data: &[u8]) -> Lsn {
    assert_eq!(data[0], b'C');
    Lsn(u64::from_be_bytes(
        data[10..18].try_into().expect("8 bytes"),
    ))
}

/// The first column of a pgoutput Insert as text: 'I', relid, 'N', ncols, 't', len, bytes.
fn insert_first_column(data: &[u8]) -> String {
    assert_eq!(data[0], b'I');
    assert_eq!(data[5], b'N');
    assert_eq!(data[8], b't');
    let len = u32::from_be_bytes(data[9..13].try_into().expect("4 bytes")) as usize;
    String::from_utf8(data[13..13 + len].to_vec()).expect("utf-8 id")
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_auth_and_identify_system() {
    let pg = PgServer::start();
    pg.create_database("app").await;
    let mut client = ReplicationClient::connect(&params(&pg, "app"))
        .await
        .unwrap();
    assert!(
        !client.is_tls(),
        "a server without ssl answers 'N' to prefer"
    );
    assert!(client.backend_pid().is_some());
    assert!(client.server_parameter("server_version").is_some());
    let system = client.identify_system().await.unwrap();
    assert_eq!(system.dbname.as_deref(), Some("app"));
    assert_eq!(system.timeline, 1);
    assert!(system.xlogpos > Lsn::ZERO);
    assert!(!system.systemid.is_empty());
    // The session settings pgoutput's text output depends on were applied.
    assert_eq!(
        query_one(&mut client, "SHOW timezone").await.as_deref(),
        Some("UTC")
    );
    assert_eq!(
        query_one(&mut client, "SHOW datestyle").await.as_deref(),
        Some("ISO, MDY")
    );
    assert_eq!(
        query_one(&mut client, "SHOW extra_float_digits")
            .await
            .as_deref(),
        Some("3")
    );
    // SQL errors leave the connection usable.
    let err = client
        .simple_query("SELECT * FROM missing")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42P01"), "{err}");
    assert_eq!(query_one(&mut client, "SELECT NULL").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn password_md5_and_scram_authentication() {
    let pg = PgServer::start_with(PgOptions {
        hba: vec![
            "host all pw_user 127.0.0.1/32 password".into(),
            "host all md5_user 127.0.0.1/32 md5".into(),
            "host all scram_user 127.0.0.1/32 scram-sha-256".into(),
        ],
        ..Default::default()
    });
    pg.create_database("app").await;
    pg.connect("postgres")
        .await
        .batch_execute(
            "CREATE ROLE pw_user LOGIN REPLICATION PASSWORD 'clear text';
             SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram ünïcode';",
        )
        .await
        .unwrap();
    for (user, password) in [
        ("pw_user", "clear text"),
        ("md5_user", "md5 secret"),
        ("scram_user", "scram ünïcode"),
    ] {
        let mut client = ReplicationClient::connect(&as_user(&pg, "app", user, Some(password)))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let system = client.identify_system().await.unwrap();
        assert_eq!(system.dbname.as_deref(), Some("app"), "{user}");
        assert_eq!(
            query_one(&mut client, "SELECT current_user")
                .await
                .as_deref(),
            Some(user)
        );

        let err = ReplicationClient::connect(&as_user(&pg, "app", user, Some("wrong")))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, ReplicationError::Server { code, .. } if code == "28P01"),
            "{user}: {err}"
        );
        assert!(!err.is_transient(), "{user}: a wrong password is definite");

        let err = ReplicationClient::connect(&as_user(&pg, "app", user, None))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ReplicationError::Auth(_)), "{user}: {err}");
        assert!(err.to_string().contains("none is configured"), "{err}");
        assert!(!err.is_transient());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn definite_and_transient_connection_errors() {
    let pg = PgServer::start();
    pg.connect("postgres")
        .await
        .batch_execute("CREATE ROLE plain LOGIN")
        .await
        .unwrap();
    let err = ReplicationClient::connect(&as_user(&pg, "postgres", "plain", None))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some("42501"), "{err}");
    assert!(!err.is_transient());

    let err = ReplicationClient::connect(&params(&pg, "no_such_db"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some("3D000"), "{err}");
    assert!(!err.is_transient());

    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut p = params(&pg, "postgres");
    p.port = unused;
    let err = ReplicationClient::connect(&p).await.err().unwrap();
    assert!(matches!(err, ReplicationError::Connect { .. }), "{err}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains(&format!(
            "could not connect to postgres at 127.0.0.1:{unused}"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_connection() {
    let pg = PgServer::start();
    let mut p = params(&pg, "postgres");
    p.host = Host::Unix(pg.socket_dir());
    // TLS is never attempted on a socket, even when required.
    p.sslmode = SslMode::Require;
    let mut client = ReplicationClient::connect(&p).await.unwrap();
    assert!(!client.is_tls());
    assert_eq!(
        client.identify_system().await.unwrap().dbname.as_deref(),
        Some("postgres")
    );

    let url = format!(
        "postgres://postgres@/postgres?host={}&port={}",
        pg.socket_dir().display(),
        pg.port
    );
    let p = ConnectParams::from_url(&url).unwrap();
    assert_eq!(p.host, Host::Unix(pg.socket_dir()));
    ReplicationClient::connect(&p).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_modes() {
    let pg = PgServer::start_with(PgOptions {
        hba: vec!["hostssl all scram_user 127.0.0.1/32 scram-sha-256".into()],
        ssl: true,
        ..Default::default()
    });
    pg.connect("postgres")
        .await
        .batch_execute("CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'over tls'")
        .await
        .unwrap();
    let ssl_in_use = "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let root = pg
        .ssl_cert_path()
        .expect("an ssl server has a CA certificate");

    for (mode, rootcert, encrypted) in [
        (SslMode::Disable, None, false),
        (SslMode::Prefer, None, true),
        (SslMode::Require, None, true),
        (SslMode::VerifyCa, Some(root.clone()), true),
        (SslMode::VerifyFull, Some(root.clone()), true),
    ] {
        let mut p = params(&pg, "postgres");
        p.sslmode = mode;
        p.sslrootcert = rootcert;
        let mut client = ReplicationClient::connect(&p)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(client.is_tls(), encrypted, "{mode}");
        let expected = if encrypted { "true" } else { "false" };
        assert_eq!(
            query_one(&mut client, ssl_in_use).await.as_deref(),
            Some(expected),
            "{mode}"
        );
        client.identify_system().await.unwrap();
    }

    // verify-full checks the name the client used: the certificate names localhost too.
    let mut p = params(&pg, "postgres");
    p.host = Host::Tcp("localhost".into());
    p.sslmode = SslMode::VerifyFull;
    p.sslrootcert = Some(root.clone());
    ReplicationClient::connect(&p).await.unwrap();

    // SCRAM over TLS: the server offers SCRAM-SHA-256-PLUS too; plain SCRAM must still work.
    let mut p = as_user(&pg, "postgres", "scram_user", Some("over tls"));
    p.sslmode = SslMode::Require;
    let mut client = ReplicationClient::connect(&p).await.unwrap();
    assert_eq!(
        query_one(&mut client, ssl_in_use).await.as_deref(),
        Some("true")
    );

    // A self-signed certificate is not trusted by the system roots.
    let mut p = params(&pg, "postgres");
    p.sslmode = SslMode::VerifyCa;
    let err = ReplicationClient::connect(&p).await.err().unwrap();
    assert!(matches!(err, ReplicationError::Tls { .. }), "{err}");
    assert!(!err.is_transient(), "{err}");

    let mut p = params(&pg, "postgres");
    p.sslmode = SslMode::VerifyCa;
    p.sslrootcert = Some(PathBuf::from("/nonexistent/root.crt"));
    let err = ReplicationClient::connect(&p).await.err().unwrap();
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_changes_and_confirms_positions() {
    let pg = PgServer::start();
    pg.create_database("app").await;
    let sql = pg.connect("app").await;
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE PUBLICATION \"my pub's\" FOR TABLE t;",
    )
    .await
    .unwrap();

    let mut client = ReplicationClient::connect(&params(&pg, "app"))
        .await
        .unwrap();
    let err = client
        .create_logical_slot("Bad Name", SlotSnapshot::NoExport)
        .await
        .unwrap_err();
    assert!(matches!(err, ReplicationError::Config(_)), "{err}");
    let slot = client
        .create_logical_slot("my_slot", SlotSnapshot::NoExport)
        .await
        .unwrap();
    assert_eq!(slot.slot_name, "my_slot");
    assert!(slot.consistent_point > Lsn::ZERO);
    assert_eq!(slot.snapshot_name, None);
    let exported = client
        .create_logical_slot("exported", SlotSnapshot::Export)
        .await
        .unwrap();
    assert!(exported.snapshot_name.is_some());
    let err = client
        .create_logical_slot("exported", SlotSnapshot::NoExport)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42710"), "{err}");

    sql.batch_execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        .await
        .unwrap();
    sql.batch_execute("SELECT pg_logical_emit_message(true, 'pg2lake', 'hello')")
        .await
        .unwrap();

    let mut stream = client
        .start_logical_replication(&slot.slot_name, Lsn::ZERO, &["my pub's".to_owned()], true)
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let commit_end = loop {
        match next(&mut stream).await {
            ReplicationMessage::XLogData {
                data,
                wal_start,
                wal_end,
                ..
            } => {
                assert!(wal_end >= wal_start || wal_start == Lsn::ZERO);
                kinds.push(data[0]);
                if data[0] == b'C' {
                    break commit_end_lsn(&data);
                }
            }
            ReplicationMessage::PrimaryKeepalive {
                reply_requested, ..
            } => {
                assert!(
                    !reply_requested,
                    "no keepalive should need a reply this soon"
                );
            }
        }
    };
    assert_eq!(
        kinds,
        b"BRIIC".to_vec(),
        "begin, relation, two inserts, commit"
    );
    // The transactional logical message is its own transaction.
    let mut kinds = Vec::new();
    loop {
        if let ReplicationMessage::XLogData { data, .. } = next(&mut stream).await {
            kinds.push(data[0]);
            if data[0] == b'C' {
                break;
            }
        }
    }
    assert_eq!(kinds, b"BMC".to_vec());

    let confirmed = || async {
        let row = sql
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot.slot_name],
            )
            .await
            .unwrap();
        row.get::<_, String>(0).parse::<Lsn>().unwrap()
    };
    assert!(confirmed().await < commit_end);
    stream
        .send_status_update(StandbyStatus {
            write: commit_end,
            flush: commit_end,
            apply: commit_end,
            reply_requested: false,
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while confirmed().await < commit_end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirmed_flush_lsn did not advance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(confirmed().await, commit_end);

    // Ending the stream returns the connection to command mode.
    let mut client = stream.finish().await.unwrap();
    client.identify_system().await.unwrap();

    // Starting from a missing slot is a definite server error.
    let err = client
        .start_logical_replication("missing", Lsn::ZERO, &["my pub's".to_owned()], false)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalives_asking_for_a_reply_keep_the_stream_alive_when_answered() {
    let pg = PgServer::start_with(PgOptions {
        conf: vec!["wal_sender_timeout = '2s'".into()],
        ..Default::default()
    });
    let sql = pg.connect("postgres").await;
    sql.batch_execute("CREATE PUBLICATION p FOR ALL TABLES")
        .await
        .unwrap();
    let mut client = ReplicationClient::connect(&params(&pg, "postgres"))
        .await
        .unwrap();
    client
        .create_logical_slot("s", SlotSnapshot::NoExport)
        .await
        .unwrap();
    let mut stream = client
        .start_logical_replication("s", Lsn::ZERO, &["p".to_owned()], false)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut answered = 0;
    // Three timeouts' worth of idling: without the answers the walsender would hang up.
    while started.elapsed() < Duration::from_secs(6) {
        if let ReplicationMessage::PrimaryKeepalive {
            wal_end,
            reply_requested: true,
            ..
        } = next(&mut stream).await
        {
            answered += 1;
            stream
                .send_status_update(StandbyStatus {
                    write: wal_end,
                    flush: wal_end,
                    apply: wal_end,
                    reply_requested: false,
                })
                .await
                .unwrap();
        }
    }
    assert!(
        answered >= 2,
        "the walsender asked for replies ({answered})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn next_is_cancellation_safe_beside_a_fast_timer() {
    const TRANSACTIONS: usize = 60;
    const ROWS_PER_TRANSACTION: usize = 5;
    let pg = PgServer::start();
    let sql = pg.connect("postgres").await;
    sql.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v text);
         CREATE PUBLICATION p FOR TABLE big;",
    )
    .await
    .unwrap();
    let mut client = ReplicationClient::connect(&params(&pg, "postgres"))
        .await
        .unwrap();
    client
        .create_logical_slot("s", SlotSnapshot::NoExport)
        .await
        .unwrap();
    let mut stream = client
        .start_logical_replication("s", Lsn::ZERO, &["p".to_owned()], false)
        .await
        .unwrap();
    // Transactions trickle in while the stream is read, so the loop below spends a while
    // with next() pending on the socket, often holding half a frame, when the timer wins.
    let writer = tokio::spawn(async move {
        for t in 0..TRANSACTIONS {
            let first = t * ROWS_PER_TRANSACTION + 1;
            // Values of 32 kB: each insert spans many socket reads.
            sql.batch_execute(&format!(
                "INSERT INTO big SELECT g, repeat(md5(g::text), 1000)
                 FROM generate_series({first}, {}) g",
                first + ROWS_PER_TRANSACTION - 1
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let mut timer = tokio::time::interval(Duration::from_millis(1));
    let mut ticks = 0u64;
    let mut ids = Vec::new();
    let mut commits = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while commits < TRANSACTIONS {
        assert!(tokio::time::Instant::now() < deadline, "stream too slow");
        tokio::select! {
            biased;
            // The timer first: it wins whenever it is due, cancelling a pending next().
            _ = timer.tick() => ticks += 1,
            message = stream.next() => match message.unwrap().unwrap() {
                ReplicationMessage::XLogData { data, .. } => match data[0] {
                    b'I' => {
                        let id = insert_first_column(&data);
                        // Whole frames only: id column, then the 32 000-byte value.
                        assert_eq!(data.len(), 13 + id.len() + 5 + 32_000);
                        ids.push(id.parse::<usize>().unwrap());
                    }
                    b'C' => commits += 1,
                    _ => {}
                },
                ReplicationMessage::PrimaryKeepalive { .. } => {}
            },
        }
    }
    let expected: Vec<usize> = (1..=TRANSACTIONS * ROWS_PER_TRANSACTION).collect();
    assert_eq!(ids, expected, "every insert arrived once, in order");
    writer.await.unwrap();
    // At least one tick per pause between transactions: next() was cancelled many times.
    assert!(
        ticks >= TRANSACTIONS as u64,
        "the timer interleaved with the stream ({ticks} ticks)"
    );
}
