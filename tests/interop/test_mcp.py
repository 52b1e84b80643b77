"""The official Python `mcp` client SDK against the npm reference server `@modelcontextprotocol/server-everything`
(Streamable HTTP, kept on loopback), first directly and then through a Palisade MCP proxy: fail-closed tool
approval, approval through the API, resources, progress and logging notifications, auto approval, bad keys, and
the SDK's legacy HTTP+SSE client (`sse_client`) bridged by the gateway to the Streamable HTTP server.

The through-gateway tests are skipped only while `palisade check-config` refuses a `kind = "mcp"` proxy."""

import contextlib
import os
import re
import sys
import time

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from conftest import (
    CI_KEY,
    REPO,
    McpGateway,
    Proc,
    everything_stdio_command,
    free_port,
    mcp_proxy_toml,
    require_mcp_gateway,
    wait_port,
)

# "auto" is the SDK's default (probes the stateless 2026-07-28 era with server/discover, falls back to initialize);
# "legacy" pins the session era (initialize handshake at the newest handshake-era version).
MODES = ["auto", "legacy"]
PROXY = "mcp-everything"
# Tools that server-everything always registers (others depend on the client's capabilities).
CORE_TOOLS = {
    "echo",
    "get-sum",
    "get-tiny-image",
    "get-structured-content",
    "toggle-simulated-logging",
    "trigger-long-running-operation",
}
RESOURCE = "demo://resource/static/document/features.md"
WRONG_KEY = "pal_wrong_key_000000000000000000"


def run(scenario, *args, timeout=120):
    async def bounded():
        with anyio.fail_after(timeout):
            return await scenario(*args)

    return anyio.run(bounded)


@contextlib.asynccontextmanager
async def connect(url, key=None, mode="auto", **kw):
    """An SDK client over Streamable HTTP; `key` goes in `Authorization: Bearer`. The response cache is off so
    a listing after an approval reaches the gateway."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        async with Client(
            streamable_http_client(url, http_client=http), mode=mode, cache=None, read_timeout_seconds=30, **kw
        ) as c:
            yield c


def text(result):
    return "".join(getattr(block, "text", "") for block in result.content)


async def tool_names(c):
    return [t.name for t in (await c.list_tools()).tools]


async def refusal(c, name, args):
    """The message of a refused tools/call: a JSON-RPC error (MCPError) or an isError result."""
    try:
        r = await c.call_tool(name, args)
    except MCPError as e:
        return e.message
    assert r.is_error, f"tools/call {name} was not refused: {r}"
    return text(r)


async def progress_and_logging(c):
    """Calls trigger-long-running-operation with a progress callback; returns (result text, progress list)."""
    progress = []

    async def on_progress(p, total, message):
        progress.append((p, total))

    r = await c.call_tool(
        "trigger-long-running-operation", {"duration": 0.6, "steps": 3}, progress_callback=on_progress
    )
    return text(r), progress


async def long_running_reports_progress(c):
    done, progress = await progress_and_logging(c)
    assert done.startswith("Long running operation completed")
    assert progress == [(1, 3), (2, 3), (3, 3)]


async def echo_refusal_resource_progress(c, message):
    """The core journey through the gateway: an approved call works, an unapproved one is refused (fail-closed),
    a resource reads as directly, and progress notifications arrive."""
    r = await c.call_tool("echo", {"message": message})
    assert not r.is_error and text(r) == f"Echo: {message}"
    assert "awaits approval" in await refusal(c, "get-sum", {"a": 2, "b": 3})
    doc = (await c.read_resource(RESOURCE)).contents[0]
    assert doc.text.startswith("# Everything Server")
    await long_running_reports_progress(c)


async def simulated_logs_arrive(c, logs):
    """server-everything sends simulated log messages outside any request (every 5 s): in the session era they
    travel on its GET stream. `logs` is filled by the client's logging callback."""
    await c.set_logging_level("debug")
    r = await c.call_tool("toggle-simulated-logging", {})
    assert not r.is_error and "Started simulated" in text(r), text(r)
    with anyio.fail_after(15):
        while not logs:
            await anyio.sleep(0.1)
    assert "-level message" in str(logs[0].data) or "level-message" in str(logs[0].data), logs[0]
    await c.call_tool("toggle-simulated-logging", {})


