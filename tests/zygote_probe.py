"""Security probes in zygote children: the suite's `python -c` programs, run
by a child of the Python zygote as a fresh interpreter would run them.

A zygote child only ever runs its harness, so the probe travels as the scope
of a small snippet that executes it as `python -c` would: its stdout and
stderr as they are, its exit code from sys.exit (1 for an uncaught
exception), and any signal that kills it. What comes back is the Outcome of
that child, which the tests read exactly as they read a cold sandbox's.
"""

import atexit
import json

from jail import _process, _zygote

RUNNER = """
import os, sys, traceback
try:
    exec(compile(probe, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    if not isinstance(exc.code, int) and exc.code is not None:
        print(exc.code, file=sys.stderr)
except BaseException:
    traceback.print_exc()
    code = 1
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
"""

_zygotes = {}


def zygote(language, policy, limits):
    """One zygote per (language, policy, limits), until stop_all()."""
    key = (language, policy, limits)
    if key not in _zygotes or not _zygotes[key].alive():
        _zygotes[key] = _zygote.Zygote(language, policy, limits)
    return _zygotes[key]


def zygote_pids():
    return [each.pid for each in _zygotes.values() if each.pid is not None]


def fork_python(code, policy, limits):
    """A zygote child running code (as `python -c`), its request written: (Started, request)."""
    limits = policy.capped(limits or policy.limits)
    started = zygote("python", policy, limits).fork()
    return started, json.dumps({"code": RUNNER, "scope": {"probe": code}}).encode()


def run_python(code, policy, limits):
    limits_ = policy.capped(limits or policy.limits)
    started, request = fork_python(code, policy, limits)
    return _process.run_sync(_process.communicate(started, limits_, request))


@atexit.register
def stop_all():
    """Ends every zygote made here, and waits for it."""
    _process.settle()
    while _zygotes:
        _, each = _zygotes.popitem()
        each.stop()
        each.join(_zygote.EXIT_TIMEOUT)
