//! How new layers are compressed: gzip (the default: every engine pulls
//! it) or zstd, at a level.
//!
//! The default gzip level is chosen so the layers come out no bigger than
//! 1.05 × what `skopeo copy` writes for the same layers (Go's gzip at its
//! default level) while compressing as fast as that allows; see
//! [`DEFAULT_GZIP_LEVEL`].

use std::io::Write;

use miette::Diagnostic;
use thiserror::Error;

pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// zlib-rs level 2, measured on the bench's 300 MB / 40-layer image
/// (bench/genimage.py, seed 1) against `skopeo copy` (skopeo 1.9.3):
/// skopeo's layers 143.3 MB; level 1: 166.8 MB (1.165 ×, over the 1.05 ×
/// bound), level 2: 148.0 MB (1.033 ×) at 2.3 CPU-s, level 3: 144.4 MB
/// (1.008 ×) at 3.0 CPU-s, level 6: 136.6 MB at 6.0 CPU-s. Level 2 is the
/// fastest level within the bound.
pub const DEFAULT_GZIP_LEVEL: u32 = 2;
/// zstd's own default, as skopeo's zstd writer uses.
pub const DEFAULT_ZSTD_LEVEL: u32 = 3;

/// The compression algorithm for new layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    /// gzip: every engine pulls it.
    #[default]
    Gzip,
    /// zstd: smaller and faster; pulled by Docker ≥ 23, containerd ≥ 1.5, podman.
    Zstd,
}

/// An algorithm and a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub compression: Compression,
    pub level: u32,
}

#[derive(Debug, Error, Diagnostic)]
#[error("--compression-level {level} is out of range for {name} ({min}–{max})")]
#[diagnostic(
    code(runnerctl::config::compression_level),
    help(
        "pick a level in {min}–{max}, or leave --compression-level out for the default ({default})"
    )
)]
pub struct LevelError {
    pub level: u32,
    pub name: &'static str,
    pub min: u32,
    pub max: u32,
    pub default: u32,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            compression: Compression::Gzip,
            level: DEFAULT_GZIP_LEVEL,
        }
    }
}

impl Codec {
    /// `compression` at `level` (None: its default), checked.
    pub fn new(compression: Compression, level: Option<u32>) -> Result<Codec, LevelError> {
        let (name, min, max, default) = match compression {
            Compression::Gzip => ("gzip", 1, 9, DEFAULT_GZIP_LEVEL),
            Compression::Zstd => ("zstd", 1, 19, DEFAULT_ZSTD_LEVEL),
        };
        let level = level.unwrap_or(default);
        if !(min..=max).contains(&level) {
            return Err(LevelError {
                level,
                name,
                min,
                max,
                default,
            });
        }
        Ok(Codec { compression, level })
    }

    /// The layer media type, as oci-spec names it.
    pub fn oci_media_type(&self) -> oci_spec::image::MediaType {
        match self.compression {
            Compression::Gzip => oci_spec::image::MediaType::ImageLayerGzip,
            Compression::Zstd => oci_spec::image::MediaType::ImageLayerZstd,
        }
    }

    pub fn media_type(&self) -> &'static str {
        match self.compression {
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }

    /// A name for what this codec writes, e.g. `gzip-2`: the same layer
    /// through the same codec gives the same bytes.
    pub fn key(&self) -> String {
        let name = match self.compression {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        };
        format!("{name}-{}", self.level)
    }

    /// A streaming encoder writing into `out`.
    pub fn encoder<W: Write>(&self, out: W) -> std::io::Result<Encoder<W>> {
        Ok(match self.compression {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(self.level),
            )),
            Compression::Zstd => {
                let level = i32::try_from(self.level).unwrap_or(3);
                Encoder::Zstd(zstd::stream::write::Encoder::new(out, level)?)
            }
        })
    }
}

/// A streaming encoder; [`finish`](Encoder::finish) writes the trailer.
pub enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn levels_are_checked_and_defaulted() {
        assert_eq!(
            Codec::new(Compression::Gzip, None).expect("default").level,
            DEFAULT_GZIP_LEVEL
        );
        assert_eq!(
            Codec::new(Compression::Zstd, None).expect("default").level,
            DEFAULT_ZSTD_LEVEL
        );
        assert!(Codec::new(Compression::Gzip, Some(10)).is_err());
        assert!(Codec::new(Compression::Zstd, Some(0)).is_err());
        let err = Codec::new(Compression::Zstd, Some(22)).expect_err("too high");
        assert!(err.to_string().contains("1–19"), "{err}");
    }

    #[test]
    fn both_codecs_round_trip() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let codec = Codec::new(compression, None).expect("codec");
            let mut enc = codec.encoder(Vec::new()).expect("encoder");
            enc.write_all(&data).expect("write");
            let packed = enc.finish().expect("finish");
            assert!(packed.len() < data.len() / 10, "{codec:?}");
            let mut back = Vec::new();
            match compression {
                Compression::Gzip => {
                    flate2::read::GzDecoder::new(&packed[..])
                        .read_to_end(&mut back)
                        .expect("gunzip");
                }
                Compression::Zstd => {
                    back = zstd::stream::decode_all(&packed[..]).expect("unzstd");
                }
            }
            assert_eq!(back, data);
        }
    }
}
