#!/usr/bin/env python3
"""Palisade's MCP conformance fixture server.

A small MCP server that offers exactly the tools, resources and prompts the
official MCP conformance suite (npm ``@modelcontextprotocol/conformance``)
exercises, so the suite can be run against it directly, or against a Palisade
gateway that sits in front of it.

It serves MCP Streamable HTTP at ``http://127.0.0.1:$PORT/mcp`` and speaks both
protocol eras on that one URL, as the mcp SDK (2.x) routes them:

* the session era (2025-03-26 ... 2025-11-25): ``initialize``, ``Mcp-Session-Id``,
  a standalone GET stream, server-to-client requests (sampling, elicitation),
  and SSE resumption with ``Last-Event-ID`` (an in-memory event store below);
* the stateless era (2026-07-28): no handshake, ``server/discover``, ``_meta``
  protocol version / client capabilities on each request, ``input_required``
  results with sealed ``requestState``, caching hints and ``subscriptions/listen``;
  plus the ``io.modelcontextprotocol/tasks`` extension (SEP-2663), implemented
  here because the SDK has none: ``tasks/get``, ``tasks/update``, ``tasks/cancel``.

Requests whose ``MCP-Protocol-Version`` header names a handshake-era version (or
that carry none) take the session path; any other value takes the stateless path.

Run from the repository root:

    PORT=3001 .venv/bin/python tests/conformance/fixture.py     # or: --port 3001

It binds to 127.0.0.1 only, keeps the SDK's DNS-rebinding protection (Host and
Origin must be loopback), and exits cleanly on SIGTERM/SIGINT.

This is test scaffolding: every response is canned, nothing here is meant to be
secure beyond the transport checks above.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timezone
from typing import Annotated, Any
from uuid import uuid4

if __name__ == "__main__":
    # The imports below take a few seconds; a SIGTERM or SIGINT that arrives
    # meanwhile ends the process as quietly as a later one would (status 0).
    for _signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signum, lambda *_: sys.exit(0))

import anyio  # noqa: E402  (third-party imports follow the startup signal guard)
import anyio.abc  # noqa: E402
import uvicorn  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from mcp.server import ServerRequestContext  # noqa: E402
from mcp.server.caching import CacheHint  # noqa: E402
from mcp.server.context import CallNext  # noqa: E402
from mcp.server.extension import Extension, MethodBinding  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage  # noqa: E402
from mcp.server.mcpserver.tools.base import Tool  # noqa: E402
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore  # noqa: E402
from mcp.server.transport_security import TransportSecuritySettings  # noqa: E402
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError  # noqa: E402
from mcp.types import (  # noqa: E402
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    CallToolRequestParams,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ErrorData,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    RequestParams,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS  # noqa: E402

log = logging.getLogger("palisade.conformance.fixture")

# The session-era features this fixture must offer (logging, sampling, roots...)
# are deprecated as of 2026-07-28 and the SDK warns on every use; that is expected here.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

HOST = "127.0.0.1"  # loopback only, by design: never bind a wildcard address
MCP_PATH = "/mcp"

# A 1x1 transparent PNG and a one-sample silent 8 kHz WAV: the suite only checks shape and MIME type.
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAC0lEQVR4nGNgAAIAAAUAAXpeqz8AAAAASUVORK5CYII="
WAV_SILENT = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQIAAAAAAA=="

# Key for sealing the stateless era's requestState. The SDK encrypts and
# authenticates the state it hands to clients, so the tampered-state scenario is
# rejected at the SDK boundary; a fixed key keeps state valid across restarts.
# It is a test key with no value outside this fixture.
REQUEST_STATE_KEY = b"palisade-conformance-fixture/request-state/v1"

# Retry hint (ms) sent in the SSE priming event, so a client whose stream the
# server closes (test_reconnection) comes back quickly with Last-Event-ID.
SSE_RETRY_MS = 500


# --------------------------------------------------------------------------- #
# SSE resumability (session era)
# --------------------------------------------------------------------------- #


class MemoryEventStore(EventStore):
    """Keeps recent SSE events in memory so a client can resume with Last-Event-ID.

    Events are numbered from one counter shared by all streams; the store is
    bounded so a long-running fixture does not grow without limit.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._events: deque[tuple[int, str, JSONRPCMessage | None]] = deque(maxlen=capacity)
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = next(self._ids)
        self._events.append((event_id, stream_id, message))
        return str(event_id)

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        stream = next((s for i, s, _ in self._events if i == after), None)
        if stream is None:
            return None
        for event_id, stream_id, message in list(self._events):
            # `None` marks a priming event: it has an id but nothing to replay.
            if stream_id == stream and event_id > after and message is not None:
                await send_callback(EventMessage(message, str(event_id)))
        return stream


