//! What the scanner concludes from a server's inventory: pure functions over the listed
//! definitions (and the resources' text it read), no I/O.

use std::collections::{BTreeMap, HashMap};

use palisade_policy::{Action, PolicySet, Severity, Target};
use serde_json::Value;

use super::{Finding, Item, ItemKind, Rule};
use crate::mcp_tools::{fold_name, poisoning_of};

/// Findings of every check that reads the inventory alone.
pub(crate) fn inventory_findings(items: &[Item], set: &PolicySet) -> Vec<Finding> {
    let mut out = Vec::new();
    for item in items {
        poisoning(item, set, &mut out);
        if item.kind == ItemKind::Tool {
            capability(item, &mut out);
            schema(item, &mut out);
        }
    }
    look_alikes(items, &mut out);
    out
}

fn subject(item: &Item) -> String {
    match item.kind {
        ItemKind::Instructions => "server instructions".into(),
        k => format!("{} `{}`", k.noun(), item.id),
    }
}

/// Hidden instructions, invisible characters and escapes in a definition; for a tool that is
/// tool poisoning, for the rest an injection the client's model reads.
fn poisoning(item: &Item, set: &PolicySet, out: &mut Vec<Finding>) {
    let rule = if item.kind == ItemKind::Tool {
        Rule::ToolPoisoning
    } else {
        Rule::InjectionInContent
    };
    for p in poisoning_of(&item.definition, Some(set)) {
        // `log` rules are for dashboards, and `redact` rules find personal data or keys: a key
        // in a definition is worth reporting, an e-mail address in an example less so.
        let severity = match p.action {
            None | Some(Action::Block | Action::Alert) => p.severity,
            Some(Action::Redact) => p.severity.min(Severity::Medium),
            Some(Action::Log) => continue,
        };
        let what = p.what.strip_prefix("builtin: ").unwrap_or(&p.what);
        out.push(Finding {
            rule,
            severity,
            subject: subject(item),
            message: match p.action {
                Some(Action::Redact) => {
                    format!("secret or personal data in the definition ({what})")
                }
                _ => what.to_string(),
            },
            excerpt: p.excerpt,
        });
    }
}

/// Findings in the text of a resource the scanner read.
pub(crate) fn resource_text_findings(uri: &str, text: &str, set: &PolicySet) -> Vec<Finding> {
    let subject = format!("resource `{uri}` (contents)");
    let mut out = Vec::new();
    if text.chars().any(crate::mcp_tools::hidden_char) {
        out.push(Finding {
            rule: Rule::InjectionInContent,
            severity: Severity::Medium,
            subject: subject.clone(),
            message: "invisible, bidi or tag characters in the text".into(),
            excerpt: None,
        });
    }
    for m in set.evaluate(Target::ToolResult, text).matches {
        if !matches!(m.action, Action::Block | Action::Alert) {
            continue;
        }
        out.push(Finding {
            rule: Rule::InjectionInContent,
            severity: m.severity,
            subject: subject.clone(),
            message: format!("{}/{}: {}", m.policy_id, m.rule_id, m.rule_name),
            excerpt: Some(m.excerpt),
        });
    }
    out
}

/// What a tool can do, as its name, description and parameters say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Capability {
    FileRead,
    Network,
    Database,
    Destructive,
    FileWrite,
    Shell,
}

impl Capability {
    fn noun(self) -> &'static str {
        match self {
            Capability::Shell => "runs commands or code",
            Capability::FileWrite => "changes or deletes files",
            Capability::Database => "queries a database",
            Capability::Destructive => "deletes or destroys data",
            Capability::Network => "reaches the network",
            Capability::FileRead => "reads files",
        }
    }

    fn severity(self) -> Severity {
        match self {
            Capability::Shell => Severity::High,
            Capability::FileWrite
            | Capability::Destructive
            | Capability::Database
            | Capability::Network => Severity::Medium,
            Capability::FileRead => Severity::Low,
        }
    }
}

/// The words of a name: split at separators and lower-to-upper case changes, lower-cased.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in s.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

