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
    body_with(model, &prompt(prompt_bytes, pii), stream)
}

fn body_with(model: &str, prompt: &str, stream: bool) -> Bytes {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    });
    Bytes::from(body.to_string())
}

/// `count` chat request bodies with the generated prompt of `prompt_bytes` bytes, each with its
/// own number written over its first bytes (`#000001 `): the same size and words on every
/// request, never the same text within `count` requests.
pub fn numbered_bodies(
    count: usize,
    prompt_bytes: usize,
    pii: bool,
    model: &str,
    stream: bool,
) -> Vec<Bytes> {
    let base = prompt(prompt_bytes, pii);
    (0..count)
        .map(|i| {
            let tag = format!("#{i:06} ");
            let cut = tag.len().min(base.len());
            let p = format!("{}{}", &tag[..cut], &base[cut..]);
            body_with(model, &p, stream)
        })
        .collect()
}

/// Texts of a corpus file: one per line, a JSON string or a JSON object with a `text` field
/// (the format of `eval/corpora/*.jsonl`); other lines are skipped.
pub fn read_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(
            |l| match serde_json::from_str::<serde_json::Value>(l).ok()? {
                serde_json::Value::String(s) => Some(s),
                v => v.get("text")?.as_str().map(str::to_string),
            },
        )
        .filter(|s| !s.trim().is_empty())
        .collect()
}

/// `count` chat request bodies whose prompts of `prompt_bytes` bytes (cut at a character
/// boundary) are each a different pseudo-random run of `lines`: text a gateway has not seen
/// before on every request, as in real traffic, instead of one prompt repeated.
pub fn corpus_bodies(
    lines: &[String],
    count: usize,
    prompt_bytes: usize,
    model: &str,
    stream: bool,
) -> Vec<Bytes> {
    if lines.is_empty() {
        return Vec::new();
    }
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    (0..count)
        .map(|_| {
            let mut p = String::with_capacity(prompt_bytes + 256);
            while p.len() < prompt_bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if !p.is_empty() {
                    p.push(' ');
                }
                p.push_str(&lines[(state % lines.len() as u64) as usize]);
            }
            let mut cut = prompt_bytes.min(p.len());
            while !p.is_char_boundary(cut) {
                cut -= 1;
            }
            p.truncate(cut);
            body_with(model, &p, stream)
        })
        .collect()
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
    fn corpus_prompts_differ_and_have_the_requested_size() {
        let lines = read_lines(
            "\"Venus is the second planet.\"\n{\"text\": \"Ça va très bien, merci.\", \"label\": \"benign\"}\nnot json\n\"\"\n\"The tide comes in twice a day.\"\n",
        );
        assert_eq!(lines.len(), 3, "{lines:?}");
        let bodies = corpus_bodies(&lines, 50, 300, "mock-gpt", false);
        assert_eq!(bodies.len(), 50);
        let prompts: std::collections::HashSet<String> = bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                let p = v["messages"][0]["content"].as_str().unwrap().to_string();
                assert!(p.len() <= 300 && p.len() > 290, "{}", p.len());
                p
            })
            .collect();
        assert!(prompts.len() > 45, "{}", prompts.len());
        assert!(corpus_bodies(&[], 5, 300, "m", false).is_empty());
    }

    #[test]
    fn numbered_prompts_differ_and_keep_their_size() {
        let bodies = numbered_bodies(300, 1024, false, "mock-gpt", false);
        let prompts: std::collections::HashSet<String> = bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                v["messages"][0]["content"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(prompts.len(), 300);
        assert!(prompts.iter().all(|p| p.len() == 1024));
        assert!(prompts.contains(&format!("#000299 {}", &prompt(1024, false)[8..])));
    }

    #[test]
    fn chat_body_is_valid_json() {
        let b = chat_body("mock-gpt", 1024, false, true);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["messages"][0]["content"].as_str().unwrap().len(), 1024);
    }
}
