//! OpenTelemetry export end to end: a loopback OTLP/HTTP receiver gets a span per proxied
//! request, in the caller's trace when the request carried a `traceparent`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What a test collector keeps: each export request's path and credential headers, and body.
type Exports = Arc<Mutex<Vec<(String, Value)>>>;

/// A collector on 127.0.0.1 that keeps every export request's body.
async fn collector() -> (String, Exports) {
    collector_with(None).await
}

/// [`collector`], over TLS with `acceptor` (an `https://` URL).
async fn collector_with(acceptor: Option<tokio_rustls::TlsAcceptor>) -> (String, Exports) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Exports = Arc::default();
    let keep = got.clone();
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let keep = keep.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    // A client the TLS side refuses gets no further.
                    Some(a) => {
                        if let Ok(t) = a.accept(stream).await {
                            serve_exports(t, keep).await;
                        }
                    }
                    None => serve_exports(stream, keep).await,
                }
            });
        }
    });
    (format!("{scheme}://{addr}"), got)
}

/// Answers export requests on one connection with `{}`, keeping each.
async fn serve_exports<S>(stream: S, keep: Exports)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let keep = keep.clone();
        async move {
            let path = req.uri().path().to_string();
            let key = [
                "x-collector-key",
                "authorization",
                "x-langfuse-ingestion-version",
            ]
            .iter()
            .filter_map(|n| req.headers().get(*n)?.to_str().ok())
            .collect::<Vec<_>>()
            .join(" ");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            keep.lock().unwrap().push((format!("{path} {key}"), v));
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                b"{}",
            ))))
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// What each request an upstream got was (its JSON-RPC method, or its HTTP method and path),
/// and the `traceparent` and `tracestate` it carried.
type Seen = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

