//! A small client for the registry API, for the one thing skopeo does
//! wastefully: writing a tag for a manifest the registry already holds.
//!
//! `skopeo copy docker://…:a docker://…:b` checks every blob with a HEAD
//! request before it writes the manifest. A retag only needs
//! `PUT /v2/<repo>/manifests/<tag>` with the manifest's bytes: the registry
//! refuses it if a blob were missing, so nothing is lost by not asking.
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge:
//! Basic, or a Bearer token fetched from the realm it names (Forgejo, the
//! distribution registry with token auth, …). Credentials are the ones
//! runnerctl already has; they only ever go into request headers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use miette::Diagnostic;
use thiserror::Error;

use crate::auth::{Credentials, Secret};
use crate::digest::sha256_digest;
use crate::tool::skopeo::{explain_failure, Context, Failure, TlsProblem, AUTH_HELP};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Debug, Error, Diagnostic)]
pub enum RegistryError {
    #[error("the registry rejected the credentials for {url} ({status})")]
    #[diagnostic(code(runnerctl::registry::unauthorized), help("{}", AUTH_HELP))]
    Unauthorized { url: String, status: u16 },

    #[error("{method} {url} failed: HTTP {status}{}", if body.is_empty() { String::new() } else { format!("\n  │ {body}") })]
    #[diagnostic(
        code(runnerctl::registry::http),
        help("the registry refused the request; if it was a 5xx, it is probably temporary: run again, finished stages are not repeated")
    )]
    Http {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },

    /// TLS failed: the registry speaks plain HTTP, its certificate is
    /// signed by an authority this machine does not trust, or another TLS
    /// problem. Headline and help are skopeo's for the same class.
    #[error("{headline} ({url}: {reason})")]
    #[diagnostic(code(runnerctl::registry::tls), help("{help}"))]
    Tls {
        problem: TlsProblem,
        headline: String,
        url: String,
        reason: String,
        help: String,
    },

    /// Connection refused or reset, no route, no such host: the registry
    /// was not there. Running again is the answer once it is.
    #[error("{headline} ({url}: {reason})")]
    #[diagnostic(code(runnerctl::registry::unavailable), help("{help}"))]
    Unavailable {
        headline: String,
        url: String,
        reason: String,
        help: String,
    },

    #[error("could not reach the registry at {url}: {reason}")]
    #[diagnostic(
        code(runnerctl::registry::transport),
        help("check that the registry is up and reachable, and --tls-verify for a plain-HTTP registry; then run again")
    )]
    Transport { url: String, reason: String },

    #[error("{headline} ({url})")]
    #[diagnostic(code(runnerctl::registry::timeout), help("{help}"))]
    Timeout {
        headline: String,
        url: String,
        help: String,
    },

    #[error("the registry's credentials file {path} could not be read: {reason}")]
    #[diagnostic(
        code(runnerctl::registry::auth_file),
        help("point REGISTRY_AUTH_FILE at a containers auth.json")
    )]
    AuthFile { path: String, reason: String },
}

/// User and password for one registry.
#[derive(Clone)]
struct Basic {
    user: String,
    password: Secret,
}

impl Basic {
    fn header(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.user,
            self.password.expose()
        ));
        format!("Basic {token}")
    }
}

/// Find the credentials for `registry` (host[:port]).
fn basic_for(creds: &Credentials, registry: &str) -> Result<Option<Basic>, RegistryError> {
    match creds {
        Credentials::None => Ok(None),
        Credentials::UserPassword { user, password } => Ok(Some(Basic {
            user: user.clone(),
            password: password.clone(),
        })),
        Credentials::AuthFile(path) => {
            let bad = |reason: String| RegistryError::AuthFile {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let auths = json.get("auths").and_then(|a| a.as_object());
            let entry = auths.and_then(|a| {
                a.iter()
                    .find(|(k, _)| {
                        let k = k
                            .trim_start_matches("https://")
                            .trim_start_matches("http://");
                        k == registry || k.split('/').next() == Some(registry)
                    })
                    .map(|(_, v)| v)
            });
            let Some(token) = entry.and_then(|e| e.get("auth")).and_then(|a| a.as_str()) else {
                return Ok(None);
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .map_err(|e| bad(format!("auth for {registry}: {e}")))?;
            let decoded = String::from_utf8(decoded).map_err(|e| bad(e.to_string()))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| bad(format!("auth for {registry} is not user:password")))?;
            Ok(Some(Basic {
                user: user.to_string(),
                password: Secret::new(password.to_string()),
            }))
        }
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match key.as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            "scope" => scope = Some(value.to_string()),
            _ => {}
        }
        rest = next.trim_start_matches(',').trim();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: realm?,
            service,
            scope,
        }),
        _ => None,
    }
}

