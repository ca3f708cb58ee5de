//! skopeo's failures, classified, each with its own help; timeouts; and no
//! reliance on the host's containers policy.
//!
//! Every case runs the real binary against real skopeo and a real
//! docker-registry, or, where the fault is that something else answers,
//! against a server of another kind: an `openssl s_server` with a
//! self-signed certificate, or a socket on 127.0.0.1 that answers 404 to
//! everything (a web server that is not a registry) or never answers.
//! Each asserts the diagnostic's code, headline and help, that nothing was
//! committed or tagged, and, for every class but the network ones, that
//! the help does not send the user to "run the same command again".

mod common;
mod fault_support;

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fault_support::*;
// The fault world (the common one with hooks), not common::World.
use fault_support::World;

const RUN_AGAIN: &str = "run the same command again";

/// Nothing reached git or the registry's tags.
fn assert_nothing_published(w: &World) {
    assert_eq!(w.repo.head(), w.initial_remote_head, "nothing committed");
    assert_eq!(
        w.repo.remote_head(),
        w.initial_remote_head,
        "nothing pushed"
    );
    assert_eq!(w.registry.tags(IMAGE_REPO), Vec::<String>::new(), "no tag");
}

/// Preflight, with runnerctl's own client, stopped the run before anything
/// changed: skopeo never ran, nothing was built, flake.lock is as it was.
fn assert_stopped_in_preflight(w: &World, out: &RunOutput, lock: &[u8]) {
    assert!(
        w.shims.calls("skopeo").is_empty(),
        "preflight stopped it before skopeo ran\n{out}"
    );
    assert_eq!(w.nix_builds(), 0, "nothing built\n{out}");
    assert_eq!(w.repo.lock_bytes(), lock, "flake.lock untouched");
}

fn assert_no_run_again(out: &RunOutput) {
    assert!(
        !squash(&out.stderr).contains(RUN_AGAIN),
        "this class must not suggest running again\n{out}"
    );
}

/// Every skopeo call carried `--policy FILE` and `--command-timeout Ns`
/// (right after the subcommand). Returns the policy files it was given.
fn assert_policy_and_timeout_on_every_skopeo_call(w: &World, secs: u64) -> Vec<String> {
    let calls = w.shims.calls("skopeo");
    assert!(!calls.is_empty(), "skopeo ran");
    let mut policies = Vec::new();
    for argv in &calls {
        let value = |flag: &str| {
            argv.windows(2)
                .find(|p| p[0] == flag)
                .map(|p| p[1].clone())
                .unwrap_or_else(|| panic!("skopeo call without {flag}: {argv:?}"))
        };
        policies.push(value("--policy"));
        let timeout = value("--command-timeout");
        let n: u64 = timeout
            .strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("--command-timeout {timeout}"));
        if argv[0] == "inspect" {
            assert_eq!(n, secs, "inspect gets the registry timeout: {argv:?}");
        } else {
            assert!(
                n >= secs,
                "copy gets at least the registry timeout: {argv:?}"
            );
        }
    }
    policies
}

