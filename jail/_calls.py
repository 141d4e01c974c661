"""Building blocks, host side: the functions a run may call, and the call protocol.

A run given ``functions`` (DESIGN.md section 5) talks with its harness on the
two channels the harness owns before the snippet runs:

    harness -> host   the result channel (fd 3): one line per call,
                      {"call": id, "name": n, "value": {"args": [...], "kwargs": {...}}, "types": {...}}\\n
                      then the run's one message, unterminated, as without functions
    host -> harness   stdin: the request as one line, then one line per reply,
                      {"reply": id, "ok": true, "value": v, "types": {...}}\\n  or
                      {"reply": id, "ok": false, "error": {"name": n, "message": m}}\\n

Ids grow by one or more with each call; values are typed JSON (jail._codec).
The host is the boundary: it runs only the functions given to this run, by
name, checks every frame strictly (anything else ends the run with a
ResultError), holds the run to its call limits (CallLimitExceeded), and when
the run ends cancels the calls still running (async functions) or drops
their results (sync ones, which run on a thread of their own). A run without
functions never reaches this module.
"""

import asyncio
import concurrent.futures
import dataclasses
import functools
import inspect
import json
import os
import time

from jail import _codec
from jail._errors import CallLimitExceeded, ExecutionError, RequestError

# A call frame's bytes beyond its arguments (id, name, keys): what call_bytes does not count.
FRAME_OVERHEAD = 512
CALL_PREFIX = b'{"call":'
# Sync functions run here, never on the event loop (a slow one would stall every run).
_EXECUTOR = None
EXECUTOR_THREADS = 32


@dataclasses.dataclass(frozen=True)
class CallContext:
    """What a function that declares a keyword-only ``context`` parameter
    receives: the run's ``context`` (never shown to the snippet), its request
    id and its language."""

    context: object
    request_id: str
    language: str


@dataclasses.dataclass(frozen=True)
class Function:
    name: str
    function: object
    is_async: bool
    wants_context: bool
    # JavaScript calls drop positional arguments past these, as JavaScript functions do
    # (ids.map(get) passes value, index and array); None: it takes any number.
    positional: int = None


def check_functions(functions, language, scope_keys, check_name) -> dict:
    """{name: Function} from the caller's mapping (RequestError for anything wrong)."""
    if functions is None:
        return {}
    if not isinstance(functions, dict):
        raise RequestError(f"functions: must be a dict of names to callables, not {type(functions).__name__}")
    checked = {}
    for name, function in functions.items():
        check_name(name, language, "functions")
        if name in scope_keys:
            raise RequestError(f"functions: {name!r} is also a scope key: a name is a value or a function, not both")
        if not callable(function):
            raise RequestError(f"functions: {name!r} is not callable but {type(function).__name__}")
        checked[name] = Function(name, function, _is_async(function), _wants_context(function),
                                 _positional(function) if language == "javascript" else None)
    return checked


def _is_async(function) -> bool:
    while isinstance(function, functools.partial):
        function = function.func
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(getattr(function, "__call__", None))


def _wants_context(function) -> bool:
    try:
        parameter = inspect.signature(function).parameters.get("context")
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY


def _positional(function):
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
               for p in parameters)


def _executor():
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = concurrent.futures.ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="jail-call")
    return _EXECUTOR


class MalformedCall(Exception):
    """A frame no harness writes: the run ends with a ResultError."""


# Frames are parsed as strictly as the result message (no NaN, no huge floats).
def _finite_float(text):
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:20]}")
    return number


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


_FRAME_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)


