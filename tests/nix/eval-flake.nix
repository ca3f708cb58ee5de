# flake.nix with its inputs replaced by stand-ins (./flake-with-stubs.nix),
# as plain data.
selfInfo:
let
  evaluated = import ./flake-with-stubs.nix {
    flakeDir = ../..;
    lib = import ./stub-lib.nix;
    inherit selfInfo;
  };
in
{
  inherit (evaluated.flake) description inputs;
  outputs = import ./inspect.nix evaluated.outputs;
}
