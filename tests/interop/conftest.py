"""Fixtures that run the real `palisade` binary (gateway and mock model) on loopback ports."""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from procs import Proc  # noqa: E402  (shared with the other Python suite)

BIN = os.environ.get("PALISADE_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/palisade"))
ADMIN_PASSWORD = "interop-admin-password"
CI_KEY = "pal_interop_fixed_key_0000000001"


def start_mock(*extra):
    proc = Proc([BIN, "mock-llm", "--addr", "127.0.0.1:0", *extra])
    return proc, proc.wait_for("listening on")


class Gateway:
    def __init__(self, upstream, extra_env=None):
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
        env.update(extra_env or {})
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


# ---------------------------------------------------------------------------------------------
# MCP peers: the npm reference server (`@modelcontextprotocol/server-everything`, installed by
# scripts/setup-test-deps into tests/interop/node_modules) and a gateway with MCP proxies.

import shutil
import socket

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
INTEROP = os.path.join(REPO, "tests/interop")
EVERYTHING_JS = os.path.join(INTEROP, "node_modules/@modelcontextprotocol/server-everything/dist/index.js")
# Preload that binds `listen(port)` to 127.0.0.1 (server-everything listens on every interface when given only PORT).
LOOPBACK_CJS = os.path.abspath(os.path.join(REPO, "../shared/mcp-conformance/loopback.cjs"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.p.poll() is not None:
            raise RuntimeError(f"process exited with {proc.p.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def listening_addresses(port):
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    addr, hexport = cols[1].rsplit(":", 1)
                    if int(hexport, 16) == port and cols[3] == "0A":  # 0A = LISTEN
                        found.append(addr)
        except FileNotFoundError:
            pass
    return found


def start_server_everything(transport="streamableHttp"):
    """Starts server-everything on a free loopback port; returns (proc, base_url) — the Streamable HTTP
    endpoint is base_url + "/mcp"."""
    node = shutil.which("node")
    assert node, "node is not installed"
    assert os.path.exists(EVERYTHING_JS), f"{EVERYTHING_JS} is missing: run scripts/setup-test-deps"
    assert os.path.exists(LOOPBACK_CJS), f"{LOOPBACK_CJS} is missing (shared/ beside the repo)"
    port = free_port()
    env = dict(os.environ, PORT=str(port))
    proc = Proc([node, "--require", LOOPBACK_CJS, EVERYTHING_JS, transport], env=env)
    try:
        wait_port(port, proc)
        # The preload must have kept it on loopback: only 127.0.0.1 (0100007F) may listen on the port.
        addrs = listening_addresses(port)
        assert addrs and all(a == "0100007F" for a in addrs), f"server-everything listens on {addrs}, not loopback only"
    except BaseException:
        proc.stop()
        raise
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def everything():
    """server-everything in Streamable HTTP mode; yields its endpoint URL (…/mcp)."""
    proc, base = start_server_everything()
    yield base + "/mcp"
    proc.stop()


@pytest.fixture(scope="module")
def everything_sse():
    """server-everything in legacy HTTP+SSE mode; yields its SSE endpoint URL (…/sse)."""
    proc, base = start_server_everything("sse")
    yield base + "/sse"
    proc.stop()


def everything_stdio_command():
    """The command line of server-everything as a stdio server (the gateway launches it)."""
    node = shutil.which("node")
    assert node, "node is not installed"
    assert os.path.exists(EVERYTHING_JS), f"{EVERYTHING_JS} is missing: run scripts/setup-test-deps"
    return [node, EVERYTHING_JS, "stdio"]


def mcp_proxy_toml(name, upstream, tool_approval="manual", approved_tools=None):
    """A proxy section; `upstream` is a Streamable HTTP URL, or ("sse", url), or ("stdio", command)."""
    transport, target = upstream if isinstance(upstream, tuple) else ("streamable_http", upstream)
    lines = [
        "[[proxies]]",
        f'name = "{name}"',
        'kind = "mcp"',
        'listen = "127.0.0.1:0"',
        f'transport = "{transport}"',
        f'tool_approval = "{tool_approval}"',
    ]
    if transport == "stdio":
        lines.append("command = " + json.dumps(target))
    else:
        lines.append(f'upstream = "{target}"')
    if approved_tools is not None:
        lines.append("approved_tools = [" + ", ".join(json.dumps(t) for t in approved_tools) + "]")
    return "\n".join(lines) + "\n"


_KEY_TOML = """
[[groups]]
name = "engineering"

[[api_keys]]
name = "ci"
group = "engineering"
key = "env:PALISADE_CI_KEY"
"""

_mcp_support = None


def mcp_support():
    """(supported, reason): whether `palisade check-config` accepts a config with an MCP proxy. A binary
    that refuses even a plain LLM config is an error, not a reason to skip."""
    global _mcp_support
    if _mcp_support is None:
        env = dict(os.environ, PALISADE_CI_KEY=CI_KEY)
        with tempfile.TemporaryDirectory() as d:

            def check(text):
                path = os.path.join(d, "check.toml")
                with open(path, "w") as f:
                    f.write(_KEY_TOML + text)
                return subprocess.run(
                    [BIN, "check-config", path], capture_output=True, text=True, env=env, timeout=60
                )

            base = check('[[proxies]]\nname = "oai"\nkind = "llm"\nlisten = "127.0.0.1:0"\n'
                         'upstream = "http://127.0.0.1:9/"\napi = "openai"\n')
            assert base.returncode == 0, f"palisade check-config refuses a plain LLM config: {base.stderr[:2000]}"
            r = check(mcp_proxy_toml("mcp-check", "http://127.0.0.1:9/mcp", "manual", ["echo"]))
            said = (r.stderr or r.stdout).split("Stack backtrace")[0]
            _mcp_support = (r.returncode == 0, " ".join(l.strip() for l in said.splitlines() if l.strip()))
    return _mcp_support


def require_mcp_gateway():
    ok, reason = mcp_support()
    if not ok:
        pytest.skip(f"the gateway does not support MCP proxies yet (check-config refuses kind = \"mcp\": {reason})")


class McpGateway(Gateway):
    """`palisade serve` with the given MCP proxies (TOML from mcp_proxy_toml) and the fixed CI key."""

    def __init__(self, proxies_toml):
        self.dir = tempfile.TemporaryDirectory()
        cfg = os.path.join(self.dir.name, "palisade.toml")
        with open(cfg, "w") as f:
            f.write(_KEY_TOML + "\n" + proxies_toml)
        env = dict(os.environ, PALISADE_ADMIN_PASSWORD=ADMIN_PASSWORD, PALISADE_CI_KEY=CI_KEY, RUST_LOG="warn")
        self.proc = Proc(
            [BIN, "serve", "--admin-addr", "127.0.0.1:0", "--data-dir", os.path.join(self.dir.name, "data"), "--config", cfg],
            env=env,
        )
        try:
            self.admin = self.proc.wait_for("admin API listening on")
            self.token = self.call(
                "POST", "/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD}, auth=False
            )["token"]
        except BaseException:
            self.stop()
            raise

    def mcp_url(self, name):
        return self.proxy_url(name) + "/mcp"

    def inventory(self, name):
        """Every pinned item of the proxy: tools, and prompts, resources and the server's instructions under
        their reserved prefixes."""
        body = self.call("GET", f"/api/v1/proxies/{name}/tools")
        return body["items"] if isinstance(body, dict) and "items" in body else body

    def tools(self, name):
        return [t for t in self.inventory(name) if not t["name"].startswith(("prompt:", "resource:", "server:"))]
