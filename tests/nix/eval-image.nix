# nix/image.nix evaluated against the stand-in package set.
#
# `args` are image.nix's own parameters (nixpkgsRev, nixpkgsLastModified,
# sourceUrl, revision, and optionally substituters / trustedPublicKeys). The
# result is the dockerTools call, with every builder call inside it spelled
# out by ./inspect.nix.
args:
let
  pkgs = import ./stubs.nix { };
in
import ./inspect.nix (pkgs.callPackage ../../nix/image.nix args)
