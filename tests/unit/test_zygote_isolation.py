"""A zygote child shares nothing with its zygote or its siblings but
copy-on-write memory (DESIGN section 2, docs/sandbox.md "What a child shares"):
no open file (the runtime's own event loops included), no random state, no
host path; and a zygote's death is never blamed on a snippet."""

import asyncio
import ctypes
import dataclasses
import os
import signal
import sys
import time

import pytest

import jail
from host import sandbox_processes
from jail import _pool, _process, _zygote

pytestmark = pytest.mark.skipif(_zygote.unavailable_reason(jail.DEFAULT_POLICY) is not None,
                                reason=f"not available on this machine: "
                                       f"{_zygote.unavailable_reason(jail.DEFAULT_POLICY)}")

KCMP_FILE = 0
_libc = ctypes.CDLL(None, use_errno=True)


def same_open_file(pid1, fd1, pid2, fd2) -> bool:
    """kcmp(2): whether two fds of two processes are one open file description."""
    answer = _libc.syscall(312, pid1, pid2, KCMP_FILE, fd1, fd2)  # SYS_kcmp on x86_64
    if answer < 0:
        raise OSError(ctypes.get_errno(), f"kcmp {pid1}:{fd1} {pid2}:{fd2}")
    return answer == 0


def fds_of(pid) -> dict:
    """fd -> what it is (the /proc link: pipe:[ino], anon_inode:[eventfd], /dev/null ...)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            pass
    return found


def wait_for_idle(language, count, timeout=20):
    deadline = time.monotonic() + timeout
    while len(_pool.POOL.idle_pids_of(language)) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"the {language} pool did not fill within {timeout} s")
        time.sleep(0.02)
    return _pool.POOL.idle_pids_of(language)


@pytest.fixture
def warm():
    jail.warm_pool(python=2, javascript=2)
    for language in jail.LANGUAGES:
        wait_for_idle(language, 2)
    yield _pool.POOL
    jail.warm_pool()
    assert sandbox_processes() == []


# -- open files ---------------------------------------------------------------------------

# What a waiting child may hold, besides stdin, stdout, stderr and its private
# result channel: Node's libuv loops (epoll fds, eventfds, signal pipes) and
# /dev/null, each made fresh for it.
PRIVATE_PIPES = {"python": 1, "javascript": 2}  # lone pipe ends above 2 of a waiting child
RUNTIME_KINDS = {"python": set(), "javascript": {"anon_inode:[eventpoll]", "anon_inode:[eventfd]", "pipe", "/dev/null"}}


@pytest.mark.parametrize("language", jail.LANGUAGES)
def test_a_child_holds_no_open_file_of_its_zygote_or_a_sibling(warm, language):
    zygote = warm.zygote_pid(language)
    first, second = wait_for_idle(language, 2)[:2]
    inventory = {pid: fds_of(pid) for pid in (zygote, first, second)}
    for child in (first, second):
        fds = inventory[child]
        assert {0, 1, 2} <= set(fds) and 3 not in fds  # the channel is moved off fd 3 ...
        private = [fd for fd, link in fds.items() if fd > 2 and link.startswith("pipe:")
                   and not any(link == other for other_fd, other in fds.items() if other_fd != fd)]
        # ... to a private pipe end of its own; Node's request and replies too (fd 0 is /dev/null)
        assert len(private) == PRIVATE_PIPES[language], fds
        if language == "javascript":
            assert fds[0] == "/dev/null"
        kinds = {("pipe" if link.startswith("pipe:") else link) for fd, link in fds.items()
                 if fd > 2 and fd not in private}
        assert kinds <= RUNTIME_KINDS[language], fds
        for other in (zygote, first if child == second else second):
            shared = [(fd, other_fd, link) for fd, link in fds.items() for other_fd in inventory[other]
                      if same_open_file(child, fd, other, other_fd)]
            assert shared == [], f"child {child} shares with {other}: {shared}"


def shared_mappings(pid) -> list:
    with open(f"/proc/{pid}/maps") as f:
        return [line.strip() for line in f if line.split()[1][3] == "s"]


def test_no_shared_memory_mapping(warm, tmp_path):
    """A MAP_SHARED page of the zygote would be written through by every child.
    (The check sees one: a process of ours that maps a file shared.)"""
    import mmap

    probe = tmp_path / "probe"
    probe.write_bytes(b"\0" * 4096)
    with open(probe, "r+b") as f, mmap.mmap(f.fileno(), 4096, mmap.MAP_SHARED):
        assert shared_mappings(os.getpid())
    for language in jail.LANGUAGES:
        for pid in [warm.zygote_pid(language), *wait_for_idle(language, 2)]:
            assert shared_mappings(pid) == [], (language, pid)


# Node: every FIFO whose two ends the snippet holds (fstat: one inode on two
# fds) gets 16 zero bytes, which a libuv loop of the zygote would read as a
# signal record {handle: NULL, signum: 0}.
ATTACK_JS = r"""
const fs = process.mainModule.require('fs');
const ends = {};
for (let fd = 3; fd < 64; fd++) {
  let st;
  try { st = fs.fstatSync(fd); } catch (e) { continue; }
  if (st.isFIFO()) (ends[st.ino] = ends[st.ino] || []).push(fd);
}
let written = 0;
for (const fds of Object.values(ends)) {
  if (fds.length !== 2) continue;
  for (const fd of fds) { try { written += fs.writeSync(fd, Buffer.alloc(16)); } catch (e) {} }
}
return written;
"""

# Every fd that is neither a pipe nor a file (eventfds, epoll fds) gets a number.
PLANT_JS = r"""
const fs = process.mainModule.require('fs');
let planted = 0;
for (let fd = 3; fd < 64; fd++) {
  let st;
  try { st = fs.fstatSync(fd); } catch (e) { continue; }
  if (st.isFIFO() || st.isFile() || st.isCharacterDevice()) continue;
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(4242n);
  try { planted += fs.writeSync(fd, n) === 8; } catch (e) {}
}
return planted;
"""

VICTIM_JS = "await new Promise((ok) => setTimeout(ok, 1500)); return 'victim ' + x"


def test_a_snippet_writing_into_the_runtimes_pipes_harms_no_other_run(warm):
    """The finding: this crashed the Node zygote, and the victim beside the
    attacker was told its snippet was killed by signal 9."""
    zygote = warm.zygote_pid("javascript")

    async def both():
        victim = asyncio.ensure_future(jail.run_async(VICTIM_JS, "javascript", {"x": 1}))
        await asyncio.sleep(0.3)  # the victim waits in its timer, in a child of the same zygote
        attacker = await jail.run_async(ATTACK_JS, "javascript")
        return attacker, await victim

    attacker, victim = _process.run_sync(both())
    assert attacker.stats.warm and victim.stats.warm
    assert attacker.output > 0  # it did reach pipes of its own, and wrote into them
    assert victim.output == "victim 1"
    time.sleep(0.5)
    assert warm.zygote_pid("javascript") == zygote and os.path.exists(f"/proc/{zygote}")
    assert jail.run("return 2 + 2", "javascript").output == 4


READ_BACK_JS = r"""
const fs = process.mainModule.require('fs');
const seen = [];
for (let fd = 3; fd < 64; fd++) {
  let st;
  try { st = fs.fstatSync(fd); } catch (e) { continue; }
  if (st.isFIFO() || st.isFile() || st.isCharacterDevice()) continue;
  const n = Buffer.alloc(8);
  try { if (fs.readSync(fd, n) === 8) seen.push(Number(n.readBigUInt64LE())); } catch (e) {}
}
return seen;
"""


def test_a_run_passes_nothing_to_a_later_run_through_the_runtimes_fds(warm):
    """The finding: the tracing loop's eventfd, shared by every child and read by
    nobody, carried a number from one run to the next."""
    planted = jail.run(PLANT_JS, "javascript")
    assert planted.stats.warm and planted.output > 0
    wait_for_idle("javascript", 2)
    later = jail.run(READ_BACK_JS, "javascript")
    assert later.stats.warm
    assert 4242 not in later.output


# -- random state ------------------------------------------------------------------------

RANDOM = {
    "python": "import random, os, uuid, secrets, ssl\n"
              "return [random.random(), random.Random().random(), os.urandom(8).hex(), str(uuid.uuid4()),\n"
              "        secrets.token_hex(8), ssl.RAND_bytes(8).hex()]",
    "javascript": "const vm = process.mainModule.require('vm');\n"
                  "const nodeCrypto = process.mainModule.require('crypto');\n"
                  "return [Math.random(), vm.runInNewContext('Math.random()'),\n"
                  "        new vm.Script('Math.random()').runInContext(vm.createContext({})),\n"
                  "        vm.runInNewContext('Math.random()'), crypto.randomUUID(),\n"
                  "        nodeCrypto.randomBytes(8).toString('hex'), crypto.getRandomValues(new Uint32Array(2)).join()]",
}


@pytest.mark.parametrize("language", jail.LANGUAGES)
def test_every_source_of_randomness_differs_per_child(warm, language):
    draws = []
    for _ in range(3):
        wait_for_idle(language, 2)
        result = jail.run(RANDOM[language], language)
        assert result.stats.warm
        draws.append(result.output)
    for column in zip(*draws):
        assert len(set(column)) == len(column), draws
    if language == "javascript":  # two vm contexts of one run differ too
        assert all(draw[1] != draw[3] for draw in draws), draws


# -- host paths ---------------------------------------------------------------------------

def host_paths() -> list:
    """Where the service is installed and run: its checkout, its virtualenv,
    its working directory."""
    import jail as package

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(package.__file__)))
    return sorted({checkout, sys.prefix, os.getcwd()} - {"/", ""})


def mounted_files(spec):
    for mount in spec.mounts:
        if mount.kind not in ("bind",):
            continue
        if os.path.isfile(mount.source):
            yield mount.source
            continue
        for folder, _, names in os.walk(mount.source):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    yield path


@pytest.mark.parametrize("language", jail.LANGUAGES)
def test_no_file_of_our_own_in_a_sandbox_names_a_host_path(language):
    """Our files mounted into every sandbox (the harness, the fork server)
    name no path of the host; the interpreter's own files are the
    interpreter's (docs/sandbox.md)."""
    from jail import _sandbox

    policy = jail.DEFAULT_POLICY
    limits = policy.capped(policy.limits)
    spec = _sandbox.zygote_spec(language, policy, limits, _zygote.library_path())
    ours = [m for m in spec.mounts if m.target.startswith(("/opt/harness", "/opt/zygote"))]
    assert {m.target for m in ours} >= {"/opt/harness", "/opt/zygote/zygote.so"}
    files = list(mounted_files(dataclasses.replace(spec, mounts=tuple(ours))))
    assert len(files) >= 3
    needles = [path.encode() for path in host_paths()]
    for path in files:
        with open(path, "rb") as f:
            content = f.read()
        named = [needle.decode() for needle in needles if needle in content]
        assert named == [], f"{path} names {named}"


