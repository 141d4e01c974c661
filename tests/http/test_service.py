"""POST /evaluate and the operations endpoints, over HTTP against a live server."""

import asyncio
import io
import json
import pathlib
import socket
import time

import aiohttp
import jsonschema
import pytest

from host import sandbox_processes

OPENAPI = json.loads((pathlib.Path(__file__).parents[2] / "http" / "openapi.json").read_text())


def conforms(body, schema_name):
    """The body matches the OpenAPI document's schema (refs resolved inside the document)."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": OPENAPI["components"]}
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


# -- the seed's four curl examples -----------------------------------------------------------

@pytest.mark.parametrize("body,status,expected", [
    ({"code": "return 1+1", "language": "python"}, 200, {"output": 2}),
    ({"code": "Invalid code!", "language": "python"}, 422, None),
    ({"code": "return x", "language": "javascript", "scope": {"x": 2}}, 200, {"output": 2}),
    ({"code": "return x + 3", "language": "javascript", "scope": {"x": 2}}, 200, {"output": 5}),
])
def test_seed_examples(server, body, status, expected):
    got_status, headers, got = server.evaluate(body)
    assert got_status == status
    if expected is not None:
        assert got == expected
        assert "sandbox;dur=" in headers["Server-Timing"]
        conforms(got, "EvaluateResponse")
    else:
        assert got["error"]["type"] == "ExecutionError"
        assert got["error"]["message"] == "SyntaxError: invalid syntax"
        assert (got["error"]["line"], got["error"]["column"]) == (1, 9)
        conforms(got, "ErrorResponse")


def test_optional_fields_appear_only_with_content(server):
    status, _, body = server.evaluate({"code": "print('hi')\nreturn 2 ** 60"})
    assert body == {"output": "1152921504606846976", "types": {"": "bigint"}, "stdout": "hi\n"}
    status, _, body = server.evaluate({"code": "return [when, n]", "language": "javascript",
                                       "scope": {"when": "2024-03-01T12:00:00Z", "n": "12345678901234567890"},
                                       "types": {"/when": "date", "/n": "bigint"}})
    assert body == {"output": ["2024-03-01T12:00:00.000Z", "12345678901234567890"],
                    "types": {"/0": "date", "/1": "bigint"}}


# -- every row of the error table ------------------------------------------------------------

@pytest.mark.parametrize("body,fragment", [
    ({"language": "python"}, "code: missing"),
    ({"code": 1}, "code: must be a string"),
    ({"code": "return 1", "language": "ruby"}, "unknown language 'ruby'"),
    ({"code": "return 1", "language": 5}, "language: must be a string"),
    ({"code": "return 1", "scope": [1]}, "scope: must be an object"),
    ({"code": "return 1", "scope": {"not-an-id": 1}}, "'not-an-id' is not a Python identifier"),
    ({"code": "return 1", "scope": {"class": 1}}, "'class' is a reserved word in Python"),
    ({"code": "return 1", "language": "javascript", "scope": {"await": 1}}, "reserved word in JavaScript"),
    ({"code": "return 1", "scope": {"x": "1.5"}, "types": {"/x": "bigint"}}, "types: "),
    ({"code": "return 1", "scope": {"x": 1}, "types": {"/x": "money"}}, "unknown type 'money'"),
    ({"code": "return 1", "scope": {"x": "2024-01-01T00:00:00"}, "types": {"/x": "date"}}, "types: "),
    ({"code": "return 1", "limits": {"timeout_ms": -1}}, "limits.timeout_ms: must be a positive integer"),
    ({"code": "return 1", "limits": {"memory_mb": 1}}, "limits.memory_mb: must be at least 64"),
    ({"code": "return 1", "limits": {"cpu": 1}}, "limits: unknown field(s) cpu"),
    ({"code": "return 1", "extra": 1, "more": 2}, "unknown field(s): extra, more"),
])
def test_bad_fields_are_400_naming_the_field(server, body, fragment):
    status, _, got = server.evaluate(body)
    assert status == 400 and got["error"]["type"] == "RequestError"
    assert fragment in got["error"]["message"], got
    conforms(got, "ErrorResponse")


@pytest.mark.parametrize("raw,content_type,status,fragment", [
    (b"", "application/json", 400, "the body is empty"),
    (b"not json", "application/json", 400, "not valid JSON"),
    (b'{"code": "return 1"', "application/json", 400, "not valid JSON"),
    (b"[1, 2]", "application/json", 400, "must be a JSON object, not list"),
    (b'"text"', "application/json", 400, "must be a JSON object, not str"),
    (b'{"code": "\xff\xfe"}', "application/json", 400, "not valid UTF-8 (byte 10)"),
    (b'{"code": "return x", "scope": {"x": NaN}}', "application/json", 400, "NaN is not a JSON value"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "not valid JSON"),
    (b'{"code": "return 1"}', "text/plain", 415, "Content-Type must be application/json"),
    (b'{"code": "return 1"}', None, 415, "Content-Type must be application/json"),
    (b"x" * (8 * 1024 * 1024 + 1), "application/json", 413, "over the limit of 8388608 bytes"),
])
def test_malformed_bodies_are_4xx_never_500(server, raw, content_type, status, fragment):
    headers = {"Content-Type": content_type} if content_type else {}
    got_status, _, got = server.request("POST", "/evaluate", raw, headers=headers)
    got = json.loads(got)
    assert got_status == status and got["error"]["type"] == "RequestError"
    assert fragment in got["error"]["message"], got


@pytest.mark.parametrize("body,error_type,fragment", [
    ({"code": "1 / 0"}, "ExecutionError", "ZeroDivisionError: division by zero"),
    ({"code": "while True: pass", "limits": {"timeout_ms": 300}}, "TimeLimitExceeded", "more than 300 ms"),
    ({"code": "x = bytearray(10 ** 9)", "limits": {"memory_mb": 64}}, "MemoryLimitExceeded", "more than 64 MiB"),
    ({"code": "while (true) console.log('x'.repeat(1000))", "language": "javascript"}, "OutputLimitExceeded",
     "stdout and stderr went over"),
])
def test_execution_errors_are_422(server, body, error_type, fragment):
    status, _, got = server.evaluate(body)
    assert status == 422 and got["error"]["type"] == error_type and fragment in got["error"]["message"]
    conforms(got, "ErrorResponse")


def test_limits_above_the_maximum_are_capped(make_server):
    capped = make_server(max_timeout_ms=500)
    started = time.monotonic()
    status, _, got = capped.evaluate({"code": "while True: pass", "limits": {"timeout_ms": 60_000}})
    assert status == 422 and got["error"]["message"].endswith("more than 500 ms")
    assert time.monotonic() - started < 3


def test_overloaded_is_429_with_retry_after(make_server):
    small = make_server(max_concurrency=1, queue_depth=0)

    async def two():
        async with aiohttp.ClientSession() as session:
            slow = asyncio.ensure_future(session.post(small.url + "/evaluate",
                                                      json={"code": "import time\ntime.sleep(1)\nreturn 1"}))
            await asyncio.sleep(0.3)
            async with session.post(small.url + "/evaluate", json={"code": "return 2"}) as second:
                rejected = (second.status, second.headers.get("Retry-After"), await second.json())
            first = await slow
            return rejected, (first.status, await first.json())

    (status, retry_after, body), first = asyncio.run(two())
    assert status == 429 and retry_after == "1" and body["error"]["type"] == "Overloaded"
    conforms(body, "ErrorResponse")
    assert first == (200, {"output": 1})


def test_sandbox_failure_is_500(make_server):
    no_node = make_server(path="/nonexistent")  # JavaScript sandboxes cannot be made without node
    status, _, got = no_node.evaluate({"code": "return 1", "language": "javascript"})
    assert status == 500 and got["error"]["type"] == "SandboxError"
    assert "node" in got["error"]["message"]
    conforms(got, "ErrorResponse")
    assert no_node.evaluate({"code": "return 1"})[2] == {"output": 1}  # python still works


# -- streaming -------------------------------------------------------------------------------

def test_streamed_lines_arrive_before_the_snippet_finishes(server):
    code = "import time\nfor i in range(10):\n    print('line', i)\n    time.sleep(0.1)\nreturn 'done'"
    arrivals = []
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        body = json.dumps({"code": code}).encode()
        conn.sendall(b"POST /evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Accept: application/x-ndjson\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        stream = conn.makefile("rb")
        assert stream.readline().startswith(b"HTTP/1.1 200")
        while stream.readline() not in (b"\r\n", b""):
            pass
        while True:
            size = int(stream.readline().strip() or b"0", 16)  # chunked transfer encoding
            if size == 0:
                break
            chunk = stream.read(size + 2)[:-2]
            for line in chunk.splitlines():
                arrivals.append((time.monotonic(), json.loads(line)))
    kinds = [list(body)[0] for _, body in arrivals]
    assert kinds[-1] == "output" and arrivals[-1][1] == {"output": "done", "stdout": "".join(
        f"line {i}\n" for i in range(10))}
    assert kinds[:-1] == ["stdout"] * 10  # one whole line each, in order
    assert arrivals[0][1] == {"stdout": "line 0\n"}
    # The first line came while the snippet still had 9 lines (0.9 s of sleeps) to go.
    assert arrivals[0][0] < arrivals[-1][0] - 0.5


def test_streamed_errors_end_with_the_error_body(server):
    status, headers, raw = server.request("POST", "/evaluate", {"code": "print('a')\n1/0"},
                                          headers={"Accept": "application/x-ndjson"})
    lines = [json.loads(line) for line in raw.splitlines()]
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    assert lines[0] == {"stdout": "a\n"}
    assert lines[-1]["error"]["message"] == "ZeroDivisionError: division by zero" and lines[-1]["stdout"] == "a\n"


# -- back-pressure, disconnects, shutdown ----------------------------------------------------

def test_200_concurrent_requests_get_an_answer_or_429_and_leave_nothing(make_server):
    busy = make_server(max_concurrency=4, queue_depth=50)

    async def burst():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(i):
                language = "python" if i % 2 else "javascript"
                async with session.post(busy.url + "/evaluate", json={"code": "return x * 2", "language": language,
                                                                      "scope": {"x": i}},
                                        timeout=aiohttp.ClientTimeout(total=120)) as response:
                    return i, response.status, await response.json()
            return await asyncio.gather(*(one(i) for i in range(200)))

    started = time.monotonic()
    results = asyncio.run(burst())
    assert time.monotonic() - started < 120
    answered = [(i, body) for i, status, body in results if status == 200]
    rejected = [body for _, status, body in results if status == 429]
    assert len(answered) + len(rejected) == 200
    assert all(body == {"output": i * 2} for i, body in answered)
    assert all(body["error"]["type"] == "Overloaded" for body in rejected)
    assert len(answered) >= 54  # 4 running + 50 queued at the very least
    time.sleep(0.2)
    assert sandbox_processes() == []


def test_a_client_that_disconnects_gets_its_sandbox_killed(server):
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        body = json.dumps({"code": "import time\ntime.sleep(20)", "limits": {"timeout_ms": 30000}}).encode()
        conn.sendall(b"POST /evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 10
        while not sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandbox_processes(), "the sandbox never started"
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


def sigterm_during(server, code, after_s):
    """SIGTERM the server after_s into a run of code; its answer, or None if
    the connection was cut."""

    async def in_flight():
        async with aiohttp.ClientSession() as session:
            task = asyncio.ensure_future(session.post(server.url + "/evaluate", json={"code": code}))
            await asyncio.sleep(after_s)
            server.terminate()
            try:
                response = await task
                return response.status, await response.json()
            except aiohttp.ClientError:
                return None

    return asyncio.run(in_flight())


def test_sigterm_finishes_in_flight_runs_and_exits_0(make_server):
    server = make_server(shutdown_timeout_s=5)
    assert sigterm_during(server, "import time\ntime.sleep(0.5)\nreturn 7", 0.2) == (200, {"output": 7})
    code, out = server.stop()
    assert code == 0, out[-2000:]
    assert sandbox_processes() == []


def test_sigterm_kills_runs_that_outlast_the_bound(make_server):
    server = make_server(shutdown_timeout_s=0.5)
    started = time.monotonic()
    sigterm_during(server, "import time\ntime.sleep(20)", 0.3)
    code, out = server.stop()
    assert code == 0, out[-2000:]
    assert time.monotonic() - started < 5
    assert sandbox_processes() == []


def test_sigterm_ends_within_its_timeout_and_answers_the_runs_it_stops(make_server):
    """The soak found the server exiting ~22 s after SIGTERM with a 10 s
    timeout: aiohttp waited the timeout once for the handler, then again after
    cancelling it; and the stopped run was cut without an answer."""
    server = make_server(shutdown_timeout_s=3)
    terminated_at = {}

    async def in_flight():
        async with aiohttp.ClientSession() as session:
            body = {"code": "import time\ntime.sleep(25)", "limits": {"timeout_ms": 30000}}
            task = asyncio.ensure_future(session.post(server.url + "/evaluate", json=body))
            await asyncio.sleep(0.5)
            server.terminate()
            terminated_at["t"] = time.monotonic()
            response = await task
            return response.status, await response.json()

    status, body = asyncio.run(in_flight())
    code, out = server.stop()
    exited_after = time.monotonic() - terminated_at["t"]
    assert code == 0, out[-2000:]
    assert status == 503 and body["error"]["type"] == "SandboxError" and "shutting down" in body["error"]["message"]
    assert exited_after < 3 + 1.5, f"exited {exited_after:.1f} s after SIGTERM"
    assert sandbox_processes() == []


def test_a_body_refused_before_it_is_sent_closes_the_connection(server):
    """The soak found a 413 answered to `Expect: 100-continue` leaving the
    connection open: the server then read the client's next request on it as
    the refused body. The answer must say the connection ends there."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        started = time.monotonic()
        conn.sendall(b"POST /evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999\r\nExpect: 100-continue\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        head = answer.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 413") and time.monotonic() - started < 2
    assert "\r\nConnection: close" in head

    async def reuse():  # a real client then takes a new connection for its next request
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/evaluate", data=io.BytesIO(b"x" * (9 * 1024 * 1024)),
                                    headers={"Content-Type": "application/json"}, expect100=True) as response:
                assert response.status == 413
            async with session.post(server.url + "/evaluate", json={"code": "return 5"}) as response:
                return response.status, await response.json()

    assert asyncio.run(asyncio.wait_for(reuse(), 10)) == (200, {"output": 5})


