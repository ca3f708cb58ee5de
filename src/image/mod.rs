//! Container images: references and tags, docker-archives, verification.

pub mod archive;
pub mod codec;
pub mod destination;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod smoke;
pub mod upload;
pub mod verify;
