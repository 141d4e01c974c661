"""The launcher and the host side of a run: failures name their step, bad
input is refused at the boundary, limits hold, and nothing is left behind."""

import errno
import os
import signal

import pytest

from host import own_cgroups
from jail import _backends, _cgroup, _process, _runtime, _sandbox
from jail._backends import native
from jail._errors import SandboxError
from jail._policy import DEFAULT_POLICY, Limits, Policy


def run_spec(spec, stdin=b"", backend="native"):
    return _process.run_sync(_process.execute(_backends.get(backend), spec, stdin))


def python_spec(code, policy=DEFAULT_POLICY, limits=None, mounts=None):
    spec = _sandbox.build_spec(_runtime.python(), policy, limits or policy.limits, ("-c", code))
    if mounts is not None:
        spec = _sandbox.dataclasses.replace(spec, mounts=mounts)
    return spec


def test_every_step_has_a_name_and_a_message():
    report = native.ffi.new("struct jail_report *")
    spec = python_spec("pass")
    assert len(native.STEPS) == 42  # the launcher's 36 and the zygote's 6
    for step, name in native.STEPS.items():
        report.step, report.err, report.index = step, errno.EPERM, 0
        message = native.describe_failure(report, spec, ["/sys/fs/cgroup/x/cgroup.procs"])
        assert message.endswith("EPERM (Operation not permitted)") or "; " in message, message
        assert f"STEP_{step}" not in message


@pytest.mark.parametrize("backend_name", ["bwrap", "nsjail"])
def test_reference_backends_report_their_own_failures_as_sandbox_errors(backend_name):
    try:
        _backends.get(backend_name)
    except SandboxError as exc:
        pytest.skip(f"not available on this machine: {exc}")
    spec = python_spec("print('never')")
    missing = spec.mounts + (_runtime.Mount("bind", "/opt/missing", "/nonexistent/host/path"),)
    with pytest.raises(SandboxError, match=f"^{backend_name}: "):
        run_spec(_sandbox.dataclasses.replace(spec, mounts=missing), backend=backend_name)


def test_failing_steps_surface_as_sandbox_errors_naming_the_step():
    spec = python_spec("pass")
    missing = spec.mounts + (_runtime.Mount("bind", "/opt/missing", "/nonexistent/host/path"),)
    with pytest.raises(SandboxError, match=r"^open /nonexistent/host/path: ENOENT"):
        run_spec(_sandbox.dataclasses.replace(spec, mounts=missing))
    bad_rlimit = spec.rlimits + ((7, 100, 10),)  # RLIMIT_NOFILE soft above hard
    with pytest.raises(SandboxError, match=r"^rlimit RLIMIT_NOFILE: EINVAL"):
        run_spec(_sandbox.dataclasses.replace(spec, rlimits=bad_rlimit))
    with pytest.raises(SandboxError, match=r"^exec: ENOENT"):
        run_spec(_sandbox.dataclasses.replace(spec, argv=("/opt/python/bin/nope",)))


@pytest.mark.parametrize("target", ["relative/path", "/a/../b", "/a//b", "/a/./b", "/.."])
def test_unsafe_mount_targets_are_refused_before_clone(target):
    spec = python_spec("pass")
    bad = spec.mounts + (_runtime.Mount("bind", target, "/usr"),)
    with pytest.raises(SandboxError, match=r"^config .*: EINVAL"):
        run_spec(_sandbox.dataclasses.replace(spec, mounts=bad))


def test_bad_configs_are_einval_not_crashes():
    child = native.ffi.new("struct jail_child *")
    config = native.ffi.new("struct jail_config *")  # every pointer NULL
    assert native.lib.jail_spawn(config, child) == -1
    assert (child.report.step, child.report.err) == (native.lib.JAIL_STEP_CONFIG, errno.EINVAL)

    keep = native._Keep()
    no_cgroup = type("NoCgroup", (), {"join_files": [], "join_self": False})()
    good = native._config(python_spec("pass"), (-1, -1, -1, -1), "1000 1000 1", "1000 1000 1", 1, no_cgroup, keep)
    for field, value in [("bpf_len", 7), ("n_mounts", native.lib.JAIL_MAX_MOUNTS + 1), ("n_rlimits", -1),
                         ("n_cgroups", 99), ("clone_flags", 0)]:
        saved = getattr(good, field)
        setattr(good, field, value)
        assert native.lib.jail_spawn(good, child) == -1, field
        assert child.report.err == errno.EINVAL, field
        setattr(good, field, saved)


