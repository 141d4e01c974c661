'use strict';
// Run one JavaScript snippet inside the sandbox (DESIGN.md sections 2 and 3).
//
// Invoked as `node run.js`. Reads one JSON request {"code", "scope", "types"} from stdin,
// runs the code as the body of an async function whose parameters are the scope keys, and
// writes exactly one JSON message to the result channel (fd 3):
//     {"ok": true, "value": ..., "types": {...}}  or  {"ok": false, "error": {...}}
// then exits 0; exits 71 if the message cannot be written. It prints nothing itself.
// Building blocks: a request may name "functions" of the host. Each becomes one more
// parameter, a function that sends one line {"call": id, "name", "value", "types"} on the
// channel and returns a Promise settled by the host's line {"reply": id, ...} on stdin
// (jail/_calls.py describes the protocol); several may be in flight at once.
// Node built-ins only. Strict mode, so .caller/.callee never lead back into this file.

const fs = require('fs');
const vm = require('vm');
const util = require('util');

// The snippet shares this realm and may replace globals and prototype methods
// (JSON.stringify, Object.prototype.toJSON, Array.prototype.push, String.prototype.split...).
// Everything used after it starts is captured here, before it runs, and called unbound.
const uncurry = Function.prototype.bind.bind(Function.prototype.call);
const { keys: ObjectKeys, getPrototypeOf: ObjectGetPrototypeOf,
  getOwnPropertyDescriptor: ObjectGetOwnPropertyDescriptor, defineProperty: ObjectDefineProperty } = Object;
const ObjectPrototype = Object.prototype;
const IsPrototypeOf = uncurry(Object.prototype.isPrototypeOf);
const ArrayIsArray = Array.isArray;
const NumberIsInteger = Number.isInteger;
const BigIntOf = BigInt;
const StringOf = String;
const CharCodeAt = uncurry(String.prototype.charCodeAt);
const StringSlice = uncurry(String.prototype.slice);
const IndexOf = uncurry(String.prototype.indexOf);
const RegExpExec = uncurry(RegExp.prototype.exec);
const DateGetTime = uncurry(Date.prototype.getTime);
const DateToISOString = uncurry(Date.prototype.toISOString);
const TypedArrayPrototype = ObjectGetPrototypeOf(Uint8Array.prototype);
const TypedArrayTag = uncurry(ObjectGetOwnPropertyDescriptor(TypedArrayPrototype, Symbol.toStringTag).get);
const TypedArrayLength = uncurry(ObjectGetOwnPropertyDescriptor(TypedArrayPrototype, 'length').get);
const SafeSet = Set;
const SetHas = uncurry(Set.prototype.has);
const SetAdd = uncurry(Set.prototype.add);
const SetDelete = uncurry(Set.prototype.delete);
const ReflectApply = Reflect.apply;
const ErrorPrototype = Error.prototype;
const isNativeError = util.types.isNativeError;
const inspect = util.inspect;
const utf8Encoder = new TextEncoder();
const EncodeUtf8 = uncurry(TextEncoder.prototype.encode);
const { writeSync, closeSync, openSync, readSync, read: fsRead } = fs;
const JSONParse = JSON.parse;
const SafePromise = Promise;
const ErrorCaptureStackTrace = Error.captureStackTrace;
const BufferConcat = Buffer.concat;
const BufferFrom = Buffer.from;
const BufferIndexOf = uncurry(Uint8Array.prototype.indexOf);
const Subarray = uncurry(Uint8Array.prototype.subarray);
const ArrayPush = uncurry(Array.prototype.push);
const Utf8Decode = uncurry(TextDecoder.prototype.decode);
const utf8Decoder = new TextDecoder();
const SetTimeout = setTimeout;
const ObjectHasOwn = Object.hasOwn;
const NATIVE_ERRORS = { __proto__: null, Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError };
const ProcessOn = uncurry(process.on);
let reallyExit = process.reallyExit;  // exits at once: no 'exit' listeners, no pending work
const AsyncFunction = (async function () {}).constructor;

const FILENAME = '<snippet>';
const MAX_DEPTH = 500;  // containers nested deeper than this are refused, not a crash
const NO_MESSAGE_EXIT = 71;
const SNIPPET_EXIT = 70;  // the snippet ended the process itself

