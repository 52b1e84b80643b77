//! The shared upstream HTTP client and per-proxy upstream targets.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_rustls::rustls;

/// The pooled HTTP/1.1 client (TLS via rustls with the Mozilla root set compiled in).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client whose connections never reach a link-local or unspecified address, whatever a
/// host name resolves to (see [`GuardedResolver`]): for URLs an administrator types in, such
/// as alert webhooks.
pub type GuardedClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// Builds the client shared by all proxies.
pub fn build_client() -> HttpClient {
    client_with(HttpConnector::new(), None)
}

/// Builds a [`GuardedClient`] that checks servers' certificates against the Mozilla roots.
pub fn build_guarded_client() -> GuardedClient {
    client_with(HttpConnector::new_with_resolver(GuardedResolver), None)
}

/// Builds a [`GuardedClient`] that checks servers' certificates against `tls`'s roots (those of
/// [`tls_client_config`]: the Mozilla set and an administrator's private CA).
pub fn build_guarded_client_with(tls: &TlsConfig) -> GuardedClient {
    client_with(HttpConnector::new_with_resolver(GuardedResolver), Some(tls))
}

/// Builds an [`HttpClient`] whose connections use `tls` (see [`tls_client_config`]).
pub fn build_client_with(tls: &TlsConfig) -> HttpClient {
    client_with(HttpConnector::new(), Some(tls))
}

/// TLS settings of the gateway's own connections (Redis, webhooks, syslog collectors).
pub type TlsConfig = std::sync::Arc<rustls::ClientConfig>;

/// A client certificate (PEM, the gateway's own first, then any intermediates) and its private
/// key (PEM: PKCS#8, PKCS#1 or SEC1), for servers that ask who connects (mutual TLS).
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// The certificate chain's file.
    pub cert: &'a std::path::Path,
    /// The private key's file.
    pub key: &'a std::path::Path,
}

/// The gateway's own time in a request (microseconds, the upstream's wait left out), on every
/// answer of every proxy kind, so users can check the overhead on their own traffic.
pub(crate) const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-palisade-overhead-us");

/// Which file of [`tls_client_config`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The CA certificates.
    Ca,
    /// The client certificate.
    Cert,
    /// The client certificate's private key.
    Key,
}

/// Why TLS settings could not be made from their files.
#[derive(Debug, Clone)]
pub struct TlsFileError {
    /// The file at fault; `None` for the TLS library's own defaults.
    pub file: Option<TlsFile>,
    /// What is wrong, naming the file.
    pub message: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsFileError {}

/// TLS settings whose roots are the Mozilla set compiled in, and the certificates of `ca_file`
/// (PEM) when given: for servers with a private CA's certificate; with `identity`, the gateway
/// shows that certificate to servers that ask for one.
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
    identity: Option<ClientIdentity<'_>>,
) -> Result<TlsConfig, TlsFileError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |file: TlsFile, message: String| TlsFileError {
        file: Some(file),
        message,
    };
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let ca = |m: String| fail(TlsFile::Ca, m);
        let pem =
            std::fs::read(path).map_err(|e| ca(format!("cannot read {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ca(format!("{} is not PEM: {e}", path.display())))?;
            roots.add(cert).map_err(|e| {
                ca(format!(
                    "{}: a certificate cannot be used: {e}",
                    path.display()
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(ca(format!("{} holds no certificate", path.display())));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsFileError {
        file: None,
        message: e.to_string(),
    })?
    .with_root_certificates(roots);
    let config = match identity {
        None => config.with_no_client_auth(),
        Some(id) => {
            let (cert, key) = (id.cert.display(), id.key.display());
            let pem = std::fs::read(id.cert)
                .map_err(|e| fail(TlsFile::Cert, format!("cannot read {cert}: {e}")))?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(TlsFile::Cert, format!("{cert} is not PEM: {e}")))?;
            if chain.is_empty() {
                return Err(fail(TlsFile::Cert, format!("{cert} holds no certificate")));
            }
            let pem = std::fs::read(id.key)
                .map_err(|e| fail(TlsFile::Key, format!("cannot read {key}: {e}")))?;
            if String::from_utf8_lossy(&pem).contains("ENCRYPTED") {
                return Err(fail(
                    TlsFile::Key,
                    format!(
                        "{key} holds an encrypted private key: give the gateway the key decrypted \
                         (`openssl pkey -in … -out …`), in a file only its user can read"
                    ),
                ));
            }
            let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                fail(
                    TlsFile::Key,
                    format!("{key} holds no private key in PEM ({e})"),
                )
            })?;
            config
                .with_client_auth_cert(chain, private)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => fail(
                        TlsFile::Key,
                        format!("{key} is not the private key of the certificate in {cert}"),
                    ),
                    e => fail(
                        TlsFile::Key,
                        format!("{key} cannot be used with {cert}: {e}"),
                    ),
                })?
        }
    };
    Ok(std::sync::Arc::new(config))
}

