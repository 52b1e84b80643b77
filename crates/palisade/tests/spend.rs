//! Usage, cost, budgets and rate limits, end to end with the mock model's known token counts.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const PRICE_IN: f64 = 1000.0; // USD per million tokens: large, so costs are cents per request
const PRICE_OUT: f64 = 2000.0;

fn config(upstream: &str, budget: f64, action: &str) -> String {
    format!(
        r#"
[[groups]]
name = "engineering"
monthly_budget_usd = {budget}
budget_warn_percent = 50
budget_action = "{action}"

[[prices]]
model = "mock-gpt"
input_per_mtok = {PRICE_IN}
output_per_mtok = {PRICE_OUT}

[[api_keys]]
name = "ci"
group = "engineering"
key = "env:PALISADE_CI_KEY"

[[proxies]]
name = "oai"
kind = "llm"
listen = "127.0.0.1:0"
upstream = "{upstream}"
"#
    )
}

async fn chat(c: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    c.post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "price this request"}]}))
        .send()
        .await
        .unwrap()
}

fn cost_of(body: &Value) -> f64 {
    let u = &body["usage"];
    (u["prompt_tokens"].as_f64().unwrap() * PRICE_IN
        + u["completion_tokens"].as_f64().unwrap() * PRICE_OUT)
        / 1e6
}

#[tokio::test]
async fn spend_accumulates_alerts_once_blocks_and_resets() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.url, 0.5, "block")).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();

    let mut expected = 0.0;
    let mut served = 0;
    let mut refused = None;
    for _ in 0..30 {
        let r = chat(&c, &url, CI_KEY).await;
        if r.status() == 402 {
            refused = Some(r.json::<Value>().await.unwrap());
            break;
        }
        assert_eq!(r.status(), 200);
        expected += cost_of(&r.json().await.unwrap());
        served += 1;
    }
    let refused = refused.expect("the budget must run out");
    assert_eq!(refused["error"]["code"], "budget_exceeded");
    assert!(
        (0.5..0.6).contains(&expected),
        "overspend bounded by one request: {expected}"
    );

    let (_, b) = gw.get("/api/v1/groups/engineering/budget").await;
    assert!(
        (b["spent_usd"].as_f64().unwrap() - expected).abs() < 1e-6,
        "{b} vs {expected}"
    );
    assert_eq!(b["limit_usd"], 0.5);
    assert_eq!(b["remaining_usd"], 0.0);

    // The request log carries the same costs, to the cent and below.
    let rows = gw.wait_requests("proxy=oai&limit=500", served + 1).await;
    let logged: f64 = rows.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    assert!((logged - expected).abs() < 1e-6, "{logged} vs {expected}");
    let (_, usage) = gw.get("/api/v1/usage?group_by=key").await;
    assert_eq!(usage[0]["key"], "ci");
    assert_eq!(usage[0]["requests"].as_i64().unwrap(), served as i64 + 1);
    assert!((usage[0]["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-6);

    // One warning alert (50 %) and one exhaustion alert for the month, however many requests.
    for _ in 0..3 {
        assert_eq!(chat(&c, &url, CI_KEY).await.status(), 402);
    }
    let mut alerts = Value::Null;
    for _ in 0..50 {
        alerts = gw.get("/api/v1/alerts?kind=budget").await.1;
        if alerts["total"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(alerts["total"], 2, "{alerts}");

    // A manual reset re-opens the group (and is audited).
    let (s, b) = gw
        .post("/api/v1/groups/engineering/budget/reset", json!({}))
        .await;
    assert_eq!((s, b["spent_usd"].as_f64()), (200, Some(0.0)));
    assert_eq!(chat(&c, &url, CI_KEY).await.status(), 200);
    let (_, audit) = gw.get("/api/v1/audit?action=group.budget_reset").await;
    assert_eq!(audit.as_array().unwrap().len(), 1);
    // The new period crosses its thresholds again: alerted again, once each.
    let mut blocked = false;
    for _ in 0..30 {
        if chat(&c, &url, CI_KEY).await.status() == 402 {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the budget runs out again after the reset");
    assert_eq!(chat(&c, &url, CI_KEY).await.status(), 402);
    for _ in 0..50 {
        alerts = gw.get("/api/v1/alerts?kind=budget").await.1;
        if alerts["total"] == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(alerts["total"], 4, "{alerts}");
}

#[tokio::test]
async fn warn_budgets_serve_with_a_warning() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.url, 0.0001, "warn")).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();
    assert_eq!(chat(&c, &url, CI_KEY).await.status(), 200);
    let r = chat(&c, &url, CI_KEY).await;
    assert_eq!(r.status(), 200);
    let w = r
        .headers()
        .get("x-palisade-budget-warning")
        .expect("warning header")
        .to_str()
        .unwrap()
        .to_string();
    assert!(w.contains("engineering"), "{w}");
}

#[tokio::test]
async fn concurrent_requests_never_lose_usage_rows() {
    let mock = Mock::start(&["--latency-ms", "20"]);
    let gw = Gateway::start(&config(&mock.url, 1.0, "block")).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();
    let one = cost_of(&chat(&c, &url, CI_KEY).await.json().await.unwrap());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            chat(&c, &url, CI_KEY).await.status().as_u16()
        }));
    }
    let mut ok = 1;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            402 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    let (_, b) = gw.get("/api/v1/groups/engineering/budget").await;
    let spent = b["spent_usd"].as_f64().unwrap();
    assert!(
        (spent - ok as f64 * one).abs() < 1e-6,
        "spend {spent} must equal {ok} served requests"
    );
    // Overspend is bounded by the requests already in flight when the limit was reached.
    assert!(spent < 1.0 + 200.0 * one);
    let rows = gw.wait_requests("proxy=oai&status=200&limit=500", ok).await;
    assert_eq!(rows.len(), ok, "every served request has its usage row");
    let logged: f64 = rows.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    assert!((logged - spent).abs() < 1e-6);
}

