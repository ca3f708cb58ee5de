//! runnerctl's own upload (issue 15): many new layers compressed in
//! parallel and streamed to the real docker-registry, gzip and zstd, a
//! push killed with SIGKILL mid-upload and resumed, a 500 on one blob.
//! Every test reads back what the registry holds (digests, the layers'
//! diff_ids) and pulls the image with skopeo.

mod common;
mod fault_support;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fault_support::FaultProxy;
use runnerctl::auth::{Credentials, Secret};
use runnerctl::image::codec::{Codec, Compression, OCI_LAYER_GZIP, OCI_LAYER_ZSTD};
use runnerctl::image::layout::{ReuseMap, Scanned};
use runnerctl::image::registry::Registry as Client;
use runnerctl::image::upload::{self, Plan, Uploaded};
use sha2::{Digest, Sha256};

const REPO: &str = "infra/runners/upload";

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text-like bytes (compressible, as store paths are), different per seed.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "nix", "store", "glibc", "runner", "forgejo", "lib", "bin", "share", "\n", "so.6",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        out.extend_from_slice(format!("{:x} ", x % 4096).as_bytes());
    }
    out.truncate(len);
    out
}

/// A docker-archive of `sizes.len()` layers (one file each, `seed`-made
/// contents); returns its path and the layers' diff_ids.
fn make_archive(dir: &Path, seed: u64, sizes: &[usize]) -> (PathBuf, Vec<String>) {
    let mut layers = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let mut tar = tar::Builder::new(Vec::new());
        let data = payload(seed * 1000 + i as u64, size);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1);
        header.set_cksum();
        tar.append_data(&mut header, format!("nix/store/layer-{i}/data"), &data[..])
            .expect("layer tar");
        layers.push(tar.into_inner().expect("layer tar"));
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).expect("config");
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("{i}/layer.tar"))
        .collect();
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [], "Layers": names}]);
    let path = dir.join(format!("image-{seed}.tar"));
    let mut out = tar::Builder::new(fs::File::create(&path).expect("archive"));
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, name, bytes).expect("append");
    };
    add("config.json", &config);
    for (name, layer) in names.iter().zip(&layers) {
        add(name, layer);
    }
    add(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    out.finish().expect("finish archive");
    (path, diff_ids)
}

fn client(host: &str, registry: &Registry) -> Client {
    Client::new(
        host,
        REPO,
        &Credentials::UserPassword {
            user: registry.user().to_string(),
            password: Secret::new(registry.password().to_string()),
        },
        false,
        Duration::from_secs(120),
    )
    .expect("client")
}

fn push(
    client: &Client,
    archive: &Path,
    codec: Codec,
    journal: Option<&Path>,
    workers: usize,
) -> Result<Uploaded, upload::UploadError> {
    let scanned = Scanned::new(archive).expect("scan");
    let reuse = ReuseMap::new();
    let plan = Plan {
        scanned: &scanned,
        reuse: &reuse,
        codec,
        journal,
        workers,
        current: None,
    };
    upload::push(client, &plan, "latest", &|_, _| {})
}

/// GET a blob back from the registry.
fn blob(registry: &Registry, digest: &str) -> Vec<u8> {
    let r = registry
        .request("GET", &format!("/v2/{REPO}/blobs/{digest}"), &[], true)
        .expect("GET blob");
    assert_eq!(r.status, 200, "GET blob {digest}");
    r.body
}

