//! `RegistryError`, and sorting a failed request into skopeo's failure classes.

use miette::Diagnostic;
use thiserror::Error;

use crate::tool::skopeo::{Failure, TlsProblem, AUTH_HELP};

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

/// The class of an I/O error met while talking to the registry, if it is
/// one of the classes skopeo's failures are sorted into.
pub(super) fn io_failure(io: &std::io::Error) -> Option<Failure> {
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
pub(super) fn classify(err: &ureq::Error) -> Option<Failure> {
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

pub(super) fn is_timeout(err: &ureq::Error) -> bool {
    classify(err) == Some(Failure::Timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::Registry;
    use crate::auth::Credentials;
    use crate::tool::skopeo::{explain_failure, Context};
    use std::time::Duration;

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
}
