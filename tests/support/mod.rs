//! Shared harness for the integration tests: real servers, never mocks.
//!
//! ```text
//!  test ──► PgServer  initdb + pg_ctl on a free 127.0.0.1 port, wal_level=logical,
//!  │                  trust auth, own temp dir (data, socket, log, certs)
//!  ├──────► S3Server  moto_server from the test venv, one bucket, own free port
//!  ├──────► pg2lake   the binary under test (service.rs runs it as a child process)
//!  └──────► read_delta.py  the `deltalake` Python package reads the lake back: an
//!                          independent reader, not pg2lake's own code
//! ```
//!
//! Invariants:
//! - Every server lives in its own temp dir on its own port, so tests run in parallel
//!   (threads or processes) without sharing state; dropping the handle stops the server
//!   and removes the dir.
//! - PostgreSQL refuses to run as root: when the tests run as root, initdb/pg_ctl run
//!   as the `postgres` OS user through `runuser`, and the temp dir is chowned to it.
//! - Nothing is installed here: `scripts/test.sh` installs PostgreSQL, PostGIS, openssl, the
//!   `postgres` OS user and the Python venv; a missing piece panics naming that script.
#![allow(dead_code)]

pub mod bank;
pub mod bench;
pub mod delay;
pub mod lake;
pub mod load;
pub mod proxy;
pub mod scrape;
pub mod service;
pub mod throttle;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// Loopback address every server listens on.
const HOST: &str = "127.0.0.1";
/// Superuser created by initdb (`-U`), whatever OS user runs the server.
const SUPERUSER: &str = "postgres";
/// OS user the server runs as when the tests run as root.
const PG_OS_USER: &str = "postgres";
/// Bucket every S3Server creates.
const BUCKET: &str = "pg2lake-test";
/// How often a start is retried when another process took the free port first.
const PORT_ATTEMPTS: usize = 5;
/// How long a server may take to answer after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What a missing prerequisite's panic tells the reader to run.
const INSTALL_HINT: &str = "run scripts/test.sh (it installs PostgreSQL, PostGIS, openssl, the postgres OS user and creates the python venv)";

/// A fresh temp dir for a server. As root it must be reachable by the postgres user: a
/// TMPDIR under /root would not be, /tmp always is. The short path also keeps the unix
/// socket path under its 107-byte limit.
fn server_dir(as_postgres: bool, prefix: &str) -> tempfile::TempDir {
    let base = if as_postgres {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .expect("create temp dir for postgres")
}

/// A slot's row of `pg_stat_replication_slots`: what the walsender spilled to the
/// server's disk and what it streamed before commit.
#[derive(Debug, Clone, Copy)]
pub struct SlotStats {
    /// Transactions streamed while in progress.
    pub stream_txns: i64,
    /// Bytes of them.
    pub stream_bytes: i64,
    /// Transactions spilled to `pg_replslot`.
    pub spill_txns: i64,
    /// Bytes spilled.
    pub spill_bytes: i64,
}

impl std::fmt::Display for SlotStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream_txns {} stream_bytes {} spill_txns {} spill_bytes {}",
            self.stream_txns, self.stream_bytes, self.spill_txns, self.spill_bytes
        )
    }
}

/// The statistics of `slot` as the server reports them now (a walsender reports them
/// with some delay).
pub async fn slot_stats(db: &tokio_postgres::Client, slot: &str) -> SlotStats {
    let row = db
        .query_one(
            "SELECT stream_txns, stream_bytes, spill_txns, spill_bytes \
             FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot statistics");
    SlotStats {
        stream_txns: row.get(0),
        stream_bytes: row.get(1),
        spill_txns: row.get(2),
        spill_bytes: row.get(3),
    }
}

/// Path of the pg2lake binary built for this test run.
pub fn pg2lake_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pg2lake"))
}

