# The sources flake.nix hands to its two Rust derivations, made by the REAL
# nixpkgs lib.fileset (it needs Nix >= 2.14), so they are store paths holding
# exactly the selected files. The packages around them are stand-ins.
#
# `flakeDir` is the checkout or a scratch copy of it; `nixpkgsLib` the
# nixpkgs lib/ directory (../shared/nixpkgs-lib/lib). Both arrive as strings.
{ flakeDir, nixpkgsLib }:
let
  inherit
    (import ./flake-with-stubs.nix {
      flakeDir = /. + flakeDir;
      lib = import (/. + nixpkgsLib);
      selfInfo = { };
    })
    outputs
    ;
  args = derivation: derivation.stubArgs;
in
{
  crateSource = (args outputs.packages.x86_64-linux.runnerctl).src;
  evalTestSource = (args outputs.checks.x86_64-linux.nix-eval-tests).src;
}
