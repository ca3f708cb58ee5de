//! Reading what went wrong from skopeo's stderr, and explaining it as a diagnostic.

use std::path::Path;
use std::time::Duration;

use miette::Diagnostic;
use thiserror::Error;

/// What kind of TLS problem skopeo met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The registry speaks plain HTTP.
    PlainHttp,
    /// Its certificate is signed by a CA this machine does not trust.
    UnknownAuthority,
    /// Anything else: wrong name, expired, handshake failure.
    Other,
}

/// What skopeo's stderr says went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The trust policy could not be loaded, or it rejected the source.
    Policy,
    /// 401 or 403.
    Unauthorized,
    /// The tag or repository does not exist.
    NotFound,
    Tls(TlsProblem),
    /// Connection refused or reset, no route, or a 5xx: the registry was
    /// not (properly) there.
    Unavailable,
    /// skopeo's `--command-timeout` or a network timeout.
    Timeout,
    Other,
}

/// Classify skopeo's stderr. The patterns are the messages skopeo 1.9.3
/// (containers/image 5.2x, Go 1.19) prints, and their wording in later
/// releases (skopeo 1.18: "tls: failed to verify certificate: x509: …",
/// "unable to retrieve auth token: invalid username/password: …").
pub fn classify(stderr: &[String]) -> Failure {
    let text = stderr.join("\n").to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    // "Error loading trust policy: …", "Source image rejected: Running image
    // oci:… is rejected by policy."
    if has(&[
        "trust policy",
        "rejected by policy",
        "source image rejected",
        "policy requirement",
    ]) {
        Failure::Policy
    } else if has(&[
        "context deadline exceeded",
        "i/o timeout",
        "client.timeout exceeded",
        "tls handshake timeout",
        "timeout awaiting response headers",
    ]) {
        Failure::Timeout
    } else if has(&["server gave http response to https client"]) {
        Failure::Tls(TlsProblem::PlainHttp)
    } else if has(&[
        "certificate signed by unknown authority",
        "failed to verify certificate: x509: certificate signed by unknown",
    ]) {
        Failure::Tls(TlsProblem::UnknownAuthority)
    } else if has(&["x509: ", "tls: "]) {
        Failure::Tls(TlsProblem::Other)
    } else if has(&[
        "unauthorized",
        "authentication required",
        "invalid username/password",
        "requested access to the resource is denied",
        "denied: ",
        "403 forbidden",
        "forbidden: ",
        "statuscode: 401",
        "statuscode: 403",
        "invalid status code from registry 403",
    ]) {
        Failure::Unauthorized
    } else if has(&[
        "manifest unknown",
        "name unknown",
        "not found",
        "statuscode: 404",
    ]) {
        Failure::NotFound
    } else if has(&[
        "connection refused",
        "connection reset by peer",
        "no route to host",
        "network is unreachable",
        "no such host",
        "500 internal server error",
        "502 bad gateway",
        "503 service unavailable",
        "504 gateway timeout",
        "unexpected http status: 5",
        "invalid status code from registry 5",
        "statuscode: 5",
        "too many requests to registry",
    ]) {
        Failure::Unavailable
    } else {
        Failure::Other
    }
}

/// The registry answered that the tag (or its repository) does not exist,
/// which for `inspect` is an answer, not an error. A 404 from something
/// that is not a registry at all ("pinging container registry …: invalid
/// status code from registry 404") is not.
pub fn tag_is_absent(stderr: &[String]) -> bool {
    let text = stderr.join("\n").to_ascii_lowercase();
    classify(stderr) == Failure::NotFound
        && (text.contains("manifest unknown") || text.contains("name unknown"))
}

pub const AUTH_HELP: &str = "the registry rejected the credentials: check RUNNERCTL_REGISTRY_USER and RUNNERCTL_REGISTRY_PASSWORD (or the file named by REGISTRY_AUTH_FILE), then run again; nothing was committed or pushed to git";

/// What a classified failure needs to explain itself.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// `HOST[:PORT]` of the registry, if the command talked to one.
    pub host: Option<&'a str>,
    pub timeout: Duration,
    pub policy: &'a Path,
    /// The policy is the user's (--policy), not runnerctl's own.
    pub user_policy: bool,
}