/// Polls `f` every 100 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Async `wait_until`: polls `f` without blocking the runtime (use it when `f` needs a
/// `tokio_postgres::Client`, whose connection task must keep running meanwhile).
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port that was free a moment ago on 127.0.0.1 (the OS picks it; the caller retries
/// when someone else binds it first).
pub fn free_port() -> u16 {
    TcpListener::bind((HOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// Whether this process runs with effective uid 0 (`/proc/self` is owned by the euid).
pub fn is_root() -> bool {
    match std::fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
    }
}

/// Directory holding initdb, pg_ctl and postgres: `$PG_BIN`, then
/// /usr/lib/postgresql/15/bin, then the newest /usr/lib/postgresql/*/bin, then
/// `pg_config --bindir`.
pub fn pg_bin_dir() -> PathBuf {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from)
        && has_initdb(&dir)
    {
        return dir;
    }
    let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
    if has_initdb(&preferred) {
        return preferred;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return dir;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return dir;
        }
    }
    panic!("no PostgreSQL server binaries (initdb) found: set PG_BIN or {INSTALL_HINT}");
}

/// Runs `cmd`, panicking with its output when it cannot start or exits non-zero.
fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The last `n` lines of a file, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Options for [`PgServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Extra pg_hba.conf lines, placed before the default trust lines (first match wins).
    pub hba: Vec<String>,
    /// Extra postgresql.conf lines, applied after the harness's own settings.
    pub conf: Vec<String>,
    /// Serve TLS (`ssl = on`) with a certificate chain made by the openssl CLI, and
    /// verify client certificates signed by the same CA ([`PgServer::client_cert`]).
    pub ssl: bool,
}

/// A throwaway PostgreSQL server with logical replication enabled.
pub struct PgServer {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    ssl_ca: Option<PathBuf>,
    as_postgres: bool,
    running: bool,
    // Last field: dropped (removed) after Drop::drop has stopped the server.
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Starts a server with the default options.
    pub fn start() -> PgServer {
        PgServer::start_with(PgOptions::default())
    }

    /// initdb into a fresh temp dir, configure, start on a free port.
    pub fn start_with(options: PgOptions) -> PgServer {
        let bin = pg_bin_dir();
        let as_postgres = is_root();
        if as_postgres
            && !Command::new("id")
                .arg(PG_OS_USER)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            panic!(
                "running as root needs the OS user {PG_OS_USER:?} to run PostgreSQL: {INSTALL_HINT}"
            );
        }
        let dir = server_dir(as_postgres, "pg2lake-pg-");
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let mut server = PgServer {
            port: 0,
            bin,
            data,
            log,
            ssl_ca: None,
            as_postgres,
            running: false,
            dir,
        };
        server.chown_dir();
        let data_arg = server.data.clone();
        run_checked(
            server
                .pg_command("initdb")
                .arg("-D")
                .arg(&data_arg)
                .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
                .args(["--no-sync", "--no-instructions"]),
            "initdb",
        );

        let mut hba: Vec<String> = options.hba.clone();
        hba.extend(
            [
                "local all all trust",
                "local replication all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication all 127.0.0.1/32 trust",
            ]
            .map(String::from),
        );
        std::fs::write(server.data.join("pg_hba.conf"), hba.join("\n") + "\n")
            .expect("write pg_hba.conf");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(server.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        // The port changes between start attempts, so settings live in an included file
        // that is rewritten per attempt.
        writeln!(conf, "\ninclude 'pg2lake-test.conf'").expect("write postgresql.conf");
        if options.ssl {
            server.make_certs();
        }

        server.start_on_free_port(&options);
        server
    }

    /// A hot standby of this server: `pg_basebackup -R` into a fresh temp dir, started
    /// on a free port, streaming from this server (physical replication).
    pub fn start_standby(&self) -> PgServer {
        let dir = server_dir(self.as_postgres, "pg2lake-standby-");
        let mut server = PgServer {
            port: 0,
            bin: self.bin.clone(),
            data: dir.path().join("data"),
            log: dir.path().join("postgres.log"),
            ssl_ca: None,
            as_postgres: self.as_postgres,
            running: false,
            dir,
        };
        server.chown_dir();
        let data_arg = server.data.clone();
        run_checked(
            server
                .pg_command("pg_basebackup")
                .arg("-D")
                .arg(&data_arg)
                .args(["-h", HOST, "-p", &self.port.to_string(), "-U", SUPERUSER])
                // A fast checkpoint: a spread one waits most of checkpoint_timeout.
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
            "pg_basebackup",
        );
        // The copied configuration includes pg2lake-test.conf, rewritten with the
        // standby's own port and socket directory.
        server.start_on_free_port(&PgOptions::default());
        server
    }

    /// Writes the settings with a free port and starts; retries on another port when a
    /// parallel process took the free one first.
    fn start_on_free_port(&mut self, options: &PgOptions) {
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = free_port();
            self.write_conf(options);
            self.chown_dir();
            match self.try_start() {
                Ok(()) => return,
                Err(log) if attempt < PORT_ATTEMPTS && port_taken(&log) => continue,
                Err(log) => panic!(
                    "postgres did not start on port {} (attempt {attempt}); log tail:\n{log}",
                    self.port
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// "127.0.0.1".
    pub fn host(&self) -> &str {
        HOST
    }

    /// Directory of the server's unix socket (`host=` for socket connections).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The superuser's name, "postgres".
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// With `ssl`: the CA certificate that signed the server's certificate (a client's
    /// root for verify-ca / verify-full; the server cert names localhost and 127.0.0.1).
    pub fn ssl_cert_path(&self) -> Option<PathBuf> {
        self.ssl_ca.clone()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Directory of initdb, pg_ctl, psql used by this server.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server log's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the harness believes the server runs (started and not stopped/killed).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{db}", self.port)
    }

    /// A superuser connection to `db`; its connection task is spawned on the runtime.
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url(db)));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("postgres connection closed: {e}");
            }
        });
        client
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let client = self.connect("postgres").await;
        client
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\"",
                name.replace('"', "\"\"")
            ))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.url(name)
    }

    /// Runs `sql` with psql (no async runtime needed); returns unaligned, tuples-only
    /// output with `|` between columns. Panics on any SQL error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run_checked(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", HOST, "-U", SUPERUSER])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-d")
                .arg(db)
                .arg("-c")
                .arg(sql)
                .env_remove("PGPASSWORD")
                .env_remove("PGSERVICE"),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Fast shutdown (`pg_ctl -m fast`): clients are disconnected, a checkpoint is written.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Immediate shutdown (`pg_ctl -m immediate`): no checkpoint, crash recovery at the
    /// next start, like a crash of the server.
    pub fn kill(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    /// Stops the server (fast) if it runs, then starts it again: same port, same data.
    pub fn restart(&mut self) {
        if self.running {
            self.stop();
        }
        // The port was ours a moment ago; retry briefly in case a client's socket or a
        // parallel test's probe still holds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(log) if port_taken(&log) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(log) => panic!(
                    "postgres did not restart on port {}; log tail:\n{log}",
                    self.port
                ),
            }
        }
    }

    /// `cmd` from the server's bin dir, run as the postgres OS user when we are root
    /// (PostgreSQL refuses to run as root), with the temp dir as working directory (the
    /// caller's may be unreadable for that user).
    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", PG_OS_USER, "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn chown_dir(&self) {
        if self.as_postgres {
            run_checked(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{PG_OS_USER}:"))
                    .arg(self.dir.path()),
                "chown postgres dir",
            );
        }
    }

    fn write_conf(&self, options: &PgOptions) {
        let mut lines = vec![
            format!("listen_addresses = '{HOST}'"),
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{}'", self.dir.path().display()),
            "wal_level = logical".to_string(),
            "max_replication_slots = 10".to_string(),
            "max_wal_senders = 10".to_string(),
            // Test data need not survive an OS crash; a server crash (kill) still
            // recovers because WAL reaches the OS at every commit.
            "fsync = off".to_string(),
            "timezone = 'UTC'".to_string(),
            "log_timezone = 'UTC'".to_string(),
            "log_line_prefix = '%m [%p] %q%u@%d '".to_string(),
        ];
        if let Some(ca) = &self.ssl_ca {
            lines.extend(
                [
                    "ssl = on",
                    "ssl_cert_file = 'server.crt'",
                    "ssl_key_file = 'server.key'",
                ]
                .map(String::from),
            );
            // The server asks every TLS client for a certificate and verifies those signed
            // by this CA; only `cert` / clientcert=verify-full lines in pg_hba.conf make one
            // required.
            lines.push(format!("ssl_ca_file = '{}'", ca.display()));
        }
        lines.extend(options.conf.iter().cloned());
        std::fs::write(self.data.join("pg2lake-test.conf"), lines.join("\n") + "\n")
            .expect("write pg2lake-test.conf");
    }

    /// A CA and a server certificate signed by it (not one self-signed certificate:
    /// webpki, behind rustls, rejects a CA certificate used as the server's own).
    fn make_certs(&mut self) {
        let dir = self.dir.path().to_path_buf();
        let ca_key = dir.join("ca.key");
        let ca_crt = dir.join("ca.crt");
        openssl(
            &dir,
            &[
                os("req"),
                os("-x509"),
                os("-newkey"),
                os("ec"),
                os("-pkeyopt"),
                os("ec_paramgen_curve:prime256v1"),
                os("-nodes"),
                os("-days"),
                os("3650"),
                os("-subj"),
                os("/CN=pg2lake test CA"),
                os("-keyout"),
                ca_key.as_os_str(),
                os("-out"),
                ca_crt.as_os_str(),
            ],
        );
        self.ssl_ca = Some(ca_crt);
        self.write_server_cert(&["localhost", "127.0.0.1"]);
    }

    /// Issues `server.crt` / `server.key` in the data directory for `names` (DNS names
    /// or IP addresses).
    fn write_server_cert(&self, names: &[&str]) {
        let (crt, key) = self.issue_cert("server", names[0], &server_ext(names));
        std::fs::rename(&crt, self.data.join("server.crt")).expect("move server.crt");
        std::fs::rename(&key, self.data.join("server.key")).expect("move server.key");
        self.chown_dir();
    }

    /// With `ssl`: a client certificate for role `role` (its CN), signed by the server's
    /// CA, and its unencrypted key: (certificate, key) PEM files.
    pub fn client_cert(&self, role: &str) -> (PathBuf, PathBuf) {
        self.issue_cert(
            &format!("client-{role}"),
            role,
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )
    }

    /// With `ssl`: another server certificate for `names`, signed by the server's CA,
    /// for a second TLS endpoint (a test's man in the middle): (certificate, key).
    pub fn issue_server_cert(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.issue_cert(stem, names[0], &server_ext(names))
    }

    /// With `ssl`: gives the server a new certificate for `names` only (e.g. a name
    /// the clients do not use) and restarts it so that new connections see it.
    pub fn replace_server_cert(&mut self, names: &[&str]) {
        self.write_server_cert(names);
        self.restart();
    }

    /// A key and a certificate with subject CN `cn` and the extensions `ext`, signed by
    /// the CA: `<stem>.crt` and `<stem>.key` in the temp dir.
    fn issue_cert(&self, stem: &str, cn: &str, ext: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        let ca_crt = self
            .ssl_ca
            .as_ref()
            .expect("the server was started with ssl");
        let ca_key = dir.join("ca.key");
        let ext_file = dir.join(format!("{stem}.ext"));
        std::fs::write(&ext_file, ext).expect("write the extensions file");
        let key = dir.join(format!("{stem}.key"));
        let csr = dir.join(format!("{stem}.csr"));
        let crt = dir.join(format!("{stem}.crt"));
        let subject = format!("/CN={cn}");
        openssl(
            dir,
            &[
                os("req"),
                os("-new"),
                os("-newkey"),
                os("ec"),
                os("-pkeyopt"),
                os("ec_paramgen_curve:prime256v1"),
                os("-nodes"),
                os("-subj"),
                OsStr::new(&subject),
                os("-keyout"),
                key.as_os_str(),
                os("-out"),
                csr.as_os_str(),
            ],
        );
        openssl(
            dir,
            &[
                os("x509"),
                os("-req"),
                os("-days"),
                os("3650"),
                os("-in"),
                csr.as_os_str(),
                os("-CA"),
                ca_crt.as_os_str(),
                os("-CAkey"),
                ca_key.as_os_str(),
                os("-CAcreateserial"),
                os("-extfile"),
                ext_file.as_os_str(),
                os("-out"),
                crt.as_os_str(),
            ],
        );
        // PostgreSQL (and libpq) refuse a key readable by group or others.
        run_checked(Command::new("chmod").arg("0600").arg(&key), "chmod key");
        (crt, key)
    }

    /// `pg_ctl start -w`; on failure returns the log tail.
    fn try_start(&mut self) -> Result<(), String> {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t"])
            .arg(START_TIMEOUT.as_secs().to_string())
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("could not run pg_ctl: {e}"));
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "{}\npg_ctl: {}{}",
                tail(&self.log, 40),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        run_checked(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "-t", "60", "stop"]),
            "pg_ctl stop",
        );
        self.running = false;
    }
}

/// Runs the openssl CLI in `dir`.
fn openssl(dir: &Path, args: &[&OsStr]) {
    run_checked(
        Command::new("openssl").args(args).current_dir(dir),
        "openssl (install it: scripts/test.sh)",
    );
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// X.509 extensions of a server certificate valid for `names` (IPs or DNS names).
fn server_ext(names: &[&str]) -> String {
    let alt_names: Vec<String> = names
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(_) => format!("IP:{name}"),
            Err(_) => format!("DNS:{name}"),
        })
        .collect();
    format!(
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = {}\n",
        alt_names.join(", ")
    )
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- postgres log tail ({}) ---\n{}",
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        if self.running {
            // No panic in drop: a failed stop must not abort a test that is unwinding.
            let _ = self
                .pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null())
                .output();
            self.running = false;
        }
    }
}

fn port_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not bind")
}

/// Directory of the Python venv that scripts/test.sh creates.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("PG2LAKE_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/pg2lake-venv")
        }
    }
}

/// The venv's python (with deltalake, pyarrow, boto3, moto).
pub fn venv_python() -> PathBuf {
    let python = venv_dir().join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (it creates the python venv)",
        python.display()
    );
    python
}

/// An S3-compatible server (moto in server mode) with one empty bucket.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts moto_server on a free port and creates the bucket.
    pub fn start() -> S3Server {
        let moto = venv_python().with_file_name("moto_server");
        assert!(
            moto.exists(),
            "{} is missing: run scripts/test.sh (it creates the python venv)",
            moto.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("pg2lake-s3-")
            .tempdir()
            .expect("temp dir for moto");
        let log = dir.path().join("moto.log");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let log_file = std::fs::File::create(&log).expect("moto log file");
            let mut child = Command::new(&moto)
                .args(["-H", HOST, "-p"])
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("moto log file"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", moto.display()));
            let deadline = Instant::now() + START_TIMEOUT;
            let answered = loop {
                if http_status("GET", port, "/").is_some() {
                    break true;
                }
                if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if !answered {
                let text = tail(&log, 30);
                if attempt < PORT_ATTEMPTS && port_taken(&text) {
                    continue;
                }
                panic!("moto_server did not answer on port {port}; log tail:\n{text}");
            }
            let status = http_status("PUT", port, &format!("/{BUCKET}"));
            if status != Some(200) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "creating bucket {BUCKET} answered {status:?}; log tail:\n{}",
                    tail(&log, 30)
                );
            }
            return S3Server {
                endpoint: format!("http://{HOST}:{port}"),
                bucket: BUCKET.to_string(),
                child,
                log,
                _dir: dir,
            };
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Options for pg2lake and the python `deltalake` package (any credentials work).
    pub fn storage_options(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            // Only python deltalake writers need it (they otherwise demand a lock).
            ("AWS_S3_ALLOW_UNSAFE_RENAME", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `s3://BUCKET/path`.
    pub fn uri(&self, path: &str) -> String {
        format!("s3://{}/{}", self.bucket, path.trim_start_matches('/'))
    }

    /// Keys under `prefix` in the bucket, sorted (listed with boto3 from the venv).
    pub fn list_keys(&self, prefix: &str) -> Vec<String> {
        let script = "import boto3, sys\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', \
            aws_secret_access_key='test', region_name='us-east-1')\n\
            pages = s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2], Prefix=sys.argv[3])\n\
            print('\\n'.join(sorted(o['Key'] for p in pages for o in p.get('Contents', []))))\n";
        let out = run_checked(
            Command::new(venv_python())
                .arg("-c")
                .arg(script)
                .arg(&self.endpoint)
                .arg(&self.bucket)
                .arg(prefix),
            "list s3 keys",
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// The server log so far (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status code of a bare HTTP/1.1 request to 127.0.0.1:`port`, or None when nothing
/// answers. No signature: moto accepts unsigned requests.
fn http_status(method: &str, port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// A Delta table as the independent reader (python `deltalake`) sees it.
#[derive(Debug, Clone)]
pub struct DeltaRead {
    /// Table version read.
    pub version: i64,
    /// (column, pyarrow type string such as "int64", "timestamp[us, tz=UTC]").
    pub schema: Vec<(String, String)>,
    /// Rows, JSON-safe (see read_delta.py), sorted by (`_lsn`, `_seq`) when present.
    pub rows: Vec<Map<String, Value>>,
    /// Partition columns from the table metadata.
    pub partition_columns: Vec<String>,
    /// URIs of the data files in this version.
    pub files: Vec<String>,
}

impl DeltaRead {
    /// The pyarrow type string of `column`.
    pub fn column_type(&self, column: &str) -> Option<&str> {
        self.schema
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, ty)| ty.as_str())
    }

    /// Column names in schema order.
    pub fn columns(&self) -> Vec<&str> {
        self.schema.iter().map(|(name, _)| name.as_str()).collect()
    }
}

fn read_delta_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/read_delta.py")
}

/// Runs read_delta.py; None when the URI holds no Delta table (exit code 3).
fn run_reader(uri: &str, options: &[(String, String)], extra: &[String]) -> Option<Value> {
    let options: Map<String, Value> = options
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let out = Command::new(venv_python())
        .arg(read_delta_script())
        .arg(uri)
        .arg("--options")
        .arg(Value::Object(options).to_string())
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run read_delta.py");
    if out.status.code() == Some(3) {
        return None;
    }
    assert!(
        out.status.success(),
        "read_delta.py {uri} {extra:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "read_delta.py printed invalid JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    }))
}

