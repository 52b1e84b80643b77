//! Identity providers: OpenID Connect servers (Google, Azure AD, Okta, Auth0, GitLab,
//! Keycloak…) through which users sign in on the OAuth pages of the gateway's proxies.
//!
//! The gateway is an ordinary confidential client of the provider (authorization code flow with
//! PKCE and a nonce). It reads the ID token it receives straight from the provider's token
//! endpoint over TLS, so it checks the token's claims (issuer, audience, expiry, nonce) and
//! relies on the TLS connection for the token's origin, as OpenID Connect Core §3.1.3.7 allows
//! for a token obtained that way. The user is named by their verified e-mail address.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::model::{FieldError, validate_name};

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

/// An OpenID Connect provider. Its client secret is not part of the spec: it is given beside
/// it, stored encrypted, and never returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderSpec {
    /// Unique name; proxies name it in `oauth_provider`.
    pub name: String,
    /// The provider's issuer URL (`https://accounts.google.com`); its configuration is read
    /// from `<issuer>/.well-known/openid-configuration`. `http://` only on this machine.
    pub issuer: String,
    /// The client id the provider gave the gateway.
    pub client_id: String,
    /// Scopes asked for (default `openid email profile`; `openid` is required).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// E-mail domains whose users may sign in (`example.com`); empty: any domain the provider
    /// vouches for. Set it for a provider anyone can have an account with (Google, GitLab).
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// A verified address the gateway has no user for becomes a user with the `member` role
    /// on first sign-in (default: only existing users, named by their e-mail address).
    #[serde(default)]
    pub create_users: bool,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
}

/// Whether a URL's host is this machine (`127.0.0.1`, `[::1]`, `localhost`).
pub fn is_loopback_url(uri: &http::Uri) -> bool {
    uri.host()
        .is_some_and(|h| matches!(h, "127.0.0.1" | "[::1]" | "::1" | "localhost"))
}

/// A URL of the provider (its issuer or an endpoint it names): `https://`, or `http://` on this
/// machine; a host, no credentials, no fragment.
pub fn check_provider_url(field: &str, url: &str) -> Result<http::Uri, FieldError> {
    let bad = |m: &str| Err(FieldError::new(field, m.to_string()));
    if url.len() > 2048 {
        return bad("is longer than 2 KiB");
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return bad("is not a URL");
    };
    let local_http = uri.scheme_str() == Some("http") && is_loopback_url(&uri);
    if uri.scheme_str() != Some("https") && !local_http {
        return bad(
            "must be an https:// URL (http:// only for a provider on this machine): tokens cross it",
        );
    }
    match uri.authority() {
        None => return bad("has no host"),
        Some(a) if a.as_str().contains('@') || a.host().is_empty() => {
            return bad("must name a host and carry no credentials");
        }
        Some(_) => {}
    }
    if url.contains('#') {
        return bad("must not have a fragment");
    }
    Ok(uri)
}

impl IdentityProviderSpec {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name("name", &self.name)?;
        let uri = check_provider_url("issuer", &self.issuer)?;
        if uri.query().is_some() {
            return Err(FieldError::new("issuer", "must not have a query"));
        }
        if self.client_id.is_empty()
            || self.client_id.len() > 512
            || !self.client_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(FieldError::new(
                "client_id",
                "must be 1–512 printable characters without spaces",
            ));
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err(FieldError::new(
                "scopes",
                "must include `openid` (the sign-in is OpenID Connect)",
            ));
        }
        if self.scopes.len() > 16
            || self.scopes.iter().any(|s| {
                s.is_empty()
                    || s.len() > 128
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            })
        {
            return Err(FieldError::new(
                "scopes",
                "at most 16 scopes, each 1–128 printable characters without spaces, quotes or backslashes",
            ));
        }
        if self.allowed_domains.len() > 64 {
            return Err(FieldError::new("allowed_domains", "at most 64 domains"));
        }
        for (i, d) in self.allowed_domains.iter().enumerate() {
            let ok = !d.is_empty()
                && d.len() <= 253
                && !d.starts_with(['.', '-'])
                && d.contains('.')
                && d.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !ok {
                return Err(FieldError::new(
                    format!("allowed_domains[{i}]"),
                    "must be a domain name in lower case (`example.com`)",
                ));
            }
        }
        if self.description.len() > 1024 {
            return Err(FieldError::new("description", "at most 1 KiB"));
        }
        Ok(())
    }

    /// Whether `email` (already verified by the provider) is in one of the allowed domains.
    pub fn admits_email(&self, email: &str) -> bool {
        let Some((_, domain)) = email.rsplit_once('@') else {
            return false;
        };
        let domain = domain.to_ascii_lowercase();
        self.allowed_domains.is_empty() || self.allowed_domains.contains(&domain)
    }
}

