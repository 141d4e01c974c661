"""Zygotes (jail/_zygote.py, native/zygote.c): failures are clear errors, and
a zygote that dies takes its children along without breaking the pool."""

import dataclasses
import os
import resource
import signal
import time

import pytest

import jail
from host import sandbox_processes
from jail import _pool, _process, _zygote
from jail._errors import SandboxError

pytestmark = pytest.mark.skipif(_zygote.unavailable_reason(jail.DEFAULT_POLICY) is not None,
                                reason=f"not available on this machine: "
                                       f"{_zygote.unavailable_reason(jail.DEFAULT_POLICY)}")


@pytest.fixture
def zygote():
    policy = jail.DEFAULT_POLICY
    made = _zygote.Zygote("python", policy, policy.capped(policy.limits))
    yield made
    _process.settle()
    made.stop()
    made.join(_zygote.EXIT_TIMEOUT)


def test_a_failed_step_of_a_child_is_a_sandbox_error_naming_it(zygote):
    bad = ((resource.RLIMIT_NOFILE, 64, 32),)  # soft above hard: EINVAL in the child
    zygote.child_spec = dataclasses.replace(zygote.child_spec, rlimits=bad)
    with pytest.raises(SandboxError, match=r"zygote child of python: rlimit RLIMIT_NOFILE: EINVAL"):
        zygote.fork()
    assert zygote.alive() and zygote.idle_child_count() == 0  # nothing kept of the failed child


def test_a_child_is_a_fresh_sandbox_of_its_own(zygote):
    first, second = zygote.fork(), zygote.fork()
    try:
        uids = []
        for started in (first, second):
            with open(f"/proc/{started.sandbox.pid}/status") as f:
                uids.append(int(next(line for line in f if line.startswith("Uid:")).split()[1]))
        namespaces = [{name: os.readlink(f"/proc/{s.sandbox.pid}/ns/{name}")
                       for name in ("pid", "mnt", "net", "ipc", "uts", "user", "cgroup")}
                      for s in (first, second)]
        zygote_ns = {name: os.readlink(f"/proc/{zygote.pid}/ns/{name}") for name in namespaces[0]}
    finally:
        first.discard()
        second.discard()
    first_uid, count = jail.DEFAULT_POLICY.uid_range
    assert uids[0] != uids[1] and all(first_uid <= uid < first_uid + count for uid in uids)
    for name in zygote_ns:  # no namespace shared with the other child, nor with the zygote
        assert len({namespaces[0][name], namespaces[1][name], zygote_ns[name]}) == 3, name


def test_a_zygote_that_dies_takes_its_children_and_the_pool_goes_on():
    jail.warm_pool(python=2)
    try:
        deadline = time.monotonic() + 20
        while len(_pool.POOL.idle_pids_of("python")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        children = _pool.POOL.idle_pids_of("python")
        os.kill(_pool.POOL.zygote_pid("python"), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(os.path.exists(f"/proc/{pid}") for pid in children) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in children)  # its death signal took them
        assert jail.run("return 6 * 7").output == 42  # cold, or from a new zygote
    finally:
        jail.warm_pool()
    assert sandbox_processes() == []
