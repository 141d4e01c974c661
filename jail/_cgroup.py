"""A cgroup per sandbox for memory, process count and cpu, where the host offers one.

Detection follows nsjail: cgroup v2 when /sys/fs/cgroup is the unified
hierarchy with the memory and pids controllers delegated to us, else v1 when
the memory and pids hierarchies are mounted and writable (as on the project's
own machines), else none (the rlimits still apply, and stats say "none").

Cpu, on top of that (docs/sandbox.md, "The cpu budget"): a quota of one cpu
(v1 ``cpu.cfs_quota_us`` = ``cpu.cfs_period_us``, v2 ``cpu.max``) where the
cpu controller is there, and the group's accounting of every process's cpu
(v1 ``cpuacct.usage``, v2 ``cpu.stat`` usage_usec, which v2 keeps even
without the cpu controller). ``Support.cpu_bound`` says which: "quota" (the
group's processes together never run on more than one cpu), "accounting" (no
quota: the host ends a run once the group's usage passes its budget,
``CpuWatch``) or "rlimit" (no cgroup accounting: RLIMIT_CPU per process only).
"""

import dataclasses
import errno
import functools
import itertools
import os
import time

CGROUP_ROOT = "/sys/fs/cgroup"
GROUP = "snippet-jail"  # our parent group in each hierarchy; left in place, empty

_names = itertools.count()
PERIOD_US = 100_000  # the kernel's default cfs period, which a new group starts with
QUOTA_US = PERIOD_US  # one cpu: the group's processes together run at most one period per period


def _mount_types() -> dict:
    with open("/proc/self/mounts") as mounts:
        return {fields[1]: (fields[2], fields[3]) for fields in (line.split() for line in mounts)}


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def _v1_hierarchy(mounts: dict, controller: str):
    """Where the v1 hierarchy holding controller is mounted under CGROUP_ROOT
    (cpu and cpuacct are often mounted together, as "cpu,cpuacct"), or None."""
    for path, (kind, options) in mounts.items():
        if kind == "cgroup" and path.startswith(f"{CGROUP_ROOT}/") and controller in options.split(","):
            return path
    return None


@dataclasses.dataclass(frozen=True)
class Support:
    mode: str  # "v2", "v1" or "none"
    reason: str  # why this mode (shown by stats and readiness)
    cpu_quota: bool = False  # each group gets a quota of one cpu
    cpu_usage: bool = False  # each group accounts the cpu of all its processes
    # v1: the hierarchies of the cpu and cpuacct controllers (the same one when co-mounted)
    cpu_root: str = None
    cpuacct_root: str = None

    @property
    def cpu_bound(self) -> str:
        """How a run's cpu, summed over its processes, is held to its budget."""
        return "quota" if self.cpu_quota else "accounting" if self.cpu_usage else "rlimit"


@functools.lru_cache(maxsize=None)
def detect() -> Support:
    support = _detect()
    _sweep_stale(support)
    return support


def _sweep_stale(support) -> None:
    """Groups left by a process that was killed before it could remove them
    (named "<pid>-<n>"): removed once that pid is gone and the group is empty.
    Every hierarchy we make groups in is swept (v1: memory, pids, cpu, cpuacct)."""
    parents = {"v1": [f"{CGROUP_ROOT}/memory/{GROUP}", f"{CGROUP_ROOT}/pids/{GROUP}"],
               "v2": [f"{CGROUP_ROOT}/{GROUP}"]}.get(support.mode, [])
    if support.mode == "v1":
        parents += sorted({f"{root}/{GROUP}" for root in (support.cpu_root, support.cpuacct_root) if root})
    for parent in parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            pid = name.split("-", 1)[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}") and os.path.isdir(f"{parent}/{name}"):
                try:
                    os.rmdir(f"{parent}/{name}")
                except OSError:
                    pass  # still holds a process: not stale after all


