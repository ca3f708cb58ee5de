//! skopeo: argv for copy and inspect, the trust policy runnerctl hands it,
//! and reading what went wrong from what it prints.
//!
//! Credentials reach skopeo only as `--authfile PATH`; the argv builders take
//! a path, never a user name or a password. Every call carries
//! `--policy FILE` (never the host's /etc/containers/policy.json) and
//! `--command-timeout` (a registry that never answers cannot hang a run).

use std::path::{Path, PathBuf};
use std::time::Duration;

use miette::Diagnostic;
use thiserror::Error;

use super::{Cmd, Output, Runner, ToolError};

/// How often skopeo itself retries a transient registry error.
pub const RETRY_TIMES: u32 = 3;

/// How many times runnerctl runs one `skopeo copy` that failed for a reason
/// other than credentials, policy, TLS, a missing image or a timeout.
pub const COPY_ATTEMPTS: u32 = 2;

/// The slowest upload a `skopeo copy` is given time for: its
/// `--command-timeout` is the registry timeout (twice: before and after the
/// upload) plus one second per this many bytes it may send.
pub const MIN_UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;

/// The name of the policy file runnerctl writes in its state dir.
pub const POLICY_FILE: &str = "policy.json";

/// The trust policy runnerctl uses unless the user names one.
///
/// skopeo evaluates the policy for the *source* of a copy only (`inspect`
/// reads none). runnerctl copies from exactly two kinds of source, both
/// made and verified by the same run: the image's docker-archive (in the
/// Nix store or runnerctl's cache) and an OCI layout under `cache_dir`.
/// So: every docker-archive is accepted (the transport only has the
/// catch-all scope ""), OCI layouts only below `cache_dir`, and everything
/// else, a registry (`docker://`) included, is rejected: runnerctl never
/// copies from one, and a copy that did would fail loudly instead of
/// trusting whatever the registry serves.
pub fn policy_json(cache_dir: &Path) -> serde_json::Value {
    let accept = serde_json::json!([{ "type": "insecureAcceptAnything" }]);
    serde_json::json!({
        "default": [{ "type": "reject" }],
        "transports": {
            "docker-archive": { "": accept.clone() },
            "oci": { cache_dir.display().to_string(): accept },
        }
    })
}

#[derive(Debug, Error, Diagnostic)]
pub enum PolicyError {
    #[error("the containers policy file {} could not be read: {reason}", path.display())]
    #[diagnostic(
        code(runnerctl::policy::unreadable),
        help("--policy / RUNNERCTL_POLICY must name an existing containers-policy.json(5) file; leave it unset and runnerctl writes its own")
    )]
    Unreadable { path: PathBuf, reason: String },

    #[error("the containers policy file {} is not a JSON object: {reason}", path.display())]
    #[diagnostic(
        code(runnerctl::policy::invalid),
        help("fix the file (see containers-policy.json(5); it needs at least a \"default\" list), or leave --policy / RUNNERCTL_POLICY unset and runnerctl writes its own")
    )]
    Invalid { path: PathBuf, reason: String },

    #[error("could not write runnerctl's containers policy {}: {source}", path.display())]
    #[diagnostic(
        code(runnerctl::policy::write),
        help("check that the state dir is writable, or name a policy file with --policy")
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Check the user's policy file: it exists and holds a JSON object. skopeo
/// checks the rest when it loads it (a failure is a classified policy error).
pub fn check_user_policy(path: &Path) -> Result<PathBuf, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| PolicyError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if !value.is_object() {
        return Err(invalid("the top level must be an object".into()));
    }
    std::path::absolute(path).map_err(|e| PolicyError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Where runnerctl's own policy lives (absolute, as skopeo gets it).
pub fn policy_path(state_dir: &Path) -> PathBuf {
    let path = state_dir.join(POLICY_FILE);
    std::path::absolute(&path).unwrap_or(path)
}

/// Write runnerctl's own policy to `STATE_DIR/policy.json` (a temp file in
/// the same directory, then a rename) and return its path.
pub fn write_policy(state_dir: &Path, cache_dir: &Path) -> Result<PathBuf, PolicyError> {
    let path = state_dir.join(POLICY_FILE);
    let write = |source: std::io::Error| PolicyError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(cache_dir).map_err(write)?;
    // skopeo compares the layout's resolved directory with the scope.
    let cache_dir = std::fs::canonicalize(cache_dir).map_err(write)?;
    let text = serde_json::to_string_pretty(&policy_json(&cache_dir))
        .map_err(|e| write(std::io::Error::other(e)))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".policy-")
        .tempfile_in(state_dir)
        .map_err(write)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(write)?;
    tmp.persist(&path).map_err(|e| write(e.error))?;
    Ok(policy_path(state_dir))
}

