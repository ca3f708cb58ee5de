//! A private docker-registry (htpasswd auth) on 127.0.0.1, and what its log shows.

use super::*;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Runs a server in the background and watches the test process: if that
/// dies without dropping the [`ServerProcess`], the server is killed too.
/// Args: log file, pid file, pid to watch, then the server's argv.
pub const SERVER_SUPERVISOR: &str = r#"
log=$1 pidfile=$2 watch=$3
shift 3
"$@" >>"$log" 2>&1 &
server=$!
echo "$server" >"$pidfile"
while kill -0 "$watch" 2>/dev/null && kill -0 "$server" 2>/dev/null; do
  sleep 0.2
done
kill "$server" 2>/dev/null
wait "$server"
exit 0
"#;

/// The environment variable every server a test starts carries (its value
/// names the kind of server): scripts/test's leak check looks for it.
pub const TEST_SERVER_ENV: &str = "RUNNERCTL_TEST_SERVER";

/// A server process (e.g. docker-registry) a test started: under a small
/// sh supervisor that kills it when the test process dies, in a process
/// group of its own that [`stop`](Self::stop) and `Drop` kill (on success,
/// failure and panic). Its stdout and stderr are appended to a log file.
pub struct ServerProcess {
    child: Child,
    pid_file: PathBuf,
}

impl ServerProcess {
    /// Starts `argv` as a server of `kind`, logging to `log`; `pid_file`
    /// receives the server's pid.
    pub fn start(kind: &str, argv: &[&OsStr], log: &Path, pid_file: &Path) -> Result<Self, String> {
        let _ = fs::remove_file(pid_file);
        let program = argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let child = Command::new("sh")
            .arg("-c")
            .arg(SERVER_SUPERVISOR)
            .arg(format!("runnerctl-test-{kind}-supervisor"))
            .arg(log)
            .arg(pid_file)
            .arg(std::process::id().to_string())
            .args(argv)
            .env(TEST_SERVER_ENV, kind)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Supervisor and server share a process group that stop() kills.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("could not start sh for {program}: {e}"))?;
        Ok(ServerProcess {
            child,
            pid_file: pid_file.to_path_buf(),
        })
    }

    /// The supervisor has ended (so has the server).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the process group and the server (should it have left the
    /// group), and reaps the supervisor.
    pub fn stop(&mut self) {
        kill(&self.child.id().to_string(), true);
        if let Ok(pid) = fs::read_to_string(&self.pid_file) {
            kill(pid.trim(), false);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.pid_file);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private docker-registry on 127.0.0.1 with htpasswd (bcrypt) auth and
/// filesystem storage in a temp dir. Killed on drop.
///
/// Blob uploads are counted from the registry's access log (its stdout and
/// stderr go to [`log_path`](Self::log_path)): one line
/// `"POST /v2/<repo>/blobs/uploads/… HTTP/1.1"` per upload started,
/// including cross-repository mount attempts.
pub struct Registry {
    dir: TempDir,
    port: u16,
    user: String,
    password: String,
    auth: RegistryAuth,
    child: Option<ServerProcess>,
}

/// How a [`Registry`] authenticates its clients.
#[derive(Debug, Clone)]
pub enum RegistryAuth {
    /// htpasswd (bcrypt) with the registry's user and password.
    Htpasswd,
    /// Bearer tokens: `401` with a `WWW-Authenticate: Bearer realm=…,
    /// service=…` challenge; tokens are JWTs by `issuer`, signed with the
    /// key of a certificate in `rootcertbundle`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        rootcertbundle: PathBuf,
    },
}

impl Registry {
    /// Starts a registry with htpasswd auth on a free port. Panics with the
    /// log if it does not come up.
    pub fn new() -> Self {
        let dir = new_tempdir("registry");
        let user = "runner".to_string();
        let password = "s3cret-runner-pw".to_string();
        htpasswd_add(&dir.path().join("htpasswd"), &user, &password, true);
        Self::start_new(dir, user, password, RegistryAuth::Htpasswd)
    }

    /// Starts a registry with token auth ([`RegistryAuth::Token`]) on a
    /// free port; `user` and `password` are what the token server takes
    /// (the registry itself knows no password).
    pub fn with_token_auth(user: &str, password: &str, auth: RegistryAuth) -> Self {
        Self::start_new(
            new_tempdir("token-registry"),
            user.to_string(),
            password.to_string(),
            auth,
        )
    }

