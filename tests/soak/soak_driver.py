"""The soak test's machinery (docs/soak.md): the real service started the way
`make serve` starts it, real HTTP clients (aiohttp for most traffic, `hey` for
the steady-load phases, curl for a few requests), mixed traffic in waves of
rising and falling concurrency, and the invariants checked on the host after
every wave: every answer right, the warm pool full again, no zombie, no
leftover sandbox process or cgroup, the server's fds, threads and memory flat,
/readyz 200; then SIGTERM, a bounded exit, and nothing left behind.

Every request goes to 127.0.0.1 with a client timeout; every loop is bounded
by a wave's deadline and a request count. Latency is measured and reported,
never asserted: the machine is shared.
"""

import asyncio
import dataclasses
import datetime
import glob
import hashlib
import io
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp

from host import free_port
from jail import _pool
from jail._cgroup import CGROUP_ROOT, GROUP
from jail._policy import DEFAULT_POLICY
from jail_http.settings import Settings

REPO = pathlib.Path(__file__).resolve().parents[2]
SETTINGS = Settings()  # what a server started with no configuration uses
LANGUAGES = ("python", "javascript")
POOL_SIZES = {"python": SETTINGS.pool_python, "javascript": SETTINGS.pool_javascript}  # configured
# A forked pool grows on misses up to pool_max, and gives one back every SHRINK_EVERY
# seconds after SHRINK_AFTER seconds without a miss, down to its configured size.
POOL_MAX = getattr(SETTINGS, "pool_max", max(POOL_SIZES.values()))
SHRINK_AFTER = getattr(_pool, "SHRINK_AFTER", 0.0)
SHRINK_EVERY = getattr(_pool, "SHRINK_EVERY", 0.0)
# A request waits in the queue or runs: beyond this many at once, 429 is the documented answer.
CAPACITY = SETTINGS.max_concurrency + SETTINGS.queue_depth
MiB = 1024 * 1024

WAVES = (1, 2, 4, 8, 16, 32, 64, 32, 16, 8, 4, 2, 1)
CLIENT_TIMEOUT = 90  # seconds for any one request, queue included
STALL = 30.0  # seconds without any answer while requests are in flight: the server is stalled
REFILL_BOUND = 1.0  # the pool is full again within this long of idle
SETTLE = 2.0  # seconds a host-side count may take to settle after the pool is full
FD_SLACK = 10  # over the first idle baseline
THREAD_SLACK = 2  # over the baseline after warm-up
RSS_SLACK = (1.30, 50 * MiB)  # over the baseline after warm-up: the larger of +30% and +50 MB
CANCELLED_LINGER = 2.0  # a cancelled request may hold its server slot this long (for the 429 rule)
BIG_IN_FLIGHT = 2  # bodies of several MB in flight at once (client memory, not a server limit)
WARM_UP_FIRST = ("at_limit", "at_limit", "scope_hash", "scope_hash")  # at their largest


# -- the server ------------------------------------------------------------------------------


