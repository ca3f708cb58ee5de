//! Where images go: an OCI layout on disk or a registry repository. Every
//! operation on the destination (where the tags stand, what an out path is
//! published as, an upload, a retag, a delete, and the plan of an upload)
//! lives here once for both kinds, so the stages and commands do not repeat
//! the split.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::{self, AuthFile, Credentials, Login};
use crate::digest::sha256_digest;
use crate::image::layout as oci;
use crate::image::reference::{ImageRef, Tag};
use crate::image::registry::{self as client, Registry as RegistryClient, RegistryError};
use crate::progress::{Event, PushEvent, Reporter};
use crate::state::ImageRecord;
use crate::tool::skopeo::Skopeo;
use crate::tool::Runner;
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
        let media_type = client::media_type_of(&bytes);
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

pub mod index;
mod layout;
mod registry;
#[cfg(test)]
mod tests;

pub use layout::Layout;
pub use registry::Registry;

/// An OCI layout directory, or a registry repository.
pub enum Destination {
    Layout(Layout),
    Registry(Registry),
}

/// What a registry's tag states and uploads need besides the client:
/// skopeo, the auth file it reads the login from, and where temporary files
/// go (a layout needs none of it).
pub struct Tools {
    pub skopeo: Skopeo,
    /// skopeo's `--authfile` (kept for the run: dropping it deletes it).
    pub authfile: Option<AuthFile>,
    /// The temporary OCI layout is written here.
    pub cache_dir: PathBuf,
    /// skopeo's digest file (with --policy) and the upload journal
    /// (`upload-journal`: blobs an interrupted upload sent) are written here.
    pub state_dir: PathBuf,
}

impl Tools {
    fn authfile(&self) -> Option<&Path> {
        self.authfile.as_ref().map(|a| a.path())
    }
}

/// A tag and what it points at now (None: absent).
#[derive(Debug, Clone)]
pub struct TagState {
    pub tag: Tag,
    pub digest: Option<String>,
    pub manifest: Option<String>,
}

/// What to upload.
pub struct Upload<'a> {
    /// The uncompressed docker-archive.
    pub archive: &'a Path,
    /// The tag the upload itself writes (the first of `states`).
    pub first: &'a Tag,
    /// Names the temporary layout in the cache (the out path's hash).
    pub name: &'a str,
    /// Every tag to write, in order, and where it points now.
    pub states: &'a [TagState],
    /// Other tags whose images may share layers with this one (with
    /// several systems: the index the floating tags name now).
    pub reuse_from: &'a [TagState],
    /// How new layers are compressed.
    pub codec: crate::image::codec::Codec,
}

/// The image at the destination after an upload (or found there).
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    /// The manifest's bytes, when known without asking again.
    pub manifest: Option<Manifest>,
    /// What was sent, for the stage's note.
    pub how: String,
    /// The tags the upload itself pointed at the image (and reported).
    pub tagged: Vec<Tag>,
}

impl Pushed {
    /// An index no tag names (every tag held back): nothing is sent.
    fn found_nowhere(index: &Manifest) -> Pushed {
        Pushed {
            digest: index.digest.clone(),
            manifest: Some(index.clone()),
            how: "no tag to write".into(),
            tagged: Vec::new(),
        }
    }

    /// The image is already there, at `state`'s tag: nothing is sent.
    pub fn found(state: &TagState) -> Pushed {
        Pushed {
            digest: state.digest.clone().unwrap_or_default(),
            manifest: state
                .manifest
                .clone()
                .map(|m| Manifest::from_bytes(m.into_bytes())),
            how: format!("already there as {}", state.tag),
            tagged: vec![state.tag.clone()],
        }
    }
}

/// The destination does not show what was just written to it.
#[derive(Debug, Error, Diagnostic)]
#[error("the destination does not show {reference} right after the push")]
#[diagnostic(
    code(runnerctl::push::not_there),
    help("the registry accepted the upload but does not serve it back (a proxy or cache in between?); run again: the push resumes from what is there")
)]
pub struct NotThere {
    pub reference: String,
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
            oci::check_destination(dir)?;
            return Ok(Connected {
                destination: Destination::Layout(Layout::new(dir.clone())),
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
        destination: Destination::Registry(Registry::new(
            Arc::new(client),
            image.clone(),
            access.tls_verify,
        )),
        login,
    })
}