/// TLS settings read from files ([`tls_client_config`]) and read again when one of them
/// changes, so a renewed certificate (a client certificate rotated by its issuer, a CA bundle
/// updated) is used without a restart. The files are looked at, at most once a second, when
/// the settings are asked for; a change that cannot be read (a file half written, a key that
/// is not the certificate's) is logged and the settings in use stay.
#[derive(Debug)]
pub struct TlsSource {
    ca: Option<std::path::PathBuf>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    state: std::sync::Mutex<TlsState>,
}

#[derive(Debug)]
struct TlsState {
    config: TlsConfig,
    /// The files' modification times and sizes when they were last looked at.
    stamps: Vec<Option<(std::time::SystemTime, u64)>>,
    looked: std::time::Instant,
}

/// Two sources are the same settings when they read the same files.
impl PartialEq for TlsSource {
    fn eq(&self, other: &Self) -> bool {
        self.files().eq(other.files())
    }
}

/// How often a [`TlsSource`] looks at its files.
const TLS_LOOK: Duration = Duration::from_secs(1);

impl TlsSource {
    /// Reads the files once: an error here should stop the start.
    pub fn open(
        ca_file: Option<&std::path::Path>,
        identity: Option<ClientIdentity<'_>>,
    ) -> Result<std::sync::Arc<Self>, TlsFileError> {
        let source = Self {
            ca: ca_file.map(Into::into),
            cert: identity.map(|i| i.cert.into()),
            key: identity.map(|i| i.key.into()),
            state: std::sync::Mutex::new(TlsState {
                config: tls_client_config(ca_file, identity)?,
                stamps: Vec::new(),
                looked: std::time::Instant::now(),
            }),
        };
        let stamps = source.stamps();
        source.lock().stamps = stamps;
        Ok(std::sync::Arc::new(source))
    }

    /// The settings in use, read again first if a file changed.
    pub fn current(&self) -> TlsConfig {
        let mut st = self.lock();
        if self.ca.is_none() && self.cert.is_none() || st.looked.elapsed() < TLS_LOOK {
            return st.config.clone();
        }
        st.looked = std::time::Instant::now();
        let stamps = self.stamps();
        if stamps != st.stamps {
            st.stamps = stamps;
            let identity = match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
                _ => None,
            };
            match tls_client_config(self.ca.as_deref(), identity) {
                Ok(config) => {
                    st.config = config;
                    tracing::info!(files = %self.names(), "TLS files changed: read again");
                }
                Err(e) => tracing::warn!(
                    files = %self.names(),
                    "TLS files changed but cannot be used ({e}); the previous ones stay in use"
                ),
            }
        }
        st.config.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TlsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The files the settings are read from: CA, certificate, key (those given).
    pub fn files(&self) -> impl Iterator<Item = &std::path::PathBuf> {
        [&self.ca, &self.cert, &self.key].into_iter().flatten()
    }

    fn stamps(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        self.files()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }

