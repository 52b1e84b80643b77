//! System-prompt governance: choosing the one applicable prompt, filling its variables, and
//! injecting it ahead of any client system prompt in each API shape.

use palisade_core::model::PromptSpec;
use serde_json::{Value, json};

use crate::shape::Endpoint;

/// The prompt to inject for a proxy and group: highest priority wins; at equal priority a
/// group's prompt outranks a proxy's.
pub fn select<'a>(
    prompts: &'a [PromptSpec],
    proxy: &str,
    group: Option<&str>,
) -> Option<&'a PromptSpec> {
    prompts
        .iter()
        .filter_map(|p| {
            let by_group = group.is_some_and(|g| p.groups.iter().any(|x| x == g));
            let by_proxy = p.proxies.iter().any(|x| x == proxy);
            (by_group || by_proxy).then_some((p.priority, by_group, p))
        })
        .max_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| b.2.name.cmp(&a.2.name))
        })
        .map(|(_, _, p)| p)
}

/// Fills `{{variable}}`s.
pub fn render(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find("}}") {
            Some(j) => {
                let var = after[..j].trim();
                match vars.iter().find(|(k, _)| *k == var) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 2 + j + 2]),
                }
                rest = &after[j + 2..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Puts `text` first among the system instructions of a request body, where the endpoint's
/// API reads them (whatever the proxy's `api`: an Anthropic proxy may also be called on its
/// OpenAI-compatible chat endpoint). Returns false for an endpoint without instructions
/// (embeddings, other paths): nothing is injected there.
pub fn inject(body: &mut Value, endpoint: Endpoint, text: &str) -> bool {
    let Some(m) = body.as_object_mut() else {
        return false;
    };
    match endpoint {
        Endpoint::Messages => {
            match m.get_mut("system") {
                Some(Value::String(s)) => *s = format!("{text}\n\n{s}"),
                Some(Value::Array(blocks)) => {
                    blocks.insert(0, json!({"type": "text", "text": text}))
                }
                _ => {
                    m.insert("system".into(), Value::String(text.to_string()));
                }
            }
            true
        }
        Endpoint::ChatCompletions => {
            let Some(Value::Array(msgs)) = m.get_mut("messages") else {
                return false;
            };
            msgs.insert(0, json!({"role": "system", "content": text}));
            true
        }
        Endpoint::Responses => {
            match m.get_mut("instructions") {
                Some(Value::String(s)) if !s.is_empty() => *s = format!("{text}\n\n{s}"),
                // Instructions given as input items: the prompt goes first among them.
                Some(Value::Array(items)) => items.insert(
                    0,
                    json!({"type": "message", "role": "system", "content": text}),
                ),
                _ => {
                    m.insert("instructions".into(), Value::String(text.to_string()));
                }
            }
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, proxies: &[&str], groups: &[&str], priority: i32) -> PromptSpec {
        PromptSpec {
            name: name.into(),
            text: format!("{name} {{{{user}}}}"),
            proxies: proxies.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            priority,
        }
    }

    #[test]
    fn priority_and_group_precedence() {
        let all = vec![
            p("proxy10", &["px"], &[], 10),
            p("group10", &[], &["eng"], 10),
            p("proxy5", &["px"], &[], 5),
        ];
        assert_eq!(select(&all, "px", Some("eng")).unwrap().name, "group10");
        assert_eq!(select(&all, "px", Some("ops")).unwrap().name, "proxy10");
        assert_eq!(select(&all, "other", Some("eng")).unwrap().name, "group10");
        assert!(select(&all, "other", None).is_none());
        let all = vec![
            p("proxy20", &["px"], &[], 20),
            p("group10", &[], &["eng"], 10),
        ];
        assert_eq!(select(&all, "px", Some("eng")).unwrap().name, "proxy20");
    }

    #[test]
    fn variables_are_filled_and_injected_first() {
        let t = render(
            "Hi {{user}} of {{ group }} on {{date}} {{unknown}}",
            &[("user", "ci"), ("group", "eng"), ("date", "2026-11-25")],
        );
        assert_eq!(t, "Hi ci of eng on 2026-11-25 {{unknown}}");
        let mut chat = json!({"messages": [{"role": "system", "content": "client"}, {"role": "user", "content": "q"}]});
        assert!(inject(&mut chat, Endpoint::ChatCompletions, "gov"));
        assert_eq!(chat["messages"][0]["content"], "gov");
        assert_eq!(chat["messages"][1]["content"], "client");
        assert!(chat.get("system").is_none(), "{chat}");
        let mut msg = json!({"system": "client", "messages": []});
        inject(&mut msg, Endpoint::Messages, "gov");
        assert_eq!(msg["system"], "gov\n\nclient");
        let mut blocks = json!({"system": [{"type": "text", "text": "client"}]});
        inject(&mut blocks, Endpoint::Messages, "gov");
        assert_eq!(blocks["system"][0]["text"], "gov");
        let mut resp = json!({"input": "q"});
        inject(&mut resp, Endpoint::Responses, "gov");
        assert_eq!(resp["instructions"], "gov");
        assert!(resp.get("system").is_none(), "{resp}");
        let mut resp = json!({"input": "q", "instructions": "client"});
        inject(&mut resp, Endpoint::Responses, "gov");
        assert_eq!(resp["instructions"], "gov\n\nclient");
        let item = json!({"type": "message", "role": "developer", "content": "client"});
        let mut resp = json!({"input": "q", "instructions": [item.clone()]});
        inject(&mut resp, Endpoint::Responses, "gov");
        assert_eq!(resp["instructions"][0]["content"], "gov");
        assert_eq!(resp["instructions"][1], item, "the client's own stays");
        // Embeddings and other paths have no instructions: nothing is added.
        for e in [Endpoint::Embeddings, Endpoint::Other] {
            let mut body = json!({"input": "q"});
            assert!(!inject(&mut body, e, "gov"));
            assert_eq!(body, json!({"input": "q"}));
        }
    }
}
