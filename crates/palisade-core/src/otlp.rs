//! OpenTelemetry traces of proxied requests, in OTLP's JSON encoding (`ExportTraceServiceRequest`
//! as OTLP/HTTP takes it): one server span per request, in the caller's trace when its request
//! carried a W3C `traceparent`, and under it a client span for the call to an LLM upstream.

use serde_json::{Value, json};

use crate::record::RequestRecord;

/// The ids of a valid W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`,
/// neither id all zeros): trace id and parent span id. A later version (`01`…`fe`) is read the
/// way the recommendation asks: its first four fields as version 00's, more fields after a `-`
/// allowed; version `ff` is invalid.
pub fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let (trace, span, _) = traceparent_fields(v)?;
    Some((trace, span))
}

/// Trace id, parent span id and flags of a valid `traceparent` ([`parse_traceparent`]).
fn traceparent_fields(v: &str) -> Option<(&str, &str, &str)> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let more_allowed = version != "00";
    (hex(version, 2)
        && version != "ff"
        && (more_allowed || parts.next().is_none())
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && !zero(trace)
        && !zero(span))
    .then_some((trace, span, flags))
}

/// A request's span ids: its trace (the caller's, else one of its own), its own span id and
/// its parent (the caller's span). Derived from the request id, so they are stable.
pub fn span_ids(rec: &RequestRecord) -> (String, String, Option<String>) {
    let ids = Ids::of(rec);
    (ids.trace, ids.span, ids.parent)
}

/// All the ids of a request's spans, from one digest of its request id: its own span id
/// (digest bytes 0–7), its upstream call's (8–15), its own trace id (16–31) unless the caller's
/// trace is joined.
struct Ids {
    trace: String,
    span: String,
    parent: Option<String>,
    upstream: String,
}

impl Ids {
    fn of(rec: &RequestRecord) -> Ids {
        let digest = crate::crypto::sha256_hex(format!("palisade-span:{}", rec.id).as_bytes());
        let (trace, parent) = match rec.trace_parent.as_deref().and_then(parse_traceparent) {
            Some((trace, parent)) => (trace.to_string(), Some(parent.to_string())),
            None => (digest[32..64].to_string(), None),
        };
        Ids {
            trace,
            span: digest[..16].to_string(),
            parent,
            upstream: digest[16..32].to_string(),
        }
    }
}

/// The `traceparent` an upstream call carries: the request's trace, the call's own span as the
/// parent, and the caller's flags (sampled when the caller sent none).
pub fn upstream_traceparent(rec: &RequestRecord) -> String {
    let ids = Ids::of(rec);
    // Of the flags only `sampled` is defined (version 00 knows no other).
    let flags = rec
        .trace_parent
        .as_deref()
        .and_then(traceparent_fields)
        .and_then(|(_, _, f)| u8::from_str_radix(f, 16).ok())
        .map_or(1, |f| f & 1);
    format!("00-{}-{}-{flags:02x}", ids.trace, ids.upstream)
}

/// The client span of a request's upstream call, if it made one.
fn upstream_span(rec: &RequestRecord) -> Option<Value> {
    let call = rec.upstream.as_ref()?;
    let ids = Ids::of(rec);
    let start = rec.ts_ms.max(0) as u128 * 1_000_000 + call.at_us.max(0) as u128 * 1000;
    let took = call
        .took_us
        .unwrap_or_else(|| rec.latency_us.saturating_sub(call.at_us));
    let end = start + took.max(0) as u128 * 1000;
    let authority = call.host.parse::<http::uri::Authority>().ok();
    let mut attrs = vec![
        attr(
            "server.address",
            json!(authority.as_ref().map_or(call.host.as_str(), |a| a.host())),
        ),
        attr("http.request.method", json!(rec.method)),
        attr("url.path", json!(rec.path)),
        attr("palisade.request_id", json!(rec.id)),
    ];
    if let Some(port) = authority.as_ref().and_then(http::uri::Authority::port_u16) {
        attrs.push(attr("server.port", json!(port)));
    }
    // The upstream's own answer; none when it never answered (refused, timed out).
    if let Some(status) = call.status {
        attrs.push(attr("http.response.status_code", json!(status)));
    }
    Some(json!({
        "traceId": ids.trace,
        "spanId": ids.upstream,
        "parentSpanId": ids.span,
        "name": format!("{} upstream", rec.api),
        "kind": 3,
        "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attrs,
        "status": span_status(rec),
    }))
}

