"""The chaos suite's view of a live service: the server started as the README
starts it, a steady load of real HTTP clients, and what the host shows of the
server (its zygotes, its sandboxes, their cgroups, its fds)."""

import asyncio
import dataclasses
import json
import os
import pathlib
import random
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import aiohttp

from host import free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
CGROUP_PARENTS = [f"/sys/fs/cgroup/{hierarchy}/snippet-jail" for hierarchy in ("memory", "pids", "cpu", "cpuacct")]
CGROUP_PARENTS = [path for path in CGROUP_PARENTS if os.path.isdir(path)] or ["/sys/fs/cgroup/snippet-jail"]
POOL_SIZE = 4  # the service's default warm sandboxes per language
SHUTDOWN_TIMEOUT_S = 10.0  # the service's default (http/settings.py); SIGTERM may take this plus a margin
SHUTDOWN_MARGIN_S = 5.0
ANSWER_TIMEOUT_S = 15.0  # a load request not answered by then counts as hung
# Host fds the server holds for each sandbox waiting in its pool (stdin, stdout,
# stderr and result pipes, and a pidfd) and for each zygote (pidfd, control
# socket, log pipe): what is left is the server's own, which must stay flat.
FDS_PER_SANDBOX = 5
FDS_PER_ZYGOTE = 3
READ_SYSCALL = 0  # an idle warm sandbox is blocked reading its request on stdin (x86_64 numbering)
# Where a snippet waiting on a timer blocks: Python's time.sleep, Node's event loop.
TIMER_WAIT = {"python": {230}, "javascript": {232, 281, 441}}  # clock_nanosleep; epoll_wait, _pwait, _pwait2
LANGUAGES = ("python", "javascript")
# The load's snippet: the same text is valid Python and JavaScript.
LOAD_CODE = "return [x * 3 + k, s + s]"


def wait_for(condition, timeout, interval=0.02):
    """Polls condition() until it is true (returns its value) or timeout s pass (returns its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- the host's view -------------------------------------------------------------------------

@dataclasses.dataclass
class Proc:
    pid: int
    ppid: int
    state: str
    uid: int
    cmdline: bytes

    @property
    def language(self):
        return "python" if b"run.py" in self.cmdline else "javascript" if b"run.js" in self.cmdline else None

    def syscall(self):
        """The number of the system call it is blocked in, or None (running, or gone)."""
        try:
            with open(f"/proc/{self.pid}/syscall") as f:
                first = f.read().split()[0]
        except (OSError, IndexError):
            return None
        return int(first) if first.lstrip("-").isdigit() else None


def processes() -> dict:
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        found[int(name)] = Proc(int(name), int(fields["PPid"]), fields["State"].split()[0],
                                int(fields["Uid"].split()[0]), cmdline)
    return found


def start_time(pid) -> int:
    """When the process started (clock ticks since boot), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return 0


# -- the service ----------------------------------------------------------------------------