// Typed-value forms shared with harness/run.py and jail/_codec.py.
const DATE_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{1,9})?)?(Z|[+-]\d\d:\d\d)$/;
const BIGINT_RE = /^-?[0-9]+$/;
const BASE64_RE = /^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const DECIMAL_RE = /^([+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?|NaN|-?Infinity)$/;
const NON_FINITE = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };
const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const SNIPPET_FRAME_RE = /<snippet>:(\d+):(\d+)\)?$/;
const SYNTAX_HEAD_RE = /^<snippet>:(\d+)$/;
const RESERVED = new Set(('break case catch class const continue debugger default delete do else enum ' +
  'export extends false finally for function if import in instanceof new null return super switch ' +
  'this throw true try typeof var void while with yield let static implements interface package ' +
  'private protected public await arguments eval').split(' '));

class RequestError extends Error {}
class Unrepresentable extends Error {}

let channel = -1;
// The request and the host's replies: fd 0, or in a zygote child a private fd (takeStdin).
let input = 0;
let sent = false;

// -- step 1: take the result channel ------------------------------------------------------

// Node cannot dup(2); reopening the pipe through /proc gives a private close-on-exec fd
// (libuv opens with O_CLOEXEC), never 0-2. Without /proc (or for a socket, which cannot
// be reopened) the harness keeps using fd 3 as it is.
function takeResultChannel() {
  const reopen = () => openSync('/proc/self/fd/3', fs.constants.O_WRONLY);
  try {
    fs.fstatSync(3);
  } catch (e) {
    reallyExit(NO_MESSAGE_EXIT);
  }
  try {
    const low = [];
    let fd = reopen();
    for (; fd < 3; fd = reopen()) low.push(fd);  // stdin/out/err were closed: skip those numbers
    for (const l of low) closeSync(l);
    closeSync(3);
    return fd;
  } catch (e) {
    return 3;
  }
}

// -- step 2: read the request --------------------------------------------------------------

// One line of JSON, then EOF (no functions) or the host's replies. (warmUp runs it on a
// canned request, so that a zygote's children find its code compiled.)
function readRequestText(read = (buffer) => readSync(input, buffer, 0, buffer.length, null)) {
  const chunks = [];
  const buffer = Buffer.allocUnsafeSlow(1 << 16);
  for (;;) {
    const n = read(buffer);
    const end = buffer.indexOf(10);
    if (end >= 0 && end < n) {
      chunks.push(Buffer.from(buffer.subarray(0, end)));
      if (end + 1 < n) calls.pending.push(Buffer.from(buffer.subarray(end + 1, n)));
      break;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buffer.subarray(0, n)));
  }
  return Buffer.concat(chunks).toString('utf8');
}

function readRequest() {
  const request = JSON.parse(readRequestText());
  if (request === null || typeof request !== 'object' || typeof request.code !== 'string') {
    throw new RequestError("the request needs a string 'code'");
  }
  const scope = request.scope == null ? {} : request.scope;
  const types = request.types == null ? {} : request.types;
  const functions = request.functions == null ? [] : request.functions;
  if (typeof scope !== 'object' || Array.isArray(scope) || typeof types !== 'object' || Array.isArray(types)) {
    throw new RequestError("'scope' and 'types' must be objects");
  }
  if (!Array.isArray(functions) || !functions.every((name) => typeof name === 'string')) {
    throw new RequestError("'functions' must be a list of names");
  }
  return { code: request.code, scope, types, functions };
}

// -- step 3: decode typed scope values -----------------------------------------------------

const EXPECTED = {
  date: 'an ISO 8601 date-time with a time zone, such as 2024-03-01T12:00:00Z',
  bigint: 'a decimal integer string', bytes: 'padded base64', decimal: 'a decimal number string',
  float: "'NaN', 'Infinity' or '-Infinity'", undefined: 'null',
};

