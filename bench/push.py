#!/usr/bin/env python3
"""Push benchmark: runnerctl's push against the seed's skopeo loop.

Run it through bench/push.sh, which installs the tools, builds runnerctl and
the proxy, and gives this driver a private skopeo blob-info cache. See
BENCHMARKS.md for what is measured and the latest figures.

Per repeat, a fresh docker-registry (htpasswd auth) behind a byte-counting
proxy; the seed and runnerctl push into separate repositories of it:

  (a) first push of the 300 MB / 40-layer image into an empty repository;
  (c) re-release of that same image (the registry has it in full);
  (b) bump: the image with one changed ~1 MB layer (the registry holds the
      previous image, pushed by the same tool in (a));
  (d) mass bump: 36 of the 40 layers changed (a nixpkgs bump that rebuilt
      glibc), on top of what (a)-(b) left.

runnerctl also runs (a) and (d) with --compression zstd into a repository
of its own ("runnerctl-zstd"), beside the gzip default. Before the runs,
examples/compress-limit measures one core's compress throughput of each
codec on the images: the CPU limit of a push is that time over the cores.

Before every timed run the skopeo blob-info cache is deleted and runnerctl
gets a new, empty state dir and Nix cache dir, as on a fresh CI machine.
The tools alternate which goes first from one repeat to the next.
"""

import argparse
import base64
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RUNNERCTL = os.path.join(REPO, "target", "release", "runnerctl")
COMPRESS_LIMIT = os.path.join(REPO, "target", "release", "examples", "compress-limit")
PROXY = os.path.join(REPO, "target", "bench", "push-proxy")
GENIMAGE = os.path.join(HERE, "genimage.py")
REGISTRY_BIN = "/usr/bin/docker-registry"

USER = "bench"
PASSWORD = "bench-s3cret"
# runnerctl pushes to the repository the issue names; the seed to one whose
# name is as long, so HTTP request lines cost both the same.
SEED_REPO = "infra/seedrun/nixos"
RCTL_REPO = "infra/runners/nixos"
ZSTD_REPO = "infra/zstdrun/nixos"
# The codecs runnerctl runs with, at their default levels (src/image/codec.rs).
CODECS = {"runnerctl": "gzip:2", "runnerctl-zstd": "zstd:3"}
# lastModified of the stand-in nixpkgs: gives runnerctl's {date} tag.
T_BASE = 1717416000  # 2024-06-03T12:00:00Z
T_BUMP = T_BASE + 7 * 86400  # 2024-06-10
T_MASS = T_BASE + 14 * 86400  # 2024-06-17
T_AT = {"base": T_BASE, "bump": T_BUMP, "mass": T_MASS}
DATES = {"base": "20240603", "bump": "20240610", "mass": "20240617"}
CREATED = {"base": "2024-06-03T12:00:00Z", "bump": "2024-06-10T12:00:00Z",
           "mass": "2024-06-17T12:00:00Z"}
CASES = {
    "a": ("first push into an empty repository", "base"),
    "c": ("re-release, registry has the image in full", "base"),
    "b": ("bump: one ~1 MB layer changed", "bump"),
    "d": ("mass bump: 36 of 40 layers changed", "mass"),
}
CASE_ORDER = ["a", "c", "b", "d"]  # (c), (b) and (d) build on what (a) pushed
# Cases runnerctl also runs with --compression zstd.
ZSTD_CASES = {"a", "d"}
RSS_LIMIT_BYTES = 30_000_000

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        say(f"failed: {' '.join(map(str, cmd))}")
        for stream in (e.stdout, e.stderr):
            if stream:
                sys.stderr.write(stream if isinstance(stream, str) else stream.decode(errors="replace"))
        raise


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Environment: git, nix, the skopeo cache
# ---------------------------------------------------------------------------

def git_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "RUNNERCTL_", "NIX_", "REGISTRY_AUTH"))}
    env.update({
        "GIT_AUTHOR_NAME": "runnerctl bench", "GIT_AUTHOR_EMAIL": "bench@runnerctl.invalid",
        "GIT_COMMITTER_NAME": "runnerctl bench", "GIT_COMMITTER_EMAIL": "bench@runnerctl.invalid",
        "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
    })
    return env


def nix_env(work, cache_dir):
    """Debian's Nix 2.8 single-user as root, offline (as tests/common does)."""
    registry = os.path.join(work, "flake-registry.json")
    if not os.path.exists(registry):
        with open(registry, "w") as f:
            f.write('{"flakes":[],"version":2}')
    user_conf = os.path.join(work, "nix-user.conf")
    open(user_conf, "a").close()
    os.makedirs(cache_dir, exist_ok=True)
    env = git_env()
    env.update({
        "NIX_CONFIG": "experimental-features = nix-command flakes\n"
                      "sandbox = false\nsubstituters =\nbuild-users-group =\n"
                      f"flake-registry = {registry}\ntarball-ttl = 0\nconnect-timeout = 5\n",
        "NIX_USER_CONF_FILES": user_conf,
        "XDG_CACHE_HOME": cache_dir,
    })
    return env


