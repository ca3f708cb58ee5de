//! What `runnerctl prune` and `runnerctl status --max-age` ask of a
//! registry: every tag (read in pages, following the `Link` header), the
//! digest a tag points to (HEAD) and a blob (an image config). Deleting a
//! manifest by digest is `Registry::delete_manifest`.
//!
//! Distribution API: `GET /v2/<name>/tags/list?n=<page>` answers one page
//! and, when there are more, a header `Link: </v2/<name>/tags/list?n=…&last=…>;
//! rel="next"`. `DELETE /v2/<name>/manifests/<digest>` answers 202; a
//! registry that does not allow deletes answers 405 (`UNSUPPORTED`).

use std::io::Read as _;

use super::{io_failure, Registry, RegistryError, Request};
use crate::digest::sha256_digest;

/// Tags asked for per page. Registries may answer fewer (and say so with
/// `Link`); distribution refuses more than 1000.
pub const TAG_PAGE: usize = 100;

/// At most this many pages are followed (a registry whose `Link` never
/// ends would otherwise keep runnerctl busy forever).
const MAX_PAGES: usize = 10_000;

/// Manifests, indexes and their docker equivalents.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Every tag of the repository, and how many pages it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagList {
    pub tags: Vec<String>,
    pub pages: usize,
}

#[derive(serde::Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The next page's path below `/v2/<repo>/` from a `Link` header:
/// `</v2/<repo>/tags/list?n=100&last=x>; rel="next"` → `tags/list?n=100&last=x`.
/// An absolute URL works too; None without a `rel="next"` link.
pub fn next_page(link: &str) -> Option<String> {
    for part in link.split(',') {
        let (target, params) = part.split_once(';').unwrap_or((part, ""));
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            continue;
        }
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        let at = target.find("/tags/list")?;
        return Some(target[at + 1..].to_string());
    }
    None
}

impl Registry {
    /// The body of `response`, at most `limit` bytes (`what`: its path,
    /// for the error).
    pub(super) fn read_body(
        &self,
        response: ureq::Response,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                self.failed(
                    &format!("{}/v2/{}/{what}", self.registry, self.repository),
                    io_failure(&e),
                    e.to_string(),
                )
            })?;
        Ok(bytes)
    }

    /// Every tag, page by page (`n=` and the `Link` header). A repository
    /// that does not exist yet has no tags.
    pub fn list_tags(&self) -> Result<TagList, RegistryError> {
        let mut tags = Vec::new();
        let mut pages = 0;
        let mut path = format!("tags/list?n={TAG_PAGE}");
        let mut seen = std::collections::HashSet::new();
        loop {
            if pages >= MAX_PAGES || !seen.insert(path.clone()) {
                return Err(RegistryError::Transport {
                    url: format!("{}/v2/{}/{path}", self.registry, self.repository),
                    reason: format!(
                        "the registry's tag list did not end after {pages} pages (its Link header repeats or never stops)"
                    ),
                });
            }
            let Some(response) = self.execute(Request {
                accept: Some("application/json"),
                ..Request::new("GET", path.clone())
            })?
            else {
                // 404: no such repository (yet).
                return Ok(TagList { tags, pages });
            };
            pages += 1;
            let next = response.header("Link").and_then(next_page);
            let body = self.read_body(response, 64 * 1024 * 1024, &path)?;
            let page: TagPage =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Transport {
                    url: format!("{}/v2/{}/{path}", self.registry, self.repository),
                    reason: format!("the tag list is not the JSON the API describes: {e}"),
                })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => path = next,
                None => break,
            }
        }
        tags.sort();
        tags.dedup();
        Ok(TagList { tags, pages })
    }

    /// The digest `reference` (a tag) points to, if it exists: a HEAD
    /// request's `Docker-Content-Digest`, or the digest of the manifest's
    /// bytes when the registry does not send that header.
    pub fn digest_of(&self, reference: &str) -> Result<Option<String>, RegistryError> {
        let Some(response) = self.execute(Request {
            accept: Some(MANIFEST_ACCEPT),
            ..Request::new("HEAD", format!("manifests/{reference}"))
        })?
        else {
            return Ok(None);
        };
        if let Some(digest) = response.header("Docker-Content-Digest") {
            return Ok(Some(digest.to_string()));
        }
        Ok(self
            .manifest(reference)?
            .map(|(bytes, _)| sha256_digest(&bytes)))
    }

    /// A blob's bytes (an image config), at most `limit` bytes; None if the
    /// registry does not have it.
    pub fn blob(&self, digest: &str, limit: u64) -> Result<Option<Vec<u8>>, RegistryError> {
        let path = format!("blobs/{digest}");
        let Some(response) = self.execute(Request::new("GET", path.clone()))? else {
            return Ok(None);
        };
        self.read_body(response, limit, &path).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_next_link() {
        assert_eq!(
            next_page(r#"</v2/infra/runners/nixos/tags/list?last=20260101&n=100>; rel="next""#)
                .as_deref(),
            Some("tags/list?last=20260101&n=100")
        );
        assert_eq!(
            next_page(r#"<https://r.example/v2/a/b/tags/list?n=50&last=x>; rel=next"#).as_deref(),
            Some("tags/list?n=50&last=x")
        );
        assert_eq!(
            next_page(r#"</v2/a/tags/list?n=1&last=a>; rel="prev", </v2/a/tags/list?n=1&last=c>; rel="next""#)
                .as_deref(),
            Some("tags/list?n=1&last=c")
        );
        assert_eq!(
            next_page(r#"</v2/a/tags/list?n=1&last=a>; rel="prev""#),
            None
        );
        assert_eq!(next_page(""), None);
    }
}
