"""What the reference backends (bwrap, nsjail) share: each turns a SandboxSpec
into a command line; this module starts it and holds it like the native one.

The command starts through posix_spawn (no Python runs between fork and exec):
``sh -c`` moves itself into the sandbox's cgroups (writing 0 to their
``tasks``/``cgroup.procs``, as the native launcher's child does) and execs the
backend, so everything the backend starts is in the cgroups from its first
instruction. The four stdio fds land on 0..3 through dup2 file actions, and
every other inheritable fd is closed.

Both backends resolve bind sources by path, after their child has taken the
sandbox's uid, which cannot cross /root (mode 0700) where the interpreter may
sit. Such a source is first bound at /mnt/N in a private mount namespace of
the backend's own (util-linux ``unshare`` and ``mount``, as root), and the
backend binds it from there. A backend that cannot mount a noexec tmpfs
(bwrap) gets its scratch folder made there too, noexec, at /mnt/scratch.
"""

import os
import shutil
import signal

from jail._backends.base import Backend, Finished, Held, Sandbox
from jail._errors import SandboxError

# Joins each cgroup file before "--", then execs the rest; a failure exits SETUP_EXIT.
JOIN_CGROUPS = ('while [ "$1" != -- ]; do { echo 0 > "$1"; } 2>/dev/null || { echo "jail: cannot join $1" >&2; '
                'exit 125; }; shift; done; shift; exec "$@"')
SETUP_EXIT = 125
# In the mount namespace unshare made: $1 is "-" or the options of a noexec scratch
# tmpfs to mount at /mnt/scratch; each source before "--" is bound at /mnt/N; then exec.
STAGE = ('fail() { echo "jail: cannot stage $1 at /mnt" >&2; exit 125; }; '
         'mount -t tmpfs -o size=64k,mode=0755 jail-stage /mnt || fail tmpfs; '
         'if [ "$1" != - ]; then mkdir /mnt/scratch && mount -t tmpfs -o "$1,nosuid,nodev,noexec" jail-scratch '
         '/mnt/scratch || fail scratch; fi; shift; n=0; '
         'while [ "$1" != -- ]; do if [ -d "$1" ]; then mkdir "/mnt/$n"; else : > "/mnt/$n"; fi || fail "$1"; '
         'mount --bind "$1" "/mnt/$n" || fail "$1"; n=$((n+1)); shift; done; '
         'shift; exec "$@"')
SCRATCH = "/mnt/scratch"
SIGNAL_EXIT_BASE = 128  # bwrap and nsjail report a child killed by signal n as exit code 128 + n


def _reachable_by_others(path: str) -> bool:
    """Can any uid reach path (every folder on the way searchable by others)?
    A path that is not there is left for the backend itself to report."""
    parts = os.path.realpath(path).split("/")
    folders = ["/".join(parts[:i]) or "/" for i in range(1, len(parts))]
    try:
        return all(os.stat(folder).st_mode & 0o001 for folder in folders)
    except OSError:
        return True


def _inheritable_fds():
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                fds.append(int(name))
        except OSError:  # the listing's own fd, gone by now
            pass
    return fds


class CommandSandbox(Sandbox):
    def __init__(self, pid, pidfd, held, backend):
        self.pid, self.pidfd = pid, pidfd
        self._held, self._cgroup, self._backend = held, held.cgroup, backend
        self.cgroup = held.cgroup  # read by the host side of the run (its cpu budget)

    def setup_failure(self, stderr: bytes, exit_code):
        if exit_code == SETUP_EXIT and stderr.startswith(b"jail: "):
            return stderr.decode(errors="replace").strip()
        return self._backend.setup_failure(stderr, exit_code)

    def kill(self) -> None:
        """Everything in the sandbox's cgroup but the backend's own process,
        which then sees its child die, reaps it and exits: killing it first
        would orphan the sandbox's init to the host's pid 1. Without a cgroup,
        the backend's process (its death takes the sandbox along: bwrap
        --die-with-parent, nsjail's parent-death signal on its child)."""
        for pid in self._cgroup.pids() if self._cgroup.mode != "none" else ():
            if pid == self.pid:
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue  # gone already
            try:
                if self._cgroup.holds(pid):  # still ours, not a recycled pid
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
        if self._cgroup.mode == "none":
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def finish(self) -> Finished:
        return self._held.release(signal_exit_base=SIGNAL_EXIT_BASE)


class CommandBackend(Backend):
    binary: str  # the program to find on PATH
    stages_scratch = False  # True: the scratch tmpfs is made noexec by STAGE, at SCRATCH

    def path(self):
        return shutil.which(self.binary)

    def unavailable_reason(self):
        if self.path() is None:
            return f"needs the {self.binary} binary on PATH"
        if not all(shutil.which(tool) for tool in ("unshare", "mount")):
            return "needs util-linux's unshare and mount on PATH"
        return None

    def command(self, spec, uid, pass_fds, source) -> list:
        """The backend's argv for spec; fds it needs kept open go in pass_fds,
        and source(host path) gives the path to bind a source from."""
        raise NotImplementedError

    def setup_failure(self, stderr: bytes, exit_code):
        """The backend's own failure, told from the program's stderr and exit code."""
        return None

    def spawn(self, spec, stdio: tuple) -> CommandSandbox:
        held = Held(spec)
        uid, cgroup = held.uid, held.cgroup
        pass_fds = []
        try:
            staged = [m.source for m in spec.mounts if m.kind == "bind" and not _reachable_by_others(m.source)]
            scratch = [m.options for m in spec.mounts if m.kind == "tmpfs" and m.noexec and self.stages_scratch]
            argv = ["/bin/sh", "-c", JOIN_CGROUPS, "sh", *cgroup.join_files, "--"]
            if staged or scratch:
                # Unprivileged, the mount namespace needs a user namespace of its own to be made in.
                userns = ["--user", "--map-root-user"] if uid is None and os.geteuid() != 0 else []
                argv += ["unshare", *userns, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", STAGE,
                         "sh", scratch[0] if scratch else "-", *staged, "--"]
            argv += self.command(spec, uid, pass_fds,
                                 lambda path: f"/mnt/{staged.index(path)}" if path in staged else path)
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) if fd >= 0 else (os.POSIX_SPAWN_CLOSE, target)
                       for target, fd in enumerate(stdio)]
            # An fd this process inherited without close-on-exec would reach the sandbox.
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd > 3 and fd not in pass_fds]
            for fd in pass_fds:  # kept across exec at their own numbers
                os.set_inheritable(fd, True)
            pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/local/bin:/usr/bin:/bin"}, file_actions=actions,
                                 setsid=True, setsigdef=(signal.SIGPIPE,))
            pidfd = os.pidfd_open(pid)
        except BaseException as exc:
            held.release()
            if isinstance(exc, OSError):
                raise SandboxError(f"start {self.binary}: {exc}") from exc
            raise
        finally:
            for fd in pass_fds:  # the backend has its own copies now
                os.close(fd)
        return CommandSandbox(pid, pidfd, held, self)