impl Destination {
    /// The image reference this destination is.
    pub fn image(&self) -> ImageRef {
        match self {
            Destination::Layout(l) => ImageRef::Oci { dir: l.dir.clone() },
            Destination::Registry(r) => r.image.clone(),
        }
    }

    /// The manifest at a tag or a `sha256:` digest, if the destination has
    /// one there.
    pub fn manifest(&self, reference: &str) -> miette::Result<Option<Manifest>> {
        match self {
            Destination::Registry(r) => r.manifest(reference),
            Destination::Layout(l) => Ok(l.manifest(reference)),
        }
    }

    /// Where each of `tags` points now, in their order.
    pub async fn tag_states(
        &self,
        runner: &Runner,
        tools: &Tools,
        tags: &[Tag],
    ) -> miette::Result<Vec<TagState>> {
        match self {
            Destination::Registry(r) => r.tag_states(runner, tools, tags).await,
            Destination::Layout(l) => Ok(l.tag_states(tags)),
        }
    }

    /// The digest an out path is already published as: the one `record`
    /// (the state's entry for it) names, else the one its `nix-<hash>` tag
    /// points at; only if some tag in `states` still points there.
    pub fn published(
        &self,
        states: &[TagState],
        nix_tag: Option<&Tag>,
        record: Option<&ImageRecord>,
    ) -> Option<String> {
        self.known_digest(states, nix_tag, record).filter(|d| {
            states
                .iter()
                .any(|s| s.digest.as_deref() == Some(d.as_str()))
        })
    }

    /// The digest an out path was pushed here as, per `record` or its
    /// `nix-<hash>` tag, whether or not a tag still points there.
    pub fn known_digest(
        &self,
        states: &[TagState],
        nix_tag: Option<&Tag>,
        record: Option<&ImageRecord>,
    ) -> Option<String> {
        if let Some(record) = record {
            if record.image == self.image().to_string() {
                return Some(record.digest.clone());
            }
        }
        states
            .iter()
            .find(|s| Some(&s.tag) == nix_tag)
            .and_then(|s| s.digest.clone())
    }

    /// Send the image: into the layout in place (every tag at once), or to
    /// the registry under the first tag (the others are retags).
    pub async fn upload(
        &self,
        runner: &Runner,
        tools: &Tools,
        upload: &Upload<'_>,
    ) -> miette::Result<Pushed> {
        match self {
            Destination::Registry(r) => r.upload(runner, tools, upload).await,
            Destination::Layout(l) => l.upload(runner.reporter(), upload),
        }
    }