def skopeo_cache_dir():
    """Where skopeo keeps its blob-info cache (containers/image
    blobinfocache.DefaultCache): /var/lib/containers/cache for root, else
    $XDG_DATA_HOME/containers/cache."""
    if os.geteuid() == 0:
        return "/var/lib/containers/cache"
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "containers", "cache")


def skopeo_cache_files():
    # skopeo 1.9.3 (containers/image 5.23): blob-info-cache-v1.boltdb;
    # newer releases: blob-info-cache-v1.sqlite. Delete whichever exists.
    return glob.glob(os.path.join(skopeo_cache_dir(), "blob-info-cache-v1*"))


def clear_skopeo_cache():
    for path in skopeo_cache_files():
        os.remove(path)
    left = skopeo_cache_files()
    if left:
        raise SystemExit(f"could not clear the skopeo blob-info cache: {left}")


# ---------------------------------------------------------------------------
# Fixtures: stand-in nixpkgs, image flakes
# ---------------------------------------------------------------------------

NIXPKGS_FLAKE = """{
  description = "stand-in nixpkgs (runnerctl push benchmark)";
  outputs = { self }: { lib.payload = "@PAYLOAD@"; };
}
"""

IMAGE_FLAKE = """{
  description = "runnerctl push benchmark image (@VARIANT@)";
  inputs.nixpkgs.url = "@NIXPKGS@";
  outputs = { self, nixpkgs }: {
    # The benchmark's docker-archive, generated by genimage.py. Its out path
    # depends only on the generator, the seed and the variant.
    packages.x86_64-linux.nixos = derivation {
      name = "runnerctl-bench-nixos.tar";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "exec @PYTHON@ \\"$gen\\" --seed \\"$seed\\" --variant \\"$variant\\" --created \\"$created\\" --out \\"$out\\"" ];
      gen = builtins.path { path = ./genimage.py; name = "runnerctl-bench-genimage.py"; };
      seed = "@SEED@";
      variant = "@VARIANT@";
      created = "@CREATED@";
      PATH = "/usr/bin:/bin";
    };
  };
}
"""


