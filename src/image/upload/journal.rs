//! The upload journal: each blob that reached the registry, so a push
//! killed midway, run again, sends only what the registry lacks.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::image::{Descriptor, MediaType};

use crate::image::codec::Codec;
use crate::image::layout::descriptor as oci_descriptor;

/// Blobs that reached the registry: one line per blob,
/// `<codec> <diff_id> <digest> <size> <media type>`, appended as each
/// upload completes.
pub(super) struct Journal {
    path: Option<PathBuf>,
    codec: String,
    known: HashMap<String, Descriptor>,
    file: Mutex<Option<File>>,
}

impl Journal {
    pub(super) fn open(path: Option<&Path>, codec: Codec) -> Journal {
        let codec = codec.key();
        let mut known = HashMap::new();
        if let Some(file) = path.and_then(|p| File::open(p).ok()) {
            for line in BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .take(100_000)
            {
                let f: Vec<&str> = line.split(' ').collect();
                if let [c, diff_id, digest, size, media_type] = f[..] {
                    let Ok(size) = size.parse() else { continue };
                    if c != codec {
                        continue;
                    }
                    if let Ok(d) = oci_descriptor(MediaType::from(media_type), digest, size) {
                        known.insert(diff_id.to_string(), d);
                    }
                }
            }
        }
        let file = path.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        Journal {
            path: path.map(Path::to_path_buf),
            codec,
            known,
            file: Mutex::new(file),
        }
    }

    pub(super) fn get(&self, diff_id: &str) -> Option<Descriptor> {
        self.known.get(diff_id).cloned()
    }

    fn line(&self, diff_id: &str, d: &Descriptor) -> String {
        format!(
            "{} {diff_id} {} {} {}\n",
            self.codec,
            d.digest(),
            d.size(),
            d.media_type()
        )
    }

    pub(super) fn record(&self, diff_id: &str, d: &Descriptor) {
        let line = self.line(diff_id, d);
        if let Ok(mut guard) = self.file.lock() {
            if let Some(f) = guard.as_mut() {
                // One write per line, so lines from two workers never mix.
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    /// After a complete push the journal keeps only that push's layers
    /// (an image pushed next in the same run, another system's, may share
    /// them: it finds them by `HEAD`), so it never grows past one image and
    /// one interrupted push.
    pub(super) fn keep_only(&self, pushed: &[(String, Descriptor)]) {
        if let Ok(mut guard) = self.file.lock() {
            *guard = None;
        }
        let Some(path) = &self.path else {
            return;
        };
        let text: String = pushed.iter().map(|(id, d)| self.line(id, d)).collect();
        let dir = path.parent().unwrap_or(Path::new("."));
        let written = tempfile::Builder::new()
            .prefix(".upload-journal-")
            .tempfile_in(dir)
            .and_then(|mut tmp| {
                tmp.write_all(text.as_bytes())?;
                tmp.persist(path).map_err(|e| e.error)?;
                Ok(())
            });
        if written.is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_remembers_blobs_per_codec() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let gzip = Codec::default();
        let zstd = Codec::new(crate::image::codec::Compression::Zstd, None).expect("zstd");
        let desc = oci_descriptor(
            MediaType::ImageLayerGzip,
            &format!("sha256:{}", "a".repeat(64)),
            42,
        )
        .expect("descriptor");
        let j = Journal::open(Some(&path), gzip);
        j.record("sha256:u1", &desc);
        drop(j);
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).expect("read") + "garbage line\n",
        )
        .expect("append");
        assert_eq!(
            Journal::open(Some(&path), gzip).get("sha256:u1"),
            Some(desc)
        );
        // Another codec made other bytes: nothing to resume.
        assert_eq!(Journal::open(Some(&path), zstd).get("sha256:u1"), None);
        // After a push only its layers stay.
        Journal::open(Some(&path), gzip).keep_only(&[]);
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "");
    }
}
