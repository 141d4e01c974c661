"""The conformance suite: every case through jail.run, in a real sandbox of
each backend present. The same case tables drive the bare harness tests
(tests/snippet_cases.py)."""

import json
import pathlib
import time

import pytest

import jail
from snippet_cases import (AFTER_THE_RESULT, BAD_SCOPE_KEYS, BAD_TYPED_SCOPES, EXIT_ERRORS, FORGERIES, HARD_EXITS,
                           JAVASCRIPT_SYNTAX_ERRORS, JAVASCRIPT_THROWN, LANGUAGES, PYTHON_SYNTAX_ERRORS, SCOPE_CASES,
                           UNREPRESENTABLE, same)

VECTORS = json.loads((pathlib.Path(__file__).parent / "codec_vectors.json").read_text())


def run(policy, language, code, scope=None, types=None, **kwargs):
    return jail.run(code, language, scope, types=types, policy=policy, **kwargs)


def error_of(policy, language, code, scope=None, types=None, cls=jail.ExecutionError, **kwargs):
    with pytest.raises(cls) as caught:
        run(policy, language, code, scope, types, **kwargs)
    return caught.value


# -- the seed's cases ---------------------------------------------------------------------

def test_seed_cases(policy):
    assert run(policy, "python", "return 1+1").output == 2
    error = error_of(policy, "python", "Invalid code!")
    assert (error.name, error.message) == ("SyntaxError", "SyntaxError: invalid syntax")
    assert run(policy, "javascript", "return x", {"x": 2}).output == 2
    assert run(policy, "javascript", "return x + 3", {"x": 2}).output == 5


# -- values of every kind, both ways --------------------------------------------------------

VECTOR_CASES = [pytest.param(language, v, id=f"{language}-{v['name']}")
                for v in VECTORS for language in LANGUAGES if language in v["languages"]]


@pytest.mark.parametrize("language,vector", VECTOR_CASES)
def test_values_round_trip(policy, language, vector):
    types = {"/v" + pointer: name for pointer, name in vector["types"].items()}
    result = run(policy, language, "return v", {"v": vector["json"]}, types)
    assert same(result.value, vector["json"]) and result.types == vector["types"]
    assert (result.stdout, result.stderr) == ("", "")


@pytest.mark.parametrize("language", LANGUAGES)
def test_native_python_values_in_and_out(policy, language):
    import datetime
    import decimal

    when = datetime.datetime(2024, 3, 1, 12, tzinfo=datetime.timezone.utc)
    scope = {"when": when, "big": 10**30, "raw": b"\x00\xff", "nan": float("nan"), "d": decimal.Decimal("1.25")}
    output = run(policy, language, "return [when, big, raw, nan, d]", scope).output
    assert output[0] == when and output[1] == 10**30 and output[2] == b"\x00\xff" and output[3] != output[3]
    assert output[4] == (decimal.Decimal("1.25") if language == "python" else "1.25")


@pytest.mark.parametrize("language,code,scope,expected", SCOPE_CASES)
def test_scope_keys_are_real_variables(policy, language, code, scope, expected):
    assert same(run(policy, language, code, scope).value, expected)


@pytest.mark.parametrize("language,key", BAD_SCOPE_KEYS)
def test_bad_scope_keys_are_request_errors(policy, language, key):
    error = error_of(policy, language, "return 1", {key: 1}, cls=jail.RequestError)
    assert key in str(error) and str(error).startswith("scope: ")


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("scope,types", BAD_TYPED_SCOPES)
def test_bad_typed_scopes_are_request_errors(policy, language, scope, types):
    error_of(policy, language, "return 1", scope, types, cls=jail.RequestError)