/// Options every skopeo call gets (right after the subcommand).
pub fn global_args(policy: &Path, timeout: Duration) -> Vec<String> {
    vec![
        "--policy".to_string(),
        policy.display().to_string(),
        "--command-timeout".to_string(),
        format!("{}s", timeout.as_secs().max(1)),
    ]
}

/// The `--command-timeout` for a copy that may upload up to `bytes`.
pub fn copy_timeout(registry_timeout: Duration, bytes: u64) -> Duration {
    registry_timeout * 2 + Duration::from_secs(bytes / MIN_UPLOAD_BYTES_PER_SEC)
}

/// Options for one `skopeo copy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOpts<'a> {
    pub authfile: Option<&'a Path>,
    /// Verify TLS of the registries involved.
    pub tls_verify: bool,
    pub src_is_registry: bool,
    pub dst_is_registry: bool,
    pub digestfile: Option<&'a Path>,
    pub retry_times: u32,
    /// Fail rather than change the manifest (and so its digest).
    pub preserve_digests: bool,
}

/// The subcommand's argv (the global options come from [`global_args`]).
pub fn copy_args(src: &str, dst: &str, opts: &CopyOpts) -> Vec<String> {
    let mut args = vec!["copy".to_string()];
    if opts.retry_times > 0 {
        args.push("--retry-times".into());
        args.push(opts.retry_times.to_string());
    }
    if let Some(file) = opts.authfile {
        if opts.src_is_registry {
            args.push("--src-authfile".into());
            args.push(file.display().to_string());
        }
        if opts.dst_is_registry {
            args.push("--dest-authfile".into());
            args.push(file.display().to_string());
        }
    }
    if opts.src_is_registry && !opts.tls_verify {
        args.push("--src-tls-verify=false".into());
    }
    if opts.dst_is_registry && !opts.tls_verify {
        args.push("--dest-tls-verify=false".into());
    }
    if opts.preserve_digests {
        args.push("--preserve-digests".into());
    }
    if let Some(file) = opts.digestfile {
        args.push("--digestfile".into());
        args.push(file.display().to_string());
    }
    args.push(src.to_string());
    args.push(dst.to_string());
    args
}

/// `skopeo inspect --raw`: the manifest bytes, whose sha256 is the digest.
pub fn inspect_args(
    reference: &str,
    authfile: Option<&Path>,
    tls_verify: bool,
    is_registry: bool,
) -> Vec<String> {
    let mut args = vec!["inspect".to_string(), "--raw".into()];
    if is_registry {
        args.push("--retry-times".into());
        args.push(RETRY_TIMES.to_string());
        if let Some(file) = authfile {
            args.push("--authfile".into());
            args.push(file.display().to_string());
        }
        if !tls_verify {
            args.push("--tls-verify=false".into());
        }
    }
    args.push(reference.to_string());
    args
}

/// `skopeo inspect --raw --config`: the image's config blob.
pub fn config_args(
    reference: &str,
    authfile: Option<&Path>,
    tls_verify: bool,
    is_registry: bool,
) -> Vec<String> {
    let mut args = inspect_args(reference, authfile, tls_verify, is_registry);
    args.insert(2, "--config".to_string());
    args
}

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

/// The registry host (`HOST[:PORT]`) a skopeo argv talks to, if any.
pub fn registry_host(args: &[String]) -> Option<String> {
    args.iter().rev().find_map(|a| {
        a.strip_prefix("docker://")
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
    })
}

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
#[error("{headline}\n`{command}` failed ({status})\n{}", super::format_tail(.tail))]
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

/// The skopeo executable, with the policy and timeout every call gets.
#[derive(Debug, Clone)]
pub struct Skopeo {
    pub path: PathBuf,
    pub policy: PathBuf,
    /// The policy came from --policy / RUNNERCTL_POLICY.
    pub user_policy: bool,
    /// How long one registry exchange may take (--registry-timeout).
    pub timeout: Duration,
}

impl Skopeo {
    /// A skopeo command with the global options and `args`.
    pub fn cmd(&self, args: Vec<String>) -> Cmd {
        self.cmd_with_timeout(args, self.timeout)
    }

    fn cmd_with_timeout(&self, mut args: Vec<String>, timeout: Duration) -> Cmd {
        // skopeo's global options are accepted after the subcommand too:
        // `skopeo copy --policy … --command-timeout …`.
        let at = usize::from(!args.is_empty());
        args.splice(at..at, global_args(&self.policy, timeout));
        Cmd::new(&self.path).args(args)
    }

