//! A TCP relay in front of the S3 server that answers the first requests the way S3
//! answers when it throttles (`503 Slow Down`), then relays everything to the real server.
//!
//! ```text
//!  pg2lake ──► ThrottlingProxy ──► moto_server
//!              first `n` connections: read one request, answer 503 SlowDown, close
//!              every later connection: bytes relayed both ways, untouched
//! ```
//!
//! Throttling is decided per connection, not per request: a throttled answer closes its
//! connection (`Connection: close`), so the client's retry opens a new one. Connections
//! relayed once stay relayed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// The body S3 sends with `503 Slow Down`.
const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

/// A relay to an S3 endpoint that throttles its first connections.
pub struct ThrottlingProxy {
    /// `http://127.0.0.1:PORT`: the endpoint to give the client.
    pub endpoint: String,
    port: u16,
    throttled: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl ThrottlingProxy {
    /// Relays to `upstream` (`http://host:port`), answering the first request of each of
    /// the first `throttle` connections with 503 Slow Down.
    pub fn start(upstream: &str, throttle: usize) -> ThrottlingProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let remaining = Arc::new(AtomicUsize::new(throttle));
        let throttled = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let throttled = throttled.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let take = remaining
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if take {
                        if slow_down(client).is_ok() {
                            throttled.fetch_add(1, Ordering::SeqCst);
                        }
                    } else {
                        let upstream = upstream.clone();
                        std::thread::spawn(move || relay(client, &upstream));
                    }
                }
            })
        };
        ThrottlingProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            throttled,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// How many requests were answered with 503 Slow Down so far.
    pub fn throttled(&self) -> usize {
        self.throttled.load(Ordering::SeqCst)
    }
}

impl Drop for ThrottlingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Reads one request (head and `Content-Length` body) and answers 503 Slow Down.
fn slow_down(client: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    std::io::copy(
        &mut reader.take(content_length as u64),
        &mut std::io::sink(),
    )?;
    let mut client = client;
    write!(
        client,
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{SLOW_DOWN}",
        SLOW_DOWN.len()
    )?;
    client.flush()?;
    client.shutdown(Shutdown::Both)
}

/// Copies bytes both ways between `client` and `upstream` until either side closes.
fn relay(client: TcpStream, upstream: &str) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    let upward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let _ = std::io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
    let _ = upward.join();
}
