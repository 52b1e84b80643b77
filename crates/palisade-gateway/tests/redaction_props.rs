//! Property test: for random text with random sensitive values, redacting a request and
//! unmasking the echoed answer streamed in random chunk sizes gives back exactly the input, and
//! no original value is left in what goes upstream.

use bytes::Bytes;
use palisade_gateway::redact::{StreamRewriter, redact_request};
use palisade_gateway::sse::for_each_event;
use palisade_policy::{PolicySet, load_dir};
use serde_json::{Value, json};

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn set() -> PolicySet {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies");
    let packs: Vec<_> = load_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|p| p.id == "llm-compliance-gdpr" || p.id == "secrets-detection")
        .collect();
    PolicySet::compile(&packs).unwrap()
}

const VALUES: &[&str] = &[
    "ana.lopez@example.com",
    "j.smith+billing@corp.example.org",
    "4111 1111 1111 1111",
    "5500-0055-5555-5559",
    "DE89 3704 0044 0532 0130 00",
    "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "AKIAIOSFODNN7EXAMPLE",
];
const WORDS: &[&str] = &[
    "please", "send", "the", "report", "to", "and", "über", "naïve", "[note]", "café", "—", "42",
    "\n",
];

/// Random words with sensitive values among them; returns the text and the values used.
fn random_text(rng: &mut Rng) -> (String, Vec<&'static str>) {
    let mut text = String::new();
    let mut used = Vec::new();
    for _ in 0..(5 + rng.below(30)) {
        if rng.below(4) == 0 {
            let v = VALUES[rng.below(VALUES.len())];
            used.push(v);
            text.push_str(v);
        } else {
            text.push_str(WORDS[rng.below(WORDS.len())]);
        }
        text.push(' ');
    }
    (text, used)
}

#[test]
fn redact_then_stream_unmask_restores_every_input() {
    let set = set();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..300 {
        let (text, used) = random_text(&mut rng);
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let map = redact_request(&set, &mut body);
        let upstream = body.to_string();
        for v in &used {
            assert!(!upstream.contains(v), "case {case}: {v} left in {upstream}");
        }
        // The upstream answers with the redacted text, streamed in random chunk sizes.
        let redacted: Vec<char> = body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .chars()
            .collect();
        let mut u = StreamRewriter::new(map.clone());
        let mut out = Vec::new();
        let mut i = 0;
        while i < redacted.len() {
            let n = 1 + rng.below(7);
            let piece: String = redacted[i..(i + n).min(redacted.len())].iter().collect();
            i += n;
            let ev = json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
            out.extend_from_slice(&u.rewrite(Bytes::from(format!("data: {ev}\n\n"))));
        }
        let fin = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        out.extend_from_slice(&u.rewrite(Bytes::from(format!("data: {fin}\n\n"))));
        let mut restored = String::new();
        for_each_event(&out, |_, d| {
            if let Ok(v) = serde_json::from_slice::<Value>(d)
                && let Some(s) = v["choices"][0]["delta"]["content"].as_str()
            {
                restored.push_str(s);
            }
        });
        assert_eq!(restored, text, "case {case} (map {map:?})");
    }
}

#[test]
fn a_streamed_answer_is_masked_as_a_whole_answer_would_be() {
    let set = std::sync::Arc::new(set());
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for case in 0..300 {
        let (text, used) = random_text(&mut rng);
        let mut map = Vec::new();
        let want = set.redact_into(palisade_policy::Target::LlmResponse, &text, &mut map);
        // The upstream's answer carries the values in clear, streamed in random chunk sizes.
        let mut w = StreamRewriter::new(Vec::new()).masking(set.clone(), &Vec::new());
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let n = 1 + rng.below(9);
            let piece: String = chars[i..(i + n).min(chars.len())].iter().collect();
            i += n;
            let ev = json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
            out.extend_from_slice(&w.rewrite(Bytes::from(format!("data: {ev}\n\n"))));
        }
        out.extend_from_slice(&w.rewrite(Bytes::from_static(b"data: [DONE]\n\n")));
        let sent = String::from_utf8_lossy(&out);
        for v in &used {
            assert!(
                !sent.contains(v),
                "case {case}: {v} reached the client: {sent}"
            );
        }
        let mut masked = String::new();
        for_each_event(&out, |_, d| {
            if let Ok(v) = serde_json::from_slice::<Value>(d)
                && let Some(s) = v["choices"][0]["delta"]["content"].as_str()
            {
                masked.push_str(s);
            }
        });
        assert_eq!(masked, want, "case {case}");
        assert_eq!(w.masked(), map.len(), "case {case}");
    }
}

#[test]
fn card_numbers_with_no_break_spaces_are_redacted() {
    let set = set();
    for sep in ["\u{a0}", "\u{202f}", "\u{2009}", "\u{3000}", "\t", " "] {
        let card = ["4111", "1111", "1111", "1111"].join(sep);
        let r = set.redact(
            palisade_policy::Target::LlmRequest,
            &format!("card {card} x"),
        );
        assert!(!r.text.contains("4111"), "{sep:?}: {}", r.text);
        assert_eq!(
            palisade_policy::unmask(&r.text, &r.map),
            format!("card {card} x")
        );
    }
}

#[test]
fn ibans_with_no_break_spaces_are_redacted() {
    let set = set();
    let iban = "DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}00";
    let r = set.redact(
        palisade_policy::Target::LlmRequest,
        &format!("iban {iban} x"),
    );
    assert!(!r.text.contains("3704"), "{}", r.text);
}
