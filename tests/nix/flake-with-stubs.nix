# The outputs of the flake in `flakeDir`, called with a stand-in nixpkgs
# input: ./stubs.nix for the packages, `lib` for its lib (./stub-lib.nix, or
# the real nixpkgs lib), and the rev and lastModified from the flake's own
# flake.lock, as the real input would have.
#
# `selfInfo` is what Nix would put on `self` besides the outputs (rev and
# shortRev, dirtyShortRev for a dirty tree, or nothing).
{
  flakeDir,
  lib,
  selfInfo,
}:
let
  flake = import (flakeDir + "/flake.nix");
  lock = builtins.fromJSON (builtins.readFile (flakeDir + "/flake.lock"));
  rootInputs = lock.nodes.${lock.root}.inputs;
  locked = lock.nodes.${rootInputs.nixpkgs}.locked;

  nixpkgs = {
    inherit lib;
    inherit (locked) rev lastModified;
    outPath = "/nix/store/00000000000000000000000000000000-source";
    legacyPackages = lib.genAttrs [
      "x86_64-linux"
      "aarch64-linux"
      "x86_64-darwin"
      "aarch64-darwin"
    ] (system: import ./stubs.nix { inherit system; });
  };

  self = outputs // selfInfo // { outPath = toString flakeDir; };
  outputs = flake.outputs { inherit self nixpkgs; };
in
{
  inherit flake outputs;
}
