//! Registry authentication: the `WWW-Authenticate` challenge, Basic credentials and the Bearer token request.

use std::io::Read as _;

use base64::Engine;

use super::{body_tail, Registry, RegistryError};
use crate::auth::{Credentials, Secret};

/// User and password for one registry.
#[derive(Clone)]
pub(super) struct Basic {
    user: String,
    password: Secret,
}

impl Basic {
    pub(super) fn header(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.user,
            self.password.expose()
        ));
        format!("Basic {token}")
    }
}

/// Find the credentials for `registry` (host[:port]).
pub(super) fn basic_for(
    creds: &Credentials,
    registry: &str,
) -> Result<Option<Basic>, RegistryError> {
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

impl Registry {
    /// Fetch a token for a Bearer challenge.
    pub(super) fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, RegistryError> {
        let default_scope = format!("repository:{}:pull,push", self.repository);
        let mut r = self
            .short(self.agent.get(realm))
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
}