/// A span's status: ERROR for a failure of the gateway or the upstream; a refusal (4xx) is the
/// gateway working, and a block is in `palisade.decision`.
fn span_status(rec: &RequestRecord) -> Value {
    if rec.status >= 500 || (rec.status == 0 && rec.error.is_some()) {
        json!({"code": 2, "message": rec.error.clone().unwrap_or_default()})
    } else {
        json!({"code": 0})
    }
}

/// What the spans are shaped for: any OpenTelemetry collector, or Langfuse's OTLP endpoint
/// (the same spans with the attributes Langfuse maps onto its traces and observations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Plain OpenTelemetry (semantic conventions and `palisade.*` attributes).
    #[default]
    Otel,
    /// Langfuse: LLM calls become generations, tool calls tools, with user, session, cost,
    /// level and tags.
    Langfuse,
}

fn attr(key: &str, v: Value) -> Value {
    let value = match v {
        Value::Array(items) => json!({"arrayValue": {"values": items
            .into_iter()
            .map(|i| json!({"stringValue": i.as_str().map_or_else(|| i.to_string(), str::to_string)}))
            .collect::<Vec<_>>()}}),
        Value::String(s) => json!({ "stringValue": s }),
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": value })
}

/// What Langfuse reads of a request: the observation's type (a model call is a generation, an
/// MCP tool call a tool), its trace's name, user and session, the cost, and a level and status
/// message for failures and policy decisions.
fn langfuse_attrs(rec: &RequestRecord, attrs: &mut Vec<Value>) {
    let kind = match rec.api.as_str() {
        "mcp" if rec.tool.is_some() => "tool",
        "mcp" | "a2a" => "span",
        _ if rec.model.is_some() || rec.prompt_tokens.is_some() => "generation",
        _ => "span",
    };
    attrs.push(attr("langfuse.observation.type", json!(kind)));
    attrs.push(attr(
        "langfuse.trace.name",
        json!(format!("{} {}", rec.proxy, rec.endpoint)),
    ));
    if let Some(user) = &rec.key_name {
        attrs.push(attr("langfuse.user.id", json!(user)));
    }
    if let Some(session) = &rec.session {
        attrs.push(attr("langfuse.session.id", json!(session)));
    }
    if let Some(cost) = rec.cost_usd {
        attrs.push(attr("gen_ai.usage.cost", json!(cost)));
    }
    if let Some(c) = &rec.content {
        attrs.push(attr("langfuse.observation.input", json!(c.input)));
        if let Some(out) = &c.output {
            attrs.push(attr("langfuse.observation.output", json!(out)));
        }
    }
    let mut tags = vec![json!(rec.proxy), json!(rec.api)];
    if let Some(g) = &rec.group {
        tags.push(json!(format!("group:{g}")));
    }
    if let Some(d) = &rec.decision {
        tags.push(json!(format!("decision:{d}")));
    }
    attrs.push(attr("langfuse.trace.tags", Value::Array(tags)));
    let failed = rec.status >= 500 || (rec.status == 0 && rec.error.is_some());
    let flagged = matches!(rec.decision.as_deref(), Some("block" | "alert" | "redact"));
    let level = if failed {
        "ERROR"
    } else if flagged || rec.status >= 400 {
        "WARNING"
    } else {
        "DEFAULT"
    };
    attrs.push(attr("langfuse.observation.level", json!(level)));
    let message = match (&rec.error, &rec.matched_rules) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(rules)) if flagged => Some(format!(
            "{} by policy (rules: {rules})",
            rec.decision.as_deref().unwrap_or("")
        )),
        _ => None,
    };
    if let Some(m) = message {
        attrs.push(attr("langfuse.observation.status_message", json!(m)));
    }
}

