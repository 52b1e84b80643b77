//! The OpenTelemetry trace export: a span per proxied request, sent in batches to an OTLP/HTTP
//! collector in its JSON encoding, configured with the standard `OTEL_*` variables.
//!
//! Spans are telemetry, like log lines: the queue is bounded and a span it has no room for (or
//! a batch the collector keeps refusing) is dropped and counted, never waited for — the request
//! log and the audit trail, which must not lose anything, do not go through here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use palisade_core::otlp::{Encoding, Flavor};
use palisade_core::record::RequestRecord;
use tokio::sync::mpsc;

/// Spans waiting for export.
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);
/// Attempts per batch (waiting 1 s, then 2 s, in between).
const ATTEMPTS: u32 = 3;

/// Where and how spans go.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The traces endpoint (`…/v1/traces`).
    pub url: String,
    /// Extra headers (an API key of a hosted collector).
    pub headers: Vec<(String, String)>,
    /// `service.name` of the spans.
    pub service: String,
    /// The spans' shape: any collector's, or Langfuse's.
    pub flavor: Flavor,
    /// JSON or protobuf (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub encoding: Encoding,
    /// Langfuse: model calls carry what they sent and got, masked (`LANGFUSE_CAPTURE_CONTENT`).
    pub content: bool,
    /// A private CA for the collector's certificate, or a client certificate for a collector
    /// that asks for one (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_CLIENT_CERTIFICATE`,
    /// `…_CLIENT_KEY`); `None`: the public roots compiled in.
    pub tls: Option<std::sync::Arc<palisade_gateway::TlsSource>>,
}

