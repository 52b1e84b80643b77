//! Redaction and unmasking benchmark (issue 6's goal: a 4 KiB message redacted and its answer
//! unmasked in under 30 µs; a stream's first event delayed by well under 1 ms).
//!
//! The policy set is every shipped pack that has `redact` rules (as `bench/run.sh` uses for its
//! `redact` configuration). The request is an OpenAI chat body of 4 KiB of ordinary text with
//! twelve sensitive values (emails, phone numbers, a payment card, an IBAN, an AWS key, a JWT);
//! the answer quotes every placeholder the request received, so unmasking has real work.
//!
//! Run: `cargo bench -p palisade-gateway --bench redaction`.

use std::hint::black_box;
use std::path::PathBuf;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use palisade_gateway::redact::{StreamRewriter, redact_request, unmask_body};
use palisade_gateway::{Findings, Inspector, StreamGuard};
use palisade_policy::{PolicySet, load_dir};
use serde_json::{Value, json};

const SENSITIVE: [&str; 12] = [
    "maria.rossi@example.org",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "GB82 WEST 1234 5698 7654 32",
    "AKIAIOSFODNN7EXAMPLE",
    "j.doe@contoso.example",
    "+1 (415) 555-0134",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "5500 0000 0000 0004",
    "ops-team@fabrikam.example",
    "+49 30 901820",
    "DE89 3704 0044 0532 0130 00",
];

const FILLER: &str = "The quarterly review covers supplier onboarding, invoice reconciliation and the \
    migration of the ledger to the new accounting system; please summarise the open points. ";

/// A chat request of `bytes` bytes of text with the sensitive values spread through it.
fn request(bytes: usize) -> Value {
    let mut text = String::with_capacity(bytes + 128);
    let mut next = 0;
    while text.len() < bytes {
        text.push_str(FILLER);
        if next < SENSITIVE.len() && text.len() >= (next + 1) * bytes / (SENSITIVE.len() + 1) {
            text.push_str("Contact: ");
            text.push_str(SENSITIVE[next]);
            text.push_str(". ");
            next += 1;
        }
    }
    text.truncate(bytes);
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": text},
    ]})
}

/// A buffered chat answer quoting every placeholder, padded to about `bytes` bytes.
fn answer(placeholders: &[String], bytes: usize) -> Bytes {
    let mut text = String::new();
    while text.len() < bytes {
        for p in placeholders {
            text.push_str("I will write to ");
            text.push_str(p);
            text.push_str(" about the open invoices. ");
        }
        text.push_str(FILLER);
    }
    Bytes::from(
        serde_json::to_vec(&json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": text}}],
        }))
        .unwrap_or_default(),
    )
}

/// The same answer as 50 SSE events, cut at arbitrary places (placeholders split across events).
fn stream(answer_text: &str, events: usize) -> Vec<Bytes> {
    let chars: Vec<char> = answer_text.chars().collect();
    let size = chars.len().div_ceil(events).max(1);
    let mut out: Vec<Bytes> = chars
        .chunks(size)
        .map(|c| {
            let piece: String = c.iter().collect();
            let ev = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
            Bytes::from(format!("data: {ev}\n\n"))
        })
        .collect();
    out.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
    ));
    out
}

fn redact_set() -> PolicySet {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let packs: Vec<_> = load_dir(&dir)
        .unwrap_or_else(|e| panic!("loading packs: {e}"))
        .into_iter()
        .filter(|p| {
            p.rules
                .iter()
                .any(|r| r.action == palisade_policy::Action::Redact)
        })
        .collect();
    assert!(!packs.is_empty(), "no shipped pack has redact rules");
    PolicySet::compile(&packs).unwrap_or_else(|e| panic!("compile: {e}"))
}

