//! `runnerctl prune` against the real docker-registry (deletes enabled, and
//! one without): what is deleted and what is kept is read back from the
//! registry (tags, digests, its access log) and state.json. Issue 14; OCI
//! layouts and bad input are in tests/prune_oci.rs.

mod common;
mod prune_support;

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use common::{new_tempdir, KillGroupOnDrop, Registry, Run, World, IMAGE_REPO};
use prune_support::*;

// ---------------------------------------------------------------------------

/// Five bumps with distinct dates; a dry run that changes nothing; `prune
/// --keep 2`; a rollback to the oldest date left, which `prune --keep 1`
/// then keeps because latest points to it.
#[test]
fn five_bumps_then_prune_keeps_floating_tags_and_the_newest_two_dates() {
    let mut w = World::new();
    let mut dates = Vec::new();
    for day in 1..=5 {
        w.upstream_commit(day);
        let out = w.run(&["bump", "--no-git-push", "--json"]);
        out.assert_success();
        dates.push(out.json()["date"].as_str().expect("date").to_string());
    }
    let before = tags(&w.registry);
    let content_of = |w: &World, date: &str| -> String {
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

// ---------------------------------------------------------------------------
// Repositories set up without builds: small images pushed directly.

#[test]
fn a_registry_without_delete_support_fails_clearly_and_deletes_nothing() {
    let mut registry = Registry::new();
    registry.stop();
    let config = registry
        .log_path()
        .parent()
        .expect("registry dir")
        .join("config.yml");
    let text = fs::read_to_string(&config).expect("registry config");
    let off = text.replace(
        "  delete:\n    enabled: true\n",
        "  delete:\n    enabled: false\n",
    );
    assert_ne!(off, text, "the config enables deletes: {text}");
    fs::write(&config, off).expect("write registry config");
    registry.start();

    let pusher = Pusher::new(&registry);
    let dates: Vec<String> = [30, 20, 10].iter().map(|d| days_ago(*d)).collect();
    seed(&pusher, &dates);
    let before = tags(&registry);
    let state = new_tempdir("prune-state");

    let out = runnerctl(&registry, state.path(), &["prune", "--keep", "1", "--json"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("runnerctl::prune::delete_unsupported")
            && out.stderr.contains("HTTP 405")
            && out.stderr.contains("enabled: true")
            && out.stderr.contains("Forgejo"),
        "{out}"
    );
    let report = out.json();
    assert_eq!(report["outcome"], "failure");
    assert!(
        report["error"]["help"]
            .as_str()
            .unwrap()
            .contains("cleanup rules"),
        "{out}"
    );
    assert_eq!(tags(&registry), before, "nothing deleted");
    let deletes = delete_requests(&registry);
    assert_eq!(
        deletes.len(),
        1,
        "it stops at the first refusal: {deletes:#?}"
    );
    assert!(deletes[0].contains("\" 405 "), "{}", deletes[0]);
    let recorded = recorded_deletes(state.path());
    assert_eq!(recorded[0].1, "failed");
    assert!(
        recorded[1..].iter().all(|(_, s)| s == "planned"),
        "{recorded:?}"
    );
    assert_eq!(state_json(state.path())["prune"]["outcome"], "failure");
    assert!(!out.stderr.contains(registry.password()) && !out.stdout.contains(registry.password()));
}

#[test]
fn tags_are_listed_page_by_page_from_a_registry_with_1200_tags() {
    let registry = Registry::new();
    let pusher = Pusher::new(&registry);
    let builds = Image::new("builds", "2026-01-01T00:00:00Z");
    pusher.blob(&builds.layer);
    pusher.blob(&builds.config);
    for i in 0..1200 {
        pusher.manifest(
            &format!("build-{i:04}"),
            &builds.manifest,
            "application/vnd.oci.image.manifest.v1+json",
        );
    }
    let dates: Vec<String> = [30, 20, 10].iter().map(|d| days_ago(*d)).collect();
    let seeded = seed(&pusher, &dates);
    assert_eq!(tags(&registry).len(), 1208);
    let state = new_tempdir("prune-state");

    // docker-registry 2.8 answers every tag at once; the proxy pages
    // tags/list as distribution 3 and Forgejo do.
    let lists_in_log = || {
        registry
            .log()
            .lines()
            .filter(|l| l.contains(&format!("\"GET /v2/{IMAGE_REPO}/tags/list ")))
            .count()
    };
    let lists_before = lists_in_log();
    let proxy = prune_support::PagingProxy::start(registry.port());
    let out = runnerctl_via(
        &proxy.host(),
        &registry,
        state.path(),
        &["prune", "--keep", "1", "--json"],
    );
    out.assert_success();
    assert_eq!(
        lists_in_log() - lists_before,
        13,
        "each page was read from the real registry"
    );
    let report = out.json();
    assert_eq!(report["tags_listed"], 1208, "{}", out.stderr);
    assert_eq!(report["pages"], 13, "100 tags a page");
    assert_eq!(report["deleted"], 2);
    let left = tags(&registry);
    assert_eq!(
        left.len(),
        1204,
        "1200 builds, the newest date and content tag, latest, unstable"
    );
    for (date, content, _) in &seeded[..2] {
        assert!(
            !left.contains(date) && !left.contains(content),
            "{date} {content}"
        );
    }
    assert!(left.contains("build-0000") && left.contains("build-1199"));
    // The proxy's log: the first page asked with n=100, then the 12 pages
    // the Link headers named (`last=`), the last one without a Link.
    let pages = proxy.log();
    assert_eq!(pages.len(), 13, "{pages:#?}");
    assert!(
        pages[0].starts_with(&format!(
            "GET /v2/{IMAGE_REPO}/tags/list?n=100 -> 200, 100 tags, Link: "
        )),
        "{pages:#?}"
    );
    for (i, line) in pages.iter().enumerate().skip(1) {
        let asked = pages[i - 1]
            .split("Link: <")
            .nth(1)
            .and_then(|l| l.split('>').next())
            .unwrap();
        assert!(
            line.starts_with(&format!("GET {asked} -> 200")),
            "page {i} follows the Link before it: {pages:#?}"
        );
    }
    assert!(pages[12].ends_with("-> 200, 8 tags"), "{pages:#?}");
    // Human output is bounded.
    let dry = runnerctl(
        &registry,
        state.path(),
        &["prune", "--keep", "1", "--dry-run"],
    );
    dry.assert_success();
    assert!(
        dry.stdout.contains("… and 1004 more (see --json)"),
        "{}",
        &dry.stdout[..dry.stdout.len().min(2000)]
    );
    assert!(
        dry.stdout.lines().count() < 450,
        "{} lines",
        dry.stdout.lines().count()
    );
}

#[test]
fn kill_9_during_prune_then_rerun_leaves_what_an_uninterrupted_prune_leaves() {
    let dates: Vec<String> = [50, 40, 30, 20, 10].iter().map(|d| days_ago(*d)).collect();
    let newer = days_ago(5);

    // The reference: an uninterrupted prune, then a bump's new date.
    let reference = Registry::new();
    let reference_pusher = Pusher::new(&reference);
    seed(&reference_pusher, &dates);
    let state_ref = new_tempdir("prune-state");
    runnerctl(&reference, state_ref.path(), &["prune", "--keep", "2"]).assert_success();
    seed(&reference_pusher, std::slice::from_ref(&newer));

    let registry = Registry::new();
    let pusher = Pusher::new(&registry);
    let seeded = seed(&pusher, &dates);
    let dir = new_tempdir("prune-state");
    let state = dir.path().join("state");
    // Saves: 1 the plan, 2 before the first DELETE, 3 after it: killed
    // there, the first DELETE was sent and state.json still says sending.
    prune_killed_at_save(&registry, &state, 3, &["prune", "--keep", "2"]);
    assert_eq!(delete_requests(&registry).len(), 1);
    let recorded = recorded_deletes(&state);
    let statuses: Vec<&str> = recorded.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(statuses, ["sending", "planned", "planned"]);
    assert!(state_json(&state)["prune"]["outcome"].is_null());

    // A bump lands in between: a fresh plan would now also delete the
    // then-third-newest date. The rerun only finishes the killed plan.
    seed(&pusher, std::slice::from_ref(&newer));
    // A dry run shows what the rerun will do.
    let dry = runnerctl(
        &registry,
        &state,
        &["prune", "--keep", "2", "--json", "--dry-run"],
    );
    dry.assert_success();
    let planned: Vec<String> = dry.json()["deletes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(planned, [seeded[1].2.clone(), seeded[2].2.clone()], "{dry}");
    let out = runnerctl(&registry, &state, &["prune", "--keep", "2", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["deleted"], 2, "{out}");
    assert_eq!(tags(&registry), tags(&reference), "{out}");
    let left_for_later = out.json()["keeps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tag"] == dates[3].as_str())
        .cloned()
        .expect("the fourth date is kept");
    assert!(
        left_for_later["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{left_for_later}"
    );
    let recorded = recorded_deletes(&state);
    let expect: Vec<(String, String)> = seeded[..3]
        .iter()
        .zip(["gone", "deleted", "deleted"])
        .map(|((_, _, d), s)| (d.clone(), s.to_string()))
        .collect();
    assert_eq!(recorded, expect);
    assert_eq!(state_json(&state)["prune"]["outcome"], "success");

    // The next prune applies the rules afresh.
    let out = runnerctl(&registry, &state, &["prune", "--keep", "2", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["deleted"], 1, "{out}");
    assert!(!tags(&registry).contains(&dates[3]));
}

#[test]
fn a_kept_index_protects_the_manifests_it_references() {
    let registry = Registry::new();
    let pusher = Pusher::new(&registry);
    let amd64 = Image::new("amd64", "2026-01-01T00:00:00Z");
    let arm64 = Image::new("arm64", "2026-01-01T00:00:00Z");
    let old = Image::new("old", "2026-01-01T00:00:00Z");
    pusher.push(&amd64, &[&amd64.digest]);
    pusher.push(&arm64, &[&arm64.digest]);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64.digest, "size": amd64.manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm64.digest, "size": arm64.manifest.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    })
    .to_string();
    let index_digest = sha256(index.as_bytes());
    let today = days_ago(0);
    for tag in ["latest", "unstable", today.as_str()] {
        pusher.manifest(
            tag,
            index.as_bytes(),
            "application/vnd.oci.image.index.v1+json",
        );
    }
    // An older date tag on the amd64 manifest alone, and one on an old image.
    let (on_amd64, on_old) = (days_ago(30), days_ago(40));
    pusher.manifest(
        &on_amd64,
        &amd64.manifest,
        "application/vnd.oci.image.manifest.v1+json",
    );
    pusher.push(&old, &[&on_old, &content_tag("old")]);
    let state = new_tempdir("prune-state");

    let out = runnerctl(&registry, state.path(), &["prune", "--keep", "1", "--json"]);
    out.assert_success();
    let report = out.json();
    let deleted: Vec<&str> = report["deletes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, [old.digest.as_str()], "{out}");
    let kept = report["keeps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tag"] == on_amd64.as_str())
        .cloned()
        .expect("the amd64 date tag is kept");
    assert!(
        kept["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("the kept index {index_digest}")),
        "{kept}"
    );
    assert_eq!(
        tags(&registry),
        set(&["latest", "unstable", &today, &on_amd64])
    );
    for digest in [&amd64.digest, &arm64.digest, &index_digest] {
        assert!(
            registry.digest(IMAGE_REPO, digest).is_some(),
            "{digest} is still there"
        );
    }
    skopeo_pull(&registry, "latest", true);
}

/// A rollback (or promote) that moves latest to a digest between the plan
/// and its DELETE: prune checks the moving tags again before each delete
/// and leaves that digest.
#[test]
fn a_tag_moved_onto_a_planned_digest_during_the_prune_keeps_it() {
    let registry = Registry::new();
    let pusher = Pusher::new(&registry);
    let dates: Vec<String> = [30, 20, 10].iter().map(|d| days_ago(*d)).collect();
    let seeded = seed(&pusher, &dates);
    let state = new_tempdir("prune-state");
    let paused = state.path().join("paused");
    let image = format!("docker://{}/{IMAGE_REPO}", registry.host());
    let state_dir = state.path().join("state").display().to_string();
    let mut cmd = Run::new([
        "prune",
        "--keep",
        "1",
        "--json",
        "--image",
        &image,
        "--tls-verify",
        "false",
        "--state-dir",
        &state_dir,
    ])
    .env("RUNNERCTL_REGISTRY_USER", registry.user())
    .env("RUNNERCTL_REGISTRY_PASSWORD", registry.password())
    .env("RUNNERCTL_TEST_PRUNE_PAUSE", paused.display().to_string())
    .command();
    let child = cmd.spawn().expect("spawn prune");
    let _guard = KillGroupOnDrop(child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paused.exists() {
        assert!(Instant::now() < deadline, "prune did not record its plan");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both older digests are planned; latest now moves to the oldest.
    let planned = recorded_deletes(&state.path().join("state"));
    assert_eq!(planned.len(), 2, "{planned:?}");
    let oldest = Image::new(&format!("seed-{}", dates[0]), "2026-01-01T00:00:00Z");
    assert_eq!(oldest.digest, seeded[0].2);
    pusher.manifest(
        "latest",
        &oldest.manifest,
        "application/vnd.oci.image.manifest.v1+json",
    );
    fs::remove_file(&paused).unwrap();
    let output = child.wait_with_output().expect("prune ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["deleted"], 1, "{report:#}");
    assert_eq!(
        registry.digest(IMAGE_REPO, &dates[0]),
        Some(seeded[0].2.clone())
    );
    assert_eq!(registry.digest(IMAGE_REPO, &dates[1]), None);
    let kept = report["keeps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["digest"] == seeded[0].2.as_str() && k["tag"] == "latest")
        .cloned()
        .expect("latest's new digest is kept");
    assert!(kept["reason"].as_str().unwrap().contains("moved"), "{kept}");
    let recorded = recorded_deletes(&state.path().join("state"));
    assert_eq!(
        recorded,
        vec![
            (seeded[0].2.clone(), "skipped".to_string()),
            (seeded[1].2.clone(), "deleted".to_string())
        ]
    );
}