# ---------------------------------------------------------------------------------------------- directly


@pytest.mark.parametrize("mode", MODES)
def test_sdk_against_server_everything_directly(everything, mode):
    async def scenario():
        async with connect(everything, mode=mode) as c:
            # server-everything (npm SDK 1.x) is a session-era server: auto mode must fall back to initialize.
            assert c.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
            assert c.server_info.name == "mcp-servers/everything"
            assert CORE_TOOLS <= set(await tool_names(c))
            r = await c.call_tool("echo", {"message": "directly"})
            assert not r.is_error and text(r) == "Echo: directly"
            assert text(await c.call_tool("get-sum", {"a": 2, "b": 3})) == "The sum of 2 and 3 is 5."
            assert RESOURCE in [str(x.uri) for x in (await c.list_resources()).resources]
            doc = (await c.read_resource(RESOURCE)).contents[0]
            assert doc.text.startswith("# Everything Server")
            await long_running_reports_progress(c)

    run(scenario)


# ---------------------------------------------------------------------------------------------- gateway

# How the gateway reaches server-everything: Streamable HTTP, the legacy HTTP+SSE transport, or as a
# stdio process it launches itself.
TRANSPORTS = ["streamable_http", "sse", "stdio"]


@pytest.fixture(params=TRANSPORTS)
def upstream(request, everything):
    """The proxy's upstream setting for mcp_proxy_toml, per transport."""
    if request.param == "sse":
        return ("sse", request.getfixturevalue("everything_sse"))
    if request.param == "stdio":
        return ("stdio", everything_stdio_command())
    return everything


@pytest.fixture
def mcp_gateway():
    """Starts gateways with the given MCP proxy TOML; skipped while the gateway has no MCP support."""
    require_mcp_gateway()
    started = []

    def start(proxies_toml):
        gw = McpGateway(proxies_toml)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.mark.parametrize("mode", MODES)
def test_gateway_fail_closed_approval_then_api_approval(upstream, mcp_gateway, mode):
    gw = mcp_gateway(mcp_proxy_toml(PROXY, upstream, "manual", ["echo"]))
    url = gw.mcp_url(PROXY)

    async def scenario():
        async with connect(url, CI_KEY, mode) as c:
            if mode == "legacy":
                assert c.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
            assert c.server_info is None or c.server_info.name == "mcp-servers/everything"

            # Only the approved tool is visible, and it works.
            assert await tool_names(c) == ["echo"]
            r = await c.call_tool("echo", {"message": "through the gateway"})
            assert not r.is_error and text(r) == "Echo: through the gateway"

            # A real tool of the upstream that is not approved: refused, fail-closed.
            msg = await refusal(c, "get-sum", {"a": 2, "b": 3})
            assert "awaits approval" in msg

            # The gateway recorded every tool the upstream offered, with definitions and fingerprints.
            tools = {t["name"]: t for t in gw.tools(PROXY)}
            assert CORE_TOOLS <= set(tools), sorted(tools)
            assert tools["echo"]["status"] == "approved"
            for name in CORE_TOOLS - {"echo"}:
                assert tools[name]["status"] == "pending", (name, tools[name]["status"])
            for t in tools.values():
                assert re.fullmatch(r"[0-9a-f]{64}", t["fingerprint"]), t
                assert t["definition"]["name"] == t["name"]
            for name in CORE_TOOLS:  # plainly benign tools of the reference server: no poisoning findings
                assert tools[name]["findings"] == [], (name, tools[name]["findings"])
            # The server's instructions are pinned and, under manual approval, wait for an administrator.
            pinned = {t["name"]: t for t in gw.inventory(PROXY)}
            assert pinned["server:instructions"]["status"] == "pending", pinned.get("server:instructions")
            assert c.instructions is None, "unapproved instructions must not reach the client"
            assert tools["get-sum"]["definition"]["description"] == "Returns the sum of two numbers"
            assert set(tools["get-sum"]["definition"]["inputSchema"]["properties"]) == {"a", "b"}

            # Approve through the API: listed and callable in the same session.
            gw.call("POST", f"/api/v1/proxies/{PROXY}/tools/get-sum/approve", {})
            assert {t["name"]: t["status"] for t in gw.tools(PROXY)}["get-sum"] == "approved"
            assert sorted(await tool_names(c)) == ["echo", "get-sum"]
            r = await c.call_tool("get-sum", {"a": 2, "b": 3})
            assert not r.is_error and text(r) == "The sum of 2 and 3 is 5."

            # Disable it again: hidden and refused.
            gw.call("POST", f"/api/v1/proxies/{PROXY}/tools/get-sum/disable", {})
            assert {t["name"]: t["status"] for t in gw.tools(PROXY)}["get-sum"] == "disabled"
            assert await tool_names(c) == ["echo"]
            await refusal(c, "get-sum", {"a": 2, "b": 3})

        # A new session sees the same approvals (they are per proxy, not per session).
        async with connect(url, CI_KEY, mode) as c:
            assert await tool_names(c) == ["echo"]

    run(scenario)

    # The request log has the tools/call messages, with the tool and the key.
    deadline = time.time() + 10  # the log is written in batches
    while True:
        rows = gw.requests(f"proxy={PROXY}&limit=500", 1)
        calls = [r for r in rows if r["endpoint"] == "tools/call"]
        if len(calls) >= 4 or time.time() > deadline:
            break
        time.sleep(0.1)
    assert len(calls) >= 4, [(r["endpoint"], r.get("tool"), r["status"]) for r in rows]
    assert {r.get("tool") for r in calls} >= {"echo", "get-sum"}
    assert all(r["key_name"] == "ci" for r in calls), calls
    assert all(r["proxy"] == PROXY for r in rows)


