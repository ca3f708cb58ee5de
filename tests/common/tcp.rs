//! A TCP server the test runs itself on 127.0.0.1 (a token server, a
//! faulty proxy, a server that is not a registry).

use super::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Accepts connections on a free port of 127.0.0.1, on a thread of its own,
/// and hands each (blocking) to `on_accept`. On drop it stops accepting and
/// drops `on_accept` with whatever it kept.
pub struct TcpService {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TcpService {
    pub fn start(mut on_accept: impl FnMut(TcpStream) + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("could not bind 127.0.0.1:0: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("could not make the listener non-blocking: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no local address for a bound socket: {e}"))
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            on_accept(stream);
                        }
                        // WouldBlock (nothing to accept) or a passing error.
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        TcpService {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP relay to `127.0.0.1:upstream` that keeps connections as the
/// client does (no HTTP parsing: keep-alive passes through), counts them,
/// and can go silent: [`stall`](Relay::stall) stops forwarding on every
/// connection, old and new, as a hung registry would.
pub struct Relay {
    service: TcpService,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    stalled: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(upstream: u16) -> Relay {
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let (count, quiet) = (connections.clone(), stalled.clone());
        let service = TcpService::start(move |client| {
            count.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            for (from, to) in [
                (client.try_clone(), server.try_clone()),
                (server.try_clone(), client.try_clone()),
            ] {
                let (Ok(mut from), Ok(mut to)) = (from, to) else {
                    return;
                };
                let quiet = quiet.clone();
                thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        while quiet.load(Ordering::SeqCst) {
                            thread::sleep(Duration::from_millis(20));
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Relay {
            service,
            connections,
            stalled,
        }
    }

    pub fn host(&self) -> String {
        self.service.host()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Forward nothing more, in either direction, until dropped.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stalled.store(false, Ordering::SeqCst);
    }
}
