"""A run's cpu, summed over all its processes, stays within its budget
(DESIGN.md section 2, docs/sandbox.md "The cpu budget"), and stats.cpu_ms
counts every one of them.

RLIMIT_CPU bounds each process only: before the cgroup's cpu quota, a snippet
forking 8 busy loops used 3.6 s of cpu in a 2 s run whose budget is 3 s (2
cores), and stats said 0.4 s. The host measures here what the kernel
accounted to each sandbox's cgroup as it was removed, and samples /proc of
the sandbox's processes (a lower bound that stats must not fall under)."""

import collections
import dataclasses
import os
import threading
import time

import pytest

import jail
from host import available_backend, wait_until_full
from jail import _cgroup, _pool, _process, _zygote
from jail._policy import Limits

CPUS = os.cpu_count() or 1
TIMEOUT_MS = 2000  # a budget of 3 s: two cores unbounded would use 4
BUDGET = Limits(timeout_ms=TIMEOUT_MS).cpu_seconds
# cfs bandwidth is handed out in 5 ms slices per cpu over 100 ms periods, and
# the kill itself takes a few ms of cpu: what the kernel counts may pass a
# bound by that much.
MARGIN = 0.2
TICK = os.sysconf("SC_CLK_TCK")

# Several times the host's cores, within limits.processes (64; Node's threads count).
PYTHON_LOOPS = min(48, 4 * CPUS)
JAVASCRIPT_LOOPS = min(8, 4 * CPUS)
BUSY = {
    "python": ("import os\n"
               "for _ in range(n):\n"
               "    if os.fork() == 0:\n"
               "        while True:\n"
               "            pass\n"
               "while True:\n"
               "    pass\n", PYTHON_LOOPS),
    # No require in a snippet, but process.binding reaches Node's own spawn; the
    # filter allows fork and exec, and /dev/null cannot be opened for writing.
    "javascript": ("const { Process } = process.binding('process_wrap');\n"
                   "for (let i = 0; i < n; i++) {\n"
                   "  const child = new Process();\n"
                   "  child.onexit = () => {};\n"
                   "  const err = child.spawn({file: process.execPath, envPairs: [],\n"
                   "    args: [process.execPath, '--single-threaded', '-e', 'for (;;);'],\n"
                   "    stdio: [{type: 'fd', fd: 2}, {type: 'fd', fd: 2}, {type: 'fd', fd: 2}]});\n"
                   "  if (err) throw new Error('spawn failed: ' + err);\n"
                   "}\n"
                   "for (;;);\n", JAVASCRIPT_LOOPS),
}

# Two children burn 0.25 s of cpu each (their own clocks), the snippet waits for them.
CHILDREN_BURN = """
import os, time
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while time.process_time() < 0.25:
            pass
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
return len(pids)
"""


def accounting():
    support = _cgroup.detect()
    if support.cpu_bound == "rlimit":
        pytest.skip(f"no cgroup cpu accounting on this host: {support.reason}")
    return support


class HostMeter:
    """What the host saw of this process's sandboxes while it was on: the cpu
    the kernel accounted to each cgroup when it was removed, and the cpu of
    their processes sampled from /proc every 10 ms (each process's last
    moments missed: a lower bound). Both keyed by the cgroup's name."""

    def __init__(self, monkeypatch):
        self.removed = {}
        self.sampled = collections.defaultdict(dict)  # group name -> {pid: cpu seconds}
        remove = _cgroup.SandboxCgroup.remove

        def measured_remove(group):
            if group.paths:
                self.removed[group.name] = group.cpu_usage()
            return remove(group)

        monkeypatch.setattr(_cgroup.SandboxCgroup, "remove", measured_remove)
        self._marker = f"/{_cgroup.GROUP}/{os.getpid()}-"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cgroup") as f:
                        line = next((line for line in f if self._marker in line), None)
                    if line is None:
                        continue
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                group = line.rstrip("\n").rsplit("/", 1)[1]
                cpu = (int(fields[11]) + int(fields[12])) / TICK
                seen = self.sampled[group]
                seen[pid] = max(seen.get(pid, 0.0), cpu)
            time.sleep(0.01)

    def stop(self):
        _process.settle()  # runs answered at their result are ended (and their groups removed) just after
        self._stop.set()
        self._thread.join()

    def busiest(self):
        """(group name, cpu accounted, cpu sampled) of the group that used the most."""
        name = max(self.removed, key=lambda group: self.removed[group] or 0.0)
        return name, self.removed[name], sum(self.sampled.get(name, {}).values())

    def processes(self, group) -> int:
        """How many processes the group was seen to hold."""
        return len(self.sampled.get(group, {}))


