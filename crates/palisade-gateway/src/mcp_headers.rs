//! Routing headers of MCP over Streamable HTTP, checked against the body.
//!
//! Clients mirror parts of a JSON-RPC request into headers so that intermediaries can route on
//! them: `Mcp-Method` (the method), `Mcp-Name` (the tool or prompt name, resource URI or task id)
//! and `Mcp-Param-<Token>` (tool arguments whose input-schema property carries
//! `"x-mcp-header": "<Token>"`). A gateway that decides on the body must make sure the headers
//! say the same thing, or a router behind it could act on a different request than the one that
//! was inspected. In the stateless era (any protocol version newer than the handshake
//! revisions) the headers are required; in the session era they are checked when present.
//! Values that are not plain printable ASCII travel as `=?base64?<standard base64>?=`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use serde_json::{Map, Value};

/// Protocol revisions negotiated with `initialize` (the session era).
const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The `_meta` key of the per-request protocol version (stateless era).
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

const ROUTING: [&str; 3] = ["mcp-protocol-version", "mcp-method", "mcp-name"];

/// True for a protocol revision negotiated with `initialize` (the session era).
pub fn is_handshake_version(v: &str) -> bool {
    HANDSHAKE_VERSIONS.contains(&v)
}

/// True when the request speaks the stateless era (per-request `_meta`, required headers).
pub fn stateless_era(headers: &HeaderMap) -> bool {
    header(headers, "mcp-protocol-version").is_some_and(|v| !is_handshake_version(v))
}

/// A header's value with surrounding whitespace removed (RFC 9110 field parsing).
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The body parameter a method's `Mcp-Name` mirrors.
pub fn name_param(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    }
}

/// Decodes a header value: verbatim, or the payload of a `=?base64?…?=` sentinel. A malformed
/// sentinel (bad or non-canonical base64, invalid UTF-8) gives `None`, so it never matches.
pub fn decode_value(raw: &str) -> Option<String> {
    let Some(payload) = raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Some(raw.to_string());
    };
    let bytes = STANDARD.decode(payload).ok()?;
    if STANDARD.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// Checks one JSON-RPC message's routing headers; `Err` says which header disagrees.
///
/// `schema` gives the input schema of a tool the gateway has seen listed (for `Mcp-Param-*`).
pub fn check(
    headers: &HeaderMap,
    msg: &Value,
    schema: impl FnOnce(&str) -> Option<Value>,
) -> Result<(), String> {
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        return Ok(());
    };
    let params = msg.get("params");
    let meta_version = params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(META_VERSION));
    // The era is the body's as much as the header's: a stateless-era version in `_meta` makes
    // the headers required, whatever `MCP-Protocol-Version` says (or whether it is sent).
    let stateless = stateless_era(headers)
        || meta_version
            .and_then(Value::as_str)
            .is_some_and(|v| !is_handshake_version(v));
    let is_request = msg.get("id").is_some();
    for name in ROUTING {
        if headers.get_all(name).iter().count() > 1 {
            return Err(format!("the {name} header appears more than once"));
        }
    }
    if stateless
        && let Some(version) = meta_version
        && Some(version.as_str().unwrap_or_default()) != header(headers, "mcp-protocol-version")
    {
        return Err(
            "the MCP-Protocol-Version header does not match the request's protocol version".into(),
        );
    }
    match header(headers, "mcp-method") {
        Some(h) if h != method => {
            return Err("the Mcp-Method header does not match the body's method".into());
        }
        None if stateless && is_request => {
            return Err("the Mcp-Method header is missing".into());
        }
        _ => {}
    }
    if let Some(key) = name_param(method)
        && let Some(body) = params.and_then(|p| p.get(key)).and_then(Value::as_str)
    {
        match header(headers, "mcp-name") {
            Some(h) if decode_value(h).as_deref() != Some(body) => {
                return Err(format!(
                    "the Mcp-Name header does not match the body's `{key}`"
                ));
            }
            None if stateless && is_request => {
                return Err(format!(
                    "the Mcp-Name header is missing (the body names `{body}`)"
                ));
            }
            _ => {}
        }
    }
    if method == "tools/call"
        && let Some(tool) = params.and_then(|p| p.get("name")).and_then(Value::as_str)
        && let Some(schema) = schema(tool)
    {
        let empty = Map::new();
        let args = params
            .and_then(|p| p.get("arguments"))
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        check_params(headers, &schema, args)?;
    }
    Ok(())
}