class Service:
    """`python -m jail_http --port <free port>` from the repo root, settings from
    the environment (none: the service's defaults, warm pool on). Everything
    it prints is kept, with the time it came."""

    def __init__(self, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAIL_")}
        env.update({f"JAIL_{k.upper()}": str(v) for k, v in settings.items()})
        self.settings = settings
        self.baseline = None  # its Snapshot at rest before the fault (tests/chaos/conftest.py)
        self.lines = []  # (monotonic time, line)
        self.process = subprocess.Popen([sys.executable, "-m", "jail_http", "--port", str(self.port)], cwd=REPO,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.pid = self.process.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stopped = False
        if not wait_for(self._healthy, 30, 0.05):
            self.kill()
            raise RuntimeError("the server did not answer /healthz within 30 s:\n" + self.output())

    def _read(self):
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _healthy(self):
        if self.process.poll() is not None:
            raise RuntimeError("the server died at start:\n" + self.output())
        try:
            return self.request("GET", "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def output(self, since=0.0) -> str:
        return "\n".join(line for when, line in list(self.lines) if when >= since)

    def told(self, since=0.0) -> list:
        """What the server logged since then, other than its one JSON line per request."""
        return [line for when, line in list(self.lines) if when >= since and not line.startswith('{"request_id"')]

    def request_lines(self, since=0.0) -> list:
        return [json.loads(line) for when, line in list(self.lines)
                if when >= since and line.startswith('{"request_id"')]

    # -- HTTP (urllib: one connection per request, closed after it)

    def request(self, method, path, body=None, headers=None, timeout=30):
        """(status, body bytes); never raises for an HTTP status."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def evaluate(self, body, **kwargs):
        status, raw = self.request("POST", "/evaluate", body, **kwargs)
        return status, json.loads(raw)

    def readyz(self):
        status, raw = self.request("GET", "/readyz", timeout=10)
        return status, json.loads(raw)

    def metrics(self) -> dict:
        """'name{label="value",...}' -> value, as /metrics shows them."""
        text = self.request("GET", "/metrics", timeout=10)[1].decode()
        found = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                found[key] = float(value)
        return found

    def metric(self, name, **labels) -> float:
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        return self.metrics().get(key, 0.0)

    # -- what the host shows of it

    def descendants(self) -> list:
        table = processes()
        family, found = {self.pid}, []
        grew = True
        while grew:
            grew = False
            for proc in table.values():
                if proc.ppid in family and proc.pid not in family:
                    family.add(proc.pid)
                    found.append(proc)
                    grew = True
        return found

    def zygote_pids(self) -> list:
        """(language, pid) of each zygote (a `--zygote` process whose parent is
        the server), oldest first: a stopped zygote lives on until its last child ends."""
        found = [proc for proc in self.descendants() if proc.ppid == self.pid and b"--zygote" in proc.cmdline]
        return [(proc.language, proc.pid) for proc in sorted(found, key=lambda proc: start_time(proc.pid))]

    def zygotes(self) -> dict:
        """language -> pid of its newest zygote."""
        return dict(self.zygote_pids())

    def sandboxes(self) -> list:
        """Every process of the server's but its zygotes: warm sandboxes (idle or
        running), cold ones, and anything they started."""
        zygotes = {pid for _, pid in self.zygote_pids()}
        return [proc for proc in self.descendants() if proc.pid not in zygotes]

    def children_of(self, pid) -> list:
        return [proc for proc in processes().values() if proc.ppid == pid]

    @staticmethod
    def child_count(pid) -> int:
        """How many children the process has now (the kernel's own list: fast)."""
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return len(f.read().split())
        except OSError:
            return 0

    def idle_children(self, zygote) -> list:
        return [proc for proc in self.children_of(zygote) if proc.state != "Z" and proc.syscall() == READ_SYSCALL]

    def cgroups(self) -> dict:
        """parent folder -> the server's groups in it ("<server pid>-<n>")."""
        found = {}
        for parent in CGROUP_PARENTS:
            try:
                names = os.listdir(parent)
            except OSError:
                names = []
            found[parent] = sorted(name for name in names if name.startswith(f"{self.pid}-"))
        return found

    def fds(self) -> tuple:
        """(fds in all, of which TCP connections): a client's connection is the
        client's to close, and is not counted as the server's own."""
        states = {}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    for line in f.readlines()[1:]:
                        fields = line.split()
                        states[fields[9]] = fields[3]
            except OSError:
                pass
        total = connections = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue  # closed since the listing
            total += 1
            if target.startswith("socket:[") and states.get(target[8:-1], "0A") != "0A":  # 0A: LISTEN
                connections += 1
        return total, connections

    # -- its end

    def stop(self):
        """SIGTERM; (exit code or None if it outlived the bound, seconds it took)."""
        started = time.monotonic()
        self.stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(SHUTDOWN_TIMEOUT_S + SHUTDOWN_MARGIN_S)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - started
        if code is None:
            self.kill()
        self._reader.join(5)
        return code, took

    def kill(self):
        """SIGKILL (a test that failed half-way): its sandboxes follow it (their
        parent-death signal), then its groups are removed, as its own startup
        sweep would have done, so that the next tests find the host clean."""
        self.stopped = True
        family = [Handle(proc.pid) for proc in self.descendants()]
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(5)
        wait_for(lambda: all(handle.exited() for handle in family), 5)
        for handle in family:
            handle.close()
        time.sleep(0.2)  # their exits reaped by init
        for parent, names in self.cgroups().items():
            for name in names:
                try:
                    os.rmdir(f"{parent}/{name}")
                except OSError:
                    pass


# -- the load ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Answer:
    language: str
    sent: float
    done: float
    status: int  # None: no answer (hung past ANSWER_TIMEOUT_S, or the connection failed)
    body: object
    expected: object

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body == {"output": self.expected}

    def error(self):
        return self.body.get("error", {}) if isinstance(self.body, dict) else {}

    def __str__(self):
        return (f"{self.language} sent at {self.sent:.3f}, answered after {self.done - self.sent:.3f} s: "
                f"{self.status} {json.dumps(self.body)[:400]} (expected {self.expected})")


class Load:
    """A few concurrent client loops (aiohttp, keep-alive) per language, each
    sending small good runs one after another and keeping every answer."""

    def __init__(self, service, per_language=2, gap=0.01):
        self.url = service.url + "/evaluate"
        self.per_language, self.gap = per_language, gap
        self.answers = []
        self.in_flight = 0
        self._paused = threading.Event()
        self._stopping = False
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="chaos-load", daemon=True)
        self._thread.start()
        return self

    async def _main(self):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S)) as session:
            await asyncio.gather(*(self._loop(session, language, k)
                                   for language in LANGUAGES for k in range(self.per_language)))

    async def _loop(self, session, language, k):
        rng = random.Random(f"{language}-{k}")
        while not self._stopping:
            if self._paused.is_set():
                await asyncio.sleep(0.01)
                continue
            x, s = rng.randrange(10**6), f"{language}{k}-{rng.randrange(10**6)}"
            expected = [x * 3 + k, s + s]
            sent = time.monotonic()
            self.in_flight += 1
            try:
                async with session.post(self.url, json={"code": LOAD_CODE, "language": language,
                                                        "scope": {"x": x, "k": k, "s": s}}) as response:
                    status, body = response.status, await response.json(content_type=None)
            except asyncio.TimeoutError:
                status, body = None, f"no answer within {ANSWER_TIMEOUT_S} s"
            except (aiohttp.ClientError, ValueError) as exc:
                status, body = None, f"{type(exc).__name__}: {exc}"
            finally:
                self.in_flight -= 1
            self.answers.append(Answer(language, sent, time.monotonic(), status, body, expected))
            await asyncio.sleep(self.gap)

    def pause(self):
        """No new request; returns once those in flight are answered."""
        self._paused.set()
        assert wait_for(lambda: self.in_flight == 0, ANSWER_TIMEOUT_S + 5), "load requests still in flight"

    def stop(self):
        """Ends the loops (and their connections)."""
        self._stopping = True
        self._paused.clear()
        if self._thread is not None:
            self._thread.join(ANSWER_TIMEOUT_S + 10)
            assert not self._thread.is_alive(), "the load did not end"

    def between(self, start, end=float("inf")) -> list:
        """Answers to requests sent in [start, end)."""
        return [answer for answer in list(self.answers) if start <= answer.sent < end]

    def wrong(self, start=0.0, end=float("inf")) -> list:
        return [answer for answer in self.between(start, end) if not answer.ok]


