"""Building blocks over HTTP: JAIL_BLOCKS, GET /blocks, "blocks" and "context" in
/evaluate, streamed call lines, Server-Timing and /metrics, all checked against
the OpenAPI document."""

import json
import re
import subprocess
import sys

import pytest
from test_service import conforms

FIXTURE = "tests.http.blocks_fixture:BLOCKS"


@pytest.fixture(scope="module")
def blocks_server():
    from conftest import Server

    running = Server(blocks=FIXTURE)
    yield running
    code, out = running.stop()
    assert code == 0, out[-2000:]


def test_blocks_lists_names_parameters_and_docstrings(blocks_server):
    status, _, raw = blocks_server.request("GET", "/blocks")
    body = json.loads(raw)
    assert status == 200
    conforms(body, "BlockList")
    by_name = {block["name"]: block for block in body["blocks"]}
    assert sorted(by_name) == ["add", "fail", "stamp", "tenant"]
    assert by_name["add"] == {
        "name": "add", "description": "Adds two integers.", "positional": ["a", "b"], "returns": {"type": "integer"},
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 1}},
                       "required": ["a"], "additionalProperties": False}}
    assert by_name["tenant"]["parameters"]["properties"] == {}  # context is the host's, never listed
    stamp = by_name["stamp"]
    assert stamp["parameters"]["properties"]["when"]["format"] == "date-time"
    assert stamp["parameters"]["properties"]["tags"] == {"anyOf": [{"type": "array", "items": {"type": "string"}},
                                                                   {"type": "null"}], "default": None}
    assert stamp["parameters"]["additionalProperties"] is True
    assert stamp["returns"]["additionalProperties"]["format"] == "date-time"


@pytest.mark.parametrize("language,code", [
    ("python", "return add(2, b=3), tenant(), stamp(when)"),
    ("javascript", "return [await add(2, 3), await tenant(), await stamp(when)]"),
])
def test_evaluate_calls_the_blocks_it_names_with_its_context(blocks_server, language, code):
    body = {"code": code, "language": language, "blocks": ["add", "tenant", "stamp"], "context": {"tenant": "acme"},
            "scope": {"when": "2024-03-01T12:00:00Z"}, "types": {"/when": "date"}}
    status, headers, answer = blocks_server.evaluate(body)
    assert status == 200, answer
    conforms(answer, "EvaluateResponse")
    assert answer["output"][:2] == [5, "acme"] and answer["types"] == {"/2/when": "date"}
    timing = headers["Server-Timing"]
    assert re.search(r'calls;dur=[0-9.]+;desc="3 calls"', timing), timing


def test_a_run_without_blocks_has_no_calls_timing(blocks_server):
    status, headers, answer = blocks_server.evaluate({"code": "return 1"})
    assert status == 200 and "calls" not in headers["Server-Timing"]


@pytest.mark.parametrize("body,text", [
    ({"code": "return 1", "blocks": ["nope"]}, "blocks: unknown block(s) 'nope'; the blocks are: add, fail, stamp, tenant"),
    ({"code": "return 1", "blocks": "add"}, "blocks: must be an array"),
    ({"code": "return 1", "blocks": [1]}, "blocks: must be names"),
    ({"code": "return 1", "blocks": ["add"], "context": [1]}, "context: must be an object"),
    ({"code": "return 1", "blocks": ["add"], "scope": {"add": 1}}, "also a scope key"),
    ({"code": "return 1", "limits": {"calls": 0}}, "limits.calls: must be a positive integer"),
])
def test_bad_blocks_fields_are_400(blocks_server, body, text):
    status, _, answer = blocks_server.evaluate(body)
    assert status == 400 and answer["error"]["type"] == "RequestError" and text in answer["error"]["message"], answer
    conforms(answer, "ErrorResponse")


def test_a_block_not_granted_is_not_a_name_of_the_snippet(blocks_server):
    status, _, answer = blocks_server.evaluate({"code": "return add(1)", "blocks": ["tenant"]})
    assert status == 422 and answer["error"]["name"] == "NameError", answer


def test_call_limits_and_host_errors_over_http(blocks_server):
    status, _, answer = blocks_server.evaluate({"code": "for i in range(3):\n    add(i)", "blocks": ["add"],
                                                "limits": {"calls": 2}})
    assert status == 422 and answer["error"]["type"] == "CallLimitExceeded", answer
    conforms(answer, "ErrorResponse")
    status, _, answer = blocks_server.evaluate({"code": "x = 1\nfail('no such row')", "blocks": ["fail"]})
    assert status == 422 and answer["error"]["name"] == "ValueError" and answer["error"]["line"] == 2
    assert answer["error"]["message"] == "ValueError: no such row"


def test_streams_carry_a_line_per_call_and_metrics_count_them(blocks_server):
    code = "print('before')\nadd(1)\ntry:\n    fail('x')\nexcept ValueError:\n    pass\nreturn 7"
    status, _, raw = blocks_server.request("POST", "/evaluate", {"code": code, "blocks": ["add", "fail"]},
                                           headers={"Accept": "application/x-ndjson"})
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert status == 200 and lines[0] == {"stdout": "before\n"} and lines[-1] == {"output": 7, "stdout": "before\n"}
    calls = [line["call"] for line in lines if "call" in line]
    assert [(c["name"], c["ok"]) for c in calls] == [("add", True), ("fail", False)]
    for line in lines:
        if "call" in line:
            conforms(line, "CallLine")
    _, _, metrics = blocks_server.request("GET", "/metrics")
    text = metrics.decode()
    assert re.search(r'jail_block_calls_total\{block="add",outcome="ok"\} [1-9]', text)
    assert re.search(r'jail_block_calls_total\{block="fail",outcome="error"\} [1-9]', text)
    assert 'jail_block_call_seconds_total{block="add"}' in text