/// One request as an OTLP span.
pub fn span(rec: &RequestRecord) -> Value {
    span_of(rec, Flavor::Otel)
}

/// One request as an OTLP span of `flavor`.
pub fn span_of(rec: &RequestRecord, flavor: Flavor) -> Value {
    let (trace, span, parent) = span_ids(rec);
    let start = rec.ts_ms.max(0) as u128 * 1_000_000;
    let end = start + rec.latency_us.max(0) as u128 * 1000;
    let mut attrs = vec![
        attr("palisade.request_id", json!(rec.id)),
        attr("palisade.proxy", json!(rec.proxy)),
        attr("palisade.api", json!(rec.api)),
        attr("http.request.method", json!(rec.method)),
        attr("url.path", json!(rec.path)),
        attr("http.response.status_code", json!(rec.status)),
        attr("palisade.overhead_us", json!(rec.overhead_us)),
        attr("client.address", json!(rec.client)),
    ];
    let opt = |attrs: &mut Vec<Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            attrs.push(attr(k, v));
        }
    };
    opt(
        &mut attrs,
        "gen_ai.request.model",
        rec.model.clone().map(Value::from),
    );
    opt(
        &mut attrs,
        "gen_ai.usage.input_tokens",
        rec.prompt_tokens.map(Value::from),
    );
    opt(
        &mut attrs,
        "gen_ai.usage.output_tokens",
        rec.completion_tokens.map(Value::from),
    );
    opt(
        &mut attrs,
        "palisade.cost_usd",
        rec.cost_usd.map(Value::from),
    );
    opt(
        &mut attrs,
        "palisade.key",
        rec.key_name.clone().map(Value::from),
    );
    opt(
        &mut attrs,
        "palisade.group",
        rec.group.clone().map(Value::from),
    );
    opt(
        &mut attrs,
        "palisade.decision",
        rec.decision.clone().map(Value::from),
    );
    opt(
        &mut attrs,
        "palisade.risk_score",
        rec.risk_score.map(Value::from),
    );
    opt(
        &mut attrs,
        "palisade.matched_rules",
        rec.matched_rules.clone().map(Value::from),
    );
    opt(
        &mut attrs,
        "palisade.tool",
        rec.tool.clone().map(Value::from),
    );
    if rec.stream {
        attrs.push(attr("palisade.stream", json!(true)));
    }
    if flavor == Flavor::Langfuse {
        langfuse_attrs(rec, &mut attrs);
    }
    let mut s = json!({
        "traceId": trace,
        "spanId": span,
        "name": format!("{} {}", rec.api, rec.endpoint),
        "kind": 2,
        "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attrs,
        "status": span_status(rec),
    });
    if let Some(p) = parent {
        s["parentSpanId"] = Value::String(p);
    }
    s
}

/// The `Authorization` value Langfuse's API takes: HTTP Basic with the project's public key as
/// the user and its secret key as the password.
pub fn langfuse_auth(public_key: &str, secret_key: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{public_key}:{secret_key}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// How an export request is encoded (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `http/json`: OTLP's JSON mapping.
    #[default]
    Json,
    /// `http/protobuf`: the binary encoding of `ExportTraceServiceRequest`.
    Protobuf,
}

impl Encoding {
    /// The `Content-Type` of a request in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/x-protobuf",
        }
    }
}

/// An OTLP/HTTP export request holding `recs` as spans of `service`, in `encoding`.
pub fn export_request(
    service: &str,
    flavor: Flavor,
    encoding: Encoding,
    recs: &[RequestRecord],
) -> Vec<u8> {
    let doc = export_doc(service, flavor, recs);
    match encoding {
        Encoding::Json => doc.to_string().into_bytes(),
        Encoding::Protobuf => protobuf::request(&doc),
    }
}

