"""The public surface of jail: its exported names, the error tree, the result
and the command line."""

import json
import subprocess
import sys

import pytest

import jail
from jail._report import error_body, result_body


def test_exported_members_are_exactly_the_public_names():
    public = {name for name in dir(jail) if not name.startswith("_")} | {"__version__"}
    assert set(jail.__all__) == public


def test_error_tree():
    for cls in (jail.TimeLimitExceeded, jail.MemoryLimitExceeded, jail.OutputLimitExceeded):
        assert issubclass(cls, jail.ExecutionError)
    for cls in (jail.RequestError, jail.ExecutionError, jail.Overloaded, jail.SandboxError):
        assert issubclass(cls, jail.JailError)
    import builtins

    assert not {cls.__name__ for cls in jail.JailError.__subclasses__()} & set(dir(builtins))


def test_result_carries_output_streams_and_stats():
    result = jail.run("print('hi')\nimport sys\nprint('oops', file=sys.stderr)\nreturn {'a': 2 ** 60}")
    assert result.output == {"a": 2**60}
    assert (result.stdout, result.stderr) == ("hi\n", "oops\n")
    assert result.value == {"a": str(2**60)} and result.types == {"/a": "bigint"}
    stats = result.stats
    assert stats.backend == "native" and stats.wall_ms > 0 and stats.cpu_ms > 0 and stats.peak_memory > 0
    # Answered at its result (Python's channel is private): its exit is not waited for.
    assert (stats.exit_code, stats.signal) == (None, None)
    # Node's cold harness keeps its channel on fd 3: answered at its exit, which was 0.
    stats = jail.run("return 1", "javascript").stats
    assert (stats.exit_code, stats.signal, stats.warm) == (0, None, False)


def test_errors_carry_what_the_snippet_printed():
    with pytest.raises(jail.ExecutionError) as caught:
        jail.run("print('before')\n1 / 0")
    assert caught.value.stdout == "before\n" and caught.value.line == 2
    body = error_body(caught.value)
    assert body["stdout"] == "before\n" and body["error"]["type"] == "ExecutionError"


def test_bodies_omit_empty_fields():
    assert result_body(jail.run("return 2")) == {"output": 2}
    assert error_body(jail.RequestError("scope: bad")) == {"error": {"type": "RequestError", "message": "scope: bad"}}


async def _twice():
    return [r.output for r in [await jail.run_async("return 1"), await jail.run_async("return 2", "javascript")]]


def test_run_async():
    import asyncio

    assert asyncio.run(_twice()) == [1, 2]


def test_run_refuses_a_running_loop():
    import asyncio

    async def inside():
        jail.run("return 1")

    with pytest.raises(RuntimeError, match="run_async"):
        asyncio.run(inside())


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "jail", *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


def test_command_line():
    out = cli("-l", "javascript", "-e", "return x + 3", "--scope", '{"x": 2}')
    assert (out.returncode, json.loads(out.stdout)) == (0, {"output": 5})
    out = cli("-e", "Invalid code!")
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["message"] == "SyntaxError: invalid syntax"
    out = cli("-", stdin="return 7")
    assert json.loads(out.stdout) == {"output": 7}
    out = cli("-e", "return 1", "--scope", '{"not an id": 1}')
    assert out.returncode == 2 and "not a Python identifier" in json.loads(out.stderr)["error"]["message"]


def test_the_http_folder_does_not_shadow_the_standard_library():
    """http/ has no __init__.py and installs as jail_http (DESIGN.md section 1)."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", "import http.cookies, jail_http.server; print(http.cookies.__file__)"],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(str(root))
    assert not (root / "http" / "__init__.py").exists()


def _died(stderr: bytes, signal=11, result=b""):
    from jail import _process

    stats = _process.Stats(backend="native", wall_ms=1.0, cpu_ms=1.0, peak_memory=0, exit_code=None,
                           signal=signal, cgroup="v1")
    return _process.Outcome(stdout=b"", stderr=stderr, result=result, stats=stats)


@pytest.mark.parametrize("last_words", [
    b"terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n",
    b"FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory\n",
    b"terminate called recursively\n",
])
def test_a_runtime_that_dies_for_want_of_memory_is_a_memory_error(last_words):
    """The soak found Node's C++ allocations refused by its rlimit answered as
    ExitError: killed by signal 11 (4 in 40 memory bombs)."""
    from jail import _run

    with pytest.raises(jail.MemoryLimitExceeded):
        _run._interpret(_died(last_words), jail.DEFAULT_POLICY.limits)


@pytest.mark.parametrize("language,code", [
    ("javascript", "console.error('FATAL ERROR: Reached heap limit'); return 1"),
    ("python", "import sys\nprint('std::bad_alloc JavaScript heap out of memory', file=sys.stderr)\nreturn 1"),
])
def test_words_a_snippet_prints_never_turn_its_result_into_a_memory_error(language, code):
    assert jail.run(code, language).output == 1
