//! verify: open the image archive and check it before anything leaves the
//! machine. The checks are data (see `VerifyConfig`).

use std::path::Path;

use super::{Check, Done, Stage};
use crate::image::{archive, verify};
use crate::pipeline::Ctx;

pub struct Verify;

impl Verify {
    async fn verify(cx: &mut Ctx) -> miette::Result<String> {
        // A tar or a gzip archive is read in place (gzip on the fly); only a
        // stream script has to be run into a file first.
        let archive = cx.readable_archive().await?;
        let cfg = cx.cfg.verify.clone();
        let summary = verify::verify(&archive, &cfg)?;
        Ok(summary.to_string())
    }
}

impl Stage for Verify {
    fn name(&self) -> &'static str {
        "verify"
    }

    fn fingerprint(&self, cx: &Ctx) -> Option<String> {
        cx.eval.as_ref().map(|e| e.out_path.to_string())
    }

    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check> {
        // An image already published was verified before it left; anything
        // else is verified, whatever an earlier record says.
        if let Some(digest) = super::tags::published(cx).await? {
            return Ok(Check::Done(Done::new(format!(
                "already verified and published as {digest}"
            ))));
        }
        Ok(Check::Todo("verify the image".into()))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        vec![format!(
            "(built in) check Cmd, Env, certificates, nix.conf and required paths: {}",
            cx.cfg.verify.required_paths.join(", ")
        )]
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        // Only when the image is already built: a dry run builds nothing.
        let built = match (&cx.nix, &cx.eval) {
            (Some(nix), Some(eval)) => nix.is_valid(&cx.runner, &eval.out_path).await?,
            _ => false,
        };
        let script = match &cx.eval {
            Some(eval) if built => {
                archive::detect(Path::new(eval.out_path.as_str()))? == archive::ArchiveKind::Script
            }
            _ => false,
        };
        if built && script {
            Ok("would run the stream script and verify its image".to_string())
        } else if built {
            Self::verify(cx)
                .await
                .map(|s| format!("verified the built image: {s}"))
        } else {
            Ok("would verify the image once it is built".to_string())
        }
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        Ok(Done::new(Self::verify(cx).await?))
    }
}
