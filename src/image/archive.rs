//! Turning the build output into an uncompressed docker-archive that every
//! skopeo can read: a plain tar is used as is, a gzip archive is
//! decompressed (skopeo 1.9 cannot read `.tar.gz`), and a stream script
//! (nixpkgs' streamLayeredImage) is run into a file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use oci_spec::image::ImageConfiguration;
use serde::Deserialize;
use thiserror::Error;

use crate::tool::{Cmd, Runner, ToolError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    Gzip,
    /// An executable that writes the archive to stdout.
    Script,
}

#[derive(Debug, Error, Diagnostic)]
pub enum ArchiveError {
    #[error("could not read the build output {}", path.display())]
    #[diagnostic(
        code(runnerctl::archive::read),
        help("the out path may have been garbage-collected; run again to rebuild it")
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the build output {} is a directory, not an image archive", path.display())]
    #[diagnostic(
        code(runnerctl::archive::dir),
        help("--attr must name a dockerTools image: buildImage/buildLayeredImage (a .tar or .tar.gz) or streamLayeredImage (a script)")
    )]
    Directory { path: PathBuf },

    #[error("could not write the image archive {}", path.display())]
    #[diagnostic(
        code(runnerctl::archive::write),
        help("check free space in the state dir")
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Stream(#[from] ToolError),
}

/// What kind of file the build produced, from its first bytes.
pub fn detect(path: &Path) -> Result<ArchiveKind, ArchiveError> {
    let read = |source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.is_dir() {
        return Err(ArchiveError::Directory {
            path: path.to_path_buf(),
        });
    }
    let mut head = [0u8; 2];
    let mut file = File::open(path).map_err(read)?;
    let n = file.read(&mut head).map_err(read)?;
    Ok(kind_of(&head[..n]))
}

/// gzip's magic number: the one place runnerctl recognises gzip (archives,
/// and layers inside them).
pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

pub fn kind_of(head: &[u8]) -> ArchiveKind {
    if is_gzip(head) {
        ArchiveKind::Gzip
    } else if head.starts_with(b"#!") {
        ArchiveKind::Script
    } else {
        ArchiveKind::Tar
    }
}

/// An uncompressed docker-archive for `out`: `out` itself when it is one,
/// else a file in `cache_dir` named after the out path's hash (reused by a
/// resumed run; written to a temp file and renamed, so never half-written).
pub async fn prepare(
    runner: &Runner,
    out: &Path,
    hash_part: &str,
    cache_dir: &Path,
) -> Result<PathBuf, ArchiveError> {
    let kind = detect(out)?;
    if kind == ArchiveKind::Tar {
        return Ok(out.to_path_buf());
    }
    let target = cache_dir.join(format!("{hash_part}-image.tar"));
    if target.is_file() {
        return Ok(target);
    }
    let write = |source| ArchiveError::Write {
        path: target.clone(),
        source,
    };
    std::fs::create_dir_all(cache_dir).map_err(write)?;
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(cache_dir)
        .map_err(write)?;
    match kind {
        ArchiveKind::Gzip => {
            let src = File::open(out).map_err(|source| ArchiveError::Read {
                path: out.to_path_buf(),
                source,
            })?;
            let mut decoder = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(src));
            let mut dst = std::io::BufWriter::new(tmp.as_file());
            let copy = std::io::copy(&mut decoder, &mut dst);
            copy.map_err(|source| ArchiveError::Read {
                path: out.to_path_buf(),
                source,
            })?;
            drop(dst);
        }
        ArchiveKind::Script => {
            runner.run(&Cmd::new(out).stdout_to(tmp.path())).await?;
        }
        ArchiveKind::Tar => {}
    }
    tmp.as_file().sync_all().map_err(write)?;
    tmp.persist(&target).map_err(|e| write(e.error))?;
    Ok(target)
}

/// Open an archive for reading, decompressing gzip on the fly.
pub fn open(path: &Path) -> Result<Box<dyn Read>, ArchiveError> {
    let read = |source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    };
    let kind = detect(path)?;
    let file = std::io::BufReader::new(File::open(path).map_err(read)?);
    Ok(match kind {
        ArchiveKind::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        _ => Box::new(file),
    })
}

/// The names a docker-archive carries (`RepoTags` in its manifest.json),
/// which an engine gives the image when it loads it. Reads through the
/// archive once; an archive without a readable manifest.json carries none.
pub fn repo_tags(path: &Path) -> Result<Vec<String>, ArchiveError> {
    let read = |source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A plain tar is searched by seeking past the layers; gzip has to be
    // read through.
    if detect(path)? == ArchiveKind::Tar {
        let file = File::open(path).map_err(read)?;
        let mut tar = tar::Archive::new(std::io::BufReader::new(file));
        let entries = tar.entries_with_seek().map_err(read)?;
        return names_in(entries).map_err(read);
    }
    let mut tar = tar::Archive::new(open(path)?);
    let entries = tar.entries().map_err(read)?;
    names_in(entries).map_err(read)
}

