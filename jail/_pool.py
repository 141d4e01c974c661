"""Warm, single-use sandboxes: started ahead of demand, each waiting for its one request.

A warm sandbox is a full sandbox (namespaces, limits, seccomp filter) whose
interpreter has already loaded the harness and is blocked reading its request
on stdin. A request takes one, gives it its input and reads it to its end like
any other run; the sandbox is never used again, and a refill thread starts a
replacement. Two snippets never share a process, a namespace, a file or a module.

A request is served warm only when the warm sandbox was made exactly as its own
would be: the same policy and the same limits that are fixed at start (memory,
processes, open files); the wall clock, the output and result limits are the
host's and apply from the moment of taking. The cpu rlimit is made at the most
any request may ask (the policy's maximum timeout) and lowered to the request's
at taking: raising a hard rlimit needs CAP_SYS_RESOURCE in the initial user
namespace, which root in a container lacks. (Other backends' sandbox pid is not
the interpreter: their cpu rlimit stays the one they started with, so they
serve only requests that want that one.) Anything else takes the cold path at
once, and so does a request whose taken sandbox could not be given its cpu
rlimit (that sandbox is discarded). An empty pool whose sandboxes are forked
(jail._zygote) makes a request wait up to FORK_WAIT for the fork under way; one
whose sandboxes are spawned sends it cold at once.

Where a zygote can serve the policy (a root server, the native backend), the
refill thread asks it for warm sandboxes; the zygote's own thread is its
parent. Elsewhere the refill thread spawns each one, so it is their parent
thread: it lives as long as the pool, and when it ends (stop()) their
parent-death signal takes any idle one along.
"""

import asyncio
import atexit
import collections
import dataclasses
import os
import resource
import select
import threading
import time

from jail import _backends, _process, _runtime, _sandbox, _supervise, _zygote

LANGUAGES = tuple(_runtime.LANGUAGES)


DEFAULT_SIZE = 4  # warm sandboxes per language unless JAIL_POOL_<LANGUAGE> says otherwise
# How long a request waits for a forked sandbox when the pool is empty: a few
# forks' time, and far below a cold start (25 ms and more on these machines).
FORK_WAIT = 0.010
ZYGOTE_RETRY = 5.0  # seconds after a zygote failed before a new one is tried
STALLED = 5.0  # seconds a pool may stay short of its size without making a sandbox before it counts as degraded
STOP_TIMEOUT = 5.0  # seconds stop() waits in all for the refill thread, the reaper and the zygotes


def _sizes_from_environment() -> dict:
    sizes = {}
    for language in LANGUAGES:
        text = os.environ.get(f"JAIL_POOL_{language.upper()}", str(DEFAULT_SIZE))
        try:
            sizes[language] = max(0, int(text))
        except ValueError:
            raise ValueError(f"JAIL_POOL_{language.upper()}={text!r} is not a whole number") from None
    return sizes


@dataclasses.dataclass
class PoolStats:
    hits: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    misses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    refills: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    refill_seconds: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # summed


