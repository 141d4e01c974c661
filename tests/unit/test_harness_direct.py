"""Both harnesses run directly as plain host subprocesses (no sandbox): the protocol, typed
values, error reports and forgery resistance. The request goes to stdin; the result
channel is a pipe placed on fd 3 of the child."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from snippet_cases import (AFTER_THE_RESULT, BAD_SCOPE_KEYS, BAD_TYPED_SCOPES, EXIT_ERRORS, FORGERIES, HARD_EXITS,
                           JAVASCRIPT_SYNTAX_ERRORS, JAVASCRIPT_THROWN, LANGUAGES, PYTHON_SYNTAX_ERRORS, SCOPE_CASES,
                           UNREPRESENTABLE, same)

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests/conformance/codec_vectors.json").read_text())
ARGV = {
    "python": [sys.executable, "-I", "-S", "-B", str(ROOT / "harness/run.py")],
    "javascript": ["node", str(ROOT / "harness/run.js")],
}

if shutil.which("node") is None:
    pytest.skip("node (Node.js 20) is not on PATH", allow_module_level=True)


@dataclass
class Run:
    returncode: int
    raw: bytes  # everything fd 3 received
    stdout: str
    stderr: str

    @property
    def message(self):
        assert self.raw, f"no message (exit {self.returncode}, stderr {self.stderr!r})"
        return json.loads(self.raw.decode("utf-8"))  # exactly one document, or this fails

    @property
    def value(self):
        message = self.message
        assert message["ok"] is True, message
        assert set(message) == {"ok", "value", "types"}
        return message["value"]

    @property
    def error(self):
        message = self.message
        assert message["ok"] is False, message
        assert set(message) == {"ok", "error"}
        assert set(message["error"]) == {"name", "message", "line", "column", "traceback"}
        return message["error"]


def run(language, code=None, scope=None, types=None, *, request=None, channel=True, timeout=30):
    if request is None:
        request = {"code": code, "scope": scope or {}, **({"types": types} if types is not None else {})}
    data = request if isinstance(request, bytes) else json.dumps(request).encode()
    r, w = os.pipe()
    proc = subprocess.Popen(
        ARGV[language], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
        # fd 3 of the child is the channel; dup2 leaves it inheritable, so close_fds must stay off
        preexec_fn=(lambda: os.dup2(w, 3)) if channel else None, close_fds=not channel)
    os.close(w)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")))
    reader.start()
    try:
        stdout, stderr = proc.communicate(data, timeout=timeout)
    finally:
        proc.kill()
        reader.join(timeout)
        os.close(r)
    return Run(proc.returncode, b"".join(chunks), stdout.decode(), stderr.decode())




# -- typed values ---------------------------------------------------------------------------

VECTOR_CASES = [pytest.param(language, v, id=f"{language}-{v['name']}")
                for v in VECTORS for language in LANGUAGES if language in v["languages"]]


@pytest.mark.parametrize("language,vector", VECTOR_CASES)
def test_vector_round_trips_through_the_harness(language, vector):
    types = {"/v" + pointer: name for pointer, name in vector["types"].items()}
    result = run(language, "return v", {"v": vector["json"]}, types)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert same(result.value, vector["json"]), (result.value, vector["json"])
    assert result.message["types"] == vector["types"]


def test_every_vector_runs_somewhere():
    assert len(VECTOR_CASES) > len(VECTORS)


@pytest.mark.parametrize("language", LANGUAGES)
def test_native_values_from_the_snippet(language):
    code = {
        "python": "import datetime, decimal\n"
                  "return [datetime.datetime(2024, 3, 1, 12), (1, 2), bytearray(b'hi'), 2**60, -(2**53),"
                  " decimal.Decimal('1.5'), float('inf'), 2, 2.5]",
        "javascript": "return [new Date(Date.UTC(2024, 2, 1, 12)), [1, 2], Buffer.from('hi'), 2n ** 60n, -(2 ** 53),"
                      " '1.5', Infinity, 2, 2.5]",
    }[language]
    message = run(language, code).message
    date = {"python": "2024-03-01T12:00:00+00:00", "javascript": "2024-03-01T12:00:00.000Z"}[language]
    big_negative = {"python": "-9007199254740992", "javascript": -9007199254740992}[language]
    expected_value = [date, [1, 2], "aGk=", "1152921504606846976", big_negative, "1.5", "Infinity", 2, 2.5]
    assert same(message["value"], expected_value)
    expected = {"/0": "date", "/2": "bytes", "/3": "bigint", "/6": "float"}
    if language == "python":
        expected.update({"/4": "bigint", "/5": "decimal"})
    assert message["types"] == expected


@pytest.mark.parametrize("language,code,expected", [
    ("python", "pass", None), ("python", "", None),
    ("python", "return None", None), ("javascript", "return null", None),
])
def test_nothing_returned(language, code, expected):
    message = run(language, code).message
    assert message == {"ok": True, "value": None, "types": {}}


@pytest.mark.parametrize("code", ["", "let a = 1", "return undefined"])
def test_javascript_undefined_is_tagged(code):
    assert run("javascript", code).message == {"ok": True, "value": None, "types": {"": "undefined"}}


@pytest.mark.parametrize("language", LANGUAGES)
def test_typed_scope_values_arrive_as_native_values(language):
    scope = {"when": "2024-03-01T12:00:00+01:00", "n": "123456789012345678901234", "b": "aGVsbG8=", "f": "NaN"}
    types = {"/when": "date", "/n": "bigint", "/b": "bytes", "/f": "float"}
    code = {
        "python": "return [type(when).__name__, when.utcoffset().total_seconds(), when.hour, n + 1, b.decode(),"
                  " type(n).__name__, f != f]",
        "javascript": "return [when.constructor.name, when.getTime(), when.getUTCHours(), (n + 1n).toString(),"
                      " Buffer.from(b).toString(), typeof n, Number.isNaN(f)]",
    }[language]
    value = run(language, code, scope, types).value
    if language == "python":
        assert value == ["datetime", 3600.0, 12, "123456789012345678901235", "hello", "int", True]
    else:
        assert value == ["Date", 1709290800000, 11, "123456789012345678901235", "hello", "bigint", True]


@pytest.mark.parametrize("language", LANGUAGES)
def test_javascript_bytes_are_a_private_uint8array(language):
    if language == "python":
        assert run(language, "return type(b).__name__", {"b": "AAE="}, {"/b": "bytes"}).value == "bytes"
    else:
        assert run(language, "return [b.constructor.name, b.length, b.buffer.byteLength]",
                   {"b": "AAE="}, {"/b": "bytes"}).value == ["Uint8Array", 2, 2]


# -- binding the scope --------------------------------------------------------------------

@pytest.mark.parametrize("language,code,scope,expected", SCOPE_CASES)
def test_scope_keys_are_real_variables(language, code, scope, expected):
    assert same(run(language, code, scope).value, expected)


@pytest.mark.parametrize("language,key", BAD_SCOPE_KEYS)
def test_bad_scope_keys_are_refused(language, key):
    result = run(language, "return 1", {key: 1})
    assert result.returncode == 0
    assert result.error["name"] == "RequestError"
    assert key in result.error["message"] and result.error["message"].startswith("RequestError: ")


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("scope,types", BAD_TYPED_SCOPES)
def test_bad_typed_scope_is_a_request_error(language, scope, types):
    assert run(language, "return 1", scope, types).error["name"] == "RequestError"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("request_bytes", [b"", b"{", b"[]", b'{"scope": {}}', b'{"code": "return 1", "scope": [1]}'])
def test_malformed_requests(language, request_bytes):
    result = run(language, request=request_bytes)
    assert result.returncode == 0 and result.error["name"] == "RequestError"


# -- errors -------------------------------------------------------------------------------

def test_python_runtime_error_position_and_traceback():
    error = run("python", "a = 1\nb = 0\nreturn a / b").error
    assert error["name"] == "ZeroDivisionError"
    assert error["message"] == "ZeroDivisionError: division by zero"
    assert (error["line"], error["column"]) == (3, 8)
    assert error["traceback"] == ('Traceback (most recent call last):\n  File "<snippet>", line 3, in <module>\n'
                                  "    return a / b\n           ^^^^^\nZeroDivisionError: division by zero")


def test_python_traceback_keeps_only_snippet_frames():
    error = run("python", "import json\n\ndef parse(text):\n    return json.loads(text)\nparse('{')").error
    assert error["name"] == "JSONDecodeError"
    assert (error["line"], error["column"]) == (4, 12)
    assert error["traceback"].count('File "<snippet>"') == 2
    assert "json" not in error["traceback"].replace("json.loads", "") and "run.py" not in error["traceback"]
    assert str(ROOT) not in json.dumps(error) and "/" not in error["traceback"]


def test_python_error_raised_while_encoding_the_result():
    code = ("import datetime\nclass Zone(datetime.tzinfo):\n    def utcoffset(self, d):\n"
            "        raise ValueError('no offset')\nreturn [datetime.datetime(2024, 1, 1, tzinfo=Zone())]")
    error = run("python", code).error
    assert (error["message"], error["line"], error["column"]) == ("ValueError: no offset", 4, 9)


def test_python_columns_count_characters_not_bytes():
    error = run("python", "é = 'ü'\nreturn é + 1").error
    assert (error["name"], error["line"], error["column"]) == ("TypeError", 2, 8)


@pytest.mark.parametrize("code,line,column,message", PYTHON_SYNTAX_ERRORS)
def test_python_syntax_errors(code, line, column, message):
    error = run("python", code, {"x": 1}).error
    assert (error["message"], error["line"], error["column"]) == (message, line, column)
    assert error["name"] == message.split(":")[0]
    assert error["traceback"].startswith(f'  File "<snippet>", line {line}\n')


def test_javascript_runtime_error_position_and_traceback():
    error = run("javascript", "let a = 1\nfunction f() {\n  return null.x\n}\nreturn f()").error
    assert error["name"] == "TypeError"
    assert error["message"] == "TypeError: Cannot read properties of null (reading 'x')"
    assert (error["line"], error["column"]) == (3, 15)
    assert error["traceback"] == (error["message"] + "\n    at f (<snippet>:3:15)\n    at <snippet>:5:8")


def test_javascript_columns_count_characters_not_utf16_units():
    code = "const s = '😀😀'; null.x"
    error = run("javascript", code).error
    assert (error["line"], error["column"]) == (1, code.index("x") + 1)  # V8 itself says 24


@pytest.mark.parametrize("code,line,column,message", JAVASCRIPT_SYNTAX_ERRORS)
def test_javascript_syntax_errors(code, line, column, message):
    error = run("javascript", code).error
    assert (error["name"], error["message"], error["line"], error["column"]) == ("SyntaxError", message, line, column)
    assert error["traceback"].startswith(f"<snippet>:{line}\n")


def test_javascript_code_cannot_close_the_wrapper():
    result = run("javascript", "}); console.log('escaped'); (async function () {")
    assert result.error["name"] == "SyntaxError" and result.stdout == ""


@pytest.mark.parametrize("code,message", JAVASCRIPT_THROWN)
def test_javascript_thrown_values_and_rejections(code, message):
    error = run("javascript", code).error
    assert error["message"] == message and error["name"] == message.split(":")[0]


def test_javascript_rejected_promise_has_position():
    error = run("javascript", "await null\nreturn Promise.reject(new TypeError('bad'))").error
    assert (error["message"], error["line"], error["column"]) == ("TypeError: bad", 2, 23)


@pytest.mark.parametrize("language,code", AFTER_THE_RESULT)
def test_what_happens_after_the_result_changes_nothing(language, code):
    started = time.monotonic()
    result = run(language, code)
    assert result.value == 1 and result.returncode == 0
    assert time.monotonic() - started < 20 and "at exit" not in result.stdout




@pytest.mark.parametrize("language,code,type_name,where,reason", UNREPRESENTABLE)
def test_unrepresentable_results(language, code, type_name, where, reason):
    error = run(language, code).error
    expected = f"TypeError: cannot represent a value of type '{type_name}' at {where}"
    assert error == {"name": "TypeError", "message": expected + (f" ({reason})" if reason else ""),
                     "line": None, "column": None, "traceback": None}


@pytest.mark.parametrize("language,code", [
    ("python", "v = 'leaf'\nfor _ in range(N):\n    v = [v]\nreturn v"),
    ("javascript", "let v = 'leaf'\nfor (let i = 0; i < N; i++) v = [v]\nreturn v"),
])
def test_nesting_depth_is_bounded(language, code):
    deepest = run(language, code, {"N": 500}).value
    for _ in range(500):
        deepest = deepest[0]
    assert deepest == "leaf"
    error = run(language, code, {"N": 501}).error
    assert error["name"] == "TypeError"
    assert error["message"] == ("TypeError: cannot represent a value of type '%s' at %s (nested deeper than 500 levels)"
                                % ("list" if language == "python" else "Array", "/0" * 500))


@pytest.mark.parametrize("language,code,name", EXIT_ERRORS)
def test_python_exit_attempts_become_errors(language, code, name):
    error = run(language, code).error
    assert error["name"] == name and error["line"] is not None


@pytest.mark.parametrize("language,code", HARD_EXITS)
def test_hard_exits_leave_no_message(language, code):
    result = run(language, code)
    assert result.raw == b""


def test_python_fork_writes_one_message():
    code = "import os\npid = os.fork()\nif pid == 0:\n    return 'child'\nos.waitpid(pid, 0)\nreturn 'parent'"
    result = run("python", code)
    assert result.value == "parent"


@pytest.mark.parametrize("language", LANGUAGES)
def test_no_result_channel_exits_71(language):
    result = run(language, "return 1", channel=False)
    assert (result.returncode, result.stdout, result.stderr) == (71, "", "")


@pytest.mark.parametrize("language,code", [
    ("python", "print('out')\nimport sys\nprint('err', file=sys.stderr)\nreturn 1"),
    ("javascript", "console.log('out')\nconsole.error('err')\nreturn 1"),
])
def test_stdout_and_stderr_belong_to_the_snippet(language, code):
    result = run(language, code)
    assert (result.value, result.stdout, result.stderr) == (1, "out\n", "err\n")


@pytest.mark.parametrize("language", LANGUAGES)
def test_large_result_and_output(language):
    code = {"python": "print('x' * 300000)\nreturn 'y' * 3000000",
            "javascript": "console.log('x'.repeat(300000))\nreturn 'y'.repeat(3000000)"}[language]
    result = run(language, code)
    assert result.value == "y" * 3000000 and result.stdout == "x" * 300000 + "\n"


# -- forgery attempts ---------------------------------------------------------------------



@pytest.mark.parametrize("language,code,expected", FORGERIES)
def test_forgery_attempts_fail(language, code, expected):
    result = run(language, code)
    assert result.returncode == 0
    message = result.message  # exactly one JSON document
    if isinstance(expected, str) and re.fullmatch(r"[A-Z]\w*", expected):
        assert message["ok"] is False and message["error"]["name"] == expected, message
    else:
        assert message["ok"] is True and same(message["value"], expected), message
        assert "forged" not in result.raw.decode()


def test_writing_to_fd_3_fails_with_ebadf():
    assert "Bad file descriptor" in run("python", "import os\nos.write(3, b'x')").error["message"]
    assert "EBADF" in run("javascript", "process.mainModule.require('fs').writeSync(3, 'x')").error["message"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_harness_prints_nothing_itself(language):
    for code in ("return 1", "Invalid code!", "return {'a': {1, 2}}" if language == "python" else "return new Set()"):
        result = run(language, code)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
