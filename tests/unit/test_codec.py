"""jail/_codec.py: the shared vectors round-trip, and what cannot travel says where and what."""
import collections
import json
import math
import pathlib
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from snippet_cases import same

from jail import _codec as codec

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests/conformance/codec_vectors.json").read_text())






def by_name(vectors):
    return [pytest.param(v, id=v["name"]) for v in vectors]


PYTHON_VECTORS = [v for v in VECTORS if "python" in v["languages"]]
OTHER_VECTORS = [v for v in VECTORS if "python" not in v["languages"]]


def test_the_table_covers_every_type_in_every_language():
    for language in ("python", "javascript"):
        seen = {t for v in VECTORS if language in v["languages"] for t in v["types"].values()}
        expected = codec.TYPE_NAMES - ({"undefined"} if language == "python" else {"decimal"})
        assert seen >= expected, (language, expected - seen)
    assert any("" in v["types"] for v in VECTORS), "a typed root"
    assert any("~0" in p and "~1" in p for v in VECTORS for p in v["types"]), "escaped pointers"
    assert len(PYTHON_VECTORS) > 30 and OTHER_VECTORS


@pytest.mark.parametrize("vector", by_name(PYTHON_VECTORS))
def test_vector_round_trips(vector):
    before = json.dumps(vector)
    value = codec.decode(vector["json"], vector["types"])
    encoded, types = codec.encode(value)
    assert same(encoded, vector["json"]), (encoded, vector["json"])
    assert types == vector["types"]
    assert json.dumps(vector) == before, "decode must not modify its input"
    # and through real JSON text, as it travels
    assert same(json.loads(json.dumps(encoded, allow_nan=False)), vector["json"])


@pytest.mark.parametrize("vector", by_name(OTHER_VECTORS))
def test_javascript_only_vector_decodes_to_a_stable_python_value(vector):
    value = codec.decode(vector["json"], vector["types"])
    again = codec.decode(*codec.encode(value))
    assert repr(again) == repr(value)


def test_decoded_python_values():
    value = codec.decode(
        {"when": "2024-03-01T12:00:00Z", "off": "2024-03-01T12:00:00.5+05:30", "n": "123456789012345678901234",
         "b": "aGVsbG8=", "d": "1.10", "f": ["NaN", "Infinity", "-Infinity"], "u": None, "plain": 2},
        {"/when": "date", "/off": "date", "/n": "bigint", "/b": "bytes", "/d": "decimal",
         "/f/0": "float", "/f/1": "float", "/f/2": "float", "/u": "undefined"})
    assert value["when"] == datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
    assert value["when"].tzinfo is timezone.utc
    assert value["off"] == datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert value["off"].utcoffset() == timedelta(hours=5, minutes=30)
    assert value["n"] == 123456789012345678901234 and type(value["n"]) is int
    assert value["b"] == b"hello" and type(value["b"]) is bytes
    assert value["d"] == Decimal("1.10") and str(value["d"]) == "1.10"
    assert math.isnan(value["f"][0]) and value["f"][1:] == [math.inf, -math.inf]
    assert value["u"] is None and value["plain"] == 2


def test_javascript_date_forms_decode():
    assert codec.decode("2024-03-01T12:00:00.123Z", {"": "date"}) == \
        datetime(2024, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    assert codec.decode("2024-03-01T12:00:00.123456789Z", {"": "date"}).microsecond == 123456
    assert codec.decode("2024-03-01T12:00Z", {"": "date"}) == datetime(2024, 3, 1, 12, tzinfo=timezone.utc)


def test_encode_python_values():
    value = {"t": (1, 2), "big": -(2**53), "edge": 2**53 - 1, "ba": bytearray(b"\x00\xff"), "mv": memoryview(b"hi"),
             "naive": datetime(2024, 3, 1, 12), "dec": Decimal("-0.5"), "nan": float("nan"), "ok": True,
             "od": collections.OrderedDict(a=1)}
    encoded, types = codec.encode(value)
    assert encoded == {"t": [1, 2], "big": "-9007199254740992", "edge": 9007199254740991, "ba": "AP8=", "mv": "aGk=",
                       "naive": "2024-03-01T12:00:00+00:00", "dec": "-0.5", "nan": "NaN", "ok": True, "od": {"a": 1}}
    assert types == {"/big": "bigint", "/ba": "bytes", "/mv": "bytes", "/naive": "date", "/dec": "decimal",
                     "/nan": "float"}
    assert codec.encode(2) == (2, {}) and type(codec.encode(2)[0]) is int
    assert codec.encode(True) == (True, {})
    assert codec.encode(None) == (None, {})


def test_encode_scope():
    scope, types = codec.encode_scope({"when": datetime(2024, 3, 1, tzinfo=timezone.utc), "n": 10**20})
    assert scope == {"when": "2024-03-01T00:00:00+00:00", "n": "100000000000000000000"}
    assert types == {"/when": "date", "/n": "bigint"}
    with pytest.raises(ValueError, match=r"type 'datetime' at /a/when.*time zone"):
        codec.encode_scope({"a": {"when": datetime(2024, 3, 1)}})
    with pytest.raises(ValueError, match="mapping"):
        codec.encode_scope([1])


class Thing:
    pass


def _gen():
    yield 1


UNREPRESENTABLE = [
    ({"a": [{1, 2}]}, "set", "/a/0"),
    ({"a": [frozenset()]}, "frozenset", "/a/0"),
    ([len], "builtin_function_or_method", "/0"),
    ({"f": lambda: 1}, "function", "/f"),
    ({"x": {"y": Thing()}}, "Thing", "/x/y"),
    ({"g": _gen()}, "generator", "/g"),
    ({"k": {1: "one"}}, "dict", "/k"),
    ({"a/b": {"c~d": complex(1, 2)}}, "complex", "/a~1b/c~0d"),
    ({"d": date(2024, 3, 1)}, "date", "/d"),
    (Thing, "type", "the root"),
]


@pytest.mark.parametrize("value,type_name,where", UNREPRESENTABLE)
def test_unrepresentable_values_name_path_and_type(value, type_name, where):
    with pytest.raises(ValueError) as info:
        codec.encode(value)
    assert str(info.value).startswith(f"cannot represent a value of type '{type_name}' at {where}")


def test_non_string_key_says_which_key_type():
    with pytest.raises(ValueError, match=r"type 'dict' at /k \(key of type 'int'\)"):
        codec.encode({"k": {1: "one"}})


def test_circular_structures_are_refused():
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match=r"type 'list' at /0 \(circular reference\)"):
        codec.encode(loop)
    d = {}
    d["self"] = {"back": d}
    with pytest.raises(ValueError, match=r"type 'dict' at /self/back \(circular reference\)"):
        codec.encode(d)
    shared = [1]
    assert codec.encode([shared, shared]) == ([[1], [1]], {})  # shared is not circular


