"""Typed values over JSON, host side (DESIGN.md section 3).

A value travels as plain JSON plus a ``types`` map from JSON Pointer (RFC 6901) to a
type name, e.g. ``{"when": "2024-03-01T12:00:00Z"}`` with ``{"/when": "date"}``.

    encode(value)              Python value -> (json_value, types)   (results: naive datetime = UTC)
    encode_scope(mapping)      the same for a scope; a naive datetime is an error
    decode(json_value, types)  -> Python value                       (results: zone-less date = UTC)
    decode_scope(json, types)  the same for a scope; a zone-less date is an error

Every problem raises ValueError whose message names the JSON Pointer and the type; the
caller maps it to RequestError (scope) or ExecutionError (result). To forward a request's
JSON unchanged (a small "bigint" must stay a JavaScript BigInt), call decode_scope only to
validate it. The same forms are checked by harness/run.py and harness/run.js.
Standard library only.
"""
from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

__all__ = ["TYPE_NAMES", "MAX_DEPTH", "MAX_SAFE_INT", "encode", "encode_scope", "decode",
           "decode_scope", "escape_pointer", "parse_pointer"]

TYPE_NAMES = frozenset({"date", "bigint", "bytes", "decimal", "float", "undefined"})
MAX_DEPTH = 500  # containers nested deeper than this are refused
MAX_SAFE_INT = 2**53 - 1  # larger ints travel as "bigint" so JavaScript keeps every digit

_DATE_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?"
                      r"(Z|[+-]\d\d:\d\d)?", re.ASCII)
_BIGINT_RE = re.compile(r"-?[0-9]+", re.ASCII)
_BASE64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII)
_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|NaN|-?Infinity",
                         re.ASCII)
_INDEX_RE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


# -- JSON Pointer ---------------------------------------------------------------------------

def escape_pointer(key: str) -> str:
    """One reference token: "~" -> "~0", "/" -> "~1"."""
    return key.replace("~", "~0").replace("/", "~1")


def parse_pointer(pointer: str) -> list[str]:
    """The unescaped reference tokens of a pointer ("" is the root: no tokens)."""
    if not isinstance(pointer, str) or (pointer and not pointer.startswith("/")):
        raise ValueError(f"bad JSON Pointer {pointer!r}: it must be empty or start with '/'")
    if pointer == "":
        return []
    parts = pointer[1:].split("/")
    for part in parts:
        if re.search(r"~[^01]|~$", part):
            raise ValueError(f"bad JSON Pointer {pointer!r}: '~' must be followed by 0 or 1")
    return [part.replace("~1", "/").replace("~0", "~") for part in parts]


# -- encode -------------------------------------------------------------------------------

def encode(value: Any, *, scope: bool = False) -> tuple[Any, dict[str, str]]:
    """Python value -> (JSON-compatible value, types map)."""
    types: dict[str, str] = {}
    return _encode(value, "", 0, types, set(), scope), types


