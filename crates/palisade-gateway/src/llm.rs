//! The LLM proxy pipeline, one small function per phase.

use crate::buffers::{self, BufferError, Held};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use palisade_core::identity::KeyInfo;
use palisade_core::model::LlmApi;
use palisade_core::now_ms;
use palisade_core::record::{Exchanged, RequestRecord};
use serde::Deserialize;

use crate::accounting::Admission;
use crate::body::{Finisher, ProxyBody, Relay};
use crate::error::ProxyError;
use crate::inspect::{Findings, Inspector, request_texts, response_text};
use crate::manager::{GatewayShared, ProxyRuntime};
use crate::redact::{
    RedactionMap, StreamRewriter, continued, mask_new, redact_request, redact_request_continuing,
    unmask_body,
};
use crate::shape::{Endpoint, error_body};
use crate::upstream::{client_response_headers, is_json, upstream_request_headers};
use crate::usage::Usage;
use palisade_core::model::PromptSpec;
use palisade_policy::Target;

/// Largest non-streamed upstream answer the gateway buffers for inspection.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
/// Time a client gets to send its whole request body.
const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static UPSTREAM_REQUEST_ID: http::HeaderName =
    http::HeaderName::from_static("x-upstream-request-id");

/// The few request fields the gateway needs; everything else is skipped without allocation.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Serves one request on an LLM proxy. Never fails: every error becomes a well-formed answer.
pub async fn handle(
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    req: Request<Incoming>,
    peer: SocketAddr,
    mut cut: tokio::sync::watch::Receiver<bool>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let t0 = Instant::now();
    let endpoint = Endpoint::classify(req.method(), req.uri().path());
    let rec = RequestRecord {
        id: palisade_core::crypto::record_id(),
        ts_ms: now_ms(),
        proxy: rt.spec.name.clone(),
        api: rt.spec.api.as_str().to_string(),
        method: req.method().to_string(),
        path: req.uri().path().chars().take(512).collect(),
        endpoint: endpoint.as_str().to_string(),
        client: peer.to_string(),
        trace_parent: crate::mcp::trace_parent(req.headers()),
        ..Default::default()
    };
    let span = tracing::debug_span!("request", id = %rec.id, proxy = %rec.proxy);
    let _enter = span.enter();
    let mut pending = Unanswered {
        shared: &shared,
        rec,
        findings: Findings::default(),
        t0,
        armed: true,
    };
    // The proxy stopping (its drain time over) ends the wait for the upstream with a 503.
    let outcome = tokio::select! {
        biased;
        outcome = proxy(
            &shared,
            &rt,
            req,
            endpoint,
            &mut pending.rec,
            &mut pending.findings,
            t0,
        ) => outcome,
        () = crate::listener::cut_signal(&mut cut) => Err(ProxyError::Stopped),
    };
    match outcome {
        Ok(resp) => {
            // Its record is written (a buffered answer) or moves with the stream.
            pending.armed = false;
            Ok(resp)
        }
        Err(e) => {
            tracing::debug!(error = %e, "request refused");
            let (id, overhead) = pending.log(e.status().as_u16(), e.to_string());
            Ok(error_response(rt.spec.api, &e, &id, overhead))
        }
    }
}

/// A request whose answer has not begun: logged with its error, or, if the client goes away
/// meanwhile (the handler is dropped while it waits for the upstream), as a hang-up — every
/// request is logged.
struct Unanswered<'a> {
    shared: &'a GatewayShared,
    rec: RequestRecord,
    findings: Findings,
    t0: Instant,
    armed: bool,
}

impl Unanswered<'_> {
    /// Logs the request as ended with `status` and `error`; returns its id and the gateway's
    /// own time (all of it when the upstream was never waited for).
    fn log(&mut self, status: u16, error: String) -> (String, i64) {
        self.armed = false;
        let mut rec = std::mem::take(&mut self.rec);
        std::mem::take(&mut self.findings).finalize(&mut rec, self.shared.alert.as_ref());
        rec.status = status;
        rec.error = Some(error);
        rec.latency_us = self.t0.elapsed().as_micros() as i64;
        if rec.overhead_us == 0 {
            rec.overhead_us = rec.latency_us;
        }
        let out = (rec.id.clone(), rec.overhead_us);
        (self.shared.record)(rec);
        out
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            // The status nginx and others log for a client that closed the connection first.
            // 499 for a client that left, as nginx logs it; 503 for a proxy that stopped.
            let status = if crate::listener::cutting() { 503 } else { 499 };
            self.log(status, crate::listener::cut_short("began"));
        }
    }
}

