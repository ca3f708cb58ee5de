//! skopeo: argv for copy and inspect, the trust policy runnerctl hands it,
//! and reading what went wrong from what it prints.
//!
//! Credentials reach skopeo only as `--authfile PATH`; the argv builders take
//! a path, never a user name or a password. Every call carries
//! `--policy FILE` (never the host's /etc/containers/policy.json) and
//! `--command-timeout` (a registry that never answers cannot hang a run).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Cmd, Output, Runner, ToolError};

mod errors;
mod policy;

pub use errors::{
    classify, explain_failure, tag_is_absent, Context, Failure, SkopeoFailed, TlsProblem, AUTH_HELP,
};
pub use policy::{check_user_policy, policy_json, policy_path, write_policy, PolicyError};

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

/// The registry host (`HOST[:PORT]`) a skopeo argv talks to, if any.
pub fn registry_host(args: &[String]) -> Option<String> {
    args.iter().rev().find_map(|a| {
        a.strip_prefix("docker://")
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
    })
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

    /// The raw manifest at a registry reference (`docker://…`), whose
    /// sha256 is its digest; `None` if the tag does not exist.
    pub async fn manifest(
        &self,
        runner: &Runner,
        reference: &str,
        authfile: Option<&Path>,
        tls_verify: bool,
    ) -> Result<Option<String>, ToolError> {
        let args = inspect_args(reference, authfile, tls_verify, true);
        self.inspect(runner, args).await
    }

    /// The config blob of the image at a registry reference; `None` if the
    /// tag does not exist.
    pub async fn config(
        &self,
        runner: &Runner,
        reference: &str,
        authfile: Option<&Path>,
        tls_verify: bool,
    ) -> Result<Option<String>, ToolError> {
        let args = config_args(reference, authfile, tls_verify, true);
        self.inspect(runner, args).await
    }

    /// Run `skopeo inspect` with argv from [`inspect_args`] or
    /// [`config_args`]. `None` if the tag does not exist.
    async fn inspect(
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
