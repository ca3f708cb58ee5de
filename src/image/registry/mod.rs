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

use std::cell::RefCell;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::image::MediaType;

use crate::auth::Credentials;
use crate::digest::sha256_digest;
use crate::tool::skopeo::{explain_failure, Context, Failure};

mod auth;
mod blobs;
mod error;
mod retention;

pub use auth::{parse_challenge, Challenge};
pub use blobs::BlobUpload;
pub use error::RegistryError;
pub use retention::{next_page, TagList, MANIFEST_ACCEPT, TAG_PAGE};

use auth::{basic_for, Basic};
use error::{classify, io_failure, is_timeout};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

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

/// An agent whose every exchange is bounded by `timeout`: connecting, and
/// each read and write (a registry that accepts the connection and then
/// says nothing fails after `timeout`, not never).
///
/// `pooled`: connections are kept for the next request (one TCP and TLS
/// handshake per worker instead of one per request). ureq 2 clears a
/// connection's read and write timeouts when it goes back to the pool and
/// does not set them again when it is reused, so every request on a
/// pooled agent carries a deadline ([`Registry::short`]), which ureq turns
/// into a timeout before each read. A request whose body may take longer
/// than `timeout` to send (a streamed blob) goes on an unpooled agent: a
/// fresh connection whose timeouts bound each read and write instead.
fn agent(tls_verify: bool, timeout: Duration, pooled: bool) -> ureq::Agent {
    let idle = if pooled { 8 } else { 0 };
    let builder = ureq::AgentBuilder::new()
        .max_idle_connections(idle)
        .max_idle_connections_per_host(idle)
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
    /// Keeps connections: for requests with no body or a small one.
    agent: ureq::Agent,
    /// A fresh connection per request: for blobs streamed up.
    streaming: ureq::Agent,
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
    /// A streamed upload was answered 401 (see `refused_stream`).
    stream_refused: bool,
}

/// What a request needs: method, path below /v2/<repo>/, headers, body.
struct Request<'a> {
    method: &'static str,
    path: String,
    accept: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Option<&'a [u8]>,
    /// More headers (e.g. `Content-Range` for a chunk of a blob).
    extra: Vec<(&'static str, String)>,
    /// A file to send as the body instead (a whole blob), streamed.
    file: Option<&'a std::path::Path>,
    /// A body of unknown length, sent as it is read (chunked transfer
    /// encoding); it cannot be sent twice.
    stream: Option<&'a RefCell<dyn Read + 'a>>,
}