def test_depth_is_bounded():
    ok = "leaf"
    for _ in range(codec.MAX_DEPTH):
        ok = [ok]
    assert codec.encode(ok)[1] == {}
    with pytest.raises(ValueError, match=rf"type 'list' at (/0){{{codec.MAX_DEPTH}}} \(nested deeper than"):
        codec.encode([ok])


BAD_TYPES = [
    ({"n": "12a"}, {"/n": "bigint"}, "bigint", "/n"),
    ({"n": 12}, {"/n": "bigint"}, "bigint", "/n"),
    ({"b": "abc"}, {"/b": "bytes"}, "bytes", "/b"),
    ({"b": "ab$="}, {"/b": "bytes"}, "bytes", "/b"),
    ({"d": "1,5"}, {"/d": "decimal"}, "decimal", "/d"),
    ({"f": "nan"}, {"/f": "float"}, "float", "/f"),
    ({"f": 1.5}, {"/f": "float"}, "float", "/f"),
    ({"u": 0}, {"/u": "undefined"}, "undefined", "/u"),
    ({"t": "yesterday"}, {"/t": "date"}, "date", "/t"),
    ({"t": "2024-02-30T00:00:00Z"}, {"/t": "date"}, "date", "/t"),
    ({"t": "2024-03-01T12:00:00+24:00"}, {"/t": "date"}, "date", "/t"),
]


@pytest.mark.parametrize("value,types,type_name,pointer", BAD_TYPES)
def test_bad_typed_values_name_pointer_and_type(value, types, type_name, pointer):
    with pytest.raises(ValueError) as info:
        codec.decode(value, types)
    assert f"'{type_name}'" in str(info.value) and f"'{pointer}'" in str(info.value)


@pytest.mark.parametrize("types,match", [
    ({"/x": "money"}, "unknown type 'money'"),
    ({"x": "bigint"}, "bad JSON Pointer 'x'"),
    ({"/x~2": "bigint"}, "bad JSON Pointer"),
    ({"/missing": "bigint"}, "names no value"),
    ({"/x/0": "bigint"}, "names no value"),
    ({"/l/01": "bigint"}, "names no value"),
    ({"/l/5": "bigint"}, "names no value"),
])
def test_bad_type_maps(types, match):
    with pytest.raises(ValueError, match=match):
        codec.decode({"x": "1", "l": ["1", "2"]}, types)


def test_zone_less_date_is_an_error_in_scope_and_utc_in_a_result():
    with pytest.raises(ValueError, match=r"'date' value at '/when'.*time zone"):
        codec.decode_scope({"when": "2024-03-01T12:00:00"}, {"/when": "date"})
    assert codec.decode("2024-03-01T12:00:00", {"": "date"}) == datetime(2024, 3, 1, 12, tzinfo=timezone.utc)


def test_scope_shape():
    with pytest.raises(ValueError, match="JSON object"):
        codec.decode_scope([1], {})
    with pytest.raises(ValueError, match="scope itself"):
        codec.decode_scope({}, {"": "bigint"})
    assert codec.decode_scope({"x": "2"}, {"/x": "bigint"}) == {"x": 2}


def test_decode_copies_only_what_it_changes():
    shared = {"untouched": [1, 2]}
    source = {"a": {"n": "1"}, "s": shared}
    out = codec.decode(source, {"/a/n": "bigint"})
    assert source == {"a": {"n": "1"}, "s": shared}
    assert out == {"a": {"n": 1}, "s": shared}
    assert out["s"] is shared


def test_pointer_helpers():
    assert codec.escape_pointer("a/b~c") == "a~1b~0c"
    assert codec.parse_pointer("") == []
    assert codec.parse_pointer("/") == [""]
    assert codec.parse_pointer("/~01/a~1b/~0") == ["~1", "a/b", "~"]


@pytest.mark.parametrize("name", [{}, [], 1, None])
def test_a_type_name_that_is_not_a_string_is_refused(name):
    with pytest.raises(ValueError, match="unknown type"):
        codec.decode_scope({"x": "1"}, {"/x": name})
