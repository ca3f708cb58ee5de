//! verify: open each image archive and check it before anything leaves the
//! machine. The checks are data (see `VerifyConfig`); with --system, an
//! image must also declare its system's platform.

use std::path::Path;

use super::build::{Built, Image};
use super::preflight::Prepared;
use super::tags::Survey;
use super::{Check, Ctx, Done, Stage};
use crate::image::archive;
use crate::image::verify::{self, VerifyError};

/// The stage, on the built images.
pub struct Verify<'a, 'b> {
    pub prepared: &'a Prepared,
    pub built: &'a mut Built,
    pub survey: &'a mut Survey<'b>,
}

/// Verify one image: its archive read in place (gzip on the fly; only a
/// stream script is run into a file first). With several images, each
/// problem names the system.
async fn verify_image(cx: &Ctx, image: &mut Image) -> miette::Result<String> {
    let archive = image.readable_archive(cx).await?;
    let label = image.label();
    match verify::verify(&archive, &cx.cfg.verify, image.system.as_ref()) {
        Ok(summary) => Ok(format!("{label}{summary}")),
        Err(VerifyError::Failed { problems }) if !label.is_empty() => Err(VerifyError::Failed {
            problems: problems
                .into_iter()
                .map(|p| format!("{label}{p}"))
                .collect(),
        }
        .into()),
        Err(err) => Err(err.into()),
    }
}

impl Stage for Verify<'_, '_> {
    type Output = ();
    /// The images to verify (by position): those not published yet.
    type Found = Vec<usize>;

    fn name(&self) -> &'static str {
        "verify"
    }

    fn fingerprint(&self, _cx: &Ctx) -> Option<String> {
        Some(self.built.fingerprint())
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<(), Vec<usize>>> {
        // An image already published was verified before it left; anything
        // else is verified, whatever an earlier record says.
        let mut todo = Vec::new();
        let mut notes = Vec::new();
        for (i, image) in self.built.images.iter().enumerate() {
            match self.survey.published(cx, &image.eval).await? {
                Some(digest) => notes.push(format!(
                    "{}already verified and published as {digest}",
                    image.label()
                )),
                None => todo.push(i),
            }
        }
        if todo.is_empty() {
            return Ok(Check::Done(Done::new(notes.join("; "), ())));
        }
        Ok(Check::Todo("verify the image".into(), todo))
    }

    fn plan(&self, cx: &Ctx, _: &Vec<usize>) -> Vec<String> {
        vec![format!(
            "(built in) check Cmd, Env, certificates, nix.conf and required paths: {}",
            cx.cfg.verify.required_paths.join(", ")
        )]
    }

    async fn dry_run(&mut self, cx: &mut Ctx, todo: Vec<usize>) -> miette::Result<Done<()>> {
        // Only what is already built: a dry run builds nothing.
        let mut notes = Vec::new();
        for i in todo {
            let Some(image) = self.built.images.get_mut(i) else {
                continue;
            };
            let out = image.eval.out_path.clone();
            let built = self.prepared.nix.is_valid(&cx.runner, &out).await?;
            let script =
                built && archive::detect(Path::new(out.as_str()))? == archive::ArchiveKind::Script;
            let label = image.label();
            notes.push(if script {
                format!("{label}would run the stream script and verify its image")
            } else if built {
                format!(
                    "verified the built image: {}",
                    verify_image(cx, image).await?
                )
            } else {
                format!("{label}would verify the image once it is built")
            });
        }
        Ok(Done::new(notes.join("; "), ()))
    }

    async fn run(&mut self, cx: &mut Ctx, todo: Vec<usize>) -> miette::Result<Done<()>> {
        let mut notes = Vec::new();
        for i in todo {
            if let Some(image) = self.built.images.get_mut(i) {
                notes.push(verify_image(cx, image).await?);
            }
        }
        Ok(Done::new(notes.join("; "), ()))
    }
}
