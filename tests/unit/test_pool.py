"""The warm pool: single-use sandboxes started ahead of demand."""

import asyncio
import json
import os
import select
import subprocess
import sys
import time

import pytest

import jail
from host import sandbox_processes, wait_until_full
from jail import _cgroup, _pool, _process, _zygote


@pytest.fixture
def warm():
    jail.warm_pool(python=1, javascript=1)
    wait_until_full()
    yield _pool.POOL
    jail.warm_pool()  # off: idle sandboxes are killed and reaped


@pytest.mark.parametrize("language", jail.LANGUAGES)
def test_a_warm_run_is_served_by_a_sandbox_started_before_it(warm, language):
    before = warm.stats.hits[language]
    result = jail.run("return x * 2", language, {"x": 21})
    assert result.output == 42 and result.stats.warm
    assert warm.stats.hits[language] == before + 1
    wait_until_full()  # refilled in the background
    assert jail.run("return 1", language).stats.warm


def test_each_warm_sandbox_serves_one_request(warm):
    used = set()
    for _ in range(3):
        wait_until_full()
        [taken] = warm.idle_pids_of("python")
        assert taken not in used  # never one that already ran a snippet
        result = jail.run("import os\nreturn os.getpid()")
        assert result.stats.warm and result.output == 1  # pid 1 of a namespace of its own
        _process.settle()  # a run answered at its result is reaped just after
        assert not os.path.exists(f"/proc/{taken}")  # gone, and reaped
        used.add(taken)


def test_a_request_unlike_the_warm_sandboxes_goes_cold_at_once(warm):
    result = jail.run("return 1", limits={"memory_mb": 128})  # memory is fixed at start
    assert result.output == 1 and not result.stats.warm
    result = jail.run("return 1", policy=jail.Policy(scratch_mb=1))
    assert not result.stats.warm
    # Host-side limits are the request's own, from the moment it takes the sandbox.
    time.sleep(0.5)
    started = time.monotonic()
    with pytest.raises(jail.TimeLimitExceeded):
        jail.run("while True:\n    pass", limits={"timeout_ms": 700})
    assert 0.6 < time.monotonic() - started < 1.7


def test_an_empty_forked_pool_makes_a_request_wait_for_the_next_fork_and_grows():
    """Faster than the pool refills: a request that finds it empty waits for
    the next fork (milliseconds) instead of starting cold (tens of ms of the
    cpu the forks need), and the pool grows to keep up."""
    jail.warm_pool(python=1, max_size=3)
    try:
        wait_until_full()
        stats = _pool.POOL.stats
        before = (stats.hits["python"], stats.misses["python"], stats.cold["python"])

        async def burst():
            return await asyncio.gather(*(jail.run_async("return 1") for _ in range(6)))

        results = _process.run_sync(burst())
        assert [r.output for r in results] == [1] * 6
        assert all(r.stats.warm for r in results)  # none went cold
        assert stats.cold["python"] == before[2]
        assert stats.misses["python"] > before[1]  # the burst found it empty ...
        assert stats.hits["python"] == before[0] + 6
        assert _pool.POOL.size("python") == 3  # ... and it grew, up to its maximum
    finally:
        jail.warm_pool()


def test_a_grown_pool_shrinks_back_when_idle(monkeypatch):
    monkeypatch.setattr(_pool, "SHRINK_AFTER", 0.2)
    monkeypatch.setattr(_pool, "SHRINK_EVERY", 0.1)
    jail.warm_pool(python=1, max_size=4)
    try:
        wait_until_full()
        async def burst():
            return await asyncio.gather(*(jail.run_async("return 1") for _ in range(4)))

        _process.run_sync(burst())
        assert _pool.POOL.size("python") > 1
        deadline = time.monotonic() + 10
        while (_pool.POOL.size("python") > 1 or len(_pool.POOL.idle_pids_of("python")) > 1) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pool.POOL.size("python") == 1 and len(_pool.POOL.idle_pids_of("python")) == 1
    finally:
        jail.warm_pool()


PLANT = ("import builtins, os, sys, threading, time\nbuiltins.len = lambda x: 42\nsys.modules['planted'] = sys\n"
         "os.environ['PLANTED'] = '1'\nopen('/tmp/planted', 'w').write('x')\nopen('relative', 'w').write('x')\n"
         "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
         "if os.fork() == 0:\n    time.sleep(30)\n    os._exit(0)\n"
         "return 'planted'")
CHECK = ("import os, sys, threading\ntry:\n    os.kill(2, 0)\n    child = True\nexcept ProcessLookupError:\n"
         "    child = False\nreturn [len([1]), 'planted' in sys.modules, 'PLANTED' in os.environ,"
         " os.path.exists('/tmp/planted') or os.path.exists('relative'), threading.active_count(), child]")