/// An error answer in the proxy's API shape; `overhead_us` is the gateway's own time (without
/// any wait for the upstream, as on every answer).
fn error_response(
    api: LlmApi,
    e: &ProxyError,
    request_id: &str,
    overhead_us: i64,
) -> Response<ProxyBody> {
    let ty = match api {
        LlmApi::Openai => e.openai_type(),
        LlmApi::Anthropic => e.anthropic_type(),
    };
    let body = error_body(api, ty, e.code(), &e.to_string(), request_id);
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID.clone(), v);
    }
    // Refused before its body was read: the connection cannot carry another request (the rest
    // of this one's body would be read as the next), so the client is told it closes.
    if e.before_body() {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if matches!(e, ProxyError::Unauthorized) {
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    if let ProxyError::RateLimited { retry_after, .. } = e {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
    }
    h.insert(
        crate::upstream::OVERHEAD_HEADER,
        HeaderValue::from(overhead_us.max(0) as u64),
    );
    resp
}

/// Phase 1: authenticate with a gateway key (`Authorization: Bearer` or `x-api-key`).
fn authenticate(
    shared: &GatewayShared,
    headers: &http::HeaderMap,
) -> Result<Arc<KeyInfo>, ProxyError> {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(ProxyError::Unauthorized)?;
    shared
        .keys
        .load()
        .lookup(presented, now_ms())
        .ok_or(ProxyError::Unauthorized)
}

/// Phase 2: read the body within the proxy's size limit.
async fn read_body(
    body: Incoming,
    limit: u64,
    declared: Option<u64>,
    parsed: bool,
) -> Result<(Bytes, Held), ProxyError> {
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge(limit));
    }
    let collected = tokio::time::timeout(
        CLIENT_BODY_TIMEOUT,
        buffers::collect(body, usize::try_from(limit).unwrap_or(usize::MAX), parsed),
    )
    .await
    .map_err(|_| ProxyError::ClientBody("timed out".into()))?;
    collected.map_err(|e| match e {
        BufferError::TooLarge => ProxyError::BodyTooLarge(limit),
        BufferError::Busy => ProxyError::Busy(BUSY.into()),
        BufferError::Body(e) => ProxyError::ClientBody(e.to_string()),
    })
}

/// Why a body was refused for the shared buffer budget (`crate::buffers`).
const BUSY: &str = "too many large bodies are being buffered at once";

/// Phase 2b: scan the request's text with the proxy's policies.
fn inspect_request(
    insp: &Inspector,
    v: &serde_json::Value,
    findings: &mut Findings,
) -> Result<(), ProxyError> {
    let texts = request_texts(v);
    let mut blocks = findings.scan(insp, Target::LlmRequest, &texts.prompt);
    blocks |= findings.scan(insp, Target::ToolResult, &texts.tool_results);
    blocks |= findings.scan(insp, Target::ToolDescription, &texts.tool_descriptions);
    enforce(insp, findings, blocks, "request")
}

/// Phase 2c: a body on a path the gateway does not model (`/v1/completions`, images, audio…)
/// still meets the key's model scope and the request policies: a JSON body's `model` is checked
/// and every string in it is scanned as prompt text; any other body (a form, multipart, text)
/// is scanned as text (nothing is redacted: the gateway does not know the shape). A body that
/// is not JSON cannot show its model, so a key limited to some models is refused.
fn check_pass_through(
    shared: &GatewayShared,
    rt: &ProxyRuntime,
    key: &KeyInfo,
    body: &[u8],
    rec: &mut RequestRecord,
    findings: &mut Findings,
) -> Result<(), ProxyError> {
    if rt.inspector.is_none() && key.allowed_models.is_empty() {
        // Only the model is read, to price the answer (`/v1/completions`, streamed or not).
        if body.trim_ascii_start().starts_with(b"{") {
            rec.model = serde_json::from_slice::<Peek<'_>>(body)
                .ok()
                .and_then(|p| p.model)
                .map(|m| m.chars().take(200).collect());
        }
        return Ok(());
    }
    // A body that is not JSON, or names a member twice, is scanned whole as text (both copies).
    let parsed = crate::json::parse(body).ok();
    match &parsed {
        Some(v) => {
            let model = v.get("model").and_then(serde_json::Value::as_str);
            rec.model = model.map(|m| m.chars().take(200).collect());
            shared.accounting.check_model(key, model)?;
        }
        None if !key.allowed_models.is_empty() => {
            return Err(ProxyError::Forbidden(format!(
                "key `{}` is limited to some models, and this request's body is not JSON, so its model cannot be checked",
                key.name
            )));
        }
        None => {}
    }
    let Some(insp) = &rt.inspector else {
        return Ok(());
    };
    // A JSON body's strings; any other body (forms, multipart, text) as text. All of it: the
    // body is within the proxy's size limit, and the engine's work is linear in the text (text
    // past a cap would be text no policy saw).
    let text = match &parsed {
        Some(v) => strings_of(v),
        None => {
            let raw = String::from_utf8_lossy(body);
            // A form writes spaces as `+` (`prompt=Ignore+all+previous…`): read both ways (the
            // engine decodes `%xx` itself).
            if raw.contains('+') {
                format!("{raw}\n{}", raw.replace('+', " "))
            } else {
                raw.into_owned()
            }
        }
    };
    let blocks = findings.scan(insp, Target::LlmRequest, &text);
    enforce(insp, findings, blocks, "request")
}

