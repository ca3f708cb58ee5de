//! Helpers of tests/prune.rs: running prune against a registry, reading
//! back the registry, state.json and OCI layouts.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    date_tag, kill, new_tempdir, run_checked, KillGroupOnDrop, Registry, Run, RunOutput, IMAGE_REPO,
};

use super::{content_tag, sha256, Image, Pusher};

pub const TIMEOUT: Duration = Duration::from_secs(300);

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Date tags `days` days before today (UTC).
pub fn days_ago(days: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    date_tag(now - days * 86_400)
}

/// runnerctl prune (or any command) with the registry's credentials.
pub fn runnerctl(registry: &Registry, state: &Path, args: &[&str]) -> RunOutput {
    runnerctl_via(&registry.host(), registry, state, args)
}

/// The same, through `host` (a proxy in front of the registry).
pub fn runnerctl_via(host: &str, registry: &Registry, state: &Path, args: &[&str]) -> RunOutput {
    let image = format!("docker://{host}/{IMAGE_REPO}");
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

pub fn tags(registry: &Registry) -> BTreeSet<String> {
    registry.tags(IMAGE_REPO).into_iter().collect()
}

pub fn state_json(dir: &Path) -> serde_json::Value {
    let text = fs::read_to_string(dir.join("state.json")).expect("state.json");
    serde_json::from_str(&text).expect("state.json parses")
}

/// `(digest, status)` of every delete recorded in state.json.
pub fn recorded_deletes(dir: &Path) -> Vec<(String, String)> {
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
pub fn delete_requests(registry: &Registry) -> Vec<String> {
    registry
        .log()
        .lines()
        .filter(|l| l.contains("\"DELETE /v2/"))
        .map(String::from)
        .collect()
}

pub fn skopeo_pull(registry: &Registry, tag: &str, all: bool) {
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
    run_checked(&mut cmd);
}

/// One image per date (oldest first), each under its date tag and a
/// content tag; latest and unstable on the newest. Returns (date, content
/// tag, digest) per image.
pub fn seed(pusher: &Pusher, dates: &[String]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (i, date) in dates.iter().enumerate() {
        let image = Image::new(&format!("seed-{date}"), "2026-01-01T00:00:00Z");
        let content = content_tag(date);
        let mut tags = vec![date.as_str(), content.as_str()];
        if i + 1 == dates.len() {
            tags.extend(["latest", "unstable"]);
        }
        pusher.push(&image, &tags);
        out.push((date.clone(), content, image.digest));
    }
    out
}

/// Spawn runnerctl prune with a hold inside its `nth` state save, wait for
/// the hold, kill -9 its process group.
pub fn prune_killed_at_save(registry: &Registry, state: &Path, nth: u32, args: &[&str]) {
    let image = format!("docker://{}/{IMAGE_REPO}", registry.host());
    let paused = state.with_extension("paused");
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend([
        "--image".into(),
        image,
        "--tls-verify".into(),
        "false".into(),
        "--state-dir".into(),
        state.display().to_string(),
    ]);
    let mut cmd = Run::new(all)
        .env("RUNNERCTL_REGISTRY_USER", registry.user())
        .env("RUNNERCTL_REGISTRY_PASSWORD", registry.password())
        .env(
            "RUNNERCTL_TEST_PAUSE_SAVE",
            format!("{nth}:{}", paused.display()),
        )
        .command();
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn runnerctl prune");
    let _guard = KillGroupOnDrop(child.id());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !paused.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("prune ended ({status}) before save {nth}");
        }
        assert!(Instant::now() < deadline, "prune did not reach save {nth}");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(&child.id().to_string(), true);
    let _ = child.wait();
}

/// Write `images` into an OCI layout at `dir`, each under its tags.
pub fn write_layout(dir: &Path, images: &[(&Image, Vec<String>)]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (image, tags) in images {
        for bytes in [&image.layer, &image.config, &image.manifest] {
            fs::write(blobs.join(&sha256(bytes)[7..]), bytes).unwrap();
        }
        for tag in tags {
            manifests.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": image.digest,
                "size": image.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }));
        }
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

pub fn layout_tags(dir: &Path) -> BTreeSet<String> {
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

pub fn blob_exists(dir: &Path, bytes: &[u8]) -> bool {
    dir.join("blobs/sha256").join(&sha256(bytes)[7..]).is_file()
}