    fn names(&self) -> String {
        self.files()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Resolves host names like the system does, then drops link-local and unspecified addresses
/// ([`palisade_core::webhook::is_metadata_or_unspecified`]); a name left with none is an error. Numeric spellings that
/// the system reads as addresses (`2852039166`, `0251.0376.0251.0376`) go through it too.
#[derive(Clone, Copy, Debug)]
pub struct GuardedResolver;

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !palisade_core::webhook::is_metadata_or_unspecified(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("`{host}` resolves only to link-local or unspecified addresses"),
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// A pooled client over `http`, its TLS with `tls` (see [`tls_client_config`]), or with the
/// Mozilla roots compiled in.
fn client_with<R>(
    mut http: HttpConnector<R>,
    tls: Option<&TlsConfig>,
) -> Client<HttpsConnector<HttpConnector<R>>, Full<Bytes>>
where
    HttpsConnector<HttpConnector<R>>:
        hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    prepare(&mut http);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match tls {
        Some(tls) => builder.with_tls_config((**tls).clone()),
        None => builder.with_webpki_roots(),
    };
    pool(builder.https_or_http().enable_http1().wrap_connector(http))
}

/// The TCP settings of every client's connections.
fn prepare<R>(http: &mut HttpConnector<R>) {
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(60)));
}

/// A pooled client over `https`.
fn pool<C>(https: C) -> Client<C, Full<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .build(https)
}

/// An error with its causes, one line (`connect failed: Connection refused (os error 111)`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// Why a delivery (alerts, a trace export, a Redis exchange) failed, one line ([`error_chain`]), with a hint
/// where the TLS library's words say little to an operator: `CaUsedAsEndEntity` is a
/// self-signed certificate made with the CA flag set, as `openssl req -x509` does by default.
pub(crate) fn delivery_error(e: &dyn std::error::Error) -> String {
    let why = error_chain(e);
    if why.contains("CaUsedAsEndEntity") {
        format!(
            "{why} (the receiver presents a CA certificate as its own: give it one that the CA \
             signed, or a self-signed one made with CA:FALSE)"
        )
    } else if why.contains("alert: CertificateRequired")
        || why.contains("alert: BadCertificate")
        || why.contains("alert: UnknownCA")
    {
        format!(
            "{why} (the receiver asks for a client certificate: none was set, or it does not \
             take the one that was)"
        )
    } else {
        why
    }
}

/// How long a syslog delivery waits, after closing, for the collector to close too or refuse.
const SYSLOG_SETTLE: Duration = Duration::from_secs(1);

/// What the collector does once the gateway wrote and closed: syslog has no receipt, so its
/// side is read until it closes too, for at most [`SYSLOG_SETTLE`]. TLS 1.3 ends the client's
/// side of the handshake before the server has checked the client's certificate: a collector
/// that refuses it says so with an alert after the client wrote, a failed delivery. A collector
/// that resets the connection may not have read what was written: a failed delivery too (the
/// alerts are sent again: a collector may see them twice, never none). Closing, with or without
/// TLS's `close_notify`, or saying nothing, is delivery.
async fn after_close<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    a: std::net::SocketAddr,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    let settle = tokio::time::sleep(SYSLOG_SETTLE);
    tokio::pin!(settle);
    loop {
        tokio::select! {
            () = &mut settle => return Ok(()),
            r = s.read(&mut sink) => match r {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    drained += n;
                    if drained > 64 * 1024 {
                        return Ok(());
                    }
                }
                Err(e) if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
                    return Err(format!("TLS with {a}: {}", delivery_error(&e)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(format!(
                        "{a} reset the connection instead of closing it: what it read is unknown"
                    ));
                }
                Err(_) => return Ok(()),
            }
        }
    }
}

/// Writes `bytes` to a syslog collector within `timeout`: connected to an address its name
/// resolves to that is not link-local or unspecified (as [`GuardedResolver`] does), over TLS
/// when the target says so (the collector's certificate checked against `tls`'s roots, for its
/// name or address), written whole, and closed (TLS with its `close_notify`), then the
/// collector given a moment to close too or refuse ([`after_close`]). Success means the
/// collector's system took every byte (syslog has no receipt of its own).
pub async fn send_syslog(
    target: &palisade_core::webhook::SyslogTarget,
    tls: &TlsConfig,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    async fn write_and_close<S: tokio::io::AsyncWrite + Unpin>(
        s: &mut S,
        bytes: &[u8],
        a: std::net::SocketAddr,
    ) -> Result<(), String> {
        s.write_all(bytes)
            .await
            .map_err(|e| format!("writing to {a}: {e}"))?;
        s.shutdown().await.map_err(|e| format!("closing {a}: {e}"))
    }
    let host = target.host.as_str();
    let exchange = async {
        let server_name = if target.tls {
            Some(
                rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|_| format!("`{host}` is not a name a certificate can carry"))?,
            )
        } else {
            None
        };
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, target.port))
            .await
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
            .filter(|a| !palisade_core::webhook::is_metadata_or_unspecified(a.ip()))
            .collect();
        let mut last = format!("`{host}` resolves only to link-local or unspecified addresses");
        for a in addrs {
            let mut s = match tokio::net::TcpStream::connect(a).await {
                Ok(s) => s,
                Err(e) => {
                    last = format!("cannot connect to {a}: {e}");
                    continue;
                }
            };
            let Some(name) = server_name else {
                write_and_close(&mut s, bytes, a).await?;
                return after_close(&mut s, a).await;
            };
            let mut t = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, s)
                .await
                .map_err(|e| format!("TLS with {a}: {}", delivery_error(&e)))?;
            return match write_and_close(&mut t, bytes, a).await {
                Ok(()) => after_close(&mut t, a).await,
                // A collector that refused the certificate may have closed before the last
                // write: its alert, still to be read, says why better than the broken pipe.
                Err(e) => after_close(&mut t, a).await.and(Err(e)),
            };
        }
        Err(last)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("not done within {} s", timeout.as_secs()))?
}

