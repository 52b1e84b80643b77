//! Helpers that start the real `palisade` binary (gateway and mock model) on ephemeral ports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "test-admin-password-1";
/// The scrape token of `GET /metrics` in tests.
#[allow(dead_code)]
pub const METRICS_TOKEN: &str = "metrics-scrape-token-for-tests-0001";
pub const CI_KEY: &str = "pal_test_fixed_key_000000000001";

/// A loopback port that nothing listens on now and that the kernel will not hand to a
/// `:0` bind meanwhile: it is taken from below (or above) the ephemeral range, so a gateway
/// that binds other listeners to port 0 cannot be given it before the test's config uses it.
/// Ports are drawn at random, so tests running in parallel rarely draw the same one; a drawn
/// port that cannot be bound is skipped.
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // The wider of the two ranges outside the ephemeral one, above the privileged ports.
    let (from, to) = if low.saturating_sub(1024) >= 65535u32.saturating_sub(high) {
        (1024, low.max(1025) - 1)
    } else {
        (high + 1, 65535)
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ ((std::process::id() as u64) << 32);
    for _ in 0..1000 {
        let n = DRAWS.fetch_add(1, Ordering::Relaxed);
        // splitmix64 of the seed and the draw number.
        let mut x = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let port = (from as u64 + x % (to - from + 1) as u64) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {from}..={to}");
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_palisade")
}

/// A child process whose stdout lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawns a command (stdout collected, stderr inherited).
    pub fn spawn_cmd(cmd: Command) -> Self {
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn palisade");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("[child] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines: rx }
    }

    /// Waits for a stdout line containing `needle`; returns the rest of the line after it.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some((_, rest)) = l.split_once(needle) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!("timed out waiting for `{needle}`"),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The built-in mock model on an ephemeral loopback port.
pub struct Mock {
    pub proc: Proc,
    pub url: String,
}

impl Mock {
    pub fn start(extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(["mock-llm", "--addr", "127.0.0.1:0"]).args(extra);
        let proc = Proc::spawn(cmd);
        let url = proc.wait_for("listening on");
        Self { proc, url }
    }
}

/// A running gateway with its own data directory and an admin token.
pub struct Gateway {
    pub proc: Proc,
    pub admin: String,
    pub dir: tempfile::TempDir,
    pub token: String,
    pub http: reqwest::Client,
}

impl Gateway {
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Self {
        Self::start_with(dir, config, &[]).await
    }

    /// Starts with extra environment variables (e.g. `PALISADE_DRAIN_SECS`).
    pub async fn start_with(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Self {
        let cfg = dir.path().join("palisade.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--admin-addr", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("PALISADE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("PALISADE_CI_KEY", CI_KEY)
            .env("PALISADE_METRICS_TOKEN", METRICS_TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied());
        let proc = Proc::spawn(cmd);
        let admin = proc.wait_for("admin API listening on");
        let http = reqwest::Client::new();
        let token = login(&http, &admin, "admin", ADMIN_PASSWORD).await;
        Self {
            proc,
            admin,
            dir,
            token,
            http,
        }
    }

    /// Signs `username` in; returns their API token.
    #[allow(dead_code)]
    pub async fn login(&self, username: &str, password: &str) -> String {
        login(&self.http, &self.admin, username, password).await
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `/metrics` as a scraper with the scrape token reads it.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.api(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.api(reqwest::Method::POST, path, Some(body)).await
    }

    /// Base URL of a running proxy.
    pub async fn proxy_url(&self, name: &str) -> String {
        let (s, v) = self.get(&format!("/api/v1/proxies/{name}")).await;
        assert_eq!(s, 200, "{v}");
        format!(
            "http://{}",
            v["bound_addr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} not running: {v}"))
        )
    }

    /// Polls the alerts until `n` match `query` (the writer is asynchronous); returns the last
    /// page read, whatever its total (the caller asserts).
    pub async fn wait_alerts(&self, query: &str, n: i64) -> Value {
        let mut page = Value::Null;
        for _ in 0..100 {
            page = self.get(&format!("/api/v1/alerts?{query}")).await.1;
            if page["total"].as_i64().unwrap_or(0) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        page
    }

    /// Polls the request log until `n` rows match `query` (the writer is asynchronous).
    pub async fn wait_requests(&self, query: &str, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let (_, v) = self.get(&format!("/api/v1/requests?{query}")).await;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.len() >= n {
                return items;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("request log never reached {n} rows for `{query}`");
    }
}

/// A config with one OpenAI-shaped and one Anthropic-shaped proxy in front of `upstream`.
/// Signs a user in at the admin API `admin`; returns the token.
async fn login(http: &reqwest::Client, admin: &str, username: &str, password: &str) -> String {
    let login: Value = http
        .post(format!("{admin}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["token"].as_str().expect("token").to_string()
}

pub fn config_for(upstream: &str) -> String {
    format!(
        r#"
[[groups]]
name = "engineering"

[[api_keys]]
name = "ci"
group = "engineering"
key = "env:PALISADE_CI_KEY"

[[proxies]]
name = "oai"
kind = "llm"
listen = "127.0.0.1:0"
upstream = "{upstream}"
api = "openai"

[[proxies]]
name = "ant"
kind = "llm"
listen = "127.0.0.1:0"
upstream = "{upstream}"
api = "anthropic"
"#
    )
}

/// A test fixture file (`tests/fixtures/<name>`).
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The TLS side of a test receiver on loopback: the certificate the fixture CA
/// (`redis-tls/ca.pem`) signed for `127.0.0.1` and `localhost`; with `mutual`, it asks for a
/// client certificate and takes only one that the client fixture CA (`client-tls/ca.pem`) signed.
pub fn tls_acceptor(mutual: bool) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("redis-tls/server.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(fixture("redis-tls/server.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mutual {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(fixture("client-tls/ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}
