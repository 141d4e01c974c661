"""The errors of jail, one tree (DESIGN.md sections 4 and 5)::

    JailError
    ├── RequestError            bad arguments: unknown language, bad scope key or types (HTTP 400/413)
    ├── ExecutionError          the snippet raised or did not compile (HTTP 422)
    │   ├── TimeLimitExceeded       the wall-clock or cpu limit was hit
    │   ├── MemoryLimitExceeded     the memory limit was hit
    │   ├── OutputLimitExceeded     stdout+stderr, or the result, went over its byte limit
    │   └── CallLimitExceeded       calls of functions (building blocks): too many, too big, too many at once
    ├── Overloaded              too many runs queued (HTTP 429)
    └── SandboxError            the sandbox itself failed, never the snippet's fault (HTTP 500)

An error's HTTP ``type`` is its class name; none shadows a builtin.
"""


class JailError(Exception):
    """Base of every error jail raises."""


class RequestError(JailError):
    """The caller's arguments are wrong; the message says which and why."""


class ExecutionError(JailError):
    """The snippet failed. ``message`` reads ``Name: text``; ``line`` and
    ``column`` are counted in the snippet as the user wrote it."""

    def __init__(self, message, *, name=None, line=None, column=None, traceback=None):
        super().__init__(message)
        self.message = message
        self.name = name or type(self).__name__
        self.line = line
        self.column = column
        self.traceback = traceback
        self.stdout = self.stderr = ""  # what the snippet printed before it failed
        self.stats = None


class TimeLimitExceeded(ExecutionError):
    """The run went over its wall-clock (or cpu) limit and was killed."""


class MemoryLimitExceeded(ExecutionError):
    """The run went over its memory limit."""


class OutputLimitExceeded(ExecutionError):
    """stdout+stderr, or the returned value, went over its byte limit."""


class CallLimitExceeded(ExecutionError):
    """The run's calls of its functions went over a limit: calls per run, bytes
    of one call's arguments or of one result, or calls in flight at once."""


class Overloaded(JailError):
    """Every sandbox is busy and the queue is full; try again later."""

    def __init__(self, message, *, retry_after=1):
        super().__init__(message)
        self.retry_after = retry_after


class SandboxError(JailError):
    """The sandbox could not be set up or failed; the message names the step."""
