"""jail.run and jail.run_async: one snippet, one fresh sandbox, one typed result.

The steps: check the arguments (RequestError), encode the scope, run the
language's harness in a sandbox with the request on stdin, then read the one
message the harness wrote on fd 3 and turn the run's outcome into a Result or
the most specific error.
"""

import dataclasses
import json
import keyword
import math
import uuid

from jail import _backends, _calls, _codec, _pool, _process, _runtime, _sandbox
from jail._errors import (ExecutionError, MemoryLimitExceeded, OutputLimitExceeded, RequestError,
                          TimeLimitExceeded)
from jail._policy import DEFAULT_POLICY, Limits, Policy

LANGUAGES = tuple(_runtime.LANGUAGES)
# Per-call limits a caller may set (the rest are the policy's alone).
CALLER_LIMITS = ("timeout_ms", "memory_mb", "output_bytes", "calls", "call_bytes", "call_result_bytes",
                 "calls_in_flight")
MIN_MEMORY_MB = 64  # Node hangs at start under a 32 MiB data limit

JS_RESERVED = frozenset("""
    break case catch class const continue debugger default delete do else enum export extends false finally for
    function if import in instanceof new null return super switch this throw true try typeof var void while with
    yield let static implements interface package private protected public await arguments eval
""".split())


@dataclasses.dataclass(frozen=True)
class Result:
    """A snippet's outcome. ``output`` is decoded to Python values (datetime,
    int, bytes, Decimal ...); ``value`` and ``types`` are its JSON form."""

    output: object
    stdout: str
    stderr: str
    stats: _process.Stats
    value: object = None
    types: dict = dataclasses.field(default_factory=dict)


def _check_language(language):
    if language not in LANGUAGES:
        raise RequestError(f"language: unknown language {language!r}: choose one of {', '.join(LANGUAGES)}")


def _check_scope_key(key, language, field="scope"):
    if not isinstance(key, str):
        raise RequestError(f"{field}: keys must be strings, not {type(key).__name__}")
    if language == "python":
        if not key.isidentifier():
            raise RequestError(f"{field}: {key!r} is not a Python identifier")
        if keyword.iskeyword(key) or key == "__debug__":
            raise RequestError(f"{field}: {key!r} is a reserved word in Python")
    else:
        if not key.replace("$", "_").isidentifier():
            raise RequestError(f"{field}: {key!r} is not a JavaScript identifier")
        if key in JS_RESERVED:
            raise RequestError(f"{field}: {key!r} is a reserved word in JavaScript")


def _scope_json(scope, types, language):
    """(JSON object, types map) to send. Without ``types``, scope holds Python
    values (datetime, int, bytes ...) and is encoded; with ``types`` (as over
    HTTP), scope is already in JSON form and goes as it is, once checked."""
    if scope is None:
        scope = {}
    if not isinstance(scope, dict):
        raise RequestError(f"scope: must be an object (a dict), not {type(scope).__name__}")
    for key in scope:
        _check_scope_key(key, language)
    if types is None:
        try:
            return _codec.encode_scope(scope)
        except ValueError as exc:
            raise RequestError(f"scope: {exc}") from None
    if not isinstance(types, dict):
        raise RequestError(f"types: must be an object mapping JSON Pointers to type names, not {type(types).__name__}")
    try:
        _codec.decode_scope(scope, types)
    except ValueError as exc:
        raise RequestError(f"types: {exc}") from None
    try:
        json.dumps(scope, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"scope: not JSON ({exc}); give typed values in their JSON form with a types entry") from None
    return scope, types


def _limits(limits, policy: Policy) -> Limits:
    if limits is None:
        return policy.capped(policy.limits)
    if isinstance(limits, Limits):
        return policy.capped(limits)
    if not isinstance(limits, dict):
        raise RequestError(f"limits: must be an object, not {type(limits).__name__}")
    unknown = sorted(set(limits) - set(CALLER_LIMITS))
    if unknown:
        raise RequestError(f"limits: unknown field(s) {', '.join(unknown)}: choose from {', '.join(CALLER_LIMITS)}")
    for name, value in limits.items():
        if type(value) is not int or value <= 0:
            raise RequestError(f"limits.{name}: must be a positive integer, not {value!r}")
    if limits.get("memory_mb", MIN_MEMORY_MB) < MIN_MEMORY_MB:
        raise RequestError(f"limits.memory_mb: must be at least {MIN_MEMORY_MB} (an interpreter needs that to start)")
    return policy.capped(dataclasses.replace(policy.limits, **limits))


def _execution_error(error: dict, limits: Limits) -> ExecutionError:
    name = error.get("name") or "Error"
    message = error.get("message") or name
    position = {"line": error.get("line"), "column": error.get("column"), "traceback": error.get("traceback")}
    if name == "MemoryError" or (name == "RangeError" and "allocation failed" in message):
        return MemoryLimitExceeded(_memory_message(limits), name=name, **position)
    return ExecutionError(message, name=name, **position)