/// A certificate verifier that accepts anything, for `--tls-verify false`.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The class of an I/O error met while talking to the registry, if it is
/// one of the classes skopeo's failures are sorted into.
fn io_failure(io: &std::io::Error) -> Option<Failure> {
    use std::io::ErrorKind as K;
    if let Some(tls) = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Some(Failure::Tls(tls_problem(tls)));
    }
    match io.kind() {
        // A registry that took longer than allowed to accept the
        // connection, or to send or take bytes.
        K::TimedOut | K::WouldBlock => Some(Failure::Timeout),
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::AddrNotAvailable => Some(Failure::Unavailable),
        _ => None,
    }
}

fn tls_problem(err: &rustls::Error) -> TlsProblem {
    match err {
        // A plain-HTTP answer to the TLS ClientHello ("received corrupt
        // message of type InvalidContentType").
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            TlsProblem::PlainHttp
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            TlsProblem::UnknownAuthority
        }
        _ => TlsProblem::Other,
    }
}

/// Sort a failed request into skopeo's classes: a timeout, TLS (plain
/// HTTP, an unknown CA, other), or the registry not being there. `None`
/// for anything else (including an HTTP status: those are answers).
fn classify(err: &ureq::Error) -> Option<Failure> {
    let ureq::Error::Transport(transport) = err else {
        return None;
    };
    let mut found = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(transport);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(Failure::Tls(tls_problem(tls)));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io_failure(io) {
                Some(failure @ (Failure::Tls(_) | Failure::Timeout)) => return Some(failure),
                Some(failure) => found = found.or(Some(failure)),
                None => {}
            }
        }
        source = err.source();
    }
    if found.is_none() && transport.kind() == ureq::ErrorKind::Dns {
        found = Some(Failure::Unavailable);
    }
    found
}

fn is_timeout(err: &ureq::Error) -> bool {
    classify(err) == Some(Failure::Timeout)
}

/// An agent whose every exchange is bounded by `timeout`: connecting, and
/// each read and write (a registry that accepts the connection and then
/// says nothing fails after `timeout`, not never).
fn agent(tls_verify: bool, timeout: Duration) -> ureq::Agent {
    // No connection pool: ureq 2 clears a connection's read and write
    // timeouts when it goes back to the pool and does not set them again
    // when it is reused, so a request on a kept-alive connection (the one
    // preflight opened, reused by push) would wait for a stopped registry
    // for good. A handful of requests per run can afford a fresh
    // connection each.
    let builder = ureq::AgentBuilder::new()
        .max_idle_connections(0)
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .timeout_write(timeout)
        .redirects(5);
    if tls_verify {
        return builder.build();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(config) => builder.tls_config(Arc::new(config)).build(),
        Err(_) => builder.build(),
    }
}

/// One repository on one registry.
pub struct Registry {
    agent: ureq::Agent,
    registry: String,
    repository: String,
    basic: Option<Basic>,
    timeout: Duration,
    /// `https` first; with --tls-verify false, `http` when HTTPS fails.
    schemes: Vec<&'static str>,
    state: Mutex<Session>,
}

#[derive(Default)]
struct Session {
    scheme: Option<&'static str>,
    authorization: Option<String>,
    /// `GET /v2/` was asked: the scheme and the credentials are known.
    pinged: bool,
}

/// What a request needs: method, path below /v2/<repo>/, headers, body.
struct Request<'a> {
    method: &'static str,
    path: String,
    accept: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Option<&'a [u8]>,
}

impl Registry {
    pub fn new(
        registry: &str,
        repository: &str,
        creds: &Credentials,
        tls_verify: bool,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        Ok(Registry {
            agent: agent(tls_verify, timeout),
            timeout,
            registry: registry.to_string(),
            repository: repository.to_string(),
            basic: basic_for(creds, registry)?,
            schemes: if tls_verify {
                vec!["https"]
            } else {
                vec!["https", "http"]
            },
            state: Mutex::new(Session::default()),
        })
    }

