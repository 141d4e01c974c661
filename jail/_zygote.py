"""Zygotes: one warm interpreter per language that forks every warm sandbox.

Starting an interpreter costs tens of milliseconds of cpu; forking a warm one
costs a fraction of one (the zygote approach of SOCK, USENIX ATC 2018). A
zygote is a base sandbox of the native launcher (its own namespaces, filter
and limits, root of its own user namespace) whose harness has loaded, warmed
up and then runs the fork server of native/zygote.c. For each warm sandbox the
host opens the child's pipes and cgroup and asks for a child. The child
becomes pid 1 of a new pid namespace, with new mount, ipc, uts, net, cgroup
and user namespaces, a fresh /tmp, a uid of its own from the zygote's block,
its own cgroup and rlimits, no capabilities and the language's seccomp filter;
then it waits for its request like any warm sandbox. Two children share no
process, namespace, file or module; what each shares with the zygote is the
copy-on-write memory of an interpreter in which no snippet ever ran.

Zygotes need a root server (the block of uids is mapped from the host's) and
the native backend; elsewhere the pool spawns each warm sandbox.
"""

import collections
import importlib.util
import itertools
import logging
import os
import select
import signal
import socket
import threading
import types

from jail import _backends, _cgroup, _process, _sandbox, _supervise
from jail._backends.base import UIDS, Finished, Sandbox, privileged
from jail._errors import SandboxError

BLOCK_SIZE = 128  # children of one zygote alive at once: each has a uid of its own
START_TIMEOUT = 10  # seconds for a zygote to start, or to answer a fork
EXIT_TIMEOUT = 5  # seconds for a killed child's exit to be reported
INSIDE_ID = 1000  # a child's uid and gid as the snippet sees them (as in a cold sandbox)
DEATHS = collections.Counter()  # language -> zygotes that died (not stopped)
log = logging.getLogger("jail")


def library_path():
    """The built fork server (jail/_zygote_server*.so), or None."""
    spec = importlib.util.find_spec("jail._zygote_server")
    return spec.origin if spec is not None else None


def unavailable_reason(policy):
    """None when zygotes can serve policy here, else why not."""
    if policy.backend != "native":
        return f"zygotes run on the native backend, not {policy.backend}"
    if not privileged():
        return "zygotes map a block of host uids, which only a root server may do"
    if library_path() is None:
        return "the fork server jail._zygote_server is not built: run `make setup`"
    return None


def _host_pid(pidfd) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        return int(next(line for line in f if line.startswith("Pid:")).split()[1])


class Busy(SandboxError):
    """Every uid of the zygote's block is taken (by children still running or
    being reaped): for a moment, not a failure of the zygote."""


class _Held:
    """What a zygote holds on the host: its own uid, a block of uids for its
    children, and its cgroup (the native backend's Held, for a zygote)."""

    def __init__(self, spec):
        first, count = spec.uid_range
        self.block_size = BLOCK_SIZE
        self.block = UIDS.take_block(first, count, BLOCK_SIZE + 1)
        self.uid = self.block + BLOCK_SIZE  # the zygote's own: the block's last
        try:
            self.cgroup = _cgroup.SandboxCgroup(spec.memory_bytes, spec.limits.processes)
        except OSError as exc:
            UIDS.give_back_block(self.block, BLOCK_SIZE + 1)
            raise SandboxError(f"create cgroup: {exc}") from exc

    def release(self) -> Finished:
        finished = Finished.of(self.cgroup)
        UIDS.give_back_block(self.block, BLOCK_SIZE + 1)
        return finished


