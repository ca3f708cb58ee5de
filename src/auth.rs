//! Registry credentials: read from the environment, handed to skopeo only as
//! a 0600 temporary auth file that is removed when the run ends.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use miette::Diagnostic;
use thiserror::Error;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    /// An existing containers auth.json, named by REGISTRY_AUTH_FILE.
    AuthFile(PathBuf),
}

#[derive(Debug, Error, Diagnostic)]
pub enum AuthError {
    #[error("{set} is set but {missing} is not")]
    #[diagnostic(
        code(runnerctl::auth::incomplete),
        help("set both RUNNERCTL_REGISTRY_USER and RUNNERCTL_REGISTRY_PASSWORD, or neither")
    )]
    Incomplete {
        set: &'static str,
        missing: &'static str,
    },

    #[error("REGISTRY_AUTH_FILE names {}, which cannot be read", path.display())]
    #[diagnostic(
        code(runnerctl::auth::file),
        help("point REGISTRY_AUTH_FILE at a containers auth.json (see `man containers-auth.json`), or unset it")
    )]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the registry credentials file {} is not usable: {reason}", path.display())]
    #[diagnostic(
        code(runnerctl::auth::file),
        help("fix or remove it (a containers auth.json or docker config.json: `{{\"auths\": {{\"HOST\": {{\"auth\": \"BASE64(user:password)\"}}}}}}`), log in again with `skopeo login HOST`, or set RUNNERCTL_REGISTRY_USER and RUNNERCTL_REGISTRY_PASSWORD")
    )]
    Malformed { path: PathBuf, reason: String },

    #[error("the login for {registry} in {} is kept by a credential helper ({helper}), which runnerctl does not support", path.display())]
    #[diagnostic(
        code(runnerctl::auth::helper),
        help("runnerctl reads only stored logins: run `skopeo login --authfile \"$XDG_RUNTIME_DIR/containers/auth.json\" {registry}` (or point REGISTRY_AUTH_FILE at an auth.json with an `auth` entry), or set RUNNERCTL_REGISTRY_USER and RUNNERCTL_REGISTRY_PASSWORD")
    )]
    Helper {
        registry: String,
        path: PathBuf,
        helper: String,
    },

    #[error("could not write the temporary auth file")]
    #[diagnostic(
        code(runnerctl::auth::write),
        help("check that the temp dir ($TMPDIR or /tmp) is writable")
    )]
    Write(#[source] std::io::Error),
}

impl Credentials {
    /// From RUNNERCTL_REGISTRY_USER + RUNNERCTL_REGISTRY_PASSWORD, else
    /// REGISTRY_AUTH_FILE, else none.
    pub fn from_env() -> Result<Credentials, AuthError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (
            get("RUNNERCTL_REGISTRY_USER"),
            get("RUNNERCTL_REGISTRY_PASSWORD"),
        ) {
            (Some(user), Some(password)) => Ok(Credentials::UserPassword {
                user,
                password: Secret::new(password),
            }),
            (Some(_), None) => Err(AuthError::Incomplete {
                set: "RUNNERCTL_REGISTRY_USER",
                missing: "RUNNERCTL_REGISTRY_PASSWORD",
            }),
            (None, Some(_)) => Err(AuthError::Incomplete {
                set: "RUNNERCTL_REGISTRY_PASSWORD",
                missing: "RUNNERCTL_REGISTRY_USER",
            }),
            (None, None) => match get("REGISTRY_AUTH_FILE") {
                Some(path) => {
                    let path = PathBuf::from(path);
                    std::fs::metadata(&path).map_err(|source| AuthError::Unreadable {
                        path: path.clone(),
                        source,
                    })?;
                    Ok(Credentials::AuthFile(path))
                }
                None => Ok(Credentials::None),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Credentials::None => "none".into(),
            Credentials::UserPassword { user, .. } => {
                format!("user {user} (from RUNNERCTL_REGISTRY_USER/PASSWORD)")
            }
            Credentials::AuthFile(path) => format!("auth file {}", path.display()),
        }
    }
}

/// The containers-auth.json text for one registry.
pub fn auth_json(registry: &str, user: &str, password: &Secret) -> String {
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose()));
    serde_json::json!({ "auths": { registry: { "auth": token } } }).to_string()
}

const AUTH_PREFIX: &str = "runnerctl-auth-";

