//! Response bodies: a buffered body, and a relay that forwards an upstream body frame by frame
//! (event by event for SSE), tracks usage, enforces an idle timeout, turns a broken upstream into
//! a well-formed terminal error event, and writes the request record when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use palisade_core::model::LlmApi;
use palisade_core::record::RequestRecord;

use crate::accounting::Accounting;
use crate::inspect::{Findings, Inspector, StreamGuard, stream_delta_text_json};
use crate::manager::{AlertFn, RecordFn};
use crate::redact::StreamRewriter;
use crate::shape::{last_sequence_number, responses_error_event, sse_error_event};
use crate::sse::{SseSplitter, for_each_event, raw_events};
use crate::usage::Usage;

/// Error type of relayed bodies (raw pass-through bodies abort the connection on failure).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest unfinished SSE event the relay will hold (a guard against an endless line).
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// The body of every response the proxy sends.
pub enum ProxyBody {
    /// A complete body (errors, buffered JSON answers).
    Full(Option<Bytes>),
    /// A streamed upstream body.
    Relay(Box<Relay>),
    /// The event stream of a legacy HTTP+SSE MCP session.
    Events(Box<crate::mcp_legacy::SessionStream>),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            ProxyBody::Relay(r) => Pin::new(r.as_mut()).poll_frame(cx),
            ProxyBody::Events(e) => Pin::new(e.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            ProxyBody::Relay(r) => r.done,
            ProxyBody::Events(e) => e.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // SSE relays may rewrite events (unmasking, MCP filtering): never promise a length.
            ProxyBody::Relay(r) if matches!(r.mode, Mode::Sse(_)) => SizeHint::default(),
            ProxyBody::Relay(r) => r.inner.size_hint(),
            ProxyBody::Events(_) => SizeHint::default(),
        }
    }
}

/// Completes a request record when its response ends, however it ends.
pub struct Finisher {
    /// The record being completed.
    pub record: RequestRecord,
    /// When the request arrived.
    pub t0: Instant,
    /// Where the record goes.
    pub sink: RecordFn,
    /// Where alerts go.
    pub alert: AlertFn,
    /// Policy findings of the request phase (moved into the stream guard when there is one).
    pub findings: Findings,
    /// Prices and spend.
    pub accounting: Arc<Accounting>,
    /// The key's tokens-per-minute limit, charged with the answer's tokens.
    pub key_tpm: Option<u32>,
    /// For an LLM answer, the prompt tokens to charge when its stream ends before the upstream's
    /// count arrives (see [`Relay`]): the request body's bytes / 4. `None` for other streams.
    pub prompt_estimate: Option<i64>,
    /// The request's estimated tokens held in tokens-per-minute buckets, given back once the
    /// answer's count is charged.
    pub token_hold: Option<crate::accounting::TokenHold>,
}

impl Finisher {
    fn finish(
        mut self,
        usage: Usage,
        ttfb: Option<Duration>,
        error: Option<String>,
        findings: Option<Findings>,
    ) {
        let findings = findings.unwrap_or(std::mem::take(&mut self.findings));
        findings.finalize(&mut self.record, self.alert.as_ref());
        let r = &mut self.record;
        r.latency_us = self.t0.elapsed().as_micros() as i64;
        r.ttfb_us = ttfb.map(|d| d.as_micros() as i64);
        usage.record_into(r);
        if error.is_some() {
            r.error = error;
        }
        self.accounting
            .settle(&mut self.record, &usage, self.key_tpm, self.alert.as_ref());
        // The real count is charged: the estimate held since admission goes back.
        drop(self.token_hold.take());
        (self.sink)(self.record);
    }
}

/// How a relay treats the bytes it forwards.
enum Mode {
    /// Server-sent events: forward whole events, read usage, end with an error event on failure.
    Sse(SseSplitter),
    /// Opaque bytes: forward as they come; a failure aborts the response.
    Raw,
}

