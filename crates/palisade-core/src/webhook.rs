//! Alert delivery: the webhooks an administrator points alerts at, and what is sent to them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{FieldError, validate_name};
use crate::record::AlertRecord;

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"webhook": …, "alerts": [AlertRecord…]}`: for SIEMs, scripts and incident tools.
    #[default]
    Json,
    /// `{"text": …}`, one line per alert: a Slack (or Mattermost) incoming webhook.
    Slack,
    /// Syslog (RFC 5424 messages, octet-counted as RFC 6587 and RFC 5425 frame them) whose text
    /// is ArcSight CEF: for a SIEM's syslog collector. The URL is `tls://host:port` (syslog over
    /// TLS, the collector's certificate checked) or `tcp://host:port` (plain TCP).
    Syslog,
}

/// The kinds of alert the gateway raises.
pub const ALERT_KINDS: [&str; 4] = ["policy", "budget", "mcp_tool", "mcp_answer"];

/// Alert severities, lowest first.
pub const SEVERITIES: [&str; 4] = ["low", "medium", "high", "critical"];

/// Rank of a severity in [`SEVERITIES`] (an unknown one ranks highest, so it is never filtered
/// out by mistake).
pub fn severity_rank(s: &str) -> usize {
    SEVERITIES
        .iter()
        .position(|x| *x == s)
        .unwrap_or(SEVERITIES.len())
}

fn low() -> String {
    "low".into()
}

fn yes() -> bool {
    true
}

