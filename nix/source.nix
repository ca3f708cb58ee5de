# Which files of this repository each of flake.nix's Rust derivations is
# built from. Its own file so that tests/source_selection.rs can evaluate it
# with the real nixpkgs `lib`, copy the selection out of the store and build it
# with cargo.
{ lib }:
let
  # Everything `cargo build` and `cargo test --bins` read:
  crateFiles = [
    ../Cargo.toml
    ../Cargo.lock
    # sets RUNNERCTL_GIT_REV, which `runnerctl --version` (src/cli.rs) needs
    ../build.rs
    ../src
    # the demo's stand-in nixpkgs and fixture runner flake, which src/demo.rs
    # embeds (the tests use the same files)
    ../demo
    # Cargo finds the test targets here
    ../tests
    # proptest replays these known failures in the unit tests
    ../proptest-regressions
    (lib.fileset.maybeMissing ../benches)
  ];
in
{
  inherit crateFiles;

  # runnerctl's sources only, so editing nix/ or the workflows does not
  # rebuild it.
  crateSource = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions crateFiles;
  };

  # The offline integration tests also read the flake, nix/, the justfile and
  # the workflows.
  evalTestSource = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions (
      crateFiles
      ++ [
        ../flake.nix
        ../flake.lock
        ../nix
        ../justfile
        ../.forgejo
      ]
    );
  };
}
