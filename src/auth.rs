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

/// An auth file for skopeo's `--authfile`: ours (temporary, 0600, removed on
/// drop) or the user's.
#[derive(Debug)]
pub enum AuthFile {
    Temp(tempfile::NamedTempFile),
    User(PathBuf),
}

impl AuthFile {
    pub fn path(&self) -> &Path {
        match self {
            AuthFile::Temp(f) => f.path(),
            AuthFile::User(p) => p,
        }
    }
}

/// Prepare what skopeo needs for `registry`, if anything.
pub fn auth_file(
    creds: &Credentials,
    registry: Option<&str>,
) -> Result<Option<AuthFile>, AuthError> {
    match (creds, registry) {
        (Credentials::UserPassword { user, password }, Some(registry)) => {
            remove_stale_auth_files(&std::env::temp_dir());
            // tempfile creates the file with mode 0600. The name carries our
            // pid, so a later run can remove it if this one is killed.
            let prefix = format!("{AUTH_PREFIX}{}-", std::process::id());
            let mut file = tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(".json")
                .tempfile()
                .map_err(AuthError::Write)?;
            file.write_all(auth_json(registry, user, password).as_bytes())
                .map_err(AuthError::Write)?;
            file.as_file().sync_all().map_err(AuthError::Write)?;
            Ok(Some(AuthFile::Temp(file)))
        }
        (Credentials::AuthFile(path), Some(_)) => Ok(Some(AuthFile::User(path.clone()))),
        _ => Ok(None),
    }
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
        let file = auth_file(&creds, Some("127.0.0.1:5000"))
            .expect("auth")
            .expect("some");
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
    fn no_file_for_oci_destinations() {
        let creds = Credentials::UserPassword {
            user: "ci".into(),
            password: Secret::new("x".into()),
        };
        assert!(auth_file(&creds, None).expect("ok").is_none());
    }
}