/// A destination for alerts. Its signing secret is not part of the spec: it is given beside it,
/// stored encrypted, and never returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Unique name.
    pub name: String,
    /// `http://` or `https://` URL the alerts are POSTed to.
    pub url: String,
    /// Body shape (default `json`).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Lowest severity delivered: `low` (default, every alert), `medium`, `high`, `critical`.
    #[serde(default = "low")]
    pub min_severity: String,
    /// Alert kinds delivered (`policy`, `budget`, `mcp_tool`, `mcp_answer`…); empty: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// A disabled webhook keeps its place in the alert log and delivers nothing until enabled
    /// again (then it catches up).
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl WebhookSpec {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name("name", &self.name)?;
        match self.format {
            WebhookFormat::Syslog => check_syslog_url(&self.url)?,
            _ => check_url(&self.url)?,
        }
        if !SEVERITIES.contains(&self.min_severity.as_str()) {
            return Err(FieldError::new(
                "min_severity",
                format!("must be one of {}", SEVERITIES.join(", ")),
            ));
        }
        if self.kinds.len() > 16 {
            return Err(FieldError::new("kinds", "at most 16 kinds"));
        }
        if let Some(k) = self
            .kinds
            .iter()
            .find(|k| !ALERT_KINDS.contains(&k.as_str()))
        {
            return Err(FieldError::new(
                "kinds",
                format!(
                    "`{k}` is not an alert kind; kinds: {}",
                    ALERT_KINDS.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Whether this webhook takes `a`.
    pub fn wants(&self, a: &AlertRecord) -> bool {
        severity_rank(&a.severity) >= severity_rank(&self.min_severity)
            && (self.kinds.is_empty() || self.kinds.contains(&a.kind))
    }
}

/// A syslog collector's address: `tls://host:port` or `tcp://host:port`, the host not
/// link-local or unspecified.
fn check_syslog_url(url: &str) -> Result<(), FieldError> {
    let bad = |m: &str| Err(FieldError::new("url", m.to_string()));
    let Some(rest) = syslog_scheme(url).map(|(_, rest)| rest) else {
        return bad(
            "must be tls://host:port (syslog over TLS) or tcp://host:port (plain TCP) for format `syslog`",
        );
    };
    // The same host checks as an http URL: written as one.
    check_outbound_url(&format!("http://{rest}"), "syslog takes none")?;
    let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
    if rest.len() != auth.len() && rest != format!("{auth}/") {
        return bad(
            "must be tls://host:port or tcp://host:port, without a path, query or fragment",
        );
    }
    if auth
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().map_or(true, |p| p == 0))
        || auth.ends_with(']')
    {
        return bad("must name a port, e.g. tls://siem.example.com:6514");
    }
    Ok(())
}

/// Whether a syslog URL asks for TLS, and what follows its scheme (`tls://` or `tcp://`, in
/// any case).
fn syslog_scheme(url: &str) -> Option<(bool, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.eq_ignore_ascii_case("tls") {
        Some((true, rest))
    } else if scheme.eq_ignore_ascii_case("tcp") {
        Some((false, rest))
    } else {
        None
    }
}

/// Where a syslog webhook sends: a collector's host and port, over TLS or plain TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// `tls://`: the collector's certificate is checked against the gateway's roots.
    pub tls: bool,
    /// A name or an address (an IPv6 one without its brackets).
    pub host: String,
    pub port: u16,
}

/// The collector of a `tls://host:port` or `tcp://host:port` syslog URL.
pub fn syslog_target(url: &str) -> Option<SyslogTarget> {
    let (tls, rest) = syslog_scheme(url)?;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    Some(SyslogTarget {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: port.parse().ok()?,
    })
}

/// A webhook URL: [`check_outbound_url`], pointing at the signing secret for credentials.
fn check_url(url: &str) -> Result<(), FieldError> {
    check_outbound_url(url, "give a `secret`; requests are signed with it")
}

/// A URL the gateway is asked to reach (a webhook, a server to scan): absolute `http`/`https`
/// with a host, no credentials in it (`hint` says where they go instead), at most 2 KiB; not
/// a link-local or unspecified address ([`is_metadata_or_unspecified`]), in any spelling (names
/// resolving to one are refused when connecting, by the gateway's guarded resolver).
pub fn check_outbound_url(url: &str, hint: &str) -> Result<(), FieldError> {
    let bad = |m: &str| Err(FieldError::new("url", m.to_string()));
    if url.len() > 2048 {
        return bad("is longer than 2 KiB");
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return bad("is not a URL");
    };
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
        return bad("must start with http:// or https://");
    }
    let Some(auth) = uri.authority() else {
        return bad("has no host");
    };
    if auth.as_str().contains('@') {
        return bad(&format!("must not carry credentials ({hint})"));
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return bad("has no host");
    }
    if let Some(port) = auth
        .as_str()
        .strip_prefix(auth.host())
        .and_then(|r| r.strip_prefix(':'))
        && port.parse::<u16>().is_err()
    {
        return bad("has an invalid port");
    }
    match host.parse() {
        Ok(ip) if is_metadata_or_unspecified(ip) => {
            return bad("is a link-local or unspecified address");
        }
        Ok(_) => {}
        // A name whose last label is a number is an address in another spelling
        // (`2852039166`, `0251.0376.0251.0376`, `169.254.169.254.`), which resolvers accept.
        Err(_) => {
            let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
            let lower = last.to_ascii_lowercase();
            if last.bytes().all(|b| b.is_ascii_digit()) || lower.starts_with("0x") {
                return bad(
                    "is an address in an unusual spelling; write IPv4 as four decimal numbers",
                );
            }
        }
    }
    Ok(())
}

/// Whether an address is link-local (`169.254.0.0/16`, `fe80::/10`: where cloud metadata
/// services answer, e.g. 169.254.169.254, and no webhook receiver lives), AWS's IPv6 metadata
/// address, or unspecified (`0.0.0.0` connects to this host). Deliveries never connect to one,
/// whatever a host name resolves to.
pub fn is_metadata_or_unspecified(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local() || v4.is_unspecified(),
        std::net::IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || embedded_v4s(v6)
                    .into_iter()
                    .flatten()
                    .any(|v4| v4.is_link_local() || v4.is_unspecified())
        }
    }
}

