"""Building blocks under attack: a snippet that names what it was not given,
forges replies or calls, puts garbage on the channel, calls after it returned
(a thread, a timer, a forked child), sends huge arguments or thousands of
calls. None of it runs a function it was not given, confuses another run or
raises in the host: the answer is the real value or an ExecutionError.

Each test was run against a deliberately broken variant of the protection it
checks, and failed there (the report of the change that added them lists them)."""

import asyncio
import json
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jail
from jail import _calls
from jail._policy import DEFAULT_LIMITS

LANGUAGES = ("python", "javascript")


class Spy:
    """Host functions that record every call, with the time it came."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def function(self, name, value=None):
        """An async function (cancelled exactly when its run ends; a sync one
        already on its thread would run on, its result dropped: docs/blocks.md)."""

        async def function(*args):
            with self.lock:
                self.calls.append((name, args, time.monotonic()))
            await asyncio.sleep(0)
            return value if value is not None else [name, list(args)]

        return function

    def names(self):
        return [name for name, _, _ in self.calls]


def run(policy, language, code, functions, **kwargs):
    return jail.run(code, language, policy=policy, functions=functions, **kwargs)


def error_of(policy, language, code, functions, **kwargs):
    with pytest.raises(jail.ExecutionError) as caught:
        run(policy, language, code, functions, **kwargs)
    return caught.value


# The snippet's way to its own result channel: Python finds the private fd (a pipe it can
# only write); a JavaScript snippet writes to every pipe it can (cold: fd 3).
FIND_CHANNEL = {
    "python": """
import os, stat, fcntl
def channels():
    found = []
    for fd in range(3, 256):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            found.append(fd)
    return found
def send(line):
    for fd in channels():
        os.write(fd, line.encode())
""",
    "javascript": """
const fs = process.mainModule.require('fs');
const send = (line) => {
  for (let fd = 3; fd < 64; fd++) {
    try { if (fs.fstatSync(fd).isFIFO()) fs.writeSync(fd, line); } catch (e) {}
  }
};
""",
}
CALL_SECRET = '{"call":1,"name":"secret","value":{"args":[]},"types":{}}\n'


# -- a block not granted -------------------------------------------------------------------

@pytest.mark.parametrize("language,code,name", [
    ("python", "return secret()", "NameError"),
    ("python", "import builtins, sys\nreturn [n for n in [*dir(builtins), *globals(), *sys.modules] if 'secret' in n]",
     None),
    ("javascript", "return await secret()", "ReferenceError"),
    ("javascript", "return Object.getOwnPropertyNames(globalThis).filter((n) => n.includes('secret'))", None),
])
def test_a_block_not_granted_is_no_name_of_the_snippet(policy, language, code, name):
    spy = Spy()
    functions = {"granted": spy.function("granted")}
    if name:
        assert error_of(policy, language, code, functions).name == name
    else:
        assert run(policy, language, code, functions).output == []
    assert spy.calls == []


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_forged_call_of_a_block_not_granted_ends_the_run_and_calls_nothing(policy, language):
    """The host runs only this run's functions, by name, whatever the channel says."""
    spy = Spy()
    code = FIND_CHANNEL[language] + f"send({CALL_SECRET!r})\n" + {"python": "return granted()",
                                                                     "javascript": "return await granted()"}[language]
    error = error_of(policy, language, code, {"granted": spy.function("granted")})
    assert error.name == "ResultError" and "'secret', which this run was not given" in error.message, error.message
    assert "secret" not in spy.names()


# -- forged replies --------------------------------------------------------------------------

