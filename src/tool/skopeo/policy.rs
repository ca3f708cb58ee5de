//! The containers trust policy runnerctl writes for skopeo, and the check of a user's own.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

use super::POLICY_FILE;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
