"""The host side of one run, the same for every backend.

Feed stdin, read stdout, stderr and the result fd within their byte limits,
enforce the wall clock, kill the sandbox (its whole pid namespace) when done
or over a limit, reap it and release everything: no fd, process, uid or
cgroup outlives the run.
"""

import asyncio
import atexit
import collections
import dataclasses
import os
import signal
import threading
import time

from jail import _backends, _cgroup, _sandbox, _supervise
from jail._errors import SandboxError
from jail._policy import DEFAULT_POLICY

READ_CHUNK = 65536


@dataclasses.dataclass
class Stats:
    backend: str
    wall_ms: float
    cpu_ms: float  # every process of the run (its cgroup's accounting), else its first process's rusage
    peak_memory: int  # bytes (cgroup peak where there is one, else max RSS)
    exit_code: int  # None when killed by a signal, or answered at its result (not waited for)
    signal: int  # None when it exited
    cgroup: str  # "v1", "v2" or "none"
    warm: bool = False  # taken from the warm pool: started before the request came
    # How the run's cpu, summed over its processes, was held to limits.cpu_seconds:
    # "quota" (one cpu at most), "accounting" (ended once over), "rlimit" (per process only).
    cpu_bound: str = "rlimit"
    calls: int = 0  # calls of the run's functions (building blocks)
    call_ms: float = 0.0  # their time on the host, summed (it counts against the wall clock)


@dataclasses.dataclass
class Outcome:
    stdout: bytes
    stderr: bytes
    result: bytes  # what fd 3 received (b"" when nothing)
    stats: Stats
    timed_out: bool = False
    output_exceeded: bool = False  # stdout + stderr over limits.output_bytes
    result_exceeded: bool = False  # fd 3 over limits.result_bytes
    oom_killed: bool = False
    # The harness sent its message and closed stdout, stderr and the channel:
    # the run was answered then, and its exit was not waited for.
    answered_at_result: bool = False
    call_error: object = None  # the ExecutionError a call ended the run with (a call limit, malformed calls)

    @property
    def seccomp_killed(self) -> bool:
        return self.stats.signal == signal.SIGSYS


def stdio_pipes(host_fds: list, child_fds: list) -> None:
    """Four pipes for a sandbox's stdin, stdout, stderr and result fd: the
    host's ends appended to host_fds, the sandbox's to child_fds (as they are
    made, so that a caller can close what exists if one fails)."""
    for direction in ("in", "out", "out", "out"):
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        host, child = (write_fd, read_fd) if direction == "in" else (read_fd, write_fd)
        host_fds.append(host)
        child_fds.append(child)


@dataclasses.dataclass
class Started:
    """A sandbox that runs, with the host ends of its stdin, stdout, stderr and
    result fd, not yet given its input (a warm pool keeps these waiting)."""

    backend: object
    sandbox: object
    host_fds: list
    # The harness moves its result channel off fd 3 where the snippet cannot
    # name it (Python; Node in a zygote child): such a run may be answered at
    # its result. Node's cold harness keeps fd 3 (no dup in Node), so its runs
    # are answered at their exit, which must be 0 (docs/api.md).
    private_channel: bool = False

    def close_fd(self, fd) -> None:
        """Closes one of host_fds now (end() closes the rest)."""
        self.host_fds[self.host_fds.index(fd)] = -1
        os.close(fd)

    def end(self):
        """Kills it (if it still runs), closes its fds, reaps it and releases
        what it held: (wait status, rusage, Finished)."""
        self.sandbox.kill()
        for fd in self.host_fds:
            if fd >= 0:
                os.close(fd)
        self.host_fds = [-1] * len(self.host_fds)
        try:
            status, usage = self.sandbox.wait()
        finally:  # its uid and cgroup go back even if the wait failed
            finished = self.sandbox.finish()
        return status, usage, finished

    def discard(self) -> None:
        """Ends a sandbox that will not be used."""
        self.end()


def start(backend, spec, harness=False) -> Started:
    """Spawns spec on backend (blocking until it has exec'd, a few ms);
    ``harness``: spec runs a language's harness (jail._sandbox.harness_spec)."""
    host_fds, child_fds = [], []
    try:
        stdio_pipes(host_fds, child_fds)
        sandbox = backend.spawn(spec, tuple(child_fds))
    except BaseException:
        for fd in host_fds:
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    return Started(backend, sandbox, host_fds, private_channel=harness and spec.runtime.name == "python")


async def execute(backend, spec, stdin: bytes = b"", on_output=None, harness=False, calls=None) -> Outcome:
    """Runs spec on backend in a fresh sandbox. ``on_output(stream, data)``
    (if given) sees stdout/stderr chunks as they arrive."""
    started = time.monotonic()
    return await communicate(start(backend, spec, harness), spec.limits, stdin, on_output, started, calls=calls)


