//! Reading pg2lake's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) from a test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One GET against the endpoint: (status code, body).
pub fn get(port: u16, path: &str) -> (u16, String) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(socket, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send request");
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("http head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// GET, or `None` while nothing listens yet.
pub fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    Some(get(port, path))
}

/// The value of the sample `series` (name with labels exactly as exposed).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().expect("sample value"))
    })
}

pub fn sample_or_panic(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// The metrics section of a config: listen on `port`, plus `extra` keys.
pub fn with_metrics(yaml: &str, port: u16, extra: &str) -> String {
    let replaced = yaml.replace(
        "metrics:\n  listen: null\n",
        &format!("metrics:\n  listen: 127.0.0.1:{port}\n{extra}"),
    );
    assert_ne!(
        replaced, yaml,
        "config_yaml no longer ends with metrics.listen"
    );
    replaced
}
