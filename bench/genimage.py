#!/usr/bin/env python3
"""Writes the push benchmark's docker-archive: deterministic from a seed.

    genimage.py --seed 1 --variant base --out nixos.tar
    genimage.py --seed 1 --variant bump --out nixos-bump.tar
    genimage.py --seed 1 --variant mass --out nixos-mass.tar

The image has LAYERS layers whose tars add up to about TOTAL bytes. Each
layer is one fake store path (nix/store/<hash>-bench-NN/...) of files whose
content interleaves incompressible random bytes with slices of a repetitive
text corpus, so gzip -1 shrinks the image about 2:1, as it does real
binaries. Layer CHANGED is about CHANGED_SIZE bytes; the `bump` variant
changes only that layer's content (and so the config). The `mass` variant
is a nixpkgs bump that rebuilt glibc: every layer but one in ten (36 of
40) has new content. The first layer
also holds what runnerctl's verify stage requires (bin/bash, bin/sh,
usr/bin/env, bin/nix,
bin/node, bin/git, bin/curl, the CA bundle, a flakes-enabled nix.conf).

Every layer is written straight into the outer tar while its sha256 (the
diff_id) is computed; its header is patched with the final name afterwards.
With --measure, also prints the zlib level-1 ratio of the layers.
"""

import argparse
import hashlib
import json
import random
import sys
import tarfile
import zlib

LAYERS = 40
TOTAL = 300_000_000
CHANGED = 20
CHANGED_SIZE = 1_000_000
# Share of content bytes that are random; the rest is text that gzip -1
# shrinks about 4:1. Tuned so the whole image compresses about 2:1.
RANDOM_SHARE = 0.30
BLOCK = 512
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"

ROOT_FILES = {
    "bin/bash": b"#!/bin/sh\necho 'GNU bash, version 5.2.15 (benchmark stand-in)'\n",
    "bin/sh": b"#!/bin/sh\necho 'sh (benchmark stand-in)'\n",
    "usr/bin/env": b"#!/bin/sh\necho 'env (benchmark stand-in)'\n",
    "bin/nix": b"#!/bin/sh\necho 'nix (Nix) 2.8.0 (benchmark stand-in)'\n",
    "bin/node": b"#!/bin/sh\necho 'v18.19.0 (benchmark stand-in)'\n",
    "bin/git": b"#!/bin/sh\necho 'git version 2.39.2 (benchmark stand-in)'\n",
    "bin/curl": b"#!/bin/sh\necho 'curl 7.88.1 (benchmark stand-in)'\n",
    "etc/nix/nix.conf": b"experimental-features = nix-command flakes\nsandbox = false\n",
    "etc/ssl/certs/ca-bundle.crt": b"# benchmark CA bundle (no real certificates)\n",
}
ENV = [
    "PATH=/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
    "NIX_SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
    "HOME=/root",
]


def pad(n):
    return (BLOCK - n % BLOCK) % BLOCK


def header(name, size, kind=tarfile.REGTYPE, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = size if kind == tarfile.REGTYPE else 0
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT)


def corpus(seed):
    """About 8 MB of code-like text: lines drawn from a small pool."""
    r = random.Random(f"{seed}:corpus")
    syll = ("ab ac de fo gl ib lin ux ker nel str ing ptr buf size len err ret init free "
            "alloc mem cpy set get put node list hash map key val data file path dir open "
            "read write close lock mutex sig proc exec env var nix store lib bin so sh conf").split()
    words = ["".join(r.choices(syll, k=r.randint(1, 4))) for _ in range(100)]
    ends = [" ", "\n", ";\n", ",\n", " {\n", "}\n", ")\n", "\t", ": "]
    lines = [" ".join(r.choices(words, k=r.randint(3, 12))) + r.choice(ends) for _ in range(2000)]
    text = "".join(r.choices(lines, k=160_000)).encode()
    return memoryview(text)


def layer_sizes(seed):
    """Content bytes per layer: CHANGED gets CHANGED_SIZE, the others share
    the rest unevenly (a few big layers, many small ones)."""
    r = random.Random(f"{seed}:sizes")
    weights = [r.paretovariate(1.2) for _ in range(LAYERS)]
    weights[CHANGED] = 0
    rest = TOTAL - CHANGED_SIZE
    total_w = sum(weights)
    sizes = [max(200_000, int(rest * w / total_w)) for w in weights]
    sizes[CHANGED] = CHANGED_SIZE
    # Fix the rounding and the minimum on the biggest layer.
    big = max(range(LAYERS), key=lambda i: sizes[i])
    sizes[big] += TOTAL - sum(sizes)
    return sizes


def store_hash(r):
    return "".join(r.choice(NIX32) for _ in range(32))


def changed(variant, index):
    """Whether `variant` changes layer `index` from the base image."""
    if variant == "bump":
        return index == CHANGED
    if variant == "mass":
        return index % 10 != 0
    return False


