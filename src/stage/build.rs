//! build: evaluate DIR#ATTR (or, with --system, DIR#packages.SYSTEM.ATTR
//! for each system) to its derivation and out path first, and build only
//! what is neither in the store nor published. Several systems are built
//! by one `nix build`, which runs them concurrently wherever Nix is
//! configured to (natively, on its `builders`, or emulated).

use std::path::{Path, PathBuf};

use super::preflight::Prepared;
use super::tags::Survey;
use super::{Check, Ctx, Done, Stage};
use crate::image::archive;
use crate::state::Outputs;
use crate::system::System;
use crate::tool::nix::Evaluated;

/// The stage: the flake to build (the checkout, or a dry run's updated
/// copy), and the destination survey that tells whether an image is
/// already published.
pub struct Build<'a, 'b> {
    pub prepared: &'a Prepared,
    pub flake: &'a Path,
    pub survey: &'a mut Survey<'b>,
}

/// One image the run publishes: for a system given with --system, or for
/// this machine (`system` None).
pub struct Image {
    pub system: Option<System>,
    pub eval: Evaluated,
    /// The image as a file that can be read, once made (see
    /// [`Image::readable_archive`]).
    archive: Option<PathBuf>,
}

/// What the build produced: each image's derivation and out path (in a
/// dry run, the out paths they would have).
pub struct Built {
    pub images: Vec<Image>,
}

/// An image evaluated by the check, and whether it still has to be built.
pub struct Evaluation {
    system: Option<System>,
    attr: String,
    eval: Evaluated,
    build: bool,
}

impl Evaluation {
    fn label(&self) -> String {
        label(self.system.as_ref())
    }
}

/// `SYSTEM: ` before a note about one of several images.
fn label(system: Option<&System>) -> String {
    system.map(|s| format!("{s}: ")).unwrap_or_default()
}

impl Image {
    pub fn new(system: Option<System>, eval: Evaluated) -> Image {
        Image {
            system,
            eval,
            archive: None,
        }
    }

