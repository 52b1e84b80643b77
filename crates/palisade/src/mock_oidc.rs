//! `palisade mock-oidc`: a small OpenID Connect provider for tests and demos. Whoever asks to
//! sign in is signed in at once as the identity it is set to (`--email`, or `POST
//! /_mock/identity` with `email`, `email_verified`, `sub`, `deny`, and, to test a client's
//! checks, `iss`, `aud` or `nonce` written into the next ID token instead of the right ones).
//! It checks what a provider checks: the client id, the redirect URI, PKCE (S256), the client
//! secret (HTTP Basic or form), one use per code. ID tokens are signed with ES256 by a key made
//! at start and published at `/jwks`, or (identity `alg: "HS256"`) with the client secret;
//! `forge: true` spoils the next signatures. Every request is recorded (`GET /_mock/requests`,
//! secrets left out).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use hmac::Mac as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::Digest as _;

struct Grant {
    redirect_uri: String,
    nonce: Option<String>,
    challenge: String,
    identity: Value,
}

struct State {
    issuer: String,
    /// The ES256 signing key (PKCS#8) and its public point.
    signing_key: ring::signature::EcdsaKeyPair,
    client_id: String,
    secret: String,
    identity: Mutex<Value>,
    codes: Mutex<HashMap<String, Grant>>,
    received: Mutex<Vec<Value>>,
}

/// Runs the provider until interrupted.
pub async fn run(
    addr: SocketAddr,
    client_id: String,
    secret: String,
    email: String,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let issuer = format!("http://{addr}");
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| anyhow::anyhow!("cannot make a signing key"))?;
    let signing_key = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("cannot read the signing key"))?;
    println!("palisade mock-oidc listening on {issuer}/ (client id {client_id})");
    let state = Arc::new(State {
        issuer,
        signing_key,
        client_id,
        secret,
        identity: Mutex::new(json!({"email": email, "email_verified": true, "sub": "mock-user-1"})),
        codes: Mutex::new(HashMap::new()),
        received: Mutex::new(Vec::new()),
    });
    crate::mock::serve_whole(listener, state, handle).await
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn oauth_error(error: &str, description: &str) -> Response<Full<Bytes>> {
    answer(
        StatusCode::BAD_REQUEST,
        json!({"error": error, "error_description": description}),
    )
}

fn params(raw: &str) -> HashMap<String, String> {
    form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = params(req.uri().query().unwrap_or(""));
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let form = params(&String::from_utf8_lossy(&body));
    {
        let mut seen = form.clone();
        seen.remove("client_secret");
        lock(&state.received).push(json!({
            "method": method.as_str(), "path": path, "query": query, "form": seen,
            "basic_auth": basic.is_some(),
        }));
    }
    match (method, path.as_str()) {
        (Method::GET, "/.well-known/openid-configuration") => answer(
            StatusCode::OK,
            json!({
                "issuer": state.issuer,
                "authorization_endpoint": format!("{}/authorize", state.issuer),
                "token_endpoint": format!("{}/token", state.issuer),
                "jwks_uri": format!("{}/jwks", state.issuer),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256", "HS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": ["openid", "email", "profile"],
            }),
        ),
        (Method::GET, "/authorize") => authorize(&state, &query),
        (Method::GET, "/jwks") => {
            use ring::signature::KeyPair as _;
            let point = state.signing_key.public_key().as_ref();
            answer(
                StatusCode::OK,
                json!({"keys": [{
                    "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "mock-1",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..]),
                }]}),
            )
        }
        (Method::POST, "/token") => token(&state, &form, basic),
        (Method::POST, "/_mock/identity") => {
            let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(&body) else {
                return oauth_error("invalid_request", "a JSON object");
            };
            let mut id = lock(&state.identity);
            for (k, v) in patch {
                id[k] = v;
            }
            answer(StatusCode::OK, id.clone())
        }
        (Method::GET, "/_mock/requests") => {
            answer(StatusCode::OK, Value::Array(lock(&state.received).clone()))
        }
        _ => answer(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}

fn authorize(state: &State, q: &HashMap<String, String>) -> Response<Full<Bytes>> {
    if q.get("client_id") != Some(&state.client_id) {
        return oauth_error("unauthorized_client", "unknown client_id");
    }
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return oauth_error("invalid_request", "redirect_uri is required");
    };
    if q.get("response_type").map(String::as_str) != Some("code")
        || !q
            .get("scope")
            .is_some_and(|s| s.split(' ').any(|w| w == "openid"))
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return oauth_error(
            "invalid_request",
            "response_type=code, scope with openid and PKCE S256 are required",
        );
    }
    let identity = lock(&state.identity).clone();
    let mut back = form_urlencoded::Serializer::new(String::new());
    if identity["deny"] == true {
        back.append_pair("error", "access_denied");
    } else {
        let code = palisade_core::crypto::random_token(24);
        lock(&state.codes).insert(
            code.clone(),
            Grant {
                redirect_uri: redirect_uri.clone(),
                nonce: q.get("nonce").cloned(),
                challenge: q.get("code_challenge").cloned().unwrap_or_default(),
                identity,
            },
        );
        back.append_pair("code", &code);
    }
    if let Some(s) = q.get("state") {
        back.append_pair("state", s);
    }
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = http::HeaderValue::from_str(&format!("{redirect_uri}{sep}{}", back.finish())) {
        r.headers_mut().insert("location", v);
    }
    r
}