    /// The argv of a copy that may upload up to `bytes` (for plans).
    pub fn copy_cmd(&self, src: &str, dst: &str, opts: &CopyOpts, bytes: u64) -> Cmd {
        self.cmd_with_timeout(copy_args(src, dst, opts), copy_timeout(self.timeout, bytes))
            .skopeo_progress()
    }

    /// Run `skopeo inspect` with argv from [`inspect_args`] (the raw
    /// manifest, whose sha256 is the digest) or [`config_args`] (the config
    /// blob). `None` if the tag does not exist.
    pub async fn inspect(
        &self,
        runner: &Runner,
        args: Vec<String>,
    ) -> Result<Option<String>, ToolError> {
        let host = registry_host(&args);
        let cmd = self.cmd(args);
        let out = runner.run_unchecked(&cmd).await?;
        if out.success() {
            return Ok(Some(out.stdout));
        }
        if tag_is_absent(&out.stderr_tail) {
            return Ok(None);
        }
        let failure = classify(&out.stderr_tail);
        Err(self.explain(&cmd, &out, failure, host.as_deref(), self.timeout))
    }

    /// `skopeo copy`, for an image of up to `bytes` to upload.
    pub async fn copy(
        &self,
        runner: &Runner,
        src: &str,
        dst: &str,
        opts: &CopyOpts<'_>,
        bytes: u64,
    ) -> Result<(), ToolError> {
        let host = registry_host(&[src.to_string(), dst.to_string()]);
        let cmd = self.copy_cmd(src, dst, opts, bytes);
        let mut attempt = 1;
        loop {
            let out = runner.run_unchecked(&cmd).await?;
            if out.success() {
                return Ok(());
            }
            let failure = classify(&out.stderr_tail);
            // skopeo retries network errors itself (--retry-times); a
            // refused connection or a 5xx while it reads or writes a
            // manifest gets one more try here. Nothing else is retried: not
            // credentials, policy, TLS or a missing repository (the same
            // again would fail the same way), nor a timeout (it already
            // waited as long as it was allowed).
            let again = matches!(failure, Failure::Unavailable | Failure::Other);
            if !again || attempt >= COPY_ATTEMPTS {
                let timeout = copy_timeout(self.timeout, bytes);
                return Err(self.explain(&cmd, &out, failure, host.as_deref(), timeout));
            }
            runner.reporter().info(format!(
                "skopeo copy failed (attempt {attempt} of {COPY_ATTEMPTS}); retrying in {}s",
                attempt * 2
            ));
            tokio::time::sleep(Duration::from_secs(2 * attempt as u64)).await;
            attempt += 1;
        }
    }

