//! A faulty HTTP proxy in front of the registry.

use super::*;

/// Forwards HTTP to the registry, one request per connection (it adds
/// `Connection: close`), and answers `500` to manifest writes
/// (`PUT /v2/…/manifests/…`) instead of forwarding them while
/// [`fail_next`](Self::fail_next) allows.
pub struct FaultProxy {
    c: Arc<ProxyCounters>,
    service: TcpService,
}

/// What a [`FaultProxy`] shares with its connection threads.
#[derive(Default)]
pub struct ProxyCounters {
    stop: AtomicBool,
    skip: AtomicUsize,
    fail: AtomicUsize,
    hold: AtomicUsize,
    held: AtomicBool,
    injected: AtomicUsize,
    manifest_puts: AtomicUsize,
    /// Answer 401 to every blob upload's data (`PATCH`/`PUT` on
    /// `/v2/…/blobs/uploads/…`), as a registry that lets these credentials
    /// pull but not push does.
    deny_uploads: AtomicBool,
    denied: AtomicUsize,
    /// Answer 500 to the next this many blob-closing `PUT`s
    /// (`PUT /v2/…/blobs/uploads/…?…digest=…`).
    blob_fail: AtomicUsize,
    blob_injected: AtomicUsize,
    /// Hold the nth (1-based) blob chunk (`PATCH /v2/…/blobs/uploads/…`)
    /// for good (until the proxy stops); 0: none.
    patch_hold: AtomicUsize,
    patches: AtomicUsize,
    /// Hold the nth (1-based) blob upload start (`POST …/blobs/uploads/`)
    /// like a held manifest write, until [`release`](FaultProxy::release);
    /// 0: none.
    post_hold: AtomicUsize,
    posts: AtomicUsize,
    /// Lets a held blob upload start or manifest write go on.
    release: AtomicBool,
    /// Answer 405 to every blob chunk (`PATCH`), as a registry that takes
    /// only whole blobs does.
    refuse_patches: AtomicBool,
    log: Mutex<Vec<String>>,
}

impl FaultProxy {
    /// A proxy to `127.0.0.1:upstream_port` that fails the next `fail`
    /// manifest writes.
    pub fn start(upstream_port: u16, fail: usize) -> FaultProxy {
        let counters = Arc::new(ProxyCounters {
            fail: AtomicUsize::new(fail),
            ..ProxyCounters::default()
        });
        let c = counters.clone();
        let service = TcpService::start(move |client| {
            let c = c.clone();
            thread::spawn(move || {
                let _ = proxy_one(client, upstream_port, &c);
            });
        });
        FaultProxy {
            c: counters,
            service,
        }
    }

    pub fn host(&self) -> String {
        self.service.host()
    }

    /// Fail the next `n` manifest writes (0: forward everything).
    pub fn fail_next(&self, n: usize) {
        self.c.skip.store(self.manifest_puts(), Ordering::SeqCst);
        self.c.fail.store(n, Ordering::SeqCst);
    }

    /// Let the next `skip` manifest writes through, then fail `n`.
    pub fn fail_after(&self, skip: usize, n: usize) {
        self.c
            .skip
            .store(self.manifest_puts() + skip, Ordering::SeqCst);
        self.c.fail.store(n, Ordering::SeqCst);
    }

    /// Hold the `nth` (1-based) manifest write, not failed, until the proxy
    /// is dropped or [`release`](Self::release)d: [`held`](Self::held) says
    /// it arrived.
    pub fn hold_manifest_put(&self, nth: usize) {
        self.c.hold.store(nth, Ordering::SeqCst);
    }

    /// The held manifest write has arrived (and is waiting).
    pub fn held(&self) -> bool {
        self.c.held.load(Ordering::SeqCst)
    }

    /// Answer 401 (`UNAUTHORIZED`) to the data of every blob upload from
    /// now on; reads (pings, manifests, blob checks) still go through.
    pub fn deny_uploads(&self) {
        self.c.deny_uploads.store(true, Ordering::SeqCst);
    }

    /// 401s answered to uploads so far.
    pub fn denied(&self) -> usize {
        self.c.denied.load(Ordering::SeqCst)
    }

    /// Answer 500 to the next `n` blob-closing `PUT`s.
    pub fn fail_blob_puts(&self, n: usize) {
        self.c.blob_fail.store(n, Ordering::SeqCst);
    }

    /// 500s answered to blob `PUT`s so far.
    pub fn blob_injected(&self) -> usize {
        self.c.blob_injected.load(Ordering::SeqCst)
    }

    /// Hold the `nth` (1-based) blob chunk `PATCH` until the proxy stops;
    /// [`patches`](Self::patches) counts the ones that arrived.
    pub fn hold_patch(&self, nth: usize) {
        self.c.patch_hold.store(nth, Ordering::SeqCst);
    }

    /// Hold the `nth` (1-based) blob upload start (`POST`) until
    /// [`release`](Self::release); [`held`](Self::held) says it arrived.
    pub fn hold_blob_post(&self, nth: usize) {
        self.c.post_hold.store(nth, Ordering::SeqCst);
    }

    /// Let a held blob upload start or manifest write go on (to the
    /// registry as it is then).
    pub fn release(&self) {
        self.c.release.store(true, Ordering::SeqCst);
    }

    /// Answer 405 (`Method Not Allowed`) to every blob chunk from now on.
    pub fn refuse_patches(&self) {
        self.c.refuse_patches.store(true, Ordering::SeqCst);
    }

    /// Blob chunk `PATCH`es seen so far (the held one included).
    pub fn patches(&self) -> usize {
        self.c.patches.load(Ordering::SeqCst)
    }