def test_a_client_that_goes_away_is_logged_and_counted(make_server):
    server = make_server()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        body = json.dumps({"code": "import time\ntime.sleep(20)", "limits": {"timeout_ms": 30000}}).encode()
        conn.sendall(b"POST /evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Request-Id: gone-1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(1)
    time.sleep(0.5)
    metrics = server.request("GET", "/metrics")[2].decode()
    assert 'jail_requests_total{language="python",outcome="client_gone"} 1.0' in metrics
    _, out = server.stop()
    line = next(json.loads(text) for text in out.splitlines() if '"gone-1"' in text)
    assert line["outcome"] == "client_gone" and line["status"] == 499


# -- operations -----------------------------------------------------------------------------

def test_health_and_readiness(server):
    assert server.request("GET", "/healthz")[0] == 200
    status, _, body = server.request("GET", "/readyz")
    assert status == 200 and json.loads(body) == {"status": "ready"}


def test_metrics_in_prometheus_format(server):
    server.evaluate({"code": "return 1"})
    server.evaluate({"code": "1/0", "language": "python"})
    status, headers, body = server.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'jail_requests_total{language="python",outcome="ok"}' in text
    assert 'jail_requests_total{language="python",outcome="execution_error"}' in text
    for name in ("jail_run_duration_seconds_bucket", "jail_sandboxes_running", "jail_queue_depth",
                 "jail_rejections_total"):
        assert name in text


def test_openapi_document_is_served_and_valid(server):
    from openapi_spec_validator import validate

    status, _, body = server.request("GET", "/openapi.json")
    document = json.loads(body)
    assert status == 200 and document == OPENAPI and document["openapi"].startswith("3.1")
    validate(document)


def test_one_json_log_line_per_request_without_code_or_scope(make_server):
    server = make_server()
    server.evaluate({"code": "return secret_marker_1", "scope": {"secret_marker_1": "secret_marker_2"}},
                    headers={"X-Request-Id": "req-42"})
    code, out = server.stop()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ours = [line for line in lines if line["request_id"] == "req-42"]
    assert len(ours) == 1
    assert ours[0]["status"] == 200 and ours[0]["language"] == "python" and ours[0]["outcome"] == "ok"
    assert {"queue_ms", "run_ms", "total_ms"} <= set(ours[0])
    assert "secret_marker" not in out


# Runs the server with user namespaces refused, as a kernel that disables them would.
NO_USERNS = """
import errno, os, sys
import pyseccomp as seccomp
f = seccomp.SyscallFilter(seccomp.ALLOW)
f.add_rule(seccomp.ERRNO(errno.EPERM), "clone3")
f.add_rule(seccomp.ERRNO(errno.EPERM), "unshare")
f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, 0x10000000, 0x10000000))
f.load()
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_readyz_is_503_with_the_reason_when_sandboxes_cannot_start(make_server):
    import sys

    broken = make_server(prefix=(sys.executable, "-c", NO_USERNS))
    status, _, body = broken.request("GET", "/readyz")
    body = json.loads(body)
    assert status == 503 and body["status"] == "unavailable"
    assert body["reason"].startswith("clone: EPERM") and "user namespaces are disabled" in body["reason"]
    assert broken.request("GET", "/healthz")[0] == 200  # the process itself still answers
    status, _, body = broken.evaluate({"code": "return 1"})
    assert status == 500 and body["error"]["type"] == "SandboxError"


def _metric(text, name, language):
    line = next((l for l in text.splitlines() if l.startswith(f'{name}{{language="{language}"}}')), None)
    return float(line.split()[-1]) if line else 0.0


def test_the_warm_pool_is_on_by_default_and_in_metrics(make_server):
    server = make_server(pool_python=None, pool_javascript=None)  # no setting: the service's default
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = server.request("GET", "/metrics")[2].decode()
        if all(_metric(text, "jail_pool_ready", language) >= 2 for language in ("python", "javascript")):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the pool never filled:\n{text}")
    for language in ("python", "javascript"):
        assert server.evaluate({"code": "return 1 + 1", "language": language})[2] == {"output": 2}
    text = server.request("GET", "/metrics")[2].decode()
    assert all(_metric(text, "jail_pool_hits_total", language) >= 1 for language in ("python", "javascript")), text
    code, out = server.stop()
    assert code == 0, out[-2000:]
    assert sandbox_processes() == []  # the pool's sandboxes and zygotes went with the service
