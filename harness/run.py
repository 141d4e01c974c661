"""Run one Python snippet inside the sandbox (DESIGN.md sections 2 and 3).

Invoked as `python3 -I -S -B run.py`. Reads one JSON request {"code", "scope", "types"}
from stdin, runs the code as the body of a function whose parameters are the scope keys,
and writes exactly one JSON message to the result channel (fd 3):
    {"ok": true, "value": ..., "types": {...}}  or  {"ok": false, "error": {...}}
then exits 0; exits 71 if the message cannot be written. It prints nothing itself.

Building blocks: a request may name "functions" of the host. Each becomes one more
parameter, a stub that sends one line {"call": id, "name", "value", "types"} on the
channel and waits for the host's line {"reply": id, ...} on stdin, which the harness
then moves to a private fd (jail/_calls.py describes the protocol).

Standard library only: this file must never import anything of ours.
"""
import ast
import binascii
import builtins
import fcntl
import json
import keyword
import linecache
import os
import re
import sys
import unicodedata
from datetime import datetime
from decimal import Decimal

# The snippet shares the builtins module and may replace its entries (builtins.len = ...).
# Globals are looked up before builtins, so pinning them here keeps the originals for us.
globals().update({k: v for k, v in vars(builtins).items() if not k.startswith("__")})

# Module attributes the harness needs after the snippet has run, captured before it runs.
_write, _close, _exit, _getpid, _read = os.write, os.close, os._exit, os.getpid, os.read
_b64encode, _exc_info, _loads = binascii.b2a_base64, sys.exc_info, json.loads
_setrecursionlimit = sys.setrecursionlimit
_FunctionType = type(lambda: None)

FILENAME = "<snippet>"
MAX_DEPTH = 500  # containers nested deeper than this are refused, not a crash
MAX_SAFE_INT = 2**53 - 1  # larger ints travel as "bigint" so JavaScript keeps every digit
NO_MESSAGE_EXIT = 71

# Typed-value forms shared with harness/run.js and jail/_codec.py.
DATE_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{1,9})?)?(Z|[+-]\d\d:\d\d)", re.ASCII)
BIGINT_RE = re.compile(r"-?[0-9]+", re.ASCII)
BASE64_RE = re.compile(r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII)
DECIMAL_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?|NaN|-?Infinity",
                        re.ASCII)
NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}

# JSON string escapes; lone surrogates are escaped so the message stays valid UTF-8.
_ESCAPES = {c: "\\u%04x" % c for c in [*range(0x20), *range(0xD800, 0xE000)]}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t"})


class RequestError(Exception):
    """The request itself is malformed (the host validates first; this is a backstop)."""


class Unrepresentable(Exception):
    """A result value has no JSON form."""


# -- step 1: take the result channel ------------------------------------------------------

def take_result_channel():
    """Move fd 3 to a private close-on-exec fd (>= 10) and close fd 3, so the snippet
    can neither write to nor close the channel by its well-known number."""
    try:
        try:
            fd = fcntl.fcntl(3, fcntl.F_DUPFD_CLOEXEC, 10)
        except OSError:  # EINVAL: the fd limit is below 11
            fd = fcntl.fcntl(3, fcntl.F_DUPFD_CLOEXEC, 4)
        _close(3)
        return fd
    except OSError:
        _exit(NO_MESSAGE_EXIT)


# -- step 2: read the request --------------------------------------------------------------

def read_request():
    """The request: one line of JSON, then EOF (no functions) or the host's replies."""
    chunks = []
    while True:
        chunk = _read(0, 65536)
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            Channel.pending = chunk[end + 1:]
            break
        if not chunk:
            break
        chunks.append(chunk)
    request = json.loads(b"".join(chunks).decode("utf-8"))
    if not isinstance(request, dict) or not isinstance(request.get("code"), str):
        raise RequestError("the request needs a string 'code'")
    scope = request.get("scope") or {}
    types = request.get("types") or {}
    functions = request.get("functions") or []
    if not isinstance(scope, dict) or not isinstance(types, dict):
        raise RequestError("'scope' and 'types' must be objects")
    if not isinstance(functions, list) or not all(isinstance(name, str) for name in functions):
        raise RequestError("'functions' must be a list of names")
    return request["code"], scope, types, functions