@pytest.mark.filterwarnings("ignore:The logging capability is deprecated")
@pytest.mark.parametrize("mode", MODES)
def test_gateway_resources_progress_and_logging_pass_through(everything, upstream, mcp_gateway, mode):
    approved = ["echo", "trigger-long-running-operation", "toggle-simulated-logging"]
    gw = mcp_gateway(mcp_proxy_toml(PROXY, upstream, "manual", approved))
    url = gw.mcp_url(PROXY)

    async def direct_doc():
        async with connect(everything, mode=mode) as c:
            return (await c.read_resource(RESOURCE)).contents[0].text

    expected_doc = run(direct_doc)

    async def scenario():
        logs = []

        async def on_log(params):
            logs.append(params)

        async with connect(url, CI_KEY, mode, logging_callback=on_log, log_level="debug") as c:
            assert sorted(await tool_names(c)) == sorted(approved)

            # Resources: listed and read through the gateway, same content as directly.
            assert RESOURCE in [str(x.uri) for x in (await c.list_resources()).resources]
            doc = (await c.read_resource(RESOURCE)).contents[0]
            assert doc.text == expected_doc

            # Progress notifications for an approved tool come back through the gateway.
            await long_running_reports_progress(c)

            # Logging outside any request: the session era's GET stream; the modern era only carries
            # request-scoped logs.
            if c.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
                await simulated_logs_arrive(c, logs)

    run(scenario)


@pytest.mark.parametrize("mode", MODES)
def test_gateway_auto_approval_shows_every_tool(everything, mcp_gateway, mode):
    gw = mcp_gateway(mcp_proxy_toml("mcp-auto", everything, "auto"))

    async def direct():
        async with connect(everything, mode=mode) as c:
            return set(await tool_names(c)), c.instructions

    upstream_tools, instructions = run(direct)

    async def scenario():
        async with connect(gw.mcp_url("mcp-auto"), CI_KEY, mode) as c:
            # Trusted server: its instructions are pinned and passed on unchanged.
            assert instructions and c.instructions == instructions
            visible = set(await tool_names(c))
            assert CORE_TOOLS <= visible
            hidden = {t["name"]: (t["status"], t["findings"]) for t in gw.tools("mcp-auto") if t["name"] not in visible}
            assert visible == upstream_tools, f"hidden under auto approval: {hidden}"
            r = await c.call_tool("get-sum", {"a": 40, "b": 2})
            assert not r.is_error and text(r) == "The sum of 40 and 2 is 42."

    run(scenario)
    recorded = gw.tools("mcp-auto")
    assert CORE_TOOLS <= {t["name"] for t in recorded}
    not_approved = {t["name"]: (t["status"], t["findings"]) for t in recorded if t["status"] != "approved"}
    assert not_approved == {}, f"auto approval left tools of the reference server unapproved: {not_approved}"


