//! Engine benchmark: `evaluate()` on benign 1 KiB / 4 KiB / 32 KiB prompts with every pack in
//! `policies/` loaded (or, while no pack exists yet, a synthetic 300-rule stand-in).
//!
//! Also `evaluate()` and `redact()` on the adversarial inputs of `tests/support/adversarial.rs`
//! (long and nested encodings, many short segments, invisible characters, homoglyphs, 1 MiB).
//!
//! Run: `cargo bench -p palisade-policy --bench engine` (`-- adversarial` for those only).

#[path = "../tests/support/adversarial.rs"]
mod adversarial;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_policy::{Policy, PolicySet, Target, find_segments, load_dir, normalize};

/// A synthetic pack shaped like the real ones, used only while `policies/` holds no pack.
fn synthetic_pack() -> Policy {
    let verbs = [
        "ignore",
        "disregard",
        "forget",
        "override",
        "bypass",
        "skip",
    ];
    let objects = [
        "instructions",
        "rules",
        "guidelines",
        "prompt",
        "directives",
    ];
    let mut rules = Vec::new();
    let mut id = 0;
    for v in verbs {
        for o in objects {
            for q in [
                "previous", "prior", "above", "earlier", "system", "safety", "original", "initial",
                "all",
            ] {
                id += 1;
                rules.push(format!(
                    r#"{{"id":"S-{id}","name":"n","category":"prompt_injection","severity":"high",
                    "targets":["llm_request"],"patterns":{{"regex":["(?i)\\b{v}\\s+(?:all\\s+|any\\s+|the\\s+)?{q}\\s+{o}\\b"],
                    "keywords":["{v} {q} {o} now"]}},"action":"block"}}"#
                ));
            }
        }
    }
    for (i, re) in [
        r"AKIA[0-9A-Z]{16}",
        r"sk-[A-Za-z0-9_-]{20,}",
        r"ghp_[A-Za-z0-9]{36}",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
        r"\b(?:\d[ -]?){12,18}\d\b",
        r"(?i)\bunion\s+(?:all\s+)?select\b",
        r"(?i)(?:\.\./){2,}",
        r"!\[[^\]]*\]\(https?://[^)]+\?[^)]*=",
    ]
    .iter()
    .enumerate()
    {
        rules.push(format!(
            r#"{{"id":"X-{i}","name":"n","category":"secrets","severity":"critical",
            "targets":["llm_request"],"patterns":{{"regex":[{}]}},"action":"alert"}}"#,
            serde_json::to_string(re).unwrap_or_default()
        ));
    }
    let json = format!(
        r#"{{"id":"synthetic","name":"Synthetic","version":"0","rules":[{}]}}"#,
        rules.join(",")
    );
    Policy::from_json(&json).unwrap_or_else(|e| panic!("synthetic pack: {e}"))
}

fn policies() -> Vec<Policy> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let packs = load_dir(&dir).unwrap_or_else(|e| panic!("loading packs: {e}"));
    if packs.is_empty() {
        eprintln!("no packs in {}: using a synthetic stand-in", dir.display());
        vec![synthetic_pack()]
    } else {
        packs
    }
}

fn bench(c: &mut Criterion) {
    let policies = policies();
    let set = PolicySet::compile(&policies).unwrap_or_else(|e| panic!("compile: {e}"));
    eprintln!(
        "{} policies, {} rules ({} for llm_request)",
        set.policies().len(),
        set.rule_count(),
        set.rule_count_for(Target::LlmRequest)
    );
    let mut group = c.benchmark_group("evaluate_benign");
    for size in [1024usize, 4096, 32768] {
        let text = adversarial::benign(size);
        let e = set.evaluate(Target::LlmRequest, &text);
        if !e.is_clean() {
            eprintln!("note: benign {size}-byte text matched {:?}", e.matches);
        }
        // The figure is the cached case.
        adversarial::learn(&set, Target::LlmRequest, &text);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{}KiB", size / 1024), |b| {
            b.iter(|| set.evaluate(Target::LlmRequest, black_box(&text)))
        });
    }
    group.finish();

    // Components on 4 KiB, to see where the time goes.
    let text = adversarial::benign(4096);
    let mut group = c.benchmark_group("components_4KiB");
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("normalize", |b| {
        b.iter(|| normalize(black_box(&text)).len())
    });
    group.bench_function("find_segments", |b| {
        b.iter(|| {
            let mut budget = 1 << 20;
            let mut out = Vec::new();
            find_segments(black_box(&text), &mut budget, &mut out);
            out.len()
        })
    });
    group.bench_function("evaluate_raw", |b| {
        b.iter(|| set.evaluate_raw(Target::LlmRequest, black_box(&text)))
    });
    group.finish();

    let mut group = c.benchmark_group("redact_benign");
    let text = adversarial::benign(4096);
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("4KiB", |b| {
        b.iter(|| set.redact(Target::LlmRequest, black_box(&text)))
    });
    group.finish();

    // Worst cases: every adversarial input, evaluate and redact.
    let mut group = c.benchmark_group("adversarial");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1));
    for (name, text) in adversarial::cases() {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("evaluate/{name}"), |b| {
            b.iter(|| set.evaluate(Target::LlmRequest, black_box(&text)))
        });
        group.bench_function(format!("redact/{name}"), |b| {
            b.iter(|| set.redact(Target::LlmRequest, black_box(&text)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