/// Every IPv4 address an IPv6 one carries: [`embedded_v4`], a 6to4 gateway (`2002:a.b.c.d::`)
/// and a Teredo server and client (`2001:0:server::` with the client's address inverted in the
/// last 32 bits).
fn embedded_v4s(v6: std::net::Ipv6Addr) -> [Option<std::net::Ipv4Addr>; 3] {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
    };
    let six_to_four = (s[0] == 0x2002).then(|| v4(s[1], s[2]));
    let (server, client) = if s[0] == 0x2001 && s[1] == 0 {
        (Some(v4(s[2], s[3])), Some(v4(!s[6], !s[7])))
    } else {
        (None, None)
    };
    [embedded_v4(v6).or(six_to_four), server, client]
}

/// The IPv4 address inside an IPv6 one that carries it: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let low = std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s[..6] {
        [0, 0, 0, 0, 0, 0xffff] | [0x64, 0xff9b, 0, 0, 0, 0] => Some(low),
        [0, 0, 0, 0, 0, 0] if s[6] != 0 => Some(low),
        _ => None,
    }
}

/// Checks a webhook's signing secret: 16 to 256 bytes, no spaces at either end (a receiver
/// configured with the trimmed text would reject every signature).
pub fn check_secret(secret: &str) -> Result<(), FieldError> {
    if !(16..=256).contains(&secret.len()) || secret.trim() != secret {
        return Err(FieldError::new(
            "secret",
            "must be 16 to 256 bytes, without spaces at either end",
        ));
    }
    Ok(())
}

/// How a webhook URL is shown (API, console, audit log): scheme and host only, since the path
/// or query of a chat webhook is its credential (`https://hooks.example.test/…`).
pub fn shown_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => {
            let rest = u.path_and_query().map_or("", |p| p.as_str());
            let tail = if rest.is_empty() || rest == "/" {
                "/"
            } else {
                "/…"
            };
            format!(
                "{}://{}{tail}",
                u.scheme_str().unwrap_or("?"),
                u.authority().map_or("?", |a| a.as_str())
            )
        }
        Err(_) => "…".into(),
    }
}

/// The signature header of a delivery signed with `secret`: `t=<unix seconds>,v1=<hex
/// HMAC-SHA256 of "<t>.<body>">`. A receiver recomputes it and refuses old timestamps.
pub fn signature(secret: &str, unix_s: i64, body: &[u8]) -> String {
    let mut msg = format!("{unix_s}.").into_bytes();
    msg.extend_from_slice(body);
    let mac = crate::crypto::hmac_sha256(secret.as_bytes(), &msg);
    format!("t={unix_s},v1={}", crate::crypto::hex(&mac))
}