class WarmPool:
    def __init__(self):
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ready = {language: collections.deque() for language in LANGUAGES}
        self._sizes = dict.fromkeys(LANGUAGES, 0)
        self._dormant = {}  # language -> size, kept from the first request in that language on
        self._not_before = 0.0  # monotonic time before which refills wait, if the pool is not empty
        self._policy = None
        self._zygotes = {}  # language -> its Zygote for the current policy
        self.zygote_off = {}  # language -> why its warm sandboxes are spawned, not forked
        self._zygote_retry = {}  # language -> when a zygote that failed may be tried again
        self._thread = None
        self._stopping = False
        self._short_since = {}  # language -> when it last went short of its size (while short)
        self._last_made = {}  # language -> when a refill last added sandboxes
        self.stats = PoolStats()
        _supervise.watch("warm pool", self.degraded)

    def configure(self, sizes: dict, policy, on_first_use=False) -> None:
        """Keeps sizes[language] warm sandboxes of policy; 0 everywhere stops the
        pool. ``on_first_use``: a language's sandboxes are started when the first
        request in that language comes (which goes cold), not now."""
        if on_first_use:
            with self._lock:
                self._policy = policy
                self._dormant = {language: size for language, size in sizes.items() if size}
            return
        with self._lock:
            self._dormant = {}
            stale, stale_zygotes = [], []
            if policy != self._policy:
                stale = [running for queue in self._ready.values() for running in queue]
                for queue in self._ready.values():
                    queue.clear()
                stale_zygotes = list(self._zygotes.values())
                self._zygotes.clear()
                self.zygote_off.clear()
                self._zygote_retry.clear()
            self._policy = policy
            self._sizes.update({language: int(size) for language, size in sizes.items()})
            if any(self._sizes.values()):
                self._start_refill()
            self._wake.notify_all()
        for started in stale:
            started.discard()
        for zygote in stale_zygotes:
            zygote.stop()
        if not any(self._sizes.values()):
            self.stop()

    def _start_refill(self) -> None:
        """(with the lock) The refill thread, unless it runs."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = _supervise.start("jail-warm-pool", self._refill, stopped=lambda: self._stopping)

    def stop(self, timeout=STOP_TIMEOUT) -> None:
        """Ends the refill thread and the idle sandboxes, and stops the zygotes
        (each ends once its last child, a run in flight, is gone); waits at
        most timeout seconds in all: whatever is left then dies with this
        process (every sandbox's parent-death signal)."""
        deadline = time.monotonic() + timeout
        remaining = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
        with self._lock:
            self._stopping = True
            self._dormant = {}
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(remaining())
        with self._lock:
            idle = [running for queue in self._ready.values() for running in queue]
            for queue in self._ready.values():
                queue.clear()
            zygotes = list(self._zygotes.values())
            self._zygotes.clear()
        for started in idle:
            _process.end_later(started)
        _process.settle(remaining())
        for zygote in zygotes:
            zygote.stop()  # each ends once its last child (a run in flight) is gone
        for zygote in zygotes:
            if not zygote.idle_child_count():
                zygote.join(remaining())

    def degraded(self):
        """Why the pool is degraded now, or None: a language short of its
        size that has made no sandbox for STALLED seconds, or whose zygote
        failed where one should serve it."""
        now = time.monotonic()
        problems = []
        with self._lock:
            for language, size in self._sizes.items():
                ready = len(self._ready[language])
                if not size or ready >= size or self._stopping:
                    continue
                since = max(self._short_since.get(language, now), self._last_made.get(language, 0.0))
                if now - since >= STALLED:
                    problems.append(f"{language}: {ready} of {size} warm sandboxes ready, none made for "
                                    f"{now - since:.1f} s")
            for language, reason in self.zygote_off.items():
                if self._sizes.get(language) and _zygote.unavailable_reason(self._policy) is None:
                    problems.append(f"{language}: {reason}; warm sandboxes are spawned, not forked")
        return "; ".join(problems) or None

    def size(self, language) -> int:
        return self._sizes.get(language, 0)

    def idle_pids(self) -> list:
        """The idle warm sandboxes and the zygotes."""
        with self._lock:
            zygotes = [zygote.pid for zygote in self._zygotes.values() if zygote.pid is not None]
            return [running.sandbox.pid for queue in self._ready.values() for running in queue] + zygotes

    def zygote_pid(self, language):
        with self._lock:
            zygote = self._zygotes.get(language)
            return zygote.pid if zygote is not None else None

    def idle_pids_of(self, language) -> list:
        with self._lock:
            return [running.sandbox.pid for running in self._ready.get(language, ())]

    async def take_async(self, language, policy, limits):
        """take(), but when the pool is empty and its sandboxes are forked (a
        zygote serves it), wait up to FORK_WAIT for the one being made: a fork
        is ready within milliseconds, where a cold start costs tens of them
        (of cpu too, which a loaded host has least of)."""
        running = self.take(language, policy, limits, count_miss=False)
        if running is None and self._forking(language, policy):
            deadline = time.monotonic() + FORK_WAIT
            while running is None and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
                running = self.take(language, policy, limits, count_miss=False)
        if running is None:
            with self._lock:
                self.stats.misses[language] += bool(self._sizes.get(language))
        return running

    def _forking(self, language, policy) -> bool:
        with self._lock:
            zygote = self._zygotes.get(language)
            return policy == self._policy and zygote is not None and zygote.alive()

    def take(self, language, policy, limits, count_miss=True):
        """A warm sandbox made as this request's would be, or None (go cold)."""
        with self._lock:
            if language in self._dormant and policy == self._policy:
                self._sizes[language] = self._dormant.pop(language)
                self._start_refill()
            queue = self._ready.get(language)
            usable = (queue is not None and self._sizes.get(language) and policy == self._policy
                      and _fixed_at_start(limits) == _fixed_at_start(self._policy.capped(self._policy.limits))
                      and (policy.backend == "native" or limits.cpu_seconds == _warm_limits(policy).cpu_seconds))
            running = None
            while usable and queue and running is None:
                candidate = queue.popleft()
                if _alive(candidate):
                    running = candidate
                else:
                    _discard_later(candidate)
            if running is not None and policy.backend == "native" and not _lower_cpu_limit(running, limits):
                _discard_later(running)
                running = None
            if running is not None:
                self._short_since.setdefault(language, time.monotonic())
            self.stats.hits[language] += running is not None
            self.stats.misses[language] += count_miss and running is None and bool(self._sizes.get(language))
            if running is None or not queue:
                self._not_before = 0.0  # empty: at once
                self._wake.notify_all()  # else the caller's done() does, not to compete with its run
        return running

    def done(self) -> None:
        """A run that took a warm sandbox has its answer: time to replace it,
        once that answer is on its way (SETTLE), while others are ready."""
        with self._lock:
            self._not_before = time.monotonic() + _process.SETTLE
            self._wake.notify_all()

    def _refill(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._missing():
                    self._wake.wait()
                if self._stopping:
                    return
                language = self._missing()
                wait = self._not_before - time.monotonic()
                if wait > 0 and self._ready[language]:
                    self._wake.wait(wait)
                    continue
                count = self._sizes[language] - len(self._ready[language])
                policy = self._policy
                self._short_since.setdefault(language, time.monotonic())
            started_at = time.monotonic()
            try:
                made = self._make(language, policy, count)
            except Exception as exc:  # logged and counted; the cold path reports it to callers; do not spin
                _supervise.failed("jail-warm-pool", exc)
                time.sleep(1)
                continue
            if not made:
                time.sleep(0.001)
            with self._lock:
                if self._stopping or policy != self._policy:
                    stale = made
                else:
                    self._ready[language].extend(made)
                    if made:
                        self._last_made[language] = time.monotonic()
                    if len(self._ready[language]) >= self._sizes.get(language, 0):
                        self._short_since.pop(language, None)
                    self.stats.refills[language] += len(made)
                    self.stats.refill_seconds[language] += time.monotonic() - started_at
                    stale = []
            for running in stale:
                running.discard()

    def _make(self, language, policy, count) -> list:
        """Up to count warm sandboxes: forked by the language's zygote where one
        can serve the policy (all asked for at once), else one spawned like a
        cold one."""
        limits = _warm_limits(policy)
        zygote = self._zygote(language, policy, limits)
        if zygote is not None:
            made = zygote.fork_many(count)
            failed = [each for each in made if isinstance(each, Exception) and not isinstance(each, _zygote.Busy)]
            if failed:
                with self._lock:
                    self.zygote_off[language] = f"its zygote failed: {failed[0]}"
                    self._zygote_retry[language] = time.monotonic() + ZYGOTE_RETRY
                    if self._zygotes.get(language) is zygote:
                        del self._zygotes[language]
                zygote.stop()
            busy = any(isinstance(each, _zygote.Busy) for each in made)
            made = [each for each in made if not isinstance(each, Exception)]
            if made or (busy and not failed):
                return made  # all its uids in use: the next round will find some free
        spec = _sandbox.harness_spec(language, policy, limits)
        return [_process.start(_backends.get(policy.backend), spec, harness=True)]

    def _zygote(self, language, policy, limits):
        with self._lock:
            zygote = self._zygotes.get(language)
            if zygote is not None and zygote.alive():
                return zygote
            if language in self.zygote_off:
                if time.monotonic() < self._zygote_retry.get(language, float("inf")):
                    return None
                del self.zygote_off[language]  # a failure some time ago: try a new zygote
        reason = _zygote.unavailable_reason(policy)
        try:
            zygote = None if reason else _zygote.Zygote(language, policy, limits)
        except Exception as exc:
            reason = f"its zygote did not start: {exc}"
        with self._lock:
            if reason:
                self.zygote_off[language] = reason
            elif self._policy == policy and not self._stopping:
                self._zygote_retry.pop(language, None)
                self._zygotes[language] = zygote
                return zygote
        if zygote is not None:
            zygote.stop()
        return None

    def _missing(self):
        return next((language for language, size in self._sizes.items() if len(self._ready[language]) < size), None)


def _warm_limits(policy):
    """The limits warm sandboxes of policy are made with: the policy's own, but
    (native) the cpu rlimit of the longest timeout a request may have, for
    take() to lower, never raise."""
    limits = policy.capped(policy.limits)
    if policy.backend != "native":
        return limits
    return dataclasses.replace(limits, timeout_ms=policy.max_limits.timeout_ms)


def _lower_cpu_limit(running, limits) -> bool:
    """Gives a taken sandbox the request's cpu rlimit (the interpreter itself
    is the sandbox's pid: its cpu budget starts now); False if that failed."""
    try:
        resource.prlimit(running.sandbox.pid, resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    except (OSError, ValueError):  # e.g. ESRCH: it died since _alive(); EPERM: made with a lower limit
        return False
    return True


def _fixed_at_start(limits):
    return (limits.memory_mb, limits.processes, limits.open_files)


def _alive(running) -> bool:
    """Not exited while it waited (its pidfd turns readable at exit)."""
    return not select.select([running.sandbox.pidfd], [], [], 0)[0]


def _discard_later(running) -> None:
    _process.end_later(running)  # the reaper ends it, off the caller's path


POOL = WarmPool()
_configured = False
atexit.register(POOL.stop)  # zygotes, idle sandboxes and their cgroups go with this process


def default_pool() -> WarmPool:
    """The process-wide pool, for the default policy. Unless configure() came
    first, it takes its sizes from JAIL_POOL_PYTHON and JAIL_POOL_JAVASCRIPT
    (default 4 each; 0 turns a language off), and starts a language's warm
    sandboxes when the first request in that language comes."""
    global _configured
    if not _configured:
        _configured = True
        from jail._policy import DEFAULT_POLICY

        sizes = _sizes_from_environment()
        if any(sizes.values()):
            POOL.configure(sizes, DEFAULT_POLICY, on_first_use=True)
    return POOL


def configure(policy=None, **sizes) -> None:
    """jail.warm_pool(python=2, javascript=2): sandboxes of policy kept warm
    for jail.run and run_async in this process; all 0 turns the pool off."""
    global _configured
    from jail._policy import DEFAULT_POLICY

    unknown = sorted(set(sizes) - set(LANGUAGES))
    if unknown:
        raise ValueError(f"warm_pool() takes sizes for {', '.join(LANGUAGES)}, not {', '.join(unknown)}")
    for language, size in sizes.items():
        if type(size) is not int or size < 0:
            raise ValueError(f"warm_pool({language}=...) must be a whole number, not {size!r}")
    _configured = True
    POOL.configure({**dict.fromkeys(LANGUAGES, 0), **sizes}, policy or DEFAULT_POLICY)
