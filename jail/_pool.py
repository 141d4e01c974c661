"""Warm, single-use sandboxes: started ahead of demand, each waiting for its one request.

A warm sandbox is a full sandbox (namespaces, limits, seccomp filter) whose
interpreter has already loaded the harness and is blocked reading its request
on stdin. A request takes one, gives it its input and reads it to its end like
any other run; the sandbox is never used again, and the language's refill
thread (one per language: a busy language never starves another) starts a
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
import logging
import os
import resource
import select
import threading
import time

from jail import _backends, _process, _runtime, _sandbox, _supervise, _zygote

LANGUAGES = tuple(_runtime.LANGUAGES)
log = logging.getLogger("jail")


DEFAULT_SIZE = 4  # warm sandboxes per language unless JAIL_POOL_<LANGUAGE> says otherwise
DEFAULT_MAX_SIZE = 16  # what the size may grow to under load, unless JAIL_POOL_MAX says otherwise
# How long a request waits for the next forked sandbox when the pool is empty:
# a fork is ready in milliseconds, and a cold start costs 25-100 ms of cpu that
# a loaded host has least of (it would slow the forks too). Longer than this,
# the zygote is stuck: the request goes cold.
FORK_WAIT = 1.0
GROW_FACTOR = 1.5  # a miss makes the size this much larger (at least one more), up to the maximum
SHRINK_AFTER = 30.0  # seconds without a miss after which an idle pool gives back one sandbox ...
SHRINK_EVERY = 5.0  # ... and one more every this many seconds, down to its configured size
IDLE_CHECK = 0.5  # seconds between looks at a full pool's idle sandboxes (one killed from outside is replaced)
ZYGOTE_RETRY = 5.0  # seconds after a zygote failed before a new one is tried
STALLED = 5.0  # seconds a pool may stay short of its size without making a sandbox before it counts as degraded
STOP_TIMEOUT = 5.0  # seconds stop() waits in all for the refill threads, the reaper and the zygotes


def _max_size_from_environment() -> int:
    text = os.environ.get("JAIL_POOL_MAX", str(DEFAULT_MAX_SIZE))
    try:
        return max(0, int(text))
    except ValueError:
        raise ValueError(f"JAIL_POOL_MAX={text!r} is not a whole number") from None


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
    # Found no warm sandbox ready: served by the next fork (waited) or cold.
    misses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    cold: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # of those, went cold
    wait_seconds: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # summed
    refills: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    refill_seconds: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # summed


class WarmPool:
    def __init__(self):
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ready = {language: collections.deque() for language in LANGUAGES}
        self._sizes = dict.fromkeys(LANGUAGES, 0)  # now: between the configured size and max_size
        self._configured = dict.fromkeys(LANGUAGES, 0)
        self.max_size = DEFAULT_MAX_SIZE
        self._last_miss = {}  # language -> when a request last found it empty
        self._last_shrink = {}
        self._waiters = {language: [] for language in LANGUAGES}  # (loop, future) of requests waiting for a fork
        self._dormant = {}  # language -> size, kept from the first request in that language on
        self._not_before = 0.0  # monotonic time before which refills wait, if the pool is not empty
        self._policy = None
        self._zygotes = {}  # language -> its Zygote for the current policy
        self.zygote_off = {}  # language -> why its warm sandboxes are spawned, not forked
        self._zygote_retry = {}  # language -> when a zygote that failed may be tried again
        self._threads = {}  # language -> its refill thread (one each: a busy language never starves another)
        self._stopping = False
        self._short_since = {}  # language -> when it last went short of its size (while short)
        self._last_made = {}  # language -> when a refill last added sandboxes
        self.stats = PoolStats()
        _supervise.watch("warm pool", self.degraded)

    def configure(self, sizes: dict, policy, on_first_use=False, max_size=None) -> None:
        """Keeps sizes[language] warm sandboxes of policy, more under load (up
        to max_size, where a zygote forks them); 0 everywhere stops the pool.
        ``on_first_use``: a language's sandboxes are started when the first
        request in that language comes (which goes cold), not now."""
        if max_size is not None:
            self.max_size = max_size
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
            self._configured.update({language: int(size) for language, size in sizes.items()})
            for language in sizes:  # a new size: how long it has been short starts again
                self._short_since.pop(language, None)
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
        """(with the lock) Each language's refill thread, unless it runs."""
        self._stopping = False
        for language in LANGUAGES:
            thread = self._threads.get(language)
            if thread is None or not thread.is_alive():
                self._threads[language] = _supervise.start(f"jail-warm-pool-{language}", self._refill,
                                                           args=(language,), stopped=lambda: self._stopping)

    def stop(self, timeout=STOP_TIMEOUT) -> None:
        """Ends the refill threads and the idle sandboxes, and stops the zygotes
        (each ends once its last child, a run in flight, is gone); waits at
        most timeout seconds in all: whatever is left then dies with this
        process (every sandbox's parent-death signal)."""
        deadline = time.monotonic() + timeout
        remaining = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
        with self._lock:
            self._stopping = True
            self._dormant = {}
            self._wake.notify_all()
            threads = list(self._threads.values())
        for thread in threads:
            if thread is not threading.current_thread():
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
        """Its size now: the configured one, or more while the load needs it."""
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
        """take(), but when the pool is empty and a zygote forks its sandboxes,
        wait for the next one (up to FORK_WAIT) rather than go cold: a fork is
        ready in milliseconds, a cold start costs tens of them of the cpu the
        forks need. A miss also makes the pool larger (up to max_size)."""
        running = self.take(language, policy, limits, count_miss=False)
        if running is not None or not self._usable(language, policy, limits):
            return running
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = started + FORK_WAIT
        self._missed(language)
        while running is None and self._forking(language, policy) and time.monotonic() < deadline:
            ready = loop.create_future()
            waiter = (loop, ready)
            with self._lock:
                self._waiters[language].append(waiter)
                self._not_before = 0.0
                self._wake.notify_all()
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            finally:
                with self._lock:
                    if waiter in self._waiters[language]:
                        self._waiters[language].remove(waiter)
            running = self.take(language, policy, limits, count_miss=False)
        with self._lock:
            self.stats.wait_seconds[language] += time.monotonic() - started
            self.stats.cold[language] += running is None
        return running

    def _usable(self, language, policy, limits) -> bool:
        """Whether this pool's sandboxes are made as this request's would be."""
        with self._lock:
            return self._serves(language, policy, limits)

    def _serves(self, language, policy, limits) -> bool:
        """(with the lock) _usable()."""
        return bool(self._sizes.get(language)) and policy == self._policy and _fits(limits, policy)

    def _missed(self, language) -> None:
        """A request found no sandbox ready: count it, and grow the size."""
        with self._lock:
            self.stats.misses[language] += 1
            self._last_miss[language] = time.monotonic()
            size = self._sizes.get(language, 0)
            if size and self._zygotes.get(language) is not None:  # spawned pools keep their size
                self._sizes[language] = max(size, min(self.max_size, max(size + 1, int(size * GROW_FACTOR))))
            self._not_before = 0.0
            self._wake.notify_all()

    def _wake_waiters(self, language) -> None:
        """(with the lock) Requests waiting for a fork look again."""
        for loop, ready in self._waiters[language]:
            loop.call_soon_threadsafe(_resolve, ready)
        self._waiters[language] = []

    def _forking(self, language, policy) -> bool:
        with self._lock:
            zygote = self._zygotes.get(language)
            return policy == self._policy and zygote is not None and zygote.alive()

    def take(self, language, policy, limits, count_miss=True):
        """A warm sandbox made as this request's would be, or None (go cold)."""
        with self._lock:
            if language in self._dormant and policy == self._policy:
                self._sizes[language] = self._configured[language] = self._dormant.pop(language)
                self._start_refill()
            queue = self._ready.get(language)
            usable = queue is not None and self._serves(language, policy, limits)
            running = None
            while usable and queue and running is None:
                candidate = queue.popleft()
                if _alive(candidate):
                    running = candidate
                else:
                    _log_idle_death(language, candidate)
                    _discard_later(candidate)
            if running is not None and policy.backend == "native" and not _lower_cpu_limit(running, limits):
                _discard_later(running)
                running = None
            if running is not None:
                self._short_since.setdefault(language, time.monotonic())
            self.stats.hits[language] += running is not None
            if count_miss and running is None and usable:
                self.stats.misses[language] += 1
                self.stats.cold[language] += 1
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

    def _refill(self, language) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._missing(language):
                    gone = self._shrink_idle(language) + self._dead_idle(language)
                    for running in gone:
                        _process.end_later(running)
                    if not gone:
                        self._wake.wait(IDLE_CHECK)
                if self._stopping:
                    return
                wait = self._not_before - time.monotonic()
                if wait > 0 and self._ready[language]:
                    self._wake.wait(wait)
                    continue
                count = self._sizes[language] - len(self._ready[language])
                policy = self._policy
                self._short_since.setdefault(language, time.monotonic())
            started_at = time.monotonic()
            delivered = []

            def deliver(running, language=language, policy=policy):
                """A new warm sandbox: into the pool at once (a request may be waiting)."""
                with self._lock:
                    if self._stopping or policy != self._policy:
                        stale = True
                    else:
                        stale = False
                        self._ready[language].append(running)
                        self._wake_waiters(language)
                        self._last_made[language] = time.monotonic()
                        if len(self._ready[language]) >= self._sizes.get(language, 0):
                            self._short_since.pop(language, None)
                        self.stats.refills[language] += 1
                        self.stats.refill_seconds[language] += time.monotonic() - started_at
                if stale:
                    _process.end_later(running)
                delivered.append(running)

            try:
                self._make(language, policy, count, deliver)
            except Exception as exc:  # logged and counted; the cold path reports it to callers; do not spin
                _supervise.failed(f"jail-warm-pool-{language}", exc)
                time.sleep(1)
                continue
            if not delivered:
                time.sleep(0.001)

    def _make(self, language, policy, count, deliver) -> None:
        """Up to count warm sandboxes, each given to deliver() once ready:
        forked by the language's zygote where one can serve the policy (all
        asked for at once), else one spawned like a cold one."""
        limits = _warm_limits(policy)
        zygote = self._zygote(language, policy, limits)
        if zygote is not None:
            made = zygote.fork_many(count, deliver)
            failed = [each for each in made if isinstance(each, Exception) and not isinstance(each, _zygote.Busy)]
            if failed:
                with self._lock:
                    if not zygote.died():  # one that died is replaced at once; one that fails alive, later
                        self.zygote_off[language] = f"its zygote failed: {failed[0]}"
                        self._zygote_retry[language] = time.monotonic() + ZYGOTE_RETRY
                    if self._zygotes.get(language) is zygote:
                        del self._zygotes[language]
                zygote.stop()
                if zygote.died():
                    return  # the next round starts a new zygote
            busy = any(isinstance(each, _zygote.Busy) for each in made)
            if len(made) < count or (busy and not failed):
                return  # some were made; or all its uids are in use: the next round will find some free
        spec = _sandbox.harness_spec(language, policy, limits)
        deliver(_process.start(_backends.get(policy.backend), spec, harness=True))

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

    def _dead_idle(self, language) -> list:
        """(with the lock) Idle sandboxes that died while they waited (killed
        from outside), taken out of the pool: their places are made again."""
        queue = self._ready[language]
        dead = [each for each in queue if not _alive(each)]
        for running in dead:
            queue.remove(running)
            _log_idle_death(language, running)
        return dead

    def _shrink_idle(self, language) -> list:
        """(with the lock) A language grown past its configured size, with no
        miss for SHRINK_AFTER seconds, gives back one sandbox every
        SHRINK_EVERY seconds: the ones it gives back (to be ended)."""
        now = time.monotonic()
        size = self._sizes.get(language, 0)
        if (size <= self._configured.get(language, 0) or now - self._last_miss.get(language, 0.0) < SHRINK_AFTER
                or now - self._last_shrink.get(language, 0.0) < SHRINK_EVERY):
            return []
        self._sizes[language] = size - 1
        self._last_shrink[language] = now
        if len(self._ready[language]) > self._sizes[language]:
            return [self._ready[language].pop()]
        return []

    def _missing(self, language) -> bool:
        """(with the lock) Whether language has fewer ready than its size."""
        return len(self._ready[language]) < self._sizes.get(language, 0)


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


