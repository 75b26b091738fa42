"""Go duration parsing and formatting; expected values are Go's own (checked against `go` 1.x)."""

from __future__ import annotations

import random

import pytest

from pyslicer.durations import (
    HOUR,
    MICROSECOND,
    MILLISECOND,
    MINUTE,
    NANOSECOND,
    SECOND,
    format_go_duration,
    format_go_duration_ns,
    parse_go_duration,
    parse_go_duration_ns,
)
from pyslicer.errors import InvalidArgument

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)

# Go's time_test.go parseDurationTests, plus a few of ours.
VALID = [
    ("0", 0),
    ("5s", 5 * SECOND),
    ("30s", 30 * SECOND),
    ("1478s", 1478 * SECOND),
    ("-5s", -5 * SECOND),
    ("+5s", 5 * SECOND),
    ("-0", 0),
    ("+0", 0),
    ("0s", 0),
    ("00s", 0),
    ("0.0s", 0),
    ("-0s", 0),
    ("5.0s", 5 * SECOND),
    ("5.6s", 5 * SECOND + 600 * MILLISECOND),
    ("5.s", 5 * SECOND),
    (".5s", 500 * MILLISECOND),
    ("1.0s", 1 * SECOND),
    ("1.00s", 1 * SECOND),
    ("1.004s", 1 * SECOND + 4 * MILLISECOND),
    ("1.0040s", 1 * SECOND + 4 * MILLISECOND),
    ("100.00100s", 100 * SECOND + 1 * MILLISECOND),
    ("10ns", 10 * NANOSECOND),
    ("11us", 11 * MICROSECOND),
    ("12µs", 12 * MICROSECOND),  # U+00B5 micro sign
    ("12μs", 12 * MICROSECOND),  # U+03BC greek mu
    ("13ms", 13 * MILLISECOND),
    ("14s", 14 * SECOND),
    ("15m", 15 * MINUTE),
    ("16h", 16 * HOUR),
    ("3h30m", 3 * HOUR + 30 * MINUTE),
    ("10.5s4m", 4 * MINUTE + 10 * SECOND + 500 * MILLISECOND),
    ("-2m3.4s", -(2 * MINUTE + 3 * SECOND + 400 * MILLISECOND)),
    ("1h2m3s4ms5us6ns", HOUR + 2 * MINUTE + 3 * SECOND + 4 * MILLISECOND + 5 * MICROSECOND + 6),
    ("39h9m14.425s", 39 * HOUR + 9 * MINUTE + 14 * SECOND + 425 * MILLISECOND),
    ("1m30s", 90 * SECOND),
    ("5m", 300 * SECOND),
    ("1s1s", 2 * SECOND),
    ("1.5h", 90 * MINUTE),
    ("52763797000ns", 52763797000),
    ("0.3333333333333333333h", 20 * MINUTE),
    ("9007199254740993ns", (1 << 53) + 1),
    ("9223372036854775807ns", INT64_MAX),
    ("9223372036854775.807us", INT64_MAX),
    ("9223372036s854ms775us807ns", INT64_MAX),
    ("-9223372036854775808ns", INT64_MIN),
    ("-9223372036854775.808us", INT64_MIN),
    ("-9223372036s854ms775us808ns", INT64_MIN),
    ("-2562047h47m16.854775808s", INT64_MIN),
    ("2562047h47m16.854775807s", INT64_MAX),
    ("0.100000000000000000000h", 6 * MINUTE),
    ("0.830103483285477580700h", 49 * MINUTE + 48 * SECOND + 372539827),
    ("0.000000001s", 1),
    ("0.0000000001s", 0),  # below a nanosecond truncates, as in Go
    ("1.9999999999ns", 1),
    ("1.00000000000000000000000000001h", HOUR),
]

INVALID = [
    "",
    "3",
    "10",
    "-",
    "+",
    "s",
    ".",
    "-.",
    ".s",
    "+.s",
    "-.s",
    "1d",
    "1w",
    "1y",
    "1S",
    "1H",
    "1Ms",
    "1sec",
    "1 s",
    " 1s",
    "1s ",
    "\t1s",
    "1s\n",
    "1_000s",
    "1,5s",
    "1e3s",
    "0x10s",
    "abc",
    "1s1",
    "1h1",
    "1..5s",
    "1.5.s",
    "--1s",
    "+-1s",
    "-+1s",
    "1s-1s",
    "00",
    "0.0",
    "-00",
    "\u0663s",  # Arabic-Indic digit three: Go only takes ASCII digits
    "\uff11s",  # fullwidth digit one
    "1\uff53",  # fullwidth s
    "\x85\x85",
    "hello world",
    "\ufffd",
    "null",
    "inf",
    "nan",
    "1e9",
    # overflow
    "9223372036854775810ns",
    "9223372036854775808ns",
    "-9223372036854775809ns",
    "9223372036854776us",
    "3000000h",
    "9223372036854775.808us",
    "9223372036854ms775us808ns",
    "2562048h",
    "2562047h47m16.854775808s",
    "18446744073709551616ns",
    "99999999999999999999999h",
]


@pytest.mark.parametrize(("text", "ns"), VALID)
def test_parse_valid(text: str, ns: int) -> None:
    assert parse_go_duration_ns(text) == ns
    assert parse_go_duration(text) == ns / SECOND


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_go_duration(text)
    assert info.value.message.startswith("invalid duration ")
    assert info.value.code == "invalid_argument"