def test_the_host_path_check_finds_a_build_with_debug_info(tmp_path):
    """The check above can fail: a library built the ordinary way (with -g,
    and the interpreter's run path) names the folder it was built in."""
    import subprocess
    import sysconfig

    source = tmp_path / "probe.c"
    source.write_text("int probe(void) { return 1; }\n")
    built = tmp_path / "probe.so"
    ldshared = sysconfig.get_config_var("LDSHARED").split()
    subprocess.run([*ldshared, "-g", "-fPIC", str(source), "-o", str(built)], check=True)
    assert str(tmp_path).encode() in built.read_bytes()


# -- a zygote's death is the service's fault ----------------------------------------------

def test_a_run_in_flight_when_its_zygote_dies_is_a_sandbox_error(warm):
    zygote = warm.zygote_pid("javascript")

    async def victim():
        return await jail.run_async(VICTIM_JS, "javascript", {"x": 1})

    async def kill_zygote_then_wait():
        running = asyncio.ensure_future(victim())
        await asyncio.sleep(0.4)
        os.kill(zygote, signal.SIGKILL)
        return await asyncio.gather(running, return_exceptions=True)

    [outcome] = _process.run_sync(kill_zygote_then_wait())
    assert isinstance(outcome, jail.SandboxError), outcome
    assert "zygote" in str(outcome)
    # Its idle children went with it, and are replaced.
    wait_for_idle("javascript", 2)
    result = jail.run("return 6 * 7", "javascript")
    assert result.output == 42 and result.stats.warm


