//! How new layers are compressed: gzip (the default: every engine pulls
//! it) or zstd, at a level.
//!
//! gzip is written by libdeflate as a series of gzip members, one per
//! [`MEMBER`] bytes of input (see [`Members`]). The default level is chosen
//! so the layers come out no bigger than 1.05 × what `skopeo copy` writes
//! for the same layers (Go's gzip at its default level) while compressing
//! as fast as that allows; see [`DEFAULT_GZIP_LEVEL`].

use std::io::Read;

use miette::Diagnostic;
use thiserror::Error;

pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// libdeflate level 2, measured on the bench's 302.5 MB / 40-layer image
/// (bench/genimage.py, seed 1; one core, CPU time) against `skopeo copy`
/// (skopeo 1.9.3, 143.3 MB of layers): level 1 150.6 MB (1.051 ×, over the
/// 1.05 × bound) in 1.18 CPU-s, level 2 140.3 MB (0.979 ×) in 1.72 CPU-s,
/// level 3 137.9 MB in 1.97 CPU-s, level 6 134.4 MB in 3.45 CPU-s. Level 2
/// is the fastest level within the bound. (zlib-rs, before: level 2
/// 148.0 MB in 2.16 CPU-s.)
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
            Compression::Gzip => ("gzip", 1, 12, DEFAULT_GZIP_LEVEL),
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

    /// What `input` reads as once compressed: a reader that pulls from
    /// `input` as it is read.
    pub fn compress<R: Read>(&self, input: R) -> std::io::Result<Compressing<R>> {
        Ok(match self.compression {
            Compression::Gzip => Compressing::Gzip(Members::new(input, self.level)?),
            Compression::Zstd => {
                let level = i32::try_from(self.level).unwrap_or(3);
                Compressing::Zstd(zstd::stream::read::Encoder::new(input, level)?)
            }
        })
    }
}

/// A layer's bytes, compressed as they are read.
pub enum Compressing<R: Read> {
    Gzip(Members<R>),
    Zstd(zstd::stream::read::Encoder<'static, std::io::BufReader<R>>),
}

impl<R: Read> Read for Compressing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Compressing::Gzip(m) => m.read(buf),
            Compressing::Zstd(z) => z.read(buf),
        }
    }
}

/// Input bytes per gzip member: 1 MiB costs 0.09 % more bytes than one
/// member per layer on the bench image, and bounds a reader's memory to
/// this much input plus its compressed bound.
pub const MEMBER: usize = 1024 * 1024;

/// gzip as a series of members (RFC 1952 §2.2), each [`MEMBER`] bytes of
/// input compressed whole by libdeflate, which is faster than a streaming
/// deflate at the same ratio (it sees the whole block at once).
///
/// Every engine reads such a layer: Go's gzip reader (Docker, containerd,
/// podman, CRI-O, skopeo) reads all members by default, as do pigz, zcat
/// and Python's gzip; eStargz layers are made of one member per file. A
/// reader that stops after the first member (Rust's `GzDecoder`, unlike
/// `MultiGzDecoder`) gets only the first MiB.
pub struct Members<R: Read> {
    input: R,
    compressor: libdeflater::Compressor,
    /// The input of the next member (always [`MEMBER`] bytes long).
    block: Vec<u8>,
    /// The last member, and how much of it was read.
    output: Vec<u8>,
    len: usize,
    pos: usize,
    members: usize,
    /// The input ended.
    done: bool,
}

impl<R: Read> Members<R> {
    fn new(input: R, level: u32) -> std::io::Result<Self> {
        let level = libdeflater::CompressionLvl::new(level as i32)
            .map_err(|_| std::io::Error::other(format!("gzip level {level}")))?;
        let mut compressor = libdeflater::Compressor::new(level);
        let bound = compressor.gzip_compress_bound(MEMBER);
        Ok(Members {
            input,
            compressor,
            block: vec![0; MEMBER],
            output: vec![0; bound],
            len: 0,
            pos: 0,
            members: 0,
            done: false,
        })
    }

    /// Read the next member's input and compress it. An empty input is
    /// still one (empty) member: a gzip stream.
    fn next_member(&mut self) -> std::io::Result<()> {
        let mut filled = 0;
        while filled < MEMBER {
            match self.input.read(&mut self.block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled < MEMBER {
            self.done = true;
        }
        self.pos = 0;
        self.len = 0;
        if filled == 0 && self.members > 0 {
            return Ok(());
        }
        self.len = self
            .compressor
            .gzip_compress(&self.block[..filled], &mut self.output)
            .map_err(|e| std::io::Error::other(format!("gzip: {e:?}")))?;
        self.members += 1;
        Ok(())
    }
}

impl<R: Read> Read for Members<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.len {
            if self.done {
                return Ok(0);
            }
            self.next_member()?;
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.output[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `data` compressed, read in odd-sized pieces that straddle the
    /// member boundaries, from an input that gives odd-sized pieces too.
    fn pack(codec: Codec, data: &[u8]) -> Vec<u8> {
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(333_333);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut reader = codec.compress(Dribble(data)).expect("codec");
        let mut out = Vec::new();
        let mut piece = vec![0; 77_777];
        loop {
            let n = reader.read(&mut piece).expect("read");
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&piece[..n]);
        }
    }

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
        assert!(Codec::new(Compression::Gzip, Some(13)).is_err());
        assert!(Codec::new(Compression::Zstd, Some(0)).is_err());
        let err = Codec::new(Compression::Zstd, Some(22)).expect_err("too high");
        assert!(err.to_string().contains("1–19"), "{err}");
        assert_eq!(
            Codec::new(Compression::Gzip, Some(12)).expect("12").level,
            12
        );
    }

    #[test]
    fn gzip_is_one_member_per_mib_of_input() {
        let data: Vec<u8> = (0..(2 * MEMBER + 1) as u32)
            .map(|i| (i % 7) as u8)
            .collect();
        let packed = pack(Codec::default(), &data);
        let members = packed.windows(3).filter(|w| w == &[0x1f, 0x8b, 8]).count();
        assert!(members >= 3, "{members} gzip headers");
        let mut first = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut first)
            .expect("first member");
        assert_eq!(first.len(), MEMBER);
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&packed[..])
            .read_to_end(&mut all)
            .expect("all members");
        assert_eq!(all, data);
        // Nothing in, one empty layer out: no member at all is not gzip.
        let packed = pack(Codec::default(), &[]);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&packed[..])
            .read_to_end(&mut back)
            .expect("an empty gzip");
        assert!(back.is_empty() && !packed.is_empty());
    }

    #[test]
    fn both_codecs_round_trip() {
        // Several gzip members, the last one partial.
        let data: Vec<u8> = (0..(3 * MEMBER + 12_345) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let codec = Codec::new(compression, None).expect("codec");
            let packed = pack(codec, &data);
            assert!(packed.len() < data.len() / 10, "{codec:?}");
            let mut back = Vec::new();
            match compression {
                Compression::Gzip => {
                    flate2::read::MultiGzDecoder::new(&packed[..])
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
