//! A push that `tests/upload.rs` starts and kills with SIGKILL midway (its
//! kill -9 test): pushes the docker-archive named in `UPLOAD_CHILD` with
//! runnerctl's own upload, one layer at a time.
//!
//! `UPLOAD_CHILD` holds, one per line: archive, registry host, repository,
//! user, password, journal. (The password comes through the environment, never
//! argv.)

use std::path::Path;
use std::time::Duration;

use runnerctl::auth::{Credentials, Secret};
use runnerctl::image::codec::Codec;
use runnerctl::image::layout::{ReuseMap, Scanned};
use runnerctl::image::registry::Registry;
use runnerctl::image::upload::{self, Plan};

fn main() -> Result<(), String> {
    let spec = std::env::var("UPLOAD_CHILD").map_err(|_| "UPLOAD_CHILD is not set".to_string())?;
    let f: Vec<&str> = spec.lines().collect();
    let [archive, host, repository, user, password, journal] = f[..] else {
        return Err("UPLOAD_CHILD: archive, host, repository, user, password, journal".into());
    };
    let client = Registry::new(
        host,
        repository,
        &Credentials::UserPassword {
            user: user.to_string(),
            password: Secret::new(password.to_string()),
        },
        false,
        Duration::from_secs(300),
    )
    .map_err(|e| e.to_string())?;
    let scanned = Scanned::new(Path::new(archive)).map_err(|e| e.to_string())?;
    let reuse = ReuseMap::new();
    let plan = Plan {
        scanned: &scanned,
        reuse: &reuse,
        codec: Codec::default(),
        journal: Some(Path::new(journal)),
        workers: 1,
        current: None,
    };
    upload::push(&client, &plan, "latest", &|_, _| {}).map_err(|e| e.to_string())?;
    Ok(())
}