/// What the gateway uses of a provider's configuration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    /// Where users are sent to sign in.
    pub authorization_endpoint: String,
    /// Where codes are exchanged.
    pub token_endpoint: String,
    /// The provider takes the client secret in the form body only (`client_secret_post`);
    /// otherwise in HTTP Basic (`client_secret_basic`, the default of the specification).
    pub secret_in_form: bool,
}

/// Reads a provider's configuration document (OpenID Connect Discovery §3): its issuer must be
/// the configured one exactly (§4.3), its endpoints [`check_provider_url`] and on this machine
/// only when the issuer is (a remote provider's document does not send the gateway, or its
/// client secret, to a service of the gateway's own host), and it must serve the code flow.
pub fn provider_metadata(doc: &Value, issuer: &str) -> Result<ProviderMetadata, String> {
    let local_issuer = issuer
        .parse::<http::Uri>()
        .is_ok_and(|u| is_loopback_url(&u));
    if doc["issuer"].as_str() != Some(issuer) {
        return Err(format!(
            "its configuration names another issuer ({}) than the one configured ({issuer})",
            doc["issuer"]
        ));
    }
    let endpoint = |k: &str| -> Result<String, String> {
        let u = doc[k]
            .as_str()
            .ok_or_else(|| format!("its configuration has no `{k}`"))?;
        let uri = check_provider_url(k, u).map_err(|e| format!("its `{k}` {}", e.message))?;
        let local = uri.host().is_some_and(names_this_machine);
        if local && !local_issuer {
            return Err(format!(
                "its `{k}` is on the gateway's own machine while the issuer is not"
            ));
        }
        Ok(u.to_string())
    };
    if let Some(types) = doc["response_types_supported"].as_array()
        && !types.iter().any(|t| t == "code")
    {
        return Err("it does not offer the authorization code flow".into());
    }
    let methods = doc["token_endpoint_auth_methods_supported"].as_array();
    let has = |m: &str| methods.is_some_and(|a| a.iter().any(|x| x == m));
    Ok(ProviderMetadata {
        authorization_endpoint: endpoint("authorization_endpoint")?,
        token_endpoint: endpoint("token_endpoint")?,
        secret_in_form: methods.is_some()
            && !has("client_secret_basic")
            && has("client_secret_post"),
    })
}

/// Whether a URL host names this machine in any spelling: `localhost` (and names under it), a
/// loopback or unspecified address, an IPv4-mapped one, or a number-ended name resolvers read
/// as an address (`127.1`, `2130706433`). Names that resolve to loopback are not seen here.
fn names_this_machine(host: &str) -> bool {
    let h = host
        .trim_matches(['[', ']'])
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if h == "localhost" || h.ends_with(".localhost") {
        return true;
    }
    match h.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => h
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x")),
    }
}

/// Who an ID token says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityClaims {
    /// The provider's id of the user (`sub`).
    pub subject: String,
    /// Their e-mail address, verified by the provider, in lower case.
    pub email: String,
}

/// Longest ID token read.
const MAX_ID_TOKEN: usize = 16 * 1024;
/// Clock difference allowed with the provider.
const SKEW_S: i64 = 120;