class ZygoteChild(Sandbox):
    """One forked warm sandbox. The host is not its parent: the zygote reaps it
    and reports its wait status and cpu time."""

    answers_at_result = True  # pid is the interpreter

    def __init__(self, zygote, token, uid, cgroup):
        self.zygote, self.token, self.uid, self.cgroup = zygote, token, uid, cgroup
        self.pid = self.pidfd = None
        self.started = threading.Event()
        self.failure = None  # a FAILED reply
        self.abandoned = False  # its fork took too long: killed once started, released once gone
        self.exited = threading.Event()
        self.status, self.usage = None, None

    def wait(self):
        if not self.exited.wait(EXIT_TIMEOUT) or self.status is None:
            # The zygote is gone (its children die with its pid namespace) or stuck.
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            poller.poll(EXIT_TIMEOUT * 1000)
            self.status, self.usage = signal.SIGKILL, _usage(0, 0)
        os.close(self.pidfd)
        return self.status, self.usage

    def lost_by_host(self):
        if not self.zygote.died():
            return None
        return (f"the {self.zygote.language} zygote that forked this sandbox died while it ran"
                " (the service's fault, not the snippet's): try again")

    def finish(self) -> Finished:
        try:
            finished = Finished.of(self.cgroup)
        finally:
            self.zygote._release(self)
        return finished


def _usage(cpu_us, maxrss_kb):
    return types.SimpleNamespace(ru_utime=cpu_us / 1e6, ru_stime=0.0, ru_maxrss=maxrss_kb)