@pytest.fixture
def meter(monkeypatch):
    meter = HostMeter(monkeypatch)
    yield meter
    meter.stop()


@pytest.fixture(params=["native", "native-warm", "bwrap", "nsjail"])
def where(request):
    """A backend, cold; "native-warm": the default pool's warm sandboxes
    (forked by a zygote where the server is root)."""
    name = available_backend(request.param.split("-")[0])
    if request.param.endswith("-warm"):
        jail.warm_pool(python=1, javascript=1)
        wait_until_full()
        yield request.param
        jail.warm_pool()  # off: idle sandboxes are killed and reaped
    else:
        yield name


def run(where, code, language="python", scope=None, limits=None):
    policy = jail.Policy(backend=where.split("-")[0])
    return jail.run(code, language, scope, limits=limits, policy=policy)


@pytest.mark.parametrize("language", jail.LANGUAGES)
def test_forked_busy_loops_stay_within_the_cpu_budget(where, language, meter):
    support = accounting()
    code, loops = BUSY[language]
    started = time.monotonic()
    with pytest.raises(jail.TimeLimitExceeded) as caught:
        run(where, code, language, {"n": loops}, {"timeout_ms": TIMEOUT_MS})
    wall = time.monotonic() - started
    meter.stop()
    stats = caught.value.stats
    assert stats.warm == where.endswith("-warm")
    assert stats.cpu_bound == support.cpu_bound
    group, used, sampled = meter.busiest()
    print(f"{where} {language}: {loops} loops, {used:.2f} s of cpu in {wall:.2f} s (budget {BUDGET} s), "
          f"stats.cpu_ms {stats.cpu_ms}, sampled {sampled:.2f} s in {meter.processes(group)} processes")
    if where.endswith("-warm") and language == "javascript" and _zygote.unavailable_reason(jail.Policy()) is None:
        pass  # Node's spawn never returns in a zygote child (it uses no cpu, the wall clock ends it)
    else:  # (how much cpu they got depends on what else runs on the host)
        assert meter.processes(group) > loops and sampled > 0, "the busy loops did not run"
    assert used <= BUDGET + MARGIN, f"{used:.2f} s of cpu, over the budget of {BUDGET} s"
    if support.cpu_quota:  # one cpu at most, whatever the host has
        assert used <= wall + MARGIN
    # stats count every process: no less than the host saw of them, no more than the kernel accounted.
    assert sampled - 0.05 <= stats.cpu_ms / 1000 <= used + 0.001


def test_cpu_ms_counts_every_process(where, meter):
    accounting()
    result = run(where, CHILDREN_BURN, limits={"timeout_ms": 10_000})  # ends within a second, on a loaded host too
    meter.stop()
    assert result.output == 2 and result.stats.warm == where.endswith("-warm")
    assert result.stats.cpu_ms >= 500, result.stats  # the children's 0.5 s, the snippet's own on top
    _, used, _ = meter.busiest()
    assert result.stats.cpu_ms / 1000 <= used + 0.001


def test_without_a_quota_accounting_ends_the_run_at_its_budget(monkeypatch, meter):
    """A host whose cgroups account cpu but have no cpu controller (a v2 host
    that delegates memory and pids only): the host ends the run once its
    usage passes the budget, before its wall clock."""
    support = accounting()
    monkeypatch.setattr(_cgroup, "detect", lambda: dataclasses.replace(support, cpu_quota=False, cpu_root=None))
    monkeypatch.setattr(Limits, "cpu_seconds", property(lambda limits: 1))  # a budget of 1 s in a 6 s run
    code, loops = BUSY["python"]
    started = time.monotonic()
    with pytest.raises(jail.TimeLimitExceeded) as caught:
        run("native", code, "python", {"n": loops}, {"timeout_ms": 6000})
    wall = time.monotonic() - started
    meter.stop()
    assert caught.value.stats.cpu_bound == "accounting"
    _, used, _ = meter.busiest()
    assert 1 <= used <= 1 + MARGIN
    assert wall < 5.8, "ended by the wall clock, not by its cpu"


def test_the_watch_looks_when_the_budget_could_first_be_reached():
    class Loop:
        def __init__(self):
            self.delays = []

        def call_later(self, delay, callback):
            self.delays.append(delay)
            return type("Handle", (), {"cancel": lambda handle: None})()

    class Group:
        cpu_bound = "accounting"
        usage = [0.0, 1.0, 2.9, 3.0]

        def cpu_usage(self):
            return self.usage.pop(0)

    loop, over = Loop(), []
    assert _cgroup.CpuWatch.start(loop, type("Quota", (), {"cpu_bound": "quota"})(), 3, over.append) is None
    watch = _cgroup.CpuWatch(loop, Group(), 3, lambda: over.append(True))
    for _ in range(3):
        watch._check()
    assert loop.delays == pytest.approx([3 / CPUS, 2 / CPUS, max(0.1 / CPUS, _cgroup.CpuWatch.CHECK_MIN)])
    assert over == [True]