#[tokio::test]
async fn rate_limited_key_gets_429_and_others_are_unaffected() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.url, 1000.0, "block")).await;
    let url = gw.proxy_url("oai").await;
    let (s, limited) = gw
        .post(
            "/api/v1/keys",
            json!({"name": "slow", "group": "engineering", "rpm": 2}),
        )
        .await;
    assert_eq!(s, 201, "{limited}");
    let limited = limited["key"].as_str().unwrap().to_string();
    let c = reqwest::Client::new();
    assert_eq!(chat(&c, &url, &limited).await.status(), 200);
    assert_eq!(chat(&c, &url, &limited).await.status(), 200);
    let r = chat(&c, &url, &limited).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    for _ in 0..5 {
        assert_eq!(
            chat(&c, &url, CI_KEY).await.status(),
            200,
            "another key is unaffected"
        );
    }
    // Keys limited to some proxies or models are refused elsewhere.
    let (_, scoped) = gw
        .post(
            "/api/v1/keys",
            json!({"name": "scoped", "group": "engineering", "allowed_models": ["other-model"]}),
        )
        .await;
    let scoped_key = scoped["key"].as_str().unwrap();
    let r = chat(&c, &url, scoped_key).await;
    assert_eq!(r.status(), 403);
    // Paths the gateway passes through meet the same scope: a JSON body's model is checked,
    // and a body whose model cannot be read is refused for a scoped key.
    let post = |path: &str, body: reqwest::Body, ct: &str| {
        c.post(format!("{url}{path}"))
            .bearer_auth(scoped_key)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let legacy = json!({"model": "mock-gpt", "prompt": "hi"}).to_string();
    let r = post("/v1/completions", legacy.into(), "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(
        "/v1/audio/transcriptions",
        "--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n"
            .into(),
        "multipart/form-data; boundary=b",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let allowed = json!({"model": "other-model", "prompt": "hi"}).to_string();
    let r = post("/v1/completions", allowed.into(), "application/json")
        .await
        .unwrap();
    assert_ne!(r.status(), 403, "its own model passes the scope");
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/groups/engineering",
            Some(json!({"rpm": 0})),
        )
        .await;
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("rpm")));
}

