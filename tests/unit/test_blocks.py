"""Building blocks through jail.run: the host's functions called from snippets,
in both languages, on every backend present and warm (the `policy` fixture of
tests/conftest.py), with typed values both ways, errors, context and limits."""

import asyncio
import datetime
import decimal
import threading
import time

import pytest

import jail
from jail import _run

UTC = datetime.timezone.utc
WHEN = datetime.datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
LANGUAGES = ("python", "javascript")


def run(policy, language, code, functions, **kwargs):
    return jail.run(code, language, policy=policy, functions=functions, **kwargs)


def error_of(policy, language, code, functions, cls=jail.ExecutionError, **kwargs):
    with pytest.raises(cls) as caught:
        run(policy, language, code, functions, **kwargs)
    return caught.value


def echo(*args, **kwargs):
    """Returns what it was given: [args, kwargs]."""
    return [list(args), kwargs]


# -- values ------------------------------------------------------------------------------

TYPED = {"when": WHEN, "big": 10**30, "raw": b"\x00\xff", "nan": float("nan"), "inf": float("-inf"),
         "d": decimal.Decimal("1.25"), "nested": [{"deep": [WHEN, 2**64]}], "text": "é\n", "none": None}
CHECK_TYPED = {
    "python": """
import datetime, decimal, math
a = echo(when, big, raw, nan, inf, d, nested)[0]
kinds = [type(v).__name__ for v in a[:6]] + [type(a[6][0]["deep"][0]).__name__, type(a[6][0]["deep"][1]).__name__]
back = get()
return kinds, back, [type(v).__name__ for v in back.values()]
""",
    "javascript": """
const [a] = await echo(when, big, raw, nan, inf, d, nested);
const kind = (v) => v instanceof Date ? 'Date' : v instanceof Uint8Array ? 'Uint8Array' : typeof v;
const kinds = [...a.slice(0, 6).map(kind), kind(a[6][0].deep[0]), kind(a[6][0].deep[1])];
const back = await get();
return [kinds, back, Object.values(back).map(kind)];
""",
}
KINDS = {"python": ["datetime", "int", "bytes", "float", "float", "Decimal", "datetime", "int"],
         "javascript": ["Date", "bigint", "Uint8Array", "number", "number", "string", "Date", "bigint"]}
RESULT_KINDS = {"python": ["datetime", "int", "bytes", "float", "float", "Decimal", "list", "str", "NoneType"],
                "javascript": ["Date", "bigint", "Uint8Array", "number", "number", "string", "object", "string",
                               "object"]}


@pytest.mark.parametrize("language", LANGUAGES)
def test_typed_values_cross_both_ways_nested_anywhere(policy, language):
    got = {}

    def echo_checked(*args):
        got["args"] = args
        return [list(args)]

    result = run(policy, language, CHECK_TYPED[language], {"echo": echo_checked, "get": lambda: TYPED},
                 scope={k: v for k, v in TYPED.items() if k in ("when", "big", "raw", "nan", "inf", "d", "nested")})
    kinds, back, back_kinds = result.output
    assert kinds == KINDS[language]
    assert back_kinds == RESULT_KINDS[language]
    assert back["when"] == WHEN and back["big"] == 10**30 and back["raw"] == b"\x00\xff"
    assert back["nan"] != back["nan"] and back["inf"] == float("-inf") and back["nested"][0]["deep"][1] == 2**64
    # and the host received the language's values decoded again as Python's
    args = got["args"]
    assert args[0] == WHEN and args[1] == 10**30 and args[2] == b"\x00\xff" and args[3] != args[3]
    assert args[5] == (decimal.Decimal("1.25") if language == "python" else "1.25")
    assert args[6] == [{"deep": [WHEN, 2**64]}]
    assert result.stats.calls == 2


def test_python_calls_take_positional_and_keyword_arguments(policy):
    def f(a, b=2, *, c=3):
        return [a, b, c]

    code = "return f(1), f(1, 5), f(1, c=7), f(a=9, b=8, c=0), f(1, **{'b': 4})"
    assert run(policy, "python", code, {"f": f}).output == [[1, 2, 3], [1, 5, 3], [1, 2, 7], [9, 8, 0], [1, 4, 3]]
    error = error_of(policy, "python", "return f(1, d=2)", {"f": f})
    assert error.name == "TypeError" and "unexpected keyword argument 'd'" in error.message and error.line == 1


def test_javascript_calls_return_promises(policy):
    code = ("const p = f(1, 'a');\nconst isPromise = p instanceof Promise;\n"
            "return [isPromise, await p, f.name, typeof f]")
    assert run(policy, "javascript", code, {"f": echo}).output == [True, [[1, "a"], {}], "f", "function"]