/// A streamed upstream body on its way to the client.
pub struct Relay {
    inner: Incoming,
    mode: Mode,
    api: LlmApi,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    usage: Usage,
    ttfb: Option<Duration>,
    finisher: Option<Finisher>,
    guard: Option<StreamGuard>,
    strip_usage: bool,
    rewriter: Option<StreamRewriter>,
    mapper: Option<Box<dyn EventMapper>>,
    abort_on_failure: bool,
    /// Events relayed: an answer cut short (the client hung up, a policy or the upstream broke
    /// it), or from an upstream that sends no count, never brings the upstream's token count,
    /// yet was generated and is billed; each event of a stream carries about a token, so it is
    /// charged as many completion tokens.
    events: i64,
    /// Whether the provider's final token count was read (then nothing is estimated).
    final_usage: bool,
    /// A Responses API stream: the `sequence_number` of the last event forwarded, so a terminal
    /// error event the gateway adds continues the numbering.
    responses: Option<Option<u64>>,
    /// The upstream's body ends when it closes the connection (neither a length nor chunks):
    /// an end before the stream's last event is then a broken stream, not a finished one.
    close_delimited: bool,
    /// The stream's last event (`[DONE]`, `message_stop`, `response.completed`…) came.
    ended: bool,
    /// A JSON answer relayed as bytes (a path the gateway does not model, such as
    /// `/v1/completions`): its bytes, read for its token count at the end; past
    /// [`MAX_USAGE_READ`] only its last [`USAGE_TAIL`] bytes (the count comes last). `None`
    /// when not wanted.
    json_answer: Option<(Vec<u8>, bool)>,
}

/// Most bytes of a relayed JSON answer kept whole to read its token count.
const MAX_USAGE_READ: usize = 1 << 20;
/// Bytes kept of the end of a longer answer.
const USAGE_TAIL: usize = 64 << 10;

/// Rewrites runs of complete SSE events before they are forwarded (MCP message processing);
/// what it finds goes into the request's findings, so the request's record shows it.
pub trait EventMapper: Send {
    /// Rewrites one run of complete events.
    fn map(&mut self, run: Bytes, findings: &mut Findings) -> Bytes;
    /// Once, when the upstream ended the stream cleanly: events to send last, and an error
    /// for the request's record (e.g. requests the stream never answered).
    fn end(&mut self) -> (Bytes, Option<String>);
    /// Whether the mapper has ended what the client gets (a policy stopped the stream): the
    /// relay then ends the response and lets go of the upstream.
    fn closed(&self) -> bool {
        false
    }
    /// Once, when the upstream's stream failed (broke off, or sent nothing for the upstream
    /// timeout): events that tell the client, sent before the response ends. By default those
    /// of [`EventMapper::end`].
    fn failed(&mut self, _message: &str) -> Bytes {
        self.end().0
    }
}

/// A relay of an upstream's event stream whose runs of events pass through `mapper` (MCP and
/// A2A answers): the request's record and findings go with it, written when the stream ends;
/// a broken upstream aborts the response.
pub(crate) fn checked_events(
    shared: &crate::manager::GatewayShared,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    t0: Instant,
    body: Incoming,
    idle: Duration,
    mapper: Box<dyn EventMapper>,
) -> Relay {
    let finisher = Finisher {
        record: std::mem::take(rec),
        t0,
        sink: shared.record.clone(),
        alert: shared.alert.clone(),
        findings: std::mem::take(findings),
        accounting: shared.accounting.clone(),
        key_tpm: None,
        prompt_estimate: None,
        token_hold: None,
    };
    Relay::new(body, true, LlmApi::Openai, idle, finisher, None)
        .abort_on_failure()
        .map_events(mapper)
}

