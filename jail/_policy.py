"""Policy and Limits: the sandbox's knobs as frozen data with safe defaults.

A policy is checked when it is made (a bad value is a ValueError naming the
field and what it accepts), so a launch never starts from a broken one.
"""

import dataclasses

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one run may use. Defaults follow DESIGN.md section 4."""

    timeout_ms: int = 5000  # wall clock, from launch to exit
    memory_mb: int = 256  # cgroup memory where the host has one, plus an rlimit
    output_bytes: int = MiB  # stdout and stderr together
    result_bytes: int = 8 * MiB  # the result message on fd 3
    processes: int = 64  # threads count too: cgroup pids.max and RLIMIT_NPROC
    open_files: int = 256  # RLIMIT_NOFILE
    # Building blocks (functions given to a run): over any of these, CallLimitExceeded.
    calls: int = 1000  # calls per run
    call_bytes: int = MiB  # one call's arguments, as JSON with their types map
    call_result_bytes: int = MiB  # one function's result, as JSON with its types map
    calls_in_flight: int = 64  # calls started and not yet answered, at once

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"Limits.{field.name} must be a positive integer, not {value!r}")

    @property
    def cpu_seconds(self) -> int:
        """RLIMIT_CPU: a backstop behind the wall clock (whole seconds, rounded up, +1)."""
        return -(-self.timeout_ms // 1000) + 1


DEFAULT_LIMITS = Limits()
# Per-call limits above these are capped to them.
MAX_LIMITS = Limits(timeout_ms=30_000, memory_mb=1024, output_bytes=16 * MiB, result_bytes=64 * MiB,
                    processes=256, open_files=1024, calls=10_000, call_bytes=16 * MiB,
                    call_result_bytes=16 * MiB, calls_in_flight=256)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Everything a sandbox is made from, apart from the code it runs.

    The network is always off (a fresh network namespace with nothing in it):
    there is no knob to turn it on, by design.
    """

    limits: Limits = DEFAULT_LIMITS
    max_limits: Limits = MAX_LIMITS
    scratch_mb: int = 0  # >0: a noexec tmpfs of that size at /tmp, writable
    proc: bool = False  # mount a proc of the sandbox's own pid namespace at /proc
    extra_mounts: tuple = ()  # (host path, path inside) pairs, bound read-only
    uid_range: tuple = (200_000, 4096)  # host uids for sandboxes when the server is root
    hostname: str = "sandbox"
    backend: str = "native"

    def __post_init__(self):
        if not isinstance(self.limits, Limits) or not isinstance(self.max_limits, Limits):
            raise ValueError("Policy.limits and Policy.max_limits must be Limits")
        if type(self.scratch_mb) is not int or not 0 <= self.scratch_mb <= 1024:
            raise ValueError(f"Policy.scratch_mb must be an integer from 0 to 1024, not {self.scratch_mb!r}")
        start, count = self.uid_range
        if not (type(start) is int and type(count) is int and start >= 1000 and count >= 1 and start + count < 2**32):
            raise ValueError(f"Policy.uid_range must be (first uid >= 1000, count >= 1), not {self.uid_range!r}")
        for host, inside in self.extra_mounts:
            if not (isinstance(host, str) and host.startswith("/") and isinstance(inside, str) and inside.startswith("/")):
                raise ValueError(f"Policy.extra_mounts takes (absolute host path, absolute path inside) pairs, not {(host, inside)!r}")
        if self.backend not in ("native", "bwrap", "nsjail"):
            raise ValueError(f"Policy.backend must be 'native', 'bwrap' or 'nsjail', not {self.backend!r}")

    def capped(self, limits: Limits) -> Limits:
        """limits, each field capped at this policy's maximum."""
        return Limits(**{f.name: min(getattr(limits, f.name), getattr(self.max_limits, f.name))
                         for f in dataclasses.fields(Limits)})


DEFAULT_POLICY = Policy()
