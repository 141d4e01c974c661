"""What a backend is asked to make: one SandboxSpec, whatever the backend.

build_spec turns a runtime, a policy and the run's limits into the exact
argv, environment, mounts, rlimits and seccomp program; the backends only
translate it (native: C structs; bwrap and nsjail: command lines).
"""

import dataclasses
import resource

from jail import _runtime, _seccomp
from jail._policy import MiB, Limits, Policy



@dataclasses.dataclass(frozen=True)
class SandboxSpec:
    runtime: _runtime.Runtime
    argv: tuple  # argv[0] is the program inside the sandbox
    env: tuple  # (name, value) pairs: the whole environment
    mounts: tuple  # _runtime.Mount, in order
    limits: Limits
    rlimits: tuple  # (RLIMIT_*, soft, hard)
    seccomp: bytes  # struct sock_filter[]
    scratch: bool
    hostname: str
    workdir: str
    uid_range: tuple

    @property
    def memory_bytes(self) -> int:
        return self.limits.memory_mb * MiB


def _rlimits(runtime, limits: Limits, scratch_bytes: int) -> tuple:
    memory = limits.memory_mb * MiB
    # V8 reserves far more address space than it uses (PROT_NONE), which
    # RLIMIT_DATA does not count: Node is bounded by data, Python by address space.
    which = resource.RLIMIT_AS if runtime.memory_rlimit == "as" else resource.RLIMIT_DATA
    memory_limit = (which, memory, memory)
    fsize = max(scratch_bytes, MiB)
    return (
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        memory_limit,
        (resource.RLIMIT_NPROC, limits.processes, limits.processes),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 64 * 1024, 64 * 1024),
    )


def build_spec(runtime, policy: Policy, limits: Limits, program: tuple) -> SandboxSpec:
    mounts = list(runtime.mounts) + list(_runtime.DEVICES)
    mounts += [_runtime.Mount("bind", inside, host) for host, inside in policy.extra_mounts]
    if policy.scratch_mb:
        options = f"size={policy.scratch_mb}m,mode=1777,nr_inodes=4096"
        mounts.append(_runtime.Mount("tmpfs", "/tmp", options=options, noexec=True))
    if policy.proc:
        mounts.append(_runtime.Mount("proc", "/proc"))
    scratch_bytes = policy.scratch_mb * MiB
    return SandboxSpec(
        runtime=runtime,
        argv=(runtime.executable,) + runtime.flags + tuple(program),
        env=runtime.env,
        mounts=tuple(mounts),
        limits=limits,
        rlimits=_rlimits(runtime, limits, scratch_bytes),
        seccomp=_seccomp.filter_bytes(runtime.seccomp_profile, bool(policy.scratch_mb)),
        scratch=bool(policy.scratch_mb),
        hostname=policy.hostname,
        workdir="/tmp" if policy.scratch_mb else "/",
        uid_range=policy.uid_range,
    )


def zygote_spec(language, policy: Policy, limits: Limits, library: str) -> SandboxSpec:
    """The base sandbox of a language's zygote (jail._zygote): its harness in
    zygote mode with the fork server library, the zygote's own seccomp filter,
    a proc (for its children's id maps: the zygote detaches it, unless its
    children mount their own over it) and no cpu limit of its own; each child
    gets ``harness_spec``'s filter and rlimits."""
    spec = harness_spec(language, policy, limits)
    proc = _runtime.Mount("proc", "/proc")
    mounts = tuple(m for m in spec.mounts if m != proc) + (_runtime.Mount("bind", _runtime.ZYGOTE_LIBRARY, library), proc)
    unlimited = resource.RLIM_INFINITY % 2**64  # as the kernel spells it (-1 in Python)
    rlimits = tuple((which, unlimited, unlimited) if which == resource.RLIMIT_CPU
                    else (which, soft, hard) for which, soft, hard in spec.rlimits)
    return dataclasses.replace(
        spec,
        argv=spec.argv[:-1] + _runtime.ZYGOTE_FLAGS[language] + spec.argv[-1:] + ("--zygote",),
        mounts=mounts,
        rlimits=rlimits,
        seccomp=_seccomp.filter_bytes(spec.runtime.seccomp_profile, spec.scratch, zygote=True),
    )


def harness_spec(language, policy: Policy, limits: Limits) -> SandboxSpec:
    """The spec of a run of language's harness (it reads its request on stdin)."""
    program = (f"{_runtime.HARNESS_INSIDE}/{_runtime.HARNESS[language]}",)
    return build_spec(_runtime.LANGUAGES[language](), policy, limits, program)