    /// A request that did not get through, in the class it belongs to,
    /// with skopeo's headline and help for that class.
    fn transport(&self, url: &str, err: ureq::Error) -> RegistryError {
        let failure = classify(&err);
        self.failed(url, failure, err.to_string())
    }

    fn failed(&self, url: &str, failure: Option<Failure>, reason: String) -> RegistryError {
        let explain = |failure| {
            explain_failure(
                failure,
                &Context {
                    host: Some(&self.registry),
                    timeout: self.timeout,
                    policy: std::path::Path::new(""),
                    user_policy: false,
                },
            )
        };
        let url = url.to_string();
        match failure {
            Some(Failure::Timeout) => {
                let (headline, help) = explain(Failure::Timeout);
                RegistryError::Timeout {
                    headline,
                    url,
                    help,
                }
            }
            Some(Failure::Tls(problem)) => {
                let (headline, help) = explain(Failure::Tls(problem));
                RegistryError::Tls {
                    problem,
                    headline,
                    url,
                    reason,
                    help,
                }
            }
            Some(Failure::Unavailable) => {
                let (headline, help) = explain(Failure::Unavailable);
                RegistryError::Unavailable {
                    headline,
                    url,
                    reason,
                    help,
                }
            }
            _ => RegistryError::Transport { url, reason },
        }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}/v2/{}/{path}", self.registry, self.repository)
    }

    fn send(
        &self,
        url: &str,
        req: &Request,
        authorization: Option<&str>,
    ) -> Result<ureq::Response, ureq::Error> {
        let mut r = self.agent.request(req.method, url);
        if let Some(accept) = req.accept {
            r = r.set("Accept", accept);
        }
        if let Some(ct) = req.content_type {
            r = r.set("Content-Type", ct);
        }
        if let Some(auth) = authorization {
            r = r.set("Authorization", auth);
        }
        match req.body {
            Some(body) => r.send_bytes(body),
            None => r.call(),
        }
    }

    /// Fetch a token for a Bearer challenge.
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, RegistryError> {
        let default_scope = format!("repository:{}:pull,push", self.repository);
        let mut r = self
            .agent
            .get(realm)
            .query("scope", scope.unwrap_or(&default_scope));
        if let Some(service) = service {
            r = r.query("service", service);
        }
        if let Some(basic) = &self.basic {
            r = r.set("Authorization", &basic.header());
        }
        let response = match r.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(status, _)) if status == 401 || status == 403 => {
                return Err(RegistryError::Unauthorized {
                    url: realm.to_string(),
                    status,
                })
            }
            Err(ureq::Error::Status(status, resp)) => {
                return Err(RegistryError::Http {
                    method: "GET",
                    url: realm.to_string(),
                    status,
                    body: body_tail(resp),
                })
            }
            Err(e) => return Err(self.transport(realm, e)),
        };
        let json: serde_json::Value =
            serde_json::from_reader(response.into_reader().take(1024 * 1024)).map_err(|e| {
                RegistryError::Transport {
                    url: realm.to_string(),
                    reason: e.to_string(),
                }
            })?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| RegistryError::Transport {
                url: realm.to_string(),
                reason: "the token endpoint returned no token".to_string(),
            })
    }

    /// The Authorization header that answers a 401's challenge: a token for
    /// a Bearer challenge, else the Basic credentials (None without any).
    fn answer(&self, resp: &ureq::Response) -> Result<Option<String>, RegistryError> {
        match resp.header("WWW-Authenticate").and_then(parse_challenge) {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => Ok(Some(self.token(
                &realm,
                service.as_deref(),
                scope.as_deref(),
            )?)),
            _ => Ok(self.basic.as_ref().map(Basic::header)),
        }
    }

    /// `GET /v2/` once, as docker clients do: learns the scheme and answers
    /// the authentication challenge before any request with a body, so no
    /// manifest is sent twice.
    fn ping(&self) -> Result<(), RegistryError> {
        if self.state.lock().map(|s| s.pinged).unwrap_or(false) {
            return Ok(());
        }
        let mut last_transport = None;
        for scheme in self.schemes.clone() {
            let url = format!("{scheme}://{}/v2/", self.registry);
            let authorization = match self.agent.get(&url).call() {
                Ok(_) => None,
                Err(ureq::Error::Status(401, resp)) => self.answer(&resp)?,
                // Some registries answer 404 or 403 here; the request
                // itself will tell.
                Err(ureq::Error::Status(_, _)) => None,
                // A registry that does not answer is not asked again
                // over plain HTTP: that would only double the wait.
                Err(e) if is_timeout(&e) => return Err(self.transport(&url, e)),
                Err(e) => {
                    last_transport = Some(self.transport(&url, e));
                    continue;
                }
            };
            if let Ok(mut state) = self.state.lock() {
                state.scheme = Some(scheme);
                state.authorization = authorization;
                state.pinged = true;
            }
            return Ok(());
        }
        Err(last_transport.unwrap_or_else(|| RegistryError::Transport {
            url: self.registry.clone(),
            reason: "no scheme to try".into(),
        }))
    }

    /// Check the login before anything changes: `GET /v2/` with the
    /// credentials (for a Bearer challenge, with a token for this
    /// repository's pull and push scope). A 401 or 403 is
    /// [`RegistryError::Unauthorized`].
    pub fn check_auth(&self) -> Result<(), RegistryError> {
        self.ping()?;
        let (scheme, authorization) = match self.state.lock() {
            Ok(state) => (state.scheme, state.authorization.clone()),
            Err(_) => (None, None),
        };
        let url = format!("{}://{}/v2/", scheme.unwrap_or("https"), self.registry);
        let mut r = self.agent.get(&url);
        if let Some(auth) = &authorization {
            r = r.set("Authorization", auth);
        }
        match r.call() {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(status, _)) if status == 401 || status == 403 => {
                Err(RegistryError::Unauthorized { url, status })
            }
            // Some registries answer 404 at /v2/; the push will tell.
            Err(ureq::Error::Status(_, _)) => Ok(()),
            Err(e) => Err(self.transport(&url, e)),
        }
    }

    /// Send a request, answering one authentication challenge, and pick the
    /// scheme that works.
    fn execute(&self, req: Request) -> Result<Option<ureq::Response>, RegistryError> {
        self.ping()?;
        let (scheme, mut authorization) = {
            let state = self.state.lock().map_err(|_| RegistryError::Transport {
                url: self.registry.clone(),
                reason: "internal lock poisoned".into(),
            })?;
            (state.scheme, state.authorization.clone())
        };
        let schemes: Vec<&'static str> = match scheme {
            Some(s) => vec![s],
            None => self.schemes.clone(),
        };
        let mut last_transport = None;
        for scheme in schemes {
            let url = self.url(scheme, &req.path);
            let mut answered_challenge = false;
            loop {
                match self.send(&url, &req, authorization.as_deref()) {
                    Ok(response) => {
                        if let Ok(mut state) = self.state.lock() {
                            state.scheme = Some(scheme);
                            state.authorization = authorization.clone();
                        }
                        return Ok(Some(response));
                    }
                    Err(ureq::Error::Status(404, _)) => {
                        if let Ok(mut state) = self.state.lock() {
                            state.scheme = Some(scheme);
                            state.authorization = authorization.clone();
                        }
                        return Ok(None);
                    }
                    Err(ureq::Error::Status(401, resp)) if !answered_challenge => {
                        answered_challenge = true;
                        authorization = match self.answer(&resp)? {
                            Some(answer) => Some(answer),
                            None => return Err(RegistryError::Unauthorized { url, status: 401 }),
                        };
                    }
                    Err(ureq::Error::Status(status, _)) if status == 401 || status == 403 => {
                        return Err(RegistryError::Unauthorized { url, status });
                    }
                    Err(ureq::Error::Status(status, resp)) => {
                        return Err(RegistryError::Http {
                            method: req.method,
                            url,
                            status,
                            body: body_tail(resp),
                        });
                    }
                    Err(e) if is_timeout(&e) => return Err(self.transport(&url, e)),
                    Err(e) => {
                        last_transport = Some(self.transport(&url, e));
                        break;
                    }
                }
            }
        }
        Err(last_transport.unwrap_or_else(|| RegistryError::Transport {
            url: self.registry.clone(),
            reason: "no scheme to try".into(),
        }))
    }

    /// The manifest bytes and media type at a tag or digest, if any.
    pub fn manifest(&self, reference: &str) -> Result<Option<(Vec<u8>, String)>, RegistryError> {
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";
        let Some(response) = self.execute(Request {
            method: "GET",
            path: format!("manifests/{reference}"),
            accept: Some(accept),
            content_type: None,
            body: None,
        })?
        else {
            return Ok(None);
        };
        let media_type = response.content_type().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut response.into_reader().take(16 * 1024 * 1024),
            &mut bytes,
        )
        .map_err(|e| {
            self.failed(
                &format!(
                    "{}/v2/{}/manifests/{reference}",
                    self.registry, self.repository
                ),
                io_failure(&e),
                e.to_string(),
            )
        })?;
        Ok(Some((bytes, media_type)))
    }

    /// Point `tag` at a manifest the repository already has the blobs of.
    /// Returns the digest the registry reports.
    pub fn put_manifest(
        &self,
        tag: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let response = self.execute(Request {
            method: "PUT",
            path: format!("manifests/{tag}"),
            accept: None,
            content_type: Some(media_type),
            body: Some(bytes),
        })?;
        let reported = response
            .as_ref()
            .and_then(|r| r.header("Docker-Content-Digest"))
            .map(str::to_string);
        Ok(reported.unwrap_or_else(|| sha256_digest(bytes)))
    }
}