def parse_call(line: bytes, functions: dict, last_id: int):
    """(id, Function, args, kwargs-as-JSON, types) of one call frame; MalformedCall otherwise."""
    try:
        frame = _FRAME_DECODER.decode(line.decode("utf-8"))
    except (ValueError, RecursionError):
        raise MalformedCall("a line that is not one JSON call") from None
    if not isinstance(frame, dict) or set(frame) != {"call", "name", "value", "types"}:
        raise MalformedCall("a line that is not a call")
    call_id, name, value, types = frame["call"], frame["name"], frame["value"], frame["types"]
    if type(call_id) is not int or call_id <= last_id:
        raise MalformedCall(f"a call id out of order ({call_id!r:.20} after {last_id})")
    if not isinstance(name, str) or name not in functions:
        raise MalformedCall(f"a call of {name!r:.60}, which this run was not given")
    if (not isinstance(value, dict) or not set(value) <= {"args", "kwargs"} or not isinstance(value.get("args"), list)
            or not isinstance(value.get("kwargs", {}), dict)):
        raise MalformedCall(f"a call of {name} without its arguments")
    if not isinstance(types, dict) or not all(isinstance(v, str) and v in _codec.TYPE_NAMES for v in types.values()):
        raise MalformedCall(f"a call of {name} with a bad types map")
    return call_id, functions[name], value, types


def _reply(call_id, body: str) -> bytes:
    return ('{"reply":%d,%s}\n' % (call_id, body)).encode()


def error_reply(call_id, name: str, message: str) -> bytes:
    return _reply(call_id, '"ok":false,"error":' + json.dumps({"name": name, "message": message}))