const DECODERS = {
  date(v) {  // the pattern requires a zone: a date without one is refused, never guessed
    const d = new Date(checked(DATE_RE, v));
    if (Number.isNaN(d.getTime())) throw new TypeError('invalid date');
    return d;
  },
  bigint: (v) => BigInt(checked(BIGINT_RE, v)),
  bytes: (v) => new Uint8Array(Buffer.from(checked(BASE64_RE, v), 'base64')),  // a copy, not a pool slice
  decimal: (v) => checked(DECIMAL_RE, v),  // no native decimal type: stays a string
  float(v) {
    if (typeof v !== 'string' || !Object.hasOwn(NON_FINITE, v)) throw new TypeError('not a float');
    return NON_FINITE[v];
  },
  undefined(v) {
    if (v !== null) throw new TypeError('not null');
    return undefined;
  },
};

function checked(pattern, value) {
  if (typeof value !== 'string' || !pattern.test(value)) throw new TypeError('bad form');
  return value;
}

function decodeScope(scope, types) {
  for (const pointer of Object.keys(types)) {
    const name = types[pointer];
    if (typeof name !== 'string' || !Object.hasOwn(DECODERS, name)) {
      throw new RequestError(`unknown type ${JSON.stringify(name)} at ${pointer}`);
    }
    if (pointer === '') throw new RequestError('the scope itself cannot be typed');
    decodeAt(scope, pointer, name, pointer);
  }
}

// The value at path in root, decoded as type name in place (shown: the pointer the
// sender wrote). Captured built-ins only: it also runs after the snippet has started.
function decodeAt(root, path, name, shown) {
  const [parent, key] = locate(root, path);
  let value;
  try {
    value = DECODERS[name](parent[key]);
  } catch (e) {
    throw new RequestError(`bad '${name}' value at ${shown}: expected ${EXPECTED[name]}`);
  }
  // defineProperty, not assignment: a key such as "__proto__" must stay a plain key
  ObjectDefineProperty(parent, key, { value, writable: true, enumerable: true, configurable: true });
}

// (container, key) that an RFC 6901 pointer names inside root.
function locate(root, pointer) {
  if (pointer[0] !== '/') throw new RequestError(`bad JSON Pointer ${JSON.stringify(pointer)}`);
  const parts = pointer.slice(1).split('/').map((part) => {
    if (/~[^01]|~$/.test(part)) throw new RequestError(`bad JSON Pointer ${JSON.stringify(pointer)}`);
    return part.replace(/~1/g, '/').replace(/~0/g, '~');
  });
  let parent;
  let node = root;
  let key;
  for (const part of parts) {
    const found = Array.isArray(node)
      ? /^(0|[1-9][0-9]*)$/.test(part) && Number(part) < node.length
      : node !== null && typeof node === 'object' && Object.hasOwn(node, part);
    if (!found) throw new RequestError(`JSON Pointer ${JSON.stringify(pointer)} names no value`);
    [parent, key, node] = [node, part, node[part]];
  }
  return [parent, key];
}

// -- step 4: bind the scope keys as parameters -------------------------------------------

function parameterNames(scope, functions) {
  const names = [...Object.keys(scope), ...functions];
  if (new Set(names).size !== names.length) throw new RequestError('a function is named as a scope key');
  for (const name of names) {
    if (!/^[\p{ID_Start}$_][\p{ID_Continue}$\u200C\u200D]*$/u.test(name) || RESERVED.has(name)) {
      throw new RequestError(`scope key ${JSON.stringify(name)} is not a usable JavaScript identifier`);
    }
  }
  return names;
}

// -- step 5: compile the code as an async function body -----------------------------------

// The header sits on its own line and lineOffset -1 hides it, so lines and columns in
// errors are the user's own. The body is then parsed alone by the AsyncFunction
// constructor, which refuses code that would close the wrapper and continue outside it.
function compileSnippet(code, names) {
  const source = `(async function (${names.join(', ')}) {\n${code}\n})`;
  const script = new vm.Script(source, { filename: FILENAME, lineOffset: -1 });
  new AsyncFunction(...names, code);  // throws SyntaxError for a body that escapes the wrapper
  return script.runInThisContext();
}