/// The export's TLS settings from the standard variables, the traces-only one first in each
/// pair; `None` when none is set.
fn tls_from_env(
    var: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<std::sync::Arc<palisade_gateway::TlsSource>>> {
    let read = |what: &str| {
        let traces = format!("OTEL_EXPORTER_OTLP_TRACES_{what}");
        let all = format!("OTEL_EXPORTER_OTLP_{what}");
        match var(&traces).filter(|v| !v.is_empty()) {
            Some(v) => Some((traces, std::path::PathBuf::from(v))),
            None => var(&all)
                .filter(|v| !v.is_empty())
                .map(|v| (all, std::path::PathBuf::from(v))),
        }
    };
    let (ca, cert, key) = (
        read("CERTIFICATE"),
        read("CLIENT_CERTIFICATE"),
        read("CLIENT_KEY"),
    );
    let identity = match (&cert, &key) {
        (Some((_, cert)), Some((_, key))) => Some(palisade_gateway::ClientIdentity { cert, key }),
        (None, None) => None,
        (Some((name, _)), None) | (None, Some((name, _))) => bail!(
            "{name} is set alone: a client certificate needs OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY both"
        ),
    };
    if ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    let source = palisade_gateway::TlsSource::open(ca.as_ref().map(|(_, p)| p.as_path()), identity)
        .map_err(|e| {
            let setting = match e.file {
                Some(palisade_gateway::TlsFile::Cert) => &cert,
                Some(palisade_gateway::TlsFile::Key) => &key,
                Some(palisade_gateway::TlsFile::Ca) | None => &ca,
            };
            let name = setting
                .as_ref()
                .map_or("OTEL_EXPORTER_OTLP_CERTIFICATE", |(n, _)| n);
            anyhow::anyhow!("{name}: {e}")
        })?;
    Ok(Some(source))
}

impl OtlpConfig {
    /// Reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (a base URL, `/v1/traces` appended), `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`),
    /// `OTEL_SERVICE_NAME` (default `palisade`) and `OTEL_EXPORTER_OTLP_PROTOCOL` (only
    /// `http/json` is spoken). `None` when no endpoint is set.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let url = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.is_empty()),
            var("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.is_empty()),
        ) {
            (Some(u), _) => u,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        // The traces-only setting wins over the general one.
        let protocol = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find_map(|name| var(name).filter(|p| !p.is_empty()).map(|p| (name, p)));
        let encoding = match protocol {
            None => Encoding::Json,
            Some((_, p)) if p == "http/json" => Encoding::Json,
            Some((_, p)) if p == "http/protobuf" => Encoding::Protobuf,
            Some((name, p)) => bail!(
                "{name}={p}: Palisade exports traces over OTLP/HTTP, as JSON (`http/json`, the default) or protobuf (`http/protobuf`), not gRPC; point it at a collector's HTTP port (4318)"
            ),
        };
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("OTLP endpoint `{url}` is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            bail!("OTLP endpoint `{url}` must be an http:// or https:// URL with a host");
        }
        let mut headers = Vec::new();
        for pair in var("OTEL_EXPORTER_OTLP_HEADERS")
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let Some((k, v)) = pair.split_once('=') else {
                bail!("OTEL_EXPORTER_OTLP_HEADERS: an entry is not `name=value`");
            };
            let (k, v) = (k.trim(), v.trim());
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                bail!("OTEL_EXPORTER_OTLP_HEADERS: `{k}` is not a valid header");
            }
            headers.push((k.to_string(), v.to_string()));
        }
        let service = var("OTEL_SERVICE_NAME")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "palisade".into());
        let tls = tls_from_env(&var)?;
        Ok(Some(Self {
            url,
            headers,
            service,
            flavor: Flavor::Otel,
            encoding,
            content: false,
            tls,
        }))
    }

    /// Reads the variables Langfuse's own SDKs read: `LANGFUSE_PUBLIC_KEY` and
    /// `LANGFUSE_SECRET_KEY` (both, or neither), and `LANGFUSE_HOST` (or `LANGFUSE_BASE_URL`;
    /// default `https://cloud.langfuse.com`). Spans go to the host's OTLP endpoint
    /// (`/api/public/otel/v1/traces`). `None` when no key is set.
    pub fn langfuse_from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let public = var("LANGFUSE_PUBLIC_KEY").filter(|v| !v.is_empty());
        let secret = var("LANGFUSE_SECRET_KEY").filter(|v| !v.is_empty());
        let (public, secret) = match (public, secret) {
            (None, None) => return Ok(None),
            (Some(p), Some(s)) => (p, s),
            _ => bail!(
                "Langfuse export needs both LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (a project's key pair)"
            ),
        };
        let host = var("LANGFUSE_HOST")
            .or_else(|| var("LANGFUSE_BASE_URL"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "https://cloud.langfuse.com".into());
        let uri: http::Uri = host
            .parse()
            .with_context(|| format!("LANGFUSE_HOST `{host}` is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.host().is_none()
            || uri.query().is_some()
        {
            bail!("LANGFUSE_HOST `{host}` must be an http:// or https:// URL with a host");
        }
        let content = match var("LANGFUSE_CAPTURE_CONTENT").as_deref() {
            None | Some("" | "false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => bail!(
                "LANGFUSE_CAPTURE_CONTENT={other}: `true` sends model calls' requests and answers (as the model saw them, masked), `false` (the default) does not"
            ),
        };
        let auth = palisade_core::otlp::langfuse_auth(&public, &secret);
        if http::HeaderValue::from_str(&auth).is_err() {
            bail!("LANGFUSE_PUBLIC_KEY or LANGFUSE_SECRET_KEY holds characters a header cannot");
        }
        Ok(Some(Self {
            url: format!("{}/api/public/otel/v1/traces", host.trim_end_matches('/')),
            headers: vec![
                ("authorization".into(), auth),
                ("x-langfuse-ingestion-version".into(), "4".into()),
            ],
            service: var("OTEL_SERVICE_NAME")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "palisade".into()),
            flavor: Flavor::Langfuse,
            encoding: Encoding::Json,
            content,
            tls: None,
        }))
    }
}