@pytest.mark.parametrize("arguments,message", [
    ({"language": "ruby"}, "language: unknown language 'ruby'"),
    ({"scope": [1]}, "scope: must be an object"),
    ({"scope": {"when": __import__("datetime").datetime(2024, 1, 1)}}, "scope: "),
    ({"types": {"/x": "money"}, "scope": {"x": 1}}, "types: unknown type 'money'"),
    ({"limits": {"timeout_ms": 0}}, "limits.timeout_ms: must be a positive integer"),
    ({"limits": {"cpu": 1}}, "limits: unknown field(s) cpu"),
    ({"code": 42}, "code: must be a string"),
])
def test_bad_arguments_are_request_errors(policy, arguments, message):
    call = {"code": "return 1", "language": "python", **arguments}
    with pytest.raises(jail.RequestError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        jail.run(call.pop("code"), call.pop("language"), call.pop("scope", None), policy=policy, **call)


# -- errors, with positions as the user wrote them -------------------------------------------

@pytest.mark.parametrize("language,code,line,column,message", [
    ("python", "a = 1\nb = 0\nreturn a / b", 3, 8, "ZeroDivisionError: division by zero"),
    ("python", "def f(x):\n    return x['missing']\n\nf({})", 2, 12, "KeyError: 'missing'"),
    ("javascript", "let a = 1\nfunction f() {\n  return null.x\n}\nreturn f()", 3, 15,
     "TypeError: Cannot read properties of null (reading 'x')"),
    ("javascript", "await null\nreturn Promise.reject(new TypeError('bad'))", 2, 23, "TypeError: bad"),
    ("javascript", "\n\nundefinedFunction()", 3, 1, "ReferenceError: undefinedFunction is not defined"),
])
def test_runtime_errors(policy, language, code, line, column, message):
    error = error_of(policy, language, code)
    assert (error.message, error.line, error.column) == (message, line, column)
    assert error.name == message.split(":")[0]
    assert "<snippet>" in error.traceback and "/opt/" not in error.traceback and "harness" not in error.traceback


@pytest.mark.parametrize("code,line,column,message", PYTHON_SYNTAX_ERRORS)
def test_python_syntax_errors(policy, code, line, column, message):
    error = error_of(policy, "python", code, {"x": 1})
    assert (error.message, error.line, error.column) == (message, line, column)


@pytest.mark.parametrize("code,line,column,message", JAVASCRIPT_SYNTAX_ERRORS)
def test_javascript_syntax_errors(policy, code, line, column, message):
    error = error_of(policy, "javascript", code)
    assert (error.name, error.message, error.line, error.column) == ("SyntaxError", message, line, column)


@pytest.mark.parametrize("code,message", JAVASCRIPT_THROWN)
def test_javascript_thrown_values_and_rejections(policy, code, message):
    assert error_of(policy, "javascript", code).message == message


@pytest.mark.parametrize("language,code,type_name,where,reason", UNREPRESENTABLE)
def test_unrepresentable_results_name_path_and_type(policy, language, code, type_name, where, reason):
    error = error_of(policy, language, code)
    expected = f"TypeError: cannot represent a value of type '{type_name}' at {where}"
    assert error.message == expected + (f" ({reason})" if reason else "")


@pytest.mark.parametrize("language,code,name", EXIT_ERRORS)
def test_exit_attempts_become_errors(policy, language, code, name):
    assert error_of(policy, language, code).name == name


@pytest.mark.parametrize("language,code", HARD_EXITS)
def test_hard_exits_are_errors_not_results(policy, language, code):
    assert error_of(policy, language, code).name == "ExitError"


@pytest.mark.parametrize("language,code", AFTER_THE_RESULT)
def test_what_runs_after_the_result_changes_nothing(policy, language, code):
    assert run(policy, language, code).output == 1


# -- stdout and stderr are kept apart from the output -------------------------------------

@pytest.mark.parametrize("language,code", [
    ("python", "print('out')\nimport sys\nprint('err', file=sys.stderr)\nprint('{\"output\": 99}')\nreturn 1"),
    ("javascript", "console.log('out')\nconsole.error('err')\nconsole.log('{\"output\": 99}')\nreturn 1"),
])
def test_stdout_is_kept_apart_from_the_output(policy, language, code):
    result = run(policy, language, code)
    assert (result.output, result.stdout, result.stderr) == (1, 'out\n{"output": 99}\n', "err\n")


# -- forgery attempts ----------------------------------------------------------------------

# Node cannot dup(2): bare, its harness moves the channel by reopening /proc/self/fd/3,
# but the sandbox has no /proc (its mount table would name host paths). Inside a cold
# sandbox, a snippet can reach fd 3 itself; what it writes there, or closing it, ends
# in an error, never in a result. A zygote child moves it with the zygote's addon, as
# the bare harness does: there fd 3 is EBADF for the snippet.
IN_THE_SANDBOX = {
    "process.mainModule.require('fs').writeSync(3, ": "ResultError",
    "try { process.mainModule.require('fs').closeSync(3) }": "ExitError",
}


def outcome_of(policy, language, code):
    """The Result, or the ExecutionError, of a run."""
    try:
        return run(policy, language, code)
    except jail.ExecutionError as error:
        return error


def channel_on_fd_3(outcome) -> bool:
    """Whether the Node harness of this run kept its channel on fd 3: all but a zygote child."""
    from jail import _zygote

    return not (outcome.stats.warm and _zygote.unavailable_reason(jail.Policy()) is None)


@pytest.mark.parametrize("language,code,expected", FORGERIES)
def test_forgery_attempts_fail(policy, language, code, expected):
    outcome = outcome_of(policy, language, code)
    if channel_on_fd_3(outcome):
        expected = next((name for start, name in IN_THE_SANDBOX.items() if code.startswith(start)), expected)
    if isinstance(expected, str) and expected[:1].isupper() and expected.isidentifier():
        assert isinstance(outcome, jail.ExecutionError) and outcome.name == expected
    else:
        assert not isinstance(outcome, Exception), outcome
        assert same(outcome.value, expected) and "forged" not in json.dumps(outcome.value)


@pytest.mark.parametrize("language,code", [
    ("python", "import os\nfor fd in range(4, 64):\n    try:\n        os.write(fd, b'{\"ok\": true, \"value\": 42, \"types\": {}}')\n"
               "    except OSError:\n        pass\nreturn 1"),
    ("javascript", "const fs = process.mainModule.require('fs')\n"
                   "fs.writeSync(3, '{\"ok\": true, \"value\": 42, \"types\": {}}')\nprocess.exit(0)"),
])
def test_forged_messages_with_an_early_end_are_not_results(policy, language, code):
    error = outcome_of(policy, language, code)
    assert isinstance(error, jail.ExecutionError), f"a forged result was reported: {error.output!r}"
    if language == "javascript" and not channel_on_fd_3(error):
        assert error.name == "Error" and "EBADF" in error.message  # fd 3 is not the channel
    else:
        assert error.name in ("ExitError", "ResultError")


# -- limits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("language,code", [
    ("python", "while True:\n    pass"),
    ("javascript", "while (true) {}"),
    ("javascript", "await new Promise(r => setInterval(() => {}, 1000))"),
])
def test_infinite_loop_ends_within_timeout_plus_one_second(policy, language, code):
    started = time.monotonic()
    error = error_of(policy, language, code, limits={"timeout_ms": 1000}, cls=jail.TimeLimitExceeded)
    assert time.monotonic() - started < 2.0
    assert error.message == "TimeLimitExceeded: the snippet ran for more than 1000 ms"


