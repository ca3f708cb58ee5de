//! skopeo: argv for copy and inspect, and reading what they report.
//!
//! Credentials reach skopeo only as `--authfile PATH`; the argv builders take
//! a path, never a user name or a password.

use std::path::{Path, PathBuf};

use super::{failed, Cmd, Output, Runner, ToolError};

/// How often skopeo itself retries a transient registry error.
pub const RETRY_TIMES: u32 = 3;

/// How many times runnerctl runs one `skopeo copy` that failed for a reason
/// other than credentials or a missing image.
pub const COPY_ATTEMPTS: u32 = 2;

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

/// What skopeo's stderr says went wrong, when we can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NotFound,
    Unauthorized,
    Other,
}

pub fn classify(stderr: &[String]) -> Failure {
    let text = stderr.join("\n").to_ascii_lowercase();
    if text.contains("unauthorized")
        || text.contains("authentication required")
        || text.contains("invalid username/password")
        || text.contains("denied")
    {
        Failure::Unauthorized
    } else if text.contains("manifest unknown")
        || text.contains("no descriptor found")
        || text.contains("not found")
        || text.contains("name unknown")
        || text.contains("no such file or directory")
    {
        Failure::NotFound
    } else {
        Failure::Other
    }
}

pub const AUTH_HELP: &str = "the registry rejected the credentials: check RUNNERCTL_REGISTRY_USER and RUNNERCTL_REGISTRY_PASSWORD (or the file named by REGISTRY_AUTH_FILE), then run again; nothing was committed or pushed to git";

/// The skopeo executable.
#[derive(Debug, Clone)]
pub struct Skopeo {
    pub path: PathBuf,
}

impl Skopeo {
    pub fn cmd(&self, args: Vec<String>) -> Cmd {
        Cmd::new(&self.path).args(args)
    }

    /// Run `skopeo inspect` with argv from [`inspect_args`] (the raw
    /// manifest, whose sha256 is the digest) or [`config_args`] (the config
    /// blob). `None` if the tag does not exist.
    pub async fn inspect(
        &self,
        runner: &Runner,
        args: Vec<String>,
    ) -> Result<Option<String>, ToolError> {
        let cmd = self.cmd(args);
        let out = runner.run_unchecked(&cmd).await?;
        if out.success() {
            return Ok(Some(out.stdout));
        }
        match classify(&out.stderr_tail) {
            Failure::NotFound => Ok(None),
            failure => Err(explain(&cmd, &out, failure)),
        }
    }

    pub async fn copy(
        &self,
        runner: &Runner,
        src: &str,
        dst: &str,
        opts: &CopyOpts<'_>,
    ) -> Result<(), ToolError> {
        let cmd = self.cmd(copy_args(src, dst, opts)).skopeo_progress();
        let mut attempt = 1;
        loop {
            let out = runner.run_unchecked(&cmd).await?;
            if out.success() {
                return Ok(());
            }
            let failure = classify(&out.stderr_tail);
            // skopeo retries network errors itself (--retry-times); a 5xx
            // while it reads or writes a manifest gets one more try here.
            // Credentials and missing images are never retried.
            if failure != Failure::Other || attempt >= COPY_ATTEMPTS {
                return Err(explain(&cmd, &out, failure));
            }
            runner.reporter().info(format!(
                "skopeo copy failed (attempt {attempt} of {COPY_ATTEMPTS}); retrying in {}s",
                attempt * 2
            ));
            tokio::time::sleep(std::time::Duration::from_secs(2 * attempt as u64)).await;
            attempt += 1;
        }
    }
}

pub fn explain(cmd: &Cmd, out: &Output, failure: Failure) -> ToolError {
    let err = failed(cmd, out);
    match failure {
        Failure::Unauthorized => err.with_help(AUTH_HELP),
        _ => err.with_help(
            "the image was not (fully) pushed; if the registry was unreachable, run the same command again: finished stages are not repeated",
        ),
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
    fn classifies_errors() {
        let lines = |s: &str| vec![s.to_string()];
        assert_eq!(classify(&lines("time=… level=fatal msg=\"Error parsing image name: reading manifest latest in 127.0.0.1:5000/x: manifest unknown: manifest unknown\"")), Failure::NotFound);
        assert_eq!(
            classify(&lines("unauthorized: authentication required")),
            Failure::Unauthorized
        );
        assert_eq!(classify(&lines("connection refused")), Failure::Other);
    }
}
