"""Builds a profile's seccomp filter once: as BPF bytes with pyseccomp (native
and bwrap), or as Kafel policy text (nsjail), from the same rules.

The launcher installs the BPF as it is (it links no libseccomp): see
jail/_syscalls.py for what is allowed, refused with an errno, or killed.
"""

import errno
import functools
import tempfile

import pyseccomp as seccomp

from jail import _syscalls

ALLOW, KILL = ("allow",), ("kill",)
EPERM, ENOSYS = ("errno", errno.EPERM), ("errno", errno.ENOSYS)
DEFAULT = EPERM

# Kafel spells a few x86_64 syscalls by the kernel's internal names.
KAFEL_NAMES = {"fstat": "newfstat", "stat": "newstat", "lstat": "newlstat", "uname": "newuname",
               "sendfile": "sendfile64", "umount2": "umount"}


def rules(profile: str, scratch: bool, zygote: bool = False) -> list:
    """(action, syscall, conditions): a condition is (arg, value) for arg ==
    value, or (arg, mask, value) for (arg & mask) == value. ``zygote``: the
    filter of a zygote itself (jail._syscalls.ZYGOTE), not of a snippet's."""
    names = _syscalls.COMMON + _syscalls.PROFILE_EXTRAS[profile]
    if scratch:
        names += _syscalls.SCRATCH_WRITES
    if zygote:
        names += _syscalls.ZYGOTE + ("prctl",)
    out = [(ALLOW, name, ()) for name in names]
    out += [(ENOSYS, name, ()) for name in _syscalls.ENOSYS]
    out += [(KILL, name, ()) for name in _syscalls.KILL if name not in names]
    out += [(ALLOW, "socket", ((0, _syscalls.AF_UNIX),)), (ALLOW, "socketpair", ((0, _syscalls.AF_UNIX),))]
    out += [(ALLOW, "ioctl", ((1, request),)) for request in _syscalls.IOCTL_REQUESTS]
    if not zygote:
        out += [(ALLOW, "prctl", ((0, option),)) for option in _syscalls.PRCTL_OPTIONS]
    ns_flags = _syscalls.NAMESPACE_CLONE_FLAGS
    out += [(ALLOW, "clone", ((0, ns_flags, 0),))]
    out += [(KILL, "clone", ((0, bit, bit),)) for bit in (1 << i for i in range(64) if ns_flags >> i & 1)]
    if scratch or zygote:
        out += [(ALLOW, "open", ()), (ALLOW, "openat", ())]
    else:
        write_flags = _syscalls.OPEN_WRITE_FLAGS
        out += [(ALLOW, "open", ((1, write_flags, 0),)), (ALLOW, "openat", ((2, write_flags, 0),))]
    return out


def _pyseccomp_action(action):
    return {"allow": seccomp.ALLOW, "kill": seccomp.KILL_PROCESS}.get(action[0]) or seccomp.ERRNO(action[1])


def _pyseccomp_arg(condition):
    if len(condition) == 2:
        return seccomp.Arg(condition[0], seccomp.EQ, condition[1])
    return seccomp.Arg(condition[0], seccomp.MASKED_EQ, condition[1], condition[2])


@functools.lru_cache(maxsize=None)
def filter_bytes(profile: str, scratch: bool = False, zygote: bool = False) -> bytes:
    """The BPF program (struct sock_filter[]) of a profile."""
    sandbox_filter = seccomp.SyscallFilter(_pyseccomp_action(DEFAULT))
    for action, name, conditions in rules(profile, scratch, zygote):
        sandbox_filter.add_rule(_pyseccomp_action(action), name, *map(_pyseccomp_arg, conditions))
    with tempfile.TemporaryFile() as out:
        sandbox_filter.export_bpf(out)
        out.seek(0)
        return out.read()


def _kafel_action(action) -> str:
    return {"allow": "ALLOW", "kill": "KILL_PROCESS"}.get(action[0]) or f"ERRNO({action[1]})"


def _kafel_condition(condition) -> str:
    if len(condition) == 2:
        return f"a{condition[0]} == {condition[1]:#x}"
    return f"(a{condition[0]} & {condition[1]:#x}) == {condition[2]:#x}"


@functools.lru_cache(maxsize=None)
def kafel_policy(profile: str, scratch: bool = False) -> str:
    """The same rules as Kafel text for nsjail's --seccomp_string."""
    by_action = {}
    for action, name, conditions in rules(profile, scratch):
        name = KAFEL_NAMES.get(name, name)
        entries = by_action.setdefault(_kafel_action(action), {})
        entries.setdefault(name, []).extend([conditions] if conditions else [()])
    blocks = []
    for action, entries in by_action.items():
        items = []
        for name, alternatives in entries.items():
            if () in alternatives:
                items.append(name)
            else:
                arity = 1 + max(c[0] for alts in alternatives for c in alts)
                params = ", ".join(f"a{i}" for i in range(arity))
                test = " || ".join("(" + " && ".join(map(_kafel_condition, alts)) + ")" for alts in alternatives)
                items.append(f"{name}({params}) {{ {test} }}")
        blocks.append(f"  {action} {{\n    " + ",\n    ".join(items) + "\n  }")
    return "POLICY sandbox {\n" + ",\n".join(blocks) + "\n}\nUSE sandbox DEFAULT " + _kafel_action(DEFAULT) + "\n"
