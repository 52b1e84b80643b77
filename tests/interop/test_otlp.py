"""The trace export in OTLP/HTTP protobuf, read back with OpenTelemetry's own generated classes
(`opentelemetry-proto`): what a collector that takes only protobuf decodes."""

import http.server
import threading
import time
import urllib.request

from conftest import CI_KEY, Gateway
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Receiver(http.server.BaseHTTPRequestHandler):
    got = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.got.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def attrs(kvs):
    out = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def test_spans_in_protobuf_decode_with_the_official_classes(mock):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    gw = Gateway(
        mock,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "edge-gateway",
        },
    )
    try:
        req = urllib.request.Request(
            gw.proxy_url("oai") + "/v1/chat/completions",
            data=b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "hello"}]}',
            method="POST",
        )
        req.add_header("authorization", f"Bearer {CI_KEY}")
        req.add_header("content-type", "application/json")
        req.add_header("traceparent", f"00-{TRACE}-{PARENT}-01")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            request_id = r.headers["x-request-id"]
        deadline = time.time() + 10
        while not Receiver.got and time.time() < deadline:
            time.sleep(0.05)
    finally:
        gw.stop()
        server.shutdown()
    assert Receiver.got, "no export arrived"
    path, content_type, body = Receiver.got[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    export = ExportTraceServiceRequest.FromString(body)
    [rs] = export.resource_spans
    resource = attrs(rs.resource.attributes)
    assert resource["service.name"] == "edge-gateway"
    [ss] = rs.scope_spans
    assert ss.scope.name == "palisade"
    spans = {s.kind: s for s in ss.spans}
    assert len(ss.spans) == 2, ss.spans
    server_span = spans[Span.SPAN_KIND_SERVER]
    assert server_span.trace_id.hex() == TRACE
    assert server_span.parent_span_id.hex() == PARENT
    assert len(server_span.span_id) == 8
    assert server_span.name == "openai chat_completions"
    a = attrs(server_span.attributes)
    assert a["palisade.proxy"] == "oai"
    assert a["palisade.request_id"] == request_id
    assert a["gen_ai.request.model"] == "mock-gpt"
    assert a["http.response.status_code"] == 200
    assert isinstance(a["gen_ai.usage.input_tokens"], int) and a["gen_ai.usage.input_tokens"] > 0
    assert server_span.status.code == Status.STATUS_CODE_UNSET
    now = time.time_ns()
    assert now - 60 * 10**9 < server_span.start_time_unix_nano <= server_span.end_time_unix_nano <= now
    client_span = spans[Span.SPAN_KIND_CLIENT]
    assert client_span.name == "openai upstream"
    assert client_span.trace_id == server_span.trace_id
    assert client_span.parent_span_id == server_span.span_id
    assert server_span.start_time_unix_nano <= client_span.start_time_unix_nano
    assert client_span.end_time_unix_nano <= server_span.end_time_unix_nano
    assert attrs(client_span.attributes)["server.address"] == "127.0.0.1"
