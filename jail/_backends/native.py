"""The native backend: our own launcher (native/launch.c) through cffi.

Python prepares everything the C side needs in fixed arrays (argv, envp,
mounts, rlimits, cgroup files, BPF bytes) and makes one call; the child does
all of its set-up in C between clone and exec. A failed step comes back as
{step, errno, index} and is turned here into one SandboxError naming it.
"""

import errno
import os
import resource

from jail._backends.base import Backend, Finished, Held, Sandbox
from jail._errors import SandboxError

try:
    from jail import _native
except ImportError as exc:  # pragma: no cover - a broken install
    raise ImportError(f"jail._native is not built ({exc}): run `make setup` (pip install -e .)") from exc

from jail._version import __version__

_built = _native.ffi.string(_native.lib.jail_native_version()).decode()
if _built != __version__:
    raise ImportError(f"jail._native was built for jail {_built}, this is {__version__}: rebuild with `make setup`")

ffi, lib = _native.ffi, _native.lib

CLONE_FLAGS = (
    0x10000000  # CLONE_NEWUSER
    | 0x00020000  # CLONE_NEWNS
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x08000000  # CLONE_NEWIPC
    | 0x04000000  # CLONE_NEWUTS
    | 0x02000000  # CLONE_NEWCGROUP
)
MS_RDONLY, MS_NOEXEC = 0x1, 0x8
INSIDE_ID = 1000  # the sandbox's uid and gid as seen inside
STAGING = "/tmp"  # host dir the new root is mounted over, in the child's private namespace only
ROOT_OPTIONS = "size=1m,nr_inodes=1024,mode=0755"

MOUNT_KINDS = {
    "bind": lib.JAIL_MOUNT_BIND_RO,
    "dev": lib.JAIL_MOUNT_BIND_DEV,
    "tmpfs": lib.JAIL_MOUNT_TMPFS,
    "proc": lib.JAIL_MOUNT_PROC,
    "symlink": lib.JAIL_MOUNT_SYMLINK,
}

# JAIL_STEP_* mirrored by name from the extension itself.
STEPS = {getattr(lib, name): name[len("JAIL_STEP_"):] for name in dir(lib) if name.startswith("JAIL_STEP_")}
# How a step reads in a message; the rest read as their name in lower case.
STEP_LABELS = {
    "OPEN_SOURCE": "open",
    "MOUNT_BIND": "mount",
    "MOUNT_READONLY": "remount read-only",
    "MOUNT_TMPFS": "mount tmpfs",
    "MOUNT_PROC": "mount proc",
    "MOUNT_ROOT": "mount the root tmpfs",
    "MOUNT_PRIVATE": "make mounts private",
    "UMOUNT_OLD_ROOT": "detach the old root",
    "REMOUNT_ROOT": "remount the root read-only",
    "CGROUP": "join cgroup",
    "SETGROUPS_FILE": "write setgroups",
    "UID_MAP": "write uid_map",
    "GID_MAP": "write gid_map",
    "SYNC": "wait for the parent",
    "PROTOCOL": "read the zygote's request",
    "UMOUNT_PROC": "take the zygote's proc away",
    "RENEW_FDS": "renew the runtime's own fd",
    "THREADS": "wait for the runtime's other threads to be idle",
}
# Known causes, as hints (bubblewrap does the same for clone).
HINTS = {
    ("CLONE", errno.EPERM): "user namespaces are disabled for this user (sysctl kernel.unprivileged_userns_clone, "
                            "or an AppArmor/SELinux policy)",
    ("CLONE", errno.ENOSPC): "the user namespace limit is reached (sysctl user.max_user_namespaces)",
    ("CLONE", errno.EINVAL): "this kernel lacks a namespace the sandbox needs",
    ("MOUNT_READONLY", errno.ENOSYS): "recursive read-only binds need mount_setattr (Linux 5.12 or newer)",
    ("UID_MAP", errno.EPERM): "the server may not map this uid (is the uid range free and the server root?)",
}

RLIMIT_NAMES = {}
for _name in dir(resource):
    if _name.startswith("RLIMIT_") and _name != "RLIMIT_OFILE":  # OFILE: BSD's alias of NOFILE
        RLIMIT_NAMES[getattr(resource, _name)] = _name


def describe_failure(report, spec, cgroup_files=()) -> str:
    """'mount /opt/python/lib/python3.11: EPERM (Operation not permitted)'."""
    name = STEPS.get(report.step, f"STEP_{report.step}")
    label = STEP_LABELS.get(name, name.lower().replace("_", " "))
    index = report.index
    if name in ("OPEN_SOURCE",) and 0 <= index < len(spec.mounts):
        label += f" {spec.mounts[index].source}"
    elif name in ("MKDIR", "MOUNT_BIND", "MOUNT_READONLY", "MOUNT_TMPFS", "MOUNT_PROC", "SYMLINK", "CONFIG") \
            and 0 <= index < len(spec.mounts):
        label += f" {spec.mounts[index].target}"
    elif name == "RLIMIT" and 0 <= index < len(spec.rlimits):
        label += f" {RLIMIT_NAMES.get(spec.rlimits[index][0], spec.rlimits[index][0])}"
    elif name == "CGROUP" and 0 <= index < len(cgroup_files):
        label += f" {cgroup_files[index]}"
    code = errno.errorcode.get(report.err, str(report.err))
    message = f"{label}: {code} ({os.strerror(report.err)})"
    hint = HINTS.get((name, report.err))
    return f"{message}; {hint}" if hint else message