# --------------------------------------------------------------------------- #
# Input requests (elicitation, sampling) and their answers, for input_required
# results and for tasks waiting on the client
# --------------------------------------------------------------------------- #


def _form(message: str, field: str, kind: str = "string") -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _ask_name(message: str = "What is your name?") -> ElicitRequest:
    return _form(message, "name")


def _sample(text: str, max_tokens: int = 100) -> CreateMessageRequest:
    prompt = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[prompt], max_tokens=max_tokens))


def _accepted(answer: Any, field: str) -> Any:
    """The named field of an accepted elicitation answer (typed or raw JSON), else None."""
    if isinstance(answer, ElicitResult):
        answer = answer.model_dump(mode="json")
    if isinstance(answer, dict) and answer.get("action") == "accept" and isinstance(answer.get("content"), dict):
        return answer["content"].get(field)
    return None


# --------------------------------------------------------------------------- #
# Tasks extension (io.modelcontextprotocol/tasks, SEP-2663), 2026-07-28 only
# --------------------------------------------------------------------------- #
# A client that declares the extension (in its request's _meta client
# capabilities) and calls a task-capable tool gets a CreateTaskResult
# (resultType "task") at once; the work runs in the background and the client
# polls tasks/get, answers questions with tasks/update, or stops it with
# tasks/cancel. A client that does not declare it gets the plain synchronous
# result for an "optional" tool and a -32021 error for a "required" one.
#
# The mcp SDK has no tasks support of its own; this is a small in-memory
# implementation on top of its Extension hook, enough for the conformance
# fixtures (greet, slow_compute, failing_job, protocol_error_job,
# confirm_delete, multi_input, test_tool_with_task).

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TASK_TTL_MS = 10 * 60 * 1000  # a task stays readable this long after it is created
TASK_POLL_MS = 200  # suggested tasks/get polling interval
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


