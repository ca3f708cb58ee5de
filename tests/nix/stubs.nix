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

  # The arguments the real builders take, written down from nixpkgs. Their
  # argument sets have no `...`, so real Nix refuses any other argument
  # ("called with unexpected argument"); the stand-ins refuse it too, so a
  # misspelt argument in nix/ fails here as it would fail against nixpkgs.
  takes = {
    # pkgs/build-support/docker/default.nix: `streamLayeredImage = { … }:`,
    # a closed argument set. name … passthru as read in that file;
    # architecture, mtime, uid, gid, uname, gname and includeNixDB as listed
    # in nixpkgs' doc/build-helpers/images/dockertools.section.md, which
    # documents that function's inputs; meta, layeringPipeline and debug were
    # added to it later (2025).
    "dockerTools.streamLayeredImage" = {
      required = [ "name" ];
      optional = [
        "tag"
        "fromImage"
        "contents"
        "config"
        "architecture"
        "created"
        "mtime"
        "uid"
        "gid"
        "uname"
        "gname"
        "maxLayers"
        "extraCommands"
        "fakeRootCommands"
        "enableFakechroot"
        "includeStorePaths"
        "includeNixDB"
        "passthru"
        "meta"
        "layeringPipeline"
        "debug"
      ];
    };

    # Same file: `buildLayeredImage = { name, compressor ? "gz", ... }@args:`
    # hands everything but `compressor` to streamLayeredImage, so it takes
    # exactly streamLayeredImage's arguments plus `compressor`.
    "dockerTools.buildLayeredImage" = {
      inherit (takes."dockerTools.streamLayeredImage") required;
      optional = takes."dockerTools.streamLayeredImage".optional ++ [ "compressor" ];
    };

    # pkgs/build-support/buildenv/default.nix: the closed argument set of
    # `extendDrvArgs` ("Function argument set pattern doesn't have an
    # ellipsis"); `paths` is the only one without a default.
    buildEnv = {
      required = [ "paths" ];
      optional = [
        "manifest"
        "ignoreCollisions"
        "ignoreSingleFileOutputs"
        "includeClosures"
        "checkCollisionContents"
        "pathsToLink"
        "extraOutputsToInstall"
        "extraPrefix"
        "postBuild"
        "derivationArgs"
        "name"
        "pname"
        "version"
        "nativeBuildInputs"
        "buildInputs"
        "passthru"
        "meta"
      ];
    };
  };

  # docker/default.nix's `compressors`: the values `compressor` may take.
  compressors = [
    "none"
    "gz"
    "zstd"
  ];

  backticked = names: builtins.concatStringsSep ", " (map (name: "`${name}`") names);

  # `args` if `builder` takes exactly these arguments, else an evaluation
  # error that names the wrong ones and lists the right ones.
  checked =
    builder: args:
    let
      inherit (takes.${builder}) required optional;
      unexpected = builtins.filter (name: !(builtins.elem name (required ++ optional))) (
        builtins.attrNames args
      );
      missing = builtins.filter (name: !(args ? ${name})) required;
    in
    if unexpected != [ ] then
      throw "${builder} (stand-in) called with unexpected argument ${backticked unexpected}; nixpkgs' ${builder} takes only ${backticked (required ++ optional)}"
    else if missing != [ ] then
      throw "${builder} (stand-in) called without required argument ${backticked missing}"
    else
      args;

  # A checked builder: the fake derivation of `built`, which exists only once
  # the arguments pass, so even a look at its `type` runs the check.
  builtChecked =
    builder: name: args:
    builtins.seq (checked builder args) (built builder (name args) args);

  layeredImage =
    builder: args:
    let
      compressor = args.compressor or "gz";
    in
    if builtins.elem compressor compressors then
      builtChecked builder (checkedArgs: checkedArgs.name) args
    else
      throw "${builder} (stand-in): in docker image ${args.name or "?"}: compressor must be one of ${backticked compressors}, not `${toString compressor}`";

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
        "iana-etc"
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

    buildEnv = builtChecked "buildEnv" (
      checkedArgs: checkedArgs.name or "${checkedArgs.pname}-${checkedArgs.version}"
    );
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
      buildLayeredImage = layeredImage "dockerTools.buildLayeredImage";
      streamLayeredImage = builtChecked "dockerTools.streamLayeredImage" (checkedArgs: checkedArgs.name);
    };
  };
in
pkgs