impl Relay {
    /// Relays `inner`; `sse` selects event-wise forwarding; `idle` bounds the gap between chunks;
    /// with an inspector, every run of SSE events is checked before it is forwarded.
    pub fn new(
        inner: Incoming,
        sse: bool,
        api: LlmApi,
        idle: Duration,
        mut finisher: Finisher,
        inspector: Option<Inspector>,
    ) -> Self {
        let guard = inspector
            .filter(|i| sse && i.inspects_responses())
            .map(|i| StreamGuard::new(i, std::mem::take(&mut finisher.findings)));
        Self {
            inner,
            mode: if sse {
                Mode::Sse(SseSplitter::new(MAX_EVENT_BYTES))
            } else {
                Mode::Raw
            },
            api,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            done: false,
            usage: Usage::default(),
            ttfb: None,
            finisher: Some(finisher),
            guard,
            strip_usage: false,
            rewriter: None,
            mapper: None,
            abort_on_failure: false,
            events: 0,
            final_usage: false,
            responses: None,
            close_delimited: false,
            ended: false,
            json_answer: None,
        }
    }

    /// The answer is JSON relayed as bytes: its token count (`usage`) is read when it ends.
    pub fn read_json_usage(mut self) -> Self {
        if matches!(self.mode, Mode::Raw) {
            self.json_answer = Some((Vec::new(), false));
        }
        self
    }

    /// The upstream's body is delimited by the connection's close.
    pub fn close_delimited(mut self) -> Self {
        self.close_delimited = true;
        self
    }

    /// The stream is a Responses API stream: a terminal error event takes its event shape
    /// (`type: error`, the next `sequence_number`).
    pub fn responses_stream(mut self) -> Self {
        self.responses = Some(None);
        self
    }

    /// Drops the usage-only chunk from the client's stream (the gateway asked for usage on
    /// the client's behalf; a client that did not ask must not see the extra chunk).
    pub fn strip_usage_chunk(mut self) -> Self {
        self.strip_usage = true;
        self
    }

    /// Passes every run of events through `m` before it is forwarded.
    pub fn map_events(mut self, m: Box<dyn EventMapper>) -> Self {
        self.mapper = Some(m);
        self
    }

    /// A broken upstream aborts the response instead of sending an LLM-style error event
    /// (MCP clients resume with `Last-Event-ID`).
    pub fn abort_on_failure(mut self) -> Self {
        self.abort_on_failure = true;
        self
    }

    /// Rewrites the answer's text (masking new values, restoring the request's) before it is
    /// forwarded.
    pub fn rewrite_with(mut self, u: StreamRewriter) -> Self {
        self.rewriter = Some(u);
        self
    }