    fn start_new(dir: TempDir, user: String, password: String, auth: RegistryAuth) -> Self {
        fs::create_dir_all(dir.path().join("storage"))
            .unwrap_or_else(|e| panic!("could not create registry storage: {e}"));
        let mut registry = Registry {
            dir,
            port: 0,
            user,
            password,
            auth,
            child: None,
        };
        // Another process may grab the port between probing and binding.
        let mut last_err = String::new();
        for _ in 0..5 {
            registry.port = free_port();
            registry.write_config();
            match registry.try_start() {
                Ok(()) => return registry,
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let auth = match &self.auth {
            RegistryAuth::Htpasswd => format!(
                "auth:\n  htpasswd:\n    realm: runnerctl-tests\n    path: {}\n",
                d.join("htpasswd").display()
            ),
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                rootcertbundle,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                rootcertbundle.display()
            ),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n  fields:\n    service: registry\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: runnerctl-tests\n\
             {auth}",
            storage = d.join("storage").display(),
            port = self.port,
        );
        write_file(&d.join("config.yml"), config);
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("registry.pid")
    }

    fn try_start(&mut self) -> Result<(), String> {
        let config = self.dir.path().join("config.yml");
        let child = ServerProcess::start(
            "docker-registry",
            &[
                OsStr::new(REGISTRY_BIN),
                OsStr::new("serve"),
                config.as_os_str(),
            ],
            &self.log_path(),
            &self.pid_file(),
        )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(HttpResponse { status: 401, .. }) = self.request("GET", "/v2/", &[], false) {
                return Ok(());
            }
            let exited = self.child.as_mut().is_none_or(ServerProcess::exited);
            if exited || Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "no 401 from http://{}/v2/ (exited: {exited}); log:\n{}",
                    self.host(),
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts the registry again after [`stop`](Self::stop): same port, same
    /// storage, same credentials.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "registry is already running");
        if let Err(e) = self.try_start() {
            panic!("docker-registry did not restart on port {}: {e}", self.port);
        }
    }

    /// Adds a user to the htpasswd file and restarts the registry (it reads
    /// the file at start). Only for [`RegistryAuth::Htpasswd`].
    pub fn add_user(&mut self, user: &str, password: &str) {
        let htpasswd = self.dir.path().join("htpasswd");
        assert!(htpasswd.is_file(), "{} is missing", htpasswd.display());
        htpasswd_add(&htpasswd, user, password, false);
        self.stop();
        self.start();
    }

    /// Stops the registry and waits until the port refuses connections.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        child.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -STOP` the registry: it keeps its port, the kernel still
    /// accepts connections, and nothing answers.
    pub fn pause(&self) {
        self.signal_registry("STOP");
    }

    /// `kill -CONT` after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal_registry("CONT");
    }

    fn signal_registry(&self, signal: &str) {
        let pid = fs::read_to_string(self.pid_file())
            .unwrap_or_else(|e| panic!("the registry's pid file: {e}"));
        let status = Command::new("bash")
            .args(["-c", "kill -\"$1\" -- \"$2\"", "kill", signal, pid.trim()])
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `HOST/REPO:TAG`, e.g. for `docker://` references.
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// Writes a containers-auth.json (`skopeo --authfile`,
    /// `REGISTRY_AUTH_FILE`) holding this registry's credentials to `path`.
    pub fn write_authfile(&self, path: &Path) {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        let json = serde_json::json!({ "auths": { self.host(): { "auth": auth } } });
        write_file(path, json.to_string());
    }

    /// Where the registry's stdout and stderr (including the access log) go.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Blob uploads started since the registry was created (all repos),
    /// counted from the access log.
    pub fn blob_upload_count(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| is_blob_upload_line(l))
            .count()
    }