function syntaxErrorInfo(error, codeLines) {
  const message = `SyntaxError: ${error.message}`;
  const stack = typeof error.stack === 'string' ? error.stack : '';
  const lines = stack.split('\n');
  const head = SYNTAX_HEAD_RE.exec(lines[0]);
  if (!head || lines.length < 3 || lines[2].indexOf('^') < 0) {
    return { name: 'SyntaxError', message, line: null, column: null, traceback: null };
  }
  let line = Number(head[1]);
  let column = lines[2].indexOf('^') + 1;
  let [text, source, caret] = [message, lines[1], lines[2]];
  if (line > codeLines.length) {  // the parser ran into the wrapper's closing brace
    line = Math.max(codeLines.length, 1);
    source = codeLines[line - 1] || '';
    column = source.length + 1;
    caret = ' '.repeat(source.length) + '^';
    text = 'SyntaxError: Unexpected end of input';
  }
  column = codePointColumn(codeLines, line, column);
  const traceback = `${FILENAME}:${line}\n${source}\n${caret}\n\n${text}`;
  return { name: 'SyntaxError', message: text, line, column, traceback };
}

// -- step 6: encode the result (own encoder: the snippet may have patched JSON) ------------

function encode(value) {
  const state = { types: '', active: new SafeSet() };
  const text = encodeValue(value, '', 0, state);
  return [text, `{${state.types}}`];
}

function encodeValue(v, path, depth, state) {
  switch (typeof v) {
    case 'undefined': return tagged(state, path, 'undefined', null);
    case 'boolean': return v ? 'true' : 'false';
    case 'string': return quote(v);
    case 'bigint': return tagged(state, path, 'bigint', '' + v);
    case 'number':
      if (v !== v) return tagged(state, path, 'float', 'NaN');
      if (v === Infinity || v === -Infinity) return tagged(state, path, 'float', v > 0 ? 'Infinity' : '-Infinity');
      // an integer stays an integer, also past 1e21 where String() would switch to exponents
      if (NumberIsInteger(v) && (v >= 1e21 || v <= -1e21)) return '' + BigIntOf(v);
      return '' + v;
    case 'object': break;
    default: throw new Unrepresentable(describe(v, path));  // function, symbol
  }
  if (v === null) return 'null';
  if (isDate(v)) {
    const time = DateGetTime(v);
    if (time !== time) throw new Unrepresentable(describe(v, path, 'invalid date'));
    return tagged(state, path, 'date', DateToISOString(v));
  }
  if (TypedArrayTag(v) === 'Uint8Array') return tagged(state, path, 'bytes', base64(v));  // Buffer too
  const isArray = ArrayIsArray(v);
  const proto = isArray ? null : ObjectGetPrototypeOf(v);
  if (!isArray && proto !== ObjectPrototype && proto !== null) throw new Unrepresentable(describe(v, path));
  if (depth >= MAX_DEPTH) throw new Unrepresentable(describe(v, path, `nested deeper than ${MAX_DEPTH} levels`));
  if (SetHas(state.active, v)) throw new Unrepresentable(describe(v, path, 'circular reference'));
  SetAdd(state.active, v);
  let text = '';
  if (isArray) {
    const length = v.length;
    for (let i = 0; i < length; i++) {
      text += (i ? ',' : '') + encodeValue(v[i], path + '/' + i, depth + 1, state);
    }
    text = '[' + text + ']';
  } else {
    const keys = ObjectKeys(v);
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      text += (i ? ',' : '') + quote(key) + ':' + encodeValue(v[key], path + '/' + escapeKey(key), depth + 1, state);
    }
    text = '{' + text + '}';
  }
  SetDelete(state.active, v);
  return text;
}

function tagged(state, path, name, text) {
  state.types += (state.types ? ',' : '') + quote(path) + ':"' + name + '"';
  return text === null ? 'null' : quote(text);
}

function isDate(v) {
  try {
    DateGetTime(v);
    return true;
  } catch (e) {
    return false;
  }
}

// JSON string literal; lone surrogates are escaped so the message stays valid UTF-8.
function quote(s) {
  let out = '';
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = CharCodeAt(s, i);
    let escape = null;
    if (c === 0x22) escape = '\\"';
    else if (c === 0x5c) escape = '\\\\';
    else if (c === 0x0a) escape = '\\n';
    else if (c < 0x20) escape = hex4(c);
    else if (c >= 0xd800 && c <= 0xdbff) {
      const next = i + 1 < s.length ? CharCodeAt(s, i + 1) : 0;
      if (next >= 0xdc00 && next <= 0xdfff) i++;
      else escape = hex4(c);
    } else if (c >= 0xdc00 && c <= 0xdfff) escape = hex4(c);
    if (escape !== null) {
      out += StringSlice(s, start, i) + escape;
      start = i + 1;
    }
  }
  return '"' + out + StringSlice(s, start) + '"';
}