# -- step 3: decode typed scope values --------------------------------------------------

def decode_scope(scope, types):
    for pointer, name in types.items():
        decoder = DECODERS.get(name) if isinstance(name, str) else None
        if decoder is None:
            raise RequestError(f"unknown type {name!r} at {pointer}")
        if pointer == "":
            raise RequestError("the scope itself cannot be typed")
        parent, key = locate(scope, pointer)
        try:
            parent[key] = decoder(parent[key])
        except (TypeError, ValueError, OverflowError):
            raise RequestError(f"bad {name!r} value at {pointer}: expected {EXPECTED[name]}") from None


def locate(root, pointer):
    """(container, key) that the RFC 6901 pointer names inside root."""
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise RequestError(f"bad JSON Pointer {pointer!r}")
    node = root
    for part in [unescape(p, pointer) for p in pointer[1:].split("/")]:
        if isinstance(node, list):
            if not re.fullmatch(r"0|[1-9][0-9]*", part, re.ASCII) or int(part) >= len(node):
                raise RequestError(f"JSON Pointer {pointer!r} names no value")
            part = int(part)
        elif not isinstance(node, dict) or part not in node:
            raise RequestError(f"JSON Pointer {pointer!r} names no value")
        parent, node = node, node[part]
    return parent, part


def unescape(part, pointer):
    if re.search(r"~[^01]|~$", part):
        raise RequestError(f"bad JSON Pointer {pointer!r}")
    return part.replace("~1", "/").replace("~0", "~")


def checked(pattern, value):
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(value)
    return value


def decode_float(value):
    if not isinstance(value, str) or value not in NON_FINITE:
        raise ValueError(value)
    return NON_FINITE[value]


def decode_undefined(value):
    if value is not None:
        raise ValueError(value)


EXPECTED = {
    "date": "an ISO 8601 date-time with a time zone, such as 2024-03-01T12:00:00Z",
    "bigint": "a decimal integer string", "bytes": "padded base64", "decimal": "a decimal number string",
    "float": "'NaN', 'Infinity' or '-Infinity'", "undefined": "null",
}

DECODERS = {
    # the pattern requires a zone: a date without one is refused, never guessed
    "date": lambda v: datetime.fromisoformat(checked(DATE_RE, v)),
    "bigint": lambda v: int(checked(BIGINT_RE, v)),
    "bytes": lambda v: binascii.a2b_base64(checked(BASE64_RE, v)),
    "decimal": lambda v: Decimal(checked(DECIMAL_RE, v)),
    "float": decode_float,
    "undefined": decode_undefined,
}


# -- step 4: bind the scope keys as parameters -------------------------------------------

def parameter_names(scope, functions=()):
    names = []
    for key in [*scope, *functions]:
        # Python folds identifiers to NFKC, so the parameter must be spelled that way too.
        name = key if key.isascii() else unicodedata.normalize("NFKC", key)
        if not name.isidentifier() or keyword.iskeyword(name) or name == "__debug__":
            raise RequestError(f"scope key {key!r} is not a usable Python identifier")
        if name in names:
            raise RequestError(f"scope key {key!r} clashes with another key")
        names.append(name)
    return names


# -- step 5: compile the code as a function body ------------------------------------------

def compile_snippet(code, names, snippet_globals):
    """The code becomes the body of `def <module>(*names)`, positions untouched, so
    errors point where the user wrote them and the wrapper adds no line."""
    tree = ast.parse(code, FILENAME)
    body = tree.body or [ast.Pass(lineno=1, col_offset=0, end_lineno=1, end_col_offset=0)]
    params = ast.arguments(posonlyargs=[], args=[ast.arg(arg=n) for n in names], vararg=None,
                           kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])
    function = ast.FunctionDef(name="<module>", args=params, body=body, decorator_list=[],
                               returns=None, type_comment=None, lineno=1, col_offset=0)
    module = ast.fix_missing_locations(ast.Module(body=[function], type_ignores=[]))
    module_code = compile(module, FILENAME, "exec", dont_inherit=True)
    function_code = next(c for c in module_code.co_consts if isinstance(c, type(module_code)))
    # Built directly, so the function is never bound to a name the snippet could see.
    return _FunctionType(function_code, snippet_globals)