/// The answer of [`traced_upstream`] to a request: a JSON-RPC result for a JSON-RPC request (an
/// MCP server's to `initialize`, an A2A agent's message to `message/send`), an agent card for
/// a GET, a chat completion otherwise.
fn upstream_answer(method: &hyper::Method, body: &[u8]) -> (String, Value) {
    let rpc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(m) = rpc["method"].as_str() {
        let result = match m {
            "initialize" => json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "serverInfo": {"name": "traced", "version": "1"}}),
            "message/send" => json!({"kind": "message", "messageId": "a-1", "role": "agent",
                "parts": [{"kind": "text", "text": "done"}]}),
            _ => json!({}),
        };
        return (
            m.to_string(),
            json!({"jsonrpc": "2.0", "id": rpc["id"], "result": result}),
        );
    }
    if method == hyper::Method::GET {
        let card = json!({"name": "traced", "description": "an agent", "version": "1",
            "url": "http://127.0.0.1:9/", "protocolVersion": "0.3.0", "capabilities": {},
            "defaultInputModes": ["text"], "defaultOutputModes": ["text"], "skills": []});
        return ("GET".into(), card);
    }
    let answer = json!({"id": "c1", "object": "chat.completion", "model": "mock-gpt",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    ("chat".into(), answer)
}

/// An upstream on 127.0.0.1 for LLM, MCP and A2A proxies ([`upstream_answer`]) that keeps
/// what each request was and the `traceparent` and `tracestate` it carried.
async fn traced_upstream() -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Seen = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let keep = keep.clone();
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let (parent, state) = (header("traceparent"), header("tracestate"));
                        let method = req.method().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (what, answer) = upstream_answer(&method, &body);
                        keep.lock().unwrap().push((what, parent, state));
                        let mut r =
                            hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

fn spans(got: &Mutex<Vec<(String, Value)>>) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .flat_map(|(_, v)| {
            v.pointer("/resourceSpans/0/scopeSpans/0/spans")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// The spans the collector has got once there are `n` (or after 10 s, for the assertions to
/// show).
async fn wait_spans(got: &Mutex<Vec<(String, Value)>>, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let all = spans(got);
        if all.len() >= n {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    spans(got)
}

/// The client span of `server`'s upstream call, checked: named `<api> upstream`, in the same
/// trace, inside the server span, with the upstream's status 200. Also returns the
/// `traceparent` the upstream should have got (with the caller's `flags`).
fn client_span_under<'a>(
    all: &'a [Value],
    server: &Value,
    api: &str,
    flags: &str,
) -> (&'a Value, String) {
    let nanos = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u128>().unwrap();
    let call = all
        .iter()
        .find(|s| s["kind"] == 3 && s["parentSpanId"] == server["spanId"])
        .unwrap_or_else(|| panic!("no client span under {server}"));
    assert_eq!(call["traceId"], server["traceId"]);
    assert_eq!(call["name"], format!("{api} upstream"));
    assert_eq!(
        attr(call, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    assert!(nanos(call, "startTimeUnixNano") >= nanos(server, "startTimeUnixNano"));
    assert!(nanos(call, "endTimeUnixNano") <= nanos(server, "endTimeUnixNano"));
    let expected = format!(
        "00-{}-{}-{flags}",
        server["traceId"].as_str().unwrap(),
        call["spanId"].as_str().unwrap()
    );
    (call, expected)
}

#[tokio::test]
async fn proxied_requests_become_spans_in_their_callers_traces() {
    let (endpoint, got) = collector().await;
    let (upstream, parents) = traced_upstream().await;
    let gw = Gateway::start_with(
        tempfile::tempdir().unwrap(),
        &config_for(&upstream),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=k-123"),
            ("OTEL_SERVICE_NAME", "edge-gateway"),
        ],
    )
    .await;
    let url = format!("{}/v1/chat/completions", gw.proxy_url("oai").await);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let http = reqwest::Client::new();
    for traceparent in [Some(format!("00-{trace}-00f067aa0ba902b7-01")), None] {
        let mut rb = http.post(&url).bearer_auth(CI_KEY).json(
            &json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hello"}]}),
        );
        if let Some(t) = &traceparent {
            rb = rb.header("traceparent", t);
        }
        rb = rb.header("tracestate", "vendor=abc");
        assert_eq!(rb.send().await.unwrap().status(), 200);
    }
    let all = wait_spans(&got, 4).await;
    // Each request: its server span, and its upstream call's client span under it.
    assert_eq!(all.len(), 4, "{:#?}", got.lock().unwrap());
    let joined = all
        .iter()
        .find(|s| s["traceId"] == trace && s["kind"] == 2)
        .expect("the caller's trace");
    assert_eq!(joined["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(joined["kind"], 2);
    assert_eq!(
        attr(joined, "palisade.proxy").unwrap()["stringValue"],
        "oai"
    );
    assert_eq!(
        attr(joined, "gen_ai.request.model").unwrap()["stringValue"],
        "mock-gpt"
    );
    assert_eq!(
        attr(joined, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    assert!(attr(joined, "gen_ai.usage.input_tokens").is_some());
    let own = all
        .iter()
        .find(|s| s["traceId"] != trace && s["kind"] == 2)
        .unwrap();
    assert!(own.get("parentSpanId").is_none());
    // The upstream calls: children of their requests' spans, inside them, and the span the
    // upstream was told is its parent.
    let sent = parents.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    // The caller's vendor state goes on in the caller's trace, not in one the gateway started.
    for (server, flags, state) in [(joined, "01", Some("vendor=abc")), (own, "01", None)] {
        let (call, expected) = client_span_under(&all, server, "openai", flags);
        let (host, port) = upstream
            .trim_start_matches("http://")
            .split_once(':')
            .unwrap();
        assert_eq!(attr(call, "server.address").unwrap()["stringValue"], host);
        assert_eq!(attr(call, "server.port").unwrap()["intValue"], port);
        let got = sent
            .iter()
            .find(|(_, parent, _)| parent.as_deref() == Some(expected.as_str()))
            .unwrap_or_else(|| panic!("{expected} not in {sent:?}"));
        assert_eq!(got.2.as_deref(), state, "{sent:?}");
    }
    // The request's id ties the span to the request log.
    let rows = gw.wait_requests("proxy=oai", 2).await;
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    let span_id = attr(joined, "palisade.request_id").unwrap()["stringValue"]
        .as_str()
        .unwrap();
    assert!(ids.contains(&span_id), "{ids:?}");
    let first = got.lock().unwrap()[0].clone();
    assert_eq!(first.0, "/v1/traces k-123");
    assert_eq!(
        first
            .1
            .pointer("/resourceSpans/0/resource/attributes/0/value/stringValue"),
        Some(&json!("edge-gateway"))
    );
}

/// A config with an MCP proxy `tools` and an A2A proxy `agents`, both in front of `upstream`.
fn mcp_and_a2a_config(upstream: &str) -> String {
    format!(
        "{}\n[[proxies]]\nname = \"tools\"\nkind = \"mcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}/mcp\"\n\
         \n[[proxies]]\nname = \"agents\"\nkind = \"a2a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n",
        config_for(upstream)
    )
}

/// Sends an MCP `initialize` to `tools` and an A2A `message/send` to `agents`, each with the
/// given `traceparent` (when some) and a `tracestate`.
async fn call_mcp_and_a2a(gw: &Gateway, mcp_parent: Option<&str>, a2a_parent: Option<&str>) {
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let send = json!({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {
        "kind": "message", "role": "user", "messageId": "m-1", "parts": [{"kind": "text", "text": "hi"}]}}});
    for (url, body, parent) in [
        (
            format!("{}/mcp", gw.proxy_url("tools").await),
            init,
            mcp_parent,
        ),
        (
            format!("{}/", gw.proxy_url("agents").await),
            send,
            a2a_parent,
        ),
    ] {
        let mut rb = http
            .post(&url)
            .bearer_auth(CI_KEY)
            .header("accept", "application/json, text/event-stream")
            .header("tracestate", "vendor=abc")
            .json(&body);
        if let Some(p) = parent {
            rb = rb.header("traceparent", p);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}: {}", r.text().await.unwrap());
    }
}

#[tokio::test]
async fn mcp_and_a2a_upstream_calls_are_client_spans_in_the_trace() {
    let (endpoint, got) = collector().await;
    let (upstream, seen) = traced_upstream().await;
    let gw = Gateway::start_with(
        tempfile::tempdir().unwrap(),
        &mcp_and_a2a_config(&upstream),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    )
    .await;
    // The MCP call in the caller's trace, not sampled; the A2A call in a trace of its own.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace}-00f067aa0ba902b7-00");
    call_mcp_and_a2a(&gw, Some(&caller), None).await;
    let all = wait_spans(&got, 4).await;
    assert_eq!(all.len(), 4, "{all:#?}");
    let sent = seen.lock().unwrap().clone();
    for (proxy, what, flags, state) in [
        ("tools", "initialize", "00", Some("vendor=abc")),
        ("agents", "message/send", "01", None),
    ] {
        let server = all
            .iter()
            .find(|s| s["kind"] == 2 && attr(s, "palisade.proxy").unwrap()["stringValue"] == proxy)
            .unwrap_or_else(|| panic!("no span of {proxy}: {all:#?}"));
        if proxy == "tools" {
            assert_eq!(server["traceId"], trace);
            assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
        } else {
            assert_ne!(server["traceId"], trace);
        }
        let api = if proxy == "tools" { "mcp" } else { "a2a" };
        // The upstream was told the client span is its parent; the caller's vendor state goes
        // on only in the caller's trace.
        let (_, expected) = client_span_under(&all, server, api, flags);
        let (_, parent, st) = sent
            .iter()
            .find(|(w, _, _)| w == what)
            .unwrap_or_else(|| panic!("the upstream got no {what}: {sent:?}"));
        assert_eq!(parent.as_deref(), Some(expected.as_str()), "{sent:?}");
        assert_eq!(st.as_deref(), state, "{sent:?}");
    }
    drop(gw);

    // Without a collector the upstreams get the caller's trace context as it came.
    let (upstream, seen) = traced_upstream().await;
    let gw = Gateway::start(&mcp_and_a2a_config(&upstream)).await;
    call_mcp_and_a2a(&gw, Some(&caller), Some(&caller)).await;
    let sent = seen.lock().unwrap().clone();
    for what in ["initialize", "message/send"] {
        let (_, parent, st) = sent.iter().find(|(w, _, _)| w == what).unwrap();
        assert_eq!(parent.as_deref(), Some(caller.as_str()), "{sent:?}");
        assert_eq!(st.as_deref(), Some("vendor=abc"), "{sent:?}");
    }
}

/// A collector behind a private CA that asks for a client certificate gets the spans from a
/// gateway given both (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`),
/// and nothing from one without the certificate.
#[tokio::test]
async fn spans_reach_a_collector_that_asks_for_a_client_certificate() {
    let (endpoint, got) = collector_with(Some(tls_acceptor(true))).await;
    let mock = Mock::start(&[]);
    let ca = fixture("redis-tls/ca.pem");
    let (cert, key) = (
        fixture("client-tls/client.pem"),
        fixture("client-tls/client.key"),
    );
    let with = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap()),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            cert.to_str().unwrap(),
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.to_str().unwrap()),
    ];
    let mut ids = Vec::new();
    let mut gateways = Vec::new();
    for env in [&with[..], &with[..2]] {
        let gw =
            Gateway::start_with(tempfile::tempdir().unwrap(), &config_for(&mock.url), env).await;
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", gw.proxy_url("oai").await))
            .bearer_auth(CI_KEY)
            .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["x-request-id"].to_str().unwrap().to_string());
        gateways.push(gw);
    }
    let ids_of = |got: &Exports| -> Vec<String> {
        spans(got)
            .iter()
            .filter_map(|s| attr(s, "palisade.request_id")?["stringValue"].as_str())
            .map(str::to_string)
            .collect()
    };
    for _ in 0..100 {
        if ids_of(&got).contains(&ids[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both spans left within the second the export waits for a batch to fill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let exported = ids_of(&got);
    assert!(exported.contains(&ids[0]), "{exported:?}");
    assert!(!exported.contains(&ids[1]), "{exported:?}");
}

#[tokio::test]
async fn langfuse_gets_generations_beside_the_collectors_spans() {
    let (collector_url, plain) = collector().await;
    let (langfuse_url, langfuse) = collector().await;
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with(
        tempfile::tempdir().unwrap(),
        &format!(
            "{}\n[[proxies]]\nname = \"masked\"\nkind = \"llm\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\napi = \"openai\"\npolicies = [\"secrets-detection\"]\n",
            config_for(&mock.url),
            mock.url
        ),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-test"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-test"),
            ("LANGFUSE_HOST", langfuse_url.as_str()),
            ("LANGFUSE_CAPTURE_CONTENT", "true"),
        ],
    )
    .await;
    // A secret in the prompt: Langfuse gets the text as the model got it, masked.
    let secret = "sk-proj-3_pFDwRqKd4-fMBwmDwe1tHBNG_oLrM_4m76ARO55EF8WX9-W8yZcvv1";
    let url = format!("{}/v1/chat/completions", gw.proxy_url("masked").await);
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(CI_KEY)
        .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": format!("hello, my key is {secret}")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..100 {
        if !spans(&plain).is_empty() && !spans(&langfuse).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (to, _) = langfuse.lock().unwrap()[0].clone();
    // Langfuse's OTLP endpoint, its project keys as Basic credentials, its ingestion version.
    assert_eq!(
        to,
        "/api/public/otel/v1/traces Basic cGstbGYtdGVzdDpzay1sZi10ZXN0 4"
    );
    let lf = spans(&langfuse);
    assert_eq!(lf.len(), 1, "{lf:#?}");
    let s = &lf[0];
    assert_eq!(
        attr(s, "langfuse.observation.type").unwrap()["stringValue"],
        "generation"
    );
    assert_eq!(attr(s, "langfuse.user.id").unwrap()["stringValue"], "ci");
    assert_eq!(
        attr(s, "gen_ai.request.model").unwrap()["stringValue"],
        "mock-gpt"
    );
    assert!(attr(s, "gen_ai.usage.input_tokens").is_some());
    assert!(
        attr(s, "langfuse.trace.tags")
            .unwrap()
            .to_string()
            .contains("group:engineering"),
        "{s}"
    );
    let input = attr(s, "langfuse.observation.input").unwrap()["stringValue"]
        .as_str()
        .unwrap();
    assert!(input.contains("hello, my key is "), "{input}");
    assert!(
        !input.contains(secret),
        "the secret left for Langfuse: {input}"
    );
    let output = attr(s, "langfuse.observation.output").unwrap()["stringValue"]
        .as_str()
        .unwrap();
    assert!(output.contains("choices"), "{output}");
    // The collector's span carries no text.
    assert!(
        !serde_json::to_string(&spans(&plain))
            .unwrap()
            .contains("hello, my key")
    );
    // The collector's span is the same request, without Langfuse's attributes, and the
    // collector alone gets the upstream call's span under it.
    let ot = spans(&plain);
    assert_eq!(ot.len(), 2, "{ot:#?}");
    assert_eq!(ot[0]["spanId"], s["spanId"]);
    assert!(attr(&ot[0], "langfuse.observation.type").is_none());
    assert_eq!(
        (&ot[1]["kind"], &ot[1]["parentSpanId"]),
        (&json!(3), &s["spanId"])
    );
}

#[tokio::test]
async fn a_wrong_trace_setting_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("PALISADE_ADMIN_PASSWORD", "admin-password-0001")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http/json"));
    // Half a Langfuse key pair is refused the same way.
    let out = std::process::Command::new(bin())
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
        .env_remove("LANGFUSE_SECRET_KEY")
        .env("PALISADE_ADMIN_PASSWORD", "admin-password-0001")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LANGFUSE_SECRET_KEY"));
}
