//! Blobs: asking whether the repository has one (`HEAD`), and uploading
//! one, as the distribution API has it:
//!
//! - `POST /v2/<repo>/blobs/uploads/` opens an upload; its `Location` is
//!   where the data goes.
//! - Streamed: one `PATCH <location>` whose body is the blob, sent as it
//!   is made (chunked transfer encoding, no `Content-Range`): what `docker
//!   push` and skopeo send, so every registry they push to takes it. The
//!   answer's `Location` is where the upload is closed.
//! - `PUT <location>?digest=sha256:…` closes it (with the whole blob as
//!   its body for a monolithic upload). The registry checks the digest
//!   against what it received.
//!
//! A streamed blob's digest is known only once its last byte is: so it
//! goes in the `PATCH`, and the `PUT` names the digest.

use std::cell::RefCell;
use std::io::Read;

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

/// An upload under way: where its next bytes go.
pub struct BlobUpload<'a> {
    registry: &'a Registry,
    location: String,
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
    /// Send the blob `body` reads (`PATCH`, streamed as it is read); close
    /// it with [`finish`](Self::finish) once its digest is known.
    pub fn stream(&mut self, body: &RefCell<dyn Read + '_>) -> Result<(), RegistryError> {
        let response = self.registry.execute(Request {
            content_type: Some("application/octet-stream"),
            stream: Some(body),
            ..Request::new("PATCH", self.location.clone())
        })?;
        let Some(response) = response else {
            return Err(self.gone("PATCH"));
        };
        if let Some(next) = response.header("Location") {
            self.location = next.to_string();
        }
        Ok(())
    }

    /// Close the upload as blob `digest`, with `last` as its body (all of
    /// a monolithic upload; nothing after [`stream`](Self::stream)).
    pub fn finish(self, digest: &str, last: &[u8]) -> Result<(), RegistryError> {
        self.close(
            digest,
            Request {
                body: Some(last),
                ..Request::new("PUT", String::new())
            },
        )
    }

    /// Close a fresh upload with the whole blob, streamed from `path`
    /// (monolithic: one `PUT` with a `Content-Length`), as blob `digest`.
    pub fn finish_file(self, digest: &str, path: &std::path::Path) -> Result<(), RegistryError> {
        self.close(
            digest,
            Request {
                file: Some(path),
                ..Request::new("PUT", String::new())
            },
        )
    }

    /// `PUT <location>?digest=…` with the body of `put`: the registry
    /// checks the digest against everything it received.
    fn close(self, digest: &str, put: Request) -> Result<(), RegistryError> {
        let sep = if self.location.contains('?') {
            '&'
        } else {
            '?'
        };
        let response = self.registry.execute(Request {
            path: format!("{}{sep}digest={digest}", self.location),
            content_type: Some("application/octet-stream"),
            ..put
        })?;
        match response {
            Some(_) => Ok(()),
            None => Err(self.gone("PUT")),
        }
    }

    /// Whether a refused `PATCH` means the registry takes no streamed
    /// uploads (a method or a body of unknown length it does not allow or
    /// understand), so the blob must go up whole.
    pub fn refuses_streams(err: &RegistryError) -> bool {
        matches!(
            err,
            RegistryError::Http { method: "PATCH", status, .. }
                if matches!(status, 400 | 405 | 411 | 415 | 416 | 501)
        )
    }

    fn gone(&self, method: &'static str) -> RegistryError {
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