async def communicate(running: Started, limits, stdin: bytes = b"", on_output=None, started=None,
                      warm=False, calls=None) -> Outcome:
    """Feeds stdin to a started sandbox and reads it to its end within limits;
    the wall clock runs from ``started`` (default: now). ``calls`` (a
    jail._calls.Calls, for a run given functions) then keeps stdin open for
    its replies and reads the calls that come before the result message."""
    loop = asyncio.get_running_loop()
    started = time.monotonic() if started is None else started
    backend, sandbox, host_fds = running.backend, running.sandbox, running.host_fds

    stdin_fd, out_fds = host_fds[0], list(host_fds[1:])
    buffers = {fd: bytearray() for fd in out_fds}
    names = dict(zip(out_fds, ("stdout", "stderr", "result")))
    open_fds = set(out_fds)
    flags = {"timed_out": False, "output_exceeded": False, "result_exceeded": False}
    # Over once pid 1 has exited (then the pipes drain), or, where pid 1 is the
    # interpreter itself, as soon as it has sent its message and closed all its
    # output: its exit (a millisecond of address-space teardown) happens off
    # the caller's path (end_later).
    over = loop.create_future()
    drained = loop.create_future()
    at_result = sandbox.answers_at_result and running.private_channel
    result_fd = out_fds[2]
    pending_stdin = memoryview(stdin)

    def finish(how):
        if not over.done():
            over.set_result(how)

    def over_limit(flag):
        flags[flag] = True
        sandbox.kill()

    def on_readable(fd):
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(fd)
            open_fds.discard(fd)
            if not open_fds and not drained.done():
                drained.set_result(None)
                if at_result and not any(flags.values()) and (
                        buffers[result_fd] if calls is None else calls.tail and calls.error is None):
                    finish("result")
            return
        if flags["output_exceeded"] or flags["result_exceeded"]:
            return  # being killed: what still comes is dropped
        if calls is not None and fd == result_fd:
            calls.feed(data)  # calls, then the message; kills the sandbox itself when they go wrong
            return
        if names[fd] == "result":
            if len(buffers[fd]) + len(data) > limits.result_bytes:
                over_limit("result_exceeded")
                return
        elif len(buffers[out_fds[0]]) + len(buffers[out_fds[1]]) + len(data) > limits.output_bytes:
            over_limit("output_exceeded")
            return
        buffers[fd] += data
        if on_output is not None and names[fd] != "result":
            on_output(names[fd], bytes(data))

    def close_stdin():
        nonlocal stdin_fd
        if stdin_fd >= 0:
            loop.remove_writer(stdin_fd)
            running.close_fd(stdin_fd)
            stdin_fd = -1

    def on_writable():
        nonlocal pending_stdin
        try:
            written = os.write(stdin_fd, pending_stdin[:READ_CHUNK])
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the program does not read its stdin; not an error
            close_stdin()
            return
        pending_stdin = pending_stdin[written:]
        if not pending_stdin:
            close_stdin()

    for fd in host_fds:
        os.set_blocking(fd, False)
    for fd in out_fds:
        loop.add_reader(fd, on_readable, fd)
    if calls is not None:
        calls.start(loop, stdin_fd, stdin, sandbox.kill)
    elif pending_stdin:
        loop.add_writer(stdin_fd, on_writable)
    else:
        close_stdin()
    loop.add_reader(sandbox.pidfd, finish, "exited")
    timer = loop.call_later(limits.timeout_ms / 1000, over_limit, "timed_out")
    cpu_watch = _cgroup.CpuWatch.start(loop, sandbox.cgroup, limits.cpu_seconds, lambda: over_limit("timed_out"))

    how = None
    try:
        how = await over
        if how == "exited":
            # pid 1 is gone, so is everything in its namespace: the pipes are at EOF.
            await asyncio.wait_for(drained, timeout=2)
    except asyncio.TimeoutError:
        raise SandboxError("the sandbox's output pipes stayed open after it exited")
    finally:
        if calls is not None:
            calls.cancel()  # a call never outlives its run
        timer.cancel()
        if cpu_watch is not None:
            cpu_watch.cancel()
        loop.remove_reader(sandbox.pidfd)
        for fd in out_fds:
            loop.remove_reader(fd)
        if stdin_fd >= 0:
            loop.remove_writer(stdin_fd)
        if how == "result":
            cpu_seconds, peak_memory, cgroup, cpu_bound = sandbox.usage_now()
            sandbox.kill()  # now: whatever still runs in there is over; reaping can wait
            end_later(running)
        else:
            status, usage, finished = running.end()

    call_fields = {}
    if calls is not None:
        await calls.settle()
        buffers[result_fd] = calls.tail
        flags["result_exceeded"] = calls.result_exceeded
        call_fields = {"calls": calls.count, "call_ms": round(calls.seconds * 1000, 3)}
    wall_ms = (time.monotonic() - started) * 1000
    if how == "result":
        stats = Stats(backend=getattr(backend, "name", "?"), wall_ms=round(wall_ms, 3),
                      cpu_ms=round(cpu_seconds * 1000, 3), peak_memory=peak_memory, exit_code=None,
                      signal=None, cgroup=cgroup, warm=warm, cpu_bound=cpu_bound, **call_fields)
        return Outcome(stdout=bytes(buffers[out_fds[0]]), stderr=bytes(buffers[out_fds[1]]),
                       result=bytes(buffers[result_fd]), stats=stats, answered_at_result=True,
                       timed_out=cpu_seconds >= limits.cpu_seconds)
    wall_ms = (time.monotonic() - started) * 1000
    cpu_seconds = finished.cpu_seconds if finished.cpu_seconds is not None else usage.ru_utime + usage.ru_stime
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    base = finished.signal_exit_base
    if base and exit_code is not None and base < exit_code <= base + signal.SIGRTMAX:
        exit_code, killed_by = None, exit_code - finished.signal_exit_base
    stats = Stats(
        backend=getattr(backend, "name", "?"),
        wall_ms=round(wall_ms, 3),
        cpu_ms=round(cpu_seconds * 1000, 3),
        peak_memory=finished.peak_memory or usage.ru_maxrss * 1024,
        exit_code=exit_code,
        signal=killed_by,
        cgroup=finished.cgroup,
        warm=warm,
        cpu_bound=finished.cpu_bound,
        **call_fields,
    )
    failure = None if buffers[out_fds[2]] else sandbox.setup_failure(bytes(buffers[out_fds[1]]), exit_code)
    if failure:
        raise SandboxError(failure)
    if killed_by == signal.SIGKILL and not any(flags.values()):
        lost = sandbox.lost_by_host()
        if lost:
            raise SandboxError(lost)
    # Over the cpu budget, summed over all its processes (or pid 1's own, at its rlimit): its time is up.
    if stats.signal == signal.SIGXCPU or cpu_seconds >= limits.cpu_seconds:
        flags["timed_out"] = True
    return Outcome(
        stdout=bytes(buffers[out_fds[0]]),
        stderr=bytes(buffers[out_fds[1]]),
        result=bytes(buffers[out_fds[2]]),
        stats=stats,
        oom_killed=finished.oom_killed,
        call_error=calls.error if calls is not None else None,
        **flags,
    )