/// The registry's manifest at `latest` is the one pushed; every layer blob
/// reads back with its digest and decompresses to its diff_id.
fn assert_read_back(registry: &Registry, pushed: &Uploaded, diff_ids: &[String], media: &str) {
    assert_eq!(
        registry.digest(REPO, "latest").as_deref(),
        Some(pushed.manifest_digest.as_str())
    );
    let manifest = registry.manifest(REPO, "latest").expect("manifest");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(layer["mediaType"], media);
        let digest = layer["digest"].as_str().expect("digest");
        let bytes = blob(registry, digest);
        assert_eq!(sha(&bytes), digest, "the blob's bytes hash to its digest");
        assert_eq!(layer["size"].as_u64(), Some(bytes.len() as u64));
        let plain = if media == OCI_LAYER_ZSTD {
            zstd::stream::decode_all(&bytes[..]).expect("zstd")
        } else {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .expect("gzip");
            out
        };
        assert_eq!(
            &sha(&plain),
            diff_id,
            "the layer decompresses to its diff_id"
        );
    }
}

/// `skopeo copy docker://…:latest docker-archive:…`: skopeo pulls every
/// blob, checks its digest, decompresses it; the archive's layers are the
/// diff_ids.
fn assert_skopeo_pulls(registry: &Registry, host: &str, dir: &Path, diff_ids: &[String]) {
    let authfile = dir.join("auth.json");
    registry.write_authfile(&authfile);
    let out = dir.join("pulled.tar");
    let _ = fs::remove_file(&out);
    run_checked(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg("--authfile")
            .arg(&authfile)
            .arg(format!("docker://{host}/{REPO}:latest"))
            .arg(format!("docker-archive:{}", out.display())),
    );
    let pulled = DockerArchive::read(&out);
    assert_eq!(pulled.layer_digests, diff_ids);
    assert_eq!(pulled.diff_ids(), diff_ids);
}

/// Blob uploads closed (`PUT …/blobs/uploads/…digest=…` answered 201) in
/// the registry's access log, as their digests.
fn blob_puts(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/"))
        .filter(|l| l.contains("\" 201 "))
        .filter_map(|l| {
            let start = l.find("digest=")? + "digest=".len();
            let digest: String = l[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '%' || *c == ':')
                .collect();
            Some(digest.replace("%3A", ":").replace("%3a", ":"))
        })
        .collect()
}

fn sizes(n: usize) -> Vec<usize> {
    // Mostly a few hundred kB, some small, and a few over a MiB (several
    // gzip members).
    (0..n)
        .map(|i| {
            if i % 8 == 5 {
                2_500_000 + i
            } else if i % 4 == 3 {
                20_000
            } else {
                300_000 + i * 7_919
            }
        })
        .collect()
}

#[test]
fn many_new_layers_go_up_in_parallel_and_skopeo_pulls_them() {
    let registry = Registry::new();
    let dir = new_tempdir("upload");
    let (archive, diff_ids) = make_archive(dir.path(), 1, &sizes(24));
    let host = registry.host();
    let c = client(&host, &registry);
    let pushed = push(&c, &archive, Codec::default(), None, 4).expect("push");
    assert_eq!((pushed.sent, pushed.reused, pushed.resumed), (24, 0, 0));
    assert!(pushed.config_sent);
    assert_read_back(&registry, &pushed, &diff_ids, OCI_LAYER_GZIP);
    // One upload session per layer plus the config; each layer streamed in
    // one PATCH, the config whole in its PUT.
    let log = registry.log();
    assert_eq!(registry.blob_upload_count(), 25, "{log}");
    let patches = log
        .lines()
        .filter(|l| l.contains("\"PATCH /v2/") && l.contains("\" 202 "))
        .count();
    assert_eq!(patches, 24, "{log}");
    assert_eq!(blob_puts(&log).len(), 25);
    // A layer of 2.5 MB is three gzip members: a reader of only the first
    // gets one MiB of it; skopeo (Go's gzip) below reads all of them.
    let manifest = registry.manifest(REPO, "latest").expect("manifest");
    let big = blob(
        &registry,
        manifest["layers"][5]["digest"].as_str().expect("digest"),
    );
    let mut first = Vec::new();
    flate2::read::GzDecoder::new(&big[..])
        .read_to_end(&mut first)
        .expect("first member");
    assert_eq!(first.len(), runnerctl::image::codec::MEMBER);
    assert_skopeo_pulls(&registry, &host, dir.path(), &diff_ids);

    // Pushed again: every blob is found by HEAD through the journal-less
    // reuse map of the image the registry now has.
    let manifest = registry.manifest(REPO, "latest").expect("manifest");
    let config = blob(
        &registry,
        manifest["config"]["digest"].as_str().expect("cfg"),
    );
    let mut reuse = ReuseMap::new();
    runnerctl::image::layout::learn(
        &mut reuse,
        &serde_json::to_vec(&manifest).expect("json"),
        &config,
    );
    let scanned = Scanned::new(&archive).expect("scan");
    let plan = Plan {
        scanned: &scanned,
        reuse: &reuse,
        codec: Codec::default(),
        journal: None,
        workers: 0,
        current: Some(&pushed.manifest_digest),
    };
    let puts = registry.manifest_put_count();
    let again = upload::push(&c, &plan, "latest", &|_, _| {}).expect("again");
    assert_eq!(
        (again.sent, again.reused, again.config_sent),
        (0, 24, false)
    );
    assert!(!again.manifest_put);
    assert_eq!(
        registry.manifest_put_count(),
        puts,
        "the tag was already there"
    );
    assert_eq!(again.manifest_digest, pushed.manifest_digest);
    assert_eq!(registry.blob_upload_count(), 25, "nothing sent again");
}

