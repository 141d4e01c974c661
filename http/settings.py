"""The service's settings: defaults that need no configuration, overridden by
environment variables (JAIL_*) and then by command-line flags."""

import argparse
import dataclasses
import functools
import os

import jail
from jail import _pool as jail_pool

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 8 * MiB  # a larger body is 413
    max_concurrency: int = max(1, os.cpu_count() or 1)  # sandboxes running at once
    queue_depth: int = 64  # requests waiting for a sandbox; more is 429 at once
    retry_after_s: int = 1  # Retry-After of a 429
    shutdown_timeout_s: float = 10.0  # on SIGTERM, in-flight runs get this long, then are killed
    # Caps of the per-request limits (a request asking more gets these).
    max_timeout_ms: int = jail.DEFAULT_POLICY.max_limits.timeout_ms
    max_memory_mb: int = jail.DEFAULT_POLICY.max_limits.memory_mb
    max_output_bytes: int = jail.DEFAULT_POLICY.max_limits.output_bytes
    backend: str = "native"  # or "bwrap", "nsjail"
    # Warm sandboxes kept ready per language (0: off, every request starts its own).
    pool_python: int = jail_pool.DEFAULT_SIZE
    pool_javascript: int = jail_pool.DEFAULT_SIZE
    # What each may grow to while the load needs more (forked pools only); idle, it shrinks back.
    pool_max: int = jail_pool.DEFAULT_MAX_SIZE
    # The building blocks requests may call: "package.module:attribute", a mapping of
    # names to callables (docs/blocks.md); empty: none.
    blocks: str = ""

    def __post_init__(self):
        for name in ("port", "max_body_bytes", "max_concurrency", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("queue_depth", "pool_python", "pool_javascript", "pool_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, not {getattr(self, name)}")
        self.policy  # checks the caps
        self.block_functions  # imports and checks the blocks: a bad setting stops the start

    @functools.cached_property
    def block_functions(self) -> dict:
        """{name: callable} of the blocks setting (ValueError saying what is wrong)."""
        from jail_http import blocks

        return blocks.load(self.blocks) if self.blocks else {}

    @functools.cached_property
    def policy(self) -> jail.Policy:
        """The default policy with this server's caps; the defaults stay within them."""
        caps = dataclasses.replace(jail.DEFAULT_POLICY.max_limits, timeout_ms=self.max_timeout_ms,
                                   memory_mb=self.max_memory_mb, output_bytes=self.max_output_bytes)
        base = jail.Policy(max_limits=caps, backend=self.backend)
        return dataclasses.replace(base, limits=base.capped(base.limits))


# setting -> (environment variable, type, help)
OPTIONS = {
    "host": ("JAIL_HOST", str, "address to listen on"),
    "port": ("JAIL_PORT", int, "port to listen on"),
    "max_body_bytes": ("JAIL_MAX_BODY_BYTES", int, "largest request body; more is 413"),
    "max_concurrency": ("JAIL_MAX_CONCURRENCY", int, "sandboxes running at once (default: the core count)"),
    "queue_depth": ("JAIL_QUEUE_DEPTH", int, "requests that may wait for a sandbox; beyond that, 429"),
    "shutdown_timeout_s": ("JAIL_SHUTDOWN_TIMEOUT_S", float, "on SIGTERM, how long in-flight runs may finish"),
    "max_timeout_ms": ("JAIL_MAX_TIMEOUT_MS", int, "cap of a request's limits.timeout_ms"),
    "max_memory_mb": ("JAIL_MAX_MEMORY_MB", int, "cap of a request's limits.memory_mb"),
    "max_output_bytes": ("JAIL_MAX_OUTPUT_BYTES", int, "cap of a request's limits.output_bytes"),
    "backend": ("JAIL_BACKEND", str, "sandbox backend: native (default), bwrap or nsjail"),
    "pool_python": ("JAIL_POOL_PYTHON", int, "warm Python sandboxes kept ready (default 4; 0: off)"),
    "pool_javascript": ("JAIL_POOL_JAVASCRIPT", int, "warm JavaScript sandboxes kept ready (default 4; 0: off)"),
    "pool_max": ("JAIL_POOL_MAX", int, "what each language's pool may grow to under load (default 16)"),
    "blocks": ("JAIL_BLOCKS", str, "building blocks requests may call: package.module:attribute, a mapping of "
                                   "names to callables (default: none)"),
}


def from_args(argv=None, environ=None) -> Settings:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="jail-server", description="Serve the snippet sandbox over HTTP.")
    for name, (variable, kind, text) in OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{text} (env {variable})")
    args = parser.parse_args(argv)
    values = {}
    for name, (variable, kind, _) in OPTIONS.items():
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
        elif variable in environ:
            try:
                values[name] = kind(environ[variable])
            except ValueError:
                parser.error(f"{variable}={environ[variable]!r} is not a valid {kind.__name__}")
    try:
        return Settings(**values)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
