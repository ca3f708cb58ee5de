# A small flake for a `runs-on: nixos` job to build and check: what a job in
# your own repository does, without fetching anything. The image's workflow
# (.forgejo/workflows/image.yml) runs it in the candidate image before the
# candidate is promoted, and the tests run it with nektos/act.
{
  description = "A job's smallest flake: one derivation built by the image's /bin/sh";

  outputs = { self }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forEach = f: builtins.listToAttrs
        (map (system: { name = system; value = f system; }) systems);
      greeting = system: derivation {
        name = "nixos-job-greeting";
        inherit system;
        builder = "/bin/sh";
        args = [ "-c" "echo 'built in the nixos runner image' > \"$out\"" ];
      };
    in
    {
      packages = forEach (system: { default = greeting system; });
      checks = forEach (system: { default = greeting system; });
    };
}
