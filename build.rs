// Embeds the git revision for `runnerctl --version`.
fn main() {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("RUNNERCTL_GIT_REV").ok())
        .unwrap_or_else(|| "unknown revision".to_string());
    println!("cargo:rustc-env=RUNNERCTL_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=RUNNERCTL_GIT_REV");
}
