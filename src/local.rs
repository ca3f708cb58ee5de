//! What the commands that run without a flake pipeline (rollback, prune)
//! share: where their state is, and the destination they act on.

use std::path::{Path, PathBuf};

use crate::auth::Credentials;
use crate::cli::LocalArgs;
use crate::image::destination::{self, Access, Connected};
use crate::image::reference::{ImageRef, ImageRefError};

impl LocalArgs {
    /// Where the state is: --state-dir, else the checkout's `.runnerctl`
    /// with -C, else `$XDG_STATE_HOME/runnerctl` (`~/.local/state`); None
    /// when neither variable is set.
    pub fn state_dir(&self) -> Option<PathBuf> {
        let absolute = |dir: &PathBuf| {
            std::env::current_dir()
                .map(|cwd| cwd.join(dir))
                .unwrap_or_else(|_| dir.clone())
        };
        if let Some(dir) = &self.state_dir {
            return Some(absolute(dir));
        }
        if let Some(flake) = &self.flake {
            return Some(absolute(flake).join(".runnerctl"));
        }
        let xdg = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".local/state"));
        xdg.or(home).map(|dir| dir.join("runnerctl"))
    }

    /// The destination: --image, else the OCI layout in the state dir.
    pub fn image(&self, state_dir: &Path) -> Result<ImageRef, ImageRefError> {
        match &self.destination.image {
            Some(text) => text.parse(),
            None => Ok(ImageRef::Oci {
                dir: state_dir.join("oci"),
            }),
        }
    }

    /// Open `image` with the login from the environment, checked with one
    /// request before anything changes.
    pub fn connect(&self, image: &ImageRef) -> miette::Result<Connected> {
        let credentials = Credentials::from_env()?;
        destination::connect(
            image,
            &Access {
                credentials: &credentials,
                tls_verify: self.destination.tls_verify,
                timeout: std::time::Duration::from_secs(self.destination.registry_timeout),
            },
        )
    }
}
