# Turns what the stand-in builders recorded into plain data for JSON.
#
# A builder's result becomes { stub, path, args }; a stand-in package becomes
# its store path; paths become strings (never copied into the store);
# functions become "<function>".
let
  inspect =
    value:
    if builtins.isAttrs value then
      if value ? stub && value ? stubArgs then
        {
          inherit (value) stub;
          path = value.outPath;
          args = inspect value.stubArgs;
        }
      else if value ? outPath then
        toString value.outPath
      else
        builtins.mapAttrs (_: inspect) value
    else if builtins.isList value then
      map inspect value
    else if builtins.isPath value then
      toString value
    else if builtins.isFunction value then
      "<function>"
    else
      value;
in
inspect
