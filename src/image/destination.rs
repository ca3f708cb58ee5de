//! Where images go: an OCI layout on disk or a registry repository. The
//! operations that promote and rollback need (look a manifest up by tag or
//! digest, point a tag at a manifest the destination already holds) live
//! here once for both kinds, so the commands do not repeat the split.

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{self, Credentials, Login};
use crate::digest::sha256_digest;
use crate::image::layout;
use crate::image::reference::ImageRef;
use crate::image::registry::{self, Registry as RegistryClient, RegistryError};
use miette::Diagnostic;
use thiserror::Error;

/// The registry refused the login, or wanted one and there was none
/// (found before anything changes).
#[derive(Debug, Error, Diagnostic)]
pub enum LoginError {
    #[error("the registry rejected the credentials for {registry} from {from} (HTTP {status} unauthorized)")]
    #[diagnostic(
        code(runnerctl::preflight::login),
        help("check them (runnerctl looks, in order, at RUNNERCTL_REGISTRY_USER/RUNNERCTL_REGISTRY_PASSWORD, REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json, ~/.docker/config.json), log in again (`skopeo login {registry}`), then run again; nothing was updated or built, and nothing was committed or pushed to git")
    )]
    LoginRejected {
        registry: String,
        from: String,
        status: u16,
    },

    #[error("the registry {registry} requires a login, and runnerctl found none for it")]
    #[diagnostic(
        code(runnerctl::preflight::no_login),
        help("log in with `skopeo login {registry}` (it writes $XDG_RUNTIME_DIR/containers/auth.json), or set RUNNERCTL_REGISTRY_USER and RUNNERCTL_REGISTRY_PASSWORD, or REGISTRY_AUTH_FILE; runnerctl looked in: {looked}. Nothing was updated or built, and nothing was committed or pushed to git")
    )]
    NoLogin { registry: String, looked: String },
}

/// A manifest the destination holds, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl Manifest {
    /// A manifest's bytes, with the media type they declare.
    pub fn from_bytes(bytes: Vec<u8>) -> Manifest {
        let media_type = registry::media_type_of(&bytes);
        Manifest::new(bytes, media_type)
    }

    fn new(bytes: Vec<u8>, media_type: String) -> Manifest {
        Manifest {
            digest: sha256_digest(&bytes),
            bytes,
            media_type,
        }
    }
}

pub enum Destination {
    Layout { dir: PathBuf },
    Registry { client: Arc<RegistryClient> },
}

/// A destination, and the login that reached it (skopeo needs it too).
pub struct Connected {
    pub destination: Destination,
    pub login: Option<Login>,
}

/// How to reach a registry.
pub struct Access<'a> {
    pub credentials: &'a Credentials,
    pub tls_verify: bool,
    pub timeout: std::time::Duration,
}

/// Open `image`: for a registry, resolve the login and check it with one
/// request, before anything changes.
pub fn connect(image: &ImageRef, access: &Access) -> miette::Result<Connected> {
    let (registry, repository) = match image {
        ImageRef::Oci { dir } => {
            layout::check_destination(dir)?;
            return Ok(Connected {
                destination: Destination::Layout { dir: dir.clone() },
                login: None,
            });
        }
        ImageRef::Docker {
            registry,
            repository,
        } => (registry, repository),
    };
    let login = auth::resolve(access.credentials, registry, repository)?;
    let creds = login
        .as_ref()
        .map(Login::credentials)
        .unwrap_or(Credentials::None);
    let client = RegistryClient::new(
        registry,
        repository,
        &creds,
        access.tls_verify,
        access.timeout,
    )?;
    match (client.check_auth(), &login) {
        (Ok(()), _) => {}
        (Err(RegistryError::Unauthorized { status, .. }), Some(login)) => {
            return Err(LoginError::LoginRejected {
                registry: registry.clone(),
                from: login.source.clone(),
                status,
            }
            .into())
        }
        (Err(RegistryError::Unauthorized { .. }), None) => {
            let looked: Vec<String> = auth::login_files(access.credentials)
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(LoginError::NoLogin {
                registry: registry.clone(),
                looked: looked.join(", "),
            }
            .into());
        }
        (Err(other), _) => return Err(other.into()),
    }
    Ok(Connected {
        destination: Destination::Registry {
            client: Arc::new(client),
        },
        login,
    })
}

impl Destination {
    /// The manifest at a tag or a `sha256:` digest, if the destination has
    /// one there.
    pub fn manifest(&self, reference: &str) -> miette::Result<Option<Manifest>> {
        match self {
            Destination::Registry { client } => Ok(client
                .manifest(reference)?
                .map(|(bytes, media_type)| Manifest::new(bytes, media_type))),
            Destination::Layout { dir } => {
                let by_digest = reference.starts_with("sha256:");
                let digest = if by_digest {
                    Some(reference.to_string())
                } else {
                    layout::tag_digest(dir, reference)
                };
                let Some(digest) = digest else {
                    return Ok(None);
                };
                let hex = digest.trim_start_matches("sha256:");
                if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(None);
                }
                let Ok(bytes) = std::fs::read(dir.join("blobs/sha256").join(hex)) else {
                    return Ok(None);
                };
                let manifest = Manifest::from_bytes(bytes);
                // A tag names a manifest; a digest may be a layer or a
                // config blob, which is not an image.
                let indexed = !by_digest || layout::has_manifest(dir, &manifest.digest);
                Ok(indexed.then_some(manifest))
            }
        }
    }

    /// Of `tags`, those that do not point at `digest` yet, and where they
    /// point now.
    pub fn moves<'a>(
        &self,
        tags: impl IntoIterator<Item = &'a str>,
        digest: &str,
    ) -> miette::Result<Vec<TagMove>> {
        let mut moves = Vec::new();
        for tag in tags {
            let now = self.manifest(tag)?.map(|m| m.digest);
            if now.as_deref() != Some(digest) {
                moves.push(TagMove {
                    tag: tag.to_string(),
                    from: now,
                });
            }
        }
        Ok(moves)
    }

    /// Point `tag` at `manifest`, which the destination already holds: the
    /// same bytes, no blob moves.
    pub fn retag(&self, tag: &str, manifest: &Manifest) -> miette::Result<()> {
        match self {
            Destination::Registry { client } => {
                client.put_manifest(tag, &manifest.bytes, &manifest.media_type)?;
            }
            Destination::Layout { dir } => {
                layout::add_tags(dir, &manifest.digest, &[tag.to_string()])?;
            }
        }
        Ok(())
    }

    /// The retag as a line for the plan and the log.
    pub fn describe_retag(&self, image: &ImageRef, tag: &str, digest: &str) -> String {
        match (self, image) {
            (
                Destination::Registry { .. },
                ImageRef::Docker {
                    registry,
                    repository,
                },
            ) => format!("PUT {registry}/v2/{repository}/manifests/{tag} ({digest})"),
            _ => format!("(built in) tag {digest} as {tag} in {image}"),
        }
    }
}

/// A tag to move, and where it points now (None: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagMove {
    pub tag: String,
    pub from: Option<String>,
}

/// `TAG: FROM → TO; …`, for notes and dry runs.
pub fn describe_moves(moves: &[TagMove], to: &str) -> String {
    moves
        .iter()
        .map(|m| {
            format!(
                "{}: {} → {to}",
                m.tag,
                m.from.as_deref().unwrap_or("(absent)")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
