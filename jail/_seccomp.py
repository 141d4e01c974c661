"""Builds the seccomp filter of a profile once, as BPF bytes, with pyseccomp.

The launcher installs these bytes as they are (it links no libseccomp): see
jail/_syscalls.py for what is allowed, refused with an errno, or killed.
"""

import errno
import functools
import tempfile

import pyseccomp as seccomp

from jail import _syscalls


def _rules(profile: str, scratch: bool):
    """(action, syscall, args) triples of one profile: the data the BPF and
    any other rendering (nsjail's Kafel) are made from."""
    allow, kill = seccomp.ALLOW, seccomp.KILL_PROCESS
    names = _syscalls.COMMON + _syscalls.PROFILE_EXTRAS[profile]
    if scratch:
        names += _syscalls.SCRATCH_WRITES
    rules = [(allow, name, ()) for name in names]
    rules += [(seccomp.ERRNO(errno.ENOSYS), name, ()) for name in _syscalls.ENOSYS]
    rules += [(kill, name, ()) for name in _syscalls.KILL]

    rules += [(allow, "socket", (seccomp.Arg(0, seccomp.EQ, _syscalls.AF_UNIX),))]
    rules += [(allow, "socketpair", (seccomp.Arg(0, seccomp.EQ, _syscalls.AF_UNIX),))]
    rules += [(allow, "ioctl", (seccomp.Arg(1, seccomp.EQ, request),)) for request in _syscalls.IOCTL_REQUESTS]
    rules += [(allow, "prctl", (seccomp.Arg(0, seccomp.EQ, option),)) for option in _syscalls.PRCTL_OPTIONS]

    ns_flags = _syscalls.NAMESPACE_CLONE_FLAGS
    rules += [(allow, "clone", (seccomp.Arg(0, seccomp.MASKED_EQ, ns_flags, 0),))]
    for bit in (1 << i for i in range(64) if ns_flags >> i & 1):
        rules += [(kill, "clone", (seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit),))]

    if scratch:
        rules += [(allow, "open", ()), (allow, "openat", ())]
    else:
        write_flags = _syscalls.OPEN_WRITE_FLAGS
        rules += [(allow, "open", (seccomp.Arg(1, seccomp.MASKED_EQ, write_flags, 0),))]
        rules += [(allow, "openat", (seccomp.Arg(2, seccomp.MASKED_EQ, write_flags, 0),))]
    return rules


@functools.lru_cache(maxsize=None)
def filter_bytes(profile: str, scratch: bool = False) -> bytes:
    """The BPF program (struct sock_filter[]) of a profile."""
    sandbox_filter = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
    for action, name, args in _rules(profile, scratch):
        sandbox_filter.add_rule(action, name, *args)
    with tempfile.TemporaryFile() as out:
        sandbox_filter.export_bpf(out)
        out.seek(0)
        return out.read()