function hex4(c) {
  const digits = '0123456789abcdef';
  return '\\u' + digits[(c >> 12) & 15] + digits[(c >> 8) & 15] + digits[(c >> 4) & 15] + digits[c & 15];
}

function escapeKey(key) {
  let out = '';
  for (let i = 0; i < key.length; i++) {
    const c = CharCodeAt(key, i);
    out += c === 0x7e ? '~0' : c === 0x2f ? '~1' : StringSlice(key, i, i + 1);
  }
  return out;
}

function base64(bytes) {
  const n = TypedArrayLength(bytes);
  let out = '';
  for (let i = 0; i < n; i += 3) {
    const a = bytes[i];
    const b = i + 1 < n ? bytes[i + 1] : 0;
    const c = i + 2 < n ? bytes[i + 2] : 0;
    out += BASE64[a >> 2] + BASE64[((a & 3) << 4) | (b >> 4)] +
      (i + 1 < n ? BASE64[((b & 15) << 2) | (c >> 6)] : '=') + (i + 2 < n ? BASE64[c & 63] : '=');
  }
  return out;
}

function describe(value, path, reason) {
  const where = path === '' ? 'the root' : path;
  const text = `cannot represent a value of type '${typeName(value)}' at ${where}`;
  return reason ? `${text} (${reason})` : text;
}

// 'function', 'symbol', or the constructor's name ('Map', 'Set', 'Foo'), read without
// running getters the snippet may have planted.
function typeName(value) {
  if (typeof value !== 'object' || value === null) return typeof value;
  try {
    const proto = ObjectGetPrototypeOf(value);
    const ctor = proto && ObjectGetOwnPropertyDescriptor(proto, 'constructor');
    const name = ctor && typeof ctor.value === 'function' && ObjectGetOwnPropertyDescriptor(ctor.value, 'name');
    if (name && typeof name.value === 'string' && name.value) return name.value;
  } catch (e) { /* a Proxy may throw: fall through */ }
  return 'object';
}

// -- errors -------------------------------------------------------------------------------

// A thrown value as name/message/line/column/traceback; the traceback keeps only snippet
// frames. Non-Error values (throw 42) are reported as name "Error".
function errorInfo(thrown, codeLines) {
  let name = 'Error';
  let text;
  let stack = null;
  if (thrown !== null && (typeof thrown === 'object' || typeof thrown === 'function') &&
      (isNativeError(thrown) || IsPrototypeOf(ErrorPrototype, thrown))) {
    const n = safeString(() => thrown.name);
    if (n) name = n;
    text = safeString(() => thrown.message);
    stack = safeString(() => thrown.stack);
  } else {
    text = safeString(() => (typeof thrown === 'object' && thrown !== null) || typeof thrown === 'function'
      ? inspect(thrown) : StringOf(thrown));
  }
  const message = text ? `${name}: ${text}` : name;
  let line = null;
  let column = null;
  let frames = '';
  if (stack !== null) {
    let start = 0;
    while (start <= stack.length) {
      let end = IndexOf(stack, '\n', start);
      if (end < 0) end = stack.length;
      const frame = StringSlice(stack, start, end);
      const match = RegExpExec(SNIPPET_FRAME_RE, frame);
      if (match !== null && IndexOf(frame, '    at ') === 0) {
        if (line === null) {
          line = +match[1];
          column = codePointColumn(codeLines, line, +match[2]);
        }
        frames += '\n' + frame;
      }
      start = end + 1;
    }
  }
  return { name, message, line, column, traceback: frames ? message + frames : null };
}

function safeString(read) {
  try {
    const value = read();
    return typeof value === 'string' ? value : value === undefined ? '' : StringOf(value);
  } catch (e) {
    return '';
  }
}

