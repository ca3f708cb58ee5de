# Entry points for people and CI. Every recipe hands over to runnerctl (or to
# a script); none of them holds logic of its own.

set positional-arguments

# How to start runnerctl: the binary named by RUNNERCTL_BIN (the flake's `ci`
# dev shell sets it), else a release build of this checkout.
runnerctl := env("RUNNERCTL_BIN", "cargo run --release --quiet --")

# List the recipes.
default:
    @just --list

# Update flake.lock, build, push the image, commit and git-push (runnerctl bump).
bump *args:
    {{ runnerctl }} bump "$@"

# Build and push the image for the flake.lock as committed (runnerctl release).
release *args:
    {{ runnerctl }} release "$@"

# Move latest, unstable and the date tag to the image of this checkout's
# flake.lock, pushed earlier with --hold (runnerctl promote).
promote *args:
    {{ runnerctl }} promote "$@"

# Move latest and unstable back to a date tag, another tag or a digest
# (runnerctl rollback TARGET).
rollback target *args:
    {{ runnerctl }} rollback "$@"

# Show what the last bump or release did, stage by stage (runnerctl status).
status *args:
    {{ runnerctl }} status "$@"

# Delete old date tags and the content tags left with them; never what a
# floating, candidate, kept or unknown tag points to (runnerctl prune --keep N).
prune *args:
    {{ runnerctl }} prune "$@"

# Install the test dependencies and run the tests.
test:
    bash scripts/test

# A real bump end to end in a throwaway workspace, twice; the second is a no-op.
demo:
    bash scripts/demo

# First image only (bootstrap.yml, on a stock ubuntu-latest
# container): install Nix with the Determinate Systems installer. Containers
# have no systemd, hence --init none: no daemon, Nix runs as root directly.
bootstrap-nix:
    curl --proto '=https' --tlsv1.2 -sSf -L https://install.determinate.systems/nix | sh -s -- install linux --init none --no-confirm --extra-conf "sandbox = false"
    echo /nix/var/nix/profiles/default/bin >> "$GITHUB_PATH"

# CI only (bump.yml): let `git push` over HTTPS authenticate with the token in
# RUNNERCTL_GIT_TOKEN. The helper reads the variable each time git asks, so
# the token is never written to disk or passed on a command line.
git-credentials-from-env:
    git config --global credential.helper '!f() { test "$1" = get && printf "username=%s\npassword=%s\n" "${RUNNERCTL_GIT_USER:-runnerctl}" "$RUNNERCTL_GIT_TOKEN"; }; f'