impl<'a> Request<'a> {
    /// A request with no headers of its own and no body.
    fn new(method: &'static str, path: impl Into<String>) -> Request<'a> {
        Request {
            method,
            path: path.into(),
            accept: None,
            content_type: None,
            body: None,
            extra: Vec::new(),
            file: None,
            stream: None,
        }
    }
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
            agent: agent(tls_verify, timeout, true),
            streaming: agent(tls_verify, timeout, false),
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

    /// `req` with a deadline of `timeout`: on a pooled connection it is what
    /// bounds each read (see [`agent`]).
    fn short(&self, req: ureq::Request) -> ureq::Request {
        req.timeout(self.timeout)
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

    /// A path below `/v2/<repo>/`, or one the registry gave (a blob
    /// upload's `Location`: absolute, or from the host's root).
    fn url(&self, scheme: &str, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            return path.to_string();
        }
        if path.starts_with('/') {
            return format!("{scheme}://{}{path}", self.registry);
        }
        format!("{scheme}://{}/v2/{}/{path}", self.registry, self.repository)
    }

    fn send(
        &self,
        url: &str,
        req: &Request,
        authorization: Option<&str>,
    ) -> Result<ureq::Response, ureq::Error> {
        let long = req.stream.is_some() || req.file.is_some();
        let mut r = if long {
            self.streaming.request(req.method, url)
        } else {
            self.short(self.agent.request(req.method, url))
        };
        if let Some(accept) = req.accept {
            r = r.set("Accept", accept);
        }
        if let Some(ct) = req.content_type {
            r = r.set("Content-Type", ct);
        }
        if let Some(auth) = authorization {
            r = r.set("Authorization", auth);
        }
        for (name, value) in &req.extra {
            r = r.set(name, value);
        }
        if let Some(stream) = req.stream {
            let mut body = stream.borrow_mut();
            return r.send(&mut *body);
        }
        if let Some(path) = req.file {
            let file = std::fs::File::open(path).map_err(ureq::Error::from)?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            return r
                .set("Content-Length", &len.to_string())
                .send(std::io::BufReader::with_capacity(256 * 1024, file));
        }
        match req.body {
            Some(body) => r.send_bytes(body),
            None => r.call(),
        }
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
            let authorization = match self.short(self.agent.get(&url)).call() {
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
        let mut r = self.short(self.agent.get(&url));
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
                            if req.stream.is_some() {
                                state.stream_refused = false;
                            }
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
                        if req.stream.is_some() {
                            return Err(self.refused_stream(url, authorization));
                        }
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

    /// A streamed body answered 401: the body is spent, so it cannot go
    /// again here. With a new token (an old one expired during a long
    /// upload), the caller may send the blob once more: a transient
    /// failure. With the same credentials as before, or a second time in a
    /// row, the registry refuses them.
    fn refused_stream(&self, url: String, answer: Option<String>) -> RegistryError {
        let Ok(mut state) = self.state.lock() else {
            return RegistryError::Unauthorized { url, status: 401 };
        };
        let renewed = answer.is_some() && answer != state.authorization && !state.stream_refused;
        state.stream_refused = true;
        state.authorization = answer;
        if renewed {
            RegistryError::Transport {
                url,
                reason: "the registry asked for credentials again during an upload".into(),
            }
        } else {
            RegistryError::Unauthorized { url, status: 401 }
        }
    }

    /// The manifest bytes and media type at a tag or digest, if any.
    pub fn manifest(&self, reference: &str) -> Result<Option<(Vec<u8>, String)>, RegistryError> {
        let path = format!("manifests/{reference}");
        let Some(response) = self.execute(Request {
            accept: Some(MANIFEST_ACCEPT),
            ..Request::new("GET", path.clone())
        })?
        else {
            return Ok(None);
        };
        let media_type = response.content_type().to_string();
        let bytes = self.read_body(response, 16 * 1024 * 1024, &path)?;
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
            content_type: Some(media_type),
            body: Some(bytes),
            ..Request::new("PUT", format!("manifests/{tag}"))
        })?;
        let reported = response
            .as_ref()
            .and_then(|r| r.header("Docker-Content-Digest"))
            .map(str::to_string);
        Ok(reported.unwrap_or_else(|| sha256_digest(bytes)))
    }

    /// Delete the manifest `digest` (every tag that points at it goes with
    /// it). `false`: the repository has no such manifest.
    pub fn delete_manifest(&self, digest: &str) -> Result<bool, RegistryError> {
        let response = self.execute(Request::new("DELETE", format!("manifests/{digest}")))?;
        Ok(response.is_some())
    }
}

fn body_tail(resp: ureq::Response) -> String {
    let mut text = String::new();
    let _ = resp.into_reader().take(2048).read_to_string(&mut text);
    let text = text.trim().replace('\n', " ");
    text.chars().take(300).collect()
}

/// The media type a manifest declares (OCI manifests may leave it out).
/// Only that field is read: the bytes are sent on as they are.
pub fn media_type_of(manifest: &[u8]) -> String {
    /// The one field every manifest and index may carry.
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<MediaType>,
    }
    serde_json::from_slice::<Typed>(manifest)
        .ok()
        .and_then(|t| t.media_type)
        .unwrap_or(MediaType::ImageManifest)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(media_type_of(br#"{"schemaVersion":2}"#), OCI_MANIFEST);
    }
}