/// An OTLP/HTTP JSON export request holding `recs` as spans of `service`.
pub fn export_body(service: &str, flavor: Flavor, recs: &[RequestRecord]) -> Vec<u8> {
    export_request(service, flavor, Encoding::Json, recs)
}

/// The export request in OTLP's JSON mapping.
fn export_doc(service: &str, flavor: Flavor, recs: &[RequestRecord]) -> Value {
    // Langfuse models a call as one observation: the upstream's own span would be a second.
    let spans: Vec<Value> = recs
        .iter()
        .flat_map(|r| {
            let call = (flavor == Flavor::Otel).then(|| upstream_span(r)).flatten();
            std::iter::once(span_of(r, flavor)).chain(call)
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            attr("service.name", json!(service)),
            attr("service.version", json!(env!("CARGO_PKG_VERSION")))
        ]},
        "scopeSpans": [{"scope": {"name": "palisade", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans}]
    }]})
}

/// The protobuf encoding of an export request, written from its JSON mapping (the shapes
/// [`export_doc`] makes), with the field numbers of OTLP's `.proto` files
/// (`opentelemetry/proto/{collector/trace,trace,common,resource}/v1`).
mod protobuf {
    use serde_json::Value;

    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const LEN: u64 = 2;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn tag(out: &mut Vec<u8>, field: u64, wire: u64) {
        varint(out, (field << 3) | wire);
    }

    fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        tag(out, field, LEN);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn message(out: &mut Vec<u8>, field: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let mut inner = Vec::new();
        write(&mut inner);
        bytes(out, field, &inner);
    }

