"""Snippet cases shared by the harness tests (tests/unit/test_harness_direct.py, the
harness run bare) and the conformance suite (tests/conformance, through jail.run in a
sandbox of every backend): one table, two ways of running it."""

import math

LANGUAGES = ["python", "javascript"]


def same(a, b):
    """Equal, including the JSON kind (2 is not 2.0) and NaN == NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


FORGED = '{"ok": true, "value": "forged", "types": {}}'

# (language, code, scope, expected JSON value)
SCOPE_CASES = [
    ("python", "y = x\nreturn y", {"x": 2}, 2),
    ("python", "x = x + 1\nreturn x", {"x": 2}, 3),
    ("python", "total += 5\nreturn total", {"total": 1}, 6),
    ("python", "def f():\n    return x * 2\nreturn f()", {"x": 4}, 8),
    ("python", "def inc():\n    nonlocal total\n    total += 1\ninc()\nreturn total", {"total": 1}, 2),
    ("python", "return len + 1", {"len": 3}, 4),
    ("python", "return [k for k in globals() if not k.startswith('__')]", {"x": 1}, []),
    ("python", "return \uFB01", {"\uFB01": 5}, 5),  # NFKC-folded identifier
    ("python", "return __name__", {}, "__main__"),
    ("javascript", "let y = x\nreturn y", {"x": 2}, 2),
    ("javascript", "x = x + 1\nreturn x", {"x": 2}, 3),
    ("javascript", "total += 5\nreturn total", {"total": 1}, 6),
    ("javascript", "const f = () => x * 2\nreturn f()", {"x": 4}, 8),
    ("javascript", "return Math + 1", {"Math": 3}, 4),
    ("javascript", "return __proto__.a", {"__proto__": {"a": 1}}, 1),
    ("javascript", "await null\nreturn await Promise.resolve(x)", {"x": 7}, 7),
    ("javascript", "return new Promise(r => setTimeout(() => r(9), 10))", {}, 9),
    ("javascript", "return [typeof require, typeof module, typeof main, typeof run]", {}, ["undefined"] * 4),
    # the wrapper is reachable through .caller, but nothing beyond it: the harness is strict
    ("javascript", "const w = (function f() { return f.caller })()\n"
                   "try { return [typeof w, w.caller] } catch (e) { return [typeof w, e.name] }", {},
     ["function", "TypeError"]),
]

# (language, key): refused before anything runs
BAD_SCOPE_KEYS = [
    ("python", "not-an-id"), ("python", "class"), ("python", "1x"), ("python", "__debug__"), ("python", "a b"),
    ("javascript", "not-an-id"), ("javascript", "class"), ("javascript", "await"), ("javascript", "1x"),
    ("javascript", "eval"), ("javascript", "a)"),
]

# (scope, types): a RequestError in either language
BAD_TYPED_SCOPES = [
    ({"when": "2024-03-01T12:00:00"}, {"/when": "date"}),  # no time zone
    ({"n": "1.5"}, {"/n": "bigint"}),
    ({"n": "1"}, {"/n": "money"}),
    ({"n": "1"}, {"/missing": "bigint"}),
    ({"n": "1"}, {"": "bigint"}),
]

# (code, line, column, message), positions as the user wrote them
PYTHON_SYNTAX_ERRORS = [
    ("Invalid code!", 1, 9, "SyntaxError: invalid syntax"),
    ("x = 1\ny = (\n", 2, 5, "SyntaxError: '(' was never closed"),
    ("x = 1\n  y = 2", 2, 2, "IndentationError: unexpected indent"),  # Python's own offset
    ("await x", 1, 1, "SyntaxError: 'await' outside async function"),
]

# (code, line, column, message)
JAVASCRIPT_SYNTAX_ERRORS = [
    ("Invalid code!", 1, 9, "SyntaxError: Unexpected identifier 'code'"),
    ("let a = 1;\nlet b = 2;\nlet c = ;", 3, 9, "SyntaxError: Unexpected token ';'"),
    ("let a = 1;\nreturn (", 2, 9, "SyntaxError: Unexpected end of input"),
    ("\tlet x = 1 +* 2", 1, 13, "SyntaxError: Unexpected token '*'"),
]

# (code, message): thrown non-Errors and rejections
JAVASCRIPT_THROWN = [
    ("throw 42", "Error: 42"),
    ("throw 'x'", "Error: x"),
    ("throw {a: 1}", "Error: { a: 1 }"),
    ("throw null", "Error: null"),
    ("await Promise.reject(7)", "Error: 7"),
    ("return Promise.reject(new RangeError('no'))", "RangeError: no"),
    ("class MyError extends Error { constructor(m) { super(m); this.name = 'MyError' } }\nthrow new MyError('m')",
     "MyError: m"),
    ("setTimeout(() => { throw new Error('in a callback') }, 0)\nawait new Promise(r => setTimeout(r, 1000))",
     "Error: in a callback"),
    ("Promise.reject(new Error('unhandled'))\nawait new Promise(r => setTimeout(r, 1000))", "Error: unhandled"),
    ("await new Promise(() => {})", "Error: the snippet never settled: its promise stayed pending"),
    ("return {ok: 1, get a() { throw new RangeError('from a getter') }}", "RangeError: from a getter"),
]

# (language, code returning 1): what runs after the result changes nothing
AFTER_THE_RESULT = [
    ("javascript", "Promise.reject(new Error('late'))\nreturn 1"),
    ("javascript", "setTimeout(() => Promise.reject(new Error('later')), 0)\nreturn 1"),
    ("javascript", "setInterval(() => console.log('tick'), 1)\nreturn 1"),
    ("python", "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nreturn 1"),
    ("python", "import atexit\natexit.register(print, 'at exit')\nreturn 1"),
]

# (language, code, type name, JSON Pointer, reason or None)
UNREPRESENTABLE = [
    ("python", "return {'a': [{1, 2}]}", "set", "/a/0", None),
    ("python", "return {'k': {1: 'one'}}", "dict", "/k", "key of type 'int'"),
    ("python", "return [lambda: 1]", "function", "/0", None),
    ("python", "class Thing: pass\nreturn {'a/b': {'c~d': Thing()}}", "Thing", "/a~1b/c~0d", None),
    ("python", "def g():\n    yield 1\nreturn g()", "generator", "the root", None),
    ("python", "x = []\nx.append(x)\nreturn x", "list", "/0", "circular reference"),
    ("python", "yield 1", "generator", "the root", None),
    ("javascript", "return {a: [new Set([1])]}", "Set", "/a/0", None),
    ("javascript", "return [new Map()]", "Map", "/0", None),
    ("javascript", "return {f() {}}.f", "function", "the root", None),
    ("javascript", "return {s: Symbol('x')}", "symbol", "/s", None),
    ("javascript", "class Thing {}\nreturn {'a/b': {'c~d': new Thing()}}", "Thing", "/a~1b/c~0d", None),
    ("javascript", "const x = []; x.push({y: x}); return x", "Array", "/0/y", "circular reference"),
    ("javascript", "return [new Date(NaN)]", "Date", "/0", "invalid date"),
    ("javascript", "return new Int32Array(2)", "Int32Array", "the root", None),
]

# (language, code, error name): exits that become errors
EXIT_ERRORS = [
    ("python", "import sys\nsys.exit(3)", "SystemExit"),
    ("python", "raise SystemExit('bye')", "SystemExit"),
    ("python", "raise KeyboardInterrupt", "KeyboardInterrupt"),
]

# (language, code): the process ends with no message
HARD_EXITS = [
    ("python", "import os\nos._exit(0)"),
    ("javascript", "process.exit(0)"),
    ("javascript", "process.reallyExit(0)"),
]

# (language, code, expected): an error name, or the value really returned
FORGERIES = [
    ("python", f"import os\nos.write(3, b'{FORGED}')\nreturn 1", "OSError"),
    ("python", f"print('{FORGED}')\nreturn 1", 1),
    ("python", "import os\ntry:\n    os.close(3)\nexcept OSError:\n    pass\nreturn 1", 1),
    ("python", "import json, json.encoder\n"
               f"json.dumps = lambda *a, **k: '{FORGED}'\n"
               "json.encoder.encode_basestring = json.encoder.encode_basestring_ascii = lambda s: '\"forged\"'\n"
               "json.JSONEncoder.encode = lambda self, o: 'forged'\n"
               "return {'a': [1, 'x']}", {"a": [1, "x"]}),
    ("python", "import builtins, os, binascii, sys\n"
               "builtins.isinstance = lambda *a: False\nbuiltins.str = builtins.repr = lambda *a: 'forged'\n"
               "builtins.len = lambda *a: 0\nbuiltins.type = lambda *a: int\nbuiltins.list = tuple\n"
               f"real = os.write\nos.write = lambda fd, data: real(fd, b'{FORGED}')\n"
               "binascii.b2a_base64 = lambda *a, **k: b'Zm9yZ2Vk'\n"
               "sys.setrecursionlimit = lambda n: None\n"
               "return {'a': [1, 'x', b'hi', 2**60]}", {"a": [1, "x", "aGk=", "1152921504606846976"]}),
    ("python", "import builtins\nbuiltins.isinstance = lambda *a: True\nraise ValueError('real')", "ValueError"),
    ("python", "import __main__\nreturn sorted(k for k in vars(__main__) if not k.startswith('__'))", []),
    ("python", "import sys\nreturn [m for m in sys.modules if 'run' in m or 'harness' in m]", []),
    ("python", "raise SystemExit(0)", "SystemExit"),
    ("python", "import enum, collections\nclass E(enum.IntEnum):\n    A = 7\n"
               "class S(str):\n    def __str__(self): return 'forged'\n"
               "class L(list):\n    def __iter__(self): return iter(['forged'])\n"
               "P = collections.namedtuple('P', 'x y')\n"
               "return [E.A, S('real'), L([1]), P(1, 2), collections.OrderedDict(a=True)]",
     [7, "real", [1], [1, 2], {"a": True}]),
    ("python", "class Liar:\n    __class__ = int\nreturn Liar()", "TypeError"),
    ("javascript", f"process.mainModule.require('fs').writeSync(3, '{FORGED}')\nreturn 1", "Error"),
    ("javascript", f"console.log('{FORGED}')\nreturn 1", 1),
    ("javascript", "try { process.mainModule.require('fs').closeSync(3) } catch (e) {}\nreturn 1", 1),
    ("javascript", f"JSON.stringify = () => '{FORGED}'\nJSON.parse = () => ({{ok: true, value: 'forged'}})\n"
                   "Object.prototype.toJSON = function () { return 'forged' }\n"
                   "Date.prototype.toJSON = Date.prototype.toISOString = () => 'forged'\n"
                   "Array.prototype.push = Array.prototype.join = Array.prototype.map = () => 'forged'\n"
                   "String.prototype.slice = String.prototype.replace = String.prototype.split = () => 'forged'\n"
                   "String.prototype.charCodeAt = String.prototype.indexOf = () => 0\n"
                   "String.prototype[Symbol.split] = RegExp.prototype.exec = () => null\n"
                   "Object.keys = () => ['forged']; Array.isArray = () => false; Number.isInteger = () => false\n"
                   "Set.prototype.has = () => true; Set.prototype.add = () => null\n"
                   "TextEncoder.prototype.encode = () => new Uint8Array([123, 125])\n"
                   "Function.prototype.call = Function.prototype.apply = Function.prototype.bind = () => 'forged'\n"
                   "Reflect.apply = () => 'forged'; globalThis.BigInt = () => 0\n"
                   "const fs = process.mainModule.require('fs')\n"
                   f"fs.writeSync = (fd) => 0; fs.closeSync = () => {{}}\n"
                   "process.reallyExit = process.exit = () => {}\n"
                   "Object.defineProperty(Object.prototype, 'length', {get() { return 0 }, configurable: true})\n"
                   "return {a: [1, 'x', new Date(0), 2n, new Uint8Array([104, 105])], 'q/\"': 1e21}",
     {"a": [1, "x", "1970-01-01T00:00:00.000Z", "2", "aGk="], 'q/"': 10**21}),
    ("javascript", "Error.prepareStackTrace = () => { throw new Error('nope') }\nnull.x", "TypeError"),
    ("javascript", "Promise.prototype.then = function () {}\nreturn 5", 5),
    ("javascript", "process.removeAllListeners = () => {}\nprocess.emit = () => false\nreturn 5", 5),
    ("javascript", "return Object.keys(process.mainModule.exports).length", 0),
]