# -- the runtime's other threads ------------------------------------------------------------

# A full collection in a Node child posts a job to V8's worker threads, which
# the fork did not copy: signalling their condition variable waited for them
# forever (the run hung until its wall clock).
GC_HEAVY_JS = ("let keep = [];\n"
               "for (let i = 0; i < 60; i++) { keep.push(new Array(1e6).fill(i)); if (keep.length > 3) keep.shift(); }\n"
               "return keep.length")


def test_a_full_collection_in_a_node_child_completes(warm):
    result = jail.run(GC_HEAVY_JS, "javascript", limits={"timeout_ms": 4000})
    assert result.stats.warm and result.output == 3


MEMORY_BOMBS = [
    ("javascript", "const a = []; for (;;) a.push(Buffer.alloc(64 << 20, 1))"),
    ("javascript", "const a = []; for (;;) a.push(new Array(1e6).fill(1.5))"),
    ("python", "a = []\nwhile True:\n    a.append(bytearray(64 << 20))"),
]


@pytest.mark.parametrize("language,code", MEMORY_BOMBS)
def test_a_memory_bomb_in_a_warm_sandbox_is_a_memory_error_at_once(warm, language, code):
    started = time.monotonic()
    with pytest.raises(jail.MemoryLimitExceeded) as caught:
        jail.run(code, language, limits={"timeout_ms": 5000})
    assert caught.value.stats.warm
    assert time.monotonic() - started < 2.5  # not the 5 s of its wall clock


def test_a_node_child_can_start_a_process(warm):
    """libuv's signal lock is a pipe holding one byte, made anew by its at-fork
    handler: renewing it again as an empty pipe hung every spawn in a child."""
    code = ("const r = process.mainModule.require('child_process').spawnSync('/opt/node/bin/node', ['-e', '1']);\n"
            "return [r.status, String(r.error)]")
    result = jail.run(code, "javascript", limits={"timeout_ms": 4000})
    assert result.stats.warm and result.output == [0, "undefined"]


def test_a_node_childs_replies_are_not_on_its_stdin(warm):
    """The host's replies to building-block calls come on a private fd (the
    addon's takeStdin), as the result channel does: fd 0 is /dev/null, so a
    snippet can neither read nor steal them."""
    code = ("const fs = process.mainModule.require('fs');\n"
            "const stolen = fs.readSync(0, Buffer.alloc(64));\n"
            "const answer = await get_x();\n"
            "return [fs.fstatSync(0).isCharacterDevice(), stolen, answer]")
    result = jail.run(code, "javascript", functions={"get_x": lambda: 5})
    assert result.stats.warm and result.output == [True, 0, 5]