// V8 counts columns in UTF-16 units; users count characters.
function codePointColumn(codeLines, line, column) {
  const text = line >= 1 && line <= codeLines.length ? codeLines[line - 1] : null;
  if (typeof text !== 'string') return column;
  let units = 0;
  let points = 0;
  while (units < column - 1 && units < text.length) {
    const c = CharCodeAt(text, units);
    units += c >= 0xd800 && c <= 0xdbff && units + 1 < text.length ? 2 : 1;
    points++;
  }
  return points + (column - 1 - units) + 1;
}

function plainError(name, text) {
  return { name, message: `${name}: ${text}`, line: null, column: null, traceback: null };
}

// -- building blocks: the host's functions as stubs ----------------------------------------

// The calls of one run. A reply is read (on Node's thread pool, stdin staying blocking)
// only while a call waits for one, so a snippet whose promise never settles is still
// told so. A reply to no call of ours (one the snippet forged on a cold run's fd 3) is
// dropped. A snippet that replaces built-ins can break its own calls, never the host's.
const calls = { lastId: 0, waiting: { __proto__: null }, inFlight: 0, reading: false, pending: [], buffer: null };

function makeStub(name) {
  const stub = function (...args) { return callHost(name, args); };
  ObjectDefineProperty(stub, 'name', { value: name });
  return stub;
}

function callHost(name, args) {
  const site = {};
  ErrorCaptureStackTrace(site);  // the snippet's line of the call, for an error the host sends back
  return new SafePromise((resolve, reject) => {
    if (sent) return reject(hostError('Error', `${name}: the run is over`, site));
    let text;
    let types;
    try {
      const state = { types: '', active: new SafeSet() };
      text = encodeValue({ args }, '', 0, state);
      types = `{${state.types}}`;
    } catch (e) {
      return reject(e instanceof Unrepresentable ? hostError('TypeError', `${name}: ${e.message}`, site) : e);
    }
    const id = ++calls.lastId;
    const bytes = EncodeUtf8(utf8Encoder, '{"call":' + id + ',"name":' + quote(name) + ',"value":' + text +
      ',"types":' + types + '}\n');
    const size = TypedArrayLength(bytes);
    try {
      for (let offset = 0; offset < size;) offset += writeSync(channel, bytes, offset, size - offset);
    } catch (e) {
      return reject(hostError('Error', `${name}: the run is over`, site));
    }
    calls.waiting[id] = { resolve, reject, site, name };
    calls.inFlight++;
    readReplies();
  });
}

function readReplies() {
  if (calls.reading || calls.inFlight === 0) return;
  calls.reading = true;
  if (calls.buffer === null) calls.buffer = Buffer.allocUnsafeSlow(1 << 16);
  fsRead(input, calls.buffer, 0, TypedArrayLength(calls.buffer), null, onReplies);
}

function onReplies(error, n) {
  calls.reading = false;
  if (error) {
    if (error.code === 'EAGAIN') return SetTimeout(readReplies, 1);  // the snippet made stdin non-blocking
    n = 0;
  }
  if (!n) {  // the host closed stdin: the run is over
    for (const id of ObjectKeys(calls.waiting)) {
      const waiting = calls.waiting[id];
      delete calls.waiting[id];
      waiting.reject(hostError('Error', `${waiting.name}: the run is over`, waiting.site));
    }
    calls.inFlight = 0;
    return;
  }
  const chunk = BufferFrom(Subarray(calls.buffer, 0, n));
  let start = 0;
  let end;
  while ((end = BufferIndexOf(chunk, 10, start)) >= 0) {
    const part = Subarray(chunk, start, end);
    let line = part;
    if (calls.pending.length) {
      ArrayPush(calls.pending, part);
      line = BufferConcat(calls.pending);
      calls.pending = [];
    }
    deliver(line);
    start = end + 1;
  }
  if (start < n) ArrayPush(calls.pending, Subarray(chunk, start));
  readReplies();
}

