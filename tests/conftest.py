"""Fixtures shared by every suite: running programs in a sandbox and, for
comparison, the same program on the host with no sandbox at all."""

import os
import subprocess
import sys

import pytest

from jail import _process, _runtime
from jail._policy import DEFAULT_POLICY


def pytest_report_header(config):
    from jail import _cgroup

    who = "root (sandboxes get their own host uids)" if os.geteuid() == 0 else f"uid {os.geteuid()} (own-uid mapping)"
    return [f"jail: running as {who}; cgroups: {_cgroup.detect().mode} ({_cgroup.detect().reason})"]


@pytest.fixture
def sandbox_python():
    """sandbox_python(code, policy=..., limits=..., stdin=...) -> Outcome of
    `python -c code` in a fresh native sandbox."""

    def run(code, *, policy=DEFAULT_POLICY, limits=None, stdin=b""):
        return _process.run_sync(_process.run_program(_runtime.python(), ("-c", code), policy=policy,
                                                      limits=limits, stdin=stdin))

    return run


@pytest.fixture
def host_python():
    """The same program with no sandbox: proves that a probe works at all."""

    def run(code, *, env=None):
        return subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, env=env, timeout=60)

    return run


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: this run is unprivileged (its own-uid path is what it tests)")
    for item in items:
        if "needs_root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["native"])
def policy(request):
    """A default policy on each backend; the conformance and security suites run on all of them."""
    import jail

    return jail.Policy(backend=request.param)