/// The RepoTags of the first `manifest.json` among `entries`.
fn names_in<R: Read>(entries: tar::Entries<'_, R>) -> std::io::Result<Vec<String>> {
    for entry in entries {
        let mut entry = entry?;
        let is_manifest = entry
            .path()
            .map(|p| normalize(&p.to_string_lossy()) == "manifest.json")
            .unwrap_or(false);
        if !is_manifest {
            continue;
        }
        let mut text = Vec::new();
        (&mut entry).take(1024 * 1024).read_to_end(&mut text)?;
        let images: Vec<ArchiveImage> = serde_json::from_slice(&text).unwrap_or_default();
        return Ok(images
            .into_iter()
            .flat_map(|e| e.repo_tags.unwrap_or_default())
            .collect());
    }
    Ok(Vec::new())
}

/// A path inside an archive or an image: no `./`, no empty parts, `..`
/// applied. Entry names are compared in this form.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// One image in a docker-archive's `manifest.json`. That file is docker's
/// own (`docker save`), not an OCI document, so oci-spec has no type for it.
#[derive(Debug, Clone, Deserialize)]
pub struct ArchiveImage {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
}

/// What a docker-archive holds, as its manifest.json says.
#[derive(Debug, Clone)]
pub struct Contents {
    /// The layers' entry names (normalized), in order.
    pub layers: Vec<String>,
    /// The image config's exact bytes: what is digested and uploaded.
    pub config_bytes: Vec<u8>,
    /// The same config, read as an OCI image configuration.
    pub config: ImageConfiguration,
}

/// Keep `entry` in `jsons` (by its normalized `name`) when it is one of the
/// archive's small JSON files: manifest.json or a config.
pub fn keep_json<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &str,
    jsons: &mut HashMap<String, Vec<u8>>,
) -> std::io::Result<bool> {
    if !name.ends_with(".json") || entry.size() >= 16 * 1024 * 1024 {
        return Ok(false);
    }
    let mut buf = Vec::new();
    entry.read_to_end(&mut buf)?;
    jsons.insert(name.to_string(), buf);
    Ok(true)
}

/// The first image that the archive's manifest.json lists, from the JSON
/// files [`keep_json`] kept. The error says what is wrong with the archive.
pub fn contents(mut jsons: HashMap<String, Vec<u8>>) -> Result<Contents, String> {
    let text = jsons
        .get("manifest.json")
        .ok_or_else(|| "no manifest.json".to_string())?;
    let image = serde_json::from_slice::<Vec<ArchiveImage>>(text)
        .map_err(|e| format!("manifest.json: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| "manifest.json lists no image".to_string())?;
    let config_bytes = jsons
        .remove(&normalize(&image.config))
        .ok_or_else(|| format!("config {} is missing", image.config))?;
    let config = serde_json::from_slice(&config_bytes).map_err(|e| format!("config: {e}"))?;
    Ok(Contents {
        layers: image.layers.iter().map(|l| normalize(l)).collect(),
        config_bytes,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_come_from_manifest_json_wherever_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("image.tar");
        let mut builder = tar::Builder::new(File::create(&path).expect("create"));
        for (name, body) in [
            ("abc/layer.tar", &b"layer bytes"[..]),
            (
                "manifest.json",
                &br#"[{"Config":"c.json","RepoTags":["nixos:20260629"],"Layers":["abc/layer.tar"]}]"#[..],
            ),
            ("c.json", &b"{}"[..]),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, body).expect("append");
        }
        builder.finish().expect("finish");
        drop(builder);
        assert_eq!(repo_tags(&path).expect("read"), vec!["nixos:20260629"]);
        // The same archive gzip-compressed (read through, not seeked).
        let gz = dir.path().join("image.tar.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            File::create(&gz).expect("create gz"),
            flate2::Compression::fast(),
        );
        std::io::copy(&mut File::open(&path).expect("open"), &mut encoder).expect("gzip");
        encoder.finish().expect("finish gz");
        assert_eq!(detect(&gz).expect("detect"), ArchiveKind::Gzip);
        assert_eq!(repo_tags(&gz).expect("read gz"), vec!["nixos:20260629"]);
        // No manifest.json: no names.
        let bare = dir.path().join("bare.tar");
        let mut builder = tar::Builder::new(File::create(&bare).expect("create"));
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_cksum();
        builder
            .append_data(&mut header, "x", &b"x"[..])
            .expect("append");
        builder.finish().expect("finish");
        drop(builder);
        assert!(repo_tags(&bare).expect("read").is_empty());
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(&[0x1f, 0x8b, 8]), ArchiveKind::Gzip);
        assert_eq!(
            kind_of(b"#!/nix/store/x-bash/bin/bash"),
            ArchiveKind::Script
        );
        assert_eq!(kind_of(b"manifest.json\0"), ArchiveKind::Tar);
        assert_eq!(kind_of(b""), ArchiveKind::Tar);
    }
}