use std::io::Read as _;

fn body_tail(resp: ureq::Response) -> String {
    let mut text = String::new();
    let _ = resp.into_reader().take(2048).read_to_string(&mut text);
    let text = text.trim().replace('\n', " ");
    text.chars().take(300).collect()
}

/// The media type a manifest declares (OCI manifests may leave it out).
pub fn media_type_of(manifest: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| OCI_MANIFEST.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge("Basic realm=\"Registry Realm\""),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://git.example.org/v2/token\",service=\"container_registry\",scope=\"repository:infra/runners/nixos:pull,push\""
            ),
            Some(Challenge::Bearer {
                realm: "https://git.example.org/v2/token".into(),
                service: Some("container_registry".into()),
                scope: Some("repository:infra/runners/nixos:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=https://auth.example/token,service=reg"),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn credentials_from_an_auth_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.json");
        let token = base64::engine::general_purpose::STANDARD.encode("ci:pw:with:colons");
        std::fs::write(
            &path,
            format!("{{\"auths\":{{\"https://reg.example:5000\":{{\"auth\":\"{token}\"}}}}}}"),
        )
        .expect("write");
        let basic = basic_for(&Credentials::AuthFile(path.clone()), "reg.example:5000")
            .expect("read")
            .expect("found");
        assert_eq!(basic.user, "ci");
        assert_eq!(basic.password.expose(), "pw:with:colons");
        assert!(basic_for(&Credentials::AuthFile(path), "other.example")
            .expect("read")
            .is_none());
    }

    /// `check_auth` against 127.0.0.1:`port`, verifying TLS, with a 2 s
    /// timeout.
    fn check(port: u16) -> RegistryError {
        let client = Registry::new(
            &format!("127.0.0.1:{port}"),
            "infra/runners/nixos",
            &Credentials::None,
            true,
            Duration::from_secs(2),
        )
        .expect("client");
        client.check_auth().expect_err("no registry there")
    }

    #[test]
    fn transport_errors_get_skopeos_classes_and_helps() {
        use std::io::{Read, Write};
        use std::net::TcpListener;

        // Nothing listens: unavailable, with the run-again help.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let err = check(port);
        assert!(matches!(err, RegistryError::Unavailable { .. }), "{err:?}");
        let (headline, help) = explain_failure(
            Failure::Unavailable,
            &Context {
                host: Some(&format!("127.0.0.1:{port}")),
                timeout: Duration::from_secs(2),
                policy: std::path::Path::new(""),
                user_policy: false,
            },
        );
        assert!(err.to_string().starts_with(&headline), "{err}");
        assert!(help.contains("run the same command again"));

        // Plain HTTP answers the TLS hello: the plain-HTTP TLS class.
        let http = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = http.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = http.accept().expect("accept");
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        });
        let err = check(port);
        server.join().expect("server");
        assert!(
            matches!(
                err,
                RegistryError::Tls {
                    problem: TlsProblem::PlainHttp,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("speaks plain HTTP"), "{err}");

        // Accepts and never answers: a timeout after 2 s, not never.
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let started = std::time::Instant::now();
        let err = check(port);
        assert!(matches!(err, RegistryError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(
            err.to_string().contains("did not answer within 2 s"),
            "{err}"
        );
        drop(silent);
    }

    #[test]
    fn media_types() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(media_type_of(br#"{"schemaVersion":2}"#), OCI_MANIFEST);
    }
}
