# A stand-in for nixpkgs: just enough of it for nix/*.nix and flake.nix.
#
# Packages are plain attribute sets with a fake store path, so they can be
# interpolated into strings. Builders (buildEnv, runCommand, dockerTools, ...)
# build nothing: they record which builder was called and with what, and
# ./inspect.nix turns that record into JSON for the tests.
{
  system ? "x86_64-linux",
}:
let
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";

  package = name: {
    type = "derivation";
    inherit name system;
    outPath = storePath name;
  };

  # What every builder returns: a fake derivation that remembers its call.
  built = builder: name: args: {
    type = "derivation";
    inherit name system;
    outPath = storePath name;
    meta = args.meta or { };
    stub = builder;
    stubArgs = args;
  };

  leaves = builtins.listToAttrs (
    map
      (name: {
        inherit name;
        value = package name;
      })
      [
        "bash"
        "bzip2"
        "cacert"
        "cargo"
        "clippy"
        "coreutils"
        "curl"
        "git"
        "gnutar"
        "gzip"
        "just"
        "makeWrapper"
        "nix"
        "nixfmt-tree"
        "nodejs"
        "rust-analyzer"
        "rustc"
        "rustfmt"
        "skopeo"
        "xz"
        "zstd"
      ]
  );

  pkgs = leaves // {
    inherit system;
    lib = import ./stub-lib.nix;

    callPackage =
      fn: overrides:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // overrides);

    buildEnv = args: built "buildEnv" args.name args;
    runCommand =
      name: env: script:
      built "runCommand" name { inherit name env script; };
    writeTextDir =
      path: text:
      built "writeTextDir" (baseNameOf path) { inherit path text; };
    mkShell = args: built "mkShell" (args.name or "shell") args;
    mkShellNoCC = args: built "mkShellNoCC" (args.name or "shell") args;

    rustPlatform.buildRustPackage = args: built "rustPlatform.buildRustPackage" args.pname args;

    dockerTools = {
      buildImage = args: built "dockerTools.buildImage" args.name args;
      buildLayeredImage = args: built "dockerTools.buildLayeredImage" args.name args;
      streamLayeredImage = args: built "dockerTools.streamLayeredImage" args.name args;
    };
  };
in
pkgs