def git_commit(dir, at):
    env = git_env()
    run(["git", "add", "--all"], cwd=dir, env=env)
    date = f"@{at} +0000"
    env.update({"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    run(["git", "commit", "--quiet", "-m", "bench"], cwd=dir, env=env)


def make_flake(work, variant, seed, python):
    nixpkgs = os.path.join(work, f"nixpkgs-{variant}")
    flake = os.path.join(work, f"flake-{variant}")
    at = T_AT[variant]
    for d in (nixpkgs, flake):
        os.makedirs(d)
        run(["git", "init", "--quiet", "--initial-branch=main"], cwd=d, env=git_env())
    with open(os.path.join(nixpkgs, "flake.nix"), "w") as f:
        f.write(NIXPKGS_FLAKE.replace("@PAYLOAD@", variant))
    git_commit(nixpkgs, at)
    text = (IMAGE_FLAKE.replace("@NIXPKGS@", f"git+file://{nixpkgs}?ref=main")
            .replace("@VARIANT@", variant).replace("@SEED@", str(seed))
            .replace("@CREATED@", CREATED[variant]).replace("@PYTHON@", python))
    with open(os.path.join(flake, "flake.nix"), "w") as f:
        f.write(text)
    shutil.copy(GENIMAGE, os.path.join(flake, "genimage.py"))
    env = nix_env(work, os.path.join(work, "nix-cache-setup"))
    run(["git", "add", "--all"], cwd=flake, env=git_env())
    run(["nix", "flake", "lock"], cwd=flake, env=env, capture_output=True, text=True)
    git_commit(flake, at)
    return flake


def build_image(work, flake):
    env = nix_env(work, os.path.join(work, "nix-cache-setup"))
    out = run(["nix", "build", "--no-link", "--json", f"{flake}#nixos"], cwd=flake, env=env,
              capture_output=True, text=True).stdout
    return json.loads(out)[0]["outputs"]["out"]


def archive_info(path):
    """Layer count, layer bytes and diff_ids of a docker-archive."""
    import tarfile
    with tarfile.open(path) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        config = json.load(t.extractfile(manifest["Config"]))
        sizes = {m.name: m.size for m in t.getmembers()}
    return {
        "layers": len(manifest["Layers"]),
        "layer_bytes": sum(sizes[n] for n in manifest["Layers"]),
        "layer_sizes": [sizes[n] for n in manifest["Layers"]],
        "diff_ids": config["rootfs"]["diff_ids"],
        "archive_bytes": os.path.getsize(path),
    }


# ---------------------------------------------------------------------------
# Registry and proxy
# ---------------------------------------------------------------------------

class Registry:
    def __init__(self, dir):
        self.dir = dir
        os.makedirs(os.path.join(dir, "storage"))
        htpasswd = os.path.join(dir, "htpasswd")
        run(["htpasswd", "-iBc", htpasswd, USER], input=PASSWORD.encode(), stdin=None,
            capture_output=True)
        self.port = free_port()
        config = os.path.join(dir, "config.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\n"
                "log:\n  level: info\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {dir}/storage\n"
                "  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: runnerctl-bench\n"
                f"auth:\n  htpasswd:\n    realm: runnerctl-bench\n    path: {htpasswd}\n")
        self.log = open(os.path.join(dir, "registry.log"), "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", config], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, start_new_session=True)
        self.proxy_log = os.path.join(dir, "proxy.log")
        self.proxy = subprocess.Popen([PROXY, f"127.0.0.1:{self.port}", self.proxy_log],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      start_new_session=True)
        self.proxy_port = int(self.proxy.stdout.readline().strip())
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=2)
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise SystemExit(f"docker-registry did not start; see {dir}/registry.log")
            time.sleep(0.05)

    @property
    def host(self):
        """What the clients use: the proxy."""
        return f"127.0.0.1:{self.proxy_port}"

    def log_offset(self):
        return os.path.getsize(self.proxy_log) if os.path.exists(self.proxy_log) else 0

    def traffic(self, start):
        """What the proxy saw since log offset `start`."""
        with open(self.proxy_log, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
        t = {"up": 0, "up_body": 0, "down": 0, "requests": 0, "blob_uploads": 0,
             "blob_upload_requests": 0, "upload_body": 0, "manifest_puts": 0,
             "blob_heads": 0, "manifest_gets": 0, "blob_gets": 0, "unparsed": 0}
        for line in lines:
            f = line.split("\t")
            if f[0] == "R" and len(f) == 5:
                method, path, head, body = f[1], f[2], int(f[3]), int(f[4])
                t["up"] += head + body
                t["up_body"] += body
                t["requests"] += 1
                if "/blobs/uploads/" in path:
                    t["blob_upload_requests"] += 1
                    t["upload_body"] += body
                    if method == "POST":
                        t["blob_uploads"] += 1
                elif "/manifests/" in path:
                    if method == "PUT":
                        t["manifest_puts"] += 1
                    elif method == "GET":
                        t["manifest_gets"] += 1
                elif "/blobs/" in path:
                    if method == "HEAD":
                        t["blob_heads"] += 1
                    elif method == "GET":
                        t["blob_gets"] += 1
            elif f[0] == "U":
                t["up"] += int(f[1])
                t["unparsed"] += int(f[1])
            elif f[0] == "D":
                t["down"] += int(f[1])
        return t

    def get(self, path, accept=None):
        """GET straight from the registry (not through the proxy)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if accept:
            req.add_header("Accept", accept)
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def manifest(self, repo, tag):
        raw = self.get(f"/v2/{repo}/manifests/{tag}", MANIFEST_ACCEPT)
        return raw, json.loads(raw)

    def stop(self):
        for p in (getattr(self, "proxy", None), self.proc):
            if p and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.log.close()


# ---------------------------------------------------------------------------
# One timed run
# ---------------------------------------------------------------------------

def timed(cmd, env, cwd, log_path, stdout_path=None, poll_rss=False):
    """Run cmd; return (rc, wall seconds, own peak RSS in bytes (polled
    VmHWM of cmd's process), peak RSS of the whole process tree (wait4))."""
    peak = [0]
    done = threading.Event()
    with open(log_path, "wb") as err, open(stdout_path or os.devnull, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)

        def poll():
            status = f"/proc/{proc.pid}/status"
            while not done.is_set():
                try:
                    with open(status) as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                                break
                except OSError:
                    pass
                done.wait(0.01)

        poller = threading.Thread(target=poll, daemon=True) if poll_rss else None
        if poller:
            poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        if poller:
            poller.join()
    return proc.returncode, wall, peak[0], usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def proc_cpu(pid):
    """CPU seconds (user + system) process `pid` used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def seed_run(ctx, reg, variant, tag_date, logdir):
    """The seed's loop: one `skopeo copy docker-archive:` per tag."""
    archive = ctx["images"][variant]["path"]
    script = (
        'set -e\n'
        f'for tag in latest unstable {tag_date}; do\n'
        f'  skopeo copy --dest-tls-verify=false --dest-creds "$BENCH_CREDS" '
        f'docker-archive:{archive} docker://{reg.host}/{SEED_REPO}:$tag\n'
        'done\n')
    env = git_env()
    env["BENCH_CREDS"] = f"{USER}:{PASSWORD}"
    rc, wall, _, tree_rss, cpu = timed(["bash", "-c", script], env, ctx["work"],
                                       os.path.join(logdir, "stderr.log"),
                                       os.path.join(logdir, "stdout.log"))
    return {"rc": rc, "wall": wall, "tree_rss": tree_rss, "cpu_tool": cpu}


def runnerctl_run(ctx, reg, variant, logdir, command=("release",), repo=RCTL_REPO,
                  compression=None):
    state = os.path.join(logdir, "state")
    shutil.rmtree(state, ignore_errors=True)
    env = nix_env(ctx["work"], os.path.join(logdir, "nix-cache"))
    if compression:
        env["RUNNERCTL_COMPRESSION"] = compression
    env["RUNNERCTL_REGISTRY_USER"] = USER
    env["RUNNERCTL_REGISTRY_PASSWORD"] = PASSWORD
    cmd = [RUNNERCTL, *command, "--json", "--state-dir", state,
           "--image", f"docker://{reg.host}/{repo}", "--tls-verify", "false"]
    if command[0] != "rollback":
        cmd += ["--progress", "plain", "--flake", ctx["flakes"][variant],
                # The generated image holds data, not programs: nothing to start.
                "--smoke", "never"]
    cwd = ctx["flakes"][variant] if variant else ctx["work"]
    out = os.path.join(logdir, "report.json")
    rc, wall, own_rss, tree_rss, cpu = timed(cmd, env, cwd,
                                             os.path.join(logdir, "stderr.log"), out, poll_rss=True)
    result = {"rc": rc, "wall": wall, "own_rss": own_rss, "tree_rss": tree_rss, "cpu_tool": cpu}
    try:
        with open(out) as f:
            report = json.load(f)
        result["total_ms"] = report.get("duration_ms")
        result["outcome"] = report.get("outcome")
        result["stages"] = {s["name"]: {"ms": s["duration_ms"], "status": s["status"],
                                        "note": s.get("note", "")}
                            for s in report.get("stages", [])}
        result["push_ms"] = result["stages"].get("push", {}).get("ms")
        result["digest"] = report.get("digest")
        result["tags"] = report.get("tags")
    except (OSError, ValueError) as e:
        result["report_error"] = str(e)
    return result


# Candidate -> promote -> rollback, into a repository of its own: each push
# (`release --hold`) is followed by the tag moves it enables.
PROMO_REPO = "infra/promote/nixos"
PROMO_STEPS = [
    ("hold", "base", ("release", "--hold")),
    ("promote", "base", ("promote",)),
    ("hold-bump", "bump", ("release", "--hold")),
    ("promote-bump", "bump", ("promote",)),
    ("rollback", None, ("rollback", DATES["base"])),
]


def promote_phase(ctx, reg, rep):
    """One pass of PROMO_STEPS; returns {step: result}."""
    rows = {}
    for step, variant, command in PROMO_STEPS:
        logdir = os.path.join(ctx["work"], "runs", f"{rep}-promo-{step}")
        os.makedirs(logdir)
        clear_skopeo_cache()
        start = reg.log_offset()
        r = runnerctl_run(ctx, reg, variant, logdir, command, PROMO_REPO)
        time.sleep(0.05)
        r.update(reg.traffic(start))
        r.update({"tool": "runnerctl", "case": f"promo-{step}", "repeat": rep, "logdir": logdir})
        if r["rc"] != 0:
            with open(os.path.join(logdir, "stderr.log"), errors="replace") as f:
                tail = f.read()[-3000:]
            raise SystemExit(f"runnerctl {' '.join(command)} failed:\n{tail}")
        say(f"repeat {rep + 1} {step:12}: {r['wall']:6.2f} s, {r['blob_uploads']} blob uploads, "
            f"{r['manifest_puts']} manifest PUTs, {r['up'] / 1e6:.3f} MB to the registry")
        rows[step] = r
    return rows


def promote_report(passes):
    """Medians over the passes, and the targets: promote and rollback take
    under 5 % of the push they follow and upload no blob."""
    lines, verdicts = [], []
    med_of = {step: statistics.median(p[step]["wall"] for p in passes) for step, _, _ in PROMO_STEPS}
    lines.append("Candidate -> promote -> rollback (runnerctl only; medians over "
                 f"{len(passes)} passes, repository {PROMO_REPO}):")
    for step, _, command in PROMO_STEPS:
        uploads = max(p[step]["blob_uploads"] for p in passes)
        puts = max(p[step]["manifest_puts"] for p in passes)
        lines.append(f"  {step:12} runnerctl {' '.join(command):24} {med_of[step]:6.2f} s  "
                     f"{uploads} blob uploads, {puts} manifest PUTs")
    push = med_of["hold"]
    for step in ("promote", "rollback"):
        ratio = med_of[step] / push
        verdicts.append((f"{step} wall <= 0.05 x the push it follows (release --hold, first push)",
                         ratio <= 0.05, f"{med_of[step]:.2f} s vs {push:.2f} s = {ratio:.3f}"))
    ratio = med_of["promote-bump"] / med_of["hold-bump"]
    lines.append(f"  promote after the one-layer bump push: {med_of['promote-bump']:.2f} s vs "
                 f"{med_of['hold-bump']:.2f} s = {ratio:.3f} (informational: that push is small)")
    for step in ("promote", "promote-bump", "rollback"):
        uploads = max(p[step]["blob_uploads"] for p in passes)
        verdicts.append((f"{step}: 0 blob uploads", uploads == 0, f"{uploads} (max over passes)"))
    for name, ok, detail in verdicts:
        lines.append(f"  [{'ok' if ok else 'MISSED'}] {name}: {detail}")
    return lines, verdicts


def one(ctx, reg, tool, case, rep):
    variant = CASES[case][1]
    logdir = os.path.join(ctx["work"], "runs", f"{rep}-{case}-{tool}")
    os.makedirs(logdir)
    clear_skopeo_cache()
    load = open("/proc/loadavg").read().split()[0]
    start = reg.log_offset()
    servers = {"registry": reg.proc.pid, "proxy": reg.proxy.pid}
    cpu0 = {k: proc_cpu(pid) for k, pid in servers.items()}
    if tool == "seed":
        r = seed_run(ctx, reg, variant, DATES[variant], logdir)
    elif tool == "runnerctl-zstd":
        r = runnerctl_run(ctx, reg, variant, logdir, repo=ZSTD_REPO, compression="zstd")
    else:
        r = runnerctl_run(ctx, reg, variant, logdir)
    time.sleep(0.05)  # the proxy logs a request once its body is through
    for k, pid in servers.items():
        r[f"cpu_{k}"] = proc_cpu(pid) - cpu0[k]
    r.update(reg.traffic(start))
    r["up_headers"] = r["up"] - r["up_body"]
    r["skopeo_cache_written"] = bool(skopeo_cache_files())
    r.update({"tool": tool, "case": case, "repeat": rep, "logdir": logdir, "load": load})
    if r["rc"] != 0:
        with open(os.path.join(logdir, "stderr.log"), errors="replace") as f:
            tail = f.read()[-3000:]
        say(f"{tool} ({case}) failed with exit code {r['rc']}:\n{tail}")
    extra = ""
    if tool.startswith("runnerctl"):
        extra = f", push stage {fmt_s((r.get('push_ms') or 0) / 1000)} s, peak RSS {r['own_rss'] / 1e6:.1f} MB"
    say(f"repeat {rep + 1} case ({case}) {tool:9}: {r['wall']:6.2f} s, "
        f"{r['up'] / 1e6:8.2f} MB to the registry, {r['requests']} requests, "
        f"{r['blob_uploads']} blob uploads, {r['manifest_puts']} manifest PUTs{extra}")
    return r


def cpu_limits(ctx):
    """One core's compress time of each codec over the layers a case sends,
    from examples/compress-limit (CPU seconds: on a loaded machine the wall
    clock of one thread says more about the neighbours), and the CPU limit:
    that over the cores. (a) sends every layer of the base image; (d) the
    layers of the mass image that neither earlier image has (its time is
    the whole image's, scaled by their share of the bytes)."""
    cores = os.cpu_count() or 1
    limits = {}
    for case, variant in (("a", "base"), ("d", "mass")):
        info = ctx["images"].get(variant)
        if not info:
            continue
        out = run([COMPRESS_LIMIT, info["path"], *CODECS.values()], capture_output=True,
                  text=True).stdout
        share = 1.0
        if case == "d":
            held = set(ctx["images"]["base"]["diff_ids"])
            held |= set(ctx["images"].get("bump", {}).get("diff_ids", []))
            new = sum(size for d, size in zip(info["diff_ids"], info["layer_sizes"])
                      if d not in held)
            share = new / info["layer_bytes"]
        for line in out.splitlines():
            m = json.loads(line)
            tool = next(t for t, c in CODECS.items() if c.replace(":", "-") == m["codec"])
            limits[(case, tool)] = {
                "codec": m["codec"], "cores": cores, "share": share,
                "cpu_s": m["cpu_seconds"] * share, "wall_1core_s": m["seconds"] * share,
                "in_mb_s": m["in"] / 1e6 / m["cpu_seconds"] if m["cpu_seconds"] else 0,
                "out_bytes": m["out"] * share,
                "limit_s": m["cpu_seconds"] * share / cores,
            }
            say(f"CPU limit ({case}) {m['codec']}: {m['cpu_seconds'] * share:.2f} CPU-s on one core "
                f"({m['in'] / 1e6 / max(m['cpu_seconds'], 1e-9):.0f} MB/s in) / {cores} cores = "
                f"{m['cpu_seconds'] * share / cores:.2f} s")
    return limits


def budget_b(reg, ctx, runs):
    """(b)'s physical limit for runnerctl: the new layer(s) compressed, the
    new config, and one manifest PUT per tag written, from what the registry
    holds after the bump."""
    old_raw, old = reg.manifest(RCTL_REPO, DATES["base"])
    new_raw, new = reg.manifest(RCTL_REPO, DATES["bump"])
    old_layers = {l["digest"] for l in old["layers"]}
    fresh = [l for l in new["layers"] if l["digest"] not in old_layers]
    tags = len(runs["tags"] or []) + 1  # + the nix-<hash> tag
    return {
        "new_layers": len(fresh),
        "new_layer_bytes": sum(l["size"] for l in fresh),
        "config_bytes": new["config"]["size"],
        "manifest_bytes": len(new_raw),
        "tags": tags,
        "limit": sum(l["size"] for l in fresh) + new["config"]["size"] + len(new_raw) * tags,
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def fmt_s(x):
    return f"{x:.2f}"


def fmt_mb(x):
    return f"{x / 1e6:.2f}" if x >= 10_000 else f"{x / 1e3:.1f} kB"


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def report(results, budgets, ctx):
    lines = []
    out = lines.append
    out("")
    out(f"Push benchmark: median of {ctx['repeats']} runs; bytes = client→registry on the wire "
        "(request lines, headers and bodies)")
    out("")
    out("| case | seed s | runnerctl s | ratio | seed MB | runnerctl MB | ratio "
        "| runnerctl push stage s | runnerctl peak RSS MB | runnerctl uploads / manifest PUTs |")
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    table = {}
    for case in ["a", "b", "c", "d"]:
        s = [r for r in results if r["case"] == case and r["tool"] == "seed"]
        n = [r for r in results if r["case"] == case and r["tool"] == "runnerctl"]
        if not s or not n:
            continue
        row = {
            "seed_wall": med(s, "wall"), "rctl_wall": med(n, "wall"),
            "seed_up": med(s, "up"), "rctl_up": med(n, "up"), "rctl_body": med(n, "up_body"),
            "push_s": (med(n, "push_ms") or 0) / 1000,
            "rss": max(r["own_rss"] for r in n),
            "uploads": max(r["blob_uploads"] for r in n),
            "puts": max(r["manifest_puts"] for r in n),
        }
        row["wall_ratio"] = row["rctl_wall"] / row["seed_wall"]
        row["bytes_ratio"] = row["rctl_up"] / row["seed_up"] if row["seed_up"] else float("nan")
        table[case] = row
        out(f"| ({case}) {CASES[case][0]} | {fmt_s(row['seed_wall'])} | {fmt_s(row['rctl_wall'])} "
            f"| {row['wall_ratio']:.3f} | {fmt_mb(row['seed_up'])} | {fmt_mb(row['rctl_up'])} "
            f"| {row['bytes_ratio']:.4f} | {fmt_s(row['push_s'])} | {row['rss'] / 1e6:.1f} "
            f"| {row['uploads']} / {row['puts']} |")
    out("")
    out("Targets:")
    verdicts = []

    def target(name, ok, detail):
        verdicts.append((name, ok, detail))
        out(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")

    if "b" in table:
        b = table["b"]
        limit = statistics.median([x["limit"] for x in budgets]) if budgets else None
        if limit:
            target("(b) bytes <= 1.1 x (changed layer compressed + config + manifests)",
                   b["rctl_up"] <= 1.1 * limit,
                   f"{b['rctl_up']:,} B vs 1.1 x {limit:,.0f} B = {1.1 * limit:,.0f} B "
                   f"(new layer {budgets[0]['new_layer_bytes']:,} B, config "
                   f"{budgets[0]['config_bytes']:,} B, manifest {budgets[0]['manifest_bytes']:,} B "
                   f"x {budgets[0]['tags']} tags); runnerctl/limit = {b['rctl_up'] / limit:.3f}; "
                   f"request bodies alone {b['rctl_body']:,} B = {b['rctl_body'] / limit:.3f} x limit, "
                   f"request lines and headers {b['rctl_up'] - b['rctl_body']:,} B")
        target("(b) wall <= 0.5 x seed", b["wall_ratio"] <= 0.5,
               f"{fmt_s(b['rctl_wall'])} s vs {fmt_s(b['seed_wall'])} s = {b['wall_ratio']:.3f}")
    if "c" in table:
        c = table["c"]
        target("(c) wall <= 0.1 x seed", c["wall_ratio"] <= 0.1,
               f"{fmt_s(c['rctl_wall'])} s vs {fmt_s(c['seed_wall'])} s = {c['wall_ratio']:.3f}")
        target("(c) no blob upload, no manifest PUT", c["uploads"] == 0 and c["puts"] == 0,
               f"{c['uploads']} blob uploads, {c['puts']} manifest PUTs (max over runs)")
    for case in ("a", "d"):
        if case not in table:
            continue
        x = table[case]
        target(f"({case}) wall <= 0.5 x seed", x["wall_ratio"] <= 0.5,
               f"{fmt_s(x['rctl_wall'])} s vs {fmt_s(x['seed_wall'])} s = {x['wall_ratio']:.3f}")
        target(f"({case}) bytes <= 1.05 x seed", x["bytes_ratio"] <= 1.05,
               f"{x['rctl_up']:,.0f} B vs {x['seed_up']:,.0f} B = {x['bytes_ratio']:.4f}")
    limits = ctx.get("limits") or {}
    if limits:
        out("")
        out("gzip and zstd side by side, and the CPU limit (one core's compress CPU time of the "
            "layers sent, over the cores; medians):")
        out("| case | codec | runnerctl s | push stage s | CPU limit s | push / limit "
            "| MB to the registry | vs seed MB | peak RSS MB |")
        out("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for case in ("a", "d"):
            seed_up = med([r for r in results if r["case"] == case and r["tool"] == "seed"], "up")
            for tool in CODECS:
                n = [r for r in results if r["case"] == case and r["tool"] == tool]
                lim = limits.get((case, tool))
                if not n or not lim:
                    continue
                push_s = (med(n, "push_ms") or 0) / 1000
                up = med(n, "up")
                ratio = push_s / lim["limit_s"] if lim["limit_s"] else float("nan")
                out(f"| ({case}) | {lim['codec']} | {fmt_s(med(n, 'wall'))} | {fmt_s(push_s)} "
                    f"| {lim['limit_s']:.2f} | {ratio:.2f} | {fmt_mb(up)} "
                    f"| {up / seed_up if seed_up else float('nan'):.3f} "
                    f"| {max(r['own_rss'] for r in n) / 1e6:.1f} |")
                if case == "a" and tool == "runnerctl":
                    target("(a) push stage <= 2 x the CPU limit (gzip)", ratio <= 2.0,
                           f"{push_s:.2f} s vs {lim['limit_s']:.2f} s "
                           f"({lim['cpu_s']:.2f} CPU-s at {lim['in_mb_s']:.0f} MB/s per core "
                           f"/ {lim['cores']} cores) = {ratio:.2f}")
    rss = max(r["own_rss"] for r in results if r["tool"].startswith("runnerctl"))
    target("runnerctl peak RSS <= 30 MB", rss <= RSS_LIMIT_BYTES,
           f"max {rss / 1e6:.1f} MB over all runs (VmHWM of the runnerctl process, "
           f"polled every 10 ms; skopeo and nix children not included)")
    cores = os.cpu_count() or 1
    out("")
    out(f"Where the CPU goes (medians, CPU-s: the tool with its children, the registry and the "
        f"byte-counting proxy during the run; all share the {cores} cores). The floor is their "
        f"sum over the cores: no client can end sooner on this machine without using less CPU.")
    out("| case | tool | wall s | tool CPU-s | registry CPU-s | proxy CPU-s | floor s | wall / floor |")
    out("|---|---|---:|---:|---:|---:|---:|---:|")
    for case in ("a", "b", "c", "d"):
        for tool in ("seed", "runnerctl", "runnerctl-zstd"):
            n = [r for r in results if r["case"] == case and r["tool"] == tool]
            if not n:
                continue
            cpu = {k: med(n, f"cpu_{k}") for k in ("tool", "registry", "proxy")}
            floor = sum(cpu.values()) / cores
            wall = med(n, "wall")
            out(f"| ({case}) | {tool} | {wall:.2f} | {cpu['tool']:.2f} | {cpu['registry']:.2f} "
                f"| {cpu['proxy']:.2f} | {floor:.2f} | {wall / floor if floor else float('nan'):.2f} |")
    written = [r for r in results if r["skopeo_cache_written"]]
    out(f"  skopeo blob-info cache ({skopeo_cache_dir()}): deleted before each of the "
        f"{len(results)} runs; skopeo had written it again after {len(written)} of them "
        f"(every seed run: {all(r['skopeo_cache_written'] for r in results if r['tool'] == 'seed')})")
    out("")
    out("Per run: wall s, MB client→registry (of which request lines + headers), requests, "
        "blob uploads, manifest PUTs, 1-min load average at the start; runnerctl: stages in s, "
        "own / process-tree peak RSS MB; seed: process-tree peak RSS MB")
    for r in sorted(results, key=lambda r: (r["case"], r["tool"], r["repeat"])):
        line = (f"  ({r['case']}) #{r['repeat'] + 1} {r['tool']:9} {r['wall']:6.2f} s "
                f"{r['up'] / 1e6:8.3f} MB ({r['up_headers'] / 1e3:5.1f} kB) {r['requests']:4} req "
                f"{r['blob_uploads']:2} up {r['manifest_puts']} put  load {r['load']}")
        line += (f"  CPU {r.get('cpu_tool', 0):.2f} + registry {r.get('cpu_registry', 0):.2f}"
                 f" + proxy {r.get('cpu_proxy', 0):.2f}")
        if r["tool"].startswith("runnerctl"):
            st = " ".join(f"{k}={v['ms'] / 1000:.2f}" for k, v in (r.get("stages") or {}).items())
            line += f"  [{st}]  RSS {r['own_rss'] / 1e6:.1f} / {r['tree_rss'] / 1e6:.1f}"
        else:
            line += f"  tree RSS {r['tree_rss'] / 1e6:.1f}"
        out(line)
    text = "\n".join(lines)
    print(text, flush=True)
    return table, verdicts, text


# ---------------------------------------------------------------------------

def machine():
    def first(path, key):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            return "?"
    def cmd(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {
        "nproc": os.cpu_count(),
        "memory": first("/proc/meminfo", "MemTotal"),
        "cpu": first("/proc/cpuinfo", "model name"),
        "kernel": os.uname().release,
        "skopeo": cmd("skopeo", "--version"),
        "docker_registry": cmd(REGISTRY_BIN, "--version"),
        "nix": cmd("nix", "--version"),
        "runnerctl": cmd(RUNNERCTL, "--version"),
        "python": sys.version.split()[0],
        "loadavg": open("/proc/loadavg").read().strip(),
    }


def main():
    ap = argparse.ArgumentParser(description="runnerctl push benchmark (see bench/push.sh)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", default="1", help="image generator seed")
    ap.add_argument("--cases", default="a,b,c,d",
                    help="subset of a,b,c,d ((b), (c), (d) need (a))")
    ap.add_argument("--work", help="work directory [default: a new one under $TMPDIR]")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json-out", help="also write all results as JSON here")
    args = ap.parse_args()

    for tool in (RUNNERCTL, PROXY, REGISTRY_BIN, COMPRESS_LIMIT):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: run bench/push.sh")
    wanted = set(args.cases.split(","))
    cases = [c for c in CASE_ORDER if c in wanted or (c == "a" and wanted & {"b", "c", "d"})]
    work = args.work or tempfile.mkdtemp(prefix="runnerctl-bench-")
    os.makedirs(work, exist_ok=True)
    ctx = {"work": work, "repeats": args.repeats, "flakes": {}, "images": {}}
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    say(f"work directory {work}; skopeo blob-info cache {skopeo_cache_dir()}")
    try:
        variants = sorted({CASES[c][1] for c in cases} | ({"base"} if "d" in cases else set()))
        for variant in variants:
            t0 = time.monotonic()
            flake = make_flake(work, variant, args.seed, python)
            path = build_image(work, flake)
            info = archive_info(path)
            info["path"] = path
            ctx["flakes"][variant] = flake
            ctx["images"][variant] = info
            say(f"image {variant}: {path}: {info['layers']} layers, "
                f"{info['layer_bytes'] / 1e6:.1f} MB of layers ({time.monotonic() - t0:.1f} s)")
        both = "base" in variants and "bump" in variants
        if both:
            a, b = ctx["images"]["base"]["diff_ids"], ctx["images"]["bump"]["diff_ids"]
            changed = [i for i in range(len(a)) if a[i] != b[i]]
            sizes = [ctx["images"]["bump"]["layer_sizes"][i] for i in changed]
            ctx["changed"] = {"layers": changed, "sizes": sizes}
            say(f"bump changes layer(s) {changed} ({', '.join(f'{s:,} B' for s in sizes)})")
            if len(changed) != 1:
                raise SystemExit("the bump variant must change exactly one layer")
        if "mass" in variants:
            a, m = ctx["images"]["base"]["diff_ids"], ctx["images"]["mass"]["diff_ids"]
            changed = sum(1 for x, y in zip(a, m) if x != y)
            say(f"mass bump changes {changed} of {len(a)} layers")
            if changed < 0.9 * len(a):
                raise SystemExit("the mass variant must change at least 90 % of the layers")
        ctx["limits"] = cpu_limits(ctx)

        results, budgets, promo = [], [], []
        for rep in range(args.repeats):
            regdir = os.path.join(work, f"registry-{rep}")
            reg = Registry(regdir)
            say(f"repeat {rep + 1}/{args.repeats}: fresh registry on 127.0.0.1:{reg.port}, "
                f"proxy on {reg.host}")
            try:
                tools = ["seed", "runnerctl"] if rep % 2 == 0 else ["runnerctl", "seed"]
                for case in cases:
                    for tool in tools + (["runnerctl-zstd"] if case in ZSTD_CASES else []):
                        r = one(ctx, reg, tool, case, rep)
                        results.append(r)
                        if r["rc"] != 0:
                            raise SystemExit(f"{tool} failed in case ({case}); logs in {r['logdir']}")
                        if case == "b" and tool == "runnerctl":
                            budgets.append(budget_b(reg, ctx, r))
                if both:
                    promo.append(promote_phase(ctx, reg, rep))
            finally:
                reg.stop()
                if not args.keep:
                    shutil.rmtree(os.path.join(regdir, "storage"), ignore_errors=True)
        table, verdicts, text = report(results, budgets, ctx)
        if promo:
            promo_lines, promo_verdicts = promote_report(promo)
            print("\n" + "\n".join(promo_lines), flush=True)
            verdicts += promo_verdicts
            text += "\n\n" + "\n".join(promo_lines)
        m = machine()
        print("\nMachine: " + "; ".join(f"{k}: {v}" for k, v in m.items()))
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"machine": m, "images": {k: {x: y for x, y in v.items() if x != "diff_ids"}
                                                    for k, v in ctx["images"].items()},
                           "changed": ctx.get("changed"), "budgets": budgets,
                           "cpu_limits": {f"{c}/{t}": v for (c, t), v in
                                          (ctx.get("limits") or {}).items()},
                           "results": results, "table": table, "promote": promo,
                           "verdicts": verdicts, "text": text}, f, indent=1)
        return 0 if all(ok for _, ok, _ in verdicts) else 1
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
