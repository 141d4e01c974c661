"""The bwrap backend: the same SandboxSpec through bubblewrap (Debian package).

bwrap maps the sandbox's uid to the uid it runs as, so a root server runs it
as the sandbox's own host uid (setpriv); sources that uid cannot reach come
staged (jail._backends.command). The BPF goes in on an fd (``--seccomp``).

What bwrap cannot do, and how it is covered (docs/backends.md):
- cgroups: the spawning ``sh`` joins the sandbox's cgroups before it execs
  (jail._backends.command); rlimits: util-linux ``prlimit`` before bwrap;
- a noexec tmpfs: the scratch folder is mounted noexec before bwrap runs and
  bound in (the flag is locked, bwrap's user namespace cannot clear it);
- bwrap always sets PWD in the environment.
"""

import os
import resource
import shutil

from jail._backends.command import SCRATCH, CommandBackend
from jail._backends.native import INSIDE_ID

PRLIMIT_NAMES = {
    resource.RLIMIT_CPU: "cpu", resource.RLIMIT_AS: "as", resource.RLIMIT_DATA: "data",
    resource.RLIMIT_NPROC: "nproc", resource.RLIMIT_NOFILE: "nofile", resource.RLIMIT_FSIZE: "fsize",
    resource.RLIMIT_CORE: "core", resource.RLIMIT_MEMLOCK: "memlock",
}


class BwrapBackend(CommandBackend):
    name = "bwrap"
    binary = "bwrap"
    stages_scratch = True  # bwrap has no noexec tmpfs of its own

    def unavailable_reason(self):
        reason = super().unavailable_reason()
        if reason is None and not all(shutil.which(tool) for tool in ("prlimit", "setpriv")):
            reason = "needs util-linux's prlimit and setpriv on PATH"
        return reason

    def command(self, spec, uid, pass_fds, source) -> list:
        argv = []
        if uid is not None:
            argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        argv += ["prlimit", *(f"--{PRLIMIT_NAMES[which]}={soft}:{hard}" for which, soft, hard in spec.rlimits), "--"]
        argv += [self.path(), "--unshare-all", "--uid", str(INSIDE_ID), "--gid", str(INSIDE_ID),
                 "--hostname", spec.hostname, "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                 "--as-pid-1",  # the program is the pid namespace's init, as with native
                 "--clearenv"]
        for name, value in spec.env:
            argv += ["--setenv", name, value]
        for mount in spec.mounts:
            argv += self._mount(mount, source)
        argv += ["--remount-ro", "/", "--chdir", spec.workdir]

        seccomp = os.memfd_create("jail-seccomp", os.MFD_CLOEXEC)
        pass_fds.append(seccomp)
        os.write(seccomp, spec.seccomp)
        os.lseek(seccomp, 0, os.SEEK_SET)
        argv += ["--seccomp", str(seccomp), "--", *spec.argv]
        return argv

    def setup_failure(self, stderr: bytes, exit_code):
        # bwrap reports its own errors on the program's stderr, as "bwrap: ...", and exits 1.
        if exit_code == 1 and stderr.startswith(b"bwrap: "):
            return stderr.decode(errors="replace").splitlines()[0]
        return None

    @staticmethod
    def _mount(mount, source) -> list:
        if mount.kind == "bind":
            return ["--ro-bind", source(mount.source), mount.target]
        if mount.kind == "dev":
            return ["--dev-bind", mount.source, mount.target]
        if mount.kind == "symlink":
            return ["--symlink", mount.source, mount.target]
        if mount.kind == "proc":
            return ["--proc", mount.target]
        if mount.noexec:
            return ["--bind", SCRATCH, mount.target]  # made noexec before bwrap runs
        # tmpfs: "size=16m,mode=1777,..." -> --size and --perms
        options = dict(item.partition("=")[::2] for item in (mount.options or "").split(",") if item)
        argv = []
        if "size" in options:
            argv += ["--size", str(_bytes(options["size"]))]
        if "mode" in options:
            argv += ["--perms", options["mode"]]
        argv += ["--tmpfs", mount.target]
        if mount.readonly:
            argv += ["--remount-ro", mount.target]
        return argv


def _bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].lower() in units else int(size)
