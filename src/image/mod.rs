//! Container images: references and tags, docker-archives, verification.

pub mod archive;
pub mod reference;
pub mod verify;