/// What a [`post_json`] receiver answered.
#[derive(Debug)]
pub struct Posted {
    /// HTTP status.
    pub status: u16,
}

/// POSTs a JSON `body` to `url` with extra `headers`, giving up after `timeout` (connect,
/// send and answer). The answer's body is read (up to 64 KiB, so the connection can serve again)
/// and dropped: what a receiver says is not shown to anyone, since the URL may point at a
/// service that is no webhook. Errors are one line for an operator.
pub async fn post_json<C, K>(
    client: &Client<C, Full<Bytes>>,
    url: &str,
    headers: &[(K, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Posted, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    K: AsRef<str>,
{
    post_body(client, url, "application/json", headers, body, timeout).await
}

/// [`post_json`] for a body of any `content_type`.
pub async fn post_body<C, K>(
    client: &Client<C, Full<Bytes>>,
    url: &str,
    content_type: &'static str,
    headers: &[(K, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Posted, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    K: AsRef<str>,
{
    use http_body_util::BodyExt;
    let mut req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(
            http::header::USER_AGENT,
            concat!("palisade/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        req = req.header(k.as_ref(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request: {e}"))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| delivery_error(&e))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut read = 0;
        while read < 64 * 1024 {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => return Err(format!("reading the answer: {e}")),
                None => break,
            }
        }
        Ok(Posted { status })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

/// Where a proxy sends its traffic.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    /// `Host` header value for upstream requests.
    pub host: HeaderValue,
}

impl UpstreamTarget {
    /// Parses a validated upstream base URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid upstream URL: {e}"))?;
        let scheme = uri.scheme().cloned().ok_or("upstream URL has no scheme")?;
        let authority = uri.authority().cloned().ok_or("upstream URL has no host")?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            scheme,
            authority,
            base_path,
            host,
        })
    }

    /// The upstream URI for a client path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query({
                // A base given the way SDKs take it (`https://api.openai.com/v1`) and a client
                // path with its own version (`/v1/chat/completions`) name the version once.
                let path = match (
                    self.base_path.ends_with("/v1"),
                    path_and_query.strip_prefix("/v1"),
                ) {
                    (true, Some(rest)) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
                    _ => path_and_query,
                };
                let pq = format!("{}{}", self.base_path, path);
                if pq.starts_with('/') {
                    pq
                } else {
                    format!("/{pq}")
                }
            })
            .build()
    }
}

/// W3C Trace Context headers: the MCP and A2A proxies, which send an upstream only the headers
/// they know, pass these on (the LLM proxy passes all but hop-by-hop ones).
pub(crate) fn is_trace_context(name: &str) -> bool {
    name == "traceparent" || name == "tracestate"
}

