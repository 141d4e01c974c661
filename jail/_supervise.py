"""Owners of the library's background threads (the reaper, the warm pool's
refill, each zygote's reader).

A supervised thread that raises is never lost: the exception is logged with
its traceback, counted (``ERRORS``, shown in /metrics as
``jail_background_errors_total{thread}``), and the thread's work is started
again after a short pause that grows while it keeps failing. Each part of the
library also says when it is degraded (``degraded()``, which /readyz names
until it recovers by itself).
"""

import collections
import logging
import threading
import time

log = logging.getLogger("jail")

ERRORS = collections.Counter()  # thread name -> unexpected exceptions
RESTART_PAUSE = (0.05, 2.0)  # first pause before a restart, and the longest
RECENT = 5.0  # seconds after its last error that a thread counts as degraded

_lock = threading.Lock()
_last_error = {}  # thread name -> (monotonic time, "ExceptionName: message")
_checks = {}  # part -> callable giving why it is degraded, or None


def start(name: str, work, stopped=lambda: False, args=()) -> threading.Thread:
    """A daemon thread running work(*args) until it returns (or stopped() says
    so), started again whenever it raises."""
    thread = threading.Thread(target=_run, args=(name, work, stopped, args), name=name, daemon=True)
    thread.start()
    return thread


def _run(name, work, stopped, args) -> None:
    pause = RESTART_PAUSE[0]
    while True:
        try:
            work(*args)
            return
        except Exception as exc:  # noqa: BLE001 - the point: nothing ends a background thread unseen
            failed(name, exc)
        if stopped():
            return
        time.sleep(pause)
        pause = min(pause * 2, RESTART_PAUSE[1])


def failed(name: str, exc: BaseException) -> None:
    """Logs and counts an unexpected exception of a background thread."""
    log.error("background thread %s failed; it goes on", name, exc_info=exc)
    with _lock:
        ERRORS[name] += 1
        _last_error[name] = (time.monotonic(), f"{type(exc).__name__}: {exc}")


def watch(part: str, check) -> None:
    """check() -> why part is degraded now, or None; consulted by degraded()."""
    with _lock:
        _checks[part] = check


def degraded() -> dict:
    """part -> why it is degraded now: a thread that failed in the last few
    seconds, and every watched part whose check says so."""
    now = time.monotonic()
    with _lock:
        found = {f"thread {name}": f"failed {now - when:.1f} s ago: {what}"
                 for name, (when, what) in _last_error.items() if now - when < RECENT}
        checks = list(_checks.items())
    for part, check in checks:
        try:
            why = check()
        except Exception as exc:  # noqa: BLE001 - a broken check is itself a degradation
            why = f"its health check failed: {type(exc).__name__}: {exc}"
        if why:
            found[part] = why
    return found