const SHELL_WORDS: &[&str] = &[
    "shell",
    "bash",
    "sh",
    "zsh",
    "powershell",
    "pwsh",
    "cmd",
    "exec",
    "execute",
    "command",
    "terminal",
    "subprocess",
    "eval",
    "script",
    "sudo",
    "spawn",
    "python",
    "javascript",
    "repl",
];
const WRITE_WORDS: &[&str] = &[
    "write",
    "delete",
    "remove",
    "rm",
    "rmdir",
    "unlink",
    "move",
    "mv",
    "rename",
    "edit",
    "mkdir",
    "chmod",
    "chown",
    "upload",
    "overwrite",
    "truncate",
    "append",
    "patch",
];
const DESTROY_WORDS: &[&str] = &[
    "delete",
    "remove",
    "drop",
    "destroy",
    "purge",
    "wipe",
    "erase",
    "kill",
    "terminate",
];
const FILE_WORDS: &[&str] = &[
    "file",
    "files",
    "dir",
    "directory",
    "directories",
    "folder",
    "path",
    "fs",
    "filesystem",
];
const READ_WORDS: &[&str] = &[
    "read", "list", "get", "cat", "open", "tree", "search", "find",
];
const NET_WORDS: &[&str] = &[
    "fetch", "http", "https", "url", "curl", "wget", "download", "browse", "browser", "request",
    "webhook", "scrape", "crawl", "navigate",
];
const DB_WORDS: &[&str] = &[
    "sql", "query", "database", "db", "postgres", "mysql", "sqlite",
];

/// Parameter names that carry what a capability acts on.
fn param_capability(name: &str) -> Option<Capability> {
    match name.to_ascii_lowercase().as_str() {
        "command" | "cmd" | "script" | "code" | "shell" | "argv" => Some(Capability::Shell),
        "sql" => Some(Capability::Database),
        "url" | "uri" | "endpoint" | "href" => Some(Capability::Network),
        "path" | "file" | "filename" | "file_path" | "filepath" | "directory" | "dir" => {
            Some(Capability::FileRead)
        }
        _ => None,
    }
}

