#!/usr/bin/env bash
# Push benchmark: runnerctl's push stage against the seed's skopeo loop, on
# the same generated image and the same local registry. See BENCHMARKS.md.
#
#   bash bench/push.sh [--repeats N] [--seed S] [--cases a,b,c,d] [--keep] [--json-out FILE]
#   bash bench/push.sh --multiarch [--keep]    the two-system bump (bench/multiarch.py)
#
# Installs what is missing (scripts/setup; python3 via apt-get), builds
# runnerctl (`cargo build --release`) and the byte-counting proxy
# (bench/proxy.rs, rustc), then runs bench/push.py. As root, the driver runs
# in a private mount namespace whose /var/lib/containers/cache (skopeo's
# blob-info cache) is an empty directory of its own: the benchmark clears it
# before every run without touching the machine's cache, and nothing else
# on the machine can warm it in between. Exits 1 if a target is missed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'bench: %s\n' "$*" >&2; }

bash scripts/setup

if ! command -v python3 >/dev/null 2>&1 || [ ! -x /usr/bin/python3 ]; then
	say "installing python3"
	if [ "$(id -u)" -eq 0 ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 ||
			{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3; }
	else
		sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3
	fi
fi

# Nothing from the caller's environment may steer runnerctl, nix or git.
unset NIX_CONFIG NIX_REMOTE NIX_USER_CONF_FILES GIT_DIR GIT_WORK_TREE REGISTRY_AUTH_FILE
for v in $(compgen -e); do
	case "$v" in RUNNERCTL_*) unset "$v" ;; esac
done

say "building runnerctl and examples/compress-limit (cargo build --release)"
cargo build --release --locked
cargo build --release --locked --example compress-limit

mkdir -p target/bench
if [ ! -x target/bench/push-proxy ] || [ bench/proxy.rs -nt target/bench/push-proxy ]; then
	say "building the byte-counting proxy (rustc -O bench/proxy.rs)"
	rustc -O --edition 2021 -o target/bench/push-proxy bench/proxy.rs
fi

# --multiarch: the two-system bump instead (bench/multiarch.py).
if [ "${1:-}" = --multiarch ]; then
	shift
	driver=(python3 bench/multiarch.py "$@")
else
	driver=(python3 bench/push.py "$@")
fi
if [ "$(id -u)" -eq 0 ] && [ -z "${BENCH_SHARED_SKOPEO_CACHE:-}" ]; then
	private=$(mktemp -d "${TMPDIR:-/tmp}/runnerctl-bench-skopeo-cache.XXXXXX")
	trap 'rm -rf "$private"' EXIT
	mkdir -p /var/lib/containers/cache
	# shellcheck disable=SC2016
	if unshare --mount --propagation private -- sh -c \
		'mount --bind "$1" /var/lib/containers/cache' sh "$private" 2>/dev/null; then
		status=0
		unshare --mount --propagation private -- sh -c \
			'mount --bind "$1" /var/lib/containers/cache && shift && exec "$@"' \
			sh "$private" "${driver[@]}" || status=$?
		exit "$status"
	fi
	say "no private mount namespace here (unshare failed): clearing the machine's skopeo cache instead"
fi
exec "${driver[@]}"