/// Remove auth files left by runs that were killed (kill -9 skips every
/// destructor): `runnerctl-auth-<pid>-*.json` whose process is gone.
pub fn remove_stale_auth_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(AUTH_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The auth file for skopeo's `--authfile`: temporary, mode 0600, in
/// `$TMPDIR` as `runnerctl-auth-<pid>-*.json`; removed on drop (the end of
/// the run, also on failure or SIGINT/SIGTERM/SIGHUP), and after kill -9 by
/// the next run's start ([`remove_stale_auth_files`]).
#[derive(Debug)]
pub struct AuthFile(tempfile::NamedTempFile);

impl AuthFile {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Prepare the temporary auth file for skopeo from the resolved login.
pub fn auth_file(login: &Login, registry: &str) -> Result<AuthFile, AuthError> {
    remove_stale_auth_files(&std::env::temp_dir());
    // tempfile creates the file with mode 0600. The name carries our
    // pid, so a later run can remove it if this one is killed.
    let prefix = format!("{AUTH_PREFIX}{}-", std::process::id());
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".json")
        .tempfile()
        .map_err(AuthError::Write)?;
    file.write_all(auth_json(registry, &login.user, &login.password).as_bytes())
        .map_err(AuthError::Write)?;
    file.as_file().sync_all().map_err(AuthError::Write)?;
    Ok(AuthFile(file))
}

/// The login for one registry, found once in preflight. skopeo (through
/// a temporary auth file) and runnerctl's registry client both use it.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub password: Secret,
    /// Where it came from, for messages (never the secret).
    pub source: String,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
}

impl Login {
    /// As credentials for the registry client.
    pub fn credentials(&self) -> Credentials {
        Credentials::UserPassword {
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }
}

/// Where the containers tools look for logins, in their order: the file
/// named by REGISTRY_AUTH_FILE (which replaces
/// `$XDG_RUNTIME_DIR/containers/auth.json`), then
/// `~/.config/containers/auth.json`, then `~/.docker/config.json`
/// (`$DOCKER_CONFIG/config.json`).
pub fn login_files(creds: &Credentials) -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    match creds {
        Credentials::AuthFile(path) => files.push(path.clone()),
        _ => {
            if let Some(run) = env("XDG_RUNTIME_DIR") {
                files.push(run.join("containers/auth.json"));
            }
        }
    }
    let home = env("HOME");
    if let Some(home) = &home {
        files.push(home.join(".config/containers/auth.json"));
    }
    match (env("DOCKER_CONFIG"), &home) {
        (Some(dir), _) => files.push(dir.join("config.json")),
        (None, Some(home)) => files.push(home.join(".docker/config.json")),
        (None, None) => {}
    }
    files
}

/// Find the login for `registry` (host[:port]) and `repository`:
/// RUNNERCTL_REGISTRY_USER/PASSWORD, else the first of [`login_files`]
/// with an entry for it. None: no login anywhere (anonymous access).
pub fn resolve(
    creds: &Credentials,
    registry: &str,
    repository: &str,
) -> Result<Option<Login>, AuthError> {
    if let Credentials::UserPassword { user, password } = creds {
        return Ok(Some(Login {
            user: user.clone(),
            password: password.clone(),
            source: "RUNNERCTL_REGISTRY_USER/RUNNERCTL_REGISTRY_PASSWORD".into(),
            file: None,
        }));
    }
    let named = matches!(creds, Credentials::AuthFile(_));
    for (i, path) in login_files(creds).iter().enumerate() {
        // The file REGISTRY_AUTH_FILE names must exist; the standard ones
        // may not.
        if !(named && i == 0) && std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        if let Some(login) = login_in_file(path, registry, repository)? {
            return Ok(Some(login));
        }
    }
    Ok(None)
}

/// A file readable by group or others (a warning, not an error).
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// Largest login file runnerctl reads.
const MAX_LOGIN_FILE: u64 = 1024 * 1024;

fn login_in_file(
    path: &Path,
    registry: &str,
    repository: &str,
) -> Result<Option<Login>, AuthError> {
    let bad = |reason: &str| AuthError::Malformed {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|source| AuthError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file"));
    }
    if meta.len() > MAX_LOGIN_FILE {
        return Err(bad("it is larger than 1 MiB"));
    }
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    // serde_json's message names the line and column, never the text.
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("it is not JSON ({e})")))?;
    let Some(obj) = json.as_object() else {
        return Err(bad("it is not a JSON object"));
    };
    let auths = match obj.get("auths") {
        None => None,
        Some(serde_json::Value::Object(auths)) => Some(auths),
        Some(_) => return Err(bad("`auths` is not an object")),
    };
    let entry = auths.and_then(|a| best_entry(a, registry, repository));
    if let Some((key, entry)) = entry {
        if let Some(token) = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .filter(|t| !t.is_empty())
        {
            let what = format!("the `auth` of `{key}` is not base64 of user:password");
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| bad(&what))?;
            let (user, password) = decoded.split_once(':').ok_or_else(|| bad(&what))?;
            return Ok(Some(Login {
                user: user.to_string(),
                password: Secret::new(password.to_string()),
                source: format!("{} (entry `{key}`)", path.display()),
                file: Some(path.to_path_buf()),
            }));
        }
        if entry.get("identitytoken").is_some() {
            return Err(AuthError::Helper {
                registry: registry.to_string(),
                path: path.to_path_buf(),
                helper: "an identity token".into(),
            });
        }
    }
    let helper = obj
        .get("credHelpers")
        .and_then(|h| h.get(registry))
        .or_else(|| obj.get("credsStore"))
        .and_then(|h| h.as_str());
    if let Some(helper) = helper {
        return Err(AuthError::Helper {
            registry: registry.to_string(),
            path: path.to_path_buf(),
            helper: format!("docker-credential-{helper}"),
        });
    }
    Ok(None)
}

