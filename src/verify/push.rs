//! The outcome of a scheduled `verify` (a Kubernetes CronJob) as Prometheus metrics,
//! pushed to a Pushgateway: a job that exits before the next scrape cannot be scraped.
//!
//! ```text
//!  Report ─► text exposition ─► POST http://gateway/metrics/job/pg2lake_verify/slot/<slot>
//! ```
//!
//! POST replaces only the metrics it sends, so `pg2lake_verify_last_success_timestamp_seconds`,
//! sent only when every table is equal, keeps its value across failed runs: an alert on
//! its age fires when verify stops succeeding, whatever the reason.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Outcome, Report};

/// The metrics a push sends (`scripts/check_deploy.py` checks alerts and dashboards
/// against them).
pub const PUSHED_METRIC_NAMES: &[&str] = &[
    "pg2lake_verify_mismatched_rows",
    "pg2lake_verify_last_run_timestamp_seconds",
    "pg2lake_verify_last_success_timestamp_seconds",
];

/// How long the push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The URL is not `http://host:port[/path]`.
    #[error("--push-url {0}: use http://host:port of a Prometheus Pushgateway")]
    Url(String),
    /// The gateway could not be reached or answered with an error.
    #[error("pushing the verify metrics to {url}: {reason}")]
    Failed {
        /// The gateway.
        url: String,
        /// What happened.
        reason: String,
    },
}

/// The report as Prometheus text exposition; `now` in seconds since the Unix epoch.
pub fn exposition(report: &Report, now: f64) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP pg2lake_verify_mismatched_rows Keys whose row in the folded lake differs from the source (missing, extra or other values) at the last verify\n\
         # TYPE pg2lake_verify_mismatched_rows gauge"
    );
    for table in report
        .tables
        .iter()
        .filter(|t| t.status != Outcome::Skipped)
    {
        let _ = writeln!(
            text,
            "pg2lake_verify_mismatched_rows{{table=\"{}\"}} {}",
            escape(&table.table),
            table.mismatched_keys
        );
    }
    let _ = writeln!(
        text,
        "# HELP pg2lake_verify_last_run_timestamp_seconds When verify last finished\n\
         # TYPE pg2lake_verify_last_run_timestamp_seconds gauge\n\
         pg2lake_verify_last_run_timestamp_seconds {now}"
    );
    if report.equal() {
        let _ = writeln!(
            text,
            "# HELP pg2lake_verify_last_success_timestamp_seconds When verify last found every table equal\n\
             # TYPE pg2lake_verify_last_success_timestamp_seconds gauge\n\
             pg2lake_verify_last_success_timestamp_seconds {now}"
        );
    }
    text
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Pushes the report's metrics to the Pushgateway at `url`, grouped by `slot`.
pub async fn push_metrics(url: &str, slot: &str, report: &Report) -> Result<(), PushError> {
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    let body = exposition(report, now);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| PushError::Url(url.to_owned()))?;
    let (authority, base) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{}", path.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    if authority.is_empty() {
        return Err(PushError::Url(url.to_owned()));
    }
    let path = format!("{base}/metrics/job/pg2lake_verify/slot/{slot}");
    let failed = |reason: String| PushError::Failed {
        url: url.to_owned(),
        reason,
    };
    let exchange = async {
        let mut socket = TcpStream::connect(authority).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(PUSH_TIMEOUT, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {PUSH_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code.starts_with('2') {
        Ok(())
    } else {
        Err(failed(format!("the gateway answered {status_line:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::TableReport;
    use tokio::net::TcpListener;

    fn report(mismatched: u64) -> Report {
        let table = TableReport {
            table: "public.t".into(),
            status: if mismatched == 0 {
                Outcome::Equal
            } else {
                Outcome::Different
            },
            reason: None,
            source_rows: 10,
            lake_rows: 10,
            differing_buckets: usize::from(mismatched > 0),
            keys: Vec::new(),
            mismatched_keys: mismatched,
            keys_truncated: false,
            elapsed_ms: 5,
        };
        Report {
            position: "0/10".into(),
            tables: vec![table],
        }
    }

    #[test]
    fn success_time_is_sent_only_when_everything_is_equal() {
        let equal = exposition(&report(0), 1000.5);
        assert!(equal.contains("pg2lake_verify_mismatched_rows{table=\"public.t\"} 0\n"));
        assert!(equal.contains("pg2lake_verify_last_success_timestamp_seconds 1000.5\n"));
        let different = exposition(&report(3), 1000.5);
        assert!(different.contains("pg2lake_verify_mismatched_rows{table=\"public.t\"} 3\n"));
        assert!(different.contains("pg2lake_verify_last_run_timestamp_seconds 1000.5\n"));
        assert!(!different.contains("last_success"));
        // Exactly the listed names have a TYPE line.
        let typed: Vec<&str> = equal
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(typed, PUSHED_METRIC_NAMES);
    }

    #[tokio::test]
    async fn pushes_with_post_to_the_slot_group() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 64 * 1024];
            let mut read = 0;
            // Headers and body arrive together or in pieces; the body ends the metrics.
            while !String::from_utf8_lossy(&request[..read]).contains("pg2lake_verify_last_run") {
                read += socket.read(&mut request[read..]).await.unwrap();
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&request[..read]).into_owned()
        });
        push_metrics(&format!("http://127.0.0.1:{port}"), "s", &report(0))
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /metrics/job/pg2lake_verify/slot/s HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("pg2lake_verify_last_success_timestamp_seconds"));
    }

    #[tokio::test]
    async fn an_error_answer_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        let err = push_metrics(&format!("http://127.0.0.1:{port}"), "s", &report(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("400"), "{err}");
        assert!(matches!(
            push_metrics("https://gw:9091", "s", &report(1)).await,
            Err(PushError::Url(_))
        ));
    }
}
