//! build: evaluate DIR#ATTR to its derivation and out path first, and build
//! only when that out path is not in the store yet (nor published).

use std::path::{Path, PathBuf};

use super::preflight::Prepared;
use super::tags::Survey;
use super::{Check, Ctx, Done, Stage};
use crate::image::archive;
use crate::state::Outputs;
use crate::tool::nix::Evaluated;

/// The stage: the flake to build (the checkout, or a dry run's updated
/// copy), and the destination survey that tells whether the image is
/// already published.
pub struct Build<'a, 'b> {
    pub prepared: &'a Prepared,
    pub flake: &'a Path,
    pub survey: &'a mut Survey<'b>,
}

/// What the build produced: the image's derivation and out path (in a
/// dry run, the out path it would have).
pub struct Built {
    pub eval: Evaluated,
    /// The image as a file that can be read, once made (see
    /// [`Built::readable_archive`]).
    archive: Option<PathBuf>,
}

impl Built {
    pub fn new(eval: Evaluated) -> Built {
        Built {
            eval,
            archive: None,
        }
    }

    fn outputs(&self) -> Outputs {
        Outputs {
            drv_path: Some(self.eval.drv_path.to_string()),
            out_path: Some(self.eval.out_path.to_string()),
            ..Outputs::default()
        }
    }

    /// The built image as an archive that can be read in place: a tar or a
    /// gzip archive is the out path itself; a stream script is run into a
    /// file first (once per run).
    pub async fn readable_archive(&mut self, cx: &Ctx) -> miette::Result<PathBuf> {
        if let Some(archive) = &self.archive {
            return Ok(archive.clone());
        }
        let out = Path::new(self.eval.out_path.as_str());
        if archive::detect(out)? != archive::ArchiveKind::Script {
            return Ok(out.to_path_buf());
        }
        self.uncompressed_archive(cx).await
    }

    /// The image as an uncompressed docker-archive (a gzip archive is
    /// decompressed into the cache, a stream script run into it; once per
    /// run).
    pub async fn uncompressed_archive(&mut self, cx: &Ctx) -> miette::Result<PathBuf> {
        if let Some(archive) = &self.archive {
            return Ok(archive.clone());
        }
        let file = archive::prepare(
            &cx.runner,
            Path::new(self.eval.out_path.as_str()),
            &self.eval.out_path.hash_part(),
            &cx.cfg.cache_dir(),
        )
        .await?;
        self.archive = Some(file.clone());
        Ok(file)
    }
}

impl Stage for Build<'_, '_> {
    type Output = Built;
    /// The evaluation: the image to build.
    type Found = Evaluated;

    fn name(&self) -> &'static str {
        "build"
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Built, Evaluated>> {
        let nix = &self.prepared.nix;
        let eval = nix
            .eval(&cx.runner, self.flake, &cx.cfg.attr)
            .await
            .map_err(|e| {
                e.with_help(format!(
                    "nix could not evaluate {}#{}: fix the flake (try `nix eval {}#{}.drvPath`), or pass the right output with --attr",
                    cx.cfg.flake.display(),
                    cx.cfg.attr,
                    cx.cfg.flake.display(),
                    cx.cfg.attr
                ))
            })?;
        let valid = nix.is_valid(&cx.runner, &eval.out_path).await?;
        let out = eval.out_path.to_string();
        let published = match valid {
            true => None,
            false => self.survey.published(cx, &eval).await?,
        };
        if !valid && published.is_none() {
            return Ok(Check::Todo(format!("{out} is not in the store"), eval));
        }
        let built = Built::new(eval);
        let outputs = built.outputs();
        Ok(match published {
            None => {
                Check::Done(Done::new(format!("already in the store: {out}"), built).with(outputs))
            }
            Some(digest) => Check::Done(
                Done::new(
                    format!("not needed: {} already has {out} as {digest}", cx.cfg.image),
                    built,
                )
                .with(outputs),
            ),
        })
    }

    fn plan(&self, cx: &Ctx, _eval: &Evaluated) -> Vec<String> {
        vec![self
            .prepared
            .nix
            .build_cmd(&cx.cfg.flake, &cx.cfg.attr, Some(&cx.cfg.gc_root()))
            .display()]
    }

    async fn dry_run(&mut self, _cx: &mut Ctx, eval: Evaluated) -> miette::Result<Done<Built>> {
        Ok(Done::new(
            format!(
                "would build {} (from {}; not in the store yet)",
                eval.out_path, eval.drv_path
            ),
            Built::new(eval),
        ))
    }

    async fn run(&mut self, cx: &mut Ctx, mut eval: Evaluated) -> miette::Result<Done<Built>> {
        let gc_root = cx.cfg.gc_root();
        if let Some(dir) = gc_root.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let built = self
            .prepared
            .nix
            .build(&cx.runner, &cx.cfg.flake, &cx.cfg.attr, Some(&gc_root))
            .await
            .map_err(|e| {
                e.with_help(format!(
                    "the image did not build, so nothing was pushed or committed; the full log is in {}. Fix the build and run again",
                    cx.cfg.log_path().display()
                ))
            })?;
        if eval.out_path != built {
            cx.reporter().info(format!(
                "warning: nix built {built}, but evaluation gave {}; using the built path",
                eval.out_path
            ));
            eval.out_path = built.clone();
        }
        let built_image = Built::new(eval);
        let outputs = built_image.outputs();
        Ok(Done::new(format!("built {built}"), built_image).with(outputs))
    }
}