def test_warm_or_cold_no_run_sees_what_another_planted():
    scratch = jail.Policy(scratch_mb=4)
    jail.warm_pool(policy=scratch, python=2)
    try:
        wait_until_full()
        planted = jail.run(PLANT, policy=scratch)
        warm_check = jail.run(CHECK, policy=scratch)
        cold_check = jail.run(CHECK, policy=jail.Policy(scratch_mb=4, uid_range=(210_000, 64)))
        assert planted.stats.warm and warm_check.stats.warm and not cold_check.stats.warm
        assert warm_check.output == cold_check.output == [1, False, False, False, 1, False]
    finally:
        jail.warm_pool()


def test_turning_the_pool_off_leaves_no_process():
    jail.warm_pool(python=2, javascript=2)
    wait_until_full()
    assert len(_pool.POOL.idle_pids_of("python") + _pool.POOL.idle_pids_of("javascript")) == 4
    jail.warm_pool()
    assert _pool.POOL.idle_pids() == [] and sandbox_processes() == []


def test_idle_warm_sandboxes_are_small(warm):
    """Resident memory of an idle warm sandbox (the figure is in docs/benchmarks.md)."""
    sizes = {}
    for language, queue in warm._ready.items():
        for running in queue:
            with open(f"/proc/{running.sandbox.pid}/status") as f:
                sizes[language] = int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
    assert set(sizes) == {"python", "javascript"}
    assert sizes["python"] < 24 * 1024 and sizes["javascript"] < 64 * 1024, sizes


def test_bad_pool_sizes_are_refused():
    with pytest.raises(ValueError, match="ruby"):
        jail.warm_pool(ruby=1)
    with pytest.raises(ValueError, match="whole number"):
        jail.warm_pool(python=-1)


DEFAULT_POOL_PROBE = """
import json, time, jail
from jail import _pool
first = jail.run("return 1")                     # the pool starts now, for python only
deadline = time.monotonic() + 20
while len(_pool.POOL.idle_pids_of("python")) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
second = jail.run("return 2")
print(json.dumps([first.stats.warm, second.stats.warm, len(_pool.POOL.idle_pids_of("javascript"))]))
"""


@pytest.mark.parametrize("setting,expected", [(None, [False, True, 0]), ("0", [False, False, 0])])
def test_jail_run_has_a_process_wide_pool_by_default(setting, expected):
    """Started on first use, per language; JAIL_POOL_PYTHON=0 turns it off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAIL_POOL_")}
    if setting is not None:
        env["JAIL_POOL_PYTHON"] = setting
    out = subprocess.run([sys.executable, "-c", DEFAULT_POOL_PROBE], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == expected
    assert sandbox_processes() == []  # nothing of that process's pool outlives it


def test_forked_sandboxes_do_not_share_random_state(warm):
    """A fork copies the zygote's generators: each child must draw its own."""
    codes = {"python": "import random, os\nreturn [random.random(), os.urandom(8).hex()]",
             "javascript": "return [Math.random(), crypto.getRandomValues(new Uint32Array(2)).join()]"}
    for language, code in codes.items():
        first = jail.run(code, language)
        wait_until_full()
        second = jail.run(code, language)
        assert first.stats.warm and second.stats.warm
        assert first.output[0] != second.output[0] and first.output[1] != second.output[1], (first.output, second.output)
        assert 0 <= first.output[0] < 1


NODE_ASYNC = """
const zlib = process.mainModule.require('zlib');
const packed = await new Promise((ok, no) => zlib.gzip('x'.repeat(1000), (e, out) => e ? no(e) : ok(out)));
const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode('abc'));
const wasm = await WebAssembly.compile(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
await new Promise((ok) => setTimeout(ok, 5));
return [zlib.gunzipSync(packed).length, new Uint8Array(digest)[0], wasm instanceof WebAssembly.Module]
"""


def test_node_children_run_asynchronous_apis(warm):
    """A fork copies one thread: what Node runs on helper threads (its thread
    pool, WebAssembly compiles, WebCrypto) must still work in a child."""
    result = jail.run(NODE_ASYNC, "javascript", limits={"timeout_ms": 5000})
    assert result.stats.warm and result.output == [1000, 0xBA, True]


# -- the cpu rlimit of a warm sandbox ---------------------------------------------------------

CPU_LIMIT = "import resource\nreturn list(resource.getrlimit(resource.RLIMIT_CPU))"


@pytest.fixture(params=["forked", "spawned"])
def warm_made(request, monkeypatch):
    """A warm pool of one sandbox per language, forked by zygotes or spawned
    (as where the server is not root)."""
    if request.param == "spawned":
        monkeypatch.setattr(_zygote, "unavailable_reason", lambda policy: "spawned for this test")
    elif _zygote.unavailable_reason(jail.DEFAULT_POLICY):
        pytest.skip(f"no zygotes here: {_zygote.unavailable_reason(jail.DEFAULT_POLICY)}")
    jail.warm_pool(python=1, javascript=1)
    try:
        wait_until_full()
        assert (_pool.POOL._zygotes.get("python") is None) == (request.param == "spawned")
        yield _pool.POOL
    finally:
        jail.warm_pool()
        _pool.POOL.zygote_off.clear()  # the next pool of this policy tries its zygotes again