fn parse_read(value: Value) -> DeltaRead {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    DeltaRead {
        version: value["version"].as_i64().expect("version is an integer"),
        schema: value["schema"]
            .as_array()
            .expect("schema is a list")
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().expect("column name").to_string(),
                    pair[1].as_str().expect("column type").to_string(),
                )
            })
            .collect(),
        rows: value["rows"]
            .as_array()
            .expect("rows is a list")
            .iter()
            .map(|row| row.as_object().expect("row is an object").clone())
            .collect(),
        partition_columns: strings(&value["partition_columns"]),
        files: strings(&value["files"]),
    }
}

/// Reads the latest version of the Delta table at `table_uri`; panics when there is none.
pub fn read_delta(table_uri: &str, storage_options: &[(String, String)]) -> DeltaRead {
    try_read_delta(table_uri, storage_options)
        .unwrap_or_else(|| panic!("no Delta table at {table_uri}"))
}

/// Reads the latest version, or None while no Delta table exists at `table_uri`.
pub fn try_read_delta(table_uri: &str, storage_options: &[(String, String)]) -> Option<DeltaRead> {
    run_reader(table_uri, storage_options, &[]).map(parse_read)
}

/// Reads version `version` of the Delta table at `table_uri`.
pub fn read_delta_at(
    table_uri: &str,
    storage_options: &[(String, String)],
    version: i64,
) -> DeltaRead {
    run_reader(
        table_uri,
        storage_options,
        &["--version".to_string(), version.to_string()],
    )
    .map(parse_read)
    .unwrap_or_else(|| panic!("no Delta table at {table_uri}"))
}