/// The one-line headline and the help for a failure.
pub fn explain_failure(failure: Failure, cx: &Context) -> (String, String) {
    let host = cx.host.unwrap_or("the registry");
    let secs = cx.timeout.as_secs();
    let policy = cx.policy.display();
    let not_again = "running the same command again will not help";
    match failure {
        Failure::Policy => (
            "skopeo's containers trust policy refused the copy".into(),
            if cx.user_policy {
                format!("the policy named by --policy / RUNNERCTL_POLICY ({policy}) could not be loaded or rejects this image: fix that file (containers-policy.json(5)), or leave --policy unset to use runnerctl's own, which accepts the archive and layout it builds; {not_again}")
            } else {
                format!("runnerctl's own policy ({policy}) accepts only the archive and layout it builds; something else was copied, or the file was changed: delete it (runnerctl writes it again) or name yours with --policy; {not_again}")
            },
        ),
        Failure::Unauthorized => (
            format!("{host} refused the credentials (401/403)"),
            AUTH_HELP.to_string(),
        ),
        Failure::NotFound => (
            format!("{host} has no such repository or tag, or is not a registry"),
            format!("check the address and the repository path in --image / RUNNERCTL_IMAGE (a registry answers 401 or 200 at http(s)://{host}/v2/), and that the account may create the repository; {not_again}"),
        ),
        Failure::Tls(TlsProblem::PlainHttp) => (
            format!("{host} speaks plain HTTP, not HTTPS"),
            "for a plain-HTTP registry pass --tls-verify false (or RUNNERCTL_TLS_VERIFY=false); otherwise check the port in --image".to_string(),
        ),
        Failure::Tls(TlsProblem::UnknownAuthority) => (
            format!("the TLS certificate of {host} is signed by an authority this machine does not trust"),
            format!("add the registry's CA to the system bundle (Debian: copy it to /usr/local/share/ca-certificates/ and run update-ca-certificates), or point SSL_CERT_FILE at a CA bundle that has it; skopeo also reads /etc/containers/certs.d/{host}/ca.crt. --tls-verify false turns checking off (only for a registry you trust otherwise)"),
        ),
        Failure::Tls(TlsProblem::Other) => (
            format!("TLS with {host} failed"),
            "check the registry's certificate (its name must match the host in --image, and it must not be expired), or SSL_CERT_FILE; --tls-verify false turns checking off".to_string(),
        ),
        Failure::Unavailable => (
            format!("{host} could not be reached or failed (connection refused, reset, or a 5xx)"),
            format!("check that the registry at {host} is up and that --image names it; then run the same command again: finished stages are not repeated"),
        ),
        Failure::Timeout => (
            format!("the registry at {host} did not answer within {secs} s"),
            format!("it accepted the connection but did not answer, or the address is unroutable; check that the registry at {host} is healthy, then run the same command again (finished stages are not repeated), or allow it longer with --registry-timeout / RUNNERCTL_REGISTRY_TIMEOUT"),
        ),
        Failure::Other => (
            "skopeo failed".into(),
            format!("see skopeo's own words above; the image was not (fully) pushed and nothing was committed; {not_again} unless the cause is fixed"),
        ),
    }
}

/// A skopeo call that ran and failed, with its class.
#[derive(Debug, Error)]
#[error("{headline}\n`{command}` failed ({status})\n{}", crate::tool::format_tail(.tail))]
pub struct SkopeoFailed {
    pub failure: Failure,
    pub headline: String,
    pub command: String,
    pub status: String,
    pub tail: Vec<String>,
    pub help: String,
}

impl SkopeoFailed {
    pub fn code_name(&self) -> &'static str {
        match self.failure {
            Failure::Policy => "runnerctl::skopeo::policy",
            Failure::Unauthorized => "runnerctl::skopeo::unauthorized",
            Failure::NotFound => "runnerctl::skopeo::not_found",
            Failure::Tls(_) => "runnerctl::skopeo::tls",
            Failure::Unavailable => "runnerctl::skopeo::unavailable",
            Failure::Timeout => "runnerctl::registry::timeout",
            Failure::Other => "runnerctl::skopeo::failed",
        }
    }
}

