//! Two gateway nodes sharing rate limits and group spend through a real Redis server
//! (`redis-server`, installed by `scripts/setup-test-deps`), each node with its own database.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const REDIS_PASSWORD: &str = "redis-test-password";
const SPENDER_KEY: &str = "pal_test_spender_key_00000000001";

/// A `redis-server` on a free loopback port, without persistence, behind a password.
struct Redis {
    /// Stopped when dropped.
    _proc: Proc,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        Self::start_with(&["--port", &port.to_string()], port)
    }

    /// A Redis that speaks TLS only, and takes only clients that show a certificate the
    /// client fixture CA signed.
    fn start_tls() -> Redis {
        let port = unused_port();
        let path = |n: &str| fixture(&format!("redis-tls/{n}")).display().to_string();
        let client_ca = fixture("client-tls/ca.pem").display().to_string();
        Self::start_with(
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &path("server.pem"),
                "--tls-key-file",
                &path("server.key"),
                "--tls-ca-cert-file",
                &client_ca,
                "--tls-auth-clients",
                "yes",
            ],
            port,
        )
    }

    fn start_with(listen: &[&str], port: u16) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1"])
            .args(listen)
            .args(["--save", "", "--appendonly", "no", "--loglevel", "notice"])
            .args(["--requirepass", REDIS_PASSWORD]);
        if which("redis-server").is_none() {
            panic!(
                "redis-server is not installed: run scripts/setup-test-deps (apt-get install redis-server)"
            );
        }
        let proc = Proc::spawn_cmd(cmd);
        proc.wait_for("Ready to accept connections");
        Redis { _proc: proc, port }
    }

    fn start() -> Redis {
        Self::start_on(unused_port())
    }

    fn url(&self) -> String {
        url_of(self.port)
    }
}

fn url_of(port: u16) -> String {
    format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/3")
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn config(upstream: &str) -> String {
    format!(
        r#"
[[groups]]
name = "engineering"
monthly_budget_usd = 0.5
budget_warn_percent = 90
budget_action = "block"

[[prices]]
model = "mock-gpt"
input_per_mtok = 1000.0
output_per_mtok = 2000.0

[[api_keys]]
name = "ci"
key = "env:PALISADE_CI_KEY"
rpm = 6

[[api_keys]]
name = "spender"
group = "engineering"
key = "{SPENDER_KEY}"

[[proxies]]
name = "oai"
kind = "llm"
listen = "127.0.0.1:0"
upstream = "{upstream}"
"#
    )
}

async fn node(cfg: &str, redis_url: &str) -> Gateway {
    node_syncing(cfg, redis_url, "50").await
}

async fn node_syncing(cfg: &str, redis_url: &str, sync_ms: &str) -> Gateway {
    Gateway::start_with(
        tempfile::tempdir().unwrap(),
        cfg,
        &[
            ("PALISADE_REDIS_URL", redis_url),
            ("PALISADE_REDIS_SYNC_MS", sync_ms),
        ],
    )
    .await
}

async fn chat(c: &reqwest::Client, url: &str, key: &str) -> (u16, Value) {
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "price this request"}]}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn cost_of(body: &Value) -> f64 {
    let u = &body["usage"];
    (u["prompt_tokens"].as_f64().unwrap() * 1000.0
        + u["completion_tokens"].as_f64().unwrap() * 2000.0)
        / 1e6
}

/// Time for every node to exchange with Redis at least twice.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    gw.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