class Calls:
    """One run's calls: reads its frames, runs its functions, writes its replies.

    ``start`` hands it the host end of the sandbox's stdin (non-blocking) and
    the request; ``feed`` takes what the result channel brings. A problem sets
    ``error`` and calls ``kill``; ``close`` ends every call still running.
    """

    def __init__(self, functions: dict, context, request_id: str, language: str, limits, on_call=None):
        self.functions, self.limits, self.on_call = functions, limits, on_call
        self.call_context = CallContext(context, request_id, language)
        self.count = 0
        self.seconds = 0.0
        self.error = None  # the ExecutionError that ended the run, if a call did
        self.result_exceeded = False
        self.tail = bytearray()  # what came after the last call: the run's message
        self._last_id = 0
        self._running = {}  # id -> task
        self._out = bytearray()
        self._fd = -1
        self._loop = self._kill = None
        self._closed = False
        self._cancelled = []
        self._backlog = 0

    # -- wiring --------------------------------------------------------------------------

    def start(self, loop, stdin_fd: int, request: bytes, kill) -> None:
        self._loop, self._fd, self._kill = loop, stdin_fd, kill
        self._backlog = len(request) + 1 + self.limits.calls_in_flight * (self.limits.call_result_bytes +
                                                                          FRAME_OVERHEAD)
        self._send(request + b"\n")

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def _send(self, data: bytes) -> None:
        if self._closed or self._fd < 0:
            return
        if self._out:
            self._out += data
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # EPIPE: the harness is gone; its run is ending
            return
        if written < len(data):
            self._out += data[written:]
            self._loop.add_writer(self._fd, self._flush)
        # A harness that does not read its replies: at most the request and every call in flight's worth waits here.
        if len(self._out) > self._backlog:
            self._fail(_tampered("the sandbox does not read its replies"))

    def _flush(self) -> None:
        try:
            written = os.write(self._fd, self._out)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._out)
        del self._out[:written]
        if not self._out:
            self._loop.remove_writer(self._fd)

    def _fail(self, error: ExecutionError) -> None:
        if self.error is None:
            self.error = error
        self._kill()

    # -- frames from the harness ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """What the result channel brought: calls (whole lines) and the message after them."""
        if self.error is not None or self.result_exceeded:
            return
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            line = bytes(self.tail + data[start:newline]) if self.tail else data[start:newline]
            self.tail.clear()
            start = newline + 1
            self._call(line)
            if self.error is not None:
                return
        self.tail += data[start:]
        if len(self.tail) > self.limits.call_bytes + FRAME_OVERHEAD and self.tail.startswith(CALL_PREFIX):
            self._fail(_call_limit(f"a call's arguments went over {self.limits.call_bytes} bytes"))
        elif len(self.tail) > self.limits.result_bytes:
            self.result_exceeded = True
            self._kill()

    def _call(self, line: bytes) -> None:
        try:
            call_id, function, value, types = parse_call(line, self.functions, self._last_id)
        except MalformedCall as exc:
            self._fail(_tampered(f"the channel carried {exc}"))
            return
        self._last_id = call_id
        name = function.name
        if len(line) > self.limits.call_bytes + FRAME_OVERHEAD:
            self._fail(_call_limit(f"the arguments of {name} went over {self.limits.call_bytes} bytes"))
        elif self.count >= self.limits.calls:
            self._fail(_call_limit(f"the snippet made more than {self.limits.calls} calls (the last of {name})"))
        elif len(self._running) >= self.limits.calls_in_flight:
            self._fail(_call_limit(f"more than {self.limits.calls_in_flight} calls at once (the last of {name})"))
        if self.error is not None:
            return
        self.count += 1
        task = self._loop.create_task(self._run(call_id, function, value, types))
        self._running[call_id] = task

    async def _run(self, call_id, function: Function, value, types) -> None:
        started = time.monotonic()
        outcome = "error"
        try:
            try:
                arguments = _codec.decode(value, types)
            except (ValueError, ArithmeticError) as exc:
                reply = error_reply(call_id, "TypeError", f"{function.name}: {exc}")
            else:
                reply, outcome = await self._invoke(call_id, function, arguments)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            seconds = time.monotonic() - started
            self.seconds += seconds
            self._running.pop(call_id, None)
            if self.on_call is not None:
                self.on_call(function.name, seconds * 1000, outcome)
        if self._closed:
            return
        if reply is None:  # a result over the limit
            return
        self._send(reply)

    async def _invoke(self, call_id, function: Function, arguments):
        """(reply bytes, outcome) of one call: its result, or the exception it raised (name and message only)."""
        args, kwargs = arguments["args"], arguments.get("kwargs", {})
        if function.positional is not None:
            args = args[:function.positional]
        if function.wants_context:
            if "context" in kwargs:  # the snippet never chooses the context
                return error_reply(call_id, "TypeError",
                                   f"{function.name}() got an unexpected keyword argument 'context'"), "error"
            kwargs = {**kwargs, "context": self.call_context}
        try:
            if function.is_async:
                result = await function.function(*args, **kwargs)
            else:
                result = await self._loop.run_in_executor(_executor(),
                                                          functools.partial(function.function, *args, **kwargs))
                if inspect.isawaitable(result):
                    result = await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the host function raised: its name and message only, never its traceback
            return error_reply(call_id, type(exc).__name__, _message(exc)), "error"
        try:
            encoded, result_types = _codec.encode(result)
            body = json.dumps(encoded, allow_nan=False, separators=(",", ":"))
        except (ValueError, TypeError, RecursionError) as exc:
            return error_reply(call_id, "TypeError", f"{function.name} returned a value that cannot be sent "
                                                     f"to the snippet: {exc}"), "error"
        if len(body) > self.limits.call_result_bytes:
            self._fail(_call_limit(f"the result of {function.name} went over {self.limits.call_result_bytes} bytes"))
            return None, "error"
        return _reply(call_id, '"ok":true,"value":' + body + ',"types":' + json.dumps(result_types)), "ok"

    # -- the end -------------------------------------------------------------------------

    def cancel(self) -> None:
        """The run is over: cancels every call still running (async) and
        drops what they would send (sync ones finish on their thread, their
        results unused)."""
        if self._closed:
            return
        self._closed = True
        if self._fd >= 0 and self._out:
            self._loop.remove_writer(self._fd)
        self._out.clear()
        self._cancelled = list(self._running.values())
        for task in self._cancelled:
            task.cancel()

    async def settle(self, timeout=1.0) -> None:
        """Waits (a little) for the cancelled calls to end."""
        if self._cancelled:
            await asyncio.wait(self._cancelled, timeout=timeout)


def _message(exc) -> str:
    try:
        return str(exc)
    except Exception:
        return ""


def _tampered(why: str) -> ExecutionError:
    return ExecutionError(f"ResultError: {why}", name="ResultError")


def _call_limit(text: str) -> CallLimitExceeded:
    return CallLimitExceeded(f"CallLimitExceeded: {text}", name="CallLimitExceeded")
