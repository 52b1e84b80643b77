//! Identity providers: OpenID Connect servers (Google, Azure AD, Okta, Auth0, GitLab,
//! Keycloak…) through which users sign in on the OAuth pages of the gateway's proxies.
//!
//! The gateway is an ordinary confidential client of the provider (authorization code flow with
//! PKCE and a nonce). It checks the ID token it receives from the provider's token endpoint:
//! its claims (issuer, audience, expiry, nonce) and its signature, with the provider's published
//! keys or, where the provider signs with HMAC, the client secret. The user is named by their
//! verified e-mail address.

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
    // Where cloud metadata services answer: never a provider.
    if uri
        .host()
        .map(|h| h.trim_matches(['[', ']']))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .is_some_and(crate::webhook::is_metadata_or_unspecified)
    {
        return bad("is a link-local or unspecified address");
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
    /// Where its signing keys are published (a JWK Set).
    pub jwks_uri: String,
    /// It signs ID tokens with the client secret (an `HS…` algorithm among its
    /// `id_token_signing_alg_values_supported`): only then is such a token accepted.
    pub signs_with_secret: bool,
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
        jwks_uri: endpoint("jwks_uri")?,
        signs_with_secret: doc["id_token_signing_alg_values_supported"]
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|x| x.as_str().is_some_and(|x| x.starts_with("HS")))
            }),
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

/// Why an ID token's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No key of the provider's set fits the token (its keys may have rotated: read them again).
    NoKey,
    /// The token is not signed in a way the gateway accepts, or the signature is wrong.
    Invalid(String),
}

/// Largest JWK Set whose keys are tried for a token without a key id.
const MAX_KEYS_TRIED: usize = 16;