# -- settling and leftovers ---------------------------------------------------------------------

@dataclasses.dataclass
class Snapshot:
    """The server at rest: nothing in flight, every sandbox of its an idle warm one."""

    zygotes: list  # (language, pid)
    idle: dict  # language -> idle warm sandboxes (processes)
    others: list  # sandbox processes that are not idle: must be none
    zombies: list
    groups: dict
    empty_groups: list
    fds: int
    connections: int
    ready: dict  # language -> jail_pool_ready
    running: float

    @property
    def own_fds(self) -> int:
        """The server's fds but those of its zygotes and idle sandboxes."""
        idle = sum(len(pids) for pids in self.idle.values())
        return self.fds - self.connections - FDS_PER_SANDBOX * idle - FDS_PER_ZYGOTE * len(self.zygotes)

    def problems(self) -> list:
        found = []
        if self.zombies:
            found.append(f"zombies: {self.zombies}")
        if self.others:
            found.append(f"sandbox processes that are neither idle nor a zygote: {self.others}")
        if self.running:
            found.append(f"jail_sandboxes_running is {self.running}")
        if self.connections:
            found.append(f"{self.connections} client connections still open in the server")
        for language in LANGUAGES:
            if len(self.idle[language]) != self.ready[language]:
                found.append(f"{language}: jail_pool_ready says {self.ready[language]}, "
                             f"the host shows {len(self.idle[language])} idle warm sandboxes")
        expected_groups = len(self.zygotes) + sum(len(pids) for pids in self.idle.values())
        for parent, names in self.groups.items():
            if len(names) != expected_groups:
                found.append(f"{len(names)} groups in {parent} for {expected_groups} zygotes and sandboxes: {names}")
        if self.empty_groups:
            found.append(f"groups with no process in them: {self.empty_groups}")
        return found