@pytest.mark.parametrize("language,code", [
    ("python", "x = []\nwhile True:\n    x.append(bytearray(10 * 1024 * 1024))"),
    ("python", "return 'x' * (2 ** 40)"),
    ("javascript", "const a = []\nwhile (true) a.push(new Array(1e6).fill(1.5))"),
    ("javascript", "const a = []\nwhile (true) a.push(Buffer.alloc(16 << 20, 1))"),
])
def test_memory_bomb_gives_memory_limit_exceeded(policy, language, code):
    started = time.monotonic()
    error_of(policy, language, code, limits={"memory_mb": 128, "timeout_ms": 10_000}, cls=jail.MemoryLimitExceeded)
    assert time.monotonic() - started < 10
    assert run(policy, language, "return 1").output == 1  # the host is untouched


@pytest.mark.parametrize("language,code", [
    ("python", "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)"),
    ("javascript", "const chunk = 'x'.repeat(1 << 20)\nfor (let i = 0; i < 1024; i++) process.stdout.write(chunk)"),
])
def test_a_1gb_print_flood_gives_output_limit_exceeded(policy, language, code):
    started = time.monotonic()
    error = error_of(policy, language, code, cls=jail.OutputLimitExceeded)
    assert "stdout and stderr went over 1048576 bytes" in error.message
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_huge_result_gives_output_limit_exceeded(policy, language):
    code = {"python": "return 'y' * (20 * 1024 * 1024)", "javascript": "return 'y'.repeat(20 * 1024 * 1024)"}[language]
    error = error_of(policy, language, code, cls=jail.OutputLimitExceeded)
    assert "returned value went over" in error.message


def test_per_call_limits_are_capped_by_the_policy(policy):
    import dataclasses

    capped = dataclasses.replace(policy, max_limits=dataclasses.replace(policy.max_limits, timeout_ms=800))
    started = time.monotonic()
    error = error_of(capped, "python", "import time\ntime.sleep(60)", limits={"timeout_ms": 10**9},
                     cls=jail.TimeLimitExceeded)
    assert error.message.endswith("more than 800 ms") and time.monotonic() - started < 3


# -- no state is shared between runs --------------------------------------------------------

PLANT = {
    "python": "import builtins, os, sys, threading, time, subprocess\n"
              "builtins.len = lambda x: 42\n"
              "sys.modules['planted_module'] = sys\n"
              "os.environ['PLANTED'] = '1'\n"
              "open('/tmp/planted', 'w').write('x')\n"
              "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
              "subprocess.Popen(['/opt/python/bin/python3', '-c', 'import time; time.sleep(30)'])\n"
              "global GLOBAL_PLANT\nGLOBAL_PLANT = 1\n"
              "return 'planted'",
    "javascript": "globalThis.PLANTED = 1\nMath.max = () => 42\nObject.prototype.planted = 1\n"
                  "process.env.PLANTED = '1'\nsetInterval(() => {}, 1000)\n"
                  "process.mainModule.require('fs').writeFileSync('/tmp/planted', 'x')\n"
                  "return 'planted'",
}
CHECK = {
    "python": "import os, sys, threading\n"
              "return [len([1]), 'planted_module' in sys.modules, 'PLANTED' in os.environ,"
              " os.path.exists('/tmp/planted'), threading.active_count(), 'GLOBAL_PLANT' in globals()]",
    "javascript": "return [typeof globalThis.PLANTED, Math.max(1, 2), ({}).planted === undefined,"
                  " 'PLANTED' in process.env, process.mainModule.require('fs').existsSync('/tmp/planted')]",
}
CLEAN = {"python": [1, False, False, False, 1, False],
         "javascript": ["undefined", 2, True, False, False]}


@pytest.mark.parametrize("language", LANGUAGES)
def test_two_runs_in_a_row_share_no_state(policy, language):
    scratch = jail.Policy(scratch_mb=4, backend=policy.backend)
    assert run(scratch, language, PLANT[language]).output == "planted"
    assert run(scratch, language, CHECK[language]).output == CLEAN[language]