def fresh_main_module():
    """A new __main__ for the snippet: its globals hold none of the harness's names,
    and `import __main__` finds it rather than this file."""
    module = type(sys)("__main__")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    return vars(module)


# -- step 6: encode the result (own encoder: the snippet may have patched json) -------------

def encode(value):
    """Python value -> (JSON text, types map); raises Unrepresentable."""
    types = {}
    return encode_value(value, "", 0, types, set()), types


def encode_value(v, path, depth, types, active):
    # type(v) and base-type methods throughout: a subclass or a lying __class__ cannot
    # change what is written
    t = type(v)
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if issubclass(t, int):
        n = int.__index__(v)
        if -MAX_SAFE_INT <= n <= MAX_SAFE_INT:
            return int.__repr__(n)
        return tagged(types, path, "bigint", int.__repr__(n))
    if issubclass(t, float):
        f = float.__float__(v)
        if f != f or f in (float("inf"), float("-inf")):
            return tagged(types, path, "float", "NaN" if f != f else "Infinity" if f > 0 else "-Infinity")
        return float.__repr__(f)
    if issubclass(t, str):
        return quote(v)
    if issubclass(t, datetime):
        if datetime.utcoffset(v) is None:  # a naive result is taken as UTC
            return tagged(types, path, "date", datetime.isoformat(v) + "+00:00")
        return tagged(types, path, "date", datetime.isoformat(v))
    if issubclass(t, Decimal):
        return tagged(types, path, "decimal", Decimal.__str__(v))
    if issubclass(t, (bytes, bytearray, memoryview)):
        try:
            data = _b64encode(v, newline=False)
        except (TypeError, ValueError, BufferError):  # e.g. a non-contiguous or released view
            raise Unrepresentable(describe(v, path, "not a contiguous byte buffer")) from None
        return tagged(types, path, "bytes", bytes.decode(data, "ascii"))
    if issubclass(t, (list, tuple, dict)):
        if depth >= MAX_DEPTH:
            raise Unrepresentable(describe(v, path, f"nested deeper than {MAX_DEPTH} levels"))
        if id(v) in active:
            raise Unrepresentable(describe(v, path, "circular reference"))
        active.add(id(v))
        if issubclass(t, dict):
            items = list(dict.items(v))
            for key, _ in items:
                if not issubclass(type(key), str):
                    raise Unrepresentable(describe(v, path, f"key of type {type(key).__name__!r}"))
            text = "{" + ",".join(quote(k) + ":" + encode_value(item, path + "/" + escape(k), depth + 1, types, active)
                                  for k, item in items) + "}"
        else:  # tuples become arrays
            items = list.copy(v) if issubclass(t, list) else tuple.__getitem__(v, slice(None))
            text = "[" + ",".join(encode_value(item, f"{path}/{i}", depth + 1, types, active)
                                  for i, item in enumerate(items)) + "]"
        active.discard(id(v))
        return text
    raise Unrepresentable(describe(v, path))


def tagged(types, path, name, text):
    types[path] = name
    return quote(text)


def quote(s):
    return '"' + str.translate(s, _ESCAPES) + '"'


def escape(key):
    return str.replace(str.replace(key, "~", "~0"), "/", "~1")


def describe(value, path, reason=None):
    where = path if path else "the root"
    text = f"cannot represent a value of type {type(value).__name__!r} at {where}"
    return f"{text} ({reason})" if reason else text


# -- errors -------------------------------------------------------------------------------

