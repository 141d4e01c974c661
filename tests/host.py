"""What tests look at on the host: the backends it can run, and what sandboxes left on it."""

import os
import sys

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


def sandbox_processes(marker=b"/opt/harness/", uid_range=True):
    """Host pids that belong to sandboxes: a uid of the sandbox range (a root
    server; unless uid_range is False), or a command line carrying marker.
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
        if (uid_range and first <= uid < first + count) or marker in cmdline:
            found.append(int(pid))
    return found