/// Every string value of `v` but `model`, one per line: the text of a JSON body or answer whose
/// shape the gateway does not model.
fn strings_of(v: &serde_json::Value) -> String {
    let mut out = String::new();
    crate::inspect::strings_except(v, &["model"], &mut out);
    out
}

/// After a scan: a blocking match stops the exchange in enforce mode (the request before the
/// upstream, or the answer before the client).
fn enforce(
    insp: &Inspector,
    findings: &mut Findings,
    blocks: bool,
    phase: &'static str,
) -> Result<(), ProxyError> {
    if blocks && insp.enforces() {
        findings.set_blocked();
        return Err(ProxyError::PolicyBlocked {
            phase,
            rules: findings.blocking_rules(),
        });
    }
    Ok(())
}

/// Phase 5c: masks new sensitive values in a buffered answer (`redact` rules on
/// `llm_response`, see [`mask_new`]). Returns the rewritten answer when one was masked.
fn redact_answer(
    insp: &Inspector,
    v: &mut serde_json::Value,
    request_map: &RedactionMap,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    everywhere: bool,
) -> Option<Bytes> {
    // The scan just ran: without a redact match there is nothing to mask (and no walk to pay).
    if !findings.matched(Target::LlmResponse, palisade_policy::Action::Redact) {
        return None;
    }
    // `everywhere`: a body of no known shape, whose every string was scanned, is masked under
    // every member name too.
    let new = if everywhere {
        crate::redact::mask_new_everywhere(&insp.set, v, Target::LlmResponse, request_map)
    } else {
        mask_new(&insp.set, v, Target::LlmResponse, request_map)
    };
    if new == 0 {
        // A match on a placeholder the answer repeats (`"password": "[PASSWORD_1]"`) is the
        // client's own value, masked upstream and restored for the client: nothing leaked.
        if echoes_placeholders(v, request_map) {
            findings.set_answer_redacted();
        }
        return None;
    }
    rec.redactions = Some(rec.redactions.unwrap_or(0) + new as i64);
    findings.set_answer_redacted();
    drop_logprobs(v);
    serde_json::to_vec(v).ok().map(Bytes::from)
}

/// Empties the token log-probabilities of an answer whose text had values masked: they spell
/// the text again token by token (as strings and as UTF-8 bytes), and a value split over
/// several tokens matches no pattern there. (`logprobs` becomes `null`, or `[]` where the API
/// has a list.)
fn drop_logprobs(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "logprobs" {
                    *x = match x {
                        serde_json::Value::Array(_) => serde_json::Value::Array(Vec::new()),
                        _ => serde_json::Value::Null,
                    };
                } else {
                    drop_logprobs(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_logprobs),
        _ => {}
    }
}

/// Whether an answer repeats placeholders of the request.
fn echoes_placeholders(v: &serde_json::Value, request_map: &RedactionMap) -> bool {
    if request_map.is_empty() {
        return false;
    }
    let text = v.to_string();
    request_map.iter().any(|(p, _)| text.contains(p.as_str()))
}

/// The first content coding other than `identity` that `Content-Encoding` headers name (every
/// header, every coding listed in one), if any: a body in it cannot be read as it is.
fn content_coding(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
}

