# The few nixpkgs `lib` functions that flake.nix and nix/*.nix use, written
# on builtins. Paths are turned into strings right away so that nothing is
# ever copied into the store while the tests evaluate.
let
  fileset = {
    toSource =
      { root, fileset }:
      {
        stub = "lib.fileset.toSource";
        root = toString root;
        inherit fileset;
      };
    # Like the real one, refuses paths that do not exist.
    unions = map (
      f:
      if builtins.isPath f then
        assert builtins.pathExists f || throw "lib.fileset.unions: ${toString f} does not exist";
        toString f
      else
        f
    );
    maybeMissing = path: if builtins.pathExists path then toString path else null;
  };
in
{
  inherit fileset;

  genAttrs =
    names: f:
    builtins.listToAttrs (
      map (name: {
        inherit name;
        value = f name;
      }) names
    );

  inherit (builtins) mapAttrs;

  importTOML = path: builtins.fromTOML (builtins.readFile path);

  makeBinPath = packages: builtins.concatStringsSep ":" (map (p: "${p}/bin") packages);

  licenses.mit = {
    spdxId = "MIT";
  };
}
