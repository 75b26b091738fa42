"""JSON for the frames, through the C accelerator ``_json`` directly.

``import json`` pulls in ``json.decoder``, which imports ``re`` and compiles its patterns in pure Python:
under TCG that alone is a good part of the agent's start-up. ``dumps`` and ``loads`` here give what
``json.dumps(body, separators=(",", ":"))`` and ``json.loads`` give (tests/test_protocol.py checks both
against json), and fall back to ``json`` itself for whatever the fast path does not cover, errors included.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def _not_serializable(obj: object) -> object:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


class _ScanContext:
    """The attributes ``_json.make_scanner`` reads, set as ``json.JSONDecoder()`` sets them."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def _json_functions() -> tuple[Callable[[Mapping[str, Any]], str], Callable[[bytes], object]]:
    try:
        import _json

        encoder = _json.make_encoder(
            None, _not_serializable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
        )
        scanner = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # the context is duck-typed
    except (ImportError, AttributeError, TypeError):  # a Python without the accelerator: the real thing
        import json

        def slow_dumps(body: Mapping[str, Any]) -> str:
            return json.dumps(body, separators=(",", ":"))

        return slow_dumps, json.loads

    def fast_dumps(body: Mapping[str, Any]) -> str:
        return "".join(encoder(body, 0))

    def fast_loads(data: bytes) -> object:
        # What json.loads(data) does for a well-formed UTF-8 object (json.detect_encoding says UTF-8 when the
        # first two bytes are not NUL). Anything else, errors included, takes the long way for the same
        # result or the same exception: the C scanner cannot even raise its errors without json.decoder.
        if data[:1] == b"{" and data[1:2] != b"\0":
            try:
                text = data.decode("utf-8", "surrogatepass")
                value, end = scanner(text, 0)
            except Exception:
                end = -1
            else:
                size = len(text)
                while end < size and text[end] in " \t\n\r":
                    end += 1
                if end == size:
                    return value
        import json

        return json.loads(data)

    return fast_dumps, fast_loads


dumps, loads = _json_functions()
