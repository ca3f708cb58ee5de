//! A proxy in front of a docker-registry that pages `tags/list` the way
//! distribution 3 and Forgejo do: `n=` tags per page, the next page named
//! by a `Link: <…?n=N&last=TAG>; rel="next"` header. Debian's
//! docker-registry 2.8 answers every tag at once whatever `n` says, so the
//! pagination test puts this in front of it. Every other request is passed
//! through byte for byte. The proxy's log lists each tags/list request it
//! answered.
#![allow(dead_code)]

mod helpers;
mod images;
#[allow(unused_imports)] // each test binary uses a different part
pub use helpers::*;
#[allow(unused_imports)]
pub use images::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct PagingProxy {
    service: crate::common::TcpService,
    log: Arc<Mutex<Vec<String>>>,
}

impl PagingProxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `upstream_port`.
    pub fn start(upstream_port: u16) -> PagingProxy {
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let service = crate::common::TcpService::start(move |conn| {
            let log = kept.clone();
            thread::spawn(move || {
                let _ = serve(conn, upstream_port, &log);
            });
        });
        PagingProxy { service, log }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.service.host()
    }

    /// `GET TARGET -> STATUS [link]` for each tags/list request answered.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn serve(client: TcpStream, upstream_port: u16, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    // A TLS ClientHello (runnerctl tries https first): this proxy speaks
    // plain HTTP only; closing makes the client fall back to http.
    if reader.fill_buf()?.first() == Some(&0x16) {
        return Ok(());
    }
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method == "GET" && path.ends_with("/tags/list") {
        let authorization = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            .map(|l| l.to_string());
        return page(
            client,
            upstream_port,
            path,
            query,
            authorization,
            target,
            log,
        );
    }
    // Forwarded with `Connection: close`: the registry closes after its
    // answer and says so, so the client sends its next request on a new
    // connection, which this proxy sees (a kept one would go past it).
    let mut forwarded = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    upstream.write_all(forwarded.as_bytes())?;
    let mut to_upstream = upstream.try_clone()?;
    let forward = thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut to_upstream);
        let _ = to_upstream.shutdown(Shutdown::Write);
    });
    let mut to_client = client;
    let _ = std::io::copy(&mut upstream, &mut to_client);
    let _ = to_client.shutdown(Shutdown::Both);
    let _ = forward.join();
    Ok(())
}

fn page(
    mut client: TcpStream,
    upstream_port: u16,
    path: &str,
    query: &str,
    authorization: Option<String>,
    target: &str,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{upstream_port}\r\n");
    if let Some(auth) = authorization {
        req.push_str(auth.trim_end());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    upstream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    upstream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let status = String::from_utf8_lossy(&raw[..split])
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    if status != "200" {
        if let Ok(mut l) = log.lock() {
            l.push(format!("GET {target} -> {status}"));
        }
        client.write_all(&raw)?;
        return Ok(());
    }
    let body: serde_json::Value =
        serde_json::from_slice(&raw[(split + 4).min(raw.len())..]).unwrap_or_default();
    let tags = crate::common::sorted_tags(&body);
    let n: usize = param("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    let last = param("last");
    let rest: Vec<String> = tags
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let this: Vec<String> = rest.iter().take(n).cloned().collect();
    let link = (rest.len() > this.len()).then(|| {
        format!(
            "<{path}?n={n}&last={}>; rel=\"next\"",
            this.last().cloned().unwrap_or_default()
        )
    });
    let json = serde_json::json!({"name": body["name"], "tags": this}).to_string();
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        json.len()
    );
    if let Some(link) = &link {
        resp.push_str(&format!("Link: {link}\r\n"));
    }
    resp.push_str("\r\n");
    resp.push_str(&json);
    if let Ok(mut l) = log.lock() {
        l.push(format!(
            "GET {target} -> 200, {} tags{}",
            this.len(),
            link.map(|l| format!(", Link: {l}")).unwrap_or_default()
        ));
    }
    client.write_all(resp.as_bytes())?;
    Ok(())
}