/// The exporter's handle: spans go in without waiting.
pub struct Otlp {
    tx: mpsc::Sender<RequestRecord>,
    dropped: Arc<AtomicU64>,
    stop: Arc<tokio::sync::Notify>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Otlp {
    /// Starts the export task.
    pub fn start(cfg: OtlpConfig) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(cfg, rx, dropped.clone(), stop.clone()));
        Self {
            tx,
            dropped,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues a request's span; a full queue drops it (counted).
    pub fn push(&self, rec: &RequestRecord) {
        if self.tx.try_send(rec.clone()).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "trace export queue full; spans dropped");
            }
        }
    }

    /// Sends what is queued (within `limit`) and stops.
    pub async fn close(&self, limit: Duration) {
        self.stop.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && tokio::time::timeout(limit, task).await.is_err()
        {
            tracing::warn!("trace export: spans still queued at shutdown were not sent");
        }
    }
}

async fn run(
    cfg: OtlpConfig,
    mut rx: mpsc::Receiver<RequestRecord>,
    dropped: Arc<AtomicU64>,
    stop: Arc<tokio::sync::Notify>,
) {
    // With TLS files, renewed ones (their files changed) take a new client.
    let mut tls = cfg.tls.as_ref().map(|t| t.current());
    let mut client = match &tls {
        Some(tls) => palisade_gateway::build_client_with(tls),
        None => palisade_gateway::build_client(),
    };
    let to = match (cfg.flavor, cfg.encoding) {
        (Flavor::Otel, Encoding::Json) => "OTLP/HTTP JSON",
        (Flavor::Otel, Encoding::Protobuf) => "OTLP/HTTP protobuf",
        (Flavor::Langfuse, _) => "Langfuse, OTLP/HTTP JSON",
    };
    tracing::info!(endpoint = %cfg.url, "exporting request traces ({to})");
    let mut batch = Vec::with_capacity(BATCH);
    let mut stopping = false;
    loop {
        if stopping {
            // Shutdown: what is queued goes in batches, then the task ends.
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
        } else {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(first) => batch.push(first),
                    None => return,
                },
                () = stop.notified() => {
                    stopping = true;
                    continue;
                }
            }
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    _ => break,
                }
            }
        }
        if let (Some(source), Some(used)) = (&cfg.tls, &tls) {
            let now = source.current();
            if !Arc::ptr_eq(&now, used) {
                client = palisade_gateway::build_client_with(&now);
                tls = Some(now);
            }
        }
        let body =
            palisade_core::otlp::export_request(&cfg.service, cfg.flavor, cfg.encoding, &batch);
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=ATTEMPTS {
            match palisade_gateway::post_body(
                &client,
                &cfg.url,
                cfg.encoding.content_type(),
                &cfg.headers,
                body.clone(),
                Duration::from_secs(10),
            )
            .await
            {
                Ok(p) if (200..300).contains(&p.status) => break,
                outcome => {
                    let why = match outcome {
                        Ok(p) => format!("HTTP {}", p.status),
                        Err(e) => e,
                    };
                    if attempt == ATTEMPTS {
                        let n = dropped.fetch_add(batch.len() as u64, Ordering::Relaxed)
                            + batch.len() as u64;
                        tracing::warn!(
                            spans = batch.len(),
                            dropped_total = n,
                            "trace export failed ({why}); spans dropped"
                        );
                    } else {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn tls_variables_give_a_private_ca_and_a_client_certificate() {
        let fixture = |p: &str| format!("{}/tests/fixtures/{p}", env!("CARGO_MANIFEST_DIR"));
        let (ca, cert, key) = (
            fixture("redis-tls/ca.pem"),
            fixture("client-tls/client.pem"),
            fixture("client-tls/client.key"),
        );
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4318");
        let c = OtlpConfig::from_env(env(&[base])).unwrap().unwrap();
        assert_eq!(c.tls, None);
        // The traces-only variable wins over the general one.
        let c = OtlpConfig::from_env(env(&[
            base,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
        ]))
        .unwrap()
        .unwrap();
        let tls = c.tls.expect("TLS settings");
        assert_eq!(
            tls.files().cloned().collect::<Vec<_>>(),
            [&ca, &cert, &key].map(std::path::PathBuf::from).to_vec()
        );
        assert!(tls.current().client_auth_cert_resolver.has_certs());
        for (bad, says) in [
            (
                vec![
                    base,
                    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
                ],
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is set alone",
            ),
            (
                vec![
                    base,
                    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
                ],
                "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem",
            ),
            (
                // A key that is not the certificate's.
                vec![
                    base,
                    (
                        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                        cert.as_str(),
                    ),
                    (
                        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
                        &fixture("redis-tls/server.key"),
                    ),
                ],
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY: ",
            ),
            (
                vec![
                    base,
                    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", key.as_str()),
                    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
                ],
                "holds no certificate",
            ),
        ] {
            let e = OtlpConfig::from_env(env(&bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_standard_variables_configure_it() {
        assert_eq!(OtlpConfig::from_env(env(&[])).unwrap(), None);
        let c = OtlpConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc, team = sec"),
            ("OTEL_SERVICE_NAME", "edge-gw"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(
            c.headers,
            vec![
                ("x-api-key".into(), "abc".into()),
                ("team".into(), "sec".into())
            ]
        );
        assert_eq!(c.service, "edge-gw");
        let c = OtlpConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://otel.example/traces",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.url, "https://otel.example/traces");
        assert_eq!(c.encoding, Encoding::Json);
        // Protobuf on request; the traces-only setting wins over the general one.
        for (pairs, encoding) in [
            (
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                Encoding::Protobuf,
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
                ],
                Encoding::Json,
            ),
        ] {
            let mut pairs = pairs;
            pairs.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"));
            let c = OtlpConfig::from_env(env(&pairs)).unwrap().unwrap();
            assert_eq!(c.encoding, encoding, "{pairs:?}");
        }
        for bad in [
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")],
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ],
        ] {
            assert!(OtlpConfig::from_env(env(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn langfuses_own_variables_configure_its_export() {
        assert_eq!(OtlpConfig::langfuse_from_env(env(&[])).unwrap(), None);
        let c = OtlpConfig::langfuse_from_env(env(&[
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-1"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            c.url,
            "https://cloud.langfuse.com/api/public/otel/v1/traces"
        );
        assert_eq!(c.flavor, Flavor::Langfuse);
        assert_eq!(
            c.headers,
            vec![
                ("authorization".into(), "Basic cGstbGYtMTpzay1sZi0y".into()),
                ("x-langfuse-ingestion-version".into(), "4".into())
            ]
        );
        let c = OtlpConfig::langfuse_from_env(env(&[
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-1"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-2"),
            ("LANGFUSE_HOST", "http://127.0.0.1:3000/"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.url, "http://127.0.0.1:3000/api/public/otel/v1/traces");
        assert!(!c.content);
        let keys = [
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-1"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-2"),
        ];
        let with = |v: &'static str| {
            let mut e = keys.to_vec();
            e.push(("LANGFUSE_CAPTURE_CONTENT", v));
            OtlpConfig::langfuse_from_env(env(&e))
        };
        assert!(with("true").unwrap().unwrap().content);
        assert!(!with("false").unwrap().unwrap().content);
        assert!(with("yes please").is_err());
        for bad in [
            vec![("LANGFUSE_PUBLIC_KEY", "pk-lf-1")],
            vec![("LANGFUSE_SECRET_KEY", "sk-lf-2")],
            vec![
                ("LANGFUSE_PUBLIC_KEY", "pk-lf-1"),
                ("LANGFUSE_SECRET_KEY", "sk-lf-2"),
                ("LANGFUSE_HOST", "langfuse.internal"),
            ],
            vec![
                ("LANGFUSE_PUBLIC_KEY", "pk-lf-1"),
                ("LANGFUSE_SECRET_KEY", "sk\nx"),
                ("LANGFUSE_HOST", "ftp://langfuse.internal"),
            ],
        ] {
            assert!(OtlpConfig::langfuse_from_env(env(&bad)).is_err(), "{bad:?}");
        }
    }
}
