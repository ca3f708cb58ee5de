//! Checks on a built image, read straight from its docker-archive as
//! streams: the config's Cmd and Env, the certificate bundle, nix.conf, and
//! paths the layers must provide. Only the entries needed for the checks
//! are kept in memory: symlinks, and the required paths themselves.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use crate::system::System;

use miette::Diagnostic;
use thiserror::Error;

use super::archive::{self, normalize, ArchiveError};
use crate::config::VerifyConfig;

#[derive(Debug, Error, Diagnostic)]
pub enum VerifyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Archive(#[from] ArchiveError),

    #[error("the image archive {} is not a docker-archive: {reason}", path.display())]
    #[diagnostic(
        code(runnerctl::verify::format),
        help("--attr must name a dockerTools image (buildImage, buildLayeredImage or streamLayeredImage)")
    )]
    Format {
        path: std::path::PathBuf,
        reason: String,
    },

    #[error("the image failed verification, so nothing was pushed or committed:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    #[diagnostic(
        code(runnerctl::verify::failed),
        help("fix the image in nix/ (or the flake output named by --attr) and run again; to change the checks use --verify-require / --verify-no-defaults, or skip them with --no-verify")
    )]
    Failed { problems: Vec<String> },
}

/// What verification looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub layers: usize,
    pub checks: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} checks passed over {} layers",
            self.checks, self.layers
        )
    }
}

/// The merged view of the layers, limited to what the checks need.
#[derive(Debug, Default)]
pub struct Tree {
    /// Symlink path → target (every symlink; paths are relative, no `./`).
    symlinks: HashMap<String, String>,
    /// Files and directories whose path is one the checks want.
    present: HashSet<String>,
    /// nix.conf contents when found at a wanted path.
    files: HashMap<String, Vec<u8>>,
}

impl Tree {
    /// Resolve symlinks along a path, as the kernel would in the container.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut pending: Vec<String> = normalize(path)
            .split('/')
            .map(str::to_string)
            .rev()
            .collect();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part.is_empty() {
                continue;
            }
            current.push(part);
            let joined = current.join("/");
            if let Some(target) = self.symlinks.get(&joined) {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                current.pop();
                let base = if target.starts_with('/') {
                    String::new()
                } else {
                    current.join("/")
                };
                let full = normalize(&format!("{base}/{target}"));
                current.clear();
                for p in full.split('/').rev() {
                    pending.push(p.to_string());
                }
            }
        }
        Some(current.join("/"))
    }
}

/// Paths whose existence or content the checks need, before symlinks.
fn wanted(cfg: &VerifyConfig, cert: Option<&str>) -> Vec<String> {
    let mut paths: Vec<String> = cfg.required_paths.iter().map(|p| normalize(p)).collect();
    if cfg.check_config {
        paths.push("etc/nix/nix.conf".into());
        if let Some(cert) = cert {
            paths.push(normalize(cert));
        }
    }
    paths
}

