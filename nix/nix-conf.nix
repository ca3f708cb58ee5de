# /etc/nix/nix.conf for the runner image.
#
# Jobs run as root in a container without a daemon, so there are no build
# users and no sandbox (it would need privileges the container lacks).
{
  writeTextDir,
  substituters,
  trustedPublicKeys,
}:
writeTextDir "etc/nix/nix.conf" ''
  build-users-group =
  experimental-features = nix-command flakes
  sandbox = false
  substituters = ${builtins.concatStringsSep " " substituters}
  trusted-public-keys = ${builtins.concatStringsSep " " trustedPublicKeys}
''