def test_gateway_refuses_bad_or_missing_key(everything, mcp_gateway):
    gw = mcp_gateway(mcp_proxy_toml(PROXY, everything, "manual", ["echo"]))
    url = gw.mcp_url(PROXY)
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "interop", "version": "0"},
        },
    }
    accept = {"accept": "application/json, text/event-stream"}
    for headers in ({"authorization": f"Bearer {WRONG_KEY}"}, {}):
        r = httpx.post(url, json=init, headers={**accept, **headers}, timeout=10)
        assert r.status_code == 401, (headers, r.status_code, r.text)

    # The SDK with a wrong key fails to connect (in either mode) …
    async def with_wrong_key(mode):
        async with connect(url, WRONG_KEY, mode) as c:
            await tool_names(c)

    for mode in MODES:
        with pytest.raises(Exception) as e:
            run(with_wrong_key, mode, timeout=60)
        assert not isinstance(e.value, TimeoutError), f"{mode}: a wrong key hung instead of failing"

    # … and the right key still works on the same proxy afterwards.
    r = httpx.post(url, json=init, headers={**accept, "authorization": f"Bearer {CI_KEY}"}, timeout=10)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------- stateless era

FIXTURE = [sys.executable, os.path.join(REPO, "tests/conformance/fixture.py")]


@pytest.fixture(scope="module")
def modern_server():
    """The mcp Python SDK's own MCPServer (our conformance fixture), which speaks the stateless 2026-07-28
    era and the session era at one URL; yields its endpoint."""
    port = free_port()
    proc = Proc(FIXTURE, env=dict(os.environ, PORT=str(port)))
    try:
        wait_port(port, proc, timeout=60)
    except BaseException:
        proc.stop()
        raise
    yield f"http://127.0.0.1:{port}/mcp"
    proc.stop()


@pytest.mark.parametrize("mode", MODES)
def test_gateway_in_front_of_a_stateless_era_server(modern_server, mcp_gateway, mode):
    gw = mcp_gateway(mcp_proxy_toml("mcp-modern", modern_server, "manual", ["test_simple_text"]))

    async def scenario():
        async with connect(gw.mcp_url("mcp-modern"), CI_KEY, mode) as c:
            if mode == "auto":
                # The SDK's era probe goes through the gateway and settles on the stateless era.
                assert c.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS, c.protocol_version
            else:
                assert c.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
            assert await tool_names(c) == ["test_simple_text"]
            r = await c.call_tool("test_simple_text", {})
            assert not r.is_error and "simple text" in text(r)
            assert "awaits approval" in await refusal(c, "test_image_content", {})

    run(scenario)
    tools = {t["name"]: t["status"] for t in gw.tools("mcp-modern")}
    assert tools["test_simple_text"] == "approved" and tools["test_image_content"] == "pending"

# ---------------------------------------------------------------------------------------------- legacy HTTP+SSE