    fn string(out: &mut Vec<u8>, field: u64, v: &Value) {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            bytes(out, field, s.as_bytes());
        }
    }

    /// A hex id (trace or span) as its bytes; nothing when absent or not hex.
    fn id(out: &mut Vec<u8>, field: u64, v: &Value) {
        let Some(hex) = v.as_str() else { return };
        let raw: Option<Vec<u8>> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        if let Some(raw) = raw.filter(|r| !r.is_empty() && hex.len() % 2 == 0) {
            bytes(out, field, &raw);
        }
    }

    /// A 64-bit number that the JSON mapping writes as a decimal string (or a number).
    fn number(v: &Value) -> Option<u64> {
        match v {
            Value::String(s) => s
                .parse::<u64>()
                .ok()
                .or_else(|| s.parse::<i64>().ok().map(|n| n as u64)),
            Value::Number(n) => n.as_u64().or_else(|| n.as_i64().map(|n| n as u64)),
            _ => None,
        }
    }

    fn any_value(out: &mut Vec<u8>, v: &Value) {
        if let Some(s) = v.get("stringValue") {
            bytes(out, 1, s.as_str().unwrap_or_default().as_bytes());
        } else if let Some(b) = v.get("boolValue").and_then(Value::as_bool) {
            tag(out, 2, VARINT);
            varint(out, u64::from(b));
        } else if let Some(n) = v.get("intValue").and_then(number) {
            tag(out, 3, VARINT);
            varint(out, n);
        } else if let Some(d) = v.get("doubleValue").and_then(Value::as_f64) {
            tag(out, 4, FIXED64);
            out.extend_from_slice(&d.to_le_bytes());
        } else if let Some(a) = v.get("arrayValue") {
            message(out, 5, |m| {
                for item in a["values"].as_array().into_iter().flatten() {
                    message(m, 1, |m| any_value(m, item));
                }
            });
        }
    }

    fn attributes(out: &mut Vec<u8>, field: u64, list: &Value) {
        for kv in list.as_array().into_iter().flatten() {
            message(out, field, |m| {
                string(m, 1, &kv["key"]);
                message(m, 2, |m| any_value(m, &kv["value"]));
            });
        }
    }

    fn span(out: &mut Vec<u8>, s: &Value) {
        id(out, 1, &s["traceId"]);
        id(out, 2, &s["spanId"]);
        string(out, 3, &s["traceState"]);
        id(out, 4, &s["parentSpanId"]);
        string(out, 5, &s["name"]);
        if let Some(kind) = s["kind"].as_u64() {
            tag(out, 6, VARINT);
            varint(out, kind);
        }
        for (field, key) in [(7, "startTimeUnixNano"), (8, "endTimeUnixNano")] {
            if let Some(n) = number(&s[key]) {
                tag(out, field, FIXED64);
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        attributes(out, 9, &s["attributes"]);
        if s["status"].is_object() {
            message(out, 15, |m| {
                string(m, 2, &s["status"]["message"]);
                if let Some(code) = s["status"]["code"].as_u64().filter(|c| *c != 0) {
                    tag(m, 3, VARINT);
                    varint(m, code);
                }
            });
        }
    }

    /// `ExportTraceServiceRequest` from its JSON mapping.
    pub(super) fn request(doc: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            message(&mut out, 1, |m| {
                message(m, 1, |r| attributes(r, 1, &rs["resource"]["attributes"]));
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    message(m, 2, |m| {
                        message(m, 1, |sc| {
                            string(sc, 1, &ss["scope"]["name"]);
                            string(sc, 2, &ss["scope"]["version"]);
                        });
                        for sp in ss["spans"].as_array().into_iter().flatten() {
                            message(m, 2, |m| span(m, sp));
                        }
                    });
                }
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        // A later version is read by its first four fields; `ff` never is.
        for later in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next",
        ] {
            assert_eq!(
                parse_traceparent(later),
                Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
                "{later}"
            );
        }
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_becomes_a_server_span_in_its_callers_trace() {
        let rec = RequestRecord {
            id: "req-1".into(),
            ts_ms: 1_000,
            latency_us: 2_500,
            proxy: "oai".into(),
            api: "openai".into(),
            endpoint: "chat.completions".into(),
            status: 200,
            model: Some("gpt-x".into()),
            prompt_tokens: Some(12),
            trace_parent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..Default::default()
        };
        let s = span(&rec);
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["spanId"].as_str().unwrap().len(), 16);
        assert_eq!(s["name"], "openai chat.completions");
        assert_eq!(s["startTimeUnixNano"], "1000000000");
        assert_eq!(s["endTimeUnixNano"], "1002500000");
        assert_eq!(s["status"]["code"], 0);
        let attrs = s["attributes"].to_string();
        assert!(
            attrs.contains(r#""key":"gen_ai.usage.input_tokens","value":{"intValue":"12"}"#),
            "{attrs}"
        );
        // Without a caller's trace, a trace of its own, stable for the request.
        let own = RequestRecord {
            trace_parent: None,
            status: 502,
            error: Some("upstream down".into()),
            ..rec
        };
        let a = span(&own);
        assert_eq!(a["traceId"].as_str().unwrap().len(), 32);
        assert!(a.get("parentSpanId").is_none());
        assert_eq!(a["status"]["code"], 2);
        assert_eq!(span(&own)["traceId"], a["traceId"]);
        let body: Value =
            serde_json::from_slice(&export_body("palisade", Flavor::Otel, &[own])).unwrap();
        assert_eq!(
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn an_upstream_call_is_a_client_span_under_its_request() {
        let rec = RequestRecord {
            id: "req-2".into(),
            ts_ms: 1_000,
            latency_us: 3_000,
            api: "openai".into(),
            status: 504,
            error: Some("upstream timed out".into()),
            // Not sampled by the caller: the upstream is told the same.
            trace_parent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into()),
            upstream: Some(crate::record::UpstreamCall {
                at_us: 400,
                took_us: None,
                host: "api.example.test".into(),
                status: None,
            }),
            ..Default::default()
        };
        let server = span(&rec);
        let call = upstream_span(&rec).unwrap();
        assert_eq!(call["traceId"], server["traceId"]);
        assert_eq!(call["parentSpanId"], server["spanId"]);
        assert_ne!(call["spanId"], server["spanId"]);
        assert_eq!(call["kind"], 3);
        // A call that never answered lasts until the request ended, and failed.
        assert_eq!(call["startTimeUnixNano"], "1000400000");
        assert_eq!(call["endTimeUnixNano"], "1003000000");
        assert_eq!(call["status"]["code"], 2);
        // The gateway's 504 is not the upstream's answer: it gave none.
        assert!(
            attr_of(&call, "http.response.status_code").is_none(),
            "{call}"
        );
        assert_eq!(
            attr_of(&call, "server.address").unwrap()["stringValue"],
            "api.example.test"
        );
        assert!(attr_of(&call, "server.port").is_none());
        assert_eq!(
            upstream_traceparent(&rec),
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-00",
                call["spanId"].as_str().unwrap()
            )
        );
        let later = RequestRecord {
            trace_parent: Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0b-x".into()),
            ..rec.clone()
        };
        assert!(upstream_traceparent(&later).starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(upstream_traceparent(&later).ends_with("-01"));
        let body: Value = serde_json::from_slice(&export_body(
            "palisade",
            Flavor::Otel,
            std::slice::from_ref(&rec),
        ))
        .unwrap();
        assert_eq!(
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // Langfuse sees the request as one observation.
        let body: Value =
            serde_json::from_slice(&export_body("palisade", Flavor::Langfuse, &[rec])).unwrap();
        assert_eq!(
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    fn attr_of<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
        span["attributes"]
            .as_array()?
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| &a["value"])
    }

    #[test]
    fn langfuse_sees_generations_tools_users_costs_and_blocks() {
        let llm = RequestRecord {
            id: "req-2".into(),
            proxy: "oai".into(),
            api: "openai".into(),
            endpoint: "chat_completions".into(),
            status: 403,
            model: Some("gpt-x".into()),
            key_name: Some("ci".into()),
            group: Some("eng".into()),
            cost_usd: Some(0.25),
            decision: Some("block".into()),
            matched_rules: Some("llm-critical-security/ignore-previous".into()),
            ..Default::default()
        };
        let s = span_of(&llm, Flavor::Langfuse);
        let get = |k: &str| attr_of(&s, k).cloned().unwrap_or(Value::Null);
        assert_eq!(
            get("langfuse.observation.type")["stringValue"],
            "generation"
        );
        assert_eq!(
            get("langfuse.trace.name")["stringValue"],
            "oai chat_completions"
        );
        assert_eq!(get("langfuse.user.id")["stringValue"], "ci");
        assert_eq!(get("gen_ai.usage.cost")["doubleValue"], 0.25);
        assert_eq!(get("langfuse.observation.level")["stringValue"], "WARNING");
        assert_eq!(
            get("langfuse.observation.status_message")["stringValue"],
            "block by policy (rules: llm-critical-security/ignore-previous)"
        );
        let tags = get("langfuse.trace.tags");
        let tags: Vec<&str> = tags["arrayValue"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["stringValue"].as_str().unwrap())
            .collect();
        assert_eq!(tags, ["oai", "openai", "group:eng", "decision:block"]);
        // The plain flavor carries none of it.
        assert!(attr_of(&span(&llm), "langfuse.observation.type").is_none());
        // An MCP tool call is a tool in its session; a broken upstream an error.
        let tool = RequestRecord {
            api: "mcp".into(),
            tool: Some("search".into()),
            session: Some("sess-1".into()),
            status: 502,
            error: Some("upstream down".into()),
            decision: None,
            ..llm
        };
        let s = span_of(&tool, Flavor::Langfuse);
        let get = |k: &str| attr_of(&s, k).cloned().unwrap_or(Value::Null);
        assert_eq!(get("langfuse.observation.type")["stringValue"], "tool");
        assert_eq!(get("langfuse.session.id")["stringValue"], "sess-1");
        assert_eq!(get("langfuse.observation.level")["stringValue"], "ERROR");
        assert_eq!(
            get("langfuse.observation.status_message")["stringValue"],
            "upstream down"
        );
        assert_eq!(
            langfuse_auth("pk-lf-1", "sk-lf-2"),
            "Basic cGstbGYtMTpzay1sZi0y"
        );
    }
}
