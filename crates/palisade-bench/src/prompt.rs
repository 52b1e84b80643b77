//! Generated request bodies: an OpenAI chat completion with a benign prompt of a chosen size.
//!
//! The words are ordinary business prose so that the shipped policy packs (prompt injection,
//! jailbreaks, secrets) have nothing to block: a benchmark measures the cost of *inspecting*
//! clean traffic. With `pii`, contact details are sprinkled in so redaction rules fire.

use bytes::Bytes;
use serde_json::json;

const WORDS: &[&str] = &[
    "the",
    "quarterly",
    "report",
    "summarises",
    "revenue",
    "growth",
    "across",
    "regions",
    "and",
    "notes",
    "that",
    "customer",
    "retention",
    "improved",
    "while",
    "shipping",
    "costs",
    "rose",
    "slightly",
    "during",
    "autumn",
    "our",
    "team",
    "plans",
    "to",
    "review",
    "supplier",
    "contracts",
    "next",
    "month",
    "please",
    "write",
    "a",
    "short",
    "friendly",
    "summary",
    "of",
    "these",
    "meeting",
    "points",
    "for",
    "colleagues",
    "in",
    "finance",
    "garden",
    "vegetables",
    "weather",
    "forecast",
    "library",
    "schedule",
    "bicycle",
    "maintenance",
    "recipe",
    "with",
    "tomatoes",
    "basil",
    "olive",
    "oil",
    "travel",
    "itinerary",
    "museum",
    "visit",
    "on",
    "tuesday",
    "morning",
    "coffee",
    "break",
    "project",
    "timeline",
    "milestones",
    "budget",
];

const PII: &str = " Contact Maria Rossi at maria.rossi@example.org or +44 20 7946 0958.";

/// A prompt of exactly `bytes` ASCII bytes, the same for every run.
pub fn prompt(bytes: usize, pii: bool) -> String {
    let mut out = String::with_capacity(bytes + 80);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut since_pii = 0usize;
    while out.len() < bytes {
        if pii && since_pii >= 256 {
            out.push_str(PII);
            since_pii = 0;
            continue;
        }
        // xorshift64: deterministic, dependency-free word choice.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let w = WORDS[(state % WORDS.len() as u64) as usize];
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
        since_pii += w.len() + 1;
    }
    out.truncate(bytes);
    out
}

/// The JSON body of a chat completion request with a generated prompt.
pub fn chat_body(model: &str, prompt_bytes: usize, pii: bool, stream: bool) -> Bytes {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt(prompt_bytes, pii)}],
        "stream": stream,
    });
    Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_has_the_requested_size_and_is_stable() {
        for n in [0, 1, 1024, 16 * 1024] {
            assert_eq!(prompt(n, false).len(), n);
            assert_eq!(prompt(n, true).len(), n);
        }
        assert_eq!(prompt(500, false), prompt(500, false));
        assert!(prompt(1024, true).contains("@example.org"));
        assert!(!prompt(1024, false).contains('@'));
    }

    #[test]
    fn chat_body_is_valid_json() {
        let b = chat_body("mock-gpt", 1024, false, true);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["messages"][0]["content"].as_str().unwrap().len(), 1024);
    }
}