def layer_plan(seed, index, variant, budget):
    """The entries of one layer: (path, size, kind, rng-for-content)."""
    tag = f"{seed}:{index}" + (f":{variant}" if changed(variant, index) else "")
    r = random.Random(tag)
    root = f"nix/store/{store_hash(r)}-bench-{index:02d}"
    entries = [("nix", 0, tarfile.DIRTYPE), ("nix/store", 0, tarfile.DIRTYPE),
               (root, 0, tarfile.DIRTYPE), (f"{root}/lib", 0, tarfile.DIRTYPE)]
    if index == 0:
        dirs = sorted({p.rsplit("/", 1)[0] for p in ROOT_FILES})
        for d in ["etc", "etc/nix", "etc/ssl", "etc/ssl/certs", "bin"]:
            if d not in dirs:
                dirs.append(d)
        for d in sorted(set(dirs)):
            entries.append((d, 0, tarfile.DIRTYPE))
        for path, data in ROOT_FILES.items():
            entries.append((path, len(data), tarfile.REGTYPE))
            budget -= len(data)
    n = 0
    while budget > 0:
        size = min(budget, int(r.lognormvariate(10.5, 1.4)) + 512)
        entries.append((f"{root}/lib/file-{n:04d}.so", size, tarfile.REGTYPE))
        budget -= size
        n += 1
    return r, entries


def content(r, size, text, out):
    """Write `size` bytes: random and text segments interleaved."""
    left = size
    while left > 0:
        n = min(left, r.randint(1024, 16384))
        if r.random() < RANDOM_SHARE:
            out(r.randbytes(n))
        else:
            start = r.randrange(0, len(text) - n)
            out(text[start:start + n])
        left -= n


def write_layer(f, r, entries, text, measure):
    """Write the layer tar at the current position; return (sha256, size, zsize)."""
    h = hashlib.sha256()
    z = zlib.compressobj(1, zlib.DEFLATED, 31) if measure else None
    state = {"size": 0, "z": 0}

    def out(b):
        f.write(b)
        h.update(b)
        state["size"] += len(b)
        if z:
            state["z"] += len(z.compress(b))

    for path, size, kind in entries:
        if kind == tarfile.DIRTYPE:
            out(header(path + "/", 0, kind, 0o755))
            continue
        mode = 0o755 if path.startswith("bin/") else 0o644
        out(header(path, size, kind, mode))
        if path in ROOT_FILES:
            out(ROOT_FILES[path])
        else:
            content(r, size, text, out)
        out(b"\0" * pad(size))
    out(b"\0" * (2 * BLOCK))
    if z:
        state["z"] += len(z.flush())
    return h.hexdigest(), state["size"], state["z"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", default="1")
    ap.add_argument("--variant", choices=["base", "bump", "mass"], default="base")
    ap.add_argument("--out", required=True)
    ap.add_argument("--created", default="2024-06-03T00:00:00Z")
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--arch", default="amd64", help="the config's architecture (Go name)")
    args = ap.parse_args()

    text = corpus(args.seed)
    sizes = layer_sizes(args.seed)
    diff_ids, names, history = [], [], []
    raw = packed = 0
    with open(args.out, "wb") as f:
        for i in range(LAYERS):
            r, entries = layer_plan(args.seed, i, args.variant, sizes[i])
            at = f.tell()
            placeholder = header("0" * 64 + "/layer.tar", 0)
            f.write(placeholder)
            sha, size, zsize = write_layer(f, r, entries, text, args.measure)
            f.write(b"\0" * pad(size))
            end = f.tell()
            f.seek(at)
            f.write(header(f"{sha}/layer.tar", size))
            f.seek(end)
            diff_ids.append(f"sha256:{sha}")
            names.append(f"{sha}/layer.tar")
            history.append({"created": args.created, "created_by": f"runnerctl bench: layer {i}"})
            raw += size
            packed += zsize
        config = json.dumps({
            "architecture": args.arch,
            "os": "linux",
            "created": args.created,
            "config": {"Cmd": ["/bin/bash"], "Env": ENV, "WorkingDir": "/root"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }, separators=(",", ":")).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps([{
            "Config": config_name,
            "RepoTags": ["nixos:bench"],
            "Layers": names,
        }], separators=(",", ":")).encode()
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            f.write(header(name, len(data)))
            f.write(data)
            f.write(b"\0" * pad(len(data)))
        f.write(b"\0" * (2 * BLOCK))
    summary = {"layers": LAYERS, "layer_bytes": raw, "changed_layer": CHANGED,
               "changed_layer_diff_id": diff_ids[CHANGED]}
    if args.measure:
        summary["gzip1_bytes"] = packed
        summary["ratio"] = round(raw / packed, 3)
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