def encode_scope(scope: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A scope mapping -> (JSON object, types map); naive datetimes are refused."""
    if not isinstance(scope, Mapping):
        raise ValueError(f"the scope must be a mapping, not {type(scope).__name__!r}")
    return encode(dict(scope), scope=True)


def _encode(v: Any, path: str, depth: int, types: dict, active: set, scope: bool) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        if -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
            return int(v)
        return _tag(types, path, "bigint", str(int(v)))
    if isinstance(v, float):
        if v != v:
            return _tag(types, path, "float", "NaN")
        if v in (float("inf"), float("-inf")):
            return _tag(types, path, "float", "Infinity" if v > 0 else "-Infinity")
        return float(v)
    if isinstance(v, datetime):
        if v.utcoffset() is None:
            if scope:
                raise ValueError(_describe(v, path, "a date in scope needs a time zone"))
            v = v.replace(tzinfo=timezone.utc)  # a naive result is taken as UTC
        return _tag(types, path, "date", v.isoformat())
    if isinstance(v, Decimal):
        return _tag(types, path, "decimal", str(v))
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            data = binascii.b2a_base64(v, newline=False)
        except (TypeError, ValueError, BufferError):
            raise ValueError(_describe(v, path, "not a contiguous byte buffer")) from None
        return _tag(types, path, "bytes", data.decode("ascii"))
    if isinstance(v, (list, tuple, dict)):
        if depth >= MAX_DEPTH:
            raise ValueError(_describe(v, path, f"nested deeper than {MAX_DEPTH} levels"))
        if id(v) in active:
            raise ValueError(_describe(v, path, "circular reference"))
        active.add(id(v))
        # plain loops, not comprehensions: one stack frame per level of nesting
        if isinstance(v, dict):
            for key in v:
                if not isinstance(key, str):
                    raise ValueError(_describe(v, path, f"key of type {type(key).__name__!r}"))
            out: Any = {}
            for key, item in v.items():
                out[key] = _encode(item, f"{path}/{escape_pointer(key)}", depth + 1, types, active, scope)
        else:  # tuples become arrays
            out = []
            for i, item in enumerate(v):
                out.append(_encode(item, f"{path}/{i}", depth + 1, types, active, scope))
        active.discard(id(v))
        return out
    raise ValueError(_describe(v, path))


def _tag(types: dict, path: str, name: str, text: str) -> str:
    types[path] = name
    return text


def _describe(value: Any, path: str, reason: str | None = None) -> str:
    text = f"cannot represent a value of type {type(value).__name__!r} at {path or 'the root'}"
    return f"{text} ({reason})" if reason else text


# -- decode -------------------------------------------------------------------------------

def decode(value: Any, types: Mapping[str, str] | None = None, *, scope: bool = False) -> Any:
    """(JSON value, types map) -> Python value. The input is never modified: containers on
    the way to a typed value are copied, the rest is shared."""
    if types is None:
        types = {}
    if not isinstance(types, Mapping):
        raise ValueError(f"'types' must be an object, not {type(types).__name__!r}")
    if scope and not isinstance(value, dict):
        raise ValueError("the scope must be a JSON object")
    holder = [value]  # gives the root a parent, so "" is handled like any other pointer
    copied: set[int] = set()
    for pointer, name in types.items():
        if not isinstance(name, str) or name not in TYPE_NAMES:
            raise ValueError(f"unknown type {name!r} at {pointer!r}")
        parts = parse_pointer(pointer)
        if scope and not parts:
            raise ValueError("the scope itself cannot be typed (pointer '')")
        parent: Any = holder
        key: Any = 0
        for part in parts:
            node = parent[key]
            if id(node) not in copied and isinstance(node, (list, dict)):
                node = list(node) if isinstance(node, list) else dict(node)
                parent[key] = node
                copied.add(id(node))
            if isinstance(node, list) and _INDEX_RE.fullmatch(part) and int(part) < len(node):
                part = int(part)
            elif not (isinstance(node, dict) and part in node):
                raise ValueError(f"JSON Pointer {pointer!r} ({name}) names no value")
            parent, key = node, part
        parent[key] = _decode_leaf(parent[key], name, pointer, scope)
    return holder[0]


def decode_scope(value: Any, types: Mapping[str, str] | None = None) -> dict[str, Any]:
    """decode() for a scope: a JSON object, and every date must carry a time zone."""
    return decode(value, types, scope=True)


def _decode_leaf(v: Any, name: str, pointer: str, scope: bool) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"bad {name!r} value at {pointer!r}: expected {expected}, got {v!r:.60}")

    if name == "undefined":
        if v is not None:
            raise bad("null")
        return None
    if not isinstance(v, str):
        raise bad("a string")
    if name == "date":
        match = _DATE_RE.fullmatch(v)
        if not match:
            raise bad("an ISO 8601 date-time such as 2024-03-01T12:00:00Z")
        if match[8] is None and scope:
            raise ValueError(f"bad 'date' value at {pointer!r}: a date in scope needs a time zone, got {v!r}")
        try:
            return _datetime(match)
        except ValueError as exc:
            raise bad(f"a valid date-time ({exc})") from None
    if name == "bigint":
        if not _BIGINT_RE.fullmatch(v):
            raise bad("a decimal integer string")
        try:
            return int(v)
        except ValueError as exc:  # more digits than int() accepts
            raise bad(f"a shorter integer ({exc})") from None
    if name == "bytes":
        if not _BASE64_RE.fullmatch(v):
            raise bad("padded base64")
        return binascii.a2b_base64(v)
    if name == "decimal":
        if not _DECIMAL_RE.fullmatch(v):
            raise bad("a decimal number string")
        return Decimal(v)
    if v not in _NON_FINITE:  # "float"
        raise bad("'NaN', 'Infinity' or '-Infinity'")
    return _NON_FINITE[v]


def _datetime(match: re.Match) -> datetime:
    """A datetime from a _DATE_RE match (no fromisoformat: it varies across versions)."""
    year, month, day, hour, minute = (int(match[i]) for i in range(1, 6))
    second = int(match[6] or 0)
    micro = int((match[7] or "").ljust(6, "0")[:6])  # nanoseconds are truncated
    zone = match[8]
    if zone is None or zone in ("Z", "+00:00", "-00:00"):
        tz = timezone.utc  # no zone (a result) is taken as UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