/// Checks an ID token's signature (OpenID Connect Core §10): with the provider's published
/// keys (`jwks`, a JWK Set) for RS256/384/512, PS256/384/512, ES256/384 and EdDSA, or with the
/// client secret for HS256/384/512 (§10.1; none: the provider does not sign that way, and such a
/// token is refused). The key is the one the token's `kid` names (or the only fitting key, when
/// it has no `kid`), or any key of a fitting type when the token names none; a key published
/// for encryption is never used.
pub fn verify_id_token_signature(
    token: &str,
    jwks: &Value,
    client_secret: Option<&str>,
) -> Result<(), SignatureError> {
    use base64::Engine as _;
    use ring::signature as sig;
    let invalid = |why: &str| SignatureError::Invalid(why.to_string());
    if token.len() > MAX_ID_TOKEN {
        return Err(invalid("the ID token is too long"));
    }
    let b64 = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| invalid("the ID token is not base64url"))
    };
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| invalid("the ID token is not a signed JWT"))?;
    let (header, _) = signing_input
        .split_once('.')
        .ok_or_else(|| invalid("the ID token is not a signed JWT"))?;
    let header: Value = serde_json::from_slice(&b64(header)?)
        .map_err(|_| invalid("the ID token's header is not JSON"))?;
    let signature = b64(signature)?;
    // RFC 7515 §4.1.11: extensions the token says must be understood; the gateway knows none.
    if !header["crit"].is_null() {
        return Err(invalid(
            "the ID token names critical header extensions the gateway does not implement",
        ));
    }
    let alg = header["alg"].as_str().unwrap_or("");
    let message = signing_input.as_bytes();

    if let Some(bits) = alg.strip_prefix("HS") {
        use hmac::Mac as _;
        let Some(client_secret) = client_secret else {
            return Err(invalid(
                "the ID token is signed with the client secret, which the provider does not say it does",
            ));
        };
        let ok = match bits {
            "256" => hmac::Hmac::<sha2::Sha256>::new_from_slice(client_secret.as_bytes())
                .map(|m| m.chain_update(message).verify_slice(&signature).is_ok()),
            "384" => hmac::Hmac::<sha2::Sha384>::new_from_slice(client_secret.as_bytes())
                .map(|m| m.chain_update(message).verify_slice(&signature).is_ok()),
            "512" => hmac::Hmac::<sha2::Sha512>::new_from_slice(client_secret.as_bytes())
                .map(|m| m.chain_update(message).verify_slice(&signature).is_ok()),
            _ => {
                return Err(invalid(
                    "the ID token is signed with an algorithm not accepted",
                ));
            }
        };
        return if ok.unwrap_or(false) {
            Ok(())
        } else {
            Err(invalid("the ID token's signature is wrong"))
        };
    }
    // (key type, curve) the algorithm needs, and how it checks.
    enum Check {
        Rsa(&'static sig::RsaParameters),
        Point(
            &'static sig::EcdsaVerificationAlgorithm,
            &'static str,
            usize,
        ),
        Ed25519,
    }
    let check = match alg {
        "RS256" => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA256),
        "PS384" => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA384),
        "PS512" => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA512),
        "ES256" => Check::Point(&sig::ECDSA_P256_SHA256_FIXED, "P-256", 32),
        "ES384" => Check::Point(&sig::ECDSA_P384_SHA384_FIXED, "P-384", 48),
        "EdDSA" => Check::Ed25519,
        _ => {
            return Err(invalid(
                "the ID token is signed with an algorithm not accepted",
            ));
        }
    };
    let kid = header["kid"].as_str();
    let keys = jwks["keys"]
        .as_array()
        .ok_or_else(|| invalid("the provider's key set has no `keys`"))?;
    let fits = |k: &&Value| {
        let kty = k["kty"].as_str().unwrap_or("");
        let kind_fits = match check {
            Check::Rsa(_) => kty == "RSA",
            Check::Point(_, crv, _) => kty == "EC" && k["crv"] == crv,
            Check::Ed25519 => kty == "OKP" && k["crv"] == "Ed25519",
        };
        kind_fits
            && k["use"].as_str().is_none_or(|u| u == "sig")
            && k["alg"].as_str().is_none_or(|a| a == alg)
            && kid.is_none_or(|id| k["kid"].as_str() == Some(id))
    };
    let mut candidates: Vec<&Value> = keys.iter().filter(fits).take(MAX_KEYS_TRIED).collect();
    if candidates.is_empty() && kid.is_some() {
        // A provider with one key may publish it without a `kid`.
        let unnamed: Vec<&Value> = keys
            .iter()
            .filter(|k| k["kid"].is_null())
            .filter(|k| {
                let mut k = (*k).clone();
                k["kid"] = Value::from(kid.unwrap_or_default());
                fits(&&k)
            })
            .collect();
        if unnamed.len() == 1 {
            candidates = unnamed;
        }
    }
    if candidates.is_empty() {
        return Err(SignatureError::NoKey);
    }
    let member = |k: &Value, name: &str| -> Option<Vec<u8>> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(k[name].as_str()?)
            .ok()
    };
    for k in candidates {
        let verified = match check {
            Check::Rsa(params) => match (member(k, "n"), member(k, "e")) {
                (Some(n), Some(e)) => sig::RsaPublicKeyComponents { n, e }
                    .verify(params, message, &signature)
                    .is_ok(),
                _ => false,
            },
            Check::Point(algorithm, _, size) => match (member(k, "x"), member(k, "y")) {
                (Some(x), Some(y)) if x.len() == size && y.len() == size => {
                    let point = [&[4u8][..], &x, &y].concat();
                    sig::UnparsedPublicKey::new(algorithm, point)
                        .verify(message, &signature)
                        .is_ok()
                }
                _ => false,
            },
            Check::Ed25519 => member(k, "x").is_some_and(|x| {
                sig::UnparsedPublicKey::new(&sig::ED25519, x)
                    .verify(message, &signature)
                    .is_ok()
            }),
        };
        if verified {
            return Ok(());
        }
    }
    Err(invalid("the ID token's signature is wrong"))
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
        bad(json!({"issuer": "https://169.254.169.254"}), "issuer");
        bad(json!({"issuer": "https://[fe80::1]/realm"}), "issuer");
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
            "jwks_uri": "https://keys.example.com/jwks",
            "response_types_supported": ["code", "id_token"],
        });
        let m = provider_metadata(&doc, "https://id.example.com").unwrap();
        assert_eq!(m.token_endpoint, "https://id.example.com/token");
        assert_eq!(m.jwks_uri, "https://keys.example.com/jwks");
        assert!(!m.signs_with_secret);
        let mut d = doc.clone();
        d["id_token_signing_alg_values_supported"] = json!(["RS256", "HS256"]);
        assert!(
            provider_metadata(&d, "https://id.example.com")
                .unwrap()
                .signs_with_secret
        );
        assert!(!m.secret_in_form);
        let mut d = doc.clone();
        d.as_object_mut().unwrap().remove("jwks_uri");
        assert!(provider_metadata(&d, "https://id.example.com").is_err());
        d["jwks_uri"] = json!("https://localhost/jwks");
        assert!(provider_metadata(&d, "https://id.example.com").is_err());
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
            assert!(
                e.contains("own machine") || e.contains("unspecified"),
                "{local}: {e}"
            );
        }
        let local = json!({"issuer": "http://127.0.0.1:9400", "response_types_supported": ["code"],
            "authorization_endpoint": "http://127.0.0.1:9400/authorize", "token_endpoint": "http://localhost:9400/token",
            "jwks_uri": "http://127.0.0.1:9400/jwks"});
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

    /// A 2048-bit RSA key made for these tests only (PKCS#1, DER, base64).
    const TEST_RSA_KEY: &str = "MIIEowIBAAKCAQEAwhvFMZ9dTTKYRBKjftrPTThpNV5/CaWN9Pd5ycrGP9l+1jWv/ocggizvEcBTD2e/ZTQHQy96LlojRNNWLliz6Cao16uKNJu7pqRqjC8Rp55oOTj/mxf6/HXaDdNc/RPJNBnm64nfF1Pwu6H/kNjofPXjfq0Wsz5M/Jv/DeUC0dkwF/TVw4r6RLSM9gmtWNKsPVcw85ac1e1oEzfLKEM1SPeMQNEdBn+YbQ4s3UDAGr8/asi/G+pup5ohczjPIL6qtwABdsv6U6wEvfae1NLluI0AeVwy565G0jl2ov/wMWrejXNkNsgqkzXFfTpgpvWz0/tONT/Ee4MlfWhcfokhUQIDAQABAoIBADv6bb/MEP3qHM+n/LoVbYncXPH/PXzjGY6wq4K1c/XFxGH3W+bnpR1kOgj/pwqzEZp5bacOdA//jTdWoCIZCZo52+EsYbuoxV6UHlIrtyZWlbjcymqHiefZmKO+BFU0+G5vdIGia/te1ht8TqZYx9nY9s8tN77yCMLjhveppGnnymCZAMCESk87j28exlkWZv/58mD7eXHzk3XDZd6rkI+4cyvBZWbgy7dhYLr+PTgt8VRL8MmEbhjcthavR7IUfKyv3xSL77AXYYFu00U6zKlnMt2MG1x8XMzRSfNCz5e2KseBSMvOvfHRfkvM1g0DXLpVsGjFWiQe9uJ1tTyEqOMCgYEA9+xeJv5dCSBbvXBCcxTKNJdEGzuHtaPzG5GHIVRqi8HQQheCbK5vu9OZouIKvwqdjvvuW0GyjMTc0zhk4WEUSyxVtfkfNkXMKqsYPEF5C9VXtUpVG9bLbNMMwAErsePt50Pbb4buAVnxxUc2mTVXRBSKsVnPdqcOpsQ98NQegPsCgYEAyG6Y5ZprItlFDLMaLr6fWDKjS+OvuzQDROxzYzd2pgKMcX5IpoSYliBSVefU6Dxeef0ZmOj2SIhFlvPIikK06cNumPqhlNF6XqL0RYL/g+I8jYygfdQw0L2lPfEJ1uzaHB+D1tBCNH4zjxO4+vEJCmWo7ANyPUNqefb0/PQWTSMCgYBplQoLxSvN5S/sn1BNPj9W4kyo5FNJMccoqHNJ6G9vkVylqOlsa2U+MkEtsuIstdKfv/6kcngdpwD8GvorWXKRCRJ/ata2AEeQrEin8KIiPfsaQ8u3DWSYtdCqPFVlbtI0ORvMhUP641kpUMiZurOtVKo0GTFXMJH2x4AxfcR33QKBgBOmTBUOa3xyIoPZNzLn+0UxSbMR8lN/COcD61gJwvcJfu1NfR/eFft51biYTtYpvPVmq9DC3gpEWdYvtjRfz86vGzOiNp8ZXk7S2PHLovMyBc+2vrE3UUXVodKNw/IvLD7flBRGPIda7AEV5OetI77CMqpYuCVra4/jdycpYtpTAoGBAK64D0pMNs7MI884hq10aBo+8DgQeMCkoaN2Txjg0KBoRHgS+AMzc0LzWqCIYcpbE/uC0XkNPbP/adHwJGTfJGrB5Ma4cu+8vBoJYh6AZ7PZUdqnyITmzEvlYDCzww83res7MGWBZskRot0gGYJzR4NlcDx4Oxa27ZN1MJBrKwx/";

    fn b64u(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// A token of `header` and some claims, signed by `sign`.
    fn signed(header: Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            b64u(header.to_string().as_bytes()),
            b64u(b"{\"sub\":\"1\"}")
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", b64u(&sig))
    }

    #[test]
    fn id_token_signatures_are_checked_with_the_providers_keys_or_the_client_secret() {
        use ring::signature::{self as sig, KeyPair as _};
        let rng = ring::rand::SystemRandom::new();
        let bad = |r: Result<(), SignatureError>| matches!(r, Err(SignatureError::Invalid(_)));

        // RS256 and PS256 with an RSA key, chosen by `kid`.
        let der = base64::engine::general_purpose::STANDARD
            .decode(TEST_RSA_KEY)
            .unwrap();
        let rsa = sig::RsaKeyPair::from_der(&der).unwrap();
        let public: sig::RsaPublicKeyComponents<Vec<u8>> = rsa.public().into();
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "old", "n": b64u(&public.n), "e": "AQAA"},
            {"kty": "RSA", "kid": "k1", "use": "sig", "n": b64u(&public.n), "e": b64u(&public.e)},
        ]});
        let rs = |alg: &str, kid: &str, pad: &'static dyn sig::RsaEncoding| {
            signed(json!({"alg": alg, "kid": kid}), |m| {
                let mut out = vec![0; rsa.public().modulus_len()];
                rsa.sign(pad, &rng, m, &mut out).unwrap();
                out
            })
        };
        let t = rs("RS256", "k1", &sig::RSA_PKCS1_SHA256);
        assert_eq!(verify_id_token_signature(&t, &jwks, Some("s")), Ok(()));
        assert_eq!(
            verify_id_token_signature(&rs("PS256", "k1", &sig::RSA_PSS_SHA256), &jwks, Some("s")),
            Ok(())
        );
        // Signed with one algorithm, presented as another; an unknown key id; a broken signature.
        assert!(bad(verify_id_token_signature(
            &rs("RS384", "k1", &sig::RSA_PKCS1_SHA256),
            &jwks,
            Some("s")
        )));
        assert_eq!(
            verify_id_token_signature(&rs("RS256", "k9", &sig::RSA_PKCS1_SHA256), &jwks, Some("s")),
            Err(SignatureError::NoKey)
        );
        let mut forged = t.clone();
        forged.replace_range(t.len() - 6.., "AAAAAA");
        assert!(bad(verify_id_token_signature(&forged, &jwks, Some("s"))));
        let (input, sig_part) = t.rsplit_once('.').unwrap();
        let other_claims = format!(
            "{}.{}.{sig_part}",
            input.split('.').next().unwrap(),
            b64u(b"{\"sub\":\"2\"}")
        );
        assert!(bad(verify_id_token_signature(
            &other_claims,
            &jwks,
            Some("s")
        )));
        // A key published for encryption is not used to check signatures.
        let enc = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "enc", "n": b64u(&public.n), "e": b64u(&public.e)}]});
        assert_eq!(
            verify_id_token_signature(&t, &enc, Some("s")),
            Err(SignatureError::NoKey)
        );

        // ES256 without a key id: each P-256 key is tried.
        let pkcs8 =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = sig::EcdsaKeyPair::from_pkcs8(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let point = ec.public_key().as_ref();
        let ec_jwk =
            json!({"kty": "EC", "crv": "P-256", "x": b64u(&point[1..33]), "y": b64u(&point[33..])});
        let jwks_ec = json!({"keys": [jwks["keys"][1].clone(), {"kty": "EC", "crv": "P-256", "x": b64u(&[1; 32]), "y": b64u(&[2; 32])}, ec_jwk]});
        let t = signed(json!({"alg": "ES256"}), |m| {
            ec.sign(&rng, m).unwrap().as_ref().to_vec()
        });
        assert_eq!(verify_id_token_signature(&t, &jwks_ec, Some("s")), Ok(()));
        assert_eq!(
            verify_id_token_signature(&t, &jwks, Some("s")),
            Err(SignatureError::NoKey)
        );

        // EdDSA.
        let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwks_ed = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64u(ed.public_key().as_ref())}]});
        let t = signed(json!({"alg": "EdDSA"}), |m| ed.sign(m).as_ref().to_vec());
        assert_eq!(verify_id_token_signature(&t, &jwks_ed, Some("s")), Ok(()));

        // HS256 with the client secret, and nothing else.
        use hmac::Mac as _;
        let hs = |secret: &str| {
            signed(json!({"alg": "HS256"}), |m| {
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
                mac.update(m);
                mac.finalize().into_bytes().to_vec()
            })
        };
        assert_eq!(
            verify_id_token_signature(
                &hs("client-secret"),
                &json!({"keys": []}),
                Some("client-secret")
            ),
            Ok(())
        );
        assert!(bad(verify_id_token_signature(
            &hs("guess"),
            &json!({"keys": []}),
            Some("client-secret")
        )));
        // ... and only from a provider that says it signs that way.
        assert!(bad(verify_id_token_signature(
            &hs("client-secret"),
            &json!({"keys": []}),
            None
        )));
        // A token naming a key, from a provider publishing its only key without a `kid`.
        let unnamed = json!({"keys": [{"kty": "EC", "crv": "P-256",
            "x": b64u(&point[1..33]), "y": b64u(&point[33..])}]});
        let t = signed(json!({"alg": "ES256", "kid": "k-2026"}), |m| {
            ec.sign(&rng, m).unwrap().as_ref().to_vec()
        });
        assert_eq!(verify_id_token_signature(&t, &unnamed, None), Ok(()));
        // Correctly signed, but naming an extension that must be understood (RFC 7515 §4.1.11).
        let t = signed(
            json!({"alg": "ES256", "kid": "k-2026", "crit": ["exp"], "exp": 1}),
            |m| ec.sign(&rng, m).unwrap().as_ref().to_vec(),
        );
        assert!(bad(verify_id_token_signature(&t, &unnamed, None)));

        // Unsigned, or an algorithm not accepted.
        for alg in ["none", "None", "HS1", "ES512", "RSA-OAEP", ""] {
            let t = signed(json!({"alg": alg}), |_| b"sig".to_vec());
            assert!(
                bad(verify_id_token_signature(&t, &jwks, Some("s"))),
                "{alg}"
            );
        }
        assert!(bad(verify_id_token_signature("a.b", &jwks, Some("s"))));
        assert!(bad(verify_id_token_signature("!!.!!.!!", &jwks, Some("s"))));
    }
}
