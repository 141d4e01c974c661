"""The one small interface every backend implements (native, bwrap, nsjail).

A backend turns a SandboxSpec into a running sandbox whose stdio are the four
fds it is given; the host side of the run (jail._process) is the same for all.
"""

import dataclasses


@dataclasses.dataclass
class Finished:
    """What a backend knows after the sandbox is gone."""

    peak_memory: int = None  # bytes, where a cgroup measured it
    oom_killed: bool = False
    cgroup: str = "none"  # "v1", "v2" or "none"
    # A backend whose own process reports "killed by signal n" as exit code base + n.
    signal_exit_base: int = None


class Sandbox:
    """A started sandbox. ``pid`` and ``pidfd`` are the process the host waits
    for; killing it ends everything inside (it is the pid namespace's init, or
    the backend's own monitor of it)."""

    pid: int
    pidfd: int

    def kill(self) -> None:
        raise NotImplementedError

    def finish(self) -> Finished:
        """Releases what the sandbox held (uid, cgroup) once it is reaped."""
        raise NotImplementedError

    def setup_failure(self, stderr: bytes, exit_code) -> str:
        """Why the backend itself failed before the program ran, or None. The
        native launcher reports that from spawn(); a command backend can only
        tell once its process is gone."""
        return None


class Backend:
    name: str

    def unavailable_reason(self):
        """None when the backend can run here, else why not (one sentence)."""
        raise NotImplementedError

    def spawn(self, spec, stdio: tuple) -> Sandbox:
        """Starts a sandbox with stdio[0..3] as its fds 0..3; raises SandboxError."""
        raise NotImplementedError