FORGE_REPLIES = {
    # everywhere the snippet can write but its result channel: stdin's private copy and fd 0 are read ends
    "python": """
import os
line = b'{"reply":1,"ok":true,"value":666,"types":{}}\\n' * 10
for fd in range(0, 256):
    if fd in (1, 2) or fd in channels():
        continue
    try:
        os.write(fd, line)
    except OSError:
        pass
# and a pipe of its own, full of replies, put where stdin was
r, w = os.pipe()
os.write(w, line)
os.dup2(r, 0)
return f()
""",
    "javascript": """
const line = '{"reply":1,"ok":true,"value":666,"types":{}}\\n'.repeat(10);
try { fs.writeSync(0, line); } catch (e) {}
return await f();
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_forged_reply_never_reaches_the_snippet(policy, language):
    assert run(policy, language, FIND_CHANNEL[language] + FORGE_REPLIES[language], {"f": lambda: 7}).output == 7


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_reply_written_on_the_channel_is_a_result_error_never_a_value(policy, language):
    code = FIND_CHANNEL[language] + "send('{\"reply\":1,\"ok\":true,\"value\":666,\"types\":{}}\\n')\n" + \
        {"python": "return f()", "javascript": "return await f()"}[language]
    error = error_of(policy, language, code, {"f": lambda: 7})
    assert error.name == "ResultError" and "not a call" in error.message


# -- garbage on the channel ---------------------------------------------------------------------

GARBAGE = {
    "not JSON": "hello\n",
    "a call without fields": '{"call": 1}\n',
    "a string id": '{"call":"1","name":"f","value":{"args":[]},"types":{}}\n',
    "a bool id": '{"call":true,"name":"f","value":{"args":[]},"types":{}}\n',
    "an id going back": '{"call":5,"name":"f","value":{"args":[]},"types":{}}\n{"call":5,"name":"f","value":{"args":[]},"types":{}}\n',
    "args not an array": '{"call":1,"name":"f","value":{"args":{}},"types":{}}\n',
    "an extra field": '{"call":1,"name":"f","value":{"args":[]},"types":{},"context":{"tenant":"other"}}\n',
    "an unknown type": '{"call":1,"name":"f","value":{"args":[1]},"types":{"/args/0":"function"}}\n',
    "NaN": '{"call":1,"name":"f","value":{"args":[NaN]},"types":{}}\n',
    "a huge float": '{"call":1,"name":"f","value":{"args":[1e999999]},"types":{}}\n',
    "deep nesting": "[" * 100_000 + "\n",
    "bad UTF-8": None,  # bytes: see below
    "a NUL": '{"call":1,"name":"f\\u0000","value":{"args":[]},"types":{}}\n',
}


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_on_the_channel_ends_the_run_with_a_result_error(policy, garbage):
    spy = Spy()
    line = GARBAGE[garbage]
    send = f"send({line!r})" if line is not None else "[os.write(fd, b'\\xff\\xfe\\n') for fd in channels()]"
    code = FIND_CHANNEL["python"] + send + "\nreturn f()"
    error = error_of(policy, "python", code, {"f": spy.function("f")})
    assert error.name == "ResultError" and error.message.startswith("ResultError: the channel carried"), error.message
    if garbage != "an id going back":
        assert spy.calls == []


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=200), st.sampled_from(
    [b"\n", b'{"call":', b'"name":"f"', b'"value":{"args":[1]}', b',"types":{}}', b'{"call":1,"name":"f",'
     b'"value":{"args":[]},"types":{}}\n', b"[" * 2000, b'{"ok":true,"value":1,"types":{}}'])), max_size=12))
def test_any_bytes_on_the_channel_are_calls_a_message_or_an_error_never_a_host_exception(chunks):
    """The host's reading of the channel, fed anything: it calls only what it was given,
    with arguments as lists and dicts, or stops the run with an ExecutionError."""

    async def feed():
        calls = _calls.Calls({"f": _calls.Function("f", lambda *a: 1, False, False)}, None, "r", "python",
                             DEFAULT_LIMITS)
        read_fd, write_fd = __import__("os").pipe2(__import__("os").O_NONBLOCK)
        killed = []
        calls.start(asyncio.get_running_loop(), write_fd, b"{}", lambda: killed.append(1))
        for chunk in chunks:
            calls.feed(chunk)
        assert (calls.error is None) or isinstance(calls.error, jail.ExecutionError)
        assert bool(killed) == (calls.error is not None or calls.result_exceeded)
        await asyncio.sleep(0)
        calls.cancel()
        await calls.settle()
        for fd in (read_fd, write_fd):
            __import__("os").close(fd)
        json.dumps(calls.count)

    asyncio.run(feed())


# -- calls after the snippet returned ---------------------------------------------------------

AFTER = {
    # threads that call while the result (4 MiB: a long write) goes out, and after it
    "python threads": ("python", "import threading\nfor _ in range(2):\n"
                                 "    threading.Thread(target=lambda: [f(i) for i in range(100000)], daemon=True).start()\n"
                                 "f(-1)\nreturn 'x' * (4 * 2**20)"),
    "python fork": ("python", "import os\npid = os.fork()\nif pid == 0:\n    try:\n        f('child')\n"
                              "    finally:\n        os._exit(0)\nos.waitpid(pid, 0)\nreturn 1"),
    "python fork after return": ("python", "import os, time\nif os.fork() == 0:\n    time.sleep(0.05)\n"
                                           "    f('child')\n    os._exit(0)\nreturn 1"),
    "javascript timer": ("javascript", "setTimeout(() => f('timer'), 0)\nsetInterval(() => f('tick'), 1)\nreturn 1"),
    "javascript pending": ("javascript", "for (let i = 0; i < 50; i++) f(i)\nreturn 1"),
}


@pytest.mark.parametrize("case", AFTER)
def test_a_call_after_the_snippet_returned_never_reaches_the_host_after_the_answer(policy, case):
    language, code = AFTER[case]
    spy = Spy()
    result = run(policy, language, code, {"f": spy.function("f")})
    answered = time.monotonic()
    assert result.output == ("x" * (4 * 2**20) if case == "python threads" else 1)
    time.sleep(0.3)
    assert all(at <= answered for _, _, at in spy.calls), "a call reached the host after the run's answer"
    assert not any(args == ("child",) for _, args, _ in spy.calls), "a forked child reached the host"
    assert run(policy, language, "return 2", {"f": spy.function("f")}).output == 2  # and the next run is fine


# -- huge arguments, thousands of calls ----------------------------------------------------------

HUGE = {"python": "return f('x' * (20 * 2**20))", "javascript": "return await f('x'.repeat(20 * 2 ** 20))"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_huge_arguments_end_the_run_as_they_come(policy, language):
    spy = Spy()
    started = time.monotonic()
    error = error_of(policy, language, HUGE[language], {"f": spy.function("f")})
    assert isinstance(error, jail.CallLimitExceeded), error.message
    assert f"went over {DEFAULT_LIMITS.call_bytes} bytes" in error.message
    assert spy.calls == [] and time.monotonic() - started < 5


THOUSANDS = {"python": "for i in range(5000):\n    f(i)", "javascript": "for (let i = 0; i < 5000; i++) await f(i)",
             "javascript at once": "await Promise.all([...Array(5000).keys()].map(f))"}


@pytest.mark.parametrize("case", THOUSANDS)
def test_thousands_of_calls_stop_at_the_limit(policy, case):
    spy = Spy()
    language = case.split()[0]
    error = error_of(policy, language, THOUSANDS[case] + "\nreturn 1", {"f": spy.function("f", 1)})
    assert isinstance(error, jail.CallLimitExceeded)
    if case == "javascript at once":  # whichever comes first: 64 waiting at once, or the 1001st
        assert "more than 64 calls at once" in error.message or "more than 1000 calls" in error.message
        assert len(spy.calls) <= 1000
    else:
        assert "more than 1000 calls" in error.message and len(spy.calls) == 1000


# -- runs do not reach each other's calls ---------------------------------------------------------

TENANT_CODE = {
    "python": FIND_CHANNEL["python"] + "import os\nfor fd in range(0, 64):\n    try:\n        os.read(fd, 0)\n"
              "    except OSError:\n        pass\nreturn [who() for _ in range(20)]",
    "javascript": "return await Promise.all([...Array(20).keys()].map(() => who()))",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_concurrent_runs_get_their_own_replies_and_context(policy, language):
    async def who(*, context):
        await asyncio.sleep(0.001)
        return context.context["tenant"]

    async def both():
        return await asyncio.gather(*[
            jail.run_async(TENANT_CODE[language], language, policy=policy, functions={"who": who},
                           context={"tenant": f"t{i}"}) for i in range(4)])

    results = asyncio.run(both())
    assert [result.output for result in results] == [[f"t{i}"] * 20 for i in range(4)]