def syntax_error_info(exc, lines):
    """A compile error of the snippet, located where the user wrote it."""
    name, text, line, column = type(exc).__name__, exc.msg, exc.lineno, exc.offset
    parts = [f'  File "{FILENAME}", line {line}'] if line else []
    source = source_line(lines, line)
    if source is not None and isinstance(column, int) and column > 0:
        indent = len(source) - len(source.lstrip())
        width = exc.end_offset - column if exc.end_lineno == line and (exc.end_offset or 0) > column else 1
        parts += ["    " + source.strip(), "    " + " " * max(column - 1 - indent, 0) + "^" * width]
    return {"name": name, "message": f"{name}: {text}", "line": line,
            "column": column if isinstance(column, int) and column > 0 else None,
            "traceback": "\n".join(parts + [f"{name}: {text}"])}


def error_info(exc, tb, lines):
    """An exception raised while the snippet ran, with a traceback of snippet frames only."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except BaseException:
        text = "<exception str() failed>"
    headline = f"{name}: {text}" if text else name
    line = column = None
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == FILENAME:  # harness and library frames are dropped
            line, column, caret = position(tb, lines)
            frame = f'  File "{FILENAME}", line {line}, in {code.co_name}'
            source = source_line(lines, line)
            if source is not None:
                frame += "\n    " + source.strip() + ("\n" + caret if caret else "")
            frames.append(frame)
        tb = tb.tb_next
    traceback = "\n".join(["Traceback (most recent call last):", *collapse(frames), headline])
    return {"name": name, "message": headline, "line": line, "column": column,
            "traceback": traceback if frames else None}


def position(tb, lines):
    """(line, 1-based character column, caret line) of a traceback entry."""
    line, column, caret = tb.tb_lineno, None, None
    try:
        start, end, col, end_col = list(tb.tb_frame.f_code.co_positions())[tb.tb_lasti // 2]
    except (IndexError, ValueError):
        return line, None, None
    source = source_line(lines, line)
    if start == line and col is not None and source is not None:
        raw = str.encode(source, "utf-8", "surrogatepass")  # co_positions counts UTF-8 bytes
        column = len(bytes.decode(raw[:col], "utf-8", "replace")) + 1
        if end == line and end_col is not None and end_col > col:
            width = len(bytes.decode(raw[col:end_col], "utf-8", "replace"))
            indent = len(source) - len(str.lstrip(source))
            caret = "    " + " " * (column - 1 - indent) + "^" * width
    return line, column, caret


def source_line(lines, line):
    return lines[line - 1] if isinstance(line, int) and 0 < line <= len(lines) else None


def collapse(frames, keep=3):
    """Fold a long run of one repeated frame (deep recursion), as Python's traceback does."""
    out, run = [], 0
    for frame in [*frames, None]:
        if out and frame == out[-1]:
            run += 1
            if run < keep:
                out.append(frame)
            continue
        if run >= keep:
            out.append(f"  [Previous line repeated {run - keep + 1} more times]")
        run = 0
        if frame is not None:
            out.append(frame)
    return out


def error_message(name, text):
    return {"name": name, "message": f"{name}: {text}", "line": None, "column": None, "traceback": None}


# -- building blocks: the host's functions as stubs ----------------------------------------

