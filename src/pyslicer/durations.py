"""Go ``time.Duration`` text: parsing (``?timeout=30s``) and formatting (``1m30s``).

Clients written in Go send whatever ``Duration.String`` produced and expect the daemon to accept
exactly what ``time.ParseDuration`` accepts, so both are ports of the Go standard library rather
than a looser regex.
"""

from __future__ import annotations

import math

from pyslicer.errors import InvalidArgument

__all__ = [
    "format_go_duration",
    "format_go_duration_ns",
    "parse_go_duration",
    "parse_go_duration_ns",
    "parse_positive_duration",
]

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS: dict[str, int] = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "µs": MICROSECOND,  # U+00B5 MICRO SIGN
    "μs": MICROSECOND,  # U+03BC GREEK SMALL LETTER MU
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}

# Go's arithmetic is on uint64 with an int64 result; these bounds reproduce its overflow errors.
_U63 = 1 << 63
_INT64_MAX = _U63 - 1
_INT64_MIN = -_U63


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    out.append('"')
    return "".join(out)


def _is_digit(ch: str) -> bool:
    # str.isdigit() would also accept non-ASCII digits such as "٣", which Go rejects.
    return "0" <= ch <= "9"


def parse_go_duration_ns(text: str) -> int:
    """Parse a Go duration string into integer nanoseconds, exactly as ``time.ParseDuration``."""
    if not isinstance(text, str):
        raise InvalidArgument(f"invalid duration {text!r}: expected a string")
    orig = text

    def invalid(detail: str = "") -> InvalidArgument:
        suffix = f": {detail}" if detail else ""
        return InvalidArgument(f"invalid duration {_quote(orig)}{suffix}")

    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid()

    total = 0
    while s:
        if not (s[0] == "." or _is_digit(s[0])):
            raise invalid()

        # Integer part: Go's leadingInt fails on uint64 overflow.
        i = 0
        whole = 0
        while i < len(s) and _is_digit(s[i]):
            if whole > _U63 // 10:
                raise invalid()
            whole = whole * 10 + (ord(s[i]) - 48)
            if whole > _U63:
                raise invalid()
            i += 1
        pre = i > 0
        s = s[i:]

        # Fraction: Go's leadingFraction silently drops digits it cannot hold.
        frac = 0
        scale = 1.0
        post = False
        if s and s[0] == ".":
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and _is_digit(s[i]):
                if not overflow:
                    if frac > _INT64_MAX // 10:
                        overflow = True
                    else:
                        y = frac * 10 + (ord(s[i]) - 48)
                        if y > _U63:
                            overflow = True
                        else:
                            frac = y
                            scale *= 10
                i += 1
            post = i > 0
            s = s[i:]
        if not pre and not post:
            raise invalid()

        i = 0
        while i < len(s) and not (s[i] == "." or _is_digit(s[i])):
            i += 1
        if i == 0:
            raise invalid("missing unit (one of ns, us, µs, ms, s, m, h)")
        unit_text, s = s[:i], s[i:]
        unit = _UNITS.get(unit_text)
        if unit is None:
            raise invalid(f"unknown unit {_quote(unit_text)} (expected one of ns, us, µs, ms, s, m, h)")

        if whole > _U63 // unit:
            raise invalid("out of range")
        value = whole * unit
        if frac > 0:
            # Go computes the fraction in float64 and truncates; mirror it for identical results.
            value += int(float(frac) * (float(unit) / scale))
            if value > _U63:
                raise invalid("out of range")
        total += value
        if total > _U63:
            raise invalid("out of range")

    if neg:
        return -total
    if total > _INT64_MAX:
        raise invalid("out of range")
    return total


def parse_go_duration(text: str) -> float:
    """Parse a Go duration string (``"1m30s"``, ``"-1.5h"``, ``"250ms"``) into seconds.

    Raises :class:`InvalidArgument` for anything ``time.ParseDuration`` rejects. Negative durations
    are returned as such; callers that need a positive timeout check the sign themselves.
    """
    return parse_go_duration_ns(text) / SECOND


def parse_positive_duration(text: str, field: str) -> float:
    """Seconds of a Go duration that must be positive (a timeout, a ttl). Raises :class:`InvalidArgument`
    naming ``field``, with code ``invalid_<field>``."""
    try:
        seconds = parse_go_duration(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field}: {exc.message}", code=f"invalid_{field}") from None
    if seconds <= 0:
        raise InvalidArgument(f"{field}: {text!r} must be positive", code=f"invalid_{field}")
    return seconds


def _fmt_frac(value: int, prec: int) -> tuple[str, int]:
    """Go's fmtFrac: the fraction of value/10**prec without trailing zeros, and the quotient."""
    digits: list[str] = []
    printed = False
    for _ in range(prec):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
        value //= 10
    if not printed:
        return "", value
    return "." + "".join(reversed(digits)), value


def format_go_duration_ns(ns: int) -> str:
    """Format integer nanoseconds like Go's ``Duration.String``."""
    if not _INT64_MIN <= ns <= _INT64_MAX:
        raise ValueError(f"duration {ns}ns is outside Go's int64 nanosecond range")
    neg = ns < 0
    u = -ns if neg else ns
    if u == 0:
        return "0s"
    if u < SECOND:
        if u < MICROSECOND:
            prec, unit = 0, "ns"
        elif u < MILLISECOND:
            prec, unit = 3, "µs"
        else:
            prec, unit = 6, "ms"
        frac, u = _fmt_frac(u, prec)
        text = f"{u}{frac}{unit}"
    else:
        frac, u = _fmt_frac(u, 9)
        text = f"{u % 60}{frac}s"
        u //= 60
        if u > 0:
            text = f"{u % 60}m{text}"
            u //= 60
            # Stop at hours, as Go does: days are not a fixed length.
            if u > 0:
                text = f"{u}h{text}"
    return "-" + text if neg else text


def format_go_duration(seconds: float) -> str:
    """Format seconds like Go's ``Duration.String``: ``90`` -> ``"1m30s"``, ``0.5`` -> ``"500ms"``.

    The value is rounded to the nearest nanosecond, Go's resolution.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"duration must be a number of seconds, not {type(seconds).__name__}")
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise ValueError(f"duration {seconds} is not finite")
    ns = seconds * SECOND if isinstance(seconds, int) else round(seconds * SECOND)
    return format_go_duration_ns(ns)
