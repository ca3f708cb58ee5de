# nix/timestamp.nix applied to each of a list of unix seconds.
map (import ../../nix/timestamp.nix)