def test_cpu_groups_are_removed_and_stale_ones_swept():
    support = accounting()
    if support.mode != "v1":
        pytest.skip(f"this test looks at v1 hierarchies; cgroups here: {support.reason}")
    parents = sorted({f"{root}/{_cgroup.GROUP}" for root in (support.cpu_root, support.cpuacct_root) if root})
    mine = f"{os.getpid()}-"

    def groups():
        return [name for parent in parents for name in os.listdir(parent)
                if name.startswith(mine) and os.path.isdir(f"{parent}/{name}")]

    before = groups()
    group = _cgroup.SandboxCgroup(256 << 20, 64)
    assert len(groups()) == len(before) + len(parents)
    if support.cpu_quota:
        with open(f"{support.cpu_root}/{_cgroup.GROUP}/{group.name}/cpu.cfs_quota_us") as f:
            assert int(f.read()) == _cgroup.PERIOD_US  # one cpu
    group.remove()
    run("native", "import os\nos.fork()\nreturn 1")
    _process.settle()
    assert groups() == before
    stale = [f"{parent}/4194999-7" for parent in parents]  # a pid above pid_max: its process is gone
    for path in stale:
        os.mkdir(path)
    _cgroup.detect.cache_clear()
    _cgroup.detect()
    assert not any(os.path.exists(path) for path in stale)


@pytest.mark.parametrize("layout", ["v2", "v2 without cpu", "v1 with cpu,cpuacct"])
def test_groups_of_each_host_layout(layout, tmp_path, monkeypatch):
    """The layouts this machine does not have, on a plain folder standing for
    /sys/fs/cgroup: v2 with and without the cpu controller delegated (cpu.stat
    is there either way), and v1 with cpu and cpuacct mounted together."""
    root = str(tmp_path)
    if layout.startswith("v2"):
        mounts = {root: ("cgroup2", "rw,nosuid")}
        (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids" if layout == "v2" else "memory pids")
    else:
        mounts = {f"{root}/{name}": ("cgroup", f"rw,nosuid,{name}") for name in ("memory", "pids", "cpu,cpuacct")}
    writes = {}
    monkeypatch.setattr(_cgroup, "CGROUP_ROOT", root)
    monkeypatch.setattr(_cgroup, "_mount_types", lambda: mounts)
    monkeypatch.setattr(_cgroup, "_write", lambda path, value: writes.__setitem__(path, str(value)))
    _cgroup.detect.cache_clear()
    try:
        support = _cgroup.detect()
        group = _cgroup.SandboxCgroup(256 << 20, 64)
    finally:
        _cgroup.detect.cache_clear()  # the host's own, next time
    name = group.name
    if layout.startswith("v2"):
        path = f"{root}/{_cgroup.GROUP}/{name}"
        assert group.paths == [path] and group.join_files == [f"{path}/cgroup.procs"]
        assert (tmp_path / _cgroup.GROUP / "cgroup.subtree_control").read_text() == (
            "+cpu" if layout == "v2" else "+memory +pids")  # the last one written
        assert support.cpu_bound == group.cpu_bound == ("quota" if layout == "v2" else "accounting")
        assert writes.get(f"{path}/cpu.max") == ("100000 100000" if layout == "v2" else None)
        usage = f"{path}/cpu.stat"
        with open(usage, "w") as f:
            f.write("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
        assert group.cpu_usage() == 1.5
    else:
        both = f"{root}/cpu,cpuacct/{_cgroup.GROUP}/{name}"
        assert group.paths == [f"{root}/memory/{_cgroup.GROUP}/{name}", f"{root}/pids/{_cgroup.GROUP}/{name}", both]
        assert group.join_files == [f"{path}/tasks" for path in group.paths]
        assert support.cpu_bound == group.cpu_bound == "quota"
        assert writes[f"{both}/cpu.cfs_quota_us"] == str(_cgroup.PERIOD_US)
        usage = f"{both}/cpuacct.usage"
        with open(usage, "w") as f:
            f.write("2500000000\n")
        assert group.cpu_usage() == 2.5
    os.remove(usage)
    made = list(group.paths)
    group.remove()
    assert made and not any(os.path.exists(path) for path in made)