def test_only_stdio_and_the_result_fd_are_open_inside(backend):
    leak = os.open("/dev/null", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(leak, True)
    try:
        out = run_spec(python_spec("import os\n"
                                   "def is_open(fd):\n"
                                   "    try:\n        os.fstat(fd)\n        return True\n"
                                   "    except OSError:\n        return False\n"
                                   "print([fd for fd in range(256) if is_open(fd)])"), backend=backend)
    finally:
        os.close(leak)
    assert out.stdout.splitlines()[-1] == b"[0, 1, 2, 3]"


def test_stdin_is_fed_and_outputs_are_kept_apart(backend):
    out = run_spec(python_spec("import sys, os; data = sys.stdin.read(); print(data.upper()); "
                               "print('err', file=sys.stderr); os.write(3, b'result')"), stdin=b"hello" * 100000,
                   backend=backend)
    assert out.stdout == b"HELLO" * 100000 + b"\n"
    assert out.stderr == b"err\n"
    assert out.result == b"result"
    assert out.stats.exit_code == 0 and out.stats.signal is None


def test_stats_are_measured(backend):
    out = run_spec(python_spec("x = bytearray(50 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
                               "sum(range(3_000_000))"), backend=backend)
    assert out.stats.exit_code == 0
    assert out.stats.cpu_ms > 10
    assert out.stats.wall_ms >= out.stats.cpu_ms * 0.5
    assert out.stats.peak_memory > 50 * 1024 * 1024
    assert out.stats.cgroup == _cgroup.detect().mode


def test_exit_status_and_signal(backend):
    assert run_spec(python_spec("raise SystemExit(7)"), backend=backend).stats.exit_code == 7
    out = run_spec(python_spec("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"), backend=backend)
    # pid 1 of its namespace ignores signals it has no handler for: Python then exits normally
    assert out.stats.exit_code == 0 or out.stats.signal == signal.SIGTERM


def test_wall_clock_limit_kills_the_whole_namespace(backend):
    out = run_spec(python_spec("import os, time\nos.fork()\ntime.sleep(30)", limits=Limits(timeout_ms=500)),
                   backend=backend)
    assert out.timed_out and out.stats.signal == signal.SIGKILL
    assert out.stats.wall_ms < 1500


def test_cpu_limit_backs_up_the_wall_clock(backend):
    limits = Limits(timeout_ms=1000)  # RLIMIT_CPU = 2 s: the wall clock comes first
    out = run_spec(python_spec("while True: pass", limits=limits), backend=backend)
    assert out.timed_out and out.stats.wall_ms < 1500


def test_output_limit(backend):
    out = run_spec(python_spec("import os\nwhile True: os.write(1, b'x' * 65536)",
                               limits=Limits(output_bytes=100_000)), backend=backend)
    assert out.output_exceeded and len(out.stdout) <= 100_000


def test_result_limit(backend):
    out = run_spec(python_spec("import os\nwhile True: os.write(3, b'x' * 65536)", limits=Limits(result_bytes=100_000)),
                   backend=backend)
    assert out.result_exceeded and len(out.result) <= 100_000


def test_memory_limit_python_gets_memory_error(backend):
    out = run_spec(python_spec("x = bytearray(200 * 1024 * 1024)", limits=Limits(memory_mb=64)), backend=backend)
    assert b"MemoryError" in out.stderr


MEMORY_SPLIT_OVER_PROCESSES = """
import os, time
for _ in range(4):
    if os.fork() == 0:
        block = bytearray(50 * 1024 * 1024)  # each child stays under its own 128 MiB address-space rlimit
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(30)
        os._exit(0)
time.sleep(30)
"""


@pytest.mark.needs_root
def test_memory_cgroup_bounds_the_sandbox_where_rlimits_bound_each_process(backend):
    if _cgroup.detect().mode == "none":
        pytest.fail("this machine should have a memory cgroup: " + _cgroup.detect().reason)
    out = run_spec(python_spec(MEMORY_SPLIT_OVER_PROCESSES, limits=Limits(memory_mb=128, timeout_ms=3000)),
                   backend=backend)
    # 4 x 50 MiB asked for: the cgroup's OOM killer took a child, the sandbox stayed within its 128 MiB.
    assert out.oom_killed
    assert out.stats.peak_memory <= 128 * 1024 * 1024


def test_sandbox_hostname_and_scratch_policy(backend):
    out = run_spec(python_spec("import os; print(os.uname().nodename, os.getcwd())", policy=Policy(scratch_mb=1)),
                   backend=backend)
    assert out.stdout == b"sandbox /tmp\n"


def _counts():
    me = os.getpid()
    children = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                children += int(f.read().rsplit(")", 1)[1].split()[1]) == me
        except OSError:
            pass
    cgroups = own_cgroups()
    with open("/proc/self/mounts") as f:
        mounts = len(f.readlines())
    return {"children": children, "fds": len(os.listdir("/proc/self/fd")), "mounts": mounts, "cgroups": cgroups}


@pytest.mark.slow
def test_no_leftovers_after_500_runs(backend):
    spec = python_spec("import os; os.fork(); print(1)")
    run_spec(spec, backend=backend)  # first use creates the parent cgroups and caches
    before = _counts()
    for _ in range(500):
        assert run_spec(spec, backend=backend).stats.exit_code == 0
    assert _counts() == before


def test_spawning_while_other_threads_come_and_go_never_deadlocks():
    """The child of a threaded parent must not take a lock another parent
    thread may have held at clone time (glibc's setxid broadcast did)."""
    import threading

    stop = threading.Event()

    def churn():
        while not stop.is_set():
            thread = threading.Thread(target=lambda: None)
            thread.start()
            thread.join()

    churners = [threading.Thread(target=churn, daemon=True) for _ in range(2)]
    for thread in churners:
        thread.start()
    done = []
    spawner = threading.Thread(target=lambda: done.extend(
        run_spec(python_spec("pass")).stats.exit_code for _ in range(150)), daemon=True)
    spawner.start()
    spawner.join(timeout=90)
    stop.set()
    assert not spawner.is_alive(), f"a spawn hung after {len(done)} runs"
    assert done == [0] * 150


@pytest.mark.needs_root
def test_groups_left_by_a_killed_process_are_swept_on_first_use():
    support = _cgroup.detect()
    if support.mode != "v1":
        pytest.skip(f"this test makes v1 groups by hand; cgroups here: {support.reason}")
    stale = [f"{_cgroup.CGROUP_ROOT}/{c}/{_cgroup.GROUP}/4194999-7" for c in ("memory", "pids")]
    for path in stale:
        os.mkdir(path)
    _cgroup.detect.cache_clear()
    _cgroup.detect()
    assert not any(os.path.exists(path) for path in stale)


def test_a_sandbox_dies_with_the_thread_that_started_it():
    """PR_SET_PDEATHSIG, which the change to the sandbox's uid clears: the
    launcher sets it again after that change."""
    import select
    import threading

    started = {}
    thread = threading.Thread(target=lambda: started.update(
        sandbox=_backends.get("native").spawn(python_spec("import time; time.sleep(30)"), (-1, -1, -1, -1))))
    thread.start()
    thread.join()
    sandbox = started["sandbox"]
    try:
        gone = select.select([sandbox.pidfd], [], [], 10)[0]
    finally:
        sandbox.kill()
        sandbox.wait()
        sandbox.finish()
    assert gone, "the sandbox outlived the thread that started it"