class Channel:
    """The calls of one run: frames out on the result channel, replies in on a private
    copy of stdin. Calls from threads take turns writing and reading; a call from a fork
    of the snippet, or after the result was sent, raises instead of reaching the host."""

    pending = b""  # what came after the request on stdin
    lock = None  # held to write on the result channel, once there are functions
    closed = False  # the message is sent: no call may follow it

    def __init__(self, out_fd, pid):
        import _thread

        self.out_fd, self.pid = out_fd, pid
        self.in_fd = take_stdin()
        Channel.lock = _thread.allocate_lock()
        self.read_lock = _thread.allocate_lock()
        self.last_id = 0
        self.replies = {}

    def stub(self, name):
        call = self.call

        def stub(*args, **kwargs):
            return call(name, args, kwargs)

        stub.__name__ = stub.__qualname__ = name
        return stub

    def call(self, name, args, kwargs):
        if _getpid() != self.pid:
            raise RuntimeError(f"{name}: functions can be called only from the snippet's own process")
        try:
            types = {}
            value = encode_value({"args": list(args), "kwargs": kwargs}, "", 0, types, set())
        except Unrepresentable as exc:
            raise TypeError(f"{name}: {exc.args[0]}") from None
        with Channel.lock:
            if self.closed:
                raise RuntimeError(f"{name}: the run is over")
            self.last_id += 1
            call_id = self.last_id
            frame = '{"call":%d,"name":%s,"value":%s,"types":%s}\n' % (call_id, quote(name), value, encode(types)[0])
            data = memoryview(str.encode(frame, "utf-8"))
            while data:
                data = data[_write(self.out_fd, data):]
        reply = self.wait(call_id)
        if reply.get("ok") is True:
            holder = [reply.get("value")]
            try:
                decode_value(holder, reply.get("types") or {})
            except RequestError as exc:
                raise TypeError(f"{name}: {exc}") from None
            return holder[0]
        error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        raise host_exception(str(error.get("name") or "Error"), str(error.get("message") or "")) from None

    def wait(self, call_id):
        with self.read_lock:
            while call_id not in self.replies:
                lines = (Channel.pending + self.read()).split(b"\n")
                Channel.pending = lines.pop()
                for line in lines:
                    reply = _loads(line.decode("utf-8"))
                    self.replies[reply["reply"]] = reply
            return self.replies.pop(call_id)

    def read(self):
        data = _read(self.in_fd, 1 << 20)
        if not data:  # the host closed it: the run is over
            raise RuntimeError("the run is over")
        return data


def take_stdin():
    """stdin moved to a private close-on-exec fd (>= 10), /dev/null put on fd 0, so the
    snippet can neither read the host's replies nor take their place."""
    try:
        fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 10)
    except OSError:  # EINVAL: the fd limit is below 11
        fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 4)
    try:
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        os.dup2(null, 0)
        _close(null)
    except OSError:
        _close(0)
    return fd


def decode_value(holder, types):
    """Decodes typed values in place inside holder[0] (the pointer "" is the value itself)."""
    for pointer, name in types.items():
        decoder = DECODERS.get(name) if isinstance(name, str) else None
        if decoder is None or not isinstance(pointer, str):
            raise RequestError(f"unknown type {name!r} at {pointer!r}")
        parent, key = locate(holder, "/0" + pointer)
        try:
            parent[key] = decoder(parent[key])
        except (TypeError, ValueError, OverflowError):
            raise RequestError(f"bad {name!r} value at {pointer}: expected {EXPECTED[name]}") from None


_HOST_EXCEPTIONS = {}


def host_exception(name, message):
    """An exception named as the host's: a builtin's subclass where the name is a
    builtin exception (so `except KeyError` catches it), else a new Exception class;
    its text is the host's message as it was."""
    cls = _HOST_EXCEPTIONS.get(name)
    if cls is None:
        base = vars(builtins).get(name)
        if not (isinstance(base, type) and issubclass(base, Exception)):
            base = Exception
        cls = _HOST_EXCEPTIONS[name] = type(name, (base,), {"__str__": BaseException.__str__,
                                                          "__module__": "builtins"})
    return cls(message)


# -- step 7: write the one message and leave ----------------------------------------------

def write_and_exit(fd, text):
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:  # what the snippet printed goes out before the message
            stream.flush()
        except BaseException:
            pass
    for fd_out in (1, 2):  # the host answers once stdout, stderr and the channel are all closed
        try:
            _close(fd_out)
        except BaseException:
            pass
    data = memoryview(str.encode(text, "utf-8"))
    if Channel.lock is not None:  # no call frame in the middle of the message, none after it
        Channel.lock.acquire()
        Channel.closed = True
    try:
        while data:
            data = data[_write(fd, data):]
        _close(fd)
    except BaseException:
        _exit(NO_MESSAGE_EXIT)
    _exit(0)  # no atexit hooks, no waiting for threads the snippet left running