def _memory_message(limits: Limits) -> str:
    return f"MemoryLimitExceeded: the snippet used more than {limits.memory_mb} MiB of memory"


def _limit_error(cls, text) -> ExecutionError:
    return cls(f"{cls.__name__}: {text}", name=cls.__name__)


def _interpret(outcome: _process.Outcome, limits: Limits) -> Result:
    """The run's Result, or its error carrying what the snippet printed."""
    stdout = outcome.stdout.decode("utf-8", "replace")
    stderr = outcome.stderr.decode("utf-8", "replace")
    try:
        return _read_outcome(outcome, limits, stdout, stderr)
    except ExecutionError as error:
        error.stdout, error.stderr, error.stats = stdout, stderr, outcome.stats
        raise


def _read_outcome(outcome, limits, stdout, stderr) -> Result:
    """The most specific reading of a run: limits first (whatever the snippet
    managed to write before it was killed does not count), then the message."""
    if outcome.timed_out:
        raise _limit_error(TimeLimitExceeded, f"the snippet ran for more than {limits.timeout_ms} ms")
    if outcome.call_error is not None:  # a call over a limit, or malformed call traffic
        raise outcome.call_error
    if outcome.output_exceeded:
        raise _limit_error(OutputLimitExceeded, f"stdout and stderr went over {limits.output_bytes} bytes")
    if outcome.result_exceeded:
        raise _limit_error(OutputLimitExceeded, f"the returned value went over {limits.result_bytes} bytes")
    if outcome.oom_killed or _died_out_of_memory(outcome, stderr):
        raise MemoryLimitExceeded(_memory_message(limits), name="MemoryLimitExceeded")
    if outcome.seccomp_killed:
        raise _limit_error(ExecutionError, "the snippet made a forbidden system call and was killed")
    message = _message(outcome)
    if message["ok"]:
        types = message.get("types", {})
        try:
            output = _codec.decode(message["value"], types)
        except ValueError as exc:  # a value the host cannot represent, e.g. a JavaScript date before year 1
            raise ExecutionError(f"TypeError: {exc}", name="TypeError") from None
        except ArithmeticError:  # e.g. a decimal whose exponent no Decimal holds: no harness sends that
            raise _tampered() from None
        return Result(output=output, stdout=stdout, stderr=stderr, stats=outcome.stats,
                      value=message["value"], types=types)
    raise _execution_error(message["error"], limits)


# What a runtime prints as it dies for want of memory (V8's heap, or a C++
# allocation its rlimit refused: "terminate called ... std::bad_alloc", or
# "terminate called recursively" when even that message could not be made).
OUT_OF_MEMORY = ("JavaScript heap out of memory", "Reached heap limit", "Fatal process out of memory",
                 "std::bad_alloc", "terminate called", "MemoryError")


def _died_out_of_memory(outcome, stderr) -> bool:
    """A run that ended without its result, by a signal, and whose last
    words say it ran out of memory. (Words a snippet printed itself change
    nothing for a run that returned, or that exited on its own.)"""
    if outcome.result or outcome.stats.signal is None:
        return False
    return any(marker in stderr[-4096:] for marker in OUT_OF_MEMORY)


def _message(outcome):
    """The harness's one message, checked: anything else means the snippet
    ended the process or meddled with the channel, never a result."""
    stats = outcome.stats
    if not outcome.result:
        how = f"was killed by signal {stats.signal}" if stats.signal else f"exited with code {stats.exit_code}"
        raise ExecutionError(f"ExitError: the snippet's process {how} before returning a result", name="ExitError")
    exited_cleanly = stats.exit_code == 0 or outcome.answered_at_result
    message = _parse_message(outcome.result) if exited_cleanly else None
    if message is None:
        raise _tampered()
    return message


def _tampered() -> ExecutionError:
    return ExecutionError("ResultError: the result channel was tampered with", name="ResultError")


def _finite_float(text):
    number = float(text)
    if math.isinf(number):  # 1e999999: no harness writes that, and no JSON answer could carry it
        raise ValueError(f"number out of range: {text[:20]}")
    return number


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


# The snippet may write anything on the channel before the harness does: every
# way of parsing it must fail with ValueError (or RecursionError), none succeed
# with what no harness writes (NaN, Infinity, a float out of range).
_MESSAGE_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)
ERROR_FIELDS = {"name": str, "message": str, "line": int, "column": int, "traceback": str}


def _parse_message(data: bytes):
    """The message as a harness writes it, or None for anything else (any
    bytes at all: deep nesting, huge numbers, bad UTF-8, two messages ...)."""
    try:
        message = _MESSAGE_DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # ValueError: also bad UTF-8, and ints over Python's digit limit
        return None
    if not isinstance(message, dict) or type(message.get("ok")) is not bool:
        return None
    if message["ok"]:
        return message if "value" in message and _well_formed_types(message.get("types", {})) else None
    error = message.get("error")
    if not isinstance(error, dict):
        return None
    for field, kind in ERROR_FIELDS.items():
        value = error.get(field)
        if value is not None and type(value) is not kind:  # type(): a bool is no line number
            return None
    return message


