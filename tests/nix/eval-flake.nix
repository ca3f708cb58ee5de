# flake.nix with its inputs replaced by stand-ins, as plain data.
#
# `selfInfo` is what Nix would put on `self` besides the outputs (rev, or
# nothing for a dirty tree). The stand-in nixpkgs input takes its rev and
# lastModified from flake.lock, as the real input would.
selfInfo:
let
  flake = import ../../flake.nix;
  lock = builtins.fromJSON (builtins.readFile ../../flake.lock);
  rootInputs = lock.nodes.${lock.root}.inputs;
  locked = lock.nodes.${rootInputs.nixpkgs}.locked;
  lib = import ./stub-lib.nix;

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

  self = outputs // selfInfo // { outPath = toString ../..; };
  outputs = flake.outputs { inherit self nixpkgs; };
in
{
  inherit (flake) description inputs;
  outputs = import ./inspect.nix outputs;
}