def _detect() -> Support:
    mounts = _mount_types()
    if mounts.get(CGROUP_ROOT, ("",))[0] == "cgroup2":
        try:
            with open(f"{CGROUP_ROOT}/cgroup.subtree_control") as f:
                delegated = f.read().split()
        except OSError:
            delegated = []
        if {"memory", "pids"} <= set(delegated) and _writable_dir(f"{CGROUP_ROOT}/{GROUP}"):
            _enable_v2_controllers(f"{CGROUP_ROOT}/{GROUP}", "+memory +pids")
            # cpu.stat's usage is kept whether or not the cpu controller is on.
            if "cpu" in delegated and _enable_v2_controllers(f"{CGROUP_ROOT}/{GROUP}", "+cpu"):
                return Support("v2", "cgroup v2 with memory, pids and cpu", cpu_quota=True, cpu_usage=True)
            return Support("v2", "cgroup v2 with memory and pids; no cpu controller delegated: a run's cpu is "
                           "bounded by cpu.stat accounting that ends it", cpu_usage=True)
        return Support("none", "cgroup v2 without memory and pids delegated to this user; "
                       "cpu bounded per process by RLIMIT_CPU only")
    v1 = [f"{CGROUP_ROOT}/{c}" for c in ("memory", "pids")]
    if all(mounts.get(path, ("",))[0] == "cgroup" for path in v1):
        if all(_writable_dir(f"{path}/{GROUP}") for path in v1):
            return _v1_cpu(mounts)
        return Support("none", f"cgroup v1 hierarchies are not writable by uid {os.geteuid()}; "
                       "cpu bounded per process by RLIMIT_CPU only")
    return Support("none", "no memory and pids cgroup controllers mounted; cpu bounded per process by RLIMIT_CPU only")


def _v1_cpu(mounts) -> Support:
    """v1 memory and pids, plus what the host offers for cpu."""
    cpu, cpuacct = _v1_hierarchy(mounts, "cpu"), _v1_hierarchy(mounts, "cpuacct")
    cpu = cpu if cpu and _writable_dir(f"{cpu}/{GROUP}") else None
    cpuacct = cpuacct if cpuacct and _writable_dir(f"{cpuacct}/{GROUP}") else None
    if cpu and cpuacct:
        return Support("v1", "cgroup v1 memory, pids, cpu and cpuacct hierarchies", cpu_quota=True, cpu_usage=True,
                       cpu_root=cpu, cpuacct_root=cpuacct)
    if cpuacct:
        return Support("v1", "cgroup v1 memory, pids and cpuacct hierarchies; no cpu controller: a run's cpu is "
                       "bounded by cpuacct accounting that ends it", cpu_usage=True, cpuacct_root=cpuacct)
    if cpu:
        return Support("v1", "cgroup v1 memory, pids and cpu hierarchies; no cpuacct: cpu_ms is the rusage of "
                       "the sandbox's first process", cpu_quota=True, cpu_root=cpu)
    return Support("v1", "cgroup v1 memory and pids hierarchies; no cpu or cpuacct controller: cpu bounded per "
                   "process by RLIMIT_CPU only")


def _enable_v2_controllers(path: str, controllers: str) -> bool:
    try:
        with open(f"{path}/cgroup.subtree_control", "w") as f:
            f.write(controllers)
    except OSError:
        if controllers != "+cpu":
            raise
        return False  # e.g. a realtime process in the group: run without the quota
    return True