/// `registry` with Docker Hub's aliases folded together.
fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

/// The entry for `registry`/`repository` in `auths`. Keys may carry a
/// scheme and a path (`https://index.docker.io/v1/`), or name a namespace
/// inside the registry (`host/ns`, containers auth.json): the longest key
/// that matches wins.
fn best_entry<'a>(
    auths: &'a serde_json::Map<String, serde_json::Value>,
    registry: &str,
    repository: &str,
) -> Option<(&'a str, &'a serde_json::Value)> {
    let registry = canonical_host(registry);
    let full = format!("{registry}/{repository}");
    auths
        .iter()
        .filter_map(|(key, value)| {
            let bare = key
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            let (host, path) = match bare.split_once('/') {
                Some((host, path)) => (canonical_host(host), path),
                None => (canonical_host(bare), ""),
            };
            if host != registry {
                return None;
            }
            let path = if path == "v1" || path == "v2" {
                ""
            } else {
                path
            };
            if path.is_empty() {
                return Some((key.as_str(), value, 0));
            }
            let scoped = format!("{host}/{path}");
            (full == scoped || full.starts_with(&format!("{scoped}/"))).then_some((
                key.as_str(),
                value,
                scoped.len(),
            ))
        })
        .max_by_key(|(_, _, len)| *len)
        .map(|(key, value, _)| (key, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn temp_auth_file_is_private_and_removed() {
        let creds = Credentials::UserPassword {
            user: "ci".into(),
            password: Secret::new("hunter2-Zebra".into()),
        };
        let login = resolve(&creds, "127.0.0.1:5000", "a/b")
            .expect("resolve")
            .expect("some");
        let file = auth_file(&login, "127.0.0.1:5000").expect("auth");
        let path = file.path().to_path_buf();
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let token = v["auths"]["127.0.0.1:5000"]["auth"].as_str().expect("auth");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .expect("b64");
        assert_eq!(decoded, b"ci:hunter2-Zebra");
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn stale_auth_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        // pid_max is at most 2^22 on Linux: this pid cannot be running.
        let stale = dir.path().join("runnerctl-auth-4194305-abc.json");
        let live = dir
            .path()
            .join(format!("runnerctl-auth-{}-def.json", std::process::id()));
        let other = dir.path().join("unrelated.json");
        for f in [&stale, &live, &other] {
            std::fs::write(f, "{}").expect("write");
        }
        remove_stale_auth_files(dir.path());
        assert!(!stale.exists());
        assert!(live.exists());
        assert!(other.exists());
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let creds = Credentials::UserPassword {
            user: "ci".into(),
            password: Secret::new("hunter2-Zebra".into()),
        };
        assert!(!format!("{creds:?}").contains("hunter2"));
        assert!(!creds.describe().contains("hunter2"));
    }

    #[test]
    fn login_entries_match_host_scheme_and_namespace() {
        let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.json");
        let text = serde_json::json!({
            "auths": {
                "https://reg.example:5000/": {"auth": b64("host:pw1")},
                "reg.example:5000/infra": {"auth": b64("ns:pw2")},
                "reg.example": {"auth": b64("noport:pw3")},
                "https://index.docker.io/v1/": {"auth": b64("hub:pw4")}
            }
        });
        std::fs::write(&path, text.to_string()).expect("write");
        let user =
            |reg: &str, repo: &str| login_in_file(&path, reg, repo).expect("ok").map(|l| l.user);
        assert_eq!(
            user("reg.example:5000", "infra/runners").as_deref(),
            Some("ns")
        );
        assert_eq!(user("reg.example:5000", "other/x").as_deref(), Some("host"));
        assert_eq!(
            user("reg.example:5000", "infrastructure").as_deref(),
            Some("host")
        );
        assert_eq!(user("reg.example", "x").as_deref(), Some("noport"));
        assert_eq!(user("docker.io", "library/x").as_deref(), Some("hub"));
        assert_eq!(user("elsewhere.example", "x"), None);
    }

    #[test]
    fn credential_helpers_and_bad_files_are_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"reg.example":{}},"credsStore":"pass"}"#)
            .expect("write");
        let err = login_in_file(&path, "reg.example", "x").expect_err("helper");
        assert!(
            matches!(&err, AuthError::Helper { helper, .. } if helper == "docker-credential-pass")
        );
        std::fs::write(&path, r#"{"credHelpers":{"reg.example":"ecr-login"}}"#).expect("write");
        assert!(login_in_file(&path, "other.example", "x")
            .expect("ok")
            .is_none());
        assert!(login_in_file(&path, "reg.example", "x").is_err());
        std::fs::write(&path, "{\"auths\": ").expect("write");
        assert!(matches!(
            login_in_file(&path, "reg.example", "x"),
            Err(AuthError::Malformed { .. })
        ));
        assert!(matches!(
            login_in_file(dir.path(), "reg.example", "x"),
            Err(AuthError::Malformed { .. })
        ));
    }
}
