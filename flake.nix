{
  description = "The NixOS runner image for Forgejo Actions, and runnerctl, which keeps it fresh";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      # This repository's web address, the image's org.opencontainers.image.source.
      sourceUrl = "https://forgejo.example/infra/runners";

      # The revision of the software the image packages: the nixpkgs
      # snapshot. Deliberately not this repository's commit: the image is a
      # function of flake.lock and nix/ only, so the image `bump` builds
      # before committing and the one `release` builds on main after the
      # commit are the same store path, and the release is a no-op.
      revision = nixpkgs.rev;

      # What runnerctl is built from: nix/source.nix, so the tests can
      # evaluate the same selection with the real nixpkgs lib.
      inherit (import ./nix/source.nix { inherit lib; }) crateSource evalTestSource;

      # The commit `runnerctl --version` names: Nix knows it for a clean tree
      # (newer Nix also gives `dirtyShortRev` for a dirty one); with neither,
      # build.rs says "unknown revision". Every commit is then a new runnerctl
      # derivation: the price of a --version that tells the truth.
      sourceRev = self.shortRev or self.dirtyShortRev or null;

      forSystem =
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};

          nixos = pkgs.callPackage ./nix/image.nix {
            nixpkgsRev = nixpkgs.rev;
            nixpkgsLastModified = nixpkgs.lastModified;
            inherit sourceUrl revision;
          };

          runnerctl = pkgs.callPackage ./nix/runnerctl.nix {
            src = crateSource;
            inherit sourceRev;
          };

          # The stub-evaluation, flake and workflow tests, run by `nix flake
          # check` against a throwaway Nix store inside the build.
          nix-eval-tests = pkgs.callPackage ./nix/runnerctl.nix {
            pname = "runnerctl-nix-eval-tests";
            src = evalTestSource;
            cargoTestFlags = [
              "--test"
              "image_nix"
              "--test"
              "flake_outputs"
              "--test"
              "workflows"
            ];
            testTools = [ pkgs.nix ];
            preCheck = ''
              export HOME="$TMPDIR/home"
              export NIX_STORE_DIR="$TMPDIR/nix/store"
              export NIX_STATE_DIR="$TMPDIR/nix/var/nix"
              export NIX_LOG_DIR="$TMPDIR/nix/var/log/nix"
              export NIX_CONF_DIR="$TMPDIR/nix/etc"
              mkdir -p "$HOME" "$NIX_CONF_DIR"
              nix-store --init
            '';
          };
        in
        {
          packages = {
            inherit nixos runnerctl;
            default = runnerctl;
          };

          apps.default = {
            type = "app";
            program = "${runnerctl}/bin/runnerctl";
            meta.description = "Update, build, push and commit the runner image";
          };

          devShells = {
            default = pkgs.mkShell {
              packages = [
                pkgs.rustc
                pkgs.cargo
                pkgs.clippy
                pkgs.rustfmt
                pkgs.rust-analyzer
                pkgs.skopeo
                pkgs.just
                pkgs.git
                pkgs.nix
              ];
            };

            # What the Forgejo workflows run their steps in: runnerctl built
            # from this checkout, and just for the recipes that call it.
            ci = pkgs.mkShellNoCC {
              packages = [
                runnerctl
                pkgs.just
              ];
              RUNNERCTL_BIN = "${runnerctl}/bin/runnerctl";
            };
          };

          checks = {
            inherit runnerctl nix-eval-tests;
          };

          formatter = pkgs.nixfmt-tree;
        };

      perSystem = lib.genAttrs systems forSystem;

      collect = output: lib.mapAttrs (_: outputs: outputs.${output}) perSystem;
    in
    {
      packages = collect "packages";
      apps = collect "apps";
      devShells = collect "devShells";
      checks = collect "checks";
      formatter = collect "formatter";
    };
}
