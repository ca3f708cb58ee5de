//! `runnerctl bump` against Debian's docker-registry configured with
//! **token auth**: the registry answers `401` with a
//! `WWW-Authenticate: Bearer realm=…,service=…` challenge, and both skopeo
//! (the upload) and runnerctl's own registry client (the extra tags) must
//! fetch a JWT from the realm with Basic credentials.
//!
//! The realm is a tiny token server run by the test itself (on common's
//! `TcpService`) answering `GET /token?service=…&scope=…` with
//! `{"token": "<JWT>"}` when the request carries the right Basic
//! credentials, `401` otherwise. Tokens are RS256 JWTs signed with
//! `openssl dgst -sha256 -sign`, with the signing certificate in the `x5c`
//! header; the registry (common's `Registry` with `RegistryAuth::Token`, in
//! the common `World`) trusts that certificate (`rootcertbundle`).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;

const TIMEOUT: Duration = Duration::from_secs(900);
const USER: &str = "token-runner";
const PASSWORD: &str = "t0ken-Runner-pw";
const WRONG_PASSWORD: &str = "wr0ng-t0ken-pw";
const SERVICE: &str = "test-registry";
const ISSUER: &str = "test-issuer";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Signing key and JWTs
// ---------------------------------------------------------------------------

/// An RSA key and its self-signed certificate (CN=test-issuer).
struct SigningKey {
    key: PathBuf,
    cert: PathBuf,
    /// Standard base64 of the certificate's DER, for the `x5c` header.
    cert_der_b64: String,
}

impl SigningKey {
    fn generate(dir: &Path) -> Self {
        let key = dir.join("key.pem");
        let cert = dir.join("cert.pem");
        run_checked(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args(["-days", "2", "-subj", "/CN=test-issuer"])
                .stderr(Stdio::null()),
        );
        let pem = fs::read_to_string(&cert).expect("read cert.pem");
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        // Check it is valid base64 (DER) before using it.
        base64::engine::general_purpose::STANDARD
            .decode(&body)
            .expect("cert.pem holds base64 DER");
        SigningKey {
            key,
            cert,
            cert_der_b64: body,
        }
    }

    /// RS256: a PKCS#1 v1.5 signature over SHA-256 of `data`.
    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let out = output_with_input(
            Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(&self.key),
            data,
        );
        assert!(
            out.status.success(),
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A JWT for `subject` granting `access` (a list of
    /// `{"type","name","actions"}`).
    fn jwt(&self, subject: &str, access: serde_json::Value) -> String {
        static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = unix_now();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [self.cert_der_b64],
        });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("jti-{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64url(&signature))
    }
}

/// `repository:<name>:<a,b>` scopes as JWT `access` entries.
fn access_for(scopes: &[String]) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            Some(serde_json::json!({ "type": kind, "name": name, "actions": actions }))
        })
        .collect();
    serde_json::Value::Array(entries)
}

// ---------------------------------------------------------------------------
// Token server
// ---------------------------------------------------------------------------

/// One `GET /token` the token server answered.
#[derive(Debug, Clone)]
struct TokenRequest {
    user_agent: String,
    /// The Basic user, if the request carried Basic credentials.
    basic_user: Option<String>,
    service: Option<String>,
    scopes: Vec<String>,
    /// A token was issued (the credentials were right).
    issued: bool,
}

struct TokenServer {
    log: Arc<Mutex<Vec<TokenRequest>>>,
    service: TcpService,
}

impl TokenServer {
    fn start(key: Arc<SigningKey>) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let service = {
            let log = log.clone();
            TcpService::start(move |stream| {
                let key = key.clone();
                let log = log.clone();
                thread::spawn(move || serve_token(stream, &key, &log));
            })
        };
        TokenServer { log, service }
    }

    fn realm(&self) -> String {
        format!("http://{}/token", self.service.host())
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().expect("token log").clone()
    }
}

fn respond(stream: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

fn serve_token(mut stream: TcpStream, key: &SigningKey, log: &Mutex<Vec<TokenRequest>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        if raw.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let mut authorization = None;
    let mut user_agent = String::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(v.trim().to_string()),
                "user-agent" => user_agent = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != "/token" {
        respond(&mut stream, "404 Not Found", "", "{}");
        return;
    }
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "service" => service = Some(percent_decode(v)),
            "scope" => scopes.push(percent_decode(v)),
            _ => {}
        }
    }
    let basic = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| {
            d.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let ok = matches!(&basic, Some((u, p)) if u == USER && p == PASSWORD)
        && service.as_deref() == Some(SERVICE);
    let record = TokenRequest {
        user_agent,
        basic_user: basic.as_ref().map(|(u, _)| u.clone()),
        service,
        scopes: scopes.clone(),
        issued: ok,
    };
    if !ok {
        log.lock().expect("token log").push(record);
        respond(
            &mut stream,
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"token\"\r\n",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
        );
        return;
    }
    let token = key.jwt(USER, access_for(&scopes));
    log.lock().expect("token log").push(record);
    let body = serde_json::json!({ "token": token, "expires_in": 600 }).to_string();
    respond(&mut stream, "200 OK", "", &body);
}

