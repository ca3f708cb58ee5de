//! `runnerctl prune` against the real docker-registry (deletes enabled, and
//! one without) and real OCI layouts: what is deleted and what is kept is
//! read back from the registry (tags, digests, its access log), the layout
//! (index.json, blobs) and state.json. Issue 14.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{
    date_tag, kill, new_tempdir, KillGroupOnDrop, Registry, RegistryWorld, Run, RunOutput,
    IMAGE_REPO,
};
use sha2::Digest as _;

const TIMEOUT: Duration = Duration::from_secs(300);

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A content tag that looks like runnerctl's: `nix-` and 32 nix-base32
/// characters, from `seed`.
fn content_tag(seed: &str) -> String {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let hash = sha2::Sha256::digest(seed.as_bytes());
    let tail: String = hash
        .iter()
        .take(32)
        .map(|b| alphabet[(*b as usize) % 32] as char)
        .collect();
    format!("nix-{tail}")
}

/// A small image: a gzipped tar layer holding one file, a config with
/// `created` and labels.
struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
    digest: String,
}

impl Image {
    fn new(seed: &str, created: &str) -> Image {
        let mut tar = tar::Builder::new(Vec::new());
        let content = format!("image {seed}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, format!("etc/{seed}"), content.as_bytes())
            .expect("tar entry");
        let tar = tar.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let layer = gz.finish().expect("gzip");
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "Cmd": ["/bin/sh"],
                "Labels": {"org.opencontainers.image.created": created, "seed": seed}
            },
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        Image {
            digest: sha256(&manifest),
            config,
            layer,
            manifest,
        }
    }
}

/// Writes to the registry directly (blob uploads, manifest PUTs), to set
/// up repositories without building images.
struct Pusher {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl Pusher {
    fn new(registry: &Registry) -> Pusher {
        Pusher {
            base: format!("http://{}/v2/{IMAGE_REPO}", registry.host()),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    registry.user(),
                    registry.password()
                ))
            ),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    fn blob(&self, bytes: &[u8]) {
        let started = self
            .agent
            .post(&format!("{}/blobs/uploads/", self.base))
            .set("Authorization", &self.auth)
            .call()
            .unwrap_or_else(|e| panic!("POST blobs/uploads: {e}"));
        let location = started.header("Location").expect("upload Location");
        let url = if location.starts_with("http") {
            location.to_string()
        } else {
            format!("http://{}{location}", self.base.split('/').nth(2).unwrap())
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        self.agent
            .put(&format!("{url}{sep}digest={}", sha256(bytes)))
            .set("Authorization", &self.auth)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes)
            .unwrap_or_else(|e| panic!("PUT blob: {e}"));
    }

    fn manifest(&self, reference: &str, bytes: &[u8], media_type: &str) {
        self.agent
            .put(&format!("{}/manifests/{reference}", self.base))
            .set("Authorization", &self.auth)
            .set("Content-Type", media_type)
            .send_bytes(bytes)
            .unwrap_or_else(|e| panic!("PUT manifest {reference}: {e}"));
    }

    /// Push `image` under `tags`.
    fn push(&self, image: &Image, tags: &[&str]) {
        self.blob(&image.layer);
        self.blob(&image.config);
        for tag in tags {
            self.manifest(
                tag,
                &image.manifest,
                "application/vnd.oci.image.manifest.v1+json",
            );
        }
    }
}

/// Date tags `days` days before today (UTC).
fn days_ago(days: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    date_tag(now - days * 86_400)
}

/// runnerctl prune (or any command) with the registry's credentials.
fn runnerctl(registry: &Registry, state: &Path, args: &[&str]) -> RunOutput {
    let image = format!("docker://{}/{IMAGE_REPO}", registry.host());
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--image", &image, "--tls-verify", "false", "--state-dir"]);
    let state = state.display().to_string();
    all.push(&state);
    Run::new(all)
        .env("RUNNERCTL_REGISTRY_USER", registry.user())
        .env("RUNNERCTL_REGISTRY_PASSWORD", registry.password())
        .timeout(TIMEOUT)
        .run()
}

fn tags(registry: &Registry) -> BTreeSet<String> {
    registry.tags(IMAGE_REPO).into_iter().collect()
}

fn state_json(dir: &Path) -> serde_json::Value {
    let text = fs::read_to_string(dir.join("state.json")).expect("state.json");
    serde_json::from_str(&text).expect("state.json parses")
}

/// `(digest, status)` of every delete recorded in state.json.
fn recorded_deletes(dir: &Path) -> Vec<(String, String)> {
    state_json(dir)["prune"]["deletes"]
        .as_array()
        .expect("prune.deletes")
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Access-log lines of DELETE requests, and their status.
fn delete_requests(registry: &Registry) -> Vec<String> {
    registry
        .log()
        .lines()
        .filter(|l| l.contains("\"DELETE /v2/"))
        .map(String::from)
        .collect()
}

fn skopeo_pull(registry: &Registry, tag: &str, all: bool) {
    let dir = new_tempdir("pull");
    let mut cmd = std::process::Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
    ])
    .arg(format!(
        "--src-creds={}:{}",
        registry.user(),
        registry.password()
    ));
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{}", registry.image_ref(IMAGE_REPO, tag)))
        .arg(format!("oci:{}:{tag}", dir.path().join("oci").display()));
    common::run_checked(&mut cmd);
}

