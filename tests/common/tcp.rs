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