/// A child process serving on a port, killed on drop.
struct ChildServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl ChildServer {
    /// Start `cmd` (which must listen on `port`) and wait until it accepts.
    fn start(mut cmd: Command, port: u16, dir: tempfile::TempDir) -> ChildServer {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
        let server = ChildServer {
            child,
            port,
            _dir: dir,
        };
        assert!(
            wait_for(Duration::from_secs(20), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "{cmd:?} never listened on {port}"
        );
        server
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An HTTPS server whose certificate no one trusts (`openssl s_server`
    /// with a fresh self-signed certificate for 127.0.0.1).
    fn untrusted_tls() -> ChildServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                // A server certificate, not a CA's: what an untrusted
                // registry presents is a leaf whose issuer no one trusts
                // (a CA certificate as the server's own is another TLS
                // error to rustls).
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl req");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut cmd = Command::new("openssl");
        cmd.args(["s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key);
        ChildServer::start(cmd, port, dir)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`TcpServer`] does with a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Nothing, ever (the connection stays open).
    Never,
    /// `404 Not Found` to every request, as a web server that is not a
    /// registry answers `/v2/`.
    NotFound,
}

/// A server on 127.0.0.1 that is not a registry. Stopped (its connections
/// closed) on drop.
struct TcpServer {
    accepted: Arc<AtomicUsize>,
    service: TcpService,
}

/// Answer one HTTP request with a 404 page, then close.
fn answer_not_found(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match std::io::Read::read(&mut stream, &mut byte) {
            // Not HTTP (a TLS handshake first: skopeo tries https): close.
            Ok(1) if head.is_empty() && !byte[0].is_ascii_uppercase() => return,
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let body = "<html><body><h1>404 Not Found</h1></body></html>";
    let response = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
}

impl TcpServer {
    fn start(answer: Answer) -> TcpServer {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let mut held = Vec::new();
        let service = TcpService::start(move |stream| {
            counter.fetch_add(1, Ordering::SeqCst);
            match answer {
                Answer::Never => held.push(stream),
                Answer::NotFound => {
                    thread::spawn(move || answer_not_found(stream));
                }
            }
        });
        TcpServer { accepted, service }
    }

    fn host(&self) -> String {
        self.service.host()
    }
}

fn write_policy(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

#[test]
fn a_user_policy_that_rejects_the_image_gives_the_policy_help() {
    let w = World::new();
    let policy = write_policy(
        w.tmp.path(),
        "reject.json",
        r#"{"default":[{"type":"reject"}]}"#,
    );
    let policy_arg = policy.display().to_string();
    let out = w.bump(&["--policy", &policy_arg]);
    assert_diagnostic(&out, "runnerctl::skopeo::policy");
    assert_stderr_mentions(
        &out,
        &[
            "skopeo's containers trust policy refused the copy",
            "is rejected by policy",
            "--policy / RUNNERCTL_POLICY",
            &policy_arg,
        ],
    );
    assert_no_run_again(&out);
    assert_nothing_published(&w);
    let policies = assert_policy_and_timeout_on_every_skopeo_call(&w, 30);
    assert!(policies.iter().all(|p| *p == policy_arg), "{policies:?}");
    assert_eq!(
        w.shims.count("skopeo", &["copy"]),
        1,
        "a policy refusal is not retried"
    );
}

#[test]
fn a_policy_file_that_is_missing_or_not_json_is_refused_in_preflight() {
    let w = World::new();
    let lock = w.repo.lock_bytes();
    let not_json = write_policy(w.tmp.path(), "policy.json", "{\"default\": [");
    let array = write_policy(w.tmp.path(), "array.json", "[]");
    let missing = w.tmp.path().join("nosuch.json");
    let cases = [
        (
            missing.clone(),
            "runnerctl::policy::unreadable",
            "could not be read",
        ),
        (
            not_json.clone(),
            "runnerctl::policy::invalid",
            "is not a JSON object",
        ),
        (
            array.clone(),
            "runnerctl::policy::invalid",
            "the top level must be an object",
        ),
    ];
    for (path, code, headline) in cases {
        let path = path.display().to_string();
        for via_env in [false, true] {
            let out = if via_env {
                let mut args = w.bump_args(&[]);
                args.push("--json".into());
                let mut env = w.env();
                env.push(("RUNNERCTL_POLICY".into(), path.clone()));
                Spawned::start(&args, w.repo.path(), &env).wait(Duration::from_secs(240))
            } else {
                w.bump(&["--policy", &path])
            };
            assert_diagnostic(&out, code);
            assert_stderr_mentions(&out, &[headline, &path, "--policy / RUNNERCTL_POLICY"]);
            if via_env {
                assert_eq!(out.json()["outcome"], "failure");
            }
        }
    }
    assert_eq!(
        w.changing_calls(),
        Vec::<String>::new(),
        "preflight changes nothing"
    );
    assert!(w.shims.calls("skopeo").is_empty(), "skopeo never ran");
    assert_eq!(w.repo.lock_bytes(), lock, "flake.lock untouched");
    assert_nothing_published(&w);
}

// ---------------------------------------------------------------------------
// Registry answers: not found, TLS, refused
// ---------------------------------------------------------------------------

#[test]
fn a_wrong_password_gives_the_credentials_help() {
    let mut w = World::new();
    w.password = "not-the-password".into();
    let lock = w.repo.lock_bytes();
    let out = w.bump(&[]);
    assert_diagnostic(&out, "runnerctl::preflight::login");
    assert_stderr_mentions(
        &out,
        &[
            &format!(
                "the registry rejected the credentials for {} from RUNNERCTL_REGISTRY_USER/RUNNERCTL_REGISTRY_PASSWORD (HTTP 401 unauthorized)",
                w.registry.host()
            ),
            &format!("skopeo login {}", w.registry.host()),
            "nothing was updated or built",
        ],
    );
    assert_no_run_again(&out);
    assert_stopped_in_preflight(&w, &out, &lock);
    assert_nothing_published(&w);
}

#[test]
fn an_address_that_is_not_a_registry_gives_the_not_found_help() {
    let w = World::new();
    let web = TcpServer::start(Answer::NotFound);
    let image = image_arg(&web.host());
    let out = w.run(&w.bump_args_to(&image, &[]));
    assert_diagnostic(&out, "runnerctl::skopeo::not_found");
    assert_stderr_mentions(
        &out,
        &[
            &format!(
                "{} has no such repository or tag, or is not a registry",
                web.host()
            ),
            // skopeo's own words, the start of its line in 1.9.3 and 1.18
            // (1.9.3 goes on "invalid status code from registry 404 (Not
            // Found)"; 1.18's line is longer and the quote is cut).
            "pinging container registry",
            "check the address and the repository path in --image",
        ],
    );
    assert_no_run_again(&out);
    assert!(web.accepted.load(Ordering::SeqCst) > 0, "skopeo asked it");
    assert_eq!(
        w.nix_builds(),
        0,
        "nothing built for an address that is not a registry"
    );
    assert_nothing_published(&w);
}

#[test]
fn a_plain_http_registry_with_tls_verification_suggests_tls_verify_false() {
    let w = World::new();
    let args: Vec<String> = ["bump", "--image", &w.image()].map(String::from).to_vec();
    let lock = w.repo.lock_bytes();
    let out = w.run(&args);
    assert_diagnostic(&out, "runnerctl::registry::tls");
    assert_stderr_mentions(
        &out,
        &[
            &format!("{} speaks plain HTTP, not HTTPS", w.registry.host()),
            "received corrupt message of type InvalidContentType",
            "--tls-verify false",
        ],
    );
    assert_no_run_again(&out);
    assert_stopped_in_preflight(&w, &out, &lock);
    assert_nothing_published(&w);
}

#[test]
fn an_untrusted_certificate_points_at_the_ca_bundle() {
    let w = World::new();
    let tls = ChildServer::untrusted_tls();
    let args: Vec<String> = ["bump", "--image", &image_arg(&tls.host())]
        .map(String::from)
        .to_vec();
    let lock = w.repo.lock_bytes();
    let out = w.run(&args);
    assert_diagnostic(&out, "runnerctl::registry::tls");
    assert_stderr_mentions(
        &out,
        &[
            &format!(
                "the TLS certificate of {} is signed by an authority this machine does not trust",
                tls.host()
            ),
            "invalid peer certificate: UnknownIssuer",
            "SSL_CERT_FILE",
        ],
    );
    assert_no_run_again(&out);
    assert_stopped_in_preflight(&w, &out, &lock);
    assert_nothing_published(&w);
}

#[test]
fn a_refused_connection_says_run_again() {
    let w = World::new();
    let host = format!("127.0.0.1:{}", free_port());
    let lock = w.repo.lock_bytes();
    let out = w.run(&w.bump_args_to(&image_arg(&host), &[]));
    assert_diagnostic(&out, "runnerctl::registry::unavailable");
    assert_stderr_mentions(
        &out,
        &[
            &format!("{host} could not be reached or failed (connection refused, reset, or a 5xx)"),
            "Connection refused (os error 111)",
            RUN_AGAIN,
        ],
    );
    assert_stopped_in_preflight(&w, &out, &lock);
    assert_nothing_published(&w);
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

/// runnerctl gives up on a silent registry: from `since` (the start of the
/// run, or the moment the registry went silent), it exits within the
/// timeout plus slack (generous: the machine is shared), with the
/// classified error, where it used to hang for good.
fn assert_timed_out(out: &RunOutput, since: Instant, host: &str, secs: u64) {
    assert!(!out.timed_out, "runnerctl hung\n{out}");
    assert!(
        since.elapsed() < Duration::from_secs(secs + 30),
        "took {:?} after the registry went silent",
        since.elapsed()
    );
    assert_diagnostic(out, "runnerctl::registry::timeout");
    assert_stderr_mentions(
        out,
        &[
            &format!("the registry at {host} did not answer within {secs} s"),
            "--registry-timeout",
            RUN_AGAIN,
        ],
    );
}

#[test]
fn a_registry_that_accepts_and_never_answers_times_out() {
    let w = World::new();
    let silent = TcpServer::start(Answer::Never);
    let args = w.bump_args_to(&image_arg(&silent.host()), &["--registry-timeout", "3"]);
    let lock = w.repo.lock_bytes();
    let since = Instant::now();
    let out = w.run(&args);
    assert_timed_out(&out, since, &silent.host(), 3);
    assert!(
        silent.accepted.load(Ordering::SeqCst) > 0,
        "runnerctl connected"
    );
    assert_stopped_in_preflight(&w, &out, &lock);
    assert_nothing_published(&w);
}

#[test]
fn a_stopped_registry_times_out_then_the_rerun_completes() {
    let w = World::new();
    w.registry.pause();
    let args = w.bump_args(&["--registry-timeout", "3"]);
    let lock = w.repo.lock_bytes();
    let since = Instant::now();
    let out = w.run(&args);
    w.registry.resume();
    assert_timed_out(&out, since, &w.registry.host(), 3);
    assert_stopped_in_preflight(&w, &out, &lock);
    assert_nothing_published(&w);
    w.bump(&[]).assert_success();
    w.assert_bumped();
}

#[test]
fn a_registry_stopped_after_the_upload_times_out_in_runnerctls_own_client() {
    let w = World::new();
    // Hold runnerctl right after it uploaded the image (its first
    // manifest write went through, the first retag is held at a proxy),
    // stop the registry, let runnerctl go on: its own client (the
    // retags) meets the silent registry.
    let proxy = FaultProxy::start(w.registry.port(), 0);
    proxy.hold_manifest_put(2);
    let mut run = Spawned::start(
        &w.bump_args_to(&image_arg(&proxy.host()), &["--registry-timeout", "3"]),
        w.repo.path(),
        &w.env(),
    );
    run.wait_until(Duration::from_secs(240), || proxy.held());
    assert_eq!(w.registry.tags(IMAGE_REPO).len(), 1, "the upload succeeded");
    w.registry.pause();
    let started = Instant::now();
    proxy.release();
    let out = run.wait(Duration::from_secs(240));
    w.registry.resume();
    assert_timed_out(&out, started, &proxy.host(), 3);
    assert_eq!(w.shims.count("skopeo", &["copy"]), 0);
    assert_eq!(w.repo.head(), w.initial_remote_head, "nothing committed");
    assert_eq!(
        w.repo.remote_head(),
        w.initial_remote_head,
        "nothing pushed"
    );
    w.bump(&[]).assert_success();
    w.assert_bumped();
}

// ---------------------------------------------------------------------------
// No /etc/containers/policy.json
// ---------------------------------------------------------------------------

/// The skopeo on the test's own PATH (not behind the shims).
fn real_skopeo() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v skopeo"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "skopeo is on PATH");
    path
}

/// Runs `runnerctl ARGS…` in a private mount namespace where
/// /etc/containers is a copy without policy.json. First, in the same
/// namespace, a plain `skopeo copy` (no --policy) must fail to load the
/// host policy: proof that the namespace hides it.
fn run_without_host_policy(w: &World, args: &[String]) -> RunOutput {
    let etc = tempfile::tempdir().expect("tempdir");
    let copy = etc.path().join("containers");
    let status = Command::new("cp")
        .args(["-a", "/etc/containers"])
        .arg(&copy)
        .status()
        .expect("cp -a /etc/containers");
    assert!(status.success());
    let _ = fs::remove_file(copy.join("policy.json"));
    let control = etc.path().join("control.log");
    let script = r#"set -eu
copy=$1 control=$2 skopeo=$3; shift 3
mount --bind "$copy" /etc/containers
test ! -e /etc/containers/policy.json
if "$skopeo" copy dir:/nonexistent dir:/nonexistent-too >"$control" 2>&1; then
  echo "skopeo copy without --policy succeeded" >&2; exit 97
fi
exec "$@"
"#;
    let mut argv: Vec<String> = vec![
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        copy.display().to_string(),
        control.display().to_string(),
        real_skopeo(),
        env!("CARGO_BIN_EXE_runnerctl").into(),
    ];
    argv.extend(args.iter().cloned());
    let out = Run::program("unshare", argv)
        .cwd(w.repo.path())
        .envs(&w.env())
        .timeout(Duration::from_secs(300))
        .run();
    let control = fs::read_to_string(&control).unwrap_or_default();
    assert!(
        control.contains("trust policy") && control.contains("policy.json"),
        "in the namespace, skopeo without --policy cannot load a policy: {control}\n{out}"
    );
    // The host's file is still there outside the namespace.
    assert!(Path::new("/etc/containers/policy.json").exists());
    out
}

#[test]
fn bump_and_release_succeed_without_etc_containers_policy_json() {
    let w = World::new();
    let out = run_without_host_policy(&w, &w.bump_args(&[]));
    out.assert_success();
    w.assert_bumped();

    // A release of the committed lock to a repository that has nothing yet:
    // the image is uploaded again.
    let release_repo = "infra/runners/release";
    let image = format!("docker://{}/{release_repo}", w.registry.host());
    let uploads_before = w.registry.blob_upload_count();
    let args: Vec<String> = ["release", "--image", &image, "--tls-verify=false"]
        .map(String::from)
        .to_vec();
    let out = run_without_host_policy(&w, &args);
    out.assert_success();
    assert!(
        w.registry.blob_upload_count() > uploads_before,
        "release uploaded"
    );
    let mut tags = w.registry.tags(release_repo);
    tags.sort();
    assert!(
        tags.contains(&"latest".to_string()) && tags.contains(&w.date()),
        "{tags:?}"
    );
    assert_eq!(
        w.registry.digest(release_repo, "latest"),
        w.registry.digest(IMAGE_REPO, "latest"),
        "the same image"
    );

    // Every skopeo call had runnerctl's own policy, which accepts the
    // archive and the cache layouts only.
    let policies = assert_policy_and_timeout_on_every_skopeo_call(&w, 30);
    let own = w.state_dir().join("policy.json");
    assert!(policies.iter().all(|p| Path::new(p) == own), "{policies:?}");
    let policy: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&own).expect("read policy")).expect("json");
    assert_eq!(policy["default"], serde_json::json!([{"type": "reject"}]));
    let cache = fs::canonicalize(w.state_dir().join("cache")).expect("cache dir");
    assert!(
        policy["transports"]["oci"]
            .get(cache.display().to_string())
            .is_some(),
        "{policy:#}"
    );
    assert!(policy["transports"].get("docker").is_none(), "{policy:#}");
}
