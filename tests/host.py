"""What tests look at on the host: the backends it can run, and what sandboxes left on it."""

import os
import socket
import sys
import time

import pytest

from jail import DEFAULT_POLICY


def available_backend(name):
    """name, or a skip saying why it cannot run here. "zygote" is native's
    zygote children (tests/zygote_probe.py), for the security suite."""
    from jail import _backends, _zygote
    from jail._errors import SandboxError

    if name == "zygote":
        reason = _zygote.unavailable_reason(DEFAULT_POLICY)
        if reason:
            pytest.skip(f"not available on this machine: {reason}")
        return name
    try:
        _backends.get(name)
    except SandboxError as exc:
        pytest.skip(f"not available on this machine: {exc}")
    return name


# Pids whose sandboxes are this test run's: its own, and every server a test
# starts (tests/http/conftest.py adds them). A sandbox's cgroups are named
# after the pid that made them (jail._cgroup), so leftover checks can tell
# ours from those of another run on the same host.
OWNERS = {os.getpid()}


def cgroup_owner(pid):
    """The pid that made the cgroups a process is in, or None (in none of ours)."""
    from jail import _cgroup

    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                path = line.rstrip("\n").split(":", 2)[2]
                _, found, name = path.partition(f"/{_cgroup.GROUP}/")
                if found and name.split("-", 1)[0].isdigit():
                    return int(name.split("-", 1)[0])
    except OSError:
        return GONE
    return None


GONE = -1  # cgroup_owner() of a process that ended meanwhile


def ours(owner) -> bool:
    """Whether sandboxes made by pid owner count as this test run's: it is one
    of OWNERS or a descendant of this process, or it is gone (what a dead
    process left running is a leftover, whoever made it)."""
    pid = owner
    for _ in range(64):
        if pid in OWNERS:
            return True
        parent = parent_of(pid)
        if parent is None:
            return pid == owner  # owner itself is gone
        if parent <= 1:
            return False
        pid = parent
    return False


def made_by_us(pid):
    """Whether a sandbox process is this test run's: by its cgroups' owner, or
    (still setting up, in none yet) by its nearest ancestor in one, or one of
    OWNERS; None if it ended meanwhile. What cannot be told counts as ours."""
    current = pid
    for _ in range(64):
        owner = cgroup_owner(current)
        if owner == GONE:
            return None if current == pid else True
        if owner is not None:
            return ours(owner)
        if current in OWNERS:
            return True
        parent = parent_of(current)
        if parent is None:
            return None if current == pid else True
        if parent <= 1:
            return True
        current = parent
    return True


def parent_of(pid):
    """A process's parent pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def own_cgroups(controllers=("memory", "pids", "cpu", "cpuacct", "")) -> int:
    """How many sandbox cgroups this test run's owners have on the host."""
    from jail import _cgroup

    count = 0
    for controller in controllers:
        parent = f"{_cgroup.CGROUP_ROOT}/{controller}/{_cgroup.GROUP}".replace("//", "/")
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        count += sum(1 for name in names if name.split("-", 1)[0].isdigit()
                     and ours(int(name.split("-", 1)[0])) and os.path.isdir(f"{parent}/{name}"))
    return count


def sandbox_processes(marker=b"/opt/harness/", uid_range=True):
    """Host pids that belong to sandboxes of this test run (OWNERS): a uid of
    the sandbox range (a root server; unless uid_range is False), or a command
    line carrying marker.
    The sandboxes of this process's warm pool (idle, or being started: a uid
    of the pool policy's own range) and the zygotes of tests/zygote_probe.py
    are not leftovers."""
    from jail import _pool, _process

    _process.settle()  # runs answered at their result are ended in the background
    first, count = DEFAULT_POLICY.uid_range
    idle = set(_pool.POOL.idle_pids())
    if "zygote_probe" in sys.modules:
        idle.update(sys.modules["zygote_probe"].zygote_pids())
    pool_policy, pool_uids = _pool.POOL._policy, ()
    if pool_policy is not None and pool_policy.uid_range != (first, count):
        pool_uids = range(pool_policy.uid_range[0], sum(pool_policy.uid_range))
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in idle:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, StopIteration):
            continue
        if uid in pool_uids:
            continue
        mine = made_by_us(int(pid))
        if mine is None:
            continue  # it ended while we looked: not left over
        if not mine:
            continue  # a sandbox of another run's live server on this host, not a leftover of ours
        if (uid_range and first <= uid < first + count) or marker in cmdline:
            found.append(int(pid))
    return found


def wait_until_full(timeout=20):
    """Waits until this process's warm pool holds its size in every language."""
    from jail import _pool

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(_pool.POOL._ready[lang]) >= _pool.POOL.size(lang) for lang in _pool.LANGUAGES):
            return
        time.sleep(0.02)
    pytest.fail(f"the pool did not fill within {timeout} s")


def free_port() -> int:
    """A loopback port no one listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