/// Verify an image archive (tar or gzip) against the configured checks;
/// with `system`, its config must declare that system's platform too (an image
/// built for aarch64-linux that says amd64 would be pulled by amd64 hosts).
pub fn verify(
    path: &Path,
    cfg: &VerifyConfig,
    system: Option<&System>,
) -> Result<Summary, VerifyError> {
    let format = |reason: String| VerifyError::Format {
        path: path.to_path_buf(),
        reason,
    };
    // Pass 1: manifest.json and the config (small files).
    let mut jsons: HashMap<String, Vec<u8>> = HashMap::new();
    {
        let mut outer = tar::Archive::new(archive::open(path)?);
        for entry in outer.entries().map_err(|e| format(e.to_string()))? {
            let mut entry = entry.map_err(|e| format(e.to_string()))?;
            let name = normalize(
                &entry
                    .path()
                    .map_err(|e| format(e.to_string()))?
                    .to_string_lossy(),
            );
            archive::keep_json(&mut entry, &name, &mut jsons).map_err(|e| format(e.to_string()))?;
        }
    }
    let contents = archive::contents(jsons).map_err(format)?;
    let run = contents.config.config().clone().unwrap_or_default();
    let env: HashMap<String, String> = run
        .env()
        .iter()
        .flatten()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();

    let mut problems = Vec::new();
    let mut checks = 0;
    if let Some(system) = system {
        let platform = system.platform();
        checks += 1;
        let declared = (
            contents.config.os().to_string(),
            contents.config.architecture().to_string(),
            contents.config.variant().clone(),
        );
        let expected = (
            platform.os.to_string(),
            platform.architecture.to_string(),
            platform.variant.map(str::to_string),
        );
        // A variant the config leaves out is not a mismatch (arm64 images
        // often omit `v8`); a different one is.
        let variant_ok = declared.2.is_none() || declared.2 == expected.2;
        if declared.0 != expected.0 || declared.1 != expected.1 || !variant_ok {
            let mut said = format!("{}/{}", declared.0, declared.1);
            if let Some(variant) = &declared.2 {
                said.push_str(&format!("/{variant}"));
            }
            problems.push(format!(
                "config: the image declares {said}, but it was built for {system}, which is {platform}"
            ));
        }
    }
    let cert = env.get("SSL_CERT_FILE").cloned();
    if cfg.check_config {
        checks += 1;
        let has_cmd = run.cmd().as_ref().is_some_and(|c| !c.is_empty())
            || run.entrypoint().as_ref().is_some_and(|c| !c.is_empty());
        if !has_cmd {
            problems.push("config: Cmd is not set (expected e.g. [\"/bin/bash\"])".to_string());
        }
        for key in ["PATH", "SSL_CERT_FILE", "NIX_SSL_CERT_FILE"] {
            checks += 1;
            if env.get(key).is_none_or(|v| v.is_empty()) {
                problems.push(format!("config: Env has no {key}"));
            }
        }
    }

    // Pass 2: stream the layers in order, keeping only what is needed.
    let want = wanted(cfg, cert.as_deref());
    let layer_names = contents.layers;
    let mut tree = Tree::default();
    {
        let mut outer = tar::Archive::new(archive::open(path)?);
        for outer_entry in outer.entries().map_err(|e| format(e.to_string()))? {
            let outer_entry = outer_entry.map_err(|e| format(e.to_string()))?;
            let name = normalize(
                &outer_entry
                    .path()
                    .map_err(|e| format(e.to_string()))?
                    .to_string_lossy(),
            );
            if !layer_names.contains(&name) {
                continue;
            }
            let mut head = std::io::BufReader::new(outer_entry);
            let reader: Box<dyn Read + '_> = {
                use std::io::BufRead;
                let buf = head.fill_buf().map_err(|e| format(e.to_string()))?;
                if archive::is_gzip(buf) {
                    Box::new(flate2::read::MultiGzDecoder::new(head))
                } else {
                    Box::new(head)
                }
            };
            index_layer(reader, &want, &mut tree)
                .map_err(|e| format(format!("layer {name}: {e}")))?;
        }
    }

    // Required paths, through symlinks.
    for path in &cfg.required_paths {
        checks += 1;
        if !exists(&tree, path) {
            problems.push(format!(
                "missing /{}: no layer provides it",
                normalize(path)
            ));
        }
    }
    if cfg.check_config {
        if let Some(cert) = &cert {
            checks += 1;
            if !exists(&tree, cert) {
                problems.push(format!(
                    "SSL_CERT_FILE names {cert}, which no layer provides"
                ));
            }
        }
        checks += 1;
        match tree
            .resolve("etc/nix/nix.conf")
            .and_then(|p| tree.files.get(&p))
        {
            None => problems.push("missing /etc/nix/nix.conf".to_string()),
            Some(text) => {
                if !nix_conf_enables_flakes(&String::from_utf8_lossy(text)) {
                    problems.push("/etc/nix/nix.conf does not enable `experimental-features = nix-command flakes`".to_string());
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(Summary {
            layers: layer_names.len(),
            checks,
        })
    } else {
        Err(VerifyError::Failed { problems })
    }
}

fn exists(tree: &Tree, path: &str) -> bool {
    tree.resolve(path)
        .is_some_and(|p| tree.present.contains(&p))
}

/// Does a nix.conf turn on both `nix-command` and `flakes`?
pub fn nix_conf_enables_flakes(text: &str) -> bool {
    let mut features: HashSet<String> = HashSet::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key == "experimental-features" {
            features = value.split_whitespace().map(str::to_string).collect();
        } else if key == "extra-experimental-features" {
            features.extend(value.split_whitespace().map(str::to_string));
        }
    }
    features.contains("nix-command") && features.contains("flakes")
}

/// Record a layer's symlinks and wanted entries. Wanted paths may lie behind
/// symlinks in other layers, so any path that ends like a wanted one (e.g.
/// `nix/store/…-root/bin/bash` for `bin/bash`) or is under a store path is
/// kept by its suffix.
fn index_layer<'a>(
    reader: Box<dyn Read + 'a>,
    want: &[String],
    tree: &mut Tree,
) -> std::io::Result<()> {
    let mut layer = tar::Archive::new(reader);
    for entry in layer.entries()? {
        let mut entry = entry?;
        let path = normalize(&entry.path()?.to_string_lossy());
        let kind = entry.header().entry_type();
        if let Some(name) = path.rsplit('/').next() {
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                let gone = normalize(&format!("{dir}/{hidden}"));
                tree.present.remove(&gone);
                tree.symlinks.remove(&gone);
                continue;
            }
        }
        if kind.is_symlink() {
            if let Some(target) = entry.link_name()? {
                tree.symlinks
                    .insert(path.clone(), target.to_string_lossy().into_owned());
            }
            continue;
        }
        if kind.is_hard_link() {
            if let Some(target) = entry.link_name()? {
                let target = normalize(&target.to_string_lossy());
                if tree.present.contains(&target) {
                    tree.present.insert(path);
                }
            }
            continue;
        }
        let is_wanted = want.iter().any(|w| {
            path == *w
                || path.ends_with(&format!("/{w}"))
                || w.ends_with(&format!("/{}", file_name(&path)))
        });
        if is_wanted {
            if path.ends_with("nix.conf") && entry.size() < 1024 * 1024 {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf)?;
                tree.files.insert(path.clone(), buf);
            }
            tree.present.insert(path);
        }
    }
    Ok(())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_symlinks_across_the_tree() {
        let mut tree = Tree::default();
        tree.symlinks
            .insert("bin".into(), "/nix/store/aaa-root/bin".into());
        tree.symlinks.insert(
            "nix/store/aaa-root/bin/bash".into(),
            "/nix/store/bbb-bash/bin/bash".into(),
        );
        tree.symlinks.insert("loop".into(), "loop".into());
        assert_eq!(
            tree.resolve("bin/bash").as_deref(),
            Some("nix/store/bbb-bash/bin/bash")
        );
        assert_eq!(tree.resolve("/etc/./x/../y").as_deref(), Some("etc/y"));
        assert_eq!(tree.resolve("loop"), None);
    }

    #[test]
    fn nix_conf_features() {
        assert!(nix_conf_enables_flakes(
            "experimental-features = nix-command flakes\n"
        ));
        assert!(nix_conf_enables_flakes(
            "experimental-features = nix-command\nextra-experimental-features = flakes"
        ));
        assert!(!nix_conf_enables_flakes(
            "experimental-features = nix-command\n"
        ));
        assert!(!nix_conf_enables_flakes(
            "# experimental-features = nix-command flakes\n"
        ));
    }
}
