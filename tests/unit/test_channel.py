"""The host's reading of the result channel. The snippet can write anything
there before the harness does (Python finds its private fd with fstat; a cold
JavaScript run keeps it on fd 3): whatever it holds, the answer is a Result or
an ExecutionError, never an exception of the host's."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jail
from jail import _codec, _process, _run
from jail._policy import DEFAULT_LIMITS
from jail._report import error_body, result_body

GOOD = b'{"ok": true, "value": {"a": [1, "x"]}, "types": {}}'
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def outcome_of(result: bytes, exit_code=0) -> _process.Outcome:
    stats = _process.Stats(backend="native", wall_ms=1.0, cpu_ms=1.0, peak_memory=0, exit_code=exit_code,
                           signal=None, cgroup="none")
    return _process.Outcome(stdout=b"", stderr=b"", result=result, stats=stats)


def interpret(result: bytes, exit_code=0):
    """The Result, or the ExecutionError, of a run whose channel held result;
    either must make an HTTP answer."""
    try:
        outcome = _run._interpret(outcome_of(result, exit_code), DEFAULT_LIMITS)
    except jail.ExecutionError as error:
        json.dumps(error_body(error), allow_nan=False)
        return error
    json.dumps(result_body(outcome), allow_nan=False)
    return outcome


def error_name(result: bytes):
    outcome = interpret(result)
    assert isinstance(outcome, jail.ExecutionError), f"taken as a result: {outcome.value!r:.80}"
    return outcome.name


def message(**fields) -> bytes:
    return json.dumps(fields).encode()


def error_message(**error) -> bytes:
    return message(ok=False, error={"name": "ValueError", "message": "ValueError: x", "line": 1, "column": 2,
                                    "traceback": None, **error})


TAMPERED = {
    "deep list": b"[" * 100_000,
    "deep list before the message": b"[" * 100_000 + GOOD,
    "deep object": b'{"a":' * 100_000,
    "deep value": b'{"ok": true, "types": {}, "value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge float": b'{"ok": true, "value": 1e999999, "types": {}}',
    "huge mantissa": b'{"ok": true, "value": 1' + b"0" * 400 + b'.5, "types": {}}',
    "huge int": b'{"ok": true, "value": ' + b"9" * 100_000 + b', "types": {}}',
    "NaN": b'{"ok": true, "value": NaN, "types": {}}',
    "Infinity": b'{"ok": true, "value": [-Infinity], "types": {}}',
    "bad UTF-8": b'{"ok": true, "value": "\xff\xfe", "types": {}}',
    "surrogate bytes": b'{"ok": true, "value": "\xed\xa0\x80", "types": {}}',
    "UTF-16": GOOD.decode().encode("utf-16"),
    "BOM": b"\xef\xbb\xbf" + GOOD,
    "NUL inside": b'{"ok": true, "value": "a\x00b", "types": {}}',
    "NUL after": GOOD + b"\x00",
    "partial": GOOD[:-1],
    "two messages": GOOD + GOOD,
    "split with junk between": GOOD[:8] + b"#" + GOOD[8:],
    "not an object": b"[true]",
    "ok not a bool": message(ok=1, value=1, types={}),
    "no value": message(ok=True, types={}),
    "no error": message(ok=False),
    "error not an object": message(ok=False, error="ValueError"),
    "line not an int": error_message(line="x"),
    "line a bool": error_message(line=True),
    "line a float": error_message(line=1.5),
    "column a list": error_message(column=[1]),
    "name not a string": error_message(name=["MemoryError"]),
    "message not a string": error_message(name="RangeError", message=5),
    "traceback an object": error_message(traceback={"a": 1}),
    "types a list": message(ok=True, value=1, types=["/", "date"]),
    "types a string": message(ok=True, value=1, types="date"),
    "types null": message(ok=True, value=1, types=None),
    "type name a list": message(ok=True, value="1", types={"": ["bigint"]}),
    "type name unknown": message(ok=True, value="1", types={"": "complex"}),
    "bad pointer": message(ok=True, value={"a": "1"}, types={"a": "bigint"}),
    "decimal beyond any exponent": message(ok=True, value="1e99999999999999999999", types={"": "decimal"}),
}


@pytest.mark.parametrize("data", TAMPERED.values(), ids=TAMPERED)
def test_anything_but_a_harness_message_is_a_result_error(data):
    assert error_name(data) == "ResultError"


@pytest.mark.parametrize("value,types", [
    ({"a": "2024-03-01T12:00:00Z"}, {"/b": "date"}),  # names no value
    ([1], {"/1": "bigint"}),
    ([1], {"/0/x": "bigint"}),
    ("x", {"": "bigint"}),
    (None, {"": "date"}),
    ("0000-01-01T00:00:00Z", {"": "date"}),  # a date Python cannot hold
    ("9" * 5000, {"": "bigint"}),
    ({"a": "1"}, {"": "undefined", "/a": "bigint"}),
])
def test_a_typed_value_the_host_cannot_decode_is_a_type_error(value, types):
    error = interpret(message(ok=True, value=value, types=types))
    assert isinstance(error, jail.ExecutionError) and error.name == "TypeError"
    assert error.message.startswith("TypeError: ") and repr(next(iter(types))) in error.message


def test_harness_messages_are_still_read():
    assert interpret(GOOD).output == {"a": [1, "x"]}
    # A message split across reads is one message once the reads are joined.
    assert interpret(b"".join([GOOD[:7], GOOD[7:30], GOOD[30:]])).output == {"a": [1, "x"]}
    # Lone surrogates travel escaped (a Python str or a JavaScript string may hold one).
    assert interpret(b'{"ok": true, "value": "\\ud800", "types": {}}').output == "\ud800"
    nested = [[]]
    for _ in range(_codec.MAX_DEPTH - 1):
        nested = [nested]
    assert interpret(message(ok=True, value=nested, types={})).value == nested
    assert interpret(message(ok=True, value="12", types={"": "bigint"})).output == 12
    assert interpret(message(ok=True, value=10**21, types={})).output == 10**21  # JSON.stringify(1e21)
    error = interpret(error_message(line=None, column=None, traceback="tb"))
    assert (error.name, error.message, error.line, error.traceback) == ("ValueError", "ValueError: x", None, "tb")
    error = interpret(error_message(name="RangeError", message="RangeError: Array buffer allocation failed"))
    assert isinstance(error, jail.MemoryLimitExceeded)
    assert error_name(GOOD.replace(b"true", b"false")) == "ResultError"
    assert interpret(GOOD, exit_code=1).name == "ResultError"  # a cold run's message counts once it exited 0
    assert interpret(b"").name == "ExitError"


# -- fuzzing --------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes_are_a_result_or_an_execution_error(data):
    interpret(data)


# Leaves a harness never writes come first: they are what the fuzzer should try most.
HOSTILE = [float("nan"), float("-inf"), 1e308, 2**53 + 1, True, "RangeError", "MemoryError", "allocation failed",
           "2024-03-01T12:00:00Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "12", "9" * 4400,
           "1e99999999999999999999", "NaN", "-Infinity", "QUJD", "QUJ", "\ud800"]
LEAVES = st.sampled_from(HOSTILE) | st.none() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from("abc"), inner, max_size=3), max_leaves=8)
POINTERS = (st.sampled_from(["", "/a", "/b", "/0", "/1", "/a/0", "/a/b", "/-", "/01", "~", "/~2", "/~0", "a"])
            | st.text(max_size=4))
TYPES = st.dictionaries(POINTERS, st.sampled_from(sorted(_codec.TYPE_NAMES)) | JSON, max_size=3) | JSON
ERROR = st.fixed_dictionaries({}, optional=dict.fromkeys(["name", "message", "line", "column", "traceback"], JSON))
RESULTS = st.fixed_dictionaries({"ok": st.just(True), "value": JSON}, optional={"types": TYPES})
ERRORS = st.fixed_dictionaries({"ok": st.just(False), "error": ERROR | JSON})
MESSAGES = RESULTS | ERRORS | st.fixed_dictionaries(
    {}, optional={"ok": JSON, "value": JSON, "types": TYPES, "error": ERROR | JSON})


@FUZZ
@given(RESULTS | ERRORS, st.integers(0, 3))
def test_any_well_formed_message_is_a_result_or_an_execution_error(fields, exit_code):
    interpret(json.dumps(fields).encode(), exit_code)


@FUZZ
@given(MESSAGES, st.binary(max_size=4), st.binary(max_size=4))
def test_any_json_message_is_a_result_or_an_execution_error(fields, prefix, suffix):
    interpret(json.dumps(fields).encode())
    interpret(prefix + json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass") + suffix)


@FUZZ
@given(MESSAGES, st.integers(1, 200_000))
def test_any_message_behind_deep_nesting_is_a_result_error(fields, depth):
    assert error_name(b"[" * depth + json.dumps(fields).encode()) == "ResultError"


# -- end to end -----------------------------------------------------------------------------

FLOOD = {
    # The private fd: the one pipe the snippet may write to besides stdout and stderr.
    "python": "import os, stat\nfor fd in range(3, 256):\n    try:\n        if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
              "            os.write(fd, b'[' * 100000)\n    except OSError:\n        pass\nreturn 1",
    "javascript": "process.mainModule.require('fs').writeSync(3, '['.repeat(100000))\nreturn 1",
}


@pytest.mark.parametrize("language", FLOOD)
def test_a_snippet_that_floods_its_channel_with_brackets_gets_a_result_error(language):
    with pytest.raises(jail.ExecutionError) as caught:
        jail.run(FLOOD[language], language, policy=jail.Policy())
    assert caught.value.name == "ResultError"
    assert not caught.value.stats.warm  # cold: a JavaScript zygote child has no fd 3