#[test]
fn a_zstd_image_is_pulled_by_skopeo_and_verified() {
    let registry = Registry::new();
    let dir = new_tempdir("upload-zstd");
    let (archive, diff_ids) = make_archive(dir.path(), 2, &sizes(8));
    let host = registry.host();
    let c = client(&host, &registry);
    let codec = Codec::new(Compression::Zstd, None).expect("zstd");
    let pushed = push(&c, &archive, codec, None, 0).expect("push");
    assert_eq!(pushed.sent, 8);
    assert_read_back(&registry, &pushed, &diff_ids, OCI_LAYER_ZSTD);
    // skopeo will not write zstd layers into a docker-archive (Docker's
    // manifest has no zstd type): it pulls into a directory, decompressing
    // every layer after checking its digest. The layers it writes are
    // the diff_ids, and each file's bytes hash to its name.
    let authfile = dir.path().join("auth.json");
    registry.write_authfile(&authfile);
    let out = dir.path().join("pulled");
    run_checked(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg("--dest-decompress")
            .arg("--authfile")
            .arg(&authfile)
            .arg(format!("docker://{host}/{REPO}:latest"))
            .arg(format!("dir:{}", out.display())),
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect();
    assert_eq!(layers, diff_ids);
    for diff_id in &diff_ids {
        let file = out.join(diff_id.trim_start_matches("sha256:"));
        assert_eq!(&sha(&fs::read(&file).expect("layer file")), diff_id);
    }
}

#[test]
fn a_500_on_one_blob_is_retried_once() {
    let registry = Registry::new();
    let proxy = FaultProxy::start(registry.port(), 0);
    let dir = new_tempdir("upload-500");
    let (archive, diff_ids) = make_archive(dir.path(), 3, &sizes(6));
    let c = client(&proxy.host(), &registry);
    proxy.fail_blob_puts(1);
    let pushed = push(&c, &archive, Codec::default(), None, 2).expect("push");
    assert_eq!(proxy.blob_injected(), 1);
    assert_eq!(pushed.retried, 1);
    assert_eq!(pushed.sent, 6);
    // Seven blobs (six layers, the config) reached the registry; the
    // failed layer opened a second upload session.
    assert_eq!(blob_puts(&registry.log()).len(), 7);
    assert_eq!(registry.blob_upload_count(), 8);
    assert_read_back(&registry, &pushed, &diff_ids, OCI_LAYER_GZIP);

    // Two 500s for one layer: no third try; the error says what failed.
    let (other, _) = make_archive(dir.path(), 4, &[5_000]);
    proxy.fail_blob_puts(2);
    let err = push(&c, &other, Codec::default(), None, 1).expect_err("fails");
    let text = format!("{err}");
    assert!(text.contains("HTTP 500"), "{text}");
    assert_eq!(proxy.blob_injected(), 3);
    let code = miette::Diagnostic::code(&err).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("runnerctl::registry::http"));
}

