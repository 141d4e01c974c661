"""The request body is read whole, up to the limit, from any client: with a
Content-Length or chunked, fast or slow, with `Expect: 100-continue` or not.
Over the limit is a 413 RequestError, without the rest being read into memory."""

import asyncio
import io
import json
import socket
import subprocess
import time

import aiohttp
import pytest

LIMIT = 8 * 1024 * 1024  # the default max_body_bytes
OVER = {"error": {"type": "RequestError", "message": f"the body is over the limit of {LIMIT} bytes"}}


PIECE = 'abcdefghij"\\/\u00e9\u20ac\U0001f600 \t\n0123456789'  # escaped now and then, some beyond ASCII


def long_string(body_bytes: int) -> str:
    """A string that makes a body of about body_bytes."""
    size = body_bytes * len(PIECE) // len(json.dumps(PIECE))
    return (PIECE * (size // len(PIECE) + 1))[:size]


def body_of(text: str) -> bytes:
    return json.dumps({"code": "return s", "scope": {"s": text}}).encode()


def file_of(text: str) -> io.BytesIO:
    """A body for the aiohttp client (which warns when given megabytes as bytes)."""
    return io.BytesIO(body_of(text))


def post(url, **kwargs):
    """(status, JSON body) of a POST /evaluate by the aiohttp client."""

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/evaluate", **kwargs) as response:
                return response.status, await response.json()

    return asyncio.run(go())


def raw_request(port, head: bytes, pieces=(), pause=0.0, timeout=20) -> tuple:
    """Sends head, then each piece after a pause; (status line, headers and body as bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head)
        for piece in pieces:
            time.sleep(pause)
            conn.sendall(piece)
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            data = conn.recv(65536)
            if not data:
                break
            received += data
    status, _, rest = received.partition(b"\r\n")
    return status.decode(), rest


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 100"):
        return _complete(body)
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    return length is not None and len(body) >= length


def json_of(rest: bytes):
    return json.loads(rest.partition(b"\r\n\r\n")[2])


def head_of(size: int, *extra: bytes) -> bytes:
    return (b"POST /evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n" % size + b"".join(line + b"\r\n" for line in extra) + b"\r\n")


@pytest.mark.parametrize("size", [300_000, 6_000_000])
def test_the_aiohttp_client_sends_a_long_scope_that_comes_back_exact(server, size):
    text = long_string(size)
    status, got = post(server.url, data=file_of(text), headers={"Content-Type": "application/json"})
    assert status == 200, str(got)[:300]
    assert got["output"] == text


def test_a_chunked_body_is_read_whole(server):
    text = long_string(1_000_000)
    body = body_of(text)

    async def chunks():
        for start in range(0, len(body), 65_536):
            yield body[start:start + 65_536]

    status, got = post(server.url, data=chunks(), headers={"Content-Type": "application/json"})
    assert status == 200, str(got)[:300]
    assert got["output"] == text


def test_a_slow_client_is_waited_for(server):
    body = body_of(long_string(200_000))
    pieces = [body[i:i + 50_000] for i in range(0, len(body), 50_000)]
    status, rest = raw_request(server.port, head_of(len(body)), pieces, pause=0.1)
    assert status == "HTTP/1.1 200 OK", rest[:300]
    assert json_of(rest)["output"] == long_string(200_000)


def test_expect_100_continue_gets_the_body_sent(server):
    text = long_string(2_000_000)
    status, got = post(server.url, data=file_of(text), headers={"Content-Type": "application/json"}, expect100=True)
    assert status == 200, str(got)[:300]
    assert got["output"] == text


def test_curl_sends_a_body_of_megabytes(server, tmp_path):
    text = long_string(3_000_000)
    (tmp_path / "body.json").write_bytes(body_of(text))
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
                          "--data-binary", f"@{tmp_path / 'body.json'}", server.url + "/evaluate"],
                         capture_output=True, timeout=60)
    answer, _, code = out.stdout.rpartition(b"\n")
    assert (out.returncode, code) == (0, b"200"), (out.stderr, answer[:300])
    assert json.loads(answer)["output"] == text


def test_a_body_of_exactly_the_limit_is_read(server):
    body = json.dumps({"code": "return len(s)", "scope": {"s": "x" * 1000}}).encode()
    body += b" " * (LIMIT - len(body))
    status, rest = raw_request(server.port, head_of(LIMIT), [body])
    assert status == "HTTP/1.1 200 OK" and json_of(rest) == {"output": 1000}


def test_a_chunked_body_just_over_the_limit_is_413(server):
    body = json.dumps({"code": "return len(s)", "scope": {"s": "x" * 1000}}).encode()
    body += b" " * (LIMIT + 1 - len(body))

    async def chunks():
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    status, got = post(server.url, data=chunks(), headers={"Content-Type": "application/json"})
    assert (status, got) == (413, OVER)


def test_a_content_length_over_the_limit_is_413_before_the_body_is_sent(server):
    started = time.monotonic()
    status, rest = raw_request(server.port, head_of(1 << 30), [b'{"code": '], timeout=5)
    assert status == "HTTP/1.1 413 Request Entity Too Large" and json_of(rest) == OVER
    # Announced with Expect: refused at once, and no "100 Continue" asks for the body.
    status, rest = raw_request(server.port, head_of(1 << 30, b"Expect: 100-continue"), timeout=5)
    assert status == "HTTP/1.1 413 Request Entity Too Large" and json_of(rest) == OVER
    assert time.monotonic() - started < 2
