#!/usr/bin/env python3
"""Two-system bump benchmark: the bytes runnerctl sends for a bump in which
one layer changed in each of two systems' images (x86_64-linux and
aarch64-linux under one OCI index).

Run it through `bash bench/push.sh --multiarch` (which builds runnerctl and
the byte-counting proxy). The target, from the multi-arch issue: at most
1.1 x (the two changed layers, compressed, plus the two configs, the two
manifests and the index). The aarch64 image is built on this machine through
`extra-platforms = aarch64-linux` (the generator is Python; Nix does not
look at the builder's ELF). Each system's image has its own seed, so no
layer is shared between them; the bump variant changes layer 20 in both.
"""

import json
import subprocess
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import push as P  # noqa: E402  (the push benchmark's registry, proxy and Nix setup)

REPO = "infra/runners/nixos"
SYSTEMS = {"x86_64-linux": ("amd64", "1"), "aarch64-linux": ("arm64", "2")}

FLAKE = """{
  description = "runnerctl two-system benchmark image (@VARIANT@)";
  inputs.nixpkgs.url = "@NIXPKGS@";
  outputs = { self, nixpkgs }:
    let
      image = system: arch: seed: derivation {
        name = "runnerctl-bench-nixos.tar";
        inherit system;
        builder = "/bin/sh";
        args = [ "-c" "exec @PYTHON@ \\"$gen\\" --seed \\"$seed\\" --arch \\"$arch\\" --variant \\"$variant\\" --created \\"$created\\" --out \\"$out\\"" ];
        gen = builtins.path { path = ./genimage.py; name = "runnerctl-bench-genimage.py"; };
        inherit arch seed;
        variant = "@VARIANT@";
        created = "@CREATED@";
        PATH = "/usr/bin:/bin";
      };
    in {
@PACKAGES@
    };
}
"""


def nix_env(work, cache):
    env = P.nix_env(work, cache)
    env["NIX_CONFIG"] += "extra-platforms = aarch64-linux\n"
    return env


def make_flake(work, variant, python):
    nixpkgs = os.path.join(work, f"nixpkgs-{variant}")
    flake = os.path.join(work, f"flake-{variant}")
    at = P.T_BASE if variant == "base" else P.T_BUMP
    for d in (nixpkgs, flake):
        os.makedirs(d)
        P.run(["git", "init", "--quiet", "--initial-branch=main"], cwd=d, env=P.git_env())
    with open(os.path.join(nixpkgs, "flake.nix"), "w") as f:
        f.write(P.NIXPKGS_FLAKE.replace("@PAYLOAD@", variant))
    P.git_commit(nixpkgs, at)
    packages = "\n".join(
        f'      packages.{system}.nixos = image "{system}" "{arch}" "{seed}";'
        for system, (arch, seed) in SYSTEMS.items())
    text = (FLAKE.replace("@NIXPKGS@", f"git+file://{nixpkgs}?ref=main")
            .replace("@VARIANT@", variant).replace("@CREATED@", P.CREATED[variant])
            .replace("@PYTHON@", python).replace("@PACKAGES@", packages))
    with open(os.path.join(flake, "flake.nix"), "w") as f:
        f.write(text)
    shutil.copy(P.GENIMAGE, os.path.join(flake, "genimage.py"))
    env = nix_env(work, os.path.join(work, "nix-cache-setup"))
    P.run(["git", "add", "--all"], cwd=flake, env=P.git_env())
    P.run(["nix", "flake", "lock"], cwd=flake, env=env, capture_output=True, text=True)
    P.git_commit(flake, at)
    for system in SYSTEMS:
        P.run(["nix", "build", "--no-link", f"{flake}#packages.{system}.nixos"], cwd=flake,
              env=env, capture_output=True, text=True)
    return flake


def release(work, reg, flake, logdir):
    os.makedirs(logdir, exist_ok=True)
    env = nix_env(work, os.path.join(logdir, "nix-cache"))
    env["RUNNERCTL_REGISTRY_USER"] = P.USER
    env["RUNNERCTL_REGISTRY_PASSWORD"] = P.PASSWORD
    cmd = [P.RUNNERCTL, "release", "--json", "--progress", "plain", "--flake", flake,
           "--state-dir", os.path.join(logdir, "state"), "--smoke", "never",
           "--system", ",".join(SYSTEMS), "--image", f"docker://{reg.host}/{REPO}",
           "--tls-verify", "false"]
    start = reg.log_offset()
    with open(os.path.join(logdir, "stderr.log"), "w") as err:
        out = P.run(cmd, cwd=flake, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                    check=False)
    if out.returncode != 0:
        raise SystemExit(f"runnerctl failed ({out.returncode}); see {logdir}/stderr.log")
    import time
    time.sleep(0.1)  # the proxy logs a request once its body is through
    return json.loads(out.stdout), reg.traffic(start)


def blobs(reg, index_digest):
    """Every image the index lists: manifest bytes and {blob digest: size}."""
    raw = reg.get(f"/v2/{REPO}/manifests/{index_digest}",
                  "application/vnd.oci.image.index.v1+json")
    index = json.loads(raw)
    manifests, sizes = [len(raw)], {}
    for m in index["manifests"]:
        mraw = reg.get(f"/v2/{REPO}/manifests/{m['digest']}", P.MANIFEST_ACCEPT)
        manifests.append(len(mraw))
        doc = json.loads(mraw)
        sizes[doc["config"]["digest"]] = doc["config"]["size"]
        for layer in doc["layers"]:
            sizes[layer["digest"]] = layer["size"]
    return sum(manifests), sizes


def main():
    work = tempfile.mkdtemp(prefix="runnerctl-bench-multiarch-")
    python = shutil.which("python3") or "/usr/bin/python3"
    P.say("generating and building two systems' images, base and bump (4 images)")
    flakes = {v: make_flake(work, v, python) for v in ("base", "bump")}
    reg = P.Registry(os.path.join(work, "registry"))
    try:
        base, _ = release(work, reg, flakes["base"], os.path.join(work, "runs", "base"))
        _, before = blobs(reg, base["digest"])
        bump, traffic = release(work, reg, flakes["bump"], os.path.join(work, "runs", "bump"))
        manifests, after = blobs(reg, bump["digest"])
    finally:
        reg.stop()
    new = {d: s for d, s in after.items() if d not in before}
    limit = sum(new.values()) + manifests
    ratio = traffic["up"] / limit if limit else float("nan")
    print(f"Two-system bump (x86_64-linux, aarch64-linux; layer 20 changed in each):")
    print(f"  new blobs {len(new)} ({sum(new.values()):,} B: two changed layers and two configs),"
          f" manifests and index {manifests:,} B")
    print(f"  sent by runnerctl: {traffic['up']:,} B in {traffic['requests']} requests"
          f" ({traffic['blob_uploads']} blob uploads, {traffic['manifest_puts']} manifest PUTs)")
    ok = ratio <= 1.1
    print(f"  target bytes <= 1.1 x (new blobs + manifests): {ratio:.3f} x -> "
          f"{'met' if ok else 'MISSED'}")
    if "--keep" not in sys.argv:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
