"""A cgroup per sandbox for memory and process count, where the host offers one.

Detection follows nsjail: cgroup v2 when /sys/fs/cgroup is the unified
hierarchy with the memory and pids controllers delegated to us, else v1 when
the memory and pids hierarchies are mounted and writable (as on the project's
own machines), else none (the rlimits still apply, and stats say "none").
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


def _mount_types() -> dict:
    with open("/proc/self/mounts") as mounts:
        return {fields[1]: (fields[2], fields[3]) for fields in (line.split() for line in mounts)}


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


@dataclasses.dataclass(frozen=True)
class Support:
    mode: str  # "v2", "v1" or "none"
    reason: str  # why this mode (shown by stats and readiness)


@functools.lru_cache(maxsize=None)
def detect() -> Support:
    support = _detect()
    _sweep_stale(support.mode)
    return support


def _sweep_stale(mode) -> None:
    """Groups left by a process that was killed before it could remove them
    (named "<pid>-<n>"): removed once that pid is gone and the group is empty."""
    parents = {"v1": [f"{CGROUP_ROOT}/memory/{GROUP}", f"{CGROUP_ROOT}/pids/{GROUP}"],
               "v2": [f"{CGROUP_ROOT}/{GROUP}"]}.get(mode, [])
    for parent in parents:
        for name in os.listdir(parent):
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
            _enable_v2_controllers(f"{CGROUP_ROOT}/{GROUP}")
            return Support("v2", "cgroup v2 with memory and pids")
        return Support("none", "cgroup v2 without memory and pids delegated to this user")
    v1 = [f"{CGROUP_ROOT}/{c}" for c in ("memory", "pids")]
    if all(mounts.get(path, ("",))[0] == "cgroup" for path in v1):
        if all(_writable_dir(f"{path}/{GROUP}") for path in v1):
            return Support("v1", "cgroup v1 memory and pids hierarchies")
        return Support("none", f"cgroup v1 hierarchies are not writable by uid {os.geteuid()}")
    return Support("none", "no memory and pids cgroup controllers mounted")


def _enable_v2_controllers(path: str) -> None:
    with open(f"{path}/cgroup.subtree_control", "w") as f:
        f.write("+memory +pids")


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


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
        self.mode = detect().mode
        self.name = name = f"{os.getpid()}-{next(_names)}"
        if self.mode == "v2":
            self.paths = [f"{CGROUP_ROOT}/{GROUP}/{name}"]
        elif self.mode == "v1":
            self.paths = [f"{CGROUP_ROOT}/memory/{GROUP}/{name}", f"{CGROUP_ROOT}/pids/{GROUP}/{name}"]
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
            elif self.mode == "v1":
                _write(f"{self.paths[0]}/memory.limit_in_bytes", memory_bytes)
                if os.path.exists(f"{self.paths[0]}/memory.memsw.limit_in_bytes"):
                    _write(f"{self.paths[0]}/memory.memsw.limit_in_bytes", memory_bytes)
                _write(f"{self.paths[1]}/pids.max", processes)
        except OSError:
            for path in reversed(made):
                os.rmdir(path)
            raise
        self.join_self = self.mode == "v1"
        self.join_files = [f"{path}/{'tasks' if self.join_self else 'cgroup.procs'}" for path in self.paths]

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