    /// `SYSTEM: ` before a note about this image, when there are several.
    pub fn label(&self) -> String {
        label(self.system.as_ref())
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

impl Built {
    fn new(evaluations: Vec<Evaluation>) -> Built {
        Built {
            images: evaluations
                .into_iter()
                .map(|e| Image::new(e.system, e.eval))
                .collect(),
        }
    }

    /// What the stages after build depend on: the out paths.
    pub fn fingerprint(&self) -> String {
        let outs: Vec<String> = self
            .images
            .iter()
            .map(|i| i.eval.out_path.to_string())
            .collect();
        outs.join(" ")
    }

    /// Several systems, published under one index.
    pub fn multi(&self) -> bool {
        self.images.len() > 1
    }

    /// What the state records: the derivation and out path of a single
    /// image (several: the first's, as the state has one of each).
    fn outputs(&self) -> Outputs {
        let first = self.images.first().map(|i| &i.eval);
        Outputs {
            drv_path: first.map(|e| e.drv_path.to_string()),
            out_path: first.map(|e| e.out_path.to_string()),
            ..Outputs::default()
        }
    }
}

impl Build<'_, '_> {
    async fn evaluate(&mut self, cx: &Ctx) -> miette::Result<(Vec<Evaluation>, Vec<String>)> {
        let nix = &self.prepared.nix;
        let mut evaluations = Vec::new();
        let mut notes = Vec::new();
        for (index, (system, attr)) in cx.cfg.builds().into_iter().enumerate() {
            let eval = self.prepared.eval(cx, self.flake, index, &attr).await?;
            let label = label(system.as_ref());
            let out = eval.out_path.to_string();
            let build = if nix.is_valid(&cx.runner, &eval.out_path).await? {
                notes.push(format!("{label}already in the store: {out}"));
                false
            } else if let Some(digest) = self.survey.published(cx, &eval).await? {
                notes.push(format!(
                    "{label}not needed: {} already has {out} as {digest}",
                    cx.cfg.image
                ));
                false
            } else {
                true
            };
            evaluations.push(Evaluation {
                system,
                attr,
                eval,
                build,
            });
        }
        Ok((evaluations, notes))
    }

    fn unbuilt(evaluations: &[Evaluation]) -> Vec<String> {
        evaluations
            .iter()
            .filter(|e| e.build)
            .map(|e| e.attr.clone())
            .collect()
    }
}

impl Stage for Build<'_, '_> {
    type Output = Built;
    /// Every image, evaluated, some to build; and what is there already.
    type Found = (Vec<Evaluation>, Vec<String>);

    fn name(&self) -> &'static str {
        "build"
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Built, Self::Found>> {
        let (evaluations, notes) = self.evaluate(cx).await?;
        let todo: Vec<String> = evaluations
            .iter()
            .filter(|e| e.build)
            .map(|e| {
                let label = e.label();
                format!("{label}{} is not in the store", e.eval.out_path)
            })
            .collect();
        if !todo.is_empty() {
            return Ok(Check::Todo(todo.join("; "), (evaluations, notes)));
        }
        let built = Built::new(evaluations);
        let outputs = built.outputs();
        Ok(Check::Done(
            Done::new(notes.join("; "), built).with(outputs),
        ))
    }

    fn plan(&self, cx: &Ctx, (evaluations, _): &Self::Found) -> Vec<String> {
        vec![self
            .prepared
            .nix
            .build_all_cmd(
                &cx.cfg.flake,
                &Self::unbuilt(evaluations),
                Some(&cx.cfg.gc_root()),
            )
            .display()]
    }

    async fn dry_run(
        &mut self,
        _cx: &mut Ctx,
        (evaluations, there): Self::Found,
    ) -> miette::Result<Done<Built>> {
        let mut notes: Vec<String> = evaluations
            .iter()
            .filter(|e| e.build)
            .map(|e| {
                let label = e.label();
                format!(
                    "{label}would build {} (from {}; not in the store yet)",
                    e.eval.out_path, e.eval.drv_path
                )
            })
            .collect();
        notes.extend(there);
        Ok(Done::new(notes.join("; "), Built::new(evaluations)))
    }

    async fn run(
        &mut self,
        cx: &mut Ctx,
        (mut evaluations, there): Self::Found,
    ) -> miette::Result<Done<Built>> {
        let gc_root = cx.cfg.gc_root();
        if let Some(dir) = gc_root.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let attrs = Self::unbuilt(&evaluations);
        if evaluations.len() > 1 {
            // One line per system's image in the progress.
            let targets = evaluations
                .iter()
                .filter(|e| e.build)
                .map(|e| {
                    let label = e.system.as_ref().map(|s| s.to_string()).unwrap_or_default();
                    (e.eval.drv_path.to_string(), label)
                })
                .collect();
            cx.reporter()
                .emit(crate::progress::Event::BuildTargets(targets));
        }
        let results = self
            .prepared
            .nix
            .build_all(&cx.runner, &cx.cfg.flake, &attrs, Some(&gc_root))
            .await
            .map_err(|e| {
                e.with_help(format!(
                    "the image did not build, so nothing was pushed or committed; the full log is in {}. Fix the build and run again{}",
                    cx.cfg.log_path().display(),
                    if attrs.len() > 1 {
                        " (what did build stays in the store: the rerun builds only the rest)"
                    } else {
                        ""
                    }
                ))
            })?;
        let mut notes = Vec::new();
        for (drv, built) in results {
            let Some(e) = evaluations
                .iter_mut()
                .find(|e| e.build && e.eval.drv_path == drv)
            else {
                continue;
            };
            let label = e.label();
            if e.eval.out_path != built {
                cx.reporter().info(format!(
                    "warning: nix built {built}, but evaluation gave {}; using the built path",
                    e.eval.out_path
                ));
                e.eval.out_path = built.clone();
            }
            notes.push(format!("{label}built {built}"));
        }
        notes.extend(there);
        let built = Built::new(evaluations);
        let outputs = built.outputs();
        Ok(Done::new(notes.join("; "), built).with(outputs))
    }
}
