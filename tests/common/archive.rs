//! Reading docker-archives for assertions, and seeding a registry with skopeo.

use super::*;

/// The parts of a docker-archive (plain or gzip) that tests assert on.
#[derive(Debug, Clone)]
pub struct DockerArchive {
    /// manifest.json
    pub manifest: serde_json::Value,
    /// The config JSON the manifest names.
    pub config: serde_json::Value,
    /// Layer paths, in manifest order.
    pub layers: Vec<String>,
    /// sha256 of each layer file, in manifest order ("sha256:…").
    pub layer_digests: Vec<String>,
    /// Files (not directories) in the merged root filesystem.
    pub files: BTreeSet<String>,
    /// Contents of every regular file in the merged root filesystem.
    pub contents: BTreeMap<String, Vec<u8>>,
}

impl DockerArchive {
    /// Reads `path`; gzip is detected by its magic bytes.
    pub fn read(path: &Path) -> Self {
        let bytes = read_file(path);
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: &[u8], what: &str) -> Self {
        use sha2::Digest as _;
        let plain = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap_or_else(|e| panic!("{what}: bad gzip: {e}"));
            out
        } else {
            bytes.to_vec()
        };
        let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut archive = tar::Archive::new(plain.as_slice());
        for entry in archive
            .entries()
            .unwrap_or_else(|e| panic!("{what}: not a tar: {e}"))
        {
            let mut entry = entry.unwrap_or_else(|e| panic!("{what}: bad tar entry: {e}"));
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .unwrap_or_else(|e| panic!("{what}: bad entry path: {e}"))
                .display()
                .to_string();
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .unwrap_or_else(|e| panic!("{what}: reading {name}: {e}"));
            entries.insert(name, data);
        }
        let get = |name: &str| {
            entries
                .get(name)
                .unwrap_or_else(|| panic!("{what} has no {name}"))
        };
        let manifest: serde_json::Value = serde_json::from_slice(get("manifest.json"))
            .unwrap_or_else(|e| panic!("{what}: manifest.json is not JSON: {e}"));
        let config_name = manifest[0]["Config"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: manifest.json has no Config"));
        let config: serde_json::Value = serde_json::from_slice(get(config_name))
            .unwrap_or_else(|e| panic!("{what}: {config_name} is not JSON: {e}"));
        let layers: Vec<String> = manifest[0]["Layers"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: manifest.json has no Layers"))
            .iter()
            .map(|l| {
                l.as_str()
                    .unwrap_or_else(|| panic!("{what}: non-string layer"))
                    .to_string()
            })
            .collect();
        let mut layer_digests = Vec::new();
        let mut contents = BTreeMap::new();
        for layer in &layers {
            let data = get(layer);
            layer_digests.push(format!("sha256:{:x}", sha2::Sha256::digest(data)));
            let mut tar = tar::Archive::new(data.as_slice());
            for entry in tar
                .entries()
                .unwrap_or_else(|e| panic!("{what}: layer {layer} is not a tar: {e}"))
            {
                let mut entry =
                    entry.unwrap_or_else(|e| panic!("{what}: bad entry in {layer}: {e}"));
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name = entry
                    .path()
                    .unwrap_or_else(|e| panic!("{what}: bad path in {layer}: {e}"))
                    .display()
                    .to_string();
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .unwrap_or_else(|e| panic!("{what}: reading {name} in {layer}: {e}"));
                contents.insert(name.trim_start_matches("./").to_string(), buf);
            }
        }
        DockerArchive {
            manifest,
            config,
            layers,
            layer_digests,
            files: contents.keys().cloned().collect(),
            contents,
        }
    }

    /// `rootfs.diff_ids` from the config.
    pub fn diff_ids(&self) -> Vec<String> {
        config_diff_ids(&self.config)
    }

    /// A file of the merged root filesystem as text.
    pub fn file_text(&self, path: &str) -> Option<String> {
        self.contents
            .get(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

// ---------------------------------------------------------------------------
// skopeo (test code only: runnerctl must never put credentials in argv)
// ---------------------------------------------------------------------------

/// `skopeo copy docker-archive:ARCHIVE docker://HOST/REPO:TAG` with
/// `--dest-creds`, for seeding a registry from test code. Returns skopeo's
/// stdout. Note: skopeo 1.9.3 only reads *uncompressed* docker-archives from
/// a regular file (see [`DockerArchive`] for gzip).
pub fn skopeo_push(registry: &Registry, archive: &Path, repo: &str, tag: &str) -> String {
    run_checked(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!(
                "--dest-creds={}:{}",
                registry.user(),
                registry.password()
            ))
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{}", registry.image_ref(repo, tag))),
    )
}

/// A commit time that, with high probability, no other test (in this or an
/// earlier run of the suite) uses: the fixture image's out path is then new
/// to the shared Nix store, so `nix build` really runs and a skipped build is
/// a real skip.
pub fn fresh_time() -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    // splitmix64
    let mut z = nanos
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(u64::from(std::process::id()) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    T0 + (z % 2000) as i64 * DAY + ((z / 2000) % 86_400) as i64
}

/// `rootfs.diff_ids` of an image config (empty when it has none).
pub fn config_diff_ids(config: &serde_json::Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