fn properties(def: &Value) -> Vec<(&String, &Value)> {
    def.pointer("/inputSchema/properties")
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

/// The capabilities a tool's name, description and parameters point at, most dangerous first.
pub(crate) fn capabilities(def: &Value) -> Vec<Capability> {
    let name = def.get("name").and_then(Value::as_str).unwrap_or("");
    let name_words = words(name);
    let desc_words = words(def.get("description").and_then(Value::as_str).unwrap_or(""));
    let has = |ws: &[String], set: &[&str]| ws.iter().any(|w| set.contains(&w.as_str()));
    let mut caps = Vec::new();
    if has(&name_words, SHELL_WORDS) {
        caps.push(Capability::Shell);
    }
    let about_files = has(&name_words, FILE_WORDS) || has(&desc_words, FILE_WORDS);
    if has(&name_words, WRITE_WORDS) && about_files {
        caps.push(Capability::FileWrite);
    } else if has(&name_words, DESTROY_WORDS) {
        caps.push(Capability::Destructive);
    }
    if has(&name_words, DB_WORDS) {
        caps.push(Capability::Database);
    }
    if has(&name_words, NET_WORDS) {
        caps.push(Capability::Network);
    }
    if has(&name_words, READ_WORDS) && has(&name_words, FILE_WORDS) {
        caps.push(Capability::FileRead);
    }
    for (p, _) in properties(def) {
        if let Some(c) = param_capability(p) {
            // A path parameter of a tool whose name writes is a write.
            let c = if c == Capability::FileRead && has(&name_words, WRITE_WORDS) {
                Capability::FileWrite
            } else {
                c
            };
            caps.push(c);
        }
    }
    caps.sort_by(|a, b| b.cmp(a));
    caps.dedup();
    caps
}

/// Dangerous capabilities without the annotations that let a client ask before using them,
/// and annotations that say the opposite of what the tool does.
fn capability(item: &Item, out: &mut Vec<Finding>) {
    let caps = capabilities(&item.definition);
    let Some(&top) = caps.first() else {
        return;
    };
    let ann = item
        .definition
        .get("annotations")
        .and_then(Value::as_object);
    let hint = |k: &str| ann.and_then(|a| a.get(k)).and_then(Value::as_bool);
    let what: Vec<&str> = caps.iter().map(|c| c.noun()).collect();
    let what = what.join(", ");
    if hint("readOnlyHint").is_none() && hint("destructiveHint").is_none() {
        out.push(Finding {
            rule: Rule::UnannotatedCapability,
            severity: top.severity(),
            subject: subject(item),
            message: format!(
                "the tool {what}, and has no readOnlyHint or destructiveHint annotation telling a client to ask first"
            ),
            excerpt: None,
        });
    }
    let changes = caps.iter().any(|c| {
        matches!(
            c,
            Capability::Shell | Capability::FileWrite | Capability::Destructive
        )
    });
    if changes && hint("readOnlyHint") == Some(true) {
        out.push(Finding {
            rule: Rule::MisleadingAnnotations,
            severity: Severity::High,
            subject: subject(item),
            message: format!("annotated readOnlyHint: true, but the tool {what}"),
            excerpt: None,
        });
    } else if changes && hint("destructiveHint") == Some(false) {
        out.push(Finding {
            rule: Rule::MisleadingAnnotations,
            severity: Severity::Medium,
            subject: subject(item),
            message: format!("annotated destructiveHint: false, but the tool {what}"),
            excerpt: None,
        });
    }
    if caps.contains(&Capability::Network) && hint("openWorldHint") == Some(false) {
        out.push(Finding {
            rule: Rule::MisleadingAnnotations,
            severity: Severity::Medium,
            subject: subject(item),
            message: "annotated openWorldHint: false, but the tool reaches the network".into(),
            excerpt: None,
        });
    }
}

/// Input schemas that accept more than the tool needs.
fn schema(item: &Item, out: &mut Vec<Finding>) {
    let def = &item.definition;
    let Some(schema) = def.get("inputSchema") else {
        out.push(Finding {
            rule: Rule::BroadSchema,
            severity: Severity::Medium,
            subject: subject(item),
            message: "no inputSchema: any arguments are accepted (the specification requires one)"
                .into(),
            excerpt: None,
        });
        return;
    };
    if !schema.is_object() || schema.get("type").and_then(Value::as_str) != Some("object") {
        out.push(Finding {
            rule: Rule::BroadSchema,
            severity: Severity::Medium,
            subject: subject(item),
            message: "inputSchema is not a JSON Schema of type `object`".into(),
            excerpt: None,
        });
        return;
    }
    // Broad input matters more for a tool that runs commands or writes files.
    let severity = if capabilities(def)
        .iter()
        .any(|c| matches!(c, Capability::Shell | Capability::FileWrite))
    {
        Severity::Medium
    } else {
        Severity::Low
    };
    if schema.get("additionalProperties") == Some(&Value::Bool(true)) {
        out.push(Finding {
            rule: Rule::BroadSchema,
            severity,
            subject: subject(item),
            message: "additionalProperties: true: arguments the schema does not name are accepted"
                .into(),
            excerpt: None,
        });
    }
    let free: Vec<&str> = properties(def)
        .into_iter()
        .filter(|(name, p)| {
            param_capability(name).is_some()
                && p.get("type").and_then(Value::as_str) == Some("string")
                && ["enum", "const", "pattern", "maxLength", "format"]
                    .iter()
                    .all(|k| p.get(*k).is_none())
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if !free.is_empty() {
        out.push(Finding {
            rule: Rule::BroadSchema,
            severity,
            subject: subject(item),
            message: format!(
                "free-form string parameters that name commands, paths, queries or URLs, with no enum, pattern, format or maxLength: {}",
                free.join(", ")
            ),
            excerpt: None,
        });
    }
}

/// Tool names that look alike (a client or model can take one for the other), and names listed
/// more than once.
fn look_alikes(items: &[Item], out: &mut Vec<Finding>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut folded: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for item in items.iter().filter(|i| i.kind == ItemKind::Tool) {
        let n = seen.entry(item.id.as_str()).or_default();
        *n += 1;
        if *n == 2 {
            out.push(Finding {
                rule: Rule::LookAlikeNames,
                severity: Severity::Medium,
                subject: subject(item),
                message: "listed more than once: which definition a client uses is up to it".into(),
                excerpt: None,
            });
            continue;
        }
        if *n == 1 {
            folded
                .entry(fold_name(&item.id))
                .or_default()
                .push(&item.id);
        }
    }
    for names in folded.values().filter(|v| v.len() > 1) {
        let shown: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        out.push(Finding {
            rule: Rule::LookAlikeNames,
            severity: Severity::Medium,
            subject: format!("tool `{}`", names[0]),
            message: format!(
                "tool names that look alike (case, separators, look-alike letters): {}",
                shown.join(", ")
            ),
            excerpt: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(def: Value) -> Item {
        Item {
            kind: ItemKind::Tool,
            id: def["name"].as_str().unwrap_or("").to_string(),
            definition: def,
        }
    }

    fn rules(f: &[Finding]) -> Vec<(Rule, Severity)> {
        f.iter().map(|f| (f.rule, f.severity)).collect()
    }

    #[test]
    fn names_split_into_words() {
        assert_eq!(words("runShellCommand"), ["run", "shell", "command"]);
        assert_eq!(words("read_file-v2"), ["read", "file", "v2"]);
        assert_eq!(words("HTTPFetch"), ["httpfetch"]);
        assert_eq!(words("fetchURL"), ["fetch", "url"]);
    }

    #[test]
    fn capabilities_from_names_and_parameters() {
        let caps = |d: Value| capabilities(&d);
        assert_eq!(
            caps(json!({"name": "run_command", "inputSchema": {"type": "object"}})),
            [Capability::Shell]
        );
        assert_eq!(
            caps(
                json!({"name": "write_file", "inputSchema": {"type": "object",
                "properties": {"path": {"type": "string"}}}})
            ),
            [Capability::FileWrite]
        );
        assert_eq!(caps(json!({"name": "read_file"})), [Capability::FileRead]);
        assert_eq!(
            caps(json!({"name": "fetch", "inputSchema": {"type": "object",
                "properties": {"url": {"type": "string"}}}})),
            [Capability::Network]
        );
        assert!(caps(json!({"name": "add", "description": "Adds two numbers."})).is_empty());
        assert!(
            caps(json!({"name": "echo", "inputSchema": {"type": "object",
            "properties": {"message": {"type": "string"}}}}))
            .is_empty()
        );
    }

    #[test]
    fn unannotated_and_misleading_tools() {
        let mut out = Vec::new();
        capability(&tool(json!({"name": "exec_shell"})), &mut out);
        assert_eq!(rules(&out), [(Rule::UnannotatedCapability, Severity::High)]);
        out.clear();
        capability(
            &tool(json!({"name": "exec_shell", "annotations": {"destructiveHint": true}})),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        capability(
            &tool(json!({"name": "delete_file", "annotations": {"readOnlyHint": true}})),
            &mut out,
        );
        assert_eq!(rules(&out), [(Rule::MisleadingAnnotations, Severity::High)]);
        out.clear();
        capability(
            &tool(
                json!({"name": "fetch_url", "annotations": {"readOnlyHint": true, "openWorldHint": false}}),
            ),
            &mut out,
        );
        assert_eq!(
            rules(&out),
            [(Rule::MisleadingAnnotations, Severity::Medium)]
        );
    }

    #[test]
    fn broad_schemas() {
        let mut out = Vec::new();
        schema(&tool(json!({"name": "x"})), &mut out);
        schema(
            &tool(json!({"name": "y", "inputSchema": {"type": "string"}})),
            &mut out,
        );
        schema(
            &tool(
                json!({"name": "run_script", "inputSchema": {"type": "object",
                "additionalProperties": true,
                "properties": {"code": {"type": "string"}, "lang": {"type": "string", "enum": ["py"]}}}}),
            ),
            &mut out,
        );
        assert_eq!(
            rules(&out),
            [
                (Rule::BroadSchema, Severity::Medium),
                (Rule::BroadSchema, Severity::Medium),
                (Rule::BroadSchema, Severity::Medium),
                (Rule::BroadSchema, Severity::Medium)
            ]
        );
        assert!(out[3].message.ends_with(": code"), "{}", out[3].message);
        out.clear();
        schema(
            &tool(json!({"name": "open", "inputSchema": {"type": "object",
                "properties": {"path": {"type": "string", "pattern": "^/srv/"}}}})),
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn look_alike_and_repeated_names() {
        let items = [
            tool(json!({"name": "send_email"})),
            tool(json!({"name": "send-emaiI"})),
            tool(json!({"name": "search"})),
            tool(json!({"name": "search"})),
        ];
        let mut out = Vec::new();
        look_alikes(&items, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].message.contains("listed more than once"));
        assert!(out[1].message.contains("`send_email`, `send-emaiI`"));
    }
}
