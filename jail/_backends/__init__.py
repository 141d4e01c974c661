"""The backends, by name. Each is made once per process, on first use."""

import functools

from jail._errors import SandboxError

NAMES = ("native", "bwrap", "nsjail")


@functools.lru_cache(maxsize=None)
def get(name: str):
    """The backend called name; SandboxError if it cannot run on this host."""
    if name == "native":
        from jail._backends.native import NativeBackend as backend_class
    elif name == "bwrap":
        from jail._backends.bwrap import BwrapBackend as backend_class
    elif name == "nsjail":
        from jail._backends.nsjail import NsjailBackend as backend_class
    else:
        raise SandboxError(f"unknown backend {name!r}: choose one of {', '.join(NAMES)}")
    backend = backend_class()
    reason = backend.unavailable_reason()
    if reason:
        raise SandboxError(f"backend {name!r} {reason}")
    return backend
