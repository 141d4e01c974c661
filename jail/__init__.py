"""Run untrusted Python and JavaScript snippets in a sandbox.

    import jail
    r = jail.run("return x + 3", language="python", scope={"x": 2})
    r.output   # 5
"""

from jail._calls import CallContext
from jail._errors import (CallLimitExceeded, ExecutionError, JailError, MemoryLimitExceeded, OutputLimitExceeded,
                          Overloaded, RequestError, SandboxError, TimeLimitExceeded)
from jail._policy import DEFAULT_LIMITS, DEFAULT_POLICY, Limits, Policy
from jail._pool import configure as warm_pool
from jail._process import Stats
from jail._run import LANGUAGES, Result, run, run_async
from jail._version import __version__

__all__ = [
    "CallContext",
    "CallLimitExceeded",
    "DEFAULT_LIMITS",
    "DEFAULT_POLICY",
    "LANGUAGES",
    "ExecutionError",
    "JailError",
    "Limits",
    "MemoryLimitExceeded",
    "OutputLimitExceeded",
    "Overloaded",
    "Policy",
    "RequestError",
    "Result",
    "SandboxError",
    "Stats",
    "TimeLimitExceeded",
    "__version__",
    "run",
    "run_async",
    "warm_pool",
]