def test_parse_seconds_examples() -> None:
    assert parse_go_duration("30s") == 30.0
    assert parse_go_duration("5m") == 300.0
    assert parse_go_duration("1m30s") == 90.0
    assert parse_go_duration("250ms") == 0.25
    assert parse_go_duration("-1.5h") == -5400.0
    assert parse_go_duration("0") == 0.0
    assert isinstance(parse_go_duration("1s"), float)


def test_error_messages_quote_the_input() -> None:
    with pytest.raises(InvalidArgument, match=r'^invalid duration "abc"$'):
        parse_go_duration("abc")
    with pytest.raises(InvalidArgument, match=r'^invalid duration ""$'):
        parse_go_duration("")
    with pytest.raises(InvalidArgument, match=r'invalid duration "10": missing unit'):
        parse_go_duration("10")
    with pytest.raises(InvalidArgument, match=r'invalid duration "1d": unknown unit "d"'):
        parse_go_duration("1d")
    with pytest.raises(InvalidArgument, match=r'invalid duration "3000000h": out of range'):
        parse_go_duration("3000000h")


def test_error_message_escapes_quotes_and_control_characters() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_go_duration('1"s')
    assert (
        info.value.message == 'invalid duration "1\\"s": unknown unit "\\"s" (expected one of ns, us, µs, ms, s, m, h)'
    )
    with pytest.raises(InvalidArgument) as info:
        parse_go_duration("1s\n")
    assert "\n" not in info.value.message
    assert "\\n" in info.value.message


@pytest.mark.parametrize("value", [None, 5, 1.5, b"1s", ["1s"]])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidArgument, match="invalid duration"):
        parse_go_duration(value)  # type: ignore[arg-type]


# Go's time_test.go durationTests.
FORMATTED = [
    (0, "0s"),
    (1, "1ns"),
    (999, "999ns"),
    (1000, "1µs"),
    (1100, "1.1µs"),
    (2200 * MICROSECOND, "2.2ms"),
    (3300 * MILLISECOND, "3.3s"),
    (4 * MINUTE + 5 * SECOND, "4m5s"),
    (4 * MINUTE + 5001 * MILLISECOND, "4m5.001s"),
    (5 * HOUR + 6 * MINUTE + 7001 * MILLISECOND, "5h6m7.001s"),
    (8 * MINUTE + 1, "8m0.000000001s"),
    (HOUR, "1h0m0s"),
    (90 * SECOND, "1m30s"),
    (500 * MILLISECOND, "500ms"),
    (999_999_999, "999.999999ms"),
    (SECOND, "1s"),
    (-SECOND, "-1s"),
    (-1, "-1ns"),
    (-1500 * MICROSECOND, "-1.5ms"),
    (INT64_MAX, "2562047h47m16.854775807s"),
    (INT64_MIN, "-2562047h47m16.854775808s"),
]


@pytest.mark.parametrize(("ns", "text"), FORMATTED)
def test_format_ns(ns: int, text: str) -> None:
    assert format_go_duration_ns(ns) == text
    assert parse_go_duration_ns(text) == ns


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (-0.0, "0s"),
        (90, "1m30s"),
        (90.0, "1m30s"),
        (0.5, "500ms"),
        (0.1, "100ms"),
        (0.001, "1ms"),
        (1e-6, "1µs"),
        (1e-9, "1ns"),
        (4e-10, "0s"),  # rounds to the nearest nanosecond
        (6e-10, "1ns"),
        (1.5, "1.5s"),
        (30, "30s"),
        (300, "5m0s"),
        (3600, "1h0m0s"),
        (86400, "24h0m0s"),
        (3723.5, "1h2m3.5s"),
        (-90, "-1m30s"),
        (-0.25, "-250ms"),
    ],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_format_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="not finite"):
        format_go_duration(value)


@pytest.mark.parametrize("ns", [INT64_MAX + 1, INT64_MIN - 1, 10**30])
def test_format_ns_rejects_out_of_range(ns: int) -> None:
    with pytest.raises(ValueError, match="int64"):
        format_go_duration_ns(ns)


@pytest.mark.parametrize("seconds", [1e12, -1e12, 10**12, 9223372037])
def test_format_seconds_rejects_out_of_range(seconds: float) -> None:
    with pytest.raises(ValueError, match="int64"):
        format_go_duration(seconds)


@pytest.mark.parametrize("value", [True, "1s", None])
def test_format_rejects_non_numbers(value: object) -> None:
    with pytest.raises(TypeError):
        format_go_duration(value)  # type: ignore[arg-type]


def test_round_trip_random() -> None:
    rng = random.Random(20240601)
    for _ in range(5000):
        ns = rng.randint(-(10 ** rng.randint(0, 18)), 10 ** rng.randint(0, 18))
        text = format_go_duration_ns(ns)
        assert parse_go_duration_ns(text) == ns, text


def test_round_trip_seconds() -> None:
    for seconds in (0.25, 1, 1.5, 30, 59.999, 60, 61, 3599, 3600, 7322.125):
        assert parse_go_duration(format_go_duration(seconds)) == pytest.approx(seconds, abs=1e-9)