/// The body of one delivery of `alerts` to webhook `name` in `format`.
pub fn delivery_body(name: &str, format: WebhookFormat, alerts: &[AlertRecord]) -> Vec<u8> {
    let v = match format {
        WebhookFormat::Json => serde_json::json!({ "webhook": name, "alerts": alerts }),
        WebhookFormat::Slack => {
            let lines: Vec<String> = alerts.iter().map(slack_line).collect();
            serde_json::json!({ "text": lines.join("\n") })
        }
        WebhookFormat::Syslog => return syslog_frames(alerts),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// CEF header field: `\` and `|` escaped, line breaks as spaces.
fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

/// CEF extension value: `\` and `=` escaped, line breaks as `\n`.
fn cef_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace("\r\n", "\\n")
        .replace(['\r', '\n'], "\\n")
}

/// One alert as an RFC 5424 syslog message (facility local0) carrying a CEF event.
pub fn syslog_message(a: &AlertRecord) -> String {
    let (cef_sev, sys_sev) = match a.severity.as_str() {
        "critical" => (10, 2),
        "high" => (8, 3),
        "medium" => (5, 4),
        _ => (3, 5),
    };
    let signature = match (&a.policy_id, &a.rule_id) {
        (Some(p), Some(r)) => format!("{p}/{r}"),
        _ => a.kind.clone(),
    };
    let mut ext = vec![
        format!("rt={}", a.ts_ms),
        format!("externalId={}", cef_value(&a.id)),
        format!("cat={}", cef_value(&a.kind)),
        format!("act={}", if a.blocked { "blocked" } else { "alerted" }),
        format!("msg={}", cef_value(&a.message)),
    ];
    let mut custom = |n: usize, label: &str, v: &Option<String>| {
        if let Some(v) = v {
            ext.push(format!("cs{n}Label={label} cs{n}={}", cef_value(v)));
        }
    };
    custom(1, "proxy", &a.proxy);
    custom(2, "group", &a.group);
    custom(3, "key", &a.key_name);
    custom(4, "requestId", &a.request_id);
    custom(5, "excerpt", &a.excerpt);
    let cef = format!(
        "CEF:0|Palisade|Palisade Gateway|{}|{}|{}|{cef_sev}|{}",
        env!("CARGO_PKG_VERSION"),
        cef_header(&signature),
        cef_header(&a.title),
        ext.join(" ")
    );
    format!(
        "<{}>1 {} - palisade - alert - {cef}",
        16 * 8 + sys_sev,
        crate::spend::utc_timestamp(a.ts_ms)
    )
}

/// `alerts` as octet-counted syslog frames (`<length> <message>`), one per alert.
pub fn syslog_frames(alerts: &[AlertRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in alerts {
        let m = syslog_message(a);
        out.extend_from_slice(format!("{} ", m.len()).as_bytes());
        out.extend_from_slice(m.as_bytes());
    }
    out
}

/// One alert as a line of chat text. Slack reads `<`, `>` and `&` as markup, so they are escaped.
fn slack_line(a: &AlertRecord) -> String {
    let mut s = format!("[{}] {}", a.severity.to_uppercase(), a.title);
    let mut at = Vec::new();
    if let Some(p) = &a.proxy {
        at.push(format!("proxy {p}"));
    }
    if let Some(g) = &a.group {
        at.push(format!("group {g}"));
    }
    if let Some(k) = &a.key_name {
        at.push(format!("key {k}"));
    }
    if !at.is_empty() {
        s.push_str(&format!(" ({})", at.join(", ")));
    }
    s.push_str(if a.blocked { ": blocked" } else { ": seen" });
    if let Some(r) = &a.request_id {
        s.push_str(&format!(", request {r}"));
    }
    s.push_str(&format!(", alert {}", a.id));
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> WebhookSpec {
        WebhookSpec {
            name: "ops".into(),
            url: url.into(),
            format: WebhookFormat::Json,
            min_severity: "low".into(),
            kinds: vec![],
            enabled: true,
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(
            spec("https://hooks.example.test/services/x")
                .validate()
                .is_ok()
        );
        assert!(spec("http://127.0.0.1:9000/alerts").validate().is_ok());
        assert!(
            spec("http://[2002:c000:204::1]/").validate().is_ok(),
            "6to4 of a public address"
        );
        for bad in [
            "ftp://example.test/",
            "example.test/alerts",
            "https://user:pw@example.test/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://[::ffff:169.254.169.254]/x",
            "http://0.0.0.0:80/",
            "not a url",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://169.254.43518/",
            "http://169.254.169.254./",
            "http://0/",
            "http://[::169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            // 6to4 and Teredo (server, and the client's inverted address).
            "http://[2002:a9fe:a9fe::]/",
            "http://[2001:0:a9fe:a9fe::1]/",
            "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",
            "http://127.0.0.1:99999/",
        ] {
            let e = spec(bad).validate().unwrap_err();
            assert_eq!(e.field, "url", "{bad}");
        }
        let long = format!("https://example.test/{}", "a".repeat(2100));
        assert!(spec(&long).validate().is_err());
    }

    #[test]
    fn syslog_targets_are_tls_or_tcp_addresses() {
        let mut s = spec("tcp://siem.example.test:514");
        s.format = WebhookFormat::Syslog;
        assert!(s.validate().is_ok());
        assert_eq!(
            syslog_target(&s.url),
            Some(SyslogTarget {
                tls: false,
                host: "siem.example.test".into(),
                port: 514
            })
        );
        s.url = "TLS://[::1]:6514/".into();
        assert!(s.validate().is_ok());
        assert_eq!(
            syslog_target(&s.url),
            Some(SyslogTarget {
                tls: true,
                host: "::1".into(),
                port: 6514
            })
        );
        for bad in [
            "https://siem.example.test/",
            "udp://siem.example.test:514",
            "tls://siem.example.test",
            "tls://169.254.169.254:6514",
            "tcp://siem.example.test",
            "tcp://siem.example.test:0",
            "tcp://169.254.169.254:514",
            "tcp://siem.example.test:514/path",
            "tls://siem.example.test:514?x=1",
            "tls://siem.example.test:514#f",
            "tcp://u:p@siem.example.test:514",
        ] {
            s.url = bad.into();
            assert_eq!(s.validate().unwrap_err().field, "url", "{bad}");
        }
    }

    #[test]
    fn syslog_messages_carry_escaped_cef() {
        let a = AlertRecord {
            id: "a1".into(),
            ts_ms: 1_795_622_400_000,
            kind: "policy".into(),
            policy_id: Some("p".into()),
            rule_id: Some("R|1".into()),
            title: "Prompt injection".into(),
            severity: "high".into(),
            blocked: true,
            proxy: Some("oai".into()),
            message: "a=b\nnext".into(),
            ..AlertRecord::default()
        };
        let m = syslog_message(&a);
        assert!(
            m.starts_with(
                "<131>1 2026-11-25T16:00:00Z - palisade - alert - CEF:0|Palisade|Palisade Gateway|"
            ),
            "{m}"
        );
        assert!(m.contains("|p/R\\|1|Prompt injection|8|"), "{m}");
        assert!(m.contains("msg=a\\=b\\nnext"), "{m}");
        assert!(
            m.contains("act=blocked") && m.contains("cs1Label=proxy cs1=oai"),
            "{m}"
        );
        assert!(!m.contains('\n'));
        let frames = syslog_frames(&[a.clone(), a]);
        let text = String::from_utf8(frames).unwrap();
        assert!(text.starts_with(&format!("{} <131>", m.len())), "{text}");
    }

    #[test]
    fn urls_are_shown_without_path() {
        assert_eq!(
            shown_url("https://hooks.example.test/services/T0/B0/XYZ"),
            "https://hooks.example.test/…"
        );
        assert_eq!(shown_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000/");
        assert_eq!(shown_url("http://h.test/?token=1"), "http://h.test/…");
    }

    #[test]
    fn severity_and_kind_filter() {
        let mut s = spec("https://example.test/");
        s.min_severity = "high".into();
        s.kinds = vec!["policy".into()];
        let mut a = AlertRecord {
            kind: "policy".into(),
            severity: "critical".into(),
            ..AlertRecord::default()
        };
        assert!(s.wants(&a));
        a.severity = "medium".into();
        assert!(!s.wants(&a));
        a.severity = "high".into();
        a.kind = "budget".into();
        assert!(!s.wants(&a));
        s.min_severity = "urgent".into();
        assert_eq!(s.validate().unwrap_err().field, "min_severity");
        s.min_severity = "low".into();
        s.kinds = vec!["polcy".into()];
        assert_eq!(s.validate().unwrap_err().field, "kinds");
    }

    #[test]
    fn signature_is_hmac_of_time_and_body() {
        let sig = signature("s3cret", 1_700_000_000, b"{}");
        let mac = crate::crypto::hmac_sha256(b"s3cret", b"1700000000.{}");
        assert_eq!(sig, format!("t=1700000000,v1={}", crate::crypto::hex(&mac)));
    }

    #[test]
    fn slack_text_escapes_markup() {
        let a = AlertRecord {
            id: "a1".into(),
            severity: "high".into(),
            title: "<script> & co".into(),
            proxy: Some("llm".into()),
            blocked: true,
            ..AlertRecord::default()
        };
        let body = delivery_body("ops", WebhookFormat::Slack, &[a]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["text"],
            "[HIGH] &lt;script&gt; &amp; co (proxy llm): blocked, alert a1"
        );
    }
}
