"""Go-style duration strings ("1h30m", "250ms", "0s"), as CRI-O's config takes them."""

from __future__ import annotations

import re

# Seconds per unit. Go accepts both micro signs (U+00B5 and U+03BC) besides "us".
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Longer units first so "ms" is never read as "m" followed by a stray "s".
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
# Go stores durations as int64 nanoseconds; anything longer does not parse there either.
_MAX_SECONDS = (2**63 - 1) / 1e9


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string; ValueError naming the problem otherwise.

    The grammar is Go's time.ParseDuration: an optional sign, then one or more
    decimal numbers each followed by a unit (ns, us, µs, ms, s, m, h); a bare
    "0" is also accepted.
    """
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string, got {type(text).__name__}")
    body = text
    sign = 1.0
    if body[:1] in ("+", "-"):
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"invalid duration {text!r}: empty")
    total = 0.0
    position = 0
    while position < len(body):
        match = _PART.match(body, position)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: expected a number followed by a unit (ns, us, ms, s, m, h)"
                f" at {body[position:]!r}"
            )
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if total > _MAX_SECONDS:
        raise ValueError(f"invalid duration {text!r}: longer than about 292 years")
    return sign * total
