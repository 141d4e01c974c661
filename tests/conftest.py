"""Fixtures shared by every suite: running programs in a sandbox and, for
comparison, the same program on the host with no sandbox at all."""

import dataclasses
import os
import subprocess
import sys

import pytest

# jail.run keeps a warm pool by default (started on first use). The suites
# choose: their "native" column runs cold, their "native-warm" column on a
# pool of its own (WARM_POLICY); tests/unit/test_pool.py shows the default.
for _language in ("PYTHON", "JAVASCRIPT"):
    os.environ.setdefault(f"JAIL_POOL_{_language}", "0")

from jail import _process, _runtime  # noqa: E402
from jail._policy import DEFAULT_POLICY, Policy


def pytest_report_header(config):
    from jail import _cgroup

    who = "root (sandboxes get their own host uids)" if os.geteuid() == 0 else f"uid {os.geteuid()} (own-uid mapping)"
    return [f"jail: running as {who}; cgroups: {_cgroup.detect().mode} ({_cgroup.detect().reason})"]


@pytest.fixture(params=["native", "bwrap", "nsjail"])
def backend(request):
    """Each backend in turn; one that is not installed here is skipped, saying why."""
    from host import available_backend

    return available_backend(request.param)


# The warm column's policy differs from the default (its own uid range), so the
# pool serves exactly the warm cases, and its idle sandboxes are never taken
# for leftovers of the cold ones.
WARM_POLICY = Policy(backend="native", uid_range=(204_096, 1024))


@pytest.fixture(scope="session")
def warm_pool():
    import jail

    jail.warm_pool(policy=WARM_POLICY, python=2, javascript=2)
    yield
    jail.warm_pool()


@pytest.fixture(params=["native", "native-warm", "bwrap", "nsjail"])
def policy(request):
    """A default policy on each backend, and on native's warm pool: the
    conformance suite runs on all of them."""
    from jail import _backends
    from jail._errors import SandboxError

    name = request.param.split("-")[0]
    try:
        _backends.get(name)
    except SandboxError as exc:
        pytest.skip(f"not available on this machine: {exc}")
    if request.param.endswith("-warm"):
        request.getfixturevalue("warm_pool")
        return WARM_POLICY
    return Policy(backend=name)


@pytest.fixture
def sandbox_python(backend):
    """sandbox_python(code, policy=..., limits=..., stdin=...) -> Outcome of
    `python -c code` in a fresh sandbox of each backend."""

    def run(code, *, policy=DEFAULT_POLICY, limits=None, stdin=b""):
        if backend == "zygote":
            import zygote_probe

            return zygote_probe.run_python(code, policy, limits)
        policy = dataclasses.replace(policy, backend=backend)
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

