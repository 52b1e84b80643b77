//! A scan report as a table for a terminal and as SARIF 2.1.0 for code-scanning tools. (JSON is
//! the report serialised as it is.)

use palisade_policy::Severity;
use serde_json::{Value, json};

use super::{Report, Rule};

/// Text a server wrote, safe to print on a terminal: control, invisible and bidi characters are
/// shown as `\u{…}` escapes, so a definition cannot move the cursor, recolour the screen or hide
/// text.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || crate::mcp_tools::hidden_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// The report as a table for a terminal.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let server = match (
        r.server.get("name").and_then(Value::as_str),
        r.server.get("version").and_then(Value::as_str),
    ) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        (Some(n), None) => n.to_string(),
        _ => "(unnamed)".into(),
    };
    out.push_str(&format!(
        "Target:   {}\nServer:   {} · protocol {} · {}\nListed:   {} tools, {} prompts, {} resources, {} resource templates; {} resources read\n\n",
        printable(&r.target),
        printable(&server),
        printable(&r.protocol_version),
        r.transport,
        r.counts.tools,
        r.counts.prompts,
        r.counts.resources,
        r.counts.resource_templates,
        r.counts.resources_read
    ));
    if r.findings.is_empty() {
        out.push_str("No findings.\n");
    } else {
        let subjects: Vec<String> = r
            .findings
            .iter()
            .map(|f| cut(&printable(&f.subject), 40))
            .collect();
        let rule_w = r
            .findings
            .iter()
            .map(|f| f.rule.id().len())
            .max()
            .unwrap_or(4);
        let subj_w = subjects
            .iter()
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(7)
            .max(7);
        out.push_str(&format!(
            "{:<8}  {:<rule_w$}  {:<subj_w$}  FINDING\n",
            "SEVERITY", "RULE", "SUBJECT"
        ));
        for (f, subject) in r.findings.iter().zip(&subjects) {
            let pad = subj_w - subject.chars().count();
            out.push_str(&format!(
                "{:<8}  {:<rule_w$}  {subject}{}  {}\n",
                f.severity.as_str().to_uppercase(),
                f.rule.id(),
                " ".repeat(pad),
                cut(&printable(&f.message), 160)
            ));
            if let Some(x) = &f.excerpt {
                out.push_str(&format!(
                    "{:<8}  {:<rule_w$}  {:<subj_w$}  > {}\n",
                    "",
                    "",
                    "",
                    cut(&printable(x), 160)
                ));
            }
        }
        out.push_str(&format!(
            "\n{} findings: {} critical, {} high, {} medium, {} low\n",
            r.findings.len(),
            r.summary.critical,
            r.summary.high,
            r.summary.medium,
            r.summary.low
        ));
    }
    for n in &r.notes {
        out.push_str(&format!("note: {}\n", printable(n)));
    }
    out
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "note",
    }
}

/// The score code-scanning tools sort by (`security-severity`, 0–10).
fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
    }
}

/// The report as a SARIF 2.1.0 log (one run; each finding a result with a logical location
/// naming the tool, prompt or resource).
pub fn sarif(r: &Report) -> Value {
    sarif_of_value(&serde_json::to_value(r).unwrap_or(Value::Null))
}

/// [`sarif`] of a report as JSON (a stored one).
pub fn sarif_of_value(r: &Value) -> Value {
    let rules: Vec<Value> = Rule::ALL
        .iter()
        .map(|rule| {
            json!({
                "id": rule.id(),
                "name": rule.id(),
                "shortDescription": {"text": rule.description()},
                "fullDescription": {"text": rule.description()},
                "help": {"text": rule.description()},
            })
        })
        .collect();
    let target = r.get("target").and_then(Value::as_str).unwrap_or("");
    // A launched server's location is its program (its arguments may carry settings).
    let uri = match target.strip_prefix("stdio: ") {
        Some(cmd) => format!("stdio:{}", cmd.split_whitespace().next().unwrap_or("")),
        None => target.to_string(),
    };
    let results: Vec<Value> = r
        .get("findings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let rule = Rule::from_id(f.get("rule")?.as_str()?)?;
            let severity: Severity = serde_json::from_value(f.get("severity")?.clone()).ok()?;
            let subject = f.get("subject").and_then(Value::as_str).unwrap_or("");
            let message = f.get("message").and_then(Value::as_str).unwrap_or("");
            let index = Rule::ALL.iter().position(|x| *x == rule).unwrap_or(0);
            let mut text = format!("{subject}: {message}");
            if let Some(x) = f.get("excerpt").and_then(Value::as_str) {
                text.push_str(&format!(" (matched: {x})"));
            }
            Some(json!({
                "ruleId": rule.id(),
                "ruleIndex": index,
                "level": level(severity),
                "message": {"text": text},
                "locations": [{
                    "physicalLocation": {"artifactLocation": {"uri": uri}},
                    "logicalLocations": [{"name": subject, "kind": "member"}]
                }],
                "properties": {
                    "severity": severity.as_str(),
                    "security-severity": security_severity(severity)
                }
            }))
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "palisade-scan",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules
            }},
            "invocations": [{"executionSuccessful": true,
                "startTimeUtc": r.get("scanned_at").cloned().unwrap_or(Value::Null)}],
            "results": results
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Counts, Finding, Summary};

    fn report() -> Report {
        Report {
            target: "http://127.0.0.1:1/mcp".into(),
            transport: "streamable-http",
            protocol_version: "2025-11-25".into(),
            server: json!({"name": "srv\u{1b}[31m", "version": "1"}),
            scanned_at: "2026-11-28T05:00:00Z".into(),
            duration_ms: 3,
            counts: Counts::default(),
            summary: Summary {
                high: 1,
                ..Summary::default()
            },
            findings: vec![Finding {
                rule: Rule::ToolPoisoning,
                severity: Severity::High,
                subject: "tool `x\u{202e}`".into(),
                message: "hidden".into(),
                excerpt: Some("ignore previous\u{1b}]0;".into()),
            }],
            notes: vec![],
            inventory: vec![],
        }
    }

    #[test]
    fn tables_escape_what_a_terminal_would_obey() {
        let t = table(&report());
        assert!(!t.contains('\u{1b}') && !t.contains('\u{202e}'), "{t}");
        assert!(t.contains("srv\\u{1b}[31m 1"), "{t}");
        assert!(t.contains("HIGH      mcp-tool-poisoning"), "{t}");
        assert!(t.contains("> ignore previous\\u{1b}]0;"), "{t}");
        assert!(t.contains("1 findings: 0 critical, 1 high"), "{t}");
    }

    #[test]
    fn sarif_names_rules_levels_and_locations() {
        let s = sarif(&report());
        assert_eq!(s["version"], "2.1.0");
        let run = &s["runs"][0];
        assert_eq!(
            run["tool"]["driver"]["rules"].as_array().map(Vec::len),
            Some(Rule::ALL.len())
        );
        let res = &run["results"][0];
        assert_eq!(res["ruleId"], "mcp-tool-poisoning");
        assert_eq!(res["ruleIndex"], 0);
        assert_eq!(res["level"], "error");
        assert_eq!(res["properties"]["security-severity"], "8.0");
        assert_eq!(
            res["locations"][0]["logicalLocations"][0]["name"],
            "tool `x\u{202e}`"
        );
    }
}