function deliver(line) {
  let reply;
  try {
    reply = JSONParse(Utf8Decode(utf8Decoder, line));
  } catch (e) {
    return;
  }
  const id = reply !== null && typeof reply === 'object' ? reply.reply : undefined;
  if (typeof id !== 'number' || !ObjectHasOwn(calls.waiting, id)) return;
  const waiting = calls.waiting[id];
  delete calls.waiting[id];
  calls.inFlight--;
  if (reply.ok === true) {
    const holder = [reply.value];
    try {
      decodeValue(holder, reply.types == null ? {} : reply.types);
    } catch (e) {
      return waiting.reject(hostError('TypeError', `${waiting.name}: ${e.message}`, waiting.site));
    }
    return waiting.resolve(holder[0]);
  }
  const error = reply.error !== null && typeof reply.error === 'object' ? reply.error : {};
  waiting.reject(hostError(StringOf(error.name || 'Error'), StringOf(error.message || ''), waiting.site));
}

// Typed values inside holder[0], decoded in place (the pointer '' is the value itself).
function decodeValue(holder, types) {
  for (const pointer of ObjectKeys(types)) {
    const name = types[pointer];
    if (typeof name !== 'string' || !ObjectHasOwn(DECODERS, name)) throw new RequestError(`unknown type at ${pointer}`);
    decodeAt(holder, '/0' + pointer, name, pointer);
  }
}

// An Error named as the host's exception (a native constructor where there is one of that
// name), whose stack is the snippet's own at the call: uncaught, it points at that line.
function hostError(name, message, site) {
  const Ctor = NATIVE_ERRORS[name] || Error;
  const error = new Ctor(message);
  if (Ctor === Error && name !== 'Error') {
    ObjectDefineProperty(error, 'name', { value: name, writable: true, enumerable: false, configurable: true });
  }
  const stack = safeString(() => site.stack);
  const at = IndexOf(stack, '\n');
  ObjectDefineProperty(error, 'stack', { value: (message ? `${name}: ${message}` : name) +
    (at >= 0 ? StringSlice(stack, at) : ''), writable: true, enumerable: false, configurable: true });
  return error;
}

// -- step 7: write the one message and leave ----------------------------------------------

function sendError(error) {
  const field = (v) => (v === null ? 'null' : typeof v === 'number' ? '' + v : quote(v));
  send('{"ok":false,"error":{"name":' + quote(error.name) + ',"message":' + quote(error.message) +
    ',"line":' + field(error.line) + ',"column":' + field(error.column) +
    ',"traceback":' + field(error.traceback) + '}}');
}

function send(text) {
  if (sent) return;
  sent = true;
  for (const fd of [1, 2]) {  // the host answers once stdout, stderr and the channel are all closed
    try {
      closeSync(fd);
    } catch (e) {}
  }
  try {
    const bytes = EncodeUtf8(utf8Encoder, text);
    const size = TypedArrayLength(bytes);
    for (let offset = 0; offset < size;) offset += writeSync(channel, bytes, offset, size - offset);
    closeSync(channel);
  } catch (e) {
    reallyExit(NO_MESSAGE_EXIT);
  }
  reallyExit(0);  // done: timers or handles the snippet left behind must not keep us alive
}

function sendResult(value, codeLines) {
  let message;
  try {
    const [text, types] = encode(value);
    message = '{"ok":true,"value":' + text + ',"types":' + types + '}';
  } catch (e) {
    if (e instanceof Unrepresentable) return sendError(plainError('TypeError', e.message));
    return sendError(errorInfo(e, codeLines));  // a getter or Proxy trap of the result threw
  }
  send(message);
}

// Make stdout/stderr pipes blocking, so what the snippet printed is out before we exit.
function blockingStdio() {
  for (const stream of [process.stdout, process.stderr]) {
    if (stream && stream._handle && typeof stream._handle.setBlocking === 'function') {
      stream._handle.setBlocking(true);
    }
  }
}

// A warm pool keeps the harness waiting for its request in readRequest(); the first
// compile and encode cost milliseconds, so pay for them before the request comes.
// Nothing here runs code of anyone's or changes anything a snippet can see.
function warmUp(rounds) {
  blockingStdio();  // process.stdout and process.stderr are made on first use
  for (let i = 0; i < rounds; i++) {  // a few rounds: V8 keeps feedback for the harness's own code
    const canned = Buffer.from(`{"code": "return x + ${i}", "scope": {"x": ${i}}, "types": {}}`);
    let given = false;
    const request = JSON.parse(readRequestText((buffer) => (given ? 0 : (given = true, canned.copy(buffer)))));
    parameterNames(request.scope, []);
    compileSnippet(request.code, ObjectKeys(request.scope));
    encode([i, 'a', { b: true }, null, 2.5]);
  }
}

