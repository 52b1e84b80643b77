//! A JSON body extractor whose errors name the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Like `axum::Json`, but a 400 says which field is wrong (`name`, `proxies[0].listen`, …).
pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !declares_json(&req) {
            return Err(not_json());
        }
        parse(&body_bytes(req, state).await?).map(ValidJson)
    }
}

/// A JSON body the handler parses itself (policies, approvals): like [`ValidJson`], a body
/// must come as `application/json`; an empty one may come without a type.
pub struct JsonBody(pub Bytes);

impl<S> FromRequest<S> for JsonBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = declares_json(&req);
        let bytes = body_bytes(req, state).await?;
        if !is_json && !bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(not_json());
        }
        Ok(JsonBody(bytes))
    }
}

/// Whether a request says its body is JSON.
fn declares_json(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_media_type)
}

/// The refusal of a body that is not sent as JSON.
fn not_json() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "expected `Content-Type: application/json`",
    )
}

/// A request's body (within the router's limit).
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e| ApiError::new(e.status(), "bad_body", e.body_text()))
}

/// `application/json`, in any case, with or without parameters (`; charset=utf-8`).
fn is_json_media_type(v: &str) -> bool {
    v.split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses JSON into `T`, mapping errors to a field-naming 400. The body must be one JSON value:
/// anything after it (a second object) is refused, as every other parser of the request would
/// read it differently.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = parse_one(de)?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

fn parse_one<'de, T: DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(de).map_err(field_error)
}

/// Reads `T` from a document the gateway put together (a stored object with a request's
/// members over it): errors name the field, never a line and column of a text the client did
/// not send.
pub fn from_value<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(field_error)
}

/// A deserialization error as a 400 naming the field it concerns.
fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.to_string();
    // Missing/unknown fields are reported on the parent; pull the name out of serde's text.
    let named = ["missing field `", "unknown field `"].iter().find_map(|p| {
        msg.split_once(p)
            .and_then(|(_, r)| r.split_once('`'))
            .map(|(f, _)| f.to_string())
    });
    let field = match (path.as_str(), named) {
        (".", Some(f)) => f,
        (p, Some(f)) if p == f || p.ends_with(&format!(".{f}")) => p.to_string(),
        (_, Some(f)) => format!("{path}.{f}"),
        (".", None) => String::new(),
        (p, None) => p.to_string(),
    };
    if field.is_empty() || inner.is_syntax() || inner.is_eof() {
        ApiError::bad_request(format!("invalid JSON body: {msg}"))
    } else {
        ApiError::field(field, msg)
    }
}

/// Like `axum::extract::Query`, but a bad query string is a JSON error (400) in the API's shape.
pub struct ValidQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ValidQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ValidQuery(q.0))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        name: String,
        port: u16,
    }

    #[test]
    fn errors_name_fields() {
        assert_eq!(
            parse::<T>(br#"{"port": 1}"#).unwrap_err().field.as_deref(),
            Some("name")
        );
        assert_eq!(
            parse::<T>(br#"{"name": "a", "port": "x"}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("port")
        );
        assert_eq!(
            parse::<T>(br#"{"name": "a", "port": 1, "zz": 0}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("zz")
        );
        let e = parse::<T>(b"{not json").unwrap_err();
        assert!(e.field.is_none() && e.message.contains("invalid JSON"));
        let e = parse::<T>(br#"{"name": "a", "port": 1} {"name": "b", "port": 2}"#).unwrap_err();
        assert!(e.message.contains("trailing"), "{}", e.message);
        assert!(parse::<T>(b"{\"name\": \"a\", \"port\": 1}\n  ").is_ok());
    }

    #[test]
    fn json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
        ] {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in [
            "application/jsonfoo",
            "text/json",
            "application/json-patch+json",
        ] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }
}

/// What a change does with a stored secret (a proxy's upstream key, a webhook's signing
/// secret), given in a JSON body beside the object's fields.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretChange {
    /// Keep it.
    Keep,
    /// Replace it.
    Set(String),
    /// Remove it.
    Clear,
}

/// Splits the secret member `field` out of a JSON object body: absent or `null` keeps the
/// stored one, `""` removes it.
pub fn take_secret(body: &mut serde_json::Value, field: &str) -> Result<SecretChange, ApiError> {
    let serde_json::Value::Object(map) = body else {
        return Err(ApiError::bad_request("body must be a JSON object"));
    };
    match map.remove(field) {
        None | Some(serde_json::Value::Null) => Ok(SecretChange::Keep),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(SecretChange::Clear),
        Some(serde_json::Value::String(s)) => Ok(SecretChange::Set(s)),
        Some(_) => Err(ApiError::field(field, "must be a string")),
    }
}