fn token(
    state: &State,
    form: &HashMap<String, String>,
    basic: Option<String>,
) -> Response<Full<Bytes>> {
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (id, secret) = match (&basic, form.get("client_secret")) {
        (Some(b), None) => match b.split_once(':') {
            Some((i, s)) => (dec(i), dec(s)),
            None => return oauth_error("invalid_client", "malformed Basic credentials"),
        },
        (None, Some(s)) => (
            form.get("client_id").cloned().unwrap_or_default(),
            s.clone(),
        ),
        _ => return oauth_error("invalid_client", "one client authentication method"),
    };
    if id != state.client_id || secret != state.secret {
        return answer(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error("unsupported_grant_type", "authorization_code only");
    }
    let Some(g) = form.get("code").and_then(|c| lock(&state.codes).remove(c)) else {
        return oauth_error("invalid_grant", "unknown or used code");
    };
    if form.get("redirect_uri") != Some(&g.redirect_uri) {
        return oauth_error("invalid_grant", "redirect_uri differs");
    }
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes())) != g.challenge {
        return oauth_error("invalid_grant", "PKCE verification failed");
    }
    let now = palisade_core::now_ms() / 1000;
    let pick = |k: &str, default: Value| {
        let v = &g.identity[k];
        if v.is_null() { default } else { v.clone() }
    };
    let claims = json!({
        "iss": pick("iss", state.issuer.clone().into()),
        "aud": pick("aud", state.client_id.clone().into()),
        "sub": g.identity["sub"],
        "email": g.identity["email"],
        "email_verified": g.identity["email_verified"],
        "nonce": pick("nonce", g.nonce.clone().map_or(Value::Null, Value::from)),
        "iat": now,
        "exp": now + 300,
    });
    let hs256 = g.identity["alg"] == "HS256";
    let header = if hs256 {
        json!({"alg": "HS256", "typ": "JWT"})
    } else {
        json!({"alg": "ES256", "typ": "JWT", "kid": "mock-1"})
    };
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = if hs256 {
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(state.secret.as_bytes())
        else {
            return oauth_error("server_error", "cannot sign");
        };
        mac.update(signing_input.as_bytes());
        mac.finalize().into_bytes().to_vec()
    } else {
        let rng = ring::rand::SystemRandom::new();
        match state.signing_key.sign(&rng, signing_input.as_bytes()) {
            Ok(s) => s.as_ref().to_vec(),
            Err(_) => return oauth_error("server_error", "cannot sign"),
        }
    };
    if g.identity["forge"] == true {
        sig[0] ^= 1;
    }
    let sig = URL_SAFE_NO_PAD.encode(sig);
    answer(
        StatusCode::OK,
        json!({
            "access_token": palisade_core::crypto::random_token(24),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": format!("{signing_input}.{sig}"),
        }),
    )
}