    fn without_usage_chunk(run: Bytes) -> Bytes {
        let events = raw_events(&run);
        let keep: Vec<&[u8]> = events
            .iter()
            .copied()
            .filter(|ev| {
                let mut usage_only = false;
                for_each_event(ev, |_, data| {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
                        usage_only = v
                            .get("choices")
                            .and_then(|c| c.as_array())
                            .is_some_and(|c| c.is_empty())
                            && v.get("usage").is_some_and(|u| !u.is_null());
                    }
                });
                !usage_only
            })
            .collect();
        if keep.len() == events.len() {
            return run;
        }
        Bytes::from(keep.concat())
    }

    fn mark_first_byte(&mut self) {
        if self.ttfb.is_none() {
            self.ttfb = self.finisher.as_ref().map(|f| f.t0.elapsed());
        }
    }

    fn finish(&mut self, error: Option<String>) {
        self.done = true;
        if let Some(mut f) = self.finisher.take() {
            if error.is_some()
                && let Some(u) = self.rewriter.as_mut()
            {
                u.discard();
            }
            if error.is_none()
                && let Some((buf, tail)) = self.json_answer.take()
                && if tail {
                    self.usage.absorb_json_tail(&buf)
                } else {
                    self.usage.absorb_json(&buf)
                }
                && !tail
                && f.record.model.is_none()
            {
                // Priced by the model that answered (the request's body was not read).
                #[derive(serde::Deserialize)]
                struct Served {
                    model: Option<String>,
                }
                f.record.model = serde_json::from_slice::<Served>(&buf)
                    .ok()
                    .and_then(|s| s.model)
                    .map(|m| m.chars().take(200).collect());
            }
            let mut error = error;
            // An answer that began (its headers came) was billed for its prompt by the provider,
            // also when it was cut before its first event.
            if let Some(prompt) = f.prompt_estimate
                && matches!(self.mode, Mode::Sse(_))
                && !self.final_usage
                && (self.events > 0 || error.is_some())
            {
                self.usage.completion = Some(self.events.max(self.usage.completion.unwrap_or(0)));
                self.usage.prompt.get_or_insert(prompt);
                self.usage.total = None;
                const NOTE: &str = "token counts estimated (the upstream's count never arrived)";
                error = Some(match error {
                    Some(e) => format!("{e}; {NOTE}"),
                    None => NOTE.to_string(),
                });
            }
            let mut findings = self.guard.take().map(StreamGuard::into_findings);
            let masked = self.rewriter.as_ref().map_or(0, StreamRewriter::masked);
            let echoed = self.rewriter.as_ref().is_some_and(StreamRewriter::echoed);
            if masked > 0 || echoed {
                findings
                    .as_mut()
                    .unwrap_or(&mut f.findings)
                    .set_answer_redacted();
                let r = &mut f.record;
                r.redactions = Some(r.redactions.unwrap_or(0) + masked as i64);
            }
            f.finish(self.usage, self.ttfb, error, findings);
        }
    }

    fn fail(&mut self, message: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::warn!(error = %message, "upstream stream ended abnormally");
        // The client got 200 and then a terminal error event; the log counts it as the upstream
        // failure it is (error filters, error rates).
        if let Some(f) = self.finisher.as_mut() {
            f.record.status = 502;
        }
        let (t, code) = match self.api {
            LlmApi::Openai => ("upstream_error", "upstream_stream_error"),
            LlmApi::Anthropic => ("api_error", "upstream_stream_error"),
        };
        self.end_with_error(
            t,
            code,
            format!("upstream stream failed: {message}"),
            message,
        )
    }

    fn policy_block(&mut self, rules: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let t = match self.api {
            LlmApi::Openai => "policy_violation",
            LlmApi::Anthropic => "permission_error",
        };
        let msg = format!("response blocked by policy (rules: {rules})");
        self.end_with_error(t, "blocked_by_policy", msg.clone(), msg)
    }

    /// Ends the stream: SSE clients get a terminal error event, raw bodies are aborted.
    fn end_with_error(
        &mut self,
        err_type: &str,
        code: &str,
        client_message: String,
        log_message: String,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.abort_on_failure {
            // The events that end a stream for its requests: for one the client cannot resume,
            // an error per request still open, so none is left waiting; for one it can, none
            // (the response is aborted and the client resumes it).
            let tail = self
                .mapper
                .as_mut()
                .map(|m| m.failed(&client_message))
                .unwrap_or_default();
            self.finish(Some(log_message.clone()));
            if !tail.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(tail))));
            }
            return Poll::Ready(Some(Err(log_message.into())));
        }
        let request_id = self
            .finisher
            .as_ref()
            .map(|f| f.record.id.clone())
            .unwrap_or_default();
        let sse = matches!(self.mode, Mode::Sse(_));
        self.finish(Some(log_message.clone()));
        if sse {
            let ev = match self.responses {
                Some(last) => responses_error_event(
                    err_type,
                    code,
                    &client_message,
                    &request_id,
                    last.map_or(0, |n| n + 1),
                ),
                None => sse_error_event(self.api, err_type, code, &client_message, &request_id),
            };
            Poll::Ready(Some(Ok(Frame::data(ev))))
        } else {
            Poll::Ready(Some(Err(log_message.into())))
        }
    }

    /// Reads usage from a run of events and, with a guard, scans its new answer text.
    /// Returns the blocking rule ids when the run must not be forwarded.
    fn inspect(&mut self, run: &[u8]) -> Option<String> {
        let usage = &mut self.usage;
        let events = &mut self.events;
        let final_usage = &mut self.final_usage;
        // Only a close-delimited stream needs its last event told apart.
        let mut ended = self.close_delimited.then_some(&mut self.ended);
        let mut count = |data: &[u8]| {
            // Events that carry generated text (deltas): about a token each. Opening and
            // closing events (`message_start`, `content_block_stop`) are not.
            *events += i64::from(is_delta(data));
            *final_usage |= usage.absorb_json(data);
            if let Some(ended) = ended.as_deref_mut() {
                *ended |= is_last_event(data);
            }
        };
        let Some(guard) = self.guard.as_mut() else {
            for_each_event(run, |_, data| count(data));
            return None;
        };
        let mut text = String::new();
        for_each_event(run, |_, data| {
            count(data);
            stream_delta_text_json(data, &mut text);
        });
        if guard.check(&text) {
            guard.findings.set_blocked();
            return Some(guard.findings.blocking_rules());
        }
        None
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.sleep.as_mut().reset(deadline);
                    if let Some((buf, tail)) = this.json_answer.as_mut() {
                        buf.extend_from_slice(&data);
                        if buf.len() > MAX_USAGE_READ {
                            *tail = true;
                        }
                        if *tail && buf.len() > 2 * USAGE_TAIL {
                            buf.drain(..buf.len() - USAGE_TAIL);
                        }
                    }
                    let out = match &mut this.mode {
                        Mode::Raw => data,
                        Mode::Sse(split) => match split.push(data) {
                            Ok(run) => run,
                            Err(_) => {
                                return this
                                    .fail("upstream sent an SSE event larger than 4 MiB".into());
                            }
                        },
                    };
                    if out.is_empty() {
                        continue;
                    }
                    if matches!(this.mode, Mode::Sse(_))
                        && let Some(rules) = this.inspect(&out)
                    {
                        return this.policy_block(rules);
                    }
                    let out = if this.strip_usage && contains_usage(&out) {
                        Self::without_usage_chunk(out)
                    } else {
                        out
                    };
                    let out = match this.rewriter.as_mut() {
                        Some(u) => u.rewrite(out),
                        None => out,
                    };
                    let out = match this.mapper.as_mut() {
                        Some(m) => {
                            let mut spare = Findings::default();
                            let f = request_findings(&mut this.guard, &mut this.finisher);
                            m.map(out, f.unwrap_or(&mut spare))
                        }
                        None => out,
                    };
                    if this.mapper.as_ref().is_some_and(|m| m.closed()) {
                        this.mark_first_byte();
                        this.finish(None);
                        if out.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    if out.is_empty() {
                        continue;
                    }
                    if let Some(last) = this.responses.as_mut()
                        && let Some(n) = last_sequence_number(&out)
                    {
                        *last = Some(n);
                    }
                    this.mark_first_byte();
                    // An answer of known length ends with its last byte: the client's side may
                    // stop polling there (it has the whole length), so the record is finished
                    // now rather than taken for a disconnect when the body is dropped.
                    if matches!(this.mode, Mode::Raw) && this.inner.is_end_stream() {
                        this.finish(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.fail(format!("connection to upstream broke: {e}"));
                }
                Poll::Ready(None) => {
                    let rest = match &mut this.mode {
                        Mode::Sse(split) => split.take_rest(),
                        Mode::Raw => Bytes::new(),
                    };
                    if !rest.is_empty()
                        && let Some(rules) = this.inspect(&rest)
                    {
                        return this.policy_block(rules);
                    }
                    if this.close_delimited
                        && !this.ended
                        && this.mapper.is_none()
                        && matches!(this.mode, Mode::Sse(_))
                    {
                        return this.fail(
                            "the upstream closed the connection before the stream's last event"
                                .into(),
                        );
                    }
                    let rest = if this.strip_usage && contains_usage(&rest) {
                        Self::without_usage_chunk(rest)
                    } else {
                        rest
                    };
                    let rest = match this.rewriter.as_mut() {
                        Some(u) => {
                            let rest = if rest.is_empty() {
                                rest
                            } else {
                                u.rewrite(rest)
                            };
                            let last = u.finish();
                            if last.is_empty() {
                                rest
                            } else {
                                [rest, last].concat().into()
                            }
                        }
                        None => rest,
                    };
                    let mut error = None;
                    let rest = match this.mapper.as_mut() {
                        Some(m) => {
                            let mut spare = Findings::default();
                            let f = request_findings(&mut this.guard, &mut this.finisher)
                                .unwrap_or(&mut spare);
                            let mut rest = if rest.is_empty() {
                                rest
                            } else {
                                m.map(rest, f)
                            };
                            let (last, err) = m.end();
                            if !last.is_empty() {
                                rest = [rest, last].concat().into();
                            }
                            // The upstream ended the stream short of what it owed (requests
                            // left unanswered): its failure, as for a broken stream.
                            if err.is_some()
                                && let Some(f) = this.finisher.as_mut()
                            {
                                f.record.status = 502;
                            }
                            error = err;
                            rest
                        }
                        None => rest,
                    };
                    this.finish(error);
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest))));
                }
                Poll::Pending => {
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        let secs = this.idle.as_secs();
                        return this.fail(format!("upstream sent nothing for {secs} s"));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The findings the request's record will be finished with: the stream guard's when there is
/// one (it took them over), else the finisher's; none once the record is finished.
fn request_findings<'a>(
    guard: &'a mut Option<StreamGuard>,
    finisher: &'a mut Option<Finisher>,
) -> Option<&'a mut Findings> {
    match (guard, finisher) {
        (Some(g), _) => Some(&mut g.findings),
        (None, Some(f)) => Some(&mut f.findings),
        (None, None) => None,
    }
}