/// While a trace collector is configured, an upstream call joins the request's trace: it gets
/// a `traceparent` naming the call's own span (a client span under the request's), a trace the
/// gateway started carries none of the caller's `tracestate`, and the call is noted on the record
/// for the export. `at`: how long after the request arrived the call is sent. Without a
/// collector the headers stay as they are (one atomic load).
pub(crate) fn join_trace(
    traced: &std::sync::atomic::AtomicBool,
    rec: &mut palisade_core::record::RequestRecord,
    headers: &mut HeaderMap,
    host: &HeaderValue,
    at: Duration,
) {
    if !traced.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&palisade_core::otlp::upstream_traceparent(rec)) {
        headers.insert("traceparent", v);
    }
    if rec.trace_parent.is_none() {
        headers.remove("tracestate");
    }
    rec.upstream = Some(palisade_core::record::UpstreamCall {
        at_us: at.as_micros() as i64,
        took_us: None,
        host: host.to_str().unwrap_or_default().to_string(),
        status: None,
    });
}

/// Notes on a traced call (see [`join_trace`]) the status the upstream answered with, once it
/// is the record's.
pub(crate) fn note_answer(rec: &mut palisade_core::record::RequestRecord) {
    if let Some(call) = rec.upstream.as_mut() {
        call.status = Some(rec.status);
    }
}

/// Notes on a traced call that its whole answer was in, `took` after it was sent.
pub(crate) fn note_answer_read(rec: &mut palisade_core::record::RequestRecord, took: Duration) {
    if let Some(call) = rec.upstream.as_mut() {
        call.took_us = Some(took.as_micros() as i64);
    }
}

/// This gateway's `Via` entry (`1.1 palisade-<random>`, one per process), added to every
/// upstream request: a request that comes back with it went round a loop of proxies.
pub(crate) fn via_entry() -> &'static HeaderValue {
    static VIA: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    VIA.get_or_init(|| {
        let id = palisade_core::crypto::random_token(6).to_ascii_lowercase();
        HeaderValue::from_str(&format!("1.1 palisade-{id}"))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 palisade"))
    })
}

/// Whether a request already passed through this gateway (its `Via` names it): a proxy whose
/// upstream leads back to it, directly or through others.
pub(crate) fn came_round(headers: &HeaderMap) -> bool {
    let Ok(mine) = via_entry().to_str() else {
        return false;
    };
    let mine = mine.trim_start_matches("1.1 ");
    headers
        .get_all(http::header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().ends_with(mine)))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus those the gateway owns on each side.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Whether a `Content-Type` value is JSON (`application/json`, any parameters, any case).
