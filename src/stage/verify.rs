//! verify: open the image archive and check it before anything leaves the
//! machine. The checks are data (see `VerifyConfig`).

use std::path::Path;

use super::build::Built;
use super::preflight::Prepared;
use super::tags::Survey;
use super::{Check, Ctx, Done, Stage};
use crate::image::{archive, verify};

/// The stage, on the built image.
pub struct Verify<'a, 'b> {
    pub prepared: &'a Prepared,
    pub built: &'a mut Built,
    pub survey: &'a mut Survey<'b>,
}

impl Verify<'_, '_> {
    async fn verify(&mut self, cx: &Ctx) -> miette::Result<String> {
        // A tar or a gzip archive is read in place (gzip on the fly); only a
        // stream script has to be run into a file first.
        let archive = self.built.readable_archive(cx).await?;
        let summary = verify::verify(&archive, &cx.cfg.verify)?;
        Ok(summary.to_string())
    }
}

impl Stage for Verify<'_, '_> {
    type Output = ();
    type Found = ();

    fn name(&self) -> &'static str {
        "verify"
    }

    fn fingerprint(&self, _cx: &Ctx) -> Option<String> {
        Some(self.built.eval.out_path.to_string())
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<(), ()>> {
        // An image already published was verified before it left; anything
        // else is verified, whatever an earlier record says.
        if let Some(digest) = self.survey.published(cx, &self.built.eval).await? {
            return Ok(Check::Done(Done::new(
                format!("already verified and published as {digest}"),
                (),
            )));
        }
        Ok(Check::Todo("verify the image".into(), ()))
    }

    fn plan(&self, cx: &Ctx, _: &()) -> Vec<String> {
        vec![format!(
            "(built in) check Cmd, Env, certificates, nix.conf and required paths: {}",
            cx.cfg.verify.required_paths.join(", ")
        )]
    }

    async fn dry_run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<()>> {
        // Only when the image is already built: a dry run builds nothing.
        let out = &self.built.eval.out_path;
        let built = self.prepared.nix.is_valid(&cx.runner, out).await?;
        let script =
            built && archive::detect(Path::new(out.as_str()))? == archive::ArchiveKind::Script;
        let note = if script {
            "would run the stream script and verify its image".to_string()
        } else if built {
            format!("verified the built image: {}", self.verify(cx).await?)
        } else {
            "would verify the image once it is built".to_string()
        };
        Ok(Done::new(note, ()))
    }

    async fn run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<()>> {
        Ok(Done::new(self.verify(cx).await?, ()))
    }
}
