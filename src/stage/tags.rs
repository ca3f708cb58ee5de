//! The tags a run points at its images, and where they stand at the
//! destination: shared by build, verify and smoke (is an out path
//! published already?) and push (what to write).
//!
//! One system: every tag points at its image. Several (`--system`): each
//! image keeps its own `nix-<hash>` content tag, and the index over them
//! gets a content tag of its own, then the candidate tag or the date tags
//! and the floating tags.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::preflight::Prepared;
use super::target::Target;
use super::Ctx;
use crate::config::Config;
use crate::image::destination::TagState;
use crate::image::reference::{Tag, TagError};
use crate::progress::Event;
use crate::rollback::{self, ROLLED_BACK};
use crate::tool::nix::Evaluated;

/// Where this run's tags point at the destination, each asked once per
/// run and shared by the stages that ask whether an image is already
/// published (build, verify, smoke) and by push, until push changes it.
pub struct Survey<'a> {
    prepared: &'a Prepared,
    target: &'a Target,
    seen: HashMap<Tag, TagState>,
    /// Floating tags a rollback holds where they are.
    held_back: Vec<Tag>,
}

/// The content tag of an image: `nix-` and its out path's hash.
pub fn nix_tag(eval: &Evaluated) -> Result<Tag, TagError> {
    Tag::parse(&format!("nix-{}", eval.out_path.hash_part()))
}

/// The content tag of an index over images with these out paths: `nix-`
/// and 32 characters of a hash over them (sorted), in Nix's base-32
/// alphabet, so it reads as a content tag like an image's.
pub fn index_tag<'e>(evals: impl IntoIterator<Item = &'e Evaluated>) -> Result<Tag, TagError> {
    const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut outs: Vec<String> = evals.into_iter().map(|e| e.out_path.to_string()).collect();
    outs.sort();
    let hash: String = Sha256::digest(outs.join("\n").as_bytes())
        .iter()
        .map(|b| ALPHABET[usize::from(b % 32)] as char)
        .collect();
    Tag::parse(&format!("nix-{hash}"))
}