def snapshot(service) -> Snapshot:
    fds, connections = service.fds()  # before this snapshot's own requests
    descendants = service.descendants()
    zygotes = [(proc.language, proc.pid) for proc in descendants
               if proc.ppid == service.pid and b"--zygote" in proc.cmdline]
    idle, others, zombies = {language: [] for language in LANGUAGES}, [], []
    for proc in descendants:
        if (proc.language, proc.pid) in zygotes:
            continue
        if proc.state == "Z":
            zombies.append(proc.pid)
        elif proc.syscall() == READ_SYSCALL and proc.language:
            idle[proc.language].append(proc.pid)
        else:
            others.append((proc.pid, proc.state, proc.syscall(), proc.cmdline.replace(b"\0", b" ")[:80]))
    groups = service.cgroups()
    empty = []
    for name in groups[CGROUP_PARENTS[0]]:
        try:
            with open(f"{CGROUP_PARENTS[0]}/{name}/cgroup.procs") as f:
                if not f.read().strip():
                    empty.append(name)
        except OSError:
            pass  # removed since the listing
    metrics = service.metrics()
    ready = {language: metrics.get(f'jail_pool_ready{{language="{language}"}}', 0.0) for language in LANGUAGES}
    return Snapshot(zygotes, idle, others, zombies, groups, empty, fds, connections, ready,
                    metrics.get("jail_sandboxes_running", 0.0))


def at_rest(service, timeout=8.0, pool_full=True) -> Snapshot:
    """Waits until the server is at rest (see Snapshot) and its pool holds at
    least its size in each language; the last snapshot either way."""
    previous = [None]

    def settled():
        shot = snapshot(service)
        full = not pool_full or all(len(shot.idle[language]) >= POOL_SIZE for language in LANGUAGES)
        # Two in a row alike: nothing was made or ended between the readings of one.
        same = previous[0] is not None and (shot.idle, shot.zygotes, shot.fds) == (
            previous[0].idle, previous[0].zygotes, previous[0].fds)
        previous[0] = shot
        return shot if full and same and not shot.problems() else None

    return wait_for(settled, timeout, 0.1) or snapshot(service)


def assert_nothing_leaked(service, baseline: Snapshot, timeout=8.0) -> Snapshot:
    """At rest again: no zombie, no sandbox process but idle warm ones (as many
    as the pool says), a group per zygote and sandbox and none empty, the
    server's own fds as many as at the start."""
    def clean():
        shot = at_rest(service, timeout=0.5)
        return shot if not shot.problems() and shot.own_fds == baseline.own_fds else None

    shot = wait_for(clean, timeout, 0.1) or snapshot(service)
    problems = shot.problems()
    assert not problems, "; ".join(problems)
    assert shot.own_fds == baseline.own_fds, (
        f"the server's own fds went from {baseline.own_fds} to {shot.own_fds} "
        f"({shot.fds} in all, {shot.idle} idle sandboxes, zygotes {shot.zygotes}): "
        + fd_listing(service.pid))
    return shot


def fd_listing(pid) -> str:
    """What a process's fds are, counted by kind."""
    kinds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            kind = os.readlink(f"/proc/{pid}/fd/{fd}").split("[")[0]
        except OSError:
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))


def assert_stops_cleanly(service):
    """SIGTERM ends the server within its shutdown timeout plus the margin,
    with exit code 0, and nothing of it stays: no process, no group."""
    family = [Handle(proc.pid) for proc in service.descendants()]
    code, took = service.stop()
    assert code == 0 and took <= SHUTDOWN_TIMEOUT_S + SHUTDOWN_MARGIN_S, (
        f"SIGTERM: exit code {code} after {took:.1f} s\n" + service.output()[-3000:])
    wait_for(lambda: all(handle.exited() for handle in family), 2)
    left = [handle.pid for handle in family if not handle.exited()]
    for handle in family:
        handle.close()
    assert not left, f"processes of the server outlived it: {left}"
    groups = {parent: names for parent, names in service.cgroups().items() if names}
    assert not groups, f"groups of the server outlived it: {groups}"
    return took