@pytest.mark.parametrize("setting,text", [
    ("nowhere.at_all:BLOCKS", "cannot import nowhere.at_all"),
    ("tests.http.blocks_fixture", "expected package.module:attribute"),
    ("tests.http.blocks_fixture:MISSING", "has no attribute 'MISSING'"),
    ("tests.http.blocks_fixture:NOT_A_MAPPING", "not a mapping of names to callables"),
    ("tests.http.blocks_fixture:BAD_NAME", "the name 'class' cannot be used"),
])
def test_a_bad_blocks_setting_stops_the_start_with_a_clear_message(setting, text):
    result = subprocess.run([sys.executable, "-m", "jail_http", "--port", "1"], env={"JAIL_BLOCKS": setting},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and text in result.stderr and "JAIL_BLOCKS=" in result.stderr, result.stderr


# -- the example module (examples/blocks.py), on a real SQLite file ---------------------------

@pytest.fixture(scope="module")
def example(tmp_path_factory):
    from conftest import Server

    path = tmp_path_factory.mktemp("example") / "kv.sqlite"
    running = Server(blocks="examples.blocks:BLOCKS", example_db=str(path))
    running.db = path
    yield running
    code, out = running.stop()
    assert code == 0, out[-2000:]


KV = ["kv_get", "kv_set", "kv_delete", "kv_keys"]


def as_tenant(server, tenant, code, language="python", blocks=KV, **fields):
    body = {"code": code, "language": language, "blocks": blocks, **fields}
    if tenant is not None:
        body["context"] = {"tenant": tenant}
    return server.evaluate(body)


@pytest.mark.parametrize("language,write,read", [
    ("python", "kv_set('k', {'when': when, 'n': 2**70, 'raw': b'\\x01'})\nreturn kv_keys()",
     "v = kv_get('k')\nreturn v and [type(v['when']).__name__, v['n'], kv_keys('')]"),
    ("javascript", "await kv_set('k', {when, n: 2n ** 70n, raw: new Uint8Array([1])})\nreturn await kv_keys()",
     "const v = await kv_get('k')\nreturn v && [v.when instanceof Date ? 'datetime' : '?', v.n, await kv_keys('')]"),
])
def test_each_tenant_has_its_own_rows_in_the_database_file(example, language, write, read):
    import sqlite3

    a, b = f"tenant-a-{language}", f"tenant-b-{language}"
    scope = {"scope": {"when": "2024-03-01T12:00:00Z"}, "types": {"/when": "date"}}
    status, _, answer = as_tenant(example, a, write, language, **scope)
    assert status == 200 and answer["output"] == ["k"], answer
    status, _, answer = as_tenant(example, a, read, language)
    assert answer["output"] == ["datetime", "1180591620717411303424", ["k"]] and answer["types"] == {"/1": "bigint"}
    status, _, answer = as_tenant(example, b, read, language)  # another tenant: nothing
    assert status == 200 and answer["output"] is None, answer
    with sqlite3.connect(example.db) as db:  # the rows, in the real file, keyed by tenant
        rows = db.execute("SELECT tenant, key FROM kv WHERE tenant IN (?, ?)", (a, b)).fetchall()
    assert rows == [(a, "k")]
    status, _, answer = as_tenant(example, a, {"python": "return kv_delete('k'), kv_get('k')",
                                               "javascript": "return [await kv_delete('k'), await kv_get('k')]"}
                                  [language], language)
    assert answer["output"] == [True, None]


def test_the_store_needs_a_tenant_and_checks_its_arguments(example):
    status, _, answer = as_tenant(example, None, "return kv_get('k')")
    assert status == 422 and answer["error"]["name"] == "PermissionError" and "tenant" in answer["error"]["message"]
    status, _, answer = as_tenant(example, "t", "try:\n    kv_set('', 1)\nexcept ValueError as e:\n    return str(e)")
    assert answer["output"] == "a key is a string of 1 to 256 characters"
    status, _, answer = as_tenant(example, "t", "kv_set('big', 'x' * 70000)")
    assert status == 422 and answer["error"]["name"] == "ValueError" and "over 65536 bytes" in answer["error"]["message"]


def test_the_clock_and_the_lookup(example):
    status, _, answer = example.evaluate({"code": "return now(), country('fr'), country('zz'), len(country_codes())",
                                          "blocks": ["now", "country", "country_codes"]})
    assert status == 200 and answer["types"] == {"/0": "date"}, answer
    assert answer["output"][1] == {"name": "France", "capital": "Paris", "currency": "EUR", "population": 68170228,
                                   "code": "FR"}
    assert answer["output"][2:] == [None, 10]
    status, _, answer = example.evaluate({"code": "return (await now()) instanceof Date", "language": "javascript",
                                          "blocks": ["now"]})
    assert answer["output"] is True
    _, _, raw = example.request("GET", "/blocks")
    names = [block["name"] for block in json.loads(raw)["blocks"]]
    assert names == sorted(KV + ["country", "country_codes", "now"])


def test_the_example_without_its_database_setting_stops_the_start():
    result = subprocess.run([sys.executable, "-m", "jail_http", "--port", "1"],
                            env={"JAIL_BLOCKS": "examples.blocks:BLOCKS"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "set JAIL_EXAMPLE_DB" in result.stderr, result.stderr