@pytest.mark.parametrize("timeout_ms", [5000, 10_000, 30_000, 60_000])
def test_a_warm_run_gets_the_cpu_limit_of_its_own_timeout(warm_made, timeout_ms):
    """Warm sandboxes start with the cpu rlimit of the longest timeout (30 s,
    capped) and take lowers it: raising a hard rlimit needs a capability that
    root in a container lacks."""
    wanted = jail.Limits(timeout_ms=min(timeout_ms, 30_000)).cpu_seconds
    result = jail.run(CPU_LIMIT, limits={"timeout_ms": timeout_ms})
    assert result.stats.warm and result.output == [wanted, wanted + 1]
    wait_until_full()
    result = jail.run("return 1", "javascript", limits={"timeout_ms": timeout_ms})
    assert result.stats.warm and result.output == 1


def test_a_warm_busy_loop_still_ends_at_its_timeout(warm_made):
    started = time.monotonic()
    with pytest.raises(jail.TimeLimitExceeded) as caught:
        jail.run("while True:\n    pass", limits={"timeout_ms": 1000})
    assert caught.value.stats.warm and time.monotonic() - started < 2.5


def _leftovers(taken, cgroup_paths) -> list:
    """What a taken sandbox still holds on the host: its process, its cgroup, its uid."""
    sandbox = taken.sandbox
    held = []
    if os.path.exists(f"/proc/{sandbox.pid}"):
        held.append(f"process {sandbox.pid}")
    held += [path for path in cgroup_paths if os.path.exists(path)]
    if isinstance(sandbox, _zygote.ZygoteChild):
        if sandbox.token in sandbox.zygote._children:  # it goes once its uid is free again
            held.append(f"uid {sandbox.uid} of its zygote's block")
    elif sandbox._held.uid is not None:
        held.append(f"uid {sandbox._held.uid}")
    return held + [f"sandbox process {pid}" for pid in sandbox_processes() if _ours(pid)]


def _ours(pid) -> bool:
    """In a cgroup of this process (others may run sandboxes on this host meanwhile)."""
    if _cgroup.detect().mode == "none":
        return True
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f"/{_cgroup.GROUP}/{os.getpid()}-" in f.read()
    except OSError:
        return False


def _fail_prlimit(*args):
    raise PermissionError(1, "Operation not permitted")


def _die_while_idle(taken):
    taken.sandbox.kill()
    select.select([taken.sandbox.pidfd], [], [], 5)


@pytest.mark.parametrize("failure", ["prlimit", "died while idle"])
def test_a_sandbox_taken_but_not_used_is_released(warm_made, monkeypatch, failure):
    [taken] = warm_made._ready["python"]
    cgroup_paths = list(taken.sandbox.cgroup.paths)
    assert cgroup_paths or _cgroup.detect().mode == "none"
    with monkeypatch.context() as patch:
        if failure == "prlimit":
            patch.setattr(_pool.resource, "prlimit", _fail_prlimit)
        else:
            _die_while_idle(taken)
        result = jail.run("return 1", limits={"timeout_ms": 10_000})
    assert result.output == 1
    assert not result.stats.warm or failure == "died while idle"  # cold, or a fork made meanwhile
    deadline = time.monotonic() + 10
    while (left := _leftovers(taken, cgroup_paths)) and time.monotonic() < deadline:
        time.sleep(0.05)  # discarded on a thread of its own; its replacement may be starting
    assert left == []
    wait_until_full()
    assert jail.run("return 1").stats.warm  # the pool goes on


def test_other_backends_serve_warm_only_requests_of_the_cpu_limit_they_started_with():
    """bwrap's sandbox pid is not the interpreter: take cannot change its cpu rlimit."""
    from host import available_backend

    bwrap = jail.Policy(backend=available_backend("bwrap"))
    jail.warm_pool(policy=bwrap, python=1)
    try:
        wait_until_full()
        longer = jail.run(CPU_LIMIT, policy=bwrap, limits={"timeout_ms": 10_000})
        assert not longer.stats.warm and longer.output == [11, 12]
        result = jail.run(CPU_LIMIT, policy=bwrap)
        assert result.stats.warm and result.output == [6, 7]
    finally:
        jail.warm_pool()


def test_a_busy_language_never_starves_the_other_ones_refill():
    """The soak found Python load starving JavaScript's refill (one refill
    thread, Python first): JavaScript requests waited the whole fork wait and
    went cold."""
    jail.warm_pool(python=1, javascript=1, max_size=4)
    try:
        wait_until_full()
        cold_before = dict(_pool.POOL.stats.cold)

        async def steady(language, code, count, clients):
            async def client():
                for _ in range(count // clients):
                    assert (await jail.run_async(code, language)).output == 2
            await asyncio.gather(*(client() for _ in range(clients)))

        async def both():
            await asyncio.gather(steady("python", "return 1 + 1", 600, 4), steady("javascript", "return 1 + 1", 60, 1))

        _process.run_sync(both())
        assert _pool.POOL.stats.cold["javascript"] == cold_before.get("javascript", 0)
        assert _pool.POOL.stats.cold["python"] == cold_before.get("python", 0)
    finally:
        jail.warm_pool()
