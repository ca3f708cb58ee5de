//! build: evaluate DIR#ATTR to its derivation and out path first, and build
//! only when that out path is not in the store yet.

use super::{Check, Done, Stage};
use crate::pipeline::Ctx;
use crate::state::Outputs;

pub struct Build;

impl Build {
    fn outputs(cx: &Ctx) -> Outputs {
        Outputs {
            drv_path: cx.eval.as_ref().map(|e| e.drv_path.to_string()),
            out_path: cx.eval.as_ref().map(|e| e.out_path.to_string()),
            ..Outputs::default()
        }
    }
}

impl Stage for Build {
    fn name(&self) -> &'static str {
        "build"
    }

    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check> {
        let nix = cx.nix()?.clone();
        let flake = cx.eval_flake();
        let eval = nix
            .eval(&cx.runner, &flake, &cx.cfg.attr)
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
        cx.eval = Some(eval);
        if valid {
            Ok(Check::Done(
                Done::new(format!("already in the store: {out}")).with(Self::outputs(cx)),
            ))
        } else if let Some(digest) = super::tags::published(cx).await? {
            Ok(Check::Done(
                Done::new(format!(
                    "not needed: {} already has {out} as {digest}",
                    cx.cfg.image
                ))
                .with(Self::outputs(cx)),
            ))
        } else {
            Ok(Check::Todo(format!("{out} is not in the store")))
        }
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        match &cx.nix {
            Some(nix) => vec![nix
                .build_cmd(&cx.cfg.flake, &cx.cfg.attr, Some(&cx.cfg.gc_root()))
                .display()],
            None => Vec::new(),
        }
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        Ok(match &cx.eval {
            Some(eval) => format!(
                "would build {} (from {}; not in the store yet)",
                eval.out_path, eval.drv_path
            ),
            None => "would build".to_string(),
        })
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let nix = cx.nix()?.clone();
        let gc_root = cx.cfg.gc_root();
        if let Some(dir) = gc_root.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let built = nix
            .build(&cx.runner, &cx.cfg.flake, &cx.cfg.attr, Some(&gc_root))
            .await
            .map_err(|e| {
                e.with_help(format!(
                    "the image did not build, so nothing was pushed or committed; the full log is in {}. Fix the build and run again",
                    cx.cfg.log_path().display()
                ))
            })?;
        if let Some(eval) = &cx.eval {
            if eval.out_path != built {
                cx.reporter().info(format!(
                    "warning: nix built {built}, but evaluation gave {}; using the built path",
                    eval.out_path
                ));
                cx.eval = Some(crate::tool::nix::Evaluated {
                    drv_path: eval.drv_path.clone(),
                    out_path: built.clone(),
                });
            }
        }
        Ok(Done::new(format!("built {built}")).with(Self::outputs(cx)))
    }
}