// ---------------------------------------------------------------------------

/// Five bumps with distinct dates; a dry run that changes nothing; `prune
/// --keep 2`; a rollback to the oldest date left, which `prune --keep 1`
/// then keeps because latest points to it.
#[test]
fn five_bumps_then_prune_keeps_floating_tags_and_the_newest_two_dates() {
    let mut w = RegistryWorld::new();
    let mut dates = Vec::new();
    for day in 1..=5 {
        w.upstream_commit(day);
        let out = w.run(&["bump", "--no-git-push", "--json"]);
        out.assert_success();
        dates.push(out.json()["date"].as_str().expect("date").to_string());
    }
    let before = tags(&w.registry);
    let content_of = |w: &RegistryWorld, date: &str| -> String {
        let digest = w
            .registry
            .digest(IMAGE_REPO, date)
            .expect("date tag digest");
        before
            .iter()
            .find(|t| {
                t.starts_with("nix-")
                    && w.registry.digest(IMAGE_REPO, t).as_deref() == Some(&digest)
            })
            .unwrap_or_else(|| panic!("no content tag for {date}: {before:?}"))
            .clone()
    };
    let contents: Vec<String> = dates.iter().map(|d| content_of(&w, d)).collect();
    assert_eq!(
        before.len(),
        12,
        "5 dates, 5 content tags, latest, unstable: {before:?}"
    );
    let state = w.repo.path().join(".runnerctl");
    let old_digests: Vec<String> = dates[..3]
        .iter()
        .map(|d| w.registry.digest(IMAGE_REPO, d).unwrap())
        .collect();

    // Dry run: the whole plan, with reasons; nothing changes.
    let state_before = fs::read(state.join("state.json")).expect("state.json");
    let dry = w.run(&["prune", "-C", ".", "--keep", "2", "--dry-run", "--json"]);
    dry.assert_success();
    let plan = dry.json();
    assert_eq!(plan["outcome"], "dry-run", "{dry}");
    let planned: Vec<&str> = plan["deletes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    assert_eq!(planned, old_digests, "oldest first\n{dry}");
    for (d, (date, content)) in plan["deletes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(dates.iter().zip(&contents))
    {
        assert_eq!(d["tags"], serde_json::json!([date, content]), "{dry}");
        assert_eq!(d["reason"], "date tag beyond the newest 2");
    }
    assert_eq!(plan["keeps"].as_array().unwrap().len(), 6, "{dry}");
    assert_eq!(tags(&w.registry), before, "a dry run deletes nothing");
    assert!(delete_requests(&w.registry).is_empty());
    assert_eq!(
        fs::read(state.join("state.json")).unwrap(),
        state_before,
        "a dry run records nothing"
    );
    let human = w.run(&["prune", "-C", ".", "--keep", "2", "--dry-run"]);
    human.assert_success();
    for tag in dates.iter().chain(&contents).chain([&"latest".to_string()]) {
        assert!(
            human.stdout.contains(tag.as_str()),
            "{tag} is listed:\n{human}"
        );
    }
    assert!(human.stdout.contains("garbage collection"), "{human}");

    let out = w.run(&["prune", "-C", ".", "--keep", "2", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["deleted"], 3, "{out}");
    let expected: BTreeSet<String> = [
        "latest",
        "unstable",
        &dates[3],
        &dates[4],
        &contents[3],
        &contents[4],
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(tags(&w.registry), expected);
    for tag in &expected {
        skopeo_pull(&w.registry, tag, false);
    }
    for digest in &old_digests {
        assert!(
            w.registry.digest(IMAGE_REPO, digest).is_none(),
            "{digest} is gone"
        );
    }
    let deletes = delete_requests(&w.registry);
    assert_eq!(deletes.len(), 3, "{deletes:#?}");
    for (line, digest) in deletes.iter().zip(&old_digests) {
        assert!(
            line.contains(&format!("/manifests/{digest}")) && line.contains("\" 202 "),
            "{line}"
        );
    }
    let recorded = recorded_deletes(&state);
    assert_eq!(
        recorded,
        old_digests
            .iter()
            .map(|d| (d.clone(), "deleted".to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(state_json(&state)["prune"]["outcome"], "success");
    let status = Run::new(["status"]).in_repo(&w.repo).run();
    status.assert_success();
    assert!(status.stdout.contains("Last prune of"), "{status}");

    // Roll back to the oldest date left; prune --keep 1 keeps it.
    let rolled = w.run(&["rollback", "-C", ".", &dates[3]]);
    rolled.assert_success();
    let target = w.registry.digest(IMAGE_REPO, &dates[3]).unwrap();
    let out = w.run(&["prune", "-C", ".", "--keep", "1", "--json"]);
    out.assert_success();
    let report = out.json();
    assert_eq!(report["deleted"], 0, "{out}");
    let kept = report["keeps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tag"] == dates[3].as_str())
        .unwrap_or_else(|| panic!("{} is kept: {out}", dates[3]));
    assert!(
        kept["reason"].as_str().unwrap().contains("kept tag"),
        "{kept}"
    );
    assert_eq!(
        w.registry.digest(IMAGE_REPO, "latest"),
        Some(target.clone())
    );
    assert_eq!(w.registry.digest(IMAGE_REPO, &dates[3]), Some(target));
    assert_eq!(delete_requests(&w.registry).len(), 3, "no further DELETE");
}
