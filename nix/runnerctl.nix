# runnerctl built from this repository's Cargo.lock.
#
# `sourceRev` is the commit `runnerctl --version` names. The build has no
# .git, so build.rs reads it from RUNNERCTL_SOURCE_REV instead; without one it
# says "unknown revision".
#
# The default build runs only the unit tests (`--bins`): the integration
# tests need a registry, git remotes and a writable Nix store. `cargoTestFlags`
# and `testTools` let flake.nix build a second derivation that runs the
# offline integration tests instead.
{
  lib,
  rustPlatform,
  makeWrapper,
  skopeo,
  git,
  nix,
  src,
  sourceRev ? null,
  pname ? "runnerctl",
  cargoTestFlags ? [ "--bins" ],
  testTools ? [ ],
  preCheck ? "",
}:
rustPlatform.buildRustPackage (
  {
    inherit
      pname
      src
      cargoTestFlags
      preCheck
      ;
    version = (lib.importTOML ../Cargo.toml).package.version;

    cargoLock.lockFile = ../Cargo.lock;

    nativeBuildInputs = [ makeWrapper ];
    nativeCheckInputs = testTools;

    # runnerctl runs skopeo and git. skopeo comes with it; git and nix are
    # appended, so the ones the user already has (and configured) win.
    postInstall = ''
      wrapProgram "$out/bin/runnerctl" \
        --prefix PATH : ${lib.makeBinPath [ skopeo ]} \
        --suffix PATH : ${
          lib.makeBinPath [
            git
            nix
          ]
        }
    '';

    meta = {
      description = "Keeps a Nix-built Forgejo runner image fresh";
      mainProgram = "runnerctl";
      license = lib.licenses.mit;
    };
  }
  // (
    if sourceRev == null then { } else { RUNNERCTL_SOURCE_REV = sourceRev; }
  )
)