def _well_formed_types(types) -> bool:
    if not isinstance(types, dict):
        return False
    for pointer, name in types.items():
        if not isinstance(name, str) or name not in _codec.TYPE_NAMES:
            return False
        try:
            _codec.parse_pointer(pointer)
        except ValueError:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A checked request, ready to run: what run_async does before it takes a sandbox."""

    language: str
    policy: Policy
    limits: Limits
    request: bytes  # the harness's stdin
    functions: dict = dataclasses.field(default_factory=dict)  # name -> jail._calls.Function
    context: object = None  # for the functions, never the snippet
    request_id: str = ""


def prepare(code, language="python", scope=None, *, types=None, limits=None, policy=None, functions=None,
            context=None, request_id=None) -> Prepared:
    """Checks the arguments of run() (RequestError) without running anything."""
    if not isinstance(code, str):
        raise RequestError(f"code: must be a string, not {type(code).__name__}")
    _check_language(language)
    policy = policy or DEFAULT_POLICY
    if not isinstance(policy, Policy):
        raise RequestError(f"policy: must be a jail.Policy, not {type(policy).__name__}")
    scope_json, scope_types = _scope_json(scope, types, language)
    run_limits = _limits(limits, policy)
    fields = {"code": code, "scope": scope_json, "types": scope_types}
    checked = _calls.check_functions(functions, language, scope_json, _check_scope_key) if functions else {}
    if checked:
        fields["functions"] = list(checked)
    if context is not None:
        try:
            json.dumps(context, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise RequestError(f"context: must be JSON (dicts, lists, strings, numbers, booleans, None): "
                               f"{exc}") from None
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"request_id: must be a string, not {type(request_id).__name__}")
    if checked and not request_id:
        request_id = uuid.uuid4().hex
    # ASCII escapes carry lone surrogates, which UTF-8 cannot.
    request = json.dumps(fields, allow_nan=False).encode()
    return Prepared(language, policy, run_limits, request, checked, context, request_id or "")


async def run_prepared(prepared: Prepared, on_output=None, on_call=None) -> Result:
    """Runs a prepared request in a fresh sandbox: a warm one if the pool has
    one made as this request's would be, else a new one. ``on_output(stream,
    data)`` sees stdout/stderr bytes as they arrive; ``on_call(name, ms,
    outcome)`` each call of a function as it ends ("ok", "error", "cancelled")."""
    calls = None
    if prepared.functions:
        calls = _calls.Calls(prepared.functions, prepared.context, prepared.request_id, prepared.language,
                             prepared.limits, on_call)
    pool = _pool.default_pool()
    warm = await pool.take_async(prepared.language, prepared.policy, prepared.limits)
    if warm is not None:
        try:
            outcome = await _process.communicate(warm, prepared.limits, prepared.request, on_output, warm=True,
                                                 calls=calls)
        finally:
            pool.done()
    else:
        spec = _sandbox.harness_spec(prepared.language, prepared.policy, prepared.limits)
        outcome = await _process.execute(_backends.get(prepared.policy.backend), spec, prepared.request, on_output,
                                         harness=True, calls=calls)
    return _interpret(outcome, prepared.limits)


async def run_async(code, language="python", scope=None, *, types=None, limits=None, policy=None, functions=None,
                    context=None, request_id=None) -> Result:
    """Runs code in a fresh sandbox; see run()."""
    return await run_prepared(prepare(code, language, scope, types=types, limits=limits, policy=policy,
                                      functions=functions, context=context, request_id=request_id))


def run(code, language="python", scope=None, *, types=None, limits=None, policy=None, functions=None, context=None,
        request_id=None) -> Result:
    """Runs a snippet (a function body: ``return`` gives the output) in a
    fresh sandbox and returns its Result.

    ``scope`` keys become real variables of the snippet; its values may be
    Python values (datetime, int, bytes, Decimal, float) or their JSON forms
    described by ``types`` (JSON Pointer -> type name). ``limits`` overrides
    ``timeout_ms``, ``memory_mb`` or ``output_bytes`` (and the call limits),
    capped by the policy.

    ``functions`` ({name: callable}, sync or async) are the host's functions
    the snippet may call by name (building blocks); ``context`` (JSON) goes to
    those that declare a keyword-only ``context`` parameter, as a
    jail.CallContext with ``request_id`` (made up when not given), never to
    the snippet.

    Raises RequestError, ExecutionError (and its limit subclasses) or SandboxError.
    """
    return _process.run_sync(run_async(code, language, scope, types=types, limits=limits, policy=policy,
                                       functions=functions, context=context, request_id=request_id))