// -- a zygote (--zygote): one warm interpreter that forks a fresh child per request ---------

const ZYGOTE_LIBRARY = '/opt/zygote/zygote.so';

// Warm up, then serve as the fork server of native/zygote.c (loaded as an addon): serve()
// returns only in a new child, already a sandbox of its own, which then runs as a fresh
// process would.
// The addon also gives what Node lacks: a private result channel, as Python's harness has.
function becomeZygoteChild() {
  warmUp(4);
  // Node compiles its crypto modules on first use (tens of ms of a child's cpu): here, once.
  crypto.getRandomValues(new Uint32Array(1));
  // A young generation left full makes every child's first allocation a collection.
  require('v8').setFlagsFromString('--expose-gc');
  require('vm').runInNewContext('gc')();
  const addon = { exports: {} };
  process.dlopen(addon, ZYGOTE_LIBRARY);
  addon.exports.serve();
  reallyExit = addon.exports.exit;  // Node's own exit would join helper threads the fork did not copy
  process.argv.splice(2);
  reseedMathRandom();
  // Again in the child, before its request comes: the pages it shares with the zygote are
  // copied on first write, and this way not on the request's time.
  warmUp(1);
  const fd = addon.exports.takeChannel();
  input = addon.exports.takeStdin();  // the replies: where the snippet cannot read them
  if (fd < 0 || input < 0) reallyExit(NO_MESSAGE_EXIT);
  return fd;
}

// A fork copies V8's random state, so every child would draw the zygote's numbers: the
// child draws from crypto instead (which the addon's serve() has reseeded from the kernel).
function reseedMathRandom() {
  const fill = crypto.getRandomValues.bind(crypto);
  const pool = new Uint32Array(512);
  let next = pool.length;
  const random = function random() {
    if (next >= pool.length) {
      fill(pool);
      next = 0;
    }
    const high = pool[next++] >>> 5;
    const low = pool[next++] >>> 6;
    return (high * 67108864 + low) / 9007199254740992;  // 53 random bits in [0, 1)
  };
  Object.defineProperty(Math, 'random', { value: random, writable: true, configurable: true, enumerable: false });
}

async function run() {
  const zygote = process.argv[2] === '--zygote';
  channel = zygote ? becomeZygoteChild() : takeResultChannel();
  if (!zygote) warmUp(1);
  let code;
  let codeLines;
  let args;
  let snippet;
  try {
    const request = readRequest();
    decodeScope(request.scope, request.types);
    const names = parameterNames(request.scope, request.functions);
    args = Object.keys(request.scope).map((name) => request.scope[name]);
    for (const name of request.functions) args.push(makeStub(name));
    code = request.code;
    codeLines = code.split(/\r\n|[\n\r\u2028\u2029]/);  // V8's line terminators
    snippet = compileSnippet(code, names);
  } catch (e) {
    if (e instanceof SyntaxError && code !== undefined) return sendError(syntaxErrorInfo(e, codeLines));
    const text = e instanceof RequestError ? e.message : `the request is not valid: ${e.message}`;
    return sendError(plainError('RequestError', text));
  }
  // A snippet that ends the process itself (process.exit) never exits 0, so a message it
  // wrote to the channel first is not taken as a result: the host requires exit code 0.
  process.reallyExit = () => reallyExit(SNIPPET_EXIT);
  // An error thrown in a callback, or a rejection nobody handled, ends the run as Node
  // itself would; once the message is sent these events change nothing (we have exited).
  ProcessOn(process, 'uncaughtException', (e) => sendError(errorInfo(e, codeLines)));
  ProcessOn(process, 'unhandledRejection', (e) => sendError(errorInfo(e, codeLines)));
  ProcessOn(process, 'beforeExit',
    () => sendError(plainError('Error', 'the snippet never settled: its promise stayed pending')));
  let value;
  try {
    value = await ReflectApply(snippet, undefined, args);
  } catch (e) {
    return sendError(errorInfo(e, codeLines));
  }
  sendResult(value, codeLines);
}

run();
