"""Fixtures that run the real `palisade` binary (gateway and mock model) on loopback ports."""

import json
import os
import queue
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

BIN = os.environ.get("PALISADE_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/palisade"))
ADMIN_PASSWORD = "interop-admin-password"
CI_KEY = "pal_interop_fixed_key_0000000001"


class Proc:
    """A child process whose stdout lines are read on a thread; stopped by PID at teardown."""

    def __init__(self, args, env=None):
        self.p = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL, text=True, env=env
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, needle, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if needle in line:
                return line.split(needle, 1)[1].strip()
        raise TimeoutError(f"no line containing {needle!r}")

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)


def start_mock(*extra):
    proc = Proc([BIN, "mock-llm", "--addr", "127.0.0.1:0", *extra])
    return proc, proc.wait_for("listening on")


class Gateway:
    def __init__(self, upstream):
        self.dir = tempfile.TemporaryDirectory()
        cfg = os.path.join(self.dir.name, "palisade.toml")
        with open(cfg, "w") as f:
            f.write(
                f"""
[[groups]]
name = "engineering"

[[api_keys]]
name = "ci"
group = "engineering"
key = "env:PALISADE_CI_KEY"

[[proxies]]
name = "oai"
kind = "llm"
listen = "127.0.0.1:0"
upstream = "{upstream}"
api = "openai"

[[proxies]]
name = "ant"
kind = "llm"
listen = "127.0.0.1:0"
upstream = "{upstream}"
api = "anthropic"
"""
            )
        env = dict(os.environ, PALISADE_ADMIN_PASSWORD=ADMIN_PASSWORD, PALISADE_CI_KEY=CI_KEY, RUST_LOG="warn")
        self.proc = Proc(
            [BIN, "serve", "--admin-addr", "127.0.0.1:0", "--data-dir", os.path.join(self.dir.name, "data"), "--config", cfg],
            env=env,
        )
        self.admin = self.proc.wait_for("admin API listening on")
        self.token = self.call("POST", "/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD}, auth=False)[
            "token"
        ]

    def call(self, method, path, body=None, auth=True):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if auth:
            req.add_header("authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def proxy_url(self, name):
        return "http://" + self.call("GET", f"/api/v1/proxies/{name}")["bound_addr"]

    def requests(self, query, n, timeout=5):
        deadline = time.time() + timeout
        while True:
            items = self.call("GET", f"/api/v1/requests?{query}")["items"]
            if len(items) >= n or time.time() > deadline:
                return items
            time.sleep(0.05)

    def stop(self):
        self.proc.stop()
        self.dir.cleanup()


@pytest.fixture(scope="module")
def mock():
    proc, url = start_mock()
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def gateway(mock):
    gw = Gateway(mock)
    yield gw
    gw.stop()