/// Whether the request carries routing headers that describe one message (`Mcp-Method`,
/// `Mcp-Name`, `Mcp-Param-*`): a batch may not, since they could only describe one of its
/// messages and a router would act on that one.
pub fn has_message_headers(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| {
        let k = k.as_str();
        k == "mcp-method" || k == "mcp-name" || k.starts_with("mcp-param-")
    })
}

/// An `x-mcp-header` annotation: property path, header token, declared type.
struct Annotation {
    path: Vec<String>,
    token: String,
    ty: Option<String>,
}

/// Schema keywords whose values are subschemas (reached off the pure `properties` chain).
const SUB_ONE: [&str; 11] = [
    "items",
    "contains",
    "unevaluatedItems",
    "additionalProperties",
    "propertyNames",
    "unevaluatedProperties",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
];
const SUB_LIST: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
const SUB_MAP: [&str; 4] = [
    "patternProperties",
    "dependentSchemas",
    "$defs",
    "definitions",
];

/// An annotation as found: path (`None` off the `properties` chain), token, declared type.
type Found = (Option<Vec<String>>, Value, Option<String>);

/// Collects annotations; `path` is `None` off the chain of `properties` from the root.
fn annotations(schema: &Value, path: Option<Vec<String>>, out: &mut Vec<Found>) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    if let Some(token) = obj.get("x-mcp-header") {
        let ty = obj.get("type").and_then(Value::as_str).map(str::to_string);
        out.push((path.clone(), token.clone(), ty));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            let p = path.as_ref().map(|p| {
                let mut p = p.clone();
                p.push(k.clone());
                p
            });
            annotations(sub, p, out);
        }
    }
    for k in SUB_ONE {
        if let Some(sub) = obj.get(k) {
            annotations(sub, None, out);
        }
    }
    for k in SUB_LIST {
        if let Some(list) = obj.get(k).and_then(Value::as_array) {
            list.iter().for_each(|sub| annotations(sub, None, out));
        }
    }
    for k in SUB_MAP {
        if let Some(map) = obj.get(k).and_then(Value::as_object) {
            map.values().for_each(|sub| annotations(sub, None, out));
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The schema's valid annotations, or `None` when any annotation is invalid (a conforming
/// client then drops the tool and sends no `Mcp-Param-*` headers, so nothing is checked).
fn valid_annotations(schema: &Value) -> Option<Vec<Annotation>> {
    let mut found = Vec::new();
    annotations(schema, Some(Vec::new()), &mut found);
    let mut out: Vec<Annotation> = Vec::new();
    for (path, token, ty) in found {
        let path = path.filter(|p| !p.is_empty())?;
        let token = token.as_str().filter(|t| is_token(t))?.to_string();
        if !matches!(ty.as_deref(), Some("string" | "integer" | "boolean")) {
            return None;
        }
        if out.iter().any(|a| a.token.eq_ignore_ascii_case(&token)) {
            return None;
        }
        out.push(Annotation { path, token, ty });
    }
    Some(out)
}

/// How a client renders an argument into a header (before base64 wrapping).
fn render(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn matches_value(ty: Option<&str>, value: &Value, rendered: &str, decoded: &str) -> bool {
    // Integers compare numerically for canonical decimals (`42` equals `42.0`).
    if ty == Some("integer")
        && let Some(n) = value.as_f64().filter(|f| f.fract() == 0.0)
        && !value.is_boolean()
    {
        let (whole, frac) = decoded.split_once('.').unwrap_or((decoded, ""));
        let digits = whole.strip_prefix('-').unwrap_or(whole);
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b == b'0')
            && decoded.contains('.') != frac.is_empty()
        {
            return whole.parse::<f64>().is_ok_and(|w| w == n)
                && (value
                    .as_i64()
                    .is_none_or(|i| whole.parse::<i64>().ok() == Some(i)));
        }
    }
    decoded == rendered
}

/// Checks the `Mcp-Param-*` headers of a `tools/call` against its arguments.
fn check_params(
    headers: &HeaderMap,
    schema: &Value,
    args: &Map<String, Value>,
) -> Result<(), String> {
    let Some(anns) = valid_annotations(schema) else {
        return Ok(());
    };
    for a in anns {
        let name = format!("Mcp-Param-{}", a.token);
        let lower = name.to_ascii_lowercase();
        let mut all = headers.get_all(lower.as_str()).iter();
        let raw = all.next().map(|v| v.to_str().map(str::trim));
        if raw.is_some() && all.next().is_some() {
            return Err(format!("the {name} header appears more than once"));
        }
        let mut node = Some(args.get(&a.path[0]).unwrap_or(&Value::Null));
        for k in &a.path[1..] {
            node = node.and_then(|n| n.get(k));
        }
        let value = node.filter(|v| !v.is_null());
        let arg = a.path.join(".");
        let Some(value) = value else {
            if raw.is_some() {
                return Err(format!(
                    "the {name} header is present but the argument `{arg}` is absent"
                ));
            }
            continue;
        };
        let Some(rendered) = render(value) else {
            if raw.is_some() {
                return Err(format!(
                    "the {name} header does not match the argument `{arg}`"
                ));
            }
            continue;
        };
        let Some(raw) = raw else {
            return Err(format!(
                "the {name} header is missing but the argument `{arg}` is present"
            ));
        };
        let Some(decoded) = raw.ok().and_then(decode_value) else {
            return Err(format!("the {name} header carries a malformed value"));
        };
        if !matches_value(a.ty.as_deref(), value, &rendered, &decoded) {
            return Err(format!(
                "the {name} header does not match the argument `{arg}`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn call(args: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "route", "arguments": args,
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
    }

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "opts": {"type": "object", "properties": {"flag": {"type": "boolean", "x-mcp-header": "Flag"}}},
            "ratio": {"type": "number"}}})
    }

    const MODERN: (&str, &str) = ("mcp-protocol-version", "2026-07-28");

    #[test]
    fn stateless_era_requires_method_and_name() {
        let msg = call(json!({}));
        let ok = hm(&[
            MODERN,
            ("mcp-method", "tools/call"),
            ("mcp-name", " route "),
        ]);
        assert_eq!(check(&ok, &msg, |_| None), Ok(()));
        let no_method = hm(&[MODERN, ("mcp-name", "route")]);
        assert!(
            check(&no_method, &msg, |_| None)
                .unwrap_err()
                .contains("Mcp-Method")
        );
        let no_name = hm(&[MODERN, ("mcp-method", "tools/call")]);
        assert!(
            check(&no_name, &msg, |_| None)
                .unwrap_err()
                .contains("missing")
        );
        let upper = hm(&[MODERN, ("mcp-method", "TOOLS/CALL"), ("mcp-name", "route")]);
        assert!(check(&upper, &msg, |_| None).is_err());
        let twice = hm(&[
            MODERN,
            ("mcp-method", "tools/call"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "route"),
        ]);
        assert!(
            check(&twice, &msg, |_| None)
                .unwrap_err()
                .contains("more than once")
        );
        let b64 = hm(&[
            MODERN,
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?cm91dGU=?="),
        ]);
        assert_eq!(check(&b64, &msg, |_| None), Ok(()));
        let other_version = hm(&[
            ("mcp-protocol-version", "2026-09-01"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "route"),
        ]);
        assert!(
            check(&other_version, &msg, |_| None)
                .unwrap_err()
                .contains("MCP-Protocol-Version")
        );
        // The body's `_meta` version makes the request stateless-era even without the
        // header, or with a session-era one: the headers are then required and must agree.
        for h in [hm(&[]), hm(&[("mcp-protocol-version", "2025-06-18")])] {
            assert!(
                check(&h, &msg, |_| None)
                    .unwrap_err()
                    .contains("MCP-Protocol-Version")
            );
        }
        assert!(!has_message_headers(&hm(&[MODERN])));
        assert!(has_message_headers(&hm(&[("mcp-name", "route")])));
        assert!(has_message_headers(&hm(&[("mcp-param-region", "eu")])));
        // Session era: only headers that are present are compared.
        let session =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "route"}});
        assert_eq!(
            check(
                &hm(&[("mcp-protocol-version", "2025-06-18")]),
                &session,
                |_| None
            ),
            Ok(())
        );
        assert!(check(&hm(&[("mcp-name", "other")]), &session, |_| None).is_err());
        // Tasks name their task id.
        let task =
            json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/get", "params": {"taskId": "t-1"}});
        assert_eq!(check(&hm(&[("mcp-name", "t-1")]), &task, |_| None), Ok(()));
        assert!(check(&hm(&[("mcp-name", "t-2")]), &task, |_| None).is_err());
    }

    #[test]
    fn param_headers_mirror_annotated_arguments() {
        let base = [MODERN, ("mcp-method", "tools/call"), ("mcp-name", "route")];
        let with = |extra: &[(&str, &str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            hm(&v)
        };
        let args =
            json!({"region": "eu-west-1", "count": 42, "opts": {"flag": true}, "ratio": 0.5});
        let full = with(&[
            ("mcp-param-region", "eu-west-1"),
            ("Mcp-Param-Count", "42.0"),
            ("mcp-param-flag", "true"),
        ]);
        assert_eq!(
            check(&full, &call(args.clone()), |_| Some(schema())),
            Ok(())
        );
        let missing = with(&[
            ("mcp-param-region", "eu-west-1"),
            ("mcp-param-flag", "true"),
        ]);
        assert!(
            check(&missing, &call(args.clone()), |_| Some(schema()))
                .unwrap_err()
                .contains("Count")
        );
        let wrong = with(&[
            ("mcp-param-region", "us-east-1"),
            ("mcp-param-count", "42"),
            ("mcp-param-flag", "true"),
        ]);
        assert!(
            check(&wrong, &call(args.clone()), |_| Some(schema()))
                .unwrap_err()
                .contains("Region")
        );
        let bad_b64 = with(&[
            ("mcp-param-region", "=?base64?!!?="),
            ("mcp-param-count", "42"),
            ("mcp-param-flag", "true"),
        ]);
        assert!(
            check(&bad_b64, &call(args.clone()), |_| Some(schema()))
                .unwrap_err()
                .contains("malformed")
        );
        // Null or absent arguments: the header must be absent too.
        let absent = json!({"region": null, "count": 1});
        assert_eq!(
            check(
                &with(&[("mcp-param-count", "1")]),
                &call(absent.clone()),
                |_| Some(schema())
            ),
            Ok(())
        );
        assert!(
            check(
                &with(&[("mcp-param-count", "1"), ("mcp-param-region", "x")]),
                &call(absent),
                |_| Some(schema())
            )
            .is_err()
        );
        // Non-ASCII values travel base64-wrapped.
        let accent = json!({"region": "zürich"});
        let enc = format!("=?base64?{}?=", STANDARD.encode("zürich"));
        assert_eq!(
            check(&with(&[("mcp-param-region", &enc)]), &call(accent), |_| {
                Some(schema())
            }),
            Ok(())
        );
        // An invalid annotation anywhere: nothing is checked (clients drop such tools).
        let invalid =
            json!({"type": "object", "properties": {"r": {"type": "number", "x-mcp-header": "R"}}});
        assert_eq!(
            check(&with(&[]), &call(json!({"r": 1.5})), |_| Some(invalid)),
            Ok(())
        );
        // Unknown tool schema: only method and name are checked.
        assert_eq!(check(&with(&[]), &call(args), |_| None), Ok(()));
    }
}