/// The table's commit history (DeltaTable.history(), newest first).
pub fn delta_history(table_uri: &str, storage_options: &[(String, String)]) -> Vec<Value> {
    run_reader(table_uri, storage_options, &["--history".to_string()])
        .unwrap_or_else(|| panic!("no Delta table at {table_uri}"))
        .as_array()
        .expect("history is a list")
        .clone()
}

/// The version of the latest `txn` action for `app_id` (DeltaTable.transaction_version),
/// None when the table has none for it. Panics when there is no table.
pub fn delta_txn_version(
    table_uri: &str,
    storage_options: &[(String, String)],
    app_id: &str,
) -> Option<i64> {
    run_reader(
        table_uri,
        storage_options,
        &["--app-id".to_string(), app_id.to_string()],
    )
    .unwrap_or_else(|| panic!("no Delta table at {table_uri}"))["txn"][app_id]
        .as_i64()
}

/// Rows in the Delta table at `path`, counted by the `deltalake` Python package (no rows
/// are read into this process: fit for tables of millions of rows).
pub fn count_delta_rows(path: &Path) -> u64 {
    count_delta_rows_at(&path.display().to_string(), &[])
}

/// [`count_delta_rows`] for the table at `uri` (a path or an S3 URI), read with
/// `storage_options` (endpoint, credentials).
pub fn count_delta_rows_at(uri: &str, storage_options: &[(String, String)]) -> u64 {
    // os._exit: pyarrow's and delta-rs's thread pools can abort the interpreter's
    // teardown after the count is printed (see read_delta.py).
    let script = "import json, os, sys\nfrom deltalake import DeltaTable\n\
                  table = DeltaTable(sys.argv[1], storage_options=json.loads(sys.argv[2]) or None)\n\
                  print(table.to_pyarrow_dataset().count_rows(), flush=True)\n\
                  os._exit(0)";
    let options: serde_json::Map<String, serde_json::Value> = storage_options
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let out = Command::new(venv_python())
        .args(["-c", script, uri])
        .arg(serde_json::Value::Object(options).to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "count rows: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("row count")
}

/// The result of [`duckdb_query`]: column names in order and the rows, JSON-safe.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// Column names, in the query's order.
    pub columns: Vec<String>,
    /// Rows as column → value.
    pub rows: Vec<Map<String, Value>>,
}

/// Runs `sql` with DuckDB (from the test venv) over the Delta table at `table_uri`,
/// registered as the view `view` (see duckdb_query.py).
pub fn duckdb_query(table_uri: &str, view: &str, sql: &str) -> QueryResult {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/duckdb_query.py");
    let mut child = Command::new(venv_python())
        .arg(script)
        .args([table_uri, view])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run duckdb_query.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql.as_bytes())
        .expect("write the query");
    let out = child.wait_with_output().expect("duckdb_query.py output");
    assert!(
        out.status.success(),
        "duckdb_query.py {table_uri} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_slice(&out.stdout).expect("duckdb_query.py JSON");
    QueryResult {
        columns: value["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c.as_str().expect("column name").to_owned())
            .collect(),
        rows: value["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r.as_object().expect("row").clone())
            .collect(),
    }
}