class Zygote:
    """A language's zygote for one policy and its limits fixed at start.

    One thread per zygote spawns it, reads its replies and, once the zygote is
    stopped and its last child is gone, ends it: the zygote's parent-death
    signal is that thread's, so a fork in flight is never cut short by a stop."""

    def __init__(self, language, policy, limits):
        self.language = language
        self.child_spec = _sandbox.harness_spec(language, policy, limits)
        self.spec = _sandbox.zygote_spec(language, policy, limits, library_path())
        self.scratch_options = next((m.options for m in self.child_spec.mounts
                                     if m.kind == "tmpfs" and m.target == "/tmp"), "")
        self.sandbox = None
        self._lock = threading.Lock()
        self._free_uids = list(range(BLOCK_SIZE, 0, -1))  # 1..BLOCK_SIZE in the zygote's namespace
        self._children = {}  # token -> ZygoteChild, from the request until its exit is reported
        self._tokens = itertools.count(1)
        self._stopping = False
        self._dead = False
        self._log = b""
        self._socket, self._zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ready = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(target=self._serve, name=f"jail-zygote-{language}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error

    @property
    def pid(self):
        return self.sandbox.pid if self.sandbox is not None else None

    def alive(self) -> bool:
        return not self._dead and not self._stopping

    def died(self) -> bool:
        """Whether its process has ended (its children die with it): seen at
        once on its pidfd, before its thread has read the socket's end."""
        if self._dead:
            return True
        sandbox = self.sandbox
        if sandbox is None:
            return False
        try:
            return bool(select.select([sandbox.pidfd], [], [], 0)[0])
        except (OSError, ValueError):  # its pidfd was closed: it was reaped
            return True

    def idle_child_count(self) -> int:
        with self._lock:
            return len(self._children)

    # -- the zygote's own thread --------------------------------------------------------

    def _serve(self) -> None:
        log_read, log_write = os.pipe2(os.O_CLOEXEC)
        held = None
        try:
            held = _Held(self.spec)
            stdio = (self._zygote_end.fileno(), log_write, log_write, log_write)
            self.sandbox = _backends.get("native").spawn_zygote(self.spec, stdio, held)
            self._socket.send(self._setup())
        except BaseException as exc:  # reported to the caller of Zygote()
            self._start_error = exc if isinstance(exc, SandboxError) else SandboxError(f"start a zygote: {exc}")
        finally:
            self._zygote_end.close()
            os.close(log_write)
        if self._start_error is not None:
            if self.sandbox is not None:
                self.sandbox.kill()
                self.sandbox.wait()
                held.release()
            os.close(log_read)
            self._socket.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._read_replies()
        except Exception as exc:  # logged and counted; the zygote ends, and the pool makes a new one
            _supervise.failed(self._thread.name, exc)
        finally:
            try:
                self._end(log_read)
            except Exception as exc:
                _supervise.failed(self._thread.name, exc)

    def _read_replies(self) -> None:
        ffi, lib = _native()
        reply = ffi.new("struct jail_zygote_reply *")
        size = ffi.sizeof("struct jail_zygote_reply")
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._socket, size, 1)
            except OSError:
                data, fds = b"", []
            if len(data) != size:
                for fd in fds:
                    os.close(fd)
                return
            ffi.memmove(reply, data, size)
            with self._lock:
                child = self._children.get(reply.token)
            if child is None:
                for fd in fds:
                    os.close(fd)
                continue
            if reply.kind == lib.JAIL_ZYGOTE_STARTED and fds:
                child.pidfd = fds[0]
                child.pid = _host_pid(child.pidfd)
                if child.abandoned:
                    child.kill()
                child.started.set()
            elif reply.kind == lib.JAIL_ZYGOTE_FAILED:
                child.failure = (reply.step, reply.err, reply.index)
                child.started.set()
            elif reply.kind == lib.JAIL_ZYGOTE_EXITED:
                child.status, child.usage = reply.status, _usage(reply.cpu_us, reply.maxrss_kb)
                child.exited.set()
                if child.abandoned:
                    os.close(child.pidfd)
                    child.finish()

    def _end(self, log_read) -> None:
        """The zygote closed its end (it was stopped, or it died): reap it, let
        waiters go (its children die with it), release what it held."""
        with self._lock:
            self._dead = True
            waiting = list(self._children.values())
        for child in waiting:
            child.started.set()
            child.exited.set()  # with no status: wait() sees the child die with the zygote's pid namespace
            if child.abandoned:
                if child.pidfd is not None:
                    child.wait()
                child.finish()
        self.sandbox.kill()  # it is ending already (it closed its socket): this changes no exit status
        status, _ = self.sandbox.wait()
        try:
            self._log = os.read(log_read, 4096)
        finally:
            os.close(log_read)
        self.sandbox.finish()
        self._socket.close()
        if status != 0:  # it died (a stopped one exits 0): runs in its children were SandboxErrors
            DEATHS[self.language] += 1
            how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exited with code {os.WEXITSTATUS(status)}")
            log.error("the %s zygote (pid %s) died: %s, taking %d children with it%s", self.language,
                      self.sandbox.pid, how, len(waiting),
                      f"; its last words: {self._log.decode('utf-8', 'replace').strip()[-300:]}" if self._log else "")

    # -- asked by the pool ----------------------------------------------------------------

    def fork(self) -> _process.Started:
        """A new warm sandbox, waiting for its request."""
        [started] = self.fork_many(1)
        if isinstance(started, Exception):
            raise started
        return started

    def fork_many(self, count, on_ready=None) -> list:
        """count new warm sandboxes (or, for each that failed, its SandboxError):
        all asked for first, then waited for, so that the zygote forks the next
        while the last sets itself up. ``on_ready(started)`` gets each one as
        soon as it is ready (then it is not in the list)."""
        asked = []
        for _ in range(count):
            try:
                asked.append(self._ask())
            except SandboxError as error:
                asked.append(error)
        made = []
        for each in asked:
            started = each if isinstance(each, Exception) else self._await(*each)
            if on_ready is not None and not isinstance(started, Exception):
                on_ready(started)
            else:
                made.append(started)
        return made

    def _ask(self):
        with self._lock:
            if self._dead or self._stopping:
                raise SandboxError(f"the {self.language} zygote has stopped")
            if not self._free_uids:
                raise Busy(f"the {self.language} zygote has {BLOCK_SIZE} children alive: no uid left")
            uid = self._free_uids.pop()
            token = next(self._tokens)
        host_fds, child_fds, join_fds, child = [], [], [], None
        try:
            cgroup = _cgroup.SandboxCgroup(self.child_spec.memory_bytes, self.child_spec.limits.processes)
            child = ZygoteChild(self, token, uid, cgroup)
            with self._lock:
                self._children[token] = child
            join_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in cgroup.join_files]
            _process.stdio_pipes(host_fds, child_fds)
            socket.send_fds(self._socket, [self._request(token, uid, len(child_fds) + len(join_fds))],
                            child_fds + join_fds)
        except BaseException as exc:
            self._forget(token, uid, child, host_fds)
            if isinstance(exc, OSError):
                raise SandboxError(f"fork a {self.language} sandbox: {exc}") from exc
            raise
        finally:
            for fd in child_fds + join_fds:
                os.close(fd)
        return token, uid, child, host_fds

    def _await(self, token, uid, child, host_fds):
        if child.started.wait(START_TIMEOUT) and child.pidfd is not None:
            return _process.Started(_backends.get("native"), child, host_fds, private_channel=True)
        error = SandboxError(self._why_no_child(child))
        with self._lock:
            late = child.failure is None and not self._dead
            child.abandoned = late
        if late:
            # Not answered in time: it may still start. Its uid and cgroup stay
            # taken until the zygote reports it gone (it is killed on STARTED).
            for fd in host_fds:
                os.close(fd)
        else:
            self._forget(token, uid, child, host_fds)
        return error

    def _forget(self, token, uid, child, host_fds) -> None:
        """A child that never started: its fds, uid and cgroup go back."""
        for fd in host_fds:
            os.close(fd)
        with self._lock:
            self._children.pop(token, None)
            self._free_uids.append(uid)
        if child is not None:
            try:
                child.cgroup.remove()
            except OSError:  # still holds a process: swept once that is gone (jail._cgroup)
                pass

    def _request(self, token, uid, n_fds) -> bytes:
        ffi, _ = _native()
        request = ffi.new("struct jail_zygote_request *")
        request.token, request.uid, request.inside_id, request.n_fds = token, uid, INSIDE_ID, n_fds
        rlimits = self.child_spec.rlimits
        request.n_rlimits = len(rlimits)
        for i, (which, soft, hard) in enumerate(rlimits):
            request.rlimits[i].resource, request.rlimits[i].soft, request.rlimits[i].hard = which, soft, hard
        request.hostname = self.child_spec.hostname.encode()[:63]
        request.scratch_options = (self.scratch_options or "").encode()[:63]
        return bytes(ffi.buffer(request))

    def _setup(self) -> bytes:
        ffi, _ = _native()
        setup = ffi.new("struct jail_zygote_setup *")
        setup.mount_proc = int(any(m.kind == "proc" for m in self.child_spec.mounts))
        return bytes(ffi.buffer(setup)) + self.child_spec.seccomp

    def _why_no_child(self, child) -> str:
        from jail._backends.native import describe_failure

        if child.failure is not None:
            ffi, _ = _native()
            report = ffi.new("struct jail_report *")
            report.step, report.err, report.index = child.failure
            return f"zygote child of {self.language}: {describe_failure(report, self.child_spec)}"
        if self._dead:
            log = self._log.decode("utf-8", "replace").strip()
            return f"the {self.language} zygote exited" + (f": {log[-500:]}" if log else "")
        return f"the {self.language} zygote did not answer within {START_TIMEOUT} s"

    def _release(self, child) -> None:
        """A child is gone and reaped: its uid is free again."""
        with self._lock:
            self._children.pop(child.token, None)
            self._free_uids.append(child.uid)
            last = self._stopping and not self._children
        if last:
            self._shut()

    def stop(self) -> None:
        """No more children; the zygote ends once its last child is gone."""
        with self._lock:
            self._stopping = True
            last = not self._children
        if last:
            self._shut()

    def _shut(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_WR)  # the zygote reads EOF and exits
        except OSError:
            pass

    def join(self, timeout=None) -> None:
        self._thread.join(timeout)


def _native():
    from jail._backends.native import ffi, lib

    return ffi, lib