/// Whether the node's exchanges with Redis succeed within 8 s (its back-off is at most 5 s).
async fn up(gw: &Gateway) -> bool {
    for _ in 0..80 {
        if metric(gw, "palisade_redis_up").await == Some(1.0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn spent(gw: &Gateway) -> f64 {
    gw.get("/api/v1/groups/engineering/budget").await.1["spent_usd"]
        .as_f64()
        .unwrap()
}

#[tokio::test]
async fn two_nodes_share_a_key_rate_limit_and_a_group_budget() {
    let redis = Redis::start();
    let mock = Mock::start(&[]);
    let cfg = config(&mock.url);
    let (a, b) = (
        node(&cfg, &redis.url()).await,
        node(&cfg, &redis.url()).await,
    );
    let urls = [a.proxy_url("oai").await, b.proxy_url("oai").await];
    let c = reqwest::Client::new();

    // 6 requests a minute for key `ci` across both nodes (alone, each would admit 6).
    let mut served = [0, 0];
    for i in 0..12 {
        let (status, body) = chat(&c, &urls[i % 2], CI_KEY).await;
        match status {
            200 => served[i % 2] += 1,
            429 => assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}"),
            s => panic!("unexpected {s}: {body}"),
        }
        settle().await;
    }
    assert_eq!(served[0] + served[1], 6, "{served:?}");
    assert!(served[0] > 0 && served[1] > 0, "{served:?}");
    for url in &urls {
        assert_eq!(chat(&c, url, CI_KEY).await.0, 429);
    }

    // The group's $0.50 a month, spent on both nodes: once it is gone, both refuse.
    let mut spent_here = 0.0;
    let mut refused_on = None;
    for i in 0..60 {
        let (status, body) = chat(&c, &urls[i % 2], SPENDER_KEY).await;
        if status == 402 {
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
            refused_on = Some(i % 2);
            break;
        }
        assert_eq!(status, 200, "{body}");
        spent_here += cost_of(&body);
        settle().await;
    }
    let refused_on = refused_on.expect("the shared budget runs out");
    assert!(
        (0.5..0.5 + 0.1).contains(&spent_here),
        "overspend bounded by a request or two: {spent_here}"
    );
    settle().await;
    let other = &urls[1 - refused_on];
    assert_eq!(chat(&c, other, SPENDER_KEY).await.0, 402);
    // Both nodes report the same month's spend: all of it, not their own part.
    for gw in [&a, &b] {
        let s = spent(gw).await;
        assert!((s - spent_here).abs() < 1e-6, "{s} vs {spent_here}");
    }
    assert_eq!(metric(&a, "palisade_redis_up").await, Some(1.0));
    assert!(metric(&b, "palisade_redis_exchanges_total").await.unwrap() > 0.0);

    // A reset by hand on one node re-opens the group on the other too.
    let (s, _) = a
        .post("/api/v1/groups/engineering/budget/reset", json!({}))
        .await;
    assert_eq!(s, 200);
    settle().await;
    assert!(spent(&b).await < 1e-9);
    let (status, body) = chat(&c, &urls[1], SPENDER_KEY).await;
    assert_eq!(status, 200, "{body}");
    settle().await;
    let s = spent(&a).await;
    assert!((s - cost_of(&body)).abs() < 1e-6, "{s}");
    drop(redis);
}

#[tokio::test]
async fn a_node_serves_while_redis_is_down_and_its_spend_reaches_redis_later() {
    let redis = Redis::start();
    let port = redis.port;
    let url = redis.url();
    let mock = Mock::start(&[]);
    let cfg = config(&mock.url);
    let a = node(&cfg, &url).await;
    let proxy = a.proxy_url("oai").await;
    let c = reqwest::Client::new();
    let (status, body) = chat(&c, &proxy, SPENDER_KEY).await;
    assert_eq!(status, 200);
    let mut spent_here = cost_of(&body);
    settle().await;

    // Redis goes away (and comes back empty): the node keeps serving from its own figures.
    drop(redis);
    for _ in 0..3 {
        let (status, body) = chat(&c, &proxy, SPENDER_KEY).await;
        assert_eq!(status, 200, "{body}");
        spent_here += cost_of(&body);
    }
    settle().await;
    assert_eq!(metric(&a, "palisade_redis_up").await, Some(0.0));
    assert!(
        metric(&a, "palisade_redis_exchange_failures_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert!((spent(&a).await - spent_here).abs() < 1e-6);

    let _redis = Redis::start_on(port);
    // The node reconnects (its back-off is at most 5 s) and fills the empty Redis again.
    assert!(up(&a).await, "the node exchanges with Redis again");
    settle().await;
    // A new node with an empty log learns the month's whole spend from Redis.
    let b = node(&cfg, &url).await;
    settle().await;
    let s = spent(&b).await;
    assert!((s - spent_here).abs() < 1e-6, "{s} vs {spent_here}");
}

/// A connection of the test's own to the same Redis.
async fn redis_conn(url: &str) -> palisade_gateway::resp::Conn {
    let url = palisade_gateway::resp::RedisUrl::parse(url).unwrap();
    let (cert, key) = (
        fixture("client-tls/client.pem"),
        fixture("client-tls/client.key"),
    );
    let identity = palisade_gateway::ClientIdentity {
        cert: &cert,
        key: &key,
    };
    let tls = url.tls.then(|| {
        palisade_gateway::tls_client_config(Some(&fixture("redis-tls/ca.pem")), Some(identity))
            .unwrap()
    });
    palisade_gateway::resp::Conn::connect(&url, Duration::from_secs(10), tls.as_ref())
        .await
        .unwrap()
}

fn args(a: &[&str]) -> Vec<Vec<u8>> {
    a.iter().map(|x| x.as_bytes().to_vec()).collect()
}

#[tokio::test]
async fn an_exchange_whose_answer_is_lost_in_a_stall_is_counted_once() {
    let redis = Redis::start();
    let url = redis.url();
    let mock = Mock::start(&[]);
    // Exchanges every 500 ms: the requests below are in the exchange that meets the stall.
    let a = node_syncing(&config(&mock.url), &url, "500").await;
    let proxy = a.proxy_url("oai").await;
    let c = reqwest::Client::new();
    let (status, body) = chat(&c, &proxy, SPENDER_KEY).await;
    assert_eq!(status, 200);
    let mut spent_here = cost_of(&body);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Redis is busy for 3 s: the node's exchange, sent meanwhile, waits past its 2 s limit;
    // Redis then runs it anyway, and the node, not knowing, sends the same batch again.
    for _ in 0..2 {
        let (status, body) = chat(&c, &proxy, SPENDER_KEY).await;
        assert_eq!(status, 200, "{body}");
        spent_here += cost_of(&body);
    }
    let mut busy = redis_conn(&url).await;
    let stall = tokio::spawn(async move {
        let script = "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
            while true do local t = redis.call('TIME') \
            if t[1] * 1000000 + t[2] - t0 > 3000000 then break end end return 1";
        busy.run(&[args(&["EVAL", script, "0"])]).await.unwrap()
    });
    stall.await.unwrap();
    let mut counted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if metric(&a, "palisade_redis_up").await == Some(1.0)
            && metric(&a, "palisade_redis_exchange_failures_total").await >= Some(1.0)
        {
            counted = true;
            break;
        }
    }
    assert!(
        counted,
        "the stall made an exchange fail, and the node recovered"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let month = palisade_core::spend::month_key(palisade_core::now_ms());
    let mut conn = redis_conn(&url).await;
    let key = format!("palisade:spend:engineering:{month}");
    let total = conn.run(&[args(&["GET", &key])]).await.unwrap()[0]
        .number()
        .unwrap();
    assert!(
        (total / 1e9 - spent_here).abs() < 1e-6,
        "Redis holds {} USD, the requests cost {spent_here}",
        total / 1e9
    );
    assert!((spent(&a).await - spent_here).abs() < 1e-6);
}

#[tokio::test]
async fn requests_admitted_before_redis_first_answers_do_not_empty_the_shared_bucket() {
    // Redis is not there yet when the node starts: it counts alone.
    let port = unused_port();
    let mock = Mock::start(&[]);
    let a = node(&config(&mock.url), &url_of(port)).await;
    let proxy = a.proxy_url("oai").await;
    let c = reqwest::Client::new();
    for _ in 0..6 {
        assert_eq!(chat(&c, &proxy, CI_KEY).await.0, 200);
    }
    assert_eq!(chat(&c, &proxy, CI_KEY).await.0, 429);
    let _redis = Redis::start_on(port);
    assert!(up(&a).await, "the node reaches Redis once it is there");
    settle().await;
    // What it admitted alone is not sent: the shared bucket is whole, not emptied (or below).
    // The node takes the shared bucket at its next exchange, which a busy machine may delay;
    // an emptied bucket would refill one request in 10 s, so 3 s of retries cannot hide it.
    let mut answer = chat(&c, &proxy, CI_KEY).await;
    for _ in 0..30 {
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = chat(&c, &proxy, CI_KEY).await;
    }
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn nodes_reach_redis_over_tls_with_a_private_ca() {
    let redis = Redis::start_tls();
    let url = format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{}/3", redis.port);
    let mock = Mock::start(&[]);
    let cfg = config(&mock.url);
    let ca = fixture("redis-tls/ca.pem").display().to_string();
    let (cert, key) = (
        fixture("client-tls/client.pem").display().to_string(),
        fixture("client-tls/client.key").display().to_string(),
    );
    let env = [
        ("PALISADE_REDIS_URL", url.as_str()),
        ("PALISADE_REDIS_SYNC_MS", "50"),
        ("PALISADE_REDIS_CA_FILE", ca.as_str()),
        ("PALISADE_REDIS_CLIENT_CERT", cert.as_str()),
        ("PALISADE_REDIS_CLIENT_KEY", key.as_str()),
    ];
    let a = Gateway::start_with(tempfile::tempdir().unwrap(), &cfg, &env).await;
    // Without the CA the server's certificate is not trusted, and without a client certificate
    // the server refuses the node: no exchange ever succeeds.
    let untrusting = node(&cfg, &url).await;
    let anonymous = Gateway::start_with(tempfile::tempdir().unwrap(), &cfg, &env[..3]).await;
    let proxy = a.proxy_url("oai").await;
    let c = reqwest::Client::new();
    let (status, body) = chat(&c, &proxy, SPENDER_KEY).await;
    assert_eq!(status, 200, "{body}");
    settle().await;
    assert_eq!(metric(&a, "palisade_redis_up").await, Some(1.0));
    let month = palisade_core::spend::month_key(palisade_core::now_ms());
    let key = format!("palisade:spend:engineering:{month}");
    let total = redis_conn(&url)
        .await
        .run(&[args(&["GET", &key])])
        .await
        .unwrap()[0]
        .number()
        .unwrap();
    assert!((total / 1e9 - cost_of(&body)).abs() < 1e-6, "{total}");
    for refused in [&untrusting, &anonymous] {
        assert_eq!(metric(refused, "palisade_redis_up").await, Some(0.0));
        assert!(
            metric(refused, "palisade_redis_exchange_failures_total")
                .await
                .unwrap()
                >= 1.0
        );
    }
}

#[test]
fn a_bad_redis_url_stops_the_start_with_the_reason() {
    let out = Command::new(bin())
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path().join("data"))
        .env("PALISADE_REDIS_URL", "redis://:pw/x@cache.internal:nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PALISADE_REDIS_URL") && err.contains("port"),
        "{err}"
    );
    assert!(!err.contains("pw"), "{err}");
}
