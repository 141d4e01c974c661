"""Escape attempts against the launcher, each shown to work with no sandbox
(the host run) and then to fail inside it.

Every probe prints ESCAPED when the attack worked; the sandboxed run must not.
These run as root here, and again as an unprivileged user through
test_unprivileged.py.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from host import sandbox_processes

from jail._policy import Limits, Policy

ESCAPED = b"ESCAPED"


def try_(body):
    """Wraps a probe: print ESCAPED when body runs without an exception."""
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    return f"try:\n{indented}\n    print('ESCAPED')\nexcept BaseException as exc:\n    print('blocked', repr(exc))\n"



@pytest.fixture(params=["native", "zygote", "bwrap", "nsjail"])
def backend(request):
    """Each backend, and native's zygote children: every probe runs in each
    (the test's zygotes end with it)."""
    from host import available_backend

    yield available_backend(request.param)
    if request.param == "zygote":
        import zygote_probe

        zygote_probe.stop_all()


@pytest.fixture
def secret_file():
    """A host file the test user can read: the sandbox must not."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "secret.txt")
        with open(path, "w") as f:
            f.write("top secret")
        yield path


def test_reading_a_host_file(sandbox_python, host_python, secret_file):
    probe = try_(f"open({secret_file!r}).read()")
    assert ESCAPED in host_python(probe).stdout
    out = sandbox_python(probe)
    assert ESCAPED not in out.stdout and b"blocked" in out.stdout


@pytest.mark.needs_root
@pytest.mark.parametrize("path", ["/etc/shadow", "/root/.bashrc", "/etc/passwd"])
def test_reading_system_secrets(sandbox_python, host_python, path):
    if not os.path.exists(path):
        pytest.fail(f"{path} should exist on this machine for the probe to mean anything")
    probe = try_(f"open({path!r}, 'rb').read()")
    assert ESCAPED in host_python(probe).stdout
    assert ESCAPED not in sandbox_python(probe).stdout


def test_listing_root_shows_only_the_runtime(sandbox_python):
    out = sandbox_python("import os; print(sorted(os.listdir('/')))")
    assert out.stdout.strip() == b"['dev', 'lib', 'lib64', 'opt', 'usr']"


def test_no_host_path_in_mount_table_or_environment(sandbox_python):
    # No /proc at all: the mount table cannot even be read.
    probe = try_("print(open('/proc/self/mountinfo').read())")
    assert ESCAPED not in sandbox_python(probe).stdout
    out = sandbox_python("import sys, os; print(sys.executable, sys.prefix, os.uname().nodename, sys.path)")
    assert b"/root" not in out.stdout and b".pyenv" not in out.stdout and b"/work" not in out.stdout
    assert os.uname().nodename.encode() not in out.stdout.split()


def test_server_environment_is_not_visible(sandbox_python, host_python, backend):
    marker = "jail-secret-marker-7f3a"
    env = dict(os.environ, JAIL_TEST_SECRET=marker)
    probe = "import os; print(dict(os.environ))"
    assert marker.encode() in host_python(probe, env=env).stdout
    os.environ["JAIL_TEST_SECRET"] = marker
    try:
        out = sandbox_python(probe)
    finally:
        del os.environ["JAIL_TEST_SECRET"]
    assert marker.encode() not in out.stdout
    from jail import _runtime

    expected = dict(_runtime.python().env)
    if backend == "bwrap":
        expected["PWD"] = "/"  # bwrap always sets it (docs/backends.md)
    assert eval(out.stdout) == expected


@pytest.mark.parametrize("path", ["/tmp/x", "/x", "/opt/python/x", "/dev/x"])
def test_writing_a_file_anywhere(sandbox_python, host_python, path):
    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "x")
        assert ESCAPED in host_python(try_(f"open({target!r}, 'w').write('x')")).stdout
        assert os.path.exists(target)
    out = sandbox_python(try_(f"open({path!r}, 'w').write('x')"))
    assert ESCAPED not in out.stdout
    assert b"PermissionError" in out.stdout  # refused by the seccomp filter: a clean EPERM


def test_scratch_folder_is_writable_and_private(sandbox_python):
    out = sandbox_python(try_("open('/tmp/x', 'w').write('x'); print(open('/tmp/x').read())"),
                         policy=Policy(scratch_mb=4))
    assert ESCAPED in out.stdout
    # ... but nothing else is, and the scratch folder is not executable.
    out = sandbox_python(try_("open('/opt/x', 'w')"), policy=Policy(scratch_mb=4))
    assert ESCAPED not in out.stdout
    out = sandbox_python(try_("import os, shutil; shutil.copy('/opt/python/bin/python3', '/tmp/p'); "
                              "os.chmod('/tmp/p', 0o755); os.execv('/tmp/p', ['p', '-c', '1'])"),
                         policy=Policy(scratch_mb=64))
    assert ESCAPED not in out.stdout and b"PermissionError" in out.stdout


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _accepted(server) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_no_network_a_local_listener_receives_nothing(sandbox_python, host_python, listener):
    port = listener.getsockname()[1]
    probe = try_(f"import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=2); s.send(b'hi')")
    assert ESCAPED in host_python(probe).stdout
    time.sleep(0.05)
    assert _accepted(listener)
    out = sandbox_python(probe)
    assert ESCAPED not in out.stdout
    time.sleep(0.2)
    assert not _accepted(listener)


@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET", "AF_VSOCK"])
def test_sockets_other_than_unix_are_refused(sandbox_python, family):
    out = sandbox_python(try_(f"import socket; socket.socket(socket.{family}, socket.SOCK_DGRAM)"))
    assert ESCAPED not in out.stdout and b"PermissionError" in out.stdout


def test_unix_sockets_work(sandbox_python):
    out = sandbox_python("import socket; a, b = socket.socketpair(); a.send(b'ok'); print(b.recv(2))")
    assert out.stdout == b"b'ok'\n"


PTRACE_TRACEME = "import ctypes; assert ctypes.CDLL(None).syscall(101, 0, 0, 0, 0) == 0"
UNSHARE_USER = "import ctypes; assert ctypes.CDLL(None).unshare(0x10000000) == 0"
MOUNT_IN_NEW_NS = (
    "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
    "assert libc.unshare(0x10000000 | 0x00020000) == 0, ctypes.get_errno()\n"
    "assert libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0, ctypes.get_errno()"
)


@pytest.mark.parametrize("probe", [PTRACE_TRACEME, UNSHARE_USER, MOUNT_IN_NEW_NS], ids=["ptrace", "unshare", "mount"])
def test_attack_syscalls_are_killed_by_seccomp(sandbox_python, host_python, probe):
    assert ESCAPED in host_python(try_(probe)).stdout
    out = sandbox_python(try_(probe))
    assert ESCAPED not in out.stdout
    assert out.seccomp_killed and out.stats.signal == signal.SIGSYS


def test_mount_syscall_itself_is_killed(sandbox_python):
    out = sandbox_python("import ctypes; ctypes.CDLL(None).mount(b'none', b'/tmp', b'tmpfs', 0, None); print('ESCAPED')")
    assert out.seccomp_killed and ESCAPED not in out.stdout


def test_clone_with_namespace_flags_is_killed(sandbox_python):
    out = sandbox_python("import ctypes; ctypes.CDLL(None).syscall(56, 0x10000000 | 17, 0, 0, 0, 0); print('ESCAPED')")
    assert out.seccomp_killed


def test_host_proc_is_not_visible(sandbox_python, host_python):
    probe = try_("import os; assert os.listdir('/proc'); open('/proc/1/cmdline').read()")
    assert ESCAPED in host_python(probe).stdout
    assert ESCAPED not in sandbox_python(probe).stdout
    # With a proc of its own, the sandbox sees itself as pid 1 and nothing of the host.
    out = sandbox_python("import os; print(sorted(p for p in os.listdir('/proc') if p.isdigit()), os.getpid())",
                         policy=Policy(proc=True))
    assert out.stdout == b"['1'] 1\n"


FORK_BOMB = """
import os, time
children = 0
for _ in range(10000):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
    except OSError:
        break
print('forked', children)
"""


def test_fork_bomb_is_contained_and_the_host_still_forks(sandbox_python):
    limits = Limits(timeout_ms=3000, processes=32)
    out = sandbox_python(FORK_BOMB, limits=limits)
    forked = int(out.stdout.split()[1])
    assert forked < 32
    assert subprocess.run(["true"]).returncode == 0
    assert sandbox_processes(b"jail-daemon-marker") == []


def test_daemonized_grandchild_is_gone_when_the_run_ends(sandbox_python):
    daemon = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/opt/python/bin/python3', ['python3', '-c', 'import time; time.sleep(60)', 'jail-daemon-marker'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('parent done')\n"
    )
    out = sandbox_python(daemon)
    assert out.stdout == b"parent done\n"
    assert sandbox_processes(b"jail-daemon-marker") == []


def _cmdline(pid) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class _Sleeper:
    """A sandbox started by hand and kept running, to be looked at from the host."""

    count = 0

    def __init__(self, backend):
        from jail import _backends, _runtime, _sandbox
        from jail._policy import DEFAULT_POLICY

        _Sleeper.count += 1
        self.marker = f"jail-sleeper-{os.getpid()}-{_Sleeper.count}"
        code = "import os, time; print(os.getuid(), flush=True); time.sleep(10)"
        self.started = None
        if backend == "zygote":  # a zygote child, its request written
            import zygote_probe

            self.started, request = zygote_probe.fork_python(code, DEFAULT_POLICY, None)
            os.write(self.started.host_fds[0], request)
            self.started.close_fd(self.started.host_fds[0])
            self.inside_uid = int(os.read(self.started.host_fds[1], 100))
            return
        spec = _sandbox.build_spec(_runtime.python(), DEFAULT_POLICY, DEFAULT_POLICY.limits,
                                   ("-c", code, self.marker))
        self.read_fd, write_fd = os.pipe()
        self.sandbox = _backends.get(backend).spawn(spec, (-1, write_fd, -1, -1))
        os.close(write_fd)
        self.inside_uid = int(os.read(self.read_fd, 100))

    def host_uid(self):
        """The host uid of the interpreter itself (under bwrap or nsjail, not
        their own process)."""
        if self.started is not None:
            pid = self.started.sandbox.pid
        else:
            [pid] = [pid for pid in sandbox_processes(self.marker.encode(), uid_range=False)
                     if _cmdline(pid).startswith(b"/opt/python/bin/python3\0")]
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("Uid:")).split()[1])

    def stop(self):
        if self.started is not None:
            self.started.end()
            return
        self.sandbox.kill()
        os.waitpid(self.sandbox.pid, 0)
        os.close(self.sandbox.pidfd)
        os.close(self.read_fd)
        self.sandbox.finish()


def test_uid_on_the_host_is_not_root(backend):
    """Seen from the host, while the sandbox runs: its process's uid."""
    from jail._policy import DEFAULT_POLICY

    sleeper = _Sleeper(backend)
    try:
        host_uid = sleeper.host_uid()
    finally:
        sleeper.stop()
    assert sleeper.inside_uid == 1000
    assert host_uid != 0
    if os.geteuid() == 0:
        first, count = DEFAULT_POLICY.uid_range
        assert first <= host_uid < first + count
    else:
        assert host_uid == os.geteuid()


@pytest.mark.needs_root
def test_concurrent_sandboxes_get_distinct_host_uids(backend):
    sleepers = []
    try:
        for _ in range(3):
            sleepers.append(_Sleeper(backend))
        uids = [s.host_uid() for s in sleepers]
    finally:
        for sleeper in sleepers:
            sleeper.stop()
    assert len(set(uids)) == 3 and 0 not in uids


def test_no_new_privileges_and_no_capabilities(sandbox_python):
    out = sandbox_python("import ctypes; libc = ctypes.CDLL(None)\n"
                         "print(libc.prctl(39, 0, 0, 0, 0))\n"  # PR_GET_NO_NEW_PRIVS
                         "print(libc.prctl(23, 21, 0, 0, 0))\n")  # PR_CAPBSET_READ CAP_SYS_ADMIN
    assert out.stdout == b"1\n0\n"


def test_kill_outside_the_sandbox_reaches_nothing(sandbox_python):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        out = sandbox_python(try_(f"import os; os.kill({victim.pid}, 9)"))
        assert ESCAPED not in out.stdout  # no such pid in the sandbox's namespace
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
