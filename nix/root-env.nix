# The programs on the image's PATH (/bin): a shell, the tools checkouts and
# caches use, Nix, and node for the Forgejo runner's JavaScript actions.
{
  buildEnv,
  runCommand,
  bash,
  coreutils,
  git,
  curl,
  nix,
  gnutar,
  gzip,
  xz,
  zstd,
  bzip2,
  nodejs,
}:
buildEnv {
  name = "runner-root-env";
  paths = [
    bash
    coreutils
    git
    curl
    (import ./nix-binaries.nix { inherit runCommand nix; })
    gnutar
    gzip
    xz
    zstd
    bzip2
    nodejs
  ];
  pathsToLink = [ "/bin" ];
}
