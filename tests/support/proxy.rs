//! A TCP relay between pg2lake and a server that the test can cut or freeze, the way a
//! network fails: a cut closes every connection at once (the client sees a reset or an
//! end of stream); a freeze keeps every connection open and silently stops moving bytes
//! both ways, like a lost route or a dead NAT entry (no RST, no FIN), and connections
//! opened during a freeze hang as well; a server that is down closes every connection
//! as soon as it is opened.
//!
//! ```text
//!  pg2lake ──► Proxy (127.0.0.1:port) ──► upstream
//!              Pass:   bytes relayed both ways
//!              Freeze: nothing moves; sockets stay open
//!              cut():  every open connection is shut down; new ones are relayed
//!              Down:   new connections are closed at once
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a relay thread waits for bytes before it looks at the state again.
const POLL: Duration = Duration::from_millis(20);

/// A relay to `upstream` that the test controls.
pub struct Proxy {
    /// The port to give the client, on 127.0.0.1.
    pub port: u16,
    frozen: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    /// Bumped by [`Proxy::cut`]: connections of an older generation shut down.
    generation: Arc<AtomicU64>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

/// A nonblocking listener on a free port of 127.0.0.1, and the port.
pub fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let port = listener.local_addr().expect("proxy address").port();
    (listener, port)
}

/// Accepts connections on `listener` (from [`listen`]) until `stop`: each is closed at
/// once while `refuse()` says so, or when `upstream` (`host:port`) cannot be reached;
/// otherwise it is handed to `connected` with its upstream connection, both blocking.
pub fn accept_loop(
    listener: &TcpListener,
    upstream: &str,
    stop: &AtomicBool,
    refuse: impl Fn() -> bool,
    mut connected: impl FnMut(TcpStream, TcpStream),
) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => continue,
        };
        if refuse() {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        client
            .set_nonblocking(false)
            .expect("blocking client socket");
        connected(client, server);
    }
}

impl Proxy {
    /// Relays 127.0.0.1:`port` to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let (listener, port) = listen();
        let proxy = Proxy {
            port,
            frozen: Arc::new(AtomicBool::new(false)),
            down: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
            connections: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let upstream = upstream.to_owned();
        let down = proxy.down.clone();
        let (frozen, generation, connections, stop) = (
            proxy.frozen.clone(),
            proxy.generation.clone(),
            proxy.connections.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            let refuse = || down.load(Ordering::SeqCst);
            accept_loop(
                &listener,
                &upstream,
                &stop.clone(),
                refuse,
                |client, server| {
                    let born = generation.load(Ordering::SeqCst);
                    {
                        let mut open = connections.lock().expect("connections");
                        open.push(client.try_clone().expect("clone client"));
                        open.push(server.try_clone().expect("clone server"));
                    }
                    for (from, to) in [
                        (
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        ),
                        (server, client),
                    ] {
                        let (frozen, generation, stop) =
                            (frozen.clone(), generation.clone(), stop.clone());
                        std::thread::spawn(move || {
                            relay(from, to, born, &frozen, &generation, &stop)
                        });
                    }
                },
            );
        });
        proxy
    }

    /// Stops moving bytes (and holds new connections) until [`Proxy::thaw`].
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Moves bytes again.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Takes the server down (`true`: every open connection is cut and new ones are
    /// closed at once) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Closes every open connection; later connections are relayed.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for stream in self.connections.lock().expect("connections").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Copies `from` to `to` while the connection's generation is current; while frozen,
/// reads nothing (so the sender's buffers fill up as on a dead route).
fn relay(
    mut from: TcpStream,
    mut to: TcpStream,
    born: u64,
    frozen: &AtomicBool,
    generation: &AtomicU64,
    stop: &AtomicBool,
) {
    from.set_read_timeout(Some(POLL)).expect("read timeout");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
            break;
        }
        if frozen.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