def _fits(limits, policy) -> bool:
    """Whether a warm sandbox of policy serves limits: what is fixed at its
    start is the same (the cpu limit only lowers, on the native backend)."""
    return (_fixed_at_start(limits) == _fixed_at_start(policy.capped(policy.limits))
            and (policy.backend == "native" or limits.cpu_seconds == _warm_limits(policy).cpu_seconds))


def _resolve(future) -> None:
    if not future.done():
        future.set_result(None)


def _fixed_at_start(limits):
    return (limits.memory_mb, limits.processes, limits.open_files)


def _alive(running) -> bool:
    """Not exited while it waited (its pidfd turns readable at exit)."""
    return not select.select([running.sandbox.pidfd], [], [], 0)[0]


def _log_idle_death(language, running) -> None:
    log.warning("a warm %s sandbox (pid %s) died while it waited (killed from outside); it is discarded and "
                "replaced", language, running.sandbox.pid)


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
            POOL.configure(sizes, DEFAULT_POLICY, on_first_use=True, max_size=_max_size_from_environment())
    return POOL


def configure(policy=None, *, max_size=None, **sizes) -> None:
    """jail.warm_pool(python=2, javascript=2): sandboxes of policy kept warm
    for jail.run and run_async in this process, more under load (up to
    max_size each, default 16 or JAIL_POOL_MAX); all 0 turns the pool off."""
    global _configured
    from jail._policy import DEFAULT_POLICY

    unknown = sorted(set(sizes) - set(LANGUAGES))
    if unknown:
        raise ValueError(f"warm_pool() takes sizes for {', '.join(LANGUAGES)}, not {', '.join(unknown)}")
    for language, size in sizes.items():
        if type(size) is not int or size < 0:
            raise ValueError(f"warm_pool({language}=...) must be a whole number, not {size!r}")
    if max_size is not None and (type(max_size) is not int or max_size < 0):
        raise ValueError(f"warm_pool(max_size=...) must be a whole number, not {max_size!r}")
    _configured = True
    POOL.configure({**dict.fromkeys(LANGUAGES, 0), **sizes}, policy or DEFAULT_POLICY,
                   max_size=_max_size_from_environment() if max_size is None else max_size)