def _write(path: str, value) -> None:
    """One write(2) to a control file (a third of what a text-mode open() costs:
    this is on the warm pool's refill path)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=None)
def _has_memsw() -> bool:
    """v1 swap accounting is on (memory.memsw.* files exist in every group)."""
    return os.path.exists(f"{CGROUP_ROOT}/memory/{GROUP}/memory.memsw.limit_in_bytes")


def _read_int(path: str, default=None):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def _read_key(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


class SandboxCgroup:
    """One sandbox's group(s). ``join_files`` are what the launcher writes to
    put the child in them before it goes on: with v1 the child moves itself
    through ``tasks`` (``join_self``), which skips the kernel's global
    threadgroup lock; a move by another process takes it, and after an idle
    moment that costs an RCU grace period (8 to 14 ms measured here)."""

    def __init__(self, memory_bytes: int, processes: int):
        support = detect()
        self.mode = support.mode
        self.cpu_bound = support.cpu_bound
        self.name = name = f"{os.getpid()}-{next(_names)}"
        self._usage_file = None  # the cpu accounting of the whole group, where there is one
        quota_file = None
        if self.mode == "v2":
            self.paths = [f"{CGROUP_ROOT}/{GROUP}/{name}"]
            self._usage_file = f"{self.paths[0]}/cpu.stat"  # usage_usec, with or without the cpu controller
            quota_file = f"{self.paths[0]}/cpu.max" if support.cpu_quota else None
        elif self.mode == "v1":
            self.paths = [f"{CGROUP_ROOT}/memory/{GROUP}/{name}", f"{CGROUP_ROOT}/pids/{GROUP}/{name}"]
            if support.cpu_quota:
                self.paths.append(f"{support.cpu_root}/{GROUP}/{name}")
                quota_file = f"{self.paths[-1]}/cpu.cfs_quota_us"
            if support.cpu_usage:
                if support.cpuacct_root != support.cpu_root:  # not co-mounted: a group of its own
                    self.paths.append(f"{support.cpuacct_root}/{GROUP}/{name}")
                self._usage_file = f"{self.paths[-1]}/cpuacct.usage"
        else:
            self.paths = []
        made = []
        try:
            for path in self.paths:
                os.mkdir(path)
                made.append(path)
            if self.mode == "v2":
                _write(f"{self.paths[0]}/memory.max", memory_bytes)
                _write(f"{self.paths[0]}/memory.swap.max", 0)
                _write(f"{self.paths[0]}/pids.max", processes)
                if quota_file:
                    _write(quota_file, f"{QUOTA_US} {PERIOD_US}")
            elif self.mode == "v1":
                _write(f"{self.paths[0]}/memory.limit_in_bytes", memory_bytes)
                if _has_memsw():
                    _write(f"{self.paths[0]}/memory.memsw.limit_in_bytes", memory_bytes)
                _write(f"{self.paths[1]}/pids.max", processes)
                if quota_file:  # the period of a new group is the default PERIOD_US
                    _write(quota_file, QUOTA_US)
        except OSError:
            for path in reversed(made):
                os.rmdir(path)
            raise
        self.join_self = self.mode == "v1"
        self.join_files = [f"{path}/{'tasks' if self.join_self else 'cgroup.procs'}" for path in self.paths]

    def cpu_usage(self):
        """Cpu seconds used so far by every process that was ever in the group
        (those gone included), or None where the host does not account it."""
        if self._usage_file is None:
            return None
        try:
            data = _read(self._usage_file)
            if self.mode == "v1":
                return int(data) / 1e9
            return int(data.split(None, 2)[1]) / 1e6  # "usage_usec N" is cpu.stat's first line
        except (OSError, ValueError, IndexError):
            return None

    def peak_memory(self):
        """Peak bytes charged to the group, or None where the kernel does not say."""
        if self.mode == "v1":
            return _read_int(f"{self.paths[0]}/memory.max_usage_in_bytes")
        if self.mode == "v2":
            return _read_int(f"{self.paths[0]}/memory.peak")
        return None

    def oom_killed(self) -> bool:
        if self.mode == "v1":
            return _read_key(f"{self.paths[0]}/memory.oom_control", "oom_kill") > 0
        if self.mode == "v2":
            return _read_key(f"{self.paths[0]}/memory.events", "oom_kill") > 0
        return False

    def pids(self) -> list:
        """The processes in the group now."""
        if not self.paths:
            return []
        with open(self.join_files[0].rsplit("/", 1)[0] + "/cgroup.procs") as f:
            return [int(line) for line in f]

    def holds(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                return any(line.rstrip("\n").endswith(self.name) for line in f)
        except OSError:
            return False

    def remove(self) -> None:
        """Called once the sandbox is dead; its last processes may still be
        on their way out, which rmdir reports as EBUSY for a moment."""
        deadline = time.monotonic() + 5
        for path in self.paths:
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)
        self.paths = []


class CpuWatch:
    """Ends a run whose group has accounting but no cpu quota (``cpu_bound``
    "accounting") once the group's usage reaches its budget. It looks when the
    budget could first be reached with every cpu of the host busy, then again
    as the usage gets closer, so that a run well within its budget is looked
    at once or not at all; the usage can pass the budget by at most CHECK_MIN
    seconds on each cpu, plus the event loop's lateness."""

    CHECK_MIN = 0.01  # seconds between two looks, at the closest

    def __init__(self, loop, cgroup, budget: float, over):
        self._loop, self._cgroup, self._budget, self._over = loop, cgroup, budget, over
        self._cpus = os.cpu_count() or 1
        self._handle = None
        self._check()

    @classmethod
    def start(cls, loop, cgroup, budget: float, over):
        """A watch of cgroup, or None where none is needed (a quota holds the
        run to one cpu, and the wall clock ends it within its budget) or
        possible (no accounting)."""
        if cgroup is None or cgroup.cpu_bound != "accounting":
            return None
        return cls(loop, cgroup, budget, over)

    def _check(self) -> None:
        used = self._cgroup.cpu_usage()
        if used is None:
            return
        if used >= self._budget:
            self._handle = None
            self._over()
            return
        self._handle = self._loop.call_later(max(self.CHECK_MIN, (self._budget - used) / self._cpus), self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
