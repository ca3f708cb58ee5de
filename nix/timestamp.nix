# Unix seconds -> the UTC calendar forms the image uses, computed at evaluation
# time without `date`, so the result depends on nothing but the input.
#
#   (import ./timestamp.nix 1782723713).iso8601 == "2026-06-29T09:01:53Z"
#   (import ./timestamp.nix 1782723713).date    == "20260629"
#
# Days are turned into a proleptic Gregorian date by counting 400-year eras
# from 0000-03-01, so that the leap day falls at the end of each counted year.
seconds:
assert builtins.isInt seconds && seconds >= 0;
let
  inherit (builtins) div toString stringLength;

  pad =
    width: n:
    let
      s = toString n;
      fill = width - stringLength s;
    in
    if fill > 0 then builtins.concatStringsSep "" (builtins.genList (_: "0") fill) + s else s;

  days = div seconds 86400;
  secondOfDay = seconds - days * 86400;

  # Days since 0000-03-01, split into 400-year eras of 146097 days each.
  sinceMarch = days + 719468;
  era = div sinceMarch 146097;
  dayOfEra = sinceMarch - era * 146097;
  yearOfEra =
    div (dayOfEra - div dayOfEra 1460 + div dayOfEra 36524 - div dayOfEra 146096) 365;
  dayOfYear = dayOfEra - (365 * yearOfEra + div yearOfEra 4 - div yearOfEra 100);
  # Months counted from March (0) to February (11), 153 days per 5 months.
  marchMonth = div (5 * dayOfYear + 2) 153;
  day = dayOfYear - div (153 * marchMonth + 2) 5 + 1;
  month = if marchMonth < 10 then marchMonth + 3 else marchMonth - 9;
  year = yearOfEra + era * 400 + (if month <= 2 then 1 else 0);

  hour = div secondOfDay 3600;
  minute = div (secondOfDay - hour * 3600) 60;
  second = secondOfDay - hour * 3600 - minute * 60;

  date = "${pad 4 year}-${pad 2 month}-${pad 2 day}";
in
{
  iso8601 = "${date}T${pad 2 hour}:${pad 2 minute}:${pad 2 second}Z";
  date = "${pad 4 year}${pad 2 month}${pad 2 day}";
}
