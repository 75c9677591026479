//! Running the pg2lake binary the way an operator does: a config file, a child process,
//! SIGTERM to stop it, SIGKILL to crash it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::pg2lake_bin;

/// A config file in a temp dir, written from YAML text.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `yaml` to a fresh temp file.
    pub fn new(yaml: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pg2lake.yaml");
        std::fs::write(&path, yaml).expect("write config");
        ConfigFile { _dir: dir, path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The YAML of a config replicating `tables` from `url` into `lake_url`, flushing fast.
pub fn config_yaml(url: &str, slot: &str, tables: &[&str], lake_url: &str, extra: &str) -> String {
    let tables = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "source:\n  url: {url}\n  slot: {slot}\n  publication: {slot}\n  status_interval: 1s\n  heartbeat_interval: 2s\n\
         tables: [{tables}]\nlake:\n  url: {lake_url}\n{extra}\
         flush:\n  max_interval: 200ms\nmetrics:\n  listen: null\n"
    )
}

/// A running `pg2lake run` process.
pub struct Service {
    child: Option<Child>,
    log: PathBuf,
    /// Where this process's output begins in `log`.
    log_start: u64,
}

impl Service {
    /// Starts `pg2lake <command> --config <config>`, logging to a file beside the config.
    pub fn start(config: &ConfigFile, envs: &[(String, String)]) -> Service {
        let log = config
            .path()
            .with_file_name(format!("pg2lake-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        // Earlier runs of the same test may have logged here already.
        let log_start = log_file.metadata().map_or(0, |m| m.len());
        let child = Command::new(pg2lake_bin())
            .arg("run")
            .arg("--config")
            .arg(config.path())
            .arg("--log-format")
            .arg("json")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn,pg2lake=debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start pg2lake");
        Service {
            child: Some(child),
            log,
            log_start,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// The log written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        peak_rss_of(self.pid())
    }

    /// Waits until this process logs that it streams changes (slot, publication and
    /// initial load done), for at most `timeout`.
    pub fn wait_streaming(&self, timeout: Duration) {
        super::wait_until(timeout, "pg2lake streaming changes", || {
            let log = std::fs::read(&self.log).unwrap_or_default();
            let start = usize::try_from(self.log_start).unwrap_or(usize::MAX);
            let own = log.get(start..).unwrap_or_default();
            String::from_utf8_lossy(own).contains("streaming changes")
        });
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("service already stopped");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pg2lake did not stop within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("service already stopped");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pg2lake did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to stop by itself on an error: exit code 1,
    /// and a last log line `error: …` that mentions each of `needles`. Returns that line.
    pub fn wait_error(&mut self, timeout: Duration, needles: &[&str]) -> String {
        let status = self.wait_exit(timeout);
        let log = self.log();
        assert_eq!(status.code(), Some(1), "log:\n{log}");
        let line = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned();
        assert!(line.starts_with("error: "), "{line:?}");
        for needle in needles {
            assert!(line.contains(needle), "{line:?} should mention {needle:?}");
        }
        line
    }

    /// SIGKILL: a crash at whatever point the process is.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- pg2lake log ---\n{}", self.log());
            }
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Runs `pg2lake <args…>` to completion with a timeout, capturing its output.
pub fn run_command(args: &[&str], envs: &[(String, String)], timeout: Duration) -> Output {
    run_command_measured(args, envs, timeout).0
}

/// [`run_command`], also returning the peak resident memory (VmHWM) seen while it ran.
pub fn run_command_measured(
    args: &[&str],
    envs: &[(String, String)],
    timeout: Duration,
) -> (Output, u64) {
    let mut child = Command::new(pg2lake_bin())
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pg2lake");
    // Read both pipes while it runs: a process whose output outgrows the pipe buffer
    // would otherwise block on its next write and never exit.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = std::io::Read::read_to_end(&mut pipe, &mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_rss_of(child.id()));
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "pg2lake {args:?} did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    (output, peak)
}

/// Peak resident memory (VmHWM) of process `pid` so far, in bytes; 0 once it is gone.
pub fn peak_rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
