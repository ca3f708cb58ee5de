# Only the executables of Nix, as symlinks into its store path.
#
# Putting `nix` itself into the root buildEnv would also link its share/,
# etc/profile.d and lib/ into the image root; the image needs only bin/.
{ runCommand, nix }:
runCommand "nix-binaries" { } ''
  mkdir -p "$out/bin"
  for exe in ${nix}/bin/*; do
    ln -s "$exe" "$out/bin/"
  done
''
