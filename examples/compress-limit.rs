//! The compression limit of this machine for an image: every layer of a
//! docker-archive compressed on ONE core with runnerctl's codec, bytes in
//! and out and the time it took. bench/push.py prints, from this, the
//! CPU limit of a push: single-core time ÷ cores.
//!
//!     compress-limit ARCHIVE CODEC[:LEVEL]...   e.g. gzip:2 zstd:3 gzip:6
//!
//! Prints one JSON object per codec on its own line:
//! `{"codec":"gzip-2","layers":40,"in":…,"out":…,"seconds":…,"cpu_seconds":…}`
//! (wall and CPU time: on a loaded machine the CPU time is the codec's).

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Instant;

use runnerctl::image::codec::{Codec, Compression};
use runnerctl::image::layout::Scanned;

/// Counts what it is given and drops it.
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// CPU seconds this process used so far (user + system): under load the
/// wall clock of one thread says more about the neighbours than the codec.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn codec(spec: &str) -> Result<Codec, String> {
    let (name, level) = spec.split_once(':').unwrap_or((spec, ""));
    let compression = match name {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        other => return Err(format!("unknown codec {other}")),
    };
    let level = match level {
        "" => None,
        l => Some(l.parse::<u32>().map_err(|e| format!("level {l}: {e}"))?),
    };
    Codec::new(compression, level).map_err(|e| e.to_string())
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((archive, specs)) = args.split_first() else {
        return Err("usage: compress-limit ARCHIVE CODEC[:LEVEL]...".into());
    };
    let scanned = Scanned::new(std::path::Path::new(archive)).map_err(|e| e.to_string())?;
    let mut file = std::fs::File::open(archive).map_err(|e| e.to_string())?;
    for spec in specs {
        let codec = codec(spec)?;
        let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
        let started = Instant::now();
        let cpu = cpu_seconds();
        for i in 0..scanned.layer_count() {
            let Some((offset, size, _)) = scanned.layer(i) else {
                continue;
            };
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| e.to_string())?;
            let mut packed = codec
                .compress((&file).take(size))
                .map_err(|e| e.to_string())?;
            bytes_in += size;
            bytes_out += std::io::copy(&mut packed, &mut Count(0)).map_err(|e| e.to_string())?;
        }
        println!(
            "{{\"codec\":\"{}\",\"layers\":{},\"in\":{bytes_in},\"out\":{bytes_out},\"seconds\":{:.3},\"cpu_seconds\":{:.3}}}",
            codec.key(),
            scanned.layer_count(),
            started.elapsed().as_secs_f64(),
            cpu_seconds() - cpu
        );
    }
    Ok(())
}