/// Scans an upstream's error answer (any status but 2xx) as an answer: every string of a JSON
/// body, or the whole text of another (an HTML error page; bytes that are not UTF-8, a Latin-1
/// page, are read as U+FFFD). A block replaces it with the gateway's refusal; `redact` matches
/// are masked in it.
fn check_error_answer(
    insp: &Inspector,
    bytes: Bytes,
    request_map: &RedactionMap,
    rec: &mut RequestRecord,
    findings: &mut Findings,
) -> Result<Bytes, ProxyError> {
    let (mut v, json) = match crate::json::parse(&bytes) {
        Ok(v) => (v, true),
        Err(_) => (
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()),
            false,
        ),
    };
    inspect_response(insp, Endpoint::Other, &v, findings)?;
    let Some(masked) = redact_answer(insp, &mut v, request_map, rec, findings, true) else {
        return Ok(bytes);
    };
    Ok(match (json, v) {
        (false, serde_json::Value::String(t)) => Bytes::from(t),
        _ => masked,
    })
}

/// Phase 5b: scan a buffered answer (already parsed; an answer that is not JSON is not scanned).
fn inspect_response(
    insp: &Inspector,
    endpoint: Endpoint,
    v: &serde_json::Value,
    findings: &mut Findings,
) -> Result<(), ProxyError> {
    // A modelled answer's text by its shape; any other JSON answer's every string.
    let text = if endpoint == Endpoint::Other {
        strings_of(v)
    } else {
        response_text(v)
    };
    let blocks = findings.scan_answer(insp, Target::LlmResponse, &text);
    enforce(insp, findings, blocks, "response")
}