def _timestamp() -> str:
    """ISO-8601 UTC, millisecond precision, e.g. 2026-07-28T12:00:00.000Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_result(text: str, *, is_error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


class FixtureTask:
    """One task: its status, its outcome, and the questions it is waiting on."""

    def __init__(self) -> None:
        self.task_id = uuid4().hex
        self.status = "working"
        self.status_message: str | None = None
        self.created_at = self.updated_at = _timestamp()
        self.expires_at = time.monotonic() + TASK_TTL_MS / 1000
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.pending: dict[str, dict[str, Any]] = {}  # key -> outstanding input request (wire form)
        self._answers: dict[str, Any] = {}
        self._answered = anyio.Event()
        self._key_serial = itertools.count(1)
        self.cancel_scope = anyio.CancelScope()

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def _move(self, status: str, message: str | None = None) -> None:
        self.status, self.status_message, self.updated_at = status, message, _timestamp()

    def envelope(self) -> dict[str, Any]:
        """The Task fields shared by CreateTaskResult and tasks/get."""
        fields: dict[str, Any] = {
            "taskId": self.task_id,
            "status": self.status,
            "createdAt": self.created_at,
            "lastUpdatedAt": self.updated_at,
            "ttlMs": TASK_TTL_MS,
            "pollIntervalMs": TASK_POLL_MS,
        }
        if self.status_message is not None:
            fields["statusMessage"] = self.status_message
        return fields

    def detailed(self) -> dict[str, Any]:
        """tasks/get: the envelope plus what the status calls for (result, error or inputRequests)."""
        fields = self.envelope()
        if self.status == "completed":
            fields["result"] = self.result
        elif self.status == "failed":
            fields["error"] = self.error
        elif self.status == "input_required":
            fields["inputRequests"] = dict(self.pending)
        return fields

    # ---- called by the job -------------------------------------------------

    async def ask(self, questions: dict[str, InputRequest]) -> dict[str, Any]:
        """Park the task as input_required until every question is answered; return answers by label.

        Each question gets a fresh key (label plus a serial), so no key is ever
        reused over the task's lifetime.
        """
        keys = {label: f"{label}-{next(self._key_serial)}" for label in questions}
        for label, key in keys.items():
            self.pending[key] = questions[label].model_dump(by_alias=True, mode="json", exclude_none=True)
        self._move("input_required")
        while any(key in self.pending for key in keys.values()):
            self._answered = anyio.Event()
            await self._answered.wait()
        self._move("working")
        return {label: self._answers.pop(key) for label, key in keys.items()}

    # ---- called by request handlers ----------------------------------------

    def answer(self, responses: dict[str, Any]) -> None:
        """Record tasks/update answers; keys that are not outstanding are ignored."""
        for key, response in responses.items():
            if key in self.pending:
                del self.pending[key]
                self._answers[key] = response
        self._answered.set()

    def cancel(self) -> None:
        if not self.terminal:
            self.pending.clear()
            self._move("cancelled", "Cancelled by the client")
            self.cancel_scope.cancel()

    def complete(self, result: dict[str, Any]) -> None:
        if not self.terminal:
            self.result = result
            self._move("completed")

    def fail(self, error: ErrorData) -> None:
        if not self.terminal:
            self.error = error.model_dump(by_alias=True, mode="json", exclude_none=True)
            self._move("failed", error.message)


TaskJob = Callable[..., Awaitable[dict[str, Any]]]


class TaskRegistry:
    """All tasks of this process, and the task group their jobs run in."""

    def __init__(self) -> None:
        self._tasks: dict[str, FixtureTask] = {}
        self._group: anyio.abc.TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the task group for the server's lifetime; shutting down cancels running jobs."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield
            finally:
                self._group = None
                group.cancel_scope.cancel()

    def start(self, job: TaskJob, *args: Any) -> FixtureTask:
        """Create a task and start its job. The task is registered before this returns,
        so a tasks/get right after the CreateTaskResult already finds it."""
        if self._group is None:
            raise MCPError(code=INTERNAL_ERROR, message="task runner is not running")
        self._forget_expired()
        task = FixtureTask()
        self._tasks[task.task_id] = task
        self._group.start_soon(self._run, task, job, args)
        return task

    def find(self, task_id: str) -> FixtureTask:
        self._forget_expired()
        task = self._tasks.get(task_id)
        if task is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown taskId: {task_id}")
        return task

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for task_id in [t.task_id for t in self._tasks.values() if t.expires_at < now]:
            task = self._tasks.pop(task_id)
            task.cancel_scope.cancel()

    @staticmethod
    async def _run(task: FixtureTask, job: TaskJob, args: tuple[Any, ...]) -> None:
        with task.cancel_scope:
            try:
                result = await job(task, *args)
            except MCPError as exc:  # a JSON-RPC error: the task failed
                task.fail(exc.error)
            except Exception as exc:
                log.exception("task %s crashed", task.task_id)
                task.fail(ErrorData(code=INTERNAL_ERROR, message=f"Task crashed: {exc}"))
            else:  # a tool result, possibly isError=true: the task completed
                task.complete(result)


task_registry = TaskRegistry()


# ---- the task-capable tools' background jobs --------------------------------


async def slow_compute_job(task: FixtureTask, seconds: float, label: str) -> dict[str, Any]:
    await anyio.sleep(max(0.0, seconds))
    return _text_result(f"Computed {label or 'result'} after {seconds:g}s")


async def failing_job_job(task: FixtureTask) -> dict[str, Any]:
    await anyio.sleep(1)
    return _text_result("failing_job: the job ran and reported an error", is_error=True)


async def protocol_error_job_job(task: FixtureTask) -> dict[str, Any]:
    await anyio.sleep(0.2)
    raise MCPError(code=INTERNAL_ERROR, message="protocol_error_job: internal failure during execution")


async def confirm_delete_job(task: FixtureTask, filename: str) -> dict[str, Any]:
    answers = await task.ask({"confirm": _form(f"Delete {filename}?", "confirm", "boolean")})
    if _accepted(answers["confirm"], "confirm"):
        return _text_result(f"Deleted {filename}")
    return _text_result(f"Kept {filename}")


async def multi_input_job(task: FixtureTask) -> dict[str, Any]:
    answers = await task.ask({"name": _ask_name(), "confirm": _form("Proceed?", "confirm", "boolean")})
    name, confirm = _accepted(answers["name"], "name"), _accepted(answers["confirm"], "confirm")
    return _text_result(f"Got name={name!r}, confirm={confirm!r}")


async def greeting_job(task: FixtureTask, name: str) -> dict[str, Any]:
    await anyio.sleep(0.2)
    return _text_result(f"Hello, {name}! (from a task)")


# ---- dispatch ------------------------------------------------------------------


def _arg(params: CallToolRequestParams, name: str, default: Any) -> Any:
    return (params.arguments or {}).get(name, default)


def _start_slow_compute(params: CallToolRequestParams) -> FixtureTask:
    return task_registry.start(slow_compute_job, float(_arg(params, "seconds", 1)), str(_arg(params, "label", "")))


def _start_confirm_delete(params: CallToolRequestParams) -> FixtureTask:
    return task_registry.start(confirm_delete_job, str(_arg(params, "filename", "file")))


def _start_test_tool_with_task(params: CallToolRequestParams) -> FixtureTask | InputRequiredResult:
    """Round 1 asks for a name over input_required (MRTR, no task yet); round 2 makes the task."""
    answers = params.input_responses or {}
    if "user_name" not in answers:
        return InputRequiredResult(input_requests={"user_name": _ask_name()})
    return task_registry.start(greeting_job, _accepted(answers["user_name"], "name") or "stranger")


TaskStarter = Callable[[CallToolRequestParams], "FixtureTask | InputRequiredResult"]

# tool name -> (task support, how to start it for a client that declared the extension)
TASK_TOOLS: dict[str, tuple[str, TaskStarter]] = {
    "slow_compute": ("optional", _start_slow_compute),
    "failing_job": ("required", lambda _params: task_registry.start(failing_job_job)),
    "protocol_error_job": ("required", lambda _params: task_registry.start(protocol_error_job_job)),
    "confirm_delete": ("required", _start_confirm_delete),
    "multi_input": ("required", lambda _params: task_registry.start(multi_input_job)),
    "test_tool_with_task": ("required", _start_test_tool_with_task),
}


def _declares_tasks(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this request may get a task: 2026-07-28 wire, extension in the client's capabilities."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and TASKS_EXTENSION in capabilities.extensions)


def _missing_tasks_capability() -> MCPError:
    return MCPError(
        code=MISSING_REQUIRED_CLIENT_CAPABILITY,
        message=f"This request requires the client to declare the {TASKS_EXTENSION!r} extension",
        data={"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}},
    )


def _admit_task_request(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    """Checks every tasks/* request passes before its task is looked up.

    SEP-2243 as SEP-2663 applies it: Mcp-Name, when sent, must equal params.taskId
    (-32020); and the client must have declared the extension (-32021).
    """
    headers = getattr(ctx.request, "headers", None)
    name = headers.get("mcp-name") if headers is not None else None
    if name is not None and name.strip() != task_id:
        raise MCPError(code=HEADER_MISMATCH, message="Mcp-Name header does not match params.taskId")
    if not _declares_tasks(ctx):
        raise _missing_tasks_capability()


class TaskIdParams(RequestParams):
    task_id: str


class TaskUpdateParams(TaskIdParams):
    input_responses: dict[str, Any] = Field(default_factory=dict)


async def tasks_get(ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
    _admit_task_request(ctx, params.task_id)
    return {"resultType": "complete", **task_registry.find(params.task_id).detailed()}


async def tasks_update(ctx: ServerRequestContext[Any, Any], params: TaskUpdateParams) -> dict[str, Any]:
    _admit_task_request(ctx, params.task_id)
    task_registry.find(params.task_id).answer(params.input_responses)
    return {"resultType": "complete"}


async def tasks_cancel(ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
    _admit_task_request(ctx, params.task_id)
    task_registry.find(params.task_id).cancel()  # a terminal task stays as it is: same empty ack
    return {"resultType": "complete"}


# The suite's wire-schema check validates every tools/call result against the
# core CallToolResult schema, which requires `content`; it does not know the
# extension's CreateTaskResult. Result objects admit extra members, so an empty
# `content` keeps a CreateTaskResult valid for both readings. Set
# FIXTURE_TASK_RESULT_CONTENT=0 to send the bare SEP-2663 shape instead (the
# tasks-* scenarios then fail only their wire-schema-valid check).
TASK_RESULT_EMPTY_CONTENT = os.environ.get("FIXTURE_TASK_RESULT_CONTENT", "1") != "0"


def create_task_result(task: FixtureTask) -> dict[str, Any]:
    """CreateTaskResult: a flat Result & Task, resultType "task"."""
    result: dict[str, Any] = {"resultType": "task", **task.envelope()}
    if TASK_RESULT_EMPTY_CONTENT:
        result["content"] = []
    return result


class TasksExtension(Extension):
    """io.modelcontextprotocol/tasks: the tasks/* methods plus a tools/call interceptor."""

    identifier = TASKS_EXTENSION

    def methods(self) -> list[MethodBinding]:
        modern = frozenset(MODERN_PROTOCOL_VERSIONS)
        return [
            MethodBinding("tasks/get", TaskIdParams, tasks_get, protocol_versions=modern),
            MethodBinding("tasks/update", TaskUpdateParams, tasks_update, protocol_versions=modern),
            MethodBinding("tasks/cancel", TaskIdParams, tasks_cancel, protocol_versions=modern),
        ]

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> Any:
        entry = TASK_TOOLS.get(params.name)
        if entry is None:  # not task-capable (a legacy `task` param is simply ignored)
            return await call_next(ctx)
        support, start = entry
        if not _declares_tasks(ctx):
            if support == "required":
                raise _missing_tasks_capability()
            return await call_next(ctx)  # optional: run synchronously
        started = start(params)
        if isinstance(started, FixtureTask):
            return create_task_result(started)
        return started  # an input_required round before the task exists


@contextlib.asynccontextmanager
async def fixture_lifespan(_server: Any) -> AsyncIterator[dict[str, Any]]:
    async with task_registry.running():
        yield {}


# --------------------------------------------------------------------------- #
# The server
# --------------------------------------------------------------------------- #

# One JSON Schema 2020-12 input schema with the keywords the json-schema-2020-12
# scenario looks for ($schema, $defs, $ref, $anchor, allOf/anyOf, if/then/else,
# additionalProperties); it is attached to `json_schema_2020_12_tool` below.
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def _schema_2020_12_tool() -> Tool:
    """`json_schema_2020_12_tool`: its advertised inputSchema is SCHEMA_2020_12 verbatim."""

    def json_schema_2020_12_tool() -> str:
        """Advertises a JSON Schema 2020-12 inputSchema (SEP-1613)."""
        return "ok"

    tool = Tool.from_function(json_schema_2020_12_tool)
    return tool.model_copy(update={"parameters": SCHEMA_2020_12})


# Every cacheable list/read result carries ttlMs + cacheScope (SEP-2549).
_NO_CACHE = CacheHint(ttl_ms=0, scope="private")
CACHE_HINTS = {
    "tools/list": _NO_CACHE,
    "prompts/list": _NO_CACHE,
    "resources/list": _NO_CACHE,
    "resources/templates/list": _NO_CACHE,
    "resources/read": _NO_CACHE,
}

server = MCPServer(
    name="palisade-conformance-fixture",
    version="1.0.0",
    tools=[_schema_2020_12_tool()],
    request_state_security=RequestStateSecurity(keys=[REQUEST_STATE_KEY]),
    cache_hints=CACHE_HINTS,
    extensions=[TasksExtension()],
    lifespan=fixture_lifespan,
    log_level="WARNING",
)

# Resources the client has subscribed to over resources/subscribe (session era).
subscribed_uris: set[str] = set()


# ---- content tools --------------------------------------------------------- #


@server.tool()
def test_simple_text() -> str:
    """Returns one text block."""
    return "This is a simple text response for testing."


@server.tool()
def test_image_content() -> list[ImageContent]:
    """Returns one PNG image block."""
    return [ImageContent(type="image", data=PNG_1X1, mime_type="image/png")]


@server.tool()
def test_audio_content() -> list[AudioContent]:
    """Returns one WAV audio block."""
    return [AudioContent(type="audio", data=WAV_SILENT, mime_type="audio/wav")]


@server.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """Returns one embedded text resource."""
    inner = TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return [EmbeddedResource(type="resource", resource=inner)]


@server.tool()
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Returns text, an image and an embedded JSON resource, in that order."""
    inner = TextResourceContents(
        uri="test://mixed-content-resource", mime_type="application/json", text='{"test": "data", "value": 123}'
    )
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
        EmbeddedResource(type="resource", resource=inner),
    ]


@server.tool()
def test_error_handling() -> str:
    """Always fails: the failure comes back as a tool result with isError=true."""
    raise ToolError("This tool intentionally returns an error for testing")


# ---- notifications during a call ------------------------------------------ #


@server.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three info-level log notifications while it runs."""
    for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.log("info", text)
        await asyncio.sleep(0.05)
    return "Tool with logging executed successfully"


@server.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Sends progress 0, 50, 100 (of 100) against the caller's progressToken."""
    for step in (0, 50, 100):
        await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
        await asyncio.sleep(0.05)
    meta = ctx.request_context.meta or {}
    return str(meta.get("progress_token", meta.get("progressToken", "")))


@server.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Tries to log; on 2026-07-28 nothing may be sent unless the request asked for a log level."""
    await ctx.log("info", "test_logging_tool ran")
    return "logged (if the request opted in)"


@server.tool()
async def test_reconnection(ctx: Context) -> str:
    """Closes its own SSE response stream mid-call; the client resumes with Last-Event-ID (SEP-1699)."""
    await ctx.log("info", "Before disconnect")
    await ctx.close_sse_stream()
    await asyncio.sleep(0.3)  # give the client time to reconnect
    await ctx.log("info", "After reconnect")
    return "Reconnection test completed"


# ---- server-to-client requests (session era) ------------------------------- #


class UserAnswer(BaseModel):
    response: str = Field(description="User's response")


@server.tool()
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Asks the client's LLM (sampling/createMessage) and echoes its reply."""
    try:
        reply = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,  # ride this call's stream, not the GET stream
        )
    except Exception as exc:  # the client may not support sampling
        return f"Sampling not supported or error: {exc}"
    text = reply.content.text if reply.content.type == "text" else "No response"
    return f"LLM response: {text}"


@server.tool()
async def test_elicitation(message: str, ctx: Context) -> str:
    """Asks the user (elicitation/create) for one string and echoes the outcome."""
    try:
        answer = await ctx.elicit(message=message, schema=UserAnswer)
    except Exception as exc:
        return f"Elicitation not supported or error: {exc}"
    content = answer.data.model_dump_json() if answer.action == "accept" else "{}"
    return f"User response: action={answer.action}, content={content}"


class DefaultsForm(BaseModel):
    """Every primitive type, each with a default (SEP-1034)."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active", description="User status", json_schema_extra={"enum": ["active", "inactive", "pending"]}
    )
    verified: bool = Field(default=True, description="Verification status")


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Elicits a form whose fields all carry defaults (SEP-1034)."""
    try:
        answer = await ctx.elicit(message="Please provide user information", schema=DefaultsForm)
    except Exception as exc:
        return f"Elicitation not supported or error: {exc}"
    content = answer.data.model_dump_json() if answer.action == "accept" else "{}"
    return f"Elicitation result: action={answer.action}, content={content}"


def _titled(options: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"const": value, "title": title} for value, title in options]


class EnumForm(BaseModel):
    """The five enum shapes of SEP-1330."""

    untitledSingle: str = Field(
        description="Simple enum without titles", json_schema_extra={"enum": ["active", "inactive", "pending"]}
    )
    titledSingle: str = Field(
        description="Enum with titled options (oneOf)",
        json_schema_extra={
            "oneOf": _titled([("low", "Low Priority"), ("medium", "Medium Priority"), ("high", "High Priority")])
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titled options",
        json_schema_extra={
            "items": {"anyOf": _titled([("feature", "New Feature"), ("bug", "Bug Fix"), ("docs", "Documentation")])}
        },
    )
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    )


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Elicits a form with every enum variant (SEP-1330)."""
    try:
        answer = await ctx.elicit(message="Please select values using different enum schema types", schema=EnumForm)
    except Exception as exc:
        return f"Elicitation not supported or error: {exc}"
    content = answer.data.model_dump_json() if answer.action == "accept" else "{}"
    return f"Elicitation completed: action={answer.action}, content={content}"


# ---- stateless-era diagnostics (server-stateless scenario) ----------------- #


@server.tool()
async def test_missing_capability(ctx: Context) -> str:
    """Needs the client's `sampling` capability; without it, a -32021 protocol error (not isError)."""
    caps = ctx.client_capabilities
    if caps is None or caps.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "sampling capability declared"


@server.tool()
async def test_streaming_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Needs user input; on 2026-07-28 it asks through an input_required result, never a stream request."""
    if ctx.input_responses and "name" in ctx.input_responses:
        return "thanks"
    return InputRequiredResult(input_requests={"name": _ask_name()})


@server.tool()
async def test_x_mcp_header(
    region: Annotated[
        str,
        Field(description="Mirrored into the Mcp-Param-Region header", json_schema_extra={"x-mcp-header": "Region"}),
    ] = "<none>",
) -> str:
    """Has an argument mirrored into an Mcp-Param-* header (SEP-2243)."""
    return f"region={region}"


def _dynamic_tool() -> str:
    """Registered and removed again by test_trigger_tool_change."""
    return "dynamic"


def _dynamic_prompt() -> str:
    """Registered and removed again by test_trigger_prompt_change."""
    return "dynamic"


@server.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Changes the tool list and tells subscriptions/listen streams (SEP-2575)."""
    server.add_tool(_dynamic_tool, name="test_dynamic_tool")
    server.remove_tool("test_dynamic_tool")
    await ctx.notify_tools_changed()
    return "tool list changed"


@server.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Changes the prompt list and tells subscriptions/listen streams (SEP-2575)."""
    server.add_prompt(Prompt.from_function(_dynamic_prompt, name="test_dynamic_prompt", description="dynamic"))
    server.remove_prompt("test_dynamic_prompt")
    await ctx.notify_prompts_changed()
    return "prompt list changed"


# ---- input_required results (2026-07-28, SEP-2322) ------------------------- #
# A handler sees the client's answers in ctx.input_responses (keyed by the ids
# it chose) and its own echoed state in ctx.request_state; the SDK seals that
# state on the way out and rejects a tampered echo on the way back in.


@server.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """One elicitation round, then a greeting."""
    answers = ctx.input_responses or {}
    if "user_name" in answers:
        return f"Hello, {_accepted(answers['user_name'], 'name') or 'stranger'}!"
    return InputRequiredResult(input_requests={"user_name": _ask_name()})


@server.tool()
async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """One sampling round, then the model's answer."""
    answers = ctx.input_responses or {}
    if "capital_question" in answers:
        reply = answers["capital_question"]
        text = reply.content.text if isinstance(reply, CreateMessageResult) and reply.content.type == "text" else "?"
        return f"Model said: {text}"
    return InputRequiredResult(input_requests={"capital_question": _sample("What is the capital of France?")})


@server.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """One roots/list round, then the number of roots."""
    answers = ctx.input_responses or {}
    if "client_roots" in answers:
        roots = answers["client_roots"]
        return f"Client exposed {len(roots.roots) if isinstance(roots, ListRootsResult) else 0} root(s)."
    return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


@server.tool()
async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Completes only when the answer arrives together with the state it issued."""
    answers = ctx.input_responses or {}
    if "confirm" in answers and ctx.request_state == "awaiting-confirmation":
        return "state-ok: confirmation received"
    return InputRequiredResult(
        input_requests={"confirm": _form("Please confirm", "ok", "boolean")},
        request_state="awaiting-confirmation",
    )


@server.tool()
async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """Asks for an elicitation, a sampling and a roots list at once."""
    wanted = {"user_name", "greeting", "client_roots"}
    if wanted <= (ctx.input_responses or {}).keys():
        return "All inputs received."
    return InputRequiredResult(
        input_requests={
            "user_name": _ask_name(),
            "greeting": _sample("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        },
        request_state="multiple-inputs",
    )


@server.tool()
async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Three rounds (name, then colour, then the answer), carried in evolving requestState."""
    state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    answers = ctx.input_responses or {}
    first = InputRequiredResult(
        input_requests={"step1": _ask_name("Step 1: What is your name?")},
        request_state=json.dumps({"round": 1}),
    )
    if state.get("round") == 1 and "step1" in answers:
        return InputRequiredResult(
            input_requests={"step2": _form("Step 2: What is your favorite color?", "color")},
            request_state=json.dumps({"round": 2, "name": _accepted(answers["step1"], "name")}),
        )
    if state.get("round") == 2 and "step2" in answers:
        return f"{state.get('name')} likes {_accepted(answers['step2'], 'color')}."
    return first  # round 0, or an answer missing / out of order: start over


@server.tool()
async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Issues state once; a tampered echo never reaches here (the SDK rejects it)."""
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": _form("Please confirm", "ok", "boolean")}, request_state="round-1"
        )
    return f"state-ok: {ctx.request_state}"


@server.tool()
async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Asks only for what the client said it supports."""
    caps = ctx.client_capabilities
    wanted: dict[str, InputRequest] = {}
    if caps is None or caps.sampling is not None:
        wanted["sample"] = _sample("Say hello", 50)
    if caps is None or caps.elicitation is not None:
        wanted["ask"] = _ask_name()
    return InputRequiredResult(input_requests=wanted, request_state="capability-gated")


# ---- task-capable tools (SEP-2663) ----------------------------------------- #
# What runs here is the synchronous face of each tool. A client that declared
# the tasks extension never reaches these bodies for the task-capable ones:
# TasksExtension intercepts the call and starts a background job instead (see
# TASK_TOOLS); a client that did not gets slow_compute run synchronously and a
# -32021 error for the "required" ones.


@server.tool()
def greet(name: str) -> str:
    """Synchronous only: never becomes a task."""
    return f"Hello, {name}!"


@server.tool()
async def slow_compute(seconds: float = 1.0, label: str = "") -> str:
    """Task support optional: sleeps `seconds`, then answers (synchronously when no task)."""
    await anyio.sleep(max(0.0, seconds))
    return f"Computed {label or 'result'} after {seconds:g}s"


@server.tool()
def failing_job() -> str:
    """Task support required: the job ends with a tool error (completed, isError=true)."""
    raise _missing_tasks_capability()


@server.tool()
def protocol_error_job() -> str:
    """Task support required: the job ends with a JSON-RPC error (status failed)."""
    raise _missing_tasks_capability()


@server.tool()
def confirm_delete(filename: str) -> str:
    """Task support required: the job asks for a confirmation (input_required) first."""
    raise _missing_tasks_capability()


@server.tool()
def multi_input() -> str:
    """Task support required: the job asks two questions at once."""
    raise _missing_tasks_capability()


@server.tool()
def test_tool_with_task() -> str:
    """Task support required: one input_required round on tools/call, then a task greeting the given name."""
    raise _missing_tasks_capability()


# ---- resources ------------------------------------------------------------- #


@server.resource("test://static-text", mime_type="text/plain")
def static_text() -> str:
    """A fixed text resource."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A fixed binary resource (a PNG)."""
    return base64.b64decode(PNG_1X1)


@server.resource("test://template/{id}/data", mime_type="application/json")
def template_data(id: str) -> str:
    """A templated resource; the id is substituted into the content."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource("test://watched-resource", mime_type="text/plain")
def watched() -> str:
    """A resource clients may subscribe to."""
    return "Watched resource content"


# ---- prompts --------------------------------------------------------------- #


@server.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """A prompt without arguments."""
    return [UserMessage(role="user", content=TextContent(type="text", text="This is a simple prompt for testing."))]


@server.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt with two required arguments."""
    text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
    return [UserMessage(role="user", content=TextContent(type="text", text=text))]


@server.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
    """A prompt whose first message embeds the resource named by resourceUri."""
    inner = TextResourceContents(uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing.")
    return [
        UserMessage(role="user", content=EmbeddedResource(type="resource", resource=inner)),
        UserMessage(role="user", content=TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@server.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt with an image message."""
    return [
        UserMessage(role="user", content=ImageContent(type="image", data=PNG_1X1, mime_type="image/png")),
        UserMessage(role="user", content=TextContent(type="text", text="Please analyze the image above.")),
    ]


@server.prompt()
async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
    """prompts/get that needs input first (input_required outside tools/call)."""
    answers = ctx.input_responses or {}
    if "user_context" in answers:
        text = _accepted(answers["user_context"], "context") or "?"
        return [UserMessage(role="user", content=TextContent(type="text", text=f"Use the following context: {text}"))]
    return InputRequiredResult(
        input_requests={"user_context": _form("What context should the prompt use?", "context")}
    )


# ---- completion, logging level, subscriptions (session era) ---------------- #


@server.completion()
async def complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion:
    """Offers a few canned values that start with what was typed so far."""
    choices = ["alpha", "beta", "gamma"]
    values = [c for c in choices if c.startswith(argument.value or "")]
    return Completion(values=values, total=len(values), has_more=False)


async def set_logging_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
    log.info("client set log level to %s", params.level)
    return EmptyResult()


async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
    subscribed_uris.add(str(params.uri))
    return EmptyResult()


async def unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
    subscribed_uris.discard(str(params.uri))
    return EmptyResult()


# MCPServer has no public hook for these three session-era methods; registering
# them on the low-level server also advertises the logging and resources.subscribe
# capabilities in the initialize result.
_lowlevel = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_logging_level)
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


class StreamCloser:
    """ASGI wrapper that can end every in-flight HTTP exchange at once.

    Some responses never end on their own: a session's GET stream and a
    `subscriptions/listen` stream stay open until the client leaves. On shutdown
    we cancel them, so the server stops promptly instead of waiting for uvicorn's
    graceful-shutdown timeout and then tearing them down with a traceback.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._in_flight: set[anyio.CancelScope] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        progress = {"started": False, "done": False}

        async def tracking_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                progress["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                progress["done"] = True
            await send(message)

        with anyio.CancelScope() as cancel_scope:
            self._in_flight.add(cancel_scope)
            try:
                await self.app(scope, receive, tracking_send)
            finally:
                self._in_flight.discard(cancel_scope)
        if cancel_scope.cancelled_caught and not progress["done"]:
            # Cut off by shutdown: finish the HTTP response properly (an SSE
            # stream simply ends; a request not yet answered gets a 503).
            if not progress["started"]:
                await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def close_all(self) -> None:
        for cancel_scope in list(self._in_flight):
            cancel_scope.cancel()


class FixtureServer(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT handled on the event loop.

    On either signal: stop accepting, end open streams, run the app's shutdown
    (which closes MCP sessions), and return normally so the process exits 0.
    (Stock uvicorn re-raises the signal after shutting down, which would end
    the process with 143 / KeyboardInterrupt instead.)
    """

    def __init__(self, config: uvicorn.Config, closer: StreamCloser) -> None:
        super().__init__(config)
        self._closer = closer

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self.should_exit:  # a second signal: stop waiting for anything
            self.force_exit = True
        log.warning("received %s, shutting down", signal.Signals(sig).name)
        self.should_exit = True
        self._closer.close_all()


def build_app() -> Any:
    """The Starlette app: Streamable HTTP at /mcp, both eras, loopback-only Host/Origin."""
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    return server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        event_store=MemoryEventStore(),
        retry_interval=SSE_RETRY_MS,
        transport_security=security,
        host=HOST,
    )


def parse_port(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Palisade's MCP conformance fixture server (loopback only).")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: $PORT, else 3001)")
    args = parser.parse_args(argv)
    if args.port is not None:
        port = args.port
    else:
        raw = os.environ.get("PORT", "3001")
        if not raw.isdigit():
            parser.error(f"PORT must be a number, got {raw!r}")
        port = int(raw)
    if not 0 < port < 65536:
        parser.error(f"invalid port {port}")
    return port


def main(argv: list[str] | None = None) -> int:
    port = parse_port(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    closer = StreamCloser(build_app())
    config = uvicorn.Config(
        closer,
        host=HOST,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=3,  # a backstop; StreamCloser normally ends streams at once
    )
    fixture = FixtureServer(config, closer)
    asyncio.run(fixture.serve())
    return 0 if fixture.started else 1


if __name__ == "__main__":
    sys.exit(main())