def test_fifty_concurrent_javascript_calls_are_really_concurrent(policy):
    """The host sees all 50 in flight together (else this one times out)."""
    state = {"now": 0, "event": None}

    async def get(i):
        state["event"] = state["event"] or asyncio.Event()
        state["now"] += 1
        if state["now"] == 50:
            state["event"].set()
        await asyncio.wait_for(state["event"].wait(), 3)
        return i * 2

    result = run(policy, "javascript", "return (await Promise.all([...Array(50).keys()].map(get))).reduce((a, b) => a + b)",
                 {"get": get})
    assert result.output == 2 * sum(range(50))


# -- errors --------------------------------------------------------------------------------

class TenantNotFound(Exception):
    pass


def missing(key):
    raise TenantNotFound(f"no tenant {key}")


CAUGHT = {
    "python": "try:\n    missing('a')\nexcept Exception as e:\n    return [type(e).__name__, str(e)]",
    "javascript": "try {\n  await missing('a')\n} catch (e) {\n  return [e.name, e.message]\n}",
}
UNCAUGHT = {"python": "x = 1\n\ny = missing('b')\nreturn y", "javascript": "let x = 1;\n\nconst y = await missing('b');"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_host_exceptions_raise_in_the_snippet_with_their_name_and_message_only(policy, language):
    assert run(policy, language, CAUGHT[language], {"missing": missing}).output == ["TenantNotFound", "no tenant a"]
    error = error_of(policy, language, UNCAUGHT[language], {"missing": missing})
    assert (error.name, error.message, error.line) == ("TenantNotFound", "TenantNotFound: no tenant b", 3)
    assert "test_blocks.py" not in (error.traceback or "") and "_calls" not in (error.traceback or "")


def test_a_builtin_exception_of_the_host_is_that_builtin_in_python(policy):
    def lookup(key):
        raise KeyError(key)

    code = "try:\n    lookup('k')\nexcept LookupError as e:\n    return type(e).__name__, str(e), isinstance(e, KeyError)"
    assert run(policy, "python", code, {"lookup": lookup}).output == ["KeyError", "'k'", True]


@pytest.mark.parametrize("language", LANGUAGES)
def test_values_that_cannot_cross_name_the_function_and_the_pointer(policy, language):
    arg = {"python": "return f([1, {'s': {1}}])", "javascript": "return await f([1, {s: new Map()}])"}[language]
    error = error_of(policy, language, arg, {"f": echo})
    assert error.name == "TypeError" and error.message.startswith("TypeError: f: ")
    assert "/args/0/1/s" in error.message and ("'set'" if language == "python" else "'Map'") in error.message
    error = error_of(policy, language, {"python": "return bad()", "javascript": "return await bad()"}[language],
                     {"bad": lambda: {"a": [object()]}})
    assert error.name == "TypeError" and "bad returned a value that cannot be sent" in error.message
    assert "/a/0" in error.message and "'object'" in error.message


def test_request_errors():
    with pytest.raises(jail.RequestError, match="also a scope key"):
        _run.prepare("return 1", scope={"f": 1}, functions={"f": echo})
    with pytest.raises(jail.RequestError, match="not callable"):
        _run.prepare("return 1", functions={"f": 3})
    with pytest.raises(jail.RequestError, match="functions: 'class' is a reserved word"):
        _run.prepare("return 1", functions={"class": echo})
    with pytest.raises(jail.RequestError, match="functions: 'await' is a reserved word in JavaScript"):
        _run.prepare("return 1", "javascript", functions={"await": echo})
    with pytest.raises(jail.RequestError, match="context: must be JSON"):
        _run.prepare("return 1", functions={"f": echo}, context={"a": object()})
    with pytest.raises(jail.RequestError, match="functions: must be a dict"):
        _run.prepare("return 1", functions=[echo])


def test_no_functions_no_change_to_the_request():
    assert _run.prepare("return 1").request == b'{"code": "return 1", "scope": {}, "types": {}}'


# -- context -------------------------------------------------------------------------------

SPY = {
    "python": "import sys, gc\nseen = repr([globals(), locals(), sys.argv, [repr(o)[:200] for o in gc.get_objects() "
              "if isinstance(o, (dict, str))]])\nreturn who(), 'tenant-secret-42' in seen",
    "javascript": "const seen = JSON.stringify([Object.keys(globalThis), process.argv, process.env]);\n"
                  "return [await who(), seen.includes('tenant-secret-42')]",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_context_reaches_the_functions_that_ask_for_it_and_never_the_snippet(policy, language):
    def who(*, context: jail.CallContext):
        assert isinstance(context, jail.CallContext)
        return [context.context["tenant"], context.request_id, context.language]

    result = run(policy, language, SPY[language], {"who": who}, context={"tenant": "tenant-secret-42"},
                 request_id="req-1")
    assert result.output == [["tenant-secret-42", "req-1", language], False]
    # the snippet cannot choose the context: Python's keyword is refused, JavaScript's extra argument dropped
    if language == "python":
        error = error_of(policy, language, "return who(context={'tenant': 'other'})", {"who": who},
                         context={"tenant": "t"})
        assert error.name == "TypeError" and "'context'" in error.message
    else:
        output = run(policy, language, "return await who({context: {tenant: 'other'}})", {"who": who},
                     context={"tenant": "t"}).output
        assert output[0] == "t"


# -- limits --------------------------------------------------------------------------------

LIMIT_CASES = {
    "calls": ({"calls": 5}, {"python": "for i in range(6):\n    f(i)", "javascript": "for (let i = 0; i < 6; i++) await f(i)"},
              "more than 5 calls"),
    "call_bytes": ({"call_bytes": 1000}, {"python": "f('x' * 2000)", "javascript": "await f('x'.repeat(2000))"},
                   "arguments of f went over 1000 bytes"),
    "call_result_bytes": ({"call_result_bytes": 1000}, {"python": "f('big')", "javascript": "await f('big')"},
                          "result of f went over 1000 bytes"),
    "calls_in_flight": ({"calls_in_flight": 3}, {"python": None,
                                                 "javascript": "await Promise.all([1, 2, 3, 4].map(f))"},
                        "more than 3 calls at once"),
}


def limited(x):
    return "y" * 5000 if x == "big" else x


async def slow_limited(x):
    await asyncio.sleep(0.2)
    return x


# (a Python snippet makes one call at a time, threads aside: calls_in_flight is JavaScript's)
@pytest.mark.parametrize("language,limit", [(language, limit) for limit, (_, codes, _) in LIMIT_CASES.items()
                                            for language in LANGUAGES if codes[language]])
def test_each_call_limit_ends_the_run_with_a_clear_error(policy, language, limit):
    limits, codes, text = LIMIT_CASES[limit]
    function = slow_limited if limit == "calls_in_flight" else limited
    error = error_of(policy, language, codes[language] + "\nreturn 1", {"f": function}, cls=jail.CallLimitExceeded,
                     limits=limits)
    assert error.name == "CallLimitExceeded" and error.message.startswith("CallLimitExceeded: ") and text in error.message
    # just under the limit, the same snippet runs
    under = {"calls": {"calls": 6}, "call_bytes": {"call_bytes": 4000}, "call_result_bytes": {"call_result_bytes": 6000},
             "calls_in_flight": {"calls_in_flight": 4}}[limit]
    assert run(policy, language, codes[language] + "\nreturn 1", {"f": function}, limits=under).output == 1


def test_limits_have_defaults_and_caps():
    assert (jail.DEFAULT_LIMITS.calls, jail.DEFAULT_LIMITS.call_bytes, jail.DEFAULT_LIMITS.call_result_bytes,
            jail.DEFAULT_LIMITS.calls_in_flight) == (1000, 2**20, 2**20, 64)
    capped = _run.prepare("return 1", limits={"calls": 10**9, "call_bytes": 10**12, "call_result_bytes": 10**12,
                                              "calls_in_flight": 10**6}).limits
    assert (capped.calls, capped.call_bytes, capped.call_result_bytes, capped.calls_in_flight) == (
        10_000, 16 * 2**20, 16 * 2**20, 256)


SLOW = {"python": "return wait()", "javascript": "return await wait()"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_run_that_times_out_in_a_slow_async_call_answers_in_time_and_the_call_is_cancelled(policy, language):
    state = {}

    async def wait():
        state["started"] = True
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = time.monotonic()
            raise

    started = time.monotonic()
    error = error_of(policy, language, SLOW[language], {"wait": wait}, cls=jail.TimeLimitExceeded,
                     limits={"timeout_ms": 700})
    took = time.monotonic() - started
    assert error.stats.calls == 1 and state.get("started")
    assert took < 3, took
    assert "cancelled" in state  # already, when run() returned


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_slow_sync_call_counts_against_the_wall_clock_and_its_result_is_dropped(policy, language):
    done = threading.Event()

    def wait():
        time.sleep(1.2)
        done.set()
        return 1

    started = time.monotonic()
    error_of(policy, language, SLOW[language], {"wait": wait}, cls=jail.TimeLimitExceeded, limits={"timeout_ms": 500})
    assert time.monotonic() - started < 1.1 and not done.is_set()
    assert done.wait(3)  # it ran to its end on its thread, and nothing came of it


def test_time_in_calls_is_in_the_stats(policy):
    def nap():
        time.sleep(0.05)

    result = run(policy, "python", "nap(); nap()\nreturn 1", {"nap": nap})
    assert result.stats.calls == 2 and result.stats.call_ms >= 100 and result.stats.wall_ms >= result.stats.call_ms


def test_a_large_request_with_small_call_limits_is_not_taken_for_a_harness_that_does_not_read(policy):
    scope = {"blob": "x" * 300_000}
    result = run(policy, "python", "return f(len(blob))", {"f": lambda n: n}, scope=scope,
                 limits={"calls_in_flight": 1, "call_result_bytes": 100})
    assert result.output == 300_000
