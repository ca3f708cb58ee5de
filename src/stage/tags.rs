//! The tags a run points at its image, and where they stand at the
//! destination: shared by build, verify and smoke (is the out path
//! published already?) and push (what to write).

use super::preflight::Prepared;
use super::target::Target;
use super::Ctx;
use crate::config::Config;
use crate::image::destination::TagState;
use crate::image::reference::Tag;
use crate::progress::Event;
use crate::rollback::{self, ROLLED_BACK};
use crate::tool::nix::Evaluated;

/// Where this run's tags point at the destination, asked once per run and
/// shared by the stages that ask whether the image is already published
/// (build, verify, smoke) and by push, until push changes it.
pub struct Survey<'a> {
    prepared: &'a Prepared,
    target: &'a Target,
    states: Option<Vec<TagState>>,
    /// Floating tags a rollback holds where they are.
    held_back: Vec<Tag>,
}

impl<'a> Survey<'a> {
    pub fn new(prepared: &'a Prepared, target: &'a Target) -> Survey<'a> {
        Survey {
            prepared,
            target,
            states: None,
            held_back: Vec::new(),
        }
    }

    /// The floating tags a rollback holds where they are (known once the
    /// tags were asked).
    pub fn held_back(&self) -> &[Tag] {
        &self.held_back
    }

    /// The content-addressed tag for the out path, if enabled.
    pub fn nix_tag(cfg: &Config, eval: &Evaluated) -> Option<Tag> {
        if !cfg.nix_tag {
            return None;
        }
        format!("nix-{}", eval.out_path.hash_part()).parse().ok()
    }

    /// Every tag to write, in the order they are written: the
    /// content-addressed `nix-` tag first, then the tags that name this
    /// date, the floating ones (`latest`, `unstable`) last. A push that
    /// fails midway then never leaves a floating tag alone on a new image.
    pub fn all_tags(&self, cfg: &Config, eval: &Evaluated) -> Vec<Tag> {
        let mut tags: Vec<Tag> = Self::nix_tag(cfg, eval).into_iter().collect();
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

    /// The tags this push points at the image: all of them but those a
    /// rollback holds.
    pub fn written_tags(&self, cfg: &Config, eval: &Evaluated) -> Vec<String> {
        self.all_tags(cfg, eval)
            .iter()
            .filter(|t| !self.held_back.contains(t))
            .map(|t| t.to_string())
            .collect()
    }

    /// Where every tag to write points now, asked once per run (kept until
    /// the push changes it: [`forget`](Self::forget)); the tags a rollback
    /// holds are left out.
    pub async fn states(&mut self, cx: &Ctx, eval: &Evaluated) -> miette::Result<Vec<TagState>> {
        if let Some(states) = &self.states {
            return Ok(states.clone());
        }
        let tags = self.all_tags(&cx.cfg, eval);
        let states = self
            .prepared
            .destination
            .tag_states(&cx.runner, &self.prepared.tools, &tags)
            .await?;
        let held = self.held(&cx.cfg, &states)?;
        if let Some(first) = held.first() {
            if self.held_back.is_empty() {
                let names: Vec<String> = held.iter().map(|s| s.tag.to_string()).collect();
                let digest = first.digest.as_deref().unwrap_or_default();
                cx.reporter()
                    .emit(Event::Warning(rollback::held_warning(&names, digest)));
            }
            self.held_back = held.iter().map(|s| s.tag.clone()).collect();
        }
        let states: Vec<TagState> = states
            .into_iter()
            .filter(|s| !self.held_back.contains(&s.tag))
            .collect();
        self.states = Some(states.clone());
        Ok(states)
    }

    /// The destination is about to change: ask again next time.
    pub fn forget(&mut self) {
        self.states = None;
    }

    /// The floating tags a rollback holds (see [`rollback::held`]); none
    /// with --hold, which moves no floating tag anyway.
    fn held(&self, cfg: &Config, states: &[TagState]) -> miette::Result<Vec<TagState>> {
        if cfg.hold {
            return Ok(Vec::new());
        }
        let marker = self
            .prepared
            .destination
            .manifest(ROLLED_BACK)?
            .map(|m| m.digest);
        let floating = states
            .iter()
            .filter(|s| self.target.tags.contains(&s.tag) && !self.target.dated(&s.tag));
        Ok(rollback::held(marker.as_deref(), floating, |s| {
            s.digest.as_deref()
        }))
    }

    /// The digest this out path was pushed as, per the state's record or
    /// its `nix-<hash>` tag in `states`, whether or not a tag still points
    /// there.
    pub fn known(&self, cx: &Ctx, eval: &Evaluated, states: &[TagState]) -> Option<String> {
        let record = cx.state.images.get(&eval.out_path.to_string());
        self.prepared.destination.known_digest(
            states,
            Self::nix_tag(&cx.cfg, eval).as_ref(),
            record,
        )
    }

    /// The digest the destination has this out path published as, if any:
    /// then nothing needs building, verifying or uploading, at most
    /// retagging.
    pub async fn published(
        &mut self,
        cx: &Ctx,
        eval: &Evaluated,
    ) -> miette::Result<Option<String>> {
        let states = self.states(cx, eval).await?;
        let record = cx.state.images.get(&eval.out_path.to_string());
        Ok(self.prepared.destination.published(
            &states,
            Self::nix_tag(&cx.cfg, eval).as_ref(),
            record,
        ))
    }
}
