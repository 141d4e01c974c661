"""Fixtures of the chaos suite (docs/chaos.md): a live service per test, at rest
with its pool full before the fault, and a steady load of real clients."""

import pytest

import live


@pytest.fixture
def make_service():
    """make_service(**settings) -> a live.Service at rest, its pool full (its
    live.Snapshot then is service.baseline); killed after the test if it still runs."""
    started = []

    def make(**settings):
        service = live.Service(**settings)
        started.append(service)
        baseline = live.at_rest(service, timeout=30)
        problems = baseline.problems()
        assert not problems and len(baseline.zygotes) == 2, (
            f"the service never came to rest with its pool full: {problems}, zygotes {baseline.zygotes}\n"
            + service.output()[-3000:])
        service.baseline = baseline
        return service

    yield make
    for service in started:
        if not service.stopped:
            service.kill()


@pytest.fixture
def service(make_service):
    """The service with its defaults, warm pool on."""
    return make_service()


@pytest.fixture
def load(service):
    """A steady load on the service (2 client loops per language), stopped after the test."""
    running = live.Load(service).start()
    yield running
    running.stop()

