// Embeds the revision `runnerctl --version` names: RUNNERCTL_SOURCE_REV when
// the builder says which it is (the Nix package has no .git), else the git
// commit of the checkout, else "unknown revision".
fn main() {
    let rev = std::env::var("RUNNERCTL_SOURCE_REV")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(git_rev)
        .unwrap_or_else(|| "unknown revision".to_string());
    println!("cargo:rustc-env=RUNNERCTL_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=RUNNERCTL_SOURCE_REV");
}

fn git_rev() -> Option<String> {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