/// Checks the claims of an ID token received from the provider's token endpoint (OpenID Connect
/// Core §3.1.3.7): issued by `issuer`, for `client_id` (as its only audience or, among several,
/// as `azp`), not expired, carrying the `nonce` of this sign-in, and naming a verified e-mail
/// address.
pub fn check_id_token(
    token: &str,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now_s: i64,
) -> Result<IdentityClaims, String> {
    use base64::Engine as _;
    if token.len() > MAX_ID_TOKEN {
        return Err("the ID token is too long".into());
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err("the ID token is not a signed JWT".into());
    }
    let decode = |p: &str| -> Result<Value, String> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p.trim_end_matches('='))
            .map_err(|_| "the ID token is not base64url".to_string())?;
        serde_json::from_slice(&raw).map_err(|_| "the ID token is not JSON".to_string())
    };
    let header = decode(parts[0])?;
    if header["alg"]
        .as_str()
        .is_none_or(|a| a.eq_ignore_ascii_case("none"))
    {
        return Err("the ID token is not signed".into());
    }
    let c = decode(parts[1])?;
    if c["iss"].as_str() != Some(issuer) {
        return Err("the ID token was issued by another issuer".into());
    }
    let aud_ok = match &c["aud"] {
        Value::String(a) => a == client_id,
        Value::Array(list) => {
            list.iter().any(|a| a == client_id)
                && (list.len() == 1 || c["azp"].as_str() == Some(client_id))
        }
        _ => false,
    };
    if !aud_ok {
        return Err("the ID token is for another client".into());
    }
    match c["exp"].as_i64() {
        Some(exp) if exp + SKEW_S > now_s => {}
        Some(_) => return Err("the ID token has expired".into()),
        None => return Err("the ID token has no expiry".into()),
    }
    if c["iat"].as_i64().is_some_and(|iat| iat > now_s + SKEW_S) {
        return Err("the ID token was issued in the future".into());
    }
    // Compared whole; the nonce is ours and random, so equality in variable time tells nothing.
    if c["nonce"].as_str() != Some(nonce) {
        return Err("the ID token does not answer this sign-in (nonce)".into());
    }
    let subject = c["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or("the ID token names no subject")?
        .to_string();
    let email = c["email"]
        .as_str()
        .filter(|e| e.contains('@'))
        .ok_or("the provider gave no e-mail address (ask for the `email` scope)")?
        .to_ascii_lowercase();
    // Some providers write the flag as a string.
    let verified = matches!(&c["email_verified"], Value::Bool(true))
        || c["email_verified"].as_str() == Some("true");
    if !verified {
        return Err(format!("the provider has not verified the address {email}"));
    }
    Ok(IdentityClaims { subject, email })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn spec() -> IdentityProviderSpec {
        serde_json::from_value(
            json!({"name": "corp", "issuer": "https://id.example.com", "client_id": "palisade"}),
        )
        .unwrap()
    }

    #[test]
    fn providers_are_https_unless_on_this_machine_and_ask_for_openid() {
        let s = spec();
        s.validate().unwrap();
        assert_eq!(s.scopes, ["openid", "email", "profile"]);
        let bad = |patch: Value, field: &str| {
            let mut v = serde_json::to_value(spec()).unwrap();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let s: IdentityProviderSpec = serde_json::from_value(v).unwrap();
            assert_eq!(s.validate().unwrap_err().field, field, "{patch}");
        };
        bad(json!({"issuer": "http://id.example.com"}), "issuer");
        bad(json!({"issuer": "https://u:p@id.example.com"}), "issuer");
        bad(json!({"issuer": "https://id.example.com/?x=1"}), "issuer");
        bad(json!({"issuer": "not a url"}), "issuer");
        bad(json!({"client_id": ""}), "client_id");
        bad(json!({"client_id": "a b"}), "client_id");
        bad(json!({"scopes": ["email"]}), "scopes");
        bad(json!({"scopes": ["openid", "a\"b"]}), "scopes");
        bad(
            json!({"allowed_domains": ["Example.com"]}),
            "allowed_domains[0]",
        );
        bad(
            json!({"allowed_domains": ["localhost"]}),
            "allowed_domains[0]",
        );
        bad(json!({"name": "Corp"}), "name");
        let mut local = spec();
        local.issuer = "http://127.0.0.1:9000/realms/x".into();
        local.validate().unwrap();
    }

    #[test]
    fn allowed_domains_match_the_whole_domain() {
        let mut s = spec();
        assert!(s.admits_email("mia@anything.org"));
        s.allowed_domains = vec!["example.com".into()];
        assert!(s.admits_email("mia@example.com"));
        assert!(s.admits_email("mia@EXAMPLE.com"));
        assert!(!s.admits_email("mia@evil-example.com"));
        assert!(!s.admits_email("mia@example.com.evil.org"));
        assert!(!s.admits_email("mia@sub.example.com"));
        assert!(!s.admits_email("mia"));
    }

    #[test]
    fn provider_metadata_must_name_the_configured_issuer() {
        let doc = json!({
            "issuer": "https://id.example.com",
            "authorization_endpoint": "https://id.example.com/auth",
            "token_endpoint": "https://id.example.com/token",
            "response_types_supported": ["code", "id_token"],
        });
        let m = provider_metadata(&doc, "https://id.example.com").unwrap();
        assert_eq!(m.token_endpoint, "https://id.example.com/token");
        assert!(!m.secret_in_form);
        assert!(provider_metadata(&doc, "https://id.example.com/").is_err());
        let mut d = doc.clone();
        d["token_endpoint"] = json!("http://id.example.com/token");
        assert!(provider_metadata(&d, "https://id.example.com").is_err());
        for local in [
            "https://127.0.0.1:8080/token",
            "https://localhost/token",
            "https://LOCALHOST/token",
            "https://a.localhost/token",
            "https://[::1]/t",
            "https://127.0.0.2/t",
            "https://127.1/t",
            "https://2130706433/t",
            "https://[::ffff:127.0.0.1]/t",
            "https://0.0.0.0/t",
        ] {
            let mut d = doc.clone();
            d["token_endpoint"] = json!(local);
            let e = provider_metadata(&d, "https://id.example.com").unwrap_err();
            assert!(e.contains("own machine"), "{local}: {e}");
        }
        let local = json!({"issuer": "http://127.0.0.1:9400", "response_types_supported": ["code"],
            "authorization_endpoint": "http://127.0.0.1:9400/authorize", "token_endpoint": "http://localhost:9400/token"});
        provider_metadata(&local, "http://127.0.0.1:9400").unwrap();
        let mut d = doc.clone();
        d["response_types_supported"] = json!(["id_token"]);
        assert!(provider_metadata(&d, "https://id.example.com").is_err());
        let mut d = doc.clone();
        d["token_endpoint_auth_methods_supported"] = json!(["client_secret_post"]);
        assert!(
            provider_metadata(&d, "https://id.example.com")
                .unwrap()
                .secret_in_form
        );
        d["token_endpoint_auth_methods_supported"] =
            json!(["client_secret_post", "client_secret_basic"]);
        assert!(
            !provider_metadata(&d, "https://id.example.com")
                .unwrap()
                .secret_in_form
        );
    }

    fn jwt(claims: Value) -> String {
        let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", e(&json!({"alg": "RS256"})), e(&claims))
    }

    #[test]
    fn id_tokens_must_answer_this_sign_in_for_this_client() {
        let iss = "https://id.example.com";
        let good = json!({"iss": iss, "aud": "palisade", "exp": 2_000, "iat": 1_000,
            "nonce": "n-1", "sub": "u-1", "email": "Mia@Example.com", "email_verified": true});
        let check = |c: &Value| check_id_token(&jwt(c.clone()), iss, "palisade", "n-1", 1_500);
        assert_eq!(
            check(&good).unwrap(),
            IdentityClaims {
                subject: "u-1".into(),
                email: "mia@example.com".into()
            }
        );
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        for (c, why) in [
            (with("iss", json!("https://evil.example.com")), "issuer"),
            (with("aud", json!("someone-else")), "another client"),
            (with("aud", json!(["palisade", "x"])), "another client"),
            (with("exp", json!(1_000)), "expired"),
            (with("iat", json!(9_000)), "future"),
            (with("nonce", json!("n-2")), "nonce"),
            (with("email_verified", json!(false)), "verified"),
            (with("email", json!(null)), "e-mail"),
            (with("sub", json!("")), "subject"),
        ] {
            let e = check(&c).unwrap_err();
            assert!(e.contains(why), "{e} / {why}");
        }
        let mut several = with("aud", json!(["palisade", "x"]));
        several["azp"] = json!("palisade");
        check(&several).unwrap();
        check(&with("email_verified", json!("true"))).unwrap();
        // Unsigned or malformed tokens.
        let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let unsigned = format!("{}.{}.", e(&json!({"alg": "none"})), e(&good));
        assert!(check_id_token(&unsigned, iss, "palisade", "n-1", 1_500).is_err());
        assert!(check_id_token("a.b", iss, "palisade", "n-1", 1_500).is_err());
        assert!(check_id_token("!!.!!.!!", iss, "palisade", "n-1", 1_500).is_err());
    }
}