class _Keep:
    """Holds every cffi buffer a jail_config points into, for the call."""

    def __init__(self):
        self.items = []

    def str(self, text):
        if text is None:
            return ffi.NULL
        buf = ffi.new("char[]", os.fsencode(text))
        self.items.append(buf)
        return buf

    def strv(self, texts):
        array = ffi.new("char *[]", [self.str(t) for t in texts] + [ffi.NULL])
        self.items.append(array)
        return array


def _config(spec, stdio, uid_map, gid_map, deny_setgroups, cgroup, keep, zygote=False):
    config = ffi.new("struct jail_config *")
    config.keep_caps = int(zygote)
    keep.items.append(config)
    config.path = keep.str(spec.argv[0])
    config.argv = keep.strv(spec.argv)
    config.envp = keep.strv(f"{k}={v}" for k, v in spec.env)
    config.stdio = list(stdio)
    config.clone_flags = CLONE_FLAGS
    config.inside_uid = config.inside_gid = 0 if zygote else INSIDE_ID
    config.uid_map = keep.str(uid_map)
    config.gid_map = keep.str(gid_map)
    config.deny_setgroups = deny_setgroups
    config.staging = keep.str(STAGING)
    config.root_options = keep.str(ROOT_OPTIONS)

    mounts = ffi.new("struct jail_mount[]", max(1, len(spec.mounts)))
    keep.items.append(mounts)
    for i, m in enumerate(spec.mounts):
        mounts[i].kind = MOUNT_KINDS[m.kind]
        mounts[i].source = keep.str(m.source)
        mounts[i].target = keep.str(m.target)
        mounts[i].data = keep.str(m.options)
        mounts[i].flags = (MS_RDONLY if m.readonly else 0) | (MS_NOEXEC if m.noexec else 0)
    config.mounts, config.n_mounts = mounts, len(spec.mounts)

    rlimits = ffi.new("struct jail_rlimit[]", max(1, len(spec.rlimits)))
    keep.items.append(rlimits)
    for i, (which, soft, hard) in enumerate(spec.rlimits):
        rlimits[i].resource, rlimits[i].soft, rlimits[i].hard = which, soft, hard
    config.rlimits, config.n_rlimits = rlimits, len(spec.rlimits)

    files = ffi.new("char *[]", [keep.str(p) for p in cgroup.join_files] + [ffi.NULL])
    keep.items.append(files)
    config.cgroup_files, config.n_cgroups = files, len(cgroup.join_files)
    config.cgroup_self = int(cgroup.join_self)

    bpf = ffi.from_buffer(spec.seccomp)
    keep.items.append(bpf)
    config.bpf, config.bpf_len = bpf, len(spec.seccomp)
    config.hostname = keep.str(spec.hostname)
    config.workdir = keep.str(spec.workdir)
    return config


class NativeSandbox(Sandbox):
    answers_at_result = True  # pid is the interpreter

    def __init__(self, pid, pidfd, held):
        self.pid, self.pidfd, self._held = pid, pidfd, held
        self.cgroup = held.cgroup

    def finish(self) -> Finished:
        return self._held.release()


class NativeBackend(Backend):
    name = "native"

    def unavailable_reason(self):
        if not os.path.exists("/proc/self/ns/user"):
            return "this kernel has no user namespaces"
        return None

    def spawn(self, spec, stdio: tuple) -> NativeSandbox:
        held = Held(spec)
        if held.uid is not None:
            uid_map = gid_map = f"{INSIDE_ID} {held.uid} 1"
            deny_setgroups = 0
        else:
            uid_map, gid_map = f"{INSIDE_ID} {os.geteuid()} 1", f"{INSIDE_ID} {os.getegid()} 1"
            deny_setgroups = 1
        return self._spawn(spec, stdio, uid_map, gid_map, deny_setgroups, held)

    def spawn_zygote(self, spec, stdio: tuple, held) -> NativeSandbox:
        """A zygote's base sandbox (jail._zygote): root of its user namespace,
        which maps held.uid to 0 and held's block of uids to 1 and up."""
        id_map = f"0 {held.uid} 1\n1 {held.block} {held.block_size}"
        return self._spawn(spec, stdio, id_map, id_map, 0, held, zygote=True)

    def _spawn(self, spec, stdio, uid_map, gid_map, deny_setgroups, held, zygote=False):
        keep = _Keep()
        config = _config(spec, stdio, uid_map, gid_map, deny_setgroups, held.cgroup, keep, zygote)
        child = ffi.new("struct jail_child *")
        if lib.jail_spawn(config, child) != 0:
            held.release()
            raise SandboxError(describe_failure(child.report, spec, held.cgroup.join_files))
        return NativeSandbox(child.pid, child.pidfd, held)
