"""The aiohttp service (DESIGN.md section 4).

``create_app(settings)`` builds the Application; ``main()`` serves it
(``python -m jail_http``, the ``jail-server`` console script, ``make serve``).
Handlers stay short: one middleware maps jail's errors to the status table,
logs one JSON line per request and counts it in the metrics.
"""

import asyncio
import codecs
import contextlib
import json
import logging
import pathlib
import time
import uuid

import prometheus_client
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler  # "100 Continue" (or 417 for another Expect)

import jail
from jail import _pool, _run, _supervise, _zygote
from jail._report import error_body, result_body
from jail_http import blocks as jail_blocks
from jail_http.settings import Settings, from_args

log = logging.getLogger("jail_http")

FIELDS = ("code", "language", "scope", "types", "limits", "blocks", "context")
STATUS = {jail.RequestError: 400, jail.ExecutionError: 422, jail.Overloaded: 429, jail.SandboxError: 500}
OUTCOMES = {jail.TimeLimitExceeded: "time_limit", jail.CallLimitExceeded: "call_limit", jail.MemoryLimitExceeded: "memory_limit",
            jail.OutputLimitExceeded: "output_limit", jail.ExecutionError: "execution_error",
            jail.RequestError: "request_error", jail.Overloaded: "overloaded", jail.SandboxError: "sandbox_error"}
NDJSON = "application/x-ndjson"
STREAM_PIECE = 16384  # a line longer than this streams in pieces
OPENAPI = json.loads((pathlib.Path(__file__).parent / "openapi.json").read_text())


class Gate:
    """At most ``running`` sandboxes at once and ``waiting`` requests queued
    for one; a request beyond that is refused at once (Overloaded), never hangs."""

    def __init__(self, running: int, waiting: int, retry_after: int):
        self._slots = asyncio.Semaphore(running)
        self.max_waiting, self.retry_after = waiting, retry_after
        self.running = self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self):
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise jail.Overloaded(f"Overloaded: {self.running} sandboxes running and {self.waiting} requests "
                                  f"waiting; try again later", retry_after=self.retry_after)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()