impl Diagnostic for SkopeoFailed {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.code_name()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(&self.help))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    /// What skopeo 1.9.3 printed here, run against docker-registry 2.8 on
    /// 127.0.0.1, one line each (the `time=` stamp kept as it was).
    const REAL_1_9_3: &[(&str, Failure)] = &[
        (
            r#"time="2026-12-01T06:18:41Z" level=fatal msg="Source image rejected: Running image oci:layout:t is rejected by policy.""#,
            Failure::Policy,
        ),
        (
            r#"time="2026-12-01T06:18:41Z" level=fatal msg="Error loading trust policy: open /etc/containers/policy.json: no such file or directory""#,
            Failure::Policy,
        ),
        (
            r#"time="2026-12-01T06:18:41Z" level=fatal msg="Error loading trust policy: invalid policy in \"notjson.json\": invalid character 'o' in literal null (expecting 'u')""#,
            Failure::Policy,
        ),
        (
            r#"time="2026-12-01T06:18:41Z" level=fatal msg="trying to reuse blob sha256:1e93cf090ac787e2248b4e962d9496cd6ac868a58825a9ee0e318221969db529 at destination: checking whether a blob sha256:1e93cf090ac787e2248b4e962d9496cd6ac868a58825a9ee0e318221969db529 exists in 127.0.0.1:45123/x/y: unauthorized: authentication required""#,
            Failure::Unauthorized,
        ),
        (
            r#"time="2026-12-01T06:18:41Z" level=fatal msg="Error parsing image name \"docker://127.0.0.1:45123/x/y:t\": reading manifest t in 127.0.0.1:45123/x/y: unauthorized: authentication required""#,
            Failure::Unauthorized,
        ),
        (
            r#"time="2026-12-01T06:18:41Z" level=fatal msg="Error parsing image name \"docker://127.0.0.1:45123/x/y:nosuch\": reading manifest nosuch in 127.0.0.1:45123/x/y: manifest unknown: manifest unknown""#,
            Failure::NotFound,
        ),
        (
            r#"time="2026-12-01T06:18:41Z" level=fatal msg="Error parsing image name \"docker://127.0.0.1:45123/x/y:t\": pinging container registry 127.0.0.1:45123: Get \"https://127.0.0.1:45123/v2/\": http: server gave HTTP response to HTTPS client""#,
            Failure::Tls(TlsProblem::PlainHttp),
        ),
        (
            r#"time="2026-12-01T06:18:58Z" level=fatal msg="trying to reuse blob sha256:1e93cf090ac787e2248b4e962d9496cd6ac868a58825a9ee0e318221969db529 at destination: pinging container registry 127.0.0.1:45125: Get \"https://127.0.0.1:45125/v2/\": x509: certificate signed by unknown authority""#,
            Failure::Tls(TlsProblem::UnknownAuthority),
        ),
        (
            r#"time="2026-12-01T06:18:41Z" level=fatal msg="Error parsing image name \"docker://127.0.0.1:1/x/y:t\": pinging container registry 127.0.0.1:1: Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused""#,
            Failure::Unavailable,
        ),
        (
            r#"time="2026-12-01T06:18:51Z" level=fatal msg="Error parsing image name \"docker://127.0.0.1:45124/x/y:t\": pinging container registry 127.0.0.1:45124: Get \"http://127.0.0.1:45124/v2/\": context deadline exceeded""#,
            Failure::Timeout,
        ),
    ];

    /// The same failures as later containers/image releases word them
    /// (skopeo 1.18 on Debian 13: Go ≥ 1.20 TLS errors, the typed 401
    /// `unable to retrieve auth token: invalid username/password: …`,
    /// `loading trust policy: …` without "Error", and the generic
    /// `invalid status code from registry N (Text)` / `StatusCode: N, body`
    /// of containers/image's docker client). Not captured here: written
    /// from those sources' format strings.
    const LATER_WORDING: &[(&str, Failure)] = &[
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="pinging container registry r.example: invalid status code from registry 403 (Forbidden)""#,
            Failure::Unauthorized,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="reading manifest t in r.example/x: StatusCode: 403, <html><body>Forbidden</body></html>""#,
            Failure::Unauthorized,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="pinging container registry r.example: invalid status code from registry 503 (Service Unavailable)""#,
            Failure::Unavailable,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="reading manifest t in r.example/x: too many requests to registry""#,
            Failure::Unavailable,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="loading trust policy: open /etc/containers/policy.json: no such file or directory""#,
            Failure::Policy,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="initializing source docker://r.example/x:t: reading manifest t in r.example/x: requested access to the resource is denied""#,
            Failure::Unauthorized,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="initializing source docker://r.example/x:t: unable to retrieve auth token: invalid username/password: unauthorized: authentication required""#,
            Failure::Unauthorized,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="initializing source docker://r.example/x:nosuch: reading manifest nosuch in r.example/x: manifest unknown""#,
            Failure::NotFound,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="pinging container registry r.example: Get \"https://r.example/v2/\": tls: failed to verify certificate: x509: certificate signed by unknown authority""#,
            Failure::Tls(TlsProblem::UnknownAuthority),
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="pinging container registry r.example: Get \"https://r.example/v2/\": tls: failed to verify certificate: x509: certificate has expired or is not yet valid""#,
            Failure::Tls(TlsProblem::Other),
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="pinging container registry r.example: Get \"https://r.example/v2/\": dial tcp 10.0.0.1:443: i/o timeout""#,
            Failure::Timeout,
        ),
        (
            r#"time="2025-06-01T00:00:00Z" level=fatal msg="writing manifest: uploading manifest t to r.example/x: received unexpected HTTP status: 500 Internal Server Error""#,
            Failure::Unavailable,
        ),
    ];

    #[test]
    fn classifies_the_real_messages_of_skopeo_1_9_3_and_later() {
        for (line, want) in REAL_1_9_3.iter().chain(LATER_WORDING) {
            assert_eq!(classify(&lines(line)), *want, "{line}");
        }
        // A retry warning followed by the fatal line: the fatal line's class.
        let retried = "time=\"2026-12-01T06:18:41Z\" level=warning msg=\"Failed, retrying in 1s ... (1/1). Error: dial tcp 127.0.0.1:1: connect: connection refused\"\ntime=\"2026-12-01T06:18:42Z\" level=fatal msg=\"dial tcp 127.0.0.1:1: connect: connection refused\"";
        assert_eq!(classify(&lines(retried)), Failure::Unavailable);
        // A local "permission denied" is not a registry refusal.
        assert_eq!(
            classify(&lines("open /x/.runnerctl/cache/a.tar: permission denied")),
            Failure::Other
        );
    }

    #[test]
    fn each_class_has_its_own_code_and_help_and_only_network_ones_say_run_again() {
        let cx = Context {
            host: Some("127.0.0.1:5000"),
            timeout: Duration::from_secs(7),
            policy: Path::new("/s/policy.json"),
            user_policy: false,
        };
        let classes = [
            Failure::Policy,
            Failure::Unauthorized,
            Failure::NotFound,
            Failure::Tls(TlsProblem::PlainHttp),
            Failure::Tls(TlsProblem::UnknownAuthority),
            Failure::Tls(TlsProblem::Other),
            Failure::Unavailable,
            Failure::Timeout,
            Failure::Other,
        ];
        let mut helps = Vec::new();
        for failure in classes {
            let (headline, help) = explain_failure(failure, &cx);
            let again = help.contains("run the same command again");
            assert_eq!(
                again,
                matches!(failure, Failure::Unavailable | Failure::Timeout),
                "{failure:?}: {help}"
            );
            assert!(!helps.contains(&help), "{failure:?} shares its help");
            helps.push(help);
            if failure == Failure::Timeout {
                assert_eq!(
                    headline,
                    "the registry at 127.0.0.1:5000 did not answer within 7 s"
                );
            }
        }
        let (_, plain) = explain_failure(Failure::Tls(TlsProblem::PlainHttp), &cx);
        assert!(plain.contains("--tls-verify false"));
        let (_, ca) = explain_failure(Failure::Tls(TlsProblem::UnknownAuthority), &cx);
        assert!(ca.contains("SSL_CERT_FILE"));
    }

    #[test]
    fn only_a_registrys_own_not_found_means_the_tag_is_absent() {
        let absent = r#"time="2026-12-01T06:18:41Z" level=fatal msg="Error parsing image name \"docker://127.0.0.1:45123/x/y:nosuch\": reading manifest nosuch in 127.0.0.1:45123/x/y: manifest unknown: manifest unknown""#;
        assert!(tag_is_absent(&lines(absent)));
        let not_a_registry = r#"time="2026-12-01T06:37:09Z" level=fatal msg="Error parsing image name \"docker://127.0.0.1:45126/x/y:t\": pinging container registry 127.0.0.1:45126: invalid status code from registry 404 (Not Found)""#;
        assert!(!tag_is_absent(&lines(not_a_registry)));
        assert_eq!(classify(&lines(not_a_registry)), Failure::NotFound);
    }
}