pub fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Copies client headers for the upstream request, dropping hop-by-hop headers, `Host`,
/// the body length (recomputed), compression negotiation (the gateway reads answers), and the
/// client's credentials: a gateway key must never reach a provider.
pub fn upstream_request_headers(src: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(src.len());
    for (name, value) in src {
        if is_hop_by_hop(name)
            || matches!(
                name.as_str(),
                "host"
                    | "content-length"
                    | "authorization"
                    | "x-api-key"
                    | "accept-encoding"
                    | "cookie"
            )
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Whether a `Set-Cookie` from an upstream names one of the gateway's own cookies. Browsers do
/// not keep cookies apart by port, so one set through a proxy would reach the admin console on
/// the same host (a planted session: the console would act as someone else).
fn sets_console_cookie(v: &HeaderValue) -> bool {
    // The whole `name=value` pair counts: a cookie with an empty name (`=palisade_session=x`)
    // comes back from browsers as `palisade_session=x`.
    let pair = v
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    String::from_utf8_lossy(pair)
        .to_ascii_lowercase()
        .contains("palisade")
}

/// Copies upstream response headers for the client, dropping hop-by-hop headers and, when the
/// gateway re-frames the body, `Content-Length`.
pub fn client_response_headers(src: &HeaderMap, keep_length: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(src.len() + 4);
    for (name, value) in src {
        if is_hop_by_hop(name)
            || (!keep_length && name == http::header::CONTENT_LENGTH)
            || (name == http::header::SET_COOKIE && sets_console_cookie(value))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_changed_in_place_are_read_again_and_a_bad_change_is_not_taken() {
        let fixture = |p: &str| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../palisade/tests/fixtures")
                .join(p)
        };
        let dir = std::env::temp_dir().join(format!("palisade-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("c.key"));
        let put = |from: &str, to: &std::path::Path| {
            std::fs::copy(fixture(from), to).unwrap();
        };
        put("client-tls/stranger.pem", &cert);
        put("client-tls/stranger.key", &key);
        let source = TlsSource::open(
            None,
            Some(ClientIdentity {
                cert: &cert,
                key: &key,
            }),
        )
        .unwrap();
        let first = source.current();
        assert!(std::sync::Arc::ptr_eq(&first, &source.current()));
        // Half a renewal (a key that is not the certificate's): the old settings stay.
        std::thread::sleep(TLS_LOOK + Duration::from_millis(100));
        put("client-tls/client.key", &key);
        assert!(std::sync::Arc::ptr_eq(&first, &source.current()));
        // The whole renewal: new settings.
        std::thread::sleep(TLS_LOOK + Duration::from_millis(100));
        put("client-tls/client.pem", &cert);
        let renewed = source.current();
        assert!(!std::sync::Arc::ptr_eq(&first, &renewed));
        assert!(renewed.client_auth_cert_resolver.has_certs());
        // Nothing changed since: the same settings, the files looked at once a second at most.
        std::thread::sleep(TLS_LOOK + Duration::from_millis(100));
        assert!(std::sync::Arc::ptr_eq(&renewed, &source.current()));
        // Files that cannot be used say which and why.
        let id = Some(ClientIdentity {
            cert: &cert,
            key: &key,
        });
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = TlsSource::open(None, id).unwrap_err();
        assert_eq!(e.file, Some(TlsFile::Key));
        assert!(e.message.contains("encrypted private key"), "{e}");
        put("client-tls/stranger.key", &key);
        let e = TlsSource::open(None, id).unwrap_err();
        assert_eq!(e.file, Some(TlsFile::Key));
        assert!(e.message.contains("is not the private key of"), "{e}");
        std::fs::write(&cert, "").unwrap();
        let e = TlsSource::open(None, id).unwrap_err();
        assert_eq!(e.file, Some(TlsFile::Cert));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn guarded_names_never_resolve_to_metadata_addresses() {
        use tower_service::Service;
        let name = |h: &str| {
            h.parse::<hyper_util::client::legacy::connect::dns::Name>()
                .unwrap()
        };
        for h in [
            "169.254.169.254",
            "2852039166",
            "0251.0376.0251.0376",
            "0.0.0.0",
        ] {
            let e = GuardedResolver.call(name(h)).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{h}");
        }
        let ok: Vec<_> = GuardedResolver
            .call(name("127.0.0.1"))
            .await
            .unwrap()
            .collect();
        assert_eq!(ok[0].ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn an_upstream_cannot_set_the_consoles_cookies() {
        let mut h = HeaderMap::new();
        for c in [
            "palisade_session=x; Path=/api",
            " Palisade_CSRF=y",
            "__Host-palisade_session=z; Path=/",
            "=palisade_session=evil; Path=/",
            "lb=abc; Path=/",
        ] {
            h.append(http::header::SET_COOKIE, HeaderValue::from_str(c).unwrap());
        }
        let out = client_response_headers(&h, true);
        let kept: Vec<_> = out.get_all(http::header::SET_COOKIE).iter().collect();
        assert_eq!(kept, ["lb=abc; Path=/"]);
    }

    #[test]
    fn target_joins_base_path() {
        let t = UpstreamTarget::parse("https://example.test:8443/openai/").unwrap();
        assert_eq!(
            t.uri_for("/v1/models?x=1").unwrap().to_string(),
            "https://example.test:8443/openai/v1/models?x=1"
        );
        assert_eq!(t.host, "example.test:8443");
        let v1 = UpstreamTarget::parse("https://api.example.test/v1/").unwrap();
        for (client, upstream) in [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/models?x=1", "/v1/models?x=1"),
            ("/chat/completions", "/v1/chat/completions"),
            ("/v1beta/models", "/v1/v1beta/models"),
        ] {
            assert_eq!(
                v1.uri_for(client).unwrap().to_string(),
                format!("https://api.example.test{upstream}"),
                "{client}"
            );
        }
    }

    #[test]
    fn credentials_and_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer pal_secret"),
        );
        h.insert("x-api-key", HeaderValue::from_static("pal_secret"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let out = upstream_request_headers(&h);
        assert!(out.get("authorization").is_none() && out.get("x-api-key").is_none());
        assert!(out.get("connection").is_none());
        assert_eq!(out.get("anthropic-version").unwrap(), "2023-06-01");
        assert_eq!(out.len(), 2);
    }
}