class Server:
    """`.venv/bin/python -m jail_http --port N` from the repo root, with no JAIL_*
    setting, its stdout and stderr in a log file."""

    def __init__(self, log_path: pathlib.Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        python = REPO / ".venv" / "bin" / "python"
        self.argv = [str(python if python.exists() else sys.executable), "-m", "jail_http", "--port", str(self.port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAIL_")}
        self.log = open(log_path, "wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(self.argv, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.pid = self.process.pid
        self._log_offset = 0
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}) before answering /healthz:\n"
                                   + self.log_text()[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /healthz within 60 s:\n" + self.log_text()[-3000:])
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def new_log(self) -> str:
        """What the server printed since the last call."""
        text = self.log_text()
        new, self._log_offset = text[self._log_offset:], len(text)
        return new

    def log_lines_of(self, request_id: str) -> list:
        return [line for line in self.log_text().splitlines() if request_id in line]

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


# -- what the host shows ---------------------------------------------------------------------


@dataclasses.dataclass
class Proc:
    pid: int
    ppid: int
    state: str
    uid: int
    cgroup: str
    cmdline: str
    start_ticks: int

    def describe(self) -> str:
        return f"pid {self.pid} ppid {self.ppid} state {self.state} uid {self.uid} `{self.cmdline[:90]}`"


def processes() -> dict:
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            rest = stat[stat.rindex(b")") + 2:].split()
            with open(f"/proc/{pid}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            with open(f"/proc/{pid}/cgroup") as f:
                cgroup = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, StopIteration, ValueError):
            continue
        found[pid] = Proc(pid, int(rest[1]), rest[0].decode(), uid, cgroup, cmdline, int(rest[19]))
    return found


def cgroup_parents() -> list:
    """The project's parent group in each hierarchy (v2: one; v1: one per controller)."""
    paths = {os.path.realpath(p) for p in glob.glob(f"{CGROUP_ROOT}/*/{GROUP}") + glob.glob(f"{CGROUP_ROOT}/{GROUP}")
             if os.path.isdir(p)}
    return sorted(paths)


def server_cgroups(server_pid: int) -> dict:
    """hierarchy -> the server's groups in it (named "<server pid>-<n>", jail/_cgroup.py)."""
    prefix = f"{server_pid}-"
    found = {}
    for parent in cgroup_parents():
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        found[parent] = sorted(n for n in names if n.startswith(prefix) and os.path.isdir(f"{parent}/{n}"))
    return found


@dataclasses.dataclass
class HostState:
    zygotes: list  # the server's children that are zygotes
    sandboxes: list  # every process of the server's sandboxes (zygotes and their children, cold ones ...)
    strays: list  # the server's own children that are no zygote
    zombies: list  # of the server's tree, or in its cgroups
    foreign: int  # processes of the sandbox uid range that are not this server's (other runs on the host)
    cgroups: dict  # hierarchy -> names
    fds: int
    threads: int
    rss: int  # bytes
    hwm: int = 0  # bytes: the highest RSS so far (VmHWM)


def host_state(server_pid: int) -> HostState:
    """The server's sandbox processes: its descendants, and anything sitting in
    one of its cgroups (a process that escaped the tree cannot leave its
    cgroup). The sandbox uid range (tests/host.py sandbox_processes()) is
    shared with every other run on this host, so a process of that range
    counts as this server's only through its tree or its cgroups."""
    procs = processes()
    children = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    tree, todo = set(), [server_pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    marker = f"/{GROUP}/{server_pid}-"
    ours = tree | {p.pid for p in procs.values() if marker in p.cgroup and p.pid != server_pid}
    first, count = DEFAULT_POLICY.uid_range
    foreign = sum(1 for p in procs.values() if first <= p.uid < first + count and p.pid not in ours)
    direct = [procs[pid] for pid in children.get(server_pid, ()) if pid in procs]
    zygotes = [p for p in direct if "--zygote" in p.cmdline and p.state != "Z"]
    strays = [p for p in direct if p not in zygotes]
    state = HostState(zygotes=zygotes, sandboxes=[procs[pid] for pid in sorted(ours) if pid in procs],
                      strays=strays, zombies=[procs[pid] for pid in sorted(ours) if procs[pid].state == "Z"],
                      foreign=foreign, cgroups=server_cgroups(server_pid), fds=0, threads=0, rss=0)
    try:
        state.fds = len(os.listdir(f"/proc/{server_pid}/fd"))
        state.threads = len(os.listdir(f"/proc/{server_pid}/task"))
        with open(f"/proc/{server_pid}/status") as f:
            status = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(("VmRSS:", "VmHWM:"))}
        state.rss, state.hwm = int(status["VmRSS"]) * 1024, int(status["VmHWM"]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    return state


def leftovers_after_exit(server_pid: int) -> tuple:
    """(processes, cgroups) of a server that has exited: anything in one of its
    cgroups, and the groups themselves."""
    marker = f"/{GROUP}/{server_pid}-"
    procs = [p for p in processes().values() if marker in p.cgroup]
    groups = {parent: names for parent, names in server_cgroups(server_pid).items() if names}
    return procs, groups


# -- metrics -----------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                pass
    return values


def pool_ready(metrics: dict) -> dict:
    return {language: int(metrics.get(f'jail_pool_ready{{language="{language}"}}', -1)) for language in LANGUAGES}


def pool_size(metrics: dict) -> dict:
    """The size each pool keeps now (jail_pool_size; the configured one where
    the server has no such metric)."""
    return {language: int(metrics.get(f'jail_pool_size{{language="{language}"}}', POOL_SIZES[language]))
            for language in LANGUAGES}


def counter(metrics: dict, name: str) -> float:
    """The sum of a counter over its labels."""
    return sum(value for key, value in metrics.items() if key == name or key.startswith(name + "{"))


def labelled(metrics: dict, name: str) -> dict:
    return {key[len(name):]: value for key, value in metrics.items() if key.startswith(name + "{") and value}


# -- traffic -------------------------------------------------------------------------------------

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789      \n\t\"\\/éüß€中文🙂𝄞"


def js_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def jbody(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict
    body: bytes
    seconds: float
    client: str


@dataclasses.dataclass
class Case:
    kind: str
    language: str
    body: bytes
    check: object  # (Answer) -> None when right, else why it is wrong
    headers: dict = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"
    stream: bool = False
    disconnect_after: float = None  # cancel the request after this long (a client that goes away)
    read_first_line: bool = False  # a stream: read its first line, then go away
    expect100: bool = False
    chunked: bool = False
    reuse_check: bool = False  # then send another request on the same connection
    own_connection: bool = False  # on a session of its own, closed after
    timeout: float = CLIENT_TIMEOUT  # seconds for its answer (and for the next one, with reuse_check)
    client: str = "aiohttp"
    big: bool = False
    request_id: str = ""
    summary: str = ""  # what the request was, for a report of a wrong answer


def _json(answer: Answer):
    try:
        return json.loads(answer.body)
    except ValueError:
        return None


def expect_exact(expected: dict, status: int = 200):
    def check(answer):
        if answer.status != status:
            return f"status {answer.status}, expected {status}"
        got = _json(answer)
        if got != expected:
            return f"body differs: expected {_short(expected)}"
        return None
    return check


def expect_error(kind: str, *, status: int = 422, name=None, line=None, message=None, message_prefix=None,
                 fragment=None, extra=None):
    """An error body of type kind; name, line, message (exact or its start),
    a fragment of the message and extra top-level fields (stdout ...) when given."""
    def check(answer):
        if answer.status != status:
            return f"status {answer.status}, expected {status} {kind}"
        return error_problems(_json(answer), kind, name=name, line=line, message=message,
                              message_prefix=message_prefix, fragment=fragment, extra=extra)
    return check


def error_problems(body, kind, *, name=None, line=None, message=None, message_prefix=None, fragment=None,
                   extra=None):
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return "not an error body"
    error = body["error"]
    problems = []
    if error.get("type") != kind:
        problems.append(f"error.type {error.get('type')!r}, expected {kind!r}")
    if name is not None and error.get("name") != name:
        problems.append(f"error.name {error.get('name')!r}, expected {name!r}")
    if line is not None and error.get("line") != line:
        problems.append(f"error.line {error.get('line')!r}, expected {line!r}")
    text = error.get("message") or ""
    if message is not None and text != message:
        problems.append(f"error.message {text!r}, expected {message!r}")
    if message_prefix is not None and not text.startswith(message_prefix):
        problems.append(f"error.message {text[:120]!r}, expected it to start with {message_prefix!r}")
    if fragment is not None and fragment not in text:
        problems.append(f"error.message {text[:160]!r}, expected it to contain {fragment!r}")
    for key, value in (extra or {}).items():
        if body.get(key) != value:
            problems.append(f"{key} {_short(body.get(key))}, expected {_short(value)}")
    return "; ".join(problems) or None


def expect_stream(stdout: str, final, prefix=False):
    """A streamed answer: 200, NDJSON lines of {"stdout"} pieces that add up to
    stdout (with prefix, to whole lines of its start: a run killed by its clock
    may be killed before it printed them all), then the last line, checked by
    final(dict)."""
    def check(answer):
        if answer.status != 200:
            return f"status {answer.status}, expected 200 (a stream)"
        if "application/x-ndjson" not in answer.headers.get("Content-Type", ""):
            return f"Content-Type {answer.headers.get('Content-Type')!r}, expected application/x-ndjson"
        text = answer.body.decode(errors="replace")
        if not text.endswith("\n"):
            return "the stream does not end with a newline (cut short?)"
        try:
            lines = [json.loads(line) for line in text.split("\n")[:-1]]
        except ValueError:
            return "a line of the stream is not JSON"
        if not lines:
            return "an empty stream"
        pieces = lines[:-1]
        bad = [line for line in pieces if not (isinstance(line, dict) and len(line) == 1
                                              and set(line) <= {"stdout", "stderr"})]
        if bad:
            return f"stream lines that are no output line: {_short(bad)}"
        streamed = "".join(line.get("stdout", "") for line in pieces)
        if prefix and stdout.startswith(streamed) and (not streamed or streamed.endswith("\n")):
            pass
        elif streamed != stdout:
            return f"streamed stdout {_short(streamed)}, expected {_short(stdout)}"
        return final(lines[-1])
    return check


def _short(value, limit=200) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class Texts:
    """Scope strings from tiny to several MB, made once (random text is slow to make)."""

    def __init__(self, rng: random.Random):
        block = "".join(rng.choices(ALPHABET, k=256 * 1024))
        self.base = block * 24  # 6 Mi characters, a bit over 6 MiB of JSON
        self.rng = rng

    def make(self, rng: random.Random, size_class: str) -> str:
        if size_class == "tiny":
            return "".join(rng.choices(ALPHABET, k=rng.randint(0, 100)))
        if size_class == "small":
            return "".join(rng.choices(ALPHABET, k=rng.randint(100, 10_000)))
        n = {"medium": rng.randint(10_000, 500_000), "big": rng.randint(1_000_000, 4_500_000),
             "largest": 4_500_000}[size_class]
        start = rng.randint(0, len(self.base) - n)
        # A random head makes each one unique (a mixed-up answer shows).
        return "".join(rng.choices(ALPHABET, k=32)) + self.base[start:start + n]


def _at(day: datetime.datetime, js: bool) -> str:
    if js:
        return day.strftime("%Y-%m-%dT%H:%M:%S.") + f"{day.microsecond // 1000:03d}Z"
    return day.isoformat()


class Traffic:
    """Makes the mixed requests, each with the check of its answer."""

    KINDS = {  # kind -> weight
        "scope_hash": 22, "echo": 9, "typed": 8, "prints": 7, "syntax_error": 6, "runtime_error": 6,
        "time_limit": 5, "memory_limit": 3, "output_limit": 4, "stream": 6, "stream_error": 3,
        "disconnect": 3, "stream_disconnect": 2, "bad_json": 3, "bad_fields": 4, "bad_content_type": 1,
        "too_large": 1, "at_limit": 1, "curl": 3,
    }
    # At most this many per wave (heavy ones); past that, a scope_hash.
    QUOTAS = {"too_large": 3, "at_limit": 2, "curl": 6}

    def __init__(self, texts: Texts):
        self.texts = texts
        self.max_body = SETTINGS.max_body_bytes

    def case(self, rng: random.Random, request_id: str, quotas: dict, first=None) -> Case:
        """A random request; first: this kind, at its largest (the warm-up's first ones)."""
        kind = first or rng.choices(list(self.KINDS), weights=list(self.KINDS.values()))[0]
        if kind in quotas and not first:
            if quotas[kind] <= 0:
                kind = "scope_hash"
            else:
                quotas[kind] -= 1
        language = rng.choice(LANGUAGES)
        case = getattr(self, kind)(rng, language, request_id, bool(first))
        case.request_id = request_id
        return case

    # -- good runs ---------------------------------------------------------------------------

    def scope_hash(self, rng, language, tag, largest=False):
        size = "largest" if largest else rng.choices(["tiny", "small", "medium", "big"], [55, 28, 13, 4])[0]
        x = self.texts.make(rng, size)
        if language == "python":
            code = "import hashlib\nreturn [len(x), hashlib.sha256(x.encode()).hexdigest(), tag]"
            length = len(x)
        else:
            code = ("const d = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(x));\n"
                    "return [x.length, Buffer.from(d).toString('hex'), tag]")
            length = js_length(x)
        body = jbody({"code": code, "language": language, "scope": {"x": x, "tag": tag}})
        return Case("scope_hash", language, body, expect_exact({"output": [length, sha256(x), tag]}),
                    big=size in ("big", "largest"), summary=f"{language} len+sha256 of a {len(body)}-byte body")

    def echo(self, rng, language, tag, _=False):
        def value(depth):
            pick = rng.randint(0, 7 if depth < 4 else 4)
            if pick == 0:
                return rng.randint(-2**53 + 1, 2**53 - 1)
            if pick == 1:
                return round(rng.uniform(-1e6, 1e6), rng.randint(0, 6))
            if pick == 2:
                return "".join(rng.choices(ALPHABET, k=rng.randint(0, 40)))
            if pick == 3:
                return rng.choice([True, False, None])
            if pick == 4:
                return rng.randint(-1000, 1000)
            if pick in (5, 6):
                return [value(depth + 1) for _ in range(rng.randint(0, 5))]
            return {f"k{i}_" + "".join(rng.choices("abcé中", k=3)): value(depth + 1)
                    for i in range(rng.randint(0, 5))}

        v = [tag, value(0)]
        body = jbody({"code": "return v", "language": language, "scope": {"v": v}})
        return Case("echo", language, body, expect_exact({"output": v}), summary=f"{language} echo of nested JSON")

    def typed(self, rng, language, tag, _=False):
        day = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
            seconds=rng.randint(0, 30 * 365 * 86400), milliseconds=rng.randint(0, 999))
        k, m = rng.randint(-400, 400), rng.randint(2, 10**6)
        n = rng.randint(10**19, 10**30)
        js = language == "javascript"
        if js:
            code = "return [new Date(d.getTime() + k * 86400000), n * BigInt(m), tag]"
        else:
            code = "import datetime\nreturn [d + datetime.timedelta(days=k), n * m, tag]"
        scope = {"d": _at(day, True), "n": str(n), "k": k, "m": m, "tag": tag}
        expected = {"output": [_at(day + datetime.timedelta(days=k), js), str(n * m), tag],
                    "types": {"/0": "date", "/1": "bigint"}}
        body = jbody({"code": code, "language": language, "scope": scope, "types": {"/d": "date", "/n": "bigint"}})
        return Case("typed", language, body, expect_exact(expected), summary=f"{language} date and bigint")

    def prints(self, rng, language, tag, _=False):
        n, e = rng.randint(1, 50), rng.randint(0, 3)
        if language == "python":
            code = (f"import sys\nfor i in range({n}): print(tag + '-' + str(i))\n"
                    f"for i in range({e}): print('e' + str(i), file=sys.stderr)\nreturn {n}")
        else:
            code = (f"for (let i = 0; i < {n}; i++) console.log(tag + '-' + i);\n"
                    f"for (let i = 0; i < {e}; i++) console.error('e' + i);\nreturn {n}")
        expected = {"output": n, "stdout": "".join(f"{tag}-{i}\n" for i in range(n))}
        if e:
            expected["stderr"] = "".join(f"e{i}\n" for i in range(e))
        body = jbody({"code": code, "language": language, "scope": {"tag": tag}})
        return Case("prints", language, body, expect_exact(expected), summary=f"{language} prints {n}+{e} lines")

    # -- errors of the snippet ---------------------------------------------------------------

    def syntax_error(self, rng, language, tag, _=False):
        k = rng.randint(0, 6)
        if language == "python":
            code = "a = 1\n" * k + "return (\n"
            check = expect_error("ExecutionError", name="SyntaxError", line=k + 1,
                                 message="SyntaxError: '(' was never closed")
        else:
            code = "void 0;\n" * k + "let y = ;"
            check = expect_error("ExecutionError", name="SyntaxError", line=k + 1,
                                 message="SyntaxError: Unexpected token ';'")
        body = jbody({"code": code, "language": language})
        return Case("syntax_error", language, body, check, summary=f"{language} SyntaxError on line {k + 1}")

    def runtime_error(self, rng, language, tag, _=False):
        k = rng.randint(0, 6)
        if language == "python":
            code = "a = 1\n" * k + "raise ValueError(tag)"
            name = "ValueError"
        else:
            code = "void 0;\n" * k + "throw new RangeError(tag);"
            name = "RangeError"
        body = jbody({"code": code, "language": language, "scope": {"tag": tag}})
        return Case("runtime_error", language, body,
                    expect_error("ExecutionError", name=name, line=k + 1, message=f"{name}: {tag}"),
                    summary=f"{language} {name} on line {k + 1}")

    def time_limit(self, rng, language, tag, _=False):
        ms = rng.randint(100, 400)
        if language == "python":
            code = rng.choice(["while True: pass", "import time\ntime.sleep(5)"])
        else:
            code = rng.choice(["while (true) {}", "await new Promise(r => setTimeout(r, 5000));"])
        body = jbody({"code": code, "language": language, "limits": {"timeout_ms": ms}})
        return Case("time_limit", language, body,
                    expect_error("TimeLimitExceeded", message_prefix="TimeLimitExceeded: "),
                    summary=f"{language} {code.splitlines()[-1]!r} with timeout_ms {ms}")

    def memory_limit(self, rng, language, tag, _=False):
        if language == "python":
            code = rng.choice(["x = bytearray(600 * 1024 * 1024)",
                               "a = []\nwhile True: a.append(bytearray(10**6))"])
        else:
            code = rng.choice(["const a = []; while (true) a.push(new Array(1e6).fill(1));",
                               "const a = []; while (true) a.push(Buffer.alloc(1e6, 1));"])
        # A generous clock: a memory bomb must be reported as one, never as a timeout.
        body = jbody({"code": code, "language": language, "limits": {"memory_mb": 64, "timeout_ms": 15000}})
        return Case("memory_limit", language, body,
                    expect_error("MemoryLimitExceeded", message_prefix="MemoryLimitExceeded: "),
                    summary=f"{language} memory bomb {code!r} at 64 MiB")

    def output_limit(self, rng, language, tag, _=False):
        limit = rng.randint(1000, 20000)
        if language == "python":
            code = rng.choice(["print('x' * 100000)", "while True: print('y' * 100)"])
        else:
            code = rng.choice(["console.log('x'.repeat(100000));", "while (true) console.log('y'.repeat(100));"])
        body = jbody({"code": code, "language": language, "limits": {"output_bytes": limit, "timeout_ms": 15000}})
        return Case("output_limit", language, body,
                    expect_error("OutputLimitExceeded", message_prefix="OutputLimitExceeded: "),
                    summary=f"{language} {code!r} with output_bytes {limit}")

    # -- streams -----------------------------------------------------------------------------

    def stream(self, rng, language, tag, _=False):
        n = rng.randint(1, 20)
        if language == "python":
            code = (f"import time\nfor i in range({n}):\n    print(tag + '-' + str(i))\n    time.sleep(0.005)\n"
                    "return tag")
        else:
            code = (f"for (let i = 0; i < {n}; i++) {{ console.log(tag + '-' + i); "
                    f"await new Promise(r => setTimeout(r, 5)); }}\nreturn tag;")
        stdout = "".join(f"{tag}-{i}\n" for i in range(n))
        final = {"output": tag, "stdout": stdout}
        body = jbody({"code": code, "language": language, "scope": {"tag": tag}})
        return Case("stream", language, body,
                    expect_stream(stdout, lambda last: None if last == final else
                                  f"last line {_short(last)}, expected {_short(final)}"),
                    headers={"Accept": "application/x-ndjson"}, stream=True,
                    summary=f"{language} stream of {n} lines")

    def stream_error(self, rng, language, tag, _=False):
        n = rng.randint(1, 5)
        if rng.random() < 0.5:
            if language == "python":
                code = f"for i in range({n}): print(tag + '-' + str(i))\nraise KeyError(tag)"
                name, line, message = "KeyError", 2, f"KeyError: {tag!r}"
            else:
                code = f"for (let i = 0; i < {n}; i++) console.log(tag + '-' + i);\nthrow new TypeError(tag);"
                name, line, message = "TypeError", 2, f"TypeError: {tag}"
            stdout = "".join(f"{tag}-{i}\n" for i in range(n))

            def final(last):
                return error_problems(last, "ExecutionError", name=name, line=line, message=message,
                                      extra={"stdout": stdout})
            limits = {}
        else:
            if language == "python":
                code = f"for i in range({n}): print(tag + '-' + str(i))\nwhile True: pass"
            else:
                code = f"for (let i = 0; i < {n}; i++) console.log(tag + '-' + i);\nwhile (true) {{}}"
            stdout = "".join(f"{tag}-{i}\n" for i in range(n))

            def final(last):
                return error_problems(last, "TimeLimitExceeded", message_prefix="TimeLimitExceeded: ")
            limits = {"timeout_ms": 300}
        body = jbody({"code": code, "language": language, "scope": {"tag": tag}, "limits": limits})
        return Case("stream_error", language, body, expect_stream(stdout, final, prefix=bool(limits)),
                    headers={"Accept": "application/x-ndjson"}, stream=True,
                    summary=f"{language} stream that ends in an error")

    # -- clients that go away ---------------------------------------------------------------

    def disconnect(self, rng, language, tag, _=False):
        code = ("import time\ntime.sleep(20)\nreturn 1" if language == "python"
                else "await new Promise(r => setTimeout(r, 20000)); return 1;")
        body = jbody({"code": code, "language": language, "limits": {"timeout_ms": 25000}})
        after = rng.uniform(0.05, 0.6)
        return Case("disconnect", language, body, _never_answered, disconnect_after=after,
                    summary=f"{language} 20 s sleep, the client goes away after {after:.2f} s")

    def stream_disconnect(self, rng, language, tag, _=False):
        code = ("import time\nprint(tag)\ntime.sleep(20)\nreturn 1" if language == "python"
                else "console.log(tag); await new Promise(r => setTimeout(r, 20000)); return 1;")
        body = jbody({"code": code, "language": language, "scope": {"tag": tag}, "limits": {"timeout_ms": 25000}})

        def check(answer):  # the first line, read before going away
            if answer.status != 200:
                return f"status {answer.status}, expected 200 (a stream)"
            try:
                first = json.loads(answer.body)
            except ValueError:
                return "its first line is not JSON"
            return None if first == {"stdout": tag + "\n"} else f"first line {_short(first)}"
        return Case("stream_disconnect", language, body, check, headers={"Accept": "application/x-ndjson"},
                    stream=True, read_first_line=True,
                    summary=f"{language} stream that prints then sleeps 20 s; the client goes after line 1")

    # -- bodies the service refuses ---------------------------------------------------------

    def bad_json(self, rng, language, tag, _=False):
        body, fragment = rng.choice([
            (b'{"code": "return 1", ', "the body is not valid JSON"),
            (b"{bad", "the body is not valid JSON"),
            (b'{"code": NaN}', "NaN is not a JSON value"),
            (b"[1, 2]", "the body must be a JSON object"),
            (b"", "the body is empty"),
            (b'{"code": "\xff"}', "not valid UTF-8"),
        ])
        return Case("bad_json", language, body, expect_error("RequestError", status=400, fragment=fragment),
                    summary=f"malformed body {body[:30]!r}")

    def bad_fields(self, rng, language, tag, _=False):
        fields, fragment = rng.choice([
            ({"code": "return 1", "language": language, "colour": "red"}, "unknown field(s): colour"),
            ({"code": 7, "language": language}, "code: must be a string"),
            ({"language": language}, "code: missing"),
            ({"code": "return 1", "language": "ruby"}, "unknown language 'ruby'"),
            ({"code": "return 1", "language": language, "scope": [1]}, "scope: must be an object"),
            ({"code": "return 1", "language": language, "limits": "fast"}, "limits: must be an object"),
            ({"code": "return 1", "language": language, "scope": {"not-an-id": 1}}, "not-an-id"),
        ])
        return Case("bad_fields", language, jbody(fields), expect_error("RequestError", status=400, fragment=fragment),
                    summary=f"wrong fields {_short(fields, 80)}")

    def bad_content_type(self, rng, language, tag, _=False):
        return Case("bad_content_type", language, jbody({"code": "return 1"}),
                    expect_error("RequestError", status=415, fragment="Content-Type must be application/json"),
                    content_type="text/plain", summary="Content-Type text/plain")

    def _over_limit_body(self):
        pad = self.max_body + 1024 - len(b'{"code": "return 1", "scope": {"x": ""}}')
        return b'{"code": "return 1", "scope": {"x": "' + b"a" * pad + b'"}}'

    def too_large(self, rng, language, tag, _=False):
        if rng.random() < 0.5:
            return Case("too_large", language, self._over_limit_body(),
                        expect_error("RequestError", status=413, fragment="over the limit"), chunked=True, big=True,
                        summary=f"a chunked body of {self.max_body + 1024} bytes (over the limit)")
        case = self.expect_refused(tag)
        case.reuse_check = False  # on a connection of its own, closed after (see expect_refused)
        return case

    def expect_refused(self, tag):
        """Refused on its Content-Length before it is sent (Expect: 100-continue);
        then (reuse_check) the client's next request goes on the same keep-alive
        connection, as clients do."""
        return Case("too_large", "python", self._over_limit_body(),
                    expect_error("RequestError", status=413, fragment="over the limit"), expect100=True,
                    reuse_check=True, own_connection=True, big=True, request_id=tag,
                    summary=f"Expect: 100-continue with Content-Length {self.max_body + 1024}")

    def at_limit(self, rng, language, tag, _=False):
        """A chunked body of exactly max_body_bytes: read whole, answered right."""
        shell = b'{"code": "return [x.length, tag]", "language": "javascript", "scope": {"tag": "%s", "x": "' % \
            tag.encode() + b'"}}'
        x = "b" * (self.max_body - len(shell))
        body = shell[:-3] + x.encode() + shell[-3:]
        assert len(body) == self.max_body, len(body)
        return Case("at_limit", "javascript", body, expect_exact({"output": [len(x), tag]}), chunked=True, big=True,
                    summary=f"a chunked body of exactly {self.max_body} bytes")

    def curl(self, rng, language, tag, _=False):
        which = rng.choice(["good", "stream", "too_large"])
        if which == "good":
            n = rng.randint(-10**6, 10**6)
            case = Case("curl", language, jbody({"code": "return x + 3", "language": language, "scope": {"x": n}}),
                        expect_exact({"output": n + 3}), summary=f"curl: {language} x + 3")
        elif which == "stream":
            case = self.stream(rng, language, tag)
            case.kind, case.summary = "curl", "curl: " + case.summary
        else:
            case = Case("curl", language, self._over_limit_body(),
                        expect_error("RequestError", status=413, fragment="over the limit"), big=True,
                        summary=f"curl: a body of {self.max_body + 1024} bytes, no Expect (over the limit)")
        case.client = "curl"
        return case

    # -- steady load (hey) ----------------------------------------------------------------------

    @staticmethod
    def hey_body(language: str) -> tuple:
        """(body, the exact answer): the same request again and again."""
        code = ("return sum(range(1000))" if language == "python"
                else "let s = 0; for (let i = 0; i < 1000; i++) s += i; return s;")
        return jbody({"code": code, "language": language}), b'{"output": 499500}'


def _never_answered(answer):
    return f"answered ({answer.status}) a request that should still have been running when its client went away"


# -- sending -------------------------------------------------------------------------------------


class InFlight:
    """How many of our requests the server may hold at once: a 429 is the
    documented answer only when that reached the gate's capacity."""

    def __init__(self):
        self.requests = {}  # id -> peak seen while it was in flight
        self.lingering = 0

    def enter(self, key):
        self.requests[key] = 0
        self._bump()

    def leave(self, key) -> int:
        return self.requests.pop(key, 0)

    def cancelled(self, key):
        """A request whose client went away: the server may hold it a moment longer."""
        self.requests.pop(key, None)
        self.lingering += 1
        asyncio.get_running_loop().call_later(CANCELLED_LINGER, self._unlinger)

    def _unlinger(self):
        self.lingering -= 1

    def _bump(self):
        now = len(self.requests) + self.lingering
        for key, peak in self.requests.items():
            if now > peak:
                self.requests[key] = now


@dataclasses.dataclass
class Outcome:
    case: Case
    answer: Answer = None
    wrong: str = None
    overloaded: bool = False
    disconnected: bool = False


async def _chunks(data: bytes, size=65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def send(session: aiohttp.ClientSession, url: str, case: Case, inflight: InFlight) -> Outcome:
    key = object()
    inflight.enter(key)
    started = time.monotonic()
    outcome = Outcome(case)
    try:
        if case.client == "curl":
            answer = await _send_curl(url, case)
        elif case.disconnect_after is not None:
            task = asyncio.ensure_future(_send_aiohttp(session, url, case))
            done, _ = await asyncio.wait([task], timeout=case.disconnect_after)
            if done:
                answer = task.result()
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                inflight.cancelled(key)
                outcome.disconnected = True
                return outcome
        else:
            answer = await _send_aiohttp(session, url, case)
            if case.read_first_line:
                inflight.cancelled(key)
                outcome.disconnected = True
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        outcome.wrong = f"no answer: {_describe(exc, case.timeout)}"
        outcome.answer = Answer(0, {}, b"", time.monotonic() - started, case.client)
        inflight.leave(key)
        return outcome
    peak = inflight.leave(key)
    outcome.answer = answer
    if answer.status == 429:
        body = _json(answer) or {}
        if (body.get("error") or {}).get("type") != "Overloaded" or "Retry-After" not in answer.headers:
            outcome.wrong = "a 429 that is not the documented Overloaded answer with Retry-After"
        elif peak < CAPACITY:
            outcome.wrong = (f"429 Overloaded with at most {peak} of our requests in flight, under the gate's "
                             f"capacity of {CAPACITY} (max_concurrency {SETTINGS.max_concurrency} + queue_depth "
                             f"{SETTINGS.queue_depth}): the queue was not full")
        else:
            outcome.overloaded = True
        return outcome
    outcome.wrong = case.check(answer)
    if outcome.wrong is None and case.reuse_check:
        outcome.wrong = await _reuse_check(session, url, case)
    return outcome


def _describe(exc, timeout) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"none within the client's timeout of {timeout:g} s"
    return f"{type(exc).__name__}: {exc}"


async def _send_aiohttp(session, url, case) -> Answer:
    headers = {"Content-Type": case.content_type, "X-Request-Id": case.request_id, **case.headers}
    # Large bodies as a file-like (aiohttp writes those without holding its loop); either way a Content-Length.
    data = _chunks(case.body) if case.chunked else io.BytesIO(case.body) if len(case.body) > 65536 else case.body
    started = time.monotonic()
    async with session.post(url + "/evaluate", data=data, headers=headers, expect100=case.expect100,
                            timeout=aiohttp.ClientTimeout(total=case.timeout)) as response:
        if case.read_first_line:
            body = await response.content.readline()
            response.close()  # the client goes away mid-stream
        else:
            body = await response.read()
        return Answer(response.status, dict(response.headers), body, time.monotonic() - started, "aiohttp")


async def _reuse_check(session, url, case) -> str:
    """The next request on the connection that carried case (its session has one)."""
    follow = Case("reuse", "python", jbody({"code": "return 6 * 7"}), expect_exact({"output": 42}),
                  request_id=case.request_id + "-next", timeout=case.timeout)
    try:
        answer = await _send_aiohttp(session, url, follow)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return (f"the next request on the same keep-alive connection ({follow.request_id}) got no answer: "
                f"{_describe(exc, follow.timeout)}")
    wrong = follow.check(answer)
    if wrong:
        return (f"the next request on the same keep-alive connection ({follow.request_id}) was answered wrong "
                f"after {answer.seconds:.1f} s: {wrong}; got {answer.status} {answer.body[:160]!r}")
    return None


async def _send_curl(url, case) -> Answer:
    argv = ["curl", "-sS", "--max-time", str(CLIENT_TIMEOUT), "-o", "-", "-w", "\n%{http_code}",
            "-H", f"Content-Type: {case.content_type}", "-H", f"X-Request-Id: {case.request_id}",
            "-H", "Expect:", "--data-binary", "@-", "-D", "/dev/stderr"]
    for name, value in case.headers.items():
        argv += ["-H", f"{name}: {value}"]
    if case.stream:
        argv.append("-N")
    argv.append(url + "/evaluate")
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(case.body), CLIENT_TIMEOUT + 10)
    except (asyncio.TimeoutError, BrokenPipeError, ConnectionResetError):
        process.kill()
        await process.wait()
        raise asyncio.TimeoutError("curl did not finish")
    body, _, code = out.rpartition(b"\n")
    headers = {}
    for line in err.decode(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep and " " not in name.strip():
            headers[name.strip().title()] = value.strip()
    if not code.strip().isdigit() or int(code) == 0:
        raise aiohttp.ClientError(f"curl exited {process.returncode}: {err.decode(errors='replace')[-300:]}")
    return Answer(int(code), headers, body, time.monotonic() - started, "curl")


async def run_hey(url: str, language: str, concurrency: int, seconds: float, request_id: str) -> dict:
    """hey -z seconds -c concurrency on the same good request: statuses, errors,
    and whether every byte answered is the right answer's."""
    body, answer = Traffic.hey_body(language)
    argv = ["hey", "-z", f"{seconds:.2f}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json",
            "-d", body.decode(), "-t", str(CLIENT_TIMEOUT), "-H", f"X-Request-Id: {request_id}", url + "/evaluate"]
    process = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), seconds + CLIENT_TIMEOUT + 30)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return {"requests": 0, "ok": 0, "overloaded": 0, "wrong": 1, "latencies": {},
                "problems": [f"hey ({language}) did not finish"]}
    text = out.decode(errors="replace")
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors = re.findall(r"^\s+\[(\d+)\]\s+(.+)$", text.split("Error distribution:")[1], re.M) \
        if "Error distribution:" in text else []
    n_errors = sum(int(n) for n, _ in errors)
    total = re.search(r"Total data:\s+(\d+) bytes", text)
    latencies = {p: float(s) for p, s in re.findall(r"(\d+)% in ([\d.]+) secs", text)}
    slowest = re.search(r"Slowest:\s+([\d.]+) secs", text)
    if slowest and not latencies.get("99"):  # hey leaves a percentile 0 when it has under 100 answers
        latencies["99"] = float(slowest.group(1))
    ok, overloaded = statuses.get(200, 0), statuses.get(429, 0)
    problems = []
    others = {code: n for code, n in statuses.items() if code not in (200, 429)}
    if others:
        problems.append(f"hey ({language}): statuses {others}")
    if n_errors:
        problems.append(f"hey ({language}): {n_errors} requests without an answer: {errors[:3]}")
    if overloaded:
        problems.append(f"hey ({language}): {overloaded} answers 429 with only {concurrency} requests in flight "
                        f"(capacity {CAPACITY})")
    if process.returncode != 0:
        problems.append(f"hey ({language}) exited {process.returncode}: {text[-300:]}")
    if not overloaded and total and int(total.group(1)) != ok * len(answer):
        problems.append(f"hey ({language}): {int(total.group(1))} bytes answered for {ok} answers 200, expected "
                        f"{ok * len(answer)} ({answer!r} each): some answers were not {answer!r}")
    wrong = sum(others.values()) + n_errors + overloaded + (1 if problems and not (others or n_errors or overloaded)
                                                            else 0)
    return {"requests": sum(statuses.values()) + n_errors, "ok": ok, "overloaded": 0, "wrong": wrong,
            "latencies": latencies, "problems": problems}


# -- waves and the report ------------------------------------------------------------------------


@dataclasses.dataclass
class Wave:
    label: str
    concurrency: int
    seconds: float = 0.0
    requests: int = 0
    wrong: int = 0
    overloaded: int = 0
    disconnects: int = 0
    hey_requests: int = 0
    latencies: list = dataclasses.field(default_factory=list)  # seconds, aiohttp and curl answers
    hey_latency: dict = dataclasses.field(default_factory=dict)
    kinds: dict = dataclasses.field(default_factory=dict)
    ready: str = ""
    pool: str = ""  # warm hits / misses / cold starts during the wave
    refill_s: float = None
    processes: str = ""
    zombies: int = 0
    cgroups: str = ""
    fds: int = 0
    threads: int = 0
    rss: int = 0
    readyz: str = ""
    failures: list = dataclasses.field(default_factory=list)
    wrong_answers: list = dataclasses.field(default_factory=list)

    def percentile(self, p):
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


COLUMNS = ("wave", "conc", "secs", "requests", "wrong", "429", "gone", "p50 ms", "p99 ms", "hey p50/p99 ms",
           "warm/miss/cold", "pool ready", "refill s", "sandbox procs", "zombies", "cgroups", "fds", "threads",
           "RSS MB", "readyz", "ok")


def row(wave: Wave) -> list:
    def ms(value):
        return "-" if value is None else f"{value * 1000:.0f}"
    hey = "-" if not wave.hey_latency else f"{ms(wave.hey_latency.get('50'))}/{ms(wave.hey_latency.get('99'))}"
    return [wave.label, str(wave.concurrency), f"{wave.seconds:.1f}", f"{wave.requests}+{wave.hey_requests}",
            str(wave.wrong), str(wave.overloaded), str(wave.disconnects), ms(wave.percentile(50)),
            ms(wave.percentile(99)), hey, wave.pool or "-", wave.ready,
            "-" if wave.refill_s is None else f"{wave.refill_s:.2f}",
            wave.processes, str(wave.zombies), wave.cgroups, str(wave.fds), str(wave.threads),
            f"{wave.rss / MiB:.0f}", wave.readyz, "yes" if not wave.failures else "NO"]


def table(waves) -> str:
    rows = [list(COLUMNS)] + [row(w) for w in waves]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


class Stalled(Exception):
    """The server answered nothing for STALL seconds while requests were in flight."""


class Soak:
    """One soak run: start the server, warm up, the waves, SIGTERM. Every
    broken invariant is a failure naming its wave; all are collected, and the
    report is rewritten after every wave."""

    def __init__(self, seconds: float, report_path: pathlib.Path, seed: int, say=print):
        self.seconds = seconds
        self.report_path = report_path
        self.log_path = report_path.with_name("soak-server.log")
        self.seed = seed
        self.say = say
        self.rng = random.Random(seed)
        self.waves = []
        self.failures = []  # "wave X: what broke"
        self.notes = []
        self.server = None
        self.wave = None  # the wave being run or checked
        self.baseline = None  # the first idle state, right after start
        self.warm = None  # the idle state after the warm-up wave
        self.cgroup_parents = []  # the hierarchies the server makes groups in
        self.zygote_mode = True
        self.started = time.monotonic()
        self.shutdown = {}
        self.counters = {}
        # A long run ends with the pool shrinking back to its configured size: so much idle time.
        self.shrink_check = seconds >= 300 and SHRINK_AFTER > 0
        self.shrink_wait = SHRINK_AFTER + (POOL_MAX - min(POOL_SIZES.values())) * SHRINK_EVERY + 10

    # -- the run ------------------------------------------------------------------------------

    def run(self):
        plan = [("warm-up", max(WAVES))]
        cycles = max(1, int(self.seconds // 150))
        for cycle in range(cycles):
            plan += [(f"{cycle + 1}.{i + 1}" if cycles > 1 else f"{i + 1}", c) for i, c in enumerate(WAVES)]
        self.say(f"soak: {self.seconds:.0f} s, {len(plan)} waves ({cycles} cycle(s) of {list(WAVES)} after a "
                 f"warm-up), seed {self.seed}; report {self.report_path}; server log {self.log_path}")
        self.texts = Texts(self.rng)
        self.traffic = Traffic(self.texts)
        self.server = Server(self.log_path)
        try:
            asyncio.run(self._run(plan))
        finally:
            if self.server.alive():
                self.server.process.send_signal(signal.SIGTERM)
                if _wait(self.server.process, SETTINGS.shutdown_timeout_s + 20) is None:
                    self.fail("end", "the server was still running after the run: killed")
            self.server.kill()
            self.write_report()
        return self.failures

    async def _run(self, plan):
        self.control = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                             timeout=aiohttp.ClientTimeout(total=30))
        try:
            await self._waves(plan)
            if self.server.alive():
                await self.sigterm()
        finally:
            await self.control.close()

    async def _waves(self, plan):
        self.last_label = plan[-1][0]
        start = self.begin("start", 0)
        await self.check_idle(start, first=True)
        self.end_wave(start)
        # The run's clock: the waves with their checks, the final shrink (long runs) and the
        # shutdown (at most shutdown_timeout_s + its margin) fit in `seconds`.
        end = self.started + self.seconds - (SETTINGS.shutdown_timeout_s + 2) \
            - (self.shrink_wait if self.shrink_check else 0)
        check_cost = 1.0
        for index, (label, concurrency) in enumerate(plan):
            if not self.server.alive():
                self.fail(label, f"the server died (exit {self.server.process.returncode}); its last lines:\n"
                          + _tail(self.server.log_text(), 30))
                return
            budget = (end - time.monotonic()) / (len(plan) - index) - check_cost
            if label == "warm-up":
                budget = min(budget * 0.6, 20.0)
            wave = self.begin(label, concurrency)
            began = time.monotonic()
            try:
                await self.traffic_wave(wave, max(2.5, budget))
            except Stalled as stall:
                wave.seconds = time.monotonic() - began
                self.fail(label, str(stall))
                self.end_wave(wave)
                return  # straight to SIGTERM: does a stalled server still shut down?
            wave.seconds = time.monotonic() - began
            checked = time.monotonic()
            await self.check_idle(wave)
            check_cost = 0.7 * check_cost + 0.3 * (time.monotonic() - checked)
            self.end_wave(wave)
        if self.shrink_check and self.server.alive():
            await self.check_shrink()

    def begin(self, label, concurrency) -> Wave:
        self.wave = Wave(label, concurrency)
        self.waves.append(self.wave)
        return self.wave

    def end_wave(self, wave):
        text = " ".join(f"{k}={v}" for k, v in zip(COLUMNS, row(wave)))
        for failure in wave.failures:
            text += f"\n    BROKEN: {failure}"
        self.say(text)
        self.write_report()

    def fail(self, label, what):
        self.failures.append(f"wave {label}: {what}")
        if self.wave is not None and self.wave.label == label:
            self.wave.failures.append(what)

    # -- traffic -----------------------------------------------------------------------------------

    async def traffic_wave(self, wave: Wave, seconds: float):
        url = self.server.url
        before = await self.metrics_or_empty()
        mixed = seconds * 0.65
        hey_seconds = max(1.0, seconds - mixed)
        quotas = dict(Traffic.QUOTAS)
        inflight = InFlight()
        big = asyncio.Semaphore(BIG_IN_FLIGHT)
        outcomes = []
        deadline = time.monotonic() + mixed
        progress = {"last": time.monotonic()}

        async def one(session, case):
            own = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) if case.own_connection else None
            try:
                if case.big:
                    async with big:
                        outcome = await send(own or session, url, case, inflight)
                else:
                    outcome = await send(own or session, url, case, inflight)
            finally:
                if own is not None:
                    await own.close()
            outcomes.append(outcome)
            progress["last"] = time.monotonic()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=wave.concurrency + 4)) as session:
            async def worker(index):
                rng = random.Random(f"{self.seed}-{wave.label}-{index}")
                n = 0
                while time.monotonic() < deadline and n < 10_000:
                    n += 1
                    # The warm-up opens with the largest bodies, two at a time: the memory the
                    # server needs at its busiest is reached before the baseline is taken.
                    first = WARM_UP_FIRST[index] if wave.label == "warm-up" and n == 1 and index < 4 else None
                    await one(session, self.traffic.case(rng, f"soak-w{wave.label}-c{index}-{n}", quotas, first))

            async def traffic():
                await asyncio.gather(*(worker(i) for i in range(wave.concurrency)))
                if wave.concurrency == max(WAVES):
                    await self.burst(wave, inflight, outcomes)

            await self._watched(traffic(), inflight, progress, wave)
        # Steady load: hey sends one good request again and again, at the wave's concurrency.
        if wave.concurrency == 1:
            shares = {LANGUAGES[len(self.waves) % 2]: 1}
        else:
            shares = {"python": wave.concurrency // 2, "javascript": wave.concurrency - wave.concurrency // 2}
        heys = await asyncio.gather(*(run_hey(url, language, c, hey_seconds, f"soak-w{wave.label}-hey-{language}")
                                      for language, c in shares.items()))
        for result in heys:
            wave.hey_requests += result["requests"]
            wave.wrong += result["wrong"]
            wave.wrong_answers += result["problems"]
        wave.hey_latency = {p: max(h["latencies"].get(p, 0) for h in heys) for p in ("50", "99")}
        for outcome in outcomes:
            self._count(wave, outcome)
        after = await self.metrics_or_empty()
        wave.pool = "/".join(f"{counter(after, name) - counter(before, name):.0f}"
                             for name in ("jail_pool_hits_total", "jail_pool_misses_total", "jail_pool_cold_total"))
        self.report_wrong(wave)

    async def _watched(self, work, inflight, progress, wave):
        """Runs work; raises Stalled when nothing is answered for STALL seconds
        while requests are in flight (then the wave's requests are abandoned)."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait([task], timeout=1.0)
            if done:
                return task.result()
            quiet = time.monotonic() - progress["last"]
            if inflight.requests and quiet > STALL:
                evidence = await self.stall_evidence()
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
                raise Stalled(f"the server answered nothing for {quiet:.0f} s with {len(inflight.requests)} of our "
                              f"requests in flight; {evidence}")

    async def stall_evidence(self) -> str:
        values = await self.metrics_or_empty(timeout=5)
        threads = []
        for task in glob.glob(f"/proc/{self.server.pid}/task/*"):
            try:
                with open(f"{task}/wchan") as f:
                    wchan = f.read()
                with open(f"{task}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                threads.append(f"{os.path.basename(task)}:{state}:{wchan}")
            except OSError:
                pass
        wanted = ("jail_sandboxes_running", "jail_queue_depth", "jail_pool_ready", "jail_pool_size", "jail_degraded",
                  "jail_background_errors_total")
        shown = {k: v for k, v in values.items() if k.startswith(wanted)}
        return (f"/metrics: {shown or 'no answer in 5 s'}; server threads (tid:state:wchan): {threads}; its last "
                f"log lines:\n" + _tail(self.server.log_text(), 15))

    async def burst(self, wave, inflight, outcomes):
        """At the peak, more requests at once than the gate holds: each is answered
        right or refused fast with 429 Overloaded (never a collapse)."""
        cases = []
        for i in range(CAPACITY + 16):
            tag = f"soak-w{wave.label}-burst-{i}"
            cases.append(Case("burst", "python", jbody({"code": "import time\ntime.sleep(0.05)\nreturn tag",
                                                        "scope": {"tag": tag}}),
                              expect_exact({"output": tag}), request_id=tag, summary="burst: python 50 ms sleep"))
        # A session of its own with no connection limit: the client must not queue them itself.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            outcomes += await asyncio.gather(*(send(session, self.server.url, case, inflight) for case in cases))

    def _count(self, wave, outcome):
        case = outcome.case
        wave.requests += 1
        wave.kinds[case.kind] = wave.kinds.get(case.kind, 0) + 1
        if outcome.disconnected:
            wave.disconnects += 1
        if outcome.overloaded:
            wave.overloaded += 1
        elif outcome.answer is not None and outcome.answer.status and not case.read_first_line:
            wave.latencies.append(outcome.answer.seconds)
        if outcome.wrong:
            wave.wrong += 1
            got = ""
            if outcome.answer is not None and outcome.answer.status:
                got = f"; got {outcome.answer.status} {outcome.answer.body[:300]!r}"
            logs = self.server.log_lines_of(case.request_id)
            wave.wrong_answers.append(f"[{case.request_id}] {case.kind} via {case.client}: {case.summary}: "
                                      f"{outcome.wrong}{got}\n        server log: "
                                      + (" | ".join(logs)[:1200] if logs else "no line for this request id"))

    def report_wrong(self, wave):
        if wave.wrong and wave.wrong_answers:
            shown = wave.wrong_answers[:30]
            self.fail(wave.label, f"{wave.wrong} wrong answer(s):\n      " + "\n      ".join(shown)
                      + (f"\n      ... and {len(wave.wrong_answers) - 30} more" if len(wave.wrong_answers) > 30
                         else ""))

    # -- invariants ----------------------------------------------------------------------------

    async def metrics(self) -> dict:
        async with self.control.get(self.server.url + "/metrics") as response:
            return parse_metrics(await response.text())

    async def metrics_or_empty(self, timeout=10) -> dict:
        try:
            return await asyncio.wait_for(self.metrics(), timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return {}

    async def wait_pool_full(self, limit=10.0):
        """(seconds until every pool holds its size ready and nothing runs or
        waits, or None; the last metrics)."""
        started = time.monotonic()
        values = {}
        while time.monotonic() - started < limit:
            values = await self.metrics_or_empty()
            if (values and pool_ready(values) == pool_size(values) and values.get("jail_sandboxes_running") == 0
                    and values.get("jail_queue_depth") == 0):
                return time.monotonic() - started, values
            await asyncio.sleep(0.02)
        return None, values

    async def check_idle(self, wave: Wave, first=False):
        label = wave.label
        refill, values = await self.wait_pool_full(30.0 if first else 10.0)
        wave.refill_s = refill
        ready, size = pool_ready(values), pool_size(values)
        wave.ready = ",".join(f"{ready[language]}/{size[language]}" for language in LANGUAGES)
        if refill is None:
            self.fail(label, f"the warm pool was not full again after {30 if first else 10} s of idle: "
                      f"jail_pool_ready {ready}, jail_pool_size {size}, jail_sandboxes_running "
                      f"{values.get('jail_sandboxes_running')}, jail_queue_depth {values.get('jail_queue_depth')}")
        elif refill > REFILL_BOUND and not first:
            self.fail(label, f"the warm pool took {refill:.2f} s of idle to be full again (bound {REFILL_BOUND} s): "
                      f"ready/size {wave.ready}")
        bad_size = {language: n for language, n in size.items() if not POOL_SIZES[language] <= n <= POOL_MAX}
        if bad_size:
            self.fail(label, f"jail_pool_size {bad_size} outside its configured size {POOL_SIZES} .. pool_max "
                      f"{POOL_MAX}")
        state, expected = await self.settled_state(first)
        if first:
            # What should exist at idle: a zygote per language (a root server) and the warm
            # sandboxes, each with its cgroup. Where no zygote serves, the warm sandboxes are
            # the server's own children, and the pool keeps its size.
            self.baseline = state
            self.zygote_mode = bool(state.zygotes)
            self.cgroup_parents = [parent for parent, names in state.cgroups.items() if names]
            self.notes.append(f"idle at start: {len(state.zygotes)} zygote(s), {len(state.sandboxes)} sandbox "
                              f"processes, groups in {len(self.cgroup_parents)} cgroup hierarch(ies), "
                              f"{state.fds} fds, {state.threads} threads, RSS {state.rss / MiB:.0f} MB")
            state, expected = await self.settled_state(False)
        wave.processes = f"{len(state.sandboxes)}/{expected}"
        wave.zombies = len(state.zombies)
        counts = sorted({len(state.cgroups.get(parent, ())) for parent in state.cgroups})
        wave.cgroups = "/".join(str(c) for c in counts) + f" of {expected if self.cgroup_parents else 0}"
        wave.fds, wave.threads, wave.rss = state.fds, state.threads, state.rss
        for problem in self.state_problems(state, expected):
            self.fail(label, problem)
        # Flat: fds (each warm sandbox holds 5: its four pipes and its pidfd, so a pool
        # grown under load holds more), threads and memory.
        grown = 5 * (sum(size.values()) - sum(POOL_SIZES.values())) if self.zygote_mode else 0
        if not first and state.fds > self.baseline.fds + grown + FD_SLACK:
            self.fail(label, f"the server holds {state.fds} fds at idle, over its first idle baseline "
                      f"{self.baseline.fds} + {grown} for the pool's growth + {FD_SLACK}: "
                      f"{_fd_summary(self.server.pid)}")
        if label == "warm-up":
            self.warm = state
            self.notes.append(f"after the warm-up: RSS {state.rss / MiB:.0f} MB at idle, {state.hwm / MiB:.0f} MB at "
                              f"its peak (the RSS baseline), {state.threads} threads")
        elif self.warm is not None:
            if state.threads > self.warm.threads + THREAD_SLACK:
                self.fail(label, f"the server has {state.threads} threads at idle, over {self.warm.threads} after "
                          f"the warm-up + {THREAD_SLACK}")
            # Against the warm-up's high-water mark: an idle RSS sample swings by tens of MB
            # with what the allocator kept of the last large bodies (it returns to its floor).
            allowed = max(self.warm.hwm * RSS_SLACK[0], self.warm.hwm + RSS_SLACK[1])
            if state.rss > allowed:
                self.fail(label, f"the server's RSS is {state.rss / MiB:.0f} MB at idle, over {allowed / MiB:.0f} MB "
                          f"(its peak by the end of the warm-up, {self.warm.hwm / MiB:.0f} MB, +30% or +50 MB)")
        errors = labelled(values, "jail_background_errors_total")
        if errors != self.counters.get("background", {}):
            self.fail(label, f"background threads raised: jail_background_errors_total {errors}")
            self.counters["background"] = errors
        await self.check_readyz(wave)
        if label in ("start", "shrink") or wave.concurrency == max(WAVES) or label == self.last_label:
            await self.check_keepalive_after_413(wave)
        log = self.server.new_log()
        tracebacks = log.count("Traceback (most recent call last)")
        if tracebacks:
            at = log.index("Traceback (most recent call last)")
            self.fail(label, f"the server logged {tracebacks} traceback(s); the first:\n"
                      + _tail(log[max(0, log.rfind(chr(10), 0, at - 1)):][:3000], 40))

    async def check_readyz(self, wave):
        """/readyz runs a real sandbox (a warm one): 200, then the pool is full again as fast."""
        try:
            async with self.control.get(self.server.url + "/readyz") as response:
                body = await response.read()
                wave.readyz = str(response.status)
                if response.status != 200 or json.loads(body) != {"status": "ready"}:
                    self.fail(wave.label, f"/readyz answered {response.status} {body[:300]!r}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            wave.readyz = "none"
            self.fail(wave.label, f"/readyz did not answer: {type(exc).__name__}: {exc}")
        again, values = await self.wait_pool_full()
        if again is None or again > REFILL_BOUND:
            self.fail(wave.label, f"after /readyz the warm pool was not full within {REFILL_BOUND} s "
                      f"({'not in 10 s' if again is None else f'{again:.2f} s'}): ready {pool_ready(values)}, "
                      f"size {pool_size(values)}")

    async def check_keepalive_after_413(self, wave):
        """A body refused on its Content-Length (Expect: 100-continue, 413), then the
        client's next request on the same keep-alive connection: answered right, at
        idle within 3 s (its answer takes milliseconds). At the start, at the peak
        waves and at the last one (each costs its timeout while it fails)."""
        case = self.traffic.expect_refused(f"soak-w{wave.label}-expect413")
        case.timeout = 3
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            outcome = await send(session, self.server.url, case, InFlight())
        self._count(wave, outcome)
        if outcome.wrong:
            self.fail(wave.label, "a keep-alive connection after a 413: " + wave.wrong_answers[-1])

    async def settled_state(self, first) -> tuple:
        """(host state, the sandboxes expected) once they match, or after SETTLE
        seconds (answered runs are reaped and released just after their answer)."""
        deadline = time.monotonic() + SETTLE
        while True:
            values = await self.metrics_or_empty()
            state = host_state(self.server.pid)
            if first:
                return state, None
            size = pool_size(values)
            expected = len(self.baseline.zygotes) + sum(size.values())
            if not self.state_problems(state, expected) or time.monotonic() > deadline:
                return state, expected
            await asyncio.sleep(0.1)

    def state_problems(self, state: HostState, expected: int) -> list:
        problems = []
        if state.zombies:
            problems.append(f"{len(state.zombies)} zombie(s) under the server: "
                            + "; ".join(p.describe() for p in state.zombies[:10]))
        strays = [p for p in state.strays if p.state != "Z"]
        allowed = 0 if self.zygote_mode else expected
        if len(strays) > allowed:
            problems.append(f"{len(strays)} child process(es) of the server that are no zygote at idle"
                            + (f" (expected {allowed} warm sandboxes)" if allowed else "") + ": "
                            + "; ".join(p.describe() for p in strays[:10]))
        if len(state.sandboxes) != expected:
            problems.append(f"{len(state.sandboxes)} sandbox processes at idle, expected {expected} "
                            f"({len(self.baseline.zygotes)} zygote(s) + the pools' sizes): "
                            + "; ".join(p.describe() for p in state.sandboxes[:12])
                            + (" ..." if len(state.sandboxes) > 12 else ""))
        wrong_groups = {parent: len(names) for parent, names in state.cgroups.items()
                        if len(names) != (expected if parent in self.cgroup_parents else 0)}
        if wrong_groups:
            names = sorted({n for parent in wrong_groups for n in state.cgroups[parent]})
            problems.append(f"cgroups of the server at idle: {wrong_groups}, expected {expected} in each of "
                            f"{len(self.cgroup_parents)} hierarchies; names {names[:12]}"
                            + (" ..." if len(names) > 12 else ""))
        return problems

    async def check_shrink(self):
        """A long run ends idle until every pool is back at its configured size:
        what it gave back is gone (processes, cgroups, fds)."""
        wave = self.begin("shrink", 0)
        began = time.monotonic()
        values = {}
        while time.monotonic() - began < self.shrink_wait:
            values = await self.metrics_or_empty()
            if values and pool_size(values) == POOL_SIZES and pool_ready(values) == POOL_SIZES:
                break
            await asyncio.sleep(0.5)
        wave.seconds = time.monotonic() - began
        if pool_size(values) != POOL_SIZES:
            self.fail("shrink", f"after {wave.seconds:.0f} s idle the pools are not back at their configured size "
                      f"{POOL_SIZES}: jail_pool_size {pool_size(values)}, ready {pool_ready(values)}")
        await self.check_idle(wave)
        if wave.fds > self.baseline.fds + FD_SLACK:
            self.fail("shrink", f"back at its configured size the server holds {wave.fds} fds, over its first idle "
                      f"baseline {self.baseline.fds} + {FD_SLACK}: {_fd_summary(self.server.pid)}")
        self.end_wave(wave)

    # -- the end ----------------------------------------------------------------------------------

    async def sigterm(self):
        """SIGTERM with runs in flight: the two that finish within the shutdown
        timeout are answered right, the two that would not are killed, and the
        server exits 0 within shutdown_timeout_s + 5 s, leaving nothing."""
        label = "shutdown"
        wave = self.begin(label, 4)
        url = self.server.url
        inflight = InFlight()
        short = [Case("shutdown_short", language, jbody({"code": code, "language": language, "scope": {"tag": tag}}),
                      expect_exact({"output": tag}), request_id=tag, summary=f"{language} 1.5 s sleep, in flight "
                      "at SIGTERM")
                 for language, code, tag in [
                     ("python", "import time\ntime.sleep(1.5)\nreturn tag", "soak-shutdown-short-py"),
                     ("javascript", "await new Promise(r => setTimeout(r, 1500)); return tag;",
                      "soak-shutdown-short-js")]]
        long = [Case("shutdown_long", language, jbody({"code": code, "language": language,
                                                       "limits": {"timeout_ms": 28000}}),
                     lambda answer: None, request_id=f"soak-shutdown-long-{language}",
                     summary=f"{language} 25 s sleep")
                for language, code in [("python", "import time\ntime.sleep(25)"),
                                       ("javascript", "await new Promise(r => setTimeout(r, 25000));")]]
        limit = SETTINGS.shutdown_timeout_s + 5
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.ensure_future(send(session, url, case, inflight)) for case in short]
            await asyncio.sleep(0.3)  # the short ones hold both slots; the long ones wait behind them
            tasks += [asyncio.ensure_future(send(session, url, case, inflight)) for case in long]
            await asyncio.sleep(0.4)
            sent = time.monotonic()
            self.server.process.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, _wait, self.server.process, limit + 20)
            took = time.monotonic() - sent
            if code is None:
                self.fail(label, f"the server had not exited {limit + 20:.0f} s after SIGTERM: killed; its last "
                          "lines:\n" + _tail(self.server.log_text(), 20))
                self.server.kill()
            outcomes = await asyncio.gather(*tasks)
        wave.seconds = took
        self.shutdown = {"exit": code, "seconds": took, "limit": limit}
        if code is not None and took > limit:
            self.fail(label, f"the server exited {took:.1f} s after SIGTERM, over shutdown_timeout_s "
                      f"{SETTINGS.shutdown_timeout_s} + 5 s")
        if code not in (0, None):
            self.fail(label, f"the server exited {code} after SIGTERM, expected 0; its last lines:\n"
                      + _tail(self.server.log_text(), 20))
        for outcome in outcomes[:2]:
            self._count(wave, outcome)
        wave.requests += 2  # the long ones: killed, whatever their clients got
        if wave.wrong:
            self.fail(label, "runs in flight at SIGTERM that end within the shutdown timeout were not answered "
                      "right:\n      " + "\n      ".join(wave.wrong_answers))
        procs, groups = leftovers_after_exit(self.server.pid)
        await asyncio.sleep(1.0)
        later_procs, later_groups = leftovers_after_exit(self.server.pid)
        wave.processes = str(len(later_procs))
        wave.cgroups = str(sum(len(n) for n in later_groups.values()))
        if procs or groups:
            self.fail(label, f"left on the host at the server's exit: {len(procs)} process(es) "
                      + "; ".join(p.describe() for p in procs[:10])
                      + f"; cgroups {groups} (1 s later: {len(later_procs)} processes, cgroups {later_groups})")
        tail = self.server.new_log()
        if "Traceback (most recent call last)" in tail:
            self.fail(label, "the server logged a traceback while shutting down:\n" + _tail(tail, 30))
        self.notes.append(f"SIGTERM with 4 runs in flight: exit {code} after {took:.1f} s (limit {limit:.0f} s)")
        self.end_wave(wave)

    # -- the report ---------------------------------------------------------------------------------

    def write_report(self):
        host = f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}/{os.getloadavg()[1]:.1f}"
        lines = [
            "# Soak report", "",
            f"- {datetime.datetime.now().isoformat(timespec='seconds')}; {host}; seed {self.seed}; "
            f"{self.seconds:.0f} s asked, {time.monotonic() - self.started:.0f} s taken",
            f"- server: `{' '.join(self.server.argv) if self.server else ''}` (pid "
            f"{self.server.pid if self.server else '-'}), its log `{self.log_path}`",
            f"- its settings (the defaults): max_concurrency {SETTINGS.max_concurrency}, queue_depth "
            f"{SETTINGS.queue_depth} (capacity {CAPACITY}), pools {POOL_SIZES} growing up to {POOL_MAX}, "
            f"shutdown_timeout_s {SETTINGS.shutdown_timeout_s}",
            "- requests: aiohttp and curl + hey; 429: documented refusals (the queue was full); gone: clients that "
            "went away mid-run; warm/miss/cold: the pool's hits, misses and cold starts in the wave; pool ready: "
            "ready/size per language (python, javascript); sandbox procs and cgroups (per hierarchy): found/expected "
            "at idle; latency is reported, never asserted",
            "",
            table(self.waves), "",
        ]
        lines += [f"- {note}" for note in self.notes]
        kinds = {}
        for wave in self.waves:
            for kind, n in wave.kinds.items():
                kinds[kind] = kinds.get(kind, 0) + n
        lines.append(f"- requests by kind: {dict(sorted(kinds.items()))}")
        lines += ["", "## Broken invariants", ""]
        lines += [f"- {failure}" for failure in self.failures] or ["none"]
        wrong = [(wave.label, answer) for wave in self.waves for answer in wave.wrong_answers]
        if wrong:
            lines += ["", "## Every wrong answer", ""]
            lines += [f"- wave {label}: {answer}" for label, answer in wrong]
        self.report_path.write_text("\n".join(lines) + "\n")


def _wait(process, timeout):
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _tail(text, n):
    return "\n".join(text.splitlines()[-n:])


def _fd_summary(pid) -> str:
    kinds = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            kind = target.split(":")[0] if ":" in target and not target.startswith("/") else target
            kinds[kind] = kinds.get(kind, 0) + 1
    except OSError:
        return "(gone)"
    return ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:8])