#[test]
fn a_registry_that_refuses_streamed_uploads_gets_whole_blobs() {
    let registry = Registry::new();
    let proxy = FaultProxy::start(registry.port(), 0);
    proxy.refuse_patches();
    let dir = new_tempdir("upload-whole");
    let (archive, diff_ids) = make_archive(dir.path(), 6, &sizes(6));
    let journal = dir.path().join("journal");
    let c = client(&proxy.host(), &registry);
    let pushed = push(&c, &archive, Codec::default(), Some(&journal), 1).expect("push");
    assert_eq!(pushed.sent, 6);
    // One stream was refused: that layer's session was dropped, and every
    // layer went up whole (one PUT with the blob) from then on.
    assert_eq!(proxy.patches(), 1, "{:#?}", proxy.requests());
    assert!(
        !registry.log().contains("\"PATCH /v2/"),
        "no stream got through"
    );
    assert_eq!(registry.blob_upload_count(), 6 + 1 + 1);
    assert_eq!(blob_puts(&registry.log()).len(), 7);
    assert_read_back(&registry, &pushed, &diff_ids, OCI_LAYER_GZIP);
    let left: Vec<_> = fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".runnerctl-blob-")
        })
        .collect();
    assert!(left.is_empty(), "spilled blobs left behind: {left:?}");
}

/// `examples/upload-child` (the kill -9 test's child process), brought up
/// to date first (a no-op after `cargo test --all-targets`; a lone
/// `cargo test --test upload` would otherwise find a stale one).
fn upload_child() -> PathBuf {
    let debug = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .expect("target dir");
    // The same features as this test build, so nothing is rebuilt.
    let mut args = vec!["build", "--locked", "--example", "upload-child"];
    if cfg!(feature = "modern-nix") {
        args.extend(["--features", "modern-nix"]);
    }
    let status = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", debug.parent().expect("target dir"))
        .status()
        .expect("cargo build --example upload-child");
    assert!(status.success(), "cargo build --example upload-child");
    debug.join("examples").join("upload-child")
}