/// A docker-registry (tests/common's) that trusts tokens signed by `key`
/// from the `realm` of the token server.
fn token_registry(realm: &str, key: &SigningKey) -> Registry {
    Registry::with_token_auth(
        USER,
        PASSWORD,
        RegistryAuth::Token {
            realm: realm.to_string(),
            service: SERVICE.to_string(),
            issuer: ISSUER.to_string(),
            rootcertbundle: key.cert.clone(),
        },
    )
}

/// `Docker-Content-Digest` of `repo:tag`, asked with a token minted for
/// `repository:<repo>:pull` (not through the token server, so its log holds
/// only what runnerctl and skopeo asked for).
fn digest(registry: &Registry, key: &SigningKey, repo: &str, tag: &str) -> Option<String> {
    let token = key.jwt(
        "test-code",
        access_for(&[format!("repository:{repo}:pull")]),
    );
    registry.digest_authorized(repo, tag, &format!("Bearer {token}"))
}

/// `runnerctl bump --no-git-push --json` against the world's registry as
/// [`USER`] with `password`.
fn bump(w: &World, password: &str) -> RunOutput {
    let image = w.image();
    let args = [
        "bump",
        "--no-git-push",
        "--image",
        image.as_str(),
        "--tls-verify",
        "false",
        "--json",
    ];
    w.prepare(Run::new(args).in_repo(&w.repo))
        .env("RUNNERCTL_REGISTRY_USER", USER)
        .env("RUNNERCTL_REGISTRY_PASSWORD", password)
        .timeout(TIMEOUT)
        .run()
}

/// A signing key (in a directory kept as long as the test runs), a token
/// server signing with it, and a registry that trusts it.
fn token_setup() -> (tempfile::TempDir, Arc<SigningKey>, TokenServer, Registry) {
    let key_dir = tempfile::Builder::new()
        .prefix("runnerctl-token-key-")
        .tempdir()
        .expect("tempdir");
    let key = Arc::new(SigningKey::generate(key_dir.path()));
    let tokens = TokenServer::start(key.clone());
    let registry = token_registry(&tokens.realm(), &key);
    (key_dir, key, tokens, registry)
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn bump_pushes_and_tags_through_a_registry_with_token_auth() {
    let (_key_dir, key, tokens, registry) = token_setup();

    // The registry really asks for a token from our realm.
    let ping = registry
        .request("GET", "/v2/", &[], false)
        .expect("ping registry");
    assert_eq!(ping.status, 401);
    let challenge = ping
        .headers
        .get("www-authenticate")
        .map(String::as_str)
        .unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&tokens.realm())
            && challenge.contains(SERVICE),
        "unexpected challenge {challenge:?}"
    );

    let mut w = World::with_registry(registry);
    let new_time = w.base + 3 * DAY;
    w.nixpkgs.commit(new_time);

    let out = bump(&w, PASSWORD);
    assert!(
        out.success() && !out.timed_out,
        "bump failed\n{out}\n--- registry log ---\n{}\n--- token requests ---\n{:#?}",
        w.registry.log(),
        tokens.requests()
    );
    let report = out.json();
    assert_eq!(report["outcome"], "success", "{out}");
    let date = date_tag(new_time);
    assert_eq!(report["date"], date.as_str(), "{out}");
    let out_path = report["out_path"].as_str().expect("out_path").to_string();
    let reported_digest = report["digest"].as_str().expect("digest").to_string();

    // All four tags exist and name one manifest, the one runnerctl reports.
    let tags = [
        "latest".to_string(),
        "unstable".to_string(),
        date.clone(),
        nix_tag(&out_path),
    ];
    for tag in &tags {
        let got = digest(&w.registry, &key, IMAGE_REPO, tag);
        assert_eq!(
            got.as_deref(),
            Some(reported_digest.as_str()),
            "tag {tag}; registry log:\n{}",
            w.registry.log()
        );
    }

    // The token server saw Basic credentials and issued tokens, to skopeo
    // and to runnerctl's own client (ureq), for the repository with pull
    // and push, for the configured service.
    let requests = tokens.requests();
    assert!(!requests.is_empty(), "no token was requested");
    assert!(
        requests
            .iter()
            .all(|r| r.basic_user.as_deref() == Some(USER) && r.issued),
        "{requests:#?}"
    );
    let wanted_scope = format!("repository:{IMAGE_REPO}:pull,push");
    let from_runnerctl: Vec<&TokenRequest> = requests
        .iter()
        .filter(|r| r.user_agent.starts_with("ureq"))
        .collect();
    // One client per push: it authenticates once and reuses the token.
    assert_eq!(
        from_runnerctl.len(),
        1,
        "runnerctl's client should fetch exactly one token: {requests:#?}"
    );
    assert!(
        from_runnerctl
            .iter()
            .all(|r| r.service.as_deref() == Some(SERVICE) && r.scopes == [wanted_scope.clone()]),
        "{from_runnerctl:#?}"
    );
    // The blobs and every tag were written by runnerctl's client with
    // that one token (issue 15: it uploads the blobs itself; skopeo only
    // reads).
    let log = w.registry.log();
    let ureq_uploads = log
        .lines()
        .filter(|l| {
            l.contains("\"POST /v2/") && l.contains("/blobs/uploads/") && l.contains("ureq")
        })
        .count();
    assert!(
        ureq_uploads >= 2,
        "no blob upload by runnerctl's client in the registry log:\n{log}"
    );
    let ureq_puts = log
        .lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/manifests/") && l.contains("ureq"))
        .count();
    assert!(
        ureq_puts >= 4,
        "no manifest PUT by runnerctl's client in the registry log:\n{}",
        w.registry.log()
    );

    // A wrong password: the token server refuses, runnerctl exits 1 and
    // says so.
    let before = tokens.requests().len();
    w.nixpkgs.commit(new_time + DAY);
    let out = bump(&w, WRONG_PASSWORD);
    out.assert_code(1);
    assert!(
        out.stderr.to_lowercase().contains("credentials"),
        "stderr does not mention the credentials\n{out}"
    );
    assert!(!out.stdout.contains(WRONG_PASSWORD) && !out.stderr.contains(WRONG_PASSWORD));
    let refused: Vec<TokenRequest> = tokens.requests()[before..].to_vec();
    assert!(
        !refused.is_empty() && refused.iter().all(|r| !r.issued),
        "{refused:#?}"
    );
}