fn contains_usage(b: &[u8]) -> bool {
    b.windows(7).any(|w| w == b"\"usage\"")
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.done {
            if crate::listener::cutting()
                && let Some(f) = self.finisher.as_mut()
            {
                f.record.status = 503;
            }
            self.finish(Some(crate::listener::cut_short("ended")));
        }
    }
}

/// Whether an event's data is a delta (`"delta"` in OpenAI chunks, Anthropic
/// `content_block_delta`, Responses `….delta` events).
fn is_delta(data: &[u8]) -> bool {
    data.windows(7)
        .any(|w| w == b"\"delta\"" || w == b".delta\"")
}

/// Whether an event's data is the last of an LLM stream: `[DONE]` (OpenAI chat and
/// completions), Anthropic `message_stop`, a Responses `response.completed` / `.incomplete` /
/// `.failed`. (Quotes inside JSON strings are escaped, so text that names them does not count.)
fn is_last_event(data: &[u8]) -> bool {
    let data = data.trim_ascii();
    data == b"[DONE]"
        || [
            &b"\"message_stop\""[..],
            b"\"response.completed\"",
            b"\"response.incomplete\"",
            b"\"response.failed\"",
        ]
        .iter()
        .any(|m| data.windows(m.len()).any(|w| w == *m))
}

#[cfg(test)]
mod last_event_tests {
    use super::is_last_event;

    #[test]
    fn last_events_are_recognised_and_text_naming_them_is_not() {
        assert!(is_last_event(b"[DONE]"));
        assert!(is_last_event(br#"{"type":"message_stop"}"#));
        assert!(is_last_event(
            br#"{"type":"response.completed","response":{}}"#
        ));
        assert!(!is_last_event(
            br#"{"choices":[{"delta":{"content":"say \"message_stop\""}}]}"#
        ));
        assert!(!is_last_event(
            br#"{"type":"response.output_text.delta","delta":"[DONE]"}"#
        ));
    }
}