    /// 500s answered so far.
    pub fn injected(&self) -> usize {
        self.c.injected.load(Ordering::SeqCst)
    }

    /// Manifest PUTs seen (answered 500 or forwarded).
    pub fn manifest_puts(&self) -> usize {
        self.c.manifest_puts.load(Ordering::SeqCst)
    }

    /// Request lines seen, in order.
    pub fn requests(&self) -> Vec<String> {
        self.c.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    /// Releases a held manifest write; the service then stops accepting.
    fn drop(&mut self) {
        self.c.stop.store(true, Ordering::SeqCst);
    }
}

pub fn proxy_one(
    mut client: TcpStream,
    upstream_port: u16,
    counters: &ProxyCounters,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    // Read the request head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        // skopeo tries HTTPS first (a TLS ClientHello): close at once, so
        // it falls back to plain HTTP as it does against the registry.
        if head.is_empty() && !byte[0].is_ascii_uppercase() {
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Ok(());
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    if let Ok(mut l) = counters.log.lock() {
        l.push(request_line.clone());
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if counters.deny_uploads.load(Ordering::SeqCst)
        && matches!(method, "PATCH" | "PUT")
        && path.starts_with("/v2/")
        && path.contains("/blobs/uploads/")
    {
        counters.denied.fetch_add(1, Ordering::SeqCst);
        drain_body(&mut client, &text)?;
        let msg = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":"injected fault: these credentials may pull but not push"}]}"#;
        refuse(
            &mut client,
            "401 Unauthorized",
            "Www-Authenticate: Basic realm=\"runnerctl-tests\"\r\n",
            msg,
        )?;
        return Ok(());
    }
    let blob_upload = path.starts_with("/v2/") && path.contains("/blobs/uploads/");
    if blob_upload && method == "POST" {
        let nth = counters.posts.fetch_add(1, Ordering::SeqCst) + 1;
        if counters.post_hold.load(Ordering::SeqCst) == nth {
            counters.held.store(true, Ordering::SeqCst);
            while !counters.release.load(Ordering::SeqCst) && !counters.stop.load(Ordering::SeqCst)
            {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    if blob_upload && method == "PATCH" {
        let nth = counters.patches.fetch_add(1, Ordering::SeqCst) + 1;
        if counters.refuse_patches.load(Ordering::SeqCst) {
            drain_body(&mut client, &text)?;
            let msg = r#"{"errors":[{"code":"UNSUPPORTED","message":"injected: chunked uploads are not supported"}]}"#;
            refuse(&mut client, "405 Method Not Allowed", "", msg)?;
            return Ok(());
        }
        if counters.patch_hold.load(Ordering::SeqCst) == nth {
            while !counters.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(10));
            }
            return Ok(());
        }
    }
    if blob_upload
        && method == "PUT"
        && path.contains("digest=")
        && counters
            .blob_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        counters.blob_injected.fetch_add(1, Ordering::SeqCst);
        drain_body(&mut client, &text)?;
        let msg = r#"{"errors":[{"code":"UNKNOWN","message":"injected fault: blob storage unavailable"}]}"#;
        refuse(&mut client, "500 Internal Server Error", "", msg)?;
        return Ok(());
    }
    if method == "PUT" && path.starts_with("/v2/") && path.contains("/manifests/") {
        let nth = counters.manifest_puts.fetch_add(1, Ordering::SeqCst) + 1;
        let take = nth > counters.skip.load(Ordering::SeqCst)
            && counters
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if take {
            counters.injected.fetch_add(1, Ordering::SeqCst);
            // Drain the body so the client sees our answer, not a reset.
            let len = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = client.read_exact(&mut body);
            let msg = r#"{"errors":[{"code":"UNKNOWN","message":"injected fault: storage backend unavailable"}]}"#;
            refuse(&mut client, "500 Internal Server Error", "", msg)?;
            return Ok(());
        }
        if counters.hold.load(Ordering::SeqCst) == nth {
            counters.held.store(true, Ordering::SeqCst);
            while !counters.stop.load(Ordering::SeqCst) && !counters.release.load(Ordering::SeqCst)
            {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    // Forward with `Connection: close`, so every request gets its own
    // connection and is seen here.
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    let mut out = String::new();
    for (i, line) in text.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes())?;
    let mut up_read = upstream.try_clone()?;
    let mut client_write = client.try_clone()?;
    let down = thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut client_write);
        let _ = client_write.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut client, &mut upstream);
    let _ = upstream.shutdown(Shutdown::Write);
    let _ = down.join();
    Ok(())
}

/// Answers an injected fault: `status` (e.g. `500 Internal Server Error`),
/// `headers` (whole lines), the registry-style JSON `msg`; then closes.
fn refuse(client: &mut TcpStream, status: &str, headers: &str, msg: &str) -> std::io::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{msg}",
        msg.len()
    );
    client.write_all(resp.as_bytes())?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Reads a request's body (by `Content-Length`, or chunk by chunk) and
/// throws it away, so that the client reads the answer instead of a reset.
pub fn drain_body(client: &mut TcpStream, head: &str) -> std::io::Result<()> {
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            line.clear();
            while !line.ends_with(b"\r\n") {
                if client.read(&mut byte)? == 0 {
                    return Ok(());
                }
                line.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).unwrap_or(0);
            // The chunk and its CRLF; after the last (empty) chunk, the
            // final CRLF (no trailers are sent).
            std::io::copy(
                &mut Read::take(&mut *client, size as u64 + 2),
                &mut std::io::sink(),
            )?;
            if size == 0 {
                return Ok(());
            }
        }
    }
    let len = header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    std::io::copy(&mut Read::take(&mut *client, len), &mut std::io::sink())?;
    Ok(())
}
