"""Fixtures for the console tests: the real `palisade` binary (gateway with a generated admin
password, mock LLM, mock MCP server) on loopback ports, and Debian's headless Chromium driven by
Playwright. Every process is stopped by PID at teardown."""

import json
import os
import sys
import tempfile
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from procs import Proc  # noqa: E402  (shared with the other Python suite)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
BIN = os.environ.get("PALISADE_BIN", os.path.join(REPO, "target/debug/palisade"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS", os.path.join(REPO, "target/console-screenshots"))
NEW_PASSWORD = "console-admin-password-1"


class Gateway:
    """`palisade serve` with no config and no PALISADE_ADMIN_PASSWORD: the admin password is
    generated and printed once, so the console must ask for a new one at first login."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        env = {k: v for k, v in os.environ.items() if k != "PALISADE_ADMIN_PASSWORD"}
        env["RUST_LOG"] = "warn"
        self.proc = Proc(
            [BIN, "serve", "--admin-addr", "127.0.0.1:0", "--data-dir", os.path.join(self.dir.name, "data")], env=env
        )
        try:
            self.generated = self.proc.wait_for("with password:")
            self.admin = self.proc.wait_for("admin API listening on")
        except BaseException:
            self.stop()
            raise
        self.token = None

    def login(self, user="admin", password=NEW_PASSWORD):
        self.token = self.call("POST", "/api/v1/auth/login", {"username": user, "password": password}, auth=False)["token"]

    def call(self, method, path, body=None, auth=True, headers=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if auth:
            req.add_header("authorization", f"Bearer {self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def status_of(self, method, path, body=None, token=None, headers=None):
        """HTTP status of a call (errors included) with `token` as bearer."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if token:
            req.add_header("authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def stop(self):
        self.proc.stop()
        self.dir.cleanup()


@pytest.fixture(scope="session")
def mock_llm():
    proc = Proc([BIN, "mock-llm", "--addr", "127.0.0.1:0"])
    try:
        yield proc.wait_for("listening on")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def mock_mcp():
    proc = Proc([BIN, "mock-mcp", "--addr", "127.0.0.1:0"])
    try:
        yield proc.wait_for("listening on")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def mock_a2a():
    proc = Proc([BIN, "mock-a2a", "--addr", "127.0.0.1:0"])
    try:
        yield proc.wait_for("listening on").rstrip("/")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def gateway():
    gw = Gateway()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import expect, sync_playwright

    # The machine may be shared and busy: wait up to 15 s for what a user would wait for.
    expect.set_options(timeout=15_000)

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-test-deps (installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def shots():
    os.makedirs(SHOTS, exist_ok=True)

    def save(page, name):
        page.wait_for_timeout(300)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)

    return save