    fn explain(
        &self,
        cmd: &Cmd,
        out: &Output,
        failure: Failure,
        host: Option<&str>,
        timeout: Duration,
    ) -> ToolError {
        let (headline, help) = explain_failure(
            failure,
            &Context {
                host,
                timeout,
                policy: &self.policy,
                user_policy: self.user_policy,
            },
        );
        let status = match out.code {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        };
        ToolError::Skopeo(Box::new(SkopeoFailed {
            failure,
            headline,
            command: cmd.display(),
            status,
            tail: out.stderr_tail.clone(),
            help,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn copy_argv_to_registry() {
        let auth = Path::new("/run/user/0/runnerctl-auth.json");
        let digest = Path::new("/state/digest");
        let args = copy_args(
            "docker-archive:/tmp/image.tar",
            "docker://127.0.0.1:5000/infra/runners/nixos:latest",
            &CopyOpts {
                authfile: Some(auth),
                tls_verify: false,
                src_is_registry: false,
                dst_is_registry: true,
                digestfile: Some(digest),
                retry_times: 3,
                preserve_digests: false,
            },
        );
        assert_eq!(
            args,
            [
                "copy",
                "--retry-times",
                "3",
                "--dest-authfile",
                "/run/user/0/runnerctl-auth.json",
                "--dest-tls-verify=false",
                "--digestfile",
                "/state/digest",
                "docker-archive:/tmp/image.tar",
                "docker://127.0.0.1:5000/infra/runners/nixos:latest",
            ]
        );
        assert!(!args
            .iter()
            .any(|a| a.contains("creds") || a.contains("password")));
    }

    #[test]
    fn retag_argv_uses_authfile_both_ways_and_tls_by_default() {
        let auth = Path::new("/tmp/a.json");
        let args = copy_args(
            "docker://r/x:latest",
            "docker://r/x:unstable",
            &CopyOpts {
                authfile: Some(auth),
                tls_verify: true,
                src_is_registry: true,
                dst_is_registry: true,
                digestfile: None,
                retry_times: 0,
                preserve_digests: true,
            },
        );
        assert!(args.contains(&"--src-authfile".to_string()));
        assert!(args.contains(&"--dest-authfile".to_string()));
        assert!(!args.iter().any(|a| a.contains("tls-verify")));
        assert!(args.contains(&"--preserve-digests".to_string()));
    }

    #[test]
    fn oci_copy_has_no_registry_flags() {
        let args = copy_args(
            "docker-archive:/a.tar",
            "oci:/state/oci:latest",
            &CopyOpts::default(),
        );
        assert_eq!(
            args,
            ["copy", "docker-archive:/a.tar", "oci:/state/oci:latest"]
        );
    }

    #[test]
    fn inspect_argv() {
        let args = inspect_args(
            "docker://r/x:latest",
            Some(Path::new("/a.json")),
            false,
            true,
        );
        assert_eq!(
            args,
            [
                "inspect",
                "--raw",
                "--retry-times",
                "3",
                "--authfile",
                "/a.json",
                "--tls-verify=false",
                "docker://r/x:latest"
            ]
        );
        assert_eq!(
            inspect_args("oci:/o:t", None, true, false),
            ["inspect", "--raw", "oci:/o:t"]
        );
    }

    #[test]
    fn every_call_gets_the_policy_and_a_timeout() {
        let skopeo = Skopeo {
            path: "/usr/bin/skopeo".into(),
            policy: "/s/.runnerctl/policy.json".into(),
            user_policy: false,
            timeout: Duration::from_secs(30),
        };
        let inspect = skopeo.cmd(inspect_args("docker://r/x:t", None, true, true));
        assert_eq!(
            inspect.args[..5],
            [
                "inspect",
                "--policy",
                "/s/.runnerctl/policy.json",
                "--command-timeout",
                "30s",
            ]
        );
        // A copy gets time for its upload: 2 × 30 s + 1 s per 256 KiB.
        let copy = skopeo.copy_cmd("oci:/l:t", "docker://r/x:t", &CopyOpts::default(), 1 << 30);
        assert_eq!(
            copy.args[..5],
            [
                "copy",
                "--policy",
                "/s/.runnerctl/policy.json",
                "--command-timeout",
                "4156s",
            ]
        );
        assert_eq!(
            global_args(Path::new("/p"), Duration::from_millis(10)),
            ["--policy", "/p", "--command-timeout", "1s"]
        );
    }

    #[test]
    fn the_policy_accepts_archives_and_the_cache_layouts_only() {
        let policy = policy_json(Path::new("/flake/.runnerctl/cache"));
        assert_eq!(policy["default"], serde_json::json!([{"type": "reject"}]));
        let transports = policy["transports"].as_object().expect("transports");
        assert_eq!(
            transports.keys().collect::<Vec<_>>(),
            ["docker-archive", "oci"]
        );
        let accept = serde_json::json!([{"type": "insecureAcceptAnything"}]);
        assert_eq!(policy["transports"]["docker-archive"][""], accept);
        assert_eq!(
            policy["transports"]["oci"],
            serde_json::json!({"/flake/.runnerctl/cache": accept})
        );
        // No docker:// source is trusted.
        assert!(policy["transports"].get("docker").is_none());
    }

    #[test]
    fn writes_its_policy_atomically_and_checks_the_users() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_policy(dir.path(), &dir.path().join("cache")).expect("write");
        assert_eq!(path, dir.path().join("policy.json"));
        let text = std::fs::read_to_string(&path).expect("read");
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let cache = std::fs::canonicalize(dir.path().join("cache")).expect("cache");
        assert_eq!(value, policy_json(&cache));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".policy-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        assert!(check_user_policy(&path).is_ok());
        assert!(matches!(
            check_user_policy(&dir.path().join("nosuch.json")),
            Err(PolicyError::Unreadable { .. })
        ));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"default\": [").expect("write");
        assert!(matches!(
            check_user_policy(&bad),
            Err(PolicyError::Invalid { .. })
        ));
        std::fs::write(&bad, "[]").expect("write");
        assert!(matches!(
            check_user_policy(&bad),
            Err(PolicyError::Invalid { .. })
        ));
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

    #[test]
    fn registry_host_from_argv() {
        assert_eq!(
            registry_host(&inspect_args(
                "docker://127.0.0.1:5000/a/b:t",
                None,
                true,
                true
            )),
            Some("127.0.0.1:5000".to_string())
        );
        assert_eq!(registry_host(&["oci:/x:t".to_string()]), None);
    }
}
