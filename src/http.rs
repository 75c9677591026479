//! The HTTP endpoint of `pg2lake run`: `/metrics`, `/healthz`, `/readyz`.
//!
//! A deliberately tiny HTTP/1.1 responder: it reads the request line of a GET (or HEAD),
//! ignores headers and body, answers, and closes the connection. Prometheus and the
//! kubelet need nothing more, and it keeps an HTTP framework out of the binary.
//!
//! - `/healthz` (liveness): 200 while a pipeline loop keeps turning; 503 when none has
//!   turned for `liveness_window` (a hung object-store call, a deadlock), so Kubernetes
//!   restarts the pod.
//! - `/readyz` (readiness): 200 when the replication stream runs and the lag is under
//!   `metrics.ready_max_lag`; otherwise 503 with the reason in the body.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{self, Metrics};

/// Longest a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read; longer requests get 431.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Health checks answered before the pipeline's first loop turn count from start.
const LIVENESS_STATUS_INTERVALS: u32 = 3;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address is taken or not local.
    #[error(
        "cannot listen on metrics.listen {addr}: {source} (fix: choose a free port or set metrics.listen: off)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the probes compare against.
#[derive(Debug, Clone, Copy)]
pub struct ProbeLimits {
    /// `/healthz` fails when no loop turned for this long.
    pub liveness_window: Duration,
    /// `/readyz` fails above this lag.
    pub ready_max_lag: Duration,
}

impl ProbeLimits {
    /// The limits of a configuration: a few status intervals, plus the longest
    /// reconnect backoff, during which no loop turns by design.
    pub fn from_config(config: &Config) -> ProbeLimits {
        ProbeLimits {
            liveness_window: config.source.status_interval * LIVENESS_STATUS_INTERVALS
                + config.source.reconnect_max_backoff
                + config.source.connect_timeout,
            ready_max_lag: config.metrics.ready_max_lag,
        }
    }
}

/// Binds the listen address; separate from `serve` so a taken port fails at start-up.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Answers requests on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, limits: ProbeLimits, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            // Shutdown first: stop accepting once the service stops.
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    tokio::spawn(async move {
                        if let Err(err) = answer(socket, limits).await {
                            tracing::debug!(error = %err, "metrics request failed");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "metrics endpoint cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn answer(mut socket: TcpStream, limits: ProbeLimits) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        // The request line is all we need; stop at its end.
        while !head.contains(&b'\n') && head.len() < MAX_REQUEST_BYTES {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let response = match read {
        Err(_) => return Ok(()),
        Ok(Err(err)) => return Err(err),
        Ok(Ok(())) if !head.contains(&b'\n') => {
            Response::text(431, "request line too long or incomplete\n")
        }
        Ok(Ok(())) => route(&head, metrics::global(), limits),
    };
    socket.write_all(&response.encode()).await?;
    socket.shutdown().await
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            400 => "Bad Request",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn route(head: &[u8], metrics: &Metrics, limits: ProbeLimits) -> Response {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Response::text(400, "bad request line\n");
    };
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET and HEAD\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    let mut response = match path {
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
            head_only: false,
        },
        "/healthz" => healthz(metrics, limits),
        "/readyz" => readyz(metrics, limits),
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n"),
    };
    response.head_only = method == "HEAD";
    response
}

fn healthz(metrics: &Metrics, limits: ProbeLimits) -> Response {
    let since = metrics.health.since_last_tick();
    if since <= limits.liveness_window {
        Response::text(200, "ok\n")
    } else {
        Response::text(
            503,
            &format!(
                "replication loop stalled: no progress for {}s (limit {}s)\n",
                since.as_secs(),
                limits.liveness_window.as_secs()
            ),
        )
    }
}

fn readyz(metrics: &Metrics, limits: ProbeLimits) -> Response {
    if metrics.health.is_standby() {
        return Response::text(
            503,
            "not streaming: standby, another process streams from the replication slot; taking over when it is released\n",
        );
    }
    if !metrics.health.is_streaming() {
        return Response::text(
            503,
            "not streaming: connecting to postgres or reconnecting\n",
        );
    }
    metrics.refresh_lag();
    let lag = metrics.lag_seconds.get();
    if lag > limits.ready_max_lag.as_secs_f64() {
        return Response::text(
            503,
            &format!(
                "lagging: {lag:.0}s behind the source (metrics.ready_max_lag {}s)\n",
                limits.ready_max_lag.as_secs()
            ),
        );
    }
    Response::text(200, "ready\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ProbeLimits = ProbeLimits {
        liveness_window: Duration::from_secs(60),
        ready_max_lag: Duration::from_secs(300),
    };

    #[test]
    fn routes_and_methods() {
        let m = metrics::global();
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n", m, LIMITS).status, 200);
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n", m, LIMITS).status, 200);
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n", m, LIMITS).status, 404);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n", m, LIMITS).status, 405);
        assert_eq!(route(b"\r\n", m, LIMITS).status, 400);
        let head = route(b"HEAD /healthz HTTP/1.1\r\n", m, LIMITS).encode();
        assert!(String::from_utf8(head).unwrap().ends_with("\r\n\r\n"));
    }

    #[test]
    fn liveness_fails_after_the_window() {
        let limits = ProbeLimits {
            liveness_window: Duration::ZERO,
            ..LIMITS
        };
        std::thread::sleep(Duration::from_millis(5));
        let r = healthz(metrics::global(), limits);
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    }
}
