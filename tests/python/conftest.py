"""Fixtures that start the server under test for the python-socketio end-to-end tests.

Target selection (env), same as tests/e2e:
  IOSWARM_E2E_TARGET=ioswarm (default)  spawn $IOSWARM_BIN (default target/debug/ioswarm)
  IOSWARM_E2E_TARGET=reference           spawn `node tests/e2e/reference-server.mjs`
"""

import atexit
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import socketio

ROOT = Path(__file__).resolve().parents[2]
TARGET = os.environ.get("IOSWARM_E2E_TARGET", "ioswarm")
# IOSWARM_BIN, when set, is relative to the current directory; the default to the repository root.
BIN = Path(os.environ["IOSWARM_BIN"]).resolve() if os.environ.get("IOSWARM_BIN") else ROOT / "target/debug/ioswarm"
READY_RE = re.compile(r"^ioswarm ready socketio=(\S+) admin=(\S+)(?: \S+=\S+)*$")  # later fields, e.g. redis=
WAIT_S = 5.0


_LIVE = set()


@atexit.register
def _kill_leftovers():
    """Servers still running when pytest exits (an interrupted run) are killed."""
    for proc in _LIVE:
        if proc.poll() is None:
            proc.kill()


class Server:
    """A running server process; `url` and `admin_url` come from its ready line."""

    def __init__(self, flags):
        if TARGET == "reference":
            cmd = ["node", str(ROOT / "tests/e2e/reference-server.mjs")]
        elif TARGET == "ioswarm":
            if not BIN.exists():
                pytest.fail(f"ioswarm binary not found at {BIN} (cargo build --bin ioswarm or set IOSWARM_BIN)")
            cmd = [str(BIN)]
        else:
            raise ValueError(f"unknown IOSWARM_E2E_TARGET={TARGET}")
        cmd += ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", *flags]
        self.cmd = cmd
        self.stderr_lines = []
        # IOSWARM_* variables of the test runner would change the server's configuration.
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOSWARM_")}
        # An ephemeral Redis-protocol port, so that servers never collide on 6379.
        env["IOSWARM_REDIS_LISTEN"] = "127.0.0.1:0"
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env
        )
        _LIVE.add(self.proc)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        ready = threading.Event()
        self._ready_match = None

        def read_stdout():
            for line in self.proc.stdout:
                m = READY_RE.match(line.rstrip("\r\n"))
                if m and self._ready_match is None:
                    self._ready_match = m
                    ready.set()
            ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not ready.wait(10) or self._ready_match is None:
            self.kill()
            pytest.fail(f"no ready line from {' '.join(cmd)}\nstderr:\n{self.stderr_tail()}")
        self.addr, self.admin_addr = self._ready_match.group(1), self._ready_match.group(2)
        self.url = f"http://{self.addr}"
        self.admin_url = f"http://{self.admin_addr}"

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if len(self.stderr_lines) > 2000:
                del self.stderr_lines[:1000]

    def stderr_tail(self):
        return "".join(self.stderr_lines[-50:])

    def admin(self, method, path, body=None):
        """Returns (status, parsed JSON or text)."""
        data = None
        headers = {}
        if body is not None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            headers["content-type"] = "application/json"
        req = urllib.request.Request(self.admin_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=WAIT_S * 2) as res:
                status, text = res.status, res.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def emit(self, **body):
        return self.admin("POST", "/v1/emit", body)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def start_server():
    """Factory: `server = start_server("--client-rooms", ...)`; every server is stopped afterwards."""
    servers = []

    def start(*flags):
        s = Server(list(flags))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def server(start_server):
    """A server with every client feature enabled."""
    return start_server("--client-rooms", "--client-relay")


@pytest.fixture
def make_client():
    """Factory for connected python-socketio clients; all are disconnected afterwards."""
    clients = []

    def make(url, transports=None, namespaces=None, auth=None, handlers=None):
        c = socketio.Client(reconnection=False, request_timeout=WAIT_S)
        for (event, namespace), fn in (handlers or {}).items():
            c.on(event, fn, namespace=namespace)
        clients.append(c)
        c.connect(url, transports=transports, namespaces=namespaces, auth=auth, wait_timeout=WAIT_S)
        return c

    yield make
    for c in clients:
        try:
            c.disconnect()
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass


def wait_until(predicate, message, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {message}")
        time.sleep(0.02)


def pytest_sessionfinish(session, exitstatus):
    """No test may skip silently: a skipped or xfailed test fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = len(reporter.stats.get("skipped", [])) + len(reporter.stats.get("xfailed", []))
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"FAILED: {skipped} test(s) skipped or xfailed; every test must run", red=True)
        session.exitstatus = 1
    if session.testscollected == 0 and session.exitstatus == 0:
        session.exitstatus = 1
