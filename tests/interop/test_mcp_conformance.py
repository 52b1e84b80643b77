"""MCP transparency, measured: the official MCP conformance suite (pinned in ../shared/mcp-conformance)
against our conformance fixture (tests/conformance/fixture.py) directly, then through a Palisade MCP
proxy in front of the same fixture. Every scenario that passes directly must pass through the gateway.

MCP_FIXTURE_CMD (a shell command that serves an MCP server on 127.0.0.1:$PORT/mcp) replaces the fixture,
so the same measurement can be repeated against any server; MCP_CONFORMANCE_RUN replaces the suite runner.
"""

import glob
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile

import pytest

from conftest import ADMIN_PASSWORD, BIN, CI_KEY, REPO, Proc, free_port, wait_port

RUN_SH = os.environ.get("MCP_CONFORMANCE_RUN", os.path.join(REPO, "../shared/mcp-conformance/run.sh"))
FIXTURE_CMD = os.environ.get("MCP_FIXTURE_CMD", ".venv/bin/python tests/conformance/fixture.py")
# What the suite's own reference server passes; our fixture must do at least as well directly.
MIN_DIRECT = 51
SUMMARY = re.compile(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed")


def run_suite(url, key, out):
    """Runs every server scenario against `url`; returns {scenario: (passed, checks_passed, failures)}."""
    r = subprocess.run(
        ["bash", RUN_SH, "suite", url, key, out], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    results = {}
    for line in r.stdout.splitlines():
        m = SUMMARY.match(line.strip())
        if m:
            mark, name, ok, bad = m.groups()
            results[name] = (mark == "✓", int(ok), failed_checks(out, name) if mark == "✗" else [])
    assert results, f"the suite printed no results (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return results


def failed_checks(out, scenario):
    """`check id: message` of each failed check, from the JSON the suite wrote for the scenario."""
    found = []
    for path in glob.glob(os.path.join(out, f"server-{scenario}-*", "checks.json")):
        with open(path) as f:
            for c in json.load(f):
                if c.get("status") == "FAILURE":
                    found.append(f"{c.get('id')}: {(c.get('errorMessage') or '')[:300]}")
    return found


class Fixture:
    """The fixture command on a free loopback port, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, log, **env_extra):
        self.port = free_port()
        env = dict(os.environ, PORT=str(self.port), **env_extra)
        self.p = subprocess.Popen(
            shlex.split(FIXTURE_CMD), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            wait_port(self.port, self, timeout=60)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)


def gateway_in_front(upstream, workdir):
    cfg = os.path.join(workdir, "palisade.toml")
    with open(cfg, "w") as f:
        f.write(
            f"""
[[api_keys]]
name = "conformance"
key = "env:PALISADE_CI_KEY"

[[proxies]]
name = "conformance"
kind = "mcp"
listen = "127.0.0.1:0"
upstream = "{upstream}"
tool_approval = "auto"
"""
        )
    env = dict(os.environ, PALISADE_ADMIN_PASSWORD=ADMIN_PASSWORD, PALISADE_CI_KEY=CI_KEY, RUST_LOG="warn")
    proc = Proc(
        [BIN, "serve", "--admin-addr", "127.0.0.1:0", "--data-dir", os.path.join(workdir, "data"), "--config", cfg],
        env=env,
    )
    try:
        url = proc.wait_for("proxy `conformance` listening on") + "/mcp"
    except BaseException:
        proc.stop()
        raise
    return proc, url


def describe(results):
    passed = [n for n, (ok, _, _) in results.items() if ok]
    checks = sum(c for _, c, _ in results.values())
    return f"{len(passed)} of {len(results)} scenarios ({checks} checks passed)"


def test_conformance_suite_passes_through_the_gateway_as_it_does_directly():
    assert os.path.exists(RUN_SH), f"{RUN_SH} is missing: ../shared/mcp-conformance must sit beside the repository"
    with tempfile.TemporaryDirectory() as work:
        log = open(os.path.join(work, "fixture.log"), "w")
        fixture = Fixture(log)
        gw = None
        try:
            direct = run_suite(fixture.url, "", os.path.join(work, "direct"))
            gw, url = gateway_in_front(fixture.url, work)
            via = run_suite(url, CI_KEY, os.path.join(work, "gateway"))
        finally:
            if gw is not None:
                gw.stop()
            fixture.stop()
            log.close()
        summary = f"directly: {describe(direct)}; through Palisade: {describe(via)}"
        print("\nMCP conformance " + summary)
        passed_direct = [n for n, (ok, _, _) in direct.items() if ok]
        assert len(passed_direct) >= MIN_DIRECT, (
            f"the fixture passes only {len(passed_direct)} scenarios directly (at least {MIN_DIRECT} expected); "
            + "; ".join(f"{n}: {f}" for n, (ok, _, f) in direct.items() if not ok)
        )
        assert_kept(passed_direct, via, "passes directly but not through the gateway (" + summary + ")")


def assert_kept(scenarios, via, what):
    lost = {n: via.get(n, (False, 0, ["scenario did not run through the gateway"]))[2] for n in scenarios
            if not via.get(n, (False,))[0]}
    assert not lost, what + ":\n" + "\n".join(f"  {n}: " + " | ".join(f or ["failed"]) for n, f in lost.items())


# Scenarios that need the server to check the stateless-era routing headers (Mcp-Method, Mcp-Name,
# Mcp-Param-*, MCP-Protocol-Version against the body); our fixture fails them directly when started
# with FIXTURE_NO_HEADER_CHECKS=1 (tests/conformance/README.md).
HEADER_SCENARIOS = ["http-header-validation", "http-custom-header-server-validation", "tasks-request-headers",
                    "server-stateless"]


def test_the_gateway_checks_routing_headers_for_a_server_that_does_not():
    if "MCP_FIXTURE_CMD" in os.environ:
        pytest.skip("FIXTURE_NO_HEADER_CHECKS is a switch of our fixture, not of MCP_FIXTURE_CMD")
    assert os.path.exists(RUN_SH), f"{RUN_SH} is missing: ../shared/mcp-conformance must sit beside the repository"
    with tempfile.TemporaryDirectory() as work:
        log = open(os.path.join(work, "fixture.log"), "w")
        fixture = Fixture(log, FIXTURE_NO_HEADER_CHECKS="1")
        gw = None
        try:
            gw, url = gateway_in_front(fixture.url, work)
            via = run_suite(url, CI_KEY, os.path.join(work, "gateway"))
        finally:
            if gw is not None:
                gw.stop()
            fixture.stop()
            log.close()
        print(f"\nMCP conformance through Palisade, server without header checks: {describe(via)}")
        assert_kept(HEADER_SCENARIOS, via, "the gateway did not enforce the routing headers itself")
        assert_kept([n for n in via], via, "scenarios failing through the gateway")
