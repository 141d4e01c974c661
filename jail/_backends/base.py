"""The one small interface every backend implements (native, bwrap, nsjail).

A backend turns a SandboxSpec into a running sandbox whose stdio are the four
fds it is given; the host side of the run (jail._process) is the same for all.
"""

import dataclasses
import os
import signal
import threading

import prctl

from jail import _cgroup
from jail._errors import SandboxError


@dataclasses.dataclass
class Finished:
    """What a backend knows after the sandbox is gone."""

    peak_memory: int = None  # bytes, where a cgroup measured it
    oom_killed: bool = False
    cgroup: str = "none"  # "v1", "v2" or "none"
    # A backend whose own process reports "killed by signal n" as exit code base + n.
    signal_exit_base: int = None
    cpu_seconds: float = None  # of every process the sandbox had, where its cgroup accounted them
    cpu_bound: str = "rlimit"  # jail._cgroup.Support.cpu_bound: "quota", "accounting" or "rlimit"

    @classmethod
    def of(cls, cgroup, **extra) -> "Finished":
        """What a dead sandbox's cgroup measured; the cgroup is removed."""
        finished = cls(cgroup=cgroup.mode, peak_memory=cgroup.peak_memory(), oom_killed=cgroup.oom_killed(),
                       cpu_seconds=cgroup.cpu_usage(), cpu_bound=cgroup.cpu_bound, **extra)
        cgroup.remove()
        return finished


def privileged() -> bool:
    """True when the host process may map sandboxes to uids of its choosing."""
    return os.geteuid() == 0 and prctl.cap_effective.setuid and prctl.cap_effective.setgid


class UidPool:
    """Host uids handed to sandboxes that run at the same time, one each, so
    that no sandbox shares a process or signal budget with another."""

    def __init__(self):
        self._lock = threading.Lock()
        self._in_use = set()

    def take(self, first: int, count: int) -> int:
        with self._lock:
            for uid in range(first, first + count):
                if uid not in self._in_use:
                    self._in_use.add(uid)
                    return uid
        raise SandboxError(f"no free sandbox uid in {first}..{first + count - 1}: too many sandboxes at once")

    def take_block(self, first: int, count: int, size: int) -> int:
        """The first of `size` consecutive free uids (a zygote's children's)."""
        with self._lock:
            for start in range(first, first + count - size + 1):
                if not any(uid in self._in_use for uid in range(start, start + size)):
                    self._in_use.update(range(start, start + size))
                    return start
        raise SandboxError(f"no {size} free sandbox uids in a row in {first}..{first + count - 1}")

    def give_back_block(self, start: int, size: int) -> None:
        with self._lock:
            self._in_use.difference_update(range(start, start + size))

    def give_back(self, uid: int) -> None:
        with self._lock:
            self._in_use.discard(uid)


UIDS = UidPool()


class Held:
    """What a sandbox holds on the host while it lives: a host uid of its own
    (root server only) and its cgroup. Released once, by release()."""

    def __init__(self, spec):
        self.uid = UIDS.take(*spec.uid_range) if privileged() else None
        try:
            self.cgroup = _cgroup.SandboxCgroup(spec.memory_bytes, spec.limits.processes)
        except OSError as exc:
            self._give_back_uid()
            raise SandboxError(f"create cgroup: {exc}") from exc

    def _give_back_uid(self):
        if self.uid is not None:
            UIDS.give_back(self.uid)
            self.uid = None

    def release(self, **extra) -> "Finished":
        finished = Finished.of(self.cgroup, **extra)
        self._give_back_uid()
        return finished


class Sandbox:
    """A started sandbox. ``pid`` and ``pidfd`` are the process the host waits
    for; killing it ends everything inside (it is the pid namespace's init, or
    the backend's own monitor of it)."""

    pid: int
    pidfd: int
    cgroup = None  # its jail._cgroup.SandboxCgroup

    def kill(self) -> None:
        """SIGKILL through the pidfd. Where pid is the sandbox's pid 1 (native,
        a zygote's child), its death takes every process inside with it."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # True where pid is the interpreter itself (not a backend's own process):
    # a run may then be answered at its result (jail._process.communicate).
    answers_at_result = False

    def lost_by_host(self):
        """Why this sandbox died of the host's doing (not its snippet's), or
        None: a zygote child dies with its zygote (jail._zygote)."""
        return None

    def usage_now(self):
        """(cpu seconds so far, peak memory bytes or None, cgroup mode, cpu
        bound) of a sandbox that has not been reaped yet: its cgroup's (every
        process it had), else its own process's."""
        cpu = self.cgroup.cpu_usage()
        if cpu is None:  # no cgroup accounting here: the interpreter's own cpu
            try:
                with open(f"/proc/{self.pid}/schedstat") as f:
                    cpu = int(f.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                cpu = 0.0
        peak = self.cgroup.peak_memory()
        if peak is None:  # no cgroup here: the interpreter's own high-water mark
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    peak = int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024
            except (OSError, StopIteration, ValueError):
                peak = None
        return cpu, peak, self.cgroup.mode, self.cgroup.cpu_bound

    def wait(self):
        """Reaps it once it is gone: (wait status, rusage). Closes the pidfd."""
        while True:
            try:
                _, status, usage = os.wait4(self.pid, 0)
                break
            except InterruptedError:
                continue
        os.close(self.pidfd)
        return status, usage

    def finish(self) -> Finished:
        """Releases what the sandbox held (uid, cgroup) once it is reaped."""
        raise NotImplementedError

    def setup_failure(self, stderr: bytes, exit_code) -> str:
        """Why the backend itself failed before the program ran, or None. The
        native launcher reports that from spawn(); a command backend can only
        tell once its process is gone."""
        return None


class Backend:
    name: str

    def unavailable_reason(self):
        """None when the backend can run here, else why not (one sentence)."""
        raise NotImplementedError

    def spawn(self, spec, stdio: tuple) -> Sandbox:
        """Starts a sandbox with stdio[0..3] as its fds 0..3; raises SandboxError."""
        raise NotImplementedError
