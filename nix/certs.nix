# The CA bundle at the two paths tools look for it. Both are links to the
# same file in the cacert store path.
{ runCommand, cacert }:
let
  bundle = "${cacert}/etc/ssl/certs/ca-bundle.crt";
in
runCommand "runner-ca-certificates" { } ''
  mkdir -p "$out/etc/ssl/certs"
  ln -s ${bundle} "$out/etc/ssl/certs/ca-bundle.crt"
  ln -s ${bundle} "$out/etc/ssl/certs/ca-certificates.crt"
''