def run():
    fd = take_result_channel()
    pid, default_limit = _getpid(), sys.getrecursionlimit()
    _setrecursionlimit(4 * MAX_DEPTH + 1000)  # room for deeply nested requests and results
    try:
        code, scope, types, functions = read_request()
        decode_scope(scope, types)
        names = parameter_names(scope, functions)
        if functions:
            channel = Channel(fd, pid)
            scope.update((name, channel.stub(name)) for name in functions)
    except BaseException as exc:
        text = str(exc) if isinstance(exc, RequestError) else f"the request is not valid: {exc}"
        write_and_exit(fd, encode({"ok": False, "error": error_message("RequestError", text)})[0])
    lines = re.split(r"\r\n|\r|\n", code)  # the tokenizer's newlines only (not splitlines())
    linecache.cache[FILENAME] = (len(code), None, [l + "\n" for l in lines], FILENAME)
    try:
        function = compile_snippet(code, names, fresh_main_module())
    except SyntaxError as exc:
        write_and_exit(fd, encode({"ok": False, "error": syntax_error_info(exc, lines)})[0])
    except BaseException as exc:  # e.g. too deeply nested code
        write_and_exit(fd, encode({"ok": False, "error": error_info(exc, None, lines)})[0])
    _setrecursionlimit(default_limit)  # the snippet gets Python's usual limit
    try:
        result = function(*scope.values())
    except BaseException as exc:  # SystemExit and KeyboardInterrupt become error results too
        tb = _exc_info()[2]
        if _getpid() != pid:  # a fork made by the snippet must not write a second message
            _exit(0)
        _setrecursionlimit(4 * MAX_DEPTH + 1000)
        write_and_exit(fd, encode({"ok": False, "error": error_info(exc, tb, lines)})[0])
    if _getpid() != pid:
        _exit(0)
    _setrecursionlimit(4 * MAX_DEPTH + 1000)
    try:
        value, types = encode(result)
        message = '{"ok":true,"value":' + value + ',"types":' + encode(types)[0] + "}"
    except Unrepresentable as exc:
        message = encode({"ok": False, "error": error_message("TypeError", exc.args[0])})[0]
    except BaseException as exc:  # snippet code run while encoding (e.g. a tzinfo) raised
        message = encode({"ok": False, "error": error_info(exc, _exc_info()[2], lines)})[0]
    write_and_exit(fd, message)


# -- a zygote (--zygote): one warm interpreter that forks a fresh child per request ---------

ZYGOTE_LIBRARY = "/opt/zygote/zygote.so"


def become_zygote_child():
    """Warm up, then serve as the fork server of native/zygote.c: this returns only
    in a new child, already a sandbox of its own, which then runs as a fresh process.
    Nothing of the zygote's own (ctypes, its argv) is left for the snippet to see."""
    before = set(sys.modules)
    warm_up()
    import ctypes

    serve = ctypes.PyDLL(ZYGOTE_LIBRARY).jail_zygote_serve  # PyDLL: the GIL stays held across the fork
    serve()
    ctypes.pythonapi.PyOS_AfterFork_Child()  # what os.fork does in a child: at-fork hooks, thread state
    del serve, ctypes
    for name in set(sys.modules) - before:
        del sys.modules[name]
    del sys.argv[1:]
    # Again in the child, before its request comes: the pages the zygote shares with it
    # are copied on first write (reference counts too), and this way not on the request's time.
    warm_up()


def warm_up():
    """The request's path once over (read, compile, encode), touching no state a snippet sees."""
    request = json.loads('{"code": "return x", "scope": {"x": 1}, "types": {}}')
    decode_scope(request["scope"], request["types"])
    code = request["code"]
    re.split(r"\r\n|\r|\n", code)
    compile_snippet(code, parameter_names(request["scope"]), {"__builtins__": builtins})
    encode([1, "a", {"b": True}, None, 2.5, Decimal("1.5"), datetime(2000, 1, 1)])


if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        become_zygote_child()
    run()