impl<'a> Survey<'a> {
    pub fn new(prepared: &'a Prepared, target: &'a Target) -> Survey<'a> {
        Survey {
            prepared,
            target,
            seen: HashMap::new(),
            held_back: Vec::new(),
        }
    }

    /// The floating tags a rollback holds where they are (known once the
    /// tags were asked).
    pub fn held_back(&self) -> &[Tag] {
        &self.held_back
    }

    /// The tags that name what the run publishes, in the order they are
    /// written: its content tag (if enabled) first, then the tags that name
    /// this date, the floating ones (`latest`, `unstable`) last; with
    /// --hold the candidate tag instead. A push that fails midway then
    /// never leaves a floating tag alone on a new image.
    pub fn publish_tags(&self, cfg: &Config, content: Option<Tag>) -> Vec<Tag> {
        let mut tags: Vec<Tag> = content.filter(|_| cfg.nix_tag).into_iter().collect();
        if cfg.hold {
            // Held: the floating tags wait for `runnerctl promote`.
            tags.push(cfg.candidate_tag.clone());
            return tags;
        }
        let (fixed, floating): (Vec<Tag>, Vec<Tag>) = self
            .target
            .tags
            .iter()
            .cloned()
            .partition(|t| self.target.dated(t));
        tags.extend(fixed);
        tags.extend(floating);
        tags
    }

    /// The tags that point at one image: all of them for a single image;
    /// only its content tag when it is one of several under an index.
    pub fn image_tags(&self, cfg: &Config, eval: &Evaluated) -> Vec<Tag> {
        let content = nix_tag(eval).ok();
        if cfg.multi_arch() {
            return content.into_iter().collect();
        }
        self.publish_tags(cfg, content)
    }

    /// Of `tags`, those written: all but those a rollback holds.
    pub fn written(&self, tags: &[Tag]) -> Vec<String> {
        tags.iter()
            .filter(|t| !self.held_back.contains(t))
            .map(|t| t.to_string())
            .collect()
    }

    /// Where each of `tags` points now, each asked once (until
    /// [`forget`](Self::forget)); the tags a rollback holds are left out.
    pub async fn states(&mut self, cx: &Ctx, tags: &[Tag]) -> miette::Result<Vec<TagState>> {
        let missing: Vec<Tag> = tags
            .iter()
            .filter(|t| !self.seen.contains_key(*t))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let found = self
                .prepared
                .destination
                .tag_states(&cx.runner, &self.prepared.tools, &missing)
                .await?;
            self.hold_floating(cx, &found)?;
            for state in found {
                self.seen.insert(state.tag.clone(), state);
            }
        }
        Ok(tags
            .iter()
            .filter(|t| !self.held_back.contains(t))
            .filter_map(|t| self.seen.get(t).cloned())
            .collect())
    }

    /// The destination is about to change: ask again next time.
    pub fn forget(&mut self) {
        self.seen.clear();
    }

    /// Note the floating tags among `states` that a rollback holds (see
    /// [`rollback::held`]), warning once; none with --hold, which moves no
    /// floating tag anyway.
    fn hold_floating(&mut self, cx: &Ctx, states: &[TagState]) -> miette::Result<()> {
        if cx.cfg.hold {
            return Ok(());
        }
        let mut floating = states
            .iter()
            .filter(|s| self.target.tags.contains(&s.tag) && !self.target.dated(&s.tag))
            .peekable();
        if floating.peek().is_none() {
            return Ok(());
        }
        let marker = self
            .prepared
            .destination
            .manifest(ROLLED_BACK)?
            .map(|m| m.digest);
        let held = rollback::held(marker.as_deref(), floating, |s| s.digest.as_deref());
        if let Some(first) = held.first() {
            if self.held_back.is_empty() {
                let names: Vec<String> = held.iter().map(|s| s.tag.to_string()).collect();
                let digest = first.digest.as_deref().unwrap_or_default();
                cx.reporter()
                    .emit(Event::Warning(rollback::held_warning(&names, digest)));
            }
            for s in held {
                if !self.held_back.contains(&s.tag) {
                    self.held_back.push(s.tag.clone());
                }
            }
        }
        Ok(())
    }

    /// The digest the image with this out path was pushed as, per the
    /// state's record or its content tag in `states`, whether or not a tag
    /// still points there.
    pub fn known(&self, cx: &Ctx, eval: &Evaluated, states: &[TagState]) -> Option<String> {
        let record = cx.state.images.get(&eval.out_path.to_string());
        let content = nix_tag(eval).ok().filter(|_| cx.cfg.nix_tag);
        self.prepared
            .destination
            .known_digest(states, content.as_ref(), record)
    }

    /// The digest the destination has this image published as, if any:
    /// then nothing needs building, verifying or uploading, at most
    /// retagging.
    pub async fn published(
        &mut self,
        cx: &Ctx,
        eval: &Evaluated,
    ) -> miette::Result<Option<String>> {
        let tags = self.image_tags(&cx.cfg, eval);
        let states = self.states(cx, &tags).await?;
        let record = cx.state.images.get(&eval.out_path.to_string());
        let content = nix_tag(eval).ok().filter(|_| cx.cfg.nix_tag);
        Ok(self
            .prepared
            .destination
            .published(&states, content.as_ref(), record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NixPath;

    fn eval(out: &str) -> Evaluated {
        Evaluated {
            drv_path: NixPath::parse("/nix/store/00000000000000000000000000000000-x.drv").unwrap(),
            out_path: NixPath::parse(out).unwrap(),
        }
    }

    #[test]
    fn an_index_tag_names_its_images_in_any_order() {
        let a = eval("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-image.tar");
        let b = eval("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-image.tar");
        let ab = index_tag([&a, &b]).unwrap();
        assert_eq!(ab, index_tag([&b, &a]).unwrap());
        assert_ne!(ab, index_tag([&a]).unwrap());
        assert!(ab.as_str().starts_with("nix-"));
        assert_eq!(ab.as_str().len(), 4 + 32);
        assert_eq!(
            nix_tag(&a).unwrap().as_str(),
            "nix-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        );
    }
}
