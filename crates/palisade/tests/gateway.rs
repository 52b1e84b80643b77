//! End-to-end tests of the real binary: admin API, proxy lifecycle, LLM proxying and failures.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn chat_body(stream: bool) -> Value {
    json!({"model": "mock-gpt", "stream": stream, "messages": [{"role": "user", "content": "hello gateway"}]})
}

#[tokio::test]
async fn admin_api_requires_auth_and_names_bad_fields() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let c = reqwest::Client::new();

    let health: Value = c
        .get(format!("{}/healthz", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    for path in [
        "/api/v1/proxies",
        "/api/v1/requests",
        "/api/v1/audit",
        "/api/v1/keys",
        "/api/v1/groups",
    ] {
        let r = c.get(format!("{}{path}", gw.admin)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} must need a token");
    }
    let r = c
        .get(format!("{}/api/v1/proxies", gw.admin))
        .bearer_auth("forged.token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{}/api/v1/auth/login", gw.admin))
        .json(&json!({"username": "admin", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A page re-pointed at the gateway by DNS (rebinding) names it by its own host: refused,
    // even with the right password and a same-origin Origin.
    let r = c
        .post(format!("{}/api/v1/auth/login", gw.admin))
        .header("host", "rebind.attacker.example:8080")
        .header("origin", "http://rebind.attacker.example:8080")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PALISADE_ADMIN_HOSTS"),
        "{body}"
    );
    let r = c
        .get(format!("{}/healthz", gw.admin))
        .header("host", "lb.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "health checks answer any name");
    // Bodies a route parses itself (policies) come as JSON too.
    let r = c
        .post(format!("{}/api/v1/policies/validate", gw.admin))
        .bearer_auth(&gw.token)
        .header("content-type", "text/plain")
        .body(r#"{"id":"p","name":"n","rules":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let (s, v) = gw
        .post(
            "/api/v1/proxies",
            json!({"name": "p1", "kind": "llm", "listen": "127.0.0.1:0"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["field"], "upstream", "{v}");
    let (s, v) = gw
        .post(
            "/api/v1/proxies",
            json!({"name": "p1", "kind": "llm", "listen": "nowhere", "upstream": "http://127.0.0.1:1"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["field"], "listen", "{v}");
    let (s, v) = gw
        .post(
            "/api/v1/proxies",
            json!({"name": "p1", "kind": "llm", "listen": "127.0.0.1:0", "upstream": "http://x", "max_body_bytes": "big"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["field"], "max_body_bytes", "{v}");
    // Nothing was created by the refused calls.
    let (_, list) = gw.get("/api/v1/proxies").await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    let spec: Value = c
        .get(format!("{}/api/v1/openapi.json", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/proxies",
        "/api/v1/proxies/{name}/start",
        "/api/v1/auth/login",
        "/api/v1/requests",
    ] {
        assert!(spec["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    // Composed schemas accept what the server sends: no part of an `allOf` forbids the other
    // parts' fields.
    fn closed_parts(v: &Value, spec: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for part in o
                    .get("allOf")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let target = match part["$ref"].as_str() {
                        Some(r) => spec
                            .pointer(&r.replace("#/", "/"))
                            .cloned()
                            .unwrap_or_default(),
                        None => part.clone(),
                    };
                    if target["additionalProperties"] == false {
                        out.push(part.to_string().chars().take(80).collect());
                    }
                }
                o.values().for_each(|x| closed_parts(x, spec, out));
            }
            Value::Array(a) => a.iter().for_each(|x| closed_parts(x, spec, out)),
            _ => {}
        }
    }
    assert!(
        spec["components"]["schemas"]["ProxyView"]
            .to_string()
            .contains("allOf"),
        "a proxy's view is composed (spec plus run state)"
    );
    let mut closed = Vec::new();
    closed_parts(&spec, &spec, &mut closed);
    assert!(closed.is_empty(), "{closed:?}");
    let input = &spec["components"]["schemas"]["ProxyInput"];
    assert!(
        !input.to_string().contains("\"spec\""),
        "the body is flat: {input}"
    );
    assert!(input.to_string().contains("upstream_key"), "{input}");
}

#[tokio::test]
async fn proxies_are_managed_at_run_time_and_audited() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let client = reqwest::Client::new();

    let (s, v) = gw
        .post(
            "/api/v1/proxies",
            json!({"name": "live", "kind": "llm", "listen": "127.0.0.1:0", "upstream": mock.url, "api": "openai"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "running");
    let url = gw.proxy_url("live").await;
    let addr = url.trim_start_matches("http://").to_string();
    let call = || {
        client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CI_KEY)
            .json(&chat_body(false))
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);

    let (s, v) = gw.post("/api/v1/proxies/live/stop", json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("stopped")));
    // Stopped again: nothing changes, and the audit log does not say it did (checked below).
    let (s, v) = gw.post("/api/v1/proxies/live/stop", json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("stopped")));
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(
        refused.is_err(),
        "a stopped proxy must not accept connections"
    );

    let (s, v) = gw.post("/api/v1/proxies/live/start", json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("running")), "{v}");
    let (s, v) = gw.post("/api/v1/proxies/live/start", json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("running")), "{v}");
    let url2 = gw.proxy_url("live").await;
    let r = client
        .post(format!("{url2}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (s, _) = gw.post("/api/v1/proxies/live/restart", json!({})).await;
    assert_eq!(s, 200);
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/proxies/live",
            Some(json!({"description": "changed", "upstream_timeout_secs": 5})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["description"], "changed");
    assert_eq!(v["status"], "running");
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/proxies/live",
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("name")));

    let (s, _) = gw.api(Method::DELETE, "/api/v1/proxies/live", None).await;
    assert_eq!(s, 204);
    let (s, _) = gw.get("/api/v1/proxies/live").await;
    assert_eq!(s, 404);

    let (_, audit) = gw.get("/api/v1/audit?target=live").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "proxy.create",
        "proxy.stop",
        "proxy.start",
        "proxy.restart",
        "proxy.update",
        "proxy.delete",
    ] {
        assert!(actions.contains(&a), "audit lacks {a}: {actions:?}");
    }
    for a in ["proxy.stop", "proxy.start"] {
        let n = actions.iter().filter(|x| **x == a).count();
        assert_eq!(n, 1, "{a} audited once, not for the repeat: {actions:?}");
    }
    let create = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "proxy.create")
        .unwrap();
    assert_eq!(create["actor"], "admin");
    assert_eq!(create["after"]["upstream"], mock.url.as_str());
    assert!(create["request_id"].is_string());
}

#[tokio::test]
async fn keys_authenticate_and_revocation_is_immediate() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();

    let r = c.get(format!("{url}/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Refused before its body was read: the connection is closed, and the client told so.
    assert_eq!(r.headers()["connection"], "close");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    let r = c
        .get(format!("{url}/v1/models"))
        .bearer_auth("pal_not_a_real_key_at_all_0000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let (s, issued) = gw
        .post(
            "/api/v1/keys",
            json!({"name": "temp", "group": "engineering"}),
        )
        .await;
    assert_eq!(s, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("pal_"));
    let (_, keys) = gw.get("/api/v1/keys").await;
    assert!(
        !keys.to_string().contains(&key),
        "the key itself must never be listed"
    );

    let r = c
        .get(format!("{url}/v1/models"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = gw.api(Method::DELETE, "/api/v1/keys/temp", None).await;
    assert_eq!(s, 200);
    let r = c
        .get(format!("{url}/v1/models"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a revoked key must be refused at once");

    let ant = gw.proxy_url("ant").await;
    let r = c
        .post(format!("{ant}/v1/messages"))
        .header("x-api-key", "nope")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(body["request_id"].is_string());
}

#[tokio::test]
async fn upstream_key_is_injected_and_client_key_never_forwarded() {
    let mock = Mock::start(&["--require-key", "sk-provider-secret"]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let c = reqwest::Client::new();
    // Without an upstream key, the provider refuses (the gateway key is not forwarded).
    let url = gw.proxy_url("oai").await;
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/proxies/oai",
            Some(json!({"upstream_key": "sk-provider-secret"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["has_upstream_key"], true);
    assert!(!v.to_string().contains("sk-provider-secret"));
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Stored encrypted: the plaintext is nowhere in the database file.
    let db = std::fs::read(gw.dir.path().join("data/palisade.db")).unwrap();
    let wal = std::fs::read(gw.dir.path().join("data/palisade.db-wal")).unwrap_or_default();
    let needle = b"sk-provider-secret";
    assert!(!db.windows(needle.len()).any(|w| w == needle));
    assert!(!wal.windows(needle.len()).any(|w| w == needle));
    // The stored key does not follow the proxy to another server unless given again.
    let elsewhere = "http://127.0.0.1:9/";
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/proxies/oai",
            Some(json!({"upstream": elsewhere})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "upstream_key", "{v}");
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/proxies/oai",
            Some(json!({"upstream": format!("{}/", mock.url)})),
        )
        .await;
    assert_eq!(s, 200, "same server, another path form: {v}");
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/proxies/oai",
            Some(json!({"upstream": elsewhere, "upstream_key": ""})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["has_upstream_key"], false);
}

#[tokio::test]
async fn usage_is_logged_for_plain_and_streamed_calls() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();
    let plain = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("x-palisade-overhead-us").is_some());
    assert!(plain.headers().get("x-request-id").is_some());
    let plain: Value = plain.json().await.unwrap();
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let text = resp.text().await.unwrap();
    let mut streamed = String::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(s) = v["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(s);
        }
    }
    assert_eq!(
        streamed,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );

    let rows = gw
        .wait_requests("proxy=oai&endpoint=chat_completions", 2)
        .await;
    for r in &rows {
        assert_eq!(r["status"], 200);
        assert_eq!(r["key_name"], "ci");
        assert_eq!(r["group"], "engineering");
        assert_eq!(r["model"], "mock-gpt");
        assert_eq!(r["prompt_tokens"], plain["usage"]["prompt_tokens"]);
        assert_eq!(r["completion_tokens"], plain["usage"]["completion_tokens"]);
        assert!(r["latency_us"].as_i64().unwrap() > 0);
    }
    assert!(rows.iter().any(|r| r["stream"] == true) && rows.iter().any(|r| r["stream"] == false));
}

#[tokio::test]
async fn upstream_failures_are_well_formed() {
    let mock = Mock::start(&["--latency-ms", "3000"]);
    let cfg = format!(
        "{}\n[[proxies]]\nname = \"dead\"\nkind = \"llm\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n\n\
         [[proxies]]\nname = \"slow\"\nkind = \"llm\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nupstream_timeout_secs = 1\nmax_body_bytes = 2048\n",
        config_for(&mock.url),
        mock.url
    );
    let gw = Gateway::start(&cfg).await;
    let c = reqwest::Client::new();

    let dead = gw.proxy_url("dead").await;
    let r = c
        .post(format!("{dead}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable", "{v}");

    let slow = gw.proxy_url("slow").await;
    let t = std::time::Instant::now();
    let r = c
        .post(format!("{slow}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() < Duration::from_secs(3));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");

    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = c
        .post(format!("{slow}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(format!("{slow}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let rows = gw.wait_requests("errors=true", 4).await;
    assert!(rows.iter().any(|r| r["status"] == 502));
    assert!(rows.iter().any(|r| r["status"] == 504));
}

#[tokio::test]
async fn killed_upstream_mid_stream_ends_with_an_error_event() {
    let mut mock = Mock::start(&["--chunks", "40", "--chunk-delay-ms", "100"]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let ant = gw.proxy_url("ant").await;
    let c = reqwest::Client::new();
    let mut resp = c
        .post(format!("{ant}/v1/messages"))
        .header("x-api-key", CI_KEY)
        .json(
            &json!({"model": "mock-claude", "max_tokens": 50, "stream": true,
            "messages": [{"role": "user", "content": "tell me a long story"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = String::new();
    while !got.contains("content_block_delta") {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    mock.proc.kill();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            s.push_str(&String::from_utf8_lossy(&chunk));
        }
        s
    })
    .await
    .expect("the stream must end, not hang");
    let all = got + &rest;
    assert!(
        all.contains("event: error\ndata: {"),
        "no error event in: {all}"
    );
    assert!(!all.contains("message_stop"));
    let last = all.trim_end().rsplit("\n\n").next().unwrap();
    let data: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(data["type"], "error");

    // The gateway keeps serving: the admin API and the other proxy still answer.
    let (s, _) = gw.get("/api/v1/proxies").await;
    assert_eq!(s, 200);
    let oai = gw.proxy_url("oai").await;
    let r = c
        .get(format!("{oai}/v1/models"))
        .bearer_auth(CI_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "upstream is gone; the gateway must say so cleanly"
    );
    let rows = gw.wait_requests("proxy=ant", 1).await;
    assert!(
        rows[0]["error"].as_str().unwrap_or("").contains("upstream"),
        "{}",
        rows[0]
    );
}

#[tokio::test]
async fn sigterm_flushes_the_request_log_and_state_survives_restart() {
    let mock = Mock::start(&[]);
    let mut gw = Gateway::start(&config_for(&mock.url)).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();
    for _ in 0..50 {
        let r = c
            .get(format!("{url}/v1/models"))
            .bearer_auth(CI_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (s, _) = gw.post("/api/v1/proxies/ant/stop", json!({})).await;
    assert_eq!(s, 200);
    let status = gw.proc.terminate();
    assert!(status.success(), "graceful exit expected, got {status}");

    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    drop(gw);
    let gw2 = Gateway::start_in(dir, &config_for(&mock.url)).await;
    let (_, page) = gw2.get("/api/v1/requests?proxy=oai&endpoint=models").await;
    assert_eq!(
        page["total"], 50,
        "every request of the first run must be in the log"
    );
    // The config file re-applies `ant` as enabled; the API-made stop is in the audit trail.
    let (_, audit) = gw2.get("/api/v1/audit?action=proxy.stop").await;
    assert_eq!(audit.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_password_change_revokes_earlier_tokens() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let c = reqwest::Client::new();
    let old = gw.token.clone();
    let r = c
        .post(format!("{}/api/v1/auth/password", gw.admin))
        .bearer_auth(&old)
        .json(
            &json!({"current_password": ADMIN_PASSWORD, "new_password": "a-brand-new-password-42"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new: Value = r.json().await.unwrap();
    let new = new["token"].as_str().unwrap().to_string();
    let r = c
        .get(format!("{}/api/v1/proxies", gw.admin))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a token issued before the change must stop working"
    );
    let r = c
        .get(format!("{}/api/v1/proxies", gw.admin))
        .bearer_auth(&new)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/api/v1/auth/login", gw.admin))
        .json(&json!({"username": "admin", "password": "a-brand-new-password-42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_config_file_that_names_something_missing_changes_nothing() {
    let mock = Mock::start(&[]);
    let base = config_for(&mock.url);
    let gw = Gateway::start(&base).await;
    let path = gw.dir.path().join("palisade.toml");
    let hup = || {
        std::process::Command::new("kill")
            .arg("-HUP")
            .arg(gw.proc.pid().to_string())
            .status()
            .unwrap()
    };
    // A budget change, a new key, then a proxy naming a policy that does not exist.
    let new_key = "pal_key_added_by_a_refused_reload_01";
    let bad = format!(
        "{}\n[[api_keys]]\nname = \"newkey\"\ngroup = \"engineering\"\nkey = \"{new_key}\"\n\
         [[proxies]]\nname = \"typo\"\nkind = \"llm\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n\
         api = \"openai\"\npolicies = [\"llm-critical-securty\"]\n",
        base.replacen(
            "name = \"engineering\"",
            "name = \"engineering\"\nmonthly_budget_usd = 123",
            1
        ),
        mock.url
    );
    // check-config cannot see the gateway's custom policies: it says what must exist there.
    std::fs::write(&path, &bad).unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&path)
        .env("PALISADE_CI_KEY", CI_KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("note: proxy `typo` uses custom policy `llm-critical-securty`"),
        "{text}"
    );
    assert!(hup().success());
    // A good file after it: once its group shows, the bad one has been handled.
    std::fs::write(&path, format!("{base}\n[[groups]]\nname = \"marker\"\n")).unwrap();
    assert!(hup().success());
    let mut marker = 0;
    for _ in 0..100 {
        marker = gw.get("/api/v1/groups/marker").await.0;
        if marker == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(marker, 200, "the good file was applied");
    let (_, g) = gw.get("/api/v1/groups/engineering").await;
    assert!(g["monthly_budget_usd"].is_null(), "budget unchanged: {g}");
    assert_eq!(gw.get("/api/v1/proxies/typo").await.0, 404);
    let url = gw.proxy_url("oai").await;
    let r = reqwest::Client::new()
        .get(format!("{url}/v1/models"))
        .bearer_auth(new_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the refused file's key was never created");

    // A key the file made is revoked once the file no longer names it.
    let (s, _) = gw
        .post(
            "/api/v1/keys",
            json!({"name": "made-by-api", "group": "engineering"}),
        )
        .await;
    assert_eq!(s, 201);
    let without_key = base.replace(
        "[[api_keys]]\nname = \"ci\"\ngroup = \"engineering\"\nkey = \"env:PALISADE_CI_KEY\"\n",
        "",
    );
    assert_ne!(without_key, base);
    std::fs::write(&path, without_key).unwrap();
    assert!(hup().success());
    let mut code = 0;
    for _ in 0..100 {
        code = reqwest::Client::new()
            .get(format!("{url}/v1/models"))
            .bearer_auth(CI_KEY)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if code == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code, 401, "a key dropped from the file no longer works");
    let (_, keys) = gw.get("/api/v1/keys").await;
    let keys = keys.as_array().cloned().unwrap_or_default();
    let state = |n: &str| {
        keys.iter()
            .find(|k| k["name"] == n)
            .map(|k| k["revoked_at"].is_null())
    };
    assert_eq!(state("ci"), Some(false), "{keys:?}");
    assert_eq!(
        state("made-by-api"),
        Some(true),
        "keys made through the API stay"
    );

    // The same at start-up: refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let start_cfg = dir.path().join("start.toml");
    std::fs::write(
        &start_cfg,
        format!(
            "[[groups]]\nname = \"startgrp\"\n[[api_keys]]\nname = \"k\"\ngroup = \"nosuchgroup\"\nkey = \"{new_key}\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--config"])
        .arg(&start_cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("PALISADE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nothing changed"), "{err}");
    assert!(err.contains("group `nosuchgroup` not found"), "{err}");
    let gw2 = Gateway::start_in(dir, &base).await;
    assert_eq!(gw2.get("/api/v1/groups/startgrp").await.0, 404);

    // Entries a file cannot hold twice.
    for (dup, why) in [
        (
            format!("{base}\n[[api_keys]]\nname = \"ci\"\nkey = \"{new_key}\"\n"),
            "duplicate key name `ci`",
        ),
        (
            format!(
                "{base}\n[[prices]]\nmodel = \"m\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n\
                 [[prices]]\nmodel = \"m\"\ninput_per_mtok = 2.0\noutput_per_mtok = 2.0\n"
            ),
            "duplicate price for model `m`",
        ),
    ] {
        std::fs::write(&path, &dup).unwrap();
        let out = std::process::Command::new(bin())
            .arg("check-config")
            .arg(&path)
            .env("PALISADE_CI_KEY", CI_KEY)
            // The operator's message, never a backtrace, whatever the environment asks for.
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{dup}");
        assert!(err.contains(why), "{err}");
        assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    }
}

#[tokio::test]
async fn small_things_say_what_happened() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();
    // A passed-through answer read to its end is logged complete, not as a disconnect.
    let r = c
        .get(format!("{url}/v1/other/path"))
        .bearer_auth(CI_KEY)
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!r.bytes().await.unwrap().is_empty());
    let rows = gw.wait_requests(&format!("id={rid}"), 1).await;
    assert!(rows[0]["error"].is_null(), "{}", rows[0]);

    // The overhead header of an error answer is the gateway's time, not the upstream wait.
    drop(mock);
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let header: i64 = r.headers()["x-palisade-overhead-us"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let rows = gw.wait_requests(&format!("id={rid}"), 1).await;
    assert_eq!(header, rows[0]["overhead_us"].as_i64().unwrap());

    // A bad query string is an error in the API's JSON shape, like every other.
    let (s, v) = gw.get("/api/v1/requests?limit=abc").await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid query string"),
        "{v}"
    );

    // A group whose keys are all revoked can be deleted; one with a live key cannot.
    let (s, _) = gw.post("/api/v1/groups", json!({"name": "gone"})).await;
    assert_eq!(s, 201);
    let (s, _) = gw
        .post("/api/v1/keys", json!({"name": "gonekey", "group": "gone"}))
        .await;
    assert_eq!(s, 201);
    let (s, v) = gw.api(Method::DELETE, "/api/v1/groups/gone", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("revoke"));
    let (s, _) = gw.api(Method::DELETE, "/api/v1/keys/gonekey", None).await;
    assert!(s < 300);
    let (s, v) = gw.api(Method::DELETE, "/api/v1/groups/gone", None).await;
    assert!(s < 300, "{s} {v}");
    assert_eq!(gw.get("/api/v1/groups/gone").await.0, 404);
}

/// Writes `text` plus a marker group to the gateway's config file and reloads it; with `wait`,
/// returns once the marker shows (reloads are applied in order).
async fn reload_with(gw: &Gateway, text: &str, marker: &str, wait: bool) {
    let path = gw.dir.path().join("palisade.toml");
    std::fs::write(&path, format!("{text}\n[[groups]]\nname = \"{marker}\"\n")).unwrap();
    let hup = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gw.proc.pid().to_string())
        .status()
        .unwrap();
    assert!(hup.success());
    if !wait {
        return;
    }
    for _ in 0..100 {
        if gw.get(&format!("/api/v1/groups/{marker}")).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("marker {marker} never applied");
}

async fn models_status(url: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{url}/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_reload_neither_undoes_a_revocation_nor_takes_over_an_api_key() {
    let mock = Mock::start(&[]);
    let base = config_for(&mock.url);
    let gw = Gateway::start(&base).await;
    let url = gw.proxy_url("oai").await;
    // The file's key, revoked on the gateway, stays revoked when the same file is applied.
    assert_eq!(models_status(&url, CI_KEY).await, 200);
    let (s, _) = gw.api(Method::DELETE, "/api/v1/keys/ci", None).await;
    assert_eq!(s, 200);
    assert_eq!(models_status(&url, CI_KEY).await, 401);
    reload_with(&gw, &base, "m1", true).await;
    assert_eq!(
        models_status(&url, CI_KEY).await,
        401,
        "the revocation holds"
    );
    let (_, keys) = gw.get("/api/v1/keys").await;
    let ci = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci")
        .unwrap()
        .clone();
    assert!(ci["revoked_at"].is_i64(), "{ci}");

    // A file key named like a key issued through the API is refused; the API's key works on.
    let (s, made) = gw
        .post(
            "/api/v1/keys",
            json!({"name": "k2", "group": "engineering"}),
        )
        .await;
    assert_eq!(s, 201, "{made}");
    let api_key = made["key"].as_str().unwrap().to_string();
    let file_key = "pal_config_takeover_key_000000000001";
    let takeover = format!(
        "{base}\n[[api_keys]]\nname = \"k2\"\ngroup = \"engineering\"\nkey = \"{file_key}\"\n"
    );
    reload_with(&gw, &takeover, "m2", false).await;
    // The refused file is not applied, so its marker never shows; a good file after it does
    // (sent once the first signal has surely been taken, so the two are not merged into one).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reload_with(&gw, &base, "m3", true).await;
    assert_eq!(
        gw.get("/api/v1/groups/m2").await.0,
        404,
        "refused as a whole"
    );
    let (_, audit) = gw.get("/api/v1/audit?action=config.reload_refused").await;
    assert!(
        audit.to_string().contains("issued through the API"),
        "a refused reload is audited: {audit}"
    );
    assert_eq!(models_status(&url, &api_key).await, 200);
    assert_eq!(models_status(&url, file_key).await, 401);

    // A file key reusing the revoked key's value under a new name is refused whole too.
    let renamed = base.replacen("name = \"ci\"", "name = \"ci-renamed\"", 1);
    assert_ne!(renamed, base);
    reload_with(&gw, &renamed, "m4", false).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reload_with(&gw, &base, "m5", true).await;
    assert_eq!(
        gw.get("/api/v1/groups/m4").await.0,
        404,
        "refused as a whole"
    );
    assert_eq!(models_status(&url, CI_KEY).await, 401);

    // A file proxy on the port of a running proxy the file does not name is refused before
    // anything is written (it would fail only at bind time, with the file applied in part).
    let (s, v) = gw
        .post(
            "/api/v1/proxies",
            json!({"name": "api-made", "kind": "llm", "listen": "127.0.0.1:0", "upstream": mock.url}),
        )
        .await;
    assert!(s < 300, "{s} {v}");
    let taken = gw.proxy_url("api-made").await;
    let clash = format!(
        "{base}\n[[proxies]]\nname = \"late\"\nkind = \"llm\"\nlisten = \"{}\"\nupstream = \"{}\"\n",
        taken.trim_start_matches("http://"),
        mock.url
    );
    reload_with(&gw, &clash, "m6", false).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reload_with(&gw, &base, "m7", true).await;
    assert_eq!(gw.get("/api/v1/groups/m6").await.0, 404, "refused whole");
    assert_eq!(gw.get("/api/v1/proxies/late").await.0, 404);
    assert_eq!(gw.proxy_url("api-made").await, taken);
}

#[tokio::test]
async fn keys_and_prices_name_only_what_can_exist() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    for (scope, field) in [
        (json!(["nope"]), "allowed_proxies[0]"),
        (json!(["oai", "oai"]), "allowed_proxies[1]"),
    ] {
        let (s, v) = gw
            .post(
                "/api/v1/keys",
                json!({"name": "scoped", "group": "engineering", "allowed_proxies": scope}),
            )
            .await;
        assert_eq!((s, v["error"]["field"].as_str()), (400, Some(field)), "{v}");
    }
    let (s, v) = gw
        .post(
            "/api/v1/keys",
            json!({"name": "scoped", "allowed_models": ["gpt 4\u{0}"]}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("allowed_models"))
    );
    let (_, keys) = gw.get("/api/v1/keys").await;
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k["name"] != "scoped"),
        "nothing was issued: {keys}"
    );
    let (s, v) = gw
        .post(
            "/api/v1/keys",
            json!({"name": "scoped", "group": "engineering", "allowed_proxies": ["oai"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    for bad in [
        "x%00y",
        "two%20words",
        "gpt%E2%80%8B4o",
        "gpt-4o%F3%A0%81%81x",
        "gpt%E3%85%A44o",
    ] {
        let (s, v) = gw
            .api(
                Method::PUT,
                &format!("/api/v1/prices/{bad}"),
                Some(json!({"input_per_mtok": 1.0, "output_per_mtok": 2.0})),
            )
            .await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (400, Some("model")),
            "{bad}: {v}"
        );
    }
}

#[tokio::test]
async fn prometheus_metrics_count_requests_for_a_scrape_token_or_a_user() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();
    for _ in 0..2 {
        let r = c
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CI_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("pal_wrong_key_000000000000000000")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    gw.wait_requests("proxy=oai", 3).await;
    let scrape = |token: Option<&'static str>| {
        let mut rb = c.get(format!("{}/metrics", gw.admin));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    assert_eq!(scrape(None).await.unwrap().status(), 401);
    assert_eq!(
        scrape(Some("metrics-scrape-token-for-tests-0002"))
            .await
            .unwrap()
            .status(),
        401
    );
    let r = scrape(Some(METRICS_TOKEN)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    for line in [
        r#"palisade_requests_total{proxy="oai",status="200",decision="none"} 2"#,
        r#"palisade_requests_total{proxy="oai",status="401",decision="none"} 1"#,
        r#"palisade_request_duration_seconds_count{proxy="oai"} 3"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    assert!(text.contains(r#"palisade_tokens_total{proxy="oai",kind="completion"}"#));
    // The request log finds the rows behind `decision="none"`; a decision or alert kind no row
    // can have is refused, not answered with an empty page.
    let (s, v) = gw.get("/api/v1/requests?proxy=oai&decision=none").await;
    assert_eq!((s, v["total"].as_i64()), (200, Some(3)), "{v}");
    for q in ["requests?decision=blocked", "alerts?kind=mcp-tool"] {
        let (s, v) = gw.get(&format!("/api/v1/{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("must be one of"),
            "{v}"
        );
    }
    // The request log's own health: nothing dropped or lost.
    for line in [
        "palisade_log_records_dropped_total 0",
        "palisade_log_records_lost_total 0",
        "palisade_alerts_lost_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    assert!(text.contains("palisade_log_records_written_total "));
    // A signed-in user may read them too.
    let r = c
        .get(format!("{}/metrics", gw.admin))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn one_gateway_per_data_directory_and_its_key_is_never_replaced() {
    let mock = Mock::start(&[]);
    let mut gw = Gateway::start(&config_for(&mock.url)).await;
    let data = gw.dir.path().join("data");
    // A second `palisade serve` on the directory; `key`: its PALISADE_MASTER_KEY.
    let serve_with = |data: &std::path::Path, key: Option<String>| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--admin-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("PALISADE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0");
        if let Some(key) = key {
            cmd.env("PALISADE_MASTER_KEY", key);
        }
        cmd.output().unwrap()
    };
    let serve = |data: &std::path::Path| serve_with(data, None);
    // A second gateway on the same directory is refused, and changes nothing.
    let out = serve(&data);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another palisade is running"), "{err}");
    let r = reqwest::Client::new()
        .get(format!("{}/v1/models", gw.proxy_url("oai").await))
        .bearer_auth(CI_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the first one's key still works");
    // A console's live event stream does not hold the shutdown (the admin API's connections
    // get a few seconds).
    let events = reqwest::Client::new()
        .get(format!("{}/api/v1/events", gw.admin))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let t0 = std::time::Instant::now();
    let status = gw.proc.terminate();
    assert!(status.success(), "{status}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(20));
    drop(events);
    // A database whose master key is missing is not given a new one.
    let key = std::fs::read(data.join("master.key")).unwrap();
    std::fs::remove_file(data.join("master.key")).unwrap();
    let out = serve(&data);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master.key is missing"), "{err}");
    assert!(!data.join("master.key").exists());
    std::fs::write(data.join("master.key"), key).unwrap();
    // Nor is another key accepted for it.
    let out = serve_with(&data, Some("ab".repeat(32)));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not the one"), "{err}");
}

#[tokio::test]
async fn an_upstream_error_page_comes_back_in_the_apis_error_shape() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let c = reqwest::Client::new();
    for (proxy, path, auth) in [
        ("oai", "/v1/chat/completions", "authorization"),
        ("ant", "/v1/messages", "x-api-key"),
    ] {
        let url = gw.proxy_url(proxy).await;
        let value = if auth == "authorization" {
            format!("Bearer {CI_KEY}")
        } else {
            CI_KEY.to_string()
        };
        let r = c
            .post(format!("{url}{path}"))
            .header(auth, value)
            .json(&json!({"model": "mock-html-error", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "the upstream's status stays");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let v: Value = r.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("upstream answered 503") && message.contains("Service Temporarily"),
            "{v}"
        );
        if proxy == "ant" {
            assert_eq!(v["type"], "error", "{v}");
        } else {
            assert!(v["error"]["request_id"].is_string(), "{v}");
        }
    }
}

#[tokio::test]
async fn a_reload_keeps_a_proxy_an_administrator_stopped_unless_the_file_says_otherwise() {
    let mock = Mock::start(&[]);
    let base = config_for(&mock.url);
    let gw = Gateway::start(&base).await;
    let (s, _) = gw.post("/api/v1/proxies/oai/stop", json!({})).await;
    assert_eq!(s, 200);
    // The file does not say `enabled`: the run state stays the administrator's. (A reload's
    // marker group is applied before its proxies; reloads are applied in order, so the marker
    // of a second reload shows once the first is done.)
    reload_with(&gw, &base, "r1", true).await;
    reload_with(&gw, &base, "r1b", true).await;
    let (_, p) = gw.get("/api/v1/proxies/oai").await;
    assert_eq!(p["enabled"], false, "{p}");
    // A file that says so starts it.
    let enabled = base.replacen("name = \"oai\"", "name = \"oai\"\nenabled = true", 1);
    reload_with(&gw, &enabled, "r2", true).await;
    reload_with(&gw, &enabled, "r2b", true).await;
    let (_, p) = gw.get("/api/v1/proxies/oai").await;
    assert_eq!(p["enabled"], true, "{p}");
}

/// A proxy stopped while a request waits for a slow upstream drains for the drain time, then
/// answers the request 503 in the API's shape (not a connection closed under the client) and
/// logs it.
#[tokio::test]
async fn requests_outlasting_the_drain_time_get_a_503() {
    let mock = Mock::start(&["--latency-ms", "20000"]);
    let dir = tempfile::tempdir().unwrap();
    let gw =
        Gateway::start_with(dir, &config_for(&mock.url), &[("PALISADE_DRAIN_SECS", "1")]).await;
    let url = gw.proxy_url("oai").await;
    let waiting = slow_request(url).await;
    let t = std::time::Instant::now();
    let (s, v) = gw.api(Method::POST, "/api/v1/proxies/oai/stop", None).await;
    assert!(s < 300, "{s} {v}");
    let r = waiting
        .await
        .unwrap()
        .expect("an HTTP answer, not a closed connection");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(r.status(), 503);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "proxy_stopped", "{body}");
    assert_eq!(body["error"]["request_id"], id.as_str(), "{body}");
    let rows = gw.wait_requests(&format!("id={id}"), 1).await;
    assert_eq!(rows[0]["status"], 503, "{}", rows[0]);
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("drain time over"),
        "{}",
        rows[0]
    );
}

/// Two free loopback ports (bound and released; the kernel does not hand them out again at once).
/// Two distinct unused ports (see `unused_port`: a gateway's own `:0` listeners cannot take them).
fn free_ports() -> (u16, u16) {
    let a = unused_port();
    loop {
        let b = unused_port();
        if b != a {
            return (a, b);
        }
    }
}

fn two_proxies(upstream: &str, a: u16, b: u16) -> String {
    format!(
        "{}\n[[proxies]]\nname = \"p1\"\nkind = \"llm\"\nlisten = \"127.0.0.1:{a}\"\nupstream = \"{upstream}\"\n\
         [[proxies]]\nname = \"p2\"\nkind = \"llm\"\nlisten = \"127.0.0.1:{b}\"\nupstream = \"{upstream}\"\n",
        config_for(upstream)
    )
}

/// Proxies of a file trade addresses on a reload (one at a time, the first could never bind);
/// no proxy may take the admin API's address.
#[tokio::test]
async fn proxies_trade_addresses_and_keep_off_the_admin_address() {
    let mock = Mock::start(&[]);
    let (a, b) = free_ports();
    let gw = Gateway::start(&two_proxies(&mock.url, a, b)).await;
    assert_eq!(gw.proxy_url("p1").await, format!("http://127.0.0.1:{a}"));
    reload_with(&gw, &two_proxies(&mock.url, b, a), "swapped", true).await;
    for _ in 0..100 {
        let (_, p2) = gw.get("/api/v1/proxies/p2").await;
        if p2["bound_addr"] == format!("127.0.0.1:{a}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.proxy_url("p1").await, format!("http://127.0.0.1:{b}"));
    assert_eq!(gw.proxy_url("p2").await, format!("http://127.0.0.1:{a}"));
    assert_eq!(models_status(&gw.proxy_url("p1").await, CI_KEY).await, 200);

    let admin = gw.admin.trim_start_matches("http://").to_string();
    let (s, v) = gw
        .post(
            "/api/v1/proxies",
            json!({"name": "on-admin", "kind": "llm", "listen": admin, "upstream": mock.url}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "listen", "{v}");
}

/// A start-up file whose proxy cannot bind leaves the gateway serving the rest.
#[tokio::test]
async fn a_proxy_that_cannot_bind_at_start_leaves_the_rest_serving() {
    let mock = Mock::start(&[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (free, _) = free_ports();
    let gw = Gateway::start(&two_proxies(&mock.url, port, free)).await;
    assert_eq!(models_status(&gw.proxy_url("p2").await, CI_KEY).await, 200);
    assert_eq!(models_status(&gw.proxy_url("oai").await, CI_KEY).await, 200);
    let (s, _) = gw.get("/api/v1/proxies/p1").await;
    assert_eq!(s, 404, "the proxy that could not bind was not created");
    drop(taken);
}

/// A compressed body the gateway must read is refused (415), never passed on unread: on a
/// pass-through path of a proxy with policies it would skip them.
#[tokio::test]
async fn compressed_bodies_the_gateway_must_read_are_refused() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let url = gw.proxy_url("oai").await;
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/proxies/oai",
            Some(json!({"policies": ["llm-standard-security"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for (path, codings) in [
        ("/v1/chat/completions", &["gzip"][..]),
        ("/v1/completions", &["gzip"]),
        ("/v1/completions", &["identity", "gzip"]),
        ("/v1/completions", &["", "gzip"]),
        ("/v1/completions", &["identity, br"]),
    ] {
        let mut req = reqwest::Client::new()
            .post(format!("{url}{path}"))
            .bearer_auth(CI_KEY)
            .header("content-type", "application/json");
        for c in codings {
            req = req.header("content-encoding", *c);
        }
        let r = req
            .body(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{path} {codings:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "unsupported_content_encoding",
            "{body}"
        );
    }
}

/// A path in another spelling of a modelled one (`%63` for `c`, `//`, `..`) is refused: the
/// upstream may serve it as chat completions, which the gateway would not have recognised.
#[tokio::test]
async fn paths_in_another_spelling_are_refused() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config_for(&mock.url)).await;
    let url = gw.proxy_url("oai").await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    for path in [
        "/v1/chat/%63ompletions",
        "//v1/chat/completions",
        "/v1/chat%2Fcompletions",
        "/V1/Chat/Completions",
        "/v1/chat/completions;x=1",
    ] {
        let r = reqwest::Client::new()
            .post(format!("{url}{path}"))
            .bearer_auth(CI_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("plain form"), "{path}: {v}");
    }
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A second shutdown signal during the drain answers the requests still waiting (503) at once
/// instead of after the drain time.
#[tokio::test]
async fn a_second_signal_cuts_the_drain_short() {
    let mock = Mock::start(&["--latency-ms", "20000"]);
    let mut gw = Gateway::start(&config_for(&mock.url)).await;
    let url = gw.proxy_url("oai").await;
    let waiting = slow_request(url).await;
    let t = std::time::Instant::now();
    let term = |pid: u32| {
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap()
    };
    assert!(term(gw.proc.pid()).success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(term(gw.proc.pid()).success());
    let r = waiting.await.unwrap().expect("an HTTP answer");
    assert_eq!(r.status(), 503);
    let status = gw.proc.terminate();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Sends a chat request that waits on a slow upstream; returns once it is in flight.
async fn slow_request(url: String) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CI_KEY)
            .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "slow"}]}))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting
}

/// An upstream that answers a stream with a body ended by closing the connection, after
/// `events` (raw SSE text); it reads one request first.
async fn close_delimited_upstream(events: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as many body bytes as they announce.
                loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(events.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    url
}

/// A stream whose body ends with the connection is finished only by its last event: one the
/// upstream closes before it is broken (an error event for the client, 502 in the log).
#[tokio::test]
async fn a_close_delimited_stream_cut_before_its_last_event_is_an_error() {
    const CUT: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";
    const WHOLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    for (events, broken) in [(CUT, true), (WHOLE, false)] {
        let upstream = close_delimited_upstream(events).await;
        let gw = Gateway::start(&config_for(&upstream)).await;
        let url = gw.proxy_url("oai").await;
        let text = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CI_KEY)
            .json(&chat_body(true))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(text.contains("upstream_stream_error"), broken, "{text}");
        let rows = gw.wait_requests("proxy=oai", 1).await;
        assert_eq!(
            rows[0]["status"],
            if broken { 502 } else { 200 },
            "{}",
            rows[0]
        );
    }
}

/// Two proxies that are each other's upstream (with a gateway key as the upstream key) make a
/// loop: the request that comes back is refused (508) instead of going round until a limit.
#[tokio::test]
async fn a_proxy_loop_is_refused() {
    let (a, b) = free_ports();
    let proxy = |name: &str, listen: u16, to: u16| {
        format!(
            "[[proxies]]\nname = \"{name}\"\nkind = \"llm\"\nlisten = \"127.0.0.1:{listen}\"\n\
             upstream = \"http://127.0.0.1:{to}\"\nupstream_key = \"env:PALISADE_CI_KEY\"\n"
        )
    };
    let config = format!(
        "[[groups]]\nname = \"engineering\"\n[[api_keys]]\nname = \"ci\"\ngroup = \"engineering\"\n\
         key = \"env:PALISADE_CI_KEY\"\n{}{}",
        proxy("ping", a, b),
        proxy("pong", b, a)
    );
    let gw = Gateway::start(&config).await;
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{a}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 508);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "proxy_loop", "{body}");
    let rows = gw.wait_requests("status=508", 1).await;
    assert!(rows.len() <= 3, "went round once: {rows:?}");
}

#[tokio::test]
async fn a_first_run_password_too_short_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(bin())
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("PALISADE_ADMIN_PASSWORD", "short")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PALISADE_ADMIN_PASSWORD must be at least 12 characters"),
        "{err}"
    );
    assert!(
        !err.contains("cannot read"),
        "the database is not blamed: {err}"
    );
    assert!(!data.exists(), "nothing is created for a refused start");
}

#[test]
fn check_config_refuses_a_proxy_on_the_admin_address_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[[proxies]]\nname = \"oai\"\nkind = \"llm\"\nlisten = \"127.0.0.1:18080\"\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let check = |admin: Option<&str>, env: Option<&str>| {
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("check-config")
            .arg(&path)
            .env_remove("PALISADE_ADMIN_ADDR");
        if let Some(a) = admin {
            cmd.args(["--admin-addr", a]);
        }
        if let Some(a) = env {
            cmd.env("PALISADE_ADMIN_ADDR", a);
        }
        cmd.output().unwrap()
    };
    for out in [
        check(Some("127.0.0.1:18080"), None),
        check(None, Some("0.0.0.0:18080")),
    ] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("proxy `oai` listens on `127.0.0.1:18080`, the admin API's address"),
            "{err}"
        );
    }
    let out = check(None, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
