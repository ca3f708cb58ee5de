// Embeds the revision `runnerctl --version` names: RUNNERCTL_SOURCE_REV when
// the builder says which it is (the Nix package has no .git), else the git
// commit of the checkout, else "unknown revision".
fn main() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let rev = std::env::var("RUNNERCTL_SOURCE_REV")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown revision".to_string());
    println!("cargo:rustc-env=RUNNERCTL_GIT_REV={rev}");
    // Where HEAD and the checked-out branch live (in a linked worktree,
    // .git is a file and they are elsewhere): a new commit or checkout
    // rebuilds.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let paths = ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_string)
        .chain(branch);
    for path in paths {
        let found =
            git(&["rev-parse", "--git-path", &path]).unwrap_or_else(|| format!(".git/{path}"));
        // A path that does not exist would rebuild every time.
        if std::path::Path::new(&found).exists() {
            println!("cargo:rerun-if-changed={found}");
        }
    }
    println!("cargo:rerun-if-env-changed=RUNNERCTL_SOURCE_REV");
}