#[test]
fn a_push_killed_mid_upload_resumes_with_the_missing_blobs() {
    let registry = Registry::new();
    let proxy = FaultProxy::start(registry.port(), 0);
    let dir = new_tempdir("upload-kill");
    let layers = 10;
    let (archive, diff_ids) = make_archive(dir.path(), 5, &vec![200_000; layers]);
    let journal = dir.path().join("journal");
    // Hold the fourth layer's PATCH (one worker, one PATCH per layer):
    // three layers are complete then, the fourth is under way.
    let hold = 4;
    proxy.hold_patch(hold);
    let mut child = Command::new(upload_child())
        .env(
            "UPLOAD_CHILD",
            format!(
                "{}\n{}\n{REPO}\n{}\n{}\n{}",
                archive.display(),
                proxy.host(),
                registry.user(),
                registry.password(),
                journal.display()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let started = Instant::now();
    while proxy.patches() < hold {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the child never got to layer {hold}"
        );
        assert!(child.try_wait().expect("wait").is_none(), "child ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
    child.wait().expect("reap");

    let first = blob_puts(&registry.log());
    let recorded = fs::read_to_string(&journal).expect("journal");
    let done = recorded.lines().count();
    assert_eq!(done, 3, "{recorded}");
    assert_eq!(first.len(), done, "every finished blob is in the journal");
    assert!(registry.digest(REPO, "latest").is_none(), "no manifest yet");

    // Resume (straight to the registry): HEAD for the journal's blobs, an
    // upload for every other one.
    let uploads_before = registry.blob_upload_count();
    let c = client(&registry.host(), &registry);
    let pushed = push(&c, &archive, Codec::default(), Some(&journal), 0).expect("resume");
    assert_eq!(pushed.resumed, done);
    assert_eq!(pushed.sent, layers - done);
    let log = registry.log();
    let second: Vec<String> = blob_puts(&log)[first.len()..].to_vec();
    for digest in &first {
        assert!(!second.contains(digest), "{digest} was uploaded again");
        assert!(
            log.contains(&format!("\"HEAD /v2/{REPO}/blobs/{digest} ")),
            "{digest} was asked for"
        );
    }
    assert_eq!(second.len(), layers - done + 1, "missing layers and config");
    assert_eq!(
        registry.blob_upload_count() - uploads_before,
        layers - done + 1
    );
    // After the push the journal lists exactly this image's layers.
    let kept = fs::read_to_string(&journal).expect("journal");
    assert_eq!(kept.lines().count(), layers, "{kept}");
    for diff_id in &diff_ids {
        assert!(kept.contains(diff_id.as_str()), "{kept}");
    }
    assert_read_back(&registry, &pushed, &diff_ids, OCI_LAYER_GZIP);
    let _ = std::io::stdout().flush();
}

/// Requests in the registry's access log.
fn requests_logged(registry: &Registry) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| l.contains("\" 20") || l.contains("\" 40"))
        .filter(|l| l.contains(" /v2/"))
        .count()
}

#[test]
fn connections_are_kept_between_requests_and_each_stream_gets_its_own() {
    let registry = Registry::new();
    let relay = Relay::start(registry.port());
    let dir = new_tempdir("upload-keepalive");
    let layers = 24;
    let (archive, diff_ids) = make_archive(dir.path(), 7, &sizes(layers));
    let c = client(&relay.host(), &registry);
    let workers = 4;
    let pushed = push(&c, &archive, Codec::default(), None, workers).expect("push");
    assert_eq!(pushed.sent, layers);
    assert_read_back(&registry, &pushed, &diff_ids, OCI_LAYER_GZIP);
    // Per layer a POST, a streamed PATCH and a closing PUT; then the
    // config and the manifest. Each stream opens a connection of its own;
    // the other requests share a few kept ones (about one per worker: an
    // answer whose body is not read, such as the ping's 401, costs one).
    let requests = requests_logged(&registry);
    assert!(requests >= 3 * layers + 2, "{requests} requests");
    let connections = relay.connections();
    assert!(
        (layers..=layers + 2 * workers + 2).contains(&connections),
        "{connections} connections for {requests} requests"
    );
}

#[test]
fn a_registry_that_goes_silent_on_a_kept_connection_times_out() {
    let registry = Registry::new();
    let relay = Relay::start(registry.port());
    let timeout = Duration::from_secs(2);
    let c = Client::new(
        &relay.host(),
        REPO,
        &Credentials::UserPassword {
            user: registry.user().to_string(),
            password: Secret::new(registry.password().to_string()),
        },
        false,
        timeout,
    )
    .expect("client");
    c.check_auth().expect("login");
    assert_eq!(c.blob_size(&sha(b"nothing")).expect("HEAD"), None);
    let kept = relay.connections();
    assert_eq!(c.blob_size(&sha(b"still nothing")).expect("HEAD"), None);
    assert_eq!(
        relay.connections(),
        kept,
        "the second HEAD reused a connection"
    );
    relay.stall();
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.manifest("latest").map(|_| ()));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the request on a kept connection never ended");
    let err = result.expect_err("a silent registry");
    let code = miette::Diagnostic::code(&err).map(|c| c.to_string());
    assert_eq!(
        code.as_deref(),
        Some("runnerctl::registry::timeout"),
        "{err}"
    );
    assert!(
        started.elapsed() < 2 * timeout + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}