class Metrics:
    """Prometheus metrics in a registry of the app's own."""

    def __init__(self, gate: Gate):
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "jail_requests", "Evaluate requests by language and outcome", ["language", "outcome"],
            registry=self.registry)
        self.duration = prometheus_client.Histogram(
            "jail_run_duration_seconds", "Wall time of a snippet's sandbox, launch to exit", ["language"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)
        self.rejections = prometheus_client.Counter(
            "jail_rejections", "Requests refused because the queue was full", registry=self.registry)
        self.block_calls = prometheus_client.Counter(
            "jail_block_calls", "Calls of building blocks by block and outcome (ok, error, cancelled)",
            ["block", "outcome"], registry=self.registry)
        self.block_seconds = prometheus_client.Counter(
            "jail_block_call_seconds", "Time spent in building blocks, by block", ["block"], registry=self.registry)
        running = prometheus_client.Gauge("jail_sandboxes_running", "Sandboxes running now", registry=self.registry)
        running.set_function(lambda: gate.running)
        queued = prometheus_client.Gauge("jail_queue_depth", "Requests waiting for a sandbox", registry=self.registry)
        queued.set_function(lambda: gate.waiting)
        self.registry.register(_PoolCollector())


class _PoolCollector:
    """The warm pool's counters, read when /metrics is scraped."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pool, stats = _pool.POOL, _pool.POOL.stats
        families = {
            "hits": CounterMetricFamily("jail_pool_hits", "Requests served by a warm sandbox", labels=["language"]),
            "misses": CounterMetricFamily("jail_pool_misses", "Requests that found no warm sandbox ready",
                                          labels=["language"]),
            "cold": CounterMetricFamily("jail_pool_cold", "Requests that went cold with the pool on",
                                        labels=["language"]),
            "wait_seconds": CounterMetricFamily("jail_pool_wait_seconds", "Time requests waited for a fork",
                                                labels=["language"]),
            "refills": CounterMetricFamily("jail_pool_refills", "Warm sandboxes started", labels=["language"]),
            "refill_seconds": CounterMetricFamily("jail_pool_refill_seconds", "Time spent starting warm sandboxes",
                                                  labels=["language"]),
        }
        errors = CounterMetricFamily("jail_background_errors", "Unexpected exceptions of background threads",
                                     labels=["thread"])
        for thread, count in sorted(_supervise.ERRORS.items()):
            errors.add_metric([thread], count)
        yield errors
        deaths = CounterMetricFamily("jail_zygote_deaths", "Zygotes that died (not stopped)", labels=["language"])
        for language in jail.LANGUAGES:
            deaths.add_metric([language], _zygote.DEATHS[language])
        yield deaths
        degraded = GaugeMetricFamily("jail_degraded", "1 while a part is degraded (named in /readyz)",
                                     labels=["part"])
        for part in _supervise.degraded():
            degraded.add_metric([part], 1)
        yield degraded
        ready = GaugeMetricFamily("jail_pool_ready", "Warm sandboxes ready now", labels=["language"])
        size = GaugeMetricFamily("jail_pool_size", "Warm sandboxes the pool keeps now (grows under load)",
                                 labels=["language"])
        for language in jail.LANGUAGES:
            for name, family in families.items():
                family.add_metric([language], getattr(stats, name)[language])
            ready.add_metric([language], len(pool.idle_pids_of(language)))
            size.add_metric([language], pool.size(language))
        yield from families.values()
        yield ready
        yield size


SETTINGS = web.AppKey("settings", Settings)
BLOCKS = web.AppKey("blocks", list)
GATE = web.AppKey("gate", Gate)
IN_FLIGHT = web.AppKey("in_flight", set)  # the handler tasks of requests being answered
STOPPING = web.AppKey("stopping", dict)  # {"now": True} once SIGTERM's grace period is over
METRICS = web.AppKey("metrics", Metrics)


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"type": "RequestError", "message": message}}, status=status)


async def _read_json(request: web.Request, limit: int):
    """The body as a JSON object, or an HTTP error that says what is wrong."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Type must be application/json, not {request.content_type or 'missing'}")
    if _over_the_limit(request, limit):
        raise _too_large(limit, request.content_length)
    # The whole body, however it comes (content.read(n) gives what is buffered
    # so far); nothing past the limit is kept.
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit, len(body))
    if not body.strip():
        raise jail.RequestError("the body is empty: send a JSON object such as {\"code\": \"return 1\"}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise jail.RequestError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise jail.RequestError(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    except RecursionError:
        raise jail.RequestError("the body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise jail.RequestError(f"the body must be a JSON object, not {type(data).__name__}")
    return data


def _over_the_limit(request: web.Request, limit: int) -> bool:
    return request.content_length is not None and request.content_length > limit


def _too_large(limit: int, size: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size,
                                         text=f"the body is over the limit of {limit} bytes")


async def _continue_unless_too_large(request: web.Request):
    """`Expect: 100-continue`: a body announced over the limit is not asked
    for; evaluate answers 413 (through the middleware) before it comes."""
    if _over_the_limit(request, request.app[SETTINGS].max_body_bytes):
        return None
    return await _default_expect_handler(request)


def _no_constants(name):
    raise jail.RequestError(f"the body is not valid JSON: {name} is not a JSON value "
                            f"(send non-finite floats as strings typed \"float\")")


def _fields(data: dict) -> dict:
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise jail.RequestError(f"unknown field(s): {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    if "code" not in data:
        raise jail.RequestError("code: missing (the snippet to run)")
    for name, kind, text in (("code", str, "a string"), ("language", str, "a string"), ("scope", dict, "an object"),
                             ("types", dict, "an object"), ("limits", dict, "an object"), ("blocks", list, "an array"),
                             ("context", dict, "an object")):
        if name in data and not isinstance(data[name], kind):
            raise jail.RequestError(f"{name}: must be {text}, not {type(data[name]).__name__}")
    return data


def _granted(names: list, registered: dict) -> dict:
    """{name: callable} of the blocks a request names (default none); an unknown name is a RequestError."""
    for name in names:
        if not isinstance(name, str):
            raise jail.RequestError(f"blocks: must be names (strings), not {type(name).__name__}")
    unknown = sorted(set(names) - set(registered))
    if unknown:
        known = ", ".join(sorted(registered)) if registered else "none are registered (JAIL_BLOCKS)"
        raise jail.RequestError(f"blocks: unknown block(s) {', '.join(map(repr, unknown))}; the blocks are: {known}")
    return {name: registered[name] for name in names}


def _call_counter(request: web.Request, on_line=None):
    """on_call for run_prepared: counts each call in /metrics and the request's
    stats; ``on_line`` (streams) gets its line."""
    metrics = request.app[METRICS]
    totals = request["calls"] = {"count": 0, "seconds": 0.0}

    def on_call(name, ms, outcome):
        metrics.block_calls.labels(name, outcome).inc()
        metrics.block_seconds.labels(name).inc(ms / 1000)
        totals["count"] += 1
        totals["seconds"] += ms / 1000
        if on_line is not None and outcome != "cancelled":
            on_line({"call": {"name": name, "ms": round(ms, 3), "ok": outcome == "ok"}})

    return on_call


def _server_timing(calls=None, **durations) -> str:
    timing = ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in durations.items())
    if calls is not None:  # a run given blocks: its calls and their time on the host
        timing += f', calls;dur={calls["seconds"] * 1000:.1f};desc="{calls["count"]} calls"'
    return timing


async def evaluate(request: web.Request) -> web.StreamResponse:
    settings, gate = request.app[SETTINGS], request.app[GATE]
    started = time.monotonic()
    fields = _fields(await _read_json(request, settings.max_body_bytes))
    request["language"] = fields.get("language", "python")
    # Over HTTP the scope is JSON: it goes to the snippet as it is (types={} not None).
    functions = _granted(fields.get("blocks", []), settings.block_functions)
    prepared = _run.prepare(fields["code"], request["language"], fields.get("scope", {}),
                            types=fields.get("types", {}), limits=fields.get("limits"), policy=settings.policy,
                            functions=functions, context=fields.get("context"), request_id=request["request_id"])
    async with gate.slot():
        request["queue_s"] = time.monotonic() - started
        if NDJSON in request.headers.get("Accept", ""):
            return await _stream(request, prepared)
        on_call = _call_counter(request) if functions else None
        run_started = time.monotonic()
        try:
            result = await _run.run_prepared(prepared, on_call=on_call)
        finally:
            request["run_s"] = time.monotonic() - run_started
    response = web.json_response(result_body(result))
    response.headers["Server-Timing"] = _server_timing(request.get("calls"), queue=request["queue_s"],
                                                       sandbox=request["run_s"], total=time.monotonic() - started)
    return response


async def _stream(request: web.Request, prepared) -> web.StreamResponse:
    """stdout/stderr lines as they come, then the body the plain call would answer."""
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    await response.prepare(request)
    lines = asyncio.Queue()
    decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
    pending = {"stdout": "", "stderr": ""}

    def on_output(stream, data):
        # Whole lines as they complete (print() writes its newline separately);
        # a long line without one goes out in pieces.
        text = pending[stream] + decoders[stream].decode(data)
        cut = text.rfind("\n") + 1 if len(text) < STREAM_PIECE else len(text)
        pending[stream] = text[cut:]
        if cut:
            lines.put_nowait({stream: text[:cut]})

    def flush():
        for stream, text in pending.items():
            text += decoders[stream].decode(b"", final=True)
            if text:
                lines.put_nowait({stream: text})

    async def write_lines():
        while (line := await lines.get()) is not None:
            await response.write(json.dumps(line).encode() + b"\n")

    def on_line(line):  # a call's line: what the snippet printed before it goes first, even unfinished
        for stream, text in pending.items():
            if text:
                lines.put_nowait({stream: text})
                pending[stream] = ""
        lines.put_nowait(line)

    writer = asyncio.create_task(write_lines())
    on_call = _call_counter(request, on_line) if prepared.functions else None
    run_started = time.monotonic()
    try:
        result = await _run.run_prepared(prepared, on_output=on_output, on_call=on_call)
        final, request["status"] = result_body(result), 200
    except jail.JailError as error:
        final, request["status"] = error_body(error), STATUS[_status_class(error)]
        request["outcome"] = _outcome(error)
    finally:
        request["run_s"] = time.monotonic() - run_started
        flush()
        lines.put_nowait(None)
        await writer
    await response.write(json.dumps(final).encode() + b"\n")
    await response.write_eof()
    return response


def _status_class(error):
    return next(cls for cls in STATUS if isinstance(error, cls))


def _outcome(error):
    return next(name for cls, name in OUTCOMES.items() if isinstance(error, cls))


@web.middleware
async def errors_logs_and_metrics(request: web.Request, handler):
    """Maps errors to DESIGN.md's table, logs one JSON line, counts the request."""
    request_id = request["request_id"] = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    started = time.monotonic()
    headers = {"X-Request-Id": request_id}
    task = asyncio.current_task()
    request.app[IN_FLIGHT].add(task)
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        if not request.app[STOPPING]:  # the client went away: its sandbox was killed; nobody to answer
            request["outcome"] = "client_gone"  # status 499, as nginx logs it
            _count_and_log(request, request_id, 499, started)
            raise
        # SIGTERM's grace period is over: the run was stopped, and is answered so.
        task.uncancel()
        request["outcome"] = "sandbox_error"
        response = web.json_response({"error": {"type": "SandboxError", "message":
                                      "the service is shutting down: the run was stopped"}}, status=503)
        response.force_close()
    except jail.JailError as error:
        cls = _status_class(error)
        request["outcome"] = _outcome(error)
        if isinstance(error, jail.Overloaded):
            headers["Retry-After"] = str(error.retry_after)
            request.app[METRICS].rejections.inc()
        response = web.json_response(error_body(error), status=STATUS[cls])
    except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413, 415
        request["outcome"] = "request_error"
        response = _problem(exc.status, exc.text if exc.text and not exc.text.startswith(str(exc.status))
                            else f"{exc.reason}: {request.method} {request.path}")
        if "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        if exc.status == 413:  # the rest of the body was not read: the connection cannot carry another request
            response.force_close()
    except Exception:  # never a traceback to the client
        log.exception("internal error")
        request["outcome"] = "sandbox_error"
        response = web.json_response({"error": {"type": "SandboxError", "message": "internal error"}}, status=500)
    finally:
        request.app[IN_FLIGHT].discard(task)
    response.headers.update(headers)
    _count_and_log(request, request_id, request.get("status", response.status), started)
    return response


def _count_and_log(request, request_id, status, started) -> None:
    """An /evaluate request's count in the metrics and its one JSON log line."""
    if request.path != "/evaluate":
        return
    outcome = request.get("outcome", "ok")
    language = request.get("language", "unknown")
    if language not in jail.LANGUAGES:
        language = "unknown"
    metrics = request.app[METRICS]
    metrics.requests.labels(language, outcome).inc()
    if "run_s" in request:
        metrics.duration.labels(language).observe(request["run_s"])
    log.info(json.dumps({
        "request_id": request_id, "method": request.method, "path": request.path,
        "status": status, "language": language, "outcome": outcome,
        "queue_ms": round(request.get("queue_s", 0) * 1000, 2), "run_ms": round(request.get("run_s", 0) * 1000, 2),
        "total_ms": round((time.monotonic() - started) * 1000, 2),
        **({"calls": request["calls"]["count"], "calls_ms": round(request["calls"]["seconds"] * 1000, 2)}
           if "calls" in request else {}),
    }))


async def healthz(request):
    return web.json_response({"status": "ok"})


async def readyz(request):
    """Ready when nothing is degraded (a background thread that failed just
    now, a pool that does not refill, a reaper behind, a zygote down: each
    named) and a real sandbox runs a trivial snippet on this host."""
    degraded = _supervise.degraded()
    if degraded:
        return web.json_response({"status": "degraded", "degraded": degraded}, status=503)
    try:
        result = await jail.run_async("return 1", policy=request.app[SETTINGS].policy)
    except jail.JailError as exc:
        return web.json_response({"status": "unavailable", "reason": str(exc)}, status=503)
    if result.output != 1:
        return web.json_response({"status": "unavailable", "reason": "a trivial snippet gave a wrong answer"},
                                 status=503)
    return web.json_response({"status": "ready"})


async def metrics(request):
    body = prometheus_client.generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def openapi(request):
    return web.json_response(OPENAPI)


async def blocks(request):
    """The registered building blocks: name, parameters (JSON Schema), docstring."""
    return web.json_response({"blocks": request.app[BLOCKS]})


def create_app(settings: Settings = None) -> web.Application:
    settings = settings or Settings()
    app = web.Application(middlewares=[errors_logs_and_metrics], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[GATE] = Gate(settings.max_concurrency, settings.queue_depth, settings.retry_after_s)
    app[METRICS] = Metrics(app[GATE])
    app[BLOCKS] = jail_blocks.catalogue(settings.block_functions)
    app.router.add_post("/evaluate", evaluate, expect_handler=_continue_unless_too_large)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/blocks", blocks)
    app[IN_FLIGHT] = set()
    app[STOPPING] = {}
    app.on_shutdown.append(_stop_in_flight)
    app.cleanup_ctx.append(_warm_pool)
    return app


async def _stop_in_flight(app):
    """SIGTERM: runs in flight get shutdown_timeout_s to finish, then are
    stopped (their sandboxes killed) and answered 503; the server then
    closes at once (aiohttp alone would wait that long a second time)."""
    pending = set(app[IN_FLIGHT])
    if pending:
        _, pending = await asyncio.wait(pending, timeout=app[SETTINGS].shutdown_timeout_s)
    if pending:
        app[STOPPING]["now"] = True
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=2)


async def _warm_pool(app):
    """Started and stopped with the service."""
    settings = app[SETTINGS]
    if settings.pool_python or settings.pool_javascript:
        _pool.configure(settings.policy, python=settings.pool_python, javascript=settings.pool_javascript,
                        max_size=settings.pool_max)
    yield
    if settings.pool_python or settings.pool_javascript:
        _pool.configure(settings.policy)


def main(argv=None):
    settings = from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # our own line per request instead
    # handler_cancellation: a client that goes away gets its sandbox killed.
    web.run_app(create_app(settings), host=settings.host, port=settings.port, handler_cancellation=True,
                shutdown_timeout=settings.shutdown_timeout_s, print=lambda text: log.info(text))


if __name__ == "__main__":
    main()