#[tokio::test]
async fn streams_are_accounted_without_showing_the_usage_chunk() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.url, 1000.0, "block")).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();
    let text = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&json!({"model": "mock-gpt", "stream": true, "messages": [{"role": "user", "content": "stream me"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("\"usage\""),
        "the client did not ask for usage: {text}"
    );
    assert!(text.contains("[DONE]"));
    let rows = gw.wait_requests("proxy=oai", 1).await;
    assert!(
        rows[0]["completion_tokens"].as_i64().unwrap() > 0,
        "{}",
        rows[0]
    );
    assert!(rows[0]["cost_usd"].as_f64().unwrap() > 0.0);
    // Unknown models cost 0 and are flagged.
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&json!({"model": "unpriced-model", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows = gw.wait_requests("proxy=oai&model=unpriced-model", 1).await;
    assert_eq!(rows[0]["cost_unknown"], true);
    assert_eq!(rows[0]["cost_usd"], 0.0);
    // A JSON answer on a path the gateway does not model is charged by its own count.
    let r = c
        .post(format!("{url}/v1/completions"))
        .bearer_auth(CI_KEY)
        .json(&json!({"model": "mock-gpt", "prompt": "complete this legacy prompt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let rows = gw.wait_requests("proxy=oai&endpoint=other", 1).await;
    assert_eq!(
        rows[0]["prompt_tokens"], answer["usage"]["prompt_tokens"],
        "{}",
        rows[0]
    );
    assert_eq!(
        rows[0]["completion_tokens"],
        answer["usage"]["completion_tokens"]
    );
    assert!(rows[0]["cost_usd"].as_f64().unwrap() > 0.0, "{}", rows[0]);
    // Streamed, and longer than the part of an answer kept whole: priced all the same.
    for body in [
        json!({"model": "mock-gpt", "prompt": "stream it", "stream": true}),
        json!({"model": "mock-gpt", "prompt": "a long one", "mock_pad_bytes": 1_500_000}),
    ] {
        let r = c
            .post(format!("{url}/v1/completions"))
            .bearer_auth(CI_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let rows = gw.wait_requests("proxy=oai&endpoint=other", 3).await;
    for row in &rows[..2] {
        assert_eq!(row["model"], "mock-gpt", "{row}");
        assert!(row["completion_tokens"].as_i64().unwrap() > 0, "{row}");
        assert!(row["cost_usd"].as_f64().unwrap() > 0.0, "{row}");
    }
}

#[tokio::test]
async fn prices_are_editable_through_the_api_and_audited() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.url, 1000.0, "block")).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::new();
    let (s, v) = gw
        .api(
            Method::PUT,
            "/api/v1/prices/mock-gpt",
            Some(json!({"input_per_mtok": 0.0, "output_per_mtok": 0.0})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(chat(&c, &url, CI_KEY).await.status(), 200);
    let rows = gw.wait_requests("proxy=oai", 1).await;
    assert_eq!(
        rows[0]["cost_usd"], 0.0,
        "the new price applies to the next request"
    );
    assert_eq!(rows[0]["cost_unknown"], false);
    let (s, v) = gw
        .api(
            Method::PUT,
            "/api/v1/prices/mock-gpt",
            Some(json!({"input_per_mtok": -1.0, "output_per_mtok": 0.0})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("input_per_mtok"))
    );
    let (_, prices) = gw.get("/api/v1/prices").await;
    assert!(
        prices
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["model"] == "gpt-4o-mini"),
        "shipped prices are listed"
    );
    let (_, audit) = gw
        .get("/api/v1/audit?action=price.put&target=mock-gpt")
        .await;
    assert!(!audit.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn answers_cut_short_or_blocked_are_still_charged() {
    let mock = Mock::start(&["--chunks", "20", "--chunk-delay-ms", "100"]);
    let gw = Gateway::start(&config(&mock.url, 1000.0, "block")).await;
    let c = reqwest::Client::new();
    let (s, v) = gw
        .post(
            "/api/v1/policies",
            json!({"id": "answer-words", "name": "Answer words", "description": "test",
                "version": "1.0.0", "rules": [{"id": "AW", "name": "Leak word", "category": "custom",
                "severity": "high", "targets": ["llm_response"], "patterns": {"keywords": ["leakword"]},
                "action": "block"}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = gw
        .api(
            Method::PATCH,
            "/api/v1/proxies/oai",
            Some(json!({"policies": ["answer-words"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let url = gw.proxy_url("oai").await;
    // A client that hangs up mid-stream: the upstream generated (and bills) what was relayed,
    // and its token count never comes.
    let mut r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&json!({"model": "mock-gpt", "stream": true, "messages": [{"role": "user", "content": "a long answer please"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = 0;
    while seen < 3 {
        let chunk = r.chunk().await.unwrap().expect("the stream goes on");
        seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    drop(r);
    let rows = gw.wait_requests("proxy=oai", 1).await;
    let row = &rows[0];
    assert!(
        row["error"].as_str().unwrap().contains("estimated"),
        "{row}"
    );
    assert!(row["completion_tokens"].as_i64().unwrap() >= 3, "{row}");
    assert!(row["prompt_tokens"].as_i64().unwrap() > 0, "{row}");
    assert!(row["cost_usd"].as_f64().unwrap() > 0.0, "{row}");
    // An answer a policy refuses was generated all the same.
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "tell leakword"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let rows = gw.wait_requests("proxy=oai&decision=block", 1).await;
    assert!(rows[0]["cost_usd"].as_f64().unwrap() > 0.0, "{}", rows[0]);
    let (_, b) = gw.get("/api/v1/groups/engineering/budget").await;
    let charged = rows[0]["cost_usd"].as_f64().unwrap() + row["cost_usd"].as_f64().unwrap();
    assert!(
        (b["spent_usd"].as_f64().unwrap() - charged).abs() < 1e-9,
        "{b}"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_before_the_answer_is_still_logged() {
    let mock = Mock::start(&["--latency-ms", "1500"]);
    let gw = Gateway::start(&config(&mock.url, 1000.0, "block")).await;
    let url = gw.proxy_url("oai").await;
    let c = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CI_KEY)
        .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "slow one"}]}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up first");
    let rows = gw.wait_requests("proxy=oai", 1).await;
    assert_eq!(rows[0]["status"], 499, "{}", rows[0]);
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("before the answer began"),
        "{}",
        rows[0]
    );
    assert_eq!(rows[0]["key_name"], "ci", "{}", rows[0]);
}

/// A background response fetched by id (`GET /v1/responses/{id}`) names no model in its request:
/// the answer's model prices it, also when the proxy's policies read the answer.
#[tokio::test]
async fn a_response_fetched_by_id_is_priced_by_the_model_that_answered() {
    let mock = Mock::start(&[]);
    let cfg = format!(
        "{}\n[[proxies]]\nname = \"guarded\"\nkind = \"llm\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n\
         policies = [\"secrets-detection\"]\n",
        config(&mock.url, 100.0, "block"),
        mock.url
    );
    let gw = Gateway::start(&cfg).await;
    let c = reqwest::Client::new();
    for proxy in ["oai", "guarded"] {
        let url = gw.proxy_url(proxy).await;
        let r = c
            .get(format!("{url}/v1/responses/resp_bg1"))
            .bearer_auth(CI_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        let rows = gw
            .wait_requests(&format!("proxy={proxy}&endpoint=other"), 1)
            .await;
        let row = &rows[0];
        assert_eq!(row["model"], "mock-gpt", "{proxy}: {row}");
        assert_eq!(
            row["prompt_tokens"], answer["usage"]["input_tokens"],
            "{row}"
        );
        assert_eq!(row["cost_unknown"], false, "{proxy}: {row}");
        assert!(row["cost_usd"].as_f64().unwrap() > 0.0, "{proxy}: {row}");
    }
}