    /// Manifests PUT to the registry (all repos), from the access log.
    pub fn manifest_put_count(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"PUT /v2/") && l.contains("/manifests/"))
            .count()
    }

    /// The tag (or digest) of every manifest PUT the registry answered 201,
    /// in order, from the access log: `"PUT /v2/<repo>/manifests/<ref> …" 201`.
    pub fn manifest_puts_by_ref(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let start = l.find("\"PUT /v2/")?;
                let rest = &l[start + 1..];
                let (request, after) = rest.split_once('"')?;
                let reference = request
                    .split_whitespace()
                    .nth(1)?
                    .split_once("/manifests/")?
                    .1;
                (after.split_whitespace().next() == Some("201")).then(|| reference.to_string())
            })
            .collect()
    }

    /// Tags of `repo` (empty if the repository does not exist).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let HttpResponse { status, body, .. } = self
            .request("GET", &format!("/v2/{repo}/tags/list"), &[], true)
            .unwrap_or_else(|e| panic!("GET tags of {repo} from {}: {e}", self.host()));
        match status {
            404 => Vec::new(),
            200 => {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                    panic!(
                        "tags/list is not JSON ({e}): {}",
                        String::from_utf8_lossy(&body)
                    )
                });
                let mut tags: Vec<String> = json["tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                tags.sort();
                tags
            }
            s => panic!(
                "GET /v2/{repo}/tags/list answered {s}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// `Docker-Content-Digest` of `repo:tag` (HEAD, accepting docker v2
    /// schema2, OCI manifests and indexes), or `None` if the tag is unknown.
    pub fn digest(&self, repo: &str, tag: &str) -> Option<String> {
        self.head_digest(repo, tag, &[], true)
    }

    /// [`digest`](Self::digest) asked with `authorization` (e.g. `Bearer
    /// <token>` for a registry with token auth) instead of Basic auth.
    pub fn digest_authorized(&self, repo: &str, tag: &str, authorization: &str) -> Option<String> {
        self.head_digest(repo, tag, &[("Authorization", authorization)], false)
    }

    fn head_digest(
        &self,
        repo: &str,
        tag: &str,
        headers: &[(&str, &str)],
        basic_auth: bool,
    ) -> Option<String> {
        let accept = "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.oci.image.index.v1+json";
        let mut headers = headers.to_vec();
        headers.push(("Accept", accept));
        let HttpResponse {
            status, headers, ..
        } = self
            .request(
                "HEAD",
                &format!("/v2/{repo}/manifests/{tag}"),
                &headers,
                basic_auth,
            )
            .unwrap_or_else(|e| panic!("HEAD manifest {repo}:{tag} on {}: {e}", self.host()));
        match status {
            404 => None,
            200 => Some(
                headers
                    .get("docker-content-digest")
                    .cloned()
                    .unwrap_or_else(|| panic!("HEAD {repo}:{tag} has no Docker-Content-Digest")),
            ),
            s => panic!(
                "HEAD /v2/{repo}/manifests/{tag} answered {s}; registry log:\n{}",
                self.log()
            ),
        }
    }

    /// The manifest of `repo:tag` as JSON (GET), or `None` if unknown.
    pub fn manifest(&self, repo: &str, tag: &str) -> Option<serde_json::Value> {
        let accept = "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json";
        let HttpResponse { status, body, .. } = self
            .request(
                "GET",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Accept", accept)],
                true,
            )
            .unwrap_or_else(|e| panic!("GET manifest {repo}:{tag} on {}: {e}", self.host()));
        match status {
            404 => None,
            200 => Some(
                serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("manifest of {repo}:{tag} is not JSON: {e}")),
            ),
            s => panic!("GET /v2/{repo}/manifests/{tag} answered {s}"),
        }
    }

    /// A minimal HTTP/1.0 client (no chunked encoding to deal with), with
    /// Basic auth if `auth`. `Err` if the registry cannot be reached.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        auth: bool,
    ) -> Result<HttpResponse, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("connect {}: {e}", self.host()))?;
        let timeout = Some(Duration::from_secs(10));
        stream
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(timeout)
            .map_err(|e| e.to_string())?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.host());
        if auth {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.password));
            let _ = write!(req, "Authorization: Basic {token}\r\n");
        }
        for (k, v) in headers {
            let _ = write!(req, "{k}: {v}\r\n");
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("send {method} {path}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| format!("read response to {method} {path}: {e}"))?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no HTTP header end in response to {method} {path}"))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let body = raw[split + 4..].to_vec();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in response to {method} {path}: {head}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// A response from [`Registry::request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// Adds `user` with `password` (bcrypt) to the htpasswd file at `path`,
/// creating the file if `create`.
fn htpasswd_add(path: &Path, user: &str, password: &str, create: bool) {
    let out = output_with_input(
        Command::new("htpasswd")
            .arg(if create { "-iBc" } else { "-iB" })
            .arg(path)
            .arg(user),
        password.as_bytes(),
    );
    assert!(
        out.status.success(),
        "htpasswd (apache2-utils) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An access-log line of a blob upload started (in any repository).
pub fn is_blob_upload_line(line: &str) -> bool {
    // Access log: 127.0.0.1 - - [date] "POST /v2/infra/runners/nixos/blobs/uploads/ HTTP/1.1" 202 0 "" "skopeo/1.9.3"
    let Some(start) = line.find("\"POST /v2/") else {
        return false;
    };
    let uri = line[start + "\"POST ".len()..]
        .split_whitespace()
        .next()
        .unwrap_or("");
    uri.strip_prefix("/v2/")
        .is_some_and(|rest| rest.contains("/blobs/uploads/"))
}

/// SIGKILLs process `pid` (or its whole process group) with bash's builtin
/// `kill`: needs no procps, and unlike dash's it takes `--` and `-PGID`.
pub fn kill(pid: &str, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = Command::new("bash")
        .args(["-c", "kill -KILL -- \"$1\" 2>/dev/null", "kill", &target])
        .stdin(Stdio::null())
        .status();
}

/// SIGKILLs a process group when dropped (on success, failure and panic):
/// for a test that starts runnerctl in a group of its own and may panic
/// before it ends.
pub struct KillGroupOnDrop(pub u32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        kill(&self.0.to_string(), true);
    }
}

/// A TCP port that was free a moment ago (bind port 0, read it, close).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("could not bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address for a bound socket: {e}"))
        .port()
}
