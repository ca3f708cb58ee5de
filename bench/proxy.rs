//! Byte-counting HTTP/1.1 proxy for the push benchmark (std only; built with
//! `rustc -O bench/proxy.rs` by bench/push.sh).
//!
//!     push-proxy UPSTREAM_HOST:PORT LOG_FILE
//!
//! Listens on 127.0.0.1 (a free port, printed on stdout) and forwards every
//! connection to UPSTREAM. The client→registry direction is parsed as
//! HTTP/1.1 requests (Content-Length and chunked bodies), so each request is
//! logged with its method, path and bytes on the wire:
//!
//!     R <TAB> METHOD <TAB> PATH <TAB> HEADER_BYTES <TAB> BODY_BYTES
//!     U <TAB> BYTES          client bytes that did not parse as HTTP
//!     D <TAB> BYTES          registry→client bytes, per connection
//!
//! A request's line is written once its body has been forwarded, so by the
//! time a client has its response (and exits), its lines are in the log.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

const BUF: usize = 256 * 1024;

type Log = Arc<Mutex<File>>;

fn log(log: &Log, line: String) {
    if let Ok(mut f) = log.lock() {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Forward exactly `n` bytes from `rd` to `wr`.
fn copy_exact(rd: &mut BufReader<TcpStream>, wr: &mut TcpStream, mut n: u64) -> std::io::Result<u64> {
    let mut done = 0;
    while n > 0 {
        let buf = rd.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let take = (buf.len() as u64).min(n) as usize;
        wr.write_all(&buf[..take])?;
        rd.consume(take);
        n -= take as u64;
        done += take as u64;
    }
    Ok(done)
}

/// One line (up to and including \n), forwarded; 0 at EOF.
fn line(rd: &mut BufReader<TcpStream>, wr: &mut TcpStream, into: &mut Vec<u8>) -> std::io::Result<usize> {
    into.clear();
    let n = rd.read_until(b'\n', into)?;
    if n > 0 {
        wr.write_all(into)?;
    }
    Ok(n)
}

/// client → upstream, request by request.
fn requests(client: TcpStream, mut up: TcpStream, logf: Log) {
    let mut rd = BufReader::with_capacity(BUF, client);
    let mut buf = Vec::new();
    let result: std::io::Result<()> = (|| loop {
        // Request line (skipping stray empty lines).
        let mut head_bytes = 0u64;
        let first = loop {
            let n = line(&mut rd, &mut up, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            head_bytes += n as u64;
            let text = String::from_utf8_lossy(&buf).trim().to_string();
            if !text.is_empty() {
                break text;
            }
        };
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("?").to_string();
        let path = parts.next().unwrap_or("?").to_string();
        if !first.ends_with("HTTP/1.1") && !first.ends_with("HTTP/1.0") {
            // Not HTTP: pass the rest through as it is.
            log(&logf, format!("U\t{head_bytes}\n"));
            let mut raw = Vec::with_capacity(BUF);
            raw.resize(BUF, 0);
            loop {
                let n = rd.read(&mut raw)?;
                if n == 0 {
                    return Ok(());
                }
                up.write_all(&raw[..n])?;
                log(&logf, format!("U\t{n}\n"));
            }
        }
        let mut length = 0u64;
        let mut chunked = false;
        loop {
            let n = line(&mut rd, &mut up, &mut buf)?;
            head_bytes += n as u64;
            if n == 0 {
                log(&logf, format!("R\t{method}\t{path}\t{head_bytes}\t0\n"));
                return Ok(());
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            let text = text.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                break;
            }
            if let Some((k, v)) = text.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.contains("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = 0u64;
        if chunked {
            loop {
                let n = line(&mut rd, &mut up, &mut buf)?;
                if n == 0 {
                    break;
                }
                body += n as u64;
                let text = String::from_utf8_lossy(&buf).to_string();
                let size = u64::from_str_radix(text.trim().split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let n = line(&mut rd, &mut up, &mut buf)?;
                        body += n as u64;
                        if n == 0 || buf == b"\r\n" || buf == b"\n" {
                            break;
                        }
                    }
                    break;
                }
                body += copy_exact(&mut rd, &mut up, size + 2)?;
            }
        } else if length > 0 {
            body += copy_exact(&mut rd, &mut up, length)?;
        }
        log(&logf, format!("R\t{method}\t{path}\t{head_bytes}\t{body}\n"));
    })();
    let _ = result;
    let _ = up.shutdown(Shutdown::Write);
}

/// upstream → client, counted per connection.
fn responses(mut up: TcpStream, mut client: TcpStream, logf: Log) {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
                total += n as u64;
            }
        }
    }
    log(&logf, format!("D\t{total}\n"));
    let _ = client.shutdown(Shutdown::Write);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: {} UPSTREAM_HOST:PORT LOG_FILE", args[0]);
        std::process::exit(2);
    }
    let upstream = args[1].clone();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[2])
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", args[2]));
    let logf: Log = Arc::new(Mutex::new(file));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    println!("{}", listener.local_addr().expect("local addr").port());
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let up = match TcpStream::connect(&upstream) {
            Ok(up) => up,
            Err(e) => {
                eprintln!("push-proxy: cannot reach {upstream}: {e}");
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let (c2, u2) = match (client.try_clone(), up.try_clone()) {
            (Ok(c), Ok(u)) => (c, u),
            _ => continue,
        };
        let (l1, l2) = (logf.clone(), logf.clone());
        thread::spawn(move || requests(client, up, l1));
        thread::spawn(move || responses(u2, c2, l2));
    }
}
