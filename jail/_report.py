"""The JSON bodies of DESIGN.md section 4, shared by the HTTP service and the
command line: ``{"output": ...}`` with ``types``, ``stdout`` and ``stderr`` only
when they have content, or ``{"error": {"type": ..., "message": ..., ...}}``."""

from jail._errors import ExecutionError, JailError


def result_body(result) -> dict:
    body = {"output": result.value}
    if result.types:
        body["types"] = result.types
    if result.stdout:
        body["stdout"] = result.stdout
    if result.stderr:
        body["stderr"] = result.stderr
    return body


def error_body(error: JailError) -> dict:
    """What the snippet printed before it failed comes along, when it has content."""
    detail = {"type": type(error).__name__, "message": str(error)}
    body = {"error": detail}
    if isinstance(error, ExecutionError):
        detail.update(message=error.message, name=error.name, line=error.line, column=error.column,
                      traceback=error.traceback)
        for stream in ("stdout", "stderr"):
            if getattr(error, stream, ""):
                body[stream] = getattr(error, stream)
    return body
