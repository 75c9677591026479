//! A TCP relay that makes a server slow: every chunk of bytes the client sends waits a
//! fixed delay before it is forwarded, so each request reaches the server (and its answer
//! comes back) at least that much later. Answers are relayed untouched.
//!
//! ```text
//!  pg2lake ──► DelayProxy (127.0.0.1:port) ──► upstream
//!              client → server: read a chunk, sleep `delay`, forward it (in order)
//!              server → client: bytes relayed as they come
//! ```
//!
//! One thread per direction of each connection. The delay is paid once per chunk read
//! from the client socket (up to 64 KiB; what the client wrote while the relay slept
//! arrives as one chunk), so a small request is `delay` late and a large upload is also
//! slowed to at most 64 KiB per `delay` per connection, as on a distant, narrow link.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::proxy::{accept_loop, listen};

/// How long a relay thread waits for bytes (and the acceptor for a connection) before it
/// looks at the stop flag again.
const POLL: Duration = Duration::from_millis(20);
/// Largest chunk read at once.
const CHUNK: usize = 64 * 1024;

/// A relay to `upstream` that delays everything the client sends.
pub struct DelayProxy {
    /// The port to give the client, on 127.0.0.1.
    pub port: u16,
    /// `http://127.0.0.1:PORT`: the endpoint to give an HTTP client.
    pub endpoint: String,
    /// Chunks forwarded client → server so far (each one delayed).
    delayed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Relays 127.0.0.1:`port` to `upstream` (`host:port`), forwarding each chunk the
    /// client sends `delay` after it was read.
    pub fn start(upstream: &str, delay: Duration) -> DelayProxy {
        let (listener, port) = listen();
        let delayed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let (count, stopped) = (delayed.clone(), stop.clone());
        std::thread::spawn(move || {
            accept_loop(
                &listener,
                &upstream,
                &stopped.clone(),
                || false,
                |client, server| {
                    // The only added latency is the delay: no Nagle wait on either leg.
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let upload = (
                        client.try_clone().expect("clone client"),
                        server.try_clone().expect("clone server"),
                    );
                    let (count, stop) = (count.clone(), stopped.clone());
                    std::thread::spawn(move || {
                        relay(upload.0, upload.1, delay, Some(&count), &stop);
                    });
                    let stop = stopped.clone();
                    std::thread::spawn(move || relay(server, client, Duration::ZERO, None, &stop));
                },
            );
        });
        DelayProxy {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            delayed,
            stop,
        }
    }

    /// Chunks forwarded (each after the delay) from clients to the server so far.
    pub fn delayed_chunks(&self) -> u64 {
        self.delayed.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    /// Stops accepting; every relay thread closes its connection within [`POLL`] (plus a
    /// delay it is sleeping).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` in order, sleeping `delay` before forwarding each chunk read;
/// counts the chunks in `count`. At the end of `from`'s stream the end is passed on
/// (half-close), so the other direction finishes what it is sending.
fn relay(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    count: Option<&AtomicU64>,
    stop: &AtomicBool,
) {
    from.set_read_timeout(Some(POLL)).expect("read timeout");
    let mut buf = vec![0u8; CHUNK];
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if let Some(count) = count {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