    /// What [`upload`](Self::upload) and the retags would run, for the
    /// dry-run plan (`out`: the image's out path).
    pub fn plan(
        &self,
        tools: &Tools,
        out: &str,
        tags: &[Tag],
        codec: crate::image::codec::Codec,
    ) -> Vec<String> {
        let Some(first) = tags.first() else {
            return Vec::new();
        };
        match self {
            Destination::Layout(l) => vec![l.plan(out, tags)],
            Destination::Registry(r) => {
                let mut cmds = r.plan(tools, out, first, codec);
                for tag in &tags[1..] {
                    cmds.push(format!(
                        "(built in) {}  (the same manifest: a retag, no blob is sent)",
                        self.describe_retag(&self.image(), tag.as_str(), "DIGEST")
                    ));
                }
                cmds
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

    /// The config blob of the image `manifest` describes (for an index,
    /// of its first image); None if it is not there.
    pub fn config(&self, manifest: &Manifest) -> miette::Result<Option<Vec<u8>>> {
        let mut manifest = manifest.clone();
        if let Some(first) = index::listed(&manifest.bytes).first() {
            match self.manifest(first)? {
                Some(child) => manifest = child,
                None => return Ok(None),
            }
        }
        let Ok(parsed) = serde_json::from_slice::<oci_spec::image::ImageManifest>(&manifest.bytes)
        else {
            return Ok(None);
        };
        let digest = parsed.config().digest().to_string();
        match self {
            Destination::Registry(r) => Ok(r.client.blob(&digest, 4 * 1024 * 1024)?),
            Destination::Layout(l) => Ok(l.blob(&digest)),
        }
    }

    /// The platforms (`linux/amd64`, …) an image or an index is for.
    pub fn platforms(&self, manifest: &Manifest) -> miette::Result<Vec<String>> {
        if index::is_index(manifest) {
            return Ok(index::platforms(&manifest.bytes));
        }
        let config = self.config(manifest)?;
        Ok(config
            .and_then(|c| serde_json::from_slice::<oci_spec::image::ImageConfiguration>(&c).ok())
            .map(|c| vec![format!("{}/{}", c.os(), c.architecture())])
            .unwrap_or_default())
    }

    /// Store `index` (runnerctl's own bytes) under `tag`: a manifest PUT
    /// at a registry, which checks that every manifest it lists is there;
    /// a blob and an index entry in a layout.
    pub fn put_index(&self, tag: &str, index: &Manifest) -> miette::Result<()> {
        match self {
            Destination::Registry(r) => {
                r.client
                    .put_manifest(tag, &index.bytes, &index.media_type)?;
            }
            Destination::Layout(l) => {
                oci::put_manifest(&l.dir, &index.bytes, &index.media_type, &[tag.to_string()])?;
            }
        }
        Ok(())
    }

    /// Point `tag` at `manifest`, which the destination already holds: the
    /// same bytes, no blob moves.
    pub fn retag(&self, tag: &str, manifest: &Manifest) -> miette::Result<()> {
        match self {
            Destination::Registry(r) => {
                r.client
                    .put_manifest(tag, &manifest.bytes, &manifest.media_type)?;
            }
            Destination::Layout(l) => {
                oci::add_tags(&l.dir, &manifest.digest, &[tag.to_string()])?;
            }
        }
        Ok(())
    }

    /// Point each of `tags` at the image `pushed`, reporting each: a
    /// manifest-only PUT of the same bytes (the registry checks that it has
    /// every blob). One at a time: the registry's filesystem storage
    /// rewrites the digest's revision link on every manifest PUT, and
    /// concurrent writes race there.
    pub fn retag_all(
        &self,
        reporter: &Reporter,
        pushed: &Pushed,
        tags: &[Tag],
    ) -> miette::Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let digest = &pushed.digest;
        let manifest = match &pushed.manifest {
            Some(manifest) => manifest.clone(),
            None => self.manifest(digest)?.ok_or_else(|| NotThere {
                reference: digest.clone(),
            })?,
        };
        for tag in tags {
            reporter.emit(Event::Command {
                command: self.describe_retag(&self.image(), tag.as_str(), digest),
            });
            self.retag(tag.as_str(), &manifest)?;
            reporter.emit(Event::Push(PushEvent::TagWritten {
                tag: tag.to_string(),
                skipped: false,
            }));
        }
        Ok(())
    }

    /// Point every tag of `states` that `sent` did not write itself at it,
    /// reporting each; returns the note's tail (`; tagged …; skipped …`).
    pub fn retag_states(
        &self,
        reporter: &Reporter,
        sent: &Pushed,
        states: &[TagState],
    ) -> miette::Result<String> {
        let (skipped, lagging): (Vec<_>, Vec<_>) = states
            .iter()
            .filter(|s| !sent.tagged.contains(&s.tag))
            .partition(|s| s.digest.as_deref() == Some(&sent.digest));
        for s in &skipped {
            reporter.emit(Event::Push(PushEvent::TagWritten {
                tag: s.tag.to_string(),
                skipped: true,
            }));
        }
        let lagging: Vec<Tag> = lagging.into_iter().map(|s| s.tag.clone()).collect();
        self.retag_all(reporter, sent, &lagging)?;
        let mut written: Vec<String> = lagging.iter().map(|t| t.to_string()).collect();
        written.sort();
        let mut note = String::new();
        if !written.is_empty() {
            note.push_str(&format!("; tagged {}", written.join(", ")));
        }
        if !skipped.is_empty() {
            let skipped: Vec<String> = skipped.iter().map(|s| s.tag.to_string()).collect();
            note.push_str(&format!("; skipped {} (already there)", skipped.join(", ")));
        }
        Ok(note)
    }

    /// Publish `index` over the images `systems` names (`(system,
    /// digest)`) under the first of `states`, safely: each image read back
    /// by digest first, the index written (unless that tag has it already)
    /// and read back naming every image. Returns what was sent, for the
    /// retags of the other tags; no other tag is touched here.
    pub fn publish_index(
        &self,
        reporter: &Reporter,
        index: &Manifest,
        systems: &[(String, String)],
        states: &[TagState],
    ) -> miette::Result<Pushed> {
        let image = self.image().to_string();
        for (system, digest) in systems {
            if self.manifest(digest)?.is_none() {
                return Err(index::IndexError::MissingManifest {
                    platform: system.clone(),
                    digest: digest.clone(),
                    image,
                }
                .into());
            }
        }
        let Some(first) = states.first() else {
            return Ok(Pushed::found_nowhere(index));
        };
        let mut tagged = Vec::new();
        if first.digest.as_deref() != Some(&index.digest) {
            reporter.emit(Event::Command {
                command: self.describe_retag(&self.image(), first.tag.as_str(), &index.digest),
            });
            self.put_index(first.tag.as_str(), index)?;
            reporter.emit(Event::Push(PushEvent::TagWritten {
                tag: first.tag.to_string(),
                skipped: false,
            }));
            tagged.push(first.tag.clone());
        }
        let served = self.manifest(first.tag.as_str())?;
        let listed = served.map(|m| index::listed(&m.bytes)).unwrap_or_default();
        let missing: Vec<&str> = systems
            .iter()
            .filter(|(_, d)| !listed.contains(d))
            .map(|(s, _)| s.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(index::IndexError::Incomplete {
                image,
                tag: first.tag.to_string(),
                missing: missing.join(", "),
            }
            .into());
        }
        Ok(Pushed {
            digest: index.digest.clone(),
            manifest: Some(index.clone()),
            how: format!("index over {} system(s) as {}", systems.len(), first.tag),
            tagged,
        })
    }

    /// Delete the manifest `digest` and every tag on it: a `DELETE` of the
    /// manifest at the registry, its index entries in a layout (the blobs
    /// stay until a garbage collection). `false`: it was not there.
    pub fn delete(&self, digest: &str) -> miette::Result<bool> {
        match self {
            Destination::Registry(r) => Ok(r.client.delete_manifest(digest)?),
            Destination::Layout(l) => Ok(oci::remove_manifest(&l.dir, digest)? > 0),
        }
    }

    /// The retag as a line for the plan and the log.
    pub fn describe_retag(&self, image: &ImageRef, tag: &str, digest: &str) -> String {
        match (self, image) {
            (
                Destination::Registry(_),
                ImageRef::Docker {
                    registry,
                    repository,
                },
            ) => format!("PUT {registry}/v2/{repository}/manifests/{tag} ({digest})"),
            _ => format!("(built in) tag {digest} as {tag} in {image}"),
        }
    }
}

/// Write the image as an OCI layout at `dir`, reusing `reuse`, and report
/// each layer.
fn write_layout(
    reporter: &Reporter,
    scanned: &oci::Scanned,
    dir: &Path,
    reuse: &oci::ReuseMap,
    tags: &[String],
    codec: crate::image::codec::Codec,
) -> miette::Result<oci::Written> {
    reporter.emit(Event::Push(PushEvent::LayersPlanned {
        total: scanned.layer_count(),
    }));
    let reporter = reporter.clone();
    let on_layer = move |skipped: bool, bytes: u64| {
        reporter.emit(Event::Push(PushEvent::LayerChecked { skipped, bytes }));
    };
    Ok(oci::write(scanned, dir, reuse, tags, codec, &on_layer)?)
}

/// Drop what the cache holds for pushed images: decompressed or streamed
/// archives and layouts. A later run that needs them again makes them
/// again.
pub fn clean_cache(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with("-image.tar") {
            let _ = std::fs::remove_file(entry.path());
        } else if name.starts_with("layout-") {
            let _ = std::fs::remove_dir_all(entry.path());
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