fn bench(c: &mut Criterion) {
    let set = redact_set();
    let body = request(4096);
    let mut probe = body.clone();
    let map = redact_request(&set, &mut probe);
    let sent = probe.to_string();
    for v in SENSITIVE {
        assert!(!sent.contains(v), "{v} would reach the upstream");
    }
    eprintln!(
        "{} packs with redact rules; 4 KiB request: {} values replaced",
        set.policies().len(),
        map.len()
    );
    let placeholders: Vec<String> = map.iter().map(|(p, _)| p.clone()).collect();
    let buffered = answer(&placeholders, 4096);
    let answer_text: String =
        serde_json::from_slice::<Value>(&buffered).unwrap()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    let events = stream(&answer_text, 50);

    let mut group = c.benchmark_group("redaction_4KiB");
    group.throughput(Throughput::Bytes(4096));
    // What the gateway does with any body it inspects: parse and re-serialize.
    let raw = Bytes::from(body.to_string());
    group.bench_function("baseline_parse_serialize", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&raw)).unwrap_or_default();
            serde_json::to_vec(&v).map(|x| x.len()).unwrap_or(0)
        })
    });
    let user_text = body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    group.bench_function("engine_redact_text", |b| {
        b.iter(|| {
            set.redact(palisade_policy::Target::LlmRequest, black_box(&user_text))
                .map
                .len()
        })
    });
    group.bench_function("engine_redact_into_text", |b| {
        b.iter(|| {
            let mut m = Vec::new();
            set.redact_into(
                palisade_policy::Target::LlmRequest,
                black_box(&user_text),
                &mut m,
            )
            .len()
        })
    });
    let short =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]});
    group.bench_function("redact_request_short", |b| {
        b.iter_batched_ref(
            || short.clone(),
            |v| redact_request(&set, v).len(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("redact_request", |b| {
        b.iter_batched_ref(
            || body.clone(),
            |v| redact_request(&set, v).len(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("unmask_answer", |b| {
        b.iter(|| unmask_body(black_box(buffered.clone()), &map).len())
    });
    group.bench_function("round_trip", |b| {
        b.iter_batched_ref(
            || body.clone(),
            |v| {
                let m = redact_request(&set, v);
                unmask_body(black_box(buffered.clone()), &m).len()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("stream_unmask_50_events");
    group.bench_function("first_event", |b| {
        b.iter_batched_ref(
            || StreamRewriter::new(map.clone()),
            |u| u.rewrite(black_box(events[0].clone())).len(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("whole_stream", |b| {
        b.iter_batched_ref(
            || StreamRewriter::new(map.clone()),
            |u| {
                events
                    .iter()
                    .map(|e| u.rewrite(e.clone()).len())
                    .sum::<usize>()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // The response side of a redacting proxy: each streamed event's text is checked against the
    // `llm_response` rules (with the text before it, so patterns split across events are seen).
    let set = std::sync::Arc::new(set);
    // Masking new values in the stream as well (the packs redact answers): text is held back
    // and released whole values at a time.
    let mut group = c.benchmark_group("stream_mask_50_events");
    group.bench_function("whole_stream", |b| {
        b.iter_batched_ref(
            || StreamRewriter::new(map.clone()).masking(set.clone(), &map),
            |u| {
                let n: usize = events.iter().map(|e| u.rewrite(e.clone()).len()).sum();
                n + u.finish().len()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let mut group = c.benchmark_group("stream_guard");
    for (name, text) in [
        ("answer_4KiB_50_events", answer_text.clone()),
        (
            "answer_400B_50_events",
            answer_text.chars().take(400).collect::<String>(),
        ),
    ] {
        let chars: Vec<char> = text.chars().collect();
        let size = chars.len().div_ceil(50).max(1);
        let pieces: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
        // The whole answer, including the scan at its end.
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    StreamGuard::new(
                        Inspector::new(set.clone(), palisade_core::model::PolicyMode::Enforce),
                        Findings::default(),
                    )
                },
                |mut g| {
                    let blocked = pieces.iter().filter(|p| g.check(black_box(p))).count();
                    (blocked, g.into_findings())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