async fn proxy(
    shared: &GatewayShared,
    rt: &ProxyRuntime,
    req: Request<Incoming>,
    endpoint: Endpoint,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    t0: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    if crate::upstream::came_round(req.headers()) {
        return Err(ProxyError::Loop);
    }
    let key = authenticate(shared, req.headers())?;
    rec.key_id = Some(key.id.clone());
    findings.set_caller(&key.id);
    rec.key_name = Some(key.name.clone());
    rec.group = key.group.clone();
    let path = req.uri().path();
    let problem = crate::shape::path_problem(path).or_else(|| {
        // A modelled path in other letter case: servers that ignore case would serve it.
        (endpoint == Endpoint::Other
            && Endpoint::classify(req.method(), &path.to_ascii_lowercase()) != Endpoint::Other)
            .then_some("letters in another case than the API's")
    });
    if let Some(problem) = problem {
        return Err(ProxyError::BadRequest(format!(
            "the request path has {problem}; send it in its plain form"
        )));
    }
    let admission = shared
        .accounting
        .admit_on(&key, &rt.spec, shared.alert.as_ref(), rec)?;

    let (parts, body) = req.into_parts();
    // A compressed body cannot be read as it is: one the gateway must read (JSON endpoints,
    // policies, a key limited to some models) is refused rather than passed on unread.
    // Every `Content-Encoding` header and every coding listed in one counts.
    if let Some(enc) = content_coding(&parts.headers)
        && (endpoint.has_json_body() || rt.inspector.is_some() || !key.allowed_models.is_empty())
    {
        return Err(ProxyError::EncodedBody(enc.chars().take(40).collect()));
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // The bodies' bytes stay counted against the shared budget until the request is done.
    // With policies, the body is parsed and its texts taken out and rewritten.
    let parsed = rt.inspector.is_some();
    let (mut body, _request_held) =
        read_body(body, rt.spec.max_body_bytes, declared, parsed).await?;
    let mut strip_usage = false;
    let mut redactions = RedactionMap::new();
    // A stateful conversation this request belongs to (Responses API), whose placeholders its
    // answer carries on.
    let mut conversation: Option<String> = None;

    if endpoint.has_json_body() {
        let peek: Peek<'_> = serde_json::from_slice(&body).map_err(|e| {
            ProxyError::BadRequest(format!("request body is not a valid JSON object: {e}"))
        })?;
        rec.model = peek.model.map(|m| m.chars().take(200).collect());
        rec.stream = peek.stream.unwrap_or(false);
        shared.accounting.check_model(&key, rec.model.as_deref())?;
        strip_usage = endpoint == Endpoint::ChatCompletions
            && rec.stream
            && peek.stream_options.and_then(|o| o.include_usage) != Some(true);
        let prompts = shared.prompts.load();
        let prompt = crate::prompts::select(&prompts, &rt.spec.name, key.group.as_deref());
        if rt.inspector.is_some() || strip_usage || prompt.is_some() {
            body = rewrite_request(
                shared,
                rt,
                &key,
                endpoint,
                &body,
                strip_usage,
                prompt,
                rec,
                findings,
                &mut redactions,
                &mut conversation,
            )?;
        }
    }

    if !endpoint.has_json_body() && !body.is_empty() {
        check_pass_through(shared, rt, &key, &body, rec, findings)?;
    }

    // Phase 3: the upstream request.
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = rt
        .target
        .uri_for(path_and_query)
        .map_err(|e| ProxyError::BadRequest(format!("cannot map path upstream: {e}")))?;
    let mut headers = upstream_request_headers(&parts.headers);
    headers.append(http::header::VIA, crate::upstream::via_entry().clone());
    headers.insert(http::header::HOST, rt.target.host.clone());
    if let Some((name, value)) = &rt.auth_header {
        headers.insert(name.clone(), value.clone());
    }
    let prompt_estimate = (body.len() / 4) as i64;
    let capture = endpoint.has_json_body()
        && shared
            .capture_content
            .load(std::sync::atomic::Ordering::Relaxed);
    if capture {
        rec.content = Some(Arc::new(Exchanged {
            input: Exchanged::text(&body),
            output: None,
        }));
    }
    // Held from the tokens-per-minute buckets until the answer's count is charged.
    let token_hold = shared.accounting.hold_tokens(&key, prompt_estimate)?;
    let mut up = Request::new(Full::new(body));
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;

    // Phase 4: send, bounded by the upstream timeout.
    let timeout = Duration::from_secs(rt.spec.upstream_timeout_secs);
    let sent = Instant::now();
    let pre = sent.duration_since(t0);
    rec.overhead_us = pre.as_micros() as i64;
    crate::upstream::join_trace(
        &shared.trace_upstream,
        rec,
        up.headers_mut(),
        &rt.target.host,
        pre,
    );
    let resp = match tokio::time::timeout(timeout, shared.client.request(up)).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout(rt.spec.upstream_timeout_secs)),
        Ok(Err(e)) => {
            // The client's own text ("client error (SendRequest)") says nothing: the innermost
            // cause does (connection refused, reset, closed before an answer, not HTTP).
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            let mut last = e.to_string();
            while let Some(s) = src {
                last = s.to_string();
                src = s.source();
            }
            let detail = if e.is_connect() {
                format!("cannot connect to {}: {last}", rt.spec.upstream)
            } else {
                format!("{} failed: {last}", rt.spec.upstream)
            };
            return Err(ProxyError::UpstreamUnavailable(detail));
        }
        Ok(Ok(r)) => r,
    };
    let headers_at = Instant::now();
    let (up_parts, up_body) = resp.into_parts();
    rec.status = up_parts.status.as_u16();
    crate::upstream::note_answer(rec);
    let is_sse = up_parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        rec.stream = true;
    }

    // Phase 5: relay the answer.
    // Answers the policies read are buffered: the modelled endpoints', and a JSON answer on any
    // other path when the proxy checks answers. The rest (audio, files, streams) is relayed.
    let checked_other = endpoint == Endpoint::Other
        && up_parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json)
        && rt
            .inspector
            .as_ref()
            .is_some_and(|i| i.inspects_responses());
    if is_sse || !(endpoint.has_json_body() || endpoint == Endpoint::Models || checked_other) {
        let mut headers = client_response_headers(&up_parts.headers, !is_sse);
        if is_sse {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        let overhead = pre + headers_at.elapsed();
        rec.overhead_us = overhead.as_micros() as i64;
        finish_headers(&mut headers, &rec.id, overhead);
        warn_header(&mut headers, &admission);
        let finisher = Finisher {
            record: std::mem::take(rec),
            t0,
            sink: shared.record.clone(),
            alert: shared.alert.clone(),
            findings: std::mem::take(findings),
            accounting: shared.accounting.clone(),
            key_tpm: key.tpm,
            prompt_estimate: Some(prompt_estimate),
            token_hold,
        };
        let relay = Relay::new(
            up_body,
            is_sse,
            rt.spec.api,
            timeout,
            finisher,
            rt.inspector.clone(),
        );
        let relay = if strip_usage && is_sse {
            relay.strip_usage_chunk()
        } else {
            relay
        };
        let relay = if endpoint == Endpoint::Responses {
            relay.responses_stream()
        } else {
            relay
        };
        // Neither a length nor chunks: the body ends when the upstream closes the connection,
        // so only the stream's last event tells a finished stream from a broken one.
        let close_delimited = matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages
        ) && !up_parts.headers.contains_key(http::header::CONTENT_LENGTH)
            && !up_parts
                .headers
                .get(http::header::TRANSFER_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
            && up_parts.version < http::Version::HTTP_2;
        let relay = if close_delimited {
            relay.close_delimited()
        } else {
            relay
        };
        // A JSON answer on a path the gateway does not model (`/v1/completions`) is charged
        // by the token count it carries.
        let relay = if endpoint == Endpoint::Other && !is_sse && is_json_type(&up_parts.headers) {
            relay.read_json_usage()
        } else {
            relay
        };
        // New sensitive values in a streamed answer are masked as it flows; the request's own
        // values keep their placeholders, which unmasking restores.
        // A `block` rule on answers needs the same holding back: a value whose end has not
        // come yet (the first half of a key) must not have left when the rule matches.
        let masking = rt.inspector.as_ref().filter(|i| {
            is_sse && (i.set.redacts(Target::LlmResponse) || i.enforces() && i.blocks_responses())
        });
        let unmask = is_sse && rt.spec.unmask && !redactions.is_empty();
        let relay = if masking.is_some() || unmask {
            let known = std::mem::take(&mut redactions);
            let restore = if unmask { known.clone() } else { Vec::new() };
            let mut w = StreamRewriter::new(restore);
            if let Some(i) = masking {
                w = w.masking(i.set.clone(), &known);
            }
            if endpoint == Endpoint::Responses && !known.is_empty() {
                let conversations = shared.conversations.clone();
                let scope = conversation_scope(&rt.spec.name, &key.id);
                let conversation = conversation.take();
                w = w.on_end(Box::new(move |id: &str| {
                    remember_conversation(
                        &conversations,
                        &scope,
                        id,
                        conversation.as_deref(),
                        &known,
                    );
                }));
            }
            relay.rewrite_with(w)
        } else {
            relay
        };
        let mut resp = Response::new(ProxyBody::Relay(Box::new(relay)));
        *resp.status_mut() = up_parts.status;
        *resp.headers_mut() = headers;
        return Ok(resp);
    }

    // An answer the policies read, or whose placeholders are restored, is parsed and rewritten.
    let parsed = rt.inspector.is_some() || !redactions.is_empty();
    let collected = tokio::time::timeout(
        timeout,
        buffers::collect(up_body, MAX_UPSTREAM_BODY, parsed),
    )
    .await;
    let (mut bytes, _answer_held) = match collected {
        Err(_) => return Err(ProxyError::UpstreamTimeout(rt.spec.upstream_timeout_secs)),
        Ok(Err(BufferError::TooLarge)) => {
            return Err(ProxyError::UpstreamTooLarge(MAX_UPSTREAM_BODY as u64));
        }
        Ok(Err(BufferError::Busy)) => return Err(ProxyError::Busy(BUSY.into())),
        Ok(Err(BufferError::Body(e))) => {
            return Err(ProxyError::UpstreamUnavailable(format!(
                "upstream body broke: {e}"
            )));
        }
        Ok(Ok(c)) => c,
    };
    let received = Instant::now();
    crate::upstream::note_answer_read(rec, received.duration_since(sent));
    let mut usage = Usage::default();
    // A Responses answer's id, once parsed (its placeholders are remembered under it).
    let mut response_id: Option<String> = None;
    if !up_parts.status.is_success() {
        // An error answer is read too: its message can carry a secret (a provider quoting
        // what it was sent) or text meant for the client's model.
        if let Some(insp) = rt.inspector.as_ref().filter(|i| i.inspects_responses()) {
            // A compressed error cannot be read (the gateway asks for none): not passed on.
            if content_coding(&up_parts.headers).is_some() {
                return Err(ProxyError::UpstreamUnavailable(format!(
                    "its error answer ({}) is compressed, so the proxy's policies cannot check it",
                    up_parts.status
                )));
            }
            bytes = check_error_answer(insp, bytes, &redactions, rec, findings)?;
        }
    } else {
        match rt.inspector.as_ref().filter(|i| i.inspects_responses()) {
            Some(insp) => {
                // One parse serves the usage and the scan. An answer the policies cannot read
                // is not passed on unchecked.
                let mut v = crate::json::parse(&bytes).map_err(|e| {
                    ProxyError::UpstreamUnavailable(format!(
                        "its answer is not valid JSON ({e}), so the proxy's policies cannot check it"
                    ))
                })?;
                usage.absorb(&v);
                // A request that named no model (a background response fetched by id, `GET
                // /v1/responses/{id}`) is priced by the model that answered.
                if rec.model.is_none() {
                    rec.model = v
                        .get("model")
                        .and_then(|m| m.as_str())
                        .map(|m| m.chars().take(200).collect());
                }
                if endpoint == Endpoint::Responses && !redactions.is_empty() {
                    response_id = v.get("id").and_then(|id| id.as_str()).map(str::to_string);
                }
                // Recorded now too: a blocked answer's record still has them.
                usage.record_into(rec);
                if !v.is_object() && endpoint != Endpoint::Other {
                    return Err(ProxyError::UpstreamUnavailable(
                        "its answer is not a JSON object, so the proxy's policies cannot check it"
                            .into(),
                    ));
                }
                // A blocked answer was generated all the same: charged before it is refused.
                if let Err(e) = inspect_response(insp, endpoint, &v, findings) {
                    shared
                        .accounting
                        .settle(rec, &usage, key.tpm, shared.alert.as_ref());
                    return Err(e);
                }
                if let Some(masked) = redact_answer(
                    insp,
                    &mut v,
                    &redactions,
                    rec,
                    findings,
                    endpoint == Endpoint::Other,
                ) {
                    bytes = masked;
                }
            }
            None => {
                usage.absorb_json(&bytes);
            }
        }
    }
    if endpoint == Endpoint::Responses && !redactions.is_empty() && up_parts.status.is_success() {
        // Parsed above when the policies read answers; else only the id is read.
        response_id = response_id.or_else(|| {
            serde_json::from_slice::<Answered>(&bytes)
                .ok()
                .and_then(|a| a.id)
        });
    }
    if let Some(id) = response_id {
        let scope = conversation_scope(&rt.spec.name, &key.id);
        remember_conversation(
            &shared.conversations,
            &scope,
            &id,
            conversation.as_deref(),
            &redactions,
        );
    }
    if let Some(c) = rec.content.as_mut() {
        // The answer as the upstream gave it (values of the request still masked).
        Arc::make_mut(c).output = Some(Exchanged::text(&bytes));
    }
    let bytes = if rt.spec.unmask && !redactions.is_empty() {
        unmask_body(bytes, &redactions)
    } else {
        bytes
    };
    let mut headers = client_response_headers(&up_parts.headers, false);
    // An upstream's error page (HTML, plain text) becomes an error in the API's shape, which
    // SDKs can read; its status stays.
    let bytes = if up_parts.status.as_u16() >= 400 && !is_json_type(&up_parts.headers) {
        let snippet: String = String::from_utf8_lossy(&bytes[..bytes.len().min(400)])
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        let message = format!(
            "upstream answered {} with a non-JSON body: {}",
            up_parts.status,
            snippet.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        let ty = match rt.spec.api {
            LlmApi::Openai => "upstream_error",
            LlmApi::Anthropic => "api_error",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        error_body(rt.spec.api, ty, "upstream_error", &message, &rec.id)
    } else {
        bytes
    };
    let overhead = pre + received.elapsed();
    finish_headers(&mut headers, &rec.id, overhead);
    warn_header(&mut headers, &admission);
    let mut resp = Response::new(ProxyBody::full(bytes));
    *resp.status_mut() = up_parts.status;
    *resp.headers_mut() = headers;

    rec.overhead_us = overhead.as_micros() as i64;
    rec.latency_us = t0.elapsed().as_micros() as i64;
    rec.ttfb_us = Some(rec.latency_us);
    usage.record_into(rec);
    if up_parts.status.as_u16() >= 400 {
        rec.error = Some(format!("upstream answered {}", up_parts.status));
    }
    std::mem::take(findings).finalize(rec, shared.alert.as_ref());
    shared
        .accounting
        .settle(rec, &usage, key.tpm, shared.alert.as_ref());
    (shared.record)(std::mem::take(rec));
    Ok(resp)
}

/// Whether an answer says it is JSON.
fn is_json_type(h: &http::HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}

/// The id of a Responses answer.
#[derive(serde::Deserialize)]
struct Answered {
    id: Option<String>,
}

/// Where a key's conversations on a proxy are remembered (`crate::redact::Conversations`).
fn conversation_scope(proxy: &str, key_id: &str) -> String {
    format!("{proxy}\u{1f}{key_id}")
}

/// Remembers a Responses answer's placeholders under its response id and its conversation, for
/// the turns that continue it.
fn remember_conversation(
    conversations: &crate::redact::Conversations,
    scope: &str,
    response_id: &str,
    conversation: Option<&str>,
    map: &RedactionMap,
) {
    conversations.remember(scope, response_id, map);
    if let Some(c) = conversation {
        conversations.remember(scope, c, map);
    }
}

/// The budget warning of a `warn` group over its limit.
fn warn_header(h: &mut http::HeaderMap, adm: &Admission) {
    if let Some(w) = &adm.budget_warning
        && let Ok(v) = HeaderValue::from_str(w)
    {
        h.insert("x-palisade-budget-warning", v);
    }
}

/// Phase 2b: everything that reads or edits the request's JSON, with one parse and at most one
/// serialisation: policy scan, redaction, governance prompt, and asking for stream usage.
#[allow(clippy::too_many_arguments)]
fn rewrite_request(
    shared: &GatewayShared,
    rt: &ProxyRuntime,
    key: &KeyInfo,
    endpoint: Endpoint,
    body: &Bytes,
    strip_usage: bool,
    prompt: Option<&PromptSpec>,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    redactions: &mut RedactionMap,
    conversation: &mut Option<String>,
) -> Result<Bytes, ProxyError> {
    let mut v = crate::json::parse(body)
        .map_err(|e| ProxyError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let mut changed = false;
    if let Some(insp) = &rt.inspector {
        inspect_request(insp, &v, findings)?;
        if insp.set.redacts(Target::LlmRequest)
            || insp.set.redacts(Target::ToolResult)
            || insp.set.redacts(Target::ToolDescription)
        {
            // A later turn of a stateful conversation continues its placeholders.
            let seed = if endpoint == Endpoint::Responses {
                let scope = conversation_scope(&rt.spec.name, &key.id);
                let (previous, conv) = continued(&v);
                *conversation = conv.map(str::to_string);
                let known =
                    |id: Option<&str>| id.and_then(|id| shared.conversations.get(&scope, id));
                known(previous).or_else(|| known(conv)).unwrap_or_default()
            } else {
                RedactionMap::new()
            };
            let earlier = seed.len();
            *redactions = if earlier > 0 {
                redact_request_continuing(findings.scoped(insp), &mut v, seed)
            } else {
                redact_request(findings.scoped(insp), &mut v)
            };
            let new = &redactions[earlier..];
            if !new.is_empty() {
                rec.redactions = Some(new.len() as i64);
                findings.set_request_redacted(new);
                changed = true;
            }
        }
    }
    if let Some(p) = prompt {
        let date = palisade_core::spend::day_string((shared.accounting.clock)());
        let org = shared.organization.load();
        let vars = [
            ("user", key.name.as_str()),
            ("group", key.group.as_deref().unwrap_or("")),
            ("date", date.as_str()),
            ("organization", org.as_str()),
            ("proxy", rt.spec.name.as_str()),
        ];
        if crate::prompts::inject(&mut v, endpoint, &crate::prompts::render(&p.text, &vars)) {
            rec.prompt = Some(p.name.clone());
            changed = true;
        }
    }
    // Streamed chat completions report usage only when asked: ask on the client's behalf
    // (and drop the extra chunk from its stream) so every request is accounted.
    if strip_usage && let Some(m) = v.as_object_mut() {
        let opts = m
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        // `"stream_options": null` (or any non-object) asks for nothing: it becomes an object.
        if !opts.is_object() {
            *opts = serde_json::json!({});
        }
        if let Some(o) = opts.as_object_mut() {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
            changed = true;
        }
    }
    if !changed {
        return Ok(body.clone());
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))
}

/// Sets the gateway's headers on an upstream's answer. The provider's own request id, which its
/// support asks for, moves to `x-upstream-request-id`.
fn finish_headers(h: &mut http::HeaderMap, request_id: &str, overhead: Duration) {
    if let Some(upstream) = h.remove(&REQUEST_ID) {
        h.insert(UPSTREAM_REQUEST_ID.clone(), upstream);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID.clone(), v);
    }
    h.insert(
        crate::upstream::OVERHEAD_HEADER,
        HeaderValue::from(overhead.as_micros() as u64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_providers_request_id_is_passed_on_beside_the_gateways() {
        let mut h = http::HeaderMap::new();
        h.insert(
            REQUEST_ID.clone(),
            HeaderValue::from_static("req_upstream_1"),
        );
        finish_headers(&mut h, "pal-1", Duration::from_micros(42));
        assert_eq!(h[&REQUEST_ID], "pal-1");
        assert_eq!(h[&UPSTREAM_REQUEST_ID], "req_upstream_1");
        assert_eq!(h[&crate::upstream::OVERHEAD_HEADER], "42");
        let mut h = http::HeaderMap::new();
        finish_headers(&mut h, "pal-2", Duration::ZERO);
        assert_eq!(h[&REQUEST_ID], "pal-2");
        assert!(!h.contains_key(&UPSTREAM_REQUEST_ID));
    }
}