# The reaper starts on a sandbox, and the pool on its replacement, this long
# after its run's answer (while the pool has others ready): their work would
# compete with the answer's way out for the GIL and the cpu. Through HTTP, a
# warm Python run's answer came in 2.9 ms without, 2.3 ms with.
SETTLE = 0.003


class _Reaper:
    """Ends sandboxes that answered at their result (kill, reap, release
    their uid and cgroup) on one supervised thread of its own, in order."""

    BEHIND = 2.0  # seconds a sandbox may wait past its due time before the reaper counts as behind

    def __init__(self):
        self._lock = threading.Condition()
        self._queue = collections.deque()  # (due, Started), due times in order
        self._thread = None
        _supervise.watch("reaper", self.behind)

    def end_later(self, running: Started) -> None:
        with self._lock:
            self._queue.append((time.monotonic() + SETTLE, running))
            if self._thread is None or not self._thread.is_alive():
                self._thread = _supervise.start("jail-reaper", self._run)
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                due, running = self._queue[0]
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                running.end()
            except Exception as exc:  # this sandbox's end failed (a broken host): logged, counted, next
                _supervise.failed("jail-reaper", exc)
            finally:
                with self._lock:
                    self._queue.popleft()
                    self._lock.notify_all()

    def behind(self):
        """Why the reaper is degraded (sandboxes waiting long past their due time), or None."""
        with self._lock:
            if not self._queue:
                return None
            late = time.monotonic() - self._queue[0][0]
            count = len(self._queue)
        if late < self.BEHIND:
            return None
        return f"{count} sandboxes wait to be reaped, the oldest {late:.1f} s past its time"

    def settle(self, timeout=10) -> bool:
        """Waits until every sandbox handed over has been ended (at most timeout s)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._queue, timeout)


_reaper = _Reaper()
end_later = _reaper.end_later
settle = _reaper.settle
atexit.register(settle, 2.0)  # bounded: an exit never waits long for a stuck reap


class _ThreadLoop:
    """This thread's private loop, closed when the thread's locals go (its end)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()

    def __del__(self):
        self.loop.close()


_local = threading.local()


def run_sync(coroutine):
    """Runs a coroutine on this thread's own private loop (kept between calls:
    a new loop per run would cost more than the sandbox)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coroutine.close()
        raise RuntimeError("jail.run() was called from a running event loop: use `await jail.run_async()`")
    holder = getattr(_local, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _local.holder = _ThreadLoop()
    return holder.loop.run_until_complete(coroutine)



async def run_program(runtime, program=(), *, policy=None, limits=None, stdin=b"", on_output=None) -> Outcome:
    """Runs one program (the runtime's interpreter with program as its
    arguments) in a fresh sandbox of policy.backend."""
    policy = policy or DEFAULT_POLICY
    spec = _sandbox.build_spec(runtime, policy, policy.capped(limits or policy.limits), tuple(program))
    return await execute(_backends.get(policy.backend), spec, stdin, on_output)
