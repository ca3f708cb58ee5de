//! The tags a run points at its image, and where they stand at the
//! destination: shared by build and verify (is the out path published
//! already?) and push (what to write).

use crate::image::destination::TagState;
use crate::image::reference::Tag;
use crate::pipeline::Ctx;
use crate::progress::Event;
use crate::rollback::{self, ROLLED_BACK};

/// The content-addressed tag for the out path, if enabled.
pub fn nix_tag(cx: &Ctx) -> Option<Tag> {
    if !cx.cfg.nix_tag {
        return None;
    }
    let eval = cx.eval.as_ref()?;
    format!("nix-{}", eval.out_path.hash_part()).parse().ok()
}

/// Every tag to write, in the order they are written: the
/// content-addressed `nix-` tag first, then the tags that name this date,
/// the floating ones (`latest`, `unstable`) last. A push that fails midway
/// then never leaves a floating tag alone on a new image.
pub fn all_tags(cx: &Ctx) -> Vec<Tag> {
    let mut tags: Vec<Tag> = nix_tag(cx).into_iter().collect();
    if cx.cfg.hold {
        // Held: the floating tags wait for `runnerctl promote`.
        tags.push(cx.cfg.candidate_tag.clone());
        return tags;
    }
    let (fixed, floating): (Vec<Tag>, Vec<Tag>) =
        cx.tags.iter().cloned().partition(|t| dated(cx, t));
    tags.extend(fixed);
    tags.extend(floating);
    tags
}

/// A tag that names this run's date (`{date}` in a template): it never
/// moves to another image.
fn dated(cx: &Ctx, tag: &Tag) -> bool {
    cx.date
        .as_ref()
        .is_some_and(|d| tag.as_str().contains(d.as_str()))
}

/// The tags this push points at the image: all of them but those a
/// rollback holds.
pub fn written_tags(cx: &Ctx) -> Vec<String> {
    all_tags(cx)
        .iter()
        .filter(|t| !cx.held_back.contains(t))
        .map(|t| t.to_string())
        .collect()
}

/// Where every tag to write points now, asked once per run (cached in the
/// context until the push changes it); the tags a rollback holds are left
/// out.
pub async fn states(cx: &mut Ctx) -> miette::Result<Vec<TagState>> {
    if let Some(states) = &cx.tag_states {
        return Ok(states.clone());
    }
    let tags = all_tags(cx);
    let states = cx.destination()?.tag_states(&cx.runner, &tags).await?;
    let held = held_back(cx, &states)?;
    if let Some(first) = held.first() {
        if cx.held_back.is_empty() {
            let names: Vec<String> = held.iter().map(|s| s.tag.to_string()).collect();
            let digest = first.digest.as_deref().unwrap_or_default();
            cx.reporter()
                .emit(Event::Warning(rollback::held_warning(&names, digest)));
        }
        cx.held_back = held.iter().map(|s| s.tag.clone()).collect();
    }
    let states: Vec<TagState> = states
        .into_iter()
        .filter(|s| !cx.held_back.contains(&s.tag))
        .collect();
    cx.tag_states = Some(states.clone());
    Ok(states)
}

/// The floating tags a rollback holds (see [`rollback::held`]); none with
/// --hold, which moves no floating tag anyway.
fn held_back(cx: &Ctx, states: &[TagState]) -> miette::Result<Vec<TagState>> {
    if cx.cfg.hold {
        return Ok(Vec::new());
    }
    let marker = cx.destination()?.manifest(ROLLED_BACK)?.map(|m| m.digest);
    let floating = states
        .iter()
        .filter(|s| cx.tags.contains(&s.tag) && !dated(cx, &s.tag));
    Ok(rollback::held(marker.as_deref(), floating, |s| {
        s.digest.as_deref()
    }))
}

/// The digest this out path was pushed as, per the state's record or its
/// `nix-<hash>` tag in `states`, whether or not a tag still points there.
pub fn known(cx: &Ctx, states: &[TagState]) -> miette::Result<Option<String>> {
    let Some(eval) = &cx.eval else {
        return Ok(None);
    };
    let record = cx.state.images.get(&eval.out_path.to_string());
    Ok(cx
        .destination()?
        .known_digest(states, nix_tag(cx).as_ref(), record))
}

/// The digest the destination has this out path published as, if any:
/// then nothing needs building, verifying or uploading, at most retagging.
pub async fn published(cx: &mut Ctx) -> miette::Result<Option<String>> {
    let Some(eval) = &cx.eval else {
        return Ok(None);
    };
    let out = eval.out_path.to_string();
    let states = states(cx).await?;
    let record = cx.state.images.get(&out);
    Ok(cx
        .destination()?
        .published(&states, nix_tag(cx).as_ref(), record))
}