class Handle:
    """A process held by a pidfd: signalled and watched without ever mistaking
    a recycled pid for it. None of it fails if the process is gone already."""

    def __init__(self, pid):
        self.pid = pid
        try:
            self.fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.fd = None

    def kill(self):
        signal.pidfd_send_signal(self.fd, signal.SIGKILL)

    def exited(self) -> bool:
        """It has ended (a zombie not yet reaped counts: it runs nothing)."""
        return self.fd is None or bool(select.select([self.fd], [], [], 0)[0])

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# -- verdicts -------------------------------------------------------------------------------------

class Verdict:
    """Everything a case expects once its fault is known to have happened,
    collected so that one failure does not hide the next; check() asserts them."""

    def __init__(self):
        self.failures = []
        self.measured = {}

    def expect(self, ok, message) -> bool:
        if not ok:
            self.failures.append(message() if callable(message) else message)
        return bool(ok)

    def holds(self, check, label):
        """Runs an assert-based check; its AssertionError becomes a failure."""
        try:
            return check()
        except AssertionError as exc:
            self.failures.append(f"{label}: {exc}")
            return None

    def check(self):
        assert not self.failures, "\n\n".join(self.failures) + f"\n\nmeasured: {self.measured}"


def steady(load, seconds=1.0):
    """The load runs for a while and every answer is right: the service works before the fault."""
    start = time.monotonic()
    time.sleep(seconds)
    answers, wrong = load.between(start), load.wrong(start)
    assert len(answers) >= 10 and not wrong, (
        f"before any fault, {len(answers)} answers, wrong: " + "\n".join(map(str, wrong[:5])))


def pool_whole(service, languages=LANGUAGES, old_zygotes=(), seen=None):
    """/readyz 200 and, for each of languages, one zygote (none of
    old_zygotes) with at least POOL_SIZE idle children and jail_pool_ready at
    least POOL_SIZE. (Under the load a pool runs low now and then: the
    languages a fault did not touch are not asked.) What /readyz answered
    otherwise is added to seen."""
    status, body = service.readyz()
    if status != 200 and seen is not None and body not in seen:
        seen.append(body)
    if status != 200:
        return False
    zygotes = service.zygote_pids()
    for language in languages:
        pids = [pid for each, pid in zygotes if each == language]
        if len(pids) != 1 or pids[0] in old_zygotes:
            return False  # one zygote: a new one, and an old one has ended
        if len(service.idle_children(pids[0])) < POOL_SIZE:
            return False
    metrics = service.metrics()
    return all(metrics.get(f'jail_pool_ready{{language="{language}"}}', 0) >= POOL_SIZE for language in languages)


def time_to(condition, since, timeout, interval=0.05):
    """Seconds from since until condition() held (polled until timeout s from
    now), or None if it never did."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic() - since
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def served_warm(service, language, count=4) -> str:
    """None if count runs in a row (the load stopped) are all pool hits and none
    went cold, else what the metrics say."""
    def counters():
        metrics = service.metrics()
        return (metrics.get(f'jail_pool_hits_total{{language="{language}"}}', 0.0),
                metrics.get(f'jail_pool_cold_total{{language="{language}"}}',
                            metrics.get(f'jail_pool_misses_total{{language="{language}"}}', 0.0)))

    hits, cold = counters()
    for i in range(count):
        status, body = service.evaluate({"code": "return x + 1", "language": language, "scope": {"x": i}})
        if (status, body) != (200, {"output": i + 1}):
            return f"a {language} run after recovery was answered {status} {body}"
        time.sleep(0.05)  # the refill's turn
    new_hits, new_cold = counters()
    if new_hits - hits != count or new_cold != cold:
        return f"{count} {language} runs after recovery: {new_hits - hits} pool hits, {new_cold - cold} went cold"
    return None


def finish(service, load, verdict, warm=LANGUAGES):
    """The end of every case: the load stopped, new runs served warm, nothing
    leaked, SIGTERM ends the server in time leaving nothing; then the verdict."""
    load.stop()
    for language in warm:
        problem = served_warm(service, language)
        verdict.expect(problem is None, problem)
    verdict.holds(lambda: assert_nothing_leaked(service, service.baseline), "after the case")
    took = verdict.holds(lambda: assert_stops_cleanly(service), "SIGTERM")
    if took is not None:
        verdict.measured["sigterm_s"] = round(took, 2)
    verdict.check()
    return verdict.measured