@contextlib.asynccontextmanager
async def connect_sse(base_url, key=None, **kw):
    """The SDK's legacy HTTP+SSE client (`GET /sse`, then POSTs to the endpoint it announces)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = sse_client(base_url + "/sse", headers=headers, timeout=30, sse_read_timeout=60)
    async with Client(transport, mode="legacy", cache=None, read_timeout_seconds=30, **kw) as c:
        yield c


@pytest.mark.filterwarnings("ignore:The logging capability is deprecated")
def test_legacy_sse_client_through_the_gateway(everything, mcp_gateway):
    """A client of the legacy transport in front of a Streamable HTTP server: the gateway bridges the two
    with the same approval and policy checks."""
    approved = ["echo", "trigger-long-running-operation", "toggle-simulated-logging"]
    gw = mcp_gateway(mcp_proxy_toml(PROXY, everything, "manual", approved))
    base = gw.proxy_url(PROXY)

    async def scenario():
        logs = []

        async def on_log(params):
            logs.append(params)

        async with connect_sse(base, CI_KEY, logging_callback=on_log) as c:
            assert c.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
            assert c.server_info.name == "mcp-servers/everything"

            # Only approved tools are visible; resources and progress notifications (on the upstream's POST
            # stream) reach the client's stream.
            assert sorted(await tool_names(c)) == sorted(approved)
            await echo_refusal_resource_progress(c, "over legacy SSE")

            # Messages the server sends outside any request travel on its GET stream, relayed by the gateway.
            await simulated_logs_arrive(c, logs)

    run(scenario)

    # Every message is in the request log under the key; the gateway listened on the upstream's GET stream
    # while the session lasted, and leaving deleted the upstream session.
    deadline = time.time() + 10
    while True:
        rows = gw.requests(f"proxy={PROXY}&limit=500", 1)
        if {"sse", "get", "delete"} <= {r["endpoint"] for r in rows} or time.time() > deadline:
            break
        time.sleep(0.1)
    assert any(r["endpoint"] == "sse" and r["status"] == 200 for r in rows), rows  # the client's session
    assert any(r["endpoint"] == "get" and r["status"] == 200 for r in rows), rows  # the upstream's GET stream
    calls = [r for r in rows if r["endpoint"] == "tools/call"]
    assert {r.get("tool") for r in calls} >= {"echo", "get-sum"}, calls
    assert any(r["tool"] == "get-sum" and r.get("decision") == "block" for r in calls), calls
    assert all(r["key_name"] == "ci" for r in rows), rows
    assert any(r["method"] == "DELETE" for r in rows), [(r["method"], r["endpoint"]) for r in rows]

    # A wrong key cannot open a session.
    async def with_wrong_key():
        async with connect_sse(base, WRONG_KEY) as c:
            await tool_names(c)

    with pytest.raises(Exception) as e:
        run(with_wrong_key, timeout=60)
    assert not isinstance(e.value, TimeoutError), "a wrong key hung instead of failing"


@pytest.mark.parametrize("transport", ["streamable_http", "stdio"])
def test_stateless_era_client_reaches_a_session_era_server_through_the_gateway(everything, mcp_gateway, transport):
    """A client pinned to the stateless era (no initialize, no session) cannot talk to server-everything, which
    speaks only the session era; through the gateway it can: the gateway probes the upstream's era, holds a
    session of its own and carries each stateless request in it."""
    upstream = everything if transport == "streamable_http" else ("stdio", everything_stdio_command())
    approved = ["echo", "trigger-long-running-operation"]
    gw = mcp_gateway(mcp_proxy_toml(PROXY, upstream, "manual", approved))
    url = gw.mcp_url(PROXY)
    modern = "2026-07-28"

    async def directly():
        async with connect(everything, mode=modern) as c:
            await tool_names(c)

    if transport == "streamable_http":
        with pytest.raises(Exception):
            run(directly, timeout=60)

    async def scenario():
        async with connect(url, CI_KEY, modern) as c:
            assert c.protocol_version == modern
            assert sorted(await tool_names(c)) == sorted(approved)
            await echo_refusal_resource_progress(c, "stateless")

        # Concurrent stateless clients share the gateway's session without mixing up answers.
        async def one(i):
            async with connect(url, CI_KEY, modern) as c:
                for j in range(5):
                    r = await c.call_tool("echo", {"message": f"{i}-{j}"})
                    assert text(r) == f"Echo: {i}-{j}"

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)

    run(scenario)

    def stateless_post(msg_id, method):
        """One raw stateless-era request, with the routing headers a client of that era sends."""
        return httpx.post(
            url,
            json={"jsonrpc": "2.0", "id": msg_id, "method": method,
                  "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": modern}}},
            headers={"authorization": f"Bearer {CI_KEY}", "accept": "application/json, text/event-stream",
                     "mcp-method": method, "mcp-protocol-version": modern},
            timeout=30,
        )

    # server/discover is answered by the gateway from the upstream's initialize result.
    r = stateless_post("d1", "server/discover")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "d1" and body["result"]["supportedVersions"] == [modern], body
    assert body["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcp-servers/everything"
    assert "mcp-session-id" not in r.headers, "the gateway's own upstream session stays private"

    # A method the stateless era does not have (ping was removed) is 404 / -32601, as from a stateless server.
    r = stateless_post("p1", "ping")
    assert r.status_code == 404 and r.json()["error"]["code"] == -32601, r.text
