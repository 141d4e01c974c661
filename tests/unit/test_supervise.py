"""Every background thread has an owner (jail/_supervise.py): an exception is
logged with its traceback, counted, and the thread goes on; a degraded part is
named until it recovers by itself."""

import asyncio
import logging
import threading
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

import jail
from jail import _pool, _process, _supervise


@pytest.fixture(autouse=True)
def quick_recovery(monkeypatch):
    monkeypatch.setattr(_supervise, "RESTART_PAUSE", (0.01, 0.05))
    monkeypatch.setattr(_supervise, "RECENT", 0.5)
    yield
    with _supervise._lock:
        _supervise._last_error.clear()


def test_a_supervised_thread_that_raises_is_logged_counted_and_started_again(caplog):
    calls = []

    def work():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(f"failure {len(calls)}")

    before = _supervise.ERRORS["test-worker"]
    with caplog.at_level(logging.ERROR, logger="jail"):
        _supervise.start("test-worker", work).join(5)
    assert len(calls) == 3  # started again after each failure, until its work returned
    assert _supervise.ERRORS["test-worker"] == before + 2
    assert "failure 2" in caplog.text and "Traceback" in caplog.text
    assert "thread test-worker" in _supervise.degraded()
    time.sleep(0.6)
    assert "thread test-worker" not in _supervise.degraded()  # recovered by itself


class _Clock:
    """time.monotonic that moves on 2 ms at every reading (a loaded host)."""

    def __init__(self):
        self.now = time.monotonic()

    def __call__(self):
        self.now += 0.002
        return self.now


class _Fake:
    def __init__(self, fail=False):
        self.fail, self.ended = fail, threading.Event()

    def end(self):
        self.ended.set()
        if self.fail:
            raise OSError("a broken host")


def test_the_reaper_survives_its_clock_moving_between_two_readings(monkeypatch):
    """The finding: `if due > now(): sleep(due - now())` slept a negative time
    (ValueError) when the clock passed the due time between the two readings,
    and the reaper thread died: nothing was reaped again."""
    monkeypatch.setattr(_process.time, "monotonic", _Clock())
    monkeypatch.setattr(_process, "SETTLE", 0.003)  # due between the reaper's two readings
    reaper = _process._Reaper()
    for _ in range(5):
        sandbox = _Fake()
        reaper.end_later(sandbox)
        assert sandbox.ended.wait(2)
    assert reaper.settle(2)
    assert not _supervise.ERRORS["jail-reaper"]


def test_a_sandbox_whose_end_fails_is_counted_and_the_reaper_goes_on():
    reaper = _process._Reaper()
    before = _supervise.ERRORS["jail-reaper"]
    broken, fine = _Fake(fail=True), _Fake()
    reaper.end_later(broken)
    reaper.end_later(fine)
    assert reaper.settle(5) and fine.ended.is_set()
    assert _supervise.ERRORS["jail-reaper"] == before + 1


def test_a_pool_that_cannot_refill_is_degraded_and_recovers(monkeypatch):
    monkeypatch.setattr(_pool, "STALLED", 0.3)
    monkeypatch.setattr(_supervise, "RECENT", 2.0)  # longer than the refill's 1 s pause after a failure
    real_make = _pool.WarmPool._make
    broken = {"on": True}

    def make(self, language, policy, count, deliver):
        if broken["on"]:
            raise OSError("no cgroup can be made")
        return real_make(self, language, policy, count, deliver)

    monkeypatch.setattr(_pool.WarmPool, "_make", make)
    jail.warm_pool(python=1)
    try:
        deadline = time.monotonic() + 5
        while not {"warm pool", "thread jail-warm-pool-python"} <= set(_supervise.degraded()) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        why = _supervise.degraded()
        assert "python: 0 of 1 warm sandboxes ready" in why["warm pool"]
        assert "no cgroup can be made" in why["thread jail-warm-pool-python"]
        broken["on"] = False
        deadline = time.monotonic() + 10
        while _supervise.degraded() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _supervise.degraded() == {}
        assert len(_pool.POOL.idle_pids_of("python")) == 1
    finally:
        jail.warm_pool()


def test_readyz_names_what_is_degraded_and_metrics_count_thread_errors():
    from jail_http.server import create_app
    from jail_http.settings import Settings

    state = {"why": "the test broke it"}
    _supervise.watch("test part", lambda: state["why"])
    _supervise.failed("test-thread", RuntimeError("boom"))

    async def check():
        async with TestClient(TestServer(create_app(Settings(pool_python=0, pool_javascript=0)))) as client:
            response = await client.get("/readyz")
            body = await response.json()
            assert response.status == 503 and body["degraded"]["test part"] == "the test broke it"
            assert "boom" in body["degraded"]["thread test-thread"]
            metrics = await (await client.get("/metrics")).text()
            assert 'jail_background_errors_total{thread="test-thread"}' in metrics
            assert 'jail_degraded{part="test part"} 1.0' in metrics
            state["why"] = None
            await asyncio.sleep(0.6)
            response = await client.get("/readyz")
            assert response.status == 200, await response.text()

    try:
        asyncio.run(check())
    finally:
        with _supervise._lock:
            _supervise._checks.pop("test part", None)
