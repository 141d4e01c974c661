"""A real server on a loopback port, started as a subprocess the way `make serve`
starts it (python -m jail_http), with settings from the environment."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from host import OWNERS, free_port


class Server:
    def __init__(self, path=None, prefix=(), **settings):
        self.terminated = False
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAIL_")}
        # Cold unless a test asks for its warm pool (None: the service's default, on).
        settings = {"pool_python": 0, "pool_javascript": 0, **settings}
        env.update({f"JAIL_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
        if path is not None:
            env["PATH"] = path
        self.process = subprocess.Popen([*prefix, sys.executable, "-m", "jail_http", "--port", str(self.port)],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        OWNERS.add(self.process.pid)  # its sandboxes are this test run's (tests/host.py)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    self._drain()
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("the server died: " + self.process.stdout.read())
                time.sleep(0.05)
        raise RuntimeError("the server did not answer /healthz within 30 s")

    def _drain(self):
        """Its output (a log line per request) read as it comes: a full pipe would block its loop."""
        self.output = []
        self._reader = threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, headers, body bytes); never raises for an HTTP status."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def evaluate(self, body, **kwargs):
        status, headers, raw = self.request("POST", "/evaluate", body, **kwargs)
        return status, headers, json.loads(raw)

    def terminate(self):
        """SIGTERM, once: a second one during the graceful shutdown would kill it."""
        if not self.terminated and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.terminated = True

    def stop(self) -> tuple:
        """SIGTERM; (exit code, everything it printed)."""
        self.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        self.process.stdout.close()
        return self.process.returncode, "".join(self.output)


@pytest.fixture(scope="module")
def server():
    running = Server()
    yield running
    code, out = running.stop()
    assert code == 0, out[-2000:]


@pytest.fixture
def make_server():
    """make_server(path=None, prefix=(), **settings) -> a Server of its own (its command
    line after prefix), stopped after the test."""
    started = []

    def make(**settings):
        started.append(Server(**settings))
        return started[-1]

    yield make
    for running in started:
        running.stop()
