# The Forgejo runner image: a NixOS userland that `runs-on: nixos` jobs run in.
#
# Every package comes in as an argument, so the same expression is built from
# nixpkgs by flake.nix and evaluated against stand-ins by the tests.
{
  dockerTools,
  buildEnv,
  runCommand,
  writeTextDir,
  bash,
  coreutils,
  git,
  curl,
  nix,
  gnutar,
  gzip,
  xz,
  zstd,
  bzip2,
  nodejs,
  cacert,
  iana-etc,

  # Where the image comes from; these only feed the OCI labels.
  nixpkgsRev,
  nixpkgsLastModified,
  sourceUrl,
  revision,

  substituters ? [ "https://cache.nixos.org" ],
  trustedPublicKeys ? [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ],
}:
let
  # The image is as old as the nixpkgs snapshot it is made of, never "now",
  # so two builds of the same lock produce the same bytes.
  snapshot = import ./timestamp.nix nixpkgsLastModified;

  caBundle = "/etc/ssl/certs/ca-bundle.crt";

  # What `cat /etc/os-release` tells a job: a NixOS userland, versioned by
  # its nixpkgs snapshot.
  osRelease = ''
    NAME=NixOS
    ID=nixos
    PRETTY_NAME="NixOS runner image (nixpkgs ${snapshot.date})"
    VERSION_ID="${snapshot.date}"
    BUILD_ID="${nixpkgsRev}"
    HOME_URL="${sourceUrl}"
  '';

  scaffold = import ./scaffold.nix { inherit runCommand coreutils osRelease; };

  contents = [
    (import ./root-env.nix {
      inherit
        buildEnv
        runCommand
        bash
        coreutils
        git
        curl
        nix
        gnutar
        gzip
        xz
        zstd
        bzip2
        nodejs
        ;
    })
    (import ./nix-conf.nix { inherit writeTextDir substituters trustedPublicKeys; })
    (import ./certs.nix { inherit runCommand cacert; })
    # /etc/services and /etc/protocols, for getservbyname() and friends.
    iana-etc
    scaffold.files
  ];
in
# One layer per store path (up to maxLayers), so a bump re-uploads only the
# paths that changed. Uncompressed: skopeo compresses layers as it pushes
# them, and runnerctl reads the archive without unpacking it first.
dockerTools.buildLayeredImage {
  name = "nixos";
  tag = snapshot.date;
  compressor = "none";
  inherit contents;
  inherit (scaffold) extraCommands;

  # Jobs run Nix against the store they start with: register it.
  includeNixDB = true;

  # Docker refuses images deeper than 125 layers; 100 gives most of the
  # closure a layer of its own and leaves room for images built on top.
  maxLayers = 100;

  created = snapshot.iso8601;
  # File times inside the layers stay constant, so a layer whose store path
  # did not change stays byte-identical when the snapshot date moves.
  mtime = "1970-01-01T00:00:01Z";

  config = {
    Cmd = [ "/bin/bash" ];
    Env = [
      # What `nix profile install` adds comes first, as on NixOS; the
      # image's own programs are in /bin.
      "PATH=/root/.nix-profile/bin:/nix/var/nix/profiles/default/bin:/bin"
      "SSL_CERT_FILE=${caBundle}"
      "NIX_SSL_CERT_FILE=${caBundle}"
      "HOME=/root"
      "USER=root"
      # `nix-shell -p hello` and `<nixpkgs>` resolve through the flake
      # registry, like `nix shell nixpkgs#hello`.
      "NIX_PATH=nixpkgs=flake:nixpkgs"
    ];
    Labels = {
      "org.opencontainers.image.source" = sourceUrl;
      "org.opencontainers.image.revision" = revision;
      "org.opencontainers.image.created" = snapshot.iso8601;
      "org.opencontainers.image.version" = snapshot.date;
      "org.nixos.nixpkgs.rev" = nixpkgsRev;
    };
  };
}
