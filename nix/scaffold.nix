# The parts of a Unix root that programs assume exist.
#
# `files` is a store path merged into the image root. `extraCommands` makes
# the directories that must be writable or need a mode the Nix store cannot
# hold; dockerTools runs it in the root of the final layer before packing.
#
# No nixbld users: nix.conf sets `build-users-group =`, so root builds
# directly and Nix never looks them up.
{
  runCommand,
  coreutils,
  osRelease,
}:
let
  passwd = ''
    root:x:0:0:System administrator:/root:/bin/bash
    nobody:x:65534:65534:Unprivileged account:/var/empty:/bin/false
  '';
  group = ''
    root:x:0:
    nogroup:x:65534:
  '';
  nsswitch = ''
    passwd: files
    group: files
    shadow: files
    hosts: files dns
    networks: files
    protocols: files
    services: files
  '';
in
{
  files =
    runCommand "runner-scaffold"
      {
        inherit
          passwd
          group
          nsswitch
          osRelease
          ;
        passAsFile = [
          "passwd"
          "group"
          "nsswitch"
          "osRelease"
        ];
      }
      ''
        mkdir -p "$out/etc" "$out/usr/bin"
        cp "$passwdPath" "$out/etc/passwd"
        cp "$groupPath" "$out/etc/group"
        cp "$nsswitchPath" "$out/etc/nsswitch.conf"
        cp "$osReleasePath" "$out/etc/os-release"
        ln -s ${coreutils}/bin/env "$out/usr/bin/env"
      '';

  extraCommands = ''
    mkdir -p -m 1777 tmp
    mkdir -p -m 0700 root
  '';
}