/// `runnerctl prune` through Bearer tokens: its DELETE is answered with a
/// token for the `delete` action (the registry's challenge names it), and
/// only the older bump's digest goes.
#[test]
fn prune_deletes_through_a_registry_with_token_auth() {
    let (_key_dir, key, tokens, registry) = token_setup();
    let mut w = World::with_registry(registry);
    let mut dates = Vec::new();
    for days in [1, 2] {
        w.upstream_commit(days);
        let out = bump(&w, PASSWORD);
        assert!(out.success(), "bump failed\n{out}\n{}", w.registry.log());
        dates.push(out.json()["date"].as_str().expect("date").to_string());
    }
    let old = digest(&w.registry, &key, IMAGE_REPO, &dates[0]).expect("old digest");
    let before = tokens.requests().len();

    let image = w.image();
    let args = [
        "prune",
        "-C",
        ".",
        "--keep",
        "1",
        "--image",
        image.as_str(),
        "--tls-verify",
        "false",
        "--json",
    ];
    let out = w
        .prepare(Run::new(args).in_repo(&w.repo))
        .env("RUNNERCTL_REGISTRY_USER", USER)
        .env("RUNNERCTL_REGISTRY_PASSWORD", PASSWORD)
        .timeout(TIMEOUT)
        .run();
    assert!(out.success(), "prune failed\n{out}\n{}", w.registry.log());
    assert_eq!(out.json()["deleted"], 1, "{out}");
    assert_eq!(digest(&w.registry, &key, IMAGE_REPO, &dates[0]), None);
    assert!(
        digest(&w.registry, &key, IMAGE_REPO, &old).is_none(),
        "{old} is gone"
    );
    assert!(digest(&w.registry, &key, IMAGE_REPO, &dates[1]).is_some());
    assert!(digest(&w.registry, &key, IMAGE_REPO, "latest").is_some());
    let log = w.registry.log();
    assert!(
        log.lines().any(
            |l| l.contains(&format!("\"DELETE /v2/{IMAGE_REPO}/manifests/{old} "))
                && l.contains("\" 202 ")
        ),
        "{log}"
    );
    let requests = tokens.requests()[before..].to_vec();
    assert!(
        requests.iter().any(|r| r.user_agent.starts_with("ureq")
            && r.scopes.iter().any(|s| s.ends_with(":delete"))
            && r.issued),
        "runnerctl asked for a delete token: {requests:#?}"
    );
    assert!(!out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD));
}
