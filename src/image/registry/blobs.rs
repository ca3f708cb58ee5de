//! Blobs: asking whether the repository has one (`HEAD`), and uploading
//! one, whole or in chunks, as the distribution API has it:
//!
//! - `POST /v2/<repo>/blobs/uploads/` opens an upload; its `Location` is
//!   where the data goes.
//! - Chunked: each `PATCH <location>` with `Content-Range: start-end`
//!   appends a chunk (the answer's `Location` is where the next goes).
//! - `PUT <location>?digest=sha256:…` closes it, with the last bytes (all
//!   of them for a monolithic upload) as its body. The registry checks the
//!   digest against what it received.
//!
//! A streamed blob's digest is known only once its last byte is, so a
//! blob bigger than one chunk goes chunked and a small one monolithic.

use super::{Registry, RegistryError, Request};
use crate::digest::sha256_digest;

impl RegistryError {
    /// Is it worth one more try? The same classes skopeo's failures get
    /// another try for: the registry not (properly) there (a refused or
    /// reset connection, a 5xx), or a failure of no known class. Not
    /// credentials, TLS or a 4xx (the same again fails the same way), nor
    /// a timeout (it already waited as long as it was allowed).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unavailable { .. } | RegistryError::Transport { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// An upload under way: where its next bytes go, and how many went.
pub struct BlobUpload<'a> {
    registry: &'a Registry,
    location: String,
    sent: u64,
    chunks: usize,
}

impl Registry {
    /// The size of blob `digest` if the repository has it.
    pub fn blob_size(&self, digest: &str) -> Result<Option<u64>, RegistryError> {
        let response = self.execute(Request::new("HEAD", format!("blobs/{digest}")))?;
        Ok(response.map(|r| {
            r.header("Content-Length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        }))
    }

    /// Open an upload session.
    pub fn start_upload(&self) -> Result<BlobUpload<'_>, RegistryError> {
        let path = "blobs/uploads/".to_string();
        let response = self.execute(Request {
            body: Some(&[]),
            ..Request::new("POST", path.clone())
        })?;
        let location = response
            .as_ref()
            .and_then(|r| r.header("Location"))
            .map(str::to_string)
            .ok_or_else(|| self.no_location(&path))?;
        Ok(BlobUpload {
            registry: self,
            location,
            sent: 0,
            chunks: 0,
        })
    }

    fn no_location(&self, path: &str) -> RegistryError {
        RegistryError::Transport {
            url: format!("{}/v2/{}/{path}", self.registry, self.repository),
            reason: "the registry's answer named no upload location".into(),
        }
    }

    /// Upload `bytes` as one blob unless the repository has it already.
    /// Returns its digest and whether it was sent.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<(String, bool), RegistryError> {
        let digest = sha256_digest(bytes);
        if self.blob_size(&digest)?.is_some() {
            return Ok((digest, false));
        }
        self.start_upload()?.finish(&digest, bytes)?;
        Ok((digest, true))
    }
}

impl BlobUpload<'_> {
    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Chunks sent so far with `PATCH`.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// Append `chunk` (`PATCH`).
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), RegistryError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let end = self.sent + chunk.len() as u64 - 1;
        let response = self.registry.execute(Request {
            content_type: Some("application/octet-stream"),
            body: Some(chunk),
            extra: vec![("Content-Range", format!("{}-{end}", self.sent))],
            ..Request::new("PATCH", self.location.clone())
        })?;
        let Some(response) = response else {
            return Err(self.gone("PATCH"));
        };
        if let Some(next) = response.header("Location") {
            self.location = next.to_string();
        }
        self.sent += chunk.len() as u64;
        self.chunks += 1;
        Ok(())
    }

    /// Close the upload with its `last` bytes, as blob `digest`.
    pub fn finish(mut self, digest: &str, last: &[u8]) -> Result<u64, RegistryError> {
        let sep = if self.location.contains('?') {
            '&'
        } else {
            '?'
        };
        let path = format!("{}{sep}digest={digest}", self.location);
        let mut extra = Vec::new();
        if !last.is_empty() && self.sent > 0 {
            let end = self.sent + last.len() as u64 - 1;
            extra.push(("Content-Range", format!("{}-{end}", self.sent)));
        }
        let response = self.registry.execute(Request {
            method: "PUT",
            path,
            accept: None,
            content_type: Some("application/octet-stream"),
            body: Some(last),
            extra,
            file: None,
        })?;
        if response.is_none() {
            return Err(self.gone("PUT"));
        }
        self.sent += last.len() as u64;
        Ok(self.sent)
    }

    /// Close a fresh upload with the whole blob, streamed from `path`
    /// (monolithic: one `PUT` with a `Content-Length`), as blob `digest`.
    pub fn finish_file(self, digest: &str, path: &std::path::Path) -> Result<(), RegistryError> {
        let sep = if self.location.contains('?') {
            '&'
        } else {
            '?'
        };
        let response = self.registry.execute(Request {
            content_type: Some("application/octet-stream"),
            file: Some(path),
            ..Request::new("PUT", format!("{}{sep}digest={digest}", self.location))
        })?;
        match response {
            Some(_) => Ok(()),
            None => Err(RegistryError::Http {
                method: "PUT",
                url: self.location.clone(),
                status: 404,
                body: "the upload session is unknown to the registry".into(),
            }),
        }
    }

    /// Whether a refused chunk means the registry takes no chunked
    /// uploads (a `PATCH` it does not allow or understand), so the blob
    /// must go up whole.
    pub fn refuses_chunks(err: &RegistryError) -> bool {
        matches!(
            err,
            RegistryError::Http { method: "PATCH", status, .. }
                if matches!(status, 400 | 405 | 411 | 415 | 416 | 501)
        )
    }

    fn gone(&mut self, method: &'static str) -> RegistryError {
        RegistryError::Http {
            method,
            url: self.location.clone(),
            status: 404,
            body: "the upload session is unknown to the registry".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_the_ones_skopeo_retries() {
        let http = |status| RegistryError::Http {
            method: "PUT",
            url: "u".into(),
            status,
            body: String::new(),
        };
        assert!(http(500).is_transient());
        assert!(http(503).is_transient());
        assert!(!http(400).is_transient());
        assert!(!RegistryError::Unauthorized {
            url: "u".into(),
            status: 401
        }
        .is_transient());
        assert!(!RegistryError::Timeout {
            headline: "h".into(),
            url: "u".into(),
            help: "h".into()
        }
        .is_transient());
        assert!(RegistryError::Transport {
            url: "u".into(),
            reason: "r".into()
        }
        .is_transient());
    }
}
